//! `l3kit traffic`: what a model's sparse layers have to move per decode step, when it is
//! known, and what serving them over a link of a given bandwidth would cost.
//!
//! A token stream is replayed as decode: B sequences (B contiguous slices of the stream)
//! step together, one token each per step. For every step and L3 layer, the step's distinct
//! tokens and the stored bytes of their rows (from the allocation) are counted. L3 rows are
//! known from the token ids alone, so all of them can be requested when the step starts and
//! move while the blocks before each L3 layer run.
//!
//! The stall model, for a link of `link` bytes/s and per-block compute time `b`: the rows move
//! one layer after another in the order the forward needs them; L3 layer i sits after `n_i`
//! blocks, so its rows are needed at `n_i * b`; it waits for
//! `max(0, (bytes of layers 0..=i) / link - n_i * b)`; the step's stall is the largest such wait
//! (a wait also delays everything after it, which absorbs the later layers' smaller ones). The
//! overhead is the stall over the step's compute time. The per-block time is measured by
//! running the model's decode on this machine (the blocks before the first L3 layer, divided
//! by their number), or given with `--block-ms`.
//!
//! With a hot set (the N most frequent tokens of a profile, resident), only the other tokens'
//! rows move: the report gives the hit rate (share of the step's (token, layer) blocks
//! served from the hot set), the bytes it saves and the memory it takes.

use crate::corpus::{self, IdSplit, RawBatch, ReadOptions};
use crate::formats::profile::InputFormat;
use crate::model::decoder::tiny::MoeInfo;
use crate::model::decoder::{Decoder, Family, L3Slot};
use crate::model::runtime::L3Runtime;
use crate::util::error::{Error, Result};
use serde::Serialize;
use std::collections::BTreeSet;
use std::path::Path;
use std::sync::atomic::AtomicU64;
use std::sync::Arc;
use std::time::Instant;

/// The most tokens read from a `--tokens` file.
pub const MAX_STREAM_TOKENS: u64 = 1 << 28;

/// Read a flat id file (`.u16`/`.u32`, little-endian) as one stream of at most `max` ids,
/// each checked against `vocab`.
pub fn read_id_stream(path: &Path, vocab: u32, max: u64) -> Result<Vec<u32>> {
    let format = InputFormat::infer(path)?;
    if !format.is_pretokenised() {
        return Err(Error::in_file(
            path,
            "--tokens reads .u16 or .u32 id files; give text with --text and --tokenizer",
        ));
    }
    let mut opts = ReadOptions::new(vocab);
    opts.split = Some(IdSplit::SeqLen(1 << 16));
    opts.max_sequence_bytes = 1 << 20;
    opts.max_ids = Some(max.min(MAX_STREAM_TOKENS));
    let mut ids = Vec::new();
    let progress = Arc::new(AtomicU64::new(0));
    corpus::read_file(path, format, &opts, &progress, &mut |b| {
        if let RawBatch::Ids { flat, .. } = b {
            ids.extend_from_slice(&flat);
        }
        true
    })?;
    Ok(ids)
}

/// One L3 layer as traffic sees it.
#[derive(Clone, Debug)]
pub struct SparseLayer {
    pub name: String,
    /// Decoder blocks that run before the layer in a step.
    pub blocks_before: usize,
    pub bounds: Vec<i64>,
    pub row_bytes: u64,
}

/// The L3 layers of an open decoder, in forward order.
pub fn sparse_layers(model: &Decoder) -> Vec<SparseLayer> {
    let per_loop = model.config.blocks_per_loop();
    model
        .l3
        .iter()
        .map(|(slot, l)| SparseLayer {
            name: l.name.clone(),
            blocks_before: match *slot {
                L3Slot::AfterBlock(i) => i + 1,
                L3Slot::AtLoop(k) => k * per_loop,
            },
            bounds: l.tables.bounds().to_vec(),
            row_bytes: l.tables.stored_row_bytes(),
        })
        .collect()
}

/// Measured (or given) compute time of one decode step at a batch size.
#[derive(Clone, Debug, Serialize)]
pub struct StepTiming {
    /// "measured" (this machine, the model's own decode) or "given" (--block-ms).
    pub source: &'static str,
    pub block_ms: f64,
    pub step_ms: f64,
}

