/* attn: the libattn command-line tool.
 *
 *   attn devices            list devices and the modules that failed
 *   attn run                scaled dot-product attention on .npy or random inputs
 *   attn mha                multi-head attention with projections from .npy weights
 *
 * Exit status: 0 success, 1 failure, 2 usage error. Every error is one line on
 * stderr starting with "attn: ". Output files are written only once the whole
 * run (and --check) succeeded, each atomically, so a failed run leaves none.
 * Commands live in one table so that later ones (bench) slot in. */
#include "config.h"

#include <errno.h>
#include <getopt.h>
#include <inttypes.h>
#include <math.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "attn.h"
#include "bench.h"
#include "cli.h"
#include "npy.h"
#include "tune.h"

/* --check: every output must satisfy max|got - ref| <= CHECK_ATOL + CHECK_RTOL * max|ref|
 * (relative to the size of the values, as fp32 against the double-accumulating
 * ref backend allows; see the help). */
#define CHECK_ATOL 1e-5
#define CHECK_RTOL 1e-4

static const char *g_device = NULL; /* "attn --device SEL COMMAND": default for every command */

/* ---- small helpers ----------------------------------------------------------------- */

static bool parse_int(const char *opt, const char *s, int64_t min, int64_t *out) {
  char *end;
  errno = 0;
  long long v = strtoll(s, &end, 10);
  if (errno || end == s || *end || v < min) {
    cli_usage_fail("%s: '%s' is not an integer >= %" PRId64, opt, s, min);
    return false;
  }
  *out = v;
  return true;
}

static bool parse_float(const char *opt, const char *s, float *out) {
  char *end;
  errno = 0;
  float v = strtof(s, &end);
  if (errno || end == s || *end || !isfinite(v)) {
    cli_usage_fail("%s: '%s' is not a finite number", opt, s);
    return false;
  }
  *out = v;
  return true;
}

/* Product of dims as an element count whose float bytes fit in size_t; -1 if not. */
static int64_t numel_of(int n, const int64_t *shape) {
  uint64_t c = 1;
  for (int i = 0; i < n; i++) {
    if (shape[i] < 1 || (uint64_t)shape[i] > (SIZE_MAX / sizeof(float)) / c ||
        (uint64_t)shape[i] > (uint64_t)INT64_MAX / c)
      return -1;
    c *= (uint64_t)shape[i];
  }
  return (int64_t)c;
}

static void shape_fmt(char *buf, size_t cap, int n, const int64_t *s) {
  size_t k = 0;
  buf[0] = '\0';
  for (int i = 0; i < n && k < cap; i++) {
    int w = snprintf(buf + k, cap - k, "%s%" PRId64, i ? ", " : "[", s[i]);
    if (w < 0) return;
    k += (size_t)w;
  }
  if (k < cap) snprintf(buf + k, cap - k, "]");
}

/* Read a .npy file given to option opt. */
static bool load_npy(const char *opt, const char *path, unsigned dtypes, int min_rank,
                     int max_rank, npy_array *a) {
  npy_want w = {dtypes, min_rank, max_rank};
  char err[NPY_ERR_MAX];
  if (npy_read_file(path, &w, a, err, sizeof err) != ATTN_OK) {
    cli_errline("%s: %s", opt, err);
    return false;
  }
  return true;
}

/* A tensor on ctx holding host data. */
static attn_status upload(attn_context *ctx, int n, const int64_t *shape, const float *data,
                          attn_tensor **t) {
  attn_status s = attn_tensor_create(ctx, n, shape, t);
  if (s != ATTN_OK) return s;
  s = attn_tensor_write(*t, data, (size_t)attn_tensor_numel(*t));
  if (s != ATTN_OK) {
    attn_tensor_free(*t);
    *t = NULL;
  }
  return s;
}

/* Compare got with ref (from the ref backend): max abs error and that error
 * relative to max|ref|. Equal infinities (an LSE of -inf) count as equal; a
 * NaN or a mismatched infinity is an infinite error. Returns true if within
 * the --check tolerance, and prints one line. */
static bool check_close(const char *what, const float *got, const float *ref, size_t n) {
  double max_abs = 0, max_ref = 0;
  for (size_t i = 0; i < n; i++) {
    double g = got[i], r = ref[i], e;
    if (isfinite(r) && fabs(r) > max_ref) max_ref = fabs(r);
    if (isnan(g) || isnan(r)) e = isnan(g) && isnan(r) ? 0 : INFINITY;
    else if (isinf(g) || isinf(r)) e = g == r ? 0 : INFINITY;
    else e = fabs(g - r);
    if (e > max_abs) max_abs = e;
  }
  double tol = CHECK_ATOL + CHECK_RTOL * max_ref;
  double rel = max_ref > 0 ? max_abs / max_ref : max_abs;
  bool ok = max_abs <= tol;
  printf("check %-8s vs ref: max abs err %.3g, max rel err %.3g (tolerance %.3g): %s\n", what,
         max_abs, rel, tol, ok ? "ok" : "FAILED");
  if (!ok)
    cli_errline("--check: %s differs from the ref backend: max abs err %.3g > tolerance %.3g", what,
            max_abs, tol);
  return ok;
}

static void print_device(attn_context *ctx) {
  attn_device_info info;
  if (attn_context_info(ctx, &info) == ATTN_OK)
    printf("device: %s (backend %s, %s, %s)\n", info.selector, info.backend,
           attn_device_type_str(info.type), info.name);
}

/* Outputs written all or nothing: every file is prepared (a temporary next to
 * it, fsync'ed) before any is renamed into place. */
typedef struct out_file {
  const char *path;
  int ndim;
  int64_t shape[4];
  const float *data;
} out_file;

static int write_outputs(const out_file *f, int n) {
  npy_pending p[4] = {{0}};
  char err[NPY_ERR_MAX];
  for (int i = 0; i < n; i++) {
    if (!f[i].path) continue;
    if (npy_write_prepare(f[i].path, f[i].ndim, f[i].shape, f[i].data, &p[i], err, sizeof err) !=
        ATTN_OK) {
      for (int j = 0; j < i; j++) npy_write_abort(&p[j]);
      cli_errline("%s", err);
      return EXIT_FAIL;
    }
  }
  for (int i = 0; i < n; i++) {
    if (!f[i].path) continue;
    if (npy_write_commit(&p[i], err, sizeof err) != ATTN_OK) {
      for (int j = i + 1; j < n; j++) npy_write_abort(&p[j]);
      cli_errline("%s", err);
      return EXIT_FAIL;
    }
  }
  return 0;
}

