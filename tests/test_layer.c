/* The attention layers of real models through the MHA graph (0.4), on every
 * device, against a whole layer computed in double in this file (written
 * from the formulas of tests/data/layers/README.md, sharing no code with the
 * library): projections with a bias on any subset, packed qkv, QK-norm (w
 * and 1 + w), RoPE (half split, interleaved, partial, linear scaling) at
 * per-token positions, GQA, scale, causal, window, softcap, ALiBi, sinks,
 * key padding (left and right), bf16 weights, GPT-2's Conv1D [in, out]
 * weights (desc.transposed, packed or some projections only), BLOOM's qkv
 * rows interleaved per head (desc.qkv_per_head). Then the KV cache with a
 * length per row: rows advancing by different numbers of tokens, padding
 * tokens kept hidden, truncation and the reset of one row, each against the
 * double layer over the row's whole sequence (a full pass), and the
 * argument errors of the new calls. */
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

/* ---- a layer: its description, host weights and device tensors ---------------------- */

typedef struct layer_spec {
  const char *name;
  int64_t E, H, Hkv, D;
  unsigned biases; /* ATTN_PROJ_* */
  bool packed, causal;
  int norm;        /* 0 none, 1 w, 2 1 + w */
  int rope;        /* 0 none, 1 default, 2 linear x2 */
  bool inter;
  int64_t rot;     /* 0 = D */
  double theta;
  bool has_scale;
  double scale;
  int64_t window;  /* > 0: sees itself and window-1 keys before (transformers' sliding_window) */
  double softcap;
  bool alibi, sinks;
  attn_dtype wt;   /* the weights' storage type */
  unsigned transposed; /* ATTN_PROJ_* stored [in, out] (GPT-2's Conv1D) */
  bool per_head;   /* packed rows interleaved per head [h][q|k|v][D] (BLOOM) */
} layer_spec;

typedef struct layer {
  const layer_spec *sp;
  float *w[4], *b[4]; /* q, k, v, o on the host, as stored (rounded to wt) */
  float *qn, *kn;     /* norm weights [D] */
  float alibi[16], sinks[16];
  attn_tensor *tw[4], *tb[4], *in_proj, *in_bias, *tqn, *tkn;
  attn_rope_config rc;
  attn_mha *g;
} layer;

static attn_tensor *upload(attn_context *ctx, attn_dtype t, int ndim, const int64_t *shape,
                           float *h) {
  attn_tensor *x = NULL;
  assert_int_equal(attn_tensor_create_typed(ctx, t, ndim, shape, &x), ATTN_OK);
  const size_t n = (size_t)attn_tensor_numel(x);
  assert_int_equal(attn_tensor_write(x, h, n), ATTN_OK);
  assert_int_equal(attn_tensor_read(x, h, n), ATTN_OK); /* the host copy as stored */
  return x;
}

/* A weight h [rows, cols] ([out, in]) uploaded as is, or (tr) as the
 * [cols, rows] matrix a Conv1D stores; h gets the stored values back. */
static attn_tensor *upload_weight(attn_context *ctx, attn_dtype t, int64_t rows, int64_t cols,
                                  float *h, bool tr) {
  if (!tr) {
    const int64_t ws[2] = {rows, cols};
    return upload(ctx, t, 2, ws, h);
  }
  const int64_t ws[2] = {cols, rows};
  float *ht = malloc((size_t)(rows * cols) * sizeof *ht);
  for (int64_t r = 0; r < rows; r++)
    for (int64_t c = 0; c < cols; c++) ht[c * rows + r] = h[r * cols + c];
  attn_tensor *x = upload(ctx, t, 2, ws, ht);
  for (int64_t r = 0; r < rows; r++)
    for (int64_t c = 0; c < cols; c++) h[r * cols + c] = ht[c * rows + r];
  free(ht);
  return x;
}

static float *download(const attn_tensor *t) {
  size_t n = (size_t)attn_tensor_numel(t);
  float *h = malloc(n * sizeof *h);
  assert_int_equal(attn_tensor_read(t, h, n), ATTN_OK);
  return h;
}

