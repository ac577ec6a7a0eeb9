/* attn bench from the outside and attn_device_peaks_get on every device.
 *
 * The benchmark runs the built binary ($ATTN_ATTN_BIN) with posix_spawn on
 * --quick shapes, on ref and (when present) pocl, and checks each JSON line:
 * the fields issue 4 names, sane values, and the rates recomputed here from
 * the shape and the median time by the formula of the contract. Also --csv,
 * --svg (a well-formed file, written atomically), and the exit codes of bad
 * options (2) and of a failure (1, no file left behind).
 *
 * The peaks are checked through the library: positive finite figures on
 * every device found, the cache answering the same figures again, refresh
 * measuring again, and ATTN_ERR_UNSUPPORTED from a backend without the slot
 * (the tp_good test plugin). */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <dirent.h>
#include <math.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "attn.h"
#include "spawn.h"

static const char *bin;
static char dir[256];

/* ---- running the CLI (tests/spawn.h) ------------------------------------------ */

#define RUN(r, ...) SPAWN_RUN((r), bin, dir, __VA_ARGS__)

/* A failure prints exactly one line, "attn: bench: ...", containing substr. */
static void expect_error_line(const spawn_result *r, const char *substr) {
  spawn_expect_error_line(r, "attn: bench: ", substr);
}

/* ---- reading one JSON line --------------------------------------------------------- */

/* The text right after "key": in line, or NULL. Our lines are flat objects. */
static const char *field(const char *line, const char *key) {
  char pat[64];
  snprintf(pat, sizeof pat, "\"%s\":", key);
  const char *p = strstr(line, pat);
  return p ? p + strlen(pat) : NULL;
}

static double num(const char *line, const char *key) {
  const char *p = field(line, key);
  if (!p) {
    print_error("no field \"%s\" in %s\n", key, line);
    fail();
  }
  char *end;
  double v = strtod(p, &end);
  if (end == p || (*end != ',' && *end != '}')) {
    print_error("field \"%s\" is not a number in %s\n", key, line);
    fail();
  }
  return v;
}

static int64_t posint(const char *line, const char *key) {
  double v = num(line, key);
  if (!(v >= 1 && v == floor(v))) {
    print_error("field \"%s\" = %g is not a positive integer in %s\n", key, v, line);
    fail();
  }
  return (int64_t)v;
}

static double positive(const char *line, const char *key) {
  double v = num(line, key);
  if (!(isfinite(v) && v > 0)) {
    print_error("field \"%s\" = %g is not positive and finite in %s\n", key, v, line);
    fail();
  }
  return v;
}

static void near(const char *line, const char *what, double got, double want) {
  if (!(fabs(got - want) <= 2e-3 * fabs(want))) {
    print_error("%s = %g, recomputed %g, in %s\n", what, got, want, line);
    fail();
  }
}

/* Check every line of a --json run on device (a backend name); returns the
 * number of lines. */
/* Every line of a --json run checked; nkv: how many --kv-dtype types it ran
 * (one decode line each); *n16: the lines whose k and v were 16-bit. */