/* ---- attn devices ---------------------------------------------------------------- */

static void help_devices(FILE *f) {
  fprintf(f,
          "Usage: attn devices [--device SEL]\n"
          "\n"
          "Lists every device of every backend found, one per line:\n"
          "  SELECTOR  BACKEND  TYPE  NAME  MEMORY\n"
          "where SELECTOR is the exact --device / ATTN_DEVICE string that picks it; then\n"
          "the backend modules that failed to load, each with its path and the reason.\n"
          "With --device SEL, also opens SEL and prints the device it selects.\n"
          "\n"
          "  --device SEL   selector to resolve (default: none)\n"
          "  -h, --help     this help\n");
}

static void fmt_mem(char *buf, size_t cap, uint64_t bytes) {
  if (!bytes) snprintf(buf, cap, "unknown");
  else if (bytes >= (1ULL << 30)) snprintf(buf, cap, "%.1f GiB", bytes / 1073741824.0);
  else snprintf(buf, cap, "%.1f MiB", bytes / 1048576.0);
}

static int cmd_devices(int argc, char **argv) {
  static const struct option opts[] = {{"device", required_argument, NULL, 'd'},
                                       {"help", no_argument, NULL, 'h'},
                                       {NULL, 0, NULL, 0}};
  const char *sel = g_device;
  int c;
  while ((c = getopt_long(argc, argv, ":h", opts, NULL)) != -1) {
    switch (c) {
    case 'd': sel = optarg; break;
    case 'h': help_devices(stdout); return 0;
    case ':': return cli_usage_fail("option '%s' needs an argument", argv[optind - 1]);
    default: return cli_usage_fail("unknown option '%s'", argv[optind - 1]);
    }
  }
  if (optind < argc) return cli_usage_fail("unexpected argument '%s'", argv[optind]);

  attn_device_list *list;
  attn_status s = attn_list_devices(&list);
  if (s != ATTN_OK) return cli_lib_fail(s, NULL);
  size_t n = attn_device_list_count(list);
  for (size_t i = 0; i < n; i++) {
    const attn_device_info *d = attn_device_list_get(list, i);
    char mem[32];
    fmt_mem(mem, sizeof mem, d->global_mem);
    printf("%-16s %-8s %-11s %-40s %s\n", d->selector, d->backend, attn_device_type_str(d->type),
           d->name, mem);
  }
  if (n == 0) printf("no devices found\n");
  size_t nf = attn_device_list_failure_count(list);
  if (nf) {
    printf("failed modules:\n");
    for (size_t i = 0; i < nf; i++)
      printf("  %s: %s\n", attn_device_list_failure_path(list, i),
             attn_device_list_failure_reason(list, i));
  }
  attn_device_list_free(list);

  if (sel) {
    attn_context *ctx;
    s = attn_open(sel, &ctx);
    if (s != ATTN_OK) return cli_lib_fail(s, NULL);
    attn_device_info info;
    s = attn_context_info(ctx, &info);
    if (s == ATTN_OK) printf("selected by '%s': %s (%s)\n", sel, info.selector, info.name);
    attn_close(ctx);
    if (s != ATTN_OK) return cli_lib_fail(s, NULL);
  }
  return 0;
}

/* ---- attn run -------------------------------------------------------------------- */

static void help_run(FILE *f) {
  fprintf(f,
          "Usage: attn run [options]\n"
          "\n"
          "Scaled dot-product attention, out = softmax(scale * Q K^T + mask) V, on one device.\n"
          "Inputs are .npy files (float32 '<f4', C order) or random numbers.\n"
          "\n"
          "Inputs from files:\n"
          "  --q FILE          [B, Hq, Sq, D]\n"
          "  --k FILE          [B, Hkv, Skv, D]   (Hq %% Hkv == 0: grouped-query attention)\n"
          "  --v FILE          [B, Hkv, Skv, Dv]\n"
          "Random inputs, uniform in [-1, 1] (when --q/--k/--v are not given):\n"
          "  --batch N (1) --heads N (8) --kv-heads N (heads) --seq N (128)\n"
          "  --kv-seq N (seq) --dim N (64) --vdim N (dim) --seed N (1)\n"
          "Options:\n"
          "  --mask FILE       [1|B, 1|Hq, Sq, Skv], leading 1s may be left out; numpy bool:\n"
          "                    true = attend; float32: added to the scaled scores (-inf masks)\n"
          "  --kv-lens FILE    int32 [B]: keys j >= kv_lens[b] are hidden\n"
          "  --causal          query i sees key j iff j <= i + Skv - Sq (bottom-right aligned)\n"
          "  --scale X         default 1/sqrt(D)\n"
          "  --out FILE        write out [B, Hq, Sq, Dv]\n"
          "  --weights-out FILE  write the probabilities [B, Hq, Sq, Skv]\n"
          "  --lse-out FILE    write the row log-sum-exp [B, Hq, Sq] (-inf for empty rows)\n"
          "  --check           rerun on the ref backend and compare every output: fails\n"
          "                    (exit 1) if max|got - ref| > %g + %g * max|ref|\n"
          "  --warmup N        untimed runs before the timed one (default 1)\n"
          "  --device SEL      device selector (default: $ATTN_DEVICE, else %s)\n"
          "  -h, --help        this help\n"
          "\n"
          "Prints the device, the shapes, the time of the timed run and its rate in GFLOP/s,\n"
          "counting 4*B*Hq*Sq*Skv*D flops, halved when causal with Sq == Skv. Output files\n"
          "are written only if everything succeeded. Exit 0 ok, 1 failure, 2 usage error.\n",
          CHECK_ATOL, CHECK_RTOL, ATTN_DEFAULT_SELECTOR);
}

typedef struct sdpa_job {
  int64_t qs[4], ks[4], vs[4], ms[4];
  const float *q, *k, *v, *mask;
  attn_mask_kind mask_kind;
  bool causal, has_scale;
  float scale;
  const int32_t *kv_lens;
  bool want_weights, want_lse;
  /* derived */
  int64_t out_shape[4], w_shape[4], lse_shape[3];
} sdpa_job;

typedef struct sdpa_result {
  float *out, *weights, *lse;
  double ms;
} sdpa_result;

