//! Decoding and preprocessing against PIL / torchvision (fixture: tests/reference/check_preprocess.py).

use std::io::Cursor;
use std::path::{Path, PathBuf};

use burn::tensor::Device;
use clipit::preprocess::{
    center_crop_origin, decode_rgb, load_rgb, preprocess, resize_bicubic, resized_size,
    to_batch_tensor, PreprocessConfig, DEFAULT_MAX_PIXELS, IMAGENET_MEAN, IMAGENET_STD,
};
use image::{ImageBuffer, ImageFormat, Luma, LumaA, Rgb, RgbImage, Rgba};
use safetensors::SafeTensors;
use serde::Deserialize;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

#[derive(Deserialize)]
struct Case {
    key: String,
    image: String,
    resize: usize,
    crop: usize,
    mean: [f32; 3],
    std: [f32; 3],
}

fn cases() -> (Vec<Case>, Vec<u8>) {
    let dir = root().join("tests/fixtures/preprocess_pil");
    let cases = serde_json::from_slice(&std::fs::read(dir.join("cases.json")).unwrap()).unwrap();
    (cases, std::fs::read(dir.join("expected.safetensors")).unwrap())
}

fn tensor_u8(st: &SafeTensors, key: &str) -> Option<(Vec<u8>, Vec<usize>)> {
    let t = st.tensor(key).ok()?;
    Some((t.data().to_vec(), t.shape().to_vec()))
}

fn tensor_f32(st: &SafeTensors, key: &str) -> Vec<f32> {
    let t = st.tensor(key).unwrap();
    t.data().chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect()
}

fn cosine(a: &[f32], b: &[f32]) -> f64 {
    let (mut ab, mut aa, mut bb) = (0f64, 0f64, 0f64);
    for (&x, &y) in a.iter().zip(b) {
        let (x, y) = (f64::from(x), f64::from(y));
        ab += x * y;
        aa += x * x;
        bb += y * y;
    }
    ab / (aa.sqrt() * bb.sqrt())
}

fn max_abs(a: &[f32], b: &[f32]) -> f32 {
    a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0.0, f32::max)
}

#[test]
fn resize_matches_pil_bicubic() {
    let (cases, bytes) = cases();
    let st = SafeTensors::deserialize(&bytes).unwrap();
    let mut checked = 0;
    for c in &cases {
        let Some((want, shape)) = tensor_u8(&st, &format!("{}.resized", c.key)) else { continue };
        let img = load_rgb(&root().join(&c.image), DEFAULT_MAX_PIXELS).unwrap();
        let (w, h) = resized_size(img.width(), img.height(), c.resize);
        assert_eq!([h, w, 3], shape[..], "{}: output size", c.key);
        let got = resize_bicubic(&img, w as u32, h as u32).into_raw();
        let diffs: Vec<u8> = got.iter().zip(&want).map(|(a, b)| a.abs_diff(*b)).collect();
        let max = diffs.iter().copied().max().unwrap_or(0);
        let off = diffs.iter().filter(|&&d| d > 1).count();
        let exact = diffs.iter().filter(|&&d| d == 0).count() as f64 / diffs.len() as f64;
        eprintln!(
            "{}: {}x{} -> {w}x{h}: max diff {max} levels, {:.4}% exact",
            c.key,
            img.width(),
            img.height(),
            exact * 100.0
        );
        assert!(off as f64 <= 0.001 * diffs.len() as f64, "{}: {off} values off by > 1", c.key);
        // The port is bit-exact with Pillow's Resample.c.
        assert_eq!(max, 0, "{}: not bit-exact with PIL", c.key);
        checked += 1;
    }
    assert!(checked >= 4);
}

