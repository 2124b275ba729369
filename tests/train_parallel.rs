//! Data-parallel CLIP-IT training (`clipit::train::parallel`, `clipit train --devices`).
//!
//! Two steps with the batch split in halves across two devices must leave the same trainable
//! parameters as two steps with the whole batch on one device (augmentation off, no dropout in the
//! model, same initial weights): each half's loss is weighted by its share of the batch, so the
//! summed gradients are those of the batch mean. Compared per tensor as max|Δ| / max|ref|.
//!
//! - burn-flex plus wgpu's CPU adapter (Mesa lavapipe): the two CPU devices this machine has
//!   (burn-flex's device is a single unit, so the second one comes from another backend). It
//!   skips, with the reason, when there is no wgpu CPU adapter, unless `CLIPIT_REQUIRE_WGPU=1`
//!   (set by CI, which installs lavapipe).
//! - The same flex device twice (two worker threads): the split arithmetic alone, without Vulkan.
//!
//! Both are held to the same tolerances ([`PARAM_TOL`], [`UPDATE_TOL`], [`LOG_TOL`]): f32 sums in
//! another order (halves, other kernels) are the only expected difference.
//!
//! The CLI runs `clipit train --devices cpu,wgpu:cpu` on the demo bundle to the end and evaluates.

use std::collections::BTreeMap;

use burn::module::{Module, ModuleVisitor, Param};
use burn::tensor::{Device, Tensor};
use clipit::backend::Backend;
use clipit::lora::LoraConfig;
use clipit::model::Model;
use clipit::train::heads::{ClipItModel, HeadsConfig};
use clipit::train::parallel::{device_named, parallel_step, parse_devices, shard_sizes};
use clipit::train::trainer::{clipit_batch_loss, StepLog, TrainBatch, TrainOptions, Trainer};

mod common;
use common::{assert_fails, clipit, root, stderr};

/// Relative tolerance of the parameters after the steps, max|Δ| / max|ref| per tensor. Measured:
/// 5.9e-8 on one device, 2.4e-7 with one half on lavapipe.
const PARAM_TOL: f32 = 1e-5;
/// Relative tolerance of the updates (after − before, about ±lr per element under Adam), to the
/// largest update of each tensor. Adam's first step `g / (|g| + eps)` amplifies the rounding of
/// gradients near zero (see tests/train_step.rs), hence a looser bound than [`PARAM_TOL`].
/// Measured: 7.4e-6 on one device, 3.0e-5 with one half on lavapipe. A device whose gradients were
/// dropped, or a part not weighted by its share, moves updates by O(lr), a relative 1.
const UPDATE_TOL: f32 = 1e-3;
/// Relative tolerance of the logged loss, distillation part and gradient norm: a part not
/// weighted by its share doubles them. Measured: 1.1e-7.
const LOG_TOL: f64 = 1e-5;
const BATCH: usize = 8;
const STEPS: usize = 2;

fn options() -> TrainOptions {
    TrainOptions { batch_size: BATCH, lambda: 1.0, seed: 7, ..TrainOptions::default() }
}

/// The fixture CLIP's vision tower with LoRA and fresh heads, on the flex autodiff device.
fn model() -> ClipItModel {
    let plain = Device::flex();
    let clip = Model::load(&root().join("tests/fixtures/open_clip"), &plain).unwrap();
    let device = plain.autodiff();
    device.seed(7);
    let vision = clip.vision.clone().to_device(&device).no_grad();
    let vision = clipit::lora::apply_lora(vision, &clip.params, &LoraConfig::new(4, 8.0), 7)
        .expect("LoRA applies");
    let heads =
        HeadsConfig { feature_dim: clip.embed_dim, text_dim: 12, num_classes: 3, kd_layers: 1 };
    ClipItModel { backbone: vision, heads: heads.init(&device), text: None }
}

