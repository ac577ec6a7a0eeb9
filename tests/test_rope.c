/* The RoPE and RMSNorm stages (ABI 2.3) on every device, and the frequency
 * rules of the core:
 *  - attn_rope_frequencies against the inv_freq and attention scaling that
 *    transformers 5.24 used for the committed layer fixtures (meta.json of
 *    tests/data/layers: linear, dynamic NTK, llama3, YaRN with and without
 *    truncation, partial rotary), and against the formulas written here;
 *  - attn_rope (half split and interleaved, partial rotary, per-token
 *    positions, in place, caller-given tables, YaRN's factor on cos / sin,
 *    f16 / bf16 storage) against a rotation computed in double in this file;
 *  - attn_rms_norm (w and Gemma's 1 + w, f32 / bf16) likewise;
 *  - argument errors, each naming the argument. */
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

static attn_tensor *upload_typed(attn_context *ctx, attn_dtype t, int ndim, const int64_t *shape,
                                 const float *h) {
  attn_tensor *x = NULL;
  assert_int_equal(attn_tensor_create_typed(ctx, t, ndim, shape, &x), ATTN_OK);
  if (h) assert_int_equal(attn_tensor_write(x, h, (size_t)attn_tensor_numel(x)), ATTN_OK);
  return x;
}

static float *download(const attn_tensor *t) {
  size_t n = (size_t)attn_tensor_numel(t);
  float *h = malloc(n * sizeof *h);
  assert_int_equal(attn_tensor_read(t, h, n), ATTN_OK);
  return h;
}

/* ---- frequencies against transformers ---------------------------------------------- */

/* rtol 1e-12 (the same double formula), except where transformers computes
 * in float32 what the core computes in double. */
static double freq_rtol = 1e-12;
static void expect_freqs(const char *what, const attn_rope_config *c, int64_t D, int64_t n,
                         const double *want, int nw, double want_A) {
  double got[64], A = -1;
  if (attn_rope_frequencies(c, D, n, got, &A) != ATTN_OK)
    fail_msg("%s: %s", what, attn_last_error());
  for (int i = 0; i < nw; i++)
    if (fabs(got[i] - want[i]) > freq_rtol * fabs(want[i]) + 1e-300)
      fail_msg("%s: inv_freq[%d] = %.17g, transformers %.17g", what, i, got[i], want[i]);
  if (fabs(A - want_A) > 1e-14) fail_msg("%s: attention scaling %.17g, want %.17g", what, A, want_A);
}

