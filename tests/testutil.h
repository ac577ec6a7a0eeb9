/* Helpers shared by the numerical suites: an independent brute-force
 * double-precision attention (the oracle's oracle), random data, the one
 * tolerance rule, NaN poisoning, and the list of devices to run on. */
#ifndef ATTN_TESTUTIL_H
#define ATTN_TESTUTIL_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "attn.h"

/* All host arrays contiguous row-major. */
typedef struct tu_sdpa_problem {
  int64_t B, Hq, Hkv, Sq, Skv, D, Dv;
  const float *q; /* [B,Hq,Sq,D] */
  const float *k; /* [B,Hkv,Skv,D] */
  const float *v; /* [B,Hkv,Skv,Dv] */
  const float *mask;       /* [mask_b, mask_h, Sq, Skv] or NULL */
  attn_mask_kind mask_kind;
  int64_t mask_b, mask_h;  /* 1 or B, 1 or Hq */
  bool causal;
  double scale;            /* already resolved (1/sqrt(D) by default) */
  const int32_t *kv_lens;  /* [B] or NULL */
  /* The options of attn.h 0.3; zero means unused. */
  int64_t mask_q;          /* the mask's query dim: 1 or Sq (0 means Sq) */
  bool has_positions;      /* else q_pos = Skv - Sq, k_pos = 0 */
  int64_t q_pos, k_pos;
  bool has_window;
  int64_t window_left, window_right; /* -1 = unbounded */
  double softcap;          /* > 0: s = softcap * tanh(s / softcap) */
  const float *alibi;      /* [Hq] slopes or NULL */
  const float *sinks;      /* [Hq] logits or NULL */
} tu_sdpa_problem;

/* Straight from the definition, in double: positions, visibility (kv_lens,
 * causal, window, bool mask), scores with softcap, ALiBi and the additive
 * mask, softmax with the sink, weighted sum. out [B,Hq,Sq,Dv]; weights
 * [B,Hq,Sq,Skv] and lse [B,Hq,Sq] may be NULL. Rows with no visible key:
 * zeros, lse = -inf (the sink with sinks). */
void tu_sdpa_double(const tu_sdpa_problem *p, double *out, double *weights, double *lse);

/* y[r,:] = x[r,:] W^T + b in double; x [rows, in], w [out, in], b [out] or NULL. */
void tu_linear_double(const float *x, int64_t rows, int64_t in, const float *w, const float *b,
                      int64_t out, double *y);

/* Deterministic xorshift random numbers. */
uint64_t tu_rand_u64(uint64_t *state);
void tu_fill_uniform(float *x, size_t n, uint64_t *state, float lo, float hi);
float *tu_alloc_uniform(size_t n, uint64_t *state, float lo, float hi); /* malloc'ed */
void tu_fill_nan(float *x, size_t n);

/* The one tolerance rule of the suites: every element must satisfy
 *   |got - want| <= TU_ATOL + TU_RTOL * max(|want|) over the array
 * (relative to the size of the values), and no NaN where want is finite.
 * Returns 1 if ok; otherwise prints the worst element with `what` and returns 0.
 * *max_err (may be NULL) receives the largest absolute error.
 * Where want is NaN got must be NaN, and where want is +-inf got must equal it
 * (a NaN that should propagate, an lse of -inf). */
/* Calibrated by test_sdpa's tolerance_calibration (Skv=1000, D=Dv=256): a
 * correct float32 SDPA, plain or flash-style, errs 1.4e-7 against a tolerance
 * of 3.3e-6 (24x margin); dropping one key errs 3e-3, a 0.2% scale error
 * 1.9e-4, so both fail. */
#define TU_RTOL 2e-5
#define TU_ATOL 1e-6
int tu_check_close(const char *what, const float *got, const double *want, size_t n,
                   double *max_err);
/* The same for an output stored as t (the README's numerics contract): each
 * element may also differ by half an ulp of t, relative to it (f16: 2^-11,
 * bf16: 2^-8), the rounding of a correct result to its storage type. */
int tu_check_close_typed(const char *what, attn_dtype t, const float *got, const double *want,
                         size_t n, double *max_err);

/* The devices the numerical suites run on: every device of every backend
 * found (ref, pocl, clblast, ...), or those of $ATTN_TEST_DEVICES (a comma
 * separated list of selectors) when set. Fills up to max selectors, returns
 * the count, and prints "suite NAME runs on: ..." once to stdout. */
int tu_devices(const char *suite, char sel[][64], int max);

/* ---- cmocka suites that run once per device ---------------------------------
 * The device of the group running now, and per-test fixtures that put an
 * attn_context open on it in *state (the open failing fails the test, with
 * the library's message on stderr). */
extern const char *tu_device;
int tu_open_device(void **state);
int tu_close_device(void **state);

/* Only where cmocka.h came first: testutil.c is also linked into programs
 * without cmocka (the fuzz replays). */
#ifdef CMOCKA_H_
#include <stdio.h>
#include <string.h>

/* The call failed with exactly this status and its message names `what`. */
#define tu_assert_fails(call, status, what)                                                 \
  do {                                                                                      \
    attn_status s_ = (call);                                                                \
    if (s_ != (status) || !strstr(attn_last_error(), (what)))                               \
      fail_msg("%s: got %d \"%s\", want %d naming \"%s\"", #call, (int)s_, attn_last_error(), \
               (int)(status), (what));                                                      \
  } while (0)

/* main() of such a suite: the tests once per device of tu_devices(suite) as a
 * group named by the selector, tu_device set to it. Returns the exit status:
 * 77 (skipped) when there is no device, 1 when any test failed, else 0. */
#define tu_run_per_device(suite, tests) \
  tu_run_per_device_((suite), (tests), sizeof(tests) / sizeof((tests)[0]))
static inline int tu_run_per_device_(const char *suite, const struct CMUnitTest *tests,
                                     size_t n) {
  char sel[16][64];
  int ndev = tu_devices(suite, sel, 16);
  if (ndev == 0) return 77;
  int failed = 0;
  for (int i = 0; i < ndev; i++) {
    tu_device = sel[i];
    printf("== device %s\n", tu_device);
    failed += _cmocka_run_group_tests(tu_device, tests, n, NULL, NULL);
  }
  return failed ? 1 : 0;
}
#endif

#endif
