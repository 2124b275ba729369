// The page as a teacher would host it: `dist/` (scripts/make_dist.py, as `./build.sh dist` writes
// it) served under a sub-path by a plain static file server (Python's http.server: no CSP, COOP or
// COEP headers, no demo listing computed on the fly), on the CPU engine:
//   - the policy travels as a <meta> tag, the service worker makes the page cross-origin isolated
//     after one reload, so the multithreaded engine runs;
//   - the demo loads on open and classifies its sample tiles, trains, maps a slide;
//   - no request leaves the static server's origin; the first view's time beside serve.py's.
import fs from 'node:fs';
import path from 'node:path';
import { STEP_TIMEOUT, check, idle, log, openBrowser, spawnServer } from './lib.mjs';

const SITE = process.env.E2E_DIST_SITE; // the folder served; the page is at /course/clipit/
const SUB = '/course/clipit/';

/** dist/ on a plain static server under a sub-path, on scenario `sc` (the CPU one). */
export async function runDist(sc, slide, serveOpenMs) {
  log(`\n== scenario ${sc.name}: dist/ on a plain static server at ${SUB}`);
  if (!check(Boolean(SITE), 'E2E_DIST_SITE names the folder run.sh wrote dist/ into')) return {};
  // Its first stdout line names the port; its request log (stderr) is left out.
  const { proc, port } = await spawnServer(['-m', 'http.server', '0', '--bind', '127.0.0.1', '--directory', SITE], /port (\d+)/, {}, 'ignore');
  const { page, origin, close, requests } = await openBrowser(sc, port, { width: 1280, height: 800 });
  const timings = {};
  try {
    const head = await fetch(`${origin}${SUB}index.html`);
    check(!head.headers.get('cross-origin-embedder-policy') && !head.headers.get('content-security-policy'), 'the static server sends no COOP, COEP or CSP header');
    const t0 = Date.now();
    // coi.js registers the service worker and reloads the page once through it.
    await page.goto(`${origin}${SUB}`);
    await page.waitForFunction(() => document.body.dataset.demo && window.clipitApp && window.clipitApp.busy === 0 && document.body.dataset.busy === '0', null, { timeout: STEP_TIMEOUT, polling: 200 });
    timings.dist_demo_open_ms = Date.now() - t0;
    await idle(page, 'the demo loads from dist/ and classifies its tiles');
    const st = await page.evaluate(() => ({ isolated: self.crossOriginIsolated, csp: Boolean(document.querySelector('meta[http-equiv="Content-Security-Policy"]')), model: window.clipitApp.model, tiles: window.clipitApp.tiles.length, classified: window.clipitApp.tiles.filter((t) => t.probs).length, href: location.href }));
    check(st.href.startsWith(`${origin}${SUB}`), `the page stays under its sub-path (${st.href})`);
    check(st.csp, 'the Content-Security-Policy is a <meta> tag');
    check(st.isolated, 'the service worker makes the page cross-origin isolated (no headers from the host)');
    check(st.model && st.model.name === 'Demo model' && st.model.backend === 'cpu', `the demo model is loaded on ${st.model && st.model.backend}`);
    check(st.tiles > 0 && st.classified === st.tiles, `all ${st.tiles} sample tiles are classified (${st.classified})`);
    // A bundle with held-out figures (heldout.json) says them in the demo box.
    if (fs.existsSync(path.join(SITE, SUB, 'demo/heldout.json'))) {
      const facts = await page.textContent('#demo-facts');
      check(/held-out tiles/.test(facts) && /balanced accuracy 0\.\d{3}/.test(facts), `the demo box gives the held-out figures: ${facts}`);
    }
    if (serveOpenMs) log(`  demo's first view: ${timings.dist_demo_open_ms} ms from dist/ (service-worker reload included), ${serveOpenMs} ms from www/serve.py (${(timings.dist_demo_open_ms / serveOpenMs).toFixed(2)}x)`);

    await page.fill('#hp-epochs', '1');
    await page.click('#train-start');
    await page.waitForFunction(() => ['done', 'idle'].includes(window.clipitApp.train.state) && !window.clipitApp.train.looping && window.clipitApp.train.stepsDone > 0, null, { timeout: STEP_TIMEOUT });
    await idle(page, 'train from dist/');
    check((await page.evaluate(() => window.clipitApp.train.state)) === 'done', 'a training runs to the end from dist/');

    await page.setInputFiles('#map-file', slide);
    await page.waitForFunction(() => ['done', 'error', 'cancelled'].includes(window.clipitApp.map.state), null, { timeout: STEP_TIMEOUT, polling: 200 });
    check((await page.evaluate(() => window.clipitApp.map.state)) === 'done', 'a slide map is drawn from dist/');
  } finally {
    await close();
    proc.kill();
  }
  const outside = requests.filter((u) => u.startsWith(`${origin}/`) && !u.startsWith(`${origin}${SUB}`));
  check(outside.length === 0, `every request stays under ${SUB}${outside.length ? `: ${outside.join(', ')}` : ''}`);
  return timings;
}
