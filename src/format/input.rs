//! The input of `microunify project`, from bytes to the tensors to project and what passes
//! through, without a GPU (so that bad files fail before an adapter is opened, and so that a
//! fuzzer can drive it on arbitrary bytes).
//!
//! A plain checkpoint is checked as a safetensors container (the same strict header parser
//! the compressed reader uses). A file with `microunify.*` metadata is a compressed file and
//! goes through the full validating reader: its selected layers are re-projected from their
//! dense reconstruction (their old compact tensors are dropped), its other layers keep their
//! compressed form unchanged, and its pass-through tensors are candidates like any tensor of
//! a plain checkpoint.

use super::header::{Container, check_loads_in_safetensors};
use super::{
    CompressedFile, CompressedLayer, RawTensor, check_names, dtype, float_text, format_err, read,
};
use crate::block::{BlockShape, ConvLayout, GemmView, LayerSpec, to_gemm};
use crate::compressed::CompressedMatrix;
use crate::error::{Error, Result};
use regex::Regex;
use safetensors::Dtype;

/// Which tensors `project` compresses, and how conv weights are seen as matrices.
#[derive(Clone, Debug, Default)]
pub struct Selection {
    /// Only names this matches (all when `None`).
    pub include: Option<Regex>,
    /// No name this matches.
    pub exclude: Option<Regex>,
    /// GEMM view of 4-D (conv) weights; 2-D ones are always recorded as channel-major.
    pub layout: ConvLayout,
}

impl Selection {
    /// Whether `name` passes `include` and `exclude`.
    pub fn matches(&self, name: &str) -> bool {
        self.include.as_ref().is_none_or(|r| r.is_match(name))
            && !self.exclude.as_ref().is_some_and(|r| r.is_match(name))
    }

    /// The layout recorded for a tensor of this shape: it only means something for conv
    /// weights, and recording it on a linear one would only mislead readers of the metadata.
    fn layout_for(&self, shape: &[usize]) -> ConvLayout {
        if shape.len() == 4 {
            self.layout
        } else {
            ConvLayout::ChannelMajor
        }
    }
}

/// One tensor chosen for projection.
#[derive(Clone, Debug, PartialEq)]
pub struct SelectedTensor {
    pub name: String,
    /// The tensor's own shape (PyTorch order).
    pub shape: Vec<usize>,
    pub layout: ConvLayout,
    /// The dtype it was read in (one of [`dtype::LAYER_DTYPES`]), which its compressed
    /// layer records.
    pub dtype: Dtype,
    /// Its values, row-major in the GEMM view of `layout`; all finite.
    pub gemm: Vec<f32>,
    /// True for a compressed layer of the input, projected again from its dense
    /// reconstruction.
    pub recompressed: bool,
}

/// Where each layer of the output comes from, in output order.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Slot {
    /// The next of [`ProjectInput::selected`], once projected.
    Projected,
    /// The next of `kept.layers`, as it was.
    Kept,
}

/// `project`'s input, parsed and checked: what to project, and everything else the output
/// carries unchanged.
#[derive(Clone, Debug)]
pub struct ProjectInput {
    /// The tensors to project, in output order.
    pub selected: Vec<SelectedTensor>,
    /// Pass-through tensors, metadata (without the format's own keys) and, from a
    /// compressed input, the layers left out of the selection, in their compressed form.
    pub kept: CompressedFile,
    /// Whether the input was a microunify compressed file.
    pub compressed: bool,
    /// Tensors in the input file (a compressed layer's compact tensors not counted).
    pub tensors: usize,
    order: Vec<Slot>,
}

/// A projection needs finite weights; the first that is not is named with its flat index
/// (PyTorch order) and its kind, or, for an F64 beyond the f32 range the projection works
/// in, its value.
fn check_finite(name: &str, dtype: Dtype, data: &[u8], values: &[f32]) -> Result<()> {
    let Some(i) = values.iter().position(|v| !v.is_finite()) else {
        return Ok(());
    };
    let what = match dtype::f64_out_of_range(dtype, data, i) {
        Some(v) => format!(
            "value {v:e} at flat index {i} lies beyond the f32 range the projection works in"
        ),
        None => format!(
            "non-finite value {} at flat index {i}",
            float_text(values[i])
        ),
    };
    Err(format_err(
        name,
        format!(
            "{what}: a tensor to project must hold finite weights (leave it out of the selection to pass it through)"
        ),
    ))
}

