//! Turning one row of logits into a token, and the log-prob the trainer will see for it.
//!
//! **Which log-prob is reported.** The trainer scores a completion with the full forward as
//! `log softmax(logits / T)` over the whole vocabulary. The sampler reports exactly that
//! quantity for the sampled token, *not* the log-prob under the truncated distribution that
//! top-k / top-p / min-p / repetition penalty / min_new_tokens produce. Those filters only decide
//! which token is drawn. Reporting the trainer's quantity makes the first-iteration importance
//! ratio `π_θ / π_old` exactly 1, as TRL's GRPO computes it (its `old_per_token_logps` come from
//! the training forward with the same temperature); reporting the truncated log-prob would bias
//! every ratio (TRL issues #4159, #6789). The price is that with heavy truncation the samples
//! are off-policy for the untruncated policy; keep the filters off (the defaults) for on-policy
//! GRPO.
//!
//! **Arithmetic.** The weights `exp((x − max) / T)` are f32, from the trainer's vectorised
//! [`exp_f32`] (libm's f64 `exp`, one scalar call per vocabulary entry, was most of a decode
//! step's sampling time); every sum over them is f64, in a fixed order, so the log-normaliser
//! and the draw are as exact as before to well below the trainer's own f32 rounding.

use rlzero_model::fused::{exp_f32, max_f32};

use crate::params::SamplingParams;
use crate::rng::SampleRng;

/// Weights summed per block when the draw looks for the block its uniform falls in.
const DRAW_BLOCK: usize = 64;

/// Samples a token from `logits` (one row, raw model output).
///
/// * `context`: prompt and completion so far (repetition penalty looks at both, as HF does);
/// * `n_generated`: completion length so far (for `min_new_tokens`);
/// * `rng`: the sample's own stream; exactly one uniform is drawn (even when greedy, so a
///   stream's position never depends on the mode).
///
/// Returns the token and its log-prob under `softmax(logits / T)` (see the module docs).
pub fn sample(
    logits: &[f32],
    p: &SamplingParams,
    context: &[u32],
    n_generated: usize,
    rng: &mut SampleRng,
) -> (u32, f32) {
    let u = rng.uniform();
    let inv_t = (1.0 / p.temperature) as f32;
    // One pass gives both the trainer's log-normaliser and, unless the scores are processed,
    // the sampling weights: w_i = exp((x_i − max) / T).
    let max = max_f32(logits);
    let mut w = weights(logits, max, inv_t);
    let lse = sum_f64(&w).ln();
    let logprob = |tok: usize| (((logits[tok] - max) * inv_t) as f64 - lse) as f32;

    // Processed scores: the penalty on raw logits, the EOS ban as −∞ (as transformers' logits
    // processors), then temperature. The weights are taken relative to the processed maximum:
    // f32's exp is 0 below −87.3, so a banned EOS far above the rest must not be the reference.
    let ban = n_generated < p.min_new_tokens && !p.eos_token_ids.is_empty();
    let processed;
    let scores = if p.repetition_penalty != 1.0 || ban {
        let mut s: Vec<f32> = logits.to_vec();
        if p.repetition_penalty != 1.0 {
            let pen = p.repetition_penalty as f32;
            let mut seen = vec![false; s.len()];
            for &c in context {
                let c = c as usize;
                if c < s.len() && !seen[c] {
                    seen[c] = true;
                    s[c] = if s[c] > 0.0 { s[c] / pen } else { s[c] * pen };
                }
            }
        }
        if ban {
            for &e in &p.eos_token_ids {
                if let Some(x) = s.get_mut(e as usize) {
                    *x = f32::NEG_INFINITY;
                }
            }
        }
        // With only the ban, the processed maximum is the raw one unless a banned token holds
        // it, and then the raw weights with the banned ones zeroed are the same numbers: no
        // second exp pass.
        let smax = max_f32(&s);
        if p.repetition_penalty != 1.0 || smax != max {
            w = weights(&s, smax, inv_t);
        } else {
            for &e in &p.eos_token_ids {
                if let Some(x) = w.get_mut(e as usize) {
                    *x = 0.0;
                }
            }
        }
        processed = s;
        &processed[..]
    } else {
        logits
    };
    if p.greedy {
        // The first maximum of the processed scores wins ties, like torch.argmax (on the
        // scores, not the weights, whose f32 rounding could tie two distinct scores).
        let tok = scores
            .iter()
            .enumerate()
            .fold((0usize, f32::NEG_INFINITY), |(bi, bv), (i, &v)| {
                if v > bv {
                    (i, v)
                } else {
                    (bi, bv)
                }
            })
            .0;
        return (tok as u32, logprob(tok));
    }
    if let Some(k) = p.top_k {
        if k < scores.len() {
            // Keep everything ≥ the k-th largest score (ties kept, as transformers does; on
            // the scores, since rounding could tie or reorder close weights).
            let mut sorted = scores.to_vec();
            let (_, kth, _) = sorted.select_nth_unstable_by(k - 1, |a, b| b.total_cmp(a));
            let kth = *kth;
            for (x, &sc) in w.iter_mut().zip(scores) {
                if sc < kth {
                    *x = 0.0;
                }
            }
        }
    }
    if p.top_p < 1.0 {
        nucleus(&mut w, p.top_p);
    }
    if p.min_p > 0.0 {
        let wmax = w.iter().fold(0.0f32, |m, &x| m.max(x));
        let cut = (p.min_p * wmax as f64) as f32;
        w.iter_mut().filter(|x| **x < cut).for_each(|x| *x = 0.0);
    }
    // Inverse-CDF draw in token-id order: deterministic given u.
    let tok = draw(&w, u * sum_f64(&w));
    (tok as u32, logprob(tok))
}

