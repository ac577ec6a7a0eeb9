/* The multi-head attention graph and its KV cache, on every device: the
 * graph against the stages composed by hand in double (tu_linear_double +
 * tu_sdpa_double) for self and cross attention, GQA/MQA, bias on and off,
 * packed in_proj and causal; KV-cache decoding (token by token and in
 * chunks) against one causal pass; capacity overflow; bad descriptors and
 * run arguments refused with the field named; profiling. */
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

static attn_tensor *upload(attn_context *ctx, int ndim, const int64_t *shape, const float *h) {
  attn_tensor *t = NULL;
  assert_int_equal(attn_tensor_create(ctx, ndim, shape, &t), ATTN_OK);
  if (h) assert_int_equal(attn_tensor_write(t, h, (size_t)attn_tensor_numel(t)), ATTN_OK);
  return t;
}

static attn_tensor *upload3(attn_context *ctx, int64_t a, int64_t b, int64_t c, const float *h) {
  const int64_t s[3] = {a, b, c};
  return upload(ctx, 3, s, h);
}

/* An output tensor filled with NaN, so elements never written show. */
static attn_tensor *nan_out(attn_context *ctx, int64_t B, int64_t S, int64_t E) {
  size_t n = (size_t)(B * S * E);
  float *h = malloc(n * sizeof *h);
  tu_fill_nan(h, n);
  attn_tensor *t = upload3(ctx, B, S, E, h);
  free(h);
  return t;
}

static float *download(const attn_tensor *t) {
  size_t n = (size_t)attn_tensor_numel(t);
  float *h = malloc(n * sizeof *h);
  assert_int_equal(attn_tensor_read(t, h, n), ATTN_OK);
  return h;
}

/* ---- the model: host weights and their device tensors ------------------------- */

typedef struct model {
  int64_t E, Ekv, H, Hkv, D;
  bool bias, packed;
  float *w[4], *b[4]; /* q, k, v, o on the host */
  attn_tensor *tw[4], *tb[4], *in_proj, *in_bias;
} model;

static void model_init(model *m, attn_context *ctx, int64_t E, int64_t Ekv, int64_t H,
                       int64_t Hkv, int64_t D, bool bias, bool packed, uint64_t seed) {
  memset(m, 0, sizeof *m);
  m->E = E, m->Ekv = Ekv, m->H = H, m->Hkv = Hkv, m->D = D, m->bias = bias, m->packed = packed;
  uint64_t rng = seed;
  const int64_t rows[4] = {H * D, Hkv * D, Hkv * D, E}, cols[4] = {E, Ekv, Ekv, H * D};
  for (int i = 0; i < 4; i++) {
    m->w[i] = tu_alloc_uniform((size_t)(rows[i] * cols[i]), &rng, -0.5f, 0.5f);
    m->b[i] = bias ? tu_alloc_uniform((size_t)rows[i], &rng, -0.5f, 0.5f) : NULL;
  }
  if (packed) { /* rows q, k, v stacked, as nn.MultiheadAttention */
    const int64_t R = (H + 2 * Hkv) * D;
    float *pw = malloc((size_t)(R * E) * sizeof *pw), *pb = malloc((size_t)R * sizeof *pb);
    int64_t r = 0;
    for (int i = 0; i < 3; i++) {
      memcpy(pw + r * E, m->w[i], (size_t)(rows[i] * E) * sizeof *pw);
      if (bias) memcpy(pb + r, m->b[i], (size_t)rows[i] * sizeof *pb);
      r += rows[i];
    }
    const int64_t ps[2] = {R, E}, bs[1] = {R};
    m->in_proj = upload(ctx, 2, ps, pw);
    if (bias) m->in_bias = upload(ctx, 1, bs, pb);
    free(pw);
    free(pb);
  }
  for (int i = 0; i < 4; i++) {
    if (packed && i < 3) continue;
    const int64_t ws[2] = {rows[i], cols[i]}, bs[1] = {rows[i]};
    m->tw[i] = upload(ctx, 2, ws, m->w[i]);
    if (bias) m->tb[i] = upload(ctx, 1, bs, m->b[i]);
  }
}

static attn_mha_weights model_weights(const model *m) {
  attn_mha_weights w;
  memset(&w, 0, sizeof w);
  w.wq = m->tw[0], w.wk = m->tw[1], w.wv = m->tw[2], w.wo = m->tw[3];
  w.bq = m->tb[0], w.bk = m->tb[1], w.bv = m->tb[2], w.bo = m->tb[3];
  w.in_proj = m->in_proj, w.in_bias = m->in_bias;
  return w;
}

static void model_free(model *m) {
  for (int i = 0; i < 4; i++) {
    free(m->w[i]);
    free(m->b[i]);
    attn_tensor_free(m->tw[i]);
    attn_tensor_free(m->tb[i]);
  }
  attn_tensor_free(m->in_proj);
  attn_tensor_free(m->in_bias);
}

