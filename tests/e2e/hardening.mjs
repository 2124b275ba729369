// Hardening of the page end to end (issue 6), on one backend, with the demo bundle that run.sh
// builds from the fixtures ($E2E_DEMO, served at /demo/ by the e2e server):
//   - training survives a reload: while training, the adapter checkpoint is kept in IndexedDB
//     (one record per model, overwritten); after a reload the Train panel offers it; Discard
//     deletes it; Resume imports it, the tiles are classified with it, and the native library
//     predicts the same with the stored file (examples/adapter_predict, 1e-3); a training that
//     ran to its end keeps its checkpoint without offering it after a reload;
//   - bad tiles among good ones (a zero-byte file, a truncated PNG, a non-image, a PNG whose
//     header claims 100000x100000 pixels): each named with what is wrong in the grid or the
//     status, the good tiles classified, and classifying again works;
//   - bad models (a truncated safetensors, a config of garbage): a clear error naming the file;
//     a model too large for the tab (from its header) is refused with the figures; then the demo
//     model loads again and classifies;
//   - a labels CSV (file,class) dropped with images in the Train panel, and one with a bad line.
import fs from 'node:fs';
import path from 'node:path';
import zlib from 'node:zlib';
import { OUT, ROOT, STEP_TIMEOUT, check, compareTrained, dropItems, exportCsv, holdLoop, idle, log, nativePredictions, openBrowser, waitHeld } from './lib.mjs';

const TILE = path.join(ROOT, 'tests/data/tiles/kather_tumor.png');
const FIXTURE = path.join(ROOT, 'tests/fixtures/open_clip');

/** A PNG whose header claims `w` x `h` pixels, with a few bytes of data (a decompression bomb's look). */
function pngHeaderOnly(w, h) {
  const chunk = (kind, data) => {
    const body = Buffer.concat([Buffer.from(kind, 'latin1'), data]);
    const out = Buffer.alloc(body.length + 8);
    out.writeUInt32BE(data.length, 0);
    body.copy(out, 4);
    out.writeUInt32BE(zlib.crc32(body), body.length + 4);
    return out;
  };
  const ihdr = Buffer.alloc(13);
  ihdr.writeUInt32BE(w, 0);
  ihdr.writeUInt32BE(h, 4);
  ihdr.set([8, 2, 0, 0, 0], 8);
  return Buffer.concat([Buffer.from('\x89PNG\r\n\x1a\n', 'latin1'), chunk('IHDR', ihdr), chunk('IDAT', Buffer.alloc(16)), chunk('IEND', Buffer.alloc(0))]);
}

/** Waits until the page is idle; returns the status line and its kind (an error is allowed). */
async function settled(page) {
  await page.waitForFunction(() => document.body.dataset.busy === '0' && window.clipitApp.busy === 0, null, { timeout: STEP_TIMEOUT, polling: 100 });
  return { text: await page.textContent('#status'), kind: await page.getAttribute('#status', 'data-kind') };
}

/** The demo loaded and its checkpoint looked up (the Train panel's offer is decided). */
async function demoReady(page, what) {
  await page.waitForFunction(() => document.body.dataset.demo && window.clipitApp.model && window.clipitApp.checkpoint.checked, null, { timeout: STEP_TIMEOUT, polling: 100 });
  await idle(page, what);
}

/** The checkpoints kept in this browser's IndexedDB, without their bytes unless asked. */
function storedCheckpoints(page, withBytes = false) {
  return page.evaluate(
    (withBytes) =>
      new Promise((resolve, reject) => {
        const open = indexedDB.open('clipit-checkpoints', 1);
        open.onupgradeneeded = () => open.result.createObjectStore('checkpoints', { keyPath: 'key' });
        open.onerror = () => reject(open.error);
        open.onsuccess = () => {
          const req = open.result.transaction('checkpoints').objectStore('checkpoints').getAll();
          req.onsuccess = () => {
            open.result.close();
            const b64 = (u8) => btoa(Array.from(u8, (c) => String.fromCharCode(c)).join(''));
            resolve(req.result.map((r) => ({ key: r.key, step: r.step, total: r.total, finished: r.finished, classes: r.classes, size: r.bytes.length, bytes: withBytes ? b64(r.bytes) : null })));
          };
          req.onerror = () => reject(req.error);
        };
      }),
    withBytes,
  );
}

