//! The files of a checkpoint folder, on disk or (in the browser) in memory.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::rc::Rc;
use std::sync::Arc;

use crate::weights::{ByteSource, SafeTensors};
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
    /// Files read by range, keyed by file name: the browser's files, whose bytes stay on the
    /// JavaScript side; a tensor's bytes are copied in only while it is converted.
    Ranges {
        /// A name for messages (e.g. the folder the user picked).
        name: String,
        /// File contents by file name.
        files: BTreeMap<String, Rc<dyn ByteSource>>,
    },
}

impl ModelFiles {
    /// A name for the folder, for messages.
    pub fn name(&self) -> String {
        match self {
            Self::Dir(p) => p.display().to_string(),
            Self::Memory { name, .. } | Self::Ranges { name, .. } => name.clone(),
        }
    }

    /// The display path of one file in the folder.
    pub fn path_of(&self, file: &str) -> String {
        match self {
            Self::Dir(p) => p.join(file).display().to_string(),
            Self::Memory { name, .. } | Self::Ranges { name, .. } => format!("{name}/{file}"),
        }
    }

    /// Whether the folder has this file.
    pub fn has(&self, file: &str) -> bool {
        match self {
            Self::Dir(p) => p.join(file).is_file(),
            Self::Memory { files, .. } => files.contains_key(file),
            Self::Ranges { files, .. } => files.contains_key(file),
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
            Self::Ranges { files, .. } => {
                let source = files
                    .get(file)
                    .ok_or_else(|| Error::format(self.path_of(file), "file not found"))?;
                source.read_range(0, source.len()).map_err(|e| Error::format(self.path_of(file), e))
            }
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
                    Self::Ranges { files, .. } => {
                        SafeTensors::from_source(files[*file].clone(), &self.path_of(file))
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::Model;
    use burn::tensor::{Device, Tensor};

    /// A [`ByteSource`] that counts the bytes read, to show that loading reads each byte once.
    struct Counted(Arc<[u8]>, std::cell::Cell<u64>);

    impl ByteSource for Counted {
        fn len(&self) -> u64 {
            self.0.len()
        }
        fn read_range(&self, start: u64, end: u64) -> std::result::Result<Vec<u8>, String> {
            self.1.set(self.1.get() + end - start);
            self.0.read_range(start, end)
        }
    }

    #[test]
    fn a_folder_read_by_range_loads_as_from_disk() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/open_clip");
        let device = Device::flex();
        let sources: BTreeMap<String, Rc<Counted>> = std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| p.is_file())
            .map(|p| {
                let bytes: Arc<[u8]> = std::fs::read(&p).unwrap().into();
                (
                    p.file_name().unwrap().to_string_lossy().into_owned(),
                    Rc::new(Counted(bytes, 0.into())),
                )
            })
            .collect();
        let files =
            sources.iter().map(|(k, v)| (k.clone(), v.clone() as Rc<dyn ByteSource>)).collect();
        let ranged =
            Model::load_files(&ModelFiles::Ranges { name: "m".into(), files }, &device).unwrap();
        let disk = Model::load(&dir, &device).unwrap();
        let weights = &sources["open_clip_model.safetensors"];
        // The 8-byte length, then the length and header, then each tensor at most once.
        let head = u64::from_le_bytes(weights.0[..8].try_into().unwrap()) + 8;
        assert!(weights.1.get() <= weights.len() + 8 + head, "read {} bytes", weights.1.get());
        let s = disk.vision.geometry.image_size;
        let pixels = Tensor::<4>::ones([1, 3, s, s], &device);
        let a = ranged.encode_images(pixels.clone()).unwrap().into_data();
        let b = disk.encode_images(pixels).unwrap().into_data();
        assert_eq!(a, b);
    }
}
