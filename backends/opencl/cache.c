/* The on-disk cache of compiled program binaries.
 *
 * One file per key, named after the key's 64-bit hash:
 *   DIR/<16 hex digits>.clbin
 * holding a header, the full key and the payload:
 *   magic "ATTNCLB\0" | u32 format version | u32 key length | u64 key hash |
 *   u64 payload length | u64 payload checksum | key bytes | payload bytes
 * (native byte order: the binaries are for this machine anyway). An entry is
 * trusted only if every field matches: a wrong magic or version (stale
 * format), another key (a hash collision or a foreign file), a length that
 * disagrees with the file size (truncated) or a bad checksum (corrupt) is
 * logged, ignored, and overwritten by the rebuild. Entries are written to a
 * temporary file in the same directory (ENTRY.tmp.PID.XXXXXX) and renamed
 * into place, so readers in other processes see either the old file or the
 * complete new one; the temporaries of killed writers are removed by the
 * next writer (remove_stale_temporaries).
 */
#include "clrt.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "pathsafe.h"

#define CACHE_MAGIC "ATTNCLB"
#define CACHE_VERSION 1u

typedef struct cache_header {
  char magic[8];
  uint32_t version;
  uint32_t key_len;
  uint64_t key_hash;
  uint64_t payload_len;
  uint64_t payload_hash;
} cache_header;

uint64_t clrt_hash(uint64_t h, const void *data, size_t n) {
  const unsigned char *p = data;
  for (size_t i = 0; i < n; i++) {
    h ^= p[i];
    h *= 0x100000001b3ULL;
  }
  return h;
}

const char *clrt_cache_dir(char *buf, size_t len) { return attn_cache_dir_name(buf, len); }

/* A cache directory that others could write (or that someone else owns) is
 * not used at all: whoever writes an entry there chooses the code the device
 * runs. The programs are then compiled and not stored, and ATTN_DEBUG says so
 * once per directory (not once per program). */
static pthread_mutex_t g_refused_lock = PTHREAD_MUTEX_INITIALIZER;
static char g_refused[3072];

static int cache_dir_refused(const char *dir) {
  char why[160];
  if (!attn_path_unsafe(dir, why, sizeof why)) return 0;
  pthread_mutex_lock(&g_refused_lock);
  const int again = strcmp(g_refused, dir) == 0;
  if (!again) snprintf(g_refused, sizeof g_refused, "%s", dir);
  pthread_mutex_unlock(&g_refused_lock);
  if (!again)
    clrt_host()->debug("opencl cache: refusing cache directory %s: %s; running without the "
                       "cache (programs compiled, not stored)",
                       dir, why);
  return 1;
}

const char *clrt_cache_path(const char *key, char *buf, size_t len) {
  char dir[3072];
  if (!clrt_cache_dir(dir, sizeof dir)) return NULL;
  uint64_t h = clrt_hash(CLRT_FNV_INIT, key, strlen(key));
  int n = snprintf(buf, len, "%s/%016llx.clbin", dir, (unsigned long long)h);
  return n > 0 && (size_t)n < len ? buf : NULL;
}

int clrt_cache_load(const char *key, unsigned char **bin, size_t *len) {
  const attn_host *host = clrt_host();
  *bin = NULL;
  *len = 0;
  char path[4096], dir[3072], unsafe[160];
  if (!clrt_cache_dir(dir, sizeof dir) || !clrt_cache_path(key, path, sizeof path)) return 0;
  if (cache_dir_refused(dir)) return 0;
  /* Non-blocking, and regular files only: a FIFO (or device) planted as an
   * entry would otherwise block the open, or the read, for ever. */
  int fd = open(path, O_RDONLY | O_CLOEXEC | O_NONBLOCK);
  if (fd < 0) return 0; /* absent: the normal first run */
  struct stat fst;
  if (fstat(fd, &fst) != 0 || !S_ISREG(fst.st_mode)) {
    close(fd);
    host->debug("opencl cache: ignoring %s: not a regular file", path);
    return 0;
  }
  if (attn_stat_unsafe(&fst, unsafe, sizeof unsafe)) {
    close(fd);
    host->debug("opencl cache: ignoring %s: %s", path, unsafe);
    return 0;
  }
  FILE *f = fdopen(fd, "rb");
  if (!f) {
    close(fd);
    return 0;
  }
  const char *why = NULL;
  cache_header h;
  size_t key_len = strlen(key);
  char *filekey = NULL;
  unsigned char *payload = NULL;
  struct stat st;
  if (fread(&h, sizeof h, 1, f) != 1) why = "truncated header";
  else if (memcmp(h.magic, CACHE_MAGIC, sizeof h.magic) != 0) why = "bad magic";
  else if (h.version != CACHE_VERSION) why = "stale format version";
  else if (h.key_hash != clrt_hash(CLRT_FNV_INIT, key, key_len) || h.key_len != key_len)
    why = "entry for another key";
  else if (fstat(fileno(f), &st) != 0 ||
           (uint64_t)st.st_size != sizeof h + (uint64_t)h.key_len + h.payload_len)
    why = "size disagrees with its header (truncated)";
  else if (h.payload_len == 0 || h.payload_len > (uint64_t)1 << 32) why = "implausible length";
  else if (!(filekey = malloc(key_len + 1)) || !(payload = malloc(h.payload_len)))
    why = "out of host memory";
  else if (fread(filekey, 1, key_len, f) != key_len || memcmp(filekey, key, key_len) != 0)
    why = "entry for another key";
  else if (fread(payload, 1, h.payload_len, f) != h.payload_len) why = "truncated payload";
  else if (clrt_hash(CLRT_FNV_INIT, payload, h.payload_len) != h.payload_hash)
    why = "payload checksum mismatch (corrupt)";
  fclose(f);
  free(filekey);
  if (why) {
    host->debug("opencl cache: ignoring %s: %s", path, why);
    free(payload);
    return 0;
  }
  host->debug("opencl cache: hit %s (%llu bytes)", path, (unsigned long long)h.payload_len);
  *bin = payload;
  *len = h.payload_len;
  return 1;
}