#[derive(Clone, Debug, Serialize)]
pub struct LayerFigures {
    pub name: String,
    pub blocks_before: usize,
    pub mean_distinct_tokens: f64,
    pub mean_bytes_per_step: f64,
    pub max_bytes_per_step: u64,
}

#[derive(Clone, Debug, Serialize)]
pub struct HotFigures {
    pub tokens: usize,
    /// Bytes the hot set holds resident (all layers).
    pub resident_bytes: u64,
    /// Share of the steps' (token, layer) blocks found in the hot set.
    pub hit_rate: f64,
    pub mean_bytes_saved_per_step: f64,
}

/// An MoE model's expert traffic at one batch size: real routing on the model's own hidden
/// states (the decode is run), so the experts are known only after each layer's router.
#[derive(Clone, Debug, Serialize)]
pub struct MoeFigures {
    pub known_at: &'static str,
    /// Per MoE layer, the mean number of distinct experts a step uses.
    pub mean_distinct_experts: Vec<f64>,
    pub expert_bytes: Vec<u64>,
    pub mean_bytes_per_step: f64,
    pub mean_bytes_per_token: f64,
    /// Every layer's experts move after its router, on the critical path: the stall is
    /// the sum of their transfer times.
    pub predicted_stall_ms: Option<f64>,
    pub predicted_overhead: Option<f64>,
    /// The measured compute time of a decode step (this machine).
    pub step_ms: f64,
}

#[derive(Clone, Debug, Serialize)]
pub struct BatchFigures {
    pub batch: usize,
    pub steps: usize,
    /// L3 rows are known when the step starts (from the token ids).
    pub known_at: &'static str,
    pub mean_distinct_tokens: f64,
    pub mean_bytes_per_step: f64,
    pub mean_bytes_per_token: f64,
    pub layers: Vec<LayerFigures>,
    pub timing: Option<StepTiming>,
    pub predicted_stall_ms: Option<f64>,
    /// Predicted stall over the step's compute time.
    pub predicted_overhead: Option<f64>,
    pub hot: Option<HotFigures>,
    /// With a hot set: the stall and overhead when only the misses move.
    pub predicted_stall_ms_with_hot_set: Option<f64>,
    pub predicted_overhead_with_hot_set: Option<f64>,
    /// MoE models: the experts' traffic.
    pub moe: Option<MoeFigures>,
}

#[derive(Clone, Debug, Serialize)]
pub struct ModelTraffic {
    pub model: String,
    pub family: &'static str,
    pub sparse_layers: usize,
    pub batches: Vec<BatchFigures>,
}

/// What the replay needs besides the model and the stream.
#[derive(Clone, Debug)]
pub struct TrafficOptions {
    pub batches: Vec<usize>,
    pub steps: usize,
    /// Link bandwidth in bytes/s (None: no stall prediction).
    pub link_bytes_per_second: Option<f64>,
    /// Per-block compute time in ms (None with a link: measured).
    pub block_ms: Option<f64>,
    /// Tokens resident in the hot set (sorted ascending), when asked for.
    pub hot_tokens: Option<Vec<u32>>,
}

/// The stall of one step: `bytes[i]` of layer i arrive in layer order over `link` bytes/s;
/// layer i is needed after `blocks_before[i] * block_s` seconds of compute.
pub fn predicted_stall_seconds(
    bytes: &[u64],
    blocks_before: &[usize],
    link: f64,
    block_s: f64,
) -> f64 {
    let mut arrived = 0f64;
    let mut stall = 0f64;
    for (b, &n) in bytes.iter().zip(blocks_before) {
        arrived += *b as f64 / link;
        stall = stall.max(arrived - n as f64 * block_s);
    }
    stall.max(0.0)
}

