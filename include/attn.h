/* libattn: attention on any device, chosen at run time.
 *
 * The only public header. Every symbol starts with attn_ / ATTN_. Handles are
 * opaque; the backends that do the work are modules loaded with dlopen behind
 * the plugin ABI in plugins/attn_plugin.h, which callers never need.
 *
 * Errors: every function that can fail returns an attn_status (ATTN_OK == 0,
 * failures < 0). On failure attn_last_error() returns a message for the calling
 * thread that names the function and the argument at fault, for example
 *   "attn_sdpa: k: head dim 63 != q head dim 64".
 * A failed call leaks nothing and leaves the context usable. Argument errors
 * are found before anything runs, so they change nothing; if the device fails
 * in the middle of a call, that call's output tensors may be partly written
 * (never its inputs).
 *
 * Threading: a context and everything created on it (tensors, graphs, caches)
 * may be used by one thread at a time. Separate contexts may be used from
 * separate threads at once, including contexts on the same device. Opening and
 * closing contexts, listing devices and the module loader are thread-safe.
 */
#ifndef ATTN_H
#define ATTN_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#if defined(__GNUC__)
#define ATTN_API __attribute__((visibility("default")))
#else
#define ATTN_API
#endif

#define ATTN_VERSION_MAJOR 0
#define ATTN_VERSION_MINOR 4
#define ATTN_VERSION_PATCH 0

/* ---- Status ------------------------------------------------------------ */

typedef enum attn_status {
  ATTN_OK = 0,
  ATTN_ERR_INVALID_ARG = -1,   /* a NULL, out-of-range or inconsistent argument */
  ATTN_ERR_SHAPE = -2,         /* tensor shapes or strides do not fit together */
  ATTN_ERR_OVERFLOW = -3,      /* an element or byte count overflows */
  ATTN_ERR_NOMEM = -4,         /* host memory exhausted */
  ATTN_ERR_DEVICE_MEMORY = -5, /* device memory exhausted or allocation too large */
  ATTN_ERR_NO_DEVICE = -6,     /* the selector matched no usable device */
  ATTN_ERR_SELECTOR = -7,      /* the selector string is malformed */
  ATTN_ERR_PLUGIN = -8,        /* a backend module failed to load or has the wrong ABI */
  ATTN_ERR_UNSUPPORTED = -9,   /* the backend cannot do this (reason in the message) */
  ATTN_ERR_BACKEND = -10,      /* the device or driver failed (OpenCL error name in the message) */
  ATTN_ERR_BUILD = -11,        /* a kernel failed to compile (compiler log in the message) */
  ATTN_ERR_IO = -12,           /* a file could not be read or written */
  ATTN_ERR_FORMAT = -13,       /* a file is malformed (e.g. a bad .npy header) */
  ATTN_ERR_CAPACITY = -14      /* a KV cache would overflow its capacity */
} attn_status;

/* Short constant description of a status ("invalid argument"); never NULL. */
ATTN_API const char *attn_status_str(attn_status s);

/* The message of the last failed call on this thread ("" if none). Valid
 * until the next libattn call on this thread. */
ATTN_API const char *attn_last_error(void);

/* "0.4.0" */
ATTN_API const char *attn_version(void);

/* ---- Devices and contexts --------------------------------------------- */

typedef enum attn_device_type {
  ATTN_DEVICE_CPU = 1,
  ATTN_DEVICE_GPU = 2,
  ATTN_DEVICE_ACCELERATOR = 4,
  ATTN_DEVICE_OTHER = 8
} attn_device_type;

/* "cpu", "gpu", "accelerator", "other" */
ATTN_API const char *attn_device_type_str(attn_device_type t);

typedef struct attn_device_info {
  char selector[64];      /* the exact selector that picks this device, e.g. "pocl:0" */
  char backend[32];       /* "ref", "pocl", "clblast", ... */
  char name[256];         /* device name as the driver reports it */
  char vendor[128];
  char driver[128];       /* driver / platform version */
  attn_device_type type;
  int index;              /* device index within its backend */
  uint64_t global_mem;    /* bytes; 0 if unknown */
  uint64_t max_alloc;     /* largest single allocation in bytes; 0 if unknown */
  uint32_t compute_units; /* 0 if unknown */
} attn_device_info;

typedef struct attn_context attn_context;

