/* Device faults (issue 5), on every OpenCL device (pocl and clblast): the
 * runtime's fault injection (ATTN_FAULT, backends/opencl/clrt.h) fails the
 * Nth buffer allocation, program build, kernel enqueue, buffer write, buffer
 * read or queue finish of a context, for every N over a whole SDPA (with
 * weights and lse) and a whole MHA graph run (creation, run, KV-cache
 * prefill and decode step), and the same SDPA in bf16 (on clblast its
 * fp32-scratch convert path), once and from-then-on. Each failing call must
 * return the status the runtime maps that CL error to, with the CL error's
 * name and the public function's name in attn_last_error(); no device
 * buffer may outlive its tensor (the context's storages against the
 * runtime's own count of live buffers); and the SAME context must then run
 * the whole scenario again correctly (SDPA against tu_sdpa_double, MHA
 * against the ref backend). Host leaks are LeakSanitizer's job
 * (tests/ci-hardening.sh). Also: a malformed ATTN_FAULT is refused, and a
 * broken clblast_sdpa.cl under ATTN_KERNEL_DIR fails attn_open with the
 * compiler log (the pocl case is in tests/test_opencl.c).
 *
 * The core is linked statically to read a context's internals: the pocl and
 * clblast backend contexts begin with their clrt_ctx (as clrt_peaks_slot
 * relies on), which holds the fault counters and the live-buffer count. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>
#include <math.h>
#include <sys/stat.h>
#include <unistd.h>

#include "clrt.h"
#include "internal.h"
#include "testutil.h"

#define MAX_DEV 16
static char g_sel[MAX_DEV][64];
static int g_ndev;

static const char *kind_name[CLRT_FAULT_NKINDS] = {
    [CLRT_FAULT_ALLOC] = "alloc", [CLRT_FAULT_BUILD] = "build", [CLRT_FAULT_ENQUEUE] = "enqueue",
    [CLRT_FAULT_WRITE] = "write", [CLRT_FAULT_READ] = "read",   [CLRT_FAULT_FINISH] = "finish"};

/* What each kind's default CL error must become (clrt_status). */
static const struct {
  const char *cl_name;
  attn_status status;
} expect[CLRT_FAULT_NKINDS] = {
    [CLRT_FAULT_ALLOC] = {"CL_MEM_OBJECT_ALLOCATION_FAILURE", ATTN_ERR_DEVICE_MEMORY},
    [CLRT_FAULT_BUILD] = {"CL_BUILD_PROGRAM_FAILURE", ATTN_ERR_BUILD},
    [CLRT_FAULT_ENQUEUE] = {"CL_OUT_OF_RESOURCES", ATTN_ERR_BACKEND},
    [CLRT_FAULT_WRITE] = {"CL_OUT_OF_RESOURCES", ATTN_ERR_BACKEND},
    [CLRT_FAULT_READ] = {"CL_OUT_OF_RESOURCES", ATTN_ERR_BACKEND},
    [CLRT_FAULT_FINISH] = {"CL_OUT_OF_RESOURCES", ATTN_ERR_BACKEND},
};

/* ---- context internals ------------------------------------------------------------ */

static clrt_ctx *cl_of(attn_context *ctx) { return (clrt_ctx *)ctx->bctx; }

static int live_storages(const attn_context *ctx) {
  int n = 0;
  for (const attn_storage *s = ctx->storages; s; s = s->next) n++;
  return n;
}

/* Device buffers not behind any storage: the backend's own scratch (clblast
 * keeps a grow-only score tile), or a leak. */
static int orphan_buffers(attn_context *ctx) { return cl_of(ctx)->n_buffers - live_storages(ctx); }

/* ---- the problems and their answers ----------------------------------------------- */

/* SDPA: GQA, causal with Sq < Skv (bottom-right), weights and lse. */
enum { SB = 1, SHQ = 4, SHKV = 2, SSQ = 5, SSKV = 9, SD = 16, SDV = 8 };
static float *s_q, *s_k, *s_v;
static double s_out[SB * SHQ * SSQ * SDV], s_w[SB * SHQ * SSQ * SSKV], s_lse[SB * SHQ * SSQ];
/* The same SDPA in bf16 (q, k, v, out, weights; lse f32): on clblast its
 * 16-bit path allocates and converts through scratch, on pocl it builds the
 * 16-bit kernel variants; the answers come from the inputs as rounded to
 * bf16. */
