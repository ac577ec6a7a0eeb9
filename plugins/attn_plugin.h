/* libattn plugin SDK: the ABI between the core (libattn.so) and a backend
 * module (attn_<name>.so, loaded with dlopen(RTLD_NOW | RTLD_LOCAL)).
 *
 * A module exports exactly one symbol:
 *     const attn_backend_vtable *attn_backend_entry(void);
 * returning a vtable with static storage duration. The core refuses a module
 * whose abi_major differs from ATTN_ABI_MAJOR (naming both versions and the
 * file); abi_minor tells it which features the module may be sent, and
 * struct_size which optional slots (marked "(optional)") exist.
 *
 * Threading: probe and device_info are called by the core under its loader
 * lock, never concurrently. Every slot that takes a backend context is called
 * by one thread at a time per context; different contexts may be used from
 * different threads at once, so module-global state must be locked.
 *
 * Errors: slots return ATTN_OK or a negative attn_status and describe the
 * failure with host->error(), which prefixes the public function's name
 * ("attn_sdpa: ...").  Never print, never exit, never abort.
 *
 * Modules are never unloaded (drivers such as OpenCL ICDs do not survive
 * dlclose reliably), so module-global caches live for the process.
 */
#ifndef ATTN_PLUGIN_H
#define ATTN_PLUGIN_H

#include "attn.h"

