//! The projection run stage by stage, with what each stage wrote read back as plain
//! vectors: the view the per-kernel CPU twins (src/cpu/, one per shader) are compared
//! with, so that a wrong kernel is named rather than a wrong final Z. One submission,
//! one bounded wait and one readback per dispatch: for tests and debugging, not speed.

use super::*;
use crate::cpu::projection::Group;
use crate::cpu::radix_histogram::{RadixPass, SelState as TwinState, Selection};

/// The keys, magnitudes and sign words of every block (the whole network's buffers).
#[derive(Clone, Debug, PartialEq)]
pub struct StatsBuffers {
    pub key_prune: Vec<u32>,
    pub key_unify: Vec<u32>,
    /// Mean |v| per block (pack_states later zeroes all but the unified ones).
    pub magnitudes: Vec<f32>,
    pub signs: Vec<u32>,
}

/// What one stage wrote.
#[derive(Clone, Debug, PartialEq)]
pub enum StageOutput {
    /// The start values every projection copies in first.
    Reset {
        states: Vec<TwinState>,
        /// Indirect dispatch arguments of each histogram pass.
        args: Vec<[u32; 3]>,
    },
    /// block_stats over one chunk.
    BlockStats {
        chunk: usize,
        stats: StatsBuffers,
        /// The blocks it listed for block_rescale, in the order listed.
        listed: Vec<u32>,
        /// The indirect dispatch arguments it armed block_rescale with.
        rescale_args: [u32; 3],
    },
    /// block_rescale over one chunk's listed blocks.
    BlockRescale {
        chunk: usize,
        stats: StatsBuffers,
        /// First non-finite index per layer (`u32::MAX`: none).
        first_bad: Vec<u32>,
    },
    /// radix_histogram of one pass: `RADIX` counts per group.
    RadixHistogram { pass: usize, hist: Vec<u32> },
    /// radix_resolve of one pass.
    RadixResolve {
        pass: usize,
        states: Vec<TwinState>,
        hist: Vec<u32>,
        args: Vec<[u32; 3]>,
    },
    /// pack_states: the state map and the finished magnitudes.
    PackStates {
        state_map: Vec<u32>,
        magnitudes: Vec<f32>,
    },
    /// apply_projection over one chunk: the chunk's whole Z and U buffers.
    ApplyProjection {
        chunk: usize,
        z: Vec<f32>,
        u: Vec<f32>,
    },
}

/// One stage: the kernel and what it worked on (as error messages name it), and its output.
#[derive(Clone, Debug, PartialEq)]
pub struct Stage {
    pub what: String,
    pub output: StageOutput,
}

/// u32 words of one dispatch's indirect arguments (x, y, z workgroups).
const ARGS_WORDS: usize = std::mem::size_of::<wgpu::util::DispatchIndirectArgs>() / 4;

fn twin_states(raw: Vec<SelState>) -> Vec<TwinState> {
    raw.into_iter()
        .map(|s| TwinState {
            k: s.k,
            rem: s.rem,
            key: s.key,
            idx: s.idx,
        })
        .collect()
}

fn triples(raw: Vec<u32>) -> Vec<[u32; 3]> {
    raw.chunks_exact(ARGS_WORDS)
        .map(|a| [a[0], a[1], a[2]])
        .collect()
}

impl NetworkProjection {
    /// The radix passes, in dispatch order, as the twins take them.
    pub fn radix_passes(&self) -> Vec<RadixPass> {
        self.pass_list
            .iter()
            .map(|p| RadixPass {
                selection: if p.which == 0 {
                    Selection::Prune
                } else {
                    Selection::Unify
                },
                on_index: p.on_index != 0,
                shift: p.shift,
                key_mask: p.key_mask,
                idx_mask: p.idx_mask,
                arms: (p.next_args != u32::MAX).then_some(p.next_args as usize / ARGS_WORDS),
            })
            .collect()
    }

    /// The dispatch grid a resolve arms the next histogram pass with.
    pub fn radix_grid(&self) -> (u32, u32) {
        self.pass_list
            .first()
            .map_or((1, 1), |p| (p.grid_x, p.grid_y))
    }

    /// The selection groups in the padded block numbering the GPU ranks in (a layer's
    /// padding blocks belong to its group; their keys exclude them).
    pub fn padded_groups(&self) -> Vec<Group> {
        let groups = crate::cpu::projection::groups(&self.layout.layers, &self.mode);
        match self.mode {
            SelectionMode::Global(_) => groups
                .into_iter()
                .map(|g| Group {
                    begin: 0,
                    end: self.layout.total_blocks,
                    ..g
                })
                .collect(),
            SelectionMode::PerLayer(_) => groups
                .into_iter()
                .zip(&self.layout.placements)
                .map(|(g, p)| Group {
                    begin: p.block_start,
                    end: p.block_start + p.padded_blocks,
                    ..g
                })
                .collect(),
        }
    }

    fn read_u32(&self, gpu: &Gpu, what: &str, bufs: &[&wgpu::Buffer]) -> Result<Vec<Vec<u32>>> {
        let parts: Vec<(&wgpu::Buffer, u64, u64)> =
            bufs.iter().map(|b| (*b, 0, b.size())).collect();
        read_ranges(gpu, what, &parts)
    }