/* Open a context on the first device the selector matches.
 *   selector: "backend[:device]" alternatives separated by ',', where device
 *   is an index, a type (cpu, gpu, accelerator) or a case-insensitive
 *   substring of the device name: "ref", "pocl:0", "clblast:gpu,pocl,ref".
 *   NULL means $ATTN_DEVICE; if that is unset or empty, the default order
 *   ATTN_DEFAULT_SELECTOR. A malformed selector (ATTN_ERR_SELECTOR) or one that
 *   matches nothing (ATTN_ERR_NO_DEVICE) fails with a message listing what
 *   exists; there is never a silent fallback. */
#define ATTN_DEFAULT_SELECTOR "clblast:gpu,pocl:cpu,ref"
ATTN_API attn_status attn_open(const char *selector, attn_context **ctx);
/* Frees the context. Tensors, graphs and caches created on it must be freed
 * first; those still alive are freed with it. NULL is a no-op. */
ATTN_API void attn_close(attn_context *ctx);
ATTN_API attn_status attn_context_info(const attn_context *ctx, attn_device_info *info);
/* Wait for all work queued on the context's device. */
ATTN_API attn_status attn_synchronize(attn_context *ctx);

/* The device's own measured peaks, the way clpeak measures them: an
 * FMA-throughput kernel for fp32 GFLOP/s and a large copy for bandwidth (GB/s,
 * bytes read plus bytes written). Cached with the kernel binaries; refresh
 * measures again. ATTN_ERR_UNSUPPORTED if the backend cannot measure. */
typedef struct attn_device_peaks {
  double gflops;
  double gbps;
} attn_device_peaks;
ATTN_API attn_status attn_device_peaks_get(attn_context *ctx, bool refresh, attn_device_peaks *p);

/* Tuning: the backend's performance parameters (tile sizes, how work is split)
 * chosen for this device by measurement. attn_tune times a few candidates of
 * each at representative shapes (median of several runs), makes the context use
 * the fastest, and stores them in the kernel cache keyed by device, driver and
 * kernel sources, so later contexts on this device start with them (a missing,
 * stale or corrupt entry means the built-in defaults; ATTN_CACHE=0 neither
 * reads nor stores). Results are the same with any candidate, up to float
 * rounding. ATTN_ERR_UNSUPPORTED if the backend has nothing to tune.
 *   flags: ATTN_TUNE_QUICK: fewer candidates, smaller shapes (seconds);
 *          ATTN_TUNE_SHOW: measure nothing, report the values the context uses
 *          (one row per parameter, chosen = true).
 * The report has one row per candidate measured; chosen marks the winners. */
#define ATTN_TUNE_QUICK 1u
#define ATTN_TUNE_SHOW 2u
#define ATTN_TUNE_MAX_ROWS 32
typedef struct attn_tune_row {
  char param[32];   /* e.g. "linear_tile" */
  char value[32];   /* e.g. "8x3" */
  char shape[64];   /* the problem timed ("" with ATTN_TUNE_SHOW) */
  char source[16];  /* ATTN_TUNE_SHOW: "default", "cache", "env" or "tuned"; else "measured" */
  double median_ms; /* 0 with ATTN_TUNE_SHOW */
  bool chosen;
} attn_tune_row;
typedef struct attn_tune_report {
  int n;
  bool stored; /* the winners were written to the cache */
  attn_tune_row row[ATTN_TUNE_MAX_ROWS];
} attn_tune_report;
ATTN_API attn_status attn_tune(attn_context *ctx, unsigned flags, attn_tune_report *report);

/* Every device of every backend found, and every module that failed. */
typedef struct attn_device_list attn_device_list;
ATTN_API attn_status attn_list_devices(attn_device_list **list);
ATTN_API size_t attn_device_list_count(const attn_device_list *list);
ATTN_API const attn_device_info *attn_device_list_get(const attn_device_list *list, size_t i);
/* Modules that were skipped: their file and the reason. */
ATTN_API size_t attn_device_list_failure_count(const attn_device_list *list);
ATTN_API const char *attn_device_list_failure_path(const attn_device_list *list, size_t i);
ATTN_API const char *attn_device_list_failure_reason(const attn_device_list *list, size_t i);
ATTN_API void attn_device_list_free(attn_device_list *list);

/* ---- Element types ------------------------------------------------------ */

