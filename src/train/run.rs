//! A whole training run, as `clipit train` drives it: data and split, CLIP-IT pseudo-pairing with
//! the teacher, precomputed text targets, the backbone with LoRA and the heads, the loop with
//! validation and checkpoints, and the final report.

use std::path::{Path, PathBuf};
use std::time::Instant;

use burn::module::Module;
use burn::tensor::{Device, Int, Tensor};
use serde::{Deserialize, Serialize};

use super::checkpoint::{RunDir, RunState};
use super::contrastive::{contrastive_batch_loss, ClassPrompts};
use super::data::read_manifest;
use super::data::{Batch, BatchLoader, Dataset, LoaderConfig};
use super::heads::{text_lora_tower, ClipItModel, HeadsConfig};
use super::inference::Predictor;
use super::pairing::{pair_reports, TextTargets};
use super::parallel::parallel_step;
use super::probe::{probe_loss, Features};
use super::split::{group_split, stratified_split};
use super::trainer::{
    clipit_batch_loss, vision_batch_loss, LossParts, StepLog, TrainBatch, TrainOptions, Trainer,
};
use crate::lora::LoraConfig;
use crate::metrics::Report;
use crate::model::text::TextTransformer;
use crate::model::Model;
use crate::retrieval::matrix_to_host;
use crate::{Error, Result};

/// The training methods of the paper's tables.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Method {
    /// CLIP-IT: backbone with LoRA, the four heads, CE + λ·distillation.
    Clipit,
    /// The unimodal baseline: frozen backbone, linear head h_v.
    LinearProbe,
    /// The contrastive baseline: LoRA on the whole CLIP (`--backbone`), symmetric InfoNCE
    /// between each image and its class prompt, tested as template-averaged zero-shot.
    Contrastive,
}

impl std::str::FromStr for Method {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "clipit" => Ok(Self::Clipit),
            "linear-probe" | "vision-linear" => Ok(Self::LinearProbe),
            "contrastive" => Ok(Self::Contrastive),
            other => Err(Error::msg(format!(
                "unknown method '{other}' (clipit, linear-probe, vision-linear, contrastive)"
            ))),
        }
    }
}

/// Everything that defines a run; saved as `run.json`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RunConfig {
    /// Training method.
    pub method: Method,
    /// Vision backbone folder.
    pub backbone: PathBuf,
    /// CLIP teacher folder (retrieval and text targets; CLIP-IT only).
    pub teacher: Option<PathBuf>,
    /// Report corpus (CLIP-IT only).
    pub reports: Option<PathBuf>,
    /// Labelled images: an ImageFolder, or a CSV manifest (`path,label[,split][,group]`).
    pub data: PathBuf,
    /// Pseudo-pairs from `clipit retrieve` to use instead of retrieving with the teacher.
    #[serde(default)]
    pub pairs: Option<PathBuf>,
    /// Class names, in label order.
    pub classes: Vec<String>,
    /// Fraction of each class held out for validation.
    pub val_fraction: f64,
    /// Head sizes.
    pub heads: HeadsConfig,
    /// LoRA on the backbone (CLIP-IT only).
    pub lora: Option<LoraConfig>,
    /// A linear-probe run whose trained h_v starts CLIP-IT's vision branch (frozen, with LoRA), as
    /// in the official code.
    #[serde(default)]
    pub init_from: Option<PathBuf>,
    /// Use the paper's augmentations on training images.
    pub augment: bool,
    /// Train LoRA on the teacher's text tower in the loop (the paper's default) instead of using
    /// precomputed text targets.
    #[serde(default)]
    pub text_lora: bool,
    /// Prompt templates of the contrastive method (`{}` is the class name): the first trains,
    /// all of them test. `None`: [`crate::zeroshot::DEFAULT_TEMPLATES`].
    #[serde(default)]
    pub templates: Option<Vec<String>>,
    /// Optimisation options.
    pub options: TrainOptions,
}

impl RunConfig {
    /// The contrastive method's templates.
    pub fn templates(&self) -> Vec<String> {
        self.templates.clone().unwrap_or_else(crate::zeroshot::default_templates)
    }
}

/// What a finished run reports.
#[derive(Debug, Clone, Serialize)]
pub struct RunSummary {
    /// Validation metrics of the best checkpoint.
    pub report: Report,
    /// Steps trained.
    pub steps: usize,
    /// Step of the best checkpoint.
    pub best_step: Option<usize>,
    /// Images per second over the whole training loop (loading, steps, validation, checkpoints).
    pub images_per_sec: f64,
    /// Images per second of the training steps with their data loading (waiting for the
    /// streaming loader included; validation and checkpoints excluded).
    pub train_images_per_sec: f64,
    /// Images per second of the model alone: forward, backward and optimizer step.
    pub model_images_per_sec: f64,
}

