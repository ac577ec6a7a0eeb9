/* attn bench: how fast attention runs on each device, against the device's own
 * measured peaks (issue 4).
 *
 * One run sweeps a list of shapes over one or more devices (each alternative
 * of --device separately): SDPA over sequence lengths for each head dim, the
 * same causal, grouped-query attention, a decode step (Sq = 1 over a long KV
 * cache) and a whole MHA graph timed node by node. Every shape is run
 * --warmup times untimed (kernel builds and caches stay out of the figures),
 * then --repeat times, each timed from the call to the end of a device
 * synchronisation; the median and the min/max are reported.
 *
 * Rates: GFLOP/s counts 4*B*Hq*Sq*Skv*D, halved when causal with Sq == Skv
 * (as `attn run`); GB/s counts the bytes of Q, K and V read once plus out
 * written. The fraction of peak is GFLOP/s over the device's fp32 FMA peak
 * for the compute-bound cases, and GB/s over its copy bandwidth for the
 * decode step, which is bound by reading the KV cache (peak_basis says
 * which; the JSON and CSV carry both fractions).
 *
 * Output: a table (default), --json (one object per line), or --csv on
 * stdout; --svg FILE plots GFLOP/s against the sequence length, written only
 * once the whole run succeeded, atomically (temporary file + rename). A
 * progress bar goes to stderr only when stderr is a terminal. */
#include "config.h"

#include "commands.h"
#include "npy.h"

#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <inttypes.h>
#include <math.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "attn.h"
#include "cli.h"

#define MAX_LIST 32     /* entries of --seq / --dim */
#define MAX_DEVICES 16  /* alternatives of --device */
#define MAX_SHAPES 1024 /* of one sweep: (2 + --dim entries) * --seq entries + 2, per kv type */
#define REF_LIMIT_DEFAULT 2.5 /* GFLOP per run above which ref is skipped */

void bench_help(FILE *f) {
  fprintf(f,
          "Usage: attn bench [options]\n"
          "\n"
          "Benchmarks attention on one or more devices against each device's own measured\n"
          "peaks (fp32 FMA GFLOP/s and copy GB/s, measured clpeak-style and cached with the\n"
          "kernel binaries). Default sweep, B=1, H=8, fp32:\n"
          "  sdpa    D=64 and D=128, S = 256 512 1024 2048 4096, not causal\n"
          "  causal  D=64, the same S, causal\n"
          "  gqa     Hq=8, Hkv=2, D=64, S up to 2048\n"
          "  decode  Sq=1 over a KV cache: Hq=32, Hkv=8, D=128, Skv=8192\n"
          "  mha     a whole MHA graph, E=512, H=8, S=1024, with the time of each node\n"
          "about a minute per device on a 2-core CPU; --quick runs small shapes in seconds.\n"
          "\n"
          "Options:\n"
          "  --device LIST   devices, ',' separated selectors, each benchmarked separately\n"
          "                  (default: $ATTN_DEVICE, else the first of %s that opens)\n"
          "  --quick         small shapes, 3 repeats: a few seconds\n"
          "  --seq LIST      sequence lengths of the sweeps, e.g. 512,1024,2048\n"
          "  --dim LIST      head dims of the sdpa sweep (the first is used by causal, gqa)\n"
          "  --heads N       query heads of the sweeps (default 8; gqa uses N/4 kv heads)\n"
          "  --repeat N      timed runs per shape (default 5; fewer, at least 3, once a\n"
          "                  shape has taken 2 s, unless given)\n"
          "  --warmup N      untimed runs first (default 1)\n"
          "  --ref-limit G   skip shapes over G GFLOP per run on the ref backend, which is\n"
          "                  slow (default %g; 0 runs everything); skips are listed\n"
          "  --refresh-peaks measure the device peaks again instead of using the cache\n"
          "  --json          one JSON object per measurement per line on stdout\n"
          "  --csv           CSV with a header line on stdout\n"
          "  --svg FILE      also plot GFLOP/s against sequence length, one line per device\n"
          "                  and case, into FILE (written only if the run succeeded)\n"
          "  --kv-dtype LIST storage types of k and v, e.g. f32,bf16 (f32, f16, bf16;\n"
          "                  default f32): the sweeps and the decode case run once per type,\n"
          "                  q and out f32; mha once, its keys and values of the first type.\n"
          "                  Rows say the type (kv column, kv_dtype field); GB/s counts k\n"
          "                  and v in their type\n"
          "  --kv-sets N     the decode case cycles through N distinct K/V caches (default\n"
          "                  1), so that each call reads K and V from memory rather than\n"
          "                  from a last-level cache that holds one (N=16: 1 GiB in f32)\n"
          "  -h, --help      this help\n"
          "\n"
          "Each shape runs --warmup times untimed, then --repeat times; reported are the\n"
          "median time and its min and max, GFLOP/s (4*B*Hq*Sq*Skv*D, halved when causal\n"
          "with Sq == Skv; the same formula for decode), GB/s (Q, K, V read once plus out\n"
          "written) and the fraction of the device's peak: GFLOP/s over its FMA peak for\n"
          "compute-bound cases, GB/s over its copy bandwidth for decode (peak_basis).\n"
          "The mha case reports the whole graph; the table adds each node's median time and\n"
          "the projections' GFLOP/s, the JSON the *_ms and proj_gflops fields.\n"
          "Exit 0 ok, 1 failure, 2 usage error.\n",
          ATTN_DEFAULT_SELECTOR, REF_LIMIT_DEFAULT);
}

/* ---- options and shapes -------------------------------------------------------- */

typedef enum { FMT_TABLE, FMT_JSON, FMT_CSV } out_format;

/* The MHA graph's nodes, as bench reports them (medians in ms). */
typedef struct mha_nodes {
  double project_q_ms, project_k_ms, project_v_ms, sdpa_ms, project_out_ms;
} mha_nodes;

/* Most K/V caches --kv-sets may ask for (each is Hkv x Skv x D twice). */
#define MAX_KV_SETS 64

