/* Element types through the whole stack, on every device found:
 *  - the SDK's conversions against numpy / ml_dtypes (tests/fixtures/dtype_rne.h,
 *    committed; round to nearest even, NaN stays NaN) and every 16-bit pattern;
 *  - tensors: write/read convert, the _raw variants copy bits, strided views;
 *  - SDPA with every dtype mix the contract names (and a few more), with
 *    masks, causal, kv_lens, GQA, Dv != D, lse and weights, at flash- and
 *    decode-shaped sizes, against tu_sdpa_double run on the inputs as stored
 *    (read back after rounding), so the error measures the kernel;
 *  - MHA with f16 / bf16 weights, bf16 activations and f16 / bf16 KV caches
 *    decoding token by token;
 *  - growing structs: an older (shorter) attn_sdpa_args, a newer (longer) one.
 *
 * The error bound per output type (the README's numerics contract): the f32
 * rule of testutil.h, plus half an ulp of the output type at each element
 * (2^-11 relative for f16, 2^-8 for bf16). */
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
#include "attn_plugin.h"
#include "fixtures/dtype_rne.h"
#include "testutil.h"

#define CHECK_OK(call)                                                                       \
  do {                                                                                       \
    attn_status st_ = (call);                                                                \
    if (st_ != ATTN_OK)                                                                      \
      fail_msg("%s: %s (%s)", #call, attn_last_error(), attn_status_str(st_));               \
  } while (0)

static const attn_dtype F32 = ATTN_F32, F16 = ATTN_F16, BF16 = ATTN_BF16;

/* ---- conversions ---------------------------------------------------------------- */

static float bits_f32(uint32_t u) {
  float f;
  memcpy(&f, &u, sizeof f);
  return f;
}

static void conversions_match_numpy(void **state) {
  (void)state;
  const size_t n = sizeof dtype_rne / sizeof dtype_rne[0];
  for (size_t i = 0; i < n; i++) {
    const float x = bits_f32(dtype_rne[i][0]);
    const uint16_t h = attn_f32_to_f16(x), b = attn_f32_to_bf16(x);
    if (isnan(x)) {
      /* NaN stays a (quiet) NaN, sign kept. */
      if (!isnan(attn_f16_to_f32(h)) || !isnan(attn_bf16_to_f32(b)) || !(b & 0x0040) ||
          !(h & 0x0200) || (h >> 15) != (dtype_rne[i][0] >> 31) ||
          (b >> 15) != (dtype_rne[i][0] >> 31))
        fail_msg("NaN 0x%08x -> f16 0x%04x bf16 0x%04x", dtype_rne[i][0], h, b);
      continue;
    }
    if (h != dtype_rne[i][1])
      fail_msg("f32 0x%08x (%.9g) -> f16 0x%04x, numpy 0x%04x", dtype_rne[i][0], x, h,
               dtype_rne[i][1]);
    if (b != dtype_rne[i][2])
      fail_msg("f32 0x%08x (%.9g) -> bf16 0x%04x, ml_dtypes 0x%04x", dtype_rne[i][0], x, b,
               dtype_rne[i][2]);
  }
}

/* Every 16-bit pattern widens exactly (checked against ldexp) and narrows
 * back to itself. */
static void every_half_round_trips(void **state) {
  (void)state;
  for (uint32_t u = 0; u < 65536; u++) {
    const uint16_t h = (uint16_t)u;
    const float f = attn_f16_to_f32(h);
    const int e = (h >> 10) & 31, m = h & 1023, neg = h >> 15;
    double want;
    if (e == 31) want = m ? NAN : INFINITY;
    else if (e == 0) want = ldexp((double)m, -24);
    else want = ldexp(1024.0 + m, e - 25);
    if (neg) want = -want;
    if (isnan(want)) {
      if (!isnan(f)) fail_msg("f16 0x%04x -> %g, want NaN", h, f);
      continue;
    }
    if ((double)f != want || !signbit(f) != !signbit(want))
      fail_msg("f16 0x%04x -> %.9g, want %.9g", h, f, want);
    if (attn_f32_to_f16(f) != h) fail_msg("f16 0x%04x does not round-trip", h);
    const float g = attn_bf16_to_f32(h);
    if (!isnan(g) && attn_f32_to_bf16(g) != h) fail_msg("bf16 0x%04x does not round-trip", h);
  }
}

/* ---- tensors ---------------------------------------------------------------------- */

static void tensor_write_read(void **state) {
  attn_context *ctx = *state;
  assert_string_equal(attn_dtype_str(BF16), "bf16");
  assert_int_equal(attn_dtype_size(F16), 2);
  attn_dtype t;
  CHECK_OK(attn_dtype_parse("bfloat16", &t));
  assert_int_equal(t, BF16);
  tu_assert_fails(attn_dtype_parse("f64", &t), ATTN_ERR_INVALID_ARG, "f64");
  const size_t n = sizeof dtype_rne / sizeof dtype_rne[0];
  float *x = malloc(n * sizeof *x), *back = malloc(n * sizeof *back);
  uint16_t *raw = malloc(n * sizeof *raw);
  assert_non_null(x);
  assert_non_null(back);
  assert_non_null(raw);
  for (size_t i = 0; i < n; i++) x[i] = bits_f32(dtype_rne[i][0]);
  const int64_t shape[1] = {(int64_t)n};
  for (int col = 1; col <= 2; col++) {
    attn_tensor *tt = NULL;
    const attn_dtype dt = col == 1 ? F16 : BF16;
    CHECK_OK(attn_tensor_create_typed(ctx, dt, 1, shape, &tt));
    assert_int_equal(attn_tensor_dtype(tt), dt);
    CHECK_OK(attn_tensor_write(tt, x, n));
    CHECK_OK(attn_tensor_read_raw(tt, raw, n));
    CHECK_OK(attn_tensor_read(tt, back, n));
    for (size_t i = 0; i < n; i++) {
      if (isnan(x[i])) {
        assert_true(isnan(back[i]));
        continue;
      }
      if (raw[i] != dtype_rne[i][col])
        fail_msg("%s element %zu: 0x%04x, want 0x%04x", attn_dtype_str(dt), i, raw[i],
                 dtype_rne[i][col]);
      const float w = col == 1 ? attn_f16_to_f32(raw[i]) : attn_bf16_to_f32(raw[i]);
      assert_memory_equal(&back[i], &w, sizeof w);
    }
    /* raw write: the bits as given. */
    for (size_t i = 0; i < n; i++) raw[i] = (uint16_t)(0x3c00 + i);
    CHECK_OK(attn_tensor_write_raw(tt, raw, n));
    uint16_t *again = calloc(n, sizeof *again);
    assert_non_null(again);
    CHECK_OK(attn_tensor_read_raw(tt, again, n));
    assert_memory_equal(again, raw, n * sizeof *raw);
    free(again);
    attn_tensor_free(tt);
  }
  /* A strided view of a bf16 tensor writes its elements and keeps the others. */
  const int64_t s2[2] = {4, 6};
  attn_tensor *base = NULL, *view = NULL;
  CHECK_OK(attn_tensor_create_typed(ctx, BF16, 2, s2, &base));
  float all[24], part[8], got[24];
  for (int i = 0; i < 24; i++) all[i] = (float)i;
  for (int i = 0; i < 8; i++) part[i] = -1.0f - (float)i;
  CHECK_OK(attn_tensor_write(base, all, 24));
  const int64_t vs[2] = {4, 2}, vst[2] = {6, 2};
  CHECK_OK(attn_tensor_view(base, 1, 2, vs, vst, &view));
  assert_int_equal(attn_tensor_dtype(view), BF16);
  CHECK_OK(attn_tensor_write(view, part, 8));
  CHECK_OK(attn_tensor_read(base, got, 24));
  for (int r = 0; r < 4; r++)
    for (int c = 0; c < 6; c++) {
      float want = (c == 1 || c == 3) ? part[r * 2 + c / 2] : all[r * 6 + c];
      assert_true(got[r * 6 + c] == want);
    }
  /* A view's offset counts elements of its type: past the storage is refused. */
  const int64_t one[1] = {1}, unit[1] = {1};
  attn_tensor *bad = NULL;
  tu_assert_fails(attn_tensor_view(base, 24, 1, one, unit, &bad), ATTN_ERR_SHAPE, "offset");
  attn_tensor_free(view);
  attn_tensor_free(base);
  free(x);
  free(back);
  free(raw);
}

/* ---- SDPA ------------------------------------------------------------------------- */

/* Dtypes of one call; mt/wt -1: no mask / no weights output. */
typedef struct mix {
  attn_dtype q, k, v, o;
  int mt, wt;
} mix;

static const mix mixes[] = {
    {F16, F16, F16, F16, -1, -1},       {BF16, BF16, BF16, BF16, -1, -1},
    {F32, F16, F16, F32, -1, -1},       {F32, BF16, BF16, F32, -1, -1},
    {BF16, BF16, BF16, F32, -1, -1},    {F16, F16, F16, F16, ATTN_F16, ATTN_F16},
    {BF16, BF16, BF16, BF16, ATTN_BF16, ATTN_BF16}, {F32, BF16, BF16, F32, ATTN_F32, ATTN_F32},
    {F32, F16, F16, F32, ATTN_BF16, ATTN_F32},
};

typedef struct shape_case {
  int64_t B, Hq, Hkv, Sq, Skv, D, Dv;
  bool causal, kv_lens, lse;
  attn_mask_kind mask; /* used when the mix has a mask type */
  int64_t koff;        /* k's view starts this many elements into its storage */
} shape_case;

static const shape_case shapes[] = {
    /* small, every option */
    {2, 4, 2, 5, 7, 16, 8, true, true, true, ATTN_MASK_ADDITIVE, 0},
    /* decode-shaped: one query row over many keys (pocl's split-key path) */
    {1, 8, 2, 1, 700, 64, 64, false, true, true, ATTN_MASK_ADDITIVE, 0},
    /* the same at an odd element offset (rows not on 4-byte boundaries in 16 bits) */
    {1, 8, 2, 1, 300, 64, 64, false, false, true, ATTN_MASK_ADDITIVE, 1},
    {1, 4, 1, 3, 300, 128, 128, true, false, false, ATTN_MASK_BOOL, 0},
    /* prefill-shaped (pocl's flash kernel: several 32-row blocks) */
    {1, 2, 2, 70, 70, 32, 32, true, false, true, ATTN_MASK_ADDITIVE, 0},
};

static size_t numel4(int64_t a, int64_t b, int64_t c, int64_t d) { return (size_t)(a * b * c * d); }

/* A typed tensor holding x (converted as it is written); x is overwritten
 * with the values as stored, for the oracle. */
static attn_tensor *upload(attn_context *ctx, attn_dtype t, int nd, const int64_t *shape,
                           float *x, size_t n) {
  attn_tensor *tt = NULL;
  CHECK_OK(attn_tensor_create_typed(ctx, t, nd, shape, &tt));
  CHECK_OK(attn_tensor_write(tt, x, n));
  CHECK_OK(attn_tensor_read(tt, x, n));
  return tt;
}

/* The contract's bound for an output of type t against the double oracle. */
static void check_typed(const char *what, attn_dtype t, const float *got, const double *want,
                        size_t n) {
  if (!tu_check_close_typed(what, t, got, want, n, NULL)) fail_msg("%s: see above", what);
}

static void run_sdpa_mix(attn_context *ctx, const mix *m, const shape_case *s, uint64_t seed) {
  const int64_t B = s->B, Hq = s->Hq, Hkv = s->Hkv, Sq = s->Sq, Skv = s->Skv, D = s->D,
                Dv = s->Dv;
  const size_t nq = numel4(B, Hq, Sq, D), nk = numel4(B, Hkv, Skv, D),
               nv = numel4(B, Hkv, Skv, Dv), no = numel4(B, Hq, Sq, Dv),
               nm = numel4(B, 1, Sq, Skv), nw = numel4(B, Hq, Sq, Skv);
  uint64_t r = seed;
  float *q = tu_alloc_uniform(nq, &r, -2, 2), *k = tu_alloc_uniform(nk, &r, -2, 2),
        *v = tu_alloc_uniform(nv, &r, -3, 3), *mask = tu_alloc_uniform(nm, &r, -1, 1);
  float *out = calloc(no, sizeof *out), *w = calloc(nw, sizeof *w),
        *lse = calloc((size_t)(B * Hq * Sq), sizeof *lse);
  double *want = calloc(no, sizeof *want), *wantw = calloc(nw, sizeof *wantw),
         *wantl = calloc((size_t)(B * Hq * Sq), sizeof *wantl);
  assert_true(q && k && v && mask && out && w && lse && want && wantw && wantl);
  const bool has_mask = m->mt >= 0;
  if (has_mask)
    for (size_t i = 0; i < nm; i++) {
      if (s->mask == ATTN_MASK_BOOL) mask[i] = (i * 7) % 5 != 0; /* 1 = attend */
      else if ((i * 11) % 13 == 0) mask[i] = -INFINITY;
    }
  const int64_t qs[4] = {B, Hq, Sq, D}, vs[4] = {B, Hkv, Skv, Dv}, os[4] = {B, Hq, Sq, Dv},
                ms[4] = {B, 1, Sq, Skv}, ws[4] = {B, Hq, Sq, Skv}, ls[3] = {B, Hq, Sq};
  /* k is a strided view: [B, Skv, Hkv, D] storage seen as [B, Hkv, Skv, D]. */
  attn_tensor *tq = upload(ctx, m->q, 4, qs, q, nq);
  attn_tensor *kst = NULL, *tk = NULL;
  {
    const int64_t st_shape[1] = {(int64_t)nk + s->koff};
    float *kbshd = calloc(nk + (size_t)s->koff, sizeof *kbshd);
    assert_non_null(kbshd);
    for (int64_t b = 0; b < B; b++)
      for (int64_t h = 0; h < Hkv; h++)
        for (int64_t j = 0; j < Skv; j++)
          memcpy(&kbshd[s->koff + ((b * Skv + j) * Hkv + h) * D],
                 &k[((b * Hkv + h) * Skv + j) * D], (size_t)D * sizeof *k);
    kst = upload(ctx, m->k, 1, st_shape, kbshd, nk + (size_t)s->koff);
    for (int64_t b = 0; b < B; b++) /* k as stored, for the oracle */
      for (int64_t h = 0; h < Hkv; h++)
        for (int64_t j = 0; j < Skv; j++)
          memcpy(&k[((b * Hkv + h) * Skv + j) * D],
                 &kbshd[s->koff + ((b * Skv + j) * Hkv + h) * D], (size_t)D * sizeof *k);
    free(kbshd);
    const int64_t kshape[4] = {B, Hkv, Skv, D}, kstr[4] = {Skv * Hkv * D, D, Hkv * D, 1};
    CHECK_OK(attn_tensor_view(kst, s->koff, 4, kshape, kstr, &tk));
  }
  attn_tensor *tv = upload(ctx, m->v, 4, vs, v, nv);
  attn_tensor *tm = has_mask ? upload(ctx, (attn_dtype)m->mt, 4, ms, mask, nm) : NULL;
  attn_tensor *to = NULL, *tw = NULL, *tl = NULL;
  CHECK_OK(attn_tensor_create_typed(ctx, m->o, 4, os, &to));
  if (m->wt >= 0) CHECK_OK(attn_tensor_create_typed(ctx, (attn_dtype)m->wt, 4, ws, &tw));
  if (s->lse) CHECK_OK(attn_tensor_create(ctx, 3, ls, &tl));
  int32_t kvl[8];
  for (int64_t b = 0; b < B; b++) kvl[b] = (int32_t)(Skv - (b * Skv) / 3);

  attn_sdpa_args a = ATTN_SDPA_ARGS_INIT;
  a.q = tq, a.k = tk, a.v = tv, a.out = to, a.weights = tw, a.lse = tl;
  a.mask = tm, a.mask_kind = has_mask ? s->mask : ATTN_MASK_NONE;
  a.causal = s->causal;
  a.kv_lens = s->kv_lens ? kvl : NULL;
  CHECK_OK(attn_sdpa(ctx, &a));
  CHECK_OK(attn_tensor_read(to, out, no));
  if (tw) CHECK_OK(attn_tensor_read(tw, w, nw));
  if (tl) CHECK_OK(attn_tensor_read(tl, lse, (size_t)(B * Hq * Sq)));

  tu_sdpa_problem p = {B, Hq, Hkv, Sq, Skv, D, Dv, q, k, v, has_mask ? mask : NULL,
                       a.mask_kind, B, 1, s->causal, 1.0 / sqrt((double)D),
                       s->kv_lens ? kvl : NULL};
  tu_sdpa_double(&p, want, wantw, wantl);
  char what[160];
  snprintf(what, sizeof what, "%s q=%s k=%s v=%s out=%s mask=%s [%lld,%lld,%lld,%lld,%lld]",
           tu_device, attn_dtype_str(m->q), attn_dtype_str(m->k), attn_dtype_str(m->v),
           attn_dtype_str(m->o), has_mask ? attn_dtype_str((attn_dtype)m->mt) : "-",
           (long long)Hq, (long long)Hkv, (long long)Sq, (long long)Skv, (long long)D);
  check_typed(what, m->o, out, want, no);
  if (tw) check_typed("weights", (attn_dtype)m->wt, w, wantw, nw);
  if (tl) check_typed("lse", F32, lse, wantl, (size_t)(B * Hq * Sq));

  attn_tensor_free(tq);
  attn_tensor_free(tk);
  attn_tensor_free(kst);
  attn_tensor_free(tv);
  attn_tensor_free(tm);
  attn_tensor_free(to);
  attn_tensor_free(tw);
  attn_tensor_free(tl);
  free(q), free(k), free(v), free(mask), free(out), free(w), free(lse);
  free(want), free(wantw), free(wantl);
}

static void sdpa_every_mix(void **state) {
  attn_context *ctx = *state;
  for (size_t mi = 0; mi < sizeof mixes / sizeof mixes[0]; mi++)
    for (size_t si = 0; si < sizeof shapes / sizeof shapes[0]; si++)
      run_sdpa_mix(ctx, &mixes[mi], &shapes[si], 1 + mi * 16 + si);
}

/* An output value exactly between two bf16 values rounds to even, not down;
 * a NaN in a visible value stays NaN in a 16-bit output. */
static void sdpa_rounds_outputs(void **state) {
  attn_context *ctx = *state;
  const int64_t s1[4] = {1, 1, 1, 4};
  /* one key: out = v. 1 + 2^-8 + 2^-10 is above the tie 1 + 2^-8: bf16 rounds up to
   * 1 + 2^-7; 1 + 2^-8 is the tie itself: even is 1.0; 1 + 3*2^-8 ties up to 1 + 2^-6. */
  float vq[4] = {1.0f + 0x1p-8f + 0x1p-10f, 1.0f + 0x1p-8f, 1.0f + 3 * 0x1p-8f, NAN};
  const float want[4] = {1.0f + 0x1p-7f, 1.0f, 1.0f + 0x1p-6f, NAN};
  float one[4] = {0.5f, 0.5f, 0.5f, 0.5f}, got[4];
  attn_tensor *q = upload(ctx, F32, 4, s1, one, 4), *k = upload(ctx, F32, 4, s1, one, 4);
  attn_tensor *v = NULL, *o = NULL;
  CHECK_OK(attn_tensor_create(ctx, 4, s1, &v));
  CHECK_OK(attn_tensor_write(v, vq, 4));
  CHECK_OK(attn_tensor_create_typed(ctx, BF16, 4, s1, &o));
  attn_sdpa_args a = ATTN_SDPA_ARGS_INIT;
  a.q = q, a.k = k, a.v = v, a.out = o;
  CHECK_OK(attn_sdpa(ctx, &a));
  CHECK_OK(attn_tensor_read(o, got, 4));
  for (int i = 0; i < 3; i++)
    if (got[i] != want[i]) fail_msg("%s: bf16 out[%d] = %.9g, want %.9g", tu_device, i, got[i], want[i]);
  assert_true(isnan(got[3]));
  attn_tensor_free(q), attn_tensor_free(k), attn_tensor_free(v), attn_tensor_free(o);
}

/* lse is always f32. */
static void sdpa_lse_must_be_f32(void **state) {
  attn_context *ctx = *state;
  const int64_t s4[4] = {1, 1, 2, 4}, s3[3] = {1, 1, 2};
  attn_tensor *q, *o, *l;
  CHECK_OK(attn_tensor_create(ctx, 4, s4, &q));
  CHECK_OK(attn_tensor_create(ctx, 4, s4, &o));
  CHECK_OK(attn_tensor_create_typed(ctx, BF16, 3, s3, &l));
  attn_sdpa_args a = ATTN_SDPA_ARGS_INIT;
  a.q = a.k = a.v = q, a.out = o, a.lse = l;
  tu_assert_fails(attn_sdpa(ctx, &a), ATTN_ERR_INVALID_ARG, "lse: dtype bf16");
  attn_tensor_free(q), attn_tensor_free(o), attn_tensor_free(l);
}

/* ---- growing structs ---------------------------------------------------------------- */

/* attn_sdpa_args as a program built against an older header would pass it:
 * shorter, so the fields past its end are never read (here: garbage lse and
 * weights pointers); a newer one with zeros past ours runs; with anything
 * set there it is refused, naming struct_size. */
static void sdpa_args_sizes(void **state) {
  attn_context *ctx = *state;
  const int64_t s4[4] = {1, 1, 2, 4};
  float x[8] = {1, 2, 3, 4, 5, 6, 7, 8}, got[8];
  attn_tensor *q = upload(ctx, F32, 4, s4, x, 8), *o;
  CHECK_OK(attn_tensor_create(ctx, 4, s4, &o));
  struct {
    attn_sdpa_args a;
    unsigned char tail[16];
  } big;
  memset(&big, 0, sizeof big);
  attn_sdpa_args *a = &big.a;
  a->q = a->k = a->v = q, a->out = o;
  a->struct_size = offsetof(attn_sdpa_args, weights);
  a->weights = (attn_tensor *)(uintptr_t)0x10; /* past the older struct: not read */
  a->lse = (attn_tensor *)(uintptr_t)0x20;
  CHECK_OK(attn_sdpa(ctx, a));
  CHECK_OK(attn_tensor_read(o, got, 8));
  a->weights = NULL, a->lse = NULL;
  a->struct_size = sizeof big;
  CHECK_OK(attn_sdpa(ctx, a));
  big.tail[5] = 1;
  tu_assert_fails(attn_sdpa(ctx, a), ATTN_ERR_INVALID_ARG, "args.struct_size");
  a->struct_size = 0;
  tu_assert_fails(attn_sdpa(ctx, a), ATTN_ERR_INVALID_ARG, "ATTN_SDPA_ARGS_INIT");
  attn_mha_desc d = ATTN_MHA_DESC_INIT;
  d.struct_size = 0;
  attn_mha_weights mw;
  memset(&mw, 0, sizeof mw);
  attn_mha *g = NULL;
  tu_assert_fails(attn_mha_create(ctx, &d, &mw, &g), ATTN_ERR_INVALID_ARG, "desc.struct_size");
  attn_tensor_free(q), attn_tensor_free(o);
}

/* ---- MHA and the KV cache ----------------------------------------------------------- */

static float round_to(attn_dtype t, double x) {
  float f = (float)x;
  if (t == ATTN_F16) return attn_f16_to_f32(attn_f32_to_f16(f));
  if (t == ATTN_BF16) return attn_bf16_to_f32(attn_f32_to_bf16(f));
  return f;
}

/* The graph's math in double, with every intermediate rounded to the type
 * the graph stores it in (q and the attention output: at; k, v: kt). */
static void mha_oracle(int64_t S, int64_t E, int64_t H, int64_t Hkv, int64_t D, const float *x,
                       const float *const *W, const float *const *bias, attn_dtype at,
                       attn_dtype kt, double *out) {
  const int64_t HqD = H * D, HkvD = Hkv * D;
  double *q = malloc((size_t)(S * HqD) * sizeof *q), *k = malloc((size_t)(S * HkvD) * sizeof *k),
         *v = malloc((size_t)(S * HkvD) * sizeof *v), *o = malloc((size_t)(S * HqD) * sizeof *o);
  float *qf = malloc((size_t)(S * HqD) * sizeof *qf), *kf = malloc((size_t)(S * HkvD) * sizeof *kf),
        *vf = malloc((size_t)(S * HkvD) * sizeof *vf), *of = malloc((size_t)(S * HqD) * sizeof *of);
  assert_true(q && k && v && o && qf && kf && vf && of);
  tu_linear_double(x, S, E, W[0], bias[0], HqD, q);
  tu_linear_double(x, S, E, W[1], bias[1], HkvD, k);
  tu_linear_double(x, S, E, W[2], bias[2], HkvD, v);
  /* heads: [S, H*D] -> [H, S, D] */
  for (int64_t s = 0; s < S; s++)
    for (int64_t h = 0; h < H; h++)
      for (int64_t d = 0; d < D; d++) qf[(h * S + s) * D + d] = round_to(at, q[s * HqD + h * D + d]);
  for (int64_t s = 0; s < S; s++)
    for (int64_t h = 0; h < Hkv; h++)
      for (int64_t d = 0; d < D; d++) {
        kf[(h * S + s) * D + d] = round_to(kt, k[s * HkvD + h * D + d]);
        vf[(h * S + s) * D + d] = round_to(kt, v[s * HkvD + h * D + d]);
      }
  tu_sdpa_problem p = {1, H, Hkv, S, S, D, D, qf, kf, vf, NULL, ATTN_MASK_NONE, 1, 1, true,
                       1.0 / sqrt((double)D), NULL};
  tu_sdpa_double(&p, o, NULL, NULL);
  for (int64_t s = 0; s < S; s++)
    for (int64_t h = 0; h < H; h++)
      for (int64_t d = 0; d < D; d++) of[s * HqD + h * D + d] = round_to(at, o[(h * S + s) * D + d]);
  tu_linear_double(of, S, HqD, W[3], bias[3], E, out);
  free(q), free(k), free(v), free(o), free(qf), free(kf), free(vf), free(of);
}

/* Roundings of intermediates that land on the other side of a tie from the
 * oracle's make a few ulps of the activation type, relative to the output's
 * size: the bound is that, on top of the f32 rule. */
static void check_mha(const char *what, attn_dtype at, attn_dtype kt, const float *got,
                      const double *want, size_t n) {
  double mx = 0;
  for (size_t i = 0; i < n; i++) mx = fmax(mx, fabs(want[i]));
  const double ulp_a = at == F32 ? 0 : at == F16 ? ldexp(1, -10) : ldexp(1, -7);
  const double ulp_k = kt == F32 ? 0 : kt == F16 ? ldexp(1, -10) : ldexp(1, -7);
  const double tol = TU_ATOL + TU_RTOL * mx + (2 * ulp_a + ulp_k) * mx;
  for (size_t i = 0; i < n; i++)
    if (!(fabs(got[i] - want[i]) <= tol))
      fail_msg("%s[%zu]: got %.9g, want %.9g (tol %.3g)", what, i, got[i], want[i], tol);
}

static void mha_dtypes(void **state) {
  attn_context *ctx = *state;
  enum { S = 9, E = 32, H = 4, HKV = 2, D = 8 };
  const attn_dtype combos[][3] = {/* weights, activations, kv */
                                  {F16, F32, F32},  {BF16, F32, BF16}, {F32, F32, F16},
                                  {BF16, BF16, BF16}, {F16, F16, F16},  {BF16, F32, F16}};
  for (size_t c = 0; c < sizeof combos / sizeof combos[0]; c++) {
    const attn_dtype wt = combos[c][0], at = combos[c][1], kt = combos[c][2];
    uint64_t r = 77 + c;
    const int64_t rows[4] = {H * D, HKV * D, HKV * D, E}, cols[4] = {E, E, E, H * D};
    float *W[4], *bias[4];
    attn_tensor *tw[4], *tb[4];
    for (int i = 0; i < 4; i++) {
      const size_t n = (size_t)(rows[i] * cols[i]);
      W[i] = tu_alloc_uniform(n, &r, -0.3f, 0.3f);
      bias[i] = tu_alloc_uniform((size_t)rows[i], &r, -0.2f, 0.2f);
      const int64_t ws[2] = {rows[i], cols[i]}, bs[1] = {rows[i]};
      tw[i] = upload(ctx, wt, 2, ws, W[i], n);
      tb[i] = upload(ctx, wt, 1, bs, bias[i], (size_t)rows[i]);
    }
    float *x = tu_alloc_uniform(S * E, &r, -1, 1), *got = calloc(S * E, sizeof *got);
    double *want = calloc(S * E, sizeof *want);
    assert_true(x && got && want);
    const int64_t xs[3] = {1, S, E};
    attn_tensor *tx = upload(ctx, at, 3, xs, x, S * E), *tout = NULL;
    CHECK_OK(attn_tensor_create_typed(ctx, at, 3, xs, &tout));
    attn_mha_desc d = ATTN_MHA_DESC_INIT;
    d.d_model = E, d.n_heads = H, d.n_kv_heads = HKV, d.head_dim = D, d.bias = true;
    d.causal = true, d.max_batch = 1, d.max_seq = S, d.dtype = at, d.kv_dtype = kt;
    attn_mha_weights mw = {tw[0], tw[1], tw[2], tw[3], tb[0], tb[1], tb[2], tb[3], NULL, NULL};
    attn_mha *g = NULL;
    CHECK_OK(attn_mha_create(ctx, &d, &mw, &g));
    const float *Wc[4] = {W[0], W[1], W[2], W[3]}, *bc[4] = {bias[0], bias[1], bias[2], bias[3]};
    mha_oracle(S, E, H, HKV, D, x, Wc, bc, at, kt, want);
    char what[128];
    snprintf(what, sizeof what, "%s mha w=%s act=%s kv=%s", tu_device, attn_dtype_str(wt),
             attn_dtype_str(at), attn_dtype_str(kt));
    CHECK_OK(attn_mha_run(g, tx, NULL, tout));
    CHECK_OK(attn_tensor_read(tout, got, S * E));
    check_mha(what, at, kt, got, want, S * E);

    /* The same sequence decoded token by token through a cache of type kt
     * (created by the default constructor: the desc's kv_dtype). */
    attn_kv_cache *cache = NULL;
    CHECK_OK(attn_kv_cache_create(g, 1, S, &cache));
    const int64_t x1s[3] = {1, 1, E};
    for (int64_t t = 0; t < S; t++) {
      attn_tensor *x1 = NULL, *o1 = NULL;
      CHECK_OK(attn_tensor_create_typed(ctx, at, 3, x1s, &x1));
      CHECK_OK(attn_tensor_create_typed(ctx, at, 3, x1s, &o1));
      CHECK_OK(attn_tensor_write(x1, &x[t * E], E));
      CHECK_OK(attn_mha_run_cached(g, cache, x1, o1));
      CHECK_OK(attn_tensor_read(o1, &got[t * E], E));
      attn_tensor_free(x1);
      attn_tensor_free(o1);
    }
    snprintf(what, sizeof what, "%s cached mha w=%s act=%s kv=%s", tu_device, attn_dtype_str(wt),
             attn_dtype_str(at), attn_dtype_str(kt));
    check_mha(what, at, kt, got, want, S * E);
    attn_kv_cache_free(cache);
    /* A cache of another type than the desc's, chosen at creation. */
    CHECK_OK(attn_kv_cache_create_typed(g, 1, S, kt == BF16 ? F16 : BF16, &cache));
    attn_kv_cache_free(cache);
    /* x of another type than the desc's is refused, naming it. */
    attn_tensor *xo = NULL;
    CHECK_OK(attn_tensor_create_typed(ctx, at == F32 ? BF16 : F32, 3, xs, &xo));
    tu_assert_fails(attn_mha_run(g, xo, NULL, tout), ATTN_ERR_INVALID_ARG, "x: dtype");
    attn_tensor_free(xo);

    attn_mha_free(g);
    attn_tensor_free(tx);
    attn_tensor_free(tout);
    for (int i = 0; i < 4; i++) {
      attn_tensor_free(tw[i]);
      attn_tensor_free(tb[i]);
      free(W[i]);
      free(bias[i]);
    }
    free(x), free(got), free(want);
  }
}

int main(void) {
  const struct CMUnitTest host_tests[] = {
      cmocka_unit_test(conversions_match_numpy),
      cmocka_unit_test(every_half_round_trips),
  };
  int failed = _cmocka_run_group_tests("host", host_tests, 2, NULL, NULL) ? 1 : 0;
  const struct CMUnitTest tests[] = {
      cmocka_unit_test_setup_teardown(tensor_write_read, tu_open_device, tu_close_device),
      cmocka_unit_test_setup_teardown(sdpa_every_mix, tu_open_device, tu_close_device),
      cmocka_unit_test_setup_teardown(sdpa_rounds_outputs, tu_open_device, tu_close_device),
      cmocka_unit_test_setup_teardown(sdpa_lse_must_be_f32, tu_open_device, tu_close_device),
      cmocka_unit_test_setup_teardown(sdpa_args_sizes, tu_open_device, tu_close_device),
      cmocka_unit_test_setup_teardown(mha_dtypes, tu_open_device, tu_close_device),
  };
  int r = tu_run_per_device("test_dtype", tests);
  return failed ? 1 : r;
}