static void layer_init(layer *L, attn_context *ctx, const layer_spec *sp, int64_t max_b,
                       int64_t max_s, uint64_t seed) {
  memset(L, 0, sizeof *L);
  L->sp = sp;
  uint64_t rng = seed;
  const int64_t E = sp->E, D = sp->D, rows[4] = {sp->H * D, sp->Hkv * D, sp->Hkv * D, E},
                cols[4] = {E, E, E, sp->H * D};
  const float gain[4] = {1.6f, 1.6f, 1.0f, 1.0f};
  for (int i = 0; i < 4; i++) {
    const float a = gain[i] * sqrtf(3.0f / (float)cols[i]);
    L->w[i] = tu_alloc_uniform((size_t)(rows[i] * cols[i]), &rng, -a, a);
    L->b[i] = (sp->biases >> i) & 1u ? tu_alloc_uniform((size_t)rows[i], &rng, -0.5f, 0.5f) : NULL;
  }
  if (sp->packed) {
    const int64_t R = (sp->H + 2 * sp->Hkv) * D, bs[1] = {R};
    float *pw = malloc((size_t)(R * E) * sizeof *pw), *pb = malloc((size_t)R * sizeof *pb);
    /* packed row p holds row src_r[p] of projection src_i[p]: blocks q | k | v,
     * or per head [h][q | k | v][D] */
    int *src_i = malloc((size_t)R * sizeof *src_i);
    int64_t *src_r = malloc((size_t)R * sizeof *src_r);
    for (int64_t p = 0; p < R; p++) {
      if (sp->per_head) {
        const int64_t h = p / (3 * D), c = p / D % 3;
        src_i[p] = (int)c, src_r[p] = h * D + p % D;
      } else {
        src_i[p] = p < rows[0] ? 0 : p < rows[0] + rows[1] ? 1 : 2;
        src_r[p] = p - (src_i[p] == 0 ? 0 : src_i[p] == 1 ? rows[0] : rows[0] + rows[1]);
      }
    }
    for (int64_t p = 0; p < R; p++) {
      memcpy(pw + p * E, L->w[src_i[p]] + src_r[p] * E, (size_t)E * sizeof *pw);
      if (L->b[src_i[p]]) pb[p] = L->b[src_i[p]][src_r[p]];
    }
    L->in_proj = upload_weight(ctx, sp->wt, R, E, pw, sp->transposed & ATTN_PROJ_Q);
    if (sp->biases & ATTN_PROJ_Q) L->in_bias = upload(ctx, sp->wt, 1, bs, pb);
    /* the oracle reads the rounded values back */
    for (int64_t p = 0; p < R; p++) {
      memcpy(L->w[src_i[p]] + src_r[p] * E, pw + p * E, (size_t)E * sizeof *pw);
      if (L->b[src_i[p]]) L->b[src_i[p]][src_r[p]] = pb[p];
    }
    free(pw), free(pb), free(src_i), free(src_r);
  }
  for (int i = 0; i < 4; i++) {
    const int64_t bs[1] = {rows[i]};
    if (!(sp->packed && i < 3)) {
      L->tw[i] = upload_weight(ctx, sp->wt, rows[i], cols[i], L->w[i], (sp->transposed >> i) & 1u);
      if (L->b[i]) L->tb[i] = upload(ctx, sp->wt, 1, bs, L->b[i]);
    }
  }
  attn_mha_desc d = ATTN_MHA_DESC_INIT;
  d.d_model = E, d.n_heads = sp->H, d.n_kv_heads = sp->Hkv, d.head_dim = D;
  d.causal = sp->causal, d.max_batch = max_b, d.max_seq = max_s;
  d.biases = sp->biases;
  d.transposed = sp->transposed;
  d.qkv_per_head = sp->per_head;
  if (sp->norm) {
    const int64_t ns[1] = {D};
    L->qn = tu_alloc_uniform((size_t)D, &rng, sp->norm == 2 ? -0.4f : 0.6f, sp->norm == 2 ? 0.4f : 1.4f);
    L->kn = tu_alloc_uniform((size_t)D, &rng, sp->norm == 2 ? -0.4f : 0.6f, sp->norm == 2 ? 0.4f : 1.4f);
    L->tqn = upload(ctx, sp->wt, 1, ns, L->qn);
    L->tkn = upload(ctx, sp->wt, 1, ns, L->kn);
    d.q_norm = L->tqn, d.k_norm = L->tkn, d.norm_eps = 1e-6f, d.norm_offset = sp->norm == 2;
  }
  if (sp->rope) {
    L->rc = (attn_rope_config)ATTN_ROPE_CONFIG_INIT;
    L->rc.type = sp->rope == 2 ? ATTN_ROPE_LINEAR : ATTN_ROPE_DEFAULT;
    L->rc.factor = 2, L->rc.theta = sp->theta, L->rc.interleaved = sp->inter;
    L->rc.rotary_dim = sp->rot;
    d.rope = &L->rc;
  }
  d.has_scale = sp->has_scale, d.scale = (float)sp->scale;
  if (sp->window) d.has_window = true, d.window_left = sp->window - 1, d.window_right = -1;
  d.softcap = (float)sp->softcap;
  for (int64_t h = 0; h < sp->H; h++) {
    L->alibi[h] = (float)pow(2.0, -8.0 * (double)(h + 1) / (double)sp->H);
    L->sinks[h] = (float)(0.5 + 0.3 * (double)h);
  }
  if (sp->alibi) d.alibi_slopes = L->alibi;
  if (sp->sinks) d.sinks = L->sinks;
  attn_mha_weights w;
  memset(&w, 0, sizeof w);
  w.wq = L->tw[0], w.wk = L->tw[1], w.wv = L->tw[2], w.wo = L->tw[3];
  w.bq = L->tb[0], w.bk = L->tb[1], w.bv = L->tb[2], w.bo = L->tb[3];
  w.in_proj = L->in_proj, w.in_bias = L->in_bias;
  if (attn_mha_create(ctx, &d, &w, &L->g)) fail_msg("%s: %s", sp->name, attn_last_error());
}

static void layer_free(layer *L) {
  attn_mha_free(L->g);
  for (int i = 0; i < 4; i++) {
    free(L->w[i]), free(L->b[i]);
    attn_tensor_free(L->tw[i]), attn_tensor_free(L->tb[i]);
  }
  attn_tensor_free(L->in_proj), attn_tensor_free(L->in_bias);
  attn_tensor_free(L->tqn), attn_tensor_free(L->tkn);
  free(L->qn), free(L->kn);
}

/* ---- the layer in double, from the formulas -------------------------------------------- */

/* One sequence of T tokens x [T, E] with key validity valid[T] (1 = token)
 * and RoPE positions pos[T]: out [T, E]. */
