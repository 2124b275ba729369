// The Train panel: labelled tiles in, a CLIP-IT session in the worker run a few steps per
// request (so Pause and Stop answer at once), a live chart, the validation confusion matrix, and
// the adapter's export and import. Checkpoints that survive a reload are in checkpoints.js.
// State is in app.train (read by the end-to-end test).
import { CHECKPOINT_EVERY, initCheckpoints } from './checkpoints.js';
import { someNames } from './files.js';

const IMAGE_EXT = /\.(png|jpe?g|tiff?)$/i;
const STAGES = { images: 'Embedding tiles', reports: 'Embedding reports' };
/** Aim for one worker request every ~0.7 s, so the page answers quickly. */
const TARGET_MS = 700;

export function initTrain(ctx) {
  const { app, $, el, call, setStatus, fmtMs } = ctx;
  const T = {
    state: 'idle', // idle | preparing | running | paused | stopping | done
    classes: [],
    items: [], // {file, name, label}
    prep: null, // what train_prepare returned
    losses: [], // [step, loss]
    vals: [], // [step, balanced accuracy]
    stepsDone: 0,
    total: 0,
    chunk: 1,
    maxChunk: 64, // steps per request at most (the end-to-end test lowers it to catch a pause)
    // Test hook: an async function awaited after each request while running (the end-to-end
    // test holds the loop at a step it chooses, so its Pause lands there on any machine speed).
    afterRequest: null,
    runMs: 0, // time spent in steps, for the ETA
    savedAt: 0, // the step of the last checkpoint
    looping: false,
    report: null,
    error: null,
  };
  app.train = T;

  const num = (id, fallback) => {
    const v = Number($(id).value);
    return Number.isFinite(v) ? v : fallback;
  };
  const options = () => ({
    epochs: Math.max(1, Math.round(num('#hp-epochs', 5))),
    batch_size: Math.max(1, Math.round(num('#hp-batch', 16))),
    lr: num('#hp-lr', 1e-3),
    weight_decay: num('#hp-wd', 1e-4),
    grad_clip: num('#hp-clip', 0.5),
    lambda: num('#hp-lambda', 1),
    lora_r: Math.max(1, Math.round(num('#hp-r', 16))),
    lora_alpha: num('#hp-alpha', 8),
    val_fraction: num('#hp-val', 0.2),
    val_every: Math.max(0, Math.round(num('#hp-val-every', 0))),
    seed: Math.max(0, Math.round(num('#hp-seed', 0))),
    augment: $('#hp-augment').checked,
  });

  function buttons() {
    const active = ['preparing', 'running', 'paused', 'stopping'].includes(T.state);
    const ready = app.model && app.model.has_text && app.corpus && T.items.length;
    $('#train-start').disabled = active || !ready;
    $('#train-start').title = ready ? '' : 'Needs a model with a text encoder, a report corpus (step 3) and labelled tiles';
    $('#train-pause').disabled = !['running', 'paused'].includes(T.state);
    $('#train-pause').textContent = T.state === 'paused' ? 'Resume' : 'Pause';
    $('#train-pause').setAttribute('aria-pressed', String(T.state === 'paused'));
    $('#train-stop').disabled = !['running', 'paused'].includes(T.state);
    $('#train-clear').disabled = active || !T.items.length;
    $('#adapter-export').disabled = !app.trained;
    $('#adapter-forget').disabled = !app.trained;
    document.body.dataset.train = T.state;
  }

  function describeData() {
    if (!T.items.length) return void ($('#train-data').textContent = 'No labelled tiles yet.');
    const counts = T.classes.map((c, i) => `${c} ${T.items.filter((t) => t.label === i).length}`);
    $('#train-data').textContent = `${T.items.length} labelled tiles in ${T.classes.length} classes: ${counts.join(', ')}.`;
  }

  /**
   * Labelled tiles from picked or dropped files: the class is each file's parent folder, or,
   * when a CSV comes with them, the class its `file,class` rows give (parsed by the engine).
   */
  async function setLabelled(list) {
    const images = list.filter((x) => IMAGE_EXT.test(x.file.name) && !x.file.name.startsWith('.'));
    const csvs = list.filter((x) => /\.csv$/i.test(x.file.name) && !x.file.name.startsWith('.'));
    if (csvs.length > 1) return void setStatus(`${someNames(csvs.map((x) => x.path))}: give one labels CSV (file,class) beside the images.`, 'error');
    if (csvs.length === 1) return labelledByCsv(images, csvs[0]);
    const parent = (p) => {
      const parts = p.split('/').filter(Boolean);
      return parts.length >= 2 ? parts[parts.length - 2] : null;
    };
    const unlabelled = images.filter((x) => !parent(x.path));
    if (!images.length || unlabelled.length) {
      setStatus(images.length ? `${unlabelled.length} image(s) are not in a class sub-folder: give one sub-folder per class.` : 'No PNG, JPEG or TIFF images there.', 'error');
      return;
    }
    T.classes = [...new Set(images.map((x) => parent(x.path)))].sort();
    if (T.classes.length < 2) {
      setStatus(`Found one class (${T.classes[0]}): training needs at least two sub-folders.`, 'error');
      T.classes = [];
      return;
    }
    T.items = images.map((x) => ({ file: x.file, name: x.path, label: T.classes.indexOf(parent(x.path)) }));
    await ready('');
  }

  /** Labelled tiles whose classes a CSV gives: rows `file,class`, files relative to the CSV. */
  async function labelledByCsv(images, csv) {
    const buffer = await csv.file.arrayBuffer();
    const parsed = await call('labelsCsv', { name: csv.path, buffer }, { transfer: [buffer] }).catch((err) => void setStatus(err.message, 'error'));
    if (!parsed) return;
    const dir = csv.path.slice(0, csv.path.lastIndexOf('/') + 1);
    const byPath = new Map(images.map((x) => [x.path.startsWith(dir) ? x.path.slice(dir.length) : x.path, x]));
    const rows = parsed.rows.map((r) => ({ ...r, key: r.file.replace(/\\/g, '/').replace(/^\.\//, '') }));
    const found = rows.filter((r) => byPath.has(r.key));
    const missing = rows.filter((r) => !byPath.has(r.key)).map((r) => r.file);
    const listed = new Set(found.map((r) => r.key));
    const unlisted = [...byPath.keys()].filter((k) => !listed.has(k));
    // Only the classes that have images, in the CSV's (sorted) order.
    const classes = parsed.classes.filter((_, i) => found.some((r) => r.label === i));
    if (classes.length < 2) {
      setStatus(`${csv.path}: ${found.length} of its ${rows.length} files were given, in ${classes.length} class(es); training needs at least two${missing.length ? ` (not given: ${someNames(missing)})` : ''}.`, 'error');
      return;
    }
    T.classes = classes;
    T.items = found.map((r) => ({ file: byPath.get(r.key).file, name: byPath.get(r.key).path, label: classes.indexOf(parsed.classes[r.label]) }));
    const notes = [` Classes from ${csv.path}.`];
    if (missing.length) notes.push(` ${missing.length} listed file(s) were not given: ${someNames(missing)}.`);
    if (unlisted.length) notes.push(` ${unlisted.length} image(s) are not in it and were left out: ${someNames(unlisted)}.`);
    await ready(notes.join(''));
  }

  async function ready(note) {
    await resend();
    describeData();
    buttons();
    setStatus(`Ready to train on ${T.items.length} labelled tiles in ${T.classes.length} classes.${note}`);
  }

  async function resend() {
    const buffers = await Promise.all(T.items.map((t) => t.file.arrayBuffer()));
    const items = T.items.map((t, i) => ({ name: t.name, label: t.label, buffer: buffers[i] }));
    await call('setLabelled', { classes: T.classes, items }, { transfer: buffers });
  }

  // ---- the chart (plain SVG) ----
  function chart() {
    const W = 400, H = 200, L = 36, R = 30, TOP = 10, B = 24;
    const svg = $('#train-chart');
    const title = svg.querySelector('title');
    const ns = 'http://www.w3.org/2000/svg';
    const node = (tag, attrs) => {
      const n = document.createElementNS(ns, tag);
      for (const [k, v] of Object.entries(attrs)) n.setAttribute(k, v);
      return n;
    };
    const text = (x, y, s, anchor = 'start') => Object.assign(node('text', { x, y, 'text-anchor': anchor }), { textContent: s });
    const total = Math.max(T.total, 1);
    const maxLoss = Math.max(...T.losses.map(([, l]) => l), 1e-6);
    const x = (s) => L + ((W - L - R) * s) / total;
    const yl = (v) => H - B - ((H - B - TOP) * v) / maxLoss;
    const ya = (v) => H - B - (H - B - TOP) * v;
    const kids = [title, node('line', { class: 'axis', x1: L, y1: H - B, x2: W - R, y2: H - B }), node('line', { class: 'axis', x1: L, y1: TOP, x2: L, y2: H - B }), node('line', { class: 'axis', x1: W - R, y1: TOP, x2: W - R, y2: H - B })];
    kids.push(text(L - 4, TOP + 8, maxLoss.toFixed(2), 'end'), text(L - 4, H - B, '0', 'end'), text(W - R + 4, TOP + 8, '1'), text(W - R + 4, H - B, '0'), text((L + W - R) / 2, H - 6, `step (of ${T.total})`, 'middle'));
    if (T.losses.length) kids.push(node('polyline', { class: 'loss-line', points: T.losses.map(([s, l]) => `${x(s).toFixed(1)},${yl(l).toFixed(1)}`).join(' ') }));
    if (T.vals.length) {
      kids.push(node('polyline', { class: 'acc-line', points: T.vals.map(([s, a]) => `${x(s).toFixed(1)},${ya(a).toFixed(1)}`).join(' ') }));
      for (const [s, a] of T.vals) kids.push(node('circle', { class: 'acc-dot', cx: x(s).toFixed(1), cy: ya(a).toFixed(1), r: 3 }));
    }
    const base = T.prep && T.prep.baselines;
    if (base) {
      for (const [cls, score] of [['zero-shot-line', base.zero_shot], ['probe-line', base.linear_probe]]) {
        if (score) kids.push(node('line', { class: `baseline ${cls}`, x1: L, x2: W - R, y1: ya(score.balanced_accuracy).toFixed(1), y2: ya(score.balanced_accuracy).toFixed(1) }));
      }
    }
    svg.replaceChildren(...kids);
    const last = T.vals[T.vals.length - 1];
    title.textContent = `Training loss and validation balanced accuracy: ${T.losses.length} steps${T.losses.length ? `, last loss ${T.losses[T.losses.length - 1][1].toFixed(4)}` : ''}${last ? `, balanced accuracy ${last[1].toFixed(3)} at step ${last[0]}` : ''}`;
  }

  /** The run against its baselines, all on the same validation tiles (never trained on). */
  function baselines() {
    const box = $('#train-baselines');
    const base = T.prep && T.prep.baselines;
    box.hidden = !base;
    if (!base) return;
    const f = (s) => s.balanced_accuracy.toFixed(3);
    const last = T.report ? T.report.balanced_accuracy : T.vals.length ? T.vals[T.vals.length - 1][1] : null;
    const parts = [base.zero_shot && `zero-shot ${f(base.zero_shot)} (the class prompts, no training)`, `linear probe ${f(base.linear_probe)} (a logistic regression on the ${T.prep.train} training tiles' frozen embeddings)`];
    if (last !== null) parts.push(`CLIP-IT ${last.toFixed(3)}${T.report ? '' : ` at step ${T.vals[T.vals.length - 1][0]}`}`);
    let verdict = '';
    if (T.report) {
      const best = Math.max(base.zero_shot ? base.zero_shot.balanced_accuracy : 0, base.linear_probe.balanced_accuracy);
      verdict = last > best + 1e-9 ? ' CLIP-IT beats both baselines here.' : ' A baseline does as well or better here: with few labelled tiles and a small model, the probe on frozen embeddings is hard to beat; more tiles, steps or a stronger CLIP help CLIP-IT.';
    }
    box.textContent = `Balanced accuracy on the ${T.prep.val} validation tiles, which no step trained on: ${parts.join('; ')}.${verdict}`;
  }

  function progress() {
    $('#train-progress').max = Math.max(T.total, 1);
    $('#train-progress').value = T.stepsDone;
    const per = T.stepsDone ? T.runMs / T.stepsDone : 0;
    const left = per * (T.total - T.stepsDone);
    const loss = T.losses.length ? `, loss ${T.losses[T.losses.length - 1][1].toFixed(4)}` : '';
    const acc = T.vals.length ? `, validation balanced accuracy ${T.vals[T.vals.length - 1][1].toFixed(3)}` : '';
    const what = { running: 'Training', paused: 'Paused', stopping: 'Stopping', done: 'Done' }[T.state] || 'Step';
    $('#train-eta').textContent = `${what}: step ${T.stepsDone} of ${T.total}${loss}${acc}${T.state === 'running' && per ? `; about ${fmtMs(left)} left` : ''}.`;
    baselines();
  }

  // ---- the session ----
  async function start() {
    T.state = 'preparing';
    buttons();
    // f16 weights cannot train: the engine restarts with f32 ones first (device.js).
    if (!(await ctx.trainableWeights())) {
      T.state = 'idle';
      buttons();
      return;
    }
    T.state = 'preparing';
    T.error = null;
    T.report = null;
    $('#train-result').hidden = true;
    ckpt.hide();
    buttons();
    try {
      T.prep = await ctx.busy('Preparing training', (onProgress) =>
        call('trainPrepare', { options: options() }, {
          onProgress: (p) => {
            onProgress(p);
            $('#train-eta').textContent = `Preparing: ${STAGES[p.stage] || p.stage} ${p.done}/${p.total}…`;
          },
        }),
      );
    } catch (err) {
      T.state = 'idle';
      T.error = err.message;
      buttons();
      return;
    }
    Object.assign(T, { losses: [], vals: [], stepsDone: 0, total: T.prep.total_steps, chunk: 1, runMs: 0, savedAt: 0, state: 'running' });
    const skipped = T.prep.skipped.length ? ` ${T.prep.skipped.length} unreadable tile(s) left out.` : '';
    setStatus(`Training on ${T.prep.train} tiles, validating on ${T.prep.val}: ${T.total} steps, each tile paired with its most similar of the corpus's reports.${skipped}`);
    chart();
    progress();
    buttons();
    loop();
  }

  async function loop() {
    if (T.looping) return;
    T.looping = true;
    try {
      while (T.state === 'running') {
        const t0 = performance.now();
        const r = await call('trainStep', { n: T.chunk });
        const ms = performance.now() - t0;
        T.runMs += ms;
        T.chunk = Math.max(1, Math.min(T.maxChunk, Math.round((TARGET_MS * Math.max(r.steps.length, 1)) / Math.max(ms, 1))));
        for (const s of r.steps) T.losses.push([s.step, s.loss]);
        for (const v of r.validations) T.vals.push([v.step, v.balanced_accuracy]);
        T.stepsDone = r.steps_done;
        chart();
        progress();
        if (r.done && T.state === 'running') T.state = 'stopping';
        else if (T.stepsDone - T.savedAt >= CHECKPOINT_EVERY) {
          T.savedAt = T.stepsDone;
          await ckpt.save(T, false);
        }
        if (T.afterRequest) await T.afterRequest(T);
      }
    } catch (err) {
      T.state = 'idle';
      T.error = err.message;
      setStatus(`Training failed: ${err.message}`, 'error');
    } finally {
      T.looping = false;
    }
    buttons();
    if (T.state === 'stopping') await finish();
  }

  async function finish() {
    T.state = 'stopping';
    buttons();
    try {
      const bytes = await ckpt.save(T, true); // kept, but not offered after a reload
      const r = await call('trainStop');
      T.report = r.report;
      // The adapter's bytes are kept to put it back if the WebGPU device is lost (device.js).
      app.trained = { classes: r.classes, source: 'trained here', steps: r.steps_done, name: 'clipit-adapter.safetensors', bytes: bytes && bytes.slice().buffer };
      renderConfusion(r.classes, r.report);
      T.state = 'done';
      setStatus(`Training done after ${r.steps_done} steps: validation balanced accuracy ${r.report.balanced_accuracy.toFixed(3)}. The tiles are now classified by the trained model.`);
      adapterInfo();
      if (app.tiles.length) await ctx.classify().catch(() => {});
    } catch (err) {
      T.state = 'idle';
      T.error = err.message;
      setStatus(`Stopping failed: ${err.message}`, 'error');
    }
    progress();
    buttons();
    ctx.updateButtons();
  }

  function renderConfusion(classes, report) {
    const table = $('#train-confusion');
    const head = el('tr', {}, el('th', { scope: 'col', text: 'true ↓ / predicted →' }), ...classes.map((c) => el('th', { scope: 'col', text: c })));
    const rows = report.confusion.map((row, i) => el('tr', {}, el('th', { scope: 'row', text: classes[i] }), ...row.map((n, j) => el('td', { class: i === j ? 'diag' : '', text: String(n) }))));
    table.replaceChildren(el('caption', { class: 'visually-hidden', text: 'Validation confusion matrix: rows are the true classes, columns the predictions' }), el('thead', {}, head), el('tbody', {}, ...rows));
    $('#train-summary').textContent = `${report.n_samples} validation tiles: balanced accuracy ${report.balanced_accuracy.toFixed(3)}, accuracy ${report.accuracy.toFixed(3)}, macro F1 ${report.macro_f1.toFixed(3)}.`;
    $('#train-result').hidden = false;
  }

  function adapterInfo() {
    const t = app.trained;
    $('#adapter-info').textContent = t ? `The Tiles panel uses the classifier ${t.source} (${t.classes.join(', ')}), image encoder only.` : 'The Tiles panel uses zero-shot classification.';
    buttons();
  }

  async function exportAdapter() {
    const bytes = await call('exportAdapter');
    const a = el('a', { href: URL.createObjectURL(new Blob([bytes], { type: 'application/octet-stream' })), download: 'clipit-adapter.safetensors' });
    document.body.append(a);
    a.click();
    a.remove();
    setTimeout(() => URL.revokeObjectURL(a.href), 10000);
    setStatus(`Exported the adapter (${(bytes.length / 1024).toFixed(1)} kB): LoRA factors in peft's layout plus the heads, one safetensors file.`);
  }

  /** Makes an adapter file the classifier; `source` says where it came from. */
  async function importBytes(name, buffer, source) {
    const bytes = buffer.slice(0); // kept, as for a trained adapter
    const info = await call('importAdapter', { name, buffer }, { transfer: [buffer] });
    app.trained = { classes: info.classes, source, name, bytes };
    adapterInfo();
    setStatus(`Imported ${name}: ${info.classes.length} classes, LoRA r ${info.lora_r}, α ${info.lora_alpha}, trained on ${info.architecture}.`);
    ctx.updateButtons();
    if (app.tiles.length) await ctx.classify().catch(() => {});
  }

  async function importAdapter(file) {
    try {
      await importBytes(file.name, await file.arrayBuffer(), `imported from ${file.name}`);
    } catch (err) {
      setStatus(`Could not import ${file.name}: ${err.message}`, 'error');
    }
  }

  async function forget() {
    await call('forgetClassifier');
    app.trained = null;
    adapterInfo();
    ctx.updateButtons();
    if (app.tiles.length && app.model && app.model.has_text) await ctx.classify().catch(() => {});
  }

  // ---- wiring ----
  $('#train-folder').addEventListener('change', (e) => {
    const files = [...e.target.files];
    e.target.value = '';
    if (files.length) setLabelled(files.map((f) => ({ file: f, path: f.webkitRelativePath || f.name })));
  });
  const zone = $('#train-drop');
  for (const type of ['dragover', 'drop']) zone.addEventListener(type, (e) => (e.preventDefault(), e.stopPropagation()));
  zone.addEventListener('drop', async (e) => setLabelled((await ctx.entriesOf(e.dataTransfer)).files));
  zone.addEventListener('keydown', (e) => {
    if ((e.key === 'Enter' || e.key === ' ') && e.target === zone) {
      e.preventDefault();
      $('#train-folder').click();
    }
  });
  $('#train-clear').addEventListener('click', async () => {
    T.items = [];
    T.classes = [];
    await call('setLabelled', { classes: [], items: [] });
    describeData();
    buttons();
  });
  $('#train-start').addEventListener('click', start);
  $('#train-pause').addEventListener('click', () => {
    if (T.state === 'running') T.state = 'paused';
    else if (T.state === 'paused') {
      T.state = 'running';
      loop();
    }
    progress();
    buttons();
  });
  $('#train-stop').addEventListener('click', () => {
    if (T.state === 'paused') finish();
    else if (T.state === 'running') T.state = 'stopping';
    buttons();
  });
  $('#adapter-export').addEventListener('click', () => exportAdapter().catch((err) => setStatus(`Export failed: ${err.message}`, 'error')));
  $('#adapter-file').addEventListener('change', (e) => {
    const file = e.target.files[0];
    e.target.value = '';
    if (file) importAdapter(file);
  });
  $('#adapter-forget').addEventListener('click', () => forget().catch(() => {}));
  chart();
  const ckpt = initCheckpoints(ctx, { importBytes });

  const api = {
    setLabelled,
    importBytes,
    resend: () => (T.items.length ? resend() : Promise.resolve()),
    // A new model (or corpus) ends any session: the worker dropped it with the old model.
    onModelChanged() {
      if (['running', 'paused', 'stopping', 'preparing'].includes(T.state) && !app.model) T.state = 'idle';
      adapterInfo();
      if (app.model) ckpt.offer();
      else ckpt.hide();
    },
  };
  app.trainPanel = api;
  return api;
}
