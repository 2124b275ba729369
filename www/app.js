// The page: drives the engine in worker.js with postMessage and shows the results.
// Plain JavaScript, no framework; every file stays on this machine. The Train panel lives in
// train.js, the demo bundle in demo.js, the model cache and URL loading in models.js, the "How it
// works" map in how.js; they get the helpers below through `ctx`.
import { initTrain } from './train.js';
import { initMap } from './map.js';
import { describeDemo, findDemo, loadDemo } from './demo.js';
import { entriesOf, headOf, someNames, topLevel } from './files.js';
import { exportCsv } from './export.js';
import { initModels } from './models.js';
import { initHow } from './how.js';
import { engineFor, initDeviceLost, initTrainableWeights } from './device.js';
import { initDetail } from './detail.js';

const $ = (sel) => document.querySelector(sel);
const el = (tag, attrs = {}, ...children) => {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (k === 'class') node.className = v;
    else if (k === 'text') node.textContent = v;
    else if (v !== undefined && v !== null && v !== false) node.setAttribute(k, v === true ? '' : v);
  }
  for (const c of children) if (c !== null && c !== undefined) node.append(c);
  return node;
};

const IMAGE_EXT = /\.(png|jpe?g|tiff?)$/i;
const MODEL_EXT = /\.(json|safetensors|txt|bin)$/i;

// ---------------------------------------------------------------------------------------------
// State (also exposed as window.clipitApp for debugging and the end-to-end test).

const app = {
  backend: null, // what init() returned
  model: null, // what load_model() returned
  modelFiles: null, // {name, files: File[]} to reload after a backend change or a crash
  tiles: [], // {id, name, file, url, probs, prediction, hits, error}
  classes: [], // the classes of the last classification
  corpus: null, // {name, file}
  trained: null, // the trained or imported classifier the Tiles panel uses, or null (zero-shot)
  demo: null, // the demo bundle's index, when the server has one
  timings: {}, // milliseconds of the last operations, by name
  busy: 0,
  dtype: null, // 'f32' once a training restarted the engine off f16 weights (device.js)
  dtypeNote: null, // why the weights are not the dtype the adapter would choose
  warmUp: new URLSearchParams(location.search).get('warmup') || 'auto', // 'always': on software adapters too
  call,
};
window.clipitApp = app;
let tileSeq = 0;

// ---------------------------------------------------------------------------------------------
// The worker.

let worker;
let workerEngine = null; // the engine build the worker was started with: 'mt' or 'main' (device.js)
let nextRequest = 1;
const pending = new Map();

function startWorker(engine) {
  workerEngine = engine;
  const threads = Number(new URLSearchParams(location.search).get('threads')) || 0;
  worker = new Worker(`worker.js?engine=${engine}${threads ? `&threads=${threads}` : ''}`, { type: 'module' });
  worker.onmessage = (event) => {
    const msg = event.data;
    if (msg.event === 'device-lost') return deviceLost(msg.reason);
    const req = pending.get(msg.id);
    if (!req) return;
    if (msg.progress) {
      req.onProgress && req.onProgress(msg.progress);
      return;
    }
    pending.delete(msg.id);
    if (msg.ok) req.resolve(msg.result);
    else {
      const error = new Error(msg.error);
      error.fatal = msg.fatal;
      req.reject(error);
      if (msg.fatal) restartWorker(msg.error);
    }
  };
  worker.onerror = (event) => {
    event.preventDefault();
    setStatus(`The engine failed to start: ${event.message || 'unknown error'}`, 'error');
  };
}

/** Sends one request to the worker; resolves with its result. */
function call(type, args = {}, { transfer = [], onProgress } = {}) {
  const id = nextRequest++;
  return new Promise((resolve, reject) => {
    pending.set(id, { resolve, reject, onProgress });
    worker.postMessage({ id, type, args }, transfer);
  });
}

