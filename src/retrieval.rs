//! CLIP-IT step 1: pair every image with its most similar report of an unpaired corpus,
//! `j* = argmax_j cos(f_v(I_i), f_t(T_j))`.
//!
//! Pieces, from input to output:
//! - [`Corpus`]: the reports, read from plain text (one per line) or JSONL;
//! - [`EmbeddingCache`]: text embeddings saved as safetensors, keyed by [`Corpus::hash`];
//! - [`cosine_similarity`] on the device, then [`top_k_from_scores`] on the host ([`top_k`] and
//!   [`top_k_async`] do both);
//! - [`PseudoPair`] rows written as JSONL.
//!
//! Everything that the browser needs works on bytes or strings; the `Path` functions are thin
//! wrappers. Tensor reads happen only in [`matrix_to_host`] / [`matrix_to_host_async`].

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};

use burn::tensor::{Device, Tensor, TensorData};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::fsutil::{write_atomic, AtomicWriter};
use crate::{Error, Result};

// ---------------------------------------------------------------------------------------------
// Corpus

/// The unpaired reports `D_T`, in file order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Corpus {
    /// One id per report, unique.
    pub ids: Vec<String>,
    /// The report texts, trimmed of surrounding whitespace.
    pub texts: Vec<String>,
}

impl Corpus {
    /// Parses a corpus from bytes; `name` names the input in errors. See [`Corpus::from_reader`].
    pub fn parse(bytes: &[u8], name: &str) -> Result<Self> {
        Self::from_reader(bytes, name)
    }

    /// Reads a corpus file, streaming it line by line. See [`Corpus::from_reader`].
    pub fn read(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        let file = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
        Self::from_reader(BufReader::new(file), &path.display().to_string())
    }

    /// Reads a corpus in one of two formats, chosen by the first non-blank line:
    /// - it starts with `{`: JSONL, one object `{"id": ..., "text": "..."}` per line; the id is a
    ///   string or an integer; other fields are ignored;
    /// - otherwise plain text, one report per line; the id of a report is its index among the
    ///   non-blank lines ("0", "1", ...), i.e. blank lines do not shift ids.
    ///
    /// Blank lines are skipped in both formats; a UTF-8 byte-order mark and CRLF endings are
    /// accepted. Errors (with the line number): invalid UTF-8, invalid JSON, a missing or empty
    /// text, a duplicate id; and an empty corpus.
    pub fn from_reader(reader: impl BufRead, name: &str) -> Result<Self> {
        let mut ids = Vec::new();
        let mut texts = Vec::new();
        let mut seen: HashMap<String, usize> = HashMap::new();
        let mut jsonl: Option<bool> = None;
        for_each_line(reader, name, |line_no, line| {
            let line = line.trim();
            if line.is_empty() {
                return Ok(());
            }
            let is_jsonl = *jsonl.get_or_insert_with(|| line.starts_with('{'));
            let (id, text) = if is_jsonl {
                let row: CorpusRow =
                    serde_json::from_str(line).map_err(|e| json_error(name, line_no, &e))?;
                let id = row.id.into_string().map_err(|m| line_error(name, line_no, m))?;
                (id, row.text.trim().to_string())
            } else {
                (texts.len().to_string(), line.to_string())
            };
            if text.is_empty() {
                return Err(line_error(name, line_no, format!("report '{id}' has an empty text")));
            }
            if let Some(first) = seen.insert(id.clone(), line_no) {
                return Err(line_error(
                    name,
                    line_no,
                    format!("duplicate id '{id}' (first on line {first})"),
                ));
            }
            ids.push(id);
            texts.push(text);
            Ok(())
        })?;
        if texts.is_empty() {
            return Err(Error::format(
                name,
                "the corpus has no reports (the file is empty or blank)",
            ));
        }
        Ok(Self { ids, texts })
    }

    /// Number of reports.
    pub fn len(&self) -> usize {
        self.texts.len()
    }

    /// Whether the corpus has no report (never true for a parsed corpus).
    pub fn is_empty(&self) -> bool {
        self.texts.is_empty()
    }

    /// Hex SHA-256 over `model_id` and every `(id, text)` in order (length-prefixed, so no two
    /// different corpora collide by concatenation): the key of the text-embedding cache.
    pub fn hash(&self, model_id: &str) -> String {
        let mut h = Sha256::new();
        let mut feed = |bytes: &[u8]| {
            h.update((bytes.len() as u64).to_le_bytes());
            h.update(bytes);
        };
        feed(b"clipit-corpus-v1");
        feed(model_id.as_bytes());
        for (id, text) in self.ids.iter().zip(&self.texts) {
            feed(id.as_bytes());
            feed(text.as_bytes());
        }
        h.finalize().iter().map(|b| format!("{b:02x}")).collect()
    }
}

