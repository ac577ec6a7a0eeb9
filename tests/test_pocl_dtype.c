/* 16-bit storage on the pocl backend (kernels/common.cl's loads and stores
 * in sdpa.cl, decode.cl and linear.cl): SDPA with q, k, v, out, the mask
 * and the weights each f32, f16 or bf16 (all-f16, all-bf16, f32 q/out over
 * f16 or bf16 K/V, bf16 q/k/v into f32 out, and a mix of all three), with
 * and without causal, masks of both kinds, kv_lens, GQA, lse and weights,
 * Dv != D, strided k (rows apart, and a non-unit stride along the head
 * dim, with a mask of stride 2 along the keys), through the flash kernel (ATTN_POCL_DECODE=0) and the decode path
 * (ATTN_POCL_DECODE=1, Sq = 1 and 4); the rounding of 16-bit stores (to
 * nearest even, NaN kept NaN); and the linear stage through MHA graphs with
 * 16-bit weights and activations.
 *
 * The oracle is tu_sdpa_double on the inputs as stored (read back with
 * attn_tensor_read), so the error measured is the kernel's, not the
 * storage's. Per element, with r the oracle's value:
 *   |got - r| <= 2e-5 (1 + |r|) + u |r|,
 * u = 0 for an f32 output, 1.5 * 2^-11 for f16 and 1.5 * 2^-8 for bf16 (the
 * output's own rounding, half an ulp, with margin). Each case prints the
 * worst error as a fraction of that bound.
 *
 * Runs on the pocl devices only; exits 77 when there is none. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "attn.h"
#include "testutil.h"

static attn_context *g_ctx;
static char g_dev[80];

#define CHECK_OK(call)                                                                 \
  do {                                                                                 \
    attn_status st_ = (call);                                                          \
    if (st_ != ATTN_OK) fail_msg("%s: %s (%s)", #call, attn_last_error(), attn_status_str(st_)); \
  } while (0)

#define F32 ATTN_F32
#define F16 ATTN_F16
#define BF16 ATTN_BF16

/* The storage types of one SDPA call. */
typedef struct combo {
  const char *name;
  attn_dtype q, k, v, out, mask, weights;
} combo;

static const combo combos[] = {
    {"f16", F16, F16, F16, F16, F16, F16},
    {"bf16", BF16, BF16, BF16, BF16, BF16, BF16},
    {"f32q_f16kv", F32, F16, F16, F32, F16, F32},
    {"f32q_bf16kv", F32, BF16, BF16, F32, BF16, F32},
    {"bf16qkv_f32out", BF16, BF16, BF16, F32, F32, BF16},
    {"mixed", F16, BF16, F32, BF16, F16, F16},
};
#define NCOMBOS (sizeof combos / sizeof combos[0])

/* k's layout: contiguous; rows apart ([B,S,H,D+2], unit stride along D, as
 * a KV cache often is); or stride 2 along D (the flash kernel's non-unit
 * path; the decode path does not take it). */
enum { K_DENSE, K_ROWS, K_STRIDED };

typedef struct scase {
  const char *name;
  int64_t B, Hq, Hkv, Sq, Skv, D, Dv;
  attn_mask_kind mask;
  bool causal, kv_lens, lse, weights;
  int klayout;
  const char *modes; /* ATTN_POCL_DECODE values to run, "" = unset */
} scase;

static const scase shapes[] = {
    /* everything at once, weights included: the flash kernel and its weights pass */
    {"gqa_add_causal_kvlens_w", 2, 4, 2, 37, 53, 32, 48, ATTN_MASK_ADDITIVE, true, true, true,
     true, K_ROWS, "0"},
    /* both paths: GQA, bool mask, Dv != D, rows-apart k */
    {"gqa_bool_dv", 2, 4, 2, 9, 300, 32, 48, ATTN_MASK_BOOL, false, true, true, false, K_ROWS,
     "0,1"},
    /* decode-shaped: Sq = 1 (default routing takes decode) and Sq = 4 */
    {"decode_sq1", 1, 4, 2, 1, 700, 64, 64, ATTN_MASK_NONE, true, true, true, false, K_DENSE,
     ",0"},
    {"decode_sq4_add", 1, 4, 2, 4, 300, 128, 64, ATTN_MASK_ADDITIVE, true, false, true, false,
     K_ROWS, "1,0"},
    /* D == Dv == 64 with unit strides: the flash kernel's 16-wide widening */
    {"exact_unit", 1, 2, 2, 40, 70, 64, 64, ATTN_MASK_NONE, false, false, true, false, K_DENSE,
     "0,1"},
    {"exact_unit_causal_w", 1, 2, 1, 40, 40, 64, 64, ATTN_MASK_NONE, true, false, false, true,
     K_DENSE, "0"},
    /* stride 2 along k's head dim */
    {"k_strided", 1, 4, 2, 20, 33, 16, 24, ATTN_MASK_BOOL, true, false, true, true, K_STRIDED,
     "0"},
};
#define NSHAPES (sizeof shapes / sizeof shapes[0])