static float *s_qb, *s_kb, *s_vb;
static double s_outb[SB * SHQ * SSQ * SDV], s_wb[SB * SHQ * SSQ * SSKV], s_lseb[SB * SHQ * SSQ];

/* MHA: self attention, GQA, bias, causal; the KV-cache runs prefill S-1
 * tokens then decode one, which must equal the causal full run's rows. */
enum { MB = 2, MS = 6, ME = 32, MH = 4, MHKV = 2, MD = 8 };
static float *m_w[8]; /* wq wk wv wo bq bk bv bo */
static int64_t m_wshape[8][2];
static float *m_x, *m_xp, *m_xl;
static double m_ref[MB * MS * ME], m_refp[MB * (MS - 1) * ME], m_refl[MB * ME];

/* ---- one scenario on one context: every object it made, and what it read -------- */

typedef struct world {
  attn_context *ctx;
  attn_tensor *t[24];
  int nt;
  attn_mha *g;
  attn_kv_cache *kv;
  char err[2048];   /* attn_last_error() of the call that failed */
  char call[64];    /* which call */
  float got[3][MB * MS * ME]; /* outputs read back */
} world;

static void world_free(world *w) {
  attn_kv_cache_free(w->kv);
  attn_mha_free(w->g);
  for (int i = w->nt - 1; i >= 0; i--) attn_tensor_free(w->t[i]);
  w->kv = NULL;
  w->g = NULL;
  w->nt = 0;
}

