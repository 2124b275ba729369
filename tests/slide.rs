//! Slide maps: JPEG-in-TIFF decoding against OpenSlide, the tissue mask against an independent
//! numpy implementation (tests/reference/make_slide_reference.py), `clipit map` end to end on a
//! real Aperio SVS and on a JPEG, and clear errors on bad input.

use std::path::{Path, PathBuf};

use clipit::slide::Slide;
use serde_json::Value;

mod common;
use common::{assert_fails, clipit, root, stderr};

fn svs() -> PathBuf {
    root().join("tests/data/slides/cmu_small_region.svs")
}

fn fixture(name: &str) -> PathBuf {
    root().join("tests/fixtures/slide").join(name)
}

fn reference() -> Value {
    serde_json::from_slice(&std::fs::read(fixture("reference.json")).unwrap()).unwrap()
}

/// Max and mean absolute difference of two images of the same size.
fn diff(a: &image::RgbImage, b: &image::RgbImage) -> (u8, f64) {
    assert_eq!(a.dimensions(), b.dimensions());
    let d: Vec<u8> = a.as_raw().iter().zip(b.as_raw()).map(|(x, y)| x.abs_diff(*y)).collect();
    (*d.iter().max().unwrap(), d.iter().map(|&v| f64::from(v)).sum::<f64>() / d.len() as f64)
}

#[test]
fn svs_regions_match_openslide() {
    let r = reference();
    let mut slide = Slide::open(&svs()).unwrap();
    assert_eq!(
        slide.dimensions(),
        (r["width"].as_u64().unwrap() as u32, r["height"].as_u64().unwrap() as u32)
    );
    assert!((slide.mpp().unwrap() - r["mpp"].as_f64().unwrap()).abs() < 1e-9);
    for (name, b) in r["regions"].as_object().unwrap() {
        let b: Vec<u32> =
            b.as_array().unwrap().iter().map(|v| v.as_u64().unwrap() as u32).collect();
        let ours = slide.read_region(b[0], b[1], b[2], b[3]).unwrap();
        let theirs = image::open(fixture(name)).unwrap().to_rgb8();
        let (max, mean) = diff(&ours, &theirs);
        eprintln!("{name}: max diff {max}, mean {mean:.3} levels vs OpenSlide");
        // zune-jpeg rounds its IDCT and upsampling slightly differently from libjpeg-turbo.
        assert!(max <= 3 && mean < 0.1, "{name}: max {max}, mean {mean}");
    }
    // The scanner's thumbnail: a pyramid level of JPEG strips.
    assert_eq!(slide.level_dimensions(), vec![(2220, 2967), (574, 768)]);
    let ours = slide.level_image(1).unwrap();
    let (max, mean) = diff(&ours, &image::open(fixture("thumbnail.png")).unwrap().to_rgb8());
    eprintln!("thumbnail: max diff {max}, mean {mean:.3} levels vs OpenSlide");
    assert!(max <= 3 && mean < 0.1, "thumbnail: max {max}, mean {mean}");
    assert!(slide.level_image(0).is_err() && slide.level_image(2).is_err());
    // A stride-free read of the same pixels agrees with itself across the chunk cache.
    let a = slide.read_region(1000, 1100, 300, 280).unwrap();
    let b = slide.read_region(1100, 1200, 100, 100).unwrap();
    assert_eq!(image::imageops::crop_imm(&a, 100, 100, 100, 100).to_image(), b);
    assert!(slide.read_region(2200, 0, 100, 100).is_err());
}