static double unit_roundoff(attn_dtype t) {
  return t == F16 ? 1.5 * ldexp(1.0, -11) : t == BF16 ? 1.5 * ldexp(1.0, -8) : 0.0;
}
#define BASE_TOL 2e-5

/* got against want element-wise with the rule above; returns the worst
 * error over its bound (<= 1 passes), or fails the test naming what. */
static double check(const char *what, const float *got, const double *want, size_t n,
                    attn_dtype t) {
  const double u = unit_roundoff(t);
  double worst = 0;
  for (size_t i = 0; i < n; i++) {
    const double w = want[i], g = got[i];
    if (isnan(w)) {
      if (!isnan(g)) fail_msg("%s[%zu] = %g, want NaN", what, i, g);
      continue;
    }
    if (isinf(w)) {
      if (g != w) fail_msg("%s[%zu] = %g, want %g", what, i, g, w);
      continue;
    }
    if (isnan(g)) fail_msg("%s[%zu] = NaN, want %.9g", what, i, w);
    const double bound = BASE_TOL * (1 + fabs(w)) + u * fabs(w);
    const double r = fabs(g - w) / bound;
    if (r > worst) worst = r;
    if (r > 1)
      fail_msg("%s[%zu] = %.9g, want %.9g: error %.3g > bound %.3g (%s)", what, i, g, w,
               fabs(g - w), bound, attn_dtype_str(t));
  }
  return worst;
}

/* A [B,H,S,X] tensor of type t in the given layout, its gaps NaN (a bad
 * stride reads them and poisons the result); host data written (rounded to
 * t) and read back into rounded (the values the device sees). */
static attn_tensor *make(attn_dtype t, const float *host, int64_t B, int64_t H, int64_t S,
                         int64_t X, int layout, attn_tensor **base_out, float *rounded) {
  const int64_t shape[4] = {B, H, S, X};
  int64_t st[4], span;
  if (layout == K_ROWS) {
    st[3] = 1, st[1] = X + 2, st[2] = H * (X + 2), st[0] = S * H * (X + 2);
    span = B * S * H * (X + 2);
  } else if (layout == K_STRIDED) {
    st[3] = 2, st[2] = 2 * X, st[1] = S * 2 * X, st[0] = H * S * 2 * X;
    span = B * H * S * 2 * X;
  } else {
    st[3] = 1, st[2] = X, st[1] = S * X, st[0] = H * S * X;
    span = B * H * S * X;
  }
  attn_tensor *base, *view;
  CHECK_OK(attn_tensor_create_typed(g_ctx, t, 1, &span, &base));
  float *fill = malloc((size_t)span * sizeof *fill);
  assert_non_null(fill);
  tu_fill_nan(fill, (size_t)span);
  CHECK_OK(attn_tensor_write(base, fill, (size_t)span));
  free(fill);
  CHECK_OK(attn_tensor_view(base, 0, 4, shape, st, &view));
  const size_t n = (size_t)(B * H * S * X);
  if (host) {
    CHECK_OK(attn_tensor_write(view, host, n));
    if (rounded) CHECK_OK(attn_tensor_read(view, rounded, n));
  }
  *base_out = base;
  return view;
}

