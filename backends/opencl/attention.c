/* What every OpenCL backend's attention kernels share on the host side: the
 * SDPA options as kernel arguments (kernels/common.cl, ATTN_OPTS_PARAMS), the
 * merge stage (kernels/merge.cl), and the rope and rmsnorm stages
 * (kernels/rope.cl). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "clrt.h"

/* x clamped to [lo, hi]. */
static int64_t clamp64(int64_t x, int64_t lo, int64_t hi) { return x < lo ? lo : x > hi ? hi : x; }

attn_status clrt_sdpa_opts_init(clrt_ctx *c, const attn_sdpa_desc *d, const char *who,
                                clrt_sdpa_opts *o) {
  memset(o, 0, sizeof *o);
  const int64_t Sq = d->q.shape[2], Skv = d->k.shape[2];
  /* Every field is read only under the bit that sends it (attn_plugin.h). */
  const uint64_t f = d->features;
  const int64_t cpos = attn_diag_offset(d);
  const int64_t wl = (f & ATTN_FEAT_WINDOW) ? d->window_left : -1,
                wr = (f & ATTN_FEAT_WINDOW) ? d->window_right : -1;
  /* Row i sees keys lo(i) = i + lo_off .. hi(i) = i + hi_off + 1 (see
   * attn_row_lo / attn_row_hi). An offset beyond [-Sq - 1, Skv + 1] gives
   * every row the same clamped bound as the limit itself, so clamping keeps
   * the rule exact and the offsets in int. */
  int64_t hi = INT64_MAX;
  if (d->causal) hi = cpos;
  if (wr >= 0 && cpos + wr < hi) hi = cpos + wr; /* cannot overflow: |cpos| <= 2^53 */
  if (hi != INT64_MAX) o->has_hi = 1, o->hi_off = (cl_int)clamp64(hi, -Sq - 1, Skv + 1);
  if (wl >= 0) o->has_lo = 1, o->lo_off = (cl_int)clamp64(cpos - wl, -Sq - 1, Skv + 1);
  o->cpos = cpos;
  o->softcap = (f & ATTN_FEAT_SOFTCAP) ? d->softcap : 0.0f;
  const int64_t Hq = d->q.shape[1];
  const float *vecs[2] = {(f & ATTN_FEAT_ALIBI) ? d->alibi : NULL,
                          (f & ATTN_FEAT_SINKS) ? d->sinks : NULL};
  cl_mem *mems[2] = {&o->alibi, &o->sinks};
  cl_int *has[2] = {&o->has_alibi, &o->has_sinks};
  static float placeholder[1];
  for (int n = 0; n < 2; n++) {
    char what[96];
    snprintf(what, sizeof what, "%s: the %s", who, n ? "sinks" : "alibi slopes");
    /* The slopes and sinks live in host memory the caller may reuse once we
     * return: the buffer takes a copy now. */
    attn_status s = clrt_scratch_alloc(
        c, CL_MEM_READ_ONLY | CL_MEM_COPY_HOST_PTR,
        vecs[n] ? (size_t)Hq * sizeof(float) : sizeof placeholder,
        vecs[n] ? (void *)vecs[n] : (void *)placeholder, what, mems[n]);
    if (s != ATTN_OK) {
      clrt_sdpa_opts_release(c, o);
      return s;
    }
    *has[n] = vecs[n] != NULL;
  }
  return ATTN_OK;
}

void clrt_sdpa_opts_release(clrt_ctx *c, clrt_sdpa_opts *o) {
  clrt_scratch_free(c, o->alibi);
  clrt_scratch_free(c, o->sinks);
  o->alibi = o->sinks = NULL;
}

void clrt_sdpa_key_span(const attn_sdpa_desc *d, int64_t b, int64_t *lo, int64_t *hi) {
  /* Both bounds grow with the row: the first row has the lowest lo, the
   * last the highest hi. */
  int64_t l0, h0, l1, h1;
  attn_visible_range(d, b, 0, &l0, &h0);
  attn_visible_range(d, b, d->q.shape[2] - 1, &l1, &h1);
  *lo = l0;
  *hi = h1;
}

