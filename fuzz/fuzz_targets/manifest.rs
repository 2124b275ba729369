//! The text inputs of training: a CSV manifest, a report corpus (plain text or JSONL) and
//! retrieved pseudo-pairs (JSONL), then the pairs attached to the manifest's datasets.
//!
//! The input is split at its first two NUL bytes: `manifest \0 corpus \0 pairs`.
#![no_main]

use std::path::Path;

use clipit::retrieval::{parse_pairs, Corpus};
use clipit::train::data::{attach_pairs, parse_manifest};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let mut parts = data.splitn(3, |&b| b == 0);
    let manifest = String::from_utf8_lossy(parts.next().unwrap_or_default());
    let corpus = parts.next().unwrap_or_default();
    let pairs = parts.next().unwrap_or_default();

    // A base folder that does not exist: relative paths never reach real files.
    let splits = parse_manifest(&manifest, "fuzz.csv", Path::new("/nonexistent/clipit-fuzz"));
    if let Ok(s) = &splits {
        assert!(s.classes.len() >= 2);
        for d in [&s.train, &s.val, &s.test].into_iter().flatten() {
            assert!(d.samples.iter().all(|x| x.label < d.classes.len()));
        }
    }
    let corpus = Corpus::parse(corpus, "fuzz-corpus.jsonl");
    if let Ok(c) = &corpus {
        assert_eq!(c.ids.len(), c.texts.len());
        assert!(!c.is_empty());
    }
    let pairs = parse_pairs(pairs, "fuzz-pairs.jsonl");
    if let (Ok(s), Ok(c), Ok(p)) = (&splits, &corpus, &pairs) {
        for d in [&s.train, &s.val, &s.test].into_iter().flatten() {
            if let Ok(idx) = attach_pairs(d, p, &c.ids) {
                assert_eq!(idx.len(), d.samples.len());
                assert!(idx.iter().all(|&j| j < c.ids.len()));
            }
        }
    }
});
