/* Runs one fuzz harness over every file of its committed corpus
 * (FUZZ_CORPUS_DIR/FUZZ_NAME, or the files and directories given as
 * arguments), so that `make check` replays the seeds and every crash the
 * fuzzers ever found without needing clang or libFuzzer. A broken invariant
 * aborts (see fuzz.h); a crash is a crash. */
#include <dirent.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "fuzz.h"

#ifndef FUZZ_CORPUS_DIR
#error "FUZZ_CORPUS_DIR must name the corpus root"
#endif

static int cmp_str(const void *a, const void *b) {
  return strcmp(*(char *const *)a, *(char *const *)b);
}

/* Returns the number of files run, or -1 on an I/O error. */
static int run_file(const char *path) {
  FILE *f = fopen(path, "rb");
  if (!f) {
    perror(path);
    return -1;
  }
  uint8_t *buf = NULL;
  size_t len = 0, cap = 0, n;
  uint8_t chunk[4096];
  while ((n = fread(chunk, 1, sizeof chunk, f)) > 0) {
    if (len + n > cap) {
      cap = (len + n) * 2;
      uint8_t *nb = realloc(buf, cap);
      if (!nb) {
        free(buf);
        fclose(f);
        fprintf(stderr, "%s: out of memory\n", path);
        return -1;
      }
      buf = nb;
    }
    memcpy(buf + len, chunk, n);
    len += n;
  }
  int err = ferror(f);
  fclose(f);
  if (err) {
    free(buf);
    fprintf(stderr, "%s: read error\n", path);
    return -1;
  }
  /* Exactly the bytes, in a block of exactly their size, as libFuzzer does,
   * so that an over-read is caught by the sanitizers here too. */
  uint8_t *exact = malloc(len ? len : 1);
  if (!exact) {
    free(buf);
    return -1;
  }
  if (len) memcpy(exact, buf, len);
  free(buf);
  LLVMFuzzerTestOneInput(exact, len);
  free(exact);
  return 1;
}

static int run_path(const char *path) {
  struct stat sb;
  if (stat(path, &sb) != 0) {
    perror(path);
    return -1;
  }
  if (!S_ISDIR(sb.st_mode)) return run_file(path);
  DIR *d = opendir(path);
  if (!d) {
    perror(path);
    return -1;
  }
  char **names = NULL;
  size_t n = 0;
  struct dirent *e;
  while ((e = readdir(d)) != NULL) {
    if (e->d_name[0] == '.') continue;
    char **nn = realloc(names, (n + 1) * sizeof *nn);
    if (!nn || !(nn[n] = strdup(e->d_name))) {
      names = nn ? nn : names;
      break;
    }
    names = nn;
    n++;
  }
  closedir(d);
  qsort(names, n, sizeof *names, cmp_str); /* the same order everywhere */
  int total = 0;
  for (size_t i = 0; i < n; i++) {
    char p[4096];
    snprintf(p, sizeof p, "%s/%s", path, names[i]);
    int r = total >= 0 ? run_path(p) : 0;
    total = r < 0 ? -1 : total + r;
    free(names[i]);
  }
  free(names);
  return total;
}

int main(int argc, char **argv) {
  LLVMFuzzerInitialize(&argc, &argv);
  int total = 0;
  if (argc > 1) {
    for (int i = 1; i < argc && total >= 0; i++) {
      int r = run_path(argv[i]);
      total = r < 0 ? -1 : total + r;
    }
  } else {
    total = run_path(FUZZ_CORPUS_DIR "/" FUZZ_NAME);
  }
  if (total < 0) return 99; /* the corpus is part of the test: missing is an error */
  if (total == 0) {
    fprintf(stderr, "replay %s: empty corpus\n", FUZZ_NAME);
    return 99;
  }
  printf("replay %s: %d inputs, no invariant broken\n", FUZZ_NAME, total);
  return 0;
}
