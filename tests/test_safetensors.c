/* The safetensors checkpoint reader and the config.json reader
 * (tools/safetensors.c): good checkpoints the Python safetensors package
 * wrote (tests/data/safetensors, from tools/gen-safetensors-fixtures.py),
 * read and compared bit for bit with the float32 values numpy and ml_dtypes
 * computed; and every refusal, each checking the status and that the message
 * names the file and the offending tensor, key or field. Corrupt files are
 * built from the good bytes or from headers written here, in a temporary
 * directory removed at the end. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <fcntl.h>
#include <ftw.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "npy.h"
#include "safetensors.h"

/* ---- helpers ------------------------------------------------------------------ */

static char data_dir[1024]; /* <srcdir>/tests/data/safetensors */
static char tmpdir[256];

static void path_of(char *buf, size_t cap, const char *base, const char *rel) {
  int n = snprintf(buf, cap, "%s/%s", base, rel);
  assert_true(n > 0 && (size_t)n < cap);
}

static unsigned char *slurp(const char *path, size_t *len) {
  FILE *f = fopen(path, "rb");
  assert_non_null(f);
  assert_int_equal(fseek(f, 0, SEEK_END), 0);
  long n = ftell(f);
  assert_true(n >= 0);
  rewind(f);
  unsigned char *b = malloc((size_t)n + 1);
  assert_non_null(b);
  assert_int_equal(fread(b, 1, (size_t)n, f), (size_t)n);
  fclose(f);
  *len = (size_t)n;
  return b;
}

static void spit(const char *path, const void *b, size_t len) {
  FILE *f = fopen(path, "wb");
  assert_non_null(f);
  assert_int_equal(fwrite(b, 1, len, f), len);
  assert_int_equal(fclose(f), 0);
}

static void spit_str(const char *path, const char *s) { spit(path, s, strlen(s)); }

/* Every substring (a NULL-terminated list) is in msg, else the test fails
 * showing the message. */
static void expect_msg(const char *msg, ...) {
  va_list ap;
  va_start(ap, msg);
  const char *want;
  while ((want = va_arg(ap, const char *)) != NULL)
    if (!strstr(msg, want)) {
      print_error("message \"%s\" lacks \"%s\"\n", msg, want);
      va_end(ap);
      fail();
    }
  va_end(ap);
}

/* A safetensors image: the 8-byte length of json, json, then ndata bytes
 * (0, 1, 2, ...). */
typedef struct img {
  unsigned char b[8192];
  size_t len;
} img;

static void make_img(img *m, const char *json, size_t ndata) {
  size_t n = strlen(json);
  assert_true(8 + n + ndata <= sizeof m->b);
  for (int i = 0; i < 8; i++) m->b[i] = (unsigned char)((uint64_t)n >> (8 * i));
  memcpy(m->b + 8, json, n);
  for (size_t i = 0; i < ndata; i++) m->b[8 + n + i] = (unsigned char)i;
  m->len = 8 + n + ndata;
}

static void set_len(img *m, uint64_t n) {
  for (int i = 0; i < 8; i++) m->b[i] = (unsigned char)(n >> (8 * i));
}

#define CASE "case.safetensors"

/* The header of m is refused with a message holding every substring. */
#define expect_refused(m, ...) expect_refused_(m, __VA_ARGS__, (const char *)NULL)
static void expect_refused_(const img *m, ...) {
  st_header *h = (st_header *)1;
  char err[ST_ERR_MAX] = "";
  attn_status s = st_header_parse(m->b, m->len, m->len, CASE, &h, err, sizeof err);
  if (s != ATTN_ERR_FORMAT || !strstr(err, CASE)) {
    print_error("status %d (want ATTN_ERR_FORMAT), message \"%s\"\n", s, err);
    fail();
  }
  assert_null(h);
  assert_null(strchr(err, '\n'));
  va_list ap;
  va_start(ap, m);
  const char *want;
  while ((want = va_arg(ap, const char *)) != NULL)
    if (!strstr(err, want)) {
      print_error("message \"%s\" lacks \"%s\"\n", err, want);
      va_end(ap);
      fail();
    }
  va_end(ap);
}

static st_header *expect_parsed(const img *m) {
  st_header *h = NULL;
  char err[ST_ERR_MAX] = "";
  attn_status s = st_header_parse(m->b, m->len, m->len, CASE, &h, err, sizeof err);
  if (s != ATTN_OK) {
    print_error("refused: %s\n", err);
    fail();
  }
  assert_non_null(h);
  return h;
}

/* The float tensors of the fixtures, with their dtypes. */
#define L0 "model.layers.0."
static const struct {
  const char *name;
  st_dtype dtype;
} float_tensors[] = {
    {L0 "self_attn.q_proj.weight", ST_F32},  {L0 "self_attn.k_proj.weight", ST_F16},
    {L0 "self_attn.v_proj.weight", ST_BF16}, {L0 "self_attn.o_proj.weight", ST_BF16},
    {L0 "input_layernorm.weight", ST_F32},   {"model.embed_tokens.weight", ST_F16},
};
#define N_FLOAT (sizeof float_tensors / sizeof float_tensors[0])

/* Every float tensor of ck as float32, bit for bit what numpy wrote. */
static void check_floats(const st_checkpoint *ck) {
  char err[ST_ERR_MAX];
  for (size_t i = 0; i < N_FLOAT; i++) {
    char rel[256], path[1400];
    snprintf(rel, sizeof rel, "expected/%s.npy", float_tensors[i].name);
    path_of(path, sizeof path, data_dir, rel);
    npy_array want;
    const npy_want w = {NPY_F32, 1, 4};
    assert_int_equal(npy_read_file(path, &w, &want, err, sizeof err), ATTN_OK);
    float *got;
    const st_tensor *t;
    attn_status s = st_read_f32(ck, float_tensors[i].name, want.ndim, want.shape, &got, &t, err,
                                sizeof err);
    if (s != ATTN_OK) {
      print_error("%s: %s\n", float_tensors[i].name, err);
      fail();
    }
    assert_int_equal(t->dtype, float_tensors[i].dtype);
    assert_int_equal(t->count, want.count);
    assert_memory_equal(got, want.data, want.count * sizeof(float)); /* NaN, -0 included */
    free(got);
    /* Any shape: the same values. */
    assert_int_equal(st_read_f32(ck, float_tensors[i].name, 0, NULL, &got, NULL, err, sizeof err),
                     ATTN_OK);
    assert_memory_equal(got, want.data, want.count * sizeof(float));
    free(got);
    npy_free(&want);
  }
}

/* arange(16) as I64 [1, 16], as the script wrote it. */
static void check_position_ids(const st_checkpoint *ck) {
  char err[ST_ERR_MAX];
  void *raw;
  const st_tensor *t;
  assert_int_equal(st_read_raw(ck, "model.position_ids", &raw, &t, err, sizeof err), ATTN_OK);
  assert_int_equal(t->dtype, ST_I64);
  assert_int_equal(t->ndim, 2);
  assert_int_equal(t->shape[0], 1);
  assert_int_equal(t->shape[1], 16);
  assert_int_equal(t->nbytes, 128);
  const unsigned char *b = raw;
  for (int i = 0; i < 16; i++) {
    uint64_t v = 0;
    for (int k = 7; k >= 0; k--) v = v << 8 | b[8 * i + k];
    assert_int_equal(v, i);
  }
  free(raw);
}

/* ---- good checkpoints --------------------------------------------------------------- */

