/* The multi-head attention graph and its KV cache.
 *
 * attn_mha_create plans everything once: it checks the descriptor and the
 * weights, resolves the weight views (packed in_proj rows are views at row
 * offsets, never copies) and allocates the intermediates for the largest run:
 *   qbuf [B, S,  Hq*D]   q projection
 *   kbuf [B, Skv, Hkv*D] k projection (self/cross attention without a cache)
 *   vbuf [B, Skv, Hkv*D] v projection
 *   abuf [B, S,  Hq*D]   attention output, heads merged
 * A run is the plan's list of ops (kind, name, operands), executed in order:
 * four linear nodes and one sdpa node today; a new node (a norm, RoPE) is a
 * new entry, and the profile is a list of (node name, ms), so neither changes
 * a public struct. Splitting and merging heads
 * costs nothing: a [B, S, H*D] buffer is read or written as [B, H, S, D]
 * through the strides (S*H*D, D, H*D, 1). Data stays on the device.
 *
 * A KV cache keeps keys and values as [B, capacity, Hkv*D]; a cached run's
 * k/v projections write straight into it at the current length, and sdpa
 * reads the first len+S positions, causal aligned bottom-right. */
#include "internal.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>


struct attn_kv_cache {
  attn_mha *g;
  int64_t batch, capacity, len;
  attn_tensor *k, *v; /* [batch, capacity, Hkv*D] */
  attn_kv_cache *prev, *next; /* in g->caches */
};

enum { W_Q, W_K, W_V, W_O, B_Q, B_K, B_V, B_O, W_COUNT };
static const char *const w_names[W_COUNT] = {"wq", "wk", "wv", "wo", "bq", "bk", "bv", "bo"};

/* The activations an op reads or writes during a run. */
typedef enum act_id { ACT_X, ACT_KVX, ACT_Q, ACT_K, ACT_V, ACT_ATTN, ACT_OUT } act_id;

typedef enum op_kind { OP_LINEAR, OP_SDPA } op_kind;

/* One planned node: a linear y = x W^T + b (src -> dst with weights w, b), or
 * sdpa over (Q, K, V) -> ATTN. */
typedef struct graph_op {
  op_kind kind;
  const char *name; /* as reported in the profile */
  act_id src, dst;
  int w, b;
} graph_op;

#define GRAPH_MAX_OPS ATTN_MHA_MAX_NODES

struct attn_mha {
  attn_context *ctx;
  attn_mha *prev, *next; /* in ctx->graphs */
  int64_t E, Ekv, Hq, Hkv, D, max_b, max_s, max_kv;
  bool causal;
  attn_dtype dtype, kv_dtype; /* activations; projected keys and values */
  attn_view w[W_COUNT];             /* resolved views; biases buf NULL without bias */
  const attn_tensor *user_w[10];    /* the caller's weight tensors, for overlap checks */
  attn_tensor *qbuf, *kbuf, *vbuf, *abuf;
  graph_op ops[GRAPH_MAX_OPS];
  int nops;
  bool released; /* attn_mha_free was called; kept alive by its caches */
  bool profiling;
  attn_mha_profile prof;
  attn_kv_cache *caches;
};

/* The plan: the nodes of every run, in order. */
static void plan_ops(attn_mha *g) {
  static const graph_op mha[] = {
      {OP_LINEAR, "project_q", ACT_X, ACT_Q, W_Q, B_Q},
      {OP_LINEAR, "project_k", ACT_KVX, ACT_K, W_K, B_K},
      {OP_LINEAR, "project_v", ACT_KVX, ACT_V, W_V, B_V},
      {OP_SDPA, "sdpa", ACT_Q, ACT_ATTN, 0, 0},
      {OP_LINEAR, "project_out", ACT_ATTN, ACT_OUT, W_O, B_O},
  };
  g->nops = (int)(sizeof mha / sizeof mha[0]);
  memcpy(g->ops, mha, sizeof mha);
}

/* ---- helpers ----------------------------------------------------------------- */

/* A tensor argument must exist, be on ctx, have this shape, and (for the
 * linear stage) contiguous rows. */
