// The engine: runs the wasm module off the page's thread so the page never freezes. The page
// sends {id, type, ...args}; the worker answers {id, ok, result | error} and, while working,
// {id, progress: {stage, done, total}}. Requests run one at a time, in order. Tiles and the
// report corpus are kept here so that they cross from the page only once.
//
// Two builds of the engine: pkg/clipit.js (WebGPU, and the CPU on one thread) and pkg/mt/clipit.js
// (the CPU only, its matrix products on a rayon pool of Web Workers: wasm threads, which need the
// page cross-origin isolated). The page picks one per worker (worker.js?engine=mt|main, app.js);
// when the multithreaded one cannot start, this worker runs the other and says why.

import { adapterFacts, softwareReason } from './adapter.js';

const tiles = new Map(); // tile id -> {name, bytes: Uint8Array}
let corpus = null; // {name, bytes: Uint8Array}
let labelled = null; // training tiles: {classes, names, labels: Uint32Array, bytes: Uint8Array[]}
let crashed = null; // set after a Rust panic: the module cannot be trusted any more
let debug = false; // test hooks (the page's ?debug=1)
let debugF16Weights = false; // test hook: pretend WebGPU weights are f16 (see init)
let clipit = null; // the engine's module
const engine = { kind: 'main', note: null }; // which build runs, and why not the one asked for

function post(msg, transfer) {
  self.postMessage(msg, transfer || []);
}

// Threads for the multithreaded engine: the page's ?threads=N, else every logical core the
// browser reports (at most 16).
const params = new URL(self.location.href).searchParams;
const threadCount = () => Math.max(1, Math.min(Number(params.get('threads')) || self.navigator.hardwareConcurrency || 1, 16));

async function startEngine(kind) {
  if (kind === 'mt') {
    try {
      if (!self.crossOriginIsolated) throw new Error('the page is not cross-origin isolated (COOP + COEP headers)');
      const mt = await import('./pkg/mt/clipit.js');
      await mt.default();
      await mt.initThreadPool(threadCount());
      clipit = mt;
      engine.kind = 'mt';
      return;
    } catch (err) {
      engine.note = `the multithreaded CPU engine could not start (${(err && err.message) || err}); the CPU runs on one thread`;
      console.warn(`clipit: ${engine.note}`);
    }
  }
  clipit = await import('./pkg/clipit.js');
  await clipit.default();
  engine.kind = 'main';
}

// When the WebGPU device is lost the engine switches to the CPU and tells the page once.
const wanted = params.get('engine') === 'mt' ? 'mt' : 'main';
const ready = startEngine(wanted).then(() => clipit.on_device_lost((reason) => post({ event: 'device-lost', reason })));

function selection(ids) {
  const chosen = ids ? ids.map((id) => [id, tiles.get(id)]).filter(([, t]) => t) : [...tiles.entries()];
  return { ids: chosen.map(([id]) => id), bytes: chosen.map(([, t]) => t.bytes) };
}

