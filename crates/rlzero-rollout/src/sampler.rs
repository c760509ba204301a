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

use crate::params::SamplingParams;
use crate::rng::SampleRng;

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
    let inv_t = 1.0 / p.temperature;
    // One pass gives both the trainer's log-normaliser and, unless a penalty rewrites the
    // scores, the sampling weights: w_i = exp(x_i / T − max).
    let max = logits.iter().fold(f32::NEG_INFINITY, |m, &x| m.max(x)) as f64 * inv_t;
    let mut w: Vec<f64> = logits
        .iter()
        .map(|&x| (x as f64 * inv_t - max).exp())
        .collect();
    let lse = w.iter().sum::<f64>().ln();
    let logprob = |tok: usize| (logits[tok] as f64 * inv_t - max - lse) as f32;

    // Processed scores: the penalty on raw logits, then temperature; then the EOS ban.
    if p.repetition_penalty != 1.0 {
        let pen = p.repetition_penalty as f32;
        let mut s: Vec<f32> = logits.to_vec();
        let mut seen = vec![false; s.len()];
        for &c in context {
            let c = c as usize;
            if c < s.len() && !seen[c] {
                seen[c] = true;
                s[c] = if s[c] > 0.0 { s[c] / pen } else { s[c] * pen };
            }
        }
        let smax = s.iter().fold(f32::NEG_INFINITY, |m, &x| m.max(x)) as f64 * inv_t;
        w = s.iter().map(|&x| (x as f64 * inv_t - smax).exp()).collect();
    }
    if n_generated < p.min_new_tokens {
        for &e in &p.eos_token_ids {
            if let Some(x) = w.get_mut(e as usize) {
                *x = 0.0;
            }
        }
    }
    if p.greedy {
        // exp is monotone, so the largest weight is the largest processed score; the first
        // maximum wins ties, like torch.argmax.
        let tok = w
            .iter()
            .enumerate()
            .fold(
                (0usize, -1.0f64),
                |(bi, bv), (i, &v)| if v > bv { (i, v) } else { (bi, bv) },
            )
            .0;
        return (tok as u32, logprob(tok));
    }
    if let Some(k) = p.top_k {
        if k < w.len() {
            // Keep everything ≥ the k-th largest weight (ties kept, as transformers does).
            let mut sorted = w.clone();
            let (_, kth, _) = sorted.select_nth_unstable_by(k - 1, |a, b| b.total_cmp(a));
            let kth = *kth;
            w.iter_mut().filter(|x| **x < kth).for_each(|x| *x = 0.0);
        }
    }
    if p.top_p < 1.0 {
        nucleus(&mut w, p.top_p);
    }
    if p.min_p > 0.0 {
        let wmax = w.iter().fold(0.0f64, |m, &x| m.max(x));
        let cut = p.min_p * wmax;
        w.iter_mut().filter(|x| **x < cut).for_each(|x| *x = 0.0);
    }
    // Inverse-CDF draw in token-id order: deterministic given u.
    let total: f64 = w.iter().sum();
    let target = u * total;
    let mut acc = 0.0;
    let mut last_nonzero = 0;
    for (i, &x) in w.iter().enumerate() {
        if x > 0.0 {
            acc += x;
            last_nonzero = i;
            if acc > target {
                return (i as u32, logprob(i));
            }
        }
    }
    (last_nonzero as u32, logprob(last_nonzero))
}

/// Zeroes every weight outside the smallest top set whose mass reaches `top_p` of the total.
fn nucleus(w: &mut [f64], top_p: f64) {
    let total: f64 = w.iter().sum();
    let need = top_p * total;
    // Most nuclei are small: try the top 256 before sorting the whole vocabulary.
    let mut idx: Vec<usize> = (0..w.len()).filter(|&i| w[i] > 0.0).collect();
    let by_weight = |a: &usize, b: &usize| w[*b].total_cmp(&w[*a]).then(a.cmp(b));
    let head = idx.len().min(256);
    if head < idx.len() {
        idx.select_nth_unstable_by(head - 1, by_weight);
    }
    idx[..head].sort_unstable_by(by_weight);
    let mass: f64 = idx[..head].iter().map(|&i| w[i]).sum();
    if mass < need {
        idx.sort_unstable_by(by_weight);
    }
    let mut acc = 0.0;
    let mut keep = idx.len();
    for (n, &i) in idx.iter().enumerate() {
        acc += w[i];
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
