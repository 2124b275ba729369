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

use std::collections::HashMap;
use std::fs::File;
use std::io::{BufReader, BufWriter, Read, Write};
use std::path::{Path, PathBuf};
use std::rc::Rc;

use safetensors::tensor::TensorInfo;
pub use safetensors::Dtype;
use zip::{CompressionMethod, ZipArchive};

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
    /// `shape.iter().product() * dtype.size()` bytes.
    pub data: Vec<u8>,
}

/// Converts the `torch.save` checkpoint `input` to the safetensors file `output`.
///
/// Tensors keep their dtype; views (offsets, transposes, shared storages) are written as
/// contiguous copies. If the pickle's top level has no tensors but holds a dict of tensors under
/// `"state_dict"` or `"model"`, that dict is used. `output` is written to a temporary file in the
/// same folder and renamed at the end, so a failed conversion leaves no partial file. Storages are
/// read one at a time, so memory stays near the size of the largest storage.
pub fn convert_pickle_to_safetensors(input: &Path, output: &Path) -> Result<ConvertReport> {
    let (mut ckpt, dict) = Checkpoint::open(input)?;
    let tmp = temp_path(output);
    let file = File::create(&tmp).map_err(|e| Error::io(output, e))?;
    let written = write_safetensors(&mut ckpt, &dict.tensors, BufWriter::new(file), output)
        .and_then(|bytes| std::fs::rename(&tmp, output).map(|_| bytes).map_err(|e| Error::io(output, e)));
    match written {
        Ok(bytes) => Ok(ConvertReport { tensors: dict.tensors.len(), bytes, skipped: dict.skipped }),
        Err(e) => {
            let _ = std::fs::remove_file(&tmp);
            Err(e)
        }
    }
}

/// Reads every tensor of the `torch.save` checkpoint at `path` into memory, in the pickle's order.
///
/// Same rules as [`convert_pickle_to_safetensors`]; skipped entries are dropped silently.
pub fn read_pickle_state_dict(path: &Path) -> Result<Vec<(String, RawTensor)>> {
    let (mut ckpt, dict) = Checkpoint::open(path)?;
    let mut out: Vec<Option<(String, RawTensor)>> = vec![None; dict.tensors.len()];
    ckpt.for_each_tensor(&dict.tensors, |i, name, t, data| {
        let shape = t.shape.clone();
        out[i] = Some((name.to_string(), RawTensor { dtype: t.dtype, shape, data }));
        Ok(())
    })?;
    Ok(out.into_iter().flatten().collect())
}

/// `.NAME.partPID` next to `output`.
fn temp_path(output: &Path) -> PathBuf {
    let name = output.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    output.with_file_name(format!(".{name}.part{}", std::process::id()))
}

