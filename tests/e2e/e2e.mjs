// End-to-end test of the page in headless Chromium (Debian's /usr/bin/chromium, driven by
// playwright-core). Run through run.sh, which builds everything and computes the native
// references. For each scenario (WebGPU through SwiftShader; the CPU fallback when the browser
// offers no WebGPU) it:
//   - serves www/ + pkg/ on 127.0.0.1 and records every request, failing on any other host;
//   - on WebGPU, micro-batches open_clip as if the adapter's buffers held 100 kB (?batch_limit=),
//     forces its warm-up (?warmup=always; skipped by default on SwiftShader, a software adapter),
//     and checks "warming up…" and the batch sizes in the Model panel;
//   - loads tests/fixtures/open_clip through the folder picker, sets the classes and templates,
//     drops tests/data/tiles on the page, picks the report corpus, and checks the exported CSV's
//     probabilities and the retrieved reports against the native CLI (1e-3);
//   - loads tests/fixtures/conch through the multiple-file picker and checks it the same way;
//   - drops tests/fixtures/hf_clip_gelu (float16 weights) on the model panel and checks it;
//   - loads a vision-only timm ViT and checks that zero-shot is disabled;
//   - opens a tile's detail view and saves screenshots in $E2E_OUT (default /tmp);
//   - opens tests/data/slides/cmu_small_region.svs in the Slide map panel, checks the tile count
//     and tiles.csv against the native `clipit map`, the GeoJSON and PNG downloads, a tile's
//     probabilities and its most similar report (against `clipit map --reports`), keyboard zoom,
//     and screenshots the panel;
//   - then, on a fresh page: auto-loads the demo bundle ($E2E_DEMO, served at /demo/), picks the
//     labelled folder, trains a few CLIP-IT steps with a pause in the middle, checks the chart and
//     the confusion matrix, exports the adapter, checks the page's trained predictions against
//     the native library's for that file (examples/adapter_predict, 1e-3), imports it back, and
//     screenshots every panel at 1280×800 and at phone width;
//   - on WebGPU, device_lost.mjs: the device lost under the demo (a test hook destroys it), the
//     page goes on on the CPU with the same results; f32 weights on SwiftShader, ?dtype=f16 refused;
//   - on the CPU ($E2E_HARDENING, default cpu), hardening.mjs: a training's checkpoint survives a
//     reload and is offered, resumed or discarded; bad tiles and bad models get clear errors;
//   - on the CPU, the committed demo bundle with the default server, the "How it works" map, loading
//     from a URL and the model cache (demo.mjs).
// Shared helpers are in lib.mjs.
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { CLASSES, OUT, REF, ROOT, STEP_TIMEOUT, TOL, TOP_K, check, cliPairs, cliProbs, compareHits, compareProbs, compareTrained, dropItems, exportCsv, holdLoop, idle, log, nativePredictions, openBrowser, parseCsv, release, result, SCENARIOS, startServer, waitHeld } from './lib.mjs';
import { runRealDemo } from './demo.mjs';
import { runHardening } from './hardening.mjs';
import { runDeviceLost } from './device_lost.mjs';
import { runDist } from './dist.mjs';

const TILES = path.join(ROOT, 'tests/data/tiles');
const CORPUS = path.join(ROOT, 'data/reports/demo_reports.jsonl');
const TEMPLATES = fs.readFileSync(path.join(REF, 'templates.txt'), 'utf8').trim().split('\n');
const ONLY = (process.env.E2E_SCENARIOS || 'webgpu,cpu').split(',');
const DEMO = process.env.E2E_DEMO; // a demo bundle folder (run.sh builds one from the fixtures)
const SLIDE = path.join(ROOT, 'tests/data/slides/cmu_small_region.svs');
// The scenarios that run hardening.mjs (training across a reload, bad tiles and models).
const HARDENING = (process.env.E2E_HARDENING || 'cpu').split(',');

// The buffer limit the WebGPU scenario batches under (the page's ?batch_limit= test hook).
const BATCH_LIMIT = 100000;


