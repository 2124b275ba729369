//! The vision transformer shared by every architecture (HF CLIP, open_clip, timm, CONCH's trunk).
//!
//! The patch embedding is a linear layer over flattened patches, which is exactly the
//! stride-`p` convolution the checkpoints store (its `[D, 3, p, p]` kernel is reshaped at load),
//! and lets LoRA treat it like any other 2-D weight.

use burn::module::{Module, Param};
use burn::nn::Linear;
use burn::tensor::Tensor;

use super::nn::{linear, Attention, Block, LayerNorm, QkvProjection};
use crate::weights::{Loader, ParamKind};
use crate::{Error, Result};

/// Patch size, input size and how the position embedding treats prefix tokens.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Geometry {
    /// Square patch side in pixels.
    pub patch: usize,
    /// Square input side in pixels.
    pub image_size: usize,
    /// Whether the position embedding also covers the class/register tokens (false for timm
    /// `no_embed_class`, e.g. DINOv2).
    pub pos_covers_prefix: bool,
}

/// Largest input side a config may ask for: far beyond any ViT checkpoint, and small enough that
/// the patch count cannot overflow.
pub const MAX_IMAGE_SIZE: usize = 1 << 14;

impl Geometry {
    /// A geometry from a config's values; `file` names the config in errors. Refuses a zero
    /// patch, an input smaller than one patch and inputs above [`MAX_IMAGE_SIZE`].
    pub fn new(
        patch: usize,
        image_size: usize,
        pos_covers_prefix: bool,
        file: &str,
    ) -> Result<Self> {
        if patch == 0 || image_size < patch || image_size > MAX_IMAGE_SIZE {
            return Err(Error::format(
                file,
                format!(
                    "image size {image_size} with patch size {patch} is not a valid ViT geometry: \
                     the patch must be positive and at most the image size, the image size at \
                     most {MAX_IMAGE_SIZE}"
                ),
            ));
        }
        Ok(Self { patch, image_size, pos_covers_prefix })
    }

    /// Patches per side.
    pub fn grid(&self) -> usize {
        self.image_size / self.patch
    }
}

/// CONCH's attentional pooler: learned queries attend over the trunk's tokens.
#[derive(Module, Debug)]
pub struct AttentionalPooler {
    /// Learned queries `[n_queries, d_model]`.
    pub query: Param<Tensor<2>>,
    /// Norm on the queries.
    pub ln_q: LayerNorm,
    /// Norm on the trunk tokens.
    pub ln_k: LayerNorm,
    /// Cross-attention (keys and values have the trunk's width).
    pub attn: Attention,
}

impl AttentionalPooler {
    /// Loads `{p}.query`, `{p}.ln_q`, `{p}.ln_k` and `{p}.attn` (a PyTorch `nn.MultiheadAttention`).
    pub fn load(
        l: &Loader,
        p: &str,
        d_model: usize,
        context_dim: usize,
        heads: usize,
        n_queries: usize,
    ) -> Result<Self> {
        let split = l.mha_split_qkv(&format!("{p}.attn"), d_model, context_dim)?;
        Ok(Self {
            query: l.param(&format!("{p}.query"), [n_queries, d_model], ParamKind::Parameter)?,
            ln_q: l.layer_norm(&format!("{p}.ln_q"), d_model, 1e-5)?,
            ln_k: l.layer_norm(&format!("{p}.ln_k"), context_dim, 1e-5)?,
            attn: Attention {
                qkv: QkvProjection::Split(split),
                out: l.linear(&format!("{p}.attn.out_proj"), d_model, d_model, true)?,
                heads,
            },
        })
    }

    /// Pools `x` `[batch, len, context_dim]` into `[batch, n_queries, d_model]`.
    pub fn forward(&self, x: Tensor<3>) -> Tensor<3> {
        let [b, _, _] = x.dims();
        let x = self.ln_k.forward(x);
        let q = self.ln_q.forward(self.query.val());
        let [nq, d] = q.dims();
        let q = q.unsqueeze::<3>().expand([b, nq, d]);
        self.attn.forward_cross(q, x)
    }
}

