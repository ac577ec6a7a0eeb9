/* Error exits of the whole public API, in the manner of the BLAS/LAPACK
 * error-exit tests (issue 5): every ATTN_API function of include/attn.h is
 * called once per invalid argument, and each call must give the exact status
 * and a message that starts with the function's name ("attn_sdpa: ") and names
 * the argument at fault. After each failure nothing has changed (outputs keep
 * their sentinel values, out-pointers are NULL, a cache keeps its length) and
 * the same context still works (a valid call afterwards succeeds). Functions
 * that cannot fail are called with NULL where their comment allows it.
 *
 * Runs on the ref backend only: the checks are the core's, not a backend's.
 *
 * Other argument tests, not repeated here (this file covers what they miss):
 *   tests/test_tensor.c  test_tensor_invalid_args (create/view/write/read),
 *                        test_overflow_refused, test_sdpa_invalid_args (a
 *                        31-entry attn_sdpa table);
 *   tests/test_mha.c     test_bad_descriptors (desc and weights),
 *                        test_bad_run_args (runs, KV cache, profiling);
 *   tests/test_status.c  attn_open / attn_context_info / attn_synchronize /
 *                        attn_list_devices NULL arguments (on tp_good);
 *   tests/test_selector.c, tests/test_loader.c  selector syntax, modules;
 *   tests/test_bench.c   attn_device_peaks_get statuses. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>
#include <limits.h>
#include <math.h>

#include "attn.h"

/* ---- the checks and a count of cases per function, for the report ---------- */

#define MAX_FNS 40
static struct {
  const char *fn;
  int n;
} g_count[MAX_FNS];

static void count_case(const char *fn) {
  int i = 0;
  while (i < MAX_FNS && g_count[i].fn && strcmp(g_count[i].fn, fn) != 0) i++;
  if (i == MAX_FNS) return;
  g_count[i].fn = fn;
  g_count[i].n++;
}

/* The call failed with exactly `want`, and its message is "<fn>: ..." naming
 * `arg`. */
static void expect_(const char *call, int line, attn_status got, attn_status want, const char *fn,
                    const char *arg) {
  const char *m = attn_last_error();
  size_t n = strlen(fn);
  if (got != want || strncmp(m, fn, n) != 0 || strncmp(m + n, ": ", 2) != 0 ||
      !strstr(m + n + 2, arg))
    fail_msg("line %d: %s: got %d (%s) \"%s\"; want %d (%s), \"%s: ...\" naming \"%s\"", line,
             call, (int)got, attn_status_str(got), m, (int)want, attn_status_str(want), fn, arg);
  count_case(fn);
}
#define EXPECT(call, want, fn, arg) expect_(#call, __LINE__, (call), (want), (fn), (arg))
#define OK(call)                                                                          \
  do {                                                                                    \
    attn_status s_ = (call);                                                              \
    if (s_ != ATTN_OK) fail_msg("line %d: %s: %s", __LINE__, #call, attn_last_error()); \
  } while (0)

/* A non-NULL value an out-pointer holds before a call that must reset it. */
#define POISON ((void *)(uintptr_t)0x1)

/* ---- fixtures ---------------------------------------------------------------- */

static int setup(void **state) {
  attn_context *ctx = NULL;
  if (attn_open("ref", &ctx) != ATTN_OK) {
    fprintf(stderr, "attn_open(ref): %s\n", attn_last_error());
    return -1;
  }
  *state = ctx;
  return 0;
}

static int teardown(void **state) {
  attn_close(*state);
  return 0;
}

/* Element i of a sentinel tensor: distinct, finite, never an SDPA result. */
static float sentinel_value(size_t i) { return 1000.0f + (float)(i % 977); }

/* A contiguous tensor holding the sentinel values. */
static attn_tensor *make(attn_context *ctx, int ndim, int64_t a, int64_t b, int64_t c, int64_t d) {
  const int64_t shape[4] = {a, b, c, d};
  attn_tensor *t = NULL;
  OK(attn_tensor_create(ctx, ndim, shape, &t));
  size_t n = (size_t)attn_tensor_numel(t);
  float *h = malloc(n * sizeof *h);
  assert_non_null(h);
  for (size_t i = 0; i < n; i++) h[i] = sentinel_value(i);
  OK(attn_tensor_write(t, h, n));
  free(h);
  return t;
}

/* Small values for inputs (weights, x), so valid runs stay finite. */
static attn_tensor *make_small(attn_context *ctx, int ndim, int64_t a, int64_t b, int64_t c,
                               int64_t d) {
  attn_tensor *t = make(ctx, ndim, a, b, c, d);
  size_t n = (size_t)attn_tensor_numel(t);
  float *h = malloc(n * sizeof *h);
  assert_non_null(h);
  for (size_t i = 0; i < n; i++) h[i] = (float)((int)(i * 7 % 13) - 6) * 0.05f;
  OK(attn_tensor_write(t, h, n));
  free(h);
  return t;
}

static attn_tensor *view(const attn_tensor *base, int64_t off, int ndim, const int64_t *shape,
                         const int64_t *strides) {
  attn_tensor *t = NULL;
  OK(attn_tensor_view(base, off, ndim, shape, strides, &t));
  return t;
}

/* t still holds the sentinel values make() wrote: a failed call wrote nothing. */
static void assert_sentinel_(const attn_tensor *t, const char *what, int line) {
  size_t n = (size_t)attn_tensor_numel(t);
  float *h = malloc(n * sizeof *h);
  assert_non_null(h);
  OK(attn_tensor_read(t, h, n));
  for (size_t i = 0; i < n; i++)
    if (h[i] != sentinel_value(i))
      fail_msg("line %d: %s[%zu] = %g changed by a failed call (was %g)", line, what, i,
               (double)h[i], (double)sentinel_value(i));
  free(h);
}
#define assert_sentinel(t) assert_sentinel_((t), #t, __LINE__)

/* ---- functions that cannot fail: constants, NULL tolerance -------------------- */

static void test_cannot_fail(void **state) {
  (void)state;
  /* Every status, and values outside the enum, have a constant string. */
  for (int s = ATTN_ERR_CAPACITY - 3; s <= 3; s++) {
    const char *str = attn_status_str((attn_status)s);
    assert_non_null(str);
    assert_true(str[0] != '\0');
  }
  assert_string_equal(attn_status_str((attn_status)INT_MIN), "unknown status");
  assert_string_equal(attn_status_str((attn_status)INT_MAX), "unknown status");
  assert_string_equal(attn_device_type_str((attn_device_type)0), "other");
  assert_string_equal(attn_device_type_str((attn_device_type)-1), "other");
  assert_string_equal(attn_device_type_str(ATTN_DEVICE_GPU), "gpu");
  assert_string_equal(attn_dtype_str((attn_dtype)3), "?");
  assert_string_equal(attn_dtype_str((attn_dtype)-1), "?");
  assert_int_equal(attn_dtype_size((attn_dtype)7), 0);
  assert_int_equal(attn_dtype_size(ATTN_BF16), 2);
  assert_int_equal(attn_tensor_dtype(NULL), ATTN_F32);
  attn_dtype dt = ATTN_BF16;
  EXPECT(attn_dtype_parse(NULL, &dt), ATTN_ERR_INVALID_ARG, "attn_dtype_parse", "s: NULL");
  EXPECT(attn_dtype_parse("f16", NULL), ATTN_ERR_INVALID_ARG, "attn_dtype_parse", "t: NULL");
  EXPECT(attn_dtype_parse("F16", &dt), ATTN_ERR_INVALID_ARG, "attn_dtype_parse", "\"F16\"");
  EXPECT(attn_dtype_parse("", &dt), ATTN_ERR_INVALID_ARG, "attn_dtype_parse", "s: \"\"");
  assert_int_equal(dt, ATTN_BF16); /* unchanged */
  char v[32];
  snprintf(v, sizeof v, "%d.%d.%d", ATTN_VERSION_MAJOR, ATTN_VERSION_MINOR, ATTN_VERSION_PATCH);
  assert_string_equal(attn_version(), v);
  assert_non_null(attn_last_error());

  /* NULL is a no-op for every free / reset and gives 0 or NULL for every
   * accessor. */
  attn_close(NULL);
  attn_tensor_free(NULL);
  attn_device_list_free(NULL);
  attn_mha_free(NULL);
  attn_kv_cache_free(NULL);
  attn_kv_cache_reset(NULL);
  assert_int_equal(attn_kv_cache_length(NULL), 0);
  assert_int_equal(attn_kv_cache_capacity(NULL), 0);
  assert_int_equal(attn_tensor_ndim(NULL), 0);
  assert_int_equal(attn_tensor_numel(NULL), 0);
  int64_t shape[4] = {-7, -7, -7, -7}, strides[4] = {-7, -7, -7, -7};
  attn_tensor_shape(NULL, shape, strides);
  for (int i = 0; i < 4; i++) assert_true(shape[i] == -7 && strides[i] == -7);
  assert_int_equal(attn_device_list_count(NULL), 0);
  assert_null(attn_device_list_get(NULL, 0));
  assert_int_equal(attn_device_list_failure_count(NULL), 0);
  assert_null(attn_device_list_failure_path(NULL, 0));
  assert_null(attn_device_list_failure_reason(NULL, 0));

  /* Indices out of range on a real list. */
  attn_device_list *l = POISON;
  EXPECT(attn_list_devices(NULL), ATTN_ERR_INVALID_ARG, "attn_list_devices", "list");
  OK(attn_list_devices(&l));
  size_t nd = attn_device_list_count(l), nf = attn_device_list_failure_count(l);
  assert_true(nd >= 1); /* ref at least */
  assert_null(attn_device_list_get(l, nd));
  assert_null(attn_device_list_get(l, SIZE_MAX));
  assert_null(attn_device_list_failure_path(l, nf));
  assert_null(attn_device_list_failure_reason(l, nf));
  assert_null(attn_device_list_failure_reason(l, SIZE_MAX));
  attn_device_list_free(l);
}

/* ---- attn_open ----------------------------------------------------------------- */

static void test_open(void **state) {
  (void)state;
  static const struct {
    const char *sel;
    attn_status st;
    const char *arg;
  } bad[] = {
      {"nosuchbackend", ATTN_ERR_NO_DEVICE, "selector \"nosuchbackend\""},
      {"ref:7", ATTN_ERR_NO_DEVICE, "selector \"ref:7\""},
      {"ref:gpu", ATTN_ERR_NO_DEVICE, "selector \"ref:gpu\""},
      {"ref:no such device name", ATTN_ERR_NO_DEVICE, "selector"},
      {"ref:", ATTN_ERR_SELECTOR, "selector \"ref:\""},
      {":0", ATTN_ERR_SELECTOR, "selector \":0\""},
      {"ref:0:0", ATTN_ERR_SELECTOR, "selector \"ref:0:0\""},
      {"Ref", ATTN_ERR_SELECTOR, "selector \"Ref\""},
      {"ref,", ATTN_ERR_SELECTOR, "selector \"ref,\""},
      {"ref:99999999999", ATTN_ERR_SELECTOR, "selector"},
  };
  for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
    attn_context *ctx = POISON;
    EXPECT(attn_open(bad[i].sel, &ctx), bad[i].st, "attn_open", bad[i].arg);
    assert_null(ctx);
  }
  /* A NULL selector reads $ATTN_DEVICE, and its errors name it. */
  attn_context *ctx = POISON;
  setenv("ATTN_DEVICE", "ref,,", 1);
  EXPECT(attn_open(NULL, &ctx), ATTN_ERR_SELECTOR, "attn_open", "ATTN_DEVICE");
  assert_null(ctx);
  setenv("ATTN_DEVICE", "nosuchbackend", 1);
  ctx = POISON;
  EXPECT(attn_open(NULL, &ctx), ATTN_ERR_NO_DEVICE, "attn_open", "ATTN_DEVICE");
  assert_null(ctx);
  unsetenv("ATTN_DEVICE");
  EXPECT(attn_open("ref", NULL), ATTN_ERR_INVALID_ARG, "attn_open", "ctx");
  /* And a valid open still works. */
  OK(attn_open("ref", &ctx));
  attn_close(ctx);
}

