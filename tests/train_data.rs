//! Training data pipeline: splits, manifests, augmentation, the batch loader and pseudo-pair
//! attachment (`clipit::train::{split, data, augment}`).

use std::collections::{HashMap, HashSet};
use std::fs;
use std::path::{Path, PathBuf};

use clipit::preprocess::PreprocessConfig;
use clipit::retrieval::PseudoPair;
use clipit::train::augment::*;
use clipit::train::data::*;
use clipit::train::split::*;
use image::RgbImage;

// ---------------------------------------------------------------------------------------------
// Rng and splits

#[test]
fn rng_is_deterministic_and_in_range() {
    let (mut a, mut b) = (Rng::new(7), Rng::new(7));
    let xs: Vec<u64> = (0..100).map(|_| a.next_u64()).collect();
    assert_eq!(xs, (0..100).map(|_| b.next_u64()).collect::<Vec<_>>());
    assert_ne!(xs[0], Rng::new(8).next_u64());
    let mut r = Rng::new(1);
    let mut sum = 0.0;
    for _ in 0..10_000 {
        let f = r.next_f32();
        assert!((0.0..1.0).contains(&f));
        sum += f64::from(f);
        assert!(r.below(3) < 3);
    }
    assert!((sum / 10_000.0 - 0.5).abs() < 0.02, "mean {}", sum / 10_000.0);
    let mut v: Vec<u32> = (0..50).collect();
    Rng::new(3).shuffle(&mut v);
    assert_ne!(v, (0..50).collect::<Vec<_>>());
    let mut s = v.clone();
    s.sort();
    assert_eq!(s, (0..50).collect::<Vec<_>>());
    assert_ne!(Rng::derive(1, &[0, 5]).next_u64(), Rng::derive(1, &[5, 0]).next_u64());
    assert_eq!(Rng::derive(1, &[2, 3]).next_u64(), Rng::derive(1, &[2, 3]).next_u64());
}

fn labels_of_sizes(sizes: &[usize]) -> Vec<usize> {
    // Interleave the classes so that indices are not grouped by class.
    let mut out = Vec::new();
    let mut left = sizes.to_vec();
    while left.iter().any(|&n| n > 0) {
        for (c, n) in left.iter_mut().enumerate() {
            if *n > 0 {
                out.push(c);
                *n -= 1;
            }
        }
    }
    out
}

#[test]
fn stratified_split_keeps_class_proportions() {
    let labels = labels_of_sizes(&[100, 50, 3, 1, 2]);
    let (train, val) = stratified_split(&labels, 0.2, 42).unwrap();
    let mut all: Vec<usize> = train.iter().chain(&val).copied().collect();
    all.sort();
    assert_eq!(all, (0..labels.len()).collect::<Vec<_>>(), "a partition of all indices");
    let count = |idx: &[usize], c: usize| idx.iter().filter(|&&i| labels[i] == c).count();
    let val_counts: Vec<usize> = (0..5).map(|c| count(&val, c)).collect();
    // round(n * 0.2), at least one for classes with >= 2 samples, none for a singleton.
    assert_eq!(val_counts, [20, 10, 1, 0, 1]);
    assert!(train.windows(2).all(|w| w[0] < w[1]) && val.windows(2).all(|w| w[0] < w[1]));
    assert_eq!(stratified_split(&labels, 0.2, 42).unwrap(), (train.clone(), val.clone()));
    assert_ne!(stratified_split(&labels, 0.2, 43).unwrap().1, val);
    for bad in [0.0, 1.0, -0.1, f64::NAN] {
        let e = stratified_split(&labels, bad, 0).unwrap_err().to_string();
        assert!(e.contains("between 0 and 1"), "{e}");
    }
}