/// Validation entry written to `metrics.jsonl`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ValLog {
    /// Step after which validation ran.
    pub step: usize,
    /// Mean validation loss.
    pub val_loss: f64,
    /// Validation balanced accuracy.
    pub val_balanced_accuracy: f64,
}

/// Inputs to [`train`] beyond the config.
pub struct TrainInputs<'a> {
    /// Called after every step (progress bar, logging).
    pub on_step: &'a mut dyn FnMut(&StepLog, usize),
    /// Continue from the run folder's last checkpoint.
    pub resume: bool,
    /// The devices to train on (not autodiff), the first being the main one; empty: the CPU
    /// backend. With several, CLIP-IT steps are data parallel ([`super::parallel`]).
    pub devices: Vec<Device>,
}

/// The training and validation sets: a manifest's own splits (or a split of its training rows by
/// group, then by class), or a stratified split of an ImageFolder.
pub fn load_splits(cfg: &RunConfig) -> Result<(Dataset, Dataset)> {
    let seed = cfg.options.seed;
    if cfg.data.is_file() {
        let m = read_manifest(&cfg.data)?;
        let train = m
            .train
            .ok_or_else(|| Error::format(cfg.data.display(), "no training rows (split = train)"))?;
        let train = train.with_class_order(&cfg.classes)?;
        if let Some(val) = m.val {
            return Ok((train, val.with_class_order(&cfg.classes)?));
        }
        let groups = train.groups();
        let (t, v) = if groups.iter().any(Option::is_some) {
            group_split(&train.labels(), &groups, cfg.val_fraction, seed)?
        } else {
            stratified_split(&train.labels(), cfg.val_fraction, seed)?
        };
        return Ok((train.subset(&t)?, train.subset(&v)?));
    }
    let dataset = Dataset::from_image_folder(&cfg.data)?.with_class_order(&cfg.classes)?;
    let (t, v) = stratified_split(&dataset.labels(), cfg.val_fraction, seed)?;
    Ok((dataset.subset(&t)?, dataset.subset(&v)?))
}

/// Class names of a training data argument (ImageFolder or manifest), in label order.
pub fn data_classes(data: &Path) -> Result<Vec<String>> {
    if data.is_file() {
        Ok(read_manifest(data)?.classes)
    } else {
        Ok(Dataset::from_image_folder(data)?.classes)
    }
}

/// Builds the CLIP-IT model: the backbone's vision tower (with LoRA) and fresh heads.
/// The teacher's text tower with LoRA, for text-LoRA training (`None` with precomputed targets).
fn text_tower(cfg: &RunConfig, device: &Device) -> Result<Option<TextTransformer>> {
    match (&cfg.teacher, &cfg.lora, cfg.text_lora) {
        (Some(dir), Some(lora), true) => {
            device.seed(cfg.options.seed.wrapping_add(1));
            Ok(Some(text_lora_tower(
                &Model::load(dir, device)?,
                lora,
                cfg.options.seed.wrapping_add(1),
            )?))
        }
        _ => Ok(None),
    }
}

/// Builds a run's model: the backbone's vision tower (with LoRA for CLIP-IT and the contrastive
/// method), fresh heads, and the text tower with LoRA where the method trains one (`text` for
/// CLIP-IT's text-LoRA mode; the backbone's own for the contrastive method, which uses no head).
pub(super) fn build_model(
    cfg: &RunConfig,
    device: &Device,
    mut text: Option<TextTransformer>,
) -> Result<ClipItModel> {
    let seed = cfg.options.seed;
    device.seed(seed);
    let backbone = Model::load(&cfg.backbone, device)?;
    let mut vision = backbone.vision.clone().no_grad();
    let mut heads = cfg.heads.init(device);
    let Some(lora) = &cfg.lora else {
        return Ok(ClipItModel { backbone: vision, heads, text });
    };
    if cfg.method != Method::LinearProbe {
        vision = crate::lora::apply_lora(vision, &backbone.params, lora, seed)?;
    }
    if cfg.method == Method::Contrastive {
        text = Some(text_lora_tower(&backbone, lora, seed.wrapping_add(1))?);
    }
    if cfg.method == Method::Clipit {
        if let Some(probe) = &cfg.init_from {
            // The official code's vision branch: the unimodal baseline's trained h_v, frozen,
            // with a LoRA adapter like every other Linear of the vision model.
            let probe = super::inference::load_run(probe, &device.clone().without_autodiff())?;
            let (probe_cfg, probe_model) = (probe.cfg, probe.model);
            if probe_cfg.classes != cfg.classes || probe_cfg.backbone != cfg.backbone {
                return Err(Error::format(
                    cfg.init_from.as_ref().map_or(String::new(), |p| p.display().to_string()),
                    "--init-from needs a run on the same backbone and classes",
                ));
            }
            let h_v = probe_model.heads.h_v.to_device(device).no_grad();
            let mut names = crate::weights::ParamNames::default();
            names.register_linear(&h_v, "head");
            heads.h_v = crate::lora::apply_lora(h_v, &names, lora, seed)?;
        }
    }
    Ok(ClipItModel { backbone: vision, heads, text })
}

