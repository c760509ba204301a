"""Tiny random Llama / Qwen2 / Qwen3 checkpoints and their transformers logits.

Writes tests/fixtures/tiny-{llama,qwen2,qwen3}/ with config.json, model.safetensors and
reference.safetensors (inputs, mask, position ids, per-position logits for batch 1 and a
left-padded batch 2). Re-run to regenerate; seeds are fixed.

    python scripts/make_tiny_fixtures.py     # needs: torch transformers safetensors

The weights are drawn with a larger spread than a fresh init (std 0.2, norm weights 1 ± 0.3,
random biases) so logits differ by O(1) between tokens and a wrong op cannot hide in the noise.
"""
import json
import os
import sys

import torch
import transformers
from safetensors.torch import save_file
from transformers import LlamaConfig, LlamaForCausalLM, Qwen2Config, Qwen2ForCausalLM, Qwen3Config, Qwen3ForCausalLM

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests", "fixtures")
COMMON = dict(vocab_size=128, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
              num_attention_heads=4, num_key_value_heads=2, rms_norm_eps=1e-5,
              max_position_embeddings=256, bos_token_id=1, eos_token_id=2)

MODELS = {
    # Llama-3.x style rope scaling, so the llama3 frequency rewrite is exercised; untied head.
    "tiny-llama": (LlamaForCausalLM, LlamaConfig(**COMMON, tie_word_embeddings=False, rope_theta=10000.0,
                   rope_scaling={"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                                 "high_freq_factor": 4.0, "original_max_position_embeddings": 32})),
    # q/k/v bias; untied head.
    "tiny-qwen2": (Qwen2ForCausalLM, Qwen2Config(**COMMON, tie_word_embeddings=False, rope_theta=1000000.0)),
    # explicit head_dim != hidden/heads, q/k norm, tied embeddings.
    "tiny-qwen3": (Qwen3ForCausalLM, Qwen3Config(**COMMON, head_dim=32, tie_word_embeddings=True,
                   rope_theta=1000000.0)),
}

SEQ_A = [5, 17, 99, 3, 64, 127, 8, 42, 42, 77, 11, 0]  # 12 tokens
SEQ_B = [9, 100, 23, 54, 1, 88, 31]  # 7 tokens, left-padded to 12 in the batch


def randomize(model, gen):
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("norm.weight"):
                p.copy_(1.0 + 0.3 * torch.randn(p.shape, generator=gen))
            else:
                p.copy_(0.2 * torch.randn(p.shape, generator=gen))


CHATML = ("{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' }}"
          "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}")


def write_tokenizer(out):
    """A 128-word word-level tokenizer so the directory loads end to end like a real checkpoint."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    words = ["<unk>", "<s>", "</s>", "<|im_start|>", "<|im_end|>"] + [f"w{i}" for i in range(5, 128)]
    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok.add_special_tokens(["<s>", "</s>", "<|im_start|>", "<|im_end|>"])
    tok.save(os.path.join(out, "tokenizer.json"))
    with open(os.path.join(out, "tokenizer_config.json"), "w") as f:
        json.dump({"bos_token": "<s>", "eos_token": "</s>", "chat_template": CHATML}, f, indent=1)


def main():
    torch.manual_seed(0)
    for i, (name, (cls, cfg)) in enumerate(MODELS.items()):
        gen = torch.Generator().manual_seed(1234 + i)
        cfg._attn_implementation = "eager"
        model = cls(cfg).to(torch.float32).eval()
        randomize(model, gen)
        out = os.path.join(ROOT, name)
        os.makedirs(out, exist_ok=True)
        model.save_pretrained(out, safe_serialization=True)
        write_tokenizer(out)

        T = len(SEQ_A)
        pad = T - len(SEQ_B)
        ids = torch.tensor([SEQ_A, [0] * pad + SEQ_B])
        mask = torch.tensor([[1] * T, [0] * pad + [1] * len(SEQ_B)])
        # Positions count real tokens, so a left-padded row is positioned as if alone.
        pos = (mask.cumsum(-1) - 1).clamp(min=0)
        with torch.no_grad():
            batch = model(input_ids=ids, attention_mask=mask, position_ids=pos).logits
            single_a = model(input_ids=ids[:1]).logits
            single_b = model(input_ids=torch.tensor([SEQ_B])).logits
        # Sanity: the reference itself must agree with itself across padding.
        da = (batch[0] - single_a[0]).abs().max().item()
        db = (batch[1, pad:] - single_b[0]).abs().max().item()
        assert da < 1e-5 and db < 1e-5, (name, da, db)
        save_file({
            "input_ids": ids.to(torch.int64).contiguous(),
            "attention_mask": mask.to(torch.int64).contiguous(),
            "position_ids": pos.to(torch.int64).contiguous(),
            "logits_batch": batch.contiguous(),
            "logits_single_a": single_a.contiguous(),
            "logits_single_b": single_b.contiguous(),
        }, os.path.join(out, "reference.safetensors"),
            metadata={"transformers": transformers.__version__, "torch": torch.__version__})
        print(f"{name}: max |logit| {batch.abs().max().item():.3f}, pad self-check {max(da, db):.2e}")


if __name__ == "__main__":
    sys.exit(main())
