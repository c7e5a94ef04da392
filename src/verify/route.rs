//! `l3kit route`: every MoE layer's router on captured hidden states — statistics of the
//! decisions, optionally the decisions themselves (`--out`) — and `--calibrate`, which runs
//! DTop-p's PI controller over consecutive batches of the inputs and reports the trajectory.

use super::inputs::Inputs;
use crate::allocate::plan::plot::{self, LinePanel, Series};
use crate::checkpoint::moe::{detect_moe, MoeDetected};
use crate::checkpoint::Checkpoint;
use crate::model::moe::{
    route_logits, ControllerFile, MoeLayer, PiController, PiSettings, Routed, Routing,
};
use crate::util::atomic_file::{self, StagingDir};
use crate::util::error::{Error, Result};
use crate::util::fs::{check_output, OutputKind};
use crate::util::progress::Ui;
use crate::util::safetensors_file::{self as st, TensorBytes};
use candle_core::{Device, Tensor};
use safetensors::Dtype;
use serde::Serialize;
use std::collections::{BTreeMap, HashMap};
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

/// How many tokens `route` lists at each end of the experts-per-token ranking.
pub const TOKENS_LISTED: usize = 10;

/// The model side of a route run.
pub struct RouteModel {
    pub path: PathBuf,
    pub detected: MoeDetected,
    pub layers: Vec<MoeLayer>,
}

impl RouteModel {
    /// Open a checkpoint and load its MoE layers (by scheme or `--map`) onto `device`.
    pub fn open(path: &Path, map: Option<&Path>, device: &Device) -> Result<Self> {
        let ckpt = Checkpoint::open(path)?;
        let detected = detect_moe(&ckpt, map)?;
        let layers = detected
            .layers
            .iter()
            .map(|t| MoeLayer::load(&ckpt, t, device))
            .collect::<Result<Vec<_>>>()?;
        Ok(RouteModel {
            path: path.to_path_buf(),
            detected,
            layers,
        })
    }

    /// Refuse a mode the layers cannot run (K > E, DTop-p without a scale).
    pub fn check_routing(&self, routing: Routing) -> Result<()> {
        for (t, l) in self.detected.layers.iter().zip(&self.layers) {
            routing
                .check_experts(l.cfg.n_experts)
                .map_err(|e| Error::input(format!("MoE layer {}: {e}", t.name)))?;
            if routing.needs_scale() && l.scale().is_none() {
                return Err(Error::in_file(
                    &self.path,
                    format!(
                        "MoE layer {} has no DTop-p scale tensor ({}.gate.scale, shape [1]); \
                         dtopp routing needs one per layer (name it with --map)",
                        t.name, t.name
                    ),
                ));
            }
        }
        Ok(())
    }

    /// Every layer's router logits on its hidden states from `inputs`, [N, E] flattened.
    pub fn logits(&self, inputs: &Inputs, inputs_path: &Path) -> Result<Vec<Vec<f32>>> {
        let names: Vec<&str> = self
            .detected
            .layers
            .iter()
            .map(|t| t.name.as_str())
            .collect();
        if let Some(extra) = inputs
            .per_layer
            .keys()
            .find(|k| !names.contains(&k.as_str()))
        {
            return Err(Error::in_file(
                inputs_path,
                format!(
                    "hidden.{extra} names no MoE layer of {} (its layers: {})",
                    self.path.display(),
                    names.join(", ")
                ),
            ));
        }
        let mut all = Vec::with_capacity(self.layers.len());
        for (t, layer) in self.detected.layers.iter().zip(&self.layers) {
            let (values, width) = match inputs.per_layer.get(&t.name).or(inputs.shared.as_ref()) {
                Some((v, w)) => (v, *w),
                None => {
                    return Err(Error::in_file(
                        inputs_path,
                        format!(
                            "no hidden states for MoE layer {} (give `hidden` or `hidden.{}`)",
                            t.name, t.name
                        ),
                    ))
                }
            };
            if width != t.d_model {
                return Err(Error::in_file(
                    inputs_path,
                    format!(
                        "the hidden states for MoE layer {} have width {width}, but its router {} \
                         is [{}, {}]: they need width {}",
                        t.name, t.gate, t.n_experts, t.d_model, t.d_model
                    ),
                ));
            }
            let n = values.len() / width;
            let x = Tensor::from_slice(values, (n, width), layer.device())
                .map_err(|e| Error::Other(e.to_string()))?;
            all.push(layer.logits(&x)?);
        }
        Ok(all)
    }
}

