/* The prelude of every program: the runtime (backends/opencl/clrt.c) puts
 * this file in front of each kernel source it builds, and the source hash of
 * the binary cache covers both. Only macros and inline functions, all named
 * ATTN_* / attn_*, so that no kernel's own names clash with them.
 *
 * ---- Element types ----------------------------------------------------------
 * An operand's storage type is a build option whose value is an attn_dtype
 * code (include/attn.h): 0 f32, 1 f16, 2 bf16; an option left out means f32,
 * so an all-f32 program is the same code as before 16-bit storage existed.
 * Arithmetic is always fp32: loads widen, stores narrow.
 *
 *   ATTN_TYPE(T)              the pointer's element type: float, half, ushort
 *   ATTN_LD(T, p, i)          element p[i] as float
 *   ATTN_VLOAD2(T, x, p)      float2 of p[2x .. 2x+1] (vload2's offset rule)
 *   ATTN_VLOAD4(T, x, p)      float4 of p[4x .. 4x+3]
 *   ATTN_VLOAD8(T, x, p)      float8 of p[8x .. 8x+7]
 *   ATTN_VLOAD16(T, x, p)     float16 of p[16x .. 16x+15]
 *   ATTN_ST(T, p, i, f)       p[i] = f, rounded to nearest even
 *
 * f16 goes through vload_half / vstore_half_rte, core OpenCL 1.2 functions
 * that need no cl_khr_fp16 (a half pointer may be declared and passed to
 * them without the extension), so nothing here enables it. bf16 is the top
 * half of an f32: a load is a 16-bit shift; a store rounds to nearest even
 * and keeps a NaN a quiet NaN (adding the rounding bias to a NaN's bits
 * could carry it into an infinity). */
#define ATTN_F32 0
#define ATTN_F16 1
#define ATTN_BF16 2

/* The program's identity: the runtime names an empty kernel after a hash of
 * the program's cache key (-DATTN_PROGRAM_ID=attn_id_<hex>) and, when it
 * loads a cached binary, checks that the binary has that kernel, so an
 * entry holding another program (another head dim, say) is never run. */
#ifdef ATTN_PROGRAM_ID
__kernel void ATTN_PROGRAM_ID(void) {}
#endif

#define ATTN_CAT_(a, b) a##b
#define ATTN_CAT(a, b) ATTN_CAT_(a, b)

#define ATTN_TYPE_0 float
#define ATTN_TYPE_1 half
#define ATTN_TYPE_2 ushort
#define ATTN_TYPE(T) ATTN_CAT(ATTN_TYPE_, T)

#define ATTN_LD_0(p, i) ((p)[i])
#define ATTN_LD_1(p, i) vload_half((size_t)(i), (p))
#define ATTN_LD_2(p, i) as_float((uint)(p)[i] << 16)
#define ATTN_LD(T, p, i) ATTN_CAT(ATTN_LD_, T)(p, i)

#define ATTN_VLOAD2_0(x, p) vload2((x), (p))
#define ATTN_VLOAD2_1(x, p) vload_half2((x), (p))
#define ATTN_VLOAD2_2(x, p) as_float2(convert_uint2(vload2((x), (p))) << 16)
#define ATTN_VLOAD2(T, x, p) ATTN_CAT(ATTN_VLOAD2_, T)(x, p)

#define ATTN_VLOAD4_0(x, p) vload4((x), (p))
#define ATTN_VLOAD4_1(x, p) vload_half4((x), (p))
#define ATTN_VLOAD4_2(x, p) as_float4(convert_uint4(vload4((x), (p))) << 16)
#define ATTN_VLOAD4(T, x, p) ATTN_CAT(ATTN_VLOAD4_, T)(x, p)

#define ATTN_VLOAD8_0(x, p) vload8((x), (p))
#define ATTN_VLOAD8_1(x, p) vload_half8((x), (p))
#define ATTN_VLOAD8_2(x, p) as_float8(convert_uint8(vload8((x), (p))) << 16)
#define ATTN_VLOAD8(T, x, p) ATTN_CAT(ATTN_VLOAD8_, T)(x, p)

#define ATTN_VLOAD16_0(x, p) vload16((x), (p))
#define ATTN_VLOAD16_1(x, p) vload_half16((x), (p))
#define ATTN_VLOAD16_2(x, p) as_float16(convert_uint16(vload16((x), (p))) << 16)
#define ATTN_VLOAD16(T, x, p) ATTN_CAT(ATTN_VLOAD16_, T)(x, p)

/* The storage types of the attention operands q, k, v, out and the mask as
 * the types qt, kt, vt, ot, mt (sdpa.cl and decode.cl); an option left out
 * is f32. Use once, at file scope, after setting QT .. MT or not. */