static float *to_float(const double *d, size_t n) {
  float *f = malloc(n * sizeof *f);
  for (size_t i = 0; i < n; i++) f[i] = (float)d[i];
  return f;
}

/* [B, S, H*D] <-> [B, H, S, D] on the host. */
static float *split_heads(const float *x, int64_t B, int64_t S, int64_t H, int64_t D) {
  float *y = malloc((size_t)(B * S * H * D) * sizeof *y);
  for (int64_t b = 0; b < B; b++)
    for (int64_t s = 0; s < S; s++)
      for (int64_t h = 0; h < H; h++)
        for (int64_t d = 0; d < D; d++)
          y[((b * H + h) * S + s) * D + d] = x[((b * S + s) * H + h) * D + d];
  return y;
}

/* The stages composed by hand in double: want [B, S, E]. kvx NULL = self. */
static void reference(const model *m, const float *x, int64_t B, int64_t S, const float *kvx,
                      int64_t Skv, bool causal, double *want) {
  const int64_t HqD = m->H * m->D, HkvD = m->Hkv * m->D;
  if (!kvx) kvx = x, Skv = S;
  double *q = malloc((size_t)(B * S * HqD) * sizeof *q);
  double *k = malloc((size_t)(B * Skv * HkvD) * sizeof *k);
  double *v = malloc((size_t)(B * Skv * HkvD) * sizeof *v);
  tu_linear_double(x, B * S, m->E, m->w[0], m->b[0], HqD, q);
  tu_linear_double(kvx, B * Skv, m->Ekv, m->w[1], m->b[1], HkvD, k);
  tu_linear_double(kvx, B * Skv, m->Ekv, m->w[2], m->b[2], HkvD, v);
  float *qf = to_float(q, (size_t)(B * S * HqD)), *kf = to_float(k, (size_t)(B * Skv * HkvD)),
        *vf = to_float(v, (size_t)(B * Skv * HkvD));
  float *qh = split_heads(qf, B, S, m->H, m->D), *kh = split_heads(kf, B, Skv, m->Hkv, m->D),
        *vh = split_heads(vf, B, Skv, m->Hkv, m->D);
  tu_sdpa_problem p = {.B = B, .Hq = m->H, .Hkv = m->Hkv, .Sq = S, .Skv = Skv, .D = m->D,
                       .Dv = m->D, .q = qh, .k = kh, .v = vh, .causal = causal,
                       .scale = 1.0 / sqrt((double)m->D)};
  double *o = malloc((size_t)(B * S * HqD) * sizeof *o);
  tu_sdpa_double(&p, o, NULL, NULL);
  float *of = malloc((size_t)(B * S * HqD) * sizeof *of); /* merge heads */
  for (int64_t b = 0; b < B; b++)
    for (int64_t h = 0; h < m->H; h++)
      for (int64_t s = 0; s < S; s++)
        for (int64_t d = 0; d < m->D; d++)
          of[((b * S + s) * m->H + h) * m->D + d] = (float)o[((b * m->H + h) * S + s) * m->D + d];
  tu_linear_double(of, B * S, HqD, m->w[3], m->b[3], m->E, want);
  free(q), free(k), free(v), free(qf), free(kf), free(vf), free(qh), free(kh), free(vh);
  free(o), free(of);
}

/* ---- graph vs hand-composed stages ---------------------------------------------- */

typedef struct mha_case {
  const char *name;
  int64_t B, S, Skv, E, Ekv, H, Hkv, D; /* Skv 0 = self attention */
  int64_t head_dim;                     /* as given to the desc (0 = E/H) */
  bool bias, causal, packed;
} mha_case;

static const mha_case cases[] = {
    {"self bias", 2, 5, 0, 16, 16, 4, 4, 4, 0, true, false, false},
    {"self causal no bias", 2, 6, 0, 16, 16, 2, 2, 8, 0, false, true, false},
    {"cross causal bias", 2, 3, 7, 16, 12, 2, 2, 8, 0, true, true, false},
    {"cross longer q", 1, 9, 4, 8, 20, 2, 1, 4, 0, false, true, false},
    {"gqa head_dim 6", 2, 5, 0, 16, 16, 4, 2, 6, 6, true, false, false},
    {"mqa packed causal", 2, 7, 0, 12, 12, 4, 1, 3, 0, true, true, true},
    {"packed no bias", 3, 4, 0, 8, 8, 2, 2, 4, 0, false, false, true},
    {"one token one head", 1, 1, 0, 5, 5, 1, 1, 5, 0, true, true, false},
};

