//! Reading checkpoint tensors by their original names.
//!
//! [`SafeTensors`] parses a `.safetensors` header and validates every offset before any data is
//! read; tensors are then read one at a time (from the file, or from bytes in the browser) and
//! converted to `f32`, so loading never holds two full copies of the weights.
//! [`Loader`] is what the model code uses: it builds layers from tensors looked up by name,
//! checking each shape against the one the config implies.

use std::cell::RefCell;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::io::{Read, Seek, SeekFrom};
use std::path::Path;
use std::sync::Arc;

use burn::module::{Param, ParamId};
use burn::nn::{Embedding, Linear};
use burn::tensor::{Device, Distribution, Tensor, TensorData};

use crate::model::nn::{LayerNorm, SplitQkv};
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

enum Source {
    File(RefCell<std::fs::File>),
    Bytes(Arc<[u8]>),
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

    /// Parses a safetensors file held in memory (the browser's case); `name` is used in errors.
    pub fn from_bytes(bytes: Arc<[u8]>, name: &str) -> Result<Self> {
        let len = bytes.len() as u64;
        if len < 8 {
            return Err(Error::format(name, format!("not a safetensors file: only {len} bytes")));
        }
        let header_len = u64::from_le_bytes(bytes[..8].try_into().expect("8 bytes"));
        check_header_len(name, header_len, len)?;
        let header = bytes[8..8 + header_len as usize].to_vec();
        Self::from_header(name.to_string(), Source::Bytes(bytes), &header, len)
    }

    fn from_header(name: String, source: Source, header: &[u8], file_len: u64) -> Result<Self> {
        let data_start = 8 + header.len() as u64;
        let data_len = file_len - data_start;
        let json: serde_json::Map<String, serde_json::Value> = serde_json::from_slice(header)
            .map_err(|e| Error::format(&name, format!("invalid safetensors header: {e}")))?;
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
            let info = parse_tensor_info(&name, &key, &value, data_len)?;
            tensors.insert(key, info);
        }
        Ok(Self { name, source, data_start, tensors, metadata })
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
            Dtype::F32 => raw.chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect(),
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
            Source::File(file) => {
                let mut file = file.borrow_mut();
                let mut buf = vec![0u8; len];
                file.seek(SeekFrom::Start(self.data_start + info.start))
                    .and_then(|_| file.read_exact(&mut buf))
                    .map_err(|e| Error::format(&self.name, format!("cannot read tensor data: {e}")))?;
                Ok(buf)
            }
        }
    }
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

