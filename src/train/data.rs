//! Labelled training data: [`Dataset`] (from an `ImageFolder` tree or a CSV manifest), its
//! pairing with retrieved reports ([`attach_pairs`]) and the streaming [`BatchLoader`].
//!
//! Manifests are CSV files with a header naming the columns (any order, case-insensitive):
//! `path,label[,split][,group]` (`file` and `class` also name the first two, as the page's
//! labels CSV has them). `path` is relative to the manifest's folder (or absolute),
//! `label` is a class name, `split` is `train`, `val` (also `valid`, `validation`) or `test`, and
//! `group` ties samples that must stay on one side of a split (a source image, a patient). Fields
//! may be quoted (`"a,b.png"`, `""` for a quote); other columns are ignored. Classes are sorted by
//! name like torchvision's `ImageFolder`, or numerically when every label is an integer.

mod loader;

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};

pub use loader::{prepare_bytes, prepare_image, Batch, BatchLoader, Epoch, LoaderConfig, Skipped};

use crate::data::ImageFolder;
use crate::retrieval::PseudoPair;
use crate::{Error, Result};

/// One labelled image.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sample {
    /// The image file.
    pub path: PathBuf,
    /// Class index into [`Dataset::classes`].
    pub label: usize,
    /// Samples sharing a group are kept together by [`super::split::group_split`].
    pub group: Option<String>,
}

/// Labelled images with their class names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Dataset {
    /// Class names; a sample's label indexes this list.
    pub classes: Vec<String>,
    /// The samples, in a stable order (indices into this list identify samples everywhere).
    pub samples: Vec<Sample>,
}

impl Dataset {
    /// A dataset from its parts. Errors: fewer than two classes ("needs at least two classes"),
    /// no samples, or a label out of range.
    pub fn new(classes: Vec<String>, samples: Vec<Sample>) -> Result<Self> {
        if classes.len() < 2 {
            return Err(Error::msg(format!(
                "a classification dataset needs at least two classes, found {} ({})",
                classes.len(),
                classes.join(", ")
            )));
        }
        if samples.is_empty() {
            return Err(Error::msg("the dataset has no images"));
        }
        if let Some(s) = samples.iter().find(|s| s.label >= classes.len()) {
            return Err(Error::msg(format!(
                "{}: label {} out of range ({} classes)",
                s.path.display(),
                s.label,
                classes.len()
            )));
        }
        Ok(Self { classes, samples })
    }

    /// Scans `dir/<class>/**/<image>` (see [`ImageFolder::scan`]); samples have no group.
    pub fn from_image_folder(dir: impl AsRef<Path>) -> Result<Self> {
        let dir = dir.as_ref();
        Self::from_folder(ImageFolder::scan(dir)?).map_err(|e| Error::format(dir.display(), e))
    }

    /// Converts a scanned [`ImageFolder`] (its notes are dropped; read them first if needed).
    pub fn from_folder(folder: ImageFolder) -> Result<Self> {
        let samples = folder
            .items
            .into_iter()
            .map(|(path, label)| Sample { path, label, group: None })
            .collect();
        Self::new(folder.classes, samples)
    }

    /// Number of samples.
    pub fn len(&self) -> usize {
        self.samples.len()
    }

    /// Whether there are no samples (never true for a dataset built by [`Dataset::new`]).
    pub fn is_empty(&self) -> bool {
        self.samples.is_empty()
    }

    /// Every sample's label, in order.
    pub fn labels(&self) -> Vec<usize> {
        self.samples.iter().map(|s| s.label).collect()
    }

    /// Every sample's group, in order.
    pub fn groups(&self) -> Vec<Option<String>> {
        self.samples.iter().map(|s| s.group.clone()).collect()
    }

    /// How many samples each class has, in class order.
    pub fn class_counts(&self) -> Vec<usize> {
        let mut counts = vec![0; self.classes.len()];
        for s in &self.samples {
            if let Some(c) = counts.get_mut(s.label) {
                *c += 1;
            }
        }
        counts
    }