    fn read_stats(&self, gpu: &Gpu, what: &str) -> Result<StatsBuffers> {
        let blocks = self.layout.total_blocks as u64 * 4;
        let words = self.layout.total_sign_words as u64 * 4;
        let mut raw: Vec<Vec<u32>> = read_ranges(
            gpu,
            what,
            &[
                (&self.key_prune, 0, blocks),
                (&self.key_unify, 0, blocks),
                (&self.magnitude, 0, blocks),
                (&self.signs, 0, words),
            ],
        )?;
        let signs = raw.pop().unwrap_or_default();
        let magnitudes = bytemuck::cast_slice(&raw.pop().unwrap_or_default()).to_vec();
        let key_unify = raw.pop().unwrap_or_default();
        let key_prune = raw.pop().unwrap_or_default();
        Ok(StatsBuffers {
            key_prune,
            key_unify,
            magnitudes,
            signs,
        })
    }

    fn read_args(&self, gpu: &Gpu, what: &str) -> Result<Vec<[u32; 3]>> {
        let n = (self.pass_list.len() * ARGS_WORDS * 4) as u64;
        Ok(triples(
            read_ranges(gpu, what, &[(&self.indirect, 0, n)])?.remove(0),
        ))
    }

    fn read_states(&self, gpu: &Gpu, what: &str) -> Result<Vec<TwinState>> {
        let n = 2 * self.num_groups as u64 * std::mem::size_of::<SelState>() as u64;
        Ok(twin_states(
            read_ranges(gpu, what, &[(&self.states, 0, n)])?.remove(0),
        ))
    }

    fn read_hist(&self, gpu: &Gpu, what: &str) -> Result<Vec<u32>> {
        let n = self.num_groups as u64 * kernels::RADIX as u64 * 4;
        Ok(read_ranges(gpu, what, &[(&self.hist, 0, n)])?.remove(0))
    }

    /// What `step` wrote, read back.
    fn stage_output(&self, gpu: &Gpu, step: &Step, what: &str) -> Result<StageOutput> {
        let what = format!("the output of {what}");
        Ok(match *step {
            Step::Stats(chunk) => {
                let stats = self.read_stats(gpu, &what)?;
                let list = self.read_u32(gpu, &what, &[&self.chunks[chunk].rescale])?;
                let header = RESCALE_HEADER.len();
                let count = list[0][0] as usize;
                let listed = list[0]
                    .get(header..header + count)
                    .ok_or_else(|| {
                        Error::Readback(format!(
                            "{what}: {count} blocks listed for block_rescale, room for {}",
                            list[0].len() - header
                        ))
                    })?
                    .to_vec();
                StageOutput::BlockStats {
                    chunk,
                    stats,
                    listed,
                    rescale_args: [list[0][1], list[0][2], list[0][3]],
                }
            }
            Step::Rescale(chunk) => {
                let n = self.layout.layers.len() as u64 * 4;
                StageOutput::BlockRescale {
                    chunk,
                    stats: self.read_stats(gpu, &what)?,
                    first_bad: read_ranges(gpu, &what, &[(&self.first_bad, 0, n)])?.remove(0),
                }
            }
            Step::Histogram(pass) => StageOutput::RadixHistogram {
                pass,
                hist: self.read_hist(gpu, &what)?,
            },
            Step::Resolve(pass) => StageOutput::RadixResolve {
                pass,
                states: self.read_states(gpu, &what)?,
                hist: self.read_hist(gpu, &what)?,
                args: self.read_args(gpu, &what)?,
            },
            Step::Pack => {
                let blocks = self.layout.total_blocks as u64;
                let mut raw: Vec<Vec<u32>> = read_ranges(
                    gpu,
                    &what,
                    &[
                        (&self.state_map, 0, blocks / 16 * 4),
                        (&self.magnitude, 0, blocks * 4),
                    ],
                )?;
                let magnitudes = bytemuck::cast_slice(&raw.pop().unwrap_or_default()).to_vec();
                StageOutput::PackStates {
                    state_map: raw.pop().unwrap_or_default(),
                    magnitudes,
                }
            }
            Step::Apply(chunk) => {
                let c = &self.chunks[chunk];
                let n = self.layout.chunks[chunk].len as u64 * 4;
                let mut raw: Vec<Vec<f32>> =
                    read_ranges(gpu, &what, &[(&c.z, 0, n), (&c.u, 0, n)])?;
                let u = raw.pop().unwrap_or_default();
                StageOutput::ApplyProjection {
                    chunk,
                    z: raw.pop().unwrap_or_default(),
                    u,
                }
            }
        })
    }

    /// [`run_stepwise`](Self::run_stepwise), handing `visit` what the reset and then each
    /// dispatch wrote, in order, before the next one runs. The result is the same
    /// projection (and the same non-finite check at the end).
    pub fn run_stages(&self, gpu: &Gpu, mut visit: impl FnMut(Stage)) -> Result<()> {
        let mut encoder = gpu.device.create_command_encoder(&Default::default());
        self.record_reset(&mut encoder);
        gpu.submit_and_wait("projection reset", encoder.finish())?;
        visit(Stage {
            what: "the projection reset".into(),
            output: StageOutput::Reset {
                states: self.read_states(gpu, "the reset selection states")?,
                args: self.read_args(gpu, "the reset dispatch arguments")?,
            },
        });
        for step in self.steps() {
            let what = self.describe(&step);
            let mut encoder = gpu.device.create_command_encoder(&Default::default());
            {
                let mut pass = encoder.begin_compute_pass(&wgpu::ComputePassDescriptor {
                    label: Some("projection stage"),
                    timestamp_writes: None,
                });
                self.encode(&mut pass, &step);
            }
            gpu.submit_and_wait(&what, encoder.finish())?;
            let output = self.stage_output(gpu, &step, &what)?;
            visit(Stage { what, output });
        }
        self.check_finite(gpu)
    }
}