// Drops every file of `dir` on a drop zone (as files: a synthetic drop carries no folders).
async function dropFiles(page, selector, dir) {
  const files = fs.readdirSync(dir).sort();
  return dropItems(page, selector, files.map((f) => ({ name: f, bytes: fs.readFileSync(path.join(dir, f)) })));
}

// The Slide map panel on the CMU slide with the loaded model, against the native `clipit map`
// (run.sh writes $REF/map_summary.json and $REF/map/tiles.csv with the same classes and templates).
async function checkSlideMap(page, sc, timings) {
  const ref = JSON.parse(fs.readFileSync(path.join(REF, 'map_summary.json'), 'utf8'));
  await page.fill('#map-tile', String(ref.tile_size));
  const t0 = Date.now();
  await page.setInputFiles('#map-file', SLIDE);
  await page.waitForFunction(() => ['done', 'error', 'cancelled'].includes(window.clipitApp.map.state), null, { timeout: STEP_TIMEOUT, polling: 200 });
  timings.slide_map_ms = Date.now() - t0;
  const m = await page.evaluate(() => {
    const M = window.clipitApp.map;
    return { state: M.state, error: M.error, total: M.total, n: M.records.length, info: M.info, elapsed: M.elapsedMs };
  });
  timings.slide_map_classify_ms = m.elapsed;
  check(m.state === 'done', `the slide map finished (${m.error || m.state}) in ${timings.slide_map_ms} ms`);
  check(m.info && m.info.width === ref.width && m.info.height === ref.height, `the page reads the slide as ${m.info && m.info.width}x${m.info && m.info.height} (CLI ${ref.width}x${ref.height})`);
  check(m.n === ref.tiles && m.total === ref.tiles, `the page mapped ${m.n} tiles, the native clipit map ${ref.tiles}`);
  if (m.state !== 'done') return;

  const save = async (sel) => {
    const [d] = await Promise.all([page.waitForEvent('download'), page.click(sel)]);
    return { name: d.suggestedFilename(), bytes: fs.readFileSync(await d.path()) };
  };
  const csv = await save('#map-csv');
  const want = new Map(parseCsv(fs.readFileSync(path.join(REF, 'map/tiles.csv'), 'utf8')).map((r) => [`${r.x},${r.y}`, r]));
  const rows = parseCsv(csv.bytes.toString('utf8'));
  let maxDiff = 0;
  let matched = 0;
  for (const r of rows) {
    const w = want.get(`${r.x},${r.y}`);
    if (!w) continue;
    matched++;
    for (const c of CLASSES) maxDiff = Math.max(maxDiff, Math.abs(Number(r[c]) - Number(w[c])));
  }
  check(csv.name === 'tiles.csv' && rows.length === ref.tiles && matched === ref.tiles, `tiles.csv has the CLI's ${ref.tiles} tiles at the same positions (${matched} matched)`);
  check(maxDiff <= TOL, `slide map probabilities match the CLI (max |diff| ${maxDiff.toExponential(2)} <= ${TOL})`);
  const geo = await save('#map-geojson');
  const fc = JSON.parse(geo.bytes.toString('utf8'));
  check(geo.name === 'tiles.geojson' && fc.type === 'FeatureCollection' && fc.features.length === ref.tiles && fc.features[0].properties.classification.name, `tiles.geojson is a FeatureCollection of ${fc.features.length} classified tiles`);
  const png = await save('#map-png');
  check(png.name === 'overlay.png' && png.bytes.subarray(0, 4).toString('latin1') === '\x89PNG', `overlay.png is a PNG (${png.bytes.length} bytes)`);

  // Click the first tile's centre; then zoom with the keyboard.
  await page.locator('#map-canvas').scrollIntoViewIfNeeded();
  const box = await page.locator('#map-canvas').boundingBox();
  const at = await page.evaluate(() => {
    const M = window.clipitApp.map;
    const r = M.records[0];
    const [sx, sy] = M.info.overview.scale;
    return { x: ((r.x + r.w / 2) / sx) * M.view.s + M.view.ox, y: ((r.y + r.h / 2) / sy) * M.view.s + M.view.oy };
  });
  await page.mouse.click(box.x + at.x, box.y + at.y);
  check((await page.locator('#map-tile-info tbody tr').count()) === CLASSES.length, 'clicking a tile shows its probability for every class');
  await checkTileReport(page, want);
  check((await page.locator('#map-legend li').count()) === CLASSES.length, 'the legend lists every class');
  const s0 = await page.evaluate(() => window.clipitApp.map.view.s);
  await page.focus('#map-canvas');
  await page.keyboard.press('+');
  check((await page.evaluate(() => window.clipitApp.map.view.s)) > s0, 'the + key zooms the map in');
  await page.keyboard.press('0');

  // Map again one tile per request, held after the first tile (a test hook, so the Cancel lands
  // mid-way on any machine speed), and cancel it there; then the downloads are off.
  await page.evaluate(() => (window.clipitApp.map.maxChunk = 1));
  await holdLoop(page, 'map', { tiles: 1 });
  await page.click('#map-run');
  const mapError = await waitHeld(page, 'map');
  check(!mapError, `the map is held after its first tile${mapError ? ` (${mapError})` : ''}`);
  await page.click('#map-cancel'); // as a user would, between two requests
  await release(page, 'map');
  await page.waitForFunction(() => window.clipitApp.map.state !== 'running', null, { timeout: STEP_TIMEOUT });
  const c = await page.evaluate(() => ({ state: window.clipitApp.map.state, done: window.clipitApp.map.done, total: window.clipitApp.map.total }));
  check(c.state === 'cancelled' && c.done < c.total, `Cancel stops the map after ${c.done} of ${c.total} tiles`);
  check(await page.isDisabled('#map-csv'), 'the downloads are off for a cancelled map');
  await page.evaluate(() => (window.clipitApp.map.maxChunk = 256));
  await page.click('#map-run');
  await page.waitForFunction(() => window.clipitApp.map.state === 'done', null, { timeout: STEP_TIMEOUT });
  await page.locator('#slidemap').screenshot({ path: path.join(OUT, `clipit-e2e-${sc.name}-slidemap.png`) });
}


