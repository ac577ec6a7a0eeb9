/* config.json and checkpoint tensors -> one attention layer of the MHA graph.
 * See hf_config.h; the formulas are those of tests/data/layers/README.md. */
#include "hf_config.h"

#include <cJSON.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static attn_status fail(attn_status s, char *err, size_t errlen, const char *fmt, ...) {
  if (err && errlen) {
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(err, errlen, fmt, ap);
    va_end(ap);
  }
  return s;
}

#define TRY(call)                    \
  do {                               \
    attn_status s_ = (call);         \
    if (s_ != ATTN_OK) return s_;    \
  } while (0)

/* ---- sizes, layer type, window ---------------------------------------------------- */

/* A positive integer member (required unless found is given). */
static attn_status get_pos(const st_json *o, const char *key, int64_t *v, bool *found, char *err,
                           size_t errlen) {
  bool f = false;
  TRY(st_json_int(o, key, v, found ? &f : NULL, err, errlen));
  if (found) *found = f;
  if ((!found || f) && *v <= 0)
    return fail(ATTN_ERR_FORMAT, err, errlen, "%s: '%s' is %lld; expected > 0", o->file, key,
                (long long)*v);
  return ATTN_OK;
}

static attn_status sizes(const st_json *r, hf_layer *l, const char *e_key, const char *h_key,
                         char *err, size_t errlen) {
  TRY(get_pos(r, e_key, &l->d_model, NULL, err, errlen));
  TRY(get_pos(r, h_key, &l->n_heads, NULL, err, errlen));
  bool f;
  l->n_kv_heads = l->n_heads;
  TRY(get_pos(r, "num_key_value_heads", &l->n_kv_heads, &f, err, errlen));
  if (l->n_heads % l->n_kv_heads)
    return fail(ATTN_ERR_FORMAT, err, errlen, "%s: %s %lld is not a multiple of num_key_value_heads %lld",
                r->file, h_key, (long long)l->n_heads, (long long)l->n_kv_heads);
  l->head_dim = 0;
  TRY(get_pos(r, "head_dim", &l->head_dim, &f, err, errlen));
  if (!f) {
    if (l->d_model % l->n_heads)
      return fail(ATTN_ERR_FORMAT, err, errlen, "%s: %s %lld is not a multiple of %s %lld", r->file,
                  e_key, (long long)l->d_model, h_key, (long long)l->n_heads);
    l->head_dim = l->d_model / l->n_heads;
  }
  return ATTN_OK;
}

static attn_status num_layers(const st_json *r, const char *key, hf_layer *l, char *err,
                              size_t errlen) {
  int64_t n = 0;
  bool f;
  TRY(get_pos(r, key, &n, &f, err, errlen));
  if (f && l->layer >= n)
    return fail(ATTN_ERR_INVALID_ARG, err, errlen, "%s: layer %lld: the model has %s %lld", r->file,
                (long long)l->layer, key, (long long)n);
  return ATTN_OK;
}

/* layer_types[L] when the config has it; else *sliding from the family's
 * default rule (dflt). */
static attn_status layer_type(const st_json *r, hf_layer *l, bool dflt, bool *sliding, char *err,
                              size_t errlen) {
  st_json arr, e;
  size_t n = 0;
  bool f = false;
  TRY(st_json_array(r, "layer_types", &arr, &n, &f, err, errlen));
  if (!f) {
    *sliding = dflt;
    return ATTN_OK;
  }
  if ((uint64_t)l->layer >= n)
    return fail(ATTN_ERR_INVALID_ARG, err, errlen, "%s: layer %lld: layer_types has %zu entries",
                r->file, (long long)l->layer, n);
  TRY(st_json_at(&arr, (size_t)l->layer, &e, err, errlen));
  const char *t = NULL;
  TRY(st_json_string(&e, NULL, &t, NULL, err, errlen));
  if (strcmp(t, "sliding_attention") && strcmp(t, "full_attention"))
    return fail(ATTN_ERR_UNSUPPORTED, err, errlen, "%s: layer_types[%lld] '%s' is not supported",
                r->file, (long long)l->layer, t);
  l->layer_type = t;
  *sliding = !strcmp(t, "sliding_attention");
  return ATTN_OK;
}

