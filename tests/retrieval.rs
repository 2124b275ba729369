//! Retrieval: corpus parsing, embedding cache, cosine top-k and pseudo-pair files.

use burn::tensor::Device;
use clipit::retrieval::{
    cache_path, matrix_from_host, matrix_to_host, parse_pairs, pseudo_pairs, read_pairs_jsonl,
    top_k, top_k_from_scores, write_pairs_jsonl, CacheLookup, Corpus, EmbeddingCache, PseudoPair,
};

fn err(r: clipit::Result<impl std::fmt::Debug>) -> String {
    r.unwrap_err().to_string()
}

#[test]
fn plain_text_corpus_ids_skip_blank_lines() {
    let c =
        Corpus::parse("\u{feff}first report\r\n\n  second report  \n\nthird".as_bytes(), "c.txt")
            .unwrap();
    assert_eq!(c.ids, ["0", "1", "2"]);
    assert_eq!(c.texts, ["first report", "second report", "third"]);
}

#[test]
fn jsonl_corpus_with_string_and_number_ids() {
    let src = "\n{\"id\": \"TCGA-A\", \"text\": \"ductal carcinoma\"}\n{\"id\": 7, \"text\": \"lobular\", \"extra\": 1}\n";
    let c = Corpus::parse(src.as_bytes(), "c.jsonl").unwrap();
    assert_eq!(c.ids, ["TCGA-A", "7"]);
    assert_eq!(c.texts, ["ductal carcinoma", "lobular"]);
}

#[test]
fn corpus_errors_name_file_and_line() {
    let e = err(Corpus::parse(b"ok\nbad \xff byte\n", "c.txt"));
    assert!(e.starts_with("c.txt: line 2: not valid UTF-8"), "{e}");
    let e = err(Corpus::parse(b"{\"id\":1,\"text\":\"a\"}\n\n{\"id\":2,\"text\":}\n", "c.jsonl"));
    assert!(e.starts_with("c.jsonl: line 3: invalid JSON"), "{e}");
    assert!(!e.contains("at line 1"), "{e}");
    let e = err(Corpus::parse(
        b"{\"id\":1,\"text\":\"a\"}\n{\"id\":\"1\",\"text\":\"b\"}\n",
        "c.jsonl",
    ));
    assert!(e.contains("line 2: duplicate id '1' (first on line 1)"), "{e}");
    let e = err(Corpus::parse(b"{\"id\":1.5,\"text\":\"a\"}\n", "c.jsonl"));
    assert!(e.contains("not an integer"), "{e}");
    let e = err(Corpus::parse(b"{\"id\":1}\n", "c.jsonl"));
    assert!(e.contains("missing field `text`"), "{e}");
    let e = err(Corpus::parse(b" \n\n", "c.txt"));
    assert!(e.starts_with("c.txt: the corpus has no reports"), "{e}");
    let e = err(Corpus::read("/nonexistent/corpus.txt"));
    assert!(e.starts_with("/nonexistent/corpus.txt:"), "{e}");
}

#[test]
fn corpus_hash_depends_on_model_ids_and_texts() {
    let a = Corpus::parse(b"x\ny\n", "a").unwrap();
    let h = a.hash("conch");
    assert_eq!(h.len(), 64);
    assert_eq!(h, Corpus::parse(b"x\n\ny\n", "b").unwrap().hash("conch"));
    assert_ne!(h, a.hash("plip"));
    assert_ne!(h, Corpus::parse(b"xy\n", "c").unwrap().hash("conch"));
    let mut b = a.clone();
    b.ids[0] = "z".into();
    assert_ne!(h, b.hash("conch"));
}

#[test]
fn embedding_cache_round_trip_stale_and_corrupt() {
    let dir = tempfile::tempdir().unwrap();
    let path = cache_path(dir.path().join("cache"), "abc/..");
    assert_eq!(path.file_name().unwrap(), "text-embeddings-abc___.safetensors");
    assert_eq!(EmbeddingCache::load(&path, "k"), CacheLookup::Missing);

    let ids: Vec<String> = vec!["a".into(), "b".into()];
    let embeds = [1.0f32, 2.0, 3.0, 4.0, 5.0, -6.5];
    EmbeddingCache::save(&path, "k", &ids, &embeds, 3).unwrap();
    let hit = EmbeddingCache::load(&path, "k").hit().unwrap();
    assert_eq!((hit.ids.clone(), hit.embeds.clone(), hit.dim), (ids.clone(), embeds.to_vec(), 3));
    assert_eq!(EmbeddingCache::load(&path, "other"), CacheLookup::Stale);
    let (v, dims) = matrix_to_host(hit.to_tensor(&Device::flex()).unwrap()).unwrap();
    assert_eq!((v, dims), (embeds.to_vec(), [2, 3]));

    std::fs::write(&path, b"garbage").unwrap();
    let lookup = EmbeddingCache::load(&path, "k");
    let w = lookup.warning().unwrap();
    assert!(w.contains(&path.display().to_string()) && w.contains("not a safetensors file"), "{w}");
    assert!(EmbeddingCache::save(&path, "k", &ids, &embeds, 4).is_err());
}

