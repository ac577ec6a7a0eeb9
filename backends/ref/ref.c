/* The reference backend: plain C on the host CPU, the oracle every other
 * backend is compared with. Correctness and readability come first: every
 * sum is accumulated in double, a full row of scores is materialised, and
 * every operand is addressed through its strides, and f16 / bf16 operands
 * are converted to float as each element is loaded (and rounded to nearest
 * even as each output is stored). It is fast enough for the
 * test suites and for S=4096 (a few seconds) because the inner loops walk the
 * contiguous dimension and the rows are split over a few threads. */
#include <math.h>
#include <pthread.h>
#include <stdio.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "attn_plugin.h"

static const attn_host *host;

/* Buffers are plain host memory. The context keeps them in a list so that
 * close can free the ones the caller forgot. */
struct attn_buffer {
  attn_buffer *prev, *next;
  size_t bytes;
  void *data;
};

struct attn_backend_ctx {
  attn_buffer *buffers;
};

/* ---- device ---------------------------------------------------------------- */

static attn_status ref_init(const attn_host *h) {
  host = h;
  return ATTN_OK;
}

static int ref_probe(void) { return 1; }

static int online_cpus(void) {
  long n = sysconf(_SC_NPROCESSORS_ONLN);
  return n < 1 ? 1 : (n > 1024 ? 1024 : (int)n);
}

static attn_status ref_device_info(int index, attn_device_info *info) {
  if (index != 0)
    return host->error(ATTN_ERR_INVALID_ARG, "ref: device index %d out of range [0, 1)", index);
  memset(info, 0, sizeof *info);
  strcpy(info->backend, "ref");
  strcpy(info->name, "Reference C (host CPU)");
  strcpy(info->vendor, "libattn");
  snprintf(info->driver, sizeof info->driver, "libattn ref %d.%d.%d", ATTN_VERSION_MAJOR,
           ATTN_VERSION_MINOR, ATTN_VERSION_PATCH);
  info->type = ATTN_DEVICE_CPU;
  info->index = 0;
  long pages = sysconf(_SC_PHYS_PAGES), page = sysconf(_SC_PAGESIZE);
  if (pages > 0 && page > 0) info->global_mem = (uint64_t)pages * (uint64_t)page;
  info->max_alloc = info->global_mem;
  info->compute_units = (uint32_t)online_cpus();
  return ATTN_OK;
}

static attn_status ref_open(int index, attn_backend_ctx **ctx) {
  if (index != 0)
    return host->error(ATTN_ERR_INVALID_ARG, "ref: device index %d out of range [0, 1)", index);
  attn_backend_ctx *c = calloc(1, sizeof *c);
  if (!c) return host->error(ATTN_ERR_NOMEM, "ref: out of host memory for a context");
  *ctx = c;
  return ATTN_OK;
}

static void ref_buffer_free(attn_backend_ctx *ctx, attn_buffer *buf) {
  if (!buf) return;
  if (buf->prev) buf->prev->next = buf->next;
  else ctx->buffers = buf->next;
  if (buf->next) buf->next->prev = buf->prev;
  free(buf->data);
  free(buf);
}

static void ref_close(attn_backend_ctx *ctx) {
  if (!ctx) return;
  while (ctx->buffers) ref_buffer_free(ctx, ctx->buffers);
  free(ctx);
}

/* ---- memory ---------------------------------------------------------------- */

static attn_status ref_buffer_alloc(attn_backend_ctx *ctx, size_t bytes, attn_buffer **out) {
  if (bytes == 0) return host->error(ATTN_ERR_INVALID_ARG, "ref: buffer of 0 bytes");
  attn_buffer *b = calloc(1, sizeof *b);
  if (!b) return host->error(ATTN_ERR_NOMEM, "ref: out of host memory for a buffer");
  b->data = malloc(bytes);
  if (!b->data) {
    free(b);
    return host->error(ATTN_ERR_DEVICE_MEMORY, "ref: cannot allocate %zu bytes", bytes);
  }
  b->bytes = bytes;
  b->next = ctx->buffers;
  if (b->next) b->next->prev = b;
  ctx->buffers = b;
  *out = b;
  return ATTN_OK;
}

