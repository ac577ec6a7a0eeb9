/* The attn command from the outside: runs the built binary ($ATTN_ATTN_BIN)
 * with posix_spawn on the ref backend, checks exit codes (0 ok, 1 failure,
 * 2 usage), the one-line errors, that a failed run leaves no output file, and
 * the numbers it writes against an independent double-precision computation
 * of the contract written here. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <float.h>
#include <math.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <dirent.h>
#include <fcntl.h>
#include <signal.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "npy.h"
#include "spawn.h"
#include "testutil.h"

static const char *bin;
static char dir[256];

/* ---- running the CLI ------------------------------------------------------------ */

#define RUN(r, ...) SPAWN_RUN((r), bin, dir, __VA_ARGS__)

/* A failure prints exactly one line, "attn: ...", containing substr. */
static void expect_error_line(const spawn_result *r, const char *substr) {
  spawn_expect_error_line(r, "attn: ", substr);
}

static void path_in(char *buf, size_t cap, const char *name) {
  snprintf(buf, cap, "%s/%s", dir, name);
}

static bool exists(const char *path) {
  struct stat st;
  return stat(path, &st) == 0;
}

/* ---- writing inputs -------------------------------------------------------------- */

static void save_f32(const char *name, int ndim, const int64_t *shape, const float *data,
                     char *path, size_t cap) {
  char err[NPY_ERR_MAX];
  path_in(path, cap, name);
  attn_status s = npy_write_f32(path, ndim, shape, data, err, sizeof err);
  if (s != ATTN_OK) print_error("%s\n", err);
  assert_int_equal(s, ATTN_OK);
}

/* bool and int32 files, written here by hand as numpy would (our writer does
 * float32 only): this also feeds the reader files it did not write. */
static void save_raw(const char *name, const char *descr, int ndim, const int64_t *shape,
                     const void *data, size_t itemsize, char *path, size_t cap) {
  char dict[200], sh[100] = "(";
  size_t count = 1;
  for (int i = 0; i < ndim; i++) {
    size_t l = strlen(sh);
    snprintf(sh + l, sizeof sh - l, "%lld%s", (long long)shape[i],
             ndim == 1 ? ",)" : i + 1 < ndim ? ", " : ")");
    count *= (size_t)shape[i];
  }
  int dl = snprintf(dict, sizeof dict, "{'descr': '%s', 'fortran_order': False, 'shape': %s, }",
                    descr, sh);
  size_t hlen = (size_t)dl + 1;
  hlen += (64 - (10 + hlen) % 64) % 64;
  path_in(path, cap, name);
  FILE *f = fopen(path, "wb");
  assert_non_null(f);
  unsigned char pre[10] = {0x93, 'N', 'U', 'M', 'P', 'Y', 1, 0, (unsigned char)(hlen & 0xff),
                           (unsigned char)(hlen >> 8)};
  fwrite(pre, 1, 10, f);
  fwrite(dict, 1, (size_t)dl, f);
  for (size_t i = (size_t)dl; i + 1 < hlen; i++) fputc(' ', f);
  fputc('\n', f);
  fwrite(data, itemsize, count, f); /* little-endian host assumed, as on every CI machine */
  assert_int_equal(fclose(f), 0);
}

static float *load_f32(const char *path, int ndim, const int64_t *shape) {
  npy_want w = {NPY_F32, ndim, ndim};
  npy_array a;
  char err[NPY_ERR_MAX];
  attn_status s = npy_read_file(path, &w, &a, err, sizeof err);
  if (s != ATTN_OK) print_error("%s\n", err);
  assert_int_equal(s, ATTN_OK);
  for (int i = 0; i < ndim; i++) assert_int_equal(a.shape[i], shape[i]);
  return a.data;
}

static uint64_t rng = 88172645463325252ULL;
static float frand(void) {
  rng ^= rng << 13;
  rng ^= rng >> 7;
  rng ^= rng << 17;
  return (float)((double)(rng >> 11) / 9007199254740992.0 * 2.0 - 1.0);
}
static float *rand_array(size_t n) {
  float *p = malloc(n * sizeof *p);
  assert_non_null(p);
  for (size_t i = 0; i < n; i++) p[i] = frand();
  return p;
}

/* |got - want| <= 1e-6 + 2e-5 * max|want|, equal infinities equal. */
static void expect_close(const char *what, const float *got, const double *want, size_t n) {
  double mx = 0;
  for (size_t i = 0; i < n; i++)
    if (isfinite(want[i]) && fabs(want[i]) > mx) mx = fabs(want[i]);
  double tol = 1e-6 + 2e-5 * mx;
  for (size_t i = 0; i < n; i++) {
    bool ok = isinf(want[i]) ? got[i] == want[i] : fabs(got[i] - want[i]) <= tol;
    if (!ok) {
      print_error("%s[%zu] = %.9g, want %.9g (tolerance %.3g)\n", what, i, got[i], want[i], tol);
      fail();
    }
  }
}


/* ---- 16-bit types, independently of the library -------------------------------------- */

/* Round to nearest even to p significant bits, with no bit below 2^lsb_min
 * (the subnormals); the values here never overflow. */
static float round_sig(float x, int p, int lsb_min) {
  if (x == 0 || !isfinite(x)) return x;
  int e;
  frexp(x, &e); /* |x| in [2^(e-1), 2^e) */
  int lsb = e - p < lsb_min ? lsb_min : e - p;
  return (float)ldexp(nearbyint(ldexp(x, -lsb)), lsb);
}
static float to_bf16(float x) { return round_sig(x, 8, -133); }
static float to_f16(float x) { return round_sig(x, 11, -24); }

/* Bit patterns of values that are exact in the type. */
static uint16_t bf16_bits(float r) {
  uint32_t u;
  memcpy(&u, &r, 4);
  assert_int_equal(u & 0xffff, 0);
  return (uint16_t)(u >> 16);
}
static uint16_t f16_bits(float r) {
  uint16_t sign = signbit(r) ? 0x8000 : 0;
  double a = fabs(r);
  if (a == 0) return sign;
  if (a < ldexp(1, -14)) return (uint16_t)(sign | (uint16_t)(a * ldexp(1, 24)));
  int e;
  double f = frexp(a, &e); /* a = 2f * 2^(e-1), 2f in [1, 2) */
  return (uint16_t)(sign | (uint16_t)((e - 1 + 15) << 10) | (uint16_t)((2 * f - 1) * 1024));
}
static float bf16_val(uint16_t h) {
  uint32_t u = (uint32_t)h << 16;
  float f;
  memcpy(&f, &u, 4);
  return f;
}
static float f16_val(uint16_t h) {
  int e = (h >> 10) & 0x1f, m = h & 0x3ff;
  assert_true(e != 0x1f); /* no inf or NaN in these tests */
  double a = e ? ldexp(1024 + m, e - 25) : ldexp(m, -24);
  return (float)(h & 0x8000 ? -a : a);
}

/* n values rounded to a type, in place: every q, k, v of a test goes through here */
static void round_all(float *x, size_t n, float (*rnd)(float)) {
  for (size_t i = 0; i < n; i++) x[i] = rnd(x[i]);
}

/* A float16 or bfloat16 .npy file of values exact in that type, through the
 * project's writer. */
static void save_half(const char *name, npy_dtype t, int ndim, const int64_t *shape,
                      const float *vals, char *path, size_t cap) {
  size_t n = 1;
  for (int i = 0; i < ndim; i++) n *= (size_t)shape[i];
  uint16_t *h = malloc(n * sizeof *h);
  assert_non_null(h);
  for (size_t i = 0; i < n; i++) {
    h[i] = t == NPY_F16 ? f16_bits(vals[i]) : bf16_bits(vals[i]);
    assert_true((t == NPY_F16 ? f16_val(h[i]) : bf16_val(h[i])) == vals[i]);
  }
  char err[NPY_ERR_MAX];
  path_in(path, cap, name);
  attn_status s = npy_write_typed(path, t, ndim, shape, h, err, sizeof err);
  if (s != ATTN_OK) print_error("%s\n", err);
  assert_int_equal(s, ATTN_OK);
  free(h);
}

/* A file's descr, as written in its header. */
static void expect_descr(const char *path, const char *descr) {
  char head[129] = "", want[32];
  FILE *f = fopen(path, "rb");
  assert_non_null(f);
  size_t n = fread(head, 1, 128, f);
  fclose(f);
  head[n] = '\0';
  snprintf(want, sizeof want, "'descr': '%s'", descr);
  if (!strstr(head + 10, want)) {
    print_error("%s: header %s does not have %s\n", path, head + 10, want);
    fail();
  }
}

/* A 16-bit output file, checked to be of type t ('<f2' or '<V2' in its
 * header), as floats. */
static float *load_half(const char *path, npy_dtype t, int ndim, const int64_t *shape) {
  expect_descr(path, t == NPY_F16 ? "<f2" : "<V2");
  npy_want w = {t, ndim, ndim};
  npy_array a;
  char err[NPY_ERR_MAX];
  attn_status s = npy_read_file(path, &w, &a, err, sizeof err);
  if (s != ATTN_OK) print_error("%s\n", err);
  assert_int_equal(s, ATTN_OK);
  for (int i = 0; i < ndim; i++) assert_int_equal(a.shape[i], shape[i]);
  float *f = malloc(a.count * sizeof *f);
  assert_non_null(f);
  const uint16_t *h = a.data;
  for (size_t i = 0; i < a.count; i++) f[i] = t == NPY_F16 ? f16_val(h[i]) : bf16_val(h[i]);
  npy_free(&a);
  return f;
}

