//! The CLI commands. Logs and progress go to stderr; results go to stdout or files.

use std::path::{Path, PathBuf};
use std::time::Instant;

use clipit::data::{list_images, ImageFolder};
use clipit::embed::{embed_image_files, embed_texts, ImageEmbeddings};
use clipit::metrics::{argmax_rows, ConfusionMatrix, Report};
use clipit::model::Model;
use clipit::retrieval::{
    cache_path, matrix_from_host, pseudo_pairs, top_k, write_pairs_jsonl, Corpus, EmbeddingCache,
};
use clipit::zeroshot::{
    class_embeddings, default_templates, prompts, read_templates, zero_shot_probs,
};
use clipit::{fsutil, retrieval, Error, Result};
use indicatif::{ProgressBar, ProgressStyle};

use super::ModelArgs;

/// A progress bar on stderr (hidden when stderr is not a terminal).
pub(super) fn progress(len: usize, what: &str) -> ProgressBar {
    let bar = ProgressBar::new(len as u64);
    bar.set_style(
        ProgressStyle::with_template("{msg:>12} [{bar:30}] {pos}/{len} ({eta})")
            .expect("static template")
            .progress_chars("=> "),
    );
    bar.set_message(what.to_string());
    bar
}

fn load(args: &ModelArgs) -> Result<Model> {
    let device = args.backend.device()?;
    let start = Instant::now();
    let model = Model::load(&args.model, &device)?;
    eprintln!(
        "loaded {} ({}, {:.1} M parameters) on {} in {:.2} s",
        model.name,
        model.architecture,
        model.num_params() as f64 / 1e6,
        args.backend,
        start.elapsed().as_secs_f64()
    );
    Ok(model)
}

fn embed_folder(model: &Model, paths: &[PathBuf], batch: usize) -> Result<ImageEmbeddings> {
    let bar = progress(paths.len(), "images");
    let out = embed_image_files(model, paths, batch, true, |n| bar.set_position(n as u64))?;
    bar.finish_and_clear();
    if !out.skipped.is_empty() {
        eprintln!("skipped {} unreadable image(s):", out.skipped.len());
        for (path, why) in &out.skipped {
            eprintln!("  {}: {why}", path.display());
        }
    }
    if out.paths.is_empty() {
        return Err(Error::msg("no image could be read"));
    }
    Ok(out)
}

/// `clipit embed`: one JSON object with the projected features in argument order.
pub fn embed(args: &ModelArgs, images: &[PathBuf], texts: &[String]) -> Result<()> {
    if images.is_empty() && texts.is_empty() {
        return Err(Error::msg("nothing to embed: give --image FILE and/or --text STR"));
    }
    let model = load(args)?;
    let image_rows = if images.is_empty() {
        Vec::new()
    } else {
        let out = embed_image_files(&model, images, args.batch, false, |_| {})?;
        out.rows().map(<[f32]>::to_vec).collect()
    };
    let text_rows: Vec<Vec<f32>> = if texts.is_empty() {
        Vec::new()
    } else {
        let values = embed_texts(&model, texts, args.batch, |_| {})?;
        values.chunks(model.embed_dim).map(<[f32]>::to_vec).collect()
    };
    let json = serde_json::json!({ "image_embeds": image_rows, "text_embeds": text_rows });
    println!("{json}");
    Ok(())
}

/// Corpus embeddings, from the cache when it holds this corpus for this model.
pub(super) fn corpus_embeddings(
    model: &Model,
    corpus: &Corpus,
    batch: usize,
    cache_dir: Option<&Path>,
) -> Result<Vec<f32>> {
    let key = corpus.hash(&model_identity(model)?);
    let path = cache_dir.map(|d| cache_path(d, &key));
    if let Some(path) = &path {
        let lookup = EmbeddingCache::load(path, &key);
        if let Some(w) = lookup.warning() {
            eprintln!("warning: {w}; recomputing");
        }
        if let Some(hit) = lookup.hit() {
            eprintln!("using cached report embeddings {}", path.display());
            return Ok(hit.embeds);
        }
    }
    let bar = progress(corpus.len(), "reports");
    let values = embed_texts(model, &corpus.texts, batch, |n| bar.set_position(n as u64))?;
    bar.finish_and_clear();
    if let Some(path) = &path {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
        }
        EmbeddingCache::save(path, &key, &corpus.ids, &values, model.embed_dim)?;
    }
    Ok(values)
}