static attn_status check_range(const attn_buffer *buf, size_t offset, size_t bytes,
                               const char *what) {
  if (offset > buf->bytes || bytes > buf->bytes - offset)
    return host->error(ATTN_ERR_INVALID_ARG,
                       "ref: %s of %zu bytes at offset %zu past the end of a %zu-byte buffer",
                       what, bytes, offset, buf->bytes);
  return ATTN_OK;
}

static attn_status ref_buffer_write(attn_backend_ctx *ctx, attn_buffer *buf, size_t offset,
                                    size_t bytes, const void *src) {
  attn_status s = check_range(buf, offset, bytes, "write");
  if (s == ATTN_OK && bytes) memcpy((char *)buf->data + offset, src, bytes);
  return s;
}

static attn_status ref_buffer_read(attn_backend_ctx *ctx, attn_buffer *buf, size_t offset,
                                   size_t bytes, void *dst) {
  attn_status s = check_range(buf, offset, bytes, "read");
  if (s == ATTN_OK && bytes) memcpy(dst, (const char *)buf->data + offset, bytes);
  return s;
}

/* ---- stages ---------------------------------------------------------------- */

/* Every feature of ABI 2.4 (a strided w included: ref_linear reads every
 * operand through its strides), every dtype on every operand. */
#define REF_FEATURES ATTN_FEAT_KNOWN

static attn_status ref_supports(attn_backend_ctx *ctx, attn_stage stage, const void *desc,
                                char *why, size_t why_len) {
  (void)ctx;
  uint64_t features;
  if (stage == ATTN_STAGE_LINEAR) features = ((const attn_linear_desc *)desc)->features;
  else if (stage == ATTN_STAGE_SDPA) features = ((const attn_sdpa_desc *)desc)->features;
  else if (stage == ATTN_STAGE_MERGE) features = ((const attn_merge_desc *)desc)->features;
  else if (stage == ATTN_STAGE_ROPE) features = ((const attn_rope_desc *)desc)->features;
  else if (stage == ATTN_STAGE_RMSNORM) features = ((const attn_rmsnorm_desc *)desc)->features;
  else {
    snprintf(why, why_len, "ref: unknown stage %d", (int)stage);
    return ATTN_ERR_UNSUPPORTED;
  }
  const int bit = attn_feature_unknown(features, REF_FEATURES);
  if (bit >= 0) {
    char buf[32];
    snprintf(why, why_len, "ref: cannot do %s", attn_feature_name(bit, buf, sizeof buf));
    return ATTN_ERR_UNSUPPORTED;
  }
  return ATTN_OK;
}

/* Element index of (i0, i1, i2, i3) in a view's buffer, and typed access. */
static int64_t idx(const attn_view *v, int64_t i0, int64_t i1, int64_t i2, int64_t i3) {
  return v->offset + i0 * v->strides[0] + i1 * v->strides[1] + i2 * v->strides[2] +
         i3 * v->strides[3];
}
static double ld(const attn_view *v, int64_t e) {
  return (double)attn_load_elem(v->buf->data, v->dtype, e);
}
static void st(const attn_view *v, int64_t e, double x) {
  attn_store_elem(v->buf->data, v->dtype, e, (float)x);
}

/* n elements of a view from element e with stride s, as doubles. */
static void load_row(const attn_view *v, int64_t e, int64_t s, int64_t n, double *out) {
  if (v->dtype == ATTN_F32) {
    const float *p = (const float *)v->buf->data + e;
    for (int64_t c = 0; c < n; c++) out[c] = p[c * s];
  } else {
    for (int64_t c = 0; c < n; c++) out[c] = ld(v, e + c * s);
  }
}

