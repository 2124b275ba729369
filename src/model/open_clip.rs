//! open_clip CLIP checkpoints (`open_clip_config.json` + `open_clip_model.safetensors`):
//! QuiltNet-B-32/B-16 and the `ViT-B-32.json` family.

use serde::Deserialize;
use serde_json::Value;

use super::files::ModelFiles;
use super::nn::{load_blocks, Activation, BlockSpec, Naming};
use super::text::{TextPooling, TextTransformer};
use super::vit::{Geometry, VisionTransformer};
use super::{parse_config, Architecture, Model};
use crate::preprocess::PreprocessConfig;
use crate::tokenizer::TextTokenizer;
use crate::weights::{Loader, ParamKind, WeightSource};
use crate::{Error, Result};

/// `vision_cfg` (open_clip `CLIPVisionCfg`), with open_clip's defaults.
#[derive(Debug, Clone, Deserialize)]
#[serde(default)]
pub struct VisionCfg {
    /// Blocks (a list means a ResNet, which is not supported).
    pub layers: Value,
    /// Width.
    pub width: usize,
    /// Width of one attention head.
    pub head_width: usize,
    /// MLP width over model width.
    pub mlp_ratio: f64,
    /// Patch side.
    pub patch_size: usize,
    /// Input side.
    pub image_size: Value,
    /// LayerScale init (present → the blocks carry `ls_1`/`ls_2`).
    pub ls_init_value: Option<f64>,
    /// A timm trunk instead of open_clip's ViT (not supported).
    pub timm_model_name: Option<String>,
}

impl Default for VisionCfg {
    fn default() -> Self {
        Self {
            layers: Value::from(12),
            width: 768,
            head_width: 64,
            mlp_ratio: 4.0,
            patch_size: 16,
            image_size: Value::from(224),
            ls_init_value: None,
            timm_model_name: None,
        }
    }
}

/// `text_cfg` (open_clip `CLIPTextCfg`), with open_clip's defaults.
#[derive(Debug, Clone, Deserialize)]
#[serde(default)]
pub struct TextCfg {
    /// Context length.
    pub context_length: usize,
    /// Vocabulary size.
    pub vocab_size: usize,
    /// Width.
    pub width: usize,
    /// Heads.
    pub heads: usize,
    /// Blocks.
    pub layers: usize,
    /// MLP width over model width.
    pub mlp_ratio: f64,
    /// LayerScale init.
    pub ls_init_value: Option<f64>,
    /// A Hugging Face text tower instead (not supported).
    pub hf_model_name: Option<String>,
    /// Pooling rule (only "argmax" is supported).
    pub pool_type: String,
}

impl Default for TextCfg {
    fn default() -> Self {
        Self {
            context_length: 77,
            vocab_size: 49408,
            width: 512,
            heads: 8,
            layers: 12,
            mlp_ratio: 4.0,
            ls_init_value: None,
            hf_model_name: None,
            pool_type: "argmax".into(),
        }
    }
}

/// `model_cfg` of `open_clip_config.json`.
#[derive(Debug, Clone, Deserialize)]
pub struct OpenClipConfig {
    /// Shared embedding width.
    pub embed_dim: usize,
    /// Vision tower.
    pub vision_cfg: VisionCfg,
    /// Text tower.
    pub text_cfg: TextCfg,
    /// QuickGELU instead of GELU.
    #[serde(default)]
    pub quick_gelu: bool,
}

/// Reads an int, or the first of a `[h, w]` pair (which must be square).
pub(crate) fn square(v: &Value, what: &str, file: &str) -> Result<usize> {
    let bad =
        || Error::format(file, format!("{what} must be a number or a square [h, w] pair, got {v}"));
    match v {
        Value::Number(n) => n.as_u64().map(|n| n as usize).ok_or_else(bad),
        Value::Array(a) if a.len() == 2 && a[0] == a[1] => {
            a[0].as_u64().map(|n| n as usize).ok_or_else(bad)
        }
        _ => Err(bad()),
    }
}

/// Mean and std from `preprocess_cfg`, defaulting to OpenAI CLIP's.
pub(crate) fn preprocess_from(json: &Value, image_size: usize) -> PreprocessConfig {
    let mut cfg = PreprocessConfig::openai_clip(image_size);
    let triple = |key: &str| -> Option<[f32; 3]> {
        let v: Vec<f32> = json
            .pointer(&format!("/preprocess_cfg/{key}"))?
            .as_array()?
            .iter()
            .filter_map(|x| x.as_f64().map(|x| x as f32))
            .collect();
        v.try_into().ok()
    };
    if let Some(m) = triple("mean") {
        cfg.mean = m;
    }
    if let Some(s) = triple("std") {
        cfg.std = s;
    }
    cfg
}

