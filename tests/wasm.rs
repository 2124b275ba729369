//! The library in headless Chromium (wasm-bindgen-test): the tokenizer, image preprocessing,
//! loading a model from bytes and its embeddings against the PyTorch reference, async tensor
//! reads, and one WebGPU computation when the browser offers WebGPU.
//!
//! Run by `tests/wasm/run.sh` (part of `./build.sh test`):
//! `cargo test --target wasm32-unknown-unknown --no-default-features --features web --profile web --test wasm`
//! with `wasm-bindgen-test-runner` as the target's runner and `CHROMEDRIVER` set.
#![cfg(target_arch = "wasm32")]

use std::collections::BTreeMap;
use std::sync::Arc;

use burn::tensor::{Device, Tensor, TensorData};
use clipit::model::{Model, ModelFiles};
use clipit::preprocess::{decode_rgb, preprocess};
#[path = "common/tensors.rs"]
mod tensors;
use tensors::rel_err;
use wasm_bindgen_test::*;

wasm_bindgen_test_configure!(run_in_browser);

const CONFIG: &[u8] = include_bytes!("fixtures/open_clip/open_clip_config.json");
const WEIGHTS: &[u8] = include_bytes!("fixtures/open_clip/open_clip_model.safetensors");
const EXPECTED: &[u8] = include_bytes!("fixtures/open_clip/expected.safetensors");
const EXPECTED_JSON: &[u8] = include_bytes!("fixtures/open_clip/expected.json");
/// The first image of the fixture's reference (`expected.json`'s `images[0]`).
const TILE: &[u8] = include_bytes!("data/tiles/kather2016_image_0_label_0.png");

fn model(device: &Device) -> Model {
    let files = BTreeMap::from([
        ("open_clip_config.json".to_string(), Arc::<[u8]>::from(CONFIG)),
        ("open_clip_model.safetensors".to_string(), Arc::<[u8]>::from(WEIGHTS)),
    ]);
    Model::load_files(&ModelFiles::Memory { name: "open_clip".into(), files }, device)
        .expect("load the open_clip fixture from bytes")
}

fn expected_f32(name: &str) -> (Vec<f32>, Vec<usize>) {
    tensors::f32s(EXPECTED, name)
}

fn expected_ids() -> Vec<Vec<u32>> {
    tensors::token_ids(EXPECTED, "input_ids")
}

fn texts() -> Vec<String> {
    let json: serde_json::Value = serde_json::from_slice(EXPECTED_JSON).unwrap();
    json["texts"].as_array().unwrap().iter().map(|t| t.as_str().unwrap().to_string()).collect()
}

/// max|Δ| / max|ref|.
async fn read<const D: usize>(t: Tensor<D>) -> Vec<f32> {
    t.into_data_async().await.expect("async read").try_to_vec::<f32>().expect("f32")
}

#[wasm_bindgen_test]
fn tokenizer_ids_match_the_reference() {
    let model = model(&Device::flex());
    let got = model.tokenize(&texts()).expect("tokenize");
    assert_eq!(got, expected_ids(), "token ids differ from open_clip's");
}

#[wasm_bindgen_test]
fn preprocessing_of_a_png_matches_the_reference() {
    let model = model(&Device::flex());
    let img = decode_rgb(TILE, "kather2016_image_0_label_0.png", 1 << 26).expect("decode the PNG");
    let got = preprocess(&img, &model.preprocess);
    let (want, shape) = expected_f32("pixel_values");
    let per = shape[1] * shape[2] * shape[3];
    let want = &want[..per];
    assert_eq!(got.len(), per, "preprocessed length");
    // Our resize reproduces PIL's bicubic exactly (0 here), so any difference is a regression.
    let max_diff = got.iter().zip(want).fold(0f32, |m, (a, b)| m.max((a - b).abs()));
    assert!(max_diff <= 1e-4, "pixels differ from the reference by {max_diff}");
}

#[wasm_bindgen_test]
async fn async_tensor_read() {
    let device = Device::flex();
    let a = Tensor::<2>::from_data(TensorData::new(vec![1f32, 2., 3., 4.], [2, 2]), &device);
    let b = Tensor::<2>::from_data(TensorData::new(vec![5f32, 6., 7., 8.], [2, 2]), &device);
    assert_eq!(read(a.matmul(b)).await, vec![19., 22., 43., 50.]);
}

#[wasm_bindgen_test]
async fn embeddings_from_bytes_match_the_reference_on_the_cpu() {
    let device = Device::flex();
    let model = model(&device);

    let (pixels, shape) = expected_f32("pixel_values");
    let per = shape[1] * shape[2] * shape[3];
    let one = TensorData::new(pixels[..per].to_vec(), [1, shape[1], shape[2], shape[3]]);
    let got = read(model.encode_images(Tensor::<4>::from_data(one, &device)).unwrap()).await;
    let (want, _) = expected_f32("image_embeds");
    let err = rel_err(&got, &want[..model.embed_dim]);
    assert!(err <= 1e-4, "image embedding differs: rel err {err:e}");

    let ids = expected_ids();
    let got = read(model.encode_token_ids(&ids[..1]).unwrap()).await;
    let (want, _) = expected_f32("text_embeds");
    let err = rel_err(&got, &want[..model.embed_dim]);
    assert!(err <= 1e-4, "text embedding differs: rel err {err:e}");
}

fn has_navigator_gpu() -> bool {
    let navigator = js_sys::Reflect::get(&js_sys::global(), &"navigator".into())
        .unwrap_or(wasm_bindgen::JsValue::UNDEFINED);
    !navigator.is_undefined()
        && js_sys::Reflect::get(&navigator, &"gpu".into())
            .is_ok_and(|g| !g.is_undefined() && !g.is_null())
}

#[wasm_bindgen_test]
async fn webgpu_image_embedding_matches_the_reference() {
    if !has_navigator_gpu() {
        console_log!("skipping the WebGPU check: navigator.gpu is missing in this browser");
        return;
    }
    let device = match Device::wgpu_options().init_with_setup_async().await {
        Ok((device, _)) => device,
        Err(e) => {
            console_log!("skipping the WebGPU check: no adapter ({e})");
            return;
        }
    };
    let model = model(&device);
    let (pixels, shape) = expected_f32("pixel_values");
    let per = shape[1] * shape[2] * shape[3];
    let one = TensorData::new(pixels[..per].to_vec(), [1, shape[1], shape[2], shape[3]]);
    let got = read(model.encode_images(Tensor::<4>::from_data(one, &device)).unwrap()).await;
    let (want, _) = expected_f32("image_embeds");
    let err = rel_err(&got, &want[..model.embed_dim]);
    assert!(err <= 1e-3, "WebGPU image embedding differs: rel err {err:e}");
}
