//! Image and text encoders loaded from the folders users download: Hugging Face CLIP,
//! open_clip CLIP, CONCH and timm ViT backbones.
//!
//! [`Model::load`] reads the folder's own config file, picks the architecture and loads the
//! weights by their original tensor names.

pub mod conch;
pub mod files;
pub mod hf_clip;
pub mod memory;
pub mod nn;
pub mod open_clip;
pub mod text;
pub mod timm;
pub mod vit;

use std::path::Path;

use burn::module::Module;
use burn::tensor::{Device, Tensor};
use serde::de::DeserializeOwned;

pub use files::ModelFiles;
use text::TextTransformer;
use vit::VisionTransformer;

use crate::preprocess::PreprocessConfig;
use crate::tokenizer::TextTokenizer;
use crate::weights::{ParamNames, WeightSource};
use crate::{Error, Result};

/// The checkpoint formats clipit reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Architecture {
    /// Hugging Face `CLIPModel` (PLIP, OpenAI CLIP).
    HfClip,
    /// open_clip CLIP (QuiltNet, the `ViT-B-32.json` family).
    OpenClip,
    /// CONCH (CoCa-style: timm trunk, attentional pooler, CLS-appended text tower).
    Conch,
    /// A timm ViT backbone, image features only (UNI, kaiko).
    Timm,
}

impl std::fmt::Display for Architecture {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::HfClip => "Hugging Face CLIPModel",
            Self::OpenClip => "open_clip CLIP",
            Self::Conch => "CONCH",
            Self::Timm => "timm ViT",
        })
    }
}

/// What each supported format looks like, for error messages.
pub const SUPPORTED: &str =
    "Hugging Face CLIPModel (config.json with model_type \"clip\" + model.safetensors), \
open_clip (open_clip_config.json + open_clip_model.safetensors), \
CONCH (conch_config.json or an open_clip_config.json with a CoCa config + model.safetensors), \
timm ViT (config.json with \"architecture\": \"vit_...\" + model.safetensors)";

/// A loaded model: an image encoder, usually a text encoder, and how to feed them.
pub struct Model {
    /// Checkpoint format.
    pub architecture: Architecture,
    /// The folder it came from.
    pub name: String,
    /// Image encoder.
    pub vision: VisionTransformer,
    /// Text encoder (absent for vision-only backbones).
    pub text: Option<TextTransformer>,
    /// Tokenizer for the text encoder.
    pub tokenizer: Option<TextTokenizer>,
    /// The raw (log) logit scale; similarities are multiplied by its exponential.
    pub logit_scale: f32,
    /// How images are resized, cropped and normalised for this model.
    pub preprocess: PreprocessConfig,
    /// Width of the image (and text) embeddings.
    pub embed_dim: usize,
    /// Checkpoint tensors the model does not use (e.g. CONCH's caption decoder).
    pub ignored_tensors: Vec<String>,
    /// Where each parameter of `vision` and `text` comes from in the checkpoint (name, PyTorch
    /// module kind, layout), by parameter id; LoRA uses it to choose peft's targets.
    pub params: ParamNames,
}

impl Model {
    /// Loads the checkpoint folder at `dir`.
    pub fn load(dir: &Path, device: &Device) -> Result<Self> {
        if !dir.is_dir() {
            return Err(Error::format(
                dir.display(),
                "not a folder (point --model at the checkpoint's folder)",
            ));
        }
        Self::load_files(&ModelFiles::Dir(dir.to_path_buf()), device)
    }

    /// Loads a checkpoint folder given as files (on disk or in memory).
    pub fn load_files(files: &ModelFiles, device: &Device) -> Result<Self> {
        Self::load_with(files, None, device)
    }

    /// Builds the folder's architecture from its config with random weights (benchmarks).
    pub fn random(files: &ModelFiles, device: &Device) -> Result<Self> {
        Self::load_with(files, Some(WeightSource::Random), device)
    }

    fn load_with(
        files: &ModelFiles,
        source: Option<WeightSource>,
        device: &Device,
    ) -> Result<Self> {
        match detect(files)? {
            Architecture::HfClip => hf_clip::load(files, source, device),
            Architecture::OpenClip => open_clip::load(files, source, device),
            Architecture::Conch => conch::load(files, source, device),
            Architecture::Timm => timm::load(files, source, device),
        }
    }

    /// Projected image features `[batch, embed_dim]`, before L2 normalisation.
    pub fn encode_images(&self, pixels: Tensor<4>) -> Result<Tensor<2>> {
        let [_, c, h, w] = pixels.dims();
        let s = self.vision.geometry.image_size;
        if c != 3 || h != s || w != s {
            return Err(Error::msg(format!(
                "{}: images must be [batch, 3, {s}, {s}] for this model, got [batch, {c}, {h}, {w}]",
                self.name
            )));
        }
        Ok(self.vision.forward(pixels))
    }

