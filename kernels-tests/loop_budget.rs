//! Lavapipe's loop budget and the kernels' share of it (the model: src/gpu/loops.rs).
//!
//! `lavapipe_spends_one_budget_per_simd_group` measures the rule the model counts by, on
//! the adapter (where it has such a limiter). `every_kernel_model_matches_its_shader` reads
//! each kernel's loop structure back from its WGSL with naga and compares it with the
//! model, so a loop added, removed or moved in a shader fails until the model follows.
//! `projection_kernels_stay_within_the_share` bounds what each projection kernel can spend
//! at MAX_BLOCK_SIDE; `every_host_gemm_variant_runs_its_main_loop_within_the_share` checks
//! the GEMM host's slicing of every variant it builds, at the edges of a slice and of K.

mod common;

use microunify::gpu::Gpu;
use microunify::gpu::kernels::gemm_dense_tiled::TILES;
use microunify::gpu::kernels::{self, Kernel, gemm_micro_tiled};
use microunify::gpu::loops::{self, BUDGET, GemmKernel, Node, SHARE, active, lp, masked, outline};
use naga::{Block, Statement};

// ---------------------------------------------------------------------------------------
// Loop structure of a shader, from naga
// ---------------------------------------------------------------------------------------

/// The shape of a node list: loops and loop-holding branches, nested, without trip counts.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Shape {
    Loop(Vec<Shape>),
    If(Vec<Shape>, Vec<Shape>),
}

fn model_shape(nodes: &[Node]) -> Vec<Shape> {
    nodes
        .iter()
        .map(|n| match n {
            Node::Loop { body, .. } => Shape::Loop(model_shape(body)),
            Node::If {
                then, otherwise, ..
            } => Shape::If(model_shape(then), model_shape(otherwise)),
        })
        .collect()
}

/// The loops of a naga block, function calls inlined (as the driver inlines them).
fn naga_shape(module: &naga::Module, block: &Block) -> Vec<Shape> {
    let mut out = Vec::new();
    for stmt in block.iter() {
        match stmt {
            Statement::Block(b) => out.extend(naga_shape(module, b)),
            Statement::Loop {
                body, continuing, ..
            } => {
                let mut inner = naga_shape(module, body);
                inner.extend(naga_shape(module, continuing));
                out.push(Shape::Loop(inner));
            }
            Statement::If { accept, reject, .. } => {
                let (a, r) = (naga_shape(module, accept), naga_shape(module, reject));
                if !a.is_empty() || !r.is_empty() {
                    out.push(Shape::If(a, r));
                }
            }
            Statement::Switch { cases, .. } => {
                assert!(
                    cases.iter().all(|c| naga_shape(module, &c.body).is_empty()),
                    "a switch holding loops: extend the model"
                );
            }
            Statement::Call { function, .. } => {
                out.extend(naga_shape(module, &module.functions[*function].body));
            }
            _ => {}
        }
    }
    out
}

fn shader_shape(kernel: &Kernel) -> Vec<Shape> {
    let src = kernel.source();
    let module = naga::front::wgsl::parse_str(src).unwrap_or_else(|e| panic!("{e}"));
    let main = module
        .entry_points
        .iter()
        .find(|e| e.name == "main")
        .expect("entry point main");
    naga_shape(&module, &main.function.body)
}

/// A `const` of the shader (e.g. RADIX), as naga reads it.
fn shader_const(kernel: &Kernel, name: &str) -> u64 {
    let module = naga::front::wgsl::parse_str(kernel.source()).unwrap();
    let (_, c) = module
        .constants
        .iter()
        .find(|(_, c)| c.name.as_deref() == Some(name))
        .unwrap_or_else(|| panic!("{} has no const {name}", kernel.file));
    match module.global_expressions[c.init] {
        naga::Expression::Literal(naga::Literal::U32(v)) => v as u64,
        ref e => panic!("{name} = {e:?}"),
    }
}

// ---------------------------------------------------------------------------------------
// The models against the shaders and the budget
// ---------------------------------------------------------------------------------------

fn check_shape(kernel: &Kernel, model: &[Node]) {
    assert_eq!(
        shader_shape(kernel),
        model_shape(model),
        "shaders/{}: its loops no longer match the model in src/gpu/loops.rs; update the \
         model (trip counts included) with the shader",
        kernel.file
    );
}

