//! l3kit: a toolkit for Large Lookup Layers (L3).
//!
//! The folder layout is the architecture (see `docs/architecture.md`); data flows one way:
//!
//! ```text
//! corpus -> profile -> allocate (+ plan) -> pack -> serve -> model -> verify -> hub
//!                                    checkpoint --^
//! ```
//!
//! - [`corpus`] reads text, JSON Lines, Parquet and token-id files; [`profile`] tokenises them
//!   and runs the LZW scan into a profile;
//! - [`allocate`] turns a profile into an allocation (the paper's LZW walk, baselines, and the
//!   optimal planner in [`allocate::plan`]);
//! - [`checkpoint`] reads trained checkpoints (safetensors, sharded, PyTorch) and finds their
//!   L3 layers; [`pack`] writes packed folders (and `unpack`, `inspect`);
//! - [`serve`] hands out a layer's rows by token from a packed folder or a checkpoint;
//!   [`model`] is the candle reference forward pass; [`verify`] compares packed with source;
//! - [`hub`] publishes a packed folder to the Hugging Face Hub.
//!
//! [`formats`] is the one home of the files several stages share (profile, allocation, packed
//! folder, safetensors headers); [`util`] holds what belongs to no stage.

pub mod allocate;
pub mod checkpoint;
pub mod corpus;
pub mod demo;
pub mod formats;
pub mod hub;
pub mod infer;
pub mod model;
pub mod pack;
pub mod profile;
pub mod serve;
pub mod synth;
pub mod util;
pub mod verify;

pub use checkpoint::Checkpoint;
pub use formats::allocation::{Allocation, AllocationMeta};
pub use formats::packed::PackedModel;
pub use formats::profile::Profile;
pub use util::error::{Error, Result};
