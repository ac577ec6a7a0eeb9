/* One attention layer of a Hugging Face model, from its config.json and its
 * safetensors checkpoint, as an attn_mha_desc and the weight tensors of
 * attn_mha_create. Shared by tests/test_layers.c (the fixture replay) and
 * the `attn layer` command (tools/cmd_layer.c).
 *
 * The mapping follows tests/data/layers/README.md, one small function per
 * model_type: llama, mistral, qwen2, qwen3, gemma2, gemma3_text, phi3,
 * gpt_oss, bert, gpt2 and bloom. Configs in the transformers 5 form
 * (rope_parameters, layer_types, dtype) and in the older one (rope_theta and
 * rope_scaling at the top level) are read. Refused by name, with
 * ATTN_ERR_UNSUPPORTED and one line in the caller's buffer: an unknown
 * model_type and any config value the graph does not implement (a rope_type
 * such as longrope, an unknown rope_parameters key, a BERT
 * position_embedding_type other than absolute, a decoder BERT, ...). A malformed config (a missing size, a key of the wrong
 * type) gives ATTN_ERR_FORMAT. GPT-2 maps completely (Conv1D weights are
 * desc.transposed, read through strides), and so does BLOOM (query_key_value's
 * rows interleaved per head are desc.qkv_per_head, the ALiBi slopes come from
 * n_head).
 *
 * Messages go to the caller's buffer (at most HF_ERR_MAX bytes needed), as in
 * safetensors.h; libattn's own error state is left to libattn's calls. */
#ifndef ATTN_TOOLS_HF_CONFIG_H
#define ATTN_TOOLS_HF_CONFIG_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "attn.h"
#include "safetensors.h"

#define HF_ERR_MAX 1024
#define HF_NAME_MAX 256

/* The projections' tensors, in the order q, k, v, o (packed: slot 0 is the
 * qkv weight, slots 1 and 2 are unused). */
enum { HF_Q = 0, HF_K = 1, HF_V = 2, HF_O = 3 };

typedef struct hf_layer {
  char model_type[32];
  int64_t layer;         /* L */
  const char *layer_type; /* "sliding_attention", "full_attention" (points into the config) or NULL */
  int64_t d_model, n_heads, n_kv_heads, head_dim;
  bool causal;
  unsigned biases;       /* ATTN_PROJ_* */
  unsigned transposed;   /* ATTN_PROJ_* stored [in, out] (GPT-2's Conv1D) */
  bool packed;           /* one qkv weight, rows q | k | v (Phi-3 qkv_proj, GPT-2 c_attn) */
  bool qkv_per_head;     /* packed rows interleaved per head [h][q|k|v][D] (BLOOM) */
  bool alibi;            /* ALiBi slopes from n_heads (BLOOM; hf_weights_load makes them) */
  bool qk_norm;          /* q_norm and k_norm weights [head_dim] */
  bool norm_offset;      /* gain 1 + w (Gemma 3) */
  float norm_eps;
  attn_rope_config rope; /* type ATTN_ROPE_NONE: no RoPE */
  bool has_scale;
  float scale;
  int64_t window;        /* transformers' sliding_window W on this layer; 0: none */
  float softcap;         /* 0: none */
  bool sinks;            /* a sinks tensor [n_heads] (gpt-oss) */
  /* Tensor names after the base-model prefix ("model.", "transformer.",
   * "bert." or none, found in the checkpoint by hf_weights_load). NULL where
   * absent. */
  char module[96];       /* e.g. "layers.1.self_attn." */
  const char *w[4], *b[4];
  const char *q_norm, *k_norm, *sinks_name;
} hf_layer;

/* Map layer L of the model that config.json describes. */
attn_status hf_layer_from_config(const st_config *cfg, int64_t layer, hf_layer *out, char *err,
                                 size_t errlen);

/* Fill the layer's fields of d (sizes, causal, biases, transposed, norm eps
 * and offset, rope (pointing into l: keep l alive until attn_mha_create),
 * scale, window, softcap). d must have been initialised with
 * ATTN_MHA_DESC_INIT; the plan (max_batch, max_seq), the dtypes, the norm
 * tensors and the sinks are the caller's (hf_weights_load has them). */
void hf_layer_desc(const hf_layer *l, attn_mha_desc *d);

/* The layer's tensors on a device, each in the checkpoint's own element type
 * (F32, F16 or BF16; 16-bit weights stay 16-bit), their shapes checked
 * against the config. */
typedef struct hf_weights {
  char prefix[32];                     /* the base-model prefix that was found */
  attn_tensor *w[4], *b[4];            /* w[HF_Q] is the packed weight when l->packed */
  attn_tensor *q_norm, *k_norm;
  float *sinks;                        /* host [n_heads], or NULL */
  float *alibi;                        /* host [n_heads] ALiBi slopes, or NULL */
  attn_dtype wdtype;                   /* the q (or qkv) weight's element type */
  attn_mha_weights mw;                 /* ready for attn_mha_create */
} hf_weights;

/* Read the layer's tensors from ck and upload them on ctx. The prefix is the
 * first of "model.", "transformer.", "bert." and "" under which the q (or
 * qkv) weight exists. Other tensors of the file (other layers, norms, buffers)
 * are ignored. On failure nothing is left allocated. Also sets d's q_norm,
 * k_norm, sinks and alibi_slopes (kept in w) when d is non-NULL. */
attn_status hf_weights_load(attn_context *ctx, const st_checkpoint *ck, const hf_layer *l,
                            hf_weights *w, attn_mha_desc *d, char *err, size_t errlen);
void hf_weights_free(hf_weights *w);

#endif
