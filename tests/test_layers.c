/* The Hugging Face fixtures of tests/data/layers replayed through the MHA
 * graph on every device: each case's config.json is mapped to an
 * attn_mha_desc by tools/hf_config.c (the code the `attn layer` command will
 * use), its weights are read from model.safetensors in their stored element
 * type, and the layer runs on x.npy with attention_mask.npy and
 * position_ids.npy; the output must equal out.npy (what transformers
 * computed, in float64) on the rows where attention_mask is 1. Decode cases
 * (meta.json cache_steps K > 0) also run through a KV cache: a prefill of
 * S - K tokens, then K single-token steps, which must equal out.npy as well.
 *
 * Tolerance: max |got - ref| <= 1e-5 + 1e-4 * max|ref| over the compared
 * rows. The graph computes in float32 (f32 activations and intermediates,
 * fp32 accumulation), out.npy is float64 rounded to float32 (README:
 * "an implementation that computes in float32 should expect to land within a
 * few 1e-6 relative"), so the bound leaves a margin of some 10x.
 *
 * 16-bit weights (llama_bf16, qwen2_f16): the weights are uploaded as BF16 /
 * F16 tensors, their stored bits unchanged, and the graph widens each to
 * fp32 exactly when it reads it. out.npy was computed from exactly these
 * values (README: "any difference from out.npy is the implementation's own
 * arithmetic error"), and the activations, q/k/v, the attention output and
 * out stay f32 (desc.dtype = kv_dtype = F32). The arithmetic is therefore
 * the same float32 arithmetic as in the f32 cases, with no rounding of the
 * weights to add, and the same bound applies; the worst error is printed.
 *
 * Families the graph cannot run yet are listed with the reason they are
 * refused and reported as skipped (cmocka skip()): the test checks that they
 * are refused with ATTN_ERR_UNSUPPORTED for that reason, so the day the graph
 * takes them, this test fails until the case is enabled. */
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
#include "hf_config.h"
#include "npy.h"
#include "safetensors.h"
#include "testutil.h"

typedef struct fcase {
  const char *name;
  /* NULL: runs. Otherwise the case is skipped with this reason, and `refusal`
   * must be in the message of the ATTN_ERR_UNSUPPORTED it is refused with. */
  const char *skip, *refusal;
} fcase;


static const fcase cases[] = {
    {"llama_left", NULL, NULL},
    {"llama_right", NULL, NULL},
    {"llama_decode", NULL, NULL},
    {"llama_bf16", NULL, NULL},
    {"llama_rope_linear", NULL, NULL},
    {"llama_rope_dynamic", NULL, NULL},
    {"llama_rope_llama3", NULL, NULL},
    {"llama_rope_yarn", NULL, NULL},
    {"mistral_left", NULL, NULL},
    {"mistral_right", NULL, NULL},
    {"mistral_decode", NULL, NULL},
    {"qwen2_left", NULL, NULL},
    {"qwen2_right", NULL, NULL},
    {"qwen2_decode", NULL, NULL},
    {"qwen2_f16", NULL, NULL},
    {"qwen3_left", NULL, NULL},
    {"qwen3_right", NULL, NULL},
    {"qwen3_decode", NULL, NULL},
    {"gemma2_left_sliding", NULL, NULL},
    {"gemma2_right_full", NULL, NULL},
    {"gemma2_decode_sliding", NULL, NULL},
    {"gemma2_decode_full", NULL, NULL},
    {"gemma3_left_sliding", NULL, NULL},
    {"gemma3_right_full", NULL, NULL},
    {"gemma3_decode_sliding", NULL, NULL},
    {"gemma3_decode_full", NULL, NULL},
    {"phi3_left", NULL, NULL},
    {"phi3_right", NULL, NULL},
    {"phi3_decode", NULL, NULL},
    {"gpt_oss_left_sliding", NULL, NULL},
    {"gpt_oss_right_full", NULL, NULL},
    {"gpt_oss_decode_sliding", NULL, NULL},
    {"bert_left", NULL, NULL},
    {"bert_right", NULL, NULL},
    {"gpt2_left", NULL, NULL},
    {"gpt2_right_bare", NULL, NULL},
    {"gpt2_decode", NULL, NULL},
    {"bloom_left", NULL, NULL},
    {"bloom_right_6heads", NULL, NULL},
    {"bloom_decode", NULL, NULL},
};
enum { NCASES = sizeof cases / sizeof cases[0] };

