//! Model config parsing: the first byte picks a test fixture's checkpoint folder, the rest
//! replaces one of its config files, and the folder is loaded (in memory) as `--model` would.
//!
//! The weights are the fixture's own tiny ones, so a config only gets as far as its dimensions
//! agree with real tensors: every shape is checked against the checkpoint before anything is
//! allocated for it, which is what keeps huge dimensions from building huge models. A folder
//! that loads then runs one blank image and one text through its towers.
#![no_main]

use std::collections::BTreeMap;
use std::sync::Arc;

use clipit::backend::Backend;
use clipit::model::{detect, Model, ModelFiles};
use clipit::preprocess::to_batch_tensor;
use libfuzzer_sys::fuzz_target;

macro_rules! fixture {
    ($dir:literal, $file:literal) => {
        ($file, include_bytes!(concat!("../../tests/fixtures/", $dir, "/", $file)) as &[u8])
    };
}

/// A fixture folder and the file the fuzzer writes.
struct Case {
    fuzzed: &'static str,
    files: &'static [(&'static str, &'static [u8])],
}

const CASES: &[Case] = &[
    Case {
        fuzzed: "config.json",
        files: &[
            fixture!("hf_clip_gelu", "model.safetensors"),
            fixture!("hf_clip_gelu", "preprocessor_config.json"),
        ],
    },
    Case {
        fuzzed: "preprocessor_config.json",
        files: &[
            fixture!("hf_clip_gelu", "config.json"),
            fixture!("hf_clip_gelu", "model.safetensors"),
        ],
    },
    Case {
        fuzzed: "open_clip_config.json",
        files: &[fixture!("open_clip", "open_clip_model.safetensors")],
    },
    Case {
        fuzzed: "conch_config.json",
        files: &[fixture!("conch", "model.safetensors"), fixture!("conch", "tokenizer.json")],
    },
    Case { fuzzed: "config.json", files: &[fixture!("timm_vit_small", "model.safetensors")] },
    Case { fuzzed: "config.json", files: &[fixture!("timm_dinov2_reg4", "model.safetensors")] },
    Case { fuzzed: "config.json", files: &[fixture!("timm_uni", "model.safetensors")] },
];

fuzz_target!(|data: &[u8]| {
    let Some((&sel, config)) = data.split_first() else { return };
    let case = &CASES[usize::from(sel) % CASES.len()];
    let mut files: BTreeMap<String, Arc<[u8]>> =
        case.files.iter().map(|(n, b)| (n.to_string(), Arc::from(*b))).collect();
    files.insert(case.fuzzed.to_string(), Arc::from(config));
    let files = ModelFiles::Memory { name: "fuzz".into(), files };
    if detect(&files).is_err() {
        return;
    }
    let device = Backend::Cpu.device().expect("CPU backend");
    let Ok(model) = Model::load_files(&files, &device) else { return };
    // What loaded must also run: one blank image and one text through the towers.
    let _ = model.preprocess.validate();
    let size = model.vision.geometry.image_size;
    let pixels = to_batch_tensor(&[vec![0.0; 3 * size * size]], size, &device);
    if let Ok(features) = model.encode_images(pixels) {
        assert_eq!(features.dims(), [1, model.embed_dim]);
    }
    if model.has_text() {
        if let Ok(features) = model.encode_texts(&["Colon, resection: adenocarcinoma."]) {
            assert_eq!(features.dims(), [1, model.embed_dim]);
        }
    }
});
