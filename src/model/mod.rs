//! Stage 4's model code, in the candle style (serde config, `VarBuilder`, a plain `forward`):
//! the L3 layer ([`l3`]), its dense weights ([`weights`]) and the device choice ([`device`]);
//! whole decoders ([`decoder`]), the serving of their L3 rows with prefetch ([`runtime`]) and
//! next-token choice ([`sampling`]).

pub mod decoder;
pub mod device;
pub mod l3;
pub mod load;
pub mod moe;
pub mod runtime;
pub mod sampling;
pub mod weights;

pub use device::select_device;
pub use l3::{rms_norm, Backend, Groups, L3Config, L3Layer};
pub use weights::{param_names, var_builder};
