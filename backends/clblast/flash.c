/* The clblast backend's fused SDPA path: host side of kernels/gpu_flash.cl.
 * See flash.h. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "flash.h"

/* Key chunks of split-key decoding: at most this many, of at least this
 * many keys each (below that the partials cost more than they save). */
#define SPLIT_MAX 64
#define SPLIT_MIN_KEYS 256
/* Query rows (Sq) up to which the keys are split. */
#define SPLIT_MAX_SQ 8

/* The micro-tiles: rows per work-item of the score tile (bq x bk) and of
 * each output chunk (bq x dc), the first of 4, 2, 1, 8 that divides evenly
 * (kernels/gpu_flash.cl's #error check spells the same rule); 0 if none. */
static int micro_rows(int nt, int bq, int cols) {
  static const int cand[] = {4, 2, 1, 8};
  for (int i = 0; i < 4; i++) {
    const int m = cand[i];
    if (bq % m || ((long)bq * cols) % ((long)nt * m)) continue;
    const int n = (int)((long)bq * cols / ((long)nt * m));
    if (n >= 1 && cols % n == 0) return m;
  }
  return 0;
}

size_t clb_flash_local_bytes(int nt, int bq, int bk, int dc) {
  const int tms = micro_rows(nt, bq, bk);
  const int cgs = tms ? bk / (bq * bk / (nt * tms)) : bk;
  return sizeof(float) *
             ((size_t)(bq + bk) * (size_t)(dc + 1) + (size_t)bq * (size_t)(bk + 1) +
              (size_t)bq * (size_t)cgs + 5 * (size_t)bq) +
         sizeof(int);
}

static bool tiles_valid(int nt, int bq, int bk, int dc) {
  return nt > 0 && bq > 0 && bk > 0 && dc > 0 && bq <= nt && micro_rows(nt, bq, bk) &&
         micro_rows(nt, bq, dc);
}

bool clb_flash_tiles_usable(const clrt_ctx *c, const clb_flash_params *p) {
  return tiles_valid(p->nt, p->bq, p->bk, p->dc) && c->max_wg >= (size_t)p->nt &&
         clb_flash_local_bytes(p->nt, p->bq, p->bk, p->dc) <= p->local;
}

void clb_flash_params_init(clrt_ctx *c, clb_flash_params *p) {
  cl_ulong local = 0;
  cl_uint cus = 1;
  if (clGetDeviceInfo(c->dev.id, CL_DEVICE_LOCAL_MEM_SIZE, sizeof local, &local, NULL) !=
      CL_SUCCESS)
    local = 0;
  if (clGetDeviceInfo(c->dev.id, CL_DEVICE_MAX_COMPUTE_UNITS, sizeof cus, &cus, NULL) !=
          CL_SUCCESS ||
      cus == 0)
    cus = 1;
  p->cus = (int)cus;
  p->local = (size_t)local;
  /* 256 work-items (8 NVIDIA warps, 4 AMD wave64s or 8 wave32s) over 32
   * query rows and 32-key tiles, where the device allows (else 128, 64):
   * each then holds 4 x 1 scores and Dv/32 accumulators, which compiles
   * without spills for every head dim up to 512 on sm_80/sm_90 and
   * gfx90a/gfx1100 (tests/gpu-codegen.sh; at 128 work-items gfx1100 spilled
   * from D = 128). The head-dim chunk is the largest of 64, 32, 16 whose
   * work-group fits the local memory the device reports: 64 on NVIDIA
   * (48 KiB per group) and AMD (64 KiB per CU, two groups). */
  p->nt = c->max_wg >= 256 ? 256 : c->max_wg >= 128 ? 128 : 64;
  p->bq = 32;
  p->bk = 32;
  p->dc = 16;
  p->exact = false;
  snprintf(p->src, sizeof p->src, "default");
  for (int dc = 64; dc >= 16; dc /= 2)
    if (clb_flash_local_bytes(p->nt, p->bq, p->bk, dc) <= local) {
      p->dc = dc;
      break;
    }
  /* What attn tune measured best on this device, if it fits. */
  char key[1024], buf[64];
  clb_tune_key(c, key, sizeof key);
  char *text = clrt_tune_load(key);
  if (text) {
    int nt, bq, bk, dc;
    const char *v = clrt_tune_value(text, "flash_tiles", buf, sizeof buf);
    clb_flash_params t = *p;
    if (v && sscanf(v, "%d,%d,%d,%d", &nt, &bq, &bk, &dc) == 4 &&
        (t.nt = nt, t.bq = bq, t.bk = bk, t.dc = dc, clb_flash_tiles_usable(c, &t))) {
      *p = t;
      snprintf(p->src, sizeof p->src, "cache");
    } else {
      clrt_host()->debug("clblast: ignoring tuned tiles that do not parse or fit; using the defaults");
    }
    free(text);
  }
  const char *env = getenv("ATTN_CLBLAST_FLASH");
  if (env && *env) {
    int nt, bq, bk, dc;
    if (sscanf(env, "%d,%d,%d,%d", &nt, &bq, &bk, &dc) == 4 && tiles_valid(nt, bq, bk, dc)) {
      p->nt = nt, p->bq = bq, p->bk = bk, p->dc = dc;
      p->exact = true;
      snprintf(p->src, sizeof p->src, "env");
    } else {
      clrt_host()->debug("clblast: ATTN_CLBLAST_FLASH=%s ignored (NT,BQ,BK,DC that tile evenly)",
                         env);
    }
  }
  p->usable = clb_flash_tiles_usable(c, p);
  clrt_host()->debug("clblast flash tiles: NT=%d BQ=%d BK=%d DC=%d (%s; %zu B local of %llu)%s",
                     p->nt, p->bq, p->bk, p->dc, p->src,
                     clb_flash_local_bytes(p->nt, p->bq, p->bk, p->dc),
                     (unsigned long long)local, p->usable ? "" : ": unusable here");
}