typedef struct options {
  const char *devices;
  bool quick, refresh_peaks;
  out_format fmt;
  const char *svg;
  int64_t seq[MAX_LIST], dim[MAX_LIST];
  int nseq, ndim;
  int64_t heads, repeat, warmup;
  bool repeat_given;
  double ref_limit; /* GFLOP; 0 = none */
  attn_dtype kv_dtype[3]; /* --kv-dtype: the sweeps and decode run once per type */
  int nkv;
  int64_t kv_sets; /* --kv-sets: distinct K/V caches the decode case cycles through */
} options;

typedef enum { CASE_SDPA, CASE_DECODE, CASE_MHA } case_kind;

typedef struct bench_shape {
  const char *name; /* sdpa, causal, gqa, decode, mha */
  case_kind kind;
  int64_t B, Hq, Hkv, Sq, Skv, D;
  bool causal;
  int64_t E; /* mha: d_model */
  attn_dtype kv_dtype; /* of k and v (q and out are f32); mha: desc.kv_dtype */
} bench_shape;

static double sdpa_flops(const bench_shape *s) {
  return cli_sdpa_flops(s->B, s->Hq, s->Sq, s->Skv, s->D, s->causal);
}

/* q and out projections E->Hq*D, k and v E->Hkv*D, over B*S rows. */
static double proj_flops(const bench_shape *s) {
  return cli_proj_flops(s->B, s->Sq, s->Sq, s->E, s->E, s->Hq, s->Hkv, s->D);
}

static double shape_flops(const bench_shape *s) {
  return sdpa_flops(s) + (s->kind == CASE_MHA ? proj_flops(s) : 0);
}

static double shape_bytes(const bench_shape *s) {
  double q = (double)s->B * s->Hq * s->Sq * s->D, kv = (double)s->B * s->Hkv * s->Skv * s->D;
  if (s->kind == CASE_MHA) /* x read, out written, the four weights read */
    return 4.0 * (2.0 * s->B * s->Sq * s->E + 4.0 * s->E * s->Hq * s->D);
  /* q read and out written in f32, k and v read in their type */
  return 4.0 * (q + q) + (double)attn_dtype_size(s->kv_dtype) * 2 * kv;
}

/* "256,1024,4096" into list; every entry an integer in [1, max]. */
static bool parse_list(const char *opt, const char *s, int64_t max, int64_t *list, int *n) {
  char buf[512];
  if (strlen(s) >= sizeof buf) {
    cli_usage_fail("%s: list too long", opt);
    return false;
  }
  strcpy(buf, s);
  *n = 0;
  char *save = NULL;
  for (char *tok = strtok_r(buf, ",", &save); tok; tok = strtok_r(NULL, ",", &save)) {
    if (*n == MAX_LIST) {
      cli_usage_fail("%s: more than %d values", opt, MAX_LIST);
      return false;
    }
    if (!cli_parse_int(opt, tok, 1, max, &list[*n])) return false;
    (*n)++;
  }
  if (*n == 0 || s[0] == ',' || s[strlen(s) - 1] == ',' || strstr(s, ",,")) {
    cli_usage_fail("%s: '%s' is not a ',' separated list of integers", opt, s);
    return false;
  }
  return true;
}

/* "f32,bf16" into o->kv_dtype: each of f32, f16, bf16 at most once. */
static bool parse_dtype_list(const char *s, options *o) {
  char buf[64];
  if (strlen(s) >= sizeof buf) {
    cli_usage_fail("--kv-dtype: list too long");
    return false;
  }
  strcpy(buf, s);
  o->nkv = 0;
  char *save = NULL;
  for (char *tok = strtok_r(buf, ",", &save); tok; tok = strtok_r(NULL, ",", &save)) {
    attn_dtype t;
    if (!cli_parse_dtype("--kv-dtype", tok, &t)) return false;
    for (int i = 0; i < o->nkv; i++)
      if (o->kv_dtype[i] == t) {
        cli_usage_fail("--kv-dtype: %s is listed twice", attn_dtype_str(t));
        return false;
      }
    o->kv_dtype[o->nkv++] = t;
  }
  if (o->nkv == 0 || s[0] == ',' || s[strlen(s) - 1] == ',' || strstr(s, ",,")) {
    cli_usage_fail("--kv-dtype: '%s' is not a ',' separated list of f32, f16, bf16", s);
    return false;
  }
  return true;
}

/* The sweep: see the help. Returns the number of shapes written to out. */
static int build_shapes(const options *o, bench_shape *out, int cap) {
  int n = 0;
  const int64_t H = o->heads, D0 = o->dim[0];
  const int64_t Hkv_gqa = H >= 4 && H % 4 == 0 ? H / 4 : 1;
#define ADD(...)                                            \
  do {                                                      \
    if (n < cap) out[n++] = (bench_shape){__VA_ARGS__};            \
  } while (0)
  for (int t = 0; t < o->nkv; t++) {
    const attn_dtype kt = o->kv_dtype[t];
    for (int d = 0; d < o->ndim; d++)
      for (int i = 0; i < o->nseq; i++)
        ADD("sdpa", CASE_SDPA, 1, H, H, o->seq[i], o->seq[i], o->dim[d], false, 0, kt);
    for (int i = 0; i < o->nseq; i++)
      ADD("causal", CASE_SDPA, 1, H, H, o->seq[i], o->seq[i], D0, true, 0, kt);
    /* GQA costs what sdpa costs; its longest lengths add little but time. */
    for (int i = 0; i < o->nseq; i++)
      if (o->quick || o->seq[i] <= 2048)
        ADD("gqa", CASE_SDPA, 1, H, Hkv_gqa, o->seq[i], o->seq[i], D0, false, 0, kt);
    /* Decode: causal (a step over a cache sees every cached key, bottom-right aligned). */
    if (o->quick) ADD("decode", CASE_DECODE, 1, 8, 2, 1, 1024, 64, true, 0, kt);
    else ADD("decode", CASE_DECODE, 1, 32, 8, 1, 8192, 128, true, 0, kt);
  }
  /* The graph once, its keys and values of the first type listed. */
  if (o->quick) ADD("mha", CASE_MHA, 1, 4, 4, 128, 128, 32, false, 128, o->kv_dtype[0]);
  else ADD("mha", CASE_MHA, 1, 8, 8, 1024, 1024, 64, false, 512, o->kv_dtype[0]);
#undef ADD
  return n;
}