// The clicked tile's most similar report (computed in the worker on the click), against the
// report_id and report_score columns of the native `clipit map --reports` tiles.csv (`want`:
// "x,y" -> row).
async function checkTileReport(page, want) {
  await page.waitForFunction(() => ['done', 'error', 'none'].includes((window.clipitApp.map.report || {}).state), null, { timeout: STEP_TIMEOUT, polling: 200 });
  const got = await page.evaluate(() => {
    const M = window.clipitApp.map;
    const r = M.records[M.selected];
    const shown = document.querySelector('#map-tile-report [data-report-id]');
    return { report: M.report, x: r.x, y: r.y, shown: shown && shown.dataset.reportId, text: document.querySelector('#map-tile-report').textContent };
  });
  const w = want.get(`${got.x},${got.y}`);
  check(got.report.state === 'done', `clicking a tile finds its most similar report (${got.report.error || got.report.state})`);
  if (got.report.state !== 'done' || !w) return check(Boolean(w), `the native tiles.csv has the clicked tile (${got.x}, ${got.y})`);
  check(got.shown === String(w.report_id) && got.report.hit.id === got.shown, `the panel shows report ${got.shown} for tile (${got.x}, ${got.y}), the native clipit map --reports ${w.report_id}`);
  const diff = Math.abs(got.report.hit.score - Number(w.report_score));
  check(diff <= TOL && got.text.includes(got.report.hit.text), `its score ${got.report.hit.score.toFixed(4)} matches the CLI's ${Number(w.report_score).toFixed(4)} (|diff| ${diff.toExponential(2)}), and its text is shown`);
}

