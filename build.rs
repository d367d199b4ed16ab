// Always: reflects the WGSL kernels (build/shaders.rs) into $OUT_DIR/kernels.rs.
// With the `train` feature:
// - adds libtorch's directory to the rpath of binaries and test binaries (torch-sys does
//   not), else they fail at start with "libtorch_cpu.so: cannot open shared object file";
// - compiles src/train/named_buffers.cpp against the same libtorch (tch has no call for a
//   TorchScript module's buffers).
// DEP_TCH_LIBTORCH_LIB comes from the direct torch-sys dependency.
use std::path::Path;

#[path = "build/shaders.rs"]
mod shaders;

const BUFFERS_CPP: &str = "src/train/named_buffers.cpp";

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-changed={BUFFERS_CPP}");
    println!("cargo:rerun-if-changed=build/shaders.rs");
    let manifest = std::env::var_os("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR");
    let out = std::env::var_os("OUT_DIR").expect("cargo sets OUT_DIR");
    if let Err(message) = shaders::generate(Path::new(&manifest), Path::new(&out)) {
        eprintln!("{message}");
        std::process::exit(1);
    }
    if std::env::var_os("CARGO_FEATURE_TRAIN").is_none() {
        return;
    }
    let Ok(lib) = std::env::var("DEP_TCH_LIBTORCH_LIB") else {
        panic!("torch-sys did not say where libtorch is (DEP_TCH_LIBTORCH_LIB)");
    };
    println!("cargo:rustc-link-arg=-Wl,-rpath,{lib}");
    // libtorch_cuda registers CUDA with libtorch from its static initialisers; nothing
    // references it by symbol, so the linker's --as-needed would drop it. scripts/setup
    // --cuda sets this once the CUDA libraries it needs are installed beside libtorch.
    println!("cargo:rerun-if-env-changed=MICROUNIFY_LINK_CUDA");
    if std::env::var("MICROUNIFY_LINK_CUDA").is_ok_and(|v| v == "1") {
        for arg in ["-Wl,--no-as-needed", "-ltorch_cuda", "-Wl,--as-needed"] {
            println!("cargo:rustc-link-arg={arg}");
        }
    }
    let include = Path::new(&lib)
        .parent()
        .map(|p| p.join("include"))
        .expect("libtorch's lib folder has a parent");
    let abi = std::env::var("LIBTORCH_CXX11_ABI").unwrap_or_else(|_| "1".into());
    println!("cargo:rerun-if-env-changed=LIBTORCH_CXX11_ABI");
    let mut b = cc::Build::new();
    b.cpp(true)
        .include(&include)
        .include(include.join("torch/csrc/api/include"))
        .flag_if_supported("-std=c++17")
        .flag_if_supported("/std:c++17")
        .define("_GLIBCXX_USE_CXX11_ABI", abi.as_str())
        .define("GLOG_USE_GLOG_EXPORT", None)
        .warnings(false)
        .file(BUFFERS_CPP);
    b.compile("microunify_named_buffers");
}
