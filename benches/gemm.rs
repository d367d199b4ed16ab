//! Criterion bench of the GEMM kernels at M = K = 1024: the dense tiled and small-batch
//! kernels against the micro-structured ones on the same projected weights. Each iteration
//! submits one product and waits for the GPU. Throughput counts the dense product's FLOP.

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use microunify::BlockShape;
use microunify::bench::{random_compressed, random_weights};
use microunify::cpu::gemm::Epilogue;
use microunify::gpu::gemm::{Gemm, Path};
use microunify::gpu::{Gpu, GpuOptions};

fn gemm(c: &mut Criterion) {
    let gpu = match Gpu::new(&GpuOptions::default()) {
        Ok(g) => g,
        Err(e) => {
            eprintln!("\n*** SKIPPING gemm bench: no adapter ({e}) ***\n");
            return;
        }
    };
    let mut group = c.benchmark_group(format!("gemm/{}", gpu.info.name));
    group.sample_size(10);
    let size = 1024;
    let epi = Epilogue::default();
    for (block, prune, unify) in [(8, 0.0, 0.0), (8, 0.75, 0.0), (8, 0.9, 0.0), (4, 0.5, 0.4)] {
        let shape = BlockShape::new(block, block).expect("block shape");
        let cm = random_compressed(1, size, size, shape, prune, unify).expect("projection");
        for n in [1, 256] {
            let x = random_weights(2, size * n);
            let dense = Gemm::dense(&gpu, size, size, &cm.to_dense(), n, &epi, Path::Auto)
                .expect("dense gemm");
            let micro = Gemm::micro(&gpu, &cm, n, &epi, Path::Auto).expect("micro gemm");
            dense.write_x(&gpu, &x).expect("X");
            micro.write_x(&gpu, &x).expect("X");
            group.throughput(Throughput::Elements(dense.flops()));
            let case = format!("{size}x{size}x{n}_{shape}_p{prune}_u{unify}");
            group.bench_function(format!("dense_{case}"), |b| {
                b.iter(|| dense.run(&gpu).unwrap())
            });
            group.bench_function(format!("micro_{case}"), |b| {
                b.iter(|| micro.run(&gpu).unwrap())
            });
        }
    }
    group.finish();
}

criterion_group!(benches, gemm);
criterion_main!(benches);
