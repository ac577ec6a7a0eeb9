/* The shared OpenCL runtime (backends/opencl): CL error naming, buffers, the
 * on-disk program-binary cache (reuse across processes, corrupt, truncated
 * and foreign entries rebuilt, ATTN_CACHE=0, an unwritable directory), and
 * ATTN_KERNEL_DIR (loading, a broken kernel giving ATTN_ERR_BUILD with the
 * compiler log, through the runtime and through attn_sdpa on pocl).
 *
 * Runs on the first OpenCL device found (POCL's preferred); exits 77 only
 * when there is none. Every cache test uses a fresh temporary directory and a
 * build option unique to this process, so POCL's own kernel cache cannot make
 * a "cold" build warm.
 *
 * Child mode (used by the cache test to get a fresh process):
 *   test_opencl --cache-child OPTIONS   exits 0 iff the build came from our cache
 *   test_opencl --cache-fill OPTIONS    exits 0 iff the build succeeded
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <fcntl.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>
#include <dirent.h>

#include "attn.h"
#include "clrt.h"

/* ---- a host that records the last error ------------------------------------- */

static char g_err[4096];
static attn_status g_err_status;

static attn_status test_error(attn_status s, const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(g_err, sizeof g_err, fmt, ap);
  va_end(ap);
  g_err_status = s;
  return s;
}
/* Every debug line since the test last cleared it (the refusals are one). */
static char g_debug[8192];
static void test_debug(const char *fmt, ...) {
  char line[1024];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(line, sizeof line, fmt, ap);
  va_end(ap);
  size_t n = strlen(g_debug);
  snprintf(g_debug + n, sizeof g_debug - n, "%s\n", line);
  if (getenv("ATTN_DEBUG")) fprintf(stderr, "debug: %s\n", line);
}

/* How many lines of g_debug contain s. */
static int debug_lines_with(const char *s) {
  int n = 0;
  for (const char *l = g_debug; *l;) {
    const char *e = strchr(l, '\n');
    size_t len = e ? (size_t)(e - l) : strlen(l);
    char buf[1024];
    snprintf(buf, sizeof buf, "%.*s", (int)len, l);
    if (strstr(buf, s)) n++;
    l += len + (e ? 1 : 0);
  }
  return n;
}
static const attn_host test_host = {test_error, test_debug};

static clrt_device g_dev;
static char g_nonce[64]; /* unique per process: -DATTN_TEST_NONCE=... */
static char g_tmp[256];  /* this run's scratch directory */

static double now_ms(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return ts.tv_sec * 1e3 + ts.tv_nsec / 1e6;
}

/* Build kernels/linear.cl with options in a fresh context; returns the
 * context's statistics through hits/builds and the time in ms. */
static attn_status build_fresh(const char *options, int *hits, int *builds, double *ms) {
  clrt_ctx c;
  attn_status s = clrt_ctx_init(&c, &g_dev);
  if (s != ATTN_OK) return s;
  cl_program prog;
  double t0 = now_ms();
  s = clrt_program_get(&c, "linear", options, &prog);
  if (ms) *ms = now_ms() - t0;
  if (hits) *hits = c.n_cache_hits;
  if (builds) *builds = c.n_builds;
  if (s == ATTN_OK) {
    /* The program must be usable: create its kernel. */
    cl_kernel k;
    s = clrt_kernel_get(&c, "linear", options, "linear", &k);
  }
  clrt_ctx_release(&c);
  return s;
}

/* A new empty cache directory for one test, set as ATTN_CACHE_DIR. */
static void fresh_cache_dir(const char *name, char *dir, size_t len) {
  snprintf(dir, len, "%s/%s", g_tmp, name);
  assert_int_equal(mkdir(dir, 0700), 0);
  setenv("ATTN_CACHE_DIR", dir, 1);
  unsetenv("ATTN_CACHE");
  unsetenv("ATTN_KERNEL_DIR");
}

/* The one entry file in dir (the tests build one program per directory). */
static int entry_path(const char *dir, char *path, size_t len) {
  DIR *d = opendir(dir);
  if (!d) return 0;
  int n = 0;
  struct dirent *e;
  while ((e = readdir(d))) {
    size_t l = strlen(e->d_name);
    if (l > 6 && strcmp(e->d_name + l - 6, ".clbin") == 0) {
      snprintf(path, len, "%s/%s", dir, e->d_name);
      n++;
    }
  }
  closedir(d);
  return n;
}

/* Every file in dir, entries and temporaries alike. */
static int count_files(const char *dir) {
  DIR *d = opendir(dir);
  if (!d) return -1;
  int n = 0;
  struct dirent *e;
  while ((e = readdir(d)))
    if (e->d_name[0] != '.') n++;
  closedir(d);
  return n;
}

static long file_size(const char *path) {
  struct stat st;
  return stat(path, &st) == 0 ? (long)st.st_size : -1;
}

static void options_for(const char *tag, char *buf, size_t len) {
  snprintf(buf, len, "-DATTN_TEST_NONCE=%s_%s", g_nonce, tag);
}

/* ---- errors ---------------------------------------------------------------- */

