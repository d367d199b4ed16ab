//! Every WGSL kernel parses, validates and takes its override constants, with naga alone:
//! no device needed, so this runs everywhere.

use microunify::gpu::kernels;

#[test]
fn every_kernel_validates() {
    for k in kernels::ALL {
        if let Err(e) = kernels::validate(k) {
            panic!("{e}");
        }
    }
}

#[test]
fn every_wgsl_file_belongs_to_a_kernel() {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/shaders");
    let mut seen = 0;
    for entry in std::fs::read_dir(dir).unwrap() {
        let name = entry.unwrap().file_name().into_string().unwrap();
        if !name.ends_with(".wgsl") {
            continue;
        }
        seen += 1;
        let used = kernels::PRELUDES.iter().any(|(f, _)| *f == name)
            || kernels::ALL.iter().any(|k| k.file == name);
        assert!(
            used,
            "shaders/{name} is not registered in src/gpu/kernels.rs"
        );
    }
    assert!(seen >= kernels::ALL.len());
}

#[test]
fn a_broken_shader_is_reported_with_its_file() {
    // Guards the validator itself: a type error must not slip through parsing alone.
    let src = "@compute @workgroup_size(1) fn main() { let x: u32 = 1.5; }";
    let module = naga::front::wgsl::parse_str(src);
    let failed = match module {
        Err(_) => true,
        Ok(m) => naga::valid::Validator::new(
            naga::valid::ValidationFlags::all(),
            naga::valid::Capabilities::default(),
        )
        .validate(&m)
        .is_err(),
    };
    assert!(failed);
}
