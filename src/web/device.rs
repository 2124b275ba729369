//! Choosing the device: WebGPU through burn-wgpu when the browser offers a usable adapter,
//! otherwise burn-flex on the CPU, with the reason.

use burn::tensor::Device;
use serde::Serialize;
use wasm_bindgen::prelude::*;

use super::js::{js_error, to_js};
use super::state::{self, BackendKind, Engine, WebGpu};
use crate::model::memory::MemoryPlan;
use crate::precision::{choose_weight_dtype, WeightDtype};

/// The WebGPU limits the kernels rely on, with the minimum each needs. Every adapter that
/// implements WebGPU's defaults meets them; "compatibility mode" and some mobile adapters do not.
#[cfg(feature = "wgpu")]
const REQUIRED_LIMITS: &[(&str, u64)] = &[
    ("maxStorageBuffersPerShaderStage", 8),
    ("maxComputeInvocationsPerWorkgroup", 256),
    ("maxComputeWorkgroupStorageSize", 16384),
    ("maxStorageBufferBindingSize", 128 << 20),
];

/// What [`init`] and [`backend_info`] return to the page.
#[derive(Serialize)]
pub struct BackendInfo {
    /// `"webgpu"` or `"cpu"`: where models load from now on.
    pub backend: &'static str,
    /// What the page asked for (`auto`, `webgpu` or `cpu`).
    pub prefer: String,
    /// Why the CPU is used, when it is (WebGPU missing, a limit too low, or asked for).
    pub reason: Option<String>,
    /// The WebGPU adapter, when one was acquired.
    pub adapter: Option<AdapterInfo>,
    /// `"f32"` or `"f16"`: the float type of weights loaded from now on.
    pub dtype: &'static str,
    /// Why that is not the dtype asked for (`?dtype=f16` on an adapter without `shader-f16`).
    pub dtype_note: Option<String>,
    /// The threads the CPU backend runs its matrix products on: the rayon pool of the
    /// multithreaded engine (`web-threads`), else 1.
    pub cpu_threads: usize,
}

/// The WebGPU adapter's description and limits.
#[derive(Serialize)]
pub struct AdapterInfo {
    /// The adapter's description (browsers often leave it empty).
    pub description: String,
    /// Whether it is a fallback (software) adapter, e.g. SwiftShader.
    pub fallback: bool,
    /// `maxStorageBufferBindingSize` in bytes.
    pub max_storage_buffer_binding_size: u64,
    /// `maxBufferSize` in bytes.
    pub max_buffer_size: u64,
    /// Whether the device has the `shader-f16` feature (f16 weights).
    pub shader_f16: bool,
}

/// Chooses the backend: `prefer` is `"auto"` (default: WebGPU if usable, else the CPU),
/// `"webgpu"` (an error if WebGPU is unusable) or `"cpu"`. `dtype` is the weights' float type
/// on WebGPU (see [`choose_weight_dtype`]): `"auto"` (default: f16 when the adapter has
/// `shader-f16`), `"f32"` or `"f16"`; a refused one leaves f32 and says why in `dtype_note`.
/// Resolves to a [`BackendInfo`].
///
/// WebGPU is tried once per worker (the runtime cannot be initialised twice), and its dtype is
/// fixed then; calling `init` again switches the backend for models loaded afterwards. After
/// the device was lost (see [`super::lost`]) the CPU is the only backend.
#[wasm_bindgen]
pub async fn init(prefer: Option<String>, dtype: Option<String>) -> Result<JsValue, JsError> {
    let prefer = prefer.unwrap_or_else(|| "auto".into()).trim().to_ascii_lowercase();
    if !matches!(prefer.as_str(), "auto" | "webgpu" | "cpu") {
        return Err(js_error(format!(
            "unknown backend preference '{prefer}' (auto, webgpu or cpu)"
        )));
    }
    let previous = state::engine();
    let mut webgpu = previous.as_ref().and_then(|e| e.webgpu.clone());
    if webgpu.is_none() && prefer != "cpu" {
        webgpu = Some(try_webgpu().await);
    }
    let (backend, reason) = match (prefer.as_str(), &webgpu) {
        ("cpu", _) => (BackendKind::Cpu, Some("the CPU backend was selected".to_string())),
        (_, Some(Ok(_))) => (BackendKind::WebGpu, None),
        ("webgpu", Some(Err(e))) => return Err(js_error(format!("WebGPU is not usable: {e}"))),
        (_, Some(Err(e))) => (BackendKind::Cpu, Some(e.clone())),
        (_, None) => (BackendKind::Cpu, Some("WebGPU was not tried".to_string())),
    };
    let dtype_note = match &webgpu {
        Some(Ok(g)) => settle_dtype(g, dtype.as_deref()),
        _ => None,
    };
    let cpu = previous.map_or_else(Device::flex, |e| e.cpu.clone());
    let engine = state::set_engine(Engine { prefer, webgpu, cpu, backend, reason, dtype_note });
    to_js(&describe(&engine))
}

