//! `clipit train`, `clipit eval` and `clipit classify`.

use std::path::{Path, PathBuf};

use clap::Args;
use clipit::backend::Backend;
use clipit::data::{list_images, ImageFolder};
use clipit::lora::LoraConfig;
use clipit::metrics::Report;
use clipit::model::Model;
use clipit::train::baseline::clip_baselines;
use clipit::train::checkpoint::RunDir;
use clipit::train::heads::HeadsConfig;
use clipit::train::inference::load_run;
use clipit::train::run::{
    data_classes, load_splits, train as run_training, Method, RunConfig, TrainInputs,
};
use clipit::train::trainer::{StepLog, TrainOptions};
use clipit::{Error, Result};
use indicatif::{ProgressBar, ProgressStyle};

use super::commands::csv_field;

/// Options of `clipit train` (defaults are the paper's).
#[derive(Args, Debug)]
pub struct TrainArgs {
    /// clipit, linear-probe, vision-linear (a CLIP folder as --backbone, image tower + linear
    /// head) or contrastive (LoRA on the whole CLIP given as --backbone, InfoNCE against class
    /// prompts; tested as zero-shot with --templates).
    #[arg(long, default_value = "clipit")]
    method: Method,
    /// Vision backbone folder (any model clipit loads, e.g. a timm ViT or a CLIP).
    #[arg(long)]
    backbone: PathBuf,
    /// CLIP teacher folder used for retrieval and text targets (CONCH in the paper).
    #[arg(long)]
    teacher: Option<PathBuf>,
    /// Labelled images: one sub-folder per class, or a CSV manifest `path,label[,split][,group]`.
    #[arg(long)]
    data: PathBuf,
    /// Pseudo-pairs from `clipit retrieve` (otherwise the teacher retrieves them).
    #[arg(long)]
    pairs: Option<PathBuf>,
    /// Unpaired report corpus (one per line, or JSONL {"id","text"}).
    #[arg(long)]
    reports: Option<PathBuf>,
    /// Run folder to write.
    #[arg(long)]
    out: PathBuf,
    /// Passes over the training set.
    #[arg(long, default_value_t = 1)]
    epochs: usize,
    /// Images per step.
    #[arg(long, default_value_t = 64)]
    batch_size: usize,
    /// Adam learning rate.
    #[arg(long, default_value_t = 1e-3)]
    lr: f64,
    /// Adam weight decay (L2).
    #[arg(long, default_value_t = 1e-4)]
    weight_decay: f64,
    /// Global gradient-norm clip (0 disables).
    #[arg(long, default_value_t = 0.5)]
    grad_clip: f64,
    /// LoRA rank on the backbone.
    #[arg(long, default_value_t = 16)]
    lora_r: usize,
    /// LoRA alpha (scaling alpha / r).
    #[arg(long, default_value_t = 8.0)]
    lora_alpha: f64,
    /// Weight of the distillation loss.
    #[arg(long = "lambda", default_value_t = 1.0)]
    lambda: f64,
    /// Layers in the distillation projector h_d (1 or 2).
    #[arg(long, default_value_t = 1)]
    kd_layers: usize,
    /// Reproduce the official code's cross-entropy over softmax probabilities.
    #[arg(long)]
    paper_compat: bool,
    /// Seed for initialisation, split, shuffling and augmentation.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Fraction of each class held out for validation.
    #[arg(long, default_value_t = 0.2)]
    val_fraction: f64,
    /// Validate every N steps (0: once per epoch).
    #[arg(long, default_value_t = 0)]
    val_every: usize,
    /// Stop after N steps.
    #[arg(long)]
    max_steps: Option<usize>,
    /// Cosine learning-rate schedule (T_max 12,500, eta_min 1e-4).
    #[arg(long)]
    cosine: bool,
    /// A linear-probe run (same backbone and data) whose trained h_v starts the vision branch,
    /// frozen with LoRA, as the official code does.
    #[arg(long)]
    init_from: Option<PathBuf>,
    /// Train LoRA on the teacher's text tower in the loop (the paper's default; slower) instead of
    /// precomputed text targets.
    #[arg(long)]
    text_lora: bool,
    /// Prompt templates for --method contrastive, one per line with `{}` (or CLASSNAME) for the
    /// class name: the first trains, all test. Default: the built-in histology templates.
    #[arg(long)]
    templates: Option<PathBuf>,
    /// Train without the paper's flips and colour jitter.
    #[arg(long)]
    no_augment: bool,
    /// Continue from the run folder's last checkpoint.
    #[arg(long)]
    resume: bool,
    /// First measure the two baselines on the same validation split, as the page's Train panel
    /// does (--backbone must be a CLIP): zero-shot with the default prompts and a linear probe
    /// (logistic regression) on the frozen embeddings; printed and written to baselines.json.
    #[arg(long)]
    baselines: bool,
    /// Compute backend (cpu, wgpu, cuda).
    #[arg(long, default_value = "cpu")]
    backend: Backend,
    /// Data-parallel CLIP-IT training on several devices (Burn's multi-device learner: each step's
    /// batch is split across them, gradients summed on the first, which also validates): a list
    /// such as `cpu,wgpu:cpu` (burn-flex and wgpu's CPU adapter), `wgpu:0,wgpu:1`,
    /// `cuda:0,cuda:1`, or a count N of --backend's devices (cuda:0..N-1, wgpu:0..N-1).
    #[arg(long, value_name = "LIST|N")]
    devices: Option<String>,
}