static void test_error_names(void **state) {
  (void)state;
  assert_string_equal(clrt_error_name(CL_OUT_OF_RESOURCES), "CL_OUT_OF_RESOURCES");
  assert_string_equal(clrt_error_name(CL_MEM_OBJECT_ALLOCATION_FAILURE),
                      "CL_MEM_OBJECT_ALLOCATION_FAILURE");
  assert_string_equal(clrt_error_name(CL_BUILD_PROGRAM_FAILURE), "CL_BUILD_PROGRAM_FAILURE");
  assert_string_equal(clrt_error_name(CL_INVALID_KERNEL_ARGS), "CL_INVALID_KERNEL_ARGS");
  assert_string_equal(clrt_error_name(-12345), "CL_UNKNOWN_ERROR");
  assert_int_equal(clrt_status(CL_SUCCESS), ATTN_OK);
  assert_int_equal(clrt_status(CL_MEM_OBJECT_ALLOCATION_FAILURE), ATTN_ERR_DEVICE_MEMORY);
  assert_int_equal(clrt_status(CL_BUILD_PROGRAM_FAILURE), ATTN_ERR_BUILD);
  assert_int_equal(clrt_status(CL_OUT_OF_RESOURCES), ATTN_ERR_BACKEND);
  assert_int_equal(clrt_status(CL_INVALID_VALUE), ATTN_ERR_BACKEND);

  g_err[0] = '\0';
  assert_int_equal(clrt_fail(CL_OUT_OF_RESOURCES, "clEnqueueNDRangeKernel(%s)", "sdpa_flash"),
                   ATTN_ERR_BACKEND);
  assert_string_equal(g_err, "clEnqueueNDRangeKernel(sdpa_flash): CL_OUT_OF_RESOURCES (-5)");
  assert_int_equal(CLRT_CHECK(CL_SUCCESS, "never"), ATTN_OK);
}

/* A cached FMA peak far below what the device reaches (measured while the
 * machine was busy) is measured again and replaced; a cached figure no probe
 * beats by 2x is kept as it is. */
static void test_peaks_implausible(void **state) {
  (void)state;
  char dir[512], key[1024];
  fresh_cache_dir("peaks", dir, sizeof dir);
  clrt_ctx c;
  assert_int_equal(clrt_ctx_init(&c, &g_dev), ATTN_OK);
  clrt_peaks_key(&c, key, sizeof key);
  const char *low = "gflops 0.001\ngbps 3\n";
  clrt_cache_store(key, (const unsigned char *)low, strlen(low));
  double f = 0, b = 0;
  assert_int_equal(clrt_peaks(&c, false, &f, &b), ATTN_OK);
  assert_true(f > 0.1); /* any real device beats a megaflop */
  assert_true(b >= 3); /* never stored lower than before */
  /* the new figure is what the cache holds now */
  double f2 = 0, b2 = 0;
  unsigned char *bin = NULL;
  size_t len = 0;
  assert_int_equal(clrt_cache_load(key, &bin, &len), 1);
  char text[128];
  memcpy(text, bin, len < sizeof text - 1 ? len : sizeof text - 1);
  text[len < sizeof text - 1 ? len : sizeof text - 1] = '\0';
  free(bin);
  assert_int_equal(sscanf(text, "gflops %lf\ngbps %lf", &f2, &b2), 2);
  assert_true(f2 == f && b2 == b);
  /* a plausible (here: unreachably high) figure stays */
  const char *high = "gflops 1e9\ngbps 5\n";
  clrt_cache_store(key, (const unsigned char *)high, strlen(high));
  assert_int_equal(clrt_peaks(&c, false, &f, &b), ATTN_OK);
  assert_true(f == 1e9 && b == 5);
  clrt_ctx_release(&c);
  unsetenv("ATTN_CACHE_DIR");
}

/* ---- buffers --------------------------------------------------------------- */

static void test_buffers(void **state) {
  (void)state;
  clrt_ctx c;
  assert_int_equal(clrt_ctx_init(&c, &g_dev), ATTN_OK);
  attn_buffer *b = NULL, *b2 = NULL;
  assert_int_equal(clrt_buffer_alloc(&c, 64 * sizeof(float), &b), ATTN_OK);
  float in[64], out[64];
  for (int i = 0; i < 64; i++) in[i] = (float)i * 0.5f, out[i] = -1.0f;
  assert_int_equal(clrt_buffer_write(&c, b, 0, sizeof in, in), ATTN_OK);
  assert_int_equal(clrt_buffer_read(&c, b, 16 * sizeof(float), 8 * sizeof(float), out), ATTN_OK);
  for (int i = 0; i < 8; i++) assert_true(out[i] == in[16 + i]);
  assert_true(out[8] == -1.0f); /* nothing past the 8 read */

  /* Out of range: refused with a message, nothing transferred. */
  assert_int_equal(clrt_buffer_read(&c, b, 60 * sizeof(float), 8 * sizeof(float), out),
                   ATTN_ERR_INVALID_ARG);
  assert_non_null(strstr(g_err, "outside a buffer of 256 bytes"));
  /* More than the device can hold in one allocation: a device-memory error. */
  if (c.max_alloc < SIZE_MAX / 2) {
    assert_int_equal(clrt_buffer_alloc(&c, (size_t)c.max_alloc * 2, &b2),
                     ATTN_ERR_DEVICE_MEMORY);
    assert_null(b2);
  }
  assert_int_equal(clrt_buffer_alloc(&c, 0, &b2), ATTN_ERR_INVALID_ARG);
  /* A buffer left allocated is freed by the release (leak checkers see it). */
  assert_int_equal(clrt_buffer_alloc(&c, 128, &b2), ATTN_OK);
  clrt_buffer_free(&c, b);
  assert_int_equal(clrt_finish(&c), ATTN_OK);
  clrt_ctx_release(&c);
}

/* ---- the binary cache -------------------------------------------------------- */