static void run_sdpa(const combo *cb, const scase *c, const char *mode) {
  char what[160];
  snprintf(what, sizeof what, "%s/%s ATTN_POCL_DECODE='%s'", cb->name, c->name, mode);
  tu_sdpa_problem p = {.B = c->B, .Hq = c->Hq, .Hkv = c->Hkv, .Sq = c->Sq, .Skv = c->Skv,
                       .D = c->D, .Dv = c->Dv, .causal = c->causal};
  p.scale = (double)(float)(1.0 / sqrt((double)c->D));
  uint64_t s = 0xD7E0000u + (uint64_t)(c - shapes) * 64 + (uint64_t)(cb - combos);
  const size_t nq = (size_t)(c->B * c->Hq * c->Sq * c->D), nk = (size_t)(c->B * c->Hkv * c->Skv * c->D),
               nv = (size_t)(c->B * c->Hkv * c->Skv * c->Dv), rows = (size_t)(c->B * c->Hq * c->Sq),
               no = rows * (size_t)c->Dv, nw = rows * (size_t)c->Skv;
  float *q = tu_alloc_uniform(nq, &s, -2, 2), *k = tu_alloc_uniform(nk, &s, -1, 1),
        *v = tu_alloc_uniform(nv, &s, -1, 1);
  float *rq = malloc(nq * sizeof *rq), *rk = malloc(nk * sizeof *rk), *rv = malloc(nv * sizeof *rv);
  assert_true(rq && rk && rv);
  float *mask = NULL, *rm = NULL;
  if (c->mask != ATTN_MASK_NONE) {
    /* broadcast over the batch, full over the heads */
    p.mask_b = 1, p.mask_h = c->Hq;
    const size_t n = (size_t)(c->Hq * c->Sq * c->Skv);
    mask = tu_alloc_uniform(n, &s, -3, 1);
    rm = malloc(n * sizeof *rm);
    assert_non_null(rm);
    for (size_t i = 0; i < n; i++) {
      const bool hide = tu_rand_u64(&s) % 4 == 0;
      /* a bool mask: nonzero attends, 0.5 and -2 included */
      if (c->mask == ATTN_MASK_BOOL) mask[i] = hide ? 0.0f : (i % 3 == 0 ? 0.5f : i % 3 == 1 ? 1.0f : -2.0f);
      else if (hide) mask[i] = -INFINITY;
    }
    /* one row sees nothing: zeros and lse -inf */
    for (int64_t j = 0; j < c->Skv; j++) mask[j] = c->mask == ATTN_MASK_BOOL ? 0.0f : -INFINITY;
    p.mask_kind = c->mask;
  }
  int32_t lens[4];
  if (c->kv_lens) {
    for (int64_t b = 0; b < c->B; b++) lens[b] = b == 0 ? (int32_t)(c->Skv / 3) : (int32_t)c->Skv;
    p.kv_lens = lens;
  }

  attn_tensor *bq, *bk, *bv, *bo, *bm = NULL, *tm = NULL, *tl = NULL, *bw = NULL, *tw = NULL;
  attn_tensor *tq = make(cb->q, q, c->B, c->Hq, c->Sq, c->D, K_DENSE, &bq, rq);
  attn_tensor *tk = make(cb->k, k, c->B, c->Hkv, c->Skv, c->D, c->klayout, &bk, rk);
  attn_tensor *tv = make(cb->v, v, c->B, c->Hkv, c->Skv, c->Dv,
                         c->klayout == K_STRIDED ? K_DENSE : c->klayout, &bv, rv);
  attn_tensor *to = make(cb->out, NULL, c->B, c->Hq, c->Sq, c->Dv, K_DENSE, &bo, NULL);
  /* with k, the mask strided too (the flash kernel's scalar mask path) */
  if (mask)
    tm = make(cb->mask, mask, 1, c->Hq, c->Sq, c->Skv,
              c->klayout == K_STRIDED ? K_STRIDED : K_DENSE, &bm, rm);
  if (c->weights) tw = make(cb->weights, NULL, c->B, c->Hq, c->Sq, c->Skv, K_DENSE, &bw, NULL);
  if (c->lse) {
    const int64_t ls[3] = {c->B, c->Hq, c->Sq};
    CHECK_OK(attn_tensor_create(g_ctx, 3, ls, &tl));
  }
  p.q = rq, p.k = rk, p.v = rv, p.mask = rm;

  attn_sdpa_args a = ATTN_SDPA_ARGS_INIT;
  a.q = tq, a.k = tk, a.v = tv, a.out = to, a.mask = tm;
  a.mask_kind = mask ? c->mask : ATTN_MASK_NONE;
  a.causal = c->causal, a.kv_lens = c->kv_lens ? lens : NULL, a.lse = tl, a.weights = tw;
  if (*mode) setenv("ATTN_POCL_DECODE", mode, 1);
  else unsetenv("ATTN_POCL_DECODE");
  CHECK_OK(attn_sdpa(g_ctx, &a));
  CHECK_OK(attn_synchronize(g_ctx));
  unsetenv("ATTN_POCL_DECODE");

  float *got = malloc(no * sizeof *got), *gl = malloc(rows * sizeof *gl),
        *gw = c->weights ? malloc(nw * sizeof *gw) : NULL;
  double *want = malloc(no * sizeof *want), *wl = malloc(rows * sizeof *wl),
         *ww = c->weights ? malloc(nw * sizeof *ww) : NULL;
  assert_true(got && gl && want && wl && (!c->weights || (gw && ww)));
  CHECK_OK(attn_tensor_read(to, got, no));
  if (tl) CHECK_OK(attn_tensor_read(tl, gl, rows));
  if (tw) CHECK_OK(attn_tensor_read(tw, gw, nw));
  tu_sdpa_double(&p, want, ww, wl);
  char w2[200];
  snprintf(w2, sizeof w2, "%s out", what);
  const double eo = check(w2, got, want, no, cb->out);
  double el = 0, ew = 0;
  if (tl) {
    snprintf(w2, sizeof w2, "%s lse", what);
    el = check(w2, gl, wl, rows, F32);
  }
  if (tw) {
    snprintf(w2, sizeof w2, "%s weights", what);
    ew = check(w2, gw, ww, nw, cb->weights);
  }
  printf("  %-44s worst error / bound: out (%s) %.3f, lse %.3f, weights (%s) %.3f\n", what,
         attn_dtype_str(cb->out), eo, el, tw ? attn_dtype_str(cb->weights) : "-", ew);
  if (mask) {
    /* the oracle agrees that row 0 sees nothing (the test does what it says) */
    assert_true(want[0] == 0.0 && isinf(wl[0]) && wl[0] < 0);
    for (int64_t e = 0; e < c->Dv; e++) assert_true(got[e] == 0.0f);
  }
  free(got), free(gl), free(gw), free(want), free(wl), free(ww);
  attn_tensor_free(tq), attn_tensor_free(tk), attn_tensor_free(tv), attn_tensor_free(to);
  attn_tensor_free(bq), attn_tensor_free(bk), attn_tensor_free(bv), attn_tensor_free(bo);
  attn_tensor_free(tm), attn_tensor_free(bm), attn_tensor_free(tl);
  attn_tensor_free(tw), attn_tensor_free(bw);
  free(q), free(k), free(v), free(mask), free(rq), free(rk), free(rv), free(rm);
}