static void test_single_dir(void **state) {
  (void)state;
  char dir[1200], err[ST_ERR_MAX];
  path_of(dir, sizeof dir, data_dir, "single");
  st_checkpoint *ck;
  assert_int_equal(st_open(dir, &ck, err, sizeof err), ATTN_OK);
  assert_string_equal(st_dir(ck), dir);
  assert_int_equal(st_count(ck), 8);
  for (size_t i = 1; i < st_count(ck); i++)
    assert_true(strcmp(st_at(ck, i - 1)->name, st_at(ck, i)->name) < 0);
  assert_null(st_at(ck, 8));
  check_floats(ck);
  check_position_ids(ck);

  const st_tensor *t = st_find(ck, L0 "self_attn.q_proj.weight");
  assert_non_null(t);
  assert_int_equal(t->ndim, 2);
  assert_int_equal(t->shape[0], 8);
  assert_int_equal(t->shape[1], 8);
  assert_int_equal(t->nbytes, 256);
  assert_non_null(strstr(t->file, "single/model.safetensors"));
  t = st_find(ck, L0 "mlp.gate_proj.weight_scale");
  assert_non_null(t);
  assert_int_equal(t->dtype, ST_F8_E4M3);

  /* Dtypes a layer does not take are refused by st_read_f32, naming both. */
  float *f = (float *)1;
  assert_int_equal(st_read_f32(ck, "model.position_ids", 0, NULL, &f, NULL, err, sizeof err),
                   ATTN_ERR_FORMAT);
  assert_null(f);
  expect_msg(err, "model.safetensors", "tensor 'model.position_ids'", "dtype I64",
             "expected F32, F16 or BF16", NULL);
  assert_int_equal(
      st_read_f32(ck, L0 "mlp.gate_proj.weight_scale", 0, NULL, &f, NULL, err, sizeof err),
      ATTN_ERR_FORMAT);
  expect_msg(err, "'" L0 "mlp.gate_proj.weight_scale'", "dtype F8_E4M3", NULL);
  /* A shape other than expected: both shapes named. */
  const int64_t s84[2] = {8, 4}, s64[1] = {64}, s881[3] = {8, 8, 1};
  assert_int_equal(st_read_f32(ck, L0 "self_attn.q_proj.weight", 2, s84, &f, NULL, err, sizeof err),
                   ATTN_ERR_FORMAT);
  expect_msg(err, "'" L0 "self_attn.q_proj.weight'", "has shape [8, 8]; expected [8, 4]", NULL);
  assert_int_equal(st_read_f32(ck, L0 "self_attn.q_proj.weight", 1, s64, &f, NULL, err, sizeof err),
                   ATTN_ERR_FORMAT);
  expect_msg(err, "has shape [8, 8]; expected [64]", NULL);
  assert_int_equal(
      st_read_f32(ck, L0 "self_attn.k_proj.weight", 3, s881, &f, NULL, err, sizeof err),
      ATTN_ERR_FORMAT);
  expect_msg(err, "has shape [4, 8]; expected [8, 8, 1]", NULL);
  /* A missing tensor, named, from each lookup. */
  const char *nope = "model.layers.7.self_attn.q_proj.weight";
  assert_null(st_find(ck, nope));
  assert_int_equal(st_get(ck, nope, &t, err, sizeof err), ATTN_ERR_FORMAT);
  assert_null(t);
  expect_msg(err, dir, "no tensor 'model.layers.7.self_attn.q_proj.weight'", NULL);
  void *raw = (void *)1;
  assert_int_equal(st_read_raw(ck, nope, &raw, NULL, err, sizeof err), ATTN_ERR_FORMAT);
  assert_null(raw);
  expect_msg(err, "no tensor 'model.layers.7", NULL);
  assert_int_equal(st_read_f32(ck, nope, 0, NULL, &f, NULL, err, sizeof err), ATTN_ERR_FORMAT);
  expect_msg(err, "no tensor 'model.layers.7", NULL);
  assert_int_equal(st_get(ck, L0 "self_attn.v_proj.weight", &t, err, sizeof err), ATTN_OK);
  assert_int_equal(t->dtype, ST_BF16);
  st_close(ck);
}

static void test_single_file(void **state) {
  (void)state;
  char path[1200], dir[1200], err[ST_ERR_MAX];
  path_of(path, sizeof path, data_dir, "single/model.safetensors");
  path_of(dir, sizeof dir, data_dir, "single");
  st_checkpoint *ck;
  assert_int_equal(st_open(path, &ck, err, sizeof err), ATTN_OK);
  assert_string_equal(st_dir(ck), dir);
  assert_int_equal(st_count(ck), 8);
  check_floats(ck);
  check_position_ids(ck);
  st_close(ck);

  /* The header alone, from memory: metadata and offsets as the package wrote. */
  size_t len;
  unsigned char *b = slurp(path, &len);
  st_header *h;
  assert_int_equal(st_header_parse(b, len, len, path, &h, err, sizeof err), ATTN_OK);
  assert_int_equal(st_header_count(h), 8);
  assert_string_equal(st_header_metadata(h, "format"), "pt");
  assert_null(st_header_metadata(h, "nope"));
  const st_tensor *t = st_header_find(h, "model.position_ids");
  assert_non_null(t);
  assert_int_equal(t->begin, 0);
  assert_int_equal(t->end, 128);
  uint64_t n = 0;
  for (int i = 7; i >= 0; i--) n = n << 8 | b[i];
  assert_int_equal(t->offset, 8 + n);
  st_header_free(h);
  free(b);
}

static void test_sharded(void **state) {
  (void)state;
  char dir[1200], err[ST_ERR_MAX];
  path_of(dir, sizeof dir, data_dir, "sharded");
  st_checkpoint *ck;
  attn_status s = st_open(dir, &ck, err, sizeof err);
  if (s) print_error("%s\n", err);
  assert_int_equal(s, ATTN_OK);
  assert_string_equal(st_dir(ck), dir);
  /* The index names 8; the tensor of shard 2 it does not name is not part of it. */
  assert_int_equal(st_count(ck), 8);
  assert_null(st_find(ck, "lm_head.unlisted"));
  check_floats(ck);
  check_position_ids(ck);
  assert_non_null(strstr(st_find(ck, L0 "self_attn.k_proj.weight")->file,
                         "sharded/model-00001-of-00002.safetensors"));
  assert_non_null(strstr(st_find(ck, L0 "self_attn.o_proj.weight")->file,
                         "sharded/model-00002-of-00002.safetensors"));
  st_close(ck);
}

/* ---- headers from memory: every refusal --------------------------------------------- */

#define F32_23 "{\"dtype\":\"F32\",\"shape\":[2,3],\"data_offsets\":[0,24]}"

