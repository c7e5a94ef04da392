//! The file formats that several stages share, in one home: each module owns one file kind's
//! types, writer-side constants and its one validated reader, so no stage reads another
//! stage's files through that stage's internals.
//!
//! | module | file | written by | read by |
//! |---|---|---|---|
//! | [`profile`] | profile (`.safetensors`) | `profile` | `allocate`, `plan`, `evaluate`, `inspect`, `verify` |
//! | [`allocation`] | allocation (`.safetensors`, `bounds`) | `allocate`, `plan` | `pack`, `evaluate`, the forward pass |
//! | [`packed`] | packed model folder | `pack` | `inspect`, `unpack`, `verify`, `forward`, `upload`, the table store |
//! | [`safetensors`] | safetensors headers and positioned reads | | checkpoints and packed folders |
//! | [`tokenizer`] | Hugging Face `tokenizer.json` | | `profile`, `allocate`, `evaluate` |
//!
//! [`dtype`] (table dtypes and element conversions) and [`semantics`] (an L3 layer's numerical
//! choices) are the vocabulary these files are written in.

pub mod allocation;
pub mod dtype;
pub mod packed;
pub mod profile;
pub mod safetensors;
pub mod semantics;
pub mod tokenizer;