static void layer_double(const layer *L, const float *x, int64_t T, const int32_t *valid,
                         const int32_t *pos, double *out) {
  const layer_spec *sp = L->sp;
  const int64_t E = sp->E, H = sp->H, Hkv = sp->Hkv, D = sp->D, r = sp->rot ? sp->rot : D;
  const int64_t n[3] = {H * D, Hkv * D, Hkv * D};
  double *p[3];
  for (int i = 0; i < 3; i++) {
    p[i] = malloc((size_t)(T * n[i]) * sizeof(double));
    for (int64_t t = 0; t < T; t++)
      for (int64_t o = 0; o < n[i]; o++) {
        double acc = L->b[i] ? L->b[i][o] : 0.0;
        for (int64_t e = 0; e < E; e++) acc += (double)x[t * E + e] * L->w[i][o * E + e];
        p[i][t * n[i] + o] = acc;
      }
  }
  /* QK-norm then RoPE, per head, on q and k */
  for (int i = 0; i < 2; i++) {
    const int64_t nh = i ? Hkv : H;
    const float *nw = i ? L->kn : L->qn;
    for (int64_t t = 0; t < T; t++)
      for (int64_t h = 0; h < nh; h++) {
        double *v = p[i] + t * n[i] + h * D;
        if (sp->norm) {
          double ss = 0;
          for (int64_t d = 0; d < D; d++) ss += v[d] * v[d];
          const double inv = 1.0 / sqrt(ss / (double)D + 1e-6);
          for (int64_t d = 0; d < D; d++) v[d] = v[d] * inv * ((sp->norm == 2 ? 1.0 : 0.0) + nw[d]);
        }
        if (sp->rope) {
          double y[64];
          memcpy(y, v, (size_t)D * sizeof *y);
          for (int64_t k = 0; k < r / 2; k++) {
            const double f = pow(sp->theta, -2.0 * (double)k / (double)r) / (sp->rope == 2 ? 2.0 : 1.0);
            const double a = (double)pos[t] * f;
            const int64_t i0 = sp->inter ? 2 * k : k, i1 = sp->inter ? 2 * k + 1 : k + r / 2;
            y[i0] = v[i0] * cos(a) - v[i1] * sin(a);
            y[i1] = v[i1] * cos(a) + v[i0] * sin(a);
          }
          memcpy(v, y, (size_t)D * sizeof *y);
        }
      }
  }
  double *att = calloc((size_t)(T * H * D), sizeof *att), *sc = malloc((size_t)T * sizeof *sc);
  const double scale = sp->has_scale ? sp->scale : 1.0 / sqrt((double)D);
  for (int64_t h = 0; h < H; h++) {
    const int64_t kh = h / (H / Hkv);
    for (int64_t i = 0; i < T; i++) {
      double mx = sp->sinks ? L->sinks[h] : -INFINITY;
      int any = 0;
      for (int64_t j = 0; j < T; j++) {
        int vis = valid[j] && (!sp->causal || j <= i) && (!sp->window || j > i - sp->window);
        sc[j] = NAN;
        if (!vis) continue;
        double dot = 0;
        for (int64_t d = 0; d < D; d++) dot += p[0][i * n[0] + h * D + d] * p[1][j * n[1] + kh * D + d];
        double s = scale * dot;
        if (sp->softcap > 0) s = sp->softcap * tanh(s / sp->softcap);
        if (sp->alibi) s -= L->alibi[h] * fabs((double)(i - j));
        sc[j] = s;
        any = 1;
        if (s > mx) mx = s;
      }
      if (!any) continue; /* zeros */
      double tot = sp->sinks ? exp(L->sinks[h] - mx) : 0;
      for (int64_t j = 0; j < T; j++)
        if (!isnan(sc[j])) tot += exp(sc[j] - mx);
      for (int64_t j = 0; j < T; j++)
        if (!isnan(sc[j]))
          for (int64_t d = 0; d < D; d++)
            att[i * H * D + h * D + d] += exp(sc[j] - mx) / tot * p[2][j * n[2] + kh * D + d];
    }
  }
  for (int64_t t = 0; t < T; t++)
    for (int64_t o = 0; o < E; o++) {
      double acc = L->b[3] ? L->b[3][o] : 0.0;
      for (int64_t k = 0; k < H * D; k++) acc += att[t * H * D + k] * L->w[3][o * H * D + k];
      out[t * E + o] = acc;
    }
  for (int i = 0; i < 3; i++) free(p[i]);
  free(att), free(sc);
}

/* transformers' positions of a padded row: cumsum(mask) - 1, 0 at padding. */
static void hf_positions(const int32_t *mask, int64_t S, int32_t *pos) {
  int32_t c = 0;
  for (int64_t s = 0; s < S; s++) {
    c += mask[s];
    pos[s] = mask[s] ? c - 1 : 0;
  }
}

/* Compare got [T, E] rows where want_row[t] with want [T, E] (the tolerance
 * over the compared rows' scale). */
static int compare_rows(const char *what, const float *got, const double *want, int64_t T,
                        int64_t E, const int32_t *rowmask) {
  float *g = malloc((size_t)(T * E) * sizeof *g);
  double *w = malloc((size_t)(T * E) * sizeof *w);
  size_t n = 0;
  for (int64_t t = 0; t < T; t++)
    if (!rowmask || rowmask[t]) {
      memcpy(g + n, got + t * E, (size_t)E * sizeof *g);
      memcpy(w + n, want + t * E, (size_t)E * sizeof *w);
      n += (size_t)E;
    }
  int ok = tu_check_close(what, g, w, n, NULL);
  free(g), free(w);
  return ok;
}

/* ---- plain runs ------------------------------------------------------------------------- */

