/* attn_tune on the pocl backend (backends/pocl/tune.c, backends/opencl/tune.c),
 * on the clblast backend's fused-kernel tiles (backends/clblast/tune.c), and
 * the attn_tune API's argument checks.
 *
 * Every test runs with ATTN_CACHE_DIR pointing at a fresh temporary directory:
 * the quick tune measures every parameter, reports one row per candidate with
 * one winner each, stores them in one cache entry whose payload names them,
 * and later contexts on the device use them (ATTN_TUNE_SHOW says "cache"). An
 * entry with a flipped byte, a truncated one, and one with a valid checksum
 * but a value the backend does not know all give the built-in defaults, as
 * does ATTN_CACHE=0, which also stores nothing. Results computed with the
 * tuned values, and with every allowed candidate of each parameter (forced
 * through ATTN_POCL_VW / ATTN_POCL_LINEAR_TILE / ATTN_POCL_DECODE_GROUPS),
 * match tu_sdpa_double / tu_linear_double.
 *
 * Exits 77 when there is no pocl device. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <dirent.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "attn.h"
#include "onehead.h"
#include "testutil.h"

#define CHECK_OK(call)                                                                 \
  do {                                                                                 \
    attn_status st_ = (call);                                                          \
    if (st_ != ATTN_OK) fail_msg("%s: %s (%s)", #call, attn_last_error(), attn_status_str(st_)); \
  } while (0)

static char g_dir[256];
static attn_tune_report g_rep; /* the quick tune's report (tune_stores) */

/* ---- helpers ---------------------------------------------------------------------- */

static const attn_tune_row *find_row(const attn_tune_report *r, const char *param) {
  for (int i = 0; i < r->n; i++)
    if (strcmp(r->row[i].param, param) == 0 && r->row[i].chosen) return &r->row[i];
  return NULL;
}

/* The values a fresh context uses: "linear_tile", "decode_groups" and
 * "vector_width" rows. */
static void show_fresh(attn_tune_report *r) {
  attn_context *ctx;
  CHECK_OK(attn_open("pocl", &ctx));
  CHECK_OK(attn_tune(ctx, ATTN_TUNE_SHOW, r));
  attn_close(ctx);
  assert_int_equal(r->n, 3);
  assert_non_null(find_row(r, "linear_tile"));
  assert_non_null(find_row(r, "decode_groups"));
  assert_non_null(find_row(r, "vector_width"));
}

/* The width read off the device (16, or 8 where POCL compiles for an
 * AVX2-only CPU, as under POCL_KERNELLIB_NAME=avx2) and its default tile. */
static void assert_defaults(const char *why) {
  attn_tune_report r;
  show_fresh(&r);
  for (int i = 0; i < r.n; i++) {
    const char *want = strcmp(r.row[i].param, "vector_width") == 0 ? "device" : "default";
    if (strcmp(r.row[i].source, want) != 0)
      fail_msg("%s: %s = %s from %s, want %s", why, r.row[i].param, r.row[i].value,
               r.row[i].source, want);
  }
  const char *vw = find_row(&r, "vector_width")->value;
  assert_true(strcmp(vw, "16") == 0 || strcmp(vw, "8") == 0);
  assert_string_equal(find_row(&r, "linear_tile")->value, strcmp(vw, "8") == 0 ? "4x3" : "8x3");
  assert_string_equal(find_row(&r, "decode_groups")->value, "16");
}

/* The one tuning entry in g_dir (the others are program binaries): its path. */
static int tune_file(char *path, size_t len) {
  DIR *d = opendir(g_dir);
  assert_non_null(d);
  int found = 0;
  struct dirent *e;
  while ((e = readdir(d))) {
    if (!strstr(e->d_name, ".clbin")) continue;
    char p[512], buf[4096];
    snprintf(p, sizeof p, "%s/%s", g_dir, e->d_name);
    FILE *f = fopen(p, "rb");
    assert_non_null(f);
    size_t n = fread(buf, 1, sizeof buf - 1, f);
    fclose(f);
    buf[n] = '\0';
    /* The key follows the 40-byte header. */
    if (n > 40 && strncmp(buf + 40, "libattn tuning\n", 15) == 0 && strstr(buf + 40, "backend=pocl")) {
      snprintf(path, len, "%s", p);
      found++;
    }
  }
  closedir(d);
  return found;
}