/* ---- contexts: info, synchronize, peaks ----------------------------------------- */

static void test_context(void **state) {
  attn_context *ctx = *state;
  attn_device_info info;
  memset(&info, 0x5a, sizeof info);
  attn_device_info before = info;
  EXPECT(attn_context_info(NULL, &info), ATTN_ERR_INVALID_ARG, "attn_context_info", "ctx");
  assert_memory_equal(&info, &before, sizeof info);
  EXPECT(attn_context_info(ctx, NULL), ATTN_ERR_INVALID_ARG, "attn_context_info", "info");
  EXPECT(attn_synchronize(NULL), ATTN_ERR_INVALID_ARG, "attn_synchronize", "ctx");

  attn_device_peaks p = {.gflops = -1, .gbps = -2};
  EXPECT(attn_device_peaks_get(NULL, false, &p), ATTN_ERR_INVALID_ARG, "attn_device_peaks_get",
         "ctx");
  EXPECT(attn_device_peaks_get(NULL, true, &p), ATTN_ERR_INVALID_ARG, "attn_device_peaks_get",
         "ctx");
  assert_true(p.gflops == -1 && p.gbps == -2);
  EXPECT(attn_device_peaks_get(ctx, false, NULL), ATTN_ERR_INVALID_ARG, "attn_device_peaks_get",
         "p");
  EXPECT(attn_device_peaks_get(ctx, true, NULL), ATTN_ERR_INVALID_ARG, "attn_device_peaks_get",
         "p");

  /* The context is unharmed. */
  OK(attn_context_info(ctx, &info));
  assert_string_equal(info.backend, "ref");
  OK(attn_synchronize(ctx));
}

/* ---- tensors ---------------------------------------------------------------------- */

static void test_tensor_create(void **state) {
  attn_context *ctx = *state;
  const int64_t ok[4] = {2, 3, 4, 5}, neg0[4] = {-1, 3, 4, 5}, neg3[4] = {2, 3, 4, -5},
                min0[4] = {INT64_MIN, 3, 4, 5}, zero3[4] = {2, 3, 4, 0};
  static const struct {
    int ndim;
    int shape; /* which array */
    const char *arg;
  } bad[] = {{-1, 0, "ndim: -1"}, {INT_MIN, 0, "ndim"}, {INT_MAX, 0, "ndim"},
             {1, 1, "shape[0]: -1"}, {4, 2, "shape[3]: -5"}, {2, 3, "shape[0]"},
             {4, 4, "shape[3]: 0"}};
  const int64_t *shapes[5] = {ok, neg0, neg3, min0, zero3};
  for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
    attn_tensor *t = POISON;
    EXPECT(attn_tensor_create(ctx, bad[i].ndim, shapes[bad[i].shape], &t), ATTN_ERR_INVALID_ARG,
           "attn_tensor_create", bad[i].arg);
    assert_null(t);
  }
  /* A NULL context also leaves no stale handle (test_tensor.c checks the
   * status). */
  attn_tensor *t = POISON;
  EXPECT(attn_tensor_create(NULL, 4, ok, &t), ATTN_ERR_INVALID_ARG, "attn_tensor_create", "ctx");
  assert_null(t);
  /* The typed form: the same checks, and the dtype. */
  t = POISON;
  EXPECT(attn_tensor_create_typed(ctx, (attn_dtype)3, 4, ok, &t), ATTN_ERR_INVALID_ARG,
         "attn_tensor_create_typed", "dtype: 3");
  assert_null(t);
  t = POISON;
  EXPECT(attn_tensor_create_typed(ctx, (attn_dtype)-1, 4, ok, &t), ATTN_ERR_INVALID_ARG,
         "attn_tensor_create_typed", "dtype: -1");
  assert_null(t);
  t = POISON;
  EXPECT(attn_tensor_create_typed(NULL, ATTN_F16, 4, ok, &t), ATTN_ERR_INVALID_ARG,
         "attn_tensor_create_typed", "ctx");
  assert_null(t);
  EXPECT(attn_tensor_create_typed(ctx, ATTN_F16, 4, ok, NULL), ATTN_ERR_INVALID_ARG,
         "attn_tensor_create_typed", "t: NULL");
  t = POISON;
  EXPECT(attn_tensor_create_typed(ctx, ATTN_BF16, 4, neg3, &t), ATTN_ERR_INVALID_ARG,
         "attn_tensor_create_typed", "shape[3]: -5");
  assert_null(t);
  /* Shape checked before ndim's other dims are read: ndim 1 ignores the rest. */
  const int64_t one[4] = {3, -1, -1, -1};
  OK(attn_tensor_create(ctx, 1, one, &t));
  assert_int_equal(attn_tensor_numel(t), 3);
  attn_tensor_free(t);
}

