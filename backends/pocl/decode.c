/* The pocl backend's decode path: split-key attention (kernels/decode.cl)
 * for few query rows over a long KV cache. See decode.h. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "decode.h"
#include "pocl.h"

/* Largest D and Dv (as the fused kernel), and the most chunks the reduce
 * kernel combines (MAX_CHUNKS in kernels/decode.cl). */
#define DECODE_MAX_HEAD_DIM 512
#define DECODE_MAX_CHUNKS 64
/* Keys per chunk at least: below this the partials cost more than they save. */
#define DECODE_MIN_CHUNK 128
/* Work-groups to aim for per compute unit (groups_per_cu, pocl_params'
 * decode_groups: POCL_DECODE_GROUPS by default, else tuned by attn_tune):
 * small enough pieces that when one core is taken by another process the
 * other finishes the rest. 2 to 16 chunks per kv head measured the same
 * within the noise of a shared 2-core machine (decode Hq=32 Hkv=8 Skv=8192:
 * 4.7-12 ms for each). */
/* Default routing, measured against the flash kernel (32 query rows per
 * work-item) at Skv = 4096: without GQA decode wins up to Sq = 4 (3x at 1
 * and 4) and ties at Sq = 8; with a GQA group of 4 (D = 128), whose rows
 * share each K/V read here, it wins up to Sq = 8 (1.5x) and ties at 16. */
#define DECODE_MAX_SQ 4
#define DECODE_MAX_SQ_GQA 8

static int env_mode(void) {
  const char *e = getenv("ATTN_POCL_DECODE");
  if (!e || !*e) return -1;
  return strcmp(e, "0") != 0;
}

bool pocl_decode_wants(const attn_sdpa_desc *d) {
  const int mode = env_mode();
  if (mode == 0) return false;
  const int64_t D = d->q.shape[3], Dv = d->v.shape[3];
  /* Vector loads along the head dim of k and v; the weights pass stays with
   * the flash kernel's program. */
  if (D % 8 != 0 || Dv % 8 != 0 || D > DECODE_MAX_HEAD_DIM || Dv > DECODE_MAX_HEAD_DIM)
    return false;
  if (d->k.strides[3] != 1 || d->v.strides[3] != 1 || d->weights.buf) return false;
  if (mode == 1) return true;
  const int64_t Sq = d->q.shape[2], group = d->q.shape[1] / d->k.shape[1];
  return Sq <= DECODE_MAX_SQ || (group > 1 && Sq <= DECODE_MAX_SQ_GQA);
}

/* A bf16 view whose every row starts at an even element (offset and the
 * strides of the row dims even): its rows can be read as 32-bit pairs. */
static bool pairs_aligned(const attn_view *v) {
  return v->dtype == ATTN_BF16 && v->offset % 2 == 0 && v->strides[0] % 2 == 0 &&
         v->strides[1] % 2 == 0 && v->strides[2] % 2 == 0;
}

