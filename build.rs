// Adds libtorch's directory to the rpath of binaries and test binaries (torch-sys does not),
// else they fail at start with "libtorch_cpu.so: cannot open shared object file".
// Only with the `train` feature; DEP_TCH_LIBTORCH_LIB comes from the direct torch-sys dependency.
fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    if std::env::var_os("CARGO_FEATURE_TRAIN").is_none() {
        return;
    }
    if let Ok(dir) = std::env::var("DEP_TCH_LIBTORCH_LIB") {
        println!("cargo:rustc-link-arg=-Wl,-rpath,{dir}");
    }
}
