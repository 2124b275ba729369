//! A validated `.safetensors` reader: the header is checked (offsets, sizes, dtypes) before any
//! data is read, and tensors are then read one at a time as `f32`.
//!
//! The bytes come from a file, from memory, or from any [`ByteSource`] that reads byte ranges
//! (the browser's case: the file stays in a JavaScript `Uint8Array` and only the tensor being
//! converted is copied into wasm memory).

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::io::{Read, Seek, SeekFrom};
use std::path::Path;
use std::rc::Rc;
use std::sync::Arc;

use crate::{Error, Result};

/// Largest header we accept (the real ones are well under 1 MB).
const MAX_HEADER_BYTES: u64 = 100 << 20;

/// Element types a checkpoint may store.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dtype {
    /// 32-bit float.
    F32,
    /// 16-bit IEEE float.
    F16,
    /// bfloat16.
    BF16,
    /// 64-bit float.
    F64,
}

impl Dtype {
    fn parse(name: &str) -> Option<Self> {
        Some(match name {
            "F32" => Dtype::F32,
            "F16" => Dtype::F16,
            "BF16" => Dtype::BF16,
            "F64" => Dtype::F64,
            _ => return None,
        })
    }

    /// Bytes per element.
    pub fn size(self) -> usize {
        match self {
            Dtype::F16 | Dtype::BF16 => 2,
            Dtype::F32 => 4,
            Dtype::F64 => 8,
        }
    }
}

/// Where one tensor lies in the file.
#[derive(Debug, Clone)]
pub struct TensorInfo {
    /// Element type, or the unsupported type's name.
    pub dtype: Result<Dtype, String>,
    /// Shape as stored.
    pub shape: Vec<usize>,
    start: u64,
    end: u64,
}

/// Bytes read by range without holding them all: the browser's file bytes, kept on the
/// JavaScript side. Reading copies only the range asked for.
pub trait ByteSource {
    /// The total length in bytes.
    fn len(&self) -> u64;
    /// Whether there are no bytes.
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// Copies bytes `start..end` (within `0..len()`), or says why it cannot.
    fn read_range(&self, start: u64, end: u64) -> std::result::Result<Vec<u8>, String>;
}

/// Bytes in memory are a [`ByteSource`] too ([`SafeTensors::from_bytes`] reads its header so).
impl ByteSource for Arc<[u8]> {
    fn len(&self) -> u64 {
        <[u8]>::len(self) as u64
    }
    fn read_range(&self, start: u64, end: u64) -> std::result::Result<Vec<u8>, String> {
        self.get(start as usize..end as usize)
            .map(<[u8]>::to_vec)
            .ok_or_else(|| format!("bytes {start}..{end} lie outside the {} bytes", self.len()))
    }
}

enum Source {
    File(RefCell<std::fs::File>),
    Bytes(Arc<[u8]>),
    Ranges(Rc<dyn ByteSource>),
}

/// A validated safetensors file whose tensors are read on demand.
pub struct SafeTensors {
    name: String,
    source: Source,
    data_start: u64,
    tensors: BTreeMap<String, TensorInfo>,
    metadata: BTreeMap<String, String>,
}

impl SafeTensors {
    /// Opens `path` and validates its header (not the data, which is read lazily).
    pub fn open(path: &Path) -> Result<Self> {
        let mut file = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
        let len = file.metadata().map_err(|e| Error::io(path, e))?.len();
        let name = path.display().to_string();
        let mut head = [0u8; 8];
        if len < 8 {
            return Err(Error::format(&name, format!("not a safetensors file: only {len} bytes")));
        }
        file.read_exact(&mut head).map_err(|e| Error::io(path, e))?;
        let header_len = u64::from_le_bytes(head);
        check_header_len(&name, header_len, len)?;
        let mut header = vec![0u8; header_len as usize];
        file.read_exact(&mut header).map_err(|e| Error::io(path, e))?;
        Self::from_header(name, Source::File(RefCell::new(file)), &header, len)
    }

    /// Parses a safetensors file held in memory; `name` is used in errors.
    pub fn from_bytes(bytes: Arc<[u8]>, name: &str) -> Result<Self> {
        let head = Self::read_head(&bytes, name)?;
        let len = ByteSource::len(&bytes);
        Self::from_header(name.to_string(), Source::Bytes(bytes), &head[8..], len)
    }