/* y[b, m, :] = x[b, m, :] W^T + bias: one double dot product per output. */
static attn_status ref_linear(const attn_linear_desc *d) {
  const int64_t B = d->x.shape[1], M = d->x.shape[2], K = d->x.shape[3];
  const int64_t N = d->w.shape[2];
  double *x = malloc((size_t)K * sizeof *x), *w = malloc((size_t)K * sizeof *w);
  if (!x || !w) {
    free(x);
    free(w);
    return host->error(ATTN_ERR_NOMEM, "ref: out of host memory for a row of %lld", (long long)K);
  }
  for (int64_t b = 0; b < B; b++)
    for (int64_t m = 0; m < M; m++) {
      load_row(&d->x, idx(&d->x, 0, b, m, 0), d->x.strides[3], K, x);
      for (int64_t n = 0; n < N; n++) {
        load_row(&d->w, idx(&d->w, 0, 0, n, 0), d->w.strides[3], K, w);
        double acc = d->bias.buf ? ld(&d->bias, idx(&d->bias, 0, 0, 0, n)) : 0.0;
        for (int64_t k = 0; k < K; k++) acc += x[k] * w[k];
        st(&d->y, idx(&d->y, 0, b, m, n), acc);
      }
    }
  free(x);
  free(w);
  return ATTN_OK;
}

/* Scratch for one thread: a row of scores, the query row, a key or value
 * row and the output accumulator, all in double. */
typedef struct row_scratch {
  double *s, *q, *kv, *acc;
  unsigned char *seen; /* key j passes causal, kv_lens and a bool mask */
} row_scratch;

/* One query row (b, h, i): scores, softmax with max subtraction, weighted sum.
 * Hidden keys (outside the row's visible range, a zero in a bool mask) are
 * never read, so a NaN there cannot leak in; an additive mask is simply
 * added, so -inf gives weight exactly 0 and +inf or NaN poison this row
 * only. The score of a visible key follows attn.h's order: scale, softcap,
 * ALiBi, mask. */
static void sdpa_row(const attn_sdpa_desc *d, int64_t b, int64_t h, int64_t i,
                     row_scratch *w) {
  const int64_t Hq = d->q.shape[1], D = d->q.shape[3];
  const int64_t Hkv = d->k.shape[1], Skv = d->k.shape[2], Dv = d->v.shape[3];
  const int64_t kh = h / (Hq / Hkv); /* GQA by index: consecutive q heads share a kv head */
  const double scale = d->scale;
  const double softcap = d->features & ATTN_FEAT_SOFTCAP ? d->softcap : 0.0;
  const double slope = d->features & ATTN_FEAT_ALIBI ? d->alibi[h] : 0.0;
  const bool sink = (d->features & ATTN_FEAT_SINKS) != 0;

  int64_t lo, hi; /* keys [lo, hi) pass kv_lens, causal and the window */
  attn_visible_range(d, b, i, &lo, &hi);

  load_row(&d->q, idx(&d->q, b, h, i, 0), d->q.strides[3], D, w->q);

  /* Scores. Four partial sums break the add dependency chain. */
  double mx = -INFINITY;
  int any = 0; /* some visible score is not -inf (NaN counts: it must show) */
  for (int64_t j = 0; j < Skv; j++) {
    w->seen[j] = 0;
    w->s[j] = -INFINITY;
    if (j < lo || j >= hi) continue;
    if (d->mask_kind == ATTN_MASK_BOOL && ld(&d->mask, idx(&d->mask, b, h, i, j)) == 0.0)
      continue;
    load_row(&d->k, idx(&d->k, b, kh, j, 0), d->k.strides[3], D, w->kv);
    const double *kr = w->kv;
    double s0 = 0, s1 = 0, s2 = 0, s3 = 0;
    int64_t c = 0;
    for (; c + 4 <= D; c += 4) {
      s0 += w->q[c] * kr[c];
      s1 += w->q[c + 1] * kr[c + 1];
      s2 += w->q[c + 2] * kr[c + 2];
      s3 += w->q[c + 3] * kr[c + 3];
    }
    for (; c < D; c++) s0 += w->q[c] * kr[c];
    double s = scale * ((s0 + s1) + (s2 + s3));
    if (softcap > 0) s = softcap * tanh(s / softcap);
    if (slope != 0) s -= slope * attn_alibi_distance(d, i, j);
    if (d->mask_kind == ATTN_MASK_ADDITIVE) s += ld(&d->mask, idx(&d->mask, b, h, i, j));
    w->seen[j] = 1;
    w->s[j] = s;
    if (s != -INFINITY) any = 1;
    if (s > mx) mx = s;
  }

  const int64_t o = idx(&d->out, b, h, i, 0), os = d->out.strides[3];
  const double sink_logit = sink ? d->sinks[h] : -INFINITY;
  if (!any) {
    /* No visible key: zeros and lse = -inf (the sink's logit with sinks), never NaN. */
    for (int64_t c = 0; c < Dv; c++) st(&d->out, o + c * os, 0.0);
    if (d->weights.buf)
      for (int64_t j = 0; j < Skv; j++) st(&d->weights, idx(&d->weights, b, h, i, j), 0.0);
    if (d->lse.buf) st(&d->lse, idx(&d->lse, b, h, i, 0), sink_logit);
    return;
  }
  /* The sink joins the max-subtracted frame and the denominator, not the sum
   * over values. If every visible score but a NaN is -inf, mx stays -inf and
   * the subtraction below turns the whole row into NaN, as it should. */
  if (sink && sink_logit > mx) mx = sink_logit;
  double sum = sink ? exp(sink_logit - mx) : 0.0;
  for (int64_t j = 0; j < Skv; j++)
    if (w->seen[j]) {
      w->s[j] = exp(w->s[j] - mx);
      sum += w->s[j];
    }
  for (int64_t c = 0; c < Dv; c++) w->acc[c] = 0;
  for (int64_t j = 0; j < Skv; j++) {
    if (!w->seen[j]) continue;
    const double p = w->s[j] / sum;
    load_row(&d->v, idx(&d->v, b, kh, j, 0), d->v.strides[3], Dv, w->kv);
    for (int64_t c = 0; c < Dv; c++) w->acc[c] += p * w->kv[c];
  }
  for (int64_t c = 0; c < Dv; c++) st(&d->out, o + c * os, w->acc[c]);
  if (d->weights.buf)
    for (int64_t j = 0; j < Skv; j++)
      st(&d->weights, idx(&d->weights, b, h, i, j), w->seen[j] ? w->s[j] / sum : 0.0);
  if (d->lse.buf) st(&d->lse, idx(&d->lse, b, h, i, 0), mx + log(sum));
}