static void test_header_accepts(void **state) {
  (void)state;
  img m;
  /* Baseline; whitespace around the object and trailing padding. */
  make_img(&m, " \n{\"a\": " F32_23 "}\t\r\n   ", 24);
  st_header *h = expect_parsed(&m);
  assert_int_equal(st_header_count(h), 1);
  const st_tensor *t = st_header_tensor(h, 0);
  assert_string_equal(t->name, "a");
  assert_int_equal(t->count, 6);
  assert_int_equal(t->offset, m.len - 24);
  assert_string_equal(t->file, CASE);
  st_header_free(h);
  /* No tensors at all; metadata only. */
  make_img(&m, "{}", 0);
  h = expect_parsed(&m);
  assert_int_equal(st_header_count(h), 0);
  assert_null(st_header_tensor(h, 0));
  assert_null(st_header_find(h, "a"));
  st_header_free(h);
  make_img(&m, "{\"__metadata__\":{\"format\":\"pt\",\"\":\"\"}}", 0);
  h = expect_parsed(&m);
  assert_string_equal(st_header_metadata(h, "format"), "pt");
  assert_string_equal(st_header_metadata(h, ""), "");
  st_header_free(h);
  /* A scalar, an empty tensor, offsets in any order, integers written as
   * 1.0 and 1e1 (cJSON reads numbers as doubles). */
  make_img(&m,
           "{\"z\":{\"dtype\":\"I64\",\"shape\":[0,3],\"data_offsets\":[4,4]},"
           "\"s\":{\"dtype\":\"F32\",\"shape\":[],\"data_offsets\":[0,4]},"
           "\"w\":{\"data_offsets\":[4.0,1.4e1],\"shape\":[1e1],\"dtype\":\"U8\"}}",
           14);
  h = expect_parsed(&m);
  assert_int_equal(st_header_count(h), 3);
  t = st_header_find(h, "s");
  assert_int_equal(t->ndim, 0);
  assert_int_equal(t->count, 1);
  t = st_header_find(h, "z");
  assert_int_equal(t->count, 0);
  assert_int_equal(t->nbytes, 0);
  t = st_header_find(h, "w");
  assert_int_equal(t->shape[0], 10);
  assert_int_equal(t->end, 14);
  st_header_free(h);
  /* A 0 anywhere makes the count 0: no overflow, however large the rest. */
  make_img(&m,
           "{\"e\":{\"dtype\":\"F64\",\"shape\":[4294967296,0,4294967296],"
           "\"data_offsets\":[0,0]}}",
           0);
  h = expect_parsed(&m);
  assert_int_equal(st_header_tensor(h, 0)->count, 0);
  st_header_free(h);
  /* Every dtype of the format, by its name and size. */
  for (int d = 0; d < ST_NDTYPES; d++) {
    char json[256];
    unsigned bits = st_dtype_bits((st_dtype)d);
    snprintf(json, sizeof json,
             "{\"t\":{\"dtype\":\"%s\",\"shape\":[4,2],\"data_offsets\":[0,%u]}}",
             st_dtype_name((st_dtype)d), bits);
    make_img(&m, json, bits);
    h = expect_parsed(&m);
    assert_int_equal(st_header_tensor(h, 0)->dtype, d);
    assert_int_equal(st_header_tensor(h, 0)->nbytes, bits);
    st_header_free(h);
  }
  assert_string_equal(st_dtype_name(ST_NDTYPES), "?");
  assert_int_equal(st_dtype_bits(ST_NDTYPES), 0);
  /* UTF-8 names, escapes: "a\\u0000" is a backslash and text, not a NUL. */
  make_img(&m,
           "{\"caf\xc3\xa9 \xf0\x9f\x98\x80\":{\"dtype\":\"BOOL\",\"shape\":[1],\"data_offsets\":"
           "[0,1]},\"a\\\\u0000\\n\\u00e9\":{\"dtype\":\"BOOL\",\"shape\":[1],"
           "\"data_offsets\":[1,2]}}",
           2);
  h = expect_parsed(&m);
  assert_non_null(st_header_find(h, "caf\xc3\xa9 \xf0\x9f\x98\x80"));
  assert_non_null(st_header_find(h, "a\\u0000\n\xc3\xa9"));
  st_header_free(h);
}

static void test_header_length_refused(void **state) {
  (void)state;
  img m;
  make_img(&m, "{\"a\":" F32_23 "}", 24);
  img t = m;
  char msg[128];
  t.len = 0;
  expect_refused(&t, "truncated: 0 bytes");
  t.len = 7;
  expect_refused(&t, "truncated: 7 bytes, too short for the 8-byte header length");
  t = m;
  set_len(&t, 100000001);
  expect_refused(&t, "header length 100000001 exceeds the format's limit of 100000000 bytes");
  set_len(&t, UINT64_MAX);
  expect_refused(&t, "header length 18446744073709551615 exceeds");
  set_len(&t, m.len - 8 + 1);
  snprintf(msg, sizeof msg, "header length %zu runs past the end of the file (%zu bytes after",
           m.len - 7, m.len - 8);
  expect_refused(&t, msg);
  t.len = 8;
  set_len(&t, 2);
  expect_refused(&t, "header length 2 runs past the end of the file (0 bytes");
  set_len(&t, 0);
  expect_refused(&t, "header length is 0");
  /* The length cuts the JSON short, or takes in data bytes. */
  t = m;
  set_len(&t, 30);
  expect_refused(&t, "the header is not valid JSON");
  t = m;
  set_len(&t, m.len - 8 - 20);
  expect_refused(&t, "the header");
  /* A caller that gives fewer bytes than the header: truncated, not read past. */
  st_header *h;
  char err[ST_ERR_MAX];
  assert_int_equal(st_header_parse(m.b, 20, m.len, "short", &h, err, sizeof err),
                   ATTN_ERR_FORMAT);
  expect_msg(err, "short: truncated header: 12 of its", NULL);
  assert_int_equal(st_header_parse(m.b, m.len, m.len - 1, "x", &h, err, sizeof err),
                   ATTN_ERR_INVALID_ARG);
  assert_int_equal(st_header_parse(m.b, m.len, m.len, "x", NULL, err, sizeof err),
                   ATTN_ERR_INVALID_ARG);
}

static void test_header_text_refused(void **state) {
  (void)state;
  img m;
  make_img(&m, "{\"a\":" F32_23 "}", 24);
  m.b[8 + 3] = 0; /* inside the name "a" */
  expect_refused(&m, "the header holds a NUL byte at offset 11");
  make_img(&m, "{\"a\":" F32_23 "}", 24);
  m.b[8 + 3] = 0x01;
  expect_refused(&m, "control byte 0x01 at offset 11");
  make_img(&m, "{\"a\x1b\":" F32_23 "}", 24);
  expect_refused(&m, "control byte 0x1b");
  static const char *const bad_utf8[] = {
      "\xc3\x28",         /* a lead byte without its continuation */
      "\xc0\xaf",         /* overlong '/' */
      "\xe0\x80\xaf",     /* overlong, 3 bytes */
      "\xed\xa0\x80",     /* a UTF-16 surrogate */
      "\xf4\x90\x80\x80", /* past U+10FFFF */
      "\xff",             /* never in UTF-8 */
      "\x80",             /* a lone continuation */
      "\xe2\x82",         /* cut short at the end of the name */
  };
  for (size_t i = 0; i < sizeof bad_utf8 / sizeof bad_utf8[0]; i++) {
    char json[128];
    snprintf(json, sizeof json, "{\"x%s\":" F32_23 "}", bad_utf8[i]);
    make_img(&m, json, 24);
    expect_refused(&m, "the header is not valid UTF-8 at offset 11");
  }
  make_img(&m, "{\"a\\u0000b\":" F32_23 "}", 24);
  expect_refused(&m, "\\u0000 escape", "offset 11");
  make_img(&m, "{\"a\":{\"dtype\":\"F32\\u0000\",\"shape\":[2,3],\"data_offsets\":[0,24]}}", 24);
  expect_refused(&m, "\\u0000 escape");
  /* Not JSON, or not an object. */
  make_img(&m, "{\"a\": }", 0);
  expect_refused(&m, "the header is not valid JSON (the parser stopped at offset 14)");
  make_img(&m, "{\"a\":" F32_23 "} x", 24);
  expect_refused(&m, "the header is not valid JSON");
  make_img(&m, "{\"a\":" F32_23 "}{}", 24);
  expect_refused(&m, "the header is not valid JSON");
  make_img(&m, "{\"a\":" F32_23, 24);
  expect_refused(&m, "the header is not valid JSON");
  make_img(&m, "{'a': 1}", 0);
  expect_refused(&m, "the header is not valid JSON");
  make_img(&m, "[]", 0);
  expect_refused(&m, "the header is an array, not a JSON object");
  make_img(&m, "\"{}\"", 0);
  expect_refused(&m, "the header is a string, not a JSON object");
  make_img(&m, "{\"a\":\"\\ud800\"}", 0); /* a lone surrogate escape */
  expect_refused(&m, "the header is not valid JSON");
  /* Nesting past cJSON's limit is a parse error, not a deep recursion. */
  char deep[1600];
  snprintf(deep, sizeof deep, "{\"a\":");
  memset(deep + 5, '[', 1500);
  deep[1505] = '\0';
  make_img(&m, deep, 0);
  expect_refused(&m, "the header is not valid JSON");
}

