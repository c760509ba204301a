//! The quickstart task, shared by `make_quickstart_model` (which pretrains the model) and
//! `quickstart` (which trains it with GRPO): reverse a string of 3–6 letters.
//!
//! Prompt `<s>abcd>`, answer `dcba</s>`. Every string is assigned once and for all to the
//! training or the held-out side by a hash, so held-out strings are never seen, neither in
//! pretraining nor in GRPO.

// Shared by two examples, each of which uses only part of it.
#![allow(dead_code)]

/// Letters of the task strings (the vocabulary has all 26; the task uses these).
pub const ALPHABET: &[u8] = b"abcdefghij";
/// Shortest task string.
pub const MIN_LEN: usize = 3;
/// Longest task string.
pub const MAX_LEN: usize = 6;
/// Begin-of-sequence, end-of-sequence and unknown tokens (ids 0, 1, 2).
pub const BOS: &str = "<s>";
pub const EOS: &str = "</s>";
pub const UNK: &str = "<unk>";
/// Ends the prompt: "now answer".
pub const SEP: char = '>';

/// The vocabulary, in id order: the three special tokens, `a`–`z`, then `>`.
pub fn vocab() -> Vec<String> {
    let mut v: Vec<String> = vec![BOS.into(), EOS.into(), UNK.into()];
    v.extend((b'a'..=b'z').map(|c| (c as char).to_string()));
    v.push(SEP.to_string());
    v
}

/// Token id of a vocabulary entry (the position in [`vocab`]).
pub fn id_of(token: &str) -> Option<u32> {
    vocab().iter().position(|t| t == token).map(|i| i as u32)
}

/// The held-out side of the split: 1 string in 8, by a fixed hash (FNV-1a) of its text.
pub fn is_held_out(s: &str) -> bool {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in s.bytes() {
        h ^= b as u64;
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h.is_multiple_of(8)
}

/// What the model sees: the string followed by the separator (`abcd>`).
pub fn prompt_text(s: &str) -> String {
    format!("{s}{SEP}")
}

/// The correct answer: the string reversed.
pub fn answer(s: &str) -> String {
    s.chars().rev().collect()
}

/// SplitMix64: a tiny, fully specified generator, so every run draws the same strings on every
/// platform (no dependency on a crate's algorithm choice).
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Self(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n` (the modulo bias is below 2⁻⁵⁰ for the small `n` used here).
    pub fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n as u64) as usize
    }

    /// Uniform in `[0, 1)`.
    pub fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }

    /// A standard normal draw (Box–Muller).
    pub fn normal(&mut self) -> f64 {
        let u1 = self.unit().max(1e-300);
        let u2 = self.unit();
        (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()
    }

    /// A random letter of [`ALPHABET`].
    pub fn letter(&mut self) -> char {
        ALPHABET[self.below(ALPHABET.len())] as char
    }

    /// A string of `len` random letters.
    pub fn letters(&mut self, len: usize) -> String {
        (0..len).map(|_| self.letter()).collect()
    }

    /// A task string of uniform length 3–6 from the held-out side (`held_out`) or the
    /// training side of the split.
    pub fn task_string(&mut self, held_out: bool) -> String {
        loop {
            let len = MIN_LEN + self.below(MAX_LEN - MIN_LEN + 1);
            let s = self.letters(len);
            if is_held_out(&s) == held_out {
                return s;
            }
        }
    }
}
