//! Batched embedding of image files and texts with a loaded [`Model`], shared by the CLI
//! commands (embed, retrieve, zero-shot), and a 2-D principal component map of embeddings
//! ([`pca_2d`], the page's "How it works" panel).

use std::path::{Path, PathBuf};

use crate::model::Model;
use crate::preprocess::{load_rgb, max_pixels, preprocess, to_batch_tensor};
use crate::retrieval::matrix_to_host;
use crate::Result;

/// Embeddings of the images that could be read, and the ones that could not.
#[derive(Debug, Default)]
pub struct ImageEmbeddings {
    /// The images embedded, in input order.
    pub paths: Vec<PathBuf>,
    /// Row-major `[paths.len(), dim]` projected features, before L2 normalisation.
    pub values: Vec<f32>,
    /// Embedding width.
    pub dim: usize,
    /// Images skipped, with the reason.
    pub skipped: Vec<(PathBuf, String)>,
}

impl ImageEmbeddings {
    /// One row per image.
    pub fn rows(&self) -> impl Iterator<Item = &[f32]> {
        self.values.chunks(self.dim.max(1))
    }
}

/// Decodes and preprocesses one image for `model`.
pub fn prepare_image(model: &Model, path: &Path) -> Result<Vec<f32>> {
    let img = load_rgb(path, max_pixels())?;
    Ok(preprocess(&img, &model.preprocess))
}

#[cfg(feature = "cli")]
fn prepare_all(model: &Model, paths: &[PathBuf]) -> Vec<Result<Vec<f32>>> {
    use rayon::prelude::*;
    paths.par_iter().map(|p| prepare_image(model, p)).collect()
}

#[cfg(not(feature = "cli"))]
fn prepare_all(model: &Model, paths: &[PathBuf]) -> Vec<Result<Vec<f32>>> {
    paths.iter().map(|p| prepare_image(model, p)).collect()
}

/// Embeds image files in batches of `batch`, decoding each batch in parallel.
///
/// With `skip_unreadable`, an image that cannot be read is listed in `skipped` and the run goes
/// on; otherwise its error is returned. `progress` is called with the number of images done.
pub fn embed_image_files(
    model: &Model,
    paths: &[PathBuf],
    batch: usize,
    skip_unreadable: bool,
    mut progress: impl FnMut(usize),
) -> Result<ImageEmbeddings> {
    let device = model.vision.pos_embed.val().device();
    let crop = model.preprocess.crop;
    let mut out = ImageEmbeddings { dim: model.embed_dim, ..Default::default() };
    let mut done = 0;
    for chunk in paths.chunks(batch.max(1)) {
        let mut pixels = Vec::with_capacity(chunk.len());
        for (path, prepared) in chunk.iter().zip(prepare_all(model, chunk)) {
            match prepared {
                Ok(p) => {
                    pixels.push(p);
                    out.paths.push(path.clone());
                }
                Err(e) if skip_unreadable => out.skipped.push((path.clone(), e.to_string())),
                Err(e) => return Err(e),
            }
        }
        if !pixels.is_empty() {
            let embeds = model.encode_images(to_batch_tensor(&pixels, crop, &device))?;
            let (values, [_, dim]) = matrix_to_host(embeds)?;
            out.dim = dim;
            out.values.extend(values);
        }
        done += chunk.len();
        progress(done);
    }
    Ok(out)
}

/// Embeds texts in batches; returns row-major `[texts.len(), dim]` features before L2
/// normalisation.
pub fn embed_texts<S: AsRef<str>>(
    model: &Model,
    texts: &[S],
    batch: usize,
    mut progress: impl FnMut(usize),
) -> Result<Vec<f32>> {
    let mut values = Vec::with_capacity(texts.len() * model.embed_dim);
    let mut done = 0;
    for chunk in texts.chunks(batch.max(1)) {
        let (v, _) = matrix_to_host(model.encode_texts(chunk)?)?;
        values.extend(v);
        done += chunk.len();
        progress(done);
    }
    Ok(values)
}

/// A 2-D principal component projection of row vectors (see [`pca_2d`]).
#[derive(Debug, Clone, PartialEq)]
pub struct Pca2 {
    /// Each row's coordinates on the first and second principal components, in input order.
    pub coords: Vec<[f32; 2]>,
    /// The two principal directions, unit length, `dim` values each.
    pub components: [Vec<f32>; 2],
    /// The mean row that was subtracted.
    pub mean: Vec<f32>,
    /// The share of the total variance along each component (0 to 1).
    pub explained: [f32; 2],
}

