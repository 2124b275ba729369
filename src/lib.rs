//! clipit: CLIP-IT for histology tiles (Karimian et al., arXiv 2504.16181) on Burn.
//!
//! A histology CLIP model pairs each image with its most similar unpaired report; a vision
//! classifier then learns from those pseudo-pairs. This crate holds the models, tokenizers,
//! preprocessing, retrieval and zero-shot classification, shared by the CLI and the browser.
#![forbid(unsafe_code)]

pub mod backend;
#[cfg(not(target_arch = "wasm32"))]
pub mod bench;
pub mod convert;
pub mod data;
pub mod embed;
pub mod error;
pub mod fsutil;
pub mod lora;
pub mod metrics;
pub mod model;
pub mod precision;
pub mod preprocess;
pub mod retrieval;
pub mod slide;
pub mod tokenizer;
pub mod train;
pub mod weights;
pub mod zeroshot;

pub use error::{Error, Result};

#[cfg(all(feature = "web-core", target_arch = "wasm32"))]
pub mod web;
