/* The linear stage: y[b, m, n] = sum_k x[b, m, k] * w[n, k] + bias[n]
 * (nn.Linear: W is [N, K]), rows of x, w and y contiguous (the core
 * guarantees unit stride along k and n).
 *
 * Both operands run along k in memory, so each work-item computes an MR x NR
 * tile of y as MR*NR dot products with float16 vectors along k: per 16 k,
 * MR + NR vector loads feed MR*NR vector FMAs, and the 16 accumulators (plus
 * the 8 loaded vectors) fit the 32 AVX-512 registers. The horizontal sums
 * happen once per output, at the end. No __local tiles: on a CPU the caches
 * keep the MR rows of x (consecutive work-items share them) and W (1 MiB for
 * the MHA projections, E = 512) close. Rows and columns past M or N read the
 * last one (in bounds) and are not written; k past the last multiple of 16
 * is summed by a scalar tail.
 */

#define MR 4
#define NR 4
#define REP4(X) X(0) X(1) X(2) X(3)

static inline float hsum16(float16 a) {
  const float8 b = a.lo + a.hi;
  const float4 c = b.lo + b.hi;
  const float2 d = c.lo + c.hi;
  return d.x + d.y;
}

__kernel void linear(__global const float *x, long x_off, long4 x_st,
                     __global const float *w, long w_off, long4 w_st,
                     __global const float *bias, long b_off, long4 b_st, int has_bias,
                     __global float *y, long y_off, long4 y_st,
                     int M, int N, int K) {
  const int n0 = get_global_id(0) * NR;
  const int m0 = get_global_id(1) * MR;
  const int b = get_global_id(2);
  if (n0 >= N || m0 >= M) return;

  const __global float *xb = x + x_off + b * x_st.s1;
#define XROW(r) const __global float *xr##r = xb + (long)min(m0 + r, M - 1) * x_st.s2;
#define WROW(j) const __global float *wr##j = w + w_off + (long)min(n0 + j, N - 1) * w_st.s2;
  REP4(XROW)
  REP4(WROW)
#define ACC(r) float16 a##r##0 = (float16)(0.0f), a##r##1 = a##r##0, a##r##2 = a##r##0, \
                                  a##r##3 = a##r##0;
  REP4(ACC)
  const int K16 = K & ~15;
  for (int k = 0; k < K16; k += 16) {
    const float16 w0 = vload16(0, wr0 + k), w1 = vload16(0, wr1 + k), w2 = vload16(0, wr2 + k),
                  w3 = vload16(0, wr3 + k);
#define ROW(r)                                                                              \
  {                                                                                         \
    const float16 xv = vload16(0, xr##r + k);                                               \
    a##r##0 = fma(xv, w0, a##r##0);                                                         \
    a##r##1 = fma(xv, w1, a##r##1);                                                         \
    a##r##2 = fma(xv, w2, a##r##2);                                                         \
    a##r##3 = fma(xv, w3, a##r##3);                                                         \
  }
    REP4(ROW)
  }

  __global float *yb = y + y_off + b * y_st.s1;
#define STORE(r, j)                                                                         \
  if (m0 + r < M && n0 + j < N) {                                                           \
    float s = hsum16(a##r##j);                                                              \
    for (int k = K16; k < K; k++) s = fma(xr##r[k], wr##j[k], s);                           \
    if (has_bias) s += bias[b_off + (long)(n0 + j) * b_st.s3];                              \
    yb[(long)(m0 + r) * y_st.s2 + n0 + j] = s;                                              \
  }
#define STROW(r) STORE(r, 0) STORE(r, 1) STORE(r, 2) STORE(r, 3)
  REP4(STROW)
}
