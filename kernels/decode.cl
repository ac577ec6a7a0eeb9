/* Split-key ("flash-decoding") attention for few query rows over a long KV
 * cache, on OpenCL CPU devices (POCL). The fused flash kernel (sdpa.cl) puts
 * 2 x VW query rows of one head in the lanes of its vectors and reads the
 * whole K/V of its head: with Sq = 1 it uses 1 lane of 32, reads K/V once per
 * query head (4x for a GQA group of 4) and has only Hq work-items. Here:
 *
 *   decode_partial: one work-item per (key chunk, row block, batch). The rows
 *     of a kv head are the (query head of its GQA group, query index) pairs;
 *     a row block holds RB of them, so K/V are read once per kv head for
 *     groups of up to RB rows. Vectors run along the head dim (VW floats per
 *     load); each key's scores are RB dot products. Softmax is online within
 *     the chunk (scores in natural units, q pre-scaled by scale, exponentials
 *     of s - m in base 2, as sdpa.cl), and the chunk writes its partial (max,
 *     sum, unnormalised acc[Dv]) per row to a scratch. The chunks cover only
 *     the keys [kbase, kbase + nchunks * chunk) that some row can see.
 *   decode_reduce: one work-item per row combines the chunks' partials and
 *     the sink, writes out and lse.
 *
 * Visibility of key j for query row i (as sdpa.cl): the row's range of
 * kernels/common.cl (attn_row_lo / attn_row_hi) and the mask; softcap, ALiBi
 * and the mask apply in that order (ATTN_OPTS_PARAMS). Hidden keys
 * contribute nothing even when their values are NaN; a row that sees no key
 * gets zeros and lse = -inf (with sinks: the sink's logit).
 *
 * Build options (the host keeps the variants few):
 *   -DVW=8|16   vector width along the head dim (D and Dv are multiples)
 *   -DHD=n      max(D, Dv) rounded up to 16..512: private array size
 *   -DEXACT=1   D == Dv == HD: constant loop bounds
 *   -DRB=n      rows per work-item (1, 2, 4 or 8)
 *   -DQT= -DKT= -DVT= -DOT= -DMT=  storage types of q, k, v, out and the
 *               mask (kernels/common.cl); left out, f32. K and V, the bytes
 *               decode is bound by, are read with vector loads of their
 *               storage type (vload_halfN, or ushortN shifted), widened in
 *               registers; the partials stay f32.
 *   -DKPAIR=1 -DVPAIR=1  bf16 K / V (VW 16) whose rows start at even
 *               elements: read as 8 uints = 16 bf16, the even elements by a
 *               shift and the odd ones by a mask, without widening each
 *               ushort first (12-15% faster decode from memory on POCL). The
 *               16 lanes then hold the elements in the order 0 2 4 .. 14 1 3
 *               .. 15: q is loaded in that order (a dot product does not care)
 *               and acc, which accumulates V in it, is put back in order when
 *               the partials are written.
 * k and v have unit stride along the head dim (the host checks); q, out and
 * lse may have any strides.
 */

#ifndef VW
#define VW 16
#endif
#ifndef HD
#define HD 128
#endif
#ifndef EXACT
#define EXACT 0
#endif
#ifndef RB
#define RB 4
#endif

ATTN_SDPA_TYPES

/* Full unrolling of the loops over rows and vectors; at HD = 512 LLVM
 * cannot (and says so on stderr), so only up to 256. */
#if HD <= 256
#define UNROLL _Pragma("unroll")
#else
#define UNROLL
#endif

#define KB 8 /* keys per softmax block */
#define MAX_CHUNKS 64 /* the host never splits the keys further */
#define NX (HD / VW) /* vectors per row, at most */
#define LOG2E 1.4426950408889634f
#define LN2 0.6931471805599453f

#ifndef KPAIR
#define KPAIR 0
#endif
#ifndef VPAIR
#define VPAIR 0
#endif
#if (KPAIR || VPAIR) && VW != 16
#error "KPAIR / VPAIR need VW=16"
#endif

/* 16 bf16 at p[16x ..]: even elements in lanes 0-7, odd ones in 8-15. */
static inline float16 bf16_pairs16(int x, const __global ushort *p) {
  const uint8 u = vload8(x, (const __global uint *)p);
  return (float16)(as_float8(u << 16), as_float8(u & (uint8)(0xffff0000u)));
}