/** Replaces the worker by a fresh one and sends it the page's tiles, corpus and labelled tiles
 * again; the model is gone with the old worker. Used after a Rust panic (the wasm instance is
 * unusable) and to change the weights' dtype, which is fixed once WebGPU starts (device.js). */
async function replaceWorker(engine = workerEngine) {
  worker.terminate();
  for (const [, req] of pending) req.reject(new Error('the engine restarted'));
  pending.clear();
  app.model = null;
  renderModel();
  startWorker(engine);
  await initBackend();
  await sendTiles(app.tiles);
  if (app.corpus) await sendCorpus(app.corpus.file);
  await train.resend();
}

async function restartWorker(reason) {
  setStatus(`The engine stopped (${reason}); restarting it.`, 'error');
  await replaceWorker();
  setStatus(`The engine stopped after an internal error (${reason}) and was restarted: load the model again.`, 'error');
}

// ---------------------------------------------------------------------------------------------
// Status and progress.

function setStatus(text, kind = 'info') {
  const s = $('#status');
  s.textContent = text;
  s.dataset.kind = kind;
}

const STAGES = { images: 'Embedding tiles', classes: 'Embedding class prompts', reports: 'Embedding reports', texts: 'Embedding texts' };

function progressFor(label) {
  const bar = $('#progress');
  return ({ stage, done, total }) => {
    bar.hidden = false;
    bar.max = Math.max(total, 1);
    bar.value = done;
    setStatus(`${label}: ${STAGES[stage] || stage} ${done}/${total}…`);
  };
}

async function busy(label, fn) {
  app.busy++;
  document.body.dataset.busy = '1';
  updateButtons();
  setStatus(`${label}…`);
  try {
    return await fn(progressFor(label));
  } catch (err) {
    setStatus(`${label} failed: ${err.message}`, 'error');
    throw err;
  } finally {
    app.busy--;
    $('#progress').hidden = app.busy > 0 ? $('#progress').hidden : true;
    if (app.busy === 0) document.body.dataset.busy = '0';
    updateButtons();
  }
}

const fmtMs = (ms) => (ms >= 1000 ? `${(ms / 1000).toFixed(1)} s` : `${Math.round(ms)} ms`);

// ---------------------------------------------------------------------------------------------
// Backend and model.

async function initBackend() {
  const prefer = $('#backend').value;
  // Another engine build for this backend: a new worker (replaceWorker comes back here).
  const engine = await engineFor(prefer);
  if (engine !== workerEngine) {
    await replaceWorker(engine);
    return Boolean(app.backend);
  }
  try {
    // ?dtype=f32|f16: the WebGPU weights (app.dtype once training switched them to f32);
    // ?debug=1: test hooks (with ?debug_f16=1: a WebGPU model reports f16 weights, as on shader-f16 adapters).
    const q = new URLSearchParams(location.search);
    const debug = q.get('debug') === '1';
    app.backend = await call('init', { prefer, dtype: app.dtype || q.get('dtype'), debug, debugF16: debug && q.get('debug_f16') === '1' });
  } catch (err) {
    if (prefer === 'webgpu') {
      // WebGPU was asked for and is unusable: say so, and go back to the automatic choice.
      $('#backend').value = 'auto';
      const ok = await initBackend();
      setStatus(`${err.message}; using ${app.backend && app.backend.backend === 'webgpu' ? 'WebGPU' : 'the CPU'}.`, 'error');
      return ok;
    }
    app.backend = null;
    $('#backend-badge').textContent = 'No engine';
    setStatus(`Could not start the engine: ${err.message}`, 'error');
    return false;
  }
  renderBackend();
  if (!$('#templates').value.trim()) $('#templates').value = app.backend.templates.join('\n');
  return true;
}

/** The CPU backend as the page names it, with its threads when there are several. */
function cpuName() {
  const threads = (app.backend && app.backend.cpu_threads) || 1;
  return `CPU (WebAssembly${threads > 1 ? `, ${threads} threads` : ''})`;
}