#[test]
fn group_split_never_straddles_groups() {
    let mut rng = Rng::new(5);
    let (mut labels, mut groups) = (Vec::new(), Vec::new());
    for g in 0..60 {
        let label = g % 3;
        for _ in 0..1 + rng.below(5) {
            labels.push(label);
            groups.push(Some(format!("tile{g}")));
        }
    }
    labels.push(0);
    groups.push(None); // an ungrouped sample is its own group
    let (train, val) = group_split(&labels, &groups, 0.25, 9).unwrap();
    assert_eq!(train.len() + val.len(), labels.len());
    let side: HashMap<usize, bool> =
        train.iter().map(|&i| (i, false)).chain(val.iter().map(|&i| (i, true))).collect();
    let mut group_side: HashMap<&str, bool> = HashMap::new();
    for (i, g) in groups.iter().enumerate() {
        if let Some(g) = g {
            let s = side[&i];
            assert_eq!(*group_side.entry(g).or_insert(s), s, "group {g} straddles the split");
        }
    }
    for c in 0..3 {
        let n = labels.iter().filter(|&&l| l == c).count() as f64;
        let v = val.iter().filter(|&&i| labels[i] == c).count() as f64;
        assert!(v > 0.0 && (v / n - 0.25).abs() < 0.1, "class {c}: {v} of {n} in validation");
    }
    assert_eq!(group_split(&labels, &groups, 0.25, 9).unwrap(), (train, val));
    let e = group_split(&labels[1..], &groups, 0.25, 9).unwrap_err().to_string();
    assert!(e.contains("group entries"), "{e}");
    // Two groups of one label: one each side, whatever the fraction.
    let (t, v) = group_split(&[1, 1, 1], &[Some("a"), Some("a"), Some("b")], 0.9, 0).unwrap();
    assert!(!t.is_empty() && !v.is_empty());
}

#[test]
fn every_nth_split_matches_the_bach_rule() {
    let (train, val) = every_nth_split(41, 20).unwrap();
    assert_eq!(val, [0, 20, 40]);
    assert_eq!(train.len(), 38);
    assert!(every_nth_split(10, 1).is_err());
}

// ---------------------------------------------------------------------------------------------
// Manifests

#[test]
fn manifest_parses_splits_groups_and_quotes() {
    let text = "\u{feff}label, Path ,split,group,notes\r\n\
                tumor,a/1.png,train,g1,x\r\n\
                normal,\"b,1.png\",TRAIN,g1,\"say \"\"hi\"\"\"\n\
                \n\
                normal,/abs/2.png,valid,,\n\
                tumor,c 3.png,test,g2,\"multi\nline\"\n";
    let m = parse_manifest(text, "m.csv", Path::new("/data")).unwrap();
    assert_eq!(m.classes, ["normal", "tumor"]);
    let train = m.train.unwrap();
    assert_eq!(train.len(), 2);
    assert_eq!(train.samples[0].path, PathBuf::from("/data/a/1.png"));
    assert_eq!(train.samples[0].label, 1);
    assert_eq!(train.samples[0].group.as_deref(), Some("g1"));
    assert_eq!(train.samples[1].path, PathBuf::from("/data/b,1.png"));
    let val = m.val.unwrap();
    assert_eq!(val.samples[0].path, PathBuf::from("/abs/2.png"));
    assert_eq!(val.samples[0].group, None);
    assert_eq!(val.classes, ["normal", "tumor"], "splits share the class list");
    assert_eq!(m.test.unwrap().samples[0].path, PathBuf::from("/data/c 3.png"));
    // Without a split column everything is training data; integer labels sort numerically.
    let m =
        parse_manifest("path,label\nx.png,10\ny.png,2\nz.png,2\n", "m.csv", Path::new("")).unwrap();
    assert_eq!(m.classes, ["2", "10"]);
    assert_eq!(m.train.unwrap().class_counts(), [2, 1]);
    assert!(m.val.is_none() && m.test.is_none());
}

#[test]
fn a_labels_csv_of_file_and_class_parses() {
    // The page's Train panel: a `file,class` CSV dropped beside the images.
    let text = "\u{feff}File,Class\ntile 1.png,tumor\n\"b,2.png\",stroma\nsub/c.png,tumor\n";
    let m = parse_manifest(text, "labels.csv", Path::new("")).unwrap();
    assert_eq!(m.classes, ["stroma", "tumor"]);
    let ds = m.train.unwrap();
    let rows: Vec<(String, usize)> =
        ds.samples.iter().map(|s| (s.path.display().to_string(), s.label)).collect();
    assert_eq!(rows, [("tile 1.png".into(), 1), ("b,2.png".into(), 0), ("sub/c.png".into(), 1)]);
}

