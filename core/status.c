/* Status codes, the thread-local error message, ATTN_DEBUG logging, and the
 * host services handed to backend modules. */
#include "internal.h"

#include <time.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static _Thread_local char tls_error[2048];
static _Thread_local const char *tls_fn;

const char *attn_status_str(attn_status s) {
  switch (s) {
  case ATTN_OK: return "success";
  case ATTN_ERR_INVALID_ARG: return "invalid argument";
  case ATTN_ERR_SHAPE: return "shape mismatch";
  case ATTN_ERR_OVERFLOW: return "size overflow";
  case ATTN_ERR_NOMEM: return "out of host memory";
  case ATTN_ERR_DEVICE_MEMORY: return "out of device memory";
  case ATTN_ERR_NO_DEVICE: return "no matching device";
  case ATTN_ERR_SELECTOR: return "malformed device selector";
  case ATTN_ERR_PLUGIN: return "backend module failed to load";
  case ATTN_ERR_UNSUPPORTED: return "not supported by the backend";
  case ATTN_ERR_BACKEND: return "device or driver error";
  case ATTN_ERR_BUILD: return "kernel build failed";
  case ATTN_ERR_IO: return "input/output error";
  case ATTN_ERR_FORMAT: return "malformed file";
  case ATTN_ERR_CAPACITY: return "KV cache capacity exceeded";
  }
  return "unknown status";
}

const char *attn_last_error(void) { return tls_error; }

void attn__enter(const char *fn) {
  tls_fn = fn;
  tls_error[0] = '\0';
}

const char *attn__current_fn(void) { return tls_fn ? tls_fn : "attn"; }

attn_status attn__verror(attn_status s, const char *fmt, va_list ap) {
  /* Format into a scratch buffer first: fmt's arguments may point into
   * tls_error (a backend re-reporting a message). */
  char msg[sizeof tls_error];
  vsnprintf(msg, sizeof msg, fmt, ap);
  /* "<fn>: <msg>", truncated to the buffer (assembled by hand so that the
   * compiler can see no truncation surprise). */
  const char *fn = attn__current_fn();
  size_t nf = strnlen(fn, 128), nm = strlen(msg);
  if (nf + 2 + nm >= sizeof tls_error) nm = sizeof tls_error - nf - 3;
  memcpy(tls_error, fn, nf);
  memcpy(tls_error + nf, ": ", 2);
  memcpy(tls_error + nf + 2, msg, nm);
  tls_error[nf + 2 + nm] = '\0';
  attn__debug("error %d (%s): %s", (int)s, attn_status_str(s), tls_error);
  return s;
}

attn_status attn__error(attn_status s, const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  attn__verror(s, fmt, ap);
  va_end(ap);
  return s;
}

int attn__debug_enabled(void) {
  /* Read each time: cheap, and tests may toggle it. */
  const char *e = getenv("ATTN_DEBUG");
  return e && *e && strcmp(e, "0") != 0;
}

void attn__debug(const char *fmt, ...) {
  if (!attn__debug_enabled()) return;
  char line[4096];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(line, sizeof line, fmt, ap);
  va_end(ap);
  fprintf(stderr, "attn: %s\n", line);
}

static void host_debug(const char *fmt, ...) {
  if (!attn__debug_enabled()) return;
  char line[4096];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(line, sizeof line, fmt, ap);
  va_end(ap);
  fprintf(stderr, "attn: %s\n", line);
}

static const attn_host host = {
    .error = attn__error,
    .debug = host_debug,
};

const attn_host *attn__host(void) { return &host; }

double attn__now_ms(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return ts.tv_sec * 1e3 + ts.tv_nsec / 1e6;
}

const char *attn__fmt_dims(char *buf, size_t n, int ndim, const int64_t *d) {
  size_t used = (size_t)snprintf(buf, n, "[");
  for (int i = 0; i < ndim && used < n; i++)
    used += (size_t)snprintf(buf + used, n - used, i ? ",%lld" : "%lld", (long long)d[i]);
  if (used < n) snprintf(buf + used, n - used, "]");
  return buf;
}
