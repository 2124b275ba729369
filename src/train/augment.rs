//! Training-time augmentation of the paper's original PCAM loader, applied to an RGB image before
//! preprocessing: `RandomHorizontalFlip(0.5)`, `RandomVerticalFlip(0.5)`, then
//! `ColorJitter(brightness=0.5, contrast=0.5, saturation=0.5, hue=0.05)`.
//!
//! The colour operations reproduce torchvision's PIL code paths (`_functional_pil.adjust_*`, which
//! call `PIL.ImageEnhance` and `Image.blend`) with Pillow's integer/float arithmetic:
//! - blending (`Image.blend(degenerate, img, f)`): `in1 + f * (in2 - in1)` in `f32`, truncated,
//!   clipped to 0..=255 when `f > 1`; `f == 1` returns the image unchanged;
//! - brightness: degenerate = black; contrast: degenerate = the grey level `int(mean(L) + 0.5)`;
//!   saturation: degenerate = the image's luma `L` replicated to RGB. `L` is Pillow's
//!   `convert("L")`: `(R*19595 + G*38470 + B*7471 + 0x8000) >> 16`, the fixed-point form of
//!   ITU-R 601-2 `L = R*299/1000 + G*587/1000 + B*114/1000`;
//! - hue: RGB to Pillow's 8-bit HSV, `H += int(hue * 255)` modulo 256, back to RGB.
//!
//! As in torchvision, the four colour operations run in a random order and their factors are
//! uniform in `[max(0, 1 - x), 1 + x]` (hue: `[-h, h]`). The random numbers come from the crate's
//! [`Rng`], not torch's generator, so individual draws differ from a PyTorch run while the
//! distribution is the same. Agreement with Pillow 13 for fixed factors is checked in
//! `tests/train_data.rs`.

use image::RgbImage;

use super::split::Rng;
use crate::{Error, Result};

/// Which augmentations to apply and how strongly ([`Default`] is the paper's PCAM setting).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AugmentConfig {
    /// Probability of a left-right flip.
    pub hflip: f32,
    /// Probability of a top-bottom flip.
    pub vflip: f32,
    /// Brightness factor range `[max(0, 1 - x), 1 + x]`; 0 disables it.
    pub brightness: f32,
    /// Contrast factor range `[max(0, 1 - x), 1 + x]`; 0 disables it.
    pub contrast: f32,
    /// Saturation factor range `[max(0, 1 - x), 1 + x]`; 0 disables it.
    pub saturation: f32,
    /// Hue shift range `[-h, h]` in turns, `0 <= h <= 0.5`; 0 disables it.
    pub hue: f32,
    /// A random multiple of 90° rotation (uniform over the four), applied last. Not in the
    /// paper's loader; `clipit pretrain` uses it ([`AugmentConfig::pathology`]): a tile has no
    /// up or down.
    pub rotate90: bool,
}

impl Default for AugmentConfig {
    /// The paper's PCAM training augmentation: both flips with p = 0.5, jitter 0.5/0.5/0.5/0.05.
    fn default() -> Self {
        Self {
            hflip: 0.5,
            vflip: 0.5,
            brightness: 0.5,
            contrast: 0.5,
            saturation: 0.5,
            hue: 0.05,
            rotate90: false,
        }
    }
}

impl AugmentConfig {
    /// The paper's PCAM augmentation (same as [`Default`]).
    pub fn paper() -> Self {
        Self::default()
    }

    /// No augmentation at all (BACH and CRC in the paper).
    pub fn none() -> Self {
        Self {
            hflip: 0.0,
            vflip: 0.0,
            brightness: 0.0,
            contrast: 0.0,
            saturation: 0.0,
            hue: 0.0,
            rotate90: false,
        }
    }

    /// The paper's setting plus random 90° rotations: flips and rotations give all eight
    /// orientations of a tile (the dihedral group), which histology does not tell apart.
    pub fn pathology() -> Self {
        Self { rotate90: true, ..Self::default() }
    }

    /// Whether this config never changes an image.
    pub fn is_identity(&self) -> bool {
        *self == Self::none()
    }

    /// Checks the ranges: probabilities in `[0, 1]`, jitter strengths finite and non-negative,
    /// `hue <= 0.5`.
    pub fn validate(&self) -> Result<()> {
        let bad = |m: String| Err(Error::msg(format!("invalid augmentation config: {m}")));
        for (name, p) in [("hflip", self.hflip), ("vflip", self.vflip)] {
            if !(0.0..=1.0).contains(&p) {
                return bad(format!("{name} probability {p} is not in [0, 1]"));
            }
        }
        for (name, x) in [
            ("brightness", self.brightness),
            ("contrast", self.contrast),
            ("saturation", self.saturation),
        ] {
            if !(x.is_finite() && x >= 0.0) {
                return bad(format!("{name} {x} must be finite and non-negative"));
            }
        }
        if !(0.0..=0.5).contains(&self.hue) {
            return bad(format!("hue {} is not in [0, 0.5]", self.hue));
        }
        Ok(())
    }
}

