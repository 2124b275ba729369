//! Tokenizers on arbitrary bytes. The first byte picks the case:
//! - 0: the rest as (lossy UTF-8) text through the embedded CLIP tokenizer;
//! - 1: the rest as text through CONCH's `tokenizer.json` (the test fixture);
//! - otherwise: the rest up to a NUL is a `tokenizer.json`, loaded as a checkpoint's would be,
//!   and what follows the NUL is encoded with it.
#![no_main]

use std::sync::OnceLock;

use clipit::tokenizer::TextTokenizer;
use libfuzzer_sys::fuzz_target;

const CONCH_JSON: &[u8] = include_bytes!("../../tests/fixtures/conch/tokenizer.json");

fn clip() -> &'static TextTokenizer {
    static T: OnceLock<TextTokenizer> = OnceLock::new();
    T.get_or_init(|| TextTokenizer::clip(77, true).expect("embedded CLIP tokenizer"))
}

fn conch() -> &'static TextTokenizer {
    static T: OnceLock<TextTokenizer> = OnceLock::new();
    T.get_or_init(|| {
        let specials = ["<start_of_text>", "<end_of_text>"];
        let mut t = TextTokenizer::from_json(
            CONCH_JSON,
            "conch/tokenizer.json",
            specials,
            Some("<pad>"),
            128,
        )
        .expect("CONCH tokenizer fixture");
        t.reserved = 1;
        t
    })
}

/// Encodes `text` and checks the fixed-length layout.
fn check(tok: &TextTokenizer, text: &str) {
    if let Ok(ids) = tok.encode(text) {
        assert_eq!(ids.len(), tok.context_length);
        assert_eq!(ids[0], tok.start_id);
        assert!(ids.contains(&tok.end_id));
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&sel, rest)) = data.split_first() else { return };
    match sel {
        0 => check(clip(), &String::from_utf8_lossy(rest)),
        1 => check(conch(), &String::from_utf8_lossy(rest)),
        _ => {
            let (json, text) = match rest.iter().position(|&b| b == 0) {
                Some(i) => (&rest[..i], &rest[i + 1..]),
                None => (rest, &[][..]),
            };
            let specials = ["<|startoftext|>", "<|endoftext|>"];
            if let Ok(tok) = TextTokenizer::from_json(json, "tokenizer.json", specials, None, 77) {
                check(&tok, &String::from_utf8_lossy(text));
                check(&tok, "A poorly differentiated adenocarcinoma with necrosis.");
            }
        }
    }
});
