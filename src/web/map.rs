//! The Slide map panel's calls: open a slide or a large image, classify its tiles over tissue a
//! few at a time, and export what `clipit map` writes. The logic is the library's
//! [`crate::slide`]; this layer converts values and keeps the open slide between calls.
//!
//! 1. [`map_open`]: the slide's size, pixel size, overview, tissue mask and kept tiles;
//! 2. [`map_start`]: the classes (zero-shot with the page's classes and templates, or the trained
//!    adapter when the page has one);
//! 3. [`map_step`] until it says `finished`: the page stops calling it to cancel;
//! 4. [`map_geojson`], [`map_csv`], [`map_overlay_png`]: the bytes of `tiles.geojson`,
//!    `tiles.csv` and `overlay.png`, as the CLI writes them;
//! 5. [`map_tile_report`], on demand: a tile's most similar report of a corpus, as
//!    `clipit map --reports` finds it.

use std::cell::RefCell;
use std::rc::Rc;

use burn::tensor::Tensor;
use js_sys::{Function, Uint32Array, Uint8Array};
use serde::{Deserialize, Serialize};
use wasm_bindgen::prelude::*;

use super::api::{err, loaded, with_text, JsResult};
use super::js::{js_error, now_ms, to_js, Progress};
use super::reports::corpus_embeds;
use super::state::Loaded;
use crate::retrieval::top_k_async;
use crate::slide::classify::{image_embeddings, AdapterClassifier, ZeroShotClassifier};
use crate::slide::export::{self, class_color, TileRecord};
use crate::slide::{classify_tiles_async, plan, MapOptions, MapPlan, Slide, TileRequest};
use crate::train::classifier::Classifier;
use crate::zeroshot::{default_templates, parse_templates};

/// Tiles per forward pass.
const MAP_BATCH: usize = 16;

/// How the tiles are classified.
enum Labeller {
    /// Zero-shot: the class embeddings `[classes, dim]`, computed once.
    ZeroShot(Tensor<2>),
    /// The trained (or imported) adapter.
    Trained(Rc<Classifier>),
}

/// The open slide and the map so far.
struct MapSession {
    slide: Slide,
    plan: MapPlan,
    /// The model the map is computed with, and how, once [`map_start`] ran.
    run: Option<(Rc<Loaded>, Labeller)>,
    classes: Vec<String>,
    records: Vec<TileRecord>,
}

thread_local! {
    static MAP: RefCell<Option<MapSession>> = const { RefCell::new(None) };
}

/// Takes the session out while a call works on it (nothing is borrowed across an await).
fn take() -> Result<MapSession, JsError> {
    MAP.with(|m| m.borrow_mut().take())
        .ok_or_else(|| js_error("no slide is open: open a slide or a large image first"))
}

fn put(session: MapSession) {
    MAP.with(|m| *m.borrow_mut() = Some(session));
}

/// Tiling settings from the page; missing fields take `clipit map`'s defaults.
#[derive(Deserialize, Default)]
#[serde(default)]
struct OpenOptions {
    tile_size: Option<u32>,
    tile_um: Option<f64>,
    stride: Option<u32>,
    min_tissue: Option<f32>,
    overview_side: Option<u32>,
    mpp: Option<f64>,
}

