/* attn_tune for the pocl backend: its runtime tuning parameters, measured on
 * the device and kept in the cache (backends/opencl/tune.c).
 *
 *   vector_width   the vector width kernels/sdpa.cl and kernels/linear.cl
 *                  are built for (16: float16, one AVX-512 register; 8:
 *                  float8, one AVX2 register), timed on a prefill (S=1024
 *                  D=64 H=8; quick: S=512). Its default is read off the
 *                  device (pocl_device_vw); tuning confirms or corrects it.
 *   linear_tile    the MR x NR tile of y per work-item of kernels/linear.cl,
 *                  among the tiles for that width, timed on an MHA
 *                  projection (M=1024, N=K=512; quick: 256^3). Each
 *                  candidate is its own program build.
 *   decode_groups  the work-groups per compute unit the decode path splits
 *                  the keys into (decode.c), timed on the decode target
 *                  (Sq=1, Hq=32, Hkv=8, Skv=8192, D=128; quick: 8/2/2048/64).
 *
 * Every candidate is a value the test suites run with (the allowed sets
 * below); ATTN_POCL_LINEAR_TILE=MRxNR, ATTN_POCL_DECODE_GROUPS=n and
 * ATTN_POCL_VW=16|8 force one (a value outside the set is ignored, with a
 * debug line). Each candidate is
 * run once untimed (the build, first touches), then `runs` times with a
 * clFinish after each; the smallest median wins. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "decode.h"
#include "pocl.h"

/* The linear tiles per vector width, the default first: MR x NR vector
 * accumulators plus the NR loaded rows of W must fit the registers (32
 * zmm; 16 ymm). */
static const int tiles16[][2] = {{8, 3}, {4, 6}, {4, 4}, {8, 2}};
static const int tiles8[][2] = {{4, 3}, {3, 4}, {4, 2}, {2, 4}};
#define NTILES 4
#define NTILES_QUICK 2
static const int (*tiles_for(int vw))[2] { return vw == 8 ? tiles8 : tiles16; }
static const int groups[] = {4, 8, 16, 32};
#define NGROUPS (int)(sizeof groups / sizeof groups[0])

/* The parameters apply to the programs of these kernels: a change to any of
 * them (or to the driver) invalidates the stored winners. */
static const char *const tuned_kernels[] = {"linear", "decode", "sdpa"};
static const int widths[] = {16, 8};
#define NWIDTHS (int)(sizeof widths / sizeof widths[0])

static void tune_key(const clrt_ctx *c, char *key, size_t len) {
  clrt_tune_key(c, "pocl", tuned_kernels, 3, key, len);
}

static int tile_allowed(int mr, int nr) {
  for (int i = 0; i < NTILES; i++)
    if ((tiles16[i][0] == mr && tiles16[i][1] == nr) || (tiles8[i][0] == mr && tiles8[i][1] == nr))
      return 1;
  return 0;
}
static int groups_allowed(int g) {
  for (int i = 0; i < NGROUPS; i++)
    if (groups[i] == g) return 1;
  return 0;
}
/* "8x3" -> 8, 3 if it is an allowed tile. */
static int parse_tile(const char *s, int *mr, int *nr) {
  char tail;
  return s && sscanf(s, "%dx%d%c", mr, nr, &tail) == 2 && tile_allowed(*mr, *nr);
}
static int parse_groups(const char *s, int *g) {
  char tail;
  return s && sscanf(s, "%d%c", g, &tail) == 1 && groups_allowed(*g);
}
static int parse_vw(const char *s, int *vw) {
  char tail;
  return s && sscanf(s, "%d%c", vw, &tail) == 1 && (*vw == 16 || *vw == 8);
}