/* The storage type of a tensor's elements. Arithmetic is always at least
 * fp32 (double on ref); 16-bit types are storage only. Every conversion to a
 * 16-bit type, on the host or on a device, rounds to nearest even; NaN stays
 * NaN and values beyond the type's range become infinities (f16: |x| >= 65520). */
typedef enum attn_dtype {
  ATTN_F32 = 0,  /* IEEE binary32 */
  ATTN_F16 = 1,  /* IEEE binary16 (numpy '<f2', torch.float16) */
  ATTN_BF16 = 2  /* bfloat16: the top half of a binary32 (torch.bfloat16) */
} attn_dtype;
/* "f32", "f16", "bf16"; "?" for a value outside the enum. */
ATTN_API const char *attn_dtype_str(attn_dtype t);
/* Bytes per element: 4, 2, 2; 0 for a value outside the enum. */
ATTN_API size_t attn_dtype_size(attn_dtype t);
/* Parse "f32", "f16", "bf16" (also "float32", "float16", "bfloat16"). */
ATTN_API attn_status attn_dtype_parse(const char *s, attn_dtype *t);

/* ---- Tensors ------------------------------------------------------------ */

/* Tensors of rank 1 to 4 in device memory, of one element type, with explicit
 * strides in elements, so [B,H,S,D] and [B,S,H,D] layouts and views need no
 * copies. Every dimension is >= 1; strides are >= 0 (0 broadcasts, inputs
 * only). */
#define ATTN_MAX_DIMS 4
typedef struct attn_tensor attn_tensor;

/* A new contiguous (row-major) f32 tensor; contents undefined until written. */
ATTN_API attn_status attn_tensor_create(attn_context *ctx, int ndim, const int64_t *shape,
                                        attn_tensor **t);
/* The same, of element type dtype. */
ATTN_API attn_status attn_tensor_create_typed(attn_context *ctx, attn_dtype dtype, int ndim,
                                              const int64_t *shape, attn_tensor **t);
/* A view of base's storage, of base's element type: element offset and
 * strides relative to base's storage start. Every element the view can reach
 * must lie inside the storage. The storage lives until its last tensor is
 * freed. */
ATTN_API attn_status attn_tensor_view(const attn_tensor *base, int64_t offset, int ndim,
                                      const int64_t *shape, const int64_t *strides,
                                      attn_tensor **view);
ATTN_API void attn_tensor_free(attn_tensor *t);

ATTN_API int attn_tensor_ndim(const attn_tensor *t);
/* Copies ndim entries into shape / strides (either may be NULL). */
ATTN_API void attn_tensor_shape(const attn_tensor *t, int64_t *shape, int64_t *strides);
ATTN_API int64_t attn_tensor_numel(const attn_tensor *t);
/* The element type (ATTN_F32 for NULL). */
ATTN_API attn_dtype attn_tensor_dtype(const attn_tensor *t);

/* Copy numel floats from host memory in row-major order of the tensor's shape
 * (whatever its strides) into the tensor, or out of it, converting to and
 * from the tensor's element type (to 16 bits: round to nearest even). */
ATTN_API attn_status attn_tensor_write(attn_tensor *t, const float *src, size_t count);
ATTN_API attn_status attn_tensor_read(const attn_tensor *t, float *dst, size_t count);
/* The same without conversion: count elements of the tensor's own type
 * (uint16_t bit patterns for f16 and bf16), count * attn_dtype_size bytes. */
ATTN_API attn_status attn_tensor_write_raw(attn_tensor *t, const void *src, size_t count);
ATTN_API attn_status attn_tensor_read_raw(const attn_tensor *t, void *dst, size_t count);

/* ---- Growing structs ----------------------------------------------------
 * Argument structs that later versions extend begin with struct_size, which
 * the caller sets with the struct's _INIT macro (or to sizeof). A program
 * built against an older header passes a smaller size: the fields it does
 * not know take their defaults. A larger size (a newer header than this
 * library) is accepted when the bytes this library does not know are zero,
 * and refused (ATTN_ERR_INVALID_ARG, "struct_size") otherwise. */

/* ---- Scaled dot-product attention --------------------------------------- */