static void sdpa_result_free(sdpa_result *r) {
  free(r->out);
  free(r->weights);
  free(r->lse);
  memset(r, 0, sizeof *r);
}

/* Host buffer for a tensor's contents, or NULL with a message. */
static float *alloc_for(int n, const int64_t *shape, const char *what) {
  int64_t c = numel_of(n, shape);
  char sh[96];
  shape_fmt(sh, sizeof sh, n, shape);
  float *p = c > 0 ? malloc((size_t)c * sizeof(float)) : NULL;
  if (!p) cli_errline("%s %s: too large for host memory", what, sh);
  return p;
}

/* Upload the job to ctx, run it warmup + 1 times, read the outputs back. */
static int run_sdpa_on(attn_context *ctx, const sdpa_job *j, int64_t warmup, const char *where,
                       sdpa_result *r) {
  memset(r, 0, sizeof *r);
  attn_tensor *q = NULL, *k = NULL, *v = NULL, *m = NULL, *o = NULL, *w = NULL, *l = NULL;
  attn_status s;
  int rc = EXIT_FAIL;
  if ((s = upload(ctx, 4, j->qs, j->q, &q)) || (s = upload(ctx, 4, j->ks, j->k, &k)) ||
      (s = upload(ctx, 4, j->vs, j->v, &v)) ||
      (j->mask && (s = upload(ctx, 4, j->ms, j->mask, &m))) ||
      (s = attn_tensor_create(ctx, 4, j->out_shape, &o)) ||
      (j->want_weights && (s = attn_tensor_create(ctx, 4, j->w_shape, &w))) ||
      (j->want_lse && (s = attn_tensor_create(ctx, 3, j->lse_shape, &l)))) {
    cli_lib_fail(s, where);
    goto done;
  }
  attn_sdpa_args a = ATTN_SDPA_ARGS_INIT;
  a.q = q;
  a.k = k;
  a.v = v;
  a.out = o;
  a.mask = m;
  a.mask_kind = m ? j->mask_kind : ATTN_MASK_NONE;
  a.causal = j->causal;
  a.has_scale = j->has_scale;
  a.scale = j->scale;
  a.kv_lens = j->kv_lens;
  a.weights = w;
  a.lse = l;
  for (int64_t i = 0; i <= warmup; i++) {
    double t0 = cli_now_ms();
    if ((s = attn_sdpa(ctx, &a)) || (s = attn_synchronize(ctx))) {
      cli_lib_fail(s, where);
      goto done;
    }
    r->ms = cli_now_ms() - t0;
  }
  if (!(r->out = alloc_for(4, j->out_shape, "out")) ||
      (w && !(r->weights = alloc_for(4, j->w_shape, "weights"))) ||
      (l && !(r->lse = alloc_for(3, j->lse_shape, "lse"))))
    goto done;
  if ((s = attn_tensor_read(o, r->out, (size_t)attn_tensor_numel(o))) ||
      (w && (s = attn_tensor_read(w, r->weights, (size_t)attn_tensor_numel(w)))) ||
      (l && (s = attn_tensor_read(l, r->lse, (size_t)attn_tensor_numel(l))))) {
    cli_lib_fail(s, where);
    goto done;
  }
  rc = 0;
done:
  attn_tensor_free(q);
  attn_tensor_free(k);
  attn_tensor_free(v);
  attn_tensor_free(m);
  attn_tensor_free(o);
  attn_tensor_free(w);
  attn_tensor_free(l);
  if (rc) sdpa_result_free(r);
  return rc;
}