static void test_cache_reuse_across_processes(void **state) {
  (void)state;
  char dir[512], opts[128], path[1024];
  fresh_cache_dir("reuse", dir, sizeof dir);
  options_for("reuse", opts, sizeof opts);
  int hits = -1, builds = -1;
  double cold, warm_ctx;
  assert_int_equal(build_fresh(opts, &hits, &builds, &cold), ATTN_OK);
  assert_int_equal(hits, 0);
  assert_int_equal(builds, 1);
  assert_int_equal(entry_path(dir, path, sizeof path), 1);

  /* A fresh context in this process reads the entry back. */
  assert_int_equal(build_fresh(opts, &hits, &builds, &warm_ctx), ATTN_OK);
  assert_int_equal(hits, 1);
  assert_int_equal(builds, 0);

  /* And so does a fresh process. */
  char cmd[2048];
  snprintf(cmd, sizeof cmd, "/proc/%d/exe --cache-child '%s'", (int)getpid(), opts);
  FILE *p = popen(cmd, "r");
  assert_non_null(p);
  double child_ms = -1;
  int got = fscanf(p, "%lf", &child_ms);
  int rc = pclose(p);
  assert_int_equal(got, 1);
  assert_true(WIFEXITED(rc) && WEXITSTATUS(rc) == 0);
  printf("binary cache: cold build %.1f ms, fresh context %.1f ms, fresh process %.1f ms "
         "(%.1fx faster)\n",
         cold, warm_ctx, child_ms, child_ms > 0 ? cold / child_ms : 0.0);
}

/* Damage the entry in one of four ways; the next build must ignore it,
 * compile from source, and leave a valid entry that the build after uses. */
static void damaged_entry_rebuilt(const char *tag, int how) {
  char dir[512], opts[128], path[1024];
  fresh_cache_dir(tag, dir, sizeof dir);
  options_for(tag, opts, sizeof opts);
  int hits, builds;
  assert_int_equal(build_fresh(opts, &hits, &builds, NULL), ATTN_OK);
  assert_int_equal(entry_path(dir, path, sizeof path), 1);
  long size = file_size(path);
  assert_true(size > 64);

  if (how == 4) { /* a FIFO in place of the entry: opening it must not wait for a writer */
    assert_int_equal(unlink(path), 0);
    assert_int_equal(mkfifo(path, 0600), 0);
    alarm(60); /* a hang becomes a failure (SIGALRM ends the suite) */
    assert_int_equal(build_fresh(opts, &hits, &builds, NULL), ATTN_OK);
    alarm(0);
    assert_int_equal(hits, 0);
    assert_int_equal(builds, 1);
    assert_int_equal(file_size(path), size); /* the FIFO replaced by a valid entry */
    assert_int_equal(build_fresh(opts, &hits, &builds, NULL), ATTN_OK);
    assert_int_equal(hits, 1);
    return;
  }
  int fd = open(path, O_RDWR);
  assert_true(fd >= 0);
  if (how == 0) { /* corrupt: flip one byte of the payload */
    unsigned char byte;
    assert_int_equal(pread(fd, &byte, 1, size - 10), 1);
    byte ^= 0x5a;
    assert_int_equal(pwrite(fd, &byte, 1, size - 10), 1);
  } else if (how == 1) { /* truncated: half the file */
    assert_int_equal(ftruncate(fd, size / 2), 0);
  } else if (how == 3) { /* stale: a future format version (the u32 after the magic) */
    const uint32_t version = 999;
    assert_int_equal(pwrite(fd, &version, sizeof version, 8), (ssize_t)sizeof version);
  } else { /* foreign: not ours at all */
    const char junk[] = "this is not a libattn cache entry";
    assert_int_equal(pwrite(fd, junk, sizeof junk, 0), (ssize_t)sizeof junk);
  }
  close(fd);

  assert_int_equal(build_fresh(opts, &hits, &builds, NULL), ATTN_OK);
  assert_int_equal(hits, 0);
  assert_int_equal(builds, 1);
  assert_int_equal(file_size(path), size); /* rewritten whole */
  assert_int_equal(build_fresh(opts, &hits, &builds, NULL), ATTN_OK);
  assert_int_equal(hits, 1);
  assert_int_equal(builds, 0);
}

static void test_cache_corrupt(void **state) {
  (void)state;
  damaged_entry_rebuilt("corrupt", 0);
}
static void test_cache_truncated(void **state) {
  (void)state;
  damaged_entry_rebuilt("truncated", 1);
}
static void test_cache_foreign(void **state) {
  (void)state;
  damaged_entry_rebuilt("foreign", 2);
}

static void test_cache_stale(void **state) {
  (void)state;
  damaged_entry_rebuilt("stale", 3);
}

/* The key text of a cache entry file (after its 40-byte header). */
static char *entry_key(const char *path) {
  FILE *f = fopen(path, "rb");
  assert_non_null(f);
  unsigned char h[40];
  assert_int_equal(fread(h, 1, sizeof h, f), sizeof h);
  uint32_t klen;
  memcpy(&klen, h + 12, sizeof klen); /* magic[8], version, key_len */
  char *key = calloc(klen + 1, 1);
  assert_non_null(key);
  assert_int_equal(fread(key, 1, klen, f), klen);
  fclose(f);
  return key;
}

/* Issue 13, item 1: a well-formed entry (right key text, right checksums)
 * that holds another program's binary used to be loaded and run. Now the
 * binary must have the identity kernel of its key: the forged entry is
 * ignored, the program rebuilt, and the entry rewritten with the right one. */
