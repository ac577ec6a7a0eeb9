/* attn layer: one layer's attention module of a Hugging Face checkpoint
 * (config.json mapped by tools/hf_config.c, weights read by
 * tools/safetensors.c), run through the MHA graph on x, optionally with a KV
 * cache (--cache-steps). The contract is issue 10's "Checkpoints as users
 * have them"; tests/test_cli_layer.c checks it against the fixtures of
 * tests/data/layers. */
#include "config.h"

#include <errno.h>
#include <getopt.h>
#include <inttypes.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "attn.h"
#include "cli.h"
#include "commands.h"
#include "hf_config.h"
#include "npy.h"
#include "safetensors.h"

void help_layer(FILE *f) {
  fprintf(f,
          "Usage: attn layer --checkpoint PATH --layer N --x FILE [--config FILE]\n"
          "         [--attention-mask FILE] [--position-ids FILE] [--cache-steps K]\n"
          "         [--out FILE] [--dtype T] [--check] [--device SEL]\n"
          "\n"
          "Runs layer N's attention module of a Hugging Face checkpoint, as transformers\n"
          "computes it: the q/k/v projections (and biases), QK-norm, RoPE, the scaled,\n"
          "soft-capped, windowed attention with sinks where the model has them, and the\n"
          "output projection. model_type: llama, mistral, qwen2, qwen3, gemma2,\n"
          "gemma3_text, phi3, gpt_oss, bert, gpt2, bloom (see README.md).\n"
          "\n"
          "  --checkpoint PATH  a directory with config.json and model.safetensors (or a\n"
          "                 sharded model.safetensors.index.json), or one .safetensors\n"
          "                 file. Tensors F32, F16 or BF16, used in their stored type\n"
          "  --config FILE  config.json (default: the one in PATH's directory)\n"
          "  --layer N      the layer index (0-based)\n"
          "  --x FILE       [B, S, E] hidden states entering the attention module (after\n"
          "                 the input norm); float32, float16 or bfloat16 .npy\n"
          "  --attention-mask FILE\n"
          "                 [B, S] bool or int32: 1 = token, 0 = padding (left or right);\n"
          "                 default: all tokens\n"
          "  --position-ids FILE\n"
          "                 [B, S] int32 >= 0, the RoPE positions; default 0..S-1 in every\n"
          "                 row (with left padding, give transformers' positions)\n"
          "  --cache-steps K  run the first S-K tokens as one prefill into a KV cache,\n"
          "                 then the last K one token at a time through it (0 <= K <= S);\n"
          "                 the output is that of the full run\n"
          "  --dtype T      f32, f16 or bf16: the storage type of the activations: x (its\n"
          "                 values rounded to nearest even on upload), q/k/v, the KV\n"
          "                 cache, the attention output and --out (default: x's type).\n"
          "                 Weights keep their checkpoint type; arithmetic is fp32\n"
          "  --out FILE     write [B, S, E] (of --dtype): the output projection's output\n"
          "                 (o_proj, attention.output.dense), before any residual,\n"
          "                 dropout or norm. Rows at padding tokens are written as 0\n"
          "  --check        rerun on the ref backend with the same stored x and weights\n"
          "                 and compare the token rows: fails (exit 1) if\n"
          "                 max|got - ref| > %g + (%g + u) * max|ref|,\n"
          "                 u = 2^-7 for bf16, 2^-10 for f16, 0 for f32\n"
          "  --device SEL   device selector (default: $ATTN_DEVICE, else\n"
          "                 %s)\n"
          "  -h, --help     this help\n"
          "\n"
          "Bad input (a missing or mis-shaped tensor, an unknown model_type or an\n"
          "unsupported config value, --layer out of range, a mask or positions of the\n"
          "wrong shape) exits 2 naming the option or file. --out is written only if\n"
          "everything succeeded. Exit 0 ok, 1 failure, 2 usage error.\n",
          CLI_CHECK_ATOL, CLI_CHECK_RTOL, ATTN_DEFAULT_SELECTOR);
}

typedef struct layer_job {
  const st_checkpoint *ck;
  const char *ck_path;
  hf_layer hl;
  int64_t B, S, E, K;
  cli_input x;              /* src: the file's (or the stored) type; dtype: act */
  attn_dtype act;
  const int32_t *am, *pos;  /* host [B, S] or NULL */
} layer_job;

