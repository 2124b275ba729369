//! A training run killed with SIGKILL in the middle continues with `--resume` from its last
//! checkpoint, finishes, and leaves no corrupt or temporary file (issue 6, interrupted runs). Uses
//! the committed demo tiles and reports, so it never skips.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

mod common;
use common::{clipit, root};

fn args(out: &Path, resume: bool) -> Vec<String> {
    let mut v: Vec<String> = [
        "train",
        "--method",
        "clipit",
        "--backbone",
        "tests/fixtures/open_clip",
        "--teacher",
        "tests/fixtures/open_clip",
        "--reports",
        "data/crc_demo/reports.jsonl",
        "--data",
        "data/crc_demo/tiles",
        "--out",
        out.to_str().unwrap(),
        "--epochs",
        "20",
        "--max-steps",
        "150",
        "--batch-size",
        "8",
        "--val-every",
        "1",
        "--no-augment",
        "--seed",
        "3",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    if resume {
        v.push("--resume".into());
    }
    v
}

fn saved_step(run: &Path) -> u64 {
    let state: serde_json::Value =
        serde_json::from_slice(&std::fs::read(run.join("state.json")).unwrap())
            .expect("state.json parses after the kill");
    state["step"].as_u64().unwrap()
}

#[test]
fn sigkill_then_resume_finishes_without_corrupt_files() {
    let tmp = tempfile::tempdir().unwrap();
    let run = tmp.path().join("run");
    let mut child = Command::new(env!("CARGO_BIN_EXE_clipit"))
        .args(args(&run, false))
        .current_dir(root())
        .env("XDG_CACHE_HOME", tmp.path())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    // Wait for a few checkpoints, then kill without warning.
    let start = Instant::now();
    loop {
        if run.join("state.json").is_file() && saved_step(&run) >= 3 {
            break;
        }
        assert!(child.try_wait().unwrap().is_none(), "the run ended before it could be killed");
        assert!(start.elapsed() < Duration::from_secs(120), "no checkpoint after 120 s");
        std::thread::sleep(Duration::from_millis(20));
    }
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    let killed_at = saved_step(&run);
    assert!(killed_at < 150, "the run was not interrupted ({killed_at} steps)");

    let out = clipit(&args(&run, true).iter().map(String::as_str).collect::<Vec<_>>());
    assert!(out.status.success(), "resume failed: {}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(saved_step(&run), 150, "the resumed run did not finish");
    // Every step is logged once after the resume point, and nothing temporary is left behind.
    let steps: Vec<u64> = std::fs::read_to_string(run.join("metrics.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).expect("metrics.jsonl line"))
        .filter(|v| v.get("loss").is_some())
        .map(|v| v["step"].as_u64().unwrap())
        .collect();
    assert_eq!(steps.last(), Some(&150));
    for entry in std::fs::read_dir(&run).unwrap() {
        let name = entry.unwrap().file_name().to_string_lossy().to_string();
        assert!(!name.contains(".tmp"), "temporary file {name} left in the run folder");
    }
    let eval = clipit(&[
        "eval",
        "--run",
        run.to_str().unwrap(),
        "--data",
        "data/crc_demo/tiles",
        "--json",
    ]);
    assert!(eval.status.success(), "{}", String::from_utf8_lossy(&eval.stderr));
}
