//! The IDX (MNIST-format) reader on arbitrary bytes, plain or gzipped, as an image file
//! (3 dimensions) and as a label file (1 dimension). The size bound is lower than the
//! reader's own (16 GiB) so that a header claiming a huge legal body cannot exhaust the
//! fuzzer's memory; the bounding logic is the same.
#![no_main]

use microunify::data::idx::decode_idx_u8;
use std::path::Path;

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    for dims in [3, 1] {
        let _ = decode_idx_u8(Path::new("fuzz.idx"), data, dims, 64 << 20);
    }
});
