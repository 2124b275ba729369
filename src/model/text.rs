//! The causal text transformer shared by CLIP (HF and open_clip) and CONCH.

use burn::module::{Module, Param};
use burn::nn::{Embedding, Linear};
use burn::tensor::{Bool, Int, Tensor, TensorData};

use super::nn::{linear, Block, LayerNorm};
use crate::{Error, Result};

/// Which token's output becomes the text embedding.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TextPooling {
    /// The position of the largest id (the end-of-text token in CLIP's vocabulary): open_clip and
    /// HF configs whose `eos_token_id` is the legacy 2.
    Argmax,
    /// The first position holding this id (HF CLIP with a real `eos_token_id`).
    FirstId(u32),
    /// CONCH / CoCa: the last input token is dropped, a learned CLS embedding is appended and its
    /// output is used. The CLS row attends only to non-pad keys, exactly as CONCH builds its mask.
    AppendedCls {
        /// The padding id.
        pad_id: u32,
    },
}

/// A text encoder producing one embedding per token sequence.
#[derive(Module, Debug)]
pub struct TextTransformer {
    /// Token embedding `[vocab, width]`.
    pub token_embedding: Embedding,
    /// Position embedding `[context, width]`.
    pub pos_embed: Param<Tensor<2>>,
    /// CONCH's CLS embedding `[width]`, appended after the tokens.
    pub cls_emb: Option<Param<Tensor<1>>>,
    /// Causal transformer blocks.
    pub blocks: Vec<Block>,
    /// Final norm.
    pub ln_final: LayerNorm,
    /// Projection into the shared embedding space.
    pub proj: Linear,
    /// Pooling rule.
    #[module(skip)]
    pub pooling: TextPooling,
    /// Attention heads (for building masks).
    #[module(skip)]
    pub heads: usize,
}

impl TextTransformer {
    /// Largest sequence length the position embedding allows.
    pub fn context_length(&self) -> usize {
        self.pos_embed.val().dims()[0]
    }

    /// Vocabulary size.
    pub fn vocab_size(&self) -> usize {
        self.token_embedding.weight.val().dims()[0]
    }

    /// Embeds padded token sequences (all of one length) into `[batch, out_dim]`.
    pub fn forward(&self, ids: &[Vec<u32>]) -> Result<Tensor<2>> {
        let b = ids.len();
        let len = ids.first().map(Vec::len).unwrap_or(0);
        if b == 0 || len == 0 || ids.iter().any(|s| s.len() != len) {
            return Err(Error::msg("text batch must hold sequences of one non-zero length"));
        }
        let vocab = self.vocab_size();
        if let Some(bad) = ids.iter().flatten().find(|&&t| t as usize >= vocab) {
            return Err(Error::msg(format!(
                "token id {bad} is outside the model's vocabulary of {vocab}"
            )));
        }
        let device = self.pos_embed.val().device();
        // CONCH drops the last slot to make room for the appended CLS token.
        let used =
            if matches!(self.pooling, TextPooling::AppendedCls { .. }) { len - 1 } else { len };
        let seq = used + usize::from(self.cls_emb.is_some());
        if seq > self.context_length() {
            return Err(Error::msg(format!(
                "{len} tokens exceed the model's context length of {}",
                self.context_length()
            )));
        }
        let flat: Vec<i64> = ids.iter().flat_map(|s| s[..used].iter().map(|&t| t as i64)).collect();
        let tokens = Tensor::<2, Int>::from_data(TensorData::new(flat, [b, used]), &device);
        let mut x = self.token_embedding.forward(tokens);
        let width = x.dims()[2];
        if let Some(cls) = &self.cls_emb {
            let cls = cls.val().reshape([1, 1, width]).expand([b, 1, width]);
            x = Tensor::cat(vec![x, cls], 1);
        }
        x = x + self.pos_embed.val().narrow(0, 0, seq).unsqueeze::<3>();

        let (mask, causal) = match self.pooling {
            TextPooling::AppendedCls { pad_id } => {
                (Some(self.cls_mask(ids, seq, pad_id, &device)), false)
            }
            _ => (None, true),
        };
        for block in &self.blocks {
            x = block.forward(x, mask.clone(), causal);
        }
        let positions: Vec<i64> = ids
            .iter()
            .enumerate()
            .map(|(i, s)| (i * seq + self.pool_position(s, seq)) as i64)
            .collect();
        let index = Tensor::<1, Int>::from_data(TensorData::new(positions, [b]), &device);
        let pooled = x.reshape([b * seq, width]).select(0, index);
        Ok(linear(&self.proj, self.ln_final.forward(pooled)))
    }

    fn pool_position(&self, ids: &[u32], seq: usize) -> usize {
        match self.pooling {
            TextPooling::AppendedCls { .. } => seq - 1,
            TextPooling::Argmax => {
                // First occurrence of the maximum, like torch.argmax.
                let max = ids.iter().copied().max().unwrap_or(0);
                ids.iter().position(|&t| t == max).unwrap_or(0)
            }
            TextPooling::FirstId(eos) => ids.iter().position(|&t| t == eos).unwrap_or(0),
        }
    }

    /// Causal mask plus CONCH's CLS row: key `k` is visible to the CLS query when `k == 0` or the
    /// token at `k - 1` is not padding (`F.pad(text != pad, (1, 0, L, 0), value=1)`).
    fn cls_mask(
        &self,
        ids: &[Vec<u32>],
        seq: usize,
        pad_id: u32,
        device: &burn::tensor::Device,
    ) -> Tensor<4, Bool> {
        let mut blocked = Vec::with_capacity(ids.len() * seq * seq);
        for s in ids {
            for q in 0..seq {
                for k in 0..seq {
                    let causal = k > q;
                    let pad = q == seq - 1 && k > 0 && s[k - 1] == pad_id;
                    blocked.push(causal || pad);
                }
            }
        }
        Tensor::<4, Bool>::from_data(TensorData::new(blocked, [ids.len(), 1, seq, seq]), device)
            .expand([ids.len(), self.heads, seq, seq])
    }
}
