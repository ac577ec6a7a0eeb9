/* Fused flash attention for OpenCL CPU devices (POCL), and the second pass
 * that produces the attention weights when they are requested.
 *
 * Build options (the host keeps the set of variants small):
 *   -DHD=n     private array size: max(D, Dv) rounded up to 16, 32, 64, 128, 256
 *   -DEXACT=1  D == Dv == HD: loop bounds become constants (unrolled, faster)
 *   -DUNIT=1   q, k, v and out have unit stride along the head dimension
 *
 * Design (measured on POCL, see /work/shared/peers/README.md): each work-item
 * carries R = 16 query rows in the 16 lanes of float16 vectors (one AVX-512
 * register; 8 rows in float8 ran at half the rate since LLVM then used only
 * 256-bit registers). Its queries are held transposed in private memory
 * (qT[d] = the d-th element of the 16 rows), keys are visited in blocks of
 * KB = 8, each key element broadcast into a vector, so the inner loops are
 * pure vector FMAs. Softmax is online (running max m and sum l per row, in
 * base 2: q is pre-scaled by scale*log2(e)), so no Sq x Skv score matrix ever
 * exists. The key loop stops at the last key any of the rows can see
 * (kv_lens, causal diagonal): key tiles past the diagonal are never computed.
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

#define R 16
#define KB 8
#define LOG2E 1.4426950408889634f
#define LN2 0.6931471805599453f

typedef float16 vf;
typedef int16 vi;

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

/* Keys of a block: X(t) for t = 0 .. KB-1 (blocks of 16 measured 5% slower). */
#define REPK(X) X(0) X(1) X(2) X(3) X(4) X(5) X(6) X(7)
/* Rows of a work-item: X(r, lane name) for r = 0 .. 15. */
#define REPR(X)                                                                             \
  X(0, 0) X(1, 1) X(2, 2) X(3, 3) X(4, 4) X(5, 5) X(6, 6) X(7, 7) X(8, 8) X(9, 9) X(10, a)    \
  X(11, b) X(12, c) X(13, d) X(14, e) X(15, f)
