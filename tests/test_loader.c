/* The module loader, against the misbehaving test plugins (plugins/
 * test_plugin.c built with -D variants) and against files that are not
 * modules at all; then the public API on top of it: attn_open, attn_close,
 * attn_list_devices.
 *
 * attn__registry_scan builds private registries, so those tests can scan
 * anything. The process-wide registry is scanned once, on the first public
 * call: main points ATTN_BACKEND_PATH at the test plugin directory before
 * that, and every public-API test below uses that one registry. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>
#include <math.h>
#include <pthread.h>
#include <sys/stat.h>
#include <unistd.h>

#include "internal.h"

static char plugin_dir[1024];
static char tmp_dir[1024];

static void plugin_path(char *dst, size_t size, const char *name) {
  snprintf(dst, size, "%s/attn_%s.so", plugin_dir, name);
}

/* Modules in plugin_dir that load, and that are refused. */
#define NGOOD 8
#define NBAD 4

static const attn_backend *find_be(const attn_registry *reg, const char *name) {
  for (int i = 0; i < reg->nbackends; i++)
    if (strcmp(reg->backends[i].name, name) == 0) return &reg->backends[i];
  return NULL;
}

static const attn_load_failure *find_fail(const attn_registry *reg, const char *name) {
  for (int i = 0; i < reg->nfailures; i++)
    if (strcmp(reg->failures[i].name, name) == 0) return &reg->failures[i];
  return NULL;
}

static void assert_contains(const char *hay, const char *needle) {
  if (!strstr(hay, needle)) fail_msg("\"%s\" does not contain \"%s\"", hay, needle);
}

/* Scan one plugin by its file path; it must fail with a reason that
 * contains each of the NULL-terminated fragments. */
static void expect_refused(const char *name, ...) {
  char path[1200];
  plugin_path(path, sizeof path, name);
  attn_registry reg;
  assert_int_equal(attn__registry_scan(path, &reg), ATTN_OK);
  assert_int_equal(reg.nbackends, 0);
  assert_int_equal(reg.nfailures, 1);
  const attn_load_failure *f = &reg.failures[0];
  assert_string_equal(f->name, name);
  assert_string_equal(f->path, path);
  va_list ap;
  va_start(ap, name);
  for (const char *frag; (frag = va_arg(ap, const char *)) != NULL;) assert_contains(f->reason, frag);
  va_end(ap);
  attn__registry_free(&reg);
}

/* ---- each test plugin by file path ---------------------------------------- */

static void test_good_by_path(void **state) {
  (void)state;
  char path[1200];
  plugin_path(path, sizeof path, "tp_good");
  attn_registry reg;
  assert_int_equal(attn__registry_scan(path, &reg), ATTN_OK);
  assert_int_equal(reg.nfailures, 0);
  assert_int_equal(reg.nbackends, 1);
  const attn_backend *be = &reg.backends[0];
  assert_string_equal(be->name, "tp_good");
  assert_string_equal(be->path, path);
  assert_non_null(be->handle);
  assert_non_null(be->vt);
  assert_int_equal(be->ndev, 2);
  for (int i = 0; i < 2; i++) {
    char sel[64];
    snprintf(sel, sizeof sel, "tp_good:%d", i);
    assert_string_equal(be->dev[i].selector, sel);
    assert_string_equal(be->dev[i].backend, "tp_good");
    assert_int_equal(be->dev[i].index, i);
  }
  assert_string_equal(be->dev[0].name, "Test Plugin Host CPU");
  assert_int_equal(be->dev[0].type, ATTN_DEVICE_CPU);
  assert_int_equal(be->dev[1].type, ATTN_DEVICE_ACCELERATOR);
  attn__registry_free(&reg);
  assert_int_equal(reg.nbackends, 0);
  attn__registry_free(NULL); /* no-op */
}

static void test_badabi(void **state) {
  (void)state;
  char path[1200];
  plugin_path(path, sizeof path, "tp_badabi");
  /* Both versions, and the file (the failure's path; attn_open's message
   * and `attn devices` print it with the reason). */
  expect_refused("tp_badabi", "plugin ABI 99.", "expects ABI 2.x", NULL);
}

/* A module of the 1.x ABI (per-stage slots, untyped views) is refused with
 * both versions, never called. */
static void test_abi1(void **state) {
  (void)state;
  expect_refused("tp_abi1", "plugin ABI 1.2", "expects ABI 2.x (at most 2.4)", "rebuild", NULL);
}

static void test_noentry(void **state) {
  (void)state;
  expect_refused("tp_noentry", "attn_backend_entry", NULL);
}

static void test_nullslot(void **state) {
  (void)state;
  expect_refused("tp_nullslot", "synchronize", "NULL", NULL);
}

static void test_probe0(void **state) {
  (void)state;
  char path[1200];
  plugin_path(path, sizeof path, "tp_probe0");
  attn_registry reg;
  assert_int_equal(attn__registry_scan(path, &reg), ATTN_OK);
  /* 0 devices is "not usable here", not a failure. */
  assert_int_equal(reg.nfailures, 0);
  assert_int_equal(reg.nbackends, 1);
  assert_string_equal(reg.backends[0].name, "tp_probe0");
  assert_int_equal(reg.backends[0].ndev, 0);
  attn__registry_free(&reg);
}

static void test_openfail_allocfail_load(void **state) {
  (void)state;
  /* They misbehave only later, in open / buffer_alloc. */
  const char *names[] = {"tp_openfail", "tp_allocfail"};
  for (int i = 0; i < 2; i++) {
    char path[1200];
    plugin_path(path, sizeof path, names[i]);
    attn_registry reg;
    assert_int_equal(attn__registry_scan(path, &reg), ATTN_OK);
    assert_int_equal(reg.nfailures, 0);
    assert_int_equal(reg.nbackends, 1);
    assert_string_equal(reg.backends[0].name, names[i]);
    assert_int_equal(reg.backends[0].ndev, 2);
    attn__registry_free(&reg);
  }
}

/* ---- a whole directory ------------------------------------------------------ */

