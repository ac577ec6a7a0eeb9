/* Device memory, issue 13 items 2 and 3, on every device:
 *  - the per-device account: tensors that together exceed the device's
 *    global memory are refused with ATTN_ERR_DEVICE_MEMORY, naming the
 *    request, what is in use and the global memory; the context stays
 *    usable (a freed tensor's bytes can be allocated again, an SDPA runs);
 *  - two contexts on one device share that account;
 *  - a call's own scratch counts too (clblast's f32 copy of a bf16 output);
 *  - under an address-space limit (RLIMIT_AS, in a forked child) an SDPA whose
 *    weights output does not fit fails with a clean status, never a signal
 *    (POCL allocated lazily and aborted on its assertion `p->mem_ptr != NULL`
 *    inside clEnqueueNDRangeKernel).
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
#include <sys/resource.h>
#include <sys/wait.h>
#include <unistd.h>

#include "attn.h"
#include "testutil.h"

#if defined(__SANITIZE_ADDRESS__) || defined(__SANITIZE_THREAD__)
#define TM_SANITIZED 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer) || __has_feature(thread_sanitizer)
#define TM_SANITIZED 1
#endif
#endif

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

/* A call's own scratch counts too: on clblast a bf16 weights output is
 * computed in an f32 scratch twice its size. With the tensors leaving room
 * for the output but not for that scratch, the call is refused before it
 * runs, and the context still works. (clblast only: the other backends need
 * no such scratch, and would run this 32768 x 32768 SDPA.) */
static void test_scratch_counts(void **state) {
  attn_context *ctx = *state;
  if (strncmp(tu_device, "clblast", 7) != 0) skip();
  attn_device_info info;
  assert_int_equal(attn_context_info(ctx, &info), ATTN_OK);
  const int64_t S = 32768, W = S * S; /* weights: 2 GiB as bf16, 4 GiB of f32 scratch */
  if (!info.global_mem || !info.max_alloc || (uint64_t)W * 4 > info.max_alloc ||
      info.global_mem < (uint64_t)W * 6)
    skip();
  /* Fill all but 4W bytes: the bf16 weights (2W) fit, their scratch (4W) not. */
  uint64_t fill = info.global_mem - (uint64_t)W * 4;
  attn_tensor *t[MAX_CHUNKS] = {0};
  int n = 0;
  while (fill >= ((uint64_t)1 << 20) && n < MAX_CHUNKS) {
    uint64_t b = fill < info.max_alloc ? fill : info.max_alloc;
    b &= ~(((uint64_t)1 << 20) - 1);
    assert_int_equal(alloc_chunk(ctx, b, &t[n++]), ATTN_OK);
    fill -= b;
  }
  const int64_t qs[4] = {1, 1, S, 8}, ws[4] = {1, 1, S, S};
  attn_tensor *q, *o, *w;
  assert_int_equal(attn_tensor_create(ctx, 4, qs, &q), ATTN_OK);
  assert_int_equal(attn_tensor_create(ctx, 4, qs, &o), ATTN_OK);
  assert_int_equal(attn_tensor_create_typed(ctx, ATTN_BF16, 4, ws, &w), ATTN_OK);
  attn_sdpa_args a = ATTN_SDPA_ARGS_INIT;
  a.q = a.k = a.v = q, a.out = o, a.weights = w;
  attn_status s = attn_sdpa(ctx, &a);
  printf("%s\n", attn_last_error());
  assert_int_equal(s, ATTN_ERR_DEVICE_MEMORY);
  assert_non_null(strstr(attn_last_error(), "attn_sdpa: "));
  assert_non_null(strstr(attn_last_error(), "global memory"));
  attn_tensor_free(q);
  attn_tensor_free(o);
  attn_tensor_free(w);
  for (int i = 0; i < n; i++) attn_tensor_free(t[i]);
  small_sdpa_ok(ctx);
}

