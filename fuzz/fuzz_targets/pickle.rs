//! The `.bin` (torch.save zip + pickle) reader on arbitrary bytes, through the same code as
//! `clipit convert`.
#![no_main]

use clipit::convert::read_pickle_state_dict_from_bytes;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(tensors) = read_pickle_state_dict_from_bytes(data, "fuzz.bin") {
        for (name, t) in &tensors {
            let numel: usize = t.shape.iter().product();
            assert_eq!(t.data.len(), numel * t.dtype.bitsize() / 8, "tensor {name}: wrong size");
        }
    }
});
