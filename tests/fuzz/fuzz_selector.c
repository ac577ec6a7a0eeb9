/* Fuzzes the device selector parser (core/selector.c), which reads
 * $ATTN_DEVICE and the CLI's --device. The input is the selector text (cut
 * at its first NUL byte). Invariants: a failure is ATTN_ERR_SELECTOR with a
 * message and a zeroed result; a success holds 1..ATTN_SEL_MAX_ALTS well-formed
 * alternatives, and printing them back as text parses to the same result
 * (so the parser and the documented grammar agree). */
#include <string.h>

#include "fuzz.h"
#include "internal.h"

int LLVMFuzzerInitialize(int *argc, char ***argv) {
  (void)argc;
  (void)argv;
  return 0;
}

/* The canonical text of a parsed selector. */
static void format_selector(const attn_selector *s, char *buf, size_t n) {
  size_t used = 0;
  buf[0] = '\0';
  for (int i = 0; i < s->n; i++) {
    const attn_sel_alt *a = &s->alt[i];
    const char *sep = i ? "," : "";
    int w = 0;
    switch (a->kind) {
    case ATTN_SEL_ANY: w = snprintf(buf + used, n - used, "%s%s", sep, a->backend); break;
    case ATTN_SEL_INDEX:
      w = snprintf(buf + used, n - used, "%s%s:%d", sep, a->backend, a->index);
      break;
    case ATTN_SEL_TYPE:
      w = snprintf(buf + used, n - used, "%s%s:%s", sep, a->backend,
                   attn_device_type_str(a->type));
      break;
    case ATTN_SEL_NAME:
      w = snprintf(buf + used, n - used, "%s%s:%s", sep, a->backend, a->name);
      break;
    }
    FUZZ_CHECK(w > 0 && (size_t)w < n - used, "canonical text does not fit");
    used += (size_t)w;
  }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  /* A C string of the input: the parser's callers pass NUL-terminated text. */
  char *text = malloc(size + 1);
  if (!text) return 0;
  memcpy(text, data, size);
  text[size] = '\0';

  attn_selector sel;
  memset(&sel, 0xA5, sizeof sel);
  attn__enter("fuzz");
  attn_status s = attn__selector_parse(text, &sel);
  if (s != ATTN_OK) {
    FUZZ_CHECK(s == ATTN_ERR_SELECTOR, "status %d for \"%s\"", (int)s, text);
    FUZZ_CHECK(strncmp(attn_last_error(), "fuzz: ", 6) == 0 && attn_last_error()[6] != '\0',
               "message \"%s\" does not name the function", attn_last_error());
    FUZZ_CHECK(sel.n == 0, "n = %d after a failure", sel.n);
    free(text);
    return 0;
  }
  FUZZ_CHECK(sel.n >= 1 && sel.n <= ATTN_SEL_MAX_ALTS, "n = %d", sel.n);
  for (int i = 0; i < sel.n; i++) {
    const attn_sel_alt *a = &sel.alt[i];
    size_t bl = strnlen(a->backend, sizeof a->backend);
    FUZZ_CHECK(bl >= 1 && bl < sizeof a->backend, "alternative %d: backend length %zu", i, bl);
    for (size_t j = 0; j < bl; j++)
      FUZZ_CHECK((a->backend[j] >= 'a' && a->backend[j] <= 'z') ||
                     (a->backend[j] >= '0' && a->backend[j] <= '9') || a->backend[j] == '_',
                 "alternative %d: backend byte 0x%02x", i, (unsigned char)a->backend[j]);
    FUZZ_CHECK(a->kind >= ATTN_SEL_ANY && a->kind <= ATTN_SEL_NAME, "kind %d", (int)a->kind);
    if (a->kind == ATTN_SEL_INDEX) FUZZ_CHECK(a->index >= 0, "index %d", a->index);
    if (a->kind == ATTN_SEL_NAME) {
      size_t nl = strnlen(a->name, sizeof a->name);
      FUZZ_CHECK(nl >= 1 && nl < sizeof a->name, "alternative %d: name length %zu", i, nl);
      FUZZ_CHECK(!strchr(a->name, ',') && !strchr(a->name, ':'), "name \"%s\"", a->name);
    }
  }
  /* Round trip: the canonical text parses to the same alternatives. */
  char canon[ATTN_SEL_MAX_ALTS * (ATTN_SEL_NAME_MAX + ATTN_SEL_DEV_MAX + 2) + 1];
  format_selector(&sel, canon, sizeof canon);
  attn_selector again;
  s = attn__selector_parse(canon, &again);
  FUZZ_CHECK(s == ATTN_OK, "canonical \"%s\" of \"%s\" refused: %s", canon, text,
             attn_last_error());
  FUZZ_CHECK(again.n == sel.n, "round trip changed n");
  for (int i = 0; i < sel.n; i++) {
    const attn_sel_alt *a = &sel.alt[i], *b = &again.alt[i];
    FUZZ_CHECK(strcmp(a->backend, b->backend) == 0 && a->kind == b->kind,
               "alternative %d changed in the round trip of \"%s\"", i, text);
    if (a->kind == ATTN_SEL_INDEX) FUZZ_CHECK(a->index == b->index, "index changed");
    if (a->kind == ATTN_SEL_TYPE) FUZZ_CHECK(a->type == b->type, "type changed");
    if (a->kind == ATTN_SEL_NAME) FUZZ_CHECK(strcmp(a->name, b->name) == 0, "name changed");
  }
  free(text);
  return 0;
}
