/* The pocl backend: attention on OpenCL CPU devices (POCL preferred), with
 * SDPA as one fused flash-attention kernel (kernels/sdpa.cl) and the linear
 * stage as a tiled GEMM kernel (kernels/linear.cl), on the shared OpenCL
 * runtime (backends/opencl/clrt.h). */
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "clrt.h"
#include "decode.h"
#include "pocl.h"

#define POCL_MAX_DEVICES 16
/* Largest D and Dv the fused kernel holds in private memory. */
#define POCL_MAX_HEAD_DIM 512
/* Query rows per work-item of sdpa_flash (RF = 2 VW in kernels/sdpa.cl)
 * and of sdpa_weights (R = VW there), for vector width vw. */
#define SDPA_FLASH_ROWS(vw) (2 * (vw))
#define SDPA_WEIGHTS_ROWS(vw) (vw)
/* Tiles along n and m per work-group of the linear kernel (pocl_linear_tiled). */
#define POCL_LINEAR_WG_N 4
#define POCL_LINEAR_WG_M 8

static const attn_host *host;
static clrt_device devices[POCL_MAX_DEVICES];
static int ndevices = -1; /* -1: not enumerated yet (probe runs under the loader lock) */

static attn_status pocl_init(const attn_host *h) {
  host = h;
  clrt_init(h);
  return ATTN_OK;
}

static int pocl_probe(void) {
  if (ndevices < 0)
    ndevices = clrt_find_devices(CL_DEVICE_TYPE_CPU, "Portable Computing Language", false,
                                 devices, POCL_MAX_DEVICES);
  return ndevices;
}

static attn_status check_index(int index) {
  if (index < 0 || index >= pocl_probe())
    return host->error(ATTN_ERR_INVALID_ARG, "pocl: no device %d (%d found)", index,
                       pocl_probe());
  return ATTN_OK;
}

static attn_status pocl_device_info(int index, attn_device_info *info) {
  attn_status s = check_index(index);
  if (s != ATTN_OK) return s;
  s = clrt_device_info(&devices[index], info);
  if (s != ATTN_OK) return s;
  snprintf(info->backend, sizeof info->backend, "pocl");
  info->index = index;
  return ATTN_OK;
}

static attn_status pocl_open(int index, attn_backend_ctx **out) {
  *out = NULL;
  attn_status s = check_index(index);
  if (s != ATTN_OK) return s;
  attn_backend_ctx *c = calloc(1, sizeof *c);
  if (!c) return host->error(ATTN_ERR_NOMEM, "pocl: out of host memory for a context");
  s = clrt_ctx_init(&c->cl, &devices[index]);
  if (s != ATTN_OK) {
    free(c);
    return s;
  }
  /* The tuned parameters for this device, else the defaults (tune.c). */
  pocl_params_load(&c->cl, &c->p);
  *out = c;
  return ATTN_OK;
}

static void pocl_close(attn_backend_ctx *c) {
  if (!c) return;
  clrt_ctx_release(&c->cl);
  free(c);
}

static attn_status pocl_buffer_alloc(attn_backend_ctx *c, size_t bytes, attn_buffer **buf) {
  return clrt_buffer_alloc(&c->cl, bytes, buf);
}
static void pocl_buffer_free(attn_backend_ctx *c, attn_buffer *buf) {
  clrt_buffer_free(&c->cl, buf);
}
static attn_status pocl_buffer_write(attn_backend_ctx *c, attn_buffer *buf, size_t offset,
                                     size_t bytes, const void *src) {
  return clrt_buffer_write(&c->cl, buf, offset, bytes, src);
}
static attn_status pocl_buffer_read(attn_backend_ctx *c, attn_buffer *buf, size_t offset,
                                    size_t bytes, void *dst) {
  return clrt_buffer_read(&c->cl, buf, offset, bytes, dst);
}
static attn_status pocl_synchronize(attn_backend_ctx *c) { return clrt_finish(&c->cl); }

/* ---- stages ---------------------------------------------------------------- */