/// A progress bar for training steps (see [`show_step`]).
pub(super) fn step_progress() -> ProgressBar {
    let bar = ProgressBar::new(0);
    bar.set_style(
        ProgressStyle::with_template("{msg} [{bar:30}] {pos}/{len} steps ({eta})")
            .expect("template")
            .progress_chars("=> "),
    );
    bar
}

/// Shows a finished step (of `total`) and its loss on `bar`.
pub(super) fn show_step(bar: &ProgressBar, log: &StepLog, total: usize) {
    bar.set_length(total as u64);
    bar.set_position(log.step as u64);
    bar.set_message(format!("loss {:.4}", log.loss));
}

/// `clipit train`.
pub fn train(a: &TrainArgs) -> Result<()> {
    let devices = match &a.devices {
        Some(spec) => clipit::train::parallel::parse_devices(spec, a.backend)?,
        // One device: --backend's (training used to stay on the CPU whatever --backend said).
        None => vec![a.backend.device()?],
    };
    let plain = a.backend.device()?;
    let classes = data_classes(&a.data)?;
    let backbone = Model::load(&a.backbone, &plain)?;
    let text_dim = match (&a.method, &a.teacher) {
        (Method::Clipit, Some(t)) => Model::load(t, &plain)?.embed_dim,
        (Method::Clipit, None) => {
            return Err(Error::msg("--method clipit needs --teacher DIR and --reports FILE"))
        }
        (Method::Contrastive, _) if !backbone.has_text() => {
            return Err(Error::format(
                a.backbone.display(),
                "--method contrastive needs a CLIP model (with a text encoder) as --backbone",
            ))
        }
        _ => backbone.embed_dim,
    };
    let templates = a.templates.as_ref().map(clipit::zeroshot::read_templates).transpose()?;
    let cfg = RunConfig {
        method: a.method,
        backbone: a.backbone.canonicalize().map_err(|e| Error::io(&a.backbone, e))?,
        teacher: a
            .teacher
            .as_ref()
            .map(|t| t.canonicalize().map_err(|e| Error::io(t, e)))
            .transpose()?,
        reports: a
            .reports
            .as_ref()
            .map(|r| r.canonicalize().map_err(|e| Error::io(r, e)))
            .transpose()?,
        data: a.data.canonicalize().map_err(|e| Error::io(&a.data, e))?,
        pairs: a
            .pairs
            .as_ref()
            .map(|p| p.canonicalize().map_err(|e| Error::io(p, e)))
            .transpose()?,
        classes: classes.clone(),
        val_fraction: a.val_fraction,
        heads: HeadsConfig {
            feature_dim: backbone.embed_dim,
            text_dim,
            num_classes: classes.len(),
            kd_layers: a.kd_layers,
        },
        lora: matches!(a.method, Method::Clipit | Method::Contrastive)
            .then(|| LoraConfig::new(a.lora_r, a.lora_alpha)),
        templates,
        augment: !a.no_augment,
        text_lora: a.text_lora,
        init_from: a
            .init_from
            .as_ref()
            .map(|p| p.canonicalize().map_err(|e| Error::io(p, e)))
            .transpose()?,
        options: TrainOptions {
            epochs: a.epochs,
            batch_size: a.batch_size,
            lr: a.lr,
            weight_decay: a.weight_decay,
            grad_clip: (a.grad_clip > 0.0).then_some(a.grad_clip),
            lambda: a.lambda,
            paper_compat: a.paper_compat,
            seed: a.seed,
            val_every: a.val_every,
            cosine: a.cosine,
            max_steps: a.max_steps,
            ..TrainOptions::default()
        },
    };
    let run = RunDir::create(&a.out)?;
    if a.baselines {
        if !backbone.has_text() {
            return Err(Error::format(
                a.backbone.display(),
                "--baselines needs a CLIP (with a text encoder) as --backbone",
            ));
        }
        let (train, val) = load_splits(&cfg)?;
        let b = clip_baselines(&backbone, &train, &val, &clipit::zeroshot::default_templates())?;
        let fmt = |s: Option<clipit::train::baseline::Score>| {
            s.map_or("n/a".into(), |s| format!("{:.4}", s.balanced_accuracy))
        };
        eprintln!(
            "baselines on the {} validation images: zero-shot balanced accuracy {}, linear probe {}",
            val.len(),
            fmt(b.zero_shot),
            fmt(Some(b.linear_probe))
        );
        run.write_json("baselines.json", &b)?;
    }
    drop(backbone);
    let bar = step_progress();
    let mut on_step = |log: &StepLog, total: usize| show_step(&bar, log, total);
    let inputs = TrainInputs { on_step: &mut on_step, resume: a.resume, devices };
    let summary = run_training(&cfg, &run, inputs)?;
    bar.finish_and_clear();
    eprintln!(
        "trained {} steps: {:.1} images/s with data loading, {:.1} images/s for the model alone \
         ({:.1} images/s with validation and checkpoints); best step {:?}; validation balanced \
         accuracy {:.4}",
        summary.steps,
        summary.train_images_per_sec,
        summary.model_images_per_sec,
        summary.images_per_sec,
        summary.best_step,
        summary.report.balanced_accuracy
    );
    eprintln!("run folder: {}", run.root.display());
    println!("{}", summary.report.to_json());
    Ok(())
}