#[test]
fn tensors_match_torchvision() {
    let (cases, bytes) = cases();
    let st = SafeTensors::deserialize(&bytes).unwrap();
    for c in &cases {
        let img = load_rgb(&root().join(&c.image), DEFAULT_MAX_PIXELS).unwrap();
        let cfg = PreprocessConfig::new(c.resize, c.crop, c.mean, c.std);
        cfg.validate().unwrap();
        let got = preprocess(&img, &cfg);
        let want = tensor_f32(&st, &format!("{}.tensor", c.key));
        assert_eq!(got.len(), want.len(), "{}", c.key);
        let (cos, max) = (cosine(&got, &want), max_abs(&got, &want));
        eprintln!("{}: cosine {cos:.8}, max abs diff {max:.2e}", c.key);
        assert!(cos >= 0.995, "{}: cosine {cos}", c.key);
        if c.image.ends_with(".png") {
            // Same uint8 crop and the same f32 arithmetic as ToTensor + Normalize.
            assert!(max <= 1e-6, "{}: max abs diff {max}", c.key);
        } else {
            assert!(cos >= 0.9999, "{}: cosine {cos}", c.key);
        }
    }
}

/// The shared fixture written by tests/reference/make_fixtures.py (real model sizes: OpenAI CLIP 224
/// on a non-square crop, CONCH 448 upsampling, timm crop_pct 0.875 on a TIFF tile and on the crop).
#[test]
fn shared_fixture_matches_torchvision() {
    let dir = root().join("tests/fixtures/preprocess");
    let Ok(json) = std::fs::read(dir.join("cases.json")) else {
        eprintln!("tests/fixtures/preprocess absent: skipped");
        return;
    };
    let cases: Vec<Case> = serde_json::from_slice(&json).unwrap();
    let bytes = std::fs::read(dir.join("expected.safetensors")).unwrap();
    let st = SafeTensors::deserialize(&bytes).unwrap();
    for c in &cases {
        let img = load_rgb(&root().join(&c.image), DEFAULT_MAX_PIXELS).unwrap();
        let got = preprocess(&img, &PreprocessConfig::new(c.resize, c.crop, c.mean, c.std));
        let want = tensor_f32(&st, &c.key);
        assert_eq!(got.len(), want.len(), "{}", c.key);
        let (cos, max) = (cosine(&got, &want), max_abs(&got, &want));
        eprintln!("{}: cosine {cos:.8}, max abs diff {max:.2e}", c.key);
        assert!(cos >= 0.995 && max <= 1e-6, "{}: cosine {cos}, max abs diff {max}", c.key);
    }
}

#[test]
fn jpeg_decode_close_to_pil() {
    let (_, bytes) = cases();
    let st = SafeTensors::deserialize(&bytes).unwrap();
    let (want, _) = tensor_u8(&st, "hgsc_jpeg.decoded").unwrap();
    let got = load_rgb(&root().join("tests/data/tiles/hgsc_crop.jpg"), DEFAULT_MAX_PIXELS).unwrap();
    let d: Vec<u8> = got.as_raw().iter().zip(&want).map(|(a, b)| a.abs_diff(*b)).collect();
    let max = d.iter().copied().max().unwrap();
    let mean = d.iter().map(|&v| f64::from(v)).sum::<f64>() / d.len() as f64;
    let exact = d.iter().filter(|&&v| v == 0).count() as f64 / d.len() as f64;
    eprintln!("JPEG vs PIL: max diff {max}, mean {mean:.4}, {:.2}% exact", exact * 100.0);
    assert_eq!(got.as_raw().len(), want.len());
    assert!(mean < 1.0 && max <= 16, "JPEG decode far from PIL: max {max}, mean {mean}");
}

