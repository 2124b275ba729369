//! The two baselines a CLIP-IT run is judged against, on its own validation split: zero-shot
//! (each tile's nearest class prompt, no training at all) and a linear probe (a logistic
//! regression on the frozen image embeddings of the training split). Both work on embeddings
//! already on the host, so the page computes them in a blink beside its training session, and
//! the CLI with the same code.

use std::path::PathBuf;

use serde::Serialize;

use super::data::Dataset;
use crate::embed::{embed_image_files, embed_texts};
use crate::metrics::ConfusionMatrix;
use crate::model::Model;
use crate::retrieval::{matrix_from_host, matrix_to_host};
use crate::zeroshot::{class_embeddings, prompts};
use crate::{Error, Result};

/// A classifier's figures on the validation split.
#[derive(Debug, Clone, Copy, Serialize, PartialEq)]
pub struct Score {
    /// Mean recall over the classes present (the paper's "accuracy").
    pub balanced_accuracy: f64,
    /// Plain accuracy.
    pub accuracy: f64,
}

impl Score {
    /// The figures of `preds` against `labels`.
    pub fn of(labels: &[usize], preds: &[usize], n_classes: usize) -> Result<Self> {
        let m = ConfusionMatrix::from_predictions(labels, preds, n_classes)?;
        Ok(Self { balanced_accuracy: m.balanced_accuracy(), accuracy: m.accuracy() })
    }
}

/// Zero-shot and linear-probe figures on one validation split.
#[derive(Debug, Clone, Copy, Serialize, PartialEq)]
pub struct Baselines {
    /// Nearest class prompt by cosine (no training).
    pub zero_shot: Option<Score>,
    /// Logistic regression on the training split's frozen embeddings.
    pub linear_probe: Score,
}

/// Row `i` of a row-major `[_, dim]` matrix.
fn row(m: &[f32], dim: usize, i: usize) -> &[f32] {
    &m[i * dim..(i + 1) * dim]
}

/// `x` scaled to unit length.
fn unit(x: &[f32]) -> Vec<f32> {
    let norm = dot(x, x).sqrt().max(1e-12);
    x.iter().map(|v| v / norm).collect()
}

fn dot(a: &[f32], b: &[f32]) -> f32 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

/// The class whose embedding (row of `class_embeds`, `[C, dim]`) has the largest cosine with each
/// of `rows` (indices into `embeds`, `[N, dim]`).
pub fn nearest_class(
    embeds: &[f32],
    dim: usize,
    rows: &[usize],
    class_embeds: &[f32],
) -> Vec<usize> {
    let n_classes = class_embeds.len() / dim.max(1);
    let norms: Vec<f32> = (0..n_classes)
        .map(|c| dot(row(class_embeds, dim, c), row(class_embeds, dim, c)).sqrt())
        .collect();
    rows.iter()
        .map(|&i| {
            let x = row(embeds, dim, i);
            (0..n_classes)
                .map(|c| dot(x, row(class_embeds, dim, c)) / norms[c].max(1e-12))
                .enumerate()
                .fold((0, f32::NEG_INFINITY), |best, (c, s)| if s > best.1 { (c, s) } else { best })
                .0
        })
        .collect()
}

/// A multinomial logistic regression on L2-normalised, then standardised, embeddings.
#[derive(Debug, Clone)]
pub struct LinearProbe {
    dim: usize,
    n_classes: usize,
    mean: Vec<f32>,
    inv_std: Vec<f32>,
    /// `[n_classes, dim]`, row-major.
    weights: Vec<f32>,
    bias: Vec<f32>,
}

/// Full-batch gradient descent steps of [`LinearProbe::fit`].
const PROBE_STEPS: usize = 300;
/// Its step size (features are standardised, so one value serves every model).
const PROBE_LR: f32 = 0.5;
/// Its L2 penalty on the weights.
const PROBE_L2: f32 = 1e-3;

impl LinearProbe {
    /// The features of sample `i`: unit length, then standardised with the training statistics.
    fn features(&self, embeds: &[f32], i: usize) -> Vec<f32> {
        self.standardise(unit(row(embeds, self.dim, i)))
    }

