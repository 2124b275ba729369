//! Streaming mini-batches: images are read from disk per batch (never the whole dataset),
//! decoded, augmented and preprocessed in parallel (rayon, feature `cli`), and the next batches
//! are prepared on a background thread while the caller trains on the current one.
//!
//! Results depend only on `(seed, epoch)`: the order is a seeded shuffle per epoch, and each
//! sample's augmentation uses its own generator `Rng::derive(seed, [AUG, epoch, index])`, so the
//! number of threads and the prefetching change nothing. Unreadable images are skipped and
//! reported ([`Skipped`]), so a batch can be smaller than the batch size.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::PathBuf;
use std::sync::Arc;

use burn::tensor::{Device, Int, Tensor, TensorData};
use image::RgbImage;

use super::Dataset;
use crate::preprocess::{decode_rgb, load_rgb, max_pixels, preprocess, PreprocessConfig};
use crate::train::augment::{augment, AugmentConfig};
use crate::train::split::Rng;
use crate::{Error, Result};

/// Stream keys for [`Rng::derive`], so shuffling and augmentation never share random numbers.
const SHUFFLE_STREAM: u64 = 0x5348_5546; // "SHUF"
const AUGMENT_STREAM: u64 = 0x4155_474D; // "AUGM"

/// How a [`BatchLoader`] builds batches.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LoaderConfig {
    /// Resize, crop and normalisation of every image.
    pub preprocess: PreprocessConfig,
    /// Samples per batch (the last batch may be smaller unless `drop_last`).
    pub batch_size: usize,
    /// Training augmentation applied before preprocessing; `None` for evaluation.
    pub augment: Option<AugmentConfig>,
    /// Shuffle the order each epoch (seeded by `seed` and the epoch number).
    pub shuffle: bool,
    /// Seed of the shuffles and augmentations.
    pub seed: u64,
    /// Drop the last batch of an epoch when it is smaller than `batch_size`.
    pub drop_last: bool,
    /// Images with more pixels are refused (and skipped) before decoding.
    pub max_pixels: u64,
    /// Batches prepared ahead on a background thread (0: prepare each batch when asked).
    pub prefetch: usize,
}

impl LoaderConfig {
    /// Training defaults: shuffled, seed 0, no augmentation, last batch kept, prefetch 2.
    pub fn new(preprocess: PreprocessConfig, batch_size: usize) -> Self {
        Self {
            preprocess,
            batch_size,
            augment: None,
            shuffle: true,
            seed: 0,
            drop_last: false,
            max_pixels: max_pixels(),
            prefetch: 2,
        }
    }

    /// Evaluation defaults: dataset order, no augmentation, every sample kept.
    pub fn eval(preprocess: PreprocessConfig, batch_size: usize) -> Self {
        Self { shuffle: false, ..Self::new(preprocess, batch_size) }
    }
}

/// An image that could not be used, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Skipped {
    /// Index of the sample in the dataset.
    pub index: usize,
    /// Its file.
    pub path: PathBuf,
    /// The error, phrased for the user.
    pub error: String,
}

/// One mini-batch.
#[derive(Debug, Clone, PartialEq)]
pub struct Batch {
    /// `len() x 3 x crop x crop` values, sample-major, each sample CHW as [`preprocess`] returns it.
    pub pixels: Vec<f32>,
    /// Class of each sample.
    pub labels: Vec<usize>,
    /// Dataset index of each sample (to look up pseudo-pairs and the like).
    pub indices: Vec<usize>,
    /// Side of the square images.
    pub crop: usize,
    /// Samples of this batch (or of preceding batches that were entirely unreadable) that were
    /// skipped.
    pub skipped: Vec<Skipped>,
}

impl Batch {
    /// Number of samples.
    pub fn len(&self) -> usize {
        self.labels.len()
    }

    /// Whether the batch has no samples.
    pub fn is_empty(&self) -> bool {
        self.labels.is_empty()
    }

    /// The pixels' shape `[n, 3, crop, crop]`.
    pub fn shape(&self) -> [usize; 4] {
        [self.len(), 3, self.crop, self.crop]
    }

    /// The pixels as an `[n, 3, crop, crop]` tensor on `device`.
    pub fn to_tensor(&self, device: &Device) -> Tensor<4> {
        Tensor::<4>::from_data(TensorData::new(self.pixels.clone(), self.shape()), device)
    }

    /// The labels as an `[n]` integer tensor on `device`.
    pub fn labels_tensor(&self, device: &Device) -> Tensor<1, Int> {
        let labels: Vec<i64> = self.labels.iter().map(|&l| l as i64).collect();
        Tensor::<1, Int>::from_data(TensorData::new(labels, [self.len()]), device)
    }
}

