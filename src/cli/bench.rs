//! `clipit bench`: images per second and peak memory of embedding or training on full-size
//! random-init models.

use clap::Args;
use clipit::backend::Backend;
use clipit::bench::{run, BenchConfig, BenchDType, BenchTask};
use clipit::{Error, Result};

/// Options of `clipit bench`.
#[derive(Args, Debug)]
pub struct BenchArgs {
    /// vit-b-32, vit-b-16 (open_clip's full-size configs, random weights) or a checkpoint folder
    /// (its config; random weights).
    #[arg(long, default_value = "vit-b-32")]
    model: String,
    /// embed (image tower forward) or train (one CLIP-IT step with LoRA r 16, heads, Adam).
    #[arg(long, default_value = "embed")]
    task: BenchTask,
    /// Compute backend (cpu, wgpu, cuda).
    #[arg(long, default_value = "cpu")]
    backend: Backend,
    /// Images per batch.
    #[arg(long, default_value_t = 8)]
    batch: usize,
    /// Element type: f32, f16 or bf16 (the device's default float type for the whole run).
    #[arg(long, default_value = "f32")]
    dtype: BenchDType,
    /// Untimed warm-up runs.
    #[arg(long, default_value_t = 2)]
    warmup: usize,
    /// Timed runs (the median is reported).
    #[arg(long, default_value_t = 5)]
    runs: usize,
    /// Print one JSON object (`images_per_sec`, `gflops`, `peak_memory_bytes`, ...).
    #[arg(long)]
    json: bool,
}

/// `clipit bench`.
pub fn bench(a: &BenchArgs) -> Result<()> {
    let device = a.backend.device()?;
    let cfg = BenchConfig {
        model: a.model.clone(),
        task: a.task,
        batch: a.batch,
        warmup: a.warmup,
        runs: a.runs,
        dtype: a.dtype,
    };
    let r = run(&cfg, &device, &a.backend.to_string())?;
    if a.json {
        println!("{}", serde_json::to_string(&r).map_err(|e| Error::msg(e.to_string()))?);
    } else {
        println!(
            "{} {:?} batch {} {} on {}: {:.1} images/s (median {:.3} s over {} runs), {:.1} GFLOP/s, peak memory {:.0} MB",
            r.model,
            r.task,
            r.batch,
            r.dtype,
            r.backend,
            r.images_per_sec,
            r.median_s,
            r.runs,
            r.gflops,
            r.peak_memory_bytes as f64 / 1e6
        );
    }
    Ok(())
}
