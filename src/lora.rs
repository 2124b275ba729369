//! LoRA exactly as Hugging Face peft does it (CLIP-IT fine-tunes both towers with
//! `peft.LoraConfig(target_modules=<every Linear, Embedding and Conv2d>, r, lora_alpha, lora_dropout)`).
//!
//! # Targets
//! peft can only wrap `nn.Linear`, `nn.Embedding` and `nn.Conv2d` modules. Which Burn parameter
//! was which module in the PyTorch model comes from the [`ParamNames`] map the loaders fill
//! (`Model::params`): `nn.Linear` weights (HF `q/k/v/out_proj`, `fc1/fc2`, the HF projections,
//! timm's fused `attn.qkv`, `attn.proj`, `mlp.fc1/fc2`, open_clip `mlp.c_fc/c_proj`), the
//! `nn.Embedding` tables (token embeddings, and HF CLIP's position embeddings, which are
//! `nn.Embedding`s too) and the `nn.Conv2d` patch embedding (timm `patch_embed.proj`, open_clip
//! `visual.conv1`, HF `patch_embedding`). Bare `nn.Parameter`s (open_clip/CONCH `in_proj_weight`,
//! `text_projection`, `visual.proj`, positional embeddings, class tokens, CONCH's pooler
//! projections), biases and norms are never adapted, as in peft.
//!
//! peft quirk, reproduced: it also wraps the `out_proj` of `nn.MultiheadAttention` (open_clip and
//! CONCH), but the attention reads `out_proj.weight` directly, so that adapter never changes peft's
//! forward pass and never gets a gradient (it only shows after `merge_and_unload`). Hence
//! [`LoraTargets::mha_out_proj`] is off by default: training then matches CLIP-IT's exactly, and
//! imported peft adapters for those modules are reported as inert and left out.
//!
//! # Maths and layout
//! peft adds `scale · B A` to a weight (`scale = alpha / r`, or `alpha / √r` with rsLoRA). Burn
//! stores a linear weight as `[in, out]`, the transpose of PyTorch's `[out, in]`, so the Burn
//! factors are `a = Aᵀ` `[in, r]` and `b = Bᵀ` `[r, out]` and the weight becomes
//! `base + scale · a b` (Burn's [`LoraAdapter`]). Embeddings (`[num, dim]` in both) use
//! `a = lora_embedding_Aᵀ` `[num, r]`, `b = lora_embedding_Bᵀ` `[r, dim]`. The patch-embedding
//! convolution is a linear layer over flattened `(c, kh, kw)` patches here, so its peft factors
//! `lora_A` `[r, c, kh, kw]` and `lora_B` `[out, r, 1, 1]` flatten to the same `a`, `b`.
//!
//! Initialisation as peft's `init_lora_weights=True`: `A` Kaiming-uniform with `a = √5`, i.e.
//! `U(−1/√fan_in, 1/√fan_in)` (`fan_in` = `in`, or `c·kh·kw` for the convolution), `B = 0`; for
//! embeddings `A = 0` and `B ~ N(0, 1)`. At init the model is therefore unchanged.
//!
//! # Burn's `Module::apply_lora`
//! Burn 0.22's `Lora` reparameterizer draws `A ~ N(0, 1/r)`, adapts every 2-D parameter
//! (positional embeddings, class-token tables, `in_proj` and bare projections included) and has
//! no embedding init. Its machinery is what this module uses, though: a custom
//! [`Reparameterizer`] passed to `Module::apply_reparameterization` attaches Burn's own
//! [`LoraAdapter`] (`Param::val()` = `base + scale · a b`, factors visible to autodiff, the
//! optimizer and records, `materialize()` to merge) to the peft targets only, with peft's init,
//! and freezes every base parameter it visits, as `get_peft_model` does.
//!
//! # Dropout
//! peft applies `lora_dropout` to the input of `A` (Linear only). A weight reparameterization
//! cannot express that, so training accepts only dropout 0 (the paper's default); an imported
//! adapter with another value still loads (dropout does nothing at inference).
//!
//! # Files
//! [`save_adapter`] writes one safetensors file in peft's key layout with the [`LoraConfig`] and
//! peft's `adapter_config.json` in its metadata; [`export_peft`] writes the folder peft's
//! `PeftModel.from_pretrained` reads (`adapter_model.safetensors` + `adapter_config.json`);
//! [`import_peft`] reads one. Module names are the checkpoint's own, so the adapter fits the
//! bare PyTorch model the checkpoint belongs to (e.g. `timm.create_model(...)`, `CLIPModel`).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::Path;
use std::sync::Arc;

use burn::module::{
    list_param_ids, LoraAdapter, Module, ModuleVisitor, Param, ParamId, Reparameterizer,
};
use burn::tensor::{Device, Tensor, TensorData};
use serde::{Deserialize, Serialize};

use crate::retrieval::{matrix_to_host, matrix_to_host_async};
use crate::weights::{ParamInfo, ParamKind, ParamNames, SafeTensors};
use crate::{Error, Result};

/// Prefix of every key in a peft adapter file.
pub const PEFT_PREFIX: &str = "base_model.model.";
/// Metadata key of the [`LoraConfig`] (JSON) in a file written by [`save_adapter`].
pub const CONFIG_METADATA_KEY: &str = "clipit_lora_config";
/// Metadata key of peft's `adapter_config.json` in a file written by [`save_adapter`].
pub const PEFT_CONFIG_METADATA_KEY: &str = "peft_adapter_config";