/// Opens a slide (SVS, pyramidal or flat TIFF) or a large PNG or JPEG from its bytes (`name`
/// names it in errors), finds the tissue and the tiles over it, and keeps it for the next calls
/// (replacing the slide open before). `options` is `{tile_size, tile_um, stride, min_tissue,
/// overview_side, mpp}`, each optional, as `clipit map`'s flags. Resolves to `{name, width,
/// height, mpp, levels, grid: {tile, stride, cols, rows}, tiles, tissue_fraction, overview:
/// {width, height, scale}, rgba, mask, tile_xy, elapsed_ms}`: `rgba` the overview's pixels
/// (`Uint8Array`), `mask` one byte per overview pixel (1 for tissue), `tile_xy` the kept tiles'
/// top-left corners `[x0, y0, x1, y1, ...]` in base-level pixels (`Uint32Array`).
#[wasm_bindgen]
pub fn map_open(bytes: Uint8Array, name: String, options: JsValue) -> JsResult {
    #[derive(Serialize)]
    struct Grid {
        tile: u32,
        stride: u32,
        cols: u32,
        rows: u32,
    }
    #[derive(Serialize)]
    struct Overview {
        width: u32,
        height: u32,
        scale: (f64, f64),
    }
    #[derive(Serialize)]
    struct Out {
        name: String,
        width: u32,
        height: u32,
        mpp: Option<f64>,
        levels: Vec<(u32, u32)>,
        grid: Grid,
        tiles: usize,
        tissue_fraction: f64,
        overview: Overview,
        elapsed_ms: f64,
    }
    let start = now_ms();
    MAP.with(|m| m.borrow_mut().take());
    let o: OpenOptions = if options.is_undefined() || options.is_null() {
        OpenOptions::default()
    } else {
        serde_wasm_bindgen::from_value(options)
            .map_err(|e| js_error(format!("slide map settings: {e}")))?
    };
    if o.mpp.is_some_and(|m| !(m.is_finite() && m > 0.0)) {
        return Err(js_error("the pixel size must be a positive number of µm per pixel"));
    }
    let mut slide = Slide::from_bytes(bytes.to_vec(), &name).map_err(err)?;
    if let Some(mpp) = o.mpp {
        slide.set_mpp(mpp);
    }
    let defaults = MapOptions::default();
    let opts = MapOptions {
        tiles: TileRequest { size_px: o.tile_size, size_um: o.tile_um, stride_px: o.stride },
        min_tissue: o.min_tissue.unwrap_or(defaults.min_tissue),
        overview_side: o.overview_side.unwrap_or(defaults.overview_side),
    };
    let plan = plan(&mut slide, &opts).map_err(err)?;
    let (width, height) = slide.dimensions();
    let ov = &plan.overview.image;
    let rgba: Vec<u8> = ov.pixels().flat_map(|p| [p[0], p[1], p[2], 255]).collect();
    let mask: Vec<u8> = (0..ov.height())
        .flat_map(|y| (0..ov.width()).map(move |x| (x, y)))
        .map(|(x, y)| u8::from(plan.mask.is_tissue(x, y)))
        .collect();
    let tile_xy: Vec<u32> = plan.tiles.iter().flat_map(|t| [t.x, t.y]).collect();
    let out = to_js(&Out {
        name: slide.name().to_string(),
        width,
        height,
        mpp: slide.mpp(),
        levels: slide.level_dimensions(),
        grid: Grid {
            tile: plan.grid.tile,
            stride: plan.grid.stride,
            cols: plan.grid.cols,
            rows: plan.grid.rows,
        },
        tiles: plan.tiles.len(),
        tissue_fraction: plan.mask.tissue_fraction(),
        overview: Overview { width: ov.width(), height: ov.height(), scale: plan.overview.scale },
        elapsed_ms: now_ms() - start,
    })?;
    let set = |key: &str, value: &JsValue| {
        js_sys::Reflect::set(&out, &key.into(), value)
            .map_err(|_| js_error("map_open: cannot build the result"))
    };
    set("rgba", &Uint8Array::from(rgba.as_slice()))?;
    set("mask", &Uint8Array::from(mask.as_slice()))?;
    set("tile_xy", &Uint32Array::from(tile_xy.as_slice()))?;
    put(MapSession { slide, plan, run: None, classes: Vec::new(), records: Vec::new() });
    Ok(out)
}

/// Gets the open slide ready to classify with the loaded model, from its first tile: with the
/// trained (or imported) adapter when there is one, otherwise zero-shot into `classes` with
/// `templates` (none or empty: the built-in ones), as [`super::zero_shot`]. Resolves to
/// `{classes, colors: [[r, g, b]], mode: "zero-shot" | "trained", total}` (the colours of the
/// overlay and the exports).
#[wasm_bindgen]
pub fn map_start(classes: Vec<String>, templates: Option<Vec<String>>) -> JsResult {
    #[derive(Serialize)]
    struct Out {
        classes: Vec<String>,
        colors: Vec<[u8; 3]>,
        mode: &'static str,
        total: usize,
    }
    let mut session = take()?;
    let result = labeller(classes, templates);
    let out = result.map(|(loaded, labeller, classes)| {
        let mode = match labeller {
            Labeller::ZeroShot(_) => "zero-shot",
            Labeller::Trained(_) => "trained",
        };
        session.run = Some((loaded, labeller));
        session.records.clear();
        session.classes = classes.clone();
        Out {
            colors: (0..classes.len()).map(class_color).collect(),
            classes,
            mode,
            total: session.plan.tiles.len(),
        }
    });
    put(session);
    to_js(&out?)
}

