//! The compressed-file reader on arbitrary bytes: an error is fine, a panic, hang or
//! unbounded allocation is a bug.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let _ = microunify::format::CompressedFile::from_bytes(data);
});