/// Which PyTorch module kinds receive adapters.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct LoraTargets {
    /// `nn.Linear` weights, fused `qkv` included (CLIP-IT's `--no-lin` turns this off).
    pub linear: bool,
    /// `nn.Embedding` tables.
    pub embedding: bool,
    /// `nn.Conv2d` kernels (the patch embedding).
    pub conv: bool,
    /// The `out_proj` of `nn.MultiheadAttention` (open_clip, CONCH). Off by default, because
    /// peft's adapter there is inert (see the module docs); on, it becomes a working adapter,
    /// which peft itself never trains.
    pub mha_out_proj: bool,
}

impl Default for LoraTargets {
    fn default() -> Self {
        Self { linear: true, embedding: true, conv: true, mha_out_proj: false }
    }
}

impl LoraTargets {
    /// Whether a parameter of this kind gets an adapter.
    pub fn covers(&self, kind: ParamKind) -> bool {
        match kind {
            ParamKind::Linear => self.linear,
            ParamKind::MhaOutProj => self.linear && self.mha_out_proj,
            ParamKind::Embedding => self.embedding,
            ParamKind::Conv2d => self.conv,
            ParamKind::Bias | ParamKind::Parameter | ParamKind::Norm => false,
        }
    }
}

/// LoRA hyper-parameters, as peft's `LoraConfig`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LoraConfig {
    /// Rank `r`.
    pub r: usize,
    /// `lora_alpha`; the update is scaled by `alpha / r`.
    pub alpha: f64,
    /// `lora_dropout` (only 0 can be trained here; see the module docs).
    #[serde(default)]
    pub dropout: f64,
    /// peft's `use_rslora`: scale by `alpha / √r` instead.
    #[serde(default)]
    pub rslora: bool,
    /// Which module kinds are adapted.
    #[serde(default)]
    pub targets: LoraTargets,
}

impl Default for LoraConfig {
    /// CLIP-IT's defaults: r = 16, alpha = 8, dropout 0, every Linear, Embedding and Conv2d.
    fn default() -> Self {
        Self { r: 16, alpha: 8.0, dropout: 0.0, rslora: false, targets: LoraTargets::default() }
    }
}

impl LoraConfig {
    /// Rank `r` and `alpha`, no dropout, the default targets.
    pub fn new(r: usize, alpha: f64) -> Self {
        Self { r, alpha, ..Self::default() }
    }

    /// The factor the low-rank update is multiplied by: `alpha / r` (`alpha / √r` with rsLoRA).
    pub fn scale(&self) -> f64 {
        if self.rslora {
            self.alpha / (self.r as f64).sqrt()
        } else {
            self.alpha / self.r as f64
        }
    }

    /// Checks the values are usable: `r ≥ 1`, finite `alpha`, dropout in `[0, 1)`.
    pub fn validate(&self) -> Result<()> {
        if self.r == 0 {
            return Err(Error::msg("LoRA rank r must be at least 1"));
        }
        if !self.alpha.is_finite() {
            return Err(Error::msg(format!(
                "LoRA alpha must be a finite number, got {}",
                self.alpha
            )));
        }
        if !(0.0..1.0).contains(&self.dropout) {
            return Err(Error::msg(format!(
                "LoRA dropout must lie in [0, 1), got {}",
                self.dropout
            )));
        }
        Ok(())
    }

    /// [`LoraConfig::validate`], plus dropout 0: peft drops the input of `A` out, which a weight
    /// reparameterization cannot do.
    pub fn check_trainable(&self) -> Result<()> {
        self.validate()?;
        if self.dropout != 0.0 {
            return Err(Error::msg(format!(
                "LoRA dropout {} is not supported for training: peft applies it to the input of A, which a weight \
                 reparameterization cannot reproduce; use dropout 0 (CLIP-IT's default)",
                self.dropout
            )));
        }
        Ok(())
    }

    /// peft's `adapter_config.json` for these settings and `target_modules`.
    pub fn peft_config_json(&self, target_modules: &[String]) -> serde_json::Value {
        serde_json::json!({
            "alpha_pattern": {},
            "auto_mapping": null,
            "base_model_name_or_path": null,
            "bias": "none",
            "fan_in_fan_out": false,
            "inference_mode": true,
            "init_lora_weights": true,
            "layers_pattern": null,
            "layers_to_transform": null,
            "lora_alpha": if self.alpha.fract() == 0.0 && self.alpha.abs() < 1e15 {
                serde_json::Value::from(self.alpha as i64)
            } else {
                serde_json::Value::from(self.alpha)
            },
            "lora_bias": false,
            "lora_dropout": self.dropout,
            "modules_to_save": null,
            "peft_type": "LORA",
            "r": self.r,
            "rank_pattern": {},
            "revision": null,
            "target_modules": target_modules,
            "task_type": null,
            "use_dora": false,
            "use_rslora": self.rslora,
        })
    }

