/* The .npy reader on valid and malformed images, and the atomic writer. Every
 * malformed case checks the exact status and a substring of the message that
 * says what is wrong, plus the file name. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <dirent.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "npy.h"

/* Build an image: magic, version, header length field, the dict padded with
 * spaces to `align` (0: no padding at all) and ended by '\n', then data. */
typedef struct img {
  unsigned char b[4096];
  size_t len;
} img;

static void make_img(img *m, int major, int minor, const char *dict, size_t align,
                     const void *data, size_t nbytes) {
  size_t pre = major == 1 ? 10 : 12;
  size_t hlen = strlen(dict) + 1;
  if (align) hlen += (align - (pre + hlen) % align) % align;
  assert_true(pre + hlen + nbytes <= sizeof m->b);
  memcpy(m->b, "\x93NUMPY", 6);
  m->b[6] = (unsigned char)major;
  m->b[7] = (unsigned char)minor;
  if (major == 1) {
    m->b[8] = (unsigned char)hlen;
    m->b[9] = (unsigned char)(hlen >> 8);
  } else {
    for (int i = 0; i < 4; i++) m->b[8 + i] = (unsigned char)(hlen >> (8 * i));
  }
  memcpy(m->b + pre, dict, strlen(dict));
  memset(m->b + pre + strlen(dict), ' ', hlen - strlen(dict) - 1);
  m->b[pre + hlen - 1] = '\n';
  if (nbytes) memcpy(m->b + pre + hlen, data, nbytes);
  m->len = pre + hlen + nbytes;
}

static const npy_want want_f32_4 = {NPY_F32, 4, 4};
static const npy_want want_any = {NPY_F32 | NPY_BOOL | NPY_I32, 1, 4};
static const npy_want want_all = {NPY_F32 | NPY_BOOL | NPY_I32 | NPY_F16 | NPY_BF16, 1, 4};

static void expect_fail(const img *m, const npy_want *w, attn_status want_status,
                        const char *substr) {
  npy_array a;
  char err[NPY_ERR_MAX] = "";
  attn_status s = npy_parse(m->b, m->len, "case.npy", w, &a, err, sizeof err);
  if (s != want_status || !strstr(err, substr) || !strstr(err, "case.npy")) {
    print_error("status %d (want %d), message \"%s\" (want substring \"%s\")\n", s, want_status,
                err, substr);
    fail();
  }
  assert_null(a.data);
}

static const float f6[6] = {1.5f, -2.0f, 3.25f, 0.0f, -0.0f, 1e-30f};

static void test_valid_dtypes_and_versions(void **state) {
  (void)state;
  img m;
  npy_array a;
  char err[NPY_ERR_MAX];
  /* float32, version 1.0, rank 2 */
  make_img(&m, 1, 0, "{'descr': '<f4', 'fortran_order': False, 'shape': (2, 3), }", 64, f6,
           sizeof f6);
  assert_int_equal(npy_parse(m.b, m.len, "a", &want_any, &a, err, sizeof err), ATTN_OK);
  assert_int_equal(a.dtype, NPY_F32);
  assert_int_equal(a.ndim, 2);
  assert_int_equal(a.shape[0], 2);
  assert_int_equal(a.shape[1], 3);
  assert_int_equal(a.count, 6);
  assert_memory_equal(a.data, f6, sizeof f6);
  npy_free(&a);
  assert_null(a.data);

  /* bool, version 2.0, rank 1, keys in another order and double quotes */
  const unsigned char bits[5] = {1, 0, 1, 1, 0};
  make_img(&m, 2, 0, "{\"shape\": (5,), \"fortran_order\": False, \"descr\": \"|b1\"}", 64, bits,
           sizeof bits);
  assert_int_equal(npy_parse(m.b, m.len, "b", &want_any, &a, err, sizeof err), ATTN_OK);
  assert_int_equal(a.dtype, NPY_BOOL);
  assert_int_equal(a.ndim, 1);
  assert_int_equal(a.shape[0], 5);
  assert_memory_equal(a.data, bits, sizeof bits);
  npy_free(&a);

  /* int32, version 3.0, rank 3, old 16-byte alignment and Python 2 longs */
  const int32_t ints[4] = {7, -1, 2147483647, 0};
  make_img(&m, 3, 0, "{'descr': '<i4', 'fortran_order': False, 'shape': (1L, 2L, 2L), }", 16,
           ints, sizeof ints);
  assert_int_equal(npy_parse(m.b, m.len, "c", &want_any, &a, err, sizeof err), ATTN_OK);
  assert_int_equal(a.dtype, NPY_I32);
  assert_int_equal(a.ndim, 3);
  assert_memory_equal(a.data, ints, sizeof ints);
  npy_free(&a);

  /* float32 rank 4 */
  make_img(&m, 1, 0, "{'descr': '<f4', 'fortran_order': False, 'shape': (1, 2, 1, 3)}", 64, f6,
           sizeof f6);
  assert_int_equal(npy_parse(m.b, m.len, "d", &want_f32_4, &a, err, sizeof err), ATTN_OK);
  assert_int_equal(a.ndim, 4);
  assert_int_equal(a.shape[3], 3);
  assert_memory_equal(a.data, f6, sizeof f6);
  npy_free(&a);
}