static attn_status window(const st_json *r, hf_layer *l, bool sliding, char *err, size_t errlen) {
  l->window = 0;
  if (!sliding) return ATTN_OK;
  bool f;
  TRY(get_pos(r, "sliding_window", &l->window, &f, err, errlen));
  if (!f)
    return fail(ATTN_ERR_FORMAT, err, errlen, "%s: layer %lld is sliding but sliding_window is null",
                r->file, (long long)l->layer);
  return ATTN_OK;
}

static bool opt_bool(const st_json *r, const char *key, bool dflt, attn_status *s, char *err,
                     size_t errlen) {
  bool v = dflt, f;
  *s = st_json_bool(r, key, &v, &f, err, errlen);
  return v;
}

/* ---- RoPE ------------------------------------------------------------------------- */

static attn_status rope_number(const st_json *p, const char *key, double *v, char *err,
                               size_t errlen) {
  bool f;
  return st_json_number(p, key, v, &f, err, errlen);
}

/* The keys of a rope_parameters (or rope_scaling) object that the rules read;
 * any other is refused by name, so that a scheme this code does not know
 * never runs as another. */
static const char *const rope_keys[] = {
    "rope_type", "type", "rope_theta", "factor", "original_max_position_embeddings",
    "low_freq_factor", "high_freq_factor", "beta_fast", "beta_slow", "attention_factor",
    "mscale", "mscale_all_dim", "truncate", "partial_rotary_factor", NULL};

static attn_status rope_check_keys(const st_json *p, char *err, size_t errlen);

/* p: the rope_parameters object of this layer (new form), or the
 * rope_scaling object (old form; may be NULL) with theta given. */