/// Applies `cfg` to `img` with randomness from `rng`: horizontal flip, vertical flip, colour
/// jitter (see the module docs), then a quarter-turn rotation if `cfg.rotate90`. The same `rng` state always gives the same result.
///
/// The number of draws does not depend on `cfg`, so toggling one augmentation leaves the others'
/// random choices unchanged.
pub fn augment(img: &RgbImage, cfg: &AugmentConfig, rng: &mut Rng) -> RgbImage {
    let mut out = img.clone();
    let (h, v) = (rng.next_f32(), rng.next_f32());
    if h < cfg.hflip {
        image::imageops::flip_horizontal_in_place(&mut out);
    }
    if v < cfg.vflip {
        image::imageops::flip_vertical_in_place(&mut out);
    }
    let out = color_jitter(&out, cfg, rng);
    // Drawn last, so the draws above are the same with or without rotations.
    let quarter_turns = (rng.next_f32() * 4.0) as u32;
    match quarter_turns {
        1 if cfg.rotate90 => image::imageops::rotate90(&out),
        2 if cfg.rotate90 => image::imageops::rotate180(&out),
        3 if cfg.rotate90 => image::imageops::rotate270(&out),
        _ => out,
    }
}

/// torchvision `ColorJitter` on `img`: the four operations in a random order, each with a random
/// factor; an operation whose strength in `cfg` is 0 is skipped (torchvision sets it to `None`).
pub fn color_jitter(img: &RgbImage, cfg: &AugmentConfig, rng: &mut Rng) -> RgbImage {
    let mut order = [0u8, 1, 2, 3];
    rng.shuffle(&mut order);
    let range = |x: f32| ((1.0 - x).max(0.0), 1.0 + x);
    let (b_lo, b_hi) = range(cfg.brightness);
    let (c_lo, c_hi) = range(cfg.contrast);
    let (s_lo, s_hi) = range(cfg.saturation);
    let b = rng.uniform(b_lo, b_hi);
    let c = rng.uniform(c_lo, c_hi);
    let s = rng.uniform(s_lo, s_hi);
    let h = rng.uniform(-cfg.hue, cfg.hue);
    let mut out = img.clone();
    for op in order {
        out = match op {
            0 if cfg.brightness > 0.0 => adjust_brightness(&out, b),
            1 if cfg.contrast > 0.0 => adjust_contrast(&out, c),
            2 if cfg.saturation > 0.0 => adjust_saturation(&out, s),
            3 if cfg.hue > 0.0 => adjust_hue(&out, h),
            _ => continue,
        };
    }
    out
}

/// Mirrors `img` left to right.
pub fn hflip(img: &RgbImage) -> RgbImage {
    image::imageops::flip_horizontal(img)
}

/// Mirrors `img` top to bottom.
pub fn vflip(img: &RgbImage) -> RgbImage {
    image::imageops::flip_vertical(img)
}

/// Pillow's `ImagingBlend` on one sample: `degenerate + alpha * (img - degenerate)`.
fn blend_px(degenerate: u8, img: u8, alpha: f32) -> u8 {
    let t = f32::from(degenerate) + alpha * (i32::from(img) - i32::from(degenerate)) as f32;
    // `as` truncates toward zero and saturates: Pillow's clip for extrapolation, and a plain
    // cast when 0 <= alpha <= 1, where `t` is already in range.
    t as u8
}

/// `Image.blend(degenerate, img, alpha)` where the degenerate image is given per pixel.
fn blend_with(img: &RgbImage, alpha: f32, degenerate: impl Fn(&[u8]) -> [u8; 3]) -> RgbImage {
    if alpha == 1.0 {
        return img.clone();
    }
    let mut out = img.clone();
    for px in out.pixels_mut() {
        let d = degenerate(&px.0);
        if alpha == 0.0 {
            px.0 = d;
        } else {
            for (v, &dv) in px.0.iter_mut().zip(&d) {
                *v = blend_px(dv, *v, alpha);
            }
        }
    }
    out
}

/// Pillow's `convert("L")` of one RGB pixel.
pub fn luma(px: [u8; 3]) -> u8 {
    ((u32::from(px[0]) * 19595 + u32::from(px[1]) * 38470 + u32::from(px[2]) * 7471 + 0x8000) >> 16)
        as u8
}