/* Rows [first, last) of the flattened (b, h, i) index, for one thread. */
typedef struct sdpa_job {
  const attn_sdpa_desc *d;
  int64_t first, last;
  attn_status status;
} sdpa_job;

static void *sdpa_worker(void *arg) {
  sdpa_job *job = arg;
  const attn_sdpa_desc *d = job->d;
  const int64_t Hq = d->q.shape[1], Sq = d->q.shape[2], D = d->q.shape[3];
  const int64_t Skv = d->k.shape[2], Dv = d->v.shape[3];
  row_scratch w;
  w.s = malloc((size_t)Skv * sizeof *w.s);
  w.q = malloc((size_t)D * sizeof *w.q);
  w.kv = malloc((size_t)(D > Dv ? D : Dv) * sizeof *w.kv);
  w.acc = malloc((size_t)Dv * sizeof *w.acc);
  w.seen = malloc((size_t)Skv);
  if (!w.s || !w.q || !w.kv || !w.acc || !w.seen) {
    job->status = ATTN_ERR_NOMEM; /* reported by the calling thread */
  } else {
    for (int64_t r = job->first; r < job->last; r++)
      sdpa_row(d, r / (Hq * Sq), (r / Sq) % Hq, r % Sq, &w);
    job->status = ATTN_OK;
  }
  free(w.s);
  free(w.q);
  free(w.kv);
  free(w.acc);
  free(w.seen);
  return NULL;
}

#define REF_MAX_THREADS 8

