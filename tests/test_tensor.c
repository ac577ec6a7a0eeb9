/* Tensors through the public API: create / view / write / read round trips,
 * head-split views, strided writes that keep their neighbours, overflow
 * refused before allocating, every invalid argument reported by name, views
 * outliving their base, attn_close freeing what is left; and the attn_sdpa
 * argument checks, one bad argument at a time (exact status + the name). */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>
#include <math.h>

#include "attn.h"
#include "testutil.h"

static attn_tensor *make(attn_context *ctx, int ndim, int64_t a, int64_t b, int64_t c,
                         int64_t d) {
  const int64_t shape[4] = {a, b, c, d};
  attn_tensor *t = NULL;
  assert_int_equal(attn_tensor_create(ctx, ndim, shape, &t), ATTN_OK);
  assert_non_null(t);
  return t;
}

/* ---- round trips ------------------------------------------------------------ */

static void test_roundtrip(void **state) {
  attn_context *ctx = *state;
  attn_tensor *t = make(ctx, 4, 2, 3, 4, 5);
  assert_int_equal(attn_tensor_ndim(t), 4);
  assert_int_equal(attn_tensor_numel(t), 120);
  int64_t shape[4], strides[4];
  attn_tensor_shape(t, shape, strides);
  const int64_t want_st[4] = {60, 20, 5, 1};
  for (int i = 0; i < 4; i++) assert_int_equal(strides[i], want_st[i]);
  assert_int_equal(shape[2], 4);

  float src[120], dst[120];
  for (int i = 0; i < 120; i++) src[i] = (float)i * 0.5f - 7.0f;
  assert_int_equal(attn_tensor_write(t, src, 120), ATTN_OK);
  tu_fill_nan(dst, 120);
  assert_int_equal(attn_tensor_read(t, dst, 120), ATTN_OK);
  assert_memory_equal(src, dst, sizeof src);

  /* Ranks 1..3 too. */
  for (int nd = 1; nd <= 3; nd++) {
    attn_tensor *r = make(ctx, nd, 7, 3, 2, 1);
    int64_t n = attn_tensor_numel(r);
    assert_int_equal(n, nd == 1 ? 7 : nd == 2 ? 21 : 42);
    assert_int_equal(attn_tensor_write(r, src, (size_t)n), ATTN_OK);
    tu_fill_nan(dst, 120);
    assert_int_equal(attn_tensor_read(r, dst, (size_t)n), ATTN_OK);
    assert_memory_equal(src, dst, (size_t)n * sizeof(float));
    attn_tensor_free(r);
  }
  attn_tensor_free(t);
}

/* [B,S,H,D] storage read and written as [B,H,S,D] through strides only. */
static void test_split_heads_view(void **state) {
  attn_context *ctx = *state;
  enum { B = 2, S = 3, H = 4, D = 5, N = B * S * H * D };
  attn_tensor *base = make(ctx, 4, B, S, H, D);
  float bshd[N], got[N], want[N];
  for (int i = 0; i < N; i++) bshd[i] = (float)i;
  assert_int_equal(attn_tensor_write(base, bshd, N), ATTN_OK);

  const int64_t shape[4] = {B, H, S, D}, strides[4] = {S * H * D, D, H * D, 1};
  attn_tensor *v = NULL;
  assert_int_equal(attn_tensor_view(base, 0, 4, shape, strides, &v), ATTN_OK);
  int64_t st[4];
  attn_tensor_shape(v, NULL, st);
  assert_int_equal(st[2], H * D);
  assert_int_equal(attn_tensor_read(v, got, N), ATTN_OK);
  for (int b = 0; b < B; b++)
    for (int h = 0; h < H; h++)
      for (int s = 0; s < S; s++)
        for (int d = 0; d < D; d++)
          want[((b * H + h) * S + s) * D + d] = bshd[((b * S + s) * H + h) * D + d];
  assert_memory_equal(got, want, sizeof got);

  /* Writing [B,H,S,D] data through the view lands in [B,S,H,D] order. */
  float bhsd[N];
  for (int i = 0; i < N; i++) bhsd[i] = -(float)i;
  assert_int_equal(attn_tensor_write(v, bhsd, N), ATTN_OK);
  assert_int_equal(attn_tensor_read(base, got, N), ATTN_OK);
  for (int b = 0; b < B; b++)
    for (int h = 0; h < H; h++)
      for (int s = 0; s < S; s++)
        for (int d = 0; d < D; d++)
          assert_true(got[((b * S + s) * H + h) * D + d] == bhsd[((b * H + h) * S + s) * D + d]);
  attn_tensor_free(v);
  attn_tensor_free(base);
}

