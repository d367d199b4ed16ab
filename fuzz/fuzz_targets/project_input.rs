//! The input side of `microunify project` on arbitrary bytes: a safetensors checkpoint (or
//! an earlier compressed file) parsed, selected and turned into layer specs, as the binary
//! does before opening a GPU.
#![no_main]

use microunify::format::input::{ProjectInput, Selection};

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    if let Ok(input) = ProjectInput::parse(data, &Selection::default()) {
        let _ = input.specs(microunify::BlockShape::default());
    }
});
