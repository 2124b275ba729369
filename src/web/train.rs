//! The Train panel's calls: prepare a CLIP-IT session on labelled tiles and a report corpus, run
//! it a few steps at a time, stop it, classify with the trained model, and export or import its
//! adapter file. The logic is the library's [`crate::train::session`] and
//! [`crate::train::classifier`]; this layer converts values and keeps the session between calls.
//!
//! The loaded CLIP plays both parts: its frozen text tower embeds each report once (the
//! distillation targets, cached with the corpus), and its vision tower, with LoRA, is the
//! backbone being trained. Pseudo-pairs come from the same cached image embeddings as retrieval.

use std::rc::Rc;
use std::sync::Arc;

use js_sys::{Function, Uint8Array};
use serde::Serialize;
use wasm_bindgen::prelude::*;

use super::api::{class_text_embeddings, err, image_rows, loaded, with_text, ImageProbs, JsResult};
use super::js::{image_names, images_from_js, js_error, now_ms, to_js, Progress};
use super::reports::corpus_embeds;
use super::state::Loaded;
use crate::metrics::{argmax_rows, Report};
use crate::precision::check_trainable;
use crate::preprocess::{decode_rgb, max_pixels, preprocess};
use crate::retrieval::{matrix_from_host, matrix_to_host_async, top_k_async};
use crate::train::baseline::{baselines, Baselines};
use crate::train::classifier::Classifier;
use crate::train::session::{LabelledImages, ReportTargets, SessionOptions, TrainSession};
use crate::train::trainer::StepLog;
use crate::zeroshot::default_templates;

/// An image left out of training, and why.
#[derive(Serialize)]
struct Skipped {
    name: String,
    error: String,
}

