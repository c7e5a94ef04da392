//! l3kit: a toolkit for Large Lookup Layers (L3).
//!
//! The stages run one way: a corpus is [`profile`]d (unigram counts and the LZW codeword
//! dictionary), the profile is turned into an [`allocation`] by [`allocate`], and later stages
//! pack, verify and publish tables laid out by that allocation. See `docs/architecture.md`.

pub mod allocate;
pub mod allocation;
pub mod checkpoint;
pub mod convert;
pub mod demo;
pub mod dialect;
pub mod hub;
pub mod layout;
pub mod lzw;
pub mod model;
pub mod pack;
pub mod plan;
pub mod profile;
pub mod store;
pub mod synth;
pub mod util;
pub mod verify;

pub use allocation::{Allocation, AllocationMeta};
pub use util::error::{Error, Result};