static void test_tensor_view(void **state) {
  attn_context *ctx = *state;
  attn_tensor *base = make(ctx, 2, 4, 6, 1, 1); /* 24 elements */
  const int64_t vs[2] = {4, 6}, vst[2] = {6, 1}, neg0[2] = {-4, 6}, negst0[2] = {-6, 1},
                wide[2] = {7, 1}, small[2] = {2, 2}, bigst[2] = {INT64_MAX / 2, 1};
  static const struct {
    int64_t offset;
    int ndim, shape, strides; /* indices into the arrays below */
    attn_status st;
    const char *arg;
  } bad[] = {
      {0, 0, 0, 0, ATTN_ERR_INVALID_ARG, "ndim: 0"},
      {0, -1, 0, 0, ATTN_ERR_INVALID_ARG, "ndim: -1"},
      {0, 2, 1, 0, ATTN_ERR_INVALID_ARG, "shape[0]: -4"},
      {0, 2, 0, 1, ATTN_ERR_INVALID_ARG, "strides[0]: -6"},
      /* Outside the storage: by the offset alone, by a stride, by the two. */
      {24, 2, 2, 0, ATTN_ERR_SHAPE, "offset: 24"},
      {INT64_MAX, 2, 2, 0, ATTN_ERR_SHAPE, "offset"},
      {0, 2, 0, 2, ATTN_ERR_SHAPE, "shape: the view reaches element 26"},
      {17, 2, 2, 0, ATTN_ERR_SHAPE, "storage has 24"},
      /* A stride whose extent overflows int64. */
      {0, 2, 3, 3, ATTN_ERR_OVERFLOW, "strides"},
  };
  const int64_t *shapes[4] = {vs, neg0, small, (const int64_t[]){4, 1}};
  const int64_t *strides[4] = {vst, negst0, wide, bigst};
  for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
    attn_tensor *t = POISON;
    EXPECT(attn_tensor_view(base, bad[i].offset, bad[i].ndim, shapes[bad[i].shape],
                            strides[bad[i].strides], &t),
           bad[i].st, "attn_tensor_view", bad[i].arg);
    assert_null(t);
  }
  attn_tensor *nv = POISON;
  EXPECT(attn_tensor_view(NULL, 0, 2, vs, vst, &nv), ATTN_ERR_INVALID_ARG, "attn_tensor_view",
         "base");
  assert_null(nv);
  /* A view of a view: offsets and strides are relative to the storage, so
   * the bounds are the storage's, not the inner view's. */
  const int64_t row[1] = {6}, one[1] = {1};
  attn_tensor *last_row = view(base, 18, 1, row, one);
  attn_tensor *t = POISON;
  EXPECT(attn_tensor_view(last_row, 19, 1, row, one, &t), ATTN_ERR_SHAPE, "attn_tensor_view",
         "storage has 24");
  assert_null(t);
  attn_tensor *first = view(last_row, 0, 1, row, one); /* valid: inside the storage */
  attn_tensor_free(first);
  attn_tensor_free(last_row);
  assert_sentinel(base);
  attn_tensor_free(base);
}

static void test_tensor_io(void **state) {
  attn_context *ctx = *state;
  attn_tensor *t = make(ctx, 2, 4, 6, 1, 1);
  /* A strided view (every other column) takes the scatter path. */
  const int64_t cs[2] = {4, 3}, cst[2] = {6, 2};
  attn_tensor *cols = view(t, 0, 2, cs, cst);
  float buf[32];
  for (int i = 0; i < 32; i++) buf[i] = -1.0f;

  EXPECT(attn_tensor_write(t, buf, 0), ATTN_ERR_INVALID_ARG, "attn_tensor_write", "count: 0");
  EXPECT(attn_tensor_write(t, buf, SIZE_MAX), ATTN_ERR_INVALID_ARG, "attn_tensor_write", "count");
  EXPECT(attn_tensor_write(t, buf, 25), ATTN_ERR_INVALID_ARG, "attn_tensor_write", "count: 25");
  EXPECT(attn_tensor_write(cols, buf, 24), ATTN_ERR_INVALID_ARG, "attn_tensor_write",
         "count: 24 != numel 12");
  EXPECT(attn_tensor_write(cols, NULL, 12), ATTN_ERR_INVALID_ARG, "attn_tensor_write", "src");
  /* Views that reach an element twice are for reading only. */
  const int64_t bs[2] = {4, 6}, bst[2] = {0, 1}, os[2] = {4, 6}, ost[2] = {3, 1};
  attn_tensor *bcast = view(t, 0, 2, bs, bst), *overlap = view(t, 0, 2, os, ost);
  EXPECT(attn_tensor_write(bcast, buf, 24), ATTN_ERR_INVALID_ARG, "attn_tensor_write",
         "t: stride 0 is 0");
  EXPECT(attn_tensor_write(overlap, buf, 24), ATTN_ERR_INVALID_ARG, "attn_tensor_write",
         "t: strides overlap");
  OK(attn_tensor_read(bcast, buf, 24)); /* reading them is fine */
  for (int i = 0; i < 32; i++) buf[i] = -1.0f;
  attn_tensor_free(bcast);
  attn_tensor_free(overlap);
  assert_sentinel(t);

  EXPECT(attn_tensor_read(t, buf, 0), ATTN_ERR_INVALID_ARG, "attn_tensor_read", "count: 0");
  EXPECT(attn_tensor_read(t, buf, SIZE_MAX), ATTN_ERR_INVALID_ARG, "attn_tensor_read", "count");
  EXPECT(attn_tensor_read(cols, buf, 11), ATTN_ERR_INVALID_ARG, "attn_tensor_read",
         "count: 11 != numel 12");
  EXPECT(attn_tensor_read(cols, NULL, 12), ATTN_ERR_INVALID_ARG, "attn_tensor_read", "dst");
  for (int i = 0; i < 32; i++) assert_true(buf[i] == -1.0f); /* dst untouched */

  /* The raw forms: the same checks. */
  EXPECT(attn_tensor_write_raw(NULL, buf, 12), ATTN_ERR_INVALID_ARG, "attn_tensor_write_raw", "t");
  EXPECT(attn_tensor_write_raw(cols, NULL, 12), ATTN_ERR_INVALID_ARG, "attn_tensor_write_raw",
         "src");
  EXPECT(attn_tensor_write_raw(cols, buf, 13), ATTN_ERR_INVALID_ARG, "attn_tensor_write_raw",
         "count: 13 != numel 12");
  EXPECT(attn_tensor_read_raw(cols, NULL, 12), ATTN_ERR_INVALID_ARG, "attn_tensor_read_raw", "dst");
  EXPECT(attn_tensor_read_raw(cols, buf, 0), ATTN_ERR_INVALID_ARG, "attn_tensor_read_raw",
         "count: 0");
  {
    attn_tensor *bc2 = view(t, 0, 2, bs, bst);
    EXPECT(attn_tensor_write_raw(bc2, buf, 24), ATTN_ERR_INVALID_ARG, "attn_tensor_write_raw",
           "t: stride 0 is 0");
    attn_tensor_free(bc2);
  }
  for (int i = 0; i < 32; i++) assert_true(buf[i] == -1.0f); /* dst untouched */
  assert_sentinel(t);

  /* The accessors take NULL outputs. */
  attn_tensor_shape(t, NULL, NULL);
  int64_t sh[4] = {0}, st[4] = {0};
  attn_tensor_shape(cols, sh, NULL);
  attn_tensor_shape(cols, NULL, st);
  assert_true(sh[0] == 4 && sh[1] == 3 && st[0] == 6 && st[1] == 2);
  assert_int_equal(attn_tensor_ndim(cols), 2);

  /* Still usable: a valid strided read. */
  OK(attn_tensor_read(cols, buf, 12));
  assert_true(buf[1] == sentinel_value(2) && buf[3] == sentinel_value(6));
  attn_tensor_free(cols);
  attn_tensor_free(t);
}

/* ---- attn_sdpa: what test_tensor.c's table does not cover -------------------------- */

enum { B = 2, HQ = 4, HKV = 2, SQ = 3, SKV = 5, D = 8, DV = 6 };

typedef struct sdpa_fix {
  attn_context *ctx, *other;
  attn_tensor *q, *k, *v, *out, *mask, *weights, *lse;
} sdpa_fix;

static attn_sdpa_args sdpa_good(const sdpa_fix *f) {
  attn_sdpa_args a;
  memset(&a, 0, sizeof a);
  a.struct_size = sizeof a;
  a.q = f->q, a.k = f->k, a.v = f->v, a.out = f->out;
  a.mask = f->mask, a.mask_kind = ATTN_MASK_ADDITIVE;
  a.weights = f->weights, a.lse = f->lse;
  return a;
}

