//! How much memory a checkpoint needs in the browser, estimated from its safetensors headers
//! before any tensor is read, and whether the tab can hold it.
//!
//! The page's CPU fallback keeps the file's bytes and every weight as `f32` in WebAssembly's
//! memory, which wasm32 caps at a 4 GiB address space. On WebGPU the weights go to the GPU one
//! tensor at a time (the file's bytes stay in wasm memory meanwhile), and each tensor must fit
//! in one buffer: the adapter's `maxStorageBufferBindingSize` and `maxBufferSize`. A model that
//! fits neither is refused with a message that gives both figures, instead of crashing the tab.

use crate::weights::SafeTensors;
use crate::Result;

/// wasm32's address space: the most memory a WebAssembly instance can ever have.
pub const WASM32_MEMORY: u64 = 4 << 30;

/// What the page needs in wasm memory besides the weights: the module itself, the decoded
/// images, activations of a batch, the report corpus and its embeddings.
pub const WASM_RESERVE: u64 = 512 << 20;

/// A checkpoint's size, from its safetensors headers.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MemoryEstimate {
    /// Bytes of every file of the checkpoint (they are all copied into wasm memory).
    pub file_bytes: u64,
    /// Bytes of every tensor as `f32` (what the CPU backend holds).
    pub f32_bytes: u64,
    /// Number of tensors.
    pub tensors: usize,
    /// The largest tensor's name (empty when there is none).
    pub largest_name: String,
    /// The largest tensor's size as `f32`, in bytes.
    pub largest_f32_bytes: u64,
}

/// One file of a checkpoint as the estimate sees it.
pub struct FileHead<'a> {
    /// The file's name, for messages; `.safetensors` files are parsed.
    pub name: &'a str,
    /// The file's full size in bytes.
    pub len: u64,
    /// The file's first bytes: for a `.safetensors` file, at least its 8-byte length and header.
    pub head: &'a [u8],
}

/// Adds up the checkpoint's files and the `f32` size of every tensor their headers declare.
/// A header that is truncated, corrupt or lies about its offsets is an error naming the file.
pub fn estimate_memory(files: &[FileHead<'_>]) -> Result<MemoryEstimate> {
    let mut est = MemoryEstimate::default();
    for file in files {
        est.file_bytes = est.file_bytes.saturating_add(file.len);
        if !file.name.ends_with(".safetensors") {
            continue;
        }
        for (name, info) in SafeTensors::header_tensors(file.head, file.len, file.name)? {
            let elements = info.shape.iter().fold(1u64, |n, &d| n.saturating_mul(d as u64));
            let bytes = elements.saturating_mul(4);
            est.f32_bytes = est.f32_bytes.saturating_add(bytes);
            est.tensors += 1;
            if bytes > est.largest_f32_bytes {
                est.largest_f32_bytes = bytes;
                est.largest_name = name;
            }
        }
    }
    Ok(est)
}

/// Where a model can load, as [`plan_memory`] decides it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MemoryPlan {
    /// Whether the weights go to WebGPU (otherwise the CPU fallback).
    pub webgpu: bool,
    /// Why the CPU although WebGPU was offered (a tensor above the adapter's buffer limit).
    pub reason: Option<String>,
    /// Bytes of wasm memory the model needs on that backend.
    pub wasm_bytes: u64,
    /// Bytes of wasm memory available to models ([`WASM32_MEMORY`] less [`WASM_RESERVE`]).
    pub wasm_budget: u64,
}

/// Decides where a model of this estimate loads: on WebGPU when `webgpu_limit` (the adapter's
/// `min(maxStorageBufferBindingSize, maxBufferSize)`, `None` without WebGPU) holds its largest
/// tensor, otherwise on the CPU fallback. An error, with the figures, when it fits neither.
pub fn plan_memory(est: &MemoryEstimate, webgpu_limit: Option<u64>) -> Result<MemoryPlan, String> {
    let budget = WASM32_MEMORY - WASM_RESERVE;
    let cpu_need = est.file_bytes.saturating_add(est.f32_bytes);
    let gpu_need = est.file_bytes.saturating_add(est.largest_f32_bytes);
    let too_big_tensor = webgpu_limit.filter(|&limit| est.largest_f32_bytes > limit).map(|limit| {
        format!(
            "tensor '{}' needs {} as f32, above this WebGPU adapter's buffer limit of {}",
            est.largest_name,
            human(est.largest_f32_bytes),
            human(limit)
        )
    });
    if webgpu_limit.is_some() && too_big_tensor.is_none() && gpu_need <= budget {
        return Ok(MemoryPlan {
            webgpu: true,
            reason: None,
            wasm_bytes: gpu_need,
            wasm_budget: budget,
        });
    }
    if cpu_need <= budget {
        return Ok(MemoryPlan {
            webgpu: false,
            reason: too_big_tensor,
            wasm_bytes: cpu_need,
            wasm_budget: budget,
        });
    }
    let gpu = match (webgpu_limit, too_big_tensor) {
        (None, _) => " WebGPU is not available here.".to_string(),
        (Some(_), Some(why)) => format!(" On WebGPU it does not fit either: {why}."),
        (Some(_), None) => format!(
            " On WebGPU the page would still hold its {} of files in that memory.",
            human(est.file_bytes)
        ),
    };
    Err(format!(
        "this model needs about {} of memory ({} of files and {} of f32 weights); the page's CPU fallback can hold about {} (WebAssembly's 4 GB address space less {} for the page itself).{gpu} Use the clipit command line for it, or a smaller checkpoint.",
        human(cpu_need),
        human(est.file_bytes),
        human(est.f32_bytes),
        human(budget),
        human(WASM_RESERVE),
    ))
}

