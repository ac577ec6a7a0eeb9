/* Helpers shared by the numerical suites (see testutil.h). The attention
 * oracle here is deliberately written from the formula alone and shares no
 * code with backends/ref/ref.c, so that a bug in one shows against the other. */
#include "testutil.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* ---- the double-precision oracle ------------------------------------------- */

static int64_t idx4(int64_t i0, int64_t i1, int64_t i2, int64_t i3, int64_t n1, int64_t n2,
                    int64_t n3) {
  return ((i0 * n1 + i1) * n2 + i2) * n3 + i3;
}

void tu_sdpa_double(const tu_sdpa_problem *p, double *out, double *weights, double *lse) {
  const int64_t group = p->Hq / p->Hkv;
  const int64_t mq = p->mask_q ? p->mask_q : p->Sq;
  const int64_t q_pos = p->has_positions ? p->q_pos : p->Skv - p->Sq;
  const int64_t k_pos = p->has_positions ? p->k_pos : 0;
  double *score = malloc((size_t)p->Skv * sizeof *score);
  char *visible = malloc((size_t)p->Skv);
  if (!score || !visible) {
    fprintf(stderr, "tu_sdpa_double: out of memory\n");
    abort();
  }
  for (int64_t b = 0; b < p->B; b++)
    for (int64_t h = 0; h < p->Hq; h++)
      for (int64_t i = 0; i < p->Sq; i++) {
        const int64_t hk = h / group;
        const int64_t pq = q_pos + i;
        /* 1. scores of the keys this query may see */
        for (int64_t j = 0; j < p->Skv; j++) {
          const int64_t pk = k_pos + j;
          int vis = 1;
          if (p->kv_lens && j >= p->kv_lens[b]) vis = 0;
          if (p->causal && pk > pq) vis = 0;
          if (p->has_window && p->window_left >= 0 && pk < pq - p->window_left) vis = 0;
          if (p->has_window && p->window_right >= 0 && pk > pq + p->window_right) vis = 0;
          double m = 0;
          if (p->mask) {
            int64_t mb = p->mask_b == 1 ? 0 : b, mh = p->mask_h == 1 ? 0 : h,
                    mi = mq == 1 ? 0 : i;
            m = p->mask[idx4(mb, mh, mi, j, p->mask_h, mq, p->Skv)];
            if (p->mask_kind == ATTN_MASK_BOOL && m == 0) vis = 0;
          }
          visible[j] = (char)vis;
          if (!vis) continue;
          double dot = 0;
          for (int64_t d = 0; d < p->D; d++)
            dot += (double)p->q[idx4(b, h, i, d, p->Hq, p->Sq, p->D)] *
                   (double)p->k[idx4(b, hk, j, d, p->Hkv, p->Skv, p->D)];
          double s = p->scale * dot;
          if (p->softcap > 0) s = p->softcap * tanh(s / p->softcap);
          if (p->alibi) s += -(double)p->alibi[h] * fabs((double)(pq - pk));
          score[j] = s + (p->mask_kind == ATTN_MASK_ADDITIVE ? m : 0.0);
        }
        /* 2. softmax: a row is empty when no visible score exceeds -inf
         * (a NaN score is not -inf: it makes the row NaN, as it should);
         * the sink joins the max and the denominator */
        double mx = -INFINITY;
        int nonempty = 0;
        for (int64_t j = 0; j < p->Skv; j++)
          if (visible[j]) {
            if (!(score[j] == -INFINITY)) nonempty = 1;
            if (score[j] > mx) mx = score[j];
          }
        const double sink = p->sinks ? (double)p->sinks[h] : -INFINITY;
        if (nonempty && sink > mx) mx = sink;
        double total = nonempty && p->sinks ? exp(sink - mx) : 0.0;
        for (int64_t j = 0; j < p->Skv; j++)
          if (visible[j] && nonempty) total += exp(score[j] - mx);
        for (int64_t j = 0; j < p->Skv; j++) /* score becomes the probability */
          score[j] = visible[j] && nonempty ? exp(score[j] - mx) / total : 0.0;
        /* 3. outputs */
        const int64_t row = idx4(b, h, i, 0, p->Hq, p->Sq, 1);
        for (int64_t e = 0; e < p->Dv; e++) {
          double o = 0;
          for (int64_t j = 0; j < p->Skv; j++)
            if (visible[j] && nonempty)
              o += score[j] * (double)p->v[idx4(b, hk, j, e, p->Hkv, p->Skv, p->Dv)];
          out[row * p->Dv + e] = o;
        }
        if (weights)
          for (int64_t j = 0; j < p->Skv; j++) weights[row * p->Skv + j] = score[j];
        if (lse) lse[row] = nonempty ? mx + log(total) : sink;
      }
  free(score);
  free(visible);
}

void tu_linear_double(const float *x, int64_t rows, int64_t in, const float *w, const float *b,
                      int64_t out, double *y) {
  for (int64_t r = 0; r < rows; r++)
    for (int64_t o = 0; o < out; o++) {
      double acc = b ? (double)b[o] : 0.0;
      for (int64_t c = 0; c < in; c++) acc += (double)x[r * in + c] * (double)w[o * in + c];
      y[r * out + o] = acc;
    }
}

/* ---- random data ----------------------------------------------------------- */

uint64_t tu_rand_u64(uint64_t *state) {
  /* xorshift64*; a zero state would stay zero forever */
  uint64_t x = *state ? *state : 0x9E3779B97F4A7C15ull;
  x ^= x >> 12;
  x ^= x << 25;
  x ^= x >> 27;
  *state = x;
  return x * 0x2545F4914F6CDD1Dull;
}