fn parse_tensor_info(file: &str, key: &str, value: &serde_json::Value, data_len: u64) -> Result<TensorInfo> {
    let bad = |msg: &str| Error::format(file, format!("tensor '{key}': {msg}"));
    let dtype_name = value.get("dtype").and_then(|v| v.as_str()).ok_or_else(|| bad("no dtype"))?;
    let shape: Vec<usize> = value
        .get("shape")
        .and_then(|v| v.as_array())
        .ok_or_else(|| bad("no shape"))?
        .iter()
        .map(|d| d.as_u64().map(|d| d as usize).ok_or_else(|| bad("shape is not a list of sizes")))
        .collect::<Result<_>>()?;
    let offsets = value.get("data_offsets").and_then(|v| v.as_array()).ok_or_else(|| bad("no data_offsets"))?;
    let (start, end) = match offsets.as_slice() {
        [a, b] => (a.as_u64().ok_or_else(|| bad("bad offset"))?, b.as_u64().ok_or_else(|| bad("bad offset"))?),
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

/// Where a model's weights come from.
pub enum WeightSource {
    /// Tensors read from a checkpoint by name.
    Checkpoint(SafeTensors),
    /// Random values (N(0, 0.02²); LayerNorm weights one): full-size models without weights,
    /// for benchmarks.
    Random,
}

/// Builds layers from named tensors, checking every shape against the config.
///
/// Records which tensors were used, so callers can report the ones a checkpoint carries but the
/// model ignores.
///
/// Every parameter built through its methods is also recorded in a [`ParamNames`] map (its
/// checkpoint name, the kind of PyTorch module it belongs to and how Burn lays it out), which
/// LoRA uses to pick the same targets as peft and to name adapters as peft does.
pub struct Loader {
    source: WeightSource,
    device: Device,
    used: RefCell<HashSet<String>>,
    names: RefCell<ParamNames>,
}

impl Loader {
    /// A loader over `source` that creates tensors on `device`.
    pub fn new(source: WeightSource, device: &Device) -> Self {
        Self {
            source,
            device: device.clone(),
            used: RefCell::new(HashSet::new()),
            names: RefCell::new(ParamNames::default()),
        }
    }

    /// The names of every parameter built so far (see [`ParamNames`]).
    pub fn param_names(&self) -> ParamNames {
        self.names.borrow().clone()
    }

    /// Records where a parameter came from.
    pub fn record<const D: usize>(&self, param: &Param<Tensor<D>>, info: ParamInfo) {
        self.names.borrow_mut().insert(param.id, info);
    }

    /// A bare tensor parameter `name` of `shape` (an `nn.Parameter`, or the weight table of an
    /// `nn.Embedding` used by index, per `kind`), recorded under its name.
    pub fn param<const D: usize>(&self, name: &str, shape: [usize; D], kind: ParamKind) -> Result<Param<Tensor<D>>> {
        let param = Param::from_tensor(self.tensor(name, shape)?);
        self.record(&param, ParamInfo::new(name, kind, Layout::Same, &shape));
        Ok(param)
    }

    /// Like [`Loader::param`] for a tensor stored as `stored` and used as `shape` (same element
    /// order), e.g. timm's `cls_token` `[1, 1, d]` used as `[d]`.
    pub fn param_reshaped<const S: usize, const D: usize>(
        &self,
        name: &str,
        stored: [usize; S],
        shape: [usize; D],
        kind: ParamKind,
    ) -> Result<Param<Tensor<D>>> {
        let param = Param::from_tensor(self.tensor::<S>(name, stored)?.reshape(shape));
        self.record(&param, ParamInfo::new(name, kind, Layout::Reshaped, &stored));
        Ok(param)
    }

    /// Like [`Loader::param`] but filled with `fill` under random init (LayerScale gammas).
    pub fn param_or_fill<const D: usize>(&self, name: &str, shape: [usize; D], fill: f32, kind: ParamKind) -> Result<Param<Tensor<D>>> {
        let param = Param::from_tensor(self.tensor_or_fill(name, shape, fill)?);
        self.record(&param, ParamInfo::new(name, kind, Layout::Same, &shape));
        Ok(param)
    }

    /// The device tensors are created on.
    pub fn device(&self) -> &Device {
        &self.device
    }

    /// The checkpoint's name, for messages.
    pub fn name(&self) -> &str {
        match &self.source {
            WeightSource::Checkpoint(st) => st.name(),
            WeightSource::Random => "<random init>",
        }
    }

    /// Whether the checkpoint has a tensor of this name (always false for random init).
    pub fn contains(&self, name: &str) -> bool {
        match &self.source {
            WeightSource::Checkpoint(st) => st.contains(name),
            WeightSource::Random => false,
        }
    }

    /// The stored shape of a tensor, if present.
    pub fn shape_of(&self, name: &str) -> Option<Vec<usize>> {
        match &self.source {
            WeightSource::Checkpoint(st) => st.tensors().get(name).map(|t| t.shape.clone()),
            WeightSource::Random => None,
        }
    }

    /// Checkpoint tensors that no layer asked for.
    pub fn unused(&self) -> Vec<String> {
        let used = self.used.borrow();
        match &self.source {
            WeightSource::Checkpoint(st) => {
                st.tensors().keys().filter(|k| !used.contains(*k)).cloned().collect()
            }
            WeightSource::Random => Vec::new(),
        }
    }

    /// Reads `name` as host values, checking it has `shape` (a stored `[n]` also matches a
    /// requested `[1, n]` or `[n, 1]`-free reshape of the same element count only when equal).
    pub fn values(&self, name: &str, shape: &[usize]) -> Result<Vec<f32>> {
        match &self.source {
            WeightSource::Random => {
                let n: usize = shape.iter().product();
                Ok(random_values(name, n))
            }
            WeightSource::Checkpoint(st) => {
                let (values, found) = st.read_f32(name)?;
                if found != shape {
                    return Err(Error::format(
                        st.name(),
                        format!("tensor '{name}' has shape {found:?} but the config implies {shape:?}"),
                    ));
                }
                self.used.borrow_mut().insert(name.to_string());
                Ok(values)
            }
        }
    }

    /// Reads a tensor of the given shape.
    pub fn tensor<const D: usize>(&self, name: &str, shape: [usize; D]) -> Result<Tensor<D>> {
        let values = self.values(name, &shape)?;
        Ok(Tensor::from_data(TensorData::new(values, shape), &self.device))
    }

    /// Like [`Loader::tensor`] but filled with `fill` under random init (LayerNorm gammas,
    /// LayerScale) so random models stay numerically sane.
    pub fn tensor_or_fill<const D: usize>(&self, name: &str, shape: [usize; D], fill: f32) -> Result<Tensor<D>> {
        match self.source {
            WeightSource::Random => Ok(Tensor::full(shape, fill, &self.device)),
            _ => self.tensor(name, shape),
        }
    }

    /// A PyTorch `nn.Linear` stored as `{name}.weight` `[out, in]` and optionally `{name}.bias`.
    ///
    /// Recorded as [`ParamKind::Linear`], or [`ParamKind::MhaOutProj`] when it is the `out_proj`
    /// of a PyTorch `nn.MultiheadAttention` (the checkpoint holds a sibling `in_proj_weight`,
    /// `in_proj_bias` or `q_proj_weight`).
    pub fn linear(&self, name: &str, d_in: usize, d_out: usize, bias: bool) -> Result<Linear> {
        let weight = self.tensor::<2>(&format!("{name}.weight"), [d_out, d_in])?;
        let bias = if bias { Some(self.tensor::<1>(&format!("{name}.bias"), [d_out])?) } else { None };
        let linear = linear_from_torch(weight, bias);
        let kind = match name.strip_suffix(".out_proj") {
            Some(mha) if ["in_proj_weight", "in_proj_bias", "q_proj_weight"].iter().any(|t| self.contains(&format!("{mha}.{t}"))) => {
                ParamKind::MhaOutProj
            }
            _ => ParamKind::Linear,
        };
        self.record(&linear.weight, ParamInfo::new(&format!("{name}.weight"), kind, Layout::Transposed, &[d_out, d_in]));
        if let Some(b) = &linear.bias {
            self.record(b, ParamInfo::new(&format!("{name}.bias"), ParamKind::Bias, Layout::Same, &[d_out]));
        }
        Ok(linear)
    }

    /// A linear layer whose bias is optional in the checkpoint (present → used).
    pub fn linear_maybe_bias(&self, name: &str, d_in: usize, d_out: usize) -> Result<Linear> {
        let has_bias = self.contains(&format!("{name}.bias")) || matches!(self.source, WeightSource::Random);
        self.linear(name, d_in, d_out, has_bias)
    }

    /// A projection stored as a bare `[in, out]` matrix used as `x @ proj` (open_clip style).
    /// Recorded as a bare [`ParamKind::Parameter`] (peft cannot adapt it).
    pub fn projection(&self, name: &str, d_in: usize, d_out: usize) -> Result<Linear> {
        Ok(Linear { weight: self.param(name, [d_in, d_out], ParamKind::Parameter)?, bias: None })
    }

    /// A LayerNorm stored as `{name}.weight` and `{name}.bias`.
    pub fn layer_norm(&self, name: &str, dim: usize, eps: f64) -> Result<LayerNorm> {
        let gamma = self.tensor_or_fill::<1>(&format!("{name}.weight"), [dim], 1.0)?;
        let beta = self.tensor_or_fill::<1>(&format!("{name}.bias"), [dim], 0.0)?;
        let norm = LayerNorm::new(gamma, beta, eps);
        self.record(&norm.gamma, ParamInfo::new(&format!("{name}.weight"), ParamKind::Norm, Layout::Same, &[dim]));
        self.record(&norm.beta, ParamInfo::new(&format!("{name}.bias"), ParamKind::Norm, Layout::Same, &[dim]));
        Ok(norm)
    }

    /// An `nn.Embedding` stored as `{name}.weight` `[num, dim]`.
    pub fn embedding(&self, name: &str, num: usize, dim: usize) -> Result<Embedding> {
        Ok(Embedding { weight: self.param(&format!("{name}.weight"), [num, dim], ParamKind::Embedding)? })
    }

    /// A stride-`patch` `nn.Conv2d` patch embedding stored as a `[dim, channels, patch, patch]`
    /// kernel (+ optional bias), built as a linear layer over flattened `(channel, row, col)`
    /// patches: the weight is the kernel reshaped to `[dim, channels·patch²]` and transposed.
    pub fn conv_patch_embed(&self, weight: &str, bias: Option<&str>, dim: usize, channels: usize, patch: usize) -> Result<Linear> {
        let kernel = [dim, channels, patch, patch];
        let w = self.tensor::<4>(weight, kernel)?.reshape([dim, channels * patch * patch]);
        let b = bias.map(|name| self.tensor::<1>(name, [dim])).transpose()?;
        let linear = linear_from_torch(w, b);
        self.record(&linear.weight, ParamInfo::new(weight, ParamKind::Conv2d, Layout::ConvAsLinear, &kernel));
        if let (Some(b), Some(name)) = (&linear.bias, bias) {
            self.record(b, ParamInfo::new(name, ParamKind::Bias, Layout::Same, &[dim]));
        }
        Ok(linear)
    }

    /// The fused input projection of a PyTorch `nn.MultiheadAttention` named `prefix`
    /// (`{prefix}.in_proj_weight` `[3·dim, dim]` and `{prefix}.in_proj_bias`), as one linear
    /// layer whose output splits into q, k, v. Bare parameters in PyTorch: peft cannot adapt them.
    pub fn mha_in_proj(&self, prefix: &str, dim: usize) -> Result<Linear> {
        let (wn, bn) = (format!("{prefix}.in_proj_weight"), format!("{prefix}.in_proj_bias"));
        let linear = linear_from_torch(self.tensor::<2>(&wn, [3 * dim, dim])?, Some(self.tensor::<1>(&bn, [3 * dim])?));
        self.record(&linear.weight, ParamInfo::new(&wn, ParamKind::Parameter, Layout::Transposed, &[3 * dim, dim]));
        if let Some(b) = &linear.bias {
            self.record(b, ParamInfo::new(&bn, ParamKind::Parameter, Layout::Same, &[3 * dim]));
        }
        Ok(linear)
    }

    /// The q, k, v projections of a PyTorch `nn.MultiheadAttention` named `prefix` whose keys
    /// and values have width `kdim`: from `{prefix}.in_proj_weight` `[3·dim, dim]` when present
    /// (`kdim == dim`), else from `{prefix}.{q,k,v}_proj_weight`; biases from
    /// `{prefix}.in_proj_bias` `[3·dim]`. Bare parameters in PyTorch: peft cannot adapt them.
    pub fn mha_split_qkv(&self, prefix: &str, dim: usize, kdim: usize) -> Result<SplitQkv> {
        let fused = format!("{prefix}.in_proj_weight");
        let bias_name = format!("{prefix}.in_proj_bias");
        let mut b = self.tensor::<1>(&bias_name, [3 * dim])?.chunk(3, 0).into_iter();
        let mut part = |i: usize, width: usize, own: &str| -> Result<Linear> {
            let bias = b.next().expect("3 chunks");
            let (w, info) = if self.contains(&fused) {
                let w = self.tensor::<2>(&fused, [3 * dim, dim])?.narrow(0, i * dim, dim);
                (w, ParamInfo::new(&fused, ParamKind::Parameter, Layout::TransposedRows { start: i * dim, len: dim }, &[3 * dim, dim]))
            } else {
                let name = format!("{prefix}.{own}");
                (self.tensor::<2>(&name, [dim, width])?, ParamInfo::new(&name, ParamKind::Parameter, Layout::Transposed, &[dim, width]))
            };
            let linear = linear_from_torch(w, Some(bias));
            self.record(&linear.weight, info);
            if let Some(bias) = &linear.bias {
                let layout = Layout::Slice { start: i * dim, len: dim };
                self.record(bias, ParamInfo::new(&bias_name, ParamKind::Parameter, layout, &[3 * dim]));
            }
            Ok(linear)
        };
        Ok(SplitQkv { q: part(0, dim, "q_proj_weight")?, k: part(1, kdim, "k_proj_weight")?, v: part(2, kdim, "v_proj_weight")? })
    }
}

/// What a parameter is in the original PyTorch model, which decides whether peft's
/// `LoraConfig(target_modules=...)` can adapt it: only the weights of `nn.Linear`,
/// `nn.Embedding` and `nn.Conv2d` modules can be targets.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub enum ParamKind {
    /// The weight of an `nn.Linear`.
    Linear,
    /// The weight of the `out_proj` of an `nn.MultiheadAttention` (open_clip and CONCH). peft
    /// wraps it like any `nn.Linear`, but the attention reads `out_proj.weight` directly, so the
    /// adapter never changes peft's forward pass (nor gets a gradient) until it is merged.
    MhaOutProj,
    /// The weight table of an `nn.Embedding` (token embeddings; HF CLIP position embeddings).
    Embedding,
    /// The kernel of an `nn.Conv2d` (the patch embedding).
    Conv2d,
    /// The bias of a layer.
    Bias,
    /// A bare `nn.Parameter` (open_clip `in_proj_weight`, `proj`, `positional_embedding`,
    /// class tokens, CONCH pooler projections...).
    Parameter,
    /// A LayerNorm weight or bias, or a LayerScale gamma.
    Norm,
}

impl ParamKind {
    /// Whether this is the weight of a module that peft can wrap with LoRA.
    pub fn is_module_weight(self) -> bool {
        matches!(self, Self::Linear | Self::MhaOutProj | Self::Embedding | Self::Conv2d)
    }
}

/// How a Burn parameter is laid out relative to its checkpoint tensor.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum Layout {
    /// Same shape, same order.
    Same,
    /// Burn `[in, out]` is the transpose of the PyTorch `[out, in]` linear weight.
    Transposed,
    /// Burn `[c·kh·kw, out]` is the PyTorch `[out, c, kh, kw]` kernel reshaped to
    /// `[out, c·kh·kw]`, then transposed.
    ConvAsLinear,
    /// Same element order, other shape.
    Reshaped,
    /// Rows `start..start + len` of the PyTorch `[rows, in]` matrix, transposed.
    TransposedRows {
        /// First row.
        start: usize,
        /// Number of rows.
        len: usize,
    },
    /// Elements `start..start + len` of the PyTorch vector.
    Slice {
        /// First element.
        start: usize,
        /// Number of elements.
        len: usize,
    },
}