#[test]
fn svs_tissue_mask_matches_reference() {
    let r = reference();
    let mut slide = Slide::open(&svs()).unwrap();
    let plan = clipit::slide::plan(&mut slide, &clipit::slide::MapOptions::default()).unwrap();
    let size = r["overview"].as_array().unwrap();
    assert_eq!(plan.overview.image.width() as u64, size[0].as_u64().unwrap());
    assert_eq!(plan.overview.image.height() as u64, size[1].as_u64().unwrap());
    let f = plan.mask.tissue_fraction();
    let f_ref = r["tissue_fraction"].as_f64().unwrap();
    assert!((f - f_ref).abs() < 0.005, "tissue fraction {f} vs reference {f_ref}");
    let n_ref = r["tiles_224_min50"].as_u64().unwrap() as i64;
    assert!((plan.tiles.len() as i64 - n_ref).abs() <= 1, "{} tiles vs {n_ref}", plan.tiles.len());
    assert!(plan.tiles.iter().all(|t| t.tissue >= 0.5 && t.w == 224));
}

fn run_map(slide: &Path, out: &Path, extra: &[&str]) -> Value {
    let model = root().join("tests/fixtures/open_clip");
    let mut args = vec![
        "map",
        "--model",
        model.to_str().unwrap(),
        "--classes",
        "tumor,stroma,lymphocytes",
        "--slide",
        slide.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
    ];
    args.extend_from_slice(extra);
    let res = clipit(&args);
    assert!(res.status.success(), "{}", stderr(&res));
    serde_json::from_slice(&res.stdout).expect("a JSON summary on stdout")
}

/// Checks GeoJSON, CSV and overlay against each other; returns the features.
fn check_outputs(out: &Path, classes: &[&str], image_size: (u32, u32)) -> Vec<Value> {
    let geo: Value =
        serde_json::from_slice(&std::fs::read(out.join("tiles.geojson")).unwrap()).unwrap();
    assert_eq!(geo["type"], "FeatureCollection");
    let features = geo["features"].as_array().unwrap().clone();
    assert!(!features.is_empty());
    for f in &features {
        assert_eq!(f["type"], "Feature");
        assert_eq!(f["geometry"]["type"], "Polygon");
        let ring = f["geometry"]["coordinates"][0].as_array().unwrap();
        assert_eq!(ring.len(), 5);
        assert_eq!(ring[0], ring[4], "ring not closed");
        for p in ring {
            let (x, y) = (p[0].as_u64().unwrap(), p[1].as_u64().unwrap());
            assert!(x <= u64::from(image_size.0) && y <= u64::from(image_size.1));
        }
        let props = &f["properties"];
        assert_eq!(props["objectType"], "tile");
        let name = props["classification"]["name"].as_str().unwrap();
        let color = props["classification"]["color"].as_array().unwrap();
        assert_eq!(color.len(), 3);
        assert!(color.iter().all(|c| c.as_u64().is_some_and(|v| v <= 255)));
        let m = props["measurements"].as_object().unwrap();
        let probs: Vec<f64> =
            classes.iter().map(|c| m[&format!("prob {c}")].as_f64().unwrap()).collect();
        assert!((probs.iter().sum::<f64>() - 1.0).abs() < 1e-4, "{probs:?}");
        let best = probs.iter().enumerate().max_by(|a, b| a.1.total_cmp(b.1)).unwrap().0;
        assert_eq!(name, classes[best]);
    }
    // Same classes, same colour.
    let mut colors = std::collections::HashMap::new();
    for f in &features {
        let c = &f["properties"]["classification"];
        let prev = colors.insert(c["name"].to_string(), c["color"].clone());
        assert!(prev.is_none_or(|p| p == c["color"]));
    }

    let csv = std::fs::read_to_string(out.join("tiles.csv")).unwrap();
    let mut lines = csv.lines();
    assert_eq!(lines.next().unwrap(), format!("x,y,w,h,class,{}", classes.join(",")));
    let rows: Vec<&str> = lines.collect();
    assert_eq!(rows.len(), features.len());
    for (row, f) in rows.iter().zip(&features) {
        let cells: Vec<&str> = row.split(',').collect();
        let ring = &f["geometry"]["coordinates"][0];
        assert_eq!(cells[0], ring[0][0].to_string());
        assert_eq!(cells[1], ring[0][1].to_string());
        assert_eq!(cells[4], f["properties"]["classification"]["name"].as_str().unwrap());
    }

    let overlay = image::open(out.join("overlay.png")).unwrap();
    let f = (2048.0 / f64::from(image_size.0.max(image_size.1))).min(1.0);
    let w = (f64::from(image_size.0) * f).round() as u32;
    assert_eq!(overlay.width(), w);
    assert!(overlay.height() > (f64::from(image_size.1) * f).round() as u32, "legend below");
    features
}

