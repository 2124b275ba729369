// Shared helpers of the end-to-end tests (e2e.mjs, demo.mjs, hardening.mjs, device_lost.mjs): the
// scenarios (browser flags), the checks and their count, CSV parsing, the native references, the
// server, a browser with every request recorded, synthetic drops, and the native predictions of
// an exported adapter.
import { execFileSync, spawn } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { chromium } from 'playwright-core';

export const ROOT = path.resolve(process.env.E2E_ROOT || path.join(path.dirname(new URL(import.meta.url).pathname), '../..'));
export const REF = process.env.E2E_REF; // folder with the CLI's outputs (run.sh writes it)
export const OUT = process.env.E2E_OUT || '/tmp';
export const CHROMIUM = process.env.CHROMIUM || '/usr/bin/chromium';
export const TOL = 1e-3;
export const CLASSES = fs.readFileSync(path.join(REF, 'classes.txt'), 'utf8').trim().split(',');
export const STEP_TIMEOUT = Number(process.env.E2E_STEP_TIMEOUT_MS || 600000);
export const TOP_K = 3;

const BASE_FLAGS = ['--headless', '--no-sandbox', '--disable-quic', '--no-first-run', '--disable-background-networking', '--disable-component-update', '--disable-sync'];
/** The browsers the page is tested in: WebGPU through SwiftShader, and the CPU fallback. */
export const SCENARIOS = [
  { name: 'webgpu', flags: [...BASE_FLAGS, '--enable-unsafe-webgpu'], expect: 'webgpu' },
  // No --enable-unsafe-webgpu: the browser offers no usable adapter, so the page must fall back.
  { name: 'cpu', flags: BASE_FLAGS, expect: 'cpu' },
];

/** The number of failed checks so far. */
export const result = { failures: 0 };
export const log = (...a) => console.log(...a);
export function check(cond, what) {
  if (cond) log(`  ok   ${what}`);
  else {
    result.failures++;
    log(`  FAIL ${what}`);
  }
  return cond;
}

export function parseCsv(text) {
  const rows = [];
  for (const line of text.trim().split('\n')) {
    const cells = [];
    let cur = '';
    let quoted = false;
    for (let i = 0; i < line.length; i++) {
      const c = line[i];
      if (quoted) {
        if (c === '"' && line[i + 1] === '"') (cur += '"'), i++;
        else if (c === '"') quoted = false;
        else cur += c;
      } else if (c === '"') quoted = true;
      else if (c === ',') cells.push(cur), (cur = '');
      else cur += c;
    }
    cells.push(cur);
    rows.push(cells);
  }
  const [head, ...body] = rows;
  return body.map((r) => Object.fromEntries(head.map((h, i) => [h, r[i]])));
}

// The CLI's zero-shot CSV: image path -> probabilities in class order.
export function cliProbs(file, classes = CLASSES) {
  const out = new Map();
  for (const row of parseCsv(fs.readFileSync(file, 'utf8'))) out.set(path.basename(row.image), classes.map((c) => Number(row[c])));
  return out;
}

// The CLI's pseudo-pairs JSONL: image -> [{report_id, score, rank}].
export function cliPairs(file) {
  const out = new Map();
  for (const line of fs.readFileSync(file, 'utf8').split('\n').filter(Boolean)) {
    const p = JSON.parse(line);
    const key = path.basename(p.image);
    if (!out.has(key)) out.set(key, []);
    out.get(key).push(p);
  }
  for (const v of out.values()) v.sort((a, b) => a.rank - b.rank);
  return out;
}

/** Starts www/serve.py on a free port with these extra arguments; resolves to {proc, port}. */
export async function startServer(args = []) {
  return spawnServer([path.join(ROOT, 'www/serve.py'), '--port', '0', '--root', ROOT, ...args], /127\.0\.0\.1:(\d+)/, { CLIPIT_SERVE_QUIET: '1' });
}

/**
 * Starts `python3 args…` (unbuffered, so its first line arrives at once) and resolves with it and
 * the port its stdout names (`portPattern`'s group); `stderr` is 'inherit' or 'ignore'.
 */
export async function spawnServer(args, portPattern, env = {}, stderr = 'inherit') {
  const proc = spawn('python3', args, { env: { ...process.env, PYTHONUNBUFFERED: '1', ...env }, stdio: ['ignore', 'pipe', stderr] });
  const port = await new Promise((resolve, reject) => {
    let buf = '';
    proc.stdout.on('data', (d) => {
      buf += d;
      const m = buf.match(portPattern);
      if (m) resolve(Number(m[1]));
    });
    proc.on('exit', (code) => reject(new Error(`the server exited (${code})`)));
  });
  return { proc, port };
}

