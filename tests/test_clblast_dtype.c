/* 16-bit storage on the clblast backend: f16 and bf16 operands go through
 * fp32 scratch (kernels/convert.cl, "the convert path" in
 * backends/clblast/clblast.c). Each case runs on clblast and is compared
 * with a double-precision oracle computed on the inputs AS ROUNDED to their
 * storage type (read back with attn_tensor_read), so only the device's own
 * error counts. Bounds per output dtype, element-wise:
 *     f32   1e-5 * (1 + |ref|)            (the fp32 path's error, with margin)
 *     f16   that + 1.5 * 2^-11 * |ref|    (one rounding to f16, half an ulp
 *     bf16  that + 1.5 * 2^-8  * |ref|     is 2^-11 / 2^-8 relative)
 * Covered: SDPA all-f16, all-bf16, f32 q/out over f16 and over bf16 k/v, bf16
 * with f32 out, causal, an additive bf16 mask (broadcast over heads), a bool
 * f16 mask, kv_lens, GQA (Hq=4, Hkv=2), lse + weights (weights bf16 and f16),
 * Dv != D, a strided k view (innermost stride 2, guards around it intact);
 * exact output rounding (ties, subnormals, overflow, NaN) against the host's
 * conversion; linear through the MHA graph with f16/bf16 weights; and the
 * ATTN_DEBUG line naming the path.
 *
 * CLBlast compiles each routine on first use (tens of seconds on POCL), so
 * every test shares one context (group setup) and the shapes are small.
 * Skips (77) only when no clblast device exists. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <fcntl.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "attn.h"
#include "attn_plugin.h" /* the SDK's element conversions, for the MHA oracle */
#include "testutil.h"