fn labeller(
    classes: Vec<String>,
    templates: Option<Vec<String>>,
) -> Result<(Rc<Loaded>, Labeller, Vec<String>), JsError> {
    let loaded = loaded()?;
    let trained = loaded.classifier.borrow().clone();
    if let Some(c) = trained {
        let classes = c.info.classes.clone();
        return Ok((loaded, Labeller::Trained(c), classes));
    }
    with_text(&loaded, "zero-shot classification")?;
    let classes: Vec<String> =
        classes.iter().map(|c| c.trim().to_string()).filter(|c| !c.is_empty()).collect();
    let templates = match templates.filter(|t| t.iter().any(|s| !s.trim().is_empty())) {
        Some(t) => parse_templates(&t.join("\n"), "templates").map_err(err)?,
        None => default_templates(),
    };
    let embeds =
        ZeroShotClassifier::new(&loaded.model, &classes, &templates).map_err(err)?.class_embeds();
    Ok((loaded, Labeller::ZeroShot(embeds), classes))
}

/// Classifies the next `n` tiles of the open slide (in batches of 16, calling
/// `progress("tiles", done, total)` after each). The page calls it until `finished`, and
/// cancels by not calling it again. Resolves to `{records: [{x, y, w, h, class, probs}], done,
/// total, finished, elapsed_ms}` with this call's tiles.
#[wasm_bindgen]
pub async fn map_step(n: usize, progress: Option<Function>) -> JsResult {
    #[derive(Serialize)]
    struct Rec {
        x: u32,
        y: u32,
        w: u32,
        h: u32,
        class: usize,
        probs: Vec<f32>,
    }
    #[derive(Serialize)]
    struct Out {
        records: Vec<Rec>,
        done: usize,
        total: usize,
        finished: bool,
        elapsed_ms: f64,
    }
    let start = now_ms();
    let progress = Progress(progress);
    let mut session = take()?;
    let result = step(&mut session, n.max(1), &progress).await;
    let out = result.map(|new| Out {
        records: new
            .into_iter()
            .map(|r| Rec {
                x: r.tile.x,
                y: r.tile.y,
                w: r.tile.w,
                h: r.tile.h,
                class: r.class,
                probs: r.probs,
            })
            .collect(),
        done: session.records.len(),
        total: session.plan.tiles.len(),
        finished: session.records.len() == session.plan.tiles.len(),
        elapsed_ms: now_ms() - start,
    });
    put(session);
    to_js(&out?)
}

/// Classifies the session's next `n` tiles; returns (and keeps) their records.
async fn step(
    s: &mut MapSession,
    n: usize,
    progress: &Progress,
) -> Result<Vec<TileRecord>, JsError> {
    let (loaded, labeller) =
        s.run.as_ref().ok_or_else(|| js_error("press Map first: no classes were chosen"))?;
    if !Rc::ptr_eq(loaded, &super::api::loaded()?) {
        return Err(js_error("the model changed since the map started: start it again"));
    }
    let (done, total) = (s.records.len(), s.plan.tiles.len());
    let tiles = &s.plan.tiles[done..(done + n).min(total)];
    let per_pass = loaded.batches.image.min(MAP_BATCH);
    let report = |d: usize, _: usize| {
        progress.report("tiles", done + d, total);
        true
    };
    let new = match labeller {
        Labeller::ZeroShot(embeds) => {
            let c =
                ZeroShotClassifier::with_class_embeds(&loaded.model, &s.classes, embeds.clone())
                    .map_err(err)?;
            classify_tiles_async(&mut s.slide, tiles, &c, per_pass, report).await
        }
        Labeller::Trained(classifier) => {
            let c = AdapterClassifier::new(classifier, loaded.model.preprocess);
            classify_tiles_async(&mut s.slide, tiles, &c, per_pass, report).await
        }
    }
    .map_err(err)?;
    s.records.extend(new.iter().cloned());
    Ok(new)
}

