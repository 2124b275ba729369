//! `clipit map`: tile a slide or a large image, classify every tile over tissue, and write
//! `tiles.geojson` (QuPath), `tiles.csv` and `overlay.png`.

use std::path::{Path, PathBuf};
use std::time::Instant;

use clap::Args;
use clipit::backend::Backend;
use clipit::model::Model;
use clipit::retrieval::Corpus;
use clipit::slide::classify::{ReportIndex, RunClassifier, ZeroShotClassifier};
use clipit::slide::{export, MapOptions, Slide, TileClassifier, TileRequest};
use clipit::train::inference::load_run;
use clipit::zeroshot::{default_templates, read_templates};
use clipit::{fsutil::AtomicWriter, Error, Result};

use super::commands::{corpus_embeddings, progress};

/// Options of `clipit map`.
#[derive(Args, Debug)]
pub struct MapArgs {
    /// CLIP checkpoint folder for zero-shot (with --classes), or for --reports with --run.
    #[arg(long)]
    model: Option<PathBuf>,
    /// Zero-shot class names, comma-separated.
    #[arg(long, value_delimiter = ',')]
    classes: Vec<String>,
    /// Zero-shot prompt templates, one per line, each with a {} for the class name.
    #[arg(long)]
    templates: Option<PathBuf>,
    /// A run folder written by `clipit train` (instead of zero-shot).
    #[arg(long, conflicts_with_all = ["classes", "templates"])]
    run: Option<PathBuf>,
    /// The slide: SVS or (pyramidal) TIFF, or a PNG or JPEG image.
    #[arg(long)]
    slide: PathBuf,
    /// Output folder for tiles.geojson, tiles.csv and overlay.png.
    #[arg(long)]
    out: PathBuf,
    /// Tile side in base-level pixels (default 224, or from --tile-um).
    #[arg(long, conflicts_with = "tile_um")]
    tile_size: Option<u32>,
    /// Tile side in µm (needs the pixel size from the file or --mpp).
    #[arg(long)]
    tile_um: Option<f64>,
    /// Step between tiles in pixels (default: the tile side).
    #[arg(long)]
    stride: Option<u32>,
    /// Pixel size in µm per pixel, overriding the file's.
    #[arg(long)]
    mpp: Option<f64>,
    /// Smallest fraction of a tile over tissue for it to be classified.
    #[arg(long, default_value_t = 0.5)]
    min_tissue: f32,
    /// Tiles per forward pass.
    #[arg(long, default_value_t = 16)]
    batch_size: usize,
    /// Longest side of the overlay image in pixels (at most 2048).
    #[arg(long, default_value_t = clipit::slide::DEFAULT_OVERVIEW_SIDE)]
    overlay_size: u32,
    /// Report corpus: adds each tile's most similar report (needs --model).
    #[arg(long)]
    reports: Option<PathBuf>,
    /// Compute backend: cpu, wgpu or cuda.
    #[arg(long, default_value = "cpu")]
    backend: Backend,
}

/// The output names external tools read.
const OUTPUTS: [&str; 3] = ["tiles.geojson", "tiles.csv", "overlay.png"];

/// Creates `out` and checks it can hold the outputs before any long work starts.
fn prepare_out_dir(out: &Path) -> Result<()> {
    std::fs::create_dir_all(out).map_err(|e| Error::io(out, e))?;
    drop(AtomicWriter::create(out.join(OUTPUTS[0]))?);
    Ok(())
}

fn check_args(a: &MapArgs) -> Result<()> {
    match (&a.run, &a.model, a.classes.is_empty()) {
        (None, None, _) => {
            Err(Error::msg("give --model DIR --classes a,b,c (zero-shot) or --run RUN_DIR"))
        }
        (None, Some(_), true) => {
            Err(Error::msg("zero-shot needs --classes a,b,c (or give --run RUN_DIR)"))
        }
        (Some(_), None, _) if a.reports.is_some() => {
            Err(Error::msg("--reports needs --model DIR, a CLIP model to embed tiles and reports"))
        }
        _ if a.batch_size == 0 => Err(Error::msg("--batch-size must be at least 1")),
        _ if a.mpp.is_some_and(|m| !(m.is_finite() && m > 0.0)) => {
            Err(Error::msg("--mpp must be a positive number of µm per pixel"))
        }
        _ => Ok(()),
    }
}

fn load_model(dir: &Path, backend: Backend) -> Result<Model> {
    let start = Instant::now();
    let model = Model::load(dir, &backend.device()?)?;
    eprintln!(
        "loaded {} ({}) on {backend} in {:.2} s",
        model.name,
        model.architecture,
        start.elapsed().as_secs_f64()
    );
    Ok(model)
}