static unsigned char *slurp(const char *path, size_t *len) {
  FILE *f = fopen(path, "rb");
  assert_non_null(f);
  static unsigned char buf[1 << 16];
  *len = fread(buf, 1, sizeof buf, f);
  fclose(f);
  unsigned char *out = malloc(*len);
  assert_non_null(out);
  memcpy(out, buf, *len);
  return out;
}

static void spill(const char *path, const void *data, size_t len) {
  FILE *f = fopen(path, "wb");
  assert_non_null(f);
  assert_int_equal(fwrite(data, 1, len, f), len);
  assert_int_equal(fclose(f), 0);
}

/* Decode SDPA (Sq = 1, GQA: the decode path by default) against the oracle. */
static void check_decode(attn_context *ctx, const char *what) {
  const int64_t Hq = 8, Hkv = 2, Skv = 1500, D = 64;
  uint64_t rng = 0x7u;
  float *q = tu_alloc_uniform((size_t)(Hq * D), &rng, -1, 1);
  float *k = tu_alloc_uniform((size_t)(Hkv * Skv * D), &rng, -1, 1);
  float *v = tu_alloc_uniform((size_t)(Hkv * Skv * D), &rng, -1, 1);
  float got[8 * 64];
  double want[8 * 64];
  const int64_t qs[4] = {1, Hq, 1, D}, ks[4] = {1, Hkv, Skv, D};
  attn_tensor *tq, *tk, *tv, *to;
  CHECK_OK(attn_tensor_create(ctx, 4, qs, &tq));
  CHECK_OK(attn_tensor_create(ctx, 4, ks, &tk));
  CHECK_OK(attn_tensor_create(ctx, 4, ks, &tv));
  CHECK_OK(attn_tensor_create(ctx, 4, qs, &to));
  CHECK_OK(attn_tensor_write(tq, q, (size_t)(Hq * D)));
  CHECK_OK(attn_tensor_write(tk, k, (size_t)(Hkv * Skv * D)));
  CHECK_OK(attn_tensor_write(tv, v, (size_t)(Hkv * Skv * D)));
  attn_sdpa_args a = {.struct_size = sizeof(attn_sdpa_args), .q = tq, .k = tk, .v = tv, .out = to};
  CHECK_OK(attn_sdpa(ctx, &a));
  CHECK_OK(attn_tensor_read(to, got, (size_t)(Hq * D)));
  tu_sdpa_problem p = {.B = 1, .Hq = Hq, .Hkv = Hkv, .Sq = 1, .Skv = Skv, .D = D, .Dv = D,
                       .q = q, .k = k, .v = v, .scale = (double)(float)(1.0 / sqrt((double)D))};
  tu_sdpa_double(&p, want, NULL, NULL);
  assert_true(tu_check_close(what, got, want, (size_t)(Hq * D), NULL));
  attn_tensor_free(tq), attn_tensor_free(tk), attn_tensor_free(tv), attn_tensor_free(to);
  free(q), free(k), free(v);
}

/* The linear stage: a one-head MHA graph (E = 136: 8 blocks of 16 along k and
 * a tail; S = 45 not a multiple of any tile) against linear, sdpa, linear in
 * double (see tests/test_pocl_decode.c). */
static void check_linear(attn_context *ctx, const char *what) {
  tu_check_one_head_mha(ctx, 136, 45, 0x11EAu, what);
}

/* ---- tests ------------------------------------------------------------------------- */

