/* Allocation failure, SQLite style: for every N, fail the Nth host
 * allocation of a whole scenario (once only, then from the Nth on), and check
 * that every call returns ATTN_OK or ATTN_ERR_NOMEM with a message naming the
 * function, that nothing leaks, and that the same scenario run again on the
 * same context succeeds with the right numbers.
 *
 * The core is linked statically and this program is linked with
 * -Wl,--wrap=malloc,calloc,realloc,strdup,free (Makefile.am), so every
 * allocation the core makes goes through the __wrap_ functions below. The
 * backend modules are dlopen'ed shared objects: their allocations (the ref
 * module allocates its contexts, buffers and per-row scratch with its own
 * malloc) do not go through --wrap and are not failed here; a backend's own
 * out-of-memory paths are covered by the allocfail test plugin.
 *
 * Leaks are checked two ways: the wrappers keep the set of live blocks the
 * core allocated, which must be back to where it was after each scenario
 * (this works in any build), and the sanitizer build's LeakSanitizer sees
 * the whole process. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>
#include <math.h>

#include "internal.h"
#include "testutil.h"

/* ---- the injector ---------------------------------------------------------- */

void *__real_malloc(size_t n);
void *__real_calloc(size_t n, size_t m);
void *__real_realloc(void *p, size_t n);
char *__real_strdup(const char *s);
void __real_free(void *p);
void *__wrap_malloc(size_t n);
void *__wrap_calloc(size_t n, size_t m);
void *__wrap_realloc(void *p, size_t n);
char *__wrap_strdup(const char *s);
void __wrap_free(void *p);

static long fail_at;   /* 0: off; else fail the fail_at-th allocation from arming */
static int fail_sticky; /* and every one after it */
static long seen;      /* allocations since arming */
static long injected;  /* failures injected since arming */

/* Live blocks from the wrapped allocators (single-threaded test). */
#define LIVE_MAX 8192
static void *live[LIVE_MAX];
static int nlive;
static int live_overflow;

static void live_add(void *p) {
  if (!p) return;
  if (nlive == LIVE_MAX) {
    live_overflow = 1;
    return;
  }
  live[nlive++] = p;
}

static void live_del(void *p) {
  if (!p) return;
  for (int i = nlive - 1; i >= 0; i--)
    if (live[i] == p) {
      live[i] = live[--nlive];
      return;
    }
  /* Not ours (allocated by libc on the core's behalf): nothing to do. */
}

static int should_fail(void) {
  if (!fail_at) return 0;
  seen++;
  if (seen == fail_at || (fail_sticky && seen > fail_at)) {
    injected++;
    return 1;
  }
  return 0;
}

void *__wrap_malloc(size_t n) {
  if (should_fail()) return NULL;
  void *p = __real_malloc(n);
  live_add(p);
  return p;
}

void *__wrap_calloc(size_t n, size_t m) {
  if (should_fail()) return NULL;
  void *p = __real_calloc(n, m);
  live_add(p);
  return p;
}

void *__wrap_realloc(void *p, size_t n) {
  if (should_fail()) return NULL; /* p stays valid, as a real failure leaves it */
  void *q = __real_realloc(p, n);
  if (q) {
    live_del(p);
    live_add(q);
  }
  return q;
}

char *__wrap_strdup(const char *s) {
  if (should_fail()) return NULL;
  /* strdup allocates inside libc; track the block so free() finds it. */
  char *p = __real_strdup(s);
  live_add(p);
  return p;
}

void __wrap_free(void *p) {
  live_del(p);
  __real_free(p);
}

static void arm(long n, int sticky) {
  fail_at = n;
  fail_sticky = sticky;
  seen = injected = 0;
}

static void disarm(void) { fail_at = 0; }

/* A failed call must say ATTN_ERR_NOMEM and name its function. A call may
 * also succeed despite a failed allocation (a path that can do without). */
/* The message of a scenario's failed call, kept before the cleanup calls
 * (attn_close starts a new call and clears it). */
static char last_msg[2048];
static attn_status keep_msg(attn_status s) {
  if (s) snprintf(last_msg, sizeof last_msg, "%s", attn_last_error());
  return s;
}

static void check_status(attn_status s, const char *what) {
  if (s == ATTN_OK) return;
  const char *m = last_msg;
  if (s != ATTN_ERR_NOMEM)
    fail_msg("%s: status %d (%s), want ATTN_OK or ATTN_ERR_NOMEM: %s", what, (int)s,
             attn_status_str(s), m);
  if (strncmp(m, "attn_", 5) != 0 || !strstr(m, ": "))
    fail_msg("%s: ATTN_ERR_NOMEM with message \"%s\", which does not name the function", what,
             m);
}