static attn_status rope_from(const st_json *r, const st_json *p, double theta, bool have_theta,
                             hf_layer *l, char *err, size_t errlen) {
  attn_rope_config *c = &l->rope;
  *c = (attn_rope_config)ATTN_ROPE_CONFIG_INIT;
  const char *type = "default";
  bool f = false;
  if (p) {
    TRY(rope_check_keys(p, err, errlen));
    TRY(st_json_string(p, "rope_type", &type, &f, err, errlen));
    if (!f) TRY(st_json_string(p, "type", &type, &f, err, errlen));
    if (!f) type = "default";
    if (!have_theta) {
      TRY(rope_number(p, "rope_theta", &theta, err, errlen));
    }
  }
  if (!strcmp(type, "default")) c->type = ATTN_ROPE_DEFAULT;
  else if (!strcmp(type, "linear")) c->type = ATTN_ROPE_LINEAR;
  else if (!strcmp(type, "dynamic")) c->type = ATTN_ROPE_DYNAMIC;
  else if (!strcmp(type, "llama3")) c->type = ATTN_ROPE_LLAMA3;
  else if (!strcmp(type, "yarn")) c->type = ATTN_ROPE_YARN;
  else
    return fail(ATTN_ERR_UNSUPPORTED, err, errlen, "%s: rope_type '%s' is not supported", r->file,
                type);
  if (!(theta > 1) || !isfinite(theta))
    return fail(ATTN_ERR_FORMAT, err, errlen, "%s: rope_theta %g; expected > 1", r->file, theta);
  c->theta = theta;
  double prf = 1.0;
  TRY(rope_number(r, "partial_rotary_factor", &prf, err, errlen));
  if (p) {
    double factor = 0, o = 0, x;
    TRY(rope_number(p, "factor", &factor, err, errlen));
    c->factor = factor;
    if (c->type != ATTN_ROPE_DEFAULT && !(factor >= 1))
      return fail(ATTN_ERR_FORMAT, err, errlen, "%s: rope factor %g; expected >= 1", r->file, factor);
    TRY(rope_number(p, "original_max_position_embeddings", &o, err, errlen));
    c->original_max_position_embeddings = (int64_t)o;
    TRY(rope_number(p, "low_freq_factor", &c->low_freq_factor, err, errlen));
    TRY(rope_number(p, "high_freq_factor", &c->high_freq_factor, err, errlen));
    TRY(rope_number(p, "beta_fast", &c->beta_fast, err, errlen));
    TRY(rope_number(p, "beta_slow", &c->beta_slow, err, errlen));
    TRY(rope_number(p, "attention_factor", &c->attention_factor, err, errlen));
    TRY(rope_number(p, "mscale", &c->mscale, err, errlen));
    TRY(rope_number(p, "mscale_all_dim", &c->mscale_all_dim, err, errlen));
    bool trunc = true;
    TRY(st_json_bool(p, "truncate", &trunc, &f, err, errlen));
    c->yarn_no_truncate = !trunc;
    x = prf;
    TRY(rope_number(p, "partial_rotary_factor", &x, err, errlen));
    prf = x;
  }
  int64_t m = 0;
  bool fm;
  TRY(get_pos(r, "max_position_embeddings", &m, &fm, err, errlen));
  c->max_position_embeddings = m;
  if ((c->type == ATTN_ROPE_YARN || c->type == ATTN_ROPE_LLAMA3) &&
      !c->original_max_position_embeddings) {
    if (c->type == ATTN_ROPE_LLAMA3)
      return fail(ATTN_ERR_FORMAT, err, errlen,
                  "%s: rope_type llama3 needs original_max_position_embeddings", r->file);
    c->original_max_position_embeddings = m; /* transformers' yarn fallback */
  }
  if (c->type == ATTN_ROPE_DYNAMIC && !fm)
    return fail(ATTN_ERR_FORMAT, err, errlen, "%s: rope_type dynamic needs max_position_embeddings",
                r->file);
  if (!(prf > 0 && prf <= 1))
    return fail(ATTN_ERR_FORMAT, err, errlen, "%s: partial_rotary_factor %g; expected (0, 1]",
                r->file, prf);
  const int64_t rd = (int64_t)((double)l->head_dim * prf); /* transformers: int(D * factor) */
  if (rd < 2 || rd % 2)
    return fail(ATTN_ERR_UNSUPPORTED, err, errlen,
                "%s: partial_rotary_factor %g gives rotary dim %lld; the graph needs an even one",
                r->file, prf, (long long)rd);
  c->rotary_dim = rd == l->head_dim ? 0 : rd;
  return ATTN_OK;
}

/* Every key of p must be one of rope_keys (st_json.node is the cJSON value). */
static attn_status rope_check_keys(const st_json *p, char *err, size_t errlen) {
  const cJSON *o = p->node;
  for (const cJSON *it = o ? o->child : NULL; it; it = it->next) {
    int known = 0;
    for (int i = 0; rope_keys[i]; i++) known |= !strcmp(it->string, rope_keys[i]);
    if (!known)
      return fail(ATTN_ERR_UNSUPPORTED, err, errlen, "%s: %s.%s is not supported", p->file,
                  p->path, it->string);
  }
  return ATTN_OK;
}

/* The layer's RoPE from either form of config. gemma3_text keys
 * rope_parameters by layer type; its old form has rope_local_base_freq for
 * the sliding layers. */
