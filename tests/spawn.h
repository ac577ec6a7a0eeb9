/* Running the attn command from the outside, for the suites that check it
 * (tests/test_cli.c, tests/test_bench.c): posix_spawn of the built binary
 * with stdin from /dev/null and stdout, stderr captured through files.
 * cmocka test helpers: include <cmocka.h> first; failures fail the test. */
#ifndef ATTN_TESTS_SPAWN_H
#define ATTN_TESTS_SPAWN_H

#include <stddef.h>

typedef struct spawn_result {
  int status; /* exit code, or -1 if it did not exit normally */
  char out[65536], err[4096]; /* as much of stdout, stderr as fits, NUL-terminated */
} spawn_result;

/* Run bin with args (NULL-terminated, without argv[0]); the captures are
 * dir/stdout.txt and dir/stderr.txt, overwritten by each run. */
void spawn_run(spawn_result *r, const char *bin, const char *dir, const char *const *args);

/* spawn_run with the arguments written inline. */
#define SPAWN_RUN(r, bin, dir, ...)                        \
  do {                                                     \
    const char *const a_[] = {__VA_ARGS__, NULL};          \
    spawn_run((r), (bin), (dir), a_);                      \
  } while (0)

/* The start of a file, NUL-terminated in buf (empty if it cannot be read). */
void spawn_slurp(const char *path, char *buf, size_t cap);

/* Fails the test, showing both captures, unless the exit status is want. */
void spawn_expect_status(const spawn_result *r, int want);

/* Fails the test unless stderr is exactly one line that starts with prefix
 * ("attn: ", "attn: bench: ") and contains substr. */
void spawn_expect_error_line(const spawn_result *r, const char *prefix, const char *substr);

#endif /* ATTN_TESTS_SPAWN_H */
