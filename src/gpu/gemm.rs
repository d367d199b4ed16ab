//! The GEMM host: `Y = W·X (+ bias) (ReLU)` on the GPU with W dense or micro-structured.
//! Weights are uploaded once; X is written and Y computed as many times as wanted.

use crate::compressed::{CompressedMatrix, UNIFIED_FLAG};
use crate::cpu::gemm::{Epilogue, check_shapes};
use crate::error::{Error, Result};
use crate::gpu::Gpu;
use crate::gpu::buffers::{read_ranges, storage, storage_init, uniform_slots, uniform_stride};
use crate::gpu::kernels::gemm_params::GemmParams;
use crate::gpu::kernels::{
    self, Bound, Kernel, gemm_dense, gemm_dense_small, gemm_micro, gemm_micro_small,
    gemm_sign_table,
};
use crate::gpu::loops::{self, GemmKernel};

/// Which kernel family runs the product.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Path {
    /// The small-batch kernels for `N ≤ 8` (where they apply), else the tiled ones.
    #[default]
    Auto,
    /// The register-blocked kernels, lanes along N (any N).
    Tiled,
    /// The bandwidth-oriented kernels, `N ≤ 8`; the micro one needs block columns of
    /// 4, 8, 16 or a multiple of 32.
    SmallBatch,
}

/// A GEMM ready to run: weights, bias and parameters resident, X and Y allocated.
pub struct Gemm {
    pub m: usize,
    pub k: usize,
    pub n: usize,
    /// Whether W is micro-structured (else dense).
    pub micro: bool,
    /// Whether the small-batch kernel runs (else the tiled one).
    pub small: bool,
    /// Rows of X as stored (K padded with zero rows); the X^T row length when `small`.
    x_rows: usize,
    /// vec4s per row of Y (and of X on the tiled path).
    n4: usize,
    /// Rows of Y as stored.
    m_pad: usize,
    x: wgpu::Buffer,
    y: wgpu::Buffer,
    pipeline: wgpu::ComputePipeline,
    /// One bind group per slice of the main loop (src/gpu/loops.rs), dispatched in order.
    slices: Vec<wgpu::BindGroup>,
    dispatch: (u32, u32),
    /// The signed-sum table pass that runs before the micro small-batch kernel.
    table: Option<(wgpu::ComputePipeline, wgpu::BindGroup, (u32, u32))>,
    weight_bytes: u64,
    label: String,
}

/// The compressed matrix rearranged for the kernels: per block row its dense entries, then
/// its unified ones (so kernels run two branch-free loops), and each unified block's
/// magnitude stored next to its sign words.
struct MicroBuffers {
    rows: Vec<[u32; 4]>,
    entries: Vec<[u32; 2]>,
    unified: Vec<u32>,
}

fn bad(why: String) -> Error {
    Error::Shape {
        layer: "<gemm>".into(),
        why,
    }
}