    fn from_header(name: String, source: Source, header: &[u8], file_len: u64) -> Result<Self> {
        let data_start = 8 + header.len() as u64;
        let (tensors, metadata) = parse_header(&name, header, file_len - data_start)?;
        Ok(Self { name, source, data_start, tensors, metadata })
    }

    /// Parses a safetensors file read by range from `source` (the browser's file bytes on the
    /// JavaScript side): only the header is read now, each tensor's bytes when it is read.
    pub fn from_source(source: Rc<dyn ByteSource>, name: &str) -> Result<Self> {
        let head = Self::read_head(source.as_ref(), name)?;
        let len = source.len();
        Self::from_header(name.to_string(), Source::Ranges(source), &head[8..], len)
    }

    /// The first bytes of a safetensors file read from `source`: the 8-byte length and the
    /// header (checked against the file's length), what [`SafeTensors::header_tensors`] takes.
    pub fn read_head(source: &dyn ByteSource, name: &str) -> Result<Vec<u8>> {
        let len = source.len();
        if len < 8 {
            return Err(Error::format(name, format!("not a safetensors file: only {len} bytes")));
        }
        let read = |start, end| {
            source
                .read_range(start, end)
                .map_err(|e| Error::format(name, format!("cannot read: {e}")))
        };
        let header_len = u64::from_le_bytes(read(0, 8)?[..].try_into().expect("8 bytes"));
        check_header_len(name, header_len, len)?;
        read(0, 8 + header_len)
    }

    /// Validates the header of a safetensors file of `file_len` bytes from its first bytes
    /// (`prefix`: the 8-byte length and at least the whole header; more is ignored), with the
    /// same checks as [`SafeTensors::from_bytes`], and returns its tensors. For estimates made
    /// before the data is read (the browser reads only the head of a file for them).
    pub fn header_tensors(
        prefix: &[u8],
        file_len: u64,
        name: &str,
    ) -> Result<BTreeMap<String, TensorInfo>> {
        if file_len < 8 || prefix.len() < 8 {
            return Err(Error::format(
                name,
                format!("not a safetensors file: only {file_len} bytes"),
            ));
        }
        let header_len = u64::from_le_bytes(prefix[..8].try_into().expect("8 bytes"));
        check_header_len(name, header_len, file_len)?;
        let header = prefix.get(8..8 + header_len as usize).ok_or_else(|| {
            Error::format(
                name,
                format!(
                    "only the first {} bytes were read, and the header needs {}",
                    prefix.len(),
                    8 + header_len
                ),
            )
        })?;
        Ok(parse_header(name, header, file_len - 8 - header_len)?.0)
    }

    /// The file name used in error messages.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Every tensor's name and layout.
    pub fn tensors(&self) -> &BTreeMap<String, TensorInfo> {
        &self.tensors
    }

    /// The header's free-form `__metadata__` entries.
    pub fn metadata(&self) -> &BTreeMap<String, String> {
        &self.metadata
    }

    /// Whether a tensor of this name exists.
    pub fn contains(&self, name: &str) -> bool {
        self.tensors.contains_key(name)
    }

    /// Reads one tensor as `f32` values, with its stored shape.
    pub fn read_f32(&self, tensor: &str) -> Result<(Vec<f32>, Vec<usize>)> {
        let info = self.tensors.get(tensor).ok_or_else(|| {
            Error::format(&self.name, format!("tensor '{tensor}' is missing from the checkpoint"))
        })?;
        let dtype = info.dtype.clone().map_err(|t| {
            Error::format(
                &self.name,
                format!("tensor '{tensor}' has dtype {t}; only F32, F16, BF16 and F64 weights are supported (quantised checkpoints are not)"),
            )
        })?;
        let raw = self.read_raw(info)?;
        let values = match dtype {
            Dtype::F32 => {
                raw.chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect()
            }
            Dtype::F16 => raw
                .chunks_exact(2)
                .map(|b| half::f16::from_le_bytes([b[0], b[1]]).to_f32())
                .collect(),
            Dtype::BF16 => raw
                .chunks_exact(2)
                .map(|b| half::bf16::from_le_bytes([b[0], b[1]]).to_f32())
                .collect(),
            Dtype::F64 => raw
                .chunks_exact(8)
                .map(|b| f64::from_le_bytes(b.try_into().expect("8 bytes")) as f32)
                .collect(),
        };
        Ok((values, info.shape.clone()))
    }

