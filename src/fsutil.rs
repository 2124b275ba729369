//! Crash-safe file output: write to a temporary file in the destination folder, flush it to disk,
//! then rename it over the destination, so readers never see a half-written file.
//!
//! Native only in practice (the browser has no filesystem), but it compiles for wasm32.

use std::fs::{File, OpenOptions};
use std::io::{self, BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use crate::{Error, Result};

/// Removes the temporary files that [`AtomicWriter`] leaves in `dir` when its process is killed
/// before finishing (`.<name>.<pid>.<n>.tmp`); returns their paths. Call it only when no other
/// process writes into `dir` (e.g. when a run resumes).
pub fn remove_stale_temps(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut removed = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(|e| Error::io(dir, e))? {
        let path = entry.map_err(|e| Error::io(dir, e))?.path();
        let name = path.file_name().and_then(|n| n.to_str()).unwrap_or_default();
        if name.starts_with('.') && name.ends_with(".tmp") && path.is_file() {
            std::fs::remove_file(&path).map_err(|e| Error::io(&path, e))?;
            removed.push(path);
        }
    }
    Ok(removed)
}

/// Writes `bytes` to `path` atomically: a temporary file in the same folder is written, synced to
/// disk and renamed over `path`. On error the temporary file is removed and `path` is untouched.
pub fn write_atomic(path: impl AsRef<Path>, bytes: &[u8]) -> Result<()> {
    let mut writer = AtomicWriter::create(path)?;
    writer.write_all(bytes).map_err(|e| Error::io(writer.temp_path(), e))?;
    writer.finish()
}

/// A buffered writer whose output appears at its destination only when [`AtomicWriter::finish`]
/// succeeds; dropped without `finish` (an error, a panic), it removes its temporary file.
///
/// Use it for streamed outputs such as JSONL. Map `std::io::Error`s from `write!` with
/// `Error::io(writer.temp_path(), e)`.
#[derive(Debug)]
pub struct AtomicWriter {
    inner: Option<BufWriter<File>>,
    temp: PathBuf,
    dest: PathBuf,
}

impl AtomicWriter {
    /// Opens a temporary file next to `path`. Fails with a clear message if the folder does not
    /// exist or is not writable, or if `path` is an existing folder.
    pub fn create(path: impl AsRef<Path>) -> Result<Self> {
        let dest = path.as_ref().to_path_buf();
        let Some(file_name) = dest.file_name() else {
            return Err(Error::msg(format!("{}: not a file path (no file name)", dest.display())));
        };
        if dest.is_dir() {
            return Err(Error::msg(format!(
                "{}: is a folder, cannot write a file there",
                dest.display()
            )));
        }
        let dir = match dest.parent() {
            Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
            _ => PathBuf::from("."),
        };
        if !dir.is_dir() {
            return Err(Error::msg(format!(
                "{}: cannot write: folder {} does not exist",
                dest.display(),
                dir.display()
            )));
        }
        static COUNTER: AtomicU64 = AtomicU64::new(0);
        let mut last_err = None;
        for _ in 0..16 {
            let n = COUNTER.fetch_add(1, Ordering::Relaxed);
            let mut name = std::ffi::OsString::from(".");
            name.push(file_name);
            name.push(format!(".{}.{n}.tmp", process_id()));
            let temp = dir.join(name);
            match OpenOptions::new().write(true).create_new(true).open(&temp) {
                Ok(file) => {
                    return Ok(Self { inner: Some(BufWriter::new(file)), temp, dest });
                }
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => last_err = Some(e),
                Err(e) => {
                    return Err(Error::msg(format!(
                        "{}: cannot create a file in this folder (is it writable?): {e}",
                        dir.display()
                    )));
                }
            }
        }
        let e = last_err.unwrap_or_else(|| io::Error::other("temporary names exhausted"));
        Err(Error::msg(format!("{}: cannot create a temporary file: {e}", dir.display())))
    }

    /// The temporary file being written (for error messages).
    pub fn temp_path(&self) -> &Path {
        &self.temp
    }

    /// The final destination.
    pub fn dest_path(&self) -> &Path {
        &self.dest
    }

    /// Flushes, syncs to disk and renames the temporary file onto the destination.
    pub fn finish(mut self) -> Result<()> {
        let Some(buf) = self.inner.take() else {
            return Err(Error::msg(format!("{}: writer already finished", self.dest.display())));
        };
        let file = buf.into_inner().map_err(|e| Error::io(&self.temp, e.into_error()))?;
        file.sync_all().map_err(|e| Error::io(&self.temp, e))?;
        drop(file);
        if let Err(e) = std::fs::rename(&self.temp, &self.dest) {
            let _ = std::fs::remove_file(&self.temp);
            return Err(Error::msg(format!(
                "{}: cannot replace the file: {e}",
                self.dest.display()
            )));
        }
        sync_parent(&self.dest);
        Ok(())
    }

    fn writer(&mut self) -> io::Result<&mut BufWriter<File>> {
        self.inner.as_mut().ok_or_else(|| io::Error::other("writer already finished"))
    }
}

impl Write for AtomicWriter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.writer()?.write(buf)
    }

    fn write_all(&mut self, buf: &[u8]) -> io::Result<()> {
        self.writer()?.write_all(buf)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.writer()?.flush()
    }
}