function renderBackend() {
  const b = app.backend;
  const badge = $('#backend-badge');
  if (!b) return;
  const gpu = b.gpu ? [b.gpu.vendor, b.gpu.architecture].filter(Boolean).join(' ') : '';
  const where = (app.model && app.model.backend) || b.backend;
  badge.textContent = where === 'webgpu' ? `WebGPU${gpu ? ` (${gpu}${b.gpu.isFallbackAdapter ? ', software' : ''})` : ''}` : cpuName();
  badge.dataset.backend = where;
  badge.title = b.reason || '';
}

/** Loads a checkpoint's files; `cache: false` keeps them out of the model cache (models.js). */
async function loadModel(name, files, { cache = true } = {}) {
  const wanted = files.filter((f) => MODEL_EXT.test(f.name) && !f.name.startsWith('.'));
  if (!wanted.length) {
    setStatus('No model files there: expected a config JSON and .safetensors weights.', 'error');
    return;
  }
  app.modelFiles = { name, files: wanted };
  // The engine frees the previous model (and its trained classifier) before loading the next one.
  app.model = null;
  app.trained = null;
  train.onModelChanged();
  renderModel();
  await busy(`Loading ${name}`, async () => {
    // From the files' headers first: a model too large for the tab is refused before it is read.
    const heads = await Promise.all(wanted.map(headOf));
    await call('checkModelMemory', { files: heads }, { transfer: heads.map((h) => h.head) });
    const buffers = await Promise.all(wanted.map((f) => f.arrayBuffer()));
    const payload = wanted.map((f, i) => ({ name: f.name, buffer: buffers[i] }));
    const model = await call('loadModel', { name, files: payload }, { transfer: buffers });
    // One tiny forward pass: WebGPU compiles its shaders now, not at the first classification.
    const software = app.backend && app.backend.gpu && app.backend.gpu.isFallbackAdapter;
    if (model.backend === 'webgpu' && (!software || app.warmUp === 'always')) setStatus(`Loading ${name}: warming up…`);
    const warm = await call('warmUp', { force: app.warmUp === 'always' }).catch((err) => ({ warmup_ms: null, skipped: `the warm-up failed: ${err.message}` }));
    app.model = Object.assign(model, { warmup_ms: warm.warmup_ms, warmup_note: warm.skipped || null });
    app.timings.load = app.model.load_ms;
    app.timings.warmup = app.model.warmup_ms;
    for (const t of app.tiles) Object.assign(t, { probs: null, prediction: null, hits: null });
    renderModel();
    renderBackend();
    renderGrid();
    const warmed = model.warmup_ms !== null ? ` (warmed up in ${fmtMs(model.warmup_ms)})` : model.warmup_note ? ` (${model.warmup_note})` : '';
    setStatus(`Loaded ${name} (${app.model.architecture}) on ${app.model.backend === 'webgpu' ? 'WebGPU' : 'the CPU'} in ${fmtMs(app.model.load_ms)}${warmed}.`);
  });
  if (cache) models.remember(name, wanted);
  if (app.tiles.length && app.model.has_text) await classify();
  train.onModelChanged();
}