static int cmd_run(int argc, char **argv) {
  enum {
    O_Q = 256, O_K, O_V, O_MASK, O_KVLENS, O_BATCH, O_HEADS, O_KVHEADS, O_SEQ, O_KVSEQ, O_DIM,
    O_VDIM, O_SEED, O_CAUSAL, O_SCALE, O_OUT, O_WOUT, O_LSEOUT, O_CHECK, O_WARMUP, O_DEVICE
  };
  static const struct option opts[] = {
      {"q", required_argument, NULL, O_Q},
      {"k", required_argument, NULL, O_K},
      {"v", required_argument, NULL, O_V},
      {"mask", required_argument, NULL, O_MASK},
      {"kv-lens", required_argument, NULL, O_KVLENS},
      {"batch", required_argument, NULL, O_BATCH},
      {"heads", required_argument, NULL, O_HEADS},
      {"kv-heads", required_argument, NULL, O_KVHEADS},
      {"seq", required_argument, NULL, O_SEQ},
      {"kv-seq", required_argument, NULL, O_KVSEQ},
      {"dim", required_argument, NULL, O_DIM},
      {"vdim", required_argument, NULL, O_VDIM},
      {"seed", required_argument, NULL, O_SEED},
      {"causal", no_argument, NULL, O_CAUSAL},
      {"scale", required_argument, NULL, O_SCALE},
      {"out", required_argument, NULL, O_OUT},
      {"weights-out", required_argument, NULL, O_WOUT},
      {"lse-out", required_argument, NULL, O_LSEOUT},
      {"check", no_argument, NULL, O_CHECK},
      {"warmup", required_argument, NULL, O_WARMUP},
      {"device", required_argument, NULL, O_DEVICE},
      {"help", no_argument, NULL, 'h'},
      {NULL, 0, NULL, 0}};
  const char *fq = NULL, *fk = NULL, *fv = NULL, *fmask = NULL, *flens = NULL;
  const char *out_path = NULL, *w_path = NULL, *lse_path = NULL, *dev = g_device;
  int64_t B = 1, H = 8, Hkv = 0, S = 128, Skv = 0, D = 64, Dv = 0, seed = 1, warmup = 1;
  bool random_opt = false, check = false;
  const char *random_name = NULL;
  sdpa_job j;
  memset(&j, 0, sizeof j);
  int c;
  while ((c = getopt_long(argc, argv, ":h", opts, NULL)) != -1) {
    bool ok = true;
    switch (c) {
    case O_Q: fq = optarg; break;
    case O_K: fk = optarg; break;
    case O_V: fv = optarg; break;
    case O_MASK: fmask = optarg; break;
    case O_KVLENS: flens = optarg; break;
    case O_BATCH: ok = parse_int("--batch", optarg, 1, &B); random_name = "--batch"; break;
    case O_HEADS: ok = parse_int("--heads", optarg, 1, &H); random_name = "--heads"; break;
    case O_KVHEADS: ok = parse_int("--kv-heads", optarg, 1, &Hkv); random_name = "--kv-heads"; break;
    case O_SEQ: ok = parse_int("--seq", optarg, 1, &S); random_name = "--seq"; break;
    case O_KVSEQ: ok = parse_int("--kv-seq", optarg, 1, &Skv); random_name = "--kv-seq"; break;
    case O_DIM: ok = parse_int("--dim", optarg, 1, &D); random_name = "--dim"; break;
    case O_VDIM: ok = parse_int("--vdim", optarg, 1, &Dv); random_name = "--vdim"; break;
    case O_SEED: ok = parse_int("--seed", optarg, 0, &seed); random_name = "--seed"; break;
    case O_CAUSAL: j.causal = true; break;
    case O_SCALE: ok = parse_float("--scale", optarg, &j.scale); j.has_scale = true; break;
    case O_OUT: out_path = optarg; break;
    case O_WOUT: w_path = optarg; break;
    case O_LSEOUT: lse_path = optarg; break;
    case O_CHECK: check = true; break;
    case O_WARMUP: ok = parse_int("--warmup", optarg, 0, &warmup); break;
    case O_DEVICE: dev = optarg; break;
    case 'h': help_run(stdout); return 0;
    case ':': return cli_usage_fail("option '%s' needs an argument", argv[optind - 1]);
    default: return cli_usage_fail("unknown option '%s'", argv[optind - 1]);
    }
    if (!ok) return EXIT_USAGE;
    if (random_name) random_opt = true;
  }
  if (optind < argc) return cli_usage_fail("unexpected argument '%s'", argv[optind]);
  /* Two outputs naming one file: the later rename would silently replace the
   * earlier output, so the run would report success with one result lost. */
  const char *outs[3] = {out_path, w_path, lse_path};
  static const char *const out_opt[3] = {"--out", "--weights-out", "--lse-out"};
  for (int a = 0; a < 3; a++)
    for (int b = a + 1; b < 3; b++)
      if (outs[a] && outs[b] && !strcmp(outs[a], outs[b]))
        return cli_usage_fail("%s and %s name the same file '%s'", out_opt[a], out_opt[b], outs[a]);
  bool from_files = fq || fk || fv;
  if (from_files && !(fq && fk && fv))
    return cli_usage_fail("--q, --k and --v go together (missing %s)", !fq ? "--q" : !fk ? "--k" : "--v");
  if (from_files && random_opt)
    return cli_usage_fail("%s sets a random input's shape; it cannot be combined with --q/--k/--v",
                      random_name);

  int rc = EXIT_FAIL;
  npy_array aq = {0}, ak = {0}, av = {0}, am = {0}, al = {0};
  float *rq = NULL, *rk = NULL, *rv = NULL, *mask_f = NULL;
  attn_context *ctx = NULL, *ref = NULL;
  sdpa_result res = {0}, chk = {0};

  if (from_files) {
    if (!load_npy("--q", fq, NPY_F32, 4, 4, &aq) || !load_npy("--k", fk, NPY_F32, 4, 4, &ak) ||
        !load_npy("--v", fv, NPY_F32, 4, 4, &av))
      goto done;
    memcpy(j.qs, aq.shape, sizeof j.qs);
    memcpy(j.ks, ak.shape, sizeof j.ks);
    memcpy(j.vs, av.shape, sizeof j.vs);
    j.q = aq.data;
    j.k = ak.data;
    j.v = av.data;
  } else {
    if (!Hkv) Hkv = H;
    if (!Skv) Skv = S;
    if (!Dv) Dv = D;
    int64_t qs[4] = {B, H, S, D}, ks[4] = {B, Hkv, Skv, D}, vs[4] = {B, Hkv, Skv, Dv};
    memcpy(j.qs, qs, sizeof qs);
    memcpy(j.ks, ks, sizeof ks);
    memcpy(j.vs, vs, sizeof vs);
    int64_t nq = numel_of(4, qs), nk = numel_of(4, ks), nv = numel_of(4, vs);
    uint64_t state = (uint64_t)seed * 0x9E3779B97F4A7C15ULL + 1; /* never 0 */
    if (nq < 0 || nk < 0 || nv < 0 || !(rq = cli_random_floats(nq, &state)) ||
        !(rk = cli_random_floats(nk, &state)) || !(rv = cli_random_floats(nv, &state))) {
      cli_errline("random inputs q [%" PRId64 ", %" PRId64 ", %" PRId64 ", %" PRId64
              "] etc. are too large for host memory",
              B, H, S, D);
      goto done;
    }
    j.q = rq;
    j.k = rk;
    j.v = rv;
  }
  /* Output shapes follow q and v; the library checks that the inputs agree. */
  int64_t Bq = j.qs[0], Hq = j.qs[1], Sq = j.qs[2], Dq = j.qs[3], Sk = j.ks[2], Dvv = j.vs[3];
  int64_t os[4] = {Bq, Hq, Sq, Dvv}, ws[4] = {Bq, Hq, Sq, Sk}, ls[3] = {Bq, Hq, Sq};
  memcpy(j.out_shape, os, sizeof os);
  memcpy(j.w_shape, ws, sizeof ws);
  memcpy(j.lse_shape, ls, sizeof ls);
  j.want_weights = w_path != NULL;
  j.want_lse = lse_path != NULL;

  if (fmask) {
    if (!load_npy("--mask", fmask, NPY_F32 | NPY_BOOL, 2, 4, &am)) goto done;
    /* numpy broadcasting: missing leading dimensions are 1 */
    int pad = 4 - am.ndim;
    for (int i = 0; i < 4; i++) j.ms[i] = i < pad ? 1 : am.shape[i - pad];
    if (am.dtype == NPY_BOOL) {
      if (!(mask_f = malloc(am.count * sizeof(float)))) {
        cli_errline("--mask: %s: out of memory", fmask);
        goto done;
      }
      const uint8_t *b = am.data;
      for (size_t i = 0; i < am.count; i++) mask_f[i] = b[i] ? 1.0f : 0.0f;
      j.mask = mask_f;
      j.mask_kind = ATTN_MASK_BOOL;
    } else {
      j.mask = am.data;
      j.mask_kind = ATTN_MASK_ADDITIVE;
    }
  }
  if (flens) {
    if (!load_npy("--kv-lens", flens, NPY_I32, 1, 1, &al)) goto done;
    if (al.shape[0] != Bq) {
      cli_errline("--kv-lens: %s has %" PRId64 " entries; expected one per batch item, B = %" PRId64,
              flens, al.shape[0], Bq);
      goto done;
    }
    j.kv_lens = al.data;
  }

  attn_status s = attn_open(dev, &ctx);
  if (s != ATTN_OK) {
    cli_lib_fail(s, NULL);
    goto done;
  }
  if (run_sdpa_on(ctx, &j, warmup, NULL, &res)) goto done;

  char sq[96], sk[96], sv[96], so[96], sm[112] = "none";
  shape_fmt(sq, sizeof sq, 4, j.qs);
  shape_fmt(sk, sizeof sk, 4, j.ks);
  shape_fmt(sv, sizeof sv, 4, j.vs);
  shape_fmt(so, sizeof so, 4, j.out_shape);
  if (j.mask) {
    char t[96];
    shape_fmt(t, sizeof t, 4, j.ms);
    snprintf(sm, sizeof sm, "%s %s", j.mask_kind == ATTN_MASK_BOOL ? "bool" : "additive", t);
  }
  print_device(ctx);
  printf("q %s  k %s  v %s  -> out %s\n", sq, sk, sv, so);
  printf("mask %s  causal %s  kv-lens %s  scale %g\n", sm, j.causal ? "yes" : "no",
         j.kv_lens ? "yes" : "no", j.has_scale ? j.scale : 1.0 / sqrt((double)Dq));
  double flops = 4.0 * Bq * Hq * Sq * Sk * Dq;
  if (j.causal && Sq == Sk) flops /= 2;
  printf("time %.3f ms  %.2f GFLOP/s\n", res.ms, res.ms > 0 ? flops / (res.ms * 1e6) : 0.0);

  if (check) {
    if ((s = attn_open("ref", &ref)) != ATTN_OK) {
      cli_lib_fail(s, "--check");
      goto done;
    }
    if (run_sdpa_on(ref, &j, 0, "--check", &chk)) goto done;
    bool ok = check_close("out", res.out, chk.out, (size_t)numel_of(4, j.out_shape));
    if (ok && j.want_weights)
      ok = check_close("weights", res.weights, chk.weights, (size_t)numel_of(4, j.w_shape));
    if (ok && j.want_lse)
      ok = check_close("lse", res.lse, chk.lse, (size_t)numel_of(3, j.lse_shape));
    if (!ok) goto done;
  }

  out_file files[3] = {{out_path, 4, {0}, res.out},
                       {w_path, 4, {0}, res.weights},
                       {lse_path, 3, {0}, res.lse}};
  memcpy(files[0].shape, j.out_shape, sizeof j.out_shape);
  memcpy(files[1].shape, j.w_shape, sizeof j.w_shape);
  memcpy(files[2].shape, j.lse_shape, sizeof j.lse_shape);
  rc = write_outputs(files, 3);
done:
  sdpa_result_free(&res);
  sdpa_result_free(&chk);
  attn_close(ref);
  attn_close(ctx);
  npy_free(&aq);
  npy_free(&ak);
  npy_free(&av);
  npy_free(&am);
  npy_free(&al);
  free(rq);
  free(rk);
  free(rv);
  free(mask_f);
  return rc;
}