/* ---- the SDPA scenario ----------------------------------------------------- */

enum { B = 2, HQ = 4, HKV = 2, SQ = 3, SKV = 5, D = 4, DV = 3 };
static float hq[B * HQ * SQ * D], hk[B * HKV * SKV * D], hv[B * HKV * SKV * DV];
static float hmask[B * SQ * SKV];
static const int32_t kv_lens[B] = {5, 3};

typedef struct sdpa_result {
  float out[B * HQ * SQ * DV];
  float lse[B * HQ * SQ];
} sdpa_result;

/* Everything a caller does for one SDPA: tensors (k and v as [B,S,H,D]
 * storages seen through strided views, so writes and reads take the strided
 * path that allocates), writes, the call, the reads, the frees. Returns the
 * first failure, after freeing what it made. *step names the call. */
static attn_status sdpa_scenario(attn_context *ctx, sdpa_result *res, const char **step) {
  attn_tensor *q = NULL, *kst = NULL, *vst = NULL, *k = NULL, *v = NULL, *mask = NULL,
              *out = NULL, *lse = NULL, *outT = NULL;
  attn_status s;
  const int64_t qs[4] = {B, HQ, SQ, D}, kss[4] = {B, SKV, HKV, D}, vss[4] = {B, SKV, HKV, DV};
  const int64_t ks[4] = {B, HKV, SKV, D}, kst_[4] = {SKV * HKV * D, D, HKV * D, 1};
  const int64_t vs[4] = {B, HKV, SKV, DV}, vst_[4] = {SKV * HKV * DV, DV, HKV * DV, 1};
  const int64_t ms[4] = {B, 1, SQ, SKV}, os[4] = {B, HQ, SQ, DV}, ls[3] = {B, HQ, SQ};
  /* out read back as [B, SQ, HQ, DV] through a transposed view */
  const int64_t ots[4] = {B, SQ, HQ, DV}, otst[4] = {HQ * SQ * DV, DV, SQ * DV, 1};
#define STEP(name, call)         \
  do {                           \
    *step = name;                \
    if ((s = keep_msg(call))) goto done; \
  } while (0)
  STEP("tensor_create q", attn_tensor_create(ctx, 4, qs, &q));
  /* k and v stored as bf16: the conversions' buffers are swept too. */
  STEP("tensor_create k storage", attn_tensor_create_typed(ctx, ATTN_BF16, 4, kss, &kst));
  STEP("tensor_create v storage", attn_tensor_create_typed(ctx, ATTN_BF16, 4, vss, &vst));
  STEP("tensor_view k", attn_tensor_view(kst, 0, 4, ks, kst_, &k));
  STEP("tensor_view v", attn_tensor_view(vst, 0, 4, vs, vst_, &v));
  STEP("tensor_create mask", attn_tensor_create(ctx, 4, ms, &mask));
  STEP("tensor_create out", attn_tensor_create(ctx, 4, os, &out));
  STEP("tensor_create lse", attn_tensor_create(ctx, 3, ls, &lse));
  STEP("tensor_write q", attn_tensor_write(q, hq, sizeof hq / sizeof hq[0]));
  STEP("tensor_write k (strided)", attn_tensor_write(k, hk, sizeof hk / sizeof hk[0]));
  STEP("tensor_write v (strided)", attn_tensor_write(v, hv, sizeof hv / sizeof hv[0]));
  STEP("tensor_write mask", attn_tensor_write(mask, hmask, sizeof hmask / sizeof hmask[0]));
  attn_sdpa_args a = {.struct_size = sizeof(attn_sdpa_args), .q = q, .k = k, .v = v, .out = out, .mask = mask,
                      .mask_kind = ATTN_MASK_BOOL, .causal = true, .kv_lens = kv_lens,
                      .lse = lse};
  STEP("sdpa", attn_sdpa(ctx, &a));
  STEP("tensor_view out transposed", attn_tensor_view(out, 0, 4, ots, otst, &outT));
  float tr[B * SQ * HQ * DV];
  STEP("tensor_read out (strided)", attn_tensor_read(outT, tr, sizeof tr / sizeof tr[0]));
  for (int b = 0; b < B; b++) /* back to [B,HQ,SQ,DV] */
    for (int i = 0; i < SQ; i++)
      for (int h = 0; h < HQ; h++)
        for (int e = 0; e < DV; e++)
          res->out[((b * HQ + h) * SQ + i) * DV + e] = tr[((b * SQ + i) * HQ + h) * DV + e];
  STEP("tensor_read lse", attn_tensor_read(lse, res->lse, sizeof res->lse / sizeof res->lse[0]));
#undef STEP
done:
  attn_tensor_free(outT);
  attn_tensor_free(lse);
  attn_tensor_free(out);
  attn_tensor_free(mask);
  attn_tensor_free(v);
  attn_tensor_free(k);
  attn_tensor_free(vst);
  attn_tensor_free(kst);
  attn_tensor_free(q);
  return s;
}