/// The most similar report of a corpus (plain text or JSONL, as [`super::retrieve`];
/// `corpus_name` names it in errors) to the open slide's tile whose top-left corner is (`x`,
/// `y`), by cosine between the loaded model's image and text embeddings, as `clipit map
/// --reports` finds it. The corpus's embeddings are kept for the next call (progress
/// `("reports", done, total)` while they are computed). Resolves to `{x, y, id, text, score,
/// reports, elapsed_ms}` (`reports`: the corpus's size).
#[wasm_bindgen]
pub async fn map_tile_report(
    x: u32,
    y: u32,
    corpus: Uint8Array,
    corpus_name: String,
    progress: Option<Function>,
) -> JsResult {
    #[derive(Serialize)]
    struct Out {
        x: u32,
        y: u32,
        id: String,
        text: String,
        score: f32,
        reports: usize,
        elapsed_ms: f64,
    }
    let start = now_ms();
    let progress = Progress(progress);
    let loaded = loaded()?;
    with_text(&loaded, "the most similar report of a tile")?;
    let mut session = take()?;
    let pixels = session
        .plan
        .tiles
        .iter()
        .find(|t| t.x == x && t.y == y)
        .copied()
        .ok_or_else(|| js_error(format!("the open slide has no tile at ({x}, {y}) over tissue")))
        .and_then(|t| session.slide.read_region(t.x, t.y, t.w, t.h).map_err(err));
    put(session);
    let tile = pixels?;
    let reports = corpus_embeds(&loaded, &corpus.to_vec(), &corpus_name, &progress).await?;
    let embeds = image_embeddings(&loaded.model, &[tile]).map_err(err)?;
    let top = top_k_async(embeds, reports.embeds.clone(), 1).await.map_err(err)?;
    let &(j, score) = top
        .first()
        .and_then(|r| r.first())
        .ok_or_else(|| js_error(format!("{corpus_name}: no report was scored")))?;
    let c = &reports.corpus;
    to_js(&Out {
        x,
        y,
        id: c.ids[j].clone(),
        text: c.texts[j].clone(),
        score,
        reports: c.len(),
        elapsed_ms: now_ms() - start,
    })
}

/// The finished map's records and classes, for the exports.
fn finished<T>(what: &str, f: impl FnOnce(&MapSession) -> crate::Result<T>) -> Result<T, JsError> {
    MAP.with(|m| {
        let m = m.borrow();
        let s = m.as_ref().ok_or_else(|| js_error("no slide is open"))?;
        if s.run.is_none() || s.records.len() != s.plan.tiles.len() {
            return Err(js_error(format!(
                "{what}: the map is not finished ({} of {} tiles classified)",
                s.records.len(),
                s.plan.tiles.len()
            )));
        }
        f(s).map_err(err)
    })
}

/// The finished map as QuPath GeoJSON (`tiles.geojson`, as `clipit map` writes it).
#[wasm_bindgen]
pub fn map_geojson() -> Result<Uint8Array, JsError> {
    let bytes = finished("tiles.geojson", |s| export::geojson_bytes(&s.records, &s.classes, None))?;
    Ok(Uint8Array::from(bytes.as_slice()))
}

/// The finished map as CSV (`tiles.csv`: x, y, w, h, class, one probability per class).
#[wasm_bindgen]
pub fn map_csv() -> Result<Uint8Array, JsError> {
    let bytes = finished("tiles.csv", |s| export::csv_bytes(&s.records, &s.classes, None))?;
    Ok(Uint8Array::from(bytes.as_slice()))
}

/// The finished map's overlay with its legend as PNG (`overlay.png`, as `clipit map` draws it).
#[wasm_bindgen]
pub fn map_overlay_png() -> Result<Uint8Array, JsError> {
    let bytes = finished("overlay.png", |s| {
        export::png_bytes(&export::render_overlay(&s.plan.overview, &s.records, &s.classes))
    })?;
    Ok(Uint8Array::from(bytes.as_slice()))
}

/// Closes the open slide and frees its memory.
#[wasm_bindgen]
pub fn map_close() {
    MAP.with(|m| m.borrow_mut().take());
}
