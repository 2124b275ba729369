//! Helpers shared by the integration tests that run the `clipit` binary.
#![allow(dead_code)]

use std::path::PathBuf;
use std::process::{Command, Output};

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