static void test_valid_ranks_roundtrip(void **state) {
  (void)state;
  float data[24];
  for (int i = 0; i < 24; i++) data[i] = (float)i * 0.5f - 3.0f;
  const int64_t shapes[4][4] = {{24}, {4, 6}, {2, 3, 4}, {1, 2, 3, 4}};
  for (int r = 1; r <= 4; r++) {
    void *buf;
    size_t len;
    char err[NPY_ERR_MAX];
    assert_int_equal(npy_encode_f32(r, shapes[r - 1], data, &buf, &len, err, sizeof err), ATTN_OK);
    assert_int_equal(len % 64, (24 * 4) % 64); /* header padded to 64 as numpy does */
    npy_want w = {NPY_F32, r, r};
    npy_array a;
    assert_int_equal(npy_parse(buf, len, "rt", &w, &a, err, sizeof err), ATTN_OK);
    assert_int_equal(a.ndim, r);
    for (int i = 0; i < r; i++) assert_int_equal(a.shape[i], shapes[r - 1][i]);
    assert_memory_equal(a.data, data, sizeof data);
    npy_free(&a);
    free(buf);
  }
}

static const char *good_dict = "{'descr': '<f4', 'fortran_order': False, 'shape': (2, 3), }";

static void test_bad_preamble(void **state) {
  (void)state;
  img m;
  make_img(&m, 1, 0, good_dict, 64, f6, sizeof f6);
  m.b[1] = 'X';
  expect_fail(&m, &want_any, ATTN_ERR_FORMAT, "bad magic");
  m.len = 0;
  expect_fail(&m, &want_any, ATTN_ERR_FORMAT, "bad magic");
  make_img(&m, 1, 0, good_dict, 64, f6, sizeof f6);
  m.len = 7;
  expect_fail(&m, &want_any, ATTN_ERR_FORMAT, "truncated");
  make_img(&m, 4, 0, good_dict, 64, f6, sizeof f6);
  expect_fail(&m, &want_any, ATTN_ERR_FORMAT, "unknown .npy format version 4.0");
  make_img(&m, 1, 1, good_dict, 64, f6, sizeof f6);
  expect_fail(&m, &want_any, ATTN_ERR_FORMAT, "unknown .npy format version 1.1");
  make_img(&m, 2, 0, good_dict, 64, f6, sizeof f6);
  m.len = 11;
  expect_fail(&m, &want_any, ATTN_ERR_FORMAT, "truncated header");
}

static void test_lying_header(void **state) {
  (void)state;
  img m;
  /* The length field points past the end of the file. */
  make_img(&m, 1, 0, good_dict, 64, f6, sizeof f6);
  m.b[8] = 0xff;
  m.b[9] = 0x7f;
  expect_fail(&m, &want_any, ATTN_ERR_FORMAT, "runs past the end of the file");
  make_img(&m, 2, 0, good_dict, 64, f6, sizeof f6);
  m.b[11] = 0x80;
  expect_fail(&m, &want_any, ATTN_ERR_FORMAT, "runs past the end of the file");
  /* The length field is shorter than the header: no newline at its end. */
  make_img(&m, 1, 0, good_dict, 64, f6, sizeof f6);
  m.b[8] = (unsigned char)(m.b[8] - 16);
  expect_fail(&m, &want_any, ATTN_ERR_FORMAT, "not terminated by a newline");
  /* Longer than the header: the data bytes become part of it. */
  make_img(&m, 1, 0, good_dict, 64, f6, sizeof f6);
  m.b[8] = (unsigned char)(m.b[8] + 16);
  expect_fail(&m, &want_any, ATTN_ERR_FORMAT, "header");
  /* No padding at all. */
  make_img(&m, 1, 0, good_dict, 0, f6, sizeof f6);
  expect_fail(&m, &want_any, ATTN_ERR_FORMAT, "not padded");
  /* A header with a NUL inside. */
  make_img(&m, 1, 0, good_dict, 64, f6, sizeof f6);
  m.b[20] = 0;
  expect_fail(&m, &want_any, ATTN_ERR_FORMAT, "non-printable byte 0x00");
  /* Something other than spaces after the dict. */
  make_img(&m, 1, 0, "{'descr': '<f4', 'fortran_order': False, 'shape': (2, 3)} x", 64, f6,
           sizeof f6);
  expect_fail(&m, &want_any, ATTN_ERR_FORMAT, "only space padding");
}

