//! Per-channel normalisation of images, `(x − mean) / std` with `x` the pixel value (a byte
//! read as `byte / 255`): by default with the training images' own mean and standard
//! deviation per channel (MNIST's are the usual 0.1307 and 0.3081), given pairs, or none.
//! The statistics used are returned to the caller: whoever feeds the compressed model must
//! normalise its inputs the same way.

use super::{Pixels, Split, shape_text};
use crate::error::{Error, Result};
use std::fmt;
use std::str::FromStr;

/// How images are normalised; as text (flag `--normalize`, TOML `normalize`): `train`,
/// `none`, or `MEAN,STD[;MEAN,STD...]` (one pair for every channel, or one per channel).
#[derive(Clone, Debug, Default, PartialEq)]
pub enum Normalization {
    /// Each channel's mean and standard deviation over the training images.
    #[default]
    Training,
    /// The pixel values as they are (mean 0, std 1).
    None,
    /// These `[mean, std]` pairs: one for all channels, or one per channel.
    Given(Vec<[f64; 2]>),
}

impl FromStr for Normalization {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        let bad = |why: String| Error::Normalize {
            spec: s.to_string(),
            why,
        };
        match s.trim() {
            "train" => return Ok(Self::Training),
            "none" => return Ok(Self::None),
            _ => {}
        }
        s.split(';')
            .enumerate()
            .map(|(i, p)| pair(p, i).map_err(bad))
            .collect::<Result<Vec<_>>>()
            .map(Self::Given)
    }
}

/// One `MEAN,STD` pair (the `i`-th, from 0), checked: both finite, std positive.
fn pair(text: &str, i: usize) -> std::result::Result<[f64; 2], String> {
    let nums: Vec<Option<f64>> = text.split(',').map(|n| n.trim().parse().ok()).collect();
    let [Some(mean), Some(std)] = nums[..] else {
        return Err(format!(
            "pair {} {text:?} is not MEAN,STD; expected `train`, `none` or \
             MEAN,STD[;MEAN,STD...] (one pair for all channels or one per channel), e.g. \
             0.1307,0.3081",
            i + 1
        ));
    };
    if !mean.is_finite() || !std.is_finite() || std <= 0.0 {
        return Err(format!(
            "pair {} ({mean}, {std}): the mean must be finite and the std a positive finite number",
            i + 1
        ));
    }
    Ok([mean, std])
}

impl fmt::Display for Normalization {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Training => f.write_str("train"),
            Self::None => f.write_str("none"),
            Self::Given(pairs) => {
                let text: Vec<String> = pairs.iter().map(|[m, s]| format!("{m},{s}")).collect();
                f.write_str(&text.join(";"))
            }
        }
    }
}

impl Normalization {
    /// The `[mean, std]` of each channel of images like `train`'s (the training set):
    /// computed from it, given (one pair repeated for every channel), or `[0, 1]`. A number
    /// of pairs other than one or the channel count is an error naming both.
    pub fn stats(&self, train: &Split) -> Result<Vec<[f64; 2]>> {
        let channels = train.shape[0];
        match self {
            Self::Training => Ok(channel_stats(train)),
            Self::None => Ok(vec![[0.0, 1.0]; channels]),
            Self::Given(p) if p.len() == 1 => Ok(vec![p[0]; channels]),
            Self::Given(p) if p.len() == channels => Ok(p.clone()),
            Self::Given(p) => Err(Error::Normalize {
                spec: self.to_string(),
                why: format!(
                    "{} MEAN,STD pairs, but the images of {} are {} ({channels} channel{}): \
                     give one pair per channel, or one for all",
                    p.len(),
                    train.from.images,
                    shape_text(train.shape),
                    if channels == 1 { "" } else { "s" }
                ),
            }),
        }
    }
}