/// What a training or validation batch carries beside pixels and labels.
enum Targets {
    /// Nothing (vision-only losses).
    None,
    /// CLIP-IT: each image's paired report (its teacher embedding or token ids).
    Reports(TextTargets),
    /// The contrastive method: each image's class prompt.
    Prompts(std::sync::Arc<ClassPrompts>),
}

impl Targets {
    fn batch(&self, b: &Batch, device: &Device) -> TrainBatch {
        match self {
            Targets::None => {
                TrainBatch::from_host(b.pixels.clone(), b.crop, &b.labels, None, device)
            }
            Targets::Reports(t) => t.batch(b, device),
            Targets::Prompts(p) => p.batch(b, device),
        }
    }

    fn prompts(&self) -> Option<&ClassPrompts> {
        match self {
            Targets::Prompts(p) => Some(p),
            _ => None,
        }
    }
}

/// The training loss of `method` on a batch.
fn batch_loss(
    method: Method,
    model: &ClipItModel,
    batch: &TrainBatch,
    opts: &TrainOptions,
) -> Result<LossParts> {
    match method {
        Method::Clipit => clipit_batch_loss(model, batch, opts),
        Method::LinearProbe => vision_batch_loss(model, batch, opts),
        Method::Contrastive => contrastive_batch_loss(model, batch),
    }
}

/// Mean loss and class probabilities over a loader's data (no gradients).
fn evaluate(
    method: Method,
    model: &ClipItModel,
    loader: &BatchLoader,
    targets: &Targets,
    opts: &TrainOptions,
    device: &Device,
) -> Result<(f64, Vec<Vec<f32>>, Vec<usize>)> {
    let model = model.valid();
    let plain = device.clone().without_autodiff();
    let predictor = Predictor::new(method, &model, targets.prompts())?;
    let (mut loss_sum, mut n) = (0.0, 0usize);
    let (mut probs, mut labels) = (Vec::new(), Vec::new());
    for batch in loader.epoch(0) {
        if batch.is_empty() {
            continue;
        }
        let tb = targets.batch(&batch, &plain);
        let parts = batch_loss(method, &model, &tb, opts)?;
        loss_sum += f64::from(parts.total.into_scalar::<f32>()) * batch.len() as f64;
        n += batch.len();
        let (v, [_, cols]) = matrix_to_host(predictor.probs(&model, tb.pixels)?)?;
        probs.extend(v.chunks(cols).map(<[f32]>::to_vec));
        labels.extend_from_slice(&batch.labels);
    }
    if n == 0 {
        return Err(Error::msg("no validation image could be read"));
    }
    Ok((loss_sum / n as f64, probs, labels))
}

/// Where training batches come from.
enum Source {
    /// Streamed, augmented images (CLIP-IT, contrastive).
    Images { train: BatchLoader, val: BatchLoader, train_targets: Targets, val_targets: Targets },
    /// Cached features (linear probe), shuffled per epoch.
    Features { train: Features, val: Features, batch: usize, seed: u64 },
}

impl Source {
    fn batches_per_epoch(&self) -> usize {
        match self {
            Source::Images { train, .. } => train.num_batches(),
            Source::Features { train, batch, .. } => train.labels.len().div_ceil(*batch),
        }
    }