/// Checks every index of `w` (so a malformed matrix can never make a kernel read out of
/// bounds) and builds the kernels' layout.
fn micro_buffers(w: &CompressedMatrix, vec4_tiles: bool) -> Result<MicroBuffers> {
    let grid = w.grid();
    let (brs, bcs) = (grid.block_rows(), grid.block_cols());
    let tile = w.block.len();
    let wpb = w.words_per_block();
    if w.row_ptr.len() != brs + 1 || w.row_ptr[0] != 0 {
        return Err(bad(format!(
            "row_ptr has {} offsets for {brs} block rows",
            w.row_ptr.len()
        )));
    }
    if w.row_ptr[brs] as usize != w.entries.len() || w.row_ptr.windows(2).any(|p| p[0] > p[1]) {
        return Err(bad(format!(
            "row_ptr is not a non-decreasing index of {} entries",
            w.entries.len()
        )));
    }
    if w.signs.len() != w.magnitudes.len() * wpb {
        return Err(bad(format!(
            "{} sign words for {} unified blocks of {wpb} words",
            w.signs.len(),
            w.magnitudes.len()
        )));
    }
    let mut out = MicroBuffers {
        rows: Vec::with_capacity(brs),
        entries: Vec::with_capacity(w.entries.len()),
        unified: Vec::with_capacity(w.magnitudes.len() * (wpb + 1)),
    };
    let mut uni = Vec::new();
    for r in 0..brs {
        let start = out.entries.len() as u32;
        uni.clear();
        for (e, &[col, payload]) in w.entries[w.row_ptr[r] as usize..w.row_ptr[r + 1] as usize]
            .iter()
            .enumerate()
        {
            if col as usize >= bcs {
                return Err(bad(format!(
                    "entry {e} of block row {r}: block column {col} of {bcs}"
                )));
            }
            if payload & UNIFIED_FLAG == 0 {
                let off = payload as usize;
                if off + tile > w.values.len() || (vec4_tiles && !off.is_multiple_of(4)) {
                    return Err(bad(format!(
                        "entry {e} of block row {r}: tile offset {off} with {} values",
                        w.values.len()
                    )));
                }
                out.entries.push([col, payload]);
            } else {
                let u = payload & !UNIFIED_FLAG;
                if u as usize >= w.magnitudes.len() {
                    return Err(bad(format!(
                        "entry {e} of block row {r}: unified block {u} of {}",
                        w.magnitudes.len()
                    )));
                }
                uni.push([col, u]);
            }
        }
        let split = out.entries.len() as u32;
        out.entries.extend_from_slice(&uni);
        out.rows.push([start, split, out.entries.len() as u32, 0]);
    }
    // A spare entry: gemm_micro loads the next entry one iteration ahead.
    out.entries.push([0, 0]);
    for (u, a) in w.magnitudes.iter().enumerate() {
        out.unified.push(a.to_bits());
        out.unified
            .extend_from_slice(&w.signs[u * wpb..(u + 1) * wpb]);
    }
    Ok(out)
}

/// The largest divisor of `br` that is at most `cap` (rows a workgroup owns in a block row).
fn rows_per_group(br: usize, cap: usize) -> usize {
    (1..=cap.min(br))
        .rev()
        .find(|d| br.is_multiple_of(*d))
        .unwrap_or(1)
}

/// Refuses a buffer larger than one storage binding, naming the adapter's limit.
fn fits(gpu: &Gpu, what: &str, bytes: u64) -> Result<()> {
    let l = gpu.limits();
    let cap = l.max_storage_buffer_binding_size.min(l.max_buffer_size);
    if bytes > cap {
        return Err(Error::TooLarge(format!(
            "GEMM {what} needs {bytes} bytes in one binding; this adapter's \
             max_storage_buffer_binding_size is {} and max_buffer_size {}",
            l.max_storage_buffer_binding_size, l.max_buffer_size
        )));
    }
    Ok(())
}

/// Whether the small-batch kernels take a product of `n` columns (`micro_bc`: the block
/// columns of a micro-structured W, `None` for a dense one): N ≤ 8, and gemm_micro_small
/// reads tile rows as vec4s and each row's sign bits from one word.
pub fn small_batch_takes(n: usize, micro_bc: Option<usize>) -> bool {
    n <= kernels::SMALL_MAX_N && micro_bc.is_none_or(small_batch_block_cols)
}

fn small_batch_block_cols(bc: usize) -> bool {
    bc.is_multiple_of(4) && (32 % bc == 0 || bc.is_multiple_of(32))
}

fn choose_small(path: Path, n: usize, micro_bc: Option<usize>) -> Result<bool> {
    let vec4_ok = micro_bc.is_none_or(small_batch_block_cols);
    match path {
        Path::Auto => Ok(small_batch_takes(n, micro_bc)),
        Path::Tiled => Ok(false),
        Path::SmallBatch if n > kernels::SMALL_MAX_N => Err(bad(format!(
            "the small-batch path takes N ≤ {}, got {n}",
            kernels::SMALL_MAX_N
        ))),
        Path::SmallBatch if !vec4_ok => Err(bad(
            "the micro small-batch path needs block columns of 4, 8, 16 or a multiple of 32".into(),
        )),
        Path::SmallBatch => Ok(true),
    }
}