void clrt_sdpa_key_span_all(const attn_sdpa_desc *d, int64_t *lo, int64_t *hi) {
  int64_t base = d->k.shape[2], end = 0;
  for (int64_t b = 0; b < d->q.shape[0]; b++) {
    int64_t l, h;
    clrt_sdpa_key_span(d, b, &l, &h);
    if (l < h) {
      if (l < base) base = l;
      if (h > end) end = h;
    }
  }
  if (base >= end) base = 0, end = 0;
  *lo = base;
  *hi = end;
}

attn_status clrt_kv_lens_copy(clrt_ctx *c, const attn_sdpa_desc *d, const char *who,
                              cl_mem *mem) {
  *mem = NULL;
  if (!d->kv_lens) return ATTN_OK;
  char what[64];
  snprintf(what, sizeof what, "%s: kv_lens", who);
  return clrt_scratch_alloc(c, CL_MEM_READ_ONLY | CL_MEM_COPY_HOST_PTR,
                            (size_t)d->q.shape[0] * sizeof(cl_int), (void *)d->kv_lens, what,
                            mem);
}

attn_status clrt_filled_buffer(clrt_ctx *c, size_t n, attn_buffer **buf) {
  *buf = NULL;
  float *h = malloc(n * sizeof *h);
  if (!h) return clrt_host()->error(ATTN_ERR_NOMEM, "tune: out of host memory");
  for (size_t i = 0; i < n; i++) h[i] = (float)((i * 7919u) % 1000u) * 1e-3f - 0.5f;
  attn_status s = clrt_buffer_alloc(c, n * sizeof *h, buf);
  if (s == ATTN_OK) s = clrt_buffer_write(c, *buf, 0, n * sizeof *h, h);
  free(h);
  if (s != ATTN_OK) {
    clrt_buffer_free(c, *buf);
    *buf = NULL;
  }
  return s;
}

attn_view clrt_view4(attn_buffer *buf, int64_t a, int64_t b, int64_t c, int64_t d) {
  attn_view v = {buf, 0, {a, b, c, d}, {b * c * d, c * d, d, 1}, ATTN_F32};
  return v;
}

attn_status clrt_tune_sdpa_init(clrt_ctx *c, int64_t Hq, int64_t Hkv, int64_t Sq, int64_t Skv,
                                int64_t D, clrt_tune_sdpa *t) {
  memset(t, 0, sizeof *t);
  attn_status s = clrt_filled_buffer(c, (size_t)(Hq * Sq * D), &t->q);
  if (s == ATTN_OK) s = clrt_filled_buffer(c, (size_t)(Hkv * Skv * D), &t->k);
  if (s == ATTN_OK) s = clrt_filled_buffer(c, (size_t)(Hkv * Skv * D), &t->v);
  if (s == ATTN_OK) s = clrt_buffer_alloc(c, (size_t)(Hq * Sq * D) * sizeof(float), &t->o);
  if (s != ATTN_OK) {
    clrt_tune_sdpa_free(c, t);
    return s;
  }
  t->d.struct_size = sizeof t->d;
  t->d.q = clrt_view4(t->q, 1, Hq, Sq, D);
  t->d.k = clrt_view4(t->k, 1, Hkv, Skv, D);
  t->d.v = clrt_view4(t->v, 1, Hkv, Skv, D);
  t->d.out = clrt_view4(t->o, 1, Hq, Sq, D);
  t->d.scale = 0.125f;
  return ATTN_OK;
}

void clrt_tune_sdpa_free(clrt_ctx *c, clrt_tune_sdpa *t) {
  clrt_buffer_free(c, t->q);
  clrt_buffer_free(c, t->k);
  clrt_buffer_free(c, t->v);
  clrt_buffer_free(c, t->o);
  t->q = t->k = t->v = t->o = NULL;
}