const handlers = {
  async init({ prefer, dtype, debug: withHooks, debugF16 }) {
    debug = Boolean(withHooks);
    // "Auto" runs the CPU where the browser offers no WebGPU adapter or only a software one
    // (SwiftShader, llvmpipe: slower than the CPU engine); the multithreaded engine has no WebGPU,
    // so the page starts it only there. Choosing WebGPU still forces it.
    const auto = (prefer || 'auto') === 'auto';
    const facts = await adapterFacts();
    const autoCpu = auto && (engine.kind === 'mt' || (facts && facts.software));
    const info = await clipit.init(autoCpu ? 'cpu' : prefer || 'auto', dtype || null);
    if (autoCpu) Object.assign(info, { prefer: 'auto', reason: facts && facts.software ? softwareReason(facts) : info.reason || 'the browser offers no WebGPU adapter' });
    // Test hook (?debug=1&debug_f16=1): WebGPU models report f16 weights and refuse to train, as
    // on an adapter with shader-f16 (SwiftShader has none), unless f32 was asked for.
    debugF16Weights = debug && Boolean(debugF16) && dtype !== 'f32';
    info.gpu = info.backend === 'webgpu' || info.adapter ? facts : null;
    info.engine = engine.kind;
    info.engine_note = engine.note;
    info.version = clipit.version();
    info.templates = clipit.default_templates();
    return info;
  },

  backendInfo() {
    return clipit.backend_info();
  },

  // Test hook (?debug=1): destroy the WebGPU device, as a lost one would be.
  debugLoseDevice() {
    if (!debug) throw new Error('losing the device on purpose needs the page opened with ?debug=1');
    return clipit.debug_lose_device();
  },

  // Before the files are read whole: can the tab hold this model? (`head`: each file's header.)
  checkModelMemory({ files }) {
    return clipit.check_model_memory(files.map((f) => ({ name: f.name, size: f.size, head: new Uint8Array(f.head) })));
  },

  // The files' bytes stay here, on the JavaScript side: the engine copies one tensor at a time
  // into wasm memory while converting it, and lets go of them once the model is loaded.
  async loadModel({ name, files }) {
    const map = new Map(files.map((f) => [f.name, new Uint8Array(f.buffer)]));
    const info = await clipit.load_model(map, name);
    if (debugF16Weights && info.backend === 'webgpu') info.dtype = 'f16';
    return info;
  },

  // One tiny forward pass after loading, so that WebGPU compiles its shaders now (not on a
  // software adapter unless forced).
  async warmUp({ force }) {
    return clipit.warm_up(Boolean(force));
  },

  // Test hook (?batch_limit=BYTES): batch as if the adapter's buffers held at most that much.
  setBatchLimit({ bytes }) {
    clipit.set_batch_limit(bytes || 0);
    return null;
  },

  addTiles({ items }) {
    for (const t of items) tiles.set(t.id, { name: t.name, bytes: new Uint8Array(t.buffer) });
    return { count: tiles.size };
  },

  removeTiles({ ids }) {
    if (!ids) tiles.clear();
    else ids.forEach((id) => tiles.delete(id));
    return { count: tiles.size };
  },

  setCorpus({ name, buffer }) {
    corpus = buffer ? { name, bytes: new Uint8Array(buffer) } : null;
    return { name: corpus && corpus.name };
  },

  async zeroShot({ ids, classes, templates }, progress) {
    const sel = selection(ids);
    return clipit.zero_shot(sel.bytes, sel.ids, classes, templates && templates.length ? templates : null, progress);
  },

  async retrieve({ ids, k }, progress) {
    if (!corpus) throw new Error('pick a report corpus first');
    const sel = selection(ids);
    return clipit.retrieve(sel.bytes, sel.ids, corpus.bytes, corpus.name, k || 3, progress);
  },

  async embedImages({ ids }, progress) {
    const sel = selection(ids);
    return clipit.embed_images(sel.bytes, sel.ids, progress);
  },

  async embedTexts({ texts }, progress) {
    return clipit.embed_texts(texts, progress);
  },

  thumbnail({ id, maxSide }) {
    const t = tiles.get(id);
    if (!t) throw new Error(`no tile ${id}`);
    const out = clipit.thumbnail(t.bytes, t.name, maxSide || 256);
    return out;
  },

  modelInfo() {
    return clipit.model_info();
  },

  // The Train panel: labelled tiles (class = index into classes), then a step-wise session.
  setLabelled({ classes, items }) {
    labelled = items && items.length
      ? { classes, names: items.map((t) => t.name), labels: Uint32Array.from(items.map((t) => t.label)), bytes: items.map((t) => new Uint8Array(t.buffer)) }
      : null;
    return { count: labelled ? labelled.names.length : 0 };
  },

  // A labels CSV (file,class) dropped beside training tiles.
  labelsCsv({ name, buffer }) {
    return clipit.labels_csv(new Uint8Array(buffer), name);
  },

  async trainPrepare({ options }, progress) {
    if (!labelled) throw new Error('add labelled tiles (one sub-folder per class) first');
    if (!corpus) throw new Error('pick a report corpus (step 3) first: CLIP-IT pairs each tile with a report');
    if (debugF16Weights) throw new Error('training needs f32 weights, and this model\'s are f16 (simulated by ?debug_f16=1)');
    return clipit.train_prepare(labelled.bytes, labelled.names, labelled.labels, labelled.classes, corpus.bytes, corpus.name, options, progress);
  },

  trainStep({ n }) {
    return clipit.train_step(n || 1);
  },

  // The running session's adapter, kept by the page as the training's checkpoint.
  trainCheckpoint() {
    return clipit.train_checkpoint();
  },

  trainStop() {
    return clipit.train_stop();
  },

  async classifyTrained({ ids }, progress) {
    const sel = selection(ids);
    return clipit.classify_trained(sel.bytes, sel.ids, progress);
  },

  exportAdapter() {
    return clipit.export_adapter();
  },

  importAdapter({ name, buffer }) {
    return clipit.import_adapter(new Uint8Array(buffer), name);
  },

  // The Slide map panel: one open slide, classified a few tiles per request.
  mapOpen({ name, buffer, options }) {
    return clipit.map_open(new Uint8Array(buffer), name, options || null);
  },

  mapStart({ classes, templates }) {
    return clipit.map_start(classes, templates && templates.length ? templates : null);
  },

  mapStep({ n }, progress) {
    return clipit.map_step(n || 16, progress);
  },

  // The most similar report of the corpus to one tile, on a click.
  async mapTileReport({ x, y }, progress) {
    if (!corpus) throw new Error('pick a report corpus (step 3) first');
    return clipit.map_tile_report(x, y, corpus.bytes, corpus.name, progress);
  },

  mapGeojson() {
    return clipit.map_geojson();
  },

  mapCsv() {
    return clipit.map_csv();
  },

  mapOverlay() {
    return clipit.map_overlay_png();
  },

  // The "How it works" panel: every tile and report on a 2-D PCA map.
  async howMap({ classes }, progress) {
    if (!corpus) throw new Error('pick a report corpus (step 3) first');
    const sel = selection(null);
    return clipit.how_map(sel.bytes, sel.ids, corpus.bytes, corpus.name, classes || 0, progress);
  },

  forgetClassifier() {
    clipit.forget_classifier();
    return null;
  },
};

let queue = Promise.resolve();

self.onmessage = (event) => {
  const msg = event.data;
  queue = queue.then(() => handle(msg));
};

async function handle({ id, type, args }) {
  const progress = (stage, done, total) => post({ id, progress: { stage, done, total } });
  try {
    await ready;
    if (crashed) throw new Error(`the engine stopped after an internal error (${crashed}); it restarts on the next model load`);
    const handler = handlers[type];
    if (!handler) throw new Error(`unknown request ${type}`);
    const t0 = performance.now();
    const result = await handler(args || {}, progress);
    const transfer = result instanceof Uint8Array ? [result.buffer] : result && result.rgba ? [result.rgba.buffer] : [];
    post({ id, ok: true, result, ms: performance.now() - t0 }, transfer);
  } catch (err) {
    // A Rust panic surfaces as a WebAssembly RuntimeError (e.g. "unreachable").
    const fatal = err instanceof WebAssembly.RuntimeError;
    if (fatal) crashed = String(err.message || err);
    post({ id, ok: false, error: String((err && err.message) || err), fatal });
  }
}
