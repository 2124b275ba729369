//! The contrastive baseline of the paper's Table 3b ("Contrastive", the official `CONCHNet.py` /
//! `QUILTNet.py`): the whole CLIP model carries LoRA adapters (vision and text towers) and is
//! fine-tuned with a symmetric InfoNCE loss (temperature 0.07) between each image and the prompt
//! of its class, built from the first template. It is tested as zero-shot: `logit_scale·cos`
//! against every template's prompt, averaged per class, then a softmax.
//!
//! The same loss trains the project's demo CLIP on image–report pairs (`clipit pretrain`).

use std::sync::Arc;

use burn::tensor::activation::log_softmax;
use burn::tensor::{Device, Int, Tensor};

use super::data::Batch;
use super::heads::{cross_entropy, ClipItModel};
use super::trainer::{LossParts, TrainBatch};
use crate::model::text::TextTransformer;
use crate::model::Model;
use crate::retrieval::l2_normalize;
use crate::zeroshot::{class_embeddings, prompts};
use crate::{Error, Result};

/// The official code's InfoNCE temperature.
pub const TEMPERATURE: f64 = 0.07;

/// Symmetric InfoNCE (CLIP's loss) between `image` `[n, d]` and `text` `[n, d]`, where row i of
/// each is a positive pair and every other row of the batch a negative:
/// `(CE(I·Tᵀ/τ, i) + CE(T·Iᵀ/τ, i)) / 2` on L2-normalised embeddings.
pub fn info_nce(image: Tensor<2>, text: Tensor<2>, temperature: f64) -> Result<Tensor<1>> {
    let ([n, d], [m, e]) = (image.dims(), text.dims());
    if n != m || d != e {
        return Err(Error::msg(format!(
            "contrastive loss: {n}×{d} image embeddings against {m}×{e} text embeddings"
        )));
    }
    let device = image.device();
    let logits = l2_normalize(image).matmul(l2_normalize(text).transpose()).div_scalar(temperature);
    let labels = Tensor::<1, Int>::arange(0..n as i64, &device);
    let i2t = cross_entropy(logits.clone(), labels.clone(), false);
    let t2i = cross_entropy(logits.transpose(), labels, false);
    Ok((i2t + t2i).div_scalar(2.0))
}

/// Symmetric InfoNCE in which every pair of the same class is a positive (UniCL's image–label
/// contrast): row i's target spreads evenly over the columns whose label is `labels[i]`, in both
/// directions. With as many classes as rows it is [`info_nce`]. `clipit pretrain --class-aware`
/// uses it: with two classes and a batch of 32, the plain loss would push each image away from
/// the fifteen other reports of its own class.
pub fn class_aware_info_nce(
    image: Tensor<2>,
    text: Tensor<2>,
    labels: Tensor<1, Int>,
    temperature: f64,
) -> Result<Tensor<1>> {
    let ([n, d], [m, e], [l]) = (image.dims(), text.dims(), labels.dims());
    if n != m || d != e || n != l {
        return Err(Error::msg(format!(
            "contrastive loss: {n}×{d} image embeddings against {m}×{e} text embeddings and {l} labels"
        )));
    }
    let logits = l2_normalize(image).matmul(l2_normalize(text).transpose()).div_scalar(temperature);
    let same = labels.clone().unsqueeze_dim::<2>(1).equal(labels.unsqueeze_dim::<2>(0)).float();
    let targets = same.clone() / same.sum_dim(1);
    let i2t = (log_softmax(logits.clone(), 1) * targets.clone()).sum_dim(1).mean().neg();
    let t2i = (log_softmax(logits.transpose(), 1) * targets).sum_dim(1).mean().neg();
    Ok((i2t + t2i).div_scalar(2.0))
}

/// The class prompts of a contrastive run, tokenised once: the first template's prompt of each
/// class (training) and every template's prompts (testing).
pub(super) struct ClassPrompts {
    /// `[classes]` token ids of the first template's prompt.
    train: Arc<Vec<Vec<u32>>>,
    /// `[classes][templates]` token ids of every prompt.
    all: Vec<Vec<Vec<u32>>>,
    /// The CLIP's raw (log) logit scale, fixed as in peft (a bare parameter is never trained).
    pub(super) logit_scale: f32,
}