static void test_entry_refused(void **state) {
  (void)state;
  static const struct {
    const char *json;
    size_t ndata;
    const char *msg;
  } cases[] = {
      {"{\"a\":3}", 0, "tensor 'a' is a number; expected an object"},
      {"{\"a\":[]}", 0, "tensor 'a' is an array; expected an object"},
      {"{\"a\":null}", 0, "tensor 'a' is null; expected an object"},
      {"{\"a\":{\"dtype\":\"F32\",\"shape\":[2,3],\"data_offsets\":[0,24],\"extra\":1}}", 24,
       "tensor 'a' has an unknown field 'extra'"},
      {"{\"a\":{\"Dtype\":\"F32\",\"shape\":[2,3],\"data_offsets\":[0,24]}}", 24,
       "tensor 'a' has an unknown field 'Dtype'"},
      {"{\"a\":{\"shape\":[2,3],\"data_offsets\":[0,24]}}", 24, "tensor 'a' has no \"dtype\""},
      {"{\"a\":{\"dtype\":\"F32\",\"data_offsets\":[0,24]}}", 24, "tensor 'a' has no \"shape\""},
      {"{\"a\":{\"dtype\":\"F32\",\"shape\":[2,3]}}", 24, "tensor 'a' has no \"data_offsets\""},
      {"{\"a\":{}}", 0, "tensor 'a' has no \"dtype\""},
      {"{\"a\":{\"dtype\":5,\"shape\":[2,3],\"data_offsets\":[0,24]}}", 24,
       "tensor 'a': \"dtype\" is 5; expected a string"},
      {"{\"a\":{\"dtype\":\"F128\",\"shape\":[2,3],\"data_offsets\":[0,24]}}", 24,
       "tensor 'a' has an unknown dtype 'F128'"},
      {"{\"a\":{\"dtype\":\"f32\",\"shape\":[2,3],\"data_offsets\":[0,24]}}", 24,
       "tensor 'a' has an unknown dtype 'f32'"},
      {"{\"a\":{\"dtype\":\"float32\",\"shape\":[2,3],\"data_offsets\":[0,24]}}", 24,
       "unknown dtype 'float32'"},
      {"{\"a\":{\"dtype\":\"F32\",\"shape\":6,\"data_offsets\":[0,24]}}", 24,
       "tensor 'a': \"shape\" is 6; expected an array of integers >= 0"},
      {"{\"a\":{\"dtype\":\"F32\",\"shape\":{},\"data_offsets\":[0,24]}}", 24,
       "\"shape\" is an object"},
      {"{\"a\":{\"dtype\":\"F32\",\"shape\":[-2,3],\"data_offsets\":[0,24]}}", 24,
       "tensor 'a': \"shape\"[0] is -2; expected an integer >= 0"},
      {"{\"a\":{\"dtype\":\"F32\",\"shape\":[2,2.5],\"data_offsets\":[0,20]}}", 20,
       "\"shape\"[1] is 2.5"},
      {"{\"a\":{\"dtype\":\"F32\",\"shape\":[\"2\",3],\"data_offsets\":[0,24]}}", 24,
       "\"shape\"[0] is a string"},
      {"{\"a\":{\"dtype\":\"F32\",\"shape\":[[2],3],\"data_offsets\":[0,24]}}", 24,
       "\"shape\"[0] is an array"},
      {"{\"a\":{\"dtype\":\"F32\",\"shape\":[true],\"data_offsets\":[0,4]}}", 4,
       "\"shape\"[0] is true"},
      {"{\"a\":{\"dtype\":\"F32\",\"shape\":[1e20],\"data_offsets\":[0,4]}}", 4,
       "\"shape\"[0] is 1e+20"},
      {"{\"a\":{\"dtype\":\"F32\",\"shape\":[9007199254740994],\"data_offsets\":[0,4]}}", 4,
       "\"shape\"[0] is 9007199254740994"},
      {"{\"a\":{\"dtype\":\"F32\",\"shape\":[2,3],\"data_offsets\":[0]}}", 24,
       "tensor 'a': \"data_offsets\" is not [begin, end]"},
      {"{\"a\":{\"dtype\":\"F32\",\"shape\":[2,3],\"data_offsets\":[0,24,24]}}", 24,
       "\"data_offsets\" is not [begin, end]"},
      {"{\"a\":{\"dtype\":\"F32\",\"shape\":[2,3],\"data_offsets\":[0,\"24\"]}}", 24,
       "\"data_offsets\" is not [begin, end]"},
      {"{\"a\":{\"dtype\":\"F32\",\"shape\":[2,3],\"data_offsets\":[-1,24]}}", 24,
       "\"data_offsets\" is not [begin, end]"},
      {"{\"a\":{\"dtype\":\"F32\",\"shape\":[2,3],\"data_offsets\":{\"0\":24}}}", 24,
       "\"data_offsets\" is not [begin, end]"},
      {"{\"a\":{\"dtype\":\"F32\",\"shape\":[2,3],\"data_offsets\":[0.5,24]}}", 24,
       "\"data_offsets\" is not [begin, end]"},
      {"{\"a\":{\"dtype\":\"F32\",\"shape\":[2,3],\"data_offsets\":[24,0]}}", 24,
       "tensor 'a': data_offsets [24, 0] run backwards (begin > end)"},
      {"{\"a\":{\"dtype\":\"F32\",\"shape\":[2,3],\"data_offsets\":[0,28]}}", 24,
       "tensor 'a': data_offsets [0, 28] run past the end of the data (24 bytes after the "
       "header)"},
      {"{\"a\":{\"dtype\":\"F32\",\"shape\":[2,3],\"data_offsets\":[0,24]}}", 0,
       "run past the end of the data (0 bytes"},
      {"{\"a\":{\"dtype\":\"F32\",\"shape\":[2,3],\"data_offsets\":[0,20]}}", 20,
       "tensor 'a': shape [2, 3] of F32 is 24 bytes, but data_offsets [0, 20] hold 20"},
      {"{\"a\":{\"dtype\":\"BF16\",\"shape\":[2,3],\"data_offsets\":[0,24]}}", 24,
       "shape [2, 3] of BF16 is 12 bytes, but data_offsets [0, 24] hold 24"},
      {"{\"a\":{\"dtype\":\"F32\",\"shape\":[4294967296,4294967296],\"data_offsets\":[0,0]}}", 0,
       "tensor 'a': the element count of shape [4294967296, 4294967296] overflows"},
      {"{\"a\":{\"dtype\":\"F32\",\"shape\":[65536,65536,65536,65536,2],\"data_offsets\":[0,0]}}",
       0, "the element count of shape [65536, 65536, 65536, 65536, 2] overflows"},
      {"{\"a\":{\"dtype\":\"F64\",\"shape\":[4294967296,1073741824],\"data_offsets\":[0,0]}}", 0,
       "tensor 'a': the byte count of shape [4294967296, 1073741824] of F64 overflows"},
      {"{\"a\":{\"dtype\":\"F4\",\"shape\":[3],\"data_offsets\":[0,2]}}", 2,
       "tensor 'a': shape [3] of F4 (4 bits each) is not a whole number of bytes"},
      {"{\"a\":{\"dtype\":\"F6_E2M3\",\"shape\":[2],\"data_offsets\":[0,2]}}", 2,
       "shape [2] of F6_E2M3 (6 bits each) is not a whole number of bytes"},
  };
  for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
    img m;
    make_img(&m, cases[i].json, cases[i].ndata);
    expect_refused(&m, cases[i].msg);
  }
  /* The first bad tensor in the file's order is the one named. */
  img m;
  make_img(&m,
           "{\"good\":{\"dtype\":\"U8\",\"shape\":[1],\"data_offsets\":[0,1]},"
           "\"bad\":{\"dtype\":\"U8\",\"shape\":[2],\"data_offsets\":[1,2]}}",
           2);
  expect_refused(&m, "tensor 'bad': shape [2] of U8 is 2 bytes");
}