static void test_bad_dict(void **state) {
  (void)state;
  static const struct {
    const char *dict, *msg;
  } cases[] = {
      {"garbage", "not a dict"},
      {"{'descr': '<f4', 'fortran_order': False, 'shape': (2, 3)", "not closed"},
      {"{'descr': '<f4', 'fortran_order': False}", "no 'shape'"},
      {"{'shape': (2, 3), 'fortran_order': False}", "no 'descr'"},
      {"{'descr': '<f4', 'shape': (2, 3)}", "no 'fortran_order'"},
      {"{'descr': '<f4', 'fortran_order': False, 'shape': (2, 3), 'x': 1}", "other than"},
      {"{'descr': '<f4', 'descr': '<f4', 'fortran_order': False, 'shape': (2, 3)}",
       "duplicate key 'descr'"},
      {"{'descr': '<f4', 'fortran_order': maybe, 'shape': (2, 3)}", "neither True nor False"},
      {"{'descr': '<f4', 'fortran_order': False, 'shape': [2, 3]}", "not a tuple"},
      {"{'descr': '<f4', 'fortran_order': False, 'shape': (6)}", "trailing comma"},
      {"{'descr': '<f4', 'fortran_order': False, 'shape': (2, x)}", "not an integer"},
      {"{'descr': '<f4', 'fortran_order': False, 'shape': (2, 3}", "not closed"},
      {"{'descr': [('a', '<f4')], 'fortran_order': False, 'shape': (6,)}", "structured"},
      {"{descr: '<f4', 'fortran_order': False, 'shape': (2, 3)}", "not a string"},
      {"{'descr' '<f4', 'fortran_order': False, 'shape': (2, 3)}", "followed by ':'"},
  };
  for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
    img m;
    make_img(&m, 1, 0, cases[i].dict, 64, f6, sizeof f6);
    expect_fail(&m, &want_any, ATTN_ERR_FORMAT, cases[i].msg);
  }
}

static void test_bad_dtype_order_rank(void **state) {
  (void)state;
  img m;
  double d6[6] = {0};
  make_img(&m, 1, 0, "{'descr': '<f8', 'fortran_order': False, 'shape': (2, 3), }", 64, d6,
           sizeof d6);
  expect_fail(&m, &want_any, ATTN_ERR_FORMAT, "unsupported dtype '<f8' (float64)");
  make_img(&m, 1, 0, "{'descr': '>f4', 'fortran_order': False, 'shape': (2, 3), }", 64, f6,
           sizeof f6);
  expect_fail(&m, &want_any, ATTN_ERR_FORMAT, "big-endian");
  make_img(&m, 1, 0, "{'descr': '|f4', 'fortran_order': False, 'shape': (2, 3), }", 64, f6,
           sizeof f6);
  expect_fail(&m, &want_any, ATTN_ERR_FORMAT, "unsupported dtype '|f4'");
  /* A valid dtype the caller did not ask for. */
  const unsigned char bits[6] = {0};
  make_img(&m, 1, 0, "{'descr': '|b1', 'fortran_order': False, 'shape': (2, 3), }", 64, bits,
           sizeof bits);
  npy_want w = {NPY_F32, 2, 2};
  expect_fail(&m, &w, ATTN_ERR_FORMAT, "dtype is bool ('|b1'); expected float32 ('<f4')");
  make_img(&m, 1, 0, "{'descr': '<f4', 'fortran_order': True, 'shape': (2, 3), }", 64, f6,
           sizeof f6);
  expect_fail(&m, &want_any, ATTN_ERR_FORMAT, "Fortran order");
  make_img(&m, 1, 0, good_dict, 64, f6, sizeof f6);
  expect_fail(&m, &want_f32_4, ATTN_ERR_FORMAT, "rank 2; expected rank 4");
  npy_want w34 = {NPY_F32, 3, 4};
  expect_fail(&m, &w34, ATTN_ERR_FORMAT, "rank 2; expected rank 3 to 4");
  make_img(&m, 1, 0, "{'descr': '<f4', 'fortran_order': False, 'shape': (1, 1, 1, 2, 3), }", 64,
           f6, sizeof f6);
  expect_fail(&m, &want_any, ATTN_ERR_FORMAT, "rank 5");
  make_img(&m, 1, 0, "{'descr': '<f4', 'fortran_order': False, 'shape': (), }", 64, f6, 4);
  expect_fail(&m, &want_any, ATTN_ERR_FORMAT, "rank 0");
  /* bool bytes other than 0/1 */
  const unsigned char bad[6] = {0, 1, 2, 0, 0, 0};
  make_img(&m, 1, 0, "{'descr': '|b1', 'fortran_order': False, 'shape': (6,), }", 64, bad,
           sizeof bad);
  expect_fail(&m, &want_any, ATTN_ERR_FORMAT, "byte value 2");
}

