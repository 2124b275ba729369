//! Transformer building blocks shared by every architecture: LayerNorm, activations, the MLP,
//! multi-head attention and the pre-norm residual block, plus loading them under the three
//! tensor-naming schemes that checkpoints use (Hugging Face CLIP, open_clip, timm).

use burn::module::{Module, Param};
use burn::nn::Linear;
use burn::tensor::module::{attention, layer_norm, linear as linear_op};
use burn::tensor::ops::AttentionModuleOptions;
use burn::tensor::{activation, Bool, Tensor};

use crate::weights::{Loader, ParamKind};
use crate::{Error, Result};

/// `layer(x)`, with a LoRA adapter on the weight (if any) applied to the activations as peft
/// does: `x W₀ + bias + scale · (x a) b`.
///
/// A weight carrying Burn's `LoraAdapter` materialises as `W₀ + scale · a b` through
/// `Param::val()`, and autodiff then computes the dense weight gradient `xᵀ dy` (as large as the
/// forward product) only to reduce it to the factors' gradients. Down the low-rank path the
/// backward pass costs `O(r)` per row instead: 26 % fewer FLOPs in a CLIP-IT step of ViT-B/16
/// (BENCHMARKS.md). The frozen base `W₀` gets no gradient either way.
pub fn linear<const D: usize>(layer: &Linear, x: Tensor<D>) -> Tensor<D> {
    let Some(adapter) = layer.weight.adapter() else { return layer.forward(x) };
    let bias = layer.bias.as_ref().map(|b| b.val());
    // The scale goes on the small factor `b` ([r, out]), not on the full-size output.
    let b = adapter.b.val().mul_scalar(adapter.scale);
    let low_rank = linear_op(linear_op(x.clone(), adapter.a.val(), None), b, None);
    linear_op(x, layer.weight.base(), bias) + low_rank
}

/// Layer normalisation over the last dimension, with PyTorch's epsilon.
#[derive(Module, Debug)]
pub struct LayerNorm {
    /// Scale.
    pub gamma: Param<Tensor<1>>,
    /// Shift.
    pub beta: Param<Tensor<1>>,
    /// Added to the variance.
    #[module(skip)]
    pub eps: f64,
}

impl LayerNorm {
    /// A LayerNorm from its scale, shift and epsilon.
    pub fn new(gamma: Tensor<1>, beta: Tensor<1>, eps: f64) -> Self {
        Self { gamma: Param::from_tensor(gamma), beta: Param::from_tensor(beta), eps }
    }

    /// Normalises `x` over its last dimension.
    pub fn forward<const D: usize>(&self, x: Tensor<D>) -> Tensor<D> {
        layer_norm(x, self.gamma.val(), Some(self.beta.val()), self.eps)
    }
}

/// The MLP activation a checkpoint's config names.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum Activation {
    /// `x * sigmoid(1.702 x)` (OpenAI CLIP).
    QuickGelu,
    /// Exact GELU with erf.
    Gelu,
    /// GELU with the tanh approximation.
    GeluTanh,
}

impl Activation {
    /// Parses a Hugging Face `hidden_act` value.
    pub fn from_hf(name: &str) -> Option<Self> {
        match name {
            "quick_gelu" => Some(Self::QuickGelu),
            "gelu" => Some(Self::Gelu),
            "gelu_new" | "gelu_pytorch_tanh" | "gelu_fast" => Some(Self::GeluTanh),
            _ => None,
        }
    }

    /// Applies the activation.
    pub fn forward<const D: usize>(self, x: Tensor<D>) -> Tensor<D> {
        match self {
            Self::QuickGelu => x.clone() * activation::sigmoid(x * 1.702),
            Self::Gelu => activation::gelu(x),
            Self::GeluTanh => activation::gelu_approximate(x),
        }
    }
}

/// Two linear layers with an activation between them.
#[derive(Module, Debug)]
pub struct Mlp {
    /// Expansion.
    pub fc1: Linear,
    /// Projection back.
    pub fc2: Linear,
    /// Activation between the two.
    #[module(skip)]
    pub act: Activation,
}

impl Mlp {
    /// Applies the MLP.
    pub fn forward<const D: usize>(&self, x: Tensor<D>) -> Tensor<D> {
        linear(&self.fc2, self.act.forward(linear(&self.fc1, x)))
    }
}

