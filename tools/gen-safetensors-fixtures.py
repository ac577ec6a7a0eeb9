#!/usr/bin/env python3
"""Writes the checkpoints of tests/test_safetensors.c with the Python
safetensors package (an implementation independent of tools/safetensors.c),
the values they must read as in .npy files numpy writes, and the seeds of
tests/fuzz/corpus/safetensors. The tests only read the committed files; this
script documents how they were made. Run by hand from the source root:

    python3 tools/gen-safetensors-fixtures.py   (safetensors, numpy, ml_dtypes)

tests/data/safetensors/
  single/     model.safetensors and config.json
  sharded/    the same tensors in two shards with model.safetensors.index.json
              (and one tensor the index does not name), and config.json
  expected/   <tensor name>.npy: each float tensor as float32, widened by
              numpy (float16) and ml_dtypes (bfloat16)
The I64 tensor model.position_ids holds arange(16) as [1, 16]."""
import json
import os
import shutil
import struct

import ml_dtypes
import numpy as np
from safetensors.numpy import save, save_file

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
DATA = os.path.join(ROOT, "tests", "data", "safetensors")
CORPUS = os.path.join(ROOT, "tests", "fuzz", "corpus", "safetensors")

rng = np.random.default_rng(20240611)
f32, f16, bf16 = np.float32, np.float16, ml_dtypes.bfloat16
nan, inf = float("nan"), float("inf")


def with_specials(a, specials):
    """a (float32) with its first elements replaced by specials, in a's type
    once cast (the casts round to nearest even)."""
    flat = a.reshape(-1).copy()
    flat[: len(specials)] = np.array(specials, dtype=np.float32)
    return flat.reshape(a.shape)


L = "model.layers.0."
q = with_specials(rng.standard_normal((8, 8)).astype(f32),
                  [nan, inf, -inf, -0.0, 1e-45, 3.4028235e38, 1.17549435e-38])
k = with_specials(rng.standard_normal((4, 8)).astype(f32),
                  [nan, inf, -inf, -0.0, 2.0**-24, 2.0**-14, 65504.0, -65504.0, 1.0 + 2.0**-10])
v = with_specials(rng.standard_normal((4, 8)).astype(f32),
                  [nan, inf, -inf, -0.0, 2.0**-133, 3.3895314e38, 1.0 + 2.0**-7])
tensors = {
    L + "self_attn.q_proj.weight": q,
    L + "self_attn.k_proj.weight": k.astype(f16),
    L + "self_attn.v_proj.weight": v.astype(bf16),
    L + "self_attn.o_proj.weight": rng.standard_normal((8, 8)).astype(f32).astype(bf16),
    L + "input_layernorm.weight": (1 + 0.1 * rng.standard_normal(8)).astype(f32),
    "model.embed_tokens.weight": rng.standard_normal((16, 8)).astype(f16),
    # Tensors a layer does not read, of other dtypes.
    "model.position_ids": np.arange(16, dtype=np.int64).reshape(1, 16),
    L + "mlp.gate_proj.weight_scale": np.array([0.5, 1, 2, 448], dtype=f32).astype(
        ml_dtypes.float8_e4m3fn),
}
floats = [n for n, t in tensors.items() if t.dtype in (f32, f16, bf16)]

config = {
    "architectures": ["LlamaForCausalLM"],
    "model_type": "llama",
    "hidden_size": 8,
    "num_attention_heads": 2,
    "num_key_value_heads": 1,
    "head_dim": 4,
    "max_position_embeddings": 64,
    "rms_norm_eps": 1e-06,
    "rope_theta": 10000.0,
    "attention_bias": False,
    "sliding_window": None,
    "rope_scaling": {"rope_type": "llama3", "factor": 8.0, "original_max_position_embeddings": 32},
    "layer_types": ["full_attention", "sliding_attention"],
    "torch_dtype": "bfloat16",
}


def reset(d):
    shutil.rmtree(d, ignore_errors=True)
    os.makedirs(d)


