//! An in-memory, step-wise CLIP-IT training session, as the page drives it: labelled images held
//! as bytes, their pseudo-pairs with a report corpus, a stratified validation split, and one
//! step (or one validation) per call, so that the caller can show progress, pause and stop.
//!
//! One CLIP model plays both parts, as in the browser: its frozen text tower gives the text
//! targets (computed once per report by the caller, see [`ReportTargets`]) and its vision tower,
//! with fresh LoRA adapters, is the backbone of the [`ClipItModel`]. Every read from the device is
//! asynchronous, so the same code runs in wasm; native callers block on the futures.

use std::collections::BTreeMap;
use std::sync::Arc;

use burn::module::Module;
use serde::{Deserialize, Serialize};

use super::classifier::{Classifier, ClassifierInfo};
use super::heads::{ClipItModel, HeadsConfig};
use super::split::{stratified_split, Rng};
use super::trainer::{clipit_batch_loss, StepLog, TrainBatch, TrainOptions, Trainer};
use super::{augment::AugmentConfig, data::prepare_bytes};
use crate::lora::LoraConfig;
use crate::metrics::Report;
use crate::model::Model;
use crate::preprocess::{max_pixels, PreprocessConfig};
use crate::weights::ParamNames;
use crate::{Error, Result};

/// Stream keys for [`Rng::derive`].
const SHUFFLE_STREAM: u64 = 0x5345_5353; // "SESS"
const AUGMENT_STREAM: u64 = 0x4155_4753; // "AUGS"

/// A session's settings; the defaults are the paper's, with a small batch for the browser.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct SessionOptions {
    /// Passes over the training images.
    pub epochs: usize,
    /// Images per step.
    pub batch_size: usize,
    /// Adam learning rate.
    pub lr: f64,
    /// Adam (L2) weight decay.
    pub weight_decay: f64,
    /// Global gradient-norm clip (0 or less: none).
    pub grad_clip: f64,
    /// Weight λ of the distillation loss.
    pub lambda: f64,
    /// LoRA rank.
    pub lora_r: usize,
    /// LoRA alpha.
    pub lora_alpha: f64,
    /// Fraction of each class held out for validation.
    pub val_fraction: f64,
    /// Validate every this many steps (0: once per epoch).
    pub val_every: usize,
    /// Layers of h_d (1 or 2).
    pub kd_layers: usize,
    /// The paper's flips and colour jitter on training images.
    pub augment: bool,
    /// Seed of the initialisation, split, shuffles and augmentations.
    pub seed: u64,
}

impl Default for SessionOptions {
    fn default() -> Self {
        let paper = TrainOptions::default();
        let lora = LoraConfig::default();
        Self {
            epochs: 5,
            batch_size: 16,
            lr: paper.lr,
            weight_decay: paper.weight_decay,
            grad_clip: paper.grad_clip.unwrap_or(0.0),
            lambda: paper.lambda,
            lora_r: lora.r,
            lora_alpha: lora.alpha,
            val_fraction: 0.2,
            val_every: 0,
            kd_layers: 1,
            augment: false,
            seed: 0,
        }
    }
}

impl SessionOptions {
    /// Checks the values, naming the first bad one.
    pub fn validate(&self) -> Result<()> {
        let bad = |what: &str| Err(Error::msg(format!("training settings: {what}")));
        if self.epochs == 0 {
            return bad("epochs must be at least 1");
        }
        if self.batch_size == 0 {
            return bad("the batch size must be at least 1");
        }
        if !(self.lr.is_finite() && self.lr > 0.0) {
            return bad("the learning rate must be a positive number");
        }
        if !(self.weight_decay.is_finite() && self.weight_decay >= 0.0) {
            return bad("the weight decay must be 0 or more");
        }
        if !(self.lambda.is_finite() && self.lambda >= 0.0) {
            return bad("λ must be 0 or more");
        }
        if !(1..=2).contains(&self.kd_layers) {
            return bad("h_d has 1 or 2 layers");
        }
        LoraConfig::new(self.lora_r, self.lora_alpha).validate()
    }

