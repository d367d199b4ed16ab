//! The train-gpu checkpoint reader on arbitrary bytes, twice: as given (the checksum turns
//! almost every mutation away) and resealed with a fresh checksum, so that mutations reach
//! the range checks and the check against the run's configuration.
#![no_main]

use microunify::train::checkpoint::{Checkpoint, reseal};
use std::path::Path;

fn read(bytes: &[u8]) {
    if let Ok(c) = Checkpoint::from_bytes(bytes, Path::new("fuzz.safetensors")) {
        // A TorchScript run's module is libtorch's to parse; the built-ins' is ours.
        if c.module.is_none()
            && let Ok(info) = c.model_info(&c.progress.config)
        {
            let _ = c.check_against(&c.progress.config, &info);
        }
    }
}

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    read(data);
    if let Some(sealed) = reseal(data) {
        read(&sealed);
    }
});