/// One token id's use of experts in one layer.
#[derive(Clone, Debug, Serialize)]
pub struct TokenUse {
    pub token_id: u32,
    /// Positions holding the token.
    pub count: u64,
    pub mean_active: f64,
}

/// What one layer's router decided.
#[derive(Clone, Debug, Serialize)]
pub struct LayerRouting {
    pub name: String,
    pub n_experts: usize,
    pub mean_active: f64,
    pub std_active: f64,
    pub min_active: u32,
    pub max_active: u32,
    /// Tokens with 0, 1, ..., E active experts.
    pub histogram: Vec<u64>,
    /// Per expert, the share of tokens that chose it.
    pub load: Vec<f64>,
    /// Standard deviation over mean of `load` (0 for a perfectly balanced layer).
    pub load_cv: f64,
    /// With token ids: the tokens using the most and the fewest experts on average (ties by
    /// more positions first, then by id).
    pub most_experts: Vec<TokenUse>,
    pub fewest_experts: Vec<TokenUse>,
}

fn layer_stats(name: &str, r: &Routed, token_ids: &[u32]) -> LayerRouting {
    let (n, e) = (r.n_tokens.max(1) as f64, r.n_experts);
    let mean = r.mean_active();
    let var = r
        .active
        .iter()
        .map(|&a| (a as f64 - mean).powi(2))
        .sum::<f64>()
        / n;
    let mut histogram = vec![0u64; e + 1];
    for &a in &r.active {
        histogram[a as usize] += 1;
    }
    let mut load = vec![0f64; e];
    for row in r.chosen.chunks_exact(e) {
        for (l, &c) in load.iter_mut().zip(row) {
            *l += c as f64;
        }
    }
    load.iter_mut().for_each(|l| *l /= n);
    let load_mean = load.iter().sum::<f64>() / e as f64;
    let load_sd = (load.iter().map(|l| (l - load_mean).powi(2)).sum::<f64>() / e as f64).sqrt();
    let (mut most, mut fewest) = (Vec::new(), Vec::new());
    if token_ids.len() == r.n_tokens {
        let mut per: HashMap<u32, (u64, u64)> = HashMap::new();
        for (&t, &a) in token_ids.iter().zip(&r.active) {
            let s = per.entry(t).or_default();
            s.0 += 1;
            s.1 += a as u64;
        }
        let mut uses: Vec<TokenUse> = per
            .into_iter()
            .map(|(token_id, (count, sum))| TokenUse {
                token_id,
                count,
                mean_active: sum as f64 / count as f64,
            })
            .collect();
        let tie =
            |a: &TokenUse, b: &TokenUse| b.count.cmp(&a.count).then(a.token_id.cmp(&b.token_id));
        uses.sort_by(|a, b| b.mean_active.total_cmp(&a.mean_active).then(tie(a, b)));
        most = uses.iter().take(TOKENS_LISTED).cloned().collect();
        uses.sort_by(|a, b| a.mean_active.total_cmp(&b.mean_active).then(tie(a, b)));
        fewest = uses.into_iter().take(TOKENS_LISTED).collect();
    }
    LayerRouting {
        name: name.to_string(),
        n_experts: e,
        mean_active: mean,
        std_active: var.sqrt(),
        min_active: r.active.iter().copied().min().unwrap_or(0),
        max_active: r.active.iter().copied().max().unwrap_or(0),
        histogram,
        load,
        load_cv: if load_mean > 0.0 {
            load_sd / load_mean
        } else {
            0.0
        },
        most_experts: most,
        fewest_experts: fewest,
    }
}

#[derive(Clone, Debug, Serialize)]
pub struct RouteSummary {
    pub model: PathBuf,
    pub scheme: String,
    pub inputs: PathBuf,
    pub tokens: usize,
    pub routing: String,
    pub layers: Vec<LayerRouting>,
    pub out: Option<PathBuf>,
    pub seconds: f64,
}

fn with_inputs(e: Error, inputs: &Path) -> Error {
    match e {
        Error::Input(m) if !m.starts_with(&inputs.display().to_string()) => {
            Error::Input(format!("{}: {m}", inputs.display()))
        }
        other => other,
    }
}

