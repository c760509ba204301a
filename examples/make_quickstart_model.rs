//! Builds `assets/quickstart-model/`, the tiny model the `quickstart` example trains with GRPO.
//!
//!     cargo run --release --example make_quickstart_model [-- --out DIR]
//!
//! **What it makes.** A 2-layer Llama-architecture decoder (hidden 64, 4 heads, 135 k
//! parameters, 0.5 MB in f32, vocabulary of 30 characters and special tokens) in Hugging Face layout:
//! `model.safetensors`, `config.json` (`model_type: "llama"`), a character-level
//! `tokenizer.json` built with the `tokenizers` crate (a BPE model without merges, so every
//! character is one token; `<s>` prepended by its post-processor; `</s>` the EOS special
//! token), `tokenizer_config.json` and `generation_config.json`. `rlzero::model::load` reads it
//! like any checkpoint.
//!
//! **How it is trained, and why that way.** The task is string reversal: prompt `abcd>`,
//! answer `dcba`. The model is pretrained with next-token cross-entropy on the answer tokens
//! (candle autograd, rlzero's AdamW), but on *deliberately noisy* targets: the correct reversal
//! only 12 % of the time, the un-reversed copy (a systematic wrong answer) 60 %, a random
//! string of the same length 16 %, a copy with one letter changed 12 %. The result samples the right answer to unseen strings only
//! about one time in ten and answers greedily with the copy — yet it *can* reverse. That is
//! the situation R1-Zero-style RL starts from: RL with a verifiable reward does not teach a
//! skill from nothing, it amplifies behaviour the model already produces sometimes. GRPO in
//! the quickstart then turns the rare correct answer into the usual one in a minute or two.
//! The strings are split once by a hash (`quickstart/task.rs`): the 1 in 8 the quickstart
//! evaluates on are never used here.
//!
//! **Deterministic.** Weight initialisation and data come from fixed-seed SplitMix64 streams,
//! and the training loop has no other randomness, so re-running this writes the same files
//! byte for byte on the same machine (checked by comparing `sha256sum` of two runs). Another
//! CPU may differ in the last bits of the weights (matrix-product kernels are chosen per
//! instruction set); that is not expected to change what the quickstart shows. It takes
//! 6–10 minutes on 2 cores (longer when they are busy with other work), and prints held-out
//! behaviour every 250 steps: the share of reversals among sampled answers climbs to ~10 %
//! while greedy answers stay copies.
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{anyhow, bail, Context, Result};
use rlzero::candle_core::{DType, Device, Tensor};
use rlzero::grpo::optim::{clip_grad_norm, AdamW, AdamWParams};
use rlzero::grpo::LrSchedule;
use rlzero::model::pack::{completion_nll, PackedBatch};
use rlzero::model::{load, Decoder, DecoderConfig, LoadOptions, ModelSource, TextTokenizer};
use rlzero::model::{WeightMode, Weights};
use rlzero::rollout::{rollout, SamplingParams};
use serde_json::json;
use tokenizers::decoders::fuse::Fuse;
use tokenizers::models::bpe::BPE;
use tokenizers::processors::template::TemplateProcessing;
use tokenizers::{AddedToken, Tokenizer};

#[path = "quickstart/fsio.rs"]
mod fsio;
#[path = "quickstart/task.rs"]
mod task;

use task::{Rng, EOS};

// Architecture: the smallest Llama that learns reversal of 6 letters reliably here.
const HIDDEN: usize = 64;
const LAYERS: usize = 2;
const HEADS: usize = 4;
const INTERMEDIATE: usize = 256;
const MAX_POSITIONS: usize = 64;

// Pretraining.
const STEPS: u64 = 4000;
const BATCH: usize = 128;
const LR: f64 = 3e-3;
const WARMUP: u64 = 200;
const SEED: u64 = 20_250_101;

// The noisy target mix (must sum to ≤ 1; the rest is a copy with one letter changed).
const P_REVERSE: f64 = 0.12;
const P_COPY: f64 = 0.60;
const P_RANDOM: f64 = 0.16;