/* ---- measurement ------------------------------------------------------------------ */

typedef struct result {
  char device[64], backend[32];
  bench_shape sh;
  int repeats;
  double med_ms, min_ms, max_ms, gflops, gbps;
  bool have_peaks;
  double peak_gflops, peak_gbps, flops_frac, bw_frac, frac;
  const char *basis; /* "flops" or "bandwidth" */
  mha_nodes prof;        /* mha: median per node */
  double proj_gflops;    /* mha: the four projections together */
} result;

/* A tensor of the given shape and type filled with uniform numbers in [-1, 1]. */
static attn_status random_tensor(attn_context *ctx, attn_dtype dtype, int n, const int64_t *dims,
                                 uint64_t *state, attn_tensor **t) {
  int64_t count = 1;
  for (int i = 0; i < n; i++) count *= dims[i];
  float *p = cli_random_floats(count, state);
  if (!p) {
    cli_errline("out of host memory for a tensor of %" PRId64 " floats", count);
    return ATTN_ERR_NOMEM;
  }
  cli_input in = {ATTN_F32, dtype, n, {0}, p};
  memcpy(in.shape, dims, (size_t)n * sizeof *dims);
  attn_status s = cli_upload_input(ctx, &in, t);
  free(p);
  return s;
}

/* How many timed runs: --repeat, or by default 5 cut to 3 once 2 s are spent. */
static bool more_runs(const options *o, int done, double spent_ms) {
  if (done >= o->repeat) return false;
  if (!o->repeat_given && done >= 3 && spent_ms > 2000) return false;
  return true;
}

/* Status of the run; an unsupported shape is reported through *unsupported
 * (with the library's reason in the last error) rather than failing. */
static attn_status run_sdpa_shape(attn_context *ctx, const options *o, const bench_shape *sh,
                                  result *r) {
  attn_tensor *q = NULL, *k[MAX_KV_SETS] = {NULL}, *v[MAX_KV_SETS] = {NULL}, *out = NULL;
  uint64_t state = 0x9e3779b97f4a7c15ULL;
  int64_t qs[4] = {sh->B, sh->Hq, sh->Sq, sh->D}, ks[4] = {sh->B, sh->Hkv, sh->Skv, sh->D};
  double times[256];
  attn_status s;
  /* The decode case may cycle through several K/V caches, so that on a
   * machine whose last-level cache holds one, each call reads its K/V from
   * memory as a server's decode step would. */
  const int64_t sets = sh->kind == CASE_DECODE ? o->kv_sets : 1;
  if ((s = random_tensor(ctx, ATTN_F32, 4, qs, &state, &q)) ||
      (s = attn_tensor_create(ctx, 4, qs, &out)))
    goto done;
  for (int64_t i = 0; i < sets; i++)
    if ((s = random_tensor(ctx, sh->kv_dtype, 4, ks, &state, &k[i])) ||
        (s = random_tensor(ctx, sh->kv_dtype, 4, ks, &state, &v[i])))
      goto done;
  attn_sdpa_args a = ATTN_SDPA_ARGS_INIT;
  a.q = q;
  a.k = k[0];
  a.v = v[0];
  a.out = out;
  a.causal = sh->causal;
  /* With several caches, the warm-up reads each once (first touches of a
   * buffer's pages stay out of the figures). */
  const int64_t warm = o->warmup > 0 && sets > o->warmup ? sets : o->warmup;
  for (int64_t i = 0; i < warm; i++) {
    a.k = k[i % sets];
    a.v = v[i % sets];
    if ((s = attn_sdpa(ctx, &a)) || (s = attn_synchronize(ctx))) goto done;
  }
  int n = 0;
  double spent = 0;
  while (n < 256 && more_runs(o, n, spent)) {
    a.k = k[(n + 1) % sets];
    a.v = v[(n + 1) % sets];
    double t0 = cli_now_ms();
    if ((s = attn_sdpa(ctx, &a)) || (s = attn_synchronize(ctx))) goto done;
    times[n] = cli_now_ms() - t0;
    spent += times[n++];
  }
  r->repeats = n;
  r->med_ms = cli_median(times, n);
  r->min_ms = times[0];
  r->max_ms = times[n - 1];
done:
  attn_tensor_free(q);
  for (int64_t i = 0; i < sets; i++) {
    attn_tensor_free(k[i]);
    attn_tensor_free(v[i]);
  }
  attn_tensor_free(out);
  return s;
}

