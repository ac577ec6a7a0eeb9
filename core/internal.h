/* Private to the core (libattn): shared between the core/ sources and the test suites
 * that link the core statically. Never installed. */
#ifndef ATTN_INTERNAL_H
#define ATTN_INTERNAL_H

#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include "attn.h"
#include "attn_plugin.h"

#define ATTN_INTERNAL __attribute__((visibility("hidden")))

/* ---- status.c: errors ------------------------------------------------------
 * Every public function starts with ATTN_ENTER("attn_sdpa"), which names the
 * function for the messages of this call (also those a backend reports with
 * host->error), and clears the previous message. */
ATTN_INTERNAL void attn__enter(const char *fn);
#define ATTN_ENTER(fn) attn__enter(fn)
/* Format "<current fn>: <message>" into this thread's error and return s. */
ATTN_INTERNAL attn_status attn__error(attn_status s, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));
ATTN_INTERNAL attn_status attn__verror(attn_status s, const char *fmt, va_list ap);
/* The current function's name ("attn" outside any call). */
ATTN_INTERNAL const char *attn__current_fn(void);
/* "[2,3,4]" for messages (truncated to fit n). */
ATTN_INTERNAL const char *attn__fmt_dims(char *buf, size_t n, int ndim, const int64_t *d);
/* Monotonic wall clock in milliseconds. */
ATTN_INTERNAL double attn__now_ms(void);
/* ATTN_DEBUG=1: log to stderr, "attn: " prefixed. */
ATTN_INTERNAL int attn__debug_enabled(void);
ATTN_INTERNAL void attn__debug(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
/* The host services handed to every module's init slot. */
ATTN_INTERNAL const attn_host *attn__host(void);

/* ---- selector.c: "backend[:device]" alternatives, comma separated ---------- */
#define ATTN_SEL_MAX_ALTS 16
#define ATTN_SEL_NAME_MAX 32
#define ATTN_SEL_DEV_MAX 128
typedef enum attn_sel_dev_kind {
  ATTN_SEL_ANY = 0,   /* "backend": first device of the backend */
  ATTN_SEL_INDEX,     /* "backend:2" */
  ATTN_SEL_TYPE,      /* "backend:gpu" (cpu, gpu, accelerator) */
  ATTN_SEL_NAME       /* "backend:nvidia": case-insensitive substring of the name */
} attn_sel_dev_kind;
typedef struct attn_sel_alt {
  char backend[ATTN_SEL_NAME_MAX];
  attn_sel_dev_kind kind;
  int index;                /* ATTN_SEL_INDEX */
  attn_device_type type;    /* ATTN_SEL_TYPE */
  char name[ATTN_SEL_DEV_MAX]; /* ATTN_SEL_NAME */
} attn_sel_alt;
typedef struct attn_selector {
  int n;
  attn_sel_alt alt[ATTN_SEL_MAX_ALTS];
} attn_selector;
/* Parse; on failure returns ATTN_ERR_SELECTOR with a message saying what is
 * wrong and where. Does not consult the registry. */
ATTN_INTERNAL attn_status attn__selector_parse(const char *text, attn_selector *out);
/* Does device info (of backend alt->backend) match alt? */
ATTN_INTERNAL int attn__selector_match(const attn_sel_alt *alt, const attn_device_info *info);

/* ---- loader.c: the backend registry ---------------------------------------
 * Modules are found in $ATTN_BACKEND_PATH (':'-separated directories or
 * module files), then in the installed module directory (or, when libattn
 * itself runs from its build tree, the build tree's .libs); never the current
 * directory. A directory contributes its files named attn_*.so. Each is
 * dlopen'ed with RTLD_NOW | RTLD_LOCAL and never closed. */
typedef struct attn_backend {
  char name[ATTN_SEL_NAME_MAX];
  char path[1024];
  void *handle;
  const attn_backend_vtable *vt;
  int ndev;
  attn_device_info *dev; /* ndev entries, selector filled in */
} attn_backend;

typedef struct attn_load_failure {
  char name[ATTN_SEL_NAME_MAX]; /* backend name from the file name (attn_<name>.so) */
  char path[1024];
  char reason[512];
} attn_load_failure;

/* A module file on the search path, dlopen'ed only when asked for. */
typedef struct attn_candidate {
  char name[ATTN_SEL_NAME_MAX]; /* the backend its file name stands for */
  char path[1024];
  int tried; /* loaded, or failed with a recorded reason */
} attn_candidate;

typedef struct attn_registry {
  int nbackends;
  attn_backend *backends; /* room for cap_backends: entries never move */
  int cap_backends;
  int nfailures;
  attn_load_failure *failures;
  int ncand;
  attn_candidate *cand; /* in search order */
} attn_registry;

/* The process-wide registry, its search path scanned on first use (a scan
 * that ran out of memory is retried on the next call: ATTN_ERR_NOMEM, *reg
 * NULL, not locked). On success the registry's lock is held: read it, load
 * modules into it with attn__registry_load, then attn__registry_unlock. */
ATTN_INTERNAL attn_status attn__registry_lock(attn_registry **reg);
ATTN_INTERNAL void attn__registry_unlock(void);
/* Load the modules not loaded yet whose file names stand for backend name
 * (then, if none gave it, the others), or every module when name is NULL.
 * ATTN_ERR_NOMEM only (the modules not loaded are tried again later); every
 * other problem is a recorded failure. */
ATTN_INTERNAL attn_status attn__registry_load(attn_registry *reg, const char *name);
/* Scan a search path into a fresh registry and load every module (for
 * tests). search: ':'-separated entries; NULL means the default search. */
ATTN_INTERNAL attn_status attn__registry_scan(const char *search, attn_registry *reg);
ATTN_INTERNAL void attn__registry_free(attn_registry *reg);
/* Is this slot present in a vtable of this struct_size? */
#define ATTN_VT_HAS(vt, slot)                                                             \
  ((vt)->struct_size >= offsetof(attn_backend_vtable, slot) + sizeof((vt)->slot) &&         \
   (vt)->slot != NULL)

/* ---- account.c: live device memory per device, shared by its contexts ------- */
typedef struct attn_mem_account attn_mem_account;
/* The account of the device info describes (backend name and index), created
 * on first use and never freed; NULL only when out of host memory. */
ATTN_INTERNAL attn_mem_account *attn__account_get(const attn_device_info *info);
/* Add bytes to the account, or refuse with ATTN_ERR_DEVICE_MEMORY naming the
 * request, the bytes in use and the device's global memory when that would
 * exceed it. A NULL account or an unknown global memory (0) refuses nothing. */
ATTN_INTERNAL attn_status attn__account_reserve(attn_mem_account *a, const attn_device_info *info,
                                                uint64_t bytes);
ATTN_INTERNAL void attn__account_release(attn_mem_account *a, uint64_t bytes);
/* Bytes in use on the device (tests). */
ATTN_INTERNAL uint64_t attn__account_used(const attn_mem_account *a);

/* ---- context.c ------------------------------------------------------------- */
typedef struct attn_storage attn_storage;
struct attn_context {
  const attn_backend *be;
  const attn_backend_vtable *vt;
  attn_backend_ctx *bctx;
  attn_device_info info;
  attn_mem_account *account; /* the device's, shared with the other contexts on it */
  attn_storage *storages; /* live storages, freed with the context */
  struct attn_mha *graphs; /* live graphs, freed with the context */
};
/* Called by attn_close before the backend context is closed: free every
 * graph/cache (graph.c) and every tensor and storage (tensor.c) still alive. */
ATTN_INTERNAL void attn__context_free_graphs(attn_context *ctx);
ATTN_INTERNAL void attn__context_free_tensors(attn_context *ctx);
/* Open a context on device index of a registry backend. */
ATTN_INTERNAL attn_status attn__context_open(const attn_backend *be, int index,
                                             attn_context **ctx);

/* ---- tensor.c -------------------------------------------------------------- */
struct attn_storage {
  attn_context *ctx;
  attn_buffer *buf;
  size_t bytes;
  int refs;
  attn_storage *prev, *next; /* in ctx->storages */
  attn_tensor *tensors;       /* live tensors on this storage, freed with the context */
};
struct attn_tensor {
  attn_storage *st;
  attn_dtype dtype;   /* of the elements; the storage's, shared by all its views */
  int ndim;
  int64_t shape[4];   /* shape[0..ndim-1] */
  int64_t strides[4]; /* in elements */
  int64_t offset;     /* in elements from the storage start */
  attn_tensor *tprev, *tnext; /* in st->tensors (NULL for graph-internal stack views) */
};
/* The tensor as a right-aligned 4-D backend view (leading dims 1, stride 0). */
ATTN_INTERNAL attn_view attn__tensor_view4(const attn_tensor *t);
/* Allocate a contiguous tensor (used for graph intermediates). */
ATTN_INTERNAL attn_status attn__tensor_alloc(attn_context *ctx, attn_dtype dtype, int ndim,
                                             const int64_t *shape, attn_tensor **t);
/* Is t a valid attn_dtype value? */
ATTN_INTERNAL int attn__dtype_valid(attn_dtype t);
/* Do the element ranges reachable through a and b share storage bytes? */
ATTN_INTERNAL int attn__tensors_overlap(const attn_tensor *a, const attn_tensor *b);
/* The same storage, offset, shape and strides (an in-place operand). */
ATTN_INTERNAL int attn__tensors_same_view(const attn_tensor *a, const attn_tensor *b);
/* Checked arithmetic: return 0 and set *r, or 1 on overflow. */
ATTN_INTERNAL int attn__mul_overflow(int64_t a, int64_t b, int64_t *r);

/* ---- backend.c: the one seam between the core and a module's vtable ---------
 * Every backend call goes through these: each keeps the module's message, or
 * writes one naming the backend and the slot when the module gave none. */
ATTN_INTERNAL attn_status attn__be_alloc(attn_context *ctx, size_t bytes, attn_buffer **buf);
ATTN_INTERNAL void attn__be_free(attn_context *ctx, attn_buffer *buf);
ATTN_INTERNAL attn_status attn__be_write(attn_context *ctx, attn_buffer *buf, size_t off,
                                         size_t bytes, const void *src);
ATTN_INTERNAL attn_status attn__be_read(attn_context *ctx, attn_buffer *buf, size_t off,
                                        size_t bytes, void *dst);
ATTN_INTERNAL attn_status attn__be_sync(attn_context *ctx);
/* Refuse features newer than the module's ABI minor, ask supports(), then
 * run. desc begins with {struct_size, features}. */
ATTN_INTERNAL attn_status attn__be_stage(attn_context *ctx, attn_stage stage, const void *desc);
/* The features word of the dtypes of n views (F16 / BF16 bits). */
ATTN_INTERNAL uint64_t attn__dtype_features(const attn_view *const *v, int n);
/* Copy a caller's growing struct (first member size_t struct_size) into dst
 * of dst_size bytes: a smaller one leaves the rest zero, a larger one must
 * have zeros past dst_size. name is the argument ("args"). */
ATTN_INTERNAL attn_status attn__copy_struct(void *dst, size_t dst_size, const void *src,
                                            const char *name, const char *init);

/* ---- sdpa.c ---------------------------------------------------------------- */
/* Validate args against the contract and build the backend descriptor. */
ATTN_INTERNAL attn_status attn__sdpa_prepare(attn_context *ctx, const attn_sdpa_args *a,
                                             attn_sdpa_desc *d);
/* Ask the backend's supports slot, then run. */
ATTN_INTERNAL attn_status attn__run_sdpa(attn_context *ctx, const attn_sdpa_desc *d);
ATTN_INTERNAL attn_status attn__run_linear(attn_context *ctx, const attn_linear_desc *d);
/* An output tensor gives every element its own place (no zero or overlapping
 * strides); else ATTN_ERR_INVALID_ARG naming `name`. */
ATTN_INTERNAL attn_status attn__check_output_strides(const attn_tensor *t, const char *name);

/* ---- rope.c: RoPE and RMSNorm (ABI 2.3 stages) ------------------------------ */
/* A checked RoPE config and the cos/sin table [rows, r/2] in use: computed by
 * the core from the rule (owned, grown as positions need) or the caller's. */
typedef struct attn_rope_plan {
  attn_rope_config cfg; /* defaults resolved */
  int64_t D, r;         /* head dim, rotary dim */
  attn_tensor *cos, *sin;
  int64_t rows;         /* the table covers positions [0, rows) */
  int64_t dyn_n;        /* DYNAMIC: the n the table was made for (0: M) */
  bool owned;
} attn_rope_plan;
/* Check cfg (named `name` in messages) for head dim D into *p. */
ATTN_INTERNAL attn_status attn__rope_plan_init(attn_context *ctx, const attn_rope_config *cfg,
                                               int64_t D, const char *name, attn_rope_plan *p);
/* Make the table cover positions [0, max_pos] for a call whose largest
 * position is max_pos (DYNAMIC: made for that call); -1: nothing to do. */
ATTN_INTERNAL attn_status attn__rope_plan_prepare(attn_context *ctx, attn_rope_plan *p,
                                                  int64_t max_pos);
ATTN_INTERNAL void attn__rope_plan_free(attn_rope_plan *p);
/* Every position >= 0 (else ATTN_ERR_INVALID_ARG naming name[i]); *max_pos the
 * largest (-1 for n = 0). */
ATTN_INTERNAL attn_status attn__check_positions(const int32_t *pos, int64_t n, const char *name,
                                                int64_t *max_pos);
/* Build and run the stages (views already checked; positions host [B*S]). */
ATTN_INTERNAL attn_status attn__run_rope(attn_context *ctx, const attn_rope_plan *p,
                                         const attn_view *x, const attn_view *y,
                                         const int32_t *positions);
ATTN_INTERNAL attn_status attn__run_rmsnorm(attn_context *ctx, const attn_view *x,
                                            const attn_view *w, const attn_view *y, float eps,
                                            bool offset);

#endif /* ATTN_INTERNAL_H */