/// The report corpus and its index, embedded with `model` (cached like `clipit retrieve`).
fn report_index(model: &Model, reports: &Path, batch: usize) -> Result<(Corpus, ReportIndex)> {
    let corpus = Corpus::read(reports)?;
    let values = corpus_embeddings(model, &corpus, batch, Some(&super::default_cache_dir()))?;
    let device = model.vision.pos_embed.val().device();
    let index = ReportIndex::from_values(&values, model.embed_dim, &device)?;
    Ok((corpus, index))
}

/// `clipit map`.
pub fn map(a: &MapArgs) -> Result<()> {
    check_args(a)?;
    let mut slide = Slide::open(&a.slide)?;
    if let Some(mpp) = a.mpp {
        slide.set_mpp(mpp);
    }
    prepare_out_dir(&a.out)?;
    let opts = MapOptions {
        tiles: TileRequest { size_px: a.tile_size, size_um: a.tile_um, stride_px: a.stride },
        min_tissue: a.min_tissue,
        overview_side: a.overlay_size,
    };
    let (w, h) = slide.dimensions();
    let plan = clipit::slide::plan(&mut slide, &opts)?;
    eprintln!(
        "{}: {w}x{h} px{}, {} level(s); {} of {} tiles of {} px (stride {}) over tissue ({:.1}% tissue)",
        slide.name(),
        slide.mpp().map(|m| format!(" at {m} µm/px")).unwrap_or_default(),
        slide.level_dimensions().len(),
        plan.tiles.len(),
        plan.grid.cols * plan.grid.rows,
        plan.grid.tile,
        plan.grid.stride,
        plan.mask.tissue_fraction() * 100.0
    );

    // With --run, the CLIP model only serves --reports.
    let needs_model = a.run.is_none() || a.reports.is_some();
    let model = match &a.model {
        Some(m) if needs_model => Some(load_model(m, a.backend)?),
        _ => None,
    };
    let reports = match (&a.reports, &model) {
        (Some(r), Some(m)) => Some(report_index(m, r, a.batch_size)?),
        _ => None,
    };
    let run = match &a.run {
        Some(dir) => Some((load_run(dir, &a.backend.device()?)?, a.backend.device()?)),
        None => None,
    };
    let classifier: Box<dyn TileClassifier + '_> = match (&run, &model) {
        (Some((run, device)), _) => {
            let c = RunClassifier::new(run, device.clone());
            match (&model, reports.as_ref().map(|(_, i)| i.clone())) {
                (Some(m), Some(index)) => Box::new(c.with_reports(m, index)),
                _ => Box::new(c),
            }
        }
        (None, Some(m)) => {
            let templates = match &a.templates {
                Some(path) => read_templates(path)?,
                None => default_templates(),
            };
            let classes: Vec<String> = a.classes.iter().map(|c| c.trim().to_string()).collect();
            let c = ZeroShotClassifier::new(m, &classes, &templates)?;
            match reports.as_ref().map(|(_, i)| i.clone()) {
                Some(index) => Box::new(c.with_reports(index)),
                None => Box::new(c),
            }
        }
        (None, None) => unreachable!("checked by check_args"),
    };

    let start = Instant::now();
    let bar = progress(plan.tiles.len(), "tiles");
    let records = clipit::slide::classify_tiles(
        &mut slide,
        &plan.tiles,
        classifier.as_ref(),
        a.batch_size,
        |n, _| {
            bar.set_position(n as u64);
            true
        },
    )?;
    bar.finish_and_clear();
    let secs = start.elapsed().as_secs_f64();
    let classes = classifier.classes().to_vec();
    let ids = reports.as_ref().map(|(c, _)| c.ids.as_slice());
    export::write_geojson(&a.out.join(OUTPUTS[0]), &records, &classes, ids)?;
    export::write_csv(&a.out.join(OUTPUTS[1]), &records, &classes, ids)?;
    let overlay = export::render_overlay(&plan.overview, &records, &classes);
    export::write_png(&a.out.join(OUTPUTS[2]), &overlay)?;

    let mut counts = serde_json::Map::new();
    for (i, c) in classes.iter().enumerate() {
        counts.insert(c.clone(), records.iter().filter(|r| r.class == i).count().into());
    }
    let summary = serde_json::json!({
        "slide": slide.name(),
        "width": w,
        "height": h,
        "mpp": slide.mpp(),
        "tile_size": plan.grid.tile,
        "stride": plan.grid.stride,
        "grid": [plan.grid.cols, plan.grid.rows],
        "tissue_fraction": plan.mask.tissue_fraction(),
        "tiles": records.len(),
        "predicted_counts": counts,
        "tiles_per_second": records.len() as f64 / secs.max(1e-9),
        "outputs": OUTPUTS.iter().map(|o| a.out.join(o).display().to_string()).collect::<Vec<_>>(),
    });
    eprintln!("classified {} tiles in {secs:.1} s; wrote {}", records.len(), a.out.display());
    println!("{}", serde_json::to_string_pretty(&summary).map_err(|e| Error::msg(e.to_string()))?);
    Ok(())
}
