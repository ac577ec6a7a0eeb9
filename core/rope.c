/* Rotary position embedding and RMSNorm: the frequency rules (transformers'
 * modeling_rope_utils, in double), the cos/sin tables the core computes from
 * them, the checks and descriptors of the ROPE and RMSNORM stages (ABI 2.3),
 * and the standalone calls attn_rope and attn_rms_norm. The graph (graph.c)
 * uses the same plan and runners. */
#include "internal.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

static int finite_pos(double x) { return isfinite(x) && x > 0; }

/* A copy of the caller's config with its defaults resolved, checked; r the
 * rotary dim for head dim D. */
static attn_status check_config(attn_context *ctx, const attn_rope_config *in, int64_t D,
                                const char *name, attn_rope_config *c, int64_t *r) {
  attn_status s;
  if (!in) return attn__error(ATTN_ERR_INVALID_ARG, "%s: NULL", name);
  if ((s = attn__copy_struct(c, sizeof *c, in, name, "ATTN_ROPE_CONFIG_INIT"))) return s;
  if (c->type < ATTN_ROPE_DEFAULT || c->type > ATTN_ROPE_TABLE)
    return attn__error(ATTN_ERR_INVALID_ARG, "%s.type: %d is not a RoPE rule", name,
                       (int)c->type);
  *r = c->rotary_dim ? c->rotary_dim : D;
  if (*r < 2 || *r > D || *r % 2)
    return attn__error(ATTN_ERR_INVALID_ARG,
                       "%s.rotary_dim: %lld (must be even, >= 2 and <= head_dim %lld)", name,
                       (long long)*r, (long long)D);
  if (c->theta == 0) c->theta = 10000.0;
  if (!(isfinite(c->theta) && c->theta > 1))
    return attn__error(ATTN_ERR_INVALID_ARG, "%s.theta: %g (must be finite and > 1)", name,
                       c->theta);
  const attn_rope_type t = c->type;
  if ((t == ATTN_ROPE_LINEAR || t == ATTN_ROPE_DYNAMIC || t == ATTN_ROPE_LLAMA3 ||
       t == ATTN_ROPE_YARN) &&
      !finite_pos(c->factor))
    return attn__error(ATTN_ERR_INVALID_ARG, "%s.factor: %g (must be finite and > 0)", name,
                       c->factor);
  if (t == ATTN_ROPE_DYNAMIC) {
    if (c->max_position_embeddings < 1)
      return attn__error(ATTN_ERR_INVALID_ARG, "%s.max_position_embeddings: %lld < 1", name,
                         (long long)c->max_position_embeddings);
    if (*r < 4)
      return attn__error(ATTN_ERR_INVALID_ARG,
                         "%s.rotary_dim: dynamic NTK needs a rotary dim above 2 (r / (r - 2))",
                         name);
  }
  if ((t == ATTN_ROPE_LLAMA3 || t == ATTN_ROPE_YARN) && c->original_max_position_embeddings < 1)
    return attn__error(ATTN_ERR_INVALID_ARG, "%s.original_max_position_embeddings: %lld < 1",
                       name, (long long)c->original_max_position_embeddings);
  if (t == ATTN_ROPE_LLAMA3 &&
      !(finite_pos(c->low_freq_factor) && isfinite(c->high_freq_factor) &&
        c->high_freq_factor > c->low_freq_factor))
    return attn__error(ATTN_ERR_INVALID_ARG,
                       "%s.low_freq_factor, high_freq_factor: %g, %g (need 0 < low < high)",
                       name, c->low_freq_factor, c->high_freq_factor);
  if (t == ATTN_ROPE_YARN) {
    if (c->beta_fast == 0) c->beta_fast = 32;
    if (c->beta_slow == 0) c->beta_slow = 1;
    if (!finite_pos(c->beta_fast) || !finite_pos(c->beta_slow))
      return attn__error(ATTN_ERR_INVALID_ARG, "%s.beta_fast, beta_slow: %g, %g (must be > 0)",
                         name, c->beta_fast, c->beta_slow);
    if (!(isfinite(c->attention_factor) && c->attention_factor >= 0))
      return attn__error(ATTN_ERR_INVALID_ARG, "%s.attention_factor: %g (must be >= 0)", name,
                         c->attention_factor);
    if (!isfinite(c->mscale) || !isfinite(c->mscale_all_dim))
      return attn__error(ATTN_ERR_INVALID_ARG, "%s.mscale: not finite", name);
  }
  if (t == ATTN_ROPE_TABLE) {
    const attn_tensor *tb[2] = {c->cos, c->sin};
    const char *tn[2] = {"cos", "sin"};
    for (int i = 0; i < 2; i++) {
      if (!tb[i]) return attn__error(ATTN_ERR_INVALID_ARG, "%s.%s: NULL (type TABLE)", name, tn[i]);
      if (ctx && tb[i]->st->ctx != ctx)
        return attn__error(ATTN_ERR_INVALID_ARG, "%s.%s: tensor belongs to another context",
                           name, tn[i]);
      if (tb[i]->ndim != 2 || tb[i]->shape[1] != *r / 2)
        return attn__error(ATTN_ERR_SHAPE, "%s.%s: shape must be [positions, %lld]", name, tn[i],
                           (long long)(*r / 2));
      if (tb[i]->dtype != ATTN_F32)
        return attn__error(ATTN_ERR_INVALID_ARG, "%s.%s: dtype %s; the tables are f32", name,
                           tn[i], attn_dtype_str(tb[i]->dtype));
    }
    if (c->cos->shape[0] != c->sin->shape[0])
      return attn__error(ATTN_ERR_SHAPE, "%s.sin: %lld positions != cos's %lld", name,
                         (long long)c->sin->shape[0], (long long)c->cos->shape[0]);
  } else {
    c->cos = c->sin = NULL; /* never referenced by a computed rule */
  }
  return ATTN_OK;
}