static void test_frequencies_vs_transformers(void **state) {
  (void)state;
  attn_rope_config c = ATTN_ROPE_CONFIG_INIT;
  /* llama_rope_linear */
  c.type = ATTN_ROPE_LINEAR, c.theta = 10000, c.factor = 4;
  const double lin[8] = {0.25, 0.07905694150420949, 0.025, 0.007905694150420948, 0.0025,
                         0.0007905694150420947, 0.00025, 7.905694150420948e-05};
  expect_freqs("linear", &c, 16, 0, lin, 8, 1.0);
  /* llama_rope_dynamic: M = 12, the call's positions reach 15 */
  c = (attn_rope_config)ATTN_ROPE_CONFIG_INIT;
  c.type = ATTN_ROPE_DYNAMIC, c.theta = 10000, c.factor = 2, c.max_position_embeddings = 12;
  const double dyn[8] = {1.0, 0.29397291512103274, 0.0864200748247579, 0.025405161321211848,
                         0.007468429332716754, 0.002195515942314173, 0.0006454222217567986,
                         0.00018973665201373966};
  /* transformers' dynamic base is a float32 tensor expression (seq_len is a
   * tensor): its theta' differs from the double one by ~1e-7 relative, so
   * inv_freq[i] by up to (2i/r) of that */
  freq_rtol = 1e-7;
  expect_freqs("dynamic", &c, 16, 16, dyn, 8, 1.0);
  freq_rtol = 1e-12;
  /* below M, dynamic is the default rule */
  const double def16[8] = {1.0, 0.31622776601683794, 0.1, 0.03162277660168379, 0.01,
                           0.003162277660168379, 0.001, 0.00031622776601683794};
  expect_freqs("dynamic below M", &c, 16, 12, def16, 8, 1.0);
  /* llama_rope_llama3 */
  c = (attn_rope_config)ATTN_ROPE_CONFIG_INIT;
  c.type = ATTN_ROPE_LLAMA3, c.theta = 10000, c.factor = 8, c.low_freq_factor = 1,
  c.high_freq_factor = 4, c.original_max_position_embeddings = 64;
  const double l3[8] = {1.0, 0.24438459943539836, 0.013042256043820465, 0.003952847075210474,
                        0.00125, 0.00039528470752104737, 0.000125, 3.952847075210474e-05};
  expect_freqs("llama3", &c, 16, 0, l3, 8, 1.0);
  /* llama_rope_yarn (truncate, attention factor from the factor) */
  c = (attn_rope_config)ATTN_ROPE_CONFIG_INIT;
  c.type = ATTN_ROPE_YARN, c.theta = 10000, c.factor = 4, c.original_max_position_embeddings = 16;
  const double yarn[8] = {1.0, 0.07905694150420949, 0.025, 0.007905694150420948, 0.0025,
                          0.0007905694150420947, 0.00025, 7.905694150420948e-05};
  expect_freqs("yarn", &c, 16, 0, yarn, 8, 1.138629436111989);
  /* gpt_oss: yarn, truncate false, factor 32, theta 150000 */
  c.theta = 150000, c.factor = 32, c.original_max_position_embeddings = 4096,
  c.beta_fast = 32, c.beta_slow = 1, c.yarn_no_truncate = true;
  const double oss[8] = {1.0, 0.2254180002028708, 0.050813274815461475, 0.006794959489732219,
                         0.00045648391922324086, 1.818833668168956e-05, 4.0999784818029795e-06,
                         9.242089502428301e-07};
  expect_freqs("yarn gpt-oss", &c, 16, 0, oss, 8, 1.3465735902799727);
  /* the same with truncation differs (the option is read) */
  c.yarn_no_truncate = false;
  double got[8], A;
  assert_int_equal(attn_rope_frequencies(&c, 16, 0, got, &A), ATTN_OK);
  int differs = 0;
  for (int i = 0; i < 8; i++) differs |= fabs(got[i] - oss[i]) > 1e-9 * oss[i];
  assert_true(differs);
  /* an explicit attention factor wins; mscale / mscale_all_dim their ratio */
  c.attention_factor = 0.75;
  assert_int_equal(attn_rope_frequencies(&c, 16, 0, got, &A), ATTN_OK);
  assert_true(A == 0.75);
  c.attention_factor = 0, c.mscale = 2, c.mscale_all_dim = 1;
  assert_int_equal(attn_rope_frequencies(&c, 16, 0, got, &A), ATTN_OK);
  assert_true(fabs(A - (0.2 * log(32) + 1) / (0.1 * log(32) + 1)) < 1e-15);
  /* phi3: partial rotary, r = 8 of D = 16 */
  c = (attn_rope_config)ATTN_ROPE_CONFIG_INIT;
  c.type = ATTN_ROPE_DEFAULT, c.rotary_dim = 8;
  const double phi[4] = {1.0, 0.1, 0.01, 0.001};
  expect_freqs("partial", &c, 16, 0, phi, 4, 1.0);
  /* gemma3 full layer: linear factor 8, theta 1e6 */
  c = (attn_rope_config)ATTN_ROPE_CONFIG_INIT;
  c.type = ATTN_ROPE_LINEAR, c.theta = 1e6, c.factor = 8;
  const double g3[8] = {0.125, 0.022228492625486533, 0.003952847075210474, 0.0007029266564879364,
                        0.000125, 2.2228492625486534e-05, 3.952847075210474e-06,
                        7.029266564879364e-07};
  expect_freqs("gemma3 full", &c, 16, 0, g3, 8, 1.0);
}

