//! Image decoding and preprocessing, exactly as the PyTorch references do it.
//!
//! The pipeline is the one shared by torchvision `Resize(int, BICUBIC) + CenterCrop + ToTensor +
//! Normalize` on a PIL image, open_clip's eval transform, timm's eval transform (`Resize(floor(size
//! / crop_pct))`) and HF's `CLIPImageProcessorPil`: decode to RGB like `Image.convert("RGB")`,
//! resize the shortest side with a port of Pillow's `Image.resize(.., BICUBIC)` (libImaging/
//! Resample.c: separable passes in Pillow 13's order, antialiased support, 22-bit fixed-point
//! coefficients, uint8 rounding and clipping after each pass), centre-crop with torchvision's
//! offsets and zero padding, then `(x / 255 - mean) / std` in f32, CHW.
//!
//! Measured agreement with Pillow 13.0 + torchvision 0.29 (tests/preprocess.rs; fixtures from
//! tests/reference/check_preprocess.py and make_fixtures.py): the resize is bit-exact (max abs diff
//! 0 uint8 levels) on every fixture case (up/down-sampling, non-square, tall, padded) and on 60
//! random-shape resizes of H&E crops; the normalised tensors equal torchvision's exactly (max abs
//! diff 0, cosine 1.0), including OpenAI CLIP 224, CONCH 448, timm crop_pct 0.875 and a TIFF tile.
//! JPEG decoding (zune-jpeg via `image`) differs from PIL's libjpeg-turbo: max 4 levels, mean 0.32,
//! 77% of values exact on a q90 4:2:0 crop; the final tensor then has cosine 0.99996.
//! HF's default `CLIPImageProcessor` in transformers 5 (torchvision on tensors, antialias=True,
//! floored crop offsets) is itself off PIL by up to ~2 levels (cosine 0.99999); we follow PIL.

use std::io::Cursor;
use std::ops::Range;
use std::path::Path;

use burn::tensor::{Device, Tensor, TensorData};
use image::{DynamicImage, ImageDecoder, ImageFormat, ImageReader, Limits, RgbImage};

use crate::{Error, Result};

/// Images with more pixels than this (2^28, e.g. 16384 x 16384) are refused before decoding,
/// unless [`set_max_pixels`] changed the limit.
pub const DEFAULT_MAX_PIXELS: u64 = 1 << 28;

static MAX_PIXELS: std::sync::atomic::AtomicU64 =
    std::sync::atomic::AtomicU64::new(DEFAULT_MAX_PIXELS);

/// The process-wide decompression-bomb limit (pixels per image) that image loading uses, like
/// Pillow's `Image.MAX_IMAGE_PIXELS`: [`DEFAULT_MAX_PIXELS`] unless [`set_max_pixels`] changed it.
pub fn max_pixels() -> u64 {
    MAX_PIXELS.load(std::sync::atomic::Ordering::Relaxed)
}

/// Sets the limit [`max_pixels`] returns (the CLI's `--max-pixels`). At least 1.
pub fn set_max_pixels(pixels: u64) {
    MAX_PIXELS.store(pixels.max(1), std::sync::atomic::Ordering::Relaxed);
}

/// OpenAI CLIP normalisation mean (as Python's f64 literals rounded to f32, like torch does).
pub const OPENAI_CLIP_MEAN: [f32; 3] =
    [0.48145466_f64 as f32, 0.4578275_f64 as f32, 0.40821073_f64 as f32];
/// OpenAI CLIP normalisation standard deviation.
pub const OPENAI_CLIP_STD: [f32; 3] =
    [0.26862954_f64 as f32, 0.26130258_f64 as f32, 0.27577711_f64 as f32];
/// ImageNet normalisation mean.
pub const IMAGENET_MEAN: [f32; 3] = [0.485_f64 as f32, 0.456_f64 as f32, 0.406_f64 as f32];
/// ImageNet normalisation standard deviation.
pub const IMAGENET_STD: [f32; 3] = [0.229_f64 as f32, 0.224_f64 as f32, 0.225_f64 as f32];

