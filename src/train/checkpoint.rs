//! A run folder: its config, the trainable parameters and optimiser state (written atomically),
//! the best checkpoint by validation loss, and the metrics log.
//!
//! Layout of `RUN_DIR`:
//! - `run.json`: what was trained, on what, with which options (enough to rebuild the model);
//! - `last.bpk` + `optimizer.bpk` + `state.json`: the latest checkpoint, for `--resume`;
//! - `best.bpk`: the trainable parameters with the lowest validation loss;
//! - `metrics.jsonl`: one line per step and per validation;
//! - `report.json`, `confusion.txt`, `curves.svg`: the final evaluation.

use std::io::Write;
use std::path::{Path, PathBuf};

use burn::module::{Module, ParamGroup};
use burn::optim::ModuleOptimizer;
use burn::store::ModuleRecord;
use burn::tensor::Bytes;
use serde::{Deserialize, Serialize};

use super::optim::trainable_ids;
use crate::fsutil::write_atomic;
use crate::{Error, Result};

/// Progress saved with each checkpoint.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct RunState {
    /// Optimiser steps done.
    pub step: usize,
    /// Epochs fully done.
    pub epochs_done: usize,
    /// Lowest validation loss so far.
    pub best_val_loss: Option<f64>,
    /// Step of the best checkpoint.
    pub best_step: Option<usize>,
}

/// Paths inside a run folder.
#[derive(Debug, Clone)]
pub struct RunDir {
    /// The folder.
    pub root: PathBuf,
}

impl RunDir {
    /// A run folder at `root`, created if needed.
    pub fn create(root: &Path) -> Result<Self> {
        std::fs::create_dir_all(root).map_err(|e| Error::io(root, e))?;
        Ok(Self { root: root.to_path_buf() })
    }

    /// An existing run folder.
    pub fn open(root: &Path) -> Result<Self> {
        if !root.join("run.json").is_file() {
            return Err(Error::format(root.display(), "not a clipit run folder (no run.json)"));
        }
        Ok(Self { root: root.to_path_buf() })
    }

    /// A file in the folder.
    pub fn file(&self, name: &str) -> PathBuf {
        self.root.join(name)
    }

    /// Writes a JSON file atomically.
    pub fn write_json<T: Serialize>(&self, name: &str, value: &T) -> Result<()> {
        let text = serde_json::to_vec_pretty(value).map_err(|e| Error::msg(e.to_string()))?;
        write_atomic(self.file(name), &text)
    }

    /// Reads a JSON file.
    pub fn read_json<T: for<'de> Deserialize<'de>>(&self, name: &str) -> Result<T> {
        let path = self.file(name);
        let bytes = std::fs::read(&path).map_err(|e| Error::io(&path, e))?;
        serde_json::from_slice(&bytes).map_err(|e| Error::format(path.display(), e))
    }

    /// Appends one JSON line to `metrics.jsonl`.
    pub fn log<T: Serialize>(&self, entry: &T) -> Result<()> {
        let path = self.file("metrics.jsonl");
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .map_err(|e| Error::io(&path, e))?;
        let line = serde_json::to_string(entry).map_err(|e| Error::msg(e.to_string()))?;
        writeln!(f, "{line}").map_err(|e| Error::io(&path, e))
    }

    /// Saves the trainable parameters of `model` to `name` (atomically).
    pub fn save_params<M: Module>(&self, name: &str, model: &M) -> Result<()> {
        let group = ParamGroup::from_ids(trainable_ids(model));
        let bytes =
            model.clone().into_record_group(group).into_bytes().map_err(|e| self.err(name, e))?;
        write_atomic(self.file(name), &bytes)
    }

    /// Loads trainable parameters saved by [`RunDir::save_params`] into `model`.
    pub fn load_params<M: Module>(&self, name: &str, model: M) -> Result<M> {
        let path = self.file(name);
        let bytes = std::fs::read(&path).map_err(|e| Error::io(&path, e))?;
        let record = ModuleRecord::from_bytes(Bytes::from_bytes_vec(bytes))
            .map_err(|e| self.err(name, e))?;
        model
            .try_load_record(record.allow_partial(true).allow_unused(true))
            .map_err(|e| self.err(name, e))
    }

    /// Saves a checkpoint to resume from: parameters, optimiser state, then the state file last,
    /// so that an interruption at any point leaves the previous checkpoint usable.
    pub fn save_checkpoint<M: Module>(
        &self,
        model: &M,
        optim: &ModuleOptimizer,
        state: &RunState,
    ) -> Result<()> {
        self.save_params("last.bpk", model)?;
        let bytes = optim.into_bytes().map_err(|e| self.err("optimizer.bpk", e))?;
        write_atomic(self.file("optimizer.bpk"), &bytes)?;
        self.write_json("state.json", state)
    }

    /// Restores the latest checkpoint into `model` and `optim`.
    pub fn load_checkpoint<M: Module>(
        &self,
        model: M,
        optim: ModuleOptimizer,
    ) -> Result<(M, ModuleOptimizer, RunState)> {
        let state: RunState = self.read_json("state.json")?;
        let model = self.load_params("last.bpk", model)?;
        let path = self.file("optimizer.bpk");
        let bytes = std::fs::read(&path).map_err(|e| Error::io(&path, e))?;
        let optim = optim
            .from_bytes(Bytes::from_bytes_vec(bytes))
            .map_err(|e| self.err("optimizer.bpk", e))?;
        Ok((model, optim, state))
    }

    /// Whether a checkpoint to resume from exists.
    pub fn has_checkpoint(&self) -> bool {
        self.file("state.json").is_file() && self.file("last.bpk").is_file()
    }

    fn err(&self, name: &str, e: impl std::fmt::Display) -> Error {
        Error::format(self.file(name).display(), e)
    }
}