static attn_status rope(const st_json *r, hf_layer *l, bool sliding, bool per_type, char *err,
                        size_t errlen) {
  st_json p, q;
  bool f = false;
  TRY(st_json_object(r, "rope_parameters", &p, &f, err, errlen));
  if (f) {
    if (per_type) {
      const char *t = l->layer_type ? l->layer_type : sliding ? "sliding_attention" : "full_attention";
      bool g = false;
      TRY(st_json_object(&p, t, &q, &g, err, errlen));
      if (g) return rope_from(r, &q, 0, false, l, err, errlen);
    }
    return rope_from(r, &p, 0, false, l, err, errlen);
  }
  /* the old form */
  double theta = 10000;
  TRY(rope_number(r, "rope_theta", &theta, err, errlen));
  if (per_type && sliding) {
    theta = 10000;
    TRY(rope_number(r, "rope_local_base_freq", &theta, err, errlen));
    return rope_from(r, NULL, theta, true, l, err, errlen);
  }
  TRY(st_json_object(r, "rope_scaling", &q, &f, err, errlen));
  return rope_from(r, f ? &q : NULL, theta, true, l, err, errlen);
}

/* ---- families -------------------------------------------------------------------- */

static void llama_names(hf_layer *l, bool bias_o) {
  snprintf(l->module, sizeof l->module, "layers.%lld.self_attn.", (long long)l->layer);
  l->w[HF_Q] = "q_proj.weight", l->w[HF_K] = "k_proj.weight", l->w[HF_V] = "v_proj.weight";
  l->w[HF_O] = "o_proj.weight";
  if (l->biases & ATTN_PROJ_Q) l->b[HF_Q] = "q_proj.bias";
  if (l->biases & ATTN_PROJ_K) l->b[HF_K] = "k_proj.bias";
  if (l->biases & ATTN_PROJ_V) l->b[HF_V] = "v_proj.bias";
  if (bias_o && (l->biases & ATTN_PROJ_O)) l->b[HF_O] = "o_proj.bias";
}

/* The decoder families whose attention is Llama's with options. */
static attn_status llama_like(const st_json *r, hf_layer *l, char *err, size_t errlen) {
  const char *mt = l->model_type;
  attn_status s = ATTN_OK;
  TRY(sizes(r, l, "hidden_size", "num_attention_heads", err, errlen));
  TRY(num_layers(r, "num_hidden_layers", l, err, errlen));
  l->causal = true;
  const bool gemma2 = !strcmp(mt, "gemma2"), gemma3 = !strcmp(mt, "gemma3_text"),
             qwen = !strcmp(mt, "qwen2") || !strcmp(mt, "qwen3"), phi3 = !strcmp(mt, "phi3"),
             oss = !strcmp(mt, "gpt_oss"), mistral = !strcmp(mt, "mistral");
  if (gemma2 || gemma3 || oss || mistral || phi3 || qwen) {
    bool bidir = opt_bool(r, "use_bidirectional_attention", false, &s, err, errlen);
    if (s) return s;
    if (bidir)
      return fail(ATTN_ERR_UNSUPPORTED, err, errlen, "%s: use_bidirectional_attention is not supported",
                  r->file);
  }
  /* which layers slide, when the config has no layer_types (the rules of
   * the families' config classes) */
  bool dflt = false;
  if (mistral || phi3) {
    int64_t w = 0;
    bool f;
    TRY(st_json_int(r, "sliding_window", &w, &f, err, errlen));
    dflt = f;
  } else if (gemma2 || oss) {
    dflt = (l->layer + 1) % 2 != 0;
  } else if (gemma3) {
    int64_t pat = 6;
    bool f;
    TRY(get_pos(r, "sliding_window_pattern", &pat, &f, err, errlen));
    if (!f) TRY(get_pos(r, "_sliding_window_pattern", &pat, &f, err, errlen));
    dflt = (l->layer + 1) % pat != 0;
  } else if (qwen) {
    bool use = opt_bool(r, "use_sliding_window", false, &s, err, errlen);
    if (s) return s;
    int64_t mwl = 0, w = 0;
    bool f, g;
    TRY(st_json_int(r, "max_window_layers", &mwl, &f, err, errlen));
    TRY(st_json_int(r, "sliding_window", &w, &g, err, errlen));
    dflt = use && g && l->layer >= mwl;
  }
  bool sliding = false;
  if (mistral || phi3) sliding = dflt; /* every layer when sliding_window is set */
  else TRY(layer_type(r, l, dflt, &sliding, err, errlen));
  TRY(window(r, l, sliding, err, errlen));
  /* biases */
  bool ab = false;
  if (!strcmp(mt, "llama") || gemma2 || gemma3 || oss || !strcmp(mt, "qwen3")) {
    ab = opt_bool(r, "attention_bias", false, &s, err, errlen);
    if (s) return s;
  }
  l->biases = ab ? ATTN_PROJ_ALL : 0;
  if (!strcmp(mt, "qwen2")) l->biases = ATTN_PROJ_Q | ATTN_PROJ_K | ATTN_PROJ_V;
  /* QK-norm */
  if (!strcmp(mt, "qwen3") || gemma3) {
    double eps = 1e-6;
    bool f;
    TRY(st_json_number(r, "rms_norm_eps", &eps, &f, err, errlen));
    if (!(eps > 0) || !isfinite(eps))
      return fail(ATTN_ERR_FORMAT, err, errlen, "%s: rms_norm_eps %g; expected > 0", r->file, eps);
    l->qk_norm = true, l->norm_offset = gemma3, l->norm_eps = (float)eps;
  }
  /* scale and softcap */
  if (gemma2 || gemma3) {
    double qs = 0;
    TRY(st_json_number(r, "query_pre_attn_scalar", &qs, NULL, err, errlen));
    if (!(qs > 0))
      return fail(ATTN_ERR_FORMAT, err, errlen, "%s: query_pre_attn_scalar %g; expected > 0",
                  r->file, qs);
    l->has_scale = true, l->scale = (float)(1.0 / sqrt(qs));
    double cap = 0;
    bool f;
    TRY(st_json_number(r, "attn_logit_softcapping", &cap, &f, err, errlen));
    if (f && !(cap > 0))
      return fail(ATTN_ERR_FORMAT, err, errlen, "%s: attn_logit_softcapping %g; expected > 0",
                  r->file, cap);
    l->softcap = f ? (float)cap : 0;
  }
  TRY(rope(r, l, sliding, gemma3, err, errlen));
  llama_names(l, true);
  if (phi3) {
    l->packed = true;
    l->w[HF_Q] = "qkv_proj.weight", l->w[HF_K] = l->w[HF_V] = NULL;
  }
  if (gemma3 || !strcmp(mt, "qwen3")) l->q_norm = "q_norm.weight", l->k_norm = "k_norm.weight";
  if (oss) l->sinks = true, l->sinks_name = "sinks";
  return ATTN_OK;
}

