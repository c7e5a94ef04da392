//! Serving a decoder's L3 layers their rows, step by step.
//!
//! In a decode step every token is known before the first block runs, so the rows of the
//! step's distinct tokens for every L3 layer can be requested at the start of the step: with
//! prefetch on, one background thread gathers them layer by layer (in the order the forward
//! needs them) into staging buffers that are reused from step to step, while the blocks
//! before the first L3 layer run; an L3 layer waits only for rows that have not arrived yet.
//! With prefetch off the gather happens inside the layer. Either way the layer computes on the
//! same rows, so the outputs are bit-identical.

use crate::model::decoder::L3Slot;
use crate::model::l3::Groups;
use crate::model::load::LoadedLayer;
use crate::serve::{Blocks, TableSource};
use crate::util::error::{Error, Result};
use candle_core::Tensor;
use serde::Serialize;
use std::sync::Arc;
use std::time::Instant;

/// What serving the tables cost over a run.
#[derive(Clone, Debug, Default, Serialize)]
pub struct ServingStats {
    /// Where the rows came from: `ram`, `mmap`, `disk (O_DIRECT)`, `disk (fadvise)` or
    /// `source checkpoint` (empty for a model without L3 layers).
    pub tables: String,
    /// Forward steps (a prefill is one step; each decode step is one).
    pub steps: u64,
    /// Token positions the steps covered.
    pub positions: u64,
    /// Time the L3 layers spent blocked on rows (with prefetch off: the whole gather).
    pub wait_seconds: f64,
    /// Time spent gathering rows (in the background with prefetch on).
    pub gather_seconds: f64,
    /// Bytes of table rows read from the store (the stored dtype's bytes).
    pub bytes_read: u64,
    /// Bytes the `disk` tier read from the device, its 4 KiB alignment included (0 for the
    /// other tiers: their reads are served by memory or the page cache).
    pub device_bytes_read: u64,
    /// With a hot set (`--hot-set`): blocks served from it, and the stored bytes of their
    /// rows, which the tier did not have to read.
    pub hot_blocks: u64,
    pub hot_bytes_saved: u64,
    /// Distinct (token, layer) blocks gathered.
    pub blocks: u64,
    /// Time from the start of each step to its first L3 layer: the compute a prefetch can
    /// hide the reads behind.
    pub before_first_l3_seconds: f64,
}

impl ServingStats {
    /// One line for human reports: where the rows came from, how many bytes, how long the
    /// layers waited.
    pub fn describe(&self) -> String {
        use crate::util::units::human_bytes;
        let mut line = format!(
            "L3 rows from {}: {} read ({} per position), waited {:.3} s for rows",
            self.tables,
            human_bytes(self.bytes_read as f64),
            human_bytes(self.bytes_per_position()),
            self.wait_seconds
        );
        if self.device_bytes_read > 0 {
            line.push_str(&format!(
                ", {} from the device",
                human_bytes(self.device_bytes_read as f64)
            ));
        }
        if self.hot_blocks > 0 {
            line.push_str(&format!(
                "; hot set: {:.1}% of blocks, {} not read",
                100.0 * self.hot_blocks as f64 / self.blocks.max(1) as f64,
                human_bytes(self.hot_bytes_saved as f64)
            ));
        }
        line
    }

    pub fn bytes_per_position(&self) -> f64 {
        self.bytes_read as f64 / (self.positions.max(1)) as f64
    }

    /// The read bandwidth at which a step's rows arrive just as its first L3 layer starts:
    /// below it, prefetch cannot hide the reads.
    pub fn break_even_bytes_per_second(&self) -> Option<f64> {
        (self.before_first_l3_seconds > 0.0)
            .then(|| self.bytes_read as f64 / self.before_first_l3_seconds)
    }
}

type Gathered = (usize, Result<(Blocks, f64)>);

/// Serves the rows of one decoder's L3 layers, with or without prefetch.
pub struct L3Runtime {
    prefetch: bool,
    /// One reusable staging buffer per L3 layer (taken by the prefetch thread during a step).
    buffers: Vec<Option<Blocks>>,
    groups: Option<Groups>,
    step_started: Option<Instant>,
    /// The device-byte and hot-set counters of the step's layers when it began.
    device_bytes_at_start: u64,
    hot_at_start: (u64, u64),
    /// The step's layers' tables, to read their device-byte counters at its end.
    step_tables: Vec<Arc<dyn TableSource>>,
    pending: Option<crossbeam_channel::Receiver<Gathered>>,
    worker: Option<std::thread::JoinHandle<()>>,
    pub stats: ServingStats,
}

impl L3Runtime {
    pub fn new(layers: usize, prefetch: bool) -> Self {
        L3Runtime {
            prefetch,
            buffers: (0..layers).map(|_| Some(Blocks::default())).collect(),
            groups: None,
            step_started: None,
            device_bytes_at_start: 0,
            hot_at_start: (0, 0),
            step_tables: Vec::new(),
            pending: None,
            worker: None,
            stats: ServingStats::default(),
        }
    }

    pub fn prefetch(&self) -> bool {
        self.prefetch
    }