void pocl_params_load(clrt_ctx *c, pocl_params *p) {
  const attn_host *host = clrt_host();
  p->decode_groups = POCL_DECODE_GROUPS;
  p->vw = pocl_device_vw(c);
  p->linear_mr = tiles_for(p->vw)[0][0];
  p->linear_nr = tiles_for(p->vw)[0][1];
  p->linear_src = p->decode_src = "default";
  p->vw_src = "device";
  char key[1024], buf[32];
  tune_key(c, key, sizeof key);
  char *text = clrt_tune_load(key);
  if (text) {
    int mr, nr, g, vw;
    /* All or nothing: an entry with a value we do not know is not ours. */
    if (parse_tile(clrt_tune_value(text, "linear_tile", buf, sizeof buf), &mr, &nr) &&
        parse_groups(clrt_tune_value(text, "decode_groups", buf, sizeof buf), &g) &&
        parse_vw(clrt_tune_value(text, "vector_width", buf, sizeof buf), &vw)) {
      p->linear_mr = mr;
      p->linear_nr = nr;
      p->decode_groups = g;
      p->vw = vw;
      p->linear_src = p->decode_src = p->vw_src = "cache";
    } else {
      host->debug("pocl: ignoring tuned parameters that do not parse; using the defaults");
    }
    free(text);
  }
  /* The width first: a forced width brings its default tile (unless a tile
   * is forced too, below). */
  const char *e = getenv("ATTN_POCL_VW");
  if (e && *e) {
    int vw;
    if (parse_vw(e, &vw)) {
      if (vw != p->vw) {
        p->linear_mr = tiles_for(vw)[0][0];
        p->linear_nr = tiles_for(vw)[0][1];
        p->linear_src = "default";
      }
      p->vw = vw;
      p->vw_src = "env";
    } else {
      host->debug("pocl: ignoring ATTN_POCL_VW=%s (not 16 or 8)", e);
    }
  }
  e = getenv("ATTN_POCL_LINEAR_TILE");
  if (e && *e) {
    int mr, nr;
    if (parse_tile(e, &mr, &nr)) {
      p->linear_mr = mr;
      p->linear_nr = nr;
      p->linear_src = "env";
    } else {
      host->debug("pocl: ignoring ATTN_POCL_LINEAR_TILE=%s (not one of 8x3 4x6 4x4 8x2 4x3 3x4 "
                  "4x2 2x4)", e);
    }
  }
  e = getenv("ATTN_POCL_DECODE_GROUPS");
  if (e && *e) {
    int g;
    if (parse_groups(e, &g)) {
      p->decode_groups = g;
      p->decode_src = "env";
    } else {
      host->debug("pocl: ignoring ATTN_POCL_DECODE_GROUPS=%s (not one of 4 8 16 32)", e);
    }
  }
  host->debug("pocl: vector width %d (%s), linear tile %dx%d (%s), decode groups %d per CU (%s)",
              p->vw, p->vw_src, p->linear_mr, p->linear_nr, p->linear_src, p->decode_groups,
              p->decode_src);
}

/* ---- measurement ------------------------------------------------------------------ */

typedef struct job {
  clrt_ctx *c;
  int which; /* 0 linear, 1 decode, 2 flash */
  const attn_linear_desc *ld;
  const attn_sdpa_desc *sd;
  int a, b; /* the candidate: mr, nr, groups or vw */
  int vw;   /* linear: the vector width */
} job;

static attn_status run_once(const job *j) {
  attn_status s = j->which == 0   ? pocl_linear_tiled(j->c, j->ld, j->a, j->b, j->vw)
                  : j->which == 1 ? pocl_decode_sdpa(j->c, j->sd, j->a)
                                  : pocl_flash_sdpa(j->c, j->sd, j->a);
  return s == ATTN_OK ? clrt_finish(j->c) : s;
}

/* One warm-up, then the median of runs timed runs. */
static attn_status time_job(const job *j, int runs, double *median_ms) {
  attn_status s = run_once(j);
  double t[16];
  for (int r = 0; r < runs && s == ATTN_OK; r++) {
    double t0 = clrt_now_ms();
    s = run_once(j);
    t[r] = clrt_now_ms() - t0;
  }
  if (s == ATTN_OK) *median_ms = clrt_median(t, runs);
  return s;
}

