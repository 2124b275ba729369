//! `clipit pretrain`: contrastive training of a whole (small) CLIP on image–text pairs, every
//! weight trainable, written back as a checkpoint folder of the same format (open_clip or
//! Hugging Face CLIP) that clipit, open_clip and transformers load.
//!
//! Pairs come from labelled images and a report corpus whose lines carry a class: at every epoch,
//! each image is paired with a report of its class drawn at random (seeded). The loss is the
//! symmetric InfoNCE of [`super::contrastive`]; the stored logit scale is 1/0.07, the
//! temperature used in training. This is how the project builds the page's demo model from
//! CC BY tiles and a templated corpus (`scripts/make_demo_bundle.sh`).

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use burn::module::Module;
use burn::tensor::Device;
use serde::Serialize;

use super::contrastive::{class_aware_batch_loss, contrastive_batch_loss, TEMPERATURE};
use super::data::{BatchLoader, Dataset, LoaderConfig};
use super::heads::{ClipItModel, HeadsConfig};
use super::split::Rng;
use super::trainer::{StepLog, TrainBatch, TrainOptions, Trainer};
use crate::embed::{embed_image_files, embed_texts};
use crate::model::{Architecture, Model, ModelFiles};
use crate::retrieval::{matrix_from_host, top_k};
use crate::weights::export::{save_safetensors, ExportDtype};
use crate::{Error, Result};

/// What `clipit pretrain` trains, on what, and where it writes.
#[derive(Debug, Clone)]
pub struct PretrainConfig {
    /// A CLIP folder (open_clip or Hugging Face): its config and tokenizer, and its weights unless
    /// `from_scratch`.
    pub model: PathBuf,
    /// Start from random weights (N(0, 0.02²)) instead of the folder's.
    pub from_scratch: bool,
    /// Labelled images: one sub-folder per class.
    pub data: PathBuf,
    /// JSONL corpus: one `{"id": ..., "text": ..., "class": ...}` per line.
    pub reports: PathBuf,
    /// Output folder (created; files written atomically).
    pub out: PathBuf,
    /// Flips, quarter-turn rotations and colour jitter on the training images
    /// ([`AugmentConfig::pathology`](super::augment::AugmentConfig::pathology)).
    pub augment: bool,
    /// Every report of an image's class in the batch is a positive for it, not only its own
    /// ([`class_aware_info_nce`](super::contrastive::class_aware_info_nce)).
    pub class_aware: bool,
    /// Element type of the written weights.
    pub dtype: ExportDtype,
    /// Optimisation (epochs, batch size, Adam, seed).
    pub options: TrainOptions,
}

/// What a pretraining run reports (also written as `pretrain.json` in the output folder).
#[derive(Debug, Clone, Serialize)]
pub struct PretrainSummary {
    /// Steps trained.
    pub steps: usize,
    /// Mean loss of the first epoch.
    pub first_epoch_loss: f64,
    /// Mean loss of the last epoch.
    pub last_epoch_loss: f64,
    /// Fraction of the images whose top-1 retrieved report (over the whole corpus) has the
    /// image's class, before training.
    pub retrieval_accuracy_before: f64,
    /// The same after training.
    pub retrieval_accuracy_after: f64,
    /// Images and reports used.
    pub images: usize,
    /// Reports in the corpus.
    pub reports: usize,
}

/// A corpus whose reports carry a class.
struct ClassCorpus {
    texts: Vec<String>,
    /// Report indices of each class of the dataset, in the dataset's class order.
    by_class: Vec<Vec<usize>>,
    /// Class of each report (dataset index).
    class_of: Vec<usize>,
}