static const layer_spec specs[] = {
    {"llama: GQA, rope, left padding", 32, 4, 2, 8, 0, false, true, 0, 1, false, 0, 10000, false, 0, 0, 0, false, false, ATTN_F32, 0, false},
    {"qwen2: q/k/v biases, right padding", 32, 4, 2, 8, ATTN_PROJ_Q | ATTN_PROJ_K | ATTN_PROJ_V, false, true, 0, 1, false, 0, 1e6, false, 0, 0, 0, false, false, ATTN_F32, 0, false},
    {"qwen3: QK-norm w", 32, 4, 2, 8, 0, false, true, 1, 1, false, 0, 10000, false, 0, 0, 0, false, false, ATTN_F32, 0, false},
    {"gemma: 1 + w, linear rope, scale, window, softcap", 32, 4, 2, 8, 0, false, true, 2, 2, false, 0, 10000, true, 0.25, 3, 5.0, false, false, ATTN_F32, 0, false},
    {"phi3: packed qkv, partial rotary", 32, 4, 2, 8, 0, true, true, 0, 1, false, 4, 10000, false, 0, 0, 0, false, false, ATTN_F32, 0, false},
    {"gpt-oss: biases, sinks, window, interleaved rope", 32, 4, 2, 8, ATTN_PROJ_ALL, false, true, 0, 1, true, 0, 150000, false, 0, 4, 0, false, true, ATTN_F32, 0, false},
    {"bloom: alibi, packed with bias", 32, 4, 4, 8, ATTN_PROJ_ALL, true, true, 0, 0, false, 0, 0, false, 0, 0, 0, true, false, ATTN_F32, 0, false},
    {"bert: bidirectional, key padding, biases", 32, 4, 4, 8, ATTN_PROJ_ALL, false, false, 0, 0, false, 0, 0, false, 0, 0, 0, false, false, ATTN_F32, 0, false},
    {"llama bf16 weights", 32, 4, 2, 8, 0, false, true, 1, 1, false, 0, 10000, false, 0, 0, 0, false, false, ATTN_BF16, 0, false},
    {"qwen2 f16 weights and biases", 32, 4, 2, 8, ATTN_PROJ_Q | ATTN_PROJ_K | ATTN_PROJ_V, false, true, 0, 1, false, 0, 10000, false, 0, 0, 0, false, false, ATTN_F16, 0, false},
    {"gpt2: packed Conv1D [in, out] weights, biases", 32, 4, 4, 8, ATTN_PROJ_ALL, true, true, 0, 0, false, 0, 0, false, 0, 0, 0, false, false, ATTN_F32, ATTN_PROJ_ALL, false},
    {"Conv1D q and o only, GQA, D=6 (non-square)", 32, 4, 2, 6, ATTN_PROJ_Q | ATTN_PROJ_O, false, true, 0, 1, false, 0, 10000, false, 0, 0, 0, false, false, ATTN_F32, ATTN_PROJ_Q | ATTN_PROJ_O, false},
    {"gpt2 bf16 Conv1D weights", 32, 4, 4, 8, ATTN_PROJ_ALL, true, true, 0, 0, false, 0, 0, false, 0, 0, 0, false, false, ATTN_BF16, ATTN_PROJ_ALL, false},
    {"bloom: qkv interleaved per head, alibi, biases", 32, 4, 4, 8, ATTN_PROJ_ALL, true, true, 0, 0, false, 0, 0, false, 0, 0, 0, true, false, ATTN_F32, 0, true},
    {"per-head qkv as Conv1D, rope, f16, D=6", 24, 4, 4, 6, ATTN_PROJ_ALL, true, true, 0, 1, false, 0, 10000, false, 0, 0, 0, false, false, ATTN_F16, ATTN_PROJ_ALL, true},
};

enum { PB = 2, PS = 9 };

static void test_layer_vs_double(void **state) {
  attn_context *ctx = *state;
  for (size_t ci = 0; ci < sizeof specs / sizeof specs[0]; ci++) {
    const layer_spec *sp = &specs[ci];
    layer L;
    layer_init(&L, ctx, sp, PB, PS, 100 + ci);
    uint64_t rng = 3 + ci;
    float *x = tu_alloc_uniform(PB * PS * (size_t)sp->E, &rng, -1.5f, 1.5f);
    /* row 0 full; row 1 padded on the left (odd cases) or the right */
    int32_t am[PB * PS], pos[PB * PS];
    const int left = ci % 2 == 0;
    for (int s = 0; s < PS; s++) {
      am[s] = 1;
      am[PS + s] = left ? s >= 3 : s < PS - 2;
    }
    for (int b = 0; b < PB; b++) hf_positions(am + b * PS, PS, pos + b * PS);
    const int64_t xs[3] = {PB, PS, sp->E};
    attn_tensor *tx = upload(ctx, ATTN_F32, 3, xs, x), *to = NULL;
    assert_int_equal(attn_tensor_create(ctx, 3, xs, &to), ATTN_OK);
    attn_mha_run_args a = ATTN_MHA_RUN_ARGS_INIT;
    a.x = tx, a.out = to, a.attention_mask = am, a.position_ids = sp->rope ? pos : NULL;
    if (attn_mha_run_ex(L.g, &a)) fail_msg("%s: %s", sp->name, attn_last_error());
    float *got = download(to);
    for (int b = 0; b < PB; b++) {
      double *want = malloc((size_t)(PS * sp->E) * sizeof *want);
      layer_double(&L, x + b * PS * sp->E, PS, am + b * PS, pos + b * PS, want);
      char what[160];
      snprintf(what, sizeof what, "%s, row %d, on %s", sp->name, b, tu_device);
      assert_true(compare_rows(what, got + b * PS * sp->E, want, PS, sp->E, am + b * PS));
      free(want);
    }
    /* The profile names the new nodes. */
    attn_mha_profile pr;
    assert_int_equal(attn_mha_profile_get(L.g, &pr), ATTN_OK);
    assert_true((attn_mha_profile_ms(&pr, "rope_k") >= 0) == (sp->rope != 0));
    assert_true((attn_mha_profile_ms(&pr, "norm_q") >= 0) == (sp->norm != 0));
    free(x), free(got);
    attn_tensor_free(tx), attn_tensor_free(to);
    layer_free(&L);
  }
}

