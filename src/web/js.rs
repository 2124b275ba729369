//! Conversions between JavaScript values and the library's types.

use std::collections::BTreeMap;
use std::fmt::Display;
use std::rc::Rc;

use js_sys::{ArrayBuffer, Function, Map, Object, Uint8Array};
use serde::Serialize;
use wasm_bindgen::prelude::*;
use wasm_bindgen::JsCast;

use crate::weights::ByteSource;

/// A JavaScript `Error` with this message.
pub fn js_error(msg: impl Display) -> JsError {
    JsError::new(&msg.to_string())
}

/// Serialises to plain JavaScript objects and arrays (no `Map`s), as JSON would.
pub fn to_js<T: Serialize + ?Sized>(value: &T) -> Result<JsValue, JsError> {
    value
        .serialize(&serde_wasm_bindgen::Serializer::json_compatible())
        .map_err(|e| js_error(format!("cannot return the result to JavaScript: {e}")))
}

/// A file's bytes left on the JavaScript side (a `Uint8Array` over the worker's `ArrayBuffer`):
/// reading a range copies only that range into wasm memory.
pub struct JsBytes(Uint8Array);

impl JsBytes {
    /// Wraps a `Uint8Array` or an `ArrayBuffer` (no copy); `what` names it in errors.
    pub fn new(value: &JsValue, what: &str) -> Result<Self, JsError> {
        if let Some(a) = value.dyn_ref::<Uint8Array>() {
            Ok(Self(a.clone()))
        } else if let Some(b) = value.dyn_ref::<ArrayBuffer>() {
            Ok(Self(Uint8Array::new(b)))
        } else {
            Err(js_error(format!("{what}: expected a Uint8Array or an ArrayBuffer")))
        }
    }
}

impl ByteSource for JsBytes {
    fn len(&self) -> u64 {
        u64::from(self.0.length())
    }

    fn read_range(&self, start: u64, end: u64) -> Result<Vec<u8>, String> {
        if start > end || end > self.len() {
            return Err(format!("bytes {start}..{end} lie outside the {} bytes", self.len()));
        }
        Ok(self.0.subarray(start as u32, end as u32).to_vec())
    }
}

/// The files of a checkpoint folder from a `Map` or a plain object of name → bytes. Names may
/// be paths (`folder/config.json`, as `webkitRelativePath` gives them): only the last part is
/// kept, and two files with the same last part are an error.
/// The bytes stay on the JavaScript side (see [`JsBytes`]).
pub fn files_from_js(files: &JsValue) -> Result<BTreeMap<String, Rc<dyn ByteSource>>, JsError> {
    let entries: Vec<(JsValue, JsValue)> = if let Some(map) = files.dyn_ref::<Map>() {
        let mut out = Vec::new();
        map.for_each(&mut |value, key| out.push((key, value)));
        out
    } else if files.is_object() {
        Object::entries(files.unchecked_ref::<Object>())
            .iter()
            .map(|pair| {
                let pair: js_sys::Array = pair.unchecked_into();
                (pair.get(0), pair.get(1))
            })
            .collect()
    } else {
        return Err(js_error("load_model: expected a Map or an object of file name -> Uint8Array"));
    };
    let mut out = BTreeMap::new();
    let mut full_names: BTreeMap<String, String> = BTreeMap::new();
    for (key, value) in entries {
        let path =
            key.as_string().ok_or_else(|| js_error("load_model: file names must be strings"))?;
        let name = path.rsplit(['/', '\\']).next().unwrap_or(&path).to_string();
        if let Some(first) = full_names.insert(name.clone(), path.clone()) {
            return Err(js_error(format!(
                "two files are named {name} ({first} and {path}): pick the checkpoint's own folder"
            )));
        }
        out.insert(name, Rc::new(JsBytes::new(&value, &path)?) as Rc<dyn ByteSource>);
    }
    if out.is_empty() {
        return Err(js_error("load_model: no files were given"));
    }
    Ok(out)
}

/// The bytes of every image, in order.
pub fn images_from_js(images: &[Uint8Array]) -> Vec<Vec<u8>> {
    images.iter().map(Uint8Array::to_vec).collect()
}

/// Checks that there is one name per image, or makes names (`image 1`, ...) when none are given.
pub fn image_names(names: Option<Vec<String>>, count: usize) -> Result<Vec<String>, JsError> {
    match names {
        Some(n) if n.len() == count => Ok(n),
        Some(n) if !n.is_empty() => Err(js_error(format!("{count} images but {} names", n.len()))),
        _ => Ok((1..=count).map(|i| format!("image {i}")).collect()),
    }
}

/// An optional JavaScript callback `(stage, done, total)` for progress.
pub struct Progress(pub Option<Function>);

impl Progress {
    /// Reports progress; a callback that throws is ignored.
    pub fn report(&self, stage: &str, done: usize, total: usize) {
        if let Some(f) = &self.0 {
            let _ = f.call3(
                &JsValue::NULL,
                &stage.into(),
                &(done as f64).into(),
                &(total as f64).into(),
            );
        }
    }
}

/// Milliseconds from the global scope's `performance.now()` (window or worker), for timings.
pub fn now_ms() -> f64 {
    let global = js_sys::global();
    js_sys::Reflect::get(&global, &"performance".into())
        .ok()
        .filter(|p| !p.is_undefined())
        .and_then(|p| {
            let now = js_sys::Reflect::get(&p, &"now".into()).ok()?.dyn_into::<Function>().ok()?;
            now.call0(&p).ok()?.as_f64()
        })
        .unwrap_or_else(js_sys::Date::now)
}