/// `l3kit route`: route every MoE layer's hidden states from `inputs` and report; with
/// `out`, write `experts.<layer>` (U8 [N, E]) and `weights.<layer>` (F32 [N, E]).
pub fn route_file(
    model: &Path,
    map: Option<&Path>,
    inputs_path: &Path,
    routing: Routing,
    out: Option<&Path>,
    device: &Device,
) -> Result<RouteSummary> {
    let started = std::time::Instant::now();
    let mut sources = vec![model, inputs_path];
    sources.extend(map);
    if let Some(o) = out {
        check_output(o, &sources, OutputKind::File, "--out")?;
    }
    let m = RouteModel::open(model, map, device)?;
    m.check_routing(routing)?;
    let inputs = Inputs::read_hidden(inputs_path)?;
    let logits = m.logits(&inputs, inputs_path)?;
    let mut layers = Vec::new();
    let mut tensors = Vec::new();
    let mut tokens = 0;
    for ((t, layer), l) in m.detected.layers.iter().zip(&m.layers).zip(&logits) {
        let r = route_logits(l, t.n_experts, routing, layer.scale())
            .map_err(|e| with_inputs(e, inputs_path))?;
        tokens = r.n_tokens;
        layers.push(layer_stats(&t.name, &r, &inputs.token_ids));
        if out.is_some() {
            let shape = vec![r.n_tokens, r.n_experts];
            tensors.push(TensorBytes {
                name: format!("experts.{}", t.name),
                dtype: Dtype::U8,
                shape: shape.clone(),
                data: r.chosen.clone().into(),
            });
            let w: Vec<u8> = r.weights.iter().flat_map(|v| v.to_le_bytes()).collect();
            tensors.push(TensorBytes {
                name: format!("weights.{}", t.name),
                dtype: Dtype::F32,
                shape,
                data: w.into(),
            });
        }
    }
    if let Some(o) = out {
        let mut metadata = BTreeMap::new();
        metadata.insert("format".to_string(), "pt".to_string());
        metadata.insert("l3kit".to_string(), "route decisions".to_string());
        metadata.insert("routing".to_string(), routing.to_string());
        st::write_file(o, &tensors, &metadata, 8)?;
    }
    Ok(RouteSummary {
        model: model.to_path_buf(),
        scheme: m.detected.scheme.clone(),
        inputs: inputs_path.to_path_buf(),
        tokens,
        routing: routing.to_string(),
        layers,
        out: out.map(Path::to_path_buf),
        seconds: started.elapsed().as_secs_f64(),
    })
}

// ---- calibration ------------------------------------------------------------------------

/// The controller settings a calibration starts from (None: the defaults, or the resumed
/// state's).
#[derive(Clone, Debug, Default)]
pub struct CalibrateOptions {
    pub target: f64,
    pub batch_tokens: usize,
    pub kp: Option<f64>,
    pub ki: Option<f64>,
    pub p0: Option<f64>,
    pub p_min: Option<f64>,
    pub p_max: Option<f64>,
    pub per_layer: bool,
    /// A saved controller to continue from (`controller.json` of an earlier run, or of
    /// training).
    pub resume: Option<PathBuf>,
}

/// One batch of the trajectory.
#[derive(Clone, Debug, Serialize)]
pub struct BatchPoint {
    /// The threshold the batch was routed with (per-layer: the layers' mean).
    pub p: f64,
    /// Mean active experts over the batch's tokens and all layers.
    pub mean_active: f64,
    pub mean_active_per_layer: BTreeMap<String, f64>,
    /// Per-layer controllers only: each layer's threshold.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub p_per_layer: Option<BTreeMap<String, f64>>,
    /// Whether an update's clamp bound (any layer's, per layer).
    pub clamped: bool,
}

/// The final threshold: one, or one per layer.
#[derive(Clone, Debug, Serialize)]
#[serde(untagged)]
pub enum FinalP {
    Global(f64),
    PerLayer(BTreeMap<String, f64>),
}