static void sdpa_oracle(double *out, double *lse) {
  tu_sdpa_problem p = {.B = B, .Hq = HQ, .Hkv = HKV, .Sq = SQ, .Skv = SKV, .D = D, .Dv = DV,
                       .q = hq, .k = hk, .v = hv, .mask = hmask, .mask_kind = ATTN_MASK_BOOL,
                       .mask_b = B, .mask_h = 1, .causal = true,
                       .scale = (double)(float)(1.0 / 2.0), .kv_lens = kv_lens};
  tu_sdpa_double(&p, out, NULL, lse);
}

/* ---- the MHA scenario: graph, a run, a KV cache and two cached runs -------- */

enum { E = 8, NH = 4, NKV = 2, HD = 2, MB = 2, MS = 3, CAP = 4 };
static float hw[4][E * E], hb[4][E];    /* wq [NH*HD,E], wk/wv [NKV*HD,E], wo [E,NH*HD] */
static float hx[MB * MS * E];           /* x [MB, MS, E] */

typedef struct mha_result {
  float full[MB * MS * E];   /* attn_mha_run over all MS tokens (causal) */
  float step1[MB * 2 * E];   /* cached run of tokens 0..1 */
  float step2[MB * 1 * E];   /* cached run of token 2 */
  int64_t cache_len;
} mha_result;

static attn_status mha_scenario(attn_context *ctx, mha_result *res, const char **step) {
  attn_tensor *w[4] = {0}, *bias[4] = {0}, *x = NULL, *x1 = NULL, *x2 = NULL, *out = NULL,
              *o1 = NULL, *o2 = NULL;
  attn_mha *g = NULL;
  attn_kv_cache *c = NULL;
  attn_status s;
  const int64_t rows[4] = {NH * HD, NKV * HD, NKV * HD, E}, cols[4] = {E, E, E, NH * HD};
  const int64_t xs[3] = {MB, MS, E}, x1s[3] = {MB, 2, E}, x2s[3] = {MB, 1, E};
  /* x1/x2: the first two and the last token of x, as views of x's storage. */
  const int64_t xst[3] = {MS * E, E, 1};
#define STEP(name, call)         \
  do {                           \
    *step = name;                \
    if ((s = keep_msg(call))) goto done; \
  } while (0)
  for (int i = 0; i < 4; i++) {
    const int64_t ws[2] = {rows[i], cols[i]}, bs[1] = {rows[i]};
    STEP("tensor_create w", attn_tensor_create(ctx, 2, ws, &w[i]));
    STEP("tensor_write w", attn_tensor_write(w[i], hw[i], (size_t)(rows[i] * cols[i])));
    STEP("tensor_create b", attn_tensor_create(ctx, 1, bs, &bias[i]));
    STEP("tensor_write b", attn_tensor_write(bias[i], hb[i], (size_t)rows[i]));
  }
  STEP("tensor_create x", attn_tensor_create(ctx, 3, xs, &x));
  STEP("tensor_write x", attn_tensor_write(x, hx, sizeof hx / sizeof hx[0]));
  STEP("tensor_view x1", attn_tensor_view(x, 0, 3, x1s, xst, &x1));
  STEP("tensor_view x2", attn_tensor_view(x, 2 * E, 3, x2s, xst, &x2));
  STEP("tensor_create out", attn_tensor_create(ctx, 3, xs, &out));
  STEP("tensor_create o1", attn_tensor_create(ctx, 3, x1s, &o1));
  STEP("tensor_create o2", attn_tensor_create(ctx, 3, x2s, &o2));
  attn_mha_desc d = {.struct_size = sizeof(attn_mha_desc), .d_model = E, .n_heads = NH, .n_kv_heads = NKV, .head_dim = HD,
                     .bias = true, .causal = true, .max_batch = MB, .max_seq = MS};
  attn_mha_weights mw = {.wq = w[0], .wk = w[1], .wv = w[2], .wo = w[3],
                         .bq = bias[0], .bk = bias[1], .bv = bias[2], .bo = bias[3]};
  STEP("mha_create", attn_mha_create(ctx, &d, &mw, &g));
  STEP("mha_set_profiling", attn_mha_set_profiling(g, true));
  STEP("mha_run", attn_mha_run(g, x, NULL, out));
  STEP("tensor_read out", attn_tensor_read(out, res->full, sizeof res->full / sizeof res->full[0]));
  STEP("kv_cache_create", attn_kv_cache_create(g, MB, CAP, &c));
  STEP("mha_run_cached 1", attn_mha_run_cached(g, c, x1, o1));
  STEP("tensor_read o1", attn_tensor_read(o1, res->step1, sizeof res->step1 / sizeof res->step1[0]));
  STEP("mha_run_cached 2", attn_mha_run_cached(g, c, x2, o2));
  STEP("tensor_read o2", attn_tensor_read(o2, res->step2, sizeof res->step2 / sizeof res->step2[0]));
  res->cache_len = attn_kv_cache_length(c);
#undef STEP
done:
  attn_kv_cache_free(c);
  attn_mha_free(g);
  attn_tensor_free(o2);
  attn_tensor_free(o1);
  attn_tensor_free(out);
  attn_tensor_free(x2);
  attn_tensor_free(x1);
  attn_tensor_free(x);
  for (int i = 0; i < 4; i++) {
    attn_tensor_free(bias[i]);
    attn_tensor_free(w[i]);
  }
  return s;
}