static void test_sdpa(void **state) {
  sdpa_fix f;
  memset(&f, 0, sizeof f);
  attn_context *ctx = f.ctx = *state;
  OK(attn_open("ref", &f.other));
  /* Inputs: v lives in a pool so that outputs can be carved over it. */
  attn_tensor *pool = make_small(ctx, 1, 4096, 1, 1, 1);
  const int64_t vsh[4] = {B, HKV, SKV, DV}, vst[4] = {HKV * SKV * DV, SKV * DV, DV, 1};
  f.q = make_small(ctx, 4, B, HQ, SQ, D);
  f.k = make_small(ctx, 4, B, HKV, SKV, D);
  f.v = view(pool, 0, 4, vsh, vst);
  f.mask = make_small(ctx, 4, 1, HQ, SQ, SKV);
  /* Outputs hold sentinels, checked after every failure. */
  f.out = make(ctx, 4, B, HQ, SQ, DV);
  f.weights = make(ctx, 4, B, HQ, SQ, SKV);
  f.lse = make(ctx, 3, B, HQ, SQ, 1);

  /* Foreign tensors, wrong ranks, wrong shapes. */
  attn_tensor *fk = make(f.other, 4, B, HKV, SKV, D), *fv = make(f.other, 4, B, HKV, SKV, DV),
              *fo = make(f.other, 4, B, HQ, SQ, DV), *fm = make(f.other, 4, 1, HQ, SQ, SKV),
              *fw = make(f.other, 4, B, HQ, SQ, SKV), *fl = make(f.other, 3, B, HQ, SQ, 1);
  attn_tensor *k3 = make(ctx, 3, B * HKV, SKV, D, 1), *v3 = make(ctx, 3, B * HKV, SKV, DV, 1),
              *o3 = make(ctx, 3, B * HQ, SQ, DV, 1), *m3 = make(ctx, 3, HQ, SQ, SKV, 1),
              *w3 = make(ctx, 3, B * HQ, SQ, SKV, 1), *l2 = make(ctx, 2, B * HQ, SQ, 1, 1);
  attn_tensor *v_b1 = make(ctx, 4, 1, HKV, SKV, DV), *o_b1 = make(ctx, 4, 1, HQ, SQ, DV),
              *o_h2 = make(ctx, 4, B, 2, SQ, DV), *o_s4 = make(ctx, 4, B, HQ, SQ + 1, DV),
              *m_h2 = make(ctx, 4, 1, 2, SQ, SKV), *m_sq = make(ctx, 4, B, HQ, SQ + 1, SKV),
              *w_skv = make(ctx, 4, B, HQ, SQ, SKV + 1), *l_b1 = make(ctx, 3, 1, HQ, SQ, 1),
              *k_h8 = make(ctx, 4, B, 8, SKV, D), *v_h8 = make(ctx, 4, B, 8, SKV, DV);
  /* Aliasing: outputs over the inputs' storage or over each other. */
  const int64_t os[4] = {B, HQ, SQ, DV}, ost[4] = {HQ * SQ * DV, SQ * DV, DV, 1},
                ws[4] = {B, HQ, SQ, SKV}, wst[4] = {HQ * SQ * SKV, SQ * SKV, SKV, 1},
                ls[3] = {B, HQ, SQ}, lst[3] = {HQ * SQ, SQ, 1};
  attn_tensor *k_store = make(ctx, 1, 4096, 1, 1, 1); /* k as a view, for out over k */
  const int64_t ksh[4] = {B, HKV, SKV, D}, kst[4] = {HKV * SKV * D, SKV * D, D, 1};
  attn_tensor *k_v = view(k_store, 100, 4, ksh, kst);
  attn_tensor *out_on_k = view(k_store, 100 + 150, 4, os, ost);   /* starts inside k */
  attn_tensor *out_on_v = view(pool, 100, 4, os, ost);            /* v spans 0..119 */
  attn_tensor *w_on_v = view(pool, 0, 4, ws, wst);
  attn_tensor *out_store = make(ctx, 1, 1024, 1, 1, 1);
  attn_tensor *out_s = view(out_store, 0, 4, os, ost);             /* 0..143 */
  attn_tensor *lse_on_out = view(out_store, 140, 3, ls, lst);     /* 140..163 */
  attn_tensor *w_s = view(out_store, 200, 4, ws, wst);            /* 200..319 */
  attn_tensor *lse_on_w = view(out_store, 310, 3, ls, lst);     /* 310..333 */
  attn_tensor *mask_store = make_small(ctx, 1, 1024, 1, 1, 1);
  const int64_t msh[4] = {1, HQ, SQ, SKV}, mst[4] = {0, SQ * SKV, SKV, 1};
  attn_tensor *mask_v = view(mask_store, 0, 4, msh, mst);
  attn_tensor *w_on_mask = view(mask_store, 30, 4, ws, wst);
  /* Bad output strides: a broadcast weights dim, self-overlapping lse rows. */
  const int64_t wzst[4] = {HQ * SQ * SKV, 0, SKV, 1}, lovst[3] = {HQ * SQ, 1, 1};
  attn_tensor *w_zero = view(out_store, 500, 4, ws, wzst);
  attn_tensor *lse_self = view(out_store, 500, 3, ls, lovst);
  /* out is q itself: needs D == Dv, so q, k, v of head dim DV. */
  attn_tensor *q6 = make(ctx, 4, B, HQ, SQ, DV), *k6 = make_small(ctx, 4, B, HKV, SKV, DV);
  const int32_t lens_max[B] = {0, INT32_MAX}, lens_min[B] = {INT32_MIN, 0},
                lens_b1[B] = {SKV, SKV + 1};
  const float slopes_nan[HQ] = {0.5f, 0.25f, NAN, 0.125f}, sinks_inf[HQ] = {INFINITY, 0, 0, 0};

  attn_sdpa_args a = sdpa_good(&f);
  OK(attn_sdpa(ctx, &a)); /* the baseline is valid */
  /* Its results replace the sentinels: write them back. */
  attn_tensor_free(f.out), attn_tensor_free(f.weights), attn_tensor_free(f.lse);
  f.out = make(ctx, 4, B, HQ, SQ, DV);
  f.weights = make(ctx, 4, B, HQ, SQ, SKV);
  f.lse = make(ctx, 3, B, HQ, SQ, 1);

  struct {
    attn_status st;
    const char *arg;
    attn_sdpa_args a;
    attn_context *ctx;
  } t[64];
  int n = 0;
#define CASE(st_, arg_, ...)                                                              \
  do {                                                                                    \
    t[n].st = (st_), t[n].arg = (arg_), t[n].a = sdpa_good(&f), t[n].ctx = ctx;           \
    attn_sdpa_args *A = &t[n].a;                                                          \
    (void)A;                                                                              \
    __VA_ARGS__;                                                                          \
    n++;                                                                                  \
  } while (0)
  /* Every tensor from another context, and the call on another context. */
  CASE(ATTN_ERR_INVALID_ARG, "q: tensor belongs to another context", t[n].ctx = f.other);
  CASE(ATTN_ERR_INVALID_ARG, "k: tensor belongs to another context", A->k = fk);
  CASE(ATTN_ERR_INVALID_ARG, "v: tensor belongs to another context", A->v = fv);
  CASE(ATTN_ERR_INVALID_ARG, "out: tensor belongs to another context", A->out = fo);
  CASE(ATTN_ERR_INVALID_ARG, "mask: tensor belongs to another context", A->mask = fm);
  CASE(ATTN_ERR_INVALID_ARG, "weights: tensor belongs to another context", A->weights = fw);
  CASE(ATTN_ERR_INVALID_ARG, "lse: tensor belongs to another context", A->lse = fl);
  /* Ranks. */
  CASE(ATTN_ERR_SHAPE, "k: rank 3 != 4", A->k = k3);
  CASE(ATTN_ERR_SHAPE, "v: rank 3 != 4", A->v = v3);
  CASE(ATTN_ERR_SHAPE, "out: rank 3 != 4", A->out = o3);
  CASE(ATTN_ERR_SHAPE, "mask: rank 3 != 4", A->mask = m3);
  CASE(ATTN_ERR_SHAPE, "weights: rank 3 != 4", A->weights = w3);
  CASE(ATTN_ERR_SHAPE, "lse: rank 2 != 3", A->lse = l2);
  /* Shapes that do not fit together. */
  CASE(ATTN_ERR_SHAPE, "v: batch 1 != q batch 2", A->v = v_b1);
  CASE(ATTN_ERR_SHAPE, "k: q heads 4 are not a multiple of k heads 8", A->k = k_h8, A->v = v_h8);
  CASE(ATTN_ERR_SHAPE, "out: shape [1,4,3,6] != [2,4,3,6]", A->out = o_b1);
  CASE(ATTN_ERR_SHAPE, "out: shape [2,2,3,6] != [2,4,3,6]", A->out = o_h2);
  CASE(ATTN_ERR_SHAPE, "out: shape [2,4,4,6] != [2,4,3,6]", A->out = o_s4);
  CASE(ATTN_ERR_SHAPE, "mask: shape [1,2,3,5]", A->mask = m_h2);
  CASE(ATTN_ERR_SHAPE, "mask: shape [2,4,4,5]", A->mask = m_sq);
  CASE(ATTN_ERR_SHAPE, "weights: shape [2,4,3,6] != [2,4,3,5]", A->weights = w_skv);
  CASE(ATTN_ERR_SHAPE, "lse: shape [1,4,3] != [2,4,3]", A->lse = l_b1);
  /* Values. */
  CASE(ATTN_ERR_INVALID_ARG, "scale: -inf", A->has_scale = true, A->scale = -INFINITY);
  CASE(ATTN_ERR_INVALID_ARG, "scale", A->has_scale = true, A->scale = -NAN);
  CASE(ATTN_ERR_INVALID_ARG, "mask_kind: -1", A->mask_kind = (attn_mask_kind)-1);
  CASE(ATTN_ERR_INVALID_ARG, "mask_kind: 2 but mask is NULL", A->mask = NULL);
  CASE(ATTN_ERR_INVALID_ARG, "kv_lens[1]: 2147483647", A->kv_lens = lens_max);
  CASE(ATTN_ERR_INVALID_ARG, "kv_lens[0]: -2147483648", A->kv_lens = lens_min);
  CASE(ATTN_ERR_INVALID_ARG, "kv_lens[1]: 6 not in [0, 5]", A->kv_lens = lens_b1);
  /* The options of 0.3. */
  CASE(ATTN_ERR_INVALID_ARG, "window_left: -2 < -1", A->has_window = true, A->window_left = -2);
  CASE(ATTN_ERR_INVALID_ARG, "window_right: -9 < -1", A->has_window = true,
       A->window_left = 1, A->window_right = -9);
  CASE(ATTN_ERR_INVALID_ARG, "softcap: -1", A->softcap = -1.0f);
  CASE(ATTN_ERR_INVALID_ARG, "softcap: inf", A->softcap = INFINITY);
  CASE(ATTN_ERR_INVALID_ARG, "alibi_slopes[2]: nan", A->alibi_slopes = slopes_nan);
  CASE(ATTN_ERR_INVALID_ARG, "sinks[0]: inf", A->sinks = sinks_inf);
  CASE(ATTN_ERR_INVALID_ARG, "q_pos: 9223372036854775807 not in", A->has_positions = true,
       A->q_pos = INT64_MAX);
  CASE(ATTN_ERR_INVALID_ARG, "k_pos: -9223372036854775808 not in", A->has_positions = true,
       A->k_pos = INT64_MIN);
  /* Outputs over inputs and over each other. */
  CASE(ATTN_ERR_INVALID_ARG, "out: overlaps input k", A->k = k_v, A->out = out_on_k);
  CASE(ATTN_ERR_INVALID_ARG, "out: overlaps input v", A->out = out_on_v);
  CASE(ATTN_ERR_INVALID_ARG, "weights: overlaps input v", A->weights = w_on_v);
  CASE(ATTN_ERR_INVALID_ARG, "weights: overlaps input mask", A->mask = mask_v,
       A->weights = w_on_mask);
  CASE(ATTN_ERR_INVALID_ARG, "lse: overlaps output out", A->out = out_s, A->lse = lse_on_out);
  CASE(ATTN_ERR_INVALID_ARG, "lse: overlaps output weights", A->weights = w_s, A->lse = lse_on_w);
  CASE(ATTN_ERR_INVALID_ARG, "out: overlaps input q", A->q = q6, A->k = k6, A->out = q6);
  /* Output strides. */
  CASE(ATTN_ERR_INVALID_ARG, "weights: stride 1 is 0", A->weights = w_zero);
  CASE(ATTN_ERR_INVALID_ARG, "lse: strides overlap", A->lse = lse_self);
#undef CASE

  for (int i = 0; i < n; i++) {
    char what[32];
    snprintf(what, sizeof what, "attn_sdpa case %d", i);
    expect_(what, __LINE__, attn_sdpa(t[i].ctx, &t[i].a), t[i].st, "attn_sdpa", t[i].arg);
    /* Nothing written: the fixture's outputs keep their sentinels. */
    assert_sentinel(f.out);
    assert_sentinel(f.weights);
    assert_sentinel(f.lse);
  }
  assert_sentinel(q6);
  assert_sentinel(out_s);
  /* The same context still runs a valid call, and writes its outputs. */
  a = sdpa_good(&f);
  OK(attn_sdpa(ctx, &a));
  float o[B * HQ * SQ * DV];
  OK(attn_tensor_read(f.out, o, sizeof o / sizeof o[0]));
  for (size_t i = 0; i < sizeof o / sizeof o[0]; i++) assert_true(fabsf(o[i]) < 1.0f);
  attn_close(f.other); /* frees the foreign tensors */
  /* The rest goes with the fixture's attn_close. */
}