static attn_status run_mha_shape(attn_context *ctx, const options *o, const bench_shape *sh,
                                 result *r) {
  attn_tensor *w[4] = {NULL}, *x = NULL, *out = NULL;
  attn_mha *g = NULL;
  uint64_t state = 0x2545f4914f6cdd1dULL;
  const int64_t E = sh->E;
  int64_t ws[2] = {sh->Hq * sh->D, E}, wos[2] = {E, sh->Hq * sh->D}, xs[3] = {sh->B, sh->Sq, E};
  double times[256], node[5][256];
  attn_status s;
  for (int i = 0; i < 4; i++)
    if ((s = random_tensor(ctx, ATTN_F32, 2, i == 3 ? wos : ws, &state, &w[i]))) goto done;
  if ((s = random_tensor(ctx, ATTN_F32, 3, xs, &state, &x)) ||
      (s = attn_tensor_create(ctx, 3, xs, &out)))
    goto done;
  attn_mha_desc d = ATTN_MHA_DESC_INIT;
  d.d_model = E;
  d.n_heads = sh->Hq;
  d.n_kv_heads = sh->Hkv;
  d.head_dim = sh->D;
  d.max_batch = sh->B;
  d.max_seq = sh->Sq;
  d.kv_dtype = sh->kv_dtype;
  attn_mha_weights mw = {0};
  mw.wq = w[0];
  mw.wk = w[1];
  mw.wv = w[2];
  mw.wo = w[3];
  if ((s = attn_mha_create(ctx, &d, &mw, &g)) || (s = attn_mha_set_profiling(g, true))) goto done;
  for (int64_t i = 0; i < o->warmup; i++)
    if ((s = attn_mha_run(g, x, NULL, out)) || (s = attn_synchronize(ctx))) goto done;
  int n = 0;
  double spent = 0;
  while (n < 256 && more_runs(o, n, spent)) {
    double t0 = cli_now_ms();
    attn_mha_profile p;
    if ((s = attn_mha_run(g, x, NULL, out)) || (s = attn_synchronize(ctx)) ||
        (s = attn_mha_profile_get(g, &p)))
      goto done;
    times[n] = cli_now_ms() - t0;
    node[0][n] = attn_mha_profile_ms(&p, "project_q");
    node[1][n] = attn_mha_profile_ms(&p, "project_k");
    node[2][n] = attn_mha_profile_ms(&p, "project_v");
    node[3][n] = attn_mha_profile_ms(&p, "sdpa");
    node[4][n] = attn_mha_profile_ms(&p, "project_out");
    spent += times[n++];
  }
  r->repeats = n;
  r->med_ms = cli_median(times, n);
  r->min_ms = times[0];
  r->max_ms = times[n - 1];
  r->prof.project_q_ms = cli_median(node[0], n);
  r->prof.project_k_ms = cli_median(node[1], n);
  r->prof.project_v_ms = cli_median(node[2], n);
  r->prof.sdpa_ms = cli_median(node[3], n);
  r->prof.project_out_ms = cli_median(node[4], n);
  double proj_ms = r->prof.project_q_ms + r->prof.project_k_ms + r->prof.project_v_ms +
                   r->prof.project_out_ms;
  r->proj_gflops = proj_ms > 0 ? proj_flops(sh) / (proj_ms * 1e6) : 0;
done:
  attn_mha_free(g);
  for (int i = 0; i < 4; i++) attn_tensor_free(w[i]);
  attn_tensor_free(x);
  attn_tensor_free(out);
  return s;
}

/* ---- output ---------------------------------------------------------------------- */

static bool g_bar; /* a progress bar is on stderr's line */

/* " kv=" before a 16-bit kv type in messages; nothing for f32 (as before). */
static const char *kv_tag(const bench_shape *sh) { return sh->kv_dtype != ATTN_F32 ? " kv=" : ""; }

static void bar_clear(void) {
  if (g_bar) {
    fputs("\r\033[K", stderr);
    g_bar = false;
  }
}

static void bar_show(int done, int total, const char *dev, const bench_shape *sh) {
  if (!isatty(STDERR_FILENO)) return;
  char fill[31];
  int w = total ? done * 30 / total : 30;
  for (int i = 0; i < 30; i++) fill[i] = i < w ? '#' : '.';
  fill[30] = '\0';
  fprintf(stderr, "\r\033[K[%s] %d/%d %s %s S=%" PRId64 " D=%" PRId64 "%s%s", fill, done, total,
          dev, sh->name, sh->Skv, sh->D, kv_tag(sh),
          kv_tag(sh)[0] ? attn_dtype_str(sh->kv_dtype) : "");
  fflush(stderr);
  g_bar = true;
}

static const char *csv_header =
    "device,backend,case,batch,heads,kv_heads,seq,kv_seq,dim,causal,repeats,median_ms,min_ms,"
    "max_ms,gflops,gbps,peak_gflops,peak_gbps,flops_fraction,bw_fraction,peak_fraction,"
    "peak_basis,project_q_ms,project_k_ms,project_v_ms,sdpa_ms,project_out_ms,proj_gflops,"
    "kv_dtype\n";