static void run_and_check(attn_context *ctx, attn_mha *g, const model *m, const mha_case *c,
                          int64_t B, int64_t S, int64_t Skv, uint64_t *rng) {
  float *x = tu_alloc_uniform((size_t)(B * S * c->E), rng, -1.0f, 1.0f);
  float *kvx = c->Skv ? tu_alloc_uniform((size_t)(B * Skv * c->Ekv), rng, -1.0f, 1.0f) : NULL;
  attn_tensor *tx = upload3(ctx, B, S, c->E, x);
  attn_tensor *tkv = kvx ? upload3(ctx, B, Skv, c->Ekv, kvx) : NULL;
  attn_tensor *tout = nan_out(ctx, B, S, c->E);
  attn_status s = attn_mha_run(g, tx, tkv, tout);
  if (s) fail_msg("%s: attn_mha_run: %s", c->name, attn_last_error());
  float *got = download(tout);
  double *want = malloc((size_t)(B * S * c->E) * sizeof *want);
  reference(m, x, B, S, kvx, Skv, c->causal, want);
  char what[128];
  snprintf(what, sizeof what, "%s on %s (B=%lld S=%lld)", c->name, tu_device, (long long)B,
           (long long)S);
  assert_true(tu_check_close(what, got, want, (size_t)(B * S * c->E), NULL));
  free(x), free(kvx), free(got), free(want);
  attn_tensor_free(tx), attn_tensor_free(tkv), attn_tensor_free(tout);
}

static void test_graph_vs_stages(void **state) {
  attn_context *ctx = *state;
  for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
    const mha_case *c = &cases[i];
    model m;
    model_init(&m, ctx, c->E, c->Ekv, c->H, c->Hkv, c->D, c->bias, c->packed, 1000 + i);
    attn_mha_desc d = {.struct_size = sizeof(attn_mha_desc), .d_model = c->E, .d_kv = c->Skv ? c->Ekv : 0, .n_heads = c->H,
                       .n_kv_heads = c->Hkv, .head_dim = c->head_dim, .bias = c->bias,
                       .causal = c->causal, .max_batch = c->B + 1, .max_seq = c->S + 2,
                       .max_kv_seq = c->Skv ? c->Skv + 3 : 0};
    attn_mha_weights w = model_weights(&m);
    attn_mha *g = NULL;
    if (attn_mha_create(ctx, &d, &w, &g)) fail_msg("%s: %s", c->name, attn_last_error());
    uint64_t rng = 7 + i;
    const int64_t Skv = c->Skv ? c->Skv : c->S;
    /* The plan's full size, the run's size, and a smaller one: the same
     * buffers serve every size up to the plan. */
    run_and_check(ctx, g, &m, c, c->B + 1, c->S + 2, c->Skv ? c->Skv + 3 : 0, &rng);
    run_and_check(ctx, g, &m, c, c->B, c->S, Skv, &rng);
    if (c->S > 1) run_and_check(ctx, g, &m, c, 1, c->S - 1, Skv > 1 ? Skv - 1 : 1, &rng);
    attn_mha_free(g);
    model_free(&m);
  }
}

/* ---- KV cache --------------------------------------------------------------------- */

enum { KB = 2, KT = 7, KE = 16, KH = 4, KHKV = 2, KD = 4 };

/* Rows [t0, t0+n) of every batch item of a [B, T, E] host array. */
static float *rows(const float *x, int64_t B, int64_t T, int64_t E, int64_t t0, int64_t n) {
  float *y = malloc((size_t)(B * n * E) * sizeof *y);
  for (int64_t b = 0; b < B; b++)
    memcpy(y + b * n * E, x + (b * T + t0) * E, (size_t)(n * E) * sizeof *y);
  return y;
}

static double *rows_d(const double *x, int64_t B, int64_t T, int64_t E, int64_t t0, int64_t n) {
  double *y = malloc((size_t)(B * n * E) * sizeof *y);
  for (int64_t b = 0; b < B; b++)
    memcpy(y + b * n * E, x + (b * T + t0) * E, (size_t)(n * E) * sizeof *y);
  return y;
}

/* Run x's rows [t0, t0+n) through the cache and compare with the rows of the
 * one-pass reference. */
static attn_status cached_step(attn_context *ctx, attn_mha *g, attn_kv_cache *c, const float *x,
                               const double *want, int64_t t0, int64_t n) {
  float *xs = rows(x, KB, KT, KE, t0, n);
  attn_tensor *tx = upload3(ctx, KB, n, KE, xs), *to = nan_out(ctx, KB, n, KE);
  attn_status s = attn_mha_run_cached(g, c, tx, to);
  if (s == ATTN_OK) {
    float *got = download(to);
    double *w = rows_d(want, KB, KT, KE, t0, n);
    char what[96];
    snprintf(what, sizeof what, "cached rows %lld..%lld on %s", (long long)t0,
             (long long)(t0 + n - 1), tu_device);
    assert_true(tu_check_close(what, got, w, (size_t)(KB * n * KE), NULL));
    free(got), free(w);
  }
  free(xs);
  attn_tensor_free(tx), attn_tensor_free(to);
  return s;
}

