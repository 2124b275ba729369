//! The CLIP-IT training step against HF peft + PyTorch: `tests/reference/make_train_fixtures.py`
//! runs three steps of the official recipe (peft LoRA on a timm ViT and on a CONCH-like text
//! tower, the four heads, CE + λ·(1 − cos), `torch.optim.Adam` with L2 weight decay, eps 1e-8,
//! `clip_grad_norm_(0.5)`) on one batch; here the same model is rebuilt from the same initial
//! weights (the peft adapter folders through [`LoraAdapters::import_peft`], the heads from their
//! torch layout) and trained with [`Trainer::step`].
//!
//! Compared at every step, max|Δ| / max|ref| ≤ 1e-4 per tensor on the CPU backend
//! (`Device::flex().autodiff()`): the loss and its CE and distillation parts, the global gradient
//! norm, the gradient of every trainable tensor **before clipping** (what `loss.backward()` leaves
//! in `.grad`; the clipped gradient is that times `0.5 / (norm + 1e-6)`, the norm being compared
//! too), and every trainable tensor after the optimiser step. The update itself (after − before,
//! about lr per element) is compared as well, to 3e-3 of its largest element (see
//! [`UPDATE_TOL`]), so that the test does not rest on the parameters barely moving.
//!
//! Measured (flex CPU): losses and norms ≤ 1e-6, gradients ≤ 4e-6, parameters ≤ 4e-6, updates
//! ≤ 7.5e-4 (1.2e-4 apart from one ill-conditioned element).
//!
//! Modes: `precomputed` (t from the frozen text tower, computed once), `text_lora` (t computed in
//! the loop by the LoRA-adapted text tower, whose adapters train too, as in the official code) and
//! `text_lora_paper_compat` (the same with the official CE over softmax probabilities).
//!
//! `CLIPIT_TEST_BACKEND=wgpu|cuda` runs the same checks on a GPU (`scripts/gpu_check.sh`), with
//! the tolerances ten times looser: GPU kernels sum in other orders.

use std::path::{Path, PathBuf};

use burn::module::{Module, ParamId};
use burn::optim::GradientsParams;
use burn::tensor::{Device, Tensor, TensorData};
use clipit::lora::LoraConfig;
use clipit::lora::{lora_state, LoraAdapters};
use clipit::model::Model;
use clipit::retrieval::matrix_to_host;
use clipit::train::heads::{text_lora_tower, ClipItHeads, ClipItModel, Projector};
use clipit::train::trainer::{clipit_batch_loss, TrainBatch, TrainOptions, Trainer};
use clipit::weights::{linear_from_torch, ParamKind, ParamNames};
#[path = "common/tensors.rs"]
mod tensors;
use tensors::rel_err;

/// Relative tolerance (max|Δ| / max|ref|) for losses, gradients and parameters.
const TOL: f32 = 1e-4;
/// Relative tolerance for the Adam update (after − before), whose elements are about ±lr. The
/// floor is f32 rounding of `after − before` (≈1.2e-4 of lr for weights near 1); the worst element
/// seen (7.5e-4, paper-compat, `heads.fc0.0.weight`) is one where the clipped gradient and the L2
/// term nearly cancel, so Adam's first step `g / (|g| + eps)` amplifies rounding. A semantic
/// slip (eps, decoupled decay, clipping order) moves such elements by O(lr).
const UPDATE_TOL: f32 = 3e-3;
const STEPS: usize = 3;

/// The device under test: the CPU backend, or the one `CLIPIT_TEST_BACKEND` names.
fn test_device() -> Device {
    let name = std::env::var("CLIPIT_TEST_BACKEND").unwrap_or_else(|_| "cpu".into());
    let backend: clipit::backend::Backend = name.parse().unwrap();
    backend.device().unwrap_or_else(|e| panic!("CLIPIT_TEST_BACKEND={name}: {e}")).autodiff()
}