typedef struct layer_result {
  void *out;    /* [B, S, E] of act, padding rows zeroed */
  float *out_f; /* the same as floats */
  cli_input xs; /* with keep_x: x as the device stored it */
  attn_dtype wdtype;
  double ms;
} layer_result;

static void layer_result_free(layer_result *r) {
  free(r->out);
  free(r->out_f);
  free((void *)r->xs.data);
  memset(r, 0, sizeof *r);
}

/* One run of tokens t0 .. t0+n-1 of every row: x and out are views one
 * window wide; the mask and positions are copied for those tokens. */
static attn_status run_tokens(const layer_job *j, attn_mha *g, attn_kv_cache *cache,
                              const attn_tensor *x, attn_tensor *o, int64_t t0, int64_t n,
                              int32_t *am_buf, int32_t *pos_buf) {
  const int64_t B = j->B, S = j->S, E = j->E;
  const int64_t shape[3] = {B, n, E}, strides[3] = {S * E, E, 1};
  attn_tensor *xv = NULL, *ov = NULL;
  attn_status s;
  if ((s = attn_tensor_view(x, t0 * E, 3, shape, strides, &xv)) ||
      (s = attn_tensor_view(o, t0 * E, 3, shape, strides, &ov)))
    goto done;
  for (int64_t b = 0; b < B; b++) {
    if (j->am) memcpy(am_buf + b * n, j->am + b * S + t0, (size_t)n * sizeof *am_buf);
    if (j->pos) memcpy(pos_buf + b * n, j->pos + b * S + t0, (size_t)n * sizeof *pos_buf);
  }
  attn_mha_run_args a = ATTN_MHA_RUN_ARGS_INIT;
  a.x = xv;
  a.out = ov;
  a.cache = cache;
  a.attention_mask = j->am ? am_buf : NULL;
  /* positions only matter to RoPE (gpt2, bert: none inside attention) */
  a.position_ids = j->pos && j->hl.rope.type != ATTN_ROPE_NONE ? pos_buf : NULL;
  s = attn_mha_run_ex(g, &a);
done:
  attn_tensor_free(xv);
  attn_tensor_free(ov);
  return s;
}

/* Load the weights on ctx, run the layer (full, or prefill + steps), read
 * out back. Returns 0, EXIT_USAGE (the checkpoint refused: a tensor missing,
 * of the wrong shape or dtype, a layer the graph does not take) or
 * EXIT_FAIL. */