/// Where one Burn parameter comes from in the checkpoint.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ParamInfo {
    /// The checkpoint tensor's name, e.g. `blocks.0.attn.qkv.weight`.
    pub tensor: String,
    /// What the tensor is in the PyTorch model.
    pub kind: ParamKind,
    /// How the Burn tensor relates to the checkpoint tensor.
    pub layout: Layout,
    /// The checkpoint tensor's shape.
    pub torch_shape: Vec<usize>,
}

impl ParamInfo {
    /// A record for `tensor` of checkpoint shape `torch_shape`.
    pub fn new(tensor: &str, kind: ParamKind, layout: Layout, torch_shape: &[usize]) -> Self {
        Self { tensor: tensor.to_string(), kind, layout, torch_shape: torch_shape.to_vec() }
    }

    /// The PyTorch module name: the tensor name without its trailing `.weight` / `.bias` for
    /// module weights and biases (`blocks.0.attn.qkv`), the tensor name itself otherwise.
    pub fn module(&self) -> &str {
        match self.kind {
            ParamKind::Parameter => &self.tensor,
            _ => self.tensor.strip_suffix(".weight").or_else(|| self.tensor.strip_suffix(".bias")).unwrap_or(&self.tensor),
        }
    }
}

/// For each parameter a loader built (by [`ParamId`]), where it comes from in the checkpoint.
///
/// Parameter ids are unique per process and survive cloning, device moves, autodiff, LoRA and
/// merging, so one map serves a model through its whole life. Parameters created elsewhere (new
/// heads, for instance) have no entry unless registered with [`ParamNames::insert`] or
/// [`ParamNames::register_linear`].
#[derive(Debug, Clone, Default)]
pub struct ParamNames {
    by_id: HashMap<ParamId, ParamInfo>,
}

