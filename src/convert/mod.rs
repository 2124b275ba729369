//! `clipit convert IN.bin OUT.safetensors`: PyTorch pickle checkpoints to safetensors, safely.
//!
//! Hub checkpoints such as CONCH's or UNI's `pytorch_model.bin` are written by
//! `torch.save(state_dict)`: a zip archive holding `<prefix>/data.pkl` (a pickle describing the
//! dict of tensors), `<prefix>/data/<key>` (the raw bytes of each storage) and optionally
//! `<prefix>/byteorder`. Loading a pickle normally *runs* it, so a malicious checkpoint can
//! execute code. Here a tiny pickle interpreter only builds plain values: a `GLOBAL` outside an
//! allow-list (`collections.OrderedDict`, `torch._utils._rebuild_tensor_v2`,
//! `torch._utils._rebuild_parameter`, the `torch.*Storage` classes and `torch.<dtype>`s) becomes
//! an inert placeholder that is never called, and entries that are not tensors are skipped and
//! reported. Every size read from the file is checked against the file's real size before it is
//! used, so a corrupt or hostile file gives an error, never a panic or a huge allocation.

use std::fs::File;
use std::io::{BufReader, Cursor, Read, Seek, Write};
use std::path::Path;

use safetensors::tensor::TensorInfo;
pub use safetensors::Dtype;
use zip::{CompressionMethod, ZipArchive};

use crate::fsutil::AtomicWriter;
use crate::{Error, Result};

/// What [`convert_pickle_to_safetensors`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConvertReport {
    /// Number of tensors written.
    pub tensors: usize,
    /// Total bytes of tensor data written (the header excluded).
    pub bytes: u64,
    /// Entries that were not written, as `"name: why"` (non-tensor values, unsupported dtypes,
    /// top-level entries outside the chosen `state_dict`/`model` dict).
    pub skipped: Vec<String>,
}

/// One tensor read from a checkpoint: contiguous, row-major, little-endian bytes.
#[derive(Debug, Clone, PartialEq)]
pub struct RawTensor {
    /// Element type (same names as safetensors: `F32`, `BF16`, `I64`, ...).
    pub dtype: Dtype,
    /// Shape; empty for a 0-d (scalar) tensor.
    pub shape: Vec<usize>,
    /// `shape.iter().product() * dtype.bitsize() / 8` bytes.
    pub data: Vec<u8>,
}

/// Converts the `torch.save` checkpoint `input` to the safetensors file `output`.
///
/// Tensors keep their dtype; views (offsets, transposes, shared storages) are written as
/// contiguous copies. If the pickle's top level has no tensors but holds a dict of tensors under
/// `"state_dict"` or `"model"`, that dict is used. `output` is written atomically
/// ([`AtomicWriter`]), so a failed conversion leaves no partial file and an existing `output`
/// untouched. Storages are read one at a time, so memory stays near the largest storage's size.
pub fn convert_pickle_to_safetensors(input: &Path, output: &Path) -> Result<ConvertReport> {
    let (mut ckpt, dict) = Checkpoint::open(input)?;
    let mut out = AtomicWriter::create(output)?; // removes its temporary file unless finished
    let bytes = write_safetensors(&mut ckpt, &dict.tensors, &mut out)?;
    out.finish()?;
    Ok(ConvertReport { tensors: dict.tensors.len(), bytes, skipped: dict.skipped })
}

/// Reads every tensor of the `torch.save` checkpoint at `path` into memory, in the pickle's order.
///
/// Same rules as [`convert_pickle_to_safetensors`]; skipped entries are dropped silently.
pub fn read_pickle_state_dict(path: &Path) -> Result<Vec<(String, RawTensor)>> {
    let (ckpt, dict) = Checkpoint::open(path)?;
    read_all(ckpt, dict)
}

/// Like [`read_pickle_state_dict`] for a checkpoint held in memory (the page's case, and the
/// fuzzer's); `name` names it in errors.
pub fn read_pickle_state_dict_from_bytes(
    bytes: &[u8],
    name: &str,
) -> Result<Vec<(String, RawTensor)>> {
    let (ckpt, dict) = Checkpoint::from_reader(Cursor::new(bytes), name, bytes.len() as u64)?;
    read_all(ckpt, dict)
}

/// Reads every tensor of `dict` from `ckpt`, in the pickle's order.
fn read_all<R: Read + Seek>(
    mut ckpt: Checkpoint<R>,
    dict: StateDict,
) -> Result<Vec<(String, RawTensor)>> {
    let mut out: Vec<Option<(String, RawTensor)>> = vec![None; dict.tensors.len()];
    ckpt.for_each_tensor(&dict.tensors, |i, name, t, data| {
        let shape = t.shape.clone();
        out[i] = Some((name.to_string(), RawTensor { dtype: t.dtype, shape, data }));
        Ok(())
    })?;
    Ok(out.into_iter().flatten().collect())
}

