//! The browser API (wasm32): a thin layer over the library for the page in `www/`.
//!
//! Built with `--features web` for `wasm32-unknown-unknown`; see `build.sh`.

use wasm_bindgen::prelude::*;

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
