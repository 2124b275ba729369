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

/**
 * Loads the bundle: the report corpus (step 3), the labelled tiles (Train panel, and the Tiles
 * panel with the class names as zero-shot classes), then the model, which classifies them.
 */
export async function loadDemo(ctx, index) {
  const { app, $, busy } = ctx;
  const tiles = [];
  await busy('Fetching the demo bundle', async () => {
    if (index.reports) await ctx.setCorpus(await fetchFile(`demo/${encodeURIComponent(index.reports)}`, index.reports));
    for (const [cls, names] of Object.entries(index.tiles || {})) {
      for (const n of names) {
        const file = await fetchFile(`demo/tiles/${encodeURIComponent(cls)}/${encodeURIComponent(n)}`, n);
        tiles.push({ file, path: `${cls}/${n}` });
      }
    }
  });
  const classes = Object.keys(index.tiles || {});
  if (classes.length >= 2) $('#classes').value = classes.join('\n');
  if (tiles.length) {
    await app.trainPanel.setLabelled(tiles);
    if (!app.tiles.length) await ctx.addTiles(tiles);
  }
  const files = await Promise.all(index.model.map((f) => fetchFile(`demo/model/${encodeURIComponent(f)}`, f)));
  await ctx.loadModel(index.name || 'Demo model', files, { cache: false });
}
