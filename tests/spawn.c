/* Running the attn command from the outside (see spawn.h). */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <fcntl.h>
#include <spawn.h>
#include <stdbool.h>
#include <stdio.h>
#include <string.h>
#include <sys/wait.h>

#include "spawn.h"

extern char **environ;

void spawn_slurp(const char *path, char *buf, size_t cap) {
  buf[0] = '\0';
  FILE *f = fopen(path, "rb");
  if (!f) return;
  size_t n = fread(buf, 1, cap - 1, f);
  buf[n] = '\0';
  fclose(f);
}

void spawn_run(spawn_result *r, const char *bin, const char *dir, const char *const *args) {
  const char *argv[64];
  int n = 0;
  argv[n++] = bin;
  for (; args[n - 1] && n < 63; n++) argv[n] = args[n - 1];
  argv[n] = NULL;
  char o[320], e[320];
  snprintf(o, sizeof o, "%s/stdout.txt", dir);
  snprintf(e, sizeof e, "%s/stderr.txt", dir);
  posix_spawn_file_actions_t fa;
  posix_spawn_file_actions_init(&fa);
  posix_spawn_file_actions_addopen(&fa, 0, "/dev/null", O_RDONLY, 0);
  posix_spawn_file_actions_addopen(&fa, 1, o, O_WRONLY | O_CREAT | O_TRUNC, 0600);
  posix_spawn_file_actions_addopen(&fa, 2, e, O_WRONLY | O_CREAT | O_TRUNC, 0600);
  pid_t pid;
  int rc = posix_spawn(&pid, bin, &fa, NULL, (char *const *)argv, environ);
  posix_spawn_file_actions_destroy(&fa);
  assert_int_equal(rc, 0);
  int st;
  assert_int_equal(waitpid(pid, &st, 0), pid);
  r->status = WIFEXITED(st) ? WEXITSTATUS(st) : -1;
  spawn_slurp(o, r->out, sizeof r->out);
  spawn_slurp(e, r->err, sizeof r->err);
}

void spawn_expect_status(const spawn_result *r, int want) {
  if (r->status != want) {
    print_error("exit %d, want %d\nstdout:\n%s\nstderr:\n%s\n", r->status, want, r->out, r->err);
    fail();
  }
}

void spawn_expect_error_line(const spawn_result *r, const char *prefix, const char *substr) {
  size_t len = strlen(r->err);
  bool one_line = len > 0 && r->err[len - 1] == '\n' && strchr(r->err, '\n') == r->err + len - 1;
  if (!one_line || strncmp(r->err, prefix, strlen(prefix)) != 0 || !strstr(r->err, substr)) {
    print_error("stderr \"%s\": want one line \"%s...%s...\"\n", r->err, prefix, substr);
    fail();
  }
}