    fn standardise(&self, mut x: Vec<f32>) -> Vec<f32> {
        for ((v, m), s) in x.iter_mut().zip(&self.mean).zip(&self.inv_std) {
            *v = (*v - m) * s;
        }
        x
    }

    fn logits(&self, f: &[f32]) -> Vec<f32> {
        (0..self.n_classes)
            .map(|c| dot(row(&self.weights, self.dim, c), f) + self.bias[c])
            .collect()
    }

    /// Fits on `train` (indices into `embeds`, `[N, dim]`) with their `labels` (all `< n_classes`).
    /// Deterministic: zero initialisation, full-batch gradient descent.
    pub fn fit(
        embeds: &[f32],
        dim: usize,
        train: &[usize],
        labels: &[usize],
        n_classes: usize,
    ) -> Result<Self> {
        if dim == 0 || embeds.len() % dim != 0 || train.is_empty() || n_classes < 2 {
            return Err(Error::msg("linear probe: no training samples, features or classes"));
        }
        if let Some(&i) = train.iter().find(|&&i| {
            (i + 1) * dim > embeds.len() || labels.get(i).is_none_or(|&l| l >= n_classes)
        }) {
            return Err(Error::msg(format!("linear probe: sample {i} is out of range")));
        }
        let mut probe = Self {
            dim,
            n_classes,
            mean: vec![0.0; dim],
            inv_std: vec![1.0; dim],
            weights: vec![0.0; n_classes * dim],
            bias: vec![0.0; n_classes],
        };
        let units: Vec<Vec<f32>> = train.iter().map(|&i| unit(row(embeds, dim, i))).collect();
        let n = train.len() as f32;
        for j in 0..dim {
            let mean = units.iter().map(|f| f[j]).sum::<f32>() / n;
            let var = units.iter().map(|f| (f[j] - mean).powi(2)).sum::<f32>() / n;
            probe.mean[j] = mean;
            probe.inv_std[j] = 1.0 / var.sqrt().max(1e-6);
        }
        let feats: Vec<Vec<f32>> = units.into_iter().map(|u| probe.standardise(u)).collect();
        for _ in 0..PROBE_STEPS {
            let mut grad_w = vec![0.0f32; n_classes * dim];
            let mut grad_b = vec![0.0f32; n_classes];
            for (f, &i) in feats.iter().zip(train) {
                let logits = probe.logits(f);
                let top = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
                let exp: Vec<f32> = logits.iter().map(|l| (l - top).exp()).collect();
                let sum: f32 = exp.iter().sum();
                for c in 0..n_classes {
                    let g = exp[c] / sum - f32::from(u8::from(labels[i] == c));
                    grad_b[c] += g;
                    for (gw, x) in grad_w[c * dim..(c + 1) * dim].iter_mut().zip(f) {
                        *gw += g * x;
                    }
                }
            }
            for (w, g) in probe.weights.iter_mut().zip(&grad_w) {
                *w -= PROBE_LR * (g / n + PROBE_L2 * *w);
            }
            for (b, g) in probe.bias.iter_mut().zip(&grad_b) {
                *b -= PROBE_LR * g / n;
            }
        }
        Ok(probe)
    }

    /// The predicted class of each of `rows` (indices into `embeds`).
    pub fn predict(&self, embeds: &[f32], rows: &[usize]) -> Vec<usize> {
        rows.iter()
            .map(|&i| {
                let logits = self.logits(&self.features(embeds, i));
                (0..self.n_classes)
                    .fold(0, |best, c| if logits[c] > logits[best] { c } else { best })
            })
            .collect()
    }
}

/// Zero-shot (when `class_embeds` is given, `[C, dim]`) and linear-probe figures on `val`, the
/// probe fitted on `train`; `embeds` (`[N, dim]`) are the image embeddings of every sample and
/// `labels` their classes.
pub fn baselines(
    embeds: &[f32],
    dim: usize,
    labels: &[usize],
    n_classes: usize,
    (train, val): (&[usize], &[usize]),
    class_embeds: Option<&[f32]>,
) -> Result<Baselines> {
    if val.is_empty() {
        return Err(Error::msg("baselines: the validation split is empty"));
    }
    let truth: Vec<usize> = val.iter().map(|&i| labels[i]).collect();
    let zero_shot = class_embeds
        .map(|c| Score::of(&truth, &nearest_class(embeds, dim, val, c), n_classes))
        .transpose()?;
    let probe = LinearProbe::fit(embeds, dim, train, labels, n_classes)?;
    let linear_probe = Score::of(&truth, &probe.predict(embeds, val), n_classes)?;
    Ok(Baselines { zero_shot, linear_probe })
}