/* Run call unless an earlier step failed; remember the first failure. */
#define STEP(w, st, expr)                                                    \
  do {                                                                       \
    if ((st) == ATTN_OK) {                                                   \
      (st) = (expr);                                                         \
      if ((st) != ATTN_OK) {                                                 \
        snprintf((w)->err, sizeof (w)->err, "%s", attn_last_error());        \
        snprintf((w)->call, sizeof (w)->call, "%.63s", #expr);               \
      }                                                                      \
    }                                                                        \
  } while (0)

/* A new tensor, filled from host data when given. */
static attn_status tensor(world *w, int ndim, const int64_t *shape, const float *data,
                          attn_tensor **out) {
  attn_tensor *t = NULL;
  attn_status st = ATTN_OK;
  STEP(w, st, attn_tensor_create(w->ctx, ndim, shape, &t));
  if (st != ATTN_OK) return st;
  w->t[w->nt++] = t;
  *out = t;
  if (data) STEP(w, st, attn_tensor_write(t, data, (size_t)attn_tensor_numel(t)));
  return st;
}

/* The same, of element type t (contiguous). */
static attn_status tensor_typed(world *w, attn_dtype t, int ndim, const int64_t *shape,
                                const float *data, attn_tensor **out) {
  attn_tensor *x = NULL;
  attn_status st = ATTN_OK;
  STEP(w, st, attn_tensor_create_typed(w->ctx, t, ndim, shape, &x));
  if (st != ATTN_OK) return st;
  w->t[w->nt++] = x;
  *out = x;
  if (data) STEP(w, st, attn_tensor_write(x, data, (size_t)attn_tensor_numel(x)));
  return st;
}

static attn_status scenario_sdpa_bf16(world *w) {
  const int64_t qs[4] = {SB, SHQ, SSQ, SD}, ks[4] = {SB, SHKV, SSKV, SD},
                vs[4] = {SB, SHKV, SSKV, SDV}, os[4] = {SB, SHQ, SSQ, SDV},
                ws[4] = {SB, SHQ, SSQ, SSKV}, ls[3] = {SB, SHQ, SSQ};
  attn_tensor *q = NULL, *k = NULL, *v = NULL, *o = NULL, *wt = NULL, *l = NULL;
  attn_status st = tensor_typed(w, ATTN_BF16, 4, qs, s_qb, &q);
  if (st == ATTN_OK) st = tensor_typed(w, ATTN_BF16, 4, ks, s_kb, &k);
  if (st == ATTN_OK) st = tensor_typed(w, ATTN_BF16, 4, vs, s_vb, &v);
  if (st == ATTN_OK) st = tensor_typed(w, ATTN_BF16, 4, os, NULL, &o);
  if (st == ATTN_OK) st = tensor_typed(w, ATTN_BF16, 4, ws, NULL, &wt);
  if (st == ATTN_OK) st = tensor(w, 3, ls, NULL, &l);
  attn_sdpa_args a = {.struct_size = sizeof(attn_sdpa_args), .q = q, .k = k, .v = v, .out = o, .causal = true, .weights = wt, .lse = l};
  STEP(w, st, attn_sdpa(w->ctx, &a));
  STEP(w, st, attn_synchronize(w->ctx));
  STEP(w, st, attn_tensor_read(o, w->got[0], sizeof s_outb / sizeof s_outb[0]));
  STEP(w, st, attn_tensor_read(wt, w->got[1], sizeof s_wb / sizeof s_wb[0]));
  STEP(w, st, attn_tensor_read(l, w->got[2], sizeof s_lseb / sizeof s_lseb[0]));
  return st;
}

/* got within the fp32 error plus one bf16 rounding (rel = 1.5 * 2^-8, 0 for
 * f32 outputs) of want; infinities equal. */
static int close_rounded(const char *what, const float *got, const double *want, size_t n,
                         double rel) {
  for (size_t i = 0; i < n; i++) {
    const double g = got[i], t = want[i];
    if (isinf(t) ? g != t : !(fabs(g - t) <= 1e-5 * (1 + fabs(t)) + rel * fabs(t))) {
      printf("%s[%zu] = %.9g, want %.9g\n", what, i, g, t);
      return 0;
    }
  }
  return 1;
}

static int check_sdpa_bf16(const world *w) {
  const double rel = 1.5 / 256;
  return close_rounded("sdpa bf16 out", w->got[0], s_outb, sizeof s_outb / sizeof s_outb[0],
                       rel) &&
         close_rounded("sdpa bf16 weights", w->got[1], s_wb, sizeof s_wb / sizeof s_wb[0], rel) &&
         close_rounded("sdpa bf16 lse", w->got[2], s_lseb, sizeof s_lseb / sizeof s_lseb[0], 0);
}

static attn_status scenario_sdpa(world *w) {
  const int64_t qs[4] = {SB, SHQ, SSQ, SD}, ks[4] = {SB, SHKV, SSKV, SD},
                vs[4] = {SB, SHKV, SSKV, SDV}, os[4] = {SB, SHQ, SSQ, SDV},
                ws[4] = {SB, SHQ, SSQ, SSKV}, ls[3] = {SB, SHQ, SSQ};
  attn_tensor *q = NULL, *k = NULL, *v = NULL, *o = NULL, *wt = NULL, *l = NULL;
  attn_status st = tensor(w, 4, qs, s_q, &q);
  if (st == ATTN_OK) st = tensor(w, 4, ks, s_k, &k);
  if (st == ATTN_OK) st = tensor(w, 4, vs, s_v, &v);
  if (st == ATTN_OK) st = tensor(w, 4, os, NULL, &o);
  if (st == ATTN_OK) st = tensor(w, 4, ws, NULL, &wt);
  if (st == ATTN_OK) st = tensor(w, 3, ls, NULL, &l);
  attn_sdpa_args a = {.struct_size = sizeof(attn_sdpa_args), .q = q, .k = k, .v = v, .out = o, .causal = true, .weights = wt, .lse = l};
  STEP(w, st, attn_sdpa(w->ctx, &a));
  STEP(w, st, attn_synchronize(w->ctx));
  STEP(w, st, attn_tensor_read(o, w->got[0], sizeof s_out / sizeof s_out[0]));
  STEP(w, st, attn_tensor_read(wt, w->got[1], sizeof s_w / sizeof s_w[0]));
  STEP(w, st, attn_tensor_read(l, w->got[2], sizeof s_lse / sizeof s_lse[0]));
  return st;
}

static int check_sdpa(const world *w) {
  return tu_check_close("sdpa out", w->got[0], s_out, sizeof s_out / sizeof s_out[0], NULL) &&
         tu_check_close("sdpa weights", w->got[1], s_w, sizeof s_w / sizeof s_w[0], NULL) &&
         tu_check_close("sdpa lse", w->got[2], s_lse, sizeof s_lse / sizeof s_lse[0], NULL);
}

static const attn_mha_desc m_desc = {.struct_size = sizeof(attn_mha_desc), .d_model = ME, .n_heads = MH, .n_kv_heads = MHKV,
                                     .head_dim = MD, .bias = true, .causal = true,
                                     .max_batch = MB, .max_seq = MS};

static attn_status scenario_mha(world *w) {
  attn_tensor *wt[8] = {0}, *x = NULL, *o = NULL, *xp = NULL, *op = NULL, *xl = NULL, *ol = NULL;
  const int64_t xs[3] = {MB, MS, ME}, ps[3] = {MB, MS - 1, ME}, ls[3] = {MB, 1, ME};
  attn_status st = ATTN_OK;
  for (int i = 0; i < 8 && st == ATTN_OK; i++)
    st = tensor(w, i < 4 ? 2 : 1, m_wshape[i], m_w[i], &wt[i]);
  if (st == ATTN_OK) st = tensor(w, 3, xs, m_x, &x);
  if (st == ATTN_OK) st = tensor(w, 3, xs, NULL, &o);
  if (st == ATTN_OK) st = tensor(w, 3, ps, m_xp, &xp);
  if (st == ATTN_OK) st = tensor(w, 3, ps, NULL, &op);
  if (st == ATTN_OK) st = tensor(w, 3, ls, m_xl, &xl);
  if (st == ATTN_OK) st = tensor(w, 3, ls, NULL, &ol);
  attn_mha_weights mw = {.wq = wt[0], .wk = wt[1], .wv = wt[2], .wo = wt[3],
                         .bq = wt[4], .bk = wt[5], .bv = wt[6], .bo = wt[7]};
  STEP(w, st, attn_mha_create(w->ctx, &m_desc, &mw, &w->g));
  STEP(w, st, attn_mha_run(w->g, x, NULL, o));
  STEP(w, st, attn_kv_cache_create(w->g, MB, MS, &w->kv));
  STEP(w, st, attn_mha_run_cached(w->g, w->kv, xp, op));
  STEP(w, st, attn_mha_run_cached(w->g, w->kv, xl, ol));
  STEP(w, st, attn_synchronize(w->ctx));
  STEP(w, st, attn_tensor_read(o, w->got[0], MB * MS * ME));
  STEP(w, st, attn_tensor_read(op, w->got[1], MB * (MS - 1) * ME));
  STEP(w, st, attn_tensor_read(ol, w->got[2], MB * ME));
  return st;
}

static int check_mha(const world *w) {
  return tu_check_close("mha run", w->got[0], m_ref, MB * MS * ME, NULL) &&
         tu_check_close("mha cached prefill", w->got[1], m_refp, MB * (MS - 1) * ME, NULL) &&
         tu_check_close("mha cached decode step", w->got[2], m_refl, MB * ME, NULL);
}

typedef struct scenario {
  const char *name;
  attn_status (*run)(world *);
  int (*check)(const world *);
} scenario;
static const scenario scenarios[] = {{"sdpa", scenario_sdpa, check_sdpa},
                                     {"mha", scenario_mha, check_mha},
                                     {"sdpa bf16", scenario_sdpa_bf16, check_sdpa_bf16}};

/* ---- data and reference answers --------------------------------------------------- */

static void make_data(void) {
  uint64_t seed = 0x5eedfa17ULL;
  s_q = tu_alloc_uniform(SB * SHQ * SSQ * SD, &seed, -1, 1);
  s_k = tu_alloc_uniform(SB * SHKV * SSKV * SD, &seed, -1, 1);
  s_v = tu_alloc_uniform(SB * SHKV * SSKV * SDV, &seed, -1, 1);
  tu_sdpa_problem p = {.B = SB, .Hq = SHQ, .Hkv = SHKV, .Sq = SSQ, .Skv = SSKV, .D = SD,
                       .Dv = SDV, .q = s_q, .k = s_k, .v = s_v, .causal = true,
                       .scale = 1.0 / sqrt((double)SD)};
  tu_sdpa_double(&p, s_out, s_w, s_lse);
  float **bf[3] = {&s_qb, &s_kb, &s_vb};
  const float *src[3] = {s_q, s_k, s_v};
  const size_t nbf[3] = {SB * SHQ * SSQ * SD, SB * SHKV * SSKV * SD, SB * SHKV * SSKV * SDV};
  for (int i = 0; i < 3; i++) {
    *bf[i] = malloc(nbf[i] * sizeof **bf[i]);
    for (size_t j = 0; j < nbf[i]; j++) (*bf[i])[j] = attn_bf16_to_f32(attn_f32_to_bf16(src[i][j]));
  }
  p.q = s_qb, p.k = s_kb, p.v = s_vb;
  tu_sdpa_double(&p, s_outb, s_wb, s_lseb);

  const int64_t rows[4] = {MH * MD, MHKV * MD, MHKV * MD, ME};
  const int64_t cols[4] = {ME, ME, ME, MH * MD};
  for (int i = 0; i < 4; i++) {
    m_wshape[i][0] = rows[i];
    m_wshape[i][1] = cols[i];
    m_w[i] = tu_alloc_uniform((size_t)(rows[i] * cols[i]), &seed, -0.3f, 0.3f);
    m_wshape[4 + i][0] = rows[i];
    m_w[4 + i] = tu_alloc_uniform((size_t)rows[i], &seed, -0.1f, 0.1f);
  }
  m_x = tu_alloc_uniform(MB * MS * ME, &seed, -1, 1);
  m_xp = malloc(MB * (MS - 1) * ME * sizeof(float));
  m_xl = malloc(MB * ME * sizeof(float));
  for (int b = 0; b < MB; b++) {
    memcpy(m_xp + b * (MS - 1) * ME, m_x + b * MS * ME, (MS - 1) * ME * sizeof(float));
    memcpy(m_xl + b * ME, m_x + (b * MS + MS - 1) * ME, ME * sizeof(float));
  }
}

/* The MHA answers from the ref backend (itself checked against double by
 * tests/test_mha), as doubles for tu_check_close. */
static int make_mha_reference(void) {
  world w;
  memset(&w, 0, sizeof w);
  if (attn_open("ref", &w.ctx) != ATTN_OK) {
    printf("ref backend: %s\n", attn_last_error());
    return -1;
  }
  attn_status st = scenario_mha(&w);
  if (st != ATTN_OK) printf("ref backend: %s: %s\n", w.call, w.err);
  for (int i = 0; i < MB * MS * ME; i++) m_ref[i] = w.got[0][i];
  for (int b = 0; b < MB; b++)
    for (int s = 0; s < MS; s++)
      for (int e = 0; e < ME; e++) {
        double r = m_ref[(b * MS + s) * ME + e];
        if (s < MS - 1) m_refp[(b * (MS - 1) + s) * ME + e] = r;
        else m_refl[b * ME + e] = r;
      }
  world_free(&w);
  attn_close(w.ctx);
  return st == ATTN_OK ? 0 : -1;
}

/* ---- the sweep -------------------------------------------------------------------- */

/* Open sel with ATTN_FAULT=spec (NULL: a fault that never fires, to count). */
static attn_status open_with_fault(const char *sel, const char *spec, attn_context **ctx) {
  setenv("ATTN_FAULT", spec ? spec : "alloc:1000000000", 1);
  attn_status st = attn_open(sel, ctx);
  unsetenv("ATTN_FAULT");
  return st;
}

/* The failure is the injected one: its status, the CL name, a public function. */
static void check_failure(attn_status st, const char *msg, const char *call, attn_status want,
                          const char *cl_name, const char *what) {
  if (st != want || !strstr(msg, cl_name) || strncmp(msg, "attn_", 5) != 0)
    fail_msg("%s: %s returned %d (%s) \"%s\"; want %d (%s) with %s", what, call, (int)st,
             attn_status_str(st), msg, (int)want, attn_status_str(want), cl_name);
}

/* No device buffer without its tensor after a call; none at all (but the
 * backend's scratch) once everything is freed. */
static void check_nothing_left(world *w, int scratch, const char *what) {
  int orphans = orphan_buffers(w->ctx);
  if (orphans > scratch)
    fail_msg("%s: %d device buffers belong to no tensor (scratch %d)", what, orphans, scratch);
  world_free(w);
  if (live_storages(w->ctx) != 0 || w->ctx->graphs != NULL)
    fail_msg("%s: storages or graphs left after freeing everything", what);
  if (cl_of(w->ctx)->n_buffers > scratch)
    fail_msg("%s: %d device buffers left after freeing everything (scratch %d)", what,
             cl_of(w->ctx)->n_buffers, scratch);
}

/* The same context runs the whole scenario again, correctly. */
static void check_usable(world *w, const scenario *sc, int scratch, const char *what) {
  attn_status st = sc->run(w);
  if (st != ATTN_OK) fail_msg("%s: the context fails afterwards: %s: %s", what, w->call, w->err);
  if (!sc->check(w)) fail_msg("%s: wrong results afterwards", what);
  check_nothing_left(w, scratch, what);
}

typedef struct sweep_stats {
  long runs, failed_open;
  char example[CLRT_FAULT_NKINDS][300]; /* the first message of each kind */
  char where[CLRT_FAULT_NKINDS][300];   /* the public functions that failed */
} sweep_stats;

/* Add the function of the call text "attn_x(w->ctx, ...)" to list, once. */
static void note_call(char *list, size_t len, const char *call) {
  char fn[64];
  size_t n = strcspn(call, "(");
  if (n >= sizeof fn) n = sizeof fn - 1;
  memcpy(fn, call, n);
  fn[n] = '\0';
  for (const char *p = strstr(list, fn); p; p = strstr(p + 1, fn))
    if ((p == list || p[-1] == ' ') && (p[n] == ',' || p[n] == '\0')) return;
  size_t used = strlen(list);
  snprintf(list + used, len - used, "%s%s", used ? ", " : "", fn);
}

/* One context with the fault kind:N (from_on: N+; err_name: instead of the
 * default error), through the scenario, then the checks. calls is the
 * number of calls of that kind in a whole fault-free scenario. */
static void one_fault(const char *sel, const scenario *sc, clrt_fault_kind kind, long n,
                      bool from_on, const char *err_name, attn_status want, long calls,
                      int scratch, sweep_stats *stats) {
  char spec[128], what[256];
  snprintf(spec, sizeof spec, "%s:%ld%s%s%s", kind_name[kind], n, from_on ? "+" : "",
           err_name ? ":" : "", err_name ? err_name : "");
  snprintf(what, sizeof what, "%s %s ATTN_FAULT=%s", sel, sc->name, spec);
  const char *cl_name = err_name ? err_name : expect[kind].cl_name;
  world w;
  memset(&w, 0, sizeof w);
  stats->runs++;
  attn_status st = open_with_fault(sel, spec, &w.ctx);
  if (st != ATTN_OK) {
    /* The fault hit attn_open itself (clblast builds its kernels there). */
    check_failure(st, attn_last_error(), "attn_open", want, cl_name, what);
    stats->failed_open++;
    note_call(stats->where[kind], sizeof stats->where[kind], "attn_open");
    assert_int_equal(attn_open(sel, &w.ctx), ATTN_OK);
    check_usable(&w, sc, scratch, what);
    attn_close(w.ctx);
    return;
  }
  clrt_ctx *c = cl_of(w.ctx);
  st = sc->run(&w);
  if (n <= calls) {
    if (st == ATTN_OK) fail_msg("%s: succeeded (%ld calls counted)", what, calls);
    check_failure(st, w.err, w.call, want, cl_name, what);
    assert_true(c->fault.injected >= 1);
    if (!stats->example[kind][0])
      snprintf(stats->example[kind], sizeof stats->example[kind], "%.299s", w.err);
    note_call(stats->where[kind], sizeof stats->where[kind], w.call);
  } else {
    if (st != ATTN_OK) fail_msg("%s: %s failed past the last call: %s", what, w.call, w.err);
    assert_true(sc->check(&w));
  }
  check_nothing_left(&w, scratch, what);
  /* From then on the device stays broken: end the fault as a recovered
   * device would, then the context must work. */
  c->fault.kind = CLRT_FAULT_NONE;
  check_usable(&w, sc, scratch, what);
  attn_close(w.ctx);
}

static void sweep(const char *sel, const scenario *sc) {
  /* Count the calls of each kind in a fault-free scenario, and the
   * backend's scratch buffers once it is done. */
  world w;
  memset(&w, 0, sizeof w);
  assert_int_equal(open_with_fault(sel, NULL, &w.ctx), ATTN_OK);
  attn_status st = sc->run(&w);
  if (st != ATTN_OK) fail_msg("%s %s without faults: %s: %s", sel, sc->name, w.call, w.err);
  assert_true(sc->check(&w));
  long calls[CLRT_FAULT_NKINDS];
  memcpy(calls, cl_of(w.ctx)->fault.calls, sizeof calls);
  world_free(&w);
  int scratch = cl_of(w.ctx)->n_buffers;
  attn_close(w.ctx);
  printf("%s %s: calls alloc %ld, build %ld, enqueue %ld, write %ld, read %ld, finish %ld; "
         "scratch buffers %d\n",
         sel, sc->name, calls[CLRT_FAULT_ALLOC], calls[CLRT_FAULT_BUILD],
         calls[CLRT_FAULT_ENQUEUE], calls[CLRT_FAULT_WRITE], calls[CLRT_FAULT_READ],
         calls[CLRT_FAULT_FINISH], scratch);

  sweep_stats stats;
  memset(&stats, 0, sizeof stats);
  for (int k = 1; k < CLRT_FAULT_NKINDS; k++) {
    /* Every call once, and one past the last (which must succeed). */
    assert_true(calls[k] >= 1);
    for (long n = 1; n <= calls[k] + 1; n++)
      one_fault(sel, sc, (clrt_fault_kind)k, n, false, NULL, expect[k].status, calls[k], scratch,
                &stats);
    /* From the first, a middle and the last call on. */
    const long from[3] = {1, (calls[k] + 1) / 2, calls[k]};
    for (int i = 0; i < 3; i++)
      if (i == 0 || from[i] > from[i - 1])
        one_fault(sel, sc, (clrt_fault_kind)k, from[i], true, NULL, expect[k].status, calls[k],
                scratch, &stats);
  }
  /* An enqueue that runs out of device memory (drivers allocate lazily). */
  const long en = calls[CLRT_FAULT_ENQUEUE];
  for (long n = 1; n <= en; n += en > 1 ? en - 1 : 1)
    one_fault(sel, sc, CLRT_FAULT_ENQUEUE, n, false, "CL_MEM_OBJECT_ALLOCATION_FAILURE",
              ATTN_ERR_DEVICE_MEMORY, en, scratch, &stats);
  printf("%s %s: %ld faulty contexts (%ld failed in attn_open), all recovered\n", sel, sc->name,
         stats.runs, stats.failed_open);
  for (int k = 1; k < CLRT_FAULT_NKINDS; k++)
    printf("  %-7s 1..%ld fails %s; e.g. %s\n", kind_name[k], calls[k], stats.where[k],
           stats.example[k][0] ? stats.example[k] : "(in attn_open)");
  fflush(stdout);
}

static void test_sweep_sdpa(void **state) {
  (void)state;
  for (int d = 0; d < g_ndev; d++) sweep(g_sel[d], &scenarios[0]);
}

static void test_sweep_mha(void **state) {
  (void)state;
  for (int d = 0; d < g_ndev; d++) sweep(g_sel[d], &scenarios[1]);
}

/* The 16-bit paths: clblast's scratch buffers and conversion kernels, and
 * pocl's 16-bit kernel variants (and their weights pass), fail cleanly too. */
static void test_sweep_sdpa_bf16(void **state) {
  (void)state;
  for (int d = 0; d < g_ndev; d++) sweep(g_sel[d], &scenarios[2]);
}

/* A malformed ATTN_FAULT fails the open, naming the variable; nothing is
 * injected into contexts opened after it is unset. */
static void test_malformed_spec(void **state) {
  (void)state;
  const char *bad[] = {"alloc",       "alloc:",   "alloc:0",      "alloc:-1", "alloc:3x",
                       "nosuch:1",    "alloc:1:", "alloc:1:CL_NO_SUCH_ERROR", ":1", "alloc:1++"};
  for (int d = 0; d < g_ndev; d++)
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
      attn_context *ctx = NULL;
      attn_status st = open_with_fault(g_sel[d], bad[i], &ctx);
      if (st != ATTN_ERR_INVALID_ARG || !strstr(attn_last_error(), "ATTN_FAULT") ||
          !strstr(attn_last_error(), bad[i]))
        fail_msg("%s ATTN_FAULT=\"%s\": %d \"%s\"", g_sel[d], bad[i], (int)st, attn_last_error());
      assert_null(ctx);
    }
  /* Unset: counters stay off. */
  attn_context *ctx = NULL;
  assert_int_equal(attn_open(g_sel[0], &ctx), ATTN_OK);
  assert_int_equal(cl_of(ctx)->fault.kind, CLRT_FAULT_NONE);
  world w;
  memset(&w, 0, sizeof w);
  w.ctx = ctx;
  assert_int_equal(scenario_sdpa(&w), ATTN_OK);
  assert_true(check_sdpa(&w));
  assert_int_equal(cl_of(ctx)->fault.calls[CLRT_FAULT_ALLOC], 0);
  world_free(&w);
  attn_close(ctx);
}

