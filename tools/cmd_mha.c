/* attn mha: multi-head attention with projections from .npy weights. */
#include "config.h"

#include <errno.h>
#include <getopt.h>
#include <inttypes.h>
#include <math.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "attn.h"
#include "cli.h"
#include "commands.h"
#include "npy.h"

void help_mha(FILE *f) {
  fprintf(f,
          "Usage: attn mha --x FILE [--kv-x FILE] --heads N [--kv-heads N]\n"
          "                (--wq FILE --wk FILE --wv FILE | --in-proj FILE) --wo FILE\n"
          "                [--bq FILE --bk FILE --bv FILE | --in-bias FILE] [--bo FILE]\n"
          "                [--causal [--decode]] [--kv-dtype T] [--out FILE] [--check]\n"
          "                [--device SEL]\n"
          "\n"
          "Multi-head attention with projections, weights in PyTorch nn.Linear convention\n"
          "(W [out, in], y = x W^T + b); files are .npy as numpy.save writes them, float32\n"
          "('<f4'), float16 ('<f2') or bfloat16 ('<V2', an ml_dtypes.bfloat16 array).\n"
          "Each weight keeps its file's type; x's type is that of the activations (x, out\n"
          "and the q / attention intermediates), kv-x is converted to it.\n"
          "\n"
          "  --x FILE        [B, Sq, E] (or [Sq, E] for one sequence)\n"
          "  --kv-x FILE     [B, Skv, Ekv]: cross attention (default: self attention on x)\n"
          "  --heads N       query heads Hq (required); head dim D = rows(wq) / Hq\n"
          "  --kv-heads N    key/value heads Hkv (default Hq; Hq %% Hkv == 0)\n"
          "  --wq FILE       [Hq*D, E]        --bq FILE  [Hq*D]\n"
          "  --wk FILE       [Hkv*D, Ekv]     --bk FILE  [Hkv*D]\n"
          "  --wv FILE       [Hkv*D, Ekv]     --bv FILE  [Hkv*D]\n"
          "  --wo FILE       [E, Hq*D]        --bo FILE  [E]\n"
          "  --in-proj FILE  [(Hq+2*Hkv)*D, E] packed q, k, v rows instead of --wq/--wk/--wv\n"
          "                  (nn.MultiheadAttention's in_proj_weight; --wo is out_proj.weight)\n"
          "  --in-bias FILE  [(Hq+2*Hkv)*D] (in_proj_bias; --bo is out_proj.bias)\n"
          "                  biases: give all of them or none\n"
          "  --causal        causal self attention (query i sees keys j <= i + Skv - Sq)\n"
          "  --decode        with --causal: run x token by token through a KV cache (the\n"
          "                  same result as one causal pass); the time is of all the steps\n"
          "  --kv-dtype T    f32, f16 or bf16: the projected keys and values, and the KV\n"
          "                  cache of --decode (default: x's type)\n"
          "  --out FILE      write out, the same shape and type as x\n"
          "  --check         rerun on the ref backend with the same stored inputs: fails\n"
          "                  (exit 1) if max|got - ref| > %g + (%g + u) * max|ref|,\n"
          "                  u = 2^-7 for bf16 activations, 2^-10 f16, 0 f32\n"
          "  --warmup N      untimed runs before the timed one (default 1)\n"
          "  --device SEL    device selector (default: $ATTN_DEVICE, else %s)\n"
          "  -h, --help      this help\n",
          CLI_CHECK_ATOL, CLI_CHECK_RTOL, ATTN_DEFAULT_SELECTOR);
}

enum { W_WQ, W_WK, W_WV, W_WO, W_BQ, W_BK, W_BV, W_BO, W_IN, W_INB, W_COUNT };
static const char *const w_opt[W_COUNT] = {"--wq", "--wk", "--wv", "--wo",      "--bq",
                                           "--bk", "--bv", "--bo", "--in-proj", "--in-bias"};

typedef struct mha_job {
  attn_mha_desc desc;
  int64_t B, Sq, Skv, E, Ekv;
  cli_input x, kv_x;    /* kv_x.data NULL: self attention */
  cli_input w[W_COUNT]; /* data NULL when not given */
  bool decode;          /* x token by token through a KV cache of desc.kv_dtype */
} mha_job;

