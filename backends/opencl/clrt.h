/* The shared OpenCL runtime of the pocl and clblast backends (a convenience
 * library linked into both modules): device enumeration through the ICD
 * loader, one context and in-order queue per opened device, the buffers behind
 * the vtable's memory slots, kernel programs built from the embedded
 * kernels/ sources (*.cl) through an on-disk binary cache, and CL error codes
 * turned into attn_status with the error's name in the message.
 *
 * Errors are reported through the attn_host given to clrt_init (so they carry
 * the public function's name); every function returning attn_status has
 * already reported its failure when it returns.
 *
 * Threading: module-global state (the host, the enumeration) is set up under
 * the core's loader lock; a clrt_ctx is used by one thread at a time, like the
 * backend context that embeds it. The disk cache is safe across threads and
 * processes (temporary file + rename).
 */
#ifndef ATTN_CLRT_H
#define ATTN_CLRT_H

#ifndef CL_TARGET_OPENCL_VERSION
#define CL_TARGET_OPENCL_VERSION 120 /* the OpenCL 1.2 API: portable to NVIDIA */
#endif
#include <CL/cl.h>

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "attn_plugin.h"

#define CLRT_INTERNAL __attribute__((visibility("hidden")))

/* ---- module setup ------------------------------------------------------------ */

/* Remember the host services (call from the module's init slot). */
CLRT_INTERNAL void clrt_init(const attn_host *host);
/* The host given to clrt_init (never NULL: a silent fallback before init). */
CLRT_INTERNAL const attn_host *clrt_host(void);

/* ---- errors ------------------------------------------------------------------ */

/* "CL_OUT_OF_RESOURCES" for a CL error code; "CL_UNKNOWN_ERROR" if unknown. */
CLRT_INTERNAL const char *clrt_error_name(cl_int err);
/* The attn_status for a CL error: allocation failures -> ATTN_ERR_DEVICE_MEMORY,
 * CL_BUILD_PROGRAM_FAILURE -> ATTN_ERR_BUILD, anything else -> ATTN_ERR_BACKEND. */
CLRT_INTERNAL attn_status clrt_status(cl_int err);
/* Report err through host->error as "<what>: CL_NAME (code)" and return its
 * status; err must not be CL_SUCCESS. */
CLRT_INTERNAL attn_status clrt_fail(cl_int err, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));
/* ATTN_OK if err == CL_SUCCESS, else clrt_fail(err, "...") */
#define CLRT_CHECK(err, ...) ((err) == CL_SUCCESS ? ATTN_OK : clrt_fail((err), __VA_ARGS__))

/* ---- devices ------------------------------------------------------------------ */

typedef struct clrt_device {
  cl_platform_id platform;
  cl_device_id id;
  cl_device_type type;
} clrt_device;

/* Every device of every platform whose type intersects type_mask
 * (CL_DEVICE_TYPE_CPU | ...), at most max into out; returns the count (0 when
 * there is no ICD, platform or device: not an error). Order: devices of
 * platforms whose name contains prefer_platform (case-insensitive; NULL = no
 * preference) first; then, if gpus_first, GPUs, accelerators, CPUs, others;
 * otherwise platform/device order. */
CLRT_INTERNAL int clrt_find_devices(cl_device_type type_mask, const char *prefer_platform,
                                    bool gpus_first, clrt_device *out, int max);
/* Fill name, vendor, driver ("<platform version> / driver <driver version>"),
 * type, global_mem, max_alloc and compute_units; leaves selector, backend and
 * index to the caller. */
CLRT_INTERNAL attn_status clrt_device_info(const clrt_device *dev, attn_device_info *info);

/* ---- context ------------------------------------------------------------------ */

/* A device buffer: the struct behind the vtable's opaque attn_buffer. */
struct attn_buffer {
  cl_mem mem;
  size_t bytes;
  struct attn_buffer *prev, *next; /* in the owning clrt_ctx, freed with it */
};