/// The weight-side data of a product, as the kernels read it.
enum Weights<'a> {
    Dense {
        w: &'a [u8],
    },
    Micro {
        rows: &'a [u8],
        entries: &'a [u8],
        values: &'a [u8],
        unified: &'a [u8],
    },
}

/// The weight-side buffers on the GPU.
enum WeightBuffers {
    Dense {
        w: wgpu::Buffer,
    },
    Micro {
        rows: wgpu::Buffer,
        entries: wgpu::Buffer,
        values: wgpu::Buffer,
        unified: wgpu::Buffer,
    },
}

impl Weights<'_> {
    /// Each buffer's label and contents.
    fn parts(&self) -> Vec<(&'static str, &[u8])> {
        match *self {
            Self::Dense { w } => vec![("gemm W", w)],
            Self::Micro {
                rows,
                entries,
                values,
                unified,
            } => vec![
                ("gemm rows", rows),
                ("gemm entries", entries),
                ("gemm values", values),
                ("gemm unified", unified),
            ],
        }
    }

    fn upload(&self, gpu: &Gpu) -> WeightBuffers {
        let up = |label: &str, bytes: &[u8]| storage_init::<u8>(gpu, label, bytes);
        match *self {
            Self::Dense { w } => WeightBuffers::Dense { w: up("gemm W", w) },
            Self::Micro {
                rows,
                entries,
                values,
                unified,
            } => WeightBuffers::Micro {
                rows: up("gemm rows", rows),
                entries: up("gemm entries", entries),
                values: up("gemm values", values),
                unified: up("gemm unified", unified),
            },
        }
    }
}

/// Everything a constructor hands to [`Gemm::build`].
struct Plan<'a> {
    micro: bool,
    small: bool,
    m: usize,
    k: usize,
    n: usize,
    x_rows: usize,
    m_pad: usize,
    /// Rows per workgroup (tiled path) or per invocation (micro small-batch path).
    tm: usize,
    /// vec4 columns of Y per invocation on the tiled path.
    nv: usize,
    kernel: Kernel,
    constants: Vec<(&'static str, f64)>,
    /// The kernel's loops, and how many iterations its main loop needs in all (vec4s of K,
    /// or the most entries of one kind in a block row).
    loops: GemmKernel,
    main_trips: usize,
    weights: Weights<'a>,
    epi: &'a Epilogue<'a>,
}

impl Gemm {
    /// `Y = W·X` with a dense W (`m×k` row-major) and X of `n` columns.
    pub fn dense(
        gpu: &Gpu,
        m: usize,
        k: usize,
        w: &[f32],
        n: usize,
        epi: &Epilogue,
        path: Path,
    ) -> Result<Self> {
        check_shapes(m, k, n, Some(w.len()), None, epi)?;
        let small = choose_small(path, n, None)?;
        let k4 = k.div_ceil(4);
        let (tm, m_pad) = if small {
            (1, m)
        } else {
            let tm = kernels::GEMM_TM as usize;
            (tm, m.next_multiple_of(tm))
        };
        fits(gpu, "W", (m_pad * k4 * 16) as u64)?;
        let mut wp = vec![0.0f32; m_pad * k4 * 4];
        for r in 0..m {
            wp[r * k4 * 4..r * k4 * 4 + k].copy_from_slice(&w[r * k..(r + 1) * k]);
        }
        let (kernel, constants) = if small {
            (kernels::GEMM_DENSE_SMALL, gemm_dense_small::constants(n))
        } else {
            (kernels::GEMM_DENSE, gemm_dense::constants(tm))
        };
        Self::build(
            gpu,
            Plan {
                micro: false,
                small,
                m,
                k,
                n,
                x_rows: k4 * 4,
                m_pad,
                tm,
                nv: 2,
                kernel,
                constants,
                loops: if small {
                    GemmKernel::DenseSmall { nb: n as u64 }
                } else {
                    GemmKernel::Dense { tm: tm as u64 }
                },
                main_trips: k4,
                weights: Weights::Dense {
                    w: bytemuck::cast_slice(&wp),
                },
                epi,
            },
        )
    }