static attn_status bert(const st_json *r, hf_layer *l, char *err, size_t errlen) {
  attn_status s = ATTN_OK;
  TRY(sizes(r, l, "hidden_size", "num_attention_heads", err, errlen));
  TRY(num_layers(r, "num_hidden_layers", l, err, errlen));
  if (opt_bool(r, "is_decoder", false, &s, err, errlen))
    return fail(ATTN_ERR_UNSUPPORTED, err, errlen, "%s: is_decoder true (a causal BERT) is not supported",
                r->file);
  if (s) return s;
  const char *pe = "absolute";
  bool f;
  TRY(st_json_string(r, "position_embedding_type", &pe, &f, err, errlen));
  if (strcmp(pe, "absolute"))
    return fail(ATTN_ERR_UNSUPPORTED, err, errlen,
                "%s: position_embedding_type '%s' is not supported (only absolute)", r->file, pe);
  l->causal = false;
  l->biases = ATTN_PROJ_ALL;
  snprintf(l->module, sizeof l->module, "encoder.layer.%lld.attention.", (long long)l->layer);
  l->w[HF_Q] = "self.query.weight", l->b[HF_Q] = "self.query.bias";
  l->w[HF_K] = "self.key.weight", l->b[HF_K] = "self.key.bias";
  l->w[HF_V] = "self.value.weight", l->b[HF_V] = "self.value.bias";
  l->w[HF_O] = "output.dense.weight", l->b[HF_O] = "output.dense.bias";
  return ATTN_OK;
}