#[derive(Clone, Debug, Serialize)]
pub struct CalibrationReport {
    pub model: PathBuf,
    pub inputs: PathBuf,
    pub variant: String,
    pub target: f64,
    pub batch_tokens: usize,
    /// Positions left out at the end (the last partial batch).
    pub dropped_tokens: usize,
    pub settings: PiSettings,
    pub resumed_from: Option<PathBuf>,
    pub batches: Vec<BatchPoint>,
    pub final_p: FinalP,
    /// Over the batches: the mean and standard deviation of the batch mean active experts.
    pub mean_active: f64,
    pub std_active: f64,
    pub files: Vec<PathBuf>,
    pub seconds: f64,
}

/// The files a calibration folder holds.
pub const CALIBRATION_FILES: [&str; 5] = [
    "trajectory.csv",
    "trajectory.json",
    "trajectory.svg",
    "trajectory.png",
    "controller.json",
];

fn settings_from(base: PiSettings, o: &CalibrateOptions) -> PiSettings {
    PiSettings {
        target: o.target,
        kp: o.kp.unwrap_or(base.kp),
        ki: o.ki.unwrap_or(base.ki),
        p0: o.p0.unwrap_or(base.p0),
        p_min: o.p_min.unwrap_or(base.p_min),
        p_max: o.p_max.unwrap_or(base.p_max),
        ..base
    }
}

/// The controllers of a calibration, fresh or resumed.
fn controllers(m: &RouteModel, o: &CalibrateOptions) -> Result<ControllerFile> {
    let names: Vec<&String> = m.detected.layers.iter().map(|t| &t.name).collect();
    let e = m.detected.layers[0].n_experts;
    if let Some(t) = m.detected.layers.iter().find(|t| t.n_experts != e) {
        return Err(Error::in_file(
            &m.path,
            format!(
                "the MoE layers have {e} and {} ({}) experts; one controller needs one N",
                t.n_experts, t.name
            ),
        ));
    }
    let fresh = |base| PiController::new(settings_from(base, o));
    let resumed = |c: &PiController| {
        let settings = settings_from(c.settings, o);
        if settings.n_experts != e {
            return Err(Error::input(format!(
                "the saved controller is for {} experts per layer; the model has {e}",
                settings.n_experts
            )));
        }
        PiController::resume(settings, c.state)
    };
    let file = match &o.resume {
        None if o.per_layer => ControllerFile::PerLayer(
            names
                .iter()
                .map(|n| Ok(((*n).clone(), fresh(PiSettings::new(o.target, e))?)))
                .collect::<Result<_>>()?,
        ),
        None => ControllerFile::Global(fresh(PiSettings::new(o.target, e))?),
        Some(path) => {
            let at = |err: Error| match err {
                Error::Input(msg) => Error::in_file(path, msg),
                other => other,
            };
            match (ControllerFile::read(path)?, o.per_layer) {
                (ControllerFile::Global(c), false) => {
                    ControllerFile::Global(resumed(&c).map_err(at)?)
                }
                (ControllerFile::PerLayer(map), true) => {
                    let mut out = BTreeMap::new();
                    for n in &names {
                        let c = map.get(*n).ok_or_else(|| {
                            Error::in_file(path, format!("holds no controller for MoE layer {n}"))
                        })?;
                        out.insert((*n).clone(), resumed(c).map_err(at)?);
                    }
                    ControllerFile::PerLayer(out)
                }
                (_, per_layer) => {
                    return Err(Error::in_file(
                        path,
                        format!(
                            "is a {} controller, but the run is {} (--per-layer {})",
                            if per_layer { "global" } else { "per-layer" },
                            if per_layer { "per-layer" } else { "global" },
                            if per_layer { "given" } else { "not given" },
                        ),
                    ))
                }
            }
        }
    };
    Ok(file)
}