/* ---- attn mha -------------------------------------------------------------------- */

static void help_mha(FILE *f) {
  fprintf(f,
          "Usage: attn mha --x FILE [--kv-x FILE] --heads N [--kv-heads N]\n"
          "                (--wq FILE --wk FILE --wv FILE | --in-proj FILE) --wo FILE\n"
          "                [--bq FILE --bk FILE --bv FILE | --in-bias FILE] [--bo FILE]\n"
          "                [--causal] [--out FILE] [--check] [--device SEL]\n"
          "\n"
          "Multi-head attention with projections, weights in PyTorch nn.Linear convention\n"
          "(W [out, in], y = x W^T + b); all files float32 .npy, as numpy.save writes them.\n"
          "\n"
          "  --x FILE        [B, Sq, E] (or [Sq, E] for one sequence)\n"
          "  --kv-x FILE     [B, Skv, Ekv]: cross attention (default: self attention on x)\n"
          "  --heads N       query heads Hq (required); head dim D = rows(wq) / Hq\n"
          "  --kv-heads N    key/value heads Hkv (default Hq; Hq %% Hkv == 0)\n"
          "  --wq FILE       [Hq*D, E]        --bq FILE  [Hq*D]\n"
          "  --wk FILE       [Hkv*D, Ekv]     --bk FILE  [Hkv*D]\n"
          "  --wv FILE       [Hkv*D, Ekv]     --bv FILE  [Hkv*D]\n"
          "  --wo FILE       [E, Hq*D]        --bo FILE  [E]\n"
          "  --in-proj FILE  [(Hq+2*Hkv)*D, E] packed q, k, v rows instead of --wq/--wk/--wv\n"
          "                  (nn.MultiheadAttention's in_proj_weight; --wo is out_proj.weight)\n"
          "  --in-bias FILE  [(Hq+2*Hkv)*D] (in_proj_bias; --bo is out_proj.bias)\n"
          "                  biases: give all of them or none\n"
          "  --causal        causal self attention (query i sees keys j <= i + Skv - Sq)\n"
          "  --out FILE      write out, the same shape as x\n"
          "  --check         rerun on the ref backend: fails (exit 1) if\n"
          "                  max|got - ref| > %g + %g * max|ref|\n"
          "  --warmup N      untimed runs before the timed one (default 1)\n"
          "  --device SEL    device selector (default: $ATTN_DEVICE, else %s)\n"
          "  -h, --help      this help\n",
          CHECK_ATOL, CHECK_RTOL, ATTN_DEFAULT_SELECTOR);
}

enum { W_WQ, W_WK, W_WV, W_WO, W_BQ, W_BK, W_BV, W_BO, W_IN, W_INB, W_COUNT };
static const char *const w_opt[W_COUNT] = {"--wq", "--wk", "--wv", "--wo",      "--bq",
                                           "--bk", "--bv", "--bo", "--in-proj", "--in-bias"};

typedef struct mha_job {
  attn_mha_desc desc;
  int64_t B, Sq, Skv, E, Ekv;
  const float *x, *kv_x;
  npy_array w[W_COUNT]; /* data NULL when not given */
} mha_job;

