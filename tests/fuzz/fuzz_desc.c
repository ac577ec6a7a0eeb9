/* Fuzzes the SDPA and MHA argument validation (core/sdpa.c, core/graph.c,
 * core/tensor.c) on a ref context: the fuzz bytes choose the shapes, views
 * (offsets, strides, broadcasts, shared storage), flags, scale, kv_lens and
 * mask kind, mostly close to valid so that both the refusals and the runs are
 * reached. Only tiny shapes, so that one input takes microseconds.
 *
 * Invariants:
 *  - a refusal is one of the argument statuses, with a message that names
 *    the public function;
 *  - an accepted call gives what an independent double-precision computation
 *    (tests/testutil.c) gives from the same inputs, read back through the
 *    views: so a view the core let through but the backend indexes wrongly
 *    shows up as a wrong number, or as an ASan report in the (instrumented)
 *    ref module;
 *  - a call writes no storage element outside its output views, accepted or
 *    not (inputs and neighbouring data survive). */
#include <math.h>
#include <string.h>

#include "fuzz.h"
#include "internal.h"
#include "testutil.h"

static attn_context *ctx;

int LLVMFuzzerInitialize(int *argc, char ***argv) {
  (void)argc;
  (void)argv;
  /* ATTN_BACKEND_PATH names the directory of attn_ref.so (make check and
   * tests/ci-hardening.sh set it). */
  if (attn_open("ref", &ctx) != ATTN_OK) {
    fprintf(stderr, "fuzz_desc: cannot open the ref backend: %s\n", attn_last_error());
    exit(99);
  }
  return 0;
}

/* ---- reading the fuzz bytes (zeros once they run out) --------------------- */

typedef struct reader {
  const uint8_t *p;
  size_t n;
} reader;

static unsigned take(reader *r) {
  if (!r->n) return 0;
  r->n--;
  return *r->p++;
}

/* A small value near `want`: usually want itself, sometimes one off, zero,
 * negative or absurd, so that each refusal is reached. */
static int64_t near(reader *r, int64_t want) {
  unsigned t = take(r);
  switch (t & 15) {
  case 13: return want + 1;
  case 14: return want > 1 ? want - 1 : 0;
  case 15: {
    static const int64_t odd[] = {0, -1, INT64_MAX, (int64_t)1 << 62, INT64_MIN, 3};
    return odd[(t >> 4) % 6];
  }
  default: return want;
  }
}

/* ---- tensors, all freed at the end of each input -------------------------- */

#define MAX_T 32
typedef struct state {
  attn_tensor *t[MAX_T];
  int nt;
  /* Storages with their host image, to find writes outside the outputs. */
  attn_tensor *base[MAX_T];
  int nbase;
} state;

static attn_tensor *keep(state *s, attn_tensor *t) {
  if (t && s->nt < MAX_T) s->t[s->nt++] = t;
  else attn_tensor_free(t); /* never: MAX_T bounds what an input creates */
  return t;
}

static void free_all(state *s) {
  for (int i = 0; i < s->nt; i++) attn_tensor_free(s->t[i]);
  s->nt = s->nbase = 0;
}

static uint64_t rng;
static float next_value(void) {
  return (float)((double)(tu_rand_u64(&rng) >> 11) / 9007199254740992.0 * 2.0 - 1.0);
}

/* A contiguous 1-D storage of n floats, filled by kind: 0 uniform in [-1, 1],
 * 1 zeros and ones, 2 zeros and -inf (for additive masks only). */
static attn_tensor *new_storage(state *s, int64_t n, int kind, attn_dtype dt) {
  attn_tensor *t = NULL;
  if (n < 1 || n > 4096 || s->nbase >= MAX_T) return NULL;
  if (attn_tensor_create_typed(ctx, dt, 1, &n, &t) != ATTN_OK) {
    FUZZ_CHECK(0, "cannot create %lld floats: %s", (long long)n, attn_last_error());
  }
  float host[4096];
  for (int64_t i = 0; i < n; i++) {
    float u = next_value();
    host[i] = kind == 0 ? u : kind == 1 ? (u > -0.3f) : (u > -0.3f ? 0.0f : -INFINITY);
  }
  FUZZ_CHECK(attn_tensor_write(t, host, (size_t)n) == ATTN_OK, "write: %s", attn_last_error());
  s->base[s->nbase++] = t;
  return keep(s, t);
}