static void test_frequency_errors(void **state) {
  (void)state;
  double f[8], A;
  attn_rope_config c = ATTN_ROPE_CONFIG_INIT;
  tu_assert_fails(attn_rope_frequencies(&c, 16, 0, f, &A), ATTN_ERR_INVALID_ARG, "cfg.type");
  c.type = ATTN_ROPE_DEFAULT, c.rotary_dim = 7;
  tu_assert_fails(attn_rope_frequencies(&c, 16, 0, f, &A), ATTN_ERR_INVALID_ARG, "cfg.rotary_dim");
  c.rotary_dim = 18;
  tu_assert_fails(attn_rope_frequencies(&c, 16, 0, f, &A), ATTN_ERR_INVALID_ARG, "cfg.rotary_dim");
  c.rotary_dim = 0, c.theta = -1;
  tu_assert_fails(attn_rope_frequencies(&c, 16, 0, f, &A), ATTN_ERR_INVALID_ARG, "cfg.theta");
  c.theta = 0, c.type = ATTN_ROPE_LINEAR;
  tu_assert_fails(attn_rope_frequencies(&c, 16, 0, f, &A), ATTN_ERR_INVALID_ARG, "cfg.factor");
  c.type = ATTN_ROPE_DYNAMIC, c.factor = 2;
  tu_assert_fails(attn_rope_frequencies(&c, 16, 0, f, &A), ATTN_ERR_INVALID_ARG,
                  "cfg.max_position_embeddings");
  c.type = ATTN_ROPE_LLAMA3, c.original_max_position_embeddings = 64, c.low_freq_factor = 4,
  c.high_freq_factor = 1;
  tu_assert_fails(attn_rope_frequencies(&c, 16, 0, f, &A), ATTN_ERR_INVALID_ARG,
                  "cfg.low_freq_factor");
  c.type = ATTN_ROPE_TABLE;
  tu_assert_fails(attn_rope_frequencies(&c, 16, 0, f, &A), ATTN_ERR_INVALID_ARG, "cfg.cos");
  c.type = ATTN_ROPE_DEFAULT, c.struct_size = 0;
  tu_assert_fails(attn_rope_frequencies(&c, 16, 0, f, &A), ATTN_ERR_INVALID_ARG,
                  "cfg.struct_size");
}

/* ---- the rope stage against double ---------------------------------------------------- */

/* inv_freq by the default rule, written from the formula. */
static void default_freqs(double theta, int64_t r, double *f) {
  for (int64_t i = 0; i < r / 2; i++) f[i] = pow(theta, -2.0 * (double)i / (double)r);
}

/* y = rope(x) in double, x [B,H,S,D] contiguous; cosine / sine of p * f[i]
 * times A, or from tables ct / st [P, r/2] when given. */
static void rope_double(const float *x, int64_t B, int64_t H, int64_t S, int64_t D, int64_t r,
                        bool inter, const int32_t *pos, const double *f, double A,
                        const float *ct, const float *st, double *y) {
  for (int64_t b = 0; b < B; b++)
    for (int64_t h = 0; h < H; h++)
      for (int64_t s = 0; s < S; s++) {
        const float *xr = x + ((b * H + h) * S + s) * D;
        double *yr = y + ((b * H + h) * S + s) * D;
        const int64_t p = pos ? pos[b * S + s] : s;
        for (int64_t d = 0; d < D; d++) yr[d] = xr[d];
        for (int64_t i = 0; i < r / 2; i++) {
          const double c = ct ? ct[p * (r / 2) + i] : cos((double)p * f[i]) * A;
          const double sn = st ? st[p * (r / 2) + i] : sin((double)p * f[i]) * A;
          const int64_t a = inter ? 2 * i : i, o = inter ? 2 * i + 1 : i + r / 2;
          yr[a] = xr[a] * c - xr[o] * sn;
          yr[o] = xr[o] * c + xr[a] * sn;
        }
      }
}

typedef struct rope_case {
  const char *name;
  int64_t B, H, S, D, r;
  bool inter, positions, in_place;
  attn_dtype t;
} rope_case;

