//! The "How it works" panel: the current tiles and reports in the shared CLIP space, as a 2-D
//! principal component map ([`crate::embed::pca_2d`]), each tile with its top-1 report.

use js_sys::{Function, Uint8Array};
use serde::Serialize;
use wasm_bindgen::prelude::*;

use super::api::{err, image_rows, loaded, with_text, JsResult};
use super::js::{image_names, images_from_js, now_ms, to_js, Progress};
use super::reports::{corpus_embeds, top_reports};
use crate::embed::pca_2d;
use crate::retrieval::matrix_to_host_async;
use crate::slide::export::class_color;

/// A tile on the map.
#[derive(Serialize)]
pub struct MapTile {
    /// The name given for the image (the page passes its tile id).
    pub name: String,
    /// Coordinates on the first two principal components.
    pub x: f32,
    /// See `x`.
    pub y: f32,
    /// Index into `reports` of its most similar report.
    pub report: usize,
    /// That report's cosine similarity.
    pub score: f32,
}

/// A report on the map.
#[derive(Serialize)]
pub struct MapReport {
    /// The report's id in the corpus.
    pub id: String,
    /// Coordinates on the first two principal components.
    pub x: f32,
    /// See `x`.
    pub y: f32,
}

/// What [`how_map`] returns.
#[derive(Serialize)]
pub struct HowMap {
    /// The tiles that could be read, in input order.
    pub tiles: Vec<MapTile>,
    /// Every report of the corpus, in corpus order.
    pub reports: Vec<MapReport>,
    /// Share of the variance on each axis.
    pub explained: [f32; 2],
    /// Mean cosine of each tile with its top-1 report.
    pub mean_top1: f32,
    /// Width of the shared embedding space.
    pub dim: usize,
    /// Images that could not be read.
    pub skipped: usize,
    /// A colour per class (the Slide map's), for `classes` classes.
    pub colors: Vec<[u8; 3]>,
    /// Time spent, in milliseconds.
    pub elapsed_ms: f64,
}

fn normalised(row: &[f32]) -> impl Iterator<Item = f32> + '_ {
    let norm = row.iter().map(|v| v * v).sum::<f32>().sqrt().max(1e-12);
    row.iter().map(move |v| v / norm)
}

/// Maps the images and the corpus's reports into 2-D: every embedding is L2-normalised (CLIP
/// compares them by cosine), tiles and reports are stacked, and both are projected on the
/// stack's first two principal components. Each tile is paired with its most similar report,
/// as CLIP-IT's retrieval step pairs them. Uses the embedding caches, so after classification
/// and retrieval it runs no encoder. `classes` is how many class colours to return. Resolves to
/// a [`HowMap`].
#[wasm_bindgen]
pub async fn how_map(
    images: Vec<Uint8Array>,
    names: Option<Vec<String>>,
    corpus: Uint8Array,
    corpus_name: Option<String>,
    classes: usize,
    progress: Option<Function>,
) -> JsResult {
    let start = now_ms();
    let progress = Progress(progress);
    let loaded = loaded()?;
    with_text(&loaded, "the embedding map")?;
    let corpus_name = corpus_name.unwrap_or_else(|| "reports".into());
    let reports = corpus_embeds(&loaded, &corpus.to_vec(), &corpus_name, &progress).await?;
    let names = image_names(names, images.len())?;
    let rows = image_rows(&loaded, &images_from_js(&images), &names, &progress).await?;
    let top = top_reports(&loaded, &rows, &reports, 1).await?;
    let (report_values, [m, dim]) =
        matrix_to_host_async(reports.embeds.clone()).await.map_err(err)?;

    let mut stacked = Vec::with_capacity((rows.len() + m) * dim);
    let mut kept = Vec::new();
    for (i, row) in rows.iter().enumerate() {
        if let (Ok(row), Some(&(report, score))) = (row, top.get(&i).and_then(|t| t.first())) {
            stacked.extend(normalised(row));
            kept.push((names[i].clone(), report, score));
        }
    }
    report_values.chunks(dim).for_each(|r| stacked.extend(normalised(r)));
    let pca = pca_2d(&stacked, dim, "the tile and report embeddings").map_err(err)?;
    let (tile_xy, report_xy) = pca.coords.split_at(kept.len());
    let mean_top1 = kept.iter().map(|k| k.2).sum::<f32>() / kept.len().max(1) as f32;
    let skipped = rows.len() - kept.len();
    let tiles = kept
        .into_iter()
        .zip(tile_xy)
        .map(|((name, report, score), xy)| MapTile { name, x: xy[0], y: xy[1], report, score })
        .collect();
    let reports = reports
        .corpus
        .ids
        .iter()
        .zip(report_xy)
        .map(|(id, xy)| MapReport { id: id.clone(), x: xy[0], y: xy[1] })
        .collect();
    to_js(&HowMap {
        tiles,
        reports,
        explained: pca.explained,
        mean_top1,
        dim,
        skipped,
        colors: (0..classes).map(class_color).collect(),
        elapsed_ms: now_ms() - start,
    })
}
