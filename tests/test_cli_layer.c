/* `attn layer` from the outside (issue 10, "Checkpoints as users have them"):
 * the built binary ($ATTN_ATTN_BIN), run with posix_spawn on fixtures of
 * tests/data/layers (one layer of a tiny Hugging Face model, and the output
 * transformers computed for it in float64), on ref and, each where it has a
 * device, pocl and clblast: the 34 cases of the families it runs, the decode
 * ones with --cache-steps K (a prefill, then K single steps). Each run also
 * passes --check (the device against ref, exit 0). Its --out must equal the
 * case's out.npy on the rows where attention_mask is 1, within
 * 1e-5 + 1e-4 * max|ref| (the bound of tests/test_layers.c, which replays
 * every case through the API: fp32 arithmetic against a float64 reference,
 * also for 16-bit weights, which are exact inputs). Other input forms (a
 * directory, a sharded index, a bool mask, --dtype bf16 and f16) and the
 * refusals: bad input exits 2 with one line naming the option or file, and
 * leaves no --out. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <math.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "npy.h"
#include "spawn.h"

static const char *bin;
static char dir[256];
static char layers[1024]; /* <srcdir>/tests/data/layers */
static bool have_pocl, have_clblast;

#define RUN(r, ...) SPAWN_RUN((r), bin, dir, __VA_ARGS__)

static bool exists(const char *path) {
  struct stat st;
  return stat(path, &st) == 0;
}

static void case_file(char *buf, size_t cap, const char *c, const char *file) {
  snprintf(buf, cap, "%s/%s%s%s", layers, c, *file ? "/" : "", file);
}

static void read_npy(const char *path, unsigned dtype, int rank, npy_array *a) {
  char err[NPY_ERR_MAX];
  const npy_want w = {dtype, rank, rank};
  if (npy_read_file(path, &w, a, err, sizeof err)) {
    print_error("%s\n", err);
    fail();
  }
}

/* got [B,S,E] against the case's out.npy on the rows where attention_mask is 1 */
static void compare_with_fixture(const char *c, const char *label, const char *dev,
                                 const char *got_path) {
  char p[1200];
  npy_array got, ref, am;
  read_npy(got_path, NPY_F32, 3, &got);
  case_file(p, sizeof p, c, "out.npy");
  read_npy(p, NPY_F32, 3, &ref);
  case_file(p, sizeof p, c, "attention_mask.npy");
  read_npy(p, NPY_I32, 2, &am);
  for (int i = 0; i < 3; i++) assert_int_equal(got.shape[i], ref.shape[i]);
  const int64_t rows = ref.shape[0] * ref.shape[1], E = ref.shape[2];
  assert_int_equal(am.count, (size_t)rows);
  const float *g = got.data, *r = ref.data;
  const int32_t *m = am.data;
  double mref = 0, merr = 0;
  for (int64_t i = 0; i < rows; i++)
    if (m[i])
      for (int64_t e = 0; e < E; e++) mref = fmax(mref, fabs((double)r[i * E + e]));
  for (int64_t i = 0; i < rows; i++)
    if (m[i])
      for (int64_t e = 0; e < E; e++) {
        double d = fabs((double)g[i * E + e] - (double)r[i * E + e]);
        if (!(d <= merr)) merr = isnan(d) ? INFINITY : d;
      }
  const double bound = 1e-5 + 1e-4 * mref;
  printf("  %-27s on %-7s max err %.3g (max|ref| %.3g), bound %.3g\n", label, dev, merr, mref,
         bound);
  if (!(merr <= bound)) {
    print_error("%s on %s: max err %.3g > bound %.3g\n", label, dev, merr, bound);
    fail();
  }
  npy_free(&got), npy_free(&ref), npy_free(&am);
}

typedef struct lcase {
  const char *name;
  const char *layer, *cache_steps; /* meta.json's layer and cache_steps */
  bool as_dir;                     /* --checkpoint DIR (config.json found there) */
} lcase;

/* Every fixture case, the decode ones with their --cache-steps, llama_left
 * also as a directory. */