/// How an image becomes a model input: shortest side resized to `resize` (PIL bicubic), a square
/// `crop` x `crop` taken from the centre, then normalised per channel with `mean` and `std`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PreprocessConfig {
    /// Length of the shortest side after resizing (torchvision `Resize(int)`).
    pub resize: usize,
    /// Side of the square centre crop (torchvision `CenterCrop`), the model's input size.
    pub crop: usize,
    /// Per-channel mean subtracted after scaling to [0, 1].
    pub mean: [f32; 3],
    /// Per-channel standard deviation divided by after subtracting the mean.
    pub std: [f32; 3],
    /// Centre-crop offsets rounded down, as Hugging Face's `CLIPImageProcessor` does, instead of
    /// torchvision's round-half-to-even.
    pub floor_crop: bool,
}

impl PreprocessConfig {
    /// [`OPENAI_CLIP_MEAN`], as an associated constant.
    pub const OPENAI_CLIP_MEAN: [f32; 3] = OPENAI_CLIP_MEAN;
    /// [`OPENAI_CLIP_STD`], as an associated constant.
    pub const OPENAI_CLIP_STD: [f32; 3] = OPENAI_CLIP_STD;
    /// [`IMAGENET_MEAN`], as an associated constant.
    pub const IMAGENET_MEAN: [f32; 3] = IMAGENET_MEAN;
    /// [`IMAGENET_STD`], as an associated constant.
    pub const IMAGENET_STD: [f32; 3] = IMAGENET_STD;

    /// A config from its four fields.
    pub fn new(resize: usize, crop: usize, mean: [f32; 3], std: [f32; 3]) -> Self {
        Self { resize, crop, mean, std, floor_crop: false }
    }

    /// OpenAI CLIP / open_clip / HF `CLIPImageProcessor`: resize to `size`, crop `size`, CLIP stats.
    pub fn openai_clip(size: usize) -> Self {
        Self::new(size, size, OPENAI_CLIP_MEAN, OPENAI_CLIP_STD)
    }

    /// Resize to `size`, crop `size`, ImageNet stats (e.g. timm models with `crop_pct = 1`).
    pub fn imagenet(size: usize) -> Self {
        Self::new(size, size, IMAGENET_MEAN, IMAGENET_STD)
    }

    /// Resize to `size`, crop `size`, mean 0.5 and std 0.5 (maps [0, 1] to [-1, 1]; SigLIP, ViT-style).
    pub fn half(size: usize) -> Self {
        Self::new(size, size, [0.5; 3], [0.5; 3])
    }

    /// timm's eval transform: `resize = floor(input_size / crop_pct)`, `crop = input_size`. A
    /// `crop_pct` that is not a positive finite number gives `resize = 0`, which [`Self::validate`]
    /// rejects.
    pub fn from_crop_pct(input_size: usize, crop_pct: f64, mean: [f32; 3], std: [f32; 3]) -> Self {
        let resize = if crop_pct.is_finite() && crop_pct > 0.0 {
            // Python: math.floor(img_size / crop_pct); `as` saturates on overflow.
            (input_size as f64 / crop_pct).floor() as usize
        } else {
            0
        };
        Self::new(resize, input_size, mean, std)
    }

    /// Checks that the sizes are positive and the statistics finite with positive `std`.
    pub fn validate(&self) -> Result<()> {
        let bad = |m: String| Err(Error::msg(format!("invalid preprocessing config: {m}")));
        if self.resize == 0 || self.crop == 0 {
            return bad(format!(
                "resize ({}) and crop ({}) must be positive",
                self.resize, self.crop
            ));
        }
        if self.crop > 1 << 15 || self.resize > 1 << 20 {
            return bad(format!(
                "resize {} / crop {} is implausibly large",
                self.resize, self.crop
            ));
        }
        if self.mean.iter().any(|m| !m.is_finite())
            || self.std.iter().any(|s| !(s.is_finite() && *s > 0.0))
        {
            return bad(format!(
                "mean {:?} must be finite and std {:?} positive",
                self.mean, self.std
            ));
        }
        Ok(())
    }
}

