//! Where each Burn parameter comes from in the checkpoint: its original name, the kind of
//! PyTorch module it belongs to and its layout, which LoRA uses to pick peft's targets.

use std::collections::HashMap;

use burn::module::ParamId;
use burn::nn::Linear;

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
            _ => self
                .tensor
                .strip_suffix(".weight")
                .or_else(|| self.tensor.strip_suffix(".bias"))
                .unwrap_or(&self.tensor),
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
        self.insert(
            linear.weight.id,
            ParamInfo::new(
                &format!("{module}.weight"),
                ParamKind::Linear,
                Layout::Transposed,
                &[d_out, d_in],
            ),
        );
        if let Some(b) = &linear.bias {
            self.insert(
                b.id,
                ParamInfo::new(&format!("{module}.bias"), ParamKind::Bias, Layout::Same, &[d_out]),
            );
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
