//! The calls the worker makes: load a model, embed, classify zero-shot, retrieve reports.
//!
//! Each is a thin wrapper over the library ([`crate::model`], [`crate::preprocess`],
//! [`crate::zeroshot`], [`crate::retrieval`]) that converts from and to JavaScript values,
//! reads tensors only with `into_data_async`, and keeps embeddings in the model's caches.

use std::collections::HashMap;
use std::rc::Rc;

use burn::tensor::Tensor;
use js_sys::{Float32Array, Function, Uint8Array};
use serde::Serialize;
use sha2::{Digest, Sha256};
use wasm_bindgen::prelude::*;

use super::device::{device_for, dtype_of};
use super::js::{files_from_js, image_names, images_from_js, js_error, now_ms, to_js, Progress};
use super::limits::{batches, plan_loaded};
use super::state::{self, Loaded};
use crate::model::{Model, ModelFiles};
use crate::preprocess::{decode_rgb, max_pixels, preprocess, to_batch_tensor};
use crate::retrieval::{matrix_from_host, matrix_to_host_async};
use crate::zeroshot::{
    class_embeddings, default_templates, parse_templates, prompts, zero_shot_probs,
};

/// Images scored against the classes or the corpus at once.
pub(super) const SCORE_BLOCK: usize = 1024;

pub(super) type JsResult = Result<JsValue, JsError>;

/// The error for the page; one that says the WebGPU device is lost also switches to the CPU
/// (see [`super::lost::check_error`]).
pub(super) fn err(e: crate::Error) -> JsError {
    let text = e.to_string();
    super::lost::check_error(&text);
    js_error(text)
}

/// What [`load_model`] and [`model_info`] return.
#[derive(Serialize)]
pub struct ModelInfo {
    /// The name given to [`load_model`] (the folder's name).
    pub name: String,
    /// Checkpoint format, e.g. "open_clip CLIP".
    pub architecture: String,
    /// Parameters of the image and text encoders.
    pub parameters: usize,
    /// Width of the shared embedding space.
    pub embed_dim: usize,
    /// Input side in pixels.
    pub image_size: usize,
    /// Patch side in pixels.
    pub patch_size: usize,
    /// Width and depth of the image encoder.
    pub vision_width: usize,
    /// Transformer blocks of the image encoder.
    pub vision_depth: usize,
    /// Whether it has a text encoder (zero-shot and retrieval need one).
    pub has_text: bool,
    /// The text encoder's context length.
    pub context_length: Option<usize>,
    /// `exp(logit_scale)`, the temperature of zero-shot logits.
    pub logit_scale: f32,
    /// Shortest side after resizing, before the centre crop.
    pub resize: usize,
    /// Normalisation mean and standard deviation.
    pub mean: [f32; 3],
    /// Normalisation standard deviation.
    pub std: [f32; 3],
    /// Checkpoint tensors the model does not use.
    pub ignored_tensors: usize,
    /// `"webgpu"` or `"cpu"`: where the weights live.
    pub backend: &'static str,
    /// Why the model is on the CPU although WebGPU was wanted.
    pub reason: Option<String>,
    /// `"f32"` or `"f16"`: the float type of its weights and activations.
    pub dtype: &'static str,
    /// Images per forward pass of the image encoder.
    pub image_batch: usize,
    /// Texts per forward pass of the text encoder.
    pub text_batch: usize,
    /// Why those are smaller than the page's batches (the adapter's buffer limits).
    pub batch_note: Option<String>,
    /// Time spent in [`load_model`], in milliseconds.
    pub load_ms: f64,
}

fn info_of(loaded: &Loaded, load_ms: f64) -> ModelInfo {
    let m = &loaded.model;
    ModelInfo {
        name: m.name.clone(),
        architecture: m.architecture.to_string(),
        parameters: m.num_params(),
        embed_dim: m.embed_dim,
        image_size: m.vision.geometry.image_size,
        patch_size: m.vision.geometry.patch,
        vision_width: m.vision.width(),
        vision_depth: m.vision.blocks.len(),
        has_text: m.has_text(),
        context_length: m.tokenizer.as_ref().map(|t| t.context_length),
        logit_scale: m.logit_scale.exp(),
        resize: m.preprocess.resize,
        mean: m.preprocess.mean,
        std: m.preprocess.std,
        ignored_tensors: m.ignored_tensors.len(),
        backend: loaded.backend.as_str(),
        reason: loaded.reason.clone(),
        dtype: loaded.dtype.name(),
        image_batch: loaded.batches.image,
        text_batch: loaded.batches.text,
        batch_note: loaded.batches.note.clone(),
        load_ms,
    }
}

