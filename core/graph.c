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
 * project q, k, v; (QK-norm) norm q, k; (RoPE) rotate q, k; sdpa; project
 * out. The norms and rotations work in place on the projected buffers (the
 * cache's rows for cached keys, so keys are stored normed and rotated at
 * their absolute positions); the profile is a list of (node name, ms), so a
 * new node changes no public struct. Splitting and merging heads
 * costs nothing: a [B, S, H*D] buffer is read or written as [B, H, S, D]
 * through the strides (S*H*D, D, H*D, 1). Data stays on the device.
 *
 * A KV cache keeps keys and values as [B, capacity, Hkv*D] and a length per
 * row; a cached run's k/v projections write straight into it at each row's
 * length, and sdpa reads the first len+n positions, causal aligned
 * bottom-right. When every row has the same length and appends the same
 * number of tokens, each k/v node and sdpa is one call over the batch;
 * otherwise one call per row. Padding tokens (attention_mask 0) are stored
 * and hidden by a key mask [B, capacity] the cache keeps from then on. */
#include "internal.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>


struct attn_kv_cache {
  attn_mha *g;
  int64_t batch, capacity;
  int64_t *len;       /* [batch]: each row's length */
  attn_tensor *k, *v; /* [batch, capacity, Hkv*D] */
  /* Key padding, made at the first padding token: 1 = token, 0 = hidden,
   * on the device [batch, capacity] and mirrored on the host; npad[b] counts
   * the hidden keys below len[b]. */
  attn_tensor *kmask;
  float *hmask;
  int64_t *npad;
  attn_kv_cache *prev, *next; /* in g->caches */
};

enum { W_Q, W_K, W_V, W_O, B_Q, B_K, B_V, B_O, W_COUNT };
static const char *const w_names[W_COUNT] = {"wq", "wk", "wv", "wo", "bq", "bk", "bv", "bo"};

/* The activations an op reads or writes during a run. */
typedef enum act_id { ACT_X, ACT_KVX, ACT_Q, ACT_K, ACT_V, ACT_ATTN, ACT_OUT } act_id;

typedef enum op_kind { OP_LINEAR, OP_NORM, OP_ROPE, OP_SDPA } op_kind;

/* One planned node: a linear y = x W^T + b (src -> dst with weights w, b), an
 * RMSNorm or a rotation of Q or K in place (src), or sdpa over (Q, K, V) ->
 * ATTN. */
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
  const attn_tensor *user_w[12];    /* the caller's weight tensors, for overlap checks */
  /* 0.4: QK-norm, RoPE and the SDPA options of the desc */
  attn_view q_norm, k_norm; /* buf NULL when absent */
  float norm_eps;
  bool norm_offset;
  bool has_rope;
  attn_rope_plan rope;
  bool has_scale;
  float scale;
  bool has_window;
  int64_t window_left, window_right;
  float softcap;
  float *alibi, *sinks; /* host [Hq] copies or NULL */
  bool qkv_per_head;    /* w[W_Q..W_V]: head 0's rows of an interleaved in_proj */
  attn_tensor *pmask;   /* [max_b, kv rows] f32: a plain run's key padding, made on first use */
  attn_tensor *qbuf, *kbuf, *vbuf, *abuf;
  graph_op ops[GRAPH_MAX_OPS];
  int nops;
  bool released; /* attn_mha_free was called; kept alive by its caches */
  bool profiling;
  attn_mha_profile prof;
  attn_kv_cache *caches;
};

/* The plan: the nodes of every run, in order (the norms and rotations only
 * when the desc asks for them). */