    /// `Y = W·X` with a micro-structured W and X of `n` columns.
    pub fn micro(
        gpu: &Gpu,
        w: &CompressedMatrix,
        n: usize,
        epi: &Epilogue,
        path: Path,
    ) -> Result<Self> {
        let (m, k) = (w.view.rows, w.view.cols);
        check_shapes(m, k, n, None, None, epi)?;
        let (br, bc) = (w.block.rows, w.block.cols);
        let small = choose_small(path, n, Some(bc))?;
        let mb = micro_buffers(w, small)?;
        let grid = w.grid();
        // Rows per workgroup of the tiled kernel, rows per invocation of the small-batch one
        // (its RL · N partial sums fit 8 vec4; more than 4 rows measured slower on lavapipe).
        let tm = if small {
            rows_per_group(br, (8 / n).min(4))
        } else {
            rows_per_group(br, kernels::GEMM_TM as usize)
        };
        let mut values = w.values.clone();
        values.resize(values.len().next_multiple_of(4), 0.0);
        // Tiles of 4 rows or fewer: 4 vec4 columns per invocation keep 8 fmas per X load.
        let nv = if tm <= 4 { 4 } else { 2 };
        let wpb = w.words_per_block();
        let (kernel, constants) = if small {
            let shape = gemm_micro_small::Shape {
                rl: tm,
                br,
                bc,
                wpb,
                nb: n,
            };
            (
                kernels::GEMM_MICRO_SMALL,
                gemm_micro_small::constants(shape),
            )
        } else {
            let shape = gemm_micro::Shape {
                tm,
                nv,
                br,
                bc,
                wpb,
            };
            (kernels::GEMM_MICRO, gemm_micro::constants(shape))
        };
        let main_trips = mb
            .rows
            .iter()
            .map(|r| (r[1] - r[0]).max(r[2] - r[1]) as usize)
            .max()
            .unwrap_or(0);
        let weights = Weights::Micro {
            rows: bytemuck::cast_slice(&mb.rows),
            entries: bytemuck::cast_slice(&mb.entries),
            values: bytemuck::cast_slice(&values),
            unified: bytemuck::cast_slice(&mb.unified),
        };
        for (what, bytes) in weights.parts() {
            fits(gpu, what, bytes.len() as u64)?;
        }
        Self::build(
            gpu,
            Plan {
                micro: true,
                small,
                m,
                k,
                n,
                x_rows: grid.block_cols() * bc,
                m_pad: grid.block_rows() * br,
                tm,
                nv,
                kernel,
                constants,
                loops: if small {
                    GemmKernel::MicroSmall {
                        rl: tm as u64,
                        bc: bc as u64,
                        nb: n as u64,
                    }
                } else {
                    GemmKernel::Micro {
                        tm: tm as u64,
                        nv: nv as u64,
                        bc: bc as u64,
                    }
                },
                main_trips,
                weights,
                epi,
            },
        )
    }