/// Reads and decodes the image file at `path` to RGB (see [`decode_rgb`]).
pub fn load_rgb(path: &Path, max_pixels: u64) -> Result<RgbImage> {
    let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    decode_rgb(&bytes, &path.display().to_string(), max_pixels)
}

/// Decodes a PNG, JPEG or TIFF held in `bytes` to 8-bit RGB, like PIL's `Image.open(..).convert("RGB")`.
///
/// `name` (a path or an input's name) is used in errors and, if the content's signature is not
/// recognised, for its extension. The image's dimensions are read from its header first, and images
/// with more than `max_pixels` pixels are refused before any pixel is decoded (decompression bombs).
/// Alpha is dropped (not composited), grayscale is replicated to three channels, palettes are
/// expanded. 16-bit samples keep their high byte (`v >> 8`), which is what PIL does for 16-bit RGB(A)
/// PNGs; for 16-bit grayscale PIL instead clips `v` to 255, which we deliberately do not copy.
/// EXIF orientation is ignored, as PIL does without `ImageOps.exif_transpose`.
pub fn decode_rgb(bytes: &[u8], name: &str, max_pixels: u64) -> Result<RgbImage> {
    if bytes.is_empty() {
        return Err(Error::format(name, "empty file (0 bytes), not an image"));
    }
    let mut reader = ImageReader::new(Cursor::new(bytes))
        .with_guessed_format()
        .map_err(|e| Error::io(name, e))?;
    if reader.format().is_none() {
        match ImageFormat::from_path(name) {
            Ok(f) => reader.set_format(f),
            Err(_) => {
                return Err(Error::format(
                    name,
                    "unrecognised image format (expected PNG, JPEG or TIFF)",
                ))
            }
        }
    }
    let fail = |e: image::ImageError| Error::format(name, format!("cannot decode image: {e}"));
    let too_many = |w: u32, h: u32| {
        let pixels = u64::from(w) * u64::from(h);
        (pixels > max_pixels).then(|| Error::format(
            name,
            format!("image is {w}x{h} = {pixels} pixels, above the limit of {max_pixels} (refused before decoding)"),
        ))
    };
    // Header only: no limits here, so that our own pixel-count message is the one reported.
    reader.no_limits();
    let mut decoder = match reader.into_decoder() {
        Ok(d) => d,
        // On wasm32 the PNG decoder refuses, as it reads the header, an image whose pixels
        // cannot be addressed in 32 bits: give the same message as above.
        Err(e @ image::ImageError::Limits(_)) => {
            return Err(png_size(bytes)
                .and_then(|(w, h)| too_many(w, h))
                .unwrap_or_else(|| fail(e)))
        }
        Err(e) => return Err(fail(e)),
    };
    let (w, h) = decoder.dimensions();
    let pixels = u64::from(w) * u64::from(h);
    if let Some(e) = too_many(w, h) {
        return Err(e);
    }
    if pixels == 0 {
        return Err(Error::format(name, format!("image has no pixels ({w}x{h})")));
    }
    // Now bound the decoder's allocations: up to 16-bit RGBA output plus working buffers.
    let mut limits = Limits::default();
    limits.max_alloc = Some((max_pixels.saturating_mul(8)).saturating_add(64 << 20).max(512 << 20));
    decoder.set_limits(limits).map_err(fail)?;
    let img = DynamicImage::from_decoder(decoder).map_err(fail)?;
    to_rgb8(img).ok_or_else(|| Error::format(name, "decoded pixel buffer has an unexpected size"))
}

