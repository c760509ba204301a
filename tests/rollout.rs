//! Rollouts on the tiny checkpoints: log-probs equal the trainable forward's, completions are
//! reproducible across batch composition and thread count, finish reasons, and bad requests.

mod common;

use rlzero::model::{LoadedModel, WeightMode};
use rlzero::rollout::{
    rollout, rollout_on, FinishReason, RolloutBackend, RolloutError, SamplingParams,
};

fn tiny(name: &str) -> LoadedModel {
    common::tiny_model(name)
}

fn prompts() -> Vec<Vec<u32>> {
    vec![
        vec![5, 17, 99, 3, 64, 127, 8, 42],
        vec![9, 100, 23],
        vec![77, 11, 30, 31, 32, 33],
    ]
}

#[test]
fn rollout_logprobs_equal_the_trainable_forward() {
    for name in common::TINY {
        let m = tiny(name);
        for temperature in [1.0, 0.7] {
            let p = SamplingParams {
                temperature,
                max_new_tokens: 20,
                seed: 3,
                ..Default::default()
            };
            let out = rollout(&m.decoder, &m.tokenizer, &prompts(), 3, &p, 0).unwrap();
            assert_eq!(out.len(), 9);
            let mut worst = 0f32;
            for c in &out {
                let want = common::trainer_logprobs(
                    &m.decoder,
                    &prompts()[c.prompt_index],
                    &c.token_ids,
                    temperature,
                );
                assert_eq!(c.logprobs.len(), want.len());
                for (a, b) in c.logprobs.iter().zip(&want) {
                    worst = worst.max((a - b).abs());
                }
            }
            eprintln!("{name} T={temperature}: max |rollout − trainer| log-prob {worst:e}");
            assert!(worst <= 1e-4, "{name}: {worst}");
        }
    }
}

#[test]
fn completions_do_not_depend_on_batch_or_threads() {
    let m = tiny("tiny-qwen2");
    let p = SamplingParams {
        max_new_tokens: 12,
        seed: 42,
        ..Default::default()
    };
    let full = rollout(&m.decoder, &m.tokenizer, &prompts(), 4, &p, 7).unwrap();
    // Fewer samples per prompt: the common samples are identical.
    let two = rollout(&m.decoder, &m.tokenizer, &prompts(), 2, &p, 7).unwrap();
    for c in &two {
        assert_eq!(
            Some(c),
            full.iter()
                .find(|f| f.prompt_index == c.prompt_index && f.sample_index == c.sample_index)
        );
    }
    // Fewer prompts (a prefix keeps the prompt indices): identical.
    let one = rollout(&m.decoder, &m.tokenizer, &prompts()[..1], 4, &p, 7).unwrap();
    assert_eq!(one.as_slice(), &full[..4]);
    // One thread instead of the default pool: identical.
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(1)
        .build()
        .unwrap();
    let single = pool.install(|| rollout(&m.decoder, &m.tokenizer, &prompts(), 4, &p, 7).unwrap());
    assert_eq!(single, full);
    // Another step or seed: different samples.
    let other = rollout(&m.decoder, &m.tokenizer, &prompts(), 4, &p, 8).unwrap();
    assert_ne!(other, full);
    // Samples within a group differ from each other.
    assert!(full[..4]
        .windows(2)
        .any(|w| w[0].token_ids != w[1].token_ids));
}

#[test]
fn finish_reasons() {
    let m = tiny("tiny-llama");
    let greedy = SamplingParams {
        greedy: true,
        max_new_tokens: 6,
        ..Default::default()
    };
    let out = rollout(&m.decoder, &m.tokenizer, &prompts()[..1], 1, &greedy, 0).unwrap();
    let c = &out[0];
    assert_eq!(
        (c.finish_reason, c.token_ids.len()),
        (FinishReason::Length, 6)
    );
    let first = c.token_ids[0];

    // The greedy first token declared EOS: finishes at once, EOS kept as the last token.
    let p = SamplingParams {
        eos_token_ids: vec![first],
        ..greedy.clone()
    };
    let c = &rollout(&m.decoder, &m.tokenizer, &prompts()[..1], 1, &p, 0).unwrap()[0];
    assert_eq!(
        (c.finish_reason, c.token_ids.clone()),
        (FinishReason::Eos, vec![first])
    );

    // ... unless min_new_tokens bans EOS for a while.
    let p = SamplingParams {
        eos_token_ids: vec![first],
        min_new_tokens: 3,
        ..greedy.clone()
    };
    let c = &rollout(&m.decoder, &m.tokenizer, &prompts()[..1], 1, &p, 0).unwrap()[0];
    assert!(c.token_ids.len() >= 3 && c.token_ids[..3].iter().all(|&t| t != first));

    // A stop string: the text of the second greedy token.
    let second = m.tokenizer.decode(&out[0].token_ids[1..2], true).unwrap();
    let p = SamplingParams {
        stop_strings: vec![second.clone()],
        ..greedy.clone()
    };
    let c = &rollout(&m.decoder, &m.tokenizer, &prompts()[..1], 1, &p, 0).unwrap()[0];
    assert_eq!(c.finish_reason, FinishReason::Stop);
    assert!(c.text.ends_with(&second) && c.token_ids.len() == 2, "{c:?}");
}

