//! Training with libtorch (the `train` feature): the models of the ADMM experiments.

pub mod models;