    fn build(gpu: &Gpu, p: Plan) -> Result<Self> {
        let n4 = if p.small {
            p.n.div_ceil(4)
        } else {
            p.n.div_ceil(4 * p.nv) * p.nv
        };
        let x_bytes = if p.small {
            p.n * p.x_rows * 4
        } else {
            p.x_rows * n4 * 16
        } as u64;
        let y_bytes = (p.m_pad * n4 * 16) as u64;
        fits(gpu, "X", x_bytes)?;
        fits(gpu, "Y", y_bytes)?;
        let max_dim = gpu.limits().max_compute_workgroups_per_dimension;
        let row_groups = p.m_pad / p.tm;
        let (groups, dispatch) = match p.loops {
            GemmKernel::DenseSmall { .. } => gemm_dense_small::workgroups(row_groups, max_dim),
            GemmKernel::MicroSmall { .. } => gemm_micro_small::workgroups(row_groups, max_dim),
            GemmKernel::Dense { .. } | GemmKernel::Micro { .. } => {
                let (x, y) = gemm_dense::workgroups(n4 / p.nv, row_groups);
                if y as u64 > max_dim as u64 || x as u64 > max_dim as u64 {
                    return Err(Error::TooLarge(format!(
                        "GEMM of {}x{} times {}x{} needs {x}x{y} workgroups; \
                         max_compute_workgroups_per_dimension is {max_dim}",
                        p.m, p.k, p.k, p.n
                    )));
                }
                (y, (x as u32, y as u32))
            }
        };
        let label = format!("{} {}x{}x{}", p.kernel.label(), p.m, p.k, p.n);
        let pipeline = gpu.pipeline_with(&p.kernel, &p.constants)?;
        let with_table = matches!(p.loops, GemmKernel::MicroSmall { .. });
        let table_pipeline = if with_table {
            Some(gpu.pipeline(&kernels::GEMM_SIGN_TABLE)?)
        } else {
            None
        };
        let table_bytes = gemm_sign_table::table_bytes(p.n, p.x_rows);
        if with_table {
            fits(gpu, "signed-sum table", table_bytes)?;
        }
        let mut bias = vec![0.0f32; p.m_pad];
        if let Some(b) = p.epi.bias {
            bias[..p.m].copy_from_slice(b);
        }
        // The main loop in slices that each keep within CPU drivers' loop budget; at least
        // one, which writes the bias even where no entry does.
        let slice_len = loops::gemm_slice_len(p.loops).min(u32::MAX as u64) as usize;
        let slices = p.main_trips.div_ceil(slice_len).max(1);
        let params: Vec<GemmParams> = (0..slices)
            .map(|i| GemmParams {
                m: p.m_pad as u32,
                k4: (p.x_rows / 4) as u32,
                n4: n4 as u32,
                n: p.n as u32,
                groups: groups as u32,
                relu: u32::from(p.epi.relu),
                slice_len: slice_len as u32,
                slice: i as u32,
                last: u32::from(i + 1 == slices),
                _pad0: 0,
                _pad1: 0,
                _pad2: 0,
            })
            .collect();
        let stride = uniform_stride::<GemmParams>(gpu);
        let weight_bytes = p.weights.parts().iter().map(|w| w.1.len() as u64).sum();
        gpu.scoped(&format!("allocating {label}"), || {
            let weights = p.weights.upload(gpu);
            let x = storage(gpu, "gemm X", x_bytes);
            let y = storage(gpu, "gemm Y", y_bytes);
            let table = with_table.then(|| storage(gpu, "gemm signed-sum table", table_bytes));
            let bias = storage_init(gpu, "gemm bias", &bias);
            let uniform = uniform_slots(gpu, "gemm params", &params, stride);
            // Slice i reads record i of the uniform buffer.
            let slice_bind = |i: usize| -> Result<wgpu::BindGroup> {
                let p_i = Bound::record::<GemmParams>(&uniform, i, stride);
                let (x, bias, y) = (Bound::whole(&x), Bound::whole(&bias), Bound::whole(&y));
                match (&weights, &table) {
                    (WeightBuffers::Dense { w }, None) if p.small => gemm_dense_small::Bindings {
                        w: Bound::whole(w),
                        xt: x,
                        bias,
                        y,
                        p: p_i,
                    }
                    .bind_group(gpu, &pipeline, &label),
                    (WeightBuffers::Dense { w }, None) => gemm_dense::Bindings {
                        w: Bound::whole(w),
                        x,
                        bias,
                        y,
                        p: p_i,
                    }
                    .bind_group(gpu, &pipeline, &label),
                    (
                        WeightBuffers::Micro {
                            rows,
                            entries,
                            values,
                            unified,
                        },
                        Some(table),
                    ) => gemm_micro_small::Bindings {
                        rows: Bound::whole(rows),
                        entries: Bound::whole(entries),
                        values: Bound::whole(values),
                        unified: Bound::whole(unified),
                        xt: x,
                        table: Bound::whole(table),
                        bias,
                        y,
                        p: p_i,
                    }
                    .bind_group(gpu, &pipeline, &label),
                    (
                        WeightBuffers::Micro {
                            rows,
                            entries,
                            values,
                            unified,
                        },
                        None,
                    ) => gemm_micro::Bindings {
                        rows: Bound::whole(rows),
                        entries: Bound::whole(entries),
                        values: Bound::whole(values),
                        unified: Bound::whole(unified),
                        x,
                        bias,
                        y,
                        p: p_i,
                    }
                    .bind_group(gpu, &pipeline, &label),
                    (WeightBuffers::Dense { .. }, Some(_)) => {
                        Err(bad("a dense W has no signed-sum table pass".into()))
                    }
                }
            };
            let slices = (0..slices).map(slice_bind).collect::<Result<Vec<_>>>()?;
            let table = match table_pipeline.zip(table.as_ref()) {
                None => None,
                Some((tp, t)) => {
                    let bind = gemm_sign_table::Bindings {
                        xt: Bound::whole(&x),
                        table: Bound::whole(t),
                        p: Bound::record::<GemmParams>(&uniform, 0, stride),
                    }
                    .bind_group(gpu, &tp, kernels::GEMM_SIGN_TABLE.label())?;
                    let groups = gemm_sign_table::workgroups(p.n, p.x_rows, max_dim);
                    Some((tp, bind, groups))
                }
            };
            Ok(Self {
                m: p.m,
                k: p.k,
                n: p.n,
                micro: p.micro,
                small: p.small,
                x_rows: p.x_rows,
                n4,
                m_pad: p.m_pad,
                x,
                y,
                pipeline,
                slices,
                dispatch,
                table,
                weight_bytes,
                label: label.clone(),
            })
        })?
    }

