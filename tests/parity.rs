//! Parity with the PyTorch reference implementations (transformers, open_clip, timm, CONCH's
//! published code) on tiny random-init checkpoints written by `tests/reference/make_fixtures.py`.
//!
//! Tolerance: max|Δ| / max|ref| ≤ 1e-4 on the CPU backend and ≤ 1e-3 on wgpu. The wgpu tests
//! skip when no adapter exists, unless `CLIPIT_REQUIRE_WGPU=1` (set by CI, which installs Mesa's
//! lavapipe) makes a missing adapter a failure.

use std::path::{Path, PathBuf};

use burn::tensor::{Device, Tensor, TensorData};
use clipit::backend::Backend;
use clipit::embed::embed_image_files;
use clipit::model::Model;
use clipit::retrieval::{matrix_from_host, matrix_to_host, top_k};
#[path = "common/tensors.rs"]
mod tensors;
use tensors::rel_err;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The reference outputs of one fixture.
struct Expected {
    bytes: Vec<u8>,
    json: serde_json::Value,
}

impl Expected {
    fn load(dir: &Path) -> Self {
        let bytes = std::fs::read(dir.join("expected.safetensors")).expect("expected.safetensors");
        let json = serde_json::from_slice(
            &std::fs::read(dir.join("expected.json")).expect("expected.json"),
        )
        .expect("json");
        Self { bytes, json }
    }

    fn has(&self, name: &str) -> bool {
        tensors::has(&self.bytes, name)
    }

    fn f32(&self, name: &str) -> (Vec<f32>, Vec<usize>) {
        tensors::f32s(&self.bytes, name)
    }

    fn ids(&self, name: &str) -> Vec<Vec<u32>> {
        tensors::token_ids(&self.bytes, name)
    }
}

fn cosine(a: &[f32], b: &[f32]) -> f32 {
    let dot: f32 = a.iter().zip(b).map(|(x, y)| x * y).sum();
    let na: f32 = a.iter().map(|x| x * x).sum::<f32>().sqrt();
    let nb: f32 = b.iter().map(|x| x * x).sum::<f32>().sqrt();
    dot / (na * nb)
}