static void test_bad_dims_and_data(void **state) {
  (void)state;
  img m;
  make_img(&m, 1, 0, "{'descr': '<f4', 'fortran_order': False, 'shape': (2, 0), }", 64, NULL, 0);
  expect_fail(&m, &want_any, ATTN_ERR_FORMAT, "dimension 1 of the shape is 0");
  make_img(&m, 1, 0, "{'descr': '<f4', 'fortran_order': False, 'shape': (-2, 3), }", 64, f6,
           sizeof f6);
  expect_fail(&m, &want_any, ATTN_ERR_FORMAT, "dimension 0 of the shape is negative");
  make_img(&m, 1, 0,
           "{'descr': '<f4', 'fortran_order': False, 'shape': (2, 99999999999999999999), }", 64,
           f6, sizeof f6);
  expect_fail(&m, &want_any, ATTN_ERR_FORMAT, "dimension 1 of the shape overflows");
  make_img(&m, 1, 0,
           "{'descr': '<f4', 'fortran_order': False, 'shape': (4611686018427387904, 8), }", 64,
           f6, sizeof f6);
  expect_fail(&m, &want_any, ATTN_ERR_FORMAT, "overflows");
  make_img(&m, 1, 0, good_dict, 64, f6, sizeof f6 - 1);
  expect_fail(&m, &want_any, ATTN_ERR_FORMAT, "truncated data: 23 bytes");
  make_img(&m, 1, 0, good_dict, 64, f6, 0);
  expect_fail(&m, &want_any, ATTN_ERR_FORMAT, "truncated data: 0 bytes");
  float f7[7] = {0};
  make_img(&m, 1, 0, good_dict, 64, f7, sizeof f7);
  expect_fail(&m, &want_any, ATTN_ERR_FORMAT, "4 bytes of trailing data");
}

/* Every prefix of a valid image is refused, never read out of bounds (ASan). */
static void test_every_truncation(void **state) {
  (void)state;
  img m;
  make_img(&m, 2, 0, good_dict, 64, f6, sizeof f6);
  for (size_t n = 0; n < m.len; n++) {
    unsigned char *copy = malloc(n ? n : 1);
    assert_non_null(copy);
    memcpy(copy, m.b, n);
    npy_array a;
    char err[NPY_ERR_MAX];
    assert_int_equal(npy_parse(copy, n, "t", &want_any, &a, err, sizeof err), ATTN_ERR_FORMAT);
    free(copy);
  }
}

/* Random byte corruptions of valid images (a poor man's fuzzer, deterministic):
 * each is parsed or refused with ATTN_ERR_FORMAT, never anything else, and a
 * success describes exactly the bytes present (ASan checks the reads). */
static void test_corruptions(void **state) {
  (void)state;
  uint64_t s = 0x2545F4914F6CDD1DULL;
  img base[5];
  make_img(&base[0], 1, 0, good_dict, 64, f6, sizeof f6);
  make_img(&base[3], 1, 0, "{'descr': '<f2', 'fortran_order': False, 'shape': (2, 3), }", 64, f6,
           12);
  make_img(&base[4], 2, 0, "{'descr': '<V2', 'fortran_order': False, 'shape': (3, 1), }", 64, f6,
           6);
  make_img(&base[1], 3, 0, "{'descr': '|b1', 'fortran_order': False, 'shape': (2, 1, 3), }", 16,
           "\1\0\1\0\1\1", 6);
  make_img(&base[2], 2, 0, "{'descr': '<i4', 'fortran_order': False, 'shape': (6,), }", 64, f6,
           sizeof f6);
  for (int it = 0; it < 20000; it++) {
    img m = base[it % 5];
    int flips = 1 + (int)(s % 3);
    for (int f = 0; f < flips; f++) {
      s ^= s << 13;
      s ^= s >> 7;
      s ^= s << 17;
      size_t at = (size_t)(s % m.len);
      m.b[at] = (unsigned char)(s >> 32);
    }
    if (it % 7 == 0) m.len = (size_t)(s >> 40) % (m.len + 1);
    unsigned char *copy = malloc(m.len ? m.len : 1);
    assert_non_null(copy);
    memcpy(copy, m.b, m.len);
    npy_array a;
    char err[NPY_ERR_MAX];
    attn_status st = npy_parse(copy, m.len, "f", &want_all, &a, err, sizeof err);
    assert_true(st == ATTN_OK || st == ATTN_ERR_FORMAT);
    if (st == ATTN_OK) {
      size_t item = npy_dtype_size(a.dtype);
      assert_true(a.count * item <= m.len);
      npy_free(&a);
    } else {
      assert_non_null(strstr(err, "f: "));
    }
    free(copy);
  }
}


/* ---- 16-bit types: '<f2' (float16) and '<V2' (bfloat16, as numpy.save writes an
 * ml_dtypes.bfloat16 array) ------------------------------------------------------- */

/* float16 bit patterns: zeros, the smallest and largest subnormals, the smallest
 * normal, one, the largest finite, infinities, quiet and signalling NaNs with
 * payloads. They must survive the writer and the parser bit for bit. */