static void test_rope_vs_double(void **state) {
  attn_context *ctx = *state;
  static const rope_case cases[] = {
      {"half split", 2, 3, 5, 8, 0, false, false, false, ATTN_F32},
      {"interleaved positions", 2, 2, 7, 16, 0, true, true, false, ATTN_F32},
      {"partial rotary", 1, 4, 6, 16, 8, false, true, false, ATTN_F32},
      {"partial interleaved in place", 2, 2, 3, 12, 6, true, true, true, ATTN_F32},
      {"in place half split", 3, 1, 9, 6, 0, false, true, true, ATTN_F32},
      {"bf16", 2, 2, 5, 16, 0, false, true, false, ATTN_BF16},
      {"f16 in place", 2, 2, 5, 16, 12, false, true, true, ATTN_F16},
  };
  uint64_t rng = 11;
  for (size_t ci = 0; ci < sizeof cases / sizeof cases[0]; ci++) {
    const rope_case *k = &cases[ci];
    const int64_t n = k->B * k->H * k->S * k->D, r = k->r ? k->r : k->D;
    float *x = tu_alloc_uniform((size_t)n, &rng, -2.0f, 2.0f);
    int32_t *pos = malloc((size_t)(k->B * k->S) * sizeof *pos);
    for (int64_t i = 0; i < k->B * k->S; i++) pos[i] = (int32_t)(tu_rand_u64(&rng) % 3000);
    const int64_t shape[4] = {k->B, k->H, k->S, k->D};
    attn_tensor *tx = upload_typed(ctx, k->t, 4, shape, x);
    float *xr = download(tx); /* the input as stored */
    attn_tensor *ty = tx;
    if (!k->in_place) {
      float *nan = malloc((size_t)n * sizeof *nan);
      tu_fill_nan(nan, (size_t)n);
      ty = upload_typed(ctx, k->t, 4, shape, nan);
      free(nan);
    }
    attn_rope_config c = ATTN_ROPE_CONFIG_INIT;
    c.type = ATTN_ROPE_DEFAULT, c.interleaved = k->inter, c.rotary_dim = k->r, c.theta = 500000;
    attn_rope_args a = ATTN_ROPE_ARGS_INIT;
    a.x = tx, a.y = ty, a.rope = &c, a.positions = k->positions ? pos : NULL;
    if (attn_rope(ctx, &a)) fail_msg("%s: %s", k->name, attn_last_error());
    float *got = download(ty);
    double f[64], *want = malloc((size_t)n * sizeof *want);
    default_freqs(500000, r, f);
    rope_double(xr, k->B, k->H, k->S, k->D, r, k->inter, a.positions, f, 1.0, NULL, NULL, want);
    char what[128];
    snprintf(what, sizeof what, "rope %s on %s", k->name, tu_device);
    assert_true(tu_check_close_typed(what, k->t, got, want, (size_t)n, NULL));
    /* and the rotation is not the identity (the test can fail) */
    double moved = 0;
    for (int64_t i = 0; i < n; i++) moved += fabs(want[i] - xr[i]);
    assert_true(moved > 0.1 * (double)n);
    free(x), free(xr), free(pos), free(got), free(want);
    if (ty != tx) attn_tensor_free(ty);
    attn_tensor_free(tx);
  }
}