/// `exp((x_i − max) · inv_t)` for every score.
fn weights(scores: &[f32], max: f32, inv_t: f32) -> Vec<f32> {
    scores.iter().map(|&x| exp_f32((x - max) * inv_t)).collect()
}

/// The f64 sum of `w` in a fixed order: 8 lane sums, a fixed reduction, then the tail.
fn sum_f64(w: &[f32]) -> f64 {
    let mut a = [0f64; 8];
    let chunks = w.chunks_exact(8);
    let rest = chunks.remainder();
    for c in chunks {
        for l in 0..8 {
            a[l] += c[l] as f64;
        }
    }
    let s = ((a[0] + a[4]) + (a[2] + a[6])) + ((a[1] + a[5]) + (a[3] + a[7]));
    rest.iter().fold(s, |s, &x| s + x as f64)
}

/// The first token whose running sum of weights passes `target`: whole blocks are skipped on
/// their sums, the block the target falls in is walked token by token. If rounding leaves the
/// target unreached, the last token with a nonzero weight.
fn draw(w: &[f32], target: f64) -> usize {
    let mut acc = 0.0f64;
    for (b, block) in w.chunks(DRAW_BLOCK).enumerate() {
        let mass = sum_f64(block);
        if acc + mass <= target {
            acc += mass;
            continue;
        }
        for (i, &x) in block.iter().enumerate() {
            if x > 0.0 {
                acc += x as f64;
                if acc > target {
                    return b * DRAW_BLOCK + i;
                }
            }
        }
    }
    w.iter().rposition(|&x| x > 0.0).unwrap_or(0)
}