/* A view of the given logical shape: its own storage or a shared pool,
 * contiguous, with padding, heads/seq swapped (the [B,S,H,D] layout), or
 * broadcast; or NULL when the bytes ask for one the core refuses to build
 * (that refusal is checked too). */
static attn_tensor *new_operand(state *s, reader *r, attn_tensor *pool, int ndim,
                                const int64_t *want, int fill) {
  int64_t shape[4] = {1, 1, 1, 1}, strides[4];
  for (int i = 0; i < ndim; i++) shape[i] = near(r, want[i]);
  int nd = ndim;
  unsigned t = take(r);
  if ((t & 31) == 31) nd = 1 + (int)((t >> 5) % 4); /* a wrong rank */
  unsigned layout = take(r) % 6;
  int64_t pad = layout == 1 ? 1 + take(r) % 3 : 0, st = 1;
#define SANE(x) ((x) > 0 && (x) < 64 ? (x) : 1)
  for (int i = nd - 1; i >= 0; i--) {
    strides[i] = st;
    st *= SANE(shape[i]) + (i == nd - 1 ? pad : 0);
  }
  if (layout == 2 && nd == 4) { /* [B,H,S,D] stored as [B,S,H,D] */
    const int64_t H = SANE(shape[1]), S = SANE(shape[2]), Dd = SANE(shape[3]);
    strides[3] = 1, strides[1] = Dd, strides[2] = H * Dd, strides[0] = S * H * Dd;
  }
#undef SANE
  if (layout == 3) strides[take(r) % (unsigned)nd] = 0; /* broadcast one dim */
  if (layout == 4) strides[take(r) % (unsigned)nd] = (int64_t)(take(r) % 9) - 1; /* raw */
  /* layout 5: contiguous in the shared pool */
  int64_t offset = take(r) % 8;
  if ((take(r) & 63) == 63) offset = -1;

  /* Elements the view spans (if sane), for its own storage. */
  int64_t span = offset > 0 ? offset + 1 : 1;
  for (int i = 0; i < nd; i++)
    if (shape[i] > 0 && shape[i] < 64 && strides[i] >= 0 && strides[i] < 4096)
      span += (shape[i] - 1) * strides[i];
  /* Mostly f32; one in four storages f16 or bf16 (the pool is f32). */
  const unsigned tb = take(r);
  const attn_dtype dt = (tb & 3) ? ATTN_F32 : (tb & 4) ? ATTN_F16 : ATTN_BF16;
  attn_tensor *base = (layout == 5 || (take(r) & 7) == 7)
                          ? pool
                          : new_storage(s, span - (take(r) % 16 == 0), fill, dt);
  if (!base) return NULL;
  attn_tensor *v = NULL;
  attn_status st2 = attn_tensor_view(base, offset, nd, shape, strides, &v);
  if (st2 != ATTN_OK) {
    FUZZ_CHECK(st2 == ATTN_ERR_INVALID_ARG || st2 == ATTN_ERR_SHAPE || st2 == ATTN_ERR_OVERFLOW,
               "attn_tensor_view status %d: %s", (int)st2, attn_last_error());
    FUZZ_CHECK(strncmp(attn_last_error(), "attn_tensor_view: ", 18) == 0, "message \"%s\"",
               attn_last_error());
    FUZZ_CHECK(v == NULL, "view set on failure");
    return NULL;
  }
  return keep(s, v);
}

/* ---- snapshots: nothing outside the outputs may change -------------------- */

typedef struct snapshot {
  int n;
  float *img[MAX_T];
  int64_t len[MAX_T];
} snapshot;

