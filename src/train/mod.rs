//! Training (CLIP-IT step 4 and the unimodal baseline): data pipeline, augmentation, splits, the
//! CLIP-IT heads and losses, the optimiser, the training loop and run folders.

pub mod augment;
pub mod baseline;
pub mod checkpoint;
pub mod classifier;
pub mod contrastive;
pub mod data;
pub mod heads;
pub mod inference;
pub mod optim;
mod pairing;
pub mod parallel;
pub mod plot;
pub mod pretrain;
mod probe;
pub mod run;
pub mod session;
pub mod split;
pub mod trainer;