/* The whole causal MHA over x in double (projections rounded to float, as
 * the graph stores them). out [MB, MS, E]. */
static void mha_oracle(double *out) {
  double tq[MB * MS * NH * HD], tk[MB * MS * NKV * HD], tv[MB * MS * NKV * HD];
  float q[MB * NH * MS * HD], k[MB * NKV * MS * HD], v[MB * NKV * MS * HD];
  double a[MB * NH * MS * HD];
  float am[MB * MS * NH * HD];
  tu_linear_double(hx, MB * MS, E, hw[0], hb[0], NH * HD, tq);
  tu_linear_double(hx, MB * MS, E, hw[1], hb[1], NKV * HD, tk);
  tu_linear_double(hx, MB * MS, E, hw[2], hb[2], NKV * HD, tv);
  for (int b = 0; b < MB; b++)
    for (int i = 0; i < MS; i++)
      for (int e = 0; e < HD; e++) {
        for (int h = 0; h < NH; h++)
          q[((b * NH + h) * MS + i) * HD + e] = (float)tq[(b * MS + i) * NH * HD + h * HD + e];
        for (int h = 0; h < NKV; h++) {
          k[((b * NKV + h) * MS + i) * HD + e] = (float)tk[(b * MS + i) * NKV * HD + h * HD + e];
          v[((b * NKV + h) * MS + i) * HD + e] = (float)tv[(b * MS + i) * NKV * HD + h * HD + e];
        }
      }
  tu_sdpa_problem p = {.B = MB, .Hq = NH, .Hkv = NKV, .Sq = MS, .Skv = MS, .D = HD, .Dv = HD,
                       .q = q, .k = k, .v = v, .mask_b = 1, .mask_h = 1, .causal = true,
                       .scale = (double)(float)(1.0 / sqrt(2.0))};
  tu_sdpa_double(&p, a, NULL, NULL);
  for (int b = 0; b < MB; b++)
    for (int h = 0; h < NH; h++)
      for (int i = 0; i < MS; i++)
        for (int e = 0; e < HD; e++)
          am[(b * MS + i) * NH * HD + h * HD + e] = (float)a[((b * NH + h) * MS + i) * HD + e];
  tu_linear_double(am, MB * MS, NH * HD, hw[3], hb[3], E, out);
}

/* ---- the sweeps ------------------------------------------------------------ */

static attn_context *ctx;