static attn_status unsupported(char *why, size_t why_len, const char *msg) {
  if (why && why_len) snprintf(why, why_len, "%s", msg);
  return ATTN_ERR_UNSUPPORTED;
}

/* Kernels index with int for sizes (offsets are long): every dim must fit. */
static int view_fits_int(const attn_view *v) {
  for (int i = 0; i < 4; i++)
    if (v->shape[i] > INT_MAX) return 0;
  return 1;
}

/* The features each stage implements; every other bit is refused by name. */
#define POCL_LINEAR_FEATURES (ATTN_FEAT_BIAS | ATTN_FEAT_F16 | ATTN_FEAT_BF16 | ATTN_FEAT_W_STRIDED)
#define POCL_SDPA_FEATURES                                                                 \
  (ATTN_FEAT_MASK_BOOL | ATTN_FEAT_MASK_ADDITIVE | ATTN_FEAT_CAUSAL | ATTN_FEAT_KV_LENS |   \
   ATTN_FEAT_WEIGHTS | ATTN_FEAT_LSE | ATTN_FEAT_F16 | ATTN_FEAT_BF16 |                     \
   ATTN_FEAT_POSITIONS | ATTN_FEAT_WINDOW | ATTN_FEAT_SOFTCAP | ATTN_FEAT_ALIBI |           \
   ATTN_FEAT_SINKS)
#define POCL_MERGE_FEATURES (ATTN_FEAT_LSE | ATTN_FEAT_F16 | ATTN_FEAT_BF16)

static attn_status refuse_feature(char *why, size_t why_len, const char *stage, int bit) {
  char buf[32];
  snprintf(why, why_len, "pocl: %s cannot do %s", stage, attn_feature_name(bit, buf, sizeof buf));
  return ATTN_ERR_UNSUPPORTED;
}

static attn_status pocl_supports(attn_backend_ctx *c, attn_stage stage, const void *desc,
                                 char *why, size_t why_len) {
  if (stage == ATTN_STAGE_LINEAR) {
    const attn_linear_desc *d = desc;
    const int bit = attn_feature_unknown(d->features, POCL_LINEAR_FEATURES);
    if (bit >= 0) return refuse_feature(why, why_len, "linear", bit);
    if (!view_fits_int(&d->x) || !view_fits_int(&d->w) || !view_fits_int(&d->y))
      return unsupported(why, why_len, "pocl: linear dims must fit in 32-bit ints");
    return ATTN_OK;
  }
  if (stage == ATTN_STAGE_SDPA) {
    const attn_sdpa_desc *d = desc;
    const int bit = attn_feature_unknown(d->features, POCL_SDPA_FEATURES);
    if (bit >= 0) return refuse_feature(why, why_len, "sdpa", bit);
    if (d->q.shape[3] > POCL_MAX_HEAD_DIM || d->v.shape[3] > POCL_MAX_HEAD_DIM) {
      if (why && why_len)
        snprintf(why, why_len, "pocl: head dims D=%lld, Dv=%lld; at most %d supported",
                 (long long)d->q.shape[3], (long long)d->v.shape[3], POCL_MAX_HEAD_DIM);
      return ATTN_ERR_UNSUPPORTED;
    }
    if (!view_fits_int(&d->q) || !view_fits_int(&d->k) || !view_fits_int(&d->v))
      return unsupported(why, why_len, "pocl: sdpa dims must fit in 32-bit ints");
    return ATTN_OK;
  }
  if (stage == ATTN_STAGE_MERGE) {
    const attn_merge_desc *d = desc;
    const int bit = attn_feature_unknown(d->features, POCL_MERGE_FEATURES);
    if (bit >= 0) return refuse_feature(why, why_len, "merge", bit);
    return ATTN_OK;
  }
  if (stage == ATTN_STAGE_ROPE || stage == ATTN_STAGE_RMSNORM) {
    const int rope = stage == ATTN_STAGE_ROPE;
    const uint64_t f = rope ? ((const attn_rope_desc *)desc)->features
                            : ((const attn_rmsnorm_desc *)desc)->features;
    const int bit = attn_feature_unknown(f, rope ? CLRT_ROPE_FEATURES : CLRT_RMSNORM_FEATURES);
    if (bit >= 0) return refuse_feature(why, why_len, rope ? "rope" : "rmsnorm", bit);
    return ATTN_OK;
  }
  return unsupported(why, why_len, "pocl: unknown stage");
}