#[test]
fn bad_requests_are_typed_errors() {
    let m = tiny("tiny-qwen3");
    let ok = SamplingParams {
        max_new_tokens: 4,
        ..Default::default()
    };
    let run = |prompts: &[Vec<u32>], g: usize, p: &SamplingParams| {
        rollout(&m.decoder, &m.tokenizer, prompts, g, p, 0)
            .err()
            .unwrap()
    };
    assert!(matches!(run(&[], 1, &ok), RolloutError::NoPrompts));
    assert!(matches!(
        run(&[vec![1], vec![]], 1, &ok),
        RolloutError::EmptyPrompt { index: 1 }
    ));
    assert!(matches!(
        run(&[vec![5; 256]], 1, &ok),
        RolloutError::PromptTooLong {
            index: 0,
            len: 256,
            max: 256
        }
    ));
    assert!(matches!(
        run(&[vec![500]], 1, &ok),
        RolloutError::TokenOutOfVocab { id: 500, .. }
    ));
    assert!(matches!(
        run(&[vec![1]], 0, &ok),
        RolloutError::ZeroGroupSize
    ));
    for (bad, name) in [
        (
            SamplingParams {
                max_new_tokens: 0,
                ..ok.clone()
            },
            "max_new_tokens",
        ),
        (
            SamplingParams {
                temperature: 0.0,
                ..ok.clone()
            },
            "temperature",
        ),
        (
            SamplingParams {
                temperature: f64::NAN,
                ..ok.clone()
            },
            "temperature",
        ),
        (
            // 1/T overflows f32, where the sampler and trainer scale the logits.
            SamplingParams {
                temperature: 1e-40,
                ..ok.clone()
            },
            "temperature",
        ),
        (
            SamplingParams {
                top_p: 0.0,
                ..ok.clone()
            },
            "top_p",
        ),
        (
            SamplingParams {
                top_p: 1.5,
                ..ok.clone()
            },
            "top_p",
        ),
        (
            SamplingParams {
                top_k: Some(0),
                ..ok.clone()
            },
            "top_k",
        ),
        (
            SamplingParams {
                min_p: 1.0,
                ..ok.clone()
            },
            "min_p",
        ),
        (
            SamplingParams {
                repetition_penalty: -1.0,
                ..ok.clone()
            },
            "repetition_penalty",
        ),
        (
            SamplingParams {
                min_new_tokens: 5,
                ..ok.clone()
            },
            "min_new_tokens",
        ),
        (
            SamplingParams {
                stop_strings: vec![String::new()],
                ..ok.clone()
            },
            "stop_strings",
        ),
    ] {
        let e = run(&[vec![1]], 1, &bad);
        assert!(
            matches!(e, RolloutError::InvalidParam { name: n, .. } if n == name),
            "{name}: {e}"
        );
    }
}

#[test]
fn the_fast_path_refuses_what_it_cannot_run() {
    // f64 weights: the fast path reads f32 slices, so it must say so rather than reinterpret.
    let m = tiny("tiny-llama");
    let f64_decoder = m
        .decoder
        .to_dtype(candle_core::DType::F64, WeightMode::Frozen)
        .unwrap();
    let p = SamplingParams {
        max_new_tokens: 2,
        ..SamplingParams::default()
    };
    let on = |b| rollout_on(b, &f64_decoder, &m.tokenizer, &prompts(), 1, &p, 0);
    let e = on(RolloutBackend::FastCpu).unwrap_err();
    assert!(
        matches!(&e, RolloutError::UnsupportedModel(s) if s.contains("F64")),
        "{e}"
    );
    assert!(e.to_string().contains("CPU f32"), "{e}");
    // `Auto` (what `rollout` uses) takes the tensor path for it instead.
    let (out, _) = on(RolloutBackend::Auto).unwrap();
    assert_eq!(out.len(), prompts().len());
}

#[test]
fn tied_embeddings_roll_out_from_the_shared_weight() {
    // A tied lm_head is the embedding's storage; the rollout locks it once (a second read lock
    // from the same thread can deadlock against a waiting writer) and still samples from it.
    let tied = common::TINY
        .iter()
        .map(|n| tiny(n))
        .find(|m| m.decoder.has_tied_embeddings())
        .expect("a tiny fixture with tied embeddings");
    let p = SamplingParams {
        max_new_tokens: 4,
        ..SamplingParams::default()
    };
    let out = rollout(&tied.decoder, &tied.tokenizer, &prompts(), 2, &p, 0).unwrap();
    assert_eq!(out.len(), prompts().len() * 2);
    for c in &out {
        let want =
            common::trainer_logprobs(&tied.decoder, &prompts()[c.prompt_index], &c.token_ids, 1.0);
        assert_eq!(c.logprobs.len(), want.len());
        for (a, b) in c.logprobs.iter().zip(&want) {
            assert!((a - b).abs() <= 1e-4, "{a} vs {b}");
        }
    }
}

#[test]
fn finished_sequences_stop_costing_compute() {
    let m = tiny("tiny-qwen3");
    // A common token as EOS so completions end at different lengths.
    let p = SamplingParams {
        max_new_tokens: 30,
        eos_token_ids: (0..40).collect(),
        seed: 5,
        ..Default::default()
    };
    let (out, stats) =
        rlzero::rollout::rollout_with_stats(&m.decoder, &m.tokenizer, &prompts(), 4, &p, 0)
            .unwrap();
    let lens: Vec<usize> = out.iter().map(|c| c.token_ids.len()).collect();
    assert!(
        lens.iter().any(|&l| l < 30) && lens.iter().min() != lens.iter().max(),
        "{lens:?}"
    );
    assert_eq!(stats.decode_rows, lens.iter().map(|l| l - 1).sum::<usize>());
    assert!(stats.decode_rows < stats.decode_steps * out.len());
    for c in &out {
        let eos = p.eos_token_ids.contains(c.token_ids.last().unwrap());
        assert_eq!(c.finish_reason == FinishReason::Eos, eos);
        assert_eq!(c.logprobs.len(), c.token_ids.len());
    }
}
