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
    // The list build.rs saw under shaders/; it refuses a file no kernel requires.
    for name in kernels::WGSL_FILES {
        let used = kernels::PRELUDES.contains(name) || kernels::ALL.iter().any(|k| k.file == *name);
        assert!(
            used,
            "shaders/{name} is neither a kernel in kernels::ALL nor a prelude"
        );
    }
    for k in kernels::ALL {
        assert!(kernels::WGSL_FILES.contains(&k.file), "{}", k.file);
        for p in k.preludes() {
            assert!(kernels::PRELUDES.contains(p), "{}: {p}", k.file);
        }
    }
    assert_eq!(
        kernels::WGSL_FILES.len(),
        kernels::ALL.len() + kernels::PRELUDES.len()
    );
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
