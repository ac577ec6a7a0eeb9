/* Fused flash attention for OpenCL GPUs: the clblast backend's SDPA on GPU
 * devices (backends/clblast/flash.c chooses it and its tiles).
 *
 *   gpu_flash          out (and lse) of a block of BQ query rows, or, split
 *                      over the keys, its partial result for one key chunk
 *   gpu_flash_reduce   merges the key chunks' partials (split-key decoding)
 *   gpu_flash_weights  the attention weights, a second pass, when requested
 *
 * OpenCL C 1.2 core only: no subgroups, no cl_khr_fp16 (f16 goes through
 * vload_half / vstore_half, bf16 through 16-bit shifts: kernels/common.cl).
 *
 * Design. A work-group of NT work-items owns a block of BQ query rows. The
 * rows of a block are those of the query heads that share one kv head (GQA
 * by indexing: block row r is query (hk*G + (r0+r)/Sq, (r0+r)%Sq) with G =
 * Hq/Hkv), so K and V are read once for the whole group of heads, which
 * also gives decoding (Sq = 1) blocks of G rows. Keys are visited in tiles
 * of BK. The head dimension is processed in chunks of DC: a chunk of Q
 * (pre-scaled) and of K is staged in __local memory, each work-item
 * accumulates a TMS x TNS micro-tile of the BQ x BK scores in registers; the
 * online softmax (running max m and sum l per row) is reduced through local
 * memory; the probabilities go to a BQ x BK local tile; each V chunk is then
 * staged in the local memory K used, and each work-item accumulates a TMO x
 * TNO micro-tile of every DC chunk of the BQ x Dv output in registers, which
 * are written once at the end. No Sq x Skv buffer exists. Local memory:
 * (BQ + BK) * (DC + 1) + BQ * (BK + 1) + BQ * (BK / TNS) + 5 BQ floats,
 * whatever D is; registers: TMS*TNS scores and NCH*TMO*TNO accumulators.
 *
 * Visibility. A tile no row of the block can see (kv_lens, causal, window,
 * the split's key chunk) is never read. Inside the tiles read, a key a row
 * cannot see, or that a boolean mask hides, has p = 0 and is kept out of
 * P V even when its value is NaN or inf (0 * NaN is NaN): tiles where some
 * p is 0 take a select per FMA, the others plain FMAs.
 *
 * Numerics as kernels/sdpa.cl: scores in natural units (q pre-scaled),
 * softcap, ALiBi and the additive mask in that order, exp of s - m only
 * (an all -FLT_MAX row stays uniform), NaN scores spoil their row, a row
 * with no visible key gives zeros and lse = -inf (with sinks: the sink).
 *
 * Build options (backends/clblast/flash.c picks them per device; every
 * default below is a variant the GPU path uses):
 *   -DNT= -DBQ= -DBK= -DDC=  work-items, query rows, keys per tile, head-dim
 *                            chunk; -DTMS= -DTMO= rows of a work-item's
 *                            score and output micro-tiles
 *   -DNQ= -DNCH=  chunks of D and of Dv (ceil(D/DC), ceil(Dv/DC))
 *   -DQT= .. -DMT= -DWT=  storage types (kernels/common.cl); lse is f32.
 */

#ifndef NT
#define NT 256
#endif
#ifndef BQ
#define BQ 32
#endif
#ifndef BK
#define BK 32
#endif
#ifndef DC
#define DC 64
#endif
#ifndef NQ
#define NQ 2
#endif
#ifndef NCH
#define NCH 2
#endif
#ifndef TMS
#define TMS 4
#endif
#ifndef TMO
#define TMO 4
#endif
#ifndef WT
#define WT 0
#endif
/* Full unrolling of the micro-tile loops, so that GPU compilers keep the
 * tiles in registers (without it LLVM left them in stack memory: 272 bytes
 * per work-item on sm_90). The host turns it off on CPU devices
 * (-DFULL_UNROLL=0), where POCL took over 13 minutes to build the D = 512
 * variant with it. */
#ifndef FULL_UNROLL
#define FULL_UNROLL 1
#endif
#if FULL_UNROLL
#define UNROLL _Pragma("unroll")
#define UNROLL4 _Pragma("unroll 4")
#else
#define UNROLL
#define UNROLL4
#endif
ATTN_SDPA_TYPES
typedef ATTN_TYPE(WT) wt;