    /// Reads peft's `adapter_config.json`, refusing what this crate cannot reproduce (DoRA,
    /// trained biases, per-module ranks or alphas, extra trained modules).
    pub fn from_peft_json(json: &serde_json::Value, file: &str) -> Result<Self> {
        let bad = |msg: String| Error::format(file, msg);
        let str_of = |k: &str| json.get(k).and_then(|v| v.as_str());
        if let Some(t) = str_of("peft_type") {
            if t != "LORA" {
                return Err(bad(format!("peft_type is {t}; only LORA adapters are supported")));
            }
        }
        let truthy = |k: &str| json.get(k).and_then(|v| v.as_bool()).unwrap_or(false);
        let non_empty = |k: &str| match json.get(k) {
            None | Some(serde_json::Value::Null) => false,
            Some(serde_json::Value::Object(m)) => !m.is_empty(),
            Some(serde_json::Value::Array(a)) => !a.is_empty(),
            Some(_) => true,
        };
        if truthy("use_dora") {
            return Err(bad("DoRA adapters (use_dora) are not supported".into()));
        }
        if truthy("lora_bias") || str_of("bias").is_some_and(|b| b != "none") {
            return Err(bad(
                "adapters that train biases (bias != \"none\", lora_bias) are not supported".into(),
            ));
        }
        if truthy("fan_in_fan_out") {
            return Err(bad("fan_in_fan_out (GPT-2 Conv1D layers) is not supported".into()));
        }
        for key in ["rank_pattern", "alpha_pattern"] {
            if non_empty(key) {
                return Err(bad(format!("{key} (per-module rank or alpha) is not supported")));
            }
        }
        if non_empty("modules_to_save") {
            return Err(bad(
                "modules_to_save (fully trained extra modules) is not supported".into()
            ));
        }
        let r =
            json.get("r").and_then(|v| v.as_u64()).ok_or_else(|| bad("no integer 'r'".into()))?
                as usize;
        let alpha = json
            .get("lora_alpha")
            .and_then(|v| v.as_f64())
            .ok_or_else(|| bad("no number 'lora_alpha'".into()))?;
        let dropout = json.get("lora_dropout").and_then(|v| v.as_f64()).unwrap_or(0.0);
        let cfg = Self {
            r,
            alpha,
            dropout,
            rslora: truthy("use_rslora"),
            targets: LoraTargets::default(),
        };
        cfg.validate().map_err(|e| bad(e.to_string()))?;
        Ok(cfg)
    }
}

/// A tensor on the host: row-major `f32` values and their shape.
#[derive(Debug, Clone, PartialEq)]
pub struct HostTensor {
    /// Shape.
    pub shape: Vec<usize>,
    /// Values, row-major.
    pub values: Vec<f32>,
}

impl HostTensor {
    fn new(shape: Vec<usize>, values: Vec<f32>) -> Self {
        debug_assert_eq!(shape.iter().product::<usize>(), values.len());
        Self { shape, values }
    }

    /// `[first dim, product of the rest]`.
    fn rows_cols(&self) -> (usize, usize) {
        let rows = self.shape.first().copied().unwrap_or(1);
        (rows, self.values.len() / rows.max(1))
    }

    fn little_endian(&self) -> Vec<u8> {
        self.values.iter().flat_map(|v| v.to_le_bytes()).collect()
    }
}

fn transpose(values: &[f32], rows: usize, cols: usize) -> Vec<f32> {
    let mut out = vec![0.0; values.len()];
    for i in 0..rows {
        for j in 0..cols {
            out[j * rows + i] = values[i * cols + j];
        }
    }
    out
}

/// The factors of one adapter, in peft's layout: `a` is `lora_A.weight` (`[r, in]`, or
/// `[r, c, kh, kw]` for a convolution) or `lora_embedding_A` (`[r, num]`); `b` is
/// `lora_B.weight` (`[out, r]`, `[out, r, 1, 1]`) or `lora_embedding_B` (`[dim, r]`).
#[derive(Debug, Clone, PartialEq)]
pub struct LoraFactors {
    /// The factors' layout: [`ParamKind::Linear`] (any `nn.Linear`, `MultiheadAttention.out_proj`
    /// included), [`ParamKind::Embedding`] or [`ParamKind::Conv2d`].
    pub kind: ParamKind,
    /// peft's A.
    pub a: HostTensor,
    /// peft's B.
    pub b: HostTensor,
}

impl LoraFactors {
    /// The rank.
    pub fn rank(&self) -> usize {
        self.a.shape.first().copied().unwrap_or(0)
    }

    /// The Burn factors `(a, b)`, `[rows, r]` and `[r, cols]` for a Burn weight `[rows, cols]`:
    /// both are peft's factor flattened to 2-D and transposed.
    fn to_burn(&self) -> ((Vec<f32>, [usize; 2]), (Vec<f32>, [usize; 2])) {
        let (r, a_cols) = self.a.rows_cols();
        let (b_rows, b_r) = self.b.rows_cols();
        (
            (transpose(&self.a.values, r, a_cols), [a_cols, r]),
            (transpose(&self.b.values, b_rows, b_r), [b_r, b_rows]),
        )
    }

    /// From Burn factors `a` `[rows, r]`, `b` `[r, cols]` of a parameter recorded as `info`.
    fn from_burn(info: &ParamInfo, a: (Vec<f32>, [usize; 2]), b: (Vec<f32>, [usize; 2])) -> Self {
        let ((a, [a_rows, r]), (b, [_, b_cols])) = (a, b);
        let (a_shape, b_shape) = match info.kind {
            ParamKind::Conv2d => {
                let mut a_shape = info.torch_shape.clone();
                a_shape[0] = r;
                (a_shape, vec![b_cols, r, 1, 1])
            }
            _ => (vec![r, a_rows], vec![b_cols, r]),
        };
        Self {
            kind: layout_kind(info.kind),
            a: HostTensor::new(a_shape, transpose(&a, a_rows, r)),
            b: HostTensor::new(b_shape, transpose(&b, r, b_cols)),
        }
    }

    /// peft's key suffixes for A and B.
    fn peft_suffixes(kind: ParamKind) -> (&'static str, &'static str) {
        match kind {
            ParamKind::Embedding => ("lora_embedding_A", "lora_embedding_B"),
            _ => ("lora_A.weight", "lora_B.weight"),
        }
    }
}