#if VW == 16
#define VEC float16
#define VLOAD(T, x, p) ATTN_VLOAD16(T, x, p)
#define VSTORE vstore16
#else
#define VEC float8
#define VLOAD(T, x, p) ATTN_VLOAD8(T, x, p)
#define VSTORE vstore8
#endif

#if EXACT
#define NQ NX
#define NV NX
#else
#define NQ (D / VW)
#define NV (Dv / VW)
#endif


#if VPAIR
#define VLOADV(x, p) bf16_pairs16((x), (p))
#else
#define VLOADV(x, p) VLOAD(VT, x, p)
#endif

/* A VEC folded to a float8 of partial sums. */
#if VW == 16
#define FOLD8(a) ((a).lo + (a).hi)
#else
#define FOLD8(a) (a)
#endif

/* Lane t of the result: the sum of the 8 lanes of b[t]. */
static inline float8 sum8x8(const float8 b[8]) {
  const float8 c01 = (float8)(b[0].even + b[0].odd, b[1].even + b[1].odd);
  const float8 c23 = (float8)(b[2].even + b[2].odd, b[3].even + b[3].odd);
  const float8 c45 = (float8)(b[4].even + b[4].odd, b[5].even + b[5].odd);
  const float8 c67 = (float8)(b[6].even + b[6].odd, b[7].even + b[7].odd);
  const float8 d0 = (float8)(c01.even + c01.odd, c23.even + c23.odd);
  const float8 d1 = (float8)(c45.even + c45.odd, c67.even + c67.odd);
  return (float8)(d0.even + d0.odd, d1.even + d1.odd);
}

/* Partials: for row id ((b*Hq + h)*Sq + i) and chunk c, PSTRIDE = Dv + 2
 * floats at (row*nchunks + c) * PSTRIDE: m (the max score, -inf if the chunk
 * saw no key), l (sum of e^(s - m)), then acc[Dv]. */
#define EXPNEG8(y, c) exp((y) * -(c))
ATTN_SOFTCAP_FN(softcap8, float8, int8, as_int8, as_float8, EXPNEG8)

