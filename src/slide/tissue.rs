//! The tissue mask: Otsu's threshold on the HSV saturation of a downscaled image.
//!
//! Glass is white or grey (saturation near 0) and stained tissue is coloured, so saturation
//! separates them well. Otsu picks the threshold between the two modes of its histogram. Two
//! guards keep it honest: the threshold is never below [`MIN_SATURATION`] (so a blank slide has
//! no tissue), and when even the darker class is clearly stained (mean above
//! [`BACKGROUND_MAX_MEAN`]) the image has no glass to separate, so Otsu would split tissue in two:
//! [`MIN_SATURATION`] is used instead.

use image::RgbImage;

use crate::{Error, Result};

/// Saturation below which a pixel is never tissue.
pub const MIN_SATURATION: f32 = 0.05;

/// When the below-threshold class has a mean saturation above this, it is tissue too.
pub const BACKGROUND_MAX_MEAN: f32 = 0.10;

const BINS: usize = 256;

/// HSV saturation `(max - min) / max` of an RGB pixel, in [0, 1] (0 for black).
pub fn saturation(p: [u8; 3]) -> f32 {
    let max = p.iter().copied().max().unwrap_or(0);
    let min = p.iter().copied().min().unwrap_or(0);
    if max == 0 {
        0.0
    } else {
        f32::from(max - min) / f32::from(max)
    }
}

fn bin(s: f32) -> usize {
    ((s * BINS as f32) as usize).min(BINS - 1)
}

/// Otsu's threshold of a 256-bin histogram: the bin `t` that maximises the between-class
/// variance of bins `0..=t` and `t+1..`. `None` if fewer than two bins are populated.
pub fn otsu(hist: &[u64; BINS]) -> Option<usize> {
    let total: u64 = hist.iter().sum();
    let sum: f64 = hist.iter().enumerate().map(|(i, &n)| i as f64 * n as f64).sum();
    let (mut w0, mut sum0) = (0u64, 0f64);
    let mut best: Option<(usize, f64)> = None;
    for (t, &n) in hist.iter().enumerate() {
        w0 += n;
        sum0 += t as f64 * n as f64;
        let w1 = total - w0;
        if w0 == 0 || w1 == 0 {
            continue;
        }
        let (m0, m1) = (sum0 / w0 as f64, (sum - sum0) / w1 as f64);
        let between = w0 as f64 * w1 as f64 * (m0 - m1) * (m0 - m1);
        if best.is_none_or(|(_, b)| between > b) {
            best = Some((t, between));
        }
    }
    best.map(|(t, _)| t)
}

/// Which pixels of a downscaled image are tissue.
#[derive(Debug, Clone)]
pub struct TissueMask {
    /// Mask width (the downscaled image's).
    pub width: u32,
    /// Mask height.
    pub height: u32,
    /// Base-level pixels per mask pixel, horizontally and vertically.
    pub scale: (f64, f64),
    /// Saturation threshold used: tissue is saturation at or above it.
    pub threshold: f32,
    /// Summed-area table of tissue pixels, `(width + 1) * (height + 1)`.
    integral: Vec<u32>,
}

impl TissueMask {
    /// Computes the mask of `image`, a rendering of the base level downscaled by `scale`.
    pub fn from_image(image: &RgbImage, scale: (f64, f64)) -> Self {
        let sat: Vec<f32> = image.pixels().map(|p| saturation(p.0)).collect();
        let mut hist = [0u64; BINS];
        sat.iter().for_each(|&s| hist[bin(s)] += 1);
        let floor = bin(MIN_SATURATION);
        let t = match otsu(&hist) {
            Some(t) => {
                let below: u64 = hist[..=t].iter().sum();
                let mean_below = hist[..=t]
                    .iter()
                    .enumerate()
                    .map(|(i, &n)| (i as f64 + 0.5) / BINS as f64 * n as f64)
                    .sum::<f64>()
                    / below.max(1) as f64;
                if mean_below > f64::from(BACKGROUND_MAX_MEAN) {
                    floor
                } else {
                    t.max(floor)
                }
            }
            None => floor,
        };
        let threshold = (t + 1) as f32 / BINS as f32;
        let (w, h) = (image.width() as usize, image.height() as usize);
        let mut integral = vec![0u32; (w + 1) * (h + 1)];
        for y in 0..h {
            let mut row = 0u32;
            for x in 0..w {
                row += u32::from(bin(sat[y * w + x]) > t);
                integral[(y + 1) * (w + 1) + x + 1] = integral[y * (w + 1) + x + 1] + row;
            }
        }
        Self { width: w as u32, height: h as u32, scale, threshold, integral }
    }

