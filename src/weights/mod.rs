//! Reading checkpoint tensors by their original names.
//!
//! [`SafeTensors`] parses a `.safetensors` header and validates every offset before any data is
//! read; tensors are then read one at a time (from the file, or from bytes in the browser) and
//! converted to `f32`, so loading never holds two full copies of the weights.
//! [`Loader`] is what the model code uses: it builds layers from tensors looked up by name,
//! checking each shape against the one the config implies.

pub mod export;
mod params;
mod safetensors;

pub use params::{Layout, ParamInfo, ParamKind, ParamNames};
pub use safetensors::{ByteSource, Dtype, SafeTensors, TensorInfo};

use std::cell::RefCell;
use std::collections::HashSet;

use burn::module::Param;
use burn::nn::{Embedding, Linear};
use burn::tensor::{Device, Tensor, TensorData};

use crate::model::nn::{LayerNorm, SplitQkv};
use crate::{Error, Result};

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
    pub fn param<const D: usize>(
        &self,
        name: &str,
        shape: [usize; D],
        kind: ParamKind,
    ) -> Result<Param<Tensor<D>>> {
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
    pub fn param_or_fill<const D: usize>(
        &self,
        name: &str,
        shape: [usize; D],
        fill: f32,
        kind: ParamKind,
    ) -> Result<Param<Tensor<D>>> {
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
                        format!(
                            "tensor '{name}' has shape {found:?} but the config implies {shape:?}"
                        ),
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
    pub fn tensor_or_fill<const D: usize>(
        &self,
        name: &str,
        shape: [usize; D],
        fill: f32,
    ) -> Result<Tensor<D>> {
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
        let bias =
            if bias { Some(self.tensor::<1>(&format!("{name}.bias"), [d_out])?) } else { None };
        let linear = linear_from_torch(weight, bias);
        let kind = match name.strip_suffix(".out_proj") {
            Some(mha)
                if ["in_proj_weight", "in_proj_bias", "q_proj_weight"]
                    .iter()
                    .any(|t| self.contains(&format!("{mha}.{t}"))) =>
            {
                ParamKind::MhaOutProj
            }
            _ => ParamKind::Linear,
        };
        self.record(
            &linear.weight,
            ParamInfo::new(&format!("{name}.weight"), kind, Layout::Transposed, &[d_out, d_in]),
        );
        if let Some(b) = &linear.bias {
            self.record(
                b,
                ParamInfo::new(&format!("{name}.bias"), ParamKind::Bias, Layout::Same, &[d_out]),
            );
        }
        Ok(linear)
    }

    /// A linear layer whose bias is optional in the checkpoint (present → used).
    pub fn linear_maybe_bias(&self, name: &str, d_in: usize, d_out: usize) -> Result<Linear> {
        let has_bias =
            self.contains(&format!("{name}.bias")) || matches!(self.source, WeightSource::Random);
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
        self.record(
            &norm.gamma,
            ParamInfo::new(&format!("{name}.weight"), ParamKind::Norm, Layout::Same, &[dim]),
        );
        self.record(
            &norm.beta,
            ParamInfo::new(&format!("{name}.bias"), ParamKind::Norm, Layout::Same, &[dim]),
        );
        Ok(norm)
    }

    /// An `nn.Embedding` stored as `{name}.weight` `[num, dim]`.
    pub fn embedding(&self, name: &str, num: usize, dim: usize) -> Result<Embedding> {
        Ok(Embedding {
            weight: self.param(&format!("{name}.weight"), [num, dim], ParamKind::Embedding)?,
        })
    }

    /// A stride-`patch` `nn.Conv2d` patch embedding stored as a `[dim, channels, patch, patch]`
    /// kernel (+ optional bias), built as a linear layer over flattened `(channel, row, col)`
    /// patches: the weight is the kernel reshaped to `[dim, channels·patch²]` and transposed.
    pub fn conv_patch_embed(
        &self,
        weight: &str,
        bias: Option<&str>,
        dim: usize,
        channels: usize,
        patch: usize,
    ) -> Result<Linear> {
        let kernel = [dim, channels, patch, patch];
        let w = self.tensor::<4>(weight, kernel)?.reshape([dim, channels * patch * patch]);
        let b = bias.map(|name| self.tensor::<1>(name, [dim])).transpose()?;
        let linear = linear_from_torch(w, b);
        self.record(
            &linear.weight,
            ParamInfo::new(weight, ParamKind::Conv2d, Layout::ConvAsLinear, &kernel),
        );
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
        let linear = linear_from_torch(
            self.tensor::<2>(&wn, [3 * dim, dim])?,
            Some(self.tensor::<1>(&bn, [3 * dim])?),
        );
        self.record(
            &linear.weight,
            ParamInfo::new(&wn, ParamKind::Parameter, Layout::Transposed, &[3 * dim, dim]),
        );
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
                (
                    w,
                    ParamInfo::new(
                        &fused,
                        ParamKind::Parameter,
                        Layout::TransposedRows { start: i * dim, len: dim },
                        &[3 * dim, dim],
                    ),
                )
            } else {
                let name = format!("{prefix}.{own}");
                (
                    self.tensor::<2>(&name, [dim, width])?,
                    ParamInfo::new(&name, ParamKind::Parameter, Layout::Transposed, &[dim, width]),
                )
            };
            let linear = linear_from_torch(w, Some(bias));
            self.record(&linear.weight, info);
            if let Some(bias) = &linear.bias {
                let layout = Layout::Slice { start: i * dim, len: dim };
                self.record(
                    bias,
                    ParamInfo::new(&bias_name, ParamKind::Parameter, layout, &[3 * dim]),
                );
            }
            Ok(linear)
        };
        Ok(SplitQkv {
            q: part(0, dim, "q_proj_weight")?,
            k: part(1, kdim, "k_proj_weight")?,
            v: part(2, kdim, "v_proj_weight")?,
        })
    }
}

/// Builds a Burn `Linear` (`[in, out]` layout) from a PyTorch `[out, in]` weight.
pub fn linear_from_torch(weight: Tensor<2>, bias: Option<Tensor<1>>) -> Linear {
    Linear { weight: Param::from_tensor(weight.transpose()), bias: bias.map(Param::from_tensor) }
}

/// Deterministic pseudo-random N(0, 0.02²) values seeded by the tensor name.
fn random_values(name: &str, n: usize) -> Vec<f32> {
    let mut state =
        name.bytes().fold(0xcbf29ce484222325u64, |h, b| (h ^ b as u64).wrapping_mul(0x100000001b3));
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