/// Writes the safetensors header and data; returns the number of data bytes.
fn write_safetensors(
    ckpt: &mut Checkpoint<BufReader<File>>,
    tensors: &[(String, TensorRef)],
    out: &mut AtomicWriter,
) -> Result<u64> {
    // Data is laid out in the order `for_each_tensor` visits the tensors.
    let mut header = serde_json::Map::new();
    header.insert("__metadata__".into(), serde_json::json!({ "format": "pt" }));
    let mut offset = 0usize;
    for &i in &storage_order(tensors) {
        let (name, t) = &tensors[i];
        let end = offset.checked_add(t.nbytes).ok_or_else(|| ckpt.err("tensors too large"))?;
        let info =
            TensorInfo { dtype: t.dtype, shape: t.shape.clone(), data_offsets: (offset, end) };
        offset = end;
        header.insert(name.clone(), serde_json::to_value(info).map_err(Error::msg)?);
    }
    let mut json = serde_json::to_vec(&header).map_err(Error::msg)?;
    json.resize(json.len().next_multiple_of(8), b' ');
    let output = out.dest_path().to_path_buf();
    let io = |e| Error::io(&output, e);
    out.write_all(&(json.len() as u64).to_le_bytes()).map_err(io)?;
    out.write_all(&json).map_err(io)?;
    ckpt.for_each_tensor(tensors, |_, _, _, data| out.write_all(&data).map_err(io))?;
    Ok(offset as u64)
}

/// Tensor indices grouped by storage (so each storage is read once), then by name.
fn storage_order(tensors: &[(String, TensorRef)]) -> Vec<usize> {
    let mut order: Vec<usize> = (0..tensors.len()).collect();
    order.sort_by(|&a, &b| {
        let (na, ta) = &tensors[a];
        let (nb, tb) = &tensors[b];
        (&ta.storage, na).cmp(&(&tb.storage, nb))
    });
    order
}

// ---------------------------------------------------------------------------------------------
// The zip archive

/// A tensor as the pickle describes it: a strided view into the storage `data/<storage>`.
#[derive(Debug, Clone)]
struct TensorRef {
    dtype: Dtype,
    storage: String,
    /// In elements.
    offset: usize,
    shape: Vec<usize>,
    /// In elements.
    strides: Vec<usize>,
    /// Bytes of the contiguous tensor (checked: no overflow, at most the file's size).
    nbytes: usize,
}

/// The tensors chosen from the pickle and what was left out.
struct StateDict {
    tensors: Vec<(String, TensorRef)>,
    skipped: Vec<String>,
}

/// An open `torch.save` zip archive, read from a file or from memory.
struct Checkpoint<R> {
    path: String,
    archive: ZipArchive<R>,
    /// `<prefix>/` of `<prefix>/data.pkl`.
    prefix: String,
    big_endian: bool,
    file_len: u64,
}

impl Checkpoint<BufReader<File>> {
    /// Opens `path`, parses `data.pkl` and picks the state dict.
    fn open(path: &Path) -> Result<(Self, StateDict)> {
        let file = File::open(path).map_err(|e| Error::io(path, e))?;
        let file_len = file.metadata().map_err(|e| Error::io(path, e))?.len();
        Self::from_reader(BufReader::new(file), &path.display().to_string(), file_len)
    }
}

impl<R: Read + Seek> Checkpoint<R> {
    /// Reads the archive in `reader` (`file_len` bytes; `shown` names it in errors), parses
    /// `data.pkl` and picks the state dict.
    fn from_reader(mut reader: R, shown: &str, file_len: u64) -> Result<(Self, StateDict)> {
        let fail = |msg: String| Error::format(shown, msg);
        let mut head = Vec::new();
        (&mut reader).take(9).read_to_end(&mut head).map_err(|e| Error::io(shown, e))?;
        match head.as_slice() {
            [] => return Err(fail("empty file, not a PyTorch checkpoint".into())),
            [.., b'{'] if head.len() == 9 => return Err(fail("already a safetensors file".into())),
            [0x80, ..] => {
                return Err(fail(
                    "legacy (pre-1.6, non-zip) torch.save format is not supported; re-save it \
                     with torch.save(torch.load(path, weights_only=True), path) in torch >= 1.6"
                        .into(),
                ))
            }
            _ => {}
        }
        let archive = ZipArchive::new(reader).map_err(|e| {
            fail(format!("not a readable zip archive (truncated or corrupt?): {e}"))
        })?;
        let pkl = archive
            .file_names()
            .filter(|n| *n == "data.pkl" || n.ends_with("/data.pkl"))
            .min_by_key(|n| (n.matches('/').count(), n.to_string()))
            .map(str::to_string)
            .ok_or_else(|| {
                fail("zip archive has no data.pkl: not a torch.save checkpoint".into())
            })?;
        let prefix = pkl.trim_end_matches("data.pkl").to_string();
        let path = shown.to_string();
        let mut ckpt = Checkpoint { path, archive, prefix, big_endian: false, file_len };

        let byteorder = format!("{}byteorder", ckpt.prefix);
        if ckpt.archive.index_for_name(&byteorder).is_some() {
            let bytes = ckpt.read_entry(&byteorder)?;
            ckpt.big_endian = match String::from_utf8_lossy(&bytes).trim() {
                "little" => false,
                "big" => true,
                other => return Err(ckpt.err(format!("{byteorder}: unknown byte order {other:?}"))),
            };
        }
        let pickle = ckpt.read_entry(&pkl)?;
        let top = unpickle(&pickle).map_err(|msg| ckpt.err(format!("{pkl}: {msg}")))?;
        let dict = select_state_dict(&top, file_len).map_err(|msg| ckpt.err(msg))?;
        Ok((ckpt, dict))
    }