/// 1 on the CPU backend, 10 on a GPU.
fn tol_scale() -> f32 {
    match std::env::var("CLIPIT_TEST_BACKEND").as_deref() {
        Ok("wgpu") | Ok("cuda") => 10.0,
        _ => 1.0,
    }
}

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn fixture(name: &str) -> PathBuf {
    root().join("tests/fixtures").join(name)
}

fn train_dir() -> PathBuf {
    fixture("train_step")
}

/// Tensors of a safetensors file.
struct Tensors(Vec<u8>);

impl Tensors {
    fn open(path: &Path) -> Self {
        Self(std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display())))
    }

    fn names(&self) -> Vec<String> {
        tensors::names(&self.0)
    }

    fn f32(&self, name: &str) -> (Vec<f32>, Vec<usize>) {
        tensors::f32s(&self.0, name)
    }

    fn scalar(&self, name: &str) -> f32 {
        self.f32(name).0[0]
    }

    fn i64(&self, name: &str) -> (Vec<i64>, Vec<usize>) {
        tensors::i64s(&self.0, name)
    }
}

fn transpose(values: &[f32], rows: usize, cols: usize) -> Vec<f32> {
    let mut out = vec![0.0; values.len()];
    for i in 0..rows {
        for j in 0..cols {
            out[j * rows + i] = values[i * cols + j];
        }
    }
    out
}

/// One trainable tensor: its fixture key, parameter id, and whether Burn stores the transpose
/// of the (flattened to 2-D) PyTorch tensor.
struct Trainable {
    key: String,
    id: ParamId,
    transposed: bool,
}

/// A trainable tensor's current value (2-D or 1-D) in PyTorch's layout, flattened.
fn torch_layout(t: &Trainable, burn: (Vec<f32>, Vec<usize>)) -> Vec<f32> {
    let (v, dims) = burn;
    if t.transposed {
        transpose(&v, dims[0], dims[1])
    } else {
        v
    }
}

fn host(t: Tensor<2>) -> (Vec<f32>, Vec<usize>) {
    let (v, d) = matrix_to_host(t).unwrap();
    (v, d.to_vec())
}

fn host1(t: Tensor<1>) -> (Vec<f32>, Vec<usize>) {
    let n = t.dims()[0];
    (t.into_data().try_to_vec::<f32>().unwrap(), vec![n])
}

/// The heads' weights and biases: (key, Burn tensor of that param), in PyTorch naming.
fn head_tensors(h: &ClipItHeads) -> Vec<(String, ParamId, bool, (Vec<f32>, Vec<usize>))> {
    let mut out = Vec::new();
    for (name, lin) in [
        ("h_v", &h.h_v),
        ("h_d", &h.h_d.first),
        ("fc0.0", &h.fc0_in),
        ("fc0.2", &h.fc0_out),
        ("fc", &h.fc),
    ] {
        out.push((format!("heads.{name}.weight"), lin.weight.id, true, host(lin.weight.val())));
        let b = lin.bias.as_ref().unwrap();
        out.push((format!("heads.{name}.bias"), b.id, false, host1(b.val())));
    }
    out
}

/// Every LoRA factor of `module`: (key, id, Burn value), keys as peft names them.
fn lora_tensors<M: Module>(
    module: &M,
    names: &ParamNames,
    prefix: &str,
) -> Vec<(String, ParamId, bool, (Vec<f32>, Vec<usize>))> {
    let mut out = Vec::new();
    for s in lora_state(module) {
        let info = names.get(s.base).unwrap();
        let (ka, kb) = match info.kind {
            ParamKind::Embedding => ("lora_embedding_A", "lora_embedding_B"),
            _ => ("lora_A.weight", "lora_B.weight"),
        };
        out.push((format!("{prefix}.{}.{ka}", info.module()), s.a_id, true, host(s.a)));
        out.push((format!("{prefix}.{}.{kb}", info.module()), s.b_id, true, host(s.b)));
    }
    out
}