static attn_status gpt2(const st_json *r, hf_layer *l, char *err, size_t errlen) {
  attn_status s = ATTN_OK;
  TRY(sizes(r, l, "n_embd", "n_head", err, errlen));
  TRY(num_layers(r, "n_layer", l, err, errlen));
  l->causal = true;
  l->biases = ATTN_PROJ_ALL;
  l->transposed = ATTN_PROJ_ALL; /* Conv1D: [in, out] */
  l->packed = true;
  const bool sw = opt_bool(r, "scale_attn_weights", true, &s, err, errlen);
  if (s) return s;
  const bool inv = opt_bool(r, "scale_attn_by_inverse_layer_idx", false, &s, err, errlen);
  if (s) return s;
  double sc = sw ? 1.0 / sqrt((double)l->head_dim) : 1.0;
  if (inv) sc /= (double)(l->layer + 1);
  l->has_scale = true, l->scale = (float)sc;
  snprintf(l->module, sizeof l->module, "h.%lld.attn.", (long long)l->layer);
  l->w[HF_Q] = "c_attn.weight", l->b[HF_Q] = "c_attn.bias";
  l->w[HF_O] = "c_proj.weight", l->b[HF_O] = "c_proj.bias";
  return ATTN_OK;
}

/* BLOOM: query_key_value [3E, E] (nn.Linear) with rows interleaved per head,
 * [h][q | k | v][D]; dense [E, E]; all biased; ALiBi, the slopes from the
 * head count (hf_weights_load computes them); scale 1/sqrt(D). Old
 * checkpoints name the width n_embed (BloomConfig takes it for hidden_size);
 * pretraining_tp and slow_but_exact only split dense's sum, so they change
 * nothing but the rounding. */
static attn_status bloom(const st_json *r, hf_layer *l, char *err, size_t errlen) {
  int64_t ne = 0;
  bool f;
  TRY(get_pos(r, "n_embed", &ne, &f, err, errlen));
  TRY(sizes(r, l, f ? "n_embed" : "hidden_size", "n_head", err, errlen));
  TRY(num_layers(r, "n_layer", l, err, errlen));
  l->causal = true;
  l->biases = ATTN_PROJ_ALL;
  l->packed = true;
  l->qkv_per_head = true;
  l->alibi = true;
  snprintf(l->module, sizeof l->module, "h.%lld.self_attention.", (long long)l->layer);
  l->w[HF_Q] = "query_key_value.weight", l->b[HF_Q] = "query_key_value.bias";
  l->w[HF_O] = "dense.weight", l->b[HF_O] = "dense.bias";
  return ATTN_OK;
}

attn_status hf_layer_from_config(const st_config *cfg, int64_t layer, hf_layer *out, char *err,
                                 size_t errlen) {
  memset(out, 0, sizeof *out);
  out->rope = (attn_rope_config)ATTN_ROPE_CONFIG_INIT;
  if (!cfg) return fail(ATTN_ERR_INVALID_ARG, err, errlen, "hf_layer_from_config: cfg: NULL");
  st_json r;
  st_config_root(cfg, &r);
  if (layer < 0)
    return fail(ATTN_ERR_INVALID_ARG, err, errlen, "%s: layer %lld; expected >= 0", r.file,
                (long long)layer);
  out->layer = layer;
  const char *mt = NULL;
  TRY(st_json_string(&r, "model_type", &mt, NULL, err, errlen));
  if (strlen(mt) >= sizeof out->model_type)
    return fail(ATTN_ERR_UNSUPPORTED, err, errlen, "%s: model_type '%.40s...' is not supported",
                r.file, mt);
  strcpy(out->model_type, mt);
  static const char *const llama_family[] = {"llama", "mistral", "qwen2", "qwen3", "gemma2",
                                             "gemma3_text", "phi3", "gpt_oss", NULL};
  for (int i = 0; llama_family[i]; i++)
    if (!strcmp(mt, llama_family[i])) return llama_like(&r, out, err, errlen);
  if (!strcmp(mt, "bert")) return bert(&r, out, err, errlen);
  if (!strcmp(mt, "gpt2")) return gpt2(&r, out, err, errlen);
  if (!strcmp(mt, "bloom")) return bloom(&r, out, err, errlen);
  return fail(ATTN_ERR_UNSUPPORTED, err, errlen,
              "%s: model_type '%s' is not supported (known: llama, mistral, qwen2, qwen3, gemma2, "
              "gemma3_text, phi3, gpt_oss, bert, gpt2, bloom)",
              r.file, mt);
}

