//! The training loop shared by CLIP-IT and the baselines: Adam, global gradient clipping,
//! validation every N steps, the best checkpoint by validation loss, metrics as JSONL, and a
//! clean stop on a non-finite loss.

use burn::module::Module;
use burn::optim::{GradientsParams, ModuleOptimizer};
use burn::tensor::{Int, Tensor, TensorData};
use serde::{Deserialize, Serialize};

use super::heads::{clipit_loss, cross_entropy, ClipItModel};
use super::optim::{adam, clip_to_norm, cosine_lr, grad_norm_squared};
use crate::{Error, Result};

/// Hyperparameters; the defaults are the paper's (official code's).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TrainOptions {
    /// Passes over the training set.
    pub epochs: usize,
    /// Images per step.
    pub batch_size: usize,
    /// Adam learning rate.
    pub lr: f64,
    /// Adam (L2) weight decay.
    pub weight_decay: f64,
    /// Global gradient-norm clip (`None`: no clipping).
    pub grad_clip: Option<f64>,
    /// Weight λ of the distillation loss.
    pub lambda: f64,
    /// Reproduce the official code's CE over softmax probabilities.
    pub paper_compat: bool,
    /// Seed for initialisation, shuffling and augmentation.
    pub seed: u64,
    /// Validate every this many steps (0: once per epoch).
    pub val_every: usize,
    /// Cosine schedule (eta_min 1e-4, as the official `--scheduler 1`) over `cosine_steps`.
    pub cosine: bool,
    /// The cosine schedule's T_max in steps (the official code's 12,500 by default).
    pub cosine_steps: usize,
    /// Stop after this many steps in total (for quick runs and tests).
    pub max_steps: Option<usize>,
}

impl Default for TrainOptions {
    fn default() -> Self {
        Self {
            epochs: 1,
            batch_size: 64,
            lr: 1e-3,
            weight_decay: 1e-4,
            grad_clip: Some(0.5),
            lambda: 1.0,
            paper_compat: false,
            seed: 0,
            val_every: 0,
            cosine: false,
            cosine_steps: 12_500,
            max_steps: None,
        }
    }
}

impl TrainOptions {
    /// The learning rate at `step` (from 0): `lr`, or with `cosine` annealed from `lr` at step 0
    /// to 1e-4 at step `cosine_steps`.
    pub fn lr_at(&self, step: usize) -> f64 {
        if self.cosine {
            cosine_lr(self.lr, 1e-4, step, self.cosine_steps)
        } else {
            self.lr
        }
    }
}

/// One logged training step.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct StepLog {
    /// Global step, from 1.
    pub step: usize,
    /// Epoch, from 0.
    pub epoch: usize,
    /// Total loss.
    pub loss: f64,
    /// Cross-entropy part.
    pub ce: f64,
    /// Distillation part (0 for baselines).
    pub kd: f64,
    /// Gradient norm before clipping.
    pub grad_norm: f64,
    /// Learning rate used.
    pub lr: f64,
}

/// A training batch already on the model's (autodiff) device.
pub struct TrainBatch {
    /// Normalised pixels `[n, 3, s, s]`.
    pub pixels: Tensor<4>,
    /// Class indices `[n]`.
    pub labels: Tensor<1, Int>,
    /// Text targets `[n, d_t]` (CLIP-IT with precomputed targets).
    pub text_targets: Option<Tensor<2>>,
    /// Token ids of each image's paired report (CLIP-IT in text-LoRA mode, where the model's text
    /// tower computes the targets in the loop).
    pub token_ids: Option<Vec<Vec<u32>>>,
}

impl TrainBatch {
    /// Builds a batch from host data.
    pub fn from_host(
        pixels: Vec<f32>,
        size: usize,
        labels: &[usize],
        text_targets: Option<(Vec<f32>, usize)>,
        device: &burn::tensor::Device,
    ) -> Self {
        let n = labels.len();
        let pixels = Tensor::<4>::from_data(TensorData::new(pixels, [n, 3, size, size]), device);
        let labels = Tensor::<1, Int>::from_data(
            TensorData::new(labels.iter().map(|&l| l as i64).collect::<Vec<_>>(), [n]),
            device,
        );
        let text_targets =
            text_targets.map(|(v, d)| Tensor::<2>::from_data(TensorData::new(v, [n, d]), device));
        Self { pixels, labels, text_targets, token_ids: None }
    }