def write_config(d):
    with open(os.path.join(d, "config.json"), "w") as f:
        json.dump(config, f, indent=2)
        f.write("\n")


reset(DATA)
for d in ("single", "sharded", "expected"):
    os.makedirs(os.path.join(DATA, d))

single = os.path.join(DATA, "single")
save_file(tensors, os.path.join(single, "model.safetensors"), metadata={"format": "pt"})
write_config(single)

sharded = os.path.join(DATA, "sharded")
names = list(tensors)
shards = {"model-00001-of-00002.safetensors": names[:3] + names[6:7],
          "model-00002-of-00002.safetensors": names[3:6] + names[7:]}
weight_map, total = {}, 0
for shard, members in shards.items():
    part = {n: tensors[n] for n in members}
    extra = {"lm_head.unlisted": np.zeros(2, f32)} if shard.startswith("model-00002") else {}
    save_file({**part, **extra}, os.path.join(sharded, shard), metadata={"format": "pt"})
    for n in members:
        weight_map[n] = shard
        total += tensors[n].nbytes
with open(os.path.join(sharded, "model.safetensors.index.json"), "w") as f:
    json.dump({"metadata": {"total_size": total}, "weight_map": dict(sorted(weight_map.items()))},
              f, indent=2)
    f.write("\n")
write_config(sharded)

for n in floats:
    np.save(os.path.join(DATA, "expected", n + ".npy"), tensors[n].astype(np.float32))

# ---- fuzz seeds: the files above and small crafted headers ---------------------------


def image(header, data=b""):
    """A safetensors image from header text (str) and data bytes."""
    h = header.encode("utf-8")
    return struct.pack("<Q", len(h)) + h + data


def entry(dtype, shape, b, e):
    return {"dtype": dtype, "shape": shape, "data_offsets": [b, e]}


reset(CORPUS)
seeds = {
    "single.safetensors": open(os.path.join(single, "model.safetensors"), "rb").read(),
    "shard2.safetensors": open(os.path.join(sharded, "model-00002-of-00002.safetensors"),
                               "rb").read(),
    "small.safetensors": save({"a": np.ones((2, 2), f16), "b": np.zeros(3, bf16)}),
    "empty.safetensors": image("{}"),
    "metadata.safetensors": image(json.dumps({"__metadata__": {"format": "pt", "k": "v"}})),
    "scalar_zero.safetensors": image(json.dumps({"s": entry("F32", [], 0, 4),
                                                 "z": entry("I64", [0, 3], 4, 4)}), b"\0" * 4),
    "f4.safetensors": image(json.dumps({"p": entry("F4", [2, 3], 0, 3)}), b"\0" * 3),
    "overlap.safetensors": image(json.dumps({"a": entry("U8", [4], 0, 4),
                                             "b": entry("U8", [4], 2, 6)}), b"\0" * 6),
    "gap.safetensors": image(json.dumps({"a": entry("U8", [2], 0, 2),
                                         "b": entry("U8", [2], 4, 6)}), b"\0" * 6),
    "bytes.safetensors": image(json.dumps({"a": entry("F32", [2, 3], 0, 20)}), b"\0" * 20),
    "dup.safetensors": image('{"a":{"dtype":"U8","shape":[1],"data_offsets":[0,1]},'
                             '"a":{"dtype":"U8","shape":[1],"data_offsets":[0,1]}}', b"\0"),
    "unicode.safetensors": image(json.dumps({"caf\u00e9.\U0001F600": entry("BOOL", [1], 0, 1)},
                                            ensure_ascii=False), b"\1"),
    "nested.safetensors": image('{"__metadata__":{"a":"b"},"x":[[[{"y":[1,2.5e3,-0]}]]]}'),
    "config.json": json.dumps(config).encode(),
}
for n, b in seeds.items():
    with open(os.path.join(CORPUS, n), "wb") as f:
        f.write(b)