#ifdef __cplusplus
extern "C" {
#endif

/* ABI 2.4. Major 2 replaced 1.x's per-stage slots with run(stage, desc) and
 * gave views an element type and descriptors a {struct_size, features}
 * header; minor 1 added 16-bit storage (ATTN_FEAT_F16 / ATTN_FEAT_BF16);
 * minor 2 added the SDPA options of real models (positions, windows,
 * softcap, ALiBi, sinks: ATTN_FEAT_POSITIONS .. ATTN_FEAT_SINKS, with the
 * descriptor fields after `lse`), masks broadcast over queries, and the
 * merge stage (ATTN_STAGE_MERGE); minor 3 added the stages of a model's
 * attention layer around SDPA: rotary position embedding (ATTN_STAGE_ROPE,
 * ATTN_FEAT_ROPE_INTERLEAVED) and RMSNorm (ATTN_STAGE_RMSNORM,
 * ATTN_FEAT_NORM_OFFSET); minor 4 let the linear stage's w run along k with
 * any stride (ATTN_FEAT_W_STRIDED: GPT-2's Conv1D [in, out] weights seen as
 * [out, in] through swapped strides, not copied).
 *
 * Growing the ABI (rules for the core and for backend authors):
 *  - A new option of a stage is a new ATTN_FEAT_* bit, a new minor version and,
 *    if it needs parameters, new fields at the END of that stage's descriptor.
 *  - The core never sends a module a bit newer than the module's abi_minor
 *    (attn_feature_minor below); it refuses the call itself, naming the
 *    feature and the module's version.
 *  - A module refuses, in supports(), every bit it does not implement, naming
 *    it (attn_feature_name); so a module never silently ignores an option.
 *  - A module reads a field added after its core's version only if
 *    ATTN_DESC_HAS(desc, field): a newer module loaded by an older core gets
 *    the shorter descriptor, whose missing fields mean "option not used".
 *  - A new stage is a new attn_stage value and descriptor, not a new slot. */
#define ATTN_ABI_MAJOR 2
#define ATTN_ABI_MINOR 4

/* Services the core offers to backends. */
typedef struct attn_host {
  /* Record the error message of the current call (printf-style) and return
   * status, so a slot can write `return host->error(ATTN_ERR_BACKEND, ...)`. */
  attn_status (*error)(attn_status status, const char *fmt, ...)
      __attribute__((format(printf, 2, 3)));
  /* Log a line to stderr when ATTN_DEBUG is set; no-op otherwise. */
  void (*debug)(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
} attn_host;

/* Backend-owned opaque objects. */
typedef struct attn_backend_ctx attn_backend_ctx;
typedef struct attn_buffer attn_buffer;

/* A strided view of a backend buffer, always 4-D (leading dims 1 when the
 * tensor has fewer), of elements of type dtype. Element (i0,i1,i2,i3) is at
 *   offset + i0*strides[0] + i1*strides[1] + i2*strides[2] + i3*strides[3]
 * elements (of attn_dtype_size(dtype) bytes) from the start of buf. The core
 * has checked that every reachable element lies inside buf. buf == NULL means
 * "absent" for optional operands. */
typedef struct attn_view {
  attn_buffer *buf;
  int64_t offset;
  int64_t shape[4];
  int64_t strides[4];
  attn_dtype dtype;
} attn_view;

/* ---- Features: the options a stage call uses ------------------------------
 * Each descriptor's `features` has a bit for every option the call uses. */
#define ATTN_FEAT_MASK_BOOL (1ull << 0)     /* sdpa: a bool mask */
#define ATTN_FEAT_MASK_ADDITIVE (1ull << 1) /* sdpa: an additive mask */
#define ATTN_FEAT_CAUSAL (1ull << 2)        /* sdpa: causal, bottom-right */
#define ATTN_FEAT_KV_LENS (1ull << 3)       /* sdpa: per-batch key lengths */
#define ATTN_FEAT_WEIGHTS (1ull << 4)       /* sdpa: the weights output */
#define ATTN_FEAT_LSE (1ull << 5)           /* sdpa: the lse output */
#define ATTN_FEAT_BIAS (1ull << 6)          /* linear: a bias */
#define ATTN_FEAT_F16 (1ull << 7)           /* some operand is stored as fp16 (ABI 2.1) */
#define ATTN_FEAT_BF16 (1ull << 8)          /* some operand is stored as bf16 (ABI 2.1) */
#define ATTN_FEAT_POSITIONS (1ull << 9)     /* sdpa: q_pos - k_pos != Skv - Sq (ABI 2.2) */
#define ATTN_FEAT_WINDOW (1ull << 10)       /* sdpa: a sliding window (ABI 2.2) */
#define ATTN_FEAT_SOFTCAP (1ull << 11)      /* sdpa: softcap (ABI 2.2) */
#define ATTN_FEAT_ALIBI (1ull << 12)        /* sdpa: ALiBi slopes (ABI 2.2) */
#define ATTN_FEAT_SINKS (1ull << 13)        /* sdpa: attention sinks (ABI 2.2) */
#define ATTN_FEAT_ROPE_INTERLEAVED (1ull << 14) /* rope: GPT-J pairs (2i, 2i+1) (ABI 2.3) */
#define ATTN_FEAT_NORM_OFFSET (1ull << 15)  /* rmsnorm: gain 1 + w (Gemma) (ABI 2.3) */
#define ATTN_FEAT_W_STRIDED (1ull << 16)    /* linear: w.strides[3] != 1 (ABI 2.4) */
#define ATTN_FEAT_COUNT 17
/* Every bit this SDK knows. */
#define ATTN_FEAT_KNOWN ((1ull << ATTN_FEAT_COUNT) - 1)

/* The ABI minor version that introduced feature bit `bit` (0..63); a bit this
 * SDK does not know is newer than it. */
static inline unsigned attn_feature_minor(int bit) {
  if (bit < 0 || bit >= ATTN_FEAT_COUNT) return ATTN_ABI_MINOR + 1;
  return bit >= 16 ? 4 : bit >= 14 ? 3 : bit >= 9 ? 2 : bit == 7 || bit == 8 ? 1 : 0;
}

/* "causal", "bf16 storage", ... for messages; "feature bit N" if unknown. The
 * buffer is used only for unknown bits. */
static inline const char *attn_feature_name(int bit, char *buf, size_t len) {
  static const char *const names[ATTN_FEAT_COUNT] = {
      "bool mask", "additive mask", "causal", "kv_lens", "weights output", "lse output",
      "bias",      "f16 storage",   "bf16 storage", "positions", "window",
      "softcap",   "alibi",         "sinks",        "interleaved rope", "norm offset (1 + w)",
      "strided weight"};
  if (bit >= 0 && bit < ATTN_FEAT_COUNT) return names[bit];
  if (buf && len) {
    int n = 0;
    const char *pfx = "feature bit ";
    while (pfx[n] && (size_t)n + 1 < len) { buf[n] = pfx[n]; n++; }
    if (bit >= 10 && (size_t)n + 1 < len) buf[n++] = (char)('0' + bit / 10 % 10);
    if ((size_t)n + 1 < len) buf[n++] = (char)('0' + bit % 10);
    buf[n] = '\0';
    return buf;
  }
  return "unknown feature";
}

/* The lowest set bit of features outside `known`, or -1: what supports()
 * must refuse. */
static inline int attn_feature_unknown(uint64_t features, uint64_t known) {
  const uint64_t extra = features & ~known;
  return extra ? __builtin_ctzll(extra) : -1;
}

/* Is `field` inside a descriptor whose struct_size the sender set? */
#define ATTN_DESC_HAS(d, field) \
  ((d)->struct_size >= offsetof(__typeof__(*(d)), field) + sizeof((d)->field))

/* y[b, m, :] = x[b, m, :] W^T + bias   (nn.Linear convention)
 *   x [1, B, M, K], w [1, 1, N, K], bias [1, 1, 1, N] (optional), y [1, B, M, N]
 * Each of x, w, bias, y may be f32, f16 or bf16; accumulate in at least fp32.
 * The core guarantees strides[3] == 1 for x and y (rows are contiguous), and
 * for w unless ATTN_FEAT_W_STRIDED (ABI 2.4): then w's elements along k are
 * strides[3] apart (a transposed [K, N] matrix has strides[2] == 1,
 * strides[3] == N); and that y overlaps none of the inputs. */
typedef struct attn_linear_desc {
  size_t struct_size; /* sizeof as the core saw it */
  uint64_t features;  /* ATTN_FEAT_BIAS, _F16, _BF16, _W_STRIDED */
  attn_view x, w, bias, y;
} attn_linear_desc;

/* As attn_sdpa_args, with shapes checked, the scale resolved, and the lse
 * view given as [B, Hq, Sq, 1]. kv_lens (host memory, B entries, each in
 * [0, Skv]) or NULL. mask.shape[0] is 1 or B, mask.shape[1] 1 or Hq and
 * mask.shape[2] 1 or Sq: broadcast dims have stride 0 here, so index it as
 * if it were full size. q, k, v, out, an additive mask and weights may be
 * f32, f16 or bf16 (a bool mask and lse are f32).
 *
 * The fields after lse (ABI 2.2) are read only under the feature bit that
 * sends them (an older core sends neither the bits nor the fields). Every
 * option depends on positions only through the diagonal offset q_pos - k_pos
 * (attn_diag_offset, attn_visible_range and attn_alibi_distance below spell
 * the rules once for C backends). */
typedef struct attn_sdpa_desc {
  size_t struct_size; /* sizeof as the core saw it */
  uint64_t features;  /* the options used: mask kind, causal, kv_lens, outputs, dtypes, ... */
  attn_view q, k, v, out;
  attn_view mask;           /* buf NULL if none */
  attn_mask_kind mask_kind; /* ATTN_MASK_NONE iff mask.buf == NULL */
  bool causal;
  float scale;
  const int32_t *kv_lens;
  attn_view weights; /* buf NULL if not requested */
  attn_view lse;     /* buf NULL if not requested */
  /* ABI 2.2 */
  int64_t q_pos, k_pos;   /* query row 0's and key 0's positions, iff ATTN_FEAT_POSITIONS */
  int64_t window_left;    /* -1 unbounded; both -1 unless ATTN_FEAT_WINDOW */
  int64_t window_right;
  float softcap;          /* > 0 iff ATTN_FEAT_SOFTCAP, else 0 */
  const float *alibi;     /* host [Hq] iff ATTN_FEAT_ALIBI, else NULL */
  const float *sinks;     /* host [Hq] iff ATTN_FEAT_SINKS, else NULL */
} attn_sdpa_desc;

/* out = exp(lse_a - lse) out_a + exp(lse_b - lse) out_b, lse = logaddexp:
 * out_a, out_b, out [B, H, S, Dv] of any element type; lse_a, lse_b, lse
 * [B, H, S, 1] f32 (lse.buf NULL if not requested). out may be the very view
 * out_a or out_b (and lse lse_a or lse_b): read each row before writing it. */
typedef struct attn_merge_desc {
  size_t struct_size;
  uint64_t features; /* ATTN_FEAT_LSE, _F16, _BF16 */
  attn_view out_a, lse_a, out_b, lse_b, out, lse;
} attn_merge_desc;

/* ABI 2.3. Rotary position embedding of x [B, H, S, D] into y [B, H, S, D]
 * (y may be the very view x: rotate in place; any other overlap is refused
 * by the core). Token (b, s) is at position p = positions[b * S + s] (host
 * memory, B * S entries, each in [0, P)); with r = rot_dim (even,
 * 2 <= r <= D) and i < r/2, the pair (a, c) is (i, i + r/2) (half split:
 * NeoX, Llama's rotate_half) or, with ATTN_FEAT_ROPE_INTERLEAVED, (2i, 2i+1)
 * (GPT-J):
 *   y[a] = x[a] cos[p, i] - x[c] sin[p, i]
 *   y[c] = x[c] cos[p, i] + x[a] sin[p, i]
 * and dims r..D-1 are copied. cos, sin [1, 1, P, r/2] f32 (any scaling, such
 * as YaRN's attention factor, already folded in). x and y may be f32, f16 or
 * bf16. Read both elements of a pair before writing either. */
typedef struct attn_rope_desc {
  size_t struct_size; /* sizeof as the core saw it */
  uint64_t features;  /* ATTN_FEAT_ROPE_INTERLEAVED, _F16, _BF16 */
  attn_view x, y;
  attn_view cos, sin;
  const int32_t *positions;
  int64_t rot_dim;
} attn_rope_desc;

/* ABI 2.3. RMSNorm over the last dim of x [B, H, S, D] (per head: QK-norm):
 *   y = x / sqrt(mean_d(x^2) + eps) * g,   g = w, or 1 + w with ATTN_FEAT_NORM_OFFSET
 * weight [1, 1, 1, D]; x, weight and y may be f32, f16 or bf16; y may be the
 * very view x. Accumulate in at least fp32. */
typedef struct attn_rmsnorm_desc {
  size_t struct_size; /* sizeof as the core saw it */
  uint64_t features;  /* ATTN_FEAT_NORM_OFFSET, _F16, _BF16 */
  attn_view x, weight, y;
  float eps; /* > 0 and finite */
} attn_rmsnorm_desc;

typedef enum attn_stage {
  ATTN_STAGE_LINEAR = 1, /* desc is const attn_linear_desc * */
  ATTN_STAGE_SDPA = 2,   /* desc is const attn_sdpa_desc * */
  ATTN_STAGE_MERGE = 3,  /* desc is const attn_merge_desc * (ABI 2.2) */
  ATTN_STAGE_ROPE = 4,   /* desc is const attn_rope_desc * (ABI 2.3) */
  ATTN_STAGE_RMSNORM = 5 /* desc is const attn_rmsnorm_desc * (ABI 2.3) */
} attn_stage;

/* The ABI minor version that introduced a stage (a core never sends a module
 * a stage newer than its abi_minor). */
static inline unsigned attn_stage_minor(attn_stage stage) {
  return stage == ATTN_STAGE_ROPE || stage == ATTN_STAGE_RMSNORM ? 3
         : stage == ATTN_STAGE_MERGE                            ? 2
                                                                : 0;
}

/* ---- Shared rules, written once for every C backend -------------------- */

/* The diagonal offset q_pos - k_pos of a descriptor: its fields when
 * ATTN_FEAT_POSITIONS is set, else the default Skv - Sq (a core sets the bit
 * whenever the offset differs from the default and a rule uses it). */
static inline int64_t attn_diag_offset(const struct attn_sdpa_desc *d) {
  return (d->features & ATTN_FEAT_POSITIONS) ? d->q_pos - d->k_pos
                                             : d->k.shape[2] - d->q.shape[2];
}

/* Keys j in [*lo, *hi) are visible to query row i of batch item b (the
 * mask aside): kv_lens, and, with p = i + attn_diag_offset(d) the row's
 * diagonal (the last key a causal row sees), causal (j <= p) and, with
 * ATTN_FEAT_WINDOW, the window (p - left <= j <= p + right). 0 <= *lo and
 * *hi <= Skv; empty when *lo >= *hi. Works for descriptors of every 2.x
 * core: each field is read only under the bit that sends it. */
static inline void attn_visible_range(const struct attn_sdpa_desc *d, int64_t b, int64_t i,
                                      int64_t *lo, int64_t *hi) {
  const int64_t Skv = d->k.shape[2];
  const int64_t diag = i + attn_diag_offset(d);
  const int window = (d->features & ATTN_FEAT_WINDOW) != 0;
  int64_t l = 0, h = Skv;
  if (d->kv_lens && d->kv_lens[b] < h) h = d->kv_lens[b];
  if (d->causal && diag + 1 < h) h = diag + 1;
  if (window && d->window_right >= 0 && diag + d->window_right + 1 < h)
    h = diag + d->window_right + 1;
  if (window && d->window_left >= 0 && diag - d->window_left > l) l = diag - d->window_left;
  if (h < 0) h = 0;
  if (l > Skv) l = Skv;
  *lo = l;
  *hi = h;
}

/* |pq - pk| of query row i and key j, ALiBi's distance. */
static inline double attn_alibi_distance(const struct attn_sdpa_desc *d, int64_t i, int64_t j) {
  const int64_t t = i + attn_diag_offset(d) - j;
  return (double)(t < 0 ? -t : t);
}

/* Element conversions. Every conversion to 16 bits rounds to nearest even;
 * NaN stays NaN (quiet), infinities stay infinite. */
static inline float attn_bits_f32(uint32_t u) {
  float f;
  __builtin_memcpy(&f, &u, sizeof f);
  return f;
}
static inline uint32_t attn_f32_bits(float f) {
  uint32_t u;
  __builtin_memcpy(&u, &f, sizeof u);
  return u;
}
static inline float attn_bf16_to_f32(uint16_t h) { return attn_bits_f32((uint32_t)h << 16); }
static inline uint16_t attn_f32_to_bf16(float f) {
  uint32_t u = attn_f32_bits(f);
  if ((u & 0x7fffffffu) > 0x7f800000u) return (uint16_t)((u >> 16) | 0x0040u); /* quiet NaN */
  u += 0x7fffu + ((u >> 16) & 1u);
  return (uint16_t)(u >> 16);
}
static inline float attn_f16_to_f32(uint16_t h) {
  const uint32_t sign = (uint32_t)(h & 0x8000u) << 16;
  uint32_t exp = (h >> 10) & 0x1fu, man = h & 0x3ffu;
  if (exp == 0x1f) return attn_bits_f32(sign | 0x7f800000u | (man << 13)); /* inf, NaN */
  if (exp == 0) {
    if (!man) return attn_bits_f32(sign);
    /* subnormal: man * 2^-24 */
    const float f = (float)man * 5.9604644775390625e-8f;
    return sign ? -f : f;
  }
  return attn_bits_f32(sign | ((exp + 112u) << 23) | (man << 13));
}
static inline uint16_t attn_f32_to_f16(float f) {
  const uint32_t u = attn_f32_bits(f);
  const uint16_t sign = (uint16_t)((u >> 16) & 0x8000u);
  const uint32_t a = u & 0x7fffffffu;
  if (a > 0x7f800000u) return (uint16_t)(sign | 0x7e00u | ((a >> 13) & 0x3ffu)); /* NaN */
  if (a >= 0x477ff000u) return (uint16_t)(sign | 0x7c00u); /* rounds to >= 65520: inf */
  if (a < 0x38800000u) {
    /* below the smallest normal 2^-14: a subnormal multiple of 2^-24, rounded
     * to nearest even by the float addition of 2^-1 * 2^-23 alignment. */
    const float m = attn_bits_f32(a) + 0.5f; /* 0.5 = 2^-1: aligns 2^-24 to the last bit */
    return (uint16_t)(sign | (uint16_t)(attn_f32_bits(m) - 0x3f000000u));
  }
  uint32_t r = a + 0xfffu + ((a >> 13) & 1u) - 0x38000000u; /* rebias 127 -> 15 */
  return (uint16_t)(sign | (uint16_t)(r >> 13));
}

/* Element e (offset already included) of a view's buffer at base, as float. */
static inline float attn_load_elem(const void *base, attn_dtype t, int64_t e) {
  switch (t) {
  case ATTN_F16: return attn_f16_to_f32(((const uint16_t *)base)[e]);
  case ATTN_BF16: return attn_bf16_to_f32(((const uint16_t *)base)[e]);
  default: return ((const float *)base)[e];
  }
}
static inline void attn_store_elem(void *base, attn_dtype t, int64_t e, float f) {
  switch (t) {
  case ATTN_F16: ((uint16_t *)base)[e] = attn_f32_to_f16(f); break;
  case ATTN_BF16: ((uint16_t *)base)[e] = attn_f32_to_bf16(f); break;
  default: ((float *)base)[e] = f; break;
  }
}

typedef struct attn_backend_vtable {
  /* ---- header: never changes within ABI major 2 ---- */
  uint32_t abi_major;  /* ATTN_ABI_MAJOR of the SDK the module was built with */
  uint32_t abi_minor;  /* ATTN_ABI_MINOR of the SDK the module was built with */
  uint32_t struct_size; /* sizeof(attn_backend_vtable) as the module saw it */
  const char *name;    /* backend name used in selectors: [a-z0-9_]+ */

  /* ---- slots, ABI 2.0 (all required unless marked optional) ---- */
  /* Called once after loading, before anything else; host outlives the module. 0 = ok. */
  attn_status (*init)(const attn_host *host);
  /* Number of usable devices; 0 means "not usable here", which is not an error. Cheap. */
  int (*probe)(void);
  /* Fill info for device index in [0, probe()); the core fills info->selector. */
  attn_status (*device_info)(int index, attn_device_info *info);
  /* Open device index; *ctx owned by the caller, released with close. */
  attn_status (*open)(int index, attn_backend_ctx **ctx);
  /* Release ctx and everything it owns; buffers still allocated are freed too. */
  void (*close)(attn_backend_ctx *ctx);
  /* Allocate bytes (> 0) of device memory; *buf owned by the caller until buffer_free. */
  attn_status (*buffer_alloc)(attn_backend_ctx *ctx, size_t bytes, attn_buffer **buf);
  /* Free a buffer from buffer_alloc after queued work on it completes. NULL is a no-op. */
  void (*buffer_free)(attn_backend_ctx *ctx, attn_buffer *buf);
  /* Blocking copy of bytes from host src into buf at byte offset; src is not retained. */
  attn_status (*buffer_write)(attn_backend_ctx *ctx, attn_buffer *buf, size_t offset,
                              size_t bytes, const void *src);
  /* Blocking copy of bytes from buf at byte offset into host dst (waits for queued work). */
  attn_status (*buffer_read)(attn_backend_ctx *ctx, attn_buffer *buf, size_t offset,
                             size_t bytes, void *dst);
  /* Can this context run this stage descriptor? ATTN_OK, or ATTN_ERR_UNSUPPORTED with why.
   * Must refuse every feature bit it does not implement, naming it. */
  attn_status (*supports)(attn_backend_ctx *ctx, attn_stage stage, const void *desc, char *why,
                          size_t why_len);
  /* Enqueue the stage (desc as attn_stage says); called only after supports said
   * ATTN_OK for the same descriptor; may return before it completes (in order
   * with the other slots). */
  attn_status (*run)(attn_backend_ctx *ctx, attn_stage stage, const void *desc);
  /* Wait until all work enqueued on ctx has completed; reports deferred errors. */
  attn_status (*synchronize)(attn_backend_ctx *ctx);
  /* (optional) Device peaks, clpeak style: fp32 FMA GFLOP/s and copy GB/s (read + written);
   * may answer from a cache unless refresh. */
  attn_status (*peaks)(attn_backend_ctx *ctx, bool refresh, double *gflops, double *gbps);
  /* (optional) attn_tune: flags and report as there; the core has zeroed the report.
   * Measure the backend's tuning parameters on this device, use the winners on ctx
   * and store them for later contexts; or, with ATTN_TUNE_SHOW, only report the
   * values ctx uses. */
  attn_status (*tune)(attn_backend_ctx *ctx, unsigned flags, attn_tune_report *report);
  /* New optional slots go here, each marked with the minor that added it. */
} attn_backend_vtable;

/* The one exported symbol of a module. */
typedef const attn_backend_vtable *(*attn_backend_entry_fn)(void);
#define ATTN_BACKEND_ENTRY_SYMBOL "attn_backend_entry"

#if defined(__GNUC__)
#define ATTN_PLUGIN_EXPORT __attribute__((visibility("default")))
#else
#define ATTN_PLUGIN_EXPORT
#endif

#ifdef __cplusplus
}
#endif
#endif /* ATTN_PLUGIN_H */
