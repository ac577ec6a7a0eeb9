/* Fused flash attention for OpenCL CPU devices (POCL), and the second pass
 * that produces the attention weights when they are requested.
 *
 * Build options (the host keeps the set of variants small):
 *   -DHD=n     private array size: max(D, Dv) rounded up to 16, 32, 64, 128, 256
 *   -DEXACT=1  D == Dv == HD: loop bounds become constants (unrolled, faster)
 *   -DUNIT=1   q, k, v and out have unit stride along the head dimension
 *
 * Design (measured on POCL, see /work/shared/peers/README.md): each work-item
 * carries R = 8 query rows in the 8 lanes of float8 vectors. Its queries are
 * held transposed in private memory (qT[d] = the d-th element of the 8 rows),
 * keys are visited in blocks of KB = 8, each key element broadcast into a
 * vector, so the inner loops are pure float8 FMAs. Softmax is online (running
 * max m and sum l per row, in base 2: q is pre-scaled by scale*log2(e)), so
 * no Sq x Skv score matrix ever exists. The key loop stops at the last key any
 * of the 8 rows can see (kv_lens, causal diagonal): key tiles past the
 * diagonal are never computed.
 *
 * Visibility of key j for query row i:
 *   j < kv_len[b]  and  (!causal or j <= i + Skv - Sq)  and  mask allows it.
 * A row that sees no key gets zeros and lse = -inf.
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

#define R 8
#define KB 8
#define LOG2E 1.4426950408889634f
#define LN2 0.6931471805599453f

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

#define REP8(X) X(0) X(1) X(2) X(3) X(4) X(5) X(6) X(7)

/* Lane r (a constant after unrolling) of a float8. */
#define LANE(v, r)                                                                          \
  ((r) == 0 ? (v).s0 : (r) == 1 ? (v).s1 : (r) == 2 ? (v).s2 : (r) == 3 ? (v).s3            \
   : (r) == 4 ? (v).s4 : (r) == 5 ? (v).s5 : (r) == 6 ? (v).s6 : (v).s7)

