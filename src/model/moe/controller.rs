//! DTop-p's PI controller: it moves the global threshold P between batches so that the mean
//! number of active experts tracks a target T.
//!
//! After a batch whose mean number of active experts (over its tokens and the layers the
//! controller serves) is `a`, in f64 and in this order:
//!
//! ```text
//! e      = (T - a) / N                       N experts per layer
//! I'     = I + e
//! p'     = (p0 + Kp * e) + Ki * I'
//! if p' leaves [p_min, p_max]: p' is clamped and I is kept (anti-windup), else I = I'
//! ```
//!
//! The paper does not publish its constants; the defaults ([`PiSettings::new`]) are ours:
//! p0 0.5, Kp 1.0, Ki 0.25, p in [0.05, 1.0]. The per-layer variant keeps one controller per
//! layer, each fed its own layer's mean. The state (p, I, step) is saved and resumed as JSON
//! in the layout of `fixtures/trained-moe/controller.json`.

use crate::util::error::{Error, Result};
use crate::util::fs::read_small_text;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::Path;

pub const DEFAULT_P0: f64 = 0.5;
pub const DEFAULT_KP: f64 = 1.0;
pub const DEFAULT_KI: f64 = 0.25;
pub const DEFAULT_P_MIN: f64 = 0.05;
pub const DEFAULT_P_MAX: f64 = 1.0;

/// The largest controller file read (the per-layer variant of a few hundred layers fits).
const MAX_STATE_BYTES: u64 = 1 << 20;

#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PiSettings {
    /// Target mean number of active experts per token.
    pub target: f64,
    /// Experts per layer (N: the error is normalised by it).
    pub n_experts: usize,
    pub p0: f64,
    pub kp: f64,
    pub ki: f64,
    pub p_min: f64,
    pub p_max: f64,
}

impl PiSettings {
    /// The defaults for a target and a layer width.
    pub fn new(target: f64, n_experts: usize) -> Self {
        PiSettings {
            target,
            n_experts,
            p0: DEFAULT_P0,
            kp: DEFAULT_KP,
            ki: DEFAULT_KI,
            p_min: DEFAULT_P_MIN,
            p_max: DEFAULT_P_MAX,
        }
    }

    /// Refuse settings the controller cannot run with.
    pub fn check(&self) -> Result<()> {
        let s = self;
        let finite = [s.target, s.p0, s.kp, s.ki, s.p_min, s.p_max];
        if finite.iter().any(|v| !v.is_finite()) {
            return Err(Error::input(format!(
                "controller settings must be finite numbers: {s:?}"
            )));
        }
        if s.n_experts == 0 {
            return Err(Error::input("the controller needs at least one expert"));
        }
        if !(s.target >= 1.0 && s.target <= s.n_experts as f64) {
            return Err(Error::input(format!(
                "--target {} must lie between 1 and the {} experts of a layer",
                s.target, s.n_experts
            )));
        }
        if !(s.p_min > 0.0 && s.p_min <= s.p_max && s.p_max <= 1.0) {
            return Err(Error::input(format!(
                "the clamp range needs 0 < p_min <= p_max <= 1 (got --p-min {} --p-max {})",
                s.p_min, s.p_max
            )));
        }
        if !(s.p0 >= s.p_min && s.p0 <= s.p_max) {
            return Err(Error::input(format!(
                "--p0 {} lies outside the clamp range [{}, {}]",
                s.p0, s.p_min, s.p_max
            )));
        }
        Ok(())
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PiState {
    /// The threshold the next batch is routed with.
    pub p: f64,
    pub integral: f64,
    /// Updates so far (clamped ones included).
    pub step: u64,
}

/// What one update did.
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
pub struct PiUpdate {
    pub p: f64,
    pub integral: f64,
    pub clamped: bool,
}

/// One PI controller.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PiController {
    pub settings: PiSettings,
    pub state: PiState,
}

impl PiController {
    /// A fresh controller at (p0, 0, 0).
    pub fn new(settings: PiSettings) -> Result<Self> {
        settings.check()?;
        Ok(PiController {
            settings,
            state: PiState {
                p: settings.p0,
                integral: 0.0,
                step: 0,
            },
        })
    }

    /// A controller resumed from a saved state, checked.
    pub fn resume(settings: PiSettings, state: PiState) -> Result<Self> {
        settings.check()?;
        if !(state.p.is_finite() && state.integral.is_finite())
            || state.p < settings.p_min
            || state.p > settings.p_max
        {
            return Err(Error::input(format!(
                "controller state p = {}, integral = {} is not finite or lies outside [{}, {}]",
                state.p, state.integral, settings.p_min, settings.p_max
            )));
        }
        Ok(PiController { settings, state })
    }

