//! LoRA against HF peft: adapters written by `tests/reference/make_lora_fixtures.py` (peft's own
//! `save_pretrained` on the PyTorch reference models) are imported into the Rust models and must
//! give peft's outputs; merge, unmerge, export, save/load, peft's init and which parameters train.
//!
//! Tolerance: max|Δ| / max|ref| ≤ 1e-4 on the CPU backend.

use std::collections::{BTreeSet, HashSet};
use std::path::{Path, PathBuf};

use burn::module::list_param_ids;
use burn::optim::GradientsParams;
use burn::tensor::{Device, Tensor, TensorData};
use clipit::lora::{self, LoraAdapters, LoraConfig};
use clipit::model::Model;
use clipit::retrieval::matrix_to_host;
use clipit::weights::ParamKind;
use safetensors::SafeTensors;

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
        SafeTensors::deserialize(&self.0).unwrap().names().contains(&name)
    }

    fn f32(&self, name: &str) -> (Vec<f32>, Vec<usize>) {
        let st = SafeTensors::deserialize(&self.0).unwrap();
        let t = st.tensor(name).unwrap_or_else(|_| panic!("{name} missing"));
        let v =
            t.data().chunks_exact(4).map(|b| f32::from_le_bytes(b.try_into().unwrap())).collect();
        (v, t.shape().to_vec())
    }

    fn ids(&self, name: &str) -> Vec<Vec<u32>> {
        let st = SafeTensors::deserialize(&self.0).unwrap();
        let t = st.tensor(name).unwrap();
        let cols = t.shape()[1];
        let v: Vec<u32> = t
            .data()
            .chunks_exact(8)
            .map(|b| i64::from_le_bytes(b.try_into().unwrap()) as u32)
            .collect();
        v.chunks(cols).map(<[u32]>::to_vec).collect()
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

fn rel_err(got: &[f32], want: &[f32]) -> f32 {
    assert_eq!(got.len(), want.len(), "length");
    let max_ref = want.iter().fold(0f32, |m, v| m.max(v.abs()));
    let max_diff = got.iter().zip(want).fold(0f32, |m, (a, b)| m.max((a - b).abs()));
    max_diff / max_ref
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

/// peft adapter → Rust model: adapted, merged and unmerged outputs equal peft's; the export
/// is peft's file again.
fn check_peft_fixture(name: &str, inert_expected: usize, unmatched_prefixes: &[&str]) {
    let device = cpu();
    let dir = lora_dir(name);
    let exp = Tensors::open(&dir.join("expected.safetensors"));
    let probe = Probe::new(name);
    let model = Model::load(&fixture(name), &device).unwrap();
    check_outputs(name, "base outputs", &probe.run(&model, &device), &exp, "base_");

    let adapters = LoraAdapters::import_peft(&dir).unwrap();
    assert_eq!((adapters.config.r, adapters.config.alpha, adapters.config.dropout), (4, 8.0, 0.0));
    let (model, attached, inert, unmatched) = attach_all(model, &adapters);
    assert_eq!(
        attached.len() + inert.len() + unmatched.len(),
        adapters.modules.len(),
        "{name}: every adapter accounted for"
    );
    assert_eq!(inert.len(), inert_expected, "{name}: inert {inert:?}");
    assert!(inert.iter().all(|m| m.ends_with("attn.out_proj")), "{name}: inert {inert:?}");
    for m in &unmatched {
        assert!(
            unmatched_prefixes.iter().any(|p| m.starts_with(p)),
            "{name}: unexpected unmatched adapter {m}"
        );
    }

    // Adapted forward = peft's.
    let adapted = probe.run(&model, &device);
    check_outputs(name, "adapted outputs", &adapted, &exp, "");

    // Export = peft's own tensors, bytes and shapes (for every adapter that was attached).
    let cfg = adapters.config.clone();
    let out = tempfile::tempdir().unwrap();
    adapters_of(&model, &cfg).export_peft(out.path()).unwrap();
    let ours = Tensors::open(&out.path().join("adapter_model.safetensors")).raw();
    let theirs: Vec<_> = Tensors::open(&dir.join("adapter_model.safetensors"))
        .raw()
        .into_iter()
        .filter(|(k, _, _)| {
            attached.iter().any(|m| k.starts_with(&format!("base_model.model.{m}.lora_")))
        })
        .collect();
    assert_eq!(ours.len(), 2 * attached.len(), "{name}: exported tensor count");
    assert_eq!(ours, theirs, "{name}: exported tensors differ from peft's");
    if inert.is_empty() && unmatched.is_empty() {
        let peft_bytes = std::fs::read(dir.join("adapter_model.safetensors")).unwrap();
        let our_bytes = std::fs::read(out.path().join("adapter_model.safetensors")).unwrap();
        assert!(our_bytes == peft_bytes, "{name}: exported file is not byte-identical to peft's");
    }
    let cfg_json: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out.path().join("adapter_config.json")).unwrap())
            .unwrap();
    assert_eq!(cfg_json["peft_type"], "LORA");
    assert_eq!(cfg_json["r"], 4);
    assert_eq!(cfg_json["lora_alpha"], 8);
    assert_eq!(cfg_json["target_modules"].as_array().unwrap().len(), attached.len());
    // ... and it imports again to the same adapters.
    let again = LoraAdapters::import_peft(out.path()).unwrap();
    assert_eq!(again.modules.len(), attached.len());
    for (m, f) in &again.modules {
        assert_eq!(f, &adapters.modules[m], "{name}: {m} after export + import");
    }

    // Merge: same outputs as peft's merged model (without inert adapters, = the adapted ones).
    let (merged_model, merged) = merge_model(model, &cfg);
    assert!(lora::lora_state(&merged_model.vision).is_empty(), "{name}: adapters left after merge");
    let merged_out = probe.run(&merged_model, &device);
    if inert.is_empty() {
        check_outputs(name, "merged outputs", &merged_out, &exp, "merged_");
    }
    check_same(name, "merged vs adapted", &merged_out, &adapted, 1e-4);

    // Unmerge: the adapters are back and give the adapted outputs again.
    let restored = unmerge_model(merged_model, merged);
    assert_eq!(
        lora::lora_state(&restored.vision).len()
            + restored.text.as_ref().map_or(0, |t| lora::lora_state(t).len()),
        attached.len()
    );
    check_outputs(name, "unmerged outputs", &probe.run(&restored, &device), &exp, "");
}

