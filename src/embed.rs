//! Batched embedding of image files and texts with a loaded [`Model`], shared by the CLI
//! commands (embed, retrieve, zero-shot).

use std::path::{Path, PathBuf};

use crate::model::Model;
use crate::preprocess::{load_rgb, preprocess, to_batch_tensor, DEFAULT_MAX_PIXELS};
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
    let img = load_rgb(path, DEFAULT_MAX_PIXELS)?;
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