static void snap(const state *s, snapshot *sn) {
  sn->n = s->nbase;
  for (int i = 0; i < s->nbase; i++) {
    sn->len[i] = attn_tensor_numel(s->base[i]);
    sn->img[i] = malloc((size_t)sn->len[i] * sizeof(float));
    FUZZ_CHECK(sn->img[i] != NULL, "out of memory");
    FUZZ_CHECK(attn_tensor_read(s->base[i], sn->img[i], (size_t)sn->len[i]) == ATTN_OK,
               "read: %s", attn_last_error());
  }
}

/* Is element e of storage st reachable through one of the outputs? */
static int writable(const attn_tensor *const *outs, int nouts, const attn_storage *st, int64_t e) {
  for (int o = 0; o < nouts; o++) {
    const attn_tensor *t = outs[o];
    if (!t || t->st != st) continue;
    attn_view v = attn__tensor_view4(t);
    for (int64_t a = 0; a < v.shape[0]; a++)
      for (int64_t b = 0; b < v.shape[1]; b++)
        for (int64_t c = 0; c < v.shape[2]; c++)
          for (int64_t d = 0; d < v.shape[3]; d++)
            if (v.offset + a * v.strides[0] + b * v.strides[1] + c * v.strides[2] +
                    d * v.strides[3] ==
                e)
              return 1;
  }
  return 0;
}

static void check_untouched(const state *s, snapshot *sn, const attn_tensor *const *outs,
                            int nouts, const char *what) {
  for (int i = 0; i < sn->n; i++) {
    float *now = malloc((size_t)sn->len[i] * sizeof(float));
    FUZZ_CHECK(now != NULL, "out of memory");
    FUZZ_CHECK(attn_tensor_read(s->base[i], now, (size_t)sn->len[i]) == ATTN_OK, "read: %s",
               attn_last_error());
    for (int64_t e = 0; e < sn->len[i]; e++)
      if (memcmp(&now[e], &sn->img[i][e], sizeof(float)) != 0)
        FUZZ_CHECK(writable(outs, nouts, s->base[i]->st, e),
                   "%s wrote storage %d element %lld outside its outputs", what, i, (long long)e);
    free(now);
    free(sn->img[i]);
  }
  sn->n = 0;
}

static float *read_all(const attn_tensor *t) {
  int64_t n = attn_tensor_numel(t);
  float *h = malloc((size_t)n * sizeof(float));
  FUZZ_CHECK(h != NULL, "out of memory");
  FUZZ_CHECK(attn_tensor_read(t, h, (size_t)n) == ATTN_OK, "read: %s", attn_last_error());
  return h;
}

/* msg: attn_last_error() right after the call (later calls clear it). */
static void check_refusal(attn_status st, const char *fn, const char *msg) {
  FUZZ_CHECK(st == ATTN_ERR_INVALID_ARG || st == ATTN_ERR_SHAPE || st == ATTN_ERR_OVERFLOW ||
                 st == ATTN_ERR_DEVICE_MEMORY,
             "%s: status %d (%s): %s", fn, (int)st, attn_status_str(st), msg);
  size_t n = strlen(fn);
  FUZZ_CHECK(strncmp(msg, fn, n) == 0 && msg[n] == ':' && msg[n + 1] == ' ' && msg[n + 2],
             "message \"%s\" does not name %s", msg, fn);
}

/* ---- SDPA ------------------------------------------------------------------ */