attn_status pocl_decode_sdpa(clrt_ctx *c, const attn_sdpa_desc *d, int groups_per_cu) {
  cl_int B = (cl_int)d->q.shape[0], Hq = (cl_int)d->q.shape[1], Hkv = (cl_int)d->k.shape[1];
  cl_int Sq = (cl_int)d->q.shape[2], Skv = (cl_int)d->k.shape[2];
  cl_int D = (cl_int)d->q.shape[3], Dv = (cl_int)d->v.shape[3];

  /* Variants: vector width, private array size, rows per work-item. */
  const int vw = D % 16 == 0 && Dv % 16 == 0 ? 16 : 8;
  const int m = D > Dv ? D : Dv;
  int hd = 16;
  while (hd < m) hd *= 2;
  const int rows = Hq / Hkv * Sq;
  int rb = 1;
  while (rb < rows && rb < 8) rb *= 2;
  char opts[160];
  snprintf(opts, sizeof opts, "-DVW=%d -DHD=%d -DEXACT=%d -DRB=%d", vw, hd,
           D == hd && Dv == hd, rb);
  pocl_sdpa_dtype_options(d, opts, sizeof opts); /* weights never come here */
  /* bf16 K / V rows that start on 4-byte boundaries are read as pairs
   * (KPAIR / VPAIR in kernels/decode.cl). */
  size_t used = strlen(opts);
  if (vw == 16 && pairs_aligned(&d->k))
    used += (size_t)snprintf(opts + used, sizeof opts - used, " -DKPAIR=1");
  if (vw == 16 && pairs_aligned(&d->v) && used < sizeof opts)
    snprintf(opts + used, sizeof opts - used, " -DVPAIR=1");
  cl_kernel kp, kr;
  attn_status s = clrt_kernel_get(c, "decode", opts, "decode_partial", &kp);
  if (s == ATTN_OK) s = clrt_kernel_get(c, "decode", opts, "decode_reduce", &kr);
  if (s != ATTN_OK) return s;

  /* Only keys [kbase, kspan_end) are visible to any row of any batch item
   * (causal diagonal, window); kv_lens only shortens some rows further. */
  int64_t kbase, kspan_end;
  clrt_sdpa_key_span_all(d, &kbase, &kspan_end);
  const int64_t span = kspan_end - kbase;
  /* Split the keys so that the work-groups number about groups_per_cu
   * per compute unit, in chunks of at least DECODE_MIN_CHUNK keys. */
  cl_uint cus = 1;
  if (clGetDeviceInfo(c->dev.id, CL_DEVICE_MAX_COMPUTE_UNITS, sizeof cus, &cus, NULL) !=
          CL_SUCCESS ||
      cus == 0)
    cus = 1;
  const int nrb = (rows + rb - 1) / rb;
  const long base = (long)B * Hkv * nrb;
  long want = ((long)groups_per_cu * cus + base - 1) / base;
  const char *split = getenv("ATTN_POCL_DECODE_SPLIT"); /* measurement knob */
  if (split && atoi(split) > 0) want = atoi(split);
  long maxc = (span + DECODE_MIN_CHUNK - 1) / DECODE_MIN_CHUNK;
  if (want > maxc) want = maxc;
  if (want > DECODE_MAX_CHUNKS) want = DECODE_MAX_CHUNKS;
  if (want < 1) want = 1;
  cl_int chunk = (cl_int)clrt_round_up((size_t)((span + want - 1) / want), 8);
  if (chunk < 8) chunk = 8;
  cl_int nchunks = (cl_int)((span + chunk - 1) / chunk), kbase_ = (cl_int)kbase;
  if (nchunks < 1) nchunks = 1;

  const size_t part_bytes =
      (size_t)B * Hq * Sq * (size_t)nchunks * (size_t)(Dv + 2) * sizeof(cl_float);
  cl_mem part, kvl = NULL;
  clrt_sdpa_opts op;
  s = clrt_sdpa_opts_init(c, d, "pocl", &op);
  if (s != ATTN_OK) return s;
  s = clrt_scratch_alloc(c, CL_MEM_READ_WRITE, part_bytes, NULL, "pocl: the decode partials",
                         &part);
  if (s != ATTN_OK) {
    clrt_sdpa_opts_release(c, &op);
    return s;
  }
  cl_int has_kvl = d->kv_lens != NULL;
  s = clrt_kv_lens_copy(c, d, "pocl", &kvl);
  if (s != ATTN_OK) {
    clrt_scratch_free(c, part);
    clrt_sdpa_opts_release(c, &op);
    return s;
  }

  cl_mem q = clrt_mem_of(&d->q), k = clrt_mem_of(&d->k), v = clrt_mem_of(&d->v), out = clrt_mem_of(&d->out);
  cl_mem mask = clrt_mem_of(&d->mask), lse = clrt_mem_of(&d->lse);
  cl_long q_off = d->q.offset, k_off = d->k.offset, v_off = d->v.offset, o_off = d->out.offset;
  cl_long m_off = d->mask.offset, l_off = d->lse.offset;
  cl_long4 q_st = clrt_strides4(&d->q), k_st = clrt_strides4(&d->k), v_st = clrt_strides4(&d->v),
           o_st = clrt_strides4(&d->out), m_st = clrt_strides4(&d->mask), l_st = clrt_strides4(&d->lse);
  cl_int mask_kind = d->mask.buf ? (cl_int)d->mask_kind : 0;
  cl_int has_lse = lse != NULL;
  cl_float scale = d->scale;

  s = clrt_set_args(kp, 26 + CLRT_OPTS_NARGS, CLRT_ARG(q), CLRT_ARG(q_off), CLRT_ARG(q_st),
                    CLRT_ARG(k), CLRT_ARG(k_off), CLRT_ARG(k_st), CLRT_ARG(v), CLRT_ARG(v_off),
                    CLRT_ARG(v_st), CLRT_ARG(mask), CLRT_ARG(m_off), CLRT_ARG(m_st),
                    CLRT_ARG(mask_kind), CLRT_ARG(kvl), CLRT_ARG(has_kvl), CLRT_ARG(part),
                    CLRT_ARG(nchunks), CLRT_ARG(chunk), CLRT_ARG(kbase_), CLRT_ARG(Hq),
                    CLRT_ARG(Hkv), CLRT_ARG(Sq), CLRT_ARG(Skv), CLRT_ARG(D), CLRT_ARG(Dv),
                    CLRT_ARG(scale), CLRT_OPTS_ARGS(op));
  if (s == ATTN_OK) {
    /* One work-item per group, as the flash kernel: each holds RB rows of q
     * and acc in private memory, which POCL would replicate per work-item. */
    size_t global[3] = {(size_t)nchunks, (size_t)Hkv * nrb, (size_t)B};
    size_t local[3] = {1, 1, 1};
    s = clrt_enqueue(c, kp, 3, global, local);
  }
  if (s == ATTN_OK)
    s = clrt_set_args(kr, 14, CLRT_ARG(part), CLRT_ARG(nchunks), CLRT_ARG(out), CLRT_ARG(o_off),
                      CLRT_ARG(o_st), CLRT_ARG(lse), CLRT_ARG(l_off), CLRT_ARG(l_st),
                      CLRT_ARG(has_lse), CLRT_ARG(Hq), CLRT_ARG(Sq), CLRT_ARG(Dv),
                      CLRT_ARG(op.sinks), CLRT_ARG(op.has_sinks));
  if (s == ATTN_OK) {
    size_t global[3] = {(size_t)Sq, (size_t)Hq, (size_t)B};
    s = clrt_enqueue(c, kr, 3, global, NULL);
  }
  clrt_host()->debug("pocl decode: RB=%d VW=%d chunks=%d x %d keys", rb, vw, nchunks, chunk);
  /* Released now, freed by the driver when the queued kernels are done. */
  clrt_scratch_free(c, part);
  clrt_scratch_free(c, kvl);
  clrt_sdpa_opts_release(c, &op);
  return s;
}