static int check_json(const char *out, const char *backend, int nkv, int *n16) {
  int n = 0, decode = 0, mha = 0, causal = 0;
  if (n16) *n16 = 0;
  const char *p = out;
  while (*p) {
    const char *nl = strchr(p, '\n');
    assert_non_null(nl); /* every object ends its line */
    char line[4096];
    size_t len = (size_t)(nl - p);
    assert_true(len < sizeof line);
    memcpy(line, p, len);
    line[len] = '\0';
    p = nl + 1;
    assert_true(line[0] == '{' && line[len - 1] == '}');
    n++;
    const char *dev = field(line, "device");
    assert_non_null(dev);
    assert_true(dev[0] == '"' && !strncmp(dev + 1, backend, strlen(backend)));
    int64_t B = posint(line, "batch"), Hq = posint(line, "heads"), Hkv = posint(line, "kv_heads");
    int64_t Sq = posint(line, "seq"), Skv = posint(line, "kv_seq"), D = posint(line, "dim");
    assert_int_equal(Hq % Hkv, 0);
    const char *c = field(line, "causal");
    assert_non_null(c);
    assert_true(!strncmp(c, "true", 4) || !strncmp(c, "false", 5));
    bool is_causal = c[0] == 't';
    /* the storage type of k and v, on every line */
    const char *kt = field(line, "kv_dtype");
    assert_non_null(kt);
    bool kv16 = !strncmp(kt, "\"f16\"", 5) || !strncmp(kt, "\"bf16\"", 6);
    assert_true(kv16 || !strncmp(kt, "\"f32\"", 5));
    if (n16 && kv16) (*n16)++;
    double ms = positive(line, "median_ms"), gflops = positive(line, "gflops");
    double gbps = positive(line, "gbps"), frac = num(line, "peak_fraction");
    assert_true(num(line, "min_ms") <= ms && ms <= num(line, "max_ms"));
    /* No upper bound: the device peak is a measurement too, cached from
     * whenever it was taken, and on a shared machine it can come out below
     * what a later kernel reaches. Its consistency is checked below. */
    if (!(frac > 0 && isfinite(frac))) {
      print_error("peak_fraction %g is not a positive number in %s\n", frac, line);
      fail();
    }
    const char *kind = field(line, "case");
    assert_non_null(kind);
    if (!strncmp(kind, "\"mha\"", 5)) {
      /* the whole graph: its nodes are timed and sum to at most the run */
      mha++;
      double nodes = positive(line, "project_q_ms") + positive(line, "project_k_ms") +
                     positive(line, "project_v_ms") + positive(line, "sdpa_ms") +
                     positive(line, "project_out_ms");
      assert_true(nodes <= num(line, "max_ms") * 1.05);
      positive(line, "proj_gflops");
      continue;
    }
    /* The rates, recomputed from the contract: 4*B*Hq*Sq*Skv*D, halved when
     * causal with Sq == Skv; bytes of q and out, 4 each, of k and v, 4 or 2. */
    double flops = 4.0 * B * Hq * Sq * Skv * D / (is_causal && Sq == Skv ? 2 : 1);
    double bytes = 4.0 * 2.0 * B * Hq * Sq * D + (kv16 ? 2.0 : 4.0) * 2.0 * B * Hkv * Skv * D;
    near(line, "gflops", gflops, flops / (ms * 1e6));
    near(line, "gbps", gbps, bytes / (ms * 1e6));
    if (Sq == 1) {
      decode++;
      near(line, "peak_fraction (decode: of bandwidth)", frac, gbps / num(line, "peak_gbps"));
    } else {
      near(line, "peak_fraction (of flops)", frac, gflops / num(line, "peak_gflops"));
    }
    causal += is_causal && Sq > 1;
  }
  assert_int_equal(decode, nkv);
  assert_int_equal(mha, 1);
  assert_true(causal >= 1);
  return n;
}

static bool have_device(const char *selector) {
  spawn_result r;
  RUN(&r, "devices");
  spawn_expect_status(&r, 0);
  char pat[80];
  snprintf(pat, sizeof pat, "\n%s ", selector);
  return strstr(r.out, pat) || !strncmp(r.out, pat + 1, strlen(pat + 1));
}

/* ---- tests ------------------------------------------------------------------------ */

/* attn bench --quick --json on one backend, every line checked. */
static void quick_json_on(const char *backend) {
  spawn_result r;
  RUN(&r, "bench", "--quick", "--json", "--device", backend);
  spawn_expect_status(&r, 0);
  /* the quick sweep: 3 sdpa + 3 causal + 3 gqa + decode + mha */
  assert_int_equal(check_json(r.out, backend, 1, NULL), 11);
}