static void fuzz_sdpa(reader *r) {
  state s = {.nt = 0};
  attn_tensor *pool = new_storage(&s, 1024, 0, ATTN_F32);
  const int64_t B = 1 + take(r) % 2, Hkv = 1 + take(r) % 2, Hq = Hkv * (1 + take(r) % 2),
                Sq = 1 + take(r) % 3, Skv = 1 + take(r) % 4, D = 1 + take(r) % 4,
                Dv = 1 + take(r) % 3;
  const int64_t qs[4] = {B, Hq, Sq, D}, ks[4] = {B, Hkv, Skv, D}, vs[4] = {B, Hkv, Skv, Dv},
                os[4] = {B, Hq, Sq, Dv}, ws[4] = {B, Hq, Sq, Skv};
  attn_sdpa_args a;
  memset(&a, 0, sizeof a);
  a.struct_size = sizeof a;
  a.q = new_operand(&s, r, pool, 4, qs, 0);
  a.k = new_operand(&s, r, pool, 4, ks, 0);
  a.v = new_operand(&s, r, pool, 4, vs, 0);
  a.out = new_operand(&s, r, pool, 4, os, 0);
  unsigned f = take(r);
  a.mask_kind = (attn_mask_kind)(f % 4); /* 3 is not a kind */
  if (f & 4) {
    const int64_t ms[4] = {(f & 8) ? B : 1, (f & 16) ? Hq : 1, (f & 32) ? 1 : Sq, Skv};
    a.mask = new_operand(&s, r, pool, 4, ms, a.mask_kind == ATTN_MASK_BOOL ? 1 : 2);
  }
  f = take(r);
  if (f & 1) a.weights = new_operand(&s, r, pool, 4, ws, 0);
  if (f & 2) a.lse = new_operand(&s, r, pool, 3, os, 0);
  a.causal = (f & 4) != 0;
  /* B entries are the caller's duty; q's batch may be B + 1 or 3 (near()). */
  int32_t kv_lens[4];
  if (f & 8) {
    for (int b = 0; b < 4; b++) kv_lens[b] = (int32_t)(int8_t)take(r) % (int32_t)(Skv + 2);
    a.kv_lens = kv_lens;
  }
  if (f & 16) {
    static const float scales[] = {0.0f, 0.5f, -2.0f, 1e-3f, 40.0f, NAN, INFINITY, -INFINITY};
    unsigned t = take(r);
    a.has_scale = true;
    a.scale = (t & 8) ? (float)(int8_t)take(r) / 4.0f : scales[t % 8];
  }
  /* The options of 0.3, valid and not: positions, windows from -2, softcaps
   * and per-head slopes / sinks with a NaN or inf now and then. */
  f = take(r);
  if (f & 1) {
    a.has_positions = true;
    a.q_pos = (int8_t)take(r) % 8;
    a.k_pos = (f & 64) ? INT64_MAX - (int64_t)take(r) : (int8_t)take(r) % 8;
  }
  if (f & 2) {
    a.has_window = true;
    a.window_left = (int64_t)(take(r) % 6) - 2;
    a.window_right = (int64_t)(take(r) % 6) - 2;
  }
  if (f & 4) {
    static const float caps[] = {0.5f, 3.0f, 30.0f, -1.0f, NAN, INFINITY, 1e-30f, 0.0f};
    a.softcap = caps[take(r) % 8];
  }
  float slopes[4], sinks[4];
  static const float odd[] = {NAN, INFINITY, -INFINITY};
  if (f & 8) {
    for (int h = 0; h < 4; h++) slopes[h] = (float)(int8_t)take(r) / 32.0f;
    if (f & 128) slopes[take(r) % 4] = odd[take(r) % 3];
    a.alibi_slopes = slopes;
  }
  if (f & 16) {
    for (int h = 0; h < 4; h++) sinks[h] = (float)(int8_t)take(r) / 16.0f;
    if (f & 32) sinks[take(r) % 4] = odd[take(r) % 3];
    a.sinks = sinks;
  }

  snapshot sn;
  snap(&s, &sn);
  attn_status st = attn_sdpa(ctx, &a);
  char msg[2048];
  snprintf(msg, sizeof msg, "%s", attn_last_error());
  const attn_tensor *outs[3] = {a.out, a.weights, a.lse};
  check_untouched(&s, &sn, outs, 3, "attn_sdpa");
  if (st != ATTN_OK) {
    check_refusal(st, "attn_sdpa", msg);
    free_all(&s);
    return;
  }

  /* Accepted: compare with the double oracle on the views' own contents. */
  float *q = read_all(a.q), *k = read_all(a.k), *v = read_all(a.v);
  float *m = a.mask ? read_all(a.mask) : NULL;
  /* The shapes the core accepted (q may differ from the ones asked for, as
   * long as everything agrees with it). */
  const int64_t aB = a.q->shape[0], aHq = a.q->shape[1], aSq = a.q->shape[2],
                aD = a.q->shape[3], aHkv = a.k->shape[1], aSkv = a.k->shape[2],
                aDv = a.v->shape[3];
  tu_sdpa_problem p = {.B = aB, .Hq = aHq, .Hkv = aHkv, .Sq = aSq, .Skv = aSkv, .D = aD, .Dv = aDv,
                       .q = q, .k = k, .v = v, .mask = m, .mask_kind = a.mask_kind,
                       .mask_b = a.mask ? a.mask->shape[0] : 1,
                       .mask_h = a.mask ? a.mask->shape[1] : 1,
                       .mask_q = a.mask ? a.mask->shape[2] : 0, .causal = a.causal,
                       .has_positions = a.has_positions, .q_pos = a.q_pos, .k_pos = a.k_pos,
                       .has_window = a.has_window, .window_left = a.window_left,
                       .window_right = a.window_right, .softcap = a.softcap,
                       .alibi = a.alibi_slopes, .sinks = a.sinks,
                       .scale = a.has_scale ? (double)a.scale : (double)(float)(1.0 / sqrt((double)aD)),
                       .kv_lens = a.kv_lens};
  const size_t no = (size_t)(aB * aHq * aSq * aDv), nw = (size_t)(aB * aHq * aSq * aSkv),
               nl = (size_t)(aB * aHq * aSq);
  double *want_o = malloc(no * sizeof(double)), *want_w = malloc(nw * sizeof(double)),
         *want_l = malloc(nl * sizeof(double));
  FUZZ_CHECK(want_o && want_w && want_l, "out of memory");
  tu_sdpa_double(&p, want_o, want_w, want_l);
  float *got = read_all(a.out);
  FUZZ_CHECK(tu_check_close_typed("fuzz sdpa out", attn_tensor_dtype(a.out), got, want_o, no,
                                  NULL),
             "out differs from the oracle");
  free(got);
  if (a.weights) {
    got = read_all(a.weights);
    FUZZ_CHECK(tu_check_close_typed("fuzz sdpa weights", attn_tensor_dtype(a.weights), got,
                                    want_w, nw, NULL),
               "weights differ from the oracle");
    free(got);
  }
  if (a.lse) {
    got = read_all(a.lse);
    FUZZ_CHECK(tu_check_close("fuzz sdpa lse", got, want_l, nl, NULL),
               "lse differs from the oracle");
    free(got);
  }
  free(q);
  free(k);
  free(v);
  free(m);
  free(want_o);
  free(want_w);
  free(want_l);
  free_all(&s);
}

