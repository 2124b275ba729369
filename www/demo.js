// The demo bundle: a small CLIP-like model, its report corpus and labelled tiles, served by
// serve.py at /demo/ (same origin) when data/demo/ exists. /demo/index.json lists the files.

/** The bundle's index ({name, model: [file], reports, tiles: {class: [file]}}), or null. */
export async function findDemo() {
  try {
    const r = await fetch('demo/index.json', { cache: 'no-store' });
    if (!r.ok) return null;
    const index = await r.json();
    return index && Array.isArray(index.model) && index.model.length ? index : null;
  } catch {
    return null;
  }
}

async function fetchFile(url, name) {
  const r = await fetch(url);
  if (!r.ok) throw new Error(`${url}: HTTP ${r.status}`);
  return new File([await r.blob()], name);
}

/** The held-out figures and the tiles' source, for the demo box (index.heldout, index.split). */
export function describeDemo(index) {
  const h = index.heldout;
  const parts = [];
  if (h && Number.isFinite(h.balanced_accuracy)) {
    const n = h.tiles ? ` on ${h.tiles} held-out tiles` : ' on held-out tiles';
    parts.push(`Zero-shot${n} (${h.source || 'never trained on'}): balanced accuracy ${h.balanced_accuracy.toFixed(3)}${Number.isFinite(h.auroc) ? `, AUROC ${h.auroc.toFixed(3)}` : ''}.`);
  }
  if (index.split && index.split.source) parts.push(`Its sample tiles: ${index.split.source}.`);
  return parts.join(' ');
}

/**
 * Loads the bundle: the report corpus (step 3), the labelled tiles (Train panel, and the Tiles
 * panel with the class names as zero-shot classes), then the model, which classifies them. A
 * bundle with a split (tiles.json) shows its `show` tiles in the Tiles panel and trains on its
 * `train` tiles; without one, every tile goes to both.
 */
export async function loadDemo(ctx, index) {
  const { app, $, busy } = ctx;
  const all = index.tiles || {};
  const split = index.split && index.split.show && index.split.train ? index.split : { show: all, train: all };
  const fetched = new Map();
  const fetchTiles = async (listing) => {
    const out = [];
    for (const [cls, names] of Object.entries(listing)) {
      for (const n of names) {
        const key = `${cls}/${n}`;
        if (!fetched.has(key)) fetched.set(key, await fetchFile(`demo/tiles/${encodeURIComponent(cls)}/${encodeURIComponent(n)}`, n));
        out.push({ file: fetched.get(key), path: key });
      }
    }
    return out;
  };
  let show = [];
  let train = [];
  await busy('Fetching the demo bundle', async () => {
    if (index.reports) await ctx.setCorpus(await fetchFile(`demo/${encodeURIComponent(index.reports)}`, index.reports));
    show = await fetchTiles(split.show);
    train = await fetchTiles(split.train);
  });
  const classes = Object.keys(all);
  if (classes.length >= 2) $('#classes').value = classes.join('\n');
  if (train.length) await app.trainPanel.setLabelled(train);
  if (show.length && !app.tiles.length) await ctx.addTiles(show);
  const files = await Promise.all(index.model.map((f) => fetchFile(`demo/model/${encodeURIComponent(f)}`, f)));
  await ctx.loadModel(index.name || 'Demo model', files, { cache: false });
}
