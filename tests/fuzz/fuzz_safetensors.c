/* Fuzzes the safetensors header parser (tools/safetensors.c), which the attn
 * command runs on checkpoints it did not write, and the JSON getters of the
 * config.json reader on the same bytes. Beyond "no crash, no leak, no
 * over-read", every answer must be self-consistent: an accepted header
 * describes tensors that tile exactly the data section of the input, and a
 * refusal leaves *out NULL and says why, naming the input. */
#include <stdbool.h>
#include <string.h>

#include "fuzz.h"
#include "safetensors.h"

int LLVMFuzzerInitialize(int *argc, char ***argv) {
  (void)argc;
  (void)argv;
  return 0;
}

static void check_refusal(attn_status s, const char *err, size_t cap, const char *name) {
  FUZZ_CHECK(s == ATTN_ERR_FORMAT, "status %d, want ATTN_ERR_FORMAT: %.*s", (int)s, (int)cap, err);
  FUZZ_CHECK(memchr(err, '\0', cap) != NULL, "message not terminated");
  FUZZ_CHECK(err[0] != '\0', "empty message");
  FUZZ_CHECK(strstr(err, name) != NULL, "message does not name the input: %s", err);
  FUZZ_CHECK(strchr(err, '\n') == NULL, "message is not one line: %s", err);
}

static int cmp_begin(const void *a, const void *b) {
  const st_tensor *x = *(const st_tensor *const *)a, *y = *(const st_tensor *const *)b;
  if (x->begin != y->begin) return x->begin < y->begin ? -1 : 1;
  return x->end < y->end ? -1 : x->end > y->end;
}

static void check_header(const st_header *h, const uint8_t *data, size_t size) {
  uint64_t n = 0;
  for (int i = 7; i >= 0; i--) n = n << 8 | data[i];
  FUZZ_CHECK(n <= ST_MAX_HEADER && n <= size - 8, "header length %llu of %zu bytes",
             (unsigned long long)n, size);
  const uint64_t data_size = size - 8 - n;
  const size_t count = st_header_count(h);
  const st_tensor **by = malloc((count ? count : 1) * sizeof *by);
  FUZZ_CHECK(by != NULL, "out of memory");
  for (size_t i = 0; i < count; i++) {
    const st_tensor *t = st_header_tensor(h, i);
    FUZZ_CHECK(t && t->name && t->shape, "tensor %zu incomplete", i);
    if (i) FUZZ_CHECK(strcmp(st_header_tensor(h, i - 1)->name, t->name) < 0, "names not sorted");
    FUZZ_CHECK(st_header_find(h, t->name) == t, "find('%s') is another tensor", t->name);
    FUZZ_CHECK(strcmp(t->file, "fuzz.safetensors") == 0, "file '%s'", t->file);
    FUZZ_CHECK((unsigned)t->dtype < ST_NDTYPES, "dtype %d", (int)t->dtype);
    FUZZ_CHECK(t->ndim >= 0, "rank %d", t->ndim);
    uint64_t c = 1;
    for (int d = 0; d < t->ndim; d++) {
      FUZZ_CHECK(t->shape[d] >= 0, "shape[%d] = %lld", d, (long long)t->shape[d]);
      c *= (uint64_t)t->shape[d]; /* cannot overflow: the parser checked */
    }
    FUZZ_CHECK(c == t->count, "count %llu, product of shape %llu", (unsigned long long)t->count,
               (unsigned long long)c);
    FUZZ_CHECK(t->count * st_dtype_bits(t->dtype) == 8 * t->nbytes, "nbytes");
    FUZZ_CHECK(t->begin <= t->end && t->end <= data_size && t->nbytes == t->end - t->begin,
               "offsets [%llu, %llu] of %llu", (unsigned long long)t->begin,
               (unsigned long long)t->end, (unsigned long long)data_size);
    FUZZ_CHECK(t->offset == 8 + n + t->begin, "offset");
    /* Touch the tensor's bytes: past the input is an ASan report. */
    volatile uint8_t sum = 0;
    for (uint64_t b = 0; b < t->nbytes; b++) sum ^= data[t->offset + b];
    (void)sum;
    by[i] = t;
  }
  /* Sorted by offset, the tensors tile [0, data_size). */
  qsort(by, count, sizeof *by, cmp_begin);
  uint64_t pos = 0;
  for (size_t i = 0; i < count; i++) {
    FUZZ_CHECK(by[i]->begin == pos, "'%s' starts at %llu, not %llu", by[i]->name,
               (unsigned long long)by[i]->begin, (unsigned long long)pos);
    pos = by[i]->end;
  }
  FUZZ_CHECK(pos == data_size, "the tensors end at %llu of %llu", (unsigned long long)pos,
             (unsigned long long)data_size);
  free(by);
  (void)st_header_metadata(h, "format");
}