/// The target the pretraining data pairs with string `s`.
fn noisy_target(rng: &mut Rng, s: &str) -> String {
    let u = rng.unit();
    if u < P_REVERSE {
        task::answer(s)
    } else if u < P_REVERSE + P_COPY {
        s.to_string()
    } else if u < P_REVERSE + P_COPY + P_RANDOM {
        rng.letters(s.len())
    } else {
        // A copy with one letter replaced by a different one.
        let mut c: Vec<char> = s.chars().collect();
        let i = rng.below(c.len());
        let old = c[i];
        while c[i] == old {
            c[i] = rng.letter();
        }
        c.into_iter().collect()
    }
}

fn config_json(vocab: usize) -> serde_json::Value {
    json!({
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "vocab_size": vocab,
        "hidden_size": HIDDEN,
        "intermediate_size": INTERMEDIATE,
        "num_hidden_layers": LAYERS,
        "num_attention_heads": HEADS,
        "num_key_value_heads": HEADS,
        "max_position_embeddings": MAX_POSITIONS,
        "rms_norm_eps": 1e-5,
        "rope_theta": 10000.0,
        "hidden_act": "silu",
        "initializer_range": 0.02,
        "tie_word_embeddings": false,
        "attention_bias": false,
        "mlp_bias": false,
        "bos_token_id": 0,
        "eos_token_id": 1,
        "torch_dtype": "float32",
    })
}

/// The character-level tokenizer: BPE with an empty merge list splits text into characters;
/// the `Fuse` decoder joins them back without spaces.
fn build_tokenizer() -> Result<Tokenizer> {
    let vocab = task::vocab();
    let entries: [(String, u32); 30] = std::array::from_fn(|i| (vocab[i].clone(), i as u32));
    if vocab.len() != entries.len() {
        bail!("vocabulary has {} entries, expected 30", vocab.len());
    }
    let bpe = BPE::builder()
        .vocab_and_merges(entries, Vec::new())
        .unk_token(task::UNK.to_string())
        .build()
        .map_err(|e| anyhow!("building the BPE model: {e}"))?;
    let mut tok = Tokenizer::new(bpe);
    tok.add_special_tokens([
        AddedToken::from(task::BOS, true),
        AddedToken::from(task::EOS, true),
        AddedToken::from(task::UNK, true),
    ])
    .map_err(|e| anyhow!("adding special tokens: {e}"))?;
    let post = TemplateProcessing::builder()
        .try_single(format!("{} $A", task::BOS))
        .map_err(|e| anyhow!("post-processor template: {e}"))?
        .special_tokens(vec![(task::BOS, 0u32)])
        .build()
        .map_err(|e| anyhow!("post-processor: {e}"))?;
    tok.with_post_processor(Some(post));
    tok.with_decoder(Some(Fuse::new()));
    Ok(tok)
}

/// HF's initialisation (`initializer_range` 0.02, norms at 1), from a seeded stream.
fn init_weights(cfg: &DecoderConfig, rng: &mut Rng) -> Result<HashMap<String, Tensor>> {
    let (h, i, v) = (cfg.hidden_size, cfg.intermediate_size, cfg.vocab_size);
    let mut shapes: Vec<(String, Vec<usize>)> =
        vec![("model.embed_tokens.weight".into(), vec![v, h])];
    for l in 0..cfg.num_hidden_layers {
        let p = format!("model.layers.{l}");
        for m in ["q_proj", "k_proj", "v_proj", "o_proj"] {
            shapes.push((format!("{p}.self_attn.{m}.weight"), vec![h, h]));
        }
        shapes.push((format!("{p}.mlp.gate_proj.weight"), vec![i, h]));
        shapes.push((format!("{p}.mlp.up_proj.weight"), vec![i, h]));
        shapes.push((format!("{p}.mlp.down_proj.weight"), vec![h, i]));
        shapes.push((format!("{p}.input_layernorm.weight"), vec![h]));
        shapes.push((format!("{p}.post_attention_layernorm.weight"), vec![h]));
    }
    shapes.push(("model.norm.weight".into(), vec![h]));
    shapes.push(("lm_head.weight".into(), vec![v, h]));
    shapes
        .into_iter()
        .map(|(name, shape)| {
            let n: usize = shape.iter().product();
            let data: Vec<f32> = if shape.len() == 1 {
                vec![1.0; n]
            } else {
                (0..n).map(|_| (0.02 * rng.normal()) as f32).collect()
            };
            Ok((name, Tensor::from_vec(data, shape, &Device::Cpu)?))
        })
        .collect()
}

