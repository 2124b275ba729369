//! `clipit convert`: torch.save pickles to safetensors (fixtures from
//! tests/reference/make_pickle_fixture.py).

use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use clipit::convert::{convert_pickle_to_safetensors, read_pickle_state_dict};
use safetensors::SafeTensors;

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/pickle").join(name)
}

/// The entries of a zip archive, in order.
fn zip_entries(path: &Path) -> Vec<(String, Vec<u8>)> {
    let mut zip = zip::ZipArchive::new(std::fs::File::open(path).unwrap()).unwrap();
    (0..zip.len())
        .map(|i| {
            let mut f = zip.by_index(i).unwrap();
            let mut data = Vec::new();
            f.read_to_end(&mut data).unwrap();
            (f.name().to_string(), data)
        })
        .collect()
}

fn write_zip(path: &Path, entries: &[(String, Vec<u8>)]) {
    let mut zip = zip::ZipWriter::new(std::fs::File::create(path).unwrap());
    let stored =
        zip::write::SimpleFileOptions::default().compression_method(zip::CompressionMethod::Stored);
    for (name, data) in entries {
        zip.start_file(name.as_str(), stored).unwrap();
        zip.write_all(data).unwrap();
    }
    zip.finish().unwrap();
}

/// A protocol-2 pickle `{"w": _rebuild_tensor_v2(storage '0' (f32, numel), offset, shape, strides)}`.
fn tensor_pickle(numel: i32, offset: i32, shape: &[i32], strides: &[i32]) -> Vec<u8> {
    let int = |p: &mut Vec<u8>, v: i32| {
        p.push(b'J');
        p.extend_from_slice(&v.to_le_bytes());
    };
    let s = |p: &mut Vec<u8>, v: &str| {
        p.push(b'X');
        p.extend_from_slice(&(v.len() as u32).to_le_bytes());
        p.extend_from_slice(v.as_bytes());
    };
    let mut p = b"\x80\x02}".to_vec();
    s(&mut p, "w");
    p.extend_from_slice(b"ctorch._utils\n_rebuild_tensor_v2\n((");
    s(&mut p, "storage");
    p.extend_from_slice(b"ctorch\nFloatStorage\n");
    s(&mut p, "0");
    s(&mut p, "cpu");
    int(&mut p, numel);
    p.extend_from_slice(b"tQ");
    int(&mut p, offset);
    for dims in [shape, strides] {
        p.push(b'(');
        dims.iter().for_each(|&d| int(&mut p, d));
        p.push(b't');
    }
    p.extend_from_slice(b"\x89)tRs.");
    p
}

#[test]
fn tiny_checkpoint_matches_safetensors_reference() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("tiny.safetensors");
    let report = convert_pickle_to_safetensors(&fixture("tiny.bin"), &out).unwrap();

    let expected_bytes = std::fs::read(fixture("expected.safetensors")).unwrap();
    let expected = SafeTensors::deserialize(&expected_bytes).unwrap();
    let got_bytes = std::fs::read(&out).unwrap();
    let got = SafeTensors::deserialize(&got_bytes).unwrap();

    let mut names = got.names();
    let mut expected_names = expected.names();
    names.sort();
    expected_names.sort();
    assert_eq!(names, expected_names);
    assert_eq!(report.tensors, expected_names.len());
    let mut total = 0u64;
    for name in expected_names {
        let (e, g) = (expected.tensor(name).unwrap(), got.tensor(name).unwrap());
        assert_eq!(g.dtype(), e.dtype(), "{name}");
        assert_eq!(g.shape(), e.shape(), "{name}");
        assert_eq!(g.data(), e.data(), "{name}");
        total += e.data().len() as u64;
    }
    assert_eq!(report.bytes, total);
    for skipped in ["epoch", "logit_scale_note", "num_batches"] {
        assert!(report.skipped.iter().any(|s| s.starts_with(skipped)), "{:?}", report.skipped);
    }
    assert_eq!(report.skipped.len(), 3, "{:?}", report.skipped);
    // The temporary file was renamed away.
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);

    // The in-memory reader agrees, in the pickle's order.
    let tensors = read_pickle_state_dict(&fixture("tiny.bin")).unwrap();
    assert_eq!(tensors.len(), report.tensors);
    assert_eq!(tensors[0].0, "visual.proj");
    for (name, t) in &tensors {
        let e = expected.tensor(name).unwrap();
        assert_eq!(
            (t.dtype, t.shape.as_slice(), t.data.as_slice()),
            (e.dtype(), e.shape(), e.data())
        );
    }
}

/// Converts `input` and checks it fails naming the file, leaving no file behind.
fn assert_rejected(input: &Path, needle: &str) {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out.safetensors");
    let err = convert_pickle_to_safetensors(input, &out).unwrap_err().to_string();
    let file_name = input.file_name().unwrap().to_string_lossy();
    assert!(err.contains(&*file_name), "error does not name the file: {err}");
    assert!(err.contains(needle), "expected {needle:?} in: {err}");
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0, "left a file for {err}");
    assert!(read_pickle_state_dict(input).is_err());
}