/// Writes the safetensors header and data; returns the number of data bytes.
fn write_safetensors(
    ckpt: &mut Checkpoint,
    tensors: &[(String, TensorRef)],
    mut out: BufWriter<File>,
    output: &Path,
) -> Result<u64> {
    // Data is laid out in the order `for_each_tensor` visits the tensors.
    let mut header = serde_json::Map::new();
    header.insert("__metadata__".into(), serde_json::json!({ "format": "pt" }));
    let mut offset = 0usize;
    for &i in &storage_order(tensors) {
        let (name, t) = &tensors[i];
        let info = TensorInfo {
            dtype: t.dtype,
            shape: t.shape.clone(),
            data_offsets: (offset, offset + t.nbytes),
        };
        offset += t.nbytes;
        header.insert(name.clone(), serde_json::to_value(info).map_err(Error::msg)?);
    }
    let mut json = serde_json::to_vec(&header).map_err(Error::msg)?;
    json.resize(json.len().next_multiple_of(8), b' ');
    let io = |e| Error::io(output, e);
    out.write_all(&(json.len() as u64).to_le_bytes()).map_err(io)?;
    out.write_all(&json).map_err(io)?;
    ckpt.for_each_tensor(tensors, |_, _, _, data| out.write_all(&data).map_err(io))?;
    let file = out.into_inner().map_err(|e| io(e.into_error()))?;
    file.sync_all().map_err(io)?;
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

/// An open `torch.save` zip archive.
struct Checkpoint {
    path: String,
    archive: ZipArchive<BufReader<File>>,
    /// `<prefix>/` of `<prefix>/data.pkl`.
    prefix: String,
    big_endian: bool,
    file_len: u64,
}

impl Checkpoint {
    /// Opens `path`, parses `data.pkl` and picks the state dict.
    fn open(path: &Path) -> Result<(Checkpoint, StateDict)> {
        let shown = path.display().to_string();
        let mut file = File::open(path).map_err(|e| Error::io(path, e))?;
        let file_len = file.metadata().map_err(|e| Error::io(path, e))?.len();
        let mut magic = [0u8; 2];
        let got = file.read(&mut magic).map_err(|e| Error::io(path, e))?;
        if file_len == 0 {
            return Err(Error::format(&shown, "empty file, not a PyTorch checkpoint"));
        }
        if got >= 1 && magic[0] == 0x80 {
            return Err(Error::format(
                &shown,
                "legacy (pre-1.6, non-zip) torch.save format is not supported; re-save it with \
                 torch.save(torch.load(path, weights_only=True), path) in torch >= 1.6",
            ));
        }
        let archive = ZipArchive::new(BufReader::new(file)).map_err(|e| {
            Error::format(&shown, format!("not a readable zip archive (truncated or corrupt?): {e}"))
        })?;
        let pkl = archive
            .file_names()
            .filter(|n| *n == "data.pkl" || n.ends_with("/data.pkl"))
            .min_by_key(|n| (n.matches('/').count(), n.to_string()))
            .map(str::to_string)
            .ok_or_else(|| {
                Error::format(&shown, "zip archive has no data.pkl: not a torch.save checkpoint")
            })?;
        let prefix = pkl.trim_end_matches("data.pkl").to_string();
        let mut ckpt = Checkpoint { path: shown, archive, prefix, big_endian: false, file_len };

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
        let mut current: Option<(&str, Vec<u8>)> = None;
        for i in storage_order(tensors) {
            let (name, t) = &tensors[i];
            if current.as_ref().is_none_or(|(key, _)| *key != t.storage) {
                let entry = format!("{}data/{}", self.prefix, t.storage);
                current.take(); // free the previous storage first
                current = Some((&t.storage, self.read_entry(&entry)?));
            }
            let storage = &current.as_ref().expect("storage was just read").1;
            let data = materialise(t, storage, self.big_endian)
                .map_err(|msg| self.err(format!("tensor {name:?}: {msg}")))?;
            f(i, name, t, data)?;
        }
        Ok(())
    }
}

/// Copies the strided view `t` out of `storage` into contiguous little-endian bytes.
fn materialise(t: &TensorRef, storage: &[u8], big_endian: bool) -> Result<Vec<u8>, String> {
    let elem = t.dtype.size();
    let numel = t.nbytes / elem;
    let mut out = Vec::with_capacity(t.nbytes);
    if numel > 0 {
        // Last element touched: offset + sum((size - 1) * stride), checked against the storage.
        let last = t.shape.iter().zip(&t.strides).try_fold(t.offset, |acc, (&n, &s)| {
            (n - 1).checked_mul(s).and_then(|x| x.checked_add(acc))
        });
        let end = last.and_then(|l| l.checked_add(1)).and_then(|l| l.checked_mul(elem));
        match end {
            Some(end) if end <= storage.len() => {}
            _ => {
                return Err(format!(
                    "view (offset {}, shape {:?}, strides {:?}) reaches past its storage \
                     data/{} of {} bytes",
                    t.offset,
                    t.shape,
                    t.strides,
                    t.storage,
                    storage.len()
                ))
            }
        }
        if is_contiguous(&t.shape, &t.strides) {
            out.extend_from_slice(&storage[t.offset * elem..(t.offset + numel) * elem]);
        } else {
            // Walk the multi-index in row-major order like an odometer.
            let mut index = vec![0usize; t.shape.len()];
            for _ in 0..numel {
                let pos = t.offset + index.iter().zip(&t.strides).map(|(i, s)| i * s).sum::<usize>();
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

// ---------------------------------------------------------------------------------------------
// The pickle interpreter

/// A pickled value. Containers are reference-counted so `BINGET` copies are cheap.
#[derive(Debug, Clone)]
enum Value {
    None,
    Bool(bool),
    Int(i64),
    Float(f64),
    Str(Rc<str>),
    Bytes(usize),
    Tuple(Rc<Vec<Value>>),
    List(Rc<Vec<Value>>),
    /// Entries in insertion order; a repeated key is resolved when the dict is read (last wins).
    Dict(Rc<Vec<(Value, Value)>>),
    Global(Global),
    /// A storage from a persistent id: dtype (or the unsupported type's name) and zip key.
    Storage(Result<Dtype, Rc<str>>, Rc<str>),
    Tensor(Rc<TensorRef>),
    /// Anything we do not model (a forbidden global's "result", a big integer, ...).
    Opaque(Rc<str>),
}

/// A `GLOBAL` reference. Only these names mean anything; the rest stay inert.
#[derive(Debug, Clone)]
enum Global {
    OrderedDict,
    RebuildTensorV2,
    RebuildParameter,
    /// A `torch.*Storage` class or a `torch.<dtype>`.
    Dtype(Dtype),
    Unsupported(Rc<str>),
}

fn resolve_global(module: &str, name: &str) -> Global {
    use Dtype::*;
    let dtype = match name {
        "FloatStorage" | "float32" | "float" => Some(F32),
        "HalfStorage" | "float16" | "half" => Some(F16),
        "BFloat16Storage" | "bfloat16" => Some(BF16),
        "DoubleStorage" | "float64" | "double" => Some(F64),
        "LongStorage" | "int64" | "long" => Some(I64),
        "IntStorage" | "int32" | "int" => Some(I32),
        "ShortStorage" | "int16" | "short" => Some(I16),
        "CharStorage" | "int8" => Some(I8),
        "ByteStorage" | "UntypedStorage" | "uint8" => Some(U8),
        "BoolStorage" | "bool" => Some(BOOL),
        _ => None,
    };
    match (module, name, dtype) {
        ("collections", "OrderedDict", _) => Global::OrderedDict,
        ("torch._utils", "_rebuild_tensor_v2", _) => Global::RebuildTensorV2,
        ("torch._utils", "_rebuild_parameter" | "_rebuild_parameter_with_state", _) => {
            Global::RebuildParameter
        }
        ("torch", _, Some(dtype)) => Global::Dtype(dtype),
        _ => Global::Unsupported(format!("{module}.{name}").into()),
    }
}

/// A short description of a value, for the skipped list and errors.
fn kind(v: &Value) -> String {
    match v {
        Value::None => "None".into(),
        Value::Bool(b) => format!("bool {b}"),
        Value::Int(i) => format!("int {i}"),
        Value::Float(x) => format!("float {x}"),
        Value::Str(s) if s.chars().count() > 40 => "str".into(),
        Value::Str(s) => format!("str {s:?}"),
        Value::Bytes(n) => format!("{n} bytes"),
        Value::Tuple(_) => "tuple".into(),
        Value::List(_) => "list".into(),
        Value::Dict(_) => "dict".into(),
        Value::Global(_) => "class or function reference".into(),
        Value::Storage(..) => "bare storage".into(),
        Value::Tensor(_) => "tensor".into(),
        Value::Opaque(what) => what.to_string(),
    }
}

/// Runs the pickle `data` with the inert interpreter and returns the value `STOP` leaves.
fn unpickle(data: &[u8]) -> Result<Value, String> {
    let mut vm = Vm { data, pos: 0, stack: Vec::new(), marks: Vec::new(), memo: HashMap::new() };
    loop {
        let at = vm.pos;
        let op = vm.take(1)?[0];
        if let Some(done) = vm.step(op).map_err(|e| format!("{e} (opcode 0x{op:02x} at byte {at})"))? {
            return Ok(done);
        }
    }
}

struct Vm<'a> {
    data: &'a [u8],
    pos: usize,
    stack: Vec<Value>,
    /// Stack heights at each `MARK`.
    marks: Vec<usize>,
    memo: HashMap<u64, Value>,
}

impl<'a> Vm<'a> {
    /// The next `n` bytes of the pickle (never past its end).
    fn take(&mut self, n: usize) -> Result<&'a [u8], String> {
        let data: &'a [u8] = self.data;
        let end = self.pos.checked_add(n).filter(|&e| e <= data.len());
        let end = end.ok_or_else(|| "pickle ends unexpectedly".to_string())?;
        let bytes = &data[self.pos..end];
        self.pos = end;
        Ok(bytes)
    }
    fn uint(&mut self, n: usize) -> Result<u64, String> {
        Ok(self.take(n)?.iter().rev().fold(0u64, |acc, &b| (acc << 8) | b as u64))
    }
    fn line(&mut self) -> Result<&'a str, String> {
        let rest = &self.data[self.pos..];
        let len = rest.iter().position(|&b| b == b'\n').ok_or("unterminated GLOBAL name")?;
        let line = std::str::from_utf8(&self.take(len + 1)?[..len]).map_err(|e| e.to_string())?;
        Ok(line)
    }
    fn text(&mut self, n: u64) -> Result<Value, String> {
        let n = usize::try_from(n).map_err(|_| "string too long")?;
        let s = std::str::from_utf8(self.take(n)?).map_err(|e| format!("bad UTF-8 string: {e}"))?;
        Ok(Value::Str(s.into()))
    }
    fn bytes(&mut self, n: u64) -> Result<Value, String> {
        let n = usize::try_from(n).map_err(|_| "bytes too long")?;
        Ok(Value::Bytes(self.take(n)?.len()))
    }
    fn pop(&mut self) -> Result<Value, String> {
        self.stack.pop().ok_or_else(|| "stack underflow".to_string())
    }
    fn top(&mut self) -> Result<&mut Value, String> {
        self.stack.last_mut().ok_or_else(|| "stack underflow".to_string())
    }
    /// Pops everything pushed since the last `MARK`.
    fn pop_mark(&mut self) -> Result<Vec<Value>, String> {
        let mark = self.marks.pop().ok_or("MARK missing")?;
        if mark > self.stack.len() {
            return Err("MARK above the stack".into());
        }
        Ok(self.stack.split_off(mark))
    }
    fn memo_get(&mut self, key: u64) -> Result<(), String> {
        let v = self.memo.get(&key).cloned().ok_or_else(|| format!("memo key {key} missing"))?;
        self.stack.push(v);
        Ok(())
    }
    fn memo_put(&mut self, key: u64) -> Result<(), String> {
        let v = self.top()?.clone();
        self.memo.insert(key, v);
        Ok(())
    }
    fn set_items(&mut self, items: Vec<Value>) -> Result<(), String> {
        if items.len() % 2 != 0 {
            return Err("odd number of items for SETITEMS".into());
        }
        let Value::Dict(dict) = self.top()? else { return Err("SETITEM on a non-dict".into()) };
        let dict = Rc::make_mut(dict);
        let mut it = items.into_iter();
        while let (Some(k), Some(v)) = (it.next(), it.next()) {
            dict.push((k, v));
        }
        Ok(())
    }
    fn append(&mut self, items: Vec<Value>) -> Result<(), String> {
        match self.top()? {
            Value::List(list) => Rc::make_mut(list).extend(items),
            _ => return Err("APPEND on a non-list".into()),
        }
        Ok(())
    }

    fn push(&mut self, v: Value) -> Result<Option<Value>, String> {
        self.stack.push(v);
        Ok(None)
    }

    /// Executes one opcode; returns the result at `STOP`.
    fn step(&mut self, op: u8) -> Result<Option<Value>, String> {
        let push = Self::push;
        match op {
            0x80 => self.take(1).map(|_| None),        // PROTO
            0x95 => self.take(8).map(|_| None),        // FRAME
            b'.' => self.pop().map(Some),              // STOP
            b'(' => {
                self.marks.push(self.stack.len()); // MARK
                Ok(None)
            }
            b'0' => self.pop().map(|_| None),       // POP
            b'1' => self.pop_mark().map(|_| None),  // POP_MARK
            b'2' => {
                let v = self.top()?.clone(); // DUP
                push(self, v)
            }
            b'N' => push(self, Value::None),
            0x88 => push(self, Value::Bool(true)),
            0x89 => push(self, Value::Bool(false)),
            b'J' => {
                let v = self.uint(4)? as u32 as i32; // BININT
                push(self, Value::Int(v as i64))
            }
            b'K' => {
                let v = self.uint(1)?; // BININT1
                push(self, Value::Int(v as i64))
            }
            b'M' => {
                let v = self.uint(2)?; // BININT2
                push(self, Value::Int(v as i64))
            }
            0x8a => {
                let n = self.uint(1)? as usize; // LONG1: little-endian two's complement
                let bytes = self.take(n)?;
                let v = match n {
                    0 => Value::Int(0),
                    1..=8 => {
                        let fill = if bytes[n - 1] & 0x80 != 0 { 0xff } else { 0 };
                        let mut buf = [fill; 8];
                        buf[..n].copy_from_slice(bytes);
                        Value::Int(i64::from_le_bytes(buf))
                    }
                    _ => Value::Opaque("integer wider than 64 bits".into()),
                };
                push(self, v)
            }
            b'G' => {
                let b = self.take(8)?; // BINFLOAT (big-endian)
                push(self, Value::Float(f64::from_be_bytes(b.try_into().expect("8 bytes"))))
            }
            b'X' => {
                let n = self.uint(4)?; // BINUNICODE
                let v = self.text(n)?;
                push(self, v)
            }
            0x8c => {
                let n = self.uint(1)?; // SHORT_BINUNICODE
                let v = self.text(n)?;
                push(self, v)
            }
            0x8d => {
                let n = self.uint(8)?; // BINUNICODE8
                let v = self.text(n)?;
                push(self, v)
            }
            b'B' | b'T' => {
                let n = self.uint(4)?; // BINBYTES, BINSTRING
                let v = self.bytes(n)?;
                push(self, v)
            }
            b'C' | b'U' => {
                let n = self.uint(1)?; // SHORT_BINBYTES, SHORT_BINSTRING
                let v = self.bytes(n)?;
                push(self, v)
            }
            b')' => push(self, Value::Tuple(Rc::new(Vec::new()))),
            b't' => {
                let items = self.pop_mark()?; // TUPLE
                push(self, Value::Tuple(Rc::new(items)))
            }
            0x85..=0x87 => {
                let n = (op - 0x84) as usize; // TUPLE1..3
                let start = self.stack.len().checked_sub(n).ok_or("stack underflow")?;
                let items = self.stack.split_off(start);
                push(self, Value::Tuple(Rc::new(items)))
            }
            b']' => push(self, Value::List(Rc::new(Vec::new()))),
            b'l' => {
                let items = self.pop_mark()?; // LIST
                push(self, Value::List(Rc::new(items)))
            }
            b'a' => {
                let v = self.pop()?; // APPEND
                self.append(vec![v]).map(|_| None)
            }
            b'e' => {
                let items = self.pop_mark()?; // APPENDS
                self.append(items).map(|_| None)
            }
            b'}' => push(self, Value::Dict(Rc::new(Vec::new()))),
            b'd' => {
                let items = self.pop_mark()?; // DICT
                self.stack.push(Value::Dict(Rc::new(Vec::new())));
                self.set_items(items).map(|_| None)
            }
            b's' => {
                let v = self.pop()?; // SETITEM
                let k = self.pop()?;
                self.set_items(vec![k, v]).map(|_| None)
            }
            b'u' => {
                let items = self.pop_mark()?; // SETITEMS
                self.set_items(items).map(|_| None)
            }
            b'c' => {
                let module = self.line()?; // GLOBAL
                let name = self.line()?;
                push(self, Value::Global(resolve_global(module, name)))
            }
            0x93 => {
                let (name, module) = (self.pop()?, self.pop()?); // STACK_GLOBAL
                match (module, name) {
                    (Value::Str(m), Value::Str(n)) => push(self, Value::Global(resolve_global(&m, &n))),
                    _ => Err("STACK_GLOBAL needs two strings".into()),
                }
            }
            b'R' => {
                let args = self.pop()?; // REDUCE: only allow-listed globals mean anything
                let callable = self.pop()?;
                let v = reduce(callable, args)?;
                push(self, v)
            }
            0x81 => {
                let _args = self.pop()?; // NEWOBJ
                let class = self.pop()?;
                push(self, Value::Opaque(format!("instance of {}", kind_of_global(&class)).into()))
            }
            b'b' => self.pop().map(|_| None), // BUILD: the state is ignored
            b'Q' => {
                let pid = self.pop()?; // BINPERSID
                push(self, persistent_load(&pid))
            }
            b'q' => {
                let key = self.uint(1)?; // BINPUT
                self.memo_put(key).map(|_| None)
            }
            b'r' => {
                let key = self.uint(4)?; // LONG_BINPUT
                self.memo_put(key).map(|_| None)
            }
            0x94 => {
                let key = self.memo.len() as u64; // MEMOIZE
                self.memo_put(key).map(|_| None)
            }
            b'h' => {
                let key = self.uint(1)?; // BINGET
                self.memo_get(key).map(|_| None)
            }
            b'j' => {
                let key = self.uint(4)?; // LONG_BINGET
                self.memo_get(key).map(|_| None)
            }
            _ => Err(format!("unsupported pickle opcode 0x{op:02x}")),
        }
    }
}

fn kind_of_global(v: &Value) -> String {
    match v {
        Value::Global(Global::Unsupported(name)) => name.to_string(),
        other => kind(other),
    }
}

/// `REDUCE`: builds dicts and tensors; every other "call" yields an inert placeholder.
fn reduce(callable: Value, args: Value) -> Result<Value, String> {
    let Value::Tuple(args) = args else { return Err("REDUCE arguments are not a tuple".into()) };
    Ok(match callable {
        Value::Global(Global::OrderedDict) => Value::Dict(Rc::new(Vec::new())),
        Value::Global(Global::RebuildTensorV2) => rebuild_tensor(&args)?,
        Value::Global(Global::RebuildParameter) => match args.first() {
            Some(t @ Value::Tensor(_)) => t.clone(),
            Some(other) => other.clone(), // e.g. an unsupported-dtype placeholder
            None => return Err("_rebuild_parameter without arguments".into()),
        },
        other => Value::Opaque(format!("call to {} (not executed)", kind_of_global(&other)).into()),
    })
}

/// `('storage', storage_type, key, location, numel)` names the zip entry `data/<key>`.
fn persistent_load(pid: &Value) -> Value {
    if let Value::Tuple(t) = pid {
        if let [Value::Str(tag), ty, Value::Str(key), ..] = t.as_slice() {
            if &**tag == "storage" {
                let dtype = match ty {
                    Value::Global(Global::Dtype(d)) => Ok(*d),
                    other => Err(kind_of_global(other).into()),
                };
                return Value::Storage(dtype, key.clone());
            }
        }
    }
    Value::Opaque("unrecognised persistent id".into())
}

/// `_rebuild_tensor_v2(storage, storage_offset, size, stride, requires_grad, hooks, ...)`.
fn rebuild_tensor(args: &[Value]) -> Result<Value, String> {
    let [Value::Storage(dtype, key), offset, Value::Tuple(shape), Value::Tuple(strides), ..] = args
    else {
        return Err("malformed _rebuild_tensor_v2 arguments".into());
    };
    let dtype = match dtype {
        Ok(d) => *d,
        Err(ty) => return Ok(Value::Opaque(format!("tensor of unsupported type {ty}").into())),
    };
    let int = |v: &Value| match v {
        Value::Int(i) => usize::try_from(*i).map_err(|_| format!("negative size or stride {i}")),
        other => Err(format!("tensor size or stride is a {}", kind(other))),
    };
    let shape: Vec<usize> = shape.iter().map(int).collect::<Result<_, _>>()?;
    let strides: Vec<usize> = strides.iter().map(int).collect::<Result<_, _>>()?;
    if shape.len() != strides.len() {
        return Err(format!("tensor shape {shape:?} and strides {strides:?} differ in rank"));
    }
    let nbytes = shape.iter().try_fold(dtype.size(), |acc, &n| acc.checked_mul(n));
    let nbytes = nbytes.ok_or_else(|| format!("tensor shape {shape:?} overflows"))?;
    let offset = int(offset)?;
    let storage = key.to_string();
    Ok(Value::Tensor(Rc::new(TensorRef { dtype, storage, offset, shape, strides, nbytes })))
}

/// A dict's string-keyed entries, last value winning for repeated keys.
fn dict_entries(dict: &[(Value, Value)], skipped: &mut Vec<String>) -> Vec<(String, Value)> {
    let mut out: Vec<(String, Value)> = Vec::new();
    let mut index: HashMap<String, usize> = HashMap::new();
    for (k, v) in dict {
        let Value::Str(k) = k else {
            skipped.push(format!("<{} key>: {}", kind(k), kind(v)));
            continue;
        };
        match index.get(&**k) {
            Some(&i) => out[i].1 = v.clone(),
            None => {
                index.insert(k.to_string(), out.len());
                out.push((k.to_string(), v.clone()));
            }
        }
    }
    out
}

/// Picks the tensors: the top-level dict, or its `"state_dict"`/`"model"` dict when the top level
/// holds no tensors itself.
fn select_state_dict(top: &Value, file_len: u64) -> Result<StateDict, String> {
    let Value::Dict(dict) = top else {
        return Err(format!("the pickle holds a {}, not a dict of tensors", kind(top)));
    };
    let mut skipped = Vec::new();
    let mut entries = dict_entries(dict, &mut skipped);
    let has_tensors = |e: &[(String, Value)]| e.iter().any(|(_, v)| matches!(v, Value::Tensor(_)));
    if !has_tensors(&entries) {
        let nested = entries.iter().find_map(|(k, v)| match v {
            Value::Dict(d) if k == "state_dict" || k == "model" => {
                let mut inner_skipped = Vec::new();
                let inner = dict_entries(d, &mut inner_skipped);
                has_tensors(&inner).then(|| (k.clone(), inner, inner_skipped))
            }
            _ => None,
        });
        if let Some((key, inner, inner_skipped)) = nested {
            for (k, v) in entries.iter().filter(|(k, _)| *k != key) {
                skipped.push(format!("{k}: {} (outside {key:?})", kind(v)));
            }
            skipped.extend(inner_skipped);
            entries = inner;
        }
    }
    let mut tensors = Vec::new();
    for (name, v) in entries {
        match v {
            Value::Tensor(t) if name == "__metadata__" => {
                skipped.push(format!("{name}: tensor name reserved by safetensors ({:?})", t.shape))
            }
            Value::Tensor(t) if t.nbytes as u64 > file_len => {
                return Err(format!(
                    "tensor {name:?} of shape {:?} needs {} bytes, more than the whole file",
                    t.shape, t.nbytes
                ))
            }
            Value::Tensor(t) => tensors.push((name, (*t).clone())),
            other => skipped.push(format!("{name}: {}", kind(&other))),
        }
    }
    if tensors.is_empty() {
        return Err(format!("no tensors found (skipped: {})", skipped.join(", ")));
    }
    Ok(StateDict { tensors, skipped })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strided_views_are_copied_in_row_major_order() {
        // storage 0..12 as u8; view = the 3x4 matrix transposed (shape 4x3, strides 1x4).
        let storage: Vec<u8> = (0..12).collect();
        let t = TensorRef {
            dtype: Dtype::U8,
            storage: "0".into(),
            offset: 0,
            shape: vec![4, 3],
            strides: vec![1, 4],
            nbytes: 12,
        };
        let out = materialise(&t, &storage, false).unwrap();
        assert_eq!(out, [0, 4, 8, 1, 5, 9, 2, 6, 10, 3, 7, 11]);
        let past = TensorRef { offset: 1, ..t };
        assert!(materialise(&past, &storage, false).is_err());
    }

    #[test]
    fn big_endian_storages_are_swapped() {
        let t = TensorRef {
            dtype: Dtype::I32,
            storage: "0".into(),
            offset: 0,
            shape: vec![1],
            strides: vec![1],
            nbytes: 4,
        };
        assert_eq!(materialise(&t, &[0, 0, 0, 7], true).unwrap(), [7, 0, 0, 0]);
    }

    #[test]
    fn garbage_pickles_are_errors() {
        for bad in [&b""[..], b"\x80\x02", b"\x80\x02}q\x00(t.", b"\xff", b"h\x05.", b"X\xff\xff\xff\xff"] {
            assert!(unpickle(bad).is_err(), "{bad:?}");
        }
        // A forbidden global is never called: REDUCE yields an inert placeholder.
        let evil = b"\x80\x02cos\nsystem\nX\x02\x00\x00\x00ls\x85R.";
        let v = unpickle(evil).unwrap();
        assert!(matches!(&v, Value::Opaque(s) if s.contains("os.system")), "{v:?}");
    }
}