static void test_whole_dir(void **state) {
  (void)state;
  attn_registry reg;
  assert_int_equal(attn__registry_scan(plugin_dir, &reg), ATTN_OK);
  /* Loaded in sorted file name order. */
  const char *loaded[] = {"template",  "tp_abi20", "tp_abi22",   "tp_allocfail", "tp_good",
                          "tp_nobf16", "tp_openfail", "tp_probe0"};
  assert_int_equal(reg.nbackends, NGOOD);
  for (int i = 0; i < NGOOD; i++) assert_string_equal(reg.backends[i].name, loaded[i]);
  const char *failed[] = {"tp_abi1", "tp_badabi", "tp_noentry", "tp_nullslot"};
  assert_int_equal(reg.nfailures, NBAD);
  for (int i = 0; i < NBAD; i++) assert_string_equal(reg.failures[i].name, failed[i]);
  const attn_load_failure *badabi = find_fail(&reg, "tp_badabi");
  const attn_load_failure *nullslot = find_fail(&reg, "tp_nullslot");
  assert_non_null(badabi);
  assert_non_null(nullslot);
  assert_contains(badabi->reason, "99");
  assert_contains(nullslot->reason, "synchronize");

  /* The template: one CPU device. */
  const attn_backend *tpl = find_be(&reg, "template");
  assert_non_null(tpl);
  assert_int_equal(tpl->ndev, 1);
  assert_string_equal(tpl->dev[0].selector, "template:0");
  assert_int_equal(tpl->dev[0].type, ATTN_DEVICE_CPU);
  attn__registry_free(&reg);

  /* A trailing slash and empty entries change nothing (an empty entry is
   * never the current directory). */
  char search[2200];
  snprintf(search, sizeof search, "::%s/:", plugin_dir);
  assert_int_equal(attn__registry_scan(search, &reg), ATTN_OK);
  assert_int_equal(reg.nbackends, NGOOD);
  assert_int_equal(reg.nfailures, NBAD);
  attn__registry_free(&reg);

  assert_int_equal(attn__registry_scan("", &reg), ATTN_OK);
  assert_int_equal(reg.nbackends, 0);
  assert_int_equal(reg.nfailures, 0);
  attn__registry_free(&reg);
}

static void copy_file(const char *from, const char *to);

static void test_first_one_wins(void **state) {
  (void)state;
  char good[1200], copy[1200], search[2400];
  plugin_path(good, sizeof good, "tp_good");

  /* The same file reached twice (by name, then through its directory) is
   * one module: neither a second backend nor a failure. */
  snprintf(search, sizeof search, "%s:%s", good, plugin_dir);
  attn_registry reg;
  assert_int_equal(attn__registry_scan(search, &reg), ATTN_OK);
  assert_int_equal(reg.nbackends, NGOOD);
  assert_string_equal(reg.backends[0].name, "tp_good");
  assert_string_equal(reg.backends[0].path, good);
  assert_int_equal(reg.nfailures, NBAD);
  assert_null(find_fail(&reg, "tp_good"));
  attn__registry_free(&reg);

  /* A different file with the same backend name is shadowed by the first,
   * and its record names the one that won. */
  snprintf(copy, sizeof copy, "%s/attn_tp_good.so", tmp_dir);
  copy_file(good, copy);
  snprintf(search, sizeof search, "%s:%s", good, copy);
  assert_int_equal(attn__registry_scan(search, &reg), ATTN_OK);
  assert_int_equal(reg.nbackends, 1);
  assert_string_equal(reg.backends[0].path, good);
  assert_int_equal(reg.nfailures, 1);
  assert_string_equal(reg.failures[0].path, copy);
  assert_contains(reg.failures[0].reason, "shadowed");
  assert_contains(reg.failures[0].reason, good);
  attn__registry_free(&reg);
  unlink(copy);
}

/* ---- things that are not modules ------------------------------------------- */

static void write_file(const char *path, const void *data, size_t n) {
  FILE *fp = fopen(path, "wb");
  assert_non_null(fp);
  assert_int_equal(fwrite(data, 1, n, fp), n);
  assert_int_equal(fclose(fp), 0);
}

static void copy_file(const char *from, const char *to) {
  FILE *in = fopen(from, "rb");
  assert_non_null(in);
  FILE *out = fopen(to, "wb");
  assert_non_null(out);
  char buf[65536];
  size_t n;
  while ((n = fread(buf, 1, sizeof buf, in)) > 0) assert_int_equal(fwrite(buf, 1, n, out), n);
  fclose(in);
  assert_int_equal(fclose(out), 0);
}

static void test_not_a_module(void **state) {
  (void)state;
  char junk[1200], trunc[1200], other[1200], good[1200];
  snprintf(junk, sizeof junk, "%s/attn_junk.so", tmp_dir);
  snprintf(trunc, sizeof trunc, "%s/attn_trunc.so", tmp_dir);
  snprintf(other, sizeof other, "%s/libnotamodule.so", tmp_dir);
  const char text[] = "this is not a shared object\n";
  write_file(junk, text, sizeof text - 1);
  write_file(other, text, sizeof text - 1); /* not attn_*.so: never tried */

  /* The first 100 bytes of a good module: a valid ELF header, then nothing. */
  plugin_path(good, sizeof good, "tp_good");
  unsigned char head[100];
  FILE *fp = fopen(good, "rb");
  assert_non_null(fp);
  assert_int_equal(fread(head, 1, sizeof head, fp), sizeof head);
  fclose(fp);
  write_file(trunc, head, sizeof head);

  attn_registry reg;
  assert_int_equal(attn__registry_scan(tmp_dir, &reg), ATTN_OK);
  assert_int_equal(reg.nbackends, 0);
  assert_int_equal(reg.nfailures, 2);
  assert_string_equal(reg.failures[0].name, "junk");
  assert_string_equal(reg.failures[0].path, junk);
  assert_contains(reg.failures[0].reason, "dlopen failed");
  assert_string_equal(reg.failures[1].name, "trunc");
  assert_string_equal(reg.failures[1].path, trunc);
  assert_contains(reg.failures[1].reason, "dlopen failed");
  /* dlerror's text follows, so the user sees why. */
  assert_true(strlen(reg.failures[1].reason) > strlen("dlopen failed: "));
  attn__registry_free(&reg);

  /* A file given explicitly is tried whatever its name. */
  assert_int_equal(attn__registry_scan(other, &reg), ATTN_OK);
  assert_int_equal(reg.nbackends, 0);
  assert_int_equal(reg.nfailures, 1);
  assert_contains(reg.failures[0].reason, "dlopen failed");
  attn__registry_free(&reg);

  unlink(junk);
  unlink(trunc);
  unlink(other);
}