impl ClassPrompts {
    /// Tokenises the prompts of `classes` × `templates` with `clip`'s tokenizer.
    pub(super) fn new(clip: &Model, classes: &[String], templates: &[String]) -> Result<Self> {
        if !clip.has_text() {
            return Err(Error::msg(format!(
                "{}: the contrastive method needs a CLIP model with a text encoder as --backbone",
                clip.name
            )));
        }
        if templates.is_empty() {
            return Err(Error::msg("the contrastive method needs at least one template"));
        }
        let all = prompts(classes, templates)
            .iter()
            .map(|p| clip.tokenize(p))
            .collect::<Result<Vec<_>>>()?;
        let train = Arc::new(all.iter().map(|p| p[0].clone()).collect());
        Ok(Self { train, all, logit_scale: clip.logit_scale })
    }

    /// A training batch whose token ids are each image's class prompt.
    pub(super) fn batch(&self, b: &Batch, device: &Device) -> TrainBatch {
        let ids = b.labels.iter().map(|&l| self.train[l].clone()).collect();
        TrainBatch::from_host(b.pixels.clone(), b.crop, &b.labels, None, device).with_token_ids(ids)
    }

    /// One embedding per class from `text`: every template's prompt, normalised, averaged and
    /// normalised again (see [`class_embeddings`]). `[classes, dim]`.
    pub(super) fn class_embeddings(&self, text: &TextTransformer) -> Result<Tensor<2>> {
        class_embeddings(self.all.iter().map(|p| text.forward(p)).collect::<Result<Vec<_>>>()?)
    }
}

fn text_tower(model: &ClipItModel) -> Result<&TextTransformer> {
    model.text.as_ref().ok_or_else(|| Error::msg("the contrastive method needs the text tower"))
}

/// The contrastive loss of a batch: symmetric InfoNCE between the images and the token ids of
/// their class prompts (or paired texts), both through the model's LoRA-adapted towers.
pub fn contrastive_batch_loss(model: &ClipItModel, batch: &TrainBatch) -> Result<LossParts> {
    batch_loss(model, batch, false)
}

/// [`contrastive_batch_loss`] with every same-class pair a positive ([`class_aware_info_nce`]).
pub fn class_aware_batch_loss(model: &ClipItModel, batch: &TrainBatch) -> Result<LossParts> {
    batch_loss(model, batch, true)
}