/* transformers' get_mscale. */
static double yarn_mscale(double scale, double m) {
  return scale <= 1 ? 1.0 : 0.1 * m * log(scale) + 1.0;
}

/* The frequencies of a checked config (r its rotary dim); n the call's
 * largest position + 1 (DYNAMIC). */
static void frequencies(const attn_rope_config *c, int64_t r, int64_t n, double *f, double *A) {
  const int64_t h = r / 2;
  double theta = c->theta;
  *A = 1.0;
  if (c->type == ATTN_ROPE_DYNAMIC) {
    const double M = (double)c->max_position_embeddings;
    const double len = n > c->max_position_embeddings ? (double)n : M;
    theta *= pow(c->factor * len / M - (c->factor - 1), (double)r / (double)(r - 2));
  }
  for (int64_t i = 0; i < h; i++) f[i] = 1.0 / pow(theta, (double)(2 * i) / (double)r);
  if (c->type == ATTN_ROPE_LINEAR) {
    for (int64_t i = 0; i < h; i++) f[i] /= c->factor;
  } else if (c->type == ATTN_ROPE_LLAMA3) {
    const double O = (double)c->original_max_position_embeddings;
    const double low_wl = O / c->low_freq_factor, high_wl = O / c->high_freq_factor;
    for (int64_t i = 0; i < h; i++) {
      const double wl = 2 * M_PI / f[i];
      if (wl > low_wl) {
        f[i] /= c->factor;
      } else if (!(wl < high_wl)) {
        const double s = (O / wl - c->low_freq_factor) / (c->high_freq_factor - c->low_freq_factor);
        f[i] = (1 - s) * f[i] / c->factor + s * f[i];
      }
    }
  } else if (c->type == ATTN_ROPE_YARN) {
    if (c->attention_factor > 0) *A = c->attention_factor;
    else if (c->mscale != 0 && c->mscale_all_dim != 0)
      *A = yarn_mscale(c->factor, c->mscale) / yarn_mscale(c->factor, c->mscale_all_dim);
    else *A = yarn_mscale(c->factor, 1.0);
    const double O = (double)c->original_max_position_embeddings, lt = log(c->theta);
    double low = (double)r * log(O / (c->beta_fast * 2 * M_PI)) / (2 * lt);
    double high = (double)r * log(O / (c->beta_slow * 2 * M_PI)) / (2 * lt);
    if (!c->yarn_no_truncate) low = floor(low), high = ceil(high);
    if (low < 0) low = 0;
    if (high > (double)(r - 1)) high = (double)(r - 1);
    if (low == high) high += 0.001; /* transformers' guard against a zero-width ramp */
    for (int64_t i = 0; i < h; i++) {
      double ramp = ((double)i - low) / (high - low);
      ramp = ramp < 0 ? 0 : ramp > 1 ? 1 : ramp;
      f[i] = f[i] / c->factor * ramp + f[i] * (1 - ramp);
    }
  }
}