/* ---- MHA ------------------------------------------------------------------- */

/* The graph in double from the same float inputs; projections are rounded
 * to float as the graph stores them. out [B,S,E]. */
static void mha_oracle(const attn_mha_desc *d, int64_t Hkv, int64_t D, int64_t Ekv,
                       const float *const *w, const float *x, const float *kvx, int64_t B,
                       int64_t S, int64_t Skv, double *out) {
  const int64_t E = d->d_model, Hq = d->n_heads, HqD = Hq * D, HkvD = Hkv * D;
  double *tmp = malloc((size_t)(B * (S > Skv ? S : Skv) * (HqD > E ? HqD : E)) * sizeof(double));
  float *qp = malloc((size_t)(B * S * HqD) * sizeof(float));
  float *kp = malloc((size_t)(B * Skv * HkvD) * sizeof(float));
  float *vp = malloc((size_t)(B * Skv * HkvD) * sizeof(float));
  float *qh = malloc((size_t)(B * S * HqD) * sizeof(float));
  float *kh = malloc((size_t)(B * Skv * HkvD) * sizeof(float));
  float *vh = malloc((size_t)(B * Skv * HkvD) * sizeof(float));
  double *ao = malloc((size_t)(B * S * HqD) * sizeof(double));
  float *am = malloc((size_t)(B * S * HqD) * sizeof(float));
  FUZZ_CHECK(tmp && qp && kp && vp && qh && kh && vh && ao && am, "out of memory");
  tu_linear_double(x, B * S, E, w[0], w[4], HqD, tmp);
  for (int64_t i = 0; i < B * S * HqD; i++) qp[i] = (float)tmp[i];
  tu_linear_double(kvx, B * Skv, Ekv, w[1], w[5], HkvD, tmp);
  for (int64_t i = 0; i < B * Skv * HkvD; i++) kp[i] = (float)tmp[i];
  tu_linear_double(kvx, B * Skv, Ekv, w[2], w[6], HkvD, tmp);
  for (int64_t i = 0; i < B * Skv * HkvD; i++) vp[i] = (float)tmp[i];
  /* [B,S,H,D] -> [B,H,S,D] */
  for (int64_t b = 0; b < B; b++)
    for (int64_t h = 0; h < Hq; h++)
      for (int64_t i = 0; i < S; i++)
        for (int64_t e = 0; e < D; e++)
          qh[((b * Hq + h) * S + i) * D + e] = qp[(b * S + i) * HqD + h * D + e];
  for (int64_t b = 0; b < B; b++)
    for (int64_t h = 0; h < Hkv; h++)
      for (int64_t i = 0; i < Skv; i++)
        for (int64_t e = 0; e < D; e++) {
          kh[((b * Hkv + h) * Skv + i) * D + e] = kp[(b * Skv + i) * HkvD + h * D + e];
          vh[((b * Hkv + h) * Skv + i) * D + e] = vp[(b * Skv + i) * HkvD + h * D + e];
        }
  tu_sdpa_problem p = {.B = B, .Hq = Hq, .Hkv = Hkv, .Sq = S, .Skv = Skv, .D = D, .Dv = D,
                       .q = qh, .k = kh, .v = vh, .mask_b = 1, .mask_h = 1,
                       .causal = d->causal, .scale = (double)(float)(1.0 / sqrt((double)D))};
  tu_sdpa_double(&p, ao, NULL, NULL);
  for (int64_t b = 0; b < B; b++) /* merge heads: [B,H,S,D] -> [B,S,H*D] */
    for (int64_t h = 0; h < Hq; h++)
      for (int64_t i = 0; i < S; i++)
        for (int64_t e = 0; e < D; e++)
          am[(b * S + i) * HqD + h * D + e] = (float)ao[((b * Hq + h) * S + i) * D + e];
  tu_linear_double(am, B * S, HqD, w[3], w[7], E, out);
  free(tmp), free(qp), free(kp), free(vp), free(qh), free(kh), free(vh), free(ao), free(am);
}

