//! Choosing where tensors live: the portable CPU backend, wgpu (Vulkan, Metal, DX12, WebGPU) or
//! CUDA, each behind its cargo feature.
//!
//! The default CPU backend is burn-flex: pure Rust, SIMD-vectorised, multi-threaded with rayon
//! natively and built for wasm32 with `simd128`, so the same code runs in the CLI and in the
//! page. (burn-ndarray is deprecated in Burn 0.22; the CubeCL CPU backend needs LLVM/MLIR and
//! does not build for wasm32.)

use burn::tensor::Device;

use crate::{Error, Result};

/// A compute backend a user can ask for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    /// burn-flex on the CPU.
    Cpu,
    /// burn-wgpu on the default adapter.
    Wgpu,
    /// burn-cuda on GPU 0.
    Cuda,
}

impl std::str::FromStr for Backend {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self> {
        match s {
            "cpu" => Ok(Self::Cpu),
            "wgpu" => Ok(Self::Wgpu),
            "cuda" => Ok(Self::Cuda),
            other => Err(Error::msg(format!("unknown backend '{other}' (cpu, wgpu, cuda)"))),
        }
    }
}

impl std::fmt::Display for Backend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Cpu => "cpu",
            Self::Wgpu => "wgpu",
            Self::Cuda => "cuda",
        })
    }
}

impl Backend {
    /// Creates the device, or explains why this build or machine cannot.
    pub fn device(self) -> Result<Device> {
        match self {
            Self::Cpu => cpu_device(),
            Self::Wgpu => wgpu_device(),
            Self::Cuda => cuda_device(),
        }
    }
}

/// Unused in a build with every backend.
#[allow(dead_code)]
fn missing(feature: &str) -> Error {
    Error::msg(format!("this build has no {feature} backend: rebuild with `--features {feature}`"))
}

#[cfg(feature = "cpu")]
fn cpu_device() -> Result<Device> {
    Ok(Device::flex())
}

#[cfg(not(feature = "cpu"))]
fn cpu_device() -> Result<Device> {
    Err(missing("cpu"))
}

/// Sets cubecl's autotune level, before the first GPU device exists, to `full` unless the user
/// chose one (`CUBECL_AUTOTUNE_LEVEL`, or a `cubecl.toml` with a level other than the default).
///
/// Every level measures each candidate kernel once per shape on the device (cached on disk);
/// the lower ones first probe the device's peak throughput with two buffers of up to 1 GiB each,
/// which SwiftShader refused (out of memory: a panic on cubecl's device thread, then a hang) and
/// which doubled the wgpu parity tests' time on lavapipe. `full` skips that probe.
/// Runs once per process (every device constructor calls it); a no-op without the
/// `gpu-autotune` feature, or once cubecl has read its configuration.
pub fn settle_gpu_autotune() {
    #[cfg(all(feature = "gpu-autotune", not(target_arch = "wasm32")))]
    {
        static ONCE: std::sync::Once = std::sync::Once::new();
        ONCE.call_once(|| {
            use cubecl_runtime::config::{
                autotune::AutotuneLevel, CubeClRuntimeConfig, RuntimeConfig,
            };
            let mut config = CubeClRuntimeConfig::from_current_dir().override_from_env();
            let chosen = std::env::var_os("CUBECL_AUTOTUNE_LEVEL").is_some()
                || !matches!(config.autotune.level, AutotuneLevel::Balanced);
            if !chosen {
                config.autotune.level = AutotuneLevel::Full;
            }
            let _ = CubeClRuntimeConfig::try_set(config);
        });
    }
}

/// The wgpu runtime initialises once per process; later calls reuse its device.
#[cfg(all(feature = "wgpu", not(target_arch = "wasm32")))]
fn wgpu_device() -> Result<Device> {
    static DEVICE: std::sync::OnceLock<std::result::Result<Device, String>> =
        std::sync::OnceLock::new();
    settle_gpu_autotune();
    DEVICE
        .get_or_init(|| {
            Device::wgpu_options().init().map_err(|e| format!("no usable wgpu adapter: {e}"))
        })
        .clone()
        .map_err(Error::msg)
}

#[cfg(any(not(feature = "wgpu"), target_arch = "wasm32"))]
fn wgpu_device() -> Result<Device> {
    Err(missing("wgpu"))
}

#[cfg(feature = "cuda")]
fn cuda_device() -> Result<Device> {
    settle_gpu_autotune();
    Ok(Device::cuda(0))
}

#[cfg(not(feature = "cuda"))]
fn cuda_device() -> Result<Device> {
    Err(missing("cuda"))
}