fn check_fixture(name: &str, device: &Device, tol: f32) {
    let dir = root().join("tests/fixtures").join(name);
    let model = Model::load(&dir, device).unwrap_or_else(|e| panic!("{name}: {e}"));
    let exp = Expected::load(&dir);

    // Image tower on the reference's own preprocessed pixels.
    let (pixels, shape) = exp.f32("pixel_values");
    let shape: [usize; 4] = shape.try_into().unwrap();
    let input = Tensor::<4>::from_data(TensorData::new(pixels, shape), device);
    let (got, _) = matrix_to_host(model.encode_images(input).unwrap()).unwrap();
    let (want, _) = exp.f32("image_embeds");
    let err = rel_err(&got, &want);
    assert!(err <= tol, "{name}: image embeddings differ: rel err {err:e} > {tol:e}");
    eprintln!("{name}: image embeddings rel err {err:.1e}");

    // The whole path from image files, including our preprocessing.
    let images: Vec<PathBuf> = exp.json["images"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| root().join(p.as_str().unwrap()))
        .collect();
    let from_files = embed_image_files(&model, &images, 4, false, |_| {}).unwrap();
    for (i, (row, reference)) in from_files.rows().zip(want.chunks(model.embed_dim)).enumerate() {
        let c = cosine(row, reference);
        assert!(c >= 0.999, "{name}: image {i} from file: cosine {c} < 0.999");
    }

    if !exp.has("text_embeds") {
        assert!(
            model.text.is_none(),
            "{name}: the model has a text tower the fixture does not test"
        );
        return;
    }
    // Tokenizer: ids identical to the reference's.
    let texts: Vec<String> = exp.json["texts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t.as_str().unwrap().to_string())
        .collect();
    let want_ids = exp.ids("input_ids");
    let got_ids = model.tokenize(&texts).unwrap();
    assert_eq!(got_ids, want_ids, "{name}: token ids differ");

    // Text tower.
    let (got_text, _) = matrix_to_host(model.encode_token_ids(&want_ids).unwrap()).unwrap();
    let (want_text, _) = exp.f32("text_embeds");
    let err = rel_err(&got_text, &want_text);
    assert!(err <= tol, "{name}: text embeddings differ: rel err {err:e} > {tol:e}");
    eprintln!("{name}: text embeddings rel err {err:.1e}");

    let (scale, _) = exp.f32("logit_scale");
    assert!((model.logit_scale - scale[0]).abs() < 1e-6, "{name}: logit_scale");

    // Retrieval: the same top-1 report per image, where the reference's margin is clear.
    let hits = top_k(
        matrix_from_host(&got, model.embed_dim, device).unwrap(),
        matrix_from_host(&got_text, model.embed_dim, device).unwrap(),
        texts.len(),
    )
    .unwrap();
    let ranking = exp.json["retrieval"].as_array().unwrap();
    let scores = exp.json["scores"].as_array().unwrap();
    for (i, (hit, want)) in hits.iter().zip(ranking).enumerate() {
        let want: Vec<usize> =
            want.as_array().unwrap().iter().map(|v| v.as_u64().unwrap() as usize).collect();
        let s: Vec<f64> =
            scores[i].as_array().unwrap().iter().map(|v| v.as_f64().unwrap()).collect();
        for r in 0..want.len() {
            let clear =
                (r == 0 || s[r - 1] - s[r] > 1e-3) && (r + 1 == s.len() || s[r] - s[r + 1] > 1e-3);
            if clear {
                assert_eq!(hit[r].0, want[r], "{name}: image {i} rank {r}");
                assert!((hit[r].1 as f64 - s[r]).abs() < 1e-3, "{name}: image {i} rank {r} score");
            }
        }
    }
}

fn wgpu_device() -> Option<Device> {
    match Backend::Wgpu.device() {
        Ok(d) => Some(d),
        Err(e) if std::env::var("CLIPIT_REQUIRE_WGPU").as_deref() == Ok("1") => {
            panic!("wgpu required: {e}")
        }
        Err(e) => {
            eprintln!("skipping wgpu parity: {e}");
            None
        }
    }
}

/// The CUDA device, only where `CLIPIT_REQUIRE_CUDA=1` says a GPU is there (burn-cuda cannot
/// probe for one without panicking).
#[cfg(feature = "cuda")]
fn cuda_device() -> Option<Device> {
    if std::env::var("CLIPIT_REQUIRE_CUDA").as_deref() == Ok("1") {
        Some(Backend::Cuda.device().unwrap())
    } else {
        eprintln!("skipping cuda parity: set CLIPIT_REQUIRE_CUDA=1 on a machine with a GPU");
        None
    }
}

macro_rules! parity_tests {
    ($($name:ident => $fixture:literal),* $(,)?) => {
        mod cpu {
            $(#[test] fn $name() { super::check_fixture($fixture, &clipit::backend::Backend::Cpu.device().unwrap(), 1e-4); })*
        }
        #[cfg(feature = "wgpu")]
        mod wgpu {
            $(#[test] fn $name() {
                if let Some(device) = super::wgpu_device() { super::check_fixture($fixture, &device, 1e-3); }
            })*
        }
        #[cfg(feature = "cuda")]
        mod cuda {
            $(#[test] fn $name() {
                if let Some(device) = super::cuda_device() { super::check_fixture($fixture, &device, 1e-3); }
            })*
        }
    };
}

parity_tests! {
    hf_clip_quickgelu => "hf_clip_quickgelu",
    hf_clip_gelu_f16 => "hf_clip_gelu",
    open_clip => "open_clip",
    conch => "conch",
    timm_vit_small => "timm_vit_small",
    timm_uni_layerscale => "timm_uni",
    timm_dinov2_reg4 => "timm_dinov2_reg4",
}
