//! When the browser loses the WebGPU device (a driver reset, a GPU that went away, a tab in
//! the background too long), the worker switches to the CPU backend and says why.
//!
//! [`watch`] registers wgpu's device-lost callback on the device that [`super::init`]
//! acquires. When it fires, or when a GPU operation fails with an error that says the device is
//! lost or poisoned, [`fall_back`] makes the CPU the backend (the reason is
//! [`crate::precision::device_lost_message`]), drops the model that lived on the GPU, with its
//! caches, training session and classifier, and calls the page's [`on_device_lost`] callback.
//! The page then loads the model again from the files it still holds: on the CPU this time.

use std::cell::RefCell;
use std::sync::Mutex;

use js_sys::{Function, Promise};
use wasm_bindgen::prelude::*;
use wasm_bindgen_futures::JsFuture;

use super::js::js_error;
use super::state::{self, BackendKind, Engine};
use crate::precision::{device_lost_message, error_says_device_lost};

/// Why the device was lost, once it was (set by the callback, which wgpu requires to be `Send`).
static LOST: Mutex<Option<String>> = Mutex::new(None);

thread_local! {
    /// The page's callback, given to [`on_device_lost`].
    static NOTIFY: RefCell<Option<Function>> = const { RefCell::new(None) };
}

/// Why the WebGPU device was lost, if it was.
pub fn lost() -> Option<String> {
    LOST.lock().map(|l| l.clone()).unwrap_or(None)
}

/// Registers the device-lost callback on `device`. In the browser each registration is one more
/// reaction to the device's `lost` promise, so burn's own (which marks the device poisoned)
/// stays in place.
#[cfg(feature = "wgpu")]
pub fn watch(device: &burn::tensor::wgpu::wgpu::Device) {
    device.set_device_lost_callback(|reason, message| {
        fall_back(device_lost_message(&format!("{reason:?}"), &message));
    });
}

/// Calls [`fall_back`] when `text`, a failed GPU operation's error, says the device is lost
/// and the model is on WebGPU.
pub fn check_error(text: &str) {
    let on_gpu = state::model().is_some_and(|m| m.backend == BackendKind::WebGpu);
    if on_gpu && lost().is_none() && error_says_device_lost(text) {
        fall_back(device_lost_message("Unknown", text));
    }
}

/// Makes the CPU the backend for good in this worker, drops a model loaded on WebGPU and tells
/// the page (once).
pub fn fall_back(reason: String) {
    {
        let Ok(mut lost) = LOST.lock() else { return };
        if lost.is_some() {
            return;
        }
        *lost = Some(reason.clone());
    }
    web_sys::console::warn_1(&format!("clipit: {reason}").into());
    if let Some(engine) = state::engine() {
        state::set_engine(Engine {
            prefer: engine.prefer.clone(),
            webgpu: Some(Err(reason.clone())),
            cpu: engine.cpu.clone(),
            backend: BackendKind::Cpu,
            reason: Some(reason.clone()),
            dtype_note: engine.dtype_note.clone(),
        });
    }
    if state::model().is_some_and(|m| m.backend == BackendKind::WebGpu) {
        state::set_model(None);
    }
    let notify = NOTIFY.with(|n| n.borrow().clone());
    if let Some(f) = notify {
        let _ = f.call1(&JsValue::NULL, &reason.into());
    }
}

/// Registers the page's callback `(reason) => …`, called once when the WebGPU device is lost,
/// after the worker switched to the CPU. The page reloads its model then (on the CPU).
#[wasm_bindgen]
pub fn on_device_lost(callback: Function) {
    NOTIFY.with(|n| *n.borrow_mut() = Some(callback));
}

/// Test hook (the page exposes it only with `?debug=1`): destroys the WebGPU device, as a lost
/// device would be, and resolves to the reason once the device-lost callback ran (within 10 s).
#[wasm_bindgen]
pub async fn debug_lose_device() -> Result<JsValue, JsError> {
    let engine = state::engine().ok_or_else(|| js_error("call init() first"))?;
    let Some(Ok(gpu)) = engine.webgpu.as_ref() else {
        return Err(js_error("no WebGPU device to lose"));
    };
    (gpu.destroy)();
    for _ in 0..100 {
        if let Some(reason) = lost() {
            return Ok(reason.into());
        }
        sleep_ms(100).await;
    }
    Err(js_error("the device-lost callback did not run within 10 s of destroy()"))
}

/// Waits `ms` milliseconds (the global `setTimeout`, in a window or a worker).
async fn sleep_ms(ms: i32) {
    let promise = Promise::new(&mut |resolve, _| {
        let global = js_sys::global();
        let set_timeout = js_sys::Reflect::get(&global, &"setTimeout".into())
            .ok()
            .and_then(|f| f.dyn_into::<Function>().ok());
        match set_timeout {
            Some(f) => {
                let _ = f.call2(&global, &resolve, &ms.into());
            }
            None => {
                let _ = resolve.call0(&JsValue::NULL);
            }
        }
    });
    let _ = JsFuture::from(promise).await;
}
