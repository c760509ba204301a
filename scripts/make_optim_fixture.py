#!/usr/bin/env python3
"""Generate tests/fixtures/grpo/adamw.json: torch/transformers reference values for rlzero's
optimizer module (crates/rlzero-grpo/src/optim.rs, schedule.rs).

What it records
  * adamw:     torch.optim.AdamW(foreach=False, fused=False, amsgrad=False) on three small
               parameters (shapes (3, 4), (5,), (2, 2)) for 5 steps with seeded random
               gradients, weight_decay 0.0 and 0.1, float32 and float64; the learning rate of
               each step comes from transformers' linear-with-warmup schedule (warmup 2, total
               5, so step 0 runs at lr 0). Initial params, per-step lr/grads/params and the
               final exp_avg / exp_avg_sq / step are stored.
  * clip:      torch.nn.utils.clip_grad_norm_(foreach=False) on seeded gradients: the returned
               (pre-clip) total norm and the gradients afterwards; float32 and float64, and
               one case whose max_norm is above the norm (no scaling).
  * schedules: transformers.get_scheduler("constant" | "constant_with_warmup" | "linear" |
               "cosine") with warmup 3 and 10 training steps, run for 12 optimizer steps
               (two past the end) through LambdaLR: the lr in param_groups before each
               optimizer step.
  * warmup:    TrainingArguments(warmup_steps=<ratio in [0, 1)>).get_warmup_steps(total).

Floats are written with Python's repr (float32 values widened exactly to float64), so every
value round-trips bit-exactly.

How to run (needs torch and transformers; the versions used are recorded in the file):
    python scripts/make_optim_fixture.py [--out tests/fixtures/grpo/adamw.json]
"""

import argparse
import json
import os
import re

import torch
import transformers
from transformers import TrainingArguments, get_scheduler

SHAPES = [(3, 4), (5,), (2, 2)]
ADAMW_STEPS = 5
ADAMW_WARMUP = 2
BASE_LR = 1e-2
BETAS = (0.9, 0.999)
EPS = 1e-8

SCHED_STEPS = 12
SCHED_WARMUP = 3
SCHED_TOTAL = 10
SCHED_BASE_LR = 1e-6  # TRL GRPOConfig.learning_rate


def flat(t):
    return [float(x) for x in t.detach().reshape(-1).tolist()]


def dtype_name(dtype):
    return {torch.float32: "float32", torch.float64: "float64"}[dtype]


def adamw_case(dtype, weight_decay, seed):
    gen = torch.Generator().manual_seed(seed)
    params = [
        torch.randn(s, generator=gen, dtype=torch.float64).to(dtype).requires_grad_()
        for s in SHAPES
    ]
    init = [flat(p) for p in params]
    opt = torch.optim.AdamW(
        params,
        lr=BASE_LR,
        betas=BETAS,
        eps=EPS,
        weight_decay=weight_decay,
        amsgrad=False,
        foreach=False,
        fused=False,
    )
    sched = get_scheduler(
        "linear", opt, num_warmup_steps=ADAMW_WARMUP, num_training_steps=ADAMW_STEPS
    )
    steps = []
    for _ in range(ADAMW_STEPS):
        lr = opt.param_groups[0]["lr"]
        grads = []
        for p in params:
            g = torch.randn(p.shape, generator=gen, dtype=torch.float64).to(dtype)
            p.grad = g
            grads.append(flat(g))
        opt.step()
        sched.step()
        steps.append({"lr": lr, "grads": grads, "params": [flat(p) for p in params]})
    state = [opt.state[p] for p in params]
    return {
        "name": f"{dtype_name(dtype)}_wd{weight_decay}",
        "dtype": dtype_name(dtype),
        "base_lr": BASE_LR,
        "beta1": BETAS[0],
        "beta2": BETAS[1],
        "eps": EPS,
        "weight_decay": weight_decay,
        "schedule": {"type": "linear", "warmup_steps": ADAMW_WARMUP, "total_steps": ADAMW_STEPS},
        "shapes": [list(s) for s in SHAPES],
        "init": init,
        "steps": steps,
        "final_state": [
            {
                "step": int(s["step"].item()),
                "exp_avg": flat(s["exp_avg"]),
                "exp_avg_sq": flat(s["exp_avg_sq"]),
            }
            for s in state
        ],
    }


def clip_case(dtype, max_norm, scale, seed):
    gen = torch.Generator().manual_seed(seed)
    params = [torch.zeros(s, dtype=dtype, requires_grad=True) for s in SHAPES]
    grads = []
    for p in params:
        p.grad = (torch.randn(p.shape, generator=gen, dtype=torch.float64) * scale).to(dtype)
        grads.append(flat(p.grad))
    total = torch.nn.utils.clip_grad_norm_(params, max_norm, norm_type=2.0, foreach=False)
    return {
        "dtype": dtype_name(dtype),
        "max_norm": max_norm,
        "shapes": [list(s) for s in SHAPES],
        "grads": grads,
        "total_norm": float(total.item()),
        "grads_after": [flat(p.grad) for p in params],
    }


def schedule_lrs(name):
    p = torch.zeros(1, requires_grad=True)
    opt = torch.optim.SGD([p], lr=SCHED_BASE_LR)
    sched = get_scheduler(
        name, opt, num_warmup_steps=SCHED_WARMUP, num_training_steps=SCHED_TOTAL
    )
    lrs = []
    for _ in range(SCHED_STEPS):
        lrs.append(opt.param_groups[0]["lr"])
        p.grad = torch.zeros(1)
        opt.step()
        sched.step()
    return lrs


def warmup_cases():
    out = []
    for ratio, total in [(0.0, 25), (0.1, 25), (0.05, 100), (0.33, 10), (0.5, 7)]:
        args = TrainingArguments(output_dir="/tmp/rlzero-optim-fixture", warmup_steps=ratio)
        out.append({"ratio": ratio, "total_steps": total, "warmup_steps": args.get_warmup_steps(total)})
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="tests/fixtures/grpo/adamw.json")
    args = ap.parse_args()
    fixture = {
        "generator": "scripts/make_optim_fixture.py",
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "adamw": [
            adamw_case(dtype, wd, seed=seed)
            for seed, (dtype, wd) in enumerate(
                [(torch.float32, 0.0), (torch.float32, 0.1), (torch.float64, 0.0), (torch.float64, 0.1)]
            )
        ],
        "clip": [
            clip_case(torch.float32, 1.0, 1.0, seed=10),
            clip_case(torch.float64, 0.5, 1.0, seed=11),
            clip_case(torch.float32, 100.0, 1.0, seed=12),  # max_norm above the norm
        ],
        "schedules": {
            "base_lr": SCHED_BASE_LR,
            "warmup_steps": SCHED_WARMUP,
            "total_steps": SCHED_TOTAL,
            "lrs": {
                name: schedule_lrs(name)
                for name in ["constant", "constant_with_warmup", "linear", "cosine"]
            },
        },
        "warmup_ratio": warmup_cases(),
    }
    os.makedirs(os.path.dirname(args.out) or ".", exist_ok=True)
    text = json.dumps(fixture, indent=1)
    # One line per list of numbers: smaller and still diffable.
    text = re.sub(
        r"\[\s*([-+0-9.eE,\s]+?)\s*\]",
        lambda m: "[" + ", ".join(x.strip() for x in m.group(1).split(",")) + "]",
        text,
    )
    with open(args.out, "w") as f:
        f.write(text + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