/* As expect_close, allowing also the rounding of a 16-bit output: u * |want|
 * (u = 2^-8 for bf16, 2^-11 for f16: half a unit in the last place). */
static void expect_close_u(const char *what, const float *got, const double *want, size_t n,
                           double u) {
  double mx = 0;
  for (size_t i = 0; i < n; i++)
    if (isfinite(want[i]) && fabs(want[i]) > mx) mx = fabs(want[i]);
  for (size_t i = 0; i < n; i++) {
    double tol = 1e-6 + 2e-5 * mx + u * fabs(want[i]);
    if (!(fabs(got[i] - want[i]) <= tol)) {
      print_error("%s[%zu] = %.9g, want %.9g (tolerance %.3g)\n", what, i, got[i], want[i], tol);
      fail();
    }
  }
}

/* ---- the contract, in double ----------------------------------------------------- */

typedef struct prob {
  int B, Hq, Hkv, Sq, Skv, D, Dv;
  const float *q, *k, *v;
  const float *mask; /* [mb, mh, Sq, Skv] as float; bool as 0/1 */
  int mb, mh;
  bool mask_bool, causal;
  double scale;
  const int32_t *lens;
} prob;

static void sdpa_ref(const prob *p, double *out, double *w, double *lse) {
  double *s = malloc(sizeof(double) * (size_t)p->Skv);
  assert_non_null(s);
  for (int b = 0; b < p->B; b++)
    for (int h = 0; h < p->Hq; h++) {
      int hk = h / (p->Hq / p->Hkv);
      for (int i = 0; i < p->Sq; i++) {
        double mx = -INFINITY;
        for (int j = 0; j < p->Skv; j++) {
          const float *qi = p->q + (((size_t)b * p->Hq + h) * p->Sq + i) * p->D;
          const float *kj = p->k + (((size_t)b * p->Hkv + hk) * p->Skv + j) * p->D;
          double dot = 0;
          for (int d = 0; d < p->D; d++) dot += (double)qi[d] * kj[d];
          double x = p->scale * dot;
          bool vis = true;
          if (p->mask) {
            size_t mi = (((size_t)(p->mb > 1 ? b : 0) * p->mh + (p->mh > 1 ? h : 0)) * p->Sq + i) *
                            p->Skv + j;
            if (p->mask_bool) vis = p->mask[mi] != 0;
            else x += p->mask[mi];
          }
          if (p->causal && j > i + p->Skv - p->Sq) vis = false;
          if (p->lens && j >= p->lens[b]) vis = false;
          s[j] = vis ? x : -INFINITY;
          if (s[j] > mx) mx = s[j];
        }
        size_t row = ((size_t)b * p->Hq + h) * p->Sq + i;
        double z = 0;
        for (int j = 0; j < p->Skv; j++) z += mx == -INFINITY ? 0 : exp(s[j] - mx);
        for (int dv = 0; dv < p->Dv; dv++) out[row * p->Dv + dv] = 0;
        for (int j = 0; j < p->Skv; j++) {
          double pj = z > 0 ? exp(s[j] - mx) / z : 0;
          if (w) w[row * p->Skv + j] = pj;
          const float *vj = p->v + (((size_t)b * p->Hkv + hk) * p->Skv + j) * p->Dv;
          for (int dv = 0; dv < p->Dv; dv++) out[row * p->Dv + dv] += pj * vj[dv];
        }
        if (lse) lse[row] = z > 0 ? mx + log(z) : -INFINITY;
      }
    }
  free(s);
}

/* ---- tests ---------------------------------------------------------------------------- */

static void test_help_version(void **state) {
  (void)state;
  spawn_result r;
  RUN(&r, "--help");
  spawn_expect_status(&r, 0);
  assert_non_null(strstr(r.out, "Usage: attn"));
  assert_non_null(strstr(r.out, "devices"));
  assert_non_null(strstr(r.out, "mha"));
  RUN(&r, "--version");
  spawn_expect_status(&r, 0);
  assert_non_null(strstr(r.out, "0.4.0"));
  RUN(&r, "run", "--help");
  spawn_expect_status(&r, 0);
  assert_non_null(strstr(r.out, "--kv-lens"));
  assert_non_null(strstr(r.out, "GFLOP/s"));
  RUN(&r, "mha", "--help");
  spawn_expect_status(&r, 0);
  assert_non_null(strstr(r.out, "--in-proj"));
  RUN(&r, "devices", "--help");
  spawn_expect_status(&r, 0);
  assert_non_null(strstr(r.out, "failed"));
}

static void test_usage_errors(void **state) {
  (void)state;
  spawn_result r;
  RUN(&r, "bogus");
  spawn_expect_status(&r, 2);
  expect_error_line(&r, "unknown command 'bogus'");
  RUN(&r, "--frobnicate");
  spawn_expect_status(&r, 2);
  expect_error_line(&r, "unknown option");
  RUN(&r, "run", "--frobnicate");
  spawn_expect_status(&r, 2);
  expect_error_line(&r, "unknown option '--frobnicate'");
  RUN(&r, "run", "--seq", "abc");
  spawn_expect_status(&r, 2);
  expect_error_line(&r, "--seq: 'abc'");
  RUN(&r, "run", "--seq", "0");
  spawn_expect_status(&r, 2);
  expect_error_line(&r, "--seq");
  RUN(&r, "run", "--scale", "inf");
  spawn_expect_status(&r, 2);
  expect_error_line(&r, "--scale");
  RUN(&r, "run", "--repeat", "0");
  spawn_expect_status(&r, 2);
  expect_error_line(&r, "--repeat: '0'");
  RUN(&r, "run", "--repeat", "1001");
  spawn_expect_status(&r, 2);
  expect_error_line(&r, "--repeat: '1001'");
  RUN(&r, "run", "--seq");
  spawn_expect_status(&r, 2);
  expect_error_line(&r, "needs an argument");
  RUN(&r, "run", "--q", "a.npy");
  spawn_expect_status(&r, 2);
  expect_error_line(&r, "missing --k");
  RUN(&r, "run", "--q", "a", "--k", "b", "--v", "c", "--seq", "4");
  spawn_expect_status(&r, 2);
  expect_error_line(&r, "--seq");
  RUN(&r, "run", "stray");
  spawn_expect_status(&r, 2);
  expect_error_line(&r, "unexpected argument 'stray'");
  RUN(&r, "mha", "--heads", "2");
  spawn_expect_status(&r, 2);
  expect_error_line(&r, "--x is required");
  RUN(&r, "mha", "--x", "x", "--heads", "2", "--in-proj", "p", "--wq", "q", "--wo", "o");
  spawn_expect_status(&r, 2);
  expect_error_line(&r, "one form");
  RUN(&r, "mha", "--x", "x", "--heads", "2", "--wq", "q", "--wk", "k", "--wv", "v", "--wo", "o",
      "--bq", "b");
  spawn_expect_status(&r, 2);
  expect_error_line(&r, "all or none");
  /* No command at all */
  const char *const none[] = {NULL};
  spawn_run(&r, bin, dir, none);
  spawn_expect_status(&r, 2);
  expect_error_line(&r, "no command");
}

static void test_devices(void **state) {
  (void)state;
  spawn_result r;
  RUN(&r, "devices");
  spawn_expect_status(&r, 0);
  /* a line for ref: selector first, then the backend */
  bool found = false;
  for (const char *l = r.out; l && *l; l = strchr(l, '\n') ? strchr(l, '\n') + 1 : NULL)
    if (strncmp(l, "ref", 3) == 0 && strstr(l, " ref ")) found = true;
  if (!found) print_error("no ref line in:\n%s\n", r.out);
  assert_true(found);
  RUN(&r, "devices", "--device", "ref");
  spawn_expect_status(&r, 0);
  assert_non_null(strstr(r.out, "selected by 'ref'"));
  /* --device before the command applies to it */
  RUN(&r, "--device", "ref", "run", "--seq", "3", "--heads", "1", "--dim", "4");
  spawn_expect_status(&r, 0);
  assert_non_null(strstr(r.out, "device: ref"));
  /* --repeat N: the median of N timed runs, with their min */
  RUN(&r, "--device", "ref", "run", "--seq", "3", "--heads", "1", "--dim", "4", "--repeat", "3");
  spawn_expect_status(&r, 0);
  assert_non_null(strstr(r.out, "(median of 3 runs, min "));
  double med = -1, mn = -1;
  const char *tl = strstr(r.out, "time ");
  assert_non_null(tl);
  assert_int_equal(sscanf(tl, "time %lf ms", &med), 1);
  assert_int_equal(sscanf(strstr(tl, ", min ") + 6, "%lf ms", &mn), 1);
  assert_true(mn >= 0 && mn <= med);
  RUN(&r, "--device", "nosuchbackend", "run", "--seq", "3");
  spawn_expect_status(&r, 1);
  expect_error_line(&r, "nosuchbackend");
  RUN(&r, "devices", "--device", "nosuchbackend");
  spawn_expect_status(&r, 1);
  expect_error_line(&r, "nosuchbackend");
}