static void sdpa_combo(void **state) {
  const combo *cb = *state;
  for (size_t i = 0; i < NSHAPES; i++) {
    const char *m = shapes[i].modes;
    for (;;) {
      const char *comma = strchr(m, ',');
      char mode[8];
      const size_t n = comma ? (size_t)(comma - m) : strlen(m);
      snprintf(mode, sizeof mode, "%.*s", (int)n, m);
      run_sdpa(cb, &shapes[i], mode);
      if (!comma) break;
      m = comma + 1;
    }
  }
}

/* ---- rounding of 16-bit stores --------------------------------------------
 * One visible key: its probability is exactly 1, so out = v exactly before
 * the store, and the stored bits must be v rounded to nearest even: above
 * half an ulp rounds up (truncation would not), a tie goes to the even
 * neighbour (both directions), the sign is kept, and NaN stays NaN (quiet,
 * not inf). Dv = 16 columns: the cases, then 1.0. The second key is hidden
 * by kv_lens, its values NaN (they must not reach the output). */
static void store_rounding(attn_dtype t, const char *mode) {
  const double u = t == BF16 ? ldexp(1.0, -8) : ldexp(1.0, -11); /* half an ulp at 1 */
  const float vals[6] = {(float)(1 + u + u / 4), (float)(1 + u), (float)(1 + 3 * u), NAN,
                         (float)-(1 + u + u / 4), (float)(1 + 2 * u)};
  /* expected bits */
  const uint16_t one = t == BF16 ? 0x3f80 : 0x3c00;
  const uint16_t want[6] = {(uint16_t)(one + 1), one, (uint16_t)(one + 2), 0,
                            (uint16_t)(0x8000 | (one + 1)), (uint16_t)(one + 1)};
  const int64_t D = 16, qs[4] = {1, 1, 1, D}, ks[4] = {1, 1, 2, D};
  float q[16], kv[32];
  for (int i = 0; i < 16; i++) q[i] = 0.25f, kv[i] = i < 6 ? vals[i] : 1.0f, kv[16 + i] = NAN;
  float kk[32];
  for (int i = 0; i < 32; i++) kk[i] = 0.5f;
  attn_tensor *tq, *tk, *tv, *to;
  CHECK_OK(attn_tensor_create(g_ctx, 4, qs, &tq));
  CHECK_OK(attn_tensor_create(g_ctx, 4, ks, &tk));
  CHECK_OK(attn_tensor_create(g_ctx, 4, ks, &tv));
  CHECK_OK(attn_tensor_create_typed(g_ctx, t, 4, qs, &to));
  CHECK_OK(attn_tensor_write(tq, q, 16));
  CHECK_OK(attn_tensor_write(tk, kk, 32));
  CHECK_OK(attn_tensor_write(tv, kv, 32));
  const int32_t len = 1;
  attn_sdpa_args a = ATTN_SDPA_ARGS_INIT;
  a.q = tq, a.k = tk, a.v = tv, a.out = to, a.kv_lens = &len;
  setenv("ATTN_POCL_DECODE", mode, 1);
  CHECK_OK(attn_sdpa(g_ctx, &a));
  CHECK_OK(attn_synchronize(g_ctx));
  unsetenv("ATTN_POCL_DECODE");
  uint16_t got[16];
  CHECK_OK(attn_tensor_read_raw(to, got, 16));
  for (int i = 0; i < 16; i++) {
    if (i == 3) {
      const uint16_t exp_mask = t == BF16 ? 0x7f80 : 0x7c00, man = t == BF16 ? 0x7f : 0x3ff,
                     quiet = t == BF16 ? 0x40 : 0x200;
      if ((got[i] & exp_mask) != exp_mask || !(got[i] & man) || !(got[i] & quiet))
        fail_msg("%s out of NaN (ATTN_POCL_DECODE=%s): bits 0x%04x, want a quiet NaN",
                 attn_dtype_str(t), mode, got[i]);
      continue;
    }
    const uint16_t w = i < 6 ? want[i] : one;
    if (got[i] != w)
      fail_msg("%s out of %.9g (ATTN_POCL_DECODE=%s): bits 0x%04x, want 0x%04x",
               attn_dtype_str(t), (double)(i < 6 ? vals[i] : 1.0f), mode, got[i], w);
  }
  attn_tensor_free(tq), attn_tensor_free(tk), attn_tensor_free(tv), attn_tensor_free(to);
}
static void rounding_bf16(void **state) {
  (void)state;
  store_rounding(BF16, "0");
  store_rounding(BF16, "1");
}
static void rounding_f16(void **state) {
  (void)state;
  store_rounding(F16, "0");
  store_rounding(F16, "1");
}

