/* The pocl backend's decode path (backends/pocl/decode.c, kernels/decode.cl):
 * few query rows over many keys, keys split into chunks whose partials a
 * second kernel combines. tests/test_sdpa covers the features on every
 * device, but its decode-shaped cases mostly request the weights (which the
 * flash kernel computes), so here: Sq = 1..4 (routed to the decode path by
 * default) and 5..9 (with ATTN_POCL_DECODE=1), without weights, over enough
 * keys for several chunks, GQA groups from 1 to 16 query heads (one and
 * several row blocks), masks of both kinds with every broadcast, causal,
 * kv_lens (0, partial, full), D != Dv, D up to 256, row-strided layouts,
 * NaN confinement, and every problem also through the flash kernel
 * (ATTN_POCL_DECODE=0), both compared with tu_sdpa_double. And the
 * backend's linear stage (kernels/linear.cl) through one-head MHA graphs.
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
#include "onehead.h"
#include "testutil.h"

static attn_context *g_ctx;
static char g_dev[80];

#define CHECK_OK(call)                                                                 \
  do {                                                                                 \
    attn_status st_ = (call);                                                          \
    if (st_ != ATTN_OK) fail_msg("%s: %s (%s)", #call, attn_last_error(), attn_status_str(st_)); \
  } while (0)

typedef struct dcase {
  int64_t B, Hq, Hkv, Sq, Skv, D, Dv;
  attn_mask_kind mask;
  char mb, mh; /* mask broadcast: '1', or 'B' / 'H' for full */
  bool causal, kv_lens, lse, bshd;
  int nan; /* 1: NaN in one hidden key's value and one visible key (see run) */
} dcase;

static const dcase cases[] = {
    /* the decode target, scaled down in Skv */
    {1, 32, 8, 1, 2048, 128, 128, ATTN_MASK_NONE, 0, 0, false, false, true, false, 0},
    {2, 8, 2, 1, 1000, 64, 64, ATTN_MASK_NONE, 0, 0, false, true, true, false, 0},
    {1, 4, 4, 1, 777, 256, 256, ATTN_MASK_ADDITIVE, '1', 'H', false, false, true, true, 0},
    {1, 16, 1, 1, 1500, 128, 64, ATTN_MASK_BOOL, '1', 'H', false, false, true, false, 0},
    {3, 6, 2, 2, 900, 32, 48, ATTN_MASK_BOOL, 'B', '1', true, true, true, false, 0},
    {1, 8, 2, 3, 1200, 128, 128, ATTN_MASK_NONE, 0, 0, true, false, true, true, 0},
    {2, 4, 1, 4, 513, 8, 8, ATTN_MASK_ADDITIVE, 'B', 'H', true, true, false, false, 0},
    {1, 2, 2, 1, 5, 16, 24, ATTN_MASK_NONE, 0, 0, true, false, true, false, 0},
    {1, 8, 8, 2, 3000, 40, 40, ATTN_MASK_NONE, 0, 0, false, false, true, true, 0},
    {1, 4, 2, 4, 3, 64, 64, ATTN_MASK_BOOL, '1', '1', true, false, true, false, 0},
    {1, 4, 2, 1, 600, 64, 64, ATTN_MASK_BOOL, '1', 'H', false, false, true, false, 1},
    /* past the default routing: ATTN_POCL_DECODE=1 */
    {1, 4, 1, 5, 700, 64, 64, ATTN_MASK_BOOL, '1', 'H', true, true, true, false, 0},
    {2, 6, 3, 9, 400, 128, 32, ATTN_MASK_ADDITIVE, 'B', 'H', true, true, true, true, 0},
};
#define NCASES (sizeof cases / sizeof cases[0])
static char names[NCASES][128];

/* A [B,H,S,X] tensor from row-major host data; bshd: stored as [B,S,H,X+2]
 * (rows strided, unit stride along X), as a KV cache often is. */
