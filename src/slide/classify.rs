//! Classifying batches of tiles with any loaded model: zero-shot with a CLIP model, a trained
//! run, or a trained adapter ([`Classifier`]); optionally with the most similar report of a
//! corpus per tile.
//!
//! Natively the classifiers read tensors synchronously ([`TileClassifier`]); in the browser a
//! synchronous read panics, so the same classifiers also implement [`AsyncTileClassifier`],
//! which shares everything but the read.

use burn::tensor::{Device, Tensor};
use image::RgbImage;

use crate::model::Model;
use crate::preprocess::{preprocess, to_batch_tensor, PreprocessConfig};
use crate::retrieval::{
    l2_normalize, matrix_from_host, matrix_to_host, matrix_to_host_async, top_k, top_k_async,
};
use crate::train::classifier::Classifier;
use crate::train::inference::LoadedRun;
use crate::zeroshot::{class_embeddings, prompts, zero_shot_probs};
use crate::{Error, Result};

/// What a classifier returns for a batch of tiles.
#[derive(Debug, Clone, Default)]
pub struct BatchResult {
    /// Class probabilities, one row per tile.
    pub probs: Vec<Vec<f32>>,
    /// The best report per tile, `(index in the corpus, cosine)`, when reports were asked for.
    pub reports: Option<Vec<(usize, f32)>>,
}

/// Anything that turns tiles into class probabilities.
pub trait TileClassifier {
    /// Class names, in probability order.
    fn classes(&self) -> &[String];
    /// Classifies a batch of RGB tiles.
    fn classify(&self, tiles: &[RgbImage]) -> Result<BatchResult>;
}

/// [`TileClassifier`] with an asynchronous tensor read, the only kind allowed in the browser.
#[allow(async_fn_in_trait)]
pub trait AsyncTileClassifier {
    /// Class names, in probability order.
    fn classes(&self) -> &[String];
    /// Classifies a batch of RGB tiles.
    async fn classify_async(&self, tiles: &[RgbImage]) -> Result<BatchResult>;
}

/// Row-major host values as one row per tile.
fn rows((values, [_, cols]): (Vec<f32>, [usize; 2])) -> Vec<Vec<f32>> {
    values.chunks(cols.max(1)).map(<[f32]>::to_vec).collect()
}

/// Preprocesses tiles for a model (CHW, `3 * crop * crop` values each), in parallel natively.
pub fn prepare(tiles: &[RgbImage], cfg: &PreprocessConfig) -> Vec<Vec<f32>> {
    #[cfg(feature = "cli")]
    let each: Vec<Vec<f32>> = {
        use rayon::prelude::*;
        tiles.par_iter().map(|t| preprocess(t, cfg)).collect()
    };
    #[cfg(not(feature = "cli"))]
    let each: Vec<Vec<f32>> = tiles.iter().map(|t| preprocess(t, cfg)).collect();
    each
}

fn device_of(model: &Model) -> Device {
    model.vision.pos_embed.val().device()
}

/// Projected image features `[n, dim]` of tiles (not normalised), as the map's report retrieval
/// compares them with a corpus.
pub fn image_embeddings(model: &Model, tiles: &[RgbImage]) -> Result<Tensor<2>> {
    let pixels = prepare(tiles, &model.preprocess);
    model.encode_images(to_batch_tensor(&pixels, model.preprocess.crop, &device_of(model)))
}

/// The L2-normalised embeddings of a report corpus, to find each tile's most similar report.
#[derive(Clone)]
pub struct ReportIndex {
    /// `[reports, dim]`, normalised.
    embeds: Tensor<2>,
}

impl ReportIndex {
    /// An index from row-major report embeddings (`values.len() / dim` reports).
    pub fn from_values(values: &[f32], dim: usize, device: &Device) -> Result<Self> {
        Ok(Self { embeds: l2_normalize(matrix_from_host(values, dim, device)?) })
    }

    /// `(report index, cosine)` of the best report for each image embedding.
    pub fn best(&self, images: Tensor<2>) -> Result<Vec<(usize, f32)>> {
        Ok(firsts(top_k(images, self.embeds.clone(), 1)?))
    }

    /// [`Self::best`] with an asynchronous read.
    pub async fn best_async(&self, images: Tensor<2>) -> Result<Vec<(usize, f32)>> {
        Ok(firsts(top_k_async(images, self.embeds.clone(), 1).await?))
    }
}

fn firsts(hits: Vec<Vec<(usize, f32)>>) -> Vec<(usize, f32)> {
    hits.into_iter().map(|r| r[0]).collect()
}

/// Zero-shot CLIP classification: softmax over `exp(logit_scale) · cos(tile, class)`, each class
/// embedded as the mean of its prompts (see [`crate::zeroshot`]).
pub struct ZeroShotClassifier<'a> {
    model: &'a Model,
    classes: Vec<String>,
    class_embeds: Tensor<2>,
    reports: Option<ReportIndex>,
}

impl<'a> ZeroShotClassifier<'a> {
    /// Embeds the prompts of `classes` (every template with `{}` filled in) with `model`.
    pub fn new(model: &'a Model, classes: &[String], templates: &[String]) -> Result<Self> {
        if !model.has_text() {
            return Err(Error::msg(format!(
                "{}: zero-shot needs a model with a text encoder",
                model.name
            )));
        }
        if classes.len() < 2 {
            return Err(Error::msg("zero-shot needs at least two class names"));
        }
        let per_class = prompts(classes, templates)
            .iter()
            .map(|p| model.encode_texts(p))
            .collect::<Result<Vec<_>>>()?;
        Self::with_class_embeds(model, classes, class_embeddings(per_class)?)
    }

