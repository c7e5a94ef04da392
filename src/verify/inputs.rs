//! Inputs of a forward: token ids and hidden states, captured in a safetensors file or drawn
//! at random (seeded, with token ids from a profile's unigram distribution or uniform).

use crate::formats::dtype::{self as convert, FloatDtype};
use crate::formats::profile::Profile;
use crate::model::load::LoadedLayer;
use crate::util::error::{Error, Result};
use crate::util::safetensors_file::{self as st, MappedSafetensors, TensorBytes};
use safetensors::Dtype;
use std::collections::BTreeMap;
use std::path::Path;

/// Inputs for a forward: token ids and, per layer, hidden states.
pub struct Inputs {
    pub token_ids: Vec<u32>,
    /// Hidden states shared by every layer, or per layer name.
    pub shared: Option<(Vec<f32>, usize)>,
    pub per_layer: BTreeMap<String, (Vec<f32>, usize)>,
    pub description: String,
}

impl Inputs {
    /// Read `token_ids` and `hidden` / `hidden.<layer>` from a safetensors file.
    pub fn read(path: &Path) -> Result<Inputs> {
        Self::read_with(path, true)
    }

    /// [`Inputs::read`] for readers that need no token ids (routers): without `token_ids`
    /// the ids are empty and the hidden states only need to agree on their rows.
    pub fn read_hidden(path: &Path) -> Result<Inputs> {
        Self::read_with(path, false)
    }

    fn read_with(path: &Path, ids_required: bool) -> Result<Inputs> {
        let file = MappedSafetensors::open(path)?;
        let st = file.parse()?;
        let token_ids = match st.tensor("token_ids") {
            Ok(ids) => read_ids(path, &ids)?,
            Err(_) if !ids_required => Vec::new(),
            Err(_) => return Err(Error::in_file(path, "missing tensor token_ids")),
        };
        let mut n = (!token_ids.is_empty()).then_some(token_ids.len());
        let mut shared = None;
        let mut per_layer = BTreeMap::new();
        for (name, view) in st.tensors() {
            let layer = if name == "hidden" {
                None
            } else if let Some(l) = name.strip_prefix("hidden.") {
                Some(l.to_string())
            } else {
                continue;
            };
            let shape = view.shape();
            let float = FloatDtype::of(view.dtype());
            let (Some(float), [rows, width]) = (float, shape) else {
                return Err(Error::in_file(
                    path,
                    format!(
                        "{name} is {:?} {shape:?}; expected floats [N, d_in] (one row per position)",
                        view.dtype()
                    ),
                ));
            };
            match n {
                Some(n) if *rows != n => {
                    let what = if token_ids.is_empty() {
                        "the other hidden states' rows"
                    } else {
                        "token ids"
                    };
                    return Err(Error::in_file(
                        path,
                        format!("{name} has {rows} rows for {n} {what}; expected [{n}, d_in]"),
                    ));
                }
                Some(_) => {}
                None if *rows == 0 => {
                    return Err(Error::in_file(
                        path,
                        format!("{name} has no rows: there is nothing to run"),
                    ))
                }
                None => n = Some(*rows),
            }
            let width = *width;
            let mut values = Vec::new();
            convert::decode_f32(float, view.data(), &mut values);
            match layer {
                None => shared = Some((values, width)),
                Some(l) => {
                    per_layer.insert(l, (values, width));
                }
            }
        }
        if shared.is_none() && per_layer.is_empty() {
            return Err(Error::in_file(
                path,
                "holds no hidden states (tensor `hidden` or `hidden.<layer>`)",
            ));
        }
        Ok(Inputs {
            token_ids,
            shared,
            per_layer,
            description: format!("captured ({})", path.display()),
        })
    }

    /// Seeded random hidden states of unit RMS scale, with token ids drawn from a profile's
    /// unigram distribution (the profile and its path, for messages) or uniformly.
    pub fn random(
        n: usize,
        d_in: usize,
        vocab: usize,
        profile: Option<(&Path, &Profile)>,
        seed: u64,
    ) -> Result<Inputs> {
        let values = n.checked_mul(d_in).ok_or_else(|| {
            Error::input(format!(
                "{n} random tokens of width {d_in} are too many values"
            ))
        })?;
        if vocab == 0 {
            return Err(Error::input("the model's vocabulary is empty"));
        }
        let mut rng = SplitMix(seed);
        let token_ids: Vec<u32> = match profile {
            Some((path, p)) => {
                if p.meta.vocab_size as usize != vocab || p.unigram.len() != vocab {
                    return Err(Error::in_file(
                        path,
                        format!(
                            "the profile's vocabulary ({}, {} unigram counts) differs from the \
                             model's ({vocab}): token ids drawn from it would not fit the model",
                            p.meta.vocab_size,
                            p.unigram.len()
                        ),
                    ));
                }
                let mut cumulative = Vec::with_capacity(vocab);
                let mut total = 0u64;
                for &c in &p.unigram {
                    total = total.checked_add(c).ok_or_else(|| {
                        Error::in_file(path, "the profile's unigram counts overflow 64 bits")
                    })?;
                    cumulative.push(total);
                }
                if total == 0 {
                    return Err(Error::in_file(
                        path,
                        "every unigram count of the profile is 0: no token ids can be drawn \
                         from it (give another --profile, or none for uniform ids)",
                    ));
                }
                (0..n)
                    .map(|_| {
                        let r = rng.next() % total;
                        cumulative.partition_point(|&c| c <= r) as u32
                    })
                    .collect()
            }
            None => (0..n).map(|_| (rng.next() % vocab as u64) as u32).collect(),
        };
        let hidden: Vec<f32> = (0..values).map(|_| rng.normal()).collect();
        Ok(Inputs {
            token_ids,
            shared: Some((hidden, d_in)),
            per_layer: BTreeMap::new(),
            description: match profile {
                Some((path, _)) => format!(
                    "random (seed {seed}, tokens from the profile {})",
                    path.display()
                ),
                None => format!("random (seed {seed}, tokens uniform)"),
            },
        })
    }