void hf_layer_desc(const hf_layer *l, attn_mha_desc *d) {
  d->d_model = l->d_model;
  d->n_heads = l->n_heads;
  d->n_kv_heads = l->n_kv_heads;
  d->head_dim = l->head_dim;
  d->causal = l->causal;
  d->biases = l->biases;
  d->transposed = l->transposed;
  d->qkv_per_head = l->qkv_per_head;
  d->norm_eps = l->qk_norm ? l->norm_eps : 0;
  d->norm_offset = l->qk_norm && l->norm_offset;
  d->rope = l->rope.type != ATTN_ROPE_NONE ? &l->rope : NULL;
  d->has_scale = l->has_scale;
  d->scale = l->scale;
  if (l->window > 0) d->has_window = true, d->window_left = l->window - 1, d->window_right = -1;
  d->softcap = l->softcap;
}

/* ---- weights ------------------------------------------------------------------------ */

static attn_status load_one(attn_context *ctx, const st_checkpoint *ck, const char *prefix,
                            const hf_layer *l, const char *rel, int ndim, const int64_t *shape,
                            attn_tensor **t, float **host, char *err, size_t errlen) {
  char name[HF_NAME_MAX];
  snprintf(name, sizeof name, "%s%s%s", prefix, l->module, rel);
  float *data = NULL;
  const st_tensor *st = NULL;
  TRY(st_read_f32(ck, name, ndim, shape, &data, &st, err, errlen));
  if (host) {
    *host = data;
    return ATTN_OK;
  }
  attn_dtype dt = st->dtype == ST_F16 ? ATTN_F16 : st->dtype == ST_BF16 ? ATTN_BF16 : ATTN_F32;
  attn_status s = attn_tensor_create_typed(ctx, dt, ndim, shape, t);
  /* exact: the values came from dt */
  if (!s) s = attn_tensor_write(*t, data, (size_t)st->count);
  free(data);
  if (s) {
    attn_tensor_free(*t), *t = NULL;
    return fail(s, err, errlen, "%s: %s", name, attn_last_error());
  }
  return ATTN_OK;
}

/* ALiBi slopes for H heads as transformers' build_alibi_tensor computes them
 * (in float32): with p the largest power of two <= H, base = 2^(-8/p) and
 * slopes base^1 .. base^p; for the H - p heads left, extra = 2^(-4/p) and
 * slopes extra^1, extra^3, ... (4 heads: 1/4, 1/16, 1/64, 1/256; 6 heads:
 * those, then 1/2, 1/8). The powers are taken of the float32 base, as in
 * torch, here in double and then rounded (torch's float32 pow may differ in
 * the last bit where the base is not a power of two). */
static attn_status alibi_slopes(int64_t H, float **out, char *err, size_t errlen) {
  float *sl = malloc((size_t)H * sizeof *sl);
  if (!sl) return fail(ATTN_ERR_NOMEM, err, errlen, "out of host memory for %lld ALiBi slopes", (long long)H);
  int64_t p = 1;
  while (p * 2 <= H) p *= 2;
  const float base = (float)exp2(-8.0 / (double)p), extra = (float)exp2(-4.0 / (double)p);
  for (int64_t h = 0; h < p; h++) sl[h] = (float)pow((double)base, (double)(h + 1));
  for (int64_t m = 0; m < H - p; m++) sl[p + m] = (float)pow((double)extra, (double)(2 * m + 1));
  *out = sl;
  return ATTN_OK;
}

