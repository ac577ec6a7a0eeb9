/* attn run: scaled dot-product attention on .npy or random inputs, of any
 * element type (f32, f16, bf16; see --dtype). */
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

#define MAX_REPEAT 1000 /* --repeat's bound: the times are kept to take their median */

void help_run(FILE *f) {
  fprintf(f,
          "Usage: attn run [options]\n"
          "\n"
          "Scaled dot-product attention, out = softmax(scale * Q K^T + mask) V, on one device.\n"
          "Inputs are .npy files (C order; float32 '<f4', float16 '<f2' or bfloat16 '<V2',\n"
          "as numpy.save writes an ml_dtypes.bfloat16 array) or random numbers.\n"
          "\n"
          "Inputs from files:\n"
          "  --q FILE          [B, Hq, Sq, D]\n"
          "  --k FILE          [B, Hkv, Skv, D]   (Hq %% Hkv == 0: grouped-query attention)\n"
          "  --v FILE          [B, Hkv, Skv, Dv]\n"
          "Random inputs, uniform in [-1, 1] (when --q/--k/--v are not given):\n"
          "  --batch N (1) --heads N (8) --kv-heads N (heads) --seq N (128)\n"
          "  --kv-seq N (seq) --dim N (64) --vdim N (dim) --seed N (1)\n"
          "Element types (T: f32, f16 or bf16; 16 bits are storage, arithmetic is fp32):\n"
          "  --dtype T         store q, k and v as T (default: each file's own type; random\n"
          "                    inputs f32); values are rounded to nearest even on upload\n"
          "  --kv-dtype T      store k and v as T (overrides --dtype for them)\n"
          "  --out-dtype T     the type of out and of --out (default: q's type)\n"
          "Options:\n"
          "  --mask FILE       [1|B, 1|Hq, 1|Sq, Skv], leading 1s may be left out; numpy\n"
          "                    bool: true = attend; float32 or float16: added to the scores\n"
          "                    (-inf masks)\n"
          "  --kv-lens FILE    int32 [B]: keys j >= kv_lens[b] are hidden\n"
          "Positions: query row i is at pq = q_pos + i, key j at pk = k_pos + j.\n"
          "  --q-pos N         default Skv - Sq (bottom-right aligned; 0: top-left)\n"
          "  --k-pos N         default 0\n"
          "  --causal          query i sees key j iff pk <= pq\n"
          "  --window L,R      sliding window: key j visible iff pq - L <= pk <= pq + R\n"
          "                    (integers; -1 = unbounded on that side)\n"
          "Scores: s = scale * q.k, then softcap, then ALiBi, then the additive mask:\n"
          "  --scale X         default 1/sqrt(D)\n"
          "  --softcap X       s = X * tanh(s / X) (X > 0)\n"
          "  --alibi FILE      float32 [Hq] slopes: s += -slope[h] * |pq - pk|\n"
          "  --sinks FILE      float32 [Hq] logits: exp(sink[h]) joins each row's softmax\n"
          "                    denominator (out sums over keys only; lse includes it)\n"
          "  --out FILE        write out [B, Hq, Sq, Dv] ('<f4', '<f2' or '<V2': --out-dtype)\n"
          "  --weights-out FILE  write the probabilities [B, Hq, Sq, Skv] (float32)\n"
          "  --lse-out FILE    write the row log-sum-exp [B, Hq, Sq] (float32; -inf for empty\n"
          "                    rows)\n"
          "  --check           rerun on the ref backend with the same stored (rounded) inputs\n"
          "                    and compare every output: fails (exit 1) if max|got - ref| >\n"
          "                    %g + (%g + u) * max|ref|, where u, for the rounding of a\n"
          "                    16-bit out, is 2^-7 for bf16, 2^-10 for f16, 0 for f32\n"
          "  --warmup N        untimed runs before the timed ones (default 1)\n"
          "  --repeat N        timed runs (default 1, at most 1000): the time printed is\n"
          "                    their median, with their min\n"
          "  --device SEL      device selector (default: $ATTN_DEVICE, else %s)\n"
          "  -h, --help        this help\n"
          "\n"
          "Prints the device, the shapes and types, the time of the timed run (the median of\n"
          "the --repeat runs) and its rate in GFLOP/s, counting 4*B*Hq*Sq*Skv*D flops, halved\n"
          "when causal with Sq == Skv. Output files are written only if everything succeeded.\n"
          "Exit 0 ok, 1 failure, 2 usage error.\n",
          CLI_CHECK_ATOL, CLI_CHECK_RTOL, ATTN_DEFAULT_SELECTOR);
}