    /// Uploads X (`k×n` row-major), zero-padded (and transposed on the small-batch path).
    pub fn write_x(&self, gpu: &Gpu, x: &[f32]) -> Result<()> {
        let (k, n) = (self.k, self.n);
        if x.len() != k * n {
            return Err(bad(format!(
                "X has {} values, expected {k}x{n} = {}",
                x.len(),
                k * n
            )));
        }
        let data = if self.small {
            let mut t = vec![0.0f32; n * self.x_rows];
            for r in 0..k {
                for c in 0..n {
                    t[c * self.x_rows + r] = x[r * n + c];
                }
            }
            t
        } else {
            let stride = self.n4 * 4;
            let mut t = vec![0.0f32; self.x_rows * stride];
            for r in 0..k {
                t[r * stride..r * stride + n].copy_from_slice(&x[r * n..(r + 1) * n]);
            }
            t
        };
        gpu.queue
            .write_buffer(&self.x, 0, bytemuck::cast_slice(&data));
        Ok(())
    }

    /// Fills all of Y with one bit pattern (tests poison it before each run).
    pub fn fill_y(&self, gpu: &Gpu, bits: u32) {
        let words = (self.y.size() / 4) as usize;
        gpu.queue
            .write_buffer(&self.y, 0, bytemuck::cast_slice(&vec![bits; words]));
    }

    /// Dispatches of the main loop per product (1 unless K, or a block row's entries,
    /// exceed what one invocation may loop over on CPU drivers; src/gpu/loops.rs).
    pub fn slices(&self) -> usize {
        self.slices.len()
    }

