//! Reading the reference outputs that `tests/reference/*.py` write as safetensors (f32 tensors,
//! int64 token ids) and the relative error the parity tests compare them with. Included with
//! `#[path]` by the tests that need it (native and wasm32 alike).
#![allow(dead_code)]

use safetensors::SafeTensors;

fn parse(bytes: &[u8]) -> SafeTensors<'_> {
    SafeTensors::deserialize(bytes).expect("a safetensors file")
}

/// Little-endian values of `name`, which must be of `dtype` (elements of `N` bytes), and its shape.
fn values<T, const N: usize>(
    bytes: &[u8],
    name: &str,
    dtype: safetensors::Dtype,
    from_le: fn([u8; N]) -> T,
) -> (Vec<T>, Vec<usize>) {
    let st = parse(bytes);
    let t = st.tensor(name).unwrap_or_else(|_| panic!("{name} missing"));
    assert_eq!(t.dtype(), dtype, "{name}");
    let v = t.data().chunks_exact(N).map(|b| from_le(b.try_into().unwrap())).collect();
    (v, t.shape().to_vec())
}

/// Every tensor name in the file.
pub fn names(bytes: &[u8]) -> Vec<String> {
    parse(bytes).names().into_iter().map(String::from).collect()
}

/// Whether the file holds `name`.
pub fn has(bytes: &[u8], name: &str) -> bool {
    parse(bytes).names().contains(&name)
}

/// An f32 tensor's values and shape.
pub fn f32s(bytes: &[u8], name: &str) -> (Vec<f32>, Vec<usize>) {
    values(bytes, name, safetensors::Dtype::F32, f32::from_le_bytes)
}

/// An int64 tensor's values and shape.
pub fn i64s(bytes: &[u8], name: &str) -> (Vec<i64>, Vec<usize>) {
    values(bytes, name, safetensors::Dtype::I64, i64::from_le_bytes)
}

/// A `[rows, cols]` int64 tensor of token ids, one row per text.
pub fn token_ids(bytes: &[u8], name: &str) -> Vec<Vec<u32>> {
    let (v, shape) = i64s(bytes, name);
    v.chunks(shape[1]).map(|row| row.iter().map(|&id| id as u32).collect()).collect()
}

/// max|got − want| / max|want|.
pub fn rel_err(got: &[f32], want: &[f32]) -> f32 {
    assert_eq!(got.len(), want.len(), "length");
    let max_ref = want.iter().fold(0f32, |m, v| m.max(v.abs()));
    let max_diff = got.iter().zip(want).fold(0f32, |m, (a, b)| m.max((a - b).abs()));
    max_diff / max_ref.max(f32::MIN_POSITIVE)
}