static void test_run_random(void **state) {
  (void)state;
  spawn_result r;
  char out[320];
  path_in(out, sizeof out, "rand_out.npy");
  RUN(&r, "run", "--batch", "2", "--heads", "4", "--kv-heads", "2", "--seq", "9", "--kv-seq", "13",
      "--dim", "8", "--vdim", "5", "--seed", "7", "--causal", "--check", "--out", out);
  spawn_expect_status(&r, 0);
  assert_non_null(strstr(r.out, "device: ref"));
  assert_non_null(strstr(r.out, "GFLOP/s"));
  assert_non_null(strstr(r.out, "[2, 4, 9, 8]"));
  assert_non_null(strstr(r.out, "check out"));
  assert_non_null(strstr(r.out, ": ok"));
  const int64_t os[4] = {2, 4, 9, 5};
  float *o = load_f32(out, 4, os);
  for (int i = 0; i < 2 * 4 * 9 * 5; i++) assert_true(isfinite(o[i]));
  /* the same seed gives the same numbers */
  char out2[320];
  path_in(out2, sizeof out2, "rand_out2.npy");
  RUN(&r, "run", "--batch", "2", "--heads", "4", "--kv-heads", "2", "--seq", "9", "--kv-seq", "13",
      "--dim", "8", "--vdim", "5", "--seed", "7", "--causal", "--out", out2, "--warmup", "0");
  spawn_expect_status(&r, 0);
  float *o2 = load_f32(out2, 4, os);
  assert_memory_equal(o, o2, sizeof(float) * 2 * 4 * 9 * 5);
  free(o);
  free(o2);
}

/* .npy inputs with a bool mask, causal, kv lengths (one of them 0: empty rows)
 * and every output, against sdpa_ref. */
static void test_run_files_bool_mask(void **state) {
  (void)state;
  enum { B = 2, HQ = 4, HKV = 2, SQ = 5, SKV = 7, D = 8, DV = 6 };
  const int64_t qs[4] = {B, HQ, SQ, D}, ks[4] = {B, HKV, SKV, D}, vs[4] = {B, HKV, SKV, DV};
  const int64_t ms[4] = {B, 1, SQ, SKV}, ls[1] = {B};
  float *q = rand_array(B * HQ * SQ * D), *k = rand_array(B * HKV * SKV * D),
        *v = rand_array(B * HKV * SKV * DV);
  uint8_t mask[B * SQ * SKV];
  float maskf[B * SQ * SKV];
  for (int i = 0; i < B * SQ * SKV; i++) {
    mask[i] = (i % 5) != 2;
    maskf[i] = mask[i];
  }
  int32_t lens[B] = {6, 0};
  char pq[320], pk[320], pv[320], pm[320], pl[320], po[320], pw[320], pe[320];
  save_f32("q.npy", 4, qs, q, pq, sizeof pq);
  save_f32("k.npy", 4, ks, k, pk, sizeof pk);
  save_f32("v.npy", 4, vs, v, pv, sizeof pv);
  save_raw("mask.npy", "|b1", 4, ms, mask, 1, pm, sizeof pm);
  save_raw("lens.npy", "<i4", 1, ls, lens, 4, pl, sizeof pl);
  path_in(po, sizeof po, "o.npy");
  path_in(pw, sizeof pw, "w.npy");
  path_in(pe, sizeof pe, "lse.npy");
  spawn_result r;
  RUN(&r, "run", "--q", pq, "--k", pk, "--v", pv, "--mask", pm, "--kv-lens", pl, "--causal",
      "--out", po, "--weights-out", pw, "--lse-out", pe, "--check");
  spawn_expect_status(&r, 0);
  assert_non_null(strstr(r.out, "mask bool [2, 1, 5, 7]"));

  prob p = {B, HQ, HKV, SQ, SKV, D, DV, q, k, v, maskf, B, 1, true, true, 1 / sqrt(D), lens};
  double out[B * HQ * SQ * DV], w[B * HQ * SQ * SKV], lse[B * HQ * SQ];
  sdpa_ref(&p, out, w, lse);
  const int64_t os[4] = {B, HQ, SQ, DV}, wsh[4] = {B, HQ, SQ, SKV}, lsh[3] = {B, HQ, SQ};
  float *go = load_f32(po, 4, os), *gw = load_f32(pw, 4, wsh), *gl = load_f32(pe, 3, lsh);
  expect_close("out", go, out, B * HQ * SQ * DV);
  expect_close("weights", gw, w, B * HQ * SQ * SKV);
  expect_close("lse", gl, lse, B * HQ * SQ);
  assert_true(isinf(gl[HQ * SQ]) && gl[HQ * SQ] < 0); /* batch 1 has no keys */
  free(go);
  free(gw);
  free(gl);
  free(q);
  free(k);
  free(v);
}

/* An additive float mask given as [Sq, Skv] (leading 1s left out), -inf
 * entries, an explicit scale, Sq > Skv with causal. */
static void test_run_files_additive_mask(void **state) {
  (void)state;
  enum { B = 1, HQ = 3, SQ = 6, SKV = 4, D = 5 };
  const int64_t qs[4] = {B, HQ, SQ, D}, ks[4] = {B, HQ, SKV, D}, ms[2] = {SQ, SKV};
  float *q = rand_array(B * HQ * SQ * D), *k = rand_array(B * HQ * SKV * D),
        *v = rand_array(B * HQ * SKV * D), *m = rand_array(SQ * SKV);
  m[1] = -INFINITY;
  m[SKV + 0] = -INFINITY;
  char pq[320], pk[320], pv[320], pm[320], po[320];
  save_f32("aq.npy", 4, qs, q, pq, sizeof pq);
  save_f32("ak.npy", 4, ks, k, pk, sizeof pk);
  save_f32("av.npy", 4, ks, v, pv, sizeof pv);
  save_f32("am.npy", 2, ms, m, pm, sizeof pm);
  path_in(po, sizeof po, "ao.npy");
  spawn_result r;
  RUN(&r, "run", "--q", pq, "--k", pk, "--v", pv, "--mask", pm, "--scale", "0.75", "--causal",
      "--out", po);
  spawn_expect_status(&r, 0);
  prob p = {B, HQ, HQ, SQ, SKV, D, D, q, k, v, m, 1, 1, false, true, 0.75, NULL};
  double out[B * HQ * SQ * D];
  sdpa_ref(&p, out, NULL, NULL);
  float *go = load_f32(po, 4, qs);
  expect_close("out", go, out, B * HQ * SQ * D);
  /* rows 0 and 1 see no key under causal (Sq - Skv = 2): zeros */
  for (int i = 0; i < 2 * D; i++) assert_true(go[i] == 0.0f);
  free(go);
  free(q);
  free(k);
  free(v);
  free(m);
}

/* The SDPA options of 0.3 through the command: --q-pos, --k-pos, --window,
 * --softcap, --alibi, --sinks and a [B, 1, 1, Skv] padding mask, against the
 * double oracle of tests/testutil.c; then each bad value exits 2 naming its
 * option, before any work (no output file). */
static void test_run_options(void **state) {
  (void)state;
  enum { B = 2, HQ = 4, HKV = 2, SQ = 9, SKV = 21, D = 8 };
  const int64_t qs[4] = {B, HQ, SQ, D}, ks[4] = {B, HKV, SKV, D}, ms[4] = {B, 1, 1, SKV};
  const int64_t hs[1] = {HQ}, bad_hs[1] = {HQ - 1};
  float *q = rand_array(B * HQ * SQ * D), *k = rand_array(B * HKV * SKV * D),
        *v = rand_array(B * HKV * SKV * D);
  for (int i = 0; i < B * HQ * SQ * D; i++) q[i] *= 8; /* scores large enough to cap */
  float mask[B * SKV], slopes[HQ], sinks[HQ], bad[HQ];
  for (int i = 0; i < B * SKV; i++) mask[i] = i % SKV >= SKV - 3 * (i / SKV) ? -FLT_MAX : 0.0f;
  for (int h = 0; h < HQ; h++) slopes[h] = exp2f(-2.0f * (float)(h + 1)), sinks[h] = 0.5f * h - 1;
  for (int h = 0; h < HQ; h++) bad[h] = h == 2 ? NAN : 1.0f;
  char pq[320], pk[320], pv[320], pm[320], pa[320], ps[320], pb[320], pbl[320], po[320],
      pe[320];
  save_f32("oq.npy", 4, qs, q, pq, sizeof pq);
  save_f32("ok.npy", 4, ks, k, pk, sizeof pk);
  save_f32("ov.npy", 4, ks, v, pv, sizeof pv);
  save_f32("om.npy", 4, ms, mask, pm, sizeof pm);
  save_f32("oa.npy", 1, hs, slopes, pa, sizeof pa);
  save_f32("os.npy", 1, hs, sinks, ps, sizeof ps);
  save_f32("obad.npy", 1, hs, bad, pb, sizeof pb);
  save_f32("oshort.npy", 1, bad_hs, slopes, pbl, sizeof pbl);
  const int64_t hs2[2] = {1, HQ};
  char p2d[320];
  save_f32("o2d.npy", 2, hs2, slopes, p2d, sizeof p2d);
  path_in(po, sizeof po, "oo.npy");
  path_in(pe, sizeof pe, "oe.npy");
  spawn_result r;
  RUN(&r, "run", "--q", pq, "--k", pk, "--v", pv, "--mask", pm, "--causal", "--q-pos", "3",
      "--k-pos", "-2", "--window", "6,-1", "--softcap", "2.5", "--alibi", pa, "--sinks", ps,
      "--out", po, "--lse-out", pe, "--check");
  spawn_expect_status(&r, 0);
  assert_non_null(strstr(r.out, "q-pos 3  k-pos -2  window 6,-1  softcap 2.5  alibi  sinks"));
  tu_sdpa_problem p = {.B = B, .Hq = HQ, .Hkv = HKV, .Sq = SQ, .Skv = SKV, .D = D, .Dv = D,
                       .q = q, .k = k, .v = v, .mask = mask, .mask_kind = ATTN_MASK_ADDITIVE,
                       .mask_b = B, .mask_h = 1, .mask_q = 1, .causal = true,
                       .scale = (double)(float)(1 / sqrt(D)), .has_positions = true,
                       .q_pos = 3, .k_pos = -2, .has_window = true, .window_left = 6,
                       .window_right = -1, .softcap = 2.5, .alibi = slopes, .sinks = sinks};
  double out[B * HQ * SQ * D], lse[B * HQ * SQ];
  tu_sdpa_double(&p, out, NULL, lse);
  const int64_t lsh[3] = {B, HQ, SQ};
  float *go = load_f32(po, 4, qs), *gl = load_f32(pe, 3, lsh);
  expect_close("out", go, out, B * HQ * SQ * D);
  expect_close("lse", gl, lse, B * HQ * SQ);
  free(go), free(gl);
  unlink(po);

  /* a mask of shape [Skv]: every leading 1 left out */
  const int64_t m1s[1] = {SKV};
  char pm1[320];
  save_f32("om1.npy", 1, m1s, mask + SKV, pm1, sizeof pm1); /* batch 1's row */
  RUN(&r, "run", "--q", pq, "--k", pk, "--v", pv, "--mask", pm1, "--out", po);
  spawn_expect_status(&r, 0);
  assert_non_null(strstr(r.out, "mask additive [1, 1, 1, 21]"));
  tu_sdpa_problem p1 = {.B = B, .Hq = HQ, .Hkv = HKV, .Sq = SQ, .Skv = SKV, .D = D, .Dv = D,
                        .q = q, .k = k, .v = v, .mask = mask + SKV,
                        .mask_kind = ATTN_MASK_ADDITIVE, .mask_b = 1, .mask_h = 1, .mask_q = 1,
                        .scale = (double)(float)(1 / sqrt(D))};
  tu_sdpa_double(&p1, out, NULL, NULL);
  go = load_f32(po, 4, qs);
  expect_close("out (mask [Skv])", go, out, B * HQ * SQ * D);
  free(go);
  unlink(po);

  /* bad values: exit 2, the option named, nothing written */
  struct {
    const char *opt, *val, *want;
  } bads[] = {
      {"--window", "-2,0", "--window"},   {"--window", "3", "--window"},
      {"--window", "1,x", "--window"},    {"--softcap", "0", "--softcap"},
      {"--softcap", "-1", "--softcap"},   {"--softcap", "inf", "--softcap"},
      {"--softcap", "nan", "--softcap"},  {"--alibi", pb, "--alibi"},
      {"--alibi", pbl, "--alibi"},        {"--sinks", pb, "--sinks"},
      {"--sinks", pbl, "--sinks"},        {"--q-pos", "x", "--q-pos"},
      {"--alibi", p2d, "--alibi"},
  };
  for (size_t i = 0; i < sizeof bads / sizeof bads[0]; i++) {
    RUN(&r, "run", "--q", pq, "--k", pk, "--v", pv, bads[i].opt, bads[i].val, "--out", po);
    spawn_expect_status(&r, 2);
    expect_error_line(&r, bads[i].want);
    assert_false(exists(po));
  }
  free(q), free(k), free(v);
}

