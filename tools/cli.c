/* Helpers shared by the attn command's subcommands (see cli.h). */
#include "config.h"

#include "cli.h"

#include <errno.h>
#include <inttypes.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

const char *cli_cmd = NULL;

void cli_errline(const char *fmt, ...) {
  char msg[2048];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(msg, sizeof msg, fmt, ap);
  va_end(ap);
  fputs("attn: ", stderr);
  if (cli_cmd) fprintf(stderr, "%s: ", cli_cmd);
  for (const char *p = msg; *p; p++) {
    if (*p == '\n') {
      if (p[1]) fputs("; ", stderr);
    } else {
      fputc(*p, stderr);
    }
  }
  fputc('\n', stderr);
}

int cli_lib_fail(attn_status s, const char *where) {
  const char *m = attn_last_error();
  if (!m || !*m) m = attn_status_str(s);
  if (where && *where) cli_errline("%s: %s", where, m);
  else cli_errline("%s", m);
  return EXIT_FAIL;
}

int cli_usage_fail(const char *fmt, ...) {
  char msg[1024];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(msg, sizeof msg, fmt, ap);
  va_end(ap);
  if (cli_cmd) cli_errline("%s (see 'attn %s --help')", msg, cli_cmd);
  else cli_errline("%s (see 'attn --help')", msg);
  return EXIT_USAGE;
}

double cli_now_ms(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return ts.tv_sec * 1e3 + ts.tv_nsec / 1e6;
}

static uint64_t rng_next(uint64_t *s) {
  /* xorshift64* */
  uint64_t x = *s;
  x ^= x >> 12;
  x ^= x << 25;
  x ^= x >> 27;
  *s = x;
  return x * 2685821657736338717ULL;
}

float *cli_random_floats(int64_t n, uint64_t *state) {
  float *p = malloc((size_t)n * sizeof(float));
  if (!p) return NULL;
  for (int64_t i = 0; i < n; i++)
    p[i] = (float)((double)(rng_next(state) >> 11) / 9007199254740992.0 * 2.0 - 1.0);
  return p;
}

/* ---- options ---------------------------------------------------------------- */

bool cli_parse_int(const char *opt, const char *s, int64_t min, int64_t max, int64_t *out) {
  char *end;
  errno = 0;
  long long v = strtoll(s, &end, 10);
  if (errno || end == s || *end || v < min || v > max) {
    if (max == INT64_MAX)
      cli_usage_fail("%s: '%s' is not an integer >= %" PRId64, opt, s, min);
    else
      cli_usage_fail("%s: '%s' is not an integer in [%" PRId64 ", %" PRId64 "]", opt, s, min,
                     max);
    return false;
  }
  *out = v;
  return true;
}