/// The width and height in a PNG's `IHDR` chunk, which the signature must precede.
fn png_size(bytes: &[u8]) -> Option<(u32, u32)> {
    if bytes.len() < 24 || !bytes.starts_with(b"\x89PNG\r\n\x1a\n") || &bytes[12..16] != b"IHDR" {
        return None;
    }
    let be = |at: usize| u32::from_be_bytes(bytes[at..at + 4].try_into().expect("4 bytes"));
    Some((be(16), be(20)))
}

/// PIL-like `convert("RGB")` of a decoded image (see [`decode_rgb`] for the 16-bit rule).
fn to_rgb8(img: DynamicImage) -> Option<RgbImage> {
    fn expand<T: Copy>(
        w: u32,
        h: u32,
        raw: &[T],
        ch: usize,
        f: impl Fn(T) -> u8,
    ) -> Option<RgbImage> {
        let mut out = Vec::with_capacity(raw.len() / ch.max(1) * 3);
        for px in raw.chunks_exact(ch) {
            if ch < 3 {
                let v = f(px[0]);
                out.extend_from_slice(&[v, v, v]);
            } else {
                out.extend_from_slice(&[f(px[0]), f(px[1]), f(px[2])]);
            }
        }
        RgbImage::from_raw(w, h, out)
    }
    let (w, h) = (img.width(), img.height());
    let ch = usize::from(img.color().channel_count());
    let hi = |v: u16| (v >> 8) as u8;
    match img {
        DynamicImage::ImageRgb8(i) => Some(i),
        DynamicImage::ImageLuma8(i) => expand(w, h, i.as_raw(), ch, |v| v),
        DynamicImage::ImageLumaA8(i) => expand(w, h, i.as_raw(), ch, |v| v),
        DynamicImage::ImageRgba8(i) => expand(w, h, i.as_raw(), ch, |v| v),
        DynamicImage::ImageLuma16(i) => expand(w, h, i.as_raw(), ch, hi),
        DynamicImage::ImageLumaA16(i) => expand(w, h, i.as_raw(), ch, hi),
        DynamicImage::ImageRgb16(i) => expand(w, h, i.as_raw(), ch, hi),
        DynamicImage::ImageRgba16(i) => expand(w, h, i.as_raw(), ch, hi),
        other => Some(other.to_rgb8()),
    }
}

/// Output `(width, height)` of torchvision `Resize(size)` for a `w` x `h` image: the shortest side
/// becomes `size`, the longest `int(size * long / short)` (truncated). Saturates instead of overflowing.
pub fn resized_size(w: u32, h: u32, size: usize) -> (usize, usize) {
    let (short, long) = if w <= h { (w, h) } else { (h, w) };
    if short == 0 {
        return (0, 0);
    }
    // Python: int(size * long / short); the product is exact, the division correctly rounded.
    let new_long = ((size as u128 * u128::from(long)) as f64 / f64::from(short)) as usize;
    if w <= h {
        (size, new_long)
    } else {
        (new_long, size)
    }
}

/// Pillow's fixed-point precision for 8-bit images: `32 - 8 - 2` bits.
const PRECISION_BITS: u32 = 32 - 8 - 2;

/// Pillow's bicubic kernel (`a = -0.5`), written in Pillow's operation order for bitwise-equal doubles.
fn bicubic_filter(x: f64) -> f64 {
    const A: f64 = -0.5;
    let x = if x < 0.0 { -x } else { x };
    if x < 1.0 {
        return ((A + 2.0) * x - (A + 3.0)) * x * x + 1.0;
    }
    if x < 2.0 {
        return (((x - 5.0) * x + 8.0) * x - 4.0) * A;
    }
    0.0
}

/// Fixed-point filter taps for a range of output indices along one axis (Pillow's
/// `precompute_coeffs` + `normalize_coeffs_8bpc`, restricted to `range`).
struct Coeffs {
    /// Per output index in the range: first source index and number of taps.
    bounds: Vec<(usize, usize)>,
    /// `ksize` taps per output index, in units of 2^-PRECISION_BITS.
    k: Vec<i32>,
    ksize: usize,
}

