"""PyTorch counterpart of `cargo run --release --example forward_bench`: SmolLM2-135M-Instruct
(the same Q4_1 GGUF, dequantized to fp32 by transformers), one forward over 8 x 168 tokens,
2 threads, median of RUNS after one warm-up, without and with autograd."""
import os
import time

import torch
from transformers import AutoModelForCausalLM

torch.set_num_threads(int(os.environ.get("BENCH_THREADS", "2")))
RUNS = int(os.environ.get("RUNS", "5"))
here = os.path.dirname(os.path.abspath(__file__))
model = AutoModelForCausalLM.from_pretrained(os.path.join(here, "..", "models"),
                                             gguf_file="SmolLM2-135M-Instruct.Q4_1.gguf", dtype=torch.float32)
B, T = 8, 168
ids = (torch.arange(B * T) * 7919 + 13) % model.config.vocab_size
ids = ids.reshape(B, T)
mask = torch.ones_like(ids)
for label, grad in [("no-grad", False), ("grad-tracked", True)]:
    with torch.set_grad_enabled(grad):
        model(input_ids=ids, attention_mask=mask).logits.sum()
        times = []
        for _ in range(RUNS):
            t0 = time.perf_counter()
            model(input_ids=ids, attention_mask=mask).logits.sum().item()
            times.append(time.perf_counter() - t0)
    med = sorted(times)[len(times) // 2]
    print(f"torch forward {B}x{T} ({label}): median {med:.3f} s over {RUNS} runs = {B * T / med:.0f} tok/s")