typedef enum attn_mask_kind {
  ATTN_MASK_NONE = 0,
  ATTN_MASK_BOOL = 1,    /* nonzero = attend, 0 = masked out */
  ATTN_MASK_ADDITIVE = 2 /* added to the scaled scores; -inf masks out */
} attn_mask_kind;

/* out = softmax(scores) V, per batch item and query head.
 * q, k, v, out, an additive mask and weights may each be f32, f16 or bf16 (a
 * bool mask and lse are f32); every backend takes q, k, v of one type, and
 * f32 q/out over f16 or bf16 k/v, and says which other mixes it refuses.
 *   q    [B, Hq,  Sq,  D]
 *   k    [B, Hkv, Skv, D]     Hq % Hkv == 0; query head h reads kv head h / (Hq/Hkv)
 *   v    [B, Hkv, Skv, Dv]    D and Dv up to 512 on every backend
 *   out  [B, Hq,  Sq,  Dv]    must not overlap any input
 *   mask [1|B, 1|Hq, 1|Sq, Skv] optional (NULL), kind in mask_kind
 *   kv_lens: optional host array of B int32; keys j >= kv_lens[b] are hidden
 *   weights [B, Hq, Sq, Skv] optional output: the probabilities
 *   lse     [B, Hq, Sq] optional output: log of the softmax denominator
 *
 * Positions: query row i is at pq = q_pos + i, key j at pk = k_pos + j. By
 * default k_pos = 0 and q_pos = Skv - Sq (aligned bottom-right, so a decode
 * step over a KV cache is causal; top-left when Sq == Skv); has_positions
 * takes q_pos and k_pos from the struct (q_pos = 0: PyTorch's is_causal).
 * Key j is visible to row i iff j < kv_lens[b], the bool mask allows it, and
 *   causal:      pk <= pq
 *   has_window:  pq - window_left <= pk <= pq + window_right (FlashAttention's
 *                window_size; -1 = unbounded on that side)
 * The score of a visible key, in this order:
 *   s = scale * q.k
 *   softcap > 0:   s = softcap * tanh(s / softcap)         (Gemma 2)
 *   alibi_slopes:  s += -alibi_slopes[h] * |pq - pk|       (ggml; BLOOM under causal)
 *   additive mask: s += mask
 * sinks (host [Hq] logits, gpt-oss): the softmax denominator gains
 * exp(sinks[h]), so p_j = exp(s_j) / (sum_k exp(s_k) + exp(sinks[h])); out is
 * sum_j p_j v_j over keys only and lse includes the sink.
 * A row with no visible key gives zeros in out and weights, and lse = -inf
 * (with sinks: lse = sinks[h]).
 * Initialise with ATTN_SDPA_ARGS_INIT: has_scale = false means scale = 1/sqrt(D);
 * every option added after 0.2 is off when its field is zero. */
typedef struct attn_sdpa_args {
  size_t struct_size; /* sizeof(attn_sdpa_args), set by ATTN_SDPA_ARGS_INIT */
  const attn_tensor *q, *k, *v;
  attn_tensor *out;
  const attn_tensor *mask;
  attn_mask_kind mask_kind;
  bool causal;
  bool has_scale;
  float scale;
  const int32_t *kv_lens;
  attn_tensor *weights;
  attn_tensor *lse;
  /* 0.3 */
  bool has_positions;  /* use q_pos and k_pos below instead of the defaults */
  int64_t q_pos, k_pos;
  bool has_window;     /* use window_left / window_right (each >= -1) */
  int64_t window_left, window_right;
  float softcap;       /* > 0 and finite: cap the scores; 0: none */
  const float *alibi_slopes; /* host [Hq], finite, or NULL; copied before return */
  const float *sinks;        /* host [Hq], finite, or NULL; copied before return */
} attn_sdpa_args;
#define ATTN_SDPA_ARGS_INIT {.struct_size = sizeof(attn_sdpa_args)}

ATTN_API attn_status attn_sdpa(attn_context *ctx, const attn_sdpa_args *args);

/* Combine two partial attention results over disjoint key sets into the
 * result over their union (split-key decoding, prefix sharing, sequence
 * parallelism): per row,
 *   lse = logaddexp(lse_a, lse_b)
 *   out = exp(lse_a - lse) out_a + exp(lse_b - lse) out_b
 * Two empty partials (lse -inf) give zeros and -inf, never NaN.
 *   out_a, out_b, out [B, H, S, Dv] (any element types)
 *   lse_a, lse_b, lse [B, H, S] f32; lse may be NULL
 * out may be out_a or out_b itself (the same view: merge in place), and lse
 * lse_a or lse_b; any other overlap with an input is refused. */
