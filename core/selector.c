/* The device selector: "backend[:device]" alternatives separated by ','.
 *
 *   backend  [a-z0-9_]+, at most ATTN_SEL_NAME_MAX - 1 characters
 *   device   all digits          -> an index within the backend
 *            cpu|gpu|accelerator -> a device type (case-insensitive)
 *            anything else       -> a case-insensitive substring of the name
 *
 * Parsing is strict on purpose: a typo must be an error that says what is
 * wrong, never a silent fallback to some other device. The parser does not
 * look at the registry; attn_open does, and lists what exists. */
#include "internal.h"

#include <ctype.h>
#include <limits.h>
#include <string.h>
#include <strings.h>

/* Fail with a message that quotes the whole selector and names the
 * alternative at fault (1-based, as a person counts). */
#define SEL_FAIL(...) attn__error(ATTN_ERR_SELECTOR, __VA_ARGS__)

static int is_backend_char(char c) {
  return (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '_';
}

/* Parse one alternative, the bytes [s, s + len) of text. */
static attn_status parse_alt(const char *text, int nth, const char *s, size_t len,
                             attn_sel_alt *alt) {
  memset(alt, 0, sizeof *alt);
  if (len == 0)
    return SEL_FAIL("selector \"%s\": alternative %d is empty (expected backend[:device])", text,
                    nth);

  const char *colon = memchr(s, ':', len);
  size_t blen = colon ? (size_t)(colon - s) : len;
  if (blen == 0)
    return SEL_FAIL("selector \"%s\": alternative %d has no backend name before ':'", text, nth);
  if (blen >= ATTN_SEL_NAME_MAX)
    return SEL_FAIL("selector \"%s\": alternative %d: backend name is longer than %d characters",
                    text, nth, ATTN_SEL_NAME_MAX - 1);
  for (size_t i = 0; i < blen; i++) {
    if (!is_backend_char(s[i])) {
      unsigned char c = (unsigned char)s[i];
      if (isprint(c))
        return SEL_FAIL("selector \"%s\": alternative %d: bad character '%c' in backend name "
                        "(allowed: a-z 0-9 _)",
                        text, nth, (char)c);
      return SEL_FAIL("selector \"%s\": alternative %d: bad character 0x%02x in backend name "
                      "(allowed: a-z 0-9 _)",
                      text, nth, c);
    }
  }
  memcpy(alt->backend, s, blen);
  alt->backend[blen] = '\0';

  if (!colon) {
    alt->kind = ATTN_SEL_ANY;
    return ATTN_OK;
  }

  const char *d = colon + 1;
  size_t dlen = len - blen - 1;
  if (dlen == 0)
    return SEL_FAIL("selector \"%s\": alternative %d: empty device after ':' (expected an index, "
                    "cpu, gpu, accelerator or part of a device name)",
                    text, nth);
  if (memchr(d, ':', dlen))
    return SEL_FAIL("selector \"%s\": alternative %d has more than one ':'", text, nth);
  if (dlen >= ATTN_SEL_DEV_MAX)
    return SEL_FAIL("selector \"%s\": alternative %d: device is longer than %d characters", text,
                    nth, ATTN_SEL_DEV_MAX - 1);
  for (size_t i = 0; i < dlen; i++) {
    /* Device names may hold spaces and punctuation, but never control bytes. */
    if (iscntrl((unsigned char)d[i]))
      return SEL_FAIL("selector \"%s\": alternative %d: bad character 0x%02x in device", text,
                      nth, (unsigned char)d[i]);
  }

  size_t ndigits = 0;
  while (ndigits < dlen && d[ndigits] >= '0' && d[ndigits] <= '9') ndigits++;
  if (ndigits == dlen) {
    long v = 0;
    for (size_t i = 0; i < dlen; i++) {
      v = v * 10 + (d[i] - '0');
      if (v > INT_MAX)
        return SEL_FAIL("selector \"%s\": alternative %d: device index %.*s is too large", text,
                        nth, (int)dlen, d);
    }
    alt->kind = ATTN_SEL_INDEX;
    alt->index = (int)v;
    return ATTN_OK;
  }

  static const struct {
    const char *word;
    attn_device_type type;
  } types[] = {{"cpu", ATTN_DEVICE_CPU},
               {"gpu", ATTN_DEVICE_GPU},
               {"accelerator", ATTN_DEVICE_ACCELERATOR}};
  for (size_t i = 0; i < sizeof types / sizeof types[0]; i++) {
    if (strlen(types[i].word) == dlen && strncasecmp(d, types[i].word, dlen) == 0) {
      alt->kind = ATTN_SEL_TYPE;
      alt->type = types[i].type;
      return ATTN_OK;
    }
  }

  alt->kind = ATTN_SEL_NAME;
  memcpy(alt->name, d, dlen);
  alt->name[dlen] = '\0';
  return ATTN_OK;
}

attn_status attn__selector_parse(const char *text, attn_selector *out) {
  if (!out) return attn__error(ATTN_ERR_INVALID_ARG, "selector: output is NULL");
  memset(out, 0, sizeof *out);
  if (!text) return SEL_FAIL("selector is NULL");
  if (!*text)
    return SEL_FAIL("selector \"\" is empty (expected backend[:device], e.g. \"ref\" or "
                    "\"pocl:0\")");

  const char *s = text;
  for (int nth = 1;; nth++) {
    const char *comma = strchr(s, ',');
    size_t len = comma ? (size_t)(comma - s) : strlen(s);
    attn_sel_alt alt;
    attn_status st = out->n == ATTN_SEL_MAX_ALTS
                         ? SEL_FAIL("selector \"%s\": more than %d alternatives", text,
                                    ATTN_SEL_MAX_ALTS)
                         : parse_alt(text, nth, s, len, &alt);
    if (st != ATTN_OK) {
      memset(out, 0, sizeof *out); /* leave nothing half-parsed behind */
      return st;
    }
    out->alt[out->n++] = alt;
    if (!comma) break;
    s = comma + 1;
  }
  return ATTN_OK;
}

/* Case-insensitive substring test (strcasestr is a GNU extension that we
 * could use, but this is short and portable). */
static int contains_ci(const char *hay, const char *needle) {
  size_t n = strlen(needle);
  if (n == 0) return 1;
  for (; *hay; hay++)
    if (strncasecmp(hay, needle, n) == 0) return 1;
  return 0;
}

int attn__selector_match(const attn_sel_alt *alt, const attn_device_info *info) {
  if (!alt || !info) return 0;
  if (strcmp(alt->backend, info->backend) != 0) return 0;
  switch (alt->kind) {
  case ATTN_SEL_ANY: return 1;
  case ATTN_SEL_INDEX: return info->index == alt->index;
  case ATTN_SEL_TYPE: return info->type == alt->type;
  case ATTN_SEL_NAME: return contains_ci(info->name, alt->name);
  }
  return 0;
}