export async function idle(page, what) {
  await page.waitForFunction(() => document.body.dataset.busy === '0' && window.clipitApp.busy === 0, null, { timeout: STEP_TIMEOUT, polling: 200 });
  const status = await page.textContent('#status');
  const kind = await page.getAttribute('#status', 'data-kind');
  check(kind !== 'error', `${what}: ${status}`);
  return status;
}

/**
 * Holds one of the page's request loops (`panel`: 'train' or 'map') after the first request at
 * which `at` is reached (`{ steps: k }`: k training steps done; `{ checkpoint: k }`: a training
 * checkpoint kept at step k or later; `{ tiles: k }`: k map tiles done), through the loop's
 * `afterRequest` test hook, and waits until it is held there. A Pause, Cancel or reload that the
 * test does next lands at that point whatever the machine's speed; `release` lets the loop go on.
 */
export async function holdLoop(page, panel, at) {
  await page.evaluate(([panel, at]) => {
    const app = window.clipitApp;
    const reached = (s) =>
      (at.steps !== undefined && s.stepsDone >= at.steps) ||
      (at.checkpoint !== undefined && ((app.checkpoint && app.checkpoint.saved) || {}).step >= at.checkpoint) ||
      (at.tiles !== undefined && s.done >= at.tiles);
    window.__held = window.__held || {};
    delete window.__held[panel];
    app[panel].afterRequest = (s) => (reached(s) ? new Promise((resolve) => (window.__held[panel] = resolve)) : undefined);
  }, [panel, at]);
}

/** Waits until `holdLoop`'s loop is held (or the panel reports an error); returns that error. */
export async function waitHeld(page, panel) {
  await page.waitForFunction((panel) => (window.__held || {})[panel] || window.clipitApp[panel].error, panel, { timeout: STEP_TIMEOUT, polling: 50 });
  return page.evaluate((panel) => window.clipitApp[panel].error, panel);
}

/** Removes the hold of `holdLoop` and lets the held loop go on. */
export async function release(page, panel) {
  await page.evaluate((panel) => {
    window.clipitApp[panel].afterRequest = null;
    const go = (window.__held || {})[panel];
    delete window.__held[panel];
    if (go) go();
  }, panel);
}

export async function exportCsv(page) {
  const [download] = await Promise.all([page.waitForEvent('download'), page.click('#export')]);
  return parseCsv(fs.readFileSync(await download.path(), 'utf8'));
}

export function compareProbs(rows, ref, label, classes = CLASSES) {
  let maxDiff = 0;
  let compared = 0;
  let samePred = true;
  for (const row of rows) {
    const want = ref.get(path.basename(row.image));
    if (!want) continue;
    const got = classes.map((c) => Number(row[c]));
    got.forEach((g, i) => (maxDiff = Math.max(maxDiff, Math.abs(g - want[i]))));
    const wantPred = classes[want.indexOf(Math.max(...want))];
    const sorted = [...want].sort((a, b) => b - a);
    if (row.prediction !== wantPred && sorted[0] - sorted[1] > TOL) samePred = false;
    compared++;
  }
  check(compared === ref.size && compared === rows.length, `${label}: ${compared} tiles in the CSV, ${ref.size} from the CLI`);
  check(maxDiff <= TOL, `${label}: probabilities match the CLI (max |diff| ${maxDiff.toExponential(2)} <= ${TOL})`);
  check(samePred, `${label}: predicted classes match the CLI`);
  return maxDiff;
}

export async function compareHits(page, ref, label) {
  const tiles = await page.evaluate(() => window.clipitApp.tiles.map((t) => ({ name: t.name, hits: t.hits })));
  let maxDiff = 0;
  let idsOk = true;
  let n = 0;
  for (const t of tiles) {
    const want = ref.get(path.basename(t.name));
    if (!want || !t.hits) continue;
    n++;
    if (t.hits.length !== want.length) idsOk = false;
    t.hits.forEach((h, i) => {
      const w = want[i];
      if (!w) return;
      maxDiff = Math.max(maxDiff, Math.abs(h.score - w.score));
      // Near-ties may swap ranks; then only the scores are compared.
      const tie = want.some((o) => o !== w && Math.abs(o.score - w.score) <= TOL);
      if (String(h.id) !== String(w.report_id) && !tie) idsOk = false;
    });
  }
  check(n === ref.size, `${label}: reports retrieved for ${n} of ${ref.size} tiles`);
  check(idsOk, `${label}: the same top-${TOP_K} report ids as the CLI`);
  check(maxDiff <= TOL, `${label}: report scores match the CLI (max |diff| ${maxDiff.toExponential(2)})`);
}

