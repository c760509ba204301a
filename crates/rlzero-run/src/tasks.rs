//! Tasks with verifiable answers: procedural arithmetic and Countdown (seeded, with difficulty
//! settings), GSM8K and any JSONL of question/answer pairs. Each yields disjoint train and
//! held-out questions with their [`Reference`], ready to be put in a prompt.

use std::io::BufRead;
use std::path::{Path, PathBuf};

use rlzero_rewards::Reference;
use serde_json::Value;

use crate::error::{Result, RunError};

/// One question with the reference its verifier checks against.
#[derive(Debug, Clone, PartialEq)]
pub struct Example {
    /// The question as the user asks it.
    pub question: String,
    /// What the reward compares the completion with.
    pub reference: Reference,
}

/// A task, as the examples' `--task` names it.
#[derive(Debug, Clone, PartialEq)]
pub enum Task {
    /// `a + b` with `digits`-digit operands (1 = single digits).
    Addition {
        /// Digits per operand, 1–9.
        digits: u32,
    },
    /// TinyZero's Countdown: reach a target from `numbers` numbers in 1–99 with `+ - * /`,
    /// each number used exactly once (the `Countdown` verifier's default).
    Countdown {
        /// How many numbers are given, 2–6.
        numbers: usize,
    },
    /// GSM8K from a JSONL file with `question` and `answer` (`… #### 72`), such as
    /// `../shared/data/gsm8k/train.jsonl`.
    Gsm8k {
        /// The JSONL file.
        path: PathBuf,
    },
    /// Any JSONL with a prompt and an answer field.
    Jsonl {
        /// The JSONL file.
        path: PathBuf,
        /// The field holding the question. Default `prompt`.
        prompt_key: String,
        /// The field holding the gold answer. Default `answer`.
        answer_key: String,
    },
}

/// SplitMix64: a tiny, well-mixed, seedable generator (no dependency needed for task data).
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    /// A generator seeded with `seed`.
    pub fn new(seed: u64) -> Self {
        Self(seed)
    }
    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    /// Uniform in `lo..=hi`.
    pub fn range(&mut self, lo: i64, hi: i64) -> i64 {
        lo + (self.next_u64() % (hi - lo + 1) as u64) as i64
    }
}

/// Whether a question belongs to the held-out side: a hash of its text, so the split does not
/// depend on how many examples are drawn or in what order.
fn held_out(question: &str, eval_share: f64) -> bool {
    let h = question.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ b as u64).wrapping_mul(0x100_0000_01b3)
    });
    (Rng::new(h).next_u64() as f64 / u64::MAX as f64) < eval_share
}

impl Task {
    /// Up to `n_train` training and `n_eval` held-out examples (disjoint), drawn with `seed`.
    /// File tasks keep the file's order and split it by a hash of each question.
    pub fn examples(
        &self,
        seed: u64,
        n_train: usize,
        n_eval: usize,
    ) -> Result<(Vec<Example>, Vec<Example>)> {
        let mut train = Vec::new();
        let mut eval = Vec::new();
        let share = 0.2;
        let push = |e: Example, train: &mut Vec<Example>, eval: &mut Vec<Example>| {
            if held_out(&e.question, share) {
                if eval.len() < n_eval && !eval.contains(&e) {
                    eval.push(e);
                }
            } else if train.len() < n_train {
                train.push(e);
            }
        };
        match self {
            Task::Addition { digits } => {
                if !(1..=9).contains(digits) {
                    return Err(invalid("digits", format!("{digits} is not in 1–9")));
                }
                let max = 10i64.pow(*digits) - 1;
                let mut rng = Rng::new(seed);
                let mut tries = 0;
                while (train.len() < n_train || eval.len() < n_eval)
                    && tries < 50 * (n_train + n_eval) + 1000
                {
                    tries += 1;
                    let (a, b) = (rng.range(0, max), rng.range(0, max));
                    push(
                        Example {
                            question: format!("What is {a} + {b}?"),
                            reference: Reference::Answer((a + b).to_string()),
                        },
                        &mut train,
                        &mut eval,
                    );
                }
            }
            Task::Countdown { numbers } => {
                if !(2..=6).contains(numbers) {
                    return Err(invalid("numbers", format!("{numbers} is not in 2–6")));
                }
                let mut rng = Rng::new(seed);
                let mut tries = 0;
                while (train.len() < n_train || eval.len() < n_eval)
                    && tries < 50 * (n_train + n_eval) + 1000
                {
                    tries += 1;
                    if let Some(e) = countdown(&mut rng, *numbers) {
                        push(e, &mut train, &mut eval);
                    }
                }
            }
            Task::Gsm8k { path } => {
                for row in read_rows(path)? {
                    let (q, a) = (field(&row, "question", path)?, field(&row, "answer", path)?);
                    push(
                        Example {
                            question: q,
                            reference: Reference::Answer(a),
                        },
                        &mut train,
                        &mut eval,
                    );
                }
            }
            Task::Jsonl {
                path,
                prompt_key,
                answer_key,
            } => {
                for row in read_rows(path)? {
                    push(
                        Example {
                            question: field(&row, prompt_key, path)?,
                            reference: Reference::Answer(field(&row, answer_key, path)?),
                        },
                        &mut train,
                        &mut eval,
                    );
                }
            }
        }
        Ok((train, eval))
    }