/// Starts a CLIP-IT training session on the loaded model (replacing any earlier one).
///
/// `images` and `names` are the labelled tiles, `labels[i]` indexes `classes`; `corpus` is the
/// report corpus (plain text or JSONL, as [`super::retrieve`]); `options` is a partial
/// [`SessionOptions`] object (missing fields take the paper's defaults, batch 16). Every tile is
/// paired with its most similar report (the pseudo-pairs), the text tower embeds each report
/// once, and a stratified validation split is held out. The two baselines the run is judged
/// against are measured on that split at once ([`crate::train::baseline`]): zero-shot with the
/// default prompts and a linear probe on the training split's frozen embeddings. Resolves to
/// `{classes, train, val, total_steps, steps_per_epoch, options, skipped: [{name, error}], pairs:
/// [{name, report_id, score}], baselines: {zero_shot: {balanced_accuracy, accuracy},
/// linear_probe: {...}}, elapsed_ms}`.
#[allow(clippy::too_many_arguments)]
#[wasm_bindgen]
pub async fn train_prepare(
    images: Vec<Uint8Array>,
    names: Vec<String>,
    labels: Vec<u32>,
    classes: Vec<String>,
    corpus: Uint8Array,
    corpus_name: Option<String>,
    options: JsValue,
    progress: Option<Function>,
) -> JsResult {
    #[derive(Serialize)]
    struct Pair {
        name: String,
        report_id: String,
        score: f32,
    }
    #[derive(Serialize)]
    struct Out {
        classes: Vec<String>,
        train: usize,
        val: usize,
        total_steps: usize,
        steps_per_epoch: usize,
        options: SessionOptions,
        skipped: Vec<Skipped>,
        pairs: Vec<Pair>,
        baselines: Baselines,
        elapsed_ms: f64,
    }
    let start = now_ms();
    let progress = Progress(progress);
    let loaded = loaded()?;
    with_text(&loaded, "CLIP-IT training (its text tower gives the targets)")?;
    check_trainable(loaded.dtype).map_err(js_error)?;
    loaded.training.borrow_mut().take();
    let opts: SessionOptions = if options.is_undefined() || options.is_null() {
        SessionOptions::default()
    } else {
        serde_wasm_bindgen::from_value(options)
            .map_err(|e| js_error(format!("training settings: {e}")))?
    };
    if labels.len() != images.len() {
        return Err(js_error(format!("{} images but {} labels", images.len(), labels.len())));
    }
    let names = image_names(Some(names), images.len())?;
    let bytes = images_from_js(&images);
    let corpus_name = corpus_name.unwrap_or_else(|| "reports".into());
    let reports = corpus_embeds(&loaded, &corpus.to_vec(), &corpus_name, &progress).await?;
    let rows = image_rows(&loaded, &bytes, &names, &progress).await?;

    // Unreadable tiles are left out; the rest are paired with their top-1 report.
    let mut data =
        LabelledImages { classes, names: Vec::new(), bytes: Vec::new(), labels: Vec::new() };
    let (mut skipped, mut embeds) = (Vec::new(), Vec::new());
    for (i, row) in rows.iter().enumerate() {
        match row {
            Ok(r) => {
                embeds.extend_from_slice(r);
                data.names.push(names[i].clone());
                data.bytes.push(Arc::from(bytes[i].as_slice()));
                data.labels.push(labels[i] as usize);
            }
            Err(e) => skipped.push(Skipped { name: names[i].clone(), error: e.clone() }),
        }
    }
    if data.names.is_empty() {
        return Err(js_error("none of the labelled tiles could be read"));
    }
    let dim = loaded.model.embed_dim;
    let x = matrix_from_host(&embeds, dim, &loaded.device).map_err(err)?;
    let hits: Vec<(usize, f32)> = top_k_async(x, reports.embeds.clone(), 1)
        .await
        .map_err(err)?
        .into_iter()
        .map(|h| h[0])
        .collect();
    let (table, _) = matrix_to_host_async(reports.embeds.clone()).await.map_err(err)?;
    let targets = ReportTargets::new(table, dim, &hits).map_err(err)?;
    let labels = data.labels.clone();
    let session = TrainSession::new(&loaded.model, data, targets, opts).map_err(err)?;
    let pairs = session
        .targets()
        .index
        .iter()
        .zip(&session.targets().scores)
        .zip(&names)
        .map(|((&j, &score), name)| Pair {
            name: name.clone(),
            report_id: reports.corpus.ids[j].clone(),
            score,
        })
        .collect();
    let (train, val) = session.split();
    let classes = &session.info().classes;
    let class_embeds = class_text_embeddings(&loaded, classes, &default_templates(), &progress)?;
    let (class_embeds, _) = matrix_to_host_async(class_embeds).await.map_err(err)?;
    let baselines =
        baselines(&embeds, dim, &labels, classes.len(), (train, val), Some(&class_embeds))
            .map_err(err)?;
    let out = Out {
        classes: session.info().classes.clone(),
        train: train.len(),
        val: val.len(),
        total_steps: session.total_steps(),
        steps_per_epoch: session.steps_per_epoch(),
        options: session.options().clone(),
        skipped,
        pairs,
        baselines,
        elapsed_ms: now_ms() - start,
    };
    *loaded.training.borrow_mut() = Some(session);
    to_js(&out)
}

/// A validation, as the page charts it.
#[derive(Serialize)]
struct ValPoint {
    step: usize,
    balanced_accuracy: f64,
    accuracy: f64,
}

/// Runs up to `n` training steps of the session started by [`train_prepare`], validating when
/// due. Resolves to `{steps: [{step, epoch, loss, ce, kd, grad_norm, lr}], validations: [{step,
/// balanced_accuracy, accuracy}], steps_done, total_steps, epoch, done, elapsed_ms}`. Pausing is
/// not calling it; [`train_stop`] ends the session.
#[wasm_bindgen]
pub async fn train_step(n: usize) -> JsResult {
    #[derive(Serialize)]
    struct Out {
        steps: Vec<StepLog>,
        validations: Vec<ValPoint>,
        steps_done: usize,
        total_steps: usize,
        epoch: usize,
        done: bool,
        elapsed_ms: f64,
    }
    let start = now_ms();
    let loaded = loaded()?;
    let mut session = take_session(&loaded)?;
    let result = run_steps(&mut session, n.max(1)).await;
    let out = result.map(|(steps, validations)| Out {
        steps,
        validations,
        steps_done: session.steps_done(),
        total_steps: session.total_steps(),
        epoch: session.epoch(),
        done: session.finished(),
        elapsed_ms: now_ms() - start,
    });
    *loaded.training.borrow_mut() = Some(session);
    to_js(&out.map_err(err)?)
}

