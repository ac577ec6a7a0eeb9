/* Kernels of the clblast backend: everything around CLBlast's GEMMs.
 *
 *   copy4d        gather/scatter a strided 4-D view (views CLBlast cannot express)
 *   add4d         dst += src with broadcasting strides (the linear stage's bias)
 *   softmax_rows  scale is already applied by the GEMM; softcap, ALiBi, the mask,
 *                 hides keys (causal, kv_lens, window), softmax in place with
 *                 the sink, optional weights and lse
 *   pv_rows       out (+)= P V over the keys near the edges of the rows' ranges,
 *                 reading only the keys each row can see
 *
 * OpenCL C 1.2. Offsets are in elements; strides are in elements and may be 0
 * (broadcast inputs). Build option: -DSM_WG=<power of two work-group size>.
 */

#ifndef SM_WG
#define SM_WG 64
#endif

/* dst[view] = src[view], one work-item per element of shape. */
__kernel void copy4d(__global const float *src, ulong s_off, long4 s_str,
                     __global float *dst, ulong d_off, long4 d_str, long4 shape, ulong n)
{
  ulong id = get_global_id(0);
  if (id >= n) return;
  dst[d_off + attn_strided_index(id, shape, d_str)] =
      src[s_off + attn_strided_index(id, shape, s_str)];
}

/* dst[view] += src[view]; src strides are 0 along the dimensions it broadcasts. */
__kernel void add4d(__global const float *src, ulong s_off, long4 s_str,
                    __global float *dst, ulong d_off, long4 d_str, long4 shape, ulong n)
{
  ulong id = get_global_id(0);
  if (id >= n) return;
  dst[d_off + attn_strided_index(id, shape, d_str)] +=
      src[s_off + attn_strided_index(id, shape, s_str)];
}

/* max that keeps NaN: a NaN score must spoil its row, as in the reference. */
static float max_nan(float a, float b)
{
  return isnan(a) ? a : isnan(b) ? b : fmax(a, b);
}

static float softcap1(float s, float cap) { return cap * tanh(s / cap); }

/* One work-group per score row. S holds rows [h][t] of one batch item and one
 * tile of queries (t in [0, T), query i = i0 + t), row r = h*T + t at r*ld;
 * column c is key klo + c, and only the keys some row of the tile can see
 * were computed (ld of them). Query i sees keys [lo(i), hi(i)) (kernels/
 * common.cl's attn_row_lo / attn_row_hi with ATTN_OPTS_PARAMS); the GEMM
 * applied the scale; softcap, ALiBi and the mask follow in that order, then
 * the softmax in place (with the sink in the denominator), the optional
 * weights and lse. mask/weights/lse offsets already include the batch item. */
