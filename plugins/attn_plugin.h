/* libattn plugin SDK: the ABI between the core (libattn.so) and a backend
 * module (attn_<name>.so, loaded with dlopen(RTLD_NOW | RTLD_LOCAL)).
 *
 * A module exports exactly one symbol:
 *     const attn_backend_vtable *attn_backend_entry(void);
 * returning a vtable with static storage duration. The core refuses a module
 * whose abi_major differs from ATTN_ABI_MAJOR; abi_minor and struct_size tell
 * it which optional slots (marked "(optional)") exist.
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

#define ATTN_ABI_MAJOR 1
#define ATTN_ABI_MINOR 2

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

/* A strided float32 view of a backend buffer, always 4-D (leading dims 1 when
 * the tensor has fewer). Element (i0,i1,i2,i3) is at
 *   offset + i0*strides[0] + i1*strides[1] + i2*strides[2] + i3*strides[3]
 * elements from the start of buf. The core has checked that every reachable
 * element lies inside buf. buf == NULL means "absent" for optional operands. */
typedef struct attn_view {
  attn_buffer *buf;
  int64_t offset;
  int64_t shape[4];
  int64_t strides[4];
} attn_view;

/* y[b, m, :] = x[b, m, :] W^T + bias   (nn.Linear convention)
 *   x [1, B, M, K], w [1, 1, N, K], bias [1, 1, 1, N] (optional), y [1, B, M, N]
 * The core guarantees strides[3] == 1 for x, w and y (rows are contiguous),
 * and that y overlaps none of the inputs. */
typedef struct attn_linear_desc {
  attn_view x, w, bias, y;
} attn_linear_desc;

/* As attn_sdpa_args, with shapes checked, the scale resolved, and the lse
 * view given as [B, Hq, Sq, 1]. kv_lens (host memory, B entries, each in
 * [0, Skv]) or NULL. mask.shape[0] is 1 or B and mask.shape[1] is 1 or Hq:
 * broadcast dims have stride 0 here, so index it as if it were full size. */
typedef struct attn_sdpa_desc {
  attn_view q, k, v, out;
  attn_view mask;           /* buf NULL if none */
  attn_mask_kind mask_kind; /* ATTN_MASK_NONE iff mask.buf == NULL */
  bool causal;
  float scale;
  const int32_t *kv_lens;
  attn_view weights; /* buf NULL if not requested */
  attn_view lse;     /* buf NULL if not requested */
} attn_sdpa_desc;

typedef enum attn_stage {
  ATTN_STAGE_LINEAR = 1, /* desc is const attn_linear_desc * */
  ATTN_STAGE_SDPA = 2    /* desc is const attn_sdpa_desc * */
} attn_stage;

typedef struct attn_backend_vtable {
  /* ---- header: never changes within ABI major 1 ---- */
  uint32_t abi_major;  /* ATTN_ABI_MAJOR of the SDK the module was built with */
  uint32_t abi_minor;  /* ATTN_ABI_MINOR of the SDK the module was built with */
  uint32_t struct_size; /* sizeof(attn_backend_vtable) as the module saw it */
  const char *name;    /* backend name used in selectors: [a-z0-9_]+ */

  /* ---- slots, ABI 1.0 (all required unless marked optional) ---- */
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
  /* Can this context run this stage descriptor? ATTN_OK, or ATTN_ERR_UNSUPPORTED with why. */
  attn_status (*supports)(attn_backend_ctx *ctx, attn_stage stage, const void *desc, char *why,
                          size_t why_len);
  /* Enqueue y = x W^T + b; may return before it completes (in-order with other slots). */
  attn_status (*linear)(attn_backend_ctx *ctx, const attn_linear_desc *desc);
  /* Enqueue scaled dot-product attention; may return before it completes. */
  attn_status (*sdpa)(attn_backend_ctx *ctx, const attn_sdpa_desc *desc);
  /* Wait until all work enqueued on ctx has completed; reports deferred errors. */
  attn_status (*synchronize)(attn_backend_ctx *ctx);

  /* ---- ABI 1.1: optional slots; the core checks ATTN_VT_HAS before calling ---- */
  /* (optional) Device peaks, clpeak style: fp32 FMA GFLOP/s and copy GB/s (read + written);
   * may answer from a cache unless refresh. */
  attn_status (*peaks)(attn_backend_ctx *ctx, bool refresh, double *gflops, double *gbps);

  /* ---- ABI 1.2: optional slots ---- */
  /* (optional) attn_tune: flags and report as there; the core has zeroed the report.
   * Measure the backend's tuning parameters on this device, use the winners on ctx
   * and store them for later contexts; or, with ATTN_TUNE_SHOW, only report the
   * values ctx uses. */
  attn_status (*tune)(attn_backend_ctx *ctx, unsigned flags, attn_tune_report *report);
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