    /// The batches of one epoch (`None` for a batch with no readable image) and their sizes.
    fn epoch<'a>(
        &'a self,
        epoch: usize,
        device: &'a Device,
    ) -> Box<dyn Iterator<Item = Option<(StepInput, usize)>> + 'a> {
        match self {
            Source::Images { train, train_targets, .. } => {
                Box::new(train.epoch(epoch as u64).map(move |b| {
                    (!b.is_empty())
                        .then(|| (StepInput::Images(train_targets.batch(&b, device)), b.len()))
                }))
            }
            Source::Features { train, batch, seed, .. } => {
                let mut order: Vec<usize> = (0..train.labels.len()).collect();
                super::split::Rng::derive(*seed, &[epoch as u64]).shuffle(&mut order);
                let chunks: Vec<Vec<usize>> = order.chunks(*batch).map(<[usize]>::to_vec).collect();
                Box::new(chunks.into_iter().map(move |idx| {
                    let (x, labels) = train.batch(&idx, device);
                    Some((StepInput::Features { x, labels }, idx.len()))
                }))
            }
        }
    }

    /// Mean validation loss and class probabilities (no gradients).
    fn evaluate(
        &self,
        method: Method,
        model: &ClipItModel,
        opts: &TrainOptions,
        device: &Device,
    ) -> Result<(f64, Vec<Vec<f32>>, Vec<usize>)> {
        match self {
            Source::Images { val, val_targets, .. } => {
                evaluate(method, model, val, val_targets, opts, device)
            }
            Source::Features { val, .. } => {
                let model = model.valid();
                let plain = device.clone().without_autodiff();
                let all: Vec<usize> = (0..val.labels.len()).collect();
                let (x, labels) = val.batch(&all, &plain);
                let loss = f64::from(
                    probe_loss(&model, x.clone(), labels, opts)?.total.into_scalar::<f32>(),
                );
                let logits = model.heads.h_v.forward(x);
                let (v, [_, c]) = matrix_to_host(burn::tensor::activation::softmax(logits, 1))?;
                Ok((loss, v.chunks(c).map(<[f32]>::to_vec).collect(), val.labels.clone()))
            }
        }
    }
}

/// One step's input: an image batch, or cached features with their labels.
enum StepInput {
    /// Images (and text targets) for CLIP-IT.
    Images(TrainBatch),
    /// Cached backbone features `[n, dim]` and labels for the linear probe.
    Features { x: Tensor<2>, labels: Tensor<1, Int> },
}

/// Runs training as configured and writes the run folder.
pub fn train(cfg: &RunConfig, run: &RunDir, inputs: TrainInputs) -> Result<RunSummary> {
    let device = match inputs.devices.first() {
        Some(main) => main.clone(),
        None => crate::backend::Backend::Cpu.device()?,
    };
    train_on(cfg, run, inputs, &device.autodiff())
}