    /// Adds the paired reports' token ids (text-LoRA mode).
    pub fn with_token_ids(mut self, ids: Vec<Vec<u32>>) -> Self {
        self.token_ids = Some(ids);
        self
    }
}

/// The loss of one batch, as a differentiable total plus its logged parts.
pub struct LossParts {
    /// Differentiable total.
    pub total: Tensor<1>,
    /// Cross-entropy (detached, for logging).
    pub ce: Tensor<1>,
    /// Distillation (detached, for logging).
    pub kd: Option<Tensor<1>>,
}

impl LossParts {
    /// The detached values to log, `[total, ce, kd]` (kd 0 when absent), in one tensor.
    pub fn values(&self) -> Tensor<1> {
        let total = self.total.clone().detach().reshape([1]);
        let kd = match &self.kd {
            Some(k) => k.clone().reshape([1]),
            None => Tensor::<1>::zeros([1], &total.device()),
        };
        Tensor::cat(vec![total, self.ce.clone().reshape([1]), kd], 0)
    }
}

/// CLIP-IT's loss on a batch: CE on the fused logits + λ·(1 − cos(t̂, t)). The target t is the
/// batch's precomputed `text_targets`, or, when the model carries a text tower (text-LoRA mode),
/// that tower's embedding of the batch's `token_ids`, not detached: the gradient then reaches the
/// text LoRA too, as in the official code.
pub fn clipit_batch_loss(
    model: &ClipItModel,
    batch: &TrainBatch,
    opts: &TrainOptions,
) -> Result<LossParts> {
    let targets = match (&model.text, &batch.token_ids) {
        (Some(text), Some(ids)) => text.forward(ids)?,
        (Some(_), None) => {
            return Err(Error::msg("CLIP-IT with text LoRA needs the reports' token ids"))
        }
        (None, _) => {
            batch.text_targets.clone().ok_or_else(|| Error::msg("CLIP-IT needs text targets"))?
        }
    };
    let out = model.forward(batch.pixels.clone());
    let ce = cross_entropy(out.logits.clone(), batch.labels.clone(), opts.paper_compat);
    let total = clipit_loss(&out, batch.labels.clone(), targets, opts.lambda, opts.paper_compat);
    let kd = total.clone().detach() - ce.clone().detach();
    Ok(LossParts { total, ce: ce.detach(), kd: Some(kd) })
}

/// Vision-only loss (linear probe and vision baselines): CE on h_v's logits.
pub fn vision_batch_loss(
    model: &ClipItModel,
    batch: &TrainBatch,
    opts: &TrainOptions,
) -> Result<LossParts> {
    let logits = model.heads.h_v.forward(model.backbone.forward(batch.pixels.clone()));
    let ce = cross_entropy(logits, batch.labels.clone(), opts.paper_compat);
    Ok(LossParts { total: ce.clone(), ce: ce.detach(), kd: None })
}

/// Holds the model and optimiser between steps.
pub struct Trainer<M: Module> {
    /// The model being trained (on an autodiff device).
    pub model: M,
    /// Adam and its state.
    pub optim: ModuleOptimizer,
    /// Options.
    pub opts: TrainOptions,
    /// Steps done so far.
    pub step: usize,
}

impl<M: Module> Trainer<M> {
    /// A trainer starting at step 0.
    pub fn new(model: M, opts: TrainOptions) -> Self {
        let optim = adam(opts.weight_decay);
        Self { model, optim, opts, step: 0 }
    }

    /// The learning rate for the next step.
    pub fn current_lr(&self) -> f64 {
        self.opts.lr_at(self.step)
    }

    /// One optimisation step. A non-finite loss stops training with an error naming the step,
    /// leaving the model as it was before the step. Reads the step's values synchronously (native
    /// only); [`Trainer::step_async`] is the browser's version.
    pub fn step(
        &mut self,
        epoch: usize,
        loss: impl FnOnce(&M) -> Result<LossParts>,
    ) -> Result<StepLog> {
        let pending = self.begin_step(loss)?;
        self.apply(epoch, pending)
    }