#[test]
fn sizes_and_offsets_follow_torchvision() {
    assert_eq!(resized_size(210, 150, 171), (239, 171));
    assert_eq!(resized_size(150, 210, 171), (171, 239));
    assert_eq!(resized_size(224, 224, 256), (256, 256));
    assert_eq!(resized_size(0, 10, 224), (0, 0));
    // int(round(diff / 2.0)): halves round to even.
    let got: Vec<i64> =
        [0, 1, 2, 3, 5, 7, 13, 45].iter().map(|&d| center_crop_origin(90 + d, 90)).collect();
    assert_eq!(got, [0, 0, 1, 2, 2, 4, 6, 22]);
    assert_eq!(center_crop_origin(64, 80), -8);
    assert_eq!(center_crop_origin(63, 80), -8);
    let timm = |p| PreprocessConfig::from_crop_pct(224, p, IMAGENET_MEAN, IMAGENET_STD).resize;
    assert_eq!((timm(0.875), timm(0.9), timm(0.95), timm(1.0)), (256, 248, 235, 224));
    assert!(PreprocessConfig::from_crop_pct(224, 0.0, IMAGENET_MEAN, IMAGENET_STD)
        .validate()
        .is_err());
    assert!(PreprocessConfig::openai_clip(0).validate().is_err());
    assert!(PreprocessConfig::new(224, 224, [0.5; 3], [0.5, 0.0, 0.5]).validate().is_err());
    assert!(PreprocessConfig::half(224).validate().is_ok());
}

#[test]
fn odd_inputs_do_not_panic() {
    let cfg = PreprocessConfig::openai_clip(32);
    for (w, h) in [(1, 1), (1, 3000), (3000, 1), (0, 0), (7, 0)] {
        let img = RgbImage::from_pixel(w, h, Rgb([200, 10, 99]));
        assert_eq!(preprocess(&img, &cfg).len(), 3 * 32 * 32);
    }
    let img = RgbImage::from_pixel(5, 5, Rgb([1, 2, 3]));
    assert!(preprocess(&img, &PreprocessConfig::openai_clip(0)).is_empty());
    let zero_resize = PreprocessConfig::new(0, 4, [0.0; 3], [1.0; 3]);
    assert_eq!(preprocess(&img, &zero_resize), vec![0.0; 48]);
    // A constant image stays constant through the resize (coefficients sum to one).
    let up = resize_bicubic(&RgbImage::from_pixel(3, 2, Rgb([77, 0, 255])), 50, 9);
    assert!(up.pixels().all(|p| p.0 == [77, 0, 255]));
    assert_eq!(resize_bicubic(&img, 0, 4).dimensions(), (0, 4));
}

#[test]
fn batch_tensor_shape_and_values() {
    let img = RgbImage::from_fn(9, 6, |x, y| Rgb([x as u8 * 20, y as u8 * 30, 128]));
    let cfg = PreprocessConfig::imagenet(4);
    let a = preprocess(&img, &cfg);
    let t = to_batch_tensor(&[a.clone(), a.clone()], 4, &Device::flex());
    assert_eq!(t.dims(), [2, 3, 4, 4]);
    let v = t.into_data().try_to_vec::<f32>().unwrap();
    assert_eq!(&v[..48], &a[..]);
    assert_eq!(&v[48..], &a[..]);
}

// ---- decoding ----

fn encode(img: impl Into<image::DynamicImage>, fmt: ImageFormat) -> Vec<u8> {
    let mut out = Cursor::new(Vec::new());
    img.into().write_to(&mut out, fmt).unwrap();
    out.into_inner()
}

fn pattern(x: u32, y: u32) -> [u8; 3] {
    [(x * 37 % 256) as u8, (y * 53 % 256) as u8, ((x + y) * 11 % 256) as u8]
}