    /// The hidden states for a layer, by name or decoder id.
    pub fn hidden_for(&self, layer: &LoadedLayer) -> Result<(&[f32], usize)> {
        let by_id = layer.layer_id.map(|i| i.to_string());
        let found = self
            .per_layer
            .get(&layer.name)
            .or_else(|| by_id.as_ref().and_then(|i| self.per_layer.get(i)))
            .or(self.shared.as_ref());
        let (values, width) = found.ok_or_else(|| {
            Error::input(format!(
                "no hidden states for L3 layer {} (give `hidden` or `hidden.{}`)",
                layer.name, layer.name
            ))
        })?;
        if *width != layer.layer.cfg.d_in {
            return Err(Error::input(format!(
                "hidden states for L3 layer {} have width {width}; the layer's d_in is {}",
                layer.name, layer.layer.cfg.d_in
            )));
        }
        Ok((values, *width))
    }
}

/// The `token_ids` tensor [N], read at its full width and checked.
fn read_ids(path: &Path, ids: &safetensors::tensor::TensorView<'_>) -> Result<Vec<u32>> {
    if ids.shape().len() != 1 {
        return Err(Error::in_file(
            path,
            format!("token_ids has shape {:?}, expected [N]", ids.shape()),
        ));
    }
    let data = ids.data();
    // Ids are read at their full width and checked here, so a bad one is reported as
    // given (and where), not as what a narrowing cast made of it.
    let wide: Vec<i64> = match ids.dtype() {
        Dtype::I64 => data
            .chunks_exact(8)
            .map(|c| i64::from_le_bytes([c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]]))
            .collect(),
        Dtype::I32 => data
            .chunks_exact(4)
            .map(|c| i32::from_le_bytes([c[0], c[1], c[2], c[3]]) as i64)
            .collect(),
        Dtype::U32 => data
            .chunks_exact(4)
            .map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]]) as i64)
            .collect(),
        other => {
            return Err(Error::in_file(
                path,
                format!("token_ids has dtype {other:?}; expected I64, I32 or U32"),
            ))
        }
    };
    if wide.is_empty() {
        return Err(Error::in_file(
            path,
            "token_ids is empty: there is nothing to run",
        ));
    }
    wide.iter()
        .enumerate()
        .map(|(i, &v)| {
            u32::try_from(v).map_err(|_| {
                Error::in_file(
                    path,
                    format!("token_ids[{i}] is {v}, not a token id (ids are 0 to 2^32 - 1)"),
                )
            })
        })
        .collect::<Result<Vec<u32>>>()
}

/// SplitMix64 with a Box-Muller normal: reproducible on every platform.
struct SplitMix(u64);

impl SplitMix {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    fn uniform(&mut self) -> f64 {
        ((self.next() >> 11) as f64 + 0.5) / (1u64 << 53) as f64
    }
    fn normal(&mut self) -> f32 {
        let (u, v) = (self.uniform(), self.uniform());
        ((-2.0 * u.ln()).sqrt() * (2.0 * std::f64::consts::PI * v).cos()) as f32
    }
}

/// Read a float tensor of a safetensors file as f32 values (e.g. `output.<layer>`).
pub fn read_f32(path: &Path, name: &str) -> Result<Vec<f32>> {
    let file = MappedSafetensors::open(path)?;
    let st = file.parse()?;
    let view = st
        .tensor(name)
        .map_err(|_| Error::in_file(path, format!("missing tensor {name}")))?;
    let Some(float) = FloatDtype::of(view.dtype()) else {
        return Err(Error::in_file(
            path,
            format!("{name} is {:?}, not a float tensor", view.dtype()),
        ));
    };
    let mut values = Vec::new();
    convert::decode_f32(float, view.data(), &mut values);
    Ok(values)
}

/// Write inputs for `forward` (used by tests and docs examples).
pub fn write_inputs(
    path: &Path,
    token_ids: &[u32],
    hidden: &[(String, Vec<f32>, usize)],
) -> Result<()> {
    let ids: Vec<i64> = token_ids.iter().map(|&t| t as i64).collect();
    let mut tensors = vec![TensorBytes::i64s("token_ids", &ids)];
    for (name, values, width) in hidden {
        tensors.push(TensorBytes {
            name: name.clone(),
            dtype: Dtype::F32,
            shape: vec![token_ids.len(), *width],
            data: values
                .iter()
                .flat_map(|v| v.to_le_bytes())
                .collect::<Vec<u8>>()
                .into(),
        });
    }
    st::write_file(path, &tensors, &BTreeMap::new(), 8)
}