static void test_kv_cache(void **state) {
  attn_context *ctx = *state;
  model m;
  model_init(&m, ctx, KE, KE, KH, KHKV, KD, true, false, 99);
  attn_mha_desc d = {.struct_size = sizeof(attn_mha_desc), .d_model = KE, .n_heads = KH, .n_kv_heads = KHKV, .bias = true,
                     .causal = true, .max_batch = KB, .max_seq = KT};
  attn_mha_weights w = model_weights(&m);
  attn_mha *g = NULL;
  assert_int_equal(attn_mha_create(ctx, &d, &w, &g), ATTN_OK);
  uint64_t rng = 5;
  float *x = tu_alloc_uniform(KB * KT * KE, &rng, -1.0f, 1.0f);
  double *want = malloc(KB * KT * KE * sizeof *want);
  reference(&m, x, KB, KT, NULL, 0, true, want);

  /* One causal pass through the graph matches the composition... */
  attn_tensor *tx = upload3(ctx, KB, KT, KE, x), *to = nan_out(ctx, KB, KT, KE);
  assert_int_equal(attn_mha_run(g, tx, NULL, to), ATTN_OK);
  float *full = download(to);
  assert_true(tu_check_close("one causal pass", full, want, KB * KT * KE, NULL));
  free(full);
  attn_tensor_free(tx), attn_tensor_free(to);

  /* ...and so does decoding token by token, then in chunks. */
  attn_kv_cache *c = NULL;
  assert_int_equal(attn_kv_cache_create(g, KB, KT, &c), ATTN_OK);
  assert_int_equal(attn_kv_cache_capacity(c), KT);
  for (int64_t t = 0; t < KT; t++) {
    assert_int_equal(cached_step(ctx, g, c, x, want, t, 1), ATTN_OK);
    assert_int_equal(attn_kv_cache_length(c), t + 1);
  }
  /* Full: one more token is refused and changes nothing. */
  tu_assert_fails(cached_step(ctx, g, c, x, want, 0, 1), ATTN_ERR_CAPACITY, "capacity 7");
  assert_int_equal(attn_kv_cache_length(c), KT);

  attn_kv_cache_reset(c);
  assert_int_equal(attn_kv_cache_length(c), 0);
  const int64_t chunks[3] = {3, 1, 3};
  for (int64_t i = 0, t = 0; i < 3; t += chunks[i], i++)
    assert_int_equal(cached_step(ctx, g, c, x, want, t, chunks[i]), ATTN_OK);
  attn_kv_cache_free(c);

  /* Overflow in the middle: refused, length kept, and the next run that
   * fits continues exactly where the cache was. */
  assert_int_equal(attn_kv_cache_create(g, KB, 4, &c), ATTN_OK);
  assert_int_equal(cached_step(ctx, g, c, x, want, 0, 3), ATTN_OK);
  tu_assert_fails(cached_step(ctx, g, c, x, want, 3, 2), ATTN_ERR_CAPACITY, "x:");
  assert_int_equal(attn_kv_cache_length(c), 3);
  assert_int_equal(cached_step(ctx, g, c, x, want, 3, 1), ATTN_OK);
  assert_int_equal(attn_kv_cache_length(c), 4);

  /* A second cache on the same graph is independent; the graph frees it. */
  attn_kv_cache *c2 = NULL;
  assert_int_equal(attn_kv_cache_create(g, KB, KT, &c2), ATTN_OK);
  assert_int_equal(cached_step(ctx, g, c2, x, want, 0, 2), ATTN_OK);
  assert_int_equal(attn_kv_cache_length(c), 4);
  attn_kv_cache_free(c);

  free(x), free(want);
  attn_mha_free(g); /* frees c2 */
  model_free(&m);
}

/* ---- refused descriptors and arguments --------------------------------------------- */

