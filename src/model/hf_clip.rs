//! Hugging Face `CLIPModel` checkpoints (`config.json` + `model.safetensors`): PLIP,
//! `openai/clip-vit-base-patch32`, `-patch16` and any size the config gives.

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

/// `text_config` of a `CLIPConfig`, with transformers' defaults.
#[derive(Debug, Clone, Deserialize)]
#[serde(default)]
pub struct HfTextConfig {
    /// Vocabulary size.
    pub vocab_size: usize,
    /// Width.
    pub hidden_size: usize,
    /// MLP width.
    pub intermediate_size: usize,
    /// Blocks.
    pub num_hidden_layers: usize,
    /// Heads.
    pub num_attention_heads: usize,
    /// Context length.
    pub max_position_embeddings: usize,
    /// Activation name.
    pub hidden_act: String,
    /// LayerNorm epsilon.
    pub layer_norm_eps: f64,
    /// End-of-text id (2 in legacy configs, meaning "pool at the largest id").
    pub eos_token_id: u32,
}

impl Default for HfTextConfig {
    fn default() -> Self {
        Self {
            vocab_size: 49408,
            hidden_size: 512,
            intermediate_size: 2048,
            num_hidden_layers: 12,
            num_attention_heads: 8,
            max_position_embeddings: 77,
            hidden_act: "quick_gelu".into(),
            layer_norm_eps: 1e-5,
            eos_token_id: 49407,
        }
    }
}

/// `vision_config` of a `CLIPConfig`, with transformers' defaults.
#[derive(Debug, Clone, Deserialize)]
#[serde(default)]
pub struct HfVisionConfig {
    /// Width.
    pub hidden_size: usize,
    /// MLP width.
    pub intermediate_size: usize,
    /// Blocks.
    pub num_hidden_layers: usize,
    /// Heads.
    pub num_attention_heads: usize,
    /// Input side in pixels.
    pub image_size: usize,
    /// Patch side in pixels.
    pub patch_size: usize,
    /// Activation name.
    pub hidden_act: String,
    /// LayerNorm epsilon.
    pub layer_norm_eps: f64,
}

impl Default for HfVisionConfig {
    fn default() -> Self {
        Self {
            hidden_size: 768,
            intermediate_size: 3072,
            num_hidden_layers: 12,
            num_attention_heads: 12,
            image_size: 224,
            patch_size: 32,
            hidden_act: "quick_gelu".into(),
            layer_norm_eps: 1e-5,
        }
    }
}

/// A `CLIPConfig` (`config.json`).
#[derive(Debug, Clone)]
pub struct HfClipConfig {
    /// Text tower.
    pub text: HfTextConfig,
    /// Vision tower.
    pub vision: HfVisionConfig,
    /// Shared embedding width.
    pub projection_dim: usize,
}

impl HfClipConfig {
    /// Parses `config.json`; `*_config_dict` entries (old checkpoints) override `*_config`.
    pub fn from_json(json: &Value, file: &str) -> Result<Self> {
        let merged = |key: &str| {
            let mut out = serde_json::Map::new();
            for k in [format!("{key}_config"), format!("{key}_config_dict")] {
                if let Some(Value::Object(m)) = json.get(&k) {
                    out.extend(m.clone());
                }
            }
            Value::Object(out)
        };
        let projection_dim =
            json.get("projection_dim").and_then(Value::as_u64).unwrap_or(512) as usize;
        Ok(Self {
            text: parse_config(merged("text"), file)?,
            vision: parse_config(merged("vision"), file)?,
            projection_dim,
        })
    }
}

fn activation(name: &str, file: &str) -> Result<Activation> {
    Activation::from_hf(name).ok_or_else(|| {
        Error::format(file, format!("hidden_act '{name}' is not supported (quick_gelu, gelu, gelu_new, gelu_pytorch_tanh)"))
    })
}

/// Image preprocessing from `preprocessor_config.json`, or OpenAI CLIP's at the config's size.
fn preprocess(files: &ModelFiles, image_size: usize) -> Result<PreprocessConfig> {
    let mut cfg = PreprocessConfig::openai_clip(image_size);
    cfg.floor_crop = true;
    if !files.has("preprocessor_config.json") {
        return Ok(cfg);
    }
    let json = files.json("preprocessor_config.json")?;
    let size_of = |v: Option<&Value>| -> Option<usize> {
        match v? {
            Value::Number(n) => n.as_u64().map(|n| n as usize),
            Value::Object(m) => m
                .get("shortest_edge")
                .or_else(|| m.get("height"))
                .and_then(Value::as_u64)
                .map(|n| n as usize),
            _ => None,
        }
    };
    if let Some(s) = size_of(json.get("size")) {
        cfg.resize = s;
    }
    if let Some(c) = size_of(json.get("crop_size")) {
        cfg.crop = c;
    }
    let triple = |key: &str| -> Option<[f32; 3]> {
        let v: Vec<f32> = json
            .get(key)?
            .as_array()?
            .iter()
            .filter_map(|x| x.as_f64().map(|x| x as f32))
            .collect();
        v.try_into().ok()
    };
    if let Some(m) = triple("image_mean") {
        cfg.mean = m;
    }
    if let Some(s) = triple("image_std") {
        cfg.std = s;
    }
    Ok(cfg)
}

