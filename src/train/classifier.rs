//! A trained CLIP-IT classifier held in memory (the backbone with its LoRA adapters, the four
//! heads and the class names) and its single-file adapter format, as the page exports and
//! imports it.
//!
//! # The adapter file
//! One safetensors file (f32):
//! - the backbone's LoRA factors in peft's layout, `base_model.model.<module>.lora_A.weight` /
//!   `lora_B.weight` (`lora_embedding_A` / `_B` for embeddings), exactly as
//!   [`crate::lora::save_adapter`] writes them;
//! - the heads under [`HEADS_PREFIX`], each as a PyTorch `nn.Linear`: `<head>.weight` `[out, in]`
//!   and `<head>.bias` `[out]`, for `h_v`, `h_d.first` (and `h_d.second` with two layers),
//!   `fc0_in`, `fc0_out` and `fc`;
//! - metadata: `format` = `pt`, `clipit_lora_config` and `peft_adapter_config` (as
//!   [`crate::lora::LoraAdapters::to_bytes`]), and [`HEADS_METADATA_KEY`]: JSON
//!   [`ClassifierInfo`] (class names, head sizes, the backbone it was trained on).
//!
//! The file fits the model it was trained from: importing it onto another checkpoint is refused
//! with the reason (unknown modules, a different feature width).

use std::collections::HashMap;
use std::sync::Arc;

use burn::module::{Module, Param};
use burn::nn::Linear;
use burn::tensor::activation::softmax;
use burn::tensor::{Tensor, TensorData};
use serde::{Deserialize, Serialize};

use super::heads::{ClipItHeads, ClipItModel, HeadsConfig};
use crate::lora::{HostTensor, LoraAdapters, LoraConfig};
use crate::model::Model;
use crate::retrieval::{matrix_to_host, matrix_to_host_async};
use crate::weights::{ParamNames, SafeTensors};
use crate::{Error, Result};

/// Name prefix of the heads' tensors in an adapter file.
pub const HEADS_PREFIX: &str = "clipit_heads.";
/// Metadata key of the [`ClassifierInfo`] JSON in an adapter file.
pub const HEADS_METADATA_KEY: &str = "clipit_heads";

/// What an adapter file says about the classifier besides its tensors.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ClassifierInfo {
    /// Class names, in label order.
    pub classes: Vec<String>,
    /// Head sizes.
    pub heads: HeadsConfig,
    /// The backbone's name (its folder) when it was trained.
    pub backbone: String,
    /// The backbone's architecture, e.g. "open_clip CLIP".
    pub architecture: String,
}

/// A trained CLIP-IT classifier: predictions are vision-only, `fc([h_v(v), fc0(h_d(v))])`.
#[derive(Debug, Clone)]
pub struct Classifier {
    /// Backbone with LoRA and heads, on a device without autodiff.
    pub model: ClipItModel,
    /// Classes and sizes.
    pub info: ClassifierInfo,
    /// The backbone adapters' config.
    pub lora: LoraConfig,
}

/// The heads' linears by their file names, in a fixed order.
fn named_linears(heads: &ClipItHeads) -> Vec<(&'static str, &Linear)> {
    let mut out = vec![("h_v", &heads.h_v), ("h_d.first", &heads.h_d.first)];
    if let Some(second) = &heads.h_d.second {
        out.push(("h_d.second", second));
    }
    out.extend([("fc0_in", &heads.fc0_in), ("fc0_out", &heads.fc0_out), ("fc", &heads.fc)]);
    out
}

/// [`named_linears`], mutably.
fn named_linears_mut(heads: &mut ClipItHeads) -> Vec<(&'static str, &mut Linear)> {
    let mut out = vec![("h_v", &mut heads.h_v), ("h_d.first", &mut heads.h_d.first)];
    if let Some(second) = &mut heads.h_d.second {
        out.push(("h_d.second", second));
    }
    out.extend([
        ("fc0_in", &mut heads.fc0_in),
        ("fc0_out", &mut heads.fc0_out),
        ("fc", &mut heads.fc),
    ]);
    out
}

/// Every head tensor as a matrix to read, with its file name: weights are Burn's `[in, out]`
/// (transposed to PyTorch's `[out, in]` on the host), biases `[1, out]`.
fn head_matrices(heads: &ClipItHeads) -> Vec<(String, Tensor<2>, bool)> {
    let mut out = Vec::new();
    for (name, lin) in named_linears(heads) {
        out.push((format!("{HEADS_PREFIX}{name}.weight"), lin.weight.val(), true));
        if let Some(b) = &lin.bias {
            out.push((format!("{HEADS_PREFIX}{name}.bias"), b.val().unsqueeze_dim::<2>(0), false));
        }
    }
    out
}

/// A host matrix read from [`head_matrices`], in PyTorch's layout.
fn head_host(values: Vec<f32>, [rows, cols]: [usize; 2], weight: bool) -> HostTensor {
    if !weight {
        return HostTensor { shape: vec![cols], values };
    }
    let mut t = vec![0.0; values.len()];
    for i in 0..rows {
        for j in 0..cols {
            t[j * rows + i] = values[i * cols + j];
        }
    }
    HostTensor { shape: vec![cols, rows], values: t }
}

impl Classifier {
    /// Class probabilities `[batch, C]` for preprocessed pixels on the model's device.
    pub fn probs(&self, pixels: Tensor<4>) -> Tensor<2> {
        softmax(self.model.forward(pixels).logits, 1)
    }