static const uint16_t f16_bits[12] = {0x0000, 0x8000, 0x0001, 0x03ff, 0x0400, 0x3c00,
                                      0x7bff, 0x7c00, 0xfc00, 0x7e00, 0x7d01, 0xfe3f};
/* bfloat16: 1.5, -2, the smallest subnormal, inf, -inf, NaNs, -0, 65504-ish */
static const uint16_t bf16_bits[8] = {0x3fc0, 0xc000, 0x0001, 0x7f80,
                                      0xff80, 0x7fc1, 0x8000, 0x477f};

/* The data bytes of an encoded image: after the header, little-endian. */
static void expect_le16_payload(const void *buf, size_t len, const uint16_t *bits, size_t n) {
  const unsigned char *b = buf;
  assert_true(len >= 2 * n);
  const unsigned char *d = b + len - 2 * n;
  for (size_t i = 0; i < n; i++) {
    assert_int_equal(d[2 * i], bits[i] & 0xff);
    assert_int_equal(d[2 * i + 1], bits[i] >> 8);
  }
}

static void test_half_roundtrip(void **state) {
  (void)state;
  static const struct {
    npy_dtype t;
    const char *descr;
    const uint16_t *bits;
    size_t n;
    int ndim;
    int64_t shape[4];
  } cases[] = {{NPY_F16, "'descr': '<f2'", f16_bits, 12, 4, {1, 2, 3, 2}},
               {NPY_F16, "'descr': '<f2'", f16_bits, 12, 1, {12}},
               {NPY_BF16, "'descr': '<V2'", bf16_bits, 8, 2, {2, 4}},
               {NPY_BF16, "'descr': '<V2'", bf16_bits, 8, 3, {8, 1, 1}}};
  for (size_t c = 0; c < sizeof cases / sizeof cases[0]; c++) {
    void *buf;
    size_t len;
    char err[NPY_ERR_MAX];
    assert_int_equal(npy_encode(cases[c].t, cases[c].ndim, cases[c].shape, cases[c].bits, &buf,
                                &len, err, sizeof err),
                     ATTN_OK);
    /* numpy's layout: a 64-byte aligned header with exactly this descr */
    assert_int_equal((len - 2 * cases[c].n) % 64, 0);
    char hdr[128];
    memcpy(hdr, (const char *)buf + 10, sizeof hdr - 1);
    hdr[sizeof hdr - 1] = '\0';
    assert_non_null(strstr(hdr, cases[c].descr));
    expect_le16_payload(buf, len, cases[c].bits, cases[c].n);
    npy_array a;
    npy_want w = {cases[c].t, 1, 4};
    assert_int_equal(npy_parse(buf, len, "h", &w, &a, err, sizeof err), ATTN_OK);
    assert_int_equal(a.dtype, cases[c].t);
    assert_int_equal(a.ndim, cases[c].ndim);
    assert_int_equal(a.count, cases[c].n);
    assert_memory_equal(a.data, cases[c].bits, 2 * cases[c].n);
    npy_free(&a);
    /* the other 16-bit type is not silently accepted in its place */
    npy_want other = {cases[c].t == NPY_F16 ? NPY_BF16 : NPY_F16, 1, 4};
    assert_int_equal(npy_parse(buf, len, "h", &other, &a, err, sizeof err), ATTN_ERR_FORMAT);
    assert_non_null(strstr(err, cases[c].t == NPY_F16 ? "dtype is float16 ('<f2')"
                                                      : "dtype is bfloat16 ('<V2')"));
    free(buf);
  }
  /* An image written by hand as numpy writes it (bytes, not our encoder). */
  const unsigned char le[6] = {0x00, 0x3c, 0x00, 0xc0, 0x01, 0x00}; /* 1, -2, 2^-24 */
  img m;
  make_img(&m, 1, 0, "{'descr': '<f2', 'fortran_order': False, 'shape': (3,), }", 64, le, 6);
  npy_array a;
  char err[NPY_ERR_MAX];
  assert_int_equal(npy_parse(m.b, m.len, "hand", &want_all, &a, err, sizeof err), ATTN_OK);
  assert_int_equal(a.dtype, NPY_F16);
  const uint16_t *h = a.data;
  assert_int_equal(h[0], 0x3c00);
  assert_int_equal(h[1], 0xc000);
  assert_int_equal(h[2], 0x0001);
  npy_free(&a);
  make_img(&m, 3, 0, "{'descr': '<V2', 'fortran_order': False, 'shape': (1, 3), }", 16, le, 6);
  assert_int_equal(npy_parse(m.b, m.len, "hand", &want_all, &a, err, sizeof err), ATTN_OK);
  assert_int_equal(a.dtype, NPY_BF16);
  h = a.data;
  assert_int_equal(h[0], 0x3c00);
  assert_int_equal(h[2], 0x0001);
  npy_free(&a);
}