/* --kv-dtype f32,bf16: the sweeps and decode once per type, mha once (f32,
 * the first); bf16 rows say so and count k and v in 2 bytes. On ref, which
 * stores every type. */
static void kv_dtypes(void **state) {
  (void)state;
  spawn_result r;
  RUN(&r, "bench", "--quick", "--json", "--device", "ref", "--seq", "32", "--repeat", "1",
      "--kv-dtype", "f32,bf16");
  spawn_expect_status(&r, 0);
  int n16;
  assert_int_equal(check_json(r.out, "ref", 2, &n16), 2 * 4 + 1);
  assert_int_equal(n16, 4);
  assert_non_null(strstr(r.out, "\"case\":\"decode\",\"batch\":1"));
  /* the table has a kv column; the CSV a kv_dtype column at the end */
  RUN(&r, "bench", "--quick", "--device", "ref", "--seq", "32", "--repeat", "1", "--kv-dtype",
      "f16");
  spawn_expect_status(&r, 0);
  assert_non_null(strstr(r.out, " kv "));
  assert_non_null(strstr(r.out, " f16 "));
  RUN(&r, "bench", "--quick", "--csv", "--device", "ref", "--seq", "32", "--repeat", "1",
      "--kv-dtype", "bf16");
  spawn_expect_status(&r, 0);
  assert_non_null(strstr(r.out, ",kv_dtype\n"));
  assert_non_null(strstr(r.out, ",bf16\n"));
  /* --kv-sets: the decode case over several caches, checked like any run. */
  RUN(&r, "bench", "--quick", "--json", "--device", "ref", "--seq", "32", "--repeat", "3",
      "--kv-sets", "3", "--kv-dtype", "bf16");
  spawn_expect_status(&r, 0);
  assert_int_equal(check_json(r.out, "ref", 1, &n16), 4 + 1);
  assert_non_null(strstr(r.out, "\"case\":\"decode\",\"batch\":1"));
}

static void json_ref(void **state) {
  (void)state;
  quick_json_on("ref");
}

static void json_pocl(void **state) {
  (void)state;
  if (!have_device("pocl:0")) skip();
  quick_json_on("pocl");
}

/* Two devices in one run: each alternative benchmarked apart, in order. */
static void two_devices_csv(void **state) {
  (void)state;
  spawn_result r;
  RUN(&r, "bench", "--quick", "--csv", "--device", "ref,ref:0", "--seq", "32", "--repeat", "1");
  spawn_expect_status(&r, 0);
  const char *header = "device,backend,case,batch,heads,kv_heads,seq,kv_seq,dim,causal,";
  assert_int_equal(strncmp(r.out, header, strlen(header)), 0);
  int lines = 0, commas0 = -1;
  for (const char *p = r.out; *p;) {
    const char *nl = strchr(p, '\n');
    assert_non_null(nl);
    int commas = 0;
    for (const char *q = p; q < nl; q++) commas += *q == ',';
    if (commas0 < 0) commas0 = commas;
    assert_int_equal(commas, commas0); /* every row has every column */
    if (lines > 0) assert_int_equal(strncmp(p, "ref:0,ref,", 10), 0);
    lines++;
    p = nl + 1;
  }
  /* header + 2 devices x (sdpa, causal, gqa at S=32, decode, mha) */
  assert_int_equal(lines, 1 + 2 * 5);
}

static bool temp_left(void) {
  DIR *d = opendir(dir);
  assert_non_null(d);
  bool found = false;
  struct dirent *e;
  while ((e = readdir(d)))
    if (strstr(e->d_name, ".tmp.")) found = true;
  closedir(d);
  return found;
}

