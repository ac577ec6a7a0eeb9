/* The SDPA stage: check the caller's arguments against the contract in
 * attn.h, one message per argument, build the backend descriptor, ask the
 * backend whether it can run it, then run it. Also the linear stage's
 * dispatch, which the graph uses. */
#include "internal.h"

#include <math.h>
#include <stdio.h>
#include <string.h>

static attn_status check_tensor(attn_context *ctx, const attn_tensor *t, const char *name,
                                int ndim) {
  if (t->st->ctx != ctx)
    return attn__error(ATTN_ERR_INVALID_ARG, "%s: tensor belongs to another context", name);
  if (t->ndim != ndim)
    return attn__error(ATTN_ERR_SHAPE, "%s: rank %d != %d", name, t->ndim, ndim);
  return ATTN_OK;
}

/* Compare a tensor's shape with the one the contract requires. */
static attn_status check_dims(const attn_tensor *t, const char *name, const int64_t *want) {
  for (int i = 0; i < t->ndim; i++)
    if (t->shape[i] != want[i]) {
      char a[96], b[96];
      return attn__error(ATTN_ERR_SHAPE, "%s: shape %s != %s", name,
                         attn__fmt_dims(a, sizeof a, t->ndim, t->shape),
                         attn__fmt_dims(b, sizeof b, t->ndim, want));
    }
  return ATTN_OK;
}

/* An output must give every element its own place: no zero stride on a dim
 * longer than 1, and, visiting dims by increasing stride, each stride must
 * step past everything the smaller ones reach. (Sufficient, and what every
 * ordinary layout, including split/merged heads, satisfies.) */
attn_status attn__check_output_strides(const attn_tensor *t, const char *name) {
  int idx[4], n = 0;
  for (int i = 0; i < t->ndim; i++)
    if (t->shape[i] > 1) {
      if (t->strides[i] == 0)
        return attn__error(ATTN_ERR_INVALID_ARG, "%s: stride %d is 0 (an output cannot broadcast)",
                           name, i);
      idx[n++] = i;
    }
  for (int a = 1; a < n; a++) /* insertion sort by stride */
    for (int b = a; b > 0 && t->strides[idx[b]] < t->strides[idx[b - 1]]; b--) {
      int tmp = idx[b];
      idx[b] = idx[b - 1];
      idx[b - 1] = tmp;
    }
  int64_t reach = 0; /* largest offset the smaller-stride dims reach (fits: view checked) */
  for (int a = 0; a < n; a++) {
    int i = idx[a];
    if (t->strides[i] <= reach)
      return attn__error(ATTN_ERR_INVALID_ARG,
                         "%s: strides overlap (dim %d stride %lld revisits elements)", name, i,
                         (long long)t->strides[i]);
    reach += (t->shape[i] - 1) * t->strides[i];
  }
  return ATTN_OK;
}

static attn_view view_bcast(const attn_tensor *t) {
  /* Size-1 dims get stride 0 so backends may index the mask as full size. */
  attn_view v = attn__tensor_view4(t);
  for (int i = 0; i < 4; i++)
    if (v.shape[i] == 1) v.strides[i] = 0;
  return v;
}

