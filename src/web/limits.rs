//! "Too large for the tab": the memory a checkpoint needs on the chosen backend, from its
//! safetensors headers (see [`crate::model::memory`]), checked before its tensors are read.
//!
//! The page calls [`check_model_memory`] with the head of each file before it reads the files
//! whole, and [`super::load_model`] checks again from the files' headers, so a model that cannot
//! fit gets a clear message instead of an out-of-memory crash of the worker.
//!
//! Once a model is loaded, [`batches`] picks how many images and texts run per forward pass:
//! fewer than the page's batch where the WebGPU adapter's buffer limits cannot hold a batch's
//! largest activation (micro-batching, [`crate::model::memory::micro_batch`]).

use std::cell::Cell;
use std::collections::BTreeMap;
use std::rc::Rc;

use js_sys::Uint8Array;
use serde::{Deserialize, Serialize};
use wasm_bindgen::prelude::*;

use super::js::{js_error, to_js};
use super::state::{self, BackendKind, Engine};
use crate::model::memory::{
    estimate_memory, human_bytes, item_activation_bytes, micro_batch, plan_memory, FileHead,
    MemoryEstimate, MemoryPlan,
};
use crate::model::nn::Block;
use crate::model::Model;
use crate::weights::{ByteSource, SafeTensors};

/// Images per forward pass of the image encoder, when the device's limits allow it.
pub const IMAGE_BATCH: usize = 16;
/// Texts per forward pass of the text encoder, when the device's limits allow it.
pub const TEXT_BATCH: usize = 32;

thread_local! {
    /// A lower buffer limit for batching than the adapter's (see [`set_batch_limit`]).
    static BATCH_LIMIT: Cell<Option<u64>> = const { Cell::new(None) };
}

/// The WebGPU adapter's largest buffer for one tensor, when new models load on WebGPU.
fn webgpu_limit(engine: &Engine) -> Option<u64> {
    match (engine.backend, &engine.webgpu) {
        (state::BackendKind::WebGpu, Some(Ok(g))) => Some(g.max_binding.min(g.max_buffer)),
        _ => None,
    }
}

