//! Zero-shot classification with a CLIP model, CONCH/CLIP style: each class is described by
//! several prompts (templates filled with the class name); their text embeddings are normalised,
//! averaged and normalised again into one class embedding; an image's logits are
//! `exp(logit_scale) * cos(image, class)`.

use std::path::Path;

use burn::tensor::activation::softmax;
use burn::tensor::Tensor;

use crate::retrieval::{cosine_similarity, l2_normalize};
use crate::{Error, Result};

/// The placeholder that [`prompts`] replaces with the class name.
pub const PLACEHOLDER: &str = "{}";

/// Alternative placeholder accepted by [`parse_templates`] (as in CONCH-style prompt files).
pub const PLACEHOLDER_ALT: &str = "CLASSNAME";

/// Built-in histology prompt templates (written for this crate).
pub const DEFAULT_TEMPLATES: &[&str] = &[
    "an H&E image of {}.",
    "a histopathology slide showing {}.",
    "an H&E stained tissue section of {}.",
    "a microscopy image of {} tissue.",
    "a pathology image showing {}.",
    "histology of {}.",
    "a tile from a whole-slide image showing {}.",
    "an image of {} under the microscope.",
];

/// The default templates as owned strings.
pub fn default_templates() -> Vec<String> {
    DEFAULT_TEMPLATES.iter().map(|s| s.to_string()).collect()
}

/// Parses templates, one per line; blank lines and lines starting with `#` are skipped. Each must
/// contain `{}` (or `CLASSNAME`, converted to `{}`). `name` names the input in errors.
pub fn parse_templates(text: &str, name: &str) -> Result<Vec<String>> {
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.trim().trim_start_matches('\u{feff}');
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let t = line.replace(PLACEHOLDER_ALT, PLACEHOLDER);
        if !t.contains(PLACEHOLDER) {
            return Err(Error::format(
                name,
                format!(
                    "line {}: template \"{line}\" has no {{}} placeholder for the class name",
                    i + 1
                ),
            ));
        }
        out.push(t);
    }
    if out.is_empty() {
        return Err(Error::format(name, "no templates (the file is empty or only has comments)"));
    }
    Ok(out)
}

/// Reads a template file; see [`parse_templates`].
pub fn read_templates(path: impl AsRef<Path>) -> Result<Vec<String>> {
    let path = path.as_ref();
    let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    let text = std::str::from_utf8(&bytes).map_err(|e| {
        let line = bytes[..e.valid_up_to()].iter().filter(|&&b| b == b'\n').count() + 1;
        Error::format(path.display(), format!("line {line}: not valid UTF-8"))
    })?;
    parse_templates(text, &path.display().to_string())
}

/// The prompts of every class: `out[c][t]` is template `t` with every `{}` replaced by `classes[c]`.
pub fn prompts(classes: &[String], templates: &[String]) -> Vec<Vec<String>> {
    classes.iter().map(|c| templates.iter().map(|t| t.replace(PLACEHOLDER, c)).collect()).collect()
}

/// One embedding per class from its prompt embeddings (`per_class[c]` is `[T_c, D]`): normalise
/// each prompt embedding, average them, normalise again. Returns `[C, D]`.
pub fn class_embeddings(per_class: Vec<Tensor<2>>) -> Result<Tensor<2>> {
    let Some(first) = per_class.first() else {
        return Err(Error::msg("zero-shot: no classes"));
    };
    let dim = first.dims()[1];
    let mut rows = Vec::with_capacity(per_class.len());
    for (c, t) in per_class.into_iter().enumerate() {
        let [n, d] = t.dims();
        if n == 0 || d != dim {
            return Err(Error::msg(format!(
                "zero-shot: class {c} has prompt embeddings of shape [{n}, {d}], expected [>0, {dim}]"
            )));
        }
        rows.push(l2_normalize(l2_normalize(t).mean_dim(0)));
    }
    Ok(Tensor::cat(rows, 0))
}