/* Failing runs exit 1 with one line and leave no output file; an existing
 * file at the output path is left as it was. */
static void test_run_failures(void **state) {
  (void)state;
  const int64_t qs[4] = {1, 2, 3, 8}, ks[4] = {1, 2, 3, 7}, ls[1] = {2};
  float *q = rand_array(48), *k = rand_array(42);
  char pq[320], pk[320], pl[320], po[320], pbad[320];
  save_f32("fq.npy", 4, qs, q, pq, sizeof pq);
  save_f32("fk.npy", 4, ks, k, pk, sizeof pk);
  int32_t lens[2] = {1, 1};
  save_raw("flens.npy", "<i4", 1, ls, lens, 4, pl, sizeof pl);
  path_in(po, sizeof po, "never.npy");
  spawn_result r;
  /* head dims disagree: the library's message names the argument */
  RUN(&r, "run", "--q", pq, "--k", pk, "--v", pk, "--out", po);
  spawn_expect_status(&r, 1);
  expect_error_line(&r, "attn_sdpa");
  assert_false(exists(po));
  /* a missing input file */
  RUN(&r, "run", "--q", pq, "--k", "/nonexistent/k.npy", "--v", pq, "--out", po);
  spawn_expect_status(&r, 1);
  expect_error_line(&r, "/nonexistent/k.npy");
  assert_false(exists(po));
  /* kv lengths that do not match B */
  RUN(&r, "run", "--q", pq, "--k", pq, "--v", pq, "--kv-lens", pl, "--out", po);
  spawn_expect_status(&r, 1);
  expect_error_line(&r, "--kv-lens");
  assert_false(exists(po));
  /* a malformed file: an int32 array where float32 is needed */
  RUN(&r, "run", "--q", pl, "--k", pq, "--v", pq, "--out", po);
  spawn_expect_status(&r, 1);
  expect_error_line(&r, "dtype is int32");
  assert_false(exists(po));
  /* a device that does not exist */
  RUN(&r, "run", "--seq", "4", "--device", "nosuchbackend", "--out", po);
  spawn_expect_status(&r, 1);
  expect_error_line(&r, "nosuchbackend");
  assert_false(exists(po));
  /* an output directory that does not exist */
  path_in(pbad, sizeof pbad, "nodir/o.npy");
  RUN(&r, "run", "--seq", "4", "--out", pbad);
  spawn_expect_status(&r, 1);
  expect_error_line(&r, "nodir/o.npy");
  /* one of several outputs is a directory: the run fails before any output
   * is renamed into place, so the good --out path stays absent (rename()
   * used to fail only at the last commit, after --out was written) */
  char pdir[320];
  path_in(pdir, sizeof pdir, "lse_is_a_dir");
  assert_int_equal(mkdir(pdir, 0755), 0);
  RUN(&r, "run", "--seq", "4", "--out", po, "--lse-out", pdir);
  spawn_expect_status(&r, 1);
  expect_error_line(&r, "not a regular file");
  assert_false(exists(po));
  assert_int_equal(rmdir(pdir), 0);
  /* two outputs naming one file: a usage error, not a silent overwrite of
   * out by lse */
  RUN(&r, "run", "--seq", "4", "--out", po, "--lse-out", po);
  spawn_expect_status(&r, 2);
  expect_error_line(&r, "same file");
  assert_false(exists(po));
  /* ... also in other spellings of it: compared by the directory's identity
   * and the name, not as strings (issue 13, item 7) */
  {
    char alias[2][400];
    const char *slash = strrchr(po, '/');
    assert_non_null(slash);
    snprintf(alias[0], sizeof alias[0], "%.*s/./%s", (int)(slash - po), po, slash + 1);
    snprintf(alias[1], sizeof alias[1], "%.*s/../%s/%s", (int)(slash - po), po,
             strrchr(dir, '/') ? strrchr(dir, '/') + 1 : dir, slash + 1);
    for (int i = 0; i < 2; i++) {
      RUN(&r, "run", "--seq", "4", "--out", po, "--weights-out", alias[i]);
      spawn_expect_status(&r, 2);
      expect_error_line(&r, "name the same file");
      assert_false(exists(po));
    }
  }
  /* an existing file survives a failed run untouched */
  FILE *f = fopen(po, "w");
  assert_non_null(f);
  fputs("keep", f);
  fclose(f);
  RUN(&r, "run", "--q", pq, "--k", pk, "--v", pk, "--out", po);
  spawn_expect_status(&r, 1);
  char buf[16];
  spawn_slurp(po, buf, sizeof buf);
  assert_string_equal(buf, "keep");
  unlink(po);
  free(q);
  free(k);
}

/* MHA: separate weights with biases, then the same weights packed as
 * nn.MultiheadAttention's in_proj_weight/in_proj_bias, both against a double
 * computation of the projections and attention; then a shape disagreement. */
