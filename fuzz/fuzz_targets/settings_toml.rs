//! train-gpu's TOML settings on arbitrary text: parsed, then resolved into checked
//! settings (no file or device is opened), and the resolved form written back as TOML.
#![no_main]

use microunify::train::settings::FileConfig;
use std::path::Path;

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(file) = FileConfig::parse(text, Path::new("fuzz.toml"))
        && let Ok(settings) = file.resolve()
    {
        let _ = settings.to_toml();
    }
});
