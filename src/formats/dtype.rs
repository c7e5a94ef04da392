//! Element dtypes: the dtypes packed tables can be stored in ([`TableDtype`], with the bytes
//! one row costs) and the conversions between checkpoint dtypes and them.
//!
//! Rounding is IEEE round-to-nearest-even for f16 and bf16 (the `half` crate), and int8 is
//! symmetric per row part: scale = max|x| / 127, q = round-half-away-from-zero(x / scale)
//! clamped to [-127, 127]; an all-zero part has scale 0 and q = 0.

use safetensors::Dtype;
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

    /// The safetensors dtype the table's rows are stored as.
    pub fn stored_dtype(self) -> Dtype {
        match self {
            TableDtype::F32 => Dtype::F32,
            TableDtype::Bf16 => Dtype::BF16,
            TableDtype::F16 => Dtype::F16,
            TableDtype::Int8 => Dtype::I8,
        }
    }

    /// The float dtype the rows decode from, or None for int8 (dequantised with scales).
    pub fn float(self) -> Option<FloatDtype> {
        match self {
            TableDtype::F32 => Some(FloatDtype::F32),
            TableDtype::Bf16 => Some(FloatDtype::Bf16),
            TableDtype::F16 => Some(FloatDtype::F16),
            TableDtype::Int8 => None,
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

    /// [`row_bytes`](Self::row_bytes) for sizes from flags or files: None when the row's size
    /// does not fit 64 bits.
    pub fn checked_row_bytes(self, d_in: u64, d_emb: u64, tied: bool) -> Option<u64> {
        let (values, parts) = if tied {
            (d_in, 1)
        } else {
            (d_in.checked_add(d_emb)?, 2)
        };
        let scales = if self == TableDtype::Int8 {
            4 * parts
        } else {
            0
        };
        values.checked_mul(self.value_bytes())?.checked_add(scales)
    }
}

#[cfg(test)]
mod table_dtype_tests {
    use super::*;

    #[test]
    fn row_bytes() {
        assert_eq!(TableDtype::Bf16.row_bytes(2048, 1024, false), 3072 * 2);
        assert_eq!(TableDtype::F32.row_bytes(768, 768, true), 768 * 4);
        assert_eq!(TableDtype::Int8.row_bytes(1024, 512, false), 1536 + 8);
    }
}

/// A float dtype l3kit decodes. Decoding takes this type rather than a safetensors [`Dtype`],
/// so a tensor of integers can never reach a decoder: the caller has to turn the file's dtype
/// into a `FloatDtype` first, which fails with a message instead of a panic.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FloatDtype {
    F32,
    Bf16,
    F16,
    F64,
}

impl FloatDtype {
    /// The float dtype of a safetensors dtype, or None for integers, bools and the 8-bit floats.
    pub fn of(dtype: Dtype) -> Option<FloatDtype> {
        match dtype {
            Dtype::F32 => Some(FloatDtype::F32),
            Dtype::BF16 => Some(FloatDtype::Bf16),
            Dtype::F16 => Some(FloatDtype::F16),
            Dtype::F64 => Some(FloatDtype::F64),
            _ => None,
        }
    }

    pub fn dtype(self) -> Dtype {
        match self {
            FloatDtype::F32 => Dtype::F32,
            FloatDtype::Bf16 => Dtype::BF16,
            FloatDtype::F16 => Dtype::F16,
            FloatDtype::F64 => Dtype::F64,
        }
    }

    /// Bytes per element.
    pub fn size(self) -> usize {
        match self {
            FloatDtype::F32 => 4,
            FloatDtype::Bf16 | FloatDtype::F16 => 2,
            FloatDtype::F64 => 8,
        }
    }
}

/// Bytes per element of a float dtype l3kit converts, or None.
pub fn float_size(dtype: Dtype) -> Option<usize> {
    FloatDtype::of(dtype).map(FloatDtype::size)
}

/// Decode little-endian floats of `dtype` into `out` (appended). Trailing bytes that do not
/// fill an element are ignored.
pub fn decode_f32(dtype: FloatDtype, bytes: &[u8], out: &mut Vec<f32>) {
    out.reserve(bytes.len() / dtype.size());
    match dtype {
        FloatDtype::F32 => out.extend(
            bytes
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])),
        ),
        FloatDtype::Bf16 => out.extend(
            bytes
                .chunks_exact(2)
                .map(|c| half::bf16::from_bits(u16::from_le_bytes([c[0], c[1]])).to_f32()),
        ),
        FloatDtype::F16 => out.extend(
            bytes
                .chunks_exact(2)
                .map(|c| half::f16::from_bits(u16::from_le_bytes([c[0], c[1]])).to_f32()),
        ),
        FloatDtype::F64 => {
            out.extend(bytes.chunks_exact(8).map(|c| {
                f64::from_le_bytes([c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]]) as f32
            }))
        }
    }
}