/// The current backend choice (as [`init`] returned it), or an error before [`init`].
#[wasm_bindgen]
pub fn backend_info() -> Result<JsValue, JsError> {
    let engine = state::engine().ok_or_else(|| js_error("call init() first"))?;
    to_js(&describe(&engine))
}

/// Fixes the WebGPU device's weight dtype the first time (f16 becomes burn's default float
/// type on it), and says why it is not the one `requested`, if it is not.
fn settle_dtype(g: &WebGpu, requested: Option<&str>) -> Option<String> {
    let (want, mut note) = match choose_weight_dtype(g.shader_f16, requested) {
        Ok(d) => (d, None),
        Err(e) => (WeightDtype::F32, Some(format!("{e}; the weights are f32"))),
    };
    match g.dtype.get() {
        Some(d) if d != want => {
            return Some(format!(
                "the weights stay {} in this tab (the dtype is fixed when WebGPU starts): reload the page for {}",
                d.name(),
                want.name()
            ))
        }
        Some(_) => {}
        None => {
            let mut got = want;
            if want == WeightDtype::F16 {
                let mut device = g.device.clone();
                if let Err(e) = device.configure(want.float_dtype()) {
                    got = WeightDtype::F32;
                    note = Some(format!("f16 weights could not be set up ({e:?}); the weights are f32"));
                }
            }
            g.dtype.set(Some(got));
        }
    }
    note
}

/// The float type of weights loaded on `backend`: the WebGPU device's, f32 on the CPU.
pub fn dtype_of(engine: &Engine, backend: BackendKind) -> WeightDtype {
    match (backend, &engine.webgpu) {
        (BackendKind::WebGpu, Some(Ok(g))) => g.dtype.get().unwrap_or(WeightDtype::F32),
        _ => WeightDtype::F32,
    }
}

fn describe(engine: &Engine) -> BackendInfo {
    BackendInfo {
        backend: engine.backend.as_str(),
        prefer: engine.prefer.clone(),
        reason: engine.reason.clone(),
        adapter: match &engine.webgpu {
            Some(Ok(g)) => Some(AdapterInfo {
                description: g.adapter.clone(),
                fallback: g.fallback,
                max_storage_buffer_binding_size: g.max_binding,
                max_buffer_size: g.max_buffer,
                shader_f16: g.shader_f16,
            }),
            _ => None,
        },
        dtype: dtype_of(engine, engine.backend).name(),
        dtype_note: engine.dtype_note.clone(),
        cpu_threads: cpu_threads(),
    }
}

fn cpu_threads() -> usize {
    #[cfg(feature = "web-threads")]
    return rayon::current_num_threads();
    #[cfg(not(feature = "web-threads"))]
    1
}

