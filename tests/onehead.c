/* See onehead.h. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <math.h>
#include <stdlib.h>

#include "onehead.h"
#include "testutil.h"

#define CHECK_OK(call)                                                                 \
  do {                                                                                 \
    attn_status st_ = (call);                                                          \
    if (st_ != ATTN_OK) fail_msg("%s: %s (%s)", #call, attn_last_error(), attn_status_str(st_)); \
  } while (0)

void tu_check_one_head_mha(attn_context *ctx, int64_t E, int64_t S, uint64_t seed,
                           const char *what) {
  uint64_t rng = seed;
  const size_t ee = (size_t)(E * E), se = (size_t)(S * E);
  float *w[4], *bias[4], *x = tu_alloc_uniform(se, &rng, -1, 1);
  attn_tensor *tw[4], *tb[4];
  const int64_t ws[2] = {E, E};
  for (int i = 0; i < 4; i++) {
    w[i] = tu_alloc_uniform(ee, &rng, -0.1f, 0.1f);
    bias[i] = tu_alloc_uniform((size_t)E, &rng, -0.5f, 0.5f);
    CHECK_OK(attn_tensor_create(ctx, 2, ws, &tw[i]));
    CHECK_OK(attn_tensor_write(tw[i], w[i], ee));
    CHECK_OK(attn_tensor_create(ctx, 1, &E, &tb[i]));
    CHECK_OK(attn_tensor_write(tb[i], bias[i], (size_t)E));
  }
  attn_mha_desc d = {.struct_size = sizeof(attn_mha_desc), .d_model = E, .n_heads = 1, .bias = true, .max_batch = 1, .max_seq = S};
  attn_mha_weights mw = {.wq = tw[0], .wk = tw[1], .wv = tw[2], .wo = tw[3],
                         .bq = tb[0], .bk = tb[1], .bv = tb[2], .bo = tb[3]};
  attn_mha *g;
  CHECK_OK(attn_mha_create(ctx, &d, &mw, &g));
  const int64_t xs[3] = {1, S, E};
  attn_tensor *tx, *to;
  CHECK_OK(attn_tensor_create(ctx, 3, xs, &tx));
  CHECK_OK(attn_tensor_write(tx, x, se));
  CHECK_OK(attn_tensor_create(ctx, 3, xs, &to));
  float *got = malloc(se * sizeof *got), *o = malloc(se * sizeof *o), *qkv[3];
  double *y = malloc(se * sizeof *y);
  assert_true(got && o && y);
  tu_fill_nan(got, se); /* an element the graph never writes fails */
  CHECK_OK(attn_tensor_write(to, got, se));
  CHECK_OK(attn_mha_run(g, tx, NULL, to));
  CHECK_OK(attn_tensor_read(to, got, se));

  for (int i = 0; i < 3; i++) {
    tu_linear_double(x, S, E, w[i], bias[i], E, y);
    qkv[i] = malloc(se * sizeof *qkv[i]);
    assert_non_null(qkv[i]);
    for (size_t j = 0; j < se; j++) qkv[i][j] = (float)y[j]; /* the device rounds too */
  }
  tu_sdpa_problem p = {.B = 1, .Hq = 1, .Hkv = 1, .Sq = S, .Skv = S, .D = E, .Dv = E,
                       .q = qkv[0], .k = qkv[1], .v = qkv[2],
                       .scale = (double)(float)(1.0 / sqrt((double)E))};
  tu_sdpa_double(&p, y, NULL, NULL);
  for (size_t j = 0; j < se; j++) o[j] = (float)y[j];
  tu_linear_double(o, S, E, w[3], bias[3], E, y);
  assert_true(tu_check_close(what, got, y, se, NULL));

  free(got), free(y), free(o), free(x);
  for (int i = 0; i < 3; i++) free(qkv[i]);
  for (int i = 0; i < 4; i++) {
    free(w[i]), free(bias[i]);
    attn_tensor_free(tw[i]), attn_tensor_free(tb[i]);
  }
  attn_tensor_free(tx), attn_tensor_free(to);
  attn_mha_free(g);
}