/* A strided write changes its own elements and nothing between them. */
static void test_strided_write_keeps_neighbours(void **state) {
  attn_context *ctx = *state;
  attn_tensor *base = make(ctx, 2, 4, 6, 1, 1);
  float init[24], got[24];
  for (int i = 0; i < 24; i++) init[i] = 100.0f + (float)i;
  assert_int_equal(attn_tensor_write(base, init, 24), ATTN_OK);

  /* Columns 1 and 4 of every row. */
  const int64_t shape[2] = {4, 2}, strides[2] = {6, 3};
  attn_tensor *v = NULL;
  assert_int_equal(attn_tensor_view(base, 1, 2, shape, strides, &v), ATTN_OK);
  float vals[8] = {-1, -2, -3, -4, -5, -6, -7, -8};
  assert_int_equal(attn_tensor_write(v, vals, 8), ATTN_OK);
  assert_int_equal(attn_tensor_read(base, got, 24), ATTN_OK);
  for (int r = 0; r < 4; r++)
    for (int c = 0; c < 6; c++) {
      float want = init[r * 6 + c];
      if (c == 1) want = vals[r * 2];
      if (c == 4) want = vals[r * 2 + 1];
      assert_true(got[r * 6 + c] == want);
    }
  float back[8];
  assert_int_equal(attn_tensor_read(v, back, 8), ATTN_OK);
  assert_memory_equal(back, vals, sizeof vals);
  attn_tensor_free(v);
  attn_tensor_free(base);
}

/* The storage lives until its last tensor goes, whichever order. */
static void test_view_outlives_base(void **state) {
  attn_context *ctx = *state;
  attn_tensor *base = make(ctx, 1, 10, 1, 1, 1);
  float src[10], got[4];
  for (int i = 0; i < 10; i++) src[i] = (float)i * 3.0f;
  assert_int_equal(attn_tensor_write(base, src, 10), ATTN_OK);
  const int64_t shape[1] = {4}, strides[1] = {2};
  attn_tensor *v = NULL, *vv = NULL;
  assert_int_equal(attn_tensor_view(base, 1, 1, shape, strides, &v), ATTN_OK);
  attn_tensor_free(base);
  assert_int_equal(attn_tensor_read(v, got, 4), ATTN_OK);
  for (int i = 0; i < 4; i++) assert_true(got[i] == src[1 + 2 * i]);
  /* A view of a view: offsets are relative to the storage, not the view. */
  const int64_t one[1] = {1};
  assert_int_equal(attn_tensor_view(v, 9, 1, one, one, &vv), ATTN_OK);
  attn_tensor_free(v);
  assert_int_equal(attn_tensor_read(vv, got, 1), ATTN_OK);
  assert_true(got[0] == src[9]);
  attn_tensor_free(vv);
}