static void test_bad_paths(void **state) {
  (void)state;
  attn_registry reg;
  /* Relative entries are refused, never resolved against the cwd. */
  assert_int_equal(attn__registry_scan("plugins/.libs:attn_tp_good.so", &reg), ATTN_OK);
  assert_int_equal(reg.nbackends, 0);
  assert_int_equal(reg.nfailures, 2);
  assert_string_equal(reg.failures[0].path, "plugins/.libs");
  assert_contains(reg.failures[0].reason, "relative");
  assert_string_equal(reg.failures[1].path, "attn_tp_good.so");
  assert_string_equal(reg.failures[1].name, "tp_good");
  assert_contains(reg.failures[1].reason, "relative");
  attn__registry_free(&reg);

  /* "." is relative too, even when it holds modules. */
  char cwd[1024];
  assert_non_null(getcwd(cwd, sizeof cwd));
  assert_int_equal(chdir(plugin_dir), 0);
  assert_int_equal(attn__registry_scan(".", &reg), ATTN_OK);
  assert_int_equal(reg.nbackends, 0);
  assert_int_equal(reg.nfailures, 1);
  attn__registry_free(&reg);
  assert_int_equal(chdir(cwd), 0);

  char missing[1200];
  snprintf(missing, sizeof missing, "%s/no-such-dir", tmp_dir);
  assert_int_equal(attn__registry_scan(missing, &reg), ATTN_OK);
  assert_int_equal(reg.nbackends, 0);
  assert_int_equal(reg.nfailures, 1);
  assert_string_equal(reg.failures[0].path, missing);
  assert_contains(reg.failures[0].reason, "No such file");
  attn__registry_free(&reg);

  assert_int_equal(attn__registry_scan(NULL, NULL), ATTN_ERR_INVALID_ARG);
}

/* Issue 13, item 1: a module directory or file that others could have
 * written (or that another user owns) is refused with its reason, like a
 * relative entry; the sticky bit makes a shared directory fine. */
static void expect_one_failure(const char *search, const char *path, const char *frag1,
                               const char *frag2) {
  attn_registry reg;
  assert_int_equal(attn__registry_scan(search, &reg), ATTN_OK);
  assert_int_equal(reg.nbackends, 0);
  assert_int_equal(reg.nfailures, 1);
  assert_string_equal(reg.failures[0].path, path);
  assert_contains(reg.failures[0].reason, frag1);
  assert_contains(reg.failures[0].reason, frag2);
  printf("%s: %s\n", path, reg.failures[0].reason);
  attn__registry_free(&reg);
}

static void test_unsafe_paths(void **state) {
  (void)state;
  char good[1200], d[1200], copy[1300];
  plugin_path(good, sizeof good, "tp_good");
  snprintf(d, sizeof d, "%s/unsafe", tmp_dir);
  assert_int_equal(mkdir(d, 0755), 0);
  snprintf(copy, sizeof copy, "%s/attn_tp_good.so", d);
  copy_file(good, copy);
  assert_int_equal(chmod(copy, 0755), 0);

  assert_int_equal(chmod(d, 0777), 0);
  expect_one_failure(d, d, "unsafe module directory", "without the sticky bit (mode 0777)");
  assert_int_equal(chmod(d, 0775), 0);
  expect_one_failure(d, d, "unsafe module directory", "writable by its group");

  /* The file itself, found through its directory or named. */
  assert_int_equal(chmod(d, 0755), 0);
  assert_int_equal(chmod(copy, 0757), 0);
  expect_one_failure(d, copy, "unsafe module file", "writable by others (mode 0757)");
  expect_one_failure(copy, copy, "unsafe module file", "writable by others");

  attn_registry reg;
  /* Sticky and others-writable, like /tmp: fine. */
  assert_int_equal(chmod(copy, 0755), 0);
  assert_int_equal(chmod(d, 01777), 0);
  assert_int_equal(attn__registry_scan(d, &reg), ATTN_OK);
  assert_int_equal(reg.nfailures, 0);
  assert_int_equal(reg.nbackends, 1);
  assert_string_equal(reg.backends[0].name, "tp_good");
  attn__registry_free(&reg);

  /* Another owner (the suite runs as root; elsewhere chown is refused). */
  assert_int_equal(chmod(d, 0755), 0);
  if (chown(copy, 12345, 12345) == 0) {
    expect_one_failure(d, copy, "unsafe module file", "owned by uid 12345");
    assert_int_equal(chown(copy, geteuid(), getegid()), 0);
    assert_int_equal(chown(d, 12345, 12345), 0);
    expect_one_failure(d, d, "unsafe module directory", "owned by uid 12345");
    assert_int_equal(chown(d, geteuid(), getegid()), 0);
  } else {
    printf("chown to uid 12345 not permitted: the foreign-owner cases are not run\n");
  }
  unlink(copy);
  assert_int_equal(rmdir(d), 0);
}

/* ---- plugin faults next to good modules ------------------------------------ */

/* The probe-fails plugin is built into a directory of its own
 * (plugins/faults, see Makefile.am) so that the scans of plugin_dir above
 * keep their counts. */
static void probefail_dir(char *dst, size_t size) {
  snprintf(dst, size, "%s/../faults/.libs", plugin_dir);
}

static void test_probefail(void **state) {
  (void)state;
  char dir[1100], path[1200];
  probefail_dir(dir, sizeof dir);
  snprintf(path, sizeof path, "%s/attn_tp_probefail.so", dir);
  attn_registry reg;
  assert_int_equal(attn__registry_scan(path, &reg), ATTN_OK);
  assert_int_equal(reg.nbackends, 0);
  assert_int_equal(reg.nfailures, 1);
  assert_string_equal(reg.failures[0].name, "tp_probefail");
  assert_string_equal(reg.failures[0].path, path);
  /* The reason says it was the probe, with the status it returned. */
  char status[16];
  snprintf(status, sizeof status, "%d", (int)ATTN_ERR_BACKEND);
  assert_contains(reg.failures[0].reason, "probe");
  assert_contains(reg.failures[0].reason, status);
  /* ... its name, and the module's own message. */
  assert_contains(reg.failures[0].reason, attn_status_str(ATTN_ERR_BACKEND));
  assert_contains(reg.failures[0].reason, "the driver failed to enumerate its devices");
  attn__registry_free(&reg);
}

/* Every kind of broken module in one scan (not a shared object, truncated,
 * wrong ABI major, no entry point, a NULL required slot, a failing probe),
 * before and after the good ones: each is skipped with its own reason and
 * the good modules load with the same devices as when scanned alone, and
 * work. */
