//! The real SmolLM2-135M-Instruct Q4_1 GGUF against transformers loading the same file
//! (scripts/make_smollm2_fixture.py). Needs `models/` from `scripts/fetch-models.sh`, hence
//! `#[ignore]`; CI runs them after the fetch with `cargo test --release -- --ignored`.

mod common;

use std::sync::OnceLock;

use candle_core::{DType, Device, Tensor};
use common::{fixtures, max_abs_diff, models_dir};
use rlzero::model::{
    load, LoadOptions, LoadedModel, LogitsToKeep, Message, ModelSource, WeightMode,
};

fn model() -> &'static LoadedModel {
    static M: OnceLock<LoadedModel> = OnceLock::new();
    M.get_or_init(|| {
        let path = models_dir().join("SmolLM2-135M-Instruct.Q4_1.gguf");
        assert!(
            path.exists(),
            "{} missing: run scripts/fetch-models.sh",
            path.display()
        );
        let opts = LoadOptions {
            mode: WeightMode::Frozen,
            ..LoadOptions::default()
        };
        load(&ModelSource::Gguf(path), &opts).expect("load SmolLM2 GGUF")
    })
}

#[test]
#[ignore = "needs models/ (scripts/fetch-models.sh)"]
fn logits_match_transformers_on_three_chat_prompts() {
    let m = model();
    let r =
        candle_core::safetensors::load(fixtures().join("smollm2/logits.safetensors"), &Device::Cpu)
            .unwrap();
    let cols = r["columns"].to_dtype(DType::U32).unwrap();
    for i in 0..3 {
        let ids = r[&format!("ids_{i}")].unsqueeze(0).unwrap(); // (1, T)
                                                                // The prompt text renders and tokenizes to the same ids transformers used.
        let text =
            std::fs::read_to_string(fixtures().join(format!("smollm2/prompt_{i}.txt"))).unwrap();
        let ours = m.tokenizer.encode(&text, false).unwrap();
        assert_eq!(
            ours,
            r[&format!("ids_{i}")]
                .to_dtype(DType::U32)
                .unwrap()
                .to_vec1::<u32>()
                .unwrap()
        );

        let logits = m
            .decoder
            .forward(&ids, &ids.ones_like().unwrap(), LogitsToKeep::All)
            .unwrap()
            .squeeze(0)
            .unwrap();
        let at_cols = logits.index_select(&cols, 1).unwrap(); // (T, 512)
        let e_cols = max_abs_diff(&at_cols, &r[&format!("logits_cols_{i}")]);
        let t = logits.dim(0).unwrap();
        let e_last = max_abs_diff(&logits.get(t - 1).unwrap(), &r[&format!("logits_last_{i}")]);
        eprintln!("prompt {i}: {t} tokens, max abs error {e_cols:.2e} (all positions, 512 columns), {e_last:.2e} (last row, full vocab)");
        assert!(
            e_cols <= 1e-3 && e_last <= 1e-3,
            "prompt {i}: {e_cols} / {e_last}"
        );
    }
}

#[test]
#[ignore = "needs models/ (scripts/fetch-models.sh)"]
fn chat_template_renders_like_transformers() {
    let m = model();
    let want = std::fs::read_to_string(fixtures().join("smollm2/prompt_0.txt")).unwrap();
    let got = m
        .tokenizer
        .apply_chat_template(&[Message::user("What is the capital of France?")], true)
        .unwrap();
    assert_eq!(got, want);
    assert_eq!(m.generation.eos_token_ids, vec![2]);
}

#[test]
#[ignore = "needs models/ (scripts/fetch-models.sh)"]
fn gguf_tokenizer_agrees_with_the_reference_on_varied_strings() {
    let m = model();
    let cases: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(fixtures().join("smollm2/tokenizer_cases.json")).unwrap(),
    )
    .unwrap();
    let cases = cases["cases"].as_array().unwrap();
    assert!(cases.len() >= 200);
    let (mut same_smol, mut same_tf) = (0, 0);
    for c in cases {
        let text = c["text"].as_str().unwrap();
        let ids = |k: &str| {
            c[k].as_array()
                .unwrap()
                .iter()
                .map(|x| x.as_u64().unwrap() as u32)
                .collect::<Vec<_>>()
        };
        let ours = m.tokenizer.encode(text, false).unwrap();
        assert_eq!(ours, ids("ids_smollm2"), "{text:?}");
        same_smol += 1;
        same_tf += usize::from(ours == ids("ids_transformers"));
        // Decoding gives the text back.
        assert_eq!(m.tokenizer.decode(&ours, false).unwrap(), text);
    }
    eprintln!(
        "{same_smol}/{} identical to SmolLM2's pre-tokenizer; {same_tf}/{} identical to transformers' GGUF tokenizer",
        cases.len(),
        cases.len()
    );
}