/// [`train`] on a given autodiff device.
pub fn train_on(
    cfg: &RunConfig,
    run: &RunDir,
    inputs: TrainInputs,
    device: &Device,
) -> Result<RunSummary> {
    let opts = &cfg.options;
    let replicas =
        super::parallel::replicas(&inputs.devices, device, cfg.method == Method::Clipit)?;
    let (train_set, val_set) = load_splits(cfg)?;

    let plain = device.clone().without_autodiff();
    let (train_targets, val_targets, text_tower) = match cfg.method {
        Method::Contrastive => {
            let clip = Model::load(&cfg.backbone, &plain)?;
            let prompts =
                std::sync::Arc::new(ClassPrompts::new(&clip, &cfg.classes, &cfg.templates())?);
            (Targets::Prompts(prompts.clone()), Targets::Prompts(prompts), None)
        }
        Method::Clipit => {
            let teacher_dir =
                cfg.teacher.as_ref().ok_or_else(|| Error::msg("CLIP-IT needs --teacher"))?;
            let teacher = Model::load(teacher_dir, &plain)?;
            if !teacher.has_text() {
                return Err(Error::msg(format!(
                    "{}: the teacher needs a text encoder",
                    teacher.name
                )));
            }
            let [train, val] = pair_reports(cfg, &teacher, [&train_set, &val_set])?;
            (Targets::Reports(train), Targets::Reports(val), text_tower(cfg, device)?)
        }
        Method::LinearProbe => (Targets::None, Targets::None, None),
    };

    let model = build_model(cfg, device, text_tower)?;
    let preprocess = Model::load(&cfg.backbone, &plain)?.preprocess;
    let mut train_cfg = LoaderConfig::new(preprocess, opts.batch_size);
    train_cfg.seed = opts.seed;
    train_cfg.augment = cfg.augment.then(super::augment::AugmentConfig::paper);
    let val_loader = BatchLoader::new(val_set, LoaderConfig::eval(preprocess, opts.batch_size))?;
    // The linear probe trains on backbone features computed once; CLIP-IT streams images.
    let source = match cfg.method {
        Method::LinearProbe => {
            eprintln!("caching frozen backbone features ...");
            let train = Features::extract(
                &model,
                &BatchLoader::new(train_set, LoaderConfig::eval(preprocess, opts.batch_size))?,
            )?;
            let val = Features::extract(&model, &val_loader)?;
            Source::Features { train, val, batch: opts.batch_size, seed: opts.seed }
        }
        Method::Clipit | Method::Contrastive => Source::Images {
            train: BatchLoader::new(train_set, train_cfg)?,
            val: val_loader,
            train_targets,
            val_targets,
        },
    };

    let mut trainer = Trainer::new(model, opts.clone());
    let mut state = RunState::default();
    if inputs.resume && run.has_checkpoint() {
        // A run killed while writing leaves its temporary files; the checkpoint itself is whole.
        for stale in crate::fsutil::remove_stale_temps(&run.root)? {
            eprintln!("removed {} (left by an interrupted write)", stale.display());
        }
        let (model, optim, saved) =
            run.load_checkpoint(trainer.model.clone(), trainer.optim.clone())?;
        trainer.model = model;
        trainer.optim = optim;
        trainer.step = saved.step;
        state = saved;
    } else {
        run.write_json("run.json", cfg)?;
        let _ = std::fs::remove_file(run.file("metrics.jsonl"));
    }

    let per_epoch = source.batches_per_epoch();
    let total = opts.max_steps.unwrap_or(usize::MAX).min(per_epoch * opts.epochs);
    let val_every = if opts.val_every == 0 { per_epoch } else { opts.val_every };
    let start = Instant::now();
    let mut images = 0usize;
    // Seconds spent waiting for the loader and inside the steps (the loss read syncs the device).
    let (mut loading, mut stepping) = (0.0f64, 0.0f64);
    'epochs: for epoch in state.epochs_done..opts.epochs {
        // On resume, skip the batches of this epoch that the checkpoint already covers.
        let skip = trainer.step.saturating_sub(epoch * per_epoch);
        let mut batches = source.epoch(epoch, device).skip(skip);
        loop {
            let waited = Instant::now();
            let Some(batch) = batches.next() else { break };
            loading += waited.elapsed().as_secs_f64();
            if trainer.step >= total {
                break 'epochs;
            }
            let Some((batch, n)) = batch else { continue };
            let stepped = Instant::now();
            let log = match &batch {
                StepInput::Images(b) if replicas.len() > 1 => {
                    parallel_step(&mut trainer, &replicas, epoch, b, |m, b| {
                        batch_loss(cfg.method, m, b, opts)
                    })?
                }
                StepInput::Images(b) => {
                    trainer.step(epoch, |m| batch_loss(cfg.method, m, b, opts))?
                }
                StepInput::Features { x, labels } => {
                    trainer.step(epoch, |m| probe_loss(m, x.clone(), labels.clone(), opts))?
                }
            };
            stepping += stepped.elapsed().as_secs_f64();
            images += n;
            run.log(&log)?;
            (inputs.on_step)(&log, total);
            state.step = trainer.step;
            if trainer.step % val_every == 0 || trainer.step == total {
                let (val_loss, probs, labels) =
                    source.evaluate(cfg.method, &trainer.model, opts, device)?;
                let report = Report::from_probs(&probs, &labels, &cfg.classes)?;
                run.log(&ValLog {
                    step: trainer.step,
                    val_loss,
                    val_balanced_accuracy: report.balanced_accuracy,
                })?;
                if val_loss.is_finite() && state.best_val_loss.is_none_or(|b| val_loss < b) {
                    state.best_val_loss = Some(val_loss);
                    state.best_step = Some(trainer.step);
                    run.save_params("best.bpk", &trainer.model)?;
                }
                run.save_checkpoint(&trainer.model, &trainer.optim, &state)?;
            }
        }
        state.epochs_done = epoch + 1;
        run.save_checkpoint(&trainer.model, &trainer.optim, &state)?;
    }
    let elapsed = start.elapsed().as_secs_f64();

    let best = run.load_params("best.bpk", trainer.model.clone())?;
    let (_, probs, labels) = source.evaluate(cfg.method, &best, opts, device)?;
    let report = Report::from_probs(&probs, &labels, &cfg.classes)?;
    run.write_json("report.json", &report)?;
    crate::fsutil::write_atomic(
        run.file("curves.svg"),
        super::plot::curves_svg(&run.file("metrics.jsonl"))?.as_bytes(),
    )?;
    Ok(RunSummary {
        report,
        steps: trainer.step,
        best_step: state.best_step,
        images_per_sec: images as f64 / elapsed.max(1e-9),
        train_images_per_sec: images as f64 / (loading + stepping).max(1e-9),
        model_images_per_sec: images as f64 / stepping.max(1e-9),
    })
}
