//! timm ViT backbones, image features only (UNI, kaiko), read as the Hugging Face hub stores
//! timm models: `config.json` with `architecture`, `model_args` overrides and `pretrained_cfg`,
//! weights in `model.safetensors`. Also builds CONCH's timm trunk.

use serde::Deserialize;
use serde_json::Value;

use super::files::ModelFiles;
use super::nn::{load_blocks, Activation, BlockSpec, Naming};
use super::open_clip::square;
use super::vit::{Geometry, VisionTransformer};
use super::{parse_config, Architecture, Model};
use crate::preprocess::PreprocessConfig;
use crate::weights::{Loader, ParamKind, WeightSource};
use crate::{Error, Result};

/// The arguments of timm's `VisionTransformer` that matter here, with timm's defaults.
#[derive(Debug, Clone, Deserialize)]
#[serde(default)]
pub struct VitArgs {
    /// Width.
    pub embed_dim: usize,
    /// Blocks.
    pub depth: usize,
    /// Heads.
    pub num_heads: usize,
    /// MLP width over model width.
    pub mlp_ratio: f64,
    /// Patch side.
    pub patch_size: usize,
    /// Input side (a number or a square pair).
    pub img_size: Value,
    /// LayerScale init; present → blocks carry `ls1`/`ls2` gammas.
    pub init_values: Option<f64>,
    /// Register tokens.
    pub reg_tokens: usize,
    /// Position embedding excludes the prefix tokens (DINOv2).
    pub no_embed_class: bool,
    /// Whether there is a class token.
    pub class_token: bool,
    /// Feature pooling: "token" (class token) is supported.
    pub global_pool: String,
    /// A norm before the blocks (`norm_pre`).
    pub pre_norm: bool,
}

impl Default for VitArgs {
    fn default() -> Self {
        Self {
            embed_dim: 768,
            depth: 12,
            num_heads: 12,
            mlp_ratio: 4.0,
            patch_size: 16,
            img_size: Value::from(224),
            init_values: None,
            reg_tokens: 0,
            no_embed_class: false,
            class_token: true,
            global_pool: "token".into(),
            pre_norm: false,
        }
    }
}

/// The defaults a timm architecture name implies, e.g. `vit_large_patch14_reg4_dinov2`.
pub fn arch_defaults(arch: &str) -> Option<Value> {
    let arch = arch.trim_start_matches("timm/").split('.').next()?;
    let rest = arch.strip_prefix("vit_")?;
    let (size, rest) = rest.split_once("_patch")?;
    let (embed_dim, depth, heads) = match size {
        "tiny" => (192, 12, 3),
        "small" => (384, 12, 6),
        "base" => (768, 12, 12),
        "large" => (1024, 24, 16),
        "huge" => (1280, 32, 16),
        _ => return None,
    };
    let mut parts = rest.split('_');
    let patch: usize = parts.next()?.parse().ok()?;
    let mut args = serde_json::json!({"embed_dim": embed_dim, "depth": depth, "num_heads": heads, "patch_size": patch});
    for part in parts {
        if let Ok(size) = part.parse::<usize>() {
            args["img_size"] = size.into();
        } else if let Some(n) = part.strip_prefix("reg").and_then(|n| n.parse::<usize>().ok()) {
            args["reg_tokens"] = n.into();
        } else if part == "dinov2" {
            args["img_size"] = 518.into();
            args["init_values"] = 1e-5.into();
            args["no_embed_class"] = true.into();
        } else {
            return None;
        }
    }
    Some(args)
}

/// Most register tokens a config may ask for (DINOv2 uses 4).
const MAX_REG_TOKENS: usize = 1 << 10;