static const lcase cases[] = {
    {"llama_left", "1", "0", true},
    {"bloom_decode", "1", "4", false},
    {"bloom_left", "1", "0", false},
    {"bloom_right_6heads", "1", "0", false},
    {"gpt2_decode", "1", "4", false},
    {"gpt2_left", "1", "0", false},
    {"gpt2_right_bare", "1", "0", false},
    {"bert_left", "1", "0", false},
    {"bert_right", "1", "0", false},
    {"gemma2_decode_full", "1", "4", false},
    {"gemma2_decode_sliding", "0", "4", false},
    {"gemma2_left_sliding", "0", "0", false},
    {"gemma2_right_full", "1", "0", false},
    {"gemma3_decode_full", "1", "4", false},
    {"gemma3_decode_sliding", "0", "4", false},
    {"gemma3_left_sliding", "0", "0", false},
    {"gemma3_right_full", "1", "0", false},
    {"gpt_oss_decode_sliding", "0", "4", false},
    {"gpt_oss_left_sliding", "0", "0", false},
    {"gpt_oss_right_full", "1", "0", false},
    {"llama_bf16", "1", "0", false},
    {"llama_decode", "1", "4", false},
    {"llama_left", "1", "0", false},
    {"llama_right", "1", "0", false},
    {"llama_rope_dynamic", "1", "0", false},
    {"llama_rope_linear", "1", "0", false},
    {"llama_rope_llama3", "1", "0", false},
    {"llama_rope_yarn", "1", "0", false},
    {"mistral_decode", "1", "4", false},
    {"mistral_left", "1", "0", false},
    {"mistral_right", "1", "0", false},
    {"phi3_decode", "1", "4", false},
    {"phi3_left", "1", "0", false},
    {"phi3_right", "1", "0", false},
    {"qwen2_decode", "1", "4", false},
    {"qwen2_f16", "1", "0", false},
    {"qwen2_left", "1", "0", false},
    {"qwen2_right", "1", "0", false},
    {"qwen3_decode", "1", "4", false},
    {"qwen3_left", "1", "0", false},
    {"qwen3_right", "1", "0", false},
};

static void run_case(const lcase *c, const char *dev) {
  char ck[1200], cfg[1200], x[1200], am[1200], pos[1200], out[400];
  case_file(ck, sizeof ck, c->name, c->as_dir ? "" : "model.safetensors");
  case_file(cfg, sizeof cfg, c->name, "config.json");
  case_file(x, sizeof x, c->name, "x.npy");
  case_file(am, sizeof am, c->name, "attention_mask.npy");
  case_file(pos, sizeof pos, c->name, "position_ids.npy");
  snprintf(out, sizeof out, "%s/%s.%s.npy", dir, c->name, dev);
  unlink(out);
  spawn_result r;
  if (c->as_dir)
    RUN(&r, "layer", "--device", dev, "--checkpoint", ck, "--layer", c->layer, "--x", x,
        "--attention-mask", am, "--position-ids", pos, "--cache-steps", c->cache_steps, "--out",
        out, "--check");
  else
    RUN(&r, "layer", "--device", dev, "--checkpoint", ck, "--config", cfg, "--layer", c->layer,
        "--x", x, "--attention-mask", am, "--position-ids", pos, "--cache-steps", c->cache_steps,
        "--out", out, "--check");
  spawn_expect_status(&r, 0);
  assert_non_null(strstr(r.out, "check out"));
  if (strcmp(c->cache_steps, "0")) assert_non_null(strstr(r.out, "cache: prefill"));
  char label[64];
  snprintf(label, sizeof label, "%s%s", c->name, c->as_dir ? " (dir)" : "");
  compare_with_fixture(c->name, label, dev, out);
}

static void test_fixtures(void **state) {
  (void)state;
  for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
    run_case(&cases[i], "ref");
    if (have_pocl) run_case(&cases[i], "pocl");
    if (have_clblast) run_case(&cases[i], "clblast");
  }
  if (!have_pocl) printf("  (pocl has no device here)\n");
  if (!have_clblast) printf("  (clblast has no device here)\n");
}

/* --dtype bf16: x, the activations and --out in bf16; --check passes, and
 * --out is a bfloat16 file of x's shape. */