static int run_layer_on(attn_context *ctx, const layer_job *j, const char *where, bool keep_x,
                        layer_result *r) {
  memset(r, 0, sizeof *r);
  const int64_t B = j->B, S = j->S, E = j->E, K = j->K;
  hf_weights w;
  memset(&w, 0, sizeof w);
  attn_mha *g = NULL;
  attn_kv_cache *cache = NULL;
  attn_tensor *x = NULL, *o = NULL;
  int32_t *am_buf = NULL, *pos_buf = NULL;
  int rc = EXIT_FAIL;
  char err[HF_ERR_MAX];
  attn_mha_desc d = ATTN_MHA_DESC_INIT;
  hf_layer_desc(&j->hl, &d);
  d.max_batch = B;
  d.max_seq = S;
  d.dtype = j->act;
  d.kv_dtype = j->act;
  attn_status s = hf_weights_load(ctx, j->ck, &j->hl, &w, &d, err, sizeof err);
  if (s) {
    /* the files' fault (a missing, mis-shaped or mistyped tensor): 2; the
     * machine's (memory, the device): 1 */
    bool input = s == ATTN_ERR_FORMAT || s == ATTN_ERR_IO || s == ATTN_ERR_UNSUPPORTED;
    cli_errline("%s%s--checkpoint: %s", where ? where : "", where ? ": " : "", err);
    rc = input ? EXIT_USAGE : EXIT_FAIL;
    goto done;
  }
  r->wdtype = w.wdtype;
  if ((s = attn_mha_create(ctx, &d, &w.mw, &g))) {
    if (s == ATTN_ERR_UNSUPPORTED) {
      cli_errline("--checkpoint: %s layer %" PRId64 " is not supported: %s", j->hl.model_type,
                  j->hl.layer, attn_last_error());
      rc = EXIT_USAGE;
      goto done;
    }
    goto fail;
  }
  const int64_t xs[3] = {B, S, E};
  if ((s = cli_upload_input(ctx, &j->x, &x)) ||
      (s = attn_tensor_create_typed(ctx, j->act, 3, xs, &o)))
    goto fail;
  if (!(am_buf = malloc((size_t)(B * S) * sizeof *am_buf)) ||
      !(pos_buf = malloc((size_t)(B * S) * sizeof *pos_buf))) {
    s = ATTN_ERR_NOMEM;
    goto fail;
  }
  double t0 = cli_now_ms();
  if (K == 0) {
    if ((s = run_tokens(j, g, NULL, x, o, 0, S, am_buf, pos_buf))) goto fail;
  } else {
    if ((s = attn_kv_cache_create(g, B, S, &cache))) goto fail;
    if (S - K > 0 && (s = run_tokens(j, g, cache, x, o, 0, S - K, am_buf, pos_buf))) goto fail;
    for (int64_t t = S - K; t < S; t++)
      if ((s = run_tokens(j, g, cache, x, o, t, 1, am_buf, pos_buf))) goto fail;
  }
  if ((s = attn_synchronize(ctx))) goto fail;
  r->ms = cli_now_ms() - t0;
  cli_input ro;
  if ((s = cli_read_back(o, &ro))) goto fail;
  r->out = (void *)ro.data;
  /* padding rows are unspecified (transformers itself gives NaN or noise
   * there): written as 0, and so left out of --check */
  const size_t es = attn_dtype_size(j->act);
  if (j->am)
    for (int64_t i = 0; i < B * S; i++)
      if (!j->am[i]) memset((char *)r->out + (size_t)(i * E) * es, 0, (size_t)E * es);
  if (!(r->out_f = cli_to_floats(j->act, r->out, (size_t)(B * S * E), "out"))) goto done;
  if (keep_x && (s = cli_read_back(x, &r->xs))) goto fail;
  rc = 0;
fail:
  if (rc && rc != EXIT_USAGE && s) cli_lib_fail(s, where);
done:
  attn_kv_cache_free(cache);
  attn_mha_free(g);
  attn_tensor_free(x);
  attn_tensor_free(o);
  hf_weights_free(&w);
  free(am_buf);
  free(pos_buf);
  if (rc) layer_result_free(r);
  return rc;
}

/* A [B, S] file of --attention-mask or --position-ids: the shape must be x's
 * [B, S]. */
static bool want_bs(const char *opt, const char *path, const npy_array *a, int64_t B, int64_t S,
                    const char *fx) {
  if (a->ndim == 2 && a->shape[0] == B && a->shape[1] == S) return true;
  char got[96];
  cli_dims_fmt(got, sizeof got, a->ndim, a->shape);
  cli_usage_fail("%s: %s has shape %s; expected [%" PRId64 ", %" PRId64 "], [B, S] of --x %s",
                 opt, path, got, B, S, fx);
  return false;
}

static bool is_dir(const char *p) {
  struct stat st;
  return stat(p, &st) == 0 && S_ISDIR(st.st_mode);
}

