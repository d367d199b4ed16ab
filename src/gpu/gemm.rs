//! The GEMM host: `Y = W·X (+ bias) (ReLU)` on the GPU with W dense or micro-structured.
//! Weights are uploaded once; X is written and Y computed as many times as wanted.

use crate::block::{BlockShape, MAX_BLOCK_SIDE};
use crate::compressed::{CompressedMatrix, UNIFIED_FLAG};
use crate::cpu::gemm::{Epilogue, check_shapes};
use crate::error::{Error, Result};
use crate::gpu::Gpu;
use crate::gpu::autotune;
use crate::gpu::buffers::{read_ranges, storage, storage_init, uniform_slots, uniform_stride};
use crate::gpu::conv_gather::{ConvGather, NO_ROW};
use crate::gpu::kernels::gemm_dense::Gather;
use crate::gpu::kernels::gemm_dense_tiled::{self, TILES, Tile};
use crate::gpu::kernels::gemm_params::GemmParams;
use crate::gpu::kernels::{
    self, Bound, Kernel, gemm_dense, gemm_dense_small, gemm_micro, gemm_micro_small,
    gemm_micro_tiled, gemm_sign_table,
};
use crate::gpu::loops::{self, GemmKernel};

/// Which kernel family runs the product.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum Path {
    /// The autotuner's choice for this adapter and shape class (src/gpu/autotune.rs);
    /// with `MICROUNIFY_AUTOTUNE=off`, the small-batch kernels for `N ≤ 8` (where they
    /// apply), else the tiled ones.
    #[default]
    Auto,
    /// The register-blocked kernels, lanes along N (any N).
    Tiled,
    /// The bandwidth-oriented kernels, `N ≤ 8`; the micro one needs block columns of
    /// 4, 8, 16 or a multiple of 32.
    SmallBatch,
    /// The GPU-style kernels (gemm_dense_tiled, gemm_micro_tiled): tiles staged in
    /// workgroup memory, a register tile per invocation (any N). The micro kernel takes
    /// the tile's register tile only.
    Workgroup(Tile),
}

impl Path {
    /// The name the autotuner's cache and `microunify bench gemm` use.
    pub fn name(&self) -> String {
        match self {
            Path::Auto => "auto".into(),
            Path::Tiled => "tiled".into(),
            Path::SmallBatch => "small-batch".into(),
            Path::Workgroup(t) => format!("workgroup-{}", t.label()),
        }
    }
}

/// The paths that can run a product of `n` columns (`micro_bc`: the block columns of a
/// micro-structured W, `None` for a dense one), in the order of the static choice: the
/// autotuner's candidates, and every kernel variant the host builds for such a product.
pub fn candidates(n: usize, micro_bc: Option<usize>) -> Vec<Path> {
    let mut out = Vec::new();
    if small_batch_takes(n, micro_bc) {
        out.push(Path::SmallBatch);
    }
    out.push(Path::Tiled);
    for t in TILES {
        // The micro kernel reads the register tile only: one candidate per register tile.
        let dup = micro_bc.is_some()
            && out
                .iter()
                .any(|p| matches!(p, Path::Workgroup(o) if (o.tm, o.tn) == (t.tm, t.tn)));
        if !dup {
            out.push(Path::Workgroup(t));
        }
    }
    out
}