static attn_tensor *make(const float *host, int64_t B, int64_t H, int64_t S, int64_t X,
                         bool bshd, attn_tensor **base_out) {
  const int64_t shape[4] = {B, H, S, X};
  int64_t st[4], span;
  if (bshd) {
    st[3] = 1, st[1] = X + 2, st[2] = H * (X + 2), st[0] = S * H * (X + 2);
    span = B * S * H * (X + 2);
  } else {
    st[3] = 1, st[2] = X, st[1] = S * X, st[0] = H * S * X;
    span = B * H * S * X;
  }
  attn_tensor *base, *view;
  CHECK_OK(attn_tensor_create(g_ctx, 1, &span, &base));
  float *fill = malloc((size_t)span * sizeof *fill);
  assert_non_null(fill);
  tu_fill_nan(fill, (size_t)span); /* the gaps: read by a bad stride, they poison */
  CHECK_OK(attn_tensor_write(base, fill, (size_t)span));
  free(fill);
  CHECK_OK(attn_tensor_view(base, 0, 4, shape, st, &view));
  if (host) CHECK_OK(attn_tensor_write(view, host, (size_t)(B * H * S * X)));
  *base_out = base;
  return view;
}

/* Runs c once with ATTN_POCL_DECODE=mode ("" unsets it) and checks out and lse. */
static void run(const dcase *c, const char *mode) {
  tu_sdpa_problem p = {.B = c->B, .Hq = c->Hq, .Hkv = c->Hkv, .Sq = c->Sq, .Skv = c->Skv,
                       .D = c->D, .Dv = c->Dv, .causal = c->causal};
  p.scale = (double)(float)(1.0 / sqrt((double)c->D));
  uint64_t s = 0xDEC0DE00u + (uint64_t)(c - cases);
  float *q = tu_alloc_uniform((size_t)(c->B * c->Hq * c->Sq * c->D), &s, -2, 2);
  float *k = tu_alloc_uniform((size_t)(c->B * c->Hkv * c->Skv * c->D), &s, -1, 1);
  float *v = tu_alloc_uniform((size_t)(c->B * c->Hkv * c->Skv * c->Dv), &s, -1, 1);
  p.q = q, p.k = k, p.v = v;
  float *mask = NULL;
  if (c->mask != ATTN_MASK_NONE) {
    p.mask_b = c->mb == 'B' ? c->B : 1;
    p.mask_h = c->mh == 'H' ? c->Hq : 1;
    const size_t n = (size_t)(p.mask_b * p.mask_h * c->Sq * c->Skv);
    mask = tu_alloc_uniform(n, &s, -3, 1);
    for (size_t i = 0; i < n; i++) {
      const bool hide = tu_rand_u64(&s) % 4 == 0;
      if (c->mask == ATTN_MASK_BOOL) mask[i] = hide ? 0.0f : 1.0f;
      else if (hide) mask[i] = -INFINITY;
    }
    /* one row of each mask sees nothing: zeros and lse -inf */
    for (int64_t j = 0; j < c->Skv; j++)
      mask[j] = c->mask == ATTN_MASK_BOOL ? 0.0f : -INFINITY;
    p.mask = mask, p.mask_kind = c->mask;
  }
  if (c->nan) {
    /* kv head 0: key 7 hidden from every row (a boolean mask; an additive
     * -inf gives probability 0, and 0 * NaN is NaN), its value NaN: no row
     * may turn NaN; kv head 1: key 9's value NaN and visible: every row of
     * that head's group turns NaN in that column only. */
    for (int64_t r = 0; r < p.mask_b * p.mask_h * c->Sq; r++) mask[r * c->Skv + 7] = 0.0f;
    v[7 * c->Dv + 3] = NAN;
    v[(1 * c->Skv + 9) * c->Dv + 5] = NAN;
    for (int64_t r = 1; r < p.mask_b * p.mask_h * c->Sq; r++) mask[r * c->Skv + 9] = 1.0f;
  }
  int32_t lens[8];
  if (c->kv_lens) {
    for (int64_t b = 0; b < c->B; b++)
      lens[b] = b == 0 ? (int32_t)(c->Skv / 3) : b == 1 ? 0 : (int32_t)c->Skv;
    p.kv_lens = lens;
  }

  attn_tensor *bq, *bk, *bv, *bo, *bm = NULL, *tm = NULL, *tl = NULL;
  attn_tensor *tq = make(q, c->B, c->Hq, c->Sq, c->D, c->bshd, &bq);
  attn_tensor *tk = make(k, c->B, c->Hkv, c->Skv, c->D, c->bshd, &bk);
  attn_tensor *tv = make(v, c->B, c->Hkv, c->Skv, c->Dv, c->bshd, &bv);
  attn_tensor *to = make(NULL, c->B, c->Hq, c->Sq, c->Dv, c->bshd, &bo);
  if (mask) tm = make(mask, p.mask_b, p.mask_h, c->Sq, c->Skv, false, &bm);
  if (c->lse) {
    const int64_t ls[3] = {c->B, c->Hq, c->Sq}, n = c->B * c->Hq * c->Sq;
    CHECK_OK(attn_tensor_create(g_ctx, 3, ls, &tl));
    float *nan = malloc((size_t)n * sizeof *nan);
    assert_non_null(nan);
    tu_fill_nan(nan, (size_t)n);
    CHECK_OK(attn_tensor_write(tl, nan, (size_t)n));
    free(nan);
  }
  attn_sdpa_args a = ATTN_SDPA_ARGS_INIT;
  a.q = tq, a.k = tk, a.v = tv, a.out = to, a.mask = tm;
  a.mask_kind = mask ? c->mask : ATTN_MASK_NONE;
  a.causal = c->causal, a.kv_lens = c->kv_lens ? lens : NULL, a.lse = tl;
  if (*mode) setenv("ATTN_POCL_DECODE", mode, 1);
  else unsetenv("ATTN_POCL_DECODE");
  CHECK_OK(attn_sdpa(g_ctx, &a));
  CHECK_OK(attn_synchronize(g_ctx));
  unsetenv("ATTN_POCL_DECODE");

  const size_t rows = (size_t)(c->B * c->Hq * c->Sq);
  float *got = malloc(rows * (size_t)c->Dv * sizeof *got), *gl = malloc(rows * sizeof *gl);
  double *want = malloc(rows * (size_t)c->Dv * sizeof *want), *wl = malloc(rows * sizeof *wl);
  assert_true(got && gl && want && wl);
  CHECK_OK(attn_tensor_read(to, got, rows * (size_t)c->Dv));
  if (tl) CHECK_OK(attn_tensor_read(tl, gl, rows));
  tu_sdpa_double(&p, want, NULL, wl);
  int ok = tu_check_close("out", got, want, rows * (size_t)c->Dv, NULL);
  if (tl) ok &= tu_check_close("lse", gl, wl, rows, NULL);
  if (!ok) fail_msg("%s with ATTN_POCL_DECODE='%s'", names[c - cases], mode);
  if (mask) {
    /* the oracle agrees that row 0 of the mask sees nothing (the test does what it says) */
    assert_true(want[0] == 0.0 && isinf(wl[0]) && wl[0] < 0);
    for (int64_t e = 0; e < c->Dv; e++) assert_true(got[e] == 0.0f);
  }
  if (c->nan) {
    /* the hidden NaN reached no row, the visible one every row of its group's column */
    const int64_t G = c->Hq / c->Hkv;
    for (size_t i = 0; i < rows * (size_t)c->Dv; i++) {
      const int64_t h = (int64_t)i / (c->Sq * c->Dv), e = (int64_t)i % c->Dv;
      if (isnan(got[i]) != (h >= G && h < 2 * G && e == 5))
        fail_msg("out[h=%lld, e=%lld] = %g", (long long)h, (long long)e, (double)got[i]);
    }
  }
  free(got), free(gl), free(want), free(wl);
  attn_tensor_free(tq), attn_tensor_free(tk), attn_tensor_free(tv), attn_tensor_free(to);
  attn_tensor_free(bq), attn_tensor_free(bk), attn_tensor_free(bv), attn_tensor_free(bo);
  attn_tensor_free(tm), attn_tensor_free(bm), attn_tensor_free(tl);
  free(q), free(k), free(v), free(mask);
}

