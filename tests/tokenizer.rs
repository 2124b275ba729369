//! Token ids identical to open_clip's `tokenize`, Hugging Face's `CLIPTokenizer`
//! (`padding="max_length", truncation=True`) and CONCH's `tokenize`, including truncation at the
//! context length and the end-of-text position.

use std::path::PathBuf;

use clipit::tokenizer::TextTokenizer;

fn fixture(name: &str) -> serde_json::Value {
    let path =
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/tokenizer").join(name);
    serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap()
}

fn ids(v: &serde_json::Value) -> Vec<Vec<u32>> {
    serde_json::from_value(v.clone()).unwrap()
}

fn texts(v: &serde_json::Value) -> Vec<String> {
    serde_json::from_value(v["texts"].clone()).unwrap()
}

#[test]
fn clip_ids_match_open_clip_and_hf() {
    let f = fixture("clip.json");
    let texts = texts(&f);
    let open_clip = TextTokenizer::clip(77, false).unwrap();
    let hf = TextTokenizer::clip(77, true).unwrap();
    let want_open_clip = ids(&f["open_clip_ids"]);
    let want_hf = ids(&f["hf_ids"]);
    let mut truncated = 0;
    for (i, text) in texts.iter().enumerate() {
        let got = open_clip.encode(text).unwrap();
        assert_eq!(got, want_open_clip[i], "open_clip ids of {text:?}");
        assert_eq!(hf.encode(text).unwrap(), want_hf[i], "HF ids of {text:?}");
        if got[76] == 49407 {
            truncated += 1;
        }
    }
    assert!(truncated >= 1, "the fixture must exercise truncation");
}

#[test]
fn conch_ids_match_conch_tokenize() {
    let f = fixture("conch.json");
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let json = std::fs::read(root.join(f["tokenizer"].as_str().unwrap())).unwrap();
    let ctx = f["context_length"].as_u64().unwrap() as usize;
    let mut tok = TextTokenizer::from_json(
        &json,
        "conch tokenizer",
        ["<start_of_text>", "<end_of_text>"],
        Some("<pad>"),
        ctx,
    )
    .unwrap();
    tok.reserved = 1;
    assert_eq!((tok.start_id, tok.end_id, tok.pad_id), (1, 2, 0));
    assert_eq!(tok.encode_batch(&texts(&f)).unwrap(), ids(&f["ids"]));
}

#[test]
fn missing_special_token_is_a_clear_error() {
    let f = fixture("conch.json");
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let json = std::fs::read(root.join(f["tokenizer"].as_str().unwrap())).unwrap();
    let err = TextTokenizer::from_json(
        &json,
        "my/tokenizer.json",
        ["<|startoftext|>", "<end_of_text>"],
        None,
        16,
    )
    .err()
    .expect("no such token");
    assert!(
        err.to_string().contains("my/tokenizer.json")
            && err.to_string().contains("<|startoftext|>"),
        "{err}"
    );
    let err = TextTokenizer::from_json(b"{not json", "bad.json", ["a", "b"], None, 16)
        .err()
        .expect("invalid");
    assert!(err.to_string().contains("bad.json"), "{err}");
}