typedef struct clrt_program clrt_program; /* built programs kept per context */

/* ---- fault injection (a testing aid) -----------------------------------------------
 * ATTN_FAULT, read by clrt_ctx_init (so it applies to the contexts opened
 * while it is set; tests set it, open a context and unset it), makes one of
 * the runtime's CL calls on that context fail as a driver would:
 *     ATTN_FAULT=KIND:N        the Nth such call on the context fails, once
 *     ATTN_FAULT=KIND:N+       the Nth and every later one fail
 *     ATTN_FAULT=KIND:N[+]:ERR ... with CL error ERR (a name, e.g.
 *                              CL_MEM_OBJECT_ALLOCATION_FAILURE) instead
 * KIND (and its default error):
 *     alloc    clCreateBuffer in clrt_buffer_alloc and clrt_scratch_alloc
 *              (CL_MEM_OBJECT_ALLOCATION_FAILURE)
 *     build    a program build, from the disk cache or source
 *              (CL_BUILD_PROGRAM_FAILURE, with a compiler log saying so)
 *     enqueue  clrt_enqueue's clEnqueueNDRangeKernel (CL_OUT_OF_RESOURCES)
 *     write    clrt_buffer_write (CL_OUT_OF_RESOURCES)
 *     read     clrt_buffer_read (CL_OUT_OF_RESOURCES)
 *     finish   clrt_finish, after the real clFinish (CL_OUT_OF_RESOURCES)
 * N counts from 1 the calls of that kind since the context was opened. Only
 * the calls that go through this runtime are hooked: our kernels and the
 * buffers behind the vtable's memory slots, for pocl and clblast alike; not
 * CLBlast's own internal buffers, builds and enqueues. A malformed value
 * fails clrt_ctx_init with ATTN_ERR_INVALID_ARG. Unset, each hooked call
 * costs one integer compare. */
typedef enum clrt_fault_kind {
  CLRT_FAULT_NONE = 0,
  CLRT_FAULT_ALLOC,
  CLRT_FAULT_BUILD,
  CLRT_FAULT_ENQUEUE,
  CLRT_FAULT_WRITE,
  CLRT_FAULT_READ,
  CLRT_FAULT_FINISH,
  CLRT_FAULT_NKINDS
} clrt_fault_kind;

typedef struct clrt_fault {
  clrt_fault_kind kind; /* CLRT_FAULT_NONE: injection off */
  long nth;             /* the call (from 1) that fails */
  bool from_on;         /* ...and every later one ("N+") */
  cl_int err;           /* the CL error it returns */
  /* While kind != NONE: hooked calls so far, per kind (tests read these to
   * size their sweeps), and faults injected. */
  long calls[CLRT_FAULT_NKINDS];
  long injected;
} clrt_fault;

/* One opened device: a context and one in-order queue. Backends embed it as
 * the FIRST member of their own context struct: that is a contract, relied on
 * by clrt_peaks_slot and by tests/test_faults.c, which see an
 * attn_backend_ctx * of an OpenCL backend as a clrt_ctx *. */
typedef struct clrt_ctx {
  clrt_device dev;
  cl_context context;
  cl_command_queue queue;     /* in-order, no profiling */
  uint64_t max_alloc;         /* CL_DEVICE_MAX_MEM_ALLOC_SIZE */
  size_t max_wg;              /* CL_DEVICE_MAX_WORK_GROUP_SIZE */
  size_t host_align;          /* CPU devices: alignment of the host memory behind buffers */
  uint64_t global_mem;        /* CL_DEVICE_GLOBAL_MEM_SIZE: what buffers and scratch may total */
  struct attn_buffer *buffers; /* live buffers */
  clrt_program *programs;     /* built programs (and their kernels) */
  /* Statistics of program builds in this context (tests and debug logs). */
  int n_cache_hits;           /* programs loaded from the disk cache */
  int n_builds;               /* programs compiled from source */
  int n_buffers;              /* live buffers and scratch from clrt_*_alloc (leak checks) */
  clrt_fault fault;           /* ATTN_FAULT at clrt_ctx_init (see above) */
} clrt_ctx;

