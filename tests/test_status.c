/* Status strings and error messages: every status has its own description,
 * failing calls name the function and the argument, and the message is
 * per thread. Contexts come from the tp_good test plugin, so this suite
 * does not depend on any real backend. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>
#include <pthread.h>

#include "internal.h"

static const attn_status all_status[] = {
    ATTN_OK,
    ATTN_ERR_INVALID_ARG,
    ATTN_ERR_SHAPE,
    ATTN_ERR_OVERFLOW,
    ATTN_ERR_NOMEM,
    ATTN_ERR_DEVICE_MEMORY,
    ATTN_ERR_NO_DEVICE,
    ATTN_ERR_SELECTOR,
    ATTN_ERR_PLUGIN,
    ATTN_ERR_UNSUPPORTED,
    ATTN_ERR_BACKEND,
    ATTN_ERR_BUILD,
    ATTN_ERR_IO,
    ATTN_ERR_FORMAT,
    ATTN_ERR_CAPACITY,
};
#define NSTATUS (sizeof all_status / sizeof all_status[0])

static void test_status_strings(void **state) {
  (void)state;
  /* The enum is dense from 0 down to ATTN_ERR_CAPACITY: the table above
   * covers every value. */
  assert_int_equal((int)NSTATUS, 1 - (int)ATTN_ERR_CAPACITY);
  const char *unknown = attn_status_str((attn_status)-1000);
  assert_non_null(unknown);
  for (size_t i = 0; i < NSTATUS; i++) {
    const char *s = attn_status_str(all_status[i]);
    assert_non_null(s);
    assert_true(strlen(s) > 0);
    if (strcmp(s, unknown) == 0) fail_msg("status %d has the unknown string \"%s\"", all_status[i], s);
    for (size_t j = 0; j < i; j++)
      if (strcmp(s, attn_status_str(all_status[j])) == 0)
        fail_msg("statuses %d and %d share \"%s\"", all_status[i], all_status[j], s);
  }
  assert_true(strlen(unknown) > 0);
  assert_string_equal(attn_status_str((attn_status)1), unknown);
  assert_string_equal(attn_status_str((attn_status)(ATTN_ERR_CAPACITY - 1)), unknown);
}

static void assert_error_starts(attn_status got, attn_status want, const char *prefix) {
  if (got != want) fail_msg("status %d, want %d; message: %s", got, want, attn_last_error());
  const char *msg = attn_last_error();
  if (strncmp(msg, prefix, strlen(prefix)) != 0)
    fail_msg("message \"%s\" does not start with \"%s\"", msg, prefix);
}

static void test_messages_name_fn_and_arg(void **state) {
  (void)state;
  attn_context *ctx = (attn_context *)&ctx; /* must be reset to NULL on failure */
  assert_error_starts(attn_open("tp_good", NULL), ATTN_ERR_INVALID_ARG, "attn_open: ctx");
  assert_error_starts(attn_open("", &ctx), ATTN_ERR_SELECTOR, "attn_open: selector \"\"");
  assert_null(ctx);
  assert_error_starts(attn_open("tp_good,,ref", &ctx), ATTN_ERR_SELECTOR,
                      "attn_open: selector \"tp_good,,ref\"");
  assert_null(ctx);

  attn_device_info info;
  assert_error_starts(attn_context_info(NULL, &info), ATTN_ERR_INVALID_ARG,
                      "attn_context_info: ctx");
  assert_error_starts(attn_synchronize(NULL), ATTN_ERR_INVALID_ARG, "attn_synchronize: ctx");
  assert_error_starts(attn_list_devices(NULL), ATTN_ERR_INVALID_ARG, "attn_list_devices: list");

  /* NULL selector is valid: it means $ATTN_DEVICE (set in main). */
  ctx = NULL;
  attn_status st = attn_open(NULL, &ctx);
  if (st != ATTN_OK) fail_msg("attn_open(NULL): %s", attn_last_error());
  assert_non_null(ctx);
  /* A successful call leaves no message. */
  assert_string_equal(attn_last_error(), "");
  assert_error_starts(attn_context_info(ctx, NULL), ATTN_ERR_INVALID_ARG,
                      "attn_context_info: info");
  assert_int_equal(attn_context_info(ctx, &info), ATTN_OK);
  assert_string_equal(info.backend, "tp_good");
  assert_string_equal(attn_last_error(), "");
  /* The next call clears the previous failure's message. */
  assert_int_equal(attn_synchronize(NULL), ATTN_ERR_INVALID_ARG);
  assert_int_equal(attn_synchronize(ctx), ATTN_OK);
  assert_string_equal(attn_last_error(), "");
  attn_close(ctx);
  attn_close(NULL); /* no-op */
}

/* ---- thread locality ---------------------------------------------------- */

typedef struct {
  pthread_barrier_t *bar;
  char seen_before[256]; /* the thread's message before it fails */
  char seen_after[256];  /* after its own failure, once the main thread failed too */
} thread_arg;

static void *other_thread(void *p) {
  thread_arg *a = p;
  /* The main thread has failed already; this thread must not see it. */
  snprintf(a->seen_before, sizeof a->seen_before, "%s", attn_last_error());
  attn_synchronize(NULL);
  pthread_barrier_wait(a->bar); /* let main fail differently */
  pthread_barrier_wait(a->bar);
  snprintf(a->seen_after, sizeof a->seen_after, "%s", attn_last_error());
  return NULL;
}

static void test_thread_local(void **state) {
  (void)state;
  pthread_barrier_t bar;
  assert_int_equal(pthread_barrier_init(&bar, NULL, 2), 0);
  thread_arg a = {.bar = &bar};
  assert_int_equal(attn_open("tp_good", NULL), ATTN_ERR_INVALID_ARG);
  pthread_t t;
  assert_int_equal(pthread_create(&t, NULL, other_thread, &a), 0);
  pthread_barrier_wait(&bar);
  /* The other thread has failed in attn_synchronize; ours is unchanged. */
  assert_string_equal(attn_last_error(), "attn_open: ctx: is NULL");
  assert_int_equal(attn_list_devices(NULL), ATTN_ERR_INVALID_ARG);
  pthread_barrier_wait(&bar);
  assert_int_equal(pthread_join(t, NULL), 0);
  pthread_barrier_destroy(&bar);

  assert_string_equal(a.seen_before, "");
  assert_string_equal(a.seen_after, "attn_synchronize: ctx: is NULL");
  assert_string_equal(attn_last_error(), "attn_list_devices: list: is NULL");
}

int main(void) {
  /* The registry is scanned once per process: point it at the test plugins
   * before the first libattn call. */
  const char *dir = getenv("ATTN_TEST_PLUGIN_DIR");
  if (!dir || !*dir) {
    fprintf(stderr, "ATTN_TEST_PLUGIN_DIR is not set (run through make check)\n");
    return 1;
  }
  char path[1200];
  snprintf(path, sizeof path, "%s/attn_tp_good.so", dir);
  setenv("ATTN_BACKEND_PATH", path, 1);
  setenv("ATTN_DEVICE", "tp_good:0", 1);

  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_status_strings),
      cmocka_unit_test(test_messages_name_fn_and_arg),
      cmocka_unit_test(test_thread_local),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