#[test]
fn peft_timm_vit_small() {
    check_peft_fixture("timm_vit_small", 0, &[]);
}

#[test]
fn peft_hf_clip_quickgelu() {
    check_peft_fixture("hf_clip_quickgelu", 0, &[]);
}

#[test]
fn peft_conch() {
    // Inert: the text tower's 2 out_proj and the contrastive pooler's; unmatched: the parts
    // CONCH's Rust model does not load.
    check_peft_fixture("conch", 3, &["text_decoder.", "visual.attn_pool_caption."]);
}

/// With `mha_out_proj` on, the MultiheadAttention out_proj adapters work: the Rust forward then
/// equals peft's *merged* model (the only place peft uses them).
#[test]
fn conch_mha_out_proj_opt_in_matches_peft_merge() {
    let device = cpu();
    let dir = lora_dir("conch");
    let exp = Tensors::open(&dir.join("expected.safetensors"));
    let mut adapters = LoraAdapters::import_peft(&dir).unwrap();
    adapters.config.targets.mha_out_proj = true;
    let model = Model::load(&fixture("conch"), &device).unwrap();
    let (model, attached, inert, _) = attach_all(model, &adapters);
    assert!(inert.is_empty());
    assert!(attached.contains("visual.attn_pool_contrast.attn.out_proj"));
    // Read back from the model, the factors are peft's (the out_proj ones stored as Linear).
    let back = adapters_of(&model, &adapters.config);
    assert_eq!(back.modules.len(), attached.len());
    for (m, f) in &back.modules {
        assert_eq!(f, &adapters.modules[m], "{m}");
    }
    check_outputs(
        "conch",
        "mha_out_proj on vs peft merged",
        &Probe::new("conch").run(&model, &device),
        &exp,
        "merged_",
    );
}