/// Builds a timm ViT trunk whose tensors are named `{prefix}patch_embed.proj`, `{prefix}blocks.N`,
/// `{prefix}norm`, ... (`prefix` is empty or ends with a dot). It has no projection.
pub fn load_trunk(l: &Loader, prefix: &str, a: &VitArgs, file: &str) -> Result<VisionTransformer> {
    if a.global_pool != "token" {
        return Err(Error::format(
            file,
            format!("global_pool '{}' is not supported (token)", a.global_pool),
        ));
    }
    let d = a.embed_dim;
    let image_size = square(&a.img_size, "img_size", file)?;
    let geometry = Geometry::new(a.patch_size, image_size, !a.no_embed_class, file)?;
    // Real models have at most a handful of register tokens; a huge count would overflow below.
    if a.reg_tokens > MAX_REG_TOKENS {
        return Err(Error::format(
            file,
            format!("reg_tokens {} is above the supported {MAX_REG_TOKENS}", a.reg_tokens),
        ));
    }
    let prefix_tokens = usize::from(a.class_token) + a.reg_tokens;
    let pos_name = format!("{prefix}pos_embed");
    let n_pos = l.shape_of(&pos_name).map(|s| s[1]).unwrap_or(
        geometry.grid().pow(2) + if geometry.pos_covers_prefix { prefix_tokens } else { 0 },
    );
    VisionTransformer::check_pos_embed(l, &pos_name, n_pos, &geometry, prefix_tokens)?;
    let spec = BlockSpec {
        dim: d,
        heads: a.num_heads,
        mlp_dim: (d as f64 * a.mlp_ratio) as usize,
        act: Activation::Gelu,
        eps: 1e-6,
        layer_scale: a.init_values.is_some(),
        naming: Naming::Timm,
    };
    spec.check(file, "vision")?;
    let cls_token = if a.class_token {
        Some(l.param_reshaped(
            &format!("{prefix}cls_token"),
            [1, 1, d],
            [d],
            ParamKind::Parameter,
        )?)
    } else {
        None
    };
    let reg_tokens = if a.reg_tokens > 0 {
        Some(l.param_reshaped(
            &format!("{prefix}reg_token"),
            [1, a.reg_tokens, d],
            [a.reg_tokens, d],
            ParamKind::Parameter,
        )?)
    } else {
        None
    };
    let pb = format!("{prefix}patch_embed.proj.bias");
    Ok(VisionTransformer {
        patch_embed: VisionTransformer::load_patch_embed(
            l,
            &format!("{prefix}patch_embed.proj.weight"),
            Some(&pb),
            d,
            a.patch_size,
        )?,
        cls_token,
        reg_tokens,
        pos_embed: l.param_reshaped(&pos_name, [1, n_pos, d], [n_pos, d], ParamKind::Parameter)?,
        norm_pre: if a.pre_norm {
            Some(l.layer_norm(&format!("{prefix}norm_pre"), d, 1e-6)?)
        } else {
            None
        },
        blocks: load_blocks(l, &format!("{prefix}blocks"), a.depth, &spec)?,
        norm: Some(l.layer_norm(&format!("{prefix}norm"), d, 1e-6)?),
        attn_pool: None,
        norm_pooled: None,
        proj: None,
        geometry,
    })
}

/// Preprocessing from `pretrained_cfg` (mean, std, crop_pct; timm's defaults otherwise:
/// ImageNet statistics and crop_pct 0.875). The crop is always the model's own input size.
fn preprocess(json: &Value, image_size: usize) -> PreprocessConfig {
    let cfg = json.get("pretrained_cfg");
    let triple = |key: &str, default: [f32; 3]| -> [f32; 3] {
        cfg.and_then(|c| c.get(key))
            .and_then(|v| v.as_array())
            .and_then(|a| {
                a.iter().map(|x| x.as_f64().map(|x| x as f32)).collect::<Option<Vec<f32>>>()
            })
            .and_then(|v| v.try_into().ok())
            .unwrap_or(default)
    };
    let crop_pct = cfg.and_then(|c| c.get("crop_pct")).and_then(|v| v.as_f64()).unwrap_or(0.875);
    PreprocessConfig::from_crop_pct(
        image_size,
        crop_pct,
        triple("mean", PreprocessConfig::IMAGENET_MEAN),
        triple("std", PreprocessConfig::IMAGENET_STD),
    )
}

/// Loads a timm ViT folder (vision only).
pub fn load(
    files: &ModelFiles,
    source: Option<WeightSource>,
    device: &burn::tensor::Device,
) -> Result<Model> {
    let file = files.path_of("config.json");
    let json = files.json("config.json")?;
    let arch = json.get("architecture").and_then(Value::as_str).unwrap_or_default();
    let mut args = arch_defaults(arch).ok_or_else(|| {
        Error::format(
            &file,
            format!("unknown timm architecture '{arch}'; supported: vit_{{tiny,small,base,large,huge}}_patch<N>_<size> with optional _reg<N> and _dinov2 suffixes"),
        )
    })?;
    if let Some(pool) = json.get("global_pool") {
        args["global_pool"] = pool.clone();
    }
    if let Some(Value::Object(overrides)) = json.get("model_args") {
        for (k, v) in overrides {
            args[k] = v.clone();
        }
    }
    let a: VitArgs = parse_config(args, &file)?;
    let source = match source {
        Some(s) => s,
        None => WeightSource::Checkpoint(files.weights(&["model.safetensors"])?),
    };
    let l = Loader::new(source, device);
    let vision = load_trunk(&l, "", &a, &file)?;
    let image_size = vision.geometry.image_size;
    Ok(Model::assemble(
        Architecture::Timm,
        files,
        &l,
        vision,
        None,
        preprocess(&json, image_size),
        a.embed_dim,
    ))
}