impl ProjectInput {
    /// Parses `bytes` (a safetensors checkpoint or a compressed file) and sorts its tensors
    /// into the selection (2-D or 4-D tensors of [`dtype::LAYER_DTYPES`] that `selection`
    /// matches) and everything else. The selection may come out empty; the caller decides
    /// what that means.
    pub fn parse(bytes: &[u8], selection: &Selection) -> Result<Self> {
        let st = Container::parse(bytes)?;
        let mut input = Self {
            selected: Vec::new(),
            kept: CompressedFile::default(),
            compressed: read::is_compressed(&st),
            tensors: 0,
            order: Vec::new(),
        };
        if input.compressed {
            let file = read::decode(&st)?;
            check_loads_in_safetensors(bytes)?;
            input.tensors = file.layers.len() + file.passthrough.len();
            input.kept.metadata = file.metadata;
            for layer in file.layers {
                if selection.matches(&layer.name) {
                    input.order.push(Slot::Projected);
                    let layout = selection.layout_for(&layer.shape);
                    input.selected.push(SelectedTensor {
                        gemm: to_gemm(&layer.dense(), &layer.shape, layout),
                        name: layer.name,
                        shape: layer.shape,
                        layout,
                        dtype: layer.dtype,
                        recompressed: true,
                    });
                } else {
                    input.order.push(Slot::Kept);
                    input.kept.layers.push(layer);
                }
            }
            for (name, t) in file.passthrough {
                input.candidate(selection, name, t)?;
            }
        } else {
            st.check_coverage()?;
            check_loads_in_safetensors(bytes)?;
            input.tensors = st.len();
            input.kept.metadata = st.metadata.clone();
            for name in st.offset_order() {
                let t = st.get(name).expect("a listed name");
                let raw = RawTensor {
                    dtype: t.dtype,
                    shape: t.shape.to_vec(),
                    data: t.data.to_vec(),
                };
                input.candidate(selection, name.to_string(), raw)?;
            }
        }
        // The output's names, checked now rather than when it is written after the GPU run.
        let layers: Vec<&str> = (input.selected.iter().map(|s| s.name.as_str()))
            .chain(input.kept.layers.iter().map(|l| l.name.as_str()))
            .collect();
        check_names(&layers, input.kept.passthrough.keys().map(String::as_str))?;
        Ok(input)
    }

    /// Selects `t` or passes it through.
    fn candidate(&mut self, selection: &Selection, name: String, t: RawTensor) -> Result<()> {
        let projectable = selection.matches(&name)
            && matches!(t.shape.len(), 2 | 4)
            && GemmView::of_shape(&name, &t.shape).is_ok();
        match dtype::to_f32(t.dtype, &t.data).filter(|_| projectable) {
            Some(values) => {
                check_finite(&name, t.dtype, &t.data, &values)?;
                let layout = selection.layout_for(&t.shape);
                self.order.push(Slot::Projected);
                self.selected.push(SelectedTensor {
                    gemm: to_gemm(&values, &t.shape, layout),
                    name,
                    shape: t.shape,
                    layout,
                    dtype: t.dtype,
                    recompressed: false,
                });
            }
            None => {
                self.kept.passthrough.insert(name, t);
            }
        }
        Ok(())
    }

    /// The layers to project with this block shape, in the order of [`Self::selected`].
    pub fn specs(&self, block: BlockShape) -> Result<Vec<LayerSpec>> {
        (self.selected.iter())
            .map(|s| LayerSpec::new(s.name.clone(), &s.shape, block))
            .collect()
    }