/* Each option really reaches the device: the layer without it differs. */
static void test_layer_options_matter(void **state) {
  attn_context *ctx = *state;
  const layer_spec *sp = &specs[3]; /* norm 1+w, linear rope, scale, window, softcap */
  layer L;
  layer_init(&L, ctx, sp, 1, PS, 7);
  uint64_t rng = 1;
  float *x = tu_alloc_uniform(PS * (size_t)sp->E, &rng, -1.5f, 1.5f);
  int32_t am[PS], pos[PS];
  for (int s = 0; s < PS; s++) am[s] = 1, pos[s] = s;
  double *want = malloc((size_t)(PS * sp->E) * sizeof *want);
  const int64_t xs[3] = {1, PS, sp->E};
  attn_tensor *tx = upload(ctx, ATTN_F32, 3, xs, x), *to = NULL;
  assert_int_equal(attn_tensor_create(ctx, 3, xs, &to), ATTN_OK);
  assert_int_equal(attn_mha_run(L.g, tx, NULL, to), ATTN_OK);
  float *got = download(to);
  layer_spec alt[5];
  for (int k = 0; k < 5; k++) alt[k] = *sp;
  alt[0].norm = 1, alt[1].rope = 1, alt[2].has_scale = false, alt[3].window = 0, alt[4].softcap = 0;
  for (int k = 0; k < 5; k++) {
    layer M = L;
    M.sp = &alt[k];
    layer_double(&M, x, PS, am, pos, want);
    double maxd = 0;
    for (int64_t i = 0; i < PS * sp->E; i++) maxd = fmax(maxd, fabs(got[i] - want[i]));
    if (maxd < 1e-2) fail_msg("option %d made no difference on %s (%g)", k, tu_device, maxd);
  }
  free(x), free(got), free(want);
  attn_tensor_free(tx), attn_tensor_free(to);
  layer_free(&L);
}

/* ---- the KV cache with a length per row ----------------------------------------------- */

enum { CB = 3, CT = 24, CAP = 32 };

/* Per row: its whole token sequence so far (x rows, validity, positions). */
typedef struct row_seq {
  float x[CT * 2][32];
  int32_t valid[CT * 2], pos[CT * 2];
  int64_t T;
} row_seq;

/* Append steps[b] new tokens to each row through the cache (one run), then
 * compare each new token's output with the double layer over the row's
 * whole sequence. pad_first: the first new token of row 0 is padding. */
static void cache_step(attn_context *ctx, layer *L, attn_kv_cache *c, row_seq *rows,
                       const int32_t *steps, uint64_t *rng, int pad_row, const char *stage) {
  const int64_t E = L->sp->E;
  int64_t S = 1;
  for (int b = 0; b < CB; b++) S = steps[b] > S ? steps[b] : S;
  float *x = tu_alloc_uniform((size_t)(CB * S * E), rng, -1.5f, 1.5f);
  int32_t *am = malloc((size_t)(CB * S) * sizeof *am), *pos = malloc((size_t)(CB * S) * sizeof *pos);
  for (int b = 0; b < CB; b++) {
    row_seq *r = &rows[b];
    int32_t next = 0; /* transformers' position: the count of tokens so far */
    for (int64_t t = 0; t < r->T; t++) next += r->valid[t];
    for (int64_t s = 0; s < S; s++) {
      const int is_pad = b == pad_row && s == 0 && steps[b] > 0;
      am[b * S + s] = !is_pad;
      pos[b * S + s] = is_pad ? 0 : next;
      if (!is_pad && s < steps[b]) next++;
      if (s < steps[b]) {
        memcpy(r->x[r->T], x + (b * S + s) * E, (size_t)E * sizeof(float));
        r->valid[r->T] = am[b * S + s], r->pos[r->T] = pos[b * S + s];
        r->T++;
      }
    }
  }
  const int64_t xs[3] = {CB, S, E};
  attn_tensor *tx = upload(ctx, ATTN_F32, 3, xs, x), *to = NULL;
  assert_int_equal(attn_tensor_create(ctx, 3, xs, &to), ATTN_OK);
  attn_mha_run_args a = ATTN_MHA_RUN_ARGS_INIT;
  a.x = tx, a.out = to, a.cache = c, a.n_new = steps, a.attention_mask = am, a.position_ids = pos;
  if (attn_mha_run_ex(L->g, &a)) fail_msg("%s: %s", stage, attn_last_error());
  float *got = download(to);
  for (int b = 0; b < CB; b++) {
    row_seq *r = &rows[b];
    assert_int_equal(attn_kv_cache_row_length(c, b), r->T);
    if (!steps[b]) continue;
    double *want = malloc((size_t)(r->T * E) * sizeof *want);
    layer_double(L, &r->x[0][0], r->T, r->valid, r->pos, want);
    /* with E == 32 the row_seq rows are contiguous [T, E] */
    char what[160];
    snprintf(what, sizeof what, "%s row %d (%lld tokens) on %s", stage, b, (long long)r->T, tu_device);
    assert_true(compare_rows(what, got + b * S * E, want + (r->T - steps[b]) * E, steps[b], E,
                             am + b * S));
    free(want);
  }
  free(x), free(am), free(pos), free(got);
  attn_tensor_free(tx), attn_tensor_free(to);
}

