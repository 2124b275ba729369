// Throughput of the page (scripts/bench_page.sh; a benchmark, not a test): image embedding of
// the full-size random-init HF CLIP ViT-B/32 (BP_MODEL), batch BP_BATCH (8), 224 px, f32.
// Scenarios (BP_SCENARIOS):
//   cpu, cpu1,   the real page (cpu: its multithreaded CPU engine; cpu1: ?threads=0, one thread;
//   cpumtN,      cpumtN: the multithreaded engine with ?threads=N;
//   webgpu       webgpu: WebGPU) (www/ and pkg/ under E2E_ROOT, through www/serve.py and its CSP): the
//                model goes in through the Model panel's file input, then the worker's embedImages
//                request embeds a batch of PNG tiles: one warm-up batch, then BP_RUNS timed batches
//                (distinct images: the page caches embeddings by content), timed from the page
//                around the request;
//   tjs1, tjs2   transformers.js (onnxruntime-web's wasm backend, 1 or 2 threads, cross-origin
//                isolated) on the ONNX export of the same tower (BP_ONNX, export_onnx.py), fed
//                the same images already preprocessed (tests/bench_page/tjs.js).
// Prints one JSON row per scenario (as `clipit bench --json`: images_per_sec at the median run)
// and checks that every scenario's embeddings of the first timed batch match the first one's
// (1e-3). Extra Chromium flags per scenario: BP_FLAGS_<SCENARIO> (JSON array).
import crypto from 'node:crypto';
import fs from 'node:fs';
import http from 'node:http';
import os from 'node:os';
import path from 'node:path';
import zlib from 'node:zlib';
import { chromium } from 'playwright-core';
import { CHROMIUM, ROOT, TOL, check, log, openBrowser, result, startServer } from './lib.mjs';

const MODEL = process.env.BP_MODEL;
const ONNX = process.env.BP_ONNX;
const BATCH = Number(process.env.BP_BATCH || 8);
const RUNS = Number(process.env.BP_RUNS || 3);
const SIZE = 224;
const ONLY = (process.env.BP_SCENARIOS || 'cpu,webgpu,tjs1,tjs2').split(',');
const STEP_MS = Number(process.env.BP_STEP_TIMEOUT_MS || 1800000);
const BASE_FLAGS = ['--headless', '--no-sandbox', '--disable-quic', '--no-first-run', '--disable-background-networking', '--disable-component-update', '--disable-sync'];
const flags = (name, extra = []) => [...BASE_FLAGS, ...extra, ...JSON.parse(process.env[`BP_FLAGS_${name.toUpperCase()}`] || '[]')];

// A 224x224 RGB PNG of seeded noise (distinct per image), and its pixels.
function noisePng(seed) {
  const rgb = crypto.createHash('sha256').update(`clipit-bench-${seed}`).digest();
  const pixels = Buffer.alloc(SIZE * SIZE * 3);
  let s = rgb.readUInt32LE(0) || 1;
  for (let i = 0; i < pixels.length; i++) {
    s ^= s << 13; s ^= s >>> 17; s ^= s << 5; s >>>= 0; // xorshift32
    pixels[i] = s & 0xff;
  }
  const raw = Buffer.alloc(SIZE * (SIZE * 3 + 1));
  for (let y = 0; y < SIZE; y++) pixels.copy(raw, y * (SIZE * 3 + 1) + 1, y * SIZE * 3, (y + 1) * SIZE * 3);
  const chunk = (type, data) => {
    const len = Buffer.alloc(4);
    len.writeUInt32BE(data.length);
    const crc = Buffer.alloc(4);
    crc.writeUInt32BE(zlib.crc32(Buffer.concat([Buffer.from(type), data])));
    return Buffer.concat([len, Buffer.from(type), data, crc]);
  };
  const ihdr = Buffer.alloc(13);
  ihdr.writeUInt32BE(SIZE, 0);
  ihdr.writeUInt32BE(SIZE, 4);
  ihdr.set([8, 2, 0, 0, 0], 8); // 8 bits, RGB
  const png = Buffer.concat([Buffer.from([137, 80, 78, 71, 13, 10, 26, 10]), chunk('IHDR', ihdr), chunk('IDAT', zlib.deflateSync(raw)), chunk('IEND', Buffer.alloc(0))]);
  return { png, pixels };
}

// Batch k (0 = warm-up): BATCH noise images.
const batches = Array.from({ length: RUNS + 1 }, (_, k) => Array.from({ length: BATCH }, (_, i) => noisePng(k * BATCH + i)));

// The CLIP preprocessing of a 224 px image (no resize, no crop): [n, 3, H, W] f32.
function pixelValues(batch) {
  const pre = JSON.parse(fs.readFileSync(path.join(ONNX, 'preprocessor_config.json'), 'utf8'));
  const out = new Float32Array(batch.length * 3 * SIZE * SIZE);
  batch.forEach(({ pixels }, n) => {
    for (let c = 0; c < 3; c++)
      for (let p = 0; p < SIZE * SIZE; p++) out[(n * 3 + c) * SIZE * SIZE + p] = (pixels[p * 3 + c] / 255 - pre.image_mean[c]) / pre.image_std[c];
  });
  return Buffer.from(out.buffer);
}