/// A GEMM ready to run: weights, bias and parameters resident, X and Y allocated.
pub struct Gemm {
    pub m: usize,
    pub k: usize,
    pub n: usize,
    /// Whether W is micro-structured (else dense).
    pub micro: bool,
    /// Whether the small-batch kernel runs (else a tiled one).
    pub small: bool,
    /// The path that runs (never [`Path::Auto`]: the choice it resolved to).
    pub path: Path,
    /// Whether a micro-structured W whose blocks are all dense runs the dense kernels on
    /// its reconstruction ([`all_dense`]).
    pub as_dense: bool,
    /// How X is read: its own buffer, or a convolution's input (`ConvGather`).
    pub gather: Gather,
    /// Rows of X as stored (K padded with zero rows); the X^T row length when `small`.
    x_rows: usize,
    /// vec4s per row of X on the tiled path (and of Y unless pooled).
    n4: usize,
    /// Values per stored row of Y, and real ones (`n`, or the pooled ones).
    y_stride: usize,
    y_cols: usize,
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

/// The kernels' layout of `w`. Every index in it is in range because
/// [`CompressedMatrix::new`] checked `w`; dense tiles start at multiples of `br·bc`, so
/// at multiples of 4 wherever the small-batch path (block columns a multiple of 4) reads
/// them as vec4s.
fn micro_buffers(w: &CompressedMatrix) -> MicroBuffers {
    let brs = w.grid().block_rows();
    let wpb = w.words_per_block();
    let (row_ptr, entries) = (w.row_ptr(), w.entries());
    let mut out = MicroBuffers {
        rows: Vec::with_capacity(brs),
        entries: Vec::with_capacity(entries.len() + 1),
        unified: Vec::with_capacity(w.magnitudes().len() * (wpb + 1)),
    };
    let mut uni = Vec::new();
    for r in 0..brs {
        let start = out.entries.len() as u32;
        uni.clear();
        for &[col, payload] in &entries[row_ptr[r] as usize..row_ptr[r + 1] as usize] {
            if payload & UNIFIED_FLAG == 0 {
                out.entries.push([col, payload]);
            } else {
                uni.push([col, payload & !UNIFIED_FLAG]);
            }
        }
        let split = out.entries.len() as u32;
        out.entries.extend_from_slice(&uni);
        out.rows.push([start, split, out.entries.len() as u32, 0]);
    }
    // A spare entry: gemm_micro loads the next entry one iteration ahead.
    out.entries.push([0, 0]);
    for (u, a) in w.magnitudes().iter().enumerate() {
        out.unified.push(a.to_bits());
        out.unified
            .extend_from_slice(&w.signs()[u * wpb..(u + 1) * wpb]);
    }
    out
}

/// The largest divisor of `br` that is at most `cap` (rows a workgroup owns in a block row).
fn rows_per_group(br: usize, cap: usize) -> usize {
    (1..=cap.min(br))
        .rev()
        .find(|d| br.is_multiple_of(*d))
        .unwrap_or(1)
}

/// Whether every block of `w` is dense: nothing to skip, so the dense kernels run it on
/// its row-major reconstruction (the same values), at the dense GEMM's speed.
pub fn all_dense(w: &CompressedMatrix) -> bool {
    w.counts()[0] == w.grid().num_blocks()
}

/// A micro-structured W's GEMM that runs the dense kernels ([`all_dense`]).
fn as_dense(mut g: Gemm) -> Gemm {
    g.micro = true;
    g.as_dense = true;
    g
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

/// The path a static choice of `small` took.
fn resolved(path: Path, small: bool) -> Path {
    match path {
        Path::Auto if small => Path::SmallBatch,
        Path::Auto => Path::Tiled,
        p => p,
    }
}

fn choose_small(path: Path, n: usize, micro_bc: Option<usize>) -> Result<bool> {
    let vec4_ok = micro_bc.is_none_or(small_batch_block_cols);
    match path {
        Path::Auto => Ok(small_batch_takes(n, micro_bc)),
        Path::Tiled | Path::Workgroup(_) => Ok(false),
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

/// One specialisation of a GEMM kernel: what the host compiles for a product.
#[derive(Clone, Debug)]
pub struct Variant {
    pub kernel: Kernel,
    /// The override constants the pipeline is built with.
    pub constants: Vec<(&'static str, f64)>,
    /// The kernel's loops (src/gpu/loops.rs), for the main-loop slice length.
    pub loops: GemmKernel,
    /// Rows per workgroup (tiled path) or per invocation (micro small-batch path).
    pub tm: usize,
    /// vec4 columns of Y per invocation on the tiled path.
    pub nv: usize,
}

/// Two variants are the same pipeline when kernel file and constants agree.
impl PartialEq for Variant {
    fn eq(&self, other: &Self) -> bool {
        self.kernel.file == other.kernel.file && self.constants == other.constants
    }
}

/// The dense kernel the host builds for `n` columns of X: the small-batch one, the
/// workgroup-tiled one with output tile `tile`, or the register-blocked one.
pub fn dense_variant(n: usize, small: bool, tile: Option<Tile>) -> Variant {
    if let (false, Some(t)) = (small, tile) {
        return Variant {
            kernel: kernels::GEMM_DENSE_TILED,
            constants: gemm_dense_tiled::constants(t),
            loops: GemmKernel::DenseTiled(t),
            tm: t.bm,
            nv: 2,
        };
    }
    cpu_dense_variant(n, small, kernels::GEMM_TM as usize)
}

/// `v` reading X as `gather` says (gemm_dense and gemm_micro only: the others keep their
/// own X buffer).
pub fn with_gather(mut v: Variant, gather: Gather) -> Variant {
    let (name, value) = gather.constant();
    for c in v.constants.iter_mut().filter(|c| c.0 == name) {
        c.1 = value;
    }
    // A gathered vec4 is two loads and a shift: with 4 vec4 columns per invocation
    // gemm_micro ran out of registers (2 measured 1.9× faster on lavapipe). The pooled
    // modes need an even number.
    if let (Gather::Row | Gather::MaxPool | Gather::AvgPool, GemmKernel::Micro { nv, .. }) =
        (gather, &mut v.loops)
    {
        *nv = 2;
        v.nv = 2;
        for c in v.constants.iter_mut().filter(|c| c.0 == "NV") {
            c.1 = 2.0;
        }
    }
    v
}

/// gemm_dense_small, or gemm_dense with `tm` rows per workgroup.
fn cpu_dense_variant(n: usize, small: bool, tm: usize) -> Variant {
    if small {
        Variant {
            kernel: kernels::GEMM_DENSE_SMALL,
            constants: gemm_dense_small::constants(n),
            loops: GemmKernel::DenseSmall { nb: n as u64 },
            tm: 1,
            nv: 2,
        }
    } else {
        Variant {
            kernel: kernels::GEMM_DENSE,
            constants: gemm_dense::constants(tm, Gather::Buffer),
            loops: GemmKernel::Dense { tm: tm as u64 },
            tm,
            nv: 2,
        }
    }
}

/// The micro-structured kernel the host builds for blocks `block` and `n` columns of X.
pub fn micro_variant(block: BlockShape, n: usize, small: bool, tile: Option<Tile>) -> Variant {
    let (br, bc) = (block.rows, block.cols);
    // Rows per workgroup of the tiled kernel, rows per invocation of the small-batch one
    // (its RL · N partial sums fit 8 vec4; more than 4 rows measured slower on lavapipe).
    let tm = if small {
        rows_per_group(br, (8 / n).min(4))
    } else {
        rows_per_group(br, kernels::GEMM_TM as usize)
    };
    // Tiles of 4 rows or fewer: 4 vec4 columns per invocation keep 8 fmas per X load.
    let nv = if tm <= 4 { 4 } else { 2 };
    let wpb = block.len().div_ceil(32);
    if let (false, Some(t)) = (small, tile) {
        // A workgroup owns a whole block row.
        let shape = gemm_micro_tiled::Shape::new(t, br, bc, wpb, n);
        return Variant {
            kernel: kernels::GEMM_MICRO_TILED,
            constants: gemm_micro_tiled::constants(shape),
            loops: GemmKernel::MicroTiled(shape),
            tm: br,
            nv,
        };
    }
    if small {
        Variant {
            kernel: kernels::GEMM_MICRO_SMALL,
            constants: gemm_micro_small::constants(gemm_micro_small::Shape {
                rl: tm,
                br,
                bc,
                wpb,
                nb: n,
            }),
            loops: GemmKernel::MicroSmall {
                rl: tm as u64,
                bc: bc as u64,
                nb: n as u64,
            },
            tm,
            nv,
        }
    } else {
        Variant {
            kernel: kernels::GEMM_MICRO,
            constants: gemm_micro::constants(gemm_micro::Shape {
                tm,
                nv,
                br,
                bc,
                wpb,
                gather: Gather::Buffer,
            }),
            loops: GemmKernel::Micro {
                tm: tm as u64,
                nv: nv as u64,
                bc: bc as u64,
            },
            tm,
            nv,
        }
    }
}

/// Every distinct GEMM specialisation the host can build: each path, each N whose
/// variant differs (the tiled kernels do not depend on N), each block shape up to
/// [`MAX_BLOCK_SIDE`] on each side, through the host's own choices.
pub fn all_variants() -> Vec<Variant> {
    let mut out: Vec<Variant> = Vec::new();
    let mut add = |v: Variant| {
        if !out.contains(&v) {
            out.push(v);
        }
    };
    // The workgroup-tiled micro kernel depends on N up to 256 columns per workgroup and on
    // the block shape: its variants are taken at N of one, a few and a full workgroup, and
    // at block sides that cover each way a shape is cut (1, 2, 3, 4, 5, 8, 16, 31, 32).
    let wg_sides = [1, 2, 3, 4, 5, 8, 16, 31, 32];
    let ns = (1..=kernels::SMALL_MAX_N + 1).chain([256]);
    for n in ns {
        for path in candidates(n, None) {
            let small = choose_small(path, n, None).unwrap_or(false);
            add(dense_variant(n, small, workgroup_tile(path)));
        }
        for br in 1..=MAX_BLOCK_SIDE {
            for bc in 1..=MAX_BLOCK_SIDE {
                let Ok(block) = BlockShape::new(br, bc) else {
                    continue;
                };
                for path in candidates(n, Some(bc)) {
                    let tile = workgroup_tile(path);
                    let sampled = wg_sides.contains(&br) && wg_sides.contains(&bc);
                    if tile.is_some() && !(sampled && [1, 9, 256].contains(&n)) {
                        continue;
                    }
                    if tile.is_none() && n > kernels::SMALL_MAX_N + 1 {
                        continue;
                    }
                    if let Ok(small) = choose_small(path, n, Some(bc)) {
                        add(micro_variant(block, n, small, tile));
                    }
                }
            }
        }
    }
    // The conv gather of the two kernels that take it: every mode of each dense variant,
    // and of the micro ones the fused max pooling (all of gemm_gather.wgsl's code but the
    // average's one line), the others at the sampled block sides.
    let gathered: Vec<Variant> = out
        .iter()
        .filter(|v| {
            v.kernel.file == kernels::GEMM_DENSE.file || v.kernel.file == kernels::GEMM_MICRO.file
        })
        .flat_map(|v| {
            let dense = v.kernel.file == kernels::GEMM_DENSE.file;
            let side = |name: &str| {
                v.constants
                    .iter()
                    .find(|c| c.0 == name)
                    .is_some_and(|c| [1.0, 3.0, 4.0, 8.0].contains(&c.1))
            };
            let all = dense || (side("BR") && side("BC"));
            Gather::ALL[1..]
                .iter()
                .filter(move |&&g| all || g == Gather::MaxPool)
                .map(|&g| with_gather(v.clone(), g))
                .collect::<Vec<_>>()
        })
        .collect();
    out.extend(gathered);
    out
}

/// Refuses an input buffer that does not hold the activation `conv` describes (the
/// gather would read past it: wgpu keeps such reads inside the buffer, but the values
/// would be wrong).
fn check_input(conv: &ConvGather, input: &wgpu::Buffer) -> Result<()> {
    let [c, h, w] = conv.input;
    let values = (c - 1) * conv.in_stride + conv.batch * h * w;
    if input.size() < 4 * values as u64 {
        return Err(bad(format!(
            "the convolution's input needs {values} values, its buffer holds {}",
            input.size() / 4
        )));
    }
    Ok(())
}

/// A GEMM that reads its own X always builds ([`Gemm::build`] declines fused poolings
/// only).
fn built(g: Option<Gemm>) -> Result<Gemm> {
    g.ok_or_else(|| bad("a GEMM without a fused pooling declined to build".into()))
}

/// The output tile of the workgroup-tiled kernels, when `path` is theirs.
fn workgroup_tile(path: Path) -> Option<Tile> {
    match path {
        Path::Workgroup(t) => Some(t),
        _ => None,
    }
}

/// The main loop of `main_trips` iterations in slices that each keep within CPU drivers'
/// loop budget: (iterations per slice, slices); at least one slice, which writes the
/// bias even where no entry does. Slice `i` runs `slice_range` of gemm_params.wgsl.
pub fn slicing(kernel: GemmKernel, main_trips: usize) -> (usize, usize) {
    let slice_len = loops::gemm_slice_len(kernel).min(u32::MAX as u64) as usize;
    (slice_len, main_trips.div_ceil(slice_len).max(1))
}

/// Everything a constructor hands to [`Gemm::build`].
struct Plan<'a> {
    micro: bool,
    small: bool,
    path: Path,
    m: usize,
    k: usize,
    n: usize,
    x_rows: usize,
    m_pad: usize,
    /// Rows per workgroup (tiled paths) or per invocation (micro small-batch path).
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
    /// The convolution whose input activation X is (read in place), when gathered.
    gather: Option<(&'a ConvGather, &'a wgpu::Buffer)>,
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
        let path = match path {
            Path::Auto => autotune::choose(gpu, autotune::Family::Dense, m, k, n, |p| {
                Self::dense(gpu, m, k, w, n, epi, p)
            })?,
            p => p,
        };
        Self::dense_with(gpu, m, k, w, n, epi, path, None).and_then(built)
    }

    /// A convolution's `Y = W·X` reading X from its input activation `input` (`conv`
    /// says how): W dense, `m × C·kh·kw`, its columns in `conv`'s row order. `None` when
    /// the gather cannot take this convolution (`ConvGather::takes`, or a fused pooling of
    /// a K that needs more than one slice): the caller runs an im2col and [`Gemm::dense`].
    /// An `input` smaller than the activation `conv` describes is an error.
    pub fn conv_dense(
        gpu: &Gpu,
        m: usize,
        w: &[f32],
        conv: &ConvGather,
        input: &wgpu::Buffer,
        epi: &Epilogue,
    ) -> Result<Option<Self>> {
        let (k, n) = (conv.rows(), 4 * conv.cols4());
        if !conv.takes() {
            return Ok(None);
        }
        check_shapes(m, k, n, Some(w.len()), None, epi)?;
        check_input(conv, input)?;
        Self::dense_with(gpu, m, k, w, n, epi, Path::Tiled, Some((conv, input)))
    }

    #[allow(clippy::too_many_arguments)]
    fn dense_with(
        gpu: &Gpu,
        m: usize,
        k: usize,
        w: &[f32],
        n: usize,
        epi: &Epilogue,
        path: Path,
        gather: Option<(&ConvGather, &wgpu::Buffer)>,
    ) -> Result<Option<Self>> {
        let small = choose_small(path, n, None)?;
        let tile = match path {
            Path::Workgroup(t) if !small => Some(t),
            _ => None,
        };
        let mut v = dense_variant(n, small, tile);
        if let Some((c, _)) = gather {
            v = with_gather(v, c.mode);
        }
        let k4 = match tile {
            Some(_) => k.next_multiple_of(gemm_dense_tiled::BK) / 4,
            None => k.div_ceil(4),
        };
        let m_pad = m.next_multiple_of(v.tm);
        let main_trips = match tile {
            Some(_) => k4 * 4 / gemm_dense_tiled::BK,
            None => k4,
        };
        fits(gpu, "W", (m_pad * k4 * 16) as u64)?;
        let mut wp = vec![0.0f32; m_pad * k4 * 4];
        for r in 0..m {
            wp[r * k4 * 4..r * k4 * 4 + k].copy_from_slice(&w[r * k..(r + 1) * k]);
        }
        Self::build(
            gpu,
            Plan {
                micro: false,
                small,
                path: resolved(path, small),
                m,
                k,
                n,
                x_rows: k4 * 4,
                m_pad,
                tm: v.tm,
                nv: v.nv,
                kernel: v.kernel,
                constants: v.constants,
                loops: v.loops,
                main_trips,
                weights: Weights::Dense {
                    w: bytemuck::cast_slice(&wp),
                },
                epi,
                gather,
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
        let (m, k) = (w.view().rows, w.view().cols);
        check_shapes(m, k, n, None, None, epi)?;
        // The workgroup-tiled kernels read W in their own layout: an explicit request for
        // them runs them.
        if !matches!(path, Path::Workgroup(_)) && all_dense(w) {
            return Self::dense(gpu, m, k, &w.to_dense(), n, epi, path).map(as_dense);
        }
        let (br, bc) = (w.block().rows, w.block().cols);
        let path = match path {
            Path::Auto => {
                let family = autotune::Family::Micro { br, bc };
                autotune::choose(gpu, family, m, k, n, |p| Self::micro(gpu, w, n, epi, p))?
            }
            p => p,
        };
        Self::micro_with(gpu, w, n, epi, path, None).and_then(built)
    }

    /// [`Gemm::conv_dense`] with a micro-structured W.
    pub fn conv_micro(
        gpu: &Gpu,
        w: &CompressedMatrix,
        conv: &ConvGather,
        input: &wgpu::Buffer,
        epi: &Epilogue,
    ) -> Result<Option<Self>> {
        let (m, k, n) = (w.view().rows, w.view().cols, 4 * conv.cols4());
        if !conv.takes() {
            return Ok(None);
        }
        if k != conv.rows() {
            return Err(bad(format!(
                "the convolution gathers {} rows of X, W has {k} columns",
                conv.rows()
            )));
        }
        if all_dense(w) {
            // conv_dense checks the shapes and the input itself.
            return Ok(Self::conv_dense(gpu, m, &w.to_dense(), conv, input, epi)?.map(as_dense));
        }
        check_shapes(m, k, n, None, None, epi)?;
        check_input(conv, input)?;
        Self::micro_with(gpu, w, n, epi, Path::Tiled, Some((conv, input)))
    }

    fn micro_with(
        gpu: &Gpu,
        w: &CompressedMatrix,
        n: usize,
        epi: &Epilogue,
        path: Path,
        gather: Option<(&ConvGather, &wgpu::Buffer)>,
    ) -> Result<Option<Self>> {
        let (m, k) = (w.view().rows, w.view().cols);
        let bc = w.block().cols;
        let small = choose_small(path, n, Some(bc))?;
        let mb = micro_buffers(w);
        let grid = w.grid();
        let tile = match path {
            Path::Workgroup(t) if !small => Some(t),
            _ => None,
        };
        let mut v = micro_variant(w.block(), n, small, tile);
        if let Some((c, _)) = gather {
            v = with_gather(v, c.mode);
        }
        let mut values = w.values().to_vec();
        values.resize(values.len().next_multiple_of(4), 0.0);
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
                path: resolved(path, small),
                m,
                k,
                n,
                x_rows: grid.block_cols() * bc,
                m_pad: grid.block_rows() * w.block().rows,
                tm: v.tm,
                nv: v.nv,
                kernel: v.kernel,
                constants: v.constants,
                loops: v.loops,
                main_trips,
                weights,
                epi,
                gather,
            },
        )
    }

    /// `None` for a fused pooling whose main loop needs more than one slice (its
    /// epilogue needs the complete sums).
    fn build(gpu: &Gpu, p: Plan) -> Result<Option<Self>> {
        let gather = p.gather.map_or(Gather::Buffer, |g| g.0.mode);
        let (slice_len, slices) = slicing(p.loops, p.main_trips);
        if gather.pools() && slices > 1 {
            return Ok(None);
        }
        let n4 = match p.loops {
            _ if p.small => p.n.div_ceil(4),
            GemmKernel::DenseTiled(t) => p.n.next_multiple_of(t.bn) / 4,
            GemmKernel::MicroTiled(s) => p.n.next_multiple_of(s.bn) / 4,
            _ => p.n.div_ceil(4 * p.nv) * p.nv,
        };
        let x_bytes = if p.gather.is_some() {
            0
        } else if p.small {
            p.n * p.x_rows * 4
        } else {
            p.x_rows * n4 * 16
        } as u64;
        // A pooled Y holds the pooled activation: (stride, real values) per row.
        let (y_stride, y_cols) = match p.gather {
            Some((c, _)) if gather.pools() => {
                let [ph, pw] = c.positions();
                (c.pooled_stride(), c.batch * ph * pw)
            }
            _ => (n4 * 4, p.n),
        };
        let y_bytes = (p.m_pad * y_stride * 4) as u64;
        fits(gpu, "X", x_bytes)?;
        fits(gpu, "Y", y_bytes)?;
        let max_dim = gpu.limits().max_compute_workgroups_per_dimension;
        let row_groups = p.m_pad / p.tm;
        let (groups, dispatch) = match p.loops {
            GemmKernel::DenseSmall { .. } => gemm_dense_small::workgroups(row_groups, max_dim),
            GemmKernel::MicroSmall { .. } => gemm_micro_small::workgroups(row_groups, max_dim),
            GemmKernel::Dense { .. }
            | GemmKernel::Micro { .. }
            | GemmKernel::DenseTiled(_)
            | GemmKernel::MicroTiled(_) => {
                let (x, y) = match p.loops {
                    GemmKernel::DenseTiled(t) => gemm_dense_tiled::workgroups(t, n4, p.m_pad),
                    GemmKernel::MicroTiled(s) => gemm_micro_tiled::workgroups(s, n4, row_groups),
                    _ => gemm_dense::workgroups(n4 / p.nv, row_groups),
                };
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
        let variant = match p.path {
            Path::Workgroup(t) => format!("{} {}", p.kernel.label(), t.label()),
            _ => p.kernel.label().to_string(),
        };
        let label = format!("{variant} {}x{}x{}", p.m, p.k, p.n);
        let pipeline = gpu.pipeline_with(&p.kernel, &p.constants)?;
        let micro_small = matches!(p.loops, GemmKernel::MicroSmall { .. });
        let with_table = matches!(p.loops, GemmKernel::MicroSmall { rl, nb, .. }
            if gemm_micro_small::reads_table(rl as usize, nb as usize));
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
        let koff = match p.gather {
            Some((c, _)) => c.row_offsets(p.x_rows),
            None => vec![NO_ROW; 4],
        };
        let params: Vec<GemmParams> = (0..slices)
            .map(|i| {
                let mut params = GemmParams {
                    m: p.m_pad as u32,
                    k4: (p.x_rows / 4) as u32,
                    n4: n4 as u32,
                    n: p.n as u32,
                    groups: groups as u32,
                    relu: u32::from(p.epi.relu),
                    slice_len: slice_len as u32,
                    slice: i as u32,
                    last: u32::from(i + 1 == slices),
                    ..Default::default()
                };
                if let Some((c, _)) = p.gather {
                    c.params(&mut params);
                }
                params
            })
            .collect();
        let stride = uniform_stride::<GemmParams>(gpu);
        let weight_bytes = p.weights.parts().iter().map(|w| w.1.len() as u64).sum();
        gpu.scoped(&format!("allocating {label}"), || {
            let weights = p.weights.upload(gpu);
            let x = match p.gather {
                Some((_, input)) => input.clone(),
                None => storage(gpu, "gemm X", x_bytes),
            };
            let koff = storage_init(gpu, "gemm gather offsets", &koff);
            let y = storage(gpu, "gemm Y", y_bytes);
            // The micro small-batch kernel binds a table even where it reads none.
            let table = micro_small.then(|| {
                let bytes = if with_table { table_bytes } else { 16 };
                storage(gpu, "gemm signed-sum table", bytes)
            });
            let bias = storage_init(gpu, "gemm bias", &bias);
            let uniform = uniform_slots(gpu, "gemm params", &params, stride);
            // Slice i reads record i of the uniform buffer.
            let slice_bind = |i: usize| -> Result<wgpu::BindGroup> {
                let p_i = Bound::record::<GemmParams>(&uniform, i, stride);
                let (x, bias, y) = (Bound::whole(&x), Bound::whole(&bias), Bound::whole(&y));
                let tiled_kernel = matches!(
                    p.loops,
                    GemmKernel::DenseTiled(_) | GemmKernel::MicroTiled(_)
                );
                match (&weights, &table) {
                    (WeightBuffers::Dense { w }, None) if tiled_kernel => {
                        gemm_dense_tiled::Bindings {
                            w: Bound::whole(w),
                            x,
                            bias,
                            y,
                            p: p_i,
                        }
                        .bind_group(gpu, &pipeline, &label)
                    }
                    (
                        WeightBuffers::Micro {
                            rows,
                            entries,
                            values,
                            unified,
                        },
                        None,
                    ) if tiled_kernel => gemm_micro_tiled::Bindings {
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
                        koff: Bound::whole(&koff),
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
                        koff: Bound::whole(&koff),
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
            Ok(Some(Self {
                m: p.m,
                k: p.k,
                n: p.n,
                micro: p.micro,
                small: p.small,
                path: p.path,
                as_dense: false,
                gather,
                x_rows: p.x_rows,
                n4,
                y_stride,
                y_cols,
                x,
                y,
                pipeline,
                slices,
                dispatch,
                table,
                weight_bytes,
                label: label.clone(),
            }))
        })?
    }

    /// Uploads X (`k×n` row-major), zero-padded (and transposed on the small-batch path).
    pub fn write_x(&self, gpu: &Gpu, x: &[f32]) -> Result<()> {
        let (k, n) = (self.k, self.n);
        if self.gather != Gather::Buffer {
            return Err(bad(
                "a gathered GEMM reads X from its convolution's input".into()
            ));
        }
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

    /// Y (`m×n` row-major, or `m×` the pooled values when a pooling is fused) back from
    /// the GPU.
    pub fn read_y(&self, gpu: &Gpu) -> Result<Vec<f32>> {
        let all = read_ranges::<f32>(
            gpu,
            &format!("Y of {}", self.label),
            &[(&self.y, 0, self.y.size())],
        )?
        .swap_remove(0);
        let stride = self.y_stride();
        let cols = self.y_cols;
        Ok((0..self.m)
            .flat_map(|r| all[r * stride..r * stride + cols].iter().copied())
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
        self.y_stride
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
