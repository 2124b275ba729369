//! `clipit bench`: throughput of image embedding and of one CLIP-IT training step, on full-size
//! random-init models (no weights needed), with a warm-up, the median of timed runs, and the
//! process's peak memory.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Instant;

use burn::module::Module;
use burn::tensor::{Device, Distribution, FloatDType, Tensor};
use serde::Serialize;

use crate::lora::{apply_lora, LoraConfig};
use crate::model::nn::{Attention, QkvProjection};
use crate::model::vit::VisionTransformer;
use crate::model::{Model, ModelFiles};
use crate::train::heads::{ClipItModel, HeadsConfig};
use crate::train::trainer::{clipit_batch_loss, TrainBatch, TrainOptions, Trainer};
use crate::{Error, Result};

/// What to time.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum BenchTask {
    /// Image embeddings (forward pass only).
    Embed,
    /// One CLIP-IT step: image tower with LoRA r 16 on every target, the four heads, CE + KD,
    /// backward, gradient clipping and Adam.
    Train,
}

impl std::str::FromStr for BenchTask {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "embed" => Ok(Self::Embed),
            "train" => Ok(Self::Train),
            other => Err(Error::msg(format!("unknown bench task '{other}' (embed, train)"))),
        }
    }
}

/// The result of one benchmark (what `clipit bench --json` prints).
#[derive(Debug, Clone, Serialize)]
pub struct BenchResult {
    /// Model name or folder.
    pub model: String,
    /// Task timed.
    pub task: BenchTask,
    /// Backend name.
    pub backend: String,
    /// Images per batch.
    pub batch: usize,
    /// Element type of the computation.
    pub dtype: String,
    /// Timed runs (after the warm-up).
    pub runs: usize,
    /// Median seconds per run.
    pub median_s: f64,
    /// Images per second at the median.
    pub images_per_sec: f64,
    /// Matrix-multiply FLOPs of one image (2 per multiply-add; see [`vision_flops_per_image`]):
    /// the forward pass for `embed`, twice it for `train` (forward, and the backward pass's
    /// input gradients through the frozen tower; the LoRA factors' and heads' FLOPs, under 3 %
    /// at r 16, are not counted).
    pub flops_per_image: f64,
    /// Achieved GFLOP/s at the median: `flops_per_image × images_per_sec / 1e9`, to compare with
    /// the machine's peak.
    pub gflops: f64,
    /// Peak memory: on a GPU, the bytes the device's allocator holds after the runs (its pools
    /// keep their pages, so this is their high-water mark); on the CPU, the process's peak
    /// resident memory (`VmHWM`). 0 where unknown.
    pub peak_memory_bytes: u64,
    /// The process's peak resident host memory (`VmHWM`), 0 where unknown.
    pub host_peak_memory_bytes: u64,
    /// On a GPU, the bytes the device's allocator still holds once the model, its inputs and the
    /// optimiser are dropped and the pools cleaned up (what unloading a model gives back is
    /// `peak_memory_bytes` minus this); `None` where the backend does not report its pools.
    pub device_memory_after_unload_bytes: Option<u64>,
}

/// The open_clip config of a built-in full-size model (`vit-b-32`, `vit-b-16`), as open_clip's
/// `ViT-B-32.json` / `ViT-B-16.json`.
pub fn builtin_config(name: &str) -> Option<serde_json::Value> {
    let patch = match name {
        "vit-b-32" => 32,
        "vit-b-16" => 16,
        _ => return None,
    };
    Some(serde_json::json!({
        "model_cfg": {
            "embed_dim": 512,
            "vision_cfg": {"image_size": 224, "layers": 12, "width": 768, "patch_size": patch},
            "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 512, "heads": 8, "layers": 12}
        }
    }))
}

/// A full-size model with random weights: a built-in name, or a checkpoint folder whose config
/// is used (its weights are not read).
pub fn random_model(model: &str, device: &Device) -> Result<Model> {
    let files = match builtin_config(model) {
        Some(cfg) => ModelFiles::Memory {
            name: model.to_string(),
            files: BTreeMap::from([(
                "open_clip_config.json".to_string(),
                Arc::from(cfg.to_string().into_bytes()),
            )]),
        },
        None => ModelFiles::Dir(model.into()),
    };
    Model::random(&files, device)
}

