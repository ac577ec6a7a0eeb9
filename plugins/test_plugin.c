/* Test plugins for the loader suite: one small, correct host-memory backend,
 * built several times with -D variants that each break one rule of the ABI
 * (the ocl-icd "dummy ICD" approach: fake plugins from one source).
 *
 *   TP_NAME        the backend name (required, e.g. "tp_good")
 *   TP_BAD_ABI     abi_major 99: the core must refuse it, naming 99 and 2
 *   TP_ABI_1       a module of the 1.x ABI (abi 1.2): refused, naming 1.2, 2 and the file
 *   TP_ABI_2_0     built as if against the 2.0 SDK (abi_minor 0, no 16-bit storage):
 *                  the core must refuse f16/bf16 calls itself, before calling it
 *   TP_ABI_2_2     built as if against the 2.2 SDK (abi_minor 2): the core must
 *                  refuse the 2.3 stages (rope, rmsnorm) and bits itself
 *   TP_NO_BF16     an ABI 2.1 module whose linear does f16 but not bf16: its
 *                  supports() must refuse the bf16 bit by name
 *   TP_NO_ENTRY    the entry symbol has another name: refused
 *   TP_PROBE_ZERO  probe returns 0: loads, with no devices (not an error)
 *   TP_OPEN_FAIL   open fails with a message: attn_open reports it
 *   TP_ALLOC_FAIL  buffer_alloc fails with ATTN_ERR_DEVICE_MEMORY
 *   TP_NULL_SLOT   the required synchronize slot is NULL: refused
 *   TP_PROBE_FAIL  probe fails with a negative status (a driver that breaks
 *                  while enumerating): skipped with its reason
 *   TP_LOAD_ABORT  aborts when loaded (a constructor, run by dlopen): a module
 *                  that crashes at load must take down only what asks for it
 *
 * Without a variant it has two devices (0: a "cpu", 1: an "accelerator") so
 * selectors by index, type and name can be tested against real modules.
 * linear is implemented (naively, in double); sdpa is refused through
 * supports() with a reason. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "attn_plugin.h"

#ifndef TP_NAME
#error "define TP_NAME, e.g. -DTP_NAME='\"tp_good\"'"
#endif

static const attn_host *host;

#ifdef TP_LOAD_ABORT
__attribute__((constructor)) static void tp_crash_at_load(void) { abort(); }
#endif

/* Buffers live in a list on their context so close can free leftovers. */
struct attn_buffer {
  struct attn_buffer *prev, *next;
  size_t bytes;
  void *data;
};

struct attn_backend_ctx {
  int index;
  struct attn_buffer *buffers;
};

static attn_status tp_init(const attn_host *h) {
  host = h;
  return ATTN_OK;
}

static int tp_probe(void) {
#if defined(TP_PROBE_ZERO)
  return 0;
#elif defined(TP_PROBE_FAIL)
  return host->error(ATTN_ERR_BACKEND, "%s: the driver failed to enumerate its devices (test plugin)",
                     TP_NAME);
#else
  return 2;
#endif
}

static attn_status tp_device_info(int index, attn_device_info *info) {
  if (index < 0 || index >= tp_probe())
    return host->error(ATTN_ERR_INVALID_ARG, "%s: no device %d", TP_NAME, index);
  strcpy(info->name, index == 0 ? "Test Plugin Host CPU" : "Test Plugin Host Accelerator");
  strcpy(info->vendor, "libattn tests");
  strcpy(info->driver, "1.0");
  info->type = index == 0 ? ATTN_DEVICE_CPU : ATTN_DEVICE_ACCELERATOR;
  info->global_mem = 1u << 30;
  info->max_alloc = 1u << 28;
  info->compute_units = 1;
  return ATTN_OK;
}