/* Address space in use now (bytes), from /proc/self/statm. */
static uint64_t vm_size(void) {
  FILE *f = fopen("/proc/self/statm", "r");
  unsigned long long pages = 0;
  if (f) {
    if (fscanf(f, "%llu", &pages) != 1) pages = 0;
    fclose(f);
  }
  return (uint64_t)pages * (uint64_t)sysconf(_SC_PAGESIZE);
}

/* The child: warm the device up, limit its address space to 1 GiB more than
 * it uses, then ask for an SDPA with a 2 GiB weights output. Exit 0: refused
 * cleanly (at the allocation or the call); 3: it succeeded (the limit did not
 * bite); 4: a wrong status. */
static int rlimit_child(const char *sel) {
  attn_context *ctx;
  if (attn_open(sel, &ctx) != ATTN_OK) return 5;
  small_sdpa_ok(ctx);
  const uint64_t limit = vm_size() + ((uint64_t)1 << 30);
  struct rlimit rl = {limit, limit};
  if (setrlimit(RLIMIT_AS, &rl) != 0) return 6;
  enum { H = 2, S = 16384, D = 8 };
  const int64_t qs[4] = {1, H, S, D}, ws[4] = {1, H, S, S};
  attn_tensor *q = NULL, *o = NULL, *w = NULL;
  attn_status s = attn_tensor_create(ctx, 4, qs, &q);
  if (!s) s = attn_tensor_create(ctx, 4, qs, &o);
  if (!s) s = attn_tensor_create(ctx, 4, ws, &w);
  if (!s) {
    attn_sdpa_args a = ATTN_SDPA_ARGS_INIT;
    a.q = a.k = a.v = q, a.out = o, a.weights = w;
    s = attn_sdpa(ctx, &a);
    if (!s) s = attn_synchronize(ctx);
  }
  printf("%s under RLIMIT_AS %llu: %d (%s) %s\n", sel, (unsigned long long)limit, (int)s,
         attn_status_str(s), attn_last_error());
  fflush(stdout);
  attn_tensor_free(q);
  attn_tensor_free(o);
  attn_tensor_free(w);
  attn_close(ctx);
  if (s == ATTN_OK) return 3;
  return s == ATTN_ERR_DEVICE_MEMORY || s == ATTN_ERR_NOMEM ? 0 : 4;
}

static void test_address_space_limit(void **state) {
  (void)state;
#ifdef TM_SANITIZED
  printf("sanitizer build: its shadow memory needs an unlimited address space; skipped\n");
  skip();
#endif
  /* A fresh process, not a bare fork: POCL's worker threads, started by
   * the earlier tests, would not exist in a forked child. */
  fflush(stdout);
  pid_t pid = fork();
  assert_true(pid >= 0);
  if (pid == 0) {
    alarm(120); /* a hang (POCL blocked on memory it cannot get) is a failure too */
    execl("/proc/self/exe", "test_memory", "--rlimit-child", tu_device, (char *)NULL);
    _exit(127);
  }
  int st = 0;
  assert_int_equal(waitpid(pid, &st, 0), pid);
  if (WIFSIGNALED(st)) fail_msg("%s: killed by signal %d under RLIMIT_AS", tu_device, WTERMSIG(st));
  assert_true(WIFEXITED(st));
  if (WEXITSTATUS(st) != 0)
    fail_msg("%s: child exit %d (3: accepted, 4: wrong status)", tu_device, WEXITSTATUS(st));
}

int main(int argc, char **argv) {
  if (argc == 3 && strcmp(argv[1], "--rlimit-child") == 0) return rlimit_child(argv[2]);
  const struct CMUnitTest tests[] = {
      cmocka_unit_test_setup_teardown(test_oversubscription, tu_open_device, tu_close_device),
      cmocka_unit_test_setup_teardown(test_shared_account, tu_open_device, tu_close_device),
      cmocka_unit_test_setup_teardown(test_scratch_counts, tu_open_device, tu_close_device),
      cmocka_unit_test(test_address_space_limit),
  };
  return tu_run_per_device("memory", tests);
}
