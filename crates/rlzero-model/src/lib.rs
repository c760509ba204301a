//! # rlzero-model
//!
//! Trainable decoder-only transformers (Llama, Qwen2, Qwen3) on candle, with loading from a
//! Hugging Face Hub repo id, a local safetensors directory or a GGUF file, and the tokenizer and
//! chat template that come with them.
//!
//! candle-transformers' models return only the last position's logits and use fused kernels
//! without a backward pass, so they cannot train; this crate owns that layer. Its forward takes an
//! explicit attention mask, returns logits only for the positions asked for, and every op in it
//! has a gradient.

#![warn(missing_docs)]

pub mod atomic;
pub mod attention;
pub mod chat_template;
pub mod config;
mod cpu_matmul;
pub mod decoder;
pub mod device;
pub mod error;
pub mod export;
pub mod frozen_linear;
pub mod fused;
pub mod gguf;
mod gguf_scan;
pub mod gguf_tokenizer;
pub mod hub;
pub mod layers;
pub mod loader;
pub mod logprobs;
pub mod lora;
pub mod mask;
pub mod pack;
pub mod prefix;
pub mod recompute;
pub mod rope;
pub mod safetensors_io;
pub mod sgemm;
pub mod simd;
pub mod tokenizer;
mod validate;
pub mod weights;

pub use chat_template::{ChatTemplate, Message};
pub use config::{Architecture, DecoderConfig, RopeScaling};
pub use decoder::{Decoder, LogitsToKeep};
pub use error::{ModelError, Result};
pub use hub::{HubOptions, HubRepo};
pub use loader::{
    load, load_gguf_decoder, GenerationConfig, LoadOptions, LoadedModel, ModelSource,
};
pub use lora::{LoraAdapter, LoraConfig, TargetModule};
pub use tokenizer::TextTokenizer;
pub use weights::{WeightMode, Weights};