/// Augments (if `augment` is given, with randomness from `rng`) and preprocesses one decoded image;
/// returns CHW values of length `3 * crop * crop`. No file access: usable in the browser.
pub fn prepare_image(
    img: &RgbImage,
    cfg: &PreprocessConfig,
    augment_cfg: Option<&AugmentConfig>,
    rng: &mut Rng,
) -> Vec<f32> {
    match augment_cfg {
        Some(a) if !a.is_identity() => preprocess(&augment(img, a, rng), cfg),
        _ => preprocess(img, cfg),
    }
}

/// Decodes an encoded image (PNG, JPEG, TIFF; any mode or bit depth, see [`decode_rgb`]) and
/// prepares it with [`prepare_image`]. `name` names the input in errors.
pub fn prepare_bytes(
    bytes: &[u8],
    name: &str,
    max_pixels: u64,
    cfg: &PreprocessConfig,
    augment_cfg: Option<&AugmentConfig>,
    rng: &mut Rng,
) -> Result<Vec<f32>> {
    let img = decode_rgb(bytes, name, max_pixels)?;
    Ok(prepare_image(&img, cfg, augment_cfg, rng))
}

/// Yields the batches of a [`Dataset`], epoch by epoch (see the module docs).
#[derive(Debug, Clone)]
pub struct BatchLoader {
    dataset: Arc<Dataset>,
    cfg: LoaderConfig,
}

impl BatchLoader {
    /// A loader over `dataset`. Errors on a zero batch size, an invalid preprocessing or
    /// augmentation config, an empty dataset, or `drop_last` leaving no batch at all.
    pub fn new(dataset: impl Into<Arc<Dataset>>, cfg: LoaderConfig) -> Result<Self> {
        let dataset = dataset.into();
        cfg.preprocess.validate()?;
        if let Some(a) = &cfg.augment {
            a.validate()?;
        }
        if cfg.batch_size == 0 {
            return Err(Error::msg("batch size must be at least 1"));
        }
        if dataset.is_empty() {
            return Err(Error::msg("the dataset has no images"));
        }
        if cfg.drop_last && dataset.len() < cfg.batch_size {
            return Err(Error::msg(format!(
                "with drop_last, {} images make no full batch of {}",
                dataset.len(),
                cfg.batch_size
            )));
        }
        Ok(Self { dataset, cfg })
    }

    /// The dataset.
    pub fn dataset(&self) -> &Dataset {
        &self.dataset
    }

    /// The configuration.
    pub fn config(&self) -> &LoaderConfig {
        &self.cfg
    }

    /// Number of batches per epoch.
    pub fn num_batches(&self) -> usize {
        let (n, b) = (self.dataset.len(), self.cfg.batch_size);
        if self.cfg.drop_last {
            n / b
        } else {
            n.div_ceil(b)
        }
    }

    /// The sample order of `epoch`: a seeded shuffle, or `0..len` without `shuffle`.
    pub fn order(&self, epoch: u64) -> Vec<usize> {
        let mut order: Vec<usize> = (0..self.dataset.len()).collect();
        if self.cfg.shuffle {
            Rng::derive(self.cfg.seed, &[SHUFFLE_STREAM, epoch]).shuffle(&mut order);
        }
        order
    }

    /// The dataset indices of each batch of `epoch`.
    pub fn batch_indices(&self, epoch: u64) -> Vec<Vec<usize>> {
        let b = self.cfg.batch_size;
        let mut out: Vec<Vec<usize>> = self.order(epoch).chunks(b).map(<[usize]>::to_vec).collect();
        if self.cfg.drop_last && out.last().is_some_and(|l| l.len() < b) {
            out.pop();
        }
        out
    }

    /// Reads, augments (seeded by `(seed, epoch, index)`) and preprocesses the samples at
    /// `indices`, in parallel with the `cli` feature. Unreadable images and out-of-range indices
    /// are left out and listed in [`Batch::skipped`].
    pub fn load(&self, indices: &[usize], epoch: u64) -> Batch {
        let results = map_indices(indices, |i| self.prepare(i, epoch));
        let crop = self.cfg.preprocess.crop;
        let mut batch = Batch {
            pixels: Vec::with_capacity(indices.len() * 3 * crop * crop),
            labels: Vec::with_capacity(indices.len()),
            indices: Vec::with_capacity(indices.len()),
            crop,
            skipped: Vec::new(),
        };
        for (&i, r) in indices.iter().zip(results) {
            match r {
                Ok(v) => {
                    batch.pixels.extend_from_slice(&v);
                    batch.labels.push(self.dataset.samples[i].label);
                    batch.indices.push(i);
                }
                Err(error) => {
                    let path =
                        self.dataset.samples.get(i).map(|s| s.path.clone()).unwrap_or_default();
                    batch.skipped.push(Skipped { index: i, path, error });
                }
            }
        }
        batch
    }