/* YaRN's attention factor scales cos and sin; a caller's table is used as given. */
static void test_rope_yarn_and_tables(void **state) {
  attn_context *ctx = *state;
  enum { B = 2, H = 2, S = 6, D = 8, P = 40 };
  uint64_t rng = 5;
  const int64_t n = B * H * S * D, shape[4] = {B, H, S, D};
  float *x = tu_alloc_uniform(n, &rng, -1.0f, 1.0f);
  int32_t pos[B * S];
  for (int i = 0; i < B * S; i++) pos[i] = (int32_t)((i * 7) % P);
  attn_tensor *tx = upload_typed(ctx, ATTN_F32, 4, shape, x), *ty = upload_typed(ctx, ATTN_F32, 4, shape, NULL);
  double *want = malloc(n * sizeof *want);
  char what[96];

  attn_rope_config c = ATTN_ROPE_CONFIG_INIT;
  c.type = ATTN_ROPE_YARN, c.theta = 10000, c.factor = 4, c.original_max_position_embeddings = 16;
  attn_rope_args a = ATTN_ROPE_ARGS_INIT;
  a.x = tx, a.y = ty, a.rope = &c, a.positions = pos;
  if (attn_rope(ctx, &a)) fail_msg("yarn: %s", attn_last_error());
  double f[4], A;
  assert_int_equal(attn_rope_frequencies(&c, D, 0, f, &A), ATTN_OK);
  assert_true(A > 1.1);
  rope_double(x, B, H, S, D, D, false, pos, f, A, NULL, NULL, want);
  float *got = download(ty);
  snprintf(what, sizeof what, "rope yarn on %s", tu_device);
  assert_true(tu_check_close(what, got, want, n, NULL));
  free(got);

  /* TABLE: arbitrary tables, interleaved */
  float *ct = tu_alloc_uniform(P * D / 2, &rng, -1.0f, 1.0f), *st = tu_alloc_uniform(P * D / 2, &rng, -1.0f, 1.0f);
  const int64_t ts[2] = {P, D / 2};
  attn_tensor *tc = upload_typed(ctx, ATTN_F32, 2, ts, ct), *tsn = upload_typed(ctx, ATTN_F32, 2, ts, st);
  attn_rope_config tcfg = ATTN_ROPE_CONFIG_INIT;
  tcfg.type = ATTN_ROPE_TABLE, tcfg.interleaved = true, tcfg.cos = tc, tcfg.sin = tsn;
  a.rope = &tcfg;
  if (attn_rope(ctx, &a)) fail_msg("table: %s", attn_last_error());
  rope_double(x, B, H, S, D, D, true, pos, NULL, 1, ct, st, want);
  got = download(ty);
  snprintf(what, sizeof what, "rope table on %s", tu_device);
  assert_true(tu_check_close(what, got, want, n, NULL));
  free(got);
  /* a position past the table is refused, naming it */
  pos[3] = P;
  tu_assert_fails(attn_rope(ctx, &a), ATTN_ERR_INVALID_ARG, "past the RoPE tables");
  pos[3] = -1;
  tu_assert_fails(attn_rope(ctx, &a), ATTN_ERR_INVALID_ARG, "args.positions[3]");
  pos[3] = 0;
  /* y overlapping x other than in place */
  attn_tensor *part = NULL;
  const int64_t vs[4] = {B, H, S, D - 2}, vst[4] = {H * S * D, S * D, D, 1};
  assert_int_equal(attn_tensor_view(tx, 2, 4, vs, vst, &part), ATTN_OK);
  attn_tensor *tx2 = NULL;
  assert_int_equal(attn_tensor_view(tx, 0, 4, vs, vst, &tx2), ATTN_OK);
  a.x = tx2, a.y = part;
  tu_assert_fails(attn_rope(ctx, &a), ATTN_ERR_INVALID_ARG, "y: overlaps x");
  attn_tensor_free(part), attn_tensor_free(tx2);
  free(ct), free(st), free(x), free(want);
  attn_tensor_free(tc), attn_tensor_free(tsn), attn_tensor_free(tx), attn_tensor_free(ty);
}

/* ---- rmsnorm ------------------------------------------------------------------------- */

