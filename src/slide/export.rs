//! The map's outputs: GeoJSON in QuPath's layout, a CSV, and an overlay PNG with a legend.
//!
//! QuPath (0.4 and later) reads a GeoJSON `FeatureCollection` whose features carry, under
//! `properties`, an `objectType` (`"tile"` here), a `classification` `{name, color: [r, g, b]}`
//! and `measurements` as a map of names to numbers; coordinates are base-level pixels with the
//! origin at the top-left (File → Import objects, or drag the file onto the viewer).

use std::io::Write;
use std::path::Path;

use image::{Rgb, RgbImage};
use serde_json::json;

use super::font;
use super::reader::Overview;
use super::tiling::Tile;
use crate::fsutil::{write_atomic, AtomicWriter};
use crate::{Error, Result};

/// Class colours in order (Tableau 10), reused cyclically beyond ten classes.
pub const PALETTE: [[u8; 3]; 10] = [
    [31, 119, 180],
    [255, 127, 14],
    [44, 160, 44],
    [214, 39, 40],
    [148, 103, 189],
    [140, 86, 75],
    [227, 119, 194],
    [127, 127, 127],
    [188, 189, 34],
    [23, 190, 207],
];

/// Opacity of the class colour over the image in the overlay.
pub const OVERLAY_ALPHA: f32 = 0.45;

/// The colour of class `index`.
pub fn class_color(index: usize) -> [u8; 3] {
    PALETTE[index % PALETTE.len()]
}

/// One classified tile.
#[derive(Debug, Clone, PartialEq)]
pub struct TileRecord {
    /// Where it is.
    pub tile: Tile,
    /// Class probabilities.
    pub probs: Vec<f32>,
    /// The most probable class (the first on ties).
    pub class: usize,
    /// The most similar report, `(index in the corpus, cosine)`, when asked for.
    pub report: Option<(usize, f32)>,
}

/// The measurement name QuPath shows for a class probability.
pub fn prob_name(class: &str) -> String {
    format!("prob {class}")
}

fn geojson_feature(
    r: &TileRecord,
    classes: &[String],
    report_ids: Option<&[String]>,
) -> serde_json::Value {
    let Tile { x, y, w, h, tissue } = r.tile;
    let (x0, y0, x1, y1) = (x, y, x + w, y + h);
    let mut measurements = serde_json::Map::new();
    for (c, p) in classes.iter().zip(&r.probs) {
        measurements.insert(prob_name(c), json!(p));
    }
    measurements.insert("tissue fraction".into(), json!(tissue));
    let mut properties = json!({
        "objectType": "tile",
        "classification": { "name": classes[r.class], "color": class_color(r.class) },
    });
    if let (Some((id, score)), Some(ids)) = (r.report, report_ids) {
        measurements.insert("report score".into(), json!(score));
        properties["metadata"] = json!({ "report_id": ids[id] });
    }
    properties["measurements"] = serde_json::Value::Object(measurements);
    json!({
        "type": "Feature",
        "geometry": {
            "type": "Polygon",
            "coordinates": [[[x0, y0], [x1, y0], [x1, y1], [x0, y1], [x0, y0]]],
        },
        "properties": properties,
    })
}

/// Writes the tiles as a GeoJSON FeatureCollection to `w`, streamed feature by feature. With
/// `report_ids` (the corpus ids), each tile's best report id goes under `metadata`.
pub fn geojson_to(
    w: &mut impl Write,
    records: &[TileRecord],
    classes: &[String],
    report_ids: Option<&[String]>,
) -> std::io::Result<()> {
    w.write_all(b"{\"type\":\"FeatureCollection\",\"features\":[\n")?;
    for (i, r) in records.iter().enumerate() {
        if i > 0 {
            w.write_all(b",\n")?;
        }
        serde_json::to_writer(&mut *w, &geojson_feature(r, classes, report_ids))?;
    }
    w.write_all(b"\n]}\n")
}

/// [`geojson_to`] into a file, atomically.
pub fn write_geojson(
    path: &Path,
    records: &[TileRecord],
    classes: &[String],
    report_ids: Option<&[String]>,
) -> Result<()> {
    write_file(path, |w| geojson_to(w, records, classes, report_ids))
}

/// [`geojson_to`] as bytes (the page's download).
pub fn geojson_bytes(
    records: &[TileRecord],
    classes: &[String],
    report_ids: Option<&[String]>,
) -> Result<Vec<u8>> {
    to_bytes("GeoJSON", |w| geojson_to(w, records, classes, report_ids))
}

/// A CSV field, quoted when needed.
pub fn csv_field(s: &str) -> String {
    if s.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s.to_string()
    }
}

/// Writes `x,y,w,h,class,<one probability column per class>` (plus `report_id,report_score` with
/// `report_ids`) to `w`, one row per tile.
pub fn csv_to(
    w: &mut impl Write,
    records: &[TileRecord],
    classes: &[String],
    report_ids: Option<&[String]>,
) -> std::io::Result<()> {
    let mut header = String::from("x,y,w,h,class");
    for c in classes {
        header.push(',');
        header.push_str(&csv_field(c));
    }
    if report_ids.is_some() {
        header.push_str(",report_id,report_score");
    }
    writeln!(w, "{header}")?;
    for r in records {
        let t = r.tile;
        let mut row = format!("{},{},{},{},{}", t.x, t.y, t.w, t.h, csv_field(&classes[r.class]));
        for p in &r.probs {
            row.push_str(&format!(",{p:.6}"));
        }
        if let (Some((id, score)), Some(ids)) = (r.report, report_ids) {
            row.push_str(&format!(",{},{score:.6}", csv_field(&ids[id])));
        }
        writeln!(w, "{row}")?;
    }
    Ok(())
}