/// Decode little-endian floats of `dtype` into `dst`; decodes `min(dst.len(), elements in
/// bytes)` values. The slice form lets the compiler vectorise the conversion (a shift for bf16).
pub fn decode_into(dtype: FloatDtype, bytes: &[u8], dst: &mut [f32]) {
    match dtype {
        FloatDtype::F32 => {
            for (d, c) in dst.iter_mut().zip(bytes.chunks_exact(4)) {
                *d = f32::from_le_bytes([c[0], c[1], c[2], c[3]]);
            }
        }
        FloatDtype::Bf16 => {
            for (d, c) in dst.iter_mut().zip(bytes.chunks_exact(2)) {
                *d = f32::from_bits((u16::from_le_bytes([c[0], c[1]]) as u32) << 16);
            }
        }
        FloatDtype::F16 => {
            for (d, c) in dst.iter_mut().zip(bytes.chunks_exact(2)) {
                *d = half::f16::from_bits(u16::from_le_bytes([c[0], c[1]])).to_f32();
            }
        }
        FloatDtype::F64 => {
            for (d, c) in dst.iter_mut().zip(bytes.chunks_exact(8)) {
                *d = f64::from_le_bytes([c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]]) as f32;
            }
        }
    }
}

/// Encode floats as `dtype` (F32, BF16, F16 or F64), appended to `out`.
pub fn encode_f32(dtype: Dtype, values: &[f32], out: &mut Vec<u8>) {
    match dtype {
        Dtype::F32 => {
            for v in values {
                out.extend_from_slice(&v.to_le_bytes());
            }
        }
        Dtype::BF16 => {
            for v in values {
                out.extend_from_slice(&half::bf16::from_f32(*v).to_bits().to_le_bytes());
            }
        }
        Dtype::F16 => {
            for v in values {
                out.extend_from_slice(&half::f16::from_f32(*v).to_bits().to_le_bytes());
            }
        }
        // `unpack` restores f64 sources, which `pack` stored as f32.
        Dtype::F64 => {
            for v in values {
                out.extend_from_slice(&(*v as f64).to_le_bytes());
            }
        }
        other => unreachable!("encode_f32 called with {other:?}"),
    }
}

/// Count non-finite values among raw little-endian floats without converting them; returns
/// (count, index of the first).
pub fn count_nonfinite(dtype: Dtype, bytes: &[u8]) -> (u64, Option<usize>) {
    let mut count = 0u64;
    let mut first = None;
    let mut note = |i: usize| {
        count += 1;
        if first.is_none() {
            first = Some(i);
        }
    };
    match dtype {
        Dtype::F32 => {
            for (i, c) in bytes.chunks_exact(4).enumerate() {
                if u32::from_le_bytes([c[0], c[1], c[2], c[3]]) & 0x7f80_0000 == 0x7f80_0000 {
                    note(i);
                }
            }
        }
        Dtype::BF16 => {
            for (i, c) in bytes.chunks_exact(2).enumerate() {
                if u16::from_le_bytes([c[0], c[1]]) & 0x7f80 == 0x7f80 {
                    note(i);
                }
            }
        }
        Dtype::F16 => {
            for (i, c) in bytes.chunks_exact(2).enumerate() {
                if u16::from_le_bytes([c[0], c[1]]) & 0x7c00 == 0x7c00 {
                    note(i);
                }
            }
        }
        Dtype::F64 => {
            for (i, c) in bytes.chunks_exact(8).enumerate() {
                let v = f64::from_le_bytes([c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]]);
                if !v.is_finite() {
                    note(i);
                }
            }
        }
        _ => {}
    }
    (count, first)
}

/// Quantise one row part to int8; returns its scale.
pub fn quantise_int8(values: &[f32], out: &mut Vec<u8>) -> f32 {
    let max = values.iter().fold(0f32, |m, v| m.max(v.abs()));
    if max == 0.0 || !max.is_finite() {
        out.extend(std::iter::repeat_n(0u8, values.len()));
        return if max.is_finite() { 0.0 } else { f32::NAN };
    }
    let scale = max / 127.0;
    let inv = 127.0 / max;
    out.extend(
        values
            .iter()
            .map(|v| ((v * inv).round().clamp(-127.0, 127.0) as i8) as u8),
    );
    scale
}

/// Dequantise int8 values with one scale, appended to `out`.
pub fn dequantise_int8(q: &[u8], scale: f32, out: &mut Vec<f32>) {
    out.extend(q.iter().map(|&b| (b as i8) as f32 * scale));
}

