/* Concurrency, as attn.h promises it: separate contexts from separate
 * threads at once (also on the same device), and thread-safe opening,
 * closing, device listing and module loading.
 *
 *  - The very first libattn calls of the process come from NTHREADS threads
 *    at once, so the one-time module scan races with itself.
 *  - On each device (ref and, when present, pocl; or $ATTN_TEST_DEVICES),
 *    NTHREADS threads each open their own context and run SDPA and an MHA
 *    graph with a KV cache several times; every result must be bit-identical
 *    to the same run done serially first (which is itself checked against
 *    the double-precision oracle).
 *  - Threads open and close contexts, list devices and fail selectors in a
 *    loop; each thread's error message must be its own.
 * Worker threads never call cmocka (it is not thread-safe): they record what
 * went wrong and the main thread asserts. tests/ci-hardening.sh also runs
 * this suite under ThreadSanitizer. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>
#include <math.h>
#include <pthread.h>

#include "attn.h"
#include "testutil.h"

#define NTHREADS 8
#define REPEATS 3

/* ---- a start line for all threads at once ---------------------------------- */

static pthread_barrier_t start_line;

typedef struct worker {
  pthread_t tid;
  int id;
  const char *sel;
  char err[512]; /* empty when all went well */
} worker;

static void werr(worker *w, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void werr(worker *w, const char *fmt, ...) {
  if (w->err[0]) return; /* keep the first */
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(w->err, sizeof w->err, fmt, ap);
  va_end(ap);
}

static void run_workers(worker *ws, void *(*fn)(void *), const char *sel) {
  assert_int_equal(pthread_barrier_init(&start_line, NULL, NTHREADS), 0);
  for (int i = 0; i < NTHREADS; i++) {
    memset(&ws[i], 0, sizeof ws[i]);
    ws[i].id = i;
    ws[i].sel = sel;
    assert_int_equal(pthread_create(&ws[i].tid, NULL, fn, &ws[i]), 0);
  }
  for (int i = 0; i < NTHREADS; i++) assert_int_equal(pthread_join(ws[i].tid, NULL), 0);
  pthread_barrier_destroy(&start_line);
  int bad = 0;
  for (int i = 0; i < NTHREADS; i++)
    if (ws[i].err[0]) {
      printf("thread %d (%s): %s\n", i, sel ? sel : "-", ws[i].err);
      bad++;
    }
  if (bad) fail_msg("%d of %d threads failed", bad, NTHREADS);
}

/* ---- the first calls, all at once ------------------------------------------ */

static size_t first_ndev[NTHREADS];

static void *first_scan(void *arg) {
  worker *w = arg;
  pthread_barrier_wait(&start_line);
  attn_device_list *l = NULL;
  if (attn_list_devices(&l) != ATTN_OK) {
    werr(w, "attn_list_devices: %s", attn_last_error());
    return NULL;
  }
  first_ndev[w->id] = attn_device_list_count(l);
  attn_device_list_free(l);
  return NULL;
}

/* Must run first: before it, nothing in the process has touched libattn. */
static void test_first_scan_concurrent(void **state) {
  (void)state;
  worker ws[NTHREADS];
  run_workers(ws, first_scan, NULL);
  assert_true(first_ndev[0] >= 1); /* ref at least */
  for (int i = 1; i < NTHREADS; i++) assert_int_equal(first_ndev[i], first_ndev[0]);
}

/* ---- the workload ------------------------------------------------------------ */

enum { B = 2, HQ = 4, HKV = 2, SQ = 5, SKV = 7, D = 8, DV = 8 };
enum { E = 16, NH = 4, NKV = 2, HD = 4, MS = 6 };
static float hq[B * HQ * SQ * D], hk[B * HKV * SKV * D], hv[B * HKV * SKV * DV];
static float hw[4][E * E], hb[4][E], hx[B * MS * E];

typedef struct results {
  float sdpa[B * HQ * SQ * DV];
  float lse[B * HQ * SQ];
  float mha[B * MS * E];
  float cached[B * MS * E]; /* token by token through a KV cache */
} results;

/* One full workload on a context of its own. Returns NULL or what failed. */
static const char *workload(const char *sel, results *r, char *why, size_t why_len) {
  attn_context *ctx = NULL;
  attn_tensor *q = NULL, *k = NULL, *v = NULL, *out = NULL, *lse = NULL, *w[4] = {0},
              *bias[4] = {0}, *x = NULL, *y = NULL, *xt = NULL, *yt = NULL;
  attn_mha *g = NULL;
  attn_kv_cache *c = NULL;
  const char *failed = NULL;
#define TRY(what, call)                                              \
  do {                                                               \
    if ((call) != ATTN_OK) {                                         \
      snprintf(why, why_len, "%s: %s", what, attn_last_error());     \
      failed = why;                                                  \
      goto done;                                                     \
    }                                                                \
  } while (0)
  TRY("open", attn_open(sel, &ctx));
  const int64_t qs[4] = {B, HQ, SQ, D}, ks[4] = {B, HKV, SKV, D}, vs[4] = {B, HKV, SKV, DV},
                os[4] = {B, HQ, SQ, DV}, ls[3] = {B, HQ, SQ};
  TRY("q", attn_tensor_create(ctx, 4, qs, &q));
  TRY("k", attn_tensor_create(ctx, 4, ks, &k));
  TRY("v", attn_tensor_create(ctx, 4, vs, &v));
  TRY("out", attn_tensor_create(ctx, 4, os, &out));
  TRY("lse", attn_tensor_create(ctx, 3, ls, &lse));
  TRY("write q", attn_tensor_write(q, hq, sizeof hq / sizeof hq[0]));
  TRY("write k", attn_tensor_write(k, hk, sizeof hk / sizeof hk[0]));
  TRY("write v", attn_tensor_write(v, hv, sizeof hv / sizeof hv[0]));
  attn_sdpa_args a = {.struct_size = sizeof(attn_sdpa_args), .q = q, .k = k, .v = v, .out = out, .lse = lse, .causal = true};
  TRY("sdpa", attn_sdpa(ctx, &a));
  TRY("read out", attn_tensor_read(out, r->sdpa, sizeof r->sdpa / sizeof r->sdpa[0]));
  TRY("read lse", attn_tensor_read(lse, r->lse, sizeof r->lse / sizeof r->lse[0]));

  const int64_t rows[4] = {NH * HD, NKV * HD, NKV * HD, E}, cols[4] = {E, E, E, NH * HD};
  for (int i = 0; i < 4; i++) {
    const int64_t wsh[2] = {rows[i], cols[i]}, bsh[1] = {rows[i]};
    TRY("w", attn_tensor_create(ctx, 2, wsh, &w[i]));
    TRY("write w", attn_tensor_write(w[i], hw[i], (size_t)(rows[i] * cols[i])));
    TRY("b", attn_tensor_create(ctx, 1, bsh, &bias[i]));
    TRY("write b", attn_tensor_write(bias[i], hb[i], (size_t)rows[i]));
  }
  const int64_t xs[3] = {B, MS, E}, ts[3] = {B, 1, E}, tst[3] = {MS * E, E, 1};
  TRY("x", attn_tensor_create(ctx, 3, xs, &x));
  TRY("y", attn_tensor_create(ctx, 3, xs, &y));
  TRY("write x", attn_tensor_write(x, hx, sizeof hx / sizeof hx[0]));
  attn_mha_desc d = {.struct_size = sizeof(attn_mha_desc), .d_model = E, .n_heads = NH, .n_kv_heads = NKV, .bias = true,
                     .causal = true, .max_batch = B, .max_seq = MS};
  attn_mha_weights mw = {.wq = w[0], .wk = w[1], .wv = w[2], .wo = w[3],
                         .bq = bias[0], .bk = bias[1], .bv = bias[2], .bo = bias[3]};
  TRY("mha_create", attn_mha_create(ctx, &d, &mw, &g));
  TRY("mha_run", attn_mha_run(g, x, NULL, y));
  TRY("read mha", attn_tensor_read(y, r->mha, sizeof r->mha / sizeof r->mha[0]));
  TRY("kv_cache_create", attn_kv_cache_create(g, B, MS, &c));
  for (int t = 0; t < MS; t++) { /* decode token t: views of x and y at row t */
    TRY("view x", attn_tensor_view(x, t * E, 3, ts, tst, &xt));
    TRY("view y", attn_tensor_view(y, t * E, 3, ts, tst, &yt));
    TRY("mha_run_cached", attn_mha_run_cached(g, c, xt, yt));
    attn_tensor_free(xt);
    attn_tensor_free(yt);
    xt = yt = NULL;
  }
  TRY("read cached", attn_tensor_read(y, r->cached, sizeof r->cached / sizeof r->cached[0]));
#undef TRY
done:
  attn_tensor_free(xt);
  attn_tensor_free(yt);
  attn_kv_cache_free(c);
  attn_mha_free(g);
  attn_tensor_free(y);
  attn_tensor_free(x);
  for (int i = 0; i < 4; i++) {
    attn_tensor_free(w[i]);
    attn_tensor_free(bias[i]);
  }
  attn_tensor_free(lse);
  attn_tensor_free(out);
  attn_tensor_free(v);
  attn_tensor_free(k);
  attn_tensor_free(q);
  attn_close(ctx);
  return failed;
}

static results serial; /* of the device under test */

static void *parallel_runs(void *arg) {
  worker *w = arg;
  results *r = malloc(sizeof *r);
  if (!r) {
    werr(w, "out of memory");
    return NULL;
  }
  pthread_barrier_wait(&start_line);
  for (int rep = 0; rep < REPEATS && !w->err[0]; rep++) {
    char why[400];
    memset(r, 0, sizeof *r);
    const char *f = workload(w->sel, r, why, sizeof why);
    if (f) werr(w, "run %d: %s", rep, f);
    else if (memcmp(r->sdpa, serial.sdpa, sizeof r->sdpa) ||
             memcmp(r->lse, serial.lse, sizeof r->lse))
      werr(w, "run %d: sdpa differs from the serial run", rep);
    else if (memcmp(r->mha, serial.mha, sizeof r->mha))
      werr(w, "run %d: mha differs from the serial run", rep);
    else if (memcmp(r->cached, serial.cached, sizeof r->cached))
      werr(w, "run %d: cached mha differs from the serial run", rep);
  }
  free(r);
  return NULL;
}

/* The serial results against the oracle, so "identical" means "right". */
static void check_serial_against_oracle(void) {
  double want[B * HQ * SQ * DV], wl[B * HQ * SQ];
  tu_sdpa_problem p = {.B = B, .Hq = HQ, .Hkv = HKV, .Sq = SQ, .Skv = SKV, .D = D, .Dv = DV,
                       .q = hq, .k = hk, .v = hv, .mask_b = 1, .mask_h = 1, .causal = true,
                       .scale = (double)(float)(1.0 / sqrt((double)D))};
  tu_sdpa_double(&p, want, NULL, wl);
  assert_true(tu_check_close("serial sdpa", serial.sdpa, want, B * HQ * SQ * DV, NULL));
  assert_true(tu_check_close("serial lse", serial.lse, wl, B * HQ * SQ, NULL));
  /* MHA: the cached decode must equal the one causal pass (same device). */
  double full[B * MS * E];
  for (size_t i = 0; i < B * MS * E; i++) full[i] = serial.mha[i];
  assert_true(tu_check_close("cached vs full mha", serial.cached, full, B * MS * E, NULL));
}

static char devs[8][64];
static int ndevs;

static void test_parallel_contexts(void **state) {
  (void)state;
  if (ndevs == 0) skip();
  for (int i = 0; i < ndevs; i++) {
    char why[400];
    memset(&serial, 0, sizeof serial);
    const char *f = workload(devs[i], &serial, why, sizeof why);
    if (f) fail_msg("%s: serial run: %s", devs[i], f);
    check_serial_against_oracle();
    worker ws[NTHREADS];
    run_workers(ws, parallel_runs, devs[i]);
    printf("%s: %d threads x %d runs identical to the serial run\n", devs[i], NTHREADS,
           REPEATS);
  }
}

/* ---- open, close, list and fail, all at once ---------------------------------- */

static void *churn(void *arg) {
  worker *w = arg;
  char bad[64];
  /* A selector only this thread uses: its error must come back to it. */
  snprintf(bad, sizeof bad, "nosuch%d", w->id);
  pthread_barrier_wait(&start_line);
  for (int i = 0; i < 20 && !w->err[0]; i++) {
    attn_context *c = NULL;
    const char *sel = w->sel ? w->sel : "ref";
    if (attn_open(sel, &c) != ATTN_OK) {
      werr(w, "attn_open(%s): %s", sel, attn_last_error());
      break;
    }
    attn_device_info info;
    if (attn_context_info(c, &info) != ATTN_OK || strcmp(info.backend, "ref") != 0)
      werr(w, "context_info: %s", attn_last_error());
    attn_close(c);
    attn_device_list *l = NULL;
    if (attn_list_devices(&l) != ATTN_OK) werr(w, "list: %s", attn_last_error());
    else if (attn_device_list_count(l) != first_ndev[0])
      werr(w, "list: %zu devices, first scan saw %zu", attn_device_list_count(l), first_ndev[0]);
    attn_device_list_free(l);
    attn_status s = attn_open(bad, &c);
    if (s != ATTN_ERR_NO_DEVICE || c != NULL)
      werr(w, "attn_open(%s): status %d, want ATTN_ERR_NO_DEVICE", bad, (int)s);
    else if (!strstr(attn_last_error(), bad))
      werr(w, "attn_open(%s): the message is not this thread's: %s", bad, attn_last_error());
    s = attn_open("ref:", &c); /* malformed: ATTN_ERR_SELECTOR */
    if (s != ATTN_ERR_SELECTOR || !strstr(attn_last_error(), "\"ref:\""))
      werr(w, "attn_open(ref:): status %d: %s", (int)s, attn_last_error());
  }
  return NULL;
}

static void test_open_close_list_concurrent(void **state) {
  (void)state;
  worker ws[NTHREADS];
  run_workers(ws, churn, "ref");
}

static int setup(void **state) {
  (void)state;
  uint64_t seed = 0x7423ad;
  tu_fill_uniform(hq, sizeof hq / sizeof hq[0], &seed, -1, 1);
  tu_fill_uniform(hk, sizeof hk / sizeof hk[0], &seed, -1, 1);
  tu_fill_uniform(hv, sizeof hv / sizeof hv[0], &seed, -1, 1);
  for (int i = 0; i < 4; i++) {
    tu_fill_uniform(hw[i], E * E, &seed, -0.3f, 0.3f);
    tu_fill_uniform(hb[i], E, &seed, -0.3f, 0.3f);
  }
  tu_fill_uniform(hx, sizeof hx / sizeof hx[0], &seed, -1, 1);
  return 0;
}

/* The devices: $ATTN_TEST_DEVICES as given, else ref and pocl (the OpenCL
 * CPU device; clblast's GPU path gains nothing here that pocl does not
 * cover, and costs its tuning per context). Runs after the first scan. */
static void test_pick_devices(void **state) {
  (void)state;
  char all[8][64];
  int n = tu_devices("threads", all, 8);
  const char *env = getenv("ATTN_TEST_DEVICES");
  ndevs = 0;
  for (int i = 0; i < n; i++)
    if ((env && *env) || strncmp(all[i], "ref", 3) == 0 || strncmp(all[i], "pocl", 4) == 0)
      memcpy(devs[ndevs++], all[i], 64);
  assert_true(ndevs >= 1);
  printf("threads: running on");
  for (int i = 0; i < ndevs; i++) printf(" %s", devs[i]);
  printf("\n");
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_first_scan_concurrent), /* first: nothing scanned yet */
      cmocka_unit_test(test_pick_devices),
      cmocka_unit_test(test_parallel_contexts),
      cmocka_unit_test(test_open_close_list_concurrent),
  };
  return cmocka_run_group_tests_name("threads", tests, setup, NULL);
}