fn take_session(loaded: &Loaded) -> Result<TrainSession, JsError> {
    loaded
        .training
        .borrow_mut()
        .take()
        .ok_or_else(|| js_error("no training session: press Start in the Train panel first"))
}

async fn run_steps(
    session: &mut TrainSession,
    n: usize,
) -> crate::Result<(Vec<StepLog>, Vec<ValPoint>)> {
    let (mut steps, mut validations) = (Vec::new(), Vec::new());
    for _ in 0..n {
        let Some(log) = session.step().await? else { break };
        steps.push(log);
        if session.validation_due() {
            let v = session.validate().await?;
            validations.push(ValPoint {
                step: v.step,
                balanced_accuracy: v.report.balanced_accuracy,
                accuracy: v.report.accuracy,
            });
        }
    }
    Ok((steps, validations))
}

/// Ends the training session: validates the model as it is (unless that was just done), makes
/// it the classifier the Tiles panel uses, and resolves to `{classes, steps_done, report}`
/// (`report`: [`Report`], with the validation confusion matrix).
#[wasm_bindgen]
pub async fn train_stop() -> JsResult {
    #[derive(Serialize)]
    struct Out {
        classes: Vec<String>,
        steps_done: usize,
        report: Report,
    }
    let loaded = loaded()?;
    let mut session = take_session(&loaded)?;
    let last = session.validations.last().filter(|v| v.step == session.steps_done()).cloned();
    let report = match last {
        Some(v) => v.report,
        None => session.validate().await.map_err(err)?.report,
    };
    *loaded.classifier.borrow_mut() = Some(Rc::new(session.classifier()));
    to_js(&Out {
        classes: session.info().classes.clone(),
        steps_done: session.steps_done(),
        report,
    })
}

fn classifier(loaded: &Loaded) -> Result<Rc<Classifier>, JsError> {
    loaded
        .classifier
        .borrow()
        .clone()
        .ok_or_else(|| js_error("no trained classifier: train one or import an adapter first"))
}

/// Classifies images with the trained (or imported) classifier, vision only:
/// `fc([h_v(v), fc0(h_d(v))])`. Resolves to the same shape as [`super::zero_shot`]:
/// `{classes, templates: [], images: [{name, probs, prediction, error}], elapsed_ms}`.
#[wasm_bindgen]
pub async fn classify_trained(
    images: Vec<Uint8Array>,
    names: Option<Vec<String>>,
    progress: Option<Function>,
) -> JsResult {
    #[derive(Serialize)]
    struct Out {
        classes: Vec<String>,
        templates: Vec<String>,
        images: Vec<ImageProbs>,
        elapsed_ms: f64,
    }
    let start = now_ms();
    let progress = Progress(progress);
    let loaded = loaded()?;
    let classifier = classifier(&loaded)?;
    let names = image_names(names, images.len())?;
    let bytes = images_from_js(&images);
    let cfg = loaded.model.preprocess;
    let mut out: Vec<ImageProbs> = Vec::with_capacity(names.len());
    let per_pass = loaded.batches.image;
    for (b, chunk) in names.chunks(per_pass).enumerate() {
        let offset = b * per_pass;
        let (mut pixels, mut ok) = (Vec::new(), Vec::new());
        for (k, name) in chunk.iter().enumerate() {
            let error = match decode_rgb(&bytes[offset + k], name, max_pixels()) {
                Ok(img) => {
                    pixels.extend(preprocess(&img, &cfg));
                    ok.push(out.len());
                    None
                }
                Err(e) => Some(e.to_string()),
            };
            out.push(ImageProbs { name: name.clone(), probs: vec![], prediction: None, error });
        }
        if !ok.is_empty() {
            let probs = classifier.predict_async(pixels, ok.len(), cfg.crop).await.map_err(err)?;
            let preds = argmax_rows(&probs);
            for ((&i, p), pred) in ok.iter().zip(probs).zip(preds) {
                out[i].probs = p;
                out[i].prediction = Some(pred);
            }
        }
        progress.report("images", out.len(), names.len());
    }
    to_js(&Out {
        classes: classifier.info.classes.clone(),
        templates: vec![],
        images: out,
        elapsed_ms: now_ms() - start,
    })
}

