#!/usr/bin/env python3
"""Writes the layer-attention fixtures under tests/data/layers/<case>/.

Run by hand, never by `make check` (the tests read only the committed files):

    python3 tools/gen-layer-fixtures.py [--out tests/data/layers] [CASE ...]

Needs torch, numpy, transformers and safetensors.  tests/data/layers/README.md
describes every file; the versions used are in each meta.json.

For each case a tiny model of the family is built in transformers with random
weights and eager attention, converted to float64, and run whole (so that the
model's own rotary embedding, mask creation, ALiBi, caches... are used).  A
forward pre-hook on the attention module of layer N replaces the hidden states
entering it with x.npy (float32 values, so exactly representable), and a
forward hook records what leaves its output projection.  The module is then
called again with the recorded arguments and must give the same output.
Decode cases run the same inputs as a prefill of S-K tokens into a transformers
cache followed by K single-token steps; the concatenated output must equal the
full run on the rows where attention_mask is 1.

Each case runs twice: once as transformers runs a float64 model (it still
computes rotary, the eager softmax and RMSNorm in float32), and once with those
float32 steps turned into float64 (f64_everywhere below); out.npy is the second,
the difference between the two goes into meta.json.  tools/check-layer-fixtures.py
recomputes every out.npy with numpy from the files alone.
"""
import argparse
import inspect
import json
import os
import shutil

import numpy as np
import torch

import safetensors
import safetensors.torch
import transformers
from transformers import AutoConfig, AutoModelForCausalLM

torch.set_grad_enabled(False)

B = 2
E = 64
H = 4
KVH = 2
D = 16


# ---- case table -------------------------------------------------------------------------

def base_cfg(**kw):
    c = dict(hidden_size=E, num_attention_heads=H, num_key_value_heads=KVH, head_dim=D,
             intermediate_size=32, num_hidden_layers=2, vocab_size=32, max_position_embeddings=64,
             rms_norm_eps=1e-6, pad_token_id=0, bos_token_id=1, eos_token_id=2)
    c.update(kw)
    return c


def gpt2_cfg(**kw):
    c = dict(n_embd=E, n_head=H, n_layer=2, n_positions=32, vocab_size=32, n_inner=32,
             attn_pdrop=0.0, resid_pdrop=0.0, embd_pdrop=0.0, bos_token_id=1, eos_token_id=2)
    c.update(kw)
    return c


