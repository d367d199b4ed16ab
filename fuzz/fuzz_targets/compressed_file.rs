//! The compressed-file reader on arbitrary bytes, twice: as given (the layers' checksums
//! turn almost every mutation of their data away) and resealed with fresh checksums, so
//! that mutations reach the checks behind them. An error is fine, a panic, hang or
//! unbounded allocation is a bug.
#![no_main]

use microunify::format::{CompressedFile, reseal};

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let _ = CompressedFile::from_bytes(data);
    if let Some(sealed) = reseal(data) {
        let _ = CompressedFile::from_bytes(&sealed);
    }
});