function renderModel() {
  const info = $('#model-info');
  const m = app.model;
  info.replaceChildren();
  info.hidden = !m;
  if (!m) return;
  const weightsNote = (app.backend && app.backend.dtype_note) || app.dtypeNote;
  const rows = [
    ['Checkpoint', m.name],
    ['Architecture', m.architecture],
    ['Parameters', `${(m.parameters / 1e6).toFixed(m.parameters < 1e6 ? 3 : 1)} M`],
    ['Embedding', `${m.embed_dim} dimensions`],
    ['Input', `${m.image_size} × ${m.image_size} px, patch ${m.patch_size}`],
    ['Text encoder', m.has_text ? `yes (context ${m.context_length})` : 'no: image features only'],
    ['Backend', m.backend === 'webgpu' ? 'WebGPU' : cpuName()],
    ['Weights', `${m.dtype}${weightsNote ? ` (${weightsNote})` : ''}`],
    ...(m.backend === 'webgpu' && app.backend && app.backend.gpu
      ? [['Adapter', `${[app.backend.gpu.vendor, app.backend.gpu.architecture].filter(Boolean).join(' ') || 'unnamed'}${app.backend.gpu.isFallbackAdapter ? ' (software fallback)' : ''}`]]
      : []),
    ['Loaded in', `${fmtMs(m.load_ms)}${typeof m.warmup_ms === 'number' ? `, warmed up in ${fmtMs(m.warmup_ms)}` : m.warmup_note ? ` (${m.warmup_note})` : ''}`],
    ['Per pass', `${m.image_batch} images, ${m.text_batch} texts${m.batch_note ? ` (micro-batches: ${m.batch_note})` : ''}`],
  ];
  const reason = m.reason || (app.backend && app.backend.backend === 'cpu' ? app.backend.reason : null);
  if (reason) rows.push(['Why the CPU', reason]);
  for (const [k, v] of rows) info.append(el('dt', { text: k }), el('dd', { text: v }));
}

// ---------------------------------------------------------------------------------------------
// Checkpoint folders (dropped folders are read by files.js).

function modelFromList(list, fallbackName) {
  const top = topLevel(list);
  const parts = top[0] ? top[0].path.split('/') : [];
  const name = parts.length > 1 ? parts[parts.length - 2] : fallbackName;
  return loadModel(name, top.map((x) => x.file)).catch(() => {});
}

// ---------------------------------------------------------------------------------------------
// Tiles.

async function sendTiles(tiles) {
  if (!tiles.length) return;
  const buffers = await Promise.all(tiles.map((t) => t.file.arrayBuffer()));
  const items = tiles.map((t, i) => ({ id: t.id, name: t.name, buffer: buffers[i] }));
  await call('addTiles', { items }, { transfer: buffers });
}

async function addTiles(list) {
  const images = list.filter((x) => IMAGE_EXT.test(x.file.name) && !x.file.name.startsWith('.'));
  const others = list.filter((x) => !images.includes(x) && !x.file.name.startsWith('.')).map((x) => x.path || x.file.name);
  const skipped = others.length ? ` Skipped ${someNames(others)}: not a PNG, JPEG or TIFF image.` : '';
  if (!images.length) {
    setStatus(skipped.trim() || 'No files.', 'error');
    return;
  }
  const tiles = images.map(({ file, path }) => ({
    id: `t${++tileSeq}`,
    name: path || file.name,
    file,
    url: URL.createObjectURL(file),
    probs: null,
    prediction: null,
    hits: null,
    error: null,
  }));
  app.tiles.push(...tiles);
  await sendTiles(tiles);
  renderGrid();
  setStatus(`Added ${tiles.length} tile(s).${skipped}`, skipped ? 'error' : 'info');
  if (!app.model || !(app.model.has_text || app.trained)) return;
  await classify().catch(() => {});
  if (skipped) setStatus(`${$('#status').textContent}${skipped}`, 'error'); // after the classification's own status
}

async function clearTiles() {
  for (const t of app.tiles) URL.revokeObjectURL(t.url);
  app.tiles = [];
  await call('removeTiles', { ids: null });
  renderGrid();
  setStatus('Removed every tile.');
}

// Images the browser cannot show (TIFF) are drawn from the engine's own decoder.
async function fallbackThumbnail(tile, img) {
  if (tile.thumb) {
    img.src = tile.thumb;
    return;
  }
  try {
    const t = await call('thumbnail', { id: tile.id, maxSide: 320 });
    const canvas = document.createElement('canvas');
    canvas.width = t.width;
    canvas.height = t.height;
    canvas.getContext('2d').putImageData(new ImageData(new Uint8ClampedArray(t.rgba.buffer), t.width, t.height), 0, 0);
    tile.thumb = canvas.toDataURL('image/png');
    img.src = tile.thumb;
  } catch (err) {
    img.alt = `${tile.name} (cannot be shown: ${err.message})`;
  }
}