static char layers_dir[1024]; /* <srcdir>/tests/data/layers */

/* ---- one case's files ------------------------------------------------------------------- */

typedef struct fixture {
  int64_t layer, K, B, S, E;
  st_config *meta, *cfg;
  st_checkpoint *ck;
  npy_array x, am, pos, out;
  hf_layer hl;
  hf_weights w;
  attn_mha *g;
  attn_kv_cache *cache;
  attn_tensor *tx, *to;
} fixture;

static void fixture_free(fixture *f) {
  attn_kv_cache_free(f->cache);
  attn_mha_free(f->g);
  attn_tensor_free(f->tx), attn_tensor_free(f->to);
  hf_weights_free(&f->w);
  st_close(f->ck);
  st_config_free(f->meta), st_config_free(f->cfg);
  npy_free(&f->x), npy_free(&f->am), npy_free(&f->pos), npy_free(&f->out);
  memset(f, 0, sizeof *f);
}

static void path_in(char *buf, size_t cap, const char *c, const char *file) {
  snprintf(buf, cap, "%s/%s/%s", layers_dir, c, file);
}

static void read_npy(const char *c, const char *file, unsigned dtype, int rank, npy_array *a) {
  char path[1200], err[NPY_ERR_MAX];
  path_in(path, sizeof path, c, file);
  const npy_want w = {dtype, rank, rank};
  if (npy_read_file(path, &w, a, err, sizeof err)) fail_msg("%s", err);
}

/* Everything but the graph: meta.json, config.json mapped, the .npy files. */
static void fixture_load(const char *c, fixture *f) {
  memset(f, 0, sizeof *f);
  char path[1200], err[HF_ERR_MAX];
  path_in(path, sizeof path, c, "meta.json");
  if (st_config_load(path, &f->meta, err, sizeof err)) fail_msg("%s", err);
  st_json m;
  st_config_root(f->meta, &m);
  if (st_json_int(&m, "layer", &f->layer, NULL, err, sizeof err) ||
      st_json_int(&m, "cache_steps", &f->K, NULL, err, sizeof err))
    fail_msg("%s", err);
  path_in(path, sizeof path, c, "config.json");
  if (st_config_load(path, &f->cfg, err, sizeof err)) fail_msg("%s", err);
  read_npy(c, "x.npy", NPY_F32, 3, &f->x);
  read_npy(c, "attention_mask.npy", NPY_I32, 2, &f->am);
  read_npy(c, "position_ids.npy", NPY_I32, 2, &f->pos);
  read_npy(c, "out.npy", NPY_F32, 3, &f->out);
  f->B = f->x.shape[0], f->S = f->x.shape[1], f->E = f->x.shape[2];
  assert_true(f->am.shape[0] == f->B && f->am.shape[1] == f->S);
  assert_true(f->pos.shape[0] == f->B && f->pos.shape[1] == f->S);
  assert_true(f->out.shape[0] == f->B && f->out.shape[1] == f->S && f->out.shape[2] == f->E);
  assert_true(f->K >= 0 && f->K < f->S);
}

/* ---- comparison ------------------------------------------------------------------------- */

/* got [B,S,E] against out.npy on the rows where attention_mask is 1. */
static void compare(const char *c, const char *how, const fixture *f, const float *got) {
  const float *ref = f->out.data;
  const int32_t *am = f->am.data;
  double mref = 0, merr = 0;
  int64_t worst = -1, rows = 0;
  for (int64_t r = 0; r < f->B * f->S; r++) {
    if (!am[r]) continue;
    rows++;
    for (int64_t e = 0; e < f->E; e++) mref = fmax(mref, fabs((double)ref[r * f->E + e]));
  }
  for (int64_t r = 0; r < f->B * f->S; r++) {
    if (!am[r]) continue;
    for (int64_t e = 0; e < f->E; e++) {
      const int64_t i = r * f->E + e;
      const double d = fabs((double)got[i] - (double)ref[i]);
      if (!(d <= merr)) { /* NaN is worst */
        merr = isnan(d) ? INFINITY : d;
        worst = i;
      }
    }
  }
  const double bound = 1e-5 + 1e-4 * mref;
  printf("  %-24s %-8s on %-10s %3lld rows: max err %.3g (%.2g x max|ref| %.3g), bound %.3g\n", c,
         how, tu_device, (long long)rows, merr, merr / mref, mref, bound);
  if (!(merr <= bound)) {
    const int64_t E = f->E, b = worst / (f->S * E), s = worst / E % f->S, e = worst % E;
    fail_msg("%s (%s) on %s: out[%lld,%lld,%lld] = %.9g, want %.9g: error %.3g > bound %.3g", c,
             how, tu_device, (long long)b, (long long)s, (long long)e, (double)got[worst],
             (double)ref[worst], merr, bound);
  }
}