impl ParamNames {
    /// Where the parameter `id` comes from, if recorded.
    pub fn get(&self, id: ParamId) -> Option<&ParamInfo> {
        self.by_id.get(&id)
    }

    /// Records (or replaces) the entry of `id`.
    pub fn insert(&mut self, id: ParamId, info: ParamInfo) {
        self.by_id.insert(id, info);
    }

    /// Registers a Burn `Linear` (`[in, out]` weight) as the PyTorch `nn.Linear` named `module`,
    /// e.g. a classification head, so that LoRA can target it and name it.
    pub fn register_linear(&mut self, linear: &Linear, module: &str) {
        let [d_in, d_out] = linear.weight.val().dims();
        self.insert(linear.weight.id, ParamInfo::new(&format!("{module}.weight"), ParamKind::Linear, Layout::Transposed, &[d_out, d_in]));
        if let Some(b) = &linear.bias {
            self.insert(b.id, ParamInfo::new(&format!("{module}.bias"), ParamKind::Bias, Layout::Same, &[d_out]));
        }
    }

    /// Adds every entry of `other`.
    pub fn extend(&mut self, other: ParamNames) {
        self.by_id.extend(other.by_id);
    }

    /// Number of recorded parameters.
    pub fn len(&self) -> usize {
        self.by_id.len()
    }

