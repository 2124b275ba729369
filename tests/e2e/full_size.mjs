// Measures a full-size checkpoint in the page (not part of ./build.sh test: it needs the ~600 MB
// random-init HF CLIP ViT-B/32 that full_size.sh generates). For the CPU fallback and then WebGPU
// (SwiftShader) it loads FS_MODEL through the model file input of a fresh headless Chromium,
// records whether it loaded (or the error text), the load time, the worker's wasm memory, what
// performance.measureUserAgentSpecificMemory() says when the page may call it, and the peak
// resident memory (VmHWM) of Chromium's renderer and GPU processes; then embeds one tile and one
// text in the worker and compares them with the native `clipit embed` output (FS_NATIVE, 1e-3).
// Writes $E2E_OUT/full_size.json. Shared helpers are in lib.mjs.
import fs from 'node:fs';
import path from 'node:path';
import { OUT, ROOT, TOL, check, log, openBrowser, result, startServer } from './lib.mjs';

const MODEL = process.env.FS_MODEL;
const NATIVE = JSON.parse(fs.readFileSync(process.env.FS_NATIVE, 'utf8'));
const TILE = process.env.FS_TILE;
const TEXT = process.env.FS_TEXT;
const ONLY = (process.env.FS_SCENARIOS || 'cpu,webgpu').split(',');
const STEP_MS = Number(process.env.FS_STEP_TIMEOUT_MS || 900000);

const BASE_FLAGS = ['--headless', '--no-sandbox', '--disable-quic', '--no-first-run', '--disable-background-networking', '--disable-component-update', '--disable-sync'];
const SCENARIOS = [
  { name: 'cpu', flags: BASE_FLAGS, expect: 'cpu' },
  { name: 'webgpu', flags: [...BASE_FLAGS, '--enable-unsafe-webgpu'], expect: 'webgpu' },
];

// Chromium's processes under this node process, with their type and VmHWM / VmRSS in MiB.
function chromiumProcs() {
  const kids = new Map();
  for (const d of fs.readdirSync('/proc').filter((d) => /^\d+$/.test(d))) {
    try {
      const stat = fs.readFileSync(`/proc/${d}/stat`, 'utf8');
      const ppid = Number(stat.slice(stat.lastIndexOf(')') + 2).split(' ')[1]);
      if (!kids.has(ppid)) kids.set(ppid, []);
      kids.get(ppid).push(Number(d));
    } catch {}
  }
  const out = [];
  const walk = (pid) => {
    for (const k of kids.get(pid) || []) {
      try {
        const cmd = fs.readFileSync(`/proc/${k}/cmdline`, 'utf8').split(/[\0 ]+/); // Chromium rewrites its argv into one string
        const status = fs.readFileSync(`/proc/${k}/status`, 'utf8');
        const kb = (f) => Number((status.match(new RegExp(`${f}:\\s+(\\d+)`)) || [0, 0])[1]);
        if (/chrom/.test(cmd[0])) {
          const t = cmd.find((a) => a.startsWith('--type='));
          const type = t ? t.slice(7) + (cmd.includes('--utility-sub-type=network.mojom.NetworkService') ? ':network' : '') : 'browser';
          out.push({ pid: k, type, hwm_mib: Math.round(kb('VmHWM') / 1024), rss_mib: Math.round(kb('VmRSS') / 1024) });
        }
      } catch {}
      walk(k);
    }
  };
  walk(process.pid);
  return out;
}

// The peak per process type seen so far (VmHWM only grows, but a process may have exited).
function notePeaks(peaks) {
  for (const p of chromiumProcs()) {
    const key = `${p.type}#${p.pid}`;
    peaks[key] = Math.max(peaks[key] || 0, p.hwm_mib);
  }
}

// The worker's wasm memory, read from the same module instance (the worker imported this URL:
// pkg/mt/ when the page runs its multithreaded CPU engine).
async function wasmMemory(page, origin) {
  const w = page.workers()[0];
  if (!w) return null;
  const engine = await page.evaluate(() => window.clipitApp.backend && window.clipitApp.backend.engine);
  try {
    return await w.evaluate(async (url) => {
      const m = await import(url);
      const wasm = await m.default();
      return wasm.memory.buffer.byteLength;
    }, `${origin}/pkg/${engine === 'mt' ? 'mt/' : ''}clipit.js`);
  } catch (e) {
    return `unreadable: ${e.message}`;
  }
}

async function uaMemory(page) {
  return page.evaluate(async () => {
    if (!self.crossOriginIsolated || !performance.measureUserAgentSpecificMemory) return `not available (crossOriginIsolated ${self.crossOriginIsolated})`;
    const r = await Promise.race([performance.measureUserAgentSpecificMemory(), new Promise((res) => setTimeout(() => res(null), 60000))]);
    return r ? r.bytes : 'timed out';
  });
}

const maxDiff = (a, b) => (a.length !== b.length ? Infinity : a.reduce((m, x, i) => Math.max(m, Math.abs(x - b[i])), 0));