attn_status attn_rope_frequencies(const attn_rope_config *cfg, int64_t head_dim, int64_t seq_len,
                                  double *inv_freq, double *attention_scaling) {
  ATTN_ENTER("attn_rope_frequencies");
  attn_rope_config c;
  int64_t r;
  if (head_dim < 2)
    return attn__error(ATTN_ERR_INVALID_ARG, "head_dim: %lld < 2", (long long)head_dim);
  if (seq_len < 0)
    return attn__error(ATTN_ERR_INVALID_ARG, "seq_len: %lld < 0", (long long)seq_len);
  attn_status s = check_config(NULL, cfg, head_dim, "cfg", &c, &r);
  if (s) return s;
  if (c.type == ATTN_ROPE_TABLE)
    return attn__error(ATTN_ERR_INVALID_ARG, "cfg.type: TABLE has no frequencies");
  if (!inv_freq) return attn__error(ATTN_ERR_INVALID_ARG, "inv_freq: NULL");
  double A;
  frequencies(&c, r, seq_len, inv_freq, &A);
  if (attention_scaling) *attention_scaling = A;
  return ATTN_OK;
}

/* ---- the plan: a checked config and its table ----------------------------------- */

attn_status attn__rope_plan_init(attn_context *ctx, const attn_rope_config *cfg, int64_t D,
                                 const char *name, attn_rope_plan *p) {
  memset(p, 0, sizeof *p);
  attn_status s = check_config(ctx, cfg, D, name, &p->cfg, &p->r);
  if (s) return s;
  p->D = D;
  if (p->cfg.type == ATTN_ROPE_TABLE) {
    p->cos = (attn_tensor *)p->cfg.cos; /* the caller's: never written, never freed */
    p->sin = (attn_tensor *)p->cfg.sin;
    p->rows = p->cfg.cos->shape[0];
  }
  return ATTN_OK;
}

void attn__rope_plan_free(attn_rope_plan *p) {
  if (p->owned) {
    attn_tensor_free(p->cos);
    attn_tensor_free(p->sin);
  }
  memset(p, 0, sizeof *p);
}

/* Write n floats into a contiguous f32 tensor of the core's own. */
static attn_status upload_f32(attn_context *ctx, attn_tensor *t, const float *h, size_t n) {
  return attn__be_write(ctx, t->st->buf, 0, n * sizeof(float), h);
}

attn_status attn__rope_plan_prepare(attn_context *ctx, attn_rope_plan *p, int64_t max_pos) {
  if (max_pos < 0) return ATTN_OK; /* no tokens */
  if (p->cfg.type == ATTN_ROPE_TABLE) {
    if (max_pos >= p->rows)
      return attn__error(ATTN_ERR_INVALID_ARG,
                         "position %lld: past the RoPE tables' %lld positions",
                         (long long)max_pos, (long long)p->rows);
    return ATTN_OK;
  }
  /* DYNAMIC's frequencies depend on the call's largest position once it is
   * past M: then the table is made for exactly this call. */
  const int dyn = p->cfg.type == ATTN_ROPE_DYNAMIC;
  const int64_t n = dyn && max_pos + 1 > p->cfg.max_position_embeddings ? max_pos + 1 : 0;
  if (p->owned && max_pos < p->rows && (!dyn || n == p->dyn_n)) return ATTN_OK;
  int64_t rows = max_pos + 1;
  if (p->owned && !(dyn && n != p->dyn_n) && rows < 2 * p->rows) rows = 2 * p->rows;
  if (rows < 64) rows = 64;
  const int64_t h = p->r / 2;
  int64_t cells;
  if (attn__mul_overflow(rows, h, &cells) || cells > ((int64_t)1 << 40))
    return attn__error(ATTN_ERR_OVERFLOW, "position %lld: a RoPE table of %lld x %lld overflows",
                       (long long)max_pos, (long long)rows, (long long)h);
  double *f = malloc((size_t)h * sizeof *f);
  float *cs = malloc((size_t)cells * sizeof *cs), *sn = malloc((size_t)cells * sizeof *sn);
  attn_tensor *tc = NULL, *ts = NULL;
  attn_status s = ATTN_OK;
  if (!f || !cs || !sn) s = attn__error(ATTN_ERR_NOMEM, "out of host memory for a RoPE table");
  if (!s) {
    double A;
    frequencies(&p->cfg, p->r, n, f, &A);
    for (int64_t q = 0; q < rows; q++)
      for (int64_t i = 0; i < h; i++) {
        const double a = (double)q * f[i];
        cs[q * h + i] = (float)(cos(a) * A);
        sn[q * h + i] = (float)(sin(a) * A);
      }
    const int64_t shape[2] = {rows, h};
    if (!(s = attn__tensor_alloc(ctx, ATTN_F32, 2, shape, &tc)) &&
        !(s = attn__tensor_alloc(ctx, ATTN_F32, 2, shape, &ts)) &&
        !(s = upload_f32(ctx, tc, cs, (size_t)cells)))
      s = upload_f32(ctx, ts, sn, (size_t)cells);
  }
  free(f);
  free(cs);
  free(sn);
  if (s) {
    attn_tensor_free(tc);
    attn_tensor_free(ts);
    return s;
  }
  if (p->owned) {
    attn_tensor_free(p->cos);
    attn_tensor_free(p->sin);
  }
  p->cos = tc, p->sin = ts, p->rows = rows, p->dyn_n = n, p->owned = true;
  return ATTN_OK;
}