__kernel __attribute__((reqd_work_group_size(SM_WG, 1, 1)))
void softmax_rows(__global float *S, ulong s_off, int ld, int T, int i0, int klo, int Skv,
                  int kvlen,
                  __global const float *mask, ulong m_off, long4 m_str, int mask_kind,
                  __global float *W, ulong w_off, long4 w_str, int has_w,
                  __global float *L, ulong l_off, long4 l_str, int has_l,
                  ATTN_OPTS_PARAMS)
{
  __local float red[SM_WG];
  const int lid = get_local_id(0);
  const int r = get_group_id(0);
  const int h = r / T, t = r % T, i = i0 + t;
  __global float *row = S + s_off + (ulong)r * (ulong)ld;

  /* Hidden keys (kv_lens, causal, window) are never read: columns [c0, c1). */
  const int c0 = clamp(attn_row_lo(i, has_lo, lo_off) - klo, 0, ld);
  const int c1 = clamp(attn_row_hi(i, kvlen, has_hi, hi_off) - klo, c0, ld);
  const ulong mrow = m_off + (ulong)h * (ulong)m_str.y + (ulong)i * (ulong)m_str.z;
  const float slope = has_alibi ? alibi[h] : 0.0f;
  const float dq = (float)((long)i + cpos - klo); /* ALiBi: |pq - pk| = |dq - c| */

  /* Pass 1: the row maximum (after the options), -inf if nothing is visible. */
  float mx = -INFINITY;
  for (int c = c0 + lid; c < c1; c += SM_WG) {
    float s = row[c];
    const ulong mc = mrow + (ulong)(klo + c) * (ulong)m_str.w;
    if (softcap > 0.0f) s = softcap1(s, softcap);
    if (has_alibi) s -= slope * fabs(dq - (float)c);
    if (mask_kind == 1) {
      if (mask[mc] == 0.0f) s = -INFINITY;
    } else if (mask_kind == 2) {
      s += mask[mc];
    }
    row[c] = s; /* the final score, re-read by the next passes */
    mx = max_nan(mx, s);
  }
  red[lid] = mx;
  barrier(CLK_LOCAL_MEM_FENCE);
  for (int k = SM_WG / 2; k > 0; k >>= 1) {
    if (lid < k) red[lid] = max_nan(red[lid], red[lid + k]);
    barrier(CLK_LOCAL_MEM_FENCE);
  }
  mx = red[0];
  barrier(CLK_LOCAL_MEM_FENCE);

  /* Pass 2: the sum of exponentials. A row with no visible score above
   * -inf is empty: zeros and lse = -inf (the sink with sinks), never NaN. A
   * NaN score (NaN in q or k, +inf in an additive mask) makes mx or sum NaN
   * and so its row. The sink joins the max and the sum only. */
  const bool empty = mx == -INFINITY;
  const float z = has_sinks ? sinks[h] : -INFINITY;
  const float mz = has_sinks && !empty ? max_nan(mx, z) : mx;
  float sum = 0.0f;
  if (!empty)
    for (int c = c0 + lid; c < c1; c += SM_WG) {
      const float e = exp(row[c] - mz);
      row[c] = e; /* kept for pass 3: one exp per score */
      sum += e;
    }
  red[lid] = sum;
  barrier(CLK_LOCAL_MEM_FENCE);
  for (int k = SM_WG / 2; k > 0; k >>= 1) {
    if (lid < k) red[lid] += red[lid + k];
    barrier(CLK_LOCAL_MEM_FENCE);
  }
  sum = red[0];
  if (has_sinks && !empty) sum += exp(z - mz);

  /* Pass 3: probabilities in place (the P of O = P V) and into weights. */
  const float inv = 1.0f / sum;
  for (int c = lid; c < ld; c += SM_WG) {
    float p = (c >= c0 && c < c1 && !empty) ? row[c] * inv : 0.0f;
    row[c] = p;
  }
  /* Pass 3's columns were written by other work-items (every work-item
   * reaches this barrier: POCL needs barriers outside branches). */
  barrier(CLK_GLOBAL_MEM_FENCE);
  if (has_w) {
    const ulong wrow = w_off + (ulong)h * (ulong)w_str.y + (ulong)i * (ulong)w_str.z;
    for (int j = lid; j < Skv; j += SM_WG) {
      const int c = j - klo;
      float p = c >= c0 && c < c1 ? row[c] : 0.0f;
      W[wrow + (ulong)j * (ulong)w_str.w] = p;
    }
  }
  if (has_l && lid == 0)
    L[l_off + (ulong)h * (ulong)l_str.y + (ulong)i * (ulong)l_str.z] =
        empty ? (has_sinks ? z : -INFINITY) : mz + log(sum);
}

/* out[h, t, e] (+)= sum over keys j in [j_lo, j_hi) that row t sees of
 * P[h, t, j - klo] V[h/g, j, e]. Used where a GEMM would read keys some rows
 * cannot see: a NaN or inf in such a value must not reach those rows (0 *
 * NaN is NaN). P rows at r*ld as in softmax_rows; v_off/o_off include the
 * batch item (and the tile for out). Global size (Dv, T, Hq). accumulate:
 * add to out (a GEMM or an earlier call wrote it). */
__kernel void pv_rows(__global const float *P, int ld, int T, int i0, int klo, int kvlen,
                      int j_lo, int j_hi, int group,
                      __global const float *V, ulong v_off, long4 v_str,
                      __global float *O, ulong o_off, long4 o_str, int accumulate,
                      ATTN_OPTS_PARAMS)
{
  const int e = get_global_id(0), t = get_global_id(1), h = get_global_id(2);
  if (t >= T) return;
  const int i = i0 + t;
  const int lo = max(j_lo, attn_row_lo(i, has_lo, lo_off));
  const int hi = min(j_hi, attn_row_hi(i, kvlen, has_hi, hi_off));
  __global const float *prow = P + (ulong)(h * T + t) * (ulong)ld - klo;
  const ulong vcol = v_off + (ulong)(h / group) * (ulong)v_str.y + (ulong)e * (ulong)v_str.w;
  float acc = 0.0f;
  for (int j = lo; j < hi; j++) acc += prow[j] * V[vcol + (ulong)j * (ulong)v_str.z];
  __global float *o = O + o_off + (ulong)h * (ulong)o_str.y + (ulong)t * (ulong)o_str.z +
                      (ulong)e * (ulong)o_str.w;
  *o = accumulate ? *o + acc : acc;
}