    /// Records one product into `encoder` (the caller submits): on the micro small-batch
    /// path, the signed-sum table of X first, then the GEMM, one dispatch per slice.
    pub fn record(&self, encoder: &mut wgpu::CommandEncoder) {
        let mut pass = encoder.begin_compute_pass(&wgpu::ComputePassDescriptor {
            label: Some(&self.label),
            timestamp_writes: None,
        });
        if let Some((pipeline, bind, (x, y))) = &self.table {
            pass.set_pipeline(pipeline);
            pass.set_bind_group(0, bind, &[]);
            pass.dispatch_workgroups(*x, *y, 1);
        }
        pass.set_pipeline(&self.pipeline);
        for slice in &self.slices {
            pass.set_bind_group(0, slice, &[]);
            pass.dispatch_workgroups(self.dispatch.0, self.dispatch.1, 1);
        }
    }

    /// Records `times` products, submits once and waits.
    pub fn run_times(&self, gpu: &Gpu, times: usize) -> Result<()> {
        let mut encoder = gpu
            .device
            .create_command_encoder(&wgpu::CommandEncoderDescriptor {
                label: Some(&self.label),
            });
        for _ in 0..times {
            self.record(&mut encoder);
        }
        gpu.submit_and_wait(&format!("{} (x{times})", self.label), encoder.finish())
    }

    /// One product: submits and waits.
    pub fn run(&self, gpu: &Gpu) -> Result<()> {
        self.run_times(gpu, 1)
    }

    /// Y (`m×n` row-major) back from the GPU.
    pub fn read_y(&self, gpu: &Gpu) -> Result<Vec<f32>> {
        let all = read_ranges::<f32>(
            gpu,
            &format!("Y of {}", self.label),
            &[(&self.y, 0, (self.m_pad * self.n4 * 16) as u64)],
        )?
        .swap_remove(0);
        let stride = self.n4 * 4;
        Ok((0..self.m)
            .flat_map(|r| all[r * stride..r * stride + self.n].iter().copied())
            .collect())
    }

    /// X as the kernels read it, for a producer that writes it on the GPU (the network
    /// host's im2col): value `(k, c)` of the `k×n` operand lies at `k·stride + c`, or at
    /// `c·stride + k` when [`x_transposed`](Self::x_transposed); every other value of the
    /// buffer's [`x_values`](Self::x_values) must be zero.
    pub fn x_buffer(&self) -> &wgpu::Buffer {
        &self.x
    }

    /// Whether X is stored transposed (the small-batch path).
    pub fn x_transposed(&self) -> bool {
        self.small
    }

    /// Values per stored row of X (of X^T when transposed).
    pub fn x_stride(&self) -> usize {
        if self.small { self.x_rows } else { self.n4 * 4 }
    }

    /// Values of X as stored, padding included.
    pub fn x_values(&self) -> usize {
        if self.small {
            self.n * self.x_rows
        } else {
            self.x_rows * self.n4 * 4
        }
    }

    /// Y as the kernels write it: value `(r, c)` at `r·y_stride() + c`, for a consumer on
    /// the GPU.
    pub fn y_buffer(&self) -> &wgpu::Buffer {
        &self.y
    }

    /// Values per stored row of Y.
    pub fn y_stride(&self) -> usize {
        self.n4 * 4
    }

    /// `2·m·k·n`: the dense product's floating-point operations.
    pub fn flops(&self) -> u64 {
        2 * (self.m * self.k * self.n) as u64
    }

    /// Bytes of the weight-side buffers (padded W, or the compressed form's four buffers).
    pub fn weight_bytes(&self) -> u64 {
        self.weight_bytes
    }

    /// Bytes one product must move: the weights, X and Y (unpadded).
    pub fn bytes_moved(&self) -> u64 {
        self.weight_bytes + 4 * (self.k * self.n + self.m * self.n) as u64
    }
}