attn_status pocl_linear_tiled(clrt_ctx *c, const attn_linear_desc *d, int mr, int nr, int vw) {
  cl_kernel k;
  /* The tile of y per work-item (MR x NR in kernels/linear.cl): the context's
   * tuned parameter, or a candidate attn_tune times. */
  char opts[96];
  snprintf(opts, sizeof opts, "-DMR=%d -DNR=%d -DVW=%d", mr, nr, vw);
  clrt_dtype_option(opts, sizeof opts, "XT", &d->x);
  clrt_dtype_option(opts, sizeof opts, "WT", &d->w);
  clrt_dtype_option(opts, sizeof opts, "BT", &d->bias);
  clrt_dtype_option(opts, sizeof opts, "YT", &d->y);
  if (d->features & ATTN_FEAT_W_STRIDED) {
    const size_t n = strlen(opts);
    snprintf(opts + n, sizeof opts - n, " -DWKS=1");
  }
  attn_status s = clrt_kernel_get(c, "linear", opts, "linear", &k);
  if (s != ATTN_OK) return s;
  cl_mem x = clrt_mem_of(&d->x), w = clrt_mem_of(&d->w), bias = clrt_mem_of(&d->bias), y = clrt_mem_of(&d->y);
  cl_long x_off = d->x.offset, w_off = d->w.offset, b_off = d->bias.offset, y_off = d->y.offset;
  cl_long4 x_st = clrt_strides4(&d->x), w_st = clrt_strides4(&d->w), b_st = clrt_strides4(&d->bias),
           y_st = clrt_strides4(&d->y);
  cl_int has_bias = bias != NULL;
  cl_int M = (cl_int)d->x.shape[2], N = (cl_int)d->w.shape[2], K = (cl_int)d->x.shape[3];
  s = clrt_set_args(k, 16, CLRT_ARG(x), CLRT_ARG(x_off), CLRT_ARG(x_st), CLRT_ARG(w),
                    CLRT_ARG(w_off), CLRT_ARG(w_st), CLRT_ARG(bias), CLRT_ARG(b_off),
                    CLRT_ARG(b_st), CLRT_ARG(has_bias), CLRT_ARG(y), CLRT_ARG(y_off),
                    CLRT_ARG(y_st), CLRT_ARG(M), CLRT_ARG(N), CLRT_ARG(K));
  if (s != ATTN_OK) return s;
  /* Work-groups of 4 x 8 tiles along n and m (the kernel skips tiles past
   * N and M): POCL runs a group's work-items one after another on one core,
   * n fastest, so 4 of them in a row share the MR rows of x and all 8 rows
   * of the group share the 4 tiles' rows of W while they are in cache. Left
   * to POCL the group shape followed the divisors of the grid: for M = 496
   * (62 tiles) it took 31 or 62 and the MHA graph at E = 3584 ran at half
   * speed (357 ms against 177 with 1 x 8, Qwen2-7B's shape). 4 x 8 against
   * 1 x 8 (the fastest of 4-6 alternating runs): E = 512 S = 1024 9.6 against
   * 10.5 ms (AVX2 code: 13.3 against 13.9), E = 4096 S = 512 366 against
   * 379 ms; 2 x 8 and 4 x 4 in between. */
  size_t global[3] = {clrt_round_up(((size_t)N + nr - 1) / nr, POCL_LINEAR_WG_N),
                      clrt_round_up(((size_t)M + mr - 1) / mr, POCL_LINEAR_WG_M),
                      (size_t)d->x.shape[1]};
  size_t local[3] = {POCL_LINEAR_WG_N, POCL_LINEAR_WG_M, 1};
  return clrt_enqueue(c, k, 3, global, local);
}