static int run_mha_on(attn_context *ctx, const mha_job *j, int64_t warmup, const char *where,
                      float *out, double *ms) {
  attn_tensor *wt[W_COUNT] = {0}, *x = NULL, *kvx = NULL, *o = NULL;
  attn_mha *g = NULL;
  attn_status s = ATTN_OK;
  int rc = EXIT_FAIL;
  for (int i = 0; i < W_COUNT; i++)
    if (j->w[i].data && (s = upload(ctx, j->w[i].ndim, j->w[i].shape, j->w[i].data, &wt[i])))
      goto fail;
  int64_t xs[3] = {j->B, j->Sq, j->E}, kvs[3] = {j->B, j->Skv, j->Ekv};
  if ((s = upload(ctx, 3, xs, j->x, &x)) || (j->kv_x && (s = upload(ctx, 3, kvs, j->kv_x, &kvx))) ||
      (s = attn_tensor_create(ctx, 3, xs, &o)))
    goto fail;
  attn_mha_weights w = {wt[W_WQ], wt[W_WK], wt[W_WV], wt[W_WO], wt[W_BQ],
                        wt[W_BK], wt[W_BV], wt[W_BO], wt[W_IN], wt[W_INB]};
  if ((s = attn_mha_create(ctx, &j->desc, &w, &g))) goto fail;
  for (int64_t i = 0; i <= warmup; i++) {
    double t0 = cli_now_ms();
    if ((s = attn_mha_run(g, x, kvx, o)) || (s = attn_synchronize(ctx))) goto fail;
    *ms = cli_now_ms() - t0;
  }
  if ((s = attn_tensor_read(o, out, (size_t)attn_tensor_numel(o)))) goto fail;
  rc = 0;
fail:
  if (rc) cli_lib_fail(s, where);
  attn_mha_free(g);
  for (int i = 0; i < W_COUNT; i++) attn_tensor_free(wt[i]);
  attn_tensor_free(x);
  attn_tensor_free(kvx);
  attn_tensor_free(o);
  return rc;
}

/* Shape check of a weight file against what x and the heads imply. */
static bool want_shape(const mha_job *j, int which, const char *path, int64_t rows, int64_t cols,
                       const char *why) {
  const npy_array *a = &j->w[which];
  bool ok = a->ndim == 2 ? a->shape[0] == rows && a->shape[1] == cols
                         : a->ndim == 1 && cols == 0 && a->shape[0] == rows;
  if (!ok) {
    char got[96], exp[96];
    shape_fmt(got, sizeof got, a->ndim, a->shape);
    int64_t e[2] = {rows, cols};
    shape_fmt(exp, sizeof exp, cols ? 2 : 1, e);
    cli_errline("%s: %s is %s; expected %s (%s)", w_opt[which], path, got, exp, why);
  }
  return ok;
}