/* ---- attn_merge ---------------------------------------------------------------------- */

static void test_merge(void **state) {
  attn_context *ctx = *state, *other;
  OK(attn_open("ref", &other));
  attn_tensor *oa = make_small(ctx, 4, B, HQ, SQ, DV), *ob = make_small(ctx, 4, B, HQ, SQ, DV);
  attn_tensor *la = make_small(ctx, 3, B, HQ, SQ, 1), *lb = make_small(ctx, 3, B, HQ, SQ, 1);
  attn_tensor *out = make(ctx, 4, B, HQ, SQ, DV), *lse = make(ctx, 3, B, HQ, SQ, 1);
  attn_tensor *f_oa = make(other, 4, B, HQ, SQ, DV), *o3 = make(ctx, 3, B * HQ, SQ, DV, 1);
  attn_tensor *o_s4 = make(ctx, 4, B, HQ, SQ + 1, DV), *l_b1 = make(ctx, 3, 1, HQ, SQ, 1);
  const int64_t ls[3] = {B, HQ, SQ}, os[4] = {B, HQ, SQ, DV};
  attn_tensor *l16, *pool = make(ctx, 1, 4096, 1, 1, 1);
  OK(attn_tensor_create_typed(ctx, ATTN_BF16, 3, ls, &l16));
  const int64_t ost[4] = {HQ * SQ * DV, SQ * DV, DV, 1}, lst[3] = {HQ * SQ, SQ, 1};
  attn_tensor *o_p = view(pool, 0, 4, os, ost), *o_p1 = view(pool, 1, 4, os, ost);
  attn_tensor *l_on_o = view(pool, 0, 3, ls, lst);
  struct {
    attn_status st;
    const char *arg;
    attn_context *c;
    attn_tensor *t[6];
  } t[] = {
      {ATTN_ERR_INVALID_ARG, "ctx: NULL", NULL, {oa, la, ob, lb, out, lse}},
      {ATTN_ERR_INVALID_ARG, "out_a: NULL", ctx, {NULL, la, ob, lb, out, lse}},
      {ATTN_ERR_INVALID_ARG, "lse_b: NULL", ctx, {oa, la, ob, NULL, out, lse}},
      {ATTN_ERR_INVALID_ARG, "out: NULL", ctx, {oa, la, ob, lb, NULL, lse}},
      {ATTN_ERR_INVALID_ARG, "out_a: tensor belongs to another context", ctx,
       {f_oa, la, ob, lb, out, lse}},
      {ATTN_ERR_SHAPE, "out_b: rank 3 != 4", ctx, {oa, la, o3, lb, out, lse}},
      {ATTN_ERR_SHAPE, "out: shape [2,4,4,6] != [2,4,3,6]", ctx, {oa, la, ob, lb, o_s4, lse}},
      {ATTN_ERR_SHAPE, "lse_a: shape [1,4,3] != [2,4,3]", ctx, {oa, l_b1, ob, lb, out, lse}},
      {ATTN_ERR_INVALID_ARG, "lse_b: dtype bf16; lse is always f32", ctx,
       {oa, la, ob, l16, out, lse}},
      {ATTN_ERR_INVALID_ARG, "out: overlaps input out_a", ctx, {o_p, la, ob, lb, o_p1, lse}},
      {ATTN_ERR_INVALID_ARG, "lse: overlaps output out", ctx, {oa, la, ob, lb, o_p, l_on_o}},
      {ATTN_ERR_INVALID_ARG, "out: overlaps input lse_a", ctx, {oa, l_on_o, ob, lb, o_p, lse}},
  };
  for (size_t i = 0; i < sizeof t / sizeof t[0]; i++) {
    char what[32];
    snprintf(what, sizeof what, "attn_merge case %zu", i);
    expect_(what, __LINE__, attn_merge(t[i].c, t[i].t[0], t[i].t[1], t[i].t[2], t[i].t[3],
                                       t[i].t[4], t[i].t[5]),
            t[i].st, "attn_merge", t[i].arg);
    assert_sentinel(out);
    assert_sentinel(lse);
  }
  OK(attn_merge(ctx, oa, la, ob, lb, out, lse)); /* still usable */
  attn_close(other);
}

