// The Slide map panel: a slide (SVS, pyramidal TIFF) or a large PNG/JPEG is opened in the worker,
// its tiles over tissue are classified a few per request (so Cancel answers at once) with the
// loaded model (the classes of step 2, or the trained model), and the argmax class of every
// tile is drawn over the overview with a legend, opacity, zoom and pan. The downloads are the
// bytes `clipit map` writes. Clicking a tile shows its probabilities and, computed then in the
// worker, the corpus's most similar report (as `clipit map --reports`). State is in app.map
// (read by the end-to-end test).

/** Aim for one worker request every ~0.7 s, so Cancel answers quickly. */
const TARGET_MS = 700;
/** The worker's batch (MAP_BATCH in src/web/map.rs): requests ask for multiples of it, so that
 * WebGPU sees few batch shapes (each new shape compiles its kernels). */
const BATCH = 16;
const lines = (text) => text.split('\n').map((s) => s.trim()).filter(Boolean);

export function initMap(ctx) {
  const { app, $, el, call, busy, setStatus, fmtMs } = ctx;
  const M = {
    state: 'idle', // idle | opening | open | running | done | cancelled | error
    file: null,
    info: null, // what map_open returned (without the pixels)
    classes: [],
    colors: [],
    records: [], // {x, y, w, h, class, probs}
    done: 0,
    total: 0,
    chunk: 16,
    maxChunk: 256, // tiles per request at most (the end-to-end test lowers it to catch a Cancel)
    afterRequest: null, // test hook: awaited after each request (the end-to-end test holds the map there)
    cancel: false,
    elapsedMs: 0,
    error: null,
    selected: null, // index into records
    report: null, // the selected tile's report: {state: 'none' | 'finding' | 'done' | 'error', hit, error}
    view: { s: 1, ox: 0, oy: 0 }, // canvas px = overview px * s + o
  };
  app.map = M;
  app.mapButtons = buttons;
  const canvas = $('#map-canvas');
  const base = document.createElement('canvas'); // the overview
  const overlay = document.createElement('canvas'); // one colour per tile, opaque

  const rgb = (c) => `rgb(${c[0]}, ${c[1]}, ${c[2]})`;
  const options = () => ({
    tile_size: Math.max(8, Math.round(Number($('#map-tile').value) || 224)),
    min_tissue: Math.min(1, Math.max(0, Number($('#map-min-tissue').value) || 0)),
  });

  function buttons() {
    const active = ['opening', 'running'].includes(M.state);
    const model = app.model && (app.model.has_text || app.trained);
    $('#map-run').disabled = active || !M.file || !model;
    $('#map-run').title = model ? '' : 'Load a model with a text encoder, or train one, first';
    $('#map-cancel').disabled = M.state !== 'running';
    for (const id of ['#map-geojson', '#map-csv', '#map-png']) $(id).disabled = M.state !== 'done';
    for (const id of ['#map-zoom-in', '#map-zoom-out', '#map-fit']) $(id).disabled = !M.info;
    document.body.dataset.map = M.state;
  }

  // ---- opening and classifying ----
  async function open(file) {
    M.file = file;
    M.openedWith = JSON.stringify(options());
    M.records = [];
    M.selected = null;
    M.state = 'opening';
    M.error = null;
    buttons();
    try {
      await busy(`Opening ${file.name}`, async () => {
        const buffer = await file.arrayBuffer();
        const r = await call('mapOpen', { name: file.name, buffer, options: options() }, { transfer: [buffer] });
        const { rgba, mask, tile_xy: xy, ...info } = r;
        M.info = info;
        M.total = info.tiles;
        base.width = overlay.width = info.overview.width;
        base.height = overlay.height = info.overview.height;
        base.getContext('2d').putImageData(new ImageData(new Uint8ClampedArray(rgba.buffer), base.width, base.height), 0, 0);
        overlay.getContext('2d').clearRect(0, 0, overlay.width, overlay.height);
        fit();
        const mpp = info.mpp ? `, ${info.mpp.toFixed(3)} µm/px` : '';
        status(`${info.name}: ${info.width} × ${info.height} px${mpp}; ${info.tiles} of ${info.grid.cols * info.grid.rows} tiles of ${info.grid.tile} px over tissue (${(info.tissue_fraction * 100).toFixed(1)}% tissue).`);
      });
      M.state = 'open';
    } catch (err) {
      Object.assign(M, { state: 'error', error: err.message, info: null });
      status(`Cannot open ${file.name}: ${err.message}`, true);
    }
    buttons();
    if (M.state === 'open' && !$('#map-run').disabled) await run();
  }

  async function run() {
    if (M.state === 'running') return;
    // New tiling settings: open the slide again, which runs the map.
    if (!M.info || M.openedWith !== JSON.stringify(options())) return open(M.file);
    try {
      const classes = lines($('#classes').value);
      const templates = lines($('#templates').value);
      const r = await call('mapStart', { classes, templates });
      Object.assign(M, { classes: r.classes, colors: r.colors, records: [], done: 0, total: r.total, cancel: false, chunk: Math.min(BATCH, M.maxChunk), error: null, selected: null, elapsedMs: 0, state: 'running' });
      overlay.getContext('2d').clearRect(0, 0, overlay.width, overlay.height);
      legend();
      buttons();
      status(`Mapping ${M.total} tiles ${r.mode === 'trained' ? 'with the trained model' : 'zero-shot'}…`);
      while (!M.cancel && M.done < M.total) {
        const s = await call('mapStep', { n: M.chunk }, { onProgress: ({ done, total }) => progress(done, total) });
        M.elapsedMs += s.elapsed_ms;
        M.records.push(...s.records);
        M.done = s.done;
        paint(s.records);
        legend();
        progress(M.done, M.total);
        const want = (M.chunk * TARGET_MS) / Math.max(s.elapsed_ms, 1);
        M.chunk = Math.max(1, Math.min(M.maxChunk, Math.max(BATCH, Math.round(want / BATCH) * BATCH)));
        if (M.afterRequest) await M.afterRequest(M);
      }
      M.state = M.cancel ? 'cancelled' : 'done';
      const rate = M.done / Math.max(M.elapsedMs / 1000, 1e-3);
      status(M.cancel ? `Cancelled after ${M.done} of ${M.total} tiles.` : `Mapped ${M.total} tiles in ${fmtMs(M.elapsedMs)} (${rate.toFixed(1)} tiles/s).`);
    } catch (err) {
      Object.assign(M, { state: 'error', error: err.message });
      status(`The map failed: ${err.message}`, true);
    }
    buttons();
  }

  function progress(done, total) {
    $('#map-progress').max = Math.max(total, 1);
    $('#map-progress').value = done;
    $('#map-status').textContent = `Classified ${done} of ${total} tiles…`;
  }

  function status(text, error = false) {
    $('#map-status').textContent = text;
    $('#map-status').dataset.kind = error ? 'error' : 'info';
    setStatus(text, error ? 'error' : 'info');
  }

  // ---- drawing ----
  function paint(records) {
    const g = overlay.getContext('2d');
    const [sx, sy] = M.info.overview.scale;
    for (const r of records) {
      g.fillStyle = rgb(M.colors[r.class]);
      g.fillRect(r.x / sx, r.y / sy, r.w / sx, r.h / sy);
    }
    draw();
  }

  function draw() {
    const g = canvas.getContext('2d');
    const w = Math.max(1, Math.round(canvas.clientWidth));
    const h = Math.max(1, Math.round(canvas.clientHeight));
    if (canvas.width !== w || canvas.height !== h) Object.assign(canvas, { width: w, height: h });
    g.setTransform(1, 0, 0, 1, 0, 0);
    g.clearRect(0, 0, w, h);
    if (!M.info) return;
    const { s, ox, oy } = M.view;
    g.setTransform(s, 0, 0, s, ox, oy);
    g.imageSmoothingEnabled = s < 1;
    g.drawImage(base, 0, 0);
    g.globalAlpha = Number($('#map-opacity').value);
    g.drawImage(overlay, 0, 0);
    g.globalAlpha = 1;
    const r = M.records[M.selected];
    if (r) {
      const [sx, sy] = M.info.overview.scale;
      g.lineWidth = 2 / s;
      g.strokeStyle = '#000';
      g.strokeRect(r.x / sx, r.y / sy, r.w / sx, r.h / sy);
      g.strokeStyle = '#fff';
      g.strokeRect(r.x / sx - 2 / s, r.y / sy - 2 / s, r.w / sx + 4 / s, r.h / sy + 4 / s);
    }
  }

  function legend() {
    const counts = M.classes.map(() => 0);
    for (const r of M.records) counts[r.class]++;
    $('#map-legend').replaceChildren(
      ...M.classes.map((c, i) => {
        const swatch = el('span', { class: 'swatch', 'aria-hidden': 'true' });
        swatch.style.setProperty('background', rgb(M.colors[i]));
        return el('li', {}, swatch, `${c} (${counts[i]})`);
      }),
    );
  }

  // ---- zoom, pan, selection ----
  function fit() {
    const w = canvas.clientWidth || 800;
    const h = canvas.clientHeight || 500;
    const s = Math.min(w / base.width, h / base.height);
    M.view = { s, ox: (w - base.width * s) / 2, oy: (h - base.height * s) / 2 };
    draw();
  }

  function zoom(factor, cx = canvas.clientWidth / 2, cy = canvas.clientHeight / 2) {
    const v = M.view;
    const s = Math.min(64, Math.max(0.05, v.s * factor));
    M.view = { s, ox: cx - ((cx - v.ox) * s) / v.s, oy: cy - ((cy - v.oy) * s) / v.s };
    draw();
  }

  function pan(dx, dy) {
    M.view.ox += dx;
    M.view.oy += dy;
    draw();
  }

  /** Selects the tile under canvas point (cx, cy); the last one drawn wins where tiles overlap. */
  function pick(cx, cy) {
    if (!M.info || !M.records.length) return;
    const [sx, sy] = M.info.overview.scale;
    const bx = ((cx - M.view.ox) / M.view.s) * sx;
    const by = ((cy - M.view.oy) / M.view.s) * sy;
    let hit = null;
    M.records.forEach((r, i) => {
      if (bx >= r.x && bx < r.x + r.w && by >= r.y && by < r.y + r.h) hit = i;
    });
    M.selected = hit;
    showTile();
    draw();
  }

  function showTile() {
    const r = M.records[M.selected];
    const box = $('#map-tile-info');
    if (!r) {
      M.report = null;
      box.replaceChildren(el('p', { class: 'muted', text: 'No tile there (background, or not classified yet).' }));
      return;
    }
    const order = r.probs.map((p, i) => [p, i]).sort((a, b) => b[0] - a[0]);
    box.replaceChildren(
      el('p', { text: `Tile at (${r.x}, ${r.y}), ${r.w} × ${r.h} px: ${M.classes[r.class]}` }),
      el('table', { class: 'probs' }, el('caption', { class: 'visually-hidden', text: 'Probability of each class for this tile' }), el('tbody', {}, ...order.map(([p, i]) => el('tr', { class: i === r.class ? 'top' : '' }, el('th', { scope: 'row', text: M.classes[i] }), el('td', { text: `${(p * 100).toFixed(2)}%` }))))),
      el('div', { id: 'map-tile-report' }),
    );
    findReport(r);
  }

  /** The selected tile's most similar report of the corpus, computed in the worker. */
  async function findReport(r) {
    const show = (...children) => {
      if (M.records[M.selected] === r) $('#map-tile-report').replaceChildren(el('h4', { text: 'Most similar report' }), ...children);
    };
    if (!app.corpus) {
      M.report = { state: 'none' };
      show(el('p', { class: 'muted', text: 'No report corpus is loaded: pick one (step 3) to see the most similar report.' }));
      return;
    }
    M.report = { state: 'finding', x: r.x, y: r.y };
    show(el('p', { class: 'muted', text: `Finding the most similar report in ${app.corpus.name}…` }));
    let report;
    try {
      const hit = await call('mapTileReport', { x: r.x, y: r.y });
      report = { state: 'done', x: r.x, y: r.y, hit };
    } catch (err) {
      report = { state: 'error', x: r.x, y: r.y, error: err.message };
    }
    if (M.records[M.selected] !== r) return; // another tile was clicked meanwhile
    M.report = report;
    if (report.state === 'error') show(el('p', { 'data-kind': 'error', text: `Cannot find the report: ${report.error}` }));
    else {
      const { id, score, reports, text } = report.hit;
      show(el('p', { class: 'report-meta', 'data-report-id': id, text: `report ${id} · cosine ${score.toFixed(4)} · best of ${reports}` }), el('p', { class: 'report-text', text }));
    }
  }

  // ---- downloads ----
  async function download(type, name, mime) {
    try {
      const bytes = await call(type);
      const a = el('a', { href: URL.createObjectURL(new Blob([bytes], { type: mime })), download: name });
      document.body.append(a);
      a.click();
      a.remove();
      setTimeout(() => URL.revokeObjectURL(a.href), 10000);
      setStatus(`Saved ${name} (${(bytes.length / 1024).toFixed(1)} kB).`);
    } catch (err) {
      setStatus(`Cannot save ${name}: ${err.message}`, 'error');
    }
  }

  // ---- wiring ----
  $('#map-file').addEventListener('change', (e) => {
    const file = e.target.files[0];
    e.target.value = '';
    if (file) open(file);
  });
  $('#map-run').addEventListener('click', () => run());
  $('#map-cancel').addEventListener('click', () => {
    M.cancel = true;
    $('#map-status').textContent = 'Cancelling after the current tiles…';
  });
  $('#map-opacity').addEventListener('input', draw);
  $('#map-zoom-in').addEventListener('click', () => zoom(1.5));
  $('#map-zoom-out').addEventListener('click', () => zoom(1 / 1.5));
  $('#map-fit').addEventListener('click', fit);
  $('#map-geojson').addEventListener('click', () => download('mapGeojson', 'tiles.geojson', 'application/geo+json'));
  $('#map-csv').addEventListener('click', () => download('mapCsv', 'tiles.csv', 'text/csv'));
  $('#map-png').addEventListener('click', () => download('mapOverlay', 'overlay.png', 'image/png'));
  canvas.addEventListener('wheel', (e) => {
    if (!M.info) return;
    e.preventDefault();
    const rect = canvas.getBoundingClientRect();
    zoom(e.deltaY < 0 ? 1.2 : 1 / 1.2, e.clientX - rect.left, e.clientY - rect.top);
  }, { passive: false });
  let drag = null;
  canvas.addEventListener('pointerdown', (e) => {
    drag = { x: e.clientX, y: e.clientY, moved: 0 };
    canvas.setPointerCapture(e.pointerId);
  });
  canvas.addEventListener('pointermove', (e) => {
    if (!drag) return;
    const dx = e.clientX - drag.x;
    const dy = e.clientY - drag.y;
    drag = { x: e.clientX, y: e.clientY, moved: drag.moved + Math.abs(dx) + Math.abs(dy) };
    pan(dx, dy);
  });
  canvas.addEventListener('pointerup', (e) => {
    if (drag && drag.moved < 4) {
      const rect = canvas.getBoundingClientRect();
      pick(e.clientX - rect.left, e.clientY - rect.top);
    }
    drag = null;
  });
  canvas.addEventListener('keydown', (e) => {
    const keys = {
      ArrowLeft: () => pan(40, 0),
      ArrowRight: () => pan(-40, 0),
      ArrowUp: () => pan(0, 40),
      ArrowDown: () => pan(0, -40),
      '+': () => zoom(1.5),
      '=': () => zoom(1.5),
      '-': () => zoom(1 / 1.5),
      0: fit,
      Enter: () => pick(canvas.clientWidth / 2, canvas.clientHeight / 2),
    };
    const f = keys[e.key];
    if (f) {
      e.preventDefault();
      f();
    }
  });
  window.addEventListener('resize', draw);
  buttons();
}