static void tune_stores(void **state) {
  (void)state;
  attn_context *ctx;
  CHECK_OK(attn_open("pocl", &ctx));
  CHECK_OK(attn_tune(ctx, ATTN_TUNE_QUICK, &g_rep));
  /* Two widths, two tiles and four decode splits, each timed, one winner
   * per parameter. */
  assert_int_equal(g_rep.n, 8);
  int nlin = 0, ndec = 0, nvw = 0, won_lin = 0, won_dec = 0, won_vw = 0;
  for (int i = 0; i < g_rep.n; i++) {
    const attn_tune_row *r = &g_rep.row[i];
    assert_true(r->median_ms > 0);
    assert_string_equal(r->source, "measured");
    assert_true(r->shape[0] != '\0');
    if (!strcmp(r->param, "linear_tile")) nlin++, won_lin += r->chosen;
    else if (!strcmp(r->param, "decode_groups")) ndec++, won_dec += r->chosen;
    else if (!strcmp(r->param, "vector_width")) nvw++, won_vw += r->chosen;
    else fail_msg("unexpected parameter %s", r->param);
  }
  assert_int_equal(nlin, 2);
  assert_int_equal(ndec, 4);
  assert_int_equal(nvw, 2);
  assert_int_equal(won_lin, 1);
  assert_int_equal(won_dec, 1);
  assert_int_equal(won_vw, 1);
  /* The winner is the fastest. */
  for (int i = 0; i < g_rep.n; i++)
    assert_true(g_rep.row[i].median_ms >= find_row(&g_rep, g_rep.row[i].param)->median_ms);
  assert_true(g_rep.stored);

  /* The context itself now uses them. */
  attn_tune_report r;
  CHECK_OK(attn_tune(ctx, ATTN_TUNE_SHOW, &r));
  assert_string_equal(find_row(&r, "linear_tile")->value, find_row(&g_rep, "linear_tile")->value);
  assert_string_equal(find_row(&r, "linear_tile")->source, "tuned");
  check_decode(ctx, "decode, tuning context");
  attn_close(ctx);

  /* One entry, whose payload names the winners. */
  char path[512], want[128];
  assert_int_equal(tune_file(path, sizeof path), 1);
  size_t len;
  unsigned char *bytes = slurp(path, &len);
  int n = snprintf(want, sizeof want, "linear_tile %s\ndecode_groups %s\nvector_width %s\n",
                   find_row(&g_rep, "linear_tile")->value,
                   find_row(&g_rep, "decode_groups")->value,
                   find_row(&g_rep, "vector_width")->value);
  assert_true(len > (size_t)n);
  assert_memory_equal(bytes + len - n, want, n);
  free(bytes);

  /* A fresh context reads them. */
  show_fresh(&r);
  for (int i = 0; i < r.n; i++) {
    assert_string_equal(r.row[i].source, "cache");
    assert_string_equal(r.row[i].value, find_row(&g_rep, r.row[i].param)->value);
  }
  CHECK_OK(attn_open("pocl", &ctx));
  check_decode(ctx, "decode, tuned values from the cache");
  check_linear(ctx, "linear, tuned values from the cache");
  attn_close(ctx);
}

static uint64_t fnv(const void *data, size_t n) {
  const unsigned char *p = data;
  uint64_t h = 0xcbf29ce484222325ULL;
  for (size_t i = 0; i < n; i++) h = (h ^ p[i]) * 0x100000001b3ULL;
  return h;
}

static void corrupt_falls_back(void **state) {
  (void)state;
  char path[512];
  assert_int_equal(tune_file(path, sizeof path), 1);
  size_t len;
  unsigned char *good = slurp(path, &len), *bad = malloc(len + 64);
  assert_non_null(bad);

  memcpy(bad, good, len);
  bad[len - 2] ^= 0x01; /* a payload byte: the checksum no longer matches */
  spill(path, bad, len);
  assert_defaults("flipped byte");

  spill(path, good, len / 2);
  assert_defaults("truncated");

  /* A well-formed entry (header per backends/opencl/cache.c: magic[8],
   * u32 version, u32 key length, u64 key hash, u64 payload length, u64
   * payload hash, key, payload) whose value the backend does not allow. */
  uint32_t key_len;
  memcpy(&key_len, good + 12, 4);
  const char *text = "linear_tile 5x5\ndecode_groups 16\n";
  uint64_t plen = strlen(text), phash = fnv(text, plen);
  memcpy(bad, good, 40 + key_len);
  memcpy(bad + 24, &plen, 8);
  memcpy(bad + 32, &phash, 8);
  memcpy(bad + 40 + key_len, text, plen);
  spill(path, bad, 40 + key_len + plen);
  assert_defaults("unknown value");

  /* The good entry again is used again (so the checks above saw the file). */
  spill(path, good, len);
  attn_tune_report r;
  show_fresh(&r);
  assert_string_equal(r.row[0].source, "cache");

  /* ATTN_CACHE=0: neither read nor stored. */
  setenv("ATTN_CACHE", "0", 1);
  assert_defaults("ATTN_CACHE=0");
  attn_context *ctx;
  CHECK_OK(attn_open("pocl", &ctx));
  CHECK_OK(attn_tune(ctx, ATTN_TUNE_QUICK, &r));
  assert_false(r.stored);
  attn_close(ctx);
  unsetenv("ATTN_CACHE");
  unsigned char *after = slurp(path, &len);
  assert_memory_equal(after, good, len);
  free(after);
  free(good);
  free(bad);
}

