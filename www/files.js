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