__kernel void decode_partial(__global const qt *q, long q_off, long4 q_st,
                             __global const kt *k, long k_off, long4 k_st,
                             __global const vt *v, long v_off, long4 v_st,
                             __global const mt *mask, long m_off, long4 m_st, int mask_kind,
                             __global const int *kv_lens, int has_kv_lens,
                             __global float *part, int nchunks, int chunk, int kbase,
                             int Hq, int Hkv, int Sq, int Skv, int D, int Dv, float scale,
                             ATTN_OPTS_PARAMS) {
  const int c = get_global_id(0);
  const int G = Hq / Hkv, nrows = G * Sq, nrb = (nrows + RB - 1) / RB;
  const int hk = get_global_id(1) / nrb;
  const int r0 = get_global_id(1) % nrb * RB;
  const int b = get_global_id(2);

  const int kvl = has_kv_lens ? clamp(kv_lens[b], 0, Skv) : Skv;
  const __global kt *kb = k + k_off + b * k_st.s0 + hk * k_st.s1;
  const __global vt *vb = v + v_off + b * v_st.s0 + hk * v_st.s1;
  /* never dereferenced; keeps the pointers valid */
  if (mask_kind == 0) mask = (const __global mt *)q;

  /* Rows past nrows (the tail of the last block) repeat the last row with a
   * limit of 0: they extend no loop and are never written. */
  int lim[RB], low[RB], hrow[RB], irow[RB];
  float slope[RB];
  long dq[RB];
  const __global mt *mrow[RB];
  VEC qv[RB][NX];
  const float qscale = scale;
  int kend = 0, kbeg = Skv;
  UNROLL
  for (int r = 0; r < RB; r++) {
    const int row = min(r0 + r, nrows - 1);
    const int g = row / Sq, i = row % Sq, h = hk * G + g;
    hrow[r] = h, irow[r] = i;
    int l = attn_row_hi(i, kvl, has_hi, hi_off), lw = attn_row_lo(i, has_lo, lo_off);
    if (r0 + r >= nrows) l = 0, lw = Skv;
    lim[r] = l;
    low[r] = lw;
    kend = max(kend, l);
    kbeg = min(kbeg, lw);
    slope[r] = has_alibi ? alibi[h] : 0.0f;
    dq[r] = (long)i + cpos; /* ALiBi: |pq - pk| = |dq - j| */
    mrow[r] = mask + m_off + b * m_st.s0 + h * m_st.s1 + (long)i * m_st.s2;
    const __global qt *qr = q + q_off + b * q_st.s0 + h * q_st.s1 + (long)i * q_st.s2;
    UNROLL
    for (int x = 0; x < NQ; x++) {
      float t[VW];
      UNROLL
      for (int e = 0; e < VW; e++) t[e] = ATTN_LD(QT, qr, (long)(x * VW + e) * q_st.s3) * qscale;
      qv[r][x] = VLOAD(ATTN_F32, 0, t);
#if KPAIR
      qv[r][x] = (float16)(qv[r][x].even, qv[r][x].odd); /* the order K is read in */
#endif
    }
  }

  const int jb = kbase + c * chunk, je = min(jb + chunk, kend);
  float m[RB], l[RB];
  VEC acc[RB][NX];
  UNROLL
  for (int r = 0; r < RB; r++) {
    m[r] = -INFINITY, l[r] = 0.0f;
    UNROLL
    for (int x = 0; x < NV; x++) acc[r][x] = (VEC)(0.0f);
  }

  const int8 lane = (int8)(0, 1, 2, 3, 4, 5, 6, 7);
  for (int j0 = max(jb, kbeg); j0 < je; j0 += KB) {
    /* Scores of KB = 8 keys per row: per key and row a VEC of products,
     * folded to a float8 of partial sums, then the 8 keys' partials reduced
     * together into one float8 (key t in lane t): fewer shuffles than 8
     * separate horizontal sums, and the softmax below runs on vectors. */
    float8 fold[RB][KB];
    /* Keys past je read key je-1 (in bounds); the limit hides them. */
    UNROLL
    for (int t = 0; t < KB; t++) {
      const __global kt *kr = kb + (long)min(j0 + t, je - 1) * k_st.s2;
      VEC sa[RB];
      UNROLL
      for (int r = 0; r < RB; r++) sa[r] = (VEC)(0.0f);
      UNROLL
      for (int x = 0; x < NQ; x++) {
#if KPAIR
        const VEC kx = bf16_pairs16(x, kr);
#else
        const VEC kx = VLOAD(KT, x, kr);
#endif
        UNROLL
        for (int r = 0; r < RB; r++) sa[r] = fma(qv[r][x], kx, sa[r]);
      }
      UNROLL
      for (int r = 0; r < RB; r++) fold[r][t] = FOLD8(sa[r]);
    }
    float pt[RB][KB], corr[RB];
    int hidden = 0, grew = 0;
    UNROLL
    for (int r = 0; r < RB; r++) {
      float8 sc = sum8x8(fold[r]);
      if (softcap > 0.0f) sc = softcap8(sc, softcap);
      if (has_alibi)
        sc = fma((float8)(-slope[r]), fabs((float8)((float)(dq[r] - j0)) - convert_float8(lane)), sc);
      if (mask_kind != 0) {
        float mk[KB];
        UNROLL
        for (int t = 0; t < KB; t++)
          mk[t] = ATTN_LD(MT, mrow[r], (long)min(j0 + t, Skv - 1) * m_st.s3);
        const float8 mv = vload8(0, mk);
        if (mask_kind == 1) sc = select(sc, (float8)(-INFINITY), mv == (float8)(0.0f));
        else sc += mv;
      }
      const int8 jv = (int8)(j0) + lane;
      sc = select(sc, (float8)(-INFINITY), (jv >= (int8)(min(lim[r], je))) | (jv < (int8)(low[r])));
      const float4 m4 = max(sc.lo, sc.hi);
      const float2 m2 = max(m4.lo, m4.hi);
      const float bm = max(m[r], max(m2.x, m2.y));
      /* A row that has seen only hidden keys keeps m = -inf; subtracting 0
       * instead gives exp2(-inf) = 0 rather than NaN. */
      const float ms = bm == -INFINITY ? 0.0f : bm;
      /* Once the running max settles most blocks leave it unchanged: then
       * the correction is exactly 1 and neither it nor the rescaling of
       * acc below need computing (per-key work that the 16-bit K/V loads do
       * not shrink). */
      const int up = bm > m[r];
      corr[r] = up ? exp2((m[r] - ms) * LOG2E) : 1.0f;
      grew |= up;
      const float8 pv = exp2((sc - ms) * LOG2E);
      hidden |= any(pv == (float8)(0.0f));
      const float4 p4 = pv.lo + pv.hi;
      const float2 p2 = p4.lo + p4.hi;
      l[r] = l[r] * corr[r] + (p2.x + p2.y);
      m[r] = bm;
      vstore8(pv, 0, pt[r]);
    }
    if (!hidden) {
      UNROLL
      for (int x = 0; x < NV; x++) {
        VEC a[RB];
        UNROLL
        for (int r = 0; r < RB; r++) a[r] = grew ? acc[r][x] * corr[r] : acc[r][x];
        UNROLL
        for (int t = 0; t < KB; t++) {
          const VEC vx = VLOADV(x, vb + (long)min(j0 + t, je - 1) * v_st.s2);
          UNROLL
          for (int r = 0; r < RB; r++) a[r] = fma((VEC)(pt[r][t]), vx, a[r]);
        }
        UNROLL
        for (int r = 0; r < RB; r++) acc[r][x] = a[r];
      }
    } else {
      /* A hidden key must contribute nothing even when its value is NaN or
       * inf (0 * NaN = NaN): skip every (row, key) whose probability is 0. */
      UNROLL
      for (int x = 0; x < NV; x++) {
        VEC a[RB];
        UNROLL
        for (int r = 0; r < RB; r++) a[r] = grew ? acc[r][x] * corr[r] : acc[r][x];
        UNROLL
        for (int t = 0; t < KB; t++) {
          const VEC vx = VLOADV(x, vb + (long)min(j0 + t, je - 1) * v_st.s2);
          UNROLL
          for (int r = 0; r < RB; r++)
            if (pt[r][t] != 0.0f) a[r] = fma((VEC)(pt[r][t]), vx, a[r]);
        }
        UNROLL
        for (int r = 0; r < RB; r++) acc[r][x] = a[r];
      }
    }
  }

  const int pstride = Dv + 2;
  UNROLL
  for (int r = 0; r < RB; r++) {
    if (r0 + r >= nrows) break;
    const long row = ((long)b * Hq + hrow[r]) * Sq + irow[r];
    __global float *pp = part + (row * nchunks + c) * pstride;
    pp[0] = m[r];
    pp[1] = l[r];
    UNROLL
    for (int x = 0; x < NV; x++)
#if VPAIR
      VSTORE(acc[r][x].s08192a3b4c5d6e7f, x, pp + 2); /* back to element order */
#else
      VSTORE(acc[r][x], x, pp + 2);
#endif
  }
}