static void test_dtype_bf16(void **state) {
  (void)state;
  char ck[1200], x[1200], am[1200], pos[1200], out[400];
  const char *c = "llama_left";
  case_file(ck, sizeof ck, c, "");
  case_file(x, sizeof x, c, "x.npy");
  case_file(am, sizeof am, c, "attention_mask.npy");
  case_file(pos, sizeof pos, c, "position_ids.npy");
  snprintf(out, sizeof out, "%s/bf16.npy", dir);
  spawn_result r;
  RUN(&r, "layer", "--device", have_pocl ? "pocl" : "ref", "--checkpoint", ck, "--layer", "1",
      "--x", x, "--attention-mask", am, "--position-ids", pos, "--dtype", "bf16", "--out", out,
      "--check");
  spawn_expect_status(&r, 0);
  assert_non_null(strstr(r.out, "activations bf16"));
  npy_array a;
  read_npy(out, NPY_BF16, 3, &a);
  assert_true(a.shape[0] == 2 && a.shape[1] == 16 && a.shape[2] == 64);
  npy_free(&a);
}

static void copy_file(const char *from, const char *to) {
  FILE *in = fopen(from, "rb"), *out = fopen(to, "wb");
  assert_non_null(in);
  assert_non_null(out);
  char buf[65536];
  size_t n;
  while ((n = fread(buf, 1, sizeof buf, in)) > 0) assert_int_equal(fwrite(buf, 1, n, out), n);
  fclose(in);
  assert_int_equal(fclose(out), 0);
}

static void write_text(const char *path, const char *text) {
  FILE *f = fopen(path, "w");
  assert_non_null(f);
  fputs(text, f);
  assert_int_equal(fclose(f), 0);
}

/* A numpy [B, S] file, bool ('|b1') or int32 ('<i4'), version 1.0, header
 * padded to 64, by hand: our writer does float32 only. */
static void write_mask(const char *path, bool as_bool, const int32_t *m, int64_t B, int64_t S) {
  char dict[128];
  int dl = snprintf(dict, sizeof dict,
                    "{'descr': '%s', 'fortran_order': False, 'shape': (%lld, %lld), }",
                    as_bool ? "|b1" : "<i4", (long long)B, (long long)S);
  size_t hlen = (size_t)dl + 1;
  hlen += (64 - (10 + hlen) % 64) % 64;
  FILE *f = fopen(path, "wb");
  assert_non_null(f);
  const unsigned char pre[10] = {0x93, 'N', 'U', 'M', 'P', 'Y', 1, 0, (unsigned char)(hlen & 0xff),
                                 (unsigned char)(hlen >> 8)};
  fwrite(pre, 1, 10, f);
  fwrite(dict, 1, (size_t)dl, f);
  for (size_t i = (size_t)dl; i + 1 < hlen; i++) fputc(' ', f);
  fputc('\n', f);
  if (as_bool)
    for (int64_t i = 0; i < B * S; i++) fputc(m[i] ? 1 : 0, f);
  else
    fwrite(m, sizeof *m, (size_t)(B * S), f); /* little-endian host, as on every CI machine */
  assert_int_equal(fclose(f), 0);
}

/* The other input forms of the contract: a sharded checkpoint (a directory
 * with model.safetensors.index.json and its shard, no model.safetensors), a
 * bool attention mask, and --dtype f16 (--check passes, --out is '<f2'). */