/// Identifies a model for the cache key: its folder's canonical path plus the weights' size
/// and modification time, so that replacing the weights invalidates the cache.
fn model_identity(model: &Model) -> Result<String> {
    let dir = Path::new(&model.name);
    let canon = dir.canonicalize().map_err(|e| Error::io(dir, e))?;
    let mut id = canon.display().to_string();
    for entry in std::fs::read_dir(&canon).map_err(|e| Error::io(&canon, e))?.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if name.ends_with(".safetensors") {
            if let Ok(meta) = entry.metadata() {
                let modified =
                    meta.modified().ok().and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok());
                id.push_str(&format!("|{name}:{}:{:?}", meta.len(), modified));
            }
        }
    }
    Ok(id)
}

/// `clipit retrieve`: top-k reports per image, written as JSONL pseudo-pairs.
pub fn retrieve(
    args: &ModelArgs,
    images: &Path,
    reports: &Path,
    k: usize,
    out: &Path,
    cache_dir: Option<&Path>,
) -> Result<()> {
    if k == 0 {
        return Err(Error::msg("--top-k must be at least 1"));
    }
    let corpus = Corpus::read(reports)?;
    let paths = list_images(images)?;
    let model = load(args)?;
    let text_values = corpus_embeddings(&model, &corpus, args.batch, cache_dir)?;
    let embedded = embed_folder(&model, &paths, args.batch)?;
    let device = model.vision.pos_embed.val().device();
    let reports = matrix_from_host(&text_values, model.embed_dim, &device)?;
    // Score images in blocks so the image-by-report matrix stays small whatever the dataset size.
    let mut hits = Vec::with_capacity(embedded.paths.len());
    for block in embedded.values.chunks(embedded.dim * 4096) {
        let images = matrix_from_host(block, embedded.dim, &device)?;
        hits.extend(top_k(images, reports.clone(), k.min(corpus.len()))?);
    }
    let names: Vec<String> = embedded.paths.iter().map(|p| p.display().to_string()).collect();
    let pairs = pseudo_pairs(&names, &corpus.ids, &hits)?;
    write_pairs_jsonl(out, &pairs)?;
    eprintln!("wrote {} pseudo-pairs for {} images to {}", pairs.len(), names.len(), out.display());
    Ok(())
}

/// Labels for a zero-shot run: the sub-folder of each image, when every sub-folder names a class.
fn labelled_images(
    images: &Path,
    classes: &[String],
) -> Result<(Vec<PathBuf>, Option<Vec<usize>>)> {
    if let Ok(folder) = ImageFolder::scan(images) {
        folder.notes.iter().for_each(|n| eprintln!("note: {n}"));
        let index: Option<Vec<usize>> = folder
            .classes
            .iter()
            .map(|c| classes.iter().position(|k| k.eq_ignore_ascii_case(c)))
            .collect();
        if let Some(index) = index {
            let (paths, labels) = folder.items.into_iter().map(|(p, c)| (p, index[c])).unzip();
            return Ok((paths, Some(labels)));
        }
        eprintln!(
            "sub-folders {:?} do not all match --classes: no labels, predictions only",
            folder.classes
        );
    }
    Ok((list_images(images)?, None))
}

