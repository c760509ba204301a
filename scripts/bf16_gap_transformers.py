"""transformers' own bf16-vs-f32 log-prob gap on the tiny fixtures, the yardstick for
tests/rollout_backends.rs::the_decoder_in_bf16_tracks_f32. Run from the repository root with the
reference venv (scripts/make-reference-fixtures.sh installs it). Printed 2026-11-30:
  tiny-llama max 0.1118 mean 0.01526
  tiny-qwen2 max 0.2858 mean 0.02179
  tiny-qwen3 max 0.1220 mean 0.01922
"""
import torch, sys
from transformers import AutoModelForCausalLM
from safetensors.torch import load_file
for name in ["tiny-llama","tiny-qwen2","tiny-qwen3"]:
    d=f"tests/fixtures/{name}"
    r=load_file(f"{d}/reference.safetensors")
    ids=r["input_ids"].long(); am=r["attention_mask"].long()
    out={}
    for dt in [torch.float32, torch.bfloat16]:
        m=AutoModelForCausalLM.from_pretrained(d, torch_dtype=dt, attn_implementation="eager")
        with torch.no_grad():
            pos=(am.cumsum(-1)-1).clamp(min=0)
            lg=m(input_ids=ids, attention_mask=am, position_ids=pos).logits.float()
        out[dt]=torch.log_softmax(lg,-1)*am[...,None]
    g=(out[torch.float32]-out[torch.bfloat16]).abs()
    print(name, "max %.4f mean %.5f"%(g.max().item(), g.mean().item()))