/* ---- the linear stage through one-head MHA graphs -------------------------
 * With one head the graph is: q, k, v = linear(x), rounded to their storage
 * types (desc.dtype, desc.kv_dtype); a = sdpa(q, k, v) rounded to
 * desc.dtype; out = linear(a). The oracle rounds the same intermediates
 * (through tensors of those types), from the weights and x as stored. The
 * kernel's own rounding of an intermediate may land one ulp from the
 * oracle's, which the later stages carry on: the bound is 4 ulps of the
 * coarsest intermediate type relative to the largest output (2e-5 for
 * f32), on top of the base term. E = 72: four 16-wide blocks of k and a tail of 8. */
static void round_through(attn_dtype t, float *x, size_t n) {
  if (t == F32) return;
  attn_tensor *r;
  const int64_t len = (int64_t)n;
  CHECK_OK(attn_tensor_create_typed(g_ctx, t, 1, &len, &r));
  CHECK_OK(attn_tensor_write(r, x, n));
  CHECK_OK(attn_tensor_read(r, x, n));
  attn_tensor_free(r);
}

static void mha_typed(attn_dtype act, attn_dtype kvt, attn_dtype wt, attn_dtype bt, int64_t S,
                      const char *mode) {
  const int64_t E = 72;
  char what[96];
  snprintf(what, sizeof what, "mha x/out %s kv %s W %s bias %s S=%lld", attn_dtype_str(act),
           attn_dtype_str(kvt), attn_dtype_str(wt), attn_dtype_str(bt), (long long)S);
  uint64_t rng = 0x11AE0000u + (uint64_t)(act * 27 + kvt * 9 + wt * 3 + bt) * 100 + (uint64_t)S;
  const size_t ee = (size_t)(E * E), se = (size_t)(S * E);
  float *w[4], *bias[4], *x = tu_alloc_uniform(se, &rng, -1, 1);
  attn_tensor *tw[4], *tb[4];
  const int64_t ws[2] = {E, E};
  for (int i = 0; i < 4; i++) {
    w[i] = tu_alloc_uniform(ee, &rng, -0.1f, 0.1f);
    bias[i] = tu_alloc_uniform((size_t)E, &rng, -0.5f, 0.5f);
    CHECK_OK(attn_tensor_create_typed(g_ctx, wt, 2, ws, &tw[i]));
    CHECK_OK(attn_tensor_write(tw[i], w[i], ee));
    CHECK_OK(attn_tensor_read(tw[i], w[i], ee));
    CHECK_OK(attn_tensor_create_typed(g_ctx, bt, 1, &E, &tb[i]));
    CHECK_OK(attn_tensor_write(tb[i], bias[i], (size_t)E));
    CHECK_OK(attn_tensor_read(tb[i], bias[i], (size_t)E));
  }
  attn_mha_desc d = ATTN_MHA_DESC_INIT;
  d.d_model = E, d.n_heads = 1, d.bias = true, d.causal = true, d.max_batch = 1, d.max_seq = S;
  d.dtype = act, d.kv_dtype = kvt;
  attn_mha_weights mw = {.wq = tw[0], .wk = tw[1], .wv = tw[2], .wo = tw[3],
                         .bq = tb[0], .bk = tb[1], .bv = tb[2], .bo = tb[3]};
  attn_mha *g;
  CHECK_OK(attn_mha_create(g_ctx, &d, &mw, &g));
  const int64_t xs[3] = {1, S, E};
  attn_tensor *tx, *to;
  CHECK_OK(attn_tensor_create_typed(g_ctx, act, 3, xs, &tx));
  CHECK_OK(attn_tensor_write(tx, x, se));
  CHECK_OK(attn_tensor_read(tx, x, se));
  CHECK_OK(attn_tensor_create_typed(g_ctx, act, 3, xs, &to));
  float *got = malloc(se * sizeof *got), *o = malloc(se * sizeof *o), *qkv[3];
  double *y = malloc(se * sizeof *y);
  assert_true(got && o && y);
  tu_fill_nan(got, se); /* an element the graph never writes fails */
  CHECK_OK(attn_tensor_write(to, got, se));
  setenv("ATTN_POCL_DECODE", mode, 1);
  CHECK_OK(attn_mha_run(g, tx, NULL, to));
  unsetenv("ATTN_POCL_DECODE");
  CHECK_OK(attn_tensor_read(to, got, se));

  for (int i = 0; i < 3; i++) {
    tu_linear_double(x, S, E, w[i], bias[i], E, y);
    qkv[i] = malloc(se * sizeof *qkv[i]);
    assert_non_null(qkv[i]);
    for (size_t j = 0; j < se; j++) qkv[i][j] = (float)y[j];
    round_through(i == 0 ? act : kvt, qkv[i], se);
  }
  tu_sdpa_problem p = {.B = 1, .Hq = 1, .Hkv = 1, .Sq = S, .Skv = S, .D = E, .Dv = E,
                       .q = qkv[0], .k = qkv[1], .v = qkv[2], .causal = true,
                       .scale = (double)(float)(1.0 / sqrt((double)E))};
  tu_sdpa_double(&p, y, NULL, NULL);
  for (size_t j = 0; j < se; j++) o[j] = (float)y[j];
  round_through(act, o, se);
  tu_linear_double(o, S, E, w[3], bias[3], E, y);
  double ymax = 0, worst = 0;
  for (size_t j = 0; j < se; j++) ymax = fmax(ymax, fabs(y[j]));
  /* the coarsest intermediate's ulps */
  const attn_dtype ct = act == BF16 || kvt == BF16 ? BF16 : act == F16 || kvt == F16 ? F16 : F32;
  const double ulp4 = ct == F16 ? ldexp(1.0, -8) : ct == BF16 ? ldexp(1.0, -5) : 2e-5;
  for (size_t j = 0; j < se; j++) {
    if (isnan(got[j])) fail_msg("%s: out[%zu] NaN, want %g", what, j, y[j]);
    const double bound = BASE_TOL * (1 + fabs(y[j])) + ulp4 * ymax;
    const double r = fabs(got[j] - y[j]) / bound;
    if (r > worst) worst = r;
    if (r > 1)
      fail_msg("%s: out[%zu] = %.9g, want %.9g: error %.3g > bound %.3g", what, j,
               (double)got[j], y[j], fabs(got[j] - y[j]), bound);
  }
  printf("  %-52s worst error / bound %.3f\n", what, worst);

  free(got), free(y), free(o), free(x);
  for (int i = 0; i < 3; i++) free(qkv[i]);
  for (int i = 0; i < 4; i++) {
    free(w[i]), free(bias[i]);
    attn_tensor_free(tw[i]), attn_tensor_free(tb[i]);
  }
  attn_tensor_free(tx), attn_tensor_free(to);
  attn_mha_free(g);
}
static void mha_f16(void **state) {
  (void)state;
  mha_typed(F16, F16, F16, F16, 45, "0");
  mha_typed(F16, F16, F16, F16, 3, "1");
}
static void mha_bf16(void **state) {
  (void)state;
  mha_typed(BF16, BF16, BF16, BF16, 45, "0");
  mha_typed(BF16, BF16, BF16, BF16, 3, "1");
}
static void mha_f32_bf16kv(void **state) {
  (void)state;
  mha_typed(F32, BF16, BF16, F32, 45, "0");
  mha_typed(F32, F16, F16, BF16, 3, "1");
}
static void mha_mixed(void **state) {
  (void)state;
  mha_typed(BF16, F16, F32, F16, 20, "0");
  mha_typed(F16, BF16, BF16, F32, 9, "1");
}

