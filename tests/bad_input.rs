//! The bad-input suite (RELIABILITY.md): each input gets a clear error naming the file and what is
//! wrong (never a panic or a hang), or is handled correctly, and nothing is written on failure.
//! Other suites cover more of the same ground: truncated, zero-byte and garbled checkpoints and
//! images (tests/cli.rs, tests/preprocess.rs), pickles (tests/convert.rs), slides (tests/slide.rs),
//! unwritable run folders and SIGKILL + `--resume` (tests/train.rs, tests/interrupt.rs).

use std::path::Path;
use std::sync::Arc;

use clipit::weights::SafeTensors;
use half::{bf16, f16};

mod common;
use common::{assert_fails, clipit, copy_dir, fixture, root, stderr};

fn tile() -> String {
    let dir = root().join("tests/data/tiles");
    let mut tiles: Vec<_> = std::fs::read_dir(dir).unwrap().map(|e| e.unwrap().path()).collect();
    tiles.sort();
    tiles[0].to_str().unwrap().to_string()
}

/// A safetensors file from a JSON header (written as given) and raw data bytes.
fn safetensors_bytes(header: &str, data: &[u8]) -> Arc<[u8]> {
    let mut v = (header.len() as u64).to_le_bytes().to_vec();
    v.extend_from_slice(header.as_bytes());
    v.extend_from_slice(data);
    v.into()
}

