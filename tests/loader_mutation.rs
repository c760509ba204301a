//! Seeded mutation testing of every model loader: corrupted files end in `Ok` or a typed
//! [`ModelError`], never a panic, an abort, a hang, or an allocation out of proportion to the
//! files.
//!
//! **Loaders and inputs.** Three HF directories (the tiny llama/qwen2/qwen3 fixtures: config,
//! safetensors header and data, tokenizer.json, tokenizer_config.json with its chat template,
//! generation_config.json), a sharded qwen3 directory (two shards and
//! `model.safetensors.index.json`), and three GGUF files written from the fixtures by
//! [`common::mutate::gguf::write_tiny_gguf`] (llama F32 with `rope_freqs` and tokenizer metadata,
//! qwen2 Q8_0, qwen3 F16), loaded through `load` (qwen2 through `load_gguf_decoder`). A loaded
//! model is then used: encode, decode, chat template, a 3-token forward.
//!
//! **Mutations** (see `tests/common/mutate/`): bit flips, truncation, inserted and deleted
//! bytes, u64 fields (GGUF counts, lengths, dims, offsets; the safetensors header length)
//! overwritten with 0, 1, 3, 2^32, 2^62, 2^63, 2^63+125, 2^58+64, u32::MAX, u64::MAX; GGUF type
//! ids swapped (F32/F16/BF16/quant/unknown) and scalar metadata set to 0/-1/inf/NaN/huge; JSON
//! numbers replaced by 0/-1/huge/1e999/"NaN"/null, keys dropped, values of the wrong type,
//! strings cut; and `tokenizers`-specific ones (`Precompiled` charsmaps with odd trie sizes,
//! bogus decoders, padding/truncation parameters, malformed JSON inside `"decoder"`).
//!
//! **Design** (`loader_mutation/runner.rs`). Cases run in child processes: each test
//! re-executes this binary (`current_exe() <test> --exact --nocapture`, the case list in
//! `RLZERO_MUTATION_CHILD`), so an abort is reported with its seed instead of killing the suite.
//! The child prints a line before and after each case and catches panics per case; the parent
//! kills a child that is silent for 60 s (a hang), reports the case it was on, and restarts after
//! it. An error from loading must also name the file (its message contains the model's path).
//! Panics the library contains itself (`catch_unwind` around `tokenizers`/candle calls) are typed
//! errors and pass; each test prints how many there were. `loader_mutation/regressions.rs` has one
//! hand-written case per class of failure issue 11 reported.
//!
//! **Allocation bound.** A `#[global_allocator]` wrapper records, per case, the largest single
//! allocation request and the peak of live bytes. With `F` = total size of the model's files
//! after mutation:
//!
//! - largest single allocation ≤ 16·F + 16 MiB, and
//! - peak live bytes above the case's start ≤ 32·F + 64 MiB.
//!
//! 16·F covers the worst legitimate expansion (dequantizing Q2_K to f32 is ~12 bytes per file
//! byte; candle holds GGUF metadata arrays as 32-byte values, which the header scan bounds at 8·F,
//! 16·F once a Vec doubles); the constant covers size-independent buffers (thread pools, regex
//! compilation, gemm scratch; the fixtures' cases peak at about 1.5 MiB for one request and
//! 5 MiB live). The peak bound adds the model's weights in f32 and the parsed JSON. Before the
//! fix, a `precompiled_charsmap` of a few bytes asked for 2 or 8 GiB, `padding` for 2^40 ids.
//! A request above 4 GiB is refused outright (the allocator returns null, the child aborts, and
//! the parent reports the seed), so a corrupt header cannot take the test machine down.
//!
//! **Seeds.** Case `i` of a loader uses seed `RLZERO_MUTATION_SEED + i` (default 0), for
//! `RLZERO_MUTATION_CASES` cases per loader (default `DEFAULT_CASES`, 7 loaders; about 3 ms a
//! case). A longer campaign: `RLZERO_MUTATION_CASES=50000 cargo test --test loader_mutation
//! mutated_ -- --nocapture`. A failing seed goes into `tests/fixtures/mutation_regressions.txt`
//! as `<loader> <seed>`; those always run. A seed names the same mutation as long as the
//! fixtures and `tests/common/mutate/` are unchanged.

mod common;

use std::path::{Path, PathBuf};

use candle_core::quantized::GgmlDType;
use candle_core::{Device, Tensor};
use common::mutate::gguf::{self, GgufFields};
use common::mutate::{self, Rng};
use common::tmpdir::TempDir;
use rlzero::model::{
    load, load_gguf_decoder, Decoder, LoadOptions, LoadedModel, LogitsToKeep, Message, ModelError,
    ModelSource, WeightMode,
};