/// Every trainable tensor of the model, with its current value in PyTorch's layout.
fn snapshot(m: &Rebuilt) -> Vec<(Trainable, Vec<f32>)> {
    let mut all = lora_tensors(&m.model.backbone, &m.vision_names, "vision");
    if let (Some(text), Some(names)) = (&m.model.text, &m.text_names) {
        all.extend(lora_tensors(text, names, "text"));
    }
    all.extend(head_tensors(&m.model.heads));
    all.into_iter()
        .map(|(key, id, transposed, value)| {
            let t = Trainable { key, id, transposed };
            let v = torch_layout(&t, value);
            (t, v)
        })
        .collect()
}

/// The model of the fixtures, rebuilt in Rust.
struct Rebuilt {
    model: ClipItModel,
    vision_names: ParamNames,
    text_names: Option<ParamNames>,
    batch: TrainBatch,
}

fn load_heads(device: &Device) -> ClipItHeads {
    let st = Tensors::open(&train_dir().join("heads.safetensors"));
    let lin = |name: &str| {
        let (w, ws) = st.f32(&format!("{name}.weight"));
        let (b, bs) = st.f32(&format!("{name}.bias"));
        linear_from_torch(
            Tensor::<2>::from_data(TensorData::new(w, [ws[0], ws[1]]), device),
            Some(Tensor::<1>::from_data(TensorData::new(b, [bs[0]]), device)),
        )
    };
    ClipItHeads {
        h_v: lin("h_v"),
        h_d: Projector { first: lin("h_d"), second: None },
        fc0_in: lin("fc0.0"),
        fc0_out: lin("fc0.2"),
        fc: lin("fc"),
    }
}

fn rebuild(text_lora: bool, device: &Device) -> Rebuilt {
    let vit = Model::load(&fixture("timm_vit_small"), device).unwrap();
    let vision_adapters = LoraAdapters::import_peft(&train_dir().join("vision_lora")).unwrap();
    assert_eq!((vision_adapters.config.r, vision_adapters.config.alpha), (4, 8.0));
    let (backbone, report) = vision_adapters.attach(vit.vision, &vit.params).unwrap();
    assert_eq!(report.attached.len(), 9, "vision adapters: {report:?}");
    assert!(report.unmatched.is_empty() && report.inert.is_empty(), "{report:?}");

    let batch_st = Tensors::open(&train_dir().join("batch.safetensors"));
    let (pixels, ps) = batch_st.f32("pixel_values");
    let (labels, _) = batch_st.i64("labels");
    let (ids, is) = batch_st.i64("input_ids");
    let ids: Vec<Vec<u32>> =
        ids.chunks(is[1]).map(|r| r.iter().map(|&t| t as u32).collect()).collect();
    let n = labels.len();

    let conch = Model::load(&fixture("conch"), device).unwrap();
    let (text, text_names, text_targets) = if text_lora {
        let adapters = LoraAdapters::import_peft(&train_dir().join("text_lora")).unwrap();
        let (text, report) = adapters.attach(conch.text.clone().unwrap(), &conch.params).unwrap();
        // peft's text-tower adapters: token embedding + 2 × (c_fc, c_proj); the two
        // MultiheadAttention out_proj adapters are inert in peft and left out.
        assert_eq!(report.attached.len(), 5, "text adapters: {report:?}");
        assert_eq!(report.inert.len(), 2, "{report:?}");
        (Some(text), Some(conch.params), None)
    } else {
        // Precomputed: the frozen tower's L2-normalised embedding, as the fixture's.
        let plain = device.clone().without_autodiff();
        let frozen = Model::load(&fixture("conch"), &plain).unwrap();
        let t = frozen.encode_token_ids(&ids).unwrap();
        let t = t.clone() / t.square().sum_dim(1).sqrt();
        let (t, [_, d]) = matrix_to_host(t).unwrap();
        let err = rel_err(&t, &batch_st.f32("text_targets").0);
        assert!(err <= TOL, "precomputed text targets: rel err {err:e}");
        (None, None, Some((t, d)))
    };
    let labels: Vec<usize> = labels.iter().map(|&l| l as usize).collect();
    let mut batch = TrainBatch::from_host(pixels, ps[2], &labels, text_targets, device);
    assert_eq!(batch.labels.dims(), [n]);
    if text_lora {
        batch = batch.with_token_ids(ids);
    }
    let model = ClipItModel { backbone, heads: load_heads(device), text };
    Rebuilt { model, vision_names: vit.params, text_names, batch }
}

