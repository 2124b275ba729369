//! What the worker keeps between calls: the devices, the loaded model and its caches.
//!
//! The worker is single-threaded and the page sends one request at a time, but async calls
//! still interleave at `.await` points, so nothing here is borrowed across an await: callers
//! clone the `Rc` they need and let go of the cell first.

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::rc::Rc;

use burn::tensor::{Device, Tensor};

use crate::model::Model;
use crate::precision::WeightDtype;
use crate::retrieval::Corpus;
use crate::train::classifier::Classifier;
use crate::train::session::TrainSession;

/// Which backend a device runs on, as the page names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BackendKind {
    /// burn-wgpu on the browser's WebGPU adapter.
    WebGpu,
    /// burn-flex on the CPU, inside wasm.
    Cpu,
}

impl BackendKind {
    /// `"webgpu"` or `"cpu"`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::WebGpu => "webgpu",
            Self::Cpu => "cpu",
        }
    }
}

/// The WebGPU device and what the adapter offers.
#[derive(Clone)]
pub struct WebGpu {
    /// The burn device on the adapter.
    pub device: Device,
    /// Adapter description (often empty in browsers).
    pub adapter: String,
    /// Whether the browser gave a fallback (software) adapter, such as SwiftShader.
    pub fallback: bool,
    /// The device's `maxStorageBufferBindingSize`: the largest tensor it can bind.
    pub max_binding: u64,
    /// The device's `maxBufferSize`.
    pub max_buffer: u64,
    /// Destroys the wgpu device under `device` (the device-lost test hook).
    pub destroy: Rc<dyn Fn()>,
    /// Whether the device has the `shader-f16` feature.
    pub shader_f16: bool,
    /// The float type of weights on this device, fixed by the first [`crate::web::init`] that
    /// acquired it (burn's default dtype is set before any tensor exists).
    pub dtype: Rc<Cell<Option<WeightDtype>>>,
}

/// The devices and the choice made by [`crate::web::init`].
pub struct Engine {
    /// What the page asked for: `auto`, `webgpu` or `cpu`.
    pub prefer: String,
    /// `None` until WebGPU was tried; then the device or why it cannot be used.
    pub webgpu: Option<Result<WebGpu, String>>,
    /// The CPU device, always available.
    pub cpu: Device,
    /// The backend new models load on.
    pub backend: BackendKind,
    /// Why the CPU is used although WebGPU was wanted.
    pub reason: Option<String>,
    /// Why the weights are not in the dtype the page asked for (e.g. f16 without `shader-f16`).
    pub dtype_note: Option<String>,
}

/// The report corpus last embedded for the loaded model.
pub struct CorpusEmbeds {
    /// [`Corpus::hash`] of the corpus.
    pub key: String,
    /// The reports.
    pub corpus: Rc<Corpus>,
    /// Their text embeddings `[M, D]` on the model's device.
    pub embeds: Tensor<2>,
}

/// A model loaded on one device, with its caches.
pub struct Loaded {
    /// The model.
    pub model: Model,
    /// The device its weights live on.
    pub device: Device,
    /// That device's backend.
    pub backend: BackendKind,
    /// The float type of its weights and activations.
    pub dtype: WeightDtype,
    /// Why this model is on the CPU although WebGPU was chosen (e.g. a tensor too large to bind).
    pub reason: Option<String>,
    /// Images and texts per forward pass on this device (fewer under low buffer limits).
    pub batches: super::limits::Batches,
    /// Image embeddings (before normalisation) by content hash of the image file.
    pub image_cache: RefCell<HashMap<String, Rc<Vec<f32>>>>,
    /// The last corpus's text embeddings.
    pub corpus: RefCell<Option<Rc<CorpusEmbeds>>>,
    /// The training session in progress on this model (taken out while a step runs).
    pub training: RefCell<Option<TrainSession>>,
    /// The trained (or imported) classifier that the Tiles panel uses instead of zero-shot.
    pub classifier: RefCell<Option<Rc<Classifier>>>,
}

#[derive(Default)]
struct State {
    engine: Option<Rc<Engine>>,
    model: Option<Rc<Loaded>>,
}

thread_local! {
    static STATE: RefCell<State> = RefCell::new(State::default());
}

/// The current engine, if [`crate::web::init`] ran.
pub fn engine() -> Option<Rc<Engine>> {
    STATE.with(|s| s.borrow().engine.clone())
}

/// Replaces the engine.
pub fn set_engine(engine: Engine) -> Rc<Engine> {
    let engine = Rc::new(engine);
    STATE.with(|s| s.borrow_mut().engine = Some(engine.clone()));
    engine
}

/// The loaded model, if any.
pub fn model() -> Option<Rc<Loaded>> {
    STATE.with(|s| s.borrow().model.clone())
}

/// Replaces (or, with `None`, drops) the loaded model and its caches.
pub fn set_model(model: Option<Rc<Loaded>>) {
    STATE.with(|s| s.borrow_mut().model = model);
}