static void test_faulty_modules_affect_nothing_else(void **state) {
  (void)state;
  char junk[1200], trunc[1200], good[1200], fdir[1100];
  snprintf(junk, sizeof junk, "%s/attn_junk.so", tmp_dir);
  snprintf(trunc, sizeof trunc, "%s/attn_trunc.so", tmp_dir);
  const char text[] = "this is not a shared object\n";
  write_file(junk, text, sizeof text - 1);
  plugin_path(good, sizeof good, "tp_good");
  unsigned char head[100];
  FILE *fp = fopen(good, "rb");
  assert_non_null(fp);
  assert_int_equal(fread(head, 1, sizeof head, fp), sizeof head);
  fclose(fp);
  write_file(trunc, head, sizeof head);
  probefail_dir(fdir, sizeof fdir);

  attn_registry alone;
  assert_int_equal(attn__registry_scan(plugin_dir, &alone), ATTN_OK);
  assert_int_equal(alone.nbackends, NGOOD);

  char search[2][4000];
  snprintf(search[0], sizeof search[0], "%s:%s:%s", tmp_dir, fdir, plugin_dir);
  snprintf(search[1], sizeof search[1], "%s:%s:%s", plugin_dir, fdir, tmp_dir);
  for (int o = 0; o < 2; o++) {
    attn_registry reg;
    assert_int_equal(attn__registry_scan(search[o], &reg), ATTN_OK);
    /* The good modules, in the same order, with the same devices. */
    assert_int_equal(reg.nbackends, alone.nbackends);
    for (int i = 0; i < reg.nbackends; i++) {
      assert_string_equal(reg.backends[i].name, alone.backends[i].name);
      assert_string_equal(reg.backends[i].path, alone.backends[i].path);
      assert_int_equal(reg.backends[i].ndev, alone.backends[i].ndev);
      for (int d = 0; d < reg.backends[i].ndev; d++)
        assert_string_equal(reg.backends[i].dev[d].selector, alone.backends[i].dev[d].selector);
    }
    /* Each broken one skipped once, with its reason. */
    struct {
      const char *name, *why;
    } bad[] = {{"junk", "dlopen failed"},   {"trunc", "dlopen failed"},
               {"tp_probefail", "probe"},   {"tp_badabi", "plugin ABI 99."},
               {"tp_noentry", "attn_backend_entry"}, {"tp_nullslot", "synchronize"},
               {"tp_abi1", "plugin ABI 1.2"}};
    assert_int_equal(reg.nfailures, 7);
    for (size_t b = 0; b < sizeof bad / sizeof bad[0]; b++) {
      const attn_load_failure *f = find_fail(&reg, bad[b].name);
      if (!f) fail_msg("%s: no failure recorded", bad[b].name);
      assert_contains(f->reason, bad[b].why);
    }
    /* A good module of this registry opens and runs. */
    const attn_backend *be = find_be(&reg, "tp_good");
    assert_non_null(be);
    attn_context *ctx = NULL;
    assert_int_equal(attn__context_open(be, 1, &ctx), ATTN_OK);
    int64_t shape[1] = {8};
    attn_tensor *t = NULL;
    float in[8], out[8];
    for (int i = 0; i < 8; i++) in[i] = 1.0f + (float)i;
    assert_int_equal(attn_tensor_create(ctx, 1, shape, &t), ATTN_OK);
    assert_int_equal(attn_tensor_write(t, in, 8), ATTN_OK);
    assert_int_equal(attn_tensor_read(t, out, 8), ATTN_OK);
    assert_memory_equal(in, out, sizeof in);
    attn_tensor_free(t);
    attn_close(ctx);
    attn__registry_free(&reg);
  }
  attn__registry_free(&alone);
  unlink(junk);
  unlink(trunc);
}

/* ---- the public API over the process-wide registry ------------------------- */

static void test_open_good(void **state) {
  (void)state;
  attn_context *ctx = NULL;
  attn_device_info info;
  struct {
    const char *sel;
    int index;
  } cases[] = {{"tp_good", 0},           {"tp_good:1", 1},         {"tp_good:accelerator", 1},
               {"tp_good:CPU", 0},       {"tp_good:host acc", 1},  {"nosuch,tp_good:1", 1},
               {"tp_probe0,tp_good", 0}, {"tp_openfail,tp_good", 0}};
  for (size_t c = 0; c < sizeof cases / sizeof cases[0]; c++) {
    attn_status st = attn_open(cases[c].sel, &ctx);
    if (st != ATTN_OK) fail_msg("attn_open(\"%s\"): %s", cases[c].sel, attn_last_error());
    assert_int_equal(attn_context_info(ctx, &info), ATTN_OK);
    assert_string_equal(info.backend, "tp_good");
    assert_int_equal(info.index, cases[c].index);
    char sel[64];
    snprintf(sel, sizeof sel, "tp_good:%d", cases[c].index);
    assert_string_equal(info.selector, sel);
    assert_int_equal(attn_synchronize(ctx), ATTN_OK);
    attn_close(ctx);
  }
}

static void test_open_openfail(void **state) {
  (void)state;
  attn_context *ctx = (attn_context *)&ctx;
  assert_int_equal(attn_open("tp_openfail", &ctx), ATTN_ERR_BACKEND);
  assert_null(ctx); /* and nothing leaked: LeakSanitizer checks under --enable-sanitizers */
  const char *msg = attn_last_error();
  assert_contains(msg, "attn_open: ");
  assert_contains(msg, "tp_openfail: device 0 refused to open (test plugin)");
  /* Both devices refuse; the selector names the device that was tried. */
  assert_contains(msg, "tp_openfail:0");
}

static void test_allocfail(void **state) {
  (void)state;
  attn_context *ctx = NULL;
  assert_int_equal(attn_open("tp_allocfail", &ctx), ATTN_OK);
  int64_t shape[2] = {4, 8};
  attn_tensor *t = (attn_tensor *)&t;
  assert_int_equal(attn_tensor_create(ctx, 2, shape, &t), ATTN_ERR_DEVICE_MEMORY);
  assert_contains(attn_last_error(), "attn_tensor_create");
  assert_contains(attn_last_error(), "device memory (test plugin)");
  /* The context is still usable after the failure. */
  assert_int_equal(attn_synchronize(ctx), ATTN_OK);
  attn_close(ctx);
}

static void test_close_frees_live_tensors(void **state) {
  (void)state;
  attn_context *ctx = NULL;
  assert_int_equal(attn_open("tp_good", &ctx), ATTN_OK);
  int64_t shape[1] = {16};
  attn_tensor *t = NULL;
  assert_int_equal(attn_tensor_create(ctx, 1, shape, &t), ATTN_OK);
  float in[16], out[16];
  for (int i = 0; i < 16; i++) in[i] = (float)i * 0.5f;
  assert_int_equal(attn_tensor_write(t, in, 16), ATTN_OK);
  assert_int_equal(attn_tensor_read(t, out, 16), ATTN_OK);
  assert_memory_equal(in, out, sizeof in);
  /* t is still alive: attn_close frees it (LeakSanitizer checks). */
  attn_close(ctx);
}

/* The template and tp_good backends' linear against a double loop, and
 * the template's sdpa refused through supports() with its reason. */