static attn_status check_arg(attn_context *ctx, const attn_tensor *t, const char *name, int ndim,
                             const int64_t *want, int rows_contiguous) {
  char a[96], b[96];
  if (!t) return attn__error(ATTN_ERR_INVALID_ARG, "%s: NULL", name);
  if (t->st->ctx != ctx)
    return attn__error(ATTN_ERR_INVALID_ARG, "%s: tensor belongs to another context", name);
  if (t->ndim != ndim)
    return attn__error(ATTN_ERR_SHAPE, "%s: rank %d != %d", name, t->ndim, ndim);
  for (int i = 0; i < ndim; i++)
    if (t->shape[i] != want[i])
      return attn__error(ATTN_ERR_SHAPE, "%s: shape %s != %s", name,
                         attn__fmt_dims(a, sizeof a, ndim, t->shape),
                         attn__fmt_dims(b, sizeof b, ndim, want));
  if (rows_contiguous && t->shape[ndim - 1] > 1 && t->strides[ndim - 1] != 1)
    return attn__error(ATTN_ERR_INVALID_ARG, "%s: rows must be contiguous (last stride %lld != 1)",
                       name, (long long)t->strides[ndim - 1]);
  return ATTN_OK;
}

/* [1, B, S, W] activation view of a buffer, batch stride given. */
static attn_view act_view(const attn_tensor *t, int64_t offset, int64_t B, int64_t S, int64_t W,
                          int64_t batch_stride) {
  attn_view v = {.buf = t->st->buf, .offset = offset, .dtype = t->dtype};
  v.shape[0] = 1, v.shape[1] = B, v.shape[2] = S, v.shape[3] = W;
  v.strides[0] = 0, v.strides[1] = batch_stride, v.strides[2] = W, v.strides[3] = 1;
  return v;
}

/* The same buffer seen as heads [B, H, S, D]: a stack tensor that holds no
 * reference (it lives only for the call). */
static attn_tensor heads_view(const attn_tensor *t, int64_t B, int64_t H, int64_t S, int64_t D,
                              int64_t batch_stride) {
  attn_tensor h;
  memset(&h, 0, sizeof h);
  h.st = t->st;
  h.dtype = t->dtype;
  h.ndim = 4;
  h.shape[0] = B, h.shape[1] = H, h.shape[2] = S, h.shape[3] = D;
  h.strides[0] = batch_stride, h.strides[1] = D, h.strides[2] = H * D, h.strides[3] = 1;
  return h;
}

/* x given as a [B, S, W] tensor, as the linear stage's [1, B, S, W]. */
static attn_view x_view(const attn_tensor *x) { return attn__tensor_view4(x); }

/* Where one run's activations live: a [1, B, rows, W] view of each. */
typedef struct run_ctx {
  attn_mha *g;
  const attn_tensor *x, *kvx;
  attn_tensor *out;
  const attn_tensor *kt, *vt; /* the k/v buffers: the cache's, or kbuf/vbuf */
  int64_t B, S, Snew;         /* batch, query rows, new key rows */
  int64_t kv_rows;            /* rows per batch item in kt/vt */
  int64_t at;                 /* where the new key rows go */
} run_ctx;

static attn_view act(const run_ctx *r, act_id id) {
  const attn_mha *g = r->g;
  const int64_t HqD = g->Hq * g->D, HkvD = g->Hkv * g->D;
  switch (id) {
  case ACT_X: return x_view(r->x);
  case ACT_KVX: return x_view(r->kvx);
  case ACT_OUT: return x_view(r->out);
  case ACT_Q: return act_view(g->qbuf, 0, r->B, r->S, HqD, r->S * HqD);
  case ACT_ATTN: return act_view(g->abuf, 0, r->B, r->S, HqD, r->S * HqD);
  case ACT_K: return act_view(r->kt, r->at * HkvD, r->B, r->Snew, HkvD, r->kv_rows * HkvD);
  case ACT_V: return act_view(r->vt, r->at * HkvD, r->B, r->Snew, HkvD, r->kv_rows * HkvD);
  }
  return (attn_view){0};
}

static attn_status run_linear(const run_ctx *r, const graph_op *op) {
  const attn_mha *g = r->g;
  attn_linear_desc d = {.struct_size = sizeof d, .x = act(r, op->src), .w = g->w[op->w],
                        .bias = g->w[op->b], .y = act(r, op->dst)};
  /* Rows are contiguous (checked); a width-1 row may carry any stride. */
  d.x.strides[3] = d.w.strides[3] = d.y.strides[3] = 1;
  const attn_view *views[4] = {&d.x, &d.w, &d.bias, &d.y};
  d.features = (d.bias.buf ? ATTN_FEAT_BIAS : 0) | attn__dtype_features(views, 4);
  return attn__run_linear(g->ctx, &d);
}