static attn_status tp_open(int index, attn_backend_ctx **ctx) {
#ifdef TP_OPEN_FAIL
  (void)ctx;
  return host->error(ATTN_ERR_BACKEND, "%s: device %d refused to open (test plugin)", TP_NAME,
                     index);
#else
  attn_backend_ctx *c = calloc(1, sizeof *c);
  if (!c) return host->error(ATTN_ERR_NOMEM, "%s: out of host memory", TP_NAME);
  c->index = index;
  *ctx = c;
  return ATTN_OK;
#endif
}

static void tp_buffer_free(attn_backend_ctx *ctx, attn_buffer *buf) {
  if (!buf) return;
  if (buf->prev)
    buf->prev->next = buf->next;
  else
    ctx->buffers = buf->next;
  if (buf->next) buf->next->prev = buf->prev;
  free(buf->data);
  free(buf);
}

static void tp_close(attn_backend_ctx *ctx) {
  if (!ctx) return;
  while (ctx->buffers) tp_buffer_free(ctx, ctx->buffers);
  free(ctx);
}

static attn_status tp_buffer_alloc(attn_backend_ctx *ctx, size_t bytes, attn_buffer **buf) {
#ifdef TP_ALLOC_FAIL
  (void)ctx;
  (void)buf;
  return host->error(ATTN_ERR_DEVICE_MEMORY,
                     "%s: cannot allocate %zu bytes of device memory (test plugin)", TP_NAME,
                     bytes);
#else
  attn_buffer *b = calloc(1, sizeof *b);
  void *data = b ? malloc(bytes) : NULL;
  if (!data) {
    free(b);
    return host->error(ATTN_ERR_DEVICE_MEMORY, "%s: cannot allocate %zu bytes", TP_NAME, bytes);
  }
  b->bytes = bytes;
  b->data = data;
  b->next = ctx->buffers;
  if (ctx->buffers) ctx->buffers->prev = b;
  ctx->buffers = b;
  *buf = b;
  return ATTN_OK;
#endif
}

static attn_status check_range(const attn_buffer *buf, size_t offset, size_t bytes) {
  if (offset > buf->bytes || bytes > buf->bytes - offset)
    return host->error(ATTN_ERR_INVALID_ARG, "%s: %zu bytes at offset %zu exceed a buffer of %zu",
                       TP_NAME, bytes, offset, buf->bytes);
  return ATTN_OK;
}

static attn_status tp_buffer_write(attn_backend_ctx *ctx, attn_buffer *buf, size_t offset,
                                   size_t bytes, const void *src) {
  attn_status st = check_range(buf, offset, bytes);
  if (st == ATTN_OK && bytes) memcpy((char *)buf->data + offset, src, bytes);
  return st;
}

static attn_status tp_buffer_read(attn_backend_ctx *ctx, attn_buffer *buf, size_t offset,
                                  size_t bytes, void *dst) {
  attn_status st = check_range(buf, offset, bytes);
  if (st == ATTN_OK && bytes) memcpy(dst, (const char *)buf->data + offset, bytes);
  return st;
}

/* The linear features this module implements; every other bit is refused. */
#if defined(TP_NO_BF16)
#define TP_LINEAR_FEATURES (ATTN_FEAT_BIAS | ATTN_FEAT_F16)
#else
#define TP_LINEAR_FEATURES (ATTN_FEAT_BIAS | ATTN_FEAT_F16 | ATTN_FEAT_BF16)
#endif

static attn_status tp_supports(attn_backend_ctx *ctx, attn_stage stage, const void *desc,
                               char *why, size_t why_len) {
  if (stage == ATTN_STAGE_LINEAR) {
    const attn_linear_desc *d = desc;
    const int bit = attn_feature_unknown(d->features, TP_LINEAR_FEATURES);
    if (bit < 0) return ATTN_OK;
    char buf[32];
    snprintf(why, why_len, "%s: linear cannot do %s", TP_NAME,
             attn_feature_name(bit, buf, sizeof buf));
    return ATTN_ERR_UNSUPPORTED;
  }
  snprintf(why, why_len, "the test plugin implements linear only");
  return ATTN_ERR_UNSUPPORTED;
}