fn read_class_corpus(path: &Path, classes: &[String]) -> Result<ClassCorpus> {
    let name = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
    let index: HashMap<&str, usize> =
        classes.iter().enumerate().map(|(i, c)| (c.as_str(), i)).collect();
    let (mut texts, mut class_of) = (Vec::new(), Vec::new());
    let mut by_class = vec![Vec::new(); classes.len()];
    for (i, line) in text.lines().enumerate() {
        let line = line.trim().trim_start_matches('\u{feff}');
        if line.is_empty() {
            continue;
        }
        let at = |m: String| Error::format(&name, format!("line {}: {m}", i + 1));
        let row: serde_json::Value =
            serde_json::from_str(line).map_err(|e| at(format!("invalid JSON ({e})")))?;
        let field = |k: &str| {
            row.get(k)
                .and_then(|v| v.as_str())
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .ok_or_else(|| at(format!("no \"{k}\" string")))
        };
        let (report, class) = (field("text")?, field("class")?);
        let Some(&c) = index.get(class) else {
            // Reports of classes the images do not have still serve as negatives at retrieval.
            texts.push(report.to_string());
            class_of.push(usize::MAX);
            continue;
        };
        by_class[c].push(texts.len());
        texts.push(report.to_string());
        class_of.push(c);
    }
    if let Some(c) = by_class.iter().position(Vec::is_empty) {
        return Err(Error::format(&name, format!("no report has the class '{}'", classes[c])));
    }
    Ok(ClassCorpus { texts, by_class, class_of })
}

/// Fraction of `data`'s images whose top-1 report (by cosine) has the image's class.
fn retrieval_accuracy(model: &Model, data: &Dataset, corpus: &ClassCorpus) -> Result<f64> {
    let device = model.vision.pos_embed.val().device();
    let paths: Vec<PathBuf> = data.samples.iter().map(|s| s.path.clone()).collect();
    let images = embed_image_files(model, &paths, 32, false, |_| {})?;
    let texts = embed_texts(model, &corpus.texts, 32, |_| {})?;
    let hits = top_k(
        matrix_from_host(&images.values, images.dim, &device)?,
        matrix_from_host(&texts, model.embed_dim, &device)?,
        1,
    )?;
    let right =
        hits.iter().zip(&data.samples).filter(|(h, s)| corpus.class_of[h[0].0] == s.label).count();
    Ok(right as f64 / data.len().max(1) as f64)
}

/// The file a format keeps its weights in.
fn weights_file(arch: Architecture) -> Result<&'static str> {
    match arch {
        Architecture::OpenClip => Ok("open_clip_model.safetensors"),
        Architecture::HfClip => Ok("model.safetensors"),
        other => {
            Err(Error::msg(format!("pretrain writes open_clip or Hugging Face CLIP, not {other}")))
        }
    }
}

