//! Command-line parsing and the commands.

mod bench;
mod commands;
mod map;
mod pretrain;
mod train;

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};
use clipit::backend::Backend;
use clipit::Result;

/// clipit: private, on-device histology tile classification with CLIP-IT.
#[derive(Parser, Debug)]
#[command(name = "clipit", version, about, long_about = None)]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
    /// Refuse images with more pixels than this before decoding them (decompression bombs).
    #[arg(long, global = true, default_value_t = clipit::preprocess::DEFAULT_MAX_PIXELS)]
    max_pixels: u64,
}

/// Options every model-running command shares.
#[derive(Args, Debug)]
pub struct ModelArgs {
    /// Checkpoint folder (HF CLIP, open_clip, CONCH or timm ViT).
    #[arg(long)]
    model: PathBuf,
    /// Compute backend: cpu, wgpu or cuda.
    #[arg(long, default_value = "cpu")]
    backend: Backend,
    /// Images or texts per forward pass.
    #[arg(long, default_value_t = 16)]
    batch: usize,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Print projected image and text embeddings (before L2 normalisation) as one JSON object.
    Embed {
        #[command(flatten)]
        model: ModelArgs,
        /// An image to embed (repeatable; output keeps argument order).
        #[arg(long = "image")]
        images: Vec<PathBuf>,
        /// A text to embed (repeatable; output keeps argument order).
        #[arg(long = "text")]
        texts: Vec<String>,
    },
    /// Pair every image with its most similar reports (CLIP-IT step 1) and write pseudo-pairs.
    Retrieve {
        #[command(flatten)]
        model: ModelArgs,
        /// Folder of images (searched recursively).
        #[arg(long)]
        images: PathBuf,
        /// Report corpus: one report per line, or JSONL {"id","text"}.
        #[arg(long)]
        reports: PathBuf,
        /// Reports kept per image.
        #[arg(long, default_value_t = 1)]
        top_k: usize,
        /// Output JSONL of {"image","report_id","score","rank"}.
        #[arg(long)]
        out: PathBuf,
        /// Where corpus embeddings are cached (keyed by corpus and model).
        #[arg(long)]
        cache_dir: Option<PathBuf>,
        /// Do not read or write the embedding cache.
        #[arg(long)]
        no_cache: bool,
    },
    /// Classify images by similarity to class prompts; with class sub-folders, also score it.
    ZeroShot {
        #[command(flatten)]
        model: ModelArgs,
        /// Folder of images; sub-folders named after the classes give the labels.
        #[arg(long)]
        images: PathBuf,
        /// Class names, comma-separated.
        #[arg(long, value_delimiter = ',', required = true)]
        classes: Vec<String>,
        /// Prompt templates, one per line, each with a {} for the class name.
        #[arg(long)]
        templates: Option<PathBuf>,
        /// Write per-image predictions and probabilities as CSV.
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// Convert a PyTorch pickle checkpoint (.bin/.pt) to safetensors without running pickle code.
    Convert {
        /// Input `pytorch_model.bin`.
        input: PathBuf,
        /// Output `.safetensors`.
        output: PathBuf,
    },
    /// Train CLIP-IT or a baseline on labelled images; writes a run folder.
    Train(Box<train::TrainArgs>),
    /// Train a whole small CLIP contrastively on labelled images and class-tagged reports.
    Pretrain(Box<pretrain::PretrainArgs>),
    /// Evaluate a run on a labelled ImageFolder.
    Eval {
        /// Run folder written by `clipit train`.
        #[arg(long)]
        run: PathBuf,
        /// Labelled images (one sub-folder per class).
        #[arg(long)]
        data: PathBuf,
        /// Print one JSON object (balanced_accuracy, accuracy, macro_f1, auroc, confusion_matrix).
        #[arg(long)]
        json: bool,
    },
    /// Classify images with a trained run (vision only) and write a CSV.
    Classify {
        /// Run folder written by `clipit train`.
        #[arg(long)]
        run: PathBuf,
        /// Folder of images (searched recursively).
        #[arg(long)]
        images: PathBuf,
        /// Output CSV: image, prediction, one probability per class.
        #[arg(long)]
        out: PathBuf,
    },
    /// Tile a slide or large image, classify the tiles over tissue, write GeoJSON, CSV and overlay.
    Map(Box<map::MapArgs>),
    /// Images per second and peak memory of embedding or one CLIP-IT step (random-init models).
    Bench(Box<bench::BenchArgs>),
    /// Describe a checkpoint folder: architecture, parameters, dimensions, preprocessing.
    Info {
        /// Checkpoint folder.
        #[arg(long)]
        model: PathBuf,
    },
}

/// Runs the parsed command.
pub fn run(cli: Cli) -> Result<()> {
    clipit::preprocess::set_max_pixels(cli.max_pixels);
    match cli.command {
        Command::Embed { model, images, texts } => commands::embed(&model, &images, &texts),
        Command::Retrieve { model, images, reports, top_k, out, cache_dir, no_cache } => {
            let cache =
                if no_cache { None } else { Some(cache_dir.unwrap_or_else(default_cache_dir)) };
            commands::retrieve(&model, &images, &reports, top_k, &out, cache.as_deref())
        }
        Command::ZeroShot { model, images, classes, templates, out } => {
            commands::zero_shot(&model, &images, &classes, templates.as_deref(), out.as_deref())
        }
        Command::Convert { input, output } => commands::convert(&input, &output),
        Command::Info { model } => commands::info(&model),
        Command::Map(args) => map::map(&args),
        Command::Train(args) => train::train(&args),
        Command::Pretrain(args) => pretrain::pretrain(&args),
        Command::Bench(args) => bench::bench(&args),
        Command::Eval { run, data, json } => train::eval(&run, &data, json),
        Command::Classify { run, images, out } => train::classify(&run, &images, &out),
    }
}

/// `$XDG_CACHE_HOME/clipit` or `~/.cache/clipit`.
fn default_cache_dir() -> PathBuf {
    std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))
        .unwrap_or_else(std::env::temp_dir)
        .join("clipit")
}
