//! `l3kit generate`: continue a prompt with the KV-cached decoder, greedy by default or
//! sampled (temperature, top-p, seed), streaming the text as it comes.

use crate::model::decoder::Decoder;
use crate::model::runtime::{L3Runtime, ServingStats};
use crate::model::sampling::{choose, Rng, Sampling};
use crate::util::error::{Error, Result};
use serde::Serialize;
use std::time::Instant;

#[derive(Clone, Debug, Serialize)]
pub struct GenerateReport {
    pub prompt_token_ids: Vec<u32>,
    pub new_token_ids: Vec<u32>,
    /// The new tokens decoded (special tokens skipped), when a tokenizer was given.
    pub text: Option<String>,
    pub prefill_seconds: f64,
    pub decode_seconds: f64,
    /// New tokens per second of decoding (the prefill excluded).
    pub tokens_per_second: f64,
    pub stopped_at_context: bool,
    pub serving: ServingStats,
}

/// Generate up to `max_new` tokens after `prompt`. `on_token` sees every new id as it is
/// chosen (to stream the text). With `full_recompute`, every step reruns the whole sequence
/// without a cache (what the cache must reproduce; for tests and checks).
pub fn generate(
    model: &Decoder,
    prompt: &[u32],
    max_new: usize,
    sampling: &Sampling,
    prefetch: bool,
    full_recompute: bool,
    on_token: &mut dyn FnMut(u32) -> Result<()>,
) -> Result<GenerateReport> {
    sampling.check()?;
    if prompt.is_empty() {
        return Err(Error::input(
            "the prompt is empty: generation needs at least one token to continue",
        ));
    }
    let max_pos = model.config.max_positions();
    if prompt.len() > max_pos {
        return Err(Error::input(format!(
            "the prompt has {} tokens, more than the model's {max_pos} positions",
            prompt.len()
        )));
    }
    let vocab = model.vocab_size();
    let mut rng = Rng::new(sampling.seed);
    let mut runtime = L3Runtime::new(model.l3.len(), prefetch);
    let mut cache = model.new_cache();
    let mut seq: Vec<u32> = prompt.to_vec();
    let mut new = Vec::new();
    let last_row = |logits: &candle_core::Tensor| -> Result<Vec<f32>> {
        let (_, t, _) = logits.dims3().map_err(ce)?;
        logits
            .narrow(1, t - 1, 1)
            .and_then(|l| l.flatten_all())
            .and_then(|l| l.to_vec1::<f32>())
            .map_err(ce)
    };
    let started = Instant::now();
    let logits = model.forward(&[seq.clone()], &mut cache, &mut runtime)?;
    let mut row = last_row(&logits)?;
    let prefill = started.elapsed().as_secs_f64();
    let decode_started = Instant::now();
    let mut stopped = false;
    for step in 0..max_new {
        debug_assert_eq!(row.len(), vocab);
        let next = choose(&row, sampling, &mut rng) as u32;
        new.push(next);
        seq.push(next);
        on_token(next)?;
        if step + 1 == max_new {
            break;
        }
        if seq.len() >= max_pos {
            stopped = true;
            break;
        }
        let logits = if full_recompute {
            let mut fresh = model.new_cache();
            model.forward(&[seq.clone()], &mut fresh, &mut runtime)?
        } else {
            model.forward(&[vec![next]], &mut cache, &mut runtime)?
        };
        row = last_row(&logits)?;
    }
    let decode = decode_started.elapsed().as_secs_f64();
    Ok(GenerateReport {
        prompt_token_ids: prompt.to_vec(),
        tokens_per_second: new.len() as f64 / decode.max(1e-9),
        new_token_ids: new,
        text: None,
        prefill_seconds: prefill,
        decode_seconds: decode,
        stopped_at_context: stopped,
        serving: runtime.stats.clone(),
    })
}

fn ce(e: candle_core::Error) -> Error {
    Error::Other(format!("compute error: {e}"))
}