typedef struct mha_result {
  void *out;   /* as stored, of desc.dtype */
  float *out_f;
  cli_input stored[W_COUNT + 2]; /* with keep_inputs: the weights, x, kv_x as stored */
  double ms;
} mha_result;

static void mha_result_free(mha_result *r) {
  free(r->out);
  free(r->out_f);
  for (int i = 0; i < W_COUNT + 2; i++) free((void *)r->stored[i].data);
  memset(r, 0, sizeof *r);
}

/* One pass over x: a plain run, or with j->decode one cached run per token
 * (views of x and out one position wide). */
static attn_status mha_pass(const mha_job *j, attn_mha *g, attn_kv_cache *cache,
                            const attn_tensor *x, const attn_tensor *kvx, attn_tensor *o) {
  if (!j->decode) return attn_mha_run(g, x, kvx, o);
  attn_kv_cache_reset(cache);
  const int64_t shape[3] = {j->B, 1, j->E}, strides[3] = {j->Sq * j->E, j->E, 1};
  attn_status s = ATTN_OK;
  for (int64_t t = 0; t < j->Sq && s == ATTN_OK; t++) {
    attn_tensor *xv = NULL, *ov = NULL;
    if (!(s = attn_tensor_view(x, t * j->E, 3, shape, strides, &xv)) &&
        !(s = attn_tensor_view(o, t * j->E, 3, shape, strides, &ov)))
      s = attn_mha_run_cached(g, cache, xv, ov);
    attn_tensor_free(xv);
    attn_tensor_free(ov);
  }
  return s;
}

static int run_mha_on(attn_context *ctx, const mha_job *j, int64_t warmup, const char *where,
                      bool keep_inputs, mha_result *r) {
  memset(r, 0, sizeof *r);
  attn_tensor *wt[W_COUNT] = {0}, *x = NULL, *kvx = NULL, *o = NULL;
  attn_mha *g = NULL;
  attn_kv_cache *cache = NULL;
  attn_status s = ATTN_OK;
  int rc = EXIT_FAIL;
  for (int i = 0; i < W_COUNT; i++)
    if (j->w[i].data && (s = cli_upload_input(ctx, &j->w[i], &wt[i]))) goto fail;
  int64_t xs[3] = {j->B, j->Sq, j->E};
  if ((s = cli_upload_input(ctx, &j->x, &x)) ||
      (j->kv_x.data && (s = cli_upload_input(ctx, &j->kv_x, &kvx))) ||
      (s = attn_tensor_create_typed(ctx, j->desc.dtype, 3, xs, &o)))
    goto fail;
  attn_mha_weights w = {wt[W_WQ], wt[W_WK], wt[W_WV], wt[W_WO], wt[W_BQ],
                        wt[W_BK], wt[W_BV], wt[W_BO], wt[W_IN], wt[W_INB]};
  if ((s = attn_mha_create(ctx, &j->desc, &w, &g))) goto fail;
  if (j->decode &&
      (s = attn_kv_cache_create_typed(g, j->B, j->Sq, j->desc.kv_dtype, &cache)))
    goto fail;
  for (int64_t i = 0; i <= warmup; i++) {
    double t0 = cli_now_ms();
    if ((s = mha_pass(j, g, cache, x, kvx, o)) || (s = attn_synchronize(ctx))) goto fail;
    r->ms = cli_now_ms() - t0;
  }
  cli_input ro;
  if ((s = cli_read_back(o, &ro))) goto fail;
  r->out = (void *)ro.data;
  if (!(r->out_f = cli_to_floats(j->desc.dtype, r->out, (size_t)attn_tensor_numel(o), "out"))) {
    s = ATTN_ERR_NOMEM;
    where = NULL;
    goto done;
  }
  if (keep_inputs) {
    for (int i = 0; i < W_COUNT; i++)
      if (wt[i] && (s = cli_read_back(wt[i], &r->stored[i]))) goto fail;
    if ((s = cli_read_back(x, &r->stored[W_COUNT])) ||
        (kvx && (s = cli_read_back(kvx, &r->stored[W_COUNT + 1]))))
      goto fail;
  }
  rc = 0;
fail:
  if (rc) cli_lib_fail(s, where);
done:
  attn_kv_cache_free(cache);
  attn_mha_free(g);
  for (int i = 0; i < W_COUNT; i++) attn_tensor_free(wt[i]);
  attn_tensor_free(x);
  attn_tensor_free(kvx);
  attn_tensor_free(o);
  if (rc) mha_result_free(r);
  return rc;
}