async function runScenario(sc, port) {
  log(`\n== scenario ${sc.name} (expects ${sc.expect})`);
  const { page, origin, close } = await openBrowser(sc, port);
  const timings = {};
  try {
    // On WebGPU, micro-batching is on (as if the adapter's buffers held 100 kB), so every
    // comparison below also checks results computed in smaller batches.
    // The warm-up is forced for open_clip: SwiftShader is a software adapter, where it is skipped.
    if (sc.expect === 'webgpu') {
      // SwiftShader is a software adapter: "Auto" runs the CPU engine there and says why.
      await page.goto(`${origin}/?demo=0`);
      await page.waitForFunction(() => document.body.dataset.ready, null, { timeout: 120000 });
      const auto = await page.evaluate(() => window.clipitApp.backend);
      check(auto.backend === 'cpu' && /only WebGPU adapter is a software one \(SwiftShader\)/.test(auto.reason || ''), `"Auto" runs the CPU on a software adapter: ${auto.backend}, ${auto.reason}`);
      check(/CPU/.test(await page.textContent('#backend-badge')), 'the badge shows the CPU');
    }
    // On WebGPU the test chooses it (?backend=webgpu), as a user would under "Compute on".
    await page.goto(`${origin}/?demo=0${sc.expect === 'webgpu' ? `&backend=webgpu&batch_limit=${BATCH_LIMIT}&warmup=always` : ''}`);
    await page.waitForFunction(() => document.body.dataset.ready, null, { timeout: 120000 });
    const backend = await page.evaluate(() => window.clipitApp.backend);
    log(`  backend: ${JSON.stringify({ backend: backend.backend, reason: backend.reason, gpu: backend.gpu })}`);
    // Every status the page shows while the model loads ("warming up…" on WebGPU).
    await page.evaluate(() => {
      window.__statuses = [];
      new MutationObserver(() => window.__statuses.push(document.querySelector('#status').textContent)).observe(document.querySelector('#status'), { childList: true, characterData: true, subtree: true });
    });
    check(backend.backend === sc.expect, `init chose ${backend.backend}`);
    if (sc.expect === 'cpu') check(Boolean(backend.reason), `the page says why it uses the CPU: ${backend.reason}`);
    if (sc.expect === 'cpu') check(/CPU/.test(await page.textContent('#backend-badge')), 'the badge shows the CPU');
    // The CPU runs the multithreaded engine (pkg/mt/: the page is cross-origin isolated), on every core.
    const cores = os.cpus().length;
    if (sc.expect === 'cpu') check(backend.engine === 'mt' && backend.cpu_threads >= Math.min(2, cores), `the CPU runs the multithreaded engine (${backend.engine}, ${backend.cpu_threads} threads${backend.engine_note ? `; ${backend.engine_note}` : ''})`);
    else check(backend.engine === 'main', `WebGPU runs the main engine (${backend.engine})`);

    // open_clip, through the folder picker; classes and templates set before the tiles arrive.
    await page.fill('#classes', CLASSES.join('\n'));
    await page.click('#zeroshot summary'); // opens the templates
    await page.fill('#templates', TEMPLATES.join('\n'));
    await page.setInputFiles('#model-folder', path.join(ROOT, 'tests/fixtures/open_clip'));
    await page.waitForFunction(() => window.clipitApp.model, null, { timeout: STEP_TIMEOUT });
    await idle(page, 'load open_clip');
    const m1 = await page.evaluate(() => window.clipitApp.model);
    check(m1.architecture === 'open_clip CLIP' && m1.backend === sc.expect, `open_clip loaded: ${m1.architecture}, ${m1.parameters} parameters, on ${m1.backend} in ${m1.load_ms.toFixed(0)} ms`);
    check((await page.textContent('#model-info')).includes('open_clip CLIP'), 'the model panel shows the architecture');
    timings.open_clip_load_ms = m1.load_ms;
    if (sc.expect === 'webgpu') {
      timings.open_clip_warmup_ms = m1.warmup_ms;
      const warming = await page.evaluate(() => window.__statuses.some((t) => t.includes('warming up')));
      check(typeof m1.warmup_ms === 'number' && warming, `the model warms up while loading ("warming up…", ${Math.round(m1.warmup_ms)} ms)`);
      await page.evaluate(() => (window.clipitApp.warmUp = 'auto'));
      // open_clip fixture: 13 kB of activations per image, 49 kB per text (item_activation_bytes).
      check(m1.image_batch === 7 && m1.text_batch === 2 && /micro-batches/.test(await page.textContent('#model-info')), `under a ${BATCH_LIMIT}-byte buffer limit the model runs ${m1.image_batch} images and ${m1.text_batch} texts per pass, and the Model panel says so`);
    } else {
      check(m1.warmup_ms === null && m1.image_batch === 16 && !m1.batch_note, 'on the CPU there is no warm-up and no micro-batching');
    }

    const n = await dropFiles(page, '#tile-drop', TILES);
    await page.waitForFunction((n) => window.clipitApp.tiles.length === n, n, { timeout: 60000 });
    await idle(page, 'drop tiles + first classification');
    timings.open_clip_first_classify_ms = await page.evaluate(() => window.clipitApp.timings.classify);
    check((await page.locator('#grid li').count()) === n, `the grid shows ${n} tiles`);

    await page.setInputFiles('#corpus-file', CORPUS);
    await page.fill('#topk', String(TOP_K));
    await page.waitForFunction(() => window.clipitApp.corpus, null, { timeout: 10000 });
    await page.click('#classify');
    await idle(page, 'classify again + retrieve');
    timings.open_clip_classify_cached_ms = await page.evaluate(() => window.clipitApp.timings.classify);
    timings.open_clip_retrieve_ms = await page.evaluate(() => window.clipitApp.timings.retrieve);
    const csv1 = await exportCsv(page);
    compareProbs(csv1, cliProbs(path.join(REF, 'open_clip.csv')), 'open_clip zero-shot');
    await compareHits(page, cliPairs(path.join(REF, 'open_clip_pairs.jsonl')), 'open_clip retrieval');
    await checkSlideMap(page, sc, timings);

    // Sorting and filtering.
    await page.selectOption('#sort', 'conf-desc');
    const confs = await page.$$eval('#grid .tile-conf', (els) => els.map((e) => parseFloat(e.textContent)));
    check(confs.every((c, i) => i === 0 || confs[i - 1] >= c), 'sorting by confidence orders the grid');
    const firstClass = csv1[0].prediction;
    await page.selectOption('#filter-class', firstClass);
    const shown = await page.$$eval('#grid .tile-pred', (els) => els.map((e) => e.textContent));
    check(shown.length > 0 && shown.every((c) => c === firstClass), `filtering by "${firstClass}" shows only that class (${shown.length})`);
    await page.selectOption('#filter-class', '');
    await page.screenshot({ path: path.join(OUT, `clipit-e2e-${sc.name}.png`), fullPage: true });

    await page.click('#grid li:first-child button');
    await page.waitForSelector('#detail[open]');
    check((await page.locator('#detail-probs tbody tr').count()) === CLASSES.length, 'the detail view lists every class');
    check((await page.locator('#detail-reports li').count()) === TOP_K, `the detail view shows ${TOP_K} reports`);
    await page.screenshot({ path: path.join(OUT, `clipit-e2e-${sc.name}-detail.png`) });
    await page.click('#detail-close');

    // CONCH, through the multiple-file picker, with the built-in templates (and the adapter's
    // own buffer limits again: SwiftShader holds the page's whole batches).
    if (sc.expect === 'webgpu') await page.evaluate(() => window.clipitApp.call('setBatchLimit', { bytes: 0 }));
    await page.click('#reset-templates');
    const conchDir = path.join(ROOT, 'tests/fixtures/conch');
    await page.setInputFiles('#model-files', fs.readdirSync(conchDir).map((f) => path.join(conchDir, f)));
    await page.waitForFunction(() => window.clipitApp.model && window.clipitApp.model.architecture === 'CONCH', null, { timeout: STEP_TIMEOUT });
    await idle(page, 'load CONCH + classify + retrieve');
    const m2 = await page.evaluate(() => window.clipitApp.model);
    check(m2.image_batch === 16 && m2.text_batch === 32, `without the test limit CONCH runs the page's batches (${m2.image_batch} images, ${m2.text_batch} texts)`);
    if (sc.expect === 'webgpu') check(m2.warmup_ms === null && /software adapter/.test(m2.warmup_note), `on a software adapter the warm-up is skipped: ${m2.warmup_note}`);
    timings.conch_load_ms = m2.load_ms;
    timings.conch_warmup_ms = m2.warmup_ms;
    timings.conch_classify_ms = await page.evaluate(() => window.clipitApp.timings.classify);
    const csv2 = await exportCsv(page);
    compareProbs(csv2, cliProbs(path.join(REF, 'conch.csv')), 'CONCH zero-shot');
    await compareHits(page, cliPairs(path.join(REF, 'conch_pairs.jsonl')), 'CONCH retrieval');

    // A Hugging Face CLIPModel with float16 weights, dropped on the model panel as files.
    await dropFiles(page, '#model-drop', path.join(ROOT, 'tests/fixtures/hf_clip_gelu'));
    await page.waitForFunction(() => window.clipitApp.model && window.clipitApp.model.architecture === 'Hugging Face CLIPModel', null, { timeout: STEP_TIMEOUT });
    await idle(page, 'drop a Hugging Face CLIP + classify + retrieve');
    timings.hf_clip_classify_ms = await page.evaluate(() => window.clipitApp.timings.classify);
    timings.hf_clip_warmup_ms = await page.evaluate(() => window.clipitApp.model.warmup_ms);
    compareProbs(await exportCsv(page), cliProbs(path.join(REF, 'hf_clip.csv')), 'HF CLIP (f16) zero-shot');

    // A vision-only timm backbone: it loads, and the page says it cannot classify zero-shot.
    const timmDir = path.join(ROOT, 'tests/fixtures/timm_vit_small');
    await page.setInputFiles('#model-files', fs.readdirSync(timmDir).map((f) => path.join(timmDir, f)));
    await page.waitForFunction(() => window.clipitApp.model && window.clipitApp.model.architecture === 'timm ViT', null, { timeout: STEP_TIMEOUT });
    await idle(page, 'load a timm ViT');
    check(await page.isDisabled('#classify'), 'zero-shot is disabled for a model without a text encoder');
    check((await page.textContent('#model-info')).includes('image features only'), 'the model panel says it has no text encoder');
  } finally {
    await close();
  }
  log(`  timings (${sc.name}): ${JSON.stringify(Object.fromEntries(Object.entries(timings).map(([k, v]) => [k, Math.round(v)])))}`);
  return timings;
}