/// LoRA adapters by PyTorch module name (e.g. `blocks.0.attn.qkv`), with their config: what an
/// adapter file holds, independent of any model instance.
#[derive(Debug, Clone, PartialEq)]
pub struct LoraAdapters {
    /// Hyper-parameters.
    pub config: LoraConfig,
    /// Factors by module name.
    pub modules: BTreeMap<String, LoraFactors>,
}

/// What [`LoraAdapters::attach`] did with each adapter.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct AttachReport {
    /// Modules that received their adapter.
    pub attached: Vec<String>,
    /// Adapters for modules this module tree does not have (another tower, a part of the PyTorch
    /// model this crate does not load, such as CONCH's caption decoder).
    pub unmatched: Vec<String>,
    /// Adapters left out because peft's forward pass never uses them (`out_proj` of
    /// `nn.MultiheadAttention`, unless [`LoraTargets::mha_out_proj`] is set).
    pub inert: Vec<String>,
}

impl LoraAdapters {
    /// The adapters of `module` (see [`lora_state`]), named with `names`. Reads the factors
    /// from the device synchronously (not allowed in wasm; use [`LoraAdapters::from_module_async`]).
    pub fn from_module<M: Module>(
        module: &M,
        names: &ParamNames,
        config: &LoraConfig,
    ) -> Result<Self> {
        let mut modules = BTreeMap::new();
        for s in lora_state(module) {
            let info = named(names, s.base)?;
            let factors = LoraFactors::from_burn(info, matrix_to_host(s.a)?, matrix_to_host(s.b)?);
            modules.insert(info.module().to_string(), factors);
        }
        Ok(Self { config: config.clone(), modules })
    }

    /// [`LoraAdapters::from_module`] with asynchronous reads (the browser's case).
    pub async fn from_module_async<M: Module>(
        module: &M,
        names: &ParamNames,
        config: &LoraConfig,
    ) -> Result<Self> {
        let mut modules = BTreeMap::new();
        for s in lora_state(module) {
            let info = named(names, s.base)?;
            let factors = LoraFactors::from_burn(
                info,
                matrix_to_host_async(s.a).await?,
                matrix_to_host_async(s.b).await?,
            );
            modules.insert(info.module().to_string(), factors);
        }
        Ok(Self { config: config.clone(), modules })
    }

    /// Adds the adapters of `other` (e.g. the other tower's); fails if the configs differ or a
    /// module appears in both.
    pub fn merge_from(&mut self, other: LoraAdapters) -> Result<()> {
        if other.config != self.config {
            return Err(Error::msg("cannot combine LoRA adapters with different configs"));
        }
        for (name, f) in other.modules {
            if self.modules.insert(name.clone(), f).is_some() {
                return Err(Error::msg(format!("LoRA adapter for '{name}' appears twice")));
            }
        }
        Ok(())
    }

    /// Attaches each adapter whose module is in `module` (by its recorded name in `names`) and
    /// freezes every other parameter of `module`, as `get_peft_model` does. Fails on a shape or
    /// kind mismatch, or when a target already carries an adapter.
    pub fn attach<M: Module>(&self, module: M, names: &ParamNames) -> Result<(M, AttachReport)> {
        self.config.validate()?;
        let scan = scan(&module);
        let mut by_module: HashMap<&str, (ParamId, &ParamInfo)> = HashMap::new();
        for id in list_param_ids(&module) {
            if let Some(info) = names.get(id).filter(|i| i.kind.is_module_weight()) {
                by_module.insert(info.module(), (id, info));
            }
        }
        let mut report = AttachReport::default();
        let mut plan: HashMap<ParamId, (&str, &LoraFactors)> = HashMap::new();
        for (name, factors) in &self.modules {
            let Some(&(id, info)) = by_module.get(name.as_str()) else {
                report.unmatched.push(name.clone());
                continue;
            };
            let compatible = layout_kind(info.kind) == layout_kind(factors.kind);
            if !compatible {
                return Err(Error::msg(format!(
                    "LoRA adapter for '{name}' is a {:?} adapter but the model's module is a {:?}",
                    factors.kind, info.kind
                )));
            }
            if info.kind == ParamKind::MhaOutProj && !self.config.targets.mha_out_proj {
                report.inert.push(name.clone());
                continue;
            }
            if scan.adapted.contains_key(&id) {
                return Err(Error::msg(format!(
                    "'{name}' already carries a LoRA adapter; merge or drop it first"
                )));
            }
            plan.insert(id, (name.as_str(), factors));
        }
        let scale = self.config.scale();
        let mut failure = None;
        let mut attached = Vec::new();
        let module = module.apply_reparameterization(Attach {
            skip: &scan.factors,
            make: |id: ParamId, dims: &[usize], device: &Device| {
                let (name, factors) = plan.get(&id)?;
                let ((a, a_shape), (b, b_shape)) = factors.to_burn();
                if dims.len() != 2 || a_shape[0] != dims[0] || b_shape[1] != dims[1] || a_shape[1] != b_shape[0] {
                    failure.get_or_insert_with(|| {
                        format!(
                            "LoRA adapter for '{name}' has A {:?} and B {:?}, which do not fit the weight (Burn shape {dims:?})",
                            factors.a.shape, factors.b.shape
                        )
                    });
                    return None;
                }
                attached.push(name.to_string());
                Some((matrix(a, a_shape, device), matrix(b, b_shape, device), scale))
            },
        });
        if let Some(msg) = failure {
            return Err(Error::msg(msg));
        }
        attached.sort();
        report.attached = attached;
        Ok((module, report))
    }