/// The trained (or imported) classifier's adapter file as bytes: the backbone's LoRA factors in
/// peft's layout plus the heads, one safetensors file (see [`crate::train::classifier`]).
#[wasm_bindgen]
pub async fn export_adapter() -> Result<Uint8Array, JsError> {
    let loaded = loaded()?;
    let classifier = classifier(&loaded)?;
    let bytes = classifier.to_bytes_async(&loaded.model.params).await.map_err(err)?;
    Ok(Uint8Array::from(bytes.as_slice()))
}

/// The running session's adapter as it is now, in the same file as [`export_adapter`] (LoRA in
/// peft's layout plus the heads), without stopping the session: the page keeps it as the
/// training's checkpoint, so that a reload can offer it. Its classes are the session's.
#[wasm_bindgen]
pub async fn train_checkpoint() -> Result<Uint8Array, JsError> {
    let loaded = loaded()?;
    let session = take_session(&loaded)?;
    let classifier = session.classifier();
    // The session goes back before the await: a failed export must not end the training.
    *loaded.training.borrow_mut() = Some(session);
    let bytes = classifier.to_bytes_async(&loaded.model.params).await.map_err(err)?;
    Ok(Uint8Array::from(bytes.as_slice()))
}

/// Reads an adapter file exported by [`export_adapter`] (`name` names it in errors) onto the
/// loaded model and makes it the classifier. Resolves to `{classes, backbone, architecture,
/// lora_r, lora_alpha}`.
#[wasm_bindgen]
pub fn import_adapter(bytes: Uint8Array, name: Option<String>) -> JsResult {
    #[derive(Serialize)]
    struct Out {
        classes: Vec<String>,
        backbone: String,
        architecture: String,
        lora_r: usize,
        lora_alpha: f64,
    }
    let loaded = loaded()?;
    let name = name.unwrap_or_else(|| "adapter.safetensors".into());
    let bytes: Arc<[u8]> = Arc::from(bytes.to_vec());
    let c = Classifier::from_bytes(&loaded.model, bytes, &name).map_err(err)?;
    let out = Out {
        classes: c.info.classes.clone(),
        backbone: c.info.backbone.clone(),
        architecture: c.info.architecture.clone(),
        lora_r: c.lora.r,
        lora_alpha: c.lora.alpha,
    };
    *loaded.classifier.borrow_mut() = Some(Rc::new(c));
    to_js(&out)
}

/// Drops the trained classifier and any session: the Tiles panel goes back to zero-shot.
#[wasm_bindgen]
pub fn forget_classifier() {
    if let Some(l) = super::state::model() {
        l.classifier.borrow_mut().take();
        l.training.borrow_mut().take();
    }
}

/// Parses a labels CSV dropped beside training tiles (`name` names it in errors): a header
/// naming a `file` (or `path`) and a `class` (or `label`) column, then one row per image, as
/// [`crate::train::data::parse_manifest`] reads manifests; errors give the line. Resolves to
/// `{classes, rows: [{file, label}]}` (`file` as written, `label` indexing the sorted classes).
#[wasm_bindgen]
pub fn labels_csv(bytes: Uint8Array, name: String) -> JsResult {
    #[derive(Serialize)]
    struct Row {
        file: String,
        label: usize,
    }
    #[derive(Serialize)]
    struct Out {
        classes: Vec<String>,
        rows: Vec<Row>,
    }
    let bytes = bytes.to_vec();
    let text = std::str::from_utf8(&bytes)
        .map_err(|e| js_error(format!("{name}: not UTF-8 text: {e}")))?;
    let m =
        crate::train::data::parse_manifest(text, &name, std::path::Path::new("")).map_err(err)?;
    let rows = [m.train, m.val, m.test]
        .into_iter()
        .flatten()
        .flat_map(|d| d.samples)
        .map(|s| Row { file: s.path.to_string_lossy().into_owned(), label: s.label })
        .collect();
    to_js(&Out { classes: m.classes, rows })
}