async function runScenario(sc, port) {
  log(`\n== full-size model, ${sc.name}`);
  const rec = { scenario: sc.name };
  const peaks = {};
  const { page, origin, close } = await openBrowser(sc, port);
  const sampler = setInterval(() => notePeaks(peaks), 500);
  try {
    await page.goto(`${origin}/?demo=0`);
    await page.waitForFunction(() => document.body.dataset.ready, null, { timeout: 120000 });
    const backend = await page.evaluate(() => window.clipitApp.backend);
    rec.init_backend = backend.backend;
    rec.init_reason = backend.reason || null;
    check(backend.backend === sc.expect, `init chose ${backend.backend}${backend.reason ? ` (${backend.reason})` : ''}`);
    rec.wasm_bytes_before = await wasmMemory(page, origin);

    const files = fs.readdirSync(MODEL).filter((f) => f !== 'expected.safetensors').sort().map((f) => path.join(MODEL, f));
    const t0 = Date.now();
    await page.setInputFiles('#model-files', files);
    await page.waitForFunction(
      () => window.clipitApp.model || (document.body.dataset.busy === '0' && window.clipitApp.busy === 0 && document.querySelector('#status').dataset.kind === 'error'),
      null,
      { timeout: STEP_MS, polling: 250 },
    );
    rec.load_wall_ms = Date.now() - t0;
    const model = await page.evaluate(() => window.clipitApp.model);
    notePeaks(peaks);
    rec.wasm_bytes_after_load = await wasmMemory(page, origin);
    if (!model) {
      rec.loaded = false;
      rec.error = await page.textContent('#status');
      check(false, `the full-size model loads on ${sc.name}: ${rec.error}`);
      return rec;
    }
    rec.loaded = true;
    Object.assign(rec, { architecture: model.architecture, parameters: model.parameters, backend: model.backend, reason: model.reason || null, load_ms: model.load_ms, warmup_ms: model.warmup_ms });
    check(model.backend === sc.expect, `loaded ${model.architecture}, ${model.parameters} parameters, on ${model.backend} in ${model.load_ms.toFixed(0)} ms (${rec.load_wall_ms} ms from the file input)${model.reason ? `: ${model.reason}` : ''}`);
    // Let the page's IndexedDB copy of the files (models.remember) settle before the next step.
    await page.waitForFunction(() => document.body.dataset.busy === '0' && window.clipitApp.busy === 0, null, { timeout: STEP_MS, polling: 250 });

    // One tile and one text, in the worker, against the native clipit embed.
    const t1 = Date.now();
    let timer;
    const timeout = new Promise((_, reject) => (timer = setTimeout(() => reject(new Error(`embedding did not finish in ${STEP_MS} ms`)), STEP_MS)));
    const emb = await Promise.race([timeout, page.evaluate(
      async ([name, b64, text]) => {
        const bytes = Uint8Array.from(atob(b64), (c) => c.charCodeAt(0));
        const app = window.clipitApp;
        await app.call('addTiles', { items: [{ id: 'full-size-tile', name, buffer: bytes.buffer }] }, { transfer: [bytes.buffer] });
        const img = await app.call('embedImages', { ids: ['full-size-tile'] });
        const txt = await app.call('embedTexts', { texts: [text] });
        await app.call('removeTiles', { ids: ['full-size-tile'] });
        return { img: img.images[0], txt: txt.embeddings[0] };
      },
      [path.basename(TILE), fs.readFileSync(TILE).toString('base64'), TEXT],
    )]).finally(() => clearTimeout(timer));
    rec.embed_ms = Date.now() - t1;
    check(!emb.img.error, `the tile embeds (${emb.img.error || `${emb.img.embedding.length} dimensions`}) with the text in ${rec.embed_ms} ms`);
    rec.image_max_diff = maxDiff(emb.img.embedding, NATIVE.image_embeds[0]);
    rec.text_max_diff = maxDiff(emb.txt, NATIVE.text_embeds[0]);
    check(rec.image_max_diff <= TOL, `image embedding matches clipit embed (max |diff| ${rec.image_max_diff.toExponential(2)} <= ${TOL})`);
    check(rec.text_max_diff <= TOL, `text embedding matches clipit embed (max |diff| ${rec.text_max_diff.toExponential(2)} <= ${TOL})`);
    rec.wasm_bytes_after_embed = await wasmMemory(page, origin);
    rec.ua_memory_bytes = await uaMemory(page);
    return rec;
  } catch (e) {
    rec.error = rec.error || String(e.message || e);
    check(false, `${sc.name}: ${rec.error}`);
    return rec;
  } finally {
    notePeaks(peaks);
    clearInterval(sampler);
    rec.peak_mib = peaks;
    const byType = {};
    for (const [k, v] of Object.entries(peaks)) {
      const t = k.split('#')[0];
      byType[t] = Math.max(byType[t] || 0, v);
    }
    rec.peak_mib_by_type = byType;
    log(`  ${JSON.stringify(rec)}`);
    await close();
  }
}

const { proc, port } = await startServer();
const records = [];
try {
  for (const sc of SCENARIOS.filter((s) => ONLY.includes(s.name))) records.push(await runScenario(sc, port));
} finally {
  proc.kill();
}
fs.writeFileSync(path.join(OUT, 'full_size.json'), JSON.stringify({ model: MODEL, tile: path.relative(ROOT, TILE), text: TEXT, records }, null, 2));
log(`\n${result.failures ? `${result.failures} check(s) FAILED` : 'all checks passed'}; figures in ${path.join(OUT, 'full_size.json')}`);
process.exit(result.failures ? 1 : 0);
