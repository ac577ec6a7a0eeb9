#!/usr/bin/env python3
"""Recomputes every tests/data/layers/<case>/out.npy with numpy alone, from the case's
config.json, model.safetensors (read by hand), x.npy, attention_mask.npy and
position_ids.npy, following tests/data/layers/README.md, and compares on the rows where
attention_mask is 1.  A second implementation of what the README says, run by hand after
tools/gen-layer-fixtures.py; the tests never need it.

    python3 tools/check-layer-fixtures.py [DIR] [CASE ...]

For decode cases (meta.json cache_steps K > 0) it also runs the prefill of S-K tokens and
the K single-token steps against a growing key/value store and compares those.
"""
import json
import math
import os
import struct
import sys

import numpy as np


def read_safetensors(path):
    with open(path, "rb") as f:
        buf = f.read()
    n = struct.unpack("<Q", buf[:8])[0]
    hdr = json.loads(buf[8:8 + n])
    data = buf[8 + n:]
    out = {}
    for name, t in hdr.items():
        if name == "__metadata__":
            continue
        a, b = t["data_offsets"]
        raw = np.frombuffer(data[a:b], dtype=np.uint8)
        dt = t["dtype"]
        if dt == "F32":
            v = raw.view("<f4").astype(np.float64)
        elif dt == "F16":
            v = raw.view("<f2").astype(np.float64)
        elif dt == "BF16":
            v = (raw.view("<u2").astype(np.uint32) << 16).view("<f4").astype(np.float64)
        elif dt == "F64":
            v = raw.view("<f8").copy()
        else:          # integer tensors are not attention weights; keep them only to count them
            out[name] = (dt, None)
            continue
        out[name] = (dt, v.reshape(t["shape"]))
    return out


