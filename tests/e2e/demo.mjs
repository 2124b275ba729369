// The real demo bundle (data/demo/, as `./build.sh serve` serves it) end to end, on one backend:
//   - the page opened with the default server auto-loads it and classifies its tiles, with the
//     same probabilities as `clipit zero-shot` on the bundle (run.sh: $REF/real_demo.csv, the
//     classes in the page's order) and the same top-1 reports as `clipit retrieve` (1e-3);
//   - the "How it works" map: every tile and report drawn, each tile joined to its report, the
//     pipeline's live numbers, keyboard selection;
//   - "Load from a URL": a model on another origin is blocked with a clear error unless the server
//     allows that origin (serve.py --allow-origin), and then loads; the model cache keeps it
//     across a reload, loads it without a download, and deletes it;
//   - a short training and a slide map, for the screenshots: every panel at 1280×800 as
//     $E2E_OUT/clipit-demo-<panel>.png (scripts/readme_screenshots.py makes the README's).
import http from 'node:http';
import fs from 'node:fs';
import path from 'node:path';
import { OUT, REF, ROOT, STEP_TIMEOUT, TOL, check, cliProbs, compareProbs, exportCsv, idle, log, openBrowser, startServer } from './lib.mjs';

const BUNDLE = path.join(ROOT, 'data/demo');
const FIXTURE = path.join(ROOT, 'tests/fixtures/open_clip');

// A second origin holding a model folder, with CORS, as a model host would be.
async function modelHost() {
  const server = http.createServer((req, res) => {
    const name = path.basename(decodeURIComponent(new URL(req.url, 'http://x').pathname));
    const file = path.join(FIXTURE, name);
    const ok = req.url.startsWith('/open_clip/') && fs.existsSync(file);
    res.writeHead(ok ? 200 : 404, { 'Access-Control-Allow-Origin': '*', 'Content-Type': 'application/octet-stream' });
    res.end(ok ? fs.readFileSync(file) : 'not found');
  });
  await new Promise((resolve) => server.listen(0, '127.0.0.1', resolve));
  return { server, port: server.address().port };
}

async function demoLoaded(page, what) {
  await page.waitForFunction(() => document.body.dataset.demo && window.clipitApp.how.state !== 'running', null, { timeout: STEP_TIMEOUT, polling: 200 });
  await idle(page, what);
}

async function checkHowMap(page, nTiles) {
  await page.waitForFunction(() => ['done', 'error'].includes(window.clipitApp.how.state), null, { timeout: STEP_TIMEOUT });
  const how = await page.evaluate(() => window.clipitApp.how);
  const m = how.map;
  check(how.state === 'done' && m, `the "How it works" map is drawn (${how.error || how.state})`);
  if (!m) return null;
  const reports = fs.readFileSync(path.join(BUNDLE, 'reports.jsonl'), 'utf8').trim().split('\n').length;
  check(m.tiles.length === nTiles && m.reports.length === reports, `it places ${m.tiles.length} tiles and ${m.reports.length} reports (${nTiles}, ${reports})`);
  const counts = await page.evaluate(() => ['circle', 'path', 'line'].map((t) => document.querySelectorAll(`#how-map ${t}`).length));
  check(counts.join() === [nTiles, reports, nTiles].join(), `the SVG has a dot per tile, a marker per report and a line per tile (${counts.join(', ')})`);
  check(m.explained[0] >= m.explained[1] && m.explained[1] > 0 && m.explained[0] + m.explained[1] <= 1 + 1e-6, `the axes hold ${m.explained.map((e) => e.toFixed(3)).join(' and ')} of the variance`);
  const step = await page.textContent('#how-step-retrieval');
  check(step.includes(`${nTiles} tiles × ${reports} reports`) && step.includes(m.mean_top1.toFixed(3)), `the retrieval step shows live numbers: ${step}`);
  await page.focus('#how-map');
  await page.keyboard.press('ArrowRight');
  const first = await page.evaluate(() => window.clipitApp.tiles.find((t) => t.id === window.clipitApp.how.map.tiles[0].name).name);
  check((await page.textContent('#how-tile')).startsWith(first), 'the arrow keys select a tile and name its report');
  return m;
}

