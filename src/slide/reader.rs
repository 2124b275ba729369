//! A slide or a large image behind one API: its size, its pixel size, regions of the base level
//! read on demand, and downscaled overviews.
//!
//! TIFF files (pyramidal or not) are read chunk by chunk with a small cache, so memory stays
//! bounded whatever the slide's size. PNG and JPEG files cannot be decoded piecewise and are
//! decoded once, up to [`MAX_RASTER_PIXELS`].

use std::collections::{HashMap, VecDeque};
use std::io::{BufReader, Cursor, Read};
use std::path::Path;
use std::sync::Arc;

use image::{Rgb, RgbImage};

pub use super::tiff::MAX_SLIDE_PIXELS;
use super::tiff::{ReadSeek, TiffFile, MAX_CHUNK_BYTES};
use crate::preprocess::decode_rgb;
use crate::{Error, Result};

/// PNG and JPEG images with more pixels than this (2^28) are refused: they are decoded whole.
pub const MAX_RASTER_PIXELS: u64 = 1 << 28;

/// Longest side of overviews rendered by [`Slide::overview`].
pub const MAX_OVERVIEW_SIDE: u32 = 2048;

/// Decoded chunks kept in memory, at most (also bounded by [`CACHE_BYTES`]).
const CACHE_BYTES: u64 = 192 << 20;

/// A downscaled rendering of the whole base level.
#[derive(Debug, Clone)]
pub struct Overview {
    /// The pixels.
    pub image: RgbImage,
    /// Base-level pixels per overview pixel, horizontally and vertically.
    pub scale: (f64, f64),
}

enum Source {
    Tiff { file: Box<TiffFile>, pyramid: Vec<usize>, cache: ChunkCache },
    Raster(RgbImage),
}

/// An open slide or image.
pub struct Slide {
    name: String,
    width: u32,
    height: u32,
    mpp: Option<f64>,
    source: Source,
}

/// Decoded chunks of the base level, oldest evicted first.
struct ChunkCache {
    map: HashMap<u32, Arc<RgbImage>>,
    order: VecDeque<u32>,
    capacity: usize,
}

impl ChunkCache {
    fn new(chunk_bytes: u64, chunks_across: u32) -> Self {
        let by_bytes = (CACHE_BYTES / chunk_bytes.max(1)).max(2) as usize;
        let capacity = by_bytes.min(2 * chunks_across as usize + 8);
        Self { map: HashMap::new(), order: VecDeque::new(), capacity }
    }

    fn get_or(
        &mut self,
        index: u32,
        load: impl FnOnce() -> Result<RgbImage>,
    ) -> Result<Arc<RgbImage>> {
        if let Some(hit) = self.map.get(&index) {
            return Ok(hit.clone());
        }
        let chunk = Arc::new(load()?);
        if self.order.len() >= self.capacity {
            if let Some(old) = self.order.pop_front() {
                self.map.remove(&old);
            }
        }
        self.order.push_back(index);
        self.map.insert(index, chunk.clone());
        Ok(chunk)
    }
}

fn is_tiff(head: &[u8]) -> bool {
    head.starts_with(b"II*\0")
        || head.starts_with(b"MM\0*")
        || head.starts_with(b"II+\0")
        || head.starts_with(b"MM\0+")
}

impl Slide {
    /// Opens a slide file: TIFF/SVS (read lazily), or a PNG or JPEG (decoded once).
    pub fn open(path: &Path) -> Result<Self> {
        let name = path.display().to_string();
        let mut file = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
        if path.is_dir() {
            return Err(Error::format(&name, "is a folder, not a slide file"));
        }
        let mut head = [0u8; 4];
        let n = file.read(&mut head).map_err(|e| Error::io(path, e))?;
        if n == 0 {
            return Err(Error::format(&name, "empty file (0 bytes), not a slide"));
        }
        if is_tiff(&head[..n]) {
            Self::from_tiff(Box::new(BufReader::new(file)), &name)
        } else {
            let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
            Self::from_raster(&bytes, &name)
        }
    }

    /// Opens a slide held in memory (the browser's path); `name` is used in errors.
    pub fn from_bytes(bytes: Vec<u8>, name: &str) -> Result<Self> {
        if is_tiff(&bytes[..bytes.len().min(4)]) {
            Self::from_tiff(Box::new(Cursor::new(bytes)), name)
        } else {
            Self::from_raster(&bytes, name)
        }
    }

    fn from_raster(bytes: &[u8], name: &str) -> Result<Self> {
        let image = decode_rgb(bytes, name, MAX_RASTER_PIXELS)?;
        let (width, height) = image.dimensions();
        Ok(Self { name: name.to_string(), width, height, mpp: None, source: Source::Raster(image) })
    }