/* ---- the runs --------------------------------------------------------------------------- */

static void run_full(fixture *f, float *got) {
  attn_mha_run_args a = ATTN_MHA_RUN_ARGS_INIT;
  a.x = f->tx, a.out = f->to, a.attention_mask = f->am.data;
  a.position_ids = f->hl.rope.type != ATTN_ROPE_NONE ? f->pos.data : NULL;
  if (attn_mha_run_ex(f->g, &a)) fail_msg("attn_mha_run_ex: %s", attn_last_error());
  assert_int_equal(attn_tensor_read(f->to, got, (size_t)(f->B * f->S * f->E)), ATTN_OK);
}

/* Tokens t0 .. t0+n-1 of every row through the cache; their outputs into
 * got [B,S,E] at the same places. */
static void run_cached(attn_context *ctx, fixture *f, int64_t t0, int64_t n, float *got) {
  const int64_t B = f->B, S = f->S, E = f->E, sh[3] = {B, n, E};
  float *xp = malloc((size_t)(B * n * E) * sizeof *xp), *op = malloc((size_t)(B * n * E) * sizeof *op);
  int32_t *amp = malloc((size_t)(B * n) * sizeof *amp), *pp = malloc((size_t)(B * n) * sizeof *pp);
  const float *x = f->x.data;
  const int32_t *am = f->am.data, *pos = f->pos.data;
  for (int64_t b = 0; b < B; b++) {
    memcpy(xp + b * n * E, x + (b * S + t0) * E, (size_t)(n * E) * sizeof *xp);
    memcpy(amp + b * n, am + b * S + t0, (size_t)n * sizeof *amp);
    memcpy(pp + b * n, pos + b * S + t0, (size_t)n * sizeof *pp);
  }
  attn_tensor *tx = NULL, *to = NULL;
  assert_int_equal(attn_tensor_create(ctx, 3, sh, &tx), ATTN_OK);
  assert_int_equal(attn_tensor_create(ctx, 3, sh, &to), ATTN_OK);
  assert_int_equal(attn_tensor_write(tx, xp, (size_t)(B * n * E)), ATTN_OK);
  attn_mha_run_args a = ATTN_MHA_RUN_ARGS_INIT;
  a.x = tx, a.out = to, a.cache = f->cache, a.attention_mask = amp;
  a.position_ids = f->hl.rope.type != ATTN_ROPE_NONE ? pp : NULL;
  if (attn_mha_run_ex(f->g, &a))
    fail_msg("cached run of tokens %lld..%lld: %s", (long long)t0, (long long)(t0 + n - 1),
             attn_last_error());
  assert_int_equal(attn_tensor_read(to, op, (size_t)(B * n * E)), ATTN_OK);
  for (int64_t b = 0; b < B; b++)
    memcpy(got + (b * S + t0) * E, op + b * n * E, (size_t)(n * E) * sizeof *op);
  for (int64_t b = 0; b < B; b++) assert_int_equal(attn_kv_cache_row_length(f->cache, b), t0 + n);
  attn_tensor_free(tx), attn_tensor_free(to);
  free(xp), free(op), free(amp), free(pp);
}

typedef struct tstate {
  const fcase *c;
  attn_context *ctx;
} tstate;

