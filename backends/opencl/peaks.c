/* The device's own peaks for the peaks slot of the OpenCL backends, measured
 * the way clpeak does with kernels/peak.cl: fp32 FMA throughput from long
 * chains of independent float8 multiply-adds, and bandwidth from a large
 * buffer copy counting bytes read plus written. Each is the best of a few
 * runs, each run long enough (>= 50 ms) that the host clock around
 * clFinish measures the device and not the launch.
 *
 * The figures are stored in the binary cache (cache.c) under a key naming the
 * platform, device, driver and the kernel source, like the program binaries,
 * so a driver update or a changed kernel measures again. The payload is a
 * short text; an entry that does not parse into two positive finite numbers
 * is ignored and remeasured (cache.c already rejects truncated or corrupt
 * files by their checksum), and so is an FMA figure that a 10 ms probe run
 * beats by PEAK_PLAUSIBLE: one measured while the machine was busy. */
#include "clrt.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define PEAK_MIN_S 0.05 /* each timed run lasts at least this long */
#define PEAK_RUNS 3     /* best of */
#define PEAK_COPY_MAX ((size_t)256 << 20)
/* A cached FMA figure is remeasured when a short probe beats it by this much
 * (runs on a loaded 2-core machine spread up to 2x). */
#define PEAK_PLAUSIBLE 2.0

static double now_s(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return ts.tv_sec + ts.tv_nsec * 1e-9;
}

void clrt_peaks_key(const clrt_ctx *c, char *key, size_t keylen) {
  char pname[128] = "", pver[128] = "", dname[256] = "", dver[128] = "";
  clGetPlatformInfo(c->dev.platform, CL_PLATFORM_NAME, sizeof pname - 1, pname, NULL);
  clGetPlatformInfo(c->dev.platform, CL_PLATFORM_VERSION, sizeof pver - 1, pver, NULL);
  clGetDeviceInfo(c->dev.id, CL_DEVICE_NAME, sizeof dname - 1, dname, NULL);
  clGetDeviceInfo(c->dev.id, CL_DRIVER_VERSION, sizeof dver - 1, dver, NULL);
  const char *src = "";
  size_t len = 0;
  char *owned = NULL;
  /* The source is part of the key: a changed kernel measures again. */
  if (clrt_kernel_source("peak", &src, &len, &owned) != ATTN_OK) src = "", len = 0;
  snprintf(key, keylen,
           "libattn device peaks\nformat=1\nplatform=%s %s\ndevice=%s\ndriver=%s\n"
           "source=peak:%016llx:%zu\n",
           pname, pver, dname, dver, (unsigned long long)clrt_hash(CLRT_FNV_INIT, src, len), len);
  free(owned);
}

/* Run the FMA kernel `iters` long on global work-items in work-groups of
 * local (0: the driver's choice); wall seconds in *s. */
static attn_status time_fma(clrt_ctx *c, cl_kernel k, cl_mem out, size_t global, size_t local,
                            cl_int iters, double *s) {
  cl_float a = 0.999f, b = 1e-3f;
  attn_status st = clrt_set_args(k, 4, CLRT_ARG(out), CLRT_ARG(a), CLRT_ARG(b), CLRT_ARG(iters));
  if (st != ATTN_OK) return st;
  double t0 = now_s();
  if ((st = clrt_enqueue(c, k, 1, &global, local ? &local : NULL)) != ATTN_OK || (st = clrt_finish(c)) != ATTN_OK)
    return st;
  *s = now_s() - t0;
  return ATTN_OK;
}

/* Flops of one work-item's iteration of peak_fma (kernels/peak.cl). */
#define FMA_FLOPS_PER_ITER (2.0 * 16 * 8 * 16)

/* The FMA kernel, its global size and its output buffer (what names it in
 * an allocation failure): enough work-items to fill every compute unit of a
 * GPU several times over; on a CPU the driver packs them into work-groups
 * run by its threads. */
static attn_status fma_setup(clrt_ctx *c, const char *what, cl_kernel *k, size_t *global,
                             cl_mem *out) {
  attn_status st = clrt_kernel_get(c, "peak", NULL, "peak_fma", k);
  if (st != ATTN_OK) return st;
  cl_uint cu = 1;
  clGetDeviceInfo(c->dev.id, CL_DEVICE_MAX_COMPUTE_UNITS, sizeof cu, &cu, NULL);
  *global = (size_t)(cu ? cu : 1) * 1024;
  return clrt_mem_create(c, CL_MEM_WRITE_ONLY, *global * sizeof(float), NULL, what, out);
}

