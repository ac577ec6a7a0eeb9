/* Template backend: copy this file to start a libattn backend module.
 *
 * A backend is a shared object named attn_<name>.so that exports one symbol,
 * attn_backend_entry, returning a vtable (plugins/attn_plugin.h documents
 * every slot). libattn finds it through $ATTN_BACKEND_PATH or its module
 * directory, dlopens it with RTLD_NOW | RTLD_LOCAL, checks the ABI version,
 * calls init once, then probe to count devices.
 *
 * This template is the smallest backend that is correct:
 *   - one device, of type CPU, whose "device memory" is ordinary host memory;
 *   - a naive but correct linear stage (accumulates in double);
 *   - sdpa refused through supports() with a reason, so libattn reports
 *     ATTN_ERR_UNSUPPORTED instead of computing garbage.
 * To make it yours: rename TEMPLATE_NAME (and the file: attn_<name>.so), put
 * your driver calls where the comments say, and add sdpa to supports() and
 * run().
 *
 * Build it as a libtool module, never linked into libattn:
 *   attn_mine_la_LDFLAGS = -module -avoid-version -no-undefined -shared
 *
 * Rules every slot follows (see attn_plugin.h):
 *   - report failures with host->error(status, "...") and return the status;
 *     never print, exit or abort;
 *   - the core has validated shapes, strides and bounds before calling a
 *     stage; check only what your device itself can't do (in supports);
 *   - a context is used by one thread at a time, but different contexts may
 *     run on different threads at once: lock any module-global state.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "attn_plugin.h"

/* The name used in selectors ("template", "template:0"): [a-z0-9_]+. */
#define TEMPLATE_NAME "template"

/* The host services, set by init. The core guarantees they outlive us. */
static const attn_host *host;

/* Your buffer type. The core only ever holds pointers to it. Here, a block
 * of host memory; a GPU backend would keep e.g. a cl_mem. The buffers of a
 * context are kept in a list because close must free the ones still alive. */
struct attn_buffer {
  struct attn_buffer *prev, *next;
  size_t bytes;
  void *data;
};

/* Your per-context state: a queue, a device handle, caches... */
struct attn_backend_ctx {
  struct attn_buffer *buffers;
};

/* Called once, right after loading. Initialise module-global state here;
 * do not touch devices yet if that is slow (probe should stay cheap). */
static attn_status tpl_init(const attn_host *h) {
  host = h;
  return ATTN_OK;
}

/* How many devices can this module use on this machine? 0 is a normal
 * answer ("no driver here"), not an error; negative means the module is
 * broken and the core records it as a failed module. */
static int tpl_probe(void) { return 1; }

/* Describe device `index`. The core fills info->selector, ->backend and
 * ->index itself; 0 means "unknown" for the numbers. */
static attn_status tpl_device_info(int index, attn_device_info *info) {
  if (index != 0) return host->error(ATTN_ERR_INVALID_ARG, "template: no device %d", index);
  strcpy(info->name, "Template host CPU");
  strcpy(info->vendor, "libattn");
  strcpy(info->driver, "template 1.0");
  info->type = ATTN_DEVICE_CPU;
  return ATTN_OK;
}

/* Open a context on a device. Everything it allocates is released in close. */
static attn_status tpl_open(int index, attn_backend_ctx **ctx) {
  attn_backend_ctx *c = calloc(1, sizeof *c);
  if (!c) return host->error(ATTN_ERR_NOMEM, "template: out of host memory");
  *ctx = c;
  return ATTN_OK;
}

static void tpl_buffer_free(attn_backend_ctx *ctx, attn_buffer *buf) {
  if (!buf) return; /* NULL is a no-op, as for free() */
  /* A device backend waits here for queued work that uses buf. */
  if (buf->prev)
    buf->prev->next = buf->next;
  else
    ctx->buffers = buf->next;
  if (buf->next) buf->next->prev = buf->prev;
  free(buf->data);
  free(buf);
}

/* Release the context and every buffer still allocated on it. */
static void tpl_close(attn_backend_ctx *ctx) {
  if (!ctx) return;
  while (ctx->buffers) tpl_buffer_free(ctx, ctx->buffers);
  free(ctx);
}

/* Device memory. Report exhaustion as ATTN_ERR_DEVICE_MEMORY so callers
 * can tell it from host memory (ATTN_ERR_NOMEM). */
static attn_status tpl_buffer_alloc(attn_backend_ctx *ctx, size_t bytes, attn_buffer **buf) {
  attn_buffer *b = calloc(1, sizeof *b);
  void *data = b ? malloc(bytes) : NULL;
  if (!data) {
    free(b);
    return host->error(ATTN_ERR_DEVICE_MEMORY, "template: cannot allocate %zu bytes", bytes);
  }
  b->bytes = bytes;
  b->data = data;
  b->next = ctx->buffers;
  if (ctx->buffers) ctx->buffers->prev = b;
  ctx->buffers = b;
  *buf = b;
  return ATTN_OK;
}

/* The core keeps transfers inside the buffer; checking again is cheap
 * insurance against a core bug writing past the end. */
static attn_status tpl_check_range(const attn_buffer *buf, size_t offset, size_t bytes) {
  if (offset > buf->bytes || bytes > buf->bytes - offset)
    return host->error(ATTN_ERR_INVALID_ARG,
                       "template: %zu bytes at offset %zu exceed a buffer of %zu", bytes, offset,
                       buf->bytes);
  return ATTN_OK;
}

