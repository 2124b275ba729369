//! The CLIP-IT classifier: a vision backbone f'_v with the paper's four heads, and its losses.
//!
//! - h_v: `Linear(D_v, C)`, the vision classifier;
//! - h_d: `Linear(D_v, D_t)` (or two layers with `--kd-layers 2`), predicting the text embedding;
//! - fc0: `Linear(D_t, D_t) → LeakyReLU(0.1) → Linear(D_t, C)`, the text-branch classifier;
//! - fc: `Linear(2C, C)`, the late fusion of the two logit vectors.
//!
//! Inference is vision-only: `fc([h_v(v), fc0(h_d(v))])`.
//!
//! The distillation target t is the teacher's text embedding of the image's paired report. It is
//! either precomputed once with the frozen teacher (the default), or, as in the official code,
//! computed in the loop by the teacher's text tower carrying LoRA adapters that train too
//! ([`ClipItModel::text`], see [`text_lora_tower`]).

use burn::module::Module;
use burn::nn::{Linear, LinearConfig};
use burn::tensor::activation::{leaky_relu, log_softmax, softmax};
use burn::tensor::{Device, Int, Tensor};

use crate::lora::{apply_lora, LoraConfig};
use crate::model::text::TextTransformer;
use crate::model::vit::VisionTransformer;
use crate::model::Model;
use crate::{Error, Result};

/// Negative slope of the heads' LeakyReLU, as in the official code.
const LEAKY_SLOPE: f64 = 0.1;

/// h_d: one linear layer, or two with a LeakyReLU between them (`--kd-layers 2`).
#[derive(Module, Debug)]
pub struct Projector {
    /// First (or only) layer.
    pub first: Linear,
    /// Second layer for the two-layer variant.
    pub second: Option<Linear>,
}

impl Projector {
    /// Applies the projector.
    pub fn forward(&self, x: Tensor<2>) -> Tensor<2> {
        let x = self.first.forward(x);
        match &self.second {
            Some(second) => second.forward(leaky_relu(x, LEAKY_SLOPE)),
            None => x,
        }
    }
}

/// Sizes of the heads.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct HeadsConfig {
    /// Backbone feature width D_v.
    pub feature_dim: usize,
    /// Text embedding width D_t (the teacher's embedding size; 512 for CONCH).
    pub text_dim: usize,
    /// Number of classes C.
    pub num_classes: usize,
    /// Layers in h_d (1 or 2).
    pub kd_layers: usize,
}

/// The four CLIP-IT heads.
#[derive(Module, Debug)]
pub struct ClipItHeads {
    /// h_v: vision classifier.
    pub h_v: Linear,
    /// h_d: predicts the text embedding from the image feature.
    pub h_d: Projector,
    /// fc0, first layer.
    pub fc0_in: Linear,
    /// fc0, second layer.
    pub fc0_out: Linear,
    /// fc: late fusion of `[h_v, fc0]` logits.
    pub fc: Linear,
}

impl HeadsConfig {
    /// Heads with PyTorch's default `nn.Linear` initialisation (Kaiming-uniform).
    pub fn init(&self, device: &Device) -> ClipItHeads {
        let lin = |i: usize, o: usize| LinearConfig::new(i, o).init(device);
        let (d, t, c) = (self.feature_dim, self.text_dim, self.num_classes);
        let h_d = if self.kd_layers >= 2 {
            Projector { first: lin(d, d), second: Some(lin(d, t)) }
        } else {
            Projector { first: lin(d, t), second: None }
        };
        ClipItHeads {
            h_v: lin(d, c),
            h_d,
            fc0_in: lin(t, t),
            fc0_out: lin(t, c),
            fc: lin(2 * c, c),
        }
    }
}

/// What one forward pass gives.
pub struct HeadsOutput {
    /// Fused logits `[batch, C]` (the prediction).
    pub logits: Tensor<2>,
    /// Predicted text embedding t̂ `[batch, D_t]`.
    pub text_pred: Tensor<2>,
}

