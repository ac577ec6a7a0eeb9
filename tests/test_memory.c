/* Device memory, issue 13 items 2 and 3, on every device:
 *  - the per-device account: tensors that together exceed the device's
 *    global memory are refused with ATTN_ERR_DEVICE_MEMORY, naming the
 *    request, what is in use and the global memory; the context stays
 *    usable (a freed tensor's bytes can be allocated again, an SDPA runs);
 *  - two contexts on one device share that account.
 * The big tensors are never written, so they cost address space, not memory
 * (every backend allocates them untouched). */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>
#include <math.h>

#include "attn.h"
#include "testutil.h"

/* The size of the chunks that oversubscribe the device: at most its largest
 * allocation, at most half its memory, a whole number of MiB. */
static uint64_t chunk_bytes(const attn_device_info *info) {
  uint64_t c = info->global_mem / 2;
  if (info->max_alloc && info->max_alloc < c) c = info->max_alloc;
  return c & ~(((uint64_t)1 << 20) - 1);
}

static attn_status alloc_chunk(attn_context *ctx, uint64_t bytes, attn_tensor **t) {
  const int64_t shape[1] = {(int64_t)(bytes / sizeof(float))};
  return attn_tensor_create(ctx, 1, shape, t);
}

/* A small SDPA, checked against the double oracle: the context works. */
static void small_sdpa_ok(attn_context *ctx) {
  enum { S = 6, D = 4 };
  uint64_t rng = 7;
  float q[S * D], k[S * D], v[S * D], out[S * D];
  tu_fill_uniform(q, S * D, &rng, -1, 1);
  tu_fill_uniform(k, S * D, &rng, -1, 1);
  tu_fill_uniform(v, S * D, &rng, -1, 1);
  const int64_t shape[4] = {1, 1, S, D};
  attn_tensor *tq, *tk, *tv, *to;
  assert_int_equal(attn_tensor_create(ctx, 4, shape, &tq), ATTN_OK);
  assert_int_equal(attn_tensor_create(ctx, 4, shape, &tk), ATTN_OK);
  assert_int_equal(attn_tensor_create(ctx, 4, shape, &tv), ATTN_OK);
  assert_int_equal(attn_tensor_create(ctx, 4, shape, &to), ATTN_OK);
  assert_int_equal(attn_tensor_write(tq, q, S * D), ATTN_OK);
  assert_int_equal(attn_tensor_write(tk, k, S * D), ATTN_OK);
  assert_int_equal(attn_tensor_write(tv, v, S * D), ATTN_OK);
  attn_sdpa_args a = ATTN_SDPA_ARGS_INIT;
  a.q = tq, a.k = tk, a.v = tv, a.out = to;
  assert_int_equal(attn_sdpa(ctx, &a), ATTN_OK);
  assert_int_equal(attn_tensor_read(to, out, S * D), ATTN_OK);
  tu_sdpa_problem p = {.B = 1, .Hq = 1, .Hkv = 1, .Sq = S, .Skv = S, .D = D, .Dv = D,
                       .q = q, .k = k, .v = v, .scale = 1.0 / sqrt((double)D)};
  double want[S * D];
  tu_sdpa_double(&p, want, NULL, NULL);
  assert_true(tu_check_close("out", out, want, S * D, NULL));
  attn_tensor_free(tq);
  attn_tensor_free(tk);
  attn_tensor_free(tv);
  attn_tensor_free(to);
}

enum { MAX_CHUNKS = 64 };

/* Allocate chunks on ctx until one is refused; returns how many were
 * accepted, the refusal checked. */
static int fill_device(attn_context *ctx, const attn_device_info *info, uint64_t chunk,
                       attn_tensor **t) {
  const int fit = (int)(info->global_mem / chunk);
  int n = 0;
  attn_status s = ATTN_OK;
  for (; n <= fit && n < MAX_CHUNKS; n++)
    if ((s = alloc_chunk(ctx, chunk, &t[n])) != ATTN_OK) break;
  if (s == ATTN_OK)
    fail_msg("%s: %d tensors of %llu bytes accepted on a device of %llu bytes", info->selector,
             n, (unsigned long long)chunk, (unsigned long long)info->global_mem);
  const char *m = attn_last_error();
  printf("%s: %d x %llu bytes accepted, then: %s\n", info->selector, n,
         (unsigned long long)chunk, m);
  assert_int_equal(s, ATTN_ERR_DEVICE_MEMORY);
  assert_null(t[n]);
  assert_non_null(strstr(m, "attn_tensor_create: "));
  assert_non_null(strstr(m, "in use"));
  assert_non_null(strstr(m, "global memory"));
  char req[32];
  snprintf(req, sizeof req, "%llu bytes", (unsigned long long)chunk);
  assert_non_null(strstr(m, req));
  /* Exactly as many as fit: the account, not the driver, said no. */
  assert_int_equal(n, fit);
  return n;
}

static void test_oversubscription(void **state) {
  attn_context *ctx = *state;
  attn_device_info info;
  assert_int_equal(attn_context_info(ctx, &info), ATTN_OK);
  if (!info.global_mem) skip();
  const uint64_t chunk = chunk_bytes(&info);
  attn_tensor *t[MAX_CHUNKS + 1] = {0};
  int n = fill_device(ctx, &info, chunk, t);
  assert_true(n >= 1);
  /* Still usable: a freed tensor's bytes are available again. */
  attn_tensor_free(t[n - 1]);
  assert_int_equal(alloc_chunk(ctx, chunk, &t[n - 1]), ATTN_OK);
  for (int i = 0; i < n; i++) attn_tensor_free(t[i]);
  small_sdpa_ok(ctx);
  /* And everything freed means everything available. */
  memset(t, 0, sizeof t);
  assert_int_equal(fill_device(ctx, &info, chunk, t), n);
  for (int i = 0; i < n; i++) attn_tensor_free(t[i]);
}

static void test_shared_account(void **state) {
  attn_context *a = *state, *b = NULL;
  assert_int_equal(attn_open(tu_device, &b), ATTN_OK);
  attn_device_info info;
  assert_int_equal(attn_context_info(a, &info), ATTN_OK);
  if (!info.global_mem) skip();
  const uint64_t chunk = chunk_bytes(&info);
  attn_tensor *t[MAX_CHUNKS + 1] = {0}, *u = NULL;
  int n = fill_device(a, &info, chunk, t);
  /* The other context on the device sees a's tensors. */
  attn_status s = alloc_chunk(b, chunk, &u);
  printf("second context: %s\n", attn_last_error());
  assert_int_equal(s, ATTN_ERR_DEVICE_MEMORY);
  attn_tensor_free(t[0]);
  assert_int_equal(alloc_chunk(b, chunk, &u), ATTN_OK);
  /* ...and a's tensors released by closing a context count too. */
  assert_int_equal(alloc_chunk(a, chunk, &t[0]), ATTN_ERR_DEVICE_MEMORY);
  attn_close(b); /* frees u */
  assert_int_equal(alloc_chunk(a, chunk, &t[0]), ATTN_OK);
  for (int i = 0; i < n; i++) attn_tensor_free(t[i]);
  small_sdpa_ok(a);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test_setup_teardown(test_oversubscription, tu_open_device, tu_close_device),
      cmocka_unit_test_setup_teardown(test_shared_account, tu_open_device, tu_close_device),
  };
  return tu_run_per_device("memory", tests);
}