/// A fixed batch: pseudo-random pixels and text targets, three classes.
fn batch(device: &Device) -> TrainBatch {
    let mut state = 0x2545_f491_u32;
    let mut next = move || {
        state ^= state << 13;
        state ^= state >> 17;
        state ^= state << 5;
        (state as f32 / u32::MAX as f32) * 2.0 - 1.0
    };
    let pixels: Vec<f32> = (0..BATCH * 3 * 32 * 32).map(|_| next()).collect();
    let targets: Vec<f32> = (0..BATCH * 12).map(|_| next()).collect();
    let labels: Vec<usize> = (0..BATCH).map(|i| i % 3).collect();
    TrainBatch::from_host(pixels, 32, &labels, Some((targets, 12)), device)
}

/// Every trainable tensor of `model`, by parameter id, on the host.
fn trainable(model: &ClipItModel) -> BTreeMap<String, Vec<f32>> {
    struct Collect(BTreeMap<String, Vec<f32>>);
    impl ModuleVisitor for Collect {
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
            if param.is_require_grad() {
                let v = param.val().into_data().convert::<f32>().try_into_vec::<f32>().unwrap();
                self.0.insert(param.id.to_string(), v);
            }
        }
    }
    let mut c = Collect(BTreeMap::new());
    model.visit(&mut c);
    c.0
}

/// max|a − b| / max|b|.
fn rel(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    let diff = a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0.0, f32::max);
    diff / b.iter().map(|y| y.abs()).fold(f32::MIN_POSITIVE, f32::max)
}

/// Trains [`STEPS`] steps on the whole batch on one device, and the same split across `devices`
/// (autodiff, the first being the flex device), and checks the logs, parameters and updates agree.
fn compare(devices: &[Device]) {
    let opts = options();
    let start = model();
    let main = Device::flex().autodiff();
    let b = batch(&main);
    let mut one = Trainer::new(start.clone(), opts.clone());
    let mut many = Trainer::new(start.clone(), opts.clone());
    for step in 0..STEPS {
        let want: StepLog = one.step(0, |m| clipit_batch_loss(m, &b, &opts)).unwrap();
        let got = parallel_step(&mut many, devices, 0, &b, |m, b| clipit_batch_loss(m, b, &opts))
            .unwrap();
        eprintln!("step {step}: one device {want:?}\n        split {got:?}");
        for (name, w, g) in [
            ("loss", want.loss, got.loss),
            ("kd", want.kd, got.kd),
            ("norm", want.grad_norm, got.grad_norm),
        ] {
            assert!(((w - g) / w).abs() <= LOG_TOL, "step {step} {name}: {g} vs {w}");
        }
    }
    let (before, want, got) = (trainable(&start), trainable(&one.model), trainable(&many.model));
    assert!(!want.is_empty());
    let (mut worst_param, mut worst_update) = (0.0f32, 0.0f32);
    for (id, w) in &want {
        let g = &got[id];
        let b0 = &before[id];
        let up_w: Vec<f32> = w.iter().zip(b0).map(|(x, y)| x - y).collect();
        let up_g: Vec<f32> = g.iter().zip(b0).map(|(x, y)| x - y).collect();
        assert!(up_w.iter().any(|&u| u != 0.0), "parameter {id} did not move");
        worst_param = worst_param.max(rel(g, w));
        worst_update = worst_update.max(rel(&up_g, &up_w));
    }
    eprintln!("worst relative difference: parameters {worst_param:e}, updates {worst_update:e}");
    assert!(worst_param <= PARAM_TOL, "parameters differ by {worst_param:e}");
    assert!(worst_update <= UPDATE_TOL, "updates differ by {worst_update:e}");
}

#[test]
fn split_across_two_workers_on_one_device_matches_the_whole_batch() {
    let flex = Device::flex().autodiff();
    compare(&[flex.clone(), flex]);
}