    /// One sample, ready for the model, or why not.
    fn prepare(&self, index: usize, epoch: u64) -> std::result::Result<Vec<f32>, String> {
        let Some(sample) = self.dataset.samples.get(index) else {
            return Err(format!(
                "sample index {index} out of range ({} samples)",
                self.dataset.len()
            ));
        };
        let cfg = &self.cfg;
        let run = || -> Result<Vec<f32>> {
            let img = load_rgb(&sample.path, cfg.max_pixels)?;
            let mut rng = Rng::derive(cfg.seed, &[AUGMENT_STREAM, epoch, index as u64]);
            Ok(prepare_image(&img, &cfg.preprocess, cfg.augment.as_ref(), &mut rng))
        };
        // A decoder bug on a hostile file must not take the training run down.
        match catch_unwind(AssertUnwindSafe(run)) {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(e)) => Err(e.to_string()),
            Err(_) => {
                Err(format!("{}: the image decoder panicked on this file", sample.path.display()))
            }
        }
    }

    /// The batches of `epoch`, prepared ahead on a background thread when `prefetch > 0` (and
    /// threads are available), otherwise on demand.
    pub fn epoch(&self, epoch: u64) -> Epoch {
        let batches = self.batch_indices(epoch);
        #[cfg(not(target_family = "wasm"))]
        if self.cfg.prefetch > 0 {
            let (tx, rx) = std::sync::mpsc::sync_channel(self.cfg.prefetch);
            let loader = self.clone();
            let todo = batches.clone();
            let spawned =
                std::thread::Builder::new().name("clipit-batch-loader".into()).spawn(move || {
                    for idx in todo {
                        if tx.send(loader.load(&idx, epoch)).is_err() {
                            break; // the Epoch was dropped
                        }
                    }
                });
            if let Ok(handle) = spawned {
                return Epoch::new(Source::Thread { rx: Some(rx), handle: Some(handle) });
            }
        }
        Epoch::new(Source::Inline { loader: self.clone(), epoch, batches: batches.into_iter() })
    }
}

#[cfg(feature = "cli")]
fn map_indices<T: Send>(indices: &[usize], f: impl Fn(usize) -> T + Sync + Send) -> Vec<T> {
    use rayon::prelude::*;
    indices.par_iter().map(|&i| f(i)).collect()
}

#[cfg(not(feature = "cli"))]
fn map_indices<T>(indices: &[usize], f: impl Fn(usize) -> T) -> Vec<T> {
    indices.iter().map(|&i| f(i)).collect()
}

enum Source {
    Inline {
        loader: BatchLoader,
        epoch: u64,
        batches: std::vec::IntoIter<Vec<usize>>,
    },
    #[cfg(not(target_family = "wasm"))]
    Thread {
        rx: Option<std::sync::mpsc::Receiver<Batch>>,
        handle: Option<std::thread::JoinHandle<()>>,
    },
}

/// The batches of one epoch, in order ([`BatchLoader::epoch`]). Batches whose images were all
/// unreadable are not yielded; their [`Skipped`] entries move to the next batch. Every skipped
/// image of the epoch so far is in [`Epoch::skipped`] (iterate with `by_ref()` to read it after
/// the loop). Dropping an `Epoch` early stops its background thread.
pub struct Epoch {
    source: Source,
    skipped: Vec<Skipped>,
    pending: Vec<Skipped>,
}

impl Epoch {
    fn new(source: Source) -> Self {
        Self { source, skipped: Vec::new(), pending: Vec::new() }
    }

    /// Every image skipped so far in this epoch.
    pub fn skipped(&self) -> &[Skipped] {
        &self.skipped
    }

    fn next_raw(&mut self) -> Option<Batch> {
        match &mut self.source {
            Source::Inline { loader, epoch, batches } => {
                batches.next().map(|idx| loader.load(&idx, *epoch))
            }
            #[cfg(not(target_family = "wasm"))]
            Source::Thread { rx, .. } => rx.as_ref()?.recv().ok(),
        }
    }
}

impl Iterator for Epoch {
    type Item = Batch;

    fn next(&mut self) -> Option<Batch> {
        loop {
            let mut batch = self.next_raw()?;
            self.skipped.extend(batch.skipped.iter().cloned());
            if batch.is_empty() {
                self.pending.append(&mut batch.skipped);
                continue;
            }
            if !self.pending.is_empty() {
                self.pending.append(&mut batch.skipped);
                batch.skipped = std::mem::take(&mut self.pending);
            }
            return Some(batch);
        }
    }
}

impl Drop for Epoch {
    fn drop(&mut self) {
        #[cfg(not(target_family = "wasm"))]
        if let Source::Thread { rx, handle } = &mut self.source {
            drop(rx.take()); // unblocks the producer's `send`
            if let Some(h) = handle.take() {
                let _ = h.join();
            }
        }
    }
}

impl std::fmt::Debug for Epoch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Epoch").field("skipped", &self.skipped.len()).finish_non_exhaustive()
    }
}