#[test]
fn manifest_errors_name_the_line() {
    let cases = [
        ("path,label\na.png,x\nb.png\n", "line 3: 1 fields, but the header has 2"),
        ("path,label,split\na.png,x,train\nb.png,y,dev\n", "line 3: split 'dev'"),
        ("path,label\na.png,x\nb.png,  \n", "line 3: empty label"),
        ("path,label\n,x\n", "line 2: empty path"),
        ("name,kind\na.png,x\n", "must name 'path' (or 'file') and 'label' (or 'class')"),
        ("file,class\na.png,x\nb.png,y\nc.png,x,z\n", "line 4: 3 fields, but the header has 2"),
        ("file,class,path\n", "appears twice"),
        ("path,label,path\n", "appears twice"),
        ("path,label\na.png,x\nb.png,x\n", "at least two classes"),
        ("path,label\n\"a.png,x\n", "unterminated quoted field"),
        ("path,label\n\"a\"b.png,x\n", "text after a closing quote"),
        ("path,label\n", "lists no images"),
        ("", "empty manifest"),
    ];
    for (text, want) in cases {
        let e = parse_manifest(text, "bad.csv", Path::new("")).unwrap_err().to_string();
        assert!(e.starts_with("bad.csv: ") && e.contains(want), "{text:?}: {e}");
    }
}

#[test]
fn read_manifest_resolves_paths_and_reports_missing_files() {
    let d = tempfile::tempdir().unwrap();
    fs::create_dir(d.path().join("img")).unwrap();
    write_png(&d.path().join("img/a.png"), 8, 8, 1);
    write_png(&d.path().join("img/b.png"), 8, 8, 2);
    let m = d.path().join("manifest.csv");
    fs::write(&m, "path,label\nimg/a.png,x\nimg/b.png,y\n").unwrap();
    let ds = read_manifest(&m).unwrap().train.unwrap();
    assert_eq!(ds.samples[1].path, d.path().join("img/b.png"));
    fs::write(&m, "path,label\nimg/a.png,x\nimg/nope.png,y\nimg/gone.png,y\n").unwrap();
    let e = read_manifest(&m).unwrap_err().to_string();
    assert!(e.contains("2 of 3 listed images do not exist") && e.contains("nope.png"), "{e}");
}

// ---------------------------------------------------------------------------------------------
// Augmentation

fn tiny() -> RgbImage {
    // 4 x 2, the image of the PIL reference below.
    let px = [
        200, 30, 90, 10, 250, 128, 77, 77, 77, 255, 0, 0, 0, 0, 255, 128, 64, 32, 250, 240, 230, 5,
        100, 60,
    ];
    RgbImage::from_raw(4, 2, px.to_vec()).unwrap()
}

#[test]
fn flips_mirror_the_image() {
    let img = tiny();
    let h = hflip(&img);
    let v = vflip(&img);
    for y in 0..2 {
        for x in 0..4 {
            assert_eq!(h.get_pixel(x, y), img.get_pixel(3 - x, y));
            assert_eq!(v.get_pixel(x, y), img.get_pixel(x, 1 - y));
        }
    }
    let only_h = AugmentConfig { hflip: 1.0, ..AugmentConfig::none() };
    assert_eq!(augment(&img, &only_h, &mut Rng::new(0)), h);
    let only_v = AugmentConfig { vflip: 1.0, ..AugmentConfig::none() };
    assert_eq!(augment(&img, &only_v, &mut Rng::new(0)), v);
}