/// Loads a checkpoint folder given as a `Map` or object of file name → `Uint8Array` (HF CLIP,
/// open_clip, CONCH or timm; see [`crate::model::SUPPORTED`]). `name` names it in messages.
/// Replaces the model loaded before and clears the caches. Resolves to a [`ModelInfo`].
///
/// Calls [`super::init`] with `"auto"` first if the page has not. A model with a tensor larger
/// than the WebGPU adapter can bind loads on the CPU instead, and `reason` says so; one too
/// large for the tab on either backend is refused before its tensors are read (see
/// [`super::check_model_memory`]). The files' bytes stay on the JavaScript side: each tensor is
/// copied into wasm memory only while it is converted (and, on WebGPU, sent to the GPU).
/// Follow it with [`warm_up`].
#[wasm_bindgen]
pub async fn load_model(files: JsValue, name: Option<String>) -> JsResult {
    let start = now_ms();
    let engine = match state::engine() {
        Some(e) => e,
        None => {
            super::init(None, None).await?;
            state::engine().ok_or_else(|| js_error("init failed"))?
        }
    };
    let files = files_from_js(&files)?;
    // Free the previous model before the new weights arrive.
    state::set_model(None);
    let plan = plan_loaded(&engine, &files)?;
    let (device, backend, reason) = device_for(&engine, &plan);
    let name = name.filter(|n| !n.trim().is_empty()).unwrap_or_else(|| "model".into());
    let model = Model::load_files(&ModelFiles::Ranges { name, files }, &device).map_err(err)?;
    let loaded = Rc::new(Loaded {
        batches: batches(&engine, backend, &model),
        dtype: dtype_of(&engine, backend),
        model,
        device,
        backend,
        reason,
        image_cache: Default::default(),
        corpus: Default::default(),
        training: Default::default(),
        classifier: Default::default(),
    });
    state::set_model(Some(loaded.clone()));
    to_js(&info_of(&loaded, now_ms() - start))
}

/// Runs the loaded model once on WebGPU, on one blank image at its size and one short text (with
/// a text tower), so that the shaders compile while the page says "warming up" rather than at
/// the first classification. Resolves to `{warmup_ms, skipped}`: `warmup_ms` is `null` on the
/// CPU (which needs none) and, with `skipped` saying why, on a software adapter unless `force`:
/// there the passes themselves are the cost (on SwiftShader the first classification took as
/// long after a warm-up as without one, for the test fixtures and for a full ViT-B/32 alike).
#[wasm_bindgen]
pub async fn warm_up(force: Option<bool>) -> JsResult {
    #[derive(Serialize)]
    struct Out {
        warmup_ms: Option<f64>,
        skipped: Option<&'static str>,
    }
    let start = now_ms();
    let loaded = loaded()?;
    if loaded.backend != state::BackendKind::WebGpu {
        return to_js(&Out { warmup_ms: None, skipped: None });
    }
    let software =
        state::engine().and_then(|e| e.webgpu.clone()).is_some_and(|g| g.is_ok_and(|g| g.fallback));
    if software && !force.unwrap_or(false) {
        let why = "no warm-up on a software adapter, where it saves no time";
        return to_js(&Out { warmup_ms: None, skipped: Some(why) });
    }
    let model = &loaded.model;
    let s = model.vision.geometry.image_size;
    let pixels = Tensor::<4>::zeros([1, 3, s, s], &loaded.device);
    matrix_to_host_async(model.encode_images(pixels).map_err(err)?).await.map_err(err)?;
    if model.has_text() {
        matrix_to_host_async(model.encode_texts(&["a"]).map_err(err)?).await.map_err(err)?;
    }
    to_js(&Out { warmup_ms: Some(now_ms() - start), skipped: None })
}