// The map's tile → report joins against `clipit retrieve --top-k 1` on the bundle.
async function checkJoins(page, m) {
  const want = new Map();
  for (const line of fs.readFileSync(path.join(REF, 'real_demo_pairs.jsonl'), 'utf8').split('\n').filter(Boolean)) {
    const p = JSON.parse(line);
    want.set(path.basename(p.image), p);
  }
  const names = await page.evaluate(() => Object.fromEntries(window.clipitApp.tiles.map((t) => [t.id, t.name])));
  let maxDiff = 0;
  let same = 0;
  for (const t of m.tiles) {
    const w = want.get(path.basename(names[t.name]));
    if (!w) continue;
    maxDiff = Math.max(maxDiff, Math.abs(t.score - w.score));
    if (m.reports[t.report].id === String(w.report_id) || Math.abs(t.score - w.score) <= TOL) same++;
  }
  check(same === want.size && m.tiles.length === want.size, `each tile is joined to the report clipit retrieve pairs it with (${same} of ${want.size})`);
  check(maxDiff <= TOL, `the joins' cosines match the CLI (max |diff| ${maxDiff.toExponential(2)})`);
}

async function loadFromUrl(page, url, files) {
  await page.click('#model-url-box summary');
  await page.fill('#model-url', url);
  await page.fill('#model-url-files', files);
  await page.click('#model-url-load');
  await page.waitForFunction(() => window.clipitApp.busy === 0 && document.body.dataset.busy === '0', null, { timeout: STEP_TIMEOUT });
  await page.click('#model-url-box summary'); // closed again
  return { status: await page.textContent('#status'), kind: await page.getAttribute('#status', 'data-kind') };
}

async function checkUrlAndCache(page, host, reload) {
  // Blocked: localhost is another origin than 127.0.0.1, and the server does not allow it.
  const blocked = await loadFromUrl(page, `http://localhost:${host}/open_clip/`, 'open_clip_config.json open_clip_model.safetensors');
  check(blocked.kind === 'error' && /Content-Security-Policy/.test(blocked.status) && blocked.status.includes(`--allow-origin http://localhost:${host}`), `a model URL the server does not allow fails clearly: ${blocked.status}`);
  const loaded = await loadFromUrl(page, `http://127.0.0.1:${host}/open_clip/`, 'open_clip_config.json, open_clip_model.safetensors');
  const m = await page.evaluate(() => window.clipitApp.model);
  check(loaded.kind !== 'error' && m && m.name === 'open_clip' && m.architecture === 'open_clip CLIP', `a model URL on the allowed origin loads: ${loaded.status}`);
  await page.waitForFunction(() => window.clipitApp.models.cached.length === 1, null, { timeout: 30000 }).catch(() => {});
  const size = ['open_clip_config.json', 'open_clip_model.safetensors'].reduce((n, f) => n + fs.statSync(path.join(FIXTURE, f)).size, 0);
  const cached = await page.evaluate(() => window.clipitApp.models.cached.map((c) => ({ name: c.name, size: c.size, files: c.files.length })));
  check(cached.length === 1 && cached[0].name === 'open_clip' && cached[0].size === size, `the downloaded model is cached: ${JSON.stringify(cached)}`);

  // A reload keeps the cache (the demo bundle itself is not cached); Load needs no download.
  await reload();
  const items = await page.locator('#cache-list li[data-key]').count();
  check(items === 1 && (await page.textContent('#cache-list')).includes('open_clip'), 'after a reload the Model panel lists the cached model with its size');
  return async function loadAndDelete(requests) {
    const before = requests.filter((u) => u.includes(`:${host}/`)).length;
    await page.click('#cache-list button:has-text("Load")');
    await page.waitForFunction(() => window.clipitApp.model && window.clipitApp.model.name === 'open_clip', null, { timeout: STEP_TIMEOUT });
    await idle(page, 'load the cached model');
    check(requests.filter((u) => u.includes(`:${host}/`)).length === before, 'loading from the cache downloads nothing');
    await page.click('#cache-list button:has-text("Delete")');
    await page.waitForFunction(() => window.clipitApp.models.cached.length === 0, null, { timeout: 30000 }).catch(() => {});
    check((await page.evaluate(() => window.clipitApp.models.cached.length)) === 0 && (await page.locator('#cache-list li[data-key]').count()) === 0, 'Delete empties the cache');
  };
}