/* Create the context and queue for dev into *c (zeroed first), with the
 * fault injection ATTN_FAULT asks for. */
CLRT_INTERNAL attn_status clrt_ctx_init(clrt_ctx *c, const clrt_device *dev);
/* Finish the queue, free every live buffer, program and kernel, the queue and
 * the context. Safe on a zeroed or partly initialised ctx. */
CLRT_INTERNAL void clrt_ctx_release(clrt_ctx *c);
/* clFinish; reports deferred errors. */
CLRT_INTERNAL attn_status clrt_finish(clrt_ctx *c);

/* ---- buffers: the vtable's memory slots ---------------------------------------- */

/* The runtime's buffers and scratch on a device, over every context of the
 * module on it, may not exceed its global memory: the core accounts for the
 * tensors, this for a stage's scratch too (clblast's f32 copies of 16-bit
 * operands and its score tiles, pocl's decode partials), so that a call is
 * refused with ATTN_ERR_DEVICE_MEMORY when its scratch does not fit instead
 * of oversubscribing the device. */

/* clCreateBuffer(READ_WRITE, bytes > 0); bytes over max_alloc, or over what
 * is left of the device's memory -> ATTN_ERR_DEVICE_MEMORY. */
CLRT_INTERNAL attn_status clrt_buffer_alloc(clrt_ctx *c, size_t bytes, attn_buffer **buf);
/* Release (the driver keeps it until queued work on it completes). NULL is a no-op. */
CLRT_INTERNAL void clrt_buffer_free(clrt_ctx *c, attn_buffer *buf);
/* Blocking write of bytes from host src at byte offset (range checked). */
CLRT_INTERNAL attn_status clrt_buffer_write(clrt_ctx *c, attn_buffer *buf, size_t offset,
                                            size_t bytes, const void *src);
/* Blocking read of bytes at byte offset into host dst, after queued work (range checked). */
CLRT_INTERNAL attn_status clrt_buffer_read(clrt_ctx *c, attn_buffer *buf, size_t offset,
                                           size_t bytes, void *dst);

/* The cl_mem behind every buffer of the runtime (clrt_buffer_alloc,
 * clrt_scratch_alloc, the peaks' buffers): clCreateBuffer(flags, bytes, host).
 * On a CPU device the memory is the host's, and POCL allocates a buffer's
 * memory only when a kernel first uses it (under an address-space limit it
 * then aborts on an assertion inside clEnqueueNDRangeKernel). So there the
 * runtime allocates it itself, aligned to host_align, and hands it over
 * with CL_MEM_USE_HOST_PTR (zero-copy; CL_MEM_COPY_HOST_PTR is done by a
 * memcpy first); a destructor callback frees it when the driver destroys
 * the buffer, after the queued work on it. Exhaustion is then
 * ATTN_ERR_DEVICE_MEMORY here, at the allocation. No fault hook, no count:
 * callers add those. */
CLRT_INTERNAL attn_status clrt_mem_create(clrt_ctx *c, cl_mem_flags flags, size_t bytes,
                                          void *host, const char *what, cl_mem *mem);

/* Scratch memory one stage call needs (a copy of kv_lens, partial results):
 * clCreateBuffer(flags, bytes, host) with the same max_alloc check, live
 * count and ATTN_FAULT "alloc" hook as clrt_buffer_alloc, so faults reach it
 * and leak checks see it. Release it with clrt_scratch_free once the kernels
 * using it are enqueued (the driver frees it when they finish). */
CLRT_INTERNAL attn_status clrt_scratch_alloc(clrt_ctx *c, cl_mem_flags flags, size_t bytes,
                                             void *host, const char *what, cl_mem *mem);