    /// Start a step over `ids` (all positions of all rows): group them by token and, with
    /// prefetch on, start gathering every layer's rows.
    pub fn begin_step(&mut self, layers: &[(L3Slot, LoadedLayer)], ids: &[u32]) -> Result<()> {
        self.finish_worker();
        self.stats.steps += 1;
        self.stats.positions += ids.len() as u64;
        self.step_started = Some(Instant::now());
        if layers.is_empty() {
            self.groups = None;
            return Ok(());
        }
        if self.stats.tables.is_empty() {
            self.stats.tables = layers[0].1.tables.served_from().to_string();
        }
        self.step_tables = layers.iter().map(|(_, l)| Arc::clone(&l.tables)).collect();
        self.device_bytes_at_start = self.device_bytes();
        self.hot_at_start = self.hot();
        let groups = Groups::new(ids);
        if self.prefetch {
            let tokens = groups.tokens.clone();
            let jobs: Vec<(usize, Arc<dyn TableSource>, Blocks)> = layers
                .iter()
                .enumerate()
                .map(|(i, (_, l))| {
                    (
                        i,
                        Arc::clone(&l.tables),
                        self.buffers[i].take().unwrap_or_default(),
                    )
                })
                .collect();
            let (tx, rx) = crossbeam_channel::bounded::<Gathered>(jobs.len());
            self.worker = Some(std::thread::spawn(move || {
                for (i, tables, mut blocks) in jobs {
                    let started = Instant::now();
                    let r = tables
                        .gather_into(&tokens, &mut blocks)
                        .map(|()| (blocks, started.elapsed().as_secs_f64()));
                    if tx.send((i, r)).is_err() {
                        return;
                    }
                }
            }));
            self.pending = Some(rx);
        }
        self.groups = Some(groups);
        Ok(())
    }

    /// Run L3 layer `i` of the step on `hidden` [N, d_in] for `ids` [N].
    pub fn run_layer(
        &mut self,
        i: usize,
        layer: &LoadedLayer,
        hidden: &Tensor,
        ids: &[u32],
    ) -> Result<Tensor> {
        let groups = self
            .groups
            .as_ref()
            .ok_or_else(|| Error::Other("an L3 layer ran outside a step".into()))?;
        if let Some(t) = self.step_started.take() {
            self.stats.before_first_l3_seconds += t.elapsed().as_secs_f64();
        }
        if self.prefetch {
            // Rows arrive in layer order; keep what comes before ours.
            let started = Instant::now();
            while self.buffers[i].is_none() {
                let rx = self
                    .pending
                    .as_ref()
                    .ok_or_else(|| Error::Other("no rows were requested for this step".into()))?;
                let (j, r) = rx
                    .recv()
                    .map_err(|_| Error::Other("the prefetch thread stopped".into()))?;
                let (blocks, gather) = r?;
                self.stats.gather_seconds += gather;
                self.buffers[j] = Some(blocks);
            }
            self.stats.wait_seconds += started.elapsed().as_secs_f64();
        } else {
            let started = Instant::now();
            let mut blocks = self.buffers[i].take().unwrap_or_default();
            layer.tables.gather_into(&groups.tokens, &mut blocks)?;
            let t = started.elapsed().as_secs_f64();
            self.stats.gather_seconds += t;
            self.stats.wait_seconds += t;
            self.buffers[i] = Some(blocks);
        }
        let blocks = self.buffers[i].as_ref().expect("gathered above");
        self.stats.blocks += blocks.tokens.len() as u64;
        let rows = blocks.starts.last().copied().unwrap_or(0) as u64;
        self.stats.bytes_read += rows * layer.tables.stored_row_bytes();
        layer.layer.forward_gathered(hidden, ids, groups, blocks)
    }

    /// End the step: the staging buffers come back for the next one.
    pub fn end_step(&mut self) {
        self.finish_worker();
        if let Some(rx) = self.pending.take() {
            while let Ok((j, Ok((blocks, gather)))) = rx.try_recv() {
                self.stats.gather_seconds += gather;
                self.buffers[j] = Some(blocks);
            }
        }
        let now = self.device_bytes();
        self.stats.device_bytes_read += now.saturating_sub(self.device_bytes_at_start);
        self.device_bytes_at_start = now;
        let hot = self.hot();
        self.stats.hot_blocks += hot.0.saturating_sub(self.hot_at_start.0);
        self.stats.hot_bytes_saved += hot.1.saturating_sub(self.hot_at_start.1);
        self.hot_at_start = hot;
    }

    fn device_bytes(&self) -> u64 {
        self.step_tables.iter().map(|t| t.device_bytes_read()).sum()
    }

    fn hot(&self) -> (u64, u64) {
        self.step_tables
            .iter()
            .map(|t| t.hot_hits())
            .fold((0, 0), |a, b| (a.0 + b.0, a.1 + b.1))
    }

    fn finish_worker(&mut self) {
        if let Some(h) = self.worker.take() {
            let _ = h.join();
        }
    }
}

impl Drop for L3Runtime {
    fn drop(&mut self) {
        self.pending = None;
        self.finish_worker();
    }
}
