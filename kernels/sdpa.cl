/* Fused flash attention for OpenCL CPU devices (POCL), and the second pass
 * that produces the attention weights when they are requested.
 *
 * Build options (the host keeps the set of variants small):
 *   -DHD=n     private array size: max(D, Dv) rounded up to 16, 32, 64, 128, 256
 *   -DEXACT=1  D == Dv == HD: loop bounds become constants (unrolled, faster)
 *   -DUNIT=1   q, k, v and out have unit stride along the head dimension
 *   -DQT= -DKT= -DVT= -DOT= -DMT= -DWT=  storage types (kernels/common.cl)
 *              of q, k, v, out, the mask and the weights; each left out is
 *              f32, so the all-f32 program is unchanged. lse is always f32.
 *   -DVW=16|8  rows per vector: 16 (float16, one AVX-512 register; keys in
 *              blocks of KB = 8) or 8 (float8, one AVX2 register; KB = 6), so
 *              a work-item's scores, queries and broadcasts fit the 32 zmm or
 *              the 16 ymm registers. Left out, 16.
 *
 * Design (measured on POCL 3.1, LLVM 15; see the commit log): query rows sit
 * in the VW lanes of one vector register: float16 on AVX-512 (float8 ran at
 * half the rate there: LLVM then used only 256-bit registers), float8 on
 * AVX2 (float16 is two ymm registers there, and the 16 of them spilled). A
 * work-item of sdpa_flash carries two such halves (RF = 2 VW rows), so each
 * broadcast key or value element feeds two FMAs. Its queries are held
 * transposed in private memory (qT[d] = the d-th element of VW rows), keys
 * are visited in blocks of KB, each key element broadcast into a vector, so
 * the inner loops are pure vector FMAs. Softmax is online (running max m and sum l per row), so
 * no Sq x Skv score matrix ever exists. The key loop runs only over the keys
 * some of its rows can see (kv_lens, causal diagonal, sliding window): key
 * tiles outside them are never read or computed.
 *
 * Scores stay in natural units (q pre-scaled by scale) until the max is
 * subtracted, and only the difference s - m is turned into base 2 for the
 * exponential: an additive mask of -FLT_MAX then stays finite (a row whose
 * every key has it is uniform, as on ref), and large scores lose no
 * precision to a log2(e) factor applied before the subtraction.
 *
 * Visibility of key j for query row i: the row's range of kernels/common.cl
 * (attn_row_lo / attn_row_hi) and the mask. A row that sees no key gets zeros
 * and lse = -inf (with sinks: the sink's logit). Options (ATTN_OPTS_PARAMS):
 * softcap, ALiBi and the mask apply to each visible score in that order;
 * sinks join the denominator when the row is finished.
 */

#ifndef HD
#define HD 64
#endif
#ifndef EXACT
#define EXACT 0
#endif
#ifndef UNIT
#define UNIT 0
#endif
#ifndef WT
#define WT 0
#endif
#ifndef VW
#define VW 16
#endif
ATTN_SDPA_TYPES
typedef ATTN_TYPE(WT) wt;

#define R VW /* rows of a sdpa_weights work-item */
#define LOG2E 1.4426950408889634f
#define LN2 0.6931471805599453f

/* Per vector width: the vector types, the block of keys, and the lists of
 * keys (REPK: X(t), t = 0 .. KB-1) and rows (REPR: X(r, lane name)). With
 * AVX2's 16 registers, 6 keys x 2 halves of float8 scores leave room for
 * the two query vectors and the broadcast element: 8 keys spilled (0.7x the
 * rate of 6), 4 ran at 0.93x (prefill S=2048 D=64, POCL for haswell). On
 * AVX-512 blocks of 16 keys measured 5% slower than 8. */
#if VW == 16
typedef float16 vf;
typedef int16 vi;
#define AS_VI as_int16
#define AS_VF as_float16
#define VLOADW vload16
#define LANES 0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15
#define KB 8
#define REPK(X) X(0) X(1) X(2) X(3) X(4) X(5) X(6) X(7)
#define REPR(X)                                                                             \
  X(0, 0) X(1, 1) X(2, 2) X(3, 3) X(4, 4) X(5, 5) X(6, 6) X(7, 7) X(8, 8) X(9, 9) X(10, a)    \
  X(11, b) X(12, c) X(13, d) X(14, e) X(15, f)
