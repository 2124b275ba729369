//! The safetensors reader on arbitrary bytes: parse the header, then read every tensor it lists
//! as `f32`; the same bytes also go through the text-embedding cache's decoder.
#![no_main]

use std::sync::Arc;

use clipit::retrieval::EmbeddingCache;
use clipit::weights::SafeTensors;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(st) = SafeTensors::from_bytes(Arc::from(data), "fuzz.safetensors") {
        let names: Vec<String> = st.tensors().keys().cloned().collect();
        for name in &names {
            assert!(st.contains(name));
            if let Ok((values, shape)) = st.read_f32(name) {
                let numel: usize = shape.iter().product();
                assert_eq!(values.len(), numel, "tensor {name}: values and shape disagree");
            }
        }
        // A cache saved under the key it carries is a hit; any other key is stale.
        let key = st.metadata().get("clipit.key").cloned().unwrap_or_default();
        let _ = EmbeddingCache::decode(data, &key, "fuzz.safetensors");
    }
    let _ = EmbeddingCache::decode(data, "fuzz-key", "fuzz.safetensors");
});