static void test_bad_descriptors(void **state) {
  attn_context *ctx = *state;
  model m, mp;
  model_init(&m, ctx, 16, 12, 4, 2, 4, true, false, 3);
  model_init(&mp, ctx, 16, 16, 4, 2, 4, true, true, 4);
  const attn_mha_desc good = {.struct_size = sizeof(attn_mha_desc), .d_model = 16, .d_kv = 12, .n_heads = 4, .n_kv_heads = 2,
                              .bias = true, .max_batch = 2, .max_seq = 8};
  attn_mha_weights gw = model_weights(&m);
  attn_mha *g = NULL;
  assert_int_equal(attn_mha_create(ctx, &good, &gw, &g), ATTN_OK); /* the baseline is valid */
  attn_mha_free(g);

  struct {
    attn_status status;
    const char *what;
    attn_mha_desc d;
    attn_mha_weights w;
  } t[32];
  int n = 0;
#define CASE(st_, what_, ...)                                                      \
  do {                                                                             \
    t[n].status = (st_), t[n].what = (what_), t[n].d = good, t[n].w = gw;          \
    attn_mha_desc *D = &t[n].d;                                                    \
    attn_mha_weights *W = &t[n].w;                                                 \
    (void)D, (void)W;                                                              \
    __VA_ARGS__;                                                                   \
    n++;                                                                           \
  } while (0)
  CASE(ATTN_ERR_INVALID_ARG, "desc.d_model", D->d_model = 0);
  CASE(ATTN_ERR_INVALID_ARG, "desc.d_kv", D->d_kv = -1);
  CASE(ATTN_ERR_INVALID_ARG, "desc.n_heads", D->n_heads = 0);
  CASE(ATTN_ERR_INVALID_ARG, "desc.n_kv_heads", D->n_kv_heads = 3);
  CASE(ATTN_ERR_INVALID_ARG, "desc.n_kv_heads", D->n_kv_heads = -2);
  CASE(ATTN_ERR_INVALID_ARG, "desc.head_dim", D->n_heads = 3, D->n_kv_heads = 1);
  CASE(ATTN_ERR_INVALID_ARG, "desc.max_batch", D->max_batch = 0);
  CASE(ATTN_ERR_INVALID_ARG, "desc.max_seq", D->max_seq = -1);
  CASE(ATTN_ERR_INVALID_ARG, "desc.max_kv_seq", D->max_kv_seq = -5);
  CASE(ATTN_ERR_OVERFLOW, "desc.head_dim", D->head_dim = INT64_MAX / 2);
  CASE(ATTN_ERR_INVALID_ARG, "wq: NULL", W->wq = NULL);
  CASE(ATTN_ERR_INVALID_ARG, "wo: NULL", W->wo = NULL);
  CASE(ATTN_ERR_SHAPE, "wk: shape [8,12] != [8,16]", D->d_kv = 16);
  CASE(ATTN_ERR_SHAPE, "wq: shape [16,16] != [8,16]", D->n_heads = 2, D->n_kv_heads = 1,
       D->head_dim = 4);
  CASE(ATTN_ERR_SHAPE, "wo: shape [8,12] != [16,16]", W->wo = m.tw[1]);
  CASE(ATTN_ERR_SHAPE, "wv: rank 1 != 2", W->wv = m.tb[1]);
  CASE(ATTN_ERR_SHAPE, "bk: shape [16] != [8]", W->bk = m.tb[0]);
  CASE(ATTN_ERR_INVALID_ARG, "bq: NULL but desc.bias is true", W->bq = NULL);
  CASE(ATTN_ERR_INVALID_ARG, "bo: given but desc.bias is false", D->bias = false, W->bq = NULL,
       W->bk = NULL, W->bv = NULL);
  CASE(ATTN_ERR_INVALID_ARG, "wq: given together with in_proj", W->in_proj = mp.in_proj);
  CASE(ATTN_ERR_INVALID_ARG, "in_proj: a packed in-projection needs d_kv", W->in_proj = mp.in_proj,
       W->wq = W->wk = W->wv = NULL, W->bq = W->bk = W->bv = NULL, W->in_bias = mp.in_bias);
  CASE(ATTN_ERR_INVALID_ARG, "in_bias: given without in_proj", W->in_bias = mp.in_bias);
  CASE(ATTN_ERR_SHAPE, "in_proj: shape", D->d_kv = 0, D->n_kv_heads = 4, W->in_proj = mp.in_proj,
       W->wq = W->wk = W->wv = NULL, W->bq = W->bk = W->bv = NULL, W->in_bias = mp.in_bias);
  CASE(ATTN_ERR_INVALID_ARG, "in_bias: NULL but desc.bias is true", D->d_kv = 0,
       W->in_proj = mp.in_proj, W->wq = W->wk = W->wv = NULL, W->bq = W->bk = W->bv = NULL);
#undef CASE
  for (int i = 0; i < n; i++) {
    g = (attn_mha *)(uintptr_t)1;
    attn_status s = attn_mha_create(ctx, &t[i].d, &t[i].w, &g);
    if (s != t[i].status || !strstr(attn_last_error(), t[i].what) ||
        !strstr(attn_last_error(), "attn_mha_create: "))
      fail_msg("case %d: got %d \"%s\", want %d with \"%s\"", i, (int)s, attn_last_error(),
               (int)t[i].status, t[i].what);
    assert_null(g);
  }
  tu_assert_fails(attn_mha_create(NULL, &good, &gw, &g), ATTN_ERR_INVALID_ARG, "ctx: NULL");
  tu_assert_fails(attn_mha_create(ctx, NULL, &gw, &g), ATTN_ERR_INVALID_ARG, "desc: NULL");
  tu_assert_fails(attn_mha_create(ctx, &good, NULL, &g), ATTN_ERR_INVALID_ARG, "w: NULL");
  tu_assert_fails(attn_mha_create(ctx, &good, &gw, NULL), ATTN_ERR_INVALID_ARG, "graph: NULL");

  /* Weights from another context. */
  attn_context *other = NULL;
  assert_int_equal(attn_open(tu_device, &other), ATTN_OK);
  const int64_t ws[2] = {16, 16};
  attn_tensor *foreign = upload(other, 2, ws, NULL);
  attn_mha_weights fw = gw;
  fw.wo = foreign;
  tu_assert_fails(attn_mha_create(ctx, &good, &fw, &g), ATTN_ERR_INVALID_ARG,
                  "wo: tensor belongs to another context");
  attn_close(other);
  model_free(&m);
  model_free(&mp);
}