void hf_weights_free(hf_weights *w) {
  if (!w) return;
  for (int i = 0; i < 4; i++) attn_tensor_free(w->w[i]), attn_tensor_free(w->b[i]);
  attn_tensor_free(w->q_norm), attn_tensor_free(w->k_norm);
  free(w->sinks);
  free(w->alibi);
  memset(w, 0, sizeof *w);
}

attn_status hf_weights_load(attn_context *ctx, const st_checkpoint *ck, const hf_layer *l,
                            hf_weights *w, attn_mha_desc *d, char *err, size_t errlen) {
  memset(w, 0, sizeof *w);
  static const char *const prefixes[] = {"model.", "transformer.", "bert.", ""};
  const char *prefix = NULL;
  for (int i = 0; i < 4 && !prefix; i++) {
    char name[HF_NAME_MAX];
    snprintf(name, sizeof name, "%s%s%s", prefixes[i], l->module, l->w[HF_Q]);
    if (st_find(ck, name)) prefix = prefixes[i];
  }
  if (!prefix)
    return fail(ATTN_ERR_FORMAT, err, errlen,
                "%s: no tensor %s%s under any of the prefixes model., transformer., bert. or none",
                st_dir(ck), l->module, l->w[HF_Q]);
  snprintf(w->prefix, sizeof w->prefix, "%s", prefix);
  const int64_t E = l->d_model, D = l->head_dim, qn = l->n_heads * D, kn = l->n_kv_heads * D;
  const int64_t rows[4] = {qn, kn, kn, E}, cols[4] = {E, E, E, qn};
  attn_status s = ATTN_OK;
  for (int i = 0; i < 4 && !s; i++) {
    int64_t r = rows[i];
    if (l->packed && i == HF_Q) r = qn + 2 * kn;
    if (l->packed && (i == HF_K || i == HF_V)) continue;
    const bool tr = (l->transposed >> i) & 1u;
    const int64_t ws[2] = {tr ? cols[i] : r, tr ? r : cols[i]}, bs[1] = {r};
    s = load_one(ctx, ck, prefix, l, l->w[i], 2, ws, &w->w[i], NULL, err, errlen);
    if (!s && l->b[i]) s = load_one(ctx, ck, prefix, l, l->b[i], 1, bs, &w->b[i], NULL, err, errlen);
  }
  const int64_t ns[1] = {D}, hs[1] = {l->n_heads};
  if (!s && l->q_norm) s = load_one(ctx, ck, prefix, l, l->q_norm, 1, ns, &w->q_norm, NULL, err, errlen);
  if (!s && l->k_norm) s = load_one(ctx, ck, prefix, l, l->k_norm, 1, ns, &w->k_norm, NULL, err, errlen);
  if (!s && l->sinks) s = load_one(ctx, ck, prefix, l, l->sinks_name, 1, hs, NULL, &w->sinks, err, errlen);
  if (!s && l->alibi) s = alibi_slopes(l->n_heads, &w->alibi, err, errlen);
  if (s) {
    hf_weights_free(w);
    return s;
  }
  w->wdtype = attn_tensor_dtype(w->w[HF_Q]);
  attn_mha_weights *m = &w->mw;
  memset(m, 0, sizeof *m);
  if (l->packed) {
    m->in_proj = w->w[HF_Q], m->in_bias = w->b[HF_Q];
  } else {
    m->wq = w->w[HF_Q], m->wk = w->w[HF_K], m->wv = w->w[HF_V];
    m->bq = w->b[HF_Q], m->bk = w->b[HF_K], m->bv = w->b[HF_V];
  }
  m->wo = w->w[HF_O], m->bo = w->b[HF_O];
  if (d) d->q_norm = w->q_norm, d->k_norm = w->k_norm, d->sinks = w->sinks;
  if (d && w->alibi) d->alibi_slopes = w->alibi;
  return ATTN_OK;
}