void clrt_dtype_option(char *buf, size_t len, const char *name, const attn_view *v) {
  if (!v->buf || v->dtype == ATTN_F32) return;
  const size_t n = strlen(buf);
  if (n < len) snprintf(buf + n, len - n, " -D%s=%d", name, (int)v->dtype);
}

attn_status clrt_merge(clrt_ctx *c, const attn_merge_desc *d) {
  const int64_t B = d->out.shape[0], H = d->out.shape[1], S = d->out.shape[2];
  const int64_t Dv = d->out.shape[3];
  if (B > INT32_MAX || H > INT32_MAX || S > INT32_MAX || Dv > INT32_MAX)
    return clrt_host()->error(ATTN_ERR_UNSUPPORTED, "merge: dims must fit in 32-bit ints");
  char opts[64] = "";
  clrt_dtype_option(opts, sizeof opts, "AT", &d->out_a);
  clrt_dtype_option(opts, sizeof opts, "BT", &d->out_b);
  clrt_dtype_option(opts, sizeof opts, "OT", &d->out);
  cl_kernel k;
  attn_status s = clrt_kernel_get(c, "merge", opts, "attn_merge", &k);
  if (s != ATTN_OK) return s;
  cl_mem a = d->out_a.buf->mem, la = d->lse_a.buf->mem, b = d->out_b.buf->mem,
         lb = d->lse_b.buf->mem, o = d->out.buf->mem;
  cl_mem l = d->lse.buf ? d->lse.buf->mem : la; /* never written when has_lse is 0 */
  cl_long a_off = d->out_a.offset, la_off = d->lse_a.offset, b_off = d->out_b.offset,
          lb_off = d->lse_b.offset, o_off = d->out.offset, l_off = d->lse.offset;
  cl_long4 a_st = clrt_strides4(&d->out_a), la_st = clrt_strides4(&d->lse_a), b_st = clrt_strides4(&d->out_b),
           lb_st = clrt_strides4(&d->lse_b), o_st = clrt_strides4(&d->out), l_st = clrt_strides4(&d->lse);
  cl_int has_lse = d->lse.buf != NULL, H_ = (cl_int)H, S_ = (cl_int)S, Dv_ = (cl_int)Dv;
  s = clrt_set_args(k, 22, CLRT_ARG(a), CLRT_ARG(a_off), CLRT_ARG(a_st), CLRT_ARG(la),
                    CLRT_ARG(la_off), CLRT_ARG(la_st), CLRT_ARG(b), CLRT_ARG(b_off),
                    CLRT_ARG(b_st), CLRT_ARG(lb), CLRT_ARG(lb_off), CLRT_ARG(lb_st), CLRT_ARG(o),
                    CLRT_ARG(o_off), CLRT_ARG(o_st), CLRT_ARG(l), CLRT_ARG(l_off),
                    CLRT_ARG(l_st), CLRT_ARG(has_lse), CLRT_ARG(H_), CLRT_ARG(S_), CLRT_ARG(Dv_));
  if (s != ATTN_OK) return s;
  size_t global[3] = {(size_t)S, (size_t)H, (size_t)B};
  return clrt_enqueue(c, k, 3, global, NULL);
}

/* The rows of a [B, H, S, D] stage view, one work-item each: dims must fit int. */
static attn_status rows_fit(const attn_view *v, const char *stage) {
  for (int i = 0; i < 4; i++)
    if (v->shape[i] > INT32_MAX)
      return clrt_host()->error(ATTN_ERR_UNSUPPORTED, "%s: dims must fit in 32-bit ints", stage);
  return ATTN_OK;
}