static attn_status measure_fma(clrt_ctx *c, double *gflops) {
  cl_kernel k;
  size_t global;
  cl_mem out;
  attn_status st = fma_setup(c, "the FMA peak", &k, &global, &out);
  if (st != ATTN_OK) return st;
  cl_int iters = 4;
  double s = 0, best = 0;
  /* Double the chain length until a run takes PEAK_MIN_S (the first run also
   * pays for the kernel's first launch), then keep the best of PEAK_RUNS runs
   * for each work-group size tried: the driver's choice, and 16 and 64, which
   * POCL turns into 16- and 64-wide loops over work-items that it may
   * vectorise differently (on a loaded 2-core CPU they measured 65 to 130
   * GFLOP/s apart from run to run, so the best of them is the peak). */
  while ((st = time_fma(c, k, out, global, 0, iters, &s)) == ATTN_OK && s < PEAK_MIN_S &&
         iters < (1 << 24))
    iters *= 2;
  const size_t locals[] = {0, 16, 64};
  for (size_t l = 0; st == ATTN_OK && l < sizeof locals / sizeof locals[0]; l++) {
    if (locals[l] > c->max_wg) continue;
    for (int r = 0; r < PEAK_RUNS; r++) {
      if ((st = time_fma(c, k, out, global, locals[l], iters, &s)) != ATTN_OK) break;
      double flops = FMA_FLOPS_PER_ITER * (double)iters * (double)global;
      if (s > 0 && flops / s > best) best = flops / s;
    }
  }
  clReleaseMemObject(out);
  *gflops = best / 1e9;
  return st;
}

/* A short FMA run (about 10 ms at the rate `expect`): the rate it reaches,
 * best of two. */
static attn_status probe_fma(clrt_ctx *c, double expect, double *gflops) {
  cl_kernel k;
  size_t global;
  cl_mem out;
  attn_status st = fma_setup(c, "the FMA probe", &k, &global, &out);
  if (st != ATTN_OK) return st;
  const double per_iter = FMA_FLOPS_PER_ITER * (double)global;
  double want = expect * 1e9 * 0.01 / per_iter;
  cl_int iters = want < 4 ? 4 : want > (1 << 20) ? (1 << 20) : (cl_int)want;
  double s = 0, best = 0;
  for (int r = 0; st == ATTN_OK && r < 2; r++)
    if ((st = time_fma(c, k, out, global, 0, iters, &s)) == ATTN_OK && s > 0 &&
        per_iter * iters / s > best)
      best = per_iter * iters / s;
  clReleaseMemObject(out);
  *gflops = best / 1e9;
  return st;
}

static attn_status time_copy(clrt_ctx *c, cl_kernel k, size_t global, int reps, double *s) {
  double t0 = now_s();
  attn_status st = ATTN_OK;
  for (int i = 0; i < reps && st == ATTN_OK; i++) st = clrt_enqueue(c, k, 1, &global, NULL);
  if (st == ATTN_OK) st = clrt_finish(c);
  *s = now_s() - t0;
  return st;
}