/* NULL is a no-op. */
CLRT_INTERNAL void clrt_scratch_free(clrt_ctx *c, cl_mem mem);

/* ---- kernel sources and programs -------------------------------------------------- */

/* The source of kernels/<name>.cl: from $ATTN_KERNEL_DIR/<name>.cl when that is
 * set (read into *owned, which the caller frees; ATTN_ERR_IO if unreadable),
 * otherwise the copy embedded at build time (*owned = NULL). Unknown name ->
 * ATTN_ERR_INVALID_ARG. */
CLRT_INTERNAL attn_status clrt_kernel_source(const char *name, const char **src, size_t *len,
                                             char **owned);
/* The kernel source every program starts with (kernels/common.cl). */
#define CLRT_PRELUDE "common"
/* The program of CLRT_PRELUDE + kernels/<name>.cl built with options (NULL = ""), from this
 * context's programs, else the disk binary cache, else compiled (and stored
 * in the cache). A compile failure -> ATTN_ERR_BUILD with the compiler log in
 * the message. The program belongs to the context. */
CLRT_INTERNAL attn_status clrt_program_get(clrt_ctx *c, const char *name, const char *options,
                                           cl_program *prog);
/* Kernel kernel_name of that program, created once per context and reused
 * (set its arguments before each enqueue). Owned by the context. */
CLRT_INTERNAL attn_status clrt_kernel_get(clrt_ctx *c, const char *name, const char *options,
                                          const char *kernel_name, cl_kernel *kernel);

/* ---- enqueue helpers ------------------------------------------------------------- */

/* Set n arguments from (size_t size, const void *value) pairs following n;
 * a failure names the kernel and the argument index. Use CLRT_ARG(x). */
CLRT_INTERNAL attn_status clrt_set_args(cl_kernel k, int n, ...);
#define CLRT_ARG(x) sizeof(x), (const void *)&(x)
/* clEnqueueNDRangeKernel on the context's queue; local may be NULL. A failure
 * names the kernel. */
CLRT_INTERNAL attn_status clrt_enqueue(clrt_ctx *c, cl_kernel k, cl_uint dims,
                                       const size_t *global, const size_t *local);
/* Round x up to a multiple of m (m > 0). */
static inline size_t clrt_round_up(size_t x, size_t m) { return (x + m - 1) / m * m; }
/* A view's strides as a kernel's long4, and its cl_mem (NULL when absent). */
static inline cl_long4 clrt_strides4(const attn_view *v) {
  cl_long4 s;
  for (int i = 0; i < 4; i++) s.s[i] = v->strides[i];
  return s;
}
static inline cl_mem clrt_mem_of(const attn_view *v) { return v->buf ? v->buf->mem : NULL; }

/* ---- the binary cache (cache.c) --------------------------------------------------- */

/* The cache directory: $ATTN_CACHE_DIR, else $XDG_CACHE_HOME/attn, else
 * $HOME/.cache/attn; NULL when ATTN_CACHE=0 or no directory can be named.
 * Writes into buf (len bytes). */
CLRT_INTERNAL const char *clrt_cache_dir(char *buf, size_t len);
/* Look up the entry for key (any string naming everything the binary depends
 * on). Returns 1 and a malloc'ed payload when a valid entry exists; 0 when
 * absent, disabled, or corrupt/truncated/stale/foreign (logged, ignored). */
CLRT_INTERNAL int clrt_cache_load(const char *key, unsigned char **bin, size_t *len);
/* Store payload for key (temporary file + rename). Failures are logged
 * through host->debug and otherwise ignored: no cache is not an error. */
CLRT_INTERNAL void clrt_cache_store(const char *key, const unsigned char *bin, size_t len);
/* The path of key's entry file into buf; NULL if caching is disabled. */
CLRT_INTERNAL const char *clrt_cache_path(const char *key, char *buf, size_t len);
/* 64-bit FNV-1a of n bytes, continuing from h (start with CLRT_FNV_INIT). */
#define CLRT_FNV_INIT 0xcbf29ce484222325ULL
CLRT_INTERNAL uint64_t clrt_hash(uint64_t h, const void *data, size_t n);