#[derive(Deserialize)]
struct CorpusRow {
    id: JsonId,
    text: String,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum JsonId {
    Str(String),
    Num(serde_json::Number),
}

impl JsonId {
    fn into_string(self) -> std::result::Result<String, String> {
        match self {
            JsonId::Str(s) => Ok(s),
            JsonId::Num(n) if n.is_u64() || n.is_i64() => Ok(n.to_string()),
            JsonId::Num(n) => Err(format!("id {n} is not an integer (use a string or an integer)")),
        }
    }
}

/// Calls `f(line_number, line)` for every line of `reader` (1-based, without the line ending and
/// without a leading UTF-8 BOM), checking UTF-8 per line so errors can name the line.
fn for_each_line(
    mut reader: impl BufRead,
    name: &str,
    mut f: impl FnMut(usize, &str) -> Result<()>,
) -> Result<()> {
    let mut buf = Vec::new();
    let mut line_no = 0usize;
    loop {
        buf.clear();
        let n = reader
            .read_until(b'\n', &mut buf)
            .map_err(|e| line_error(name, line_no + 1, format!("read error: {e}")))?;
        if n == 0 {
            return Ok(());
        }
        line_no += 1;
        while matches!(buf.last(), Some(b'\n' | b'\r')) {
            buf.pop();
        }
        let bytes =
            if line_no == 1 { buf.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(&buf) } else { &buf };
        let line = std::str::from_utf8(bytes).map_err(|e| {
            line_error(
                name,
                line_no,
                format!("not valid UTF-8 (bad byte at column {})", e.valid_up_to() + 1),
            )
        })?;
        f(line_no, line)?;
    }
}

fn line_error(name: &str, line: usize, msg: impl std::fmt::Display) -> Error {
    Error::format(name, format!("line {line}: {msg}"))
}

/// A JSON error on one line: serde's own "at line 1 column N" is replaced by the file's line.
fn json_error(name: &str, line: usize, e: &serde_json::Error) -> Error {
    let msg = e.to_string();
    let msg = msg.rfind(" at line ").map_or(msg.as_str(), |i| &msg[..i]);
    line_error(name, line, format!("invalid JSON (column {}): {msg}", e.column()))
}

// ---------------------------------------------------------------------------------------------
// Embedding cache

const META_FORMAT: &str = "clipit.format";
const META_KEY: &str = "clipit.key";
const META_IDS: &str = "clipit.ids";
const FORMAT_V1: &str = "clipit-text-embeddings-v1";
const TENSOR_NAME: &str = "embeddings";

/// Embeddings read back from the cache: `embeds` is row-major `[ids.len(), dim]`.
#[derive(Debug, Clone, PartialEq)]
pub struct CachedEmbeddings {
    /// The report ids, one per row.
    pub ids: Vec<String>,
    /// Row-major `[ids.len(), dim]` values.
    pub embeds: Vec<f32>,
    /// Embedding width.
    pub dim: usize,
}

impl CachedEmbeddings {
    /// The embeddings as a `[M, D]` tensor on `device`.
    pub fn to_tensor(&self, device: &Device) -> Result<Tensor<2>> {
        matrix_from_host(&self.embeds, self.dim, device)
    }
}

/// Outcome of [`EmbeddingCache::load`]. Only `Corrupt` deserves a warning to the user.
#[derive(Debug, Clone, PartialEq)]
pub enum CacheLookup {
    /// A valid cache for this key.
    Hit(CachedEmbeddings),
    /// No cache file.
    Missing,
    /// A valid cache for another key (another model or corpus): ignore it.
    Stale,
    /// Unreadable or invalid: treated as a miss; the string says what is wrong, with the file.
    Corrupt(String),
}

impl CacheLookup {
    /// The cached embeddings on a hit.
    pub fn hit(self) -> Option<CachedEmbeddings> {
        match self {
            CacheLookup::Hit(c) => Some(c),
            _ => None,
        }
    }