const median = (xs) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)];
const maxDiff = (a, b) => (a.length !== b.length ? Infinity : a.reduce((m, x, i) => Math.max(m, Math.abs(x - b[i])), 0));
const row = (scenario, run_ms, extra) => ({ scenario, model: MODEL, task: 'embed', batch: BATCH, dtype: 'f32', runs: RUNS, run_ms: run_ms.map((m) => Math.round(m)), median_s: median(run_ms) / 1000, images_per_sec: BATCH / (median(run_ms) / 1000), ...extra });

// The page: load the model through the file input, then time embedImages in the worker.
async function pageScenario(name, port) {
  log(`\n== the page, ${name}`);
  const { page, origin, close } = await openBrowser({ flags: flags(name, name === 'webgpu' ? ['--enable-unsafe-webgpu'] : []) }, port);
  try {
    // cpu1: the one-thread CPU engine (?threads=0); cpumtN: the multithreaded one with N threads.
    const threads = name === 'cpu1' ? 0 : /^cpumt\d+$/.test(name) ? Number(name.slice(5)) : null;
    await page.goto(`${origin}/?demo=0${threads === null ? '' : `&threads=${threads}`}`);
    await page.waitForFunction(() => document.body.dataset.ready, null, { timeout: 120000 });
    const init = await page.evaluate(() => window.clipitApp.backend);
    check(init.backend === (name === 'webgpu' ? 'webgpu' : 'cpu'), `init chose ${init.backend}${init.reason ? ` (${init.reason})` : ''}`);
    const files = fs.readdirSync(MODEL).filter((f) => f !== 'expected.safetensors').sort().map((f) => path.join(MODEL, f));
    await page.setInputFiles('#model-files', files);
    await page.waitForFunction(() => window.clipitApp.model || document.querySelector('#status').dataset.kind === 'error', null, { timeout: STEP_MS, polling: 250 });
    const model = await page.evaluate(() => window.clipitApp.model);
    if (!check(Boolean(model), `the model loads: ${model ? `${model.architecture} on ${model.backend}` : await page.textContent('#status')}`)) return null;
    await page.waitForFunction(() => document.body.dataset.busy === '0' && window.clipitApp.busy === 0, null, { timeout: STEP_MS, polling: 250 });
    const run_ms = [];
    const elapsed_ms = [];
    let embeds = null;
    for (let k = 0; k <= RUNS; k++) {
      const items = batches[k].map(({ png }, i) => ({ id: `bench-${k}-${i}`, name: `bench-${k}-${i}.png`, b64: png.toString('base64') }));
      const r = await page.evaluate(async (items) => {
        const app = window.clipitApp;
        const buffers = items.map((t) => Uint8Array.from(atob(t.b64), (c) => c.charCodeAt(0)).buffer);
        await app.call('addTiles', { items: items.map((t, i) => ({ id: t.id, name: t.name, buffer: buffers[i] })) }, { transfer: buffers });
        const t0 = performance.now();
        const out = await app.call('embedImages', { ids: items.map((t) => t.id) });
        const ms = performance.now() - t0;
        await app.call('removeTiles', { ids: items.map((t) => t.id) });
        return { ms, elapsed_ms: out.elapsed_ms, errors: out.images.filter((i) => i.error).map((i) => i.error), embeds: out.images.flatMap((i) => Array.from(i.embedding)) };
      }, items);
      check(r.errors.length === 0, `${k ? `run ${k}` : 'warm-up'}: ${BATCH} images in ${r.ms.toFixed(0)} ms${r.errors.length ? `: ${r.errors[0]}` : ''}`);
      if (k === 0) continue;
      run_ms.push(r.ms);
      elapsed_ms.push(r.elapsed_ms);
      if (k === 1) embeds = r.embeds;
    }
    const adapter = init.gpu ? `${init.gpu.vendor} ${init.gpu.architecture}${init.gpu.isFallbackAdapter ? ' (fallback adapter)' : ''}` : `wasm CPU (burn-flex, ${init.engine === 'mt' ? `multithreaded engine, ${init.cpu_threads} threads` : '1 thread'})`;
    return { row: row(`page-${name}`, run_ms, { backend: model.backend, adapter, wasm_elapsed_ms: elapsed_ms.map((m) => Math.round(m)) }), embeds };
  } finally {
    await close();
  }
}