/// Time `steps` decode steps of `model` at `batch` (one-token prefill first) and return the
/// per-block and per-step compute time, from the blocks before the first L3 layer.
fn measure(
    model: &Decoder,
    layers: &[SparseLayer],
    batch: usize,
    steps: usize,
) -> Result<StepTiming> {
    let vocab = model.vocab_size() as u32;
    let ids = |s: usize| -> Vec<Vec<u32>> {
        (0..batch)
            .map(|b| vec![((s * 7919 + b * 104_729) as u32) % vocab])
            .collect()
    };
    let mut cache = model.new_cache();
    let mut rt = L3Runtime::new(model.l3.len(), true);
    model.forward(&ids(0), &mut cache, &mut rt)?;
    let mut rt = L3Runtime::new(model.l3.len(), true);
    let started = Instant::now();
    for s in 1..=steps {
        model.forward(&ids(s), &mut cache, &mut rt)?;
    }
    let step_s = started.elapsed().as_secs_f64() / steps as f64;
    let first = layers.first().map_or(1, |l| l.blocks_before.max(1));
    let block_s = rt.stats.before_first_l3_seconds / steps as f64 / first as f64;
    Ok(StepTiming {
        source: "measured",
        block_ms: block_s * 1e3,
        step_ms: step_s * 1e3,
    })
}

/// Replay `stream` through `model`'s sparse layers at each batch size.
pub fn traffic(
    model: &Decoder,
    name: &str,
    stream: &[u32],
    opts: &TrafficOptions,
) -> Result<ModelTraffic> {
    let layers = sparse_layers(model);
    let moe_layers = match &model.family {
        Family::Tiny(m) => m.moe_info(),
        Family::Nanochat(_) => Vec::new(),
    };
    if layers.is_empty() && moe_layers.is_empty() {
        return Err(Error::input(format!(
            "{name}: the model has no sparse (L3 or MoE) layers: nothing to move"
        )));
    }
    let vocab = model.vocab_size();
    if let Some(bad) = stream.iter().find(|&&t| t as usize >= vocab) {
        return Err(Error::input(format!(
            "token id {bad} in the stream is not below {name}'s vocabulary size {vocab}"
        )));
    }
    let token_bytes = |l: &SparseLayer, t: u32| -> u64 {
        let (a, b) = (l.bounds[t as usize], l.bounds[t as usize + 1]);
        (b - a).max(0) as u64 * l.row_bytes
    };
    let hot: Option<BTreeSet<u32>> = opts
        .hot_tokens
        .as_ref()
        .map(|h| h.iter().copied().collect());
    let mut out = Vec::new();
    for &batch in &opts.batches {
        let per_seq = stream.len() / batch.max(1);
        if batch == 0 || per_seq == 0 {
            return Err(Error::input(format!(
                "the token stream has {} tokens, too few for --batch {batch} (each of the \
                 {batch} sequences needs at least one)",
                stream.len()
            )));
        }
        let steps = per_seq.min(opts.steps);
        let mut distinct_sum = 0f64;
        let mut per_layer_sum = vec![0f64; layers.len()];
        let mut per_layer_max = vec![0u64; layers.len()];
        let mut step_bytes: Vec<Vec<u64>> = Vec::with_capacity(steps);
        let mut miss_bytes: Vec<Vec<u64>> = Vec::with_capacity(steps);
        let (mut blocks, mut hits) = (0u64, 0u64);
        let mut tokens = Vec::with_capacity(batch);
        for s in 0..steps {
            tokens.clear();
            tokens.extend((0..batch).map(|b| stream[b * per_seq + s]));
            tokens.sort_unstable();
            tokens.dedup();
            distinct_sum += tokens.len() as f64;
            let mut bytes = vec![0u64; layers.len()];
            let mut missed = vec![0u64; layers.len()];
            for (i, l) in layers.iter().enumerate() {
                for &t in &tokens {
                    let b = token_bytes(l, t);
                    bytes[i] += b;
                    blocks += 1;
                    if hot.as_ref().is_some_and(|h| h.contains(&t)) {
                        hits += 1;
                    } else {
                        missed[i] += b;
                    }
                }
                per_layer_sum[i] += bytes[i] as f64;
                per_layer_max[i] = per_layer_max[i].max(bytes[i]);
            }
            step_bytes.push(bytes);
            miss_bytes.push(missed);
        }
        let n = steps as f64;
        let total: f64 = per_layer_sum.iter().fold(0.0, |a, b| a + b) / n;
        let moe = if moe_layers.is_empty() {
            None
        } else {
            Some(moe_traffic(
                model,
                &moe_layers,
                stream,
                batch,
                per_seq,
                opts,
            )?)
        };
        let timing = match (opts.link_bytes_per_second, opts.block_ms) {
            _ if layers.is_empty() => None,
            (Some(_), Some(ms)) => Some(StepTiming {
                source: "given",
                block_ms: ms,
                step_ms: ms * model_blocks(model) as f64,
            }),
            (Some(_), None) => Some(measure(model, &layers, batch, 4)?),
            (None, _) => None,
        };
        let before: Vec<usize> = layers.iter().map(|l| l.blocks_before).collect();
        let stall_of = |per_step: &[Vec<u64>]| -> Option<(f64, f64)> {
            let (link, t) = (opts.link_bytes_per_second?, timing.as_ref()?);
            let mean = per_step
                .iter()
                .map(|b| predicted_stall_seconds(b, &before, link, t.block_ms / 1e3))
                .sum::<f64>()
                / n;
            Some((mean * 1e3, mean * 1e3 / t.step_ms.max(1e-12)))
        };
        let stall = stall_of(&step_bytes);
        let hot_figures = opts.hot_tokens.as_ref().map(|h| {
            let saved: f64 = step_bytes
                .iter()
                .zip(&miss_bytes)
                .map(|(a, m)| (a.iter().sum::<u64>() - m.iter().sum::<u64>()) as f64)
                .sum::<f64>()
                / n;
            HotFigures {
                tokens: h.len(),
                resident_bytes: layers
                    .iter()
                    .map(|l| h.iter().map(|&t| token_bytes(l, t)).sum::<u64>())
                    .sum(),
                hit_rate: hits as f64 / blocks.max(1) as f64,
                mean_bytes_saved_per_step: saved,
            }
        });
        let hot_stall = hot_figures.as_ref().and_then(|_| stall_of(&miss_bytes));
        out.push(BatchFigures {
            batch,
            steps,
            known_at: "step start (from the token ids)",
            mean_distinct_tokens: distinct_sum / n,
            mean_bytes_per_step: total,
            mean_bytes_per_token: total / batch as f64,
            layers: layers
                .iter()
                .enumerate()
                .map(|(i, l)| LayerFigures {
                    name: l.name.clone(),
                    blocks_before: l.blocks_before,
                    mean_distinct_tokens: distinct_sum / n,
                    mean_bytes_per_step: per_layer_sum[i] / n,
                    max_bytes_per_step: per_layer_max[i],
                })
                .collect(),
            timing,
            predicted_stall_ms: stall.map(|s| s.0),
            predicted_overhead: stall.map(|s| s.1),
            hot: hot_figures,
            predicted_stall_ms_with_hot_set: hot_stall.map(|s| s.0),
            predicted_overhead_with_hot_set: hot_stall.map(|s| s.1),
            moe,
        });
    }
    Ok(ModelTraffic {
        model: name.to_string(),
        family: model.config.name(),
        sparse_layers: layers.len() + moe_layers.len(),
        batches: out,
    })
}