#[test]
fn decodes_rgba_gray_16bit_tiff_like_pil() {
    let rgb = RgbImage::from_fn(13, 7, |x, y| Rgb(pattern(x, y)));
    let rgba = ImageBuffer::from_fn(13, 7, |x, y| {
        let [r, g, b] = pattern(x, y);
        Rgba([r, g, b, (x * 19) as u8])
    });
    let got = decode_rgb(
        &encode(image::DynamicImage::ImageRgba8(rgba), ImageFormat::Png),
        "a.png",
        DEFAULT_MAX_PIXELS,
    );
    assert_eq!(got.unwrap(), rgb, "RGBA: alpha dropped, not composited");
    let tif =
        decode_rgb(&encode(rgb.clone(), ImageFormat::Tiff), "a.tif", DEFAULT_MAX_PIXELS).unwrap();
    assert_eq!(tif, rgb, "TIFF");

    let gray = ImageBuffer::from_fn(5, 4, |x, y| Luma([(x * 50 + y) as u8]));
    let got =
        decode_rgb(&encode(gray.clone(), ImageFormat::Png), "g.png", DEFAULT_MAX_PIXELS).unwrap();
    assert!(got.enumerate_pixels().all(|(x, y, p)| p.0 == [gray.get_pixel(x, y).0[0]; 3]));
    let la = ImageBuffer::from_fn(5, 4, |x, y| LumaA([(x * 50 + y) as u8, 9]));
    let got = decode_rgb(
        &encode(image::DynamicImage::ImageLumaA8(la), ImageFormat::Png),
        "la.png",
        DEFAULT_MAX_PIXELS,
    );
    assert!(got.unwrap().enumerate_pixels().all(|(x, y, p)| p.0 == [gray.get_pixel(x, y).0[0]; 3]));

    // 16-bit: the high byte (v >> 8), as PIL does for 16-bit RGB PNGs.
    let vals = [0u16, 255, 256, 383, 32767, 32768, 65279, 65407, 65535];
    let hi: Vec<u8> = vals.iter().map(|v| (v >> 8) as u8).collect();
    let rgb16 = ImageBuffer::from_fn(vals.len() as u32, 1, |x, _| Rgb([vals[x as usize]; 3]));
    let got = decode_rgb(
        &encode(image::DynamicImage::ImageRgb16(rgb16), ImageFormat::Png),
        "c16.png",
        u64::MAX,
    )
    .unwrap();
    assert_eq!(got.pixels().map(|p| p.0[1]).collect::<Vec<_>>(), hi);
    let l16 = ImageBuffer::from_fn(vals.len() as u32, 1, |x, _| Luma([vals[x as usize]]));
    let got = decode_rgb(
        &encode(image::DynamicImage::ImageLuma16(l16), ImageFormat::Png),
        "g16.png",
        u64::MAX,
    )
    .unwrap();
    assert_eq!(got.pixels().map(|p| p.0[2]).collect::<Vec<_>>(), hi);

    let jpg =
        decode_rgb(&encode(rgb.clone(), ImageFormat::Jpeg), "noext", DEFAULT_MAX_PIXELS).unwrap();
    assert_eq!(jpg.dimensions(), (13, 7));
}

/// A minimal PNG writer (stored deflate blocks), to make palette and lying-header files.
fn raw_png(ihdr: [u8; 13], extra: &[(&[u8; 4], Vec<u8>)], raw: &[u8]) -> Vec<u8> {
    fn crc32(data: &[u8]) -> u32 {
        let mut c = 0xffff_ffffu32;
        for &b in data {
            c ^= u32::from(b);
            for _ in 0..8 {
                c = if c & 1 == 1 { 0xedb8_8320 ^ (c >> 1) } else { c >> 1 };
            }
        }
        !c
    }
    let mut z = vec![0x78, 0x01];
    let chunks: Vec<&[u8]> = if raw.is_empty() { vec![&[]] } else { raw.chunks(65535).collect() };
    for (i, block) in chunks.iter().enumerate() {
        z.push(u8::from(i + 1 == chunks.len()));
        let n = block.len() as u16;
        z.extend_from_slice(&n.to_le_bytes());
        z.extend_from_slice(&(!n).to_le_bytes());
        z.extend_from_slice(block);
    }
    let (mut a, mut b) = (1u32, 0u32);
    for &v in raw {
        a = (a + u32::from(v)) % 65521;
        b = (b + a) % 65521;
    }
    z.extend_from_slice(&((b << 16) | a).to_be_bytes());
    let mut out = b"\x89PNG\r\n\x1a\n".to_vec();
    let mut chunk = |t: &[u8; 4], d: &[u8]| {
        out.extend_from_slice(&(d.len() as u32).to_be_bytes());
        let body = [&t[..], d].concat();
        out.extend_from_slice(&body);
        out.extend_from_slice(&crc32(&body).to_be_bytes());
    };
    chunk(b"IHDR", &ihdr);
    for (t, d) in extra {
        chunk(t, d);
    }
    chunk(b"IDAT", &z);
    chunk(b"IEND", &[]);
    out
}