#[test]
fn save_and_load_round_trip() {
    let device = cpu();
    let name = "hf_clip_quickgelu";
    let exp = Tensors::open(&lora_dir(name).join("expected.safetensors"));
    let adapters = LoraAdapters::import_peft(&lora_dir(name)).unwrap();
    let (model, ..) = attach_all(Model::load(&fixture(name), &device).unwrap(), &adapters);
    let tmp = tempfile::tempdir().unwrap();
    let path = tmp.path().join("adapter.safetensors");
    adapters_of(&model, &adapters.config).save(&path).unwrap();
    // One tower through the free functions too.
    let vision_only = tmp.path().join("vision.safetensors");
    lora::save_adapter(&vision_only, &model.vision, &model.params, &adapters.config).unwrap();

    let loaded = LoraAdapters::load(&path).unwrap();
    assert_eq!(loaded, adapters);
    let fresh = Model::load(&fixture(name), &device).unwrap();
    let (fresh, ..) = attach_all(fresh, &loaded);
    check_outputs(name, "after save + load", &Probe::new(name).run(&fresh, &device), &exp, "");

    let mut fresh = Model::load(&fixture(name), &device).unwrap();
    let (vision, cfg, report) =
        lora::load_adapter(&vision_only, fresh.vision.clone(), &fresh.params).unwrap();
    fresh.vision = vision;
    assert_eq!(cfg, adapters.config);
    assert!(report.unmatched.is_empty() && report.inert.is_empty());
    assert_eq!(report.attached.len(), 15);
    assert_close(
        name,
        "vision after load_adapter",
        &Probe::new(name).image(&fresh, &device),
        &exp.f32("image_embeds").0,
        1e-4,
    );

    // A peft folder is not a clipit adapter file and vice versa.
    assert!(LoraAdapters::load(&lora_dir(name).join("adapter_model.safetensors"))
        .unwrap_err()
        .to_string()
        .contains("import_peft"));
}

/// peft configs this crate cannot reproduce are refused with a reason.
#[test]
fn unsupported_peft_configs_are_refused() {
    let base = serde_json::json!({"peft_type": "LORA", "r": 4, "lora_alpha": 8, "lora_dropout": 0.1, "bias": "none",
        "use_rslora": true, "rank_pattern": {}, "alpha_pattern": {}, "modules_to_save": null, "use_dora": false});
    let cfg = LoraConfig::from_peft_json(&base, "x").unwrap();
    assert_eq!((cfg.r, cfg.alpha, cfg.dropout, cfg.rslora), (4, 8.0, 0.1, true));
    assert_eq!(cfg.scale(), 4.0);
    assert!(cfg.check_trainable().is_err(), "dropout 0.1 cannot be trained");
    for (key, value, why) in [
        ("use_dora", serde_json::json!(true), "DoRA"),
        ("bias", serde_json::json!("all"), "biases"),
        ("rank_pattern", serde_json::json!({"fc1": 8}), "rank_pattern"),
        ("modules_to_save", serde_json::json!(["head"]), "modules_to_save"),
        ("peft_type", serde_json::json!("IA3"), "LORA"),
    ] {
        let mut j = base.clone();
        j[key] = value;
        let err = LoraConfig::from_peft_json(&j, "x").unwrap_err().to_string();
        assert!(err.contains(why), "{key}: {err}");
    }
}

/// Number of adapters `apply_lora` attaches per tower, and peft's init.
#[test]
fn apply_lora_targets_and_peft_init() {
    let device = cpu();
    let cfg = LoraConfig::new(4, 8.0);
    // (fixture, vision adapters, text adapters)
    for (name, n_vision, n_text) in [
        ("timm_vit_small", 9, None),
        ("hf_clip_quickgelu", 15, Some(15)),
        ("open_clip", 5, Some(5)),
        ("conch", 9, Some(5)),
    ] {
        let model = Model::load(&fixture(name), &device).unwrap();
        let probe = Probe::new(name);
        let base = probe.run(&model, &device);
        let vision = lora::apply_lora(model.vision.clone(), &model.params, &cfg, 7).unwrap();
        let state = lora::lora_state(&vision);
        assert_eq!(state.len(), n_vision, "{name}: vision targets");
        let text = model.text.clone().map(|t| lora::apply_lora(t, &model.params, &cfg, 7).unwrap());
        assert_eq!(
            text.as_ref().map(|t| lora::lora_state(t).len()),
            n_text,
            "{name}: text targets"
        );
        let mut all = state;
        all.extend(text.as_ref().map(lora::lora_state).unwrap_or_default());
        for s in &all {
            let info = model.params.get(s.base).unwrap();
            let (a, [rows, r]) = matrix_to_host(s.a.clone()).unwrap();
            let (b, [_, _]) = matrix_to_host(s.b.clone()).unwrap();
            assert_eq!(r, 4);
            if info.kind == ParamKind::Embedding {
                assert!(
                    a.iter().all(|&v| v == 0.0),
                    "{name}: {}: embedding A must be zero",
                    info.tensor
                );
                let mean = b.iter().sum::<f32>() / b.len() as f32;
                let std =
                    (b.iter().map(|v| (v - mean).powi(2)).sum::<f32>() / b.len() as f32).sqrt();
                assert!(
                    b.len() < 64 || (0.6..1.4).contains(&std),
                    "{name}: {}: embedding B std {std}",
                    info.tensor
                );
                assert!(b.iter().any(|&v| v != 0.0));
            } else {
                // Kaiming-uniform(a=√5): U(-1/√fan_in, 1/√fan_in); fan_in = Burn rows (in, or c·kh·kw).
                let bound = 1.0 / (rows as f32).sqrt();
                let max = a.iter().fold(0f32, |m, v| m.max(v.abs()));
                assert!(
                    max <= bound && max > 0.8 * bound,
                    "{name}: {}: A max {max} vs bound {bound}",
                    info.tensor
                );
                assert!(b.iter().all(|&v| v == 0.0), "{name}: {}: B must be zero", info.tensor);
            }
        }
        // B = 0 (embedding A = 0): the model is unchanged at init.
        let mut adapted = model;
        adapted.vision = vision;
        adapted.text = text;
        check_same(name, "outputs at init", &probe.run(&adapted, &device), &base, 1e-6);
    }
}