    /// The module names, sorted (peft's `target_modules`).
    pub fn target_modules(&self) -> Vec<String> {
        self.modules.keys().cloned().collect()
    }

    fn peft_tensors(&self) -> Vec<(String, &HostTensor)> {
        let mut out = Vec::new();
        for (name, f) in &self.modules {
            let (sa, sb) = LoraFactors::peft_suffixes(f.kind);
            out.push((format!("{PEFT_PREFIX}{name}.{sa}"), &f.a));
            out.push((format!("{PEFT_PREFIX}{name}.{sb}"), &f.b));
        }
        out
    }

    /// The safetensors bytes in peft's layout (`base_model.model.<module>.lora_A.weight`...,
    /// f32), with `metadata` (peft writes `{"format": "pt"}`).
    pub fn to_safetensors(&self, metadata: HashMap<String, String>) -> Result<Vec<u8>> {
        let tensors = self.peft_tensors();
        let bytes: Vec<Vec<u8>> = tensors.iter().map(|(_, t)| t.little_endian()).collect();
        let views = tensors
            .iter()
            .zip(&bytes)
            .map(|((name, t), b)| {
                safetensors::tensor::TensorView::new(safetensors::Dtype::F32, t.shape.clone(), b)
                    .map(|v| (name.clone(), v))
                    .map_err(|e| Error::msg(format!("LoRA tensor {name}: {e}")))
            })
            .collect::<Result<Vec<_>>>()?;
        safetensors::tensor::serialize(views, Some(metadata))
            .map_err(|e| Error::msg(format!("writing LoRA adapter: {e}")))
    }

    /// Reads the adapters of a safetensors file in peft's layout (keys
    /// `base_model.model.<module>.lora_{A,B}.weight` or `.lora_embedding_{A,B}`), with `config`.
    pub fn from_safetensors(st: &SafeTensors, config: LoraConfig) -> Result<Self> {
        let bad = |msg: String| Error::format(st.name(), msg);
        let mut parts: BTreeMap<String, (Option<HostTensor>, Option<HostTensor>, bool)> =
            BTreeMap::new();
        for key in st.tensors().keys() {
            let rest = key.strip_prefix(PEFT_PREFIX).unwrap_or(key);
            let (module, which, embedding) = if let Some(m) = rest.strip_suffix(".lora_A.weight") {
                (m, 0, false)
            } else if let Some(m) = rest.strip_suffix(".lora_B.weight") {
                (m, 1, false)
            } else if let Some(m) = rest.strip_suffix(".lora_embedding_A") {
                (m, 0, true)
            } else if let Some(m) = rest.strip_suffix(".lora_embedding_B") {
                (m, 1, true)
            } else {
                return Err(bad(format!(
                    "unexpected tensor '{key}': only lora_A/lora_B/lora_embedding_A/lora_embedding_B (plain LoRA) are supported"
                )));
            };
            let (values, shape) = st.read_f32(key)?;
            let entry = parts.entry(module.to_string()).or_insert((None, None, embedding));
            if entry.2 != embedding {
                return Err(bad(format!("'{module}' mixes embedding and linear LoRA tensors")));
            }
            let slot = if which == 0 { &mut entry.0 } else { &mut entry.1 };
            *slot = Some(HostTensor::new(shape, values));
        }
        let mut modules = BTreeMap::new();
        for (name, (a, b, embedding)) in parts {
            let (Some(a), Some(b)) = (a, b) else {
                return Err(bad(format!("'{name}' lacks its A or its B factor")));
            };
            let kind = match (embedding, a.shape.len()) {
                (true, 2) => ParamKind::Embedding,
                (false, 2) => ParamKind::Linear,
                (false, 4) => ParamKind::Conv2d,
                _ => {
                    return Err(bad(format!("'{name}': A has an unsupported shape {:?}", a.shape)))
                }
            };
            let r = a.shape[0];
            let b_ok = match kind {
                ParamKind::Conv2d => {
                    b.shape.len() == 4 && b.shape[1] == r && b.shape[2] == 1 && b.shape[3] == 1
                }
                _ => b.shape.len() == 2 && b.shape[1] == r,
            };
            if !b_ok {
                return Err(bad(format!(
                    "'{name}': A {:?} and B {:?} do not share the rank",
                    a.shape, b.shape
                )));
            }
            if r != config.r {
                return Err(bad(format!(
                    "'{name}' has rank {r} but the config says r = {}",
                    config.r
                )));
            }
            modules.insert(name, LoraFactors { kind, a, b });
        }
        Ok(Self { config, modules })
    }

    /// Writes one safetensors file (atomically) in peft's key layout, carrying the
    /// [`LoraConfig`] and peft's `adapter_config.json` in its metadata.
    pub fn save(&self, path: &Path) -> Result<()> {
        crate::fsutil::write_atomic(path, &self.to_bytes()?)
    }

    /// The bytes [`LoraAdapters::save`] writes.
    pub fn to_bytes(&self) -> Result<Vec<u8>> {
        let mut meta = HashMap::new();
        meta.insert("format".to_string(), "pt".to_string());
        meta.insert(
            CONFIG_METADATA_KEY.to_string(),
            serde_json::to_string(&self.config).expect("config serialises"),
        );
        meta.insert(
            PEFT_CONFIG_METADATA_KEY.to_string(),
            self.config.peft_config_json(&self.target_modules()).to_string(),
        );
        self.to_safetensors(meta)
    }

    /// Reads a file written by [`LoraAdapters::save`].
    pub fn load(path: &Path) -> Result<Self> {
        Self::from_safetensors_with_config(&SafeTensors::open(path)?)
    }