static void fuzz_mha(reader *r) {
  state s = {.nt = 0};
  attn_tensor *pool = new_storage(&s, 1024, 0, ATTN_F32);
  attn_mha_desc d;
  memset(&d, 0, sizeof d);
  d.struct_size = sizeof d;
  d.d_model = near(r, 1 + take(r) % 6);
  d.d_kv = (take(r) & 3) == 0 ? near(r, 1 + take(r) % 6) : 0;
  d.n_heads = near(r, 1 + take(r) % 3);
  d.n_kv_heads = near(r, take(r) % 3);
  d.head_dim = near(r, take(r) % 3);
  unsigned f = take(r);
  d.bias = f & 1;
  d.causal = (f & 2) != 0;
  d.max_batch = near(r, 1 + take(r) % 2);
  d.max_seq = near(r, 1 + take(r) % 3);
  d.max_kv_seq = near(r, take(r) % 4);

  /* The shapes the weights should have, if the desc is sane enough to say. */
  const int64_t E = d.d_model > 0 && d.d_model < 64 ? d.d_model : 1;
  const int64_t Ekv = d.d_kv > 0 && d.d_kv < 64 ? d.d_kv : E;
  const int64_t Hq = d.n_heads > 0 && d.n_heads < 64 ? d.n_heads : 1;
  const int64_t Hkv = d.n_kv_heads > 0 && d.n_kv_heads < 64 ? d.n_kv_heads : Hq;
  const int64_t D = d.head_dim > 0 && d.head_dim < 64 ? d.head_dim : (E / Hq ? E / Hq : 1);
  const int64_t HqD = Hq * D, HkvD = Hkv * D;
  attn_mha_weights w;
  memset(&w, 0, sizeof w);
  const int packed = (f & 4) != 0;
  const int bias = (f & 8) ? !d.bias : d.bias; /* sometimes inconsistent */
  if (packed) {
    const int64_t ps[2] = {HqD + 2 * HkvD, E}, pb[1] = {HqD + 2 * HkvD};
    w.in_proj = new_operand(&s, r, pool, 2, ps, 0);
    if (bias) w.in_bias = new_operand(&s, r, pool, 1, pb, 0);
  } else {
    const int64_t sq[2] = {HqD, E}, skv[2] = {HkvD, Ekv}, bq[1] = {HqD}, bkv[1] = {HkvD};
    w.wq = new_operand(&s, r, pool, 2, sq, 0);
    w.wk = new_operand(&s, r, pool, 2, skv, 0);
    w.wv = new_operand(&s, r, pool, 2, skv, 0);
    if (bias) {
      w.bq = new_operand(&s, r, pool, 1, bq, 0);
      w.bk = new_operand(&s, r, pool, 1, bkv, 0);
      w.bv = new_operand(&s, r, pool, 1, bkv, 0);
    }
  }
  const int64_t so[2] = {E, HqD}, bo[1] = {E};
  w.wo = new_operand(&s, r, pool, 2, so, 0);
  if (bias) w.bo = new_operand(&s, r, pool, 1, bo, 0);

  attn_mha *g = NULL;
  attn_status st = attn_mha_create(ctx, &d, &w, &g);
  char msg[2048];
  snprintf(msg, sizeof msg, "%s", attn_last_error());
  if (st != ATTN_OK) {
    check_refusal(st, "attn_mha_create", msg);
    FUZZ_CHECK(g == NULL, "graph set on failure");
    free_all(&s);
    return;
  }
  /* Accepted, so the desc is sane: the shapes above are the graph's. */
  const int64_t maxkv = d.max_kv_seq ? d.max_kv_seq : d.max_seq;
  const int64_t B = 1 + (int64_t)take(r) % d.max_batch, S = 1 + (int64_t)take(r) % d.max_seq;
  const int cross = d.d_kv != 0 || (take(r) & 1);
  const int64_t Skv = cross ? 1 + (int64_t)take(r) % maxkv : S;
  const int64_t xs[3] = {B, S, E}, kvs[3] = {B, Skv, Ekv};
  attn_tensor *x = new_operand(&s, r, pool, 3, xs, 0);
  attn_tensor *kvx = cross ? new_operand(&s, r, pool, 3, kvs, 0) : NULL;
  attn_tensor *out = new_operand(&s, r, pool, 3, xs, 0);

  snapshot sn;
  snap(&s, &sn);
  st = attn_mha_run(g, x, kvx, out);
  snprintf(msg, sizeof msg, "%s", attn_last_error());
  const attn_tensor *outs[1] = {out};
  check_untouched(&s, &sn, outs, 1, "attn_mha_run");
  if (st == ATTN_OK) {
    /* The weights as the graph sees them: packed rows split in order. */
    float *wf[8] = {0}, *hold[4] = {0};
    if (packed) {
      hold[0] = read_all(w.in_proj);
      wf[0] = hold[0], wf[1] = hold[0] + HqD * E, wf[2] = hold[0] + (HqD + HkvD) * E;
      if (d.bias) {
        hold[1] = read_all(w.in_bias);
        wf[4] = hold[1], wf[5] = hold[1] + HqD, wf[6] = hold[1] + HqD + HkvD;
      }
    } else {
      wf[0] = read_all(w.wq), wf[1] = read_all(w.wk), wf[2] = read_all(w.wv);
      if (d.bias) wf[4] = read_all(w.bq), wf[5] = read_all(w.bk), wf[6] = read_all(w.bv);
    }
    wf[3] = read_all(w.wo);
    if (d.bias) wf[7] = read_all(w.bo);
    float *xh = read_all(x), *kvh = kvx ? read_all(kvx) : xh, *got = read_all(out);
    /* x's accepted shape is [B', S', E] with B' <= max_batch, S' <= max_seq. */
    const int64_t xB = x->shape[0], xS = x->shape[1], xSkv = kvx ? kvx->shape[1] : xS;
    double *want = malloc((size_t)(xB * xS * E) * sizeof(double));
    FUZZ_CHECK(want != NULL, "out of memory");
    mha_oracle(&d, Hkv, D, cross ? Ekv : E, (const float *const *)wf, xh, kvh, xB, xS, xSkv,
               want);
    FUZZ_CHECK(tu_check_close("fuzz mha out", got, want, (size_t)(xB * xS * E), NULL),
               "attn_mha_run differs from the oracle");
    if (!kvx && g && (d.d_kv == 0 || d.d_kv == d.d_model)) {
      /* Self attention: the first run through an empty KV cache is the same
       * computation; one that would overflow the capacity changes nothing. */
      attn_kv_cache *c = NULL;
      const int64_t cap = xS + take(r) % 3;
      attn_status cs = attn_kv_cache_create(g, xB, cap, &c);
      FUZZ_CHECK(cs == ATTN_OK, "kv_cache_create(%lld, %lld): %s", (long long)xB,
                 (long long)cap, attn_last_error());
      attn_tensor *o2 = NULL;
      const int64_t os[3] = {xB, xS, E};
      FUZZ_CHECK(attn_tensor_create(ctx, 3, os, &o2) == ATTN_OK, "%s", attn_last_error());
      keep(&s, o2);
      cs = attn_mha_run_cached(g, c, x, o2);
      FUZZ_CHECK(cs == ATTN_OK, "run_cached: %s", attn_last_error());
      FUZZ_CHECK(attn_kv_cache_length(c) == xS, "cache length %lld", (long long)attn_kv_cache_length(c));
      float *got2 = read_all(o2);
      FUZZ_CHECK(tu_check_close("fuzz mha cached", got2, want, (size_t)(xB * xS * E), NULL),
                 "attn_mha_run_cached differs from the oracle");
      free(got2);
      if (cap - xS < xS) {
        cs = attn_mha_run_cached(g, c, x, o2);
        FUZZ_CHECK(cs == ATTN_ERR_CAPACITY, "over capacity: status %d: %s", (int)cs,
                   attn_last_error());
        FUZZ_CHECK(attn_kv_cache_length(c) == xS, "a refused run moved the cache length");
      }
      attn_kv_cache_free(c);
    }
    free(want);
    free(got);
    if (kvh != xh) free(kvh);
    free(xh);
    if (packed) {
      free(hold[0]);
      free(hold[1]);
    } else {
      for (int i = 0; i < 3; i++) free(wf[i]);
      for (int i = 4; i < 7; i++) free(wf[i]);
    }
    free(wf[3]);
    free(wf[7]);
  } else {
    check_refusal(st, "attn_mha_run", msg);
  }
  attn_mha_free(g);
  free_all(&s);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  reader r = {data, size};
  rng = 0x9E3779B97F4A7C15ull ^ take(&r);
  if (take(&r) & 1) fuzz_mha(&r);
  else fuzz_sdpa(&r);
  return 0;
}