async function trainingState(page) {
  return page.evaluate(() => {
    const t = window.clipitApp.train;
    return { state: t.state, stepsDone: t.stepsDone, total: t.total, losses: t.losses, vals: t.vals, prep: t.prep, error: t.error, items: t.items.length, classes: t.classes };
  });
}

async function runTraining(sc, port) {
  log(`\n== scenario ${sc.name}: demo bundle, training, adapter export and import`);
  const { page, origin, close } = await openBrowser(sc, port, { width: 1280, height: 800 });
  const timings = {};
  const shot = (name) => path.join(OUT, `clipit-e2e-${sc.name}-${name}.png`);
  try {
    await page.goto(`${origin}/${sc.expect === 'webgpu' ? '?backend=webgpu' : ''}`);
    await page.waitForFunction(() => document.body.dataset.demo, null, { timeout: STEP_TIMEOUT });
    await idle(page, 'the demo bundle loads on open and classifies its tiles');
    const m = await page.evaluate(() => window.clipitApp.model);
    check(m && m.name === 'Demo model' && m.backend === sc.expect, `the demo model is loaded on ${m && m.backend}`);
    check(await page.isVisible('#load-demo'), 'the page offers "Load the demo model"');
    check((await page.textContent('#demo-box')).includes('Demo model'), 'the demo is labelled "Demo model"');
    const classes = fs.readdirSync(path.join(DEMO, 'tiles')).sort();
    const nTiles = classes.reduce((n, c) => n + fs.readdirSync(path.join(DEMO, 'tiles', c)).length, 0);
    let st = await trainingState(page);
    check(st.items === nTiles && st.classes.join() === classes.join(), `the demo's ${nTiles} labelled tiles are in the Train panel (${st.classes.join(', ')})`);

    // The labelled folder picker gives the same data.
    await page.setInputFiles('#train-folder', path.join(DEMO, 'tiles'));
    await page.waitForFunction((n) => window.clipitApp.train.items.length === n, nTiles, { timeout: 30000 });
    check((await page.textContent('#train-data')).includes(`${nTiles} labelled tiles in ${classes.length} classes`), 'the labelled folder picker reads one class per sub-folder');

    for (const [id, v] of Object.entries({ '#hp-epochs': 3, '#hp-batch': 4, '#hp-lr': 0.01, '#hp-val-every': 2 })) await page.fill(id, String(v));
    // One step per request, held after step 1 (a test hook), so the Pause lands mid-way on any machine speed.
    await page.evaluate(() => (window.clipitApp.train.maxChunk = 1));
    await holdLoop(page, 'train', { steps: 1 });
    const t0 = Date.now();
    await page.click('#train-start');
    const trainError = await waitHeld(page, 'train');
    check(!trainError, `the training is held after its first step${trainError ? ` (${trainError})` : ''}`);
    await page.click('#train-pause');
    await release(page, 'train');
    await page.waitForFunction(() => window.clipitApp.train.state === 'paused' && !window.clipitApp.train.looping, null, { timeout: STEP_TIMEOUT });
    const paused = (await trainingState(page)).stepsDone;
    await page.waitForTimeout(1500);
    st = await trainingState(page);
    check(st.state === 'paused' && st.stepsDone === paused && paused === 1 && paused < st.total, `Pause holds the session at step ${paused} of ${st.total}`);
    check((await page.textContent('#train-pause')) === 'Resume', 'the Pause button turns into Resume');
    await page.click('#train-pause');
    await page.waitForFunction(() => ['done', 'idle'].includes(window.clipitApp.train.state), null, { timeout: STEP_TIMEOUT });
    timings.train_ms = Date.now() - t0;
    st = await trainingState(page);
    check(st.state === 'done' && !st.error, `training finished (${st.error || st.state}) in ${timings.train_ms} ms`);
    check(st.stepsDone === st.total && st.losses.length === st.total && st.losses.every(([, l]) => Number.isFinite(l)), `${st.losses.length} finite losses for ${st.total} steps`);
    check(st.vals.length >= 2 && st.vals.every(([, a]) => a >= 0 && a <= 1), `${st.vals.length} validations charted`);
    check((await page.locator('#train-chart polyline.loss-line').count()) === 1, 'the chart draws the loss');
    const confusion = await page.$$eval('#train-confusion tbody tr', (rows) => rows.map((r) => [...r.querySelectorAll('td')].map((td) => Number(td.textContent))));
    const cells = confusion.flat().reduce((a, b) => a + b, 0);
    check(confusion.length === classes.length && cells === st.prep.val, `the confusion matrix is ${confusion.length}×${classes.length} over ${cells} validation tiles`);
    await idle(page, 'the tiles are classified by the trained model');
    check(/trained/.test(await page.textContent('#adapter-info')), 'the Train panel says the trained model classifies the tiles');

    // Export the adapter; the native library must read it and predict what the page predicts.
    const [download] = await Promise.all([page.waitForEvent('download'), page.click('#adapter-export')]);
    const adapter = path.join(OUT, `clipit-adapter-${sc.name}.safetensors`);
    await download.saveAs(adapter);
    check(fs.statSync(adapter).size > 0 && download.suggestedFilename().endsWith('.safetensors'), `exported ${download.suggestedFilename()} (${fs.statSync(adapter).size} bytes)`);
    const native = nativePredictions(adapter);
    check(native.classes.join() === classes.join(), 'the native library reads the exported adapter');
    compareTrained(await exportCsv(page), native, 'trained (exported adapter)');
    for (const [name, sel] of Object.entries({ model: '#model', tiles: '#tiles', train: '#train', how: '#how' })) await page.locator(sel).screenshot({ path: shot(name) });

    // Back to zero-shot, then import the file again.
    await page.click('#adapter-forget');
    await page.waitForFunction(() => !window.clipitApp.trained, null, { timeout: 30000 });
    await idle(page, 'back to zero-shot');
    await page.setInputFiles('#adapter-file', adapter);
    await page.waitForFunction(() => window.clipitApp.trained, null, { timeout: STEP_TIMEOUT });
    await idle(page, 'import the adapter + classify');
    compareTrained(await exportCsv(page), native, 'trained (imported adapter)');

    await page.setViewportSize({ width: 390, height: 844 });
    await page.screenshot({ path: shot('phone'), fullPage: true });
    const overflow = await page.evaluate(() => document.documentElement.scrollWidth - window.innerWidth);
    check(overflow <= 1, `no horizontal scrolling at phone width (${overflow} px)`);
  } finally {
    await close();
  }
  return timings;
}