static attn_status ref_sdpa(const attn_sdpa_desc *d) {
  const int64_t rows = d->q.shape[0] * d->q.shape[1] * d->q.shape[2];
  const double work = (double)rows * (double)d->k.shape[2] *
                      (double)(d->q.shape[3] + d->v.shape[3]);
  /* Threads only pay off for real work; small problems run inline. */
  int nt = work < 4e6 ? 1 : online_cpus();
  if (nt > REF_MAX_THREADS) nt = REF_MAX_THREADS;
  if (nt > rows) nt = (int)rows;

  sdpa_job jobs[REF_MAX_THREADS];
  pthread_t tid[REF_MAX_THREADS];
  int started[REF_MAX_THREADS] = {0};
  for (int t = 0; t < nt; t++) {
    jobs[t].d = d;
    jobs[t].first = rows * t / nt;
    jobs[t].last = rows * (t + 1) / nt;
    jobs[t].status = ATTN_OK;
  }
  /* Thread 0's share runs on the calling thread; if a thread cannot be
   * started its share also runs here. */
  for (int t = 1; t < nt; t++) started[t] = pthread_create(&tid[t], NULL, sdpa_worker, &jobs[t]) == 0;
  sdpa_worker(&jobs[0]);
  for (int t = 1; t < nt; t++) {
    if (started[t]) pthread_join(tid[t], NULL);
    else sdpa_worker(&jobs[t]);
  }
  for (int t = 0; t < nt; t++)
    if (jobs[t].status != ATTN_OK)
      return host->error(jobs[t].status, "ref: out of host memory for a row of %lld scores",
                         (long long)d->k.shape[2]);
  return ATTN_OK;
}

/* Per row: lse = logaddexp(lse_a, lse_b), out = wa out_a + wb out_b with
 * wa = exp(lse_a - lse). Each row is read whole before it is written, so out
 * may be out_a or out_b itself. */
static attn_status ref_merge(const attn_merge_desc *d) {
  const int64_t B = d->out.shape[0], H = d->out.shape[1], S = d->out.shape[2];
  const int64_t Dv = d->out.shape[3];
  double *a = malloc((size_t)Dv * sizeof *a), *bb = malloc((size_t)Dv * sizeof *bb);
  if (!a || !bb) {
    free(a);
    free(bb);
    return host->error(ATTN_ERR_NOMEM, "ref: out of host memory for a row of %lld",
                       (long long)Dv);
  }
  for (int64_t b = 0; b < B; b++)
    for (int64_t h = 0; h < H; h++)
      for (int64_t i = 0; i < S; i++) {
        const double la = ld(&d->lse_a, idx(&d->lse_a, b, h, i, 0));
        const double lb = ld(&d->lse_b, idx(&d->lse_b, b, h, i, 0));
        const double m = isnan(la) ? la : isnan(lb) ? lb : la > lb ? la : lb;
        double l, wa, wb;
        if (m == -INFINITY) { /* both empty */
          l = -INFINITY, wa = wb = 0.0;
        } else {
          /* NaN in either lse makes m, l and the row NaN. */
          l = m + log(exp(la - m) + exp(lb - m));
          wa = exp(la - l), wb = exp(lb - l);
        }
        load_row(&d->out_a, idx(&d->out_a, b, h, i, 0), d->out_a.strides[3], Dv, a);
        load_row(&d->out_b, idx(&d->out_b, b, h, i, 0), d->out_b.strides[3], Dv, bb);
        /* An empty partial's weight is exactly 0: its row (zeros) adds nothing. */
        for (int64_t c = 0; c < Dv; c++)
          st(&d->out, idx(&d->out, b, h, i, c),
             (wa != 0.0 ? wa * a[c] : 0.0) + (wb != 0.0 ? wb * bb[c] : 0.0));
        if (d->lse.buf) st(&d->lse, idx(&d->lse, b, h, i, 0), l);
      }
  free(a);
  free(bb);
  return ATTN_OK;
}

/* Rotate each row (b, h, s) of x into y: the pair (a, c) of dim i is
 * (i, i + r/2), or (2i, 2i+1) interleaved; both are read before either is
 * written, so y may be x. Dims past r are copied. */
