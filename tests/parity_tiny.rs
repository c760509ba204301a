//! Logits of the tiny random checkpoints against transformers (scripts/make_tiny_fixtures.py):
//! every position, batch 1 and a left-padded batch 2, max abs error ≤ 1e-4 in f32.

mod common;

use candle_core::{DType, Tensor};
use common::{max_abs_diff, reference, tiny_decoder, TINY};
use rlzero::model::{LogitsToKeep, WeightMode};

const TOL: f32 = 1e-4;

fn ones_mask(t: &Tensor) -> Tensor {
    t.ones_like().unwrap()
}

#[test]
fn batch_one_matches_transformers_at_every_position() {
    for name in TINY {
        let r = reference(name);
        let m = tiny_decoder(name, DType::F32, WeightMode::Frozen);
        let ids = r["input_ids"].get(0).unwrap().unsqueeze(0).unwrap(); // (1, 12)
        let got = m
            .forward(&ids, &ones_mask(&ids), LogitsToKeep::All)
            .unwrap();
        let err = max_abs_diff(&got, &r["logits_single_a"]);
        eprintln!("{name}: batch-1 max abs error {err:e}");
        assert!(err <= TOL, "{name}: batch-1 max abs error {err}");

        let ids_b = r["input_ids"]
            .get(1)
            .unwrap()
            .narrow(0, 5, 7)
            .unwrap()
            .unsqueeze(0)
            .unwrap();
        let got_b = m
            .forward(&ids_b, &ones_mask(&ids_b), LogitsToKeep::All)
            .unwrap();
        let err = max_abs_diff(&got_b, &r["logits_single_b"]);
        assert!(err <= TOL, "{name}: batch-1 (short) max abs error {err}");
    }
}

#[test]
fn left_padded_batch_matches_transformers_on_real_tokens() {
    for name in TINY {
        let r = reference(name);
        let m = tiny_decoder(name, DType::F32, WeightMode::Frozen);
        let got = m
            .forward(&r["input_ids"], &r["attention_mask"], LogitsToKeep::All)
            .unwrap(); // (2, 12, V)
        let want = &r["logits_batch"];
        let row0 = max_abs_diff(&got.get(0).unwrap(), &want.get(0).unwrap());
        // Row 1 is left-padded by 5: only its 7 real positions are defined.
        let row1 = max_abs_diff(
            &got.get(1).unwrap().narrow(0, 5, 7).unwrap(),
            &want.get(1).unwrap().narrow(0, 5, 7).unwrap(),
        );
        eprintln!("{name}: padded rows {row0:e} {row1:e}");
        assert!(
            row0 <= TOL && row1 <= TOL,
            "{name}: padded batch errors {row0} {row1}"
        );
        // Padding must not leak NaN/inf anywhere (it would poison gradients).
        let finite = got
            .abs()
            .unwrap()
            .max_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap();
        assert!(finite.is_finite(), "{name}: non-finite logits at padding");
    }
}

#[test]
fn trailing_window_equals_the_tail_of_all_positions() {
    let r = reference("tiny-qwen2");
    let m = tiny_decoder("tiny-qwen2", DType::F32, WeightMode::Frozen);
    let all = m
        .forward(&r["input_ids"], &r["attention_mask"], LogitsToKeep::All)
        .unwrap();
    let last = m
        .forward(&r["input_ids"], &r["attention_mask"], LogitsToKeep::Last(4))
        .unwrap();
    assert_eq!(last.dims(), &[2, 4, 128]);
    assert_eq!(max_abs_diff(&last, &all.narrow(1, 8, 4).unwrap()), 0.0);
    assert!(m
        .forward(
            &r["input_ids"],
            &r["attention_mask"],
            LogitsToKeep::Last(13)
        )
        .is_err());
    assert!(m
        .forward(&r["input_ids"], &r["attention_mask"], LogitsToKeep::Last(0))
        .is_err());
}

#[test]
fn bad_forward_inputs_are_typed_errors() {
    let r = reference("tiny-llama");
    let m = tiny_decoder("tiny-llama", DType::F32, WeightMode::Frozen);
    let ids = &r["input_ids"];
    // mask of the wrong shape
    let e = m.forward(
        ids,
        &r["attention_mask"].narrow(1, 0, 3).unwrap(),
        LogitsToKeep::All,
    );
    assert!(e.unwrap_err().to_string().contains("attention_mask"));
    // a row with no real token
    let zero = r["attention_mask"].zeros_like().unwrap();
    assert!(m
        .forward(ids, &zero, LogitsToKeep::All)
        .unwrap_err()
        .to_string()
        .contains("no real token"));
    // a mask value other than 0/1
    let twos = (r["attention_mask"].ones_like().unwrap() * 2.0).unwrap();
    assert!(m.forward(ids, &twos, LogitsToKeep::All).is_err());
    // a token id outside the vocabulary
    let big = (ids.ones_like().unwrap() * 500.0).unwrap();
    let e = m
        .forward(&big, &r["attention_mask"], LogitsToKeep::All)
        .unwrap_err()
        .to_string();
    assert!(e.contains("outside the vocabulary"), "{e}");
}
