/* The clblast backend: attention on OpenCL devices (GPUs first) through
 * CLBlast's GEMMs and the small kernels of kernels/clblast_sdpa.cl, on the
 * shared OpenCL runtime (backends/opencl/clrt.h).
 *
 *   linear  y = x W^T (one strided-batched GEMM), then y += bias (add4d)
 *   sdpa    per batch item and tile of queries:
 *             S = scale * Q K^T      strided-batched GEMM over heads
 *             P = softmax(S + ...)   softmax_rows, in place, with softcap, ALiBi,
 *                                    the mask, sinks, weights/lse
 *             O = P V                strided-batched GEMM over heads, over the
 *                                    keys every row of the tile sees; pv_rows
 *                                    adds the keys near the edges of the rows'
 *                                    ranges (causal diagonal, window)
 *           The scores of one tile ([Hq, tile, keys]) stay on the device and the
 *           tile is chosen so that they fit SCORE_BUDGET, so device memory is
 *           bounded whatever Sq and Skv are. Keys no row of the tile can see
 *           (kv_lens, causal, window) are neither computed nor read.
 *
 * Known limit: a key hidden by a boolean mask is still read by the P V GEMM
 * with probability 0, so a NaN/inf in its value gives NaN (0 * NaN), where
 * ref skips it; keys hidden by causal or kv_lens are never read.
 *
 * Tuning: CLBlast picks its kernel parameters from its built-in database by
 * device vendor, type and name. POCL's CPU device is not in it, so CLBlast
 * silently uses its defaults (no message; Debian ships no tuner binaries),
 * which reach ~7 GFLOP/s on this machine's POCL: clblast on POCL is for
 * testing, the pocl backend is the CPU path.
 *
 * 16-bit storage (f16, bf16, any mix over any operand): converted on the
 * device to fp32 scratch and back around the fp32 path (kernels/convert.cl;
 * see "the convert path" below for why not CLBlast's half routines).
 *
 * Every GEMM goes through CLBlastSgemmStridedBatched (batch 1 when nothing is
 * batched): CLBlast compiles one program per routine and device on first use,
 * which takes seconds on POCL, so one routine family keeps start-up short.
 * Everything is enqueued on the context's one in-order queue: no stage waits
 * for the host, and temporaries are released right after being enqueued
 * (OpenCL keeps a released buffer alive until the work using it completes).
 */
#include "clrt.h" /* first: it picks the OpenCL API version for CL/cl.h */

#include <clblast_c.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "attn_plugin.h"
#include "flash.h"

#define KERNELS "clblast_sdpa"
/* f16/bf16 <-> f32 conversions (kernels/convert.cl), built on first use. */
#define CONVERT "convert"
/* Bytes of scores one SDPA tile may hold on the device. */
#define SCORE_BUDGET ((size_t)256 << 20)
#define SCORE_BUDGET_CPU ((size_t)64 << 20)
#define MAX_DEVICES 64
/* Query rows per tile when causal (bounds the work of pv_rows per row). */
#define CAUSAL_TILE 64
/* Largest D and Dv the fused kernel takes (its accumulators are registers). */
#define FLASH_MAX_HEAD_DIM 512

static const attn_host *host;
static clrt_device devices[MAX_DEVICES];
static int ndevices = -1; /* -1: not enumerated yet */

/* The SDPA paths: the fused kernel (flash.c), CLBlast GEMMs, or the fused
 * kernel for few query rows (Sq <= CLB_FEW_ROWS) and GEMMs otherwise. */
typedef enum { CLB_SDPA_FUSED, CLB_SDPA_GEMM, CLB_SDPA_FEW_ROWS } clb_sdpa_path;
#define CLB_FEW_ROWS 8

struct attn_backend_ctx {
  clrt_ctx cl;
  char opts[64];   /* build options of our kernels (-DSM_WG=...) */
  size_t sm_wg;    /* work-group size of softmax_rows */
  attn_buffer *scores; /* grow-only scratch for one tile of scores */
  size_t score_budget;  /* bytes one tile of scores may take */
  bool has_fp16;        /* the device reports cl_khr_fp16 (only logged: see convert path) */
  clb_flash_params flash; /* tiles of the fused kernel (flash.c) */
  int sdpa_path;        /* clb_sdpa_path: which SDPA path runs */
};

/* ---- errors ------------------------------------------------------------------ */

static const char *clblast_status_name(CLBlastStatusCode s) {
  switch (s) {
#define E(x) case x: return #x;
    E(CLBlastNotImplemented) E(CLBlastInvalidMatrixA) E(CLBlastInvalidMatrixB)
    E(CLBlastInvalidMatrixC) E(CLBlastInvalidVectorX) E(CLBlastInvalidVectorY)
    E(CLBlastInvalidDimension) E(CLBlastInvalidLeadDimA) E(CLBlastInvalidLeadDimB)
    E(CLBlastInvalidLeadDimC) E(CLBlastInvalidIncrementX) E(CLBlastInvalidIncrementY)
    E(CLBlastInsufficientMemoryA) E(CLBlastInsufficientMemoryB) E(CLBlastInsufficientMemoryC)
    E(CLBlastInsufficientMemoryX) E(CLBlastInsufficientMemoryY) E(CLBlastInsufficientMemoryTemp)
    E(CLBlastInvalidBatchCount) E(CLBlastInvalidOverrideKernel) E(CLBlastMissingOverrideParameter)
    E(CLBlastInvalidLocalMemUsage) E(CLBlastNoHalfPrecision) E(CLBlastNoDoublePrecision)
    E(CLBlastInvalidVectorScalar) E(CLBlastInsufficientMemoryScalar) E(CLBlastDatabaseError)
    E(CLBlastUnknownError) E(CLBlastUnexpectedError)
#undef E
  default: return "CLBlastUnknownStatus";
  }
}

/* CLBlast reuses OpenCL's codes above -1000 (those go through clrt for the
 * CL name and status); its own codes become ATTN_ERR_BACKEND. */
static attn_status gemm_fail(CLBlastStatusCode s, const char *what) {
  if (s > -1000) return clrt_fail((cl_int)s, "%s: CLBlast GEMM", what);
  return host->error(ATTN_ERR_BACKEND, "%s: CLBlast GEMM: %s (%d)", what,
                     clblast_status_name(s), (int)s);
}

/* ---- module slots -------------------------------------------------------------- */

static attn_status clb_init(const attn_host *h) {
  host = h;
  clrt_init(h);
  return ATTN_OK;
}

/* Every OpenCL device, GPUs first (index 0 is the first GPU when there is
 * one), enumerated once: probe and device_info run under the loader lock. */