/// Dequantise int8 values with one scale into `dst`.
pub fn dequantise_into(q: &[u8], scale: f32, dst: &mut [f32]) {
    for (d, &b) in dst.iter_mut().zip(q) {
        *d = (b as i8) as f32 * scale;
    }
}

/// Running error statistics of a lossy conversion.
#[derive(Clone, Copy, Debug, Default, serde::Serialize, serde::Deserialize, PartialEq)]
pub struct ErrorStats {
    pub max_abs_error: f64,
    pub sum_sq_error: f64,
    pub sum_sq_value: f64,
    pub count: u64,
}

impl ErrorStats {
    pub fn add(&mut self, original: &[f32], approx: &[f32]) {
        for (a, b) in original.iter().zip(approx) {
            let e = (*a as f64) - (*b as f64);
            self.max_abs_error = self.max_abs_error.max(e.abs());
            self.sum_sq_error += e * e;
            self.sum_sq_value += (*a as f64) * (*a as f64);
        }
        self.count += original.len() as u64;
    }

    /// ||x - x'|| / ||x||.
    pub fn relative_l2(&self) -> f64 {
        if self.sum_sq_value == 0.0 {
            0.0
        } else {
            (self.sum_sq_error / self.sum_sq_value).sqrt()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bf16_round_trip_is_exact_for_bf16_values() {
        let vals = [1.0f32, -2.5, 0.0078125, 2f32.powi(100)];
        let mut bytes = Vec::new();
        encode_f32(Dtype::BF16, &vals, &mut bytes);
        let mut back = Vec::new();
        decode_f32(FloatDtype::Bf16, &bytes, &mut back);
        assert_eq!(back, vals);
    }

    #[test]
    fn bf16_rounds_to_nearest_even() {
        // 1 + 2^-8 is exactly between two bf16 values (1 and 1 + 2^-7): ties go to even (1).
        let mut bytes = Vec::new();
        encode_f32(Dtype::BF16, &[1.0 + 1.0 / 256.0], &mut bytes);
        assert_eq!(u16::from_le_bytes([bytes[0], bytes[1]]), 0x3f80);
    }

    #[test]
    fn decode_into_matches_decode() {
        let vals = [1.5f32, -2.25, 3.0e-5, 65504.0];
        for dtype in [
            FloatDtype::F32,
            FloatDtype::Bf16,
            FloatDtype::F16,
            FloatDtype::F64,
        ] {
            let mut bytes = Vec::new();
            encode_f32(dtype.dtype(), &vals, &mut bytes);
            assert_eq!(bytes.len(), vals.len() * dtype.size());
            let mut a = Vec::new();
            decode_f32(dtype, &bytes, &mut a);
            let mut b = vec![0f32; vals.len()];
            decode_into(dtype, &bytes, &mut b);
            assert_eq!(a, b, "{dtype:?}");
        }
    }

    #[test]
    fn only_float_dtypes_decode() {
        for d in [Dtype::I32, Dtype::I64, Dtype::U8, Dtype::I8, Dtype::BOOL] {
            assert_eq!(FloatDtype::of(d), None, "{d:?}");
            assert_eq!(float_size(d), None);
        }
        // Short or ragged input decodes what fits and never reads past the end.
        let mut out = Vec::new();
        decode_f32(FloatDtype::F32, &[0, 0, 128, 63, 1, 2], &mut out);
        assert_eq!(out, vec![1.0]);
        let mut dst = [7f32; 3];
        decode_into(FloatDtype::F64, &[0; 12], &mut dst);
        assert_eq!(dst, [0.0, 7.0, 7.0]);
    }

    #[test]
    fn int8_is_symmetric_per_part() {
        let mut q = Vec::new();
        let s = quantise_int8(&[1.0, -0.5, 0.25, 0.0], &mut q);
        assert_eq!(s, 1.0 / 127.0);
        assert_eq!(
            q.iter().map(|&b| b as i8).collect::<Vec<_>>(),
            vec![127, -64, 32, 0]
        );
        let mut q0 = Vec::new();
        assert_eq!(quantise_int8(&[0.0, 0.0], &mut q0), 0.0);
        assert_eq!(q0, vec![0, 0]);
    }

    #[test]
    fn nonfinite_detected_in_raw_bits() {
        let mut bytes = Vec::new();
        encode_f32(Dtype::BF16, &[1.0, f32::NAN, f32::INFINITY], &mut bytes);
        assert_eq!(count_nonfinite(Dtype::BF16, &bytes), (2, Some(1)));
        let mut b32 = Vec::new();
        encode_f32(Dtype::F32, &[1.0, 2.0, f32::NEG_INFINITY], &mut b32);
        assert_eq!(count_nonfinite(Dtype::F32, &b32), (1, Some(2)));
    }
}