/// The decoder blocks one step runs (loops included).
fn model_blocks(model: &Decoder) -> usize {
    model.config.blocks_per_step()
}

/// Decode `batch` slices of the stream for real (the KV cache bounds the steps by the
/// model's context) and count the distinct experts each MoE layer's router chose per step.
fn moe_traffic(
    model: &Decoder,
    layers: &[MoeInfo],
    stream: &[u32],
    batch: usize,
    per_seq: usize,
    opts: &TrafficOptions,
) -> Result<MoeFigures> {
    let Family::Tiny(lm) = &model.family else {
        return Err(Error::Other(
            "MoE traffic needs the tiny family's decoder".into(),
        ));
    };
    let steps = per_seq
        .min(opts.steps)
        .min(model.config.max_positions().saturating_sub(1))
        .max(1);
    let row = |s: usize| -> Vec<Vec<u32>> {
        (0..batch)
            .map(|b| vec![stream[b * per_seq + s.min(per_seq - 1)]])
            .collect()
    };
    let mut cache = model.new_cache();
    let mut rt = L3Runtime::new(model.l3.len(), true);
    model.forward(&row(0), &mut cache, &mut rt)?;
    lm.record_routing(true);
    let started = Instant::now();
    for s in 1..=steps {
        model.forward(&row(s), &mut cache, &mut rt)?;
    }
    let step_ms = started.elapsed().as_secs_f64() * 1e3 / steps as f64;
    let trace = lm.take_routing();
    lm.record_routing(false);
    let n = trace.len().max(1) as f64;
    let mut distinct = vec![0f64; layers.len()];
    let mut stall_sum = 0f64;
    let mut bytes_sum = 0f64;
    for step in &trace {
        let mut step_stall = 0f64;
        for (i, experts) in step.iter().enumerate().take(layers.len()) {
            distinct[i] += experts.len() as f64;
            let b = experts.len() as f64 * layers[i].expert_bytes as f64;
            bytes_sum += b;
            if let Some(link) = opts.link_bytes_per_second {
                step_stall += b / link;
            }
        }
        stall_sum += step_stall;
    }
    let mean_bytes = bytes_sum / n;
    let stall = opts.link_bytes_per_second.map(|_| stall_sum / n * 1e3);
    Ok(MoeFigures {
        known_at: "after each MoE layer's router (on the critical path)",
        mean_distinct_experts: distinct.iter().map(|d| d / n).collect(),
        expert_bytes: layers.iter().map(|l| l.expert_bytes).collect(),
        mean_bytes_per_step: mean_bytes,
        mean_bytes_per_token: mean_bytes / batch as f64,
        predicted_stall_ms: stall,
        predicted_overhead: stall.map(|s| s / step_ms.max(1e-12)),
        step_ms,
    })
}