#[path = "loader_mutation/regressions.rs"]
mod regressions;
#[path = "loader_mutation/runner.rs"]
mod runner;
use runner::{child, mutation_test, run_seeds, CHILD_ENV};

// ---------------------------------------------------------------- loaders and fixtures

#[derive(Clone, Copy, Debug, PartialEq)]
enum Loader {
    HfLlama,
    HfQwen2,
    HfQwen3,
    HfSharded,
    GgufLlama,
    GgufQwen2Q8,
    GgufQwen3F16,
}

impl Loader {
    const ALL: [Loader; 7] = [
        Loader::HfLlama,
        Loader::HfQwen2,
        Loader::HfQwen3,
        Loader::HfSharded,
        Loader::GgufLlama,
        Loader::GgufQwen2Q8,
        Loader::GgufQwen3F16,
    ];
    fn name(self) -> &'static str {
        match self {
            Loader::HfLlama => "hf-llama",
            Loader::HfQwen2 => "hf-qwen2",
            Loader::HfQwen3 => "hf-qwen3",
            Loader::HfSharded => "hf-sharded",
            Loader::GgufLlama => "gguf-llama",
            Loader::GgufQwen2Q8 => "gguf-qwen2-q8_0",
            Loader::GgufQwen3F16 => "gguf-qwen3-f16",
        }
    }
    fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|l| l.name() == s)
    }
    fn is_gguf(self) -> bool {
        matches!(
            self,
            Loader::GgufLlama | Loader::GgufQwen2Q8 | Loader::GgufQwen3F16
        )
    }
}

/// A temp dir holding the loader's pristine files, which each case mutates one of and restores.
struct Fixture {
    loader: Loader,
    dir: TempDir,
    files: Vec<(String, Vec<u8>)>,
    gguf: Option<GgufFields>,
}

fn fixture(loader: Loader) -> Fixture {
    let dir = TempDir::new(&format!("mut-{}", loader.name()));
    let hf = |name: &str, skip: &[&str]| {
        for e in std::fs::read_dir(common::fixtures().join(name)).unwrap() {
            let e = e.unwrap();
            let f = e.file_name().into_string().unwrap();
            if f != "reference.safetensors" && !skip.contains(&f.as_str()) {
                std::fs::copy(e.path(), dir.path().join(f)).unwrap();
            }
        }
    };
    let gguf = |fixture: &str, ty: GgmlDType| {
        gguf::write_tiny_gguf(&dir.path().join("model.gguf"), fixture, ty)
    };
    match loader {
        Loader::HfLlama => hf("tiny-llama", &[]),
        Loader::HfQwen2 => hf("tiny-qwen2", &[]),
        Loader::HfQwen3 => hf("tiny-qwen3", &[]),
        Loader::HfSharded => {
            hf("tiny-qwen3", &["model.safetensors"]);
            let src = common::fixtures().join("tiny-qwen3/model.safetensors");
            mutate::write_shards(&src, dir.path());
        }
        Loader::GgufLlama => gguf("tiny-llama", GgmlDType::F32),
        Loader::GgufQwen2Q8 => gguf("tiny-qwen2", GgmlDType::Q8_0),
        Loader::GgufQwen3F16 => gguf("tiny-qwen3", GgmlDType::F16),
    }
    let mut files: Vec<(String, Vec<u8>)> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| {
            let e = e.unwrap();
            (
                e.file_name().into_string().unwrap(),
                std::fs::read(e.path()).unwrap(),
            )
        })
        .collect();
    files.sort();
    let gguf = loader.is_gguf().then(|| gguf::gguf_fields(&files[0].1));
    Fixture {
        loader,
        dir,
        files,
        gguf,
    }
}

impl Fixture {
    /// The file a seed corrupts, its corrupted bytes, and what was done.
    fn mutation(&self, seed: u64) -> (usize, Vec<u8>, String) {
        let mut rng = Rng::new(seed);
        // Weights: the weights file(s) and tokenizer.json are the largest parsers.
        let weighted: Vec<usize> = self
            .files
            .iter()
            .enumerate()
            .flat_map(|(i, (name, _))| {
                let w = match name.as_str() {
                    "config.json" | "tokenizer.json" | "model.safetensors.index.json" => 4,
                    n if n.ends_with(".safetensors") || n.ends_with(".gguf") => 5,
                    _ => 2,
                };
                std::iter::repeat_n(i, w)
            })
            .collect();
        let i = *rng.pick(&weighted);
        let (name, pristine) = &self.files[i];
        let mut b = pristine.clone();
        let what = if name.ends_with(".gguf") {
            let f = self.gguf.as_ref().expect("GGUF fields");
            gguf::mutate_gguf(&mut rng, &mut b, f)
        } else if name.ends_with(".safetensors") {
            mutate::mutate_safetensors(&mut rng, &mut b)
        } else if rng.chance(70) {
            mutate::mutate_json(&mut rng, &mut b, name == "tokenizer.json")
        } else {
            mutate::mutate_bytes(&mut rng, &mut b, 0, usize::MAX)
        };
        (i, b, format!("{name}: {what}"))
    }