/// Power-iteration steps per component at most; each costs two passes over the rows.
const PCA_MAX_ITERS: usize = 500;

/// The first two principal components of `rows` (row-major, `dim` values per row) and every
/// row's coordinates on them, computed on the host in f64 by power iteration on the centred rows
/// (`v ← Xᵀ X v`, then deflation), which needs no `dim × dim` matrix. The start vector and the
/// signs are deterministic: each component's largest coordinate (by magnitude) is positive.
/// A direction without variance (all rows equal, or rows on a line) gets all-zero coordinates.
/// `what` names the input in errors.
pub fn pca_2d(values: &[f32], dim: usize, what: &str) -> Result<Pca2> {
    let bad = |msg: String| crate::Error::Format { path: what.to_string(), msg };
    if dim == 0 || !values.len().is_multiple_of(dim) {
        return Err(bad(format!("{} values do not make rows of {dim}", values.len())));
    }
    let n = values.len() / dim;
    if n < 2 {
        return Err(bad(format!("a 2-D map needs at least 2 embeddings, got {n}")));
    }
    if let Some(i) = values.iter().position(|v| !v.is_finite()) {
        return Err(bad(format!("embedding {} has a non-finite value", i / dim)));
    }
    let mut mean = vec![0f64; dim];
    for row in values.chunks(dim) {
        mean.iter_mut().zip(row).for_each(|(m, &v)| *m += v as f64);
    }
    mean.iter_mut().for_each(|m| *m /= n as f64);
    let x: Vec<f64> =
        values.chunks(dim).flat_map(|r| r.iter().zip(&mean).map(|(&v, m)| v as f64 - m)).collect();
    let total: f64 = x.iter().map(|v| v * v).sum();
    let mut found: Vec<Vec<f64>> = Vec::with_capacity(2);
    let mut lambdas = [0f64; 2];
    for (k, lambda) in lambdas.iter_mut().enumerate() {
        let (v, l) = leading_direction(&x, dim, &found, k, total);
        *lambda = l;
        found.push(v);
    }
    let scale = if total > 0.0 { total } else { 1.0 };
    let coords = x
        .chunks(dim)
        .map(|r| [0, 1].map(|k| r.iter().zip(&found[k]).map(|(a, b)| a * b).sum::<f64>() as f32))
        .collect();
    Ok(Pca2 {
        coords,
        components: [0, 1].map(|k| found[k].iter().map(|&v| v as f32).collect()),
        mean: mean.into_iter().map(|m| m as f32).collect(),
        explained: lambdas.map(|l| (l / scale) as f32),
    })
}

