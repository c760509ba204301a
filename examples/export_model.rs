//! Exports a model as transformers' `save_pretrained` would, and writes rlzero's own logits for
//! a fixed input next to it, so `scripts/check_export_transformers.py` can load the export in
//! transformers and compare.
//!
//!     cargo run --release --example export_model -- SOURCE OUT_DIR [--lora]
//!
//! `SOURCE` is a Hub id, an HF directory or a .gguf file. `--lora` attaches LoRA adapters with
//! non-zero `B` first (as after training), so the merged-export path is what gets checked.
//! `OUT_DIR/rlzero_check.safetensors` holds `input_ids (1, T)` and `logits (1, T, V)`, and
//! `rlzero_check.json` the prompt text with rlzero's token ids; neither is part of the checkpoint.
use std::collections::HashMap;
use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use rlzero::candle_core::{Device, Tensor};
use rlzero::model::export::{save_pretrained, ExportOptions};
use rlzero::model::{
    load, LoadOptions, LogitsToKeep, LoraConfig, Message, ModelSource, WeightMode,
};

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (src, out) = match (args.first(), args.get(1)) {
        (Some(s), Some(o)) => (s.clone(), PathBuf::from(o)),
        _ => bail!("usage: export_model SOURCE OUT_DIR [--lora]"),
    };
    let lora = args.iter().any(|a| a == "--lora");
    let opts = LoadOptions {
        mode: WeightMode::Frozen,
        ..LoadOptions::default()
    };
    let mut m = load(&ModelSource::parse(&src), &opts).with_context(|| format!("loading {src}"))?;
    if lora {
        m.decoder.add_lora(&LoraConfig::default())?;
        for (i, (_, v)) in m.decoder.named_trainable()?.into_iter().enumerate() {
            if i % 2 == 1 {
                // lora_B: small deterministic values instead of PEFT's zeros.
                let n = v.elem_count();
                let vals: Vec<f32> = (0..n)
                    .map(|j| ((j * 7 + i) % 13) as f32 * 1e-3 - 6e-3)
                    .collect();
                v.set(&Tensor::from_vec(vals, v.shape(), v.device())?)?;
            }
        }
    }
    let summary = save_pretrained(
        &m.decoder,
        &m.tokenizer,
        &m.generation,
        &out,
        &ExportOptions::default(),
    )?;
    for f in &summary.files {
        println!("wrote {}", f.display());
    }
    let prompt = m
        .tokenizer
        .apply_chat_template(&[Message::user("What is 7 + 5? Think step by step.")], true)
        .unwrap_or_else(|_| "What is 7 + 5? Think step by step.".into());
    let ids = m.tokenizer.encode(&prompt, false)?;
    let input = Tensor::new(ids.as_slice(), &Device::Cpu)?.unsqueeze(0)?; // (1, T)
    let mask = input.ones_like()?;
    let logits = m.decoder.forward(&input, &mask, LogitsToKeep::All)?; // (1, T, V)
    let check = out.join("rlzero_check.safetensors");
    let tensors = HashMap::from([
        (
            "input_ids".to_string(),
            input.to_dtype(rlzero::candle_core::DType::I64)?,
        ),
        ("logits".to_string(), logits),
    ]);
    rlzero::candle_core::safetensors::save(&tensors, &check)?;
    let text = out.join("rlzero_check.json");
    std::fs::write(
        &text,
        serde_json::to_vec(&serde_json::json!({"text": prompt, "ids": ids}))?,
    )?;
    println!(
        "wrote {} and {} ({} tokens)",
        check.display(),
        text.display(),
        ids.len()
    );
    Ok(())
}