static void test_mha(void **state) {
  (void)state;
  enum { B = 2, S = 5, E = 12, H = 3, D = E / H };
  const int64_t xs[3] = {B, S, E}, ws[2] = {E, E}, bs[1] = {E}, ps[2] = {3 * E, E},
                pbs[1] = {3 * E};
  float *x = rand_array(B * S * E), *wq = rand_array(E * E), *wk = rand_array(E * E),
        *wv = rand_array(E * E), *wo = rand_array(E * E), *bq = rand_array(E),
        *bk = rand_array(E), *bv = rand_array(E), *bo = rand_array(E);
  float *inp = malloc(sizeof(float) * 3 * E * E), *inb = malloc(sizeof(float) * 3 * E);
  assert_non_null(inp);
  assert_non_null(inb);
  memcpy(inp, wq, sizeof(float) * E * E);
  memcpy(inp + E * E, wk, sizeof(float) * E * E);
  memcpy(inp + 2 * E * E, wv, sizeof(float) * E * E);
  memcpy(inb, bq, sizeof(float) * E);
  memcpy(inb + E, bk, sizeof(float) * E);
  memcpy(inb + 2 * E, bv, sizeof(float) * E);
  char px[320], pq[320], pk[320], pv[320], po[320], pbq[320], pbk[320], pbv[320], pbo[320],
      pin[320], pinb[320], out1[320], out2[320];
  save_f32("x.npy", 3, xs, x, px, sizeof px);
  save_f32("wq.npy", 2, ws, wq, pq, sizeof pq);
  save_f32("wk.npy", 2, ws, wk, pk, sizeof pk);
  save_f32("wv.npy", 2, ws, wv, pv, sizeof pv);
  save_f32("wo.npy", 2, ws, wo, po, sizeof po);
  save_f32("bq.npy", 1, bs, bq, pbq, sizeof pbq);
  save_f32("bk.npy", 1, bs, bk, pbk, sizeof pbk);
  save_f32("bv.npy", 1, bs, bv, pbv, sizeof pbv);
  save_f32("bo.npy", 1, bs, bo, pbo, sizeof pbo);
  save_f32("inp.npy", 2, ps, inp, pin, sizeof pin);
  save_f32("inb.npy", 1, pbs, inb, pinb, sizeof pinb);
  path_in(out1, sizeof out1, "mha1.npy");
  path_in(out2, sizeof out2, "mha2.npy");

  /* the expected output, causal */
  double Q[B * S * E], K[B * S * E], V[B * S * E], att[B * S * E], want[B * S * E];
  for (int r = 0; r < B * S; r++)
    for (int o = 0; o < E; o++) {
      double a = bq[o], b = bk[o], c = bv[o];
      for (int i = 0; i < E; i++) {
        a += (double)x[r * E + i] * wq[o * E + i];
        b += (double)x[r * E + i] * wk[o * E + i];
        c += (double)x[r * E + i] * wv[o * E + i];
      }
      Q[r * E + o] = a;
      K[r * E + o] = b;
      V[r * E + o] = c;
    }
  for (int b = 0; b < B; b++)
    for (int h = 0; h < H; h++)
      for (int i = 0; i < S; i++) {
        double s[S], mx = -INFINITY, z = 0;
        for (int j = 0; j <= i; j++) {
          s[j] = 0;
          for (int d = 0; d < D; d++)
            s[j] += Q[(b * S + i) * E + h * D + d] * K[(b * S + j) * E + h * D + d];
          s[j] /= sqrt(D);
          if (s[j] > mx) mx = s[j];
        }
        for (int j = 0; j <= i; j++) z += exp(s[j] - mx);
        for (int d = 0; d < D; d++) {
          double acc = 0;
          for (int j = 0; j <= i; j++) acc += exp(s[j] - mx) / z * V[(b * S + j) * E + h * D + d];
          att[(b * S + i) * E + h * D + d] = acc;
        }
      }
  for (int r = 0; r < B * S; r++)
    for (int o = 0; o < E; o++) {
      double a = bo[o];
      for (int i = 0; i < E; i++) a += att[r * E + i] * wo[o * E + i];
      want[r * E + o] = a;
    }

  spawn_result r;
  RUN(&r, "mha", "--x", px, "--wq", pq, "--wk", pk, "--wv", pv, "--wo", po, "--bq", pbq, "--bk",
      pbk, "--bv", pbv, "--bo", pbo, "--heads", "3", "--causal", "--out", out1, "--check");
  spawn_expect_status(&r, 0);
  assert_non_null(strstr(r.out, "check out"));
  float *g1 = load_f32(out1, 3, xs);
  expect_close("mha separate", g1, want, B * S * E);
  RUN(&r, "mha", "--x", px, "--in-proj", pin, "--in-bias", pinb, "--wo", po, "--bo", pbo,
      "--heads", "3", "--causal", "--out", out2);
  spawn_expect_status(&r, 0);
  float *g2 = load_f32(out2, 3, xs);
  expect_close("mha packed", g2, want, B * S * E);

  /* 12 rows of wq do not split into 5 heads; a wo that does not fit E */
  char o3[320];
  path_in(o3, sizeof o3, "mha3.npy");
  RUN(&r, "mha", "--x", px, "--wq", pq, "--wk", pk, "--wv", pv, "--wo", po, "--heads", "5",
      "--out", o3);
  spawn_expect_status(&r, 1);
  expect_error_line(&r, "not a multiple of --heads 5");
  RUN(&r, "mha", "--x", px, "--in-proj", pin, "--wo", pin, "--heads", "3", "--out", o3);
  spawn_expect_status(&r, 1);
  expect_error_line(&r, "--wo");
  assert_false(exists(o3));

  free(g1);
  free(g2);
  float *all[] = {x, wq, wk, wv, wo, bq, bk, bv, bo, inp, inb};
  for (size_t i = 0; i < sizeof all / sizeof all[0]; i++) free(all[i]);
}


/* Element types: --dtype, --kv-dtype and --out-dtype on f32 files; 16-bit
 * files keeping their type or converted; the output written as '<V2' for
 * bf16 (as numpy.save writes an ml_dtypes.bfloat16 array) or '<f2'. Each
 * against sdpa_ref on the inputs rounded here, independently. */
