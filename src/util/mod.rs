//! Shared utilities that belong to no stage: the error type, crash-safe output files,
//! progress bars, the deterministic safetensors writer and mapped reader, and small
//! filesystem and JSON helpers.

pub mod atomic_file;
pub mod error;
pub mod fs;
pub mod json;
pub mod progress;
pub mod safetensors_file;
pub mod units;