__kernel void sdpa_flash(__global const float *q, long q_off, long4 q_st,
                         __global const float *k, long k_off, long4 k_st,
                         __global const float *v, long v_off, long4 v_st,
                         __global float *out, long o_off, long4 o_st,
                         __global const float *mask, long m_off, long4 m_st, int mask_kind,
                         __global const int *kv_lens, int has_kv_lens,
                         __global float *lse, long l_off, long4 l_st, int has_lse,
                         int Hq, int Hkv, int Sq, int Skv, int D, int Dv, int causal,
                         float scale) {
  const int i0 = get_global_id(0) * R;
  const int h = get_global_id(1);
  const int b = get_global_id(2);
  if (i0 >= Sq) return;
  const int hk = h / (Hq / Hkv); /* GQA: query heads share kv heads by index */

  const __global float *qb = q + q_off + b * q_st.s0 + h * q_st.s1;
  const __global float *kb = k + k_off + b * k_st.s0 + hk * k_st.s1;
  const __global float *vb = v + v_off + b * v_st.s0 + hk * v_st.s1;

  /* Per-row limit: key j is visible (mask aside) iff j < lim. Rows past Sq
   * (the tail of the last group) get 0 so they do not extend the loop. */
  int kvl = has_kv_lens ? clamp(kv_lens[b], 0, Skv) : Skv;
  const int8 rows = (int8)(i0) + (int8)(0, 1, 2, 3, 4, 5, 6, 7);
  int8 lim = (int8)(kvl);
  if (causal) lim = min(lim, rows + (int8)(Skv - Sq + 1));
  lim = max(lim, (int8)(0));
  lim = select(lim, (int8)(0), rows >= (int8)(Sq));
  const int kend = max(max(max(lim.s0, lim.s1), max(lim.s2, lim.s3)),
                       max(max(lim.s4, lim.s5), max(lim.s6, lim.s7)));

  /* Query rows past Sq read row Sq-1 (in bounds) and are never written. */
#define QROW(r) const __global float *qr##r = qb + (long)min(i0 + r, Sq - 1) * q_st.s2;
  REP8(QROW)
  const float qscale = scale * LOG2E;
  float8 qT[HD];
  for (int d = 0; d < DQ; d++) {
    const long o = d * QS3;
    qT[d] = (float8)(qr0[o], qr1[o], qr2[o], qr3[o], qr4[o], qr5[o], qr6[o], qr7[o]) * qscale;
  }

  float8 acc[HD];
  for (int d = 0; d < DVV; d++) acc[d] = (float8)(0.0f);
  float8 m = (float8)(-INFINITY), l = (float8)(0.0f);

  const __global float *mb = mask + m_off + b * m_st.s0 + h * m_st.s1;
#define MROW(r) const __global float *mr##r = mb + (long)min(i0 + r, Sq - 1) * m_st.s2;
  if (mask_kind == 0) mb = q; /* never dereferenced; keeps the pointers valid */
  REP8(MROW)

  for (int j0 = 0; j0 < kend; j0 += KB) {
    /* Keys past kend read key kend-1 (in bounds); the limit masks them. */
#define KROW(t)                                                                             \
  const __global float *kr##t = kb + (long)min(j0 + t, kend - 1) * k_st.s2;                  \
  const __global float *vr##t = vb + (long)min(j0 + t, kend - 1) * v_st.s2;                  \
  float8 s##t = (float8)(0.0f);
    REP8(KROW)
    for (int d = 0; d < DQ; d++) {
      const float8 qd = qT[d];
      const long o = d * KS3;
#define DOT(t) s##t = fma(qd, (float8)(kr##t[o]), s##t);
      REP8(DOT)
    }
    if (mask_kind != 0) {
#define MASK(t)                                                                             \
  {                                                                                         \
    const long o = (long)min(j0 + t, Skv - 1) * m_st.s3;                                    \
    const float8 mv = (float8)(mr0[o], mr1[o], mr2[o], mr3[o], mr4[o], mr5[o], mr6[o], mr7[o]); \
    if (mask_kind == 1)                                                                     \
      s##t = select(s##t, (float8)(-INFINITY), mv == (float8)(0.0f));                       \
    else                                                                                    \
      s##t += mv * LOG2E;                                                                   \
  }
      REP8(MASK)
    }
#define LIMIT(t) s##t = select(s##t, (float8)(-INFINITY), (int8)(j0 + t) >= lim);
    REP8(LIMIT)

    const float8 bm = max(max(max(s0, s1), max(s2, s3)), max(max(s4, s5), max(s6, s7)));
    const float8 mn = max(m, bm);
    /* A row that has seen only masked keys keeps m = -inf; subtracting 0
     * instead gives exp2(-inf) = 0 rather than NaN. */
    const float8 ms = select(mn, (float8)(0.0f), mn == (float8)(-INFINITY));
    const float8 corr = exp2(m - ms);
#define PROB(t) const float8 p##t = exp2(s##t - ms);
    REP8(PROB)
    l = l * corr + (((p0 + p1) + (p2 + p3)) + ((p4 + p5) + (p6 + p7)));
    m = mn;
    /* A hidden key must contribute nothing even when its value is NaN or
     * inf (0 * NaN = NaN): where some lane's probability is 0 the slower
     * path keeps those lanes unchanged. Blocks where every row sees every
     * key (most of a non-causal unmasked problem) take plain FMAs. */
#define PZERO(t) | (p##t == (float8)(0.0f))
    const int8 pz = (int8)(0) REP8(PZERO);
    if (!any(pz)) {
      for (int d = 0; d < DVV; d++) {
        const long o = d * VS3;
        float8 a = acc[d] * corr;
#define PV(t) a = fma(p##t, (float8)(vr##t[o]), a);
        REP8(PV)
        acc[d] = a;
      }
    } else {
#define PZ(t) const int8 pz##t = p##t == (float8)(0.0f);
      REP8(PZ)
      for (int d = 0; d < DVV; d++) {
        const long o = d * VS3;
        float8 a = acc[d] * corr;
#define PVZ(t) a = select(fma(p##t, (float8)(vr##t[o]), a), a, pz##t);
        REP8(PVZ)
        acc[d] = a;
      }
    }
  }

  const float8 inv = select((float8)(1.0f) / l, (float8)(0.0f), l == (float8)(0.0f));
  __global float *ob = out + o_off + b * o_st.s0 + h * o_st.s1;
  __global float *lb = lse + l_off + b * l_st.s0 + h * l_st.s1;
  if (!has_lse) lb = out; /* never dereferenced */
  const float8 lsev = select((m + log2(l)) * LN2, (float8)(-INFINITY), l == (float8)(0.0f));
#define STORE(r)                                                                            \
  if (i0 + r < Sq) {                                                                        \
    __global float *orow = ob + (long)(i0 + r) * o_st.s2;                                   \
    const float sc = LANE(inv, r);                                                          \
    for (int d = 0; d < DVV; d++) orow[d * OS3] = LANE(acc[d], r) * sc;                      \
    if (has_lse) lb[(long)(i0 + r) * l_st.s2] = LANE(lsev, r);                               \
  }
  REP8(STORE)
}

