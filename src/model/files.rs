//! The files of a checkpoint folder, on disk or (in the browser) in memory.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;

use crate::weights::SafeTensors;
use crate::{Error, Result};

/// A checkpoint folder: its config, weights and tokenizer files by name.
pub enum ModelFiles {
    /// A folder on disk.
    Dir(PathBuf),
    /// Files held in memory, keyed by file name (the browser's case).
    Memory {
        /// A name for messages (e.g. the folder the user picked).
        name: String,
        /// File contents by file name.
        files: BTreeMap<String, Arc<[u8]>>,
    },
}

impl ModelFiles {
    /// A name for the folder, for messages.
    pub fn name(&self) -> String {
        match self {
            Self::Dir(p) => p.display().to_string(),
            Self::Memory { name, .. } => name.clone(),
        }
    }

    /// The display path of one file in the folder.
    pub fn path_of(&self, file: &str) -> String {
        match self {
            Self::Dir(p) => p.join(file).display().to_string(),
            Self::Memory { name, .. } => format!("{name}/{file}"),
        }
    }

    /// Whether the folder has this file.
    pub fn has(&self, file: &str) -> bool {
        match self {
            Self::Dir(p) => p.join(file).is_file(),
            Self::Memory { files, .. } => files.contains_key(file),
        }
    }

    /// Reads a whole (small) file.
    pub fn read(&self, file: &str) -> Result<Vec<u8>> {
        match self {
            Self::Dir(p) => std::fs::read(p.join(file)).map_err(|e| Error::io(p.join(file), e)),
            Self::Memory { files, .. } => files
                .get(file)
                .map(|b| b.to_vec())
                .ok_or_else(|| Error::format(self.path_of(file), "file not found")),
        }
    }

    /// Reads and parses a JSON file.
    pub fn json(&self, file: &str) -> Result<serde_json::Value> {
        let bytes = self.read(file)?;
        serde_json::from_slice(&bytes)
            .map_err(|e| Error::format(self.path_of(file), format!("invalid JSON: {e}")))
    }

    /// Opens the first of `candidates` that exists as safetensors. A PyTorch `.bin` in its place
    /// gets an error that says how to convert it.
    pub fn weights(&self, candidates: &[&str]) -> Result<SafeTensors> {
        for file in candidates {
            if self.has(file) {
                return match self {
                    Self::Dir(p) => SafeTensors::open(&p.join(file)),
                    Self::Memory { files, .. } => {
                        SafeTensors::from_bytes(files[*file].clone(), &self.path_of(file))
                    }
                };
            }
        }
        for bin in ["pytorch_model.bin", "open_clip_pytorch_model.bin"] {
            if self.has(bin) {
                return Err(Error::format(
                    self.path_of(bin),
                    format!(
                        "PyTorch pickle weights must be converted first: clipit convert {} {}",
                        self.path_of(bin),
                        self.path_of(candidates[0])
                    ),
                ));
            }
        }
        Err(Error::format(
            self.name(),
            format!("no weights file: expected one of {}", candidates.join(", ")),
        ))
    }
}