static attn_status ref_rope(const attn_rope_desc *d) {
  const int64_t B = d->x.shape[0], H = d->x.shape[1], S = d->x.shape[2], D = d->x.shape[3];
  const int64_t half = d->rot_dim / 2;
  const bool inter = (d->features & ATTN_FEAT_ROPE_INTERLEAVED) != 0;
  for (int64_t b = 0; b < B; b++)
    for (int64_t h = 0; h < H; h++)
      for (int64_t s = 0; s < S; s++) {
        const int64_t p = d->positions[b * S + s];
        for (int64_t i = 0; i < half; i++) {
          const int64_t a = inter ? 2 * i : i, c = inter ? 2 * i + 1 : i + half;
          const double cs = ld(&d->cos, idx(&d->cos, 0, 0, p, i));
          const double sn = ld(&d->sin, idx(&d->sin, 0, 0, p, i));
          const double xa = ld(&d->x, idx(&d->x, b, h, s, a)), xc = ld(&d->x, idx(&d->x, b, h, s, c));
          st(&d->y, idx(&d->y, b, h, s, a), xa * cs - xc * sn);
          st(&d->y, idx(&d->y, b, h, s, c), xc * cs + xa * sn);
        }
        for (int64_t e = d->rot_dim; e < D; e++)
          st(&d->y, idx(&d->y, b, h, s, e), ld(&d->x, idx(&d->x, b, h, s, e)));
      }
  return ATTN_OK;
}

/* y = x / sqrt(mean(x^2) + eps) * g per row of D, in double. */
static attn_status ref_rmsnorm(const attn_rmsnorm_desc *d) {
  const int64_t B = d->x.shape[0], H = d->x.shape[1], S = d->x.shape[2], D = d->x.shape[3];
  const double off = (d->features & ATTN_FEAT_NORM_OFFSET) ? 1.0 : 0.0;
  double *row = malloc((size_t)D * sizeof *row);
  if (!row) return host->error(ATTN_ERR_NOMEM, "ref: out of host memory for a row of %lld", (long long)D);
  for (int64_t b = 0; b < B; b++)
    for (int64_t h = 0; h < H; h++)
      for (int64_t s = 0; s < S; s++) {
        load_row(&d->x, idx(&d->x, b, h, s, 0), d->x.strides[3], D, row);
        double ss = 0;
        for (int64_t e = 0; e < D; e++) ss += row[e] * row[e];
        const double inv = 1.0 / sqrt(ss / (double)D + (double)d->eps);
        for (int64_t e = 0; e < D; e++)
          st(&d->y, idx(&d->y, b, h, s, e),
             row[e] * inv * (off + ld(&d->weight, idx(&d->weight, 0, 0, 0, e))));
      }
  free(row);
  return ATTN_OK;
}

static attn_status ref_run(attn_backend_ctx *ctx, attn_stage stage, const void *desc) {
  (void)ctx;
  if (stage == ATTN_STAGE_MERGE) return ref_merge(desc);
  if (stage == ATTN_STAGE_ROPE) return ref_rope(desc);
  if (stage == ATTN_STAGE_RMSNORM) return ref_rmsnorm(desc);
  return stage == ATTN_STAGE_SDPA ? ref_sdpa(desc) : ref_linear(desc);
}

static attn_status ref_synchronize(attn_backend_ctx *ctx) { return ATTN_OK; }

/* ---- peaks: the host's own fp32 FMA rate and copy bandwidth ------------------
 * Measured the clpeak way, on the host since ref's "device" is the host CPU:
 * every thread runs long chains of independent fused multiply-adds on the
 * widest vectors the CPU has (AVX-512 or AVX2+FMA, found at run time; plain C
 * multiply-add elsewhere), and two threads copy halves of a large buffer with
 * memcpy, counting bytes read plus written. Best of a few runs; measured once
 * per process (the figures are cheap: about half a second) unless refresh. */

#define PEAK_COPY_BYTES ((size_t)256 << 20)

typedef struct peak_job {
  long iters;
  double flops;  /* counted by the worker: depends on the vector width it used */
  float sink;    /* keeps the chains alive */
  char *dst;
  const char *src;
  size_t bytes;
} peak_job;