static attn_status pocl_linear(attn_backend_ctx *c, const attn_linear_desc *d) {
  return pocl_linear_tiled(&c->cl, d, c->p.linear_mr, c->p.linear_nr, c->p.vw);
}

/* LLVM's names of x86 CPUs with AVX2 and without AVX-512, as POCL puts
 * them in its device names; anything else keeps 16 (a CPU whose name we do
 * not know loses nothing against earlier releases). */
static const char *const avx2_cpus[] = {
    "haswell",   "broadwell",  "skylake",     "alderlake", "raptorlake", "meteorlake",
    "arrowlake", "arrowlake-s", "lunarlake",  "gracemont", "pantherlake", "znver1",
    "znver2",    "znver3",     "bdver4",      "core-avx2", "x86-64-v3"};

int pocl_device_vw(const clrt_ctx *c) {
  cl_uint w = 16;
  char name[256] = "";
  clGetDeviceInfo(c->dev.id, CL_DEVICE_NATIVE_VECTOR_WIDTH_FLOAT, sizeof w, &w, NULL);
  clGetDeviceInfo(c->dev.id, CL_DEVICE_NAME, sizeof name - 1, name, NULL);
  if (w != 0 && w < 16) return 8;
  /* POCL's CPU devices are named "<driver>-<LLVM CPU>-<model>"; LLVM's
   * "skylake" is the client part, "skylake-avx512" the server one. */
  const char *cpu = strchr(name, '-');
  if (!cpu) return 16;
  cpu++;
  if (strncmp(cpu, "skylake-avx512-", 15) == 0) return 16;
  for (size_t i = 0; i < sizeof avx2_cpus / sizeof avx2_cpus[0]; i++) {
    const size_t n = strlen(avx2_cpus[i]);
    if (strncmp(cpu, avx2_cpus[i], n) == 0 && cpu[n] == '-') return 8;
  }
  return 16;
}

/* The build options of the sdpa program for these head dims and strides: few
 * distinct variants, each compiled once and cached on disk. */
static void sdpa_options(const attn_sdpa_desc *d, int vw, char *buf, size_t len) {
  int64_t D = d->q.shape[3], Dv = d->v.shape[3], m = D > Dv ? D : Dv;
  int hd = 16;
  while (hd < m) hd *= 2;
  int exact = D == hd && Dv == hd;
  /* A head dim of 1 makes its stride irrelevant. */
  int unit = (d->q.strides[3] == 1 || D == 1) && (d->k.strides[3] == 1 || D == 1) &&
             (d->v.strides[3] == 1 || Dv == 1) && (d->out.strides[3] == 1 || Dv == 1);
  snprintf(buf, len, "-DHD=%d -DEXACT=%d -DUNIT=%d -DVW=%d", hd, exact, unit, vw);
  pocl_sdpa_dtype_options(d, buf, len);
}

void pocl_sdpa_dtype_options(const attn_sdpa_desc *d, char *buf, size_t len) {
  clrt_dtype_option(buf, len, "QT", &d->q);
  clrt_dtype_option(buf, len, "KT", &d->k);
  clrt_dtype_option(buf, len, "VT", &d->v);
  clrt_dtype_option(buf, len, "OT", &d->out);
  clrt_dtype_option(buf, len, "MT", &d->mask);
  clrt_dtype_option(buf, len, "WT", &d->weights);
}

static attn_status pocl_sdpa(attn_backend_ctx *c, const attn_sdpa_desc *d) {
  /* Few query rows over many keys: split the keys (decode.c). */
  if (pocl_decode_wants(d)) return pocl_decode_sdpa(&c->cl, d, c->p.decode_groups);
  return pocl_flash_sdpa(&c->cl, d, c->p.vw);
}

