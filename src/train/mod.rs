//! Training with libtorch (the `train` feature): the ADMM pipeline of docs/METHOD.md §3 and what
//! it needs — models, data as tensors, an optimizer with savable state, masks for the
//! retraining, checkpoints, reports and export.

pub mod checkpoint;
pub mod config;
pub mod data;
pub mod denormals;
pub mod export;
pub mod fit;
pub mod mask;
pub mod models;
pub mod network;
pub mod optim;
pub mod outdir;
pub mod pipeline;
pub mod report;
pub mod rundir;
pub mod script;
pub mod sensitivity;
pub mod settings;
pub mod sweep;
pub mod tensors;
