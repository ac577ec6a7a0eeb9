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
          "                [--causal] [--out FILE] [--check] [--device SEL]\n"
          "\n"
          "Multi-head attention with projections, weights in PyTorch nn.Linear convention\n"
          "(W [out, in], y = x W^T + b); all files float32 .npy, as numpy.save writes them.\n"
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
          "  --out FILE      write out, the same shape as x\n"
          "  --check         rerun on the ref backend: fails (exit 1) if\n"
          "                  max|got - ref| > %g + %g * max|ref|\n"
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
  const float *x, *kv_x;
  npy_array w[W_COUNT]; /* data NULL when not given */
} mha_job;

static int run_mha_on(attn_context *ctx, const mha_job *j, int64_t warmup, const char *where,
                      float *out, double *ms) {
  attn_tensor *wt[W_COUNT] = {0}, *x = NULL, *kvx = NULL, *o = NULL;
  attn_mha *g = NULL;
  attn_status s = ATTN_OK;
  int rc = EXIT_FAIL;
  for (int i = 0; i < W_COUNT; i++)
    if (j->w[i].data && (s = cli_upload(ctx, j->w[i].ndim, j->w[i].shape, j->w[i].data, &wt[i])))
      goto fail;
  int64_t xs[3] = {j->B, j->Sq, j->E}, kvs[3] = {j->B, j->Skv, j->Ekv};
  if ((s = cli_upload(ctx, 3, xs, j->x, &x)) || (j->kv_x && (s = cli_upload(ctx, 3, kvs, j->kv_x, &kvx))) ||
      (s = attn_tensor_create(ctx, 3, xs, &o)))
    goto fail;
  attn_mha_weights w = {wt[W_WQ], wt[W_WK], wt[W_WV], wt[W_WO], wt[W_BQ],
                        wt[W_BK], wt[W_BV], wt[W_BO], wt[W_IN], wt[W_INB]};
  if ((s = attn_mha_create(ctx, &j->desc, &w, &g))) goto fail;
  for (int64_t i = 0; i <= warmup; i++) {
    double t0 = cli_now_ms();
    if ((s = attn_mha_run(g, x, kvx, o)) || (s = attn_synchronize(ctx))) goto fail;
    *ms = cli_now_ms() - t0;
  }
  if ((s = attn_tensor_read(o, out, (size_t)attn_tensor_numel(o)))) goto fail;
  rc = 0;
fail:
  if (rc) cli_lib_fail(s, where);
  attn_mha_free(g);
  for (int i = 0; i < W_COUNT; i++) attn_tensor_free(wt[i]);
  attn_tensor_free(x);
  attn_tensor_free(kvx);
  attn_tensor_free(o);
  return rc;
}

/* Shape check of a weight file against what x and the heads imply. */
static bool want_shape(const mha_job *j, int which, const char *path, int64_t rows, int64_t cols,
                       const char *why) {
  const npy_array *a = &j->w[which];
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
         O_W0 };
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
  bool causal = false, check = false;
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
  npy_array ax = {0}, akv = {0};
  float *out = NULL, *ref_out = NULL;
  attn_context *ctx = NULL, *ref = NULL;

  if (!cli_load_npy("--x", fx, NPY_F32, 2, 3, &ax)) goto done;
  int xr = ax.ndim;
  j.B = xr == 3 ? ax.shape[0] : 1;
  j.Sq = ax.shape[xr - 2];
  j.E = ax.shape[xr - 1];
  j.x = ax.data;
  j.Skv = j.Sq;
  j.Ekv = j.E;
  if (fkvx) {
    if (!cli_load_npy("--kv-x", fkvx, NPY_F32, 2, 3, &akv)) goto done;
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
    j.kv_x = akv.data;
  }
  for (int i = 0; i < W_COUNT; i++) {
    bool is_bias = i == W_BQ || i == W_BK || i == W_BV || i == W_BO || i == W_INB;
    if (fw[i] && !cli_load_npy(w_opt[i], fw[i], NPY_F32, is_bias ? 1 : 2, is_bias ? 1 : 2, &j.w[i]))
      goto done;
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

  int64_t os[3] = {j.B, j.Sq, j.E};
  if (!(out = cli_alloc_floats(3, os, "out"))) goto done;
  attn_status s = attn_open(dev, &ctx);
  if (s != ATTN_OK) {
    cli_lib_fail(s, NULL);
    goto done;
  }
  double ms = 0;
  if (run_mha_on(ctx, &j, warmup, NULL, out, &ms)) goto done;

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
  double flops = cli_proj_flops(j.B, j.Sq, j.Skv, j.E, j.Ekv, Hq, Hkv, D) +
                 cli_sdpa_flops(j.B, Hq, j.Sq, j.Skv, D, causal);
  printf("time %.3f ms  %.2f GFLOP/s\n", ms, ms > 0 ? flops / (ms * 1e6) : 0.0);

  if (check) {
    if (!(ref_out = cli_alloc_floats(3, os, "out"))) goto done;
    if ((s = attn_open("ref", &ref)) != ATTN_OK) {
      cli_lib_fail(s, "--check");
      goto done;
    }
    double rms;
    if (run_mha_on(ref, &j, 0, "--check", ref_out, &rms)) goto done;
    if (!cli_check_close("out", out, ref_out, (size_t)cli_numel(3, os), 0)) goto done;
  }
  cli_out_file f = {out_path, NPY_F32, ax.ndim, {0}, out};
  memcpy(f.shape, ax.shape, sizeof ax.shape);
  rc = cli_write_outputs(&f, 1);
done:
  attn_close(ref);
  attn_close(ctx);
  free(out);
  free(ref_out);
  npy_free(&ax);
  npy_free(&akv);
  for (int i = 0; i < W_COUNT; i++) npy_free(&j.w[i]);
  return rc;
}