static int64_t at_idx(const attn_view *v, int64_t i1, int64_t i2, int64_t i3) {
  return v->offset + i1 * v->strides[1] + i2 * v->strides[2] + i3 * v->strides[3];
}
static float at(const attn_view *v, int64_t i1, int64_t i2, int64_t i3) {
  return attn_load_elem(v->buf->data, v->dtype, at_idx(v, i1, i2, i3));
}

/* Reads the descriptor only as far as its sender's struct_size reaches: a
 * shorter (older core's) descriptor means the options past it are unused. */
static attn_status tp_linear(const attn_linear_desc *d) {
  int64_t B = d->x.shape[1], M = d->x.shape[2], K = d->x.shape[3], N = d->w.shape[2];
  const int bias = ATTN_DESC_HAS(d, bias) && d->bias.buf;
  for (int64_t b = 0; b < B; b++)
    for (int64_t m = 0; m < M; m++)
      for (int64_t n = 0; n < N; n++) {
        double acc = bias ? at(&d->bias, 0, 0, n) : 0.0;
        for (int64_t k = 0; k < K; k++) acc += (double)at(&d->x, b, m, k) * at(&d->w, 0, n, k);
        attn_store_elem(d->y.buf->data, d->y.dtype, at_idx(&d->y, b, m, n), (float)acc);
      }
  return ATTN_OK;
}

static attn_status tp_run(attn_backend_ctx *ctx, attn_stage stage, const void *desc) {
  (void)ctx;
  if (stage == ATTN_STAGE_LINEAR) return tp_linear(desc);
  return host->error(ATTN_ERR_UNSUPPORTED, "%s: only linear is implemented by the test plugin",
                     TP_NAME);
}

#ifndef TP_NULL_SLOT
static attn_status tp_synchronize(attn_backend_ctx *ctx) { return ATTN_OK; }
#endif

static const attn_backend_vtable vtable = {
#if defined(TP_BAD_ABI)
    .abi_major = 99,
    .abi_minor = ATTN_ABI_MINOR,
#elif defined(TP_ABI_1)
    .abi_major = 1,
    .abi_minor = 2,
#elif defined(TP_ABI_2_0)
    .abi_major = ATTN_ABI_MAJOR,
    .abi_minor = 0,
#elif defined(TP_ABI_2_2)
    .abi_major = ATTN_ABI_MAJOR,
    .abi_minor = 2,
#else
    .abi_major = ATTN_ABI_MAJOR,
    .abi_minor = ATTN_ABI_MINOR,
#endif
    .struct_size = sizeof(attn_backend_vtable),
    .name = TP_NAME,
    .init = tp_init,
    .probe = tp_probe,
    .device_info = tp_device_info,
    .open = tp_open,
    .close = tp_close,
    .buffer_alloc = tp_buffer_alloc,
    .buffer_free = tp_buffer_free,
    .buffer_write = tp_buffer_write,
    .buffer_read = tp_buffer_read,
    .supports = tp_supports,
    .run = tp_run,
#ifdef TP_NULL_SLOT
    .synchronize = NULL,
#else
    .synchronize = tp_synchronize,
#endif
};

#ifdef TP_NO_ENTRY
/* Misspelled on purpose: the loader looks for attn_backend_entry. */
ATTN_PLUGIN_EXPORT const attn_backend_vtable *attn_backend_entry_misspelled(void);
ATTN_PLUGIN_EXPORT const attn_backend_vtable *attn_backend_entry_misspelled(void) {
  return &vtable;
}
#else
ATTN_PLUGIN_EXPORT const attn_backend_vtable *attn_backend_entry(void);
ATTN_PLUGIN_EXPORT const attn_backend_vtable *attn_backend_entry(void) { return &vtable; }
#endif