/* Attention over everything cached so far (or this run's keys), heads split
 * and merged through strides. */
static attn_status run_sdpa(const run_ctx *r) {
  attn_mha *g = r->g;
  const int64_t HqD = g->Hq * g->D, HkvD = g->Hkv * g->D, Skv = r->at + r->Snew;
  attn_tensor qh = heads_view(g->qbuf, r->B, g->Hq, r->S, g->D, r->S * HqD);
  attn_tensor kh = heads_view(r->kt, r->B, g->Hkv, Skv, g->D, r->kv_rows * HkvD);
  attn_tensor vh = heads_view(r->vt, r->B, g->Hkv, Skv, g->D, r->kv_rows * HkvD);
  attn_tensor oh = heads_view(g->abuf, r->B, g->Hq, r->S, g->D, r->S * HqD);
  attn_sdpa_args a = ATTN_SDPA_ARGS_INIT;
  a.q = &qh, a.k = &kh, a.v = &vh, a.out = &oh, a.causal = g->causal;
  attn_sdpa_desc d;
  attn_status s = attn__sdpa_prepare(g->ctx, &a, &d);
  return s ? s : attn__run_sdpa(g->ctx, &d);
}

/* The ops of one run. Without a cache: k/v come from kvx (x for self
 * attention) into kbuf/vbuf. With one: they are appended to the cache at
 * its length and sdpa reads everything cached so far. With profiling on,
 * each op is followed by a synchronisation and its wall time recorded. */
static attn_status run_nodes(attn_mha *g, const attn_tensor *x, const attn_tensor *kvx,
                             attn_tensor *out, const attn_kv_cache *c) {
  run_ctx r = {.g = g, .x = x, .kvx = kvx, .out = out, .B = x->shape[0], .S = x->shape[1],
               .Snew = kvx->shape[1]};
  r.kt = c ? c->k : g->kbuf;
  r.vt = c ? c->v : g->vbuf;
  r.kv_rows = c ? c->capacity : r.Snew;
  r.at = c ? c->len : 0;
  attn_mha_profile p;
  memset(&p, 0, sizeof p);
  g->prof = p;
  for (int i = 0; i < g->nops; i++) {
    const graph_op *op = &g->ops[i];
    const double t0 = g->profiling ? attn__now_ms() : 0;
    attn_status s = op->kind == OP_SDPA ? run_sdpa(&r) : run_linear(&r, op);
    if (!s && g->profiling) s = attn__be_sync(g->ctx);
    if (s) return s;
    snprintf(p.node[i].name, sizeof p.node[i].name, "%s", op->name);
    p.node[i].ms = g->profiling ? attn__now_ms() - t0 : 0;
  }
  p.n = g->nops;
  g->prof = p;
  return ATTN_OK;
}

/* Checks common to both runs: x [B<=max_batch, S<=max_seq, E] and out. */
static attn_status check_x_out(attn_mha *g, const attn_tensor *x, const attn_tensor *out) {
  attn_status s;
  if (!x) return attn__error(ATTN_ERR_INVALID_ARG, "x: NULL");
  if (!out) return attn__error(ATTN_ERR_INVALID_ARG, "out: NULL");
  if (x->st->ctx != g->ctx)
    return attn__error(ATTN_ERR_INVALID_ARG, "x: tensor belongs to another context");
  if (x->ndim != 3) return attn__error(ATTN_ERR_SHAPE, "x: rank %d != 3", x->ndim);
  const int64_t B = x->shape[0], S = x->shape[1];
  if (B > g->max_b)
    return attn__error(ATTN_ERR_SHAPE, "x: batch %lld > the plan's max_batch %lld", (long long)B,
                       (long long)g->max_b);
  if (S > g->max_s)
    return attn__error(ATTN_ERR_SHAPE, "x: seq %lld > the plan's max_seq %lld", (long long)S,
                       (long long)g->max_s);
  const int64_t xs[3] = {B, S, g->E};
  if ((s = check_arg(g->ctx, x, "x", 3, xs, 1))) return s;
  if ((s = check_arg(g->ctx, out, "out", 3, xs, 1))) return s;
  if (x->dtype != g->dtype)
    return attn__error(ATTN_ERR_INVALID_ARG, "x: dtype %s != the graph's desc.dtype %s",
                       attn_dtype_str(x->dtype), attn_dtype_str(g->dtype));
  if (out->dtype != g->dtype)
    return attn__error(ATTN_ERR_INVALID_ARG, "out: dtype %s != the graph's desc.dtype %s",
                       attn_dtype_str(out->dtype), attn_dtype_str(g->dtype));
  if ((s = attn__check_output_strides(out, "out"))) return s;
  if (attn__tensors_overlap(out, x)) return attn__error(ATTN_ERR_INVALID_ARG, "out: overlaps x");
  for (int i = 0; i < 10; i++)
    if (attn__tensors_overlap(out, g->user_w[i]))
      return attn__error(ATTN_ERR_INVALID_ARG, "out: overlaps a weight tensor");
  return ATTN_OK;
}

