//! The page's step-wise training session (`clipit::train::session`), natively on the CPU: pairing,
//! split, steps, validation, the adapter file (export, import, parity of predictions) and its
//! errors.

mod common;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use clipit::backend::Backend;
use clipit::embed::embed_texts;
use clipit::model::Model;
use clipit::preprocess::{load_rgb, preprocess, DEFAULT_MAX_PIXELS};
use clipit::retrieval::{matrix_from_host, top_k, Corpus};
use clipit::train::classifier::Classifier;
use clipit::train::session::{LabelledImages, ReportTargets, SessionOptions, TrainSession};
use clipit::weights::SafeTensors;

use common::{block_on, root};

fn model(name: &str) -> Model {
    let device = Backend::Cpu.device().unwrap();
    Model::load(&root().join("tests/fixtures").join(name), &device).unwrap()
}

/// The bundled tiles, labelled by their source (three classes of 3 to 4 tiles).
fn tiles() -> LabelledImages {
    let dir = root().join("tests/data/tiles");
    let mut files: Vec<PathBuf> =
        std::fs::read_dir(&dir).unwrap().map(|e| e.unwrap().path()).collect();
    files.sort();
    let classes: Vec<String> = ["crc", "hgsc", "kather"].map(String::from).to_vec();
    let mut data =
        LabelledImages { classes: classes.clone(), names: vec![], bytes: vec![], labels: vec![] };
    for f in files {
        let name = f.file_name().unwrap().to_string_lossy().to_string();
        let label = classes.iter().position(|c| name.starts_with(c.as_str())).unwrap();
        data.bytes.push(Arc::from(std::fs::read(&f).unwrap()));
        data.names.push(name);
        data.labels.push(label);
    }
    data
}

fn pixels_of(clip: &Model, files: &[PathBuf]) -> Vec<f32> {
    files
        .iter()
        .flat_map(|f| preprocess(&load_rgb(f, DEFAULT_MAX_PIXELS).unwrap(), &clip.preprocess))
        .collect()
}

/// Each tile's top-1 report of the demo corpus, with the model's frozen towers.
fn targets(clip: &Model, data: &LabelledImages) -> ReportTargets {
    let corpus = Corpus::read(root().join("data/reports/demo_reports.jsonl")).unwrap();
    let texts = embed_texts(clip, &corpus.texts, 32, |_| {}).unwrap();
    let files: Vec<PathBuf> =
        data.names.iter().map(|n| root().join("tests/data/tiles").join(n)).collect();
    let device = clip.vision.pos_embed.val().device();
    let x = burn::tensor::Tensor::<4>::from_data(
        burn::tensor::TensorData::new(
            pixels_of(clip, &files),
            [files.len(), 3, clip.preprocess.crop, clip.preprocess.crop],
        ),
        &device,
    );
    let images = clip.encode_images(x).unwrap();
    let hits =
        top_k(images, matrix_from_host(&texts, clip.embed_dim, &device).unwrap(), 1).unwrap();
    let hits: Vec<(usize, f32)> = hits.iter().map(|h| h[0]).collect();
    ReportTargets::new(texts, clip.embed_dim, &hits).unwrap()
}

/// Whether two safetensors files hold the same tensors (metadata order may differ).
fn same_tensors(a: &[u8], b: &[u8]) -> bool {
    let (a, b) = (
        SafeTensors::from_bytes(Arc::from(a), "a").unwrap(),
        SafeTensors::from_bytes(Arc::from(b), "b").unwrap(),
    );
    a.metadata() == b.metadata()
        && a.tensors().len() == b.tensors().len()
        && a.tensors().keys().all(|k| a.read_f32(k).unwrap() == b.read_f32(k).unwrap())
}

fn opts() -> SessionOptions {
    SessionOptions { epochs: 6, batch_size: 4, lr: 1e-2, val_every: 4, ..SessionOptions::default() }
}