    /// The instruction appended to each question, naming the answer format its verifier reads.
    pub fn instruction(&self) -> &'static str {
        match self {
            Task::Countdown { .. } => {
                "Use every given number exactly once, with + - * / and parentheses. Put the final \
                 equation (without `=` and the target) in <answer> </answer> tags."
            }
            _ => "Give the final answer as a number in <answer> </answer> tags.",
        }
    }
}

fn invalid(field: &str, reason: String) -> RunError {
    RunError::Json {
        path: PathBuf::from(format!("task.{field}")),
        reason,
    }
}

/// A Countdown puzzle whose target is reachable: a random expression over all the numbers
/// (left to right, `+ - *`, and `/` only when exact), target in 1–999.
fn countdown(rng: &mut Rng, n: usize) -> Option<Example> {
    let nums: Vec<i64> = (0..n).map(|_| rng.range(1, 99)).collect();
    let mut value = nums[0];
    for &x in &nums[1..] {
        value = match rng.range(0, 3) {
            0 => value + x,
            1 => value - x,
            2 => value * x,
            _ if value % x == 0 => value / x,
            _ => value + x,
        };
    }
    if !(1..=999).contains(&value) {
        return None;
    }
    let list = nums
        .iter()
        .map(i64::to_string)
        .collect::<Vec<_>>()
        .join(", ");
    Some(Example {
        question: format!("Using the numbers [{list}], create an equation that equals {value}."),
        reference: Reference::Countdown {
            numbers: nums,
            target: value,
        },
    })
}

fn read_rows(path: &Path) -> Result<Vec<Value>> {
    let f = std::fs::File::open(path).map_err(|e| RunError::Io {
        path: path.to_path_buf(),
        source: e,
    })?;
    let mut rows = Vec::new();
    for (i, line) in std::io::BufReader::new(f).lines().enumerate() {
        let line = line.map_err(|e| RunError::Io {
            path: path.to_path_buf(),
            source: e,
        })?;
        if line.trim().is_empty() {
            continue;
        }
        rows.push(serde_json::from_str(&line).map_err(|e| RunError::Json {
            path: path.to_path_buf(),
            reason: format!("line {}: {e}", i + 1),
        })?);
    }
    Ok(rows)
}

fn field(row: &Value, key: &str, path: &Path) -> Result<String> {
    match row.get(key) {
        Some(Value::String(s)) => Ok(s.clone()),
        Some(Value::Number(n)) => Ok(n.to_string()),
        _ => Err(RunError::Json {
            path: path.to_path_buf(),
            reason: format!("a line has no string field `{key}`"),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rlzero_rewards::{Countdown, Reward, RewardInput};

    #[test]
    fn procedural_tasks_are_seeded_and_split_disjointly() {
        let t = Task::Addition { digits: 2 };
        let (tr, ev) = t.examples(3, 200, 50).unwrap();
        assert_eq!((tr.len(), ev.len()), (200, 50));
        assert!(ev.iter().all(|e| !tr.contains(e)));
        assert_eq!(t.examples(3, 200, 50).unwrap().0, tr);
        assert_ne!(t.examples(4, 200, 50).unwrap().0, tr);
        assert!(t.examples(3, 1, 1).is_ok());
        assert!(Task::Addition { digits: 0 }.examples(0, 1, 1).is_err());
    }

    #[test]
    fn countdown_targets_are_reachable() {
        let (tr, _) = Task::Countdown { numbers: 3 }.examples(1, 50, 0).unwrap();
        assert_eq!(tr.len(), 50);
        // The generating expression itself (left to right) always verifies; spot-check that
        // the verifier accepts a known solution of one puzzle.
        let r = Reference::Countdown {
            numbers: vec![3, 5, 7],
            target: 22,
        };
        let x = RewardInput::new("", "<answer>3 * 5 + 7</answer>", &r);
        assert_eq!(Countdown::default().score(&x), Some(1.0));
        for e in &tr {
            let Reference::Countdown { numbers, target } = &e.reference else {
                panic!()
            };
            assert_eq!(numbers.len(), 3);
            assert!((1..=999).contains(target));
        }
    }

    #[test]
    fn file_tasks_name_the_file_and_line() {
        let dir = std::env::temp_dir().join(format!("rlzero-tasks-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let p = dir.join("qa.jsonl");
        std::fs::write(&p, "{\"prompt\": \"2+2?\", \"answer\": 4}\n{oops\n").unwrap();
        let t = Task::Jsonl {
            path: p.clone(),
            prompt_key: "prompt".into(),
            answer_key: "answer".into(),
        };
        let e = t.examples(0, 10, 10).unwrap_err().to_string();
        assert!(e.contains("qa.jsonl") && e.contains("line 2"), "{e}");
        std::fs::write(&p, "{\"question\": \"2+2?\"}\n").unwrap();
        let e = Task::Gsm8k { path: p }
            .examples(0, 10, 10)
            .unwrap_err()
            .to_string();
        assert!(e.contains("answer"), "{e}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