    fn read_raw(&self, info: &TensorInfo) -> Result<Vec<u8>> {
        let len = (info.end - info.start) as usize;
        match &self.source {
            Source::Bytes(bytes) => {
                let start = (self.data_start + info.start) as usize;
                Ok(bytes[start..start + len].to_vec())
            }
            Source::Ranges(source) => {
                let start = self.data_start + info.start;
                source
                    .read_range(start, start + len as u64)
                    .map_err(|e| Error::format(&self.name, format!("cannot read tensor data: {e}")))
            }
            Source::File(file) => {
                let mut file = file.borrow_mut();
                let mut buf = vec![0u8; len];
                file.seek(SeekFrom::Start(self.data_start + info.start))
                    .and_then(|_| file.read_exact(&mut buf))
                    .map_err(|e| {
                        Error::format(&self.name, format!("cannot read tensor data: {e}"))
                    })?;
                Ok(buf)
            }
        }
    }
}

/// The tensors and `__metadata__` of a header whose file has `data_len` bytes after it.
type Header = (BTreeMap<String, TensorInfo>, BTreeMap<String, String>);

fn parse_header(name: &str, header: &[u8], data_len: u64) -> Result<Header> {
    let json: serde_json::Map<String, serde_json::Value> = serde_json::from_slice(header)
        .map_err(|e| Error::format(name, format!("invalid safetensors header: {e}")))?;
    let mut tensors = BTreeMap::new();
    let mut metadata = BTreeMap::new();
    for (key, value) in json {
        if key == "__metadata__" {
            if let Some(map) = value.as_object() {
                for (k, v) in map {
                    metadata.insert(k.clone(), v.as_str().unwrap_or_default().to_string());
                }
            }
            continue;
        }
        let info = parse_tensor_info(name, &key, &value, data_len)?;
        tensors.insert(key, info);
    }
    Ok((tensors, metadata))
}

fn check_header_len(name: &str, header_len: u64, file_len: u64) -> Result<()> {
    if header_len > MAX_HEADER_BYTES || header_len > file_len - 8 {
        return Err(Error::format(
            name,
            format!(
                "not a valid safetensors file: header claims {header_len} bytes but the file has {file_len} (truncated or corrupt)"
            ),
        ));
    }
    Ok(())
}

fn parse_tensor_info(
    file: &str,
    key: &str,
    value: &serde_json::Value,
    data_len: u64,
) -> Result<TensorInfo> {
    let bad = |msg: &str| Error::format(file, format!("tensor '{key}': {msg}"));
    let dtype_name = value.get("dtype").and_then(|v| v.as_str()).ok_or_else(|| bad("no dtype"))?;
    let shape: Vec<usize> = value
        .get("shape")
        .and_then(|v| v.as_array())
        .ok_or_else(|| bad("no shape"))?
        .iter()
        .map(|d| d.as_u64().map(|d| d as usize).ok_or_else(|| bad("shape is not a list of sizes")))
        .collect::<Result<_>>()?;
    let offsets = value
        .get("data_offsets")
        .and_then(|v| v.as_array())
        .ok_or_else(|| bad("no data_offsets"))?;
    let (start, end) = match offsets.as_slice() {
        [a, b] => (
            a.as_u64().ok_or_else(|| bad("bad offset"))?,
            b.as_u64().ok_or_else(|| bad("bad offset"))?,
        ),
        _ => return Err(bad("data_offsets must hold two numbers")),
    };
    if start > end || end > data_len {
        return Err(bad(&format!(
            "data offsets [{start}, {end}] lie outside the {data_len} data bytes (truncated or corrupt file)"
        )));
    }
    let dtype = Dtype::parse(dtype_name).ok_or_else(|| dtype_name.to_string());
    let elem = match &dtype {
        Ok(d) => d.size() as u64,
        Err(_) => dtype_size_by_name(dtype_name),
    };
    let numel = shape.iter().try_fold(1u64, |acc, &d| acc.checked_mul(d as u64));
    match numel.and_then(|n| n.checked_mul(elem)) {
        Some(bytes) if bytes == end - start || elem == 0 => {}
        _ => {
            return Err(bad(&format!(
                "shape {shape:?} of {dtype_name} needs a different byte count than its offsets give ({} bytes)",
                end - start
            )))
        }
    }
    Ok(TensorInfo { dtype, shape, start, end })
}

fn dtype_size_by_name(name: &str) -> u64 {
    match name {
        "I8" | "U8" | "BOOL" | "F8_E4M3" | "F8_E5M2" => 1,
        "I16" | "U16" => 2,
        "I32" | "U32" => 4,
        "I64" | "U64" => 8,
        _ => 0,
    }
}