/// The loaded model's [`ModelInfo`], or `null`.
#[wasm_bindgen]
pub fn model_info() -> JsResult {
    match state::model() {
        Some(m) => to_js(&info_of(&m, 0.0)),
        None => Ok(JsValue::NULL),
    }
}

/// Drops the loaded model and its caches (frees its memory).
#[wasm_bindgen]
pub fn unload_model() {
    state::set_model(None);
}

pub(super) fn loaded() -> Result<Rc<Loaded>, JsError> {
    state::model().ok_or_else(|| match super::lost::lost() {
        Some(reason) => js_error(format!("{reason}; load the model again (the page does so)")),
        None => js_error("no model is loaded: load a checkpoint folder first"),
    })
}

pub(super) fn with_text(loaded: &Loaded, what: &str) -> Result<(), JsError> {
    if loaded.model.has_text() {
        Ok(())
    } else {
        Err(js_error(format!(
            "{}: {what} needs a text encoder, and this {} checkpoint has none",
            loaded.model.name, loaded.model.architecture
        )))
    }
}

fn content_key(bytes: &[u8]) -> String {
    Sha256::digest(bytes).iter().map(|b| format!("{b:02x}")).collect()
}

/// Image embeddings (before normalisation) in input order, or why an image could not be read.
/// Images already embedded by this model (same bytes) come from the cache.
pub(super) async fn image_rows(
    loaded: &Loaded,
    images: &[Vec<u8>],
    names: &[String],
    progress: &Progress,
) -> Result<Vec<Result<Rc<Vec<f32>>, String>>, JsError> {
    let keys: Vec<String> = images.iter().map(|b| content_key(b)).collect();
    let mut errors: HashMap<&str, String> = HashMap::new();
    let mut todo: Vec<usize> = Vec::new();
    {
        let cache = loaded.image_cache.borrow();
        let mut queued = std::collections::HashSet::new();
        for (i, key) in keys.iter().enumerate() {
            if !cache.contains_key(key) && queued.insert(key.as_str()) {
                todo.push(i);
            }
        }
    }
    let crop = loaded.model.preprocess.crop;
    let total = todo.len();
    progress.report("images", 0, total);
    let per_pass = loaded.batches.image;
    for (b, batch) in todo.chunks(per_pass).enumerate() {
        let mut pixels = Vec::with_capacity(batch.len());
        let mut done = Vec::with_capacity(batch.len());
        for &i in batch {
            match decode_rgb(&images[i], &names[i], max_pixels()) {
                Ok(img) => {
                    pixels.push(preprocess(&img, &loaded.model.preprocess));
                    done.push(i);
                }
                Err(e) => {
                    errors.insert(keys[i].as_str(), e.to_string());
                }
            }
        }
        if !pixels.is_empty() {
            let embeds = loaded
                .model
                .encode_images(to_batch_tensor(&pixels, crop, &loaded.device))
                .map_err(err)?;
            let (values, [_, dim]) = matrix_to_host_async(embeds).await.map_err(err)?;
            let mut cache = loaded.image_cache.borrow_mut();
            for (&i, row) in done.iter().zip(values.chunks(dim)) {
                cache.insert(keys[i].clone(), Rc::new(row.to_vec()));
            }
        }
        progress.report("images", (b * per_pass + batch.len()).min(total), total);
    }
    let cache = loaded.image_cache.borrow();
    Ok(keys
        .iter()
        .map(|k| match cache.get(k) {
            Some(row) => Ok(row.clone()),
            None => Err(errors.get(k.as_str()).cloned().unwrap_or_else(|| "not embedded".into())),
        })
        .collect())
}

/// Text embeddings `[texts.len(), D]` (before normalisation) as host rows, in batches.
pub(super) async fn text_rows(
    loaded: &Loaded,
    texts: &[String],
    stage: &str,
    progress: &Progress,
) -> Result<Vec<f32>, JsError> {
    let model = &loaded.model;
    let mut values = Vec::with_capacity(texts.len() * model.embed_dim);
    progress.report(stage, 0, texts.len());
    for chunk in texts.chunks(loaded.batches.text) {
        let (v, _) =
            matrix_to_host_async(model.encode_texts(chunk).map_err(err)?).await.map_err(err)?;
        values.extend(v);
        progress.report(stage, values.len() / model.embed_dim.max(1), texts.len());
    }
    Ok(values)
}

