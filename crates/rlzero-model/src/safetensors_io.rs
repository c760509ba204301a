//! Reading HF safetensors checkpoints (single file or sharded with an index) into named
//! tensors, with bf16/f16 converted by the caller's [`crate::weights::Weights`].

use std::collections::{BTreeSet, HashMap};
use std::path::{Path, PathBuf};

use candle_core::safetensors::Load;
use candle_core::{Device, Tensor};
use safetensors::{Dtype, SafeTensors};

use crate::error::{read_file, read_json, ModelError, Result};

/// Reads every tensor of one `.safetensors` file onto the CPU, in its stored dtype.
pub fn read_safetensors(path: &Path) -> Result<HashMap<String, Tensor>> {
    let bytes = read_file(path)?;
    let st = SafeTensors::deserialize(&bytes).map_err(|e| ModelError::Safetensors {
        file: path.to_path_buf(),
        reason: e.to_string(),
    })?;
    let mut out = HashMap::new();
    for (name, view) in st.tensors() {
        match view.dtype() {
            Dtype::F32 | Dtype::F16 | Dtype::BF16 | Dtype::F64 => {}
            other => {
                return Err(ModelError::UnsupportedDtype {
                    file: path.to_path_buf(),
                    tensor: name,
                    dtype: format!("{other:?}"),
                })
            }
        }
        let t = view
            .load(&Device::Cpu)
            .map_err(|e| ModelError::Safetensors {
                file: path.to_path_buf(),
                reason: format!("tensor `{name}`: {}", crate::validate::candle_msg(&e)),
            })?;
        out.insert(name, t);
    }
    Ok(out)
}

/// The shard files a `model.safetensors.index.json` names, in a stable order.
pub fn shard_files(index_path: &Path) -> Result<Vec<String>> {
    let json = read_json(index_path)?;
    let map = json
        .get("weight_map")
        .and_then(|m| m.as_object())
        .ok_or_else(|| ModelError::MissingField {
            file: index_path.to_path_buf(),
            field: "weight_map".into(),
        })?;
    let mut files = BTreeSet::new();
    for (tensor, file) in map {
        let file = file.as_str().ok_or_else(|| ModelError::InvalidField {
            file: index_path.to_path_buf(),
            field: format!("weight_map.{tensor}"),
            reason: format!("expected a file name, got {file}"),
        })?;
        // A shard name must stay inside the checkpoint directory.
        if file.contains("..") || Path::new(file).is_absolute() {
            return Err(ModelError::InvalidField {
                file: index_path.to_path_buf(),
                field: format!("weight_map.{tensor}"),
                reason: format!("shard path `{file}` leaves the model directory"),
            });
        }
        files.insert(file.to_string());
    }
    Ok(files.into_iter().collect())
}

/// Reads several safetensors files into one map; a tensor present twice is an error.
pub fn read_all(paths: &[PathBuf]) -> Result<HashMap<String, Tensor>> {
    let mut all = HashMap::new();
    for p in paths {
        for (name, t) in read_safetensors(p)? {
            if all.insert(name.clone(), t).is_some() {
                return Err(ModelError::Safetensors {
                    file: p.clone(),
                    reason: format!("tensor `{name}` also appears in another shard"),
                });
            }
        }
    }
    Ok(all)
}