/** Starts a long training and waits until at least two checkpoints were kept; then reloads. */
async function trainThenReload(page, label) {
  for (const [id, v] of Object.entries({ '#hp-epochs': 200, '#hp-batch': 4, '#hp-val-every': 100000 })) await page.fill(id, String(v));
  await page.evaluate(() => (window.clipitApp.train.maxChunk = 1));
  // Held (a test hook) once a checkpoint at step 10 is kept: the reload lands there on any machine speed.
  await holdLoop(page, 'train', { checkpoint: 10 });
  await page.click('#train-start');
  await waitHeld(page, 'train');
  const st = await page.evaluate(() => ({ saved: window.clipitApp.checkpoint.saved, error: window.clipitApp.train.error || window.clipitApp.checkpoint.error, state: window.clipitApp.train.state }));
  check(st.saved && !st.saved.finished && st.state === 'running', `${label}: the running training keeps its checkpoint (step ${st.saved && st.saved.step} of ${st.saved && st.saved.total}, ${st.saved && st.saved.size} bytes${st.error ? `; ${st.error}` : ''})`);
  await page.reload();
  await demoReady(page, `${label}: the page reloads mid-training and loads the demo again`);
  const kept = await storedCheckpoints(page);
  check(kept.length === 1 && !kept[0].finished && kept[0].step === 10, `${label}: IndexedDB holds one checkpoint for the model, overwritten every 5 steps (${JSON.stringify(kept.map(({ step, total, finished }) => ({ step, total, finished })))})`);
  const offer = (await page.isVisible('#checkpoint-offer')) && (await page.textContent('#checkpoint-text'));
  const m = offer && offer.match(/An interrupted training left an adapter at step (\d+) of (\d+) \(/);
  check(m && Number(m[1]) === kept[0].step && Number(m[2]) === kept[0].total, `${label}: the Train panel offers it: "${offer}"`);
  return kept[0];
}

async function checkResume(page, sc) {
  await trainThenReload(page, 'discard');
  await page.click('#checkpoint-discard');
  await page.waitForFunction(() => document.querySelector('#checkpoint-offer').hidden, null, { timeout: 10000 });
  check((await storedCheckpoints(page)).length === 0 && !(await page.evaluate(() => window.clipitApp.trained)), 'Discard deletes the checkpoint and leaves zero-shot on');

  const kept = await trainThenReload(page, 'resume');
  check(!(await page.evaluate(() => window.clipitApp.trained)), 'before Resume the tiles are classified zero-shot');
  await page.click('#checkpoint-resume');
  await page.waitForFunction(() => window.clipitApp.trained, null, { timeout: STEP_TIMEOUT });
  await idle(page, 'resume with the checkpoint + classify');
  const info = await page.textContent('#adapter-info');
  check(info.includes(`interrupted training, resumed at step ${kept.step} of ${kept.total}`) && (await page.isHidden('#checkpoint-offer')), `the adapter is active: ${info}`);
  check(/with the trained model/.test(await page.textContent('#status')), 'the tiles are classified with it');
  const [stored] = await storedCheckpoints(page, true);
  const file = path.join(OUT, `clipit-checkpoint-${sc.name}.safetensors`);
  fs.writeFileSync(file, Buffer.from(stored.bytes, 'base64'));
  const native = nativePredictions(file);
  check(native.classes.join() === kept.classes.join(), `the native library reads the stored checkpoint (${native.classes.join(', ')})`);
  compareTrained(await exportCsv(page), native, 'resumed checkpoint');
}

async function checkBadTiles(page) {
  const good = fs.readFileSync(TILE);
  const bad = {
    'empty.png': { bytes: Buffer.alloc(0), want: /empty file \(0 bytes\)/ },
    'truncated.png': { bytes: good.subarray(0, 300), want: /cannot decode image/ },
    'bomb.png': { bytes: pngHeaderOnly(100000, 100000), want: /100000x100000 .*above the limit/ },
  };
  const before = await page.evaluate(() => window.clipitApp.tiles.length);
  const items = [{ name: 'good-1.png', bytes: good }, ...Object.entries(bad).map(([name, b]) => ({ name, bytes: b.bytes })), { name: 'notes.txt', bytes: Buffer.from('not an image\n') }, { name: 'good-2.png', bytes: good }];
  await dropItems(page, '#tile-drop', items);
  await page.waitForFunction((n) => window.clipitApp.tiles.length === n, before + 5, { timeout: 30000 });
  const status = await settled(page);
  check(status.kind === 'error' && /3 could not be read/.test(status.text) && /Skipped notes\.txt: not a PNG, JPEG or TIFF image/.test(status.text), `the status names each bad file: ${status.text}`);
  const tiles = await page.evaluate(() => window.clipitApp.tiles.map((t) => ({ name: t.name, error: t.error, prediction: t.prediction })));
  for (const [name, b] of Object.entries(bad)) {
    const shown = await page.locator(`#grid .tile.failed:has(.tile-name:text-is("${name}")) .tile-error`).textContent().catch(() => '');
    check(b.want.test(shown) && status.text.includes(`${name}: `), `${name}: the grid says why (${shown})`);
  }
  const ok = tiles.filter((t) => !bad[t.name]);
  check(ok.length === before + 2 && ok.every((t) => t.prediction !== null && !t.error), `the ${ok.length} good tiles are classified among them`);
  await page.click('#classify');
  const again = await settled(page);
  const after = await page.evaluate(() => window.clipitApp.tiles.filter((t) => t.prediction !== null).length);
  check(/Classified \d+ tile/.test(again.text) && after === ok.length, `classifying again works: ${again.text}`);
}

async function checkBadModels(page) {
  const weights = fs.readFileSync(path.join(FIXTURE, 'open_clip_model.safetensors'));
  const config = fs.readFileSync(path.join(FIXTURE, 'open_clip_config.json'));
  const cases = [
    ['a truncated safetensors', [{ name: 'open_clip_config.json', bytes: config }, { name: 'open_clip_model.safetensors', bytes: weights.subarray(0, weights.length >> 1) }], /open_clip_model\.safetensors: .*(truncated|outside)/],
    ['a config of garbage', [{ name: 'open_clip_config.json', bytes: Buffer.from([0xff, 0x00, 0x7b, 0x22, 0x9c, 0x01]) }, { name: 'open_clip_model.safetensors', bytes: weights }], /open_clip_config\.json: invalid JSON/],
  ];
  for (const [what, files, want] of cases) {
    const before = await page.textContent('#status');
    await dropItems(page, '#model-drop', files);
    const failed = (prev) => document.querySelector('#status').dataset.kind === 'error' && document.querySelector('#status').textContent !== prev && window.clipitApp.busy === 0;
    await page.waitForFunction(failed, before, { timeout: STEP_TIMEOUT, polling: 100 });
    const status = await settled(page);
    check(want.test(status.text) && !(await page.evaluate(() => window.clipitApp.model)), `${what}: ${status.text}`);
  }
  // Too large for the tab: a 4 GB checkpoint (one tensor of 2 G f16 weights), judged from its header alone.
  const header = Buffer.from(JSON.stringify({ w: { dtype: 'F16', shape: [2000000000], data_offsets: [0, 4000000000] } }));
  const len = Buffer.alloc(8);
  len.writeBigUInt64LE(BigInt(header.length));
  const head = Buffer.concat([len, header]).toString('base64');
  const refused = await page.evaluate(async ([b64, size]) => {
    const buffer = Uint8Array.from(atob(b64), (c) => c.charCodeAt(0)).buffer;
    return window.clipitApp.call('checkModelMemory', { files: [{ name: 'huge.safetensors', size, head: buffer }] }).then(() => 'accepted', (e) => e.message);
  }, [head, 8 + header.length + 4000000000]);
  check(/^this model needs about 20\.0 GB .*the page's CPU fallback can hold about 3\.8 GB/.test(refused), `a model too large for the tab is refused before it is read: ${refused}`);
  await page.click('#load-demo');
  await page.waitForFunction(() => window.clipitApp.model && window.clipitApp.model.name === 'Demo model', null, { timeout: STEP_TIMEOUT });
  await settled(page);
  const st = await page.evaluate(() => ({ classified: window.clipitApp.tiles.filter((t) => t.prediction !== null).length, crashed: document.querySelector('#status').textContent.includes('engine stopped') }));
  check(st.classified > 0 && !st.crashed, `then the demo model loads and classifies ${st.classified} tiles`);
}

async function checkFinishedIsQuiet(page) {
  await page.fill('#hp-epochs', '1');
  await page.evaluate(() => (window.clipitApp.train.maxChunk = 64));
  await page.click('#train-start');
  await page.waitForFunction(() => window.clipitApp.train.state === 'done' || window.clipitApp.train.error, null, { timeout: STEP_TIMEOUT });
  await settled(page); // the bad tiles of checkBadTiles are still there: their errors are expected
  check((await page.evaluate(() => window.clipitApp.train.state)) === 'done', 'a short training runs to its end');
  await page.reload();
  await demoReady(page, 'the page reloads after a finished training');
  const kept = await storedCheckpoints(page);
  check(kept.length === 1 && kept[0].finished && kept[0].step === kept[0].total && (await page.isHidden('#checkpoint-offer')), `a finished training keeps its checkpoint (step ${kept[0] && kept[0].step} of ${kept[0] && kept[0].total}) without offering it`);
}

/** The hardening checks on scenario `sc` (one backend), against the e2e server on `port`. */
/** Train panel: images dropped with a `file,class` CSV; then a CSV with a bad line. */
async function checkLabelsCsv(page) {
  const tile = fs.readFileSync(TILE);
  const images = ['a.png', 'b.png', 'c.png', 'extra.png'].map((name) => ({ name, bytes: tile }));
  const csv = (text) => ({ name: 'labels.csv', bytes: Buffer.from(text) });
  const status = async () => page.textContent('#status');
  await dropItems(page, '#train-drop', [...images, csv('file,class\na.png,tumor\nb.png,stroma\n"c.png",tumor\ngone.png,stroma\n')]);
  await page.waitForFunction(() => /labels\.csv/.test(document.querySelector('#status').textContent), null, { timeout: STEP_TIMEOUT });
  const t = await page.evaluate(() => ({ n: window.clipitApp.train.items.length, classes: window.clipitApp.train.classes }));
  const said = await status();
  check(t.n === 3 && t.classes.join() === 'stroma,tumor' && /1 listed file\(s\) were not given: gone\.png/.test(said) && /1 image\(s\) are not in it.*extra\.png/.test(said), `a labels CSV gives the classes of the files beside it (${t.n} tiles, ${t.classes.join(', ')}): ${said}`);
  await dropItems(page, '#train-drop', [...images, csv('file,class\na.png,tumor\nb.png\n')]);
  await page.waitForFunction(() => document.querySelector('#status').dataset.kind === 'error', null, { timeout: STEP_TIMEOUT });
  const bad = await status();
  check(/labels\.csv: line 3: 1 fields, but the header has 2/.test(bad), `a bad labels CSV names its line: ${bad}`);
}

export async function runHardening(sc, port) {
  log(`\n== scenario ${sc.name}: hardening (training survives a reload, bad tiles, bad models)`);
  const { page, origin, close } = await openBrowser(sc, port, { width: 1280, height: 800 });
  const t0 = Date.now();
  try {
    await page.goto(`${origin}/${sc.expect === 'webgpu' ? '?backend=webgpu' : ''}`);
    await demoReady(page, 'the demo bundle loads');
    await checkResume(page, sc);
    await checkBadTiles(page);
    await page.locator('#tiles').screenshot({ path: path.join(OUT, `clipit-e2e-${sc.name}-bad-tiles.png`) });
    await checkBadModels(page);
    await checkFinishedIsQuiet(page);
    await checkLabelsCsv(page);
  } finally {
    await close();
  }
  return { hardening_ms: Date.now() - t0 };
}