static void test_run_dtypes(void **state) {
  (void)state;
  enum { B = 2, HQ = 4, HKV = 2, SQ = 5, SKV = 7, D = 8, DV = 6 };
  enum { NQ = B * HQ * SQ * D, NK = B * HKV * SKV * D, NV = B * HKV * SKV * DV,
         NO = B * HQ * SQ * DV };
  const int64_t qs[4] = {B, HQ, SQ, D}, ks[4] = {B, HKV, SKV, D}, vs[4] = {B, HKV, SKV, DV};
  const int64_t os[4] = {B, HQ, SQ, DV}, wsh[4] = {B, HQ, SQ, SKV}, lsh[3] = {B, HQ, SQ};
  float *q = rand_array(NQ), *k = rand_array(NK), *v = rand_array(NV);
  float *qb = malloc(sizeof(float) * NQ), *kb = malloc(sizeof(float) * NK),
        *vb = malloc(sizeof(float) * NV), *kh = malloc(sizeof(float) * NK),
        *vh = malloc(sizeof(float) * NV), *qh = malloc(sizeof(float) * NQ);
  assert_true(qb && kb && vb && kh && vh && qh);
  memcpy(qb, q, sizeof(float) * NQ);
  memcpy(kb, k, sizeof(float) * NK);
  memcpy(vb, v, sizeof(float) * NV);
  memcpy(qh, q, sizeof(float) * NQ);
  memcpy(kh, k, sizeof(float) * NK);
  memcpy(vh, v, sizeof(float) * NV);
  round_all(qb, NQ, to_bf16);
  round_all(kb, NK, to_bf16);
  round_all(vb, NV, to_bf16);
  round_all(qh, NQ, to_f16);
  round_all(kh, NK, to_f16);
  round_all(vh, NV, to_f16);
  char pq[320], pk[320], pv[320], po[320], pw[320], pe[320];
  save_f32("tq.npy", 4, qs, q, pq, sizeof pq);
  save_f32("tk.npy", 4, ks, k, pk, sizeof pk);
  save_f32("tv.npy", 4, vs, v, pv, sizeof pv);
  path_in(po, sizeof po, "to.npy");
  path_in(pw, sizeof pw, "tw.npy");
  path_in(pe, sizeof pe, "tlse.npy");
  double out[NO], w[B * HQ * SQ * SKV], lse[B * HQ * SQ];
  spawn_result r;

  /* --dtype bf16: q, k, v and out bf16; out written as '<V2' */
  RUN(&r, "run", "--device", "ref", "--q", pq, "--k", pk, "--v", pv, "--dtype", "bf16",
      "--causal", "--out", po, "--check");
  spawn_expect_status(&r, 0);
  assert_non_null(strstr(r.out, "dtype q bf16  k bf16  v bf16  out bf16"));
  assert_non_null(strstr(r.out, "check out"));
  prob p = {B, HQ, HKV, SQ, SKV, D, DV, qb, kb, vb, NULL, 1, 1, false, true, 1 / sqrt(D), NULL};
  sdpa_ref(&p, out, NULL, NULL);
  float *g = load_half(po, NPY_BF16, 4, os);
  expect_close_u("bf16 out", g, out, NO, 0x1p-8);
  free(g);

  /* --dtype bf16 --out-dtype f32: the same inputs, an f32 out (no output
   * rounding), and weights and lse, float32 always */
  RUN(&r, "run", "--q", pq, "--k", pk, "--v", pv, "--dtype", "bf16", "--out-dtype", "f32",
      "--causal", "--out", po, "--weights-out", pw, "--lse-out", pe, "--check");
  spawn_expect_status(&r, 0);
  assert_non_null(strstr(r.out, "dtype q bf16  k bf16  v bf16  out f32"));
  sdpa_ref(&p, out, w, lse);
  expect_descr(po, "<f4");
  expect_descr(pw, "<f4");
  expect_descr(pe, "<f4");
  g = load_f32(po, 4, os);
  expect_close("bf16 in, f32 out", g, out, NO);
  free(g);
  g = load_f32(pw, 4, wsh);
  expect_close("weights", g, w, B * HQ * SQ * SKV);
  free(g);
  g = load_f32(pe, 3, lsh);
  expect_close("lse", g, lse, B * HQ * SQ);
  free(g);
  unlink(pw);
  unlink(pe);

  /* --kv-dtype f16 under f32 q: k and v rounded, q and out f32 */
  RUN(&r, "run", "--q", pq, "--k", pk, "--v", pv, "--kv-dtype", "f16", "--out", po, "--check");
  spawn_expect_status(&r, 0);
  assert_non_null(strstr(r.out, "dtype q f32  k f16  v f16  out f32"));
  prob pkv = {B, HQ, HKV, SQ, SKV, D, DV, q, kh, vh, NULL, 1, 1, false, false, 1 / sqrt(D), NULL};
  sdpa_ref(&pkv, out, NULL, NULL);
  expect_descr(po, "<f4");
  g = load_f32(po, 4, os);
  expect_close("f16 kv", g, out, NO);
  free(g);

  /* --kv-dtype overrides --dtype for k and v */
  RUN(&r, "run", "--q", pq, "--k", pk, "--v", pv, "--dtype", "bf16", "--kv-dtype", "f16",
      "--out", po);
  spawn_expect_status(&r, 0);
  assert_non_null(strstr(r.out, "dtype q bf16  k f16  v f16  out bf16"));

  /* float16 files keep their type: out is f16, written '<f2' */
  char hq[320], hk[320], hv[320], bk[320], bv[320], bq[320];
  save_half("hq.npy", NPY_F16, 4, qs, qh, hq, sizeof hq);
  save_half("hk.npy", NPY_F16, 4, ks, kh, hk, sizeof hk);
  save_half("hv.npy", NPY_F16, 4, vs, vh, hv, sizeof hv);
  RUN(&r, "run", "--q", hq, "--k", hk, "--v", hv, "--out", po, "--check");
  spawn_expect_status(&r, 0);
  assert_non_null(strstr(r.out, "dtype q f16  k f16  v f16  out f16"));
  prob ph = {B, HQ, HKV, SQ, SKV, D, DV, qh, kh, vh, NULL, 1, 1, false, false, 1 / sqrt(D), NULL};
  sdpa_ref(&ph, out, NULL, NULL);
  g = load_half(po, NPY_F16, 4, os);
  expect_close_u("f16 files", g, out, NO, 0x1p-11);
  free(g);

  /* bfloat16 k and v files under an f32 q file: each keeps its type */
  save_half("bk.npy", NPY_BF16, 4, ks, kb, bk, sizeof bk);
  save_half("bv.npy", NPY_BF16, 4, vs, vb, bv, sizeof bv);
  RUN(&r, "run", "--q", pq, "--k", bk, "--v", bv, "--out", po, "--check");
  spawn_expect_status(&r, 0);
  assert_non_null(strstr(r.out, "dtype q f32  k bf16  v bf16  out f32"));
  prob pb = {B, HQ, HKV, SQ, SKV, D, DV, q, kb, vb, NULL, 1, 1, false, false, 1 / sqrt(D), NULL};
  sdpa_ref(&pb, out, NULL, NULL);
  g = load_f32(po, 4, os);
  expect_close("bf16 kv files", g, out, NO);
  free(g);

  /* --dtype converts a file on upload: bf16 files stored as f16 */
  save_half("bq.npy", NPY_BF16, 4, qs, qb, bq, sizeof bq);
  RUN(&r, "run", "--q", bq, "--k", bk, "--v", bv, "--dtype", "f16", "--out", po);
  spawn_expect_status(&r, 0);
  assert_non_null(strstr(r.out, "dtype q f16  k f16  v f16  out f16"));
  float *qbh = malloc(sizeof(float) * NQ), *kbh = malloc(sizeof(float) * NK),
        *vbh = malloc(sizeof(float) * NV);
  assert_true(qbh && kbh && vbh);
  memcpy(qbh, qb, sizeof(float) * NQ);
  memcpy(kbh, kb, sizeof(float) * NK);
  memcpy(vbh, vb, sizeof(float) * NV);
  round_all(qbh, NQ, to_f16);
  round_all(kbh, NK, to_f16);
  round_all(vbh, NV, to_f16);
  prob pc = {B, HQ, HKV, SQ, SKV, D, DV, qbh, kbh, vbh, NULL, 1, 1, false, false, 1 / sqrt(D),
             NULL};
  sdpa_ref(&pc, out, NULL, NULL);
  g = load_half(po, NPY_F16, 4, os);
  expect_close_u("bf16 files as f16", g, out, NO, 0x1p-11);
  free(g);
  unlink(po);

  /* a bfloat16 mask is refused, naming its descr; nothing is written */
  char pm[320];
  const int64_t ms[2] = {SQ, SKV};
  float zeros[SQ * SKV] = {0};
  save_half("bmask.npy", NPY_BF16, 2, ms, zeros, pm, sizeof pm);
  RUN(&r, "run", "--q", pq, "--k", pk, "--v", pv, "--mask", pm, "--out", po);
  spawn_expect_status(&r, 1);
  expect_error_line(&r, "--mask");
  expect_error_line(&r, "'<V2'");
  assert_false(exists(po));

  /* bad type names: usage errors, one line, nothing run */
  static const struct {
    const char *opt, *val, *msg;
  } bad[] = {{"--dtype", "f64", "--dtype: 'f64' is not f32, f16 or bf16"},
             {"--kv-dtype", "half", "--kv-dtype: 'half'"},
             {"--out-dtype", "", "--out-dtype: ''"},
             {"--dtype", "BF16", "--dtype: 'BF16'"}};
  for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
    RUN(&r, "run", "--seq", "3", bad[i].opt, bad[i].val, "--out", po);
    spawn_expect_status(&r, 2);
    expect_error_line(&r, bad[i].msg);
    assert_string_equal(r.out, "");
    assert_false(exists(po));
  }
  RUN(&r, "run", "--dtype");
  spawn_expect_status(&r, 2);
  expect_error_line(&r, "needs an argument");

  /* random inputs take the types too */
  RUN(&r, "run", "--seq", "4", "--heads", "2", "--dim", "8", "--dtype", "f16", "--kv-dtype",
      "bf16", "--out-dtype", "bf16", "--check", "--out", po);
  spawn_expect_status(&r, 0);
  assert_non_null(strstr(r.out, "dtype q f16  k bf16  v bf16  out bf16"));
  const int64_t ros[4] = {1, 2, 4, 8};
  g = load_half(po, NPY_BF16, 4, ros);
  free(g);
  unlink(po);

  float *all[] = {q, k, v, qb, kb, vb, qh, kh, vh, qbh, kbh, vbh};
  for (size_t i = 0; i < sizeof all / sizeof all[0]; i++) free(all[i]);
}

/* MHA in double: x [B, S, E] through wq/wk/wv [E, E] (no biases), heads of
 * D = E / H, optionally causal, keys and values rounded by kv_round (NULL:
 * none), then wo. */
static void mha_ref(int B, int S, int E, int H, const float *x, const float *wq,
                    const float *wk, const float *wv, const float *wo, bool causal,
                    float (*kv_round)(float), double *want) {
  int D = E / H;
  size_t n = (size_t)B * S * E;
  double *Q = malloc(n * sizeof *Q), *K = malloc(n * sizeof *K), *V = malloc(n * sizeof *V),
         *att = malloc(n * sizeof *att), *sc = malloc((size_t)S * sizeof *sc);
  assert_true(Q && K && V && att && sc);
  for (int r = 0; r < B * S; r++)
    for (int o = 0; o < E; o++) {
      double a = 0, b = 0, c = 0;
      for (int i = 0; i < E; i++) {
        a += (double)x[r * E + i] * wq[o * E + i];
        b += (double)x[r * E + i] * wk[o * E + i];
        c += (double)x[r * E + i] * wv[o * E + i];
      }
      Q[r * E + o] = a;
      K[r * E + o] = kv_round ? kv_round((float)b) : b;
      V[r * E + o] = kv_round ? kv_round((float)c) : c;
    }
  for (int b = 0; b < B; b++)
    for (int h = 0; h < H; h++)
      for (int i = 0; i < S; i++) {
        int last = causal ? i : S - 1;
        double mx = -INFINITY, z = 0;
        for (int j = 0; j <= last; j++) {
          sc[j] = 0;
          for (int d = 0; d < D; d++)
            sc[j] += Q[(b * S + i) * E + h * D + d] * K[(b * S + j) * E + h * D + d];
          sc[j] /= sqrt(D);
          if (sc[j] > mx) mx = sc[j];
        }
        for (int j = 0; j <= last; j++) z += exp(sc[j] - mx);
        for (int d = 0; d < D; d++) {
          double acc = 0;
          for (int j = 0; j <= last; j++)
            acc += exp(sc[j] - mx) / z * V[(b * S + j) * E + h * D + d];
          att[(b * S + i) * E + h * D + d] = acc;
        }
      }
  for (int r = 0; r < B * S; r++)
    for (int o = 0; o < E; o++) {
      double a = 0;
      for (int i = 0; i < E; i++) a += att[r * E + i] * wo[o * E + i];
      want[r * E + o] = a;
    }
  free(Q);
  free(K);
  free(V);
  free(att);
  free(sc);
}

/* attn mha with bfloat16 weight files (as a checkpoint stores them): they
 * keep their type under f32 activations; with a bf16 x the activations and
 * out are bf16 ('<V2'); --kv-dtype f16 --decode runs through an f16 cache. */