/* ---- MHA ----------------------------------------------------------------------------- */

/* E 8, Hq 2, Hkv 1, D 4, biases: every weight has its own shape. */
enum { E = 8, H = 2, HK = 1, HD = 4 };

typedef struct mha_w {
  attn_tensor *wq, *wk, *wv, *wo, *bq, *bk, *bv, *bo, *in_proj, *in_bias;
} mha_w;

static void mha_weights_make(attn_context *ctx, mha_w *m) {
  m->wq = make_small(ctx, 2, H * HD, E, 1, 1);
  m->wk = make_small(ctx, 2, HK * HD, E, 1, 1);
  m->wv = make_small(ctx, 2, HK * HD, E, 1, 1);
  m->wo = make_small(ctx, 2, E, H * HD, 1, 1);
  m->bq = make_small(ctx, 1, H * HD, 1, 1, 1);
  m->bk = make_small(ctx, 1, HK * HD, 1, 1, 1);
  m->bv = make_small(ctx, 1, HK * HD, 1, 1, 1);
  m->bo = make_small(ctx, 1, E, 1, 1, 1);
  m->in_proj = make_small(ctx, 2, (H + 2 * HK) * HD, E, 1, 1);
  m->in_bias = make_small(ctx, 1, (H + 2 * HK) * HD, 1, 1, 1);
}

static attn_mha_weights split_w(const mha_w *m) {
  attn_mha_weights w = {.wq = m->wq, .wk = m->wk, .wv = m->wv, .wo = m->wo,
                        .bq = m->bq, .bk = m->bk, .bv = m->bv, .bo = m->bo};
  return w;
}

static attn_mha_weights packed_w(const mha_w *m) {
  attn_mha_weights w = {.in_proj = m->in_proj, .in_bias = m->in_bias, .wo = m->wo, .bo = m->bo};
  return w;
}

static void test_mha_create(void **state) {
  attn_context *ctx = *state, *other = NULL;
  OK(attn_open("ref", &other));
  mha_w m, fm;
  mha_weights_make(ctx, &m);
  mha_weights_make(other, &fm);
  const attn_mha_desc good = {.struct_size = sizeof(attn_mha_desc), .d_model = E, .n_heads = H, .n_kv_heads = HK, .bias = true,
                              .max_batch = 2, .max_seq = 4};
  attn_mha *g = NULL;
  attn_mha_weights gw = split_w(&m), pw = packed_w(&m);
  OK(attn_mha_create(ctx, &good, &gw, &g));
  attn_mha_free(g);
  {
    /* dtypes and struct_size of the desc. */
    attn_mha_desc bd = good;
    bd.dtype = (attn_dtype)5;
    g = POISON;
    EXPECT(attn_mha_create(ctx, &bd, &gw, &g), ATTN_ERR_INVALID_ARG, "attn_mha_create",
           "desc.dtype: 5");
    assert_null(g);
    bd = good;
    bd.kv_dtype = (attn_dtype)-2;
    EXPECT(attn_mha_create(ctx, &bd, &gw, &g), ATTN_ERR_INVALID_ARG, "attn_mha_create",
           "desc.kv_dtype: -2");
    bd = good;
    bd.struct_size = 3;
    EXPECT(attn_mha_create(ctx, &bd, &gw, &g), ATTN_ERR_INVALID_ARG, "attn_mha_create",
           "desc.struct_size: 3");
    assert_null(g);
  }
  OK(attn_mha_create(ctx, &good, &pw, &g));
  attn_mha_free(g);
  attn_device_info info;
  OK(attn_context_info(ctx, &info));

  /* Non-contiguous rows: wq seen through a transposed view of a square one. */
  attn_tensor *sq = make_small(ctx, 2, E, E, 1, 1);
  const int64_t ts[2] = {E, E}, tst[2] = {1, E};
  attn_tensor *wq_t = view(sq, 0, 2, ts, tst);
  attn_tensor *wq3 = make_small(ctx, 3, 1, H * HD, E, 1);
  attn_tensor *in_bias_bad = make_small(ctx, 1, (H + 2 * HK) * HD + 1, 1, 1, 1);

  struct {
    attn_status st;
    const char *arg;
    attn_mha_desc d;
    attn_mha_weights w;
  } t[48];
  int n = 0;
#define CASE(st_, arg_, base_, ...)                                               \
  do {                                                                            \
    t[n].st = (st_), t[n].arg = (arg_), t[n].d = good, t[n].w = (base_);          \
    attn_mha_desc *Dd = &t[n].d;                                                  \
    attn_mha_weights *W = &t[n].w;                                                \
    (void)Dd, (void)W;                                                            \
    __VA_ARGS__;                                                                  \
    n++;                                                                          \
  } while (0)
  /* Descriptor fields test_mha.c does not try. */
  CASE(ATTN_ERR_INVALID_ARG, "desc.d_model: -3", gw, Dd->d_model = -3);
  CASE(ATTN_ERR_INVALID_ARG, "desc.d_kv", gw, Dd->d_kv = INT64_MIN);
  CASE(ATTN_ERR_INVALID_ARG, "desc.n_heads: -1", gw, Dd->n_heads = -1);
  CASE(ATTN_ERR_INVALID_ARG, "desc.n_kv_heads: n_heads 2 is not a multiple of n_kv_heads 4", gw,
       Dd->n_kv_heads = 4);
  CASE(ATTN_ERR_INVALID_ARG, "desc.head_dim: -1", gw, Dd->head_dim = -1);
  CASE(ATTN_ERR_INVALID_ARG, "desc.max_batch: -1", gw, Dd->max_batch = -1);
  CASE(ATTN_ERR_INVALID_ARG, "desc.max_seq: 0", gw, Dd->max_seq = 0);
  /* Plans whose buffers overflow, blamed on the desc fields. */
  CASE(ATTN_ERR_OVERFLOW, "desc.max_seq", gw, Dd->max_seq = INT64_MAX / 4);
  CASE(ATTN_ERR_OVERFLOW, "desc.max_batch", gw, Dd->max_batch = INT64_MAX / 4);
  CASE(ATTN_ERR_OVERFLOW, "desc.max_kv_seq", gw, Dd->max_kv_seq = INT64_MAX / 8);
  /* Plans that fit size_t but no device (only when the device says its limit). */
  if (info.max_alloc) {
    CASE(ATTN_ERR_DEVICE_MEMORY, "desc.max_batch x desc.max_seq", gw,
         Dd->max_seq = INT64_C(1) << 50);
    CASE(ATTN_ERR_DEVICE_MEMORY, "desc.max_kv_seq", gw, Dd->max_kv_seq = INT64_C(1) << 50);
  }
  /* Weights: each NULL, each foreign, each form mixed. */
  CASE(ATTN_ERR_INVALID_ARG, "wk: NULL", gw, W->wk = NULL);
  CASE(ATTN_ERR_INVALID_ARG, "wv: NULL", gw, W->wv = NULL);
  CASE(ATTN_ERR_INVALID_ARG, "bk: NULL but desc.bias is true", gw, W->bk = NULL);
  CASE(ATTN_ERR_INVALID_ARG, "bv: NULL but desc.bias is true", gw, W->bv = NULL);
  CASE(ATTN_ERR_INVALID_ARG, "bo: NULL but desc.bias is true", gw, W->bo = NULL);
  CASE(ATTN_ERR_INVALID_ARG, "bo: NULL but desc.bias is true", pw, W->bo = NULL);
  CASE(ATTN_ERR_INVALID_ARG, "wo: NULL", pw, W->wo = NULL);
  CASE(ATTN_ERR_INVALID_ARG, "bq: given but desc.bias is false", gw, Dd->bias = false,
       W->bk = W->bv = W->bo = NULL);
  CASE(ATTN_ERR_INVALID_ARG, "in_bias: given but desc.bias is false", pw, Dd->bias = false,
       W->bo = NULL);
  CASE(ATTN_ERR_INVALID_ARG, "wv: given together with in_proj", pw, W->wv = m.wv);
  CASE(ATTN_ERR_INVALID_ARG, "bk: given together with in_proj (use in_bias)", pw, W->bk = m.bk);
  CASE(ATTN_ERR_INVALID_ARG, "wq: tensor belongs to another context", gw, W->wq = fm.wq);
  CASE(ATTN_ERR_INVALID_ARG, "wk: tensor belongs to another context", gw, W->wk = fm.wk);
  CASE(ATTN_ERR_INVALID_ARG, "wv: tensor belongs to another context", gw, W->wv = fm.wv);
  CASE(ATTN_ERR_INVALID_ARG, "bq: tensor belongs to another context", gw, W->bq = fm.bq);
  CASE(ATTN_ERR_INVALID_ARG, "bk: tensor belongs to another context", gw, W->bk = fm.bk);
  CASE(ATTN_ERR_INVALID_ARG, "bv: tensor belongs to another context", gw, W->bv = fm.bv);
  CASE(ATTN_ERR_INVALID_ARG, "bo: tensor belongs to another context", gw, W->bo = fm.bo);
  CASE(ATTN_ERR_INVALID_ARG, "in_proj: tensor belongs to another context", pw,
       W->in_proj = fm.in_proj);
  CASE(ATTN_ERR_INVALID_ARG, "in_bias: tensor belongs to another context", pw,
       W->in_bias = fm.in_bias);
  /* Weight shapes and layouts. */
  CASE(ATTN_ERR_SHAPE, "wq: rank 3 != 2", gw, W->wq = wq3);
  CASE(ATTN_ERR_INVALID_ARG, "wq: rows must be contiguous", gw, W->wq = wq_t);
  CASE(ATTN_ERR_SHAPE, "bq: shape [4] != [8]", gw, W->bq = m.bk);
  CASE(ATTN_ERR_SHAPE, "bv: shape [8] != [4]", gw, W->bv = m.bq);
  CASE(ATTN_ERR_SHAPE, "bo: shape [4] != [8]", gw, W->bo = m.bk);
  CASE(ATTN_ERR_SHAPE, "wv: shape [8,8] != [4,8]", gw, W->wv = m.wq);
  CASE(ATTN_ERR_SHAPE, "in_proj: rank 1 != 2", pw, W->in_proj = m.in_bias);
  CASE(ATTN_ERR_SHAPE, "in_bias: shape [17] != [16]", pw, W->in_bias = in_bias_bad);
#undef CASE
  /* NULL arguments (test_mha.c checks the statuses) leave no stale handle. */
  g = POISON;
  EXPECT(attn_mha_create(NULL, &good, &gw, &g), ATTN_ERR_INVALID_ARG, "attn_mha_create", "ctx");
  assert_null(g);
  g = POISON;
  EXPECT(attn_mha_create(ctx, NULL, &gw, &g), ATTN_ERR_INVALID_ARG, "attn_mha_create", "desc");
  assert_null(g);
  g = POISON;
  EXPECT(attn_mha_create(ctx, &good, NULL, &g), ATTN_ERR_INVALID_ARG, "attn_mha_create", "w");
  assert_null(g);
  for (int i = 0; i < n; i++) {
    char what[40];
    snprintf(what, sizeof what, "attn_mha_create case %d", i);
    g = POISON;
    expect_(what, __LINE__, attn_mha_create(ctx, &t[i].d, &t[i].w, &g), t[i].st,
            "attn_mha_create", t[i].arg);
    assert_null(g);
  }
  /* Nothing was changed and the context still works. */
  OK(attn_mha_create(ctx, &good, &gw, &g));
  attn_mha_free(g);
  attn_close(other);
}