static int clb_probe(void) {
  if (ndevices < 0)
    ndevices = clrt_find_devices(CL_DEVICE_TYPE_ALL, NULL, true, devices, MAX_DEVICES);
  return ndevices;
}

static attn_status clb_device_info(int index, attn_device_info *info) {
  if (index < 0 || index >= clb_probe())
    return host->error(ATTN_ERR_INVALID_ARG, "device index %d out of range [0, %d)", index,
                       clb_probe());
  attn_status st = clrt_device_info(&devices[index], info);
  if (st != ATTN_OK) return st;
  snprintf(info->backend, sizeof info->backend, "clblast");
  info->index = index;
  return ATTN_OK;
}

/* Does the device list cl_khr_fp16? A failed query counts as no. */
static bool device_has_fp16(cl_device_id id) {
  size_t len = 0;
  if (clGetDeviceInfo(id, CL_DEVICE_EXTENSIONS, 0, NULL, &len) != CL_SUCCESS || !len) return false;
  char *ext = malloc(len + 1);
  if (!ext) return false;
  bool yes = false;
  if (clGetDeviceInfo(id, CL_DEVICE_EXTENSIONS, len, ext, NULL) == CL_SUCCESS) {
    ext[len] = '\0';
    yes = strstr(ext, "cl_khr_fp16") != NULL;
  }
  free(ext);
  return yes;
}

static void clb_close(attn_backend_ctx *c);

/* Which SDPA path a context takes: ATTN_CLBLAST_SDPA=fused or =gemm, else
 * the fused kernel on GPUs and accelerators (where it was written for); on
 * CPU devices the fused kernel for few query rows and the GEMM path for the
 * rest, as measured on POCL (BENCHMARKS.md: decode Hq=32/8 D=128 Skv=8192
 * 1.8x faster fused, prefill S=1024 D=64 1.5x faster by GEMM). */
static clb_sdpa_path clb_flash_default(attn_backend_ctx *c) {
  const char *env = getenv("ATTN_CLBLAST_SDPA");
  clb_sdpa_path path = c->cl.dev.type & CL_DEVICE_TYPE_CPU ? CLB_SDPA_FEW_ROWS : CLB_SDPA_FUSED;
  if (env && strcmp(env, "fused") == 0) path = CLB_SDPA_FUSED;
  if (env && strcmp(env, "gemm") == 0) path = CLB_SDPA_GEMM;
  if (path != CLB_SDPA_GEMM && !c->flash.usable) {
    host->debug("clblast: the fused kernel cannot run on this device; sdpa uses the GEMM path");
    path = CLB_SDPA_GEMM;
  }
  return path;
}

/* Contexts open in this process (clb_close empties CLBlast's cache at 0). */
static pthread_mutex_t open_lock = PTHREAD_MUTEX_INITIALIZER;
static int open_contexts;

static attn_status clb_open(int index, attn_backend_ctx **out) {
  if (index < 0 || index >= clb_probe())
    return host->error(ATTN_ERR_INVALID_ARG, "device index %d out of range [0, %d)", index,
                       clb_probe());
  attn_backend_ctx *c = calloc(1, sizeof *c);
  if (!c) return host->error(ATTN_ERR_NOMEM, "clblast: out of host memory");
  attn_status st = clrt_ctx_init(&c->cl, &devices[index]);
  if (st != ATTN_OK) {
    clrt_ctx_release(&c->cl);
    free(c);
    return st;
  }
  pthread_mutex_lock(&open_lock);
  open_contexts++;
  pthread_mutex_unlock(&open_lock);
  /* The softmax reduction needs a power-of-two work-group the device allows. */
  c->sm_wg = 64;
  while (c->sm_wg > 1 && c->sm_wg > c->cl.max_wg) c->sm_wg /= 2;
  snprintf(c->opts, sizeof c->opts, "-DSM_WG=%zu", c->sm_wg);
  /* ATTN_CLBLAST_SCORE_BYTES shrinks the tile budget so that tests can cover
   * many tiles with small problems. */
  c->score_budget = SCORE_BUDGET;
  /* On a CPU device the scores live in host memory, next to everything else
   * the process holds: a smaller tile, still hundreds of rows long. */
  if (c->cl.dev.type & CL_DEVICE_TYPE_CPU) c->score_budget = SCORE_BUDGET_CPU;
  const char *env = getenv("ATTN_CLBLAST_SCORE_BYTES");
  if (env && *env) {
    char *end;
    unsigned long long v = strtoull(env, &end, 10);
    if (*end == '\0' && v > 0) c->score_budget = (size_t)v;
  }
  if (c->cl.max_alloc && c->score_budget > c->cl.max_alloc)
    c->score_budget = (size_t)c->cl.max_alloc;
  c->has_fp16 = device_has_fp16(c->cl.dev.id);
  clb_flash_params_init(&c->cl, &c->flash);
  c->sdpa_path = (int)clb_flash_default(c);
  /* Build our kernels now so that a broken kernel fails the open, not a run. */
  cl_program prog;
  st = clrt_program_get(&c->cl, KERNELS, c->opts, &prog);
  if (st != ATTN_OK) {
    clb_close(c); /* counted as open above */
    return st;
  }
  *out = c;
  return ATTN_OK;
}

static void clb_close(attn_backend_ctx *c) {
  if (!c) return;
  clrt_ctx_release(&c->cl); /* frees the scratch with every other buffer */
  free(c);
  /* CLBlast keeps the programs it builds for a context (and the context
   * with them) in a process-wide cache it never drops: about 3 MB per
   * context that ran a GEMM. Once no context of ours is open nobody can
   * use them, so empty it then. */
  pthread_mutex_lock(&open_lock);
  if (--open_contexts == 0) CLBlastClearCache();
  pthread_mutex_unlock(&open_lock);
}

static attn_status clb_buffer_alloc(attn_backend_ctx *c, size_t bytes, attn_buffer **buf) {
  return clrt_buffer_alloc(&c->cl, bytes, buf);
}
static void clb_buffer_free(attn_backend_ctx *c, attn_buffer *buf) {
  clrt_buffer_free(&c->cl, buf);
}
static attn_status clb_buffer_write(attn_backend_ctx *c, attn_buffer *buf, size_t offset,
                                    size_t bytes, const void *src) {
  return clrt_buffer_write(&c->cl, buf, offset, bytes, src);
}
static attn_status clb_buffer_read(attn_backend_ctx *c, attn_buffer *buf, size_t offset,
                                   size_t bytes, void *dst) {
  return clrt_buffer_read(&c->cl, buf, offset, bytes, dst);
}
static attn_status clb_synchronize(attn_backend_ctx *c) { return clrt_finish(&c->cl); }

/* Every stage descriptor the core accepts can be run: views CLBlast cannot
 * express are copied into contiguous temporaries first, and 16-bit operands
 * (any mix, on any operand) go through fp32 scratch (see the convert path). */
