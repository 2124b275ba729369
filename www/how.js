// The "How it works" panel: the current tiles and reports on a 2-D PCA map of the shared CLIP
// space (computed in the worker by clipit::embed::pca_2d), each tile joined to its retrieved
// report, and beside it the CLIP-IT pipeline with live numbers from this session.
// State is in app.how (read by the end-to-end test).

const SVG = 'http://www.w3.org/2000/svg';
const W = 480;
const H = 360;
const PAD = 14;

const svgEl = (tag, attrs = {}) => {
  const node = document.createElementNS(SVG, tag);
  for (const [k, v] of Object.entries(attrs)) node.setAttribute(k, v);
  return node;
};
const rgb = (c) => `rgb(${c[0]}, ${c[1]}, ${c[2]})`;

export function initHow(ctx) {
  const { app, $, el, call } = ctx;
  const S = { state: 'idle', map: null, error: null, selected: -1, seq: 0 };
  app.how = S;
  const svg = $('#how-map');

  /** Recomputes the map (from the worker's cached embeddings) after each classification. */
  async function refresh() {
    const ready = app.model && app.model.has_text && app.corpus && app.tiles.length;
    const seq = ++S.seq;
    if (!ready) {
      Object.assign(S, { state: 'idle', map: null, error: null, selected: -1 });
      draw();
      return;
    }
    S.state = 'running';
    $('#how-status').textContent = 'Projecting the embeddings…';
    try {
      const map = await call('howMap', { classes: app.classes.length });
      if (seq !== S.seq) return;
      Object.assign(S, { state: 'done', map, error: null, selected: -1 });
    } catch (err) {
      if (seq !== S.seq) return;
      Object.assign(S, { state: 'error', map: null, error: err.message });
    }
    draw();
    steps();
  }

  const tileById = () => new Map(app.tiles.map((t) => [t.id, t]));

  function describe(i) {
    const m = S.map;
    const p = m.tiles[i];
    const t = tileById().get(p.name);
    const cls = t && t.prediction !== null ? `${app.classes[t.prediction]} (${(t.probs[t.prediction] * 100).toFixed(1)} %)` : 'not classified';
    return `${t ? t.name : p.name}: ${cls}; retrieved report ${m.reports[p.report].id}, cosine ${p.score.toFixed(3)}.`;
  }

  function draw() {
    const m = S.map;
    svg.replaceChildren(svgEl('title', { id: 'how-map-title' }));
    svg.firstChild.textContent = 'Tiles and reports on the first two principal components of the shared CLIP space';
    $('#how-legend').replaceChildren();
    if (!m) {
      $('#how-status').textContent = S.error ? `The map failed: ${S.error}` : 'Load a model with a text encoder, a report corpus and tiles to see the map.';
      $('#how-status').dataset.kind = S.error ? 'error' : 'info';
      $('#how-tile').textContent = '';
      return;
    }
    const pts = [...m.tiles, ...m.reports];
    const xs = pts.map((p) => p.x);
    const ys = pts.map((p) => p.y);
    const [x0, x1, y0, y1] = [Math.min(...xs), Math.max(...xs), Math.min(...ys), Math.max(...ys)];
    // One scale for both axes, so that distances on the map are distances in the projection.
    const s = Math.min((W - 2 * PAD) / Math.max(x1 - x0, 1e-9), (H - 2 * PAD) / Math.max(y1 - y0, 1e-9));
    const X = (x) => PAD + (x - x0) * s + (W - 2 * PAD - (x1 - x0) * s) / 2;
    const Y = (y) => H - PAD - (y - y0) * s - (H - 2 * PAD - (y1 - y0) * s) / 2;
    const byId = tileById();
    const links = svgEl('g', { class: 'how-links' });
    const reports = svgEl('g', { class: 'how-reports' });
    const tiles = svgEl('g', { class: 'how-tiles' });
    for (const r of m.reports) {
      const [cx, cy] = [X(r.x), Y(r.y)];
      reports.append(svgEl('path', { d: `M${cx} ${cy - 4}L${cx + 4} ${cy}L${cx} ${cy + 4}L${cx - 4} ${cy}Z` }));
    }
    m.tiles.forEach((p, i) => {
      const r = m.reports[p.report];
      links.append(svgEl('line', { x1: X(p.x), y1: Y(p.y), x2: X(r.x), y2: Y(r.y) }));
      const t = byId.get(p.name);
      const c = t && t.prediction !== null && m.colors[t.prediction] ? rgb(m.colors[t.prediction]) : '#888';
      const dot = svgEl('circle', { cx: X(p.x), cy: Y(p.y), r: i === S.selected ? 6 : 3.5, fill: c, 'data-i': i, class: i === S.selected ? 'selected' : '' });
      dot.append(svgEl('title'));
      dot.firstChild.textContent = describe(i);
      tiles.append(dot);
    });
    svg.append(links, reports, tiles);
    const legend = app.classes.map((c, i) => {
      const swatch = el('span', { class: 'swatch', 'aria-hidden': 'true' });
      swatch.style.setProperty('background', m.colors[i] ? rgb(m.colors[i]) : '#888');
      return el('li', {}, swatch, `tile predicted ${c}`);
    });
    legend.push(el('li', {}, el('span', { class: 'swatch report', 'aria-hidden': 'true' }), 'report'), el('li', {}, el('span', { class: 'swatch link', 'aria-hidden': 'true' }), 'tile → its top report'));
    $('#how-legend').replaceChildren(...legend);
    const pct = (v) => `${(v * 100).toFixed(1)} %`;
    $('#how-status').dataset.kind = 'info';
    $('#how-status').textContent = `${m.tiles.length} tiles and ${m.reports.length} reports (${m.dim}-D, L2-normalised); the axes hold ${pct(m.explained[0])} and ${pct(m.explained[1])} of the variance.`;
    $('#how-tile').textContent = S.selected >= 0 ? describe(S.selected) : 'Focus the map and use the arrow keys, or click a tile, to see its report.';
  }

  function select(i) {
    if (!S.map || !S.map.tiles.length) return;
    S.selected = (i + S.map.tiles.length) % S.map.tiles.length;
    draw();
  }

  const fmt = (v, d = 3) => (Number.isFinite(v) ? v.toFixed(d) : '—');

  /** The pipeline steps' live numbers. */
  function steps() {
    const m = S.map;
    const T = app.train || {};
    const n = app.tiles.length;
    const reports = m ? m.reports.length : null;
    const set = (id, text) => $(id).textContent !== text && ($(id).textContent = text);
    set('#how-step-retrieval', m
      ? `${m.tiles.length} tiles × ${reports} reports compared by cosine in the ${m.dim}-D space; mean top-1 similarity ${fmt(m.mean_top1)}.`
      : `${n} tiles; ${app.corpus ? 'the map is not drawn yet' : 'no report corpus yet (step 3)'}.`);
    const distinct = m ? new Set(m.tiles.map((t) => t.report)).size : 0;
    set('#how-step-pairs', m
      ? `${m.tiles.length} (tile, report) pseudo-pairs using ${distinct} distinct reports${T.prep ? `; training holds ${T.prep.train} pairs, ${T.prep.val} tiles for validation` : ''}.`
      : 'Each tile takes its most similar report as its text: no manual captions.');
    const last = (a) => (a && a.length ? a[a.length - 1][1] : NaN);
    set('#how-step-distill', T.total
      ? `${T.state}: step ${T.stepsDone} of ${T.total}; training loss ${fmt(last(T.losses))}; validation balanced accuracy ${fmt(last(T.vals))}.`
      : 'Not trained yet (Train panel): LoRA on the image encoder learns the class and the report embedding (CE + λ·(1 − cos)).');
    const classes = app.classes.length;
    set('#how-step-infer', app.trained
      ? `${n} tiles classified by the trained image encoder and heads alone (no text, no reports) into ${classes} classes.`
      : `${n} tiles classified zero-shot against ${classes} class prompts; train to classify with the image encoder alone.`);
  }

  svg.addEventListener('click', (e) => {
    const i = e.target.getAttribute && e.target.getAttribute('data-i');
    if (i !== null && i !== undefined) select(Number(i));
  });
  svg.addEventListener('keydown', (e) => {
    const delta = { ArrowRight: 1, ArrowDown: 1, ArrowLeft: -1, ArrowUp: -1 }[e.key];
    if (!delta) return;
    e.preventDefault();
    select(S.selected < 0 ? (delta > 0 ? 0 : -1) : S.selected + delta);
  });
  document.addEventListener('clipit:classified', () => refresh());
  setInterval(steps, 1000);
  draw();
  steps();
  return { refresh };
}
