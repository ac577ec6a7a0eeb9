/* The stages of a model's attention layer around SDPA (ABI 2.3), for every
 * OpenCL backend: rotary position embedding (attn_rope) and RMSNorm per head
 * (attn_rmsnorm). One work-item per row (s, h, b) of D elements; every
 * operand is a strided 4-D view. Build options -DXT= -DYT= -DWT=: the
 * storage types of x, y and the norm weight (kernels/common.cl; left out,
 * f32). The cos/sin tables are f32. Arithmetic is fp32.
 *
 * attn_rope: token (b, s) at p = pos[b * S + s]; for i < npair the pair
 * (a, c) = (i, i + npair), or (2i, 2i+1) when inter:
 *   y[a] = x[a] cos[p, i] - x[c] sin[p, i],  y[c] = x[c] cos[p, i] + x[a] sin[p, i]
 * dims 2*npair..D-1 copied. Both elements of a pair are read before either is
 * written, so y may be x itself (in place).
 *
 * attn_rmsnorm: y = x / sqrt(mean(x^2) + eps) * (offset + w), offset 0 or 1
 * (Gemma's 1 + w). The row is read whole (its sum) before it is written. */
#ifndef XT
#define XT 0
#endif
#ifndef YT
#define YT 0
#endif
#ifndef WT
#define WT 0
#endif
typedef ATTN_TYPE(XT) xt;
typedef ATTN_TYPE(YT) yt;
typedef ATTN_TYPE(WT) wt;

__kernel void attn_rope(__global const xt *x, long x_off, long4 x_st,
                        __global yt *y, long y_off, long4 y_st,
                        __global const float *cs, long c_off, long4 c_st,
                        __global const float *sn, long s_off, long4 s_st,
                        __global const int *pos, int S, int D, int npair, int inter) {
  const long s = get_global_id(0), h = get_global_id(1), b = get_global_id(2);
  const __global xt *xr = x + x_off + b * x_st.s0 + h * x_st.s1 + s * x_st.s2;
  __global yt *yr = y + y_off + b * y_st.s0 + h * y_st.s1 + s * y_st.s2;
  const long p = pos[b * S + s];
  const __global float *cr = cs + c_off + p * c_st.s2;
  const __global float *sr = sn + s_off + p * s_st.s2;
  for (int i = 0; i < npair; i++) {
    const long a = inter ? 2 * i : i, c = inter ? 2 * i + 1 : i + npair;
    const float ct = cr[i * c_st.s3], st = sr[i * s_st.s3];
    const float xa = ATTN_LD(XT, xr, a * x_st.s3), xc = ATTN_LD(XT, xr, c * x_st.s3);
    ATTN_ST(YT, yr, a * y_st.s3, xa * ct - xc * st);
    ATTN_ST(YT, yr, c * y_st.s3, xc * ct + xa * st);
  }
  for (long e = 2 * npair; e < D; e++) ATTN_ST(YT, yr, e * y_st.s3, ATTN_LD(XT, xr, e * x_st.s3));
}

__kernel void attn_rmsnorm(__global const xt *x, long x_off, long4 x_st,
                           __global const wt *w, long w_off, long4 w_st,
                           __global yt *y, long y_off, long4 y_st,
                           int D, float eps, float offset) {
  const long s = get_global_id(0), h = get_global_id(1), b = get_global_id(2);
  const __global xt *xr = x + x_off + b * x_st.s0 + h * x_st.s1 + s * x_st.s2;
  __global yt *yr = y + y_off + b * y_st.s0 + h * y_st.s1 + s * y_st.s2;
  float ss = 0.0f;
  for (long e = 0; e < D; e++) {
    const float v = ATTN_LD(XT, xr, e * x_st.s3);
    ss = fma(v, v, ss);
  }
  const float inv = 1.0f / sqrt(ss / (float)D + eps);
  for (long e = 0; e < D; e++)
    ATTN_ST(YT, yr, e * y_st.s3,
            ATTN_LD(XT, xr, e * x_st.s3) * inv * (offset + ATTN_LD(WT, w, w_off + e * w_st.s3)));
}
