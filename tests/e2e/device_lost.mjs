// The WebGPU device lost under the page (issue 6), and the weights' dtype (issue 4), on WebGPU
// (SwiftShader) with the demo bundle that run.sh builds from the fixtures ($E2E_DEMO):
//   - the Model panel shows f32 weights (SwiftShader has no shader-f16);
//   - with ?debug=1, the test hook destroys the WebGPU device while a training runs, after the
//     demo was classified and the training kept a checkpoint: the page says "WebGPU device lost
//     (reason Destroyed…): switched to the CPU backend" in the status and the Model panel, the
//     training stops with that reason, the model loads again on the CPU, classifying again gives
//     the same top classes, probabilities within 1e-3 of those before, and the training's
//     checkpoint is offered and resumes (its adapter classifies the tiles on the CPU);
//   - ?dtype=f16 is refused with a clear message (the weights stay f32), and without ?debug=1 the
//     hook is refused;
//   - a training started on f16 weights (simulated: ?debug_f16=1) restarts the engine with f32
//     weights, loads the model again and trains to the end on WebGPU.
// Run by e2e.mjs in its WebGPU scenario; alone: `node tests/e2e/device_lost.mjs` with E2E_REF
// (a folder with classes.txt) and E2E_DEMO set as run.sh sets them.
import path from 'node:path';
import { pathToFileURL } from 'node:url';
import { OUT, STEP_TIMEOUT, TOL, check, idle, log, openBrowser, result, SCENARIOS, startServer } from './lib.mjs';

/** Each tile's name, prediction and probabilities, as the page holds them. */
const tileProbs = (page) => page.evaluate(() => window.clipitApp.tiles.map((t) => ({ name: t.name, prediction: t.prediction, probs: t.probs })));

/** The Model panel as label → value. */
const modelPanel = (page) =>
  page.evaluate(() => {
    const out = {};
    for (const dt of document.querySelectorAll('#model-info dt')) out[dt.textContent] = dt.nextElementSibling.textContent;
    return out;
  });

/** Compares two classifications of the same tiles: same top classes, probabilities within TOL. */
function compareRuns(before, after, label) {
  const byName = new Map(after.map((t) => [t.name, t]));
  let maxDiff = 0;
  let same = before.length > 0;
  for (const b of before) {
    const a = byName.get(b.name);
    if (!a || !a.probs || !b.probs) {
      same = false;
      continue;
    }
    if (a.prediction !== b.prediction) same = false;
    b.probs.forEach((p, i) => (maxDiff = Math.max(maxDiff, Math.abs(p - a.probs[i]))));
  }
  check(same, `${label}: the same top class for each of the ${before.length} tiles`);
  check(maxDiff <= TOL, `${label}: probabilities within ${TOL} of those on WebGPU (max |diff| ${maxDiff.toExponential(2)})`);
}

async function demoLoaded(page, what) {
  await page.waitForFunction(() => document.body.dataset.demo && window.clipitApp.model, null, { timeout: STEP_TIMEOUT, polling: 100 });
  return idle(page, what);
}

async function checkDeviceLost(page, origin) {
  await page.goto(`${origin}/?backend=webgpu&debug=1`);
  await demoLoaded(page, 'the demo bundle loads on WebGPU');
  const panel = await modelPanel(page);
  check(/^WebGPU/.test(panel.Backend || ''), `the demo model is on WebGPU (${panel.Backend})`);
  check(panel.Weights === 'f32', `the Model panel shows f32 weights on SwiftShader (${panel.Weights})`);
  const before = await tileProbs(page);
  check(before.length > 0 && before.every((t) => t.probs), `the demo's ${before.length} tiles are classified on WebGPU`);

  // A long training, one step per request, until it kept a checkpoint.
  for (const [id, v] of Object.entries({ '#hp-epochs': 200, '#hp-batch': 4, '#hp-val-every': 100000 })) await page.fill(id, String(v));
  await page.evaluate(() => (window.clipitApp.train.maxChunk = 1));
  await page.click('#train-start');
  await page.waitForFunction(() => (window.clipitApp.checkpoint.saved || {}).step >= 5 || window.clipitApp.train.error, null, { timeout: STEP_TIMEOUT, polling: 50 });
  const saved = await page.evaluate(() => ({ ...window.clipitApp.checkpoint.saved, state: window.clipitApp.train.state }));
  check(saved.state === 'running' && saved.step >= 5, `a training runs on WebGPU and kept a checkpoint at step ${saved.step}`);

  const t0 = Date.now();
  const reason = await page.evaluate(() => window.clipitApp.call('debugLoseDevice'));
  check(/^WebGPU device lost \(reason Destroyed.*\): switched to the CPU backend$/.test(reason), `the device-lost callback ran: ${reason}`);
  await page.waitForFunction(() => document.body.dataset.deviceLost === 'reloaded', null, { timeout: STEP_TIMEOUT, polling: 100 });
  await page.waitForFunction(() => document.body.dataset.busy === '0' && window.clipitApp.busy === 0, null, { timeout: STEP_TIMEOUT, polling: 100 });
  const status = await page.textContent('#status');
  check(status.startsWith(reason) && /loaded again on the CPU/.test(status), `the page says so: ${status}`);
  const after = await modelPanel(page);
  check(after.Backend === 'CPU (WebAssembly)', `the Model panel says the CPU now (${after.Backend})`);
  check((after['Why the CPU'] || '').startsWith('WebGPU device lost (reason Destroyed'), `with the reason: ${after['Why the CPU']}`);
  check((await page.getAttribute('#backend-badge', 'data-backend')) === 'cpu', 'the backend badge says the CPU');
  compareRuns(before, await tileProbs(page), 'classified again on the CPU after the loss');
  const train = await page.evaluate(() => ({ state: window.clipitApp.train.state, error: window.clipitApp.train.error }));
  check(train.state === 'idle' && (train.error || '').startsWith(reason) && /The training stopped/.test(status), `the training stopped with the reason: ${train.error}`);

  await page.click('#classify');
  await idle(page, 'classifying once more on the CPU');
  compareRuns(before, await tileProbs(page), 'the Classify button on the CPU');
  await page.screenshot({ path: path.join(OUT, 'clipit-e2e-webgpu-device-lost.png') });

  await page.waitForFunction(() => window.clipitApp.checkpoint.offered, null, { timeout: 30000, polling: 100 });
  const offered = await page.evaluate(() => window.clipitApp.checkpoint.offered);
  check(offered.step === saved.step || offered.step >= 5, `the training's checkpoint (step ${offered.step}) is offered after the loss`);
  await page.click('#checkpoint-resume');
  await page.waitForFunction(() => window.clipitApp.trained, null, { timeout: STEP_TIMEOUT, polling: 100 });
  await idle(page, 'the checkpoint resumes on the CPU and classifies the tiles');
  const resumed = await page.evaluate(() => ({ model: window.clipitApp.model.backend, classified: window.clipitApp.tiles.every((t) => t.probs) }));
  check(resumed.model === 'cpu' && resumed.classified, 'the resumed adapter classifies every tile on the CPU');
  return Date.now() - t0;
}