    fn load(&self) -> Result<Loaded, ModelError> {
        let opts = LoadOptions {
            mode: WeightMode::Frozen,
            ..LoadOptions::default()
        };
        let dir = self.dir.path();
        Ok(match self.loader {
            Loader::GgufQwen2Q8 => {
                Loaded::Decoder(load_gguf_decoder(&dir.join("model.gguf"), &opts)?)
            }
            l if l.is_gguf() => {
                Loaded::Model(load(&ModelSource::Gguf(dir.join("model.gguf")), &opts)?)
            }
            _ => Loaded::Model(load(&ModelSource::Dir(dir.to_path_buf()), &opts)?),
        })
    }
}

#[allow(clippy::large_enum_variant)] // one per case, on the stack briefly
enum Loaded {
    Model(LoadedModel),
    Decoder(Decoder),
}

/// Uses what loaded the way a trainer would; typed errors are fine here too.
fn exercise(l: &Loaded) -> Result<(), ModelError> {
    let d = match l {
        Loaded::Decoder(d) => d,
        Loaded::Model(m) => {
            let t = &m.tokenizer;
            let ids = t.encode("w7 w8 ab 12 <|im_end|>", true)?;
            t.decode(&ids, false)?;
            t.decode(&[0, 1, 2, 5, 127], true)?;
            if t.chat_template().is_some() {
                t.apply_chat_template(&[Message::system("s"), Message::user("w7")], true)?;
            }
            &m.decoder
        }
    };
    let v = d.config().vocab_size as u32;
    let ids = Tensor::new(&[[1 % v, 2 % v, 3 % v]], &Device::Cpu)?;
    let logits = d.forward(&ids, &ids.ones_like()?, LogitsToKeep::Last(1))?;
    assert_eq!(logits.dims(), [1, 1, v as usize]);
    Ok(())
}

#[test]
fn mutated_hf_llama_directories() {
    mutation_test("mutated_hf_llama_directories", Loader::HfLlama);
}

#[test]
fn mutated_hf_qwen2_directories() {
    mutation_test("mutated_hf_qwen2_directories", Loader::HfQwen2);
}

#[test]
fn mutated_hf_qwen3_directories() {
    mutation_test("mutated_hf_qwen3_directories", Loader::HfQwen3);
}

#[test]
fn mutated_sharded_directories() {
    mutation_test("mutated_sharded_directories", Loader::HfSharded);
}

#[test]
fn mutated_gguf_llama_files() {
    mutation_test("mutated_gguf_llama_files", Loader::GgufLlama);
}

#[test]
fn mutated_gguf_qwen2_q8_0_files() {
    mutation_test("mutated_gguf_qwen2_q8_0_files", Loader::GgufQwen2Q8);
}

#[test]
fn mutated_gguf_qwen3_f16_files() {
    mutation_test("mutated_gguf_qwen3_f16_files", Loader::GgufQwen3F16);
}

/// Every `(loader, seed)` in `tests/fixtures/mutation_regressions.txt`: seeds that once failed.
#[test]
fn recorded_failing_seeds_stay_fixed() {
    const TEST: &str = "recorded_failing_seeds_stay_fixed";
    if let Ok(spec) = std::env::var(CHILD_ENV) {
        return child(&spec);
    }
    let list = std::fs::read_to_string(common::fixtures().join("mutation_regressions.txt"))
        .expect("tests/fixtures/mutation_regressions.txt");
    let mut failures = vec![];
    for loader in Loader::ALL {
        let seeds: Vec<u64> = list
            .lines()
            .map(|l| l.split('#').next().unwrap_or("").trim())
            .filter_map(|l| l.split_once(char::is_whitespace))
            .filter(|(name, _)| Loader::parse(name) == Some(loader))
            .map(|(_, seed)| seed.trim().parse().expect("seed"))
            .collect();
        if !seeds.is_empty() {
            failures.extend(run_seeds(TEST, loader, &seeds));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}