static attn_tensor *make_tensor(attn_context *ctx, int ndim, const int64_t *shape,
                                const float *data, size_t n) {
  attn_tensor *t = NULL;
  assert_int_equal(attn_tensor_create(ctx, ndim, shape, &t), ATTN_OK);
  if (data) assert_int_equal(attn_tensor_write(t, data, n), ATTN_OK);
  return t;
}

static void test_backend_linear(void **state) {
  (void)state;
  enum { B = 2, M = 3, K = 5, N = 4 };
  float x[B * M * K], w[N * K], bias[N], y[B * M * N];
  for (int i = 0; i < B * M * K; i++) x[i] = (float)((i * 7) % 11) / 4.0f - 1.0f;
  for (int i = 0; i < N * K; i++) w[i] = (float)((i * 5) % 13) / 8.0f - 0.75f;
  for (int i = 0; i < N; i++) bias[i] = 0.5f * (float)i - 1.0f;
  const char *backends[] = {"template", "tp_good"};
  for (int be = 0; be < 2; be++) {
    attn_context *ctx = NULL;
    assert_int_equal(attn_open(backends[be], &ctx), ATTN_OK);
    const int64_t xs[3] = {B, M, K}, ws[2] = {N, K}, bs[1] = {N}, ys[3] = {B, M, N};
    attn_tensor *tx = make_tensor(ctx, 3, xs, x, B * M * K);
    attn_tensor *tw = make_tensor(ctx, 2, ws, w, N * K);
    attn_tensor *tb = make_tensor(ctx, 1, bs, bias, N);
    attn_tensor *ty = make_tensor(ctx, 3, ys, NULL, 0);
    for (int with_bias = 0; with_bias < 2; with_bias++) {
      attn_linear_desc d;
      memset(&d, 0, sizeof d);
      d.struct_size = sizeof d;
      d.x = attn__tensor_view4(tx);
      d.w = attn__tensor_view4(tw);
      if (with_bias) d.bias = attn__tensor_view4(tb);
      d.features = with_bias ? ATTN_FEAT_BIAS : 0;
      d.y = attn__tensor_view4(ty);
      ATTN_ENTER("test_backend_linear");
      attn_status st = attn__run_linear(ctx, &d);
      if (st != ATTN_OK) fail_msg("%s linear: %s", backends[be], attn_last_error());
      assert_int_equal(attn_tensor_read(ty, y, B * M * N), ATTN_OK);
      for (int r = 0; r < B * M; r++)
        for (int n = 0; n < N; n++) {
          double want = with_bias ? bias[n] : 0.0;
          for (int k = 0; k < K; k++) want += (double)x[r * K + k] * w[n * K + k];
          double got = y[r * N + n];
          if (fabs(got - want) > 1e-5 * (1.0 + fabs(want)))
            fail_msg("%s linear bias=%d y[%d,%d] = %g, want %g", backends[be], with_bias, r, n,
                     got, want);
        }
    }

    /* sdpa: refused with the backend's reason, not computed. */
    const int64_t qs[4] = {1, 1, 2, 4};
    attn_tensor *q = make_tensor(ctx, 4, qs, x, 8), *k = make_tensor(ctx, 4, qs, x, 8),
                *v = make_tensor(ctx, 4, qs, x, 8), *o = make_tensor(ctx, 4, qs, NULL, 0);
    attn_sdpa_args a;
    memset(&a, 0, sizeof a);
    a.struct_size = sizeof a;
    a.q = q;
    a.k = k;
    a.v = v;
    a.out = o;
    assert_int_equal(attn_sdpa(ctx, &a), ATTN_ERR_UNSUPPORTED);
    assert_contains(attn_last_error(), "attn_sdpa: ");
    assert_contains(attn_last_error(), be == 0 ? "the template backend does not implement sdpa"
                                               : "the test plugin implements linear only");
    attn_tensor_free(q);
    attn_tensor_free(k);
    attn_tensor_free(v);
    attn_tensor_free(o);
    attn_tensor_free(tx);
    attn_tensor_free(tw);
    attn_tensor_free(tb);
    attn_tensor_free(ty);
    attn_close(ctx);
  }
}

/* The ABI's growth rules with real modules. Linear of x [1,2,4] by w [3,4]
 * with every operand of type t, on backend be: returns the status, and the
 * output (checked against double on the rounded inputs) when it ran. */
static char typed_msg[512]; /* the run's message (attn_close clears attn_last_error) */
static attn_status linear_typed(const char *be, attn_dtype t, size_t desc_size) {
  attn_context *ctx = NULL;
  assert_int_equal(attn_open(be, &ctx), ATTN_OK);
  enum { M = 2, K = 4, N = 3 };
  float x[M * K], w[N * K], xr[M * K], wr[N * K], y[M * N];
  for (int i = 0; i < M * K; i++) x[i] = 0.3f * (float)i - 1.1f;
  for (int i = 0; i < N * K; i++) w[i] = 0.7f - 0.13f * (float)i;
  const int64_t xs[3] = {1, M, K}, ws[2] = {N, K}, ys[3] = {1, M, N};
  attn_tensor *tx, *tw, *ty;
  assert_int_equal(attn_tensor_create_typed(ctx, t, 3, xs, &tx), ATTN_OK);
  assert_int_equal(attn_tensor_create_typed(ctx, t, 2, ws, &tw), ATTN_OK);
  assert_int_equal(attn_tensor_create_typed(ctx, t, 3, ys, &ty), ATTN_OK);
  assert_int_equal(attn_tensor_write(tx, x, M * K), ATTN_OK);
  assert_int_equal(attn_tensor_write(tw, w, N * K), ATTN_OK);
  assert_int_equal(attn_tensor_read(tx, xr, M * K), ATTN_OK); /* as stored */
  assert_int_equal(attn_tensor_read(tw, wr, N * K), ATTN_OK);
  attn_linear_desc d;
  memset(&d, 0, sizeof d);
  d.struct_size = desc_size;
  d.x = attn__tensor_view4(tx);
  d.w = attn__tensor_view4(tw);
  d.y = attn__tensor_view4(ty);
  const attn_view *views[3] = {&d.x, &d.w, &d.y};
  d.features = attn__dtype_features(views, 3);
  ATTN_ENTER("test_linear_typed");
  attn_status st = attn__run_linear(ctx, &d);
  snprintf(typed_msg, sizeof typed_msg, "%s", attn_last_error());
  if (st == ATTN_OK) {
    assert_int_equal(attn_tensor_read(ty, y, M * N), ATTN_OK);
    for (int m = 0; m < M; m++)
      for (int n = 0; n < N; n++) {
        double want = 0;
        for (int k = 0; k < K; k++) want += (double)xr[m * K + k] * wr[n * K + k];
        /* one rounding to the output type: 2^-8 relative for bf16 */
        const double tol = t == ATTN_F32 ? 1e-6 : t == ATTN_F16 ? 1e-3 : 8e-3;
        if (fabs(y[m * N + n] - want) > tol * (1 + fabs(want)))
          fail_msg("%s %s y[%d,%d] = %g, want %g", be, attn_dtype_str(t), m, n, y[m * N + n],
                   want);
      }
  }
  attn_close(ctx);
  return st;
}