#define CLB_DTYPE_FEATURES (ATTN_FEAT_F16 | ATTN_FEAT_BF16)
#define CLB_LINEAR_FEATURES (ATTN_FEAT_BIAS | ATTN_FEAT_W_STRIDED | CLB_DTYPE_FEATURES)
#define CLB_SDPA_FEATURES                                                                  \
  (ATTN_FEAT_MASK_BOOL | ATTN_FEAT_MASK_ADDITIVE | ATTN_FEAT_CAUSAL | ATTN_FEAT_KV_LENS |   \
   ATTN_FEAT_WEIGHTS | ATTN_FEAT_LSE | CLB_DTYPE_FEATURES | ATTN_FEAT_POSITIONS |           \
   ATTN_FEAT_WINDOW | ATTN_FEAT_SOFTCAP | ATTN_FEAT_ALIBI | ATTN_FEAT_SINKS)
#define CLB_MERGE_FEATURES (ATTN_FEAT_LSE | CLB_DTYPE_FEATURES)

static attn_status clb_supports(attn_backend_ctx *c, attn_stage stage, const void *desc,
                                char *why, size_t why_len) {
  (void)c;
  if (stage == ATTN_STAGE_MERGE) {
    const int bit = attn_feature_unknown(((const attn_merge_desc *)desc)->features,
                                         CLB_MERGE_FEATURES);
    if (bit < 0) return ATTN_OK;
    char buf[32];
    snprintf(why, why_len, "clblast: merge cannot do %s", attn_feature_name(bit, buf, sizeof buf));
    return ATTN_ERR_UNSUPPORTED;
  }
  if (stage == ATTN_STAGE_ROPE || stage == ATTN_STAGE_RMSNORM) {
    const int rope = stage == ATTN_STAGE_ROPE;
    const uint64_t f = rope ? ((const attn_rope_desc *)desc)->features
                            : ((const attn_rmsnorm_desc *)desc)->features;
    const int bit = attn_feature_unknown(f, rope ? CLRT_ROPE_FEATURES : CLRT_RMSNORM_FEATURES);
    if (bit < 0) return ATTN_OK;
    char buf[32];
    snprintf(why, why_len, "clblast: %s cannot do %s", rope ? "rope" : "rmsnorm",
             attn_feature_name(bit, buf, sizeof buf));
    return ATTN_ERR_UNSUPPORTED;
  }
  if (stage == ATTN_STAGE_LINEAR || stage == ATTN_STAGE_SDPA) {
    const uint64_t f = stage == ATTN_STAGE_LINEAR ? ((const attn_linear_desc *)desc)->features
                                                  : ((const attn_sdpa_desc *)desc)->features;
    const int bit = attn_feature_unknown(
        f, stage == ATTN_STAGE_LINEAR ? CLB_LINEAR_FEATURES : CLB_SDPA_FEATURES);
    if (bit < 0) return ATTN_OK;
    char buf[32];
    snprintf(why, why_len, "clblast: %s cannot do %s",
             stage == ATTN_STAGE_LINEAR ? "linear" : "sdpa",
             attn_feature_name(bit, buf, sizeof buf));
    return ATTN_ERR_UNSUPPORTED;
  }
  snprintf(why, why_len, "clblast: unknown stage %d", (int)stage);
  return ATTN_ERR_UNSUPPORTED;
}

/* ---- helpers ---------------------------------------------------------------------- */

/* Four int64 on the host side, turned into a kernel's long4 at the last
 * moment (cl_long4 itself is 32-byte aligned and awkward to pass around). */
typedef struct i64x4 {
  int64_t s[4];
} i64x4;
static i64x4 long4_of(int64_t a, int64_t b, int64_t c, int64_t d) {
  i64x4 v = {{a, b, c, d}};
  return v;
}
static cl_long4 to_cl(i64x4 v) {
  cl_long4 r;
  for (int i = 0; i < 4; i++) r.s[i] = v.s[i];
  return r;
}

/* Enqueue kernel kname of program prog with copy4d's signature: dst view
 * (op)= src view over shape. */
static attn_status enqueue_4d(attn_backend_ctx *c, const char *prog, const char *kname,
                              cl_mem src, int64_t s_off, i64x4 s_str4, cl_mem dst, int64_t d_off,
                              i64x4 d_str4, i64x4 shape4) {
  cl_kernel k;
  attn_status st = clrt_kernel_get(&c->cl, prog, c->opts, kname, &k);
  if (st != ATTN_OK) return st;
  cl_ulong so = (cl_ulong)s_off, dof = (cl_ulong)d_off;
  cl_long4 s_str = to_cl(s_str4), d_str = to_cl(d_str4), shape = to_cl(shape4);
  cl_ulong n = (cl_ulong)(shape.s[0] * shape.s[1] * shape.s[2] * shape.s[3]);
  st = clrt_set_args(k, 8, CLRT_ARG(src), CLRT_ARG(so), CLRT_ARG(s_str), CLRT_ARG(dst),
                     CLRT_ARG(dof), CLRT_ARG(d_str), CLRT_ARG(shape), CLRT_ARG(n));
  if (st != ATTN_OK) return st;
  size_t local = 64, global = clrt_round_up((size_t)n, local);
  return clrt_enqueue(&c->cl, k, 1, &global, &local);
}

/* copy4d or add4d of kernels/clblast_sdpa.cl. */
static attn_status enqueue_elementwise(attn_backend_ctx *c, const char *kname, cl_mem src,
                                       int64_t s_off, i64x4 s_str4, cl_mem dst, int64_t d_off,
                                       i64x4 d_str4, i64x4 shape4) {
  return enqueue_4d(c, KERNELS, kname, src, s_off, s_str4, dst, d_off, d_str4, shape4);
}

/* A row-major matrix operand as CLBlast takes it. */
typedef struct gemm_mat {
  cl_mem mem;
  size_t off; /* elements */
  size_t ld;
} gemm_mat;

/* Can CLBlast read rows x cols of this view with rows at strides[2]? It needs
 * unit column stride and a leading dimension of at least cols. */
static int view_gemmable(const attn_view *v) {
  int64_t rows = v->shape[2], cols = v->shape[3];
  if (cols > 1 && v->strides[3] != 1) return 0;
  return rows == 1 || v->strides[2] >= cols;
}
static size_t view_ld(const attn_view *v) {
  return v->shape[2] == 1 ? (size_t)v->shape[3] : (size_t)v->strides[2];
}

/* A view whose columns are contiguous instead (rows at unit stride: a
 * row-major [cols, rows] matrix seen transposed, as GPT-2's Conv1D [in, out]
 * weights are), which CLBlast reads with the other transpose flag, leading
 * dimension strides[3]. */