/// Peak resident memory of this process in bytes (Linux `VmHWM`; 0 elsewhere).
pub fn peak_memory_bytes() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map_or(0, |kb| kb * 1024)
}

/// `2 × tokens × d_in × d_out`: the FLOPs of one linear layer over `tokens` rows.
fn linear_flops(l: &burn::nn::Linear, tokens: usize) -> f64 {
    let [d_in, d_out] = l.weight.val().dims();
    2.0 * (tokens * d_in * d_out) as f64
}

/// FLOPs of `attn` with `nq` queries over `nk` keys: the projections and the two products.
fn attention_flops(attn: &Attention, nq: usize, nk: usize) -> f64 {
    let projections = match &attn.qkv {
        QkvProjection::Fused(l) => linear_flops(l, nq),
        QkvProjection::Split(p) => {
            linear_flops(&p.q, nq) + linear_flops(&p.k, nk) + linear_flops(&p.v, nk)
        }
    };
    let [d, _] = attn.out.weight.val().dims();
    projections + linear_flops(&attn.out, nq) + 4.0 * (nq * nk * d) as f64
}

/// Matrix-multiply FLOPs (2 per multiply-add) of one image through a ViT image tower: the patch
/// embedding, each block's projections, attention products and MLP, the attentional pooler and
/// the output projection. Norms, activations and softmax are not counted, as PyTorch's and
/// fvcore's FLOP counters do not count them.
pub fn vision_flops_per_image(v: &VisionTransformer) -> f64 {
    let patches = v.geometry.grid().pow(2);
    let prefix =
        usize::from(v.cls_token.is_some()) + v.reg_tokens.as_ref().map_or(0, |r| r.val().dims()[0]);
    let tokens = patches + prefix;
    let mut flops = linear_flops(&v.patch_embed, patches);
    for block in &v.blocks {
        flops += attention_flops(&block.attn, tokens, tokens);
        flops += linear_flops(&block.mlp.fc1, tokens) + linear_flops(&block.mlp.fc2, tokens);
    }
    if let Some(pool) = &v.attn_pool {
        flops += attention_flops(&pool.attn, pool.query.val().dims()[0], tokens);
    }
    flops + v.proj.as_ref().map_or(0.0, |p| linear_flops(p, 1))
}

/// Times `run` `warmup + runs` times and returns the median of the timed runs in seconds.
fn median_seconds(warmup: usize, runs: usize, mut run: impl FnMut() -> Result<()>) -> Result<f64> {
    for _ in 0..warmup {
        run()?;
    }
    let mut times = Vec::with_capacity(runs);
    for _ in 0..runs.max(1) {
        let t = Instant::now();
        run()?;
        times.push(t.elapsed().as_secs_f64());
    }
    times.sort_by(f64::total_cmp);
    Ok(times[times.len() / 2])
}

/// Options of one benchmark.
#[derive(Debug, Clone)]
pub struct BenchConfig {
    /// Built-in model name or checkpoint folder.
    pub model: String,
    /// Task.
    pub task: BenchTask,
    /// Images per batch.
    pub batch: usize,
    /// Warm-up runs (not timed).
    pub warmup: usize,
    /// Timed runs.
    pub runs: usize,
    /// Element type of weights and activations (`f32`, `f16`, `bf16`). For `train`, a half type
    /// means the whole step in that type (weights, gradients and Adam state): Burn has no
    /// autocast with f32 master weights.
    pub dtype: BenchDType,
}

/// The element type a benchmark computes in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BenchDType {
    /// 32-bit floats.
    F32,
    /// IEEE half precision.
    F16,
    /// bfloat16.
    BF16,
}

impl BenchDType {
    /// The name used on the command line and in the JSON.
    pub fn name(self) -> &'static str {
        match self {
            Self::F32 => "f32",
            Self::F16 => "f16",
            Self::BF16 => "bf16",
        }
    }

    fn float_dtype(self) -> FloatDType {
        match self {
            Self::F32 => FloatDType::F32,
            Self::F16 => FloatDType::F16,
            Self::BF16 => FloatDType::BF16,
        }
    }
}

impl std::str::FromStr for BenchDType {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "f32" => Ok(Self::F32),
            "f16" => Ok(Self::F16),
            "bf16" => Ok(Self::BF16),
            other => Err(Error::msg(format!("unknown dtype '{other}' (f32, f16, bf16)"))),
        }
    }
}