/* One work-item per row (i, h, b): combine the nchunks partials and the
 * sink (a logit z whose e^z joins the denominator only). A chunk that saw no
 * key has m = -inf, l = 0, acc = 0 and weight 0; a NaN in a chunk's l or acc
 * still reaches the row (0 * NaN = NaN). */
__kernel void decode_reduce(__global const float *part, int nchunks,
                            __global ot *out, long o_off, long4 o_st,
                            __global float *lse, long l_off, long4 l_st, int has_lse,
                            int Hq, int Sq, int Dv,
                            __global const float *sinks, int has_sinks) {
  const int i = get_global_id(0), h = get_global_id(1), b = get_global_id(2);
  const long row = ((long)b * Hq + h) * Sq + i;
  const int pstride = Dv + 2;
  const __global float *pp = part + row * nchunks * pstride;
  float M = -INFINITY;
  for (int c = 0; c < nchunks; c++) M = max(M, pp[c * pstride]);
  const float z = has_sinks ? sinks[h] : -INFINITY;
  M = max(M, z);
  const float Ms = M == -INFINITY ? 0.0f : M;
  float w[MAX_CHUNKS], L = has_sinks ? exp2((z - Ms) * LOG2E) : 0.0f;
  for (int c = 0; c < nchunks; c++) {
    w[c] = exp2((pp[c * pstride] - Ms) * LOG2E);
    L += pp[c * pstride + 1] * w[c];
  }
  const float inv = L == 0.0f ? 0.0f : 1.0f / L;
  __global ot *orow = out + o_off + b * o_st.s0 + h * o_st.s1 + (long)i * o_st.s2;
  for (int e = 0; e < Dv; e++) {
    float a = 0.0f;
    for (int c = 0; c < nchunks; c++) a += pp[c * pstride + 2 + e] * w[c];
    ATTN_ST(OT, orow, (long)e * o_st.s3, a * inv);
  }
  if (has_lse)
    lse[l_off + b * l_st.s0 + h * l_st.s1 + (long)i * l_st.s2] =
        L == 0.0f ? -INFINITY : M + log(L);
}