    fn train_options(&self) -> TrainOptions {
        TrainOptions {
            epochs: self.epochs,
            batch_size: self.batch_size,
            lr: self.lr,
            weight_decay: self.weight_decay,
            grad_clip: (self.grad_clip > 0.0).then_some(self.grad_clip),
            lambda: self.lambda,
            seed: self.seed,
            ..TrainOptions::default()
        }
    }
}

/// Labelled images as encoded bytes (PNG, JPEG, TIFF).
#[derive(Debug, Clone)]
pub struct LabelledImages {
    /// Class names; a label indexes this list.
    pub classes: Vec<String>,
    /// Each image's name (for errors).
    pub names: Vec<String>,
    /// Each image's file bytes.
    pub bytes: Vec<Arc<[u8]>>,
    /// Each image's class.
    pub labels: Vec<usize>,
}

/// CLIP-IT's pseudo-pairs: every image's top-1 report and the L2-normalised text embeddings of
/// the reports (the distillation targets, computed once with the frozen text tower).
#[derive(Debug, Clone)]
pub struct ReportTargets {
    table: Vec<f32>,
    dim: usize,
    /// Each image's report index.
    pub index: Vec<usize>,
    /// Each image's cosine with its report.
    pub scores: Vec<f32>,
}

impl ReportTargets {
    /// From the reports' text embeddings (row-major `[reports, dim]`, normalised here) and each
    /// image's top-1 `(report index, cosine)`, e.g. from [`crate::retrieval::top_k`] with k = 1.
    pub fn new(report_embeds: Vec<f32>, dim: usize, hits: &[(usize, f32)]) -> Result<Self> {
        if dim == 0 || report_embeds.is_empty() || !report_embeds.len().is_multiple_of(dim) {
            return Err(Error::msg("report embeddings do not form rows"));
        }
        let reports = report_embeds.len() / dim;
        if let Some(&(j, _)) = hits.iter().find(|(j, _)| *j >= reports) {
            return Err(Error::msg(format!("report {j} out of range ({reports} reports)")));
        }
        let mut table = report_embeds;
        for row in table.chunks_mut(dim) {
            let n = row.iter().map(|x| x * x).sum::<f32>().sqrt().max(1e-12);
            row.iter_mut().for_each(|x| *x /= n);
        }
        let (index, scores) = hits.iter().copied().unzip();
        Ok(Self { table, dim, index, scores })
    }

    fn rows(&self, samples: &[usize]) -> (Vec<f32>, usize) {
        let mut out = Vec::with_capacity(samples.len() * self.dim);
        for &i in samples {
            let j = self.index[i];
            out.extend_from_slice(&self.table[j * self.dim..(j + 1) * self.dim]);
        }
        (out, self.dim)
    }
}

/// One validation of a session.
#[derive(Debug, Clone, Serialize)]
pub struct Validation {
    /// Steps done when it ran.
    pub step: usize,
    /// Metrics on the validation images (confusion matrix included).
    pub report: Report,
}

/// Preprocessed images ready for a batch, and the ones that could not be read.
struct Decoded {
    pixels: Vec<f32>,
    samples: Vec<usize>,
    labels: Vec<usize>,
}

/// A training session in memory (see the module docs).
pub struct TrainSession {
    data: LabelledImages,
    targets: ReportTargets,
    train: Vec<usize>,
    val: Vec<usize>,
    preprocess: PreprocessConfig,
    opts: SessionOptions,
    trainer: Trainer<ClipItModel>,
    names: ParamNames,
    info: ClassifierInfo,
    lora: LoraConfig,
    /// The current epoch's batches and how many of them are done.
    batches: Vec<Vec<usize>>,
    next_batch: usize,
    epoch: usize,
    /// Images that could not be decoded, by index, with the reason.
    pub unreadable: BTreeMap<usize, String>,
    /// Every step so far.
    pub history: Vec<StepLog>,
    /// Every validation so far.
    pub validations: Vec<Validation>,
}

