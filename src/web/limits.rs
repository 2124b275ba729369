//! "Too large for the tab": the memory a checkpoint needs on the chosen backend, from its
//! safetensors headers (see [`crate::model::memory`]), checked before its tensors are read.
//!
//! The page calls [`check_model_memory`] with the head of each file before it reads the files
//! whole, and [`super::load_model`] checks again on the full bytes, so a model that cannot fit
//! gets a clear message instead of an out-of-memory crash of the worker.

use std::collections::BTreeMap;
use std::sync::Arc;

use js_sys::Uint8Array;
use serde::{Deserialize, Serialize};
use wasm_bindgen::prelude::*;

use super::js::{js_error, to_js};
use super::state::{self, Engine};
use crate::model::memory::{estimate_memory, plan_memory, FileHead, MemoryEstimate, MemoryPlan};

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

/// [`plan_files`] on a checkpoint held whole in memory.
pub fn plan_loaded(
    engine: &Engine,
    files: &BTreeMap<String, Arc<[u8]>>,
) -> Result<MemoryPlan, JsError> {
    let heads: Vec<FileHead<'_>> = files
        .iter()
        .map(|(name, bytes)| FileHead { name, len: bytes.len() as u64, head: bytes })
        .collect();
    Ok(plan_files(engine, &heads)?.1)
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