static void test_cache_rows(void **state) {
  attn_context *ctx = *state;
  /* QK-norm, RoPE, GQA, window: keys must be stored normed and rotated at
   * their absolute positions for the steps to match the full pass */
  static const layer_spec sp = {"cache", 32, 4, 2, 8, ATTN_PROJ_Q | ATTN_PROJ_K | ATTN_PROJ_V, false, true, 1, 1, false, 0, 10000, false, 0, 6, 0, false, true, ATTN_F32, 0, false};
  layer L;
  layer_init(&L, ctx, &sp, CB, 8, 21);
  attn_kv_cache *c = NULL;
  assert_int_equal(attn_kv_cache_create(L.g, CB, CAP, &c), ATTN_OK);
  row_seq *rows = calloc(CB, sizeof *rows);
  uint64_t rng = 77;
  /* prefill of different lengths, row 1 with a padding token */
  const int32_t p0[CB] = {5, 8, 3};
  cache_step(ctx, &L, c, rows, p0, &rng, 1, "prefill");
  assert_int_equal(attn_kv_cache_length(c), 8);
  /* decode: rows advance by 1, 0 and 2 */
  const int32_t s1[CB] = {1, 0, 2}, s2[CB] = {1, 1, 1}, s3[CB] = {3, 2, 0};
  cache_step(ctx, &L, c, rows, s1, &rng, -1, "step 1");
  cache_step(ctx, &L, c, rows, s2, &rng, -1, "step 2 (uniform n, lengths differ)");
  cache_step(ctx, &L, c, rows, s3, &rng, 2, "step 3");
  /* speculative decoding: row 0 rejects its last 3 tokens and goes on */
  assert_int_equal(attn_kv_cache_truncate(c, 0, rows[0].T - 3), ATTN_OK);
  rows[0].T -= 3;
  const int32_t s4[CB] = {2, 1, 1};
  cache_step(ctx, &L, c, rows, s4, &rng, -1, "after truncate");
  /* a new sequence in row 1 alone */
  assert_int_equal(attn_kv_cache_reset_row(c, 1), ATTN_OK);
  rows[1].T = 0;
  assert_int_equal(attn_kv_cache_row_length(c, 1), 0);
  const int32_t s5[CB] = {1, 6, 1};
  cache_step(ctx, &L, c, rows, s5, &rng, -1, "after reset_row");
  /* every row at the same length, same n: the batched path */
  attn_kv_cache_reset(c);
  for (int b = 0; b < CB; b++) rows[b].T = 0;
  const int32_t u[CB] = {4, 4, 4}, u1[CB] = {1, 1, 1};
  cache_step(ctx, &L, c, rows, u, &rng, 0, "uniform prefill with padding");
  cache_step(ctx, &L, c, rows, u1, &rng, -1, "uniform step");
  /* errors, each naming the argument; nothing changes */
  tu_assert_fails(attn_kv_cache_truncate(c, 0, 9), ATTN_ERR_INVALID_ARG, "length: 9");
  tu_assert_fails(attn_kv_cache_truncate(c, 3, 0), ATTN_ERR_INVALID_ARG, "row: 3");
  tu_assert_fails(attn_kv_cache_reset_row(c, -1), ATTN_ERR_INVALID_ARG, "row: -1");
  tu_assert_fails(attn_kv_cache_truncate(NULL, 0, 0), ATTN_ERR_INVALID_ARG, "cache: NULL");
  assert_int_equal(attn_kv_cache_row_length(c, 5), -1);
  const int64_t xs[3] = {CB, 2, 32};
  float zeros[CB * 2 * 32] = {0};
  attn_tensor *tx = upload(ctx, ATTN_F32, 3, xs, zeros), *to = NULL;
  assert_int_equal(attn_tensor_create(ctx, 3, xs, &to), ATTN_OK);
  attn_mha_run_args a = ATTN_MHA_RUN_ARGS_INIT;
  a.x = tx, a.out = to, a.cache = c;
  const int32_t bad[CB] = {1, 3, 0}, big[CB] = {0, 0, 2};
  a.n_new = bad;
  tu_assert_fails(attn_mha_run_ex(L.g, &a), ATTN_ERR_INVALID_ARG, "n_new[1]: 3");
  assert_int_equal(attn_kv_cache_truncate(c, 2, 5), ATTN_OK);
  assert_int_equal(attn_kv_cache_truncate(c, 2, 5), ATTN_OK);
  /* fill row 2 to capacity - 1, then 2 more do not fit */
  attn_kv_cache_reset(c);
  for (int i = 0; i < CAP - 1; i++) {
    const int32_t one[CB] = {0, 0, 1};
    a.n_new = one;
    assert_int_equal(attn_mha_run_ex(L.g, &a), ATTN_OK);
  }
  a.n_new = big;
  tu_assert_fails(attn_mha_run_ex(L.g, &a), ATTN_ERR_CAPACITY, "row 2");
  assert_int_equal(attn_kv_cache_row_length(c, 2), CAP - 1);
  int32_t am[CB * 2] = {1, 1, 1, 2, 1, 1};
  a.n_new = NULL, a.attention_mask = am;
  attn_kv_cache_reset(c);
  tu_assert_fails(attn_mha_run_ex(L.g, &a), ATTN_ERR_INVALID_ARG, "attention_mask[3]: 2");
  am[3] = 1;
  int32_t pos[CB * 2] = {0, 1, 0, -1, 0, 1};
  a.position_ids = pos;
  tu_assert_fails(attn_mha_run_ex(L.g, &a), ATTN_ERR_INVALID_ARG, "position_ids[3]");
  assert_int_equal(attn_kv_cache_length(c), 0);
  attn_tensor_free(tx), attn_tensor_free(to);
  attn_kv_cache_free(c);
  free(rows);
  layer_free(&L);
}

/* The cache with left padding, decoded token by token, equals the device's
 * own full pass (the fixtures' decode cases). */