static int view_gemmable_t(const attn_view *v) {
  int64_t rows = v->shape[2], cols = v->shape[3];
  if (rows > 1 && v->strides[2] != 1) return 0;
  return cols == 1 || v->strides[3] >= rows;
}

/* A copy of view v into a new contiguous buffer (*tmp, released by the
 * caller), or v itself when CLBlast can use it as it is. *out is v with its
 * buffer, offset and strides replaced where a copy was made. */
static attn_status gemm_input(attn_backend_ctx *c, const attn_view *v, attn_buffer **tmp,
                              attn_view *out) {
  *out = *v;
  *tmp = NULL;
  if (view_gemmable(v)) return ATTN_OK;
  const int64_t *sh = v->shape;
  size_t n = (size_t)(sh[0] * sh[1] * sh[2] * sh[3]);
  attn_status st = clrt_buffer_alloc(&c->cl, n * sizeof(float), tmp);
  if (st != ATTN_OK) return st;
  i64x4 cstr = long4_of(sh[1] * sh[2] * sh[3], sh[2] * sh[3], sh[3], 1);
  st = enqueue_elementwise(c, "copy4d", v->buf->mem, v->offset,
                           long4_of(v->strides[0], v->strides[1], v->strides[2], v->strides[3]),
                           (*tmp)->mem, 0, cstr, long4_of(sh[0], sh[1], sh[2], sh[3]));
  if (st != ATTN_OK) {
    clrt_buffer_free(&c->cl, *tmp);
    *tmp = NULL;
    return st;
  }
  out->buf = *tmp;
  out->offset = 0;
  for (int i = 0; i < 4; i++) out->strides[i] = cstr.s[i];
  return ATTN_OK;
}

/* C[b] = alpha * A[b] op(B[b]) for b < batch, row-major, beta = 0 (CLBlast
 * then never reads C, so NaN-poisoned outputs are fine). */
static attn_status gemm(attn_backend_ctx *c, const char *what, bool trans_b, size_t m,
                        size_t n, size_t k, float alpha, gemm_mat a, size_t a_stride,
                        gemm_mat b, size_t b_stride, gemm_mat cm, size_t c_stride,
                        size_t batch) {
  /* CLBlast refuses a zero C stride (CLBlastInvalidDimension) even for one
   * batch, where the stride means nothing. */
  if (batch == 1) c_stride = m * cm.ld;
  CLBlastStatusCode s = CLBlastSgemmStridedBatched(
      CLBlastLayoutRowMajor, CLBlastTransposeNo, trans_b ? CLBlastTransposeYes : CLBlastTransposeNo,
      m, n, k, alpha, a.mem, a.off, a.ld, a_stride, b.mem, b.off, b.ld, b_stride, 0.0f, cm.mem,
      cm.off, cm.ld, c_stride, batch, &c->cl.queue, NULL);
  return s == CLBlastSuccess ? ATTN_OK : gemm_fail(s, what);
}

/* ---- linear ----------------------------------------------------------------------- */

/* y[b] = x[b] W^T + bias with x [1,B,M,K], w [1,1,N,K], y [1,B,M,N]. */
static attn_status clb_linear_f32(attn_backend_ctx *c, const attn_linear_desc *d) {
  const int64_t B = d->x.shape[1], M = d->x.shape[2], K = d->x.shape[3], N = d->w.shape[2];
  attn_buffer *tx = NULL, *tw = NULL, *ty = NULL;
  attn_view x, w, y = d->y;
  attn_status st = gemm_input(c, &d->x, &tx, &x);
  /* W^T is a plain GEMM operand when w is a transposed [K, N] matrix
   * (ATTN_FEAT_W_STRIDED): no copy, the transpose flag off. */
  const bool w_t = !view_gemmable(&d->w) && view_gemmable_t(&d->w);
  if (st == ATTN_OK && w_t) w = d->w;
  else if (st == ATTN_OK) st = gemm_input(c, &d->w, &tw, &w);
  /* An output CLBlast cannot write is computed contiguously, then scattered. */
  if (st == ATTN_OK && !view_gemmable(&d->y)) {
    st = clrt_buffer_alloc(&c->cl, (size_t)(B * M * N) * sizeof(float), &ty);
    if (st == ATTN_OK) {
      y.buf = ty;
      y.offset = 0;
      y.strides[0] = y.strides[1] = M * N;
      y.strides[2] = N;
      y.strides[3] = 1;
    }
  }
  if (st == ATTN_OK) {
    gemm_mat a = {x.buf->mem, (size_t)x.offset, view_ld(&x)};
    gemm_mat b = {w.buf->mem, (size_t)w.offset,
                  w_t ? (w.shape[3] == 1 ? (size_t)w.shape[2] : (size_t)w.strides[3]) : view_ld(&w)};
    gemm_mat cm = {y.buf->mem, (size_t)y.offset, view_ld(&y)};
    /* Batches laid out one after another are one taller matrix. */
    if (B == 1 || (x.strides[1] == M * (int64_t)a.ld && y.strides[1] == M * (int64_t)cm.ld))
      st = gemm(c, "linear", !w_t, (size_t)(B * M), (size_t)N, (size_t)K, 1.0f, a, 0, b, 0, cm,
                0, 1);
    else
      st = gemm(c, "linear", !w_t, (size_t)M, (size_t)N, (size_t)K, 1.0f, a,
                (size_t)x.strides[1], b, 0, cm, (size_t)y.strides[1], (size_t)B);
  }
  if (st == ATTN_OK && ty)
    st = enqueue_elementwise(c, "copy4d", ty->mem, 0, long4_of(0, M * N, N, 1), d->y.buf->mem,
                             d->y.offset,
                             long4_of(0, d->y.strides[1], d->y.strides[2], d->y.strides[3]),
                             long4_of(1, B, M, N));
  if (st == ATTN_OK && d->bias.buf)
    st = enqueue_elementwise(c, "add4d", d->bias.buf->mem, d->bias.offset,
                             long4_of(0, 0, 0, d->bias.strides[3]), d->y.buf->mem, d->y.offset,
                             long4_of(0, d->y.strides[1], d->y.strides[2], d->y.strides[3]),
                             long4_of(1, B, M, N));
  clrt_buffer_free(&c->cl, tx);
  clrt_buffer_free(&c->cl, tw);
  clrt_buffer_free(&c->cl, ty);
  return st;
}

/* ---- sdpa ------------------------------------------------------------------------- */

/* The grow-only score scratch, at least bytes long. The old buffer is only
 * released: queued work still using it keeps it alive. */
