//! The `clipit` binary end to end: the `embed` JSON contract, retrieve, zero-shot, info,
//! convert, and clear errors (non-zero exit, no panic) on bad input.

use std::path::{Path, PathBuf};

mod common;
use common::{assert_fails, clipit, copy_dir, fixture, root, stderr};

fn tiles() -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(root().join("tests/data/tiles"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    v.sort();
    v
}

#[test]
fn embed_prints_one_json_object_in_argument_order() {
    let model = fixture("open_clip");
    let t = tiles();
    let (a, b) = (t[0].to_str().unwrap(), t[1].to_str().unwrap());
    let run = |first: &str, second: &str| {
        let out = clipit(&[
            "embed",
            "--model",
            model.to_str().unwrap(),
            "--image",
            first,
            "--image",
            second,
            "--text",
            "tumor",
            "--text",
            "normal mucosa",
        ]);
        assert!(out.status.success(), "{}", stderr(&out));
        let json: serde_json::Value =
            serde_json::from_slice(&out.stdout).expect("stdout is one JSON object");
        let rows = |k: &str| -> Vec<Vec<f64>> { serde_json::from_value(json[k].clone()).unwrap() };
        (rows("image_embeds"), rows("text_embeds"))
    };
    let (img, txt) = run(a, b);
    assert_eq!(img.len(), 2);
    assert_eq!(txt.len(), 2);
    assert!(img.iter().chain(&txt).all(|r| r.len() == 16), "embed_dim of the fixture is 16");
    // Not normalised: norms are not all 1.
    assert!(img.iter().any(|r| (r.iter().map(|x| x * x).sum::<f64>().sqrt() - 1.0).abs() > 1e-3));
    let (swapped, _) = run(b, a);
    assert_eq!(swapped[0], img[1]);
    assert_eq!(swapped[1], img[0]);
}

#[test]
fn retrieve_writes_ranked_pseudo_pairs_and_reuses_the_cache() {
    let tmp = tempfile::tempdir().unwrap();
    let reports = tmp.path().join("reports.jsonl");
    std::fs::write(&reports, "{\"id\":\"r1\",\"text\":\"invasive carcinoma\"}\n{\"id\":\"r2\",\"text\":\"benign stroma\"}\n{\"id\":\"r3\",\"text\":\"lymphocytes\"}\n").unwrap();
    let out = tmp.path().join("pairs.jsonl");
    let cache = tmp.path().join("cache");
    let (model, tiles_dir) = (fixture("hf_clip_quickgelu"), root().join("tests/data/tiles"));
    let args = [
        "retrieve",
        "--model",
        model.to_str().unwrap(),
        "--images",
        tiles_dir.to_str().unwrap(),
        "--reports",
        reports.to_str().unwrap(),
        "--top-k",
        "2",
        "--out",
        out.to_str().unwrap(),
        "--cache-dir",
        cache.to_str().unwrap(),
    ];
    let first = clipit(&args);
    assert!(first.status.success(), "{}", stderr(&first));
    let text = std::fs::read_to_string(&out).unwrap();
    let pairs: Vec<serde_json::Value> =
        text.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(pairs.len(), 2 * tiles().len());
    for pair in pairs.chunks(2) {
        assert_eq!(pair[0]["image"], pair[1]["image"]);
        assert_eq!((pair[0]["rank"].as_u64(), pair[1]["rank"].as_u64()), (Some(1), Some(2)));
        assert!(pair[0]["score"].as_f64() >= pair[1]["score"].as_f64());
        assert!(["r1", "r2", "r3"].contains(&pair[0]["report_id"].as_str().unwrap()));
    }
    assert_eq!(std::fs::read_dir(&cache).unwrap().count(), 1, "one cache file");
    let second = clipit(&args);
    assert!(stderr(&second).contains("using cached report embeddings"), "{}", stderr(&second));
    assert_eq!(std::fs::read_to_string(&out).unwrap(), text, "same pairs from the cache");
}

#[test]
fn zero_shot_scores_an_image_folder() {
    let tmp = tempfile::tempdir().unwrap();
    let t = tiles();
    for (i, class) in ["tumor", "stroma"].iter().enumerate() {
        let dir = tmp.path().join(class);
        std::fs::create_dir_all(&dir).unwrap();
        for p in t.iter().skip(i).step_by(2) {
            std::fs::copy(p, dir.join(p.file_name().unwrap())).unwrap();
        }
    }
    std::fs::write(tmp.path().join("stroma/broken.png"), b"not a png").unwrap();
    let csv = tmp.path().join("pred.csv");
    let out = clipit(&[
        "zero-shot",
        "--model",
        fixture("conch").to_str().unwrap(),
        "--images",
        tmp.path().to_str().unwrap(),
        "--classes",
        "tumor,stroma",
        "--out",
        csv.to_str().unwrap(),
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stderr(&out).contains("broken.png"), "the skipped image is listed");
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(json["images"].as_u64(), Some(t.len() as u64));
    let bacc = json["report"]["balanced_accuracy"].as_f64().unwrap();
    assert!((0.0..=1.0).contains(&bacc));
    let lines = std::fs::read_to_string(&csv).unwrap();
    assert_eq!(lines.lines().count(), t.len() + 1);
    assert!(lines.starts_with("image,prediction,tumor,stroma"));
}

#[test]
fn info_describes_each_architecture() {
    for (name, arch) in [
        ("hf_clip_gelu", "Hugging Face CLIPModel"),
        ("timm_dinov2_reg4", "timm ViT"),
        ("conch", "CONCH"),
    ] {
        let out = clipit(&["info", "--model", fixture(name).to_str().unwrap()]);
        assert!(out.status.success(), "{}", stderr(&out));
        let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(json["architecture"], arch);
        assert!(json["parameters"].as_u64().unwrap() > 1000);
    }
}

#[test]
fn bad_safetensors_files_are_named() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("model");
    copy_dir(&fixture("hf_clip_quickgelu"), &dir);
    let weights = dir.join("model.safetensors");
    let bytes = std::fs::read(&weights).unwrap();
    let model = dir.to_str().unwrap();

    std::fs::write(&weights, &bytes[..bytes.len() / 2]).unwrap();
    assert_fails(&clipit(&["info", "--model", model]), &["model.safetensors", "truncated"]);

    std::fs::write(&weights, b"").unwrap();
    assert_fails(
        &clipit(&["info", "--model", model]),
        &["model.safetensors", "not a safetensors file"],
    );

    let mut garbage = bytes.clone();
    garbage[8..40].copy_from_slice(&[b'#'; 32]);
    std::fs::write(&weights, &garbage).unwrap();
    assert_fails(
        &clipit(&["info", "--model", model]),
        &["model.safetensors", "invalid safetensors header"],
    );

    std::fs::remove_file(&weights).unwrap();
    assert_fails(&clipit(&["info", "--model", model]), &["no weights file"]);
}

#[test]
fn shape_mismatch_names_the_tensor_and_both_shapes() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("model");
    copy_dir(&fixture("hf_clip_quickgelu"), &dir);
    let cfg_path = dir.join("config.json");
    let mut cfg: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&cfg_path).unwrap()).unwrap();
    cfg["text_config"]["intermediate_size"] = 24.into();
    std::fs::write(&cfg_path, cfg.to_string()).unwrap();
    let out = clipit(&["info", "--model", dir.to_str().unwrap()]);
    assert_fails(&out, &["text_model.encoder.layers.0.mlp.fc1.weight", "[16, 8]", "[24, 8]"]);
}