/// torchvision `adjust_brightness` (PIL `ImageEnhance.Brightness`): blend with black. A factor of
/// 1 is the identity; factors are not checked (negative ones give black).
pub fn adjust_brightness(img: &RgbImage, factor: f32) -> RgbImage {
    blend_with(img, factor, |_| [0; 3])
}

/// torchvision `adjust_contrast` (PIL `ImageEnhance.Contrast`): blend with a uniform grey equal to
/// the rounded mean of the image's luma.
pub fn adjust_contrast(img: &RgbImage, factor: f32) -> RgbImage {
    let n = u64::from(img.width()) * u64::from(img.height());
    let sum: u64 = img.pixels().map(|p| u64::from(luma(p.0))).sum();
    // PIL: int(ImageStat.Stat(L).mean[0] + 0.5), the mean in double precision.
    let mean = if n == 0 { 0 } else { ((sum as f64 / n as f64) + 0.5) as u8 };
    blend_with(img, factor, |_| [mean; 3])
}

/// torchvision `adjust_saturation` (PIL `ImageEnhance.Color`): blend with the image's grayscale.
pub fn adjust_saturation(img: &RgbImage, factor: f32) -> RgbImage {
    blend_with(img, factor, |p| {
        let l = luma([p[0], p[1], p[2]]);
        [l; 3]
    })
}

/// torchvision `adjust_hue` for PIL images: convert to Pillow's 8-bit HSV, add `int(hue * 255)`
/// to H modulo 256, convert back. `hue` is clamped to `[-0.5, 0.5]` (torchvision raises instead).
/// Like Pillow, a factor of 0 still round-trips through HSV, which may change some pixels by one
/// level; [`color_jitter`] skips the operation when its range is 0.
pub fn adjust_hue(img: &RgbImage, hue: f32) -> RgbImage {
    let hue = if hue.is_nan() { 0.0 } else { hue.clamp(-0.5, 0.5) };
    // numpy: np.int32(hue_factor * 255).astype(np.uint8), in double precision.
    let shift = (f64::from(hue) * 255.0) as i32 as u8;
    let mut out = img.clone();
    for px in out.pixels_mut() {
        let [h, s, v] = rgb_to_hsv(px.0);
        px.0 = hsv_to_rgb([h.wrapping_add(shift), s, v]);
    }
    out
}

/// Pillow's `rgb2hsv_row` (libImaging/Convert.c), with its mix of float and double arithmetic.
pub fn rgb_to_hsv([r, g, b]: [u8; 3]) -> [u8; 3] {
    let maxc = r.max(g).max(b);
    let minc = r.min(g).min(b);
    if maxc == minc {
        return [0, 0, maxc];
    }
    let cr = f32::from(maxc - minc);
    let s = cr / f32::from(maxc);
    let rc = f32::from(maxc - r) / cr;
    let gc = f32::from(maxc - g) / cr;
    let bc = f32::from(maxc - b) / cr;
    let h: f32 = if r == maxc {
        bc - gc
    } else if g == maxc {
        (2.0 + f64::from(rc) - f64::from(bc)) as f32
    } else {
        (4.0 + f64::from(gc) - f64::from(rc)) as f32
    };
    let h = ((f64::from(h) / 6.0 + 1.0) % 1.0) as f32;
    let clip8 = |x: f64| (x as i32).clamp(0, 255) as u8;
    [clip8(f64::from(h) * 255.0), clip8(f64::from(s) * 255.0), maxc]
}

/// Pillow's `hsv2rgb` (libImaging/Convert.c).
pub fn hsv_to_rgb([h, s, v]: [u8; 3]) -> [u8; 3] {
    if s == 0 {
        return [v, v, v];
    }
    let hh = f64::from(h) * 6.0 / 255.0;
    let i = hh.floor() as i32;
    let f = (hh - f64::from(i)) as f32;
    let fs = (f64::from(s) / 255.0) as f32;
    let vf = f64::from(v);
    let clip8 = |x: f64| (x.round() as i32).clamp(0, 255) as u8;
    let p = clip8(vf * (1.0 - f64::from(fs)));
    let q = clip8(vf * (1.0 - f64::from(fs * f)));
    let t = clip8(vf * (1.0 - f64::from(fs) * (1.0 - f64::from(f))));
    match i % 6 {
        0 => [v, t, p],
        1 => [q, v, p],
        2 => [p, v, t],
        3 => [p, q, v],
        4 => [t, p, v],
        _ => [v, p, q],
    }
}
