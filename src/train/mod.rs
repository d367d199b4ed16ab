//! Training with libtorch (the `train` feature): the models of the ADMM experiments, data
//! as tensors, and CPU settings that keep epochs fast.

pub mod admm;
pub mod data;
pub mod denormals;
pub mod fit;
pub mod models;