attn_status attn__sdpa_prepare(attn_context *ctx, const attn_sdpa_args *args,
                               attn_sdpa_desc *d) {
  attn_status s;
  if (!ctx) return attn__error(ATTN_ERR_INVALID_ARG, "ctx: NULL");
  if (!args) return attn__error(ATTN_ERR_INVALID_ARG, "args: NULL");
  /* The caller's struct may be an older (shorter) or newer one. */
  attn_sdpa_args copy;
  if ((s = attn__copy_struct(&copy, sizeof copy, args, "args", "ATTN_SDPA_ARGS_INIT"))) return s;
  const attn_sdpa_args *a = &copy;
  if (!a->q) return attn__error(ATTN_ERR_INVALID_ARG, "q: NULL");
  if (!a->k) return attn__error(ATTN_ERR_INVALID_ARG, "k: NULL");
  if (!a->v) return attn__error(ATTN_ERR_INVALID_ARG, "v: NULL");
  if (!a->out) return attn__error(ATTN_ERR_INVALID_ARG, "out: NULL");

  if ((s = check_tensor(ctx, a->q, "q", 4)) || (s = check_tensor(ctx, a->k, "k", 4)) ||
      (s = check_tensor(ctx, a->v, "v", 4)) || (s = check_tensor(ctx, a->out, "out", 4)))
    return s;
  if (a->mask && (s = check_tensor(ctx, a->mask, "mask", 4))) return s;
  if (a->weights && (s = check_tensor(ctx, a->weights, "weights", 4))) return s;
  if (a->lse && (s = check_tensor(ctx, a->lse, "lse", 3))) return s;
  if (a->lse && a->lse->dtype != ATTN_F32)
    return attn__error(ATTN_ERR_INVALID_ARG, "lse: dtype %s; lse is always f32",
                       attn_dtype_str(a->lse->dtype));

  const int64_t B = a->q->shape[0], Hq = a->q->shape[1], Sq = a->q->shape[2],
                D = a->q->shape[3];
  const int64_t Hkv = a->k->shape[1], Skv = a->k->shape[2], Dv = a->v->shape[3];
  const attn_tensor *k = a->k, *v = a->v;
#define SHAPE_ERR(cond, ...) \
  if (cond) return attn__error(ATTN_ERR_SHAPE, __VA_ARGS__)
  SHAPE_ERR(k->shape[0] != B, "k: batch %lld != q batch %lld", (long long)k->shape[0],
            (long long)B);
  SHAPE_ERR(k->shape[3] != D, "k: head dim %lld != q head dim %lld", (long long)k->shape[3],
            (long long)D);
  SHAPE_ERR(Hq % Hkv != 0, "k: q heads %lld are not a multiple of k heads %lld", (long long)Hq,
            (long long)Hkv);
  SHAPE_ERR(v->shape[0] != B, "v: batch %lld != q batch %lld", (long long)v->shape[0],
            (long long)B);
  SHAPE_ERR(v->shape[1] != Hkv, "v: heads %lld != k heads %lld", (long long)v->shape[1],
            (long long)Hkv);
  SHAPE_ERR(v->shape[2] != Skv, "v: seq %lld != k seq %lld", (long long)v->shape[2],
            (long long)Skv);
#undef SHAPE_ERR
  const int64_t out_shape[4] = {B, Hq, Sq, Dv};
  if ((s = check_dims(a->out, "out", out_shape))) return s;

  if (a->mask_kind != ATTN_MASK_NONE && a->mask_kind != ATTN_MASK_BOOL &&
      a->mask_kind != ATTN_MASK_ADDITIVE)
    return attn__error(ATTN_ERR_INVALID_ARG, "mask_kind: %d is not an attn_mask_kind",
                       (int)a->mask_kind);
  if (a->mask && a->mask_kind == ATTN_MASK_NONE)
    return attn__error(ATTN_ERR_INVALID_ARG, "mask_kind: ATTN_MASK_NONE with a mask given");
  if (!a->mask && a->mask_kind != ATTN_MASK_NONE)
    return attn__error(ATTN_ERR_INVALID_ARG, "mask_kind: %d but mask is NULL",
                       (int)a->mask_kind);
  if (a->mask) {
    const int64_t *m = a->mask->shape;
    if ((m[0] != 1 && m[0] != B) || (m[1] != 1 && m[1] != Hq) || m[2] != Sq || m[3] != Skv) {
      char got[96];
      return attn__error(ATTN_ERR_SHAPE, "mask: shape %s != [1|%lld,1|%lld,%lld,%lld]",
                         attn__fmt_dims(got, sizeof got, 4, m), (long long)B, (long long)Hq,
                         (long long)Sq, (long long)Skv);
    }
  }
  if (a->weights) {
    const int64_t w_shape[4] = {B, Hq, Sq, Skv};
    if ((s = check_dims(a->weights, "weights", w_shape))) return s;
  }
  if (a->lse) {
    const int64_t l_shape[3] = {B, Hq, Sq};
    if ((s = check_dims(a->lse, "lse", l_shape))) return s;
  }

  if (a->has_scale && !isfinite(a->scale))
    return attn__error(ATTN_ERR_INVALID_ARG, "scale: %g is not finite", (double)a->scale);
  if (a->kv_lens)
    for (int64_t b = 0; b < B; b++)
      if (a->kv_lens[b] < 0 || a->kv_lens[b] > Skv)
        return attn__error(ATTN_ERR_INVALID_ARG, "kv_lens[%lld]: %d not in [0, %lld]",
                           (long long)b, (int)a->kv_lens[b], (long long)Skv);

  /* Outputs: each element written once, and nothing read is written. */
  const attn_tensor *ins[4] = {a->q, a->k, a->v, a->mask};
  const char *in_names[4] = {"q", "k", "v", "mask"};
  const attn_tensor *outs[3] = {a->out, a->weights, a->lse};
  const char *out_names[3] = {"out", "weights", "lse"};
  for (int o = 0; o < 3; o++) {
    if (!outs[o]) continue;
    for (int i = 0; i < 4; i++)
      if (attn__tensors_overlap(outs[o], ins[i]))
        return attn__error(ATTN_ERR_INVALID_ARG, "%s: overlaps input %s", out_names[o],
                           in_names[i]);
    for (int p = 0; p < o; p++)
      if (attn__tensors_overlap(outs[o], outs[p]))
        return attn__error(ATTN_ERR_INVALID_ARG, "%s: overlaps output %s", out_names[o],
                           out_names[p]);
    if ((s = attn__check_output_strides(outs[o], out_names[o]))) return s;
  }

  memset(d, 0, sizeof *d);
  d->struct_size = sizeof *d;
  d->q = attn__tensor_view4(a->q);
  d->k = attn__tensor_view4(a->k);
  d->v = attn__tensor_view4(a->v);
  d->out = attn__tensor_view4(a->out);
  d->mask = a->mask ? view_bcast(a->mask) : (attn_view){0};
  d->mask_kind = a->mask ? a->mask_kind : ATTN_MASK_NONE;
  d->causal = a->causal;
  d->scale = a->has_scale ? a->scale : (float)(1.0 / sqrt((double)D));
  d->kv_lens = a->kv_lens;
  d->weights = a->weights ? attn__tensor_view4(a->weights) : (attn_view){0};
  d->lse = (attn_view){0};
  if (a->lse) { /* [B,Hq,Sq] seen as [B,Hq,Sq,1] */
    const attn_tensor *l = a->lse;
    d->lse.buf = l->st->buf;
    d->lse.offset = l->offset;
    for (int i = 0; i < 3; i++) {
      d->lse.shape[i] = l->shape[i];
      d->lse.strides[i] = l->strides[i];
    }
    d->lse.shape[3] = 1;
    d->lse.strides[3] = 1;
    d->lse.dtype = ATTN_F32;
  }
  uint64_t f = 0;
  if (d->mask_kind == ATTN_MASK_BOOL) f |= ATTN_FEAT_MASK_BOOL;
  if (d->mask_kind == ATTN_MASK_ADDITIVE) f |= ATTN_FEAT_MASK_ADDITIVE;
  if (d->causal) f |= ATTN_FEAT_CAUSAL;
  if (d->kv_lens) f |= ATTN_FEAT_KV_LENS;
  if (d->weights.buf) f |= ATTN_FEAT_WEIGHTS;
  if (d->lse.buf) f |= ATTN_FEAT_LSE;
  const attn_view *views[7] = {&d->q, &d->k, &d->v, &d->out, &d->mask, &d->weights, &d->lse};
  d->features = f | attn__dtype_features(views, 7);
  return ATTN_OK;
}

attn_status attn__run_sdpa(attn_context *ctx, const attn_sdpa_desc *d) {
  return attn__be_stage(ctx, ATTN_STAGE_SDPA, d);
}

attn_status attn__run_linear(attn_context *ctx, const attn_linear_desc *d) {
  return attn__be_stage(ctx, ATTN_STAGE_LINEAR, d);
}

attn_status attn_sdpa(attn_context *ctx, const attn_sdpa_args *args) {
  ATTN_ENTER("attn_sdpa");
  attn_sdpa_desc d;
  attn_status s = attn__sdpa_prepare(ctx, args, &d);
  if (s) return s;
  return attn__run_sdpa(ctx, &d);
}