/// Each channel's `[mean, std]` (population std) over a set's pixel values (bytes read as
/// `byte / 255`). A constant channel gets std 1: it is only centred.
pub fn channel_stats(set: &Split) -> Vec<[f64; 2]> {
    let [c, h, w] = set.shape;
    let plane = h * w;
    let per_channel = (set.len() * plane).max(1) as f64;
    // Channel `ch`'s values of every image, in order.
    let planes =
        |ch: usize| (0..set.len()).map(move |n| (n * c + ch) * plane..(n * c + ch + 1) * plane);
    (0..c)
        .map(|ch| {
            let [mean, var] = match &set.pixels {
                // Bytes: exact sums from a histogram, no rounding over millions of values.
                Pixels::U8(v) => {
                    let mut hist = [0u64; 256];
                    for r in planes(ch) {
                        for &p in &v[r] {
                            hist[usize::from(p)] += 1;
                        }
                    }
                    let x = |b: usize| b as f64 / 255.0;
                    let mean = (0..256).map(|b| hist[b] as f64 * x(b)).sum::<f64>() / per_channel;
                    let var = (0..256)
                        .map(|b| hist[b] as f64 * (x(b) - mean).powi(2))
                        .sum::<f64>()
                        / per_channel;
                    [mean, var]
                }
                // Floats: two passes, so that a large offset does not cancel the variance.
                Pixels::F32(v) => {
                    let values = || planes(ch).flat_map(|r| v[r].iter().map(|&x| f64::from(x)));
                    let mean = values().sum::<f64>() / per_channel;
                    let var = values().map(|x| (x - mean).powi(2)).sum::<f64>() / per_channel;
                    [mean, var]
                }
            };
            let std = var.sqrt();
            [mean, if std > 0.0 { std } else { 1.0 }]
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::SetFrom;

    fn set(shape: [usize; 3], pixels: Pixels) -> Split {
        let n = pixels.len() / shape.iter().product::<usize>();
        Split {
            shape,
            pixels,
            labels: vec![0; n],
            from: SetFrom {
                images: "d.safetensors, tensor train.x".into(),
                labels: "y".into(),
            },
        }
    }

    #[test]
    fn specs_parse_and_print_back() {
        for text in ["train", "none", "0.1307,0.3081", "0.5,0.25;1,2;-3,0.001"] {
            let n: Normalization = text.parse().unwrap();
            assert_eq!(n.to_string(), text);
            assert_eq!(n.to_string().parse::<Normalization>().unwrap(), n);
        }
        let n: Normalization = " 0.5 , 2 ; 1,1".parse().unwrap();
        assert_eq!(n, Normalization::Given(vec![[0.5, 2.0], [1.0, 1.0]]));
        for (text, needle) in [
            ("0.5", "pair 1 \"0.5\" is not MEAN,STD"),
            ("0.5,1;2", "pair 2 \"2\" is not MEAN,STD"),
            ("0.5,1,3", "is not MEAN,STD"),
            ("a,b", "is not MEAN,STD"),
            ("", "is not MEAN,STD"),
            ("0.5,0", "std a positive finite number"),
            ("0.5,-1", "std a positive finite number"),
            ("0.5,inf", "std a positive finite number"),
            ("nan,1", "the mean must be finite"),
        ] {
            let e = text.parse::<Normalization>().unwrap_err().to_string();
            assert!(
                e.starts_with(&format!("normalize {text:?}: ")) && e.contains(needle),
                "{text:?}: {e}"
            );
        }
    }

    #[test]
    fn stats_are_per_channel_and_pair_counts_are_checked() {
        // Two images of 2 channels × 1×2: channel 0 holds 0, 1, 2, 3; channel 1 is constant.
        let s = set(
            [2, 1, 2],
            Pixels::F32(vec![0.0, 1.0, 7.0, 7.0, 2.0, 3.0, 7.0, 7.0]),
        );
        let stats = channel_stats(&s);
        assert_eq!(stats[0][0], 1.5);
        assert!((stats[0][1] - 1.25f64.sqrt()).abs() < 1e-12, "{stats:?}");
        assert_eq!(stats[1], [7.0, 1.0], "a constant channel is only centred");
        assert_eq!(Normalization::Training.stats(&s).unwrap(), stats);
        assert_eq!(Normalization::None.stats(&s).unwrap(), [[0.0, 1.0]; 2]);
        let one = Normalization::Given(vec![[0.5, 2.0]]);
        assert_eq!(one.stats(&s).unwrap(), [[0.5, 2.0]; 2]);
        let e = "1,1;2,2;3,3"
            .parse::<Normalization>()
            .unwrap()
            .stats(&s)
            .unwrap_err();
        assert_eq!(
            e.to_string(),
            "normalize \"1,1;2,2;3,3\": 3 MEAN,STD pairs, but the images of d.safetensors, \
             tensor train.x are 2×1×2 (2 channels): give one pair per channel, or one for all"
        );
        // Bytes are read as byte / 255, and a large offset does not cancel the variance.
        let b = set([1, 1, 2], Pixels::U8(vec![0, 255]));
        assert_eq!(channel_stats(&b), [[0.5, 0.5]]);
        let far = set([1, 1, 2], Pixels::F32(vec![1e6, 1e6 + 2.0]));
        assert_eq!(channel_stats(&far), [[1e6 + 1.0, 1.0]]);
    }

    #[test]
    fn mnist_has_the_usual_stats() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("assets/mnist");
        let (train, _) = crate::data::load_mnist_dir(&dir).unwrap();
        let [[mean, std]] = channel_stats(&Split::from(train))[..] else {
            panic!("one channel")
        };
        assert!(
            (mean - 0.1307).abs() < 5e-5 && (std - 0.3081).abs() < 5e-5,
            "{mean} {std}"
        );
    }
}
