//! The linear probe (Table 3a's baseline): frozen backbone features, computed once per run, and
//! the cross-entropy of the vision head on them.

use burn::module::Module;
use burn::tensor::{Device, Int, Tensor, TensorData};

use super::data::BatchLoader;
use super::heads::{cross_entropy, ClipItModel};
use super::trainer::{LossParts, TrainOptions};
use crate::retrieval::matrix_to_host;
use crate::{Error, Result};

/// Frozen backbone features of a dataset, computed once.
pub(super) struct Features {
    /// Row-major `[samples, dim]`.
    values: Vec<f32>,
    /// Class index of each sample.
    pub(super) labels: Vec<usize>,
    dim: usize,
}

impl Features {
    /// Runs the frozen backbone once over every image `loader` yields.
    pub(super) fn extract(model: &ClipItModel, loader: &BatchLoader) -> Result<Self> {
        let model = model.valid();
        let plain = model.backbone.pos_embed.val().device();
        let (mut values, mut labels, mut dim) = (Vec::new(), Vec::new(), 0);
        for batch in loader.epoch(0) {
            let (v, [_, d]) = matrix_to_host(model.backbone.forward(batch.to_tensor(&plain)))?;
            values.extend(v);
            labels.extend_from_slice(&batch.labels);
            dim = d;
        }
        if labels.is_empty() {
            return Err(Error::msg("no image could be read to compute features"));
        }
        Ok(Self { values, labels, dim })
    }

    /// The samples `idx` as features `[n, dim]` and labels `[n]` on `device`.
    pub(super) fn batch(&self, idx: &[usize], device: &Device) -> (Tensor<2>, Tensor<1, Int>) {
        let mut rows = Vec::with_capacity(idx.len() * self.dim);
        for &i in idx {
            rows.extend_from_slice(&self.values[i * self.dim..(i + 1) * self.dim]);
        }
        let labels: Vec<i64> = idx.iter().map(|&i| self.labels[i] as i64).collect();
        (
            Tensor::from_data(TensorData::new(rows, [idx.len(), self.dim]), device),
            Tensor::from_data(TensorData::new(labels, [idx.len()]), device),
        )
    }
}

/// The linear probe's loss: CE of h_v on cached features.
pub(super) fn probe_loss(
    model: &ClipItModel,
    x: Tensor<2>,
    labels: Tensor<1, Int>,
    opts: &TrainOptions,
) -> Result<LossParts> {
    let ce = cross_entropy(model.heads.h_v.forward(x), labels, opts.paper_compat);
    Ok(LossParts { total: ce.clone(), ce: ce.detach(), kd: None })
}
