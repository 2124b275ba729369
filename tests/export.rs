//! Writing a model back under its checkpoint names (`clipit::weights::export`): for every fixture
//! architecture, the exported tensors are exactly the checkpoint's own (names, shapes, values),
//! apart from the tensors the model does not use, and the written file loads back to the same
//! embeddings.

use std::collections::HashMap;

use burn::tensor::Device;
use clipit::model::Model;
use clipit::weights::export::{save_safetensors, ExportDtype};
use clipit::weights::SafeTensors;

mod common;
use common::root;

const FIXTURES: &[(&str, &str)] = &[
    ("open_clip", "open_clip_model.safetensors"),
    ("hf_clip_quickgelu", "model.safetensors"),
    ("hf_clip_gelu", "model.safetensors"),
    ("conch", "model.safetensors"),
    ("timm_vit_small", "model.safetensors"),
    ("timm_uni", "model.safetensors"),
    ("timm_dinov2_reg4", "model.safetensors"),
];

#[test]
fn exported_tensors_equal_the_checkpoint() {
    let device = Device::flex();
    for (name, weights) in FIXTURES {
        let dir = root().join("tests/fixtures").join(name);
        let model = Model::load(&dir, &device).unwrap();
        let exported = model.checkpoint_tensors().unwrap();
        let st = SafeTensors::open(&dir.join(weights)).unwrap();
        let ignored: Vec<&String> = model.ignored_tensors.iter().collect();
        let mut expected: Vec<&String> =
            st.tensors().keys().filter(|k| !ignored.contains(k)).collect();
        if !model.has_text() {
            expected.retain(|k| k.as_str() != "logit_scale");
        }
        let got: Vec<&String> = exported.keys().collect();
        assert_eq!(got, expected, "{name}: exported tensor names differ from the checkpoint's");
        for (key, t) in &exported {
            let (values, shape) = st.read_f32(key).unwrap();
            assert_eq!(t.shape, shape, "{name}: {key} shape");
            assert!(t.values == values, "{name}: {key} values differ after the round trip");
        }
    }
}

#[test]
fn an_exported_folder_loads_to_the_same_embeddings() {
    let device = Device::flex();
    let src = root().join("tests/fixtures/open_clip");
    let tmp = tempfile::tempdir().unwrap();
    std::fs::copy(src.join("open_clip_config.json"), tmp.path().join("open_clip_config.json"))
        .unwrap();
    let model = Model::load(&src, &device).unwrap();
    let tensors = model.checkpoint_tensors().unwrap();
    save_safetensors(&tmp.path().join("open_clip_model.safetensors"), &tensors, ExportDtype::F32)
        .unwrap();
    let back = Model::load(tmp.path(), &device).unwrap();
    let texts = ["tumour", "adipose tissue"];
    let a = model.encode_texts(&texts).unwrap().into_data();
    let b = back.encode_texts(&texts).unwrap().into_data();
    assert_eq!(a, b, "text embeddings changed after export and reload");
    // f16 halves the file and stays within f16 rounding.
    let f16 = tmp.path().join("half.safetensors");
    save_safetensors(&f16, &tensors, ExportDtype::F16).unwrap();
    let full = std::fs::metadata(tmp.path().join("open_clip_model.safetensors")).unwrap().len();
    assert!(std::fs::metadata(&f16).unwrap().len() < full * 6 / 10);
    let half = SafeTensors::open(&f16).unwrap();
    let mut worst: HashMap<&str, f32> = HashMap::new();
    for (key, t) in &tensors {
        let (v, _) = half.read_f32(key).unwrap();
        let e = t
            .values
            .iter()
            .zip(&v)
            .map(|(x, y)| (x - y).abs() / x.abs().max(1e-3))
            .fold(0.0, f32::max);
        worst.insert(key, e);
    }
    assert!(worst.values().all(|&e| e < 1e-3), "f16 export error too large: {worst:?}");
}