    /// A warning to show the user, for a corrupt cache.
    pub fn warning(&self) -> Option<&str> {
        match self {
            CacheLookup::Corrupt(w) => Some(w),
            _ => None,
        }
    }
}

/// Text-embedding cache in safetensors: tensor `embeddings` `[M, D]` f32, with metadata holding
/// the key ([`Corpus::hash`]) and the JSON list of the M ids.
#[derive(Debug, Clone, Copy)]
pub struct EmbeddingCache;

impl EmbeddingCache {
    /// Serialises a cache to safetensors bytes. `embeds` is row-major `[ids.len(), dim]`.
    pub fn encode(key: &str, ids: &[String], embeds: &[f32], dim: usize) -> Result<Vec<u8>> {
        if ids.is_empty() || dim == 0 || embeds.len() != ids.len() * dim {
            return Err(Error::msg(format!(
                "embedding cache: {} values do not form {} rows of width {dim}",
                embeds.len(),
                ids.len()
            )));
        }
        let bytes: Vec<u8> = embeds.iter().flat_map(|v| v.to_le_bytes()).collect();
        let view = safetensors::tensor::TensorView::new(
            safetensors::Dtype::F32,
            vec![ids.len(), dim],
            &bytes,
        )
        .map_err(|e| Error::msg(format!("embedding cache: {e}")))?;
        let ids_json =
            serde_json::to_string(ids).map_err(|e| Error::msg(format!("embedding cache: {e}")))?;
        let meta = HashMap::from([
            (META_FORMAT.to_string(), FORMAT_V1.to_string()),
            (META_KEY.to_string(), key.to_string()),
            (META_IDS.to_string(), ids_json),
        ]);
        safetensors::serialize([(TENSOR_NAME, view)], Some(meta))
            .map_err(|e| Error::msg(format!("embedding cache: {e}")))
    }

    /// Reads a cache from bytes (`name` names it in warnings). Never fails: see [`CacheLookup`].
    pub fn decode(bytes: &[u8], key: &str, name: &str) -> CacheLookup {
        match decode_checked(bytes, key) {
            Ok(Some(c)) => CacheLookup::Hit(c),
            Ok(None) => CacheLookup::Stale,
            Err(msg) => {
                CacheLookup::Corrupt(format!("{name}: ignoring the embedding cache: {msg}"))
            }
        }
    }

    /// Writes a cache file atomically, creating its folder if needed.
    pub fn save(
        path: impl AsRef<Path>,
        key: &str,
        ids: &[String],
        embeds: &[f32],
        dim: usize,
    ) -> Result<()> {
        let path = path.as_ref();
        let bytes =
            Self::encode(key, ids, embeds, dim).map_err(|e| Error::format(path.display(), e))?;
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
        }
        write_atomic(path, &bytes)
    }

    /// Loads a cache file if it exists, is valid and was saved with `key`.
    pub fn load(path: impl AsRef<Path>, key: &str) -> CacheLookup {
        let path = path.as_ref();
        match std::fs::read(path) {
            Ok(bytes) => Self::decode(&bytes, key, &path.display().to_string()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => CacheLookup::Missing,
            Err(e) => CacheLookup::Corrupt(format!(
                "{}: cannot read the embedding cache: {e}",
                path.display()
            )),
        }
    }
}

/// `Ok(None)` for a valid file with another key; `Err` says what is invalid.
fn decode_checked(
    bytes: &[u8],
    key: &str,
) -> std::result::Result<Option<CachedEmbeddings>, String> {
    let st = safetensors::SafeTensors::deserialize(bytes)
        .map_err(|e| format!("not a safetensors file ({e})"))?;
    let (_, header) = safetensors::SafeTensors::read_metadata(bytes).map_err(|e| e.to_string())?;
    let meta = header.metadata().as_ref().ok_or("no metadata")?;
    let get = |k: &str| meta.get(k).ok_or_else(|| format!("metadata '{k}' missing"));
    if get(META_FORMAT)? != FORMAT_V1 {
        return Err(format!("unknown format '{}' (expected {FORMAT_V1})", get(META_FORMAT)?));
    }
    if get(META_KEY)? != key {
        return Ok(None);
    }
    let ids: Vec<String> =
        serde_json::from_str(get(META_IDS)?).map_err(|e| format!("bad id list: {e}"))?;
    let t = st.tensor(TENSOR_NAME).map_err(|e| format!("tensor '{TENSOR_NAME}': {e}"))?;
    if t.dtype() != safetensors::Dtype::F32 {
        return Err(format!("tensor '{TENSOR_NAME}' is {:?}, expected F32", t.dtype()));
    }
    let &[m, dim] = t.shape() else {
        return Err(format!("tensor '{TENSOR_NAME}' has shape {:?}, expected [M, D]", t.shape()));
    };
    if m != ids.len() || dim == 0 {
        return Err(format!("tensor shape [{m}, {dim}] does not match {} ids", ids.len()));
    }
    let embeds =
        t.data().chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect();
    Ok(Some(CachedEmbeddings { ids, embeds, dim }))
}

/// Where the cache for `key` lives in `cache_dir` (`text-embeddings-<key>.safetensors`; characters
/// other than ASCII letters, digits, `-` and `_` in the key become `_`).
pub fn cache_path(cache_dir: impl AsRef<Path>, key: &str) -> PathBuf {
    let safe: String = key
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() || c == '-' || c == '_' { c } else { '_' })
        .collect();
    cache_dir.as_ref().join(format!("text-embeddings-{safe}.safetensors"))
}