ATTN_API attn_status attn_merge(attn_context *ctx, const attn_tensor *out_a,
                                const attn_tensor *lse_a, const attn_tensor *out_b,
                                const attn_tensor *lse_b, attn_tensor *out, attn_tensor *lse);

/* ---- Rotary position embedding and RMSNorm (0.4) -------------------------- */

/* How the rotation frequencies are made, exactly as transformers'
 * modeling_rope_utils computes them (in double here), with r the rotary dim
 * and theta the base:
 *   DEFAULT  inv_freq[i] = theta^(-2i/r), i < r/2
 *   LINEAR   DEFAULT / factor
 *   DYNAMIC  DEFAULT with theta' = theta * (factor n/M - (factor - 1))^(r/(r-2)),
 *            M = max_position_embeddings, n = max(M, largest position of the
 *            call + 1) (so it changes only once positions pass M; keys already
 *            in a KV cache keep the rotation they were given)
 *   LLAMA3   DEFAULT banded by wavelength 2 pi / inv_freq against
 *            O / low_freq_factor and O / high_freq_factor, O =
 *            original_max_position_embeddings: above: / factor; below: kept;
 *            between: (1 - s) inv_freq / factor + s inv_freq,
 *            s = (O / wavelength - low_freq_factor) / (high_freq_factor - low_freq_factor)
 *   YARN     DEFAULT / factor and DEFAULT blended by a linear ramp over the
 *            dims between the correction dims of beta_fast (default 32) and
 *            beta_slow (default 1) (floored / ceiled unless yarn_no_truncate);
 *            cos and sin are scaled by the attention factor: attention_factor,
 *            or when 0, 0.1 ln(factor) + 1 (with mscale and mscale_all_dim both
 *            set: their ratio of that form)
 *   TABLE    the caller's cos / sin tables [P, r/2] f32 (row p: position p),
 *            which cover every other scheme (LongRoPE, per-layer bases)
 * The angle of dim pair i at position p is p * inv_freq[i]; cos and sin are
 * computed in double and stored as f32. */
typedef enum attn_rope_type {
  ATTN_ROPE_NONE = 0,
  ATTN_ROPE_DEFAULT = 1,
  ATTN_ROPE_LINEAR = 2,
  ATTN_ROPE_DYNAMIC = 3,
  ATTN_ROPE_LLAMA3 = 4,
  ATTN_ROPE_YARN = 5,
  ATTN_ROPE_TABLE = 6
} attn_rope_type;

typedef struct attn_rope_config {
  size_t struct_size;   /* sizeof(attn_rope_config), set by ATTN_ROPE_CONFIG_INIT */
  attn_rope_type type;
  bool interleaved;     /* GPT-J pairs (2i, 2i+1); false: half split (i, i + r/2), NeoX / Llama */
  int64_t rotary_dim;   /* r, even, <= head_dim; 0 means head_dim (partial rotary: r < D) */
  double theta;         /* rope_theta (> 1); 0 means 10000 */
  double factor;        /* LINEAR, DYNAMIC, LLAMA3, YARN: >= 1 */
  int64_t max_position_embeddings;          /* DYNAMIC: M */
  int64_t original_max_position_embeddings; /* LLAMA3, YARN: O */
  double low_freq_factor, high_freq_factor; /* LLAMA3 */
  double beta_fast, beta_slow;              /* YARN: 0 means 32 and 1 */
  double attention_factor;                  /* YARN: 0 means from factor (and mscale) */
  double mscale, mscale_all_dim;            /* YARN: optional (0 = unset) */
  bool yarn_no_truncate;                    /* YARN: transformers' truncate = false (gpt-oss) */
  const attn_tensor *cos, *sin;             /* TABLE: [P, r/2] f32 each */
} attn_rope_config;
#define ATTN_ROPE_CONFIG_INIT {.struct_size = sizeof(attn_rope_config)}

/* The rule's r/2 inverse frequencies and its factor on cos and sin (1 but
 * for YARN), for a head dim and (DYNAMIC only) the largest position + 1 of
 * the call (0: none past M). inv_freq has room for rotary_dim / 2 values.
 * TABLE and NONE have no frequencies (ATTN_ERR_INVALID_ARG). */
