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

/* The same storage, place, shape and strides: an in-place merge. */
static bool same_view(const attn_tensor *a, const attn_tensor *b) {
  if (a->st != b->st || a->offset != b->offset || a->ndim != b->ndim) return false;
  for (int i = 0; i < a->ndim; i++)
    if (a->shape[i] != b->shape[i] || a->strides[i] != b->strides[i]) return false;
  return true;
}

static attn_view lse_view(const attn_tensor *l) { /* [B,H,S] seen as [B,H,S,1] */
  attn_view v = {0};
  if (!l) return v;
  v.buf = l->st->buf;
  v.offset = l->offset;
  for (int i = 0; i < 3; i++) {
    v.shape[i] = l->shape[i];
    v.strides[i] = l->strides[i];
  }
  v.shape[3] = 1;
  v.strides[3] = 1;
  v.dtype = ATTN_F32;
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
    if ((m[0] != 1 && m[0] != B) || (m[1] != 1 && m[1] != Hq) || (m[2] != 1 && m[2] != Sq) ||
        m[3] != Skv) {
      char got[96];
      return attn__error(ATTN_ERR_SHAPE, "mask: shape %s != [1|%lld,1|%lld,1|%lld,%lld]",
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

  /* The options of 0.3 (zero: unused). Positions stay far from int64's
   * limits so that every position arithmetic fits (and ALiBi's distance is
   * an exact double). */
  const int64_t pos_max = (int64_t)1 << 52;
  if (a->has_positions) {
    if (a->q_pos < -pos_max || a->q_pos > pos_max)
      return attn__error(ATTN_ERR_INVALID_ARG, "q_pos: %lld not in [-2^52, 2^52]",
                         (long long)a->q_pos);
    if (a->k_pos < -pos_max || a->k_pos > pos_max)
      return attn__error(ATTN_ERR_INVALID_ARG, "k_pos: %lld not in [-2^52, 2^52]",
                         (long long)a->k_pos);
  }
  if (a->has_window) {
    if (a->window_left < -1)
      return attn__error(ATTN_ERR_INVALID_ARG, "window_left: %lld < -1 (-1 = unbounded)",
                         (long long)a->window_left);
    if (a->window_right < -1)
      return attn__error(ATTN_ERR_INVALID_ARG, "window_right: %lld < -1 (-1 = unbounded)",
                         (long long)a->window_right);
  }
  if (a->softcap != 0.0f && !(a->softcap > 0.0f && isfinite(a->softcap)))
    return attn__error(ATTN_ERR_INVALID_ARG, "softcap: %g; must be > 0 and finite (0: none)",
                       (double)a->softcap);
  const float *vecs[2] = {a->alibi_slopes, a->sinks};
  const char *vec_names[2] = {"alibi_slopes", "sinks"};
  for (int n = 0; n < 2; n++)
    if (vecs[n])
      for (int64_t h = 0; h < Hq; h++)
        if (!isfinite(vecs[n][h]))
          return attn__error(ATTN_ERR_INVALID_ARG, "%s[%lld]: %g is not finite", vec_names[n],
                             (long long)h, (double)vecs[n][h]);

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
  d->lse = lse_view(a->lse);
  d->q_pos = a->has_positions ? a->q_pos : Skv - Sq;
  d->k_pos = a->has_positions ? a->k_pos : 0;
  d->window_left = a->has_window ? a->window_left : -1;
  d->window_right = a->has_window ? a->window_right : -1;
  d->softcap = a->softcap;
  d->alibi = a->alibi_slopes;
  d->sinks = a->sinks;
  const bool window = d->window_left >= 0 || d->window_right >= 0;
  uint64_t f = 0;
  /* Positions matter only to the rules that compare them. */
  if (d->q_pos - d->k_pos != Skv - Sq && (d->causal || window || d->alibi))
    f |= ATTN_FEAT_POSITIONS;
  if (window) f |= ATTN_FEAT_WINDOW;
  if (d->softcap > 0.0f) f |= ATTN_FEAT_SOFTCAP;
  if (d->alibi) f |= ATTN_FEAT_ALIBI;
  if (d->sinks) f |= ATTN_FEAT_SINKS;
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

attn_status attn_merge(attn_context *ctx, const attn_tensor *out_a, const attn_tensor *lse_a,
                       const attn_tensor *out_b, const attn_tensor *lse_b, attn_tensor *out,
                       attn_tensor *lse) {
  ATTN_ENTER("attn_merge");
  attn_status s;
  if (!ctx) return attn__error(ATTN_ERR_INVALID_ARG, "ctx: NULL");
  const attn_tensor *ts[6] = {out_a, lse_a, out_b, lse_b, out, lse};
  const char *names[6] = {"out_a", "lse_a", "out_b", "lse_b", "out", "lse"};
  for (int i = 0; i < 6; i++) {
    if (!ts[i]) {
      if (i == 5) continue; /* lse is optional */
      return attn__error(ATTN_ERR_INVALID_ARG, "%s: NULL", names[i]);
    }
    if ((s = check_tensor(ctx, ts[i], names[i], i % 2 ? 3 : 4))) return s;
    if (i % 2 && ts[i]->dtype != ATTN_F32)
      return attn__error(ATTN_ERR_INVALID_ARG, "%s: dtype %s; lse is always f32", names[i],
                         attn_dtype_str(ts[i]->dtype));
  }
  for (int i = 1; i < 6; i++)
    if (ts[i] && (s = check_dims(ts[i], names[i], out_a->shape))) return s;
  /* out may be out_a or out_b exactly (and lse lse_a or lse_b); no other overlap. */
  for (int o = 4; o < 6; o++) {
    if (!ts[o]) continue;
    for (int i = 0; i < 4; i++)
      if (!(i % 2 == o % 2 && same_view(ts[o], ts[i])) && attn__tensors_overlap(ts[o], ts[i]))
        return attn__error(ATTN_ERR_INVALID_ARG, "%s: overlaps input %s (only %s itself may be "
                           "written in place)", names[o], names[i], o == 4 ? "out_a or out_b" :
                           "lse_a or lse_b");
    if ((s = attn__check_output_strides(ts[o], names[o]))) return s;
  }
  if (lse && attn__tensors_overlap(lse, out))
    return attn__error(ATTN_ERR_INVALID_ARG, "lse: overlaps output out");

  attn_merge_desc d;
  memset(&d, 0, sizeof d);
  d.struct_size = sizeof d;
  d.out_a = attn__tensor_view4(out_a);
  d.out_b = attn__tensor_view4(out_b);
  d.out = attn__tensor_view4(out);
  d.lse_a = lse_view(lse_a);
  d.lse_b = lse_view(lse_b);
  d.lse = lse_view(lse);
  const attn_view *views[3] = {&d.out_a, &d.out_b, &d.out};
  d.features = (lse ? ATTN_FEAT_LSE : 0) | attn__dtype_features(views, 3);
  return attn__be_stage(ctx, ATTN_STAGE_MERGE, &d);
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