static void svg_file(void **state) {
  (void)state;
  char path[320];
  snprintf(path, sizeof path, "%s/plot.svg", dir);
  spawn_result r;
  RUN(&r, "bench", "--quick", "--device", "ref", "--seq", "32,64", "--repeat", "1", "--svg",
      path);
  spawn_expect_status(&r, 0);
  assert_non_null(strstr(r.out, "device ref:0"));
  assert_non_null(strstr(r.out, "measured peaks:"));
  assert_non_null(strstr(r.out, "mha E="));
  static char svg[65536];
  spawn_slurp(path, svg, sizeof svg);
  size_t len = strlen(svg);
  assert_true(len > 100);
  assert_int_equal(strncmp(svg, "<svg", 4), 0);
  assert_string_equal(svg + len - 7, "</svg>\n");
  /* three series (sdpa, causal, gqa) of two points each, with a legend */
  int lines = 0, circles = 0;
  for (const char *p = svg; (p = strstr(p, "<polyline")); p++) lines++;
  for (const char *p = svg; (p = strstr(p, "<circle")); p++) circles++;
  assert_int_equal(lines, 3);
  assert_int_equal(circles, 6);
  assert_non_null(strstr(svg, "ref:0 causal D=64"));
  assert_false(strstr(svg, "nan") || strstr(svg, "inf"));
  assert_false(temp_left());

  /* A directory that does not exist: exit 1, one line, nothing written. */
  snprintf(path, sizeof path, "%s/no/such/dir/plot.svg", dir);
  RUN(&r, "bench", "--quick", "--device", "ref", "--seq", "32", "--repeat", "1", "--svg", path);
  spawn_expect_status(&r, 1);
  expect_error_line(&r, "--svg");
  assert_int_equal(access(path, F_OK), -1);
}

static void bad_options(void **state) {
  (void)state;
  static const struct {
    const char *args[6];
    const char *msg;
  } cases[] = {
      {{"--bogus"}, "unknown option '--bogus'"},
      {{"--repeat", "0"}, "--repeat"},
      {{"--repeat", "x"}, "--repeat"},
      {{"--seq", "64,,128"}, "--seq"},
      {{"--seq", "64,"}, "--seq"},
      {{"--dim", "-4"}, "--dim"},
      {{"--json", "--csv"}, "exclude each other"},
      {{"--device", "ref,"}, "--device"},
      {{"--ref-limit", "-1"}, "--ref-limit"},
      {{"--svg"}, "needs an argument"},
      {{"stray"}, "unexpected argument 'stray'"},
      {{"--kv-dtype", "f64"}, "--kv-dtype: 'f64' is not f32, f16 or bf16"},
      {{"--kv-sets", "0"}, "--kv-sets: '0' is not an integer in [1, 64]"},
      {{"--kv-sets", "65"}, "--kv-sets"},
      {{"--kv-dtype", "f32,f32"}, "listed twice"},
      {{"--kv-dtype", "f32,"}, "--kv-dtype"},
  };
  for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
    const char *argv[8] = {"bench"};
    int n = 1;
    for (int j = 0; cases[i].args[j]; j++) argv[n++] = cases[i].args[j];
    argv[n] = NULL;
    spawn_result r;
    spawn_run(&r, bin, dir, argv);
    spawn_expect_status(&r, 2);
    expect_error_line(&r, cases[i].msg);
    assert_string_equal(r.out, "");
  }
  /* A device that does not exist is a failure (1), not a usage error. */
  spawn_result r;
  RUN(&r, "bench", "--quick", "--device", "ref,nosuchbackend");
  spawn_expect_status(&r, 1);
  expect_error_line(&r, "nosuchbackend");
  /* --help is not an error */
  RUN(&r, "bench", "--help");
  spawn_expect_status(&r, 0);
  assert_non_null(strstr(r.out, "Usage: attn bench"));
}