/// Runs one benchmark on `device` (a non-autodiff device; training adds autodiff itself).
///
/// A half `dtype` becomes the device's default float type, so it must be set before anything
/// else creates a tensor on that device in this process.
pub fn run(cfg: &BenchConfig, device: &Device, backend: &str) -> Result<BenchResult> {
    if cfg.batch == 0 {
        return Err(Error::msg("--batch must be at least 1"));
    }
    let mut device = device.clone();
    if cfg.dtype != BenchDType::F32 {
        if !device.supports_dtype(cfg.dtype.float_dtype()) {
            return Err(Error::msg(format!(
                "the {backend} device does not support {}",
                cfg.dtype.name()
            )));
        }
        device
            .configure(cfg.dtype.float_dtype())
            .map_err(|e| Error::msg(format!("cannot compute in {}: {e:?}", cfg.dtype.name())))?;
    }
    let device = &device;
    device.seed(0);
    let pixels = |size: usize, device: &Device| -> Tensor<4> {
        Tensor::random([cfg.batch, 3, size, size], Distribution::Normal(0.0, 1.0), device)
    };
    let (median_s, flops_per_image) = match cfg.task {
        BenchTask::Embed => {
            let model = random_model(&cfg.model, device)?;
            let x = pixels(model.preprocess.crop, device);
            let median_s = median_seconds(cfg.warmup, cfg.runs, || {
                // Reading the result back waits for the device to finish.
                model.vision.forward(x.clone()).into_data();
                Ok(())
            })?;
            (median_s, vision_flops_per_image(&model.vision))
        }
        BenchTask::Train => {
            let ad = device.clone().autodiff();
            let model = random_model(&cfg.model, &ad)?;
            let flops = 2.0 * vision_flops_per_image(&model.vision);
            let size = model.preprocess.crop;
            let vision = model.vision.clone().no_grad();
            let vision = apply_lora(vision, &model.params, &LoraConfig::new(16, 8.0), 0)?;
            let heads = HeadsConfig {
                feature_dim: model.embed_dim,
                text_dim: model.embed_dim,
                num_classes: 2,
                kd_layers: 1,
            };
            let net = ClipItModel { backbone: vision, heads: heads.init(&ad), text: None };
            let opts = TrainOptions { batch_size: cfg.batch, ..TrainOptions::default() };
            let mut trainer = Trainer::new(net, opts.clone());
            let labels: Vec<usize> = (0..cfg.batch).map(|i| i % 2).collect();
            let targets: Vec<f32> = (0..cfg.batch * model.embed_dim)
                .map(|i| ((i * 37 % 101) as f32 - 50.0) / 50.0)
                .collect();
            let x = pixels(size, device).into_data().convert::<f32>();
            let batch = TrainBatch::from_host(
                x.try_to_vec::<f32>().map_err(|e| Error::msg(format!("{e:?}")))?,
                size,
                &labels,
                Some((targets, model.embed_dim)),
                &ad,
            );
            let median_s = median_seconds(cfg.warmup, cfg.runs, || {
                trainer.step(0, |m| clipit_batch_loss(m, &batch, &opts)).map(|_| ())
            })?;
            (median_s, flops)
        }
    };
    let images_per_sec = cfg.batch as f64 / median_s;
    let host = peak_memory_bytes();
    let pools = device.memory_pool_usage().filter(|_| backend != "cpu");
    let device_bytes = pools.map_or(host, |u| u.bytes_reserved);
    // Everything the run allocated is dropped by now; give the pools' pages back and look again.
    let after_unload = pools.and_then(|_| {
        device.memory_cleanup();
        device.memory_pool_usage().map(|u| u.bytes_reserved)
    });
    Ok(BenchResult {
        model: cfg.model.clone(),
        task: cfg.task,
        backend: backend.to_string(),
        batch: cfg.batch,
        dtype: cfg.dtype.name().into(),
        runs: cfg.runs,
        median_s,
        images_per_sec,
        flops_per_image,
        gflops: flops_per_image * images_per_sec / 1e9,
        peak_memory_bytes: device_bytes,
        host_peak_memory_bytes: host,
        device_memory_after_unload_bytes: after_unload,
    })
}