/// One image's zero-shot result.
#[derive(Serialize)]
pub struct ImageProbs {
    /// The image's name.
    pub name: String,
    /// Probability of each class, in class order (empty when the image could not be read).
    pub probs: Vec<f32>,
    /// Index of the most probable class.
    pub prediction: Option<usize>,
    /// Why the image could not be read.
    pub error: Option<String>,
}

/// What [`zero_shot`] returns.
#[derive(Serialize)]
pub struct ZeroShotResult {
    /// The classes, trimmed, in order.
    pub classes: Vec<String>,
    /// The templates used (the built-in ones when none were given).
    pub templates: Vec<String>,
    /// One entry per input image, in order.
    pub images: Vec<ImageProbs>,
    /// Time spent, in milliseconds.
    pub elapsed_ms: f64,
}

/// Zero-shot classification: each class is described by every template (with `{}` or
/// `CLASSNAME` for the class name; none or an empty list means the built-in histology
/// templates), and each image gets the softmax over classes of `exp(logit_scale) * cos`.
/// `progress(stage, done, total)` is called as images and prompts are embedded.
/// Resolves to a [`ZeroShotResult`]; unreadable images get an `error` instead of probabilities.
#[wasm_bindgen]
pub async fn zero_shot(
    images: Vec<Uint8Array>,
    names: Option<Vec<String>>,
    classes: Vec<String>,
    templates: Option<Vec<String>>,
    progress: Option<Function>,
) -> JsResult {
    let start = now_ms();
    let progress = Progress(progress);
    let loaded = loaded()?;
    with_text(&loaded, "zero-shot classification")?;
    let classes: Vec<String> =
        classes.iter().map(|c| c.trim().to_string()).filter(|c| !c.is_empty()).collect();
    if classes.len() < 2 {
        return Err(js_error("zero-shot needs at least two class names"));
    }
    let templates = match templates.filter(|t| t.iter().any(|s| !s.trim().is_empty())) {
        Some(t) => parse_templates(&t.join("\n"), "templates").map_err(err)?,
        None => default_templates(),
    };
    let names = image_names(names, images.len())?;
    let images = images_from_js(&images);
    let model = &loaded.model;
    let class_embeds = class_text_embeddings(&loaded, &classes, &templates, &progress)?;

    let rows = image_rows(&loaded, &images, &names, &progress).await?;
    let ok: Vec<usize> = (0..rows.len()).filter(|&i| rows[i].is_ok()).collect();
    let mut probs: HashMap<usize, Vec<f32>> = HashMap::new();
    for block in ok.chunks(SCORE_BLOCK) {
        let values: Vec<f32> = block
            .iter()
            .flat_map(|&i| rows[i].as_ref().expect("ok rows").iter().copied())
            .collect();
        let embeds = matrix_from_host(&values, model.embed_dim, &loaded.device).map_err(err)?;
        let p = zero_shot_probs(embeds, class_embeds.clone(), model.logit_scale).map_err(err)?;
        let (values, [_, c]) = matrix_to_host_async(p).await.map_err(err)?;
        for (&i, row) in block.iter().zip(values.chunks(c)) {
            probs.insert(i, row.to_vec());
        }
    }
    let images = names
        .into_iter()
        .enumerate()
        .map(|(i, name)| match (&rows[i], probs.remove(&i)) {
            (Ok(_), Some(p)) => {
                let prediction =
                    crate::metrics::argmax_rows(std::slice::from_ref(&p)).first().copied();
                ImageProbs { name, probs: p, prediction, error: None }
            }
            (Err(e), _) => {
                ImageProbs { name, probs: vec![], prediction: None, error: Some(e.clone()) }
            }
            (Ok(_), None) => ImageProbs {
                name,
                probs: vec![],
                prediction: None,
                error: Some("not scored".into()),
            },
        })
        .collect();
    to_js(&ZeroShotResult { classes, templates, images, elapsed_ms: now_ms() - start })
}

