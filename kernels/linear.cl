/* The linear stage: y[b, m, n] = sum_k x[b, m, k] * w[n, k] + bias[n]
 * (nn.Linear: W is [N, K]), rows of x, w and y contiguous (the core
 * guarantees unit stride along k and n).
 *
 * Each work-item computes a TM x TN = 4 x 4 tile of y. Both x rows and w rows
 * run along k, so the tile keeps 16 float8 partial sums over k and reads 8
 * float8 vectors per 8 values of k (2 FMAs per load), then reduces each sum
 * horizontally at the end. Tiles past M or N read the last row (in bounds)
 * and are not written.
 */

#define TM 4
#define TN 4

__kernel void linear(__global const float *x, long x_off, long4 x_st,
                     __global const float *w, long w_off, long4 w_st,
                     __global const float *bias, long b_off, long4 b_st, int has_bias,
                     __global float *y, long y_off, long4 y_st,
                     int M, int N, int K) {
  const int n0 = get_global_id(0) * TN;
  const int m0 = get_global_id(1) * TM;
  const int b = get_global_id(2);
  if (n0 >= N || m0 >= M) return;

  const __global float *xb = x + x_off + b * x_st.s1;
  const __global float *xr[TM];
  const __global float *wr[TN];
  for (int i = 0; i < TM; i++) xr[i] = xb + (long)min(m0 + i, M - 1) * x_st.s2;
  for (int j = 0; j < TN; j++) wr[j] = w + w_off + (long)min(n0 + j, N - 1) * w_st.s2;

  float8 acc[TM][TN];
  for (int i = 0; i < TM; i++)
    for (int j = 0; j < TN; j++) acc[i][j] = (float8)(0.0f);
  const int K8 = K / 8;
  for (int kk = 0; kk < K8; kk++) {
    float8 xv[TM], wv[TN];
    for (int i = 0; i < TM; i++) xv[i] = vload8(kk, xr[i]);
    for (int j = 0; j < TN; j++) wv[j] = vload8(kk, wr[j]);
    for (int i = 0; i < TM; i++)
      for (int j = 0; j < TN; j++) acc[i][j] = fma(xv[i], wv[j], acc[i][j]);
  }
  for (int i = 0; i < TM; i++) {
    if (m0 + i >= M) break;
    __global float *yr = y + y_off + b * y_st.s1 + (long)(m0 + i) * y_st.s2;
    for (int j = 0; j < TN; j++) {
      if (n0 + j >= N) break;
      const float8 a = acc[i][j];
      float s = ((a.s0 + a.s1) + (a.s2 + a.s3)) + ((a.s4 + a.s5) + (a.s6 + a.s7));
      for (int kk = K8 * 8; kk < K; kk++) s = fma(xr[i][kk], wr[j][kk], s);
      if (has_bias) s += bias[b_off + (long)(n0 + j) * b_st.s3];
      yr[n0 + j] = s;
    }
  }
}
