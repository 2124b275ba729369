//! CLIP-IT step 1 for training: every sample gets its top-1 report (retrieved with the teacher,
//! or read from a pairs file), and the loss gets that report's normalised teacher embedding or,
//! in text-LoRA mode, its token ids.

use std::path::PathBuf;
use std::sync::Arc;

use burn::tensor::Device;

use super::data::{attach_pairs, Batch, Dataset};
use super::run::RunConfig;
use super::trainer::TrainBatch;
use crate::embed::{embed_image_files, embed_texts};
use crate::model::Model;
use crate::retrieval::{matrix_from_host, read_pairs_jsonl, top_k, Corpus};
use crate::{Error, Result};

/// CLIP-IT's pairing of samples with reports, and what the loss needs from it: the
/// L2-normalised teacher embedding of each sample's report (precomputed targets) and, for
/// text-LoRA training, the report's token ids.
pub(super) struct TextTargets {
    /// Row-major `[reports, dim]` normalised report embeddings.
    table: Arc<Vec<f32>>,
    dim: usize,
    /// Token ids of every report (text-LoRA mode only).
    tokens: Option<Arc<Vec<Vec<u32>>>>,
    /// The report index of each sample.
    index: Vec<usize>,
}

impl TextTargets {
    pub(super) fn rows(&self, samples: &[usize]) -> (Vec<f32>, usize) {
        let mut out = Vec::with_capacity(samples.len() * self.dim);
        for &i in samples {
            let j = self.index[i];
            out.extend_from_slice(&self.table[j * self.dim..(j + 1) * self.dim]);
        }
        (out, self.dim)
    }

    fn token_ids(&self, samples: &[usize]) -> Option<Vec<Vec<u32>>> {
        self.tokens.as_ref().map(|t| samples.iter().map(|&i| t[self.index[i]].clone()).collect())
    }

    /// A training batch with these samples' targets (and token ids in text-LoRA mode).
    pub(super) fn batch(&self, b: &Batch, device: &Device) -> TrainBatch {
        let tb = TrainBatch::from_host(
            b.pixels.clone(),
            b.crop,
            &b.labels,
            Some(self.rows(&b.indices)),
            device,
        );
        match self.token_ids(&b.indices) {
            Some(ids) => tb.with_token_ids(ids),
            None => tb,
        }
    }
}

fn l2_rows(values: &mut [f32], dim: usize) {
    for row in values.chunks_mut(dim) {
        let n = row.iter().map(|x| x * x).sum::<f32>().sqrt().max(1e-12);
        row.iter_mut().for_each(|x| *x /= n);
    }
}

/// The top-1 report of every sample by cosine with the teacher (CLIP-IT step 1).
fn retrieve_indices(
    teacher: &Model,
    table: &[f32],
    samples: &Dataset,
    batch: usize,
) -> Result<Vec<usize>> {
    let device = teacher.vision.pos_embed.val().device();
    let paths: Vec<PathBuf> = samples.samples.iter().map(|s| s.path.clone()).collect();
    let images = embed_image_files(teacher, &paths, batch, false, |_| {})?;
    let hits = top_k(
        matrix_from_host(&images.values, images.dim, &device)?,
        matrix_from_host(table, teacher.embed_dim, &device)?,
        1,
    )?;
    Ok(hits.iter().map(|h| h[0].0).collect())
}

/// Pairs the training and validation samples with reports, by retrieval or from `cfg.pairs`.
pub(super) fn pair_reports(
    cfg: &RunConfig,
    teacher: &Model,
    sets: [&Dataset; 2],
) -> Result<[TextTargets; 2]> {
    let reports = cfg.reports.as_ref().ok_or_else(|| Error::msg("CLIP-IT needs --reports"))?;
    let corpus = Corpus::read(reports)?;
    let batch = cfg.options.batch_size.min(64);
    let dim = teacher.embed_dim;
    let mut table = embed_texts(teacher, &corpus.texts, batch, |_| {})?;
    l2_rows(&mut table, dim);
    let table = Arc::new(table);
    let tokens =
        if cfg.text_lora { Some(Arc::new(teacher.tokenize(&corpus.texts)?)) } else { None };
    let pairs = cfg.pairs.as_ref().map(read_pairs_jsonl).transpose()?;
    let targets = |set: &Dataset| -> Result<TextTargets> {
        let index = match &pairs {
            Some(p) => attach_pairs(set, p, &corpus.ids)?,
            None => retrieve_indices(teacher, &table, set, batch)?,
        };
        Ok(TextTargets { table: table.clone(), dim, tokens: tokens.clone(), index })
    };
    Ok([targets(sets[0])?, targets(sets[1])?])
}