impl Coeffs {
    fn new(in_size: usize, out_size: usize, range: Range<usize>) -> Self {
        // Pillow: scale = (double)(in1 - in0) / outSize, with the box edges as C floats.
        let scale = f64::from(in_size as f32) / out_size as f64;
        let filterscale = if scale < 1.0 { 1.0 } else { scale };
        let support = 2.0 * filterscale;
        let ksize = (support.ceil() as usize).saturating_mul(2).saturating_add(1).min(in_size + 1);
        let mut bounds = Vec::with_capacity(range.len());
        let mut k = vec![0i32; range.len() * ksize];
        let mut w = vec![0f64; ksize];
        for (i, xx) in range.enumerate() {
            let center = 0.0 + (xx as f64 + 0.5) * scale;
            let ss = 1.0 / filterscale;
            // (int) casts truncate toward zero, like Rust's `as` (which also saturates).
            let xmin = ((center - support + 0.5) as i64).max(0);
            let xmax = ((center + support + 0.5) as i64).min(in_size as i64);
            let n = ((xmax - xmin).max(0) as usize).min(ksize);
            let mut ww = 0.0;
            for (x, wx) in w.iter_mut().enumerate().take(n) {
                *wx = bicubic_filter(((x as i64 + xmin) as f64 - center + 0.5) * ss);
                ww += *wx;
            }
            for (x, &wx) in w.iter().enumerate().take(n) {
                let v = if ww != 0.0 { wx / ww } else { wx };
                let scaled = v * f64::from(1u32 << PRECISION_BITS);
                k[i * ksize + x] =
                    if v < 0.0 { (-0.5 + scaled) as i32 } else { (0.5 + scaled) as i32 };
            }
            bounds.push((xmin as usize, n));
        }
        Self { bounds, k, ksize }
    }

    fn taps(&self, i: usize) -> (usize, &[i32]) {
        let (start, n) = self.bounds[i];
        (start, &self.k[i * self.ksize..i * self.ksize + n])
    }

    /// Source indices `[first, last)` used by the whole range.
    fn span(&self) -> Range<usize> {
        let first = self.bounds.iter().map(|b| b.0).min().unwrap_or(0);
        let last = self.bounds.iter().map(|b| b.0 + b.1).max().unwrap_or(first);
        first..last
    }
}

/// Pillow's `clip8`: drop the fraction (arithmetic shift) and saturate to 0..=255.
fn clip8(acc: i32) -> u8 {
    (acc >> PRECISION_BITS).clamp(0, 255) as u8
}

/// One output sample: Pillow accumulates in 32-bit ints starting from half a unit (rounding).
fn convolve(src: impl Iterator<Item = u8>, taps: &[i32]) -> u8 {
    let mut acc: i32 = 1 << (PRECISION_BITS - 1);
    for (p, &k) in src.zip(taps) {
        acc = acc.wrapping_add(i32::from(p).wrapping_mul(k));
    }
    clip8(acc)
}

/// Pillow >= 13 runs the vertical pass first when the height loses more than twice as many pixels
/// as the width (`in_h - out_h > 2 * (in_w - out_w)`, height shrinking; Pillow PR #9549, checked
/// against Pillow 13.0 on 1,500 random shapes). Pillow <= 12 always runs the horizontal pass first;
/// the two orders differ by a level or two on such shapes only (in CLIP's aspect-preserving resize:
/// images more than about twice as tall as wide).
pub fn pillow_vertical_first(in_w: usize, in_h: usize, out_w: usize, out_h: usize) -> bool {
    out_h < in_h && (in_h - out_h) as i128 > 2 * (in_w as i128 - out_w as i128)
}