/* Score micro-tile TMS x TNS; CGS work-items share a row group. Its keys
 * are strided (key cg + CGS*x) so that neighbouring work-items read
 * neighbouring local rows. The output micro-tile TMO x TNO likewise, over
 * the columns of each DC chunk. */
#define TNS (BQ * BK / (NT * TMS))
#define CGS (BK / TNS)
#define TNO (BQ * DC / (NT * TMO))
#define CGO (DC / TNO)
#if TNS < 1 || TNO < 1 || BQ % TMS || BK % TNS || (BQ / TMS) * CGS != NT || BQ % TMO || \
    DC % TNO || (BQ / TMO) * CGO != NT || BQ > NT
#error "gpu_flash: inconsistent tile options"
#endif
/* AMD's compiler otherwise budgets registers for 8 waves per SIMD on gfx11
 * (128 VGPRs) and spills the larger head dims; two work-groups per CU need
 * far fewer waves. Other compilers ignore nothing: the macro is empty. */
#ifdef __AMDGCN__
#define GPU_OCCUPANCY __attribute__((amdgpu_waves_per_eu(1, 4)))
#else
#define GPU_OCCUPANCY
#endif

/* Padded pitches of the local tiles: rows one float apart in bank order. */
#define LDQ (DC + 1)
#define LDP (BK + 1)

static inline float max_nan(float a, float b) { return isnan(a) ? a : isnan(b) ? b : fmax(a, b); }

#define EXPNEG1(y, c) exp(-(y) * (c))
ATTN_SOFTCAP_FN(softcap1, float, int, as_int, as_float, EXPNEG1)

/* The query (head h, row i) of block row r; valid when r0 + r < G*Sq. */
#define ROW_OF(r, h, i, valid)                                                              \
  const int gr_ = r0 + (r);                                                                 \
  const bool valid = gr_ < G * Sq;                                                          \
  const int h = hk * G + (valid ? gr_ / Sq : 0);                                            \
  const int i = valid ? gr_ % Sq : 0;

/* What both passes need: the block, its rows and the union of their key
 * ranges [kbeg, kend). */
#define BLOCK_SETUP                                                                         \
  const int t = get_local_id(0);                                                            \
  const int r0 = get_group_id(0) * BQ;                                                      \
  const int b = get_group_id(2);                                                            \
  const int G = Hq / Hkv;                                                                   \
  const int kvl = has_kv_lens ? clamp(kv_lens[b], 0, Skv) : Skv;                            \
  /* Rows' ranges grow with i: the block's extremes give the union. A block */            \
  /* straddling two heads holds rows from i = 0 to i = Sq - 1. */                          \
  const int gr_last = min(r0 + BQ, G * Sq) - 1;                                             \
  int imin = r0 % Sq, imax = gr_last % Sq;                                                  \
  if (r0 / Sq != gr_last / Sq) imin = 0, imax = Sq - 1;                                     \
  int kbeg = attn_row_lo(imin, has_lo, lo_off);                                             \
  int kend = attn_row_hi(imax, kvl, has_hi, hi_off);                                        \
  /* This work-item's score rows: ranges, mask rows, ALiBi slopes. */                      \
  const int rgs = t / CGS, cgs = t % CGS;                                                   \
  int lo_r[TMS], hi_r[TMS];                                                                 \
  long m_r[TMS], pos_r[TMS];                                                                \
  float slope_r[TMS];                                                                       \
  UNROLL                                                                         \
  for (int a = 0; a < TMS; a++) {                                                           \
    ROW_OF(rgs * TMS + a, h, i, valid)                                                      \
    lo_r[a] = valid ? attn_row_lo(i, has_lo, lo_off) : Skv;                                 \
    hi_r[a] = valid ? attn_row_hi(i, kvl, has_hi, hi_off) : 0;                              \
    m_r[a] = m_off + b * m_st.s0 + h * m_st.s1 + i * m_st.s2;                               \
    pos_r[a] = (long)i + cpos;                                                              \
    slope_r[a] = has_alibi ? alibi[h] : 0.0f;                                               \
  }                                                                                         \
  const __global kt *kb = k + k_off + b * k_st.s0 + hk * k_st.s1;

