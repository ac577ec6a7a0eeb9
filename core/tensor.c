/* Tensors: typed strided views of refcounted device storage.
 *
 * A storage is one backend buffer; every tensor (the one attn_tensor_create
 * made and every view of it) holds a reference, so a view may outlive its
 * base. Live storages hang off their context and live tensors off their
 * storage, so attn_close can free whatever the caller left behind.
 *
 * Every element and byte count is computed with checked arithmetic before
 * anything is allocated. */
#include "internal.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

int attn__mul_overflow(int64_t a, int64_t b, int64_t *r) {
  return __builtin_mul_overflow(a, b, r) ? 1 : 0;
}

static int add_overflow(int64_t a, int64_t b, int64_t *r) {
  return __builtin_add_overflow(a, b, r) ? 1 : 0;
}

/* Checks a rank and shape given by a caller. */
static attn_status check_shape(int ndim, const int64_t *shape) {
  if (ndim < 1 || ndim > ATTN_MAX_DIMS)
    return attn__error(ATTN_ERR_INVALID_ARG, "ndim: %d not in 1..%d", ndim, ATTN_MAX_DIMS);
  if (!shape) return attn__error(ATTN_ERR_INVALID_ARG, "shape: NULL");
  for (int i = 0; i < ndim; i++)
    if (shape[i] < 1)
      return attn__error(ATTN_ERR_INVALID_ARG, "shape[%d]: %lld < 1", i, (long long)shape[i]);
  return ATTN_OK;
}

/* numel and byte count of a contiguous tensor, refusing overflow of int64 or
 * size_t and requests above the device's largest allocation. */
static attn_status contiguous_bytes(const attn_context *ctx, attn_dtype dtype, int ndim,
                                    const int64_t *shape, size_t *bytes) {
  char s[128];
  int64_t n = 1, b;
  for (int i = 0; i < ndim; i++)
    if (attn__mul_overflow(n, shape[i], &n))
      return attn__error(ATTN_ERR_OVERFLOW, "shape: %s: element count overflows",
                         attn__fmt_dims(s, sizeof s, ndim, shape));
  if (attn__mul_overflow(n, (int64_t)attn_dtype_size(dtype), &b) || (uint64_t)b > SIZE_MAX)
    return attn__error(ATTN_ERR_OVERFLOW, "shape: %s: byte count overflows",
                       attn__fmt_dims(s, sizeof s, ndim, shape));
  if (ctx->info.max_alloc && (uint64_t)b > ctx->info.max_alloc)
    return attn__error(ATTN_ERR_DEVICE_MEMORY,
                       "shape: %s: %lld bytes exceed the device's largest allocation "
                       "(%llu bytes on %s)",
                       attn__fmt_dims(s, sizeof s, ndim, shape), (long long)b,
                       (unsigned long long)ctx->info.max_alloc, ctx->info.selector);
  *bytes = (size_t)b;
  return ATTN_OK;
}

static void link_tensor(attn_tensor *t) {
  attn_storage *st = t->st;
  t->tprev = NULL;
  t->tnext = st->tensors;
  if (st->tensors) st->tensors->tprev = t;
  st->tensors = t;
  st->refs++;
}

static void storage_release(attn_storage *st) {
  if (--st->refs > 0) return;
  attn_context *ctx = st->ctx;
  if (st->prev) st->prev->next = st->next;
  else ctx->storages = st->next;
  if (st->next) st->next->prev = st->prev;
  attn__be_free(ctx, st->buf);
  attn__account_release(ctx->account, st->bytes);
  free(st);
}

attn_status attn__tensor_alloc(attn_context *ctx, attn_dtype dtype, int ndim,
                               const int64_t *shape, attn_tensor **out) {
  size_t bytes = 0;
  if (!attn__dtype_valid(dtype))
    return attn__error(ATTN_ERR_INVALID_ARG, "dtype: %d is not an attn_dtype", (int)dtype);
  attn_status s = check_shape(ndim, shape);
  if (s) return s;
  if ((s = contiguous_bytes(ctx, dtype, ndim, shape, &bytes))) return s;

  attn_storage *st = calloc(1, sizeof *st);
  attn_tensor *t = calloc(1, sizeof *t);
  if (!st || !t) {
    free(st);
    free(t);
    return attn__error(ATTN_ERR_NOMEM, "out of host memory for a tensor");
  }
  /* The device's account first: the contexts on the device together may
   * not hold more than its global memory, whatever the driver would accept. */
  if ((s = attn__account_reserve(ctx->account, &ctx->info, bytes))) {
    free(st);
    free(t);
    return s;
  }
  s = attn__be_alloc(ctx, bytes, &st->buf);
  if (s) {
    attn__account_release(ctx->account, bytes);
    free(st);
    free(t);
    return s;
  }
  st->ctx = ctx;
  st->bytes = bytes;
  st->next = ctx->storages;
  if (ctx->storages) ctx->storages->prev = st;
  ctx->storages = st;

  t->st = st;
  t->dtype = dtype;
  t->ndim = ndim;
  int64_t stride = 1;
  for (int i = ndim - 1; i >= 0; i--) {
    t->shape[i] = shape[i];
    t->strides[i] = stride;
    stride *= shape[i]; /* cannot overflow: the byte count did not */
  }
  link_tensor(t);
  *out = t;
  return ATTN_OK;
}

