//! `clipit bench` prints one JSON object with the keys external checks read, for both tasks, on a
//! model folder's config with random weights (the figures themselves are for BENCHMARKS.md, never
//! asserted in tests).

mod common;
use common::clipit;

#[test]
fn bench_json_has_throughput_and_memory() {
    for (task, dtype) in [("embed", "f32"), ("train", "f32"), ("embed", "f16"), ("train", "bf16")] {
        let out = clipit(&[
            "bench",
            "--model",
            "tests/fixtures/open_clip",
            "--task",
            task,
            "--batch",
            "4",
            "--warmup",
            "1",
            "--runs",
            "2",
            "--dtype",
            dtype,
            "--json",
        ]);
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(v["task"], task);
        assert_eq!(v["dtype"], dtype);
        assert!(v["images_per_sec"].as_f64().unwrap() > 0.0, "{v}");
        assert!(v["peak_memory_bytes"].as_u64().unwrap() > 0, "{v}");
    }
    let bad = clipit(&["bench", "--model", "vit-h-14", "--json"]);
    assert!(!bad.status.success());
    let err = String::from_utf8_lossy(&bad.stderr);
    assert!(err.contains("vit-h-14"), "{err}");
    let bad = clipit(&["bench", "--dtype", "f8"]);
    assert!(!bad.status.success() && String::from_utf8_lossy(&bad.stderr).contains("f8"));
}
