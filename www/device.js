import { adapterFacts } from './adapter.js';

// When the browser loses the WebGPU device, the engine (src/web/lost.rs) has already made the CPU
// its backend and dropped the model that lived on the GPU; it tells the page once, with the
// reason. The page says so where the backend is shown, loads the model again (now on the CPU)
// from the files it still holds, puts back the trained or imported adapter, and classifies the
// tiles again. A training that was running stops with the reason as its message; once the model
// is back, the Train panel offers its last checkpoint. The reason stays in app.deviceLost.

/** Loads the model again from the files the page holds (not cached again) and puts back the
 * adapter `trained` (app.trained as it was before the model went away), if it has one. */
async function reloadModel(ctx, trained) {
  const { app } = ctx;
  await ctx.loadModel(app.modelFiles.name, app.modelFiles.files, { cache: false });
  if (trained && trained.bytes && app.model) await app.trainPanel.importBytes(trained.name, trained.bytes.slice(0), trained.source);
}

/** Returns the handler for the worker's `device-lost` event. */
export function initDeviceLost(ctx) {
  const { app, call, setStatus } = ctx;

  return async function onDeviceLost(reason) {
    const trained = app.trained;
    // A model already on the CPU (too large for the adapter) stays; one on WebGPU was dropped.
    const reload = app.modelFiles && (!app.model || app.model.backend === 'webgpu');
    const training = app.train && ['preparing', 'running', 'paused', 'stopping'].includes(app.train.state);
    app.deviceLost = reason;
    document.body.dataset.deviceLost = 'lost';
    setStatus(reason, 'error');
    try {
      app.backend = Object.assign({}, app.backend, await call('backendInfo'), { gpu: null });
      ctx.renderBackend();
      if (reload) await reloadModel(ctx, trained);
      const model = reload && app.model ? ` ${app.model.name} was loaded again on the CPU${trained && trained.bytes ? ', with its adapter' : ''}.` : '';
      const train = training && reload ? ' The training stopped: its last checkpoint is offered in the Train panel.' : '';
      setStatus(`${reason}.${model}${train}`, 'error');
    } catch (err) {
      setStatus(`${reason}; loading the model again on the CPU failed: ${err.message}`, 'error');
    } finally {
      document.body.dataset.deviceLost = 'reloaded';
    }
  };
}

// Training needs f32 weights: in f16 the loss turns NaN within a few steps (Burn has no mixed
// precision), and the engine refuses it (src/precision.rs). On adapters with shader-f16 the page
// loads f16 weights by default, and the weights' dtype is fixed once WebGPU starts in a worker;
// so when a training starts on f16 weights, the page replaces the worker by one started with
// f32 weights, loads the model again from the files it holds, puts the trained or imported
// adapter back, and then trains. The tab keeps f32 weights from then on (the Model panel says why).

/** Returns `ensure()`: true once the model's weights can train (after a switch to f32 if needed). */
export function initTrainableWeights(ctx) {
  const { app, setStatus } = ctx;

  return async function ensure() {
    if (!app.model || app.model.dtype !== 'f16') return true;
    if (!app.modelFiles) {
      setStatus('Training needs f32 weights and this model has f16 ones: load it again with the page opened as ?dtype=f32.', 'error');
      return false;
    }
    const trained = app.trained;
    setStatus(`Training needs f32 weights: restarting the engine and loading ${app.modelFiles.name} again with f32 weights…`);
    app.dtype = 'f32';
    app.dtypeNote = 'f32 for training: the engine restarted off f16 weights';
    try {
      await ctx.replaceWorker();
      await reloadModel(ctx, trained);
    } catch (err) {
      setStatus(`Switching to f32 weights for training failed: ${err.message}`, 'error');
      return false;
    }
    return Boolean(app.model && app.model.dtype === 'f32');
  };
}

// Which build of the engine a worker runs (worker.js): the multithreaded CPU one (pkg/mt/: wasm
// threads, a rayon pool of Web Workers) wherever models will run on the CPU and the page is
// cross-origin isolated, which wasm threads need; the WebGPU one (its CPU fallback on one thread)
// otherwise. `?threads=0` keeps the one-thread engine; `?threads=N` sizes the pool (worker.js).
let adapterFound = null; // a promise: is there a hardware WebGPU adapter?

/** 'mt' or 'main' for the backend preference `prefer` ('auto', 'webgpu' or 'cpu'). */
export async function engineFor(prefer) {
  if (!self.crossOriginIsolated || new URLSearchParams(location.search).get('threads') === '0') return 'main';
  if (prefer === 'cpu') return 'mt';
  if (prefer === 'webgpu') return 'main';
  // "Auto" uses WebGPU on a hardware adapter only (adapter.js): a software one is slower than
  // the CPU engine.
  adapterFound ??= adapterFacts().then((facts) => Boolean(facts && !facts.software));
  return (await adapterFound) ? 'main' : 'mt';
}