/* Twelve named accumulators (not an array, which -O2 might keep in memory). */
#define PEAK_CHAINS 12
#define PEAK_STEP(fma)                                                                      \
  do {                                                                                      \
    c0 = fma(c0, a, b); c1 = fma(c1, a, b); c2 = fma(c2, a, b); c3 = fma(c3, a, b);           \
    c4 = fma(c4, a, b); c5 = fma(c5, a, b); c6 = fma(c6, a, b); c7 = fma(c7, a, b);           \
    c8 = fma(c8, a, b); c9 = fma(c9, a, b); c10 = fma(c10, a, b); c11 = fma(c11, a, b);       \
  } while (0)
#define PEAK_SUM (c0 + c1 + c2 + c3 + c4 + c5 + c6 + c7 + c8 + c9 + c10 + c11)

#if defined(__x86_64__) && defined(__GNUC__)
#include <immintrin.h>
__attribute__((target("avx512f"))) static double fma_avx512(long iters, float *sink) {
  __m512 a = _mm512_set1_ps(0.999f), b = _mm512_set1_ps(1e-3f);
  __m512 c0 = _mm512_set1_ps(0), c1 = c0, c2 = c0, c3 = c0, c4 = c0, c5 = c0, c6 = c0, c7 = c0,
         c8 = c0, c9 = c0, c10 = c0, c11 = c0;
  for (long n = 0; n < iters; n++) PEAK_STEP(_mm512_fmadd_ps);
  *sink = _mm512_reduce_add_ps(PEAK_SUM);
  return 2.0 * 16 * PEAK_CHAINS * (double)iters;
}
__attribute__((target("avx2,fma"))) static double fma_avx2(long iters, float *sink) {
  __m256 a = _mm256_set1_ps(0.999f), b = _mm256_set1_ps(1e-3f);
  __m256 c0 = _mm256_set1_ps(0), c1 = c0, c2 = c0, c3 = c0, c4 = c0, c5 = c0, c6 = c0, c7 = c0,
         c8 = c0, c9 = c0, c10 = c0, c11 = c0;
  for (long n = 0; n < iters; n++) PEAK_STEP(_mm256_fmadd_ps);
  float lanes[8];
  _mm256_storeu_ps(lanes, PEAK_SUM);
  *sink = lanes[0];
  return 2.0 * 8 * PEAK_CHAINS * (double)iters;
}
#endif

/* Portable fallback: scalar chains the compiler may vectorise; a multiply
 * and an add are two flops whether or not they fuse. */
#define PLAIN_FMA(x, a, b) ((x) * (a) + (b))
static double fma_plain(long iters, float *sink) {
  float a = 0.999f, b = 1e-3f;
  float c0 = 0, c1 = 1, c2 = 2, c3 = 3, c4 = 4, c5 = 5, c6 = 6, c7 = 7, c8 = 8, c9 = 9, c10 = 10,
        c11 = 11;
  for (long n = 0; n < iters; n++) PEAK_STEP(PLAIN_FMA);
  *sink = PEAK_SUM;
  return 2.0 * PEAK_CHAINS * (double)iters;
}

static void *fma_worker(void *arg) {
  peak_job *j = arg;
#if defined(__x86_64__) && defined(__GNUC__)
  __builtin_cpu_init();
  if (__builtin_cpu_supports("avx512f")) j->flops = fma_avx512(j->iters, &j->sink);
  else if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma"))
    j->flops = fma_avx2(j->iters, &j->sink);
  else
#endif
    j->flops = fma_plain(j->iters, &j->sink);
  return NULL;
}

static void *copy_worker(void *arg) {
  peak_job *j = arg;
  memcpy(j->dst, j->src, j->bytes);
  return NULL;
}

static double now_s(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return ts.tv_sec + ts.tv_nsec * 1e-9;
}

/* Run worker on nt threads (the caller's included) over jobs; wall seconds. */
static double run_threads(int nt, void *(*worker)(void *), peak_job *jobs) {
  pthread_t tid[REF_MAX_THREADS];
  int started[REF_MAX_THREADS] = {0};
  double t0 = now_s();
  for (int t = 1; t < nt; t++) started[t] = pthread_create(&tid[t], NULL, worker, &jobs[t]) == 0;
  worker(&jobs[0]);
  for (int t = 1; t < nt; t++) {
    if (started[t]) pthread_join(tid[t], NULL);
    else worker(&jobs[t]);
  }
  return now_s() - t0;
}