async function checkDtypeFlag(page, origin) {
  await page.goto(`${origin}/?backend=webgpu&dtype=f16`);
  await demoLoaded(page, 'the demo bundle loads with ?dtype=f16');
  const panel = await modelPanel(page);
  const note = await page.evaluate(() => window.clipitApp.backend.dtype_note || '');
  check(/^f16 weights need a WebGPU adapter with the shader-f16 feature/.test(note), `?dtype=f16 is refused: ${note}`);
  check((panel.Weights || '').startsWith('f32 (f16 weights need') && /^WebGPU/.test(panel.Backend || ''), `the Model panel shows f32 on WebGPU and why: ${panel.Weights}`);
  const refused = await page.evaluate(() => window.clipitApp.call('debugLoseDevice').then(() => 'not refused', (e) => e.message));
  check(/needs the page opened with \?debug=1/.test(refused), `without ?debug=1 the device-loss hook is refused: ${refused}`);
}

// Training on f16 weights (adapters with shader-f16 get them by default): the page restarts its
// engine with f32 weights, loads the demo again, and trains. SwiftShader has no shader-f16, so
// ?debug_f16=1 makes the worker report the WebGPU weights as f16 and refuse to train on them,
// as the engine does on real f16 weights (src/precision.rs, tested natively on lavapipe).
async function checkF16Training(page, origin) {
  await page.goto(`${origin}/?backend=webgpu&debug=1&debug_f16=1`);
  await demoLoaded(page, 'the demo bundle loads with (simulated) f16 weights');
  const panel = await modelPanel(page);
  check(panel.Weights === 'f16' && /^WebGPU/.test(panel.Backend || ''), `the Model panel shows f16 weights on WebGPU (${panel.Weights})`);
  const before = await tileProbs(page);
  for (const [id, v] of Object.entries({ '#hp-epochs': 2, '#hp-batch': 4, '#hp-val-every': 0 })) await page.fill(id, String(v));
  const t0 = Date.now();
  await page.click('#train-start');
  await page.waitForFunction(() => ['done', 'idle'].includes(window.clipitApp.train.state) && window.clipitApp.busy === 0 && window.clipitApp.model, null, { timeout: STEP_TIMEOUT, polling: 100 });
  const ms = Date.now() - t0;
  const t = await page.evaluate(() => ({ state: window.clipitApp.train.state, error: window.clipitApp.train.error, dtype: window.clipitApp.dtype, trained: Boolean(window.clipitApp.trained), backend: window.clipitApp.model.backend }));
  check(t.state === 'done' && !t.error && t.trained, `the training ran to the end after the switch (state ${t.state}${t.error ? `, ${t.error}` : ''})`);
  const after = await modelPanel(page);
  check(t.dtype === 'f32' && after.Weights === 'f32 (f32 for training: the engine restarted off f16 weights)', `the weights are f32 now, and the Model panel says why: ${after.Weights}`);
  check(t.backend === 'webgpu' && /^WebGPU/.test(after.Backend || ''), `the model stays on WebGPU (${after.Backend})`);
  const tiles = await tileProbs(page);
  check(tiles.length === before.length && tiles.every((x) => x.probs), `the ${tiles.length} tiles were sent to the new engine and classified by the trained adapter`);
  return ms;
}

/** The checks on scenario `sc` (WebGPU), against the e2e server on `port`. */
export async function runDeviceLost(sc, port) {
  log(`\n== scenario ${sc.name}: the WebGPU device lost, and the weights' dtype`);
  const { page, origin, close } = await openBrowser(sc, port);
  try {
    const ms = await checkDeviceLost(page, origin);
    await checkDtypeFlag(page, origin);
    const f16 = await checkF16Training(page, origin);
    return { device_lost_to_cpu_ms: ms, f16_switch_and_train_ms: f16 };
  } finally {
    await close();
  }
}

if (import.meta.url === pathToFileURL(process.argv[1]).href) {
  const { proc, port } = await startServer(['--demo', process.env.E2E_DEMO]);
  try {
    await runDeviceLost(SCENARIOS.find((s) => s.name === 'webgpu'), port);
  } finally {
    proc.kill();
  }
  log(result.failures ? `\n${result.failures} check(s) failed` : '\nall device-lost checks passed');
  process.exit(result.failures ? 1 : 0);
}