#[test]
fn bad_inputs_are_errors_without_output() {
    let dir = tempfile::tempdir().unwrap();
    let at = |name: &str| dir.path().join(name);
    let tiny = zip_entries(&fixture("tiny.bin"));
    let pkl = tiny.iter().find(|(n, _)| n.ends_with("/data.pkl")).unwrap().clone();

    std::fs::write(at("empty.bin"), b"").unwrap();
    assert_rejected(&at("empty.bin"), "empty file");

    let bytes = std::fs::read(fixture("tiny.bin")).unwrap();
    std::fs::write(at("truncated.bin"), &bytes[..bytes.len() / 2]).unwrap();
    assert_rejected(&at("truncated.bin"), "zip");

    std::fs::write(at("legacy.bin"), b"\x80\x02\x8a\x0al\xfc\x9cF\xf9 j\xa8P\x19.").unwrap();
    assert_rejected(&at("legacy.bin"), "legacy");

    assert_rejected(&fixture("expected.safetensors"), "already a safetensors file");

    std::fs::write(at("text.bin"), b"hello, not a checkpoint at all").unwrap();
    assert_rejected(&at("text.bin"), "zip");

    write_zip(&at("nopkl.bin"), &[("x/version".into(), b"3\n".to_vec())]);
    assert_rejected(&at("nopkl.bin"), "data.pkl");

    write_zip(&at("garbage.bin"), &[("x/data.pkl".into(), b"\x80\x02}q\x00(K\x01".to_vec())]);
    assert_rejected(&at("garbage.bin"), "ends unexpectedly");

    write_zip(&at("opcode.bin"), &[("x/data.pkl".into(), b"\x80\x02\xfe.".to_vec())]);
    assert_rejected(&at("opcode.bin"), "opcode 0xfe");

    write_zip(&at("nostorage.bin"), std::slice::from_ref(&pkl));
    assert_rejected(&at("nostorage.bin"), "data/");

    // Storages cut to 1 byte: every view reaches past its storage.
    let short: Vec<_> = tiny
        .iter()
        .map(|(n, d)| {
            (n.clone(), if n.contains("/data/") { d[..d.len().min(1)].to_vec() } else { d.clone() })
        })
        .collect();
    write_zip(&at("short.bin"), &short);
    assert_rejected(&at("short.bin"), "past its storage");

    // Absurd shapes and offsets read from the pickle.
    let storage = ("x/data/0".to_string(), vec![0u8; 16]);
    for (name, pickle, needle) in [
        ("huge.bin", tensor_pickle(4, 0, &[1 << 30, 1 << 30, 1 << 30], &[1, 1, 1]), "overflows"),
        ("big.bin", tensor_pickle(4, 0, &[1 << 20, 1 << 10], &[0, 0]), "more than the whole file"),
        ("offset.bin", tensor_pickle(4, 1 << 30, &[2], &[1]), "past its storage"),
        ("stride.bin", tensor_pickle(4, 0, &[2, 2], &[1 << 30, 1]), "past its storage"),
        ("negative.bin", tensor_pickle(4, 0, &[-2], &[1]), "negative"),
    ] {
        write_zip(&at(name), &[("x/data.pkl".into(), pickle), storage.clone()]);
        assert_rejected(&at(name), needle);
    }
    // The same hand-made pickle with sane numbers converts.
    write_zip(&at("ok.bin"), &[("x/data.pkl".into(), tensor_pickle(4, 1, &[3], &[1])), storage]);
    let out = at("ok.safetensors");
    assert_eq!(convert_pickle_to_safetensors(&at("ok.bin"), &out).unwrap().bytes, 12);

    // A pickle calling os.system: refused, and nothing is executed.
    assert_rejected(&fixture("evil.bin"), "os.system");
}

#[test]
fn big_endian_storages_are_byte_swapped() {
    let dir = tempfile::tempdir().unwrap();
    let (input, out) = (dir.path().join("be.bin"), dir.path().join("be.safetensors"));
    let values = [1.5f32, -2.0, 3.25];
    let be: Vec<u8> = values.iter().flat_map(|v| v.to_be_bytes()).collect();
    write_zip(
        &input,
        &[
            ("x/data.pkl".into(), tensor_pickle(3, 0, &[3], &[1])),
            ("x/byteorder".into(), b"big".to_vec()),
            ("x/data/0".into(), be),
        ],
    );
    convert_pickle_to_safetensors(&input, &out).unwrap();
    let bytes = std::fs::read(&out).unwrap();
    let st = SafeTensors::deserialize(&bytes).unwrap();
    let le: Vec<u8> = values.iter().flat_map(|v| v.to_le_bytes()).collect();
    assert_eq!(st.tensor("w").unwrap().data(), le.as_slice());
}

#[test]
fn hostile_pickles_are_bounded() {
    let dir = tempfile::tempdir().unwrap();
    let cases: [(&str, Vec<u8>, &str); 4] = [
        // Deeply nested containers (dropping them could overflow the stack).
        ("tuples.bin", [&b"\x80\x02"[..], &[b'('; 1000], &[b't'; 1000], b"."].concat(), "deeply"),
        ("lists.bin", [&b"\x80\x02"[..], &[b']'; 1000], &[b'a'; 999], b"."].concat(), "deeply"),
        // A dict re-memoized after every item would be copied quadratically.
        (
            "copies.bin",
            [&b"\x80\x02}"[..], &b"q\x00K\x01K\x01s".repeat(100), b"."].concat(),
            "copies",
        ),
        // Memo keys that were never stored.
        ("memo.bin", b"\x80\x02h\x05.".to_vec(), "memo"),
    ];
    for (name, pickle, needle) in cases {
        let path = dir.path().join(name);
        write_zip(&path, &[("x/data.pkl".into(), pickle)]);
        assert_rejected(&path, needle);
    }
}

#[test]
fn failed_conversion_keeps_the_previous_output() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("model.safetensors");
    std::fs::write(&out, b"previous").unwrap();
    assert!(convert_pickle_to_safetensors(&fixture("evil.bin"), &out).is_err());
    assert_eq!(std::fs::read(&out).unwrap(), b"previous");
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
    let err = convert_pickle_to_safetensors(&fixture("tiny.bin"), &dir.path().join("no/x.st"));
    assert!(err.unwrap_err().to_string().contains("does not exist"));
}