    /// Whether nothing is recorded.
    pub fn is_empty(&self) -> bool {
        self.by_id.is_empty()
    }

    /// Every entry, in no particular order.
    pub fn iter(&self) -> impl Iterator<Item = (&ParamId, &ParamInfo)> {
        self.by_id.iter()
    }
}

/// Builds a Burn `Linear` (`[in, out]` layout) from a PyTorch `[out, in]` weight.
pub fn linear_from_torch(weight: Tensor<2>, bias: Option<Tensor<1>>) -> Linear {
    Linear { weight: Param::from_tensor(weight.transpose()), bias: bias.map(Param::from_tensor) }
}

/// Deterministic pseudo-random N(0, 0.02²) values seeded by the tensor name.
fn random_values(name: &str, n: usize) -> Vec<f32> {
    let mut state = name.bytes().fold(0xcbf29ce484222325u64, |h, b| (h ^ b as u64).wrapping_mul(0x100000001b3));
    let mut next = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        (state >> 11) as f64 / (1u64 << 53) as f64
    };
    (0..n)
        .map(|_| {
            // Box-Muller transform.
            let (u1, u2) = (next().max(1e-12), next());
            ((-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos() * 0.02) as f32
        })
        .collect()
}

/// Random normal tensor helper for module code that needs fresh parameters.
pub fn random_tensor<const D: usize>(shape: [usize; D], std: f64, device: &Device) -> Tensor<D> {
    Tensor::random(shape, Distribution::Normal(0.0, std), device)
}