    /// Reads the bytes of a file written by [`LoraAdapters::save`] (`name` is used in errors).
    pub fn from_bytes(bytes: Arc<[u8]>, name: &str) -> Result<Self> {
        Self::from_safetensors_with_config(&SafeTensors::from_bytes(bytes, name)?)
    }

    fn from_safetensors_with_config(st: &SafeTensors) -> Result<Self> {
        let json = st.metadata().get(CONFIG_METADATA_KEY).ok_or_else(|| {
            Error::format(
                st.name(),
                format!("no '{CONFIG_METADATA_KEY}' metadata: not a clipit LoRA adapter (for a peft folder use import_peft)"),
            )
        })?;
        let config: LoraConfig = serde_json::from_str(json)
            .map_err(|e| Error::format(st.name(), format!("invalid LoRA config: {e}")))?;
        config.validate().map_err(|e| Error::format(st.name(), e.to_string()))?;
        Self::from_safetensors(st, config)
    }

    /// Writes peft's folder layout: `adapter_model.safetensors` (metadata `{"format": "pt"}`) and
    /// `adapter_config.json`, which `PeftModel.from_pretrained(model, dir)` loads onto the
    /// PyTorch model the checkpoint belongs to. Creates `dir` if needed.
    pub fn export_peft(&self, dir: &Path) -> Result<()> {
        std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
        let meta = HashMap::from([("format".to_string(), "pt".to_string())]);
        crate::fsutil::write_atomic(
            dir.join("adapter_model.safetensors"),
            &self.to_safetensors(meta)?,
        )?;
        let json =
            serde_json::to_string_pretty(&self.config.peft_config_json(&self.target_modules()))
                .expect("json");
        crate::fsutil::write_atomic(dir.join("adapter_config.json"), json.as_bytes())
    }

    /// Reads a folder written by peft's `save_pretrained` (or [`LoraAdapters::export_peft`]).
    pub fn import_peft(dir: &Path) -> Result<Self> {
        let cfg_path = dir.join("adapter_config.json");
        let text = std::fs::read(&cfg_path).map_err(|e| Error::io(&cfg_path, e))?;
        let config = Self::peft_config(&text, &cfg_path.display().to_string())?;
        let st = SafeTensors::open(&dir.join("adapter_model.safetensors"))?;
        Self::from_safetensors(&st, config)
    }

    /// [`LoraAdapters::import_peft`] from the two files' bytes (the browser's case).
    pub fn import_peft_bytes(adapter_config_json: &[u8], adapter_model: Arc<[u8]>) -> Result<Self> {
        let config = Self::peft_config(adapter_config_json, "adapter_config.json")?;
        Self::from_safetensors(
            &SafeTensors::from_bytes(adapter_model, "adapter_model.safetensors")?,
            config,
        )
    }

    fn peft_config(json: &[u8], name: &str) -> Result<LoraConfig> {
        let json: serde_json::Value = serde_json::from_slice(json)
            .map_err(|e| Error::format(name, format!("invalid JSON: {e}")))?;
        LoraConfig::from_peft_json(&json, name)
    }
}

/// The factor layout of a module kind: an `out_proj` of `nn.MultiheadAttention` is an `nn.Linear`.
fn layout_kind(kind: ParamKind) -> ParamKind {
    match kind {
        ParamKind::MhaOutProj => ParamKind::Linear,
        other => other,
    }
}

fn named(names: &ParamNames, id: ParamId) -> Result<&ParamInfo> {
    names.get(id).ok_or_else(|| {
        Error::msg("a LoRA-adapted parameter has no recorded checkpoint name (use the ParamNames of the model it came from)")
    })
}

fn matrix(values: Vec<f32>, shape: [usize; 2], device: &Device) -> Tensor<2> {
    Tensor::from_data(TensorData::new(values, shape), device)
}

/// One attached adapter: the adapted (base) parameter's id and Burn's factors
/// (`a` `[rows, r]`, `b` `[r, cols]`; the weight is `base + scale · a b`).
#[derive(Debug, Clone)]
pub struct LoraState {
    /// Id of the adapted parameter (look it up in [`ParamNames`]).
    pub base: ParamId,
    /// Factor `a` (its parameter id is `a_id`).
    pub a: Tensor<2>,
    /// Factor `b`.
    pub b: Tensor<2>,
    /// Parameter id of `a`.
    pub a_id: ParamId,
    /// Parameter id of `b`.
    pub b_id: ParamId,
}

/// Every LoRA adapter attached in `module`, in traversal order.
pub fn lora_state<M: Module>(module: &M) -> Vec<LoraState> {
    let scan = scan(module);
    scan.order
        .iter()
        .map(|id| {
            let (a, b) = &scan.adapted[id];
            LoraState { base: *id, a: a.val(), b: b.val(), a_id: a.id, b_id: b.id }
        })
        .collect()
}

/// Attaches fresh adapters, initialised as peft does, to every parameter of `module` that
/// `names` records as a kind `cfg.targets` covers, and freezes every base parameter of
/// `module` (only the factors train, as after `get_peft_model`). Works on any module tree, e.g.
/// `model.vision` or `model.text` alone. `seed` makes the init reproducible (each factor is drawn
/// from a generator seeded by `seed` and the module name). Fails if dropout is not 0, if nothing
/// is targeted or if a target already carries an adapter.
pub fn apply_lora<M: Module>(
    module: M,
    names: &ParamNames,
    cfg: &LoraConfig,
    seed: u64,
) -> Result<M> {
    cfg.check_trainable()?;
    let mut modules = BTreeMap::new();
    for id in list_param_ids(&module) {
        let Some(info) = names.get(id).filter(|i| cfg.targets.covers(i.kind)) else { continue };
        modules.insert(info.module().to_string(), peft_init(info, cfg.r, seed));
    }
    if modules.is_empty() {
        return Err(Error::msg(
            "LoRA: no parameter of this module is a target (check the targets and the ParamNames)",
        ));
    }
    let adapters = LoraAdapters { config: cfg.clone(), modules };
    Ok(adapters.attach(module, names)?.0)
}