fn batch_loss(model: &ClipItModel, batch: &TrainBatch, class_aware: bool) -> Result<LossParts> {
    let ids = batch
        .token_ids
        .as_ref()
        .ok_or_else(|| Error::msg("the contrastive loss needs the batch's token ids"))?;
    let text = text_tower(model)?.forward(ids)?;
    let image = model.backbone.forward(batch.pixels.clone());
    let total = if class_aware {
        class_aware_info_nce(image, text, batch.labels.clone(), TEMPERATURE)?
    } else {
        info_nce(image, text, TEMPERATURE)?
    };
    Ok(LossParts { total: total.clone(), ce: total.detach(), kd: None })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::retrieval::matrix_from_host;

    /// InfoNCE computed on the host in f64, independently of the tensor code.
    fn host_info_nce(a: &[f64], b: &[f64], n: usize, d: usize, t: f64) -> f64 {
        let norm = |v: &[f64]| -> Vec<f64> {
            v.chunks(d)
                .flat_map(|r| {
                    let s = r.iter().map(|x| x * x).sum::<f64>().sqrt();
                    r.iter().map(move |x| x / s)
                })
                .collect()
        };
        let (a, b) = (norm(a), norm(b));
        let sim = |i: usize, j: usize| -> f64 {
            (0..d).map(|k| a[i * d + k] * b[j * d + k]).sum::<f64>() / t
        };
        let ce = |row: &dyn Fn(usize) -> f64, target: usize| -> f64 {
            let lse = (0..n).map(row).map(f64::exp).sum::<f64>().ln();
            lse - row(target)
        };
        let i2t: f64 = (0..n).map(|i| ce(&|j| sim(i, j), i)).sum::<f64>() / n as f64;
        let t2i: f64 = (0..n).map(|j| ce(&|i| sim(i, j), j)).sum::<f64>() / n as f64;
        (i2t + t2i) / 2.0
    }

    #[test]
    fn class_aware_info_nce_is_info_nce_with_distinct_labels_and_pools_same_class_pairs() {
        let device = Device::flex();
        let (n, d) = (4, 3);
        let a: Vec<f32> = (0..n * d).map(|i| ((i * 7 % 11) as f32 - 5.0) / 3.0).collect();
        let b: Vec<f32> = (0..n * d).map(|i| ((i * 5 % 13) as f32 - 6.0) / 4.0).collect();
        let m = |v: &[f32]| matrix_from_host(v, d, &device).unwrap();
        let labels = |l: [i64; 4]| Tensor::<1, Int>::from_ints(l, &device);
        let plain = info_nce(m(&a), m(&b), 0.5).unwrap().into_scalar::<f32>();
        let distinct = class_aware_info_nce(m(&a), m(&b), labels([0, 1, 2, 3]), 0.5).unwrap();
        assert!((distinct.into_scalar::<f32>() - plain).abs() < 1e-5);
        // Two classes {0, 2} and {1, 3}: on the host, each row's target is half on each member.
        let (a64, b64): (Vec<f64>, Vec<f64>) =
            (a.iter().map(|&x| x as f64).collect(), b.iter().map(|&x| x as f64).collect());
        let unit = |v: &[f64]| -> Vec<f64> {
            v.chunks(d)
                .flat_map(|r| {
                    let s = r.iter().map(|x| x * x).sum::<f64>().sqrt();
                    r.iter().map(move |x| x / s)
                })
                .collect()
        };
        let (ua, ub) = (unit(&a64), unit(&b64));
        let sim =
            |i: usize, j: usize| (0..d).map(|k| ua[i * d + k] * ub[j * d + k]).sum::<f64>() / 0.5;
        let class = [0, 1, 0, 1];
        let side = |s: &dyn Fn(usize, usize) -> f64| -> f64 {
            (0..n)
                .map(|i| {
                    let lse = (0..n).map(|j| s(i, j).exp()).sum::<f64>().ln();
                    (0..n)
                        .filter(|&j| class[j] == class[i])
                        .map(|j| (lse - s(i, j)) / 2.0)
                        .sum::<f64>()
                })
                .sum::<f64>()
                / n as f64
        };
        let want = (side(&|i, j| sim(i, j)) + side(&|i, j| sim(j, i))) / 2.0;
        let got = class_aware_info_nce(m(&a), m(&b), labels([0, 1, 0, 1]), 0.5).unwrap();
        assert!((got.into_scalar::<f32>() as f64 - want).abs() < 1e-5, "{want}");
    }

    #[test]
    fn info_nce_matches_a_host_computation() {
        let device = Device::flex();
        let (n, d) = (4, 3);
        let a: Vec<f32> = (0..n * d).map(|i| ((i * 7 % 11) as f32 - 5.0) / 3.0).collect();
        let b: Vec<f32> = (0..n * d).map(|i| ((i * 5 % 13) as f32 - 6.0) / 4.0).collect();
        let got = info_nce(
            matrix_from_host(&a, d, &device).unwrap(),
            matrix_from_host(&b, d, &device).unwrap(),
            TEMPERATURE,
        )
        .unwrap()
        .into_scalar::<f32>();
        let want = host_info_nce(
            &a.iter().map(|&x| f64::from(x)).collect::<Vec<_>>(),
            &b.iter().map(|&x| f64::from(x)).collect::<Vec<_>>(),
            n,
            d,
            TEMPERATURE,
        );
        assert!((f64::from(got) - want).abs() < 1e-4 * want.max(1.0), "{got} vs {want}");
        // Identical, well separated pairs give a loss near 0; shapes must agree.
        let eye = matrix_from_host(&[1.0, 0.0, 0.0, 1.0], 2, &device).unwrap();
        let low = info_nce(eye.clone(), eye.clone(), TEMPERATURE).unwrap().into_scalar::<f32>();
        assert!(low < 1e-5, "{low}");
        let three = matrix_from_host(&[1.0, 0.0, 0.0, 1.0, 1.0, 1.0], 2, &device).unwrap();
        assert!(info_nce(eye, three, TEMPERATURE).is_err());
    }
}