/* A graph and a cross-attention graph with tensors for the runs. */
static void test_mha_run(void **state) {
  attn_context *ctx = *state, *other = NULL;
  OK(attn_open("ref", &other));
  mha_w m;
  mha_weights_make(ctx, &m);
  attn_mha_weights gw = split_w(&m);
  const attn_mha_desc d = {.struct_size = sizeof(attn_mha_desc), .d_model = E, .n_heads = H, .n_kv_heads = HK, .bias = true,
                           .max_batch = 2, .max_seq = 4};
  attn_mha_desc dc = d;
  dc.d_kv = 6;
  dc.max_kv_seq = 5;
  attn_tensor *wkc = make_small(ctx, 2, HK * HD, 6, 1, 1), *wvc = make_small(ctx, 2, HK * HD, 6, 1, 1);
  attn_mha_weights cw = gw;
  cw.wk = wkc, cw.wv = wvc;
  attn_mha *g = NULL, *gc = NULL;
  OK(attn_mha_create(ctx, &d, &gw, &g));
  OK(attn_mha_create(ctx, &dc, &cw, &gc));

  attn_tensor *x = make_small(ctx, 3, 2, 3, E, 1), *out = make(ctx, 3, 2, 3, E, 1);
  attn_tensor *kvx = make_small(ctx, 3, 2, 5, 6, 1);
  attn_tensor *fx = make_small(other, 3, 2, 3, E, 1), *fout = make(other, 3, 2, 3, E, 1),
              *fkv = make_small(other, 3, 2, 5, 6, 1);
  attn_tensor *x2 = make_small(ctx, 2, 3, E, 1, 1), *kv2 = make_small(ctx, 2, 5, 6, 1, 1),
              *kv_s6 = make_small(ctx, 3, 2, 6, 6, 1);
  /* x with non-contiguous rows: every other element of a wider buffer. */
  attn_tensor *wide = make_small(ctx, 1, 2 * 3 * E * 2, 1, 1, 1);
  const int64_t xs[3] = {2, 3, E}, xst_gap[3] = {3 * E * 2, E * 2, 2}, xst_b0[3] = {0, E, 1},
                xst[3] = {3 * E, E, 1};
  attn_tensor *x_gap = view(wide, 0, 3, xs, xst_gap);
  attn_tensor *out_store = make(ctx, 1, 256, 1, 1, 1);
  attn_tensor *out_b0 = view(out_store, 0, 3, xs, xst_b0);
  attn_tensor *out_on_wo = view(m.wo, 0, 3, (const int64_t[]){1, 4, E}, xst);
  attn_tensor *x1 = make_small(ctx, 3, 1, 4, E, 1), *kv36 = make_small(ctx, 3, 2, 3, 6, 1);
  /* out over kv_x: kv_x a view of out's storage. */
  const int64_t kvs[3] = {2, 5, 6}, kvst[3] = {30, 6, 1};
  attn_tensor *out_c = view(out_store, 100, 3, xs, xst);
  attn_tensor *kv_on_out = view(out_store, 120, 3, kvs, kvst);

  const char *fn = "attn_mha_run";
  EXPECT(attn_mha_run(g, fx, NULL, out), ATTN_ERR_INVALID_ARG, fn,
         "x: tensor belongs to another context");
  EXPECT(attn_mha_run(g, x, NULL, fout), ATTN_ERR_INVALID_ARG, fn,
         "out: tensor belongs to another context");
  EXPECT(attn_mha_run(gc, x, fkv, out), ATTN_ERR_INVALID_ARG, fn,
         "kv_x: tensor belongs to another context");
  EXPECT(attn_mha_run(g, x2, NULL, out), ATTN_ERR_SHAPE, fn, "x: rank 2 != 3");
  EXPECT(attn_mha_run(gc, x, kv2, out), ATTN_ERR_SHAPE, fn, "kv_x: rank 2 != 3");
  EXPECT(attn_mha_run(gc, x, kv_s6, out), ATTN_ERR_SHAPE, fn,
         "kv_x: seq 6 > the plan's max_kv_seq 5");
  EXPECT(attn_mha_run(g, x_gap, NULL, out), ATTN_ERR_INVALID_ARG, fn,
         "x: rows must be contiguous");
  EXPECT(attn_mha_run(g, x, NULL, out_b0), ATTN_ERR_INVALID_ARG, fn, "out: stride 0 is 0");
  EXPECT(attn_mha_run(g, x1, NULL, out_on_wo), ATTN_ERR_INVALID_ARG, fn,
         "out: overlaps a weight tensor");
  EXPECT(attn_mha_run(gc, x, kv_on_out, out_c), ATTN_ERR_INVALID_ARG, fn, "out: overlaps kv_x");
  EXPECT(attn_mha_run(g, x, kv36, out), ATTN_ERR_SHAPE, fn, "kv_x: shape [2,3,6] != [2,3,8]");
  assert_sentinel(out);
  assert_sentinel(out_store);

  /* Profiling: a NULL graph or output changes nothing. */
  attn_mha_profile p;
  memset(&p, 0x5a, sizeof p);
  attn_mha_profile before = p;
  EXPECT(attn_mha_set_profiling(NULL, false), ATTN_ERR_INVALID_ARG, "attn_mha_set_profiling",
         "graph");
  EXPECT(attn_mha_profile_get(NULL, &p), ATTN_ERR_INVALID_ARG, "attn_mha_profile_get", "graph");
  assert_memory_equal(&p, &before, sizeof p);

  /* The graphs still run. */
  OK(attn_mha_run(g, x, NULL, out));
  OK(attn_mha_run(gc, x, kvx, out));
  OK(attn_mha_profile_get(g, &p));
  attn_close(other);
}

