// Training that survives a reload. While the Train panel trains, the running session's adapter
// (the file "Export adapter" gives: LoRA in peft's layout plus clipit_heads.*) is kept in this
// browser's IndexedDB (database "clipit-checkpoints"), with the model, the classes and the step
// reached, every few steps and at the end, one per model (each save replaces the last). When a
// model loads and an unfinished training of it left a checkpoint, the Train panel offers it:
// "Resume with it" imports it as an adapter (the tiles are then classified with it), "Discard"
// deletes it. Trainings that ran to their end or were stopped are kept too, marked finished, and
// not offered. State is in app.checkpoint (read by the end-to-end test).
import { withDbStore } from './models.js';

const DB = 'clipit-checkpoints';
const STORE = 'checkpoints';
/** Steps between two checkpoints of a running training. */
export const CHECKPOINT_EVERY = 5;

const withStore = (mode, fn) => withDbStore(DB, STORE, mode, fn);
/** What identifies a loaded model across reloads. */
const keyOf = (m) => `${m.name}|${m.architecture}|${m.parameters}|${m.embed_dim}`;

/**
 * The checkpoint store and the Train panel's offer. `importBytes(name, buffer, source)` imports an
 * adapter file (train.js). Returns {save, offer, hide}.
 */
export function initCheckpoints(ctx, { importBytes }) {
  const { app, $, call, setStatus } = ctx;
  // checked: the model last looked up; taken: the checkpoint resumed with
  const C = { saved: null, offered: null, checked: null, taken: null, error: null };
  app.checkpoint = C;

  /** Keeps the running session's adapter as this model's checkpoint (`T`: app.train); resolves
   * to its bytes (undefined when it could not be made). */
  async function save(T, finished) {
    const m = app.model;
    if (!m || !T.prep) return;
    try {
      const bytes = await call('trainCheckpoint');
      const record = {
        key: keyOf(m),
        model: { name: m.name, architecture: m.architecture, parameters: m.parameters },
        classes: T.prep.classes,
        step: T.stepsDone,
        total: T.total,
        saved: Date.now(),
        finished,
        bytes,
      };
      await withStore('readwrite', (s) => s.put(record));
      C.saved = { step: record.step, total: record.total, finished, saved: record.saved, size: bytes.length };
      C.error = null;
      return bytes;
    } catch (err) {
      // Training goes on without it; say so once.
      if (!C.error) setStatus(`The training goes on, but its checkpoint could not be kept in this browser (${err.message}).`, 'error');
      C.error = err.message;
    }
  }

  function hide() {
    C.offered = null;
    $('#checkpoint-offer').hidden = true;
  }

  /** Shows the offer when the loaded model has the checkpoint of an unfinished training. */
  async function offer() {
    hide();
    if (!app.model || ['preparing', 'running', 'paused', 'stopping'].includes(app.train.state)) return;
    const key = keyOf(app.model);
    let r;
    try {
      r = await withStore('readonly', (s) => s.get(key));
    } catch {
      r = null; // no IndexedDB here: nothing was kept either
    }
    C.checked = key;
    if (!r || r.finished || r.saved === C.taken) return;
    C.offered = { step: r.step, total: r.total, saved: r.saved, classes: r.classes };
    const when = new Date(r.saved).toLocaleString();
    $('#checkpoint-text').textContent = `An interrupted training left an adapter at step ${r.step} of ${r.total} (${when}; ${r.model.name}, classes ${r.classes.join(', ')}).`;
    $('#checkpoint-offer').hidden = false;
  }

  async function resume() {
    const r = app.model && (await withStore('readonly', (s) => s.get(keyOf(app.model))));
    hide();
    if (!r) return setStatus('That checkpoint is no longer kept in this browser.', 'error');
    C.taken = r.saved;
    const name = `checkpoint-step-${r.step}-of-${r.total}.safetensors`;
    try {
      await importBytes(name, r.bytes.slice().buffer, `of the interrupted training, resumed at step ${r.step} of ${r.total}`);
    } catch (err) {
      setStatus(`Could not resume with the checkpoint: ${err.message}`, 'error');
    }
  }

  async function discard() {
    hide();
    if (app.model) await withStore('readwrite', (s) => s.delete(keyOf(app.model)));
    setStatus("Discarded the interrupted training's checkpoint.");
  }

  $('#checkpoint-resume').addEventListener('click', () => resume());
  $('#checkpoint-discard').addEventListener('click', () => discard().catch((err) => setStatus(`Could not discard the checkpoint: ${err.message}`, 'error')));
  return { save, offer, hide };
}