/// Zeroes every weight outside the smallest top set whose mass reaches `top_p` of the total.
fn nucleus(w: &mut [f32], top_p: f64) {
    let total = sum_f64(w);
    let need = top_p * total;
    // Most nuclei are small: try the top 256 before sorting the whole vocabulary.
    let mut idx: Vec<usize> = (0..w.len()).filter(|&i| w[i] > 0.0).collect();
    let by_weight = |a: &usize, b: &usize| w[*b].total_cmp(&w[*a]).then(a.cmp(b));
    let head = idx.len().min(256);
    if head < idx.len() {
        idx.select_nth_unstable_by(head - 1, by_weight);
    }
    idx[..head].sort_unstable_by(by_weight);
    let mass: f64 = idx[..head].iter().map(|&i| w[i] as f64).sum();
    if mass < need {
        idx.sort_unstable_by(by_weight);
    }
    let mut acc = 0.0;
    let mut keep = idx.len();
    for (n, &i) in idx.iter().enumerate() {
        acc += w[i] as f64;
        if acc >= need {
            keep = n + 1;
            break;
        }
    }
    for &i in &idx[keep..] {
        w[i] = 0.0;
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn greedy_reports_the_full_softmax_log_prob() {
        let logits = [0.0f32, 5.0, 1.0];
        let p = SamplingParams {
            greedy: true,
            ..SamplingParams::default()
        };
        let (tok, lp) = super::sample(&logits, &p, &[], 0, &mut SampleRng::new(0, 0, 0, 0));
        assert_eq!(tok, 1);
        assert!((lp as f64 - (5.0 - (1f64 + 5f64.exp() + 1f64.exp()).ln())).abs() < 1e-5);
    }

    use super::*;

    fn draw_counts(logits: &[f32], p: &SamplingParams, n: usize) -> Vec<usize> {
        let mut counts = vec![0; logits.len()];
        for i in 0..n {
            let (t, _) = sample(logits, p, &[], 0, &mut SampleRng::new(1, 0, 0, i as u64));
            counts[t as usize] += 1;
        }
        counts
    }

    #[test]
    fn plain_sampling_follows_softmax() {
        let logits = [0.0f32, 1.0, 2.0];
        let c = draw_counts(&logits, &SamplingParams::default(), 20_000);
        let z: f64 = logits.iter().map(|&x| (x as f64).exp()).sum();
        for (i, &x) in logits.iter().enumerate() {
            let want = (x as f64).exp() / z;
            let got = c[i] as f64 / 20_000.0;
            assert!((got - want).abs() < 0.015, "token {i}: {got} vs {want}");
        }
    }

    #[test]
    fn filters_restrict_the_support() {
        let logits = [3.0f32, 2.9, 0.0, -1.0, 2.0];
        let only = |p: SamplingParams| {
            let c = draw_counts(&logits, &p, 2000);
            (0..5).filter(|&i| c[i] > 0).collect::<Vec<_>>()
        };
        assert_eq!(
            only(SamplingParams {
                top_k: Some(2),
                ..Default::default()
            }),
            vec![0, 1]
        );
        // p = [.45, .41, .02, .01, .11]: 0.8 of the mass needs the top two.
        assert_eq!(
            only(SamplingParams {
                top_p: 0.8,
                ..Default::default()
            }),
            vec![0, 1]
        );
        assert_eq!(
            only(SamplingParams {
                min_p: 0.2,
                ..Default::default()
            }),
            vec![0, 1, 4]
        );
        // A banned EOS below the maximum: every other token stays possible.
        assert_eq!(
            only(SamplingParams {
                min_new_tokens: 1,
                eos_token_ids: vec![1],
                ..Default::default()
            }),
            vec![0, 2, 3, 4]
        );
        // A strong penalty on tokens 0 and 1 moves the mass to token 4.
        let p = SamplingParams {
            repetition_penalty: 100.0,
            greedy: true,
            ..Default::default()
        };
        assert_eq!(
            sample(&logits, &p, &[0, 1], 0, &mut SampleRng::new(0, 0, 0, 0)).0,
            4
        );
        // EOS banned before min_new_tokens.
        let p = SamplingParams {
            greedy: true,
            min_new_tokens: 2,
            eos_token_ids: vec![0],
            ..Default::default()
        };
        assert_eq!(
            sample(&logits, &p, &[], 1, &mut SampleRng::new(0, 0, 0, 0)).0,
            1
        );
        assert_eq!(
            sample(&logits, &p, &[], 2, &mut SampleRng::new(0, 0, 0, 0)).0,
            0
        );
        // The ban holds when EOS leads by more than f32's exp range at a low temperature: the
        // draw follows the allowed tokens, not a fallback.
        let far = [200.0f32, 0.0, -1.0, 1.0];
        for greedy in [false, true] {
            let p = SamplingParams {
                temperature: 0.1,
                greedy,
                min_new_tokens: 1,
                eos_token_ids: vec![0],
                ..Default::default()
            };
            let (tok, lp) = sample(&far, &p, &[], 0, &mut SampleRng::new(0, 0, 0, 0));
            assert_eq!(tok, 3, "greedy {greedy}");
            assert!(
                lp < -1000.0,
                "the reported log-prob is the unbanned one: {lp}"
            );
        }
    }

    /// Skipping blocks on their sums picks the token a token-by-token scan picks (integer
    /// weights, so every sum is exact and no rounding edge hides a difference).
    #[test]
    fn the_blocked_draw_equals_a_token_by_token_scan() {
        let w: Vec<f32> = (0..1000u32)
            .map(|i| {
                if i % 7 == 3 {
                    0.0
                } else {
                    ((i * 31) % 11) as f32
                }
            })
            .collect();
        let scan = |target: f64| {
            let mut acc = 0.0;
            w.iter().position(|&x| {
                acc += x as f64;
                acc > target
            })
        };
        let total = sum_f64(&w);
        assert_eq!(total, w.iter().map(|&x| x as f64).sum::<f64>());
        for t in 0..total as u32 {
            let target = t as f64 + 0.5;
            assert_eq!(Some(draw(&w, target)), scan(target), "target {target}");
        }
        // Past the end (rounding): the last token with weight.
        assert_eq!(draw(&w, total), w.iter().rposition(|&x| x > 0.0).unwrap());
        assert_eq!(max_f32(&[1.0, f32::NAN, 3.0, -2.0]), 3.0);
        let long: Vec<f32> = (0..37).map(|i| (i as f32 - 20.0).abs()).collect();
        assert_eq!(max_f32(&long), 20.0);
    }

    #[test]
    fn reported_logprob_is_the_untruncated_tempered_one() {
        let logits = [1.0f32, 2.0, 3.0];
        let p = SamplingParams {
            temperature: 0.5,
            top_k: Some(1),
            ..Default::default()
        };
        let (tok, lp) = sample(&logits, &p, &[], 0, &mut SampleRng::new(0, 0, 0, 0));
        assert_eq!(tok, 2);
        let z: f64 = logits.iter().map(|&x| (x as f64 / 0.5).exp()).sum();
        assert!((lp as f64 - ((3.0 / 0.5) - z.ln())).abs() < 1e-6);
    }
}