function thumbImg(tile, cls) {
  const img = el('img', { class: cls, alt: tile.name, loading: 'lazy', decoding: 'async' });
  img.addEventListener('error', () => fallbackThumbnail(tile, img), { once: true });
  img.src = tile.thumb || tile.url;
  return img;
}

function visibleTiles() {
  const cls = $('#filter-class').value;
  const text = $('#filter-text').value.trim().toLowerCase();
  let list = app.tiles.filter((t) => (!cls || (t.prediction !== null && app.classes[t.prediction] === cls)) && (!text || t.name.toLowerCase().includes(text)));
  const conf = (t) => (t.prediction === null ? -1 : t.probs[t.prediction]);
  const sorters = {
    name: (a, b) => a.name.localeCompare(b.name),
    class: (a, b) => (app.classes[a.prediction] || '\uffff').localeCompare(app.classes[b.prediction] || '\uffff') || conf(b) - conf(a),
    'conf-desc': (a, b) => conf(b) - conf(a),
    'conf-asc': (a, b) => conf(a) - conf(b),
  };
  const sorter = sorters[$('#sort').value];
  if (sorter) list = [...list].sort(sorter);
  return list;
}

function renderGrid() {
  const grid = $('#grid');
  const list = visibleTiles();
  grid.replaceChildren(
    ...list.map((t) => {
      const pred = t.prediction !== null ? app.classes[t.prediction] : null;
      const conf = pred ? t.probs[t.prediction] : 0;
      const label = t.error ? `error: ${t.error}` : pred ? `${pred} ${(conf * 100).toFixed(1)}%` : 'not classified';
      const bar = el('span', { class: 'bar', 'aria-hidden': 'true' }, el('span', {}));
      bar.firstChild.style.setProperty('width', `${(conf * 100).toFixed(1)}%`);
      const card = el(
        'button',
        { type: 'button', class: `tile${t.error ? ' failed' : ''}`, 'data-id': t.id, 'aria-label': `${t.name}: ${label}. Show details.` },
        thumbImg(t, 'thumb'),
        el('span', { class: 'tile-name', text: t.name }),
        el('span', { class: 'tile-pred', text: t.error ? 'unreadable' : pred || '—' }),
        el('span', { class: 'tile-conf', text: pred ? `${(conf * 100).toFixed(1)}%` : '' }),
        t.error ? el('span', { class: 'tile-error', text: t.error.replace(`${t.name}: `, '') }) : bar,
      );
      card.addEventListener('click', () => detail.open(t.id));
      return el('li', {}, card);
    }),
  );
  const n = app.tiles.length;
  $('#tile-count').textContent = n ? `Showing ${list.length} of ${n} tile${n === 1 ? '' : 's'}.` : 'No tiles yet.';
  const filter = $('#filter-class');
  const current = filter.value;
  filter.replaceChildren(el('option', { value: '', text: 'All' }), ...app.classes.map((c) => el('option', { value: c, text: c })));
  filter.value = app.classes.includes(current) ? current : '';
  updateButtons();
}

function updateButtons() {
  const idle = app.busy === 0;
  $('#classify').disabled = !idle || !app.model || !(app.model.has_text || app.trained) || !app.tiles.length;
  $('#export').disabled = !app.tiles.some((t) => t.probs || t.hits);
  $('#clear-tiles').disabled = !idle || !app.tiles.length;
  if (app.mapButtons) app.mapButtons(); // the Slide map panel (map.js)
}

// ---------------------------------------------------------------------------------------------
// Classification and retrieval.

const lines = (text) => text.split('\n').map((s) => s.trim()).filter(Boolean);