impl Drop for AtomicWriter {
    fn drop(&mut self) {
        if let Some(buf) = self.inner.take() {
            // Not finished: discard the partial output.
            drop(buf);
            let _ = std::fs::remove_file(&self.temp);
        }
    }
}

/// Syncs the folder holding `path` so the rename itself survives a crash (best effort, Unix).
fn sync_parent(path: &Path) {
    #[cfg(unix)]
    if let Some(dir) = path.parent() {
        let dir = if dir.as_os_str().is_empty() { Path::new(".") } else { dir };
        if let Ok(d) = File::open(dir) {
            let _ = d.sync_all();
        }
    }
    #[cfg(not(unix))]
    let _ = path;
}

/// The process id, used to keep temporary names of concurrent processes apart.
/// (`std::process::id` panics on wasm32-unknown-unknown.)
fn process_id() -> u32 {
    #[cfg(not(target_family = "wasm"))]
    {
        std::process::id()
    }
    #[cfg(target_family = "wasm")]
    {
        0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entries(dir: &Path) -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        v.sort();
        v
    }

    #[test]
    fn write_atomic_replaces_and_leaves_no_temp() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("out.txt");
        write_atomic(&p, b"first").unwrap();
        write_atomic(&p, b"second").unwrap();
        assert_eq!(std::fs::read(&p).unwrap(), b"second");
        assert_eq!(entries(dir.path()), vec!["out.txt"]);
    }

    #[test]
    fn dropped_writer_removes_temp_and_keeps_old_file() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("a.jsonl");
        write_atomic(&p, b"old").unwrap();
        {
            let mut w = AtomicWriter::create(&p).unwrap();
            w.write_all(b"partial").unwrap();
        }
        assert_eq!(std::fs::read(&p).unwrap(), b"old");
        assert_eq!(entries(dir.path()), vec!["a.jsonl"]);
        let mut w = AtomicWriter::create(&p).unwrap();
        writeln!(w, "line").unwrap();
        w.finish().unwrap();
        assert_eq!(std::fs::read_to_string(&p).unwrap(), "line\n");
    }

    #[test]
    fn stale_temps_of_a_killed_writer_are_removed() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("last.bpk");
        write_atomic(&p, b"good").unwrap();
        let mut w = AtomicWriter::create(&p).unwrap();
        w.write_all(b"half").unwrap();
        let temp = w.temp_path().to_path_buf();
        std::mem::forget(w); // as if the process had been killed: no cleanup runs
        std::fs::write(dir.path().join(".hidden"), b"keep").unwrap();
        assert!(temp.is_file());
        assert_eq!(remove_stale_temps(dir.path()).unwrap(), vec![temp]);
        assert_eq!(entries(dir.path()), vec![".hidden", "last.bpk"]);
        assert_eq!(std::fs::read(&p).unwrap(), b"good");
    }

    #[test]
    fn missing_folder_and_folder_destination_are_errors() {
        let dir = tempfile::tempdir().unwrap();
        let e = write_atomic(dir.path().join("nope/x.bin"), b"x").unwrap_err().to_string();
        assert!(e.contains("does not exist"), "{e}");
        let e = write_atomic(dir.path(), b"x").unwrap_err().to_string();
        assert!(e.contains("is a folder"), "{e}");
    }

    #[cfg(unix)]
    #[test]
    fn unwritable_folder_is_a_clear_error() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let ro = dir.path().join("ro");
        std::fs::create_dir(&ro).unwrap();
        std::fs::set_permissions(&ro, std::fs::Permissions::from_mode(0o555)).unwrap();
        let r = write_atomic(ro.join("x.bin"), b"x");
        std::fs::set_permissions(&ro, std::fs::Permissions::from_mode(0o755)).unwrap();
        // root ignores permissions; only check the message when it did fail.
        if let Err(e) = r {
            assert!(e.to_string().contains("writable"), "{e}");
        }
    }
}
