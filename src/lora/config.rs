//! LoRA hyperparameters and targets, and their peft `adapter_config.json` form.

use super::*;

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