/// One horizontal pass: rows `rows` of `buf` (packed RGB, `buf_w` wide, its column 0 being source
/// column `x0`) to output columns `cols` (with `taps` for them, or a copy when there is no pass).
fn pass_h(
    buf: &[u8],
    buf_w: usize,
    x0: usize,
    rows: Range<usize>,
    taps: Option<&Coeffs>,
    cols: Range<usize>,
) -> Vec<u8> {
    let mut out = Vec::with_capacity(rows.len() * cols.len() * 3);
    for r in rows {
        let line = &buf[r * buf_w * 3..(r + 1) * buf_w * 3];
        for (i, xx) in cols.clone().enumerate() {
            for c in 0..3 {
                out.push(match taps {
                    Some(t) => {
                        let (start, k) = t.taps(i);
                        convolve(line[(start - x0) * 3 + c..].iter().step_by(3).copied(), k)
                    }
                    None => line[(xx - x0) * 3 + c],
                });
            }
        }
    }
    out
}

/// One vertical pass: columns `cols` of `buf` (packed RGB, `buf_w` wide, its row 0 being source row
/// `y0`) to output rows `rows` (with `taps` for them, or a copy when there is no pass).
fn pass_v(
    buf: &[u8],
    buf_w: usize,
    y0: usize,
    cols: Range<usize>,
    taps: Option<&Coeffs>,
    rows: Range<usize>,
) -> Vec<u8> {
    let mut out = Vec::with_capacity(rows.len() * cols.len() * 3);
    let stride = buf_w * 3;
    for (j, yy) in rows.enumerate() {
        for bc in cols.clone() {
            for c in 0..3 {
                out.push(match taps {
                    Some(t) => {
                        let (start, k) = t.taps(j);
                        convolve(
                            buf[(start - y0) * stride + bc * 3 + c..]
                                .iter()
                                .step_by(stride)
                                .copied(),
                            k,
                        )
                    }
                    None => buf[(yy - y0) * stride + bc * 3 + c],
                });
            }
        }
    }
    out
}

/// The window `cols` x `rows` of PIL's `img.resize((out_w, out_h), BICUBIC)`, as packed RGB rows.
/// Every output pixel is computed exactly as Pillow computes it (same pass order, same fixed-point
/// arithmetic, uint8 between passes); pixels outside the window are skipped.
fn resize_window(
    img: &RgbImage,
    out_w: usize,
    out_h: usize,
    cols: Range<usize>,
    rows: Range<usize>,
) -> Vec<u8> {
    let (in_w, in_h) = (img.width() as usize, img.height() as usize);
    let src = img.as_raw();
    let horiz = (out_w != in_w).then(|| Coeffs::new(in_w, out_w, cols.clone()));
    let vert = (out_h != in_h).then(|| Coeffs::new(in_h, out_h, rows.clone()));
    if pillow_vertical_first(in_w, in_h, out_w, out_h) {
        // Vertical pass over the source columns the horizontal pass needs, then horizontal.
        let src_cols = horiz.as_ref().map_or(cols.clone(), Coeffs::span);
        let tmp = pass_v(src, in_w, 0, src_cols.clone(), vert.as_ref(), rows.clone());
        pass_h(&tmp, src_cols.len(), src_cols.start, 0..rows.len(), horiz.as_ref(), cols)
    } else {
        // Horizontal pass over the source rows the vertical pass needs (Pillow's ybox), then vertical.
        let src_rows = vert.as_ref().map_or(rows.clone(), Coeffs::span);
        let tmp = pass_h(src, in_w, 0, src_rows.clone(), horiz.as_ref(), cols.clone());
        pass_v(&tmp, cols.len(), src_rows.start, 0..cols.len(), vert.as_ref(), rows)
    }
}

/// PIL's `img.resize((width, height), Image.BICUBIC)` for an RGB image, bit-exact (same algorithm and
/// fixed-point arithmetic as Pillow's libImaging/Resample.c). Empty sizes give an empty image.
pub fn resize_bicubic(img: &RgbImage, width: u32, height: u32) -> RgbImage {
    let (w, h) = (width as usize, height as usize);
    if img.width() == 0 || img.height() == 0 || w == 0 || h == 0 {
        return RgbImage::new(width, height);
    }
    let raw = resize_window(img, w, h, 0..w, 0..h);
    RgbImage::from_raw(width, height, raw).unwrap_or_else(|| RgbImage::new(width, height))
}