static int open_device(void **state) {
  (void)state;
  if (attn_open(g_dev, &g_ctx) != ATTN_OK) {
    print_error("attn_open(\"%s\"): %s\n", g_dev, attn_last_error());
    return -1;
  }
  return 0;
}
static int close_device(void **state) {
  (void)state;
  attn_close(g_ctx);
  g_ctx = NULL;
  return 0;
}

int main(void) {
  struct CMUnitTest tests[NCOMBOS + 6];
  static char names[NCOMBOS][64];
  for (size_t i = 0; i < NCOMBOS; i++) {
    snprintf(names[i], sizeof names[i], "sdpa_%s", combos[i].name);
    tests[i] = (struct CMUnitTest){names[i], sdpa_combo, NULL, NULL, (void *)&combos[i]};
  }
  tests[NCOMBOS] = (struct CMUnitTest)cmocka_unit_test(rounding_bf16);
  tests[NCOMBOS + 1] = (struct CMUnitTest)cmocka_unit_test(rounding_f16);
  tests[NCOMBOS + 2] = (struct CMUnitTest)cmocka_unit_test(mha_f16);
  tests[NCOMBOS + 3] = (struct CMUnitTest)cmocka_unit_test(mha_bf16);
  tests[NCOMBOS + 4] = (struct CMUnitTest)cmocka_unit_test(mha_f32_bf16kv);
  tests[NCOMBOS + 5] = (struct CMUnitTest)cmocka_unit_test(mha_mixed);
  char sel[16][64];
  const int n = tu_devices("pocl_dtype", sel, 16);
  int failed = 0, ran = 0;
  for (int d = 0; d < n; d++) {
    if (strncmp(sel[d], "pocl", 4) != 0) continue;
    snprintf(g_dev, sizeof g_dev, "%.63s", sel[d]);
    char group[128];
    snprintf(group, sizeof group, "pocl_dtype on %s", g_dev);
    failed += _cmocka_run_group_tests(group, tests, NCOMBOS + 6, open_device, close_device);
    ran++;
  }
  if (!ran) {
    printf("no pocl device: nothing to run\n");
    return 77;
  }
  return failed ? 1 : 0;
}