static void test_cache_padded_decode_vs_full_pass(void **state) {
  attn_context *ctx = *state;
  const layer_spec *sp = &specs[0];
  enum { B = 2, S = 10, K = 4 };
  layer L;
  layer_init(&L, ctx, sp, B, S, 5);
  uint64_t rng = 9;
  const int64_t E = sp->E;
  float *x = tu_alloc_uniform(B * S * (size_t)E, &rng, -1.5f, 1.5f);
  int32_t am[B * S], pos[B * S];
  for (int s = 0; s < S; s++) am[s] = 1, am[S + s] = s >= 4;
  for (int b = 0; b < B; b++) hf_positions(am + b * S, S, pos + b * S);
  const int64_t xs[3] = {B, S, E};
  attn_tensor *tx = upload(ctx, ATTN_F32, 3, xs, x), *to = NULL;
  assert_int_equal(attn_tensor_create(ctx, 3, xs, &to), ATTN_OK);
  attn_mha_run_args a = ATTN_MHA_RUN_ARGS_INIT;
  a.x = tx, a.out = to, a.attention_mask = am, a.position_ids = pos;
  assert_int_equal(attn_mha_run_ex(L.g, &a), ATTN_OK);
  float *full = download(to);
  attn_kv_cache *c = NULL;
  assert_int_equal(attn_kv_cache_create(L.g, B, S, &c), ATTN_OK);
  float *dec = calloc(B * S * (size_t)E, sizeof *dec);
  for (int step = 0; step <= K; step++) {
    const int64_t t0 = step ? S - K + step - 1 : 0, n = step ? 1 : S - K;
    float *xp = malloc((size_t)(B * n * E) * sizeof *xp);
    int32_t amp[B * S], pp[B * S];
    for (int b = 0; b < B; b++) {
      memcpy(xp + b * n * E, x + (b * S + t0) * E, (size_t)(n * E) * sizeof *xp);
      memcpy(amp + b * n, am + b * S + t0, (size_t)n * sizeof *amp);
      memcpy(pp + b * n, pos + b * S + t0, (size_t)n * sizeof *pp);
    }
    const int64_t ps[3] = {B, n, E};
    attn_tensor *px = upload(ctx, ATTN_F32, 3, ps, xp), *po = NULL;
    assert_int_equal(attn_tensor_create(ctx, 3, ps, &po), ATTN_OK);
    attn_mha_run_args c_args = ATTN_MHA_RUN_ARGS_INIT;
    c_args.x = px, c_args.out = po, c_args.cache = c, c_args.attention_mask = amp,
    c_args.position_ids = pp;
    if (attn_mha_run_ex(L.g, &c_args)) fail_msg("step %d: %s", step, attn_last_error());
    float *o = download(po);
    for (int b = 0; b < B; b++)
      memcpy(dec + (b * S + t0) * E, o + b * n * E, (size_t)(n * E) * sizeof *o);
    free(xp), free(o);
    attn_tensor_free(px), attn_tensor_free(po);
  }
  for (int b = 0; b < B; b++) {
    double *want = malloc((size_t)(S * E) * sizeof *want);
    for (int64_t i = 0; i < S * E; i++) want[i] = full[b * S * E + i];
    char what[96];
    snprintf(what, sizeof what, "padded decode vs full pass, row %d, on %s", b, tu_device);
    assert_true(compare_rows(what, dec + b * S * E, want, S, E, am + b * S));
    layer_double(&L, x + b * S * E, S, am + b * S, pos + b * S, want);
    snprintf(what, sizeof what, "full pass vs double, row %d, on %s", b, tu_device);
    assert_true(compare_rows(what, full + b * S * E, want, S, E, am + b * S));
    free(want);
  }
  free(x), free(full), free(dec);
  attn_kv_cache_free(c);
  attn_tensor_free(tx), attn_tensor_free(to);
  layer_free(&L);
}

/* ---- descriptor errors ---------------------------------------------------------------- */

