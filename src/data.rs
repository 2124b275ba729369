//! Finding images on disk: flat or nested folders of tiles, and class-per-folder datasets laid
//! out like torchvision's `ImageFolder` (`root/<class>/**/<image>`).
//!
//! Rules shared by both:
//! - an image is a file whose extension is one of [`IMAGE_EXTENSIONS`], compared case-insensitively;
//! - hidden entries (names starting with `.`, e.g. macOS `._x.png`) are skipped;
//! - symbolic links are followed, but each real folder is visited once, so link loops end;
//! - results are sorted by path, so runs are reproducible.

use std::collections::HashSet;
use std::path::{Path, PathBuf};

use crate::{Error, Result};

/// File extensions recognised as images (compared case-insensitively).
pub const IMAGE_EXTENSIONS: &[&str] = &["png", "jpg", "jpeg", "tif", "tiff"];

/// Whether `path` has one of the [`IMAGE_EXTENSIONS`] (case-insensitive).
pub fn is_image_path(path: &Path) -> bool {
    path.extension()
        .and_then(|e| e.to_str())
        .is_some_and(|e| IMAGE_EXTENSIONS.iter().any(|x| x.eq_ignore_ascii_case(e)))
}

/// Every image under `dir`, recursively, sorted by path.
///
/// Errors if `dir` is missing or not a folder, if a folder cannot be read, or if no image is found
/// ("no images in DIR").
pub fn list_images(dir: impl AsRef<Path>) -> Result<Vec<PathBuf>> {
    let dir = dir.as_ref();
    check_dir(dir)?;
    let mut walk = Walk::default();
    walk.visit(dir)?;
    if walk.images.is_empty() {
        return Err(Error::msg(format!(
            "no images in {} (looked for {})",
            dir.display(),
            ext_list()
        )));
    }
    walk.images.sort();
    Ok(walk.images)
}

/// A labelled dataset: one sub-folder of the root per class, images anywhere below it.
#[derive(Debug, Clone, PartialEq)]
pub struct ImageFolder {
    /// Class names (the sub-folder names), sorted like torchvision: by code point.
    pub classes: Vec<String>,
    /// Every image with its class index into `classes`, sorted by class, then by path.
    pub items: Vec<(PathBuf, usize)>,
    /// Things skipped while scanning (files directly in the root, hidden folders), for the user.
    pub notes: Vec<String>,
}

impl ImageFolder {
    /// Scans `dir` (`dir/<class>/**/<image>`). The class index is the position of its folder name
    /// in sorted order, as in torchvision's `ImageFolder`, except that hidden folders are skipped.
    ///
    /// Files directly in `dir` are ignored (a note says so). Errors: `dir` missing, no class
    /// folders, a class folder without images (torchvision refuses these too: the class indices
    /// would silently differ from a run that has data), or a folder name that is not UTF-8.
    pub fn scan(dir: impl AsRef<Path>) -> Result<Self> {
        let dir = dir.as_ref();
        check_dir(dir)?;
        let mut notes = Vec::new();
        let mut class_dirs = Vec::new();
        let mut root_files = 0usize;
        for entry in read_dir_sorted(dir)? {
            let name = entry.file_name().unwrap_or_default().to_string_lossy().into_owned();
            if name.starts_with('.') {
                if entry.is_dir() {
                    notes.push(format!("skipped hidden folder {}", entry.display()));
                }
                continue;
            }
            if entry.is_dir() {
                let Some(class) = entry.file_name().and_then(|n| n.to_str()) else {
                    return Err(Error::msg(format!(
                        "{}: class folder name is not valid UTF-8",
                        entry.display()
                    )));
                };
                class_dirs.push((class.to_string(), entry.clone()));
            } else if entry.is_file() {
                root_files += 1;
            }
        }
        if root_files > 0 {
            notes.push(format!(
                "ignored {root_files} file(s) directly in {} (only class sub-folders are read)",
                dir.display()
            ));
        }
        if class_dirs.is_empty() {
            return Err(Error::msg(format!(
                "{}: no class folders (expected one sub-folder per class, e.g. {}/<class>/x.png)",
                dir.display(),
                dir.display()
            )));
        }
        class_dirs.sort_by(|a, b| a.0.cmp(&b.0));
        let mut walk = Walk::default();
        let mut items = Vec::new();
        for (idx, (class, path)) in class_dirs.iter().enumerate() {
            walk.visit(path)?;
            let mut imgs = std::mem::take(&mut walk.images);
            if imgs.is_empty() {
                return Err(Error::msg(format!(
                    "{}: class folder '{class}' has no images (looked for {})",
                    path.display(),
                    ext_list()
                )));
            }
            imgs.sort();
            items.extend(imgs.into_iter().map(|p| (p, idx)));
        }
        let classes = class_dirs.into_iter().map(|(c, _)| c).collect();
        Ok(Self { classes, items, notes })
    }

