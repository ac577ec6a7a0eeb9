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

static ulong cv_index(ulong id, long4 shape, long4 str)
{
  ulong i3 = id % (ulong)shape.w;
  id /= (ulong)shape.w;
  ulong i2 = id % (ulong)shape.z;
  id /= (ulong)shape.z;
  ulong i1 = id % (ulong)shape.y;
  ulong i0 = id / (ulong)shape.y;
  return i0 * (ulong)str.x + i1 * (ulong)str.y + i2 * (ulong)str.z + i3 * (ulong)str.w;
}

__kernel void f16_to_f32(__global const half *src, ulong s_off, long4 s_str,
                         __global float *dst, ulong d_off, long4 d_str, long4 shape, ulong n)
{
  ulong id = get_global_id(0);
  if (id >= n) return;
  dst[d_off + cv_index(id, shape, d_str)] = vload_half(s_off + cv_index(id, shape, s_str), src);
}

__kernel void bf16_to_f32(__global const ushort *src, ulong s_off, long4 s_str,
                          __global float *dst, ulong d_off, long4 d_str, long4 shape, ulong n)
{
  ulong id = get_global_id(0);
  if (id >= n) return;
  const uint u = (uint)src[s_off + cv_index(id, shape, s_str)];
  dst[d_off + cv_index(id, shape, d_str)] = as_float(u << 16);
}

__kernel void f32_to_f16(__global const float *src, ulong s_off, long4 s_str,
                         __global half *dst, ulong d_off, long4 d_str, long4 shape, ulong n)
{
  ulong id = get_global_id(0);
  if (id >= n) return;
  vstore_half_rte(src[s_off + cv_index(id, shape, s_str)], d_off + cv_index(id, shape, d_str), dst);
}

__kernel void f32_to_bf16(__global const float *src, ulong s_off, long4 s_str,
                          __global ushort *dst, ulong d_off, long4 d_str, long4 shape, ulong n)
{
  ulong id = get_global_id(0);
  if (id >= n) return;
  const uint u = as_uint(src[s_off + cv_index(id, shape, s_str)]);
  ushort r;
  if ((u & 0x7fffffffu) > 0x7f800000u)
    r = (ushort)((u >> 16) | 0x40u); /* NaN: keep sign and payload top, set quiet bit */
  else
    r = (ushort)((u + 0x7fffu + ((u >> 16) & 1u)) >> 16); /* nearest even; overflow -> inf */
  dst[d_off + cv_index(id, shape, d_str)] = r;
}
