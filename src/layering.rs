//! The data model (blocks, the compressed matrix, the network layout) is plain data below
//! the GPU layer: the GPU code builds on it, never the other way round, so that it can be
//! used, tested and reasoned about without wgpu. This test fails if one of its files
//! names the GPU layer or wgpu in code (comments may still refer to them).

/// The data-model files, by name, with their source.
const DATA_MODEL: [(&str, &str); 3] = [
    ("src/block.rs", include_str!("block.rs")),
    ("src/compressed.rs", include_str!("compressed.rs")),
    ("src/layout.rs", include_str!("layout.rs")),
];

/// What code that reaches into the GPU layer or wgpu contains.
const GPU_PATHS: [&str; 3] = ["crate::gpu", "gpu::", "wgpu"];

/// The lines of `source` that name a GPU path outside a `//` comment.
fn gpu_lines(source: &str) -> Vec<(usize, &str)> {
    source
        .lines()
        .enumerate()
        .filter(|(_, line)| {
            let code = line.split("//").next().unwrap_or("");
            GPU_PATHS.iter().any(|p| code.contains(p))
        })
        .map(|(i, line)| (i + 1, line.trim()))
        .collect()
}

#[test]
fn the_data_model_does_not_import_the_gpu_layer() {
    for (file, source) in DATA_MODEL {
        let found = gpu_lines(source);
        assert!(
            found.is_empty(),
            "{file} reaches into the GPU layer (move that code into src/gpu/): {found:?}"
        );
    }
}

#[test]
fn gpu_paths_in_code_are_found_and_comments_are_not() {
    let src = "use crate::block::X;\n// see crate::gpu::packing\nuse crate::gpu::kernels;\nfn f(l: &wgpu::Limits) {}\n";
    let found: Vec<usize> = gpu_lines(src).iter().map(|(n, _)| *n).collect();
    assert_eq!(found, [3, 4]);
}
