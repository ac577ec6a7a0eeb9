/* The selector parser and matcher, table driven: every valid form parses to
 * what it means, every malformed one fails with ATTN_ERR_SELECTOR and a
 * message that quotes the selector and says what is wrong. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include <cmocka.h>

#include "internal.h"

typedef struct {
  const char *backend;
  attn_sel_dev_kind kind;
  int index;
  attn_device_type type;
  const char *name;
} want_alt;

typedef struct {
  const char *text;
  int n;
  want_alt alt[3];
} valid_case;

static const valid_case valid[] = {
    {"ref", 1, {{"ref", ATTN_SEL_ANY, 0, 0, NULL}}},
    {"pocl:0", 1, {{"pocl", ATTN_SEL_INDEX, 0, 0, NULL}}},
    {"clblast:12", 1, {{"clblast", ATTN_SEL_INDEX, 12, 0, NULL}}},
    {"clblast:007", 1, {{"clblast", ATTN_SEL_INDEX, 7, 0, NULL}}},
    {"clblast:2147483647", 1, {{"clblast", ATTN_SEL_INDEX, 2147483647, 0, NULL}}},
    {"clblast:gpu", 1, {{"clblast", ATTN_SEL_TYPE, 0, ATTN_DEVICE_GPU, NULL}}},
    {"pocl:CPU", 1, {{"pocl", ATTN_SEL_TYPE, 0, ATTN_DEVICE_CPU, NULL}}},
    {"x:Accelerator", 1, {{"x", ATTN_SEL_TYPE, 0, ATTN_DEVICE_ACCELERATOR, NULL}}},
    {"clblast:nvidia", 1, {{"clblast", ATTN_SEL_NAME, 0, 0, "nvidia"}}},
    /* Words close to a type are names, not types. */
    {"clblast:gpus", 1, {{"clblast", ATTN_SEL_NAME, 0, 0, "gpus"}}},
    {"a:1x", 1, {{"a", ATTN_SEL_NAME, 0, 0, "1x"}}},
    {"a:-1", 1, {{"a", ATTN_SEL_NAME, 0, 0, "-1"}}},
    {"clblast:GeForce RTX", 1, {{"clblast", ATTN_SEL_NAME, 0, 0, "GeForce RTX"}}},
    {"my_backend2", 1, {{"my_backend2", ATTN_SEL_ANY, 0, 0, NULL}}},
    {"clblast:gpu,pocl,ref",
     3,
     {{"clblast", ATTN_SEL_TYPE, 0, ATTN_DEVICE_GPU, NULL},
      {"pocl", ATTN_SEL_ANY, 0, 0, NULL},
      {"ref", ATTN_SEL_ANY, 0, 0, NULL}}},
    {"clblast:gpu,pocl:cpu,ref",
     3,
     {{"clblast", ATTN_SEL_TYPE, 0, ATTN_DEVICE_GPU, NULL},
      {"pocl", ATTN_SEL_TYPE, 0, ATTN_DEVICE_CPU, NULL},
      {"ref", ATTN_SEL_ANY, 0, 0, NULL}}},
    {"pocl:1,pocl:intel",
     2,
     {{"pocl", ATTN_SEL_INDEX, 1, 0, NULL}, {"pocl", ATTN_SEL_NAME, 0, 0, "intel"}}},
    /* 31 characters: the longest backend name. */
    {"abcdefghijklmnopqrstuvwxyz01234", 1, {{"abcdefghijklmnopqrstuvwxyz01234", ATTN_SEL_ANY, 0, 0, NULL}}},
};

static void test_valid(void **state) {
  (void)state;
  for (size_t c = 0; c < sizeof valid / sizeof valid[0]; c++) {
    const valid_case *vc = &valid[c];
    attn_selector sel;
    attn_status st = attn__selector_parse(vc->text, &sel);
    if (st != ATTN_OK) fail_msg("\"%s\" refused: %s", vc->text, attn_last_error());
    assert_int_equal(sel.n, vc->n);
    for (int a = 0; a < vc->n; a++) {
      const want_alt *w = &vc->alt[a];
      const attn_sel_alt *g = &sel.alt[a];
      assert_string_equal(g->backend, w->backend);
      if (g->kind != w->kind) fail_msg("\"%s\" alt %d: kind %d, want %d", vc->text, a, g->kind, w->kind);
      if (w->kind == ATTN_SEL_INDEX) assert_int_equal(g->index, w->index);
      if (w->kind == ATTN_SEL_TYPE) assert_int_equal(g->type, w->type);
      if (w->kind == ATTN_SEL_NAME) assert_string_equal(g->name, w->name);
    }
  }
}

typedef struct {
  const char *text;
  const char *why; /* a fragment the message must contain */
} invalid_case;

static const invalid_case invalid[] = {
    {"", "empty"},
    {",", "alternative 1 is empty"},
    {"ref,", "alternative 2 is empty"},
    {",ref", "alternative 1 is empty"},
    {"ref,,pocl", "alternative 2 is empty"},
    {":0", "no backend name"},
    {"ref:", "empty device"},
    {"pocl:0:1", "more than one ':'"},
    {"pocl::", "more than one ':'"},
    {"REF", "bad character 'R'"},
    {"re f", "bad character ' '"},
    {" ref", "bad character ' '"},
    {"ref ,pocl", "bad character ' '"},
    {"po-cl", "bad character '-'"},
    {"pocl\t", "bad character 0x09"},
    {"pocl:gpu\n", "bad character 0x0a"},
    {"abcdefghijklmnopqrstuvwxyz012345", "longer than 31"},
    {"ref:99999999999", "too large"},
    {"a,a,a,a,a,a,a,a,a,a,a,a,a,a,a,a,a", "more than 16 alternatives"},
};