/* Every allowed value of each parameter gives correct results: the tiles of
 * each vector width at that width (check_linear's one-head graph also runs
 * its 45-row SDPA through the flash kernel of that width). */
static void every_candidate(void **state) {
  (void)state;
  static const char *tiles[] = {"8x3", "4x6", "4x4", "8x2", "4x3", "3x4", "4x2", "2x4"};
  static const char *groups[] = {"4", "8", "16", "32"};
  for (int i = 0; i < 8; i++) {
    const char *vw = i < 4 ? "16" : "8";
    setenv("ATTN_POCL_VW", vw, 1);
    setenv("ATTN_POCL_LINEAR_TILE", tiles[i], 1);
    setenv("ATTN_POCL_DECODE_GROUPS", groups[i % 4], 1);
    attn_context *ctx;
    CHECK_OK(attn_open("pocl", &ctx));
    unsetenv("ATTN_POCL_VW");
    unsetenv("ATTN_POCL_LINEAR_TILE");
    unsetenv("ATTN_POCL_DECODE_GROUPS");
    attn_tune_report r;
    CHECK_OK(attn_tune(ctx, ATTN_TUNE_SHOW, &r));
    assert_string_equal(find_row(&r, "vector_width")->value, vw);
    assert_string_equal(find_row(&r, "vector_width")->source, "env");
    assert_string_equal(find_row(&r, "linear_tile")->value, tiles[i]);
    assert_string_equal(find_row(&r, "linear_tile")->source, "env");
    assert_string_equal(find_row(&r, "decode_groups")->value, groups[i % 4]);
    char what[64];
    snprintf(what, sizeof what, "decode, groups %s", groups[i % 4]);
    check_decode(ctx, what);
    snprintf(what, sizeof what, "linear and sdpa, width %s, tile %s", vw, tiles[i]);
    check_linear(ctx, what);
    attn_close(ctx);
  }
  /* A forced width alone brings its own default tile (no cache entry read). */
  attn_tune_report r;
  setenv("ATTN_CACHE", "0", 1);
  setenv("ATTN_POCL_VW", "8", 1);
  show_fresh(&r);
  assert_string_equal(find_row(&r, "linear_tile")->value, "4x3");
  setenv("ATTN_POCL_VW", "16", 1);
  show_fresh(&r);
  assert_string_equal(find_row(&r, "linear_tile")->value, "8x3");
  unsetenv("ATTN_POCL_VW");
  unsetenv("ATTN_CACHE");
  /* A value outside the set is ignored. */
  setenv("ATTN_POCL_VW", "12", 1);
  setenv("ATTN_POCL_LINEAR_TILE", "16x16", 1);
  setenv("ATTN_POCL_DECODE_GROUPS", "1000", 1);
  show_fresh(&r);
  unsetenv("ATTN_POCL_VW");
  unsetenv("ATTN_POCL_LINEAR_TILE");
  unsetenv("ATTN_POCL_DECODE_GROUPS");
  assert_string_not_equal(find_row(&r, "vector_width")->source, "env");
  assert_string_not_equal(find_row(&r, "linear_tile")->source, "env");
  assert_string_not_equal(find_row(&r, "decode_groups")->source, "env");
}