typedef struct sdpa_job {
  cli_input q, k, v, mask; /* mask.data NULL: none */
  attn_mask_kind mask_kind;
  bool causal, has_scale;
  float scale;
  const int32_t *kv_lens;
  bool has_positions, has_window;
  int64_t q_pos, k_pos, window_left, window_right;
  float softcap;
  const float *alibi, *sinks;
  bool want_weights, want_lse;
  attn_dtype out_dtype;
  /* derived */
  int64_t out_shape[4], w_shape[4], lse_shape[3];
} sdpa_job;

typedef struct sdpa_result {
  void *out;            /* out's elements as stored (out_dtype) */
  float *out_f;         /* the same as floats */
  float *weights, *lse; /* f32 */
  cli_input stored[4];  /* with keep_inputs: q, k, v, mask as the device stored them */
  double ms, min_ms; /* the median and the min of the timed runs */
} sdpa_result;

static void sdpa_result_free(sdpa_result *r) {
  free(r->out);
  free(r->out_f);
  free(r->weights);
  free(r->lse);
  for (int i = 0; i < 4; i++) free((void *)r->stored[i].data);
  memset(r, 0, sizeof *r);
}

static int cmp_double(const void *a, const void *b) {
  const double x = *(const double *)a, y = *(const double *)b;
  return x < y ? -1 : x > y;
}

/* Upload the job to ctx, run it warmup + repeat times (1 <= repeat <=
 * MAX_REPEAT), read the outputs back (and with keep_inputs the inputs as
 * stored, for --check). */