static int cmd_mha(int argc, char **argv) {
  enum { O_X = 300, O_KVX, O_HEADS, O_KVHEADS, O_CAUSAL, O_OUT, O_CHECK, O_WARMUP, O_DEVICE,
         O_W0 };
  static const struct option opts[] = {
      {"x", required_argument, NULL, O_X},
      {"kv-x", required_argument, NULL, O_KVX},
      {"heads", required_argument, NULL, O_HEADS},
      {"kv-heads", required_argument, NULL, O_KVHEADS},
      {"causal", no_argument, NULL, O_CAUSAL},
      {"out", required_argument, NULL, O_OUT},
      {"check", no_argument, NULL, O_CHECK},
      {"warmup", required_argument, NULL, O_WARMUP},
      {"device", required_argument, NULL, O_DEVICE},
      {"wq", required_argument, NULL, O_W0 + W_WQ},
      {"wk", required_argument, NULL, O_W0 + W_WK},
      {"wv", required_argument, NULL, O_W0 + W_WV},
      {"wo", required_argument, NULL, O_W0 + W_WO},
      {"bq", required_argument, NULL, O_W0 + W_BQ},
      {"bk", required_argument, NULL, O_W0 + W_BK},
      {"bv", required_argument, NULL, O_W0 + W_BV},
      {"bo", required_argument, NULL, O_W0 + W_BO},
      {"in-proj", required_argument, NULL, O_W0 + W_IN},
      {"in-bias", required_argument, NULL, O_W0 + W_INB},
      {"help", no_argument, NULL, 'h'},
      {NULL, 0, NULL, 0}};
  const char *fx = NULL, *fkvx = NULL, *out_path = NULL, *dev = g_device, *fw[W_COUNT] = {0};
  int64_t Hq = 0, Hkv = 0, warmup = 1;
  bool causal = false, check = false;
  int c;
  while ((c = getopt_long(argc, argv, ":h", opts, NULL)) != -1) {
    bool ok = true;
    switch (c) {
    case O_X: fx = optarg; break;
    case O_KVX: fkvx = optarg; break;
    case O_HEADS: ok = parse_int("--heads", optarg, 1, &Hq); break;
    case O_KVHEADS: ok = parse_int("--kv-heads", optarg, 1, &Hkv); break;
    case O_CAUSAL: causal = true; break;
    case O_OUT: out_path = optarg; break;
    case O_CHECK: check = true; break;
    case O_WARMUP: ok = parse_int("--warmup", optarg, 0, &warmup); break;
    case O_DEVICE: dev = optarg; break;
    case 'h': help_mha(stdout); return 0;
    case ':': return cli_usage_fail("option '%s' needs an argument", argv[optind - 1]);
    default:
      if (c >= O_W0 && c < O_W0 + W_COUNT) {
        fw[c - O_W0] = optarg;
        break;
      }
      return cli_usage_fail("unknown option '%s'", argv[optind - 1]);
    }
    if (!ok) return EXIT_USAGE;
  }
  if (optind < argc) return cli_usage_fail("unexpected argument '%s'", argv[optind]);
  if (!fx) return cli_usage_fail("--x is required");
  if (!Hq) return cli_usage_fail("--heads is required");
  if (!Hkv) Hkv = Hq;
  bool packed = fw[W_IN] != NULL;
  if (packed && (fw[W_WQ] || fw[W_WK] || fw[W_WV] || fw[W_BQ] || fw[W_BK] || fw[W_BV]))
    return cli_usage_fail("--in-proj replaces --wq/--wk/--wv and --bq/--bk/--bv; give one form");
  if (!packed && fw[W_INB]) return cli_usage_fail("--in-bias goes with --in-proj");
  if (!packed && !(fw[W_WQ] && fw[W_WK] && fw[W_WV]))
    return cli_usage_fail("give --wq, --wk and --wv, or --in-proj");
  if (!fw[W_WO]) return cli_usage_fail("--wo is required");
  bool bias;
  if (packed) {
    bias = fw[W_INB] || fw[W_BO];
    if (bias && !(fw[W_INB] && fw[W_BO]))
      return cli_usage_fail("biases are all or none: %s given without %s",
                        fw[W_INB] ? "--in-bias" : "--bo", fw[W_INB] ? "--bo" : "--in-bias");
  } else {
    int nb = !!fw[W_BQ] + !!fw[W_BK] + !!fw[W_BV] + !!fw[W_BO];
    bias = nb > 0;
    if (nb && nb != 4) {
      int miss = !fw[W_BQ] ? W_BQ : !fw[W_BK] ? W_BK : !fw[W_BV] ? W_BV : W_BO;
      return cli_usage_fail("biases are all or none: %s is missing", w_opt[miss]);
    }
  }

  int rc = EXIT_FAIL;
  mha_job j;
  memset(&j, 0, sizeof j);
  npy_array ax = {0}, akv = {0};
  float *out = NULL, *ref_out = NULL;
  attn_context *ctx = NULL, *ref = NULL;

  if (!load_npy("--x", fx, NPY_F32, 2, 3, &ax)) goto done;
  int xr = ax.ndim;
  j.B = xr == 3 ? ax.shape[0] : 1;
  j.Sq = ax.shape[xr - 2];
  j.E = ax.shape[xr - 1];
  j.x = ax.data;
  j.Skv = j.Sq;
  j.Ekv = j.E;
  if (fkvx) {
    if (!load_npy("--kv-x", fkvx, NPY_F32, 2, 3, &akv)) goto done;
    int64_t kb = akv.ndim == 3 ? akv.shape[0] : 1;
    if (akv.ndim != xr || kb != j.B) {
      char a[96], b[96];
      shape_fmt(a, sizeof a, ax.ndim, ax.shape);
      shape_fmt(b, sizeof b, akv.ndim, akv.shape);
      cli_errline("--kv-x: %s is %s but --x %s is %s: the batch must agree", fkvx, b, fx, a);
      goto done;
    }
    j.Skv = akv.shape[akv.ndim - 2];
    j.Ekv = akv.shape[akv.ndim - 1];
    j.kv_x = akv.data;
  }
  for (int i = 0; i < W_COUNT; i++) {
    bool is_bias = i == W_BQ || i == W_BK || i == W_BV || i == W_BO || i == W_INB;
    if (fw[i] && !load_npy(w_opt[i], fw[i], NPY_F32, is_bias ? 1 : 2, is_bias ? 1 : 2, &j.w[i]))
      goto done;
  }
  /* Infer the head dim from the query rows and check every shape against it,
   * naming the file, before the library sees them. */
  char why[160];
  int64_t D;
  if (packed) {
    int64_t rows = j.w[W_IN].shape[0], parts = Hq + 2 * Hkv;
    if (rows % parts) {
      cli_errline("--in-proj: %s has %" PRId64 " rows, not a multiple of Hq + 2*Hkv = %" PRId64
              " (--heads %" PRId64 ", --kv-heads %" PRId64 ")",
              fw[W_IN], rows, parts, Hq, Hkv);
      goto done;
    }
    D = rows / parts;
    snprintf(why, sizeof why, "E = %" PRId64 " from --x, D = %" PRId64, j.E, D);
    if (!want_shape(&j, W_IN, fw[W_IN], parts * D, j.E, why) ||
        (bias && !want_shape(&j, W_INB, fw[W_INB], parts * D, 0, why)))
      goto done;
  } else {
    int64_t rows = j.w[W_WQ].shape[0];
    if (rows % Hq) {
      cli_errline("--wq: %s has %" PRId64 " rows, not a multiple of --heads %" PRId64, fw[W_WQ], rows,
              Hq);
      goto done;
    }
    D = rows / Hq;
    snprintf(why, sizeof why, "E = %" PRId64 ", Ekv = %" PRId64 ", Hq = %" PRId64
             ", Hkv = %" PRId64 ", D = %" PRId64 " = rows(wq) / Hq", j.E, j.Ekv, Hq, Hkv, D);
    if (!want_shape(&j, W_WQ, fw[W_WQ], Hq * D, j.E, why) ||
        !want_shape(&j, W_WK, fw[W_WK], Hkv * D, j.Ekv, why) ||
        !want_shape(&j, W_WV, fw[W_WV], Hkv * D, j.Ekv, why) ||
        (bias && (!want_shape(&j, W_BQ, fw[W_BQ], Hq * D, 0, why) ||
                  !want_shape(&j, W_BK, fw[W_BK], Hkv * D, 0, why) ||
                  !want_shape(&j, W_BV, fw[W_BV], Hkv * D, 0, why))))
      goto done;
  }
  snprintf(why, sizeof why, "E = %" PRId64 ", Hq*D = %" PRId64, j.E, Hq * D);
  if (!want_shape(&j, W_WO, fw[W_WO], j.E, Hq * D, why) ||
      (bias && !want_shape(&j, W_BO, fw[W_BO], j.E, 0, why)))
    goto done;

  j.desc.struct_size = sizeof j.desc;
  j.desc.d_model = j.E;
  j.desc.d_kv = fkvx ? j.Ekv : 0;
  j.desc.n_heads = Hq;
  j.desc.n_kv_heads = Hkv;
  j.desc.head_dim = D;
  j.desc.bias = bias;
  j.desc.causal = causal;
  j.desc.max_batch = j.B;
  j.desc.max_seq = j.Sq;
  j.desc.max_kv_seq = fkvx ? j.Skv : 0;

  int64_t os[3] = {j.B, j.Sq, j.E};
  if (!(out = alloc_for(3, os, "out"))) goto done;
  attn_status s = attn_open(dev, &ctx);
  if (s != ATTN_OK) {
    cli_lib_fail(s, NULL);
    goto done;
  }
  double ms = 0;
  if (run_mha_on(ctx, &j, warmup, NULL, out, &ms)) goto done;

  print_device(ctx);
  char sx[96], skv[96] = "", so[96];
  shape_fmt(sx, sizeof sx, ax.ndim, ax.shape);
  if (fkvx) shape_fmt(skv, sizeof skv, akv.ndim, akv.shape);
  shape_fmt(so, sizeof so, ax.ndim, ax.shape);
  printf("x %s%s%s  -> out %s\n", sx, fkvx ? "  kv-x " : "", skv, so);
  printf("E %" PRId64 "  Ekv %" PRId64 "  heads %" PRId64 "  kv-heads %" PRId64 "  head dim %" PRId64
         "  %s weights%s  causal %s\n",
         j.E, j.Ekv, Hq, Hkv, D, packed ? "packed" : "separate", bias ? " with biases" : "",
         causal ? "yes" : "no");
  double flops = 2.0 * j.B * j.Sq * j.E * Hq * D * 2      /* q and out projections */
                 + 2.0 * j.B * j.Skv * j.Ekv * Hkv * D * 2 /* k and v projections */
                 + 4.0 * j.B * Hq * j.Sq * j.Skv * D / (causal && j.Sq == j.Skv ? 2 : 1);
  printf("time %.3f ms  %.2f GFLOP/s\n", ms, ms > 0 ? flops / (ms * 1e6) : 0.0);

  if (check) {
    if (!(ref_out = alloc_for(3, os, "out"))) goto done;
    if ((s = attn_open("ref", &ref)) != ATTN_OK) {
      cli_lib_fail(s, "--check");
      goto done;
    }
    double rms;
    if (run_mha_on(ref, &j, 0, "--check", ref_out, &rms)) goto done;
    if (!check_close("out", out, ref_out, (size_t)numel_of(3, os))) goto done;
  }
  out_file f = {out_path, ax.ndim, {0}, out};
  memcpy(f.shape, ax.shape, sizeof ax.shape);
  rc = write_outputs(&f, 1);
done:
  attn_close(ref);
  attn_close(ctx);
  free(out);
  free(ref_out);
  npy_free(&ax);
  npy_free(&akv);
  for (int i = 0; i < W_COUNT; i++) npy_free(&j.w[i]);
  return rc;
}