/* A graph freed before its caches (issue 13, item 9): each cache stays
 * valid and frees cleanly (ASan/LSan in the hardening run check that this is
 * no use after free and leaks nothing); the freed graph refuses use; a
 * graph left with its cache to attn_close is freed with it. */
static void test_graph_freed_before_cache(void **state) {
  attn_context *ctx = *state;
  model m;
  model_init(&m, ctx, 8, 8, 2, 2, 4, false, true, 13);
  attn_mha_desc d = ATTN_MHA_DESC_INIT;
  d.d_model = 8, d.n_heads = 2, d.causal = true, d.max_batch = 1, d.max_seq = 4;
  attn_mha_weights w = model_weights(&m);
  attn_mha *g = NULL;
  attn_kv_cache *c1 = NULL, *c2 = NULL;
  assert_int_equal(attn_mha_create(ctx, &d, &w, &g), ATTN_OK);
  assert_int_equal(attn_kv_cache_create(g, 1, 4, &c1), ATTN_OK);
  assert_int_equal(attn_kv_cache_create(g, 1, 4, &c2), ATTN_OK);
  attn_tensor *x = upload3(ctx, 1, 2, 8, NULL), *out = upload3(ctx, 1, 2, 8, NULL);
  float zero[16] = {0};
  assert_int_equal(attn_tensor_write(x, zero, 16), ATTN_OK);
  assert_int_equal(attn_mha_run_cached(g, c1, x, out), ATTN_OK);
  attn_mha_free(g);
  attn_mha_free(g); /* a second free of a graph its caches keep: a no-op */
  assert_int_equal(attn_kv_cache_length(c1), 2);
  assert_int_equal(attn_kv_cache_capacity(c2), 4);
  attn_kv_cache_reset(c1);
  assert_int_equal(attn_kv_cache_length(c1), 0);
  tu_assert_fails(attn_mha_run_cached(g, c1, x, out), ATTN_ERR_INVALID_ARG, "already freed");
  tu_assert_fails(attn_mha_run(g, x, NULL, out), ATTN_ERR_INVALID_ARG, "already freed");
  attn_kv_cache *c3 = NULL;
  tu_assert_fails(attn_kv_cache_create(g, 1, 4, &c3), ATTN_ERR_INVALID_ARG, "already freed");
  assert_null(c3);
  attn_kv_cache_free(c1);
  attn_kv_cache_free(c2); /* the last one frees the graph */
  /* Left to attn_close: the graph (freed or not) and its cache go with it. */
  assert_int_equal(attn_mha_create(ctx, &d, &w, &g), ATTN_OK);
  assert_int_equal(attn_kv_cache_create(g, 1, 4, &c1), ATTN_OK);
  attn_mha_free(g);
  attn_tensor_free(x);
  attn_tensor_free(out);
  model_free(&m);
}