async function classify() {
  if (!app.model || !app.tiles.length) return;
  const classes = lines($('#classes').value);
  const templates = lines($('#templates').value);
  if (classes.length < 2 && !app.trained) {
    setStatus('Give at least two class names, one per line.', 'error');
    return;
  }
  await busy('Classifying', async (onProgress) => {
    const r = app.trained ? await call('classifyTrained', {}, { onProgress }) : await call('zeroShot', { classes, templates }, { onProgress });
    app.classes = r.classes;
    app.timings.classify = r.elapsed_ms;
    const byId = new Map(app.tiles.map((t) => [t.id, t]));
    for (const img of r.images) {
      const t = byId.get(img.name);
      // The engine knows tiles by id: its messages name the file instead.
      const error = img.error && (img.error.startsWith(`${img.name}: `) ? t && `${t.name}${img.error.slice(img.name.length)}` : img.error);
      if (t) Object.assign(t, { probs: img.probs.length ? img.probs : null, prediction: img.prediction ?? null, error: error || null });
    }
    const failed = r.images.filter((img) => img.error).map((img) => byId.get(img.name)).filter(Boolean);
    let msg = `Classified ${r.images.length - failed.length} tile(s) into ${r.classes.length} classes ${app.trained ? 'with the trained model' : 'zero-shot'} in ${fmtMs(r.elapsed_ms)}.`;
    if (app.corpus) {
      const k = Math.max(1, Math.min(20, Number($('#topk').value) || 3));
      const h = await call('retrieve', { k }, { onProgress });
      app.timings.retrieve = h.elapsed_ms;
      for (const img of h.images) {
        const t = byId.get(img.name);
        if (t) t.hits = img.hits;
      }
      msg += ` Retrieved ${k} of ${h.corpus.reports} reports per tile in ${fmtMs(h.elapsed_ms)}.`;
    }
    renderGrid();
    if (failed.length) msg += ` ${failed.length} could not be read: ${failed.map((t) => t.error).join('; ')}.`;
    setStatus(msg, failed.length ? 'error' : 'info');
  });
  document.dispatchEvent(new CustomEvent('clipit:classified')); // the "How it works" map
}

async function sendCorpus(file) {
  const buffer = await file.arrayBuffer();
  await call('setCorpus', { name: file.name, buffer }, { transfer: [buffer] });
}

async function setCorpus(file) {
  app.corpus = { name: file.name, file };
  $('#corpus-name').textContent = `${file.name} (${(file.size / 1024).toFixed(1)} kB)`;
  await sendCorpus(file);
  for (const t of app.tiles) t.hits = null;
  train.onModelChanged();
}

// ---------------------------------------------------------------------------------------------
// Wiring.

function dropzone(node, onDrop) {
  const stop = (e) => {
    e.preventDefault();
    e.stopPropagation();
  };
  node.addEventListener('dragover', (e) => {
    stop(e);
    node.classList.add('over');
  });
  node.addEventListener('dragleave', () => node.classList.remove('over'));
  node.addEventListener('drop', async (e) => {
    stop(e);
    node.classList.remove('over');
    onDrop(await entriesOf(e.dataTransfer));
  });
  // Enter or space opens the zone's first file picker.
  node.addEventListener('keydown', (e) => {
    if ((e.key === 'Enter' || e.key === ' ') && e.target === node) {
      e.preventDefault();
      node.querySelector('input[type=file]').click();
    }
  });
}