static void test_layer_desc_errors(void **state) {
  attn_context *ctx = *state;
  const int64_t ws[2] = {16, 16}, bs[1] = {16}, ns[1] = {4}, ps[2] = {48, 16}, pbs[1] = {48};
  float z[48 * 16] = {0};
  attn_tensor *w = upload(ctx, ATTN_F32, 2, ws, z), *b = upload(ctx, ATTN_F32, 1, bs, z),
              *nw = upload(ctx, ATTN_F32, 1, ns, z), *pw = upload(ctx, ATTN_F32, 2, ps, z),
              *pb = upload(ctx, ATTN_F32, 1, pbs, z), *bad = upload(ctx, ATTN_F32, 1, bs, z);
  attn_mha_desc d = ATTN_MHA_DESC_INIT;
  d.d_model = 16, d.n_heads = 4, d.max_batch = 1, d.max_seq = 4;
  attn_mha_weights W = {.wq = w, .wk = w, .wv = w, .wo = w};
  attn_mha *g = NULL;
  d.biases = ATTN_PROJ_Q | ATTN_PROJ_V;
  tu_assert_fails(attn_mha_create(ctx, &d, &W, &g), ATTN_ERR_INVALID_ARG,
                  "bq: NULL but desc.biases names it");
  W.bq = b, W.bv = b, W.bo = b;
  tu_assert_fails(attn_mha_create(ctx, &d, &W, &g), ATTN_ERR_INVALID_ARG,
                  "bo: given but desc.biases does not name it");
  W.bo = NULL;
  assert_int_equal(attn_mha_create(ctx, &d, &W, &g), ATTN_OK);
  attn_mha_free(g);
  d.biases = 16;
  tu_assert_fails(attn_mha_create(ctx, &d, &W, &g), ATTN_ERR_INVALID_ARG, "desc.biases");
  d.biases = 0, W.bq = W.bv = NULL;
  attn_mha_weights P = {.in_proj = pw, .in_bias = pb, .wo = w};
  d.biases = ATTN_PROJ_Q;
  tu_assert_fails(attn_mha_create(ctx, &d, &P, &g), ATTN_ERR_INVALID_ARG, "name all three or none");
  d.biases = 0;
  d.q_norm = nw;
  tu_assert_fails(attn_mha_create(ctx, &d, &W, &g), ATTN_ERR_INVALID_ARG, "desc.norm_eps");
  d.norm_eps = 1e-6f, d.k_norm = bad;
  tu_assert_fails(attn_mha_create(ctx, &d, &W, &g), ATTN_ERR_SHAPE, "desc.k_norm: shape");
  d.k_norm = NULL;
  attn_rope_config rc = ATTN_ROPE_CONFIG_INIT;
  rc.type = ATTN_ROPE_DEFAULT, rc.rotary_dim = 6;
  d.rope = &rc;
  tu_assert_fails(attn_mha_create(ctx, &d, &W, &g), ATTN_ERR_INVALID_ARG, "desc.rope.rotary_dim");
  rc.rotary_dim = 0;
  d.softcap = -1;
  tu_assert_fails(attn_mha_create(ctx, &d, &W, &g), ATTN_ERR_INVALID_ARG, "desc.softcap");
  d.softcap = 0, d.has_window = true, d.window_left = -2;
  tu_assert_fails(attn_mha_create(ctx, &d, &W, &g), ATTN_ERR_INVALID_ARG, "desc.window_left");
  d.has_window = false;
  float sinks[4] = {0, 1, NAN, 0};
  d.sinks = sinks;
  tu_assert_fails(attn_mha_create(ctx, &d, &W, &g), ATTN_ERR_INVALID_ARG, "desc.sinks[2]");
  d.sinks = NULL;
  d.transposed = 16;
  tu_assert_fails(attn_mha_create(ctx, &d, &W, &g), ATTN_ERR_INVALID_ARG, "desc.transposed");
  attn_mha_weights P2 = {.in_proj = pw, .wo = w};
  d.transposed = ATTN_PROJ_Q;
  tu_assert_fails(attn_mha_create(ctx, &d, &P2, &g), ATTN_ERR_INVALID_ARG,
                  "desc.transposed: in_proj is one matrix");
  d.transposed = ATTN_PROJ_ALL; /* in_proj [48, 16] is not [d_model 16, 48] */
  tu_assert_fails(attn_mha_create(ctx, &d, &P2, &g), ATTN_ERR_SHAPE, "in_proj: shape");
  d.transposed = 0;
  d.qkv_per_head = true;
  tu_assert_fails(attn_mha_create(ctx, &d, &W, &g), ATTN_ERR_INVALID_ARG,
                  "desc.qkv_per_head: set but no in_proj");
  d.n_kv_heads = 2; /* in_proj [48, 16] is not [(4 + 2*2) * 4, 16] either, but GQA is named first */
  tu_assert_fails(attn_mha_create(ctx, &d, &P2, &g), ATTN_ERR_INVALID_ARG,
                  "desc.qkv_per_head: needs n_kv_heads 2 == n_heads 4");
  d.n_kv_heads = 0, d.qkv_per_head = false;
  /* run arguments */
  assert_int_equal(attn_mha_create(ctx, &d, &W, &g), ATTN_OK);
  const int64_t xs[3] = {1, 4, 16};
  attn_tensor *x = upload(ctx, ATTN_F32, 3, xs, z), *o = NULL;
  assert_int_equal(attn_tensor_create(ctx, 3, xs, &o), ATTN_OK);
  attn_mha_run_args a = ATTN_MHA_RUN_ARGS_INIT;
  a.x = x, a.out = o, a.kv_x = x;
  tu_assert_fails(attn_mha_run_ex(g, &a), ATTN_ERR_INVALID_ARG, "kv_x: the graph rotates");
  a.kv_x = NULL;
  const int32_t n1[1] = {1};
  a.n_new = n1;
  tu_assert_fails(attn_mha_run_ex(g, &a), ATTN_ERR_INVALID_ARG, "n_new: only with a cache");
  a.n_new = NULL;
  tu_assert_fails(attn_mha_run_ex(g, NULL), ATTN_ERR_INVALID_ARG, "args: NULL");
  a.struct_size = 0;
  tu_assert_fails(attn_mha_run_ex(g, &a), ATTN_ERR_INVALID_ARG, "args.struct_size");
  a.struct_size = sizeof a;
  assert_int_equal(attn_mha_run_ex(g, &a), ATTN_OK);
  attn_mha_free(g);
  /* position_ids without RoPE */
  d.rope = NULL;
  assert_int_equal(attn_mha_create(ctx, &d, &W, &g), ATTN_OK);
  const int32_t pos[4] = {0, 1, 2, 3};
  a.position_ids = pos;
  tu_assert_fails(attn_mha_run_ex(g, &a), ATTN_ERR_INVALID_ARG, "position_ids: given but");
  attn_mha_free(g);
  attn_tensor_free(x), attn_tensor_free(o);
  attn_tensor_free(w), attn_tensor_free(b), attn_tensor_free(nw), attn_tensor_free(pw);
  attn_tensor_free(pb), attn_tensor_free(bad);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test_setup_teardown(test_layer_vs_double, tu_open_device, tu_close_device),
      cmocka_unit_test_setup_teardown(test_layer_options_matter, tu_open_device, tu_close_device),
      cmocka_unit_test_setup_teardown(test_cache_rows, tu_open_device, tu_close_device),
      cmocka_unit_test_setup_teardown(test_cache_padded_decode_vs_full_pass, tu_open_device,
                                      tu_close_device),
      cmocka_unit_test_setup_teardown(test_layer_desc_errors, tu_open_device, tu_close_device),
  };
  return tu_run_per_device("test_layer", tests);
}
