/* The SDPA numerical suite: attn_sdpa on every device (tu_devices) against
 * hand-computed answers and against the double-precision oracle
 * tu_sdpa_double, over a covering set of shapes, masks, layouts and options.
 *
 * Every output is a view inside a larger storage: the storage is filled with
 * a sentinel, the view is poisoned with NaN, and after the run every element
 * outside the view must still hold the sentinel (no out-of-bounds write) and
 * every element inside must match (no element left unwritten).
 *
 * A first group runs on the host only: it checks the oracle on exact data and
 * shows that the tolerance (TU_RTOL/TU_ATOL) accepts correct float32
 * implementations with margin and rejects real bugs. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <float.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "attn.h"
#include "attn_plugin.h" /* the SDK's f16 / bf16 conversions */
#include "testutil.h"

#define SENTINEL 1234567.0f /* what guard regions hold; no kernel computes it */
#define GUARD 37            /* elements before and after each output view */

static attn_context *g_ctx; /* the context of the device group now running */
static char g_dev[64];

static void *xmalloc(size_t n) {
  void *p = malloc(n ? n : 1);
  assert_non_null(p);
  return p;
}

#define CHECK_OK(call)                                                                 \
  do {                                                                                 \
    attn_status st_ = (call);                                                          \
    if (st_ != ATTN_OK) fail_msg("%s: %s (%s)", #call, attn_last_error(), attn_status_str(st_)); \
  } while (0)

/* ---- tensors ---------------------------------------------------------------- */

/* Layouts of a logical [B,H,S,X] tensor. */
enum layout {
  L_BHSD = 0, /* contiguous */
  L_BSHD = 1, /* [B,S,H,X] storage viewed as [B,H,S,X] */
  L_PADDED = 2, /* [B,S,H,X+3] storage: gaps between rows too */
  L_TRANSPOSED = 3 /* [B,H,X,S] storage: the innermost dim has stride S */
};

static void layout_strides(enum layout l, const int64_t *sh, int64_t *st, int64_t *span) {
  const int64_t B = sh[0], H = sh[1], S = sh[2], X = sh[3];
  const int64_t row = l == L_PADDED ? X + 3 : X;
  if (l == L_BHSD) {
    st[3] = 1, st[2] = X, st[1] = S * X, st[0] = H * S * X;
  } else if (l == L_TRANSPOSED) {
    st[2] = 1, st[3] = S, st[1] = X * S, st[0] = H * X * S;
  } else {
    st[3] = 1, st[1] = row, st[2] = H * row, st[0] = S * H * row;
  }
  *span = l == L_BHSD || l == L_TRANSPOSED ? B * H * S * X : B * S * H * row;
}

/* An input tensor holding host (row-major [B,H,S,X]) in the given layout,
 * stored as dtype. */
static attn_tensor *upload4_typed(attn_dtype dtype, const float *host, const int64_t *shape,
                                  enum layout l) {
  int64_t st[4], span;
  layout_strides(l, shape, st, &span);
  attn_tensor *base, *view;
  CHECK_OK(attn_tensor_create_typed(g_ctx, dtype, 1, &span, &base));
  CHECK_OK(attn_tensor_view(base, 0, 4, shape, st, &view));
  attn_tensor_free(base); /* the storage lives on with the view */
  CHECK_OK(attn_tensor_write(view, host, (size_t)(shape[0] * shape[1] * shape[2] * shape[3])));
  return view;
}
static attn_tensor *upload4(const float *host, const int64_t *shape, enum layout l) {
  return upload4_typed(ATTN_F32, host, shape, l);
}

/* An output view with guard regions around it (see the top of the file). */
typedef struct guarded {
  attn_tensor *base, *view;
  int ndim;
  int64_t shape[4], strides[4];
  int64_t total, n;
} guarded;

static void guarded_create(guarded *g, int ndim, const int64_t *shape, enum layout l) {
  int64_t sh4[4] = {1, 1, 1, 1}, st4[4], span;
  memset(g, 0, sizeof *g);
  g->ndim = ndim;
  /* A 3-D output ([B,H,S]) is laid out as [B,H,S,1]; "padded" gives it gaps. */
  memcpy(sh4, shape, (size_t)ndim * sizeof *shape);
  layout_strides(l, sh4, st4, &span);
  memcpy(g->shape, shape, (size_t)ndim * sizeof *shape);
  memcpy(g->strides, st4, (size_t)ndim * sizeof *st4);
  g->n = sh4[0] * sh4[1] * sh4[2] * sh4[3];
  g->total = GUARD + span + GUARD;
  CHECK_OK(attn_tensor_create(g_ctx, 1, &g->total, &g->base));
  CHECK_OK(attn_tensor_view(g->base, GUARD, ndim, g->shape, g->strides, &g->view));
  float *fill = xmalloc((size_t)g->total * sizeof *fill);
  for (int64_t i = 0; i < g->total; i++) fill[i] = SENTINEL;
  CHECK_OK(attn_tensor_write(g->base, fill, (size_t)g->total));
  tu_fill_nan(fill, (size_t)g->n); /* poison: an element never written stays NaN */
  CHECK_OK(attn_tensor_write(g->view, fill, (size_t)g->n));
  free(fill);
}

/* Read the view's values (row-major) and check that nothing outside the
 * view changed. Returns malloc'ed values. */
static float *guarded_read(const guarded *g, const char *what) {
  float *all = xmalloc((size_t)g->total * sizeof *all);
  CHECK_OK(attn_tensor_read(g->base, all, (size_t)g->total));
  char *inside = calloc((size_t)g->total, 1);
  assert_non_null(inside);
  int64_t sh[4] = {1, 1, 1, 1}, st[4] = {0, 0, 0, 0};
  memcpy(sh, g->shape, (size_t)g->ndim * sizeof *sh);
  memcpy(st, g->strides, (size_t)g->ndim * sizeof *st);
  for (int64_t a = 0; a < sh[0]; a++)
    for (int64_t b = 0; b < sh[1]; b++)
      for (int64_t c = 0; c < sh[2]; c++)
        for (int64_t d = 0; d < sh[3]; d++)
          inside[GUARD + a * st[0] + b * st[1] + c * st[2] + d * st[3]] = 1;
  const float sentinel = SENTINEL;
  for (int64_t i = 0; i < g->total; i++)
    if (!inside[i] && memcmp(&all[i], &sentinel, sizeof sentinel) != 0)
      fail_msg("%s: element %lld of the storage outside the output view was overwritten "
               "(%g; view starts at %d)", what, (long long)i, (double)all[i], GUARD);
  free(inside);
  free(all);
  float *vals = xmalloc((size_t)g->n * sizeof *vals);
  CHECK_OK(attn_tensor_read(g->view, vals, (size_t)g->n));
  return vals;
}

static void guarded_free(guarded *g) {
  attn_tensor_free(g->view);
  attn_tensor_free(g->base);
}

/* ---- one problem, run on the device and checked --------------------------------- */

typedef struct problem {
  tu_sdpa_problem p;
  bool has_scale;
  float scale;
  bool want_weights, want_lse;
  enum layout layout;  /* of q, k, v and the outputs */
  attn_dtype in_dtype; /* storage of q, k and v (the host values already rounded to it) */
  bool mask_as_view;   /* pass the broadcast mask as a full-shape view with 0 strides */
  bool check_weights;  /* compare weights (NaN rows leave them unspecified) */
} problem;

typedef struct result {
  float *out, *weights, *lse;
  double *want_out, *want_weights, *want_lse;
} result;

static void result_free(result *r) {
  free(r->out), free(r->weights), free(r->lse);
  free(r->want_out), free(r->want_weights), free(r->want_lse);
}

/* Runs attn_sdpa on g_ctx, checks guards, computes the oracle's answer. */
static void run_problem(problem *pb, result *r) {
  tu_sdpa_problem *p = &pb->p;
  memset(r, 0, sizeof *r);
  p->scale = pb->has_scale ? (double)pb->scale : (double)(float)(1.0 / sqrt((double)p->D));
  const int64_t qs[4] = {p->B, p->Hq, p->Sq, p->D}, ks[4] = {p->B, p->Hkv, p->Skv, p->D};
  const int64_t vs[4] = {p->B, p->Hkv, p->Skv, p->Dv};
  attn_tensor *q = upload4_typed(pb->in_dtype, p->q, qs, pb->layout),
              *k = upload4_typed(pb->in_dtype, p->k, ks, pb->layout),
              *v = upload4_typed(pb->in_dtype, p->v, vs, pb->layout), *mask = NULL;
  if (p->mask) {
    const int64_t ms[4] = {p->mask_b, p->mask_h, p->mask_q ? p->mask_q : p->Sq, p->Skv};
    mask = upload4(p->mask, ms, L_BHSD);
    if (pb->mask_as_view) {
      const int64_t full[4] = {p->B, p->Hq, p->Sq, p->Skv};
      const int64_t mq = p->mask_q ? p->mask_q : p->Sq;
      const int64_t st[4] = {p->mask_b == 1 ? 0 : p->mask_h * mq * p->Skv,
                             p->mask_h == 1 ? 0 : mq * p->Skv, mq == 1 ? 0 : p->Skv, 1};
      attn_tensor *mv;
      CHECK_OK(attn_tensor_view(mask, 0, 4, full, st, &mv));
      attn_tensor_free(mask);
      mask = mv;
    }
  }
  guarded out, weights, lse;
  const int64_t os[4] = {p->B, p->Hq, p->Sq, p->Dv}, ws[4] = {p->B, p->Hq, p->Sq, p->Skv};
  const int64_t ls[3] = {p->B, p->Hq, p->Sq};
  guarded_create(&out, 4, os, pb->layout);
  if (pb->want_weights) guarded_create(&weights, 4, ws, pb->layout);
  if (pb->want_lse) guarded_create(&lse, 3, ls, pb->layout);

  attn_sdpa_args a = ATTN_SDPA_ARGS_INIT;
  a.q = q, a.k = k, a.v = v, a.out = out.view;
  a.mask = mask, a.mask_kind = p->mask ? p->mask_kind : ATTN_MASK_NONE;
  a.causal = p->causal;
  a.has_scale = pb->has_scale, a.scale = pb->scale;
  a.kv_lens = p->kv_lens;
  a.weights = pb->want_weights ? weights.view : NULL;
  a.lse = pb->want_lse ? lse.view : NULL;
  a.has_positions = p->has_positions, a.q_pos = p->q_pos, a.k_pos = p->k_pos;
  a.has_window = p->has_window;
  a.window_left = p->window_left, a.window_right = p->window_right;
  a.softcap = (float)p->softcap;
  a.alibi_slopes = p->alibi, a.sinks = p->sinks;
  CHECK_OK(attn_sdpa(g_ctx, &a));
  CHECK_OK(attn_synchronize(g_ctx));

  r->out = guarded_read(&out, "out");
  if (pb->want_weights) r->weights = guarded_read(&weights, "weights");
  if (pb->want_lse) r->lse = guarded_read(&lse, "lse");
  guarded_free(&out);
  if (pb->want_weights) guarded_free(&weights);
  if (pb->want_lse) guarded_free(&lse);
  attn_tensor_free(q), attn_tensor_free(k), attn_tensor_free(v), attn_tensor_free(mask);

  const size_t rows = (size_t)(p->B * p->Hq * p->Sq);
  r->want_out = xmalloc(rows * (size_t)p->Dv * sizeof(double));
  r->want_weights = xmalloc(rows * (size_t)p->Skv * sizeof(double));
  r->want_lse = xmalloc(rows * sizeof(double));
  tu_sdpa_double(p, r->want_out, r->want_weights, r->want_lse);
}

/* Compare everything run_problem produced with the oracle. */
static void check_result(const problem *pb, const result *r) {
  const tu_sdpa_problem *p = &pb->p;
  const size_t rows = (size_t)(p->B * p->Hq * p->Sq);
  int ok = tu_check_close("out", r->out, r->want_out, rows * (size_t)p->Dv, NULL);
  if (pb->want_weights && pb->check_weights)
    ok &= tu_check_close("weights", r->weights, r->want_weights, rows * (size_t)p->Skv, NULL);
  if (pb->want_lse) ok &= tu_check_close("lse", r->lse, r->want_lse, rows, NULL);
  assert_true(ok);
}

/* ---- hand-computed cases ---------------------------------------------------------- */

/* Compare with exact values computed here, and the oracle with them too. */
static void expect(const char *what, const float *got, const double *oracle, const double *want,
                   size_t n) {
  assert_true(tu_check_close(what, got, want, n, NULL));
  /* the oracle itself must agree with the hand values almost exactly */
  for (size_t i = 0; i < n; i++)
    if (!(oracle[i] == want[i] || fabs(oracle[i] - want[i]) <= 1e-12 * (1 + fabs(want[i]))))
      fail_msg("%s: oracle gives %.17g at [%zu], hand value %.17g", what, oracle[i], i, want[i]);
}

static problem small_problem(int64_t B, int64_t H, int64_t Sq, int64_t Skv, int64_t D,
                             int64_t Dv, uint64_t seed, float **bufs) {
  problem pb;
  memset(&pb, 0, sizeof pb);
  tu_sdpa_problem *p = &pb.p;
  p->B = B, p->Hq = H, p->Hkv = H, p->Sq = Sq, p->Skv = Skv, p->D = D, p->Dv = Dv;
  uint64_t s = seed;
  bufs[0] = tu_alloc_uniform((size_t)(B * H * Sq * D), &s, -1, 1);
  bufs[1] = tu_alloc_uniform((size_t)(B * H * Skv * D), &s, -1, 1);
  bufs[2] = tu_alloc_uniform((size_t)(B * H * Skv * Dv), &s, -1, 1);
  p->q = bufs[0], p->k = bufs[1], p->v = bufs[2];
  pb.want_weights = pb.want_lse = pb.check_weights = true;
  return pb;
}

static double dot_qk(const tu_sdpa_problem *p, int64_t bh, int64_t i, int64_t j) {
  double s = 0;
  for (int64_t d = 0; d < p->D; d++)
    s += (double)p->q[(bh * p->Sq + i) * p->D + d] * (double)p->k[(bh * p->Skv + j) * p->D + d];
  return s;
}

/* One key: every query's output is that key's value, weight 1, lse the score. */
static void hand_one_key(void **state) {
  float *b[3];
  problem pb = small_problem(1, 2, 3, 1, 8, 5, 11, b);
  result r;
  run_problem(&pb, &r);
  double want_o[2 * 3 * 5], want_w[2 * 3], want_l[2 * 3];
  for (int h = 0; h < 2; h++)
    for (int i = 0; i < 3; i++) {
      for (int e = 0; e < 5; e++) want_o[(h * 3 + i) * 5 + e] = b[2][h * 5 + e];
      want_w[h * 3 + i] = 1.0;
      want_l[h * 3 + i] = pb.p.scale * dot_qk(&pb.p, h, i, 0);
    }
  expect("out", r.out, r.want_out, want_o, 30);
  expect("weights", r.weights, r.want_weights, want_w, 6);
  expect("lse", r.lse, r.want_lse, want_l, 6);
  result_free(&r);
  free(b[0]), free(b[1]), free(b[2]);
}

/* q = 0: every score is 0, so out is the mean of v, weights 1/Skv, lse log(Skv). */
static void hand_uniform_scores(void **state) {
  float *b[3];
  problem pb = small_problem(1, 1, 4, 17, 8, 6, 12, b);
  memset(b[0], 0, 4 * 8 * sizeof(float));
  result r;
  run_problem(&pb, &r);
  double want_o[4 * 6], want_w[4 * 17], want_l[4];
  for (int i = 0; i < 4; i++) {
    for (int e = 0; e < 6; e++) {
      double m = 0;
      for (int j = 0; j < 17; j++) m += b[2][j * 6 + e];
      want_o[i * 6 + e] = m / 17;
    }
    for (int j = 0; j < 17; j++) want_w[i * 17 + j] = 1.0 / 17;
    want_l[i] = log(17.0);
  }
  expect("out", r.out, r.want_out, want_o, 24);
  expect("weights", r.weights, r.want_weights, want_w, 68);
  expect("lse", r.lse, r.want_lse, want_l, 4);
  result_free(&r);
  free(b[0]), free(b[1]), free(b[2]);
}

/* An additive mask of -inf everywhere but one key per row: out is that key's v. */
static void hand_one_hot_additive(void **state) {
  float *b[3];
  enum { Sq = 5, Skv = 7, Dv = 3 };
  problem pb = small_problem(1, 1, Sq, Skv, 4, Dv, 13, b);
  float mask[Sq * Skv];
  int key[Sq];
  for (int i = 0; i < Sq; i++) {
    key[i] = (i * 3 + 1) % Skv;
    for (int j = 0; j < Skv; j++) mask[i * Skv + j] = j == key[i] ? 0.0f : -INFINITY;
  }
  pb.p.mask = mask, pb.p.mask_kind = ATTN_MASK_ADDITIVE, pb.p.mask_b = pb.p.mask_h = 1;
  result r;
  run_problem(&pb, &r);
  double want_o[Sq * Dv], want_w[Sq * Skv], want_l[Sq];
  for (int i = 0; i < Sq; i++) {
    for (int e = 0; e < Dv; e++) want_o[i * Dv + e] = b[2][key[i] * Dv + e];
    for (int j = 0; j < Skv; j++) want_w[i * Skv + j] = j == key[i];
    want_l[i] = pb.p.scale * dot_qk(&pb.p, 0, i, key[i]);
  }
  expect("out", r.out, r.want_out, want_o, Sq * Dv);
  expect("weights", r.weights, r.want_weights, want_w, Sq * Skv);
  expect("lse", r.lse, r.want_lse, want_l, Sq);
  result_free(&r);
  free(b[0]), free(b[1]), free(b[2]);
}

/* A row with every key masked out (bool 0, or additive -inf): zeros, lse -inf. */
static void fully_masked_row(attn_mask_kind kind) {
  float *b[3];
  enum { Sq = 3, Skv = 4, Dv = 5 };
  problem pb = small_problem(1, 1, Sq, Skv, 8, Dv, 14, b);
  float mask[Sq * Skv];
  for (int i = 0; i < Sq * Skv; i++) {
    const int masked = i / Skv == 1; /* row 1 sees nothing; rows 0, 2 see all */
    mask[i] = kind == ATTN_MASK_BOOL ? (float)!masked : masked ? -INFINITY : 0.0f;
  }
  pb.p.mask = mask, pb.p.mask_kind = kind, pb.p.mask_b = pb.p.mask_h = 1;
  result r;
  run_problem(&pb, &r);
  for (int e = 0; e < Dv; e++) assert_true(r.out[Dv + e] == 0.0f);
  for (int j = 0; j < Skv; j++) assert_true(r.weights[Skv + j] == 0.0f);
  assert_true(isinf(r.lse[1]) && r.lse[1] < 0);
  check_result(&pb, &r); /* and the other rows as usual */
  result_free(&r);
  free(b[0]), free(b[1]), free(b[2]);
}
static void hand_fully_masked_bool(void **state) { fully_masked_row(ATTN_MASK_BOOL); }
static void hand_fully_masked_additive(void **state) { fully_masked_row(ATTN_MASK_ADDITIVE); }

/* kv_lens[0] = 0 hides every key of batch item 0: zeros and lse -inf there. */
static void hand_kv_len_zero(void **state) {
  float *b[3];
  problem pb = small_problem(2, 2, 3, 6, 8, 4, 15, b);
  const int32_t lens[2] = {0, 4};
  pb.p.kv_lens = lens;
  result r;
  run_problem(&pb, &r);
  for (int i = 0; i < 2 * 3 * 4; i++) assert_true(r.out[i] == 0.0f);
  for (int i = 0; i < 2 * 3 * 6; i++) assert_true(r.weights[i] == 0.0f);
  for (int i = 0; i < 2 * 3; i++) assert_true(isinf(r.lse[i]) && r.lse[i] < 0);
  for (int i = 2 * 3 * 6; i < 4 * 3 * 6; i++) /* batch 1: keys 4, 5 hidden */
    if (i % 6 >= 4) assert_true(r.weights[i] == 0.0f);
  check_result(&pb, &r);
  result_free(&r);
  free(b[0]), free(b[1]), free(b[2]);
}

/* Causal with Sq > Skv: query i sees keys j <= i + Skv - Sq, so the first
 * Sq - Skv rows see nothing; the last row sees every key. */
static void hand_causal_bottom_right(void **state) {
  float *b[3];
  enum { Sq = 5, Skv = 3, Dv = 4 };
  problem pb = small_problem(1, 1, Sq, Skv, 8, Dv, 16, b);
  pb.p.causal = true;
  result r;
  run_problem(&pb, &r);
  for (int i = 0; i < Sq; i++)
    for (int j = 0; j < Skv; j++)
      if (j > i + Skv - Sq) assert_true(r.weights[i * Skv + j] == 0.0f);
      else assert_true(r.weights[i * Skv + j] > 0.0f);
  assert_true(isinf(r.lse[0]) && isinf(r.lse[1]) && !isinf(r.lse[2]));
  /* row 2 sees key 0 only: out = v[0] */
  for (int e = 0; e < Dv; e++) assert_float_equal(r.out[2 * Dv + e], b[2][e], 1e-6);
  check_result(&pb, &r);
  result_free(&r);
  free(b[0]), free(b[1]), free(b[2]);
}

/* NaN in q, k or v, or +inf in an additive mask, spoils only the rows that
 * read it: causal hides key 3 from rows 0..2 and key 5 from rows 0..4. */
static void nan_stays_in_its_rows(void **state) {
  float *b[3];
  enum { H = 2, S = 6, D = 8, Dv = 4 };
  problem pb = small_problem(1, H, S, S, D, Dv, 17, b);
  float mask[H * S * S];
  memset(mask, 0, sizeof mask);
  b[1][(0 * S + 3) * D + 2] = NAN;         /* head 0, key 3: rows 3..5 of head 0 */
  b[0][(1 * S + 4) * D + 0] = NAN;         /* head 1, query 4 */
  mask[(1 * S + 1) * S + 0] = INFINITY;    /* head 1, row 1 */
  b[2][(1 * S + 5) * Dv + 1] = NAN;        /* head 1, value 5: only row 5 reads it */
  pb.p.mask = mask, pb.p.mask_kind = ATTN_MASK_ADDITIVE, pb.p.mask_b = 1, pb.p.mask_h = H;
  pb.p.causal = true;
  pb.check_weights = false;
  result r;
  run_problem(&pb, &r);
  for (int h = 0; h < H; h++)
    for (int i = 0; i < S; i++) {
      for (int e = 0; e < Dv; e++) {
        const bool spoilt = (h == 0 && i >= 3) || (h == 1 && (i == 1 || i == 4)) ||
                            (h == 1 && i == 5 && e == 1);
        if (isnan(r.out[(h * S + i) * Dv + e]) != spoilt)
          fail_msg("out[h=%d,i=%d,%d] = %g: expected %s", h, i, e,
                   (double)r.out[(h * S + i) * Dv + e], spoilt ? "NaN" : "a number");
      }
    }
  check_result(&pb, &r);
  result_free(&r);
  free(b[0]), free(b[1]), free(b[2]);
}

/* |scale * q.k| ~ 1e4: softmax must subtract the max, not overflow. */
static void huge_scores(void **state) {
  float *b[3];
  problem pb = small_problem(1, 2, 17, 64, 64, 16, 18, b);
  for (int i = 0; i < 2 * 17 * 64; i++) b[0][i] *= 40.0f;
  for (int i = 0; i < 2 * 64 * 64; i++) b[1][i] *= 40.0f;
  pb.has_scale = true, pb.scale = 4.0f;
  /* A float32 score near 1e4 is only good to ~1e-2 absolute, so a weight
   * exp(s - lse) is only good to ~1%: out (normalised) and lse (relative)
   * are compared as usual; weights must be finite probabilities. */
  pb.check_weights = false;
  result r;
  run_problem(&pb, &r);
  double mx = 0;
  for (int i = 0; i < 2 * 17; i++) mx = fmax(mx, fabs(r.want_lse[i]));
  assert_true(mx > 5e3); /* the test does what it says */
  for (int i = 0; i < 2 * 17 * 64; i++)
    if (!(r.weights[i] >= 0.0f && r.weights[i] <= 1.05f))
      fail_msg("weights[%d] = %g is not a probability", i, (double)r.weights[i]);
  check_result(&pb, &r);
  result_free(&r);
  free(b[0]), free(b[1]), free(b[2]);
}

/* ---- random shapes: a covering set ------------------------------------------------ */

typedef struct rcase {
  int64_t B, Hq, Hkv, Sq, Skv, D, Dv;
  attn_mask_kind mask; /* NONE, BOOL, ADDITIVE */
  char mb, mh;         /* broadcast: '1' or 'B' / 'H' (full) */
  bool causal, kv_lens, weights, lse;
  float scale; /* 0: default 1/sqrt(D) */
  enum layout layout;
  bool mask_view;
} rcase;

/* Every value of every axis appears; the pairs that interact are combined:
 * GQA with masks per head, causal with both Sq < Skv and Sq > Skv and with
 * kv_lens, broadcast kinds with both mask kinds, strided layouts with odd
 * sizes, Dv != D both ways. */
static const rcase cases[] = {
    /* B Hq Hkv Sq  Skv  D    Dv   mask            mb   mh  causal kvl  w     lse   scale layout */
    {1, 1, 1, 1, 1, 1, 1, ATTN_MASK_NONE, 0, 0, false, false, true, true, 0, L_BHSD, false},
    {2, 2, 2, 2, 3, 8, 8, ATTN_MASK_BOOL, '1', '1', false, false, true, true, 0, L_BHSD, false},
    {2, 4, 2, 3, 2, 40, 24, ATTN_MASK_ADDITIVE, 'B', '1', true, false, true, true, 0, L_BSHD, false},
    {1, 8, 1, 17, 64, 64, 64, ATTN_MASK_BOOL, '1', 'H', true, false, false, true, 0, L_BHSD, false},
    {2, 8, 2, 64, 17, 80, 40, ATTN_MASK_ADDITIVE, 'B', 'H', false, true, true, false, 0, L_PADDED, false},
    {1, 2, 1, 100, 100, 128, 128, ATTN_MASK_NONE, 0, 0, true, false, false, true, 0, L_BSHD, false},
    {1, 2, 2, 257, 257, 256, 256, ATTN_MASK_NONE, 0, 0, false, false, false, true, 0.05f, L_BSHD, false},
    {3, 4, 4, 257, 3, 1, 8, ATTN_MASK_BOOL, 'B', 'H', false, true, true, true, 0, L_BHSD, false},
    {1, 4, 1, 1, 257, 256, 64, ATTN_MASK_ADDITIVE, '1', '1', true, false, true, true, 0, L_PADDED, false},
    {3, 2, 1, 64, 100, 8, 1, ATTN_MASK_NONE, 0, 0, true, true, true, true, 0, L_BSHD, false},
    {1, 1, 1, 2, 1, 40, 40, ATTN_MASK_NONE, 0, 0, true, false, true, true, 0, L_BHSD, false},
    {2, 2, 1, 3, 17, 80, 128, ATTN_MASK_BOOL, 'B', '1', false, false, true, false, 0.5f, L_BSHD, false},
    {2, 8, 8, 17, 257, 128, 80, ATTN_MASK_ADDITIVE, '1', 'H', false, true, true, true, 0, L_BHSD, false},
    {1, 16, 2, 100, 64, 64, 32, ATTN_MASK_BOOL, '1', '1', true, false, false, true, 0, L_PADDED, false},
    {1, 4, 2, 257, 100, 40, 256, ATTN_MASK_NONE, 0, 0, false, true, false, true, 0, L_BHSD, false},
    {2, 3, 3, 64, 2, 256, 1, ATTN_MASK_ADDITIVE, 'B', 'H', true, false, true, true, 0, L_BHSD, false},
    {2, 4, 1, 17, 3, 8, 40, ATTN_MASK_BOOL, 'B', 'H', true, true, true, true, 1.5f, L_PADDED, true},
    {2, 2, 2, 3, 64, 1, 80, ATTN_MASK_ADDITIVE, '1', 'H', true, true, true, true, 0, L_BSHD, true},
    {1, 8, 4, 2, 17, 128, 8, ATTN_MASK_BOOL, '1', '1', true, false, true, true, 0, L_BHSD, true},
    {4, 2, 1, 1, 100, 80, 64, ATTN_MASK_NONE, 0, 0, true, true, true, true, 0, L_PADDED, false},
    {1, 2, 1, 129, 1000, 64, 64, ATTN_MASK_ADDITIVE, '1', '1', true, true, true, true, 0, L_BHSD, false},
    {1, 2, 2, 1000, 129, 64, 40, ATTN_MASK_BOOL, '1', 'H', true, false, false, true, 0, L_BSHD, false},
    {2, 4, 2, 17, 100, 40, 8, ATTN_MASK_BOOL, 'B', '1', true, true, true, true, 0, L_TRANSPOSED, false},
    {1, 2, 1, 64, 3, 80, 24, ATTN_MASK_ADDITIVE, '1', '1', false, false, true, true, 0, L_TRANSPOSED, true},
};
#define NCASES (sizeof cases / sizeof cases[0])
static char case_names[NCASES][160];

static const char *mask_name(const rcase *c) {
  static char buf[NCASES][48];
  const size_t i = (size_t)(c - cases);
  if (c->mask == ATTN_MASK_NONE) return "";
  snprintf(buf[i], sizeof buf[i], "_%s[%s,%s]%s", c->mask == ATTN_MASK_BOOL ? "bool" : "add",
           c->mb == 'B' ? "B" : "1", c->mh == 'H' ? "Hq" : "1", c->mask_view ? "view" : "");
  return buf[i];
}

/* The covering set once more, each shape with one of six option sets (case
 * i takes set i % 6), so every option meets odd sizes, broadcast masks,
 * layouts, kv_lens and both Sq < Skv and Sq > Skv. */
typedef struct opt_variant {
  const rcase *c;
  int set;
} opt_variant;
static const char *const opt_set_names[6] = {"window", "softcap", "alibi", "sinks",
                                              "positions", "all"};
static void run_random_case(const rcase *c, int set);
static void random_case(void **state) { run_random_case(*state, -1); }
static void random_case_options(void **state) {
  const opt_variant *o = *state;
  run_random_case(o->c, o->set);
}

static void run_random_case(const rcase *c, int set) {
  problem pb;
  memset(&pb, 0, sizeof pb);
  tu_sdpa_problem *p = &pb.p;
  p->B = c->B, p->Hq = c->Hq, p->Hkv = c->Hkv, p->Sq = c->Sq, p->Skv = c->Skv;
  p->D = c->D, p->Dv = c->Dv;
  uint64_t s = 0x5EED0000u + (uint64_t)(c - cases);
  float *q = tu_alloc_uniform((size_t)(c->B * c->Hq * c->Sq * c->D), &s, -2, 2);
  float *k = tu_alloc_uniform((size_t)(c->B * c->Hkv * c->Skv * c->D), &s, -1, 1);
  float *v = tu_alloc_uniform((size_t)(c->B * c->Hkv * c->Skv * c->Dv), &s, -1, 1);
  p->q = q, p->k = k, p->v = v;
  float *mask = NULL;
  if (c->mask != ATTN_MASK_NONE) {
    p->mask_b = c->mb == 'B' ? c->B : 1;
    p->mask_h = c->mh == 'H' ? c->Hq : 1;
    const size_t n = (size_t)(p->mask_b * p->mask_h * c->Sq * c->Skv);
    mask = tu_alloc_uniform(n, &s, -3, 1);
    for (size_t i = 0; i < n; i++) {
      const bool hide = tu_rand_u64(&s) % 4 == 0; /* a quarter hidden */
      if (c->mask == ATTN_MASK_BOOL) mask[i] = hide ? 0.0f : (float)(1 + i % 3); /* any nonzero */
      else if (hide) mask[i] = -INFINITY;
    }
    p->mask = mask, p->mask_kind = c->mask;
  }
  int32_t *lens = NULL;
  if (c->kv_lens) {
    lens = xmalloc((size_t)c->B * sizeof *lens);
    for (int64_t b = 0; b < c->B; b++) /* 0 and Skv when there is room for both */
      lens[b] = c->B == 1 ? (int32_t)(1 + tu_rand_u64(&s) % (uint64_t)c->Skv)
                : b == 0  ? 0
                : b == 1  ? (int32_t)c->Skv
                          : (int32_t)(tu_rand_u64(&s) % (uint64_t)(c->Skv + 1));
    p->kv_lens = lens;
  }
  p->causal = c->causal;
  float *slopes = NULL, *sinks = NULL;
  if (set == 0 || set == 5) {
    p->has_window = true;
    p->window_left = 1 + c->Skv / 4, p->window_right = set == 5 ? 2 : 0;
  }
  if (set == 1 || set == 5) p->softcap = set == 5 ? 4.0 : 1.0;
  if (set == 2 || set == 5) {
    slopes = tu_alloc_uniform((size_t)c->Hq, &s, 0.01f, 0.5f);
    p->alibi = slopes;
  }
  if (set == 3 || set == 5) {
    sinks = tu_alloc_uniform((size_t)c->Hq, &s, -1, 2);
    p->sinks = sinks;
  }
  if (set == 4) { /* positions that matter: causal or a window compares them */
    p->has_positions = true, p->q_pos = -2, p->k_pos = 1;
    if (!c->causal) p->has_window = true, p->window_left = 3, p->window_right = 3;
  }
  pb.has_scale = c->scale != 0, pb.scale = c->scale;
  pb.want_weights = c->weights, pb.want_lse = c->lse, pb.check_weights = true;
  pb.layout = c->layout;
  pb.mask_as_view = c->mask_view;
  result r;
  run_problem(&pb, &r);
  check_result(&pb, &r);
  result_free(&r);
  free(q), free(k), free(v), free(mask), free(lens), free(slopes), free(sinks);
}

/* ---- the options of 0.3: positions, windows, softcap, ALiBi, sinks ---------------- */

typedef struct ocase {
  const char *name;
  int64_t B, Hq, Hkv, Sq, Skv, D, Dv;
  attn_mask_kind mask;
  char mb, mh, mq;     /* broadcast: '1' or 'B' / 'H' / 'S' (full) */
  bool causal, kv_lens;
  bool pos;            /* has_positions with q_pos, k_pos */
  int64_t q_pos, k_pos;
  bool win;            /* has_window with (wl, wr) */
  int64_t wl, wr;
  float softcap;       /* 0: none */
  bool alibi, sinks;
  bool weights;        /* also the weights (pocl's decode path takes none) */
  enum layout layout;
  attn_dtype dtype;    /* of q, k and v */
} ocase;

/* Each option alone, then the combinations real models use and the
 * awkward ones: window + causal + GQA + kv_lens, softcap + mask, sinks +
 * window, ALiBi + causal, positions with Sq > Skv and with q_pos < 0, head
 * dims up to 512, decode shapes (Sq <= 8: pocl's split-key path), masks
 * broadcast over queries. */
static const ocase ocases[] = {
    /* name                 B  Hq Hkv Sq   Skv   D    Dv   mask mb mh mq causal kvl  pos qp kp  win wl wr softcap alibi sinks weights layout */
    {"window_both",         1, 2, 2, 100, 100, 64, 64, ATTN_MASK_NONE, 0, 0, 0, false, false, false, 0, 0, true, 16, 8, 0, false, false, true, L_BHSD, ATTN_F32},
    {"window_left",         2, 2, 1, 70, 90, 40, 40, ATTN_MASK_NONE, 0, 0, 0, false, false, false, 0, 0, true, 33, -1, 0, false, false, true, L_BSHD, ATTN_F32},
    {"window_right",        1, 3, 3, 50, 50, 16, 24, ATTN_MASK_NONE, 0, 0, 0, false, false, false, 0, 0, true, -1, 5, 0, false, false, true, L_BHSD, ATTN_F32},
    {"window_unbounded",    1, 2, 2, 20, 30, 8, 8, ATTN_MASK_NONE, 0, 0, 0, true, false, false, 0, 0, true, -1, -1, 0, false, false, true, L_BHSD, ATTN_F32},
    {"window_causal_gqa_kvlens", 3, 8, 2, 77, 300, 64, 64, ATTN_MASK_NONE, 0, 0, 0, true, true, false, 0, 0, true, 40, 0, 0, false, false, true, L_BSHD, ATTN_F32},
    {"window_causal_big",   1, 2, 1, 300, 300, 64, 64, ATTN_MASK_BOOL, '1', '1', 'S', true, false, false, 0, 0, true, 64, 0, 0, false, false, true, L_BHSD, ATTN_F32},
    {"softcap",             2, 2, 2, 33, 65, 64, 64, ATTN_MASK_NONE, 0, 0, 0, false, false, false, 0, 0, false, 0, 0, 0.7f, false, false, true, L_BHSD, ATTN_F32},
    {"softcap_add_mask_B11S", 2, 4, 2, 40, 70, 32, 32, ATTN_MASK_ADDITIVE, 'B', '1', '1', false, false, false, 0, 0, false, 0, 0, 1.5f, false, false, true, L_PADDED, ATTN_F32},
    {"softcap_bool_mask_causal", 1, 4, 4, 64, 64, 64, 40, ATTN_MASK_BOOL, '1', 'H', 'S', true, false, false, 0, 0, false, 0, 0, 50.0f, false, false, true, L_BHSD, ATTN_F32},
    {"alibi",               2, 4, 4, 30, 50, 32, 32, ATTN_MASK_NONE, 0, 0, 0, false, false, false, 0, 0, false, 0, 0, 0, true, false, true, L_BHSD, ATTN_F32},
    {"alibi_causal",        1, 8, 2, 64, 128, 64, 64, ATTN_MASK_NONE, 0, 0, 0, true, false, false, 0, 0, false, 0, 0, 0, true, false, true, L_BSHD, ATTN_F32},
    {"sinks",               2, 4, 2, 20, 40, 32, 32, ATTN_MASK_NONE, 0, 0, 0, false, false, false, 0, 0, false, 0, 0, 0, false, true, true, L_BHSD, ATTN_F32},
    {"sinks_window_kvlens", 3, 4, 4, 50, 120, 64, 64, ATTN_MASK_NONE, 0, 0, 0, true, true, false, 0, 0, true, 24, 0, 0, false, true, true, L_BHSD, ATTN_F32},
    {"sinks_bool_mask",     1, 2, 2, 17, 33, 16, 16, ATTN_MASK_BOOL, '1', '1', 'S', false, false, false, 0, 0, false, 0, 0, 0, false, true, true, L_TRANSPOSED, ATTN_F32},
    {"top_left_causal",     1, 2, 2, 50, 80, 32, 32, ATTN_MASK_NONE, 0, 0, 0, true, false, true, 0, 0, false, 0, 0, 0, false, false, true, L_BHSD, ATTN_F32},
    {"q_pos_negative",      2, 2, 1, 40, 30, 32, 32, ATTN_MASK_NONE, 0, 0, 0, true, true, true, -5, 3, false, 0, 0, 0, false, false, true, L_BSHD, ATTN_F32},
    {"sq_gt_skv_positions_window", 1, 4, 2, 90, 40, 64, 64, ATTN_MASK_NONE, 0, 0, 0, true, false, true, 0, 0, true, 10, 0, 0, false, true, true, L_BHSD, ATTN_F32},
    {"positions_alibi",     1, 2, 2, 30, 60, 32, 32, ATTN_MASK_NONE, 0, 0, 0, false, false, true, 1000, 990, false, 0, 0, 0, true, false, true, L_BHSD, ATTN_F32},
    {"positions_beyond",    1, 2, 2, 16, 16, 16, 16, ATTN_MASK_NONE, 0, 0, 0, true, false, true, 4000000000LL, 0, true, 4000000010LL, -1, 0, false, false, true, L_BHSD, ATTN_F32},
    {"everything",          2, 8, 2, 70, 150, 64, 64, ATTN_MASK_ADDITIVE, 'B', '1', '1', true, true, false, 0, 0, true, 48, 0, 30.0f, true, true, true, L_BSHD, ATTN_F32},
    {"d512",                1, 2, 1, 40, 70, 512, 512, ATTN_MASK_NONE, 0, 0, 0, true, false, false, 0, 0, true, 20, 0, 0, false, false, true, L_BHSD, ATTN_F32},
    {"d512_dv384_sinks",    1, 2, 2, 33, 50, 512, 384, ATTN_MASK_NONE, 0, 0, 0, false, false, false, 0, 0, false, 0, 0, 0, false, true, true, L_BSHD, ATTN_F32},
    {"d320_dv512_softcap",  1, 2, 2, 20, 40, 320, 512, ATTN_MASK_BOOL, '1', '1', '1', false, false, false, 0, 0, false, 0, 0, 2.0f, false, false, true, L_BHSD, ATTN_F32},
    {"decode_window_sinks_gqa", 2, 8, 2, 1, 1000, 64, 64, ATTN_MASK_NONE, 0, 0, 0, true, true, false, 0, 0, true, 128, 0, 0, false, true, false, L_BHSD, ATTN_F32},
    {"decode_alibi_softcap", 1, 4, 4, 4, 700, 128, 128, ATTN_MASK_ADDITIVE, '1', '1', '1', true, false, false, 0, 0, false, 0, 0, 20.0f, true, false, false, L_BHSD, ATTN_F32},
    {"decode_d512_window",  1, 4, 1, 2, 600, 512, 512, ATTN_MASK_NONE, 0, 0, 0, true, false, true, 100, 0, true, 50, 0, 0, false, false, false, L_BHSD, ATTN_F32},
    {"mask_bool_111S",      2, 2, 2, 20, 45, 16, 16, ATTN_MASK_BOOL, '1', '1', '1', false, false, false, 0, 0, false, 0, 0, 0, false, false, true, L_BHSD, ATTN_F32},
    {"mask_add_B11S_causal", 3, 4, 2, 25, 25, 32, 32, ATTN_MASK_ADDITIVE, 'B', '1', '1', true, false, false, 0, 0, false, 0, 0, 0, false, false, true, L_BSHD, ATTN_F32},
    {"bf16_everything",     2, 8, 2, 70, 150, 64, 64, ATTN_MASK_ADDITIVE, 'B', '1', '1', true, true, false, 0, 0, true, 48, 0, 30.0f, true, true, true, L_BSHD, ATTN_BF16},
    {"f16_window_sinks",    1, 4, 4, 50, 120, 64, 64, ATTN_MASK_NONE, 0, 0, 0, true, false, false, 0, 0, true, 24, 0, 0, false, true, true, L_BHSD, ATTN_F16},
    {"bf16_decode_window_alibi", 2, 8, 2, 1, 1000, 128, 128, ATTN_MASK_NONE, 0, 0, 0, true, true, false, 0, 0, true, 128, 0, 0, true, false, false, L_BHSD, ATTN_BF16},
    {"f16_decode_softcap_positions", 1, 4, 1, 3, 500, 64, 64, ATTN_MASK_BOOL, '1', '1', '1', true, false, true, 20, 0, false, 0, 0, 15.0f, false, true, false, L_BHSD, ATTN_F16},
};
#define NOCASES (sizeof ocases / sizeof ocases[0])

static void option_case(void **state) {
  const ocase *c = *state;
  problem pb;
  memset(&pb, 0, sizeof pb);
  tu_sdpa_problem *p = &pb.p;
  p->B = c->B, p->Hq = c->Hq, p->Hkv = c->Hkv, p->Sq = c->Sq, p->Skv = c->Skv;
  p->D = c->D, p->Dv = c->Dv;
  uint64_t s = 0x0971000u + (uint64_t)(c - ocases);
  float *q = tu_alloc_uniform((size_t)(c->B * c->Hq * c->Sq * c->D), &s, -2, 2);
  float *k = tu_alloc_uniform((size_t)(c->B * c->Hkv * c->Skv * c->D), &s, -1, 1);
  float *v = tu_alloc_uniform((size_t)(c->B * c->Hkv * c->Skv * c->Dv), &s, -1, 1);
  p->q = q, p->k = k, p->v = v;
  if (c->dtype != ATTN_F32) { /* the oracle sees the values as stored */
    float *xs[3] = {q, k, v};
    const size_t ns[3] = {(size_t)(c->B * c->Hq * c->Sq * c->D),
                          (size_t)(c->B * c->Hkv * c->Skv * c->D),
                          (size_t)(c->B * c->Hkv * c->Skv * c->Dv)};
    for (int t = 0; t < 3; t++)
      for (size_t i = 0; i < ns[t]; i++)
        xs[t][i] = c->dtype == ATTN_BF16 ? attn_bf16_to_f32(attn_f32_to_bf16(xs[t][i]))
                                         : attn_f16_to_f32(attn_f32_to_f16(xs[t][i]));
  }
  pb.in_dtype = c->dtype;
  float *mask = NULL;
  if (c->mask != ATTN_MASK_NONE) {
    p->mask_b = c->mb == 'B' ? c->B : 1;
    p->mask_h = c->mh == 'H' ? c->Hq : 1;
    p->mask_q = c->mq == 'S' ? c->Sq : 1;
    const size_t n = (size_t)(p->mask_b * p->mask_h * p->mask_q * c->Skv);
    mask = tu_alloc_uniform(n, &s, -3, 1);
    for (size_t i = 0; i < n; i++) {
      const bool hide = tu_rand_u64(&s) % 4 == 0;
      if (c->mask == ATTN_MASK_BOOL) mask[i] = hide ? 0.0f : 1.0f;
      else if (hide) mask[i] = -INFINITY;
    }
    p->mask = mask, p->mask_kind = c->mask;
  }
  int32_t *lens = NULL;
  if (c->kv_lens) {
    lens = xmalloc((size_t)c->B * sizeof *lens);
    for (int64_t b = 0; b < c->B; b++) /* an empty batch item, a full one, one between */
      lens[b] = b == 0 ? 0 : b == 1 ? (int32_t)c->Skv : (int32_t)(c->Skv / 3);
    if (c->B == 1) lens[0] = (int32_t)(c->Skv / 2);
    p->kv_lens = lens;
  }
  float *alibi = NULL, *sinks = NULL;
  if (c->alibi) { /* BLOOM's slopes 2^(-8 h / Hq), h = 1 .. Hq */
    alibi = xmalloc((size_t)c->Hq * sizeof *alibi);
    for (int64_t h = 0; h < c->Hq; h++) alibi[h] = exp2f(-8.0f * (float)(h + 1) / (float)c->Hq);
    p->alibi = alibi;
  }
  if (c->sinks) {
    sinks = tu_alloc_uniform((size_t)c->Hq, &s, -2, 3);
    p->sinks = sinks;
  }
  p->causal = c->causal;
  p->has_positions = c->pos, p->q_pos = c->q_pos, p->k_pos = c->k_pos;
  p->has_window = c->win, p->window_left = c->wl, p->window_right = c->wr;
  p->softcap = c->softcap;
  pb.want_weights = c->weights, pb.want_lse = true, pb.check_weights = true;
  pb.layout = c->layout;
  result r;
  run_problem(&pb, &r);
  check_result(&pb, &r);
  /* The case does what it says: the options hide keys or change scores. */
  if (c->sinks && c->kv_lens && c->B > 1) {
    /* batch item 0 sees nothing: lse is the sink's logit, out zeros */
    for (int64_t h = 0; h < c->Hq; h++)
      assert_true(r.lse[h * c->Sq] == sinks[h]);
  }
  result_free(&r);
  free(q), free(k), free(v), free(mask), free(lens), free(alibi), free(sinks);
}

/* transformers' padding mask: torch.finfo(float32).min, not -inf. A row
 * whose every key has it is uniform over them (the average of V, as ref and
 * PyTorch give); a row with some keys unmasked ignores the masked ones. */
static void finfo_min_mask(void **state) {
  float *b[3];
  problem pb = small_problem(1, 2, 8, 24, 32, 32, 0xF1F0, b);
  tu_sdpa_problem *p = &pb.p;
  float *mask = xmalloc(8 * 24 * sizeof *mask);
  for (int i = 0; i < 8; i++)
    for (int j = 0; j < 24; j++)
      mask[i * 24 + j] = (i < 3 || j >= 20) ? -FLT_MAX : 0.0f; /* rows 0-2: every key */
  p->mask = mask, p->mask_kind = ATTN_MASK_ADDITIVE, p->mask_b = 1, p->mask_h = 1;
  result r;
  run_problem(&pb, &r);
  /* the oracle itself: row 0 is the plain average of V */
  for (int e = 0; e < 32; e++) {
    double avg = 0;
    for (int j = 0; j < 24; j++) avg += b[2][j * 32 + e];
    assert_true(fabs(r.want_out[e] - avg / 24) < 1e-12);
  }
  check_result(&pb, &r);
  result_free(&r);
  free(mask), free(b[0]), free(b[1]), free(b[2]);
}

/* Scores in the thousands (the inputs x30 at its shape): the weights
 * may be no worse than twice a plain float32 computation's error against
 * the double truth (float dot products, float softmax, as PyTorch's math
 * path). One weight's error depends on near-ties between its row's largest
 * scores, so the maximum over many rows (heads x queries) is compared. */
static void large_scores_precision(void **state) {
  float *b[3];
  const int H = 4, Sq = 128, Skv = 64, D = 64;
  problem pb = small_problem(1, H, Sq, Skv, D, D, 0x3600, b);
  for (int i = 0; i < H * Sq * D; i++) b[0][i] *= 60.0f;
  for (int i = 0; i < H * Skv * D; i++) b[1][i] *= 60.0f;
  result r;
  run_problem(&pb, &r);
  const float scale = (float)pb.p.scale;
  double err32 = 0, err = 0, smax = 0;
  for (int h = 0; h < H; h++)
    for (int i = 0; i < Sq; i++) {
      const float *qr = b[0] + ((size_t)h * Sq + i) * D, *kh = b[1] + (size_t)h * Skv * D;
      float sc[64], m = -INFINITY, l = 0;
      for (int j = 0; j < Skv; j++) {
        float d = 0;
        for (int c = 0; c < D; c++) d += qr[c] * kh[j * D + c];
        sc[j] = d * scale;
        m = fmaxf(m, sc[j]);
        smax = fmax(smax, fabs(sc[j]));
      }
      for (int j = 0; j < Skv; j++) l += expf(sc[j] - m);
      const size_t row = ((size_t)h * Sq + i) * Skv;
      for (int j = 0; j < Skv; j++) {
        const double want = r.want_weights[row + j];
        err32 = fmax(err32, fabs(expf(sc[j] - m) / l - want));
        err = fmax(err, fabs(r.weights[row + j] - want));
      }
    }
  print_message("  |s| up to %.0f: weights err %.3g, plain float32 %.3g\n", smax, err, err32);
  assert_true(smax > 3600);
  assert_true(err <= 2 * err32 + 1e-7);
  result_free(&r);
  free(b[0]), free(b[1]), free(b[2]);
}

/* attn_merge of two SDPAs over the keys [0, s) and [s, Skv) (the second at
 * k_pos = s, so causal positions stay those of the union) equals one SDPA
 * over all keys; batch item 0 has an empty second partial (kv_lens), item 1
 * two empty ones (zeros, lse = -inf); once in place (out = out_a). */
static void merge_partials(bool in_place, attn_dtype out_dtype) {
  const int64_t B = 2, H = 4, Hkv = 2, Sq = 9, Skv = 50, D = 32, split = 20;
  uint64_t s = 0x3E46E;
  float *q = tu_alloc_uniform((size_t)(B * H * Sq * D), &s, -2, 2);
  float *k = tu_alloc_uniform((size_t)(B * Hkv * Skv * D), &s, -1, 1);
  float *v = tu_alloc_uniform((size_t)(B * Hkv * Skv * D), &s, -1, 1);
  int32_t lens[2] = {(int32_t)Skv, 0}; /* the union: item 0 sees every key, item 1 none */
  tu_sdpa_problem p = {.B = B, .Hq = H, .Hkv = Hkv, .Sq = Sq, .Skv = Skv, .D = D, .Dv = D,
                       .q = q, .k = k, .v = v, .causal = true, .kv_lens = lens,
                       .scale = (double)(float)(1.0 / sqrt((double)D))};
  double *want = xmalloc((size_t)(B * H * Sq * D) * sizeof *want);
  double *want_lse = xmalloc((size_t)(B * H * Sq) * sizeof *want_lse);
  tu_sdpa_double(&p, want, NULL, want_lse);

  const int64_t qs[4] = {B, H, Sq, D}, ks[4] = {B, Hkv, Skv, D};
  attn_tensor *tq = upload4(q, qs, L_BHSD), *tk = upload4(k, ks, L_BHSD), *tv = upload4(v, ks, L_BHSD);
  const int64_t ksa[4] = {B, Hkv, split, D}, ksb[4] = {B, Hkv, Skv - split, D};
  const int64_t kst[4] = {Hkv * Skv * D, Skv * D, D, 1};
  attn_tensor *ka, *kb, *va, *vb;
  CHECK_OK(attn_tensor_view(tk, 0, 4, ksa, kst, &ka));
  CHECK_OK(attn_tensor_view(tk, split * D, 4, ksb, kst, &kb));
  CHECK_OK(attn_tensor_view(tv, 0, 4, ksa, kst, &va));
  CHECK_OK(attn_tensor_view(tv, split * D, 4, ksb, kst, &vb));
  const int64_t ls[3] = {B, H, Sq};
  attn_tensor *oa, *ob, *la, *lb, *o = NULL, *l;
  CHECK_OK(attn_tensor_create_typed(g_ctx, out_dtype, 4, qs, &oa));
  CHECK_OK(attn_tensor_create_typed(g_ctx, out_dtype, 4, qs, &ob));
  CHECK_OK(attn_tensor_create(g_ctx, 3, ls, &la));
  CHECK_OK(attn_tensor_create(g_ctx, 3, ls, &lb));
  CHECK_OK(attn_tensor_create(g_ctx, 3, ls, &l));
  if (!in_place) CHECK_OK(attn_tensor_create_typed(g_ctx, out_dtype, 4, qs, &o));
  int32_t la_lens[2] = {(int32_t)split, 0}, lb_lens[2] = {(int32_t)(Skv - split), 0};
  attn_sdpa_args a = ATTN_SDPA_ARGS_INIT;
  a.q = tq, a.k = ka, a.v = va, a.out = oa, a.lse = la, a.causal = true, a.kv_lens = la_lens;
  a.has_positions = true, a.q_pos = Skv - Sq, a.k_pos = 0;
  CHECK_OK(attn_sdpa(g_ctx, &a));
  a.k = kb, a.v = vb, a.out = ob, a.lse = lb, a.kv_lens = lb_lens, a.k_pos = split;
  CHECK_OK(attn_sdpa(g_ctx, &a));
  attn_tensor *dst = in_place ? oa : o;
  const size_t n = (size_t)(B * H * Sq * D), nr = (size_t)(B * H * Sq);
  float *got = xmalloc(n * sizeof *got), *got_lse = xmalloc(nr * sizeof *got_lse);
  /* The formula in double from the partials as stored (before the merge,
   * which may overwrite them), and, in f32, the union itself. */
  float *pa = xmalloc(n * sizeof *pa), *pb = xmalloc(n * sizeof *pb);
  float *pla = xmalloc(nr * sizeof *pla), *plb = xmalloc(nr * sizeof *plb);
  CHECK_OK(attn_tensor_read(oa, pa, n));
  CHECK_OK(attn_tensor_read(ob, pb, n));
  CHECK_OK(attn_tensor_read(la, pla, nr));
  CHECK_OK(attn_tensor_read(lb, plb, nr));
  double *formula = xmalloc(n * sizeof *formula);
  for (size_t r = 0; r < nr; r++) {
    const double m = fmax(pla[r], plb[r]);
    const double lse = m == -INFINITY ? -INFINITY : m + log(exp(pla[r] - m) + exp(plb[r] - m));
    for (int64_t e = 0; e < D; e++) {
      const size_t i = r * (size_t)D + (size_t)e;
      formula[i] = m == -INFINITY ? 0.0
                                  : exp(pla[r] - lse) * pa[i] + exp(plb[r] - lse) * pb[i];
    }
  }
  CHECK_OK(attn_merge(g_ctx, oa, la, ob, lb, dst, in_place ? la : l));
  CHECK_OK(attn_tensor_read(dst, got, n));
  CHECK_OK(attn_tensor_read(in_place ? la : l, got_lse, nr));
  int ok = tu_check_close_typed("merged out (formula)", out_dtype, got, formula, n, NULL);
  if (out_dtype == ATTN_F32) ok &= tu_check_close("merged out (union)", got, want, n, NULL);
  ok &= tu_check_close("merged lse", got_lse, want_lse, nr, NULL);
  free(pa), free(pb), free(pla), free(plb), free(formula);
  assert_true(ok);
  /* batch item 1: both partials empty, so zeros and -inf, never NaN */
  for (size_t i = nr / 2; i < nr; i++) assert_true(got_lse[i] == -INFINITY);
  for (size_t i = n / 2; i < n; i++) assert_true(got[i] == 0.0f);
  attn_tensor *all[] = {tq, tk, tv, ka, kb, va, vb, oa, ob, la, lb, o, l};
  for (size_t i = 0; i < sizeof all / sizeof all[0]; i++) attn_tensor_free(all[i]);
  free(q), free(k), free(v), free(want), free(want_lse), free(got), free(got_lse);
}
static void merge_union(void **state) { merge_partials(false, ATTN_F32); }
static void merge_in_place(void **state) { merge_partials(true, ATTN_F32); }
static void merge_bf16(void **state) { merge_partials(false, ATTN_BF16); }

/* Bad options: refused naming the argument, the context still usable. */
static void options_refused(void **state) {
  const int64_t qs[4] = {1, 2, 4, 8}, ls[3] = {1, 2, 4}, qst[4] = {64, 32, 8, 1};
  const int64_t big = 72, lst[3] = {64, 32, 8};
  attn_tensor *q, *o, *l, *l2, *m, *ob, *o_shift, *l_in_o;
  CHECK_OK(attn_tensor_create(g_ctx, 4, qs, &q));
  CHECK_OK(attn_tensor_create(g_ctx, 1, &big, &ob));
  CHECK_OK(attn_tensor_view(ob, 0, 4, qs, qst, &o));
  CHECK_OK(attn_tensor_view(ob, 8, 4, qs, qst, &o_shift));
  CHECK_OK(attn_tensor_view(ob, 0, 3, ls, lst, &l_in_o));
  CHECK_OK(attn_tensor_create(g_ctx, 3, ls, &l));
  CHECK_OK(attn_tensor_create(g_ctx, 3, ls, &l2));
  const int64_t ms[4] = {1, 1, 2, 4};
  CHECK_OK(attn_tensor_create(g_ctx, 4, ms, &m));
  float zeros[64] = {0};
  CHECK_OK(attn_tensor_write(q, zeros, 64));
  attn_sdpa_args a = ATTN_SDPA_ARGS_INIT;
  a.q = q, a.k = q, a.v = q, a.out = o;
  a.has_window = true, a.window_left = -2;
  tu_assert_fails(attn_sdpa(g_ctx, &a), ATTN_ERR_INVALID_ARG, "window_left");
  a.window_left = 3, a.window_right = -7;
  tu_assert_fails(attn_sdpa(g_ctx, &a), ATTN_ERR_INVALID_ARG, "window_right");
  a.has_window = false;
  a.softcap = -1.0f;
  tu_assert_fails(attn_sdpa(g_ctx, &a), ATTN_ERR_INVALID_ARG, "softcap");
  a.softcap = INFINITY;
  tu_assert_fails(attn_sdpa(g_ctx, &a), ATTN_ERR_INVALID_ARG, "softcap");
  a.softcap = 0;
  const float bad[2] = {0.5f, NAN};
  a.alibi_slopes = bad;
  tu_assert_fails(attn_sdpa(g_ctx, &a), ATTN_ERR_INVALID_ARG, "alibi_slopes[1]");
  a.alibi_slopes = NULL, a.sinks = bad;
  tu_assert_fails(attn_sdpa(g_ctx, &a), ATTN_ERR_INVALID_ARG, "sinks[1]");
  a.sinks = NULL;
  a.has_positions = true, a.q_pos = (int64_t)1 << 60;
  tu_assert_fails(attn_sdpa(g_ctx, &a), ATTN_ERR_INVALID_ARG, "q_pos");
  a.has_positions = false;
  a.mask = m, a.mask_kind = ATTN_MASK_BOOL; /* mask query dim 2: neither 1 nor Sq = 4 */
  tu_assert_fails(attn_sdpa(g_ctx, &a), ATTN_ERR_SHAPE, "mask");
  a.mask = NULL, a.mask_kind = ATTN_MASK_NONE;
  /* merge: shapes, lse type, overlaps other than exactly in place */
  tu_assert_fails(attn_merge(g_ctx, q, l, o, l2, o_shift, NULL), ATTN_ERR_INVALID_ARG,
                  "out: overlaps input out_b");
  tu_assert_fails(attn_merge(g_ctx, q, l, q, l2, o, l_in_o), ATTN_ERR_INVALID_ARG,
                  "lse: overlaps output out");
  tu_assert_fails(attn_merge(g_ctx, q, l, q, l, o, m), ATTN_ERR_SHAPE, "lse");
  tu_assert_fails(attn_merge(g_ctx, q, l, q, NULL, o, NULL), ATTN_ERR_INVALID_ARG, "lse_b");
  /* and the context still works */
  CHECK_OK(attn_sdpa(g_ctx, &a));
  CHECK_OK(attn_merge(g_ctx, q, l, q, l2, o, NULL));
  CHECK_OK(attn_synchronize(g_ctx));
  CHECK_OK(attn_merge(g_ctx, q, l, o, l2, o, l2)); /* in place into out_b and lse_b */
  CHECK_OK(attn_synchronize(g_ctx));
  attn_tensor_free(q), attn_tensor_free(o), attn_tensor_free(l), attn_tensor_free(l2);
  attn_tensor_free(m), attn_tensor_free(ob), attn_tensor_free(o_shift), attn_tensor_free(l_in_o);
}

/* ---- host-only: the oracle and the tolerance ----------------------------------- */

/* A plain float32 attention, the way a correct kernel computes it: float
 * dot products, float softmax, float accumulation; optionally with a bug.
 * online = 1 does flash-style tiles of 64 keys with rescaling. */
enum bug { BUG_NONE, BUG_DROP_LAST_KEY, BUG_SCALE_1_OVER_D, BUG_IGNORE_MASK, BUG_SCALE_NUDGED };
static void f32_sdpa(const tu_sdpa_problem *p, float *out, int online, enum bug bug) {
  float *s = xmalloc((size_t)p->Skv * sizeof *s);
  float *acc = xmalloc((size_t)p->Dv * sizeof *acc);
  const float scale = bug == BUG_SCALE_1_OVER_D   ? (float)(1.0 / (double)p->D)
                      : bug == BUG_SCALE_NUDGED ? (float)p->scale * 1.002f
                                                : (float)p->scale;
  for (int64_t r = 0; r < p->B * p->Hq * p->Sq; r++) {
    const float *q = p->q + r * p->D;
    const int64_t n = bug == BUG_DROP_LAST_KEY ? p->Skv - 1 : p->Skv;
    for (int64_t j = 0; j < n; j++) {
      float d = 0;
      for (int64_t c = 0; c < p->D; c++) d += q[c] * p->k[j * p->D + c];
      s[j] = scale * d + (p->mask && bug != BUG_IGNORE_MASK ? p->mask[r % p->Sq * p->Skv + j] : 0);
    }
    float m = -INFINITY, l = 0;
    for (int64_t c = 0; c < p->Dv; c++) acc[c] = 0;
    const int64_t tile = online ? 64 : n;
    for (int64_t j0 = 0; j0 < n; j0 += tile) {
      const int64_t j1 = j0 + tile < n ? j0 + tile : n;
      float mt = m;
      for (int64_t j = j0; j < j1; j++) mt = fmaxf(mt, s[j]);
      const float corr = expf(m - mt);
      l *= corr;
      for (int64_t c = 0; c < p->Dv; c++) acc[c] *= corr;
      for (int64_t j = j0; j < j1; j++) {
        const float e = expf(s[j] - mt);
        l += e;
        for (int64_t c = 0; c < p->Dv; c++) acc[c] += e * p->v[j * p->Dv + c];
      }
      m = mt;
    }
    for (int64_t c = 0; c < p->Dv; c++) out[r * p->Dv + c] = acc[c] / l;
  }
  free(s), free(acc);
}

static void oracle_two_keys(void **state) {
  /* scores 0 and log(3) (scale 1): weights 1/4, 3/4 exactly */
  const float q[2] = {1, 0}, k[4] = {0, 0, (float)log(3.0), 0}, v[4] = {1, -2, 5, 2};
  tu_sdpa_problem p = {.B = 1, .Hq = 1, .Hkv = 1, .Sq = 1, .Skv = 2, .D = 2, .Dv = 2,
                       .q = q, .k = k, .v = v, .scale = 1.0};
  double out[2], w[2], lse[1];
  tu_sdpa_double(&p, out, w, lse);
  const double k1 = (double)(float)log(3.0);
  const double w1 = exp(k1) / (1 + exp(k1)), w0 = 1 / (1 + exp(k1));
  assert_float_equal(w[0], w0, 1e-15);
  assert_float_equal(w[1], w1, 1e-15);
  assert_float_equal(out[0], w0 * 1 + w1 * 5, 1e-15);
  assert_float_equal(out[1], w0 * -2 + w1 * 2, 1e-15);
  assert_float_equal(lse[0], log(1 + exp(k1)), 1e-15);
}

/* Skv = 1000, D = Dv = 256: a correct float32 computation (plain and online)
 * passes with margin; an off-by-one key, a wrong scale or a missing mask fail. */
static void tolerance_calibration(void **state) {
  enum { Sq = 8, Skv = 1000, D = 256 };
  uint64_t s = 77;
  float *q = tu_alloc_uniform(Sq * D, &s, -2, 2), *k = tu_alloc_uniform(Skv * D, &s, -1, 1);
  float *v = tu_alloc_uniform(Skv * D, &s, -1, 1);
  float *mask = tu_alloc_uniform(Sq * Skv, &s, -3, 1);
  for (int i = 0; i < Sq * Skv; i++)
    if (i % 5 == 0) mask[i] = -INFINITY;
  tu_sdpa_problem p = {.B = 1, .Hq = 1, .Hkv = 1, .Sq = Sq, .Skv = Skv, .D = D, .Dv = D,
                       .q = q, .k = k, .v = v, .mask = mask, .mask_kind = ATTN_MASK_ADDITIVE,
                       .mask_b = 1, .mask_h = 1, .scale = (double)(float)(1.0 / 16)};
  double *want = xmalloc(Sq * D * sizeof *want), scale = 0;
  float *got = xmalloc(Sq * D * sizeof *got);
  tu_sdpa_double(&p, want, NULL, NULL);
  for (int i = 0; i < Sq * D; i++) scale = fmax(scale, fabs(want[i]));
  const double tol = TU_ATOL + TU_RTOL * scale;
  for (int online = 0; online < 2; online++) {
    double err;
    f32_sdpa(&p, got, online, BUG_NONE);
    assert_true(tu_check_close("f32 correct", got, want, Sq * D, &err));
    print_message("  correct float32 (%s): max err %.3g, tolerance %.3g (%.1fx margin)\n",
                  online ? "online tiles" : "plain", err, tol, tol / err);
    assert_true(err * 4 < tol); /* margin */
  }
  static const char *const names[] = {"", "drop last key", "scale 1/D", "ignore mask",
                                      "scale * 1.002"};
  for (int bug = BUG_DROP_LAST_KEY; bug <= BUG_SCALE_NUDGED; bug++) {
    double err;
    f32_sdpa(&p, got, 0, (enum bug)bug);
    assert_false(tu_check_close(names[bug], got, want, Sq * D, &err));
    print_message("  bug '%s': max err %.3g, tolerance %.3g (%.1fx over)\n", names[bug], err,
                  tol, err / tol);
  }
  free(q), free(k), free(v), free(mask), free(want), free(got);
}

/* ---- groups ------------------------------------------------------------------------- */

static int open_device(void **state) {
  attn_status s = attn_open(g_dev, &g_ctx);
  if (s != ATTN_OK) {
    print_error("attn_open(\"%s\"): %s\n", g_dev, attn_last_error());
    return -1;
  }
  return 0;
}
static int close_device(void **state) {
  attn_close(g_ctx);
  g_ctx = NULL;
  return 0;
}

int main(void) {
  const struct CMUnitTest host_tests[] = {
      cmocka_unit_test(oracle_two_keys),
      cmocka_unit_test(tolerance_calibration),
  };
  int failed = cmocka_run_group_tests_name("sdpa_oracle", host_tests, NULL, NULL);

  static const struct CMUnitTest fixed[] = {
      cmocka_unit_test(hand_one_key),
      cmocka_unit_test(hand_uniform_scores),
      cmocka_unit_test(hand_one_hot_additive),
      cmocka_unit_test(hand_fully_masked_bool),
      cmocka_unit_test(hand_fully_masked_additive),
      cmocka_unit_test(hand_kv_len_zero),
      cmocka_unit_test(hand_causal_bottom_right),
      cmocka_unit_test(nan_stays_in_its_rows),
      cmocka_unit_test(huge_scores),
      cmocka_unit_test(finfo_min_mask),
      cmocka_unit_test(large_scores_precision),
      cmocka_unit_test(merge_union),
      cmocka_unit_test(merge_in_place),
      cmocka_unit_test(merge_bf16),
      cmocka_unit_test(options_refused),
  };
  enum { NFIXED = sizeof fixed / sizeof fixed[0] };
  struct CMUnitTest tests[NFIXED + 2 * NCASES + NOCASES];
  static opt_variant variants[NCASES];
  static char variant_names[NCASES][200];
  memcpy(tests, fixed, sizeof fixed);
  for (size_t i = 0; i < NOCASES; i++)
    tests[NFIXED + NCASES + i] =
        (struct CMUnitTest){ocases[i].name, option_case, NULL, NULL, (void *)&ocases[i]};
  static const char *const layouts[] = {"", "_BSHD", "_padded", "_transposed"};
  for (size_t i = 0; i < NCASES; i++) {
    const rcase *c = &cases[i];
    snprintf(case_names[i], sizeof case_names[i],
             "B%lld_Hq%lld_Hkv%lld_Sq%lld_Skv%lld_D%lld_Dv%lld%s%s%s%s%s%s%s",
             (long long)c->B, (long long)c->Hq, (long long)c->Hkv, (long long)c->Sq,
             (long long)c->Skv, (long long)c->D, (long long)c->Dv, mask_name(c),
             c->causal ? "_causal" : "", c->kv_lens ? "_kvlens" : "",
             c->weights ? "_weights" : "", c->lse ? "_lse" : "", c->scale ? "_scale" : "",
             layouts[c->layout]);
    tests[NFIXED + i] = (struct CMUnitTest){case_names[i], random_case, NULL, NULL, (void *)c};
    variants[i] = (opt_variant){c, (int)(i % 6)};
    snprintf(variant_names[i], sizeof variant_names[i], "%s_%s", case_names[i],
             opt_set_names[i % 6]);
    tests[NFIXED + NCASES + NOCASES + i] =
        (struct CMUnitTest){variant_names[i], random_case_options, NULL, NULL, &variants[i]};
  }

  char devs[16][64];
  const int ndev = tu_devices("sdpa", devs, 16);
  if (ndev == 0) {
    printf("no device to run on\n");
    return failed ? 1 : 77;
  }
  for (int d = 0; d < ndev; d++) {
    char group[96];
    memcpy(g_dev, devs[d], sizeof g_dev);
    snprintf(group, sizeof group, "sdpa on %.63s", g_dev);
    failed += _cmocka_run_group_tests(group, tests, NFIXED + 2 * NCASES + NOCASES, open_device,
                                      close_device);
  }
  return failed ? 1 : 0;
}