static void test_forms(void **state) {
  (void)state;
  char src[1200], shard_dir[400], p[700], x[1200], am[1200], pos[1200], out[400], bmask[400];
  const char *c = "llama_right";
  snprintf(shard_dir, sizeof shard_dir, "%s/sharded", dir);
  assert_int_equal(mkdir(shard_dir, 0755), 0);
  case_file(src, sizeof src, c, "model.safetensors");
  snprintf(p, sizeof p, "%s/model-00001-of-00001.safetensors", shard_dir);
  copy_file(src, p);
  case_file(src, sizeof src, c, "config.json");
  snprintf(p, sizeof p, "%s/config.json", shard_dir);
  copy_file(src, p);
  snprintf(p, sizeof p, "%s/model.safetensors.index.json", shard_dir);
#define SHARD "\"model-00001-of-00001.safetensors\""
  write_text(p, "{\"metadata\": {}, \"weight_map\": {"
                "\"model.layers.1.self_attn.q_proj.weight\": " SHARD ", "
                "\"model.layers.1.self_attn.k_proj.weight\": " SHARD ", "
                "\"model.layers.1.self_attn.v_proj.weight\": " SHARD ", "
                "\"model.layers.1.self_attn.o_proj.weight\": " SHARD "}}");
#undef SHARD
  case_file(x, sizeof x, c, "x.npy");
  case_file(am, sizeof am, c, "attention_mask.npy");
  case_file(pos, sizeof pos, c, "position_ids.npy");
  npy_array m;
  read_npy(am, NPY_I32, 2, &m);
  snprintf(bmask, sizeof bmask, "%s/bool_mask.npy", dir);
  write_mask(bmask, true, m.data, m.shape[0], m.shape[1]);
  npy_free(&m);
  const char *dev = have_pocl ? "pocl" : "ref";
  snprintf(out, sizeof out, "%s/sharded.npy", dir);
  spawn_result r;
  RUN(&r, "layer", "--device", dev, "--checkpoint", shard_dir, "--layer", "1", "--x", x,
      "--attention-mask", bmask, "--position-ids", pos, "--out", out, "--check");
  spawn_expect_status(&r, 0);
  compare_with_fixture(c, "llama_right (sharded, bool)", dev, out);
  snprintf(out, sizeof out, "%s/f16.npy", dir);
  RUN(&r, "layer", "--device", dev, "--checkpoint", shard_dir, "--layer", "1", "--x", x,
      "--attention-mask", am, "--position-ids", pos, "--dtype", "f16", "--out", out, "--check");
  spawn_expect_status(&r, 0);
  assert_non_null(strstr(r.out, "activations f16"));
  npy_array a;
  read_npy(out, NPY_F16, 3, &a);
  npy_free(&a);
  /* a mask value other than 0 and 1: exit 2 naming the file and the place */
  int32_t bad[2 * 16];
  for (int i = 0; i < 32; i++) bad[i] = i == 23 ? 2 : 1;
  snprintf(bmask, sizeof bmask, "%s/bad_mask.npy", dir);
  write_mask(bmask, false, bad, 2, 16);
  snprintf(out, sizeof out, "%s/refused_mask.npy", dir);
  RUN(&r, "layer", "--checkpoint", shard_dir, "--layer", "1", "--x", x, "--attention-mask", bmask,
      "--out", out);
  spawn_expect_status(&r, 2);
  spawn_expect_error_line(&r, "attn: layer: --attention-mask: ", "value [1, 7] is 2");
  assert_false(exists(out));
}

/* Each bad input: exit 2, one line naming the thing, no --out left. */
static void expect_refused(const spawn_result *r, const char *out, const char *substr) {
  spawn_expect_status(r, 2);
  spawn_expect_error_line(r, "attn: layer: ", substr);
  assert_false(exists(out));
}