// The server: MIME types and the Content-Security-Policy.
async function checkServer(port) {
  log('\n== server');
  const base = `http://127.0.0.1:${port}`;
  const want = { '/': 'text/html', '/app.js': 'text/javascript', '/worker.js': 'text/javascript', '/style.css': 'text/css', '/pkg/clipit.js': 'text/javascript', '/pkg/clipit_bg.wasm': 'application/wasm' };
  for (const [url, type] of Object.entries(want)) {
    const r = await fetch(base + url, { method: 'HEAD' });
    check(r.status === 200 && (r.headers.get('content-type') || '').startsWith(type), `${url} is served as ${type}`);
  }
  const csp = (await fetch(`${base}/`, { method: 'HEAD' })).headers.get('content-security-policy') || '';
  check(/default-src 'self'/.test(csp) && /'wasm-unsafe-eval'/.test(csp), `the page has a Content-Security-Policy: ${csp}`);
  check((await fetch(`${base}/serve.py`, { method: 'HEAD' })).status === 404, 'files of other types are not served');
  const outside = await Promise.all(['/../Cargo.toml', '/pkg/..%2f..%2fCargo.toml', '/%2e%2e/build.sh'].map((u) => fetch(base + u, { method: 'HEAD' })));
  check(outside.every((r) => r.status === 404), 'nothing outside www/ and pkg/ is served');
}