#[test]
fn rotations_give_the_four_quarter_turns_and_leave_the_other_draws_alone() {
    let img = tiny(); // 4 x 2: a quarter turn makes it 2 x 4
    let only_rot = AugmentConfig { rotate90: true, ..AugmentConfig::none() };
    let turns = [
        img.clone(),
        image::imageops::rotate90(&img),
        image::imageops::rotate180(&img),
        image::imageops::rotate270(&img),
    ];
    let mut seen = [0usize; 4];
    for seed in 0..64 {
        let out = augment(&img, &only_rot, &mut Rng::new(seed));
        let which = turns.iter().position(|t| *t == out).expect("a quarter-turn rotation");
        seen[which] += 1;
    }
    assert!(seen.iter().all(|&n| n >= 5), "each rotation drawn: {seen:?}");
    // With rotations off, the flips and jitter a seed draws are the same as with them on.
    let paper = AugmentConfig::paper();
    let path = AugmentConfig::pathology();
    for seed in 0..8 {
        let with = augment(&img, &path, &mut Rng::new(seed));
        let without = augment(&img, &paper, &mut Rng::new(seed));
        let rotations = [
            without.clone(),
            image::imageops::rotate90(&without),
            image::imageops::rotate180(&without),
            image::imageops::rotate270(&without),
        ];
        assert!(rotations.contains(&with), "seed {seed}: a rotation of the paper's augmentation");
    }
}

#[test]
fn jitter_with_neutral_factors_is_identity() {
    let img = tiny();
    assert_eq!(adjust_brightness(&img, 1.0), img);
    assert_eq!(adjust_contrast(&img, 1.0), img);
    assert_eq!(adjust_saturation(&img, 1.0), img);
    assert_eq!(color_jitter(&img, &AugmentConfig::none(), &mut Rng::new(3)), img);
    assert_eq!(augment(&img, &AugmentConfig::none(), &mut Rng::new(3)), img);
    // Grey pixels have no hue: a hue shift leaves them alone.
    let grey = RgbImage::from_pixel(3, 3, image::Rgb([90, 90, 90]));
    assert_eq!(adjust_hue(&grey, 0.3), grey);
}

#[test]
fn color_ops_match_pillow_and_torchvision() {
    // torchvision 0.29 `F.adjust_*` on a PIL image (Pillow 13), for the image of `tiny()`.
    #[rustfmt::skip]
    let cases: [(&str, f32, [u8; 24]); 8] = [
        ("brightness", 1.37, [255, 41, 123, 13, 255, 175, 105, 105, 105, 255, 0, 0, 0, 0, 255, 175, 87, 43, 255, 255, 255, 6, 137, 82]),
        ("brightness", 0.61, [122, 18, 54, 6, 152, 78, 46, 46, 46, 155, 0, 0, 0, 0, 155, 78, 39, 19, 152, 146, 140, 3, 61, 36]),
        ("contrast", 1.42, [240, 0, 84, 0, 255, 138, 66, 66, 66, 255, 0, 0, 0, 0, 255, 138, 47, 2, 255, 255, 255, 0, 98, 41]),
        ("contrast", 0.55, [156, 62, 95, 51, 183, 116, 88, 88, 88, 186, 46, 46, 46, 46, 186, 116, 81, 63, 183, 178, 172, 49, 101, 79]),
        ("saturation", 1.5, [255, 1, 91, 0, 255, 110, 77, 77, 77, 255, 0, 0, 0, 0, 255, 152, 56, 8, 254, 239, 224, 0, 116, 56]),
        ("saturation", 0.3, [121, 70, 88, 117, 189, 153, 77, 77, 77, 129, 53, 53, 20, 20, 96, 93, 74, 64, 244, 241, 238, 48, 76, 64]),
        ("hue", 0.05, [200, 31, 43, 11, 250, 191, 77, 77, 77, 255, 72, 0, 72, 0, 255, 128, 91, 32, 250, 246, 230, 5, 100, 85]),
        ("hue", -0.04, [200, 31, 130, 11, 250, 67, 77, 77, 77, 255, 0, 54, 0, 60, 255, 128, 41, 32, 250, 235, 230, 5, 100, 36]),
    ];
    let img = tiny();
    for (op, f, want) in cases {
        let got = match op {
            "brightness" => adjust_brightness(&img, f),
            "contrast" => adjust_contrast(&img, f),
            "saturation" => adjust_saturation(&img, f),
            _ => adjust_hue(&img, f),
        };
        assert_eq!(got.as_raw().as_slice(), want.as_slice(), "{op} {f}");
    }
}