#[test]
fn map_svs_end_to_end() {
    let r = reference();
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("map");
    let summary = run_map(&svs(), &out, &[]);
    let features = check_outputs(&out, &["tumor", "stroma", "lymphocytes"], (2220, 2967));
    let n_ref = r["tiles_224_min50"].as_u64().unwrap() as usize;
    assert_eq!(summary["tiles"].as_u64().unwrap() as usize, features.len());
    assert!(features.len().abs_diff(n_ref) <= 1, "{} tiles vs reference {n_ref}", features.len());
    assert_eq!(summary["grid"], serde_json::json!([2220 / 224, 2967 / 224]));

    // The same tile size in µm, from the file's pixel size (round(112 / mpp) px).
    let mpp = r["mpp"].as_f64().unwrap();
    let expected = (112.0 / mpp).round() as u64;
    let out_um = dir.path().join("um");
    let s =
        run_map(&svs(), &out_um, &["--tile-um", "112", "--stride", "300", "--min-tissue", "0.2"]);
    assert_eq!(s["tile_size"].as_u64().unwrap(), expected);
    assert_eq!(s["stride"], 300);
    let feats = check_outputs(&out_um, &["tumor", "stroma", "lymphocytes"], (2220, 2967));
    let x = feats[0]["geometry"]["coordinates"][0][1][0].as_u64().unwrap()
        - feats[0]["geometry"]["coordinates"][0][0][0].as_u64().unwrap();
    assert_eq!(x, expected);
}