def inv_freq_for(cfg, rp, head_dim, max_pos_ids_plus_1):
    """(inv_freq [rotary_dim/2], attention_scaling) as README 'RoPE' describes."""
    base = rp["rope_theta"]
    dim = int(head_dim * rp.get("partial_rotary_factor", 1.0))
    i = np.arange(0, dim, 2, dtype=np.float64)
    t = rp.get("rope_type", "default")
    inv = 1.0 / base ** (i / dim)
    scale = 1.0
    if t == "default":
        pass
    elif t == "linear":
        inv = inv / rp["factor"]
    elif t == "dynamic":
        L = cfg["max_position_embeddings"]
        seq = max(max_pos_ids_plus_1, L)
        f = rp["factor"]
        b = base * ((f * seq / L) - (f - 1)) ** (dim / (dim - 2))
        inv = 1.0 / b ** (i / dim)
    elif t == "llama3":
        f, lo, hi, old = rp["factor"], rp["low_freq_factor"], rp["high_freq_factor"], \
            rp["original_max_position_embeddings"]
        wl = 2 * math.pi / inv
        lo_wl, hi_wl = old / lo, old / hi
        res = np.where(wl > lo_wl, inv / f, inv)
        smooth = (old / wl - lo) / (hi - lo)
        sm = (1 - smooth) * res / f + smooth * res
        med = ~(wl < hi_wl) & ~(wl > lo_wl)
        inv = np.where(med, sm, res)
    elif t == "yarn":
        f = rp["factor"]
        old = rp["original_max_position_embeddings"]
        af = rp.get("attention_factor")
        ms, msa = rp.get("mscale"), rp.get("mscale_all_dim")
        gm = lambda s, m=1: 1.0 if s <= 1 else 0.1 * m * math.log(s) + 1.0
        if af is None:
            af = gm(f, ms) / gm(f, msa) if (ms and msa) else gm(f)
        scale = af
        bf, bs = rp.get("beta_fast") or 32, rp.get("beta_slow") or 1
        cd = lambda r: (dim * math.log(old / (r * 2 * math.pi))) / (2 * math.log(base))
        low, high = cd(bf), cd(bs)
        if rp.get("truncate", True):
            low, high = math.floor(low), math.ceil(high)
        low, high = max(low, 0), min(high, dim - 1)
        if low == high:
            high += 0.001
        ramp = np.clip((np.arange(dim // 2, dtype=np.float64) - low) / (high - low), 0, 1)
        extra = 1 - ramp
        pf = base ** (i / dim)
        inv = (1.0 / (f * pf)) * (1 - extra) + (1.0 / pf) * extra
    else:
        raise SystemExit(f"rope_type {t} not handled")
    return inv, scale


def rope(x, pos, inv, scale):
    """x [B,h,S,D], pos [B,S]: rotate_half on the first 2*len(inv) dims."""
    r = 2 * len(inv)
    ang = pos[..., None].astype(np.float64) * inv          # [B,S,r/2]
    c = (np.cos(ang) * scale)[:, None]
    s = (np.sin(ang) * scale)[:, None]
    x1, x2, rest = x[..., :r // 2], x[..., r // 2:r], x[..., r:]
    return np.concatenate([x1 * c - x2 * s, x2 * c + x1 * s, rest], -1)


def rmsnorm(v, w, eps, one_plus):
    n = v / np.sqrt((v * v).mean(-1, keepdims=True) + eps)
    return n * ((1.0 + w) if one_plus else w)


def alibi_slopes(n):
    p = 2 ** math.floor(math.log2(n))
    base = 2 ** (-(2 ** -(math.log2(p) - 3)))
    s = [base ** k for k in range(1, p + 1)]
    if p != n:
        eb = 2 ** (-(2 ** -(math.log2(2 * p) - 3)))
        s += [eb ** k for k in range(1, 1 + 2 * min(p, n - p), 2)]
    return np.array(s)


class Layer:
    def __init__(self, d):
        self.cfg = json.load(open(os.path.join(d, "config.json")))
        self.meta = json.load(open(os.path.join(d, "meta.json")))
        self.t = read_safetensors(os.path.join(d, "model.safetensors"))
        cfg, mt, L = self.cfg, self.cfg["model_type"], self.meta["layer"]
        self.mt, self.L = mt, L
        self.E = cfg.get("hidden_size", cfg.get("n_embd"))
        self.H = cfg.get("num_attention_heads", cfg.get("n_head"))
        self.KVH = cfg.get("num_key_value_heads") or self.H
        self.D = cfg.get("head_dim") or self.E // self.H
        self.ltype = cfg["layer_types"][L] if cfg.get("layer_types") else None

        # find the layer's attention tensors whatever the prefix ("model.", "transformer.", "bert.", "")
        key = {"gpt2": f"h.{L}.attn.c_attn.weight", "bloom": f"h.{L}.self_attention.query_key_value.weight",
               "bert": f"encoder.layer.{L}.attention.self.query.weight",
               "phi3": f"layers.{L}.self_attn.qkv_proj.weight"}.get(mt, f"layers.{L}.self_attn.q_proj.weight")
        hits = [n for n in self.t if n == key or n.endswith("." + key)]
        assert len(hits) == 1, hits
        self.p = hits[0][:-len(key)] + key.rsplit(".", 2)[0] + "."   # e.g. "model.layers.1.self_attn."
        if mt == "bert":
            self.p = hits[0][:-len(key)] + f"encoder.layer.{L}.attention."

    def w(self, name):
        v = self.t.get(self.p + name)
        return None if v is None else v[1]

    def lin(self, x, name):
        W, b = self.w(name + ".weight"), self.w(name + ".bias")
        y = x @ (W if self.mt == "gpt2" else W.T)     # gpt2 Conv1D weight is [in, out]
        return y if b is None else y + b

    def project(self, x):
        """x [B,T,E] -> q [B,H,T,D], k, v [B,KVH,T,D] (before rope)."""
        Bn, T, _ = x.shape
        H, KVH, D, mt = self.H, self.KVH, self.D, self.mt
        if mt == "phi3":
            qkv = self.lin(x, "qkv_proj")
            q, k, v = np.split(qkv, [H * D, H * D + KVH * D], -1)
        elif mt == "gpt2":
            q, k, v = np.split(self.lin(x, "c_attn"), 3, -1)
        elif mt == "bloom":
            f = self.lin(x, "query_key_value").reshape(Bn, T, H, 3, D)
            q, k, v = (f[..., i, :].reshape(Bn, T, H * D) for i in range(3))
        elif mt == "bert":
            q, k, v = (self.lin(x, "self." + n) for n in ("query", "key", "value"))
        else:
            q, k, v = (self.lin(x, n + "_proj") for n in "qkv")
        sh = lambda a, h: a.reshape(Bn, T, h, D).transpose(0, 2, 1, 3)
        q, k, v = sh(q, H), sh(k, KVH), sh(v, KVH)
        eps = self.cfg.get("rms_norm_eps")
        if mt == "qwen3":
            q, k = rmsnorm(q, self.w("q_norm.weight"), eps, False), rmsnorm(k, self.w("k_norm.weight"), eps, False)
        if mt == "gemma3_text":
            q, k = rmsnorm(q, self.w("q_norm.weight"), eps, True), rmsnorm(k, self.w("k_norm.weight"), eps, True)
        return q, k, v

    def rope_params(self, pos_all):
        cfg = self.cfg
        if self.mt in ("gpt2", "bert", "bloom"):
            return None
        rp = cfg["rope_parameters"]
        if self.ltype in rp:          # gemma3: one set per layer type
            rp = rp[self.ltype]
        return inv_freq_for(cfg, rp, self.D, int(pos_all.max()) + 1)

    def scale(self):
        c, mt = self.cfg, self.mt
        if mt in ("gemma2", "gemma3_text"):
            return c["query_pre_attn_scalar"] ** -0.5
        if mt == "gpt2":
            s = self.D ** -0.5 if c.get("scale_attn_weights", True) else 1.0
            return s / (self.L + 1) if c.get("scale_attn_by_inverse_layer_idx") else s
        return self.D ** -0.5

    def attend(self, q, k, v, qi, mask, kpos):
        """q [B,H,Tq,D] at sequence indices qi [Tq]; k, v [B,KVH,Tk,D] at indices 0..Tk-1;
        mask [B,Tk]; kpos [B,Tk] ALiBi key positions."""
        Bn, H, Tq, D = q.shape
        Tk = k.shape[2]
        g = H // self.KVH
        k, v = np.repeat(k, g, 1), np.repeat(v, g, 1)
        s = np.einsum("bhqd,bhkd->bhqk", q, k) * self.scale()
        cap = self.cfg.get("attn_logit_softcapping") if self.mt == "gemma2" else None
        if cap:
            s = cap * np.tanh(s / cap)
        if self.mt == "bloom":
            s = s + alibi_slopes(H)[None, :, None, None] * kpos[:, None, None, :]
        ki = np.arange(Tk)
        allow = np.broadcast_to(mask[:, None, None, :].astype(bool), s.shape).copy()
        if self.mt != "bert":
            allow &= (ki[None, :] <= qi[:, None])[None, None]
        win = self.cfg.get("sliding_window")
        sliding = (self.ltype == "sliding_attention") if self.ltype else (self.mt in ("mistral", "phi3") and win)
        if sliding and win:
            allow &= (ki[None, :] > qi[:, None] - win)[None, None]
        s = np.where(allow, s, -np.inf)
        if self.mt == "gpt_oss":
            sink = np.broadcast_to(self.w("sinks")[None, :, None, None], (Bn, H, Tq, 1))
            s = np.concatenate([s, sink], -1)
        m = s.max(-1, keepdims=True)
        m = np.where(np.isfinite(m), m, 0)
        e = np.exp(s - m)
        with np.errstate(invalid="ignore", divide="ignore"):   # rows with no key: padding, not compared
            p = e / e.sum(-1, keepdims=True)
        if self.mt == "gpt_oss":
            p = p[..., :-1]
        o = np.einsum("bhqk,bhkd->bhqd", p, v)
        o = o.transpose(0, 2, 1, 3).reshape(Bn, Tq, H * D)
        name = {"gpt2": "c_proj", "bloom": "dense", "bert": "output.dense"}.get(self.mt, "o_proj")
        return self.lin(o, name)

    def run(self, x, mask, pos, K=0):
        Bn, S, _ = x.shape
        kpos = (np.cumsum(mask, -1) - 1) * mask
        rp = self.rope_params(pos)
        q, k, v = self.project(x)
        if rp is not None:
            q, k = rope(q, pos, *rp), rope(k, pos, *rp)
        if not K:
            return self.attend(q, k, v, np.arange(S), mask, kpos)
        # decode: prefill S-K, then one query at a time against the keys so far
        P = S - K
        outs = [self.attend(q[:, :, :P], k[:, :, :P], v[:, :, :P], np.arange(P), mask[:, :P], kpos[:, :P])]
        for t in range(P, S):
            outs.append(self.attend(q[:, :, t:t + 1], k[:, :, :t + 1], v[:, :, :t + 1], np.array([t]),
                                    mask[:, :t + 1], kpos[:, :t + 1]))
        return np.concatenate(outs, 1)


def main():
    d = sys.argv[1] if len(sys.argv) > 1 else os.path.join(os.path.dirname(__file__), "..", "tests", "data", "layers")
    names = sys.argv[2:] or sorted(n for n in os.listdir(d) if os.path.isdir(os.path.join(d, n)))
    worst = 0.0
    bad = 0
    for n in names:
        cd = os.path.join(d, n)
        lay = Layer(cd)
        x = np.load(os.path.join(cd, "x.npy")).astype(np.float64)
        mask = np.load(os.path.join(cd, "attention_mask.npy")).astype(np.int64)
        pos = np.load(os.path.join(cd, "position_ids.npy")).astype(np.int64)
        ref = np.load(os.path.join(cd, "out.npy")).astype(np.float64)
        valid = mask.astype(bool)
        o = lay.run(x, mask, pos, lay.meta["cache_steps"])
        err = float(np.abs(o - ref)[valid].max())
        rel = err / float(np.abs(ref[valid]).max())
        ok = rel < 1e-6
        bad += not ok
        worst = max(worst, rel)
        print(f"{n:26s} max|numpy-out| {err:.3g} (rel {rel:.3g}) {'ok' if ok else 'MISMATCH'}")
    print(f"worst relative {worst:.3g}; {bad} mismatches")
    sys.exit(1 if bad else 0)


if __name__ == "__main__":
    main()