static void test_cache_forged(void **state) {
  (void)state;
  char da[512], db[512], oa[128], ob[128], pa[1024], pb[1024];
  fresh_cache_dir("forged_a", da, sizeof da);
  options_for("forged_a", oa, sizeof oa);
  int hits, builds;
  assert_int_equal(build_fresh(oa, &hits, &builds, NULL), ATTN_OK);
  assert_int_equal(entry_path(da, pa, sizeof pa), 1);
  char *ka = entry_key(pa);
  unsigned char *bin_a = NULL;
  size_t len_a = 0;
  assert_int_equal(clrt_cache_load(ka, &bin_a, &len_a), 1);

  fresh_cache_dir("forged_b", db, sizeof db);
  options_for("forged_b", ob, sizeof ob);
  assert_int_equal(build_fresh(ob, &hits, &builds, NULL), ATTN_OK);
  assert_int_equal(entry_path(db, pb, sizeof pb), 1);
  char *kb = entry_key(pb);
  /* B's entry now holds A's program, under B's key, with valid checksums. */
  clrt_cache_store(kb, bin_a, len_a);
  unsigned char *check = NULL;
  size_t len_c = 0;
  assert_int_equal(clrt_cache_load(kb, &check, &len_c), 1);
  assert_int_equal(len_c, len_a);
  free(check);

  assert_int_equal(build_fresh(ob, &hits, &builds, NULL), ATTN_OK);
  assert_int_equal(hits, 0); /* refused */
  assert_int_equal(builds, 1);
  assert_int_equal(build_fresh(ob, &hits, &builds, NULL), ATTN_OK);
  assert_int_equal(hits, 1); /* the rebuilt entry is B's own */
  assert_int_equal(builds, 0);
  free(bin_a);
  free(ka);
  free(kb);
}

/* Issue 13, item 5: a FIFO in place of an entry hung every run in fopen. */
static void test_cache_fifo(void **state) {
  (void)state;
  damaged_entry_rebuilt("fifo", 4);
}

/* Processes filling the same empty cache at once: each builds and succeeds,
 * and what is left is one valid entry (temporary file + rename). */
static void test_cache_concurrent_fill(void **state) {
  (void)state;
  char dir[512], opts[128], path[1024], cmd[2048];
  fresh_cache_dir("concurrent", dir, sizeof dir);
  options_for("concurrent", opts, sizeof opts);
  enum { NPROC = 3 };
  FILE *p[NPROC];
  snprintf(cmd, sizeof cmd, "/proc/%d/exe --cache-fill '%s'", (int)getpid(), opts);
  for (int i = 0; i < NPROC; i++) assert_non_null(p[i] = popen(cmd, "r"));
  for (int i = 0; i < NPROC; i++) {
    double ms;
    assert_int_equal(fscanf(p[i], "%lf", &ms), 1);
    int rc = pclose(p[i]);
    assert_true(WIFEXITED(rc) && WEXITSTATUS(rc) == 0);
  }
  assert_int_equal(entry_path(dir, path, sizeof path), 1);
  assert_int_equal(count_files(dir), 1); /* no temporary file left behind */
  int hits, builds;
  assert_int_equal(build_fresh(opts, &hits, &builds, NULL), ATTN_OK);
  assert_int_equal(hits, 1);
}

static void test_cache_disabled(void **state) {
  (void)state;
  char dir[512], opts[128], path[1024];
  fresh_cache_dir("disabled", dir, sizeof dir);
  options_for("disabled", opts, sizeof opts);
  setenv("ATTN_CACHE", "0", 1);
  char buf[256];
  assert_null(clrt_cache_dir(buf, sizeof buf));
  int hits, builds;
  assert_int_equal(build_fresh(opts, &hits, &builds, NULL), ATTN_OK);
  assert_int_equal(build_fresh(opts, &hits, &builds, NULL), ATTN_OK);
  assert_int_equal(hits, 0);
  assert_int_equal(builds, 1);
  assert_int_equal(entry_path(dir, path, sizeof path), 0);
  unsetenv("ATTN_CACHE");
}

static void test_cache_unwritable(void **state) {
  (void)state;
  char file[512], dir[600], opts[128];
  /* A directory below a regular file cannot be created, even by root. */
  snprintf(file, sizeof file, "%s/plainfile", g_tmp);
  FILE *f = fopen(file, "w");
  assert_non_null(f);
  fclose(f);
  snprintf(dir, sizeof dir, "%s/attn", file);
  setenv("ATTN_CACHE_DIR", dir, 1);
  options_for("unwritable", opts, sizeof opts);
  int hits, builds;
  g_err_status = ATTN_OK;
  assert_int_equal(build_fresh(opts, &hits, &builds, NULL), ATTN_OK);
  assert_int_equal(builds, 1);
  assert_int_equal(g_err_status, ATTN_OK); /* no error was even reported */
}

static void test_cache_dir_resolution(void **state) {
  (void)state;
  char buf[1024], home[1024] = "", xdg[1024] = "";
  /* Restored after: POCL keeps its own cache under them. */
  if (getenv("HOME")) snprintf(home, sizeof home, "%s", getenv("HOME"));
  if (getenv("XDG_CACHE_HOME")) snprintf(xdg, sizeof xdg, "%s", getenv("XDG_CACHE_HOME"));
  unsetenv("ATTN_CACHE");
  setenv("ATTN_CACHE_DIR", "/x/y", 1);
  assert_string_equal(clrt_cache_dir(buf, sizeof buf), "/x/y");
  unsetenv("ATTN_CACHE_DIR");
  setenv("XDG_CACHE_HOME", "/xdg", 1);
  assert_string_equal(clrt_cache_dir(buf, sizeof buf), "/xdg/attn");
  unsetenv("XDG_CACHE_HOME");
  setenv("HOME", "/home/someone", 1);
  assert_string_equal(clrt_cache_dir(buf, sizeof buf), "/home/someone/.cache/attn");
  if (*home) setenv("HOME", home, 1);
  else unsetenv("HOME");
  if (*xdg) setenv("XDG_CACHE_HOME", xdg, 1);
  setenv("ATTN_CACHE_DIR", g_tmp, 1);
}