/* Q chunk c (pre-scaled by scale; zeros past D and past the last row) into Qs. */
#define LOAD_Q(c)                                                                           \
  for (int e = t; e < BQ * DC; e += NT) {                                                   \
    const int r = e / DC, d = (c) * DC + e % DC;                                            \
    ROW_OF(r, h, i, valid)                                                                  \
    float x = 0.0f;                                                                         \
    if (valid && d < D)                                                                     \
      x = ATTN_LD(QT, q, q_off + b * q_st.s0 + h * q_st.s1 + i * q_st.s2 + d * q_st.s3) *     \
          scale;                                                                            \
    Qs[r * LDQ + e % DC] = x;                                                               \
  }

/* Chunk c of the rows j0 .. j0+BK-1 of K or V (base kb / vb, strides st,
 * width W) into KVs; rows outside [kbeg, kend) and columns past W are 0. */
#define LOAD_KV(T, base, st, W, c)                                                          \
  for (int e = t; e < BK * DC; e += NT) {                                                   \
    const int cc = e / DC, d = (c) * DC + e % DC, j = j0 + cc;                              \
    float x = 0.0f;                                                                         \
    if (j >= kbeg && j < kend && d < (W)) x = ATTN_LD(T, base, j * st.s2 + d * st.s3);       \
    KVs[cc * LDQ + e % DC] = x;                                                             \
  }

/* The scores of this work-item's micro-tile for keys j0 + cgs + CGS*x, with
 * every option applied and -inf where hidden; hidden keys are those outside
 * [kbeg, kend) too (a split's chunk). Needs the local tiles Qs and KVs. */
#define TILE_SCORES(s)                                                                      \
  float s[TMS][TNS];                                                                        \
  UNROLL                                                                         \
  for (int a = 0; a < TMS; a++)                                                             \
    UNROLL                                                                       \
    for (int x = 0; x < TNS; x++) s[a][x] = 0.0f;                                           \
  UNROLL                                                                         \
  for (int c = 0; c < NQ; c++) {                                                            \
    if (NQ > 1) LOAD_Q(c)                                                                   \
    LOAD_KV(KT, kb, k_st, D, c)                                                             \
    barrier(CLK_LOCAL_MEM_FENCE);                                                           \
    UNROLL4                                                                     \
    for (int d = 0; d < DC; d++) {                                                          \
      float qv[TMS];                                                                        \
      UNROLL                                                                     \
      for (int a = 0; a < TMS; a++) qv[a] = Qs[(rgs * TMS + a) * LDQ + d];                  \
      UNROLL                                                                     \
      for (int x = 0; x < TNS; x++) {                                                       \
        const float kv = KVs[(cgs + CGS * x) * LDQ + d];                                    \
        UNROLL                                                                   \
        for (int a = 0; a < TMS; a++) s[a][x] = fma(qv[a], kv, s[a][x]);                    \
      }                                                                                     \
    }                                                                                       \
    barrier(CLK_LOCAL_MEM_FENCE);                                                           \
  }                                                                                         \
  UNROLL                                                                         \
  for (int a = 0; a < TMS; a++)                                                             \
    UNROLL                                                                       \
    for (int x = 0; x < TNS; x++) {                                                         \
      const int j = j0 + cgs + CGS * x;                                                     \
      float sc = s[a][x];                                                                   \
      bool hid = j < lo_r[a] || j >= hi_r[a] || j < kbeg || j >= kend;                      \
      if (softcap > 0.0f) sc = softcap1(sc, softcap);                                       \
      if (has_alibi) sc -= slope_r[a] * fabs((float)(pos_r[a] - j));                        \
      if (mask_kind != 0 && !hid) {                                                         \
        const float mv = ATTN_LD(MT, mask, m_r[a] + j * m_st.s3);                           \
        if (mask_kind == 1)                                                                 \
          hid = mv == 0.0f;                                                                 \
        else                                                                                \
          sc += mv;                                                                         \
      }                                                                                     \
      s[a][x] = hid ? -INFINITY : sc;                                                       \
    }