attn_status attn__run_rope(attn_context *ctx, const attn_rope_plan *p, const attn_view *x,
                           const attn_view *y, const int32_t *positions) {
  attn_rope_desc d;
  memset(&d, 0, sizeof d);
  d.struct_size = sizeof d;
  d.x = *x;
  d.y = *y;
  d.cos = attn__tensor_view4(p->cos);
  d.sin = attn__tensor_view4(p->sin);
  d.positions = positions;
  d.rot_dim = p->r;
  const attn_view *views[2] = {&d.x, &d.y};
  d.features = (p->cfg.interleaved ? ATTN_FEAT_ROPE_INTERLEAVED : 0) |
               attn__dtype_features(views, 2);
  return attn__be_stage(ctx, ATTN_STAGE_ROPE, &d);
}

attn_status attn__run_rmsnorm(attn_context *ctx, const attn_view *x, const attn_view *w,
                              const attn_view *y, float eps, bool offset) {
  attn_rmsnorm_desc d;
  memset(&d, 0, sizeof d);
  d.struct_size = sizeof d;
  d.x = *x;
  d.weight = *w;
  d.y = *y;
  d.eps = eps;
  const attn_view *views[3] = {&d.x, &d.weight, &d.y};
  d.features = (offset ? ATTN_FEAT_NORM_OFFSET : 0) | attn__dtype_features(views, 3);
  return attn__be_stage(ctx, ATTN_STAGE_RMSNORM, &d);
}

/* ---- the standalone calls --------------------------------------------------------- */

/* y is x itself, or shares no storage with it. */
static attn_status check_inplace(const attn_tensor *x, const attn_tensor *y) {
  if (attn__tensors_same_view(x, y)) return ATTN_OK;
  if (attn__tensors_overlap(x, y))
    return attn__error(ATTN_ERR_INVALID_ARG, "y: overlaps x (only x itself may be written in place)");
  return ATTN_OK;
}

static attn_status check_same_shape(attn_context *ctx, const attn_tensor *x, const attn_tensor *y) {
  char a[96], b[96];
  if (!x) return attn__error(ATTN_ERR_INVALID_ARG, "x: NULL");
  if (!y) return attn__error(ATTN_ERR_INVALID_ARG, "y: NULL");
  if (x->st->ctx != ctx)
    return attn__error(ATTN_ERR_INVALID_ARG, "x: tensor belongs to another context");
  if (y->st->ctx != ctx)
    return attn__error(ATTN_ERR_INVALID_ARG, "y: tensor belongs to another context");
  if (y->ndim != x->ndim || memcmp(y->shape, x->shape, (size_t)x->ndim * sizeof x->shape[0]))
    return attn__error(ATTN_ERR_SHAPE, "y: shape %s != x's %s",
                       attn__fmt_dims(a, sizeof a, y->ndim, y->shape),
                       attn__fmt_dims(b, sizeof b, x->ndim, x->shape));
  attn_status s = attn__check_output_strides(y, "y");
  return s ? s : check_inplace(x, y);
}