#[test]
fn unknown_architecture_lists_the_supported_ones() {
    let tmp = tempfile::tempdir().unwrap();
    std::fs::write(tmp.path().join("config.json"), r#"{"model_type": "bert"}"#).unwrap();
    let out = clipit(&["info", "--model", tmp.path().to_str().unwrap()]);
    assert_fails(&out, &["unknown architecture", "bert", "open_clip", "timm ViT", "CONCH"]);
    std::fs::write(tmp.path().join("config.json"), r#"{"architecture": "resnet50"}"#).unwrap();
    assert_fails(
        &clipit(&["info", "--model", tmp.path().to_str().unwrap()]),
        &["unknown timm architecture 'resnet50'"],
    );
}

#[test]
fn unreadable_image_and_bad_corpus_are_clear_errors() {
    let tmp = tempfile::tempdir().unwrap();
    let model = fixture("open_clip");
    let bad = tmp.path().join("broken.png");
    std::fs::write(&bad, b"\x89PNG\r\n\x1a\n garbage").unwrap();
    let out =
        clipit(&["embed", "--model", model.to_str().unwrap(), "--image", bad.to_str().unwrap()]);
    assert_fails(&out, &["broken.png"]);

    let empty = tmp.path().join("empty.txt");
    std::fs::write(&empty, "\n\n").unwrap();
    let pairs = tmp.path().join("pairs.jsonl");
    let tiles = root().join("tests/data/tiles");
    let retrieve = |reports: &Path| {
        clipit(&[
            "retrieve",
            "--model",
            model.to_str().unwrap(),
            "--images",
            tiles.to_str().unwrap(),
            "--reports",
            reports.to_str().unwrap(),
            "--out",
            pairs.to_str().unwrap(),
            "--no-cache",
        ])
    };
    assert_fails(&retrieve(&empty), &["empty.txt", "empty"]);
    let latin1 = tmp.path().join("latin1.txt");
    std::fs::write(&latin1, b"fine report\ncarcinome \xe9tendu\n").unwrap();
    assert_fails(&retrieve(&latin1), &["latin1.txt", "line 2", "UTF-8"]);
    assert!(!pairs.exists(), "no output written on failure");
}

#[test]
fn convert_then_load_round_trips() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("w.safetensors");
    let run = clipit(&[
        "convert",
        root().join("tests/fixtures/pickle/tiny.bin").to_str().unwrap(),
        out.to_str().unwrap(),
    ]);
    assert!(run.status.success(), "{}", stderr(&run));
    assert!(std::fs::metadata(&out).unwrap().len() > 0);
    let evil = clipit(&[
        "convert",
        root().join("tests/fixtures/pickle/evil.bin").to_str().unwrap(),
        tmp.path().join("e.safetensors").to_str().unwrap(),
    ]);
    assert_fails(&evil, &["evil.bin"]);
    assert!(!tmp.path().join("e.safetensors").exists());
}
