//! Helpers shared by the integration tests that run the `clipit` binary.
#![allow(dead_code)]

use std::future::Future;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::task::{Context, Poll, Waker};

/// The repository root (tests run with it as the working directory too).
pub fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Runs the `clipit` binary with `args`, its embedding cache in the temp folder.
pub fn clipit(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_clipit"))
        .args(args)
        .env("XDG_CACHE_HOME", std::env::temp_dir())
        .output()
        .expect("run clipit")
}

/// A committed fixture checkpoint folder (`tests/fixtures/<name>`).
pub fn fixture(name: &str) -> PathBuf {
    root().join("tests/fixtures").join(name)
}

/// A process's stderr as text.
pub fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// Asserts a clean failure: non-zero exit, no panic, and a message containing every `needle`.
pub fn assert_fails(out: &Output, needles: &[&str]) {
    let err = stderr(out);
    eprintln!("{}", err.trim_end());
    assert!(!out.status.success(), "expected failure, got success; stderr: {err}");
    assert!(!err.contains("panicked"), "panic instead of an error: {err}");
    for n in needles {
        assert!(err.contains(n), "stderr lacks '{n}': {err}");
    }
}

/// Copies the files of folder `from` (not recursive) into `to`, created if needed.
pub fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        std::fs::copy(entry.path(), to.join(entry.file_name())).unwrap();
    }
}

/// Drives a future to completion on this thread (the page's async API natively: the CPU
/// backend's reads resolve at once, wgpu's after polling).
pub fn block_on<F: Future>(f: F) -> F::Output {
    let mut f = std::pin::pin!(f);
    let mut cx = Context::from_waker(Waker::noop());
    loop {
        if let Poll::Ready(v) = f.as_mut().poll(&mut cx) {
            return v;
        }
        std::thread::yield_now();
    }
}