    /// The samples at `indices` (in that order), with the same classes. Errors on an index out of
    /// range or an empty selection.
    pub fn subset(&self, indices: &[usize]) -> Result<Self> {
        let mut samples = Vec::with_capacity(indices.len());
        for &i in indices {
            let s = self.samples.get(i).ok_or_else(|| {
                Error::msg(format!(
                    "sample index {i} out of range ({} samples)",
                    self.samples.len()
                ))
            })?;
            samples.push(s.clone());
        }
        Self::new(self.classes.clone(), samples)
    }

    /// The same samples relabelled for the class order `classes` (e.g. a trained head's order).
    /// Errors if one of this dataset's classes with samples is missing from `classes`.
    pub fn with_class_order(&self, classes: &[String]) -> Result<Self> {
        let pos: HashMap<&str, usize> =
            classes.iter().enumerate().map(|(i, c)| (c.as_str(), i)).collect();
        let mut samples = self.samples.clone();
        for s in &mut samples {
            let Some(name) = self.classes.get(s.label) else {
                return Err(Error::msg(format!(
                    "{}: label {} out of range",
                    s.path.display(),
                    s.label
                )));
            };
            s.label = *pos.get(name.as_str()).ok_or_else(|| {
                Error::msg(format!(
                    "class '{name}' is not in the given class list ({})",
                    classes.join(", ")
                ))
            })?;
        }
        Self::new(classes.to_vec(), samples)
    }
}

/// The datasets of a manifest, one per split that has rows. Without a `split` column every row
/// is in `train`. All share `classes`, taken from every row of the manifest.
#[derive(Debug, Clone, PartialEq)]
pub struct ManifestSplits {
    /// Class names shared by the splits.
    pub classes: Vec<String>,
    /// Rows with `split = train` (or all rows when there is no `split` column).
    pub train: Option<Dataset>,
    /// Rows with `split = val`.
    pub val: Option<Dataset>,
    /// Rows with `split = test`.
    pub test: Option<Dataset>,
}

/// Reads a CSV manifest (see the module docs); relative paths are resolved against the
/// manifest's folder. Errors name the file and line; listed images that do not exist are an
/// error giving their count and the first few.
pub fn read_manifest(path: impl AsRef<Path>) -> Result<ManifestSplits> {
    let path = path.as_ref();
    let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    let name = path.display().to_string();
    let text = std::str::from_utf8(&bytes)
        .map_err(|e| Error::format(&name, format!("not UTF-8 text: {e}")))?;
    let base = path.parent().unwrap_or(Path::new(""));
    let splits = parse_manifest(text, &name, base)?;
    let all = [&splits.train, &splits.val, &splits.test];
    let mut missing = Vec::new();
    let mut total = 0;
    for d in all.into_iter().flatten() {
        total += d.len();
        missing.extend(
            d.samples.iter().filter(|s| !s.path.is_file()).map(|s| s.path.display().to_string()),
        );
    }
    if !missing.is_empty() {
        return Err(Error::format(
            &name,
            format!(
                "{} of {total} listed images do not exist, e.g. {}",
                missing.len(),
                first_few(&missing)
            ),
        ));
    }
    Ok(splits)
}

fn first_few(items: &[String]) -> String {
    let mut s = items.iter().take(3).cloned().collect::<Vec<_>>().join(", ");
    if items.len() > 3 {
        s.push_str(", ...");
    }
    s
}

/// Which split a manifest row belongs to.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Split {
    Train,
    Val,
    Test,
}

