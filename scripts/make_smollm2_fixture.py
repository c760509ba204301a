"""Reference logits and token ids for SmolLM2-135M-Instruct (Q4_1 GGUF) from transformers.

    ./scripts/fetch-models.sh && python scripts/make_smollm2_fixture.py   # needs torch transformers gguf

Writes
* tests/fixtures/smollm2/logits.safetensors: for 3 chat prompts, the prompt ids, the logits of
  every position on 512 fixed vocabulary columns, and the full logit row of the last position;
* tests/fixtures/smollm2/tokenizer_cases.json: >= 200 strings with their ids under
  - `ids_transformers`: transformers' tokenizer as it builds it from the GGUF, and
  - `ids_smollm2`: the same vocabulary and merges with SmolLM2's published pre-tokenizer
    (Digits(individual_digits) + ByteLevel), which is what `tokenizer.ggml.pre = smollm` means
    and what llama.cpp does. transformers' GGUF loader has no entry for `smollm` and falls back to
    GPT-2's regex, so the two can differ on digits; the file records where.
"""
import json
import os
import random

import torch
from safetensors.torch import save_file
from tokenizers import pre_tokenizers
from transformers import AutoModelForCausalLM, AutoTokenizer

HERE = os.path.dirname(os.path.abspath(__file__))
MODELS = os.path.join(HERE, "..", "models")
GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
OUT = os.path.join(HERE, "..", "tests", "fixtures", "smollm2")
GSM8K = os.path.join(HERE, "..", "..", "shared", "data", "gsm8k", "test.jsonl")

PROMPTS = [
    "What is the capital of France?",
    "What is 23+19? Answer with just the number.",
    "Write a haiku about gradient descent.",
]


def strings():
    rng = random.Random(7)
    s = [
        "", " ", "  ", "\n", "\n\n", "\t", " \t \n ", "hello", " hello", "hello ", "Hello world!",
        "a  b", "a   b    c", "trailing   ", "   leading", "line1\nline2\r\nline3", "tabs\tand\tspaces",
        "I'm", "don't", "WE'LL", "they've", "she'd", "it's 5 o'clock",
        "<|im_start|>user\nWhat is 2+2?<|im_end|>\n<|im_start|>assistant\n", "<|endoftext|>", "<|im_end|>",
        "text<|im_end|>more", "café", "naïve résumé", "Straße", "日本語のテキスト", "中文测试", "한국어",
        "Привет, мир!", "مرحبا بالعالم", "emoji 😀🎉👍🏽", "e\u0301 combining", "ﬁ ligature", "½ ¾ ² ³",
        "def f(x):\n    return x ** 2\n", "for (int i = 0; i < n; ++i) { sum += a[i]; }",
        "https://example.com/path?q=1&b=2", "user@example.com", "$$\\frac{a}{b}$$", "x^2 + y^2 = z^2",
        "....", "!!!???", "--- *** ___", "(((nested)))", "\"quoted\" 'single'", "#hashtag @mention",
    ]
    for n in [0, 7, 42, 123, 1000, 2024, 31415, 999999, 1234567890, 3.14159, -17, -0.5, 1e-7]:
        s += [str(n), f" {n}", f"x={n}", f"{n} apples"]
    s += ["1,234,567", "12:30pm", "2026-11-30", "v1.2.3", "0x1F", "10%", "$5.99", "3/4", "1st 2nd 3rd"]
    for _ in range(30):
        a, b = rng.randint(0, 10**rng.randint(1, 6)), rng.randint(0, 999)
        s.append(f"What is {a}+{b}? Answer: {a + b}")
    for _ in range(20):
        s.append(" " * rng.randint(1, 6) + "".join(rng.choice("ab1 \n\t.") for _ in range(rng.randint(3, 20))))
    if os.path.exists(GSM8K):
        with open(GSM8K) as f:
            for i, line in enumerate(f):
                if i >= 50:
                    break
                row = json.loads(line)
                s.append(row["question"])
                s.append(row["answer"])
    return s


def main():
    os.makedirs(OUT, exist_ok=True)
    torch.set_num_threads(2)
    tok = AutoTokenizer.from_pretrained(MODELS, gguf_file=GGUF)
    model = AutoModelForCausalLM.from_pretrained(MODELS, gguf_file=GGUF, dtype=torch.float32).eval()

    # --- tokenizer cases
    smol = AutoTokenizer.from_pretrained(MODELS, gguf_file=GGUF)
    smol.backend_tokenizer.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.Digits(individual_digits=True),
         pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=True, use_regex=True)])
    cases, differ = [], 0
    for text in strings():
        a = tok.encode(text, add_special_tokens=False)
        b = smol.encode(text, add_special_tokens=False)
        differ += a != b
        cases.append({"text": text, "ids_transformers": a, "ids_smollm2": b})
    with open(os.path.join(OUT, "tokenizer_cases.json"), "w") as f:
        json.dump({"n": len(cases), "n_differ": differ, "cases": cases}, f, ensure_ascii=False, indent=0)
    print(f"tokenizer: {len(cases)} strings, {differ} differ between transformers-GGUF and smollm pre-tokenizer")

    # --- logits
    g = torch.Generator().manual_seed(0)
    vocab = model.config.vocab_size
    cols = torch.cat([torch.arange(64), 64 + torch.randperm(vocab - 64, generator=g)[:448]]).sort().values
    tensors = {"columns": cols.to(torch.int64)}
    for i, p in enumerate(PROMPTS):
        text = tok.apply_chat_template([{"role": "user", "content": p}], tokenize=False, add_generation_prompt=True)
        ids = tok(text, return_tensors="pt", add_special_tokens=False)["input_ids"]
        with torch.no_grad():
            logits = model(input_ids=ids).logits[0]  # (T, V)
        tensors[f"ids_{i}"] = ids[0].to(torch.int64).contiguous()
        tensors[f"logits_cols_{i}"] = logits[:, cols].contiguous()
        tensors[f"logits_last_{i}"] = logits[-1].contiguous()
        with open(os.path.join(OUT, f"prompt_{i}.txt"), "w") as f:
            f.write(text)
        print(f"prompt {i}: {ids.shape[1]} tokens, argmax last = {tok.decode([logits[-1].argmax().item()])!r}")
    save_file(tensors, os.path.join(OUT, "logits.safetensors"))


if __name__ == "__main__":
    main()
