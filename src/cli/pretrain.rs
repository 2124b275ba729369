//! `clipit pretrain`: contrastive training of a whole small CLIP on labelled images and a
//! class-tagged report corpus (how the page's demo model is built).

use std::path::PathBuf;

use clap::Args;
use clipit::train::pretrain::{pretrain as run_pretrain, PretrainConfig};
use clipit::train::trainer::{StepLog, TrainOptions};
use clipit::weights::export::ExportDtype;
use clipit::Result;

use super::train::{show_step, step_progress};

/// Options of `clipit pretrain`.
#[derive(Args, Debug)]
pub struct PretrainArgs {
    /// CLIP folder (open_clip or Hugging Face): config and tokenizer, and weights unless
    /// --from-scratch.
    #[arg(long)]
    model: PathBuf,
    /// Start from random weights built from the folder's config.
    #[arg(long)]
    from_scratch: bool,
    /// Labelled images (one sub-folder per class).
    #[arg(long)]
    data: PathBuf,
    /// JSONL corpus, one {"id", "text", "class"} per line; each image pairs with a random report
    /// of its class at every epoch.
    #[arg(long)]
    reports: PathBuf,
    /// Output checkpoint folder (same format as --model).
    #[arg(long)]
    out: PathBuf,
    /// Passes over the images.
    #[arg(long, default_value_t = 20)]
    epochs: usize,
    /// Images per step.
    #[arg(long, default_value_t = 32)]
    batch_size: usize,
    /// Adam learning rate.
    #[arg(long, default_value_t = 1e-3)]
    lr: f64,
    /// Adam weight decay (L2).
    #[arg(long, default_value_t = 1e-4)]
    weight_decay: f64,
    /// Global gradient-norm clip (0 disables).
    #[arg(long, default_value_t = 1.0)]
    grad_clip: f64,
    /// Seed for initialisation, shuffling, pairing and augmentation.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Train without flips, quarter-turn rotations and colour jitter.
    #[arg(long)]
    no_augment: bool,
    /// Count every report of the image's class in the batch as a positive, not only its own
    /// (UniCL): with few classes the plain CLIP loss pushes same-class pairs apart.
    #[arg(long)]
    class_aware: bool,
    /// Anneal the learning rate along a cosine from --lr to 1e-4 over the whole run.
    #[arg(long)]
    cosine: bool,
    /// Write the weights as float16 (half the size).
    #[arg(long)]
    f16: bool,
}

/// `clipit pretrain`.
pub fn pretrain(a: &PretrainArgs) -> Result<()> {
    let cfg = PretrainConfig {
        model: a.model.clone(),
        from_scratch: a.from_scratch,
        data: a.data.clone(),
        reports: a.reports.clone(),
        out: a.out.clone(),
        augment: !a.no_augment,
        class_aware: a.class_aware,
        dtype: if a.f16 { ExportDtype::F16 } else { ExportDtype::F32 },
        options: TrainOptions {
            epochs: a.epochs,
            batch_size: a.batch_size,
            lr: a.lr,
            weight_decay: a.weight_decay,
            grad_clip: (a.grad_clip > 0.0).then_some(a.grad_clip),
            seed: a.seed,
            cosine: a.cosine,
            ..TrainOptions::default()
        },
    };
    let bar = step_progress();
    let mut on_step = |log: &StepLog, total: usize| show_step(&bar, log, total);
    let summary = run_pretrain(&cfg, &mut on_step)?;
    bar.finish_and_clear();
    eprintln!(
        "trained {} steps: loss {:.4} -> {:.4}; top-1 report of the image's class {:.1}% -> {:.1}%",
        summary.steps,
        summary.first_epoch_loss,
        summary.last_epoch_loss,
        100.0 * summary.retrieval_accuracy_before,
        100.0 * summary.retrieval_accuracy_after
    );
    eprintln!("wrote {}", a.out.display());
    println!("{}", serde_json::to_string(&summary).unwrap_or_default());
    Ok(())
}
