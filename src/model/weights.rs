//! Dense weights of a model from any tensor reader (a source checkpoint or a packed folder's
//! shards), decoded to f32 into a candle `VarBuilder`.

use crate::formats::dtype as convert;
use crate::formats::packed::LayerParams;
use crate::formats::safetensors::TensorReader;
use crate::util::error::{Error, Result};
use candle_core::{DType, Device, Tensor};
use std::collections::HashMap;

fn ce(e: candle_core::Error) -> Error {
    Error::Other(format!("compute error: {e}"))
}

/// Read small dense tensors from a checkpoint into a VarBuilder on `device`.
pub fn var_builder(
    ckpt: &dyn TensorReader,
    names: &[&str],
    device: &Device,
) -> Result<candle_nn::VarBuilder<'static>> {
    let mut map = HashMap::new();
    for &name in names {
        let info = ckpt
            .tensor(name)
            .ok_or_else(|| Error::in_file(ckpt.origin(), format!("missing tensor {name}")))?;
        // The dtype is checked before the bytes are read: integers never reach the decoder.
        let dtype = info.float_dtype()?;
        let bytes = ckpt.read_all(name)?;
        let mut values = Vec::with_capacity(info.numel());
        convert::decode_f32(dtype, &bytes, &mut values);
        let t = Tensor::from_vec(values, info.shape.clone(), device).map_err(ce)?;
        map.insert(name.to_string(), t);
    }
    Ok(candle_nn::VarBuilder::from_tensors(map, DType::F32, device))
}

/// The names of a layer's dense parameters, for [`var_builder`].
pub fn param_names(p: &LayerParams) -> Vec<&str> {
    let mut names = vec![p.w_up.as_str(), p.w_mix.as_str()];
    names.extend(p.norm_in.as_deref());
    names.extend(p.norm_out.as_deref());
    names
}