ATTN_API attn_status attn_rope_frequencies(const attn_rope_config *cfg, int64_t head_dim,
                                           int64_t seq_len, double *inv_freq,
                                           double *attention_scaling);

/* Rotate x [B, H, S, D] into y [B, H, S, D] (y may be x itself: in place)
 * by per-token positions (host [B * S] int32 >= 0, row b at b * S; NULL means
 * 0..S-1 in every row), per cfg. x and y: f32, f16 or bf16. */
typedef struct attn_rope_args {
  size_t struct_size; /* sizeof(attn_rope_args), set by ATTN_ROPE_ARGS_INIT */
  const attn_tensor *x;
  attn_tensor *y;
  const attn_rope_config *rope;
  const int32_t *positions;
} attn_rope_args;
#define ATTN_ROPE_ARGS_INIT {.struct_size = sizeof(attn_rope_args)}
ATTN_API attn_status attn_rope(attn_context *ctx, const attn_rope_args *args);

/* RMSNorm over the last dim D of x (rank 1 to 4) into y of x's shape (y may be
 * x itself): y = x / sqrt(mean(x^2) + eps) * g with g = weight, or with
 * offset (Gemma) g = 1 + weight; weight [D]; eps > 0 and finite. */
ATTN_API attn_status attn_rms_norm(attn_context *ctx, const attn_tensor *x,
                                   const attn_tensor *weight, float eps, bool offset,
                                   attn_tensor *y);

/* ---- Multi-head attention graph ----------------------------------------- */

/* Weights follow PyTorch's nn.Linear: W is [out, in] and y = x W^T + b.
 *   wq [n_heads*head_dim, d_model]     bq [n_heads*head_dim]
 *   wk [n_kv_heads*head_dim, d_kv]     bk [n_kv_heads*head_dim]
 *   wv [n_kv_heads*head_dim, d_kv]     bv [n_kv_heads*head_dim]
 *   wo [d_model, n_heads*head_dim]     bo [d_model]
 * or, instead of wq/wk/wv, one packed in_proj [(n_heads+2*n_kv_heads)*head_dim,
 * d_model] (rows q, then k, then v, as nn.MultiheadAttention's in_proj_weight,
 * Phi-3's qkv_proj; or per head [h][q | k | v][head_dim] with
 * desc.qkv_per_head, BLOOM's query_key_value) with in_bias; the packed form
 * needs d_kv == d_model.
 * Biases are required exactly when desc.bias is true, or (0.4) for the
 * projections desc.biases names (in_bias: q, k and v together); a weight in
 * desc.transposed is given [in, out] (GPT-2's Conv1D, y = x W + b) and read
 * through strides, never copied. Each weight keeps its own element type
 * (f32, f16 or bf16, as stored in a checkpoint). */