/// Draw bytes per step and predicted overhead against log2(batch), one curve per model and
/// kind of sparse layer (SVG and PNG).
pub fn plot(reports: &[ModelTraffic], svg: &Path, png: &Path) -> Result<()> {
    use crate::allocate::plan::plot::{lines, LinePanel, Series};
    let mut bytes = Vec::new();
    let mut overhead = Vec::new();
    for (i, r) in reports.iter().enumerate() {
        let short = Path::new(&r.model)
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| r.model.clone());
        let x = |b: &BatchFigures| (b.batch as f64).log2();
        let l3: Vec<&BatchFigures> = r.batches.iter().filter(|b| !b.layers.is_empty()).collect();
        if !l3.is_empty() {
            bytes.push(Series {
                label: format!("{short}: L3 rows"),
                points: l3
                    .iter()
                    .map(|b| (x(b), b.mean_bytes_per_step / 1e6))
                    .collect(),
                color: 2 * i,
            });
            let o: Vec<(f64, f64)> = l3
                .iter()
                .filter_map(|b| Some((x(b), b.predicted_overhead? * 100.0)))
                .collect();
            if !o.is_empty() {
                overhead.push(Series {
                    label: format!("{short}: L3 (prefetched)"),
                    points: o,
                    color: 2 * i,
                });
            }
        }
        let moe: Vec<(&BatchFigures, &MoeFigures)> = r
            .batches
            .iter()
            .filter_map(|b| b.moe.as_ref().map(|m| (b, m)))
            .collect();
        if !moe.is_empty() {
            bytes.push(Series {
                label: format!("{short}: MoE experts"),
                points: moe
                    .iter()
                    .map(|(b, m)| (x(b), m.mean_bytes_per_step / 1e6))
                    .collect(),
                color: 2 * i + 1,
            });
            let o: Vec<(f64, f64)> = moe
                .iter()
                .filter_map(|(b, m)| Some((x(b), m.predicted_overhead? * 100.0)))
                .collect();
            if !o.is_empty() {
                overhead.push(Series {
                    label: format!("{short}: MoE (after the router)"),
                    points: o,
                    color: 2 * i + 1,
                });
            }
        }
    }
    let mut panels = vec![LinePanel {
        title: "bytes the sparse layers move per decode step".into(),
        x_label: "log2(batch)".into(),
        y_label: "MB per step".into(),
        curves: bytes,
        references: Vec::new(),
    }];
    if !overhead.is_empty() {
        panels.push(LinePanel {
            title: "predicted decode overhead of serving them over the link".into(),
            x_label: "log2(batch)".into(),
            y_label: "overhead (%)".into(),
            curves: overhead,
            references: Vec::new(),
        });
    }
    lines(&panels, svg, png)
}
