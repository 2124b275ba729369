//! Slide maps: tile a large image or a whole-slide image, classify every tile over tissue, and
//! export what pathology tools read (QuPath GeoJSON, a CSV, an overlay PNG).
//!
//! - [`reader`]: PNG, JPEG, TIFF and pyramidal TIFF/SVS behind one [`Slide`] API; TIFF regions
//!   are decoded chunk by chunk (memory bounded), JPEG-in-TIFF included ([`tiff`]).
//! - [`tissue`]: Otsu on the HSV saturation of an overview.
//! - [`tiling`]: the grid, in pixels or µm, and the tiles kept over tissue.
//! - [`classify`]: zero-shot or trained-run classification of tile batches, with reports.
//! - [`export`]: GeoJSON, CSV and overlay.
//!
//! [`plan`] and [`classify_tiles`] (or [`classify_tiles_async`] in the browser) are the two steps
//! the CLI and the page share.

pub mod classify;
pub mod export;
pub mod font;
pub mod reader;
pub mod tiff;
pub mod tiling;
pub mod tissue;

pub use classify::{AsyncTileClassifier, BatchResult, TileClassifier};
pub use export::TileRecord;
pub use reader::{Overview, Slide};
pub use tiling::{Tile, TileGrid, TileRequest};
pub use tissue::TissueMask;

use crate::{Error, Result};

/// Longest side of the overview used for the tissue mask and the overlay, by default.
pub const DEFAULT_OVERVIEW_SIDE: u32 = 2048;

/// What to tile and how.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct MapOptions {
    /// Tile size and stride.
    pub tiles: TileRequest,
    /// Smallest fraction of a tile over tissue for it to be kept, in [0, 1].
    pub min_tissue: f32,
    /// Longest side of the overview (tissue mask and overlay).
    pub overview_side: u32,
}

impl Default for MapOptions {
    fn default() -> Self {
        Self {
            tiles: TileRequest::default(),
            min_tissue: 0.5,
            overview_side: DEFAULT_OVERVIEW_SIDE,
        }
    }
}

/// The tiles to classify, and what they were chosen from.
#[derive(Debug, Clone)]
pub struct MapPlan {
    /// The downscaled image (for the overlay).
    pub overview: Overview,
    /// The tissue mask of the overview.
    pub mask: TissueMask,
    /// The grid.
    pub grid: TileGrid,
    /// The grid's tiles over tissue, row by row.
    pub tiles: Vec<Tile>,
}

/// Renders the overview, finds the tissue and selects the tiles. Fails with a message naming the
/// slide when the tile does not fit, there is no tissue, or no tile has enough of it.
pub fn plan(slide: &mut Slide, opts: &MapOptions) -> Result<MapPlan> {
    if !(0.0..=1.0).contains(&opts.min_tissue) {
        return Err(Error::msg(format!(
            "--min-tissue {} must be between 0 and 1",
            opts.min_tissue
        )));
    }
    let (w, h) = slide.dimensions();
    let grid = TileGrid::resolve(&opts.tiles, w, h, slide.mpp(), slide.name())?;
    let overview = slide.overview(opts.overview_side)?;
    let mask = TissueMask::from_image(&overview.image, overview.scale);
    mask.require_tissue(slide.name())?;
    let tiles = grid.select(&mask, opts.min_tissue);
    if tiles.is_empty() {
        return Err(Error::format(
            slide.name(),
            format!(
                "no {} px tile has at least {:.0}% tissue ({:.1}% of the image is tissue): lower --min-tissue or the tile size",
                grid.tile,
                opts.min_tissue * 100.0,
                mask.tissue_fraction() * 100.0
            ),
        ));
    }
    Ok(MapPlan { overview, mask, grid, tiles })
}

/// Reads and classifies `tiles` in batches of `batch`, in order. `progress(done, total)` is
/// called after each batch; returning `false` cancels the run with an error.
pub fn classify_tiles(
    slide: &mut Slide,
    tiles: &[Tile],
    classifier: &dyn TileClassifier,
    batch: usize,
    mut progress: impl FnMut(usize, usize) -> bool,
) -> Result<Vec<TileRecord>> {
    let mut records = Vec::with_capacity(tiles.len());
    for chunk in tiles.chunks(batch.max(1)) {
        let out = classifier.classify(&read_tiles(slide, chunk)?)?;
        push_batch(&mut records, chunk, out, classifier.classes().len())?;
        go_on(progress(records.len(), tiles.len()), records.len(), tiles.len())?;
    }
    Ok(records)
}

/// [`classify_tiles`] with an [`AsyncTileClassifier`] (the browser's case, where tensors are
/// read asynchronously); the same batches, records and cancellation.
pub async fn classify_tiles_async<C: AsyncTileClassifier>(
    slide: &mut Slide,
    tiles: &[Tile],
    classifier: &C,
    batch: usize,
    mut progress: impl FnMut(usize, usize) -> bool,
) -> Result<Vec<TileRecord>> {
    let mut records = Vec::with_capacity(tiles.len());
    for chunk in tiles.chunks(batch.max(1)) {
        let out = classifier.classify_async(&read_tiles(slide, chunk)?).await?;
        push_batch(&mut records, chunk, out, classifier.classes().len())?;
        go_on(progress(records.len(), tiles.len()), records.len(), tiles.len())?;
    }
    Ok(records)
}

/// The base-level pixels of `tiles`.
fn read_tiles(slide: &mut Slide, tiles: &[Tile]) -> Result<Vec<image::RgbImage>> {
    tiles.iter().map(|t| slide.read_region(t.x, t.y, t.w, t.h)).collect()
}