/* A broken kernels/clblast_sdpa.cl under ATTN_KERNEL_DIR: clblast builds its
 * kernels in attn_open, which fails with ATTN_ERR_BUILD and the compiler's
 * log; a later open with the embedded kernels works. */
static void test_clblast_broken_kernel_dir(void **state) {
  (void)state;
  int tried = 0;
  for (int d = 0; d < g_ndev; d++) {
    if (strncmp(g_sel[d], "clblast", 7) != 0) continue;
    tried++;
    const char *base = getenv("TMPDIR");
    char dir[512], path[600], cache[600];
    snprintf(dir, sizeof dir, "%s/attn_test_faults.XXXXXX", base && *base ? base : "/tmp");
    assert_non_null(mkdtemp(dir));
    snprintf(path, sizeof path, "%s/clblast_sdpa.cl", dir);
    snprintf(cache, sizeof cache, "%s/cache", dir);
    FILE *f = fopen(path, "w");
    assert_non_null(f);
    fputs("__kernel void softmax_rows(__global float *y) { y[0] = undeclared_identifier_qq; }\n", f);
    fclose(f);
    /* The prelude every program starts with comes from the directory too. */
    snprintf(path, sizeof path, "%s/common.cl", dir);
    f = fopen(path, "w");
    assert_non_null(f);
    fclose(f);
    /* A cache of its own, so no binary built from this source outlives the test. */
    const char *old_cache = getenv("ATTN_CACHE_DIR");
    char saved[1024] = "";
    if (old_cache) snprintf(saved, sizeof saved, "%s", old_cache);
    setenv("ATTN_CACHE_DIR", cache, 1);
    setenv("ATTN_KERNEL_DIR", dir, 1);
    attn_context *ctx = NULL;
    attn_status st = attn_open(g_sel[d], &ctx);
    char msg[2048];
    snprintf(msg, sizeof msg, "%s", attn_last_error());
    unsetenv("ATTN_KERNEL_DIR");
    if (old_cache) setenv("ATTN_CACHE_DIR", saved, 1);
    else unsetenv("ATTN_CACHE_DIR");
    printf("%s with a broken clblast_sdpa.cl: %.300s\n", g_sel[d], msg);
    assert_int_equal(st, ATTN_ERR_BUILD);
    assert_null(ctx);
    assert_non_null(strstr(msg, "attn_open"));
    assert_non_null(strstr(msg, "CL_BUILD_PROGRAM_FAILURE"));
    assert_non_null(strstr(msg, "undeclared_identifier_qq")); /* from the compiler's log */
    assert_int_equal(attn_open(g_sel[d], &ctx), ATTN_OK);
    attn_close(ctx);
    char cmd[700];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", dir);
    assert_int_equal(system(cmd), 0);
  }
  if (!tried) skip();
}

int main(void) {
  char all[MAX_DEV][64];
  int n = tu_devices("faults", all, MAX_DEV);
  for (int i = 0; i < n; i++)
    if (strncmp(all[i], "pocl", 4) == 0 || strncmp(all[i], "clblast", 7) == 0)
      memcpy(g_sel[g_ndev++], all[i], sizeof g_sel[0]);
  if (g_ndev == 0) {
    printf("no OpenCL device: nothing to test\n");
    return 77;
  }
  unsetenv("ATTN_FAULT");
  make_data();
  if (make_mha_reference() != 0) return 1;
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_malformed_spec),
      cmocka_unit_test(test_sweep_sdpa),
      cmocka_unit_test(test_sweep_mha),
      cmocka_unit_test(test_sweep_sdpa_bf16),
      cmocka_unit_test(test_clblast_broken_kernel_dir),
  };
  int rc = cmocka_run_group_tests(tests, NULL, NULL);
  free(s_q);
  free(s_k);
  free(s_v);
  free(s_qb);
  free(s_kb);
  free(s_vb);
  for (int i = 0; i < 8; i++) free(m_w[i]);
  free(m_x);
  free(m_xp);
  free(m_xl);
  return rc;
}