attn_status attn_tensor_create(attn_context *ctx, int ndim, const int64_t *shape,
                               attn_tensor **t) {
  ATTN_ENTER("attn_tensor_create");
  if (t) *t = NULL; /* first, so that no failure leaves a stale handle behind */
  if (!ctx) return attn__error(ATTN_ERR_INVALID_ARG, "ctx: NULL");
  if (!t) return attn__error(ATTN_ERR_INVALID_ARG, "t: NULL");
  return attn__tensor_alloc(ctx, ATTN_F32, ndim, shape, t);
}

attn_status attn_tensor_create_typed(attn_context *ctx, attn_dtype dtype, int ndim,
                                     const int64_t *shape, attn_tensor **t) {
  ATTN_ENTER("attn_tensor_create_typed");
  if (t) *t = NULL;
  if (!ctx) return attn__error(ATTN_ERR_INVALID_ARG, "ctx: NULL");
  if (!t) return attn__error(ATTN_ERR_INVALID_ARG, "t: NULL");
  return attn__tensor_alloc(ctx, dtype, ndim, shape, t);
}

attn_dtype attn_tensor_dtype(const attn_tensor *t) { return t ? t->dtype : ATTN_F32; }

/* Largest element offset a strided view reaches (strides >= 0), checked. */
static int view_last(int64_t offset, int ndim, const int64_t *shape, const int64_t *strides,
                     int64_t *last) {
  int64_t r = offset, term;
  for (int i = 0; i < ndim; i++) {
    if (attn__mul_overflow(shape[i] - 1, strides[i], &term) || add_overflow(r, term, &r))
      return 1;
  }
  *last = r;
  return 0;
}

attn_status attn_tensor_view(const attn_tensor *base, int64_t offset, int ndim,
                             const int64_t *shape, const int64_t *strides, attn_tensor **view) {
  ATTN_ENTER("attn_tensor_view");
  if (view) *view = NULL; /* first, so that no failure leaves a stale handle behind */
  if (!base) return attn__error(ATTN_ERR_INVALID_ARG, "base: NULL");
  if (!view) return attn__error(ATTN_ERR_INVALID_ARG, "view: NULL");
  attn_status s = check_shape(ndim, shape);
  if (s) return s;
  if (!strides) return attn__error(ATTN_ERR_INVALID_ARG, "strides: NULL");
  if (offset < 0)
    return attn__error(ATTN_ERR_INVALID_ARG, "offset: %lld < 0", (long long)offset);
  /* Checked before the extent so that an offset past the storage is named
   * as such, not as an overflowing or too long shape. */
  const size_t esize = attn_dtype_size(base->dtype);
  const int64_t nel = (int64_t)(base->st->bytes / esize);
  if (offset >= nel)
    return attn__error(ATTN_ERR_SHAPE, "offset: %lld is past the storage's %lld elements",
                       (long long)offset, (long long)nel);
  for (int i = 0; i < ndim; i++)
    if (strides[i] < 0)
      return attn__error(ATTN_ERR_INVALID_ARG, "strides[%d]: %lld < 0", i,
                         (long long)strides[i]);
  /* Even a view that broadcasts (stride 0) must have a host-sized numel:
   * write/read move numel floats. */
  int64_t numel = 1;
  for (int i = 0; i < ndim; i++)
    if (attn__mul_overflow(numel, shape[i], &numel))
      return attn__error(ATTN_ERR_OVERFLOW, "shape: element count overflows");
  if (attn__mul_overflow(numel, (int64_t)sizeof(float), &numel) || (uint64_t)numel > SIZE_MAX)
    return attn__error(ATTN_ERR_OVERFLOW, "shape: byte count overflows");
  int64_t last;
  if (view_last(offset, ndim, shape, strides, &last))
    return attn__error(ATTN_ERR_OVERFLOW, "strides: the view's extent overflows");
  if (last >= nel)
    return attn__error(ATTN_ERR_SHAPE,
                       "shape: the view reaches element %lld but the storage has %lld",
                       (long long)last, (long long)nel);
  attn_tensor *t = calloc(1, sizeof *t);
  if (!t) return attn__error(ATTN_ERR_NOMEM, "out of host memory for a view");
  t->st = base->st;
  t->dtype = base->dtype;
  t->ndim = ndim;
  t->offset = offset;
  for (int i = 0; i < ndim; i++) {
    t->shape[i] = shape[i];
    t->strides[i] = strides[i];
  }
  link_tensor(t);
  *view = t;
  return ATTN_OK;
}

