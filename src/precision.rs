//! The float type a model's weights and activations use on a GPU: half precision where the
//! adapter can run f16 shaders (`shader-f16` in WebGPU), single precision otherwise, and what
//! the page says when WebGPU goes away under it. Pure decisions, shared by the page
//! ([`crate::web`]) and its native tests.

use burn::tensor::FloatDType;

/// The element type of weights and activations on a device.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WeightDtype {
    /// 32-bit floats: every backend, the CPU included.
    F32,
    /// IEEE half precision: half the GPU memory and bandwidth, on adapters with `shader-f16`.
    F16,
}

impl WeightDtype {
    /// `"f32"` or `"f16"`, as the page shows it and its `?dtype=` parameter takes it.
    pub fn name(self) -> &'static str {
        match self {
            Self::F32 => "f32",
            Self::F16 => "f16",
        }
    }

    /// Burn's float type for [`burn::tensor::Device::configure`].
    pub fn float_dtype(self) -> FloatDType {
        match self {
            Self::F32 => FloatDType::F32,
            Self::F16 => FloatDType::F16,
        }
    }
}

/// The dtype for weights on a GPU adapter: `requested` is the page's `?dtype=` (`None`, empty
/// or `"auto"`: f16 when the adapter has `shader-f16`, else f32; `"f32"`; `"f16"`, refused
/// when the adapter lacks `shader-f16`). Errors say what is wrong and what to do instead.
pub fn choose_weight_dtype(
    shader_f16: bool,
    requested: Option<&str>,
) -> Result<WeightDtype, String> {
    let requested = requested.map(|r| r.trim().to_ascii_lowercase()).unwrap_or_default();
    match requested.as_str() {
        "" | "auto" if shader_f16 => Ok(WeightDtype::F16),
        "" | "auto" | "f32" => Ok(WeightDtype::F32),
        "f16" if shader_f16 => Ok(WeightDtype::F16),
        "f16" => {
            Err("f16 weights need a WebGPU adapter with the shader-f16 feature, and this one \
                      has none: leave out ?dtype=f16 (or use ?dtype=f32)"
                .to_string())
        }
        other => Err(format!("unknown dtype '{other}' (auto, f32 or f16)")),
    }
}

/// Whether the page can train on weights in `dtype`: in f32 only. In f16 the CLIP-IT loss turned
/// NaN at the second step (tests/precision_f16.rs found it on lavapipe; Burn has no mixed
/// precision), while adapters trained in f32 predict the same on f16 weights.
pub fn check_trainable(dtype: WeightDtype) -> Result<(), String> {
    match dtype {
        WeightDtype::F32 => Ok(()),
        WeightDtype::F16 => {
            Err("training needs f32 weights, and this model's are f16 (in f16 the loss turns \
                 NaN within a few steps): load the model with f32 weights (the page restarts its \
                 engine that way when a training starts; ?dtype=f32 keeps f32 from the start); \
                 an adapter trained in f32 imports onto f16 weights"
                .to_string())
        }
    }
}

/// What the page says when the WebGPU device is lost: `reason` as wgpu names it (`Destroyed`,
/// `Unknown`) and the browser's message, if any.
pub fn device_lost_message(reason: &str, message: &str) -> String {
    let message = message.trim();
    let detail = if message.is_empty() { String::new() } else { format!(": {message}") };
    format!("WebGPU device lost (reason {reason}{detail}): switched to the CPU backend")
}

/// Whether a failed GPU operation's error text says that the device is gone (lost, or poisoned
/// by burn after the loss).
pub fn error_says_device_lost(text: &str) -> bool {
    let t = text.to_ascii_lowercase();
    t.contains("device lost") || t.contains("device was lost") || t.contains("poisoned")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn auto_picks_f16_only_with_shader_f16() {
        assert_eq!(choose_weight_dtype(true, None), Ok(WeightDtype::F16));
        assert_eq!(choose_weight_dtype(true, Some("auto")), Ok(WeightDtype::F16));
        assert_eq!(choose_weight_dtype(true, Some("")), Ok(WeightDtype::F16));
        assert_eq!(choose_weight_dtype(false, None), Ok(WeightDtype::F32));
        assert_eq!(choose_weight_dtype(false, Some(" Auto ")), Ok(WeightDtype::F32));
    }

    #[test]
    fn the_flag_overrides() {
        assert_eq!(choose_weight_dtype(true, Some("f32")), Ok(WeightDtype::F32));
        assert_eq!(choose_weight_dtype(false, Some("F32")), Ok(WeightDtype::F32));
        assert_eq!(choose_weight_dtype(true, Some("f16")), Ok(WeightDtype::F16));
    }

    #[test]
    fn f16_without_shader_f16_is_refused_clearly() {
        let e = choose_weight_dtype(false, Some("f16")).unwrap_err();
        assert!(e.contains("shader-f16") && e.contains("?dtype=f32"), "{e}");
        let e = choose_weight_dtype(true, Some("bf16")).unwrap_err();
        assert!(e.contains("unknown dtype 'bf16'"), "{e}");
    }

    #[test]
    fn training_is_refused_on_f16_weights() {
        assert_eq!(check_trainable(WeightDtype::F32), Ok(()));
        let e = check_trainable(WeightDtype::F16).unwrap_err();
        assert!(e.contains("?dtype=f32") && e.contains("f16"), "{e}");
    }

    #[test]
    fn names_and_burn_types() {
        assert_eq!(WeightDtype::F16.name(), "f16");
        assert_eq!(WeightDtype::F32.name(), "f32");
        assert_eq!(WeightDtype::F16.float_dtype(), FloatDType::F16);
        assert_eq!(WeightDtype::F32.float_dtype(), FloatDType::F32);
    }

    #[test]
    fn device_lost_says_why_and_where_it_went() {
        assert_eq!(
            device_lost_message("Destroyed", " device was destroyed. "),
            "WebGPU device lost (reason Destroyed: device was destroyed.): switched to the CPU backend"
        );
        assert_eq!(
            device_lost_message("Unknown", ""),
            "WebGPU device lost (reason Unknown): switched to the CPU backend"
        );
    }

    #[test]
    fn lost_device_errors_are_recognised() {
        assert!(error_says_device_lost(
            "reading a tensor from the device: Device poisoned: Destroyed"
        ));
        assert!(error_says_device_lost("the wgpu device was lost (Unknown): driver reset"));
        assert!(!error_says_device_lost("tensor data is not convertible to f32"));
    }
}