#[test]
fn every_kernel_model_matches_its_shader() {
    for (kernel, model) in loops::projection_at_limit() {
        check_shape(&kernel, &model);
    }
    // Override constants set trip counts, not the structure: one configuration each.
    for k in [
        GemmKernel::Dense { tm: 8 },
        GemmKernel::DenseSmall { nb: 3 },
        GemmKernel::Micro {
            tm: 4,
            nv: 4,
            bc: 5,
        },
        GemmKernel::MicroSmall {
            rl: 2,
            bc: 8,
            nb: 4,
        },
        GemmKernel::DenseTiled(TILES[1]),
        GemmKernel::MicroTiled(gemm_micro_tiled::Shape::new(TILES[0], 5, 13, 3, 40)),
    ] {
        check_shape(&k.kernel(), &loops::gemm(k, 7));
    }
    check_shape(&kernels::GEMM_SIGN_TABLE, &loops::gemm_sign_table());
    for (kernel, model) in loops::network_at_limit() {
        check_shape(&kernel, &model);
    }
    // The radix the model counts is the shaders' own.
    assert_eq!(
        shader_const(&kernels::RADIX_RESOLVE, "RADIX"),
        kernels::RADIX as u64
    );
    // Every kernel the library dispatches is modelled.
    let modelled = loops::projection_at_limit().len() + 7 + loops::network_at_limit().len();
    assert_eq!(modelled, kernels::ALL.len());
}

#[test]
fn projection_kernels_stay_within_the_share() {
    for (kernel, model) in loops::projection_at_limit() {
        let spent = active(&model);
        eprintln!(
            "{}: at most {spent} of {BUDGET} loop iterations per invocation: {}",
            kernel.file,
            outline(&model)
        );
        assert!(
            spent <= SHARE,
            "shaders/{}: up to {spent} loop iterations per invocation at the block-side \
             limit, more than {SHARE} of lavapipe's {BUDGET}",
            kernel.file
        );
    }
    // Twice the side would not fit: the bound is not vacuous.
    let doubled = loops::projection(2 * microunify::block::MAX_BLOCK_SIDE as u64);
    assert!(doubled.iter().any(|(_, m)| active(m) > SHARE));
}

#[test]
fn network_kernels_stay_within_the_share() {
    for (kernel, model) in loops::network_at_limit() {
        let spent = active(&model);
        assert!(
            spent <= SHARE,
            "shaders/{}: up to {spent} loop iterations per invocation at the window and \
             class limits, more than {SHARE} of lavapipe's {BUDGET}",
            kernel.file
        );
    }
    // Twice the class limit would not fit: the bound is not vacuous.
    assert!(active(&loops::argmax(2 * loops::MAX_CLASSES + 2)) > SHARE);
}

#[test]
fn gemm_slices_keep_within_the_share() {
    for bc in 1..=microunify::block::MAX_BLOCK_SIDE as u64 {
        for (tm, nv) in [(1, 4), (4, 4), (8, 2)] {
            let k = GemmKernel::Micro { tm, nv, bc };
            assert!(
                active(&loops::gemm(k, loops::gemm_slice_len(k))) <= SHARE,
                "{k:?}"
            );
        }
        for br in [1, 3, 8, 17, 32] {
            for t in TILES {
                for n in [1, 1000] {
                    let s = gemm_micro_tiled::Shape::new(t, br, bc as usize, 32, n);
                    let k = GemmKernel::MicroTiled(s);
                    assert!(
                        active(&loops::gemm(k, loops::gemm_slice_len(k))) <= SHARE,
                        "{k:?}"
                    );
                }
            }
        }
        for (rl, nb) in [(1, 8), (4, 2), (4, 1)] {
            let k = GemmKernel::MicroSmall { rl, bc, nb };
            assert!(
                active(&loops::gemm(k, loops::gemm_slice_len(k))) <= SHARE,
                "{k:?}"
            );
        }
    }
    let tiled = TILES.map(GemmKernel::DenseTiled);
    for k in [
        GemmKernel::Dense { tm: 8 },
        GemmKernel::DenseSmall { nb: 8 },
    ]
    .into_iter()
    .chain(tiled)
    {
        assert!(active(&loops::gemm(k, loops::gemm_slice_len(k))) <= SHARE);
    }
    assert!(active(&loops::gemm_sign_table()) <= SHARE);
}

/// `slice_range` of gemm_params.wgsl: slice `i`'s part of a main loop over `[0, trips)`.
fn slice_range(i: usize, len: usize, trips: usize) -> (usize, usize) {
    let lo = (i * len).min(trips);
    (lo, (lo + len).min(trips))
}