static void test_half_refused(void **state) {
  (void)state;
  img m;
  const unsigned char z[64] = {0};
  /* wrong byte counts: odd, short by one element, one element too many */
  make_img(&m, 1, 0, "{'descr': '<f2', 'fortran_order': False, 'shape': (2, 3), }", 64, z, 11);
  expect_fail(&m, &want_all, ATTN_ERR_FORMAT, "truncated data: 11 bytes");
  expect_fail(&m, &want_all, ATTN_ERR_FORMAT, "float16 ('<f2') needs 12");
  make_img(&m, 1, 0, "{'descr': '<f2', 'fortran_order': False, 'shape': (2, 3), }", 64, z, 14);
  expect_fail(&m, &want_all, ATTN_ERR_FORMAT, "2 bytes of trailing data after the 12 bytes");
  /* float32 bytes under a float16 header: twice the data */
  make_img(&m, 1, 0, "{'descr': '<f2', 'fortran_order': False, 'shape': (2, 3), }", 64, f6,
           sizeof f6);
  expect_fail(&m, &want_all, ATTN_ERR_FORMAT, "12 bytes of trailing data");
  /* '<V2' declared, the data truncated */
  make_img(&m, 1, 0, "{'descr': '<V2', 'fortran_order': False, 'shape': (4, 4), }", 64, z, 30);
  expect_fail(&m, &want_all, ATTN_ERR_FORMAT, "truncated data: 30 bytes");
  expect_fail(&m, &want_all, ATTN_ERR_FORMAT, "bfloat16 ('<V2') needs 32");
  make_img(&m, 2, 0, "{'descr': '<V2', 'fortran_order': False, 'shape': (4,), }", 64, z, 0);
  expect_fail(&m, &want_all, ATTN_ERR_FORMAT, "truncated data: 0 bytes");
  /* descrs that are not ours, each named */
  static const struct {
    const char *dict, *msg;
  } bad[] = {
      {"{'descr': '|V2', 'fortran_order': False, 'shape': (3,), }", "unsupported dtype '|V2'"},
      {"{'descr': '>f2', 'fortran_order': False, 'shape': (3,), }", "big-endian dtype '>f2'"},
      {"{'descr': '>V2', 'fortran_order': False, 'shape': (3,), }", "big-endian dtype '>V2'"},
      {"{'descr': '<V4', 'fortran_order': False, 'shape': (3,), }", "unsupported dtype '<V4'"},
      {"{'descr': '<f8', 'fortran_order': False, 'shape': (3,), }", "unsupported dtype '<f8'"},
      {"{'descr': '|f2', 'fortran_order': False, 'shape': (3,), }", "unsupported dtype '|f2'"},
      {"{'descr': '<u2', 'fortran_order': False, 'shape': (3,), }", "unsupported dtype '<u2'"},
      {"{'descr': '<e', 'fortran_order': False, 'shape': (3,), }", "unsupported dtype '<e'"},
      {"{'descr': 'bfloat16', 'fortran_order': False, 'shape': (3,), }",
       "unsupported dtype 'bfloat16'"},
  };
  for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
    make_img(&m, 1, 0, bad[i].dict, 64, z, 6);
    expect_fail(&m, &want_all, ATTN_ERR_FORMAT, bad[i].msg);
  }
  /* '|V2' says how to write a bfloat16 file attn reads */
  make_img(&m, 1, 0, bad[0].dict, 64, z, 6);
  expect_fail(&m, &want_all, ATTN_ERR_FORMAT, "ml_dtypes.bfloat16");
  /* a 16-bit type where the caller does not take it (a mask: bool or float) */
  make_img(&m, 1, 0, "{'descr': '<V2', 'fortran_order': False, 'shape': (3,), }", 64, z, 6);
  npy_want mask = {NPY_F32 | NPY_F16 | NPY_BOOL, 1, 4};
  expect_fail(&m, &mask, ATTN_ERR_FORMAT, "dtype is bfloat16 ('<V2'); expected");
  make_img(&m, 1, 0, "{'descr': '<f2', 'fortran_order': False, 'shape': (3,), }", 64, z, 6);
  expect_fail(&m, &want_any, ATTN_ERR_FORMAT, "dtype is float16 ('<f2'); expected");
  /* every prefix of a 16-bit image is refused */
  make_img(&m, 1, 0, "{'descr': '<V2', 'fortran_order': False, 'shape': (3,), }", 64, z, 6);
  for (size_t n = 0; n < m.len; n++) {
    npy_array a;
    char err[NPY_ERR_MAX];
    unsigned char *copy = malloc(n ? n : 1);
    assert_non_null(copy);
    memcpy(copy, m.b, n);
    assert_int_equal(npy_parse(copy, n, "t", &want_all, &a, err, sizeof err), ATTN_ERR_FORMAT);
    free(copy);
  }
}

/* ---- files ------------------------------------------------------------------ */