static void test_bad_run_args(void **state) {
  attn_context *ctx = *state;
  model m, mc;
  model_init(&m, ctx, 8, 8, 2, 2, 4, false, false, 11);
  model_init(&mc, ctx, 8, 6, 2, 2, 4, false, false, 12);
  attn_mha_desc d = {.struct_size = sizeof(attn_mha_desc), .d_model = 8, .n_heads = 2, .max_batch = 2, .max_seq = 4};
  attn_mha_desc dc = {.struct_size = sizeof(attn_mha_desc), .d_model = 8, .d_kv = 6, .n_heads = 2, .max_batch = 2, .max_seq = 4};
  attn_mha_weights w = model_weights(&m), wc = model_weights(&mc);
  attn_mha *g = NULL, *gc = NULL;
  assert_int_equal(attn_mha_create(ctx, &d, &w, &g), ATTN_OK);
  assert_int_equal(attn_mha_create(ctx, &dc, &wc, &gc), ATTN_OK);

  attn_tensor *x = upload3(ctx, 2, 3, 8, NULL), *out = upload3(ctx, 2, 3, 8, NULL);
  attn_tensor *x_wide = upload3(ctx, 2, 3, 9, NULL), *x_b3 = upload3(ctx, 3, 3, 8, NULL),
              *x_s5 = upload3(ctx, 2, 5, 8, NULL), *kv6 = upload3(ctx, 2, 3, 6, NULL),
              *kv_b1 = upload3(ctx, 1, 3, 6, NULL), *out_small = upload3(ctx, 2, 2, 8, NULL);
  float zero[48] = {0};
  assert_int_equal(attn_tensor_write(x, zero, 48), ATTN_OK);
  assert_int_equal(attn_tensor_write(kv6, zero, 36), ATTN_OK);
  tu_assert_fails(attn_mha_run(NULL, x, NULL, out), ATTN_ERR_INVALID_ARG, "attn_mha_run: graph");
  tu_assert_fails(attn_mha_run(g, NULL, NULL, out), ATTN_ERR_INVALID_ARG, "x: NULL");
  tu_assert_fails(attn_mha_run(g, x, NULL, NULL), ATTN_ERR_INVALID_ARG, "out: NULL");
  tu_assert_fails(attn_mha_run(g, x_wide, NULL, out), ATTN_ERR_SHAPE, "x: shape");
  tu_assert_fails(attn_mha_run(g, x_b3, NULL, out), ATTN_ERR_SHAPE,
                  "x: batch 3 > the plan's max_batch 2");
  tu_assert_fails(attn_mha_run(g, x_s5, NULL, out), ATTN_ERR_SHAPE,
                  "x: seq 5 > the plan's max_seq 4");
  tu_assert_fails(attn_mha_run(g, x, NULL, out_small), ATTN_ERR_SHAPE, "out: shape");
  tu_assert_fails(attn_mha_run(g, x, NULL, x), ATTN_ERR_INVALID_ARG, "out: overlaps x");
  tu_assert_fails(attn_mha_run(g, x, NULL, (attn_tensor *)m.tw[3]), ATTN_ERR_SHAPE, "out: rank");
  tu_assert_fails(attn_mha_run(gc, x, NULL, out), ATTN_ERR_INVALID_ARG, "kv_x: NULL");
  tu_assert_fails(attn_mha_run(gc, x, kv_b1, out), ATTN_ERR_SHAPE, "kv_x: shape");
  tu_assert_fails(attn_mha_run(gc, x, x, out), ATTN_ERR_SHAPE, "kv_x: shape");
  tu_assert_fails(attn_mha_run(gc, x, kv6, kv6), ATTN_ERR_SHAPE, "out: shape");
  assert_int_equal(attn_mha_run(gc, x, kv6, out), ATTN_OK); /* and still usable */

  attn_kv_cache *c = NULL;
  tu_assert_fails(attn_kv_cache_create(NULL, 2, 4, &c), ATTN_ERR_INVALID_ARG, "graph: NULL");
  tu_assert_fails(attn_kv_cache_create(g, 2, 4, NULL), ATTN_ERR_INVALID_ARG, "cache: NULL");
  tu_assert_fails(attn_kv_cache_create(g, 3, 4, &c), ATTN_ERR_INVALID_ARG, "batch: 3");
  tu_assert_fails(attn_kv_cache_create(g, 2, 0, &c), ATTN_ERR_INVALID_ARG, "capacity: 0");
  tu_assert_fails(attn_kv_cache_create(g, 2, INT64_MAX / 4, &c), ATTN_ERR_OVERFLOW, "capacity");
  tu_assert_fails(attn_kv_cache_create(gc, 2, 4, &c), ATTN_ERR_INVALID_ARG, "d_kv 6 != d_model 8");
  assert_int_equal(attn_kv_cache_create(g, 1, 4, &c), ATTN_OK);
  tu_assert_fails(attn_mha_run_cached(g, NULL, x, out), ATTN_ERR_INVALID_ARG, "cache: NULL");
  tu_assert_fails(attn_mha_run_cached(gc, c, x, out), ATTN_ERR_INVALID_ARG,
                  "cache: bound to another graph");
  tu_assert_fails(attn_mha_run_cached(g, c, x, out), ATTN_ERR_SHAPE,
                  "x: batch 2 != the cache's batch 1");
  assert_int_equal(attn_kv_cache_length(c), 0);
  assert_int_equal(attn_kv_cache_length(NULL), 0);

  tu_assert_fails(attn_mha_set_profiling(NULL, true), ATTN_ERR_INVALID_ARG, "graph: NULL");
  attn_mha_profile p;
  tu_assert_fails(attn_mha_profile_get(g, NULL), ATTN_ERR_INVALID_ARG, "p: NULL");
  tu_assert_fails(attn_mha_profile_get(NULL, &p), ATTN_ERR_INVALID_ARG, "graph: NULL");
  /* Left alive on purpose: attn_close frees graphs, caches and tensors. */
  model_free(&m);
  model_free(&mc);
}