static void test_invalid(void **state) {
  (void)state;
  for (size_t c = 0; c < sizeof invalid / sizeof invalid[0]; c++) {
    attn_selector sel;
    sel.n = 5;
    attn_status st = attn__selector_parse(invalid[c].text, &sel);
    if (st != ATTN_ERR_SELECTOR)
      fail_msg("\"%s\": status %d, want ATTN_ERR_SELECTOR", invalid[c].text, st);
    const char *msg = attn_last_error();
    /* The whole selector is quoted so the user sees what was read. */
    char quoted[128];
    snprintf(quoted, sizeof quoted, "\"%s\"", invalid[c].text);
    if (!strstr(msg, quoted)) fail_msg("\"%s\": message does not quote it: %s", invalid[c].text, msg);
    if (!strstr(msg, invalid[c].why))
      fail_msg("\"%s\": message lacks \"%s\": %s", invalid[c].text, invalid[c].why, msg);
    assert_int_equal(sel.n, 0); /* nothing half-parsed is left behind */
  }
}

static void test_limits(void **state) {
  (void)state;
  attn_selector sel;
  /* Exactly 16 alternatives are fine. */
  assert_int_equal(attn__selector_parse("a,b,c,d,e,f,g,h,i,j,k,l,m,n,o,p", &sel), ATTN_OK);
  assert_int_equal(sel.n, ATTN_SEL_MAX_ALTS);
  assert_string_equal(sel.alt[15].backend, "p");

  /* A device name of 127 characters fits, 128 does not. */
  char text[ATTN_SEL_DEV_MAX + 16];
  strcpy(text, "x:");
  memset(text + 2, 'n', ATTN_SEL_DEV_MAX - 1);
  text[2 + ATTN_SEL_DEV_MAX - 1] = '\0';
  assert_int_equal(attn__selector_parse(text, &sel), ATTN_OK);
  assert_int_equal(sel.alt[0].kind, ATTN_SEL_NAME);
  assert_int_equal(strlen(sel.alt[0].name), ATTN_SEL_DEV_MAX - 1);
  strcat(text, "n");
  assert_int_equal(attn__selector_parse(text, &sel), ATTN_ERR_SELECTOR);
  assert_non_null(strstr(attn_last_error(), "longer than 127"));

  assert_int_equal(attn__selector_parse(NULL, &sel), ATTN_ERR_SELECTOR);
  assert_int_equal(attn__selector_parse("ref", NULL), ATTN_ERR_INVALID_ARG);
}

static attn_device_info dev(const char *backend, int index, attn_device_type type,
                            const char *name) {
  attn_device_info d;
  memset(&d, 0, sizeof d);
  snprintf(d.backend, sizeof d.backend, "%s", backend);
  snprintf(d.name, sizeof d.name, "%s", name);
  snprintf(d.selector, sizeof d.selector, "%s:%d", backend, index);
  d.index = index;
  d.type = type;
  return d;
}

static int matches(const char *text, const attn_device_info *d) {
  attn_selector sel;
  if (attn__selector_parse(text, &sel) != ATTN_OK) fail_msg("\"%s\" refused", text);
  assert_int_equal(sel.n, 1);
  return attn__selector_match(&sel.alt[0], d);
}

static void test_match(void **state) {
  (void)state;
  attn_device_info gpu = dev("clblast", 1, ATTN_DEVICE_GPU, "NVIDIA GeForce RTX 4090");
  attn_device_info cpu = dev("pocl", 0, ATTN_DEVICE_CPU, "cpu-haswell-Intel(R) Xeon(R)");

  assert_true(matches("clblast", &gpu));
  assert_true(matches("clblast:1", &gpu));
  assert_false(matches("clblast:0", &gpu));
  assert_true(matches("clblast:gpu", &gpu));
  assert_true(matches("clblast:GPU", &gpu));
  assert_false(matches("clblast:cpu", &gpu));
  assert_true(matches("clblast:nvidia", &gpu));
  assert_true(matches("clblast:rtx 40", &gpu));
  assert_false(matches("clblast:amd", &gpu));
  /* The backend must match exactly, not as a prefix. */
  assert_false(matches("clblas", &gpu));
  assert_false(matches("pocl", &gpu));
  assert_false(matches("clblast:gpu", &cpu));

  assert_true(matches("pocl:cpu", &cpu));
  assert_true(matches("pocl:xeon", &cpu));
  assert_true(matches("pocl:0", &cpu));
  assert_false(matches("pocl:accelerator", &cpu));

  attn_sel_alt alt;
  memset(&alt, 0, sizeof alt);
  assert_false(attn__selector_match(NULL, &cpu));
  assert_false(attn__selector_match(&alt, NULL));
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_valid),
      cmocka_unit_test(test_invalid),
      cmocka_unit_test(test_limits),
      cmocka_unit_test(test_match),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
