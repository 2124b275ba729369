//! How much memory a checkpoint needs in the browser, estimated from its safetensors headers
//! before any tensor is read, and whether the tab can hold it.
//!
//! The page keeps a checkpoint's file bytes on the JavaScript side and copies one tensor at a
//! time into WebAssembly's memory (which wasm32 caps at a 4 GiB address space) while converting
//! it to `f32`. So the CPU fallback holds every weight as `f32` there, plus the tensor being
//! converted; on WebGPU the weights stream to the GPU, and wasm memory holds only the tensor
//! being converted, which must fit in one buffer: the adapter's `maxStorageBufferBindingSize`
//! and `maxBufferSize`. A model that fits neither is refused with a message that gives both
//! figures, instead of crashing the tab.

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
    /// Bytes of every file of the checkpoint (held on the JavaScript side, not in wasm memory).
    pub file_bytes: u64,
    /// Bytes of the files that are not `.safetensors` (config, tokenizer): read whole into wasm
    /// memory while the model loads.
    pub other_file_bytes: u64,
    /// Bytes of every tensor as `f32` (what the CPU backend holds).
    pub f32_bytes: u64,
    /// Number of tensors.
    pub tensors: usize,
    /// The largest tensor's name (empty when there is none).
    pub largest_name: String,
    /// The largest tensor's size as `f32`, in bytes.
    pub largest_f32_bytes: u64,
    /// The largest tensor's size as stored in the file, in bytes.
    pub largest_stored_bytes: u64,
}