static void test_case(void **state) {
  tstate *ts = *state;
  const fcase *c = ts->c;
  attn_context *ctx = ts->ctx;
  fixture f;
  fixture_load(c->name, &f);
  char err[HF_ERR_MAX];
  attn_status s = hf_layer_from_config(f.cfg, f.layer, &f.hl, err, sizeof err);
  if (s == ATTN_OK) {
    char path[1200];
    path_in(path, sizeof path, c->name, "model.safetensors");
    if (st_open(path, &f.ck, err, sizeof err)) fail_msg("%s", err);
  }
  attn_mha_desc d = ATTN_MHA_DESC_INIT;
  if (s == ATTN_OK) {
    hf_layer_desc(&f.hl, &d);
    d.max_batch = f.B, d.max_seq = f.S, d.dtype = ATTN_F32, d.kv_dtype = ATTN_F32;
    if (hf_weights_load(ctx, f.ck, &f.hl, &f.w, &d, err, sizeof err)) fail_msg("%s", err);
    assert_int_equal(f.hl.d_model, f.E);
    s = attn_mha_create(ctx, &d, &f.w.mw, &f.g);
    if (s) snprintf(err, sizeof err, "%s", attn_last_error());
  }
  if (c->skip) {
    if (s != ATTN_ERR_UNSUPPORTED || !strstr(err, c->refusal))
      fail_msg("%s is listed as skipped (%s) but was not refused for it: status %d, \"%s\"",
               c->name, c->skip, (int)s, s ? err : "");
    printf("  %-24s skipped: %s (refused: %s)\n", c->name, c->skip, err);
    fixture_free(&f);
    skip();
  }
  if (s) fail_msg("%s: %s", c->name, err);
  const int64_t n = f.B * f.S * f.E, xs[3] = {f.B, f.S, f.E};
  assert_int_equal(attn_tensor_create(ctx, 3, xs, &f.tx), ATTN_OK);
  assert_int_equal(attn_tensor_create(ctx, 3, xs, &f.to), ATTN_OK);
  assert_int_equal(attn_tensor_write(f.tx, f.x.data, (size_t)n), ATTN_OK);
  float *got = malloc((size_t)n * sizeof *got);
  run_full(&f, got);
  char how[32];
  snprintf(how, sizeof how, "%s", f.w.wdtype == ATTN_F32 ? "full" : attn_dtype_str(f.w.wdtype));
  compare(c->name, how, &f, got);
  if (f.K > 0) {
    /* prefill S - K tokens, then K single steps; the window (sliding
     * layers) hides the old keys as DynamicCache's crop does */
    assert_int_equal(attn_kv_cache_create(f.g, f.B, f.S, &f.cache), ATTN_OK);
    for (int64_t i = 0; i < n; i++) got[i] = NAN;
    run_cached(ctx, &f, 0, f.S - f.K, got);
    for (int64_t t = f.S - f.K; t < f.S; t++) run_cached(ctx, &f, t, 1, got);
    snprintf(how, sizeof how, "%lld+%lldx1", (long long)(f.S - f.K), (long long)f.K);
    compare(c->name, how, &f, got);
  }
  free(got);
  fixture_free(&f);
}

/* ---- the mapping's refusals ------------------------------------------------------------- */

static attn_status map_json(const char *json, hf_layer *l, char *err) {
  st_config *c = NULL;
  char e2[HF_ERR_MAX];
  if (st_config_parse(json, strlen(json), "config.json", &c, e2, sizeof e2)) fail_msg("%s", e2);
  attn_status s = hf_layer_from_config(c, 0, l, err, HF_ERR_MAX);
  st_config_free(c);
  return s;
}

#define LLAMA_SIZES \
  "\"hidden_size\": 64, \"num_attention_heads\": 4, \"num_key_value_heads\": 2, \"head_dim\": 16"

static void expect_refusal(const char *json, attn_status want, const char *what) {
  hf_layer l;
  char err[HF_ERR_MAX] = "";
  attn_status s = map_json(json, &l, err);
  if (s != want || !strstr(err, what))
    fail_msg("%s: got %d \"%s\", want %d naming \"%s\"", json, (int)s, err, (int)want, what);
}