static void test_layout_refused(void **state) {
  (void)state;
  img m;
  make_img(&m,
           "{\"a\":{\"dtype\":\"U8\",\"shape\":[4],\"data_offsets\":[0,4]},"
           "\"b\":{\"dtype\":\"U8\",\"shape\":[4],\"data_offsets\":[2,6]}}",
           6);
  expect_refused(&m, "tensor 'b' (data_offsets [2, 6]) overlaps tensor 'a' ([0, 4])");
  /* The same bytes twice, under two names. */
  make_img(&m,
           "{\"b\":{\"dtype\":\"U8\",\"shape\":[4],\"data_offsets\":[0,4]},"
           "\"a\":{\"dtype\":\"U8\",\"shape\":[4],\"data_offsets\":[0,4]}}",
           4);
  expect_refused(&m, "tensor 'b' (data_offsets [0, 4]) overlaps tensor 'a' ([0, 4])");
  /* One inside the other, an empty one inside another. */
  make_img(&m,
           "{\"big\":{\"dtype\":\"U8\",\"shape\":[8],\"data_offsets\":[0,8]},"
           "\"in\":{\"dtype\":\"U8\",\"shape\":[2],\"data_offsets\":[3,5]}}",
           8);
  expect_refused(&m, "tensor 'in' (data_offsets [3, 5]) overlaps tensor 'big' ([0, 8])");
  make_img(&m,
           "{\"big\":{\"dtype\":\"U8\",\"shape\":[8],\"data_offsets\":[0,8]},"
           "\"e\":{\"dtype\":\"U8\",\"shape\":[0],\"data_offsets\":[3,3]}}",
           8);
  expect_refused(&m, "tensor 'e' (data_offsets [3, 3]) overlaps tensor 'big'");
  make_img(&m,
           "{\"a\":{\"dtype\":\"U8\",\"shape\":[2],\"data_offsets\":[0,2]},"
           "\"b\":{\"dtype\":\"U8\",\"shape\":[2],\"data_offsets\":[4,6]}}",
           6);
  expect_refused(&m, "a gap in the data: no tensor holds bytes [2, 4) (before tensor 'b')");
  make_img(&m, "{\"a\":{\"dtype\":\"U8\",\"shape\":[2],\"data_offsets\":[2,4]}}", 4);
  expect_refused(&m, "no tensor holds bytes [0, 2) (before tensor 'a')");
  make_img(&m, "{\"a\":{\"dtype\":\"U8\",\"shape\":[4],\"data_offsets\":[0,4]}}", 6);
  expect_refused(&m, "2 bytes of trailing data after the last tensor ('a' ends at byte 4 of the "
                     "6-byte data section)");
  make_img(&m, "{}", 3);
  expect_refused(&m, "3 bytes of data after a header that names no tensor");
  make_img(&m, "{\"__metadata__\":{}}", 1);
  expect_refused(&m, "1 bytes of data after a header that names no tensor");
}

static void test_names_and_metadata_refused(void **state) {
  (void)state;
  img m;
  make_img(&m, "{\"a\":" F32_23 ",\"a\":" F32_23 "}", 24);
  expect_refused(&m, "tensor 'a' appears twice in the header");
  make_img(&m, "{\"__metadata__\":{},\"a\":" F32_23 ",\"__metadata__\":{}}", 24);
  expect_refused(&m, "key '__metadata__' appears twice in the header");
  make_img(&m,
           "{\"a\":{\"dtype\":\"F32\",\"dtype\":\"F32\",\"shape\":[2,3],\"data_offsets\":[0,24]}}",
           24);
  expect_refused(&m, "key 'dtype' appears twice in 'a'");
  make_img(&m, "{\"__metadata__\":{\"k\":\"1\",\"k\":\"2\"}}", 0);
  expect_refused(&m, "key 'k' appears twice in '__metadata__'");
  make_img(&m, "{\"__metadata__\":[]}", 0);
  expect_refused(&m, "\"__metadata__\" is an array; expected an object of strings");
  make_img(&m, "{\"__metadata__\":\"pt\"}", 0);
  expect_refused(&m, "\"__metadata__\" is a string; expected an object of strings");
  make_img(&m, "{\"__metadata__\":{\"format\":\"pt\",\"n\":1}}", 0);
  expect_refused(&m, "\"__metadata__\" key 'n' is 1; expected a string");
  make_img(&m, "{\"__metadata__\":{\"sub\":{\"a\":\"b\"}}}", 0);
  expect_refused(&m, "\"__metadata__\" key 'sub' is an object; expected a string");
  /* A long name is shown shortened, the message still one line that fits;
   * control characters in a name are shown as '?'. */
  char json[1024], name[301];
  memset(name, 'n', 300);
  name[300] = '\0';
  snprintf(json, sizeof json, "{\"%s\":3}", name);
  make_img(&m, json, 0);
  expect_refused(&m, "tensor 'nnnnnnnnnnnnnnnnnnnn", "...' is a number");
  make_img(&m, "{\"x\\ny\\t\":3}", 0);
  expect_refused(&m, "tensor 'x?y?' is a number");
  /* A name cut inside a multi-byte character loses the whole character. */
  char cut[1024];
  memset(name, 'n', 79);
  memcpy(name + 79, "\xc3\xa9tail", 7);
  name[86] = '\0';
  snprintf(cut, sizeof cut, "{\"%s\":3}", name);
  make_img(&m, cut, 0);
  memset(name, 'n', 79);
  memcpy(name + 79, "...'", 5);
  expect_refused(&m, name);
}

/* Every prefix of a good file, and the file with a byte more, is refused. */
static void test_every_truncation(void **state) {
  (void)state;
  char path[1200], err[ST_ERR_MAX];
  path_of(path, sizeof path, data_dir, "single/model.safetensors");
  size_t len;
  unsigned char *b = slurp(path, &len);
  for (size_t n = 0; n < len; n++) {
    unsigned char *copy = malloc(n ? n : 1); /* exactly n bytes: ASan sees an over-read */
    assert_non_null(copy);
    memcpy(copy, b, n);
    st_header *h = (st_header *)1;
    attn_status s = st_header_parse(copy, n, n, "cut", &h, err, sizeof err);
    if (s != ATTN_ERR_FORMAT) {
      print_error("prefix of %zu bytes: status %d: %s\n", n, s, err);
      fail();
    }
    assert_null(h);
    assert_non_null(strstr(err, "cut: "));
    free(copy);
  }
  unsigned char *more = malloc(len + 1);
  assert_non_null(more);
  memcpy(more, b, len);
  more[len] = 0;
  st_header *h;
  assert_int_equal(st_header_parse(more, len + 1, len + 1, "more", &h, err, sizeof err),
                   ATTN_ERR_FORMAT);
  expect_msg(err, "1 bytes of trailing data after the last tensor", NULL);
  free(more);
  free(b);
}

/* ---- files and directories ------------------------------------------------------------- */

static int rm_entry(const char *p, const struct stat *sb, int flag, struct FTW *ftw) {
  (void)sb;
  (void)flag;
  (void)ftw;
  return remove(p);
}

static int setup_dir(void **state) {
  (void)state;
  const char *d = getenv("ATTN_TEST_DATA_DIR"); /* <srcdir>/tests/data, from make check */
  snprintf(data_dir, sizeof data_dir, "%s/safetensors", d && *d ? d : "tests/data");
  const char *base = getenv("TMPDIR");
  snprintf(tmpdir, sizeof tmpdir, "%s/test_safetensors.XXXXXX", base && *base ? base : "/tmp");
  return mkdtemp(tmpdir) ? 0 : -1;
}

static int teardown_dir(void **state) {
  (void)state;
  return nftw(tmpdir, rm_entry, 16, FTW_DEPTH | FTW_PHYS);
}

/* A fresh directory tmpdir/name. */
static void fresh_dir(char *buf, size_t cap, const char *name) {
  path_of(buf, cap, tmpdir, name);
  assert_int_equal(mkdir(buf, 0700), 0);
}

static void copy_file(const char *from, const char *to) {
  size_t len;
  unsigned char *b = slurp(from, &len);
  spit(to, b, len);
  free(b);
}

/* st_open of path fails with status want and every substring. */
#define expect_open_fails(path, want, ...) \
  expect_open_fails_(path, want, __VA_ARGS__, (const char *)NULL)