static int setup(void **state) {
  (void)state;
  uint64_t seed = 0x5eed0a11c;
  tu_fill_uniform(hq, sizeof hq / sizeof hq[0], &seed, -1, 1);
  tu_fill_uniform(hk, sizeof hk / sizeof hk[0], &seed, -1, 1);
  tu_fill_uniform(hv, sizeof hv / sizeof hv[0], &seed, -1, 1);
  /* Values bf16 holds exactly, so the oracle needs no rounding of its own. */
  for (size_t i = 0; i < sizeof hk / sizeof hk[0]; i++)
    hk[i] = attn_bf16_to_f32(attn_f32_to_bf16(hk[i]));
  for (size_t i = 0; i < sizeof hv / sizeof hv[0]; i++)
    hv[i] = attn_bf16_to_f32(attn_f32_to_bf16(hv[i]));
  for (size_t i = 0; i < sizeof hmask / sizeof hmask[0]; i++) hmask[i] = (i % 7) != 3;
  for (int i = 0; i < 4; i++) {
    tu_fill_uniform(hw[i], E * E, &seed, -0.5f, 0.5f);
    tu_fill_uniform(hb[i], E, &seed, -0.5f, 0.5f);
  }
  tu_fill_uniform(hx, sizeof hx / sizeof hx[0], &seed, -1, 1);
  /* Open before arming: the first public call scans the module registry
   * once for the process (its own sweep is below). */
  if (attn_open("ref", &ctx) != ATTN_OK) {
    printf("cannot open ref: %s\n", attn_last_error());
    return -1;
  }
  /* Modules load when first asked for: load them all now, so that the
   * sweeps see the registry as it stays (a module's records are kept). */
  attn_device_list *l = NULL;
  if (attn_list_devices(&l) != ATTN_OK) return -1;
  attn_device_list_free(l);
  return 0;
}

static int teardown(void **state) {
  (void)state;
  attn_close(ctx);
  return 0;
}

/* Run `scenario` with the Nth allocation failing, for N = 1, 2, ... until a
 * run sees no injected failure, in both modes; after each, check the
 * status, the live blocks, and that an undisturbed rerun gives `good`. */
#define SWEEP(run, result_t, good, what)                                                    \
  do {                                                                                      \
    for (int sticky = 0; sticky <= 1; sticky++) {                                           \
      long n;                                                                               \
      for (n = 1; n < 100000; n++) {                                                        \
        result_t r;                                                                         \
        memset(&r, 0, sizeof r);                                                            \
        const char *sw_step = "";                                                              \
        int sw_live0 = nlive;                                                                  \
        arm(n, sticky);                                                                     \
        attn_status sw_s = run(ctx, &r, &sw_step);                                                \
        disarm();                                                                           \
        long got = injected;                                                                \
        char where[160];                                                                    \
        snprintf(where, sizeof where, "%s: allocation %ld failing (%s), at %s", what, n,    \
                 sticky ? "from then on" : "once", sw_step);                                   \
        check_status(sw_s, where);                                                             \
        if (!live_overflow && nlive != sw_live0)                                               \
          fail_msg("%s: %d host blocks leaked", where, nlive - sw_live0);                      \
        if (got == 0) {                                                                     \
          assert_int_equal(sw_s, ATTN_OK);                                                     \
          assert_memory_equal(&r, &(good), sizeof r);                                       \
          break;                                                                            \
        }                                                                                   \
        /* The same context, undisturbed: works and agrees bit for bit. */                  \
        memset(&r, 0, sizeof r);                                                            \
        sw_s = run(ctx, &r, &sw_step);                                                            \
        if (sw_s != ATTN_OK)                                                                   \
          fail_msg("%s: the rerun failed at %s: %s", where, sw_step, last_msg);        \
        if (memcmp(&r, &(good), sizeof r) != 0) fail_msg("%s: the rerun differs", where);   \
      }                                                                                     \
      printf("%s: %ld allocation points, %s\n", what, n - 1,                                \
             sticky ? "failing from then on" : "failing once");                             \
      assert_true(n > 1); /* the scenario did allocate, or it tested nothing */             \
    }                                                                                       \
  } while (0)

static void test_sdpa_alloc_failures(void **state) {
  (void)state;
  sdpa_result good;
  const char *step = "";
  memset(&good, 0, sizeof good);
  int live0 = nlive;
  attn_status s = sdpa_scenario(ctx, &good, &step);
  if (s) fail_msg("baseline failed at %s: %s", step, last_msg);
  assert_int_equal(nlive, live0);
  double want_o[B * HQ * SQ * DV], want_l[B * HQ * SQ];
  sdpa_oracle(want_o, want_l);
  assert_true(tu_check_close("sdpa out", good.out, want_o, B * HQ * SQ * DV, NULL));
  assert_true(tu_check_close("sdpa lse", good.lse, want_l, B * HQ * SQ, NULL));
  SWEEP(sdpa_scenario, sdpa_result, good, "sdpa");
}