    fn from_tiff(reader: Box<dyn ReadSeek>, name: &str) -> Result<Self> {
        let mut file = Box::new(TiffFile::open(reader, name)?);
        let base = file.levels[0].clone();
        // Pyramid levels: directories with the base's aspect ratio that are not label/macro.
        let aspect = f64::from(base.width) / f64::from(base.height);
        let mut pyramid: Vec<usize> = (0..file.levels.len())
            .filter(|&i| {
                let l = &file.levels[i];
                let a = f64::from(l.width) / f64::from(l.height);
                i == 0 || (!l.is_associated() && (a / aspect - 1.0).abs() < 0.02)
            })
            .collect();
        pyramid.sort_by_key(|&i| std::cmp::Reverse(file.levels[i].width));
        let chunk_bytes = u64::from(base.chunk.0) * u64::from(base.chunk.1) * 3;
        let cache = ChunkCache::new(chunk_bytes.min(MAX_CHUNK_BYTES), base.chunks_across());
        let mpp = file.mpp();
        Ok(Self {
            name: name.to_string(),
            width: base.width,
            height: base.height,
            mpp,
            source: Source::Tiff { file, pyramid, cache },
        })
    }

    /// The file name used in errors.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Base-level width and height in pixels.
    pub fn dimensions(&self) -> (u32, u32) {
        (self.width, self.height)
    }

    /// The base level's pixel size in µm, when the file gives it.
    pub fn mpp(&self) -> Option<f64> {
        self.mpp
    }

    /// Overrides the pixel size (µm per pixel), e.g. from the command line.
    pub fn set_mpp(&mut self, mpp: f64) {
        self.mpp = Some(mpp);
    }

    /// Sizes of the pyramid levels, base first (one entry for a flat image).
    pub fn level_dimensions(&self) -> Vec<(u32, u32)> {
        match &self.source {
            Source::Tiff { file, pyramid, .. } => {
                pyramid.iter().map(|&i| (file.levels[i].width, file.levels[i].height)).collect()
            }
            Source::Raster(img) => vec![img.dimensions()],
        }
    }

    /// Reads the base-level rectangle at `(x, y)` of size `w` x `h` (inside the image).
    pub fn read_region(&mut self, x: u32, y: u32, w: u32, h: u32) -> Result<RgbImage> {
        let inside = x.checked_add(w).is_some_and(|r| r <= self.width)
            && y.checked_add(h).is_some_and(|b| b <= self.height);
        if !inside || w == 0 || h == 0 {
            return Err(Error::format(
                &self.name,
                format!(
                    "region {w}x{h} at ({x}, {y}) is outside the {}x{} image",
                    self.width, self.height
                ),
            ));
        }
        match &mut self.source {
            Source::Raster(img) => Ok(image::imageops::crop_imm(img, x, y, w, h).to_image()),
            Source::Tiff { file, cache, .. } => {
                let level = &file.levels[0];
                let (cw, ch) = level.chunk;
                let across = level.chunks_across();
                let mut out = RgbImage::new(w, h);
                for cy in y / ch..=(y + h - 1) / ch {
                    for cx in x / cw..=(x + w - 1) / cw {
                        let index = cy * across + cx;
                        let chunk = cache.get_or(index, || file.read_chunk(0, index))?;
                        blit(&chunk, (cx * cw, cy * ch), &mut out, (x, y));
                    }
                }
                Ok(out)
            }
        }
    }

    /// The whole of pyramid level `level` (0 is the base; see [`Self::level_dimensions`]), e.g.
    /// a scanner's thumbnail. Levels of more than [`MAX_OVERVIEW_SIDE`]² pixels are refused: use
    /// [`Self::read_region`] or [`Self::overview`] for those.
    pub fn level_image(&mut self, level: usize) -> Result<RgbImage> {
        let dims = self.level_dimensions();
        let Some(&(w, h)) = dims.get(level) else {
            return Err(Error::format(
                &self.name,
                format!("no level {level} ({} levels)", dims.len()),
            ));
        };
        if u64::from(w) * u64::from(h) > u64::from(MAX_OVERVIEW_SIDE).pow(2) {
            return Err(Error::format(
                &self.name,
                format!("level {level} is {w}x{h}, too large to read whole"),
            ));
        }
        match &mut self.source {
            Source::Raster(img) => Ok(img.clone()),
            Source::Tiff { file, pyramid, .. } => {
                let index = pyramid[level];
                let lv = file.levels[index].clone();
                let mut out = RgbImage::new(w, h);
                for chunk in 0..lv.chunks_across() * lv.chunks_down() {
                    let (x, y, _, _) = lv.chunk_rect(chunk);
                    blit(&file.read_chunk(index, chunk)?, (x, y), &mut out, (0, 0));
                }
                Ok(out)
            }
        }
    }