/* ---- ATTN_KERNEL_DIR ---------------------------------------------------------- */

static const char broken_cl[] =
    "__kernel void linear(__global float *y) { y[0] = undeclared_identifier_xyz; }\n"
    "__kernel void sdpa_flash(__global float *y) { y[0] = undeclared_identifier_xyz; }\n";

static void write_file(const char *path, const char *text) {
  FILE *f = fopen(path, "w");
  assert_non_null(f);
  fputs(text, f);
  fclose(f);
}

static void test_kernel_dir_broken(void **state) {
  (void)state;
  char dir[512], cache[512], path[700];
  fresh_cache_dir("kdcache", cache, sizeof cache);
  snprintf(dir, sizeof dir, "%s/brokenkernels", g_tmp);
  assert_int_equal(mkdir(dir, 0700), 0);
  snprintf(path, sizeof path, "%s/linear.cl", dir);
  write_file(path, broken_cl);
  /* The prelude every program starts with comes from the directory too. */
  snprintf(path, sizeof path, "%s/common.cl", dir);
  write_file(path, "");
  setenv("ATTN_KERNEL_DIR", dir, 1);
  int hits, builds;
  g_err[0] = '\0';
  /* What the build writes to the process's stderr (POCL's clang printed
   * "2 errors generated." there, a second line besides the error). */
  char errfile[700];
  snprintf(errfile, sizeof errfile, "%s/build_stderr.txt", g_tmp);
  fflush(stderr);
  int saved = dup(2), efd = open(errfile, O_WRONLY | O_CREAT | O_TRUNC, 0600);
  assert_true(saved >= 0 && efd >= 0);
  assert_int_equal(dup2(efd, 2), 2);
  attn_status bs = build_fresh("", &hits, &builds, NULL);
  fflush(stderr);
  assert_int_equal(dup2(saved, 2), 2);
  close(saved);
  close(efd);
  assert_int_equal(bs, ATTN_ERR_BUILD);
  assert_int_equal(file_size(errfile), 0);
  printf("build error message: %.300s\n", g_err);
  /* The log names the kernel's file, not POCL's temporary copy, and keeps
   * only the compiler's lines. */
  assert_null(strstr(g_err, "tempfile_"));
  assert_null(strstr(g_err, "failed to build the program"));
  assert_non_null(strstr(g_err, "kernels/linear.cl:1:"));
  assert_non_null(strstr(g_err, "CL_BUILD_PROGRAM_FAILURE"));
  assert_non_null(strstr(g_err, "kernels/linear.cl"));
  assert_non_null(strstr(g_err, "compiler log"));
  assert_non_null(strstr(g_err, "undeclared_identifier_xyz")); /* from the log itself */

  /* A missing file in the directory: an I/O error naming it. */
  snprintf(path, sizeof path, "%s/sdpa.cl", dir);
  clrt_ctx c;
  assert_int_equal(clrt_ctx_init(&c, &g_dev), ATTN_OK);
  cl_program prog;
  assert_int_equal(clrt_program_get(&c, "sdpa", "", &prog), ATTN_ERR_IO);
  assert_non_null(strstr(g_err, path));
  /* So is a missing prelude. */
  snprintf(path, sizeof path, "%s/common.cl", dir);
  assert_int_equal(unlink(path), 0);
  assert_int_equal(clrt_program_get(&c, "linear", "", &prog), ATTN_ERR_IO);
  assert_non_null(strstr(g_err, path));
  /* An unknown embedded name. */
  unsetenv("ATTN_KERNEL_DIR");
  assert_int_equal(clrt_program_get(&c, "no_such_kernel", "", &prog), ATTN_ERR_INVALID_ARG);
  assert_non_null(strstr(g_err, "no_such_kernel"));
  clrt_ctx_release(&c);
}

/* A correct kernel directory (the source tree's kernels/) builds, and its
 * source hash equals the embedded one's: same cache entry. */
static void test_kernel_dir_good(void **state) {
  (void)state;
  const char *data = getenv("ATTN_TEST_DATA_DIR");
  if (!data) skip();
  char dir[1024], cache[512], opts[128];
  /* ATTN_TEST_DATA_DIR is <srcdir>/tests/data (which need not exist). */
  snprintf(dir, sizeof dir, "%s", data);
  char *cut = strstr(dir, "/tests/data");
  if (!cut) skip();
  snprintf(cut, sizeof dir - (size_t)(cut - dir), "/kernels");
  fresh_cache_dir("kdgood", cache, sizeof cache);
  options_for("kdgood", opts, sizeof opts);
  int hits, builds;
  assert_int_equal(build_fresh(opts, &hits, &builds, NULL), ATTN_OK); /* embedded */
  assert_int_equal(builds, 1);
  setenv("ATTN_KERNEL_DIR", dir, 1);
  assert_int_equal(build_fresh(opts, &hits, &builds, NULL), ATTN_OK); /* from the files */
  assert_int_equal(hits, 1);
  unsetenv("ATTN_KERNEL_DIR");
}