const { proc, port } = await startServer(DEMO ? ['--demo', DEMO] : []);
const all = {};
try {
  await checkServer(port);
  for (const sc of SCENARIOS.filter((s) => ONLY.includes(s.name))) {
    try {
      all[sc.name] = await runScenario(sc, port);
      if (DEMO) Object.assign(all[sc.name], await runTraining(sc, port));
      if (DEMO && HARDENING.includes(sc.name)) Object.assign(all[sc.name], await runHardening(sc, port));
      // WebGPU lost under the page: the CPU takes over; ?dtype=f16 without shader-f16 is refused.
      if (DEMO && sc.name === 'webgpu') Object.assign(all[sc.name], await runDeviceLost(sc, port));
      // The committed demo bundle with the default server: on the CPU only (the fastest).
      if (sc.name === 'cpu') Object.assign(all[sc.name], await runRealDemo(sc, SLIDE));
      // dist/ as a static host serves it (run.sh writes it; E2E_DIST_SITE).
      if (sc.name === 'cpu' && process.env.E2E_DIST_SITE) Object.assign(all[sc.name], await runDist(sc, SLIDE, all[sc.name].real_demo_open_ms));
    } catch (err) {
      result.failures++;
      log(`  FAIL scenario ${sc.name}: ${err.stack || err}`);
    }
  }
} finally {
  proc.kill();
}
fs.writeFileSync(path.join(OUT, 'clipit-e2e-timings.json'), JSON.stringify(all, null, 2));
log(result.failures ? `\n${result.failures} check(s) failed` : '\nall end-to-end checks passed');
process.exit(result.failures ? 1 : 0);
