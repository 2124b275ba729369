//! Writing a model back under its checkpoint's own tensor names and layouts: the inverse of
//! [`super::Loader`]. A model trained here (e.g. the demo CLIP of `clipit pretrain`) then loads in
//! clipit and in the reference implementation (open_clip, transformers, timm) alike.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use burn::module::{Module, ModuleVisitor, Param, ParamId};
use burn::tensor::Tensor;

use super::params::{Layout, ParamNames};
use crate::{Error, Result};

/// A tensor in PyTorch's layout, on the host.
#[derive(Debug, Clone, PartialEq)]
pub struct TorchTensor {
    /// PyTorch shape.
    pub shape: Vec<usize>,
    /// Row-major values.
    pub values: Vec<f32>,
}

/// Element type of an exported checkpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExportDtype {
    /// 32-bit floats.
    F32,
    /// 16-bit floats (half the size; what the browser demo ships).
    F16,
}

/// Every parameter of `module` that `names` knows, as the checkpoint tensors they came from
/// (keyed by checkpoint name). Parameters split at load time (open_clip's `in_proj_weight` into
/// q, k and v) are put back together. Fails if a parameter has no recorded name or if a split
/// tensor is incomplete.
pub fn checkpoint_tensors<M: Module>(
    module: &M,
    names: &ParamNames,
) -> Result<BTreeMap<String, TorchTensor>> {
    struct Collect(Vec<(ParamId, Vec<usize>, Result<Vec<f32>>)>);
    impl ModuleVisitor for Collect {
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
            let t = param.val();
            let dims = t.dims().to_vec();
            let values = t
                .into_data()
                .try_into_vec_as::<f32>()
                .map_err(|e| Error::msg(format!("reading a parameter: {e:?}")));
            self.0.push((param.id, dims, values));
        }
    }
    let mut c = Collect(Vec::new());
    module.visit(&mut c);

    let mut out: BTreeMap<String, TorchTensor> = BTreeMap::new();
    let mut filled: HashMap<String, usize> = HashMap::new();
    for (id, dims, values) in c.0 {
        let values = values?;
        let info = names.get(id).ok_or_else(|| {
            Error::msg(format!(
                "a parameter of shape {dims:?} has no checkpoint name (it was not loaded from one)"
            ))
        })?;
        let numel: usize = info.torch_shape.iter().product();
        let t = out.entry(info.tensor.clone()).or_insert_with(|| TorchTensor {
            shape: info.torch_shape.clone(),
            values: vec![0.0; numel],
        });
        let bad = || {
            Error::msg(format!(
                "{}: parameter of shape {dims:?} does not fit {:?} as {:?}",
                info.tensor, info.torch_shape, info.layout
            ))
        };
        match info.layout {
            Layout::Same | Layout::Reshaped => {
                if values.len() != numel {
                    return Err(bad());
                }
                t.values.copy_from_slice(&values);
            }
            // Burn `[rows, cols]` is the transpose of the PyTorch matrix (`[out, in]`, or a conv
            // kernel flattened to `[out, c·kh·kw]`), optionally a block of its rows.
            Layout::Transposed | Layout::ConvAsLinear | Layout::TransposedRows { .. } => {
                let [rows, cols] = dims[..] else { return Err(bad()) };
                let start = match info.layout {
                    Layout::TransposedRows { start, len } if len == cols => start,
                    Layout::TransposedRows { .. } => return Err(bad()),
                    _ => 0,
                };
                if (start + cols) * rows > numel {
                    return Err(bad());
                }
                for i in 0..rows {
                    for j in 0..cols {
                        t.values[(start + j) * rows + i] = values[i * cols + j];
                    }
                }
            }
            Layout::Slice { start, len } => {
                if values.len() != len || start + len > numel {
                    return Err(bad());
                }
                t.values[start..start + len].copy_from_slice(&values);
            }
        }
        *filled.entry(info.tensor.clone()).or_default() += values.len();
    }
    for (name, t) in &out {
        if filled[name] != t.values.len() {
            return Err(Error::msg(format!(
                "{name}: only {} of {} values come from the model's parameters",
                filled[name],
                t.values.len()
            )));
        }
    }
    Ok(out)
}

/// Serialises tensors as safetensors bytes in `dtype`, with `metadata` (PyTorch writes
/// `{"format": "pt"}`).
pub fn to_safetensors(
    tensors: &BTreeMap<String, TorchTensor>,
    dtype: ExportDtype,
    metadata: HashMap<String, String>,
) -> Result<Vec<u8>> {
    let bytes: Vec<Vec<u8>> = tensors
        .values()
        .map(|t| match dtype {
            ExportDtype::F32 => t.values.iter().flat_map(|v| v.to_le_bytes()).collect(),
            ExportDtype::F16 => {
                t.values.iter().flat_map(|&v| half::f16::from_f32(v).to_le_bytes()).collect()
            }
        })
        .collect();
    let st_dtype = match dtype {
        ExportDtype::F32 => safetensors::Dtype::F32,
        ExportDtype::F16 => safetensors::Dtype::F16,
    };
    let views = tensors
        .iter()
        .zip(&bytes)
        .map(|((name, t), b)| {
            safetensors::tensor::TensorView::new(st_dtype, t.shape.clone(), b)
                .map(|v| (name.clone(), v))
                .map_err(|e| Error::msg(format!("tensor {name}: {e}")))
        })
        .collect::<Result<Vec<_>>>()?;
    safetensors::tensor::serialize(views, Some(metadata))
        .map_err(|e| Error::msg(format!("writing safetensors: {e}")))
}

/// Writes `tensors` atomically to `path` as safetensors (see [`to_safetensors`]).
pub fn save_safetensors(
    path: &Path,
    tensors: &BTreeMap<String, TorchTensor>,
    dtype: ExportDtype,
) -> Result<()> {
    let metadata = HashMap::from([("format".to_string(), "pt".to_string())]);
    crate::fsutil::write_atomic(path, &to_safetensors(tensors, dtype, metadata)?)
}