    /// Class probabilities of a batch of preprocessed images (`n × 3 × size × size` values), read
    /// synchronously (native only; see [`Classifier::predict_async`]).
    pub fn predict(&self, pixels: Vec<f32>, n: usize, size: usize) -> Result<Vec<Vec<f32>>> {
        let (v, [_, c]) = matrix_to_host(self.probs(self.pixels(pixels, n, size)))?;
        Ok(v.chunks(c).map(<[f32]>::to_vec).collect())
    }

    /// [`Classifier::predict`] with an asynchronous read (the browser's case).
    pub async fn predict_async(
        &self,
        pixels: Vec<f32>,
        n: usize,
        size: usize,
    ) -> Result<Vec<Vec<f32>>> {
        let (v, [_, c]) = matrix_to_host_async(self.probs(self.pixels(pixels, n, size))).await?;
        Ok(v.chunks(c).map(<[f32]>::to_vec).collect())
    }

    fn pixels(&self, pixels: Vec<f32>, n: usize, size: usize) -> Tensor<4> {
        let device = self.model.heads.fc.weight.val().device();
        Tensor::from_data(TensorData::new(pixels, [n, 3, size, size]), &device)
    }

    /// The adapter file's bytes (see the module docs), reading the tensors synchronously.
    pub fn to_bytes(&self, names: &ParamNames) -> Result<Vec<u8>> {
        let adapters = LoraAdapters::from_module(&self.model.backbone, names, &self.lora)?;
        let mut heads = Vec::new();
        for (name, t, weight) in head_matrices(&self.model.heads) {
            let (v, dims) = matrix_to_host(t)?;
            heads.push((name, head_host(v, dims, weight)));
        }
        self.write(&adapters, &heads)
    }

    /// [`Classifier::to_bytes`] with asynchronous reads (the browser's case).
    pub async fn to_bytes_async(&self, names: &ParamNames) -> Result<Vec<u8>> {
        let adapters =
            LoraAdapters::from_module_async(&self.model.backbone, names, &self.lora).await?;
        let mut heads = Vec::new();
        for (name, t, weight) in head_matrices(&self.model.heads) {
            let (v, dims) = matrix_to_host_async(t).await?;
            heads.push((name, head_host(v, dims, weight)));
        }
        self.write(&adapters, &heads)
    }

    fn write(&self, adapters: &LoraAdapters, heads: &[(String, HostTensor)]) -> Result<Vec<u8>> {
        let info = serde_json::to_string(&self.info).expect("plain data serialises");
        adapters.to_bytes_with(heads, HashMap::from([(HEADS_METADATA_KEY.to_string(), info)]))
    }

    /// Reads an adapter file (`name` names it in errors) and builds the classifier on
    /// `backbone`'s vision tower, on `backbone`'s device. Fails, naming the file, when it is not
    /// a clipit adapter file or does not fit this backbone.
    pub fn from_bytes(backbone: &Model, bytes: Arc<[u8]>, name: &str) -> Result<Self> {
        let st = SafeTensors::from_bytes(bytes, name)?;
        let bad = |msg: String| Error::format(name, msg);
        let json = st.metadata().get(HEADS_METADATA_KEY).ok_or_else(|| {
            bad(format!(
                "no '{HEADS_METADATA_KEY}' metadata: not a clipit classifier adapter (export one from the Train panel)"
            ))
        })?;
        let info: ClassifierInfo =
            serde_json::from_str(json).map_err(|e| bad(format!("invalid heads metadata: {e}")))?;
        if info.classes.len() != info.heads.num_classes || info.classes.len() < 2 {
            return Err(bad(format!(
                "{} class names for {} classes",
                info.classes.len(),
                info.heads.num_classes
            )));
        }
        if info.heads.feature_dim != backbone.embed_dim {
            return Err(bad(format!(
                "trained on {} ({}, features of width {}), but {} gives features of width {}",
                info.backbone,
                info.architecture,
                info.heads.feature_dim,
                backbone.name,
                backbone.embed_dim
            )));
        }
        let adapters = LoraAdapters::from_safetensors_with_extra(&st, HEADS_PREFIX)?;
        let (vision, report) = adapters.attach(backbone.vision.clone(), &backbone.params)?;
        if !report.unmatched.is_empty() {
            return Err(bad(format!(
                "{} LoRA adapters do not fit {} (e.g. '{}'): it was trained on {}",
                report.unmatched.len(),
                backbone.name,
                report.unmatched[0],
                info.backbone
            )));
        }
        let device = backbone.vision.pos_embed.val().device();
        let mut heads = info.heads.init(&device);
        for (head, lin) in named_linears_mut(&mut heads) {
            let key = format!("{HEADS_PREFIX}{head}");
            let (w, w_shape) = st.read_f32(&format!("{key}.weight"))?;
            let [d_in, d_out] = lin.weight.val().dims();
            if w_shape != [d_out, d_in] {
                return Err(bad(format!(
                    "{key}.weight has shape {w_shape:?}, expected [{d_out}, {d_in}]"
                )));
            }
            let w = head_host(w, [d_out, d_in], true);
            lin.weight = Param::from_tensor(Tensor::from_data(
                TensorData::new(w.values, [d_in, d_out]),
                &device,
            ));
            let (b, b_shape) = st.read_f32(&format!("{key}.bias"))?;
            if b_shape != [d_out] {
                return Err(bad(format!("{key}.bias has shape {b_shape:?}, expected [{d_out}]")));
            }
            lin.bias =
                Some(Param::from_tensor(Tensor::from_data(TensorData::new(b, [d_out]), &device)));
        }
        let model = ClipItModel { backbone: vision, heads, text: None }.no_grad();
        Ok(Self { model, info, lora: adapters.config })
    }
}
