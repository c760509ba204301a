//! Choosing a compute device from a command-line string: `cpu`, `cuda` / `cuda:N`.
//!
//! CUDA is compiled in only with the `cuda` cargo feature (`cargo build --release --features
//! cuda`); asking for it otherwise is a clear error instead of candle's generic one.
//!
//! ```
//! use rlzero_model::device::parse_device;
//! assert!(parse_device("cpu").unwrap().is_cpu());
//! assert!(parse_device("tpu:0").is_err());
//! ```

use candle_core::Device;

use crate::error::{ModelError, Result};

/// The device `spec` names: `cpu`, `cuda` (ordinal 0) or `cuda:N`.
///
/// Errors ([`ModelError::Device`]) on an unknown name or a bad ordinal, on `cuda` when this
/// build has no CUDA support (the message says how to rebuild), and when CUDA is built in but
/// device `N` cannot be opened (no GPU, no driver): candle's reason is kept.
pub fn parse_device(spec: &str) -> Result<Device> {
    let err = |reason: String| ModelError::Device {
        spec: spec.to_string(),
        reason,
    };
    let (name, ordinal) = match spec.trim().split_once(':') {
        Some((name, n)) => {
            let n = n
                .parse::<usize>()
                .map_err(|_| err(format!("`{n}` is not a device number")))?;
            (name, Some(n))
        }
        None => (spec.trim(), None),
    };
    match name {
        "cpu" if ordinal.is_none() => Ok(Device::Cpu),
        "cuda" => {
            if !candle_core::utils::cuda_is_available() {
                return Err(err(
                    "this build has no CUDA support; rebuild with `--features cuda` \
                     (needs nvcc; see scripts/install-cuda-toolkit.sh)"
                        .into(),
                ));
            }
            let n = ordinal.unwrap_or(0);
            Device::new_cuda(n).map_err(|e| err(format!("cannot open CUDA device {n}: {e}")))
        }
        _ => Err(err("expected `cpu`, `cuda` or `cuda:N`".into())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_errors() {
        assert!(parse_device(" cpu ").unwrap().is_cpu());
        for bad in ["gpu", "cpu:1", "cuda:x", "", "metal"] {
            let e = parse_device(bad).unwrap_err().to_string();
            assert!(e.contains(&format!("`{bad}`")), "{e}");
        }
        match parse_device("cuda:0") {
            // Without the feature the message says how to get it.
            Err(e) if !candle_core::utils::cuda_is_available() => {
                assert!(e.to_string().contains("--features cuda"), "{e}")
            }
            // With it: a device, or candle's reason why not (no GPU on this machine).
            Err(e) => assert!(e.to_string().contains("cannot open CUDA device 0"), "{e}"),
            Ok(d) => assert!(d.is_cuda()),
        }
    }
}