// ---------------------------------------------------------------------------------------------
// Similarity and top-k

/// Divides every row by its L2 norm (clamped at 1e-12, like PyTorch's `F.normalize`).
pub fn l2_normalize(x: Tensor<2>) -> Tensor<2> {
    let norm = x.clone().powi_scalar(2).sum_dim(1).sqrt().clamp_min(1e-12);
    x.div(norm)
}

/// Cosine similarity of every row of `a` `[N, D]` with every row of `b` `[M, D]`: `[N, M]`.
///
/// For a large image set, call it on batches of images: the result is N×M floats.
pub fn cosine_similarity(a: Tensor<2>, b: Tensor<2>) -> Result<Tensor<2>> {
    let ([n, da], [m, db]) = (a.dims(), b.dims());
    if da != db {
        return Err(Error::msg(format!(
            "cannot compare embeddings of width {da} ({n} rows) with embeddings of width {db} ({m} rows)"
        )));
    }
    Ok(l2_normalize(a).matmul(l2_normalize(b).transpose()))
}

/// A `[values.len() / dim, dim]` tensor on `device` from row-major values.
pub fn matrix_from_host(values: &[f32], dim: usize, device: &Device) -> Result<Tensor<2>> {
    if dim == 0 || values.is_empty() || !values.len().is_multiple_of(dim) {
        return Err(Error::msg(format!("{} values do not form rows of width {dim}", values.len())));
    }
    Ok(Tensor::from_data(TensorData::new(values.to_vec(), [values.len() / dim, dim]), device))
}

/// Reads a matrix back to the host as row-major f32 with its `[rows, cols]` (native only: a
/// synchronous read; use [`matrix_to_host_async`] in the browser).
pub fn matrix_to_host(t: Tensor<2>) -> Result<(Vec<f32>, [usize; 2])> {
    let dims = t.dims();
    let data = t
        .try_into_data()
        .map_err(|e| Error::msg(format!("reading a tensor from the device: {e}")))?;
    Ok((data_to_f32(data)?, dims))
}

/// Async [`matrix_to_host`], the only kind of read allowed in wasm.
pub async fn matrix_to_host_async(t: Tensor<2>) -> Result<(Vec<f32>, [usize; 2])> {
    let dims = t.dims();
    let data = t
        .into_data_async()
        .await
        .map_err(|e| Error::msg(format!("reading a tensor from the device: {e}")))?;
    Ok((data_to_f32(data)?, dims))
}

fn data_to_f32(data: TensorData) -> Result<Vec<f32>> {
    data.try_into_vec_as::<f32>()
        .map_err(|e| Error::msg(format!("tensor data is not convertible to f32: {e:?}")))
}

/// The `k` best texts of every image from a row-major `[N, n_texts]` score matrix: `(text index,
/// score)` by descending score, ties broken by the lower index; NaN scores rank last. `k` larger
/// than `n_texts` is clamped.
pub fn top_k_from_scores(
    scores: &[f32],
    n_texts: usize,
    k: usize,
) -> Result<Vec<Vec<(usize, f32)>>> {
    if n_texts == 0 || !scores.len().is_multiple_of(n_texts) {
        return Err(Error::msg(format!(
            "{} scores do not form rows of {n_texts} texts",
            scores.len()
        )));
    }
    if k == 0 {
        return Err(Error::msg("top-k: k must be at least 1"));
    }
    let k = k.min(n_texts);
    let key = |s: f32| if s.is_nan() { f32::NEG_INFINITY } else { s };
    let order =
        |a: &(usize, f32), b: &(usize, f32)| key(b.1).total_cmp(&key(a.1)).then(a.0.cmp(&b.0));
    Ok(scores
        .chunks_exact(n_texts)
        .map(|row| {
            let mut idx: Vec<(usize, f32)> = row.iter().copied().enumerate().collect();
            if k < idx.len() {
                idx.select_nth_unstable_by(k - 1, order);
                idx.truncate(k);
            }
            idx.sort_unstable_by(order);
            idx
        })
        .collect())
}

