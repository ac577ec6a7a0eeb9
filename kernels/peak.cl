/* The device's own peaks, measured the way clpeak does (backends/opencl/peaks.c).
 *
 * peak_fma: fp32 FMA throughput. Each work-item runs 8 independent chains of
 * float16 multiply-adds (128 lanes in flight: enough to cover the FMA latency
 * times the FMA ports of a CPU core, and on a GPU the ILP that hides it),
 * iters times 16 steps. (On POCL's CPU device float16 measured up to twice
 * float8 and four times scalar chains.) x = fma(x, a, b) with a, b kernel
 * arguments cannot be folded by the compiler, and the sum written at the end
 * keeps every chain alive. fma, not mad: mad may be a separate multiply and
 * add, which would measure half the FMA rate (on POCL it measured 110-130
 * GFLOP/s with mad, 135-165 with fma, on the same loaded machine).
 * Flops per work-item: 2 * 16 lanes * 8 chains * 16 * iters.
 *
 * peak_copy: dst[i] = src[i] over float4s, one per work-item; bandwidth counts
 * the bytes read plus the bytes written.
 */

#define STEP                                                                                   \
  x0 = fma(x0, a, b); x1 = fma(x1, a, b); x2 = fma(x2, a, b); x3 = fma(x3, a, b);               \
  x4 = fma(x4, a, b); x5 = fma(x5, a, b); x6 = fma(x6, a, b); x7 = fma(x7, a, b);
#define STEP4 STEP STEP STEP STEP

__kernel void peak_fma(__global float *out, float a, float b, int iters) {
  const float id = (float)get_global_id(0);
  float16 x0 = (float16)(id, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15) * 1e-6f;
  float16 x1 = x0 + 1.0f, x2 = x0 + 2.0f, x3 = x0 + 3.0f;
  float16 x4 = x0 + 4.0f, x5 = x0 + 5.0f, x6 = x0 + 6.0f, x7 = x0 + 7.0f;
  for (int i = 0; i < iters; i++) {
    STEP4 STEP4 STEP4 STEP4
  }
  float16 s = ((x0 + x1) + (x2 + x3)) + ((x4 + x5) + (x6 + x7));
  float4 h = (s.lo.lo + s.lo.hi) + (s.hi.lo + s.hi.hi);
  out[get_global_id(0)] = h.x + h.y + h.z + h.w;
}

__kernel void peak_copy(__global const float4 *src, __global float4 *dst) {
  const size_t i = get_global_id(0);
  dst[i] = src[i];
}