static void print_result(const options *o, const result *r, bool first_of_device) {
  const bench_shape *s = &r->sh;
  bool mha = s->kind == CASE_MHA;
  bar_clear();
  if (o->fmt == FMT_JSON) {
    printf("{\"device\":\"%s\",\"backend\":\"%s\",\"case\":\"%s\",\"batch\":%" PRId64
           ",\"heads\":%" PRId64 ",\"kv_heads\":%" PRId64 ",\"seq\":%" PRId64
           ",\"kv_seq\":%" PRId64 ",\"dim\":%" PRId64 ",\"causal\":%s,\"repeats\":%d,"
           "\"median_ms\":%.6g,\"min_ms\":%.6g,\"max_ms\":%.6g,\"gflops\":%.6g,\"gbps\":%.6g",
           r->device, r->backend, s->name, s->B, s->Hq, s->Hkv, s->Sq, s->Skv, s->D,
           s->causal ? "true" : "false", r->repeats, r->med_ms, r->min_ms, r->max_ms, r->gflops,
           r->gbps);
    if (r->have_peaks)
      printf(",\"peak_gflops\":%.6g,\"peak_gbps\":%.6g,\"flops_fraction\":%.6g,"
             "\"bw_fraction\":%.6g,\"peak_fraction\":%.6g,\"peak_basis\":\"%s\"",
             r->peak_gflops, r->peak_gbps, r->flops_frac, r->bw_frac, r->frac, r->basis);
    else
      printf(",\"peak_fraction\":null");
    if (mha)
      printf(",\"d_model\":%" PRId64 ",\"project_q_ms\":%.6g,\"project_k_ms\":%.6g,"
             "\"project_v_ms\":%.6g,\"sdpa_ms\":%.6g,\"project_out_ms\":%.6g,"
             "\"proj_gflops\":%.6g",
             s->E, r->prof.project_q_ms, r->prof.project_k_ms, r->prof.project_v_ms,
             r->prof.sdpa_ms, r->prof.project_out_ms, r->proj_gflops);
    printf(",\"kv_dtype\":\"%s\"}\n", attn_dtype_str(s->kv_dtype));
  } else if (o->fmt == FMT_CSV) {
    printf("%s,%s,%s,%" PRId64 ",%" PRId64 ",%" PRId64 ",%" PRId64 ",%" PRId64 ",%" PRId64
           ",%d,%d,%.6g,%.6g,%.6g,%.6g,%.6g,",
           r->device, r->backend, s->name, s->B, s->Hq, s->Hkv, s->Sq, s->Skv, s->D, s->causal,
           r->repeats, r->med_ms, r->min_ms, r->max_ms, r->gflops, r->gbps);
    if (r->have_peaks)
      printf("%.6g,%.6g,%.6g,%.6g,%.6g,%s,", r->peak_gflops, r->peak_gbps, r->flops_frac,
             r->bw_frac, r->frac, r->basis);
    else
      printf(",,,,,,");
    if (mha)
      printf("%.6g,%.6g,%.6g,%.6g,%.6g,%.6g,", r->prof.project_q_ms, r->prof.project_k_ms,
             r->prof.project_v_ms, r->prof.sdpa_ms, r->prof.project_out_ms, r->proj_gflops);
    else
      printf(",,,,,,");
    printf("%s\n", attn_dtype_str(s->kv_dtype));
  } else {
    if (first_of_device)
      printf("%-7s %3s %4s %4s %6s %6s %4s %-4s %-3s %10s %10s %10s %9s %8s %6s\n", "case", "B",
             "Hq", "Hkv", "Sq", "Skv", "D", "kv", "cau", "median ms", "min ms", "max ms",
             "GFLOP/s", "GB/s", "%peak");
    char frac[16] = "-";
    if (r->have_peaks) snprintf(frac, sizeof frac, "%.1f%s", 100 * r->frac,
                                s->kind == CASE_DECODE ? "bw" : "");
    printf("%-7s %3" PRId64 " %4" PRId64 " %4" PRId64 " %6" PRId64 " %6" PRId64 " %4" PRId64
           " %-4s %-3s %10.3f %10.3f %10.3f %9.2f %8.2f %6s\n",
           s->name, s->B, s->Hq, s->Hkv, s->Sq, s->Skv, s->D, attn_dtype_str(s->kv_dtype),
           s->causal ? "yes" : "no", r->med_ms, r->min_ms, r->max_ms, r->gflops, r->gbps, frac);
    if (mha)
      printf("        mha E=%" PRId64 ": project q %.3f ms, k %.3f ms, v %.3f ms, sdpa %.3f ms, "
             "project out %.3f ms; projections %.2f GFLOP/s\n",
             s->E, r->prof.project_q_ms, r->prof.project_k_ms, r->prof.project_v_ms,
             r->prof.sdpa_ms, r->prof.project_out_ms, r->proj_gflops);
  }
  fflush(stdout);
}

/* ---- SVG: GFLOP/s against sequence length --------------------------------------- */

/* Write the text to path atomically: a temporary file in the same directory,
 * flushed to disk, renamed over path; on any failure path is left as it was. */
static int write_atomic(const char *path, const char *text, size_t len) {
  /* tools/npy.c's atomic writer: a temporary file next to path, fsync'ed,
   * then renamed over it; nothing is left behind on failure. */
  char err[512];
  npy_pending p;
  if (file_write_prepare(path, text, len, &p, err, sizeof err) != ATTN_OK ||
      npy_write_commit(&p, err, sizeof err) != ATTN_OK) {
    cli_errline("--svg: %s", err);
    return EXIT_FAIL;
  }
  return 0;
}

/* A growing text buffer; on allocation failure it stops growing and marks itself. */
typedef struct sbuf {
  char *s;
  size_t len, cap;
  bool oom;
} sbuf;