static void test_kv_cache(void **state) {
  attn_context *ctx = *state, *other = NULL;
  OK(attn_open("ref", &other));
  mha_w m;
  mha_weights_make(ctx, &m);
  attn_mha_weights gw = split_w(&m);
  const attn_mha_desc d = {.struct_size = sizeof(attn_mha_desc), .d_model = E, .n_heads = H, .n_kv_heads = HK, .bias = true,
                           .causal = true, .max_batch = 2, .max_seq = 4};
  attn_mha *g = NULL;
  OK(attn_mha_create(ctx, &d, &gw, &g));
  attn_device_info info;
  OK(attn_context_info(ctx, &info));

  const char *fn = "attn_kv_cache_create";
  struct {
    int64_t batch, cap;
    attn_status st;
    const char *arg;
  } bad[] = {
      {0, 4, ATTN_ERR_INVALID_ARG, "batch: 0"},
      {-1, 4, ATTN_ERR_INVALID_ARG, "batch: -1"},
      {INT64_MIN, 4, ATTN_ERR_INVALID_ARG, "batch"},
      {1, -1, ATTN_ERR_INVALID_ARG, "capacity: -1"},
      {1, INT64_MIN, ATTN_ERR_INVALID_ARG, "capacity"},
      {2, INT64_MAX, ATTN_ERR_OVERFLOW, "capacity"},
      /* Fits size_t, not the device (skipped below when the limit is unknown). */
      {2, INT64_C(1) << 50, ATTN_ERR_DEVICE_MEMORY, "batch x capacity"},
  };
  attn_kv_cache *nc = POISON;
  EXPECT(attn_kv_cache_create(NULL, 1, 4, &nc), ATTN_ERR_INVALID_ARG, fn, "graph");
  assert_null(nc);
  nc = POISON;
  EXPECT(attn_kv_cache_create_typed(NULL, 1, 4, ATTN_BF16, &nc), ATTN_ERR_INVALID_ARG,
         "attn_kv_cache_create_typed", "graph");
  assert_null(nc);
  nc = POISON;
  EXPECT(attn_kv_cache_create_typed(g, 1, 4, (attn_dtype)9, &nc), ATTN_ERR_INVALID_ARG,
         "attn_kv_cache_create_typed", "dtype: 9");
  assert_null(nc);
  nc = POISON;
  EXPECT(attn_kv_cache_create_typed(g, 0, 4, ATTN_F16, &nc), ATTN_ERR_INVALID_ARG,
         "attn_kv_cache_create_typed", "batch: 0");
  assert_null(nc);
  EXPECT(attn_kv_cache_create_typed(g, 1, 4, ATTN_F16, NULL), ATTN_ERR_INVALID_ARG,
         "attn_kv_cache_create_typed", "cache: NULL");
  for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
    if (bad[i].st == ATTN_ERR_DEVICE_MEMORY && !info.max_alloc) continue;
    attn_kv_cache *c = POISON;
    EXPECT(attn_kv_cache_create(g, bad[i].batch, bad[i].cap, &c), bad[i].st, fn, bad[i].arg);
    assert_null(c);
  }

  attn_kv_cache *c = NULL;
  OK(attn_kv_cache_create(g, 1, 4, &c));
  attn_tensor *x3 = make_small(ctx, 3, 1, 3, E, 1), *x2 = make_small(ctx, 3, 1, 2, E, 1),
              *x1 = make_small(ctx, 3, 1, 1, E, 1), *x5 = make_small(ctx, 3, 1, 5, E, 1);
  attn_tensor *o3 = make(ctx, 3, 1, 3, E, 1), *o2 = make(ctx, 3, 1, 2, E, 1),
              *o1 = make(ctx, 3, 1, 1, E, 1), *o5 = make(ctx, 3, 1, 5, E, 1);
  attn_tensor *fx = make_small(other, 3, 1, 1, E, 1), *fo = make(other, 3, 1, 1, E, 1);
  fn = "attn_mha_run_cached";
  EXPECT(attn_mha_run_cached(NULL, c, x1, o1), ATTN_ERR_INVALID_ARG, fn, "graph: NULL");
  EXPECT(attn_mha_run_cached(g, c, NULL, o1), ATTN_ERR_INVALID_ARG, fn, "x: NULL");
  EXPECT(attn_mha_run_cached(g, c, x1, NULL), ATTN_ERR_INVALID_ARG, fn, "out: NULL");
  EXPECT(attn_mha_run_cached(g, c, fx, o1), ATTN_ERR_INVALID_ARG, fn,
         "x: tensor belongs to another context");
  EXPECT(attn_mha_run_cached(g, c, x1, fo), ATTN_ERR_INVALID_ARG, fn,
         "out: tensor belongs to another context");
  EXPECT(attn_mha_run_cached(g, c, x1, (attn_tensor *)x1), ATTN_ERR_INVALID_ARG, fn,
         "out: overlaps x");
  EXPECT(attn_mha_run_cached(g, c, x5, o5), ATTN_ERR_SHAPE, fn, "x: seq 5 > the plan's max_seq 4");
  EXPECT(attn_mha_run_cached(g, c, x1, o2), ATTN_ERR_SHAPE, fn, "out: shape [1,2,8] != [1,1,8]");
  assert_int_equal(attn_kv_cache_length(c), 0);

  /* Capacity: 3 fit, 2 more do not (and change nothing), 1 fits, then none. */
  OK(attn_mha_run_cached(g, c, x3, o3));
  assert_int_equal(attn_kv_cache_length(c), 3);
  EXPECT(attn_mha_run_cached(g, c, x2, o2), ATTN_ERR_CAPACITY, fn,
         "x: 2 new tokens + 3 cached > capacity 4");
  assert_int_equal(attn_kv_cache_length(c), 3);
  assert_sentinel(o2);
  OK(attn_mha_run_cached(g, c, x1, o1));
  assert_int_equal(attn_kv_cache_length(c), 4);
  EXPECT(attn_mha_run_cached(g, c, x1, o2 /* and a wrong out: capacity is checked after */),
         ATTN_ERR_SHAPE, fn, "out: shape");
  EXPECT(attn_mha_run_cached(g, c, x1, o1), ATTN_ERR_CAPACITY, fn, "capacity 4");
  assert_int_equal(attn_kv_cache_length(c), 4);
  assert_int_equal(attn_kv_cache_capacity(c), 4);
  attn_kv_cache_reset(c);
  assert_int_equal(attn_kv_cache_length(c), 0);
  OK(attn_mha_run_cached(g, c, x2, o2));
  assert_int_equal(attn_kv_cache_length(c), 2);
  attn_kv_cache_free(c);
  attn_close(other);
}

/* ---- the count per function, for the report ----------------------------------------- */

static int print_counts(void **state) {
  (void)state;
  int total = 0;
  for (int i = 0; i < MAX_FNS && g_count[i].fn; i++) {
    printf("errexit: %-24s %3d invalid-argument cases\n", g_count[i].fn, g_count[i].n);
    total += g_count[i].n;
  }
  printf("errexit: %-24s %3d\n", "total", total);
  return 0;
}

int main(void) {
  /* The suite needs the ref module; without it there is nothing to run on. */
  attn_context *probe = NULL;
  if (attn_open("ref", &probe) != ATTN_OK) {
    fprintf(stderr, "test_errexit: skipped: %s\n", attn_last_error());
    return 77;
  }
  attn_close(probe);
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_cannot_fail),
      cmocka_unit_test(test_open),
      cmocka_unit_test_setup_teardown(test_context, setup, teardown),
      cmocka_unit_test_setup_teardown(test_tensor_create, setup, teardown),
      cmocka_unit_test_setup_teardown(test_tensor_view, setup, teardown),
      cmocka_unit_test_setup_teardown(test_tensor_io, setup, teardown),
      cmocka_unit_test_setup_teardown(test_sdpa, setup, teardown),
      cmocka_unit_test_setup_teardown(test_merge, setup, teardown),
      cmocka_unit_test_setup_teardown(test_mha_create, setup, teardown),
      cmocka_unit_test_setup_teardown(test_mha_run, setup, teardown),
      cmocka_unit_test_setup_teardown(test_kv_cache, setup, teardown),
  };
  return cmocka_run_group_tests_name("errexit", tests, NULL, print_counts) ? 1 : 0;
}