impl MemoryEstimate {
    /// Wasm memory needed while one tensor is converted: its stored bytes, copied in from the
    /// JavaScript side, and its `f32` values (the largest of each), plus the small files.
    pub fn transient_bytes(&self) -> u64 {
        self.largest_stored_bytes
            .saturating_add(self.largest_f32_bytes)
            .saturating_add(self.other_file_bytes)
    }
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
            est.other_file_bytes = est.other_file_bytes.saturating_add(file.len);
            continue;
        }
        for (name, info) in SafeTensors::header_tensors(file.head, file.len, file.name)? {
            let elements = info.shape.iter().fold(1u64, |n, &d| n.saturating_mul(d as u64));
            let bytes = elements.saturating_mul(4);
            est.f32_bytes = est.f32_bytes.saturating_add(bytes);
            est.tensors += 1;
            let stored = info.dtype.map_or(bytes, |d| elements.saturating_mul(d.size() as u64));
            est.largest_stored_bytes = est.largest_stored_bytes.max(stored);
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
    let cpu_need = est.f32_bytes.saturating_add(est.transient_bytes());
    let gpu_need = est.transient_bytes();
    let too_big_tensor = webgpu_limit.filter(|&limit| est.largest_f32_bytes > limit).map(|limit| {
        format!(
            "tensor '{}' needs {} as f32, above this WebGPU adapter's buffer limit of {}",
            est.largest_name,
            human_bytes(est.largest_f32_bytes),
            human_bytes(limit)
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
            " On WebGPU it would still convert a {} tensor in that memory.",
            human_bytes(est.largest_f32_bytes)
        ),
    };
    Err(format!(
        "this model needs about {} of memory ({} of f32 weights and {} to convert its largest tensor); the page's CPU fallback can hold about {} (WebAssembly's 4 GB address space less {} for the page itself).{gpu} Use the clipit command line for it, or a smaller checkpoint.",
        human_bytes(cpu_need),
        human_bytes(est.f32_bytes),
        human_bytes(est.transient_bytes()),
        human_bytes(budget),
        human_bytes(WASM_RESERVE),
    ))
}

/// The largest activation, in bytes, that one item (an image or a text) makes in a transformer
/// forward pass over `tokens` tokens with `heads` attention heads, where `widest` is the widest
/// per-token activation (the MLP's hidden layer, the fused q/k/v, the flattened patches): the
/// attention scores `[heads, tokens, tokens]` or that `[tokens, widest]`, as `f32`.
pub fn item_activation_bytes(tokens: usize, heads: usize, widest: usize) -> u64 {
    let per_token = (heads as u64).saturating_mul(tokens as u64).max(widest as u64);
    4u64.saturating_mul(tokens as u64).saturating_mul(per_token)
}

/// How many items to run in one forward pass: `wanted`, or fewer when the batch's largest
/// activation (`item_bytes` per item) would not fit in one buffer of `limit` bytes (a WebGPU
/// adapter's `min(maxStorageBufferBindingSize, maxBufferSize)`; `None` on the CPU, which has
/// none). Never below 1: a single item above the limit is left to fail with the adapter's error.
pub fn micro_batch(item_bytes: u64, wanted: usize, limit: Option<u64>) -> usize {
    let wanted = wanted.max(1);
    match limit {
        Some(limit) if item_bytes > 0 => {
            usize::try_from(limit / item_bytes).unwrap_or(usize::MAX).clamp(1, wanted)
        }
        _ => wanted,
    }
}

/// Bytes as GB or MB with one decimal (decimal units, as the page shows sizes).
pub fn human_bytes(bytes: u64) -> String {
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
        assert_eq!((est.file_bytes, est.other_file_bytes), (len + 500, 500));
        assert_eq!(est.f32_bytes, 4 * (1_000_000 + 10));
        assert_eq!((est.tensors, est.largest_name.as_str()), (2, "a"));
        assert_eq!((est.largest_f32_bytes, est.largest_stored_bytes), (4_000_000, 2_000_000));
        assert_eq!(est.transient_bytes(), 6_000_500);
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
        // ViT-B/32 CLIP in f16: ~300 MB of files, ~600 MB as f32. The files stay on the
        // JavaScript side: wasm memory holds the f32 weights and one tensor being converted.
        let (h, len) = head(&[("visual", &[88_000_000]), ("text", &[63_000_000])]);
        let est = estimate_memory(&[FileHead { name: "m.safetensors", len, head: &h }]).unwrap();
        let cpu = plan_memory(&est, None).unwrap();
        assert!(!cpu.webgpu && cpu.wasm_bytes == 4 * 151_000_000 + 6 * 88_000_000);
        let gpu = plan_memory(&est, Some(1 << 30)).unwrap();
        assert!(gpu.webgpu && gpu.wasm_bytes == 6 * 88_000_000);
        // A tensor above the adapter's limit goes to the CPU, saying why.
        let low = plan_memory(&est, Some(128 << 20)).unwrap();
        assert!(!low.webgpu && low.reason.as_deref().unwrap().contains("'visual'"));

        // ViT-g-sized, 1.4 G parameters in f16 in 40 tensors: 5.6 GB as f32 does not fit the
        // CPU fallback, but streams to WebGPU tensor by tensor.
        let shapes: Vec<(String, [u64; 1])> =
            (0..40).map(|i| (format!("t{i}"), [35_000_000])).collect();
        let refs: Vec<(&str, &[u64])> = shapes.iter().map(|(n, s)| (n.as_str(), &s[..])).collect();
        let (h, len) = head(&refs);
        let est = estimate_memory(&[FileHead { name: "g.safetensors", len, head: &h }]).unwrap();
        let e = plan_memory(&est, None).unwrap_err();
        assert!(
            e.starts_with("this model needs about 5.8 GB of memory (5.6 GB of f32 weights"),
            "{e}"
        );
        assert!(e.contains("CPU fallback can hold about 3.8 GB") && e.contains("not available"));
        assert!(plan_memory(&est, Some(1 << 30)).unwrap().webgpu);

        // The same in one tensor: too large for an adapter's buffer, and for the CPU.
        let (h, len) = head(&[("w", &[1_400_000_000])]);
        let est = estimate_memory(&[FileHead { name: "g.safetensors", len, head: &h }]).unwrap();
        let e = plan_memory(&est, None).unwrap_err();
        assert!(e.starts_with("this model needs about 14.0 GB"), "{e}");
        assert!(e.contains("CPU fallback can hold about 3.8 GB") && e.contains("not available"));
        let e = plan_memory(&est, Some(1 << 30)).unwrap_err();
        assert!(e.contains("'w' needs 5.6 GB as f32, above this WebGPU adapter's buffer limit"));
    }

    #[test]
    fn batches_split_under_low_buffer_limits() {
        // ViT-B/16 at 224 px: 197 tokens, 12 heads, MLP 3072: the MLP's hidden layer is largest.
        let vit_b16 = item_activation_bytes(197, 12, 3072);
        assert_eq!(vit_b16, 4 * 197 * 3072);
        // CONCH's ViT-B/16 at 448 px: 785 tokens, about 29.6 MB of scores per image.
        let conch = item_activation_bytes(785, 12, 3072);
        assert_eq!(conch, 29_578_800);
        // WebGPU's default 128 MiB binding limit holds 4 CONCH images, and all 16 ViT-B/16 ones.
        let default_limit = 128 << 20;
        assert_eq!(micro_batch(conch, 16, Some(default_limit)), 4);
        assert_eq!(micro_batch(vit_b16, 16, Some(default_limit)), 16);
        // SwiftShader's 1 GiB holds the page's batch; the CPU has no such limit.
        assert_eq!(micro_batch(conch, 16, Some(1 << 30)), 16);
        assert_eq!(micro_batch(conch, 16, None), 16);
        // One item above the limit still runs alone; a batch of 0 means 1.
        assert_eq!(micro_batch(conch, 16, Some(1 << 20)), 1);
        assert_eq!(micro_batch(conch, 0, Some(1 << 30)), 1);
        // The attention scores win when there are more tokens than the widest activation.
        assert_eq!(item_activation_bytes(785, 12, 3072), 4 * 785 * 12 * 785);
    }

    #[test]
    fn webgpu_spares_the_f32_copy() {
        // 2 GB of f16 in tensors of 200 MB: too large for the CPU, fine on WebGPU.
        let shapes: Vec<(String, [u64; 1])> =
            (0..10).map(|i| (format!("t{i}"), [100_000_000])).collect();
        let refs: Vec<(&str, &[u64])> = shapes.iter().map(|(n, s)| (n.as_str(), &s[..])).collect();
        let (h, len) = head(&refs);
        let est = estimate_memory(&[FileHead { name: "m.safetensors", len, head: &h }]).unwrap();
        assert!(plan_memory(&est, None).is_err());
        let plan = plan_memory(&est, Some(1 << 30)).unwrap();
        assert!(plan.webgpu && plan.wasm_bytes < plan.wasm_budget);
    }
}