static void test_mha_alloc_failures(void **state) {
  (void)state;
  mha_result good;
  const char *step = "";
  memset(&good, 0, sizeof good);
  attn_status s = mha_scenario(ctx, &good, &step);
  if (s) fail_msg("baseline failed at %s: %s", step, last_msg);
  assert_int_equal(good.cache_len, MS);
  double want[MB * MS * E];
  mha_oracle(want);
  assert_true(tu_check_close("mha out", good.full, want, MB * MS * E, NULL));
  /* The cached steps are the rows of the full causal pass. */
  double w1[MB * 2 * E], w2[MB * 1 * E];
  for (int b = 0; b < MB; b++) {
    memcpy(&w1[b * 2 * E], &want[b * MS * E], 2 * E * sizeof(double));
    memcpy(&w2[b * E], &want[(b * MS + 2) * E], E * sizeof(double));
  }
  assert_true(tu_check_close("mha cached step 1", good.step1, w1, MB * 2 * E, NULL));
  assert_true(tu_check_close("mha cached step 2", good.step2, w2, MB * E, NULL));
  SWEEP(mha_scenario, mha_result, good, "mha");
}

/* attn_open, attn_list_devices: contexts and device lists under failure. */
typedef struct open_result {
  int ndev;
  char name[256];
} open_result;

static attn_status open_scenario(attn_context *unused, open_result *r, const char **step) {
  (void)unused;
  attn_context *c = NULL;
  attn_device_list *l = NULL;
  attn_status s;
  *step = "open";
  if ((s = keep_msg(attn_open("nosuch,ref", &c)))) return s; /* an alternative fails first */
  attn_device_info info;
  *step = "context_info";
  if ((s = keep_msg(attn_context_info(c, &info)))) goto done;
  snprintf(r->name, sizeof r->name, "%s", info.name);
  *step = "list_devices";
  if ((s = keep_msg(attn_list_devices(&l)))) goto done;
  r->ndev = (int)attn_device_list_count(l);
done:
  attn_device_list_free(l);
  attn_close(c);
  return s;
}

static void test_open_alloc_failures(void **state) {
  (void)state;
  open_result good;
  const char *step = "";
  memset(&good, 0, sizeof good);
  attn_status s = open_scenario(NULL, &good, &step);
  if (s) fail_msg("baseline failed at %s: %s", step, last_msg);
  assert_true(good.ndev >= 1);
  SWEEP(open_scenario, open_result, good, "open/list");
}

/* The module registry scan (attn__registry_scan), over the test plugins:
 * good and broken modules, so both lists grow. A scan that runs out of
 * memory fails whole and leaves an empty registry. */
typedef struct scan_result {
  int nbackends, nfailures;
} scan_result;

static const char *scan_dir;

static attn_status scan_scenario(attn_context *unused, scan_result *r, const char **step) {
  (void)unused;
  attn_registry reg;
  *step = "registry_scan";
  attn__enter("attn__registry_scan"); /* the name its messages carry */
  attn_status s = keep_msg(attn__registry_scan(scan_dir, &reg));
  if (s == ATTN_OK) {
    r->nbackends = reg.nbackends;
    r->nfailures = reg.nfailures;
  } else if (reg.nbackends || reg.nfailures || reg.backends || reg.failures) {
    fail_msg("a failed scan left a registry of %d backends, %d failures", reg.nbackends,
             reg.nfailures);
  }
  attn__registry_free(&reg);
  return s;
}

static void test_registry_scan_alloc_failures(void **state) {
  (void)state;
  scan_dir = getenv("ATTN_TEST_PLUGIN_DIR");
  if (!scan_dir || !*scan_dir) {
    /* Nothing to scan but the backends themselves. */
    scan_dir = getenv("ATTN_BACKEND_PATH");
  }
  if (!scan_dir || !*scan_dir) skip();
  scan_result good;
  const char *step = "";
  memset(&good, 0, sizeof good);
  attn_status s = scan_scenario(NULL, &good, &step);
  if (s) fail_msg("baseline scan failed: %s", last_msg);
  assert_true(good.nbackends + good.nfailures >= 1);
  SWEEP(scan_scenario, scan_result, good, "registry scan");
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_sdpa_alloc_failures),
      cmocka_unit_test(test_mha_alloc_failures),
      cmocka_unit_test(test_open_alloc_failures),
      cmocka_unit_test(test_registry_scan_alloc_failures),
  };
  return cmocka_run_group_tests_name("alloc", tests, setup, teardown);
}