static void expect_open_fails_(const char *path, attn_status want, ...) {
  st_checkpoint *ck = (st_checkpoint *)1;
  char err[ST_ERR_MAX] = "";
  attn_status s = st_open(path, &ck, err, sizeof err);
  if (s != want) {
    print_error("%s: status %d (want %d): %s\n", path, s, want, err);
    fail();
  }
  assert_null(ck);
  assert_null(strchr(err, '\n'));
  va_list ap;
  va_start(ap, want);
  const char *w;
  while ((w = va_arg(ap, const char *)) != NULL)
    if (!strstr(err, w)) {
      print_error("message \"%s\" lacks \"%s\"\n", err, w);
      va_end(ap);
      fail();
    }
  va_end(ap);
}

static void test_files_refused(void **state) {
  (void)state;
  char dir[512], p[700], good[1200];
  path_of(good, sizeof good, data_dir, "single/model.safetensors");
  /* Nothing there; an empty directory; not a regular file. */
  path_of(p, sizeof p, tmpdir, "none");
  expect_open_fails(p, ATTN_ERR_IO, p, "No such file");
  fresh_dir(dir, sizeof dir, "empty");
  expect_open_fails(dir, ATTN_ERR_IO, dir,
                    "no model.safetensors or model.safetensors.index.json in this directory");
  expect_open_fails("/dev/zero", ATTN_ERR_IO, "/dev/zero: not a regular file");
  fresh_dir(dir, sizeof dir, "fifo");
  path_of(p, sizeof p, dir, "model.safetensors");
  assert_int_equal(mkfifo(p, 0600), 0);
  expect_open_fails(dir, ATTN_ERR_IO, p, "not a regular file"); /* and did not block */
  fresh_dir(dir, sizeof dir, "isdir");
  path_of(p, sizeof p, dir, "model.safetensors");
  assert_int_equal(mkdir(p, 0700), 0);
  expect_open_fails(dir, ATTN_ERR_IO, p, "is a directory");
  fresh_dir(dir, sizeof dir, "dangling");
  path_of(p, sizeof p, dir, "model.safetensors");
  assert_int_equal(symlink("nowhere.safetensors", p), 0);
  expect_open_fails(dir, ATTN_ERR_IO, p, "No such file");

  /* A good file, cut or with its length patched. */
  size_t len;
  unsigned char *b = slurp(good, &len);
  uint64_t n = 0;
  for (int i = 7; i >= 0; i--) n = n << 8 | b[i];
  path_of(p, sizeof p, tmpdir, "cut.safetensors");
  const size_t cuts[] = {0, 5, 8, 8 + (size_t)n - 1, 8 + (size_t)n, len - 1};
  const char *why[] = {"truncated: 0 bytes", "truncated: 5 bytes", "runs past the end of the file",
                       "runs past the end of the file", "run past the end of the data",
                       "run past the end of the data"};
  for (size_t i = 0; i < sizeof cuts / sizeof cuts[0]; i++) {
    spit(p, b, cuts[i]);
    expect_open_fails(p, ATTN_ERR_FORMAT, p, why[i]);
  }
  unsigned char *patched = malloc(len);
  assert_non_null(patched);
  memcpy(patched, b, len);
  patched[0] = (unsigned char)(patched[0] + 1); /* one byte longer: the JSON takes in data */
  spit(p, patched, len);
  expect_open_fails(p, ATTN_ERR_FORMAT, p, "the header");
  memcpy(patched, b, 8);
  patched[3] = 0x10; /* about 268 MB */
  spit(p, patched, len);
  expect_open_fails(p, ATTN_ERR_FORMAT, p, "exceeds the format's limit");
  memcpy(patched, b, 8);
  patched[2] = 0x10; /* about 1 MB: within the limit, past the end */
  spit(p, patched, len);
  expect_open_fails(p, ATTN_ERR_FORMAT, p, "runs past the end of the file");
  free(patched);
  /* A file far larger than its data: refused from its size, data not read. */
  spit(p, b, len);
  assert_int_equal(truncate(p, (off_t)len + ((off_t)4 << 30)), 0);
  expect_open_fails(p, ATTN_ERR_FORMAT, p,
                    "4294967296 bytes of trailing data after the last tensor");
  free(b);
  unlink(p);
}

/* A sharded checkpoint in tmpdir/name: the fixture's shards and this index. */
static void sharded_dir(char *dir, size_t cap, const char *name, const char *index) {
  fresh_dir(dir, cap, name);
  static const char *const shards[] = {"model-00001-of-00002.safetensors",
                                       "model-00002-of-00002.safetensors"};
  for (int i = 0; i < 2; i++) {
    char from[1400], to[700], rel[128];
    snprintf(rel, sizeof rel, "sharded/%s", shards[i]);
    path_of(from, sizeof from, data_dir, rel);
    path_of(to, sizeof to, dir, shards[i]);
    copy_file(from, to);
  }
  char p[700];
  path_of(p, sizeof p, dir, "model.safetensors.index.json");
  spit_str(p, index);
}

#define S1 "model-00001-of-00002.safetensors"
#define S2 "model-00002-of-00002.safetensors"