/* Every getter on one value (key NULL) or member; each answers OK or a
 * format error that names the document. */
static void probe(const st_json *v, const char *key, int depth);

static void probe_all(const st_json *v, const char *key, int depth) {
  char err[ST_ERR_MAX];
  bool found;
  int64_t i;
  double d;
  bool b;
  const char *s;
  st_json sub;
  size_t len;
  attn_status r;
  r = st_json_int(v, key, &i, &found, err, sizeof err);
  if (r) check_refusal(r, err, sizeof err, "fuzz.json");
  r = st_json_number(v, key, &d, &found, err, sizeof err);
  if (r) check_refusal(r, err, sizeof err, "fuzz.json");
  r = st_json_bool(v, key, &b, &found, err, sizeof err);
  if (r) check_refusal(r, err, sizeof err, "fuzz.json");
  r = st_json_string(v, key, &s, NULL, err, sizeof err);
  if (r) check_refusal(r, err, sizeof err, "fuzz.json");
  else FUZZ_CHECK(s != NULL, "string without a value");
  r = st_json_object(v, key, &sub, &found, err, sizeof err);
  if (r) check_refusal(r, err, sizeof err, "fuzz.json");
  else if (found && depth < 4) probe(&sub, NULL, depth + 1);
  r = st_json_array(v, key, &sub, &len, &found, err, sizeof err);
  if (r) check_refusal(r, err, sizeof err, "fuzz.json");
  else if (found && depth < 4)
    for (size_t k = 0; k < len && k < 8; k++) {
      st_json e;
      FUZZ_CHECK(st_json_at(&sub, k, &e, err, sizeof err) == ATTN_OK, "element %zu: %s", k, err);
      probe_all(&e, NULL, depth + 1);
    }
}

static void probe(const st_json *v, const char *key, int depth) {
  static const char *const keys[] = {"dtype", "shape", "data_offsets", "__metadata__",
                                     "weight_map", "hidden_size", "rope_scaling", "x", "a"};
  if (key) {
    probe_all(v, key, depth);
    return;
  }
  probe_all(v, NULL, depth);
  for (size_t k = 0; k < sizeof keys / sizeof keys[0]; k++) probe_all(v, keys[k], depth);
}

static void fuzz_config(const uint8_t *data, size_t size) {
  st_config *c = (st_config *)&c; /* garbage in: the parser must set it */
  char err[ST_ERR_MAX];
  memset(err, 0x5A, sizeof err);
  attn_status s = st_config_parse(data, size, "fuzz.json", &c, err, sizeof err);
  if (s) {
    check_refusal(s, err, sizeof err, "fuzz.json");
    FUZZ_CHECK(c == NULL, "*out not NULL on failure");
    return;
  }
  st_json root;
  st_config_root(c, &root);
  probe(&root, NULL, 0);
  st_config_free(c);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  st_header *h = (st_header *)&h;
  char err[ST_ERR_MAX];
  memset(err, 0x5A, sizeof err);
  attn_status s = st_header_parse(data, size, size, "fuzz.safetensors", &h, err, sizeof err);
  if (s == ATTN_OK) {
    check_header(h, data, size);
    st_header_free(h);
  } else {
    check_refusal(s, err, sizeof err, "fuzz.safetensors");
    FUZZ_CHECK(h == NULL, "*out not NULL on failure");
  }
  /* The same bytes as a JSON document, and the header's JSON as one. */
  fuzz_config(data, size);
  if (size >= 8) {
    uint64_t n = 0;
    for (int i = 7; i >= 0; i--) n = n << 8 | data[i];
    if (n <= size - 8) fuzz_config(data + 8, (size_t)n);
  }
  return 0;
}