/* Through the public API: attn_sdpa on pocl with a broken sdpa.cl fails with
 * ATTN_ERR_BUILD, a message naming attn_sdpa and carrying the compiler log,
 * and the context stays usable. */
static void test_kernel_dir_public_api(void **state) {
  (void)state;
  char dir[512], cache[512], path[700];
  fresh_cache_dir("apicache", cache, sizeof cache);
  snprintf(dir, sizeof dir, "%s/apikernels", g_tmp);
  assert_int_equal(mkdir(dir, 0700), 0);
  snprintf(path, sizeof path, "%s/sdpa.cl", dir);
  write_file(path, broken_cl);
  snprintf(path, sizeof path, "%s/common.cl", dir);
  write_file(path, "");
  attn_context *ctx = NULL;
  if (attn_open("pocl", &ctx) != ATTN_OK) {
    printf("pocl backend not openable here (%s): skipping the public-API check\n",
           attn_last_error());
    skip();
  }
  int64_t shape[4] = {1, 1, 5, 8};
  attn_tensor *q = NULL, *o = NULL;
  assert_int_equal(attn_tensor_create(ctx, 4, shape, &q), ATTN_OK);
  assert_int_equal(attn_tensor_create(ctx, 4, shape, &o), ATTN_OK);
  float host[40];
  for (int i = 0; i < 40; i++) host[i] = (float)(i % 7) * 0.1f;
  assert_int_equal(attn_tensor_write(q, host, 40), ATTN_OK);
  attn_sdpa_args a = ATTN_SDPA_ARGS_INIT;
  a.q = a.k = a.v = q;
  a.out = o;
  setenv("ATTN_KERNEL_DIR", dir, 1);
  attn_status s = attn_sdpa(ctx, &a);
  const char *msg = attn_last_error();
  printf("attn_sdpa with a broken kernel: %.200s\n", msg);
  assert_int_equal(s, ATTN_ERR_BUILD);
  assert_true(strncmp(msg, "attn_sdpa:", 10) == 0);
  assert_non_null(strstr(msg, "undeclared_identifier_xyz"));
  /* Back to the embedded kernels: the same context works. */
  unsetenv("ATTN_KERNEL_DIR");
  assert_int_equal(attn_sdpa(ctx, &a), ATTN_OK);
  assert_int_equal(attn_tensor_read(o, host, 40), ATTN_OK);
  for (int i = 0; i < 40; i++) assert_true(host[i] == host[i]); /* no NaN */
  attn_tensor_free(q);
  attn_tensor_free(o);
  attn_close(ctx);
}

/* Issue 13, item 8: a writer killed before its rename left ENTRY.tmp.*
 * behind for ever. The next writer removes the temporaries whose writer is
 * gone (the PID in the name) and any untouched for 10 minutes; a live
 * writer's young temporary stays. */
static void test_cache_stale_temporaries(void **state) {
  (void)state;
  char dir[512], opts[128], f[4][700];
  fresh_cache_dir("stale_tmp", dir, sizeof dir);
  options_for("stale_tmp", opts, sizeof opts);
  pid_t gone = fork(); /* a PID that is certainly dead: a child that exited */
  assert_true(gone >= 0);
  if (gone == 0) _exit(0);
  int st;
  assert_int_equal(waitpid(gone, &st, 0), gone);
  snprintf(f[0], sizeof f[0], "%s/0123456789abcdef.clbin.tmp.%d.Ab12Cd", dir, (int)gone);
  snprintf(f[1], sizeof f[1], "%s/0123456789abcdef.clbin.tmp.Xy34Zw", dir); /* old style, old */
  snprintf(f[2], sizeof f[2], "%s/0123456789abcdef.clbin.tmp.%d.Live00", dir, (int)getpid());
  snprintf(f[3], sizeof f[3], "%s/fedcba9876543210.clbin.tmp.Young0", dir); /* old style, new */
  for (int i = 0; i < 4; i++) write_file(f[i], "half a binary");
  struct timespec old[2] = {{time(NULL) - 3600, 0}, {time(NULL) - 3600, 0}};
  assert_int_equal(utimensat(AT_FDCWD, f[1], old, 0), 0);
  int hits, builds;
  assert_int_equal(build_fresh(opts, &hits, &builds, NULL), ATTN_OK);
  assert_int_equal(builds, 1);
  struct stat sb;
  assert_int_equal(stat(f[0], &sb), -1); /* writer gone */
  assert_int_equal(stat(f[1], &sb), -1); /* an hour old */
  assert_int_equal(stat(f[2], &sb), 0);  /* a live writer's */
  assert_int_equal(stat(f[3], &sb), 0);  /* young, writer unknown */
  assert_int_equal(count_files(dir), 3); /* those two and the new entry */
}

/* ---- unsafe directories (issue 13, item 1) ------------------------------------- */

/* A cache directory others can write (no sticky bit), or that another user
 * owns, is not used: programs build, nothing is read or stored there, and
 * one debug line says why. 01777 (like /tmp) is fine. */
