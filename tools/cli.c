/* Helpers shared by the attn command's subcommands (see cli.h). */
#include "config.h"

#include "cli.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

const char *cli_cmd = NULL;

void cli_errline(const char *fmt, ...) {
  char msg[2048];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(msg, sizeof msg, fmt, ap);
  va_end(ap);
  fputs("attn: ", stderr);
  if (cli_cmd) fprintf(stderr, "%s: ", cli_cmd);
  for (const char *p = msg; *p; p++) {
    if (*p == '\n') {
      if (p[1]) fputs("; ", stderr);
    } else {
      fputc(*p, stderr);
    }
  }
  fputc('\n', stderr);
}

int cli_lib_fail(attn_status s, const char *where) {
  const char *m = attn_last_error();
  if (!m || !*m) m = attn_status_str(s);
  if (where && *where) cli_errline("%s: %s", where, m);
  else cli_errline("%s", m);
  return EXIT_FAIL;
}

int cli_usage_fail(const char *fmt, ...) {
  char msg[1024];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(msg, sizeof msg, fmt, ap);
  va_end(ap);
  if (cli_cmd) cli_errline("%s (see 'attn %s --help')", msg, cli_cmd);
  else cli_errline("%s (see 'attn --help')", msg);
  return EXIT_USAGE;
}

double cli_now_ms(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return ts.tv_sec * 1e3 + ts.tv_nsec / 1e6;
}

static uint64_t rng_next(uint64_t *s) {
  /* xorshift64* */
  uint64_t x = *s;
  x ^= x >> 12;
  x ^= x << 25;
  x ^= x >> 27;
  *s = x;
  return x * 2685821657736338717ULL;
}

float *cli_random_floats(int64_t n, uint64_t *state) {
  float *p = malloc((size_t)n * sizeof(float));
  if (!p) return NULL;
  for (int64_t i = 0; i < n; i++)
    p[i] = (float)((double)(rng_next(state) >> 11) / 9007199254740992.0 * 2.0 - 1.0);
  return p;
}