/// Loads a Hugging Face `CLIPModel` folder.
pub fn load(
    files: &ModelFiles,
    source: Option<WeightSource>,
    device: &burn::tensor::Device,
) -> Result<Model> {
    let cfg_file = files.path_of("config.json");
    let cfg = HfClipConfig::from_json(&files.json("config.json")?, &cfg_file)?;
    let source = match source {
        Some(s) => s,
        None => WeightSource::Checkpoint(files.weights(&["model.safetensors"])?),
    };
    let l = Loader::new(source, device);
    let (v, t, e) = (&cfg.vision, &cfg.text, cfg.projection_dim);

    let geometry = Geometry::new(v.patch_size, v.image_size, true, &cfg_file)?;
    let grid = geometry.grid();
    let pos_name = "vision_model.embeddings.position_embedding.weight";
    let n_pos = l.shape_of(pos_name).map(|s| s[0]).unwrap_or(grid * grid + 1);
    VisionTransformer::check_pos_embed(&l, pos_name, n_pos, &geometry, 1)?;
    let vspec = BlockSpec {
        dim: v.hidden_size,
        heads: v.num_attention_heads,
        mlp_dim: v.intermediate_size,
        act: activation(&v.hidden_act, &cfg_file)?,
        eps: v.layer_norm_eps,
        layer_scale: false,
        naming: Naming::HfClip,
    };
    vspec.check(&cfg_file, "vision")?;
    let vision = VisionTransformer {
        patch_embed: VisionTransformer::load_patch_embed(
            &l,
            "vision_model.embeddings.patch_embedding.weight",
            None,
            v.hidden_size,
            v.patch_size,
        )?,
        cls_token: Some(l.param(
            "vision_model.embeddings.class_embedding",
            [v.hidden_size],
            ParamKind::Parameter,
        )?),
        reg_tokens: None,
        pos_embed: l.param(pos_name, [n_pos, v.hidden_size], ParamKind::Embedding)?,
        norm_pre: Some(l.layer_norm(
            "vision_model.pre_layrnorm",
            v.hidden_size,
            v.layer_norm_eps,
        )?),
        blocks: load_blocks(&l, "vision_model.encoder.layers", v.num_hidden_layers, &vspec)?,
        norm: None,
        attn_pool: None,
        norm_pooled: Some(l.layer_norm(
            "vision_model.post_layernorm",
            v.hidden_size,
            v.layer_norm_eps,
        )?),
        proj: Some(l.linear("visual_projection", v.hidden_size, e, false)?),
        geometry,
    };

    let tspec = BlockSpec {
        dim: t.hidden_size,
        heads: t.num_attention_heads,
        mlp_dim: t.intermediate_size,
        act: activation(&t.hidden_act, &cfg_file)?,
        eps: t.layer_norm_eps,
        layer_scale: false,
        naming: Naming::HfClip,
    };
    tspec.check(&cfg_file, "text")?;
    let pooling = if t.eos_token_id == 2 {
        TextPooling::Argmax
    } else {
        TextPooling::FirstId(t.eos_token_id)
    };
    let text = TextTransformer {
        token_embedding: l.embedding(
            "text_model.embeddings.token_embedding",
            t.vocab_size,
            t.hidden_size,
        )?,
        pos_embed: l.param(
            "text_model.embeddings.position_embedding.weight",
            [t.max_position_embeddings, t.hidden_size],
            ParamKind::Embedding,
        )?,
        cls_emb: None,
        blocks: load_blocks(&l, "text_model.encoder.layers", t.num_hidden_layers, &tspec)?,
        ln_final: l.layer_norm("text_model.final_layer_norm", t.hidden_size, t.layer_norm_eps)?,
        proj: l.linear("text_projection", t.hidden_size, e, false)?,
        pooling,
        heads: t.num_attention_heads,
    };

    let tokenizer = if files.has("tokenizer.json") {
        TextTokenizer::from_json(
            &files.read("tokenizer.json")?,
            &files.path_of("tokenizer.json"),
            ["<|startoftext|>", "<|endoftext|>"],
            None,
            t.max_position_embeddings,
        )?
    } else {
        TextTokenizer::clip(t.max_position_embeddings, true)?
    };
    Ok(Model::assemble(
        Architecture::HfClip,
        files,
        &l,
        vision,
        Some((text, tokenizer)),
        preprocess(files, v.image_size)?,
        e,
    ))
}
