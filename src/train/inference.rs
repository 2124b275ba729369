//! Using a finished run: load its best model and turn preprocessed pixels into class
//! probabilities with the method's own classifier (vision only for CLIP-IT and the probe; the
//! adapted CLIP's template-averaged zero-shot for the contrastive baseline).

use std::path::Path;

use burn::module::Module;
use burn::tensor::activation::softmax;
use burn::tensor::{Device, Tensor, TensorData};

use super::checkpoint::RunDir;
use super::contrastive::ClassPrompts;
use super::heads::ClipItModel;
use super::run::{build_model, Method, RunConfig};
use crate::model::Model;
use crate::preprocess::PreprocessConfig;
use crate::retrieval::matrix_to_host;
use crate::{Error, Result};

/// How a trained model turns pixels into class probabilities.
pub enum Predictor {
    /// CLIP-IT: `fc([h_v(v), fc0(h_d(v))])`, vision only.
    Fused,
    /// The linear probe: `h_v(v)`.
    Probe,
    /// The contrastive baseline: `exp(logit_scale)·cos(image, class)` with the class embeddings
    /// of the adapted text tower, averaged over the templates.
    ZeroShot {
        /// `[classes, dim]` normalised class embeddings.
        classes: Tensor<2>,
        /// Raw (log) logit scale.
        logit_scale: f32,
    },
}

impl Predictor {
    /// The classifier of `method` for `model` (the contrastive method needs its `prompts`).
    pub(super) fn new(
        method: Method,
        model: &ClipItModel,
        prompts: Option<&ClassPrompts>,
    ) -> Result<Self> {
        Ok(match method {
            Method::Clipit => Self::Fused,
            Method::LinearProbe => Self::Probe,
            Method::Contrastive => {
                let prompts = prompts
                    .ok_or_else(|| Error::msg("the contrastive method needs its class prompts"))?;
                let text = model
                    .text
                    .as_ref()
                    .ok_or_else(|| Error::msg("the contrastive method needs the text tower"))?;
                Self::ZeroShot {
                    classes: prompts.class_embeddings(text)?,
                    logit_scale: prompts.logit_scale,
                }
            }
        })
    }

    /// Class probabilities `[n, classes]` of preprocessed pixels `[n, 3, s, s]`.
    pub fn probs(&self, model: &ClipItModel, pixels: Tensor<4>) -> Result<Tensor<2>> {
        match self {
            Self::Fused => Ok(softmax(model.forward(pixels).logits, 1)),
            Self::Probe => Ok(softmax(model.heads.h_v.forward(model.backbone.forward(pixels)), 1)),
            Self::ZeroShot { classes, logit_scale } => crate::zeroshot::zero_shot_probs(
                model.backbone.forward(pixels),
                classes.clone(),
                *logit_scale,
            ),
        }
    }
}

/// A finished run, ready to classify.
pub struct LoadedRun {
    /// The run's configuration (`run.json`).
    pub cfg: RunConfig,
    /// Its best model (no autodiff).
    pub model: ClipItModel,
    /// How its images are preprocessed.
    pub preprocess: PreprocessConfig,
    /// How it classifies.
    pub predictor: Predictor,
}

impl LoadedRun {
    /// Class probabilities of `n` preprocessed images (row-major `[n, 3, crop, crop]` pixels).
    pub fn predict(&self, pixels: Vec<f32>, n: usize, device: &Device) -> Result<Vec<Vec<f32>>> {
        let s = self.preprocess.crop;
        if pixels.len() != n * 3 * s * s {
            return Err(Error::msg(format!(
                "{} pixel values are not {n} images of 3×{s}×{s}",
                pixels.len()
            )));
        }
        let x = Tensor::<4>::from_data(TensorData::new(pixels, [n, 3, s, s]), device);
        let (v, [_, c]) = matrix_to_host(self.predictor.probs(&self.model, x)?)?;
        Ok(v.chunks(c).map(<[f32]>::to_vec).collect())
    }
}

/// Loads a finished run's best model for evaluation or classification (no autodiff).
pub fn load_run(run_dir: &Path, device: &Device) -> Result<LoadedRun> {
    let run = RunDir::open(run_dir)?;
    let cfg: RunConfig = run.read_json("run.json")?;
    let model = build_model(&cfg, &device.clone().autodiff(), None)?;
    let model = run.load_params("best.bpk", model)?.valid();
    let clip = Model::load(&cfg.backbone, device)?;
    let prompts = match cfg.method {
        Method::Contrastive => Some(ClassPrompts::new(&clip, &cfg.classes, &cfg.templates())?),
        _ => None,
    };
    let predictor = Predictor::new(cfg.method, &model, prompts.as_ref())?;
    Ok(LoadedRun { cfg, model, preprocess: clip.preprocess, predictor })
}
