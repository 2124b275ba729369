// Reading what the user drops or picks: folders are walked (webkitGetAsEntry) so that every file
// keeps its path inside the dropped folder ("folder/class/image.png").

/** Every file of a drop, with its path; `folder` is the name of a single dropped folder. */
export async function entriesOf(dataTransfer) {
  const items = [...(dataTransfer.items || [])].map((i) => (i.webkitGetAsEntry ? i.webkitGetAsEntry() : null));
  if (!items.length || items.some((e) => !e)) return { files: [...dataTransfer.files].map((f) => ({ file: f, path: f.name })), folder: null };
  const out = [];
  const walk = async (entry, prefix) => {
    if (entry.isFile) {
      const file = await new Promise((res, rej) => entry.file(res, rej));
      out.push({ file, path: prefix + file.name });
    } else if (entry.isDirectory) {
      const reader = entry.createReader();
      for (;;) {
        const batch = await new Promise((res, rej) => reader.readEntries(res, rej));
        if (!batch.length) break;
        for (const e of batch) await walk(e, `${prefix}${entry.name}/`);
      }
    }
  };
  for (const e of items) await walk(e, '');
  const folder = items.length === 1 && items[0].isDirectory ? items[0].name : null;
  return { files: out, folder };
}

// The files directly inside the picked folder (a checkpoint's sub-folders are not needed).
export function topLevel(list) {
  const depth = (p) => p.split('/').length;
  const min = Math.min(...list.map((x) => depth(x.path)));
  return list.filter((x) => depth(x.path) === min);
}

/** The most a safetensors header may take (the engine's own limit). */
const MAX_HEADER = 100 << 20;

/**
 * What the engine needs to check a model file's size before the file is read whole:
 * {name, size, head}, `head` holding a `.safetensors` file's 8-byte length and its header (the
 * engine reports a header that does not fit the file), and nothing for other files.
 */
export async function headOf(file) {
  const out = { name: file.name, size: file.size, head: new ArrayBuffer(0) };
  if (!/\.safetensors$/i.test(file.name) || file.size < 8) return out;
  out.head = await file.slice(0, 8).arrayBuffer();
  const len = Number(new DataView(out.head).getBigUint64(0, true));
  if (len <= MAX_HEADER && 8 + len <= file.size) out.head = await file.slice(0, 8 + len).arrayBuffer();
  return out;
}

/** "a.txt, b.doc and 3 more": a few names of a list, for messages. */
export function someNames(names, max = 4) {
  return names.length > max ? `${names.slice(0, max).join(', ')} and ${names.length - max} more` : names.join(', ');
}