void attn_tensor_free(attn_tensor *t) {
  if (!t) return;
  attn_storage *st = t->st;
  if (t->tprev) t->tprev->tnext = t->tnext;
  else st->tensors = t->tnext;
  if (t->tnext) t->tnext->tprev = t->tprev;
  free(t);
  storage_release(st);
}

void attn__context_free_tensors(attn_context *ctx) {
  while (ctx->storages) {
    attn_storage *st = ctx->storages;
    /* Each linked tensor holds one reference, so freeing the last one
     * releases the storage and unlinks it from ctx->storages. */
    if (st->tensors) {
      attn_tensor_free(st->tensors);
    } else { /* no tensor left yet still listed: never happens, never loop */
      st->refs = 1;
      storage_release(st);
    }
  }
}

int attn_tensor_ndim(const attn_tensor *t) { return t ? t->ndim : 0; }

void attn_tensor_shape(const attn_tensor *t, int64_t *shape, int64_t *strides) {
  if (!t) return;
  for (int i = 0; i < t->ndim; i++) {
    if (shape) shape[i] = t->shape[i];
    if (strides) strides[i] = t->strides[i];
  }
}

int64_t attn_tensor_numel(const attn_tensor *t) {
  if (!t) return 0;
  int64_t n = 1;
  for (int i = 0; i < t->ndim; i++) n *= t->shape[i]; /* bounded by a valid view */
  return n;
}

attn_view attn__tensor_view4(const attn_tensor *t) {
  attn_view v;
  memset(&v, 0, sizeof v);
  v.buf = t->st->buf;
  v.offset = t->offset;
  v.dtype = t->dtype;
  int lead = 4 - t->ndim;
  for (int i = 0; i < 4; i++) {
    if (i < lead) {
      v.shape[i] = 1;
      v.strides[i] = 0;
    } else {
      v.shape[i] = t->shape[i - lead];
      v.strides[i] = t->strides[i - lead];
    }
  }
  return v;
}

int attn__tensors_overlap(const attn_tensor *a, const attn_tensor *b) {
  /* Conservative: compare the element spans. Interleaved views of one
   * buffer count as overlapping, which only refuses exotic layouts. */
  if (!a || !b || a->st != b->st) return 0;
  int64_t alast = 0, blast = 0;
  view_last(a->offset, a->ndim, a->shape, a->strides, &alast); /* checked at creation */
  view_last(b->offset, b->ndim, b->shape, b->strides, &blast);
  return a->offset <= blast && b->offset <= alast;
}

/* Are the strides those of a row-major contiguous tensor (size-1 dims aside)? */
static int is_contiguous(const attn_tensor *t) {
  int64_t want = 1;
  for (int i = t->ndim - 1; i >= 0; i--) {
    if (t->shape[i] != 1 && t->strides[i] != want) return 0;
    want *= t->shape[i];
  }
  return 1;
}

/* Scatter host elements (row-major in the logical shape) into span (the
 * view's bytes from its first element), or gather span into host; es bytes
 * per element. */
static void scatter_gather(const attn_tensor *t, size_t es, char *host, char *span,
                           int to_span) {
  int64_t sh[4], st[4];
  attn_view v = attn__tensor_view4(t);
  memcpy(sh, v.shape, sizeof sh);
  memcpy(st, v.strides, sizeof st);
  size_t h = 0;
  for (int64_t i0 = 0; i0 < sh[0]; i0++)
    for (int64_t i1 = 0; i1 < sh[1]; i1++)
      for (int64_t i2 = 0; i2 < sh[2]; i2++)
        for (int64_t i3 = 0; i3 < sh[3]; i3++, h++) {
          int64_t e = i0 * st[0] + i1 * st[1] + i2 * st[2] + i3 * st[3];
          if (to_span) memcpy(span + (size_t)e * es, host + h * es, es);
          else memcpy(host + h * es, span + (size_t)e * es, es);
        }
}

static attn_status check_io(const attn_tensor *t, const void *p, const char *pname,
                            size_t count) {
  if (!t) return attn__error(ATTN_ERR_INVALID_ARG, "t: NULL");
  if (!p) return attn__error(ATTN_ERR_INVALID_ARG, "%s: NULL", pname);
  int64_t n = attn_tensor_numel(t);
  if ((uint64_t)n != (uint64_t)count)
    return attn__error(ATTN_ERR_INVALID_ARG, "count: %zu != numel %lld", count, (long long)n);
  return ATTN_OK;
}

