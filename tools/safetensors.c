/* safetensors checkpoints and JSON files; see safetensors.h for the contract.
 *
 * The JSON is parsed by cJSON (libcjson). What cJSON lets through and a
 * strict reader must not is checked around it: the bytes are checked first
 * (UTF-8, no NUL, no control byte but tab, CR and LF, no \u0000 escape, which
 * cJSON would turn into a NUL that cuts a name short), every object is
 * checked for duplicated keys (cJSON keeps both), and members are looked up
 * case-sensitively (cJSON_GetObjectItem is not). cJSON's parse bounds the
 * nesting (CJSON_NESTING_LIMIT), so the recursive walks here are bounded too.
 * cJSON records the position of a parse error in a global as well as in the
 * return_parse_end we read: parsing from several threads at once would race
 * on it (the attn command parses from one). */
#include "safetensors.h"

#include <cJSON.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <limits.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "attn_plugin.h" /* the SDK's attn_f16_to_f32 and attn_bf16_to_f32 */

static attn_status fail(attn_status s, char *err, size_t errlen, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));
static attn_status fail(attn_status s, char *err, size_t errlen, const char *fmt, ...) {
  if (err && errlen) {
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(err, errlen, fmt, ap);
    va_end(ap);
  }
  return s;
}

/* A JSON path for messages ("rope_scaling.factor", "layer_types[3]"); a path
 * too long for the buffer is cut, which only shortens a message. */