/// Prompt ids `<s> s >` and target ids `t </s>`, by direct vocabulary lookup (checked against
/// the tokenizer in `main`).
fn encode(s: &str, t: &str) -> Result<(Vec<u32>, Vec<u32>)> {
    let ids = |text: &str| -> Result<Vec<u32>> {
        text.chars()
            .map(|c| task::id_of(&c.to_string()).with_context(|| format!("{c:?} not in vocab")))
            .collect()
    };
    let mut p = vec![0];
    p.extend(ids(&task::prompt_text(s))?);
    let mut c = ids(t)?;
    c.push(1);
    Ok((p, c))
}

/// Held-out behaviour: fraction of sampled (T = 1) answers that are the reversal, the copy;
/// fraction of greedy answers that are the reversal, the copy.
fn probe(model: &Decoder, tok: &TextTokenizer, strings: &[String]) -> Result<[f64; 4]> {
    let prompts: Vec<Vec<u32>> = strings
        .iter()
        .map(|s| Ok(tok.encode(&task::prompt_text(s), true)?))
        .collect::<Result<_>>()?;
    let mut out = [0.0; 4];
    for (k, greedy) in [false, true].into_iter().enumerate() {
        let g = if greedy { 1 } else { 8 };
        let params = SamplingParams {
            greedy,
            max_new_tokens: task::MAX_LEN + 1,
            eos_token_ids: vec![1],
            seed: 7,
            ..SamplingParams::default()
        };
        let comps = rollout(model, tok, &prompts, g, &params, 0)?;
        for c in &comps {
            let s = &strings[c.prompt_index];
            if c.text == task::answer(s) {
                out[2 * k] += 1.0;
            } else if &c.text == s {
                out[2 * k + 1] += 1.0;
            }
        }
        for x in &mut out[2 * k..2 * k + 2] {
            *x /= comps.len() as f64;
        }
    }
    Ok(out)
}

fn parse_out() -> Result<PathBuf> {
    let mut out = Path::new(env!("CARGO_MANIFEST_DIR")).join("assets/quickstart-model");
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--out" => out = args.next().context("--out needs a directory")?.into(),
            "-h" | "--help" => {
                println!(
                    "usage: make_quickstart_model [--out DIR]   (default {})",
                    out.display()
                );
                std::process::exit(0);
            }
            other => bail!("unknown argument {other:?} (try --help)"),
        }
    }
    Ok(out)
}