/* The tiles of one call: the context's, with the chunk no wider than the
 * head dims need, and half the query rows from head dim 256 up (their
 * accumulators would otherwise leave room for only one work-group per
 * NVIDIA SM). */
typedef struct flash_tiles {
  int nt, bq, bk, dc, nq, nch, tms, tmo;
} flash_tiles;

static flash_tiles tiles_for(const clb_flash_params *p, const attn_sdpa_desc *d) {
  const int64_t D = d->q.shape[3], Dv = d->v.shape[3], m = D > Dv ? D : Dv;
  int hd = 16;
  while (hd < m) hd *= 2;
  flash_tiles t = {p->nt, p->bq, p->bk, p->dc < hd ? p->dc : hd, 0, 0, 0, 0};
  if (hd >= 256 && !p->exact && tiles_valid(t.nt, t.bq / 2, t.bk, t.dc)) t.bq /= 2;
  t.nq = (int)((D + t.dc - 1) / t.dc);
  t.nch = (int)((Dv + t.dc - 1) / t.dc);
  t.tms = micro_rows(t.nt, t.bq, t.bk);
  t.tmo = micro_rows(t.nt, t.bq, t.dc);
  return t;
}

/* The build options of the program for d at tiles t. */
static void flash_options(const flash_tiles *t, bool cpu, const attn_sdpa_desc *d, char *buf,
                          size_t len) {
  snprintf(buf, len, "-DNT=%d -DBQ=%d -DBK=%d -DDC=%d -DNQ=%d -DNCH=%d -DTMS=%d -DTMO=%d%s",
           t->nt, t->bq, t->bk, t->dc, t->nq, t->nch, t->tms, t->tmo,
           cpu ? " -DFULL_UNROLL=0" : "");
  clrt_dtype_option(buf, len, "QT", &d->q);
  clrt_dtype_option(buf, len, "KT", &d->k);
  clrt_dtype_option(buf, len, "VT", &d->v);
  clrt_dtype_option(buf, len, "OT", &d->out);
  clrt_dtype_option(buf, len, "MT", &d->mask);
  clrt_dtype_option(buf, len, "WT", &d->weights);
}

/* How many key chunks: for few query rows (decoding), enough work-groups
 * for two per compute unit, in chunks of at least SPLIT_MIN_KEYS keys. */
static int split_count(const clb_flash_params *p, const attn_sdpa_desc *d, long groups,
                       int64_t span) {
  const char *env = getenv("ATTN_CLBLAST_FLASH_SPLIT");
  if (d->weights.buf) return 1; /* the weights pass needs each row's whole max and sum */
  if (env && atoi(env) > 0) return atoi(env) < SPLIT_MAX ? atoi(env) : SPLIT_MAX;
  if (d->q.shape[2] > SPLIT_MAX_SQ) return 1;
  long want = (2L * p->cus + groups - 1) / groups;
  const long maxc = (long)((span + SPLIT_MIN_KEYS - 1) / SPLIT_MIN_KEYS);
  if (want > maxc) want = maxc;
  if (want > SPLIT_MAX) want = SPLIT_MAX;
  return want < 1 ? 1 : (int)want;
}