static void bad_arguments(void **state) {
  (void)state;
  attn_tune_report r;
  tu_assert_fails(attn_tune(NULL, 0, &r), ATTN_ERR_INVALID_ARG, "attn_tune: ctx");
  attn_context *ctx;
  CHECK_OK(attn_open("pocl", &ctx));
  tu_assert_fails(attn_tune(ctx, 0, NULL), ATTN_ERR_INVALID_ARG, "attn_tune: report");
  tu_assert_fails(attn_tune(ctx, 0x80, &r), ATTN_ERR_INVALID_ARG, "attn_tune: flags");
  attn_close(ctx);
  /* ref has nothing to tune. */
  if (attn_open("ref", &ctx) == ATTN_OK) {
    tu_assert_fails(attn_tune(ctx, ATTN_TUNE_SHOW, &r), ATTN_ERR_UNSUPPORTED, "ref");
    assert_int_equal(r.n, 0);
    attn_close(ctx);
  }
}

/* The clblast backend's one parameter, its fused kernel's tiles
 * (backends/clblast/tune.c): measured candidates with one winner, stored,
 * used by the tuning context and read back by a fresh one, whose fused
 * kernel (forced: the CPU default for this decode shape is the fused
 * kernel anyway) then still matches the double-precision oracle. Last in
 * the run: it adds the cache's second tune entry. */
static void clblast_tiles(void **state) {
  (void)state;
  attn_context *ctx;
  if (attn_open("clblast", &ctx) != ATTN_OK) skip();
  attn_tune_report r, sh;
  CHECK_OK(attn_tune(ctx, ATTN_TUNE_QUICK, &r));
  assert_true(r.n >= 2);
  int won = 0;
  for (int i = 0; i < r.n; i++) {
    assert_string_equal(r.row[i].param, "flash_tiles");
    assert_string_equal(r.row[i].source, "measured");
    assert_true(r.row[i].median_ms > 0);
    won += r.row[i].chosen;
  }
  assert_int_equal(won, 1);
  const attn_tune_row *win = find_row(&r, "flash_tiles");
  for (int i = 0; i < r.n; i++) assert_true(r.row[i].median_ms >= win->median_ms);
  assert_true(r.stored);
  CHECK_OK(attn_tune(ctx, ATTN_TUNE_SHOW, &sh));
  assert_int_equal(sh.n, 1);
  assert_string_equal(sh.row[0].value, win->value);
  assert_string_equal(sh.row[0].source, "tuned");
  attn_close(ctx);

  setenv("ATTN_CLBLAST_SDPA", "fused", 1);
  CHECK_OK(attn_open("clblast", &ctx));
  unsetenv("ATTN_CLBLAST_SDPA");
  CHECK_OK(attn_tune(ctx, ATTN_TUNE_SHOW, &sh));
  assert_string_equal(sh.row[0].value, win->value);
  assert_string_equal(sh.row[0].source, "cache");
  check_decode(ctx, "clblast fused decode, tiles from the cache");
  attn_close(ctx);
}

int main(void) {
  attn_context *probe;
  if (attn_open("pocl", &probe) != ATTN_OK) {
    printf("no pocl device: %s\n", attn_last_error());
    return 77;
  }
  attn_close(probe);
  unsetenv("ATTN_POCL_LINEAR_TILE");
  unsetenv("ATTN_POCL_DECODE_GROUPS");
  unsetenv("ATTN_CACHE");
  snprintf(g_dir, sizeof g_dir, "%s/attn_tune_XXXXXX", getenv("TMPDIR") ? getenv("TMPDIR") : "/tmp");
  if (!mkdtemp(g_dir)) {
    perror("mkdtemp");
    return 1;
  }
  setenv("ATTN_CACHE_DIR", g_dir, 1);
  /* In order: each test after tune_stores reads the entry it wrote. */
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(tune_stores),
      cmocka_unit_test(corrupt_falls_back),
      cmocka_unit_test(every_candidate),
      cmocka_unit_test(bad_arguments),
      cmocka_unit_test(clblast_tiles),
  };
  int failed = cmocka_run_group_tests(tests, NULL, NULL);
  /* The temporary cache: flat, our files only. */
  DIR *d = opendir(g_dir);
  struct dirent *e;
  while (d && (e = readdir(d))) {
    if (e->d_name[0] == '.') continue;
    char p[512];
    snprintf(p, sizeof p, "%s/%s", g_dir, e->d_name);
    unlink(p);
  }
  if (d) closedir(d);
  rmdir(g_dir);
  return failed ? 1 : 0;
}