#[test]
fn session_trains_validates_and_round_trips_its_adapter() {
    let clip = model("open_clip");
    let data = tiles();
    let targets = targets(&clip, &data);
    let mut s = TrainSession::new(&clip, data.clone(), targets, opts()).unwrap();
    let (train, val) = s.split();
    assert_eq!((train.len(), val.len()), (8, 3), "one validation tile per class");
    assert_eq!(s.total_steps(), 12);
    let before = s.classifier();

    let mut validations = 0;
    while let Some(log) = block_on(s.step()).unwrap() {
        assert!(log.loss.is_finite() && log.grad_norm.is_finite(), "{log:?}");
        assert!((log.loss - log.ce - log.kd).abs() < 1e-4, "loss = ce + λ·kd: {log:?}");
        if s.validation_due() {
            let v = block_on(s.validate()).unwrap();
            assert_eq!(v.report.n_samples, 3);
            assert_eq!(v.report.confusion.iter().flatten().sum::<u64>(), 3);
            validations += 1;
        }
    }
    assert!(s.finished() && s.history.len() == 12, "{} steps", s.history.len());
    assert_eq!(validations, 3, "after steps 4, 8 and 12");
    let first: f64 = s.history[..3].iter().map(|l| l.loss).sum();
    let last: f64 = s.history[9..].iter().map(|l| l.loss).sum();
    assert!(last < first, "the training loss falls: {first} -> {last}");

    // Inference with the trained classifier, before and after the adapter's round trip.
    let files: Vec<PathBuf> =
        data.names.iter().map(|n| root().join("tests/data/tiles").join(n)).collect();
    let n = files.len();
    let crop = clip.preprocess.crop;
    let trained = s.classifier();
    let probs = trained.predict(pixels_of(&clip, &files), n, crop).unwrap();
    let untrained = before.predict(pixels_of(&clip, &files), n, crop).unwrap();
    let moved =
        probs.iter().flatten().zip(untrained.iter().flatten()).any(|(a, b)| (a - b).abs() > 1e-4);
    assert!(moved, "training changed the predictions");

    let bytes = block_on(trained.to_bytes_async(s.param_names())).unwrap();
    let sync = trained.to_bytes(s.param_names()).unwrap();
    assert!(same_tensors(&bytes, &sync), "sync and async exports agree");
    let imported = Classifier::from_bytes(&clip, Arc::from(bytes), "adapter.safetensors").unwrap();
    assert_eq!(imported.info, *s.info());
    let again = imported.predict(pixels_of(&clip, &files), n, crop).unwrap();
    let diff = probs
        .iter()
        .flatten()
        .zip(again.iter().flatten())
        .map(|(a, b)| (a - b).abs())
        .fold(0.0f32, f32::max);
    assert!(diff < 1e-5, "imported adapter predicts the same (max |diff| {diff})");
}

#[test]
fn adapter_file_errors_name_the_file_and_the_problem() {
    let clip = model("open_clip");
    let data = tiles();
    let targets = targets(&clip, &data);
    let s = TrainSession::new(&clip, data, targets, opts()).unwrap();
    let bytes = s.classifier().to_bytes(s.param_names()).unwrap();

    let other = model("hf_clip_gelu");
    let err = Classifier::from_bytes(&other, Arc::from(bytes.clone()), "mine.safetensors")
        .unwrap_err()
        .to_string();
    assert!(err.contains("mine.safetensors"), "{err}");

    let plain =
        std::fs::read(root().join("tests/fixtures/open_clip/open_clip_model.safetensors")).unwrap();
    let err = Classifier::from_bytes(&clip, Arc::from(plain), "weights.safetensors")
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("weights.safetensors") && err.contains("not a clipit classifier"),
        "{err}"
    );

    let err =
        Classifier::from_bytes(&clip, Arc::from(&bytes[..bytes.len() / 2]), "cut.safetensors")
            .unwrap_err()
            .to_string();
    assert!(err.contains("cut.safetensors"), "{err}");
}

#[test]
fn session_refuses_bad_inputs() {
    let clip = model("open_clip");
    let data = tiles();
    let targets = targets(&clip, &data);
    let one = LabelledImages {
        classes: vec!["crc".into()],
        labels: vec![0; data.labels.len()],
        ..data.clone()
    };
    let err = TrainSession::new(&clip, one, targets.clone(), opts()).err().unwrap().to_string();
    assert!(err.contains("at least two classes"), "{err}");

    let bad = SessionOptions { batch_size: 0, ..opts() };
    let err =
        TrainSession::new(&clip, data.clone(), targets.clone(), bad).err().unwrap().to_string();
    assert!(err.contains("batch size"), "{err}");

    // An unreadable tile is skipped and reported, and training goes on.
    let mut broken = data.clone();
    broken.bytes[0] = Arc::from(&b"not an image"[..]);
    let mut s = TrainSession::new(&clip, broken, targets, opts()).unwrap();
    while block_on(s.step()).unwrap().is_some() {}
    block_on(s.validate()).unwrap();
    assert!(s.unreadable.contains_key(&0), "{:?}", s.unreadable);
    assert!(!Path::new(&data.names[0]).as_os_str().is_empty());
}