/// Query, key and value projections: fused in one matrix (open_clip, timm) or separate (HF).
#[derive(Module, Debug)]
pub enum QkvProjection {
    /// One `[d, 3d]` projection whose output splits into q, k, v.
    Fused(Linear),
    /// Three projections; also used for cross-attention where keys have another width.
    Split(SplitQkv),
}

/// Separate query, key and value projections.
#[derive(Module, Debug)]
pub struct SplitQkv {
    /// Query projection.
    pub q: Linear,
    /// Key projection.
    pub k: Linear,
    /// Value projection.
    pub v: Linear,
}

/// Multi-head scaled dot-product attention.
#[derive(Module, Debug)]
pub struct Attention {
    /// Input projections.
    pub qkv: QkvProjection,
    /// Output projection.
    pub out: Linear,
    /// Number of heads.
    #[module(skip)]
    pub heads: usize,
}

impl Attention {
    /// Self-attention over `x` `[batch, len, dim]`. `mask` (true = blocked) is
    /// `[batch, heads, len, len]`.
    pub fn forward(&self, x: Tensor<3>, mask: Option<Tensor<4, Bool>>, causal: bool) -> Tensor<3> {
        let (q, k, v) = match &self.qkv {
            QkvProjection::Fused(proj) => {
                let mut parts = linear(proj, x).chunk(3, 2);
                let v = parts.pop().expect("3 chunks");
                let k = parts.pop().expect("3 chunks");
                (parts.pop().expect("3 chunks"), k, v)
            }
            QkvProjection::Split(p) => {
                (linear(&p.q, x.clone()), linear(&p.k, x.clone()), linear(&p.v, x))
            }
        };
        self.attend(q, k, v, mask, causal)
    }

    /// Cross-attention of `queries` `[batch, nq, d]` over `context` `[batch, len, dk]`
    /// (split projections only).
    pub fn forward_cross(&self, queries: Tensor<3>, context: Tensor<3>) -> Tensor<3> {
        let QkvProjection::Split(p) = &self.qkv else {
            unreachable!("cross-attention is only built with split projections")
        };
        let (q, k, v) =
            (linear(&p.q, queries), linear(&p.k, context.clone()), linear(&p.v, context));
        self.attend(q, k, v, None, false)
    }

    fn attend(
        &self,
        q: Tensor<3>,
        k: Tensor<3>,
        v: Tensor<3>,
        mask: Option<Tensor<4, Bool>>,
        causal: bool,
    ) -> Tensor<3> {
        let [b, lq, d] = q.dims();
        let split = |t: Tensor<3>| {
            let [b, l, d] = t.dims();
            t.reshape([b, l, self.heads, d / self.heads]).swap_dims(1, 2)
        };
        let options = AttentionModuleOptions { scale: None, softcap: None, is_causal: causal };
        let out = attention(split(q), split(k), split(v), mask, None, options);
        linear(&self.out, out.swap_dims(1, 2).reshape([b, lq, d]))
    }
}

/// A pre-norm transformer block: `x + ls1·attn(ln1(x))`, then `x + ls2·mlp(ln2(x))`.
#[derive(Module, Debug)]
pub struct Block {
    /// Norm before attention.
    pub ln1: LayerNorm,
    /// Self-attention.
    pub attn: Attention,
    /// LayerScale after attention (timm `ls1`, open_clip `ls_1`), if any.
    pub ls1: Option<Param<Tensor<1>>>,
    /// Norm before the MLP.
    pub ln2: LayerNorm,
    /// Feed-forward.
    pub mlp: Mlp,
    /// LayerScale after the MLP, if any.
    pub ls2: Option<Param<Tensor<1>>>,
}

impl Block {
    /// Applies the block to `x` `[batch, len, dim]`.
    pub fn forward(&self, x: Tensor<3>, mask: Option<Tensor<4, Bool>>, causal: bool) -> Tensor<3> {
        let h = self.attn.forward(self.ln1.forward(x.clone()), mask, causal);
        let x = x + scale(h, &self.ls1);
        let h = self.mlp.forward(self.ln2.forward(x.clone()));
        x + scale(h, &self.ls2)
    }
}

fn scale(x: Tensor<3>, gamma: &Option<Param<Tensor<1>>>) -> Tensor<3> {
    match gamma {
        Some(g) => x * g.val().unsqueeze::<3>(),
        None => x,
    }
}