/* Tensors and views left alive are freed by attn_close (LSan checks). */
static void test_close_frees_live(void **state) {
  (void)state;
  attn_context *ctx = NULL;
  assert_int_equal(attn_open(tu_device, &ctx), ATTN_OK);
  attn_tensor *a = make(ctx, 2, 3, 3, 1, 1);
  make(ctx, 3, 2, 2, 2, 1);
  const int64_t sh[1] = {3}, st[1] = {4};
  attn_tensor *v = NULL;
  assert_int_equal(attn_tensor_view(a, 0, 1, sh, st, &v), ATTN_OK);
  attn_tensor_free(a); /* v keeps the storage */
  attn_close(ctx);
}

/* ---- sizes ------------------------------------------------------------------- */

static void test_overflow_refused(void **state) {
  attn_context *ctx = *state;
  attn_tensor *t = (attn_tensor *)(uintptr_t)1;
  const int64_t elems[4] = {INT64_C(1) << 32, INT64_C(1) << 32, 2, 1};
  tu_assert_fails(attn_tensor_create(ctx, 4, elems, &t), ATTN_ERR_OVERFLOW, "shape");
  assert_null(t);
  /* Fits int64 as elements, not as bytes. */
  const int64_t bytes[1] = {INT64_MAX / 2};
  tu_assert_fails(attn_tensor_create(ctx, 1, bytes, &t), ATTN_ERR_OVERFLOW, "byte count");
  /* No overflow, but above any device's largest allocation (2^52 bytes). */
  attn_device_info info;
  assert_int_equal(attn_context_info(ctx, &info), ATTN_OK);
  const int64_t big[3] = {INT64_C(1) << 20, INT64_C(1) << 20, INT64_C(1) << 10};
  attn_status s = attn_tensor_create(ctx, 3, big, &t);
  if (info.max_alloc) {
    assert_int_equal(s, ATTN_ERR_DEVICE_MEMORY);
    assert_non_null(strstr(attn_last_error(), "largest allocation"));
  } else {
    assert_true(s == ATTN_ERR_DEVICE_MEMORY || s == ATTN_ERR_NOMEM);
  }
  assert_null(t);
  /* A view whose extent overflows. */
  attn_tensor *base = make(ctx, 1, 8, 1, 1, 1);
  const int64_t vs[2] = {3, 2}, vst[2] = {INT64_MAX / 2 + 1, 1}; /* 2 * 2^62 */
  tu_assert_fails(attn_tensor_view(base, 0, 2, vs, vst, &t), ATTN_ERR_OVERFLOW, "strides");
  /* A broadcast view reaches one element but has too many to move. */
  const int64_t bs[2] = {INT64_C(1) << 40, INT64_C(1) << 40}, bst[2] = {0, 0};
  tu_assert_fails(attn_tensor_view(base, 0, 2, bs, bst, &t), ATTN_ERR_OVERFLOW, "shape");
  assert_null(t);
  /* The context still works. */
  float x[8] = {1, 2, 3, 4, 5, 6, 7, 8}, y[8];
  assert_int_equal(attn_tensor_write(base, x, 8), ATTN_OK);
  assert_int_equal(attn_tensor_read(base, y, 8), ATTN_OK);
  assert_memory_equal(x, y, sizeof x);
  attn_tensor_free(base);
}

/* ---- invalid arguments, one at a time ------------------------------------------ */