/* The block's max and sum over its keys, as balanced trees. */
#define KMAX(x)                                                                             \
  max(max(max(s0_##x, s1_##x), max(s2_##x, s3_##x)), max(max(s4_##x, s5_##x), max(s6_##x, s7_##x)))
#define KSUM(x) ((p0_##x + p1_##x) + (p2_##x + p3_##x)) + ((p4_##x + p5_##x) + (p6_##x + p7_##x))
/* A row's KB mask values (16-bit masks, keys contiguous) as a float8. */
#define MLOADKB(T, p) ATTN_VLOAD8(T, 0, p)
/* Reductions of an int vector start from its int8 halves. */
#define HALF8(v, F) F((v).lo, (v).hi)
#elif VW == 8
typedef float8 vf;
typedef int8 vi;
#define AS_VI as_int8
#define AS_VF as_float8
#define VLOADW vload8
#define LANES 0, 1, 2, 3, 4, 5, 6, 7
#define KB 6
#define REPK(X) X(0) X(1) X(2) X(3) X(4) X(5)
#define REPR(X) X(0, 0) X(1, 1) X(2, 2) X(3, 3) X(4, 4) X(5, 5) X(6, 6) X(7, 7)
#define KMAX(x) max(max(max(s0_##x, s1_##x), max(s2_##x, s3_##x)), max(s4_##x, s5_##x))
#define KSUM(x) ((p0_##x + p1_##x) + (p2_##x + p3_##x)) + (p4_##x + p5_##x)
#define MLOADKB(T, p) (float8)(ATTN_VLOAD4(T, 0, p), ATTN_VLOAD2(T, 0, (p) + 4), 0.0f, 0.0f)
#define HALF8(v, F) (v)
#else
#error "VW must be 16 or 8"
#endif

#if EXACT
#define DQ HD
#define DVV HD
#else
#define DQ D
#define DVV Dv
#endif
#if UNIT
#define QS3 1
#define KS3 1
#define VS3 1
#define OS3 1
#else
#define QS3 q_st.s3
#define KS3 k_st.s3
#define VS3 v_st.s3
#define OS3 o_st.s3
#endif

/* The VW row values p##0 .. p##f[o], of storage type T, as one vector. */
#if VW == 16
#define GATHER(T, p, o)                                                                     \
  (vf)(ATTN_LD(T, p##0, o), ATTN_LD(T, p##1, o), ATTN_LD(T, p##2, o), ATTN_LD(T, p##3, o),   \
       ATTN_LD(T, p##4, o), ATTN_LD(T, p##5, o), ATTN_LD(T, p##6, o), ATTN_LD(T, p##7, o),   \
       ATTN_LD(T, p##8, o), ATTN_LD(T, p##9, o), ATTN_LD(T, p##a, o), ATTN_LD(T, p##b, o),   \
       ATTN_LD(T, p##c, o), ATTN_LD(T, p##d, o), ATTN_LD(T, p##e, o), ATTN_LD(T, p##f, o))
#else
#define GATHER(T, p, o)                                                                     \
  (vf)(ATTN_LD(T, p##0, o), ATTN_LD(T, p##1, o), ATTN_LD(T, p##2, o), ATTN_LD(T, p##3, o),   \
       ATTN_LD(T, p##4, o), ATTN_LD(T, p##5, o), ATTN_LD(T, p##6, o), ATTN_LD(T, p##7, o))
#endif

/* Query rows past Sq read row Sq-1 (in bounds) and are never written. */
#define QROW(r, n) const __global qt *qr##n = qb + (long)min(i0 + r, Sq - 1) * q_st.s2;
#define MROW(r, n) const __global mt *mr##n = mb + (long)min(i0 + r, Sq - 1) * m_st.s2;
#define DOT(t) s##t = fma(qd, (vf)(WKEL(t, o, d)), s##t);
/* One gather of the 16 rows per key (loading rows as vectors and transposing
 * them with shuffles measured no faster). */
#define MASK(t)                                                                             \
  {                                                                                         \
    const long o = (long)min(j0 + t, Skv - 1) * m_st.s3;                                    \
    const vf mv = GATHER(MT, mr, o);                                                        \
    if (mask_kind == 1)                                                                     \
      s##t = select(s##t, (vf)(-INFINITY), mv == (vf)(0.0f));                               \
    else                                                                                    \
      s##t += mv;                                                                           \
  }
#define VZ(t) z = fma(ATTN_VLOAD16(VT, 0, vr##t + d), (float16)(0.0f), z);
#define LIMIT(t) s##t = select(s##t, (vf)(-INFINITY), ((vi)(j0 + t) >= hi) | ((vi)(j0 + t) < lo));

/* Per-row ranges of rows i0 .. i0+VW-1: key j is visible (mask aside) iff
 * lo <= j < hi. Rows past Sq get the empty range [Skv, 0). */
#define ROW_RANGE(lo, hi, i0)                                                               \
  {                                                                                         \
    const vi rows_ = (vi)(i0) + (vi)(LANES);                                                \
    const vi past_ = rows_ >= (vi)(Sq);                                                     \
    hi = has_hi ? min(rows_ + (vi)(hi_off + 1), (vi)(kvl)) : (vi)(kvl);                     \
    hi = select(max(hi, (vi)(0)), (vi)(0), past_);                                          \
    lo = has_lo ? max(rows_ + (vi)(lo_off), (vi)(0)) : (vi)(0);                             \
    lo = select(lo, (vi)(Skv), past_);                                                      \
  }
#define HMIN(v, out)                                                                        \
  {                                                                                         \
    const int8 a8_ = HALF8(v, min);                                                         \
    const int4 a4_ = min(a8_.lo, a8_.hi);                                                   \
    out = min(min(a4_.s0, a4_.s1), min(a4_.s2, a4_.s3));                                    \
  }
#define HMAX(v, out)                                                                        \
  {                                                                                         \
    const int8 a8_ = HALF8(v, max);                                                         \
    const int4 a4_ = max(a8_.lo, a8_.hi);                                                   \
    out = max(max(a4_.s0, a4_.s1), max(a4_.s2, a4_.s3));                                    \
  }
/* ALiBi's -slope * |pq - pk| for rows i0 .. i0+VW-1 and key j0 + t, with
 * dq = i0 + cpos - j0 + lane (exact in float below 2^24). */
#define ALIBI_DQ(i0) \
  ((vf)((float)((long)(i0) + cpos - j0)) + (vf)(LANES))

/* 2^x for x <= 0 or NaN (all the softmax needs), as 2^round(x) * p(frac)
 * with a degree-6 polynomial (relative error 1e-7, at float rounding), and 0
 * below -126 so that hidden keys give exactly 0 (dropping probabilities
 * under 2^-126 of the row max, invisible next to it in float). About 14
 * vector operations where POCL's exp2 takes about 22. */
static inline vf exp2_poly(vf x) { /* x in [-126, 0] */
  const vf magic = (vf)(12582912.0f); /* 1.5 * 2^23: x + magic rounds x to an integer */
  const vf t = x + magic;
  const vf f = x - (t - magic); /* in [-0.5, 0.5] */
  vf p = fma((vf)(1.546974027e-04f), f, (vf)(1.340044171e-03f));
  p = fma(p, f, (vf)(9.618025577e-03f));
  p = fma(p, f, (vf)(5.550327190e-02f));
  p = fma(p, f, (vf)(2.402265121e-01f));
  p = fma(p, f, (vf)(6.931472067e-01f));
  p = fma(p, f, (vf)(1.0f));
  const vi e = (AS_VI(t) - AS_VI(magic)) << 23;
  return AS_VF(AS_VI(p) + e);
}
static inline vf exp2_nonpos(vf x) {
  return select(exp2_poly(x), (vf)(0.0f), x < (vf)(-126.0f));
}

/* softcap's exp(-y c): clamped at 2^-126 rather than selected to 0, one
 * operation less per score; tanh is 1 in float well before. */
#define EXPNEG(y, c) exp2_poly(max((y) * (-(c) * LOG2E), (vf)(-126.0f)))
ATTN_SOFTCAP_FN(softcap_v, vf, vi, AS_VI, AS_VF, EXPNEG)

/* VW rows' values at offset o of rows i0 .. i0+VW-1 (rows past Sq read row
 * Sq-1), for q (gather_q) and the mask (gather_m). */
#define G(T, r) ATTN_LD(T, base, (long)min(i0 + r, Sq - 1) * rs + o)
#if VW == 16
#define GROWS(T)                                                                            \
  G(T, 0), G(T, 1), G(T, 2), G(T, 3), G(T, 4), G(T, 5), G(T, 6), G(T, 7), G(T, 8), G(T, 9),   \
      G(T, 10), G(T, 11), G(T, 12), G(T, 13), G(T, 14), G(T, 15)
#else
#define GROWS(T) G(T, 0), G(T, 1), G(T, 2), G(T, 3), G(T, 4), G(T, 5), G(T, 6), G(T, 7)
#endif
#define GATHERV_FN(name, T, type)                                                           \
  static inline vf name(const __global type *base, int i0, int Sq, long rs, long o) {        \
    return (vf)(GROWS(T));                                                                  \
  }
GATHERV_FN(gather_q, QT, qt)
GATHERV_FN(gather_m, MT, mt)
#undef G

/* A 16-bit K or V block is widened to f32 once per block of KB keys, into
 * private arrays the inner loops broadcast from as they do from an f32
 * row: broadcasting a 16-bit element costs a scalar load, a conversion and
 * a broadcast per two FMAs, and scalar vload_half is slow on POCL (per
 * element, prefill S = 2048 D = 64 ran at 0.27x the f32 rate with f16 K/V
 * and 0.77x with bf16). Rows with unit stride widen 16 elements at a time. */
#define WIDEN_FN(name, T, type)                                                             \
  static inline void name(float *dst, const __global type *src, int n, long s3) {           \
    int d = 0;                                                                              \
    if (UNIT)                                                                               \
      for (; d + 16 <= n; d += 16) vstore16(ATTN_VLOAD16(T, 0, src + d), 0, dst + d);       \
    for (; d < n; d++) dst[d] = ATTN_LD(T, src, d * s3);                                    \
  }
#if KT != ATTN_F32
WIDEN_FN(widen_k, KT, kt)
#define KEL(t, o, d) kc[t][d]
#else
#define KEL(t, o, d) kr##t[o]
#endif
#if VT != ATTN_F32
WIDEN_FN(widen_v, VT, vt)
#define VEL(t, o, d) vc[t][d]
#else
#define VEL(t, o, d) vr##t[o]
#endif

/* Each work-item of sdpa_flash carries two halves of VW rows (RF = 2 VW):
 * every broadcast key or value element then feeds two FMAs, which halves the
 * loads per FMA (with one half, loads and FMAs were one to one). */
#define RF (2 * VW)
#define HALVES(X) X(0) X(1)

__kernel void sdpa_flash(__global const qt *q, long q_off, long4 q_st,
                         __global const kt *k, long k_off, long4 k_st,
                         __global const vt *v, long v_off, long4 v_st,
                         __global ot *out, long o_off, long4 o_st,
                         __global const mt *mask, long m_off, long4 m_st, int mask_kind,
                         __global const int *kv_lens, int has_kv_lens,
                         __global float *lse, long l_off, long4 l_st, int has_lse,
                         __global float *ml, int has_ml,
                         int Hq, int Hkv, int Sq, int Skv, int D, int Dv, float scale,
                         ATTN_OPTS_PARAMS) {
  const int i0 = get_global_id(0) * RF;
  const int h = get_global_id(1);
  const int b = get_global_id(2);
  if (i0 >= Sq) return;
  const int hk = h / (Hq / Hkv); /* GQA: query heads share kv heads by index */

  const __global qt *qb = q + q_off + b * q_st.s0 + h * q_st.s1;
  const __global kt *kb = k + k_off + b * k_st.s0 + hk * k_st.s1;
  const __global vt *vb = v + v_off + b * v_st.s0 + hk * v_st.s1;
  const __global mt *mb = mask + m_off + b * m_st.s0 + h * m_st.s1;
  /* never dereferenced; keeps the pointers valid */
  if (mask_kind == 0) mb = (const __global mt *)q;

  /* The keys some row sees: [kbeg, kend). Rows past Sq (the tail of the
   * last group) have an empty range, which extends nothing. */
  const int kvl = has_kv_lens ? clamp(kv_lens[b], 0, Skv) : Skv;
  vi lo0, hi0, lo1, hi1;
  ROW_RANGE(lo0, hi0, i0)
  ROW_RANGE(lo1, hi1, i0 + VW)
  int kbeg, kend, all_lo, all_hi;
  HMIN(min(lo0, lo1), kbeg)
  HMAX(max(hi0, hi1), kend)
  /* Blocks inside [all_lo, all_hi) are seen by every row: no range selects. */
  HMAX(max(lo0, lo1), all_lo)
  HMIN(min(hi0, hi1), all_hi)
  const float slope = has_alibi ? alibi[h] : 0.0f;

  const float qscale = scale;
  vf qT0[HD], qT1[HD], acc0[HD], acc1[HD];
  for (int d = 0; d < DQ; d++) {
    qT0[d] = gather_q(qb, i0, Sq, q_st.s2, d * QS3) * qscale;
    qT1[d] = gather_q(qb, i0 + VW, Sq, q_st.s2, d * QS3) * qscale;
  }
  for (int d = 0; d < DVV; d++) acc0[d] = acc1[d] = (vf)(0.0f);
  vf m0 = (vf)(-INFINITY), m1 = m0, l0 = (vf)(0.0f), l1 = l0;
  /* ms = m, but 0 where m = -inf (a row that has seen only hidden keys):
   * exp2(s - ms) is then exp2(-inf) = 0 rather than NaN. */
  vf ms0 = (vf)(0.0f), ms1 = ms0;

  /* With ALiBi the scores grow towards the diagonal, so in key order the
   * running max would grow at nearly every block (and acc be rescaled each
   * time); from the last block backwards it settles at once. The order of
   * the blocks changes nothing else. */
  const int nblocks = kend > kbeg ? (kend - kbeg + KB - 1) / KB : 0;
  for (int n = 0; n < nblocks; n++) {
    const int j0 = kbeg + (has_alibi ? nblocks - 1 - n : n) * KB;
    /* Keys past kend read key kend-1 (in bounds); the range hides them. */
#define KROW2(t)                                                                            \
  const __global kt *kr##t = kb + (long)min(j0 + t, kend - 1) * k_st.s2;                     \
  const __global vt *vr##t = vb + (long)min(j0 + t, kend - 1) * v_st.s2;                     \
  vf s##t##_0 = (vf)(0.0f), s##t##_1 = (vf)(0.0f);
    REPK(KROW2)
#if KT != ATTN_F32
    float kc[KB][HD];
#define KWIDEN(t) widen_k(kc[t], kr##t, DQ, KS3);
    REPK(KWIDEN)
#endif
    for (int d = 0; d < DQ; d++) {
      const vf qa = qT0[d], qc = qT1[d];
      const long o = d * KS3;
#define DOT2(t)                                                                             \
  {                                                                                         \
    const vf kv = (vf)(KEL(t, o, d));                                                       \
    s##t##_0 = fma(qa, kv, s##t##_0);                                                       \
    s##t##_1 = fma(qc, kv, s##t##_1);                                                       \
  }
      REPK(DOT2)
    }
#define CAP2(t) s##t##_0 = softcap_v(s##t##_0, softcap), s##t##_1 = softcap_v(s##t##_1, softcap);
    if (softcap > 0.0f) {
      REPK(CAP2)
    }
    if (has_alibi) {
      const vf dq0 = ALIBI_DQ(i0), dq1 = ALIBI_DQ(i0 + VW);
#define ALIBI2(t)                                                                           \
  s##t##_0 = fma((vf)(-slope), fabs(dq0 - (float)(t)), s##t##_0);                            \
  s##t##_1 = fma((vf)(-slope), fabs(dq1 - (float)(t)), s##t##_1);
      REPK(ALIBI2)
    }
    if (mask_kind != 0) {
#if MT != ATTN_F32
      /* A 16-bit mask's block (RF rows x KB keys) is widened first, a row of
       * KB keys per vector load where the keys are contiguous, and gathered
       * from there: gathering it converted element by element ran prefill
       * S=2048 D=64 at 0.85x (bf16) and 0.8x (f16) the rate with an f32 mask. */
      float mc[KB][RF];
      for (int r = 0; r < RF; r++) {
        const __global mt *mrw = mb + (long)min(i0 + r, Sq - 1) * m_st.s2;
        if (m_st.s3 == 1 && j0 + KB <= Skv) {
          const float8 m8 = MLOADKB(MT, mrw + j0);
#define MSPLAT(t) mc[t][r] = m8.s##t;
          REPK(MSPLAT)
        } else {
          for (int t = 0; t < KB; t++) mc[t][r] = ATTN_LD(MT, mrw, (long)min(j0 + t, Skv - 1) * m_st.s3);
        }
      }
#define MGET(t, x) VLOADW(x, mc[t])
#else
#define MGET(t, x) gather_m(mb, i0 + VW * x, Sq, m_st.s2, (long)min(j0 + t, Skv - 1) * m_st.s3)
#endif
#define MASK2X(t, x)                                                                        \
  {                                                                                         \
    const vf mv = MGET(t, x);                                                               \
    if (mask_kind == 1)                                                                     \
      s##t##_##x = select(s##t##_##x, (vf)(-INFINITY), mv == (vf)(0.0f));                   \
    else                                                                                    \
      s##t##_##x += mv;                                                                     \
  }
#define MASK2(t) MASK2X(t, 0) MASK2X(t, 1)
      REPK(MASK2)
    }
#define LIMIT2(t)                                                                           \
  s##t##_0 = select(s##t##_0, (vf)(-INFINITY), ((vi)(j0 + t) >= hi0) | ((vi)(j0 + t) < lo0)); \
  s##t##_1 = select(s##t##_1, (vf)(-INFINITY), ((vi)(j0 + t) >= hi1) | ((vi)(j0 + t) < lo1));
    if (j0 < all_lo || j0 + KB > all_hi) {
      REPK(LIMIT2)
    }

    /* Online softmax of each half; see sdpa_weights for the base-2 scores. */
#define SOFTMAX(x)                                                                          \
  const vf bm##x = KMAX(x);                                                                 \
  /* The running max, the correction of l and acc only when it grows; once */              \
  /* the maxima settle most blocks skip all of it.                          */              \
  if (any(bm##x > m##x)) {                                                                  \
    const vf mn = max(m##x, bm##x);                                                         \
    const vf msn = select(mn, (vf)(0.0f), mn == (vf)(-INFINITY));                           \
    const vf corr = exp2_nonpos((m##x - msn) * LOG2E);                                      \
    l##x *= corr;                                                                           \
    for (int d = 0; d < DVV; d++) acc##x[d] *= corr;                                        \
    m##x = mn;                                                                              \
    ms##x = msn;                                                                            \
  }                                                                                         \
  REPK(PROB##x)                                                                             \
  l##x += KSUM(x);
#define PROB0(t) const vf p##t##_0 = exp2_nonpos((s##t##_0 - ms0) * LOG2E);
#define PROB1(t) const vf p##t##_1 = exp2_nonpos((s##t##_1 - ms1) * LOG2E);
    HALVES(SOFTMAX)

    /* A hidden key must contribute nothing even when its value is NaN or
     * inf (0 * NaN = NaN). Blocks where every row sees every key take plain
     * FMAs; so do other blocks whose value rows are all finite, since 0 * v
     * adds exactly 0 then. The rest keep each lane whose p is 0 unchanged. */
#define PZERO2(t) | (p##t##_0 == (vf)(0.0f)) | (p##t##_1 == (vf)(0.0f))
    const vi pz = (vi)(0) REPK(PZERO2);
    bool plain = !any(pz);
#if VT != ATTN_F32
    float vc[KB][HD];
#define VWIDEN(t) widen_v(vc[t], vr##t, DVV, VS3);
    REPK(VWIDEN)
#endif
#if EXACT && UNIT
    /* fma(v, 0, z) is NaN iff v is inf or NaN: 3% of the block's work,
     * where the selects made masked runs 1.5-2x slower. */
    if (!plain) {
      float16 z = (float16)(0.0f);
      for (int d = 0; d < HD; d += 16) {
        REPK(VZ)
      }
      plain = !any(isnan(z));
    }
#endif
    if (plain) {
      for (int d = 0; d < DVV; d++) {
        const long o = d * VS3;
        vf a0 = acc0[d], a1 = acc1[d];
#define PV2(t)                                                                              \
  {                                                                                         \
    const vf vv = (vf)(VEL(t, o, d));                                                       \
    a0 = fma(p##t##_0, vv, a0);                                                             \
    a1 = fma(p##t##_1, vv, a1);                                                             \
  }
        REPK(PV2)
        acc0[d] = a0;
        acc1[d] = a1;
      }
    } else {
#define PZ2(t)                                                                              \
  const vi pz##t##_0 = p##t##_0 == (vf)(0.0f), pz##t##_1 = p##t##_1 == (vf)(0.0f);
      REPK(PZ2)
      for (int d = 0; d < DVV; d++) {
        const long o = d * VS3;
        vf a0 = acc0[d], a1 = acc1[d];
#define PVZ2(t)                                                                             \
  {                                                                                         \
    const vf vv = (vf)(VEL(t, o, d));                                                       \
    a0 = select(fma(p##t##_0, vv, a0), a0, pz##t##_0);                                      \
    a1 = select(fma(p##t##_1, vv, a1), a1, pz##t##_1);                                      \
  }
        REPK(PVZ2)
        acc0[d] = a0;
        acc1[d] = a1;
      }
    }
  }

  __global ot *ob = out + o_off + b * o_st.s0 + h * o_st.s1;
  __global float *lb = lse + l_off + b * l_st.s0 + h * l_st.s1;
  if (!has_lse) lb = (__global float *)out; /* never dereferenced */
#define STOREX(x, r, n)                                                                     \
  if (i0 + VW * x + r < Sq) {                                                               \
    __global ot *orow = ob + (long)(i0 + VW * x + r) * o_st.s2;                             \
    const float sc = inv##x.s##n;                                                           \
    for (int d = 0; d < DVV; d++) ATTN_ST(OT, orow, d * OS3, acc##x[d].s##n * sc);          \
    if (has_lse) lb[(long)(i0 + VW * x + r) * l_st.s2] = lsev##x.s##n;                      \
    if (has_ml) {                                                                           \
      __global float *mlr = ml + (((long)b * Hq + h) * Sq + i0 + VW * x + r) * 2;             \
      mlr[0] = m##x.s##n;                                                                   \
      mlr[1] = sc;                                                                          \
    }                                                                                       \
  }
#define STORE0(r, n) STOREX(0, r, n)
#define STORE1(r, n) STOREX(1, r, n)
  /* With a sink of logit z: the max becomes mz = max(m, z) and the sum
   * l 2^(m - mz) + 2^(z - mz) (base 2 of the natural differences); acc is
   * scaled by 2^(m - mz) / sum. A row that saw no key has l = 0 and m = -inf:
   * zeros, lse = z. */
  const float sink = has_sinks ? sinks[h] : 0.0f;
#define FINISH(x)                                                                           \
  vf inv##x, lsev##x;                                                                       \
  if (has_sinks) {                                                                          \
    const vf mz = max(m##x, (vf)(sink));                                                    \
    const vf e = select(exp2((m##x - mz) * LOG2E), (vf)(0.0f), l##x == (vf)(0.0f));         \
    const vf lz = fma(l##x, e, exp2(((vf)(sink) - mz) * LOG2E));                            \
    inv##x = e / lz;                                                                        \
    lsev##x = mz + log(lz);                                                                 \
  } else {                                                                                  \
    inv##x = select((vf)(1.0f) / l##x, (vf)(0.0f), l##x == (vf)(0.0f));                     \
    lsev##x = select(m##x + log(l##x), (vf)(-INFINITY), l##x == (vf)(0.0f));                \
  }                                                                                         \
  REPR(STORE##x)
  HALVES(FINISH)
}

/* Second pass, only when the weights are requested: w[b,h,i,j] =
 * e^(s - m) * inv for visible keys (s the score with every option), else 0,
 * with each row's max m and inverse sum inv (the sink included) that the
 * first pass left in ml: [row][2], row = (b*Hq + h)*Sq + i. Not e^(s - lse):
 * lse absorbs log(sum) when |m| is huge (a row all at -FLT_MAX would get
 * weights of 1), and rounds away the precision of large scores. inv = 0
 * marks a row with no visible key: zeros.
 * Same layout as sdpa_flash (VW rows in vector lanes, keys in blocks of KB),
 * over every key, since hidden ones must be written as zeros too. */
__kernel void sdpa_weights(__global const qt *q, long q_off, long4 q_st,
                           __global const kt *k, long k_off, long4 k_st,
                           __global const mt *mask, long m_off, long4 m_st, int mask_kind,
                           __global const int *kv_lens, int has_kv_lens,
                           __global const float *ml,
                           __global wt *w, long w_off, long4 w_st,
                           int Hq, int Hkv, int Sq, int Skv, int D, float scale,
                           ATTN_OPTS_PARAMS) {
  const int i0 = get_global_id(0) * R;
  const int h = get_global_id(1);
  const int b = get_global_id(2);
  if (i0 >= Sq) return;
  const int hk = h / (Hq / Hkv);
  const __global qt *qb = q + q_off + b * q_st.s0 + h * q_st.s1;
  const __global kt *kb = k + k_off + b * k_st.s0 + hk * k_st.s1;
  /* Each broadcast key element feeds one FMA here (VW rows, not 2 VW): an
   * f16 K block is still worth widening first as in sdpa_flash (weights
   * pass S=1024 D=64: 41 -> 26 ms, f32 26 ms), a bf16 one is not (its shift
   * per element is cheaper than the widened rows' stores: 26.4 -> 29.5 ms). */
#if KT == ATTN_F16
#define WKEL(t, o, d) kc[t][d]
#else
#define WKEL(t, o, d) ATTN_LD(KT, kr##t, o)
#endif

  const int kvl = has_kv_lens ? clamp(kv_lens[b], 0, Skv) : Skv;
  vi lo, hi;
  ROW_RANGE(lo, hi, i0)
  const float slope = has_alibi ? alibi[h] : 0.0f;

  REPR(QROW)
  const float qscale = scale;
  vf qT[HD];
  for (int d = 0; d < DQ; d++) {
    const long o = d * QS3;
    qT[d] = GATHER(QT, qr, o) * qscale;
  }
  const __global float *mlb = ml + ((long)b * Hq + h) * Sq * 2;
#define MLROW(r, n) const __global float *lr##n = mlb + (long)min(i0 + r, Sq - 1) * 2;
  REPR(MLROW)
  const vf mrow = GATHER(ATTN_F32, lr, 0), inv = GATHER(ATTN_F32, lr, 1);
  /* A row with no visible key: every weight 0 (and no -inf - -inf). */
  const vi empty = inv == (vf)(0.0f);

  const __global mt *mb = mask + m_off + b * m_st.s0 + h * m_st.s1;
  if (mask_kind == 0) mb = (const __global mt *)q; /* never dereferenced */
  REPR(MROW)
  __global wt *wb = w + w_off + b * w_st.s0 + h * w_st.s1;
#define WROW(r, n) __global wt *wr##n = wb + (long)(i0 + r) * w_st.s2;
  REPR(WROW)

  /* Blocks outside every row's range are only written, as zeros. */
  int kbeg, kend;
  HMIN(lo, kbeg)
  HMAX(hi, kend)
  for (int j0 = 0; j0 < Skv; j0 += KB) {
    if (j0 + KB <= kbeg || j0 >= kend) {
#define WZERO(r, n) if (i0 + r < Sq) ATTN_ST(WT, wr##n, o, 0.0f);
#define WZEROK(t)                                                                           \
  if (j0 + t < Skv) {                                                                       \
    const long o = (long)(j0 + t) * w_st.s3;                                                \
    REPR(WZERO)                                                                             \
  }
      REPK(WZEROK)
      continue;
    }
#define KROWW(t)                                                                            \
  const __global kt *kr##t = kb + (long)min(j0 + t, Skv - 1) * k_st.s2;                      \
  vf s##t = (vf)(0.0f);
    REPK(KROWW)
#if KT == ATTN_F16
    float kc[KB][HD];
    REPK(KWIDEN)
#endif
    for (int d = 0; d < DQ; d++) {
      const vf qd = qT[d];
      const long o = d * KS3;
      REPK(DOT)
    }
#define CAP(t) s##t = softcap_v(s##t, softcap);
    if (softcap > 0.0f) {
      REPK(CAP)
    }
    if (has_alibi) {
      const vf dq = ALIBI_DQ(i0);
#define ALIBI(t) s##t = fma((vf)(-slope), fabs(dq - (float)(t)), s##t);
      REPK(ALIBI)
    }
    if (mask_kind != 0) {
      REPK(MASK)
    }
    REPK(LIMIT)
#define WSTORE(r, n) if (i0 + r < Sq) ATTN_ST(WT, wr##n, o, s.s##n);
#define WPROB(t)                                                                            \
  if (j0 + t < Skv) {                                                                       \
    const vf s = select(exp2_nonpos((s##t - mrow) * LOG2E) * inv, (vf)(0.0f), empty);        \
    const long o = (long)(j0 + t) * w_st.s3;                                                \
    REPR(WSTORE)                                                                            \
  }
    REPK(WPROB)
  }
}
