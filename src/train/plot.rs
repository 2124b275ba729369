//! A dependency-free SVG chart of a run's training loss and validation balanced accuracy.

use std::path::Path;

use crate::{Error, Result};

const W: f64 = 640.0;
const H: f64 = 320.0;
const PAD: f64 = 40.0;

/// Reads `metrics.jsonl` and draws the loss per step (left axis) and the validation balanced
/// accuracy (right axis, 0 to 1) as an SVG document.
pub fn curves_svg(metrics: &Path) -> Result<String> {
    let text = std::fs::read_to_string(metrics).map_err(|e| Error::io(metrics, e))?;
    let (mut loss, mut bacc) = (Vec::new(), Vec::new());
    for line in text.lines() {
        let Ok(v) = serde_json::from_str::<serde_json::Value>(line) else { continue };
        let step = v["step"].as_f64().unwrap_or(0.0);
        if let Some(b) = v["val_balanced_accuracy"].as_f64() {
            bacc.push((step, b));
        } else if let Some(l) = v["loss"].as_f64() {
            loss.push((step, l));
        }
    }
    Ok(render(&loss, &bacc))
}

fn polyline(points: &[(f64, f64)], x_max: f64, y_min: f64, y_max: f64, color: &str) -> String {
    let span = (y_max - y_min).max(1e-12);
    let pts: Vec<String> = points
        .iter()
        .map(|(x, y)| {
            let px = PAD + x / x_max.max(1.0) * (W - 2.0 * PAD);
            let py = H - PAD - (y - y_min) / span * (H - 2.0 * PAD);
            format!("{px:.1},{py:.1}")
        })
        .collect();
    format!(
        r#"<polyline fill="none" stroke="{color}" stroke-width="1.5" points="{}"/>"#,
        pts.join(" ")
    )
}

fn render(loss: &[(f64, f64)], bacc: &[(f64, f64)]) -> String {
    let x_max = loss.iter().chain(bacc).map(|p| p.0).fold(1.0, f64::max);
    let l_max = loss.iter().map(|p| p.1).fold(f64::MIN, f64::max).max(1e-6);
    let l_min = loss.iter().map(|p| p.1).fold(f64::MAX, f64::min).min(l_max);
    let mut svg = format!(
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H}" font-family="sans-serif" font-size="12">
<rect width="100%" height="100%" fill="white"/>
<line x1="{PAD}" y1="{y0}" x2="{x1}" y2="{y0}" stroke="black"/><line x1="{PAD}" y1="{PAD}" x2="{PAD}" y2="{y0}" stroke="black"/>
<text x="{PAD}" y="20" fill="steelblue">training loss ({l_min:.3} to {l_max:.3})</text>
<text x="{xr}" y="20" fill="darkorange" text-anchor="end">validation balanced accuracy (0 to 1)</text>
<text x="{x1}" y="{yl}" text-anchor="end">step {x_max}</text>
"#,
        y0 = H - PAD,
        x1 = W - PAD,
        xr = W - PAD,
        yl = H - 10.0,
    );
    if !loss.is_empty() {
        svg.push_str(&polyline(loss, x_max, l_min, l_max, "steelblue"));
    }
    if !bacc.is_empty() {
        svg.push_str(&polyline(bacc, x_max, 0.0, 1.0, "darkorange"));
    }
    svg.push_str("\n</svg>\n");
    svg
}