def bert_cfg(**kw):
    c = dict(hidden_size=E, num_attention_heads=H, num_hidden_layers=2, intermediate_size=32,
             vocab_size=32, max_position_embeddings=32, type_vocab_size=2,
             hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    c.update(kw)
    return c


def bloom_cfg(**kw):
    c = dict(hidden_size=E, n_head=H, n_layer=2, vocab_size=32, hidden_dropout=0.0,
             attention_dropout=0.0, bos_token_id=1, eos_token_id=2, pad_token_id=3)
    c.update(kw)
    return c


def gemma2_cfg(**kw):
    return base_cfg(layer_types=["sliding_attention", "full_attention"], sliding_window=8,
                    query_pre_attn_scalar=32, attn_logit_softcapping=5.0,
                    final_logit_softcapping=None, **kw)


def gemma3_cfg(**kw):
    return base_cfg(layer_types=["sliding_attention", "full_attention"], sliding_window=8,
                    query_pre_attn_scalar=32,
                    rope_parameters={
                        "sliding_attention": {"rope_type": "default", "rope_theta": 10000.0},
                        "full_attention": {"rope_type": "linear", "factor": 8.0, "rope_theta": 1000000.0}},
                    **kw)


def gpt_oss_cfg(**kw):
    return base_cfg(layer_types=["sliding_attention", "full_attention"], sliding_window=8,
                    num_local_experts=4, num_experts_per_tok=2, max_position_embeddings=131072,
                    rope_parameters={"rope_type": "yarn", "factor": 32.0, "beta_fast": 32.0,
                                     "beta_slow": 1.0, "truncate": False,
                                     "original_max_position_embeddings": 4096, "rope_theta": 150000.0},
                    **kw)


# name: (model_type, config kwargs, model class ("causal_lm" or a transformers class name),
#        layer, S, padding ("left" or "right"), cache steps K (0: prefill only),
#        weight dtype, what it exercises)
CASES = {}


def case(name, model_type, cfg, layer, S, pad, K=0, cls="causal_lm", wdtype="float32",
         exercises="", extra=None):
    CASES[name] = dict(model_type=model_type, cfg=cfg, layer=layer, S=S, pad=pad, K=K, cls=cls,
                       wdtype=wdtype, exercises=exercises, extra=extra or [])


# llama
case("llama_left", "llama", base_cfg(), 1, 16, "left", extra=["neighbours"],
     exercises="separate q/k/v/o, GQA 4q/2kv, RoPE default (half split), causal + left padding; "
               "layer 0's attention and layer 1's norms also in the file, to be ignored")
case("llama_right", "llama", base_cfg(), 1, 16, "right",
     exercises="separate q/k/v/o, GQA, RoPE default, causal + right padding")
case("llama_decode", "llama", base_cfg(), 1, 16, "left", K=4,
     exercises="prefill 12 then 4 single-token steps through a DynamicCache, left padding")
case("llama_bf16", "llama", base_cfg(), 1, 16, "left", wdtype="bfloat16",
     exercises="BF16 weights in the safetensors; out from them upcast to float64")
case("llama_rope_linear", "llama",
     base_cfg(rope_parameters={"rope_type": "linear", "factor": 4.0, "rope_theta": 10000.0}),
     1, 16, "left", exercises="rope_type linear (inv_freq / factor)")
case("llama_rope_dynamic", "llama",
     base_cfg(max_position_embeddings=12,
              rope_parameters={"rope_type": "dynamic", "factor": 2.0, "rope_theta": 10000.0}),
     1, 16, "left",
     exercises="rope_type dynamic NTK, active because max(position_ids)+1 = 16 > max_position_embeddings 12")
case("llama_rope_llama3", "llama",
     base_cfg(max_position_embeddings=512,
              rope_parameters={"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                               "high_freq_factor": 4.0, "original_max_position_embeddings": 64,
                               "rope_theta": 10000.0}),
     1, 16, "left", exercises="rope_type llama3 (wavelength-banded inv_freq)")
case("llama_rope_yarn", "llama",
     base_cfg(rope_parameters={"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 16,
                               "rope_theta": 10000.0}),
     1, 16, "left", exercises="rope_type yarn (ramped inv_freq, attention_factor on cos/sin)")
# mistral
for p, K in (("left", 0), ("right", 0), ("decode", 4)):
    case("mistral_" + p, "mistral", base_cfg(sliding_window=8), 1, 20, "right" if p == "right" else "left",
         K=K, exercises="sliding_window 8 on every layer, S 20 > window, GQA"
         + (", decode 16+4 (prefill longer than the window)" if K else ""))
# qwen2
for p, K in (("left", 0), ("right", 0), ("decode", 4)):
    case("qwen2_" + p, "qwen2", base_cfg(), 1, 16, "right" if p == "right" else "left", K=K,
         exercises="q/k/v biased, o not, GQA" + (", decode 12+4" if K else ""))
case("qwen2_f16", "qwen2", base_cfg(), 1, 16, "left", wdtype="float16",
     exercises="F16 weights and biases; out from them upcast to float64")
# qwen3
for p, K in (("left", 0), ("right", 0), ("decode", 4)):
    case("qwen3_" + p, "qwen3", base_cfg(rms_norm_eps=1e-6), 1, 16, "right" if p == "right" else "left",
         K=K, exercises="QK-norm: RMSNorm per head over head_dim with weight w (x*w), before RoPE, GQA"
         + (", decode 12+4" if K else ""))
# gemma2
case("gemma2_left_sliding", "gemma2", gemma2_cfg(), 0, 20, "left",
     exercises="layer 0 sliding_attention window 8, attn_logit_softcapping 5, query_pre_attn_scalar 32")
case("gemma2_right_full", "gemma2", gemma2_cfg(), 1, 20, "right",
     exercises="layer 1 full_attention, softcapping 5, query_pre_attn_scalar 32")
case("gemma2_decode_sliding", "gemma2", gemma2_cfg(), 0, 20, "left", K=4,
     exercises="sliding layer, decode 16+4 through the sliding-window cache")
case("gemma2_decode_full", "gemma2", gemma2_cfg(), 1, 20, "left", K=4,
     exercises="full layer, decode 16+4")
# gemma3 (text)
case("gemma3_left_sliding", "gemma3_text", gemma3_cfg(), 0, 20, "left", extra=["neighbours"],
     exercises="layer 0 sliding window 8, local rope_theta 1e4, QK-norm with (1+w), query_pre_attn_scalar 32; "
               "layer 1's attention and layer 0's norms also in the file, to be ignored")
case("gemma3_right_full", "gemma3_text", gemma3_cfg(), 1, 20, "right",
     exercises="layer 1 full, global rope_theta 1e6 with linear factor 8, QK-norm (1+w)")
case("gemma3_decode_sliding", "gemma3_text", gemma3_cfg(), 0, 20, "left", K=4,
     exercises="sliding layer, decode 16+4")
case("gemma3_decode_full", "gemma3_text", gemma3_cfg(), 1, 20, "left", K=4,
     exercises="full layer, decode 16+4")
# phi3
case("phi3_left", "phi3", base_cfg(rope_parameters={"rope_type": "default", "rope_theta": 10000.0,
                                                    "partial_rotary_factor": 0.5}), 1, 16, "left",
     exercises="packed qkv_proj [q|k|v] with GQA, partial rotary 0.5 (first 8 of 16 dims)")
case("phi3_right", "phi3", base_cfg(), 1, 16, "right",
     exercises="packed qkv_proj, GQA, full rotary")
case("phi3_decode", "phi3", base_cfg(rope_parameters={"rope_type": "default", "rope_theta": 10000.0,
                                                      "partial_rotary_factor": 0.5}), 1, 16, "left", K=4,
     exercises="packed qkv_proj, partial rotary 0.5, decode 12+4")
# gpt2
case("gpt2_left", "gpt2", gpt2_cfg(), 1, 16, "left",
     exercises="Conv1D c_attn [E,3E] and c_proj [E,E] stored [in,out], biases, no rotary, MHA")
case("gpt2_right_bare", "gpt2", gpt2_cfg(scale_attn_by_inverse_layer_idx=True), 1, 16, "right",
     cls="GPT2Model", extra=["gpt2_attn_bias"],
     exercises="names without 'transformer.' (GPT2Model), scale_attn_by_inverse_layer_idx (scale /2 on layer 1), "
               "legacy h.1.attn.bias F32 mask buffer to ignore")
case("gpt2_decode", "gpt2", gpt2_cfg(), 1, 16, "left", K=4, exercises="decode 12+4")
# bert
case("bert_left", "bert", bert_cfg(), 1, 16, "left", cls="BertModel",
     exercises="bidirectional, padding mask only, names without 'bert.' (BertModel), biases")
case("bert_right", "bert", bert_cfg(), 1, 16, "right", cls="BertForMaskedLM", extra=["bert_position_ids"],
     exercises="bidirectional + right padding, names with 'bert.', legacy I64 bert.embeddings.position_ids to ignore")
# gpt_oss
case("gpt_oss_left_sliding", "gpt_oss", gpt_oss_cfg(), 0, 20, "left",
     exercises="layer 0 sliding window 8, sinks, biases on q/k/v/o, yarn factor 32, GQA")
case("gpt_oss_right_full", "gpt_oss", gpt_oss_cfg(), 1, 20, "right",
     exercises="layer 1 full, sinks, yarn")
case("gpt_oss_decode_sliding", "gpt_oss", gpt_oss_cfg(), 0, 20, "left", K=4,
     exercises="sliding layer with sinks, decode 16+4")
# bloom
case("bloom_left", "bloom", bloom_cfg(), 1, 16, "left",
     exercises="query_key_value per-head interleaved [H,(q,k,v),D], ALiBi 4 heads, biases")
case("bloom_right_6heads", "bloom", bloom_cfg(hidden_size=96, n_head=6), 1, 16, "right",
     exercises="ALiBi with 6 heads (not a power of two), hidden 96")
case("bloom_decode", "bloom", bloom_cfg(), 1, 16, "left", K=4, exercises="ALiBi decode 12+4")


# ---- per family: where the attention module is, what leaves it --------------------------

def module_paths(model_type, prefix, layer):
    """(attention module path, path of the module whose output is out.npy, or None for the
    attention module's own first output)."""
    if model_type == "gpt2":
        return f"{prefix}h.{layer}.attn", None
    if model_type == "bloom":
        a = f"{prefix}h.{layer}.self_attention"
        return a, a + ".dense"
    if model_type == "bert":
        a = f"{prefix}encoder.layer.{layer}.attention"
        return a, a + ".output.dense"
    return f"{prefix}layers.{layer}.self_attn", None


def get_module(model, path):
    m = model
    for p in path.split("."):
        m = getattr(m, p) if not p.isdigit() else m[int(p)]
    return m


def build(c):
    cfg = AutoConfig.for_model(c["model_type"], **c["cfg"])
    cfg._attn_implementation = "eager"
    kw = dict(attn_implementation="eager")
    if c["model_type"] == "gpt_oss":   # grouped_mm experts do not take float64
        kw["experts_implementation"] = "eager"
    if c["cls"] == "causal_lm":
        model = AutoModelForCausalLM.from_config(cfg, **kw)
    else:
        model = getattr(transformers, c["cls"])._from_config(cfg, **kw)
    model.eval()
    return cfg, model


def tensor_prefix(model):
    """Prefix of the base model in the state_dict ("model.", "transformer.", "bert." or "")."""
    bp = model.base_model_prefix
    if hasattr(model, bp) and getattr(model, bp) is not model:
        return bp + "."
    return ""


def randomize(attn, rng, model_type):
    """Weights scaled so that attention is far from uniform (logit std ~ 2-5)."""
    for name, p in attn.named_parameters():
        shape = tuple(p.shape)
        leaf = name.split(".")[-1]
        if name.endswith("norm.weight") or "LayerNorm.weight" in name:
            if model_type == "gemma3_text":   # applied as (1 + w)
                v = 0.3 * rng.standard_normal(shape)
            else:
                v = 1.0 + 0.3 * rng.standard_normal(shape)
        elif "LayerNorm.bias" in name:
            v = 0.1 * rng.standard_normal(shape)
        elif leaf == "sinks":
            v = 1.0 + rng.standard_normal(shape)
        elif leaf == "bias":
            v = 0.5 * rng.standard_normal(shape)
        elif leaf == "weight" and len(shape) == 2:
            fan_in = shape[0] if model_type == "gpt2" else shape[1]   # Conv1D stores [in, out]
            gain = 1.0 if any(s in name for s in ("o_proj", "c_proj", "dense", "v_proj", "value")) else 1.6
            v = gain * rng.standard_normal(shape) / np.sqrt(fan_in)
        else:
            raise SystemExit(f"unexpected parameter {name} {shape}")
        p.copy_(torch.from_numpy(v.astype(np.float32)))


# ---- float64 throughout ------------------------------------------------------------------
#
# Even in a float64 model transformers computes a few things in float32: the rotary inv_freq,
# angles and cos/sin, the softmax of eager attention (dtype=torch.float32), RMSNorm (QK-norm).
# Inside f64_everywhere() every float32 request is turned into float64, so out.npy is the same
# algorithm in float64 throughout; the difference to the plain float64 model (with those float32
# parts) is recorded in meta.json as transformers_f32_internals_max_abs_diff.

class f64_everywhere:
    FACTORIES = ("arange", "full", "zeros", "ones", "tensor", "empty", "linspace")

    def __enter__(self):
        f32 = (torch.float32, torch.float)
        fix = lambda a: torch.float64 if any(a is t for t in f32) else a
        self.saved = [(torch.Tensor, "to", torch.Tensor.to), (torch.Tensor, "float", torch.Tensor.float),
                      (torch.nn.functional, "softmax", torch.nn.functional.softmax)]
        self.saved += [(torch, n, getattr(torch, n)) for n in self.FACTORIES]
        to, sm = torch.Tensor.to, torch.nn.functional.softmax

        def _to(self_, *a, **k):
            if "dtype" in k:
                k["dtype"] = fix(k["dtype"])
            return to(self_, *tuple(fix(x) for x in a), **k)

        def _softmax(x, *a, **k):
            if "dtype" in k:
                k["dtype"] = fix(k["dtype"])
            return sm(x, *a, **k)

        def factory(f):
            def g(*a, **k):
                if "dtype" in k:
                    k["dtype"] = fix(k["dtype"])
                return f(*a, **k)
            return g

        torch.Tensor.to = _to
        torch.Tensor.float = lambda self_, *a, **k: self_.double(*a, **k)
        torch.nn.functional.softmax = _softmax
        for n in self.FACTORIES:
            setattr(torch, n, factory(getattr(torch, n)))
        return self

    def __exit__(self, *exc):
        for obj, n, f in self.saved:
            setattr(obj, n, f)
        return False


def rotary_module(model):
    return getattr(getattr(model, model.base_model_prefix, model), "rotary_emb", None)


def reinit_rotary(model, cfg):
    """Recompute the rotary buffers (inside f64_everywhere: in float64)."""
    re = rotary_module(model)
    if re is not None:
        type(re).__init__(re, cfg)
        re.double()


# ---- running ----------------------------------------------------------------------------

class Recorder:
    def __init__(self, model, attn_path, out_path):
        self.attn = get_module(model, attn_path)
        self.outm = get_module(model, out_path) if out_path else None
        self.x = None          # float64 tensor to put in place of the hidden states
        self.outs = []
        self.calls = []
        self.h = [self.attn.register_forward_pre_hook(self.pre, with_kwargs=True)]
        if self.outm is not None:
            self.h.append(self.outm.register_forward_hook(self.post_dense))
        else:
            self.h.append(self.attn.register_forward_hook(self.post_attn))

    def pre(self, module, args, kwargs):
        if args:
            assert args[0].shape == self.x.shape, (args[0].shape, self.x.shape)
            args = (self.x,) + tuple(args[1:])
        else:
            assert kwargs["hidden_states"].shape == self.x.shape
            kwargs = dict(kwargs)
            kwargs["hidden_states"] = self.x
        self.calls.append((args, kwargs))
        return args, kwargs

    def post_attn(self, module, args, out):
        self.outs.append((out[0] if isinstance(out, tuple) else out).clone())

    def post_dense(self, module, args, out):
        self.outs.append(out.clone())

    def remove(self):
        for h in self.h:
            h.remove()


def forward_kwargs(model, embeds, mask, pos, cache=None):
    params = inspect.signature(model.forward).parameters
    kw = dict(inputs_embeds=embeds, attention_mask=mask)
    if "position_ids" in params:
        kw["position_ids"] = pos
    if cache is not None:
        kw["cache" if "cache" in params else "past_key_values"] = cache
    if "use_cache" in params:
        kw["use_cache"] = cache is not None
    return kw


def make_inputs(rng, S, E, pad, npad):
    mask = np.ones((B, S), np.int64)
    if pad == "left":
        mask[1, :npad] = 0
    else:
        mask[1, S - npad:] = 0
    # as transformers' generate computes them (GenerationMixin._prepare_position_ids_for_generation)
    pos = np.cumsum(mask, -1) - 1
    pos[mask == 0] = 0
    x = rng.standard_normal((B, S, E)).astype(np.float32)
    return x, mask, pos


def rope_info(model, c, cfg):
    re = rotary_module(model)
    if re is None:
        return None
    lt = cfg.layer_types[c["layer"]] if getattr(cfg, "layer_types", None) else None
    if isinstance(re.rope_type, dict):
        inv = getattr(re, f"{lt}_inv_freq")
        sc = getattr(re, f"{lt}_attention_scaling")
        rt = re.rope_type[lt]
    else:
        inv, sc, rt = re.inv_freq, re.attention_scaling, re.rope_type
    return {"rope_type": rt, "layer_type": lt, "inv_freq": [float(v) for v in inv],
            "attention_scaling": float(sc), "rotary_dim": 2 * int(inv.numel())}


def run_case(name, c, outdir):
    seed = sum(map(ord, name)) * 7919
    rng = np.random.default_rng(seed)
    torch.manual_seed(seed)
    hid = c["cfg"].get("hidden_size", c["cfg"].get("n_embd"))
    cfg, model = build(c)
    prefix = tensor_prefix(model)
    attn_path, out_path = module_paths(c["model_type"], prefix, c["layer"])
    attn = get_module(model, attn_path)
    randomize(attn, rng, c["model_type"])

    wdt = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[c["wdtype"]]
    # the checkpoint: the layer's attention tensors under their real names, in the weight dtype
    sd = model.state_dict()
    ckpt = {k: v.detach().to(wdt).contiguous() for k, v in sd.items() if k.startswith(attn_path + ".")}
    # the float64 model sees exactly those (rounded) values
    for k, v in ckpt.items():
        model.get_parameter(k).copy_(v.float())
    for e in c["extra"]:
        if e == "gpt2_attn_bias":   # as in the original GPT-2 checkpoints: tril mask [1,1,n_positions,n_positions]
            n = cfg.n_positions
            ckpt[f"{prefix}h.{c['layer']}.attn.bias"] = torch.tril(torch.ones(n, n)).view(1, 1, n, n)
        elif e == "neighbours":   # the other layer's attention, this layer's norms: real tensors to ignore
            other = f"{prefix}layers.{1 - c['layer']}.self_attn."
            mine = f"{prefix}layers.{c['layer']}."
            for k, v in sd.items():
                if k.startswith(other) or (k.startswith(mine) and "layernorm" in k):
                    ckpt[k] = v.detach().to(wdt).contiguous()
        elif e == "bert_position_ids":   # as in older BERT checkpoints
            ckpt[f"{prefix}embeddings.position_ids"] = torch.arange(cfg.max_position_embeddings,
                                                                    dtype=torch.int64).view(1, -1)
    model.double()

    S, K = c["S"], c["K"]
    npad = 5 if c["pad"] == "left" else 4
    x, mask, pos = make_inputs(rng, S, hid, c["pad"], npad)
    embeds = torch.from_numpy(rng.standard_normal((B, S, hid))).double()
    tx, tmask, tpos = torch.from_numpy(x).double(), torch.from_numpy(mask), torch.from_numpy(pos)
    valid = mask.astype(bool)

    def full_run():
        rec = Recorder(model, attn_path, out_path)
        rec.x = tx
        model(**forward_kwargs(model, embeds, tmask, tpos))
        assert len(rec.outs) == 1, len(rec.outs)
        full = rec.outs[0]
        # the module called again with the recorded arguments gives the same
        args, kwargs = rec.calls[0]
        attn(*args, **kwargs)
        rec.remove()
        assert np.array_equal(rec.outs[1].numpy(), full.numpy(), equal_nan=True), name
        return full, float(np.nanmax(np.abs(rec.outs[1].numpy() - full.numpy())))

    def decode_run():
        from transformers import DynamicCache
        cache = DynamicCache(config=cfg)
        rec = Recorder(model, attn_path, out_path)
        P = S - K
        rec.x = tx[:, :P].contiguous()
        model(**forward_kwargs(model, embeds[:, :P], tmask[:, :P], tpos[:, :P], cache))
        for t in range(P, S):
            rec.x = tx[:, t:t + 1].contiguous()
            model(**forward_kwargs(model, embeds[:, t:t + 1], tmask[:, :t + 1], tpos[:, t:t + 1], cache))
        rec.remove()
        assert len(rec.outs) == K + 1
        return torch.cat(rec.outs, 1)

    # as transformers runs a float64 model (rotary, softmax, RMSNorm in float32)
    plain, _ = full_run()
    pr = plain.numpy()[~valid]
    padded_rows = "nan" if np.isnan(pr).all() else "finite" if np.isfinite(pr).all() else "mixed"
    plain_dec = decode_run() if K else None
    # the same in float64 throughout: the fixture
    with f64_everywhere():
        reinit_rotary(model, cfg)
        full, recall = full_run()
        rope = rope_info(model, c, cfg)
        out = decode_run() if K else full
    f32_diff = float(np.abs(plain.numpy() - full.numpy())[valid].max())
    decode_diff = decode_diff_plain = None
    if K:
        decode_diff = float(np.abs(out.numpy() - full.numpy())[valid].max())
        decode_diff_plain = float(np.abs(plain_dec.numpy() - plain.numpy())[valid].max())
        assert decode_diff < 1e-12, (name, decode_diff)
    assert f32_diff < 1e-4, (name, f32_diff)

    o = out.numpy().copy()
    assert np.isfinite(o[valid]).all()
    # the padding rows are not part of the fixture: they are written as 0
    o[~valid] = 0.0
    cdir = os.path.join(outdir, name)
    if os.path.exists(cdir):
        shutil.rmtree(cdir)
    os.makedirs(cdir)
    cfg.dtype = wdt
    cfg.save_pretrained(cdir)
    safetensors.torch.save_file(ckpt, os.path.join(cdir, "model.safetensors"), metadata={"format": "pt"})
    np.save(os.path.join(cdir, "x.npy"), x)
    np.save(os.path.join(cdir, "attention_mask.npy"), mask.astype(np.int32))
    np.save(os.path.join(cdir, "position_ids.npy"), pos.astype(np.int32))
    np.save(os.path.join(cdir, "out.npy"), o.astype(np.float32))
    meta = {
        "case": name,
        "model_type": c["model_type"],
        "model_class": type(model).__name__,
        "layer": c["layer"],
        "layer_type": (cfg.layer_types[c["layer"]] if getattr(cfg, "layer_types", None) else None),
        "module_path": attn_path,
        "output_module_path": out_path or attn_path,
        "tensor_prefix": prefix,
        "weights_dtype": c["wdtype"],
        "B": B, "S": S, "E": hid,
        "padding": c["pad"],
        "cache_steps": K,
        "prefill_len": S - K,
        "exercises": c["exercises"],
        "tensors": {k: "%s %s" % (str(v.dtype).replace("torch.", ""), list(v.shape)) for k, v in sorted(ckpt.items())},
        "rope": rope,
        "out_max_abs": float(np.abs(o[valid]).max()),
        "recall_max_abs_diff": recall,
        "transformers_padded_rows": padded_rows,
        "decode_vs_full_max_abs_diff": decode_diff,
        "decode_vs_full_max_abs_diff_f32_internals": decode_diff_plain,
        "transformers_f32_internals_max_abs_diff": f32_diff,
        "transformers": transformers.__version__,
        "torch": torch.__version__,
        "safetensors": safetensors.__version__,
        "numpy": np.__version__,
        "seed": seed,
    }
    with open(os.path.join(cdir, "meta.json"), "w") as f:
        json.dump(meta, f, indent=1)
        f.write("\n")
    return meta


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "..", "tests", "data", "layers"))
    ap.add_argument("cases", nargs="*")
    a = ap.parse_args()
    names = a.cases or list(CASES)
    for n in names:
        m = run_case(n, CASES[n], a.out)
        print(f"{n:26s} layer {m['layer']} {m['model_type']:12s} K={m['cache_steps']} "
              f"|out|max {m['out_max_abs']:.3g} decode diff {m['decode_vs_full_max_abs_diff']}")


if __name__ == "__main__":
    main()