typedef struct attn_mha_desc {
  size_t struct_size; /* sizeof(attn_mha_desc), set by ATTN_MHA_DESC_INIT */
  int64_t d_model;    /* E: width of x and out */
  int64_t d_kv;       /* Ekv: width of kv_x; 0 means d_model */
  int64_t n_heads;    /* Hq */
  int64_t n_kv_heads; /* Hkv; 0 means n_heads; n_heads % n_kv_heads == 0 */
  int64_t head_dim;   /* D; 0 means d_model / n_heads */
  bool bias;
  bool causal;
  /* The plan: the largest batch and sequence lengths a run may use; the
   * intermediate buffers are sized for them once, at creation. */
  int64_t max_batch;
  int64_t max_seq;    /* Sq */
  int64_t max_kv_seq; /* Skv for cross attention; 0 means max_seq */
  /* Element types: of the activations (x, out and the q / attention
   * intermediates) and of the projected keys and values (their intermediates
   * and a KV cache's default). */
  attn_dtype dtype;
  attn_dtype kv_dtype;
  /* 0.4: the attention layers of real models. Every field zero means 0.3's
   * graph. The nodes then are: project q, k, v; norm q, k (QK-norm); rotate
   * q, k (RoPE); sdpa; project out. */
  unsigned biases;      /* ATTN_PROJ_* of the projections that have a bias (bias = true: all) */
  unsigned transposed;  /* ATTN_PROJ_* whose weight is stored [in, out] (GPT-2's Conv1D),
                           read through strides: wq [d_model, Hq*D], ..., in_proj [d_model, rows] */
  const attn_tensor *q_norm, *k_norm; /* [head_dim] RMSNorm weights per head, or NULL */
  float norm_eps;       /* their epsilon (> 0 when either is given) */
  bool norm_offset;     /* gain 1 + w (Gemma) instead of w */
  const attn_rope_config *rope; /* NULL or type NONE: no RoPE; copied at creation */
  bool has_scale;       /* the logit scale; default 1/sqrt(head_dim) */
  float scale;
  bool has_window;      /* sliding window, as attn_sdpa_args */
  int64_t window_left, window_right;
  float softcap;        /* > 0: cap the logits */
  const float *alibi_slopes; /* host [n_heads] or NULL; copied at creation */
  const float *sinks;        /* host [n_heads] or NULL; copied at creation */
  /* in_proj's rows interleaved per head, [h][q | k | v][head_dim] (BLOOM's
   * query_key_value) instead of the blocks q, k, v; needs in_proj and
   * n_kv_heads == n_heads. Each head's rows are read through a view at
   * their offset, never copied. */
  bool qkv_per_head;
} attn_mha_desc;
/* The projections, for desc.biases and desc.transposed. */
#define ATTN_PROJ_Q 1u
#define ATTN_PROJ_K 2u
#define ATTN_PROJ_V 4u
#define ATTN_PROJ_O 8u
#define ATTN_PROJ_ALL 15u
#define ATTN_MHA_DESC_INIT {.struct_size = sizeof(attn_mha_desc)}

typedef struct attn_mha_weights {
  const attn_tensor *wq, *wk, *wv, *wo;
  const attn_tensor *bq, *bk, *bv, *bo;
  const attn_tensor *in_proj, *in_bias;
} attn_mha_weights;

typedef struct attn_mha attn_mha;

/* Plans the nodes (project q, k, v; split heads; sdpa; merge heads; project
 * out) and allocates the intermediate buffers. The weight tensors are
 * referenced, not copied: keep them alive while the graph lives. */
ATTN_API attn_status attn_mha_create(attn_context *ctx, const attn_mha_desc *desc,
                                     const attn_mha_weights *w, attn_mha **graph);
/* The graph may be freed before its KV caches: its buffers then live until
 * the last of them is freed, each cache stays valid (length, capacity,
 * reset, free), and only running it needs the graph (after this, passing
 * the graph to any call is an error). attn_close frees both. NULL: no-op. */
ATTN_API void attn_mha_free(attn_mha *graph);

/* x [B, Sq, E]; kv_x [B, Skv, Ekv] or NULL for self attention; out [B, Sq, E];
 * x, kv_x and out of the desc's dtype.
 * Data stays on the device from the first projection to the last. */
ATTN_API attn_status attn_mha_run(attn_mha *graph, const attn_tensor *x,
                                  const attn_tensor *kv_x, attn_tensor *out);

/* 0.4: one run with everything a model's layer takes.
 *   x [B, S, E], kv_x [B, Skv, Ekv] or NULL (self attention), out [B, S, E]
 *   attention_mask: host [B, Skv] int32 (Skv = S for self attention), 1 = a
 *     token, 0 = padding (transformers' attention_mask, nn.MultiheadAttention's
 *     key_padding_mask inverted): padding keys are hidden from every query.
 *     Rows of out at padding queries are unspecified. With a cache it covers
 *     the new tokens, and a padding token stays hidden from later runs.
 *   position_ids: host [B, S] int32 >= 0, the RoPE positions of the tokens;
 *     NULL: 0..S-1, or with a cache the row's length + 0..S-1. (Keys of cross
 *     attention are at 0..Skv-1.) Causality and the window use the indices in
 *     the (padded) sequence, as transformers does.
 *   mask, mask_kind: as attn_sdpa_args (no cache, no attention_mask).
 *   cache: NULL, or a KV cache of this graph (self attention): see below.
 *   n_new: with a cache, host [B] int32: row b appends its first n_new[b]
 *     tokens of x (0..S) and the rest of its rows are ignored (out there is
 *     unspecified); NULL: S each. */