impl TrainSession {
    /// Splits the images (stratified, [`stratified_split`]), builds the classifier on `clip`'s
    /// vision tower with fresh LoRA adapters and heads on `clip`'s device (with autodiff), and
    /// readies the first epoch. `targets` pairs every image with a report.
    pub fn new(
        clip: &Model,
        data: LabelledImages,
        targets: ReportTargets,
        opts: SessionOptions,
    ) -> Result<Self> {
        opts.validate()?;
        let n = data.labels.len();
        if data.classes.len() < 2 {
            return Err(Error::msg(format!(
                "training needs at least two classes, found {} ({})",
                data.classes.len(),
                data.classes.join(", ")
            )));
        }
        if data.names.len() != n || data.bytes.len() != n || targets.index.len() != n {
            return Err(Error::msg("every image needs a name, bytes, a label and a report"));
        }
        if let Some(&l) = data.labels.iter().find(|&&l| l >= data.classes.len()) {
            return Err(Error::msg(format!("label {l} out of range")));
        }
        let (train, val) = stratified_split(&data.labels, opts.val_fraction, opts.seed)?;
        if train.is_empty() || val.is_empty() {
            return Err(Error::msg(format!(
                "{n} labelled images are too few to hold out a validation split: give each class at least two"
            )));
        }
        let device = clip.vision.pos_embed.val().device().autodiff();
        device.seed(opts.seed);
        let heads = HeadsConfig {
            feature_dim: clip.embed_dim,
            text_dim: targets.dim,
            num_classes: data.classes.len(),
            kd_layers: opts.kd_layers,
        };
        let lora = LoraConfig::new(opts.lora_r, opts.lora_alpha);
        let vision = clip.vision.clone().to_device(&device).no_grad();
        let vision = crate::lora::apply_lora(vision, &clip.params, &lora, opts.seed)?;
        let model = ClipItModel { backbone: vision, heads: heads.init(&device), text: None };
        let info = ClassifierInfo {
            classes: data.classes.clone(),
            heads,
            backbone: clip.name.clone(),
            architecture: clip.architecture.to_string(),
        };
        let mut session = Self {
            trainer: Trainer::new(model, opts.train_options()),
            data,
            targets,
            train,
            val,
            preprocess: clip.preprocess,
            opts,
            names: clip.params.clone(),
            info,
            lora,
            batches: Vec::new(),
            next_batch: 0,
            epoch: 0,
            unreadable: BTreeMap::new(),
            history: Vec::new(),
            validations: Vec::new(),
        };
        session.start_epoch(0);
        Ok(session)
    }

    fn start_epoch(&mut self, epoch: usize) {
        let mut order = self.train.clone();
        Rng::derive(self.opts.seed, &[SHUFFLE_STREAM, epoch as u64]).shuffle(&mut order);
        self.batches = order.chunks(self.opts.batch_size).map(<[usize]>::to_vec).collect();
        self.next_batch = 0;
        self.epoch = epoch;
    }

    /// Indices of the training and validation images.
    pub fn split(&self) -> (&[usize], &[usize]) {
        (&self.train, &self.val)
    }

    /// Steps per epoch.
    pub fn steps_per_epoch(&self) -> usize {
        self.train.len().div_ceil(self.opts.batch_size)
    }

    /// Steps of the whole session.
    pub fn total_steps(&self) -> usize {
        self.steps_per_epoch() * self.opts.epochs
    }

    /// Steps done.
    pub fn steps_done(&self) -> usize {
        self.trainer.step
    }

    /// The current epoch (from 0).
    pub fn epoch(&self) -> usize {
        self.epoch
    }

    /// Whether every step is done.
    pub fn finished(&self) -> bool {
        self.steps_done() >= self.total_steps()
    }