/// Trains as configured, writes the checkpoint folder, and reports.
pub fn pretrain(
    cfg: &PretrainConfig,
    on_step: &mut dyn FnMut(&StepLog, usize),
) -> Result<PretrainSummary> {
    let opts = &cfg.options;
    let plain = crate::backend::Backend::Cpu.device()?;
    let device = plain.clone().autodiff();
    device.seed(opts.seed);
    let files = ModelFiles::Dir(cfg.model.clone());
    let load = |d: &Device| {
        if cfg.from_scratch {
            Model::random(&files, d)
        } else {
            Model::load_files(&files, d)
        }
    };
    let clip = load(&device)?;
    let weights = weights_file(clip.architecture)?;
    if !clip.has_text() {
        return Err(Error::format(
            cfg.model.display(),
            "pretrain needs a CLIP with a text encoder",
        ));
    }
    let data = Dataset::from_image_folder(&cfg.data)?;
    let corpus = read_class_corpus(&cfg.reports, &data.classes)?;
    let ids = clip.tokenize(&corpus.texts)?;
    let before = retrieval_accuracy(&without_autodiff(&clip), &data, &corpus)?;

    let mut loader_cfg = LoaderConfig::new(clip.preprocess, opts.batch_size);
    loader_cfg.seed = opts.seed;
    loader_cfg.drop_last = data.len() > opts.batch_size;
    loader_cfg.augment = cfg.augment.then(super::augment::AugmentConfig::pathology);
    let n_images = data.len();
    let loader = BatchLoader::new(data.clone(), loader_cfg)?;
    let heads = HeadsConfig {
        feature_dim: clip.embed_dim,
        text_dim: clip.embed_dim,
        num_classes: 1,
        kd_layers: 1,
    };
    let model = ClipItModel {
        backbone: clip.vision.clone(),
        heads: heads.init(&device),
        text: clip.text.clone(),
    };
    let total = opts.max_steps.unwrap_or(usize::MAX).min(loader.num_batches() * opts.epochs);
    // A cosine schedule spans this run.
    let mut trainer = Trainer::new(model, TrainOptions { cosine_steps: total, ..opts.clone() });
    let (mut first, mut last) = (f64::NAN, f64::NAN);
    'epochs: for epoch in 0..opts.epochs {
        let (mut sum, mut n) = (0.0, 0usize);
        for b in loader.epoch(epoch as u64) {
            if trainer.step >= total {
                break 'epochs;
            }
            if b.len() < 2 {
                continue;
            }
            let pick: Vec<Vec<u32>> = b
                .indices
                .iter()
                .zip(&b.labels)
                .map(|(&i, &l)| {
                    let pool = &corpus.by_class[l];
                    let mut rng = Rng::derive(opts.seed, &[epoch as u64, i as u64]);
                    ids[pool[rng.below(pool.len() as u64) as usize]].clone()
                })
                .collect();
            let batch = TrainBatch::from_host(b.pixels.clone(), b.crop, &b.labels, None, &device)
                .with_token_ids(pick);
            let loss =
                if cfg.class_aware { class_aware_batch_loss } else { contrastive_batch_loss };
            let log = trainer.step(epoch, |m| loss(m, &batch))?;
            on_step(&log, total);
            sum += log.loss;
            n += 1;
        }
        let mean = sum / n.max(1) as f64;
        if epoch == 0 {
            first = mean;
        }
        last = mean;
    }

    // The trained towers keep the parameter ids of `clip`'s, so its checkpoint names apply.
    let trained = trainer.model.valid();
    let mut clip = clip;
    clip.vision = trained.backbone;
    clip.text = trained.text;
    clip.logit_scale = (1.0 / TEMPERATURE).ln() as f32;
    let after = retrieval_accuracy(&clip, &data, &corpus)?;

    let out = &cfg.out;
    std::fs::create_dir_all(out).map_err(|e| Error::io(out, e))?;
    for entry in std::fs::read_dir(&cfg.model).map_err(|e| Error::io(&cfg.model, e))? {
        let path = entry.map_err(|e| Error::io(&cfg.model, e))?.path();
        let name = path.file_name().and_then(|n| n.to_str()).unwrap_or_default();
        let is_weights = name.ends_with(".safetensors") || name.ends_with(".bin");
        if path.is_file() && !is_weights && !name.starts_with("expected") {
            let bytes = std::fs::read(&path).map_err(|e| Error::io(&path, e))?;
            crate::fsutil::write_atomic(out.join(name), &bytes)?;
        }
    }
    save_safetensors(&out.join(weights), &clip.checkpoint_tensors()?, cfg.dtype)?;
    let summary = PretrainSummary {
        steps: trainer.step,
        first_epoch_loss: first,
        last_epoch_loss: last,
        retrieval_accuracy_before: before,
        retrieval_accuracy_after: after,
        images: n_images,
        reports: corpus.texts.len(),
    };
    let json = serde_json::to_vec_pretty(&summary).map_err(|e| Error::msg(e.to_string()))?;
    crate::fsutil::write_atomic(out.join("pretrain.json"), &json)?;
    Ok(summary)
}

/// `model` without autodiff, keeping parameter ids (and so their names).
fn without_autodiff(model: &Model) -> Model {
    Model {
        architecture: model.architecture,
        name: model.name.clone(),
        vision: model.vision.valid(),
        text: model.text.as_ref().map(Module::valid),
        tokenizer: model.tokenizer.clone(),
        logit_scale: model.logit_scale,
        preprocess: model.preprocess,
        embed_dim: model.embed_dim,
        ignored_tensors: model.ignored_tensors.clone(),
        params: model.params.clone(),
    }
}