#[test]
fn top_k_orders_by_score_then_index() {
    let scores = [0.2, 0.9, 0.5, 0.9, f32::NAN, 1.0, 1.0, 1.0, 0.0, 0.0];
    let got = top_k_from_scores(&scores, 5, 3).unwrap();
    assert_eq!(got[0], vec![(1, 0.9), (3, 0.9), (2, 0.5)]);
    assert_eq!(got[1], vec![(0, 1.0), (1, 1.0), (2, 1.0)]);
    let all = top_k_from_scores(&scores[..5], 5, 10).unwrap();
    assert_eq!(all[0].iter().map(|h| h.0).collect::<Vec<_>>(), [1, 3, 2, 0, 4]);
    assert!(top_k_from_scores(&scores, 3, 1).is_err());
    assert!(top_k_from_scores(&scores, 5, 0).is_err());
}

#[test]
fn cosine_top_k_on_cpu() {
    let dev = Device::flex();
    let images = matrix_from_host(&[1.0, 0.0, 0.0, 2.0, 1.0, 1.0], 2, &dev).unwrap();
    let texts = matrix_from_host(&[3.0, 0.0, 0.0, 0.5, 1.0, 1.0], 2, &dev).unwrap();
    let hits = top_k(images, texts.clone(), 2).unwrap();
    let s = std::f32::consts::FRAC_1_SQRT_2;
    let expect = [[(0, 1.0), (2, s)], [(1, 1.0), (2, s)], [(2, 1.0), (0, s)]];
    for (row, exp) in hits.iter().zip(expect) {
        for (&(j, v), (ej, ev)) in row.iter().zip(exp) {
            assert_eq!(j, ej, "{hits:?}");
            assert!((v - ev).abs() < 1e-5, "{hits:?}");
        }
    }
    let wrong = matrix_from_host(&[1.0, 2.0, 3.0], 3, &dev).unwrap();
    assert!(err(top_k(wrong, texts, 1)).contains("width 3"));
}

#[test]
fn pseudo_pairs_jsonl_round_trip() {
    let images = vec!["a.png".to_string(), "b.png".to_string()];
    let reports = vec!["r0".to_string(), "r1".to_string()];
    let pairs =
        pseudo_pairs(&images, &reports, &[vec![(1, 0.5), (0, 0.25)], vec![(0, 0.75)]]).unwrap();
    assert_eq!(
        pairs[1],
        PseudoPair { image: "a.png".into(), report_id: "r0".into(), score: 0.25, rank: 2 }
    );
    assert!(pseudo_pairs(&images, &reports, &[vec![(5, 0.1)], vec![]]).is_err());

    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("pairs.jsonl");
    write_pairs_jsonl(&path, &pairs).unwrap();
    assert_eq!(read_pairs_jsonl(&path).unwrap(), pairs);

    let mut nan = pairs.clone();
    nan[0].score = f32::NAN;
    assert!(write_pairs_jsonl(&path, &nan).is_err());
    assert_eq!(read_pairs_jsonl(&path).unwrap(), pairs, "a failed write keeps the old file");

    let bad = "{\"image\":\"a\",\"report_id\":\"r\",\"score\":1.0,\"rank\":1}\n{\"image\":\"a\"}\n";
    let e = err(parse_pairs(bad.as_bytes(), "p.jsonl"));
    assert!(e.starts_with("p.jsonl: line 2: invalid JSON"), "{e}");
    let e = err(parse_pairs(
        b"{\"image\":\"a\",\"report_id\":\"r\",\"score\":1.0,\"rank\":0}".as_slice(),
        "p.jsonl",
    ));
    assert!(e.contains("line 1: rank must start at 1"), "{e}");
}
