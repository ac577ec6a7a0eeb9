#!/usr/bin/env python3
"""A random Hugging Face checkpoint of one layer at a real model's attention
shape, for timing `attn layer` (BENCHMARKS.md). Run by hand, never by make
check; needs torch, transformers and safetensors (e.g. the venv of
tools/bench-peers.sh).

    gen-bench-layer.py DIR --family F [--seq S]

builds the family's model class from its published attention settings with
one layer, a tiny vocabulary and a tiny MLP (neither is read by `attn
layer`), random weights in bf16 as the published checkpoints store them, and
writes it with save_pretrained (so the tensor names and layouts are the real
ones: packed qkv, Conv1D, per-head query_key_value), plus DIR/x.npy, [1, S, E]
float32 hidden states. Families: see FAMILIES."""
import argparse
import os

import numpy as np
import torch

# model_type and the attention-relevant part of each published config.
FAMILIES = {
    "llama3-8b": ("llama", dict(hidden_size=4096, num_attention_heads=32, num_key_value_heads=8,
                                rope_theta=500000.0, max_position_embeddings=131072,
                                rope_scaling=dict(rope_type="llama3", factor=8.0,
                                                  low_freq_factor=1.0, high_freq_factor=4.0,
                                                  original_max_position_embeddings=8192))),
    "mistral-7b": ("mistral", dict(hidden_size=4096, num_attention_heads=32, num_key_value_heads=8,
                                   sliding_window=4096, rope_theta=10000.0)),
    "qwen2-7b": ("qwen2", dict(hidden_size=3584, num_attention_heads=28, num_key_value_heads=4,
                               rope_theta=1000000.0, max_position_embeddings=32768)),
    "qwen3-8b": ("qwen3", dict(hidden_size=4096, num_attention_heads=32, num_key_value_heads=8,
                               head_dim=128, rope_theta=1000000.0)),
    "gemma2-9b": ("gemma2", dict(hidden_size=3584, num_attention_heads=16, num_key_value_heads=8,
                                 head_dim=256, query_pre_attn_scalar=256,
                                 attn_logit_softcapping=50.0, sliding_window=4096,
                                 layer_types=["sliding_attention"])),
    "gemma3-12b": ("gemma3_text", dict(hidden_size=3840, num_attention_heads=16,
                                       num_key_value_heads=8, head_dim=256,
                                       query_pre_attn_scalar=256, sliding_window=1024,
                                       layer_types=["sliding_attention"])),
    "phi3-mini": ("phi3", dict(hidden_size=3072, num_attention_heads=32, num_key_value_heads=32,
                               rope_theta=10000.0)),
    "gpt-oss-20b": ("gpt_oss", dict(hidden_size=2880, num_attention_heads=64,
                                    num_key_value_heads=8, head_dim=64, sliding_window=128,
                                    layer_types=["sliding_attention"], num_local_experts=2,
                                    num_experts_per_tok=1)),
    "bert-base": ("bert", dict(hidden_size=768, num_attention_heads=12)),
    "gpt2": ("gpt2", dict(n_embd=768, n_head=12, n_positions=1024, n_inner=16)),
    "bloom-560m": ("bloom", dict(hidden_size=1024, n_head=16)),
}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("dir")
    ap.add_argument("--family", default="llama3-8b", choices=sorted(FAMILIES))
    ap.add_argument("--seq", type=int, default=512)
    a = ap.parse_args()
    mt, attn = FAMILIES[a.family]
    from transformers import AutoConfig, AutoModel
    small = dict(vocab_size=16, pad_token_id=0)
    if mt == "gpt2":
        small.update(n_layer=1)
    elif mt == "bloom":
        small.update(n_layer=1)
    else:
        small.update(num_hidden_layers=1, intermediate_size=16)
    if mt == "bert":
        small.update(max_position_embeddings=a.seq, type_vocab_size=1)
    cfg = AutoConfig.for_model(mt, **attn, **small)
    torch.manual_seed(1)
    model = AutoModel.from_config(cfg, torch_dtype=torch.bfloat16)
    model.save_pretrained(a.dir, safe_serialization=True)
    E = cfg.hidden_size
    x = np.random.default_rng(2).standard_normal((1, a.seq, E)).astype(np.float32)
    np.save(os.path.join(a.dir, "x.npy"), x)
    np.save(os.path.join(a.dir, "x_prefix.npy"), x[:, : a.seq - 16].copy())


if __name__ == "__main__":
    main()
