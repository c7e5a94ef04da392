//! Choosing the compute device: `cpu`, `cuda` (an error without the `cuda` feature) or `auto`.

use crate::util::error::{Error, Result};
use candle_core::Device;

/// Pick a device: `cpu`, `cuda` (an error without the `cuda` feature or a GPU) or `auto`.
/// Returns the device and, for `auto` falling back, a note saying so.
pub fn select_device(choice: &str) -> Result<(Device, Option<String>)> {
    match choice {
        "cpu" => Ok((Device::Cpu, None)),
        "cuda" => cuda_device().map(|d| (d, None)),
        "auto" => match cuda_device() {
            Ok(d) => Ok((d, None)),
            Err(e) => Ok((Device::Cpu, Some(format!("using the CPU: {e}")))),
        },
        other => Err(Error::input(format!(
            "--device {other:?}: expected cpu, cuda or auto"
        ))),
    }
}

#[cfg(feature = "cuda")]
fn cuda_device() -> Result<Device> {
    Device::new_cuda(0).map_err(|e| Error::input(format!("no usable CUDA device: {e}")))
}

#[cfg(not(feature = "cuda"))]
fn cuda_device() -> Result<Device> {
    Err(Error::input(
        "this l3kit was built without CUDA support (rebuild with `--features cuda`)",
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_without_cuda_feature_is_a_clear_error() {
        #[cfg(not(feature = "cuda"))]
        {
            let e = select_device("cuda").unwrap_err();
            assert!(e.to_string().contains("without CUDA"));
            let (d, note) = select_device("auto").unwrap();
            assert!(d.is_cpu());
            assert!(note.unwrap().contains("CPU"));
        }
        assert!(select_device("tpu").is_err());
    }
}