static void test_tensor_invalid_args(void **state) {
  attn_context *ctx = *state;
  attn_tensor *t = NULL;
  const int64_t ok[4] = {2, 3, 4, 5}, zero[4] = {2, 0, 4, 5}, neg[4] = {2, 3, -4, 5};
  tu_assert_fails(attn_tensor_create(NULL, 4, ok, &t), ATTN_ERR_INVALID_ARG,
                  "attn_tensor_create: ctx");
  tu_assert_fails(attn_tensor_create(ctx, 4, ok, NULL), ATTN_ERR_INVALID_ARG, "t: NULL");
  tu_assert_fails(attn_tensor_create(ctx, 0, ok, &t), ATTN_ERR_INVALID_ARG, "ndim");
  tu_assert_fails(attn_tensor_create(ctx, 5, ok, &t), ATTN_ERR_INVALID_ARG, "ndim");
  tu_assert_fails(attn_tensor_create(ctx, 4, NULL, &t), ATTN_ERR_INVALID_ARG, "shape");
  tu_assert_fails(attn_tensor_create(ctx, 4, zero, &t), ATTN_ERR_INVALID_ARG, "shape[1]");
  tu_assert_fails(attn_tensor_create(ctx, 4, neg, &t), ATTN_ERR_INVALID_ARG, "shape[2]");
  assert_null(t);

  attn_tensor *base = make(ctx, 2, 4, 6, 1, 1);
  const int64_t vs[2] = {4, 6}, vst[2] = {6, 1}, negst[2] = {6, -1};
  tu_assert_fails(attn_tensor_view(NULL, 0, 2, vs, vst, &t), ATTN_ERR_INVALID_ARG,
                  "attn_tensor_view: base");
  tu_assert_fails(attn_tensor_view(base, 0, 2, vs, vst, NULL), ATTN_ERR_INVALID_ARG, "view: NULL");
  tu_assert_fails(attn_tensor_view(base, 0, 9, vs, vst, &t), ATTN_ERR_INVALID_ARG, "ndim");
  tu_assert_fails(attn_tensor_view(base, 0, 2, NULL, vst, &t), ATTN_ERR_INVALID_ARG, "shape");
  tu_assert_fails(attn_tensor_view(base, 0, 2, zero, vst, &t), ATTN_ERR_INVALID_ARG, "shape[1]");
  tu_assert_fails(attn_tensor_view(base, 0, 2, vs, NULL, &t), ATTN_ERR_INVALID_ARG, "strides");
  tu_assert_fails(attn_tensor_view(base, 0, 2, vs, negst, &t), ATTN_ERR_INVALID_ARG, "strides[1]");
  tu_assert_fails(attn_tensor_view(base, -1, 2, vs, vst, &t), ATTN_ERR_INVALID_ARG, "offset");
  /* One element past the storage. */
  tu_assert_fails(attn_tensor_view(base, 1, 2, vs, vst, &t), ATTN_ERR_SHAPE, "storage");
  assert_null(t);

  float buf[24] = {0};
  tu_assert_fails(attn_tensor_write(NULL, buf, 24), ATTN_ERR_INVALID_ARG, "attn_tensor_write: t");
  tu_assert_fails(attn_tensor_write(base, NULL, 24), ATTN_ERR_INVALID_ARG, "src");
  tu_assert_fails(attn_tensor_write(base, buf, 23), ATTN_ERR_INVALID_ARG, "count");
  tu_assert_fails(attn_tensor_read(NULL, buf, 24), ATTN_ERR_INVALID_ARG, "attn_tensor_read: t");
  tu_assert_fails(attn_tensor_read(base, NULL, 24), ATTN_ERR_INVALID_ARG, "dst");
  tu_assert_fails(attn_tensor_read(base, buf, 25), ATTN_ERR_INVALID_ARG, "count");

  /* Queries on NULL are harmless. */
  assert_int_equal(attn_tensor_ndim(NULL), 0);
  assert_int_equal(attn_tensor_numel(NULL), 0);
  attn_tensor_free(NULL);
  attn_tensor_free(base);
}

/* ---- attn_sdpa argument checks --------------------------------------------------- */

enum { B = 2, HQ = 4, HKV = 2, SQ = 3, SKV = 5, D = 8, DV = 6 };

typedef struct sdpa_fixture {
  attn_context *ctx, *other;
  attn_tensor *q, *k, *v, *out, *mask, *weights, *lse;
  attn_tensor *big; /* spare storage for aliasing views */
} sdpa_fixture;