/// Greedy decoding by re-running the full forward (the KV-cache sampler is the rollout module's
/// job; this checks the model, not the sampler).
#[test]
#[ignore = "needs models/ (scripts/fetch-models.sh)"]
fn greedy_answer_mentions_paris() {
    let m = model();
    let prompt = m
        .tokenizer
        .apply_chat_template(&[Message::user("What is the capital of France?")], true)
        .unwrap();
    let mut ids = m.tokenizer.encode(&prompt, false).unwrap();
    let n_prompt = ids.len();
    for _ in 0..16 {
        let t = Tensor::new(ids.as_slice(), &Device::Cpu)
            .unwrap()
            .unsqueeze(0)
            .unwrap();
        let logits = m
            .decoder
            .forward(&t, &t.ones_like().unwrap(), LogitsToKeep::Last(1))
            .unwrap();
        let next = logits
            .flatten_all()
            .unwrap()
            .argmax(0)
            .unwrap()
            .to_scalar::<u32>()
            .unwrap();
        if m.generation.eos_token_ids.contains(&next) {
            break;
        }
        ids.push(next);
    }
    let answer = m.tokenizer.decode(&ids[n_prompt..], true).unwrap();
    eprintln!("greedy: {answer:?}");
    assert!(answer.contains("Paris"), "{answer:?}");
}

#[test]
#[ignore = "needs models/ (scripts/fetch-models.sh)"]
fn rollout_logprobs_equal_the_trainable_forward() {
    use rlzero::rollout::{rollout, SamplingParams};
    let m = model();
    let prompt = m
        .tokenizer
        .apply_chat_template(
            &[Message::user("What is 23+19? Answer with just the number.")],
            true,
        )
        .unwrap();
    let ids = m.tokenizer.encode(&prompt, false).unwrap();
    let p = SamplingParams {
        max_new_tokens: 24,
        eos_token_ids: m.generation.eos_token_ids.clone(),
        seed: 1,
        ..Default::default()
    };
    let out = rollout(
        &m.decoder,
        &m.tokenizer,
        std::slice::from_ref(&ids),
        4,
        &p,
        0,
    )
    .unwrap();
    let mut worst = 0f32;
    for c in &out {
        let want = common::trainer_logprobs(&m.decoder, &ids, &c.token_ids, 1.0);
        assert_eq!(c.logprobs.len(), want.len());
        for (a, b) in c.logprobs.iter().zip(&want) {
            worst = worst.max((a - b).abs());
        }
    }
    eprintln!(
        "SmolLM2: max |rollout − trainer| log-prob {worst:e} over {} tokens",
        out.iter().map(|c| c.token_ids.len()).sum::<usize>()
    );
    assert!(worst <= 1e-4, "{worst}");

    // The trainer's default layout scores the group's prompt once (shared prompts): the same
    // log-probs, all four completions in one batch.
    use rlzero::model::pack::{completion_logprobs, PackedBatch};
    let prompts = vec![ids.as_slice(); out.len()];
    let comps: Vec<&[u32]> = out.iter().map(|c| c.token_ids.as_slice()).collect();
    let batch =
        PackedBatch::with_shared_prompts(&prompts, &comps, 0, &candle_core::Device::Cpu).unwrap();
    let lp = completion_logprobs(&m.decoder, &batch, 1.0, false)
        .unwrap()
        .logprobs
        .to_vec2::<f32>()
        .unwrap();
    let mut shared_worst = 0f32;
    for (c, row) in out.iter().zip(&lp) {
        for (a, b) in c.logprobs.iter().zip(row) {
            shared_worst = shared_worst.max((a - b).abs());
        }
    }
    eprintln!("SmolLM2: max |rollout − shared-prompt trainer| log-prob {shared_worst:e}");
    assert!(shared_worst <= 1e-4, "{shared_worst}");
}