    /// Projected text features `[batch, embed_dim]`, before L2 normalisation.
    pub fn encode_texts<S: AsRef<str>>(&self, texts: &[S]) -> Result<Tensor<2>> {
        let ids = self.tokenize(texts)?;
        self.encode_token_ids(&ids)
    }

    /// Text features from already tokenized, padded ids.
    pub fn encode_token_ids(&self, ids: &[Vec<u32>]) -> Result<Tensor<2>> {
        let text = self.text.as_ref().ok_or_else(|| self.no_text())?;
        text.forward(ids)
    }

    /// Fixed-length token ids for the text encoder.
    pub fn tokenize<S: AsRef<str>>(&self, texts: &[S]) -> Result<Vec<Vec<u32>>> {
        self.tokenizer.as_ref().ok_or_else(|| self.no_text())?.encode_batch(texts)
    }

    /// The model's weights under their checkpoint names and PyTorch layouts (the image and text
    /// towers, and `logit_scale` with a text tower): what [`crate::weights::export`] writes.
    pub fn checkpoint_tensors(
        &self,
    ) -> Result<std::collections::BTreeMap<String, crate::weights::export::TorchTensor>> {
        use crate::weights::export::{checkpoint_tensors, TorchTensor};
        let mut out = checkpoint_tensors(&self.vision, &self.params)?;
        if let Some(text) = &self.text {
            out.extend(checkpoint_tensors(text, &self.params)?);
            out.insert(
                "logit_scale".into(),
                TorchTensor { shape: vec![], values: vec![self.logit_scale] },
            );
        }
        Ok(out)
    }

    /// Whether the model has a text encoder.
    pub fn has_text(&self) -> bool {
        self.text.is_some() && self.tokenizer.is_some()
    }

    /// Number of parameters used by the image and text encoders.
    pub fn num_params(&self) -> usize {
        self.vision.num_params() + self.text.as_ref().map_or(0, |t| t.num_params())
    }

    /// Puts a loaded model together. With a text tower, the checkpoint's `logit_scale` is read
    /// (CLIP's initial ln(1/0.07) when the checkpoint has none).
    pub(crate) fn assemble(
        architecture: Architecture,
        files: &ModelFiles,
        l: &crate::weights::Loader,
        vision: VisionTransformer,
        text: Option<(TextTransformer, TextTokenizer)>,
        preprocess: PreprocessConfig,
        embed_dim: usize,
    ) -> Self {
        let logit_scale = match text {
            Some(_) => l.values("logit_scale", &[]).map(|v| v[0]).unwrap_or((1.0f32 / 0.07).ln()),
            None => 0.0,
        };
        let (text, tokenizer) = text.unzip();
        Model {
            architecture,
            name: files.name(),
            vision,
            text,
            tokenizer,
            logit_scale,
            preprocess,
            embed_dim,
            ignored_tensors: l.unused(),
            params: l.param_names(),
        }
    }

    fn no_text(&self) -> Error {
        Error::msg(format!(
            "{}: this {} checkpoint has no text encoder",
            self.name, self.architecture
        ))
    }
}

/// Picks the architecture from the folder's config files.
pub fn detect(files: &ModelFiles) -> Result<Architecture> {
    if files.has("conch_config.json") {
        return Ok(Architecture::Conch);
    }
    if files.has("open_clip_config.json") {
        let json = files.json("open_clip_config.json")?;
        let cfg = json.get("model_cfg").unwrap_or(&json);
        let coca = cfg.get("embed_dim_caption").is_some()
            || cfg.pointer("/text_cfg/embed_cls").and_then(|v| v.as_bool()).unwrap_or(false);
        return Ok(if coca { Architecture::Conch } else { Architecture::OpenClip });
    }
    if files.has("config.json") {
        let json = files.json("config.json")?;
        if json.get("architecture").is_some() {
            return Ok(Architecture::Timm);
        }
        let is_clip = json.get("model_type").and_then(|v| v.as_str()) == Some("clip")
            || json
                .get("architectures")
                .and_then(|v| v.as_array())
                .is_some_and(|a| a.iter().any(|x| x.as_str() == Some("CLIPModel")));
        if is_clip {
            return Ok(Architecture::HfClip);
        }
        let kind = json
            .get("model_type")
            .or_else(|| json.get("architectures"))
            .map(|v| v.to_string())
            .unwrap_or_default();
        return Err(Error::format(
            files.path_of("config.json"),
            format!("unknown architecture {kind}; supported: {SUPPORTED}"),
        ));
    }
    Err(Error::format(
        files.name(),
        format!(
            "no config.json, open_clip_config.json or conch_config.json; supported: {SUPPORTED}"
        ),
    ))
}

/// Deserialises a config section, naming the file on error.
pub(crate) fn parse_config<T: DeserializeOwned>(value: serde_json::Value, file: &str) -> Result<T> {
    serde_json::from_value(value).map_err(|e| Error::format(file, format!("invalid config: {e}")))
}