static void test_cache_unsafe_dir(void **state) {
  (void)state;
  char dir[512], opts[128], path[1024];
  fresh_cache_dir("unsafe777", dir, sizeof dir);
  options_for("unsafe777", opts, sizeof opts);
  assert_int_equal(chmod(dir, 0777), 0);
  int hits, builds;
  g_debug[0] = '\0';
  assert_int_equal(build_fresh(opts, &hits, &builds, NULL), ATTN_OK);
  assert_int_equal(build_fresh(opts, &hits, &builds, NULL), ATTN_OK);
  assert_int_equal(hits, 0);
  assert_int_equal(builds, 1);
  assert_int_equal(count_files(dir), 0); /* nothing stored */
  printf("%s", g_debug);
  assert_int_equal(debug_lines_with("refusing cache directory"), 1); /* one line, not per use */
  assert_int_equal(debug_lines_with("without the sticky bit (mode 0777)"), 1);
  assert_non_null(strstr(g_debug, dir));

  /* An entry planted there before the directory became unsafe is not read. */
  assert_int_equal(chmod(dir, 0700), 0);
  assert_int_equal(build_fresh(opts, &hits, &builds, NULL), ATTN_OK);
  assert_int_equal(entry_path(dir, path, sizeof path), 1);
  assert_int_equal(chmod(dir, 0770), 0);
  assert_int_equal(build_fresh(opts, &hits, &builds, NULL), ATTN_OK);
  assert_int_equal(hits, 0);

  /* Sticky: accepted, the entry is used. */
  assert_int_equal(chmod(dir, 01777), 0);
  assert_int_equal(build_fresh(opts, &hits, &builds, NULL), ATTN_OK);
  assert_int_equal(hits, 1);

  /* Owned by someone else (the suite runs as root; elsewhere chown fails). */
  char other[512];
  fresh_cache_dir("unsafe_owner", other, sizeof other);
  if (chown(other, 12345, 12345) == 0) {
    g_debug[0] = '\0';
    assert_int_equal(build_fresh(opts, &hits, &builds, NULL), ATTN_OK);
    assert_int_equal(hits, 0);
    assert_int_equal(builds, 1);
    assert_int_equal(count_files(other), 0);
    assert_int_equal(debug_lines_with("owned by uid 12345"), 1);
  } else {
    printf("chown to uid 12345 not permitted: the foreign-owner case is not run\n");
  }
}

/* An entry file others can write is ignored and rewritten (mode 0600). */
static void test_cache_unsafe_entry(void **state) {
  (void)state;
  char dir[512], opts[128], path[1024];
  fresh_cache_dir("unsafe_entry", dir, sizeof dir);
  options_for("unsafe_entry", opts, sizeof opts);
  int hits, builds;
  assert_int_equal(build_fresh(opts, &hits, &builds, NULL), ATTN_OK);
  assert_int_equal(entry_path(dir, path, sizeof path), 1);
  assert_int_equal(chmod(path, 0666), 0);
  g_debug[0] = '\0';
  assert_int_equal(build_fresh(opts, &hits, &builds, NULL), ATTN_OK);
  assert_int_equal(hits, 0);
  assert_int_equal(builds, 1);
  assert_int_equal(debug_lines_with("writable by others (mode 0666)"), 1);
  struct stat st;
  assert_int_equal(stat(path, &st), 0);
  assert_int_equal(st.st_mode & 0077, 0);
  assert_int_equal(build_fresh(opts, &hits, &builds, NULL), ATTN_OK);
  assert_int_equal(hits, 1);
}

/* ATTN_KERNEL_DIR: relative, unsafe directory, unsafe file, foreign owner:
 * each an error naming it; 01777 and a safe copy work. */
static void test_kernel_dir_unsafe(void **state) {
  (void)state;
  const char *data = getenv("ATTN_TEST_DATA_DIR");
  char src[1024], cache[512], dir[512], cmd[2600];
  fresh_cache_dir("kdunsafe_cache", cache, sizeof cache);
  clrt_ctx c;
  cl_program prog;
  assert_int_equal(clrt_ctx_init(&c, &g_dev), ATTN_OK);

  setenv("ATTN_KERNEL_DIR", "kernels", 1);
  assert_int_equal(clrt_program_get(&c, "linear", "", &prog), ATTN_ERR_IO);
  assert_non_null(strstr(g_err, "ATTN_KERNEL_DIR: relative path kernels refused"));

  /* A copy of the source tree's kernels/ (ATTN_TEST_DATA_DIR is <srcdir>/tests/data). */
  snprintf(src, sizeof src, "%s", data ? data : "");
  char *cut = strstr(src, "/tests/data");
  if (!cut) {
    clrt_ctx_release(&c);
    skip();
  }
  snprintf(cut, sizeof src - (size_t)(cut - src), "/kernels");
  snprintf(dir, sizeof dir, "%s/kdunsafe", g_tmp);
  snprintf(cmd, sizeof cmd, "cp -r '%s' '%s' && chmod 0644 '%s'/*.cl", src, dir, dir);
  assert_int_equal(system(cmd), 0);
  setenv("ATTN_KERNEL_DIR", dir, 1);

  assert_int_equal(chmod(dir, 0777), 0);
  assert_int_equal(clrt_program_get(&c, "linear", "", &prog), ATTN_ERR_IO);
  printf("%s\n", g_err);
  assert_non_null(strstr(g_err, dir));
  assert_non_null(strstr(g_err, "without the sticky bit (mode 0777)"));

  assert_int_equal(chmod(dir, 01777), 0);
  char f[700];
  snprintf(f, sizeof f, "%s/linear.cl", dir);
  assert_int_equal(chmod(f, 0666), 0);
  assert_int_equal(clrt_program_get(&c, "linear", "", &prog), ATTN_ERR_IO);
  assert_non_null(strstr(g_err, f));
  assert_non_null(strstr(g_err, "writable by others"));

  assert_int_equal(chmod(f, 0644), 0);
  assert_int_equal(clrt_program_get(&c, "linear", "", &prog), ATTN_OK); /* 01777 is fine */

  if (chown(dir, 12345, 12345) == 0) {
    assert_int_equal(clrt_program_get(&c, "sdpa", "", &prog), ATTN_ERR_IO);
    assert_non_null(strstr(g_err, "owned by uid 12345"));
  }
  unsetenv("ATTN_KERNEL_DIR");
  clrt_ctx_release(&c);
}