/** The real demo bundle on scenario `sc` (one backend); `slide` is mapped for its screenshot. */
export async function runRealDemo(sc, slide) {
  log(`\n== scenario ${sc.name}: the real demo bundle (data/demo) with the default server`);
  if (!check(fs.existsSync(path.join(BUNDLE, 'model')), 'data/demo/model exists')) return {};
  const host = await modelHost();
  const { proc, port } = await startServer(['--allow-origin', `http://127.0.0.1:${host.port}`]);
  const { page, origin, close, requests, transferred } = await openBrowser(sc, port, { width: 1280, height: 800 }, { allow: [`http://127.0.0.1:${host.port}`, `http://localhost:${host.port}`] });
  const timings = {};
  const shot = (name) => path.join(OUT, `clipit-demo-${name}.png`);
  try {
    const t0 = Date.now();
    await page.goto(`${origin}/`);
    await demoLoaded(page, 'the real demo bundle loads on open and classifies its tiles');
    timings.real_demo_open_ms = Date.now() - t0;
    timings.real_demo_first_view_bytes = transferred.bytes;
    log(`  demo's first view: ${timings.real_demo_open_ms} ms, ${(transferred.bytes / 1e6).toFixed(2)} MB transferred (${requests.length} requests)`);
    const mainEngine = requests.filter((u) => /\/pkg\/clipit_bg\.wasm$/.test(u)).length;
    if (sc.name === 'cpu') check(mainEngine === 0, 'the CPU engine\'s first view fetches only the engine it runs (not the WebGPU build)');
    const classes = fs.readFileSync(path.join(REF, 'real_demo_classes.txt'), 'utf8').trim().split(',');
    const nTiles = classes.reduce((n, c) => n + fs.readdirSync(path.join(REF, 'real_demo_show', c)).length, 0);
    const st = await page.evaluate(() => ({ model: window.clipitApp.model, classes: window.clipitApp.classes, tiles: window.clipitApp.tiles.length, corpus: window.clipitApp.corpus && window.clipitApp.corpus.name }));
    check(st.model && st.model.name === 'Demo model' && st.model.backend === sc.expect && st.tiles === nTiles && st.corpus === 'reports.jsonl', `the demo model, its ${st.tiles} tiles and reports.jsonl are loaded on ${st.model && st.model.backend}`);
    check(st.classes.join() === classes.join(), `the page classifies into the bundle's classes: ${st.classes.join(', ')}`);
    compareProbs(await exportCsv(page), cliProbs(path.join(REF, 'real_demo.csv'), classes), 'real demo zero-shot', classes);
    const m = await checkHowMap(page, nTiles);
    if (m) await checkJoins(page, m);

    const reload = async () => {
      await page.reload();
      await demoLoaded(page, 'the demo loads again after a reload');
    };
    const loadAndDelete = await checkUrlAndCache(page, host.port, reload);

    // Screenshots of every panel on the demo (the cache lists one model).
    await page.evaluate(() => document.querySelector('.statusbar').style.setProperty('display', 'none')); // it overlaps panels
    await page.waitForFunction(() => window.clipitApp.how.state === 'done', null, { timeout: STEP_TIMEOUT });
    for (const [name, sel] of Object.entries({ model: '#model', zeroshot: '#zeroshot', tiles: '#tiles', how: '#how' })) await page.locator(sel).screenshot({ path: shot(name) });
    await page.click('#grid li:first-child button');
    await page.waitForSelector('#detail[open]');
    await page.locator('#detail').screenshot({ path: shot('detail') });
    await page.click('#detail-close');

    // A short training: the chart and the confusion matrix.
    // The page's default settings (5 epochs, batch 16), as run.sh's native reference run.
    await page.fill('#hp-val-every', '15');
    const t1 = Date.now();
    await page.click('#train-start');
    await page.waitForFunction(() => ['done', 'idle'].includes(window.clipitApp.train.state) && !window.clipitApp.train.looping && window.clipitApp.train.stepsDone > 0, null, { timeout: STEP_TIMEOUT });
    timings.real_demo_train_ms = Date.now() - t1;
    await idle(page, 'train on the real demo');
    check((await page.locator('#train-confusion tbody tr').count()) === classes.length, `training on the demo finished with a ${classes.length}-class confusion matrix in ${timings.real_demo_train_ms} ms`);
    // Before and after on the same validation tiles: zero-shot, the linear probe and CLIP-IT.
    const tr = await page.evaluate(() => ({ base: window.clipitApp.train.prep.baselines, report: window.clipitApp.train.report, val: window.clipitApp.train.prep.val }));
    const inUnit = (x) => Number.isFinite(x) && x >= 0 && x <= 1;
    check(tr.base && tr.base.zero_shot && inUnit(tr.base.zero_shot.balanced_accuracy) && inUnit(tr.base.linear_probe.balanced_accuracy), `the Train panel measures zero-shot (${tr.base && tr.base.zero_shot && tr.base.zero_shot.balanced_accuracy.toFixed(3)}) and a linear probe (${tr.base && tr.base.linear_probe.balanced_accuracy.toFixed(3)}) on its ${tr.val} validation tiles`);
    const said = await page.textContent('#train-baselines');
    check(tr.report && said.includes(`zero-shot ${tr.base.zero_shot.balanced_accuracy.toFixed(3)}`) && said.includes(`CLIP-IT ${tr.report.balanced_accuracy.toFixed(3)}`), `it shows them beside CLIP-IT's: ${said}`);
    // The same run natively (run.sh: clipit train --baselines on data/demo/train.csv): the same
    // split, so the same baselines (two tiles of slack for float differences), and CLIP-IT within noise.
    const nativeRun = path.join(REF, 'real_demo_run');
    if (fs.existsSync(path.join(nativeRun, 'baselines.json')) && tr.base && tr.report) {
      const nb = JSON.parse(fs.readFileSync(path.join(nativeRun, 'baselines.json'), 'utf8'));
      const nr = JSON.parse(fs.readFileSync(path.join(REF, 'real_demo_train.json'), 'utf8'));
      const slack = 2 / tr.val + 1e-9;
      const zs = Math.abs(nb.zero_shot.balanced_accuracy - tr.base.zero_shot.balanced_accuracy);
      const lp = Math.abs(nb.linear_probe.balanced_accuracy - tr.base.linear_probe.balanced_accuracy);
      check(nr.n_samples === tr.val && zs <= slack && lp <= slack, `the baselines match clipit train --baselines on ${nr.n_samples} validation tiles (zero-shot ${nb.zero_shot.balanced_accuracy.toFixed(3)}, probe ${nb.linear_probe.balanced_accuracy.toFixed(3)})`);
      const d = Math.abs(nr.balanced_accuracy - tr.report.balanced_accuracy);
      check(d <= 0.1, `CLIP-IT in the page (${tr.report.balanced_accuracy.toFixed(3)}) is within noise of clipit train's (${nr.balanced_accuracy.toFixed(3)})`);
      timings.real_demo_native = { zero_shot: nb.zero_shot.balanced_accuracy, linear_probe: nb.linear_probe.balanced_accuracy, clipit: nr.balanced_accuracy };
    }
    timings.real_demo_baselines = { zero_shot: tr.base && tr.base.zero_shot, linear_probe: tr.base && tr.base.linear_probe, clipit: tr.report && tr.report.balanced_accuracy };
    await page.waitForFunction(() => window.clipitApp.how.state === 'done', null, { timeout: STEP_TIMEOUT });
    check(/step \d+ of \d+/.test(await page.textContent('#how-step-distill')) && /trained image encoder/.test(await page.textContent('#how-step-infer')), 'the pipeline shows the training and the vision-only inference');
    await page.locator('#train').screenshot({ path: shot('train') });
    await page.locator('#how').screenshot({ path: shot('how') });

    const t2 = Date.now();
    await page.setInputFiles('#map-file', slide);
    await page.waitForFunction(() => ['done', 'error', 'cancelled'].includes(window.clipitApp.map.state), null, { timeout: STEP_TIMEOUT, polling: 200 });
    timings.real_demo_map_ms = Date.now() - t2;
    check((await page.evaluate(() => window.clipitApp.map.state)) === 'done', `the demo maps the slide in ${timings.real_demo_map_ms} ms`);
    await page.locator('#slidemap').screenshot({ path: shot('slidemap') });

    await loadAndDelete(requests);
  } finally {
    await close();
    proc.kill();
    host.server.close();
  }
  return timings;
}