attn_status clrt_rope(clrt_ctx *c, const attn_rope_desc *d) {
  const int64_t B = d->x.shape[0], H = d->x.shape[1], S = d->x.shape[2], D = d->x.shape[3];
  attn_status s = rows_fit(&d->x, "rope");
  if (s != ATTN_OK) return s;
  char opts[64] = "";
  clrt_dtype_option(opts, sizeof opts, "XT", &d->x);
  clrt_dtype_option(opts, sizeof opts, "YT", &d->y);
  cl_kernel k;
  if ((s = clrt_kernel_get(c, "rope", opts, "attn_rope", &k)) != ATTN_OK) return s;
  /* The positions live in host memory the caller may reuse once we return. */
  cl_mem pos;
  s = clrt_scratch_alloc(c, CL_MEM_READ_ONLY | CL_MEM_COPY_HOST_PTR,
                         (size_t)(B * S) * sizeof(cl_int), (void *)d->positions,
                         "rope: the positions", &pos);
  if (s != ATTN_OK) return s;
  cl_mem x = d->x.buf->mem, y = d->y.buf->mem, cs = d->cos.buf->mem, sn = d->sin.buf->mem;
  cl_long x_off = d->x.offset, y_off = d->y.offset, c_off = d->cos.offset, s_off = d->sin.offset;
  cl_long4 x_st = clrt_strides4(&d->x), y_st = clrt_strides4(&d->y), c_st = clrt_strides4(&d->cos),
           s_st = clrt_strides4(&d->sin);
  cl_int S_ = (cl_int)S, D_ = (cl_int)D, half = (cl_int)(d->rot_dim / 2),
         inter = (d->features & ATTN_FEAT_ROPE_INTERLEAVED) != 0;
  s = clrt_set_args(k, 17, CLRT_ARG(x), CLRT_ARG(x_off), CLRT_ARG(x_st), CLRT_ARG(y),
                    CLRT_ARG(y_off), CLRT_ARG(y_st), CLRT_ARG(cs), CLRT_ARG(c_off),
                    CLRT_ARG(c_st), CLRT_ARG(sn), CLRT_ARG(s_off), CLRT_ARG(s_st), CLRT_ARG(pos),
                    CLRT_ARG(S_), CLRT_ARG(D_), CLRT_ARG(half), CLRT_ARG(inter));
  if (s == ATTN_OK) {
    size_t global[3] = {(size_t)S, (size_t)H, (size_t)B};
    s = clrt_enqueue(c, k, 3, global, NULL);
  }
  clrt_scratch_free(c, pos);
  return s;
}

attn_status clrt_rmsnorm(clrt_ctx *c, const attn_rmsnorm_desc *d) {
  const int64_t B = d->x.shape[0], H = d->x.shape[1], S = d->x.shape[2], D = d->x.shape[3];
  attn_status s = rows_fit(&d->x, "rmsnorm");
  if (s != ATTN_OK) return s;
  char opts[64] = "";
  clrt_dtype_option(opts, sizeof opts, "XT", &d->x);
  clrt_dtype_option(opts, sizeof opts, "YT", &d->y);
  clrt_dtype_option(opts, sizeof opts, "WT", &d->weight);
  cl_kernel k;
  if ((s = clrt_kernel_get(c, "rope", opts, "attn_rmsnorm", &k)) != ATTN_OK) return s;
  cl_mem x = d->x.buf->mem, w = d->weight.buf->mem, y = d->y.buf->mem;
  cl_long x_off = d->x.offset, w_off = d->weight.offset, y_off = d->y.offset;
  cl_long4 x_st = clrt_strides4(&d->x), w_st = clrt_strides4(&d->weight), y_st = clrt_strides4(&d->y);
  cl_int D_ = (cl_int)D;
  cl_float eps = d->eps, offset = (d->features & ATTN_FEAT_NORM_OFFSET) ? 1.0f : 0.0f;
  s = clrt_set_args(k, 12, CLRT_ARG(x), CLRT_ARG(x_off), CLRT_ARG(x_st), CLRT_ARG(w),
                    CLRT_ARG(w_off), CLRT_ARG(w_st), CLRT_ARG(y), CLRT_ARG(y_off),
                    CLRT_ARG(y_st), CLRT_ARG(D_), CLRT_ARG(eps), CLRT_ARG(offset));
  if (s != ATTN_OK) return s;
  size_t global[3] = {(size_t)S, (size_t)H, (size_t)B};
  return clrt_enqueue(c, k, 3, global, NULL);
}