static pthread_mutex_t peaks_lock = PTHREAD_MUTEX_INITIALIZER;
static double peaks_gflops, peaks_gbps; /* 0 until measured */

static attn_status ref_peaks(attn_backend_ctx *ctx, bool refresh, double *gflops, double *gbps) {
  pthread_mutex_lock(&peaks_lock);
  if (refresh || peaks_gflops <= 0) {
    int nt = online_cpus();
    if (nt > REF_MAX_THREADS) nt = REF_MAX_THREADS;
    peak_job jobs[REF_MAX_THREADS];
    memset(jobs, 0, sizeof jobs);
    /* FMA: double the chain length until one run takes 50 ms, then best of 3. */
    long iters = 1 << 12;
    double best = 0;
    for (int doubling = 0; doubling < 30; doubling++) {
      for (int t = 0; t < nt; t++) jobs[t].iters = iters;
      if (run_threads(nt, fma_worker, jobs) >= 0.05) break;
      iters *= 2;
    }
    for (int r = 0; r < 3; r++) {
      double s = run_threads(nt, fma_worker, jobs), flops = 0;
      for (int t = 0; t < nt; t++) flops += jobs[t].flops;
      if (flops / s > best) best = flops / s;
    }
    /* Copy: 2 threads, each a half of a large buffer (far past the caches). */
    char *src = malloc(PEAK_COPY_BYTES), *dst = malloc(PEAK_COPY_BYTES);
    if (!src || !dst) {
      free(src);
      free(dst);
      pthread_mutex_unlock(&peaks_lock);
      return host->error(ATTN_ERR_NOMEM, "ref: out of host memory for the copy peak (%zu MiB)",
                         2 * (PEAK_COPY_BYTES >> 20));
    }
    memset(src, 1, PEAK_COPY_BYTES);
    memset(dst, 0, PEAK_COPY_BYTES); /* fault the pages in before timing */
    const int ct = 2;
    double best_copy = 0;
    for (int r = 0; r < 4; r++) {
      for (int t = 0; t < ct; t++) {
        jobs[t].bytes = PEAK_COPY_BYTES / ct;
        jobs[t].src = src + t * jobs[t].bytes;
        jobs[t].dst = dst + t * jobs[t].bytes;
      }
      double s = run_threads(ct, copy_worker, jobs);
      double rate = 2.0 * PEAK_COPY_BYTES / s; /* read + written */
      if (rate > best_copy) best_copy = rate;
    }
    free(src);
    free(dst);
    peaks_gflops = best / 1e9;
    peaks_gbps = best_copy / 1e9;
    host->debug("ref: peaks %.1f GFLOP/s fp32 FMA on %d threads, %.1f GB/s copy", peaks_gflops,
                nt, peaks_gbps);
  }
  *gflops = peaks_gflops;
  *gbps = peaks_gbps;
  pthread_mutex_unlock(&peaks_lock);
  return ATTN_OK;
}

static const attn_backend_vtable ref_vtable = {
    .abi_major = ATTN_ABI_MAJOR,
    .abi_minor = ATTN_ABI_MINOR,
    .struct_size = sizeof(attn_backend_vtable),
    .name = "ref",
    .init = ref_init,
    .probe = ref_probe,
    .device_info = ref_device_info,
    .open = ref_open,
    .close = ref_close,
    .buffer_alloc = ref_buffer_alloc,
    .buffer_free = ref_buffer_free,
    .buffer_write = ref_buffer_write,
    .buffer_read = ref_buffer_read,
    .supports = ref_supports,
    .run = ref_run,
    .synchronize = ref_synchronize,
    .peaks = ref_peaks,
};

ATTN_PLUGIN_EXPORT const attn_backend_vtable *attn_backend_entry(void);
ATTN_PLUGIN_EXPORT const attn_backend_vtable *attn_backend_entry(void) { return &ref_vtable; }