    /// A classifier from class embeddings `[classes, dim]` computed before (see
    /// [`Self::class_embeds`]), so that a caller classifying in several calls embeds the prompts
    /// once.
    pub fn with_class_embeds(
        model: &'a Model,
        classes: &[String],
        class_embeds: Tensor<2>,
    ) -> Result<Self> {
        let [n, dim] = class_embeds.dims();
        if n != classes.len() || dim != model.embed_dim {
            return Err(Error::msg(format!(
                "{}: {n}x{dim} class embeddings for {} classes of width {}",
                model.name,
                classes.len(),
                model.embed_dim
            )));
        }
        Ok(Self { model, classes: classes.to_vec(), class_embeds, reports: None })
    }

    /// The class embeddings `[classes, dim]` (normalised mean of each class's prompts).
    pub fn class_embeds(&self) -> Tensor<2> {
        self.class_embeds.clone()
    }

    /// Image embeddings and class probabilities of `tiles`, on the device.
    fn scores(&self, tiles: &[RgbImage]) -> Result<(Tensor<2>, Tensor<2>)> {
        let embeds = image_embeddings(self.model, tiles)?;
        let probs =
            zero_shot_probs(embeds.clone(), self.class_embeds.clone(), self.model.logit_scale)?;
        Ok((embeds, probs))
    }

    /// Also finds each tile's most similar report (from the same image embeddings).
    pub fn with_reports(mut self, reports: ReportIndex) -> Self {
        self.reports = Some(reports);
        self
    }
}

impl TileClassifier for ZeroShotClassifier<'_> {
    fn classes(&self) -> &[String] {
        &self.classes
    }

    fn classify(&self, tiles: &[RgbImage]) -> Result<BatchResult> {
        let (embeds, probs) = self.scores(tiles)?;
        let reports = self.reports.as_ref().map(|index| index.best(embeds)).transpose()?;
        Ok(BatchResult { probs: rows(matrix_to_host(probs)?), reports })
    }
}

impl AsyncTileClassifier for ZeroShotClassifier<'_> {
    fn classes(&self) -> &[String] {
        &self.classes
    }

    async fn classify_async(&self, tiles: &[RgbImage]) -> Result<BatchResult> {
        let (embeds, probs) = self.scores(tiles)?;
        let reports = match &self.reports {
            Some(index) => Some(index.best_async(embeds).await?),
            None => None,
        };
        Ok(BatchResult { probs: rows(matrix_to_host_async(probs).await?), reports })
    }
}

/// A trained run's classifier (see [`crate::train::inference`]); reports, if asked for, are
/// retrieved with a separate CLIP model.
pub struct RunClassifier<'a> {
    run: &'a LoadedRun,
    device: Device,
    reports: Option<(&'a Model, ReportIndex)>,
}

impl<'a> RunClassifier<'a> {
    /// Wraps a loaded run whose tensors live on `device`.
    pub fn new(run: &'a LoadedRun, device: Device) -> Self {
        Self { run, device, reports: None }
    }

    /// Also finds each tile's most similar report, embedding tiles with `model`.
    pub fn with_reports(mut self, model: &'a Model, reports: ReportIndex) -> Self {
        self.reports = Some((model, reports));
        self
    }
}

impl TileClassifier for RunClassifier<'_> {
    fn classes(&self) -> &[String] {
        &self.run.cfg.classes
    }

    fn classify(&self, tiles: &[RgbImage]) -> Result<BatchResult> {
        let pixels = prepare(tiles, &self.run.preprocess).concat();
        let probs = self.run.predict(pixels, tiles.len(), &self.device)?;
        let reports = match &self.reports {
            Some((model, index)) => Some(index.best(image_embeddings(model, tiles)?)?),
            None => None,
        };
        Ok(BatchResult { probs, reports })
    }
}

/// A trained adapter's classifier ([`Classifier`]: LoRA backbone and heads, vision only), as the
/// page trains or imports it.
pub struct AdapterClassifier<'a> {
    classifier: &'a Classifier,
    preprocess: PreprocessConfig,
}

impl<'a> AdapterClassifier<'a> {
    /// Wraps `classifier`, whose tiles are preprocessed with `preprocess` (its backbone's).
    pub fn new(classifier: &'a Classifier, preprocess: PreprocessConfig) -> Self {
        Self { classifier, preprocess }
    }

    fn pixels(&self, tiles: &[RgbImage]) -> Vec<f32> {
        prepare(tiles, &self.preprocess).concat()
    }
}

impl TileClassifier for AdapterClassifier<'_> {
    fn classes(&self) -> &[String] {
        &self.classifier.info.classes
    }

    fn classify(&self, tiles: &[RgbImage]) -> Result<BatchResult> {
        let probs =
            self.classifier.predict(self.pixels(tiles), tiles.len(), self.preprocess.crop)?;
        Ok(BatchResult { probs, reports: None })
    }
}

impl AsyncTileClassifier for AdapterClassifier<'_> {
    fn classes(&self) -> &[String] {
        &self.classifier.info.classes
    }

    async fn classify_async(&self, tiles: &[RgbImage]) -> Result<BatchResult> {
        let (pixels, crop) = (self.pixels(tiles), self.preprocess.crop);
        let probs = self.classifier.predict_async(pixels, tiles.len(), crop).await?;
        Ok(BatchResult { probs, reports: None })
    }
}
