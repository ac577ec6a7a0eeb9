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

#include <math.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "npy.h"
#include "spawn.h"

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
  assert_non_null(strstr(r.out, "0.2.0"));
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
                                "mha2.npy"};
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
      cmocka_unit_test(test_mha),
  };
  return cmocka_run_group_tests(tests, NULL, teardown);
}