static void test_mha_16bit(void **state) {
  (void)state;
  enum { B = 2, S = 5, E = 8, H = 2, N = B * S * E };
  const int64_t xs[3] = {B, S, E}, ws[2] = {E, E};
  float *x = rand_array(N), *w[4];
  const char *names[4] = {"bwq.npy", "bwk.npy", "bwv.npy", "bwo.npy"};
  char pw[4][320], px[320], pxb[320], po[320];
  for (int i = 0; i < 4; i++) {
    w[i] = rand_array(E * E);
    round_all(w[i], E * E, to_bf16);
    save_half(names[i], NPY_BF16, 2, ws, w[i], pw[i], sizeof pw[i]);
  }
  save_f32("bx.npy", 3, xs, x, px, sizeof px);
  path_in(po, sizeof po, "bmo.npy");
  double want[N];
  spawn_result r;

  /* f32 x over bf16 weights: f32 activations, exact weights */
  RUN(&r, "mha", "--device", "ref", "--x", px, "--wq", pw[0], "--wk", pw[1], "--wv", pw[2],
      "--wo", pw[3], "--heads", "2", "--out", po, "--check");
  spawn_expect_status(&r, 0);
  assert_non_null(strstr(r.out, "dtype x f32  kv f32  out f32  weights bf16"));
  assert_non_null(strstr(r.out, "check out"));
  mha_ref(B, S, E, H, x, w[0], w[1], w[2], w[3], false, NULL, want);
  expect_descr(po, "<f4");
  float *g = load_f32(po, 3, xs);
  expect_close("mha bf16 weights", g, want, N);
  free(g);

  /* --causal --decode --kv-dtype f16: token by token through an f16 cache;
   * the oracle rounds the projected keys and values to f16 (the device's
   * f32 projection may round to the neighbouring f16 value: a looser bound) */
  RUN(&r, "mha", "--x", px, "--wq", pw[0], "--wk", pw[1], "--wv", pw[2], "--wo", pw[3],
      "--heads", "2", "--causal", "--decode", "--kv-dtype", "f16", "--out", po, "--check");
  spawn_expect_status(&r, 0);
  assert_non_null(strstr(r.out, "dtype x f32  kv f16  out f32"));
  assert_non_null(strstr(r.out, "decode: 5 steps"));
  mha_ref(B, S, E, H, x, w[0], w[1], w[2], w[3], true, to_f16, want);
  g = load_f32(po, 3, xs);
  expect_close_u("mha f16 cache", g, want, N, 0x1p-9);
  free(g);

  /* bf16 x: bf16 activations, out '<V2'; the oracle rounds only x, so the
   * intermediates' roundings bound the difference */
  float *xb = malloc(sizeof(float) * N);
  assert_non_null(xb);
  memcpy(xb, x, sizeof(float) * N);
  round_all(xb, N, to_bf16);
  save_half("bxb.npy", NPY_BF16, 3, xs, xb, pxb, sizeof pxb);
  RUN(&r, "mha", "--x", pxb, "--wq", pw[0], "--wk", pw[1], "--wv", pw[2], "--wo", pw[3],
      "--heads", "2", "--out", po, "--check");
  spawn_expect_status(&r, 0);
  assert_non_null(strstr(r.out, "dtype x bf16  kv bf16  out bf16  weights bf16"));
  mha_ref(B, S, E, H, xb, w[0], w[1], w[2], w[3], false, NULL, want);
  g = load_half(po, NPY_BF16, 3, xs);
  double mx = 0;
  for (int i = 0; i < N; i++) mx = fmax(mx, fabs(want[i]));
  for (int i = 0; i < N; i++)
    if (!(fabs(g[i] - want[i]) <= 0x1p-5 * mx)) {
      print_error("bf16 mha out[%d] = %.6g, want %.6g\n", i, g[i], want[i]);
      fail();
    }
  free(g);

  /* a bad --kv-dtype, and --decode without --causal: usage errors */
  RUN(&r, "mha", "--x", px, "--wq", pw[0], "--wk", pw[1], "--wv", pw[2], "--wo", pw[3],
      "--heads", "2", "--kv-dtype", "f8");
  spawn_expect_status(&r, 2);
  expect_error_line(&r, "--kv-dtype: 'f8'");
  RUN(&r, "mha", "--x", px, "--wq", pw[0], "--wk", pw[1], "--wv", pw[2], "--wo", pw[3],
      "--heads", "2", "--decode");
  spawn_expect_status(&r, 2);
  expect_error_line(&r, "--decode needs --causal");
  unlink(po);
  free(x);
  free(xb);
  for (int i = 0; i < 4; i++) free(w[i]);
}

static int rm_tree(void) {
  char cmdpath[512];
  /* remove the files this suite wrote; the directory holds nothing else */
  static const char *names[] = {"stdout.txt", "stderr.txt", "rand_out.npy", "rand_out2.npy",
                                "q.npy",      "k.npy",      "v.npy",        "mask.npy",
                                "lens.npy",   "o.npy",      "w.npy",        "lse.npy",
                                "aq.npy",     "ak.npy",     "av.npy",       "am.npy",
                                "ao.npy",     "fq.npy",     "fk.npy",       "flens.npy",
                                "x.npy",      "wq.npy",     "wk.npy",       "wv.npy",
                                "wo.npy",     "bq.npy",     "bk.npy",       "bv.npy",
                                "bo.npy",     "inp.npy",    "inb.npy",      "mha1.npy",
                                "mha2.npy",   "tq.npy",     "tk.npy",       "tv.npy",
                                "to.npy",     "tw.npy",     "tlse.npy",     "hq.npy",
                                "hk.npy",     "hv.npy",     "bk.npy",       "bv.npy",
                                "bq.npy",     "bmask.npy",  "bwq.npy",      "bwk.npy",
                                "bwv.npy",    "bwo.npy",    "bx.npy",       "bxb.npy",
                                "bmo.npy"};
  for (size_t i = 0; i < sizeof names / sizeof names[0]; i++) {
    snprintf(cmdpath, sizeof cmdpath, "%s/%s", dir, names[i]);
    unlink(cmdpath);
  }
  return rmdir(dir);
}

static int teardown(void **state) {
  (void)state;
  if (rm_tree() != 0) fprintf(stderr, "test_cli: left %s behind (unexpected files)\n", dir);
  return 0;
}

/* Entries of d whose name contains ".tmp." (a writer's temporary). */
static int count_temporaries(const char *d) {
  DIR *dp = opendir(d);
  assert_non_null(dp);
  int n = 0;
  struct dirent *e;
  while ((e = readdir(dp)))
    if (strstr(e->d_name, ".tmp.")) n++;
  closedir(dp);
  return n;
}

/* Writers killed at any moment leave no temporary behind (issue 13, item
 * 8: 60 SIGKILLs used to leave 42 *.tmp.PID.N files): outputs are written to
 * unnamed O_TMPFILEs and named only for the instant of the rename. Each run
 * writes 16 MiB of weights; SIGKILL lands from 20 ms to about 1 s in. */
static void test_killed_writers(void **state) {
  (void)state;
  char kd[320], po[400], pw[400];
  path_in(kd, sizeof kd, "killed");
  assert_int_equal(mkdir(kd, 0755), 0);
  snprintf(po, sizeof po, "%s/o.npy", kd);
  snprintf(pw, sizeof pw, "%s/w.npy", kd);
  for (int i = 0; i < 12; i++) {
    pid_t pid = fork();
    assert_true(pid >= 0);
    if (pid == 0) {
      int devnull = open("/dev/null", O_WRONLY);
      if (devnull >= 0) {
        dup2(devnull, 1);
        dup2(devnull, 2);
      }
      execl(bin, bin, "run", "--device", "ref", "--heads", "4", "--seq", "1024", "--dim", "16",
            "--warmup", "0", "--out", po, "--weights-out", pw, (char *)NULL);
      _exit(127);
    }
    struct timespec ts = {0, (long)(20 + 80 * i) * 1000000L};
    nanosleep(&ts, NULL);
    kill(pid, SIGKILL);
    int st;
    assert_int_equal(waitpid(pid, &st, 0), pid);
    assert_int_equal(count_temporaries(kd), 0);
  }
  unlink(po);
  unlink(pw);
  assert_int_equal(rmdir(kd), 0);
}

/* Issue 13: every module on the path used to be dlopen'ed whatever the
 * selector named, so one that crashes at load (plugins/crash: tp_crash
 * aborts in a constructor) took down even `--device ref`. Modules now load
 * when a selector or the default order reaches them, or a listing asks. */
static void test_lazy_module_loading(void **state) {
  (void)state;
  const char *pd = getenv("ATTN_TEST_PLUGIN_DIR"); /* <builddir>/plugins/.libs */
  const char *bp = getenv("ATTN_BACKEND_PATH");
  if (!pd || !bp) skip();
  char path[2048], *old = strdup(bp);
  assert_non_null(old);
  snprintf(path, sizeof path, "%s/../crash/.libs:%s", pd, bp);
  setenv("ATTN_BACKEND_PATH", path, 1);
  spawn_result r;
  RUN(&r, "run", "--device", "ref", "--heads", "1", "--seq", "8", "--dim", "4", "--check");
  int ref_rc = r.status;
  char ref_err[4096];
  snprintf(ref_err, sizeof ref_err, "%s", r.err);
  setenv("ATTN_DEVICE", "", 1); /* the default order: clblast:gpu,pocl:cpu,ref */
  RUN(&r, "run", "--heads", "1", "--seq", "8", "--dim", "4");
  int def_rc = r.status;
  setenv("ATTN_DEVICE", "ref", 1);
  /* The module is real and does crash: whatever lists every module dies. */
  spawn_result d;
  RUN(&d, "devices");
  spawn_result n;
  RUN(&n, "run", "--device", "tp_crash", "--heads", "1", "--seq", "8", "--dim", "4");
  setenv("ATTN_BACKEND_PATH", old, 1);
  free(old);
  if (ref_rc != 0) fail_msg("--device ref with a crashing module on the path: status %d: %s", ref_rc, ref_err);
  assert_int_equal(def_rc, 0);
  printf("attn devices: status %d; --device tp_crash: status %d\n", d.status, n.status);
  assert_int_equal(d.status, -1); /* did not exit normally: the abort */
  assert_int_equal(n.status, -1);
}

/* Issue 13: a kernel that fails to build is one line on stderr, naming the
 * kernel's file (POCL's clang also printed "1 error generated." and named its
 * temporary copy). On pocl, where it has a device. */