#[test]
fn augmentation_is_deterministic_per_rng_state() {
    let img = RgbImage::from_fn(16, 12, |x, y| {
        image::Rgb([(x * 15) as u8, (y * 20) as u8, ((x + y) * 7) as u8])
    });
    let cfg = AugmentConfig::default();
    assert_eq!(cfg, AugmentConfig::paper());
    let a = augment(&img, &cfg, &mut Rng::new(11));
    assert_eq!(a, augment(&img, &cfg, &mut Rng::new(11)));
    let outs: HashSet<Vec<u8>> =
        (0..8).map(|s| augment(&img, &cfg, &mut Rng::new(s)).into_raw()).collect();
    assert!(outs.len() > 4, "different seeds should give different augmentations");
    assert!(AugmentConfig { hue: 0.6, ..cfg }.validate().is_err());
    assert!(AugmentConfig { hflip: 1.5, ..cfg }.validate().is_err());
    assert!(cfg.validate().is_ok());
}

// ---------------------------------------------------------------------------------------------
// Loader

fn write_png(path: &Path, w: u32, h: u32, seed: u32) {
    let img = RgbImage::from_fn(w, h, |x, y| {
        image::Rgb([(x * seed) as u8, (y + seed) as u8, (x ^ y) as u8])
    });
    img.save(path).unwrap();
}

fn tiles_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/tiles")
}

/// A temporary ImageFolder: class `a` and `b` from the repo's test tiles, plus an RGBA PNG, a
/// 16-bit grey PNG and (optionally) a broken file in class `b`.
fn make_folder(broken: bool) -> tempfile::TempDir {
    let d = tempfile::tempdir().unwrap();
    let (a, b) = (d.path().join("a"), d.path().join("b"));
    fs::create_dir_all(&a).unwrap();
    fs::create_dir_all(&b).unwrap();
    let mut tiles: Vec<PathBuf> =
        fs::read_dir(tiles_dir()).unwrap().map(|e| e.unwrap().path()).collect();
    tiles.sort();
    for (i, t) in tiles.iter().enumerate() {
        let dest = if i % 2 == 0 { &a } else { &b };
        fs::copy(t, dest.join(t.file_name().unwrap())).unwrap();
    }
    image::RgbaImage::from_pixel(40, 30, image::Rgba([200, 10, 50, 128]))
        .save(a.join("rgba.png"))
        .unwrap();
    image::ImageBuffer::<image::Luma<u16>, Vec<u16>>::from_fn(20, 50, |x, y| {
        image::Luma([(x * 3000 + y) as u16])
    })
    .save(b.join("grey16.png"))
    .unwrap();
    if broken {
        fs::write(b.join("broken.png"), b"\x89PNG\r\n\x1a\nnot really a png").unwrap();
    }
    d
}

fn cfg(batch: usize) -> LoaderConfig {
    LoaderConfig::new(PreprocessConfig::openai_clip(32), batch)
}

fn collect(loader: &BatchLoader, epoch: u64) -> (Vec<Batch>, Vec<Skipped>) {
    let mut it = loader.epoch(epoch);
    let batches: Vec<Batch> = it.by_ref().collect();
    (batches, it.skipped().to_vec())
}