/* Blocking copies: when these return, src may be reused / dst is filled. */
static attn_status tpl_buffer_write(attn_backend_ctx *ctx, attn_buffer *buf, size_t offset,
                                    size_t bytes, const void *src) {
  attn_status st = tpl_check_range(buf, offset, bytes);
  if (st == ATTN_OK && bytes) memcpy((char *)buf->data + offset, src, bytes);
  return st;
}

static attn_status tpl_buffer_read(attn_backend_ctx *ctx, attn_buffer *buf, size_t offset,
                                   size_t bytes, void *dst) {
  attn_status st = tpl_check_range(buf, offset, bytes);
  if (st == ATTN_OK && bytes) memcpy(dst, (const char *)buf->data + offset, bytes);
  return st;
}

/* The features this module implements. Anything else, including bits added
 * by later ABI minors that this file has never heard of, is refused: a
 * backend that ignored an option would silently compute something else. */
#define TPL_LINEAR_FEATURES (ATTN_FEAT_BIAS | ATTN_FEAT_F16 | ATTN_FEAT_BF16)

/* Capability query: the core asks before every stage. Say no, with a reason
 * a user can act on, for anything run() below can't do right. */
static attn_status tpl_supports(attn_backend_ctx *ctx, attn_stage stage, const void *desc,
                                char *why, size_t why_len) {
  if (stage == ATTN_STAGE_LINEAR) {
    const attn_linear_desc *d = desc;
    const int bit = attn_feature_unknown(d->features, TPL_LINEAR_FEATURES);
    if (bit < 0) return ATTN_OK;
    char buf[32];
    snprintf(why, why_len, "template: linear cannot do %s",
             attn_feature_name(bit, buf, sizeof buf));
    return ATTN_ERR_UNSUPPORTED;
  }
  snprintf(why, why_len, "the template backend does not implement %s",
           stage == ATTN_STAGE_SDPA ? "sdpa" : "this stage");
  return ATTN_ERR_UNSUPPORTED;
}

/* Element (0, i1, i2, i3) of a strided view (see attn_view), of any dtype:
 * the SDK's attn_load_elem / attn_store_elem convert (to 16 bits they round
 * to nearest even, as the numerics contract requires). */
static int64_t tpl_idx(const attn_view *v, int64_t i1, int64_t i2, int64_t i3) {
  return v->offset + i1 * v->strides[1] + i2 * v->strides[2] + i3 * v->strides[3];
}
static float tpl_at(const attn_view *v, int64_t i1, int64_t i2, int64_t i3) {
  return attn_load_elem(v->buf->data, v->dtype, tpl_idx(v, i1, i2, i3));
}

/* y[b, m, n] = sum_k x[b, m, k] * w[n, k] + bias[n]   (nn.Linear).
 * x [1,B,M,K], w [1,1,N,K], bias [1,1,1,N] or absent, y [1,B,M,N]. A device
 * backend enqueues a kernel here and returns; this one computes at once. */
static attn_status tpl_linear(const attn_linear_desc *d) {
  int64_t B = d->x.shape[1], M = d->x.shape[2], K = d->x.shape[3], N = d->w.shape[2];
  for (int64_t b = 0; b < B; b++)
    for (int64_t m = 0; m < M; m++)
      for (int64_t n = 0; n < N; n++) {
        double acc = d->bias.buf ? tpl_at(&d->bias, 0, 0, n) : 0.0;
        for (int64_t k = 0; k < K; k++)
          acc += (double)tpl_at(&d->x, b, m, k) * tpl_at(&d->w, 0, n, k);
        attn_store_elem(d->y.buf->data, d->y.dtype, tpl_idx(&d->y, b, m, n), (float)acc);
      }
  return ATTN_OK;
}

/* One slot runs every stage: the core calls it only after supports() said
 * yes to the same descriptor. A new stage is a new case here. */
static attn_status tpl_run(attn_backend_ctx *ctx, attn_stage stage, const void *desc) {
  if (stage == ATTN_STAGE_LINEAR) return tpl_linear(desc);
  return host->error(ATTN_ERR_UNSUPPORTED, "template: stage %d is not implemented", (int)stage);
}

/* Wait for queued work and report errors that happened in it. Work here is
 * synchronous, so there is nothing to wait for. */
static attn_status tpl_synchronize(attn_backend_ctx *ctx) { return ATTN_OK; }

/* The vtable: static storage, header first. struct_size lets a newer core
 * know which optional slots this module was built with. */
static const attn_backend_vtable tpl_vtable = {
    .abi_major = ATTN_ABI_MAJOR,
    .abi_minor = ATTN_ABI_MINOR,
    .struct_size = sizeof(attn_backend_vtable),
    .name = TEMPLATE_NAME,
    .init = tpl_init,
    .probe = tpl_probe,
    .device_info = tpl_device_info,
    .open = tpl_open,
    .close = tpl_close,
    .buffer_alloc = tpl_buffer_alloc,
    .buffer_free = tpl_buffer_free,
    .buffer_write = tpl_buffer_write,
    .buffer_read = tpl_buffer_read,
    .supports = tpl_supports,
    .run = tpl_run,
    .synchronize = tpl_synchronize,
};

/* The one exported symbol (the module is built with -fvisibility=hidden). */
ATTN_PLUGIN_EXPORT const attn_backend_vtable *attn_backend_entry(void);
ATTN_PLUGIN_EXPORT const attn_backend_vtable *attn_backend_entry(void) { return &tpl_vtable; }
