//! TIFF and pyramidal TIFF (Aperio SVS) reading, one tile or strip at a time.
//!
//! The `tiff` crate walks the directories (IFDs) and reads tags; the compressed bytes of each
//! chunk are then read from the file directly, so that JPEG chunks can be decoded with the
//! colour handling scanners need: Aperio writes `Photometric = RGB` with JPEG streams whose
//! components are the RGB samples themselves (no YCbCr transform, although the stream carries no
//! Adobe marker saying so), usually with shared `JPEGTables`. As libtiff, OpenSlide and tifffile
//! do, the TIFF photometric tag decides: RGB streams are taken as they are, YCbCr ones are
//! converted. Other compressions (none, LZW, Deflate, PackBits) are decoded by the `tiff` crate.
//! Nothing here holds more than one chunk per call, plus the caller's cache.

use std::io::{Read, Seek, SeekFrom};

use image::RgbImage;
use tiff::decoder::{Decoder, DecodingResult, Limits};
use tiff::tags::Tag;
use tiff::ColorType;
use zune_jpeg::zune_core::bytestream::ZCursor;
use zune_jpeg::zune_core::colorspace::ColorSpace;
use zune_jpeg::zune_core::options::DecoderOptions;
use zune_jpeg::JpegDecoder;

use crate::{Error, Result};

/// A seekable byte source (a file natively, an in-memory buffer in the browser).
pub trait ReadSeek: Read + Seek {}
impl<T: Read + Seek> ReadSeek for T {}

/// Chunks (decoded tiles or strips) larger than this are refused (a single-strip giant TIFF).
pub const MAX_CHUNK_BYTES: u64 = 256 << 20;

/// Slides whose base level has more pixels than this (2^36, e.g. 262144 x 262144) are refused.
pub const MAX_SLIDE_PIXELS: u64 = 1 << 36;

const COMPRESSION_NONE: u16 = 1;
const COMPRESSION_JPEG: u16 = 7;
const PHOTOMETRIC_RGB: u16 = 2;
const PHOTOMETRIC_YCBCR: u16 = 6;

/// Compressions this reader decodes: none, LZW, JPEG, Deflate (two codes), PackBits.
const SUPPORTED: &[u16] = &[COMPRESSION_NONE, 5, COMPRESSION_JPEG, 8, 32946, 32773];

/// A human name for a TIFF compression code, for error messages.
pub fn compression_name(code: u16) -> &'static str {
    match code {
        1 => "none",
        2..=4 => "CCITT fax",
        5 => "LZW",
        6 => "old-style JPEG",
        7 => "JPEG",
        8 | 32946 => "Deflate",
        32773 => "PackBits",
        33003 | 33005 => "Aperio JPEG 2000",
        34712 => "JPEG 2000",
        34887..=34892 => "JPEG XR / lossless variants",
        50000 => "ZSTD",
        50001 => "WebP",
        _ => "unknown",
    }
}

/// One image directory of the file: a pyramid level, or an associated image.
#[derive(Debug, Clone)]
pub struct Level {
    /// Index of the directory in the file.
    pub ifd: usize,
    /// Width in pixels.
    pub width: u32,
    /// Height in pixels.
    pub height: u32,
    /// Chunk (tile, or strip) width and height; a strip is as wide as the image.
    pub chunk: (u32, u32),
    /// Whether the chunks are tiles (otherwise strips).
    pub tiled: bool,
    /// TIFF compression code.
    pub compression: u16,
    /// TIFF photometric interpretation.
    pub photometric: u16,
    /// The ImageDescription tag, or empty.
    pub description: String,
    /// NewSubfileType (1: reduced image, as Aperio labels use).
    pub subfile_type: u32,
    /// Whether samples are stored in separate planes (PlanarConfiguration 2).
    pub planar_separate: bool,
    offsets: Vec<u64>,
    counts: Vec<u64>,
    jpeg_tables: Option<Vec<u8>>,
}

impl Level {
    /// Chunks per row of chunks.
    pub fn chunks_across(&self) -> u32 {
        self.width.div_ceil(self.chunk.0)
    }