/// wgpu's CPU adapter, or `None` (with the reason printed) where there is none.
fn wgpu_cpu() -> Option<Device> {
    match device_named("wgpu:cpu") {
        Ok(d) => Some(d),
        Err(e) if std::env::var("CLIPIT_REQUIRE_WGPU").as_deref() == Ok("1") => {
            panic!("CLIPIT_REQUIRE_WGPU=1 but {e}")
        }
        Err(e) => {
            eprintln!("skipping: no second CPU device: {e}");
            None
        }
    }
}

#[test]
fn halves_on_flex_and_lavapipe_match_one_step_on_the_whole_batch() {
    let Some(lavapipe) = wgpu_cpu() else { return };
    compare(&[Device::flex().autodiff(), lavapipe.autodiff()]);
}

#[test]
fn batches_split_evenly_and_device_lists_are_checked() {
    assert_eq!(shard_sizes(8, 2), vec![4, 4]);
    assert_eq!(shard_sizes(7, 3), vec![3, 2, 2]);
    assert_eq!(shard_sizes(1, 2), vec![1], "a device with no image gets no part");
    let err = |s: &str| parse_devices(s, Backend::Cpu).unwrap_err().to_string();
    for (spec, needle) in [
        ("0", "at least one device"),
        ("2", "the CPU backend is one device"),
        ("cpu,tpu:1", "unknown device 'tpu:1'"),
        ("cpu, cpu", "cpu is listed twice"),
        ("cuda:x", "'x' is not a device index"),
    ] {
        let e = err(spec);
        assert!(e.contains(needle) && e.contains(spec), "{spec}: {e}");
    }
    assert_eq!(parse_devices("1", Backend::Cpu).unwrap(), vec![Device::flex()]);
}

#[test]
fn clipit_train_on_two_cpu_devices_finishes_and_evaluates() {
    if wgpu_cpu().is_none() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let run = tmp.path().join("run");
    let out = clipit(&[
        "train",
        "--method",
        "clipit",
        "--backbone",
        "data/crc_demo/model",
        "--teacher",
        "data/crc_demo/model",
        "--reports",
        "data/crc_demo/reports.jsonl",
        "--data",
        "data/crc_demo/tiles",
        "--out",
        run.to_str().unwrap(),
        "--batch-size",
        "8",
        "--max-steps",
        "3",
        "--val-every",
        "3",
        "--no-augment",
        "--devices",
        "cpu,wgpu:cpu",
    ]);
    assert!(out.status.success(), "train failed: {}", stderr(&out));
    let metrics = std::fs::read_to_string(run.join("metrics.jsonl")).unwrap();
    let steps = metrics.lines().filter(|l| l.contains("\"grad_norm\"")).count();
    assert_eq!(steps, 3, "metrics.jsonl: {metrics}");
    assert!(run.join("report.json").exists() && run.join("best.bpk").exists());
    let eval = clipit(&[
        "eval",
        "--run",
        run.to_str().unwrap(),
        "--data",
        "data/crc_demo/tiles",
        "--json",
    ]);
    assert!(eval.status.success(), "eval failed: {}", stderr(&eval));
    let report: serde_json::Value = serde_json::from_slice(&eval.stdout).unwrap();
    let acc = report["balanced_accuracy"].as_f64().unwrap();
    assert!((0.0..=1.0).contains(&acc), "balanced accuracy {acc}");
}

#[test]
fn a_bad_device_list_fails_cleanly_before_loading() {
    let tmp = tempfile::tempdir().unwrap();
    let run = tmp.path().join("run");
    let out = clipit(&[
        "train",
        "--method",
        "linear-probe",
        "--backbone",
        "data/crc_demo/model",
        "--data",
        "data/crc_demo/tiles",
        "--out",
        run.to_str().unwrap(),
        "--devices",
        "cpu,cpu",
    ]);
    assert_fails(&out, &["--devices cpu,cpu", "listed twice"]);
    assert!(!run.exists(), "no run folder for a refused command");
}