fn classify_paths(
    run: &Path,
    paths: &[PathBuf],
) -> Result<(Vec<String>, Vec<PathBuf>, Vec<Vec<f32>>)> {
    let device = Backend::Cpu.device()?;
    let run = load_run(run, &device)?;
    let preprocess = run.preprocess;
    let (mut kept, mut probs) = (Vec::new(), Vec::new());
    for chunk in paths.chunks(32) {
        let mut pixels = Vec::new();
        for p in chunk {
            match clipit::preprocess::load_rgb(p, clipit::preprocess::max_pixels()) {
                Ok(img) => {
                    pixels.extend(clipit::preprocess::preprocess(&img, &preprocess));
                    kept.push(p.clone());
                }
                Err(e) => eprintln!("skipped {e}"),
            }
        }
        let n = pixels.len() / (3 * preprocess.crop * preprocess.crop);
        if n > 0 {
            probs.extend(run.predict(pixels, n, &device)?);
        }
    }
    Ok((run.cfg.classes, kept, probs))
}

/// `clipit eval`.
pub fn eval(run: &Path, data: &Path, json: bool) -> Result<()> {
    let folder = ImageFolder::scan(data)?;
    let paths: Vec<PathBuf> = folder.items.iter().map(|(p, _)| p.clone()).collect();
    let (classes, kept, probs) = classify_paths(run, &paths)?;
    let index: Vec<usize> = folder
        .classes
        .iter()
        .map(|c| {
            classes.iter().position(|k| k == c).ok_or_else(|| {
                Error::format(
                    data.display(),
                    format!(
                        "class '{c}' is not one the run was trained on ({})",
                        classes.join(", ")
                    ),
                )
            })
        })
        .collect::<Result<_>>()?;
    let label_of: std::collections::HashMap<&PathBuf, usize> =
        folder.items.iter().map(|(p, c)| (p, index[*c])).collect();
    let labels: Vec<usize> = kept.iter().map(|p| label_of[p]).collect();
    let report = Report::from_probs(&probs, &labels, &classes)?;
    if json {
        let out = serde_json::json!({
            "balanced_accuracy": report.balanced_accuracy,
            "accuracy": report.accuracy,
            "macro_f1": report.macro_f1,
            "auroc": report.macro_auroc,
            "confusion_matrix": report.confusion,
        });
        println!("{out}");
    } else {
        println!("{}", report.to_json());
    }
    Ok(())
}

/// `clipit classify`.
pub fn classify(run: &Path, images: &Path, out: &Path) -> Result<()> {
    let paths = list_images(images)?;
    let (classes, kept, probs) = classify_paths(run, &paths)?;
    let mut csv = format!(
        "image,prediction,{}\n",
        classes.iter().map(|c| csv_field(c)).collect::<Vec<_>>().join(",")
    );
    for (p, row) in kept.iter().zip(&probs) {
        let best = clipit::metrics::argmax_rows(std::slice::from_ref(row))[0];
        let cells: Vec<String> = row.iter().map(|v| format!("{v:.6}")).collect();
        csv.push_str(&format!(
            "{},{},{}\n",
            csv_field(&p.display().to_string()),
            csv_field(&classes[best]),
            cells.join(",")
        ));
    }
    clipit::fsutil::write_atomic(out, csv.as_bytes())?;
    eprintln!("wrote predictions for {} images to {}", kept.len(), out.display());
    Ok(())
}
