//! `clipit pretrain`: a whole tiny CLIP trains contrastively from scratch on real CC BY tiles
//! (the demo bundle's) and class-tagged reports, the loss falls, and the written folder loads
//! back as an open_clip checkpoint that the other commands use. Bad corpora are clear errors.

use std::path::Path;

mod common;
use common::{clipit, root};

/// `per_class` demo tiles of three classes, copied into `dir`.
fn tiles(dir: &Path, per_class: usize) -> String {
    let data = dir.join("tiles");
    for class in ["adipose", "lymphocytes", "tumor"] {
        let src = root().join("data/crc_demo/tiles").join(class);
        std::fs::create_dir_all(data.join(class)).unwrap();
        let mut files: Vec<_> =
            std::fs::read_dir(&src).unwrap().map(|e| e.unwrap().path()).collect();
        files.sort();
        for f in files.iter().take(per_class) {
            std::fs::copy(f, data.join(class).join(f.file_name().unwrap())).unwrap();
        }
    }
    data.to_str().unwrap().to_string()
}

fn pretrain(data: &str, reports: &str, out: &Path) -> std::process::Output {
    clipit(&[
        "pretrain",
        "--model",
        "tests/fixtures/open_clip",
        "--from-scratch",
        "--data",
        data,
        "--reports",
        reports,
        "--out",
        out.to_str().unwrap(),
        "--epochs",
        "30",
        "--batch-size",
        "8",
        "--lr",
        "3e-3",
        "--no-augment",
        "--seed",
        "2",
    ])
}

#[test]
fn pretrain_learns_and_writes_a_loadable_open_clip_folder() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tiles(tmp.path(), 8);
    let out = tmp.path().join("model");
    let run = pretrain(&data, "data/crc_demo/reports.jsonl", &out);
    assert!(run.status.success(), "{}", String::from_utf8_lossy(&run.stderr));
    let summary: serde_json::Value = serde_json::from_slice(&run.stdout).unwrap();
    let (first, last) = (
        summary["first_epoch_loss"].as_f64().unwrap(),
        summary["last_epoch_loss"].as_f64().unwrap(),
    );
    assert!(last < first * 0.9, "the contrastive loss did not fall: {first} -> {last}");
    let (before, after) = (
        summary["retrieval_accuracy_before"].as_f64().unwrap(),
        summary["retrieval_accuracy_after"].as_f64().unwrap(),
    );
    assert!(after > before, "retrieval of same-class reports did not improve: {before} -> {after}");
    for f in ["open_clip_config.json", "open_clip_model.safetensors", "pretrain.json"] {
        assert!(out.join(f).is_file(), "{f} missing");
    }
    // The folder is a checkpoint like any other: info and zero-shot read it.
    let info = clipit(&["info", "--model", out.to_str().unwrap()]);
    assert!(info.status.success(), "{}", String::from_utf8_lossy(&info.stderr));
    let csv = tmp.path().join("zs.csv");
    let zs = clipit(&[
        "zero-shot",
        "--model",
        out.to_str().unwrap(),
        "--images",
        &data,
        "--classes",
        "adipose,lymphocytes,tumor",
        "--out",
        csv.to_str().unwrap(),
    ]);
    assert!(zs.status.success(), "{}", String::from_utf8_lossy(&zs.stderr));
    assert_eq!(std::fs::read_to_string(&csv).unwrap().lines().count(), 25);
}

#[test]
fn corpora_without_classes_are_clear_errors() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tiles(tmp.path(), 2);
    let no_class = tmp.path().join("no_class.jsonl");
    std::fs::write(
        &no_class,
        "{\"id\": 1, \"text\": \"fat\", \"class\": \"adipose\"}\n{\"id\": 2, \"text\": \"x\"}\n",
    )
    .unwrap();
    let out = pretrain(&data, no_class.to_str().unwrap(), &tmp.path().join("a"));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success()
            && err.contains("no_class.jsonl: line 2")
            && err.contains("\"class\""),
        "{err}"
    );
    let missing = tmp.path().join("missing.jsonl");
    std::fs::write(&missing, "{\"id\": 1, \"text\": \"fat\", \"class\": \"adipose\"}\n").unwrap();
    let out = pretrain(&data, missing.to_str().unwrap(), &tmp.path().join("b"));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("no report has the class 'lymphocytes'"),
        "{err}"
    );
}