static attn_status scores_reserve(attn_backend_ctx *c, size_t bytes) {
  if (c->scores && c->scores->bytes >= bytes) return ATTN_OK;
  clrt_buffer_free(&c->cl, c->scores);
  c->scores = NULL;
  return clrt_buffer_alloc(&c->cl, bytes, &c->scores);
}

/* How the query heads of one batch item are split into GEMM calls: call o
 * of nouter covers heads h = o*oh + i*ih for i < ninner (the batch), whose kv
 * head is o*ok + i*ik. With group g = Hq/Hkv, query head h uses kv head h/g. */
typedef struct head_split {
  int64_t nouter, ninner, oh, ih, ok, ik;
} head_split;

static head_split split_heads(int64_t Hq, int64_t Hkv) {
  int64_t g = Hq / Hkv;
  head_split s;
  if (Hkv >= g) {
    /* call r < g batches the kv heads: query head hk*g + r reads kv head hk */
    s.nouter = g, s.ninner = Hkv, s.oh = 1, s.ih = g, s.ok = 0, s.ik = 1;
  } else {
    /* call hk batches the g query heads that share kv head hk (K stride 0) */
    s.nouter = Hkv, s.ninner = g, s.oh = g, s.ih = 1, s.ok = 1, s.ik = 0;
  }
  return s;
}

static attn_status enqueue_softmax(attn_backend_ctx *c, const attn_sdpa_desc *d,
                                   const clrt_sdpa_opts *op, int64_t b, int64_t i0, int64_t T,
                                   int64_t klo, int64_t ld, int64_t kvlen) {
  cl_kernel k;
  attn_status st = clrt_kernel_get(&c->cl, KERNELS, c->opts, "softmax_rows", &k);
  if (st != ATTN_OK) return st;
  /* Absent optional operands still need a valid buffer argument: pass the
   * scores, which the flags keep the kernel from touching that way. */
  cl_mem s_mem = c->scores->mem;
  cl_ulong s_off = 0;
  cl_int ld_ = (cl_int)ld, T_ = (cl_int)T, i0_ = (cl_int)i0, klo_ = (cl_int)klo,
         Skv = (cl_int)d->k.shape[2], kvlen_ = (cl_int)kvlen;
  const attn_view *mv = &d->mask, *wv = &d->weights, *lv = &d->lse;
  cl_mem m_mem = mv->buf ? mv->buf->mem : s_mem;
  cl_ulong m_off = mv->buf ? (cl_ulong)(mv->offset + b * mv->strides[0]) : 0;
  cl_long4 m_str = to_cl(long4_of(mv->strides[0], mv->strides[1], mv->strides[2], mv->strides[3]));
  cl_int mkind = mv->buf ? (cl_int)d->mask_kind : 0;
  cl_mem w_mem = wv->buf ? wv->buf->mem : s_mem;
  cl_ulong w_off = wv->buf ? (cl_ulong)(wv->offset + b * wv->strides[0]) : 0;
  cl_long4 w_str = to_cl(long4_of(wv->strides[0], wv->strides[1], wv->strides[2], wv->strides[3]));
  cl_int has_w = wv->buf != NULL;
  cl_mem l_mem = lv->buf ? lv->buf->mem : s_mem;
  cl_ulong l_off = lv->buf ? (cl_ulong)(lv->offset + b * lv->strides[0]) : 0;
  cl_long4 l_str = to_cl(long4_of(lv->strides[0], lv->strides[1], lv->strides[2], lv->strides[3]));
  cl_int has_l = lv->buf != NULL;
  st = clrt_set_args(k, 20 + CLRT_OPTS_NARGS, CLRT_ARG(s_mem), CLRT_ARG(s_off), CLRT_ARG(ld_),
                     CLRT_ARG(T_), CLRT_ARG(i0_), CLRT_ARG(klo_), CLRT_ARG(Skv),
                     CLRT_ARG(kvlen_), CLRT_ARG(m_mem), CLRT_ARG(m_off), CLRT_ARG(m_str),
                     CLRT_ARG(mkind), CLRT_ARG(w_mem), CLRT_ARG(w_off), CLRT_ARG(w_str),
                     CLRT_ARG(has_w), CLRT_ARG(l_mem), CLRT_ARG(l_off), CLRT_ARG(l_str),
                     CLRT_ARG(has_l), CLRT_OPTS_ARGS(*op));
  if (st != ATTN_OK) return st;
  size_t local = c->sm_wg, global = (size_t)(d->q.shape[1] * T) * local;
  return clrt_enqueue(&c->cl, k, 1, &global, &local);
}

/* out tile (+)= P V over keys [j_lo, j_hi), each row reading only the keys it
 * sees; P's column 0 is key klo; the tile's output is at o_mem + o_off with
 * strides o_str [., h, t, e]. */
static attn_status enqueue_pv_rows(attn_backend_ctx *c, const attn_sdpa_desc *d,
                                   const clrt_sdpa_opts *op, const attn_view *v, int64_t b,
                                   int64_t i0, int64_t T, int64_t klo, int64_t ld,
                                   int64_t kvlen, int64_t j_lo, int64_t j_hi, bool accumulate,
                                   cl_mem o_mem, size_t o_off, i64x4 o_str) {
  cl_kernel k;
  attn_status st = clrt_kernel_get(&c->cl, KERNELS, c->opts, "pv_rows", &k);
  if (st != ATTN_OK) return st;
  const int64_t Hq = d->q.shape[1], Dv = d->v.shape[3];
  cl_mem p_mem = c->scores->mem, v_mem = v->buf->mem;
  cl_int ld_ = (cl_int)ld, T_ = (cl_int)T, i0_ = (cl_int)i0, klo_ = (cl_int)klo,
         kvlen_ = (cl_int)kvlen, lo = (cl_int)j_lo, hi = (cl_int)j_hi,
         group = (cl_int)(Hq / d->k.shape[1]), acc = accumulate;
  cl_ulong v_off = (cl_ulong)(v->offset + b * v->strides[0]), o_off_ = (cl_ulong)o_off;
  cl_long4 v_str = to_cl(long4_of(v->strides[0], v->strides[1], v->strides[2], v->strides[3]));
  cl_long4 o_str_ = to_cl(o_str);
  st = clrt_set_args(k, 16 + CLRT_OPTS_NARGS, CLRT_ARG(p_mem), CLRT_ARG(ld_), CLRT_ARG(T_),
                     CLRT_ARG(i0_), CLRT_ARG(klo_), CLRT_ARG(kvlen_), CLRT_ARG(lo), CLRT_ARG(hi),
                     CLRT_ARG(group), CLRT_ARG(v_mem), CLRT_ARG(v_off), CLRT_ARG(v_str),
                     CLRT_ARG(o_mem), CLRT_ARG(o_off_), CLRT_ARG(o_str_), CLRT_ARG(acc),
                     CLRT_OPTS_ARGS(*op));
  if (st != ATTN_OK) return st;
  size_t global[3] = {(size_t)Dv, (size_t)T, (size_t)Hq};
  return clrt_enqueue(&c->cl, k, 3, global, NULL);
}