fn ihdr(w: u32, h: u32, depth: u8, color: u8) -> [u8; 13] {
    let mut x = [0u8; 13];
    x[..4].copy_from_slice(&w.to_be_bytes());
    x[4..8].copy_from_slice(&h.to_be_bytes());
    x[8] = depth;
    x[9] = color;
    x
}

#[test]
fn decodes_palette_png() {
    let palette = vec![255, 0, 0, 0, 128, 255, 10, 20, 30];
    let trns = vec![255, 0, 128];
    let raw = [0u8, 0, 1, 2, 1, 0, 2, 1, 0, 0];
    let png = raw_png(ihdr(4, 2, 8, 3), &[(b"PLTE", palette), (b"tRNS", trns)], &raw);
    let img = decode_rgb(&png, "p.png", DEFAULT_MAX_PIXELS).unwrap();
    let px: Vec<[u8; 3]> = img.pixels().map(|p| p.0).collect();
    let (r, b, d) = ([255, 0, 0], [0, 128, 255], [10, 20, 30]);
    assert_eq!(px, [r, b, d, b, d, b, r, r]);
}

#[test]
fn refuses_bad_files_with_their_name() {
    let err = |r: clipit::Result<RgbImage>| r.unwrap_err().to_string();
    let rgb = RgbImage::from_fn(40, 30, |x, y| Rgb(pattern(x, y)));
    let png = encode(rgb, ImageFormat::Png);

    let e = err(decode_rgb(&png[..png.len() / 2], "half.png", DEFAULT_MAX_PIXELS));
    assert!(e.contains("half.png"), "{e}");
    let e = err(decode_rgb(&[], "empty.png", DEFAULT_MAX_PIXELS));
    assert!(e.contains("empty.png") && e.contains("empty"), "{e}");
    let e = err(decode_rgb(b"not an image at all", "junk.bin", DEFAULT_MAX_PIXELS));
    assert!(e.contains("junk.bin") && e.contains("format"), "{e}");
    let e = err(decode_rgb(&png, "big.png", 40 * 30 - 1));
    assert!(e.contains("big.png") && e.contains("40x30") && e.contains("limit"), "{e}");
    assert!(decode_rgb(&png, "ok.png", 40 * 30).is_ok());

    // A header claiming 60000 x 60000 with almost no data: refused from the header, before decoding.
    let bomb = raw_png(ihdr(60_000, 60_000, 8, 2), &[], &[0; 16]);
    let e = err(decode_rgb(&bomb, "bomb.png", DEFAULT_MAX_PIXELS));
    assert!(e.contains("bomb.png") && e.contains("60000x60000") && e.contains("limit"), "{e}");

    let dir = tempfile::tempdir().unwrap();
    let zero = dir.path().join("zero.png");
    std::fs::write(&zero, b"").unwrap();
    let e = err(load_rgb(&zero, DEFAULT_MAX_PIXELS));
    assert!(e.contains("zero.png"), "{e}");
    let trunc = dir.path().join("trunc.png");
    std::fs::write(&trunc, &png[..png.len() - 30]).unwrap();
    let e = err(load_rgb(&trunc, DEFAULT_MAX_PIXELS));
    assert!(e.contains("trunc.png"), "{e}");
    let e = err(load_rgb(Path::new("/nonexistent/tile.png"), DEFAULT_MAX_PIXELS));
    assert!(e.contains("tile.png"), "{e}");
}