/// Loads an open_clip folder.
pub fn load(
    files: &ModelFiles,
    source: Option<WeightSource>,
    device: &burn::tensor::Device,
) -> Result<Model> {
    let file = files.path_of("open_clip_config.json");
    let json = files.json("open_clip_config.json")?;
    let cfg: OpenClipConfig =
        parse_config(json.get("model_cfg").cloned().unwrap_or(json.clone()), &file)?;
    let (v, t, e) = (&cfg.vision_cfg, &cfg.text_cfg, cfg.embed_dim);
    let layers = v.layers.as_u64().ok_or_else(|| {
        Error::format(&file, "a ResNet vision tower (layers is a list) is not supported")
    })? as usize;
    if let Some(name) = &v.timm_model_name {
        return Err(Error::format(
            &file,
            format!("a timm vision trunk ('{name}') inside open_clip is not supported"),
        ));
    }
    if let Some(name) = &t.hf_model_name {
        return Err(Error::format(
            &file,
            format!("a Hugging Face text tower ('{name}') inside open_clip is not supported"),
        ));
    }
    if t.pool_type != "argmax" {
        return Err(Error::format(
            &file,
            format!("text pool_type '{}' is not supported (argmax)", t.pool_type),
        ));
    }
    let image_size = square(&v.image_size, "image_size", &file)?;
    let source = match source {
        Some(s) => s,
        None => WeightSource::Checkpoint(
            files.weights(&["open_clip_model.safetensors", "model.safetensors"])?,
        ),
    };
    let l = Loader::new(source, device);
    let act = if cfg.quick_gelu { Activation::QuickGelu } else { Activation::Gelu };

    let geometry = Geometry::new(v.patch_size, image_size, true, &file)?;
    let n_pos = l
        .shape_of("visual.positional_embedding")
        .map(|s| s[0])
        .unwrap_or(geometry.grid().pow(2) + 1);
    VisionTransformer::check_pos_embed(&l, "visual.positional_embedding", n_pos, &geometry, 1)?;
    let vspec = BlockSpec {
        dim: v.width,
        heads: v.width.checked_div(v.head_width).unwrap_or(0),
        mlp_dim: (v.width as f64 * v.mlp_ratio) as usize,
        act,
        eps: 1e-5,
        layer_scale: v.ls_init_value.is_some(),
        naming: Naming::OpenClip,
    };
    vspec.check(&file, "vision")?;
    let vision = VisionTransformer {
        patch_embed: VisionTransformer::load_patch_embed(
            &l,
            "visual.conv1.weight",
            None,
            v.width,
            v.patch_size,
        )?,
        cls_token: Some(l.param("visual.class_embedding", [v.width], ParamKind::Parameter)?),
        reg_tokens: None,
        pos_embed: l.param(
            "visual.positional_embedding",
            [n_pos, v.width],
            ParamKind::Parameter,
        )?,
        norm_pre: Some(l.layer_norm("visual.ln_pre", v.width, 1e-5)?),
        blocks: load_blocks(&l, "visual.transformer.resblocks", layers, &vspec)?,
        norm: None,
        attn_pool: None,
        norm_pooled: Some(l.layer_norm("visual.ln_post", v.width, 1e-5)?),
        proj: Some(l.projection("visual.proj", v.width, e)?),
        geometry,
    };

    let tspec = BlockSpec {
        dim: t.width,
        heads: t.heads,
        mlp_dim: (t.width as f64 * t.mlp_ratio) as usize,
        act,
        eps: 1e-5,
        layer_scale: t.ls_init_value.is_some(),
        naming: Naming::OpenClip,
    };
    tspec.check(&file, "text")?;
    let proj = if l.contains("text_projection.weight") {
        l.linear_maybe_bias("text_projection", t.width, e)?
    } else {
        l.projection("text_projection", t.width, e)?
    };
    let text = TextTransformer {
        token_embedding: l.embedding("token_embedding", t.vocab_size, t.width)?,
        pos_embed: l.param(
            "positional_embedding",
            [t.context_length, t.width],
            ParamKind::Parameter,
        )?,
        cls_emb: None,
        blocks: load_blocks(&l, "transformer.resblocks", t.layers, &tspec)?,
        ln_final: l.layer_norm("ln_final", t.width, 1e-5)?,
        proj,
        pooling: TextPooling::Argmax,
        heads: t.heads,
    };
    let tokenizer = if files.has("tokenizer.json") {
        let mut tok = TextTokenizer::from_json(
            &files.read("tokenizer.json")?,
            &files.path_of("tokenizer.json"),
            ["<|startoftext|>", "<|endoftext|>"],
            None,
            t.context_length,
        )?;
        tok.pad_id = 0;
        tok
    } else {
        TextTokenizer::clip(t.context_length, false)?
    };
    Ok(Model::assemble(
        Architecture::OpenClip,
        files,
        &l,
        vision,
        Some((text, tokenizer)),
        preprocess_from(&json, image_size),
        e,
    ))
}