/* The options of ABI 2.2 are never sent to an older module: the core refuses
 * the SDPA option and the merge stage itself, naming the module's version. */
static void test_abi22_options(void **state) {
  (void)state;
  attn_context *ctx = NULL;
  assert_int_equal(attn_open("tp_abi20", &ctx), ATTN_OK);
  const int64_t qs[4] = {1, 2, 4, 8}, ls[3] = {1, 2, 4};
  attn_tensor *q, *o, *l;
  assert_int_equal(attn_tensor_create(ctx, 4, qs, &q), ATTN_OK);
  assert_int_equal(attn_tensor_create(ctx, 4, qs, &o), ATTN_OK);
  assert_int_equal(attn_tensor_create(ctx, 3, ls, &l), ATTN_OK);
  attn_sdpa_args a = ATTN_SDPA_ARGS_INIT;
  a.q = q, a.k = q, a.v = q, a.out = o;
  a.has_window = true, a.window_left = 2, a.window_right = 0;
  assert_int_equal(attn_sdpa(ctx, &a), ATTN_ERR_UNSUPPORTED);
  assert_contains(attn_last_error(), "attn_sdpa: backend tp_abi20 (ABI 2.0) cannot do window");
  a.has_window = false, a.softcap = 3.0f;
  assert_int_equal(attn_sdpa(ctx, &a), ATTN_ERR_UNSUPPORTED);
  assert_contains(attn_last_error(), "(ABI 2.0) cannot do softcap");
  assert_int_equal(attn_merge(ctx, q, l, q, l, o, NULL), ATTN_ERR_UNSUPPORTED);
  assert_contains(attn_last_error(), "attn_merge: backend tp_abi20 (ABI 2.0) cannot do merge");
  assert_int_equal(attn_feature_minor(13), 2); /* sinks */
  attn_tensor_free(q), attn_tensor_free(o), attn_tensor_free(l);
  attn_close(ctx);
}

/* The stages of ABI 2.3 (rope, rmsnorm) and their bits are never sent to an
 * older module: the core refuses them itself, naming the module's version
 * and the stage's; a current module that lacks a stage refuses it in
 * supports(). */
static void test_abi23_stages(void **state) {
  (void)state;
  const char *be[2] = {"tp_abi22", "tp_abi20"};
  const char *ver[2] = {"(ABI 2.2)", "(ABI 2.0)"};
  for (int i = 0; i < 2; i++) {
    attn_context *ctx = NULL;
    assert_int_equal(attn_open(be[i], &ctx), ATTN_OK);
    const int64_t xs[4] = {1, 2, 3, 8}, ws[1] = {8};
    attn_tensor *x, *w;
    assert_int_equal(attn_tensor_create(ctx, 4, xs, &x), ATTN_OK);
    assert_int_equal(attn_tensor_create(ctx, 1, ws, &w), ATTN_OK);
    attn_rope_config c = ATTN_ROPE_CONFIG_INIT;
    c.type = ATTN_ROPE_DEFAULT;
    attn_rope_args a = ATTN_ROPE_ARGS_INIT;
    a.x = x, a.y = x, a.rope = &c;
    char want[128];
    assert_int_equal(attn_rope(ctx, &a), ATTN_ERR_UNSUPPORTED);
    snprintf(want, sizeof want, "attn_rope: backend %s %s cannot do rope (ABI 2.3)", be[i], ver[i]);
    assert_string_equal(attn_last_error(), want);
    assert_int_equal(attn_rms_norm(ctx, x, w, 1e-6f, true, x), ATTN_ERR_UNSUPPORTED);
    snprintf(want, sizeof want, "attn_rms_norm: backend %s %s cannot do rmsnorm (ABI 2.3)", be[i],
             ver[i]);
    assert_string_equal(attn_last_error(), want);
    attn_tensor_free(x), attn_tensor_free(w);
    attn_close(ctx);
  }
  /* A 2.2 module still runs what 2.2 has (the linear stage). */
  assert_int_equal(linear_typed("tp_abi22", ATTN_BF16, sizeof(attn_linear_desc)), ATTN_OK);
  /* A current module without the stage says so itself. */
  attn_context *ctx = NULL;
  assert_int_equal(attn_open("tp_good", &ctx), ATTN_OK);
  const int64_t xs[4] = {1, 1, 2, 4}, ws[1] = {4};
  attn_tensor *x, *w;
  assert_int_equal(attn_tensor_create(ctx, 4, xs, &x), ATTN_OK);
  assert_int_equal(attn_tensor_create(ctx, 1, ws, &w), ATTN_OK);
  assert_int_equal(attn_rms_norm(ctx, x, w, 1e-6f, false, x), ATTN_ERR_UNSUPPORTED);
  assert_contains(attn_last_error(), "backend tp_good (tp_good:0) cannot run this rmsnorm");
  attn_tensor_free(x), attn_tensor_free(w);
  attn_close(ctx);
  /* The bits of 2.3 */
  assert_int_equal(attn_feature_minor(14), 3);
  assert_int_equal(attn_feature_minor(15), 3);
  assert_int_equal(attn_feature_minor(13), 2);
  assert_int_equal(attn_stage_minor(ATTN_STAGE_ROPE), 3);
  assert_int_equal(attn_stage_minor(ATTN_STAGE_RMSNORM), 3);
  assert_int_equal(attn_stage_minor(ATTN_STAGE_MERGE), 2);
  char buf[32];
  assert_string_equal(attn_feature_name(14, buf, sizeof buf), "interleaved rope");
  assert_string_equal(attn_feature_name(15, buf, sizeof buf), "norm offset (1 + w)");
  /* The bit of 2.4 */
  assert_int_equal(attn_feature_minor(16), 4);
  assert_string_equal(attn_feature_name(16, buf, sizeof buf), "strided weight");
  assert_true(attn_feature_minor(17) > ATTN_ABI_MINOR);
}

