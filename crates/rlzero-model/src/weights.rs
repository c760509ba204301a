//! A named store of weight tensors, and a prefix view over it that reads like candle-nn's
//! `VarBuilder` (`vb.pp("self_attn").get((h, d), "q_proj.weight")`).
//!
//! Unlike `VarBuilder` over a `VarMap`, a missing tensor is an error (a `VarMap` would silently
//! create a freshly initialised one) and every error names the checkpoint and the tensor.
//! The store also records which tensors the model actually used, so the trainable parameter
//! list is exactly what the forward pass touches — tied embeddings appear once.

use std::cell::RefCell;
use std::collections::HashMap;

use candle_core::{DType, Device, Shape, Tensor, Var};

use crate::error::{ModelError, Result};

/// Whether loaded weights become trainable variables or plain constant tensors.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WeightMode {
    /// Every used weight is a `candle_core::Var`: gradients flow to it and optimizers update it.
    Trainable,
    /// Plain tensors: no gradient is tracked (a frozen reference policy, or inference).
    Frozen,
}

/// Named tensors from one checkpoint, already on the target device and dtype.
pub struct Weights {
    source_name: String,
    tensors: HashMap<String, Tensor>,
    used: RefCell<Vec<(String, Tensor)>>,
}

impl Weights {
    /// Wraps tensors read from `source_name` (a path or repo id, used in error messages),
    /// converting them to `dtype` on `device` and, in [`WeightMode::Trainable`], into variables.
    pub fn new(
        source_name: impl Into<String>,
        tensors: HashMap<String, Tensor>,
        dtype: DType,
        device: &Device,
        mode: WeightMode,
    ) -> Result<Self> {
        let tensors = tensors
            .into_iter()
            .map(|(name, t)| {
                let t = t.to_device(device)?.to_dtype(dtype)?;
                let t = match mode {
                    // `Var::from_tensor` copies into fresh storage, so the variable never
                    // aliases a buffer that someone else holds.
                    WeightMode::Trainable => Var::from_tensor(&t)?.as_tensor().clone(),
                    WeightMode::Frozen => t.detach(),
                };
                Ok((name, t))
            })
            .collect::<Result<_>>()?;
        Ok(Self {
            source_name: source_name.into(),
            tensors,
            used: RefCell::new(Vec::new()),
        })
    }

    /// The checkpoint this store was read from.
    pub fn source_name(&self) -> &str {
        &self.source_name
    }

    /// Whether a tensor of this name exists.
    pub fn contains(&self, name: &str) -> bool {
        self.tensors.contains_key(name)
    }

    /// A view with no prefix.
    pub fn root(&self) -> Vb<'_> {
        Vb {
            weights: self,
            prefix: String::new(),
        }
    }

    /// The tensors handed out so far, in first-use order, each once.
    pub fn used(&self) -> Vec<(String, Tensor)> {
        self.used.borrow().clone()
    }

    fn fetch(&self, name: &str, shape: &Shape) -> Result<Tensor> {
        let t = self
            .tensors
            .get(name)
            .ok_or_else(|| ModelError::MissingTensor {
                source_name: self.source_name.clone(),
                tensor: name.to_string(),
            })?;
        if t.shape() != shape {
            return Err(ModelError::ShapeMismatch {
                source_name: self.source_name.clone(),
                tensor: name.to_string(),
                expected: shape.dims().to_vec(),
                got: t.dims().to_vec(),
            });
        }
        let mut used = self.used.borrow_mut();
        if !used.iter().any(|(n, _)| n == name) {
            used.push((name.to_string(), t.clone()));
        }
        Ok(t.clone())
    }
}

/// A prefix into a [`Weights`] store, mirroring the checkpoint's dotted names.
#[derive(Clone)]
pub struct Vb<'a> {
    weights: &'a Weights,
    prefix: String,
}

impl<'a> Vb<'a> {
    /// Descends one level: `vb.pp("layers").pp(3)` → `layers.3.`.
    pub fn pp(&self, segment: impl ToString) -> Vb<'a> {
        let segment = segment.to_string();
        let prefix = if self.prefix.is_empty() {
            segment
        } else {
            format!("{}.{segment}", self.prefix)
        };
        Vb {
            weights: self.weights,
            prefix,
        }
    }

    fn path(&self, name: &str) -> String {
        if self.prefix.is_empty() {
            name.to_string()
        } else {
            format!("{}.{name}", self.prefix)
        }
    }

    /// The tensor `prefix.name`, which must have exactly `shape`.
    pub fn get(&self, shape: impl Into<Shape>, name: &str) -> Result<Tensor> {
        self.weights.fetch(&self.path(name), &shape.into())
    }

    /// Whether `prefix.name` exists.
    pub fn contains(&self, name: &str) -> bool {
        self.weights.contains(&self.path(name))
    }
}