fn check(mode: &str, what: &str, got: &[f32], want: &[f32], tol: f32, worst: &mut f32) -> f32 {
    let err = rel_err(got, want);
    assert!(err <= tol, "{mode}: {what}: rel err {err:e} > {tol:e}");
    *worst = worst.max(err);
    err
}

fn run_mode(mode: &str, text_lora: bool, paper_compat: bool) {
    let device = test_device();
    let (tol, update_tol) = (TOL * tol_scale(), UPDATE_TOL * tol_scale());
    let exp = Tensors::open(&train_dir().join(format!("{mode}.safetensors")));
    let mut m = rebuild(text_lora, &device);
    let opts = TrainOptions {
        lr: 1e-3,
        weight_decay: 1e-4,
        grad_clip: Some(0.5),
        lambda: 1.0,
        paper_compat,
        ..TrainOptions::default()
    };
    let model = m.model.clone();
    let mut trainer = Trainer::new(model, opts.clone());
    let (mut worst_grad, mut worst_param, mut worst_update, mut worst_loss) =
        (0f32, 0f32, 0f32, 0f32);
    for s in 1..=STEPS {
        m.model = trainer.model.clone();
        let before = snapshot(&m);
        let keys: Vec<String> = exp
            .names()
            .into_iter()
            .filter_map(|k| k.strip_prefix(&format!("s{s}.grad.")).map(String::from))
            .collect();
        let mut ours: Vec<&str> = before.iter().map(|(t, _)| t.key.as_str()).collect();
        let mut theirs: Vec<&str> = keys.iter().map(String::as_str).collect();
        ours.sort_unstable();
        theirs.sort_unstable();
        assert_eq!(ours, theirs, "{mode}: trainable tensors differ from torch's");

        // Gradients before clipping, from the loss Trainer::step minimises.
        let parts = clipit_batch_loss(&trainer.model, &m.batch, &opts).unwrap();
        let grads = GradientsParams::from_grads(parts.total.backward(), &trainer.model);
        assert_eq!(grads.len(), before.len(), "{mode}: gradients on tensors that must stay frozen");
        for (t, _) in &before {
            let g = if t.transposed {
                grads.get::<2>(t.id).map(host)
            } else {
                grads.get::<1>(t.id).map(host1)
            };
            let g = g.unwrap_or_else(|| panic!("{mode}: {} got no gradient", t.key));
            let want = exp.f32(&format!("s{s}.grad.{}", t.key)).0;
            check(
                mode,
                &format!("step {s} grad {}", t.key),
                &torch_layout(t, g),
                &want,
                tol,
                &mut worst_grad,
            );
        }

        let log = trainer.step(0, |model| clipit_batch_loss(model, &m.batch, &opts)).unwrap();
        for (what, got) in
            [("loss", log.loss), ("ce", log.ce), ("kd", log.kd), ("grad_norm", log.grad_norm)]
        {
            let want = exp.scalar(&format!("s{s}.{what}"));
            check(mode, &format!("step {s} {what}"), &[got as f32], &[want], tol, &mut worst_loss);
        }

        m.model = trainer.model.clone();
        let after = snapshot(&m);
        for ((t, v), (t0, v0)) in after.iter().zip(&before) {
            assert_eq!(t.key, t0.key);
            let want = exp.f32(&format!("s{s}.param.{}", t.key)).0;
            check(mode, &format!("step {s} param {}", t.key), v, &want, tol, &mut worst_param);
            // Our update (from our previous value) against torch's (from torch's).
            let prev =
                if s == 1 { v0.clone() } else { exp.f32(&format!("s{}.param.{}", s - 1, t.key)).0 };
            let du: Vec<f32> = v.iter().zip(v0).map(|(a, b)| a - b).collect();
            let dw: Vec<f32> = want.iter().zip(&prev).map(|(a, b)| a - b).collect();
            check(
                mode,
                &format!("step {s} update {}", t.key),
                &du,
                &dw,
                update_tol,
                &mut worst_update,
            );
        }
    }
    eprintln!(
        "{mode}: worst rel err over {STEPS} steps: loss/norm {worst_loss:.1e}, grads {worst_grad:.1e}, params {worst_param:.1e}, updates {worst_update:.1e}"
    );
}

