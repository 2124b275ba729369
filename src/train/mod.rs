//! Training (CLIP-IT step 4 and the unimodal baseline): data pipeline, augmentation and splits.

pub mod augment;
pub mod data;
pub mod split;