static void test_index_refused(void **state) {
  (void)state;
  char dir[512], idx[700], err[ST_ERR_MAX];
  st_checkpoint *ck;
  /* A subset of the tensors: fine. */
  sharded_dir(dir, sizeof dir, "subset",
              "{\"weight_map\":{\"model.position_ids\":\"" S1 "\","
              "\"lm_head.unlisted\":\"" S2 "\"}}");
  assert_int_equal(st_open(dir, &ck, err, sizeof err), ATTN_OK);
  assert_int_equal(st_count(ck), 2);
  assert_non_null(st_find(ck, "lm_head.unlisted"));
  st_close(ck);
  /* No tensor at all: an empty checkpoint. */
  sharded_dir(dir, sizeof dir, "none", "{\"metadata\":{},\"weight_map\":{}}");
  assert_int_equal(st_open(dir, &ck, err, sizeof err), ATTN_OK);
  assert_int_equal(st_count(ck), 0);
  assert_null(st_find(ck, "a"));
  st_close(ck);

  static const struct {
    const char *index;
    attn_status s;
    const char *msg1, *msg2;
  } cases[] = {
      {"{\"weight_map\":{\"a\":\"../" S1 "\"}}", ATTN_ERR_FORMAT,
       "\"weight_map\": tensor 'a': shard '../" S1 "' is not a plain file name", NULL},
      {"{\"weight_map\":{\"a\":\"/etc/passwd\"}}", ATTN_ERR_FORMAT, "shard '/etc/passwd' is not",
       NULL},
      {"{\"weight_map\":{\"a\":\"sub/x.safetensors\"}}", ATTN_ERR_FORMAT,
       "shard 'sub/x.safetensors' is not", NULL},
      {"{\"weight_map\":{\"a\":\"..\"}}", ATTN_ERR_FORMAT, "shard '..' is not", NULL},
      {"{\"weight_map\":{\"a\":\".\"}}", ATTN_ERR_FORMAT, "shard '.' is not", NULL},
      {"{\"weight_map\":{\"a\":\"\"}}", ATTN_ERR_FORMAT, "shard '' is not", NULL},
      {"{\"weight_map\":{\"a\":3}}", ATTN_ERR_FORMAT,
       "\"weight_map\": tensor 'a' is 3; expected the name of its shard file", NULL},
      {"{\"weight_map\":{\"a\":null}}", ATTN_ERR_FORMAT, "tensor 'a' is null", NULL},
      {"{\"metadata\":{}}", ATTN_ERR_FORMAT, "no 'weight_map'", NULL},
      {"{\"weight_map\":[]}", ATTN_ERR_FORMAT, "'weight_map' is an array; expected an object",
       NULL},
      {"{\"weight_map\":null}", ATTN_ERR_FORMAT, "'weight_map' is null", NULL},
      {"[]", ATTN_ERR_FORMAT, "the JSON is an array, not a JSON object", NULL},
      {"{\"weight_map\":{\"a\":\"" S1 "\"}", ATTN_ERR_FORMAT, "is not valid JSON", NULL},
      {"", ATTN_ERR_FORMAT, "is not valid JSON", NULL},
      {"{\"weight_map\":{\"model.position_ids\":\"" S1 "\",\"model.position_ids\":\"" S2 "\"}}",
       ATTN_ERR_FORMAT, "key 'model.position_ids' appears twice in 'weight_map'", NULL},
      {"{\"weight_map\":{\"model.position_ids\":\"" S1 "\",\"lm_head.missing\":\"" S1 "\"}}",
       ATTN_ERR_FORMAT, "tensor 'lm_head.missing' is not in shard '" S1 "'", S1},
      {"{\"weight_map\":{\"model.position_ids\":\"" S2 "\"}}", ATTN_ERR_FORMAT,
       "tensor 'model.position_ids' is not in shard '" S2 "'", NULL},
      {"{\"weight_map\":{\"model.position_ids\":\"" S1 "\",\"x\":\"model-00003.safetensors\"}}",
       ATTN_ERR_IO, "model-00003.safetensors: cannot open: No such file", NULL},
  };
  for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
    char name[32];
    snprintf(name, sizeof name, "idx%zu", i);
    sharded_dir(dir, sizeof dir, name, cases[i].index);
    path_of(idx, sizeof idx, dir, "model.safetensors.index.json");
    /* Each message names the file at fault: the index, or the shard. */
    const char *file = cases[i].s == ATTN_ERR_IO ? dir : idx;
    if (cases[i].msg2) expect_open_fails(dir, cases[i].s, file, cases[i].msg1, cases[i].msg2);
    else expect_open_fails(dir, cases[i].s, file, cases[i].msg1);
  }
  /* A shard that is itself corrupt: named by its path. */
  sharded_dir(dir, sizeof dir, "badshard", "{\"weight_map\":{\"model.position_ids\":\"" S1 "\"}}");
  char shard[700];
  path_of(shard, sizeof shard, dir, S1);
  assert_int_equal(truncate(shard, 100), 0);
  expect_open_fails(dir, ATTN_ERR_FORMAT, shard, "runs past the end of the file");
  /* With model.safetensors there too, the single file is read (as
   * transformers does), whatever the index says. */
  sharded_dir(dir, sizeof dir, "both", "not json");
  char single[1200], p[700];
  path_of(single, sizeof single, data_dir, "single/model.safetensors");
  path_of(p, sizeof p, dir, "model.safetensors");
  copy_file(single, p);
  assert_int_equal(st_open(dir, &ck, err, sizeof err), ATTN_OK);
  assert_int_equal(st_count(ck), 8);
  st_close(ck);
  /* An index larger than the limit is not read. */
  path_of(idx, sizeof idx, dir, "model.safetensors.index.json");
  unlink(p);
  int fd = open(idx, O_WRONLY | O_TRUNC);
  assert_true(fd >= 0);
  assert_int_equal(ftruncate(fd, (off_t)ST_MAX_HEADER + 1), 0);
  close(fd);
  expect_open_fails(dir, ATTN_ERR_FORMAT, idx, "100000001 bytes: a JSON file is at most 100000000");
}

/* The file shrinks after the checkpoint was opened: an error, not a SIGBUS. */
static void test_file_changes(void **state) {
  (void)state;
  char dir[512], p[700], single[1200], err[ST_ERR_MAX];
  fresh_dir(dir, sizeof dir, "shrinks");
  path_of(p, sizeof p, dir, "model.safetensors");
  path_of(single, sizeof single, data_dir, "single/model.safetensors");
  copy_file(single, p);
  st_checkpoint *ck;
  assert_int_equal(st_open(dir, &ck, err, sizeof err), ATTN_OK);
  const st_tensor *q = st_find(ck, L0 "self_attn.q_proj.weight");
  assert_non_null(q);
  assert_int_equal(truncate(p, (off_t)q->offset + 10), 0);
  float *f = (float *)1;
  assert_int_equal(st_read_f32(ck, q->name, 0, NULL, &f, NULL, err, sizeof err), ATTN_ERR_IO);
  assert_null(f);
  expect_msg(err, p, "tensor '" L0 "self_attn.q_proj.weight'", "the file ends after 10 of its 256",
             NULL);
  void *raw = (void *)1;
  assert_int_equal(st_read_raw(ck, L0 "self_attn.v_proj.weight", &raw, NULL, err, sizeof err),
                   ATTN_ERR_IO);
  assert_null(raw);
  expect_msg(err, "the file ends after 0 of its 64", NULL);
  /* Tensors before the cut still read. */
  assert_int_equal(st_read_raw(ck, "model.position_ids", &raw, NULL, err, sizeof err), ATTN_OK);
  free(raw);
  st_close(ck);
}

/* ---- config.json ------------------------------------------------------------------------- */

