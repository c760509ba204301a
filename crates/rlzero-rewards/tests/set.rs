//! RewardSet behaviour: weights, abstention, failure isolation, validation, determinism.

use rlzero_rewards::{
    reward_fn, Countdown, FormatReward, Named, NumericAnswer, OverlongPenalty, Reference,
    RewardError, RewardInput, RewardSet, RewardTable,
};

fn bits(t: &RewardTable) -> Vec<Vec<u64>> {
    t.values
        .iter()
        .map(|row| row.iter().map(|v| v.to_bits()).collect())
        .collect()
}

#[test]
fn weights_and_abstention() {
    let set = RewardSet::new()
        .with(NumericAnswer::default(), 2.0)
        .with(Countdown::default(), 1.0);
    let gold = Reference::Answer("#### 7".into());
    let puzzle = Reference::Countdown {
        numbers: vec![3, 4],
        target: 7,
    };
    let none = Reference::None;
    let inputs = [
        RewardInput::new("", "<answer>7</answer>", &gold),
        RewardInput::new("", "<answer>8</answer>", &gold),
        RewardInput::new("", "<answer>3 + 4</answer>", &puzzle),
        RewardInput::new("", "<answer>7</answer>", &none),
    ];
    let t = set.score(&inputs);
    let totals = t.totals();
    assert_eq!(&totals[..3], &[2.0, 0.0, 1.0]);
    assert!(totals[3].is_nan(), "all abstained → NaN total");
    assert_eq!(t.unscorable_mask(), vec![false, false, false, true]);
    assert!(t.values[0][1].is_nan() && t.values[2][0].is_nan());
    assert_eq!(t.abstentions(0), Some(2));
    assert_eq!(t.names, vec!["numeric_answer", "countdown"]);
    assert_eq!(t.weights, vec![2.0, 1.0]);
    assert_eq!(t.panics, vec![0, 0]);
}

#[test]
fn panics_are_caught_counted_and_scored_zero() {
    let set = RewardSet::new()
        .with(
            reward_fn("flaky", |x: &RewardInput<'_>| {
                if x.completion.contains("boom") {
                    panic!("verifier bug");
                }
                Some(1.0)
            }),
            1.0,
        )
        .with(reward_fn("half", |_: &RewardInput<'_>| Some(0.5)), 1.0);
    let r = Reference::None;
    let inputs = [
        RewardInput::new("", "fine", &r),
        RewardInput::new("", "boom", &r),
        RewardInput::new("", "boom again", &r),
    ];
    let t = set.score(&inputs);
    assert_eq!(t.panics, vec![2, 0]);
    assert_eq!(
        t.values,
        vec![vec![1.0, 0.5], vec![0.0, 0.5], vec![0.0, 0.5]]
    );
    assert_eq!(t.totals(), vec![1.5, 0.5, 0.5]);
}

#[test]
fn non_finite_scores_are_failures() {
    let set = RewardSet::new().with(
        reward_fn("bad", |x: &RewardInput<'_>| match x.completion {
            "nan" => Some(f64::NAN),
            "inf" => Some(f64::NEG_INFINITY),
            "skip" => None,
            _ => Some(2.0),
        }),
        1.0,
    );
    let r = Reference::None;
    let inputs = ["nan", "inf", "skip", "ok"].map(|c| RewardInput::new("", c, &r));
    let t = set.score(&inputs);
    assert_eq!(t.non_finite, vec![2]);
    assert_eq!(t.panics, vec![0]);
    assert_eq!(t.values[0][0], 0.0);
    assert_eq!(t.values[1][0], 0.0);
    assert!(t.values[2][0].is_nan());
    assert_eq!(t.values[3][0], 2.0);
}

