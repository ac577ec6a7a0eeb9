/* Element-type conversions of the clblast backend: 16-bit storage in, fp32
 * scratch out, and back. The backend's GEMMs and kernels are fp32 only, so an
 * f16 or bf16 operand is widened into a contiguous f32 scratch buffer before
 * the stage runs and a 16-bit output is narrowed from one after it.
 *
 *   f16_to_f32    vload_half: core OpenCL C, no cl_khr_fp16 needed (a half
 *                 pointer may be declared and loaded through without it)
 *   bf16_to_f32   exact: a bf16 is the top half of a binary32
 *   f32_to_f16    vstore_half_rte: round to nearest even, NaN stays NaN,
 *                 |x| >= 65520 becomes inf (the rounding attn.h promises)
 *   f32_to_bf16   round to nearest even by integer addition on the bits, NaN
 *                 kept NaN and quiet (a NaN's low bits could round it to inf)
 *
 * Every kernel has copy4d's signature (kernels/clblast_sdpa.cl): dst[view] =
 * convert(src[view]), one work-item per element of shape, row-major over
 * shape. Offsets and strides in elements of each side's own type; strides
 * may be 0 (broadcast inputs). Only bit operations and vload/vstore_half, so
 * the results do not depend on the device's float modes (denormal flushing).
 */

/* One kernel per direction, each from common.cl's loads and stores (the
 * rounding every backend shares). S and D: the attn_dtype codes of source
 * and destination. */
#define CONVERT_KERNEL(name, S, D)                                                         \
  __kernel void name(__global const ATTN_TYPE(S) *src, ulong s_off, long4 s_str,            \
                     __global ATTN_TYPE(D) *dst, ulong d_off, long4 d_str, long4 shape,     \
                     ulong n) {                                                             \
    ulong id = get_global_id(0);                                                            \
    if (id >= n) return;                                                                    \
    const float x = ATTN_LD(S, src, s_off + attn_strided_index(id, shape, s_str));          \
    ATTN_ST(D, dst, d_off + attn_strided_index(id, shape, d_str), x);                       \
  }

CONVERT_KERNEL(f16_to_f32, ATTN_F16, ATTN_F32)
CONVERT_KERNEL(bf16_to_f32, ATTN_BF16, ATTN_F32)
CONVERT_KERNEL(f32_to_f16, ATTN_F32, ATTN_F16)
CONVERT_KERNEL(f32_to_bf16, ATTN_F32, ATTN_BF16)