static void test_build_error_one_line(void **state) {
  (void)state;
  spawn_result r;
  RUN(&r, "devices");
  spawn_expect_status(&r, 0);
  if (!strstr(r.out, "pocl:0 ")) skip();
  const char *data = getenv("ATTN_TEST_DATA_DIR"); /* <srcdir>/tests/data */
  char src[1024], kd[300], cmd[2048], f[400];
  snprintf(src, sizeof src, "%s", data ? data : "");
  char *cut = strstr(src, "/tests/data");
  if (!cut) skip();
  snprintf(cut, sizeof src - (size_t)(cut - src), "/kernels");
  path_in(kd, sizeof kd, "broken_kernels");
  snprintf(cmd, sizeof cmd, "cp -r '%s' '%s' && chmod 0755 '%s' && chmod 0644 '%s'/*.cl", src, kd,
           kd, kd);
  assert_int_equal(system(cmd), 0);
  snprintf(f, sizeof f, "%s/sdpa.cl", kd);
  FILE *fp = fopen(f, "w");
  assert_non_null(fp);
  fputs("__kernel void sdpa_flash(__global float *y) { y[0] = undeclared_identifier_xyz; }\n", fp);
  fclose(fp);
  setenv("ATTN_KERNEL_DIR", kd, 1);
  setenv("ATTN_CACHE", "0", 1);
  RUN(&r, "run", "--device", "pocl", "--heads", "1", "--seq", "8", "--dim", "8");
  unsetenv("ATTN_KERNEL_DIR");
  unsetenv("ATTN_CACHE");
  printf("%s", r.err);
  spawn_expect_status(&r, 1);
  expect_error_line(&r, "kernels/sdpa.cl:1:");
  assert_non_null(strstr(r.err, "undeclared_identifier_xyz"));
  assert_null(strstr(r.err, "tempfile_"));
  snprintf(cmd, sizeof cmd, "rm -rf '%s'", kd);
  assert_int_equal(system(cmd), 0);
}

/* Issue 13, item 1: what the library refuses to use, `attn devices` shows
 * as notes (and module directories among the failed modules). */
static void test_devices_notes(void **state) {
  (void)state;
  char cd[300], md[300];
  path_in(cd, sizeof cd, "unsafe_cache");
  path_in(md, sizeof md, "unsafe_modules");
  assert_int_equal(mkdir(cd, 0700), 0);
  assert_int_equal(mkdir(md, 0700), 0);
  assert_int_equal(chmod(cd, 0777), 0);
  assert_int_equal(chmod(md, 0777), 0);
  char path[2048];
  snprintf(path, sizeof path, "%s:%s", md, getenv("ATTN_BACKEND_PATH") ? getenv("ATTN_BACKEND_PATH") : "");
  char *old_path = getenv("ATTN_BACKEND_PATH") ? strdup(getenv("ATTN_BACKEND_PATH")) : NULL;
  setenv("ATTN_CACHE_DIR", cd, 1);
  setenv("ATTN_KERNEL_DIR", "kernels", 1);
  setenv("ATTN_BACKEND_PATH", path, 1);
  spawn_result r;
  RUN(&r, "devices");
  unsetenv("ATTN_CACHE_DIR");
  unsetenv("ATTN_KERNEL_DIR");
  if (old_path) setenv("ATTN_BACKEND_PATH", old_path, 1);
  else unsetenv("ATTN_BACKEND_PATH");
  free(old_path);
  spawn_expect_status(&r, 0);
  printf("%s", r.out);
  assert_non_null(strstr(r.out, "ref:0"));
  assert_non_null(strstr(r.out, "notes:"));
  char want[600];
  snprintf(want, sizeof want, "cache directory %s not used", cd);
  assert_non_null(strstr(r.out, want));
  assert_non_null(strstr(r.out, "without the sticky bit (mode 0777)"));
  assert_non_null(strstr(r.out, "ATTN_KERNEL_DIR kernels refused: a relative path"));
  snprintf(want, sizeof want, "%s: unsafe module directory refused", md);
  assert_non_null(strstr(r.out, want));
  assert_int_equal(rmdir(cd), 0);
  assert_int_equal(rmdir(md), 0);
}

/* Issue 13, item 2: `attn run --device ref --heads 1 --seq 65536 --dim 8
 * --weights-out w.npy` was accepted and needed 32 GiB (16 GiB of weights on
 * the device, which is host memory on ref, and 16 GiB read back). A run whose
 * weights fit the device but not twice in the host's memory is refused up
 * front, quickly, with one line and no file. The sequence is chosen from this
 * machine's memory: weights of about 0.7 x physical memory. */
static void test_run_too_big_for_host(void **state) {
  (void)state;
  const double phys = (double)sysconf(_SC_PHYS_PAGES) * (double)sysconf(_SC_PAGESIZE);
  char seq[32], pw[300];
  snprintf(seq, sizeof seq, "%lld", (long long)(sqrt(phys * 0.7 / 4)));
  path_in(pw, sizeof pw, "toobig_w.npy");
  spawn_result r;
  struct timespec t0, t1;
  clock_gettime(CLOCK_MONOTONIC, &t0);
  RUN(&r, "run", "--device", "ref", "--heads", "1", "--seq", seq, "--dim", "8", "--weights-out",
      pw);
  clock_gettime(CLOCK_MONOTONIC, &t1);
  spawn_expect_status(&r, 1);
  expect_error_line(&r, "physical memory");
  assert_non_null(strstr(r.err, "bytes of host memory"));
  assert_false(exists(pw));
  double s = (double)(t1.tv_sec - t0.tv_sec) + (t1.tv_nsec - t0.tv_nsec) / 1e9;
  printf("--seq %s --weights-out refused in %.2f s: %s", seq, s, r.err);
  assert_true(s < 10);
}

/* Issue 13, item 3: under `prlimit --as=$((2<<30))`, `attn run --device pocl
 * --heads 2 --seq 16384 --dim 8 --weights-out w.npy` died on POCL's assertion
 * `p->mem_ptr != NULL` (SIGABRT): POCL allocated the 2 GiB of weights only
 * when the kernel ran. Now the allocation itself fails: exit 1, one line, no
 * file. On pocl and clblast, each where it has a device. (Not under the
 * sanitizers: their shadow memory needs an unlimited address space.) */
static void test_run_address_space_limit(void **state) {
  (void)state;
#if defined(__SANITIZE_ADDRESS__)
  skip();
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
  skip();
#endif
#endif
  spawn_result r;
  RUN(&r, "devices");
  spawn_expect_status(&r, 0);
  const char *devs[2] = {"pocl", "clblast"};
  int ran = 0;
  for (int i = 0; i < 2; i++) {
    char pfx[32], pw[300], errpath[300], err[4096];
    snprintf(pfx, sizeof pfx, "%s:0 ", devs[i]);
    if (!strstr(r.out, pfx)) continue; /* no such device here */
    path_in(pw, sizeof pw, "aslimit_w.npy");
    path_in(errpath, sizeof errpath, "aslimit_err.txt");
    fflush(NULL);
    pid_t pid = fork();
    assert_true(pid >= 0);
    if (pid == 0) {
      struct rlimit rl = {(rlim_t)2 << 30, (rlim_t)2 << 30};
      int fd = open(errpath, O_WRONLY | O_CREAT | O_TRUNC, 0600);
      int devnull = open("/dev/null", O_WRONLY);
      if (fd < 0 || devnull < 0 || setrlimit(RLIMIT_AS, &rl) != 0) _exit(126);
      dup2(devnull, 1);
      dup2(fd, 2);
      alarm(300);
      execl(bin, bin, "run", "--device", devs[i], "--heads", "2", "--seq", "16384", "--dim", "8",
            "--weights-out", pw, (char *)NULL);
      _exit(127);
    }
    int st;
    assert_int_equal(waitpid(pid, &st, 0), pid);
    spawn_slurp(errpath, err, sizeof err);
    printf("%s under a 2 GiB address space: %s", devs[i], err);
    if (WIFSIGNALED(st)) fail_msg("%s: killed by signal %d: %s", devs[i], WTERMSIG(st), err);
    assert_true(WIFEXITED(st));
    assert_int_equal(WEXITSTATUS(st), 1);
    assert_true(strncmp(err, "attn: ", 6) == 0);
    assert_non_null(strstr(err, "memory"));
    assert_ptr_equal(strchr(err, '\n'), err + strlen(err) - 1); /* one line */
    assert_false(exists(pw));
    unlink(errpath);
    ran++;
  }
  if (!ran) skip();
}

int main(void) {
  bin = getenv("ATTN_ATTN_BIN");
  if (!bin || !*bin) {
    fprintf(stderr, "test_cli: ATTN_ATTN_BIN is not set (run through make check)\n");
    return 99;
  }
  /* Everything runs on ref, the one backend every build has. */
  setenv("ATTN_DEVICE", "ref", 1);
  const char *base = getenv("TMPDIR");
  snprintf(dir, sizeof dir, "%s/test_cli.XXXXXX", base && *base ? base : "/tmp");
  if (!mkdtemp(dir)) {
    perror("test_cli: mkdtemp");
    return 99;
  }
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_help_version),
      cmocka_unit_test(test_usage_errors),
      cmocka_unit_test(test_devices),
      cmocka_unit_test(test_run_random),
      cmocka_unit_test(test_run_files_bool_mask),
      cmocka_unit_test(test_run_files_additive_mask),
      cmocka_unit_test(test_run_failures),
      cmocka_unit_test(test_run_options),
      cmocka_unit_test(test_mha),
      cmocka_unit_test(test_run_dtypes),
      cmocka_unit_test(test_mha_16bit),
      cmocka_unit_test(test_killed_writers),
      cmocka_unit_test(test_run_too_big_for_host),
      cmocka_unit_test(test_devices_notes),
      cmocka_unit_test(test_build_error_one_line),
      cmocka_unit_test(test_lazy_module_loading),
      cmocka_unit_test(test_run_address_space_limit),
  };
  return cmocka_run_group_tests(tests, NULL, teardown);
}
