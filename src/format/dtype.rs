//! The float dtypes a compressed layer can stand for, and the conversions to and from the
//! f32 the projection works in. A layer remembers its dtype so that `decompress` hands
//! back a checkpoint of the same dtypes as the one `project` read.

use safetensors::Dtype;

/// The dtypes `project` reads a weight tensor in, and so the ones a layer may record.
pub const LAYER_DTYPES: [Dtype; 4] = [Dtype::F32, Dtype::F16, Dtype::BF16, Dtype::F64];

/// Whether a layer may record this dtype.
pub fn is_layer_dtype(dtype: Dtype) -> bool {
    LAYER_DTYPES.contains(&dtype)
}

/// [`LAYER_DTYPES`] as text, for errors.
pub fn layer_dtypes_text() -> String {
    let names: Vec<String> = LAYER_DTYPES.iter().map(|d| format!("{d:?}")).collect();
    names.join("/")
}

/// A tensor's little-endian values as f32, or `None` for a dtype not in [`LAYER_DTYPES`].
/// F16 and BF16 convert exactly; an F64 is rounded to the nearest f32, and one beyond the
/// f32 range becomes an infinity (see [`f64_out_of_range`]).
pub fn to_f32(dtype: Dtype, data: &[u8]) -> Option<Vec<f32>> {
    let halves = || {
        data.chunks_exact(2)
            .map(|c| u16::from_le_bytes([c[0], c[1]]))
    };
    Some(match dtype {
        Dtype::F32 => data
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect(),
        Dtype::F16 => halves().map(|h| half::f16::from_bits(h).to_f32()).collect(),
        Dtype::BF16 => halves()
            .map(|h| half::bf16::from_bits(h).to_f32())
            .collect(),
        Dtype::F64 => f64s(data).map(|v| v as f32).collect(),
        _ => return None,
    })
}

fn f64s(data: &[u8]) -> impl Iterator<Item = f64> + '_ {
    data.chunks_exact(8)
        .map(|c| f64::from_le_bytes(c.try_into().expect("8 bytes")))
}

/// The F64 value at flat index `i` of `data` when it is finite but too large for an f32
/// (so that an error can show it rather than the infinity it became).
pub fn f64_out_of_range(dtype: Dtype, data: &[u8], i: usize) -> Option<f64> {
    if dtype != Dtype::F64 {
        return None;
    }
    f64s(data)
        .nth(i)
        .filter(|v| v.is_finite() && !(*v as f32).is_finite())
}

/// `values` in `dtype`, little-endian, each rounded to the nearest value of the dtype.
/// `dtype` must be one of [`LAYER_DTYPES`].
pub fn from_f32(dtype: Dtype, values: &[f32]) -> Vec<u8> {
    match dtype {
        Dtype::F16 => values
            .iter()
            .flat_map(|v| half::f16::from_f32(*v).to_le_bytes())
            .collect(),
        Dtype::BF16 => values
            .iter()
            .flat_map(|v| half::bf16::from_f32(*v).to_le_bytes())
            .collect(),
        Dtype::F64 => values
            .iter()
            .flat_map(|v| f64::from(*v).to_le_bytes())
            .collect(),
        _ => values.iter().flat_map(|v| v.to_le_bytes()).collect(),
    }
}

/// Whether the finite f32 `v` stays finite once rounded to `dtype` (an F16 holds at most
/// 65504).
pub fn fits(dtype: Dtype, v: f32) -> bool {
    match dtype {
        Dtype::F16 => half::f16::from_f32(v).is_finite(),
        Dtype::BF16 => half::bf16::from_f32(v).is_finite(),
        _ => true,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn conversions_round_trip_what_each_dtype_holds() {
        let v = [0.0f32, -0.0, 1.5, -2.25, 65504.0, 1e-3];
        for d in LAYER_DTYPES {
            let back = to_f32(d, &from_f32(d, &v)).unwrap();
            let want: Vec<f32> = match d {
                Dtype::BF16 => v
                    .iter()
                    .map(|x| half::bf16::from_f32(*x).to_f32())
                    .collect(),
                Dtype::F16 => v.iter().map(|x| half::f16::from_f32(*x).to_f32()).collect(),
                _ => v.to_vec(),
            };
            let bits = |x: &[f32]| x.iter().map(|f| f.to_bits()).collect::<Vec<_>>();
            assert_eq!(bits(&back), bits(&want), "{d:?}");
        }
        assert!(to_f32(Dtype::I64, &[0; 8]).is_none());
        assert!(fits(Dtype::F16, 65504.0) && !fits(Dtype::F16, 65520.0));
        assert!(fits(Dtype::BF16, 1e38) && !fits(Dtype::BF16, f32::MAX));
        let big = 1e300f64.to_le_bytes();
        assert_eq!(f64_out_of_range(Dtype::F64, &big, 0), Some(1e300));
        assert_eq!(f64_out_of_range(Dtype::F64, &1.0f64.to_le_bytes(), 0), None);
    }
}
