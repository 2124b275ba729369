//! LoRA against HF peft: adapters written by `tests/reference/make_lora_fixtures.py` (peft's own
//! `save_pretrained` on the PyTorch reference models) are imported into the Rust models and must
//! give peft's outputs; merge, unmerge, export, save/load, peft's init and which parameters train.
//! `peft.rs`: peft's adapters imported, merged, exported, saved; `apply.rs`: adapters made here
//! (targets, peft's init, options) and which parameters train. This file holds their helpers.
//!
//! Tolerance: max|Δ| / max|ref| ≤ 1e-4 on the CPU backend.

mod apply;
mod peft;
#[path = "../common/tensors.rs"]
mod tensors;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use burn::tensor::{Device, Tensor, TensorData};
use clipit::lora::{self, LoraAdapters, LoraConfig};
use clipit::model::Model;
use clipit::retrieval::matrix_to_host;
use safetensors::SafeTensors;
use tensors::rel_err;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn fixture(name: &str) -> PathBuf {
    root().join("tests/fixtures").join(name)
}

fn lora_dir(name: &str) -> PathBuf {
    root().join("tests/fixtures/lora").join(name)
}

fn cpu() -> Device {
    clipit::backend::Backend::Cpu.device().unwrap()
}

/// Tensors of a safetensors file.
struct Tensors(Vec<u8>);

impl Tensors {
    fn open(path: &Path) -> Self {
        Self(std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display())))
    }

    fn has(&self, name: &str) -> bool {
        tensors::has(&self.0, name)
    }

    fn f32(&self, name: &str) -> (Vec<f32>, Vec<usize>) {
        tensors::f32s(&self.0, name)
    }

    fn ids(&self, name: &str) -> Vec<Vec<u32>> {
        tensors::token_ids(&self.0, name)
    }

    /// name → (shape, raw bytes) for every tensor.
    fn raw(&self) -> Vec<(String, Vec<usize>, Vec<u8>)> {
        let st = SafeTensors::deserialize(&self.0).unwrap();
        let mut out: Vec<_> = st
            .tensors()
            .into_iter()
            .map(|(n, t)| (n, t.shape().to_vec(), t.data().to_vec()))
            .collect();
        out.sort_by(|a, b| a.0.cmp(&b.0));
        out
    }
}

/// Inputs of a base fixture and the model's outputs on them.
struct Probe {
    pixels: (Vec<f32>, [usize; 4]),
    ids: Option<Vec<Vec<u32>>>,
}

impl Probe {
    fn new(base: &str) -> Self {
        let exp = Tensors::open(&fixture(base).join("expected.safetensors"));
        let (p, s) = exp.f32("pixel_values");
        let ids = exp.has("input_ids").then(|| exp.ids("input_ids"));
        Self { pixels: (p, s.try_into().unwrap()), ids }
    }

    fn image(&self, model: &Model, device: &Device) -> Vec<f32> {
        let input =
            Tensor::<4>::from_data(TensorData::new(self.pixels.0.clone(), self.pixels.1), device);
        matrix_to_host(model.encode_images(input).unwrap()).unwrap().0
    }

    fn text(&self, model: &Model) -> Option<Vec<f32>> {
        let ids = self.ids.as_ref()?;
        Some(matrix_to_host(model.encode_token_ids(ids).unwrap()).unwrap().0)
    }

    /// (image, text) outputs.
    fn run(&self, model: &Model, device: &Device) -> (Vec<f32>, Option<Vec<f32>>) {
        (self.image(model, device), self.text(model))
    }
}

fn assert_close(name: &str, what: &str, got: &[f32], want: &[f32], tol: f32) {
    let err = rel_err(got, want);
    assert!(err <= tol, "{name}: {what}: rel err {err:e} > {tol:e}");
}

fn check_outputs(
    name: &str,
    what: &str,
    got: &(Vec<f32>, Option<Vec<f32>>),
    exp: &Tensors,
    prefix: &str,
) {
    assert_close(name, what, &got.0, &exp.f32(&format!("{prefix}image_embeds")).0, 1e-4);
    if let Some(text) = &got.1 {
        assert_close(name, what, text, &exp.f32(&format!("{prefix}text_embeds")).0, 1e-4);
    }
}

fn check_same(
    name: &str,
    what: &str,
    got: &(Vec<f32>, Option<Vec<f32>>),
    want: &(Vec<f32>, Option<Vec<f32>>),
    tol: f32,
) {
    assert_close(name, what, &got.0, &want.0, tol);
    if let (Some(a), Some(b)) = (&got.1, &want.1) {
        assert_close(name, what, a, b, tol);
    }
}

/// Attaches `adapters` to both towers; returns the merged report lists.
fn attach_all(
    mut model: Model,
    adapters: &LoraAdapters,
) -> (Model, BTreeSet<String>, BTreeSet<String>, BTreeSet<String>) {
    let (vision, rv) = adapters.attach(model.vision.clone(), &model.params).unwrap();
    model.vision = vision;
    let (mut attached, mut inert) =
        (BTreeSet::from_iter(rv.attached), BTreeSet::from_iter(rv.inert));
    let mut unmatched_v: BTreeSet<String> = rv.unmatched.into_iter().collect();
    if let Some(text) = model.text.clone() {
        let (text, rt) = adapters.attach(text, &model.params).unwrap();
        model.text = Some(text);
        attached.extend(rt.attached);
        inert.extend(rt.inert);
        // Unmatched overall = unmatched by both towers.
        let unmatched_t: BTreeSet<String> = rt.unmatched.into_iter().collect();
        unmatched_v = unmatched_v.intersection(&unmatched_t).cloned().collect();
    }
    (model, attached, inert, unmatched_v)
}

/// The adapters of both towers, read back from the model.
fn adapters_of(model: &Model, cfg: &LoraConfig) -> LoraAdapters {
    let mut all = LoraAdapters::from_module(&model.vision, &model.params, cfg).unwrap();
    if let Some(text) = &model.text {
        all.merge_from(LoraAdapters::from_module(text, &model.params, cfg).unwrap()).unwrap();
    }
    all
}

fn merge_model(mut model: Model, cfg: &LoraConfig) -> (Model, Vec<lora::MergedLora>) {
    let (vision, mv) = lora::merge(model.vision, cfg);
    model.vision = vision;
    let mut merged = vec![mv];
    if let Some(text) = model.text.take() {
        let (text, mt) = lora::merge(text, cfg);
        model.text = Some(text);
        merged.push(mt);
    }
    (model, merged)
}

fn unmerge_model(mut model: Model, merged: Vec<lora::MergedLora>) -> Model {
    let mut merged = merged.into_iter();
    model.vision = lora::unmerge(model.vision, merged.next().unwrap()).unwrap();
    if let Some(text) = model.text.take() {
        model.text = Some(lora::unmerge(text, merged.next().unwrap()).unwrap());
    }
    model
}
