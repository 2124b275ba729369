//! Regressions from the cargo-fuzz targets (`fuzz/`, issue 6): inputs that once panicked and must
//! now give a clear error naming the file and what is wrong.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

use clipit::backend::Backend;
use clipit::model::{Model, ModelFiles};
use serde_json::Value;

/// A fixture checkpoint folder in memory, with `file`'s JSON changed by `edit`.
fn folder(dir: &str, file: &str, edit: impl FnOnce(&mut Value)) -> ModelFiles {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures").join(dir);
    let mut files = BTreeMap::new();
    for entry in std::fs::read_dir(&root).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        if !name.starts_with("expected") {
            files.insert(name, Arc::<[u8]>::from(std::fs::read(&path).unwrap()));
        }
    }
    let mut json: Value = serde_json::from_slice(&files[file]).unwrap();
    edit(&mut json);
    files.insert(file.to_string(), Arc::from(serde_json::to_vec(&json).unwrap()));
    ModelFiles::Memory { name: dir.to_string(), files }
}

/// Loads `files` (and, if it loads, runs one image and one text) and returns the error.
fn error_of(files: &ModelFiles) -> String {
    let device = Backend::Cpu.device().unwrap();
    let err = match Model::load_files(files, &device) {
        Ok(model) => {
            let size = model.vision.geometry.image_size;
            let pixels =
                clipit::preprocess::to_batch_tensor(&[vec![0.0; 3 * size * size]], size, &device);
            model.encode_images(pixels).expect("a model that loads must run");
            panic!("{}: loaded, expected an error", files.name());
        }
        Err(e) => e.to_string(),
    };
    eprintln!("{err}");
    err
}

fn assert_error(files: &ModelFiles, needles: &[&str]) {
    let err = error_of(files);
    for n in needles {
        assert!(err.contains(n), "error lacks '{n}': {err}");
    }
}

/// A config's `text_config` or `vision_config` entry.
fn set(json: &mut Value, tower: &str, key: &str, v: Value) {
    json[tower][key] = v;
}

#[test]
fn heads_that_do_not_divide_the_width_are_refused() {
    // fuzz: config, HF CLIP with 8 text heads over a width of 12 panicked in a reshape at the
    // first text; now refused at load.
    let files = folder("hf_clip_gelu", "config.json", |j| {
        set(j, "text_config", "num_attention_heads", 8.into())
    });
    assert_error(&files, &["config.json", "text tower: width 12 cannot be split into 8"]);
    let files = folder("hf_clip_gelu", "config.json", |j| {
        set(j, "vision_config", "num_attention_heads", 0.into())
    });
    assert_error(&files, &["config.json", "vision tower: width 24 cannot be split into 0"]);
}

#[test]
fn zero_head_width_is_refused() {
    // open_clip derives heads as width / head_width: a zero divisor panicked.
    let files = folder("open_clip", "open_clip_config.json", |j| {
        j["model_cfg"]["vision_cfg"]["head_width"] = 0.into()
    });
    assert_error(&files, &["open_clip_config.json", "vision tower: width 32 cannot be split"]);
}

#[test]
fn bad_patch_or_image_sizes_are_refused() {
    // A zero patch divided by zero; a huge image size overflowed the patch count.
    let files =
        folder("hf_clip_gelu", "config.json", |j| set(j, "vision_config", "patch_size", 0.into()));
    assert_error(&files, &["config.json", "image size 48 with patch size 0"]);
    let files = folder("hf_clip_gelu", "config.json", |j| {
        set(j, "vision_config", "image_size", u64::MAX.into())
    });
    assert_error(&files, &["config.json", "is not a valid ViT geometry"]);
    let files = folder("timm_vit_small", "config.json", |j| {
        j["model_args"]["img_size"] = (1u64 << 40).into()
    });
    assert_error(&files, &["config.json", "is not a valid ViT geometry"]);
    // The prefix-token count (class token + registers) overflowed.
    let files = folder("timm_dinov2_reg4", "config.json", |j| {
        j["model_args"]["reg_tokens"] = u64::MAX.into()
    });
    assert_error(&files, &["config.json", "reg_tokens 18446744073709551615 is above"]);
}