#[test]
fn safetensors_headers_that_lie_are_refused() {
    let data = [0u8; 16];
    let cases = [
        (
            r#"{"w":{"dtype":"F32","shape":[2,2],"data_offsets":[0,32]}}"#,
            "outside the 16 data bytes",
        ),
        (r#"{"w":{"dtype":"F32","shape":[2,2],"data_offsets":[12,4]}}"#, "data offsets [12, 4]"),
        (r#"{"w":{"dtype":"F32","shape":[3,2],"data_offsets":[0,16]}}"#, "different byte count"),
        (
            r#"{"w":{"dtype":"F32","shape":[4294967296,4294967296,16],"data_offsets":[0,16]}}"#,
            "different byte count",
        ),
        (r#"{"w":{"dtype":"F32","shape":[4],"data_offsets":[0]}}"#, "two numbers"),
        (r#"{"w":{"dtype":"F32","data_offsets":[0,16]}}"#, "no shape"),
        (r#"{"w":[1,2,3]}"#, "w"),
        (r#"{"w":{"dtype":"F32","shape":[4],"data_offsets":[0,16]"#, "invalid safetensors header"),
    ];
    for (header, needle) in cases {
        let err = SafeTensors::from_bytes(safetensors_bytes(header, &data), "lies.safetensors")
            .err()
            .unwrap_or_else(|| panic!("accepted {header}"))
            .to_string();
        assert!(err.contains("lies.safetensors") && err.contains(needle), "{header}: {err}");
    }
    // A header length beyond the file, and one of 2^64 - 1.
    for len in [1000u64, u64::MAX] {
        let mut v = len.to_le_bytes().to_vec();
        v.extend_from_slice(b"{}");
        let err = SafeTensors::from_bytes(v.into(), "long.safetensors").err().unwrap().to_string();
        assert!(err.contains("long.safetensors") && err.contains("header"), "{err}");
    }
    // The honest version of the same file reads back.
    let ok =
        safetensors_bytes(r#"{"w":{"dtype":"F32","shape":[2,2],"data_offsets":[0,16]}}"#, &data);
    assert!(SafeTensors::from_bytes(ok, "ok.safetensors").is_ok());
}

/// Rewrites every floating tensor of `src` with `convert` (dtype name, bytes per f32 value).
fn rewrite_weights(src: &Path, dst: &Path, dtype: safetensors::Dtype, convert: fn(f32) -> Vec<u8>) {
    let bytes = std::fs::read(src).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let mut out: Vec<(String, Vec<usize>, Vec<u8>)> = Vec::new();
    for (name, view) in st.tensors() {
        assert_eq!(view.dtype(), safetensors::Dtype::F32, "{name}");
        let data: Vec<u8> = view
            .data()
            .chunks_exact(4)
            .flat_map(|c| convert(f32::from_le_bytes(c.try_into().unwrap())))
            .collect();
        out.push((name, view.shape().to_vec(), data));
    }
    let views: Vec<(String, safetensors::tensor::TensorView)> = out
        .iter()
        .map(|(n, shape, data)| {
            (n.clone(), safetensors::tensor::TensorView::new(dtype, shape.clone(), data).unwrap())
        })
        .collect();
    safetensors::serialize_to_file(views, None, dst).unwrap();
}

fn image_embedding(model: &Path) -> Vec<f64> {
    let out = clipit(&["embed", "--model", model.to_str().unwrap(), "--image", &tile()]);
    assert!(out.status.success(), "{}", stderr(&out));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    v["image_embeds"][0].as_array().unwrap().iter().map(|x| x.as_f64().unwrap()).collect()
}

#[test]
fn half_precision_checkpoints_load_and_int8_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let src = fixture("open_clip");
    let weights = "open_clip_model.safetensors";
    let want = image_embedding(&src);
    let scale = want.iter().fold(0f64, |m, x| m.max(x.abs()));
    for (name, dtype, convert, tol) in [
        (
            "bf16",
            safetensors::Dtype::BF16,
            (|x| bf16::from_f32(x).to_le_bytes().to_vec()) as fn(f32) -> Vec<u8>,
            3e-2,
        ),
        ("f16", safetensors::Dtype::F16, |x| f16::from_f32(x).to_le_bytes().to_vec(), 3e-3),
    ] {
        let dir = tmp.path().join(name);
        copy_dir(&src, &dir);
        rewrite_weights(&src.join(weights), &dir.join(weights), dtype, convert);
        let got = image_embedding(&dir);
        let err = got.iter().zip(&want).fold(0f64, |m, (a, b)| m.max((a - b).abs())) / scale;
        assert!(err < tol, "{name}: embeddings differ from f32 by {err:e} of their scale");
    }
    let dir = tmp.path().join("int8");
    copy_dir(&src, &dir);
    rewrite_weights(&src.join(weights), &dir.join(weights), safetensors::Dtype::I8, |x| {
        vec![(x * 100.0).clamp(-127.0, 127.0) as i8 as u8]
    });
    assert_fails(
        &clipit(&["embed", "--model", dir.to_str().unwrap(), "--image", &tile()]),
        &[weights, "I8"],
    );
}

/// A PNG whose header claims `w` x `h` pixels, with a few bytes of pixel data (what a bomb looks
/// like before it is inflated).
fn png_header_only(w: u32, h: u32) -> Vec<u8> {
    fn crc32(bytes: &[u8]) -> u32 {
        let mut c = 0xffff_ffffu32;
        for &b in bytes {
            c ^= u32::from(b);
            for _ in 0..8 {
                c = if c & 1 == 1 { 0xedb8_8320 ^ (c >> 1) } else { c >> 1 };
            }
        }
        !c
    }
    let mut png = b"\x89PNG\r\n\x1a\n".to_vec();
    let mut chunk = |kind: &[u8], data: &[u8]| {
        let body = [kind, data].concat();
        png.extend_from_slice(&(data.len() as u32).to_be_bytes());
        png.extend_from_slice(&body);
        png.extend_from_slice(&crc32(&body).to_be_bytes());
    };
    chunk(b"IHDR", &[&w.to_be_bytes()[..], &h.to_be_bytes(), &[8, 2, 0, 0, 0]].concat());
    chunk(b"IDAT", &[0; 16]);
    chunk(b"IEND", &[]);
    png
}

#[test]
fn decompression_bombs_are_refused_at_a_configurable_limit() {
    let tmp = tempfile::tempdir().unwrap();
    let bomb = tmp.path().join("bomb.png");
    std::fs::write(&bomb, png_header_only(100_000, 100_000)).unwrap();
    let model = fixture("open_clip");
    let embed = |image: &str, extra: &[&str]| {
        let mut args = vec!["embed", "--model", model.to_str().unwrap(), "--image", image];
        args.extend_from_slice(extra);
        clipit(&args)
    };
    assert_fails(&embed(bomb.to_str().unwrap(), &[]), &["bomb.png", "100000x100000", "limit"]);
    // The limit is the user's: a real tile above it is refused too, and passes under the default.
    assert_fails(&embed(&tile(), &["--max-pixels", "100"]), &["limit of 100"]);
    assert!(embed(&tile(), &[]).status.success());
}

#[test]
fn empty_folders_and_folders_without_images_are_clear_errors() {
    let tmp = tempfile::tempdir().unwrap();
    let empty = tmp.path().join("empty");
    std::fs::create_dir(&empty).unwrap();
    let texts = tmp.path().join("texts");
    std::fs::create_dir(&texts).unwrap();
    std::fs::write(texts.join("notes.txt"), "not an image").unwrap();
    let reports = tmp.path().join("reports.txt");
    std::fs::write(&reports, "a report\nanother report\n").unwrap();
    let out = tmp.path().join("pairs.jsonl");
    for dir in [&empty, &texts] {
        let run = clipit(&[
            "retrieve",
            "--model",
            fixture("open_clip").to_str().unwrap(),
            "--images",
            dir.to_str().unwrap(),
            "--reports",
            reports.to_str().unwrap(),
            "--out",
            out.to_str().unwrap(),
            "--no-cache",
        ]);
        assert_fails(&run, &[dir.file_name().unwrap().to_str().unwrap(), "no images"]);
        assert!(!out.exists(), "nothing written on failure");
    }
}

/// Writes a JSONL corpus of `n` reports in many scripts, with one very long line.
fn write_corpus(path: &Path, n: usize) {
    let scripts = [
        "Adenocarcinoma 🔬🧫 with necrosis 💀",
        "腺癌，伴有坏死。胃黏膜活检。",
        "腺癌、壊死を伴う。",
        "سرطان غدي مع نخر",
        "אדנוקרצינומה עם נמק",
        "Аденокарцинома с некрозом",
        "e\u{301}tendu, \u{200f}mixed\u{200e} bidi",
    ];
    let mut text = String::new();
    for i in 0..n {
        let body = if i == 3 {
            "very long ".repeat(20_000)
        } else {
            scripts[i % scripts.len()].to_string()
        };
        text.push_str(&serde_json::json!({"id": format!("r{i}"), "text": body}).to_string());
        text.push('\n');
    }
    std::fs::write(path, text).unwrap();
}

#[test]
fn corpus_of_100k_lines_in_many_scripts_is_retrieved() {
    let tmp = tempfile::tempdir().unwrap();
    let reports = tmp.path().join("reports.jsonl");
    write_corpus(&reports, 100_000);
    let out = tmp.path().join("pairs.jsonl");
    let run = clipit(&[
        "retrieve",
        "--model",
        fixture("open_clip").to_str().unwrap(),
        "--images",
        root().join("tests/data/tiles").to_str().unwrap(),
        "--reports",
        reports.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
        "--batch",
        "256",
        "--no-cache",
    ]);
    assert!(run.status.success(), "{}", stderr(&run));
    let pairs = std::fs::read_to_string(&out).unwrap();
    let n_tiles = std::fs::read_dir(root().join("tests/data/tiles")).unwrap().count();
    assert_eq!(pairs.lines().count(), n_tiles);
    for line in pairs.lines() {
        let v: serde_json::Value = serde_json::from_str(line).unwrap();
        let id = v["report_id"].as_str().unwrap();
        let i: usize = id.strip_prefix('r').unwrap().parse().unwrap();
        assert!(i < 100_000, "{id}");
    }
}

#[test]
fn symlink_loops_in_image_folders_terminate() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("tiles");
    std::fs::create_dir_all(dir.join("sub")).unwrap();
    std::fs::copy(tile(), dir.join("sub/a.png")).unwrap();
    std::os::unix::fs::symlink(&dir, dir.join("sub/loop")).unwrap();
    std::os::unix::fs::symlink(dir.join("missing.png"), dir.join("dangling.png")).unwrap();
    let reports = tmp.path().join("reports.txt");
    std::fs::write(&reports, "a report\n").unwrap();
    let out = tmp.path().join("pairs.jsonl");
    let run = clipit(&[
        "retrieve",
        "--model",
        fixture("open_clip").to_str().unwrap(),
        "--images",
        dir.to_str().unwrap(),
        "--reports",
        reports.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
        "--no-cache",
    ]);
    // The loop is not followed twice and the dangling link is skipped: the one real tile is paired.
    assert!(run.status.success(), "{}", stderr(&run));
    let text = std::fs::read_to_string(&out).unwrap();
    assert_eq!(text.lines().count(), 1, "{text}");
    assert!(text.contains("a.png"), "{text}");
}

#[test]
fn unwritable_outputs_are_clear_errors() {
    let tmp = tempfile::tempdir().unwrap();
    // A path under a regular file cannot be created, even as root.
    let blocker = tmp.path().join("file");
    std::fs::write(&blocker, "x").unwrap();
    let reports = tmp.path().join("reports.txt");
    std::fs::write(&reports, "a report\n").unwrap();
    let out = blocker.join("pairs.jsonl");
    let run = clipit(&[
        "retrieve",
        "--model",
        fixture("open_clip").to_str().unwrap(),
        "--images",
        root().join("tests/data/tiles").to_str().unwrap(),
        "--reports",
        reports.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
        "--no-cache",
    ]);
    assert_fails(&run, &["pairs.jsonl"]);
    let csv = blocker.join("predictions.csv");
    let run = clipit(&[
        "zero-shot",
        "--model",
        fixture("open_clip").to_str().unwrap(),
        "--images",
        root().join("tests/data/tiles").to_str().unwrap(),
        "--classes",
        "tumor,normal",
        "--out",
        csv.to_str().unwrap(),
    ]);
    assert_fails(&run, &["predictions.csv"]);
}