static int run_sdpa_on(attn_context *ctx, const sdpa_job *j, int64_t warmup, int64_t repeat,
                       const char *where, bool keep_inputs, sdpa_result *r) {
  memset(r, 0, sizeof *r);
  attn_tensor *q = NULL, *k = NULL, *v = NULL, *m = NULL, *o = NULL, *w = NULL, *l = NULL;
  attn_status s;
  int rc = EXIT_FAIL;
  if ((s = cli_upload_input(ctx, &j->q, &q)) || (s = cli_upload_input(ctx, &j->k, &k)) ||
      (s = cli_upload_input(ctx, &j->v, &v)) ||
      (j->mask.data && (s = cli_upload_input(ctx, &j->mask, &m))) ||
      (s = attn_tensor_create_typed(ctx, j->out_dtype, 4, j->out_shape, &o)) ||
      (j->want_weights && (s = attn_tensor_create(ctx, 4, j->w_shape, &w))) ||
      (j->want_lse && (s = attn_tensor_create(ctx, 3, j->lse_shape, &l)))) {
    cli_lib_fail(s, where);
    goto done;
  }
  attn_sdpa_args a = ATTN_SDPA_ARGS_INIT;
  a.q = q;
  a.k = k;
  a.v = v;
  a.out = o;
  a.mask = m;
  a.mask_kind = m ? j->mask_kind : ATTN_MASK_NONE;
  a.causal = j->causal;
  a.has_scale = j->has_scale;
  a.scale = j->scale;
  a.kv_lens = j->kv_lens;
  a.weights = w;
  a.lse = l;
  a.has_positions = j->has_positions;
  a.q_pos = j->q_pos;
  a.k_pos = j->k_pos;
  a.has_window = j->has_window;
  a.window_left = j->window_left;
  a.window_right = j->window_right;
  a.softcap = j->softcap;
  a.alibi_slopes = j->alibi;
  a.sinks = j->sinks;
  double times[MAX_REPEAT];
  for (int64_t i = 0; i < warmup + repeat; i++) {
    double t0 = cli_now_ms();
    if ((s = attn_sdpa(ctx, &a)) || (s = attn_synchronize(ctx))) {
      cli_lib_fail(s, where);
      goto done;
    }
    if (i >= warmup) times[i - warmup] = cli_now_ms() - t0;
  }
  qsort(times, (size_t)repeat, sizeof times[0], cmp_double);
  r->ms = repeat % 2 ? times[repeat / 2] : (times[repeat / 2 - 1] + times[repeat / 2]) / 2;
  r->min_ms = times[0];
  cli_input ro;
  if ((w && !(r->weights = cli_alloc_floats(4, j->w_shape, "weights"))) ||
      (l && !(r->lse = cli_alloc_floats(3, j->lse_shape, "lse"))))
    goto done;
  if ((s = cli_read_back(o, &ro)) ||
      (w && (s = attn_tensor_read(w, r->weights, (size_t)attn_tensor_numel(w)))) ||
      (l && (s = attn_tensor_read(l, r->lse, (size_t)attn_tensor_numel(l))))) {
    cli_lib_fail(s, where);
    goto done;
  }
  r->out = (void *)ro.data;
  if (!(r->out_f = cli_to_floats(j->out_dtype, r->out, (size_t)attn_tensor_numel(o), "out")))
    goto done;
  if (keep_inputs) {
    const attn_tensor *in[4] = {q, k, v, m};
    for (int i = 0; i < 4; i++)
      if (in[i] && (s = cli_read_back(in[i], &r->stored[i]))) {
        cli_lib_fail(s, where);
        goto done;
      }
  }
  rc = 0;
done:
  attn_tensor_free(q);
  attn_tensor_free(k);
  attn_tensor_free(v);
  attn_tensor_free(m);
  attn_tensor_free(o);
  attn_tensor_free(w);
  attn_tensor_free(l);
  if (rc) sdpa_result_free(r);
  return rc;
}

/* The bytes a run holds: on the device (inputs and outputs as tensors) and
 * on the host (the inputs, the outputs read back, with --check a second set
 * and the ref run's tensors, which live in host memory). */
static uint64_t in_bytes(const cli_input *in) {
  return in->data ? (uint64_t)cli_numel(in->ndim, in->shape) * attn_dtype_size(in->dtype) : 0;
}
static bool fits_host(attn_context *ctx, const sdpa_job *j, bool check) {
  const uint64_t out = (uint64_t)cli_numel(4, j->out_shape);
  const uint64_t outs = out * attn_dtype_size(j->out_dtype) +
                        (j->want_weights ? (uint64_t)cli_numel(4, j->w_shape) * 4 : 0) +
                        (j->want_lse ? (uint64_t)cli_numel(3, j->lse_shape) * 4 : 0);
  const uint64_t ins = in_bytes(&j->q) + in_bytes(&j->k) + in_bytes(&j->v) + in_bytes(&j->mask);
  const uint64_t dev = ins + outs;
  /* read back: the outputs, out also as floats */
  uint64_t host = ins + outs + out * 4;
  if (check) host += ins + (outs + out * 4) + dev;
  return cli_fits_host(ctx, host, dev, "the run");
}

/* A q, k or v file: rank 4, any float type; the input keeps the file's type
 * unless a --dtype option names one. */
static bool load_qkv(const char *opt, const char *path, bool have_t, attn_dtype t, npy_array *a,
                     cli_input *in) {
  if (!cli_load_npy(opt, path, NPY_F32 | NPY_F16 | NPY_BF16, 4, 4, a)) return false;
  in->src = cli_attn_dtype(a->dtype);
  in->dtype = have_t ? t : in->src;
  in->ndim = 4;
  memcpy(in->shape, a->shape, sizeof in->shape);
  in->data = a->data;
  return true;
}