static void path_fmt(char *buf, size_t cap, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
static void path_fmt(char *buf, size_t cap, const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(buf, cap, fmt, ap);
  va_end(ap);
}

static const char *safe_name(const char *name) {
  return name && *name ? name : "<safetensors>";
}

/* An untrusted string (a tensor name, a key) for a message: at most
 * SHOW_BYTES bytes, cut at a character boundary with "..." appended, control
 * characters shown as '?'. The strings shown are valid UTF-8 (checked). */
#define SHOW_BYTES 80
typedef struct shown {
  char s[SHOW_BYTES + 4];
} shown;

static const char *show(shown *b, const char *s) {
  size_t o = 0, i = 0;
  for (; s[i] && o < SHOW_BYTES; i++) {
    unsigned char c = (unsigned char)s[i];
    b->s[o++] = c < 0x20 || c == 0x7f ? '?' : (char)c;
  }
  if (s[i]) {
    /* Cut: drop a character left incomplete (its continuation bytes and lead). */
    if (((unsigned char)s[i] & 0xC0) == 0x80) {
      while (o > 0 && ((unsigned char)b->s[o - 1] & 0xC0) == 0x80) o--;
      if (o > 0) o--;
    }
    memcpy(b->s + o, "...", 3);
    o += 3;
  }
  b->s[o] = '\0';
  return b->s;
}

/* "[2, 3]", shortened to "[2, 3, ...]" when it does not fit. */
static void shape_str(const int64_t *d, int n, char *buf, size_t cap) {
  size_t o = 0;
  buf[o++] = '[';
  for (int i = 0; i < n; i++) {
    char num[32];
    int l = snprintf(num, sizeof num, "%s%" PRId64, i ? ", " : "", d[i]);
    if (o + (size_t)l + 6 >= cap) {
      memcpy(buf + o, ", ...", 5);
      o += 5;
      break;
    }
    memcpy(buf + o, num, (size_t)l);
    o += (size_t)l;
  }
  buf[o++] = ']';
  buf[o] = '\0';
}

static uint64_t rd_u64le(const unsigned char *p) {
  uint64_t v = 0;
  for (int i = 7; i >= 0; i--) v = v << 8 | p[i];
  return v;
}

/* ---- dtypes ----------------------------------------------------------------------- */

static const struct {
  const char *name;
  unsigned bits;
} dtypes[ST_NDTYPES] = {
    [ST_BOOL] = {"BOOL", 8},         [ST_U8] = {"U8", 8},
    [ST_I8] = {"I8", 8},             [ST_F8_E5M2] = {"F8_E5M2", 8},
    [ST_F8_E4M3] = {"F8_E4M3", 8},   [ST_F8_E8M0] = {"F8_E8M0", 8},
    [ST_F8_E4M3FNUZ] = {"F8_E4M3FNUZ", 8}, [ST_F8_E5M2FNUZ] = {"F8_E5M2FNUZ", 8},
    [ST_F4] = {"F4", 4},             [ST_F6_E2M3] = {"F6_E2M3", 6},
    [ST_F6_E3M2] = {"F6_E3M2", 6},   [ST_I16] = {"I16", 16},
    [ST_U16] = {"U16", 16},          [ST_F16] = {"F16", 16},
    [ST_BF16] = {"BF16", 16},        [ST_I32] = {"I32", 32},
    [ST_U32] = {"U32", 32},          [ST_F32] = {"F32", 32},
    [ST_F64] = {"F64", 64},          [ST_C64] = {"C64", 64},
    [ST_I64] = {"I64", 64},          [ST_U64] = {"U64", 64},
};

const char *st_dtype_name(st_dtype t) {
  return (unsigned)t < ST_NDTYPES ? dtypes[t].name : "?";
}

unsigned st_dtype_bits(st_dtype t) { return (unsigned)t < ST_NDTYPES ? dtypes[t].bits : 0; }

static bool dtype_parse(const char *s, st_dtype *t) {
  for (unsigned i = 0; i < ST_NDTYPES; i++)
    if (strcmp(s, dtypes[i].name) == 0) {
      *t = (st_dtype)i;
      return true;
    }
  return false;
}

/* ---- JSON text and documents ------------------------------------------------------- */

/* The bytes of a JSON text: strict UTF-8 (no overlong form, surrogate or code
 * point past U+10FFFF), no NUL, no control byte but tab, LF and CR (JSON
 * allows no other, in a string or out), no \u0000 escape. base is added to
 * the offsets named (the header starts at byte 8 of its file). */
static attn_status check_text(const unsigned char *b, size_t n, size_t base, const char *name,
                              const char *what, char *err, size_t errlen) {
  size_t i = 0;
  while (i < n) {
    unsigned char c = b[i];
    if (c < 0x80) {
      if (c == 0)
        return fail(ATTN_ERR_FORMAT, err, errlen, "%s: %s holds a NUL byte at offset %zu", name,
                    what, base + i);
      if (c < 0x20 && c != '\t' && c != '\n' && c != '\r')
        return fail(ATTN_ERR_FORMAT, err, errlen,
                    "%s: %s holds a control byte 0x%02x at offset %zu", name, what, c, base + i);
      if (c == '\\' && i + 1 < n && b[i + 1] < 0x80) {
        if (b[i + 1] == 'u' && n - i >= 6 && memcmp(b + i + 2, "0000", 4) == 0)
          return fail(ATTN_ERR_FORMAT, err, errlen,
                      "%s: %s holds a \\u0000 escape (a NUL in a string) at offset %zu", name,
                      what, base + i);
        i += 2; /* the escaped character: "\\u0000" is a backslash, then text */
        continue;
      }
      i++;
      continue;
    }
    size_t len;
    uint32_t cp, min;
    if (c >= 0xC2 && c <= 0xDF) len = 2, cp = c & 0x1Fu, min = 0x80;
    else if (c >= 0xE0 && c <= 0xEF) len = 3, cp = c & 0x0Fu, min = 0x800;
    else if (c >= 0xF0 && c <= 0xF4) len = 4, cp = c & 0x07u, min = 0x10000;
    else len = 0, cp = 0, min = 1;
    bool ok = len && n - i >= len;
    for (size_t k = 1; ok && k < len; k++) {
      ok = (b[i + k] & 0xC0) == 0x80;
      cp = cp << 6 | (b[i + k] & 0x3Fu);
    }
    if (!ok || cp < min || cp > 0x10FFFF || (cp >= 0xD800 && cp <= 0xDFFF))
      return fail(ATTN_ERR_FORMAT, err, errlen, "%s: %s is not valid UTF-8 at offset %zu", name,
                  what, base + i);
    i += len;
  }
  return ATTN_OK;
}

static const char *json_type(const cJSON *v) {
  if (cJSON_IsNull(v)) return "null";
  if (cJSON_IsBool(v)) return "a boolean";
  if (cJSON_IsNumber(v)) return "a number";
  if (cJSON_IsString(v)) return "a string";
  if (cJSON_IsArray(v)) return "an array";
  if (cJSON_IsObject(v)) return "an object";
  return "invalid";
}

/* What a value is, for "... is X; expected Y": a number as written back
 * ("-3", "1.5"), true/false, or its type. */
static const char *json_describe(const cJSON *v, char *buf, size_t cap) {
  if (cJSON_IsNumber(v)) {
    snprintf(buf, cap, "%.15g", v->valuedouble); /* the shortest of the two that reads back */
    if (strtod(buf, NULL) != v->valuedouble) snprintf(buf, cap, "%.17g", v->valuedouble);
    return buf;
  }
  if (cJSON_IsTrue(v)) return "true";
  if (cJSON_IsFalse(v)) return "false";
  return json_type(v);
}

#define JSON_INT_MAX 9007199254740992.0 /* 2^53: every integer up to it is a double */

/* A number whose value is an integer in [lo, 2^53]. */
static bool json_integer(const cJSON *v, double lo, int64_t *out) {
  if (!cJSON_IsNumber(v)) return false;
  double d = v->valuedouble;
  if (!(d >= lo && d <= JSON_INT_MAX) || (double)(int64_t)d != d) return false;
  *out = (int64_t)d;
  return true;
}

static int cmp_str_ptr(const void *a, const void *b) {
  return strcmp(*(const char *const *)a, *(const char *const *)b);
}

/* The first key that appears twice among obj's members (in sorted order):
 * 1 and *dup, 0 if none, -1 out of memory. */
static int duplicate_key(const cJSON *obj, const char **dup) {
  size_t n = 0;
  for (const cJSON *c = obj->child; c; c = c->next) n++;
  if (n < 2) return 0;
  const char **keys = malloc(n * sizeof *keys);
  if (!keys) return -1;
  n = 0;
  for (const cJSON *c = obj->child; c; c = c->next) keys[n++] = c->string;
  qsort(keys, n, sizeof *keys, cmp_str_ptr);
  int r = 0;
  for (size_t i = 1; i < n && !r; i++)
    if (strcmp(keys[i - 1], keys[i]) == 0) {
      *dup = keys[i];
      r = 1;
    }
  free(keys);
  return r;
}

/* Every object in v, checked for duplicated keys; path is v's path for the
 * message ("" at the top, where a header names its key a tensor). */
static attn_status check_duplicates(const cJSON *v, const char *path, const char *name,
                                    bool header, char *err, size_t errlen) {
  if (cJSON_IsObject(v)) {
    const char *dup = NULL;
    int r = duplicate_key(v, &dup);
    if (r < 0) return fail(ATTN_ERR_NOMEM, err, errlen, "%s: out of memory", name);
    if (r) {
      shown a, b;
      if (header && !*path)
        return fail(ATTN_ERR_FORMAT, err, errlen, "%s: %s '%s' appears twice in the header", name,
                    strcmp(dup, "__metadata__") ? "tensor" : "key", show(&a, dup));
      return fail(ATTN_ERR_FORMAT, err, errlen, "%s: key '%s' appears twice in %s%s%s", name,
                  show(&a, dup), *path ? "'" : "the top-level object", show(&b, path),
                  *path ? "'" : "");
    }
  }
  if (!cJSON_IsObject(v) && !cJSON_IsArray(v)) return ATTN_OK;
  size_t i = 0;
  for (const cJSON *c = v->child; c; c = c->next, i++) {
    char sub[ST_JSON_PATH];
    if (cJSON_IsObject(v))
      path_fmt(sub, sizeof sub, "%s%s%s", path, *path ? "." : "", c->string);
    else
      path_fmt(sub, sizeof sub, "%s[%zu]", path, i);
    attn_status s = check_duplicates(c, sub, name, header, err, errlen);
    if (s) return s;
  }
  return ATTN_OK;
}

/* cJSON returns NULL for a text it cannot parse and for one it ran out of
 * memory on (a node costs it about 80 bytes, so a 100 MB header of tiny
 * values needs gigabytes): its allocator is wrapped to tell them apart. */
static _Thread_local bool json_oom;
static void *json_malloc(size_t n) {
  void *p = malloc(n);
  if (!p) json_oom = true;
  return p;
}
static void json_hooks(void) {
  cJSON_Hooks hooks = {json_malloc, free};
  cJSON_InitHooks(&hooks);
}
static pthread_once_t json_hooks_once = PTHREAD_ONCE_INIT;

/* Parse a JSON text whose top level must be an object. what names it in
 * messages ("the header"); base is its offset in its file. */
static attn_status json_parse_object(const unsigned char *b, size_t n, size_t base,
                                     const char *name, const char *what, bool header,
                                     cJSON **out, char *err, size_t errlen) {
  *out = NULL;
  attn_status s = check_text(b, n, base, name, what, err, errlen);
  if (s) return s;
  /* cJSON wants the terminating NUL inside the length to accept trailing
   * whitespace (the padding a header may have) and refuse anything else. */
  char *copy = malloc(n + 1);
  if (!copy) return fail(ATTN_ERR_NOMEM, err, errlen, "%s: out of memory for %zu bytes", name, n);
  memcpy(copy, b, n);
  copy[n] = '\0';
  const char *end = copy;
  pthread_once(&json_hooks_once, json_hooks);
  json_oom = false;
  cJSON *root = cJSON_ParseWithLengthOpts(copy, n + 1, &end, 1);
  size_t at = end && end >= copy && end <= copy + n ? (size_t)(end - copy) : 0;
  free(copy);
  if (!root && json_oom)
    return fail(ATTN_ERR_NOMEM, err, errlen, "%s: out of memory parsing %s (%zu bytes of JSON)",
                name, what, n);
  if (!root)
    return fail(ATTN_ERR_FORMAT, err, errlen,
                "%s: %s is not valid JSON (the parser stopped at offset %zu)", name, what,
                base + at);
  if (!cJSON_IsObject(root)) {
    s = fail(ATTN_ERR_FORMAT, err, errlen, "%s: %s is %s, not a JSON object", name, what,
             json_type(root));
    cJSON_Delete(root);
    return s;
  }
  if ((s = check_duplicates(root, "", name, header, err, errlen))) {
    cJSON_Delete(root);
    return s;
  }
  *out = root;
  return ATTN_OK;
}

static const cJSON *member(const cJSON *obj, const char *key) {
  return cJSON_GetObjectItemCaseSensitive(obj, key);
}

/* ---- one header ------------------------------------------------------------------------ */

struct st_header {
  char *file;          /* the name given, for st_tensor.file and messages */
  size_t n;
  st_tensor *t;        /* sorted by name */
  char *names;         /* every tensor name, NUL-terminated, back to back */
  int64_t *dims;       /* every shape, back to back */
  size_t nmeta;
  char **meta;         /* key, value, key, value, ... */
  char *metapool;
};

void st_header_free(st_header *h) {
  if (!h) return;
  free(h->file);
  free(h->t);
  free(h->names);
  free(h->dims);
  free(h->meta);
  free(h->metapool);
  free(h);
}

size_t st_header_count(const st_header *h) { return h ? h->n : 0; }

const st_tensor *st_header_tensor(const st_header *h, size_t i) {
  return h && i < h->n ? &h->t[i] : NULL;
}

static int cmp_tensor_name(const void *key, const void *elem) {
  return strcmp((const char *)key, ((const st_tensor *)elem)->name);
}

const st_tensor *st_header_find(const st_header *h, const char *name) {
  if (!h || !name || !h->n) return NULL;
  return bsearch(name, h->t, h->n, sizeof *h->t, cmp_tensor_name);
}

const char *st_header_metadata(const st_header *h, const char *key) {
  if (!h || !key) return NULL;
  for (size_t i = 0; i < h->nmeta; i++)
    if (strcmp(h->meta[2 * i], key) == 0) return h->meta[2 * i + 1];
  return NULL;
}

static int cmp_tensor(const void *a, const void *b) {
  return strcmp(((const st_tensor *)a)->name, ((const st_tensor *)b)->name);
}

/* By data_offsets, then name: the order the data section is laid out in. */
static int cmp_tensor_offsets(const void *a, const void *b) {
  const st_tensor *x = *(const st_tensor *const *)a, *y = *(const st_tensor *const *)b;
  if (x->begin != y->begin) return x->begin < y->begin ? -1 : 1;
  if (x->end != y->end) return x->end < y->end ? -1 : 1;
  return strcmp(x->name, y->name);
}

/* One tensor entry {"dtype", "shape", "data_offsets"}, checked on its own;
 * its shape goes to dims. */
static attn_status parse_entry(const cJSON *e, const char *file, uint64_t data_size, st_tensor *t,
                               int64_t *dims, char *err, size_t errlen) {
  shown tn;
  const char *nm = show(&tn, e->string);
  char what[64], sh[160];
  if (!cJSON_IsObject(e))
    return fail(ATTN_ERR_FORMAT, err, errlen,
                "%s: tensor '%s' is %s; expected an object with \"dtype\", \"shape\" and "
                "\"data_offsets\"",
                file, nm, json_type(e));
  const cJSON *dt = NULL, *shape = NULL, *off = NULL;
  for (const cJSON *m = e->child; m; m = m->next) {
    const cJSON **slot = strcmp(m->string, "dtype") == 0          ? &dt
                         : strcmp(m->string, "shape") == 0        ? &shape
                         : strcmp(m->string, "data_offsets") == 0 ? &off
                                                                  : NULL;
    if (!slot) {
      shown k;
      return fail(ATTN_ERR_FORMAT, err, errlen,
                  "%s: tensor '%s' has an unknown field '%s' (a tensor has \"dtype\", \"shape\" "
                  "and \"data_offsets\")",
                  file, nm, show(&k, m->string));
    }
    *slot = m; /* a field given twice was refused with the duplicated keys */
  }
  if (!dt || !shape || !off)
    return fail(ATTN_ERR_FORMAT, err, errlen, "%s: tensor '%s' has no \"%s\"", file, nm,
                !dt ? "dtype" : !shape ? "shape" : "data_offsets");
  if (!cJSON_IsString(dt))
    return fail(ATTN_ERR_FORMAT, err, errlen,
                "%s: tensor '%s': \"dtype\" is %s; expected a string such as \"F32\"", file, nm,
                json_describe(dt, what, sizeof what));
  if (!dtype_parse(dt->valuestring, &t->dtype)) {
    shown d;
    return fail(ATTN_ERR_FORMAT, err, errlen, "%s: tensor '%s' has an unknown dtype '%s'", file,
                nm, show(&d, dt->valuestring));
  }
  if (!cJSON_IsArray(shape))
    return fail(ATTN_ERR_FORMAT, err, errlen,
                "%s: tensor '%s': \"shape\" is %s; expected an array of integers >= 0", file, nm,
                json_describe(shape, what, sizeof what));
  int nd = 0;
  for (const cJSON *d = shape->child; d; d = d->next, nd++)
    if (!json_integer(d, 0, &dims[nd]))
      return fail(ATTN_ERR_FORMAT, err, errlen,
                  "%s: tensor '%s': \"shape\"[%d] is %s; expected an integer >= 0", file, nm, nd,
                  json_describe(d, what, sizeof what));
  t->ndim = nd;
  t->shape = dims;
  int64_t b = 0, en = 0;
  if (!cJSON_IsArray(off) || cJSON_GetArraySize(off) != 2 || !json_integer(off->child, 0, &b) ||
      !json_integer(off->child->next, 0, &en))
    return fail(ATTN_ERR_FORMAT, err, errlen,
                "%s: tensor '%s': \"data_offsets\" is not [begin, end] (two integers >= 0)", file,
                nm);
  t->begin = (uint64_t)b;
  t->end = (uint64_t)en;
  if (t->begin > t->end)
    return fail(ATTN_ERR_FORMAT, err, errlen,
                "%s: tensor '%s': data_offsets [%" PRIu64 ", %" PRIu64
                "] run backwards (begin > end)",
                file, nm, t->begin, t->end);
  if (t->end > data_size)
    return fail(ATTN_ERR_FORMAT, err, errlen,
                "%s: tensor '%s': data_offsets [%" PRIu64 ", %" PRIu64
                "] run past the end of the data (%" PRIu64 " bytes after the header)",
                file, nm, t->begin, t->end, data_size);
  /* Element and bit counts, each multiplication checked. */
  uint64_t count = 1;
  for (int i = 0; i < nd; i++) {
    uint64_t d = (uint64_t)dims[i];
    if (d && count > UINT64_MAX / d) {
      shape_str(dims, nd, sh, sizeof sh);
      return fail(ATTN_ERR_FORMAT, err, errlen,
                  "%s: tensor '%s': the element count of shape %s overflows", file, nm, sh);
    }
    count *= d;
  }
  const unsigned bits = dtypes[t->dtype].bits;
  shape_str(dims, nd, sh, sizeof sh);
  if (count > UINT64_MAX / bits)
    return fail(ATTN_ERR_FORMAT, err, errlen,
                "%s: tensor '%s': the byte count of shape %s of %s overflows", file, nm, sh,
                dtypes[t->dtype].name);
  if (count * bits % 8)
    return fail(ATTN_ERR_FORMAT, err, errlen,
                "%s: tensor '%s': shape %s of %s (%u bits each) is not a whole number of bytes",
                file, nm, sh, dtypes[t->dtype].name, bits);
  t->count = count;
  t->nbytes = count * bits / 8;
  if (t->nbytes != t->end - t->begin)
    return fail(ATTN_ERR_FORMAT, err, errlen,
                "%s: tensor '%s': shape %s of %s is %" PRIu64 " bytes, but data_offsets [%" PRIu64
                ", %" PRIu64 "] hold %" PRIu64,
                file, nm, sh, dtypes[t->dtype].name, t->nbytes, t->begin, t->end,
                t->end - t->begin);
  return ATTN_OK;
}

/* The "__metadata__" object: strings only. */
static attn_status parse_metadata(const cJSON *m, st_header *h, char *err, size_t errlen) {
  char what[64];
  if (!cJSON_IsObject(m))
    return fail(ATTN_ERR_FORMAT, err, errlen,
                "%s: \"__metadata__\" is %s; expected an object of strings", h->file,
                json_describe(m, what, sizeof what));
  size_t n = 0, bytes = 0;
  for (const cJSON *c = m->child; c; c = c->next, n++) {
    if (!cJSON_IsString(c)) {
      shown k;
      return fail(ATTN_ERR_FORMAT, err, errlen,
                  "%s: \"__metadata__\" key '%s' is %s; expected a string", h->file,
                  show(&k, c->string), json_describe(c, what, sizeof what));
    }
    bytes += strlen(c->string) + strlen(c->valuestring) + 2;
  }
  h->meta = malloc((2 * n + 1) * sizeof *h->meta);
  h->metapool = malloc(bytes + 1);
  if (!h->meta || !h->metapool)
    return fail(ATTN_ERR_NOMEM, err, errlen, "%s: out of memory for the metadata", h->file);
  char *p = h->metapool;
  for (const cJSON *c = m->child; c; c = c->next) {
    const char *kv[2] = {c->string, c->valuestring};
    for (int j = 0; j < 2; j++) {
      size_t l = strlen(kv[j]) + 1;
      memcpy(p, kv[j], l);
      h->meta[2 * h->nmeta + (size_t)j] = p;
      p += l;
    }
    h->nmeta++;
  }
  return ATTN_OK;
}

/* The tensors, sorted by offset, must tile the data section: each starts
 * where the one before ends, the last ends at its end. */
static attn_status check_layout(const st_header *h, uint64_t data_size, char *err, size_t errlen) {
  if (!h->n) {
    if (data_size)
      return fail(ATTN_ERR_FORMAT, err, errlen,
                  "%s: %" PRIu64 " bytes of data after a header that names no tensor", h->file,
                  data_size);
    return ATTN_OK;
  }
  const st_tensor **by = malloc(h->n * sizeof *by);
  if (!by) return fail(ATTN_ERR_NOMEM, err, errlen, "%s: out of memory", h->file);
  for (size_t i = 0; i < h->n; i++) by[i] = &h->t[i];
  qsort(by, h->n, sizeof *by, cmp_tensor_offsets);
  attn_status s = ATTN_OK;
  uint64_t pos = 0;
  const st_tensor *last = NULL;
  shown tn;
  for (size_t i = 0; i < h->n && !s; i++) {
    const st_tensor *t = by[i];
    shown a, b;
    if (t->begin < pos)
      s = fail(ATTN_ERR_FORMAT, err, errlen,
               "%s: tensor '%s' (data_offsets [%" PRIu64 ", %" PRIu64
               "]) overlaps tensor '%s' ([%" PRIu64 ", %" PRIu64 "])",
               h->file, show(&a, t->name), t->begin, t->end, show(&b, last->name), last->begin,
               last->end);
    else if (t->begin > pos)
      s = fail(ATTN_ERR_FORMAT, err, errlen,
               "%s: a gap in the data: no tensor holds bytes [%" PRIu64 ", %" PRIu64
               ") (before tensor '%s')",
               h->file, pos, t->begin, show(&a, t->name));
    pos = t->end;
    last = t;
  }
  if (!s && pos != data_size)
    s = fail(ATTN_ERR_FORMAT, err, errlen,
             "%s: %" PRIu64 " bytes of trailing data after the last tensor ('%s' ends at byte "
             "%" PRIu64
             " of the %" PRIu64 "-byte data section)",
             h->file, data_size - pos, show(&tn, last->name), pos, data_size);
  free(by);
  return s;
}

attn_status st_header_parse(const void *buf_, size_t len, uint64_t file_size, const char *name_,
                            st_header **out, char *err, size_t errlen) {
  const unsigned char *buf = buf_;
  const char *name = safe_name(name_);
  if (out) *out = NULL;
  if (!out || (!buf && len) || len > file_size)
    return fail(ATTN_ERR_INVALID_ARG, err, errlen, "st_header_parse: %s: invalid arguments", name);
  if (len < 8)
    return fail(ATTN_ERR_FORMAT, err, errlen,
                "%s: truncated: %zu bytes, too short for the 8-byte header length", name, len);
  const uint64_t n = rd_u64le(buf);
  if (n > ST_MAX_HEADER)
    return fail(ATTN_ERR_FORMAT, err, errlen,
                "%s: header length %" PRIu64 " exceeds the format's limit of %u bytes", name, n,
                ST_MAX_HEADER);
  if (n > file_size - 8)
    return fail(ATTN_ERR_FORMAT, err, errlen,
                "%s: header length %" PRIu64 " runs past the end of the file (%" PRIu64
                " bytes after the 8-byte length)",
                name, n, file_size - 8);
  if (n > len - 8)
    return fail(ATTN_ERR_FORMAT, err, errlen, "%s: truncated header: %zu of its %" PRIu64 " bytes",
                name, len - 8, n);
  if (n == 0)
    return fail(ATTN_ERR_FORMAT, err, errlen,
                "%s: the header length is 0 (a header is a JSON object, at least \"{}\")", name);
  const uint64_t data_size = file_size - 8 - n;

  cJSON *root;
  attn_status s = json_parse_object(buf + 8, (size_t)n, 8, name, "the header", true, &root, err,
                                    errlen);
  if (s) return s;
  st_header *h = calloc(1, sizeof *h);
  if (!h || !(h->file = strdup(name))) {
    free(h);
    cJSON_Delete(root);
    return fail(ATTN_ERR_NOMEM, err, errlen, "%s: out of memory", name);
  }
  /* Sizes first (the entries are checked below), then one block for the
   * tensors, one for their names and one for their shapes. */
  size_t nt = 0, name_bytes = 0, ndims = 0;
  for (const cJSON *c = root->child; c; c = c->next) {
    if (strcmp(c->string, "__metadata__") == 0) continue;
    nt++;
    name_bytes += strlen(c->string) + 1;
    const cJSON *shape = cJSON_IsObject(c) ? member(c, "shape") : NULL;
    if (cJSON_IsArray(shape)) ndims += (size_t)cJSON_GetArraySize(shape);
  }
  h->t = calloc(nt ? nt : 1, sizeof *h->t);
  h->names = malloc(name_bytes ? name_bytes : 1);
  h->dims = malloc((ndims ? ndims : 1) * sizeof *h->dims);
  if (!h->t || !h->names || !h->dims) {
    s = fail(ATTN_ERR_NOMEM, err, errlen, "%s: out of memory for %zu tensors", name, nt);
    goto done;
  }
  char *np = h->names;
  int64_t *dp = h->dims;
  for (const cJSON *c = root->child; c; c = c->next) {
    if (strcmp(c->string, "__metadata__") == 0) {
      if ((s = parse_metadata(c, h, err, errlen))) goto done;
      continue;
    }
    st_tensor *t = &h->t[h->n];
    if ((s = parse_entry(c, h->file, data_size, t, dp, err, errlen))) goto done;
    size_t l = strlen(c->string) + 1;
    memcpy(np, c->string, l);
    t->name = np;
    np += l;
    dp += t->ndim;
    t->offset = 8 + n + t->begin;
    t->file = h->file;
    h->n++;
  }
  qsort(h->t, h->n, sizeof *h->t, cmp_tensor); /* names are unique: checked at parse */
  if ((s = check_layout(h, data_size, err, errlen))) goto done;
done:
  cJSON_Delete(root);
  if (s) {
    st_header_free(h);
    return s;
  }
  *out = h;
  return ATTN_OK;
}

/* ---- files ------------------------------------------------------------------------------- */

/* Open a regular file for reading (a FIFO must not block the open; it is
 * refused, as is any device: they have no size to check a header against). */
static attn_status open_regular(const char *path, const char *what, int *fdp, uint64_t *size,
                                char *err, size_t errlen) {
  *fdp = -1;
  int fd = open(path, O_RDONLY | O_CLOEXEC | O_NONBLOCK);
  if (fd < 0) return fail(ATTN_ERR_IO, err, errlen, "%s: cannot open: %s", path, strerror(errno));
  struct stat st;
  if (fstat(fd, &st) != 0) {
    int e = errno;
    close(fd);
    return fail(ATTN_ERR_IO, err, errlen, "%s: cannot stat: %s", path, strerror(e));
  }
  if (!S_ISREG(st.st_mode)) {
    close(fd);
    if (S_ISDIR(st.st_mode))
      return fail(ATTN_ERR_IO, err, errlen, "%s: cannot read: is a directory", path);
    return fail(ATTN_ERR_IO, err, errlen, "%s: not a regular file (a %s must be one)", path, what);
  }
  *fdp = fd;
  *size = (uint64_t)st.st_size;
  return ATTN_OK;
}

/* Read up to n bytes at off; *got is what was read (less at the end of the
 * file). 0 or an errno. */
static int pread_full(int fd, void *buf, uint64_t n, uint64_t off, uint64_t *got) {
  *got = 0;
  while (*got < n) {
    uint64_t want = n - *got;
    if (want > ((size_t)1 << 30)) want = (size_t)1 << 30;
    ssize_t r = pread(fd, (unsigned char *)buf + *got, (size_t)want, (off_t)(off + *got));
    if (r < 0 && errno == EINTR) continue;
    if (r < 0) return errno;
    if (r == 0) break;
    *got += (uint64_t)r;
  }
  return 0;
}

typedef struct st_file {
  char *path;
  int fd;
  st_header *h;
} st_file;

static void file_close(st_file *f) {
  if (f->fd >= 0) close(f->fd);
  free(f->path);
  st_header_free(f->h);
  f->fd = -1;
  f->path = NULL;
  f->h = NULL;
}

/* Open a .safetensors file and parse its header; only the header is read. */
static attn_status file_open(const char *path, st_file *f, char *err, size_t errlen) {
  f->h = NULL;
  f->fd = -1;
  if (!(f->path = strdup(path)))
    return fail(ATTN_ERR_NOMEM, err, errlen, "%s: out of memory", path);
  uint64_t size;
  attn_status s = open_regular(path, ".safetensors file", &f->fd, &size, err, errlen);
  if (s) {
    file_close(f);
    return s;
  }
  unsigned char pre[8];
  uint64_t got, want = 8;
  int e = pread_full(f->fd, pre, size < 8 ? size : 8, 0, &got);
  if (!e && got == 8) {
    uint64_t n = rd_u64le(pre);
    if (n <= ST_MAX_HEADER && n <= size - 8) want = 8 + n; /* else st_header_parse says why */
  }
  unsigned char *buf = e ? NULL : malloc((size_t)want);
  if (!e && !buf) {
    file_close(f);
    return fail(ATTN_ERR_NOMEM, err, errlen, "%s: out of memory for its header", path);
  }
  if (!e) e = pread_full(f->fd, buf, want, 0, &got);
  if (e) {
    free(buf);
    file_close(f);
    return fail(ATTN_ERR_IO, err, errlen, "%s: cannot read: %s", path, strerror(e));
  }
  s = st_header_parse(buf, (size_t)got, size < got ? got : size, path, &f->h, err, errlen);
  free(buf);
  if (s) file_close(f);
  return s;
}

/* A whole small file (at most limit bytes) in a malloc'ed buffer. */
static attn_status read_small_file(const char *path, const char *what, size_t limit,
                                   unsigned char **bufp, size_t *lenp, char *err, size_t errlen) {
  *bufp = NULL;
  *lenp = 0;
  int fd;
  uint64_t size, got;
  attn_status s = open_regular(path, what, &fd, &size, err, errlen);
  if (s) return s;
  if (size > limit) {
    close(fd);
    return fail(ATTN_ERR_FORMAT, err, errlen, "%s: %" PRIu64 " bytes: a %s is at most %zu", path,
                size, what, limit);
  }
  unsigned char *buf = malloc(size ? (size_t)size : 1);
  if (!buf) {
    close(fd);
    return fail(ATTN_ERR_NOMEM, err, errlen, "%s: out of memory for %" PRIu64 " bytes", path, size);
  }
  int e = pread_full(fd, buf, size, 0, &got);
  close(fd);
  if (e) {
    free(buf);
    return fail(ATTN_ERR_IO, err, errlen, "%s: cannot read: %s", path, strerror(e));
  }
  *bufp = buf;
  *lenp = (size_t)got;
  return ATTN_OK;
}

/* ---- JSON documents (config.json, the index) ----------------------------------------------- */

struct st_config {
  char *name;
  cJSON *root;
};

void st_config_free(st_config *c) {
  if (!c) return;
  cJSON_Delete(c->root);
  free(c->name);
  free(c);
}

attn_status st_config_parse(const void *buf, size_t len, const char *name_, st_config **out,
                            char *err, size_t errlen) {
  const char *name = name_ && *name_ ? name_ : "<json>";
  if (out) *out = NULL;
  if (!out || (!buf && len))
    return fail(ATTN_ERR_INVALID_ARG, err, errlen, "st_config_parse: %s: invalid arguments", name);
  cJSON *root;
  attn_status s = json_parse_object(len ? buf : "", len, 0, name, "the JSON", false, &root, err,
                                    errlen);
  if (s) return s;
  st_config *c = calloc(1, sizeof *c);
  if (!c || !(c->name = strdup(name))) {
    free(c);
    cJSON_Delete(root);
    return fail(ATTN_ERR_NOMEM, err, errlen, "%s: out of memory", name);
  }
  c->root = root;
  *out = c;
  return ATTN_OK;
}

static attn_status json_load(const char *path, size_t limit, st_config **out, char *err,
                             size_t errlen) {
  unsigned char *buf;
  size_t len;
  attn_status s = read_small_file(path, "JSON file", limit, &buf, &len, err, errlen);
  if (s) return s;
  s = st_config_parse(buf, len, path, out, err, errlen);
  free(buf);
  return s;
}

attn_status st_config_load(const char *path, st_config **out, char *err, size_t errlen) {
  if (out) *out = NULL;
  if (!path || !*path || !out)
    return fail(ATTN_ERR_INVALID_ARG, err, errlen, "st_config_load: invalid arguments");
  return json_load(path, ST_CONFIG_MAX, out, err, errlen);
}

void st_config_root(const st_config *c, st_json *root) {
  memset(root, 0, sizeof *root);
  if (!c) return;
  root->node = c->root;
  root->file = c->name;
}

/* The value the getters read: member key of obj, or obj itself. NULL for an
 * absent member; the value's path goes to path. */
static const cJSON *json_lookup(const st_json *obj, const char *key, char *path, size_t cap,
                                attn_status *s, char *err, size_t errlen) {
  const cJSON *o = obj->node;
  *s = ATTN_OK;
  if (!key) {
    path_fmt(path, cap, "%s", obj->path);
    return o;
  }
  path_fmt(path, cap, "%s%s%s", obj->path, *obj->path ? "." : "", key);
  if (!cJSON_IsObject(o)) {
    char what[64];
    *s = fail(ATTN_ERR_FORMAT, err, errlen, "%s: '%s' is %s; expected an object (reading '%s')",
              obj->file, *obj->path ? obj->path : "the top level",
              json_describe(o, what, sizeof what),
              path);
    return NULL;
  }
  return member(o, key);
}

/* The common part of every getter: the value, present and not null, or
 * why not. *v is NULL when it is absent or null and that is allowed. */
static attn_status json_get(const st_json *obj, const char *key, bool *found, const cJSON **v,
                            char *path, char *err, size_t errlen) {
  *v = NULL;
  if (found) *found = false;
  if (!obj || !obj->node)
    return fail(ATTN_ERR_INVALID_ARG, err, errlen, "st_json: invalid arguments");
  attn_status s;
  const cJSON *x = json_lookup(obj, key, path, ST_JSON_PATH, &s, err, errlen);
  if (s) return s;
  if (!x || cJSON_IsNull(x)) {
    if (found) return ATTN_OK;
    if (!x) return fail(ATTN_ERR_FORMAT, err, errlen, "%s: no '%s'", obj->file, path);
    return fail(ATTN_ERR_FORMAT, err, errlen, "%s: '%s' is null", obj->file, path);
  }
  *v = x;
  return ATTN_OK;
}

static attn_status wrong_type(const st_json *obj, const char *path, const cJSON *v,
                              const char *expected, char *err, size_t errlen) {
  char what[64];
  return fail(ATTN_ERR_FORMAT, err, errlen, "%s: '%s' is %s; expected %s", obj->file, path,
              json_describe(v, what, sizeof what), expected);
}

attn_status st_json_int(const st_json *obj, const char *key, int64_t *out, bool *found, char *err,
                        size_t errlen) {
  const cJSON *v;
  char path[ST_JSON_PATH];
  attn_status s = json_get(obj, key, found, &v, path, err, errlen);
  if (s || !v) return s;
  int64_t i;
  if (!json_integer(v, -JSON_INT_MAX, &i))
    return wrong_type(obj, path, v, "an integer", err, errlen);
  if (out) *out = i;
  if (found) *found = true;
  return ATTN_OK;
}

attn_status st_json_number(const st_json *obj, const char *key, double *out, bool *found,
                           char *err, size_t errlen) {
  const cJSON *v;
  char path[ST_JSON_PATH];
  attn_status s = json_get(obj, key, found, &v, path, err, errlen);
  if (s || !v) return s;
  if (!cJSON_IsNumber(v)) return wrong_type(obj, path, v, "a number", err, errlen);
  if (out) *out = v->valuedouble;
  if (found) *found = true;
  return ATTN_OK;
}

attn_status st_json_bool(const st_json *obj, const char *key, bool *out, bool *found, char *err,
                         size_t errlen) {
  const cJSON *v;
  char path[ST_JSON_PATH];
  attn_status s = json_get(obj, key, found, &v, path, err, errlen);
  if (s || !v) return s;
  if (!cJSON_IsBool(v)) return wrong_type(obj, path, v, "true or false", err, errlen);
  if (out) *out = cJSON_IsTrue(v);
  if (found) *found = true;
  return ATTN_OK;
}

attn_status st_json_string(const st_json *obj, const char *key, const char **out, bool *found,
                           char *err, size_t errlen) {
  const cJSON *v;
  char path[ST_JSON_PATH];
  attn_status s = json_get(obj, key, found, &v, path, err, errlen);
  if (s || !v) return s;
  if (!cJSON_IsString(v)) return wrong_type(obj, path, v, "a string", err, errlen);
  if (out) *out = v->valuestring;
  if (found) *found = true;
  return ATTN_OK;
}

static void json_sub(const st_json *obj, const cJSON *v, const char *path, st_json *out) {
  out->node = v;
  out->file = obj->file;
  path_fmt(out->path, sizeof out->path, "%s", path);
}

attn_status st_json_object(const st_json *obj, const char *key, st_json *out, bool *found,
                           char *err, size_t errlen) {
  const cJSON *v;
  char path[ST_JSON_PATH];
  attn_status s = json_get(obj, key, found, &v, path, err, errlen);
  if (s || !v) return s;
  if (!cJSON_IsObject(v)) return wrong_type(obj, path, v, "an object", err, errlen);
  if (out) json_sub(obj, v, path, out);
  if (found) *found = true;
  return ATTN_OK;
}

attn_status st_json_array(const st_json *obj, const char *key, st_json *out, size_t *len,
                          bool *found, char *err, size_t errlen) {
  const cJSON *v;
  char path[ST_JSON_PATH];
  attn_status s = json_get(obj, key, found, &v, path, err, errlen);
  if (s || !v) return s;
  if (!cJSON_IsArray(v)) return wrong_type(obj, path, v, "an array", err, errlen);
  if (out) json_sub(obj, v, path, out);
  if (len) *len = (size_t)cJSON_GetArraySize(v);
  if (found) *found = true;
  return ATTN_OK;
}

attn_status st_json_at(const st_json *arr, size_t i, st_json *out, char *err, size_t errlen) {
  if (!arr || !arr->node || !out || !cJSON_IsArray((const cJSON *)arr->node))
    return fail(ATTN_ERR_INVALID_ARG, err, errlen, "st_json_at: not an array");
  const cJSON *v = ((const cJSON *)arr->node)->child;
  for (size_t k = 0; v && k < i; k++) v = v->next;
  if (!v)
    return fail(ATTN_ERR_INVALID_ARG, err, errlen, "%s: '%s' has no element %zu", arr->file,
                arr->path, i);
  char path[ST_JSON_PATH];
  path_fmt(path, sizeof path, "%s[%zu]", arr->path, i);
  json_sub(arr, v, path, out);
  return ATTN_OK;
}

/* ---- checkpoints ---------------------------------------------------------------------- */

typedef struct ck_entry {
  const st_tensor *t;
  const st_file *f;
} ck_entry;

struct st_checkpoint {
  char *path; /* as given, for messages */
  char *dir;
  st_file *files;
  size_t nfiles;
  ck_entry *e; /* by name */
  size_t n;
};

void st_close(st_checkpoint *ck) {
  if (!ck) return;
  for (size_t i = 0; i < ck->nfiles; i++) file_close(&ck->files[i]);
  free(ck->files);
  free(ck->e);
  free(ck->dir);
  free(ck->path);
  free(ck);
}

const char *st_dir(const st_checkpoint *ck) { return ck ? ck->dir : NULL; }
size_t st_count(const st_checkpoint *ck) { return ck ? ck->n : 0; }
const st_tensor *st_at(const st_checkpoint *ck, size_t i) {
  return ck && i < ck->n ? ck->e[i].t : NULL;
}

static int cmp_entry_name(const void *key, const void *elem) {
  return strcmp((const char *)key, ((const ck_entry *)elem)->t->name);
}

static const ck_entry *find_entry(const st_checkpoint *ck, const char *name) {
  if (!ck || !name || !ck->n) return NULL;
  return bsearch(name, ck->e, ck->n, sizeof *ck->e, cmp_entry_name);
}

const st_tensor *st_find(const st_checkpoint *ck, const char *name) {
  const ck_entry *e = find_entry(ck, name);
  return e ? e->t : NULL;
}

static attn_status missing(const st_checkpoint *ck, const char *name, char *err, size_t errlen) {
  shown a;
  return fail(ATTN_ERR_FORMAT, err, errlen, "%s: no tensor '%s' in the checkpoint", ck->path,
              show(&a, name));
}

attn_status st_get(const st_checkpoint *ck, const char *name, const st_tensor **t, char *err,
                   size_t errlen) {
  if (t) *t = NULL;
  if (!ck || !name || !t)
    return fail(ATTN_ERR_INVALID_ARG, err, errlen, "st_get: invalid arguments");
  const ck_entry *e = find_entry(ck, name);
  if (!e) return missing(ck, name, err, errlen);
  *t = e->t;
  return ATTN_OK;
}

static char *path_join(const char *dir, const char *file) {
  size_t a = strlen(dir), b = strlen(file);
  char *p = malloc(a + b + 2);
  if (p) {
    memcpy(p, dir, a);
    p[a] = '/';
    memcpy(p + a + 1, file, b + 1);
  }
  return p;
}

static int cmp_entry(const void *a, const void *b) {
  return strcmp(((const ck_entry *)a)->t->name, ((const ck_entry *)b)->t->name);
}

/* One .safetensors file: every tensor in it. */
static attn_status open_single(st_checkpoint *ck, const char *file, char *err, size_t errlen) {
  if (!(ck->files = calloc(1, sizeof *ck->files)))
    return fail(ATTN_ERR_NOMEM, err, errlen, "%s: out of memory", file);
  attn_status s = file_open(file, &ck->files[0], err, errlen);
  if (s) return s;
  ck->nfiles = 1;
  const st_header *h = ck->files[0].h;
  ck->n = st_header_count(h);
  if (!(ck->e = malloc((ck->n ? ck->n : 1) * sizeof *ck->e)))
    return fail(ATTN_ERR_NOMEM, err, errlen, "%s: out of memory", file);
  for (size_t i = 0; i < ck->n; i++) {
    ck->e[i].t = st_header_tensor(h, i);
    ck->e[i].f = &ck->files[0];
  }
  return ATTN_OK;
}

/* A shard named in an index: a plain file name in the checkpoint's directory. */
static bool plain_file_name(const char *s) {
  return *s && !strchr(s, '/') && strcmp(s, ".") != 0 && strcmp(s, "..") != 0;
}

/* The largest index read: an index is the tensor names, one line each. */
#define ST_INDEX_MAX ((size_t)ST_MAX_HEADER)

static attn_status open_sharded(st_checkpoint *ck, const char *index, char *err, size_t errlen) {
  st_config *doc;
  attn_status s = json_load(index, ST_INDEX_MAX, &doc, err, errlen);
  if (s) return s;
  st_json root, wm;
  st_config_root(doc, &root);
  const char **shards = NULL;
  if ((s = st_json_object(&root, "weight_map", &wm, NULL, err, errlen))) goto done;
  const cJSON *map = wm.node;
  size_t n = 0;
  for (const cJSON *c = map->child; c; c = c->next, n++) {
    shown a, b;
    char what[64];
    if (!cJSON_IsString(c)) {
      s = fail(ATTN_ERR_FORMAT, err, errlen,
               "%s: \"weight_map\": tensor '%s' is %s; expected the name of its shard file", index,
               show(&a, c->string), json_describe(c, what, sizeof what));
      goto done;
    }
    if (!plain_file_name(c->valuestring)) {
      s = fail(ATTN_ERR_FORMAT, err, errlen,
               "%s: \"weight_map\": tensor '%s': shard '%s' is not a plain file name in the "
               "checkpoint's directory",
               index, show(&a, c->string), show(&b, c->valuestring));
      goto done;
    }
  }
  /* The distinct shards, each opened once. */
  shards = malloc((n ? n : 1) * sizeof *shards);
  ck->e = malloc((n ? n : 1) * sizeof *ck->e);
  if (!shards || !ck->e) {
    s = fail(ATTN_ERR_NOMEM, err, errlen, "%s: out of memory", index);
    goto done;
  }
  size_t ns = 0;
  for (const cJSON *c = map->child; c; c = c->next) shards[ns++] = c->valuestring;
  qsort(shards, ns, sizeof *shards, cmp_str_ptr);
  size_t u = 0;
  for (size_t i = 0; i < ns; i++)
    if (!u || strcmp(shards[u - 1], shards[i]) != 0) shards[u++] = shards[i];
  if (!(ck->files = calloc(u ? u : 1, sizeof *ck->files))) {
    s = fail(ATTN_ERR_NOMEM, err, errlen, "%s: out of memory", index);
    goto done;
  }
  for (size_t i = 0; i < u; i++) {
    char *p = path_join(ck->dir, shards[i]);
    if (!p) {
      s = fail(ATTN_ERR_NOMEM, err, errlen, "%s: out of memory", index);
      goto done;
    }
    s = file_open(p, &ck->files[i], err, errlen);
    free(p);
    if (s) goto done;
    ck->nfiles++;
  }
  for (const cJSON *c = map->child; c; c = c->next) {
    const char **sh = bsearch(&c->valuestring, shards, u, sizeof *shards, cmp_str_ptr);
    const st_file *f = &ck->files[sh - shards];
    const st_tensor *t = st_header_find(f->h, c->string);
    if (!t) {
      shown a, b;
      s = fail(ATTN_ERR_FORMAT, err, errlen, "%s: tensor '%s' is not in shard '%s' (%s)", index,
               show(&a, c->string), show(&b, c->valuestring), f->path);
      goto done;
    }
    ck->e[ck->n].t = t;
    ck->e[ck->n].f = f;
    ck->n++;
  }
  qsort(ck->e, ck->n, sizeof *ck->e, cmp_entry); /* unique: the index has no duplicated key */
done:
  free(shards);
  st_config_free(doc);
  return s;
}

attn_status st_open(const char *path, st_checkpoint **out, char *err, size_t errlen) {
  if (out) *out = NULL;
  if (!path || !*path || !out)
    return fail(ATTN_ERR_INVALID_ARG, err, errlen, "st_open: invalid arguments");
  struct stat st;
  if (stat(path, &st) != 0)
    return fail(ATTN_ERR_IO, err, errlen, "%s: cannot open: %s", path, strerror(errno));
  st_checkpoint *ck = calloc(1, sizeof *ck);
  if (!ck || !(ck->path = strdup(path))) {
    free(ck);
    return fail(ATTN_ERR_NOMEM, err, errlen, "%s: out of memory", path);
  }
  attn_status s;
  if (S_ISDIR(st.st_mode)) {
    /* As transformers looks: the single file first, then the index. */
    char *single = NULL, *index = NULL;
    if (!(ck->dir = strdup(path)) || !(single = path_join(path, "model.safetensors")) ||
        !(index = path_join(path, "model.safetensors.index.json"))) {
      s = fail(ATTN_ERR_NOMEM, err, errlen, "%s: out of memory", path);
    } else if (lstat(single, &st) == 0) { /* a dangling link is named by the open */
      s = open_single(ck, single, err, errlen);
    } else if (lstat(index, &st) == 0) {
      s = open_sharded(ck, index, err, errlen);
    } else {
      s = fail(ATTN_ERR_IO, err, errlen,
               "%s: no model.safetensors or model.safetensors.index.json in this directory", path);
    }
    free(single);
    free(index);
  } else {
    const char *slash = strrchr(path, '/');
    if (!slash) ck->dir = strdup(".");
    else if (slash == path) ck->dir = strdup("/");
    else ck->dir = strndup(path, (size_t)(slash - path));
    s = ck->dir ? open_single(ck, path, err, errlen)
                : fail(ATTN_ERR_NOMEM, err, errlen, "%s: out of memory", path);
  }
  if (s) {
    st_close(ck);
    return s;
  }
  *out = ck;
  return ATTN_OK;
}

/* The bytes of e's tensor into buf (nbytes of them). */
static attn_status read_tensor(const ck_entry *e, void *buf, char *err, size_t errlen) {
  const st_tensor *t = e->t;
  uint64_t got;
  int er = pread_full(e->f->fd, buf, t->nbytes, t->offset, &got);
  shown a;
  if (er)
    return fail(ATTN_ERR_IO, err, errlen, "%s: tensor '%s': cannot read: %s", t->file,
                show(&a, t->name), strerror(er));
  if (got < t->nbytes)
    return fail(ATTN_ERR_IO, err, errlen,
                "%s: tensor '%s': the file ends after %" PRIu64 " of its %" PRIu64
                " bytes (it has changed since it was opened)",
                t->file, show(&a, t->name), got, t->nbytes);
  return ATTN_OK;
}

attn_status st_read_raw(const st_checkpoint *ck, const char *name, void **data,
                        const st_tensor **tp, char *err, size_t errlen) {
  if (data) *data = NULL;
  if (tp) *tp = NULL;
  if (!ck || !name || !data)
    return fail(ATTN_ERR_INVALID_ARG, err, errlen, "st_read_raw: invalid arguments");
  const ck_entry *e = find_entry(ck, name);
  if (!e) return missing(ck, name, err, errlen);
  const st_tensor *t = e->t;
  shown a;
  void *buf = t->nbytes <= SIZE_MAX ? malloc(t->nbytes ? (size_t)t->nbytes : 1) : NULL;
  if (!buf)
    return fail(ATTN_ERR_NOMEM, err, errlen, "%s: tensor '%s': out of memory for %" PRIu64 " bytes",
                t->file, show(&a, t->name), t->nbytes);
  attn_status s = read_tensor(e, buf, err, errlen);
  if (s) {
    free(buf);
    return s;
  }
  *data = buf;
  if (tp) *tp = t;
  return ATTN_OK;
}

attn_status st_read_f32(const st_checkpoint *ck, const char *name, int ndim,
                        const int64_t *shape, float **data, const st_tensor **tp, char *err,
                        size_t errlen) {
  if (data) *data = NULL;
  if (tp) *tp = NULL;
  if (!ck || !name || !data || (shape && ndim < 0))
    return fail(ATTN_ERR_INVALID_ARG, err, errlen, "st_read_f32: invalid arguments");
  const ck_entry *e = find_entry(ck, name);
  if (!e) return missing(ck, name, err, errlen);
  const st_tensor *t = e->t;
  shown a;
  if (t->dtype != ST_F32 && t->dtype != ST_F16 && t->dtype != ST_BF16)
    return fail(ATTN_ERR_FORMAT, err, errlen,
                "%s: tensor '%s' has dtype %s; expected F32, F16 or BF16", t->file,
                show(&a, t->name), st_dtype_name(t->dtype));
  if (shape) {
    bool same = ndim == t->ndim;
    for (int i = 0; same && i < ndim; i++) same = shape[i] == t->shape[i];
    if (!same) {
      char got[160], want[160];
      shape_str(t->shape, t->ndim, got, sizeof got);
      shape_str(shape, ndim, want, sizeof want);
      return fail(ATTN_ERR_FORMAT, err, errlen, "%s: tensor '%s' has shape %s; expected %s",
                  t->file, show(&a, t->name), got, want);
    }
  }
  /* count <= nbytes / 2, so the floats fit whenever the file does. */
  const uint64_t count = t->count;
  float *f = count <= SIZE_MAX / 4 ? malloc(count ? (size_t)count * 4 : 1) : NULL;
  if (!f)
    return fail(ATTN_ERR_NOMEM, err, errlen, "%s: tensor '%s': out of memory for %" PRIu64
                " floats", t->file, show(&a, t->name), count);
  /* 16-bit data is read into the upper half of the float buffer and widened
   * front to back: float i (bytes 4i..4i+3) only overwrites elements < i + 1
   * (bytes >= 2 count + 2i), already read. No second buffer for a 1 GiB
   * embedding. */
  unsigned char *raw = (unsigned char *)f + (t->dtype == ST_F32 ? 0 : 2 * count);
  attn_status s = read_tensor(e, raw, err, errlen);
  if (s) {
    free(f);
    return s;
  }
  if (t->dtype == ST_F32) {
    for (uint64_t i = 0; i < count; i++) {
      const unsigned char *p = raw + 4 * i;
      uint32_t u = (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 |
                   (uint32_t)p[3] << 24;
      memcpy(&f[i], &u, 4);
    }
  } else {
    const bool half = t->dtype == ST_F16;
    for (uint64_t i = 0; i < count; i++) {
      uint16_t h = (uint16_t)(raw[2 * i] | raw[2 * i + 1] << 8);
      f[i] = half ? attn_f16_to_f32(h) : attn_bf16_to_f32(h);
    }
  }
  *data = f;
  if (tp) *tp = t;
  return ATTN_OK;
}