#ifndef QT
#define QT 0
#endif
#ifndef KT
#define KT 0
#endif
#ifndef VT
#define VT 0
#endif
#ifndef OT
#define OT 0
#endif
#ifndef MT
#define MT 0
#endif
#define ATTN_SDPA_TYPES                                                                    \
  typedef ATTN_TYPE(QT) qt;                                                                \
  typedef ATTN_TYPE(KT) kt;                                                                \
  typedef ATTN_TYPE(VT) vt;                                                                \
  typedef ATTN_TYPE(OT) ot;                                                                \
  typedef ATTN_TYPE(MT) mt;

static inline ushort attn_f32_to_bf16(float f) {
  const uint u = as_uint(f);
  if ((u & 0x7fffffffu) > 0x7f800000u) return (ushort)((u >> 16) | 0x0040u); /* quiet NaN */
  return (ushort)((u + 0x7fffu + ((u >> 16) & 1u)) >> 16);
}

#define ATTN_ST_0(p, i, f) ((p)[i] = (f))
#define ATTN_ST_1(p, i, f) vstore_half_rte((f), (size_t)(i), (p))
#define ATTN_ST_2(p, i, f) ((p)[i] = attn_f32_to_bf16(f))
#define ATTN_ST(T, p, i, f) ATTN_CAT(ATTN_ST_, T)(p, i, f)

/* Element offset of index id (row-major over shape) in a strided 4-D view. */
static inline ulong attn_strided_index(ulong id, long4 shape, long4 str) {
  ulong i3 = id % (ulong)shape.w;
  id /= (ulong)shape.w;
  ulong i2 = id % (ulong)shape.z;
  id /= (ulong)shape.z;
  ulong i1 = id % (ulong)shape.y;
  ulong i0 = id / (ulong)shape.y;
  return i0 * (ulong)str.x + i1 * (ulong)str.y + i2 * (ulong)str.z + i3 * (ulong)str.w;
}

/* ---- Visibility -----------------------------------------------------------
 * Query row i sees keys j in [attn_row_lo(i, ..), attn_row_hi(i, ..)), mask
 * aside: the host (clrt_sdpa_bounds in backends/opencl/clrt.c) folds kv_lens
 * aside, causal and the sliding window into two diagonal offsets, so that
 *   lo(i) = has_lo ? max(i + lo_off, 0) : 0
 *   hi(i) = has_hi ? min(i + hi_off + 1, kv_len) : kv_len   (never below 0)
 * with kv_len already clamped to [0, Skv]. The one place the kernels spell
 * this rule (as attn_visible_range in plugins/attn_plugin.h does for C). */
static inline int attn_row_lo(int i, int has_lo, int lo_off) {
  return has_lo ? max(i + lo_off, 0) : 0;
}
static inline int attn_row_hi(int i, int kv_len, int has_hi, int hi_off) {
  return max(has_hi ? min(i + hi_off + 1, kv_len) : kv_len, 0);
}

/* The SDPA options every attention kernel takes, as kernel parameters (in
 * this order) and as the arguments of a call. softcap 0 means none; alibi
 * and sinks are [Hq] f32 buffers, read only when has_alibi / has_sinks;
 * cpos = q_pos - k_pos for ALiBi's distance |i + cpos - j|. */
#define ATTN_OPTS_PARAMS                                                                    \
  int has_lo, int lo_off, int has_hi, int hi_off, long cpos, float softcap,                   \
      __global const float *alibi, int has_alibi, __global const float *sinks, int has_sinks

/* softcap * tanh(s / softcap) for vectors, as (1 - e) / (1 + e) with
 * e = exp(-2|s| / softcap) and the sign put back: saturates to +-softcap and
 * stays within a few ulp of tanh where it matters (its absolute error near
 * 0 is an ulp of softcap). EXPNEG(y, c) is the kernel's exp(-y c) for y, c >= 0, so
 * sdpa.cl can use its fast exp2 (POCL's vector exp measured twice as slow). */
#define ATTN_SOFTCAP_FN(name, vtype, itype, as_itype, as_vtype, EXPNEG)                     \
  static inline vtype name(vtype s, float cap) {                                            \
    const vtype e = EXPNEG(fabs(s), 2.0f / cap); /* exp(-2|s| / cap), in [0, 1] */          \
    const vtype t = (1.0f - e) / (1.0f + e);                                                \
    const itype sign = as_itype(s) & (itype)(0x80000000u);                                  \
    return as_vtype(as_itype(t * cap) | sign);                                              \
  }
