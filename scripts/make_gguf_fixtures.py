"""Writes tests/fixtures/gguf/*.gguf from the tiny HF fixtures with the `gguf` Python package
(llama.cpp's own GGUF writer), so the Rust loader is checked against a file it did not write.

What llama.cpp's `convert_hf_to_gguf.py` does and this script repeats, written from its
published behaviour: tensor names `token_embd`, `blk.N.attn_q`, …; llama Q/K rows permuted into
llama.cpp's interleaved rotary order, `w.reshape(n, 2, d/2, in).swapaxes(1, 2)`; llama3 rope
scaling stored as a `rope_freqs.weight` tensor of per-frequency divisors; 1-D tensors in F32.

Usage (any env with numpy, safetensors and gguf; scripts/requirements-reference.txt pins them):
    python scripts/make_gguf_fixtures.py
"""
import json
import math
import pathlib

import numpy as np
from gguf import GGMLQuantizationType, GGUFWriter
from gguf.quants import quantize
from safetensors.numpy import load_file

ROOT = pathlib.Path(__file__).resolve().parent.parent
FIX = ROOT / "tests" / "fixtures"
OUT = FIX / "gguf"

LAYER_NAMES = {
    "input_layernorm": "attn_norm",
    "post_attention_layernorm": "ffn_norm",
    "self_attn.q_proj": "attn_q",
    "self_attn.k_proj": "attn_k",
    "self_attn.v_proj": "attn_v",
    "self_attn.o_proj": "attn_output",
    "self_attn.q_norm": "attn_q_norm",
    "self_attn.k_norm": "attn_k_norm",
    "mlp.gate_proj": "ffn_gate",
    "mlp.up_proj": "ffn_up",
    "mlp.down_proj": "ffn_down",
}


def gguf_name(hf):
    top = {
        "model.embed_tokens.weight": "token_embd.weight",
        "model.norm.weight": "output_norm.weight",
        "lm_head.weight": "output.weight",
    }
    if hf in top:
        return top[hf]
    rest = hf[len("model.layers."):]
    layer, rest = rest.split(".", 1)
    module, param = rest.rsplit(".", 1)
    return f"blk.{layer}.{LAYER_NAMES[module]}.{param}"


def permute(w, n_head):
    # convert_hf_to_gguf.py LlamaModel.permute
    return (
        w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:])
        .swapaxes(1, 2)
        .reshape(w.shape)
    )


def llama3_rope_freqs(cfg, head_dim):
    rp = cfg["rope_parameters"]
    base, factor = rp["rope_theta"], rp["factor"]
    low, high = rp["low_freq_factor"], rp["high_freq_factor"]
    old = rp["original_max_position_embeddings"]
    freqs = 1.0 / (base ** (np.arange(0, head_dim, 2, dtype=np.float64) / head_dim))
    out = []
    for f in freqs:
        wavelen = 2 * math.pi / f
        if wavelen < old / high:
            out.append(1.0)
        elif wavelen > old / low:
            out.append(factor)
        else:
            smooth = (old / wavelen - low) / (high - low)
            out.append(1.0 / ((1 - smooth) / factor + smooth))
    return np.array(out, dtype=np.float32)


def write(name, arch, qtype, suffix):
    src = FIX / name
    cfg = json.loads((src / "config.json").read_text())
    tensors = load_file(str(src / "model.safetensors"))
    head_dim = cfg.get("head_dim") or cfg["hidden_size"] // cfg["num_attention_heads"]
    rope_theta = cfg.get("rope_theta") or cfg.get("rope_parameters", {}).get("rope_theta", 10000.0)
    path = OUT / f"{name}.{suffix}.gguf"
    w = GGUFWriter(str(path), arch)
    w.add_name(f"{name} (rlzero test fixture)")
    w.add_context_length(cfg["max_position_embeddings"])
    w.add_embedding_length(cfg["hidden_size"])
    w.add_feed_forward_length(cfg["intermediate_size"])
    w.add_block_count(cfg["num_hidden_layers"])
    w.add_head_count(cfg["num_attention_heads"])
    w.add_head_count_kv(cfg["num_key_value_heads"])
    w.add_key_length(head_dim)
    w.add_value_length(head_dim)
    w.add_layer_norm_rms_eps(cfg["rms_norm_eps"])
    w.add_rope_freq_base(rope_theta)
    w.add_rope_dimension_count(head_dim)
    w.add_vocab_size(cfg["vocab_size"])
    for hf in sorted(tensors):
        t = tensors[hf].astype(np.float32)
        if arch == "llama" and hf.endswith("q_proj.weight"):
            t = permute(t, cfg["num_attention_heads"])
        if arch == "llama" and hf.endswith("k_proj.weight"):
            t = permute(t, cfg["num_key_value_heads"])
        if t.ndim == 2 and qtype != GGMLQuantizationType.F32:
            w.add_tensor(gguf_name(hf), quantize(t, qtype), raw_dtype=qtype)
        else:
            w.add_tensor(gguf_name(hf), t)
    if cfg.get("rope_parameters", {}).get("rope_type") == "llama3":
        w.add_tensor("rope_freqs.weight", llama3_rope_freqs(cfg, head_dim))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    print(path.relative_to(ROOT), path.stat().st_size, "bytes")


if __name__ == "__main__":
    OUT.mkdir(exist_ok=True)
    write("tiny-llama", "llama", GGMLQuantizationType.F32, "f32")
    write("tiny-qwen3", "qwen3", GGMLQuantizationType.F32, "f32")
    write("tiny-llama", "llama", GGMLQuantizationType.Q8_0, "q8_0")