    pub fn p(&self) -> f64 {
        self.state.p
    }

    /// Feed the mean active experts of the batch just routed; returns the new threshold.
    pub fn update(&mut self, mean_active: f64) -> PiUpdate {
        let s = &self.settings;
        let e = (s.target - mean_active) / s.n_experts as f64;
        let candidate = self.state.integral + e;
        let p = (s.p0 + s.kp * e) + s.ki * candidate;
        let clamped = !(p >= s.p_min && p <= s.p_max);
        if clamped {
            // NaN (from a NaN mean) lands on p_min rather than escaping the clamp.
            self.state.p = if p > s.p_max { s.p_max } else { s.p_min };
        } else {
            self.state.p = p;
            self.state.integral = candidate;
        }
        self.state.step += 1;
        PiUpdate {
            p: self.state.p,
            integral: self.state.integral,
            clamped,
        }
    }
}

/// A controller file: the global variant, or one controller per layer.
#[derive(Clone, Debug, PartialEq)]
pub enum ControllerFile {
    Global(PiController),
    PerLayer(BTreeMap<String, PiController>),
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFile {
    kind: String,
    variant: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    settings: Option<PiSettings>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    state: Option<PiState>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    layers: Option<BTreeMap<String, PiController>>,
}

const KIND: &str = "dtopp-pi";

impl ControllerFile {
    pub fn to_json(&self) -> String {
        let raw = match self {
            ControllerFile::Global(c) => RawFile {
                kind: KIND.into(),
                variant: "global".into(),
                settings: Some(c.settings),
                state: Some(c.state),
                layers: None,
            },
            ControllerFile::PerLayer(m) => RawFile {
                kind: KIND.into(),
                variant: "per-layer".into(),
                settings: None,
                state: None,
                layers: Some(m.clone()),
            },
        };
        serde_json::to_string_pretty(&raw).expect("controller state serialises") + "\n"
    }

    /// Parse a saved controller; `origin` names it in messages.
    pub fn from_json(text: &str, origin: &str) -> Result<Self> {
        let bad = |m: String| Error::input(format!("{origin}: {m}"));
        let raw: RawFile = serde_json::from_str(text)
            .map_err(|e| bad(format!("not a controller state file: {e}")))?;
        if raw.kind != KIND {
            return Err(bad(format!("kind is {:?}, expected {KIND:?}", raw.kind)));
        }
        match (raw.variant.as_str(), raw.settings, raw.state, raw.layers) {
            ("global", Some(settings), Some(state), None) => Ok(ControllerFile::Global(
                PiController::resume(settings, state).map_err(|e| bad(e.to_string()))?,
            )),
            ("per-layer", None, None, Some(layers)) if !layers.is_empty() => {
                let mut out = BTreeMap::new();
                for (name, c) in layers {
                    let c = PiController::resume(c.settings, c.state)
                        .map_err(|e| bad(format!("layer {name}: {e}")))?;
                    out.insert(name, c);
                }
                Ok(ControllerFile::PerLayer(out))
            }
            (v, ..) => Err(bad(format!(
                "variant {v:?} needs `settings` and `state` (global) or a non-empty `layers` (per-layer)"
            ))),
        }
    }

    pub fn read(path: &Path) -> Result<Self> {
        let text = read_small_text(path, MAX_STATE_BYTES, "a controller state file")?;
        Self::from_json(&text, &path.display().to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_clamp_keeps_the_integral() {
        // Hand-computed: T 2, N 8, defaults.
        let mut c = PiController::new(PiSettings::new(2.0, 8)).unwrap();
        // a = 8: e = -0.75, p = 0.5 - 0.75 - 0.1875 < p_min.
        let u = c.update(8.0);
        assert!(u.clamped);
        assert_eq!((u.p, u.integral), (0.05, 0.0));
        // a = 2: e = 0, p = p0 + Ki * 0 = 0.5.
        let u = c.update(2.0);
        assert_eq!((u.p, u.integral, u.clamped), (0.5, 0.0, false));
        // a = 1: e = 0.125, I = 0.125, p = 0.625 + 0.03125.
        assert_eq!(c.update(1.0).p, 0.65625);
        assert_eq!(c.state.step, 3);
    }
}