bool cli_parse_float(const char *opt, const char *s, float *out) {
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

/* ---- shapes, statistics, rates ---------------------------------------------------- */

int64_t cli_numel(int n, const int64_t *shape) {
  uint64_t c = 1;
  for (int i = 0; i < n; i++) {
    if (shape[i] < 1 || (uint64_t)shape[i] > (SIZE_MAX / sizeof(float)) / c ||
        (uint64_t)shape[i] > (uint64_t)INT64_MAX / c)
      return -1;
    c *= (uint64_t)shape[i];
  }
  return (int64_t)c;
}

void cli_dims_fmt(char *buf, size_t cap, int n, const int64_t *s) {
  size_t k = 0;
  buf[0] = '\0';
  for (int i = 0; i < n && k < cap; i++) {
    int w = snprintf(buf + k, cap - k, "%s%" PRId64, i ? ", " : "[", s[i]);
    if (w < 0) return;
    k += (size_t)w;
  }
  if (k < cap) snprintf(buf + k, cap - k, "]");
}

static int cmp_double(const void *a, const void *b) {
  double x = *(const double *)a, y = *(const double *)b;
  return (x > y) - (x < y);
}

double cli_median(double *v, int n) {
  qsort(v, (size_t)n, sizeof *v, cmp_double);
  return n % 2 ? v[n / 2] : (v[n / 2 - 1] + v[n / 2]) / 2;
}

double cli_sdpa_flops(int64_t B, int64_t Hq, int64_t Sq, int64_t Skv, int64_t D, bool causal) {
  double f = 4.0 * B * Hq * Sq * Skv * D;
  return causal && Sq == Skv ? f / 2 : f;
}

double cli_proj_flops(int64_t B, int64_t Sq, int64_t Skv, int64_t E, int64_t Ekv, int64_t Hq,
                      int64_t Hkv, int64_t D) {
  return 2.0 * B * Sq * E * Hq * D * 2 + 2.0 * B * Skv * Ekv * Hkv * D * 2;
}

/* ---- data ------------------------------------------------------------------------- */

float *cli_alloc_floats(int n, const int64_t *shape, const char *what) {
  int64_t c = cli_numel(n, shape);
  char sh[96];
  cli_dims_fmt(sh, sizeof sh, n, shape);
  float *p = c > 0 ? malloc((size_t)c * sizeof(float)) : NULL;
  if (!p) cli_errline("%s %s: too large for host memory", what, sh);
  return p;
}

bool cli_fits_host(attn_context *ctx, uint64_t host_bytes, uint64_t device_bytes,
                   const char *what) {
  attn_device_info info;
  if (attn_context_info(ctx, &info) != ATTN_OK) return true;
  long pages = sysconf(_SC_PHYS_PAGES), page = sysconf(_SC_PAGESIZE);
  if (pages <= 0 || page <= 0) return true; /* unknown: nothing to compare with */
  const uint64_t phys = (uint64_t)pages * (uint64_t)page;
  const bool shared = info.type == ATTN_DEVICE_CPU;
  const uint64_t need = host_bytes + (shared ? device_bytes : 0);
  if (need <= phys && host_bytes <= phys) return true;
  if (shared)
    cli_errline("%s needs %" PRIu64 " bytes of host memory (%" PRIu64 " for its host copies, %"
                PRIu64 " for the tensors on %s, a CPU device), more than the host's %" PRIu64
                " bytes of physical memory",
                what, need, host_bytes, device_bytes, info.selector, phys);
  else
    cli_errline("%s needs %" PRIu64 " bytes of host memory for its host copies, more than the "
                "host's %" PRIu64 " bytes of physical memory",
                what, host_bytes, phys);
  return false;
}

bool cli_load_npy(const char *opt, const char *path, unsigned dtypes, int min_rank, int max_rank,
                  npy_array *a) {
  npy_want w = {dtypes, min_rank, max_rank};
  char err[NPY_ERR_MAX];
  if (npy_read_file(path, &w, a, err, sizeof err) != ATTN_OK) {
    cli_errline("%s: %s", opt, err);
    return false;
  }
  return true;
}

void cli_print_device(attn_context *ctx) {
  attn_device_info info;
  if (attn_context_info(ctx, &info) == ATTN_OK)
    printf("device: %s (backend %s, %s, %s)\n", info.selector, info.backend,
           attn_device_type_str(info.type), info.name);
}

/* ---- element types ----------------------------------------------------------------- */

/* The directory part of path ("." for none) into dir, and its last
 * component. */
static const char *split_path(const char *path, char *dir, size_t cap) {
  const char *slash = strrchr(path, '/');
  if (!slash) {
    snprintf(dir, cap, ".");
    return path;
  }
  size_t n = (size_t)(slash - path);
  if (n == 0) n = 1; /* "/x": the root */
  snprintf(dir, cap, "%.*s", (int)(n < cap ? n : cap - 1), path);
  return slash + 1;
}

bool cli_same_output(const char *a, const char *b) {
  if (strcmp(a, b) == 0) return true;
  char da[4096], db[4096];
  const char *ba = split_path(a, da, sizeof da), *bb = split_path(b, db, sizeof db);
  if (strcmp(ba, bb) != 0) return false;
  struct stat sa, sb;
  if (stat(da, &sa) != 0 || stat(db, &sb) != 0) return false;
  return sa.st_dev == sb.st_dev && sa.st_ino == sb.st_ino;
}

bool cli_parse_dtype(const char *opt, const char *s, attn_dtype *t) {
  if (attn_dtype_parse(s, t) == ATTN_OK) return true;
  cli_usage_fail("%s: '%s' is not f32, f16 or bf16", opt, s);
  return false;
}

npy_dtype cli_npy_dtype(attn_dtype t) {
  return t == ATTN_F16 ? NPY_F16 : t == ATTN_BF16 ? NPY_BF16 : NPY_F32;
}

attn_dtype cli_attn_dtype(npy_dtype t) {
  return t == NPY_F16 ? ATTN_F16 : t == NPY_BF16 ? ATTN_BF16 : ATTN_F32;
}

/* Exact widening of the 16-bit types (every f16 and bf16 value is a float). */
static float bits_f32(uint32_t u) {
  float f;
  memcpy(&f, &u, 4);
  return f;
}

static float f16_to_f32(uint16_t h) {
  uint32_t sign = (uint32_t)(h & 0x8000u) << 16, e = (h >> 10) & 0x1fu, m = h & 0x3ffu;
  if (e == 0x1f) return bits_f32(sign | 0x7f800000u | (m << 13)); /* inf, NaN (payload kept) */
  if (e == 0) {
    float f = ldexpf((float)m, -24); /* zero or subnormal: m * 2^-24 */
    return sign ? -f : f;
  }
  return bits_f32(sign | ((e + 112u) << 23) | (m << 13));
}

float *cli_to_floats(attn_dtype t, const void *data, size_t n, const char *what) {
  float *f = malloc((n ? n : 1) * sizeof *f);
  if (!f) {
    if (what) cli_errline("%s: out of host memory for %zu floats", what, n);
    return NULL;
  }
  if (t == ATTN_F32) {
    memcpy(f, data, n * sizeof *f);
  } else {
    const uint16_t *h = data;
    for (size_t i = 0; i < n; i++)
      f[i] = t == ATTN_F16 ? f16_to_f32(h[i]) : bits_f32((uint32_t)h[i] << 16);
  }
  return f;
}

attn_status cli_upload_input(attn_context *ctx, const cli_input *in, attn_tensor **t) {
  *t = NULL;
  attn_status s = attn_tensor_create_typed(ctx, in->dtype, in->ndim, in->shape, t);
  if (s != ATTN_OK) return s;
  size_t n = (size_t)attn_tensor_numel(*t);
  if (in->src == in->dtype) {
    s = attn_tensor_write_raw(*t, in->data, n);
  } else if (in->src == ATTN_F32) {
    s = attn_tensor_write(*t, in->data, n);
  } else {
    float *f = cli_to_floats(in->src, in->data, n, NULL);
    s = f ? attn_tensor_write(*t, f, n) : ATTN_ERR_NOMEM;
    free(f);
  }
  if (s != ATTN_OK) {
    attn_tensor_free(*t);
    *t = NULL;
  }
  return s;
}

attn_status cli_read_back(const attn_tensor *t, cli_input *in) {
  memset(in, 0, sizeof *in);
  in->src = in->dtype = attn_tensor_dtype(t);
  in->ndim = attn_tensor_ndim(t);
  attn_tensor_shape(t, in->shape, NULL);
  size_t n = (size_t)attn_tensor_numel(t);
  void *p = malloc((n ? n : 1) * attn_dtype_size(in->dtype));
  if (!p) return ATTN_ERR_NOMEM;
  attn_status s = attn_tensor_read_raw(t, p, n);
  if (s != ATTN_OK) {
    free(p);
    return s;
  }
  in->data = p;
  return ATTN_OK;
}

/* ---- --check and outputs ---------------------------------------------------------- */

double cli_dtype_rtol(attn_dtype t) {
  return t == ATTN_BF16 ? 0x1p-7 : t == ATTN_F16 ? 0x1p-10 : 0;
}

bool cli_check_close(const char *what, const float *got, const float *ref, size_t n,
                     double extra_rtol) {
  double max_abs = 0, max_ref = 0;
  for (size_t i = 0; i < n; i++) {
    double g = got[i], r = ref[i], e;
    if (isfinite(r) && fabs(r) > max_ref) max_ref = fabs(r);
    if (isnan(g) || isnan(r)) e = isnan(g) && isnan(r) ? 0 : INFINITY;
    else if (isinf(g) || isinf(r)) e = g == r ? 0 : INFINITY;
    else e = fabs(g - r);
    if (e > max_abs) max_abs = e;
  }
  double tol = CLI_CHECK_ATOL + (CLI_CHECK_RTOL + extra_rtol) * max_ref;
  double rel = max_ref > 0 ? max_abs / max_ref : max_abs;
  bool ok = max_abs <= tol;
  printf("check %-8s vs ref: max abs err %.3g, max rel err %.3g (tolerance %.3g): %s\n", what,
         max_abs, rel, tol, ok ? "ok" : "FAILED");
  if (!ok)
    cli_errline("--check: %s differs from the ref backend: max abs err %.3g > tolerance %.3g", what,
                max_abs, tol);
  return ok;
}

int cli_write_outputs(const cli_out_file *f, int n) {
  npy_pending p[4] = {{0}};
  char err[NPY_ERR_MAX];
  if (n > 4) n = 4;
  for (int i = 0; i < n; i++) {
    if (!f[i].path) continue;
    if (npy_write_prepare_typed(f[i].path, f[i].dtype, f[i].ndim, f[i].shape, f[i].data, &p[i],
                                err, sizeof err) != ATTN_OK) {
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