static void test_errors(void **state) {
  (void)state;
  char ck[1200], cfg[1200], x[1200], am[1200], other_am[1200], out[400];
  char gpt2_cfg[1200];
  case_file(ck, sizeof ck, "llama_left", "model.safetensors");
  case_file(cfg, sizeof cfg, "llama_left", "config.json");
  case_file(x, sizeof x, "llama_left", "x.npy");
  case_file(am, sizeof am, "llama_left", "attention_mask.npy");
  case_file(other_am, sizeof other_am, "mistral_left", "attention_mask.npy"); /* [2, 20] */
  case_file(gpt2_cfg, sizeof gpt2_cfg, "gpt2_left", "config.json");
  snprintf(out, sizeof out, "%s/refused.npy", dir);
  unlink(out);
  spawn_result r;
  RUN(&r, "layer", "--layer", "1", "--x", x, "--out", out);
  expect_refused(&r, out, "--checkpoint is required");
  RUN(&r, "layer", "--checkpoint", ck, "--config", cfg, "--x", x, "--out", out);
  expect_refused(&r, out, "--layer is required");
  /* the model has 2 layers */
  RUN(&r, "layer", "--checkpoint", ck, "--config", cfg, "--layer", "2", "--x", x, "--out", out);
  expect_refused(&r, out, "--layer 2: ");
  assert_non_null(strstr(r.err, "num_hidden_layers 2"));
  /* a mask of another case: [2, 20] for x [2, 16, 64] */
  RUN(&r, "layer", "--checkpoint", ck, "--config", cfg, "--layer", "1", "--x", x,
      "--attention-mask", other_am, "--out", out);
  expect_refused(&r, out, "--attention-mask: ");
  assert_non_null(strstr(r.err, "[2, 20]"));
  /* positions of the wrong shape, and the wrong dtype (the mask is int32, fine;
   * x is not) */
  RUN(&r, "layer", "--checkpoint", ck, "--config", cfg, "--layer", "1", "--x", x,
      "--position-ids", other_am, "--out", out);
  expect_refused(&r, out, "--position-ids: ");
  RUN(&r, "layer", "--checkpoint", ck, "--config", cfg, "--layer", "1", "--x", am, "--out", out);
  expect_refused(&r, out, "--x");
  /* a checkpoint without the tensors the config asks for */
  RUN(&r, "layer", "--checkpoint", ck, "--config", gpt2_cfg, "--layer", "1", "--x", x, "--out",
      out);
  expect_refused(&r, out, "--checkpoint: ");
  assert_non_null(strstr(r.err, "c_attn.weight"));
  /* too many cache steps */
  RUN(&r, "layer", "--checkpoint", ck, "--config", cfg, "--layer", "1", "--x", x,
      "--cache-steps", "17", "--out", out);
  expect_refused(&r, out, "--cache-steps 17");
  RUN(&r, "layer", "--checkpoint", "/nonexistent/model.safetensors", "--config", cfg, "--layer",
      "1", "--x", x, "--out", out);
  expect_refused(&r, out, "--checkpoint: ");
}

static void test_help(void **state) {
  (void)state;
  spawn_result r;
  RUN(&r, "--help");
  spawn_expect_status(&r, 0);
  assert_non_null(strstr(r.out, "layer "));
  RUN(&r, "layer", "--help");
  spawn_expect_status(&r, 0);
  assert_non_null(strstr(r.out, "--cache-steps"));
  assert_non_null(strstr(r.out, "--attention-mask"));
  assert_non_null(strstr(r.out, "--dtype T"));
}

int main(void) {
  bin = getenv("ATTN_ATTN_BIN");
  const char *data = getenv("ATTN_TEST_DATA_DIR");
  if (!bin || !*bin || !data || !*data) {
    fprintf(stderr, "test_cli_layer: ATTN_ATTN_BIN or ATTN_TEST_DATA_DIR is not set "
                    "(run through make check)\n");
    return 99;
  }
  snprintf(layers, sizeof layers, "%s/layers", data);
  setenv("ATTN_DEVICE", "ref", 1);
  const char *base = getenv("TMPDIR");
  snprintf(dir, sizeof dir, "%s/test_cli_layer.XXXXXX", base && *base ? base : "/tmp");
  if (!mkdtemp(dir)) {
    perror("test_cli_layer: mkdtemp");
    return 99;
  }
  spawn_result r;
  const char *const args[] = {"devices", NULL};
  spawn_run(&r, bin, dir, args);
  have_pocl = r.status == 0 && strstr(r.out, "pocl:0 ") != NULL;
  have_clblast = r.status == 0 && strstr(r.out, "clblast:0 ") != NULL;
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_help),
      cmocka_unit_test(test_fixtures),
      cmocka_unit_test(test_dtype_bf16),
      cmocka_unit_test(test_forms),
      cmocka_unit_test(test_errors),
  };
  int rc = cmocka_run_group_tests(tests, NULL, NULL);
  char cmd[400];
  snprintf(cmd, sizeof cmd, "rm -rf '%s'", dir);
  if (system(cmd) != 0) fprintf(stderr, "test_cli_layer: could not remove %s\n", dir);
  return rc;
}