/// Reads `nuc_raster` (int32 [H, W]) from histolytics' npz, if the shared data is there.
fn nucleus_mask() -> Option<(usize, usize, Vec<i32>)> {
    let path = root().join("../shared/data/slides/hgsc_nest_type_mask.npz");
    let mut zip = zip::ZipArchive::new(std::fs::File::open(path).ok()?).ok()?;
    let mut npy = Vec::new();
    std::io::Read::read_to_end(&mut zip.by_name("nuc_raster.npy").ok()?, &mut npy).ok()?;
    let header_len = u16::from_le_bytes([npy[8], npy[9]]) as usize;
    let header = std::str::from_utf8(&npy[10..10 + header_len]).ok()?;
    assert!(header.contains("'<i4'") && header.contains("False"), "{header}");
    let shape = header.split("'shape': (").nth(1)?.split(')').next()?;
    let dims: Vec<usize> = shape.split(',').filter_map(|s| s.trim().parse().ok()).collect();
    let data = npy[10 + header_len..]
        .chunks_exact(4)
        .map(|b| i32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .collect();
    Some((dims[0], dims[1], data))
}

#[test]
fn map_jpeg_crop_end_to_end() {
    let jpg = root().join("tests/data/slides/hgsc_nest.jpg");
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("map");
    let summary =
        run_map(&jpg, &out, &["--tile-size", "150", "--min-tissue", "0.3", "--batch-size", "7"]);
    let features = check_outputs(&out, &["tumor", "stroma", "lymphocytes"], (1500, 1500));
    assert_eq!(summary["grid"], serde_json::json!([10, 10]));
    assert!(summary["mpp"].is_null());
    // The crop is tissue throughout: nearly every tile is kept.
    assert!(features.len() >= 90, "{} of 100 tiles kept", features.len());

    // Tiles the annotators found nuclei in are tissue: every tile with >= 5% nucleus pixels is kept.
    let Some((h, w, nuc)) = nucleus_mask() else {
        eprintln!("hgsc_nest_type_mask.npz not found: nucleus check skipped");
        return;
    };
    assert_eq!((h, w), (1500, 1500));
    let kept: std::collections::HashSet<(u64, u64)> = features
        .iter()
        .map(|f| {
            let p = &f["geometry"]["coordinates"][0][0];
            (p[0].as_u64().unwrap(), p[1].as_u64().unwrap())
        })
        .collect();
    let mut checked = 0;
    for ty in 0..10 {
        for tx in 0..10 {
            let (x0, y0) = (tx * 150, ty * 150);
            let nuclei = (y0..y0 + 150)
                .flat_map(|y| (x0..x0 + 150).map(move |x| (x, y)))
                .filter(|&(x, y)| nuc[y * w + x] > 0)
                .count();
            if nuclei as f64 / (150.0 * 150.0) >= 0.05 {
                checked += 1;
                assert!(
                    kept.contains(&(x0 as u64, y0 as u64)),
                    "tile ({x0}, {y0}) has nuclei but was dropped"
                );
            }
        }
    }
    assert!(checked > 10, "only {checked} tiles with nuclei");
}

/// Little-endian IFD0 entries of a classic TIFF: (entry offset, tag, count, value).
fn ifd0_entries(bytes: &[u8]) -> Vec<(usize, u16, u32, u32)> {
    let u16_at = |o: usize| u16::from_le_bytes([bytes[o], bytes[o + 1]]);
    let u32_at = |o: usize| u32::from_le_bytes(bytes[o..o + 4].try_into().unwrap());
    let ifd = u32_at(4) as usize;
    (0..u16_at(ifd) as usize)
        .map(|i| {
            let e = ifd + 2 + 12 * i;
            (e, u16_at(e), u32_at(e + 4), u32_at(e + 8))
        })
        .collect()
}

/// A little-endian tiled, uncompressed RGB TIFF of `w` x `h` with `tile` x `tile` tiles, holding
/// `pixels` (or, without them, only a header whose tiles all point at one byte).
fn tiled_tiff(w: u32, h: u32, tile: u32, pixels: Option<&image::RgbImage>) -> Vec<u8> {
    let (across, down) = (w.div_ceil(tile), h.div_ceil(tile));
    let n = (across * down) as usize;
    let mut out = b"II*\0\0\0\0\0".to_vec();
    let (mut offsets, mut counts) = (vec![8u32; n], vec![1u32; n]);
    if let Some(img) = pixels {
        for i in 0..n as u32 {
            offsets[i as usize] = out.len() as u32;
            counts[i as usize] = tile * tile * 3;
            let (x0, y0) = ((i % across) * tile, (i / across) * tile);
            for y in y0..y0 + tile {
                for x in x0..x0 + tile {
                    let p = if x < w && y < h { img.get_pixel(x, y).0 } else { [0; 3] };
                    out.extend_from_slice(&p);
                }
            }
        }
    } else {
        out.push(0);
    }
    let array = |values: &[u32], out: &mut Vec<u8>| {
        let at = out.len() as u32;
        values.iter().for_each(|v| out.extend_from_slice(&v.to_le_bytes()));
        at
    };
    let (off_at, count_at) = (array(&offsets, &mut out), array(&counts, &mut out));
    let bits_at = out.len() as u32;
    [8u16, 8, 8].iter().for_each(|v| out.extend_from_slice(&v.to_le_bytes()));
    let ifd = out.len() as u32;
    out[4..8].copy_from_slice(&ifd.to_le_bytes());
    // (tag, type: 3 SHORT / 4 LONG, count, value or offset)
    let entries: [(u16, u16, u32, u32); 11] = [
        (256, 4, 1, w),
        (257, 4, 1, h),
        (258, 3, 3, bits_at),
        (259, 3, 1, 1),
        (262, 3, 1, 2),
        (277, 3, 1, 3),
        (284, 3, 1, 1),
        (322, 4, 1, tile),
        (323, 4, 1, tile),
        (324, 4, n as u32, off_at),
        (325, 4, n as u32, count_at),
    ];
    out.extend_from_slice(&(entries.len() as u16).to_le_bytes());
    for (tag, ty, count, value) in entries {
        out.extend_from_slice(&tag.to_le_bytes());
        out.extend_from_slice(&ty.to_le_bytes());
        out.extend_from_slice(&count.to_le_bytes());
        out.extend_from_slice(&value.to_le_bytes());
    }
    out.extend_from_slice(&0u32.to_le_bytes());
    out
}

#[test]
fn uncompressed_tiled_tiff_reads_exactly() {
    let img = image::RgbImage::from_fn(300, 200, |x, y| {
        image::Rgb([x as u8, y as u8, (x * y % 251) as u8])
    });
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("plain.tif");
    std::fs::write(&path, tiled_tiff(300, 200, 64, Some(&img))).unwrap();
    let mut slide = Slide::open(&path).unwrap();
    assert_eq!(slide.dimensions(), (300, 200));
    assert_eq!(slide.mpp(), None);
    for (x, y, w, h) in [(0, 0, 300, 200), (60, 50, 70, 90), (250, 150, 50, 50)] {
        let got = slide.read_region(x, y, w, h).unwrap();
        assert_eq!(
            got,
            image::imageops::crop_imm(&img, x, y, w, h).to_image(),
            "({x}, {y}, {w}, {h})"
        );
    }
    // The overview of an image smaller than the requested side is the image itself.
    assert_eq!(slide.overview(2048).unwrap().image, img);
}

#[test]
fn bad_slides_fail_with_the_file_named() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    let model = root().join("tests/fixtures/open_clip");
    let map = |slide: &Path, extra: &[&str]| {
        let mut args = vec!["map", "--model", model.to_str().unwrap(), "--classes", "a,b"];
        args.extend_from_slice(&[
            "--slide",
            slide.to_str().unwrap(),
            "--out",
            out.to_str().unwrap(),
        ]);
        args.extend_from_slice(extra);
        clipit(&args)
    };
    let bytes = std::fs::read(svs()).unwrap();
    let write = |name: &str, data: &[u8]| {
        let p = dir.path().join(name);
        std::fs::write(&p, data).unwrap();
        p
    };

    let empty = write("empty.svs", b"");
    assert_fails(&map(&empty, &[]), &["empty.svs", "empty file"]);

    // Cut before the first directory (Aperio writes it after the tile data).
    let cut = write("cut.svs", &bytes[..1_000_000]);
    assert_fails(&map(&cut, &[]), &["cut.svs", "TIFF"]);

    // Directories intact, a tile pointing past the end of the file.
    let mut past = bytes.clone();
    let offsets = ifd0_entries(&past).into_iter().find(|e| e.1 == 324).unwrap();
    let at = offsets.3 as usize;
    past[at..at + 4].copy_from_slice(&(bytes.len() as u32 - 100).to_le_bytes());
    let past = write("past.svs", &past);
    let mut slide = Slide::open(&past).unwrap();
    let e = slide.read_region(0, 0, 100, 100).unwrap_err().to_string();
    assert!(e.contains("past.svs") && e.contains("truncated"), "{e}");

    // JPEG 2000 (Aperio's 33003) is refused up front.
    let mut j2k = bytes.clone();
    let comp = ifd0_entries(&j2k).into_iter().find(|e| e.1 == 259).unwrap();
    j2k[comp.0 + 8..comp.0 + 10].copy_from_slice(&33003u16.to_le_bytes());
    let j2k = write("j2k.svs", &j2k);
    assert_fails(&map(&j2k, &[]), &["j2k.svs", "unsupported TIFF compression 33003", "JPEG 2000"]);

    // Absurd size: a valid header for 300000 x 300000 pixels.
    let huge = write("huge.tif", &tiled_tiff(300_000, 300_000, 65536, None));
    assert_fails(&map(&huge, &[]), &["huge.tif", "above the limit"]);

    // Colour planes stored separately are refused (here by the tiff crate already, since this
    // file's chunk counts are for one plane).
    let img = image::RgbImage::from_pixel(64, 64, image::Rgb([200, 90, 150]));
    let mut planar = tiled_tiff(64, 64, 32, Some(&img));
    let pc = ifd0_entries(&planar).into_iter().find(|e| e.1 == 284).unwrap();
    planar[pc.0 + 8..pc.0 + 10].copy_from_slice(&2u16.to_le_bytes());
    let planar = write("planar.tif", &planar);
    assert_fails(&map(&planar, &[]), &["planar.tif", "TIFF"]);

    let text = write("notes.png", b"not an image at all");
    assert_fails(&map(&text, &[]), &["notes.png"]);

    assert_fails(
        &map(&svs(), &["--tile-size", "5000"]),
        &["cmu_small_region.svs", "larger than the 2220x2967 image"],
    );

    let blank = dir.path().join("blank.png");
    image::RgbImage::from_pixel(400, 300, image::Rgb([242, 242, 240])).save(&blank).unwrap();
    assert_fails(&map(&blank, &[]), &["blank.png", "no tissue"]);

    let png = root().join("tests/data/slides/hgsc_nest.jpg");
    assert_fails(&map(&png, &["--tile-um", "100"]), &["hgsc_nest.jpg", "no pixel size"]);

    // An output folder that cannot exist (its parent is a file).
    let file = write("file", b"x");
    let bad_out = file.join("out");
    let res = clipit(&[
        "map",
        "--model",
        model.to_str().unwrap(),
        "--classes",
        "a,b",
        "--slide",
        svs().to_str().unwrap(),
        "--out",
        bad_out.to_str().unwrap(),
    ]);
    assert_fails(&res, &[bad_out.to_str().unwrap()]);
    let res = clipit(&["map", "--slide", svs().to_str().unwrap(), "--out", "x"]);
    assert_fails(&res, &["--run"]);
}