// A fresh browser for a scenario; every request is recorded for the privacy check.
// `allow` lists other origins the session may reach (the ones a test types as a model URL).
export async function openBrowser(sc, port, viewport = { width: 1280, height: 900 }, { allow = [] } = {}) {
  const userDataDir = fs.mkdtempSync(path.join(os.tmpdir(), 'clipit-chromium-'));
  const context = await chromium.launchPersistentContext(userDataDir, { executablePath: CHROMIUM, headless: true, args: sc.flags, acceptDownloads: true, viewport });
  const origin = `http://127.0.0.1:${port}`;
  const requests = [];
  context.on('request', (r) => requests.push(r.url()));
  // Bytes over the wire (bodies as sent, compressed where the server compressed them, and headers).
  const transferred = { bytes: 0 };
  context.on('requestfinished', (r) =>
    r.sizes().then(
      (s) => (transferred.bytes += s.responseBodySize + s.responseHeadersSize),
      () => {},
    ),
  );
  const page = context.pages()[0] || (await context.newPage());
  page.on('console', (m) => (m.type() === 'error' || process.env.E2E_VERBOSE) && log(`  [console.${m.type()}] ${m.text()}`));
  page.on('pageerror', (e) => log(`  [pageerror] ${e.message}`));
  const close = async () => {
    await context.close();
    fs.rmSync(userDataDir, { recursive: true, force: true });
    const foreign = requests.filter((u) => !(u.startsWith(`${origin}/`) || u.startsWith(`blob:${origin}/`) || u.startsWith('data:') || allow.some((o) => u.startsWith(`${o}/`))));
    check(requests.some((u) => u.endsWith('/clipit_bg.wasm')), `the worker's requests are recorded too (${requests.length} requests)`);
    check(foreign.length === 0, `no request leaves 127.0.0.1${allow.length ? ` except to ${allow.join(', ')}` : ''}${foreign.length ? `: ${foreign.join(', ')}` : ''}`);
  };
  return { page, origin, close, requests, transferred };
}

/** Drops files ({name, bytes}) on a drop zone, as a user would (a synthetic drop carries no folders). */
export async function dropItems(page, selector, items) {
  const payload = items.map(({ name, bytes }) => ({ name, b64: Buffer.from(bytes).toString('base64') }));
  await page.evaluate(
    ([selector, items]) => {
      const dt = new DataTransfer();
      for (const { name, b64 } of items) dt.items.add(new File([Uint8Array.from(atob(b64), (c) => c.charCodeAt(0))], name));
      const zone = document.querySelector(selector);
      zone.dispatchEvent(new DragEvent('dragover', { dataTransfer: dt, bubbles: true, cancelable: true }));
      zone.dispatchEvent(new DragEvent('drop', { dataTransfer: dt, bubbles: true, cancelable: true }));
    },
    [selector, payload],
  );
  return items.length;
}

// The native library's predictions for an adapter file on the demo bundle ($E2E_DEMO, with the
// adapter_predict example): {classes, probs: basename -> probabilities}.
export function nativePredictions(adapter) {
  const demo = process.env.E2E_DEMO;
  const out = JSON.parse(execFileSync(process.env.E2E_ADAPTER_PREDICT, [path.join(demo, 'model'), adapter, path.join(demo, 'tiles')], { encoding: 'utf8' }));
  return { classes: out.classes, probs: new Map(out.images.map((i) => [i.name, i.probs])) };
}

// The Tiles panel's CSV against the native predictions for the same adapter.
export function compareTrained(rows, native, label) {
  let maxDiff = 0;
  let n = 0;
  for (const row of rows) {
    const want = native.probs.get(path.basename(row.image));
    if (!want) continue;
    n++;
    native.classes.forEach((c, i) => (maxDiff = Math.max(maxDiff, Math.abs(Number(row[c]) - want[i]))));
  }
  check(n === native.probs.size && n > 0, `${label}: ${n} tiles compared with the native library (${native.probs.size})`);
  check(maxDiff <= TOL, `${label}: trained predictions match the native library (max |diff| ${maxDiff.toExponential(2)} <= ${TOL})`);
}