/// Checks a batch's result against its tiles and appends one record per tile.
fn push_batch(
    records: &mut Vec<TileRecord>,
    chunk: &[Tile],
    out: BatchResult,
    classes: usize,
) -> Result<()> {
    if out.probs.len() != chunk.len() || out.probs.iter().any(|p| p.len() != classes) {
        return Err(Error::msg(format!(
            "the classifier returned {} rows for {} tiles of {classes} classes",
            out.probs.len(),
            chunk.len()
        )));
    }
    for (i, (tile, probs)) in chunk.iter().zip(out.probs).enumerate() {
        let class = crate::metrics::argmax_rows(std::slice::from_ref(&probs))[0];
        let report = out.reports.as_ref().map(|r| r[i]);
        records.push(TileRecord { tile: *tile, probs, class, report });
    }
    Ok(())
}

/// The error of a run cancelled by its progress callback.
fn go_on(keep_going: bool, done: usize, total: usize) -> Result<()> {
    if keep_going {
        Ok(())
    } else {
        Err(Error::msg(format!("cancelled after {done} of {total} tiles")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use image::{Rgb, RgbImage};

    /// Class 0 for reddish tiles, 1 otherwise, from the mean red value (both traits).
    struct Redness(Vec<String>);

    impl Redness {
        fn run(tiles: &[RgbImage]) -> BatchResult {
            let probs = tiles
                .iter()
                .map(|t| {
                    let r = t.pixels().map(|p| f32::from(p.0[0])).sum::<f32>()
                        / (t.width() * t.height()) as f32
                        / 255.0;
                    vec![r, 1.0 - r]
                })
                .collect();
            BatchResult { probs, reports: None }
        }
    }

    impl TileClassifier for Redness {
        fn classes(&self) -> &[String] {
            &self.0
        }
        fn classify(&self, tiles: &[RgbImage]) -> Result<BatchResult> {
            Ok(Self::run(tiles))
        }
    }

    impl AsyncTileClassifier for Redness {
        fn classes(&self) -> &[String] {
            &self.0
        }
        async fn classify_async(&self, tiles: &[RgbImage]) -> Result<BatchResult> {
            Ok(Self::run(tiles))
        }
    }

    /// Polls a future that never waits (the fake classifier's) to completion.
    fn ready<F: std::future::Future>(f: F) -> F::Output {
        let mut f = std::pin::pin!(f);
        let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
        match f.as_mut().poll(&mut cx) {
            std::task::Poll::Ready(v) => v,
            std::task::Poll::Pending => panic!("the fake classifier never waits"),
        }
    }

    /// A 400x300 PNG: white background, a red block and a purple block of "tissue".
    fn slide() -> Slide {
        let img = RgbImage::from_fn(400, 300, |x, y| match (x, y) {
            (0..=199, 0..=199) => Rgb([220, 40, 60]),
            (200..=399, 100..=299) => Rgb([90, 40, 160]),
            _ => Rgb([250, 250, 250]),
        });
        let mut png = Vec::new();
        img.write_to(&mut std::io::Cursor::new(&mut png), image::ImageFormat::Png).unwrap();
        Slide::from_bytes(png, "blocks.png").unwrap()
    }

    #[test]
    fn async_classification_matches_sync_and_exports_as_bytes() {
        let mut s = slide();
        let opts = MapOptions {
            tiles: TileRequest { size_px: Some(50), ..Default::default() },
            ..Default::default()
        };
        let plan = plan(&mut s, &opts).unwrap();
        assert_eq!(plan.tiles.len(), 16 + 16);
        let c = Redness(vec!["red".into(), "purple".into()]);
        let sync = classify_tiles(&mut s, &plan.tiles, &c, 5, |_, _| true).unwrap();
        let mut seen = Vec::new();
        let asy = ready(classify_tiles_async(&mut s, &plan.tiles, &c, 5, |d, t| {
            seen.push((d, t));
            true
        }))
        .unwrap();
        assert_eq!(sync, asy);
        assert_eq!(seen.first(), Some(&(5, 32)));
        assert_eq!(seen.last(), Some(&(32, 32)));
        assert_eq!(asy.iter().filter(|r| r.class == 0).count(), 16);

        let cancelled = ready(classify_tiles_async(&mut s, &plan.tiles, &c, 5, |d, _| d < 10));
        assert_eq!(cancelled.unwrap_err().to_string(), "cancelled after 10 of 32 tiles");

        let dir = std::env::temp_dir().join(format!("clipit-map-bytes-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let classes = c.0.clone();
        export::write_geojson(&dir.join("t.geojson"), &asy, &classes, None).unwrap();
        export::write_csv(&dir.join("t.csv"), &asy, &classes, None).unwrap();
        let geojson = export::geojson_bytes(&asy, &classes, None).unwrap();
        assert_eq!(std::fs::read(dir.join("t.geojson")).unwrap(), geojson);
        assert_eq!(
            std::fs::read(dir.join("t.csv")).unwrap(),
            export::csv_bytes(&asy, &classes, None).unwrap()
        );
        let v: serde_json::Value = serde_json::from_slice(&geojson).unwrap();
        assert_eq!(v["features"].as_array().unwrap().len(), 32);
        let png = export::png_bytes(&export::render_overlay(&plan.overview, &asy, &classes));
        assert!(png.unwrap().starts_with(b"\x89PNG"));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