#define CHECK_OK(call)                                                                   \
  do {                                                                                   \
    attn_status st_ = (call);                                                            \
    if (st_ != ATTN_OK)                                                                  \
      fail_msg("%s: %s (%s)", #call, attn_last_error(), attn_status_str(st_));           \
  } while (0)

#define NONE (-1) /* an optional operand left out */
#define GUARD 7
#define GUARD_VAL 3072.0f /* exact in f16 and bf16 */

static char g_sel[64];
static attn_context *g_ctx;

static void *xmalloc(size_t n) {
  void *p = malloc(n ? n : 1);
  assert_non_null(p);
  return p;
}

static size_t numel4(const int64_t *s) { return (size_t)(s[0] * s[1] * s[2] * s[3]); }

/* Half an ulp of the output type, relative (0 for f32). */
static double half_ulp(attn_dtype t) {
  return t == ATTN_F16 ? ldexp(1.0, -11) : t == ATTN_BF16 ? ldexp(1.0, -8) : 0.0;
}

/* got (as read back, f32) against want element-wise with the bound of the
 * header; NaN where want is NaN, infinities equal. */
static void check_dtype_close(const char *what, attn_dtype t, const float *got,
                              const double *want, size_t n) {
  const double rel = 1.5 * half_ulp(t);
  for (size_t i = 0; i < n; i++) {
    const double g = got[i], w = want[i];
    if (isnan(w)) {
      if (!isnan(g)) fail_msg("%s (%s) [%zu] = %g, oracle NaN", what, attn_dtype_str(t), i, g);
      continue;
    }
    if (isinf(w)) {
      if (g != w) fail_msg("%s (%s) [%zu] = %g, oracle %g", what, attn_dtype_str(t), i, g, w);
      continue;
    }
    const double tol = 1e-5 * (1 + fabs(w)) + rel * fabs(w);
    if (!isfinite(g) || fabs(g - w) > tol)
      fail_msg("%s (%s) [%zu] = %.9g, oracle %.9g: error %.3g > bound %.3g", what,
               attn_dtype_str(t), i, g, w, fabs(g - w), tol);
  }
}

/* A new tensor of type t and shape s (rank 4) holding h, and h overwritten
 * with the values as stored (rounded to t). */
static attn_tensor *typed_upload(attn_dtype t, const int64_t *s, float *h) {
  attn_tensor *x;
  CHECK_OK(attn_tensor_create_typed(g_ctx, t, 4, s, &x));
  CHECK_OK(attn_tensor_write(x, h, numel4(s)));
  CHECK_OK(attn_tensor_read(x, h, numel4(s)));
  return x;
}

/* ---- SDPA ------------------------------------------------------------------------ */

typedef struct sdpa_case {
  const char *name;
  int64_t B, Hq, Hkv, Sq, Skv, D, Dv;
  int q, k, v, out;  /* attn_dtype */
  int mask;          /* attn_dtype of the mask, or NONE */
  attn_mask_kind mask_kind;
  int weights;       /* attn_dtype of weights, or NONE */
  bool lse, causal, kv_lens, strided_k;
} sdpa_case;

static void run_sdpa_case(const sdpa_case *c) {
  const int64_t qs[4] = {c->B, c->Hq, c->Sq, c->D}, ks[4] = {c->B, c->Hkv, c->Skv, c->D},
                vs[4] = {c->B, c->Hkv, c->Skv, c->Dv}, os[4] = {c->B, c->Hq, c->Sq, c->Dv},
                ws[4] = {c->B, c->Hq, c->Sq, c->Skv}, ms[4] = {1, 1, c->Sq, c->Skv},
                ls[3] = {c->B, c->Hq, c->Sq};
  uint64_t rng = 0xd7e0000u + (uint64_t)(c->Sq * 31 + c->Skv * 7 + c->q * 3 + c->k);
  float *q = tu_alloc_uniform(numel4(qs), &rng, -2, 2);
  float *k = tu_alloc_uniform(numel4(ks), &rng, -2, 2);
  float *v = tu_alloc_uniform(numel4(vs), &rng, -1, 1);
  float *mask = tu_alloc_uniform(numel4(ms), &rng, -2, 2);
  if (c->mask_kind == ATTN_MASK_BOOL)
    for (size_t i = 0; i < numel4(ms); i++) mask[i] = mask[i] > -1.0f ? 1.0f : 0.0f;
  else
    for (size_t i = 0; i < numel4(ms); i += 4) mask[i] = -INFINITY;
  int32_t lens[8];
  for (int64_t b = 0; b < c->B; b++) lens[b] = (int32_t)((b * 5 + 3) % (c->Skv + 1));
  if (c->kv_lens && c->B > 1) lens[c->B - 1] = 0; /* an empty batch item */

  attn_tensor *tq = typed_upload((attn_dtype)c->q, qs, q);
  attn_tensor *tv = typed_upload((attn_dtype)c->v, vs, v);
  attn_tensor *tk, *kbase = NULL;
  int64_t kspan = 0;
  if (c->strided_k) {
    /* k inside a larger storage: innermost stride 2, GUARD elements around */
    const int64_t st[4] = {2 * c->Hkv * c->Skv * c->D, 2 * c->Skv * c->D, 2 * c->D, 2};
    kspan = 2 * (int64_t)numel4(ks) + 2 * GUARD;
    CHECK_OK(attn_tensor_create_typed(g_ctx, (attn_dtype)c->k, 1, &kspan, &kbase));
    float *g = xmalloc((size_t)kspan * sizeof *g);
    for (int64_t i = 0; i < kspan; i++) g[i] = GUARD_VAL;
    CHECK_OK(attn_tensor_write(kbase, g, (size_t)kspan));
    free(g);
    CHECK_OK(attn_tensor_view(kbase, GUARD, 4, ks, st, &tk));
    CHECK_OK(attn_tensor_write(tk, k, numel4(ks)));
    CHECK_OK(attn_tensor_read(tk, k, numel4(ks)));
  } else {
    tk = typed_upload((attn_dtype)c->k, ks, k);
  }
  attn_tensor *tm = c->mask != NONE ? typed_upload((attn_dtype)c->mask, ms, mask) : NULL;

  /* Outputs poisoned with NaN: every element must be written. */
  float *poison = xmalloc(numel4(ws) > numel4(os) ? numel4(ws) * 4 : numel4(os) * 4);
  tu_fill_nan(poison, numel4(ws) > numel4(os) ? numel4(ws) : numel4(os));
  attn_tensor *to, *tw = NULL, *tl = NULL;
  CHECK_OK(attn_tensor_create_typed(g_ctx, (attn_dtype)c->out, 4, os, &to));
  CHECK_OK(attn_tensor_write(to, poison, numel4(os)));
  if (c->weights != NONE) {
    CHECK_OK(attn_tensor_create_typed(g_ctx, (attn_dtype)c->weights, 4, ws, &tw));
    CHECK_OK(attn_tensor_write(tw, poison, numel4(ws)));
  }
  const size_t nl = (size_t)(c->B * c->Hq * c->Sq);
  if (c->lse) {
    CHECK_OK(attn_tensor_create(g_ctx, 3, ls, &tl));
    CHECK_OK(attn_tensor_write(tl, poison, nl));
  }

  attn_sdpa_args a = ATTN_SDPA_ARGS_INIT;
  a.q = tq, a.k = tk, a.v = tv, a.out = to, a.weights = tw, a.lse = tl;
  a.mask = tm, a.mask_kind = tm ? c->mask_kind : ATTN_MASK_NONE;
  a.causal = c->causal;
  a.kv_lens = c->kv_lens ? lens : NULL;
  CHECK_OK(attn_sdpa(g_ctx, &a));

  tu_sdpa_problem p = {c->B, c->Hq, c->Hkv, c->Sq, c->Skv, c->D, c->Dv, q, k, v,
                       tm ? mask : NULL, tm ? c->mask_kind : ATTN_MASK_NONE, 1, 1,
                       c->causal, 1.0 / sqrt((double)c->D), c->kv_lens ? lens : NULL};
  const size_t no = numel4(os), nw = numel4(ws);
  double *wo = xmalloc(no * sizeof *wo), *ww = xmalloc(nw * sizeof *ww), *wl = xmalloc(nl * 8);
  tu_sdpa_double(&p, wo, ww, wl);
  float *got = xmalloc((no > nw ? no : nw) * sizeof *got);
  CHECK_OK(attn_tensor_read(to, got, no));
  check_dtype_close("out", (attn_dtype)c->out, got, wo, no);
  if (tw) {
    CHECK_OK(attn_tensor_read(tw, got, nw));
    check_dtype_close("weights", (attn_dtype)c->weights, got, ww, nw);
  }
  if (tl) {
    CHECK_OK(attn_tensor_read(tl, got, nl));
    check_dtype_close("lse", ATTN_F32, got, wl, nl);
  }
  if (kbase) {
    float *g = xmalloc((size_t)kspan * sizeof *g);
    CHECK_OK(attn_tensor_read(kbase, g, (size_t)kspan));
    for (int64_t i = 0; i < kspan; i++) {
      const int64_t r = i - GUARD;
      const bool in_view = r >= 0 && r < 2 * (int64_t)numel4(ks) && r % 2 == 0;
      if (!in_view && g[i] != GUARD_VAL)
        fail_msg("k storage element %lld outside the view changed to %g", (long long)i,
                 (double)g[i]);
    }
    free(g);
    attn_tensor_free(kbase);
  }
  attn_tensor_free(tq), attn_tensor_free(tk), attn_tensor_free(tv), attn_tensor_free(tm);
  attn_tensor_free(to), attn_tensor_free(tw), attn_tensor_free(tl);
  free(q), free(k), free(v), free(mask), free(poison), free(wo), free(ww), free(wl), free(got);
}

#define F32 ATTN_F32
#define F16 ATTN_F16
#define BF16 ATTN_BF16
#define ADD ATTN_MASK_ADDITIVE

static void sdpa_all_f16(void **state) {
  (void)state;
  sdpa_case c = {"all f16", 2, 4, 2, 9, 13, 16, 8, F16, F16, F16, F16, NONE, 0, F16, true,
                 false, false, false};
  run_sdpa_case(&c);
  sdpa_case d = {"f16 causal kv_lens mask", 2, 4, 2, 7, 11, 8, 8, F16, F16, F16, F16, F16, ADD,
                 NONE, true, true, true, false};
  run_sdpa_case(&d);
}
static void sdpa_all_bf16(void **state) {
  (void)state;
  /* GQA, causal with Sq < Skv, additive bf16 mask, kv_lens, weights bf16, lse */
  sdpa_case c = {"all bf16", 2, 4, 2, 6, 10, 16, 12, BF16, BF16, BF16, BF16, BF16, ADD, BF16,
                 true, true, true, false};
  run_sdpa_case(&c);
}
static void sdpa_f32_over_16bit_kv(void **state) {
  (void)state;
  sdpa_case c = {"f32 q/out, f16 k/v", 1, 4, 2, 8, 12, 8, 16, F32, F16, F16, F32, NONE, 0, F32,
                 true, true, false, false};
  run_sdpa_case(&c);
  sdpa_case d = {"f32 q/out, bf16 k/v", 2, 4, 2, 5, 9, 16, 8, F32, BF16, BF16, F32, BF16, ADD,
                 F16, true, false, true, false};
  run_sdpa_case(&d);
}
static void sdpa_bf16_f32_out(void **state) {
  (void)state;
  sdpa_case c = {"bf16 in, f32 out", 1, 4, 2, 10, 10, 8, 4, BF16, BF16, BF16, F32, NONE, 0,
                 BF16, true, true, false, false};
  run_sdpa_case(&c);
}
static void sdpa_bool_f16_mask(void **state) {
  (void)state;
  sdpa_case c = {"bool f16 mask", 1, 2, 2, 6, 9, 8, 8, BF16, BF16, BF16, F16, F16,
                 ATTN_MASK_BOOL, BF16, true, false, false, false};
  run_sdpa_case(&c);
}
static void sdpa_strided_k(void **state) {
  (void)state;
  sdpa_case c = {"strided bf16 k", 2, 4, 2, 5, 7, 8, 6, BF16, BF16, BF16, BF16, NONE, 0, NONE,
                 true, true, false, true};
  run_sdpa_case(&c);
  sdpa_case d = {"strided f16 k under f32 q", 1, 4, 2, 5, 7, 8, 6, F32, F16, F16, F16, NONE, 0,
                 F32, false, false, true, true};
  run_sdpa_case(&d);
}

/* Output rounding exactly as the host rounds: with one key, out = v (weights
 * 1), so an f16/bf16 out must hold exactly v rounded to nearest even, as
 * attn_tensor_write rounds it. Values: ties both ways, subnormals of f16,
 * beyond f16's range, NaNs (one with all payload bits set) and infinities. */
static void output_rounding_exact(void **state) {
  (void)state;
  static const float vals[16] = {
      1.0f + 0x1p-11f,  1.0f + 3 * 0x1p-11f, 1.0f + 0x1p-8f, 1.0f + 3 * 0x1p-8f,
      0x1p-20f * 1.5f,  -0x1p-24f * 0.75f,   65519.0f,       65520.0f,
      3.0e38f,          -3.4e38f,            NAN,            -INFINITY,
      INFINITY,         -1.0f - 0x1p-9f,     0x1.fffffep-1f, 0x1p-25f};
  const int64_t qs[4] = {1, 1, 1, 4}, vs[4] = {1, 1, 1, 16}, os[4] = {1, 1, 1, 16};
  float qh[4] = {0.5f, -0.25f, 1, 0};
  float vh[16];
  memcpy(vh, vals, sizeof vh);
  /* a NaN whose low payload bits would carry into the sign under plain
   * rounding (0x7fffffff + 0x8000 wraps to -0): must stay NaN */
  const uint32_t nan_bits = 0x7fffffffu;
  memcpy(&vh[8], &nan_bits, sizeof vh[8]);
  attn_tensor *tq, *tk, *tv;
  CHECK_OK(attn_tensor_create(g_ctx, 4, qs, &tq));
  CHECK_OK(attn_tensor_create(g_ctx, 4, qs, &tk));
  CHECK_OK(attn_tensor_create(g_ctx, 4, vs, &tv));
  CHECK_OK(attn_tensor_write(tq, qh, 4));
  CHECK_OK(attn_tensor_write(tk, qh, 4));
  CHECK_OK(attn_tensor_write(tv, vh, 16));
  for (int t = ATTN_F16; t <= ATTN_BF16; t++) {
    attn_tensor *to, *want;
    CHECK_OK(attn_tensor_create_typed(g_ctx, (attn_dtype)t, 4, os, &to));
    CHECK_OK(attn_tensor_create_typed(g_ctx, (attn_dtype)t, 4, os, &want));
    CHECK_OK(attn_tensor_write(want, vh, 16)); /* the host's rounding */
    attn_sdpa_args a = ATTN_SDPA_ARGS_INIT;
    a.q = tq, a.k = tk, a.v = tv, a.out = to;
    CHECK_OK(attn_sdpa(g_ctx, &a));
    uint16_t got[16], exp[16];
    CHECK_OK(attn_tensor_read_raw(to, got, 16));
    CHECK_OK(attn_tensor_read_raw(want, exp, 16));
    for (int i = 0; i < 16; i++) {
      const bool nan_exp = t == ATTN_F16 ? (exp[i] & 0x7fff) > 0x7c00 : (exp[i] & 0x7fff) > 0x7f80;
      const bool nan_got = t == ATTN_F16 ? (got[i] & 0x7fff) > 0x7c00 : (got[i] & 0x7fff) > 0x7f80;
      if (nan_exp ? !nan_got : got[i] != exp[i])
        fail_msg("%s out of %a: device 0x%04x, host 0x%04x", attn_dtype_str((attn_dtype)t),
                 (double)vh[i], got[i], exp[i]);
    }
    attn_tensor_free(to), attn_tensor_free(want);
  }
  attn_tensor_free(tq), attn_tensor_free(tk), attn_tensor_free(tv);
}

/* ---- linear, through the MHA graph ------------------------------------------------- */

/* x rounded to t as the device does it: to f32 first, then to 16 bits with
 * the SDK's conversions (nearest even, the rule attn.h states). */
static float round_to(attn_dtype t, double x) {
  const float f = (float)x;
  if (t == ATTN_BF16) return attn_bf16_to_f32(attn_f32_to_bf16(f));
  if (t == ATTN_F16) return attn_f16_to_f32(attn_f32_to_f16(f));
  return f;
}

/* y[r, o] = round_t(sum_c x[r, c] w[o, c] + b[o]) */
static void linear_round(attn_dtype t, const float *x, int64_t rows, int64_t in, const float *w,
                         const float *b, int64_t out, float *y) {
  double *acc = xmalloc((size_t)(rows * out) * sizeof *acc);
  tu_linear_double(x, rows, in, w, b, out, acc);
  for (int64_t i = 0; i < rows * out; i++) y[i] = round_to(t, acc[i]);
  free(acc);
}

/* [B, S, H*D] -> [B, H, S, D] */
static float *heads_of(const float *x, int64_t B, int64_t S, int64_t H, int64_t D) {
  float *r = xmalloc((size_t)(B * S * H * D) * sizeof *r);
  for (int64_t b = 0; b < B; b++)
    for (int64_t s = 0; s < S; s++)
      for (int64_t h = 0; h < H; h++)
        for (int64_t d = 0; d < D; d++)
          r[((b * H + h) * S + s) * D + d] = x[((b * S + s) * H + h) * D + d];
  return r;
}

typedef struct mha_case {
  attn_dtype wdtype, dtype, kv_dtype;
  bool causal;
} mha_case;

static void run_mha_case(const mha_case *mc) {
  const int64_t B = 2, S = 6, E = 16, H = 4, Hkv = 2, D = 4, HqD = H * D, HkvD = Hkv * D;
  uint64_t rng = 0x3a4a0000u + (uint64_t)(mc->wdtype * 9 + mc->dtype * 3 + mc->kv_dtype);
  const int64_t wshape[4][2] = {{HqD, E}, {HkvD, E}, {HkvD, E}, {E, HqD}};
  const int64_t blen[4] = {HqD, HkvD, HkvD, E};
  float *w[4], *b[4];
  attn_tensor *tw[4], *tb[4];
  for (int i = 0; i < 4; i++) {
    const size_t nw = (size_t)(wshape[i][0] * wshape[i][1]);
    w[i] = tu_alloc_uniform(nw, &rng, -0.5f, 0.5f);
    b[i] = tu_alloc_uniform((size_t)blen[i], &rng, -0.2f, 0.2f);
    CHECK_OK(attn_tensor_create_typed(g_ctx, mc->wdtype, 2, wshape[i], &tw[i]));
    CHECK_OK(attn_tensor_write(tw[i], w[i], nw));
    CHECK_OK(attn_tensor_read(tw[i], w[i], nw));
    CHECK_OK(attn_tensor_create_typed(g_ctx, mc->wdtype, 1, &blen[i], &tb[i]));
    CHECK_OK(attn_tensor_write(tb[i], b[i], (size_t)blen[i]));
    CHECK_OK(attn_tensor_read(tb[i], b[i], (size_t)blen[i]));
  }
  attn_mha_desc desc = ATTN_MHA_DESC_INIT;
  desc.d_model = E, desc.n_heads = H, desc.n_kv_heads = Hkv, desc.head_dim = D;
  desc.bias = true, desc.causal = mc->causal;
  desc.max_batch = B, desc.max_seq = S;
  desc.dtype = mc->dtype, desc.kv_dtype = mc->kv_dtype;
  attn_mha_weights mw = {.wq = tw[0], .wk = tw[1], .wv = tw[2], .wo = tw[3],
                         .bq = tb[0], .bk = tb[1], .bv = tb[2], .bo = tb[3]};
  attn_mha *g;
  CHECK_OK(attn_mha_create(g_ctx, &desc, &mw, &g));
  const int64_t xs[3] = {B, S, E};
  const size_t nx = (size_t)(B * S * E);
  float *x = tu_alloc_uniform(nx, &rng, -1, 1);
  attn_tensor *tx, *tout;
  CHECK_OK(attn_tensor_create_typed(g_ctx, mc->dtype, 3, xs, &tx));
  CHECK_OK(attn_tensor_write(tx, x, nx));
  CHECK_OK(attn_tensor_read(tx, x, nx));
  CHECK_OK(attn_tensor_create_typed(g_ctx, mc->dtype, 3, xs, &tout));
  float *poison = xmalloc(nx * sizeof *poison);
  tu_fill_nan(poison, nx);
  CHECK_OK(attn_tensor_write(tout, poison, nx));
  CHECK_OK(attn_mha_run(g, tx, NULL, tout));

  /* The oracle: each stage in double, its result rounded to the type the
   * graph stores it in (q and the attention output: dtype; k, v: kv_dtype). */
  float *q = xmalloc((size_t)(B * S * HqD) * 4), *k = xmalloc((size_t)(B * S * HkvD) * 4),
        *v = xmalloc((size_t)(B * S * HkvD) * 4);
  linear_round(mc->dtype, x, B * S, E, w[0], b[0], HqD, q);
  linear_round(mc->kv_dtype, x, B * S, E, w[1], b[1], HkvD, k);
  linear_round(mc->kv_dtype, x, B * S, E, w[2], b[2], HkvD, v);
  float *qh = heads_of(q, B, S, H, D), *kh = heads_of(k, B, S, Hkv, D),
        *vh = heads_of(v, B, S, Hkv, D);
  tu_sdpa_problem p = {.B = B, .Hq = H, .Hkv = Hkv, .Sq = S, .Skv = S, .D = D, .Dv = D,
                       .q = qh, .k = kh, .v = vh, .causal = mc->causal,
                       .scale = 1.0 / sqrt((double)D)};
  double *o = xmalloc((size_t)(B * H * S * D) * sizeof *o);
  tu_sdpa_double(&p, o, NULL, NULL);
  float *att = xmalloc((size_t)(B * S * HqD) * 4); /* merge heads, rounded */
  for (int64_t bb = 0; bb < B; bb++)
    for (int64_t h = 0; h < H; h++)
      for (int64_t s = 0; s < S; s++)
        for (int64_t d = 0; d < D; d++)
          att[((bb * S + s) * H + h) * D + d] =
              round_to(mc->dtype, o[((bb * H + h) * S + s) * D + d]);
  double *want = xmalloc(nx * sizeof *want);
  tu_linear_double(att, B * S, HqD, w[3], b[3], E, want);
  float *got = xmalloc(nx * sizeof *got);
  CHECK_OK(attn_tensor_read(tout, got, nx));
  /* The final rounding is check_dtype_close's bound. An intermediate that
   * lies within the device's fp32 error of a rounding boundary may round to
   * the neighbouring 16-bit value on the device and not in the oracle; that
   * one-ulp difference reaches out through the later stages, so out may also
   * err by a few half-ulps of the intermediates' type, scaled by the size of
   * out (weights are < 0.5, widths 16). */
  double scale = 0;
  for (size_t i = 0; i < nx; i++) scale = fmax(scale, fabs(want[i]));
  const double u = fmax(half_ulp(mc->dtype), half_ulp(mc->kv_dtype));
  for (size_t i = 0; i < nx; i++) {
    const double tol = 1e-5 * (1 + fabs(want[i])) + 1.5 * half_ulp(mc->dtype) * fabs(want[i]) +
                       4 * u * scale;
    if (!isfinite(got[i]) || fabs(got[i] - want[i]) > tol)
      fail_msg("mha (w %s, dtype %s, kv %s) out[%zu] = %.9g, oracle %.9g: error %.3g > %.3g",
               attn_dtype_str(mc->wdtype), attn_dtype_str(mc->dtype),
               attn_dtype_str(mc->kv_dtype), i, (double)got[i], want[i],
               fabs(got[i] - want[i]), tol);
  }
  attn_mha_free(g);
  attn_tensor_free(tx), attn_tensor_free(tout);
  for (int i = 0; i < 4; i++) {
    attn_tensor_free(tw[i]), attn_tensor_free(tb[i]);
    free(w[i]), free(b[i]);
  }
  free(x), free(poison), free(q), free(k), free(v), free(qh), free(kh), free(vh), free(o);
  free(att), free(want), free(got);
}

static void mha_bf16_weights(void **state) {
  (void)state;
  mha_case a = {ATTN_BF16, ATTN_BF16, ATTN_BF16, true}; /* everything bf16 */
  run_mha_case(&a);
  mha_case b = {ATTN_BF16, ATTN_F32, ATTN_F32, false}; /* bf16 checkpoint, f32 activations */
  run_mha_case(&b);
}
static void mha_f16_weights(void **state) {
  (void)state;
  mha_case a = {ATTN_F16, ATTN_F16, ATTN_F16, false};
  run_mha_case(&a);
  mha_case b = {ATTN_F16, ATTN_F32, ATTN_BF16, true}; /* f32 activations, bf16 k/v */
  run_mha_case(&b);
}

/* ---- the ATTN_DEBUG line ----------------------------------------------------------- */

/* Under ATTN_DEBUG=1 a 16-bit SDPA logs which path runs: stderr is sent to a
 * temporary file for the one call, then read back. */
static void debug_line_names_path(void **state) {
  (void)state;
  /* 16 query rows: the CPU device's default path for more than 8 is the
   * GEMM path and its convert step (fewer go to the fused kernel). */
  const int64_t s4[4] = {1, 1, 16, 4};
  float h[64];
  for (int i = 0; i < 64; i++) h[i] = (float)(i % 9) - 4.0f;
  attn_tensor *q = typed_upload(ATTN_BF16, s4, h), *o;
  CHECK_OK(attn_tensor_create_typed(g_ctx, ATTN_F16, 4, s4, &o));
  char path[] = "/tmp/attn_clblast_dtype_XXXXXX";
  const int fd = mkstemp(path);
  assert_true(fd >= 0);
  fflush(stderr);
  const int saved = dup(2);
  assert_true(saved >= 0);
  assert_true(dup2(fd, 2) >= 0);
  setenv("ATTN_DEBUG", "1", 1);
  attn_sdpa_args a = ATTN_SDPA_ARGS_INIT;
  a.q = q, a.k = q, a.v = q, a.out = o;
  const attn_status st = attn_sdpa(g_ctx, &a);
  unsetenv("ATTN_DEBUG");
  fflush(stderr);
  dup2(saved, 2);
  close(saved);
  char buf[4096] = "";
  const ssize_t n = pread(fd, buf, sizeof buf - 1, 0);
  close(fd);
  unlink(path);
  if (n > 0) buf[n] = '\0';
  CHECK_OK(st);
  const char *path_env = getenv("ATTN_CLBLAST_SDPA");
  if (path_env && strcmp(path_env, "fused") == 0) {
    /* The fused kernel reads and writes 16-bit storage itself: its
     * program's options name each operand's type (bf16 = 2, f16 = 1). */
    if (!strstr(buf, "clblast flash: ") || !strstr(buf, "-DQT=2") || !strstr(buf, "-DOT=1"))
      fail_msg("ATTN_DEBUG=1 did not name the fused path's types; stderr was:\n%s", buf);
    printf("debug line: %s", strstr(buf, "clblast flash: "));
  } else {
    if (!strstr(buf, "clblast: sdpa f16/bf16 operands via fp32 scratch (") ||
        !strstr(buf, "q=bf16") || !strstr(buf, "out=f16"))
      fail_msg("ATTN_DEBUG=1 did not name the convert path; stderr was:\n%s", buf);
    printf("debug line: %s", strstr(buf, "clblast: sdpa f16"));
  }
  attn_tensor_free(q), attn_tensor_free(o);
}

/* ---- main ---------------------------------------------------------------------------- */

static int group_open(void **state) {
  (void)state;
  if (attn_open(g_sel, &g_ctx) != ATTN_OK) {
    fprintf(stderr, "attn_open(%s): %s\n", g_sel, attn_last_error());
    return -1;
  }
  return 0;
}
static int group_close(void **state) {
  (void)state;
  attn_close(g_ctx);
  g_ctx = NULL;
  return 0;
}

int main(void) {
  attn_device_list *list;
  if (attn_list_devices(&list) != ATTN_OK) {
    printf("attn_list_devices: %s\n", attn_last_error());
    return 1;
  }
  char sels[16][64];
  int n = 0;
  for (size_t i = 0; i < attn_device_list_count(list) && n < 16; i++) {
    const attn_device_info *d = attn_device_list_get(list, i);
    if (strcmp(d->backend, "clblast") == 0) snprintf(sels[n++], 64, "%s", d->selector);
  }
  for (size_t i = 0; i < attn_device_list_failure_count(list); i++)
    if (strstr(attn_device_list_failure_path(list, i), "clblast")) {
      printf("clblast module failed to load: %s\n", attn_device_list_failure_reason(list, i));
      attn_device_list_free(list);
      return 1;
    }
  attn_device_list_free(list);
  printf("suite clblast_dtype runs on:");
  for (int i = 0; i < n; i++) printf("%s %s", i ? "," : "", sels[i]);
  printf("%s\n", n ? "" : " (no clblast device)");
  if (n == 0) return 77;

  const struct CMUnitTest tests[] = {
      cmocka_unit_test(debug_line_names_path),
      cmocka_unit_test(output_rounding_exact),
      cmocka_unit_test(sdpa_all_f16),
      cmocka_unit_test(sdpa_all_bf16),
      cmocka_unit_test(sdpa_f32_over_16bit_kv),
      cmocka_unit_test(sdpa_bf16_f32_out),
      cmocka_unit_test(sdpa_bool_f16_mask),
      cmocka_unit_test(sdpa_strided_k),
      cmocka_unit_test(mha_bf16_weights),
      cmocka_unit_test(mha_f16_weights),
  };
  int failed = 0;
  for (int i = 0; i < n; i++) {
    memcpy(g_sel, sels[i], sizeof g_sel);
    char group[96];
    snprintf(group, sizeof group, "clblast dtypes on %s", g_sel);
    failed += cmocka_run_group_tests_name(group, tests, group_open, group_close);
  }
  return failed ? 1 : 0;
}
