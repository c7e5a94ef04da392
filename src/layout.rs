//! Table layout facts shared by the allocation report, packing and the forward pass: which
//! dtypes tables can be stored in and how many bytes one token's row costs.

use serde::{Deserialize, Serialize};

/// The dtype of packed L3 tables.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum TableDtype {
    F32,
    Bf16,
    F16,
    /// Symmetric per-row int8 with one f32 scale per row part (key part, value part).
    Int8,
}

impl TableDtype {
    pub fn name(self) -> &'static str {
        match self {
            TableDtype::F32 => "f32",
            TableDtype::Bf16 => "bf16",
            TableDtype::F16 => "f16",
            TableDtype::Int8 => "int8",
        }
    }

    /// Bytes per stored value.
    pub fn value_bytes(self) -> u64 {
        match self {
            TableDtype::F32 => 4,
            TableDtype::Bf16 | TableDtype::F16 => 2,
            TableDtype::Int8 => 1,
        }
    }

    /// Bytes one table row costs: the key part (d_in values) and, unless K and V are tied,
    /// the value part (d_emb values), plus one f32 scale per part for int8.
    pub fn row_bytes(self, d_in: u64, d_emb: u64, tied: bool) -> u64 {
        let (values, parts) = if tied { (d_in, 1) } else { (d_in + d_emb, 2) };
        let scales = if self == TableDtype::Int8 {
            4 * parts
        } else {
            0
        };
        values * self.value_bytes() + scales
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn row_bytes() {
        assert_eq!(TableDtype::Bf16.row_bytes(2048, 1024, false), 3072 * 2);
        assert_eq!(TableDtype::F32.row_bytes(768, 768, true), 768 * 4);
        assert_eq!(TableDtype::Int8.row_bytes(1024, 512, false), 1536 + 8);
    }
}