/* Through the public API on pocl: an unsafe cache directory changes nothing
 * but the caching: the result equals ref's, nothing is stored. */
static void test_unsafe_cache_public_api(void **state) {
  (void)state;
  char dir[512];
  fresh_cache_dir("unsafe_api", dir, sizeof dir);
  assert_int_equal(chmod(dir, 0777), 0);
  attn_context *ctx = NULL, *ref = NULL;
  if (attn_open("pocl", &ctx) != ATTN_OK) skip();
  assert_int_equal(attn_open("ref", &ref), ATTN_OK);
  enum { N = 3 * 7 * 8 };
  float host[N], out[2][N];
  for (int i = 0; i < N; i++) host[i] = (float)((i * 37) % 11) * 0.1f - 0.5f;
  int64_t shape[4] = {1, 3, 7, 8};
  attn_context *cs[2] = {ctx, ref};
  for (int d = 0; d < 2; d++) {
    attn_tensor *q, *o;
    assert_int_equal(attn_tensor_create(cs[d], 4, shape, &q), ATTN_OK);
    assert_int_equal(attn_tensor_create(cs[d], 4, shape, &o), ATTN_OK);
    assert_int_equal(attn_tensor_write(q, host, N), ATTN_OK);
    attn_sdpa_args a = ATTN_SDPA_ARGS_INIT;
    a.q = a.k = a.v = q;
    a.out = o;
    a.causal = true;
    assert_int_equal(attn_sdpa(cs[d], &a), ATTN_OK);
    assert_int_equal(attn_tensor_read(o, out[d], N), ATTN_OK);
    attn_tensor_free(q);
    attn_tensor_free(o);
  }
  for (int i = 0; i < N; i++) assert_true(fabsf(out[0][i] - out[1][i]) <= 1e-5f);
  assert_int_equal(count_files(dir), 0);
  attn_close(ctx);
  attn_close(ref);
}

/* ---- main -------------------------------------------------------------------- */

static int cache_child(const char *opts, int fill) {
  int hits = 0, builds = 0;
  double ms = 0;
  attn_status s = build_fresh(opts, &hits, &builds, &ms);
  printf("%f\n", ms);
  if (fill) return s == ATTN_OK ? 0 : 1;
  return s == ATTN_OK && hits == 1 && builds == 0 ? 0 : 1;
}

int main(int argc, char **argv) {
  clrt_init(&test_host);
  clrt_device devs[8];
  int n = clrt_find_devices(CL_DEVICE_TYPE_ALL, "Portable Computing Language", false, devs, 8);
  if (n == 0) {
    printf("no OpenCL device: nothing to test\n");
    return 77;
  }
  g_dev = devs[0];
  if (argc == 3 && strcmp(argv[1], "--cache-child") == 0) return cache_child(argv[2], 0);
  if (argc == 3 && strcmp(argv[1], "--cache-fill") == 0) return cache_child(argv[2], 1);

  attn_device_info info;
  memset(&info, 0, sizeof info);
  if (clrt_device_info(&g_dev, &info) != ATTN_OK) {
    printf("device info failed: %s\n", g_err);
    return 1;
  }
  printf("suite opencl runs on: %s (%s, %s)\n", info.name, info.vendor, info.driver);

  snprintf(g_nonce, sizeof g_nonce, "%d_%ld", (int)getpid(), (long)time(NULL));
  const char *base = getenv("TMPDIR");
  snprintf(g_tmp, sizeof g_tmp, "%s/attn_test_opencl.XXXXXX", base && *base ? base : "/tmp");
  if (!mkdtemp(g_tmp)) {
    perror("mkdtemp");
    return 1;
  }
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_error_names),
      cmocka_unit_test(test_buffers),
      cmocka_unit_test(test_cache_dir_resolution),
      cmocka_unit_test(test_cache_reuse_across_processes),
      cmocka_unit_test(test_cache_corrupt),
      cmocka_unit_test(test_cache_fifo),
      cmocka_unit_test(test_cache_forged),
      cmocka_unit_test(test_cache_truncated),
      cmocka_unit_test(test_cache_foreign),
      cmocka_unit_test(test_cache_stale),
      cmocka_unit_test(test_cache_concurrent_fill),
      cmocka_unit_test(test_cache_disabled),
      cmocka_unit_test(test_peaks_implausible),
      cmocka_unit_test(test_cache_unwritable),
      cmocka_unit_test(test_kernel_dir_broken),
      cmocka_unit_test(test_kernel_dir_good),
      cmocka_unit_test(test_kernel_dir_public_api),
      cmocka_unit_test(test_cache_stale_temporaries),
      cmocka_unit_test(test_cache_unsafe_dir),
      cmocka_unit_test(test_cache_unsafe_entry),
      cmocka_unit_test(test_kernel_dir_unsafe),
      cmocka_unit_test(test_unsafe_cache_public_api),
  };
  int rc = cmocka_run_group_tests(tests, NULL, NULL);
  char cmd[512];
  snprintf(cmd, sizeof cmd, "rm -rf '%s'", g_tmp);
  if (system(cmd) != 0) fprintf(stderr, "could not remove %s\n", g_tmp);
  return rc;
}