static attn_tune_row *add_row(attn_tune_report *r, const char *param, const char *shape) {
  if (r->n >= ATTN_TUNE_MAX_ROWS) return NULL;
  attn_tune_row *row = &r->row[r->n++];
  snprintf(row->param, sizeof row->param, "%s", param);
  snprintf(row->shape, sizeof row->shape, "%s", shape);
  snprintf(row->source, sizeof row->source, "measured");
  return row;
}

static attn_status tune_linear(clrt_ctx *c, bool quick, int runs, int vw, attn_tune_report *r,
                               int *mr, int *nr) {
  const int(*tiles)[2] = tiles_for(vw);
  const int64_t M = quick ? 256 : 1024, N = quick ? 256 : 512, K = N;
  attn_buffer *x = NULL, *w = NULL, *y = NULL;
  attn_status s = clrt_filled_buffer(c, (size_t)(M * K), &x);
  if (s == ATTN_OK) s = clrt_filled_buffer(c, (size_t)(N * K), &w);
  if (s == ATTN_OK) s = clrt_buffer_alloc(c, (size_t)(M * N) * sizeof(float), &y);
  attn_linear_desc d = {.struct_size = sizeof d, .x = clrt_view4(x, 1, 1, M, K),
                        .w = clrt_view4(w, 1, 1, N, K), .y = clrt_view4(y, 1, 1, M, N)};
  char shape[64];
  snprintf(shape, sizeof shape, "M=%lld N=%lld K=%lld", (long long)M, (long long)N, (long long)K);
  double best = 0;
  int bi = -1, first = r->n;
  for (int i = 0; s == ATTN_OK && i < (quick ? NTILES_QUICK : NTILES); i++) {
    job j = {c, 0, &d, NULL, tiles[i][0], tiles[i][1], vw};
    double ms = 0;
    s = time_job(&j, runs, &ms);
    attn_tune_row *row = s == ATTN_OK ? add_row(r, "linear_tile", shape) : NULL;
    if (row) {
      snprintf(row->value, sizeof row->value, "%dx%d", tiles[i][0], tiles[i][1]);
      row->median_ms = ms;
    }
    if (s == ATTN_OK && (bi < 0 || ms < best)) best = ms, bi = i;
  }
  clrt_buffer_free(c, x);
  clrt_buffer_free(c, w);
  clrt_buffer_free(c, y);
  if (s != ATTN_OK) return s;
  *mr = tiles[bi][0];
  *nr = tiles[bi][1];
  for (int i = first; i < r->n; i++) {
    char v[32];
    snprintf(v, sizeof v, "%dx%d", *mr, *nr);
    r->row[i].chosen = strcmp(r->row[i].value, v) == 0;
  }
  return ATTN_OK;
}

/* Times each of the n values of one integer parameter (job kind which) on
 * the problem d, adds a row per value, marks the fastest and returns it. */
static attn_status tune_ints(clrt_ctx *c, int which, const attn_sdpa_desc *d, const int *vals,
                             int n, const char *param, const char *shape, int runs,
                             attn_tune_report *r, int *win) {
  double best = 0;
  int bi = -1, first = r->n;
  attn_status s = ATTN_OK;
  for (int i = 0; s == ATTN_OK && i < n; i++) {
    job j = {c, which, NULL, d, vals[i], 0, 0};
    double ms = 0;
    s = time_job(&j, runs, &ms);
    attn_tune_row *row = s == ATTN_OK ? add_row(r, param, shape) : NULL;
    if (row) {
      snprintf(row->value, sizeof row->value, "%d", vals[i]);
      row->median_ms = ms;
    }
    if (s == ATTN_OK && (bi < 0 || ms < best)) best = ms, bi = i;
  }
  if (s != ATTN_OK) return s;
  *win = vals[bi];
  for (int i = first; i < r->n; i++) r->row[i].chosen = atoi(r->row[i].value) == *win;
  return ATTN_OK;
}