/// Main-loop lengths at the edges of one slice and of the dense kernels' K: a loop of
/// one slice, one more, two and one more; K = 262,140 ± 4 as vec4s of K (around lavapipe's
/// 65,535) and as entries of one block row of 1-column blocks.
fn edge_trips(slice_len: usize) -> Vec<usize> {
    let mut t = vec![
        0,
        1,
        slice_len - 1,
        slice_len,
        slice_len + 1,
        2 * slice_len + 1,
    ];
    t.extend((262_136..=262_144).map(|k: usize| k.div_ceil(4)));
    t.extend(262_136..=262_144);
    t
}

#[test]
fn every_host_gemm_variant_runs_its_main_loop_within_the_share() {
    let variants = microunify::gpu::gemm::all_variants();
    for v in &variants {
        let (len, slices_at_one) = microunify::gpu::gemm::slicing(v.loops, 1);
        assert_eq!(slices_at_one, 1);
        let spent = active(&loops::gemm(v.loops, len as u64));
        assert!(
            spent <= SHARE,
            "{:?} ({}): one slice of {len} spends {spent} of {BUDGET}",
            v.loops,
            v.kernel.file
        );
        for trips in edge_trips(len) {
            let (len, slices) = microunify::gpu::gemm::slicing(v.loops, trips);
            // The slices cover the loop exactly, in order, none longer than the model's.
            let mut next = 0;
            for i in 0..slices {
                let (lo, hi) = slice_range(i, len, trips);
                assert!(
                    lo == next && hi - lo <= len,
                    "{:?}: slice {i} of {trips}",
                    v.loops
                );
                next = hi;
            }
            assert_eq!(
                next, trips,
                "{:?}: {slices} slices of {len} miss some of {trips}",
                v.loops
            );
            assert!(
                slices == 1 || slice_range(slices - 1, len, trips).0 < trips,
                "{:?}: an empty last slice for {trips}",
                v.loops
            );
        }
    }
    eprintln!(
        "{} GEMM variants slice within {SHARE} of {BUDGET}",
        variants.len()
    );
}

// ---------------------------------------------------------------------------------------
// The rule, measured on the adapter
// ---------------------------------------------------------------------------------------

/// Runs `body` (WGSL statements; `g` is the invocation index, `p` the parameters, `out`
/// the results) in `invocations` invocations of 64-wide workgroups; returns `out`.
fn probe(gpu: &Gpu, body: &str, params: &[u32], invocations: u32, out_len: usize) -> Vec<u32> {
    use wgpu::util::DeviceExt;
    let src = format!(
        "@group(0) @binding(0) var<storage, read_write> out: array<u32>;
@group(0) @binding(1) var<storage, read> p: array<u32>;
@compute @workgroup_size(64)
fn main(@builtin(global_invocation_id) gid: vec3<u32>) {{
    let g = gid.x;
    if (g >= {invocations}u) {{
        return;
    }}
{body}
}}"
    );
    let pipeline = common::raw_pipeline(gpu, "loop probe", &src);
    let out = gpu.device.create_buffer(&wgpu::BufferDescriptor {
        label: Some("loop probe out"),
        size: (out_len * 4) as u64,
        usage: wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::COPY_SRC,
        mapped_at_creation: false,
    });
    let p = gpu
        .device
        .create_buffer_init(&wgpu::util::BufferInitDescriptor {
            label: Some("loop probe params"),
            contents: bytemuck::cast_slice(params),
            usage: wgpu::BufferUsages::STORAGE,
        });
    let bind = gpu.device.create_bind_group(&wgpu::BindGroupDescriptor {
        label: None,
        layout: &pipeline.get_bind_group_layout(0),
        entries: &[
            wgpu::BindGroupEntry {
                binding: 0,
                resource: out.as_entire_binding(),
            },
            wgpu::BindGroupEntry {
                binding: 1,
                resource: p.as_entire_binding(),
            },
        ],
    });
    let mut encoder = gpu.device.create_command_encoder(&Default::default());
    {
        let mut pass = encoder.begin_compute_pass(&Default::default());
        pass.set_pipeline(&pipeline);
        pass.set_bind_group(0, &bind, &[]);
        pass.dispatch_workgroups(invocations.div_ceil(64), 1, 1);
    }
    gpu.submit_and_wait("loop probe", encoder.finish()).unwrap();
    microunify::gpu::buffers::read_ranges(gpu, "loop probe", &[(&out, 0, (out_len * 4) as u64)])
        .unwrap()
        .remove(0)
}