/* The elements from the view's first element to its last (a valid view's
 * span lies inside its storage, so this cannot overflow). */
static size_t span_elems(const attn_tensor *t) {
  int64_t last = t->offset;
  view_last(t->offset, t->ndim, t->shape, t->strides, &last);
  return (size_t)(last - t->offset + 1);
}

/* Write count elements of t's own type (checked by the caller). */
static attn_status write_elems(attn_tensor *t, const void *src, size_t count) {
  attn_context *ctx = t->st->ctx;
  const size_t es = attn_dtype_size(t->dtype), off = (size_t)t->offset * es;
  if (is_contiguous(t)) return attn__be_write(ctx, t->st->buf, off, count * es, src);
  /* Strided: read the covered span, scatter into it, write it back, so the
   * elements between ours (another view's data) are kept. */
  size_t n = span_elems(t);
  char *span = malloc(n * es);
  if (!span) return attn__error(ATTN_ERR_NOMEM, "out of host memory for a strided write");
  attn_status s = attn__be_read(ctx, t->st->buf, off, n * es, span);
  if (!s) {
    scatter_gather(t, es, (char *)src, span, 1); /* only read */
    s = attn__be_write(ctx, t->st->buf, off, n * es, span);
  }
  free(span);
  return s;
}

static attn_status read_elems(const attn_tensor *t, void *dst, size_t count) {
  attn_context *ctx = t->st->ctx;
  const size_t es = attn_dtype_size(t->dtype), off = (size_t)t->offset * es;
  if (is_contiguous(t)) return attn__be_read(ctx, t->st->buf, off, count * es, dst);
  size_t n = span_elems(t);
  char *span = malloc(n * es);
  if (!span) return attn__error(ATTN_ERR_NOMEM, "out of host memory for a strided read");
  attn_status s = attn__be_read(ctx, t->st->buf, off, n * es, span);
  if (!s) scatter_gather(t, es, dst, span, 0);
  free(span);
  return s;
}

attn_status attn_tensor_write(attn_tensor *t, const float *src, size_t count) {
  ATTN_ENTER("attn_tensor_write");
  attn_status s = check_io(t, src, "src", count);
  if (s) return s;
  /* A view that reaches one element twice (a 0 stride, overlapping strides)
   * is an input-only view: writing it would let one host value silently win. */
  if ((s = attn__check_output_strides(t, "t")) != ATTN_OK) return s;
  if (t->dtype == ATTN_F32) return write_elems(t, src, count);
  /* 16-bit: round on the host (to nearest even), then upload the halves. */
  uint16_t *h = malloc(count * sizeof *h);
  if (!h) return attn__error(ATTN_ERR_NOMEM, "out of host memory to convert %zu elements", count);
  for (size_t i = 0; i < count; i++)
    h[i] = t->dtype == ATTN_F16 ? attn_f32_to_f16(src[i]) : attn_f32_to_bf16(src[i]);
  s = write_elems(t, h, count);
  free(h);
  return s;
}

attn_status attn_tensor_read(const attn_tensor *t, float *dst, size_t count) {
  ATTN_ENTER("attn_tensor_read");
  attn_status s = check_io(t, dst, "dst", count);
  if (s) return s;
  if (t->dtype == ATTN_F32) return read_elems(t, dst, count);
  uint16_t *h = malloc(count * sizeof *h);
  if (!h) return attn__error(ATTN_ERR_NOMEM, "out of host memory to convert %zu elements", count);
  s = read_elems(t, h, count);
  if (!s)
    for (size_t i = 0; i < count; i++)
      dst[i] = t->dtype == ATTN_F16 ? attn_f16_to_f32(h[i]) : attn_bf16_to_f32(h[i]);
  free(h);
  return s;
}

attn_status attn_tensor_write_raw(attn_tensor *t, const void *src, size_t count) {
  ATTN_ENTER("attn_tensor_write_raw");
  attn_status s = check_io(t, src, "src", count);
  if (s) return s;
  if ((s = attn__check_output_strides(t, "t")) != ATTN_OK) return s;
  return write_elems(t, src, count);
}

attn_status attn_tensor_read_raw(const attn_tensor *t, void *dst, size_t count) {
  ATTN_ENTER("attn_tensor_read_raw");
  attn_status s = check_io(t, dst, "dst", count);
  if (s) return s;
  return read_elems(t, dst, count);
}

int attn__tensors_same_view(const attn_tensor *a, const attn_tensor *b) {
  if (a->st != b->st || a->offset != b->offset || a->ndim != b->ndim) return 0;
  for (int i = 0; i < a->ndim; i++)
    if (a->shape[i] != b->shape[i] || a->strides[i] != b->strides[i]) return 0;
  return 1;
}