/// The tensor-naming scheme of a checkpoint's transformer blocks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Naming {
    /// Hugging Face `CLIPEncoderLayer`: `layer_norm1`, `self_attn.{q,k,v,out}_proj`, `mlp.fc1/fc2`.
    HfClip,
    /// open_clip `ResidualAttentionBlock`: `ln_1`, `attn.in_proj_weight`, `mlp.c_fc/c_proj`, `ls_1`.
    OpenClip,
    /// timm `Block`: `norm1`, `attn.qkv`, `attn.proj`, `mlp.fc1/fc2`, `ls1.gamma`.
    Timm,
}

/// Shape and options of a stack of transformer blocks.
#[derive(Debug, Clone, Copy)]
pub struct BlockSpec {
    /// Model width.
    pub dim: usize,
    /// Attention heads.
    pub heads: usize,
    /// Hidden width of the MLP.
    pub mlp_dim: usize,
    /// MLP activation.
    pub act: Activation,
    /// LayerNorm epsilon.
    pub eps: f64,
    /// Whether the blocks carry LayerScale gammas.
    pub layer_scale: bool,
    /// Tensor naming scheme.
    pub naming: Naming,
}

impl BlockSpec {
    /// Checks the numbers a config gave for the `tower` ("vision", "text") before anything is
    /// built: a positive width split evenly into a positive number of heads. `file` names the
    /// config in errors.
    pub fn check(&self, file: &str, tower: &str) -> Result<()> {
        if self.dim == 0 || self.heads == 0 || !self.dim.is_multiple_of(self.heads) {
            return Err(Error::format(
                file,
                format!(
                    "{tower} tower: width {} cannot be split into {} attention heads (the width \
                     must be a positive multiple of the number of heads)",
                    self.dim, self.heads
                ),
            ));
        }
        Ok(())
    }
}

/// Loads `depth` blocks named `{prefix}.{i}`.
pub fn load_blocks(l: &Loader, prefix: &str, depth: usize, spec: &BlockSpec) -> Result<Vec<Block>> {
    (0..depth).map(|i| load_block(l, &format!("{prefix}.{i}"), spec)).collect()
}

/// Loads one block named `p` under `spec.naming`.
pub fn load_block(l: &Loader, p: &str, spec: &BlockSpec) -> Result<Block> {
    let BlockSpec { dim, heads, mlp_dim, act, eps, layer_scale, naming } = *spec;
    let (ln1, ln2, out, fc1, fc2, ls1, ls2) = match naming {
        Naming::HfClip => {
            ("layer_norm1", "layer_norm2", "self_attn.out_proj", "mlp.fc1", "mlp.fc2", "", "")
        }
        Naming::OpenClip => {
            ("ln_1", "ln_2", "attn.out_proj", "mlp.c_fc", "mlp.c_proj", "ls_1.gamma", "ls_2.gamma")
        }
        Naming::Timm => {
            ("norm1", "norm2", "attn.proj", "mlp.fc1", "mlp.fc2", "ls1.gamma", "ls2.gamma")
        }
    };
    let qkv = match naming {
        Naming::HfClip => QkvProjection::Split(SplitQkv {
            q: l.linear(&format!("{p}.self_attn.q_proj"), dim, dim, true)?,
            k: l.linear(&format!("{p}.self_attn.k_proj"), dim, dim, true)?,
            v: l.linear(&format!("{p}.self_attn.v_proj"), dim, dim, true)?,
        }),
        Naming::OpenClip => QkvProjection::Fused(l.mha_in_proj(&format!("{p}.attn"), dim)?),
        Naming::Timm => {
            QkvProjection::Fused(l.linear_maybe_bias(&format!("{p}.attn.qkv"), dim, 3 * dim)?)
        }
    };
    let gamma = |name: &str| -> Result<Option<Param<Tensor<1>>>> {
        if !layer_scale {
            return Ok(None);
        }
        Ok(Some(l.param_or_fill::<1>(&format!("{p}.{name}"), [dim], 1e-5, ParamKind::Norm)?))
    };
    Ok(Block {
        ln1: l.layer_norm(&format!("{p}.{ln1}"), dim, eps)?,
        attn: Attention { qkv, out: l.linear(&format!("{p}.{out}"), dim, dim, true)?, heads },
        ls1: gamma(ls1)?,
        ln2: l.layer_norm(&format!("{p}.{ln2}"), dim, eps)?,
        mlp: Mlp {
            fc1: l.linear(&format!("{p}.{fc1}"), dim, mlp_dim, true)?,
            fc2: l.linear(&format!("{p}.{fc2}"), mlp_dim, dim, true)?,
            act,
        },
        ls2: gamma(ls2)?,
    })
}
