//! Classifies images with a model folder and a classifier adapter file exported by the page's
//! Train panel, natively on the CPU; prints JSON `{classes, images: [{name, probs}]}`. The
//! end-to-end test compares the page's predictions with these.
//!
//! ```sh
//! cargo run --features wgpu --example adapter_predict -- MODEL_DIR ADAPTER.safetensors IMAGES_DIR
//! ```

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

use clipit::backend::Backend;
use clipit::model::Model;
use clipit::preprocess::{load_rgb, preprocess, DEFAULT_MAX_PIXELS};
use clipit::train::classifier::Classifier;

fn images_under(dir: &Path, out: &mut Vec<PathBuf>) -> std::io::Result<()> {
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        if path.is_dir() {
            images_under(&path, out)?;
        } else if path.extension().and_then(|e| e.to_str()).is_some_and(|e| {
            ["png", "jpg", "jpeg", "tif", "tiff"].contains(&e.to_ascii_lowercase().as_str())
        }) {
            out.push(path);
        }
    }
    Ok(())
}

fn run(args: &[String]) -> clipit::Result<serde_json::Value> {
    let [model, adapter, images] = args else {
        return Err(clipit::Error::msg(
            "usage: adapter_predict MODEL_DIR ADAPTER.safetensors IMAGES_DIR",
        ));
    };
    let device = Backend::Cpu.device()?;
    let clip = Model::load(Path::new(model), &device)?;
    let bytes = std::fs::read(adapter).map_err(|e| clipit::Error::io(adapter, e))?;
    let classifier = Classifier::from_bytes(&clip, Arc::from(bytes), adapter)?;
    let mut files = Vec::new();
    images_under(Path::new(images), &mut files).map_err(|e| clipit::Error::io(images, e))?;
    files.sort();
    let mut out = Vec::new();
    for f in &files {
        let pixels = preprocess(&load_rgb(f, DEFAULT_MAX_PIXELS)?, &clip.preprocess);
        let probs = classifier.predict(pixels, 1, clip.preprocess.crop)?;
        let name = f.file_name().map(|n| n.to_string_lossy().to_string()).unwrap_or_default();
        out.push(serde_json::json!({ "name": name, "probs": probs[0] }));
    }
    Ok(serde_json::json!({ "classes": classifier.info.classes, "images": out }))
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match run(&args) {
        Ok(v) => {
            println!("{v}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}