/// torchvision `CenterCrop` origin along one axis of length `len` for a crop of `crop` (negative when
/// torchvision zero-pads: `(crop - len) // 2` before). Python's `round` rounds halves to even.
pub fn center_crop_origin(len: usize, crop: usize) -> i64 {
    if crop > len {
        return -(((crop - len) / 2) as i64);
    }
    let diff = len - crop;
    let q = diff / 2;
    // torchvision: int(round(diff / 2.0)), where Python rounds halves to even.
    (if diff % 2 == 1 && q % 2 == 1 { q + 1 } else { q }) as i64
}

/// Resizes (shortest side to `cfg.resize`, PIL bicubic), centre-crops `cfg.crop` (torchvision, zero
/// padding if needed) and normalises: returns `(x / 255 - mean) / std` as CHW f32 of length
/// `3 * crop * crop`. Only the cropped window is resampled, with results identical to resizing the
/// whole image first. Call [`PreprocessConfig::validate`] on untrusted configs.
pub fn preprocess(img: &RgbImage, cfg: &PreprocessConfig) -> Vec<f32> {
    let crop = cfg.crop;
    let (out_w, out_h) = resized_size(img.width(), img.height(), cfg.resize);
    let origin = |len: usize| {
        if cfg.floor_crop && len >= crop {
            ((len - crop) / 2) as i64
        } else {
            center_crop_origin(len, crop)
        }
    };
    let (ox, oy) = (origin(out_w), origin(out_h));
    // The part of the resized image inside the crop.
    let clip = |o: i64, len: usize| -> Range<usize> {
        let start = o.clamp(0, len as i64) as usize;
        let end = (o.saturating_add(crop as i64)).clamp(0, len as i64) as usize;
        start..end.max(start)
    };
    let (cols, rows) = (clip(ox, out_w), clip(oy, out_h));
    let window = if cols.is_empty() || rows.is_empty() {
        Vec::new()
    } else {
        resize_window(img, out_w, out_h, cols.clone(), rows.clone())
    };
    // Offsets of the crop's first row/column inside the window (negative where padded).
    let (dy0, dx0) = (oy - rows.start as i64, ox - cols.start as i64);
    let mut out = vec![0f32; 3 * crop * crop];
    for c in 0..3 {
        let (m, s) = (cfg.mean[c], cfg.std[c]);
        for y in 0..crop {
            let wy = dy0 + y as i64;
            for x in 0..crop {
                let wx = dx0 + x as i64;
                let inside =
                    (0..rows.len() as i64).contains(&wy) && (0..cols.len() as i64).contains(&wx);
                let p = if inside {
                    window[(wy as usize * cols.len() + wx as usize) * 3 + c]
                } else {
                    0
                };
                // ToTensor then Normalize, both in f32 like torch.
                out[(c * crop + y) * crop + x] = (f32::from(p) / 255.0 - m) / s;
            }
        }
    }
    out
}

/// Stacks preprocessed images (each CHW of length `3 * crop * crop`, as [`preprocess`] returns them)
/// into an `[n, 3, crop, crop]` tensor on `device`. Never panics: a vector of another length (a
/// caller bug) is truncated or zero-padded to `3 * crop * crop`.
pub fn to_batch_tensor(images: &[Vec<f32>], crop: usize, device: &Device) -> Tensor<4> {
    let per = 3 * crop * crop;
    let mut data = Vec::with_capacity(images.len() * per);
    for v in images {
        let n = v.len().min(per);
        data.extend_from_slice(&v[..n]);
        data.resize(data.len() + per - n, 0.0);
    }
    Tensor::<4>::from_data(TensorData::new(data, [images.len(), 3, crop, crop]), device)
}