static attn_status clb_sdpa_f32(attn_backend_ctx *c, const attn_sdpa_desc *d) {
  const int64_t B = d->q.shape[0], Hq = d->q.shape[1], Sq = d->q.shape[2], D = d->q.shape[3];
  const int64_t Hkv = d->k.shape[1], Skv = d->k.shape[2], Dv = d->v.shape[3];
  if (Sq > INT32_MAX || Skv > INT32_MAX)
    return host->error(ATTN_ERR_UNSUPPORTED, "clblast: sequence lengths above 2^31 - 1");
  const head_split hs = split_heads(Hq, Hkv);

  /* The tile: as many query rows as keep [Hq, tile, Skv] scores in budget
   * (and in one allocation), at least one. */
  size_t budget = c->score_budget;
  int64_t row_bytes = Hq * Skv * (int64_t)sizeof(float);
  int64_t tile = (int64_t)budget / row_bytes;
  if (tile < 1) tile = 1;
  /* Causal and windowed tiles stay short: the keys near the edges of the
   * rows' ranges, which only some rows see, go through pv_rows (a plain
   * loop), not the GEMM. */
  if ((d->causal || (d->features & ATTN_FEAT_WINDOW)) && tile > CAUSAL_TILE) tile = CAUSAL_TILE;
  if (tile > Sq) tile = Sq;
  host->debug("clblast sdpa: B=%lld Hq=%lld Hkv=%lld Sq=%lld Skv=%lld D=%lld Dv=%lld tile=%lld",
              (long long)B, (long long)Hq, (long long)Hkv, (long long)Sq, (long long)Skv,
              (long long)D, (long long)Dv, (long long)tile);

  attn_buffer *tq = NULL, *tk = NULL, *tv = NULL, *to = NULL;
  attn_view q, k, v, o = d->out;
  clrt_sdpa_opts op;
  attn_status st = clrt_sdpa_opts_init(&c->cl, d, "clblast", &op);
  if (st != ATTN_OK) return st;
  st = gemm_input(c, &d->q, &tq, &q);
  if (st == ATTN_OK) st = gemm_input(c, &d->k, &tk, &k);
  if (st == ATTN_OK) st = gemm_input(c, &d->v, &tv, &v);
  if (st == ATTN_OK) st = scores_reserve(c, (size_t)(tile * row_bytes));
  /* An output CLBlast cannot write gets a contiguous [Hq, tile, Dv] staging
   * buffer per tile, scattered into out by copy4d. */
  const bool stage_out = !view_gemmable(&d->out);
  if (st == ATTN_OK && stage_out)
    st = clrt_buffer_alloc(&c->cl, (size_t)(Hq * tile * Dv) * sizeof(float), &to);

  for (int64_t b = 0; st == ATTN_OK && b < B; b++) {
    const int64_t kvlen = d->kv_lens ? d->kv_lens[b] : Skv;
    for (int64_t i0 = 0; st == ATTN_OK && i0 < Sq; i0 += tile) {
      const int64_t T = Sq - i0 < tile ? Sq - i0 : tile;
      /* Both ends of a row's range grow with the row: keys [klo, khi) are
       * visible to some row of the tile (the first row's lo, the last row's
       * hi); only those are computed. Keys [c_lo, c_hi) are visible to every
       * row (the last row's lo, the first row's hi). */
      int64_t klo, khi, c_lo, c_hi;
      attn_visible_range(d, b, i0, &klo, &c_hi);
      attn_visible_range(d, b, i0 + T - 1, &c_lo, &khi);
      if (khi < klo) khi = klo;
      const int64_t n_eff = khi - klo;
      const bool gemm_pv = c_lo < c_hi;
      const int64_t ld = n_eff > 0 ? n_eff : 1; /* score row pitch */
      const size_t s_head = (size_t)(T * ld);   /* scores of one head */
      for (int64_t oi = 0; st == ATTN_OK && n_eff > 0 && oi < hs.nouter; oi++) {
        const int64_t h0 = oi * hs.oh, hk0 = oi * hs.ok;
        gemm_mat qa = {q.buf->mem,
                       (size_t)(q.offset + b * q.strides[0] + h0 * q.strides[1] +
                                i0 * q.strides[2]),
                       view_ld(&q)};
        gemm_mat kb = {k.buf->mem,
                       (size_t)(k.offset + b * k.strides[0] + hk0 * k.strides[1] +
                                klo * k.strides[2]),
                       view_ld(&k)};
        gemm_mat sc = {c->scores->mem, (size_t)h0 * s_head, (size_t)ld};
        st = gemm(c, "sdpa: Q K^T", true, (size_t)T, (size_t)n_eff, (size_t)D, d->scale, qa,
                  (size_t)(hs.ih * q.strides[1]), kb, (size_t)(hs.ik * k.strides[1]), sc,
                  hs.ih * s_head, (size_t)hs.ninner);
      }
      if (st == ATTN_OK) st = enqueue_softmax(c, d, &op, b, i0, T, klo, ld, kvlen);

      /* Where the output of this tile goes: out itself or the staging buffer. */
      gemm_mat ot;
      i64x4 ot_str; /* [., h, t, e] */
      if (stage_out) {
        ot = (gemm_mat){to->mem, 0, (size_t)Dv};
        ot_str = long4_of(0, T * Dv, Dv, 1);
      } else {
        ot = (gemm_mat){o.buf->mem,
                        (size_t)(o.offset + b * o.strides[0] + i0 * o.strides[2]), view_ld(&o)};
        ot_str = long4_of(0, o.strides[1], o.strides[2], o.strides[3]);
      }
      /* O = P V over the keys every row sees, by GEMM... */
      for (int64_t oi = 0; st == ATTN_OK && gemm_pv && oi < hs.nouter; oi++) {
        const int64_t h0 = oi * hs.oh, hk0 = oi * hs.ok;
        gemm_mat pa = {c->scores->mem, (size_t)h0 * s_head + (size_t)(c_lo - klo), (size_t)ld};
        gemm_mat vb = {v.buf->mem,
                       (size_t)(v.offset + b * v.strides[0] + hk0 * v.strides[1] +
                                c_lo * v.strides[2]),
                       view_ld(&v)};
        gemm_mat oc = ot;
        oc.off += (size_t)(h0 * ot_str.s[1]);
        st = gemm(c, "sdpa: P V", false, (size_t)T, (size_t)Dv, (size_t)(c_hi - c_lo), 1.0f, pa,
                  hs.ih * s_head, vb, (size_t)(hs.ik * v.strides[1]), oc,
                  (size_t)(hs.ih * ot_str.s[1]), (size_t)hs.ninner);
      }
      /* ...and over the keys near the edges row by row; without the GEMM,
       * over all of them, which also writes the zeros of rows that see
       * nothing. */
      if (st == ATTN_OK && !gemm_pv)
        st = enqueue_pv_rows(c, d, &op, &v, b, i0, T, klo, ld, kvlen, klo, khi, false, ot.mem,
                             ot.off, ot_str);
      if (st == ATTN_OK && gemm_pv && klo < c_lo)
        st = enqueue_pv_rows(c, d, &op, &v, b, i0, T, klo, ld, kvlen, klo, c_lo, true, ot.mem,
                             ot.off, ot_str);
      if (st == ATTN_OK && gemm_pv && c_hi < khi)
        st = enqueue_pv_rows(c, d, &op, &v, b, i0, T, klo, ld, kvlen, c_hi, khi, true, ot.mem,
                             ot.off, ot_str);
      if (st == ATTN_OK && stage_out)
        st = enqueue_elementwise(
            c, "copy4d", to->mem, 0, long4_of(0, T * Dv, Dv, 1), o.buf->mem,
            o.offset + b * o.strides[0] + i0 * o.strides[2],
            long4_of(0, o.strides[1], o.strides[2], o.strides[3]), long4_of(1, Hq, T, Dv));
    }
  }
  clrt_buffer_free(&c->cl, tq);
  clrt_buffer_free(&c->cl, tk);
  clrt_buffer_free(&c->cl, tv);
  clrt_buffer_free(&c->cl, to);
  clrt_sdpa_opts_release(&c->cl, &op);
  return st;
}