attn_status pocl_flash_sdpa(clrt_ctx *cl, const attn_sdpa_desc *d, int vw) {
  char opts[160];
  sdpa_options(d, vw, opts, sizeof opts);
  cl_kernel kf, kw = NULL;
  attn_status s = clrt_kernel_get(cl, "sdpa", opts, "sdpa_flash", &kf);
  if (s == ATTN_OK && d->weights.buf) s = clrt_kernel_get(cl, "sdpa", opts, "sdpa_weights", &kw);
  if (s != ATTN_OK) return s;

  cl_int B = (cl_int)d->q.shape[0], Hq = (cl_int)d->q.shape[1], Hkv = (cl_int)d->k.shape[1];
  cl_int Sq = (cl_int)d->q.shape[2], Skv = (cl_int)d->k.shape[2];
  cl_int D = (cl_int)d->q.shape[3], Dv = (cl_int)d->v.shape[3];
  cl_int mask_kind = d->mask.buf ? (cl_int)d->mask_kind : 0;
  cl_float scale = d->scale;
  cl_mem q = clrt_mem_of(&d->q), k = clrt_mem_of(&d->k), v = clrt_mem_of(&d->v), out = clrt_mem_of(&d->out);
  cl_mem mask = clrt_mem_of(&d->mask), lse = clrt_mem_of(&d->lse);
  cl_long q_off = d->q.offset, k_off = d->k.offset, v_off = d->v.offset, o_off = d->out.offset;
  cl_long m_off = d->mask.offset, l_off = d->lse.offset;
  cl_long4 q_st = clrt_strides4(&d->q), k_st = clrt_strides4(&d->k), v_st = clrt_strides4(&d->v),
           o_st = clrt_strides4(&d->out), m_st = clrt_strides4(&d->mask), l_st = clrt_strides4(&d->lse);

  clrt_sdpa_opts op;
  s = clrt_sdpa_opts_init(cl, d, "pocl", &op);
  if (s != ATTN_OK) return s;
  cl_mem kvl = NULL, ml = NULL;
  cl_int has_kvl = d->kv_lens != NULL;
  /* Released once the kernels are enqueued; the driver frees it after them. */
  s = clrt_kv_lens_copy(cl, d, "pocl", &kvl);
  if (s != ATTN_OK) {
    clrt_sdpa_opts_release(cl, &op);
    return s;
  }
  if (d->weights.buf) {
    /* The weights pass needs each row's max and inverse sum. */
    attn_status st = clrt_scratch_alloc(cl, CL_MEM_READ_WRITE,
                                        (size_t)B * Hq * Sq * 2 * sizeof(cl_float), NULL,
                                        "pocl: the row max and sum scratch", &ml);
    if (st != ATTN_OK) {
      clrt_scratch_free(cl, kvl);
      clrt_sdpa_opts_release(cl, &op);
      return st;
    }
  }
  cl_int has_lse = lse != NULL, has_ml = ml != NULL;
  if (!has_lse) lse = out; /* never written: a valid buffer argument */

  s = clrt_set_args(kf, 31 + CLRT_OPTS_NARGS, CLRT_ARG(q), CLRT_ARG(q_off), CLRT_ARG(q_st),
                    CLRT_ARG(k), CLRT_ARG(k_off), CLRT_ARG(k_st), CLRT_ARG(v), CLRT_ARG(v_off),
                    CLRT_ARG(v_st), CLRT_ARG(out), CLRT_ARG(o_off), CLRT_ARG(o_st),
                    CLRT_ARG(mask), CLRT_ARG(m_off), CLRT_ARG(m_st), CLRT_ARG(mask_kind),
                    CLRT_ARG(kvl), CLRT_ARG(has_kvl), CLRT_ARG(lse), CLRT_ARG(l_off),
                    CLRT_ARG(l_st), CLRT_ARG(has_lse), CLRT_ARG(ml), CLRT_ARG(has_ml),
                    CLRT_ARG(Hq), CLRT_ARG(Hkv), CLRT_ARG(Sq), CLRT_ARG(Skv), CLRT_ARG(D),
                    CLRT_ARG(Dv), CLRT_ARG(scale), CLRT_OPTS_ARGS(op));
  /* 31 above counts the pairs: keep it equal to the kernel's parameter count. */
  if (s == ATTN_OK) {
    /* One work-item per work-group: each carries 2 VW rows and 4 x HD vectors
     * of private state, which POCL would otherwise replicate for every
     * work-item of a large group (a 2048-item group overflowed its stack at
     * Sq = 32768); measured at least as fast as groups of 2 to 16. */
    size_t global[3] = {((size_t)Sq + SDPA_FLASH_ROWS(vw) - 1) / SDPA_FLASH_ROWS(vw), (size_t)Hq,
                        (size_t)B};
    size_t local[3] = {1, 1, 1};
    s = clrt_enqueue(cl, kf, 3, global, local);
  }
  if (s == ATTN_OK && kw) {
    cl_mem w = clrt_mem_of(&d->weights);
    cl_long w_off = d->weights.offset;
    cl_long4 w_st = clrt_strides4(&d->weights);
    s = clrt_set_args(kw, 22 + CLRT_OPTS_NARGS, CLRT_ARG(q), CLRT_ARG(q_off), CLRT_ARG(q_st),
                      CLRT_ARG(k), CLRT_ARG(k_off), CLRT_ARG(k_st), CLRT_ARG(mask),
                      CLRT_ARG(m_off), CLRT_ARG(m_st), CLRT_ARG(mask_kind), CLRT_ARG(kvl),
                      CLRT_ARG(has_kvl), CLRT_ARG(ml), CLRT_ARG(w), CLRT_ARG(w_off), CLRT_ARG(w_st), CLRT_ARG(Hq), CLRT_ARG(Hkv),
                      CLRT_ARG(Sq), CLRT_ARG(Skv), CLRT_ARG(D), CLRT_ARG(scale),
                      CLRT_OPTS_ARGS(op));
    if (s == ATTN_OK) {
      size_t global[3] = {((size_t)Sq + SDPA_WEIGHTS_ROWS(vw) - 1) / SDPA_WEIGHTS_ROWS(vw),
                          (size_t)Hq, (size_t)B};
      size_t local[3] = {1, 1, 1};
      s = clrt_enqueue(cl, kw, 3, global, local);
    }
  }
  /* Released now, freed by the driver when the queued kernels are done. */
  clrt_scratch_free(cl, kvl);
  clrt_scratch_free(cl, ml);
  clrt_sdpa_opts_release(cl, &op);
  return s;
}