/// Cosine top-k of each image embedding `[N, D]` over text embeddings `[M, D]` (native: a
/// synchronous read). See [`top_k_from_scores`] for the order.
pub fn top_k(images: Tensor<2>, texts: Tensor<2>, k: usize) -> Result<Vec<Vec<(usize, f32)>>> {
    let (scores, [_, m]) = matrix_to_host(cosine_similarity(images, texts)?)?;
    top_k_from_scores(&scores, m, k)
}

/// Async [`top_k`] for the browser.
pub async fn top_k_async(
    images: Tensor<2>,
    texts: Tensor<2>,
    k: usize,
) -> Result<Vec<Vec<(usize, f32)>>> {
    let (scores, [_, m]) = matrix_to_host_async(cosine_similarity(images, texts)?).await?;
    top_k_from_scores(&scores, m, k)
}

// ---------------------------------------------------------------------------------------------
// Pseudo-pairs

/// One retrieved report for one image.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PseudoPair {
    /// The image (its path or name, as the caller chose).
    pub image: String,
    /// The report's id in the [`Corpus`].
    pub report_id: String,
    /// Cosine similarity.
    pub score: f32,
    /// 1 for the best report of this image, 2 for the next, ...
    pub rank: usize,
}

/// Turns top-k results into pairs: `hits[i]` belongs to `images[i]`; indices point into `report_ids`.
pub fn pseudo_pairs(
    images: &[String],
    report_ids: &[String],
    hits: &[Vec<(usize, f32)>],
) -> Result<Vec<PseudoPair>> {
    if images.len() != hits.len() {
        return Err(Error::msg(format!(
            "{} images but {} rows of retrieval results",
            images.len(),
            hits.len()
        )));
    }
    let mut out = Vec::with_capacity(hits.iter().map(Vec::len).sum());
    for (image, row) in images.iter().zip(hits) {
        for (r, &(j, score)) in row.iter().enumerate() {
            let report_id = report_ids.get(j).ok_or_else(|| {
                Error::msg(format!(
                    "{image}: report index {j} out of range ({} reports)",
                    report_ids.len()
                ))
            })?;
            out.push(PseudoPair {
                image: image.clone(),
                report_id: report_id.clone(),
                score,
                rank: r + 1,
            });
        }
    }
    Ok(out)
}

/// Writes pairs as JSONL to any writer (one object per line). Non-finite scores are an error,
/// since JSON cannot hold them; `name` names the output in errors.
pub fn write_pairs(mut w: impl Write, pairs: &[PseudoPair], name: &str) -> Result<()> {
    for (i, p) in pairs.iter().enumerate() {
        if !p.score.is_finite() {
            return Err(Error::format(
                name,
                format!("pair {} ({}): score {} is not finite", i + 1, p.image, p.score),
            ));
        }
        serde_json::to_writer(&mut w, p).map_err(|e| Error::format(name, e))?;
        w.write_all(b"\n").map_err(|e| Error::format(name, e))?;
    }
    Ok(())
}

/// Writes pairs to a JSONL file atomically (streamed through [`AtomicWriter`]).
pub fn write_pairs_jsonl(path: impl AsRef<Path>, pairs: &[PseudoPair]) -> Result<()> {
    let path = path.as_ref();
    let mut w = AtomicWriter::create(path)?;
    write_pairs(&mut w, pairs, &path.display().to_string())?;
    w.finish()
}

/// Parses pairs from JSONL (blank lines skipped); errors name `name` and the line.
pub fn parse_pairs(reader: impl BufRead, name: &str) -> Result<Vec<PseudoPair>> {
    let mut out = Vec::new();
    for_each_line(reader, name, |line_no, line| {
        let line = line.trim();
        if line.is_empty() {
            return Ok(());
        }
        let p: PseudoPair =
            serde_json::from_str(line).map_err(|e| json_error(name, line_no, &e))?;
        if p.rank == 0 {
            return Err(line_error(name, line_no, "rank must start at 1"));
        }
        out.push(p);
        Ok(())
    })?;
    Ok(out)
}

/// Reads a JSONL file written by [`write_pairs_jsonl`].
pub fn read_pairs_jsonl(path: impl AsRef<Path>) -> Result<Vec<PseudoPair>> {
    let path = path.as_ref();
    let file = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
    parse_pairs(BufReader::new(file), &path.display().to_string())
}
