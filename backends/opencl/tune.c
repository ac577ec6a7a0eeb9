/* Tuning parameters in the binary cache: the generic half of the backends'
 * tune slots (the parameters themselves and their measurement live with each
 * backend, e.g. backends/pocl/tune.c).
 *
 * The entry's key names the backend, the platform, device and driver, and the
 * hash and length of every kernel source the parameters apply to, like the
 * program binaries' keys: a driver update or a changed kernel makes the old
 * winners unreachable, and the backend's defaults apply until it is tuned
 * again. The payload is short text, one "name value" line per parameter;
 * cache.c already rejects truncated and corrupt files by their checksum, and
 * the backend rejects values it does not know. */
#include "clrt.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

void clrt_tune_key(const clrt_ctx *c, const char *backend, const char *const *kernels, int n,
                   char *key, size_t keylen) {
  char pname[128] = "", pver[128] = "", dname[256] = "", dver[128] = "";
  clGetPlatformInfo(c->dev.platform, CL_PLATFORM_NAME, sizeof pname - 1, pname, NULL);
  clGetPlatformInfo(c->dev.platform, CL_PLATFORM_VERSION, sizeof pver - 1, pver, NULL);
  clGetDeviceInfo(c->dev.id, CL_DEVICE_NAME, sizeof dname - 1, dname, NULL);
  clGetDeviceInfo(c->dev.id, CL_DRIVER_VERSION, sizeof dver - 1, dver, NULL);
  int used = snprintf(key, keylen,
                      "libattn tuning\nformat=1\nbackend=%s\nplatform=%s %s\ndevice=%s\n"
                      "driver=%s\n",
                      backend, pname, pver, dname, dver);
  for (int i = 0; i < n && used > 0 && (size_t)used < keylen; i++) {
    const char *src = "";
    size_t len = 0;
    char *owned = NULL;
    if (clrt_kernel_source(kernels[i], &src, &len, &owned) != ATTN_OK) src = "", len = 0;
    used += snprintf(key + used, keylen - (size_t)used, "source=%s:%016llx:%zu\n", kernels[i],
                     (unsigned long long)clrt_hash(CLRT_FNV_INIT, src, len), len);
    free(owned);
  }
}

char *clrt_tune_load(const char *key) {
  unsigned char *bin = NULL;
  size_t len = 0;
  if (!clrt_cache_load(key, &bin, &len)) return NULL;
  char *text = malloc(len + 1);
  if (text) {
    memcpy(text, bin, len);
    text[len] = '\0';
  }
  free(bin);
  return text;
}

int clrt_tune_store(const char *key, const char *text) {
  char path[4096];
  if (!clrt_cache_path(key, path, sizeof path)) return 0;
  clrt_cache_store(key, (const unsigned char *)text, strlen(text));
  /* clrt_cache_store only logs its failures: the file says whether it worked. */
  char *back = clrt_tune_load(key);
  int ok = back && strcmp(back, text) == 0;
  free(back);
  return ok;
}

const char *clrt_tune_value(const char *text, const char *name, char *buf, size_t len) {
  size_t nl = strlen(name);
  for (const char *p = text; p && *p; p = strchr(p, '\n'), p = p ? p + 1 : NULL) {
    if (strncmp(p, name, nl) != 0 || p[nl] != ' ') continue;
    const char *v = p + nl + 1, *e = strchr(v, '\n');
    size_t vl = e ? (size_t)(e - v) : strlen(v);
    if (vl == 0 || vl >= len) return NULL;
    memcpy(buf, v, vl);
    buf[vl] = '\0';
    return buf;
  }
  return NULL;
}

double clrt_now_ms(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return ts.tv_sec * 1e3 + ts.tv_nsec * 1e-6;
}

static int cmp_double(const void *a, const void *b) {
  double x = *(const double *)a, y = *(const double *)b;
  return x < y ? -1 : x > y;
}

double clrt_median(double *v, int n) {
  if (n <= 0) return 0;
  qsort(v, (size_t)n, sizeof *v, cmp_double);
  return n % 2 ? v[n / 2] : 0.5 * (v[n / 2 - 1] + v[n / 2]);
}