/// peft's initial factors for the weight recorded as `info`.
fn peft_init(info: &ParamInfo, r: usize, seed: u64) -> LoraFactors {
    let mut rng = Rng::new(seed, info.module());
    let shape = &info.torch_shape;
    match info.kind {
        ParamKind::Embedding => {
            // lora_embedding_A [r, num] = 0, lora_embedding_B [dim, r] ~ N(0, 1).
            let (num, dim) = (shape[0], shape[1]);
            let b = (0..dim * r).map(|_| rng.normal() as f32).collect();
            LoraFactors {
                kind: ParamKind::Embedding,
                a: HostTensor::new(vec![r, num], vec![0.0; r * num]),
                b: HostTensor::new(vec![dim, r], b),
            }
        }
        _ => {
            // lora_A [r, fan_in...] ~ kaiming_uniform(a=√5) = U(-1/√fan_in, 1/√fan_in), lora_B = 0.
            let out = shape[0];
            let fan_in: usize = shape[1..].iter().product();
            let bound = 1.0 / (fan_in as f64).sqrt();
            let a = (0..r * fan_in).map(|_| ((rng.uniform() * 2.0 - 1.0) * bound) as f32).collect();
            let mut a_shape = shape.clone();
            a_shape[0] = r;
            let b_shape =
                if info.kind == ParamKind::Conv2d { vec![out, r, 1, 1] } else { vec![out, r] };
            LoraFactors {
                kind: layout_kind(info.kind),
                a: HostTensor::new(a_shape, a),
                b: HostTensor::new(b_shape, vec![0.0; out * r]),
            }
        }
    }
}

/// SplitMix64 seeded by the user's seed and a name, so each adapter's draws do not depend on the
/// order modules are visited in.
struct Rng(u64);

impl Rng {
    fn new(seed: u64, name: &str) -> Self {
        let h = name
            .bytes()
            .fold(0xcbf29ce484222325u64, |h, b| (h ^ b as u64).wrapping_mul(0x100000001b3));
        Self(seed ^ h.rotate_left(17))
    }

    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e3779b97f4a7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58476d1ce4e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d049bb133111eb);
        z ^ (z >> 31)
    }

    /// Uniform in [0, 1).
    fn uniform(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }

    /// Standard normal (Box-Muller).
    fn normal(&mut self) -> f64 {
        let (u1, u2) = (self.uniform().max(1e-300), self.uniform());
        (-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos()
    }
}

/// Adapters taken out of a module by [`merge`], kept so that [`unmerge`] can restore them.
#[derive(Debug, Clone)]
pub struct MergedLora {
    scale: f64,
    /// (base id, a, b): the factor parameters themselves, with their ids.
    entries: Vec<(ParamId, Param<Tensor<2>>, Param<Tensor<2>>)>,
}

impl MergedLora {
    /// Number of merged adapters.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether no adapter was merged.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

/// Folds every adapter into its base weight (`W ← W + scale · a b`, Burn's `materialize`) and
/// returns the plain module, for inference at the base model's cost, plus the adapters so that
/// [`unmerge`] can take them out again. `cfg` must be the config the adapters were made with.
/// Parameter ids are kept, so `ParamNames` still apply.
pub fn merge<M: Module>(module: M, cfg: &LoraConfig) -> (M, MergedLora) {
    let scan = scan(&module);
    let entries = scan.order.iter().map(|id| {
        let (a, b) = scan.adapted[id].clone();
        (*id, a, b)
    });
    let merged = MergedLora { scale: cfg.scale(), entries: entries.collect() };
    (module.materialize(), merged)
}

/// Undoes [`merge`] as peft's `unmerge` does: subtracts `scale · a b` from each merged weight and
/// re-attaches the same factor parameters (same ids, so optimizer state still applies). The
/// restored base equals the original up to float rounding; the other parameters are left as they
/// are. Fails if a weight is missing or already carries an adapter.
pub fn unmerge<M: Module>(module: M, merged: MergedLora) -> Result<M> {
    let scan = scan(&module);
    let present: HashSet<ParamId> = list_param_ids(&module).into_iter().collect();
    for (id, _, _) in &merged.entries {
        if !present.contains(id) {
            return Err(Error::msg("unmerge: a merged weight is not in this module"));
        }
        if scan.adapted.contains_key(id) {
            return Err(Error::msg("unmerge: a merged weight already carries an adapter"));
        }
    }
    let by_id: HashMap<ParamId, (Param<Tensor<2>>, Param<Tensor<2>>)> =
        merged.entries.into_iter().map(|(id, a, b)| (id, (a, b))).collect();
    Ok(module.apply_reparameterization(Restore { by_id, scale: merged.scale, skip: &scan.factors }))
}

/// Applies fresh adapters made by `make` (id, Burn dims, device → a, b, scale) and freezes every
/// other float parameter except those in `skip` (existing adapter factors).
struct Attach<'a, F> {
    skip: &'a HashSet<ParamId>,
    make: F,
}