/// A loop that counts its iterations into `name`, `trips` of them.
fn counting_loop(name: &str, trips: &str) -> String {
    format!("var {name} = 0u; for (var i = 0u; i < {trips}; i++) {{ {name} += 1u; }}")
}

#[test]
fn lavapipe_spends_one_budget_per_simd_group() {
    let Some(gpu) = common::gpu() else { return };
    // One loop of 100,000 iterations: a limiter shows as 65,535.
    let one = format!("{} out[g] = a;", counting_loop("a", "p[0]"));
    let ran = probe(&gpu, &one, &[100_000], 1, 1)[0] as u64;
    if ran == 100_000 {
        eprintln!(
            "{}: no loop limiter; the model bounds lavapipe only",
            gpu.info.name
        );
        return;
    }
    assert_eq!(
        ran, BUDGET,
        "{}: a loop limiter, but not gallivm's",
        gpu.info.name
    );

    // Two sequential loops of 40,000: the second gets what the first left (T + 1 spent).
    let seq = format!(
        "{} {} out[2u * g] = a; out[2u * g + 1u] = b;",
        counting_loop("a", "p[0]"),
        counting_loop("b", "p[0]")
    );
    let r = probe(&gpu, &seq, &[40_000], 1, 2);
    assert_eq!(r, [40_000, (BUDGET - 40_001) as u32], "sequential loops");

    // Nested 100 × 10, then a long loop: 100·(1 + 11) + 2 spent before it.
    let nested = format!(
        "var a = 0u; for (var i = 0u; i < p[0]; i++) {{ for (var j = 0u; j < p[1]; j++) {{ a += 1u; }} }}
         {} out[2u * g] = a; out[2u * g + 1u] = c;",
        counting_loop("c", "200000u")
    );
    let r = probe(&gpu, &nested, &[100, 10], 1, 2);
    let before = active(&[lp("outer", 100, vec![lp("inner", 10, vec![])])]);
    assert_eq!(r, [1000, (BUDGET - before) as u32], "nested loops");
    // 300 × 300 = 90,000 inner iterations do not fit: the nest is cut short.
    let r = probe(&gpu, &nested, &[300, 300], 1, 2);
    assert!(
        r[0] < 90_000 && r[1] == 1,
        "nested loops past the budget: {r:?}"
    );

    // A loop inside a branch no lane takes still spends 1 per entry.
    let never = format!(
        "var a = 0u; for (var i = 0u; i < p[0]; i++) {{ if (g == 999999u) {{ for (var j = 0u; j < p[1]; j++) {{ a += 1u; }} }} }}
         {} out[2u * g] = a; out[2u * g + 1u] = c;",
        counting_loop("c", "200000u")
    );
    let r = probe(&gpu, &never, &[100, 5], 1, 2);
    let before = active(&[lp("outer", 100, vec![])]) + 101 * masked(&[lp("never", 5, vec![])]);
    assert_eq!(r, [0, (BUDGET - before) as u32], "masked loops");

    // Lane g runs 1000 + 100·g iterations, then a long loop: every lane of a SIMD group
    // is left what its longest lane left, and groups are independent.
    let lanes = 32u32;
    let divergent = format!(
        "{} {} out[2u * g] = a; out[2u * g + 1u] = c;",
        counting_loop("a", "p[0] + g * p[1]"),
        counting_loop("c", "200000u")
    );
    let r = probe(&gpu, &divergent, &[1000, 100], lanes, 2 * lanes as usize);
    // The SIMD width, from what lane 0 was left: its group's longest lane is width − 1.
    let width = ((BUDGET - 1 - r[1] as u64 - 1000) / 100 + 1) as u32;
    assert!(
        [4, 8, 16].contains(&width),
        "lane 0 was left {}: SIMD width {width}?",
        r[1]
    );
    for g in 0..lanes {
        let longest = 1000 + 100 * ((g / width + 1) * width - 1) as u64;
        assert_eq!(
            r[2 * g as usize + 1] as u64,
            BUDGET - longest - 1,
            "lane {g} (SIMD width {width})"
        );
    }
    eprintln!(
        "{}: measured one budget of {BUDGET} loop iterations per SIMD group of {width} lanes",
        gpu.info.name
    );
}