function wire() {
  $('#backend').addEventListener('change', async () => {
    await busy('Switching the backend', () => initBackend());
    if (app.modelFiles) await loadModel(app.modelFiles.name, app.modelFiles.files, { cache: false }).catch(() => {});
  });
  $('#model-folder').addEventListener('change', (e) => {
    const files = [...e.target.files];
    e.target.value = '';
    if (files.length) modelFromList(files.map((f) => ({ file: f, path: f.webkitRelativePath || f.name })), 'model');
  });
  $('#model-files').addEventListener('change', (e) => {
    const files = [...e.target.files];
    e.target.value = '';
    if (files.length) loadModel('model', files).catch(() => {});
  });
  dropzone($('#model-drop'), ({ files, folder }) => {
    if (!files.length) return;
    if (folder) modelFromList(files, folder);
    else loadModel('model', files.map((x) => x.file)).catch(() => {});
  });
  $('#tile-files').addEventListener('change', (e) => {
    const files = [...e.target.files];
    e.target.value = '';
    addTiles(files.map((f) => ({ file: f, path: f.name })));
  });
  dropzone($('#tile-drop'), ({ files }) => addTiles(files));
  $('#clear-tiles').addEventListener('click', clearTiles);
  $('#classify').addEventListener('click', () => classify().catch(() => {}));
  $('#reset-templates').addEventListener('click', () => app.backend && ($('#templates').value = app.backend.templates.join('\n')));
  $('#corpus-file').addEventListener('change', async (e) => {
    const file = e.target.files[0];
    e.target.value = '';
    if (!file) return;
    await setCorpus(file);
    if (app.model && app.tiles.length) await classify().catch(() => {});
    else setStatus(`Report corpus ${file.name} ready.`);
  });
  $('#load-demo').addEventListener('click', () => loadDemo(ctx, app.demo).catch((err) => setStatus(`Loading the demo failed: ${err.message}`, 'error')));
  for (const id of ['#sort', '#filter-class']) $(id).addEventListener('change', renderGrid);
  $('#filter-text').addEventListener('input', renderGrid);
  $('#export').addEventListener('click', () => exportCsv(ctx));
  // Dropping a file outside a drop zone must not navigate away from the page.
  for (const type of ['dragover', 'drop']) window.addEventListener(type, (e) => e.preventDefault());
}

async function main() {
  const wanted = new URLSearchParams(location.search).get('backend');
  if (['auto', 'webgpu', 'cpu'].includes(wanted)) $('#backend').value = wanted;
  wire();
  // coi.js: null when the page is cross-origin isolated, else why not (the engine then runs on
  // one thread); it never resolves while the page reloads behind its service worker.
  app.isolation = window.clipitIsolation ? await window.clipitIsolation : null;
  startWorker(await engineFor($('#backend').value));
  document.body.dataset.busy = '1';
  if (await initBackend()) {
    const b = app.backend;
    const software = b.backend === 'webgpu' && b.gpu && b.gpu.isFallbackAdapter;
    setStatus(
      b.backend === 'webgpu'
        ? `Ready: WebGPU is available${software ? ' through a software adapter, which can be slower than the CPU for large models (switch “Compute on” to CPU if so)' : ''}. Load a model to begin.`
        : `Ready on the ${cpuName()}: ${b.reason}${workerEngine === 'main' && app.isolation ? ` (one thread: ${app.isolation})` : ''}. Load a model to begin.`,
    );
    if (b.dtype_note) setStatus(b.dtype_note, 'error');
  }
  // Test hook: micro-batch as if the WebGPU adapter's buffers held at most this many bytes.
  const batchLimit = Number(new URLSearchParams(location.search).get('batch_limit'));
  if (app.backend && batchLimit > 0) await call('setBatchLimit', { bytes: batchLimit });
  document.body.dataset.ready = app.backend ? '1' : 'error';
  document.body.dataset.busy = '0';
  updateButtons();
  app.demo = await findDemo();
  $('#demo-box').hidden = !app.demo;
  if (app.demo) $('#demo-facts').textContent = describeDemo(app.demo);
  const auto = new URLSearchParams(location.search).get('demo') !== '0';
  if (app.demo && app.backend && auto) await loadDemo(ctx, app.demo).catch((err) => setStatus(`Loading the demo failed: ${err.message}`, 'error'));
  document.body.dataset.demo = app.demo ? 'loaded' : 'none';
}

// What train.js and demo.js use.
const ctx = { app, $, el, call, busy, setStatus, fmtMs, loadModel, addTiles, setCorpus, classify, renderGrid, renderBackend, updateButtons, entriesOf, replaceWorker, fallbackThumbnail, visibleTiles };
const train = initTrain(ctx);
const detail = initDetail(ctx);
const models = initModels(ctx);
initMap(ctx);
initHow(ctx);
const deviceLost = initDeviceLost(ctx);
ctx.trainableWeights = initTrainableWeights(ctx);

main();