/* ---- device peaks (peaks.c, kernels/peak.cl) -------------------------------------- */

/* clpeak-style fp32 FMA GFLOP/s and copy GB/s (read + written) of c's device,
 * from the binary cache unless refresh (then measured and stored); a cached
 * FMA figure that a short probe beats by 2x is measured again. */
CLRT_INTERNAL attn_status clrt_peaks(clrt_ctx *c, bool refresh, double *gflops, double *gbps);
/* The cache key of c's device peaks (for tests). */
CLRT_INTERNAL void clrt_peaks_key(const clrt_ctx *c, char *key, size_t keylen);
/* The vtable's peaks slot for a backend whose attn_backend_ctx begins with its
 * clrt_ctx (pocl and clblast do): `.peaks = clrt_peaks_slot,`. */
CLRT_INTERNAL attn_status clrt_peaks_slot(attn_backend_ctx *ctx, bool refresh, double *gflops,
                                          double *gbps);

/* ---- tuning parameters in the cache (tune.c) ---------------------------------------- */

/* The cache key of backend's tuning parameters on c's device: platform, device,
 * driver, and the hash of each of the n kernel sources (kernels/<name>.cl) they
 * apply to, so a changed kernel or driver falls back to the defaults. */
CLRT_INTERNAL void clrt_tune_key(const clrt_ctx *c, const char *backend,
                                 const char *const *kernels, int n, char *key, size_t keylen);
/* The stored text for key (malloc'ed, NUL-terminated), or NULL when absent,
 * disabled (ATTN_CACHE=0) or corrupt. */
CLRT_INTERNAL char *clrt_tune_load(const char *key);
/* Store text for key; 1 if it is in the cache afterwards, 0 if not (disabled
 * or unwritable: logged, not an error). */
CLRT_INTERNAL int clrt_tune_store(const char *key, const char *text);
/* The value of the line "name value" of text into buf, or NULL if none fits. */
CLRT_INTERNAL const char *clrt_tune_value(const char *text, const char *name, char *buf,
                                          size_t len);
/* Monotonic wall clock in ms, and the median of n values (sorts v). */
CLRT_INTERNAL double clrt_now_ms(void);
CLRT_INTERNAL double clrt_median(double *v, int n);

/* ---- SDPA options and the merge stage (attention.c) ------------------------------ */

/* The kernel arguments of kernels/common.cl's ATTN_OPTS_PARAMS for one SDPA
 * call: the row ranges folded into diagonal offsets (clamped to the int
 * range the rows can reach), softcap, ALiBi's position offset, and device
 * copies of the alibi slopes and sinks (scratch; release with
 * clrt_sdpa_opts_release once the kernels are enqueued). */
typedef struct clrt_sdpa_opts {
  cl_int has_lo, lo_off, has_hi, hi_off;
  cl_long cpos;
  cl_float softcap;
  cl_mem alibi;
  cl_int has_alibi;
  cl_mem sinks;
  cl_int has_sinks;
} clrt_sdpa_opts;
/* The number of kernel arguments CLRT_OPTS_ARGS expands to. */
#define CLRT_OPTS_NARGS 10
#define CLRT_OPTS_ARGS(o)                                                                  \
  CLRT_ARG((o).has_lo), CLRT_ARG((o).lo_off), CLRT_ARG((o).has_hi), CLRT_ARG((o).hi_off),   \
      CLRT_ARG((o).cpos), CLRT_ARG((o).softcap), CLRT_ARG((o).alibi),                       \
      CLRT_ARG((o).has_alibi), CLRT_ARG((o).sinks), CLRT_ARG((o).has_sinks)
/* Fill o for d; absent alibi / sinks get a 4-byte placeholder buffer
 * (kernels never read it) so every argument is a valid cl_mem. */