/* Shape check of a weight file against what x and the heads imply. */
static bool want_shape(const mha_job *j, int which, const char *path, int64_t rows, int64_t cols,
                       const char *why) {
  const cli_input *a = &j->w[which];
  bool ok = a->ndim == 2 ? a->shape[0] == rows && a->shape[1] == cols
                         : a->ndim == 1 && cols == 0 && a->shape[0] == rows;
  if (!ok) {
    char got[96], exp[96];
    cli_dims_fmt(got, sizeof got, a->ndim, a->shape);
    int64_t e[2] = {rows, cols};
    cli_dims_fmt(exp, sizeof exp, cols ? 2 : 1, e);
    cli_errline("%s: %s is %s; expected %s (%s)", w_opt[which], path, got, exp, why);
  }
  return ok;
}

int cmd_mha(int argc, char **argv, const char *default_device) {
  enum { O_X = 300, O_KVX, O_HEADS, O_KVHEADS, O_CAUSAL, O_OUT, O_CHECK, O_WARMUP, O_DEVICE,
         O_KVDTYPE, O_DECODE, O_W0 };
  static const struct option opts[] = {
      {"x", required_argument, NULL, O_X},
      {"kv-x", required_argument, NULL, O_KVX},
      {"heads", required_argument, NULL, O_HEADS},
      {"kv-heads", required_argument, NULL, O_KVHEADS},
      {"causal", no_argument, NULL, O_CAUSAL},
      {"out", required_argument, NULL, O_OUT},
      {"check", no_argument, NULL, O_CHECK},
      {"warmup", required_argument, NULL, O_WARMUP},
      {"device", required_argument, NULL, O_DEVICE},
      {"kv-dtype", required_argument, NULL, O_KVDTYPE},
      {"decode", no_argument, NULL, O_DECODE},
      {"wq", required_argument, NULL, O_W0 + W_WQ},
      {"wk", required_argument, NULL, O_W0 + W_WK},
      {"wv", required_argument, NULL, O_W0 + W_WV},
      {"wo", required_argument, NULL, O_W0 + W_WO},
      {"bq", required_argument, NULL, O_W0 + W_BQ},
      {"bk", required_argument, NULL, O_W0 + W_BK},
      {"bv", required_argument, NULL, O_W0 + W_BV},
      {"bo", required_argument, NULL, O_W0 + W_BO},
      {"in-proj", required_argument, NULL, O_W0 + W_IN},
      {"in-bias", required_argument, NULL, O_W0 + W_INB},
      {"help", no_argument, NULL, 'h'},
      {NULL, 0, NULL, 0}};
  const char *fx = NULL, *fkvx = NULL, *out_path = NULL, *dev = default_device, *fw[W_COUNT] = {0};
  int64_t Hq = 0, Hkv = 0, warmup = 1;
  bool causal = false, check = false, decode = false, have_kv_dtype = false;
  attn_dtype kv_dtype = ATTN_F32;
  int c;
  while ((c = getopt_long(argc, argv, ":h", opts, NULL)) != -1) {
    bool ok = true;
    switch (c) {
    case O_X: fx = optarg; break;
    case O_KVX: fkvx = optarg; break;
    case O_HEADS: ok = cli_parse_int("--heads", optarg, 1, INT64_MAX, &Hq); break;
    case O_KVHEADS: ok = cli_parse_int("--kv-heads", optarg, 1, INT64_MAX, &Hkv); break;
    case O_CAUSAL: causal = true; break;
    case O_OUT: out_path = optarg; break;
    case O_CHECK: check = true; break;
    case O_WARMUP: ok = cli_parse_int("--warmup", optarg, 0, INT64_MAX, &warmup); break;
    case O_DEVICE: dev = optarg; break;
    case O_KVDTYPE: ok = have_kv_dtype = cli_parse_dtype("--kv-dtype", optarg, &kv_dtype); break;
    case O_DECODE: decode = true; break;
    case 'h': help_mha(stdout); return 0;
    case ':': return cli_usage_fail("option '%s' needs an argument", argv[optind - 1]);
    default:
      if (c >= O_W0 && c < O_W0 + W_COUNT) {
        fw[c - O_W0] = optarg;
        break;
      }
      return cli_usage_fail("unknown option '%s'", argv[optind - 1]);
    }
    if (!ok) return EXIT_USAGE;
  }
  if (optind < argc) return cli_usage_fail("unexpected argument '%s'", argv[optind]);
  if (!fx) return cli_usage_fail("--x is required");
  if (!Hq) return cli_usage_fail("--heads is required");
  if (!Hkv) Hkv = Hq;
  if (decode && !causal)
    return cli_usage_fail("--decode needs --causal (a token-by-token decode is causal)");
  if (decode && fkvx) return cli_usage_fail("--decode is self attention: it takes no --kv-x");
  bool packed = fw[W_IN] != NULL;
  if (packed && (fw[W_WQ] || fw[W_WK] || fw[W_WV] || fw[W_BQ] || fw[W_BK] || fw[W_BV]))
    return cli_usage_fail("--in-proj replaces --wq/--wk/--wv and --bq/--bk/--bv; give one form");
  if (!packed && fw[W_INB]) return cli_usage_fail("--in-bias goes with --in-proj");
  if (!packed && !(fw[W_WQ] && fw[W_WK] && fw[W_WV]))
    return cli_usage_fail("give --wq, --wk and --wv, or --in-proj");
  if (!fw[W_WO]) return cli_usage_fail("--wo is required");
  bool bias;
  if (packed) {
    bias = fw[W_INB] || fw[W_BO];
    if (bias && !(fw[W_INB] && fw[W_BO]))
      return cli_usage_fail("biases are all or none: %s given without %s",
                        fw[W_INB] ? "--in-bias" : "--bo", fw[W_INB] ? "--bo" : "--in-bias");
  } else {
    int nb = !!fw[W_BQ] + !!fw[W_BK] + !!fw[W_BV] + !!fw[W_BO];
    bias = nb > 0;
    if (nb && nb != 4) {
      int miss = !fw[W_BQ] ? W_BQ : !fw[W_BK] ? W_BK : !fw[W_BV] ? W_BV : W_BO;
      return cli_usage_fail("biases are all or none: %s is missing", w_opt[miss]);
    }
  }

  int rc = EXIT_FAIL;
  mha_job j;
  memset(&j, 0, sizeof j);
  npy_array ax = {0}, akv = {0}, aw[W_COUNT] = {{0}};
  mha_result res = {0}, chk = {0};
  attn_context *ctx = NULL, *ref = NULL;
  const unsigned floats = NPY_F32 | NPY_F16 | NPY_BF16;

  if (!cli_load_npy("--x", fx, floats, 2, 3, &ax)) goto done;
  int xr = ax.ndim;
  j.B = xr == 3 ? ax.shape[0] : 1;
  j.Sq = ax.shape[xr - 2];
  j.E = ax.shape[xr - 1];
  /* the activations are of x's type */
  attn_dtype act = cli_attn_dtype(ax.dtype);
  j.x = (cli_input){act, act, 3, {j.B, j.Sq, j.E}, ax.data};
  j.Skv = j.Sq;
  j.Ekv = j.E;
  if (fkvx) {
    if (!cli_load_npy("--kv-x", fkvx, floats, 2, 3, &akv)) goto done;
    int64_t kb = akv.ndim == 3 ? akv.shape[0] : 1;
    if (akv.ndim != xr || kb != j.B) {
      char a[96], b[96];
      cli_dims_fmt(a, sizeof a, ax.ndim, ax.shape);
      cli_dims_fmt(b, sizeof b, akv.ndim, akv.shape);
      cli_errline("--kv-x: %s is %s but --x %s is %s: the batch must agree", fkvx, b, fx, a);
      goto done;
    }
    j.Skv = akv.shape[akv.ndim - 2];
    j.Ekv = akv.shape[akv.ndim - 1];
    /* converted to the activations' type on upload */
    j.kv_x = (cli_input){cli_attn_dtype(akv.dtype), act, 3, {j.B, j.Skv, j.Ekv}, akv.data};
  }
  /* each weight keeps its file's type */
  for (int i = 0; i < W_COUNT; i++) {
    bool is_bias = i == W_BQ || i == W_BK || i == W_BV || i == W_BO || i == W_INB;
    if (!fw[i]) continue;
    if (!cli_load_npy(w_opt[i], fw[i], floats, is_bias ? 1 : 2, is_bias ? 1 : 2, &aw[i]))
      goto done;
    attn_dtype t = cli_attn_dtype(aw[i].dtype);
    j.w[i] = (cli_input){t, t, aw[i].ndim, {0}, aw[i].data};
    memcpy(j.w[i].shape, aw[i].shape, sizeof aw[i].shape);
  }
  /* Infer the head dim from the query rows and check every shape against it,
   * naming the file, before the library sees them. */
  char why[160];
  int64_t D;
  if (packed) {
    int64_t rows = j.w[W_IN].shape[0], parts = Hq + 2 * Hkv;
    if (rows % parts) {
      cli_errline("--in-proj: %s has %" PRId64 " rows, not a multiple of Hq + 2*Hkv = %" PRId64
              " (--heads %" PRId64 ", --kv-heads %" PRId64 ")",
              fw[W_IN], rows, parts, Hq, Hkv);
      goto done;
    }
    D = rows / parts;
    snprintf(why, sizeof why, "E = %" PRId64 " from --x, D = %" PRId64, j.E, D);
    if (!want_shape(&j, W_IN, fw[W_IN], parts * D, j.E, why) ||
        (bias && !want_shape(&j, W_INB, fw[W_INB], parts * D, 0, why)))
      goto done;
  } else {
    int64_t rows = j.w[W_WQ].shape[0];
    if (rows % Hq) {
      cli_errline("--wq: %s has %" PRId64 " rows, not a multiple of --heads %" PRId64, fw[W_WQ], rows,
              Hq);
      goto done;
    }
    D = rows / Hq;
    snprintf(why, sizeof why, "E = %" PRId64 ", Ekv = %" PRId64 ", Hq = %" PRId64
             ", Hkv = %" PRId64 ", D = %" PRId64 " = rows(wq) / Hq", j.E, j.Ekv, Hq, Hkv, D);
    if (!want_shape(&j, W_WQ, fw[W_WQ], Hq * D, j.E, why) ||
        !want_shape(&j, W_WK, fw[W_WK], Hkv * D, j.Ekv, why) ||
        !want_shape(&j, W_WV, fw[W_WV], Hkv * D, j.Ekv, why) ||
        (bias && (!want_shape(&j, W_BQ, fw[W_BQ], Hq * D, 0, why) ||
                  !want_shape(&j, W_BK, fw[W_BK], Hkv * D, 0, why) ||
                  !want_shape(&j, W_BV, fw[W_BV], Hkv * D, 0, why))))
      goto done;
  }
  snprintf(why, sizeof why, "E = %" PRId64 ", Hq*D = %" PRId64, j.E, Hq * D);
  if (!want_shape(&j, W_WO, fw[W_WO], j.E, Hq * D, why) ||
      (bias && !want_shape(&j, W_BO, fw[W_BO], j.E, 0, why)))
    goto done;

  j.desc.struct_size = sizeof j.desc;
  j.desc.d_model = j.E;
  j.desc.d_kv = fkvx ? j.Ekv : 0;
  j.desc.n_heads = Hq;
  j.desc.n_kv_heads = Hkv;
  j.desc.head_dim = D;
  j.desc.bias = bias;
  j.desc.causal = causal;
  j.desc.max_batch = j.B;
  j.desc.max_seq = j.Sq;
  j.desc.max_kv_seq = fkvx ? j.Skv : 0;
  j.desc.dtype = act;
  j.desc.kv_dtype = have_kv_dtype ? kv_dtype : act;
  j.decode = decode;

  attn_status s = attn_open(dev, &ctx);
  if (s != ATTN_OK) {
    cli_lib_fail(s, NULL);
    goto done;
  }
  if (run_mha_on(ctx, &j, warmup, NULL, check, &res)) goto done;

  cli_print_device(ctx);
  char sx[96], skv[96] = "", so[96];
  cli_dims_fmt(sx, sizeof sx, ax.ndim, ax.shape);
  if (fkvx) cli_dims_fmt(skv, sizeof skv, akv.ndim, akv.shape);
  cli_dims_fmt(so, sizeof so, ax.ndim, ax.shape);
  printf("x %s%s%s  -> out %s\n", sx, fkvx ? "  kv-x " : "", skv, so);
  printf("E %" PRId64 "  Ekv %" PRId64 "  heads %" PRId64 "  kv-heads %" PRId64 "  head dim %" PRId64
         "  %s weights%s  causal %s\n",
         j.E, j.Ekv, Hq, Hkv, D, packed ? "packed" : "separate", bias ? " with biases" : "",
         causal ? "yes" : "no");
  /* the weights' types: one, or each where they differ */
  char wtypes[256] = "";
  attn_dtype w0 = j.w[W_WO].dtype;
  bool mixed = false;
  for (int i = 0; i < W_COUNT; i++)
    if (j.w[i].data && j.w[i].dtype != w0) mixed = true;
  if (!mixed) snprintf(wtypes, sizeof wtypes, "%s", attn_dtype_str(w0));
  else
    for (int i = 0; i < W_COUNT; i++)
      if (j.w[i].data) {
        size_t n = strlen(wtypes);
        snprintf(wtypes + n, sizeof wtypes - n, "%s%s %s", n ? ", " : "", w_opt[i] + 2,
                 attn_dtype_str(j.w[i].dtype));
      }
  printf("dtype x %s  kv %s  out %s  weights %s\n", attn_dtype_str(act),
         attn_dtype_str(j.desc.kv_dtype), attn_dtype_str(act), wtypes);
  double flops = cli_proj_flops(j.B, j.Sq, j.Skv, j.E, j.Ekv, Hq, Hkv, D) +
                 cli_sdpa_flops(j.B, Hq, j.Sq, j.Skv, D, causal);
  if (decode)
    printf("decode: %" PRId64 " steps of one token through a %s KV cache, %.3f ms per token\n",
           j.Sq, attn_dtype_str(j.desc.kv_dtype), res.ms / (double)j.Sq);
  printf("time %.3f ms  %.2f GFLOP/s\n", res.ms, res.ms > 0 ? flops / (res.ms * 1e6) : 0.0);

  if (check) {
    if ((s = attn_open("ref", &ref)) != ATTN_OK) {
      cli_lib_fail(s, "--check");
      goto done;
    }
    /* ref gets the values the device stored, bit for bit */
    mha_job cj = j;
    for (int i = 0; i < W_COUNT; i++)
      if (j.w[i].data) cj.w[i] = res.stored[i];
    cj.x = res.stored[W_COUNT];
    if (j.kv_x.data) cj.kv_x = res.stored[W_COUNT + 1];
    if (run_mha_on(ref, &cj, 0, "--check", false, &chk)) goto done;
    if (!cli_check_close("out", res.out_f, chk.out_f, (size_t)(j.B * j.Sq * j.E),
                         cli_dtype_rtol(act)))
      goto done;
  }
  cli_out_file f = {out_path, cli_npy_dtype(act), ax.ndim, {0}, res.out};
  memcpy(f.shape, ax.shape, sizeof ax.shape);
  rc = cli_write_outputs(&f, 1);
done:
  mha_result_free(&res);
  mha_result_free(&chk);
  attn_close(ref);
  attn_close(ctx);
  npy_free(&ax);
  npy_free(&akv);
  for (int i = 0; i < W_COUNT; i++) npy_free(&aw[i]);
  return rc;
}