__kernel __attribute__((reqd_work_group_size(NT, 1, 1))) GPU_OCCUPANCY
void gpu_flash(__global const qt *q, long q_off, long4 q_st,
               __global const kt *k, long k_off, long4 k_st,
               __global const vt *v, long v_off, long4 v_st,
               __global ot *out, long o_off, long4 o_st,
               __global const mt *mask, long m_off, long4 m_st, int mask_kind,
               __global const int *kv_lens, int has_kv_lens,
               __global float *lse, long l_off, long4 l_st, int has_lse,
               __global float *ml, int has_ml,
               __global float *part, int nsplit, int chunk, int kbase,
               int Hq, int Hkv, int Sq, int Skv, int D, int Dv, float scale,
               ATTN_OPTS_PARAMS) {
  __local float Qs[BQ * LDQ];
  __local float KVs[BK * LDQ];
  __local float Ps[BQ * LDP];
  __local float red[BQ * CGS];
  __local float m_s[BQ], ms_s[BQ], l_s[BQ], al_s[BQ], inv_s[BQ];
  __local int zflag;

  const int hk = get_group_id(1) % Hkv, split = get_group_id(1) / Hkv;
  BLOCK_SETUP
  if (nsplit > 1) {
    kbeg = max(kbeg, kbase + split * chunk);
    kend = min(kend, kbase + (split + 1) * chunk);
  }
  const __global vt *vb = v + v_off + b * v_st.s0 + hk * v_st.s1;

  /* This work-item's output micro-tile: rows rgo*TMO + a, columns
   * cgo + CGO*x of every DC chunk. */
  const int rgo = t / CGO, cgo = t % CGO;
  float acc[NCH][TMO][TNO];
  UNROLL
  for (int c = 0; c < NCH; c++)
    UNROLL
    for (int a = 0; a < TMO; a++)
      UNROLL
      for (int x = 0; x < TNO; x++) acc[c][a][x] = 0.0f;
  if (t < BQ) {
    m_s[t] = -INFINITY;
    ms_s[t] = 0.0f;
    l_s[t] = 0.0f;
  }
#if NQ == 1
  LOAD_Q(0) /* resident for the whole key loop */
#endif

  for (int j0 = kbeg - kbeg % BK; j0 < kend; j0 += BK) {
    if (t == 0) zflag = 0;
    TILE_SCORES(s)
    /* The block's new running max per row, and how much the old sums shrink. */
    UNROLL
    for (int a = 0; a < TMS; a++) {
      float mx = s[a][0];
      UNROLL
      for (int x = 1; x < TNS; x++) mx = max_nan(mx, s[a][x]);
      red[(rgs * TMS + a) * CGS + cgs] = mx;
    }
    barrier(CLK_LOCAL_MEM_FENCE);
    if (t < BQ) {
      float mx = red[t * CGS];
      for (int x = 1; x < CGS; x++) mx = max_nan(mx, red[t * CGS + x]);
      const float mo = m_s[t], mn = max_nan(mo, mx);
      /* ms = m, but 0 while m = -inf: exp(-inf - ms) is then 0, not NaN. */
      const float msn = mn == -INFINITY ? 0.0f : mn;
      al_s[t] = mo == -INFINITY ? 0.0f : exp(mo - msn);
      m_s[t] = mn;
      ms_s[t] = msn;
    }
    barrier(CLK_LOCAL_MEM_FENCE);
    /* Probabilities into Ps, their partial sums into red; V's first chunk
     * into KVs (K is no longer read). */
    bool zero = false;
    UNROLL
    for (int a = 0; a < TMS; a++) {
      const int r = rgs * TMS + a;
      const float ms = ms_s[r];
      float sum = 0.0f;
      UNROLL
      for (int x = 0; x < TNS; x++) {
        const float p = exp(s[a][x] - ms);
        zero |= p == 0.0f;
        sum += p;
        Ps[r * LDP + cgs + CGS * x] = p;
      }
      red[r * CGS + cgs] = sum;
    }
    if (zero) zflag = 1;
    LOAD_KV(VT, vb, v_st, Dv, 0)
    barrier(CLK_LOCAL_MEM_FENCE);
    if (t < BQ) {
      float sum = red[t * CGS];
      for (int x = 1; x < CGS; x++) sum += red[t * CGS + x];
      l_s[t] = l_s[t] * al_s[t] + sum;
    }
    const bool plain = zflag == 0;
    float al[TMO];
    UNROLL
    for (int a = 0; a < TMO; a++) al[a] = al_s[rgo * TMO + a];
    UNROLL
    for (int c = 0; c < NCH; c++) {
      if (c > 0) {
        LOAD_KV(VT, vb, v_st, Dv, c)
        barrier(CLK_LOCAL_MEM_FENCE);
      }
      UNROLL
      for (int a = 0; a < TMO; a++)
        UNROLL
        for (int x = 0; x < TNO; x++) acc[c][a][x] *= al[a];
      if (plain) {
        for (int cc = 0; cc < BK; cc++)
          UNROLL
          for (int a = 0; a < TMO; a++) {
            const float p = Ps[(rgo * TMO + a) * LDP + cc];
            UNROLL
            for (int x = 0; x < TNO; x++)
              acc[c][a][x] = fma(p, KVs[cc * LDQ + cgo + CGO * x], acc[c][a][x]);
          }
      } else {
        for (int cc = 0; cc < BK; cc++)
          UNROLL
          for (int a = 0; a < TMO; a++) {
            const float p = Ps[(rgo * TMO + a) * LDP + cc];
            UNROLL
            for (int x = 0; x < TNO; x++) {
              const float y = fma(p, KVs[cc * LDQ + cgo + CGO * x], acc[c][a][x]);
              acc[c][a][x] = p == 0.0f ? acc[c][a][x] : y;
            }
          }
      }
      barrier(CLK_LOCAL_MEM_FENCE);
    }
  }

  /* Each row's scale (1 / sum, the sink included) and lse; a split writes
   * its chunk's normalised partial and lse, the sink left to the reduce. */
  __global float *pl = part + (long)get_num_groups(2) * Hq * Sq * nsplit * Dv;
  if (t < BQ) {
    ROW_OF(t, h, i, valid)
    const float m = m_s[t], l = l_s[t];
    float inv, lv;
    if (has_sinks && nsplit == 1) {
      const float z = sinks[h];
      const float mz = max_nan(m, z);
      const float e = l == 0.0f ? 0.0f : exp(m - mz);
      const float lz = fma(l, e, exp(z - mz));
      inv = e / lz;
      lv = mz + log(lz);
    } else {
      inv = l == 0.0f ? 0.0f : 1.0f / l;
      lv = l == 0.0f ? -INFINITY : m + log(l);
    }
    inv_s[t] = inv;
    if (valid) {
      const long row = ((long)b * Hq + h) * Sq + i;
      if (nsplit > 1) {
        pl[row * nsplit + split] = lv;
      } else {
        if (has_lse) lse[l_off + b * l_st.s0 + h * l_st.s1 + i * l_st.s2] = lv;
        if (has_ml) {
          ml[row * 2] = m;
          ml[row * 2 + 1] = inv;
        }
      }
    }
  }
  barrier(CLK_LOCAL_MEM_FENCE);
  UNROLL
  for (int a = 0; a < TMO; a++) {
    ROW_OF(rgo * TMO + a, h, i, valid)
    if (!valid) continue;
    const float sc = inv_s[rgo * TMO + a];
    const long row = ((long)b * Hq + h) * Sq + i;
    UNROLL
    for (int c = 0; c < NCH; c++)
      UNROLL
      for (int x = 0; x < TNO; x++) {
        const int e = c * DC + cgo + CGO * x;
        if (e >= Dv) continue;
        if (nsplit > 1)
          part[(row * nsplit + split) * Dv + e] = acc[c][a][x] * sc;
        else
          ATTN_ST(OT, out, o_off + b * o_st.s0 + h * o_st.s1 + i * o_st.s2 + e * o_st.s3,
                  acc[c][a][x] * sc);
      }
  }
}

