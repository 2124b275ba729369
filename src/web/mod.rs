//! The browser API (wasm32): a thin layer over the library for the page in `www/`.
//!
//! Built with `--features web` for `wasm32-unknown-unknown`; see `build.sh web`. The page runs
//! this module in a Web Worker (`www/worker.js`) and calls, one at a time:
//!
//! 1. [`init`]: picks WebGPU (burn-wgpu) when the browser offers a usable adapter, software
//!    fallback adapters included, and otherwise the CPU backend (burn-flex), saying why, with f16
//!    weights where the adapter has `shader-f16` ([`crate::precision`]); when the device is lost
//!    later, the CPU takes over and the page is told ([`on_device_lost`], `lost.rs`);
//! 2. [`load_model`]: a checkpoint folder given as file name → bytes (left on the JavaScript
//!    side, read one tensor at a time), after [`check_model_memory`] says from the files'
//!    headers that the tab can hold it; then [`warm_up`] (WebGPU compiles its shaders);
//! 3. [`zero_shot`] (alias [`classify`]), [`retrieve`], [`embed_images`], [`embed_texts`];
//!    [`thumbnail`] draws images the browser cannot (TIFF);
//! 4. the Train panel: [`labels_csv`] for a labels CSV beside the tiles, [`train_prepare`],
//!    then [`train_step`] a few steps at a time (with [`train_checkpoint`] every few steps, kept
//!    by the page), [`train_stop`];
//!    [`classify_trained`] with the result; [`export_adapter`] / [`import_adapter`];
//! 5. the Slide map panel: [`map_open`], [`map_start`], [`map_step`] until finished, then
//!    [`map_geojson`], [`map_csv`], [`map_overlay_png`]; [`map_tile_report`] on a click;
//! 6. the "How it works" panel: [`how_map`], tiles and reports on a 2-D PCA map.
//!
//! Everything runs on the user's device: nothing here opens a connection. Image embeddings are
//! cached per model by content hash, and the report corpus's text embeddings per corpus, so that
//! changing the classes or the corpus does not run the image encoder again. Every tensor read
//! is asynchronous (`into_data_async`): a synchronous read panics in the browser.

mod api;
mod device;
mod how;
mod images;
mod js;
mod limits;
mod lost;
mod map;
mod reports;
mod state;
mod train;

use wasm_bindgen::prelude::*;

pub use api::{
    classify, embed_images, embed_texts, load_model, model_info, unload_model, warm_up, zero_shot,
};
pub use device::{backend_info, init};
pub use how::how_map;
pub use images::{default_templates, thumbnail};
pub use limits::{check_model_memory, set_batch_limit};
pub use lost::{debug_lose_device, on_device_lost};
pub use map::{
    map_close, map_csv, map_geojson, map_open, map_overlay_png, map_start, map_step,
    map_tile_report,
};
pub use reports::retrieve;
pub use train::{
    classify_trained, export_adapter, forget_classifier, import_adapter, labels_csv,
    train_checkpoint, train_prepare, train_step, train_stop,
};
/// Starts the multithreaded CPU engine's rayon pool of `numThreads` Web Workers (JavaScript:
/// `await initThreadPool(n)`, once, before [`init`]); only in the `web-threads` build.
#[cfg(feature = "web-threads")]
pub use wasm_bindgen_rayon::init_thread_pool;

/// Installs the panic hook so Rust panics reach the browser console.
#[wasm_bindgen(start)]
pub fn start() {
    console_error_panic_hook::set_once();
}

/// The crate version, for the page's About box.
#[wasm_bindgen]
pub fn version() -> String {
    env!("CARGO_PKG_VERSION").to_string()
}
