//! Weight shapes of real networks, for benchmarks and the demo.

use crate::block::{BlockShape, LayerSpec};
use crate::error::Result;

/// A named network: its layers' names and tensor shapes (PyTorch order).
pub struct NetShapes {
    pub name: &'static str,
    pub layers: Vec<(String, Vec<usize>)>,
}

impl NetShapes {
    /// Layer specs with one block shape for all layers.
    pub fn specs(&self, block: BlockShape) -> Result<Vec<LayerSpec>> {
        self.layers
            .iter()
            .map(|(n, s)| LayerSpec::new(n.clone(), s, block))
            .collect()
    }

    /// Number of weights.
    pub fn params(&self) -> usize {
        self.layers
            .iter()
            .map(|(_, s)| s.iter().product::<usize>())
            .sum()
    }
}

/// Caffe LeNet-5 of the ADMM pruning papers: conv 20, conv 50, fc 500, fc 10 (431k weights).
pub fn lenet5() -> NetShapes {
    NetShapes {
        name: "lenet5",
        layers: vec![
            ("conv1".into(), vec![20, 1, 5, 5]),
            ("conv2".into(), vec![50, 20, 5, 5]),
            ("fc1".into(), vec![500, 800]),
            ("fc2".into(), vec![10, 500]),
        ],
    }
}

/// ResNet-18 (ImageNet): 20 convolutions, 3 downsampling 1x1 convs and the classifier.
pub fn resnet18() -> NetShapes {
    let mut layers = vec![("conv1".to_string(), vec![64, 3, 7, 7])];
    let mut cin = 64;
    for (stage, cout) in [64usize, 128, 256, 512].into_iter().enumerate() {
        for block in 0..2 {
            let name = format!("layer{}.{block}", stage + 1);
            let first_in = if block == 0 { cin } else { cout };
            layers.push((format!("{name}.conv1"), vec![cout, first_in, 3, 3]));
            layers.push((format!("{name}.conv2"), vec![cout, cout, 3, 3]));
            if block == 0 && cin != cout {
                layers.push((format!("{name}.downsample"), vec![cout, cin, 1, 1]));
            }
        }
        cin = cout;
    }
    layers.push(("fc".into(), vec![1000, 512]));
    NetShapes {
        name: "resnet18",
        layers,
    }
}

/// The 12 encoder layers of BERT-base (hidden 768, FFN 3072): 72 matrices, 85M weights.
pub fn bert_base_encoder() -> NetShapes {
    let mut layers = Vec::new();
    for l in 0..12 {
        for m in ["query", "key", "value", "attention.output"] {
            layers.push((format!("encoder.{l}.{m}"), vec![768, 768]));
        }
        layers.push((format!("encoder.{l}.intermediate"), vec![3072, 768]));
        layers.push((format!("encoder.{l}.output"), vec![768, 3072]));
    }
    NetShapes {
        name: "bert-base-encoder",
        layers,
    }
}

/// Looks a network up by name.
pub fn by_name(name: &str) -> Option<NetShapes> {
    match name {
        "lenet5" => Some(lenet5()),
        "resnet18" => Some(resnet18()),
        "bert-base-encoder" | "bert" => Some(bert_base_encoder()),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn parameter_counts_match_the_literature() {
        assert_eq!(super::lenet5().params(), 430_500);
        // torchvision resnet18 has 11,689,512 parameters of which 11,678,912 are in
        // convolution and linear weights (the rest: biases and batch-norm).
        assert_eq!(super::resnet18().params(), 11_678_912);
        assert_eq!(super::bert_base_encoder().params(), 12 * 7_077_888);
    }
}