#[test]
fn loader_yields_shaped_labelled_batches_and_skips_broken_images() {
    let d = make_folder(true);
    let ds = Dataset::from_image_folder(d.path()).unwrap();
    let n = ds.len();
    let broken = ds.samples.iter().position(|s| s.path.ends_with("broken.png")).unwrap();
    let loader = BatchLoader::new(ds.clone(), cfg(4)).unwrap();
    assert_eq!(loader.num_batches(), n.div_ceil(4));
    let (batches, skipped) = collect(&loader, 0);
    assert_eq!(skipped.len(), 1, "{skipped:?}");
    assert_eq!(skipped[0].index, broken);
    assert!(skipped[0].error.contains("broken.png"), "{}", skipped[0].error);
    let mut seen = Vec::new();
    for b in &batches {
        assert_eq!(b.pixels.len(), b.len() * 3 * 32 * 32);
        assert_eq!(b.shape(), [b.len(), 3, 32, 32]);
        assert!(b.len() <= 4 && !b.is_empty());
        for (k, &i) in b.indices.iter().enumerate() {
            assert_eq!(b.labels[k], ds.samples[i].label);
        }
        assert!(b.pixels.iter().all(|v| v.is_finite()));
        seen.extend_from_slice(&b.indices);
    }
    assert_eq!(batches.iter().map(|b| b.skipped.len()).sum::<usize>(), 1);
    seen.sort();
    let want: Vec<usize> = (0..n).filter(|&i| i != broken).collect();
    assert_eq!(seen, want, "every readable image exactly once");
    // One sample prepared alone equals the same sample inside a batch.
    let one = loader.load(&[batches[0].indices[0]], 0);
    assert_eq!(one.pixels, batches[0].pixels[..3 * 32 * 32]);
    let t = batches[0].to_tensor(&burn::tensor::Device::flex());
    assert_eq!(t.dims(), batches[0].shape());
    assert_eq!(batches[0].labels_tensor(&burn::tensor::Device::flex()).dims(), [batches[0].len()]);
}

#[test]
fn loader_order_and_augmentation_are_deterministic() {
    let d = make_folder(false);
    let ds = Dataset::from_image_folder(d.path()).unwrap();
    let mut c = cfg(3);
    c.augment = Some(AugmentConfig::default());
    c.seed = 17;
    let loader = BatchLoader::new(ds.clone(), c).unwrap();
    let (e0, _) = collect(&loader, 0);
    let (again, _) = collect(&loader, 0);
    assert_eq!(e0, again, "same seed and epoch, same batches");
    // Prefetching off (and so no background thread) changes nothing.
    let inline = BatchLoader::new(ds.clone(), LoaderConfig { prefetch: 0, ..c }).unwrap();
    assert_eq!(collect(&inline, 0).0, e0);
    let (e1, _) = collect(&loader, 1);
    let order = |bs: &[Batch]| bs.iter().flat_map(|b| b.indices.clone()).collect::<Vec<_>>();
    assert_ne!(order(&e0), order(&e1), "epochs are shuffled differently");
    assert_eq!(order(&e0), loader.order(0));
    // Evaluation: dataset order, no augmentation, identical to the unaugmented pixels.
    let eval =
        BatchLoader::new(ds.clone(), LoaderConfig::eval(PreprocessConfig::openai_clip(32), 3))
            .unwrap();
    let (ev, _) = collect(&eval, 5);
    assert_eq!(order(&ev), (0..ds.len()).collect::<Vec<_>>());
    let first = ev[0].indices[0];
    let pos = order(&e0).iter().position(|&i| i == first).unwrap();
    let aug = &e0[pos / 3].pixels[(pos % 3) * 3072..(pos % 3 + 1) * 3072];
    assert_ne!(aug, &ev[0].pixels[..3072], "training batches are augmented");
}

#[test]
fn loader_drop_last_and_config_errors() {
    let d = make_folder(false);
    let ds = Dataset::from_image_folder(d.path()).unwrap();
    let n = ds.len();
    let l = BatchLoader::new(ds.clone(), LoaderConfig { drop_last: true, ..cfg(5) }).unwrap();
    assert_eq!(l.num_batches(), n / 5);
    let (bs, _) = collect(&l, 0);
    assert_eq!(bs.len(), n / 5);
    assert!(bs.iter().all(|b| b.len() == 5));
    let e = BatchLoader::new(ds.clone(), cfg(0)).unwrap_err().to_string();
    assert!(e.contains("batch size"), "{e}");
    let e = BatchLoader::new(ds.clone(), LoaderConfig { drop_last: true, ..cfg(n + 1) })
        .unwrap_err()
        .to_string();
    assert!(e.contains("no full batch"), "{e}");
    // Dropping an epoch early stops its thread without hanging.
    let mut it = BatchLoader::new(ds, cfg(1)).unwrap().epoch(0);
    assert!(it.next().is_some());
    drop(it);
}

