//! Criterion bench of the batched projection (stats, GPU selection, apply + dual update)
//! on real networks' weight shapes, next to the vec4 copy on the same adapter. Each
//! iteration submits and waits for the GPU. Throughput counts the bytes a projection must
//! move (read W and U, write Z and U, compact outputs).

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use microunify::bench::ProjectionWorkload;
use microunify::gpu::copy::VecCopy;
use microunify::gpu::{Gpu, GpuOptions};
use microunify::{BlockShape, Ratios, nets};

fn projection(c: &mut Criterion) {
    let gpu = match Gpu::new(&GpuOptions::default()) {
        Ok(g) => g,
        Err(e) => {
            eprintln!("\n*** SKIPPING projection bench: no adapter ({e}) ***\n");
            return;
        }
    };
    let mut group = c.benchmark_group(format!("projection/{}", gpu.info.name));
    group.sample_size(10);
    let copy = VecCopy::new(&gpu, 64 << 20).expect("copy buffers");
    group.throughput(Throughput::Bytes(copy.bytes_moved()));
    group.bench_function("copy_vec4_64MiB", |b| b.iter(|| copy.run(&gpu).unwrap()));
    let ratios = Ratios::new(0.5, 0.3, "bench").unwrap();
    for shapes in [nets::lenet5(), nets::resnet18()] {
        let work = ProjectionWorkload::new(&gpu, &shapes, BlockShape::default(), ratios)
            .expect("workload");
        group.throughput(Throughput::Bytes(work.net.bytes_moved()));
        group.bench_function(format!("{}_4x4", shapes.name), |b| {
            b.iter(|| work.net.run(&gpu).unwrap())
        });
    }
    group.finish();
}

criterion_group!(benches, projection);
criterion_main!(benches);