static void test_profiling(void **state) {
  attn_context *ctx = *state;
  model m;
  model_init(&m, ctx, 32, 32, 4, 4, 8, true, false, 21);
  attn_mha_desc d = {.struct_size = sizeof(attn_mha_desc), .d_model = 32, .n_heads = 4, .bias = true, .max_batch = 2, .max_seq = 16};
  attn_mha_weights w = model_weights(&m);
  attn_mha *g = NULL;
  assert_int_equal(attn_mha_create(ctx, &d, &w, &g), ATTN_OK);
  uint64_t rng = 3;
  float *x = tu_alloc_uniform(2 * 16 * 32, &rng, -1, 1);
  attn_tensor *tx = upload3(ctx, 2, 16, 32, x), *to = nan_out(ctx, 2, 16, 32);
  attn_mha_profile p;
  assert_int_equal(attn_mha_set_profiling(g, true), ATTN_OK);
  assert_int_equal(attn_mha_run(g, tx, NULL, to), ATTN_OK);
  assert_int_equal(attn_mha_profile_get(g, &p), ATTN_OK);
  /* The nodes in the order they ran, each timed. */
  const char *names[5] = {"project_q", "project_k", "project_v", "sdpa", "project_out"};
  assert_int_equal(p.n, 5);
  for (int i = 0; i < 5; i++) {
    assert_string_equal(p.node[i].name, names[i]);
    assert_true(p.node[i].ms > 0);
    assert_true(attn_mha_profile_ms(&p, names[i]) == p.node[i].ms);
  }
  assert_true(attn_mha_profile_ms(&p, "rope") == -1);
  assert_true(attn_mha_profile_ms(NULL, "sdpa") == -1);
  /* Profiled results are the same results. */
  float *got = download(to);
  double *want = malloc(2 * 16 * 32 * sizeof *want);
  reference(&m, x, 2, 16, NULL, 0, false, want);
  assert_true(tu_check_close("profiled run", got, want, 2 * 16 * 32, NULL));
  assert_int_equal(attn_mha_set_profiling(g, false), ATTN_OK);
  assert_int_equal(attn_mha_run(g, tx, NULL, to), ATTN_OK);
  assert_int_equal(attn_mha_profile_get(g, &p), ATTN_OK);
  assert_int_equal(p.n, 5);
  for (int i = 0; i < 5; i++) assert_true(p.node[i].ms == 0);
  free(x), free(got), free(want);
  attn_tensor_free(tx), attn_tensor_free(to);
  attn_mha_free(g);
  model_free(&m);
}

/* x and out as strided views inside wider rows: the linear nodes honour the
 * strides, and out's neighbouring columns stay as they were. */
static void test_strided_io(void **state) {
  attn_context *ctx = *state;
  enum { B = 2, S = 5, E = 8, XW = E + 3, OW = E + 2 };
  model m;
  model_init(&m, ctx, E, E, 2, 1, 4, true, false, 31);
  attn_mha_desc d = {.struct_size = sizeof(attn_mha_desc), .d_model = E, .n_heads = 2, .n_kv_heads = 1, .bias = true, .causal = true,
                     .max_batch = B, .max_seq = S};
  attn_mha_weights w = model_weights(&m);
  attn_mha *g = NULL;
  assert_int_equal(attn_mha_create(ctx, &d, &w, &g), ATTN_OK);
  uint64_t rng = 8;
  float *xw = tu_alloc_uniform(B * S * XW, &rng, -1, 1), x[B * S * E];
  for (int r = 0; r < B * S; r++) memcpy(x + r * E, xw + r * XW + 1, E * sizeof *x);
  float ow[B * S * OW];
  for (int i = 0; i < B * S * OW; i++) ow[i] = 7.0f;
  attn_tensor *txw = upload3(ctx, B, S, XW, xw), *tow = upload3(ctx, B, S, OW, ow);
  const int64_t sh[3] = {B, S, E}, xst[3] = {S * XW, XW, 1}, ost[3] = {S * OW, OW, 1};
  attn_tensor *tx = NULL, *to = NULL;
  assert_int_equal(attn_tensor_view(txw, 1, 3, sh, xst, &tx), ATTN_OK);
  assert_int_equal(attn_tensor_view(tow, 2, 3, sh, ost, &to), ATTN_OK);
  assert_int_equal(attn_mha_run(g, tx, NULL, to), ATTN_OK);
  float got[B * S * E], all[B * S * OW];
  double want[B * S * E];
  assert_int_equal(attn_tensor_read(to, got, B * S * E), ATTN_OK);
  reference(&m, x, B, S, NULL, 0, true, want);
  assert_true(tu_check_close("strided x and out", got, want, B * S * E, NULL));
  assert_int_equal(attn_tensor_read(tow, all, B * S * OW), ATTN_OK);
  for (int r = 0; r < B * S; r++)
    assert_true(all[r * OW] == 7.0f && all[r * OW + 1] == 7.0f);
  free(xw);
  attn_tensor_free(tx), attn_tensor_free(to), attn_tensor_free(txw), attn_tensor_free(tow);
  attn_mha_free(g);
  model_free(&m);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test_setup_teardown(test_graph_vs_stages, tu_open_device, tu_close_device),
      cmocka_unit_test_setup_teardown(test_kv_cache, tu_open_device, tu_close_device),
      cmocka_unit_test_setup_teardown(test_bad_descriptors, tu_open_device, tu_close_device),
      cmocka_unit_test_setup_teardown(test_bad_run_args, tu_open_device, tu_close_device),
      cmocka_unit_test_setup_teardown(test_graph_freed_before_cache, tu_open_device,
                                      tu_close_device),
      cmocka_unit_test_setup_teardown(test_profiling, tu_open_device, tu_close_device),
      cmocka_unit_test_setup_teardown(test_strided_io, tu_open_device, tu_close_device),
  };
  return tu_run_per_device("mha", tests);
}