static attn_status tune_decode(clrt_ctx *c, bool quick, int runs, attn_tune_report *r, int *g) {
  const int64_t Hq = quick ? 8 : 32, Hkv = quick ? 2 : 8, Skv = quick ? 2048 : 8192,
                D = quick ? 64 : 128;
  clrt_tune_sdpa t;
  attn_status s = clrt_tune_sdpa_init(c, Hq, Hkv, 1, Skv, D, &t);
  if (s != ATTN_OK) return s;
  char shape[64];
  snprintf(shape, sizeof shape, "Sq=1 Hq=%lld Hkv=%lld Skv=%lld D=%lld", (long long)Hq,
           (long long)Hkv, (long long)Skv, (long long)D);
  s = tune_ints(c, 1, &t.d, groups, NGROUPS, "decode_groups", shape, runs, r, g);
  clrt_tune_sdpa_free(c, &t);
  return s;
}

static attn_status tune_vw(clrt_ctx *c, bool quick, int runs, attn_tune_report *r, int *vw) {
  const int64_t H = 8, S = quick ? 512 : 1024, D = 64;
  clrt_tune_sdpa t;
  attn_status s = clrt_tune_sdpa_init(c, H, H, S, S, D, &t);
  if (s != ATTN_OK) return s;
  char shape[64];
  snprintf(shape, sizeof shape, "H=%lld S=%lld D=%lld", (long long)H, (long long)S, (long long)D);
  s = tune_ints(c, 2, &t.d, widths, NWIDTHS, "vector_width", shape, runs, r, vw);
  clrt_tune_sdpa_free(c, &t);
  return s;
}

static void show(const pocl_params *p, attn_tune_report *r) {
  attn_tune_row *row = add_row(r, "linear_tile", "");
  snprintf(row->value, sizeof row->value, "%dx%d", p->linear_mr, p->linear_nr);
  snprintf(row->source, sizeof row->source, "%s", p->linear_src);
  row->chosen = true;
  row = add_row(r, "decode_groups", "");
  snprintf(row->value, sizeof row->value, "%d", p->decode_groups);
  snprintf(row->source, sizeof row->source, "%s", p->decode_src);
  row->chosen = true;
  row = add_row(r, "vector_width", "");
  snprintf(row->value, sizeof row->value, "%d", p->vw);
  snprintf(row->source, sizeof row->source, "%s", p->vw_src);
  row->chosen = true;
}

attn_status pocl_tune(attn_backend_ctx *ctx, unsigned flags, attn_tune_report *r) {
  if (flags & ATTN_TUNE_SHOW) {
    show(&ctx->p, r);
    return ATTN_OK;
  }
  clrt_ctx *c = &ctx->cl;
  const bool quick = flags & ATTN_TUNE_QUICK;
  const int runs = quick ? 3 : 7;
  int mr, nr, g, vw;
  attn_status s = tune_vw(c, quick, runs, r, &vw);
  if (s == ATTN_OK) s = tune_linear(c, quick, runs, vw, r, &mr, &nr);
  if (s == ATTN_OK) s = tune_decode(c, quick, runs, r, &g);
  if (s != ATTN_OK) return s;
  /* This context uses the winners from now on; later ones find them in the cache. */
  ctx->p.linear_mr = mr;
  ctx->p.linear_nr = nr;
  ctx->p.decode_groups = g;
  ctx->p.vw = vw;
  ctx->p.linear_src = ctx->p.decode_src = ctx->p.vw_src = "tuned";
  char key[1024], text[128];
  tune_key(c, key, sizeof key);
  snprintf(text, sizeof text, "linear_tile %dx%d\ndecode_groups %d\nvector_width %d\n", mr, nr, g,
           vw);
  r->stored = clrt_tune_store(key, text);
  return ATTN_OK;
}