#[test]
fn precomputed_targets_match_peft_and_torch() {
    run_mode("precomputed", false, false);
}

#[test]
fn text_lora_matches_peft_and_torch() {
    run_mode("text_lora", true, false);
}

#[test]
fn text_lora_paper_compat_matches_peft_and_torch() {
    run_mode("text_lora_paper_compat", true, true);
}

/// `text_lora_tower` gives the teacher's text tower peft's adapters (token embedding and MLP
/// linears, not the inert `out_proj`), and a text-LoRA step trains them.
#[test]
fn text_lora_tower_trains_in_the_loop() {
    let device = test_device();
    let m = rebuild(false, &device);
    let conch = Model::load(&fixture("conch"), &device).unwrap();
    let text = text_lora_tower(&conch, &LoraConfig::new(4, 8.0), 3).unwrap();
    let before = lora_tensors(&text, &conch.params, "text");
    assert_eq!(before.len(), 10, "5 adapters");
    let ids = vec![vec![1, 5, 6, 2, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]; 4];
    let batch = TrainBatch { text_targets: None, ..m.batch }.with_token_ids(ids);
    let model = ClipItModel { text: Some(text), ..m.model };
    let opts = TrainOptions::default();
    // peft's init (B = 0; embedding A = 0) leaves only linear B and embedding A a gradient.
    let parts = clipit_batch_loss(&model, &batch, &opts).unwrap();
    let grads = GradientsParams::from_grads(parts.total.backward(), &model);
    for (key, id, _, _) in &before {
        let g = host(grads.get::<2>(*id).unwrap_or_else(|| panic!("{key}: no gradient"))).0;
        let live = key.ends_with("lora_B.weight") || key.ends_with("lora_embedding_A");
        assert_eq!(g.iter().any(|&v| v != 0.0), live, "{key}");
    }
    let mut trainer = Trainer::new(model, opts.clone());
    let log = trainer.step(0, |model| clipit_batch_loss(model, &batch, &opts)).unwrap();
    assert!(log.kd > 0.0 && log.loss.is_finite());
    let after = lora_tensors(trainer.model.text.as_ref().unwrap(), &conch.params, "text");
    for ((key, _, _, a), (_, _, _, b)) in after.iter().zip(&before) {
        assert_ne!(a.0, b.0, "{key} did not move");
    }
}

/// Text-LoRA mode without the reports' token ids is an error, not a silent fallback.
#[test]
fn text_lora_needs_token_ids() {
    let device = Device::flex().autodiff();
    let m = rebuild(true, &device);
    let mut batch = m.batch;
    batch.token_ids = None;
    let err =
        clipit_batch_loss(&m.model, &batch, &TrainOptions::default()).err().unwrap().to_string();
    assert!(err.contains("token ids"), "{err}");
}
