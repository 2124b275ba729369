// The detail view of one tile: its probabilities and the reports retrieved for it, stepped
// through the visible tiles with the arrows.

/** Wires the dialog; returns { open(tileId) }. */
export function initDetail(ctx) {
  const { app, $, el, fallbackThumbnail, visibleTiles } = ctx;
  let detailId = null;

  function open(id) {
    const t = app.tiles.find((x) => x.id === id);
    if (!t) return;
    detailId = id;
    $('#detail-title').textContent = t.name;
    const img = $('#detail-image');
    img.alt = t.name;
    img.onerror = () => fallbackThumbnail(t, img);
    img.src = t.thumb || t.url;
    const body = $('#detail-probs tbody');
    if (t.probs) {
      const order = t.probs.map((p, i) => [p, i]).sort((a, b) => b[0] - a[0]);
      body.replaceChildren(
        ...order.map(([p, i]) => {
          const bar = el('span', { class: 'bar' }, el('span', {}));
          bar.firstChild.style.setProperty('width', `${(p * 100).toFixed(2)}%`);
          return el('tr', { class: i === t.prediction ? 'top' : '' }, el('th', { scope: 'row', text: app.classes[i] }), el('td', { text: `${(p * 100).toFixed(2)}%` }), el('td', { class: 'bar-cell' }, bar));
        }),
      );
    } else body.replaceChildren(el('tr', {}, el('td', { text: t.error ? `This tile could not be read: ${t.error}` : 'Not classified yet.' })));
    const reports = $('#detail-reports');
    if (t.hits && t.hits.length) {
      reports.replaceChildren(...t.hits.map((h) => el('li', {}, el('p', { class: 'report-meta', text: `#${h.rank} · report ${h.id} · cosine ${h.score.toFixed(4)}` }), el('p', { class: 'report-text', text: h.text }))));
    } else reports.replaceChildren(el('li', { class: 'muted', text: app.corpus ? 'Not retrieved yet: press “Classify the tiles”.' : 'Pick a report corpus (step 3) to see the most similar reports.' }));
    const dialog = $('#detail');
    if (!dialog.open) dialog.showModal();
  }

  function step(delta) {
    const list = visibleTiles();
    const i = list.findIndex((t) => t.id === detailId);
    if (i < 0 || !list.length) return;
    open(list[(i + delta + list.length) % list.length].id);
  }

  $('#detail-close').addEventListener('click', () => $('#detail').close());
  $('#detail-prev').addEventListener('click', () => step(-1));
  $('#detail-next').addEventListener('click', () => step(1));
  $('#detail').addEventListener('keydown', (e) => {
    if (e.key === 'ArrowLeft') step(-1);
    if (e.key === 'ArrowRight') step(1);
  });
  $('#detail').addEventListener('click', (e) => e.target === $('#detail') && $('#detail').close());
  return { open };
}