typedef struct attn_mha_run_args {
  size_t struct_size; /* sizeof(attn_mha_run_args), set by ATTN_MHA_RUN_ARGS_INIT */
  const attn_tensor *x, *kv_x;
  attn_tensor *out;
  const int32_t *attention_mask;
  const int32_t *position_ids;
  const attn_tensor *mask;
  attn_mask_kind mask_kind;
  struct attn_kv_cache *cache;
  const int32_t *n_new;
} attn_mha_run_args;
#define ATTN_MHA_RUN_ARGS_INIT {.struct_size = sizeof(attn_mha_run_args)}
ATTN_API attn_status attn_mha_run_ex(attn_mha *graph, const attn_mha_run_args *args);

/* Time spent in each node by the last run, in the order they ran (host wall
 * time with a device synchronisation after each node when profiling is on;
 * 0 otherwise). Node names: "project_q", "project_k", "project_v", "sdpa",
 * "project_out"; later versions may add nodes (a norm, RoPE). */
#define ATTN_MHA_MAX_NODES 16
typedef struct attn_mha_node_time {
  char name[32];
  double ms;
} attn_mha_node_time;
typedef struct attn_mha_profile {
  int n; /* nodes of the last run (0 before any run) */
  attn_mha_node_time node[ATTN_MHA_MAX_NODES];
} attn_mha_profile;
ATTN_API attn_status attn_mha_set_profiling(attn_mha *graph, bool on);
ATTN_API attn_status attn_mha_profile_get(const attn_mha *graph, attn_mha_profile *p);
/* The ms of the node of that name in p, or -1 if the last run had none. */
ATTN_API double attn_mha_profile_ms(const attn_mha_profile *p, const char *node);

/* ---- KV cache ------------------------------------------------------------ */

/* A cache of projected keys and values for self attention, bound to a graph,
 * for `batch` sequences of up to `capacity` tokens. Each cached run projects
 * x's keys and values, appends them, and attends over everything cached
 * (causal per the graph's desc, aligned bottom-right). Decoding token by token
 * gives the same outputs as one causal pass over the whole sequence. A run
 * that would exceed the capacity fails with ATTN_ERR_CAPACITY and changes
 * nothing.
 * 0.4: every row (sequence) of the batch has its own length: a run appends
 * n_new[b] tokens to row b (attn_mha_run_ex), keys normed and rotated at
 * their absolute positions before they are stored; a row can be truncated
 * back to a shorter length (speculative decoding) or reset alone. */
typedef struct attn_kv_cache attn_kv_cache;
/* The cache stores keys and values as the graph's desc.kv_dtype; the _typed
 * form chooses (an f16 or bf16 cache under f32 activations halves its memory
 * and the bytes each decode step reads). */
ATTN_API attn_status attn_kv_cache_create(attn_mha *graph, int64_t batch, int64_t capacity,
                                          attn_kv_cache **cache);
ATTN_API attn_status attn_kv_cache_create_typed(attn_mha *graph, int64_t batch,
                                                int64_t capacity, attn_dtype dtype,
                                                attn_kv_cache **cache);
ATTN_API void attn_kv_cache_free(attn_kv_cache *cache);
/* The length of the longest row (every row's, unless n_new or truncation made
 * them differ). */
ATTN_API int64_t attn_kv_cache_length(const attn_kv_cache *cache);
ATTN_API int64_t attn_kv_cache_capacity(const attn_kv_cache *cache);
/* Every row back to length 0. */
ATTN_API void attn_kv_cache_reset(attn_kv_cache *cache);
/* 0.4: row's length (-1 for a NULL cache or a row out of range). */
ATTN_API int64_t attn_kv_cache_row_length(const attn_kv_cache *cache, int64_t row);
/* 0.4: forget row's tokens from length on (0 <= length <= its length). */
ATTN_API attn_status attn_kv_cache_truncate(attn_kv_cache *cache, int64_t row, int64_t length);
/* 0.4: row back to length 0, the others untouched. */
ATTN_API attn_status attn_kv_cache_reset_row(attn_kv_cache *cache, int64_t row);
/* x [B, S, E] with B == the cache's batch; out [B, S, E]. */
ATTN_API attn_status attn_mha_run_cached(attn_mha *graph, attn_kv_cache *cache,
                                         const attn_tensor *x, attn_tensor *out);

#ifdef __cplusplus
}
#endif
#endif /* ATTN_H */