/// Where a checkpoint of these files loads, or why it cannot: the message names the figures.
pub fn plan_files(
    engine: &Engine,
    files: &[FileHead<'_>],
) -> Result<(MemoryEstimate, MemoryPlan), JsError> {
    let est = estimate_memory(files).map_err(js_error)?;
    let plan = plan_memory(&est, webgpu_limit(engine)).map_err(js_error)?;
    Ok((est, plan))
}

/// [`plan_files`] on a checkpoint whose files are read by range: only the headers of its
/// `.safetensors` files are read.
pub fn plan_loaded(
    engine: &Engine,
    files: &BTreeMap<String, Rc<dyn ByteSource>>,
) -> Result<MemoryPlan, JsError> {
    let mut heads = Vec::with_capacity(files.len());
    for (name, source) in files {
        let head = if name.ends_with(".safetensors") {
            SafeTensors::read_head(source.as_ref(), name).map_err(js_error)?
        } else {
            Vec::new()
        };
        heads.push((name, source.len(), head));
    }
    let heads: Vec<FileHead<'_>> =
        heads.iter().map(|(name, len, head)| FileHead { name, len: *len, head }).collect();
    Ok(plan_files(engine, &heads)?.1)
}

/// How many images and texts a loaded model runs per forward pass.
#[derive(Debug, Clone)]
pub struct Batches {
    /// Images per pass of the image encoder.
    pub image: usize,
    /// Texts per pass of the text encoder.
    pub text: usize,
    /// Why fewer than [`IMAGE_BATCH`] / [`TEXT_BATCH`], for the Model panel.
    pub note: Option<String>,
}

/// The largest activation of one item through `blocks` over `tokens` tokens, with `extra` as
/// another per-token width (the flattened patches).
fn tower_item_bytes(blocks: &[Block], tokens: usize, width: usize, extra: usize) -> u64 {
    let Some(block) = blocks.first() else { return 0 };
    let mlp = block.mlp.fc1.weight.val().dims()[1];
    item_activation_bytes(tokens, block.attn.heads, mlp.max(3 * width).max(extra))
}

/// Images and texts per forward pass of `model` on `backend`: the page's batches, or fewer
/// where the WebGPU adapter's `min(maxStorageBufferBindingSize, maxBufferSize)` (or the limit
/// given to [`set_batch_limit`]) cannot hold a whole batch's largest activation.
pub fn batches(engine: &Engine, backend: BackendKind, model: &Model) -> Batches {
    let adapter = match (backend, &engine.webgpu) {
        (BackendKind::WebGpu, Some(Ok(g))) => Some(g.max_binding.min(g.max_buffer)),
        _ => None,
    };
    let limit = adapter.map(|a| BATCH_LIMIT.with(Cell::get).map_or(a, |t| a.min(t)));
    let v = &model.vision;
    let g = &v.geometry;
    let prefix =
        usize::from(v.cls_token.is_some()) + v.reg_tokens.as_ref().map_or(0, |r| r.val().dims()[0]);
    let image_bytes =
        tower_item_bytes(&v.blocks, g.grid() * g.grid() + prefix, v.width(), 3 * g.patch * g.patch);
    let text_bytes = model.text.as_ref().map_or(0, |t| {
        tower_item_bytes(&t.blocks, t.context_length() + 1, t.pos_embed.val().dims()[1], 0)
    });
    let image = micro_batch(image_bytes, IMAGE_BATCH, limit);
    let text = micro_batch(text_bytes, TEXT_BATCH, limit);
    let note = (image < IMAGE_BATCH || text < TEXT_BATCH).then(|| {
        format!(
            "{image} images and {text} texts per pass instead of {IMAGE_BATCH} and {TEXT_BATCH}: one image's largest activation takes {} (one text's {}), and this WebGPU adapter's buffers hold at most {}",
            human_bytes(image_bytes),
            human_bytes(text_bytes),
            human_bytes(limit.unwrap_or(0)),
        )
    });
    Batches { image, text, note }
}

/// Batches models loaded from now on as if the WebGPU adapter's buffers held at most `bytes`
/// (`0` or less: the adapter's own limits again). For tests of micro-batching on adapters
/// with high limits; the page sets it from its `?batch_limit=` address parameter.
#[wasm_bindgen]
pub fn set_batch_limit(bytes: f64) {
    BATCH_LIMIT.with(|c| c.set((bytes >= 1.0).then_some(bytes as u64)));
}

/// One file as the page describes it before reading it whole.
#[derive(Deserialize)]
struct JsHead {
    name: String,
    size: f64,
}

/// Checks, from the first bytes of each file of a checkpoint, that the tab can hold it on the
/// current backend. `files` is an array of `{name, size, head}` (`head`: a `Uint8Array` with at
/// least the 8-byte length and the header of each `.safetensors` file; other files may give an
/// empty one). Resolves to `{backend, file_bytes, f32_bytes, wasm_bytes, wasm_budget, reason}`;
/// throws "this model needs about N GB; the page's CPU fallback can hold about M GB…" when it
/// does not fit, or names the file whose header is truncated or corrupt.
#[wasm_bindgen]
pub fn check_model_memory(files: Vec<JsValue>) -> Result<JsValue, JsError> {
    #[derive(Serialize)]
    struct Out {
        backend: &'static str,
        file_bytes: u64,
        f32_bytes: u64,
        wasm_bytes: u64,
        wasm_budget: u64,
        reason: Option<String>,
    }
    let engine = state::engine().ok_or_else(|| js_error("call init() first"))?;
    let mut described = Vec::with_capacity(files.len());
    for f in &files {
        let d: JsHead = serde_wasm_bindgen::from_value(f.clone())
            .map_err(|e| js_error(format!("check_model_memory: {e}")))?;
        let head = js_sys::Reflect::get(f, &"head".into())
            .ok()
            .filter(|h| h.is_instance_of::<Uint8Array>())
            .map(|h| Uint8Array::from(h).to_vec())
            .unwrap_or_default();
        described.push((d, head));
    }
    let heads: Vec<FileHead<'_>> = described
        .iter()
        .map(|(d, head)| FileHead { name: &d.name, len: d.size as u64, head })
        .collect();
    let (est, plan) = plan_files(&engine, &heads)?;
    to_js(&Out {
        backend: if plan.webgpu { "webgpu" } else { "cpu" },
        file_bytes: est.file_bytes,
        f32_bytes: est.f32_bytes,
        wasm_bytes: plan.wasm_bytes,
        wasm_budget: plan.wasm_budget,
        reason: plan.reason,
    })
}