    /// How many images each class has, in class order.
    pub fn class_counts(&self) -> Vec<usize> {
        let mut counts = vec![0; self.classes.len()];
        for &(_, c) in &self.items {
            counts[c] += 1;
        }
        counts
    }
}

/// Recursive walker that remembers the canonical folders it has entered.
#[derive(Default)]
struct Walk {
    visited: HashSet<PathBuf>,
    images: Vec<PathBuf>,
}

impl Walk {
    fn visit(&mut self, dir: &Path) -> Result<()> {
        let canon = dir.canonicalize().map_err(|e| Error::io(dir, e))?;
        if !self.visited.insert(canon) {
            return Ok(()); // already seen: a link loop or two links to one folder
        }
        for path in read_dir_sorted(dir)? {
            if path.file_name().is_some_and(|n| n.to_string_lossy().starts_with('.')) {
                continue;
            }
            // `metadata` follows links; a dangling link fails and is skipped.
            let Ok(meta) = std::fs::metadata(&path) else { continue };
            if meta.is_dir() {
                self.visit(&path)?;
            } else if meta.is_file() && is_image_path(&path) {
                self.images.push(path);
            }
        }
        Ok(())
    }
}

fn check_dir(dir: &Path) -> Result<()> {
    match std::fs::metadata(dir) {
        Ok(m) if m.is_dir() => Ok(()),
        Ok(_) => Err(Error::msg(format!("{}: not a folder", dir.display()))),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            Err(Error::msg(format!("{}: folder not found", dir.display())))
        }
        Err(e) => Err(Error::io(dir, e)),
    }
}

fn read_dir_sorted(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(|e| Error::io(dir, e))? {
        out.push(entry.map_err(|e| Error::io(dir, e))?.path());
    }
    out.sort();
    Ok(out)
}

fn ext_list() -> String {
    IMAGE_EXTENSIONS.iter().map(|e| format!(".{e}")).collect::<Vec<_>>().join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;

    fn touch(p: &Path) {
        fs::create_dir_all(p.parent().unwrap()).unwrap();
        fs::write(p, b"x").unwrap();
    }

    #[test]
    fn lists_recursively_sorted_case_insensitive() {
        let d = tempfile::tempdir().unwrap();
        let r = d.path();
        for f in ["b.PNG", "a/c.jpeg", "a/z/d.TiF", "e.txt", ".hidden.png", "f.jpg"] {
            touch(&r.join(f));
        }
        let got = list_images(r).unwrap();
        let rel: Vec<_> =
            got.iter().map(|p| p.strip_prefix(r).unwrap().to_string_lossy().into_owned()).collect();
        assert_eq!(rel, ["a/c.jpeg", "a/z/d.TiF", "b.PNG", "f.jpg"]);
    }

    #[test]
    fn missing_and_empty_folders_are_errors() {
        let d = tempfile::tempdir().unwrap();
        let e = list_images(d.path().join("nope")).unwrap_err().to_string();
        assert!(e.contains("folder not found"), "{e}");
        touch(&d.path().join("notes.txt"));
        let e = list_images(d.path()).unwrap_err().to_string();
        assert!(e.starts_with("no images in"), "{e}");
        let e = ImageFolder::scan(d.path()).unwrap_err().to_string();
        assert!(e.contains("no class folders"), "{e}");
    }

    #[cfg(unix)]
    #[test]
    fn symlink_loops_terminate() {
        let d = tempfile::tempdir().unwrap();
        let r = d.path();
        touch(&r.join("x/a.png"));
        std::os::unix::fs::symlink(r, r.join("x/loop")).unwrap();
        std::os::unix::fs::symlink(r.join("missing"), r.join("x/dangling.png")).unwrap();
        let got = list_images(r).unwrap();
        assert_eq!(got, vec![r.join("x/a.png")]);
    }

    #[test]
    fn image_folder_classes_sorted_and_root_files_noted() {
        let d = tempfile::tempdir().unwrap();
        let r = d.path();
        for f in ["TUM/1.png", "ADI/2.png", "ADI/sub/1.png", "NORM/x.tif", "readme.png"] {
            touch(&r.join(f));
        }
        let ds = ImageFolder::scan(r).unwrap();
        assert_eq!(ds.classes, ["ADI", "NORM", "TUM"]);
        let labels: Vec<usize> = ds.items.iter().map(|(_, c)| *c).collect();
        assert_eq!(labels, [0, 0, 1, 2]);
        assert_eq!(ds.items[0].0, r.join("ADI/2.png"));
        assert_eq!(ds.class_counts(), [2, 1, 1]);
        assert!(ds.notes.iter().any(|n| n.contains("ignored 1 file")), "{:?}", ds.notes);
    }

    #[test]
    fn empty_class_folder_is_an_error() {
        let d = tempfile::tempdir().unwrap();
        touch(&d.path().join("a/1.png"));
        fs::create_dir(d.path().join("b")).unwrap();
        let e = ImageFolder::scan(d.path()).unwrap_err().to_string();
        assert!(e.contains("'b' has no images"), "{e}");
    }
}