static void sb_add(sbuf *b, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void sb_add(sbuf *b, const char *fmt, ...) {
  if (b->oom) return;
  for (;;) {
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(b->s ? b->s + b->len : NULL, b->s ? b->cap - b->len : 0, fmt, ap);
    va_end(ap);
    if (n < 0) {
      b->oom = true;
      return;
    }
    if (b->s && (size_t)n < b->cap - b->len) {
      b->len += (size_t)n;
      return;
    }
    size_t cap = (b->cap ? b->cap * 2 : 4096) + (size_t)n;
    char *s = realloc(b->s, cap);
    if (!s) {
      b->oom = true;
      return;
    }
    b->s = s;
    b->cap = cap;
  }
}

/* Text for SVG: selectors and names are plain, but escape what XML needs. */
static void sb_add_xml(sbuf *b, const char *t) {
  for (; *t; t++) {
    switch (*t) {
    case '<': sb_add(b, "&lt;"); break;
    case '>': sb_add(b, "&gt;"); break;
    case '&': sb_add(b, "&amp;"); break;
    case '"': sb_add(b, "&quot;"); break;
    default: sb_add(b, "%c", *t);
    }
  }
}

/* The series of the plot: the SDPA sweeps, one per device, case and head dim. */
static bool same_series(const result *a, const result *b) {
  return !strcmp(a->device, b->device) && !strcmp(a->sh.name, b->sh.name) && a->sh.D == b->sh.D &&
         a->sh.kv_dtype == b->sh.kv_dtype;
}

static double nice_step(double range) {
  double raw = range / 5, mag = pow(10, floor(log10(raw)));
  double f = raw / mag;
  return (f < 1.5 ? 1 : f < 3.5 ? 2 : f < 7.5 ? 5 : 10) * mag;
}

static int write_svg(const char *path, const result *res, int nres) {
  static const char *colors[] = {"#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd",
                                 "#8c564b", "#e377c2", "#17becf", "#7f7f7f", "#bcbd22"};
  const double W = 760, H = 460, L = 70, R = 230, T = 40, Bm = 60; /* margins */
  const double pw = W - L - R, ph = H - T - Bm;
  double xmin = INFINITY, xmax = -INFINITY, ymax = 0;
  for (int i = 0; i < nres; i++) {
    if (res[i].sh.kind != CASE_SDPA) continue;
    xmin = fmin(xmin, (double)res[i].sh.Skv);
    xmax = fmax(xmax, (double)res[i].sh.Skv);
    ymax = fmax(ymax, res[i].gflops);
  }
  sbuf b = {0};
  sb_add(&b,
         "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"%g\" height=\"%g\" "
         "viewBox=\"0 0 %g %g\" font-family=\"sans-serif\" font-size=\"12\">\n"
         "<rect width=\"100%%\" height=\"100%%\" fill=\"white\"/>\n"
         "<text x=\"%g\" y=\"22\" font-size=\"15\" text-anchor=\"middle\">attn bench: "
         "SDPA GFLOP/s against sequence length (B=1, fp32)</text>\n",
         W, H, W, H, L + pw / 2);
  if (!(xmax > 0)) { /* nothing to plot: an empty frame that says so */
    xmin = 1;
    xmax = 2;
    sb_add(&b, "<text x=\"%g\" y=\"%g\" text-anchor=\"middle\">no SDPA sweep measured</text>\n",
           L + pw / 2, T + ph / 2);
  }
  if (xmax <= xmin) xmax = xmin * 2;
  if (!(ymax > 0)) ymax = 1;
  double ystep = nice_step(ymax), ytop = ceil(ymax * 1.05 / ystep) * ystep;
  double lx0 = log2(xmin), lx1 = log2(xmax);
#define PX(x) (L + (log2(x) - lx0) / (lx1 - lx0) * pw)
#define PY(y) (T + ph - (y) / ytop * ph)
  /* axes, grid, ticks: y linear from 0, x in powers of two */
  sb_add(&b, "<g stroke=\"#ccc\" stroke-width=\"1\">\n");
  for (double y = 0; y <= ytop + ystep / 2; y += ystep)
    sb_add(&b, "<line x1=\"%g\" y1=\"%.1f\" x2=\"%g\" y2=\"%.1f\"/>\n", L, PY(y), L + pw, PY(y));
  sb_add(&b, "</g>\n<g stroke=\"black\" stroke-width=\"1.5\">\n"
             "<line x1=\"%g\" y1=\"%g\" x2=\"%g\" y2=\"%g\"/>\n"
             "<line x1=\"%g\" y1=\"%g\" x2=\"%g\" y2=\"%g\"/>\n</g>\n",
         L, T, L, T + ph, L, T + ph, L + pw, T + ph);
  for (double y = 0; y <= ytop + ystep / 2; y += ystep)
    sb_add(&b, "<text x=\"%g\" y=\"%.1f\" text-anchor=\"end\">%g</text>\n", L - 6, PY(y) + 4, y);
  for (double x = exp2(ceil(lx0)); x <= xmax * 1.0001; x *= 2)
    sb_add(&b,
           "<line x1=\"%.1f\" y1=\"%g\" x2=\"%.1f\" y2=\"%g\" stroke=\"black\"/>\n"
           "<text x=\"%.1f\" y=\"%g\" text-anchor=\"middle\">%g</text>\n",
           PX(x), T + ph, PX(x), T + ph + 5, PX(x), T + ph + 19, x);
  sb_add(&b,
         "<text x=\"%g\" y=\"%g\" text-anchor=\"middle\">sequence length S (Sq = Skv)</text>\n"
         "<text transform=\"translate(18 %g) rotate(-90)\" text-anchor=\"middle\">GFLOP/s "
         "(4*B*H*Sq*Skv*D, halved when causal)</text>\n",
         L + pw / 2, H - 18, T + ph / 2);
  /* one polyline with markers per series, in order of first appearance */
  bool *done = calloc((size_t)nres + 1, sizeof *done);
  if (!done) b.oom = true;
  int series = 0;
  for (int i = 0; done && i < nres; i++) {
    if (done[i] || res[i].sh.kind != CASE_SDPA) continue;
    const char *col = colors[series % (int)(sizeof colors / sizeof *colors)];
    const char *dash = series >= 10 ? " stroke-dasharray=\"5 3\"" : "";
    sb_add(&b, "<polyline fill=\"none\" stroke=\"%s\" stroke-width=\"2\"%s points=\"", col, dash);
    for (int j = i; j < nres; j++)
      if (res[j].sh.kind == CASE_SDPA && same_series(&res[i], &res[j]))
        sb_add(&b, "%.1f,%.1f ", PX((double)res[j].sh.Skv), PY(res[j].gflops));
    sb_add(&b, "\"/>\n");
    for (int j = i; j < nres; j++)
      if (res[j].sh.kind == CASE_SDPA && same_series(&res[i], &res[j])) {
        done[j] = true;
        sb_add(&b, "<circle cx=\"%.1f\" cy=\"%.1f\" r=\"3\" fill=\"%s\"/>\n",
               PX((double)res[j].sh.Skv), PY(res[j].gflops), col);
      }
    double ly = T + 10 + series * 18;
    sb_add(&b,
           "<line x1=\"%g\" y1=\"%g\" x2=\"%g\" y2=\"%g\" stroke=\"%s\" stroke-width=\"2\"%s/>\n"
           "<text x=\"%g\" y=\"%g\">",
           L + pw + 15, ly, L + pw + 40, ly, col, dash, L + pw + 46, ly + 4);
    sb_add_xml(&b, res[i].device);
    sb_add(&b, " %s D=%" PRId64 " Hq=%" PRId64 " Hkv=%" PRId64 "%s%s</text>\n", res[i].sh.name,
           res[i].sh.D, res[i].sh.Hq, res[i].sh.Hkv, res[i].sh.kv_dtype != ATTN_F32 ? " kv " : "",
           res[i].sh.kv_dtype != ATTN_F32 ? attn_dtype_str(res[i].sh.kv_dtype) : "");
    series++;
  }
#undef PX
#undef PY
  free(done);
  sb_add(&b, "</svg>\n");
  int rc;
  if (b.oom) {
    cli_errline("--svg: out of host memory for the plot");
    rc = EXIT_FAIL;
  } else {
    rc = write_atomic(path, b.s, b.len);
  }
  free(b.s);
  return rc;
}

/* ---- main --------------------------------------------------------------------------- */

static int parse_options(int argc, char **argv, options *o) {
  enum { O_DEVICE = 300, O_QUICK, O_SEQ, O_DIM, O_HEADS, O_REPEAT, O_WARMUP, O_REFLIMIT,
         O_REFRESH, O_JSON, O_CSV, O_SVG, O_KVDTYPE, O_KVSETS };
  static const struct option opts[] = {{"device", required_argument, NULL, O_DEVICE},
                                       {"quick", no_argument, NULL, O_QUICK},
                                       {"seq", required_argument, NULL, O_SEQ},
                                       {"dim", required_argument, NULL, O_DIM},
                                       {"heads", required_argument, NULL, O_HEADS},
                                       {"repeat", required_argument, NULL, O_REPEAT},
                                       {"warmup", required_argument, NULL, O_WARMUP},
                                       {"ref-limit", required_argument, NULL, O_REFLIMIT},
                                       {"refresh-peaks", no_argument, NULL, O_REFRESH},
                                       {"json", no_argument, NULL, O_JSON},
                                       {"csv", no_argument, NULL, O_CSV},
                                       {"svg", required_argument, NULL, O_SVG},
                                       {"kv-dtype", required_argument, NULL, O_KVDTYPE},
                                       {"kv-sets", required_argument, NULL, O_KVSETS},
                                       {"help", no_argument, NULL, 'h'},
                                       {NULL, 0, NULL, 0}};
  bool seq_given = false, dim_given = false, warmup_given = false;
  bool json = false, csv = false;
  int c;
  optind = 1;
  while ((c = getopt_long(argc, argv, ":h", opts, NULL)) != -1) {
    bool ok = true;
    switch (c) {
    case O_DEVICE: o->devices = optarg; break;
    case O_QUICK: o->quick = true; break;
    case O_SEQ:
      ok = parse_list("--seq", optarg, 1 << 20, o->seq, &o->nseq);
      seq_given = true;
      break;
    case O_DIM:
      ok = parse_list("--dim", optarg, 4096, o->dim, &o->ndim);
      dim_given = true;
      break;
    case O_HEADS: ok = cli_parse_int("--heads", optarg, 1, 4096, &o->heads); break;
    case O_REPEAT:
      ok = cli_parse_int("--repeat", optarg, 1, 256, &o->repeat);
      o->repeat_given = true;
      break;
    case O_WARMUP:
      ok = cli_parse_int("--warmup", optarg, 0, 1000, &o->warmup);
      warmup_given = true;
      break;
    case O_REFLIMIT: {
      char *end;
      errno = 0;
      o->ref_limit = strtod(optarg, &end);
      if (errno || end == optarg || *end || !isfinite(o->ref_limit) || o->ref_limit < 0)
        return cli_usage_fail("--ref-limit: '%s' is not a number >= 0 (GFLOP)", optarg);
      break;
    }
    case O_REFRESH: o->refresh_peaks = true; break;
    case O_JSON: json = true; break;
    case O_CSV: csv = true; break;
    case O_SVG:
      if (!*optarg) return cli_usage_fail("--svg: empty file name");
      o->svg = optarg;
      break;
    case O_KVDTYPE: ok = parse_dtype_list(optarg, o); break;
    case O_KVSETS: ok = cli_parse_int("--kv-sets", optarg, 1, MAX_KV_SETS, &o->kv_sets); break;
    case 'h': bench_help(stdout); return -1;
    case ':': return cli_usage_fail("option '%s' needs an argument", argv[optind - 1]);
    default: return cli_usage_fail("unknown option '%s'", argv[optind - 1]);
    }
    if (!ok) return EXIT_USAGE;
  }
  if (optind < argc) return cli_usage_fail("unexpected argument '%s'", argv[optind]);
  if (json && csv) return cli_usage_fail("--json and --csv exclude each other");
  o->fmt = json ? FMT_JSON : csv ? FMT_CSV : FMT_TABLE;
  if (!seq_given) {
    static const int64_t full[] = {256, 512, 1024, 2048, 4096}, quick[] = {64, 128, 256};
    const int64_t *s = o->quick ? quick : full;
    o->nseq = o->quick ? 3 : 5;
    memcpy(o->seq, s, (size_t)o->nseq * sizeof *s);
  }
  if (!dim_given) {
    o->ndim = o->quick ? 1 : 2;
    o->dim[0] = 64;
    o->dim[1] = 128;
  }
  if (!o->heads) o->heads = o->quick ? 4 : 8;
  if (!o->repeat_given) o->repeat = o->quick ? 3 : 5;
  if (!warmup_given) o->warmup = 1;
  if (!o->kv_sets) o->kv_sets = 1;
  if (!o->nkv) {
    o->nkv = 1;
    o->kv_dtype[0] = ATTN_F32;
  }
  return 0;
}

/* Split the selector list into its alternatives (each benchmarked apart). */
static int split_devices(const char *list, char names[][64], int *n) {
  *n = 0;
  const char *p = list;
  for (;;) {
    const char *comma = strchr(p, ',');
    size_t len = comma ? (size_t)(comma - p) : strlen(p);
    if (len == 0) return cli_usage_fail("--device: empty selector in '%s'", list);
    if (len >= 64) return cli_usage_fail("--device: selector '%.*s' too long", (int)len, p);
    if (*n == MAX_DEVICES) return cli_usage_fail("--device: more than %d selectors", MAX_DEVICES);
    memcpy(names[*n], p, len);
    names[*n][len] = '\0';
    (*n)++;
    if (!comma) return 0;
    p = comma + 1;
  }
}

int bench_main(int argc, char **argv, const char *default_device) {
  cli_cmd = "bench"; /* every message starts "attn: bench: ", however we were called */
  options o;
  memset(&o, 0, sizeof o);
  o.devices = default_device;
  o.ref_limit = REF_LIMIT_DEFAULT;
  int rc = parse_options(argc, argv, &o);
  if (rc) return rc < 0 ? 0 : rc;

  /* An --svg that cannot be written should fail now, not after minutes of
   * measuring: its directory must exist and be writable. */
  if (o.svg) {
    char svgdir[4096];
    const char *slash = strrchr(o.svg, '/');
    if (!slash) snprintf(svgdir, sizeof svgdir, ".");
    else snprintf(svgdir, sizeof svgdir, "%.*s", (int)(slash == o.svg ? 1 : slash - o.svg), o.svg);
    if (access(svgdir, W_OK) != 0) {
      cli_errline("--svg: cannot write %s: %s: %s", o.svg, svgdir, strerror(errno));
      return EXIT_FAIL;
    }
  }

  /* Open every device first: a selector that matches nothing fails the run
   * before any time is spent. NULL: the default, as the other commands. */
  char names[MAX_DEVICES][64];
  int ndev = 1;
  if (!o.devices) o.devices = getenv("ATTN_DEVICE");
  if (o.devices && !*o.devices) o.devices = NULL;
  if (o.devices && (rc = split_devices(o.devices, names, &ndev))) return rc;
  attn_context *ctx[MAX_DEVICES] = {NULL};
  attn_device_info info[MAX_DEVICES];
  attn_device_peaks peaks[MAX_DEVICES];
  bool have_peaks[MAX_DEVICES] = {false};
  static bench_shape shapes[MAX_SHAPES];
  int nshapes = build_shapes(&o, shapes, MAX_SHAPES);
  result *res = calloc((size_t)ndev * (size_t)nshapes, sizeof *res);
  int nres = 0;
  rc = EXIT_FAIL;
  if (!res) {
    cli_errline("out of host memory");
    return EXIT_FAIL;
  }
  for (int d = 0; d < ndev; d++) {
    const char *sel = o.devices ? names[d] : NULL;
    attn_status s = attn_open(sel, &ctx[d]);
    if (s == ATTN_OK) s = attn_context_info(ctx[d], &info[d]);
    if (s != ATTN_OK) {
      cli_lib_fail(s, sel ? sel : "default device");
      goto done;
    }
  }
  if (o.fmt == FMT_CSV) fputs(csv_header, stdout);

  int total = 0, step = 0;
  for (int d = 0; d < ndev; d++) total += nshapes;
  for (int d = 0; d < ndev; d++) {
    const char *dev = info[d].selector;
    bool is_ref = !strcmp(info[d].backend, "ref");
    /* Peaks first: measuring them takes a second when not cached, and must not
     * run while the shapes are timed. */
    attn_status s = attn_device_peaks_get(ctx[d], o.refresh_peaks, &peaks[d]);
    if (s == ATTN_OK) have_peaks[d] = true;
    else if (s != ATTN_ERR_UNSUPPORTED) {
      cli_lib_fail(s, dev);
      goto done;
    }
    if (o.fmt == FMT_TABLE) {
      printf("%sdevice %s: %s (%s)\n", d ? "\n" : "", dev, info[d].name, info[d].driver);
      if (have_peaks[d])
        printf("measured peaks: %.1f GFLOP/s fp32 FMA, %.1f GB/s copy (read + write)\n",
               peaks[d].gflops, peaks[d].gbps);
      else
        printf("measured peaks: none (%s)\n", attn_last_error());
    }
    int nskip = 0;
    bool first = true;
    for (int i = 0; i < nshapes; i++, step++) {
      const bench_shape *sh = &shapes[i];
      if (is_ref && o.ref_limit > 0 && shape_flops(sh) > o.ref_limit * 1e9) {
        nskip++;
        continue;
      }
      bar_show(step, total, dev, sh);
      result *r = &res[nres];
      memset(r, 0, sizeof *r);
      snprintf(r->device, sizeof r->device, "%s", dev);
      snprintf(r->backend, sizeof r->backend, "%s", info[d].backend);
      r->sh = *sh;
      s = sh->kind == CASE_MHA ? run_mha_shape(ctx[d], &o, sh, r) : run_sdpa_shape(ctx[d], &o, sh, r);
      if (s == ATTN_ERR_UNSUPPORTED) {
        /* A shape this backend cannot run is a fact about the backend, not a
         * failure of the benchmark: say so and go on. */
        bar_clear();
        fprintf(o.fmt == FMT_TABLE ? stdout : stderr, "%s%s: %s S=%" PRId64 " D=%" PRId64
                "%s%s skipped: %s\n", o.fmt == FMT_TABLE ? "" : "attn: bench: ", dev, sh->name,
                sh->Skv, sh->D, kv_tag(sh), kv_tag(sh)[0] ? attn_dtype_str(sh->kv_dtype) : "",
                attn_last_error());
        continue;
      }
      if (s != ATTN_OK) {
        bar_clear();
        char where[160];
        snprintf(where, sizeof where, "%s: %s S=%" PRId64 " D=%" PRId64 "%s%s", dev, sh->name,
                 sh->Skv, sh->D, kv_tag(sh), kv_tag(sh)[0] ? attn_dtype_str(sh->kv_dtype) : "");
        cli_lib_fail(s, where);
        goto done;
      }
      r->gflops = shape_flops(sh) / (r->med_ms * 1e6);
      r->gbps = shape_bytes(sh) / (r->med_ms * 1e6);
      r->have_peaks = have_peaks[d];
      if (r->have_peaks) {
        r->peak_gflops = peaks[d].gflops;
        r->peak_gbps = peaks[d].gbps;
        r->flops_frac = r->gflops / peaks[d].gflops;
        r->bw_frac = r->gbps / peaks[d].gbps;
        bool mem_bound = sh->kind == CASE_DECODE;
        r->frac = mem_bound ? r->bw_frac : r->flops_frac;
        r->basis = mem_bound ? "bandwidth" : "flops";
      }
      print_result(&o, r, first);
      first = false;
      nres++;
    }
    bar_clear();
    if (nskip) {
      FILE *f = o.fmt == FMT_TABLE ? stdout : stderr;
      fprintf(f, "%s%s: skipped %d shape%s over %g GFLOP per run (ref is slow; --ref-limit 0 "
              "runs them)\n", o.fmt == FMT_TABLE ? "" : "attn: bench: ", dev, nskip,
              nskip == 1 ? "" : "s", o.ref_limit);
    }
  }
  rc = o.svg ? write_svg(o.svg, res, nres) : 0;
done:
  bar_clear();
  for (int d = 0; d < ndev; d++) attn_close(ctx[d]);
  free(res);
  return rc;
}