/* mkdir -p, each component 0700 (the cache is private to the user). */
static int make_dirs(const char *dir) {
  char tmp[3072];
  snprintf(tmp, sizeof tmp, "%s", dir);
  for (char *p = tmp + 1; *p; p++) {
    if (*p != '/') continue;
    *p = '\0';
    if (mkdir(tmp, 0700) != 0 && errno != EEXIST) return -1;
    *p = '/';
  }
  if (mkdir(tmp, 0700) != 0 && errno != EEXIST) return -1;
  return 0;
}

static int write_all(int fd, const void *data, size_t n) {
  const char *p = data;
  while (n > 0) {
    ssize_t w = write(fd, p, n);
    if (w < 0) {
      if (errno == EINTR) continue;
      return -1;
    }
    p += w;
    n -= (size_t)w;
  }
  return 0;
}

/* A writer killed between mkstemp and rename leaves its temporary behind
 * (a .clbin.tmp.* file of the size of a program binary, for ever). The
 * temporaries are named ENTRY.tmp.PID.XXXXXX, so before writing, the cache
 * removes those whose process is gone, and any (older names too) not
 * touched for CACHE_TMP_MAX_AGE seconds: no writer takes that long. */
#define CACHE_TMP_MAX_AGE (10 * 60)

static void remove_stale_temporaries(const char *dir) {
  DIR *d = opendir(dir);
  if (!d) return;
  const time_t now = time(NULL);
  struct dirent *e;
  while ((e = readdir(d)) != NULL) {
    const char *t = strstr(e->d_name, ".clbin.tmp.");
    if (!t) continue;
    struct stat st;
    if (fstatat(dirfd(d), e->d_name, &st, AT_SYMLINK_NOFOLLOW) != 0 || !S_ISREG(st.st_mode))
      continue;
    const char *p = t + strlen(".clbin.tmp.");
    char *end;
    errno = 0;
    long pid = strtol(p, &end, 10);
    const int dead = end != p && *end == '.' && errno == 0 && pid > 0 && pid <= INT_MAX &&
                     kill((pid_t)pid, 0) != 0 && errno == ESRCH;
    const int old = now - st.st_mtime > CACHE_TMP_MAX_AGE;
    if ((dead || old) && unlinkat(dirfd(d), e->d_name, 0) == 0)
      clrt_host()->debug("opencl cache: removed stale temporary %s/%s (%s)", dir, e->d_name,
                         dead ? "its writer is gone" : "older than 10 minutes");
  }
  closedir(d);
}

void clrt_cache_store(const char *key, const unsigned char *bin, size_t len) {
  const attn_host *host = clrt_host();
  char dir[3072], path[4096], tmp[4200];
  if (!clrt_cache_dir(dir, sizeof dir) || !clrt_cache_path(key, path, sizeof path)) return;
  if (make_dirs(dir) != 0) {
    host->debug("opencl cache: cannot create %s (%s); not caching", dir, strerror(errno));
    return;
  }
  if (cache_dir_refused(dir)) return;
  remove_stale_temporaries(dir);
  snprintf(tmp, sizeof tmp, "%s.tmp.%ld.XXXXXX", path, (long)getpid());
  int fd = mkstemp(tmp);
  if (fd < 0) {
    host->debug("opencl cache: cannot write in %s (%s); not caching", dir, strerror(errno));
    return;
  }
  cache_header h;
  memset(&h, 0, sizeof h);
  memcpy(h.magic, CACHE_MAGIC, sizeof h.magic);
  h.version = CACHE_VERSION;
  h.key_len = (uint32_t)strlen(key);
  h.key_hash = clrt_hash(CLRT_FNV_INIT, key, h.key_len);
  h.payload_len = len;
  h.payload_hash = clrt_hash(CLRT_FNV_INIT, bin, len);
  int bad = write_all(fd, &h, sizeof h) || write_all(fd, key, h.key_len) ||
            write_all(fd, bin, len);
  if (close(fd) != 0) bad = 1;
  /* rename is atomic within a directory: concurrent writers each install a
   * complete file and the last one wins. */
  if (bad || rename(tmp, path) != 0) {
    host->debug("opencl cache: cannot write %s (%s); not caching", path, strerror(errno));
    unlink(tmp);
    return;
  }
  host->debug("opencl cache: stored %s (%zu bytes)", path, len);
}
