//! Mixture-of-Experts layers, the baseline L3 is measured against: routing (Top-k, Top-p and
//! DTop-p, [`routing`]), DTop-p's PI controller ([`controller`]) and the layer forward with
//! SwiGLU experts ([`layer`]). The exact specification is `fixtures/MOE.md`.

pub mod controller;
pub mod layer;
pub mod routing;

pub use controller::{ControllerFile, PiController, PiSettings, PiState, PiUpdate};
pub use layer::{MoeConfig, MoeLayer};
pub use routing::{route_logits, Routed, Routing};
