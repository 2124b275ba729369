//! f16 weights on wgpu (what the page uses on WebGPU adapters with `shader-f16`) against f32 on
//! the CPU: the committed demo model (trained, so its activations are realistic) and the tiny
//! open_clip fixture embed the demo tiles and classify them zero-shot.
//!
//! Tolerances: image and text embeddings within cosine 0.999 of f32, zero-shot probabilities
//! within 0.02, and the same top class wherever f32's margin exceeds that. Own test binary:
//! f16 becomes the wgpu device's default float type for the whole process. Skips when there is
//! no wgpu adapter (unless `CLIPIT_REQUIRE_WGPU=1`) or it lacks f16 (Mesa's lavapipe has it).

use std::path::{Path, PathBuf};

use burn::tensor::{DType, Device, FloatDType, Tensor};
use clipit::backend::Backend;
use clipit::embed::embed_image_files;
use clipit::model::Model;
use clipit::precision::{choose_weight_dtype, WeightDtype};
use clipit::retrieval::matrix_to_host;
use clipit::zeroshot::{class_embeddings, default_templates, prompts, zero_shot_probs};

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn cosine(a: &[f32], b: &[f32]) -> f32 {
    let dot: f32 = a.iter().zip(b).map(|(x, y)| x * y).sum();
    let na: f32 = a.iter().map(|x| x * x).sum::<f32>().sqrt();
    let nb: f32 = b.iter().map(|x| x * x).sum::<f32>().sqrt();
    dot / (na * nb)
}

/// The wgpu device with f16 as its default float type, or `None` (skip) without one.
fn f16_device() -> Option<Device> {
    let required = std::env::var("CLIPIT_REQUIRE_WGPU").as_deref() == Ok("1");
    let mut device = match Backend::Wgpu.device() {
        Ok(d) => d,
        Err(e) if required => panic!("wgpu required: {e}"),
        Err(e) => {
            eprintln!("skipping the f16 check: {e}");
            return None;
        }
    };
    let dtype = choose_weight_dtype(device.supports_dtype(FloatDType::F16), None).unwrap();
    if dtype != WeightDtype::F16 {
        eprintln!("skipping the f16 check: this wgpu adapter has no f16 shaders");
        return None;
    }
    device.configure(dtype.float_dtype()).expect("f16 as the default float type");
    Some(device)
}

/// Image embeddings, text embeddings of the prompts, and zero-shot probabilities `[N, C]`, with
/// the model's weights in `dtype`.
fn run(
    dir: &Path,
    device: &Device,
    dtype: DType,
    images: &[PathBuf],
    classes: &[String],
) -> [Vec<f32>; 3] {
    let model = Model::load(dir, device).unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
    let weights = model.vision.blocks[0].mlp.fc1.weight.val().dtype();
    assert_eq!(weights, dtype, "{}: weights in {weights:?}", dir.display());
    let embeds = embed_image_files(&model, images, 8, false, |_| {}).unwrap();
    let all: Vec<String> = prompts(classes, &default_templates()).into_iter().flatten().collect();
    let texts = model.encode_texts(&all).unwrap();
    let t = all.len() / classes.len();
    let per_class = (0..classes.len()).map(|c| texts.clone().slice(c * t..(c + 1) * t)).collect();
    let class_embeds = class_embeddings(per_class).unwrap();
    let x = Tensor::<2>::from_data(
        burn::tensor::TensorData::new(embeds.values.clone(), [images.len(), model.embed_dim]),
        device,
    );
    let probs = zero_shot_probs(x, class_embeds, model.logit_scale).unwrap();
    let (texts, _) = matrix_to_host(texts).unwrap();
    let (probs, _) = matrix_to_host(probs).unwrap();
    [embeds.values, texts, probs]
}

fn check(name: &str, dir: &Path, f16: &Device) {
    let tiles = root().join("data/demo/tiles");
    let mut classes: Vec<String> = std::fs::read_dir(&tiles)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    classes.sort();
    let mut images: Vec<PathBuf> = classes
        .iter()
        .flat_map(|c| std::fs::read_dir(tiles.join(c)).unwrap().map(|e| e.unwrap().path()))
        .collect();
    images.sort();
    images.truncate(24);
    let [img32, txt32, p32] =
        run(dir, &Backend::Cpu.device().unwrap(), DType::F32, &images, &classes);
    let [img16, txt16, p16] = run(dir, f16, DType::F16, &images, &classes);
    let dim = img32.len() / images.len();
    let worst = |a: &[f32], b: &[f32]| {
        a.chunks(dim).zip(b.chunks(dim)).map(|(x, y)| cosine(x, y)).fold(1f32, f32::min)
    };
    let (ci, ct) = (worst(&img32, &img16), worst(&txt32, &txt16));
    let dp = p32.iter().zip(&p16).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
    eprintln!("{name}: f16 vs f32: image cosine >= {ci:.6}, text cosine >= {ct:.6}, probabilities max |diff| {dp:.2e}");
    assert!(ci >= 0.999 && ct >= 0.999, "{name}: f16 embeddings drift: cosine {ci} / {ct}");
    assert!(dp <= 0.02, "{name}: f16 zero-shot probabilities differ by {dp}");
    let c = classes.len();
    for (i, (a, b)) in p32.chunks(c).zip(p16.chunks(c)).enumerate() {
        let mut sorted = a.to_vec();
        sorted.sort_by(|x, y| y.total_cmp(x));
        let top = |p: &[f32]| (0..c).max_by(|&x, &y| p[x].total_cmp(&p[y])).unwrap();
        if sorted[0] - sorted[1] > 0.02 {
            assert_eq!(top(a), top(b), "{name}: image {i} changes class in f16");
        }
    }
}

#[test]
fn f16_weights_on_wgpu_match_f32() {
    let Some(f16) = f16_device() else { return };
    check("demo model", &root().join("data/demo/model"), &f16);
    check("open_clip fixture", &root().join("tests/fixtures/open_clip"), &f16);
}