    /// Chunks per column of chunks.
    pub fn chunks_down(&self) -> u32 {
        self.height.div_ceil(self.chunk.1)
    }

    /// The pixel rectangle `(x, y, w, h)` chunk `index` covers, clipped to the image.
    pub fn chunk_rect(&self, index: u32) -> (u32, u32, u32, u32) {
        let across = self.chunks_across();
        let (x, y) = ((index % across) * self.chunk.0, (index / across) * self.chunk.1);
        (x, y, self.chunk.0.min(self.width - x), self.chunk.1.min(self.height - y))
    }

    /// Whether this directory is an Aperio label or macro (slide overview) image.
    pub fn is_associated(&self) -> bool {
        let d = self.description.to_ascii_lowercase();
        d.contains("label") || d.contains("macro")
    }
}

/// An open TIFF: its directories, the pixel size, and the decoder positioned on one of them.
pub struct TiffFile {
    decoder: Decoder<Box<dyn ReadSeek>>,
    name: String,
    file_len: u64,
    /// Every directory that could be parsed, in file order (the first is the base level).
    pub levels: Vec<Level>,
}

fn tiff_err(name: &str, e: tiff::TiffError) -> Error {
    let msg = match e {
        tiff::TiffError::IoError(ref io) if io.kind() == std::io::ErrorKind::UnexpectedEof => {
            "truncated TIFF: the file ends inside its header or a directory".to_string()
        }
        tiff::TiffError::FormatError(tiff::TiffFormatError::TiffSignatureNotFound) => {
            "not a TIFF file (no II/MM signature)".to_string()
        }
        other => format!("invalid or unsupported TIFF: {other}"),
    };
    Error::format(name, msg)
}

impl TiffFile {
    /// Opens a TIFF from `reader`; `name` (a path) is used in every error.
    pub fn open(mut reader: Box<dyn ReadSeek>, name: &str) -> Result<Self> {
        let file_len = reader.seek(SeekFrom::End(0)).map_err(|e| Error::io(name, e))?;
        reader.seek(SeekFrom::Start(0)).map_err(|e| Error::io(name, e))?;
        if file_len == 0 {
            return Err(Error::format(name, "empty file (0 bytes), not a slide"));
        }
        let mut limits = Limits::default();
        limits.ifd_value_size = 64 << 20;
        limits.decoding_buffer_size = MAX_CHUNK_BYTES as usize;
        let decoder = Decoder::new(reader).map_err(|e| tiff_err(name, e))?.with_limits(limits);
        let mut file = Self { decoder, name: name.to_string(), file_len, levels: Vec::new() };
        for ifd in 0..4096 {
            if ifd > 0 {
                if !file.decoder.more_images() {
                    break;
                }
                if file.decoder.seek_to_image(ifd).is_err() {
                    break; // a damaged later directory: keep what was read
                }
            }
            match file.read_level(ifd) {
                Ok(level) => file.levels.push(level),
                Err(e) if ifd == 0 => return Err(e),
                Err(_) => {}
            }
        }
        file.check_base()?;
        Ok(file)
    }

