//! Small helpers for the page: thumbnails of images the browser cannot show (TIFF) and the
//! built-in zero-shot templates.

use serde::Serialize;
use wasm_bindgen::prelude::*;

use super::js::{js_error, to_js};
use crate::preprocess::{decode_rgb, max_pixels, resize_bicubic};

/// Decodes an image (PNG, JPEG or TIFF) with the same decoder as the models use and scales it
/// to fit `max_side` pixels. Resolves to `{width, height, rgba}` (`rgba` a `Uint8Array` of
/// `width * height * 4` bytes, for an `ImageData`), with the original size in
/// `source_width` and `source_height`.
#[wasm_bindgen]
pub fn thumbnail(bytes: &[u8], name: &str, max_side: u32) -> Result<JsValue, JsError> {
    #[derive(Serialize)]
    struct Out {
        width: u32,
        height: u32,
        source_width: u32,
        source_height: u32,
    }
    let img = decode_rgb(bytes, name, max_pixels()).map_err(js_error)?;
    let (w, h) = img.dimensions();
    let scale = (max_side.max(1) as f64 / w.max(h) as f64).min(1.0);
    let (tw, th) =
        (((w as f64 * scale).round() as u32).max(1), ((h as f64 * scale).round() as u32).max(1));
    let small = if (tw, th) == (w, h) { img } else { resize_bicubic(&img, tw, th) };
    let rgba: Vec<u8> = small.pixels().flat_map(|p| [p[0], p[1], p[2], 255]).collect();
    let out = to_js(&Out { width: tw, height: th, source_width: w, source_height: h })?;
    js_sys::Reflect::set(&out, &"rgba".into(), &js_sys::Uint8Array::from(rgba.as_slice()))
        .map_err(|_| js_error("thumbnail: cannot build the result"))?;
    Ok(out)
}

/// The built-in histology prompt templates, each with `{}` for the class name.
#[wasm_bindgen]
pub fn default_templates() -> Vec<String> {
    crate::zeroshot::default_templates()
}