/// Parses manifest text (no file access: paths are joined to `base` but not checked). `name`
/// names the manifest in errors. See [`read_manifest`].
pub fn parse_manifest(text: &str, name: &str, base: &Path) -> Result<ManifestSplits> {
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    let mut records = parse_csv(text, name)?.into_iter();
    let Some((hline, header)) = records.next() else {
        return Err(Error::format(
            name,
            "empty manifest (expected a header such as path,label,split)",
        ));
    };
    let mut cols: [Option<usize>; 4] = [None; 4];
    const NAMES: [&[&str]; 4] = [&["path", "file"], &["label", "class"], &["split"], &["group"]];
    for (i, h) in header.iter().enumerate() {
        let h = h.trim().to_ascii_lowercase();
        if let Some(k) = NAMES.iter().position(|n| n.contains(&h.as_str())) {
            if cols[k].is_some() {
                return Err(Error::format(
                    name,
                    format!("line {hline}: column '{h}' appears twice"),
                ));
            }
            cols[k] = Some(i);
        }
    }
    let (Some(c_path), Some(c_label)) = (cols[0], cols[1]) else {
        return Err(Error::format(
            name,
            format!(
                "line {hline}: the header must name 'path' (or 'file') and 'label' (or 'class') columns, found: {}",
                header.join(",")
            ),
        ));
    };
    let mut rows = Vec::new();
    for (line, fields) in records {
        let err = |m: String| Error::format(name, format!("line {line}: {m}"));
        if fields.len() != header.len() {
            return Err(err(format!(
                "{} fields, but the header has {}",
                fields.len(),
                header.len()
            )));
        }
        let path = fields[c_path].as_str();
        if path.is_empty() {
            return Err(err("empty path".into()));
        }
        let label = fields[c_label].trim();
        if label.is_empty() {
            return Err(err("empty label".into()));
        }
        let split = match cols[2].map(|c| fields[c].trim().to_ascii_lowercase()) {
            None => Split::Train,
            Some(s) => match s.as_str() {
                "train" => Split::Train,
                "val" | "valid" | "validation" => Split::Val,
                "test" => Split::Test,
                _ => return Err(err(format!("split '{s}' is not one of train, val, test"))),
            },
        };
        let group = cols[3].map(|c| fields[c].trim().to_string()).filter(|g| !g.is_empty());
        rows.push((base.join(path), label.to_string(), split, group));
    }
    if rows.is_empty() {
        return Err(Error::format(name, "the manifest lists no images"));
    }
    let mut classes: Vec<String> =
        rows.iter().map(|r| r.1.clone()).collect::<HashSet<_>>().into_iter().collect();
    if classes.iter().all(|c| c.parse::<u64>().is_ok()) {
        classes.sort_by_key(|c| c.parse::<u64>().unwrap_or(u64::MAX));
    } else {
        classes.sort();
    }
    if classes.len() < 2 {
        return Err(Error::format(
            name,
            format!(
                "a classification dataset needs at least two classes, found only '{}'",
                classes.join(", ")
            ),
        ));
    }
    let index: HashMap<&str, usize> =
        classes.iter().enumerate().map(|(i, c)| (c.as_str(), i)).collect();
    let mut parts: [Vec<Sample>; 3] = Default::default();
    for (path, label, split, group) in rows {
        let sample = Sample { path, label: index[label.as_str()], group };
        parts[split as usize].push(sample);
    }
    let [train, val, test] = parts.map(|samples| {
        (!samples.is_empty()).then(|| Dataset { classes: classes.clone(), samples })
    });
    Ok(ManifestSplits { classes, train, val, test })
}