#[test]
fn validation_names_the_culprit() {
    assert_eq!(RewardSet::new().validate(), Err(RewardError::EmptySet));
    let dup = RewardSet::new()
        .with(FormatReward::default(), 1.0)
        .with(FormatReward::default(), 1.0);
    assert_eq!(
        dup.validate(),
        Err(RewardError::DuplicateName {
            name: "format".into()
        })
    );
    let renamed = RewardSet::new()
        .with(FormatReward::default(), 1.0)
        .with(Named::new("format_strict", FormatReward::default()), 1.0);
    assert_eq!(renamed.validate(), Ok(()));
    assert_eq!(renamed.names(), vec!["format", "format_strict"]);
    let nan = RewardSet::new().with(NumericAnswer::default(), f64::NAN);
    assert!(matches!(
        nan.validate(),
        Err(RewardError::NonFiniteWeight { name, .. }) if name == "numeric_answer"
    ));
    let inf = RewardSet::new().with(NumericAnswer::default(), f64::INFINITY);
    assert!(inf.validate().is_err());
    let unnamed = RewardSet::new()
        .with(FormatReward::default(), 1.0)
        .with(reward_fn("", |_: &RewardInput<'_>| None), 1.0);
    assert_eq!(unnamed.validate(), Err(RewardError::EmptyName { index: 1 }));
    let negative = RewardSet::new().with(OverlongPenalty::new(10, 2).unwrap(), -0.5);
    assert_eq!(negative.validate(), Ok(()));
    assert_eq!(negative.weights(), vec![-0.5]);
}

#[test]
fn empty_batch_and_empty_set() {
    let set = RewardSet::new().with(FormatReward::default(), 1.0);
    let t = set.score(&[]);
    assert_eq!((t.n_rows(), t.n_rewards()), (0, 1));
    assert!(t.totals().is_empty());
    assert!(t.mean(0).is_nan());
    let r = Reference::None;
    let t = RewardSet::new().score(&[RewardInput::new("", "x", &r)]);
    assert_eq!(t.n_rewards(), 0);
    assert!(t.totals()[0].is_nan());
}

#[test]
fn identical_results_for_any_thread_count() -> anyhow::Result<()> {
    let puzzle = Reference::Countdown {
        numbers: vec![2, 3, 7],
        target: 13,
    };
    let gold = Reference::Answer("The total is 13.\n#### 13".into());
    let set = RewardSet::new()
        .with(FormatReward::default(), 0.5)
        .with(NumericAnswer::default(), 1.0)
        .with(Countdown::default(), 1.0)
        .with(OverlongPenalty::new(64, 16)?, 1.0)
        .with(
            reward_fn("flaky", |x: &RewardInput<'_>| {
                if x.sample_index % 7 == 3 {
                    panic!("deterministic failure");
                }
                Some(x.prompt_index as f64 * 0.01)
            }),
            0.25,
        );
    let completions: Vec<String> = (0..200)
        .map(|i| match i % 4 {
            0 => format!("<think>t{i}</think><answer>{}</answer>", 13 + i % 3),
            1 => format!("<answer>2 * 3 + {}</answer>", 7 + (i / 4) % 2),
            2 => format!("no tags {i}"),
            _ => "#### 13".to_string(),
        })
        .collect();
    let inputs: Vec<RewardInput<'_>> = completions
        .iter()
        .enumerate()
        .map(|(i, c)| RewardInput {
            prompt_index: i / 8,
            sample_index: i % 8,
            completion_tokens: i % 80,
            max_completion_tokens: 64,
            ..RewardInput::new("", c, if i % 2 == 0 { &gold } else { &puzzle })
        })
        .collect();
    let run = |threads: usize| -> anyhow::Result<RewardTable> {
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .build()?;
        Ok(pool.install(|| set.score(&inputs)))
    };
    let one = run(1)?;
    let four = run(4)?;
    let seven = run(7)?;
    assert_eq!(bits(&one), bits(&four));
    assert_eq!(bits(&one), bits(&seven));
    assert_eq!(one.panics, four.panics);
    assert_eq!(one.panics[4], (0..200).filter(|i| i % 8 % 7 == 3).count());
    let tot = |t: &RewardTable| t.totals().iter().map(|v| v.to_bits()).collect::<Vec<_>>();
    assert_eq!(tot(&one), tot(&seven));
    // Sanity: the table actually holds a mix of outcomes, so the comparison is meaningful.
    assert!(one.values.iter().any(|r| r[1] == 1.0) && one.values.iter().any(|r| r[2] == 1.0));
    assert!(one.values.iter().any(|r| r[3] < 0.0));
    Ok(())
}