/* out[b, h, i, e] from the nsplit partials of row (b, h, i): lse_s and the
 * normalised o_s (gpu_flash with nsplit > 1): lse = logaddexp over the
 * chunks (and the sink), out = sum exp(lse_s - lse) o_s. Chunks that saw no
 * key have lse_s = -inf and count for nothing; if all did, zeros and -inf
 * (the sink's logit with sinks). One work-item per (e, i, b*Hq + h). */
__kernel void gpu_flash_reduce(__global const float *part, int nsplit, int B,
                               __global ot *out, long o_off, long4 o_st,
                               __global float *lse, long l_off, long4 l_st, int has_lse,
                               int Hq, int Sq, int Dv,
                               __global const float *sinks, int has_sinks) {
  const int e = get_global_id(0), i = get_global_id(1), bh = get_global_id(2);
  if (e >= Dv || i >= Sq) return;
  const int b = bh / Hq, h = bh % Hq;
  const long row = (long)bh * Sq + i;
  const __global float *pl = part + (long)B * Hq * Sq * nsplit * Dv + row * nsplit;
  const __global float *po = part + row * nsplit * Dv + e;
  float m = has_sinks ? sinks[h] : -INFINITY;
  for (int s = 0; s < nsplit; s++) m = max_nan(m, pl[s]);
  float num = 0.0f, den = 0.0f;
  if (m != -INFINITY) {
    for (int s = 0; s < nsplit; s++) {
      if (pl[s] == -INFINITY) continue; /* an empty chunk: its o_s is 0 */
      const float w = exp(pl[s] - m);
      num = fma(w, po[(long)s * Dv], num);
      den += w;
    }
    if (has_sinks) den += exp(sinks[h] - m);
  }
  const float o = den == 0.0f ? 0.0f : num / den;
  ATTN_ST(OT, out, o_off + b * o_st.s0 + h * o_st.s1 + i * o_st.s2 + e * o_st.s3, o);
  if (has_lse && e == 0)
    lse[l_off + b * l_st.s0 + h * l_st.s1 + i * l_st.s2] = den == 0.0f ? m : m + log(den);
}