    /// Reads a computed step's values synchronously (native only) and applies it: the shared end
    /// of [`Trainer::step`] and of the multi-device step ([`super::parallel`]).
    pub(crate) fn apply(&mut self, epoch: usize, pending: PendingStep) -> Result<StepLog> {
        let values = pending.values.clone().try_into_data();
        let values = values.map_err(|e| Error::msg(format!("reading the loss: {e}")))?;
        self.finish_step(epoch, pending, values)
    }

    /// [`Trainer::step`] with an asynchronous read of the step's values (the only read wasm
    /// allows).
    pub async fn step_async(
        &mut self,
        epoch: usize,
        loss: impl FnOnce(&M) -> Result<LossParts>,
    ) -> Result<StepLog> {
        let pending = self.begin_step(loss)?;
        let values = pending.values.clone().into_data_async().await;
        let values = values.map_err(|e| Error::msg(format!("reading the loss: {e}")))?;
        self.finish_step(epoch, pending, values)
    }

    /// The device part of a step, before anything is read: the loss, its gradients and the
    /// values to log, gathered in one tensor so that they cross to the host in one read.
    fn begin_step(&self, loss: impl FnOnce(&M) -> Result<LossParts>) -> Result<PendingStep> {
        let parts = loss(&self.model)?;
        let values = parts.values();
        let grads = GradientsParams::from_grads(parts.total.backward(), &self.model);
        Ok(PendingStep::new(&self.model, grads, values))
    }

    /// The host part of a step, once its values are read: the finite-loss check, clipping and
    /// the optimiser's update.
    fn finish_step(
        &mut self,
        epoch: usize,
        pending: PendingStep,
        values: TensorData,
    ) -> Result<StepLog> {
        let v = values
            .try_into_vec_as::<f32>()
            .map_err(|e| Error::msg(format!("reading the loss: {e:?}")))?;
        let [loss, ce, kd, norm_sq] = [v[0], v[1], v[2], v[3]].map(f64::from);
        if !loss.is_finite() {
            return Err(Error::msg(format!(
                "loss is {loss} at step {}: training stopped; the last checkpoint is kept",
                self.step + 1
            )));
        }
        let grad_norm = norm_sq.sqrt();
        let grads = clip_to_norm(&self.model, pending.grads, grad_norm, self.opts.grad_clip);
        let lr = self.current_lr();
        self.model = self.optim.step(lr, self.model.clone(), grads);
        self.step += 1;
        Ok(StepLog { step: self.step, epoch, loss, ce, kd, grad_norm, lr })
    }
}

/// A step whose loss and gradients are computed but not yet read or applied.
pub(crate) struct PendingStep {
    grads: GradientsParams,
    /// `[loss, ce, kd, squared gradient norm]`.
    values: Tensor<1>,
}

impl PendingStep {
    /// The step of `grads` (of `model`'s parameters, on its device) whose logged values
    /// `[loss, ce, kd]` are `values` ([`LossParts::values`]): adds the squared gradient norm.
    pub(crate) fn new<M: Module>(model: &M, grads: GradientsParams, values: Tensor<1>) -> Self {
        let norm_sq = grad_norm_squared(model, &grads)
            .map(|n| n.reshape([1]))
            .unwrap_or_else(|| Tensor::<1>::zeros([1], &values.device()));
        Self { grads, values: Tensor::cat(vec![values, norm_sq], 0) }
    }
}

#[cfg(test)]
mod tests {
    use super::TrainOptions;

    #[test]
    fn the_cosine_schedule_spans_cosine_steps() {
        let opts = TrainOptions { lr: 1e-3, cosine: true, cosine_steps: 100, ..Default::default() };
        let close = |a: f64, b: f64| (a - b).abs() < 1e-12;
        assert!(close(opts.lr_at(0), 1e-3));
        assert!(close(opts.lr_at(50), (1e-3 + 1e-4) / 2.0));
        assert!(close(opts.lr_at(100), 1e-4));
        assert!(opts.lr_at(25) > opts.lr_at(75));
        let flat = TrainOptions { cosine: false, ..opts };
        assert!(close(flat.lr_at(100), 1e-3));
    }
}