    /// Whether mask pixel `(x, y)` is tissue.
    pub fn is_tissue(&self, x: u32, y: u32) -> bool {
        self.count(x, y, x + 1, y + 1) > 0
    }

    /// Tissue pixels in the mask rectangle `[x0, x1) x [y0, y1)`.
    fn count(&self, x0: u32, y0: u32, x1: u32, y1: u32) -> u32 {
        let w = self.width as usize + 1;
        let at = |x: u32, y: u32| self.integral[y as usize * w + x as usize];
        at(x1, y1) + at(x0, y0) - at(x0, y1) - at(x1, y0)
    }

    /// Fraction of all mask pixels that are tissue.
    pub fn tissue_fraction(&self) -> f64 {
        let n = f64::from(self.width) * f64::from(self.height);
        f64::from(self.count(0, 0, self.width, self.height)) / n.max(1.0)
    }

    /// Fraction of tissue under the base-level rectangle `(x, y, w, h)`: the mask pixels whose
    /// centres fall inside it (at least the one containing its centre).
    pub fn fraction(&self, x: u32, y: u32, w: u32, h: u32) -> f32 {
        let (sx, sy) = self.scale;
        // First mask pixel whose centre ((i + 0.5) * s) is at or after base coordinate v.
        let edge =
            |v: u32, s: f64, n: u32| ((f64::from(v) / s - 0.5).ceil().max(0.0) as u32).min(n);
        let (mut x0, mut x1) = (edge(x, sx, self.width), edge(x + w, sx, self.width));
        let (mut y0, mut y1) = (edge(y, sy, self.height), edge(y + h, sy, self.height));
        if x1 <= x0 {
            x0 = ((f64::from(x) + f64::from(w) / 2.0) / sx) as u32;
            x0 = x0.min(self.width - 1);
            x1 = x0 + 1;
        }
        if y1 <= y0 {
            y0 = ((f64::from(y) + f64::from(h) / 2.0) / sy) as u32;
            y0 = y0.min(self.height - 1);
            y1 = y0 + 1;
        }
        let n = (x1 - x0) * (y1 - y0);
        self.count(x0, y0, x1, y1) as f32 / n as f32
    }

    /// Fails with a clear message when there is no tissue at all.
    pub fn require_tissue(&self, name: &str) -> Result<()> {
        if self.count(0, 0, self.width, self.height) == 0 {
            return Err(Error::format(
                name,
                format!(
                    "no tissue found (no pixel has saturation >= {:.3}): is it blank or not H&E?",
                    self.threshold
                ),
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn otsu_splits_two_modes() {
        let mut hist = [0u64; BINS];
        hist[10] = 100;
        hist[11] = 50;
        hist[200] = 80;
        let t = otsu(&hist).unwrap();
        assert!((11..200).contains(&t), "{t}");
        assert_eq!(otsu(&[0; BINS]), None);
    }

    #[test]
    fn mask_of_glass_and_stain() {
        // Left half white glass, right half pink stain.
        let img = RgbImage::from_fn(40, 20, |x, _| {
            if x < 20 {
                image::Rgb([240, 240, 238])
            } else {
                image::Rgb([200, 80, 160])
            }
        });
        let m = TissueMask::from_image(&img, (10.0, 10.0));
        assert!(!m.is_tissue(5, 5) && m.is_tissue(30, 5));
        assert!((m.tissue_fraction() - 0.5).abs() < 1e-6);
        assert_eq!(m.fraction(0, 0, 100, 100), 0.0);
        assert_eq!(m.fraction(300, 0, 100, 100), 1.0);
        assert!((m.fraction(100, 0, 200, 100) - 0.5).abs() < 1e-6);
        // All stain: no glass, so everything is tissue (Otsu alone would split it).
        let pink = RgbImage::from_fn(10, 10, |x, _| image::Rgb([200, 80 + x as u8 * 8, 160]));
        assert_eq!(TissueMask::from_image(&pink, (1.0, 1.0)).tissue_fraction(), 1.0);
        // Blank glass: no tissue.
        let blank = RgbImage::from_pixel(10, 10, image::Rgb([245, 245, 245]));
        assert!(TissueMask::from_image(&blank, (1.0, 1.0)).require_tissue("x.png").is_err());
    }
}