/// The unit direction of largest variance of the centred rows `x`, orthogonal to `found`, and
/// its sum of squared projections; a zero vector when no variance is left (`total` is the
/// rows' total sum of squares).
fn leading_direction(
    x: &[f64],
    dim: usize,
    found: &[Vec<f64>],
    seed: usize,
    total: f64,
) -> (Vec<f64>, f64) {
    let project_out = |v: &mut Vec<f64>| {
        for f in found {
            let d: f64 = v.iter().zip(f).map(|(a, b)| a * b).sum();
            v.iter_mut().zip(f).for_each(|(a, b)| *a -= d * b);
        }
    };
    let normalise = |v: &mut Vec<f64>| {
        let norm = v.iter().map(|a| a * a).sum::<f64>().sqrt();
        if norm > 0.0 {
            v.iter_mut().for_each(|a| *a /= norm);
        }
        norm
    };
    // X^T X v, one pass over the rows.
    let apply = |v: &[f64]| {
        let mut out = vec![0f64; dim];
        for row in x.chunks(dim) {
            let p: f64 = row.iter().zip(v).map(|(a, b)| a * b).sum();
            out.iter_mut().zip(row).for_each(|(o, r)| *o += p * r);
        }
        out
    };
    // A fixed, generic start vector (no randomness): uneven weights on every coordinate.
    let mut v: Vec<f64> =
        (0..dim).map(|i| 1.0 + ((i * 7 + seed * 13) % 11) as f64 / 10.0).collect();
    project_out(&mut v);
    if normalise(&mut v) == 0.0 {
        return (vec![0.0; dim], 0.0);
    }
    let mut lambda = 0.0;
    for _ in 0..PCA_MAX_ITERS {
        let mut next = apply(&v);
        project_out(&mut next);
        let norm = normalise(&mut next);
        if norm <= 1e-12 * total {
            return (vec![0.0; dim], 0.0);
        }
        let change: f64 = next.iter().zip(&v).map(|(a, b)| (a - b).abs()).fold(0.0, f64::max);
        v = next;
        let converged = (norm - lambda).abs() <= 1e-12 * norm && change < 1e-9;
        lambda = norm;
        if converged {
            break;
        }
    }
    let biggest = v.iter().copied().fold(0f64, |a, b| if b.abs() > a.abs() { b } else { a });
    if biggest < 0.0 {
        v.iter_mut().for_each(|a| *a = -*a);
    }
    (v, lambda)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Rows `a·u + b·w + c` with known orthonormal `u`, `w` in 5-D: the components are ±u, ±w.
    fn plane() -> (Vec<f32>, Vec<f64>, Vec<f64>, Vec<[f64; 2]>) {
        let s = 0.5f64.sqrt();
        let u = vec![s, s, 0.0, 0.0, 0.0];
        let w = vec![0.0, 0.0, 0.6, 0.8, 0.0];
        let c = [1.0, -2.0, 0.5, 3.0, 7.0];
        let mut values = Vec::new();
        let mut ab = Vec::new();
        for i in 0..40 {
            let t = i as f64 / 40.0 * std::f64::consts::TAU;
            let (a, b) = (3.0 * t.cos(), 1.0 * t.sin());
            ab.push([a, b]);
            values.extend((0..5).map(|j| (a * u[j] + b * w[j] + c[j]) as f32));
        }
        (values, u, w, ab)
    }

    #[test]
    fn pca_finds_the_plane_and_its_coordinates() {
        let (values, u, w, ab) = plane();
        let p = pca_2d(&values, 5, "plane").unwrap();
        let dot = |a: &[f32], b: &[f64]| a.iter().zip(b).map(|(x, y)| *x as f64 * y).sum::<f64>();
        assert!(dot(&p.components[0], &u).abs() > 0.9999, "{:?}", p.components[0]);
        assert!(dot(&p.components[1], &w).abs() > 0.9999, "{:?}", p.components[1]);
        // Variances 9/2 and 1/2 of 5 in all: 90 % and 10 %.
        assert!((p.explained[0] - 0.9).abs() < 1e-4 && (p.explained[1] - 0.1).abs() < 1e-4);
        let signs = [dot(&p.components[0], &u).signum(), dot(&p.components[1], &w).signum()];
        for (got, want) in p.coords.iter().zip(&ab) {
            for k in 0..2 {
                assert!((got[k] as f64 - signs[k] * want[k]).abs() < 1e-4, "{got:?} vs {want:?}");
            }
        }
        assert!((p.mean[4] - 7.0).abs() < 1e-5);
        // Deterministic, and the sign rule holds.
        assert_eq!(p, pca_2d(&values, 5, "plane").unwrap());
        for c in &p.components {
            let big = c.iter().copied().fold(0f32, |a, b| if b.abs() > a.abs() { b } else { a });
            assert!(big > 0.0);
        }
    }

    #[test]
    fn pca_of_a_line_has_no_second_component() {
        let values: Vec<f32> = (0..10).flat_map(|i| [i as f32, 2.0 * i as f32, 1.0]).collect();
        let p = pca_2d(&values, 3, "line").unwrap();
        assert!((p.explained[0] - 1.0).abs() < 1e-6);
        assert!(p.coords.iter().all(|c| c[1].abs() < 1e-4));
        assert!(((p.coords[9][0] - p.coords[0][0]).abs() - 9.0 * 5f32.sqrt()).abs() < 1e-3);
    }

    #[test]
    fn pca_names_bad_inputs() {
        let e = pca_2d(&[1.0, 2.0, 3.0], 2, "tiles").unwrap_err().to_string();
        assert!(e.contains("tiles") && e.contains("rows of 2"), "{e}");
        let e = pca_2d(&[1.0, 2.0], 2, "tiles").unwrap_err().to_string();
        assert!(e.contains("at least 2"), "{e}");
        let e = pca_2d(&[1.0, f32::NAN, 0.0, 0.0], 2, "tiles").unwrap_err().to_string();
        assert!(e.contains("non-finite"), "{e}");
        let p = pca_2d(&[1.0, 1.0, 1.0, 1.0], 2, "same").unwrap();
        assert_eq!(p.coords, vec![[0.0, 0.0]; 2]);
    }
}
