"""Loads a checkpoint exported by rlzero (`cargo run --example export_model -- SRC OUT`) with
transformers' AutoModelForCausalLM and AutoTokenizer and compares:
  * logits on the input rlzero saved in OUT/rlzero_check.safetensors (max abs difference),
  * transformers' token ids for the prompt text (OUT/rlzero_check.json) against rlzero's.

Usage: python scripts/check_export_transformers.py OUT [--rtol 1e-5] [--source HF_DIR]
Needs the reference stack (scripts/requirements-reference.txt). Exit status 1 on a mismatch.
"""
import argparse
import json
import sys

import torch
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM, AutoTokenizer


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("out")
    ap.add_argument("--rtol", type=float, default=1e-5,
                    help="largest |logit difference| allowed, relative to the largest |logit| "
                         "(f32 summation order differs between the two stacks)")
    ap.add_argument("--source", help="the HF directory the export came from: its transformers "
                    "tokenizer is the reference for token ids (transformers may pick a "
                    "model-specific tokenizer class that differs from the tokenizers library "
                    "on degenerate test vocabularies)")
    a = ap.parse_args()
    check = load_file(f"{a.out}/rlzero_check.safetensors")
    ids, want = check["input_ids"], check["logits"]
    model = AutoModelForCausalLM.from_pretrained(a.out, dtype=torch.float32)
    model.eval()
    with torch.no_grad():
        got = model(input_ids=ids, attention_mask=torch.ones_like(ids)).logits
    err = (got - want).abs().max().item()
    scale = want.abs().max().item()
    tok = AutoTokenizer.from_pretrained(a.out)
    with open(f"{a.out}/rlzero_check.json") as f:
        check_text = json.load(f)
    hf_ids = tok(check_text["text"], add_special_tokens=False)["input_ids"]
    if a.source:
        want_ids = AutoTokenizer.from_pretrained(a.source)(
            check_text["text"], add_special_tokens=False)["input_ids"]
        against = "transformers on the source"
    else:
        want_ids = check_text["ids"]
        against = "rlzero"
    same_ids = hf_ids == want_ids
    print(f"{a.out}: transformers {type(model).__name__}, {ids.shape[1]} tokens, "
          f"max |logit diff| {err:.3e} (logit scale {scale:.2f}), token ids of the prompt "
          f"{'identical' if same_ids else 'DIFFERENT'} to {against}'s")
    if err > a.rtol * scale or not same_ids:
        sys.exit(1)


if __name__ == "__main__":
    main()
