//! Datasets read by our own loaders (no download at run time): MNIST-format IDX files.

pub mod idx;

pub use idx::{ImageSet, load_mnist_dir};