/* --window L,R: two integers >= -1. */
static bool parse_window(const char *s, int64_t *l, int64_t *r) {
  const char *comma = strchr(s, ',');
  char left[64];
  if (!comma || (size_t)(comma - s) >= sizeof left) {
    cli_usage_fail("--window: '%s' is not L,R (two integers, -1 = unbounded)", s);
    return false;
  }
  memcpy(left, s, (size_t)(comma - s));
  left[comma - s] = '\0';
  return cli_parse_int("--window", left, -1, INT64_MAX, l) &&
         cli_parse_int("--window", comma + 1, -1, INT64_MAX, r);
}

/* --alibi / --sinks: float32 [Hq], every value finite. Exit 2 otherwise. */
static int load_head_vector(const char *opt, const char *path, int64_t Hq, npy_array *a) {
  if (!cli_load_npy(opt, path, NPY_F32, 1, 4, a)) return EXIT_FAIL;
  if (a->ndim != 1 || a->shape[0] != Hq) {
    char got[96];
    cli_dims_fmt(got, sizeof got, a->ndim, a->shape);
    return cli_usage_fail("%s: %s has shape %s; expected [%" PRId64 "], one value per query head",
                          opt, path, got, Hq);
  }
  const float *x = a->data;
  for (int64_t h = 0; h < Hq; h++)
    if (!isfinite(x[h]))
      return cli_usage_fail("%s: %s: value %" PRId64 " is %g, not finite", opt, path, h,
                            (double)x[h]);
  return 0;
}