static void test_abi_features(void **state) {
  (void)state;
  /* A module built against the 2.0 SDK is never sent 16-bit storage: the
   * core refuses in its name, before calling it; f32 still runs. */
  assert_int_equal(linear_typed("tp_abi20", ATTN_F32, sizeof(attn_linear_desc)), ATTN_OK);
  assert_int_equal(linear_typed("tp_abi20", ATTN_BF16, sizeof(attn_linear_desc)),
                   ATTN_ERR_UNSUPPORTED);
  assert_string_equal(typed_msg,
                      "test_linear_typed: backend tp_abi20 (ABI 2.0) cannot do bf16 storage");
  assert_int_equal(linear_typed("tp_abi20", ATTN_F16, sizeof(attn_linear_desc)),
                   ATTN_ERR_UNSUPPORTED);
  assert_contains(typed_msg, "(ABI 2.0) cannot do f16 storage");
  /* A current module that does not implement a bit refuses it by name. */
  assert_int_equal(linear_typed("tp_nobf16", ATTN_F16, sizeof(attn_linear_desc)), ATTN_OK);
  assert_int_equal(linear_typed("tp_nobf16", ATTN_BF16, sizeof(attn_linear_desc)),
                   ATTN_ERR_UNSUPPORTED);
  assert_contains(typed_msg, "tp_nobf16: linear cannot do bf16 storage");
  /* Every dtype on the test plugin and the template. */
  for (int t = 0; t < 3; t++) {
    assert_int_equal(linear_typed("tp_good", (attn_dtype)t, sizeof(attn_linear_desc)), ATTN_OK);
    assert_int_equal(linear_typed("template", (attn_dtype)t, sizeof(attn_linear_desc)), ATTN_OK);
  }
  /* A descriptor larger than the module's (a newer core's, with fields the
   * module never reads) still runs. */
  assert_int_equal(linear_typed("tp_good", ATTN_F32, sizeof(attn_linear_desc) + 64), ATTN_OK);
}

/* A feature bit the SDK does not know is named by number, and refused. */
static void test_feature_names(void **state) {
  (void)state;
  char buf[32];
  assert_string_equal(attn_feature_name(8, buf, sizeof buf), "bf16 storage");
  assert_string_equal(attn_feature_name(2, buf, sizeof buf), "causal");
  assert_string_equal(attn_feature_name(41, buf, sizeof buf), "feature bit 41");
  assert_int_equal(attn_feature_unknown(ATTN_FEAT_CAUSAL | (1ull << 41), ATTN_FEAT_KNOWN), 41);
  assert_int_equal(attn_feature_unknown(ATTN_FEAT_CAUSAL, ATTN_FEAT_KNOWN), -1);
  assert_true(attn_feature_minor(41) > ATTN_ABI_MINOR);
  assert_int_equal(attn_feature_minor(8), 1);
  assert_int_equal(attn_feature_minor(0), 0);
}

static void test_open_badabi(void **state) {
  (void)state;
  attn_context *ctx = NULL;
  char path[1200];
  plugin_path(path, sizeof path, "tp_badabi");
  assert_int_equal(attn_open("tp_badabi", &ctx), ATTN_ERR_PLUGIN);
  assert_null(ctx);
  const char *msg = attn_last_error();
  assert_contains(msg, "attn_open: ");
  assert_contains(msg, path);
  assert_contains(msg, "built for plugin ABI 99.");
  assert_contains(msg, "expects ABI 2.x");

  /* The first alternative's specific error wins over a later no-device. */
  assert_int_equal(attn_open("tp_nullslot:0,nosuch", &ctx), ATTN_ERR_PLUGIN);
  assert_contains(attn_last_error(), "synchronize");
  assert_contains(attn_last_error(), "no backend named nosuch");
}

static void test_open_nothing_matches(void **state) {
  (void)state;
  attn_context *ctx = (attn_context *)&ctx;
  assert_int_equal(attn_open("nosuch:gpu,tp_good:7,tp_probe0,tp_good:gpu,tp_good:nvidia", &ctx),
                   ATTN_ERR_NO_DEVICE);
  assert_null(ctx);
  const char *msg = attn_last_error();
  /* Each alternative says why... */
  assert_contains(msg, "\"nosuch:gpu\": no backend named nosuch");
  assert_contains(msg, "\"tp_good:7\": backend tp_good has no device 7 (it has 2)");
  assert_contains(msg, "\"tp_probe0\": backend tp_probe0 found no usable device");
  assert_contains(msg, "\"tp_good:gpu\": backend tp_good has no gpu device");
  assert_contains(msg, "\"tp_good:nvidia\": backend tp_good has no device whose name contains");
  /* ...and what exists is listed: every device and every failed module. */
  assert_contains(msg, "tp_good:0");
  assert_contains(msg, "tp_good:1");
  assert_contains(msg, "template:0");
  assert_contains(msg, "attn_tp_badabi.so");
  assert_contains(msg, "attn_tp_noentry.so");
  assert_contains(msg, "attn_tp_nullslot.so");

  /* A malformed selector also lists what exists. */
  assert_int_equal(attn_open("tp_good:", &ctx), ATTN_ERR_SELECTOR);
  assert_contains(attn_last_error(), "attn_open: selector \"tp_good:\"");
  assert_contains(attn_last_error(), "tp_good:1");
}

static void test_open_from_env(void **state) {
  (void)state;
  attn_context *ctx = NULL;
  attn_device_info info;
  setenv("ATTN_DEVICE", "tp_good:accelerator", 1);
  assert_int_equal(attn_open(NULL, &ctx), ATTN_OK);
  assert_int_equal(attn_context_info(ctx, &info), ATTN_OK);
  assert_int_equal(info.index, 1);
  attn_close(ctx);
  /* An explicit selector ignores ATTN_DEVICE. */
  assert_int_equal(attn_open("tp_good:0", &ctx), ATTN_OK);
  assert_int_equal(attn_context_info(ctx, &info), ATTN_OK);
  assert_int_equal(info.index, 0);
  attn_close(ctx);

  setenv("ATTN_DEVICE", "tp_good,,", 1);
  assert_int_equal(attn_open(NULL, &ctx), ATTN_ERR_SELECTOR);
  assert_contains(attn_last_error(), "ATTN_DEVICE");

  /* Empty means the default order, which names backends this registry
   * lacks (unless an installed libattn provides them). */
  setenv("ATTN_DEVICE", "", 1);
  attn_status st = attn_open(NULL, &ctx);
  if (st == ATTN_OK) {
    assert_int_equal(attn_context_info(ctx, &info), ATTN_OK);
    assert_true(strcmp(info.backend, "clblast") == 0 || strcmp(info.backend, "pocl") == 0 ||
                strcmp(info.backend, "ref") == 0);
    attn_close(ctx);
  } else {
    assert_int_equal(st, ATTN_ERR_NO_DEVICE);
    assert_contains(attn_last_error(), ATTN_DEFAULT_SELECTOR);
  }
  unsetenv("ATTN_DEVICE");
}