static void decode_case(void **state) {
  const dcase *c = *state;
  run(c, c->Sq <= 4 ? "" : "1"); /* the decode path */
  run(c, "0");                    /* the flash kernel, same problem */
}

/* ---- the linear stage (kernels/linear.cl) through a one-head MHA graph ----
 * With H = 1 the heads need no splitting, so the double reference is
 * tu_linear_double, tu_sdpa_double, tu_linear_double. E = 136 is 8 blocks of
 * 16 along k plus a tail of 8, E = 243 has a tail of 3; S = 3, 9, 45 and
 * N = 136 are not multiples of the 8 x 3 tile, N = 243 is. The SDPA runs on
 * the decode path (ATTN_POCL_DECODE=1) where D allows it (E = 243 leaves it
 * to the flash kernel). */
static void mha_one_head(int64_t E, int64_t S) {
  char what[64];
  snprintf(what, sizeof what, "mha E=%lld S=%lld", (long long)E, (long long)S);
  setenv("ATTN_POCL_DECODE", "1", 1);
  tu_check_one_head_mha(g_ctx, E, S, 0x11EA0000u + (uint64_t)(E * 1000 + S), what);
  unsetenv("ATTN_POCL_DECODE");
}
static void linear_E136_S3(void **state) { (void)state; mha_one_head(136, 3); }
static void linear_E136_S45(void **state) { (void)state; mha_one_head(136, 45); }
static void linear_E243_S9(void **state) { (void)state; mha_one_head(243, 9); }

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
  struct CMUnitTest tests[NCASES + 3];
  tests[NCASES] = (struct CMUnitTest)cmocka_unit_test(linear_E136_S3);
  tests[NCASES + 1] = (struct CMUnitTest)cmocka_unit_test(linear_E136_S45);
  tests[NCASES + 2] = (struct CMUnitTest)cmocka_unit_test(linear_E243_S9);
  for (size_t i = 0; i < NCASES; i++) {
    const dcase *c = &cases[i];
    snprintf(names[i], sizeof names[i], "B%lld_Hq%lld_Hkv%lld_Sq%lld_Skv%lld_D%lld_Dv%lld%s%s%s%s%s",
             (long long)c->B, (long long)c->Hq, (long long)c->Hkv, (long long)c->Sq,
             (long long)c->Skv, (long long)c->D, (long long)c->Dv,
             c->mask == ATTN_MASK_NONE ? "" : c->mask == ATTN_MASK_BOOL ? "_bool" : "_add",
             c->causal ? "_causal" : "", c->kv_lens ? "_kvlens" : "", c->bshd ? "_BSHD" : "",
             c->nan ? "_nan" : "");
    tests[i] = (struct CMUnitTest){names[i], decode_case, NULL, NULL, (void *)c};
  }
  char sel[16][64];
  const int n = tu_devices("pocl_decode", sel, 16);
  int failed = 0, ran = 0;
  for (int d = 0; d < n; d++) {
    if (strncmp(sel[d], "pocl", 4) != 0) continue;
    snprintf(g_dev, sizeof g_dev, "%.63s", sel[d]);
    char group[128];
    snprintf(group, sizeof group, "pocl_decode on %s", g_dev);
    failed += _cmocka_run_group_tests(group, tests, NCASES + 3, open_device, close_device);
    ran++;
  }
  if (!ran) {
    printf("no pocl device: nothing to run\n");
    return 77;
  }
  return failed ? 1 : 0;
}