/// `l3kit route --calibrate`: DTop-p routing over consecutive batches of `batch_tokens`
/// positions, the PI controller updated after each; the trajectory is written to the folder
/// `out` (CSV, JSON, SVG and PNG plots, and the final controller state).
pub fn calibrate(
    model: &Path,
    map: Option<&Path>,
    inputs_path: &Path,
    o: &CalibrateOptions,
    out: &Path,
    device: &Device,
    ui: &Ui,
) -> Result<CalibrationReport> {
    let started = std::time::Instant::now();
    let mut sources = vec![model, inputs_path];
    sources.extend(map);
    sources.extend(o.resume.as_deref());
    check_output(out, &sources, OutputKind::Folder, "--out")?;
    if o.batch_tokens == 0 {
        return Err(Error::input("--batch-tokens must be at least 1"));
    }
    let m = RouteModel::open(model, map, device)?;
    m.check_routing(Routing::DTopP { p: 1.0 })?;
    let mut ctl = controllers(&m, o)?;
    let inputs = Inputs::read_hidden(inputs_path)?;
    let logits = m.logits(&inputs, inputs_path)?;
    let n = logits[0].len() / m.detected.layers[0].n_experts;
    let n_batches = n / o.batch_tokens;
    if n_batches == 0 {
        return Err(Error::in_file(
            inputs_path,
            format!(
                "holds {n} positions, fewer than one batch of --batch-tokens {}",
                o.batch_tokens
            ),
        ));
    }
    let bar = ui.items(n_batches as u64, "calibrate");
    let mut batches = Vec::with_capacity(n_batches);
    let names: Vec<String> = m.detected.layers.iter().map(|t| t.name.clone()).collect();
    for b in 0..n_batches {
        let rows = b * o.batch_tokens..(b + 1) * o.batch_tokens;
        let p_of = |ctl: &ControllerFile, name: &str| match ctl {
            ControllerFile::Global(c) => c.p(),
            ControllerFile::PerLayer(map) => map[name].p(),
        };
        let mut per_layer = BTreeMap::new();
        let mut p_per_layer = BTreeMap::new();
        for ((t, layer), l) in m.detected.layers.iter().zip(&m.layers).zip(&logits) {
            let e = t.n_experts;
            let p = p_of(&ctl, &t.name);
            let r = route_logits(
                &l[rows.start * e..rows.end * e],
                e,
                Routing::DTopP { p },
                layer.scale(),
            )
            .map_err(|err| with_inputs(err, inputs_path))?;
            per_layer.insert(t.name.clone(), r.mean_active());
            p_per_layer.insert(t.name.clone(), p);
        }
        // Equal tokens per layer: the mean over tokens and layers is the mean of the means.
        let mean_active = names.iter().map(|n| per_layer[n]).sum::<f64>() / names.len() as f64;
        let (p, clamped, p_per_layer) = match &mut ctl {
            ControllerFile::Global(c) => {
                let p = c.p();
                (p, c.update(mean_active).clamped, None)
            }
            ControllerFile::PerLayer(map) => {
                let mut clamped = false;
                for (name, c) in map.iter_mut() {
                    clamped |= c.update(per_layer[name]).clamped;
                }
                let p = p_per_layer.values().sum::<f64>() / p_per_layer.len() as f64;
                (p, clamped, Some(p_per_layer))
            }
        };
        batches.push(BatchPoint {
            p,
            mean_active,
            mean_active_per_layer: per_layer,
            p_per_layer,
            clamped,
        });
        bar.inc(1);
    }
    bar.finish_and_clear();
    let (settings, final_p, variant) = match &ctl {
        ControllerFile::Global(c) => (c.settings, FinalP::Global(c.p()), "global"),
        ControllerFile::PerLayer(map) => (
            map.values().next().expect("one layer at least").settings,
            FinalP::PerLayer(map.iter().map(|(k, c)| (k.clone(), c.p())).collect()),
            "per-layer",
        ),
    };
    let k = batches.len() as f64;
    let mean = batches.iter().map(|b| b.mean_active).sum::<f64>() / k;
    let sd = (batches
        .iter()
        .map(|b| (b.mean_active - mean).powi(2))
        .sum::<f64>()
        / k)
        .sqrt();
    let mut report = CalibrationReport {
        model: model.to_path_buf(),
        inputs: inputs_path.to_path_buf(),
        variant: variant.to_string(),
        target: o.target,
        batch_tokens: o.batch_tokens,
        dropped_tokens: n - n_batches * o.batch_tokens,
        settings,
        resumed_from: o.resume.clone(),
        batches,
        final_p,
        mean_active: mean,
        std_active: sd,
        files: CALIBRATION_FILES.iter().map(|f| out.join(f)).collect(),
        seconds: 0.0,
    };
    refuse_foreign_files(out)?;
    let staging = StagingDir::create(out, true)?;
    let dir = staging.tmp.clone();
    atomic_file::write_atomic(
        &dir.join("trajectory.csv"),
        to_csv(&report, &names).as_bytes(),
    )?;
    plot::lines(
        &panels(&report, &names),
        &dir.join("trajectory.svg"),
        &dir.join("trajectory.png"),
    )?;
    atomic_file::write_atomic(&dir.join("controller.json"), ctl.to_json().as_bytes())?;
    // The file leaves out the run time, so the same inputs give the same bytes.
    let mut value = serde_json::to_value(&report).expect("report serialises");
    if let Some(m) = value.as_object_mut() {
        m.remove("seconds");
    }
    let json = serde_json::to_string_pretty(&value).expect("report serialises") + "\n";
    atomic_file::write_atomic(&dir.join("trajectory.json"), json.as_bytes())?;
    staging.commit()?;
    report.seconds = started.elapsed().as_secs_f64();
    Ok(report)
}