fn main() -> Result<()> {
    rlzero::malloc::keep_freed_memory();
    let out = parse_out()?;
    std::fs::create_dir_all(&out).with_context(|| format!("create {}", out.display()))?;
    let vocab = task::vocab();

    // 1. The small files: tokenizer and configs.
    let tok = build_tokenizer()?;
    let tok_json = tok
        .to_string(true)
        .map_err(|e| anyhow!("serialising the tokenizer: {e}"))?;
    let cfg_json = config_json(vocab.len());
    let files = [
        ("tokenizer.json", tok_json),
        ("config.json", serde_json::to_string_pretty(&cfg_json)?),
        (
            "tokenizer_config.json",
            serde_json::to_string_pretty(&json!({
                "tokenizer_class": "PreTrainedTokenizerFast",
                "bos_token": task::BOS, "eos_token": EOS, "unk_token": task::UNK,
                "model_max_length": MAX_POSITIONS, "clean_up_tokenization_spaces": false,
            }))?,
        ),
        (
            "generation_config.json",
            serde_json::to_string_pretty(&json!({"bos_token_id": 0, "eos_token_id": 1}))?,
        ),
    ];
    for (name, text) in &files {
        fsio::write_atomic(&out.join(name), format!("{text}\n").as_bytes())?;
    }
    let text_tok = TextTokenizer::from_hf_files(
        &out.join("tokenizer.json"),
        Some(&out.join("tokenizer_config.json")),
        None,
        vec![1],
    )?;
    // The loader's tokenizer must encode prompts exactly as this file's lookup does.
    let (want, _) = encode("jihab", "")?;
    let got = text_tok.encode(&task::prompt_text("jihab"), true)?;
    if got != want || text_tok.decode(&[9, 10, 1], true)? != "gh" {
        bail!("tokenizer round trip failed: {got:?} vs {want:?}");
    }

    // 2. A randomly initialised decoder.
    let cfg = DecoderConfig::from_json(&cfg_json, Path::new("config.json"))?;
    let mut rng = Rng::new(SEED);
    let weights = Weights::new(
        "random init",
        init_weights(&cfg, &mut rng)?,
        DType::F32,
        &Device::Cpu,
        WeightMode::Trainable,
    )?;
    let model = Decoder::new(&cfg, &weights, WeightMode::Trainable)?;
    let n_params: usize = model
        .named_parameters()
        .iter()
        .map(|(_, t)| t.elem_count())
        .sum();
    println!(
        "pretraining a {LAYERS}-layer, hidden-{HIDDEN} Llama ({n_params} parameters) on noisy reversal \
         targets: {:.0} % reversed, {:.0} % copied, {:.0} % other, {STEPS} steps × {BATCH}",
        100.0 * P_REVERSE,
        100.0 * P_COPY,
        100.0 * (1.0 - P_REVERSE - P_COPY)
    );

    // 3. Supervised pretraining on the answer tokens.
    let vars = model.vars()?;
    let mut opt = AdamW::new(
        vars.clone(),
        AdamWParams {
            lr: LR,
            weight_decay: 0.01,
            ..AdamWParams::default()
        },
    )?;
    let schedule = LrSchedule::Cosine {
        warmup_steps: WARMUP,
    };
    let mut probe_rng = Rng::new(SEED ^ 0xffff);
    let held_out: Vec<String> = (0..128).map(|_| probe_rng.task_string(true)).collect();
    let start = Instant::now();
    let mut loss_avg = 0.0;
    for step in 0..STEPS {
        let pairs: Vec<(Vec<u32>, Vec<u32>)> = (0..BATCH)
            .map(|_| {
                let s = rng.task_string(false);
                let t = noisy_target(&mut rng, &s);
                encode(&s, &t)
            })
            .collect::<Result<_>>()?;
        let p: Vec<&[u32]> = pairs.iter().map(|(p, _)| p.as_slice()).collect();
        let c: Vec<&[u32]> = pairs.iter().map(|(_, c)| c.as_slice()).collect();
        let batch = PackedBatch::new(&p, &c, 1, &Device::Cpu)?;
        let loss = completion_nll(&model, &batch)?;
        let mut grads = loss.backward()?;
        clip_grad_norm(&mut grads, &vars, 1.0)?;
        opt.step(&grads, schedule.lr_at(LR, step, STEPS))?;
        loss_avg += loss.to_scalar::<f32>()? as f64;
        if (step + 1) % 250 == 0 {
            let [rev, copy, grev, gcopy] = probe(&model, &text_tok, &held_out)?;
            println!(
                "step {:5}  loss {:.4}  held-out sampled: reversed {:4.1} % copied {:4.1} %  \
                 greedy: reversed {:4.1} % copied {:4.1} %  ({:.0} s)",
                step + 1,
                loss_avg / 250.0,
                100.0 * rev,
                100.0 * copy,
                100.0 * grev,
                100.0 * gcopy,
                start.elapsed().as_secs_f64()
            );
            loss_avg = 0.0;
        }
    }

    // 4. The weights, under the checkpoint names the loader expects.
    let tensors: HashMap<String, Tensor> = model
        .named_parameters()
        .iter()
        .map(|(n, t)| (n.clone(), t.detach()))
        .collect();
    let st_path = out.join("model.safetensors");
    fsio::replace_with(&st_path, |tmp| {
        Ok(rlzero::candle_core::safetensors::save(&tensors, tmp)?)
    })?;

    // 5. Load it back as a user would and report what GRPO will start from.
    let loaded = load(&ModelSource::Dir(out.clone()), &LoadOptions::default())?;
    let [rev, copy, grev, gcopy] = probe(&loaded.decoder, &loaded.tokenizer, &held_out)?;
    println!(
        "wrote {} ({:.0} s). Held-out: sampled answers reversed {:.1} %, copied {:.1} %; \
         greedy answers reversed {:.1} %, copied {:.1} %",
        out.display(),
        start.elapsed().as_secs_f64(),
        100.0 * rev,
        100.0 * copy,
        100.0 * grev,
        100.0 * gcopy
    );
    Ok(())
}