/// Rows of a CSV as maps from header to cell (no quoted commas in these files).
fn csv_rows(path: &Path) -> Vec<std::collections::HashMap<String, String>> {
    let text = std::fs::read_to_string(path).unwrap();
    let mut lines = text.lines();
    let header: Vec<String> = lines.next().unwrap().split(',').map(str::to_string).collect();
    lines.map(|l| header.iter().cloned().zip(l.split(',').map(str::to_string)).collect()).collect()
}

fn close(a: &str, b: &str) -> bool {
    (a.parse::<f64>().unwrap() - b.parse::<f64>().unwrap()).abs() < 2e-5
}

/// The map's per-tile results equal the per-image commands' on the same tiles saved as PNG:
/// `classify --run`, `zero-shot` and `retrieve`.
#[test]
fn map_agrees_with_per_tile_commands() {
    let dir = tempfile::tempdir().unwrap();
    let d = |p: &str| dir.path().join(p);
    let tiles = root().join("tests/data/tiles");
    for (class, files) in [
        ("tumor", ["kather2016_image_0_label_0.png", "kather_tumor.png", "hgsc_crop.png"]),
        (
            "other",
            [
                "crc_val_ADI-TCGA-EENSRDNW.png",
                "crc_val_MUC-TCGA-VWLNSHTQ.png",
                "kather2016_image_32_label_1.png",
            ],
        ),
    ] {
        std::fs::create_dir_all(d("data").join(class)).unwrap();
        for f in files {
            std::fs::copy(tiles.join(f), d("data").join(class).join(f)).unwrap();
        }
    }
    let model = root().join("tests/fixtures/open_clip");
    let (model, reports) =
        (model.to_str().unwrap(), root().join("data/reports/demo_reports.jsonl"));
    let reports = reports.to_str().unwrap();
    let s = |p: &str| d(p).to_str().unwrap().to_string();
    let (data, run, map_run, map_zs) = (s("data"), s("run"), s("map_run"), s("map_zs"));
    let ok = |args: &[&str]| {
        let out = clipit(args);
        assert!(out.status.success(), "{args:?}: {}", stderr(&out));
        out
    };
    ok(&[
        "train",
        "--method",
        "linear-probe",
        "--backbone",
        model,
        "--data",
        &data,
        "--out",
        &run,
        "--epochs",
        "1",
        "--batch-size",
        "4",
        "--val-fraction",
        "0.34",
        "--no-augment",
    ]);
    let svs = svs();
    let common = ["--slide", svs.to_str().unwrap(), "--tile-size", "300", "--min-tissue", "0.6"];
    let mut args =
        vec!["map", "--run", &run, "--model", model, "--reports", reports, "--out", &map_run];
    args.extend_from_slice(&common);
    ok(&args);
    let mut args = vec!["map", "--model", model, "--classes", "tumor,stroma", "--out", &map_zs];
    args.extend_from_slice(&common);
    ok(&args);

    let by_run = csv_rows(&d("map_run/tiles.csv"));
    let by_zs = csv_rows(&d("map_zs/tiles.csv"));
    assert_eq!(by_run.len(), by_zs.len());
    assert!(by_run[0].contains_key("report_id") && !by_zs[0].contains_key("report_id"));
    // Save three tiles as PNG, named by position.
    std::fs::create_dir_all(d("tiles")).unwrap();
    let mut slide = Slide::open(&svs).unwrap();
    let picked: Vec<usize> = vec![0, by_run.len() / 2, by_run.len() - 1];
    for &i in &picked {
        let r = &by_run[i];
        let v: Vec<u32> = ["x", "y", "w", "h"].iter().map(|k| r[*k].parse().unwrap()).collect();
        let img = slide.read_region(v[0], v[1], v[2], v[3]).unwrap();
        img.save(d("tiles").join(format!("{}_{}.png", v[0], v[1]))).unwrap();
    }
    let tiles_dir = s("tiles");
    ok(&["classify", "--run", &run, "--images", &tiles_dir, "--out", &s("classify.csv")]);
    ok(&[
        "zero-shot",
        "--model",
        model,
        "--images",
        &tiles_dir,
        "--classes",
        "tumor,stroma",
        "--out",
        &s("zs.csv"),
    ]);
    ok(&[
        "retrieve",
        "--model",
        model,
        "--images",
        &tiles_dir,
        "--reports",
        reports,
        "--out",
        &s("pairs.jsonl"),
        "--no-cache",
    ]);
    let key = |image: &str| Path::new(image).file_stem().unwrap().to_str().unwrap().to_string();
    let find = |rows: &[std::collections::HashMap<String, String>], k: &str| {
        rows.iter().find(|r| format!("{}_{}", r["x"], r["y"]) == k).unwrap().clone()
    };
    for (per_tile, map_rows) in
        [(csv_rows(&d("classify.csv")), &by_run), (csv_rows(&d("zs.csv")), &by_zs)]
    {
        assert_eq!(per_tile.len(), picked.len());
        for p in &per_tile {
            let m = find(map_rows, &key(&p["image"]));
            assert_eq!(p["prediction"], m["class"]);
            for (col, v) in p.iter().filter(|(c, _)| *c != "image" && *c != "prediction") {
                assert!(close(v, &m[col]), "{col}: {v} vs {}", m[col]);
            }
        }
    }
    let pairs = std::fs::read_to_string(d("pairs.jsonl")).unwrap();
    for line in pairs.lines() {
        let p: Value = serde_json::from_str(line).unwrap();
        let m = find(&by_run, &key(p["image"].as_str().unwrap()));
        assert_eq!(p["report_id"].as_str().unwrap(), m["report_id"]);
        assert!(close(&p["score"].to_string(), &m["report_score"]));
    }
}