    fn read_level(&mut self, ifd: usize) -> Result<Level> {
        let name = self.name.clone();
        let d = &mut self.decoder;
        let fail = |e| tiff_err(&name, e);
        let (width, height) = d.dimensions().map_err(fail)?;
        let pixels = u64::from(width) * u64::from(height);
        if ifd == 0 && pixels > MAX_SLIDE_PIXELS {
            return Err(Error::format(
                &name,
                format!("base level is {width}x{height} = {pixels} pixels, above the limit of {MAX_SLIDE_PIXELS}"),
            ));
        }
        let tiled = d.find_tag(Tag::TileWidth).map_err(fail)?.is_some();
        let chunk = if tiled {
            (
                d.get_tag_u32(Tag::TileWidth).map_err(fail)?,
                d.get_tag_u32(Tag::TileLength).map_err(fail)?,
            )
        } else {
            let rows = d.find_tag_unsigned::<u32>(Tag::RowsPerStrip).map_err(fail)?;
            (width, rows.unwrap_or(height).clamp(1, height))
        };
        let (off_tag, count_tag) = if tiled {
            (Tag::TileOffsets, Tag::TileByteCounts)
        } else {
            (Tag::StripOffsets, Tag::StripByteCounts)
        };
        let offsets = d.get_tag_u64_vec(off_tag).map_err(fail)?;
        let counts = d.get_tag_u64_vec(count_tag).map_err(fail)?;
        let compression = d.find_tag_unsigned::<u16>(Tag::Compression).map_err(fail)?.unwrap_or(1);
        let photometric =
            d.find_tag_unsigned::<u16>(Tag::PhotometricInterpretation).map_err(fail)?.unwrap_or(1);
        let description = match d.find_tag(Tag::ImageDescription).map_err(fail)? {
            Some(v) => v.into_string().unwrap_or_default(),
            None => String::new(),
        };
        let subfile_type =
            d.find_tag_unsigned::<u32>(Tag::NewSubfileType).map_err(fail)?.unwrap_or(0);
        let planar_separate =
            d.find_tag_unsigned::<u16>(Tag::PlanarConfiguration).map_err(fail)? == Some(2);
        let jpeg_tables = match d.find_tag(Tag::JPEGTables).map_err(fail)? {
            Some(v) => Some(v.into_u8_vec().map_err(fail)?),
            None => None,
        };
        let level = Level {
            ifd,
            width,
            height,
            chunk,
            tiled,
            compression,
            photometric,
            description,
            subfile_type,
            planar_separate,
            offsets,
            counts,
            jpeg_tables,
        };
        let expected = u64::from(level.chunks_across()) * u64::from(level.chunks_down());
        if chunk.0 == 0 || chunk.1 == 0 || (level.offsets.len() as u64) < expected {
            return Err(Error::format(
                &self.name,
                format!(
                    "directory {ifd}: {} chunk offsets for {expected} chunks of {}x{}",
                    level.offsets.len(),
                    chunk.0,
                    chunk.1
                ),
            ));
        }
        if level.counts.len() < level.offsets.len() {
            return Err(Error::format(&self.name, format!("directory {ifd}: too few byte counts")));
        }
        Ok(level)
    }

    /// Refuses a base level this reader cannot decode, with the reason.
    fn check_base(&mut self) -> Result<()> {
        let base = &self.levels[0];
        if !SUPPORTED.contains(&base.compression) {
            return Err(Error::format(
                &self.name,
                format!(
                    "unsupported TIFF compression {} ({}); supported: none, LZW, Deflate, PackBits, JPEG",
                    base.compression,
                    compression_name(base.compression)
                ),
            ));
        }
        let bytes = u64::from(base.chunk.0) * u64::from(base.chunk.1) * 8;
        if bytes > MAX_CHUNK_BYTES {
            return Err(Error::format(
                &self.name,
                format!(
                    "its {} are {}x{} pixels, too large to read piecewise (limit {} MiB per chunk)",
                    if base.tiled { "tiles" } else { "strips" },
                    base.chunk.0,
                    base.chunk.1,
                    MAX_CHUNK_BYTES >> 20
                ),
            ));
        }
        if base.planar_separate {
            return Err(Error::format(
                &self.name,
                "unsupported TIFF layout: colour planes stored separately (PlanarConfiguration 2)",
            ));
        }
        if base.compression != COMPRESSION_JPEG {
            // Let the tiff crate validate the sample layout now, not on the first tile.
            self.decoder.seek_to_image(base.ifd).map_err(|e| tiff_err(&self.name, e))?;
            let ct = self.decoder.colortype().map_err(|e| tiff_err(&self.name, e))?;
            rgb_layout(ct).ok_or_else(|| {
                Error::format(
                    &self.name,
                    format!("unsupported pixel layout {ct:?} (need 8/16-bit gray, RGB or RGBA)"),
                )
            })?;
        }
        Ok(())
    }