static void plan_ops(attn_mha *g) {
  const graph_op proj[] = {
      {OP_LINEAR, "project_q", ACT_X, ACT_Q, W_Q, B_Q},
      {OP_LINEAR, "project_k", ACT_KVX, ACT_K, W_K, B_K},
      {OP_LINEAR, "project_v", ACT_KVX, ACT_V, W_V, B_V},
  };
  int n = 0;
  for (int i = 0; i < 3; i++) g->ops[n++] = proj[i];
  if (g->q_norm.buf) g->ops[n++] = (graph_op){OP_NORM, "norm_q", ACT_Q, ACT_Q, 0, 0};
  if (g->k_norm.buf) g->ops[n++] = (graph_op){OP_NORM, "norm_k", ACT_K, ACT_K, 0, 0};
  if (g->has_rope) {
    g->ops[n++] = (graph_op){OP_ROPE, "rope_q", ACT_Q, ACT_Q, 0, 0};
    g->ops[n++] = (graph_op){OP_ROPE, "rope_k", ACT_K, ACT_K, 0, 0};
  }
  g->ops[n++] = (graph_op){OP_SDPA, "sdpa", ACT_Q, ACT_ATTN, 0, 0};
  g->ops[n++] = (graph_op){OP_LINEAR, "project_out", ACT_ATTN, ACT_OUT, W_O, B_O};
  g->nops = n;
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

/* The batch rows [b0, b0 + nb) of a [1, B, S, W] activation view, their
 * first n positions. */
static attn_view rows_of(attn_view v, int64_t b0, int64_t nb, int64_t n) {
  v.offset += b0 * v.strides[1];
  v.shape[1] = nb;
  v.shape[2] = n;
  return v;
}

/* A group of batch rows that one call of a k/v node (and of sdpa) covers:
 * rows [b0, b0 + nb), each holding `at` cached keys and appending n. */
typedef struct row_group {
  int64_t b0, nb, at, n;
} row_group;

/* Where one run's activations live: a [1, B, rows, W] view of each. */
typedef struct run_ctx {
  attn_mha *g;
  const attn_tensor *x, *kvx;
  attn_tensor *out;
  const attn_tensor *kt, *vt; /* the k/v buffers: the cache's, or kbuf/vbuf */
  attn_kv_cache *c;           /* NULL for a plain run */
  int64_t B, S, Snew;         /* batch, query rows, new key rows */
  int64_t kv_rows;            /* rows per batch item in kt/vt */
  const int32_t *pos;         /* host [B * S]: the RoPE positions of x's tokens */
  const int32_t *n_new;       /* host [B] (cached) or NULL */
  const attn_tensor *mask;    /* the caller's sdpa mask (plain runs) */
  attn_mask_kind mask_kind;
  bool key_mask;              /* sdpa hides padding keys (pmask, or the cache's kmask) */
  row_group grp[1];           /* groups: one (uniform) or one per row */
  row_group *groups;
  int ngroups;
} run_ctx;

/* The heads [B, H, S, D] of rows [b0, b0+nb) of a [B, rows, H*D] buffer,
 * positions [at, at + n). */
static attn_tensor heads_at(const attn_tensor *t, int64_t b0, int64_t nb, int64_t H, int64_t at,
                            int64_t n, int64_t D, int64_t rows) {
  attn_tensor h = heads_view(t, nb, H, n, D, rows * H * D);
  h.offset = t->offset + b0 * rows * H * D + at * H * D;
  return h;
}

/* The view an op reads or writes, for group gr (k/v activations) or the
 * whole batch (q, x, attention and out). */
static attn_view act(const run_ctx *r, act_id id, const row_group *gr) {
  const attn_mha *g = r->g;
  const int64_t HqD = g->Hq * g->D, HkvD = g->Hkv * g->D;
  switch (id) {
  case ACT_X: return x_view(r->x);
  case ACT_KVX: return rows_of(x_view(r->kvx), gr->b0, gr->nb, gr->n);
  case ACT_OUT: return x_view(r->out);
  case ACT_Q: return act_view(g->qbuf, 0, r->B, r->S, HqD, r->S * HqD);
  case ACT_ATTN: return act_view(g->abuf, 0, r->B, r->S, HqD, r->S * HqD);
  case ACT_K:
    return act_view(r->kt, (gr->b0 * r->kv_rows + gr->at) * HkvD, gr->nb, gr->n, HkvD,
                    r->kv_rows * HkvD);
  case ACT_V:
    return act_view(r->vt, (gr->b0 * r->kv_rows + gr->at) * HkvD, gr->nb, gr->n, HkvD,
                    r->kv_rows * HkvD);
  }
  return (attn_view){0};
}

static int is_kv(act_id id) { return id == ACT_K || id == ACT_V || id == ACT_KVX; }

static attn_status linear_call(const attn_mha *g, attn_linear_desc d) {
  /* Rows are contiguous (checked); a width-1 row may carry any stride. A
   * transposed weight's [out, in] view runs along in with stride out. */
  d.x.strides[3] = d.y.strides[3] = 1;
  if (d.w.shape[3] == 1) d.w.strides[3] = 1;
  const attn_view *views[4] = {&d.x, &d.w, &d.bias, &d.y};
  d.features = (d.bias.buf ? ATTN_FEAT_BIAS : 0) | attn__dtype_features(views, 4) |
               (d.w.strides[3] != 1 ? ATTN_FEAT_W_STRIDED : 0);
  return attn__run_linear(g->ctx, &d);
}

static attn_status run_linear(const run_ctx *r, const graph_op *op, const row_group *gr) {
  const attn_mha *g = r->g;
  attn_linear_desc d = {.struct_size = sizeof d, .x = act(r, op->src, gr), .w = g->w[op->w],
                        .bias = g->w[op->b], .y = act(r, op->dst, gr)};
  if (!g->qkv_per_head || op->w == W_O) return linear_call(g, d);
  /* An interleaved in_proj: head h's D rows lie 3*D rows after head h-1's;
   * one call per head writes its D columns of q, k or v. */
  attn_status s = ATTN_OK;
  const attn_view w0 = d.w, b0 = d.bias, y0 = d.y;
  d.y.shape[3] = g->D;
  for (int64_t h = 0; h < g->Hq && !s; h++) {
    d.w.offset = w0.offset + h * 3 * g->D * w0.strides[2];
    if (b0.buf) d.bias.offset = b0.offset + h * 3 * g->D * b0.strides[3];
    d.y.offset = y0.offset + h * g->D * y0.strides[3];
    s = linear_call(g, d);
  }
  return s;
}

/* QK-norm or RoPE of q (the whole batch) or of the new keys of group gr, in
 * place, as heads [B, H, S, D]. */
static attn_status run_headwise(const run_ctx *r, const graph_op *op, const row_group *gr) {
  attn_mha *g = r->g;
  const int q = op->src == ACT_Q;
  attn_tensor h = q ? heads_at(g->qbuf, 0, r->B, g->Hq, 0, r->S, g->D, r->S)
                    : heads_at(r->kt, gr->b0, gr->nb, g->Hkv, gr->at, gr->n, g->D, r->kv_rows);
  const attn_view v = attn__tensor_view4(&h);
  if (op->kind == OP_NORM)
    return attn__run_rmsnorm(g->ctx, &v, q ? &g->q_norm : &g->k_norm, &v, g->norm_eps,
                             g->norm_offset);
  /* Group rows are consecutive in x, so their positions are too: row b's
   * tokens at pos[b * S ...]; a one-row group reads its first n. */
  if (q || gr->nb == 1) return attn__run_rope(g->ctx, &g->rope, &v, &v, r->pos + (q ? 0 : gr->b0 * r->S));
  return attn__run_rope(g->ctx, &g->rope, &v, &v, r->pos); /* uniform: n == S */
}

/* Attention of group gr's queries over its keys (everything cached so far,
 * or this run's), heads split and merged through strides. */
static attn_status run_sdpa(const run_ctx *r, const row_group *gr) {
  attn_mha *g = r->g;
  const int64_t Skv = gr->at + gr->n, Sq = r->c ? gr->n : r->S;
  attn_tensor qh = heads_at(g->qbuf, gr->b0, gr->nb, g->Hq, 0, Sq, g->D, r->S);
  attn_tensor kh = heads_at(r->kt, gr->b0, gr->nb, g->Hkv, 0, Skv, g->D, r->kv_rows);
  attn_tensor vh = heads_at(r->vt, gr->b0, gr->nb, g->Hkv, 0, Skv, g->D, r->kv_rows);
  attn_tensor oh = heads_at(g->abuf, gr->b0, gr->nb, g->Hq, 0, Sq, g->D, r->S);
  attn_sdpa_args a = ATTN_SDPA_ARGS_INIT;
  a.q = &qh, a.k = &kh, a.v = &vh, a.out = &oh, a.causal = g->causal;
  a.has_scale = g->has_scale, a.scale = g->scale;
  a.has_window = g->has_window, a.window_left = g->window_left, a.window_right = g->window_right;
  a.softcap = g->softcap, a.alibi_slopes = g->alibi, a.sinks = g->sinks;
  attn_tensor mh;
  if (r->key_mask) {
    /* [nb, 1, 1, Skv] over the key padding rows, broadcast over heads and queries */
    const attn_tensor *m = r->c ? r->c->kmask : g->pmask;
    const int64_t cols = m->shape[1];
    memset(&mh, 0, sizeof mh);
    mh.st = m->st, mh.dtype = m->dtype, mh.ndim = 4;
    mh.shape[0] = gr->nb, mh.shape[1] = 1, mh.shape[2] = 1, mh.shape[3] = Skv;
    mh.strides[0] = cols, mh.strides[1] = 0, mh.strides[2] = 0, mh.strides[3] = 1;
    mh.offset = m->offset + gr->b0 * cols;
    a.mask = &mh, a.mask_kind = ATTN_MASK_BOOL;
  } else if (r->mask) {
    a.mask = r->mask, a.mask_kind = r->mask_kind;
  }
  attn_sdpa_desc d;
  attn_status s = attn__sdpa_prepare(g->ctx, &a, &d);
  return s ? s : attn__run_sdpa(g->ctx, &d);
}

/* The ops of one run, in order. Without a cache: k/v come from kvx (x for
 * self attention) into kbuf/vbuf. With one: they are appended to the cache
 * at each row's length and sdpa reads everything cached so far. Nodes on
 * keys and values, and sdpa, run once per row group. With profiling on,
 * each op is followed by a synchronisation and its wall time recorded. */
static attn_status run_nodes(run_ctx *r) {
  attn_mha *g = r->g;
  attn_mha_profile p;
  memset(&p, 0, sizeof p);
  g->prof = p;
  for (int i = 0; i < g->nops; i++) {
    const graph_op *op = &g->ops[i];
    const double t0 = g->profiling ? attn__now_ms() : 0;
    const int per_group = op->kind == OP_SDPA || is_kv(op->src) || is_kv(op->dst);
    attn_status s = ATTN_OK;
    for (int k = 0; k < (per_group ? r->ngroups : 1) && !s; k++) {
      const row_group *gr = &r->groups[k];
      if (per_group && gr->n == 0) continue; /* a row with nothing new */
      switch (op->kind) {
      case OP_SDPA: s = run_sdpa(r, gr); break;
      case OP_LINEAR: s = run_linear(r, op, gr); break;
      default: s = run_headwise(r, op, gr); break;
      }
    }
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
  for (int i = 0; i < 12; i++)
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
  /* 0.4 */
  if (d->biases & ~ATTN_PROJ_ALL)
    return attn__error(ATTN_ERR_INVALID_ARG, "desc.biases: 0x%x has bits beyond ATTN_PROJ_ALL",
                       d->biases);
  if (d->transposed & ~ATTN_PROJ_ALL)
    return attn__error(ATTN_ERR_INVALID_ARG, "desc.transposed: 0x%x has bits beyond ATTN_PROJ_ALL",
                       d->transposed);
  if ((d->q_norm || d->k_norm) && !(isfinite(d->norm_eps) && d->norm_eps > 0))
    return attn__error(ATTN_ERR_INVALID_ARG, "desc.norm_eps: %g (must be finite and > 0)",
                       (double)d->norm_eps);
  if (d->has_scale && !isfinite(d->scale))
    return attn__error(ATTN_ERR_INVALID_ARG, "desc.scale: not finite");
  if (d->has_window && (d->window_left < -1 || d->window_right < -1))
    return attn__error(ATTN_ERR_INVALID_ARG, "desc.window_left, window_right: %lld, %lld (each >= -1)",
                       (long long)d->window_left, (long long)d->window_right);
  if (!(isfinite(d->softcap) && d->softcap >= 0))
    return attn__error(ATTN_ERR_INVALID_ARG, "desc.softcap: %g (must be finite and >= 0)",
                       (double)d->softcap);
  const float *vec[2] = {d->alibi_slopes, d->sinks};
  const char *vn[2] = {"alibi_slopes", "sinks"};
  for (int v = 0; v < 2; v++)
    for (int64_t h = 0; vec[v] && h < d->n_heads; h++)
      if (!isfinite(vec[v][h]))
        return attn__error(ATTN_ERR_INVALID_ARG, "desc.%s[%lld]: not finite", vn[v], (long long)h);
  return ATTN_OK;
}

/* The QK-norm weights, the RoPE plan and the SDPA options of the desc. */
static attn_status setup_layer(attn_mha *g, const attn_mha_desc *d) {
  attn_status s;
  const attn_tensor *nw[2] = {d->q_norm, d->k_norm};
  const char *nn[2] = {"desc.q_norm", "desc.k_norm"};
  attn_view *nv[2] = {&g->q_norm, &g->k_norm};
  for (int i = 0; i < 2; i++) {
    if (!nw[i]) continue;
    const int64_t ws[1] = {g->D};
    if ((s = check_arg(g->ctx, nw[i], nn[i], 1, ws, 0))) return s;
    *nv[i] = attn__tensor_view4(nw[i]);
    g->user_w[10 + i] = nw[i];
  }
  g->norm_eps = d->norm_eps;
  g->norm_offset = d->norm_offset;
  if (d->rope) {
    /* type NONE means no RoPE: read the type through the growing-struct copy */
    attn_rope_config c;
    if ((s = attn__copy_struct(&c, sizeof c, d->rope, "desc.rope", "ATTN_ROPE_CONFIG_INIT")))
      return s;
    if (c.type != ATTN_ROPE_NONE) {
      if ((s = attn__rope_plan_init(g->ctx, d->rope, g->D, "desc.rope", &g->rope))) return s;
      g->has_rope = true;
    }
  }
  g->has_scale = d->has_scale, g->scale = d->scale;
  g->has_window = d->has_window, g->window_left = d->window_left, g->window_right = d->window_right;
  g->softcap = d->softcap;
  const float *vec[2] = {d->alibi_slopes, d->sinks};
  float **dst[2] = {&g->alibi, &g->sinks};
  for (int v = 0; v < 2; v++) {
    if (!vec[v]) continue;
    *dst[v] = malloc((size_t)g->Hq * sizeof(float));
    if (!*dst[v]) return attn__error(ATTN_ERR_NOMEM, "out of host memory for the graph");
    memcpy(*dst[v], vec[v], (size_t)g->Hq * sizeof(float));
  }
  return ATTN_OK;
}

/* What setup_layer allocated (safe on a partly set up graph). */
static void free_layer(attn_mha *g) {
  attn__rope_plan_free(&g->rope);
  free(g->alibi);
  free(g->sinks);
  attn_tensor_free(g->pmask);
  g->alibi = g->sinks = NULL;
  g->pmask = NULL;
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
/* A weight stored [in, out] (Conv1D) as the linear stage's [out, in] view:
 * the same elements, shape and strides of the last two dims swapped. */
static attn_view transposed_view(const attn_tensor *t) {
  attn_view v = attn__tensor_view4(t);
  const int64_t n = v.shape[2], st = v.strides[2];
  v.shape[2] = v.shape[3], v.strides[2] = v.strides[3];
  v.shape[3] = n, v.strides[3] = st;
  return v;
}

/* Check weight t ([out, in], or [in, out] when tr) and view it as [out, in]. */
static attn_status weight_view(attn_context *ctx, const attn_tensor *t, const char *name,
                               int64_t out, int64_t in, bool tr, attn_view *v) {
  const int64_t sh[2] = {tr ? in : out, tr ? out : in};
  attn_status s = check_arg(ctx, t, name, 2, sh, 1);
  if (!s) *v = tr ? transposed_view(t) : attn__tensor_view4(t);
  return s;
}

static attn_status setup_weights(attn_mha *g, const attn_mha_weights *w, bool bias_all,
                                 unsigned biases, unsigned tr, bool per_head) {
  attn_status s;
  attn_context *ctx = g->ctx;
  const int64_t HqD = g->Hq * g->D, HkvD = g->Hkv * g->D;
  const attn_tensor *const given[10] = {w->wq, w->wk, w->wv, w->wo, w->bq,
                                        w->bk, w->bv, w->bo, w->in_proj, w->in_bias};
  memcpy(g->user_w, given, sizeof given); /* [10], [11]: the norm weights (setup_layer) */

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
  if (per_head && !w->in_proj)
    return attn__error(ATTN_ERR_INVALID_ARG, "desc.qkv_per_head: set but no in_proj is given");
  if (per_head && g->Hkv != g->Hq)
    return attn__error(ATTN_ERR_INVALID_ARG,
                       "desc.qkv_per_head: needs n_kv_heads %lld == n_heads %lld",
                       (long long)g->Hkv, (long long)g->Hq);
  /* Which projections have a bias: all with desc.bias, else desc.biases; a
   * packed in_bias serves q, k and v together. */
  if (w->in_proj && (biases & 7u) && (biases & 7u) != 7u)
    return attn__error(ATTN_ERR_INVALID_ARG,
                       "desc.biases: in_proj has one in_bias for q, k and v: name all three or none");
  const char *bnames[4] = {w->in_proj ? "in_bias" : "bq", "bk", "bv", "bo"};
  const attn_tensor *bs[4] = {w->in_proj ? w->in_bias : w->bq, w->in_proj ? w->in_bias : w->bk,
                              w->in_proj ? w->in_bias : w->bv, w->bo};
  for (int i = 0; i < 4; i++) {
    const int want = (biases >> i) & 1u;
    if (want && !bs[i])
      return attn__error(ATTN_ERR_INVALID_ARG, "%s: NULL but %s", bnames[i],
                         bias_all ? "desc.bias is true" : "desc.biases names it");
    if (!want && bs[i])
      return attn__error(ATTN_ERR_INVALID_ARG, "%s: given but %s", bnames[i],
                         biases == 0 ? "desc.bias is false" : "desc.biases does not name it");
  }
  const bool bias = (biases & 7u) != 0; /* for the packed form */

  if (w->in_proj) {
    const int64_t rows = HqD + 2 * HkvD;
    const int64_t pb[1] = {rows};
    if ((tr & 7u) && (tr & 7u) != 7u)
      return attn__error(ATTN_ERR_INVALID_ARG,
                         "desc.transposed: in_proj is one matrix for q, k and v: name all three or none");
    attn_view pw;
    if ((s = weight_view(ctx, w->in_proj, "in_proj", rows, g->E, tr & 1u, &pw))) return s;
    if (bias && (s = check_arg(ctx, w->in_bias, "in_bias", 1, pb, 0))) return s;
    /* Row blocks q, k, v of the packed matrix (column blocks of a transposed
     * one) as views: no copy. */
    int64_t first[3] = {0, HqD, HqD + HkvD}, n[3] = {HqD, HkvD, HkvD};
    if (per_head) /* head 0's rows of each; run_linear steps through the heads */
      for (int i = 0; i < 3; i++) first[i] = i * g->D, n[i] = g->D;
    g->qkv_per_head = per_head;
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
    if ((s = weight_view(ctx, w->wq, "wq", HqD, g->E, tr & ATTN_PROJ_Q, &g->w[W_Q])) ||
        (s = weight_view(ctx, w->wk, "wk", HkvD, g->Ekv, tr & ATTN_PROJ_K, &g->w[W_K])) ||
        (s = weight_view(ctx, w->wv, "wv", HkvD, g->Ekv, tr & ATTN_PROJ_V, &g->w[W_V])))
      return s;
    const int64_t bq[1] = {HqD}, bkv[1] = {HkvD};
    const attn_tensor *bt[3] = {w->bq, w->bk, w->bv};
    const int64_t *bsh[3] = {bq, bkv, bkv};
    for (int i = 0; i < 3; i++) {
      if (!((biases >> i) & 1u)) continue;
      if ((s = check_arg(ctx, bt[i], bnames[i], 1, bsh[i], 0))) return s;
      g->w[B_Q + i] = attn__tensor_view4(bt[i]);
    }
  }
  const int64_t bo[1] = {g->E};
  if ((s = weight_view(ctx, w->wo, "wo", g->E, HqD, tr & ATTN_PROJ_O, &g->w[W_O]))) return s;
  if (biases & ATTN_PROJ_O) {
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

  if ((s = setup_weights(g, w, desc->bias, desc->bias ? ATTN_PROJ_ALL : desc->biases,
                           desc->transposed, desc->qkv_per_head)) ||
      (s = setup_layer(g, desc))) {
    free_layer(g);
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
    free_layer(g);
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
  free_layer(g);
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

static attn_status check_kvx(attn_mha *g, const attn_tensor *x, const attn_tensor *kv_x,
                             const attn_tensor *out) {
  attn_status s;
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
    if (g->has_rope)
      return attn__error(ATTN_ERR_INVALID_ARG,
                         "kv_x: the graph rotates q and k (desc.rope), which needs self attention");
  } else if (g->Ekv != g->E) {
    return attn__error(ATTN_ERR_INVALID_ARG, "kv_x: NULL (self attention) but d_kv %lld != d_model %lld",
                       (long long)g->Ekv, (long long)g->E);
  }
  return ATTN_OK;
}

/* The cache's key mask, made at the first padding token: every key cached
 * so far is a token. */
static attn_status cache_make_mask(attn_kv_cache *c) {
  const size_t n = (size_t)(c->batch * c->capacity);
  const int64_t shape[2] = {c->batch, c->capacity};
  c->hmask = malloc(n * sizeof *c->hmask);
  if (!c->hmask) return attn__error(ATTN_ERR_NOMEM, "out of host memory for the cache's key mask");
  for (size_t i = 0; i < n; i++) c->hmask[i] = 1.0f;
  attn_status s = attn__tensor_alloc(c->g->ctx, ATTN_F32, 2, shape, &c->kmask);
  if (!s) s = attn__be_write(c->g->ctx, c->kmask->st->buf, 0, n * sizeof(float), c->hmask);
  if (s) {
    attn_tensor_free(c->kmask);
    free(c->hmask);
    c->kmask = NULL, c->hmask = NULL;
  }
  return s;
}

/* One run of the graph (attn_mha_run, attn_mha_run_cached, attn_mha_run_ex). */
static attn_status mha_run(attn_mha *g, const attn_mha_run_args *a) {
  attn_status s;
  if (!g) return attn__error(ATTN_ERR_INVALID_ARG, "graph: NULL");
  if (g->released) return released_error();
  const attn_tensor *x = a->x;
  attn_kv_cache *c = a->cache;
  if ((s = check_x_out(g, x, a->out))) return s;
  const int64_t B = x->shape[0], S = x->shape[1];
  int64_t Skv = S;
  if (c) {
    if (c->g != g) return attn__error(ATTN_ERR_INVALID_ARG, "cache: bound to another graph");
    if (a->kv_x) return attn__error(ATTN_ERR_INVALID_ARG, "kv_x: a cached run is self attention");
    if (a->mask)
      return attn__error(ATTN_ERR_INVALID_ARG,
                         "mask: not with a cache (use attention_mask for padding)");
    if (B != c->batch)
      return attn__error(ATTN_ERR_SHAPE, "x: batch %lld != the cache's batch %lld",
                         (long long)B, (long long)c->batch);
    for (int64_t b = 0; b < B; b++) {
      const int64_t n = a->n_new ? a->n_new[b] : S;
      if (n < 0 || n > S)
        return attn__error(ATTN_ERR_INVALID_ARG, "n_new[%lld]: %lld not in 0..S %lld",
                           (long long)b, (long long)n, (long long)S);
      if (n > c->capacity - c->len[b]) {
        if (!a->n_new)
          return attn__error(ATTN_ERR_CAPACITY, "x: %lld new tokens + %lld cached > capacity %lld",
                             (long long)n, (long long)c->len[b], (long long)c->capacity);
        return attn__error(ATTN_ERR_CAPACITY,
                           "x: row %lld: %lld new tokens + %lld cached > capacity %lld",
                           (long long)b, (long long)n, (long long)c->len[b],
                           (long long)c->capacity);
      }
    }
  } else {
    if (a->n_new) return attn__error(ATTN_ERR_INVALID_ARG, "n_new: only with a cache");
    if ((s = check_kvx(g, x, a->kv_x, a->out))) return s;
    if (a->kv_x) Skv = a->kv_x->shape[1];
    if (a->mask && a->attention_mask)
      return attn__error(ATTN_ERR_INVALID_ARG,
                         "mask: not together with attention_mask (fold the padding into it)");
  }
  /* attention_mask: [B, Skv], 0 or 1 */
  int pad = 0;
  if (a->attention_mask)
    for (int64_t i = 0; i < B * Skv; i++) {
      const int32_t m = a->attention_mask[i];
      if (m != 0 && m != 1)
        return attn__error(ATTN_ERR_INVALID_ARG, "attention_mask[%lld]: %d (1 = token, 0 = padding)",
                           (long long)i, (int)m);
      if (!m && (!c || (a->n_new ? i % S < a->n_new[i / S] : 1))) pad = 1;
    }

  run_ctx r = {.g = g, .x = x, .kvx = a->kv_x ? a->kv_x : x, .out = a->out, .c = c, .B = B,
               .S = S, .Snew = Skv, .n_new = a->n_new, .mask = a->mask,
               .mask_kind = a->mask_kind};
  r.kt = c ? c->k : g->kbuf;
  r.vt = c ? c->v : g->vbuf;
  r.kv_rows = c ? c->capacity : Skv;
  r.groups = r.grp;
  r.ngroups = 1;
  r.grp[0] = (row_group){0, B, 0, Skv};
  int32_t *pos = NULL;
  row_group *groups = NULL;
  if (c) {
    int uniform = 1;
    for (int64_t b = 0; b < B; b++)
      if (c->len[b] != c->len[0] || (a->n_new && a->n_new[b] != S)) uniform = 0;
    if (uniform) {
      r.grp[0].at = c->len[0];
    } else {
      groups = malloc((size_t)B * sizeof *groups);
      if (!groups) return attn__error(ATTN_ERR_NOMEM, "out of host memory for the run");
      for (int64_t b = 0; b < B; b++)
        groups[b] = (row_group){b, 1, c->len[b], a->n_new ? a->n_new[b] : S};
      r.groups = groups;
      r.ngroups = (int)B;
    }
  }
  /* RoPE positions: position_ids, or the index (after each row's cache length) */
  if (g->has_rope) {
    int64_t max_pos = -1;
    if (a->position_ids) {
      s = attn__check_positions(a->position_ids, B * S, "position_ids", &max_pos);
      r.pos = a->position_ids;
    } else {
      pos = malloc((size_t)(B * S) * sizeof *pos);
      if (!pos) s = attn__error(ATTN_ERR_NOMEM, "out of host memory for the positions");
      for (int64_t b = 0; !s && b < B; b++)
        for (int64_t i = 0; i < S; i++) {
          const int64_t p = (c ? c->len[b] : 0) + i;
          if (p > INT32_MAX) {
            s = attn__error(ATTN_ERR_INVALID_ARG, "x: position %lld past int32", (long long)p);
            break;
          }
          pos[b * S + i] = (int32_t)p;
          if (p > max_pos) max_pos = p;
        }
      r.pos = pos;
    }
    if (!s) s = attn__rope_plan_prepare(g->ctx, &g->rope, max_pos);
  } else if (a->position_ids) {
    s = attn__error(ATTN_ERR_INVALID_ARG, "position_ids: given but the graph has no desc.rope");
  }
  /* Key padding: a plain run's into pmask; a cached run's into the cache's mask. */
  if (!s && !c && pad) {
    const int64_t cols = g->max_kv > g->max_s ? g->max_kv : g->max_s;
    if (!g->pmask) {
      const int64_t shape[2] = {g->max_b, cols};
      s = attn__tensor_alloc(g->ctx, ATTN_F32, 2, shape, &g->pmask);
    }
    float *row = s ? NULL : malloc((size_t)Skv * sizeof *row);
    if (!s && !row) s = attn__error(ATTN_ERR_NOMEM, "out of host memory for the key mask");
    for (int64_t b = 0; !s && b < B; b++) {
      for (int64_t j = 0; j < Skv; j++) row[j] = (float)a->attention_mask[b * Skv + j];
      s = attn__be_write(g->ctx, g->pmask->st->buf, (size_t)(b * cols) * sizeof(float),
                         (size_t)Skv * sizeof(float), row);
    }
    free(row);
    r.key_mask = true;
  }
  if (!s && c && (pad || c->kmask)) {
    if (!c->kmask) s = cache_make_mask(c);
    for (int64_t b = 0; !s && b < B; b++) {
      const int64_t n = a->n_new ? a->n_new[b] : S;
      float *m = c->hmask + b * c->capacity + c->len[b];
      for (int64_t i = 0; i < n; i++)
        m[i] = a->attention_mask ? (float)a->attention_mask[b * S + i] : 1.0f;
      if (n)
        s = attn__be_write(g->ctx, c->kmask->st->buf,
                           (size_t)(b * c->capacity + c->len[b]) * sizeof(float),
                           (size_t)n * sizeof(float), m);
    }
    /* the mask is kept up to date from its first padding token on, and read
     * while some key it covers is hidden */
    r.key_mask = pad;
    for (int64_t b = 0; b < B; b++) r.key_mask = r.key_mask || c->npad[b] > 0;
  }
  if (!s) s = run_nodes(&r);
  /* The lengths move only when the whole run succeeded: a failed run leaves
   * rows past them that the next run overwrites. */
  if (!s && c)
    for (int64_t b = 0; b < B; b++) {
      const int64_t n = a->n_new ? a->n_new[b] : S;
      if (a->attention_mask)
        for (int64_t i = 0; i < n; i++) c->npad[b] += a->attention_mask[b * S + i] == 0;
      c->len[b] += n;
    }
  free(pos);
  free(groups);
  return s;
}

attn_status attn_mha_run(attn_mha *g, const attn_tensor *x, const attn_tensor *kv_x,
                         attn_tensor *out) {
  ATTN_ENTER("attn_mha_run");
  attn_mha_run_args a = ATTN_MHA_RUN_ARGS_INIT;
  a.x = x, a.kv_x = kv_x, a.out = out;
  return mha_run(g, &a);
}

attn_status attn_mha_run_ex(attn_mha *g, const attn_mha_run_args *args) {
  ATTN_ENTER("attn_mha_run_ex");
  if (!args) return attn__error(ATTN_ERR_INVALID_ARG, "args: NULL");
  attn_mha_run_args a;
  attn_status s = attn__copy_struct(&a, sizeof a, args, "args", "ATTN_MHA_RUN_ARGS_INIT");
  return s ? s : mha_run(g, &a);
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
  if (c) c->len = calloc((size_t)batch, sizeof *c->len);
  if (c && c->len) c->npad = calloc((size_t)batch, sizeof *c->npad);
  if (!c || !c->len || !c->npad) {
    if (c) free(c->len);
    free(c);
    return attn__error(ATTN_ERR_NOMEM, "out of host memory for the cache");
  }
  const int64_t shape[3] = {batch, capacity, g->Hkv * g->D};
  if ((s = attn__tensor_alloc(g->ctx, dtype, 3, shape, &c->k)) ||
      (s = attn__tensor_alloc(g->ctx, dtype, 3, shape, &c->v))) {
    attn_tensor_free(c->k);
    free(c->len);
    free(c->npad);
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
  attn_tensor_free(c->kmask);
  free(c->hmask);
  free(c->len);
  free(c->npad);
  if (c->prev) c->prev->next = c->next;
  else g->caches = c->next;
  if (c->next) c->next->prev = c->prev;
  free(c);
  if (g->released && !g->caches) graph_destroy(g);
}

int64_t attn_kv_cache_length(const attn_kv_cache *c) {
  int64_t m = 0;
  for (int64_t b = 0; c && b < c->batch; b++)
    if (c->len[b] > m) m = c->len[b];
  return m;
}
int64_t attn_kv_cache_capacity(const attn_kv_cache *c) { return c ? c->capacity : 0; }
void attn_kv_cache_reset(attn_kv_cache *c) {
  for (int64_t b = 0; c && b < c->batch; b++) c->len[b] = c->npad[b] = 0;
}

int64_t attn_kv_cache_row_length(const attn_kv_cache *c, int64_t row) {
  return c && row >= 0 && row < c->batch ? c->len[row] : -1;
}

static attn_status check_row(const attn_kv_cache *c, int64_t row) {
  if (!c) return attn__error(ATTN_ERR_INVALID_ARG, "cache: NULL");
  if (row < 0 || row >= c->batch)
    return attn__error(ATTN_ERR_INVALID_ARG, "row: %lld not in 0..%lld", (long long)row,
                       (long long)(c->batch - 1));
  return ATTN_OK;
}

attn_status attn_kv_cache_truncate(attn_kv_cache *c, int64_t row, int64_t length) {
  ATTN_ENTER("attn_kv_cache_truncate");
  attn_status s = check_row(c, row);
  if (s) return s;
  if (length < 0 || length > c->len[row])
    return attn__error(ATTN_ERR_INVALID_ARG, "length: %lld not in 0..%lld (row %lld's length)",
                       (long long)length, (long long)c->len[row], (long long)row);
  c->len[row] = length;
  c->npad[row] = 0;
  for (int64_t j = 0; c->hmask && j < length; j++)
    c->npad[row] += c->hmask[row * c->capacity + j] == 0.0f;
  return ATTN_OK;
}

attn_status attn_kv_cache_reset_row(attn_kv_cache *c, int64_t row) {
  ATTN_ENTER("attn_kv_cache_reset_row");
  attn_status s = check_row(c, row);
  if (s) return s;
  c->len[row] = c->npad[row] = 0;
  return ATTN_OK;
}

attn_status attn_mha_run_cached(attn_mha *g, attn_kv_cache *c, const attn_tensor *x,
                                attn_tensor *out) {
  ATTN_ENTER("attn_mha_run_cached");
  if (!c && g && !g->released) return attn__error(ATTN_ERR_INVALID_ARG, "cache: NULL");
  attn_mha_run_args a = ATTN_MHA_RUN_ARGS_INIT;
  a.x = x, a.out = out, a.cache = c;
  return mha_run(g, &a);
}