/// Minimal RFC 4180 reader: records of fields, quoted fields may hold commas, quotes (`""`) and
/// line breaks. Unquoted fields are trimmed; blank lines are skipped. Returns each record with
/// its 1-based starting line.
fn parse_csv(text: &str, name: &str) -> Result<Vec<(usize, Vec<String>)>> {
    let mut out = Vec::new();
    let mut chars = text.chars().peekable();
    let mut line = 1usize;
    while chars.peek().is_some() {
        let start = line;
        let mut fields = Vec::new();
        let mut field = String::new();
        let mut quoted = false;
        loop {
            match chars.next() {
                None => {
                    fields.push(finish(field, quoted));
                    break;
                }
                Some('"') if field.trim().is_empty() && !quoted => {
                    quoted = true;
                    field.clear();
                    loop {
                        match chars.next() {
                            None => {
                                return Err(Error::format(
                                    name,
                                    format!("line {start}: unterminated quoted field"),
                                ))
                            }
                            Some('"') if chars.peek() == Some(&'"') => {
                                chars.next();
                                field.push('"');
                            }
                            Some('"') => break,
                            Some(c) => {
                                if c == '\n' {
                                    line += 1;
                                }
                                field.push(c);
                            }
                        }
                    }
                    // Only spaces may follow the closing quote.
                    while chars.peek().is_some_and(|&c| c == ' ' || c == '\t') {
                        chars.next();
                    }
                    if !matches!(chars.peek(), None | Some(',') | Some('\n') | Some('\r')) {
                        return Err(Error::format(
                            name,
                            format!("line {line}: text after a closing quote"),
                        ));
                    }
                }
                Some(',') => {
                    fields.push(finish(std::mem::take(&mut field), std::mem::take(&mut quoted)))
                }
                Some('\r') if chars.peek() == Some(&'\n') => {}
                Some('\n') => {
                    line += 1;
                    fields.push(finish(field, quoted));
                    break;
                }
                Some(c) => field.push(c),
            }
        }
        if !(fields.len() == 1 && fields[0].is_empty()) {
            out.push((start, fields));
        }
    }
    Ok(out)
}

fn finish(field: String, quoted: bool) -> String {
    if quoted {
        field
    } else {
        field.trim().to_string()
    }
}

/// Maps every sample of `dataset` to the corpus index of its rank-1 report in `pairs`.
///
/// `report_ids` are the corpus ids ([`crate::retrieval::Corpus::ids`]). A pair's `image` matches a
/// sample when the strings are equal (`clipit retrieve` writes paths as given) or, failing that,
/// when both canonicalise to the same file. Errors: samples without a rank-1 pair (how many and
/// the first few), an image with two different rank-1 reports, or a report id not in the corpus.
pub fn attach_pairs(
    dataset: &Dataset,
    pairs: &[PseudoPair],
    report_ids: &[String],
) -> Result<Vec<usize>> {
    let ids: HashMap<&str, usize> =
        report_ids.iter().enumerate().rev().map(|(i, id)| (id.as_str(), i)).collect();
    let mut by_image: HashMap<&str, usize> = HashMap::new();
    for p in pairs.iter().filter(|p| p.rank == 1) {
        let j = *ids.get(p.report_id.as_str()).ok_or_else(|| {
            Error::msg(format!(
                "pseudo-pair for {} names report '{}', which is not in the corpus ({} reports)",
                p.image,
                p.report_id,
                report_ids.len()
            ))
        })?;
        if let Some(&old) = by_image.get(p.image.as_str()) {
            if old != j {
                return Err(Error::msg(format!(
                    "{} has two rank-1 pseudo-pairs ('{}' and '{}')",
                    p.image, report_ids[old], p.report_id
                )));
            }
        }
        by_image.insert(&p.image, j);
    }
    let mut out = vec![usize::MAX; dataset.samples.len()];
    let mut unmatched = Vec::new();
    for (i, s) in dataset.samples.iter().enumerate() {
        match by_image.get(s.path.to_string_lossy().as_ref()) {
            Some(&j) => out[i] = j,
            None => unmatched.push(i),
        }
    }
    if !unmatched.is_empty() {
        // Fall back to canonical paths (relative vs absolute, `./`, links).
        let canon: HashMap<PathBuf, usize> = by_image
            .iter()
            .filter_map(|(img, &j)| Path::new(img).canonicalize().ok().map(|c| (c, j)))
            .collect();
        let mut missing = Vec::new();
        for i in unmatched {
            let path = &dataset.samples[i].path;
            match path.canonicalize().ok().and_then(|c| canon.get(&c)) {
                Some(&j) => out[i] = j,
                None => missing.push(path.display().to_string()),
            }
        }
        if !missing.is_empty() {
            return Err(Error::msg(format!(
                "the pseudo-pairs miss {} of {} images (no rank-1 pair), e.g. {}; run `clipit retrieve` on the same images",
                missing.len(),
                dataset.samples.len(),
                first_few(&missing)
            )));
        }
    }
    Ok(out)
}