#[test]
fn untouched_fixtures_still_load() {
    let device = Backend::Cpu.device().unwrap();
    for (dir, file) in [
        ("hf_clip_gelu", "config.json"),
        ("open_clip", "open_clip_config.json"),
        ("conch", "conch_config.json"),
        ("timm_dinov2_reg4", "config.json"),
    ] {
        let files = folder(dir, file, |_| {});
        Model::load_files(&files, &device).unwrap_or_else(|e| panic!("{dir}: {e}"));
    }
}

#[test]
fn pickle_reader_takes_bytes() {
    // The fuzz target reads `.bin` checkpoints from memory; the path reader is a thin wrapper.
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/pickle/tiny.bin");
    let bytes = std::fs::read(&path).unwrap();
    let from_path = clipit::convert::read_pickle_state_dict(&path).unwrap();
    let from_bytes =
        clipit::convert::read_pickle_state_dict_from_bytes(&bytes, "tiny.bin").unwrap();
    assert_eq!(from_path, from_bytes);
    let err = clipit::convert::read_pickle_state_dict_from_bytes(&bytes[..100], "cut.bin")
        .unwrap_err()
        .to_string();
    assert!(err.starts_with("cut.bin: "), "{err}");
}

#[test]
fn image_size_the_patch_does_not_divide_leaves_the_remainder_unused() {
    // fuzz: config, a timm UNI config with img_size 33 and patch 16 panicked in the patch reshape
    // at the first image. Like PyTorch's strided patch convolution, the pixels past the last whole
    // patch are now unused: the 33-pixel model on an image equals the 32-pixel one on its crop.
    let device = Backend::Cpu.device().unwrap();
    let load = |size: u64| {
        let files =
            folder("timm_uni", "config.json", |j| j["model_args"]["img_size"] = size.into());
        Model::load_files(&files, &device).unwrap_or_else(|e| panic!("img_size {size}: {e}"))
    };
    let (big, small) = (load(33), load(32));
    let image: Vec<f32> =
        (0..3 * 33 * 33).map(|i| ((i * 7919) % 101) as f32 / 50.0 - 1.0).collect();
    let crop: Vec<f32> =
        (0..3 * 32 * 32).map(|i| image[(i / 1024) * 1089 + (i / 32 % 32) * 33 + i % 32]).collect();
    let encode = |model: &Model, pixels: Vec<f32>, size: usize| -> Vec<f32> {
        let batch = clipit::preprocess::to_batch_tensor(&[pixels], size, &device);
        model.encode_images(batch).unwrap().into_data().try_to_vec::<f32>().unwrap()
    };
    let (a, b) = (encode(&big, image, 33), encode(&small, crop, 32));
    assert_eq!(a.len(), b.len());
    let diff = a.iter().zip(&b).map(|(x, y)| (x - y).abs()).fold(0.0f32, f32::max);
    assert!(diff < 1e-5, "33-pixel input differs from its 32-pixel crop by {diff}");
}

/// A `tokenizer.json` cut short or with a decoder tokenizers does not know made tokenizers panic
/// (the tokenizer fuzz target); now a clear error naming the file.
#[test]
fn broken_tokenizer_json_is_refused() {
    use clipit::tokenizer::TextTokenizer;
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/conch/tokenizer.json");
    let bytes = std::fs::read(&path).unwrap();
    let load = |b: &[u8]| {
        TextTokenizer::from_json(
            b,
            "x/tokenizer.json",
            ["<start_of_text>", "<end_of_text>"],
            None,
            77,
        )
        .map(|_| ())
        .map_err(|e| e.to_string())
    };
    assert_eq!(load(&bytes), Ok(()), "the fixture itself loads");
    let cut = load(&bytes[..bytes.len() / 2]).unwrap_err();
    assert!(cut.contains("x/tokenizer.json") && cut.contains("not valid JSON"), "{cut}");
    for decoder in [
        serde_json::json!(5),
        serde_json::json!({"type": "Nope"}),
        serde_json::json!({"add_prefix_space": true}),
    ] {
        let mut json: Value = serde_json::from_slice(&bytes).unwrap();
        json["decoder"] = decoder.clone();
        let err = load(&serde_json::to_vec(&json).unwrap()).unwrap_err();
        assert!(err.contains("x/tokenizer.json") && err.contains("decoder"), "{decoder}: {err}");
    }
}
