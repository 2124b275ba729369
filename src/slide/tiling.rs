//! The tile grid: tile size and stride in pixels or µm, and the tiles kept over tissue.
//!
//! Tiles lie entirely inside the base level, on a grid anchored at the top-left corner: tile `(i,
//! j)` starts at `(i * stride, j * stride)`. Partial tiles at the right and bottom edges are left
//! out, as QuPath's and WSInfer's tilers do.

use super::tissue::TissueMask;
use crate::{Error, Result};

/// Grids with more positions than this are refused (use a larger stride).
pub const MAX_TILES: u64 = 4_000_000;

/// Smallest tile side accepted, in pixels.
pub const MIN_TILE: u32 = 8;

/// Tile side used when neither a size in pixels nor in µm is given.
pub const DEFAULT_TILE: u32 = 224;

/// How a user asks for tiles: a side in pixels or µm, a stride in pixels (default: the side).
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct TileRequest {
    /// Tile side in base-level pixels.
    pub size_px: Option<u32>,
    /// Tile side in µm (needs the pixel size).
    pub size_um: Option<f64>,
    /// Step between tiles in pixels (default: the tile side, no overlap).
    pub stride_px: Option<u32>,
}

/// A resolved grid: tile side and stride in base-level pixels.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TileGrid {
    /// Tile side.
    pub tile: u32,
    /// Step between tile origins.
    pub stride: u32,
    /// Tiles per row.
    pub cols: u32,
    /// Tiles per column.
    pub rows: u32,
}

/// One tile kept for classification, in base-level pixels.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Tile {
    /// Left edge.
    pub x: u32,
    /// Top edge.
    pub y: u32,
    /// Width.
    pub w: u32,
    /// Height.
    pub h: u32,
    /// Fraction of the tile over tissue.
    pub tissue: f32,
}

impl TileGrid {
    /// Resolves `req` for an image of `width` x `height` with pixel size `mpp` (µm/px); `name`
    /// names the slide in errors.
    pub fn resolve(
        req: &TileRequest,
        width: u32,
        height: u32,
        mpp: Option<f64>,
        name: &str,
    ) -> Result<Self> {
        let tile = match (req.size_px, req.size_um) {
            (Some(_), Some(_)) => {
                return Err(Error::msg("give the tile size in pixels or in µm, not both"))
            }
            (Some(px), None) => px,
            (None, Some(um)) => {
                if !(um.is_finite() && um > 0.0) {
                    return Err(Error::msg(format!("--tile-um {um} must be a positive number")));
                }
                let mpp = mpp.ok_or_else(|| {
                    Error::format(
                        name,
                        "the file gives no pixel size (µm/px): use --tile-size in pixels, or --mpp",
                    )
                })?;
                (um / mpp).round().min(f64::from(u32::MAX)) as u32
            }
            (None, None) => DEFAULT_TILE,
        };
        let stride = req.stride_px.unwrap_or(tile);
        if tile < MIN_TILE || stride == 0 {
            return Err(Error::msg(format!(
                "tile size {tile} px and stride {stride} px: the tile must be at least {MIN_TILE} px and the stride positive"
            )));
        }
        if tile > width || tile > height {
            return Err(Error::format(
                name,
                format!("tile size {tile} px is larger than the {width}x{height} image"),
            ));
        }
        let cols = (width - tile) / stride + 1;
        let rows = (height - tile) / stride + 1;
        if u64::from(cols) * u64::from(rows) > MAX_TILES {
            return Err(Error::format(
                name,
                format!(
                    "{cols}x{rows} tiles of {tile} px every {stride} px is more than {MAX_TILES}: use a larger stride or tile"
                ),
            ));
        }
        Ok(Self { tile, stride, cols, rows })
    }

    /// Every grid position, row by row.
    pub fn positions(&self) -> impl Iterator<Item = (u32, u32)> + '_ {
        (0..self.rows)
            .flat_map(move |r| (0..self.cols).map(move |c| (c * self.stride, r * self.stride)))
    }

    /// The tiles whose tissue fraction under `mask` is at least `min_tissue`, row by row.
    pub fn select(&self, mask: &TissueMask, min_tissue: f32) -> Vec<Tile> {
        self.positions()
            .filter_map(|(x, y)| {
                let tissue = mask.fraction(x, y, self.tile, self.tile);
                (tissue >= min_tissue).then_some(Tile { x, y, w: self.tile, h: self.tile, tissue })
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(px: Option<u32>, um: Option<f64>, stride: Option<u32>) -> TileRequest {
        TileRequest { size_px: px, size_um: um, stride_px: stride }
    }

    #[test]
    fn grid_sizes_and_units() {
        let g = TileGrid::resolve(&req(Some(100), None, None), 1050, 320, None, "s").unwrap();
        assert_eq!((g.tile, g.stride, g.cols, g.rows), (100, 100, 10, 3));
        let g = TileGrid::resolve(&req(Some(100), None, Some(50)), 1050, 320, None, "s").unwrap();
        assert_eq!((g.cols, g.rows), (20, 5));
        assert_eq!(g.positions().nth(20), Some((0, 50)));
        // 112 µm at 0.5 µm/px is 224 px.
        let g =
            TileGrid::resolve(&req(None, Some(112.0), None), 2000, 2000, Some(0.5), "s").unwrap();
        assert_eq!(g.tile, 224);
        let e = TileGrid::resolve(&req(None, Some(112.0), None), 2000, 2000, None, "s.png");
        assert!(e.unwrap_err().to_string().starts_with("s.png: "));
        let e = TileGrid::resolve(&req(Some(500), None, None), 400, 900, None, "s.png");
        assert!(e.unwrap_err().to_string().contains("larger than the 400x900 image"));
        assert!(TileGrid::resolve(&req(Some(224), None, Some(0)), 900, 900, None, "s").is_err());
        assert!(TileGrid::resolve(&req(Some(8), None, Some(1)), 100_000, 100_000, None, "s")
            .unwrap_err()
            .to_string()
            .contains("larger stride"));
    }
}