    /// The file name used in errors.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Decodes chunk `index` of level `level` (an index into [`Self::levels`]) to RGB, cropped to
    /// the image.
    pub fn read_chunk(&mut self, level: usize, index: u32) -> Result<RgbImage> {
        let lv = &self.levels[level];
        let (_, _, w, h) = lv.chunk_rect(index);
        let what = || {
            format!("{} {index} of directory {}", if lv.tiled { "tile" } else { "strip" }, lv.ifd)
        };
        let (offset, count) = (lv.offsets[index as usize], lv.counts[index as usize]);
        if count == 0 {
            return Err(Error::format(
                &self.name,
                format!("{} has no data (byte count 0)", what()),
            ));
        }
        if offset.saturating_add(count) > self.file_len {
            return Err(Error::format(
                &self.name,
                format!(
                    "truncated file: {} lies at bytes {offset}..{} but the file has {} bytes",
                    what(),
                    offset.saturating_add(count),
                    self.file_len
                ),
            ));
        }
        if lv.compression == COMPRESSION_JPEG {
            let (tables, photometric, full) = (lv.jpeg_tables.clone(), lv.photometric, lv.chunk);
            let mut data = vec![0u8; count as usize];
            let r = self.decoder.inner();
            r.seek(SeekFrom::Start(offset)).map_err(|e| Error::io(&self.name, e))?;
            r.read_exact(&mut data).map_err(|e| Error::io(&self.name, e))?;
            let stream = splice_tables(tables.as_deref(), data);
            return decode_jpeg_chunk(&stream, photometric, full, (w, h))
                .map_err(|m| Error::format(&self.name, format!("{}: {m}", what())));
        }
        if !SUPPORTED.contains(&lv.compression) {
            return Err(Error::format(
                &self.name,
                format!("{}: unsupported compression {}", what(), compression_name(lv.compression)),
            ));
        }
        let ifd = lv.ifd;
        let name = self.name.clone();
        self.decoder.seek_to_image(ifd).map_err(|e| tiff_err(&name, e))?;
        let ct = self.decoder.colortype().map_err(|e| tiff_err(&name, e))?;
        let (cw, ch) = self.decoder.chunk_data_dimensions(index);
        let data = self.decoder.read_chunk(index).map_err(|e| {
            Error::format(&name, format!("{} of directory {ifd}: cannot decode: {e}", index))
        })?;
        let rgb = to_rgb(ct, data, cw, ch)
            .ok_or_else(|| Error::format(&name, format!("unsupported pixel layout {ct:?}")))?;
        Ok(crop(rgb, w, h))
    }
}

/// Puts the shared `JPEGTables` (SOI, tables, EOI) in front of a chunk's own stream (SOI, ...).
pub fn splice_tables(tables: Option<&[u8]>, data: Vec<u8>) -> Vec<u8> {
    match tables {
        Some(t) if t.len() >= 4 && data.len() >= 2 => {
            let mut out = Vec::with_capacity(t.len() + data.len());
            out.extend_from_slice(&t[..t.len() - 2]);
            out.extend_from_slice(&data[2..]);
            out
        }
        _ => data,
    }
}

/// Decodes one JPEG chunk (nominally `full` pixels, e.g. the tile size; larger streams are
/// refused) to RGB, cropped to `(w, h)` (the part inside the image). With TIFF `photometric` RGB
/// the stream's samples are RGB already and are not colour-converted.
pub fn decode_jpeg_chunk(
    stream: &[u8],
    photometric: u16,
    full: (u32, u32),
    (w, h): (u32, u32),
) -> std::result::Result<RgbImage, String> {
    let opts = DecoderOptions::default()
        .set_max_width(full.0.max(w).max(1) as usize + 16)
        .set_max_height(full.1.max(h).max(1) as usize + 16);
    let mut dec = JpegDecoder::new_with_options(ZCursor::new(stream), opts);
    dec.decode_headers().map_err(|e| format!("JPEG: {e}"))?;
    let input = dec.input_colorspace().unwrap_or(ColorSpace::YCbCr);
    let out = match (photometric, input) {
        (PHOTOMETRIC_RGB, ColorSpace::YCbCr) => ColorSpace::YCbCr, // samples are RGB: keep them
        (PHOTOMETRIC_RGB | PHOTOMETRIC_YCBCR, ColorSpace::YCbCr | ColorSpace::RGB) => {
            ColorSpace::RGB
        }
        (p, c) => {
            return Err(format!("JPEG colour space {c:?} with photometric {p} is not supported"))
        }
    };
    dec.set_options(opts.jpeg_set_out_colorspace(out));
    let pixels = dec.decode().map_err(|e| format!("JPEG: {e}"))?;
    let info = dec.info().ok_or("JPEG: no frame header")?;
    let (jw, jh) = (u32::from(info.width), u32::from(info.height));
    if jw < w || jh < h || pixels.len() != jw as usize * jh as usize * 3 {
        return Err(format!(
            "JPEG is {jw}x{jh} with {} values, expected {w}x{h} RGB",
            pixels.len()
        ));
    }
    let img = RgbImage::from_raw(jw, jh, pixels).ok_or("JPEG: bad buffer size")?;
    Ok(crop(img, w, h))
}