impl ClipItHeads {
    /// Applies the heads to backbone features `v` `[batch, D_v]`.
    pub fn forward(&self, v: Tensor<2>) -> HeadsOutput {
        let z_v = self.h_v.forward(v.clone());
        let text_pred = self.h_d.forward(v);
        let z_t =
            self.fc0_out.forward(leaky_relu(self.fc0_in.forward(text_pred.clone()), LEAKY_SLOPE));
        let logits = self.fc.forward(Tensor::cat(vec![z_v, z_t], 1));
        HeadsOutput { logits, text_pred }
    }
}

/// A CLIP-IT classifier: backbone plus heads.
#[derive(Module, Debug)]
pub struct ClipItModel {
    /// The vision backbone f'_v (its LoRA adapters live in its parameters).
    pub backbone: VisionTransformer,
    /// The heads.
    pub heads: ClipItHeads,
    /// Text-LoRA mode: the teacher's text tower with LoRA, run in the loop on the reports' token
    /// ids so that the distillation gradient also trains its adapters (the official code's
    /// behaviour). `None` when the text targets are precomputed. Unused at inference.
    pub text: Option<TextTransformer>,
}

impl ClipItModel {
    /// Forward pass on preprocessed pixels.
    pub fn forward(&self, pixels: Tensor<4>) -> HeadsOutput {
        self.heads.forward(self.backbone.forward(pixels))
    }

    /// Class probabilities `[batch, C]` (inference uses only the vision model).
    pub fn predict(&self, pixels: Tensor<4>) -> Tensor<2> {
        softmax(self.forward(pixels).logits, 1)
    }
}

/// The teacher's text tower with fresh LoRA adapters for text-LoRA training: peft's targets
/// (token embedding and MLP linears; the inert `MultiheadAttention.out_proj` adapters left out, as
/// peft never trains them), every other weight frozen. `seed` as in [`apply_lora`].
pub fn text_lora_tower(teacher: &Model, cfg: &LoraConfig, seed: u64) -> Result<TextTransformer> {
    let text = teacher
        .text
        .clone()
        .ok_or_else(|| Error::msg(format!("{}: the teacher has no text encoder", teacher.name)))?;
    apply_lora(text, &teacher.params, cfg, seed)
}

/// Mean cross-entropy of `logits` against integer `targets`.
///
/// With `paper_compat`, the official code's quirk is reproduced: `F.cross_entropy(softmax(out), y)`,
/// i.e. cross-entropy over the probabilities taken as logits (a double softmax).
pub fn cross_entropy(logits: Tensor<2>, targets: Tensor<1, Int>, paper_compat: bool) -> Tensor<1> {
    let logits = if paper_compat { softmax(logits, 1) } else { logits };
    let log_probs = log_softmax(logits, 1);
    let picked = log_probs.gather(1, targets.unsqueeze_dim::<2>(1));
    picked.mean().neg()
}

/// The distillation loss `mean(1 − cos(t̂, t))` over the batch.
pub fn distillation_loss(text_pred: Tensor<2>, text_target: Tensor<2>) -> Tensor<1> {
    let eps = 1e-8;
    let dot = (text_pred.clone() * text_target.clone()).sum_dim(1);
    let norms = text_pred.square().sum_dim(1).sqrt().clamp_min(eps)
        * text_target.square().sum_dim(1).sqrt().clamp_min(eps);
    (dot / norms).neg().add_scalar(1.0).mean()
}

/// The CLIP-IT loss: `CE + λ·(1 − cos(t̂, t))`.
pub fn clipit_loss(
    out: &HeadsOutput,
    targets: Tensor<1, Int>,
    text_target: Tensor<2>,
    lambda: f64,
    paper_compat: bool,
) -> Tensor<1> {
    let ce = cross_entropy(out.logits.clone(), targets, paper_compat);
    ce + distillation_loss(out.text_pred.clone(), text_target) * lambda
}