/// One embedding per class (`[C, D]`) from its prompts: every prompt of every class in as few
/// forward passes as possible (each pass has a fixed cost on WebGPU), then split per class on
/// the device. Reports progress as stage "classes".
pub(super) fn class_text_embeddings(
    loaded: &Loaded,
    classes: &[String],
    templates: &[String],
    progress: &Progress,
) -> Result<Tensor<2>, JsError> {
    let all: Vec<String> = prompts(classes, templates).into_iter().flatten().collect();
    let mut chunks = Vec::new();
    let per_pass = loaded.batches.text;
    for (i, chunk) in all.chunks(per_pass).enumerate() {
        chunks.push(loaded.model.encode_texts(chunk).map_err(err)?);
        progress.report("classes", (i * per_pass + chunk.len()).min(all.len()), all.len());
    }
    let all = Tensor::cat(chunks, 0);
    let t = templates.len();
    let per_class = (0..classes.len()).map(|c| all.clone().slice(c * t..(c + 1) * t)).collect();
    class_embeddings(per_class).map_err(err)
}

/// The same as [`zero_shot`]: classifies images into the given classes.
#[wasm_bindgen]
pub async fn classify(
    images: Vec<Uint8Array>,
    names: Option<Vec<String>>,
    classes: Vec<String>,
    templates: Option<Vec<String>>,
    progress: Option<Function>,
) -> JsResult {
    zero_shot(images, names, classes, templates, progress).await
}

/// One image's embedding.
#[derive(Serialize)]
pub struct ImageEmbedding {
    /// The image's name.
    pub name: String,
    /// Projected features before L2 normalisation, a `Float32Array` (empty when the image could
    /// not be read). Not a JavaScript array: serialising one number at a time took 2.4 s for a
    /// batch of 8 × 512 (BENCHMARKS.md, "The page").
    #[serde(with = "serde_wasm_bindgen::preserve")]
    pub embedding: JsValue,
    /// Why the image could not be read.
    pub error: Option<String>,
}

/// Embeds images: resolves to `{dim, images: [{name, embedding, error}], elapsed_ms}` with the
/// projected features before L2 normalisation, as `clipit embed` prints them.
#[wasm_bindgen]
pub async fn embed_images(
    images: Vec<Uint8Array>,
    names: Option<Vec<String>>,
    progress: Option<Function>,
) -> JsResult {
    #[derive(Serialize)]
    struct Out {
        dim: usize,
        images: Vec<ImageEmbedding>,
        elapsed_ms: f64,
    }
    let start = now_ms();
    let progress = Progress(progress);
    let loaded = loaded()?;
    let names = image_names(names, images.len())?;
    let rows = image_rows(&loaded, &images_from_js(&images), &names, &progress).await?;
    let images = names
        .into_iter()
        .zip(rows)
        .map(|(name, row)| match row {
            Ok(r) => {
                ImageEmbedding { name, embedding: Float32Array::from(&r[..]).into(), error: None }
            }
            Err(e) => ImageEmbedding {
                name,
                embedding: Float32Array::new_with_length(0).into(),
                error: Some(e),
            },
        })
        .collect();
    to_js(&Out { dim: loaded.model.embed_dim, images, elapsed_ms: now_ms() - start })
}

/// Embeds texts: resolves to `{dim, embeddings: number[][], elapsed_ms}`, projected features
/// before L2 normalisation, as `clipit embed --text` prints them.
#[wasm_bindgen]
pub async fn embed_texts(texts: Vec<String>, progress: Option<Function>) -> JsResult {
    #[derive(Serialize)]
    struct Out {
        dim: usize,
        embeddings: Vec<Vec<f32>>,
        elapsed_ms: f64,
    }
    let start = now_ms();
    let loaded = loaded()?;
    with_text(&loaded, "text embedding")?;
    let values = text_rows(&loaded, &texts, "texts", &Progress(progress)).await?;
    let dim = loaded.model.embed_dim;
    let embeddings = values.chunks(dim.max(1)).map(<[f32]>::to_vec).collect();
    to_js(&Out { dim, embeddings, elapsed_ms: now_ms() - start })
}