/// `(channels, 16-bit)` of a colour type this reader can turn into RGB.
fn rgb_layout(ct: ColorType) -> Option<(usize, bool)> {
    match ct {
        ColorType::Gray(8) => Some((1, false)),
        ColorType::Gray(16) => Some((1, true)),
        ColorType::RGB(8) => Some((3, false)),
        ColorType::RGB(16) => Some((3, true)),
        ColorType::RGBA(8) => Some((4, false)),
        ColorType::RGBA(16) => Some((4, true)),
        _ => None,
    }
}

/// Converts a decoded chunk to RGB8 (alpha dropped, gray replicated, 16-bit to its high byte).
fn to_rgb(ct: ColorType, data: DecodingResult, w: u32, h: u32) -> Option<RgbImage> {
    let (ch, _) = rgb_layout(ct)?;
    let samples: Vec<u8> = match data {
        DecodingResult::U8(v) => v,
        DecodingResult::U16(v) => v.into_iter().map(|s| (s >> 8) as u8).collect(),
        _ => return None,
    };
    let n = w as usize * h as usize;
    if samples.len() < n * ch {
        return None;
    }
    let mut out = Vec::with_capacity(n * 3);
    for px in samples.chunks_exact(ch).take(n) {
        if ch < 3 {
            out.extend_from_slice(&[px[0]; 3]);
        } else {
            out.extend_from_slice(&px[..3]);
        }
    }
    RgbImage::from_raw(w, h, out)
}

/// The top-left `w` x `h` of `img` (itself when it already has that size).
pub fn crop(img: RgbImage, w: u32, h: u32) -> RgbImage {
    if img.width() == w && img.height() == h {
        return img;
    }
    image::imageops::crop_imm(&img, 0, 0, w.min(img.width()), h.min(img.height())).to_image()
}

/// The pixel size in µm from an Aperio description (`MPP = 0.4990`).
pub fn aperio_mpp(description: &str) -> Option<f64> {
    description.split('|').find_map(|field| {
        let (key, value) = field.split_once('=')?;
        (key.trim() == "MPP").then(|| value.trim().parse::<f64>().ok()).flatten()
    })
}

impl TiffFile {
    /// The base level's pixel size in µm: Aperio `MPP`, else X resolution with a centimetre or
    /// inch unit. Values outside 0.01 to 100 µm/px (e.g. a default 72 dpi) are ignored.
    pub fn mpp(&mut self) -> Option<f64> {
        let plausible = |v: f64| (v.is_finite() && (0.01..=100.0).contains(&v)).then_some(v);
        if let Some(v) = aperio_mpp(&self.levels[0].description).and_then(plausible) {
            return Some(v);
        }
        self.decoder.seek_to_image(self.levels[0].ifd).ok()?;
        let unit = self.decoder.find_tag_unsigned::<u16>(Tag::ResolutionUnit).ok()?.unwrap_or(2);
        let res = match self.decoder.find_tag(Tag::XResolution).ok()?? {
            tiff::decoder::ifd::Value::Rational(n, d) if d > 0 => f64::from(n) / f64::from(d),
            tiff::decoder::ifd::Value::Double(v) => v,
            tiff::decoder::ifd::Value::Float(v) => f64::from(v),
            _ => return None,
        };
        let per_unit_um = match unit {
            2 => 25_400.0,
            3 => 10_000.0,
            _ => return None,
        };
        plausible(per_unit_um / res)
    }
}