static void test_mapping_refusals(void **state) {
  (void)state;
  expect_refusal("{\"model_type\": \"falcon\", " LLAMA_SIZES "}", ATTN_ERR_UNSUPPORTED,
                 "model_type 'falcon' is not supported");
  expect_refusal("{\"hidden_size\": 64}", ATTN_ERR_FORMAT, "model_type");
  expect_refusal("{\"model_type\": \"llama\", " LLAMA_SIZES
                 ", \"rope_parameters\": {\"rope_type\": \"longrope\", \"rope_theta\": 10000}}",
                 ATTN_ERR_UNSUPPORTED, "rope_type 'longrope'");
  expect_refusal("{\"model_type\": \"llama\", " LLAMA_SIZES
                 ", \"rope_parameters\": {\"rope_type\": \"default\", \"rope_theta\": 10000, "
                 "\"short_factor\": [1]}}",
                 ATTN_ERR_UNSUPPORTED, "rope_parameters.short_factor");
  expect_refusal("{\"model_type\": \"bert\", \"hidden_size\": 64, \"num_attention_heads\": 4, "
                 "\"position_embedding_type\": \"relative_key\"}",
                 ATTN_ERR_UNSUPPORTED, "position_embedding_type 'relative_key'");
  expect_refusal("{\"model_type\": \"bert\", \"hidden_size\": 64, \"num_attention_heads\": 4, "
                 "\"is_decoder\": true}",
                 ATTN_ERR_UNSUPPORTED, "is_decoder");
  expect_refusal("{\"model_type\": \"gemma2\", " LLAMA_SIZES
                 ", \"rope_parameters\": {\"rope_type\": \"default\", \"rope_theta\": 10000}, "
                 "\"layer_types\": [\"chunked_attention\"], \"query_pre_attn_scalar\": 16}",
                 ATTN_ERR_UNSUPPORTED, "layer_types[0] 'chunked_attention'");
  expect_refusal("{\"model_type\": \"mistral\", " LLAMA_SIZES ", \"sliding_window\": 8, "
                 "\"rope_parameters\": {\"rope_type\": \"default\", \"rope_theta\": 10000}, "
                 "\"use_bidirectional_attention\": true}",
                 ATTN_ERR_UNSUPPORTED, "use_bidirectional_attention");
  expect_refusal("{\"model_type\": \"llama\", \"hidden_size\": 64, \"num_attention_heads\": 4, "
                 "\"num_key_value_heads\": 3}",
                 ATTN_ERR_FORMAT, "num_key_value_heads 3");
  expect_refusal("{\"model_type\": \"llama\", \"hidden_size\": \"64\", \"num_attention_heads\": 4}",
                 ATTN_ERR_FORMAT, "hidden_size");
  expect_refusal("{\"model_type\": \"gemma2\", " LLAMA_SIZES
                 ", \"rope_parameters\": {\"rope_type\": \"default\", \"rope_theta\": 10000}, "
                 "\"layer_types\": [\"full_attention\"]}",
                 ATTN_ERR_FORMAT, "query_pre_attn_scalar");
  /* the older form: rope_theta and rope_scaling at the top level */
  hf_layer l;
  char err[HF_ERR_MAX] = "";
  assert_int_equal(map_json("{\"model_type\": \"llama\", " LLAMA_SIZES
                            ", \"rope_theta\": 500000, \"max_position_embeddings\": 64, "
                            "\"rope_scaling\": {\"type\": \"linear\", \"factor\": 2.0}}",
                            &l, err),
                   ATTN_OK);
  assert_int_equal(l.rope.type, ATTN_ROPE_LINEAR);
  assert_true(l.rope.theta == 500000 && l.rope.factor == 2.0);
  assert_int_equal(map_json("{\"model_type\": \"gemma3_text\", " LLAMA_SIZES
                            ", \"rope_theta\": 1000000, \"rope_local_base_freq\": 10000, "
                            "\"sliding_window\": 8, \"query_pre_attn_scalar\": 32}",
                            &l, err),
                   ATTN_OK);
  /* layer 0 of gemma 3 slides by the default pattern: the local base */
  assert_true(l.window == 8 && l.rope.theta == 10000 && l.qk_norm && l.norm_offset);
}

static int case_setup(void **state) {
  tstate *t = calloc(1, sizeof *t);
  t->c = *state;
  void *ctx = NULL;
  if (tu_open_device(&ctx)) {
    free(t);
    return -1;
  }
  t->ctx = ctx;
  *state = t;
  return 0;
}

static int case_teardown(void **state) {
  tstate *t = *state;
  void *ctx = t->ctx;
  tu_close_device(&ctx);
  free(t);
  return 0;
}

int main(void) {
  const char *data = getenv("ATTN_TEST_DATA_DIR");
  snprintf(layers_dir, sizeof layers_dir, "%s/layers", data && *data ? data : "tests/data");
  struct CMUnitTest tests[NCASES + 1];
  for (int i = 0; i < NCASES; i++)
    tests[i] = (struct CMUnitTest){cases[i].name, test_case, case_setup, case_teardown,
                                   (void *)&cases[i]};
  tests[NCASES] = (struct CMUnitTest){"mapping_refusals", test_mapping_refusals, NULL, NULL, NULL};
  return tu_run_per_device("test_layers", tests);
}