static void test_config(void **state) {
  (void)state;
  char path[1200], err[ST_ERR_MAX];
  path_of(path, sizeof path, data_dir, "single/config.json");
  st_config *c;
  assert_int_equal(st_config_load(path, &c, err, sizeof err), ATTN_OK);
  st_json root, rs, lt, e;
  st_config_root(c, &root);
  int64_t i = -1;
  double d = -1;
  bool b = true, found = false;
  const char *s = NULL;
  size_t len = 0;
  /* Present, of the type; required or not. */
  assert_int_equal(st_json_int(&root, "hidden_size", &i, NULL, err, sizeof err), ATTN_OK);
  assert_int_equal(i, 8);
  assert_int_equal(st_json_int(&root, "num_key_value_heads", &i, &found, err, sizeof err), ATTN_OK);
  assert_true(found);
  assert_int_equal(i, 1);
  assert_int_equal(st_json_number(&root, "rms_norm_eps", &d, NULL, err, sizeof err), ATTN_OK);
  assert_true(d == 1e-6);
  assert_int_equal(st_json_number(&root, "hidden_size", &d, NULL, err, sizeof err), ATTN_OK);
  assert_true(d == 8.0);
  assert_int_equal(st_json_int(&root, "rope_theta", &i, NULL, err, sizeof err), ATTN_OK);
  assert_int_equal(i, 10000); /* 10000.0: an integer's value */
  assert_int_equal(st_json_bool(&root, "attention_bias", &b, NULL, err, sizeof err), ATTN_OK);
  assert_false(b);
  assert_int_equal(st_json_string(&root, "model_type", &s, NULL, err, sizeof err), ATTN_OK);
  assert_string_equal(s, "llama");
  /* Absent and null: optional keeps the default, required names the key. */
  i = 4096;
  assert_int_equal(st_json_int(&root, "sliding_window", &i, &found, err, sizeof err), ATTN_OK);
  assert_false(found);
  assert_int_equal(i, 4096);
  assert_int_equal(st_json_int(&root, "sliding_window", &i, NULL, err, sizeof err),
                   ATTN_ERR_FORMAT);
  expect_msg(err, path, "'sliding_window' is null", NULL);
  found = true;
  assert_int_equal(st_json_string(&root, "no_such_key", &s, &found, err, sizeof err), ATTN_OK);
  assert_false(found);
  assert_string_equal(s, "llama");
  assert_int_equal(st_json_bool(&root, "no_such_key", &b, NULL, err, sizeof err), ATTN_ERR_FORMAT);
  expect_msg(err, path, "no 'no_such_key'", NULL);
  assert_int_equal(st_json_int(&root, "Hidden_Size", &i, &found, err, sizeof err), ATTN_OK);
  assert_false(found); /* keys are case-sensitive */
  /* Present, of another type: an error even when optional. */
  assert_int_equal(st_json_int(&root, "model_type", &i, &found, err, sizeof err), ATTN_ERR_FORMAT);
  expect_msg(err, path, "'model_type' is a string; expected an integer", NULL);
  assert_int_equal(st_json_int(&root, "rms_norm_eps", &i, NULL, err, sizeof err), ATTN_ERR_FORMAT);
  expect_msg(err, "'rms_norm_eps' is 1e-06; expected an integer", NULL);
  assert_int_equal(st_json_bool(&root, "hidden_size", &b, &found, err, sizeof err),
                   ATTN_ERR_FORMAT);
  expect_msg(err, "'hidden_size' is 8; expected true or false", NULL);
  assert_int_equal(st_json_number(&root, "attention_bias", &d, NULL, err, sizeof err),
                   ATTN_ERR_FORMAT);
  expect_msg(err, "'attention_bias' is false; expected a number", NULL);
  assert_int_equal(st_json_string(&root, "layer_types", &s, NULL, err, sizeof err),
                   ATTN_ERR_FORMAT);
  expect_msg(err, "'layer_types' is an array; expected a string", NULL);
  assert_int_equal(st_json_array(&root, "rope_scaling", &lt, &len, NULL, err, sizeof err),
                   ATTN_ERR_FORMAT);
  expect_msg(err, "'rope_scaling' is an object; expected an array", NULL);
  assert_int_equal(st_json_object(&root, "architectures", &rs, NULL, err, sizeof err),
                   ATTN_ERR_FORMAT);
  expect_msg(err, "'architectures' is an array; expected an object", NULL);
  /* A nested object: its members' paths in messages. */
  assert_int_equal(st_json_object(&root, "rope_scaling", &rs, NULL, err, sizeof err), ATTN_OK);
  assert_int_equal(st_json_string(&rs, "rope_type", &s, NULL, err, sizeof err), ATTN_OK);
  assert_string_equal(s, "llama3");
  assert_int_equal(st_json_number(&rs, "factor", &d, NULL, err, sizeof err), ATTN_OK);
  assert_true(d == 8.0);
  assert_int_equal(st_json_string(&rs, "factor", &s, NULL, err, sizeof err), ATTN_ERR_FORMAT);
  expect_msg(err, path, "'rope_scaling.factor' is 8; expected a string", NULL);
  assert_int_equal(st_json_int(&rs, "low_freq_factor", &i, NULL, err, sizeof err),
                   ATTN_ERR_FORMAT);
  expect_msg(err, "no 'rope_scaling.low_freq_factor'", NULL);
  found = true;
  assert_int_equal(st_json_object(&root, "quantization_config", &rs, &found, err, sizeof err),
                   ATTN_OK);
  assert_false(found);
  /* An array: its elements, read with key NULL. */
  assert_int_equal(st_json_array(&root, "layer_types", &lt, &len, NULL, err, sizeof err), ATTN_OK);
  assert_int_equal(len, 2);
  assert_int_equal(st_json_at(&lt, 1, &e, err, sizeof err), ATTN_OK);
  assert_int_equal(st_json_string(&e, NULL, &s, NULL, err, sizeof err), ATTN_OK);
  assert_string_equal(s, "sliding_attention");
  assert_int_equal(st_json_int(&e, NULL, &i, NULL, err, sizeof err), ATTN_ERR_FORMAT);
  expect_msg(err, "'layer_types[1]' is a string; expected an integer", NULL);
  assert_int_equal(st_json_int(&e, "k", &i, &found, err, sizeof err), ATTN_ERR_FORMAT);
  expect_msg(err, "'layer_types[1]' is a string; expected an object", NULL);
  assert_int_equal(st_json_at(&lt, 2, &e, err, sizeof err), ATTN_ERR_INVALID_ARG);
  expect_msg(err, "'layer_types' has no element 2", NULL);
  assert_int_equal(st_json_at(&root, 0, &e, err, sizeof err), ATTN_ERR_INVALID_ARG);
  st_config_free(c);
  st_config_free(NULL);
}

static void test_config_refused(void **state) {
  (void)state;
  static const struct {
    const char *json;
    const char *msg;
  } cases[] = {
      {"", "the JSON is not valid JSON"},
      {"{", "the JSON is not valid JSON (the parser stopped at offset"},
      {"{\"a\":1,}", "is not valid JSON"},
      {"{\"a\":NaN}", "is not valid JSON"},
      {"{} {}", "is not valid JSON"},
      {"[1, 2]", "the JSON is an array, not a JSON object"},
      {"3", "the JSON is a number, not a JSON object"},
      {"{\"x\":1,\"x\":2}", "key 'x' appears twice in the top-level object"},
      {"{\"a\":{\"b\":1,\"b\":2}}", "key 'b' appears twice in 'a'"},
      {"{\"a\":[{\"b\":1},{\"c\":1,\"c\":1}]}", "key 'c' appears twice in 'a[1]'"},
      {"{\"a\":\"\\u0000\"}", "\\u0000 escape (a NUL in a string) at offset 6"},
      {"{\"a\":\"\xff\"}", "the JSON is not valid UTF-8 at offset 6"},
      {"{\"a\":\"\x01\"}", "control byte 0x01 at offset 6"},
  };
  char err[ST_ERR_MAX];
  for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
    st_config *c = (st_config *)1;
    attn_status s = st_config_parse(cases[i].json, strlen(cases[i].json), "cfg.json", &c, err,
                                    sizeof err);
    if (s != ATTN_ERR_FORMAT || !strstr(err, "cfg.json: ") || !strstr(err, cases[i].msg)) {
      print_error("%s: status %d, message \"%s\" (want \"%s\")\n", cases[i].json, s, err,
                  cases[i].msg);
      fail();
    }
    assert_null(c);
  }
  /* A NUL inside the given length. */
  st_config *c;
  assert_int_equal(st_config_parse("{}\0", 3, "cfg.json", &c, err, sizeof err), ATTN_ERR_FORMAT);
  expect_msg(err, "NUL byte at offset 2", NULL);
  /* Files: missing, a directory, a FIFO, too large. */
  char p[700];
  path_of(p, sizeof p, tmpdir, "config-none.json");
  assert_int_equal(st_config_load(p, &c, err, sizeof err), ATTN_ERR_IO);
  expect_msg(err, p, "No such file", NULL);
  assert_int_equal(st_config_load(tmpdir, &c, err, sizeof err), ATTN_ERR_IO);
  expect_msg(err, tmpdir, "is a directory", NULL);
  path_of(p, sizeof p, tmpdir, "config-fifo.json");
  assert_int_equal(mkfifo(p, 0600), 0);
  assert_int_equal(st_config_load(p, &c, err, sizeof err), ATTN_ERR_IO);
  expect_msg(err, p, "not a regular file", NULL);
  unlink(p);
  path_of(p, sizeof p, tmpdir, "config-big.json");
  spit_str(p, "{}");
  assert_int_equal(truncate(p, (off_t)ST_CONFIG_MAX + 1), 0);
  assert_int_equal(st_config_load(p, &c, err, sizeof err), ATTN_ERR_FORMAT);
  expect_msg(err, p, "16777217 bytes: a JSON file is at most 16777216", NULL);
  /* At the limit: read, and refused for its NULs. */
  assert_int_equal(truncate(p, (off_t)ST_CONFIG_MAX), 0);
  assert_int_equal(st_config_load(p, &c, err, sizeof err), ATTN_ERR_FORMAT);
  expect_msg(err, p, "NUL byte at offset 2", NULL);
  unlink(p);
  assert_int_equal(st_config_load("", &c, err, sizeof err), ATTN_ERR_INVALID_ARG);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_single_dir),
      cmocka_unit_test(test_single_file),
      cmocka_unit_test(test_sharded),
      cmocka_unit_test(test_header_accepts),
      cmocka_unit_test(test_header_length_refused),
      cmocka_unit_test(test_header_text_refused),
      cmocka_unit_test(test_entry_refused),
      cmocka_unit_test(test_layout_refused),
      cmocka_unit_test(test_names_and_metadata_refused),
      cmocka_unit_test(test_every_truncation),
      cmocka_unit_test(test_files_refused),
      cmocka_unit_test(test_index_refused),
      cmocka_unit_test(test_file_changes),
      cmocka_unit_test(test_config),
      cmocka_unit_test(test_config_refused),
  };
  return cmocka_run_group_tests(tests, setup_dir, teardown_dir);
}
