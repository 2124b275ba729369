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
//! [`plan`] and [`classify_tiles`] are the two steps the CLI and the page share.

pub mod classify;
pub mod export;
pub mod font;
pub mod reader;
pub mod tiff;
pub mod tiling;
pub mod tissue;

pub use classify::{BatchResult, TileClassifier};
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
    let classes = classifier.classes().len();
    let mut records = Vec::with_capacity(tiles.len());
    for chunk in tiles.chunks(batch.max(1)) {
        let pixels = chunk
            .iter()
            .map(|t| slide.read_region(t.x, t.y, t.w, t.h))
            .collect::<Result<Vec<_>>>()?;
        let out = classifier.classify(&pixels)?;
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
        if !progress(records.len(), tiles.len()) {
            return Err(Error::msg(format!(
                "cancelled after {} of {} tiles",
                records.len(),
                tiles.len()
            )));
        }
    }
    Ok(records)
}