/* ---- 16-bit storage: the convert path ----------------------------------------------
 * CLBlast's half routines (HGEMM) need cl_khr_fp16 and have no bf16 at all,
 * and our softmax/pv kernels are fp32. So every f16 or bf16 operand, on
 * every device, is widened on the device into a contiguous f32 scratch
 * buffer (kernels/convert.cl), the fp32 path runs on the scratch views, and
 * each 16-bit output is narrowed back into the caller's view (its strides
 * respected, round to nearest even, NaN kept). Accumulation is fp32 and each
 * output is rounded once, which is what ref computes.
 *
 * Why not HGEMM where cl_khr_fp16 exists: POCL's CPU device (the only one
 * this backend is tested on) does not report cl_khr_fp16, so a native half
 * path could be neither measured nor tested here; CLBlast's half kernels
 * also keep their accumulators in half (its `real` is `half` at precision
 * 16), which breaks the ABI's fp32 accumulation, and HGEMM would cover only
 * all-f16 GEMMs (not bf16, not mixes, not the softmax). The convert
 * path costs one extra read and write of each 16-bit operand, small next to
 * the GEMMs. ATTN_DEBUG=1 says which path runs and why.
 *
 * Scratch comes from clrt_scratch_alloc (counted, fault-injectable) and is
 * released right after the last kernel using it is enqueued, on success and
 * on failure alike. Outputs are whole f32 buffers: the weights output of a
 * 16-bit SDPA takes B*Hq*Sq*Skv*4 bytes of scratch besides the score tile. */

/* One f32 scratch buffer standing in for a 16-bit operand; buf wraps the
 * cl_mem so that views (which hold an attn_buffer *) can point at it. */
typedef struct f32_scratch {
  attn_buffer buf;
} f32_scratch;

static void scratch_release(attn_backend_ctx *c, f32_scratch *s, int n) {
  for (int i = 0; i < n; i++) {
    clrt_scratch_free(&c->cl, s[i].buf.mem);
    s[i].buf.mem = NULL;
  }
}

/* A contiguous f32 view of v's shape in new scratch s; dims that v
 * broadcasts (stride 0) stay broadcast, stored once; *cshape is the shape
 * actually stored (1 along those dims). */
static attn_status scratch_view(attn_backend_ctx *c, const attn_view *v, f32_scratch *s,
                                const char *what, attn_view *out, i64x4 *cshape) {
  int64_t cs[4], str[4];
  for (int i = 0; i < 4; i++) cs[i] = v->strides[i] == 0 ? 1 : v->shape[i];
  str[3] = 1, str[2] = cs[3], str[1] = cs[2] * str[2], str[0] = cs[1] * str[1];
  const size_t n = (size_t)(cs[0] * str[0]);
  attn_status st =
      clrt_scratch_alloc(&c->cl, CL_MEM_READ_WRITE, n * sizeof(float), NULL, what, &s->buf.mem);
  if (st != ATTN_OK) return st;
  s->buf.bytes = n * sizeof(float);
  *out = *v;
  out->buf = &s->buf;
  out->offset = 0;
  out->dtype = ATTN_F32;
  for (int i = 0; i < 4; i++) out->strides[i] = v->strides[i] == 0 ? 0 : str[i];
  *cshape = long4_of(cs[0], cs[1], cs[2], cs[3]);
  return ATTN_OK;
}

static i64x4 view_str4(const attn_view *v) {
  return long4_of(v->strides[0], v->strides[1], v->strides[2], v->strides[3]);
}

/* Input *v, if present and 16-bit, becomes an f32 scratch copy. */
static attn_status widen_input(attn_backend_ctx *c, attn_view *v, f32_scratch *s,
                               const char *what) {
  if (!v->buf || v->dtype == ATTN_F32) return ATTN_OK;
  attn_view w;
  i64x4 cs;
  attn_status st = scratch_view(c, v, s, what, &w, &cs);
  if (st != ATTN_OK) return st;
  st = enqueue_4d(c, CONVERT, v->dtype == ATTN_F16 ? "f16_to_f32" : "bf16_to_f32", v->buf->mem,
                  v->offset, view_str4(v), w.buf->mem, 0, view_str4(&w), cs);
  if (st == ATTN_OK) *v = w;
  return st;
}

/* Output *v, if present and 16-bit, becomes an f32 scratch view (written by
 * the fp32 path, narrowed back by narrow_output). */
static attn_status scratch_output(attn_backend_ctx *c, attn_view *v, f32_scratch *s,
                                  const char *what) {
  if (!v->buf || v->dtype == ATTN_F32) return ATTN_OK;
  attn_view w;
  i64x4 cs;
  attn_status st = scratch_view(c, v, s, what, &w, &cs);
  if (st == ATTN_OK) *v = w;
  return st;
}

