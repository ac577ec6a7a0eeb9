/* The libFuzzer entry points of the harnesses in this directory. Each
 * fuzz_<name>.c is built twice: by tests/ci-hardening.sh with clang
 * -fsanitize=fuzzer,address,undefined (libFuzzer supplies main), and by
 * `make check` with replay.c, which runs it over tests/fuzz/corpus/<name>/
 * (the seeds and every input that once crashed) with any compiler.
 *
 * A harness reports a broken invariant with FUZZ_CHECK, which prints what
 * was expected and aborts: for libFuzzer an abort is a crash to minimise, for
 * the replay it is a failed test. */
#ifndef ATTN_FUZZ_H
#define ATTN_FUZZ_H

#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>

int LLVMFuzzerInitialize(int *argc, char ***argv);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define FUZZ_CHECK(cond, ...)                                                  \
  do {                                                                         \
    if (!(cond)) {                                                             \
      fprintf(stderr, "%s:%d: invariant broken: %s: ", __FILE__, __LINE__, #cond); \
      fprintf(stderr, __VA_ARGS__);                                            \
      fprintf(stderr, "\n");                                                   \
      abort();                                                                 \
    }                                                                          \
  } while (0)

#endif