/// `clipit zero-shot`: class probabilities per image, and metrics when labels are known.
pub fn zero_shot(
    args: &ModelArgs,
    images: &Path,
    classes: &[String],
    templates: Option<&Path>,
    out: Option<&Path>,
) -> Result<()> {
    let classes: Vec<String> =
        classes.iter().map(|c| c.trim().to_string()).filter(|c| !c.is_empty()).collect();
    if classes.len() < 2 {
        return Err(Error::msg("--classes needs at least two class names"));
    }
    let templates = match templates {
        Some(path) => read_templates(path)?,
        None => default_templates(),
    };
    let (paths, labels) = labelled_images(images, &classes)?;
    let model = load(args)?;
    if !model.has_text() {
        return Err(Error::msg(format!(
            "{}: zero-shot needs a model with a text encoder",
            model.name
        )));
    }
    let device = model.vision.pos_embed.val().device();
    let per_class = prompts(&classes, &templates)
        .iter()
        .map(|p| model.encode_texts(p))
        .collect::<Result<Vec<_>>>()?;
    let class_embeds = class_embeddings(per_class)?;
    let embedded = embed_folder(&model, &paths, args.batch)?;
    let probs = zero_shot_probs(
        matrix_from_host(&embedded.values, embedded.dim, &device)?,
        class_embeds,
        model.logit_scale,
    )?;
    let (values, [n, c]) = retrieval::matrix_to_host(probs)?;
    let probs: Vec<Vec<f32>> = values.chunks(c).map(<[f32]>::to_vec).collect();
    let preds = argmax_rows(&probs);

    if let Some(out) = out {
        let mut csv = format!(
            "image,prediction,{}\n",
            classes.iter().map(|c| csv_field(c)).collect::<Vec<_>>().join(",")
        );
        for ((path, pred), row) in embedded.paths.iter().zip(&preds).zip(&probs) {
            let cells: Vec<String> = row.iter().map(|p| format!("{p:.6}")).collect();
            csv.push_str(&format!(
                "{},{},{}\n",
                csv_field(&path.display().to_string()),
                csv_field(&classes[*pred]),
                cells.join(",")
            ));
        }
        fsutil::write_atomic(out, csv.as_bytes())?;
        eprintln!("wrote predictions for {n} images to {}", out.display());
    }
    let mut counts = vec![0usize; classes.len()];
    preds.iter().for_each(|&p| counts[p] += 1);
    let summary: serde_json::Map<String, serde_json::Value> =
        classes.iter().zip(&counts).map(|(c, n)| (c.clone(), (*n).into())).collect();
    let mut result = serde_json::json!({ "images": n, "predicted_counts": summary });
    if let Some(labels) = labels {
        // Keep the labels of the images that were read.
        let by_path: std::collections::HashMap<&PathBuf, usize> =
            paths.iter().zip(labels.iter().copied()).collect();
        let labels: Vec<usize> = embedded.paths.iter().map(|p| by_path[p]).collect();
        let report = Report::from_probs(&probs, &labels, &classes)?;
        eprintln!(
            "{}",
            ConfusionMatrix::from_predictions(&labels, &preds, classes.len())?.to_text(&classes)
        );
        result["report"] = serde_json::to_value(&report).map_err(|e| Error::msg(e.to_string()))?;
    }
    println!("{}", serde_json::to_string_pretty(&result).map_err(|e| Error::msg(e.to_string()))?);
    Ok(())
}

pub(super) use clipit::slide::export::csv_field;

/// `clipit convert`: PyTorch pickle to safetensors.
pub fn convert(input: &Path, output: &Path) -> Result<()> {
    let report = clipit::convert::convert_pickle_to_safetensors(input, output)?;
    eprintln!("wrote {} tensors ({} bytes) to {}", report.tensors, report.bytes, output.display());
    for s in &report.skipped {
        eprintln!("  skipped {s}");
    }
    Ok(())
}

/// `clipit info`: what the folder holds.
pub fn info(dir: &Path) -> Result<()> {
    let device = clipit::backend::Backend::Cpu.device()?;
    let model = Model::load(dir, &device)?;
    let g = model.vision.geometry;
    let mut info = serde_json::json!({
        "architecture": model.architecture.to_string(),
        "parameters": model.num_params(),
        "embed_dim": model.embed_dim,
        "vision": {
            "width": model.vision.width(),
            "depth": model.vision.blocks.len(),
            "patch_size": g.patch,
            "image_size": g.image_size,
            "register_tokens": model.vision.reg_tokens.as_ref().map_or(0, |r| r.val().dims()[0]),
        },
        "preprocess": {
            "resize": model.preprocess.resize,
            "crop": model.preprocess.crop,
            "mean": model.preprocess.mean,
            "std": model.preprocess.std,
        },
        "logit_scale": model.logit_scale.exp(),
        "ignored_tensors": model.ignored_tensors.len(),
    });
    if let (Some(text), Some(tok)) = (&model.text, &model.tokenizer) {
        info["text"] = serde_json::json!({
            "depth": text.blocks.len(),
            "context_length": tok.context_length,
            "vocab_size": text.vocab_size(),
        });
    }
    println!("{}", serde_json::to_string_pretty(&info).map_err(|e| Error::msg(e.to_string()))?);
    Ok(())
}