/* The caller's 16-bit output view orig = its f32 scratch view tmp, rounded. */
static attn_status narrow_output(attn_backend_ctx *c, const attn_view *orig,
                                 const attn_view *tmp) {
  if (!orig->buf || orig->dtype == ATTN_F32) return ATTN_OK;
  const int64_t *sh = orig->shape;
  return enqueue_4d(c, CONVERT, orig->dtype == ATTN_F16 ? "f32_to_f16" : "f32_to_bf16",
                    tmp->buf->mem, tmp->offset, view_str4(tmp), orig->buf->mem, orig->offset,
                    view_str4(orig), long4_of(sh[0], sh[1], sh[2], sh[3]));
}

/* Appends " name=dtype" for a 16-bit operand to the debug line. */
static void note_dtype(char *buf, size_t len, const char *name, const attn_view *v) {
  if (!v->buf || v->dtype == ATTN_F32) return;
  size_t used = strlen(buf);
  if (used < len)
    snprintf(buf + used, len - used, " %s=%s", name, v->dtype == ATTN_F16 ? "f16" : "bf16");
}

static void log_convert_path(attn_backend_ctx *c, const char *stage, const char *which) {
  host->debug("clblast: %s f16/bf16 operands via fp32 scratch (%s):%s", stage,
              c->has_fp16 ? "convert path chosen over CLBlast half routines"
                          : "device has no cl_khr_fp16",
              which);
}

/* The descriptor's features say whether any operand is 16-bit. */
#define CLB_FEAT_16BIT (ATTN_FEAT_F16 | ATTN_FEAT_BF16)

static attn_status clb_linear(attn_backend_ctx *c, const attn_linear_desc *d) {
  if (!(d->features & CLB_FEAT_16BIT)) return clb_linear_f32(c, d);
  char which[96] = "";
  note_dtype(which, sizeof which, "x", &d->x);
  note_dtype(which, sizeof which, "w", &d->w);
  note_dtype(which, sizeof which, "bias", &d->bias);
  note_dtype(which, sizeof which, "y", &d->y);
  log_convert_path(c, "linear", which);
  attn_linear_desc e = *d;
  f32_scratch s[4] = {{{0}}};
  attn_status st = widen_input(c, &e.x, &s[0], "linear: f32 copy of x");
  if (st == ATTN_OK) st = widen_input(c, &e.w, &s[1], "linear: f32 copy of w");
  if (st == ATTN_OK) st = widen_input(c, &e.bias, &s[2], "linear: f32 copy of bias");
  if (st == ATTN_OK) st = scratch_output(c, &e.y, &s[3], "linear: f32 y");
  if (st == ATTN_OK) st = clb_linear_f32(c, &e);
  if (st == ATTN_OK) st = narrow_output(c, &d->y, &e.y);
  scratch_release(c, s, 4);
  return st;
}

static attn_status clb_sdpa(attn_backend_ctx *c, const attn_sdpa_desc *d) {
  const bool fused = c->sdpa_path == CLB_SDPA_FUSED ||
                     (c->sdpa_path == CLB_SDPA_FEW_ROWS && d->q.shape[2] <= CLB_FEW_ROWS);
  if (fused && d->q.shape[3] <= FLASH_MAX_HEAD_DIM && d->v.shape[3] <= FLASH_MAX_HEAD_DIM &&
      d->q.shape[2] <= INT32_MAX && d->k.shape[2] <= INT32_MAX)
    return clb_flash_sdpa(&c->cl, &c->flash, d);
  if (!(d->features & CLB_FEAT_16BIT)) return clb_sdpa_f32(c, d);
  char which[128] = "";
  note_dtype(which, sizeof which, "q", &d->q);
  note_dtype(which, sizeof which, "k", &d->k);
  note_dtype(which, sizeof which, "v", &d->v);
  note_dtype(which, sizeof which, "mask", &d->mask);
  note_dtype(which, sizeof which, "out", &d->out);
  note_dtype(which, sizeof which, "weights", &d->weights);
  log_convert_path(c, "sdpa", which);
  attn_sdpa_desc e = *d;
  f32_scratch s[6] = {{{0}}};
  attn_status st = widen_input(c, &e.q, &s[0], "sdpa: f32 copy of q");
  if (st == ATTN_OK) st = widen_input(c, &e.k, &s[1], "sdpa: f32 copy of k");
  if (st == ATTN_OK) st = widen_input(c, &e.v, &s[2], "sdpa: f32 copy of v");
  if (st == ATTN_OK) st = widen_input(c, &e.mask, &s[3], "sdpa: f32 copy of mask");
  if (st == ATTN_OK) st = scratch_output(c, &e.out, &s[4], "sdpa: f32 out");
  if (st == ATTN_OK) st = scratch_output(c, &e.weights, &s[5], "sdpa: f32 weights");
  /* lse is always f32 (the core refuses any other). */
  if (st == ATTN_OK) st = clb_sdpa_f32(c, &e);
  if (st == ATTN_OK) st = narrow_output(c, &d->out, &e.out);
  if (st == ATTN_OK) st = narrow_output(c, &d->weights, &e.weights);
  scratch_release(c, s, 6);
  return st;
}

/* ---- the vtable ------------------------------------------------------------------- */

static attn_status clb_run(attn_backend_ctx *c, attn_stage stage, const void *desc) {
  if (stage == ATTN_STAGE_MERGE) return clrt_merge(&c->cl, desc);
  /* The shared kernels of kernels/rope.cl read every dtype themselves. */
  if (stage == ATTN_STAGE_ROPE) return clrt_rope(&c->cl, desc);
  if (stage == ATTN_STAGE_RMSNORM) return clrt_rmsnorm(&c->cl, desc);
  return stage == ATTN_STAGE_SDPA ? clb_sdpa(c, desc) : clb_linear(c, desc);
}

static attn_status clb_tune(attn_backend_ctx *c, unsigned flags, attn_tune_report *r) {
  return clb_flash_tune(&c->cl, &c->flash, flags, r);
}

static const attn_backend_vtable vtable = {
    .abi_major = ATTN_ABI_MAJOR,
    .abi_minor = ATTN_ABI_MINOR,
    .struct_size = sizeof(attn_backend_vtable),
    .name = "clblast",
    .init = clb_init,
    .probe = clb_probe,
    .device_info = clb_device_info,
    .open = clb_open,
    .close = clb_close,
    .buffer_alloc = clb_buffer_alloc,
    .buffer_free = clb_buffer_free,
    .buffer_write = clb_buffer_write,
    .buffer_read = clb_buffer_read,
    .supports = clb_supports,
    .run = clb_run,
    .synchronize = clb_synchronize,
    .peaks = clrt_peaks_slot,
    .tune = clb_tune,
};

ATTN_PLUGIN_EXPORT const attn_backend_vtable *attn_backend_entry(void);
ATTN_PLUGIN_EXPORT const attn_backend_vtable *attn_backend_entry(void) { return &vtable; }