static char tmpdir[256];

static int setup_dir(void **state) {
  (void)state;
  const char *base = getenv("TMPDIR");
  snprintf(tmpdir, sizeof tmpdir, "%s/test_npy.XXXXXX", base && *base ? base : "/tmp");
  return mkdtemp(tmpdir) ? 0 : -1;
}

static int count_entries(const char *dir) {
  DIR *d = opendir(dir);
  if (!d) return -1;
  int n = 0;
  struct dirent *e;
  while ((e = readdir(d)))
    if (strcmp(e->d_name, ".") && strcmp(e->d_name, "..")) n++;
  closedir(d);
  return n;
}

static int teardown_dir(void **state) {
  (void)state;
  char cmdpath[512];
  DIR *d = opendir(tmpdir);
  if (d) {
    struct dirent *e;
    while ((e = readdir(d))) {
      if (!strcmp(e->d_name, ".") || !strcmp(e->d_name, "..")) continue;
      snprintf(cmdpath, sizeof cmdpath, "%s/%s", tmpdir, e->d_name);
      chmod(cmdpath, 0700);
      if (rmdir(cmdpath) != 0) unlink(cmdpath);
    }
    closedir(d);
  }
  return rmdir(tmpdir);
}

static void test_file_roundtrip(void **state) {
  (void)state;
  char path[512], err[NPY_ERR_MAX];
  snprintf(path, sizeof path, "%s/rt.npy", tmpdir);
  const int64_t shape[3] = {2, 1, 3};
  assert_int_equal(npy_write_f32(path, 3, shape, f6, err, sizeof err), ATTN_OK);
  assert_int_equal(count_entries(tmpdir), 1); /* no temporary left behind */
  npy_array a;
  npy_want w = {NPY_F32, 3, 3};
  assert_int_equal(npy_read_file(path, &w, &a, err, sizeof err), ATTN_OK);
  assert_int_equal(a.shape[0], 2);
  assert_int_equal(a.shape[2], 3);
  assert_memory_equal(a.data, f6, sizeof f6);
  npy_free(&a);

  /* A prepared write that is aborted leaves the old file as it was. */
  float other[6] = {9, 9, 9, 9, 9, 9};
  npy_pending p;
  assert_int_equal(npy_write_prepare(path, 3, shape, other, &p, err, sizeof err), ATTN_OK);
  /* pending: an unnamed O_TMPFILE where the file system has them, else a
   * visible temporary */
  assert_int_equal(count_entries(tmpdir), p.fd >= 0 ? 1 : 2);
  npy_write_abort(&p);
  assert_int_equal(count_entries(tmpdir), 1);
  assert_int_equal(npy_read_file(path, &w, &a, err, sizeof err), ATTN_OK);
  assert_memory_equal(a.data, f6, sizeof f6);
  npy_free(&a);

  /* 16-bit files through the atomic writer and the file reader, bits kept. */
  char hpath[512];
  snprintf(hpath, sizeof hpath, "%s/rt16.npy", tmpdir);
  for (int t = 0; t < 2; t++) {
    npy_dtype dt = t ? NPY_BF16 : NPY_F16;
    const uint16_t *bits = t ? bf16_bits : f16_bits;
    const int64_t sh[2] = {t ? 2 : 3, 4}; /* 8 bf16, 12 f16 patterns */
    assert_int_equal(npy_write_typed(hpath, dt, 2, sh, bits, err, sizeof err), ATTN_OK);
    assert_int_equal(count_entries(tmpdir), 2);
    npy_want hw = {dt, 2, 2};
    assert_int_equal(npy_read_file(hpath, &hw, &a, err, sizeof err), ATTN_OK);
    assert_int_equal(a.dtype, dt);
    assert_int_equal(a.shape[0], sh[0]);
    assert_int_equal(a.shape[1], sh[1]);
    assert_memory_equal(a.data, bits, 2 * a.count);
    npy_free(&a);
  }
  unlink(hpath);

  /* Missing files and directories are I/O errors naming the path. */
  char missing[512];
  snprintf(missing, sizeof missing, "%s/nope.npy", tmpdir);
  assert_int_equal(npy_read_file(missing, &w, &a, err, sizeof err), ATTN_ERR_IO);
  assert_non_null(strstr(err, missing));
  assert_non_null(strstr(err, "No such file"));
  assert_int_equal(npy_read_file(tmpdir, &w, &a, err, sizeof err), ATTN_ERR_IO);
  assert_non_null(strstr(err, "directory"));
}

/* Inputs that never end or are far larger than their header: refused before
 * their data is read (issue 13, item 6; and a FIFO must not hang, item 5). */