static void test_list_devices(void **state) {
  (void)state;
  assert_int_equal(attn_list_devices(NULL), ATTN_ERR_INVALID_ARG);
  assert_contains(attn_last_error(), "attn_list_devices: list");
  attn_device_list *l = NULL;
  assert_int_equal(attn_list_devices(&l), ATTN_OK);
  assert_non_null(l);
  /* ATTN_BACKEND_PATH is the plugin dir plus whatever the installed module
   * dir adds after it, so count what we know is there. */
  int found = 0;
  for (size_t i = 0; i < attn_device_list_count(l); i++) {
    const attn_device_info *d = attn_device_list_get(l, i);
    assert_non_null(d);
    if (strncmp(d->selector, "tp_good:", 8) == 0 || strcmp(d->selector, "template:0") == 0 ||
        strncmp(d->selector, "tp_allocfail:", 13) == 0 ||
        strncmp(d->selector, "tp_openfail:", 12) == 0)
      found++;
    if (strncmp(d->selector, "tp_probe0", 9) == 0) fail_msg("tp_probe0 has no devices");
  }
  assert_int_equal(found, 7);
  assert_null(attn_device_list_get(l, attn_device_list_count(l)));
  int failed = 0;
  for (size_t i = 0; i < attn_device_list_failure_count(l); i++) {
    const char *p = attn_device_list_failure_path(l, i);
    const char *r = attn_device_list_failure_reason(l, i);
    assert_non_null(p);
    assert_non_null(r);
    assert_true(strlen(r) > 0);
    if (strstr(p, "attn_tp_badabi.so")) {
      assert_contains(r, "plugin ABI 99.");
      failed++;
    }
    if (strstr(p, "attn_tp_noentry.so") || strstr(p, "attn_tp_nullslot.so")) failed++;
  }
  assert_int_equal(failed, 3);
  assert_null(attn_device_list_failure_path(l, attn_device_list_failure_count(l)));
  assert_null(attn_device_list_failure_reason(l, attn_device_list_failure_count(l)));
  attn_device_list_free(l);
  attn_device_list_free(NULL);
  assert_int_equal(attn_device_list_count(NULL), 0);
  assert_int_equal(attn_device_list_failure_count(NULL), 0);
}

static void test_device_type_str(void **state) {
  (void)state;
  assert_string_equal(attn_device_type_str(ATTN_DEVICE_CPU), "cpu");
  assert_string_equal(attn_device_type_str(ATTN_DEVICE_GPU), "gpu");
  assert_string_equal(attn_device_type_str(ATTN_DEVICE_ACCELERATOR), "accelerator");
  assert_string_equal(attn_device_type_str(ATTN_DEVICE_OTHER), "other");
  assert_string_equal(attn_device_type_str((attn_device_type)0), "other");
}

/* Separate contexts from separate threads at once, each with its own work. */
static void *open_close_thread(void *p) {
  int *ok = p;
  *ok = 0;
  for (int i = 0; i < 20; i++) {
    attn_context *ctx = NULL;
    if (attn_open(i % 2 ? "tp_good:1" : "tp_good:0", &ctx) != ATTN_OK) return NULL;
    int64_t shape[1] = {8};
    attn_tensor *t = NULL;
    float v[8] = {1, 2, 3, 4, 5, 6, 7, (float)i}, w[8];
    if (attn_tensor_create(ctx, 1, shape, &t) != ATTN_OK || attn_tensor_write(t, v, 8) != ATTN_OK ||
        attn_tensor_read(t, w, 8) != ATTN_OK || memcmp(v, w, sizeof v) != 0) {
      attn_close(ctx);
      return NULL;
    }
    attn_tensor_free(t);
    attn_close(ctx);
  }
  *ok = 1;
  return NULL;
}

static void test_threads(void **state) {
  (void)state;
  pthread_t t[4];
  int ok[4];
  for (int i = 0; i < 4; i++) assert_int_equal(pthread_create(&t[i], NULL, open_close_thread, &ok[i]), 0);
  for (int i = 0; i < 4; i++) assert_int_equal(pthread_join(t[i], NULL), 0);
  for (int i = 0; i < 4; i++) assert_int_equal(ok[i], 1);
}

static int make_tmp_dir(void **state) {
  (void)state;
  const char *base = getenv("TMPDIR");
  snprintf(tmp_dir, sizeof tmp_dir, "%s/attn_test_loader.XXXXXX", base && *base ? base : "/tmp");
  return mkdtemp(tmp_dir) ? 0 : -1;
}

static int remove_tmp_dir(void **state) {
  (void)state;
  return rmdir(tmp_dir);
}

int main(void) {
  const char *dir = getenv("ATTN_TEST_PLUGIN_DIR");
  if (!dir || !*dir) {
    fprintf(stderr, "ATTN_TEST_PLUGIN_DIR is not set (run through make check)\n");
    return 1;
  }
  snprintf(plugin_dir, sizeof plugin_dir, "%s", dir);
  /* Before any public call: the process-wide registry reads it once. */
  setenv("ATTN_BACKEND_PATH", plugin_dir, 1);
  unsetenv("ATTN_DEVICE");

  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_good_by_path),
      cmocka_unit_test(test_badabi),
      cmocka_unit_test(test_abi1),
      cmocka_unit_test(test_abi_features),
      cmocka_unit_test(test_abi22_options),
      cmocka_unit_test(test_abi23_stages),
      cmocka_unit_test(test_feature_names),
      cmocka_unit_test(test_noentry),
      cmocka_unit_test(test_nullslot),
      cmocka_unit_test(test_probe0),
      cmocka_unit_test(test_openfail_allocfail_load),
      cmocka_unit_test(test_whole_dir),
      cmocka_unit_test(test_first_one_wins),
      cmocka_unit_test(test_not_a_module),
      cmocka_unit_test(test_bad_paths),
      cmocka_unit_test(test_unsafe_paths),
      cmocka_unit_test(test_probefail),
      cmocka_unit_test(test_faulty_modules_affect_nothing_else),
      cmocka_unit_test(test_open_good),
      cmocka_unit_test(test_open_openfail),
      cmocka_unit_test(test_allocfail),
      cmocka_unit_test(test_close_frees_live_tensors),
      cmocka_unit_test(test_backend_linear),
      cmocka_unit_test(test_open_badabi),
      cmocka_unit_test(test_open_nothing_matches),
      cmocka_unit_test(test_open_from_env),
      cmocka_unit_test(test_list_devices),
      cmocka_unit_test(test_device_type_str),
      cmocka_unit_test(test_threads),
  };
  return cmocka_run_group_tests(tests, make_tmp_dir, remove_tmp_dir);
}