static attn_tensor *filled(attn_context *ctx, int ndim, const int64_t *shape, uint64_t *rng) {
  attn_tensor *t = NULL;
  assert_int_equal(attn_tensor_create(ctx, ndim, shape, &t), ATTN_OK);
  size_t n = (size_t)attn_tensor_numel(t);
  float *h = tu_alloc_uniform(n, rng, -1.0f, 1.0f);
  assert_int_equal(attn_tensor_write(t, h, n), ATTN_OK);
  free(h);
  return t;
}

static attn_sdpa_args good_args(const sdpa_fixture *f) {
  attn_sdpa_args a;
  memset(&a, 0, sizeof a);
  a.struct_size = sizeof a;
  a.q = f->q, a.k = f->k, a.v = f->v, a.out = f->out;
  a.mask = f->mask, a.mask_kind = ATTN_MASK_ADDITIVE;
  a.weights = f->weights, a.lse = f->lse;
  return a;
}

static attn_tensor *view(const attn_tensor *base, int64_t off, int ndim, const int64_t *shape,
                         const int64_t *strides) {
  attn_tensor *t = NULL;
  assert_int_equal(attn_tensor_view(base, off, ndim, shape, strides, &t), ATTN_OK);
  return t;
}

static void test_sdpa_invalid_args(void **state) {
  sdpa_fixture f;
  memset(&f, 0, sizeof f);
  f.ctx = *state;
  uint64_t rng = 42;
  const int64_t qs[4] = {B, HQ, SQ, D}, ks[4] = {B, HKV, SKV, D}, vs[4] = {B, HKV, SKV, DV},
                os[4] = {B, HQ, SQ, DV}, ms[4] = {1, HQ, SQ, SKV}, ws[4] = {B, HQ, SQ, SKV},
                ls[3] = {B, HQ, SQ};
  f.q = filled(f.ctx, 4, qs, &rng);
  f.k = filled(f.ctx, 4, ks, &rng);
  f.v = filled(f.ctx, 4, vs, &rng);
  f.out = filled(f.ctx, 4, os, &rng);
  f.mask = filled(f.ctx, 4, ms, &rng);
  f.weights = filled(f.ctx, 4, ws, &rng);
  f.lse = filled(f.ctx, 3, ls, &rng);
  const int64_t big[1] = {4096};
  f.big = filled(f.ctx, 1, big, &rng);
  assert_int_equal(attn_open(tu_device, &f.other), ATTN_OK);
  attn_tensor *foreign = filled(f.other, 4, qs, &rng);

  /* The baseline is valid: each case below breaks exactly one thing. */
  attn_sdpa_args a = good_args(&f);
  assert_int_equal(attn_sdpa(f.ctx, &a), ATTN_OK);

  /* Wrong-shaped and aliasing tensors for the table. */
  const int64_t q3[3] = {B, HQ, SQ}, k63[4] = {B, HKV, SKV, D - 1}, k_b[4] = {1, HKV, SKV, D},
                k_h3[4] = {B, 3, SKV, D}, v_h[4] = {B, 1, SKV, DV}, v_s[4] = {B, HKV, SKV + 1, DV},
                o_bad[4] = {B, HQ, SQ, DV + 1}, m_bad[4] = {1, HQ, SQ, SKV - 1},
                m_b3[4] = {3, HQ, SQ, SKV}, w_bad[4] = {B, HQ, SQ + 1, SKV},
                l_bad[3] = {B, HQ, SQ + 1}, l4[4] = {B, HQ, SQ, 1}, v_h3[4] = {B, 3, SKV, DV};
  attn_tensor *q_rank3 = filled(f.ctx, 3, q3, &rng), *k_dim = filled(f.ctx, 4, k63, &rng),
              *k_batch = filled(f.ctx, 4, k_b, &rng), *k_heads3 = filled(f.ctx, 4, k_h3, &rng),
              *v_heads = filled(f.ctx, 4, v_h, &rng), *v_seq = filled(f.ctx, 4, v_s, &rng),
              *out_shape = filled(f.ctx, 4, o_bad, &rng), *mask_shape = filled(f.ctx, 4, m_bad, &rng),
              *mask_b3 = filled(f.ctx, 4, m_b3, &rng), *w_shape = filled(f.ctx, 4, w_bad, &rng),
              *lse_shape = filled(f.ctx, 3, l_bad, &rng), *lse_rank = filled(f.ctx, 4, l4, &rng),
              *v_heads3 = filled(f.ctx, 4, v_h3, &rng);
  /* out over q's first elements, with q's strides. */
  const int64_t qst[4] = {HQ * SQ * D, SQ * D, D, 1};
  attn_tensor *out_on_q = view(f.q, 0, 4, os, qst);
  /* out and weights sharing storage: weights starts inside out. */
  const int64_t ost[4] = {HQ * SQ * DV, SQ * DV, DV, 1}, wst[4] = {HQ * SQ * SKV, SQ * SKV, SKV, 1};
  attn_tensor *out_big = view(f.big, 0, 4, os, ost);
  attn_tensor *w_big = view(f.big, 10, 4, ws, wst);
  /* Broadcasting and self-overlapping outputs. */
  const int64_t zst[4] = {HQ * SQ * DV, SQ * DV, DV, 0}, ovst[4] = {HQ * SQ * DV, SQ * DV, 1, 1};
  attn_tensor *out_zero = view(f.big, 0, 4, os, zst);
  attn_tensor *out_self = view(f.big, 0, 4, os, ovst);
  const int64_t lmst[3] = {HQ * SQ, SQ, 1};
  attn_tensor *lse_on_mask = view(f.mask, 0, 3, ls, lmst);
  const int32_t lens_over[B] = {SKV + 1, 1}, lens_neg[B] = {2, -1}, lens_ok[B] = {0, SKV};

  struct bad {
    const char *what;
    attn_status status;
    attn_sdpa_args a;
    int null_ctx, null_args;
  } cases[64];
  int n = 0;
#define CASE(status_, what_, ...)                                           \
  do {                                                                      \
    cases[n] = (struct bad){.what = (what_), .status = (status_), .a = good_args(&f)}; \
    attn_sdpa_args *A = &cases[n].a;                                        \
    (void)A;                                                                \
    __VA_ARGS__;                                                            \
    n++;                                                                    \
  } while (0)
  CASE(ATTN_ERR_INVALID_ARG, "attn_sdpa: ctx", cases[n].null_ctx = 1);
  CASE(ATTN_ERR_INVALID_ARG, "attn_sdpa: args", cases[n].null_args = 1);
  CASE(ATTN_ERR_INVALID_ARG, "q: NULL", A->q = NULL);
  CASE(ATTN_ERR_INVALID_ARG, "k: NULL", A->k = NULL);
  CASE(ATTN_ERR_INVALID_ARG, "v: NULL", A->v = NULL);
  CASE(ATTN_ERR_INVALID_ARG, "out: NULL", A->out = NULL);
  CASE(ATTN_ERR_INVALID_ARG, "q: tensor belongs to another context", A->q = foreign);
  CASE(ATTN_ERR_SHAPE, "q: rank 3 != 4", A->q = q_rank3);
  CASE(ATTN_ERR_SHAPE, "k: head dim 7 != q head dim 8", A->k = k_dim);
  CASE(ATTN_ERR_SHAPE, "k: batch 1 != q batch 2", A->k = k_batch);
  CASE(ATTN_ERR_SHAPE, "k: q heads 4 are not a multiple of k heads 3", A->k = k_heads3,
       A->v = v_heads3);
  CASE(ATTN_ERR_SHAPE, "v: heads 1 != k heads 2", A->v = v_heads);
  CASE(ATTN_ERR_SHAPE, "v: seq 6 != k seq 5", A->v = v_seq);
  CASE(ATTN_ERR_SHAPE, "out: shape", A->out = out_shape);
  CASE(ATTN_ERR_SHAPE, "mask: shape", A->mask = mask_shape);
  CASE(ATTN_ERR_SHAPE, "mask: shape", A->mask = mask_b3);
  CASE(ATTN_ERR_INVALID_ARG, "mask_kind", A->mask_kind = ATTN_MASK_NONE);
  CASE(ATTN_ERR_INVALID_ARG, "mask_kind", A->mask = NULL, A->mask_kind = ATTN_MASK_BOOL);
  CASE(ATTN_ERR_INVALID_ARG, "mask_kind", A->mask_kind = (attn_mask_kind)7);
  CASE(ATTN_ERR_SHAPE, "weights: shape", A->weights = w_shape);
  CASE(ATTN_ERR_SHAPE, "lse: shape", A->lse = lse_shape);
  CASE(ATTN_ERR_SHAPE, "lse: rank 4 != 3", A->lse = lse_rank);
  CASE(ATTN_ERR_INVALID_ARG, "scale", A->has_scale = true, A->scale = NAN);
  CASE(ATTN_ERR_INVALID_ARG, "scale", A->has_scale = true, A->scale = INFINITY);
  CASE(ATTN_ERR_INVALID_ARG, "kv_lens[0]: 6", A->kv_lens = lens_over);
  CASE(ATTN_ERR_INVALID_ARG, "kv_lens[1]: -1", A->kv_lens = lens_neg);
  CASE(ATTN_ERR_INVALID_ARG, "out: overlaps input q", A->out = out_on_q);
  CASE(ATTN_ERR_INVALID_ARG, "weights: overlaps output out", A->out = out_big, A->weights = w_big);
  CASE(ATTN_ERR_INVALID_ARG, "lse: overlaps input mask", A->lse = lse_on_mask);
  CASE(ATTN_ERR_INVALID_ARG, "out: stride 3 is 0", A->out = out_zero);
  CASE(ATTN_ERR_INVALID_ARG, "out: strides overlap", A->out = out_self);
#undef CASE

  for (int i = 0; i < n; i++) {
    attn_status s = attn_sdpa(cases[i].null_ctx ? NULL : f.ctx, cases[i].null_args ? NULL : &cases[i].a);
    if (s != cases[i].status || !strstr(attn_last_error(), cases[i].what))
      fail_msg("case %d: got %d \"%s\", want %d with \"%s\"", i, (int)s, attn_last_error(),
               (int)cases[i].status, cases[i].what);
  }
  /* Edge values that are valid: kv_lens 0 and Skv, a finite scale, a
   * boolean mask broadcast over batch. */
  a = good_args(&f);
  a.kv_lens = lens_ok;
  a.has_scale = true;
  a.scale = 0.25f;
  a.mask_kind = ATTN_MASK_BOOL;
  assert_int_equal(attn_sdpa(f.ctx, &a), ATTN_OK);
  attn_close(f.other); /* frees `foreign` */
  /* Everything else is freed by the fixture's attn_close. */
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test_setup_teardown(test_roundtrip, tu_open_device, tu_close_device),
      cmocka_unit_test_setup_teardown(test_split_heads_view, tu_open_device, tu_close_device),
      cmocka_unit_test_setup_teardown(test_strided_write_keeps_neighbours, tu_open_device,
                                      tu_close_device),
      cmocka_unit_test_setup_teardown(test_view_outlives_base, tu_open_device, tu_close_device),
      cmocka_unit_test(test_close_frees_live),
      cmocka_unit_test_setup_teardown(test_overflow_refused, tu_open_device, tu_close_device),
      cmocka_unit_test_setup_teardown(test_tensor_invalid_args, tu_open_device, tu_close_device),
      cmocka_unit_test_setup_teardown(test_sdpa_invalid_args, tu_open_device, tu_close_device),
  };
  return tu_run_per_device("tensor", tests);
}