/// Whether the worker's global scope exposes `navigator.gpu`.
fn has_navigator_gpu() -> bool {
    let global = js_sys::global();
    let navigator =
        js_sys::Reflect::get(&global, &"navigator".into()).unwrap_or(JsValue::UNDEFINED);
    if navigator.is_undefined() || navigator.is_null() {
        return false;
    }
    js_sys::Reflect::get(&navigator, &"gpu".into()).is_ok_and(|g| !g.is_undefined() && !g.is_null())
}

/// Acquires the WebGPU device (any adapter the browser gives, a fallback one included) and
/// checks its limits.
async fn try_webgpu() -> Result<WebGpu, String> {
    if !has_navigator_gpu() {
        return Err("this browser does not offer WebGPU here (navigator.gpu is missing)".into());
    }
    acquire_webgpu().await
}

/// The multithreaded CPU engine (`web-threads`) has no WebGPU: the page loads the other engine
/// when WebGPU is wanted.
#[cfg(not(feature = "wgpu"))]
async fn acquire_webgpu() -> Result<WebGpu, String> {
    Err("this is the multithreaded CPU engine, built without WebGPU".into())
}

#[cfg(feature = "wgpu")]
async fn acquire_webgpu() -> Result<WebGpu, String> {
    use burn::tensor::wgpu::{wgpu, WgpuInitError};
    let (device, setup) = Device::wgpu_options().init_with_setup_async().await.map_err(|e| {
        web_sys::console::warn_1(&format!("clipit: WebGPU initialisation failed: {e}").into());
        match e {
            WgpuInitError::AdapterUnavailable { .. } => {
                "the browser offers no WebGPU adapter (WebGPU may be disabled, or the GPU blocklisted)".to_string()
            }
            other => format!("WebGPU could not start: {other}"),
        }
    })?;
    let info = setup.adapter.get_info();
    let limits = setup.device.limits();
    check_limits(&limits)?;
    super::lost::watch(&setup.device);
    let wgpu_device = setup.device.clone();
    Ok(WebGpu {
        destroy: std::rc::Rc::new(move || wgpu_device.destroy()),
        shader_f16: setup.device.features().contains(wgpu::Features::SHADER_F16),
        dtype: Default::default(),
        device,
        adapter: info.name,
        fallback: info.device_type == wgpu::DeviceType::Cpu,
        max_binding: limits.max_storage_buffer_binding_size,
        max_buffer: limits.max_buffer_size,
    })
}

#[cfg(feature = "wgpu")]
fn check_limits(limits: &burn::tensor::wgpu::wgpu::Limits) -> Result<(), String> {
    for &(name, min) in REQUIRED_LIMITS {
        let have = match name {
            "maxStorageBuffersPerShaderStage" => {
                u64::from(limits.max_storage_buffers_per_shader_stage)
            }
            "maxComputeInvocationsPerWorkgroup" => {
                u64::from(limits.max_compute_invocations_per_workgroup)
            }
            "maxComputeWorkgroupStorageSize" => {
                u64::from(limits.max_compute_workgroup_storage_size)
            }
            _ => limits.max_storage_buffer_binding_size,
        };
        if have < min {
            return Err(format!("the WebGPU adapter's {name} is {have}, below the {min} needed"));
        }
    }
    Ok(())
}

/// The device a model loads on, as [`crate::model::memory::plan_memory`] planned it (see
/// [`super::limits`]), and why it is the CPU when WebGPU was chosen: a tensor larger than the
/// adapter can bind in one buffer.
pub fn device_for(engine: &Engine, plan: &MemoryPlan) -> (Device, BackendKind, Option<String>) {
    match (&engine.webgpu, plan.webgpu) {
        (Some(Ok(g)), true) => (g.device.clone(), BackendKind::WebGpu, None),
        _ => (engine.cpu.clone(), BackendKind::Cpu, plan.reason.clone().or(engine.reason.clone())),
    }
}