#[test]
fn apply_lora_options_and_errors() {
    let device = cpu();
    let model = Model::load(&fixture("timm_vit_small"), &device).unwrap();
    let names = &model.params;
    // --no-lin: only the patch embedding (Conv2d).
    let mut cfg = LoraConfig::new(4, 8.0);
    cfg.targets.linear = false;
    let v = lora::apply_lora(model.vision.clone(), names, &cfg, 1).unwrap();
    let state = lora::lora_state(&v);
    assert_eq!(state.len(), 1);
    assert_eq!(names.get(state[0].base).unwrap().tensor, "patch_embed.proj.weight");
    // Same seed, same init; another seed, another.
    let cfg = LoraConfig::new(4, 8.0);
    let a = |seed| {
        matrix_to_host(
            lora::lora_state(&lora::apply_lora(model.vision.clone(), names, &cfg, seed).unwrap())
                [3]
            .a
            .clone(),
        )
        .unwrap()
        .0
    };
    assert_eq!(a(3), a(3));
    assert_ne!(a(3), a(4));
    // Dropout cannot be trained.
    let mut drop = cfg.clone();
    drop.dropout = 0.1;
    let err = lora::apply_lora(model.vision.clone(), names, &drop, 1).unwrap_err().to_string();
    assert!(err.contains("dropout"), "{err}");
    // No double adapters.
    let once = lora::apply_lora(model.vision.clone(), names, &cfg, 1).unwrap();
    let err = lora::apply_lora(once, names, &cfg, 1).unwrap_err().to_string();
    assert!(err.contains("already carries"), "{err}");
    // Serde of the config (defaults: CLIP-IT's r 16, alpha 8).
    let d = LoraConfig::default();
    assert_eq!((d.r, d.alpha, d.scale()), (16, 8.0, 0.5));
    let back: LoraConfig = serde_json::from_str(&serde_json::to_string(&cfg).unwrap()).unwrap();
    assert_eq!(back, cfg);
    let minimal: LoraConfig = serde_json::from_str(r#"{"r": 8, "alpha": 4}"#).unwrap();
    assert_eq!(minimal, LoraConfig::new(8, 4.0));
}

/// Every parameter the loaders build is named, with the right PyTorch module kind.
#[test]
fn param_names_cover_every_parameter() {
    let device = cpu();
    for name in [
        "timm_vit_small",
        "timm_uni",
        "timm_dinov2_reg4",
        "hf_clip_quickgelu",
        "hf_clip_gelu",
        "open_clip",
        "conch",
    ] {
        let model = Model::load(&fixture(name), &device).unwrap();
        let mut ids = list_param_ids(&model.vision);
        ids.extend(model.text.as_ref().map(list_param_ids).unwrap_or_default());
        let unnamed = ids.iter().filter(|id| model.params.get(**id).is_none()).count();
        assert_eq!(unnamed, 0, "{name}: {unnamed} parameters without a recorded name");
        let tensors: HashSet<&str> = model.params.iter().map(|(_, i)| i.tensor.as_str()).collect();
        let st = safetensors_names(name);
        for t in &tensors {
            assert!(st.contains(*t), "{name}: recorded tensor {t} is not in the checkpoint");
        }
    }
    let model = Model::load(&fixture("open_clip"), &device).unwrap();
    let kind_of = |t: &str| model.params.iter().find(|(_, i)| i.tensor == t).map(|(_, i)| i.kind);
    assert_eq!(kind_of("visual.conv1.weight"), Some(ParamKind::Conv2d));
    assert_eq!(
        kind_of("transformer.resblocks.0.attn.out_proj.weight"),
        Some(ParamKind::MhaOutProj)
    );
    assert_eq!(kind_of("transformer.resblocks.0.attn.in_proj_weight"), Some(ParamKind::Parameter));
    assert_eq!(kind_of("transformer.resblocks.0.mlp.c_fc.weight"), Some(ParamKind::Linear));
    assert_eq!(kind_of("token_embedding.weight"), Some(ParamKind::Embedding));
    assert_eq!(kind_of("positional_embedding"), Some(ParamKind::Parameter));
    assert_eq!(kind_of("text_projection"), Some(ParamKind::Parameter));
    assert_eq!(kind_of("ln_final.weight"), Some(ParamKind::Norm));
    let hf = Model::load(&fixture("hf_clip_quickgelu"), &device).unwrap();
    let kind_of = |t: &str| hf.params.iter().find(|(_, i)| i.tensor == t).map(|(_, i)| i.kind);
    assert_eq!(
        kind_of("text_model.embeddings.position_embedding.weight"),
        Some(ParamKind::Embedding)
    );
    assert_eq!(kind_of("vision_model.embeddings.class_embedding"), Some(ParamKind::Parameter));
    assert_eq!(kind_of("visual_projection.weight"), Some(ParamKind::Linear));
    assert_eq!(
        kind_of("vision_model.encoder.layers.0.self_attn.out_proj.weight"),
        Some(ParamKind::Linear)
    );
}

fn safetensors_names(name: &str) -> HashSet<String> {
    let dir = fixture(name);
    let file = ["model.safetensors", "open_clip_model.safetensors"]
        .iter()
        .map(|f| dir.join(f))
        .find(|p| p.exists())
        .unwrap();
    let bytes = std::fs::read(file).unwrap();
    SafeTensors::deserialize(&bytes).unwrap().names().into_iter().map(String::from).collect()
}

/// Only the LoRA factors get gradients (autodiff): the base weights are frozen.
#[test]
fn only_lora_factors_train() {
    let device = cpu().autodiff();
    let cfg = LoraConfig::new(4, 8.0);
    for name in ["timm_vit_small", "hf_clip_quickgelu"] {
        let model = Model::load(&fixture(name), &device).unwrap();
        let probe = Probe::new(name);
        let vision = lora::apply_lora(model.vision.clone(), &model.params, &cfg, 5).unwrap();
        let input = Tensor::<4>::from_data(
            TensorData::new(probe.pixels.0.clone(), probe.pixels.1),
            &device,
        );
        let loss = vision.forward(input).powi_scalar(2).sum();
        let grads = GradientsParams::from_grads(loss.backward(), &vision);
        let state = lora::lora_state(&vision);
        let factor_ids: Vec<_> = state.iter().flat_map(|s| [s.a_id, s.b_id]).collect();
        assert_eq!(grads.len(), factor_ids.len(), "{name}: gradients on non-LoRA parameters");
        for id in &factor_ids {
            assert!(grads.get::<2>(*id).is_some(), "{name}: a LoRA factor got no gradient");
        }
        // B starts at zero, so A's gradient is zero and B's is not.
        let b_grad = matrix_to_host(grads.get::<2>(state[0].b_id).unwrap()).unwrap().0;
        assert!(b_grad.iter().any(|&g| g != 0.0), "{name}: B gradient is zero");

        if let Some(text) = model.text.clone() {
            // Embedding adapters (token and position) train too.
            let text = lora::apply_lora(text, &model.params, &cfg, 5).unwrap();
            let loss = text.forward(probe.ids.as_ref().unwrap()).unwrap().powi_scalar(2).sum();
            let grads = GradientsParams::from_grads(loss.backward(), &text);
            let state = lora::lora_state(&text);
            assert_eq!(
                grads.len(),
                2 * state.len(),
                "{name}: text gradients on non-LoRA parameters"
            );
            let emb = state
                .iter()
                .find(|s| model.params.get(s.base).unwrap().kind == ParamKind::Embedding)
                .unwrap();
            let a_grad = matrix_to_host(grads.get::<2>(emb.a_id).unwrap()).unwrap().0;
            assert!(a_grad.iter().any(|&g| g != 0.0), "{name}: embedding A gets no gradient");
        }
    }
}