static attn_status pocl_run(attn_backend_ctx *c, attn_stage stage, const void *desc) {
  if (stage == ATTN_STAGE_MERGE) return clrt_merge(&c->cl, desc);
  if (stage == ATTN_STAGE_ROPE) return clrt_rope(&c->cl, desc);
  if (stage == ATTN_STAGE_RMSNORM) return clrt_rmsnorm(&c->cl, desc);
  return stage == ATTN_STAGE_SDPA ? pocl_sdpa(c, desc) : pocl_linear(c, desc);
}

static const attn_backend_vtable pocl_vtable = {
    .abi_major = ATTN_ABI_MAJOR,
    .abi_minor = ATTN_ABI_MINOR,
    .struct_size = sizeof(attn_backend_vtable),
    .name = "pocl",
    .init = pocl_init,
    .probe = pocl_probe,
    .device_info = pocl_device_info,
    .open = pocl_open,
    .close = pocl_close,
    .buffer_alloc = pocl_buffer_alloc,
    .buffer_free = pocl_buffer_free,
    .buffer_write = pocl_buffer_write,
    .buffer_read = pocl_buffer_read,
    .supports = pocl_supports,
    .run = pocl_run,
    .synchronize = pocl_synchronize,
    .peaks = clrt_peaks_slot,
    .tune = pocl_tune,
};

ATTN_PLUGIN_EXPORT const attn_backend_vtable *attn_backend_entry(void);
ATTN_PLUGIN_EXPORT const attn_backend_vtable *attn_backend_entry(void) { return &pocl_vtable; }