CLRT_INTERNAL attn_status clrt_sdpa_opts_init(clrt_ctx *c, const attn_sdpa_desc *d,
                                              const char *who, clrt_sdpa_opts *o);
CLRT_INTERNAL void clrt_sdpa_opts_release(clrt_ctx *c, clrt_sdpa_opts *o);
/* Keys [*lo, *hi) are visible to some query row of batch item b (the union
 * of the rows' ranges, kv_lens included): what a kernel need read at all. */
CLRT_INTERNAL void clrt_sdpa_key_span(const attn_sdpa_desc *d, int64_t b, int64_t *lo,
                                      int64_t *hi);
/* The same over every batch item: [*lo, *hi), or [0, 0) if no row sees a key. */
CLRT_INTERNAL void clrt_sdpa_key_span_all(const attn_sdpa_desc *d, int64_t *lo, int64_t *hi);
/* A scratch copy of d->kv_lens (host memory the caller may reuse once the
 * call returns), or *mem = NULL when there is none; who names the caller in
 * an error. Release with clrt_scratch_free. */
CLRT_INTERNAL attn_status clrt_kv_lens_copy(clrt_ctx *c, const attn_sdpa_desc *d,
                                            const char *who, cl_mem *mem);
/* For tuning runs: a contiguous f32 view of buf, and a buffer of n small
 * deterministic values (not uninitialised: denormals or NaNs would time
 * something else). */
CLRT_INTERNAL attn_view clrt_view4(attn_buffer *buf, int64_t a, int64_t b, int64_t c, int64_t d);
CLRT_INTERNAL attn_status clrt_filled_buffer(clrt_ctx *c, size_t n, attn_buffer **buf);
/* A tuning SDPA problem: q and out [1, Hq, Sq, D], k and v [1, Hkv, Skv, D],
 * filled as clrt_filled_buffer does, scale 1/8, described by d. On failure
 * nothing stays allocated. Free with clrt_tune_sdpa_free. */
typedef struct clrt_tune_sdpa {
  attn_buffer *q, *k, *v, *o;
  attn_sdpa_desc d;
} clrt_tune_sdpa;
CLRT_INTERNAL attn_status clrt_tune_sdpa_init(clrt_ctx *c, int64_t Hq, int64_t Hkv, int64_t Sq,
                                              int64_t Skv, int64_t D, clrt_tune_sdpa *t);
CLRT_INTERNAL void clrt_tune_sdpa_free(clrt_ctx *c, clrt_tune_sdpa *t);
/* Appends " -D<name>=<code>" for an operand stored as f16 or bf16 (codes as
 * attn_dtype, read by kernels/common.cl); f32 and absent operands add
 * nothing, so an all-f32 call builds exactly the f32 program. */
CLRT_INTERNAL void clrt_dtype_option(char *buf, size_t len, const char *name,
                                     const attn_view *v);
/* The merge stage (kernels/merge.cl), for every OpenCL backend. */
CLRT_INTERNAL attn_status clrt_merge(clrt_ctx *c, const attn_merge_desc *d);
/* The rope and rmsnorm stages (kernels/rope.cl, ABI 2.3), for every OpenCL
 * backend: every feature of their descriptors, every dtype. */
#define CLRT_ROPE_FEATURES (ATTN_FEAT_ROPE_INTERLEAVED | ATTN_FEAT_F16 | ATTN_FEAT_BF16)
#define CLRT_RMSNORM_FEATURES (ATTN_FEAT_NORM_OFFSET | ATTN_FEAT_F16 | ATTN_FEAT_BF16)
CLRT_INTERNAL attn_status clrt_rope(clrt_ctx *c, const attn_rope_desc *d);
CLRT_INTERNAL attn_status clrt_rmsnorm(clrt_ctx *c, const attn_rmsnorm_desc *d);

#endif /* ATTN_CLRT_H */