attn_status attn__check_positions(const int32_t *pos, int64_t n, const char *name,
                                  int64_t *max_pos) {
  int64_t m = -1;
  for (int64_t i = 0; i < n; i++) {
    if (pos[i] < 0)
      return attn__error(ATTN_ERR_INVALID_ARG, "%s[%lld]: %d < 0", name, (long long)i,
                         (int)pos[i]);
    if (pos[i] > m) m = pos[i];
  }
  *max_pos = m;
  return ATTN_OK;
}

attn_status attn_rope(attn_context *ctx, const attn_rope_args *args) {
  ATTN_ENTER("attn_rope");
  attn_status s;
  if (!ctx) return attn__error(ATTN_ERR_INVALID_ARG, "ctx: NULL");
  if (!args) return attn__error(ATTN_ERR_INVALID_ARG, "args: NULL");
  attn_rope_args a;
  if ((s = attn__copy_struct(&a, sizeof a, args, "args", "ATTN_ROPE_ARGS_INIT"))) return s;
  if ((s = check_same_shape(ctx, a.x, a.y))) return s;
  if (a.x->ndim != 4) return attn__error(ATTN_ERR_SHAPE, "x: rank %d != 4", a.x->ndim);
  const int64_t B = a.x->shape[0], S = a.x->shape[2], D = a.x->shape[3];
  attn_rope_plan p;
  if ((s = attn__rope_plan_init(ctx, a.rope, D, "args.rope", &p))) return s;
  int64_t n, max_pos = S - 1;
  if (attn__mul_overflow(B, S, &n)) return attn__error(ATTN_ERR_OVERFLOW, "x: B * S overflows");
  int32_t *own = NULL;
  const int32_t *pos = a.positions;
  if (pos) {
    if ((s = attn__check_positions(pos, n, "args.positions", &max_pos))) return s;
  } else {
    if (S - 1 > INT32_MAX) return attn__error(ATTN_ERR_INVALID_ARG, "x: seq past int32 positions");
    own = malloc((size_t)n * sizeof *own);
    if (!own) return attn__error(ATTN_ERR_NOMEM, "out of host memory for positions");
    for (int64_t i = 0; i < n; i++) own[i] = (int32_t)(i % S);
    pos = own;
  }
  s = attn__rope_plan_prepare(ctx, &p, max_pos);
  if (!s) {
    const attn_view x = attn__tensor_view4(a.x), y = attn__tensor_view4(a.y);
    s = attn__run_rope(ctx, &p, &x, &y, pos);
    /* The table may be freed once the stage is queued: backends keep a
     * buffer alive until the work on it completes. */
  }
  attn__rope_plan_free(&p);
  free(own);
  return s;
}

attn_status attn_rms_norm(attn_context *ctx, const attn_tensor *x, const attn_tensor *weight,
                          float eps, bool offset, attn_tensor *y) {
  ATTN_ENTER("attn_rms_norm");
  attn_status s;
  if (!ctx) return attn__error(ATTN_ERR_INVALID_ARG, "ctx: NULL");
  if ((s = check_same_shape(ctx, x, y))) return s;
  if (!weight) return attn__error(ATTN_ERR_INVALID_ARG, "weight: NULL");
  if (weight->st->ctx != ctx)
    return attn__error(ATTN_ERR_INVALID_ARG, "weight: tensor belongs to another context");
  const int64_t D = x->shape[x->ndim - 1];
  if (weight->ndim != 1 || weight->shape[0] != D)
    return attn__error(ATTN_ERR_SHAPE, "weight: shape must be [%lld] (x's last dim)",
                       (long long)D);
  if (!(isfinite(eps) && eps > 0))
    return attn__error(ATTN_ERR_INVALID_ARG, "eps: %g (must be finite and > 0)", (double)eps);
  if (attn__tensors_overlap(y, weight))
    return attn__error(ATTN_ERR_INVALID_ARG, "y: overlaps weight");
  const attn_view xv = attn__tensor_view4(x), wv = attn__tensor_view4(weight),
                  yv = attn__tensor_view4(y);
  return attn__run_rmsnorm(ctx, &xv, &wv, &yv, eps, offset);
}