/// [`csv_to`] into a file, atomically.
pub fn write_csv(
    path: &Path,
    records: &[TileRecord],
    classes: &[String],
    report_ids: Option<&[String]>,
) -> Result<()> {
    write_file(path, |w| csv_to(w, records, classes, report_ids))
}

/// [`csv_to`] as bytes (the page's download).
pub fn csv_bytes(
    records: &[TileRecord],
    classes: &[String],
    report_ids: Option<&[String]>,
) -> Result<Vec<u8>> {
    to_bytes("CSV", |w| csv_to(w, records, classes, report_ids))
}

/// Runs `write` into `path`, atomically.
fn write_file(
    path: &Path,
    write: impl FnOnce(&mut AtomicWriter) -> std::io::Result<()>,
) -> Result<()> {
    let mut w = AtomicWriter::create(path)?;
    write(&mut w).map_err(|e| Error::io(path, e))?;
    w.finish()
}

/// Runs `write` into memory; `what` names the output in errors.
fn to_bytes(
    what: &str,
    write: impl FnOnce(&mut Vec<u8>) -> std::io::Result<()>,
) -> Result<Vec<u8>> {
    let mut out = Vec::new();
    write(&mut out).map_err(|e| Error::msg(format!("cannot write the {what}: {e}")))?;
    Ok(out)
}

/// Font scale and line height of the legend for an overlay `width` pixels wide.
fn legend_metrics(width: u32) -> (u32, u32) {
    let scale = if width >= 480 { 2 } else { 1 };
    (scale, font::HEIGHT * scale + 6 * scale)
}

/// Height of the legend band under an overlay `width` pixels wide with `classes` entries.
pub fn legend_height(width: u32, classes: usize) -> u32 {
    let (scale, line) = legend_metrics(width);
    4 * scale + line * classes as u32 + 2 * scale
}

/// The argmax class colour of every tile blended over `overview` (later tiles over earlier where
/// they overlap), with a legend band below (class colour, name and tile count). The result is as
/// wide as the overview and [`legend_height`] taller.
pub fn render_overlay(overview: &Overview, records: &[TileRecord], classes: &[String]) -> RgbImage {
    let (w, h) = overview.image.dimensions();
    let (sx, sy) = overview.scale;
    let mut label = vec![u16::MAX; w as usize * h as usize];
    for r in records {
        let t = r.tile;
        let x0 = (f64::from(t.x) / sx).round() as u32;
        let y0 = (f64::from(t.y) / sy).round() as u32;
        let x1 = ((f64::from(t.x + t.w) / sx).round() as u32).clamp(x0 + 1, w);
        let y1 = ((f64::from(t.y + t.h) / sy).round() as u32).clamp(y0 + 1, h);
        for y in y0.min(h)..y1 {
            for x in x0.min(w)..x1 {
                label[(y * w + x) as usize] = r.class as u16;
            }
        }
    }
    let lh = legend_height(w, classes.len());
    let mut out = RgbImage::from_pixel(w, h + lh, Rgb([255, 255, 255]));
    for (i, (x, y, px)) in overview.image.enumerate_pixels().enumerate() {
        let mut p = px.0;
        if label[i] != u16::MAX {
            let c = class_color(usize::from(label[i]));
            for k in 0..3 {
                p[k] = (f32::from(p[k]) * (1.0 - OVERLAY_ALPHA) + f32::from(c[k]) * OVERLAY_ALPHA)
                    .round() as u8;
            }
        }
        out.put_pixel(x, y, Rgb(p));
    }
    let (scale, line) = legend_metrics(w);
    let mut counts = vec![0usize; classes.len()];
    records.iter().for_each(|r| counts[r.class] += 1);
    for (i, name) in classes.iter().enumerate() {
        let top = h + 4 * scale + i as u32 * line;
        let side = font::HEIGHT * scale;
        for y in top..top + side {
            for x in 4 * scale..4 * scale + side {
                if x < w {
                    out.put_pixel(x, y, Rgb(class_color(i)));
                }
            }
        }
        let text = format!("{name} ({})", counts[i]);
        font::draw_text(&mut out, &text, 4 * scale + side + 4 * scale, top, scale, [0, 0, 0]);
    }
    out
}

/// `img` encoded as PNG.
pub fn png_bytes(img: &RgbImage) -> Result<Vec<u8>> {
    let mut bytes = Vec::new();
    img.write_to(&mut std::io::Cursor::new(&mut bytes), image::ImageFormat::Png)
        .map_err(|e| Error::msg(format!("cannot encode PNG: {e}")))?;
    Ok(bytes)
}

/// Encodes `img` as PNG and writes it atomically.
pub fn write_png(path: &Path, img: &RgbImage) -> Result<()> {
    let bytes = png_bytes(img).map_err(|e| Error::msg(format!("{}: {e}", path.display())))?;
    write_atomic(path, &bytes)
}
