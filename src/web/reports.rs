//! CLIP-IT retrieval in the page: the reports of a corpus most similar to each tile.

use std::collections::HashMap;
use std::rc::Rc;

use burn::tensor::Tensor;
use js_sys::{Function, Uint8Array};
use serde::Serialize;
use wasm_bindgen::prelude::*;

use super::api::{err, image_rows, loaded, text_rows, with_text, JsResult, SCORE_BLOCK};
use super::js::{image_names, images_from_js, js_error, now_ms, to_js, Progress};
use super::state::{CorpusEmbeds, Loaded};
use crate::retrieval::{matrix_from_host, top_k_async, Corpus};

/// One retrieved report.
#[derive(Serialize)]
pub struct Hit {
    /// The report's id in the corpus.
    pub id: String,
    /// The report's text.
    pub text: String,
    /// Cosine similarity.
    pub score: f32,
    /// 1 for the best report.
    pub rank: usize,
}

/// One image's retrieved reports.
#[derive(Serialize)]
pub struct ImageHits {
    /// The image's name.
    pub name: String,
    /// The top-k reports, best first (empty when the image could not be read).
    pub hits: Vec<Hit>,
    /// Why the image could not be read.
    pub error: Option<String>,
}

/// The corpus's text embeddings for the loaded model, from the cache when it holds them.
pub(super) async fn corpus_embeds(
    loaded: &Loaded,
    bytes: &[u8],
    name: &str,
    progress: &Progress,
) -> Result<Rc<CorpusEmbeds>, JsError> {
    let corpus = Corpus::parse(bytes, name).map_err(err)?;
    let key = corpus.hash(&loaded.model.name);
    if let Some(c) = loaded.corpus.borrow().as_ref().filter(|c| c.key == key) {
        return Ok(c.clone());
    }
    let values = text_rows(&loaded, &corpus.texts, "reports", progress).await?;
    let embeds = matrix_from_host(&values, loaded.model.embed_dim, &loaded.device).map_err(err)?;
    let c = Rc::new(CorpusEmbeds { key, corpus: Rc::new(corpus), embeds });
    *loaded.corpus.borrow_mut() = Some(c.clone());
    Ok(c)
}

/// The `k` reports most similar to each readable image row (by cosine), scored on the model's
/// device in blocks: row index → `(report index, cosine)`, best first.
pub(super) async fn top_reports(
    loaded: &Loaded,
    rows: &[Result<Rc<Vec<f32>>, String>],
    reports: &CorpusEmbeds,
    k: usize,
) -> Result<HashMap<usize, Vec<(usize, f32)>>, JsError> {
    let ok: Vec<usize> = (0..rows.len()).filter(|&i| rows[i].is_ok()).collect();
    let mut hits = HashMap::new();
    let dim = loaded.model.embed_dim;
    for block in ok.chunks(SCORE_BLOCK) {
        let values: Vec<f32> = block
            .iter()
            .flat_map(|&i| rows[i].as_ref().expect("ok rows").iter().copied())
            .collect();
        let embeds: Tensor<2> = matrix_from_host(&values, dim, &loaded.device).map_err(err)?;
        let top = top_k_async(embeds, reports.embeds.clone(), k.min(reports.corpus.len()))
            .await
            .map_err(err)?;
        hits.extend(block.iter().copied().zip(top));
    }
    Ok(hits)
}

/// CLIP-IT retrieval: the `k` reports of the corpus (plain text, one report per line, or JSONL
/// `{"id", "text"}`; `corpus_name` names it in errors) most similar to each image by cosine.
/// The corpus's embeddings are kept for the next call with the same corpus and model.
/// Resolves to `{corpus: {name, reports}, images: [{name, hits: [{id, text, score, rank}],
/// error}], elapsed_ms}`.
#[wasm_bindgen]
pub async fn retrieve(
    images: Vec<Uint8Array>,
    names: Option<Vec<String>>,
    corpus: Uint8Array,
    corpus_name: Option<String>,
    k: usize,
    progress: Option<Function>,
) -> JsResult {
    #[derive(Serialize)]
    struct CorpusInfo {
        name: String,
        reports: usize,
    }
    #[derive(Serialize)]
    struct Out {
        corpus: CorpusInfo,
        images: Vec<ImageHits>,
        elapsed_ms: f64,
    }
    let start = now_ms();
    let progress = Progress(progress);
    let loaded = loaded()?;
    with_text(&loaded, "report retrieval")?;
    if k == 0 {
        return Err(js_error("retrieve: k must be at least 1"));
    }
    let corpus_name = corpus_name.unwrap_or_else(|| "reports".into());
    let reports = corpus_embeds(&loaded, &corpus.to_vec(), &corpus_name, &progress).await?;
    let names = image_names(names, images.len())?;
    let rows = image_rows(&loaded, &images_from_js(&images), &names, &progress).await?;
    let mut hits = top_reports(&loaded, &rows, &reports, k).await?;
    let c = &reports.corpus;
    let images = names
        .into_iter()
        .enumerate()
        .map(|(i, name)| match (&rows[i], hits.remove(&i)) {
            (Ok(_), Some(h)) => ImageHits {
                name,
                hits: h
                    .into_iter()
                    .enumerate()
                    .map(|(r, (j, score))| Hit {
                        id: c.ids[j].clone(),
                        text: c.texts[j].clone(),
                        score,
                        rank: r + 1,
                    })
                    .collect(),
                error: None,
            },
            (Err(e), _) => ImageHits { name, hits: vec![], error: Some(e.clone()) },
            (Ok(_), None) => ImageHits { name, hits: vec![], error: Some("not scored".into()) },
        })
        .collect();
    to_js(&Out {
        corpus: CorpusInfo { name: corpus_name, reports: c.len() },
        images,
        elapsed_ms: now_ms() - start,
    })
}