int cmd_run(int argc, char **argv, const char *default_device) {
  enum {
    O_Q = 256, O_K, O_V, O_MASK, O_KVLENS, O_BATCH, O_HEADS, O_KVHEADS, O_SEQ, O_KVSEQ, O_DIM,
    O_VDIM, O_SEED, O_CAUSAL, O_SCALE, O_OUT, O_WOUT, O_LSEOUT, O_CHECK, O_WARMUP, O_REPEAT, O_DEVICE,
    O_DTYPE, O_KVDTYPE, O_OUTDTYPE, O_QPOS, O_KPOS, O_WINDOW, O_SOFTCAP, O_ALIBI, O_SINKS
  };
  static const struct option opts[] = {
      {"q", required_argument, NULL, O_Q},
      {"k", required_argument, NULL, O_K},
      {"v", required_argument, NULL, O_V},
      {"mask", required_argument, NULL, O_MASK},
      {"kv-lens", required_argument, NULL, O_KVLENS},
      {"batch", required_argument, NULL, O_BATCH},
      {"heads", required_argument, NULL, O_HEADS},
      {"kv-heads", required_argument, NULL, O_KVHEADS},
      {"seq", required_argument, NULL, O_SEQ},
      {"kv-seq", required_argument, NULL, O_KVSEQ},
      {"dim", required_argument, NULL, O_DIM},
      {"vdim", required_argument, NULL, O_VDIM},
      {"seed", required_argument, NULL, O_SEED},
      {"causal", no_argument, NULL, O_CAUSAL},
      {"scale", required_argument, NULL, O_SCALE},
      {"out", required_argument, NULL, O_OUT},
      {"weights-out", required_argument, NULL, O_WOUT},
      {"lse-out", required_argument, NULL, O_LSEOUT},
      {"check", no_argument, NULL, O_CHECK},
      {"warmup", required_argument, NULL, O_WARMUP},
      {"repeat", required_argument, NULL, O_REPEAT},
      {"device", required_argument, NULL, O_DEVICE},
      {"dtype", required_argument, NULL, O_DTYPE},
      {"kv-dtype", required_argument, NULL, O_KVDTYPE},
      {"out-dtype", required_argument, NULL, O_OUTDTYPE},
      {"q-pos", required_argument, NULL, O_QPOS},
      {"k-pos", required_argument, NULL, O_KPOS},
      {"window", required_argument, NULL, O_WINDOW},
      {"softcap", required_argument, NULL, O_SOFTCAP},
      {"alibi", required_argument, NULL, O_ALIBI},
      {"sinks", required_argument, NULL, O_SINKS},
      {"help", no_argument, NULL, 'h'},
      {NULL, 0, NULL, 0}};
  const char *fq = NULL, *fk = NULL, *fv = NULL, *fmask = NULL, *flens = NULL;
  const char *falibi = NULL, *fsinks = NULL;
  bool have_qpos = false, have_kpos = false;
  int64_t qpos = 0, kpos = 0;
  const char *out_path = NULL, *w_path = NULL, *lse_path = NULL, *dev = default_device;
  int64_t B = 1, H = 8, Hkv = 0, S = 128, Skv = 0, D = 64, Dv = 0, seed = 1, warmup = 1, repeat = 1;
  bool random_opt = false, check = false;
  bool have_dtype = false, have_kv_dtype = false, have_out_dtype = false;
  attn_dtype dtype = ATTN_F32, kv_dtype = ATTN_F32, out_dtype = ATTN_F32;
  const char *random_name = NULL;
  sdpa_job j;
  memset(&j, 0, sizeof j);
  int c;
  while ((c = getopt_long(argc, argv, ":h", opts, NULL)) != -1) {
    bool ok = true;
    switch (c) {
    case O_Q: fq = optarg; break;
    case O_K: fk = optarg; break;
    case O_V: fv = optarg; break;
    case O_MASK: fmask = optarg; break;
    case O_KVLENS: flens = optarg; break;
    case O_BATCH: ok = cli_parse_int("--batch", optarg, 1, INT64_MAX, &B); random_name = "--batch"; break;
    case O_HEADS: ok = cli_parse_int("--heads", optarg, 1, INT64_MAX, &H); random_name = "--heads"; break;
    case O_KVHEADS: ok = cli_parse_int("--kv-heads", optarg, 1, INT64_MAX, &Hkv); random_name = "--kv-heads"; break;
    case O_SEQ: ok = cli_parse_int("--seq", optarg, 1, INT64_MAX, &S); random_name = "--seq"; break;
    case O_KVSEQ: ok = cli_parse_int("--kv-seq", optarg, 1, INT64_MAX, &Skv); random_name = "--kv-seq"; break;
    case O_DIM: ok = cli_parse_int("--dim", optarg, 1, INT64_MAX, &D); random_name = "--dim"; break;
    case O_VDIM: ok = cli_parse_int("--vdim", optarg, 1, INT64_MAX, &Dv); random_name = "--vdim"; break;
    case O_SEED: ok = cli_parse_int("--seed", optarg, 0, INT64_MAX, &seed); random_name = "--seed"; break;
    case O_CAUSAL: j.causal = true; break;
    case O_SCALE: ok = cli_parse_float("--scale", optarg, &j.scale); j.has_scale = true; break;
    case O_OUT: out_path = optarg; break;
    case O_WOUT: w_path = optarg; break;
    case O_LSEOUT: lse_path = optarg; break;
    case O_CHECK: check = true; break;
    case O_WARMUP: ok = cli_parse_int("--warmup", optarg, 0, INT64_MAX, &warmup); break;
    case O_REPEAT: ok = cli_parse_int("--repeat", optarg, 1, MAX_REPEAT, &repeat); break;
    case O_DEVICE: dev = optarg; break;
    case O_DTYPE: ok = have_dtype = cli_parse_dtype("--dtype", optarg, &dtype); break;
    case O_KVDTYPE: ok = have_kv_dtype = cli_parse_dtype("--kv-dtype", optarg, &kv_dtype); break;
    case O_OUTDTYPE:
      ok = have_out_dtype = cli_parse_dtype("--out-dtype", optarg, &out_dtype);
      break;
    case O_QPOS: ok = have_qpos = cli_parse_int("--q-pos", optarg, INT64_MIN, INT64_MAX, &qpos); break;
    case O_KPOS: ok = have_kpos = cli_parse_int("--k-pos", optarg, INT64_MIN, INT64_MAX, &kpos); break;
    case O_WINDOW:
      ok = j.has_window = parse_window(optarg, &j.window_left, &j.window_right);
      break;
    case O_SOFTCAP:
      ok = cli_parse_float("--softcap", optarg, &j.softcap);
      if (ok && !(j.softcap > 0.0f && isfinite(j.softcap)))
        return cli_usage_fail("--softcap: '%s' must be a finite number > 0", optarg);
      break;
    case O_ALIBI: falibi = optarg; break;
    case O_SINKS: fsinks = optarg; break;
    case 'h': help_run(stdout); return 0;
    case ':': return cli_usage_fail("option '%s' needs an argument", argv[optind - 1]);
    default: return cli_usage_fail("unknown option '%s'", argv[optind - 1]);
    }
    if (!ok) return EXIT_USAGE;
    if (random_name) random_opt = true;
  }
  if (optind < argc) return cli_usage_fail("unexpected argument '%s'", argv[optind]);
  /* Two outputs naming one file: the later rename would silently replace the
   * earlier output, so the run would report success with one result lost. */
  const char *outs[3] = {out_path, w_path, lse_path};
  static const char *const out_opt[3] = {"--out", "--weights-out", "--lse-out"};
  for (int a = 0; a < 3; a++)
    for (int b = a + 1; b < 3; b++)
      if (outs[a] && outs[b] && cli_same_output(outs[a], outs[b])) {
        if (!strcmp(outs[a], outs[b]))
          return cli_usage_fail("%s and %s name the same file '%s'", out_opt[a], out_opt[b],
                                outs[a]);
        return cli_usage_fail("%s '%s' and %s '%s' name the same file", out_opt[a], outs[a],
                              out_opt[b], outs[b]);
      }
  bool from_files = fq || fk || fv;
  if (from_files && !(fq && fk && fv))
    return cli_usage_fail("--q, --k and --v go together (missing %s)", !fq ? "--q" : !fk ? "--k" : "--v");
  if (from_files && random_opt)
    return cli_usage_fail("%s sets a random input's shape; it cannot be combined with --q/--k/--v",
                      random_name);
  /* --kv-dtype overrides --dtype for k and v */
  bool have_kvt = have_kv_dtype || have_dtype;
  attn_dtype kvt = have_kv_dtype ? kv_dtype : dtype;

  int rc = EXIT_FAIL;
  npy_array aq = {0}, ak = {0}, av = {0}, am = {0}, al = {0}, aa = {0}, as = {0};
  float *rq = NULL, *rk = NULL, *rv = NULL, *mask_f = NULL;
  attn_context *ctx = NULL, *ref = NULL;
  sdpa_result res = {0}, chk = {0};

  if (from_files) {
    if (!load_qkv("--q", fq, have_dtype, dtype, &aq, &j.q) ||
        !load_qkv("--k", fk, have_kvt, kvt, &ak, &j.k) ||
        !load_qkv("--v", fv, have_kvt, kvt, &av, &j.v))
      goto done;
  } else {
    if (!Hkv) Hkv = H;
    if (!Skv) Skv = S;
    if (!Dv) Dv = D;
    int64_t qs[4] = {B, H, S, D}, ks[4] = {B, Hkv, Skv, D}, vs[4] = {B, Hkv, Skv, Dv};
    int64_t nq = cli_numel(4, qs), nk = cli_numel(4, ks), nv = cli_numel(4, vs);
    uint64_t state = (uint64_t)seed * 0x9E3779B97F4A7C15ULL + 1; /* never 0 */
    if (nq < 0 || nk < 0 || nv < 0 || !(rq = cli_random_floats(nq, &state)) ||
        !(rk = cli_random_floats(nk, &state)) || !(rv = cli_random_floats(nv, &state))) {
      cli_errline("random inputs q [%" PRId64 ", %" PRId64 ", %" PRId64 ", %" PRId64
              "] etc. are too large for host memory",
              B, H, S, D);
      goto done;
    }
    cli_input q = {ATTN_F32, have_dtype ? dtype : ATTN_F32, 4, {B, H, S, D}, rq};
    cli_input k = {ATTN_F32, have_kvt ? kvt : ATTN_F32, 4, {B, Hkv, Skv, D}, rk};
    cli_input v = {ATTN_F32, have_kvt ? kvt : ATTN_F32, 4, {B, Hkv, Skv, Dv}, rv};
    j.q = q;
    j.k = k;
    j.v = v;
  }
  j.out_dtype = have_out_dtype ? out_dtype : j.q.dtype;
  /* Output shapes follow q and v; the library checks that the inputs agree. */
  const int64_t *qs = j.q.shape, *ks = j.k.shape, *vs = j.v.shape;
  int64_t Bq = qs[0], Hq = qs[1], Sq = qs[2], Dq = qs[3], Sk = ks[2], Dvv = vs[3];
  int64_t os[4] = {Bq, Hq, Sq, Dvv}, ws[4] = {Bq, Hq, Sq, Sk}, ls[3] = {Bq, Hq, Sq};
  memcpy(j.out_shape, os, sizeof os);
  memcpy(j.w_shape, ws, sizeof ws);
  memcpy(j.lse_shape, ls, sizeof ls);
  j.want_weights = w_path != NULL;
  j.want_lse = lse_path != NULL;

  if (have_qpos || have_kpos) {
    j.has_positions = true;
    j.q_pos = have_qpos ? qpos : Sk - Sq;
    j.k_pos = have_kpos ? kpos : 0;
  }
  if (falibi) {
    if ((rc = load_head_vector("--alibi", falibi, Hq, &aa))) goto done;
    j.alibi = aa.data;
  }
  if (fsinks) {
    if ((rc = load_head_vector("--sinks", fsinks, Hq, &as))) goto done;
    j.sinks = as.data;
  }
  rc = EXIT_FAIL;
  if (fmask) {
    /* bool, or an additive float32 or float16 mask (kept in its type) */
    if (!cli_load_npy("--mask", fmask, NPY_F32 | NPY_F16 | NPY_BOOL, 1, 4, &am)) goto done;
    /* numpy broadcasting: missing leading dimensions are 1 */
    int pad = 4 - am.ndim;
    j.mask.ndim = 4;
    for (int i = 0; i < 4; i++) j.mask.shape[i] = i < pad ? 1 : am.shape[i - pad];
    if (am.dtype == NPY_BOOL) {
      if (!(mask_f = malloc(am.count * sizeof(float)))) {
        cli_errline("--mask: %s: out of memory", fmask);
        goto done;
      }
      const uint8_t *b = am.data;
      for (size_t i = 0; i < am.count; i++) mask_f[i] = b[i] ? 1.0f : 0.0f;
      j.mask.src = j.mask.dtype = ATTN_F32;
      j.mask.data = mask_f;
      j.mask_kind = ATTN_MASK_BOOL;
    } else {
      j.mask.src = j.mask.dtype = cli_attn_dtype(am.dtype);
      j.mask.data = am.data;
      j.mask_kind = ATTN_MASK_ADDITIVE;
    }
  }
  if (flens) {
    if (!cli_load_npy("--kv-lens", flens, NPY_I32, 1, 1, &al)) goto done;
    if (al.shape[0] != Bq) {
      cli_errline("--kv-lens: %s has %" PRId64 " entries; expected one per batch item, B = %" PRId64,
              flens, al.shape[0], Bq);
      goto done;
    }
    j.kv_lens = al.data;
  }

  attn_status s = attn_open(dev, &ctx);
  if (s != ATTN_OK) {
    cli_lib_fail(s, NULL);
    goto done;
  }
  if (!fits_host(ctx, &j, check)) goto done;
  if (run_sdpa_on(ctx, &j, warmup, repeat, NULL, check, &res)) goto done;

  char sq[96], sk[96], sv[96], so[96], sm[112] = "none";
  cli_dims_fmt(sq, sizeof sq, 4, j.q.shape);
  cli_dims_fmt(sk, sizeof sk, 4, j.k.shape);
  cli_dims_fmt(sv, sizeof sv, 4, j.v.shape);
  cli_dims_fmt(so, sizeof so, 4, j.out_shape);
  if (j.mask.data) {
    char t[96];
    cli_dims_fmt(t, sizeof t, 4, j.mask.shape);
    snprintf(sm, sizeof sm, "%s %s%s", j.mask_kind == ATTN_MASK_BOOL ? "bool" : "additive", t,
             j.mask.dtype == ATTN_F16 ? " f16" : "");
  }
  cli_print_device(ctx);
  printf("q %s  k %s  v %s  -> out %s\n", sq, sk, sv, so);
  printf("dtype q %s  k %s  v %s  out %s\n", attn_dtype_str(j.q.dtype), attn_dtype_str(j.k.dtype),
         attn_dtype_str(j.v.dtype), attn_dtype_str(j.out_dtype));
  printf("mask %s  causal %s  kv-lens %s  scale %g\n", sm, j.causal ? "yes" : "no",
         j.kv_lens ? "yes" : "no", j.has_scale ? j.scale : 1.0 / sqrt((double)Dq));
  if (j.has_positions || j.has_window || j.softcap > 0 || j.alibi || j.sinks) {
    printf("q-pos %" PRId64 "  k-pos %" PRId64, j.has_positions ? j.q_pos : Sk - Sq,
           j.has_positions ? j.k_pos : (int64_t)0);
    if (j.has_window) printf("  window %" PRId64 ",%" PRId64, j.window_left, j.window_right);
    if (j.softcap > 0) printf("  softcap %g", (double)j.softcap);
    printf("%s%s\n", j.alibi ? "  alibi" : "", j.sinks ? "  sinks" : "");
  }
  double flops = cli_sdpa_flops(Bq, Hq, Sq, Sk, Dq, j.causal);
  printf("time %.3f ms  %.2f GFLOP/s", res.ms, res.ms > 0 ? flops / (res.ms * 1e6) : 0.0);
  if (repeat > 1) printf("  (median of %" PRId64 " runs, min %.3f ms)", repeat, res.min_ms);
  printf("\n");

  if (check) {
    if ((s = attn_open("ref", &ref)) != ATTN_OK) {
      cli_lib_fail(s, "--check");
      goto done;
    }
    /* ref gets the values the device stored, bit for bit */
    sdpa_job cj = j;
    cj.q = res.stored[0];
    cj.k = res.stored[1];
    cj.v = res.stored[2];
    if (j.mask.data) cj.mask = res.stored[3];
    if (run_sdpa_on(ref, &cj, 0, 1, "--check", false, &chk)) goto done;
    bool ok = cli_check_close("out", res.out_f, chk.out_f, (size_t)cli_numel(4, j.out_shape),
                              cli_dtype_rtol(j.out_dtype));
    if (ok && j.want_weights)
      ok = cli_check_close("weights", res.weights, chk.weights, (size_t)cli_numel(4, j.w_shape), 0);
    if (ok && j.want_lse)
      ok = cli_check_close("lse", res.lse, chk.lse, (size_t)cli_numel(3, j.lse_shape), 0);
    if (!ok) goto done;
  }

  cli_out_file files[3] = {{out_path, cli_npy_dtype(j.out_dtype), 4, {0}, res.out},
                           {w_path, NPY_F32, 4, {0}, res.weights},
                           {lse_path, NPY_F32, 3, {0}, res.lse}};
  memcpy(files[0].shape, j.out_shape, sizeof j.out_shape);
  memcpy(files[1].shape, j.w_shape, sizeof j.w_shape);
  memcpy(files[2].shape, j.lse_shape, sizeof j.lse_shape);
  rc = cli_write_outputs(files, 3);
done:
  sdpa_result_free(&res);
  sdpa_result_free(&chk);
  attn_close(ref);
  attn_close(ctx);
  npy_free(&aq);
  npy_free(&ak);
  npy_free(&av);
  npy_free(&am);
  npy_free(&al);
  npy_free(&aa);
  npy_free(&as);
  free(rq);
  free(rk);
  free(rv);
  free(mask_f);
  return rc;
}