attn_status clb_flash_sdpa(clrt_ctx *c, const clb_flash_params *p, const attn_sdpa_desc *d) {
  cl_int B = (cl_int)d->q.shape[0], Hq = (cl_int)d->q.shape[1], Hkv = (cl_int)d->k.shape[1];
  cl_int Sq = (cl_int)d->q.shape[2], Skv = (cl_int)d->k.shape[2];
  cl_int D = (cl_int)d->q.shape[3], Dv = (cl_int)d->v.shape[3];
  const flash_tiles t = tiles_for(p, d);
  if (!t.tms || !t.tmo)
    return clrt_host()->error(ATTN_ERR_UNSUPPORTED, "clblast: no micro-tiles for NT=%d BQ=%d BK=%d DC=%d",
                              t.nt, t.bq, t.bk, t.dc);
  char opts[256];
  flash_options(&t, (c->dev.type & CL_DEVICE_TYPE_CPU) != 0, d, opts, sizeof opts);
  cl_kernel kf, kw = NULL, kr = NULL;
  attn_status s = clrt_kernel_get(c, "gpu_flash", opts, "gpu_flash", &kf);
  if (s == ATTN_OK && d->weights.buf) s = clrt_kernel_get(c, "gpu_flash", opts, "gpu_flash_weights", &kw);
  if (s != ATTN_OK) return s;

  /* Rows of a kv head's group of query heads, in blocks of BQ. */
  const long rows = (long)(Hq / Hkv) * Sq;
  const long nblocks = (rows + t.bq - 1) / t.bq;
  /* The keys visible to some row of some batch item: [kbase, kbase + span). */
  int64_t kbase, kspan_end;
  clrt_sdpa_key_span_all(d, &kbase, &kspan_end);
  cl_int nsplit = split_count(p, d, nblocks * Hkv * B, kspan_end - kbase);
  cl_int chunk = (cl_int)clrt_round_up((size_t)((kspan_end - kbase + nsplit - 1) / nsplit),
                                       (size_t)t.bk);
  if (chunk < t.bk) chunk = t.bk;
  cl_int kbase_ = (cl_int)kbase;
  if (nsplit > 1) s = clrt_kernel_get(c, "gpu_flash", opts, "gpu_flash_reduce", &kr);
  if (s != ATTN_OK) return s;

  clrt_sdpa_opts op;
  s = clrt_sdpa_opts_init(c, d, "clblast", &op);
  if (s != ATTN_OK) return s;
  cl_mem kvl = NULL, ml = NULL, part = NULL;
  cl_int has_kvl = d->kv_lens != NULL;
  s = clrt_kv_lens_copy(c, d, "clblast", &kvl);
  /* The weights pass needs each row's max and scale. */
  if (s == ATTN_OK && d->weights.buf)
    s = clrt_scratch_alloc(c, CL_MEM_READ_WRITE, (size_t)B * Hq * Sq * 2 * sizeof(cl_float),
                           NULL, "clblast: the row max and sum scratch", &ml);
  if (s == ATTN_OK && nsplit > 1)
    s = clrt_scratch_alloc(c, CL_MEM_READ_WRITE,
                           (size_t)B * Hq * Sq * (size_t)nsplit * (size_t)(Dv + 1) *
                               sizeof(cl_float),
                           NULL, "clblast: the split-key partials", &part);

  cl_mem q = clrt_mem_of(&d->q), k = clrt_mem_of(&d->k), v = clrt_mem_of(&d->v), out = clrt_mem_of(&d->out);
  cl_mem mask = clrt_mem_of(&d->mask), lse = clrt_mem_of(&d->lse);
  cl_long q_off = d->q.offset, k_off = d->k.offset, v_off = d->v.offset, o_off = d->out.offset;
  cl_long m_off = d->mask.offset, l_off = d->lse.offset;
  cl_long4 q_st = clrt_strides4(&d->q), k_st = clrt_strides4(&d->k), v_st = clrt_strides4(&d->v),
           o_st = clrt_strides4(&d->out), m_st = clrt_strides4(&d->mask), l_st = clrt_strides4(&d->lse);
  cl_int mask_kind = d->mask.buf ? (cl_int)d->mask_kind : 0;
  cl_int has_lse = lse != NULL, has_ml = ml != NULL;
  cl_float scale = d->scale;
  /* Absent operands are never read or written: any valid buffer will do. */
  cl_mem mask_a = mask ? mask : q, kvl_a = kvl ? kvl : q, lse_a = lse ? lse : out,
         ml_a = ml ? ml : out, part_a = part ? part : out;

  if (s == ATTN_OK)
    s = clrt_set_args(kf, 35 + CLRT_OPTS_NARGS, CLRT_ARG(q), CLRT_ARG(q_off), CLRT_ARG(q_st),
                      CLRT_ARG(k), CLRT_ARG(k_off), CLRT_ARG(k_st), CLRT_ARG(v),
                      CLRT_ARG(v_off), CLRT_ARG(v_st), CLRT_ARG(out), CLRT_ARG(o_off),
                      CLRT_ARG(o_st), CLRT_ARG(mask_a), CLRT_ARG(m_off), CLRT_ARG(m_st),
                      CLRT_ARG(mask_kind), CLRT_ARG(kvl_a), CLRT_ARG(has_kvl), CLRT_ARG(lse_a),
                      CLRT_ARG(l_off), CLRT_ARG(l_st), CLRT_ARG(has_lse), CLRT_ARG(ml_a),
                      CLRT_ARG(has_ml), CLRT_ARG(part_a), CLRT_ARG(nsplit), CLRT_ARG(chunk),
                      CLRT_ARG(kbase_), CLRT_ARG(Hq), CLRT_ARG(Hkv), CLRT_ARG(Sq),
                      CLRT_ARG(Skv), CLRT_ARG(D), CLRT_ARG(Dv), CLRT_ARG(scale),
                      CLRT_OPTS_ARGS(op));
  /* 35 above counts the pairs: keep it equal to the kernel's parameter count. */
  if (s == ATTN_OK) {
    size_t global[3] = {(size_t)nblocks * (size_t)t.nt, (size_t)Hkv * (size_t)nsplit,
                        (size_t)B};
    size_t local[3] = {(size_t)t.nt, 1, 1};
    s = clrt_enqueue(c, kf, 3, global, local);
  }
  if (s == ATTN_OK && kr) {
    cl_int B_ = B;
    s = clrt_set_args(kr, 15, CLRT_ARG(part), CLRT_ARG(nsplit), CLRT_ARG(B_), CLRT_ARG(out),
                      CLRT_ARG(o_off), CLRT_ARG(o_st), CLRT_ARG(lse_a), CLRT_ARG(l_off),
                      CLRT_ARG(l_st), CLRT_ARG(has_lse), CLRT_ARG(Hq), CLRT_ARG(Sq),
                      CLRT_ARG(Dv), CLRT_ARG(op.sinks), CLRT_ARG(op.has_sinks));
    if (s == ATTN_OK) {
      size_t global[3] = {clrt_round_up((size_t)Dv, 32), (size_t)Sq, (size_t)B * (size_t)Hq};
      size_t local[3] = {32, 1, 1};
      s = clrt_enqueue(c, kr, 3, global, local);
    }
  }
  if (s == ATTN_OK && kw) {
    cl_mem w = clrt_mem_of(&d->weights);
    cl_long w_off = d->weights.offset;
    cl_long4 w_st = clrt_strides4(&d->weights);
    s = clrt_set_args(kw, 22 + CLRT_OPTS_NARGS, CLRT_ARG(q), CLRT_ARG(q_off), CLRT_ARG(q_st),
                      CLRT_ARG(k), CLRT_ARG(k_off), CLRT_ARG(k_st), CLRT_ARG(mask_a),
                      CLRT_ARG(m_off), CLRT_ARG(m_st), CLRT_ARG(mask_kind), CLRT_ARG(kvl_a),
                      CLRT_ARG(has_kvl), CLRT_ARG(ml), CLRT_ARG(w), CLRT_ARG(w_off),
                      CLRT_ARG(w_st), CLRT_ARG(Hq), CLRT_ARG(Hkv), CLRT_ARG(Sq), CLRT_ARG(Skv),
                      CLRT_ARG(D), CLRT_ARG(scale), CLRT_OPTS_ARGS(op));
    if (s == ATTN_OK) {
      size_t global[3] = {(size_t)nblocks * (size_t)t.nt, (size_t)Hkv, (size_t)B};
      size_t local[3] = {(size_t)t.nt, 1, 1};
      s = clrt_enqueue(c, kw, 3, global, local);
    }
  }
  clrt_host()->debug("clblast flash: %s, %ld blocks x %d kv heads x %d, %d key chunk(s) of %d",
                     opts, nblocks, (int)Hkv, (int)B, (int)nsplit, (int)chunk);
  /* Released now, freed by the driver when the queued kernels are done. */
  clrt_scratch_free(c, kvl);
  clrt_scratch_free(c, ml);
  clrt_scratch_free(c, part);
  clrt_sdpa_opts_release(c, &op);
  return s;
}