    /// A downscaled rendering of the whole image whose longest side is at most `max_side`
    /// (capped at [`MAX_OVERVIEW_SIDE`]): from the smallest pyramid level at least that large,
    /// averaged down chunk by chunk.
    pub fn overview(&mut self, max_side: u32) -> Result<Overview> {
        let max_side = max_side.clamp(1, MAX_OVERVIEW_SIDE);
        let f = (f64::from(max_side) / f64::from(self.width.max(self.height))).min(1.0);
        let tw = ((f64::from(self.width) * f).round() as u32).max(1);
        let th = ((f64::from(self.height) * f).round() as u32).max(1);
        let scale = (f64::from(self.width) / f64::from(tw), f64::from(self.height) / f64::from(th));
        let mut acc = BoxAccumulator::new(tw, th);
        match &mut self.source {
            Source::Raster(img) => acc.add(img, (0, 0), (img.width(), img.height())),
            Source::Tiff { file, pyramid, .. } => {
                let level = *pyramid
                    .iter()
                    .rev()
                    .find(|&&i| file.levels[i].width >= tw && file.levels[i].height >= th)
                    .unwrap_or(&pyramid[0]);
                let (lw, lh) = (file.levels[level].width, file.levels[level].height);
                let chunks = file.levels[level].chunks_across() * file.levels[level].chunks_down();
                for index in 0..chunks {
                    let (x, y, _, _) = file.levels[level].chunk_rect(index);
                    let chunk = file.read_chunk(level, index)?;
                    acc.add(&chunk, (x, y), (lw, lh));
                }
            }
        }
        Ok(Overview { image: acc.finish(), scale })
    }
}

/// Copies the part of `chunk` (whose top-left is `at` in the image) that falls inside `out`
/// (whose top-left is `origin`).
fn blit(chunk: &RgbImage, at: (u32, u32), out: &mut RgbImage, origin: (u32, u32)) {
    let x0 = at.0.max(origin.0);
    let y0 = at.1.max(origin.1);
    let x1 = (at.0 + chunk.width()).min(origin.0 + out.width());
    let y1 = (at.1 + chunk.height()).min(origin.1 + out.height());
    if x0 >= x1 {
        return;
    }
    let n = (x1 - x0) as usize * 3;
    let (src, ow) = (chunk.as_raw(), out.width() as usize);
    let dst = &mut **out;
    for y in y0..y1 {
        let s = (((y - at.1) * chunk.width() + (x0 - at.0)) * 3) as usize;
        let d = ((y - origin.1) as usize * ow + (x0 - origin.0) as usize) * 3;
        dst[d..d + n].copy_from_slice(&src[s..s + n]);
    }
}

/// Area-averaging downscaler fed piece by piece: each source pixel adds to the target pixel
/// that contains its position.
struct BoxAccumulator {
    w: u32,
    h: u32,
    sums: Vec<u64>,
    counts: Vec<u64>,
}

impl BoxAccumulator {
    fn new(w: u32, h: u32) -> Self {
        let n = w as usize * h as usize;
        Self { w, h, sums: vec![0; n * 3], counts: vec![0; n] }
    }

    /// Adds `piece`, whose top-left is `at` in a source image of size `src`.
    fn add(&mut self, piece: &RgbImage, at: (u32, u32), src: (u32, u32)) {
        let tx: Vec<usize> = (0..piece.width())
            .map(|x| (u64::from(at.0 + x) * u64::from(self.w) / u64::from(src.0)) as usize)
            .collect();
        for y in 0..piece.height() {
            let ty = (u64::from(at.1 + y) * u64::from(self.h) / u64::from(src.1)) as usize;
            for (x, &t) in tx.iter().enumerate() {
                let i = ty * self.w as usize + t;
                let Rgb(p) = *piece.get_pixel(x as u32, y);
                self.counts[i] += 1;
                for (sum, v) in self.sums[i * 3..i * 3 + 3].iter_mut().zip(p) {
                    *sum += u64::from(v);
                }
            }
        }
    }

    fn finish(self) -> RgbImage {
        let mut out = RgbImage::new(self.w, self.h);
        for (i, px) in out.pixels_mut().enumerate() {
            let n = self.counts[i].max(1);
            for c in 0..3 {
                px.0[c] = ((self.sums[i * 3 + c] + n / 2) / n) as u8;
            }
        }
        out
    }
}