/// A ViT image encoder producing one embedding per image.
#[derive(Module, Debug)]
pub struct VisionTransformer {
    /// Patch embedding as a linear layer over flattened `(channel, row, col)` patches.
    pub patch_embed: Linear,
    /// Class token `[dim]`, if the model has one.
    pub cls_token: Option<Param<Tensor<1>>>,
    /// Register tokens `[n, dim]` (timm `reg_token`), if any.
    pub reg_tokens: Option<Param<Tensor<2>>>,
    /// Learned absolute position embedding `[tokens, dim]`.
    pub pos_embed: Param<Tensor<2>>,
    /// Norm before the blocks (CLIP `ln_pre`), if any.
    pub norm_pre: Option<LayerNorm>,
    /// Transformer blocks.
    pub blocks: Vec<Block>,
    /// Norm over all tokens after the blocks (timm `norm`), if any.
    pub norm: Option<LayerNorm>,
    /// Attentional pooling (CONCH) instead of taking the class token.
    pub attn_pool: Option<AttentionalPooler>,
    /// Norm on the pooled vector (CLIP `ln_post`, CONCH `ln_contrast`), if any.
    pub norm_pooled: Option<LayerNorm>,
    /// Projection into the shared embedding space, if any.
    pub proj: Option<Linear>,
    /// Patch and input size.
    #[module(skip)]
    pub geometry: Geometry,
}

impl VisionTransformer {
    /// Loads a patch embedding stored as a `[dim, 3, p, p]` convolution kernel (+ optional bias).
    pub fn load_patch_embed(
        l: &Loader,
        weight: &str,
        bias: Option<&str>,
        dim: usize,
        patch: usize,
    ) -> Result<Linear> {
        l.conv_patch_embed(weight, bias, dim, 3, patch)
    }

    /// Checks that the position embedding matches the patch grid of the configured image size.
    pub fn check_pos_embed(
        l: &Loader,
        name: &str,
        stored: usize,
        geometry: &Geometry,
        prefix: usize,
    ) -> Result<()> {
        let expected = geometry.grid().pow(2) + if geometry.pos_covers_prefix { prefix } else { 0 };
        if stored != expected {
            return Err(Error::format(
                l.name(),
                format!(
                    "tensor '{name}' has {stored} positions but image size {} with patch {} needs {expected}; \
                     set the config's image size to the one the weights were trained at",
                    geometry.image_size, geometry.patch
                ),
            ));
        }
        Ok(())
    }

    /// Embedding width.
    pub fn width(&self) -> usize {
        self.pos_embed.val().dims()[1]
    }

    /// Embeds `pixels` `[batch, 3, size, size]` (already normalised) into `[batch, out_dim]`.
    pub fn forward(&self, pixels: Tensor<4>) -> Tensor<2> {
        let tokens = self.forward_tokens(pixels);
        let pooled = match &self.attn_pool {
            Some(pool) => pool.forward(tokens).narrow(1, 0, 1),
            None => tokens.narrow(1, 0, 1),
        };
        let [b, _, d] = pooled.dims();
        let mut pooled = pooled.reshape([b, d]);
        if let Some(norm) = &self.norm_pooled {
            pooled = norm.forward(pooled);
        }
        match &self.proj {
            Some(proj) => linear(proj, pooled),
            None => pooled,
        }
    }

    /// All output tokens `[batch, prefix + patches, dim]` after the blocks and the final norm.
    pub fn forward_tokens(&self, pixels: Tensor<4>) -> Tensor<3> {
        let [b, c, h, w] = pixels.dims();
        let p = self.geometry.patch;
        let (gh, gw) = (h / p, w / p);
        // Like PyTorch's strided patch convolution, pixels past the last whole patch are unused
        // (an image size the patch does not divide, e.g. 33 with patch 16).
        let pixels = if h % p != 0 || w % p != 0 {
            pixels.narrow(2, 0, gh * p).narrow(3, 0, gw * p)
        } else {
            pixels
        };
        let patches = pixels.reshape([b, c, gh, p, gw, p]).permute([0, 2, 4, 1, 3, 5]).reshape([
            b,
            gh * gw,
            c * p * p,
        ]);
        let mut x = linear(&self.patch_embed, patches);
        let dim = x.dims()[2];
        let pos = self.pos_embed.val().unsqueeze::<3>();
        let mut prefix = Vec::new();
        if let Some(cls) = &self.cls_token {
            prefix.push(cls.val().reshape([1, 1, dim]).expand([b, 1, dim]));
        }
        if let Some(reg) = &self.reg_tokens {
            let n = reg.val().dims()[0];
            prefix.push(reg.val().unsqueeze::<3>().expand([b, n, dim]));
        }
        if !self.geometry.pos_covers_prefix {
            x = x + pos.clone();
        }
        if !prefix.is_empty() {
            prefix.push(x);
            x = Tensor::cat(prefix, 1);
        }
        if self.geometry.pos_covers_prefix {
            x = x + pos;
        }
        if let Some(norm) = &self.norm_pre {
            x = norm.forward(x);
        }
        for block in &self.blocks {
            x = block.forward(x, None, false);
        }
        match &self.norm {
            Some(norm) => norm.forward(x),
            None => x,
        }
    }
}