void tu_fill_uniform(float *x, size_t n, uint64_t *state, float lo, float hi) {
  for (size_t i = 0; i < n; i++) {
    double u = (double)(tu_rand_u64(state) >> 11) * (1.0 / 9007199254740992.0); /* [0,1) */
    x[i] = (float)(lo + (hi - lo) * u);
  }
}

float *tu_alloc_uniform(size_t n, uint64_t *state, float lo, float hi) {
  float *x = malloc((n ? n : 1) * sizeof *x);
  if (!x) {
    fprintf(stderr, "tu_alloc_uniform: out of memory for %zu floats\n", n);
    abort();
  }
  tu_fill_uniform(x, n, state, lo, hi);
  return x;
}

void tu_fill_nan(float *x, size_t n) {
  for (size_t i = 0; i < n; i++) x[i] = NAN;
}

/* ---- the tolerance rule ---------------------------------------------------- */

int tu_check_close(const char *what, const float *got, const double *want, size_t n,
                   double *max_err) {
  return tu_check_close_typed(what, ATTN_F32, got, want, n, max_err);
}

int tu_check_close_typed(const char *what, attn_dtype t, const float *got, const double *want,
                         size_t n, double *max_err) {
  /* Half an ulp of the output type, relative to each element. */
  const double u = t == ATTN_F16 ? ldexp(1, -11) : t == ATTN_BF16 ? ldexp(1, -8) : 0;
  /* The scale of the values: the largest finite |want|. */
  double scale = 0;
  for (size_t i = 0; i < n; i++)
    if (isfinite(want[i]) && fabs(want[i]) > scale) scale = fabs(want[i]);
  const double tol = TU_ATOL + TU_RTOL * scale;

  double worst = 0;
  size_t bad = n; /* first element that breaks the rule */
  size_t worst_i = 0;
  for (size_t i = 0; i < n; i++) {
    const double g = got[i], w = want[i];
    int ok;
    if (isnan(w)) ok = isnan(g); /* NaN must propagate where the oracle says so */
    else if (isinf(w)) ok = g == w; /* -inf lse must be exactly -inf */
    else if (!isfinite(g)) ok = 0;
    else {
      const double e = fabs(g - w);
      if (e > worst) {
        worst = e;
        worst_i = i;
      }
      ok = e <= tol + u * fabs(w);
    }
    if (!ok && bad == n) bad = i;
  }
  if (max_err) *max_err = worst;
  if (bad == n) return 1;
  /* Report the worst finite error if it breaks the tolerance, else the
   * first element with a NaN / infinity problem. */
  size_t i = worst > tol ? worst_i : bad;
  size_t nbad = 0;
  for (size_t k = 0; k < n; k++) {
    const double g = got[k], w = want[k];
    if (isnan(w) ? !isnan(g) : isinf(w) ? g != w : !(fabs(g - w) <= tol)) nbad++;
  }
  printf("%s: %zu of %zu elements out of tolerance; worst at [%zu]: got %.9g want %.9g "
         "(|err| %.3g > tol %.3g = %g + %g * max|want| %.3g)\n",
         what, nbad, n, i, (double)got[i], want[i], fabs((double)got[i] - want[i]), tol,
         TU_ATOL, TU_RTOL, scale);
  return 0;
}

/* ---- devices --------------------------------------------------------------- */

static void copy_sel(char *dst, const char *src, size_t len) {
  if (len > 63) len = 63;
  memcpy(dst, src, len);
  dst[len] = '\0';
}

int tu_devices(const char *suite, char sel[][64], int max) {
  int n = 0;
  const char *env = getenv("ATTN_TEST_DEVICES");
  if (env && *env) {
    /* As given: a selector that matches nothing must fail the suite, not vanish. */
    const char *s = env;
    while (*s && n < max) {
      const char *e = strchr(s, ',');
      size_t len = e ? (size_t)(e - s) : strlen(s);
      if (len) copy_sel(sel[n++], s, len);
      if (!e) break;
      s = e + 1;
    }
  } else {
    attn_device_list *list = NULL;
    if (attn_list_devices(&list) != ATTN_OK) {
      printf("suite %s: attn_list_devices failed: %s\n", suite, attn_last_error());
      return 0;
    }
    for (size_t i = 0; i < attn_device_list_count(list) && n < max; i++) {
      const attn_device_info *d = attn_device_list_get(list, i);
      copy_sel(sel[n++], d->selector, strlen(d->selector));
    }
    for (size_t i = 0; i < attn_device_list_failure_count(list); i++)
      printf("suite %s: module %s not loaded: %s\n", suite,
             attn_device_list_failure_path(list, i), attn_device_list_failure_reason(list, i));
    attn_device_list_free(list);
  }
  printf("suite %s runs on:", suite);
  for (int i = 0; i < n; i++) printf("%s %s", i ? "," : "", sel[i]);
  printf("%s\n", n ? "" : " (no device)");
  fflush(stdout);
  return n;
}

/* ---- cmocka suites that run once per device -------------------------------- */

const char *tu_device;

int tu_open_device(void **state) {
  attn_context *ctx = NULL;
  if (attn_open(tu_device, &ctx) != ATTN_OK) {
    fprintf(stderr, "attn_open(%s): %s\n", tu_device, attn_last_error());
    return -1;
  }
  *state = ctx;
  return 0;
}

int tu_close_device(void **state) {
  attn_close(*state);
  return 0;
}