/* ---- main -------------------------------------------------------------------------- */

/* attn bench lives in tools/bench.c; it needs the device given before the command. */
static int cmd_bench(int argc, char **argv) { return bench_main(argc, argv, g_device); }
/* attn tune lives in tools/tune.c, likewise. */
static int cmd_tune(int argc, char **argv) { return tune_main(argc, argv, g_device); }

typedef struct command {
  const char *name;
  int (*run)(int argc, char **argv);
  void (*help)(FILE *f);
  const char *summary;
} command;

static const command commands[] = {
    {"devices", cmd_devices, help_devices, "list devices and the backend modules that failed"},
    {"run", cmd_run, help_run, "scaled dot-product attention on .npy or random inputs"},
    {"mha", cmd_mha, help_mha, "multi-head attention with projections from .npy weights"},
    {"bench", cmd_bench, bench_help, "benchmark devices against their measured peaks"},
    {"tune", cmd_tune, tune_help, "measure a device's tuning parameters and cache the fastest"},
};
#define N_COMMANDS (sizeof commands / sizeof commands[0])

/* "devices, run, mha, bench, tune": the table's names, for usage errors. */
static const char *command_names(void) {
  static char names[128];
  if (!names[0])
    for (size_t i = 0; i < N_COMMANDS; i++) {
      size_t n = strlen(names);
      snprintf(names + n, sizeof names - n, "%s%s", i ? ", " : "", commands[i].name);
    }
  return names;
}

static void help_main(FILE *f) {
  fprintf(f,
          "Usage: attn COMMAND [options]\n"
          "       attn [--device SEL] COMMAND [options]\n"
          "       attn --help | --version\n"
          "\n"
          "libattn %s: attention (SDPA and multi-head attention) on any device.\n"
          "\n"
          "Commands:\n",
          PACKAGE_VERSION);
  for (size_t i = 0; i < N_COMMANDS; i++)
    fprintf(f, "  %-9s %s\n", commands[i].name, commands[i].summary);
  fprintf(f,
          "\n"
          "'attn COMMAND --help' describes a command. Every command takes --device SEL,\n"
          "a selector 'backend[:device]' with ',' separated alternatives (e.g. \"pocl,ref\");\n"
          "the default is $ATTN_DEVICE, else \"%s\". Backend modules are found\n"
          "in $ATTN_BACKEND_PATH, then the installed module directory.\n"
          "Exit status: 0 success, 1 failure, 2 usage error.\n",
          ATTN_DEFAULT_SELECTOR);
}

int main(int argc, char **argv) {
  opterr = 0; /* we print our own one-line messages */
  /* "attn --device SEL COMMAND ..." sets the device for the command */
  while (argc >= 2 && (!strcmp(argv[1], "--device") || !strncmp(argv[1], "--device=", 9))) {
    if (argv[1][8] == '=') {
      g_device = argv[1] + 9;
      argc -= 1;
      argv += 1;
    } else if (argc >= 3) {
      g_device = argv[2];
      argc -= 2;
      argv += 2;
    } else {
      cli_errline("option '--device' needs an argument (see 'attn --help')");
      return EXIT_USAGE;
    }
  }
  if (argc < 2) {
    cli_errline("no command given (commands: %s; see 'attn --help')", command_names());
    return EXIT_USAGE;
  }
  const char *cmd = argv[1];
  if (!strcmp(cmd, "--help") || !strcmp(cmd, "-h") || !strcmp(cmd, "help")) {
    help_main(stdout);
    return 0;
  }
  if (!strcmp(cmd, "--version") || !strcmp(cmd, "-V")) {
    printf("attn %s (libattn %s)\n", PACKAGE_VERSION, attn_version());
    return 0;
  }
  for (size_t i = 0; i < N_COMMANDS; i++) {
    if (strcmp(cmd, commands[i].name) == 0) {
      cli_cmd = commands[i].name;
      int rc = commands[i].run(argc - 1, argv + 1);
      if (fflush(stdout) != 0 && rc == 0) {
        cli_errline("cannot write to standard output: %s", strerror(errno));
        rc = EXIT_FAIL;
      }
      return rc;
    }
  }
  if (cmd[0] == '-') cli_errline("unknown option '%s' (see 'attn --help')", cmd);
  else cli_errline("unknown command '%s' (commands: %s; see 'attn --help')", cmd, command_names());
  return EXIT_USAGE;
}
