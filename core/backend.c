/* The seam between the core and a backend module: every call into a vtable
 * goes through here, so that error messages, the ABI feature check and the
 * stage dispatch are written once. */
#include "internal.h"

#include <string.h>

/* A slot failed: keep the module's message, or name the backend and slot. */
static attn_status failed(const attn_context *ctx, attn_status s, const char *slot) {
  if (s && attn_last_error()[0] == '\0')
    return attn__error(s, "backend %s failed in %s (%s)", ctx->info.backend, slot,
                       attn_status_str(s));
  return s;
}

attn_status attn__be_alloc(attn_context *ctx, size_t bytes, attn_buffer **buf) {
  return failed(ctx, ctx->vt->buffer_alloc(ctx->bctx, bytes, buf), "buffer_alloc");
}

void attn__be_free(attn_context *ctx, attn_buffer *buf) { ctx->vt->buffer_free(ctx->bctx, buf); }

attn_status attn__be_write(attn_context *ctx, attn_buffer *buf, size_t off, size_t bytes,
                           const void *src) {
  return failed(ctx, ctx->vt->buffer_write(ctx->bctx, buf, off, bytes, src), "buffer_write");
}

attn_status attn__be_read(attn_context *ctx, attn_buffer *buf, size_t off, size_t bytes,
                          void *dst) {
  return failed(ctx, ctx->vt->buffer_read(ctx->bctx, buf, off, bytes, dst), "buffer_read");
}

attn_status attn__be_sync(attn_context *ctx) {
  return failed(ctx, ctx->vt->synchronize(ctx->bctx), "synchronize");
}

static const char *stage_name(attn_stage stage) {
  return stage == ATTN_STAGE_SDPA     ? "sdpa"
         : stage == ATTN_STAGE_LINEAR ? "linear"
         : stage == ATTN_STAGE_MERGE  ? "merge"
         : stage == ATTN_STAGE_ROPE   ? "rope"
         : stage == ATTN_STAGE_RMSNORM ? "rmsnorm"
                                      : "stage";
}

/* Every stage descriptor begins like this. */
typedef struct desc_header {
  size_t struct_size;
  uint64_t features;
} desc_header;

attn_status attn__be_stage(attn_context *ctx, attn_stage stage, const void *desc) {
  const desc_header *h = desc;
  const char *name = stage_name(stage);
  /* Nor a stage newer than its ABI (merge came with 2.2, rope and rmsnorm
   * with 2.3). */
  if (attn_stage_minor(stage) > ctx->vt->abi_minor)
    return attn__error(ATTN_ERR_UNSUPPORTED, "backend %s (ABI %u.%u) cannot do %s (ABI 2.%u)",
                       ctx->info.backend, (unsigned)ctx->vt->abi_major,
                       (unsigned)ctx->vt->abi_minor, name, attn_stage_minor(stage));
  /* A module is never sent a feature newer than its ABI: it could not know
   * to refuse it and would compute something else. */
  for (uint64_t f = h->features; f; f &= f - 1) {
    const int bit = __builtin_ctzll(f);
    if (attn_feature_minor(bit) > ctx->vt->abi_minor) {
      char buf[32];
      return attn__error(ATTN_ERR_UNSUPPORTED, "backend %s (ABI %u.%u) cannot do %s",
                         ctx->info.backend, (unsigned)ctx->vt->abi_major,
                         (unsigned)ctx->vt->abi_minor, attn_feature_name(bit, buf, sizeof buf));
    }
  }
  char why[512] = "";
  attn_status s = ctx->vt->supports(ctx->bctx, stage, desc, why, sizeof why);
  why[sizeof why - 1] = '\0';
  if (s == ATTN_ERR_UNSUPPORTED && (why[0] || attn_last_error()[0] == '\0'))
    return attn__error(ATTN_ERR_UNSUPPORTED, "backend %s (%s) cannot run this %s: %s",
                       ctx->info.backend, ctx->info.selector, name,
                       why[0] ? why : "no reason given");
  if (s) return failed(ctx, s, "supports");
  return failed(ctx, ctx->vt->run(ctx->bctx, stage, desc), name);
}

uint64_t attn__dtype_features(const attn_view *const *v, int n) {
  uint64_t f = 0;
  for (int i = 0; i < n; i++) {
    if (!v[i] || !v[i]->buf) continue;
    if (v[i]->dtype == ATTN_F16) f |= ATTN_FEAT_F16;
    if (v[i]->dtype == ATTN_BF16) f |= ATTN_FEAT_BF16;
  }
  return f;
}

attn_status attn__copy_struct(void *dst, size_t dst_size, const void *src, const char *name,
                              const char *init) {
  size_t n;
  memcpy(&n, src, sizeof n);
  if (n < sizeof(size_t))
    return attn__error(ATTN_ERR_INVALID_ARG,
                       "%s.struct_size: %zu (initialise the struct with %s)", name, n, init);
  memset(dst, 0, dst_size);
  if (n > dst_size) {
    /* A newer header's struct: the fields this library does not know must be
     * unused (zero), else their meaning would be silently dropped. */
    const unsigned char *extra = (const unsigned char *)src + dst_size;
    for (size_t i = 0; i < n - dst_size; i++)
      if (extra[i])
        return attn__error(ATTN_ERR_INVALID_ARG,
                           "%s.struct_size: %zu > %zu and byte %zu is set: a field this "
                           "library (%d.%d) does not know",
                           name, n, dst_size, dst_size + i, ATTN_VERSION_MAJOR,
                           ATTN_VERSION_MINOR);
    n = dst_size;
  }
  memcpy(dst, src, n);
  return ATTN_OK;
}