static void test_rmsnorm_vs_double(void **state) {
  attn_context *ctx = *state;
  static const struct {
    int64_t B, H, S, D;
    bool offset, in_place;
    attn_dtype t;
  } cases[] = {
      {2, 3, 4, 16, false, false, ATTN_F32}, {1, 2, 5, 7, true, false, ATTN_F32},
      {2, 2, 3, 64, true, true, ATTN_F32},   {2, 2, 3, 16, false, false, ATTN_BF16},
      {1, 1, 4, 24, true, true, ATTN_F16},
  };
  uint64_t rng = 99;
  for (size_t ci = 0; ci < sizeof cases / sizeof cases[0]; ci++) {
    const int64_t B = cases[ci].B, H = cases[ci].H, S = cases[ci].S, D = cases[ci].D;
    const int64_t n = B * H * S * D, shape[4] = {B, H, S, D}, ws[1] = {D};
    const float eps = 1e-6f;
    float *x = tu_alloc_uniform((size_t)n, &rng, -3.0f, 3.0f);
    float *w = tu_alloc_uniform((size_t)D, &rng, -0.5f, 1.5f);
    attn_tensor *tx = upload_typed(ctx, cases[ci].t, 4, shape, x);
    attn_tensor *tw = upload_typed(ctx, cases[ci].t, 1, ws, w);
    attn_tensor *ty = cases[ci].in_place ? tx : upload_typed(ctx, cases[ci].t, 4, shape, NULL);
    float *xr = download(tx), *wr = download(tw);
    if (attn_rms_norm(ctx, tx, tw, eps, cases[ci].offset, ty))
      fail_msg("rmsnorm %zu: %s", ci, attn_last_error());
    float *got = download(ty);
    double *want = malloc((size_t)n * sizeof *want);
    for (int64_t row = 0; row < B * H * S; row++) {
      double ss = 0;
      for (int64_t d = 0; d < D; d++) ss += (double)xr[row * D + d] * xr[row * D + d];
      const double inv = 1.0 / sqrt(ss / (double)D + (double)eps);
      for (int64_t d = 0; d < D; d++)
        want[row * D + d] = xr[row * D + d] * inv * ((cases[ci].offset ? 1.0 : 0.0) + wr[d]);
    }
    char what[96];
    snprintf(what, sizeof what, "rmsnorm case %zu on %s", ci, tu_device);
    assert_true(tu_check_close_typed(what, cases[ci].t, got, want, (size_t)n, NULL));
    free(x), free(w), free(xr), free(wr), free(got), free(want);
    if (ty != tx) attn_tensor_free(ty);
    attn_tensor_free(tx), attn_tensor_free(tw);
  }
}

static void test_rmsnorm_errors(void **state) {
  attn_context *ctx = *state;
  const int64_t xs[2] = {3, 8}, ws[1] = {7}, wgood[1] = {8};
  attn_tensor *x = upload_typed(ctx, ATTN_F32, 2, xs, NULL), *y = upload_typed(ctx, ATTN_F32, 2, xs, NULL);
  attn_tensor *w = upload_typed(ctx, ATTN_F32, 1, ws, NULL), *wg = upload_typed(ctx, ATTN_F32, 1, wgood, NULL);
  tu_assert_fails(attn_rms_norm(ctx, x, w, 1e-6f, false, y), ATTN_ERR_SHAPE, "weight: shape");
  tu_assert_fails(attn_rms_norm(ctx, x, wg, 0.0f, false, y), ATTN_ERR_INVALID_ARG, "eps");
  tu_assert_fails(attn_rms_norm(ctx, x, NULL, 1e-6f, false, y), ATTN_ERR_INVALID_ARG, "weight: NULL");
  tu_assert_fails(attn_rms_norm(ctx, x, wg, 1e-6f, false, wg), ATTN_ERR_SHAPE, "y: shape");
  attn_tensor_free(x), attn_tensor_free(y), attn_tensor_free(w), attn_tensor_free(wg);
}

int main(void) {
  const struct CMUnitTest host[] = {
      cmocka_unit_test(test_frequencies_vs_transformers),
      cmocka_unit_test(test_frequency_errors),
  };
  if (cmocka_run_group_tests(host, NULL, NULL)) return 1;
  const struct CMUnitTest tests[] = {
      cmocka_unit_test_setup_teardown(test_rope_vs_double, tu_open_device, tu_close_device),
      cmocka_unit_test_setup_teardown(test_rope_yarn_and_tables, tu_open_device, tu_close_device),
      cmocka_unit_test_setup_teardown(test_rmsnorm_vs_double, tu_open_device, tu_close_device),
      cmocka_unit_test_setup_teardown(test_rmsnorm_errors, tu_open_device, tu_close_device),
  };
  return tu_run_per_device("test_rope", tests);
}