/// Bytes as GB or MB with one decimal (decimal units, as the page shows sizes).
fn human(bytes: u64) -> String {
    if bytes >= 1_000_000_000 {
        format!("{:.1} GB", bytes as f64 / 1e9)
    } else {
        format!("{:.1} MB", bytes as f64 / 1e6)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A safetensors head declaring F16 tensors of these shapes (data not included), and the
    /// length of the whole file.
    fn head(shapes: &[(&str, &[u64])]) -> (Vec<u8>, u64) {
        let mut offset = 0u64;
        let mut entries = Vec::new();
        for (name, shape) in shapes {
            let bytes = shape.iter().product::<u64>() * 2;
            entries.push(format!(
                "\"{name}\":{{\"dtype\":\"F16\",\"shape\":{shape:?},\"data_offsets\":[{offset},{}]}}",
                offset + bytes
            ));
            offset += bytes;
        }
        let header = format!("{{{}}}", entries.join(","));
        let mut out = (header.len() as u64).to_le_bytes().to_vec();
        out.extend_from_slice(header.as_bytes());
        let len = out.len() as u64 + offset;
        (out, len)
    }

    #[test]
    fn estimates_from_the_header_alone() {
        let (h, len) = head(&[("a", &[1000, 1000]), ("b", &[10])]);
        let files = [
            FileHead { name: "model.safetensors", len, head: &h },
            FileHead { name: "config.json", len: 500, head: b"{}" },
        ];
        let est = estimate_memory(&files).unwrap();
        assert_eq!(est.file_bytes, len + 500);
        assert_eq!(est.f32_bytes, 4 * (1_000_000 + 10));
        assert_eq!((est.tensors, est.largest_name.as_str()), (2, "a"));
        assert_eq!(est.largest_f32_bytes, 4_000_000);
    }

    #[test]
    fn truncated_or_lying_headers_name_the_file() {
        let (h, len) = head(&[("a", &[1000, 1000])]);
        let short = FileHead { name: "w.safetensors", len: len - 1, head: &h };
        let e = estimate_memory(&[short]).unwrap_err().to_string();
        assert!(e.contains("w.safetensors") && e.contains("outside"), "{e}");
        let cut = FileHead { name: "w.safetensors", len, head: &h[..20] };
        let e = estimate_memory(&[cut]).unwrap_err().to_string();
        assert!(e.contains("w.safetensors") && e.contains("header needs"), "{e}");
        let tiny = FileHead { name: "w.safetensors", len: 3, head: b"abc" };
        assert!(estimate_memory(&[tiny]).unwrap_err().to_string().contains("only 3 bytes"));
    }

    #[test]
    fn a_vit_b_fits_and_a_vit_g_is_refused_with_figures() {
        // ViT-B/32 CLIP in f16: ~300 MB of files, ~600 MB as f32.
        let (h, len) = head(&[("visual", &[88_000_000]), ("text", &[63_000_000])]);
        let est = estimate_memory(&[FileHead { name: "m.safetensors", len, head: &h }]).unwrap();
        let cpu = plan_memory(&est, None).unwrap();
        assert!(!cpu.webgpu && cpu.wasm_bytes == len + 4 * 151_000_000);
        let gpu = plan_memory(&est, Some(1 << 30)).unwrap();
        assert!(gpu.webgpu && gpu.wasm_bytes == len + 4 * 88_000_000);
        // A tensor above the adapter's limit goes to the CPU, saying why.
        let low = plan_memory(&est, Some(128 << 20)).unwrap();
        assert!(!low.webgpu && low.reason.as_deref().unwrap().contains("'visual'"));

        // ViT-g-sized, 1.4 G parameters in f16: 2.8 GB of file, 5.6 GB as f32.
        let (h, len) = head(&[("w", &[1_400_000_000])]);
        let est = estimate_memory(&[FileHead { name: "g.safetensors", len, head: &h }]).unwrap();
        let e = plan_memory(&est, None).unwrap_err();
        assert!(e.starts_with("this model needs about 8.4 GB"), "{e}");
        assert!(e.contains("CPU fallback can hold about 3.8 GB") && e.contains("not available"));
        let e = plan_memory(&est, Some(1 << 30)).unwrap_err();
        assert!(e.contains("'w' needs 5.6 GB as f32, above this WebGPU adapter's buffer limit"));
    }

    #[test]
    fn webgpu_spares_the_f32_copy() {
        // 1.5 GB of f16 in tensors of 200 MB: too large for the CPU, fine on WebGPU.
        let shapes: Vec<(String, [u64; 1])> =
            (0..8).map(|i| (format!("t{i}"), [100_000_000])).collect();
        let refs: Vec<(&str, &[u64])> = shapes.iter().map(|(n, s)| (n.as_str(), &s[..])).collect();
        let (h, len) = head(&refs);
        let est = estimate_memory(&[FileHead { name: "m.safetensors", len, head: &h }]).unwrap();
        assert!(plan_memory(&est, None).is_err());
        let plan = plan_memory(&est, Some(1 << 30)).unwrap();
        assert!(plan.webgpu && plan.wasm_bytes < plan.wasm_budget);
    }
}