static void test_unbounded_inputs(void **state) {
  (void)state;
  char err[NPY_ERR_MAX];
  npy_array a;
  npy_want w = {NPY_F32, 1, 4};
  /* /dev/zero: not a regular file; it would read for ever. */
  assert_int_equal(npy_read_file("/dev/zero", &w, &a, err, sizeof err), ATTN_ERR_IO);
  assert_non_null(strstr(err, "/dev/zero: not a regular file"));
  assert_null(a.data);
  /* A FIFO with no writer: open must not block, and it is refused. */
  char fifo[512];
  snprintf(fifo, sizeof fifo, "%s/fifo.npy", tmpdir);
  assert_int_equal(mkfifo(fifo, 0600), 0);
  assert_int_equal(npy_read_file(fifo, &w, &a, err, sizeof err), ATTN_ERR_IO);
  assert_non_null(strstr(err, "not a regular file"));
  unlink(fifo);
  /* A valid 6-float file followed by a sparse 4 GiB of zeros: refused
   * without reading the data (a read of 4 GiB would take seconds and as
   * much memory). */
  char big[512];
  snprintf(big, sizeof big, "%s/big.npy", tmpdir);
  const int64_t shape[1] = {6};
  assert_int_equal(npy_write_f32(big, 1, shape, f6, err, sizeof err), ATTN_OK);
  struct stat st;
  assert_int_equal(stat(big, &st), 0);
  assert_int_equal(truncate(big, st.st_size + ((off_t)4 << 30)), 0);
  assert_int_equal(npy_read_file(big, &w, &a, err, sizeof err), ATTN_ERR_FORMAT);
  assert_non_null(strstr(err, "4294967296 bytes of trailing data after the 24 bytes"));
  /* A header that announces more than a huge file holds is still read only
   * as far as the header. */
  assert_int_equal(truncate(big, 10), 0);
  assert_int_equal(npy_read_file(big, &w, &a, err, sizeof err), ATTN_ERR_FORMAT);
  unlink(big);
}

static void test_atomic_write_failures(void **state) {
  (void)state;
  char path[512], err[NPY_ERR_MAX];
  const int64_t shape[1] = {6};
  int before = count_entries(tmpdir);

  /* The parent directory does not exist. */
  snprintf(path, sizeof path, "%s/no/such/dir/x.npy", tmpdir);
  assert_int_equal(npy_write_f32(path, 1, shape, f6, err, sizeof err), ATTN_ERR_IO);
  assert_non_null(strstr(err, path));
  assert_int_equal(count_entries(tmpdir), before);

  /* The target is a directory: the rename fails, the temporary goes. */
  snprintf(path, sizeof path, "%s/adir", tmpdir);
  assert_int_equal(mkdir(path, 0700), 0);
  before = count_entries(tmpdir);
  assert_int_equal(npy_write_f32(path, 1, shape, f6, err, sizeof err), ATTN_ERR_IO);
  assert_non_null(strstr(err, path));
  assert_int_equal(count_entries(tmpdir), before);

  /* An empty path; a bad shape. */
  assert_int_equal(npy_write_f32("", 1, shape, f6, err, sizeof err), ATTN_ERR_IO);
  snprintf(path, sizeof path, "%s/bad.npy", tmpdir);
  const int64_t zero[1] = {0};
  assert_int_equal(npy_write_f32(path, 1, zero, f6, err, sizeof err), ATTN_ERR_INVALID_ARG);
  assert_int_equal(count_entries(tmpdir), before);

  /* An unwritable directory (root writes anyway, so only as a user). */
  if (geteuid() != 0) {
    char ro[300];
    snprintf(ro, sizeof ro, "%s/ro", tmpdir);
    assert_int_equal(mkdir(ro, 0500), 0);
    snprintf(path, sizeof path, "%s/x.npy", ro);
    assert_int_equal(npy_write_f32(path, 1, shape, f6, err, sizeof err), ATTN_ERR_IO);
    assert_non_null(strstr(err, "Permission denied"));
    assert_int_equal(count_entries(ro), 0);
  }
  /* A file system that takes no new files, even from root. */
  assert_int_equal(npy_write_f32("/proc/self/x.npy", 1, shape, f6, err, sizeof err), ATTN_ERR_IO);
  assert_null(fopen("/proc/self/x.npy", "r"));
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_valid_dtypes_and_versions),
      cmocka_unit_test(test_valid_ranks_roundtrip),
      cmocka_unit_test(test_bad_preamble),
      cmocka_unit_test(test_lying_header),
      cmocka_unit_test(test_bad_dict),
      cmocka_unit_test(test_bad_dtype_order_rank),
      cmocka_unit_test(test_bad_dims_and_data),
      cmocka_unit_test(test_every_truncation),
      cmocka_unit_test(test_corruptions),
      cmocka_unit_test(test_half_roundtrip),
      cmocka_unit_test(test_half_refused),
      cmocka_unit_test(test_file_roundtrip),
      cmocka_unit_test(test_unbounded_inputs),
      cmocka_unit_test(test_atomic_write_failures),
  };
  return cmocka_run_group_tests(tests, setup_dir, teardown_dir);
}
