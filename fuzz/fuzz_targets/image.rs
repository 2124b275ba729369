//! Image decoding (PNG, JPEG, TIFF, by signature) under a small pixel limit, then the
//! resize / centre-crop / normalise pipeline with a small config.
#![no_main]

use clipit::preprocess::{decode_rgb, preprocess, PreprocessConfig};
use libfuzzer_sys::fuzz_target;

/// Refuse images above 4 Mpx, as a decompression-bomb guard would.
const MAX_PIXELS: u64 = 1 << 22;

fuzz_target!(|data: &[u8]| {
    let Ok(img) = decode_rgb(data, "fuzz-image", MAX_PIXELS) else { return };
    assert!(u64::from(img.width()) * u64::from(img.height()) <= MAX_PIXELS);
    for cfg in
        [PreprocessConfig::openai_clip(32), PreprocessConfig::new(40, 24, [0.5; 3], [0.25; 3])]
    {
        cfg.validate().expect("a valid config");
        let out = preprocess(&img, &cfg);
        assert_eq!(out.len(), 3 * cfg.crop * cfg.crop);
        assert!(out.iter().all(|v| v.is_finite()));
    }
});