/* Second pass, only when the weights are requested: w[b,h,i,j] =
 * exp(scale * q.k + mask - lse[b,h,i]) for visible keys, else 0, with lse
 * from the first pass (-inf for a row with no visible key gives zeros).
 * Same layout as sdpa_flash (8 rows in float8 lanes, keys in blocks of 8),
 * over every key, since hidden ones must be written as zeros too. */
__kernel void sdpa_weights(__global const float *q, long q_off, long4 q_st,
                           __global const float *k, long k_off, long4 k_st,
                           __global const float *mask, long m_off, long4 m_st, int mask_kind,
                           __global const int *kv_lens, int has_kv_lens,
                           __global const float *lse, long l_off, long4 l_st,
                           __global float *w, long w_off, long4 w_st,
                           int Hq, int Hkv, int Sq, int Skv, int D, int causal, float scale) {
  const int i0 = get_global_id(0) * R;
  const int h = get_global_id(1);
  const int b = get_global_id(2);
  if (i0 >= Sq) return;
  const int hk = h / (Hq / Hkv);
  const __global float *qb = q + q_off + b * q_st.s0 + h * q_st.s1;
  const __global float *kb = k + k_off + b * k_st.s0 + hk * k_st.s1;

  int kvl = has_kv_lens ? clamp(kv_lens[b], 0, Skv) : Skv;
  const int8 rows = (int8)(i0) + (int8)(0, 1, 2, 3, 4, 5, 6, 7);
  int8 lim = (int8)(kvl);
  if (causal) lim = min(lim, rows + (int8)(Skv - Sq + 1));
  lim = max(lim, (int8)(0));

  REP8(QROW)
  const float qscale = scale * LOG2E;
  float8 qT[HD];
  for (int d = 0; d < DQ; d++) {
    const long o = d * QS3;
    qT[d] = (float8)(qr0[o], qr1[o], qr2[o], qr3[o], qr4[o], qr5[o], qr6[o], qr7[o]) * qscale;
  }
  const __global float *lb = lse + l_off + b * l_st.s0 + h * l_st.s1;
#define LROW(r) lb[(long)min(i0 + r, Sq - 1) * l_st.s2]
  const float8 lse2 = (float8)(LROW(0), LROW(1), LROW(2), LROW(3), LROW(4), LROW(5), LROW(6),
                               LROW(7)) * LOG2E;
  /* A row with no visible key: every weight 0 (and no -inf - -inf). */
  const int8 empty = lse2 == (float8)(-INFINITY);

  const __global float *mb = mask + m_off + b * m_st.s0 + h * m_st.s1;
  if (mask_kind == 0) mb = q; /* never dereferenced */
  REP8(MROW)
  __global float *wb = w + w_off + b * w_st.s0 + h * w_st.s1;
#define WROW(r) __global float *wr##r = wb + (long)(i0 + r) * w_st.s2;
  REP8(WROW)

  for (int j0 = 0; j0 < Skv; j0 += KB) {
#define KROWW(t)                                                                            \
  const __global float *kr##t = kb + (long)min(j0 + t, Skv - 1) * k_st.s2;                   \
  float8 s##t = (float8)(0.0f);
    REP8(KROWW)
    for (int d = 0; d < DQ; d++) {
      const float8 qd = qT[d];
      const long o = d * KS3;
      REP8(DOT)
    }
    if (mask_kind != 0) {
      REP8(MASK)
    }
    REP8(LIMIT)
#define WPROB(t)                                                                            \
  s##t = select(exp2(s##t - lse2), (float8)(0.0f), empty);                                  \
  if (j0 + t < Skv) {                                                                       \
    const long o = (long)(j0 + t) * w_st.s3;                                                \
    WSTORE(t, 0) WSTORE(t, 1) WSTORE(t, 2) WSTORE(t, 3)                                     \
    WSTORE(t, 4) WSTORE(t, 5) WSTORE(t, 6) WSTORE(t, 7)                                     \
  }
#define WSTORE(t, r) if (i0 + r < Sq) wr##r[o] = s##t.s##r;
    REP8(WPROB)
  }
}
