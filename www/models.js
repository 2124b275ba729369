// Model sources beyond the file pickers: the model cache and loading from a URL.
//
// The cache keeps the files of every model loaded from files or a URL in this browser's IndexedDB
// (database "clipit-models"), on this computer only; the Model panel lists them with their size,
// Load and Delete. Loading from a URL downloads the files into the page (never uploads anything);
// the server's Content-Security-Policy must allow the URL's origin (serve.py --allow-origin), and
// a blocked download says so. State is in app.models (read by the end-to-end test).

const DB = 'clipit-models';
const STORE = 'models';

function openDb(name, store) {
  return new Promise((resolve, reject) => {
    const req = indexedDB.open(name, 1);
    req.onupgradeneeded = () => req.result.createObjectStore(store, { keyPath: 'key' });
    req.onsuccess = () => resolve(req.result);
    req.onerror = () => reject(req.error || new Error('IndexedDB is not available'));
  });
}

/**
 * Runs `fn(store)` in one transaction on the object store `store` (records keyed by `key`) of
 * this browser's IndexedDB database `name`; resolves with the request's result. Each module
 * keeps its own database (checkpoints.js too), so none has to migrate another's.
 */
export async function withDbStore(name, store, mode, fn) {
  const db = await openDb(name, store);
  try {
    return await new Promise((resolve, reject) => {
      const tx = db.transaction(store, mode);
      const req = fn(tx.objectStore(store));
      tx.oncomplete = () => resolve(req && req.result);
      tx.onerror = () => reject(tx.error);
      tx.onabort = () => reject(tx.error || new Error('the cache transaction was aborted'));
    });
  } finally {
    db.close();
  }
}

const withStore = (mode, fn) => withDbStore(DB, STORE, mode, fn);

const sizeOf = (files) => files.reduce((n, f) => n + f.size, 0);
export const fmtBytes = (n) => (n >= 1e9 ? `${(n / 1e9).toFixed(2)} GB` : n >= 1e6 ? `${(n / 1e6).toFixed(1)} MB` : `${(n / 1e3).toFixed(1)} kB`);

/**
 * The files to download for the URL form: one URL per line, or one folder URL and the file
 * names (separated by spaces or commas). Relative URLs resolve against the page. Throws on
 * anything that is not http(s).
 */
export function urlsOf(text, names, base) {
  const lines = text.split('\n').map((s) => s.trim()).filter(Boolean);
  const list = names.split(/[\s,]+/).filter(Boolean);
  if (!lines.length) throw new Error('type a model URL first');
  let urls;
  if (lines.length === 1 && list.length) {
    const folder = new URL(lines[0].endsWith('/') ? lines[0] : `${lines[0]}/`, base);
    urls = list.map((n) => new URL(encodeURIComponent(n), folder));
  } else urls = lines.map((l) => new URL(l, base));
  for (const u of urls) if (!['http:', 'https:'].includes(u.protocol)) throw new Error(`${u.href}: only http and https URLs can be loaded`);
  return urls.map((u) => ({ url: u.href, name: decodeURIComponent(u.pathname.split('/').pop() || '') || 'file' }));
}

export function initModels(ctx) {
  const { app, $, el, setStatus } = ctx;
  const M = { cached: [], blocked: new Set(), error: null };
  app.models = M;

  // A download that the Content-Security-Policy blocks fails with a bare "Failed to fetch";
  // the violation event says why.
  document.addEventListener('securitypolicyviolation', (e) => {
    if (e.effectiveDirective === 'connect-src' && e.blockedURI) M.blocked.add(new URL(e.blockedURI, location.href).origin);
  });

  async function refreshList() {
    try {
      M.cached = ((await withStore('readonly', (s) => s.getAll())) || []).sort((a, b) => b.saved - a.saved);
      M.error = null;
    } catch (err) {
      M.cached = [];
      M.error = err.message;
    }
    const list = $('#cache-list');
    if (M.error) return list.replaceChildren(el('li', { class: 'muted', text: `The cache is not available in this browser: ${M.error}` }));
    if (!M.cached.length) return list.replaceChildren(el('li', { class: 'muted', text: 'None yet.' }));
    list.replaceChildren(
      ...M.cached.map((m) => {
        const load = el('button', { type: 'button', class: 'secondary', 'aria-label': `Load ${m.name} from the cache`, text: 'Load' });
        const del = el('button', { type: 'button', class: 'secondary', 'aria-label': `Delete ${m.name} from the cache`, text: 'Delete' });
        load.addEventListener('click', () => loadCached(m.key));
        del.addEventListener('click', () => forget(m.key));
        const files = m.files.map((f) => f.name).join(', ');
        return el('li', { 'data-key': m.key }, el('span', { class: 'cache-name', title: files, text: `${m.name} · ${fmtBytes(m.size)} · ${m.files.length} files` }), el('span', { class: 'buttons' }, load, del));
      }),
    );
  }

  /** Keeps a model's files (after it loaded). A model with the same name and files replaces it. */
  async function remember(name, files) {
    const key = `${name}|${files.map((f) => `${f.name}:${f.size}`).sort().join('|')}`;
    try {
      await withStore('readwrite', (s) => s.put({ key, name, files, size: sizeOf(files), saved: Date.now() }));
    } catch (err) {
      setStatus(`${name} loaded, but could not be cached (${err.message}).`, 'error');
    }
    await refreshList();
  }

  async function loadCached(key) {
    const m = await withStore('readonly', (s) => s.get(key));
    if (!m) return setStatus('That model is no longer in the cache.', 'error');
    await ctx.loadModel(m.name, m.files, { cache: false }).catch(() => {});
  }

  async function forget(key) {
    const m = M.cached.find((x) => x.key === key);
    await withStore('readwrite', (s) => s.delete(key));
    await refreshList();
    setStatus(`Deleted ${m ? m.name : 'the model'} from the cache.`);
  }

  async function download({ url, name }) {
    let r;
    try {
      r = await fetch(url, { credentials: 'omit', referrerPolicy: 'no-referrer' });
    } catch (err) {
      const origin = new URL(url).origin;
      await new Promise((res) => setTimeout(res, 0)); // the violation event comes just after
      if (M.blocked.has(origin)) {
        throw new Error(`${url}: blocked by the page's Content-Security-Policy, which allows only its own server. Restart the server with ./build.sh serve --allow-origin ${origin} (or www/serve.py --allow-origin ${origin}) to allow this origin`);
      }
      throw new Error(`${url}: the download failed (${err.message}): the server is unreachable or does not allow cross-origin requests (CORS)`);
    }
    if (!r.ok) throw new Error(`${url}: HTTP ${r.status} ${r.statusText}`.trim());
    return new File([await r.blob()], name);
  }

  async function loadFromUrl() {
    let urls;
    try {
      urls = urlsOf($('#model-url').value, $('#model-url-files').value, location.href);
    } catch (err) {
      return setStatus(err.message, 'error');
    }
    const folder = urls[0].url.split('/').slice(-2, -1)[0] || 'model';
    let files;
    try {
      files = await ctx.busy(`Downloading ${folder}`, async () => {
        const out = [];
        for (const [i, u] of urls.entries()) {
          setStatus(`Downloading ${u.name} (${i + 1} of ${urls.length})…`);
          out.push(await download(u));
        }
        return out;
      });
    } catch {
      return; // busy() showed the error
    }
    await ctx.loadModel(decodeURIComponent(folder), files).catch(() => {});
  }

  $('#model-url-form').addEventListener('submit', (e) => {
    e.preventDefault();
    loadFromUrl();
  });
  refreshList();
  return { remember, refreshList, loadCached, forget };
}