#[test]
fn one_class_and_empty_datasets_are_errors() {
    let d = tempfile::tempdir().unwrap();
    fs::create_dir(d.path().join("only")).unwrap();
    write_png(&d.path().join("only/x.png"), 4, 4, 1);
    let e = Dataset::from_image_folder(d.path()).unwrap_err().to_string();
    assert!(e.contains("needs at least two classes"), "{e}");
    let e = Dataset::new(vec!["a".into(), "b".into()], vec![]).unwrap_err().to_string();
    assert!(e.contains("no images"), "{e}");
    let ds = Dataset::from_image_folder(make_folder(false).path()).unwrap();
    assert!(ds.subset(&[]).is_err());
    assert!(ds.subset(&[ds.len()]).is_err());
    let sub = ds.subset(&[1, 0]).unwrap();
    assert_eq!(sub.samples, [ds.samples[1].clone(), ds.samples[0].clone()]);
    let swapped = ds.with_class_order(&["b".into(), "a".into()]).unwrap();
    assert_eq!(swapped.class_counts(), [ds.class_counts()[1], ds.class_counts()[0]]);
}

// ---------------------------------------------------------------------------------------------
// Pseudo-pairs

fn pair(image: &str, report: &str, rank: usize) -> PseudoPair {
    PseudoPair { image: image.into(), report_id: report.into(), score: 0.5, rank }
}

#[test]
fn attach_pairs_maps_rank1_reports_and_reports_missing_images() {
    let d = make_folder(false);
    let ds = Dataset::from_image_folder(d.path()).unwrap();
    let ids: Vec<String> = ["r0", "r1", "r2"].iter().map(|s| s.to_string()).collect();
    let mut pairs = Vec::new();
    for (i, s) in ds.samples.iter().enumerate() {
        // Half the images are named through a non-canonical path (`class/../class/x.png`).
        let p = if i % 2 == 0 {
            s.path.display().to_string()
        } else {
            let parent = s.path.parent().unwrap();
            let cls = parent.file_name().unwrap();
            parent.join("..").join(cls).join(s.path.file_name().unwrap()).display().to_string()
        };
        pairs.push(pair(&p, &ids[i % 3], 1));
        pairs.push(pair(&p, &ids[(i + 1) % 3], 2));
    }
    let got = attach_pairs(&ds, &pairs, &ids).unwrap();
    assert_eq!(got, (0..ds.len()).map(|i| i % 3).collect::<Vec<_>>());
    // Two images without a rank-1 pair.
    let partial: Vec<PseudoPair> = pairs.iter().skip(4).cloned().collect();
    let e = attach_pairs(&ds, &partial, &ids).unwrap_err().to_string();
    assert!(e.contains(&format!("miss 2 of {}", ds.len())), "{e}");
    assert!(e.contains(&ds.samples[0].path.display().to_string()), "{e}");
    // A report that is not in the corpus.
    let e = attach_pairs(&ds, &[pair("x.png", "r9", 1)], &ids).unwrap_err().to_string();
    assert!(e.contains("'r9'") && e.contains("not in the corpus"), "{e}");
}

// ---------------------------------------------------------------------------------------------
// Real data (internal licence: read in place, never copied into the repo)

#[test]
fn lc25000_dev_tiles_load_with_paper_augmentation() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/data/lung/lc25000_dev");
    if !root.is_dir() {
        eprintln!("skipped: {} is absent", root.display());
        return;
    }
    let ds = Dataset::from_image_folder(&root).unwrap();
    assert_eq!(ds.classes, ["lung_aca", "lung_n", "lung_scc"]);
    let (train, val) = stratified_split(&ds.labels(), 0.2, 42).unwrap();
    let val_ds = ds.subset(&val).unwrap();
    let counts = val_ds.class_counts();
    for (c, &n) in ds.class_counts().iter().enumerate() {
        assert_eq!(counts[c], ((n as f64) * 0.2).round() as usize);
    }
    let mut c = LoaderConfig::new(PreprocessConfig::openai_clip(64), 6);
    c.augment = Some(AugmentConfig::paper());
    let loader = BatchLoader::new(ds.subset(&train).unwrap(), c).unwrap();
    let mut it = loader.epoch(0);
    let b = it.next().unwrap();
    assert_eq!(b.shape(), [6, 3, 64, 64]);
    assert!(it.skipped().is_empty());
}