    fn err(&self, msg: impl std::fmt::Display) -> Error {
        Error::format(&self.path, msg)
    }

    /// Reads one zip entry, refusing sizes the file cannot hold.
    fn read_entry(&mut self, name: &str) -> Result<Vec<u8>> {
        let path = self.path.clone();
        let file_len = self.file_len;
        let zerr = |e: zip::result::ZipError| Error::format(&path, format!("{name}: {e}"));
        let entry = self.archive.by_name(name).map_err(zerr)?;
        let size = entry.size();
        // Stored entries cannot be larger than the file; deflate expands at most ~1032x.
        let limit = match entry.compression() {
            CompressionMethod::Stored => file_len,
            _ => entry.compressed_size().min(file_len).saturating_mul(1032),
        };
        if size > limit {
            return Err(Error::format(&path, format!("{name}: size {size} is impossible")));
        }
        let mut data = Vec::with_capacity(size.min(file_len) as usize);
        entry.take(size).read_to_end(&mut data).map_err(|e| zerr(e.into()))?;
        if data.len() as u64 != size {
            let msg = format!("{name}: truncated ({} of {size} bytes)", data.len());
            return Err(Error::format(&path, msg));
        }
        Ok(data)
    }

    /// Calls `f(index, name, tensor, contiguous_bytes)` for every tensor, in [`storage_order`].
    fn for_each_tensor(
        &mut self,
        tensors: &[(String, TensorRef)],
        mut f: impl FnMut(usize, &str, &TensorRef, Vec<u8>) -> Result<()>,
    ) -> Result<()> {
        let (mut key, mut storage): (Option<&str>, Vec<u8>) = (None, Vec::new());
        for i in storage_order(tensors) {
            let (name, t) = &tensors[i];
            if key != Some(&t.storage) {
                drop(std::mem::take(&mut storage)); // free the previous storage first
                storage = self.read_entry(&format!("{}data/{}", self.prefix, t.storage))?;
                key = Some(&t.storage);
            }
            let data = materialise(t, &storage, self.big_endian)
                .map_err(|msg| self.err(format!("tensor {name:?}: {msg}")))?;
            f(i, name, t, data)?;
        }
        Ok(())
    }
}

/// Copies the strided view `t` out of `storage` into contiguous little-endian bytes.
fn materialise(t: &TensorRef, storage: &[u8], big_endian: bool) -> Result<Vec<u8>, String> {
    let elem = elem_size(t.dtype);
    let numel = t.nbytes / elem;
    let mut out = Vec::with_capacity(t.nbytes);
    if numel > 0 {
        // Last element touched: offset + sum((size - 1) * stride), checked against the storage.
        let last = t.shape.iter().zip(&t.strides).try_fold(t.offset, |acc, (&n, &s)| {
            (n - 1).checked_mul(s).and_then(|x| x.checked_add(acc))
        });
        let end = last.and_then(|l| l.checked_add(1)).and_then(|l| l.checked_mul(elem));
        if end.is_none_or(|end| end > storage.len()) {
            let (len, key) = (storage.len(), &t.storage);
            let view = format!("offset {}, shape {:?}, strides {:?}", t.offset, t.shape, t.strides);
            return Err(format!(
                "view ({view}) reaches past its storage data/{key} of {len} bytes"
            ));
        }
        if is_contiguous(&t.shape, &t.strides) {
            out.extend_from_slice(&storage[t.offset * elem..(t.offset + numel) * elem]);
        } else {
            // Walk the multi-index in row-major order like an odometer.
            let mut index = vec![0usize; t.shape.len()];
            for _ in 0..numel {
                let pos =
                    t.offset + index.iter().zip(&t.strides).map(|(i, s)| i * s).sum::<usize>();
                out.extend_from_slice(&storage[pos * elem..(pos + 1) * elem]);
                for d in (0..index.len()).rev() {
                    index[d] += 1;
                    if index[d] < t.shape[d] {
                        break;
                    }
                    index[d] = 0;
                }
            }
        }
    }
    if big_endian && elem > 1 {
        out.chunks_exact_mut(elem).for_each(<[u8]>::reverse);
    }
    Ok(out)
}

/// Bytes per element (every dtype read here is a whole number of bytes).
fn elem_size(dtype: Dtype) -> usize {
    dtype.bitsize() / 8
}

/// Whether `strides` are the row-major strides of `shape` (ignoring dims of size 1).
fn is_contiguous(shape: &[usize], strides: &[usize]) -> bool {
    let mut expected = 1;
    for (&n, &s) in shape.iter().zip(strides).rev() {
        if n != 1 && s != expected {
            return false;
        }
        expected *= n;
    }
    true
}

mod pickle;

use pickle::{select_state_dict, unpickle};