/// [`baselines`] of a CLIP (`model`, with a text tower) on the images of a training and a
/// validation set: every image embedded once, the class prompts from `templates`, as the page
/// measures them beside its training session.
pub fn clip_baselines(
    model: &Model,
    train: &Dataset,
    val: &Dataset,
    templates: &[String],
) -> Result<Baselines> {
    let classes = &train.classes;
    let paths: Vec<PathBuf> =
        train.samples.iter().chain(&val.samples).map(|s| s.path.clone()).collect();
    let labels: Vec<usize> = train.samples.iter().chain(&val.samples).map(|s| s.label).collect();
    let images = embed_image_files(model, &paths, 32, false, |_| {})?;
    let prompts: Vec<String> = prompts(classes, templates).into_iter().flatten().collect();
    let texts = embed_texts(model, &prompts, 32, |_| {})?;
    let device = model.vision.pos_embed.val().device();
    let (dim, t) = (model.embed_dim, templates.len());
    let per_class = (0..classes.len())
        .map(|c| matrix_from_host(&texts[c * t * dim..(c + 1) * t * dim], dim, &device))
        .collect::<Result<Vec<_>>>()?;
    let (class_embeds, _) = matrix_to_host(class_embeddings(per_class)?)?;
    let n_train = train.samples.len();
    let train_idx: Vec<usize> = (0..n_train).collect();
    let val_idx: Vec<usize> = (n_train..paths.len()).collect();
    baselines(
        &images.values,
        dim,
        &labels,
        classes.len(),
        (&train_idx, &val_idx),
        Some(&class_embeds),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Two classes along different axes, with noise on the others.
    fn blobs(n: usize) -> (Vec<f32>, Vec<usize>) {
        let (mut x, mut y) = (Vec::new(), Vec::new());
        for i in 0..n {
            let c = i % 2;
            let jitter = ((i * 37 % 11) as f32 - 5.0) * 0.05;
            let mut v = vec![jitter, -jitter, 0.1 + jitter, 0.0];
            v[c] += 1.0;
            x.extend(v);
            y.push(c);
        }
        (x, y)
    }

    #[test]
    fn nearest_class_picks_the_largest_cosine() {
        let embeds = [1.0, 0.1, 0.2, 3.0];
        let classes = [10.0, 0.0, 0.0, 1.0];
        assert_eq!(nearest_class(&embeds, 2, &[0, 1], &classes), vec![0, 1]);
    }

    #[test]
    fn the_probe_separates_separable_classes_and_zero_shot_follows_the_prompts() {
        let (x, y) = blobs(40);
        let train: Vec<usize> = (0..30).collect();
        let val: Vec<usize> = (30..40).collect();
        let right = [1.0, 0.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0];
        let swapped = [0.0, 1.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0];
        let b = baselines(&x, 4, &y, 2, (&train, &val), Some(&right)).unwrap();
        assert_eq!(b.linear_probe.balanced_accuracy, 1.0);
        assert_eq!(b.zero_shot.unwrap().accuracy, 1.0);
        let b = baselines(&x, 4, &y, 2, (&train, &val), Some(&swapped)).unwrap();
        assert_eq!(b.zero_shot.unwrap().accuracy, 0.0);
        // The probe learns the labels, whatever they are: flip them and it follows.
        let flipped: Vec<usize> = y.iter().map(|c| 1 - c).collect();
        let b = baselines(&x, 4, &flipped, 2, (&train, &val), None).unwrap();
        assert_eq!((b.linear_probe.accuracy, b.zero_shot), (1.0, None));
    }

    #[test]
    fn bad_input_is_an_error() {
        let (x, y) = blobs(4);
        assert!(baselines(&x, 4, &y, 2, (&[0, 1], &[]), None).is_err());
        assert!(LinearProbe::fit(&x, 4, &[9], &y, 2).is_err());
        assert!(LinearProbe::fit(&x, 4, &[0], &y, 1).is_err());
    }
}