static attn_status measure_copy(clrt_ctx *c, double *gbps) {
  cl_kernel k;
  attn_status st = clrt_kernel_get(c, "peak", NULL, "peak_copy", &k);
  if (st != ATTN_OK) return st;
  /* Far past any cache, within one allocation and a quarter of the memory. */
  cl_ulong gmem = 0;
  clGetDeviceInfo(c->dev.id, CL_DEVICE_GLOBAL_MEM_SIZE, sizeof gmem, &gmem, NULL);
  size_t bytes = PEAK_COPY_MAX;
  if (c->max_alloc && bytes > c->max_alloc) bytes = (size_t)c->max_alloc;
  if (gmem && bytes > gmem / 4) bytes = (size_t)(gmem / 4);
  bytes &= ~(size_t)4095;
  if (bytes < 4096) return clrt_host()->error(ATTN_ERR_DEVICE_MEMORY,
                                              "too little device memory for the copy peak");
  cl_mem src, dst;
  if ((st = clrt_mem_create(c, CL_MEM_READ_ONLY, bytes, NULL, "the copy peak", &src)))
    return st;
  if ((st = clrt_mem_create(c, CL_MEM_WRITE_ONLY, bytes, NULL, "the copy peak", &dst))) {
    clReleaseMemObject(src);
    return st;
  }
  size_t global = bytes / 16; /* one float4 per work-item */
  double s = 0, best = 0;
  st = clrt_set_args(k, 2, CLRT_ARG(src), CLRT_ARG(dst));
  /* The first copy also faults the pages in (drivers allocate lazily). */
  if (st == ATTN_OK) st = time_copy(c, k, global, 1, &s);
  if (st == ATTN_OK) st = time_copy(c, k, global, 1, &s);
  /* Back-to-back copies so that a run lasts PEAK_MIN_S even on a fast GPU. */
  int reps = s > 0 ? (int)ceil(PEAK_MIN_S / s) : 1;
  if (reps < 1) reps = 1;
  if (reps > 1000) reps = 1000;
  for (int r = 0; st == ATTN_OK && r < PEAK_RUNS; r++) {
    if ((st = time_copy(c, k, global, reps, &s)) != ATTN_OK) break;
    double rate = 2.0 * (double)bytes * reps / s; /* read + written */
    if (s > 0 && rate > best) best = rate;
  }
  clReleaseMemObject(src);
  clReleaseMemObject(dst);
  *gbps = best / 1e9;
  return st;
}

attn_status clrt_peaks(clrt_ctx *c, bool refresh, double *gflops, double *gbps) {
  const attn_host *host = clrt_host();
  char key[1024];
  clrt_peaks_key(c, key, sizeof key);
  double old_f = 0, old_b = 0; /* a cached figure found implausibly low */
  if (!refresh) {
    unsigned char *bin = NULL;
    size_t len = 0;
    if (clrt_cache_load(key, &bin, &len)) {
      char text[128];
      double f = 0, b = 0;
      size_t n = len < sizeof text - 1 ? len : sizeof text - 1;
      memcpy(text, bin, n);
      text[n] = '\0';
      free(bin);
      if (sscanf(text, "gflops %lf\ngbps %lf", &f, &b) == 2 && isfinite(f) && f > 0 &&
          isfinite(b) && b > 0) {
        /* A figure measured while the machine was loaded would be kept for
         * ever (11 GFLOP/s was seen cached for a CPU whose FMA peak is over
         * 150): a 10 ms probe that beats it by PEAK_PLAUSIBLE measures again. */
        double q = 0;
        if (probe_fma(c, f, &q) != ATTN_OK || q <= PEAK_PLAUSIBLE * f) {
          *gflops = f;
          *gbps = b;
          return ATTN_OK;
        }
        host->debug("opencl: cached peak %.1f GFLOP/s is implausibly low (a probe reached "
                    "%.1f); measuring again", f, q);
        old_f = f, old_b = b;
      } else {
        host->debug("opencl: cached peaks do not parse; measuring again");
      }
    }
  }
  double f = 0, b = 0;
  attn_status st = measure_fma(c, &f);
  if (st == ATTN_OK) st = measure_copy(c, &b);
  if (st != ATTN_OK) return st;
  if (!(f > 0 && b > 0))
    return host->error(ATTN_ERR_BACKEND, "peaks: the timer saw no time pass (%g GFLOP/s, %g GB/s)",
                       f, b);
  /* Remeasured because the old figure was too low: never store a lower one. */
  if (old_f > f) f = old_f;
  if (old_b > b) b = old_b;
  host->debug("opencl: peaks %.1f GFLOP/s fp32 FMA, %.1f GB/s copy", f, b);
  char text[128];
  int n = snprintf(text, sizeof text, "gflops %.17g\ngbps %.17g\n", f, b);
  clrt_cache_store(key, (const unsigned char *)text, (size_t)n);
  *gflops = f;
  *gbps = b;
  return ATTN_OK;
}

attn_status clrt_peaks_slot(attn_backend_ctx *ctx, bool refresh, double *gflops, double *gbps) {
  /* The backends' contexts begin with their clrt_ctx (see clrt.h), and a
   * pointer to a struct points to its first member. */
  return clrt_peaks((clrt_ctx *)(void *)ctx, refresh, gflops, gbps);
}