impl<F> Reparameterizer for Attach<'_, F>
where
    F: FnMut(ParamId, &[usize], &Device) -> Option<(Tensor<2>, Tensor<2>, f64)>,
{
    type Reparam = LoraAdapter;

    fn reparameterize<const D: usize>(
        &mut self,
        _path: &str,
        param: Param<Tensor<D>>,
    ) -> (Param<Tensor<D>>, Option<LoraAdapter>) {
        if self.skip.contains(&param.id) {
            return (param, None);
        }
        let dims = param.lazy_shape().to_vec();
        let device = param.lazy_device();
        let base = param.set_require_grad(false);
        let adapter = (self.make)(base.id, &dims, &device).map(|(a, b, scale)| LoraAdapter {
            a: Param::from_tensor(a),
            b: Param::from_tensor(b),
            scale,
        });
        (base, adapter)
    }
}

/// Re-attaches merged adapters after subtracting their update from the base.
struct Restore<'a> {
    by_id: HashMap<ParamId, (Param<Tensor<2>>, Param<Tensor<2>>)>,
    scale: f64,
    skip: &'a HashSet<ParamId>,
}

impl Reparameterizer for Restore<'_> {
    type Reparam = LoraAdapter;

    fn reparameterize<const D: usize>(
        &mut self,
        _path: &str,
        param: Param<Tensor<D>>,
    ) -> (Param<Tensor<D>>, Option<LoraAdapter>) {
        if self.skip.contains(&param.id) {
            return (param, None);
        }
        let Some((a, b)) = self.by_id.remove(&param.id) else {
            return (param, None);
        };
        let scale = self.scale;
        let delta = a.val().matmul(b.val()).mul_scalar(scale).detach();
        let base = param.set_require_grad(false).map(|w| {
            let shape = w.shape();
            (w - delta.reshape(shape)).detach()
        });
        (base, Some(LoraAdapter { a, b, scale }))
    }
}

/// What a traversal finds: adapted parameters (base id → factor params), in order, and the ids
/// of every factor.
struct Scan {
    adapted: HashMap<ParamId, (Param<Tensor<2>>, Param<Tensor<2>>)>,
    order: Vec<ParamId>,
    factors: HashSet<ParamId>,
}

fn scan<M: Module>(module: &M) -> Scan {
    let mut v = ScanVisitor {
        last: None,
        current: None,
        field: String::new(),
        a: None,
        out: Scan { adapted: HashMap::new(), order: Vec::new(), factors: HashSet::new() },
    };
    module.visit(&mut v);
    v.out
}

/// Burn visits an adapted parameter as its base, then enters a `Reparameterization` module
/// named `lora` holding the `a` and `b` parameters.
struct ScanVisitor {
    last: Option<ParamId>,
    current: Option<ParamId>,
    field: String,
    a: Option<Param<Tensor<2>>>,
    out: Scan,
}

impl ModuleVisitor for ScanVisitor {
    fn enter_module(&mut self, name: &str, container_type: &str) {
        if container_type == "Reparameterization" {
            self.current = if name == LORA_NAME { self.last } else { None };
            self.a = None;
        } else if self.current.is_some() {
            self.field = name.to_string();
        }
    }

    fn exit_module(&mut self, _name: &str, container_type: &str) {
        if container_type == "Reparameterization" {
            self.current = None;
        }
    }

    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
        let Some(base) = self.current else {
            self.last = Some(param.id);
            return;
        };
        if D != 2 {
            return;
        }
        // Same tensor (same autodiff node), seen at its real rank.
        let p = Param::initialized(param.id, Tensor::<2>::from_bridge(param.val().into_bridge()))
            .set_require_grad(true);
        self.out.factors.insert(param.id);
        match self.field.as_str() {
            "a" => self.a = Some(p),
            "b" => {
                if let Some(a) = self.a.take() {
                    self.out.order.push(base);
                    self.out.adapted.insert(base, (a, p));
                }
            }
            _ => {}
        }
    }
}

const LORA_NAME: &str = <LoraAdapter as burn::module::Reparameterization>::NAME;

/// Writes the adapters of `module` to one safetensors file (see [`LoraAdapters::save`]).
pub fn save_adapter<M: Module>(
    path: &Path,
    module: &M,
    names: &ParamNames,
    cfg: &LoraConfig,
) -> Result<()> {
    LoraAdapters::from_module(module, names, cfg)?.save(path)
}

/// Reads a file written by [`save_adapter`] and attaches its adapters to `module` (see
/// [`LoraAdapters::attach`]); returns the config and what was attached.
pub fn load_adapter<M: Module>(
    path: &Path,
    module: M,
    names: &ParamNames,
) -> Result<(M, LoraConfig, AttachReport)> {
    let adapters = LoraAdapters::load(path)?;
    let (module, report) = adapters.attach(module, names)?;
    Ok((module, adapters.config, report))
}

/// Writes the adapters of `module` as peft's folder (see [`LoraAdapters::export_peft`]).
pub fn export_peft<M: Module>(
    dir: &Path,
    module: &M,
    names: &ParamNames,
    cfg: &LoraConfig,
) -> Result<()> {
    LoraAdapters::from_module(module, names, cfg)?.export_peft(dir)
}

/// Reads a peft adapter folder and attaches its adapters to `module` (see
/// [`LoraAdapters::attach`]); returns the config and what was attached.
pub fn import_peft<M: Module>(
    dir: &Path,
    module: M,
    names: &ParamNames,
) -> Result<(M, LoraConfig, AttachReport)> {
    let adapters = LoraAdapters::import_peft(dir)?;
    let (module, report) = adapters.attach(module, names)?;
    Ok((module, adapters.config, report))
}