/* The 16 row values p##0 .. p##f[o] as one vector. */
#define GATHER(p, o)                                                                        \
  (vf)(p##0[o], p##1[o], p##2[o], p##3[o], p##4[o], p##5[o], p##6[o], p##7[o], p##8[o],      \
       p##9[o], p##a[o], p##b[o], p##c[o], p##d[o], p##e[o], p##f[o])

/* Query rows past Sq read row Sq-1 (in bounds) and are never written. */
#define QROW(r, n) const __global float *qr##n = qb + (long)min(i0 + r, Sq - 1) * q_st.s2;
#define MROW(r, n) const __global float *mr##n = mb + (long)min(i0 + r, Sq - 1) * m_st.s2;
#define DOT(t) s##t = fma(qd, (vf)(kr##t[o]), s##t);
/* One gather of the 16 rows per key (loading rows as vectors and transposing
 * them with shuffles measured no faster). */
#define MASK(t)                                                                             \
  {                                                                                         \
    const long o = (long)min(j0 + t, Skv - 1) * m_st.s3;                                    \
    const vf mv = GATHER(mr, o);                                                            \
    if (mask_kind == 1)                                                                     \
      s##t = select(s##t, (vf)(-INFINITY), mv == (vf)(0.0f));                               \
    else                                                                                    \
      s##t += mv * LOG2E;                                                                   \
  }
#define LIMIT(t) s##t = select(s##t, (vf)(-INFINITY), (vi)(j0 + t) >= lim);

/* Per-row limits: key j is visible (mask aside) iff j < lim. */
static inline vi row_limits(__global const int *kv_lens, int has_kv_lens, int b, int i0, int Sq,
                            int Skv, int causal) {
  int kvl = has_kv_lens ? clamp(kv_lens[b], 0, Skv) : Skv;
  const vi rows = (vi)(i0) + (vi)(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
  vi lim = (vi)(kvl);
  if (causal) lim = min(lim, rows + (vi)(Skv - Sq + 1));
  return max(lim, (vi)(0));
}

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

  /* Rows past Sq (the tail of the last group) get limit 0 so they do not
   * extend the loop. */
  vi lim = row_limits(kv_lens, has_kv_lens, b, i0, Sq, Skv, causal);
  lim = select(lim, (vi)(0),
               (vi)(i0) + (vi)(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15) >= (vi)(Sq));
  const int8 l8 = max(lim.lo, lim.hi);
  const int4 l4 = max(l8.lo, l8.hi);
  const int kend = max(max(l4.s0, l4.s1), max(l4.s2, l4.s3));

  REPR(QROW)
  const float qscale = scale * LOG2E;
  vf qT[HD];
  for (int d = 0; d < DQ; d++) {
    const long o = d * QS3;
    qT[d] = GATHER(qr, o) * qscale;
  }

  vf acc[HD];
  for (int d = 0; d < DVV; d++) acc[d] = (vf)(0.0f);
  vf m = (vf)(-INFINITY), l = (vf)(0.0f);

  const __global float *mb = mask + m_off + b * m_st.s0 + h * m_st.s1;
  if (mask_kind == 0) mb = q; /* never dereferenced; keeps the pointers valid */
  REPR(MROW)

  for (int j0 = 0; j0 < kend; j0 += KB) {
    /* Keys past kend read key kend-1 (in bounds); the limit masks them. */
#define KROW(t)                                                                             \
  const __global float *kr##t = kb + (long)min(j0 + t, kend - 1) * k_st.s2;                  \
  const __global float *vr##t = vb + (long)min(j0 + t, kend - 1) * v_st.s2;                  \
  vf s##t = (vf)(0.0f);
    REPK(KROW)
    for (int d = 0; d < DQ; d++) {
      const vf qd = qT[d];
      const long o = d * KS3;
      REPK(DOT)
    }
    if (mask_kind != 0) {
      REPK(MASK)
    }
    REPK(LIMIT)

    const vf bm = max(max(max(s0, s1), max(s2, s3)), max(max(s4, s5), max(s6, s7)));
    const vf mn = max(m, bm);
    /* A row that has seen only masked keys keeps m = -inf; subtracting 0
     * instead gives exp2(-inf) = 0 rather than NaN. */
    const vf ms = select(mn, (vf)(0.0f), mn == (vf)(-INFINITY));
    const vf corr = exp2(m - ms);
#define PROB(t) const vf p##t = exp2(s##t - ms);
    REPK(PROB)
    l = l * corr + (((p0 + p1) + (p2 + p3)) + ((p4 + p5) + (p6 + p7)));
    m = mn;
    /* Once the running maxima settle, corr is exactly 1 in every lane and
     * the rescale of the accumulators (a load, multiply and store of each)
     * is skipped. */
    if (any(corr != (vf)(1.0f)))
      for (int d = 0; d < DVV; d++) acc[d] *= corr;
    /* A hidden key must contribute nothing even when its value is NaN or
     * inf (0 * NaN = NaN): where some lane's probability is 0 the slower
     * path keeps those lanes unchanged. Blocks where every row sees every
     * key (most of a non-causal unmasked problem) take plain FMAs. */
#define PZERO(t) | (p##t == (vf)(0.0f))
    const vi pz = (vi)(0) REPK(PZERO);
    bool plain = !any(pz);
#if EXACT && UNIT
    /* 0 * v adds exactly 0 for a finite v, so plain FMAs stay exact unless a
     * value row of the block holds an inf or NaN: fma(v, 0, z) turns those
     * into NaN. Masked and diagonal blocks check (3% of the block's work)
     * instead of paying the selects (masked runs ran 1.5-2x slower). */
    if (!plain) {
      vf z = (vf)(0.0f);
      for (int d = 0; d < HD; d += 16) {
#define VZ(t) z = fma(vload16(0, vr##t + d), (vf)(0.0f), z);
        REPK(VZ)
      }
      plain = !any(isnan(z));
    }
#endif
    if (plain) {
      for (int d = 0; d < DVV; d++) {
        const long o = d * VS3;
        vf a = acc[d];
#define PV(t) a = fma(p##t, (vf)(vr##t[o]), a);
        REPK(PV)
        acc[d] = a;
      }
    } else {
#define PZ(t) const vi pz##t = p##t == (vf)(0.0f);
      REPK(PZ)
      for (int d = 0; d < DVV; d++) {
        const long o = d * VS3;
        vf a = acc[d];
#define PVZ(t) a = select(fma(p##t, (vf)(vr##t[o]), a), a, pz##t);
        REPK(PVZ)
        acc[d] = a;
      }
    }
  }

  const vf inv = select((vf)(1.0f) / l, (vf)(0.0f), l == (vf)(0.0f));
  __global float *ob = out + o_off + b * o_st.s0 + h * o_st.s1;
  __global float *lb = lse + l_off + b * l_st.s0 + h * l_st.s1;
  if (!has_lse) lb = out; /* never dereferenced */
  const vf lsev = select((m + log2(l)) * LN2, (vf)(-INFINITY), l == (vf)(0.0f));
#define STORE(r, n)                                                                         \
  if (i0 + r < Sq) {                                                                        \
    __global float *orow = ob + (long)(i0 + r) * o_st.s2;                                   \
    const float sc = inv.s##n;                                                              \
    for (int d = 0; d < DVV; d++) orow[d * OS3] = acc[d].s##n * sc;                         \
    if (has_lse) lb[(long)(i0 + r) * l_st.s2] = lsev.s##n;                                  \
  }
  REPR(STORE)
}

/* Second pass, only when the weights are requested: w[b,h,i,j] =
 * exp(scale * q.k + mask - lse[b,h,i]) for visible keys, else 0, with lse
 * from the first pass (-inf for a row with no visible key gives zeros).
 * Same layout as sdpa_flash (16 rows in float16 lanes, keys in blocks of 8),
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

  const vi lim = row_limits(kv_lens, has_kv_lens, b, i0, Sq, Skv, causal);

  REPR(QROW)
  const float qscale = scale * LOG2E;
  vf qT[HD];
  for (int d = 0; d < DQ; d++) {
    const long o = d * QS3;
    qT[d] = GATHER(qr, o) * qscale;
  }
  const __global float *lb = lse + l_off + b * l_st.s0 + h * l_st.s1;
#define LROW(r, n) const __global float *lr##n = lb + (long)min(i0 + r, Sq - 1) * l_st.s2;
  REPR(LROW)
  const vf lse2 = GATHER(lr, 0) * LOG2E;
  /* A row with no visible key: every weight 0 (and no -inf - -inf). */
  const vi empty = lse2 == (vf)(-INFINITY);

  const __global float *mb = mask + m_off + b * m_st.s0 + h * m_st.s1;
  if (mask_kind == 0) mb = q; /* never dereferenced */
  REPR(MROW)
  __global float *wb = w + w_off + b * w_st.s0 + h * w_st.s1;
#define WROW(r, n) __global float *wr##n = wb + (long)(i0 + r) * w_st.s2;
  REPR(WROW)

  for (int j0 = 0; j0 < Skv; j0 += KB) {
#define KROWW(t)                                                                            \
  const __global float *kr##t = kb + (long)min(j0 + t, Skv - 1) * k_st.s2;                   \
  vf s##t = (vf)(0.0f);
    REPK(KROWW)
    for (int d = 0; d < DQ; d++) {
      const vf qd = qT[d];
      const long o = d * KS3;
      REPK(DOT)
    }
    if (mask_kind != 0) {
      REPK(MASK)
    }
    REPK(LIMIT)
#define WSTORE(r, n) if (i0 + r < Sq) wr##n[o] = s.s##n;
#define WPROB(t)                                                                            \
  if (j0 + t < Skv) {                                                                       \
    const vf s = select(exp2(s##t - lse2), (vf)(0.0f), empty);                              \
    const long o = (long)(j0 + t) * w_st.s3;                                                \
    REPR(WSTORE)                                                                            \
  }
    REPK(WPROB)
  }
}