    /// Whether a validation is due after the last step (every `val_every` steps, at the end of
    /// each epoch when it is 0, and after the last step).
    pub fn validation_due(&self) -> bool {
        let s = self.steps_done();
        let every =
            if self.opts.val_every == 0 { self.steps_per_epoch() } else { self.opts.val_every };
        s > 0 && (s.is_multiple_of(every.max(1)) || self.finished())
    }

    /// The settings.
    pub fn options(&self) -> &SessionOptions {
        &self.opts
    }

    /// Class names, sizes and backbone.
    pub fn info(&self) -> &ClassifierInfo {
        &self.info
    }

    /// The pseudo-pairs.
    pub fn targets(&self) -> &ReportTargets {
        &self.targets
    }

    /// Decodes and preprocesses `samples` (augmented for training), recording unreadable ones.
    fn decode(&mut self, samples: &[usize], augment: bool) -> Decoded {
        let aug = (augment && self.opts.augment).then(AugmentConfig::paper);
        let mut out = Decoded { pixels: Vec::new(), samples: Vec::new(), labels: Vec::new() };
        for &i in samples {
            let mut rng =
                Rng::derive(self.opts.seed, &[AUGMENT_STREAM, self.epoch as u64, i as u64]);
            let name = &self.data.names[i];
            match prepare_bytes(
                &self.data.bytes[i],
                name,
                max_pixels(),
                &self.preprocess,
                aug.as_ref(),
                &mut rng,
            ) {
                Ok(p) => {
                    out.pixels.extend(p);
                    out.samples.push(i);
                    out.labels.push(self.data.labels[i]);
                }
                Err(e) => {
                    self.unreadable.insert(i, e.to_string());
                }
            }
        }
        out
    }

    /// Runs the next training step; `None` when every step is done. Batches whose images are all
    /// unreadable are skipped. A non-finite loss is an error naming the step.
    pub async fn step(&mut self) -> Result<Option<StepLog>> {
        loop {
            if self.finished() {
                return Ok(None);
            }
            if self.next_batch >= self.batches.len() {
                self.start_epoch(self.epoch + 1);
            }
            let samples = self.batches[self.next_batch].clone();
            self.next_batch += 1;
            let d = self.decode(&samples, true);
            if d.samples.is_empty() {
                // Count the step so that the session still ends.
                self.trainer.step += 1;
                continue;
            }
            let device = self.trainer.model.heads.fc.weight.val().device();
            let batch = TrainBatch::from_host(
                d.pixels,
                self.preprocess.crop,
                &d.labels,
                Some(self.targets.rows(&d.samples)),
                &device,
            );
            let opts = self.trainer.opts.clone();
            let epoch = self.epoch;
            let log =
                self.trainer.step_async(epoch, |m| clipit_batch_loss(m, &batch, &opts)).await?;
            self.history.push(log.clone());
            return Ok(Some(log));
        }
    }

    /// The current model as an inference-only classifier.
    pub fn classifier(&self) -> Classifier {
        Classifier {
            model: self.trainer.model.valid(),
            info: self.info.clone(),
            lora: self.lora.clone(),
        }
    }

    /// Where each LoRA-adapted parameter comes from (for [`Classifier::to_bytes_async`]).
    pub fn param_names(&self) -> &ParamNames {
        &self.names
    }

    /// Evaluates the current model on the validation images and records the result.
    pub async fn validate(&mut self) -> Result<Validation> {
        let classifier = self.classifier();
        let val = self.val.clone();
        let (mut probs, mut labels) = (Vec::new(), Vec::new());
        for chunk in val.chunks(self.opts.batch_size) {
            let d = self.decode(chunk, false);
            if d.samples.is_empty() {
                continue;
            }
            let n = d.samples.len();
            probs.extend(classifier.predict_async(d.pixels, n, self.preprocess.crop).await?);
            labels.extend(d.labels);
        }
        if labels.is_empty() {
            return Err(Error::msg("no validation image could be read"));
        }
        let report = Report::from_probs(&probs, &labels, &self.info.classes)?;
        let v = Validation { step: self.steps_done(), report };
        self.validations.push(v.clone());
        Ok(v)
    }
}