/// Zero-shot logits `[N, C]` = `exp(logit_scale_raw) * cos(image, class)`. `logit_scale_raw` is the
/// model's stored (log) parameter, e.g. ln(100) ≈ 4.605; it is not clamped.
pub fn zero_shot_logits(
    image_embeds: Tensor<2>,
    class_embeds: Tensor<2>,
    logit_scale_raw: f32,
) -> Result<Tensor<2>> {
    if !logit_scale_raw.is_finite() {
        return Err(Error::msg(format!("zero-shot: logit scale {logit_scale_raw} is not finite")));
    }
    Ok(cosine_similarity(image_embeds, class_embeds)?.mul_scalar(logit_scale_raw.exp()))
}

/// Class probabilities `[N, C]`: the softmax of [`zero_shot_logits`] over classes.
pub fn zero_shot_probs(
    image_embeds: Tensor<2>,
    class_embeds: Tensor<2>,
    logit_scale_raw: f32,
) -> Result<Tensor<2>> {
    Ok(softmax(zero_shot_logits(image_embeds, class_embeds, logit_scale_raw)?, 1))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::retrieval::{matrix_from_host, matrix_to_host};
    use burn::tensor::Device;

    fn close(a: &[f32], b: &[f32]) {
        assert_eq!(a.len(), b.len());
        for (x, y) in a.iter().zip(b) {
            assert!((x - y).abs() < 1e-5, "{a:?} vs {b:?}");
        }
    }

    #[test]
    fn templates_and_prompts() {
        let t =
            parse_templates("# comment\n\nan image of CLASSNAME.\n{} tissue\n", "t.txt").unwrap();
        assert_eq!(t, ["an image of {}.", "{} tissue"]);
        let p = prompts(&["tumor".into(), "normal".into()], &t);
        assert_eq!(p[1], ["an image of normal.", "normal tissue"]);
        let e = parse_templates("fine {}\nno placeholder\n", "t.txt").unwrap_err().to_string();
        assert!(e.starts_with("t.txt: line 2:"), "{e}");
        assert!(DEFAULT_TEMPLATES.iter().all(|t| t.contains(PLACEHOLDER)));
    }

    #[test]
    fn class_embeddings_and_logits() {
        let dev = Device::flex();
        // class 0: two prompts along x (different lengths); class 1: along y and x+y.
        let c0 = matrix_from_host(&[2.0, 0.0, 5.0, 0.0], 2, &dev).unwrap();
        let c1 = matrix_from_host(&[0.0, 1.0, 1.0, 1.0], 2, &dev).unwrap();
        let classes = class_embeddings(vec![c0, c1]).unwrap();
        let (v, dims) = matrix_to_host(classes.clone()).unwrap();
        assert_eq!(dims, [2, 2]);
        // mean of (0,1) and (0.7071,0.7071) = (0.35355,0.85355), normalised.
        let (a, b) = (0.353_553_4_f32, 0.853_553_4_f32);
        let n = (a * a + b * b).sqrt();
        close(&v, &[1.0, 0.0, a / n, b / n]);

        let img = matrix_from_host(&[3.0, 0.0], 2, &dev).unwrap();
        let scale = 100f32.ln();
        let (logits, _) =
            matrix_to_host(zero_shot_logits(img.clone(), classes.clone(), scale).unwrap()).unwrap();
        close(&logits, &[100.0, 100.0 * a / n]);
        let (p, _) = matrix_to_host(zero_shot_probs(img, classes, scale).unwrap()).unwrap();
        assert!((p[0] + p[1] - 1.0).abs() < 1e-5 && p[0] > p[1]);

        let bad = matrix_from_host(&[1.0, 2.0, 3.0], 3, &dev).unwrap();
        let ok = matrix_from_host(&[1.0, 2.0], 2, &dev).unwrap();
        assert!(class_embeddings(vec![ok, bad]).is_err());
        assert!(class_embeddings(vec![]).is_err());
    }
}