    /// The output file, given the compressed form of each selected tensor (in the order of
    /// [`Self::selected`]).
    pub fn finish(self, matrices: Vec<CompressedMatrix>) -> Result<CompressedFile> {
        if matrices.len() != self.selected.len() {
            return Err(Error::Shape {
                layer: "<network>".into(),
                why: format!(
                    "{} compressed matrices for {} selected tensors",
                    matrices.len(),
                    self.selected.len()
                ),
            });
        }
        let CompressedFile {
            layers: kept,
            passthrough,
            metadata,
        } = self.kept;
        let mut kept = kept.into_iter();
        let mut projected = self.selected.into_iter().zip(matrices);
        let mut layers = Vec::with_capacity(self.order.len());
        for slot in self.order {
            layers.push(match slot {
                Slot::Kept => kept.next().expect("one kept layer per slot"),
                Slot::Projected => {
                    let (s, m) = projected.next().expect("one selected tensor per slot");
                    CompressedLayer::new(s.name, &s.shape, s.layout, m)?.with_dtype(s.dtype)?
                }
            });
        }
        Ok(CompressedFile {
            layers,
            passthrough,
            metadata,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cpu::projection as cpu;
    use safetensors::tensor::TensorView;

    fn weights(n: usize, seed: u32) -> Vec<f32> {
        (0..n)
            .map(|i| (((i as u32 * 2654435761u32) ^ seed) % 1000) as f32 / 500.0 - 1.0)
            .collect()
    }

    fn le(v: &[f32]) -> Vec<u8> {
        v.iter().flat_map(|x| x.to_le_bytes()).collect()
    }

    /// The CPU reference's compressed form of each selected tensor.
    fn project(input: &ProjectInput, block: &str, ratios: (f64, f64)) -> Vec<CompressedMatrix> {
        let specs = input.specs(block.parse().unwrap()).unwrap();
        let mode = cpu::per_layer(&specs, ratios.0, ratios.1).unwrap();
        let gemm: Vec<&[f32]> = input.selected.iter().map(|s| &s.gemm[..]).collect();
        let out = cpu::project(&specs, &gemm, &mode).unwrap();
        (specs.iter().zip(out))
            .map(|(s, p)| CompressedMatrix::from_dense(s.view, s.block, &p.z, &p.states).unwrap())
            .collect()
    }

    /// A plain checkpoint: a linear and a conv weight, a bias, an I64 counter.
    fn plain() -> Vec<u8> {
        let (fc, conv, bias) = (
            weights(12 * 10, 1),
            weights(6 * 2 * 3 * 3, 2),
            weights(12, 3),
        );
        let (fc, conv, bias) = (le(&fc), le(&conv), le(&bias));
        let steps = 7i64.to_le_bytes();
        let t = [
            (
                "fc.weight",
                TensorView::new(Dtype::F32, vec![12, 10], &fc).unwrap(),
            ),
            (
                "conv.weight",
                TensorView::new(Dtype::F32, vec![6, 2, 3, 3], &conv).unwrap(),
            ),
            (
                "fc.bias",
                TensorView::new(Dtype::F32, vec![12], &bias).unwrap(),
            ),
            (
                "steps",
                TensorView::new(Dtype::I64, vec![1], &steps).unwrap(),
            ),
        ];
        let meta = [("format".to_string(), "pt".to_string())].into();
        safetensors::serialize(t, Some(meta)).unwrap()
    }

    fn all() -> Selection {
        Selection::default()
    }

    #[test]
    fn a_plain_checkpoint_splits_into_layers_and_pass_through() {
        let input = ProjectInput::parse(&plain(), &all()).unwrap();
        assert!(!input.compressed);
        assert_eq!(input.tensors, 4);
        let names: Vec<&str> = input.selected.iter().map(|s| s.name.as_str()).collect();
        assert_eq!(names, ["conv.weight", "fc.weight"]);
        assert!(input.kept.passthrough.contains_key("fc.bias"));
        assert!(input.kept.passthrough.contains_key("steps"));
        assert_eq!(input.kept.metadata["format"], "pt");
        let m = project(&input, "4x4", (0.3, 0.3));
        let file = input.finish(m).unwrap();
        CompressedFile::from_bytes(&file.to_bytes().unwrap()).unwrap();
    }

    #[test]
    fn a_compressed_input_is_projected_again_where_selected() {
        let position = Selection {
            layout: ConvLayout::PositionMajor,
            ..all()
        };
        let first = ProjectInput::parse(&plain(), &position).unwrap();
        let m = project(&first, "4x4", (0.4, 0.3));
        let once = first.finish(m).unwrap();
        let bytes = once.to_bytes().unwrap();

        // Everything again, with another block shape and layout: every layer from its
        // dense reconstruction, the old compact tensors gone.
        let again = ProjectInput::parse(&bytes, &all()).unwrap();
        assert!(again.compressed);
        assert!(again.selected.iter().all(|s| s.recompressed));
        for s in &again.selected {
            let l = once.layer(&s.name).unwrap();
            assert_eq!(
                s.gemm,
                to_gemm(&l.dense(), &l.shape, ConvLayout::ChannelMajor)
            );
        }
        let m = project(&again, "2x8", (0.2, 0.5));
        let twice = again.finish(m).unwrap();
        let back = CompressedFile::from_bytes(&twice.to_bytes().unwrap()).unwrap();
        assert!(
            back.layers
                .iter()
                .all(|l| l.matrix.block().to_string() == "2x8")
        );
        assert_eq!(back.passthrough, once.passthrough);
        assert_eq!(back.metadata, once.metadata);

        // Only the linear layer: the conv keeps its compressed form bit for bit.
        let only_fc = Selection {
            include: Some(Regex::new("^fc").unwrap()),
            ..all()
        };
        let part = ProjectInput::parse(&bytes, &only_fc).unwrap();
        let names: Vec<&str> = part.selected.iter().map(|s| s.name.as_str()).collect();
        assert_eq!(names, ["fc.weight"]);
        let m = project(&part, "8x8", (0.5, 0.0));
        let mixed = part.finish(m).unwrap();
        let back = CompressedFile::from_bytes(&mixed.to_bytes().unwrap()).unwrap();
        assert_eq!(back.layer("conv.weight"), once.layer("conv.weight"));
        assert_eq!(
            back.layer("fc.weight").unwrap().matrix.block().to_string(),
            "8x8"
        );
        // Layers stay in the order the input lists them.
        let order: Vec<&str> = back.layers.iter().map(|l| l.name.as_str()).collect();
        let before: Vec<&str> = once.layers.iter().map(|l| l.name.as_str()).collect();
        assert_eq!(order, before);
    }

    #[test]
    fn bad_inputs_are_named_before_any_projection() {
        let fc = le(&weights(12, 1));
        let mut bad = weights(12, 1);
        bad[5] = f32::INFINITY;
        let bad = le(&bad);
        let file = |name: &str, data: &[u8]| {
            let v = TensorView::new(Dtype::F32, vec![3, 4], data).unwrap();
            safetensors::serialize([(name, v)], None).unwrap()
        };
        let err = |bytes: &[u8]| ProjectInput::parse(bytes, &all()).unwrap_err().to_string();
        let e = err(&file("w", &bad));
        assert!(
            e.contains("\"w\"") && e.contains("non-finite value +inf at flat index 5"),
            "{e}"
        );
        // Not selected, it passes through as it is.
        let skip = Selection {
            exclude: Some(Regex::new("^w$").unwrap()),
            ..all()
        };
        let p = ProjectInput::parse(&file("w", &bad), &skip).unwrap();
        assert!(p.selected.is_empty() && p.kept.passthrough.contains_key("w"));
        // A name the output could not hold.
        let e = err(&file("x.mu.values", &fc));
        assert!(e.contains("\"x.mu.values\""), "{e}");
        // Garbage, and a header that claims more than the file has.
        assert!(err(b"\x05\0\0\0\0\0\0\0{}").contains("<header>"));
        assert!(err(&[0xff; 16]).contains("limit of 100000000"));
    }
}
