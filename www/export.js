// The Tiles panel's CSV export: one row per tile with its prediction, confidence, the
// probability of every class and, after retrieval, its top report.

const csvField = (s) => (/[",\n]/.test(s) ? `"${s.replace(/"/g, '""')}"` : s);

/** Downloads the Tiles panel's predictions as clipit-predictions.csv. */
export function exportCsv({ app, el, setStatus }) {
  const retrieval = app.tiles.some((t) => t.hits && t.hits.length);
  const head = ['image', 'prediction', 'confidence', ...app.classes];
  if (retrieval) head.push('top_report_id', 'top_report_score');
  const rows = [head.map(csvField).join(',')];
  for (const t of app.tiles) {
    const pred = t.prediction !== null ? app.classes[t.prediction] : '';
    const probs = t.probs ? t.probs.map((p) => p.toFixed(6)) : app.classes.map(() => '');
    const row = [csvField(t.name), csvField(pred), t.probs ? t.probs[t.prediction].toFixed(6) : '', ...probs];
    if (retrieval) row.push(csvField(t.hits && t.hits[0] ? String(t.hits[0].id) : ''), t.hits && t.hits[0] ? t.hits[0].score.toFixed(6) : '');
    rows.push(row.join(','));
  }
  const blob = new Blob([rows.join('\n') + '\n'], { type: 'text/csv' });
  const a = el('a', { href: URL.createObjectURL(blob), download: 'clipit-predictions.csv' });
  document.body.append(a);
  a.click();
  a.remove();
  setTimeout(() => URL.revokeObjectURL(a.href), 10000);
  setStatus(`Exported ${app.tiles.length} row(s) as clipit-predictions.csv.`);
}