/* w[b, h, i, j] = exp(s - m) * inv for visible keys, else 0, with each
 * row's max m and scale inv that gpu_flash left in ml ([row][2]; inv = 0
 * marks a row that sees nothing). Same blocks and score tiles as gpu_flash,
 * over every key. */
__kernel __attribute__((reqd_work_group_size(NT, 1, 1))) GPU_OCCUPANCY
void gpu_flash_weights(__global const qt *q, long q_off, long4 q_st,
                       __global const kt *k, long k_off, long4 k_st,
                       __global const mt *mask, long m_off, long4 m_st, int mask_kind,
                       __global const int *kv_lens, int has_kv_lens,
                       __global const float *ml,
                       __global wt *w, long w_off, long4 w_st,
                       int Hq, int Hkv, int Sq, int Skv, int D, float scale,
                       ATTN_OPTS_PARAMS) {
  __local float Qs[BQ * LDQ];
  __local float KVs[BK * LDQ];

  const int hk = get_group_id(1);
  BLOCK_SETUP
  float m_w[TMS], inv_w[TMS];
  long w_r[TMS];
  bool valid_r[TMS];
  UNROLL
  for (int a = 0; a < TMS; a++) {
    ROW_OF(rgs * TMS + a, h, i, valid)
    const long row = ((long)b * Hq + h) * Sq + i;
    m_w[a] = valid ? ml[row * 2] : 0.0f;
    inv_w[a] = valid ? ml[row * 2 + 1] : 0.0f;
    w_r[a] = w_off + b * w_st.s0 + h * w_st.s1 + i * w_st.s2;
    valid_r[a] = valid;
  }
#if NQ == 1
  LOAD_Q(0)
#endif
  /* Every tile, so that every weight is written; keys no row sees are not
   * read (LOAD_KV) and come out as zeros. No branch around the barriers of
   * TILE_SCORES: POCL, with the loops unrolled, computed wrong weights with
   * one there. */
  for (int j0 = 0; j0 < Skv; j0 += BK) {
    TILE_SCORES(s)
    UNROLL
    for (int a = 0; a < TMS; a++)
      UNROLL
      for (int x = 0; x < TNS; x++) {
        const int j = j0 + cgs + CGS * x;
        const float p = inv_w[a] == 0.0f ? 0.0f : exp(s[a][x] - m_w[a]) * inv_w[a];
        if (valid_r[a] && j < Skv) ATTN_ST(WT, w, w_r[a] + j * w_st.s3, p);
      }
  }
}