/* attn_device_peaks_get on every device the library finds. */
static void peaks_every_device(void **state) {
  (void)state;
  attn_device_list *list;
  assert_int_equal(attn_list_devices(&list), ATTN_OK);
  size_t n = attn_device_list_count(list), measured = 0;
  for (size_t i = 0; i < n; i++) {
    const attn_device_info *info = attn_device_list_get(list, i);
    attn_context *ctx;
    assert_int_equal(attn_open(info->selector, &ctx), ATTN_OK);
    attn_device_peaks p = {0, 0}, again = {0, 0}, fresh = {0, 0};
    attn_status s = attn_device_peaks_get(ctx, false, &p);
    if (!strcmp(info->backend, "tp_good")) {
      /* the test plugin has no peaks slot */
      assert_int_equal(s, ATTN_ERR_UNSUPPORTED);
      assert_non_null(strstr(attn_last_error(), "attn_device_peaks_get"));
      assert_non_null(strstr(attn_last_error(), "tp_good"));
      attn_close(ctx);
      continue;
    }
    if (s != ATTN_OK) print_error("%s: %s\n", info->selector, attn_last_error());
    assert_int_equal(s, ATTN_OK);
    assert_true(isfinite(p.gflops) && p.gflops > 0.1 && p.gflops < 1e6);
    assert_true(isfinite(p.gbps) && p.gbps > 0.1 && p.gbps < 1e5);
    /* the cache (disk or memory) answers the same figures, or higher ones
     * when a probe found the cached FMA figure implausibly low */
    assert_int_equal(attn_device_peaks_get(ctx, false, &again), ATTN_OK);
    assert_true(again.gflops >= p.gflops && again.gbps >= p.gbps);
    /* refresh measures again: a plausible figure, not necessarily the same */
    assert_int_equal(attn_device_peaks_get(ctx, true, &fresh), ATTN_OK);
    assert_true(isfinite(fresh.gflops) && fresh.gflops > 0.1);
    assert_true(isfinite(fresh.gbps) && fresh.gbps > 0.1);
    /* NULL arguments are refused with a message naming them */
    assert_int_equal(attn_device_peaks_get(ctx, false, NULL), ATTN_ERR_INVALID_ARG);
    assert_non_null(strstr(attn_last_error(), "attn_device_peaks_get: p"));
    measured++;
    attn_close(ctx);
  }
  attn_device_list_free(list);
  assert_true(measured >= 1); /* ref at least */
  attn_device_peaks p;
  assert_int_equal(attn_device_peaks_get(NULL, false, &p), ATTN_ERR_INVALID_ARG);
  assert_non_null(strstr(attn_last_error(), "attn_device_peaks_get: ctx"));
}

int main(void) {
  bin = getenv("ATTN_ATTN_BIN");
  if (!bin || !*bin) {
    fprintf(stderr, "test_bench: ATTN_ATTN_BIN is not set (run through make check)\n");
    return 1;
  }
  snprintf(dir, sizeof dir, "/tmp/attn_test_bench.XXXXXX");
  if (!mkdtemp(dir)) {
    perror("mkdtemp");
    return 1;
  }
  /* The tp_good test plugin joins the real backends, as a backend without
   * the peaks slot; the spawned CLI sees the same path (harmless there). */
  const char *plugins = getenv("ATTN_TEST_PLUGIN_DIR");
  const char *path = getenv("ATTN_BACKEND_PATH");
  if (plugins && path) {
    static char both[4096];
    snprintf(both, sizeof both, "%s:%s/attn_tp_good.so", path, plugins);
    setenv("ATTN_BACKEND_PATH", both, 1);
  }
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(json_ref),        cmocka_unit_test(json_pocl),
      cmocka_unit_test(two_devices_csv), cmocka_unit_test(svg_file),
      cmocka_unit_test(bad_options),     cmocka_unit_test(peaks_every_device),
      cmocka_unit_test(kv_dtypes),
  };
  int rc = cmocka_run_group_tests(tests, NULL, NULL);
  char cmd[300];
  snprintf(cmd, sizeof cmd, "rm -rf '%s'", dir);
  if (system(cmd) != 0) fprintf(stderr, "test_bench: could not remove %s\n", dir);
  return rc;
}
