/* The linear stage: y[b, m, n] = sum_k x[b, m, k] * w[n, k] + bias[n]
 * (nn.Linear: W is [N, K]), rows of x and y contiguous (the core
 * guarantees unit stride along k and n), and W's too unless -DWKS=1.
 *
 * Both operands run along k in memory, so each work-item computes an MR x NR
 * tile of y as MR*NR dot products with float16 vectors along k (-DVW=16,
 * AVX-512; -DVW=8: float8, AVX2, whose 16 registers hold 4 x 3
 * accumulators): per 16 k,
 * MR + NR vector loads feed MR*NR vector FMAs, and the accumulators (24 for
 * 8 x 3, plus the loaded vectors) fit the 32 AVX-512 registers. The
 * horizontal sums happen once per output, at the end. No __local tiles: on a
 * CPU the caches keep the MR rows of x (consecutive work-items share them)
 * and W (1 MiB for the MHA projections, E = 512) close. Rows and columns
 * past M or N read the last one (in bounds) and are not written; k past the
 * last multiple of VW is summed by a scalar tail.
 *
 * -DWKS=1 (ABI 2.4's ATTN_FEAT_W_STRIDED): W's elements along k are
 * w_st.s3 apart, as in GPT-2's Conv1D [K, N] weights seen as [N, K] (s2 = 1,
 * s3 = N); each 16 k of a row of W are then gathered by scalar loads, which
 * consecutive work-items (consecutive n) make to neighbouring addresses.
 *
 * Build options: -DVW=16|8 the vector width along k (left out, 16);
 * -DMR=m -DNR=n, the tile, which the host also uses for the
 * global size; -DXT= -DWT= -DBT= -DYT= the storage types of x, W, bias and y
 * (kernels/common.cl; left out, f32), widened on load, accumulated in fp32. Measured on POCL (MHA projections, M=1024, N=K=512, medians
 * of 21, three alternating rounds): 8 x 3 3.4-4.7 ms, 4 x 6 3.8-4.7 ms,
 * 4 x 4 5.5-7.8 ms; 6 x 4, 3 x 8 and 8 x 2 no better than 4 x 4. The
 * earlier 8 x 8 tile with rows of x in float8 lanes and W broadcast: 37 ms.
 */

#ifndef MR
#define MR 8
#endif
#ifndef NR
#define NR 3
#endif
#ifndef XT
#define XT 0
#endif
#ifndef WT
#define WT 0
#endif
#ifndef BT
#define BT 0
#endif
#ifndef YT
#define YT 0
#endif
#ifndef WKS
#define WKS 0
#endif
#ifndef VW
#define VW 16
#endif
#if VW == 16
typedef float16 lv;
#define LVLOAD ATTN_VLOAD16
#define lvload vload16
#elif VW == 8
typedef float8 lv;
#define LVLOAD ATTN_VLOAD8
#define lvload vload8
#else
#error "VW must be 16 or 8"
#endif
typedef ATTN_TYPE(XT) xt;
typedef ATTN_TYPE(WT) wt;
typedef ATTN_TYPE(BT) bt;
typedef ATTN_TYPE(YT) yt;

#if WKS
/* VW elements of W along k from p, s apart. */
static inline lv wloads(const __global wt *p, long s) {
  float t[VW];
  #pragma unroll
  for (int i = 0; i < VW; i++) t[i] = ATTN_LD(WT, p, i * s);
  return lvload(0, t);
}
#define WLOADV(p, k) wloads((p) + (long)(k) * w_st.s3, w_st.s3)
#define WK(k) ((long)(k) * w_st.s3)
#else
#define WLOADV(p, k) LVLOAD(WT, 0, (p) + (k))
#define WK(k) (k)
#endif

static inline float hsum(lv a) {
#if VW == 16
  const float8 b = a.lo + a.hi;
#else
  const float8 b = a;
#endif
  const float4 c = b.lo + b.hi;
  const float2 d = c.lo + c.hi;
  return d.x + d.y;
}

__kernel void linear(__global const xt *x, long x_off, long4 x_st,
                     __global const wt *w, long w_off, long4 w_st,
                     __global const bt *bias, long b_off, long4 b_st, int has_bias,
                     __global yt *y, long y_off, long4 y_st,
                     int M, int N, int K) {
  const int n0 = get_global_id(0) * NR;
  const int m0 = get_global_id(1) * MR;
  const int b = get_global_id(2);
  if (n0 >= N || m0 >= M) return;

  const __global xt *xb = x + x_off + b * x_st.s1;
  const __global xt *xr[MR];
  const __global wt *wr[NR];
  #pragma unroll
  for (int r = 0; r < MR; r++) xr[r] = xb + (long)min(m0 + r, M - 1) * x_st.s2;
  #pragma unroll
  for (int j = 0; j < NR; j++) wr[j] = w + w_off + (long)min(n0 + j, N - 1) * w_st.s2;
  lv a[MR][NR];
  #pragma unroll
  for (int r = 0; r < MR; r++)
    #pragma unroll
    for (int j = 0; j < NR; j++) a[r][j] = (lv)(0.0f);
  const int KV = K & ~(VW - 1);
  /* Consecutive work-items (along n) share the rows of x; each loads NR rows of W. */
  for (int k = 0; k < KV; k += VW) {
    lv wv[NR];
    #pragma unroll
    for (int j = 0; j < NR; j++) wv[j] = WLOADV(wr[j], k);
    #pragma unroll
    for (int r = 0; r < MR; r++) {
      const lv xv = LVLOAD(XT, 0, xr[r] + k);
      #pragma unroll
      for (int j = 0; j < NR; j++) a[r][j] = fma(xv, wv[j], a[r][j]);
    }
  }
  __global yt *yb = y + y_off + b * y_st.s1;
  #pragma unroll
  for (int r = 0; r < MR; r++)
    #pragma unroll
    for (int j = 0; j < NR; j++)
      if (m0 + r < M && n0 + j < N) {
        float s = hsum(a[r][j]);
        for (int k = KV; k < K; k++) s = fma(ATTN_LD(XT, xr[r], k), ATTN_LD(WT, wr[j], WK(k)), s);
        if (has_bias) s += ATTN_LD(BT, bias, b_off + (long)(n0 + j) * b_st.s3);
        ATTN_ST(YT, yb, (long)(m0 + r) * y_st.s2 + n0 + j, s);
      }
}
