//! CONCH (`conch_ViT-B-16`, the paper's retriever): a timm ViT-B/16 trunk at 448 px with an
//! attentional pooler, and a causal text tower with a CLS token appended at the end.
//!
//! The folder holds `conch_config.json` (CONCH's own model config, as in its
//! `model_configs/conch_ViT-B-16.json`) or an `open_clip_config.json` wrapping it, the weights as
//! `model.safetensors` (convert CONCH's `pytorch_model.bin` with `clipit convert`) and CONCH's
//! `tokenizer.json` (`conch_byte_level_bpe_uncased.json`).

use serde::Deserialize;
use serde_json::Value;

use super::files::ModelFiles;
use super::nn::{load_blocks, Activation, BlockSpec, Naming};
use super::open_clip::preprocess_from;
use super::text::{TextPooling, TextTransformer};
use super::timm::{load_trunk, VitArgs};
use super::vit::AttentionalPooler;
use super::{parse_config, Architecture, Model};
use crate::tokenizer::TextTokenizer;
use crate::weights::{Loader, ParamKind, WeightSource};
use crate::{Error, Result};

/// CONCH's `vision_cfg` (`CoCaVisionCfg`), with its defaults.
#[derive(Debug, Clone, Deserialize)]
#[serde(default)]
pub struct ConchVisionCfg {
    /// Trunk blocks.
    pub layers: usize,
    /// Trunk width.
    pub width: usize,
    /// Trunk heads.
    pub num_heads: usize,
    /// Trunk MLP ratio.
    pub mlp_ratio: f64,
    /// Patch side.
    pub patch_size: usize,
    /// Input side.
    pub image_size: usize,
    /// Attentional pooling for the contrastive embedding (CONCH: true).
    pub attentional_pool_contrast: bool,
    /// Pooler queries for the contrastive embedding.
    pub n_queries_contrast: usize,
}

impl Default for ConchVisionCfg {
    fn default() -> Self {
        Self {
            layers: 12,
            width: 768,
            num_heads: 12,
            mlp_ratio: 4.0,
            patch_size: 16,
            image_size: 224,
            attentional_pool_contrast: false,
            n_queries_contrast: 1,
        }
    }
}

/// CONCH's `text_cfg`, with its defaults.
#[derive(Debug, Clone, Deserialize)]
#[serde(default)]
pub struct ConchTextCfg {
    /// Context length including the CLS slot.
    pub context_length: usize,
    /// Vocabulary size.
    pub vocab_size: usize,
    /// Width.
    pub width: usize,
    /// Heads.
    pub heads: usize,
    /// Blocks.
    pub layers: usize,
    /// Whether a CLS token is appended (CONCH: true).
    pub embed_cls: bool,
    /// Padding id.
    pub pad_id: u32,
    /// LayerScale init.
    pub ls_init_value: Option<f64>,
}

impl Default for ConchTextCfg {
    fn default() -> Self {
        Self {
            context_length: 77,
            vocab_size: 49408,
            width: 512,
            heads: 8,
            layers: 12,
            embed_cls: false,
            pad_id: 0,
            ls_init_value: None,
        }
    }
}

/// CONCH's model config.
#[derive(Debug, Clone, Deserialize)]
pub struct ConchConfig {
    /// Contrastive embedding width.
    pub embed_dim: usize,
    /// Vision tower.
    pub vision_cfg: ConchVisionCfg,
    /// Text tower.
    pub text_cfg: ConchTextCfg,
}

/// Loads a CONCH folder.
pub fn load(
    files: &ModelFiles,
    source: Option<WeightSource>,
    device: &burn::tensor::Device,
) -> Result<Model> {
    let cfg_name =
        if files.has("conch_config.json") { "conch_config.json" } else { "open_clip_config.json" };
    let file = files.path_of(cfg_name);
    let json = files.json(cfg_name)?;
    let cfg: ConchConfig =
        parse_config(json.get("model_cfg").cloned().unwrap_or(json.clone()), &file)?;
    let (v, t, e) = (&cfg.vision_cfg, &cfg.text_cfg, cfg.embed_dim);
    if !v.attentional_pool_contrast || !t.embed_cls {
        return Err(Error::format(&file, "only CONCH's layout is supported: attentional_pool_contrast and embed_cls must be true"));
    }
    if !files.has("tokenizer.json") {
        return Err(Error::format(
            files.name(),
            "CONCH needs its tokenizer: copy conch_byte_level_bpe_uncased.json from the CONCH package into the folder as tokenizer.json",
        ));
    }
    let source = match source {
        Some(s) => s,
        None => WeightSource::Checkpoint(
            files.weights(&["model.safetensors", "pytorch_model.safetensors"])?,
        ),
    };
    let l = Loader::new(source, device);
    let trunk_args = VitArgs {
        embed_dim: v.width,
        depth: v.layers,
        num_heads: v.num_heads,
        mlp_ratio: v.mlp_ratio,
        patch_size: v.patch_size,
        img_size: Value::from(v.image_size),
        ..VitArgs::default()
    };
    let mut vision = load_trunk(&l, "visual.trunk.", &trunk_args, &file)?;
    // CONCH's code never passes `attn_pooler_heads` to its pooler, so the default of 8 heads is
    // what the released model runs, whatever the config says.
    const POOLER_HEADS: usize = 8;
    if e == 0 || !e.is_multiple_of(POOLER_HEADS) {
        return Err(Error::format(
            &file,
            format!(
                "embed_dim {e} must be a positive multiple of the pooler's {POOLER_HEADS} heads"
            ),
        ));
    }
    vision.attn_pool = Some(AttentionalPooler::load(
        &l,
        "visual.attn_pool_contrast",
        e,
        v.width,
        POOLER_HEADS,
        v.n_queries_contrast,
    )?);
    vision.norm_pooled = Some(l.layer_norm("visual.ln_contrast", e, 1e-5)?);
    vision.proj = Some(l.projection("visual.proj_contrast", e, e)?);

    let tspec = BlockSpec {
        dim: t.width,
        heads: t.heads,
        mlp_dim: t.width * 4,
        act: Activation::Gelu,
        eps: 1e-5,
        layer_scale: t.ls_init_value.is_some(),
        naming: Naming::OpenClip,
    };
    tspec.check(&file, "text")?;
    let text = TextTransformer {
        token_embedding: l.embedding("text.token_embedding", t.vocab_size, t.width)?,
        pos_embed: l.param(
            "text.positional_embedding",
            [t.context_length, t.width],
            ParamKind::Parameter,
        )?,
        cls_emb: Some(l.param("text.cls_emb", [t.width], ParamKind::Parameter)?),
        blocks: load_blocks(&l, "text.transformer.resblocks", t.layers, &tspec)?,
        ln_final: l.layer_norm("text.ln_final", t.width, 1e-5)?,
        proj: l.projection("text.text_projection", t.width, e)?,
        pooling: TextPooling::AppendedCls { pad_id: t.pad_id },
        heads: t.heads,
    };
    let mut tokenizer = TextTokenizer::from_json(
        &files.read("tokenizer.json")?,
        &files.path_of("tokenizer.json"),
        ["<start_of_text>", "<end_of_text>"],
        Some("<pad>"),
        t.context_length,
    )?;
    tokenizer.reserved = 1;
    Ok(Model::assemble(
        Architecture::Conch,
        files,
        &l,
        vision,
        Some((text, tokenizer)),
        preprocess_from(&json, v.image_size),
        e,
    ))
}
