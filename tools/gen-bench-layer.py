#!/usr/bin/env python3
"""A random Hugging Face checkpoint of one attention layer at a real model's
shape, for timing `attn layer` (BENCHMARKS.md). Run by hand, never by make
check; needs torch, transformers and safetensors (e.g. the venv of
tools/bench-peers.sh).

    gen-bench-layer.py DIR [--family llama3-8b|qwen2-7b|gemma2-9b] [--seq S]

writes DIR/config.json (the family's real config, one layer), DIR/
model.safetensors (layer 0's attention weights, and its input norm, random,
bf16 as the published checkpoints store them) and DIR/x.npy ([1, S, E]
float32 hidden states)."""
import argparse
import os

import numpy as np
import torch
from safetensors.torch import save_file

FAMILIES = {
    # model_type, hidden, heads, kv heads, head dim, extra config
    "llama3-8b": ("llama", 4096, 32, 8, 128, dict(rope_theta=500000.0, rope_scaling=dict(
        rope_type="llama3", factor=8.0, low_freq_factor=1.0, high_freq_factor=4.0,
        original_max_position_embeddings=8192), max_position_embeddings=131072)),
    "qwen2-7b": ("qwen2", 3584, 28, 4, 128, dict(rope_theta=1000000.0,
                                                   max_position_embeddings=32768)),
    "gemma2-9b": ("gemma2", 3584, 16, 8, 256, dict(query_pre_attn_scalar=256,
                                                    attn_logit_softcapping=50.0,
                                                    final_logit_softcapping=30.0,
                                                    sliding_window=4096,
                                                    layer_types=["sliding_attention"],
                                                    max_position_embeddings=8192)),
}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("dir")
    ap.add_argument("--family", default="llama3-8b", choices=sorted(FAMILIES))
    ap.add_argument("--seq", type=int, default=512)
    a = ap.parse_args()
    mt, E, H, Hkv, D, extra = FAMILIES[a.family]
    from transformers import AutoConfig
    cfg = AutoConfig.for_model(mt, hidden_size=E, num_attention_heads=H,
                               num_key_value_heads=Hkv, head_dim=D, num_hidden_layers=1,
                               intermediate_size=4 * E, vocab_size=1024, **extra)
    os.makedirs(a.dir, exist_ok=True)
    cfg.to_json_file(os.path.join(a.dir, "config.json"))
    g = torch.Generator().manual_seed(1)
    std = E ** -0.5

    def w(o, i):
        return (torch.randn(o, i, generator=g) * std).to(torch.bfloat16)

    p = "model.layers.0."
    t = {p + "self_attn.q_proj.weight": w(H * D, E), p + "self_attn.k_proj.weight": w(Hkv * D, E),
         p + "self_attn.v_proj.weight": w(Hkv * D, E), p + "self_attn.o_proj.weight": w(E, H * D),
         p + "input_layernorm.weight": torch.ones(E, dtype=torch.bfloat16)}
    if mt == "qwen2":
        for n, o in (("q", H * D), ("k", Hkv * D), ("v", Hkv * D)):
            t[p + f"self_attn.{n}_proj.bias"] = (torch.randn(o, generator=g) * 0.02).to(torch.bfloat16)
    save_file(t, os.path.join(a.dir, "model.safetensors"), metadata={"format": "pt"})
    x = np.random.default_rng(2).standard_normal((1, a.seq, E)).astype(np.float32)
    np.save(os.path.join(a.dir, "x.npy"), x)


if __name__ == "__main__":
    main()