/* ---- creation ---------------------------------------------------------------- */

static attn_status check_desc(const attn_mha_desc *d) {
#define POS(f, min)                                                                          \
  if (d->f < (min))                                                                          \
  return attn__error(ATTN_ERR_INVALID_ARG, "desc." #f ": %lld < %d", (long long)d->f, (min))
  POS(d_model, 1);
  POS(d_kv, 0);
  POS(n_heads, 1);
  POS(n_kv_heads, 0);
  POS(head_dim, 0);
  POS(max_batch, 1);
  POS(max_seq, 1);
  POS(max_kv_seq, 0);
#undef POS
  if (!attn__dtype_valid(d->dtype))
    return attn__error(ATTN_ERR_INVALID_ARG, "desc.dtype: %d is not an attn_dtype", (int)d->dtype);
  if (!attn__dtype_valid(d->kv_dtype))
    return attn__error(ATTN_ERR_INVALID_ARG, "desc.kv_dtype: %d is not an attn_dtype",
                       (int)d->kv_dtype);
  int64_t hkv = d->n_kv_heads ? d->n_kv_heads : d->n_heads;
  if (d->n_heads % hkv)
    return attn__error(ATTN_ERR_INVALID_ARG,
                       "desc.n_kv_heads: n_heads %lld is not a multiple of n_kv_heads %lld",
                       (long long)d->n_heads, (long long)hkv);
  if (!d->head_dim && d->d_model % d->n_heads)
    return attn__error(ATTN_ERR_INVALID_ARG,
                       "desc.head_dim: 0 but d_model %lld is not a multiple of n_heads %lld",
                       (long long)d->d_model, (long long)d->n_heads);
  return ATTN_OK;
}

/* A buffer of rows x seq x width elements of type t: its byte count must neither
 * overflow nor exceed the device's largest allocation; `name` is the
 * arguments blamed ("batch x capacity"). */
static attn_status check_plan(const attn_context *ctx, int64_t rows, int64_t seq, int64_t width,
                              attn_dtype t, const char *name) {
  int64_t n;
  if (attn__mul_overflow(rows, seq, &n) || attn__mul_overflow(n, width, &n) ||
      attn__mul_overflow(n, (int64_t)attn_dtype_size(t), &n))
    return attn__error(ATTN_ERR_OVERFLOW, "%s: a [%lld, %lld, %lld] buffer's byte count overflows",
                       name, (long long)rows, (long long)seq, (long long)width);
  if (ctx->info.max_alloc && (uint64_t)n > ctx->info.max_alloc)
    return attn__error(ATTN_ERR_DEVICE_MEMORY,
                       "%s: a [%lld, %lld, %lld] buffer of %lld bytes exceeds the device's largest "
                       "allocation (%llu bytes on %s)",
                       name, (long long)rows, (long long)seq, (long long)width, (long long)n,
                       (unsigned long long)ctx->info.max_alloc, ctx->info.selector);
  return ATTN_OK;
}

/* Resolve and check the weights into g->w / g->user_w. */
static attn_status setup_weights(attn_mha *g, const attn_mha_weights *w, bool bias) {
  attn_status s;
  attn_context *ctx = g->ctx;
  const int64_t HqD = g->Hq * g->D, HkvD = g->Hkv * g->D;
  const attn_tensor *const given[10] = {w->wq, w->wk, w->wv, w->wo, w->bq,
                                        w->bk, w->bv, w->bo, w->in_proj, w->in_bias};
  memcpy(g->user_w, given, sizeof given);

  /* Exactly one form, and biases exactly when desc.bias. */
  if (w->in_proj) {
    for (int i = W_Q; i <= W_V; i++)
      if (given[i])
        return attn__error(ATTN_ERR_INVALID_ARG, "%s: given together with in_proj", w_names[i]);
    for (int i = B_Q; i <= B_V; i++)
      if (given[i])
        return attn__error(ATTN_ERR_INVALID_ARG, "%s: given together with in_proj (use in_bias)",
                           w_names[i]);
    if (g->Ekv != g->E)
      return attn__error(ATTN_ERR_INVALID_ARG,
                         "in_proj: a packed in-projection needs d_kv %lld == d_model %lld",
                         (long long)g->Ekv, (long long)g->E);
  } else if (w->in_bias) {
    return attn__error(ATTN_ERR_INVALID_ARG, "in_bias: given without in_proj");
  }
  const int nb = bias ? 1 : 0;
  const char *bnames[4] = {w->in_proj ? "in_bias" : "bq", "bk", "bv", "bo"};
  const attn_tensor *bs[4] = {w->in_proj ? w->in_bias : w->bq, w->in_proj ? w->in_bias : w->bk,
                              w->in_proj ? w->in_bias : w->bv, w->bo};
  for (int i = 0; i < 4; i++) {
    if (nb && !bs[i])
      return attn__error(ATTN_ERR_INVALID_ARG, "%s: NULL but desc.bias is true", bnames[i]);
    if (!nb && bs[i])
      return attn__error(ATTN_ERR_INVALID_ARG, "%s: given but desc.bias is false", bnames[i]);
  }

  if (w->in_proj) {
    const int64_t rows = HqD + 2 * HkvD;
    const int64_t ps[2] = {rows, g->E}, pb[1] = {rows};
    if ((s = check_arg(ctx, w->in_proj, "in_proj", 2, ps, 1))) return s;
    if (bias && (s = check_arg(ctx, w->in_bias, "in_bias", 1, pb, 0))) return s;
    /* Row blocks q, k, v of the packed matrix as views: no copy. */
    const int64_t first[3] = {0, HqD, HqD + HkvD}, n[3] = {HqD, HkvD, HkvD};
    attn_view pw = attn__tensor_view4(w->in_proj);
    attn_view pbv = bias ? attn__tensor_view4(w->in_bias) : (attn_view){0};
    for (int i = 0; i < 3; i++) {
      g->w[W_Q + i] = pw;
      g->w[W_Q + i].offset += first[i] * pw.strides[2];
      g->w[W_Q + i].shape[2] = n[i];
      if (bias) {
        g->w[B_Q + i] = pbv;
        g->w[B_Q + i].offset += first[i] * pbv.strides[3];
        g->w[B_Q + i].shape[3] = n[i];
      }
    }
  } else {
    const int64_t sq[2] = {HqD, g->E}, skv[2] = {HkvD, g->Ekv};
    if ((s = check_arg(ctx, w->wq, "wq", 2, sq, 1)) || (s = check_arg(ctx, w->wk, "wk", 2, skv, 1)) ||
        (s = check_arg(ctx, w->wv, "wv", 2, skv, 1)))
      return s;
    g->w[W_Q] = attn__tensor_view4(w->wq);
    g->w[W_K] = attn__tensor_view4(w->wk);
    g->w[W_V] = attn__tensor_view4(w->wv);
    if (bias) {
      const int64_t bq[1] = {HqD}, bkv[1] = {HkvD};
      if ((s = check_arg(ctx, w->bq, "bq", 1, bq, 0)) || (s = check_arg(ctx, w->bk, "bk", 1, bkv, 0)) ||
          (s = check_arg(ctx, w->bv, "bv", 1, bkv, 0)))
        return s;
      g->w[B_Q] = attn__tensor_view4(w->bq);
      g->w[B_K] = attn__tensor_view4(w->bk);
      g->w[B_V] = attn__tensor_view4(w->bv);
    }
  }
  const int64_t so[2] = {g->E, HqD}, bo[1] = {g->E};
  if ((s = check_arg(ctx, w->wo, "wo", 2, so, 1))) return s;
  g->w[W_O] = attn__tensor_view4(w->wo);
  if (bias) {
    if ((s = check_arg(ctx, w->bo, "bo", 1, bo, 0))) return s;
    g->w[B_O] = attn__tensor_view4(w->bo);
  }
  return ATTN_OK;
}

attn_status attn_mha_create(attn_context *ctx, const attn_mha_desc *desc, const attn_mha_weights *w,
                            attn_mha **graph) {
  ATTN_ENTER("attn_mha_create");
  attn_status s;
  if (graph) *graph = NULL; /* first, so that no failure leaves a stale handle behind */
  if (!ctx) return attn__error(ATTN_ERR_INVALID_ARG, "ctx: NULL");
  if (!desc) return attn__error(ATTN_ERR_INVALID_ARG, "desc: NULL");
  if (!w) return attn__error(ATTN_ERR_INVALID_ARG, "w: NULL");
  if (!graph) return attn__error(ATTN_ERR_INVALID_ARG, "graph: NULL");
  attn_mha_desc dcopy; /* the caller's may be an older (shorter) or newer struct */
  if ((s = attn__copy_struct(&dcopy, sizeof dcopy, desc, "desc", "ATTN_MHA_DESC_INIT"))) return s;
  desc = &dcopy;
  if ((s = check_desc(desc))) return s;

  attn_mha *g = calloc(1, sizeof *g);
  if (!g) return attn__error(ATTN_ERR_NOMEM, "out of host memory for the graph");
  g->ctx = ctx;
  g->E = desc->d_model;
  g->Ekv = desc->d_kv ? desc->d_kv : desc->d_model;
  g->Hq = desc->n_heads;
  g->Hkv = desc->n_kv_heads ? desc->n_kv_heads : desc->n_heads;
  g->D = desc->head_dim ? desc->head_dim : desc->d_model / desc->n_heads;
  g->causal = desc->causal;
  g->dtype = desc->dtype;
  g->kv_dtype = desc->kv_dtype;
  g->max_b = desc->max_batch;
  g->max_s = desc->max_seq;
  g->max_kv = desc->max_kv_seq ? desc->max_kv_seq : desc->max_seq;
  /* Self attention runs use kbuf for max_seq rows too. */
  const int64_t kv_rows = g->max_kv > g->max_s ? g->max_kv : g->max_s;
  int64_t HqD, HkvD, packed;
  if (attn__mul_overflow(g->Hq, g->D, &HqD) || attn__mul_overflow(g->Hkv, g->D, &HkvD) ||
      attn__mul_overflow(HkvD, 2, &packed) ||
      __builtin_add_overflow(packed, HqD, &packed) /* in_proj rows HqD + 2*HkvD */) {
    free(g);
    return attn__error(ATTN_ERR_OVERFLOW, "desc.head_dim: n_heads * head_dim overflows");
  }

  /* The plan's buffers, checked here so that a size too large is blamed on
   * the desc field that made it, not on an anonymous tensor shape. */
  if ((s = check_plan(ctx, g->max_b, g->max_s, HqD, g->dtype, "desc.max_batch x desc.max_seq")) ||
      (s = check_plan(ctx, g->max_b, kv_rows, HkvD, g->kv_dtype,
                      g->max_kv > g->max_s ? "desc.max_batch x desc.max_kv_seq"
                                           : "desc.max_batch x desc.max_seq"))) {
    free(g);
    return s;
  }

  if ((s = setup_weights(g, w, desc->bias))) {
    free(g);
    return s;
  }
  const int64_t qs[3] = {g->max_b, g->max_s, HqD}, ks[3] = {g->max_b, kv_rows, HkvD};
  if ((s = attn__tensor_alloc(ctx, g->dtype, 3, qs, &g->qbuf)) ||
      (s = attn__tensor_alloc(ctx, g->kv_dtype, 3, ks, &g->kbuf)) ||
      (s = attn__tensor_alloc(ctx, g->kv_dtype, 3, ks, &g->vbuf)) ||
      (s = attn__tensor_alloc(ctx, g->dtype, 3, qs, &g->abuf))) {
    attn_tensor_free(g->qbuf);
    attn_tensor_free(g->kbuf);
    attn_tensor_free(g->vbuf);
    free(g);
    return s;
  }
  plan_ops(g);
  g->next = ctx->graphs;
  if (ctx->graphs) ctx->graphs->prev = g;
  ctx->graphs = g;
  *graph = g;
  return ATTN_OK;
}

/* A graph freed by its caller but kept for its caches refuses every use. */
static attn_status released_error(void) {
  return attn__error(ATTN_ERR_INVALID_ARG,
                     "graph: already freed (kept only until its KV caches are freed)");
}

/* Free the graph itself; its caches must be gone. */
static void graph_destroy(attn_mha *g) {
  attn_tensor_free(g->qbuf);
  attn_tensor_free(g->kbuf);
  attn_tensor_free(g->vbuf);
  attn_tensor_free(g->abuf);
  if (g->prev) g->prev->next = g->next;
  else g->ctx->graphs = g->next;
  if (g->next) g->next->prev = g->prev;
  free(g);
}

void attn_mha_free(attn_mha *g) {
  if (!g || g->released) return;
  /* Caches still bound keep the graph (and its buffers) until the last of
   * them is freed: freeing a graph first must not make a later
   * attn_kv_cache_free a use after free. */
  g->released = true;
  if (!g->caches) graph_destroy(g);
}

void attn__context_free_graphs(attn_context *ctx) {
  while (ctx->graphs) {
    attn_mha *g = ctx->graphs;
    g->released = false; /* so that freeing its caches does not destroy it under us */
    while (g->caches) attn_kv_cache_free(g->caches);
    graph_destroy(g);
  }
}

/* ---- runs ---------------------------------------------------------------------- */

attn_status attn_mha_run(attn_mha *g, const attn_tensor *x, const attn_tensor *kv_x,
                         attn_tensor *out) {
  ATTN_ENTER("attn_mha_run");
  attn_status s;
  if (!g) return attn__error(ATTN_ERR_INVALID_ARG, "graph: NULL");
  if (g->released) return released_error();
  if ((s = check_x_out(g, x, out))) return s;
  if (kv_x) {
    if (kv_x->st->ctx != g->ctx)
      return attn__error(ATTN_ERR_INVALID_ARG, "kv_x: tensor belongs to another context");
    if (kv_x->ndim != 3) return attn__error(ATTN_ERR_SHAPE, "kv_x: rank %d != 3", kv_x->ndim);
    const int64_t Skv = kv_x->shape[1];
    if (Skv > g->max_kv)
      return attn__error(ATTN_ERR_SHAPE, "kv_x: seq %lld > the plan's max_kv_seq %lld",
                         (long long)Skv, (long long)g->max_kv);
    const int64_t ks[3] = {x->shape[0], Skv, g->Ekv};
    if ((s = check_arg(g->ctx, kv_x, "kv_x", 3, ks, 1))) return s;
    if (kv_x->dtype != g->dtype)
      return attn__error(ATTN_ERR_INVALID_ARG, "kv_x: dtype %s != the graph's desc.dtype %s",
                         attn_dtype_str(kv_x->dtype), attn_dtype_str(g->dtype));
    if (attn__tensors_overlap(out, kv_x))
      return attn__error(ATTN_ERR_INVALID_ARG, "out: overlaps kv_x");
  } else if (g->Ekv != g->E) {
    return attn__error(ATTN_ERR_INVALID_ARG, "kv_x: NULL (self attention) but d_kv %lld != d_model %lld",
                       (long long)g->Ekv, (long long)g->E);
  }
  return run_nodes(g, x, kv_x ? kv_x : x, out, NULL);
}

attn_status attn_mha_set_profiling(attn_mha *g, bool on) {
  ATTN_ENTER("attn_mha_set_profiling");
  if (!g) return attn__error(ATTN_ERR_INVALID_ARG, "graph: NULL");
  if (g->released) return released_error();
  g->profiling = on;
  return ATTN_OK;
}

attn_status attn_mha_profile_get(const attn_mha *g, attn_mha_profile *p) {
  ATTN_ENTER("attn_mha_profile_get");
  if (!g) return attn__error(ATTN_ERR_INVALID_ARG, "graph: NULL");
  if (g->released) return released_error();
  if (!p) return attn__error(ATTN_ERR_INVALID_ARG, "p: NULL");
  *p = g->prof;
  return ATTN_OK;
}

double attn_mha_profile_ms(const attn_mha_profile *p, const char *node) {
  if (!p || !node) return -1;
  for (int i = 0; i < p->n && i < ATTN_MHA_MAX_NODES; i++)
    if (strcmp(p->node[i].name, node) == 0) return p->node[i].ms;
  return -1;
}

/* ---- KV cache -------------------------------------------------------------------- */

static attn_status kv_cache_create(attn_mha *g, int64_t batch, int64_t capacity,
                                   attn_dtype dtype, attn_kv_cache **cache) {
  attn_status s;
  if (cache) *cache = NULL; /* first, so that no failure leaves a stale handle behind */
  if (!g) return attn__error(ATTN_ERR_INVALID_ARG, "graph: NULL");
  if (g->released) return released_error();
  if (!cache) return attn__error(ATTN_ERR_INVALID_ARG, "cache: NULL");
  if (!attn__dtype_valid(dtype))
    return attn__error(ATTN_ERR_INVALID_ARG, "dtype: %d is not an attn_dtype", (int)dtype);
  if (batch < 1 || batch > g->max_b)
    return attn__error(ATTN_ERR_INVALID_ARG, "batch: %lld not in 1..max_batch %lld",
                       (long long)batch, (long long)g->max_b);
  if (capacity < 1)
    return attn__error(ATTN_ERR_INVALID_ARG, "capacity: %lld < 1", (long long)capacity);
  if (g->Ekv != g->E)
    return attn__error(ATTN_ERR_INVALID_ARG,
                       "graph: a KV cache needs self attention, but d_kv %lld != d_model %lld",
                       (long long)g->Ekv, (long long)g->E);
  if ((s = check_plan(g->ctx, batch, capacity, g->Hkv * g->D, dtype, "batch x capacity")))
    return s;
  attn_kv_cache *c = calloc(1, sizeof *c);
  if (!c) return attn__error(ATTN_ERR_NOMEM, "out of host memory for the cache");
  const int64_t shape[3] = {batch, capacity, g->Hkv * g->D};
  if ((s = attn__tensor_alloc(g->ctx, dtype, 3, shape, &c->k)) ||
      (s = attn__tensor_alloc(g->ctx, dtype, 3, shape, &c->v))) {
    attn_tensor_free(c->k);
    free(c);
    return s;
  }
  c->g = g;
  c->batch = batch;
  c->capacity = capacity;
  c->next = g->caches;
  if (g->caches) g->caches->prev = c;
  g->caches = c;
  *cache = c;
  return ATTN_OK;
}

attn_status attn_kv_cache_create(attn_mha *g, int64_t batch, int64_t capacity,
                                 attn_kv_cache **cache) {
  ATTN_ENTER("attn_kv_cache_create");
  return kv_cache_create(g, batch, capacity, g ? g->kv_dtype : ATTN_F32, cache);
}

attn_status attn_kv_cache_create_typed(attn_mha *g, int64_t batch, int64_t capacity,
                                       attn_dtype dtype, attn_kv_cache **cache) {
  ATTN_ENTER("attn_kv_cache_create_typed");
  return kv_cache_create(g, batch, capacity, dtype, cache);
}

void attn_kv_cache_free(attn_kv_cache *c) {
  if (!c) return;
  attn_mha *g = c->g;
  attn_tensor_free(c->k);
  attn_tensor_free(c->v);
  if (c->prev) c->prev->next = c->next;
  else g->caches = c->next;
  if (c->next) c->next->prev = c->prev;
  free(c);
  if (g->released && !g->caches) graph_destroy(g);
}

int64_t attn_kv_cache_length(const attn_kv_cache *c) { return c ? c->len : 0; }
int64_t attn_kv_cache_capacity(const attn_kv_cache *c) { return c ? c->capacity : 0; }
void attn_kv_cache_reset(attn_kv_cache *c) {
  if (c) c->len = 0;
}

attn_status attn_mha_run_cached(attn_mha *g, attn_kv_cache *c, const attn_tensor *x,
                                attn_tensor *out) {
  ATTN_ENTER("attn_mha_run_cached");
  attn_status s;
  if (!g) return attn__error(ATTN_ERR_INVALID_ARG, "graph: NULL");
  if (g->released) return released_error();
  if (!c) return attn__error(ATTN_ERR_INVALID_ARG, "cache: NULL");
  if (c->g != g) return attn__error(ATTN_ERR_INVALID_ARG, "cache: bound to another graph");
  if ((s = check_x_out(g, x, out))) return s;
  if (x->shape[0] != c->batch)
    return attn__error(ATTN_ERR_SHAPE, "x: batch %lld != the cache's batch %lld",
                       (long long)x->shape[0], (long long)c->batch);
  if (x->shape[1] > c->capacity - c->len)
    return attn__error(ATTN_ERR_CAPACITY, "x: %lld new tokens + %lld cached > capacity %lld",
                       (long long)x->shape[1], (long long)c->len, (long long)c->capacity);
  /* The length moves only when the whole run succeeded: a failed run leaves
   * rows past it that the next run overwrites. */
  if ((s = run_nodes(g, x, x, out, c))) return s;
  c->len += x->shape[1];
  return ATTN_OK;
}