// transformers.js on its own small server (cross-origin isolated, the page's CSP).
function tjsServer() {
  const repo = process.env.BP_REPO || ROOT;
  const nm = path.join(repo, 'tests/bench_page/node_modules');
  const routes = [['/tjs/', path.join(nm, '@huggingface/transformers/dist')], ['/ort/', path.join(nm, 'onnxruntime-web/dist')], ['/models/clip/', ONNX], ['/', path.join(repo, 'tests/bench_page')]];
  const inputs = batches.map(pixelValues);
  const types = { '.html': 'text/html', '.js': 'text/javascript', '.mjs': 'text/javascript', '.wasm': 'application/wasm', '.json': 'application/json', '.onnx': 'application/octet-stream' };
  const server = http.createServer((req, res) => {
    const url = decodeURIComponent(new URL(req.url, 'http://x').pathname);
    const head = { 'Cross-Origin-Opener-Policy': 'same-origin', 'Cross-Origin-Embedder-Policy': 'require-corp', 'Content-Security-Policy': "default-src 'self'; script-src 'self' 'wasm-unsafe-eval'; worker-src 'self'; object-src 'none'; base-uri 'none'" };
    const m = url.match(/^\/inputs\/(\d+)\.bin$/);
    if (m && inputs[Number(m[1])]) return res.writeHead(200, { ...head, 'Content-Type': 'application/octet-stream' }).end(inputs[Number(m[1])]);
    const [prefix, dir] = routes.find(([p]) => url.startsWith(p));
    const file = path.join(dir, url === '/' ? 'tjs.html' : url.slice(prefix.length));
    if (!file.startsWith(dir + path.sep) || !fs.existsSync(file) || !fs.statSync(file).isFile()) return res.writeHead(404, head).end();
    res.writeHead(200, { ...head, 'Content-Type': types[path.extname(file)] || 'application/octet-stream', 'Content-Length': fs.statSync(file).size });
    fs.createReadStream(file).pipe(res);
  });
  return new Promise((resolve) => server.listen(0, '127.0.0.1', () => resolve(server)));
}

async function tjsScenario(name, server) {
  const threads = Number(name.slice(3));
  log(`\n== transformers.js, ${threads} thread(s)`);
  const origin = `http://127.0.0.1:${server.address().port}`;
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'clipit-bench-'));
  const context = await chromium.launchPersistentContext(dir, { executablePath: CHROMIUM, headless: true, args: flags(name) });
  const requests = [];
  context.on('request', (r) => requests.push(r.url()));
  try {
    const page = context.pages()[0] || (await context.newPage());
    page.on('console', (m) => m.type() !== 'debug' && log(`  [console.${m.type()}] ${m.text()}`));
    page.on('response', (r) => r.status() >= 400 && log(`  (${r.status()} for ${r.url()}: an optional file transformers.js probes)`));
    await page.goto(`${origin}/`);
    await page.waitForFunction(() => document.body.dataset.ready && window.tjsBench, null, { timeout: 60000 });
    const r = await page.evaluate((o) => window.tjsBench(o), { threads, batches: RUNS + 1, n: BATCH, size: SIZE, keep: 1 });
    r.run_ms.forEach((ms, k) => log(`  ${k ? `run ${k}` : 'warm-up'}: ${BATCH} images in ${ms.toFixed(0)} ms`));
    check(r.threads === threads, `onnxruntime-web ran with ${r.threads} thread(s) (cross-origin isolated: ${r.isolated}, hardwareConcurrency ${r.hardwareConcurrency})`);
    const foreign = requests.filter((u) => !u.startsWith(`${origin}/`) && !u.startsWith(`blob:${origin}/`));
    check(foreign.length === 0, `no request leaves 127.0.0.1 (${requests.length} requests)${foreign.length ? `: ${foreign.join(', ')}` : ''}`);
    return { row: row(`transformers.js-wasm-${threads}t`, r.run_ms.slice(1), { backend: 'onnxruntime-web wasm (SIMD)', adapter: `wasm CPU, ${r.threads} thread(s)`, model: ONNX, load_ms: Math.round(r.load_ms) }), embeds: r.embeds };
  } finally {
    await context.close();
    fs.rmSync(dir, { recursive: true, force: true });
  }
}

const { proc, port } = await startServer();
const tjs = ONLY.some((s) => s.startsWith('tjs')) ? await tjsServer() : null;
const rows = [];
let reference = null;
try {
  for (const name of ONLY) {
    const r = name.startsWith('tjs') ? await tjsScenario(name, tjs) : await pageScenario(name, port);
    if (!r) continue;
    if (reference) {
      r.row.max_abs_diff_vs_first = maxDiff(r.embeds, reference.embeds);
      check(r.row.max_abs_diff_vs_first <= TOL, `${r.row.scenario}: the same embeddings as ${reference.row.scenario} (max |diff| ${r.row.max_abs_diff_vs_first.toExponential(2)} <= ${TOL})`);
    } else reference = r;
    rows.push(r.row);
    log(JSON.stringify(r.row));
  }
} finally {
  proc.kill();
  if (tjs) tjs.close();
}
const out = path.join(process.env.E2E_OUT || os.tmpdir(), 'bench_page.json');
fs.writeFileSync(out, JSON.stringify(rows, null, 2));
log(`\n${result.failures ? `${result.failures} check(s) FAILED` : 'all checks passed'}; rows in ${out}`);
process.exit(result.failures ? 1 : 0);