/// A calibration replaces its whole folder, so it may only hold an earlier calibration's files.
fn refuse_foreign_files(out: &Path) -> Result<()> {
    let Ok(entries) = std::fs::read_dir(out) else {
        return Ok(());
    };
    for entry in entries {
        let entry = entry.map_err(|e| Error::io(out, e))?;
        let name = entry.file_name();
        if !CALIBRATION_FILES.iter().any(|f| name == *f) {
            return Err(Error::input(format!(
                "--out {}: holds {}, which is no calibration file; a calibration replaces the                  whole folder, so give a new or empty folder",
                out.display(),
                name.to_string_lossy()
            )));
        }
    }
    Ok(())
}

fn to_csv(r: &CalibrationReport, names: &[String]) -> String {
    let mut s = String::from("batch,p,mean_active");
    for n in names {
        let _ = write!(s, ",mean_active.{n}");
    }
    if r.variant == "per-layer" {
        for n in names {
            let _ = write!(s, ",p.{n}");
        }
    }
    s.push_str(",clamped\n");
    for (i, b) in r.batches.iter().enumerate() {
        let _ = write!(s, "{i},{},{}", b.p, b.mean_active);
        for n in names {
            let _ = write!(s, ",{}", b.mean_active_per_layer[n]);
        }
        if let Some(pl) = &b.p_per_layer {
            for n in names {
                let _ = write!(s, ",{}", pl[n]);
            }
        }
        let _ = writeln!(s, ",{}", b.clamped);
    }
    s
}

fn panels(r: &CalibrationReport, names: &[String]) -> Vec<LinePanel> {
    let xs = |f: &dyn Fn(&BatchPoint) -> f64| -> Vec<(f64, f64)> {
        r.batches
            .iter()
            .enumerate()
            .map(|(i, b)| (i as f64, f(b)))
            .collect()
    };
    let p_curves = match r.variant.as_str() {
        "per-layer" => names
            .iter()
            .enumerate()
            .map(|(i, n)| Series {
                label: format!("p, {n}"),
                points: xs(&|b| b.p_per_layer.as_ref().map(|m| m[n]).unwrap_or(b.p)),
                // The layer's colour in the panel below (0 is the all-layers curve there).
                color: i + 1,
            })
            .collect(),
        _ => vec![Series {
            label: "p (global)".into(),
            points: xs(&|b| b.p),
            color: 0,
        }],
    };
    let mut active = vec![Series {
        label: "all layers".into(),
        points: xs(&|b| b.mean_active),
        color: 0,
    }];
    if names.len() > 1 {
        active.extend(names.iter().enumerate().map(|(i, n)| Series {
            label: n.clone(),
            points: xs(&|b| b.mean_active_per_layer[n]),
            color: i + 1,
        }));
    }
    vec![
        LinePanel {
            title: format!(
                "DTop-p threshold (Kp {}, Ki {}, p0 {}, clamp [{}, {}])",
                r.settings.kp, r.settings.ki, r.settings.p0, r.settings.p_min, r.settings.p_max
            ),
            x_label: format!("batch ({} positions each)", r.batch_tokens),
            y_label: "p".into(),
            curves: p_curves,
            references: vec![],
        },
        LinePanel {
            title: "Mean active experts per token".into(),
            x_label: format!("batch ({} positions each)", r.batch_tokens),
            y_label: "active experts".into(),
            curves: active,
            references: vec![(r.target, format!("target {}", r.target))],
        },
    ]
}