int cmd_layer(int argc, char **argv, const char *default_device) {
  enum { O_CKPT = 400, O_CONFIG, O_LAYER, O_X, O_MASK, O_POS, O_STEPS, O_OUT, O_DTYPE, O_CHECK,
         O_DEVICE };
  static const struct option opts[] = {
      {"checkpoint", required_argument, NULL, O_CKPT},
      {"config", required_argument, NULL, O_CONFIG},
      {"layer", required_argument, NULL, O_LAYER},
      {"x", required_argument, NULL, O_X},
      {"attention-mask", required_argument, NULL, O_MASK},
      {"position-ids", required_argument, NULL, O_POS},
      {"cache-steps", required_argument, NULL, O_STEPS},
      {"out", required_argument, NULL, O_OUT},
      {"dtype", required_argument, NULL, O_DTYPE},
      {"check", no_argument, NULL, O_CHECK},
      {"device", required_argument, NULL, O_DEVICE},
      {"help", no_argument, NULL, 'h'},
      {NULL, 0, NULL, 0}};
  const char *fck = NULL, *fcfg = NULL, *fx = NULL, *fmask = NULL, *fpos = NULL;
  const char *out_path = NULL, *dev = default_device;
  int64_t layer = -1, K = 0;
  bool check = false, have_dtype = false;
  attn_dtype dtype = ATTN_F32;
  int c;
  while ((c = getopt_long(argc, argv, ":h", opts, NULL)) != -1) {
    bool ok = true;
    switch (c) {
    case O_CKPT: fck = optarg; break;
    case O_CONFIG: fcfg = optarg; break;
    case O_LAYER: ok = cli_parse_int("--layer", optarg, 0, INT64_MAX, &layer); break;
    case O_X: fx = optarg; break;
    case O_MASK: fmask = optarg; break;
    case O_POS: fpos = optarg; break;
    case O_STEPS: ok = cli_parse_int("--cache-steps", optarg, 0, INT64_MAX, &K); break;
    case O_OUT: out_path = optarg; break;
    case O_DTYPE: ok = have_dtype = cli_parse_dtype("--dtype", optarg, &dtype); break;
    case O_CHECK: check = true; break;
    case O_DEVICE: dev = optarg; break;
    case 'h': help_layer(stdout); return 0;
    case ':': return cli_usage_fail("option '%s' needs an argument", argv[optind - 1]);
    default: return cli_usage_fail("unknown option '%s'", argv[optind - 1]);
    }
    if (!ok) return EXIT_USAGE;
  }
  if (optind < argc) return cli_usage_fail("unexpected argument '%s'", argv[optind]);
  if (!fck) return cli_usage_fail("--checkpoint is required");
  if (layer < 0) return cli_usage_fail("--layer is required");
  if (!fx) return cli_usage_fail("--x is required");

  int rc = EXIT_USAGE;
  layer_job j;
  memset(&j, 0, sizeof j);
  st_checkpoint *ck = NULL;
  st_config *cfg = NULL;
  npy_array ax = {0}, am = {0}, ap = {0};
  int32_t *am_i = NULL;
  layer_result res = {0}, chk = {0};
  attn_context *ctx = NULL, *ref = NULL;
  char err[HF_ERR_MAX], cfg_path[4200];
  attn_status s;

  /* the checkpoint and its config */
  if ((s = st_open(fck, &ck, err, sizeof err))) {
    cli_errline("--checkpoint: %s", err);
    if (s == ATTN_ERR_NOMEM) rc = EXIT_FAIL;
    goto done;
  }
  if (fcfg) {
    snprintf(cfg_path, sizeof cfg_path, "%s", fcfg);
  } else {
    snprintf(cfg_path, sizeof cfg_path, "%s/config.json", st_dir(ck));
    struct stat st;
    if (stat(cfg_path, &st) != 0) {
      cli_usage_fail("--config: no config.json in %s (%s); give --config FILE",
                     is_dir(fck) ? fck : st_dir(ck), strerror(errno));
      goto done;
    }
  }
  if ((s = st_config_load(cfg_path, &cfg, err, sizeof err))) {
    cli_errline("--config: %s", err);
    if (s == ATTN_ERR_NOMEM) rc = EXIT_FAIL;
    goto done;
  }
  if ((s = hf_layer_from_config(cfg, layer, &j.hl, err, sizeof err))) {
    /* ATTN_ERR_INVALID_ARG: the layer index against num_hidden_layers or
     * layer_types; otherwise the config itself */
    if (s == ATTN_ERR_INVALID_ARG) cli_errline("--layer %" PRId64 ": %s", layer, err);
    else cli_errline("--config: %s", err);
    if (s == ATTN_ERR_NOMEM) rc = EXIT_FAIL;
    goto done;
  }

  /* the inputs, checked against the config and each other */
  if (!cli_load_npy("--x", fx, NPY_F32 | NPY_F16 | NPY_BF16, 3, 3, &ax)) goto done;
  j.B = ax.shape[0];
  j.S = ax.shape[1];
  j.E = ax.shape[2];
  if (j.E != j.hl.d_model) {
    char got[96];
    cli_dims_fmt(got, sizeof got, 3, ax.shape);
    cli_usage_fail("--x: %s has shape %s; expected [B, S, %" PRId64 "] (hidden size of %s)", fx,
                   got, j.hl.d_model, cfg_path);
    goto done;
  }
  if (K > j.S) {
    cli_usage_fail("--cache-steps %" PRId64 " is more than the %" PRId64 " tokens of --x %s", K,
                   j.S, fx);
    goto done;
  }
  j.K = K;
  attn_dtype src = cli_attn_dtype(ax.dtype);
  j.act = have_dtype ? dtype : src;
  j.x = (cli_input){src, j.act, 3, {j.B, j.S, j.E}, ax.data};
  if (fmask) {
    if (!cli_load_npy("--attention-mask", fmask, NPY_BOOL | NPY_I32, 1, 4, &am)) goto done;
    if (!want_bs("--attention-mask", fmask, &am, j.B, j.S, fx)) goto done;
    if (!(am_i = malloc(am.count * sizeof *am_i))) {
      cli_errline("--attention-mask: %s: out of memory", fmask);
      rc = EXIT_FAIL;
      goto done;
    }
    for (size_t i = 0; i < am.count; i++) {
      const int32_t v = am.dtype == NPY_BOOL ? ((const uint8_t *)am.data)[i]
                                             : ((const int32_t *)am.data)[i];
      if (v != 0 && v != 1) {
        cli_usage_fail("--attention-mask: %s: value [%zu, %zu] is %" PRId32
                       "; expected 1 (token) or 0 (padding)",
                       fmask, i / (size_t)j.S, i % (size_t)j.S, v);
        goto done;
      }
      am_i[i] = v;
    }
    j.am = am_i;
  }
  if (fpos) {
    if (!cli_load_npy("--position-ids", fpos, NPY_I32, 1, 4, &ap)) goto done;
    if (!want_bs("--position-ids", fpos, &ap, j.B, j.S, fx)) goto done;
    const int32_t *p = ap.data;
    for (size_t i = 0; i < ap.count; i++)
      if (p[i] < 0) {
        cli_usage_fail("--position-ids: %s: value [%zu, %zu] is %" PRId32 "; expected >= 0", fpos,
                       i / (size_t)j.S, i % (size_t)j.S, p[i]);
        goto done;
      }
    j.pos = p;
  }
  j.ck = ck;
  j.ck_path = fck;

  rc = EXIT_FAIL;
  if ((s = attn_open(dev, &ctx)) != ATTN_OK) {
    cli_lib_fail(s, NULL);
    goto done;
  }
  if ((rc = run_layer_on(ctx, &j, NULL, check, &res))) goto done;
  rc = EXIT_FAIL;

  cli_print_device(ctx);
  char sx[96];
  cli_dims_fmt(sx, sizeof sx, 3, ax.shape);
  const hf_layer *l = &j.hl;
  printf("layer %" PRId64 " of %s%s%s%s  x %s -> out %s\n", l->layer, l->model_type,
         l->layer_type ? " (" : "", l->layer_type ? l->layer_type : "", l->layer_type ? ")" : "",
         sx, sx);
  printf("heads %" PRId64 "  kv-heads %" PRId64 "  head dim %" PRId64 "  %s%s%s%s%s%s%s\n",
         l->n_heads, l->n_kv_heads, l->head_dim, l->packed ? "packed qkv" : "q/k/v/o",
         l->biases ? "  biases" : "", l->qk_norm ? "  qk-norm" : "",
         l->rope.type != ATTN_ROPE_NONE ? "  rope" : "", l->window ? "  window" : "",
         l->softcap > 0 ? "  softcap" : "", l->sinks ? "  sinks" : "");
  printf("dtype x %s  activations %s  weights %s  mask %s  positions %s\n",
         attn_dtype_str(src), attn_dtype_str(j.act), attn_dtype_str(res.wdtype),
         fmask ? "file" : "none", fpos ? "file" : "0..S-1");
  if (K > 0)
    printf("cache: prefill of %" PRId64 " tokens, then %" PRId64 " steps of one token\n",
           j.S - K, K);
  printf("time %.3f ms\n", res.ms);

  if (check) {
    if ((s = attn_open("ref", &ref)) != ATTN_OK) {
      cli_lib_fail(s, "--check");
      goto done;
    }
    /* ref gets the x the device stored, bit for bit, and the same weights */
    layer_job cj = j;
    cj.x = res.xs;
    if ((rc = run_layer_on(ref, &cj, "--check", false, &chk))) goto done;
    rc = EXIT_FAIL;
    if (!cli_check_close("out", res.out_f, chk.out_f, (size_t)(j.B * j.S * j.E),
                         cli_dtype_rtol(j.act)))
      goto done;
  }
  cli_out_file f = {out_path, cli_npy_dtype(j.act), 3, {j.B, j.S, j.E}, res.out};
  rc = cli_write_outputs(&f, 1);
done:
  layer_result_free(&res);
  layer_result_free(&chk);
  attn_close(ref);
  attn_close(ctx);
  st_config_free(cfg);
  st_close(ck);
  npy_free(&ax);
  npy_free(&am);
  npy_free(&ap);
  free(am_i);
  return rc;
}
