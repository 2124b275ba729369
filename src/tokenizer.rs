//! Tokenizers: CLIP's BPE (embedded, built from open_clip's vocabulary) or a checkpoint's own
//! `tokenizer.json` (CONCH, PLIP), through the `tokenizers` crate.
//!
//! Special tokens and truncation are applied here, not by the JSON's post-processor, so that the
//! ids equal open_clip's `tokenize` and Hugging Face's `padding="max_length", truncation=True`:
//! `[start] + text[:context - 2] + [end]`, then padding up to the context length.

use std::sync::OnceLock;

use tokenizers::Tokenizer;

use crate::{Error, Result};

/// CLIP's byte-level BPE tokenizer (vocabulary from open_clip, MIT licence; see assets/README.md).
const CLIP_TOKENIZER_JSON: &[u8] = include_bytes!("../assets/clip_tokenizer.json");

/// A tokenizer that turns texts into fixed-length id sequences for one model.
#[derive(Clone)]
pub struct TextTokenizer {
    inner: Tokenizer,
    /// Sequence length the model takes.
    pub context_length: usize,
    /// Id that starts every sequence.
    pub start_id: u32,
    /// Id that ends every sequence.
    pub end_id: u32,
    /// Id used for padding.
    pub pad_id: u32,
    /// Trailing slots always left as padding (CONCH reserves one for its CLS token).
    pub reserved: usize,
}

impl TextTokenizer {
    /// The embedded CLIP tokenizer; `pad_id` is 0 for open_clip and the end id for HF.
    ///
    /// The embedded JSON is parsed once per process; later calls clone the parsed tokenizer.
    pub fn clip(context_length: usize, pad_with_end: bool) -> Result<Self> {
        static PARSED: OnceLock<std::result::Result<Tokenizer, String>> = OnceLock::new();
        let inner = PARSED
            .get_or_init(|| Tokenizer::from_bytes(CLIP_TOKENIZER_JSON).map_err(|e| e.to_string()))
            .clone()
            .map_err(|e| Error::format("assets/clip_tokenizer.json", e))?;
        let mut t = Self::with_specials(
            inner,
            "embedded CLIP tokenizer",
            ["<|startoftext|>", "<|endoftext|>"],
            None,
            context_length,
        )?;
        if !pad_with_end {
            t.pad_id = 0;
        }
        Ok(t)
    }

    /// Loads a `tokenizer.json` from bytes; `name` is used in errors. The start, end and pad
    /// tokens are looked up by the given names (the pad defaults to the end token).
    pub fn from_json(
        bytes: &[u8],
        name: &str,
        specials: [&str; 2],
        pad: Option<&str>,
        context_length: usize,
    ) -> Result<Self> {
        check_decoder(bytes, name)?;
        let inner = Tokenizer::from_bytes(bytes)
            .map_err(|e| Error::format(name, format!("invalid tokenizer: {e}")))?;
        Self::with_specials(inner, name, specials, pad, context_length)
    }

    fn with_specials(
        mut inner: Tokenizer,
        name: &str,
        [start, end]: [&str; 2],
        pad: Option<&str>,
        context_length: usize,
    ) -> Result<Self> {
        let id = |tok: &str| {
            inner
                .token_to_id(tok)
                .ok_or_else(|| Error::format(name, format!("the tokenizer has no '{tok}' token")))
        };
        let (start_id, end_id) = (id(start)?, id(end)?);
        let pad_id = match pad {
            Some(p) => id(p)?,
            None => end_id,
        };
        // Truncation and padding stored in the JSON would act on the text before the special
        // tokens are added; they are applied in `encode` instead.
        inner.with_padding(None);
        inner
            .with_truncation(None)
            .map_err(|e| Error::format(name, format!("cannot reset truncation: {e}")))?;
        if context_length < 4 {
            return Err(Error::format(
                name,
                format!("context length {context_length} is too short"),
            ));
        }
        Ok(Self { inner, context_length, start_id, end_id, pad_id, reserved: 0 })
    }

    /// Token ids of one text, without special tokens or truncation.
    pub fn encode_raw(&self, text: &str) -> Result<Vec<u32>> {
        let enc = self
            .inner
            .encode(text, false)
            .map_err(|e| Error::msg(format!("cannot tokenize text: {e}")))?;
        Ok(enc.get_ids().to_vec())
    }

    /// Fixed-length ids of one text: start, the text truncated to fit, end, padding.
    pub fn encode(&self, text: &str) -> Result<Vec<u32>> {
        let mut ids = Vec::with_capacity(self.context_length);
        ids.push(self.start_id);
        let body = self.encode_raw(text)?;
        ids.extend(body.into_iter().take(self.context_length.saturating_sub(2 + self.reserved)));
        ids.push(self.end_id);
        ids.resize(self.context_length, self.pad_id);
        Ok(ids)
    }

    /// Fixed-length ids of many texts.
    pub fn encode_batch<S: AsRef<str>>(&self, texts: &[S]) -> Result<Vec<Vec<u32>>> {
        texts.iter().map(|t| self.encode(t.as_ref())).collect()
    }
}

/// tokenizers 0.23 panics (`expect("Helper")`) instead of returning an error when a
/// `tokenizer.json` is not valid JSON or its decoder is not one it knows (found by the tokenizer
/// fuzz target); both are refused here first, naming the file.
fn check_decoder(bytes: &[u8], name: &str) -> Result<()> {
    const DECODERS: [&str; 10] = [
        "BPEDecoder",
        "ByteLevel",
        "WordPiece",
        "Metaspace",
        "CTC",
        "Sequence",
        "Replace",
        "Fuse",
        "Strip",
        "ByteFallback",
    ];
    let json: serde_json::Value = serde_json::from_slice(bytes)
        .map_err(|e| Error::format(name, format!("invalid tokenizer: not valid JSON ({e})")))?;
    fn known(d: &serde_json::Value) -> bool {
        let kind = d.get("type").and_then(|t| t.as_str());
        kind.is_some_and(|k| DECODERS.contains(&k))
            && d.get("decoders").and_then(|ds| ds.as_array()).is_none_or(|ds| ds.iter().all(known))
    }
    match json.get("decoder") {
        None | Some(serde_json::Value::Null) => Ok(()),
        Some(d) if known(d) => Ok(()),
        Some(_) => Err(Error::format(
            name,
            format!("invalid tokenizer: its decoder is not one of {}", DECODERS.join(", ")),
        )),
    }
}
