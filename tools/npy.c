/* .npy reader and writer; see npy.h for the contract.
 *
 * The format (numpy/lib/format.py): the magic "\x93NUMPY", a major and minor
 * version byte, a little-endian header length (2 bytes in 1.0, 4 bytes in 2.0
 * and 3.0), then the header: a Python dict literal with exactly the keys
 * 'descr', 'fortran_order' and 'shape', padded with spaces and ended by '\n'
 * so that the data starts aligned (numpy pads to 64 bytes, older numpy to 16;
 * we require 16, which both satisfy). The data follows, and nothing after it. */
#include "npy.h"

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

static const unsigned char npy_magic[6] = {0x93, 'N', 'U', 'M', 'P', 'Y'};

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

static const char *safe_name(const char *name) { return name && *name ? name : "<npy>"; }

/* ---- the header dict --------------------------------------------------------- */

typedef struct hdr_parser {
  const char *p, *end;
} hdr_parser;

static void skip_ws(hdr_parser *h) {
  while (h->p < h->end && (*h->p == ' ' || *h->p == '\t')) h->p++;
}

/* A Python string literal in single or double quotes, without escapes (none
 * of the values we accept needs one). Copies at most cap-1 chars into out. */
static bool parse_string(hdr_parser *h, char *out, size_t cap) {
  if (h->p >= h->end || (*h->p != '\'' && *h->p != '"')) return false;
  char q = *h->p++;
  size_t n = 0;
  while (h->p < h->end && *h->p != q) {
    if (*h->p == '\\' || n + 1 >= cap) return false;
    out[n++] = *h->p++;
  }
  if (h->p >= h->end) return false;
  h->p++; /* closing quote */
  out[n] = '\0';
  return true;
}

static bool parse_word(hdr_parser *h, const char *w) {
  size_t n = strlen(w);
  if ((size_t)(h->end - h->p) < n || memcmp(h->p, w, n) != 0) return false;
  h->p += n;
  return true;
}

typedef struct hdr_dict {
  bool has_descr, has_fortran, has_shape;
  char descr[32];
  bool fortran;
  int ndim;                      /* as written, may exceed NPY_MAX_DIMS */
  int64_t shape[NPY_MAX_DIMS];
  bool negative, overflow;       /* some dimension was negative / too large */
  int bad_dim;                   /* index of the first such dimension */
} hdr_dict;

/* A tuple of non-negative Python ints: "()", "(3,)", "(2, 3)", "(2, 3,)";
 * Python 2 era files may write "3L". "(3)" is an int, not a tuple: refused. */
static bool parse_shape(hdr_parser *h, hdr_dict *d, const char **why) {
  if (h->p >= h->end || *h->p != '(') {
    *why = "'shape' is not a tuple";
    return false;
  }
  h->p++;
  d->ndim = 0;
  bool trailing_comma = false;
  for (;;) {
    skip_ws(h);
    if (h->p < h->end && *h->p == ')') {
      h->p++;
      break;
    }
    bool neg = false;
    if (h->p < h->end && *h->p == '-') {
      neg = true;
      h->p++;
    }
    if (h->p >= h->end || *h->p < '0' || *h->p > '9') {
      *why = "'shape' holds something that is not an integer";
      return false;
    }
    int64_t v = 0;
    bool ovf = false;
    while (h->p < h->end && *h->p >= '0' && *h->p <= '9') {
      int digit = *h->p++ - '0';
      if (v > (INT64_MAX - digit) / 10) ovf = true;
      else v = v * 10 + digit;
    }
    if (h->p < h->end && *h->p == 'L') h->p++;
    if (d->ndim < NPY_MAX_DIMS) d->shape[d->ndim] = v;
    if ((neg && v != 0) && !d->negative && !d->overflow) {
      d->negative = true;
      d->bad_dim = d->ndim;
    }
    if (ovf && !d->negative && !d->overflow) {
      d->overflow = true;
      d->bad_dim = d->ndim;
    }
    if (d->ndim < 64) d->ndim++;
    skip_ws(h);
    trailing_comma = false;
    if (h->p < h->end && *h->p == ',') {
      h->p++;
      trailing_comma = true;
      continue;
    }
    if (h->p < h->end && *h->p == ')') {
      h->p++;
      break;
    }
    *why = "'shape' tuple is not closed";
    return false;
  }
  if (d->ndim == 1 && !trailing_comma) {
    *why = "'shape' is not a tuple (a 1-element tuple needs a trailing comma)";
    return false;
  }
  return true;
}

static bool parse_dict(hdr_parser *h, hdr_dict *d, const char **why) {
  memset(d, 0, sizeof *d);
  skip_ws(h);
  if (h->p >= h->end || *h->p != '{') {
    *why = "the header is not a dict (no '{')";
    return false;
  }
  h->p++;
  for (;;) {
    skip_ws(h);
    if (h->p < h->end && *h->p == '}') {
      h->p++;
      break;
    }
    char key[32];
    if (!parse_string(h, key, sizeof key)) {
      *why = "a key of the header dict is not a string";
      return false;
    }
    skip_ws(h);
    if (h->p >= h->end || *h->p != ':') {
      *why = "a key of the header dict is not followed by ':'";
      return false;
    }
    h->p++;
    skip_ws(h);
    if (strcmp(key, "descr") == 0) {
      if (d->has_descr) {
        *why = "duplicate key 'descr'";
        return false;
      }
      if (!parse_string(h, d->descr, sizeof d->descr)) {
        *why = "'descr' is not a simple dtype string (structured dtypes are not supported)";
        return false;
      }
      d->has_descr = true;
    } else if (strcmp(key, "fortran_order") == 0) {
      if (d->has_fortran) {
        *why = "duplicate key 'fortran_order'";
        return false;
      }
      if (parse_word(h, "True")) d->fortran = true;
      else if (parse_word(h, "False")) d->fortran = false;
      else {
        *why = "'fortran_order' is neither True nor False";
        return false;
      }
      d->has_fortran = true;
    } else if (strcmp(key, "shape") == 0) {
      if (d->has_shape) {
        *why = "duplicate key 'shape'";
        return false;
      }
      if (!parse_shape(h, d, why)) return false;
      d->has_shape = true;
    } else {
      *why = "the header dict has a key other than 'descr', 'fortran_order' and 'shape'";
      return false;
    }
    skip_ws(h);
    if (h->p < h->end && *h->p == ',') {
      h->p++;
      continue;
    }
    if (h->p < h->end && *h->p == '}') {
      h->p++;
      break;
    }
    *why = "the header dict is not closed with '}'";
    return false;
  }
  if (!d->has_descr || !d->has_fortran || !d->has_shape) {
    *why = !d->has_descr     ? "the header dict has no 'descr'"
           : !d->has_shape   ? "the header dict has no 'shape'"
                             : "the header dict has no 'fortran_order'";
    return false;
  }
  return true;
}

static const char *dtype_name(unsigned t) {
  switch (t) {
  case NPY_F32: return "float32 ('<f4')";
  case NPY_BOOL: return "bool ('|b1')";
  case NPY_I32: return "int32 ('<i4')";
  case NPY_F16: return "float16 ('<f2')";
  case NPY_BF16: return "bfloat16 ('<V2')";
  default: return "?";
  }
}

size_t npy_dtype_size(npy_dtype t) {
  switch (t) {
  case NPY_F32:
  case NPY_I32: return 4;
  case NPY_BOOL: return 1;
  case NPY_F16:
  case NPY_BF16: return 2;
  }
  return 0;
}

const char *npy_dtype_descr(npy_dtype t) {
  switch (t) {
  case NPY_F32: return "<f4";
  case NPY_BOOL: return "|b1";
  case NPY_I32: return "<i4";
  case NPY_F16: return "<f2";
  case NPY_BF16: return "<V2";
  }
  return "?";
}

/* "float32 ('<f4') or bool ('|b1')" */
static void dtypes_list(unsigned mask, char *buf, size_t cap) {
  buf[0] = '\0';
  size_t n = 0;
  for (unsigned t = 1; t <= NPY_BF16; t <<= 1) {
    if (!(mask & t)) continue;
    int w = snprintf(buf + n, cap - n, "%s%s", n ? " or " : "", dtype_name(t));
    if (w < 0 || (size_t)w >= cap - n) break;
    n += (size_t)w;
  }
}

/* A descr numpy might write, described for the message. */
static const char *descr_hint(const char *d) {
  static const struct {
    const char *descr, *name;
  } known[] = {{"<f8", "float64"}, {"<i8", "int64"}, {"<i2", "int16"}, {"<u2", "uint16"},
               {"|i1", "int8"},    {"|u1", "uint8"},   {"<u4", "uint32"}, {"<u8", "uint64"},
               {"<c8", "complex64"}, {"<c16", "complex128"},
               /* np.load of a bfloat16 file without ml_dtypes gives void '|V2',
                * which np.save then writes as such: not known to be bfloat16 */
               {"|V2", "raw 2-byte void, not known to be bfloat16: save an ml_dtypes.bfloat16 "
                       "array, which numpy writes as '<V2'"},
               {"|V4", "raw 4-byte void"}, {"<V4", "4-byte void"}};
  for (size_t i = 0; i < sizeof known / sizeof known[0]; i++)
    if (strcmp(d, known[i].descr) == 0) return known[i].name;
  return NULL;
}

static void shape_str(const int64_t *shape, int ndim, char *buf, size_t cap) {
  size_t n = 0;
  buf[0] = '\0';
  for (int i = 0; i < ndim && n < cap; i++) {
    int w = snprintf(buf + n, cap - n, "%s%" PRId64, i ? ", " : "(", shape[i]);
    if (w < 0) return;
    n += (size_t)w;
  }
  if (n < cap) snprintf(buf + n, cap - n, "%s)", ndim == 1 ? "," : ndim == 0 ? "(" : "");
}

static uint32_t rd_u32le(const unsigned char *b) {
  return (uint32_t)b[0] | (uint32_t)b[1] << 8 | (uint32_t)b[2] << 16 | (uint32_t)b[3] << 24;
}

/* What a valid preamble and header announce. */
typedef struct npy_header {
  unsigned dtype;
  int ndim;
  int64_t shape[NPY_MAX_DIMS];
  size_t count, item, data_off, nbytes;
} npy_header;

/* The preamble and header at the start of buf (len bytes, at least the
 * whole header): checked against want, data not looked at. */
static attn_status parse_header(const unsigned char *buf, size_t len, const char *name,
                                const npy_want *want, npy_header *hd, char *err,
                                size_t errlen) {
  size_t m = len < sizeof npy_magic ? len : sizeof npy_magic;
  if (memcmp(buf, npy_magic, m) != 0 || len == 0)
    return fail(ATTN_ERR_FORMAT, err, errlen,
                "%s: not a .npy file (bad magic: the file does not start with \"\\x93NUMPY\")",
                name);
  if (len < 8)
    return fail(ATTN_ERR_FORMAT, err, errlen,
                "%s: truncated: %zu bytes, too short for the .npy magic and version", name, len);
  unsigned major = buf[6], minor = buf[7];
  if ((major != 1 && major != 2 && major != 3) || minor != 0)
    return fail(ATTN_ERR_FORMAT, err, errlen,
                "%s: unknown .npy format version %u.%u (supported: 1.0, 2.0, 3.0)", name, major,
                minor);
  size_t pre = major == 1 ? 10 : 12;
  if (len < pre)
    return fail(ATTN_ERR_FORMAT, err, errlen,
                "%s: truncated header: %zu bytes, the version %u.0 preamble needs %zu", name, len,
                major, pre);
  uint64_t hlen = major == 1 ? (uint64_t)(buf[8] | buf[9] << 8) : rd_u32le(buf + 8);
  if (hlen > len - pre)
    return fail(ATTN_ERR_FORMAT, err, errlen,
                "%s: header length %" PRIu64 " runs past the end of the file (%zu bytes after "
                "the %zu-byte preamble)",
                name, hlen, len - pre, pre);
  size_t data_off = pre + (size_t)hlen;
  const char *hdr = (const char *)buf + pre;
  if (hlen == 0 || hdr[hlen - 1] != '\n')
    return fail(ATTN_ERR_FORMAT, err, errlen,
                "%s: header is not terminated by a newline (its length field %" PRIu64
                " may be wrong)",
                name, hlen);
  for (size_t i = 0; i + 1 < hlen; i++) {
    unsigned char c = (unsigned char)hdr[i];
    if (c < 0x20 || c > 0x7e)
      return fail(ATTN_ERR_FORMAT, err, errlen,
                  "%s: header has a non-printable byte 0x%02x at offset %zu (its length field "
                  "may be wrong)",
                  name, c, pre + i);
  }
  if (data_off % 16 != 0)
    return fail(ATTN_ERR_FORMAT, err, errlen,
                "%s: header is not padded: the data starts at byte %zu, not a multiple of 16",
                name, data_off);

  hdr_parser h = {hdr, hdr + hlen - 1};
  hdr_dict d;
  const char *why = "";
  if (!parse_dict(&h, &d, &why))
    return fail(ATTN_ERR_FORMAT, err, errlen, "%s: bad header: %s", name, why);
  /* Only the padding (spaces) may follow the dict. */
  for (; h.p < h.end; h.p++)
    if (*h.p != ' ')
      return fail(ATTN_ERR_FORMAT, err, errlen,
                  "%s: bad header: '%c' after the dict where only space padding may be", name,
                  *h.p);

  unsigned dtype;
  if (strcmp(d.descr, "<f4") == 0) dtype = NPY_F32;
  else if (strcmp(d.descr, "|b1") == 0) dtype = NPY_BOOL;
  else if (strcmp(d.descr, "<i4") == 0) dtype = NPY_I32;
  else if (strcmp(d.descr, "<f2") == 0) dtype = NPY_F16;
  else if (strcmp(d.descr, "<V2") == 0) dtype = NPY_BF16;
  else if (d.descr[0] == '>' || d.descr[0] == '!')
    return fail(ATTN_ERR_FORMAT, err, errlen,
                "%s: big-endian dtype '%s' is not supported (save little-endian, e.g. "
                "x.astype('<%s'))",
                name, d.descr, d.descr + 1);
  else {
    char exp[128];
    dtypes_list(want->dtypes, exp, sizeof exp);
    const char *hint = descr_hint(d.descr);
    return fail(ATTN_ERR_FORMAT, err, errlen, "%s: unsupported dtype '%s'%s%s%s; expected %s",
                name, d.descr, hint ? " (" : "", hint ? hint : "", hint ? ")" : "", exp);
  }
  if (!(want->dtypes & dtype)) {
    char exp[128];
    dtypes_list(want->dtypes, exp, sizeof exp);
    return fail(ATTN_ERR_FORMAT, err, errlen, "%s: dtype is %s; expected %s", name,
                dtype_name(dtype), exp);
  }
  if (d.fortran)
    return fail(ATTN_ERR_FORMAT, err, errlen,
                "%s: Fortran order is not supported (save a C-ordered array, e.g. "
                "np.ascontiguousarray(x))",
                name);
  if (d.negative)
    return fail(ATTN_ERR_FORMAT, err, errlen, "%s: dimension %d of the shape is negative", name,
                d.bad_dim);
  if (d.overflow)
    return fail(ATTN_ERR_FORMAT, err, errlen, "%s: dimension %d of the shape overflows", name,
                d.bad_dim);
  if (d.ndim < want->min_rank || d.ndim > want->max_rank) {
    if (want->min_rank == want->max_rank)
      return fail(ATTN_ERR_FORMAT, err, errlen, "%s: rank %d; expected rank %d", name, d.ndim,
                  want->min_rank);
    return fail(ATTN_ERR_FORMAT, err, errlen, "%s: rank %d; expected rank %d to %d", name,
                d.ndim, want->min_rank, want->max_rank);
  }
  size_t item = npy_dtype_size((npy_dtype)dtype);
  size_t count = 1;
  for (int i = 0; i < d.ndim; i++) {
    if (d.shape[i] == 0)
      return fail(ATTN_ERR_FORMAT, err, errlen,
                  "%s: dimension %d of the shape is 0 (empty arrays are not supported)", name, i);
    if ((uint64_t)d.shape[i] > SIZE_MAX / item / count)
      return fail(ATTN_ERR_FORMAT, err, errlen,
                  "%s: the shape's byte count overflows (dimension %d = %" PRId64 ")", name, i,
                  d.shape[i]);
    count *= (size_t)d.shape[i];
  }
  hd->dtype = dtype;
  hd->ndim = d.ndim;
  memcpy(hd->shape, d.shape, sizeof(int64_t) * (size_t)d.ndim);
  hd->count = count;
  hd->item = item;
  hd->data_off = data_off;
  hd->nbytes = count * item;
  return ATTN_OK;
}

attn_status npy_parse(const void *buf_, size_t len, const char *name_, const npy_want *want,
                      npy_array *out, char *err, size_t errlen) {
  const unsigned char *buf = buf_;
  const char *name = safe_name(name_);
  if (out) memset(out, 0, sizeof *out);
  if (!out || (!buf && len) || !want || want->min_rank < 1 || want->max_rank > NPY_MAX_DIMS ||
      want->min_rank > want->max_rank || !want->dtypes)
    return fail(ATTN_ERR_INVALID_ARG, err, errlen, "npy_parse: %s: invalid arguments", name);
  npy_header hd;
  attn_status hs = parse_header(buf, len, name, want, &hd, err, errlen);
  if (hs) return hs;
  const unsigned dtype = hd.dtype;
  const size_t count = hd.count, item = hd.item, data_off = hd.data_off, nbytes = hd.nbytes,
               have = len - data_off;
  char sh[160];
  shape_str(hd.shape, hd.ndim, sh, sizeof sh);
  if (have < nbytes)
    return fail(ATTN_ERR_FORMAT, err, errlen,
                "%s: truncated data: %zu bytes, shape %s of %s needs %zu", name, have, sh,
                dtype_name(dtype), nbytes);
  if (have > nbytes)
    return fail(ATTN_ERR_FORMAT, err, errlen,
                "%s: %zu bytes of trailing data after the %zu bytes of shape %s", name,
                have - nbytes, nbytes, sh);

  const unsigned char *src = buf + data_off;
  if (dtype == NPY_BOOL)
    for (size_t i = 0; i < count; i++)
      if (src[i] > 1)
        return fail(ATTN_ERR_FORMAT, err, errlen,
                    "%s: bool element %zu has byte value %u (not 0 or 1)", name, i, src[i]);
  void *data = malloc(nbytes);
  if (!data)
    return fail(ATTN_ERR_NOMEM, err, errlen, "%s: out of memory for %zu bytes of data", name,
                nbytes);
  if (dtype == NPY_BOOL) {
    memcpy(data, src, nbytes);
  } else if (item == 2) {
    uint16_t *dst = data;
    for (size_t i = 0; i < count; i++) dst[i] = (uint16_t)(src[2 * i] | src[2 * i + 1] << 8);
  } else {
    /* Decode little-endian explicitly: correct on any host, and the copy
     * also fixes the alignment of the data within the buffer. */
    uint32_t *dst = data;
    for (size_t i = 0; i < count; i++) {
      uint32_t u = rd_u32le(src + 4 * i);
      memcpy(&dst[i], &u, 4);
    }
  }
  out->dtype = (npy_dtype)dtype;
  out->ndim = hd.ndim;
  memcpy(out->shape, hd.shape, sizeof(int64_t) * (size_t)hd.ndim);
  out->count = count;
  out->data = data;
  return ATTN_OK;
}

void npy_free(npy_array *a) {
  if (!a) return;
  free(a->data);
  memset(a, 0, sizeof *a);
}

/* Read exactly n bytes at the file's current offset into buf; 0 or errno. */
static int read_exact(int fd, unsigned char *buf, size_t n, size_t *got) {
  *got = 0;
  while (*got < n) {
    ssize_t r = read(fd, buf + *got, n - *got);
    if (r < 0 && errno == EINTR) continue;
    if (r < 0) return errno;
    if (r == 0) break;
    *got += (size_t)r;
  }
  return 0;
}

/* Headers numpy writes are a few hundred bytes; this bounds what an
 * untrusted header length can make us read before anything is checked. */
#define NPY_MAX_HEADER ((size_t)1 << 20)

attn_status npy_read_file(const char *path, const npy_want *want, npy_array *out, char *err,
                          size_t errlen) {
  if (out) memset(out, 0, sizeof *out);
  if (!path || !*path)
    return fail(ATTN_ERR_INVALID_ARG, err, errlen, "npy_read_file: empty path");
  if (!out || !want)
    return fail(ATTN_ERR_INVALID_ARG, err, errlen, "npy_read_file: %s: invalid arguments", path);
  /* O_NONBLOCK: opening a FIFO must not wait for a writer (it is refused below). */
  int fd = open(path, O_RDONLY | O_CLOEXEC | O_NONBLOCK);
  if (fd < 0)
    return fail(ATTN_ERR_IO, err, errlen, "%s: cannot open: %s", path, strerror(errno));
  struct stat st;
  if (fstat(fd, &st) != 0) {
    int e = errno;
    close(fd);
    return fail(ATTN_ERR_IO, err, errlen, "%s: cannot stat: %s", path, strerror(e));
  }
  if (S_ISDIR(st.st_mode)) {
    close(fd);
    return fail(ATTN_ERR_IO, err, errlen, "%s: cannot read: is a directory", path);
  }
  /* A device, FIFO or socket has no size to check against the header, and
   * may never end (/dev/zero): only regular files are read. */
  if (!S_ISREG(st.st_mode)) {
    close(fd);
    return fail(ATTN_ERR_IO, err, errlen, "%s: not a regular file (a .npy input must be one)",
                path);
  }
  const size_t fsize = (size_t)st.st_size;
  /* The preamble and header first: nothing more is read until they are
   * valid and announce exactly the bytes the file holds. */
  unsigned char pre[12];
  size_t got;
  int e = read_exact(fd, pre, sizeof pre < fsize ? sizeof pre : fsize, &got);
  attn_status s = ATTN_OK;
  unsigned char *buf = NULL;
  if (e) {
    s = fail(ATTN_ERR_IO, err, errlen, "%s: cannot read: %s", path, strerror(e));
    goto done;
  }
  size_t hlen_end = got; /* bytes of preamble + header, once known */
  if (got >= 10 && memcmp(pre, npy_magic, sizeof npy_magic) == 0 && pre[7] == 0) {
    const unsigned major = pre[6];
    if (major == 1) hlen_end = 10 + (size_t)(pre[8] | pre[9] << 8);
    else if ((major == 2 || major == 3) && got >= 12) hlen_end = 12 + (size_t)rd_u32le(pre + 8);
  }
  if (hlen_end > fsize) hlen_end = fsize; /* parse_header names the truncation */
  if (hlen_end > NPY_MAX_HEADER) {
    s = fail(ATTN_ERR_FORMAT, err, errlen, "%s: header length %zu exceeds %zu bytes", path,
             hlen_end, NPY_MAX_HEADER);
    goto done;
  }
  buf = malloc(hlen_end > got ? hlen_end : got ? got : 1);
  if (!buf) {
    s = fail(ATTN_ERR_NOMEM, err, errlen, "%s: out of memory reading the file", path);
    goto done;
  }
  memcpy(buf, pre, got);
  size_t more = 0;
  if (hlen_end > got && (e = read_exact(fd, buf + got, hlen_end - got, &more))) {
    s = fail(ATTN_ERR_IO, err, errlen, "%s: cannot read: %s", path, strerror(e));
    goto done;
  }
  npy_header hd;
  if ((s = parse_header(buf, got + more, path, want, &hd, err, errlen))) goto done;
  /* A file larger than its header announces is refused without reading
   * it; a shorter one is read and refused as truncated by npy_parse. */
  if (fsize > hd.data_off + hd.nbytes) {
    s = fail(ATTN_ERR_FORMAT, err, errlen,
             "%s: %zu bytes of trailing data after the %zu bytes the header announces", path,
             fsize - hd.data_off - hd.nbytes, hd.nbytes);
    goto done;
  }
  {
    unsigned char *all = realloc(buf, fsize ? fsize : 1);
    if (!all) {
      s = fail(ATTN_ERR_NOMEM, err, errlen, "%s: out of memory for %zu bytes", path, fsize);
      goto done;
    }
    buf = all;
    size_t rest = 0;
    if ((e = read_exact(fd, buf + got + more, fsize - got - more, &rest))) {
      s = fail(ATTN_ERR_IO, err, errlen, "%s: cannot read: %s", path, strerror(e));
      goto done;
    }
    s = npy_parse(buf, got + more + rest, path, want, out, err, errlen);
  }
done:
  free(buf);
  close(fd);
  return s;
}

/* ---- writer --------------------------------------------------------------------- */

attn_status npy_encode(npy_dtype dtype, int ndim, const int64_t *shape, const void *data,
                       void **bufp, size_t *lenp, char *err, size_t errlen) {
  size_t item = npy_dtype_size(dtype);
  if (!bufp || !lenp || !shape || !data || ndim < 1 || ndim > NPY_MAX_DIMS || !item)
    return fail(ATTN_ERR_INVALID_ARG, err, errlen, "npy_encode: invalid arguments");
  *bufp = NULL;
  *lenp = 0;
  size_t count = 1;
  for (int i = 0; i < ndim; i++) {
    if (shape[i] < 1)
      return fail(ATTN_ERR_INVALID_ARG, err, errlen,
                  "npy_encode: shape: dimension %d is %" PRId64 " (< 1)", i, shape[i]);
    if ((uint64_t)shape[i] > SIZE_MAX / item / count)
      return fail(ATTN_ERR_OVERFLOW, err, errlen, "npy_encode: shape: byte count overflows");
    count *= (size_t)shape[i];
  }
  char sh[160], dict[256];
  shape_str(shape, ndim, sh, sizeof sh);
  int dl = snprintf(dict, sizeof dict, "{'descr': '%s', 'fortran_order': False, 'shape': %s, }",
                    npy_dtype_descr(dtype), sh);
  if (dl < 0 || (size_t)dl >= sizeof dict)
    return fail(ATTN_ERR_INVALID_ARG, err, errlen, "npy_encode: shape too long");
  /* Pad with spaces so that preamble (10) + header, '\n' included, is a
   * multiple of 64, as numpy does. */
  size_t hlen = (size_t)dl + 1;
  hlen += (64 - (10 + hlen) % 64) % 64;
  size_t nbytes = count * item;
  if (nbytes > SIZE_MAX - 10 - hlen)
    return fail(ATTN_ERR_OVERFLOW, err, errlen, "npy_encode: byte count overflows");
  size_t len = 10 + hlen + nbytes;
  unsigned char *buf = malloc(len);
  if (!buf) return fail(ATTN_ERR_NOMEM, err, errlen, "npy_encode: out of memory");
  memcpy(buf, npy_magic, 6);
  buf[6] = 1;
  buf[7] = 0;
  buf[8] = (unsigned char)(hlen & 0xff);
  buf[9] = (unsigned char)(hlen >> 8);
  memcpy(buf + 10, dict, (size_t)dl);
  memset(buf + 10 + dl, ' ', hlen - (size_t)dl - 1);
  buf[10 + hlen - 1] = '\n';
  unsigned char *dst = buf + 10 + hlen;
  if (item == 1) {
    memcpy(dst, data, count);
  } else if (item == 2) {
    const uint16_t *h = data;
    for (size_t i = 0; i < count; i++) {
      dst[2 * i] = (unsigned char)h[i];
      dst[2 * i + 1] = (unsigned char)(h[i] >> 8);
    }
  } else {
    const unsigned char *src = data;
    for (size_t i = 0; i < count; i++) {
      uint32_t u;
      memcpy(&u, src + 4 * i, 4);
      dst[4 * i] = (unsigned char)u;
      dst[4 * i + 1] = (unsigned char)(u >> 8);
      dst[4 * i + 2] = (unsigned char)(u >> 16);
      dst[4 * i + 3] = (unsigned char)(u >> 24);
    }
  }
  *bufp = buf;
  *lenp = len;
  return ATTN_OK;
}

attn_status npy_encode_f32(int ndim, const int64_t *shape, const float *data, void **bufp,
                           size_t *lenp, char *err, size_t errlen) {
  return npy_encode(NPY_F32, ndim, shape, data, bufp, lenp, err, errlen);
}

void npy_write_abort(npy_pending *p) {
  if (!p) return;
  if (p->fd >= 0) close(p->fd); /* an unnamed file vanishes with its descriptor */
  else if (p->tmp) unlink(p->tmp);
  free(p->tmp);
  free(p->path);
  p->tmp = p->path = NULL;
  p->fd = -1;
}

/* The directory part of path, for O_TMPFILE ("." for none, "/" for the root). */
static void dir_of(const char *path, char *dir, size_t cap) {
  const char *slash = strrchr(path, '/');
  if (!slash) snprintf(dir, cap, ".");
  else if (slash == path) snprintf(dir, cap, "/");
  else snprintf(dir, cap, "%.*s", (int)(slash - path), path);
}

static bool write_all(int fd, const unsigned char *b, size_t n) {
  while (n) {
    ssize_t w = write(fd, b, n);
    if (w < 0 && errno == EINTR) continue;
    if (w <= 0) return false;
    b += w;
    n -= (size_t)w;
  }
  return true;
}

attn_status npy_write_prepare_typed(const char *path, npy_dtype dtype, int ndim,
                                    const int64_t *shape, const void *data, npy_pending *p,
                                    char *err, size_t errlen) {
  if (!p) return fail(ATTN_ERR_INVALID_ARG, err, errlen, "npy_write: invalid arguments");
  p->tmp = p->path = NULL;
  p->fd = -1;
  if (!path || !*path) return fail(ATTN_ERR_IO, err, errlen, "npy_write: empty output path");
  /* Checked before encoding: see file_write_prepare. */
  struct stat st;
  if (stat(path, &st) == 0 && !S_ISREG(st.st_mode))
    return fail(ATTN_ERR_IO, err, errlen, "%s: exists and is not a regular file%s", path,
                S_ISDIR(st.st_mode) ? " (a directory)" : "");
  void *img;
  size_t len;
  attn_status s = npy_encode(dtype, ndim, shape, data, &img, &len, err, errlen);
  if (s != ATTN_OK) return s;
  s = file_write_prepare(path, img, len, p, err, errlen);
  free(img);
  return s;
}

attn_status npy_write_prepare(const char *path, int ndim, const int64_t *shape, const float *data,
                              npy_pending *p, char *err, size_t errlen) {
  return npy_write_prepare_typed(path, NPY_F32, ndim, shape, data, p, err, errlen);
}

attn_status file_write_prepare(const char *path, const void *bytes, size_t len, npy_pending *p,
                               char *err, size_t errlen) {
  if (!p) return fail(ATTN_ERR_INVALID_ARG, err, errlen, "file_write: invalid arguments");
  p->tmp = p->path = NULL;
  p->fd = -1;
  if (!path || !*path) return fail(ATTN_ERR_IO, err, errlen, "file_write: empty output path");
  /* rename() would fail on a directory only at commit, after other outputs
   * may already be in place, and would replace a device node such as
   * /dev/null with a regular file: refuse any existing target that is not a
   * regular file here, while nothing has been written. */
  struct stat st;
  if (stat(path, &st) == 0 && !S_ISREG(st.st_mode))
    return fail(ATTN_ERR_IO, err, errlen, "%s: exists and is not a regular file%s", path,
                S_ISDIR(st.st_mode) ? " (a directory)" : "");

  /* The temporary file lives next to the target so that rename() is atomic
   * (same file system). O_EXCL with a pid-and-counter name never clobbers
   * anything; mode 0666 lets the umask decide, as for any new file. */
  static unsigned counter;
  size_t tcap = strlen(path) + 64;
  p->tmp = malloc(tcap);
  p->path = strdup(path);
  if (!p->tmp || !p->path) {
    free(p->tmp);
    free(p->path);
    p->tmp = p->path = NULL;
    return fail(ATTN_ERR_NOMEM, err, errlen, "%s: out of memory", path);
  }
  int fd = -1, e = 0;
#ifdef O_TMPFILE
  /* An unnamed file in the target's directory: a writer killed before its
   * commit leaves nothing behind. It gets a name only at commit, for the
   * instant between linkat and rename. */
  {
    char dir[4096];
    dir_of(path, dir, sizeof dir);
    fd = open(dir, O_TMPFILE | O_WRONLY | O_CLOEXEC, 0666);
    if (fd >= 0) p->fd = fd;
  }
#endif
  for (int tries = 0; tries < 100 && fd < 0; tries++) {
    snprintf(p->tmp, tcap, "%s.tmp.%ld.%u", path, (long)getpid(), counter++);
    fd = open(p->tmp, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0666);
    e = errno;
    if (fd < 0 && e != EEXIST) break;
  }
  if (fd < 0) {
    free(p->tmp);
    free(p->path);
    p->tmp = p->path = NULL;
    return fail(ATTN_ERR_IO, err, errlen, "%s: cannot create a temporary file next to it: %s",
                path, strerror(e));
  }
  bool ok = write_all(fd, bytes, len);
  e = errno;
  if (ok && fsync(fd) != 0) {
    ok = false;
    e = errno;
  }
  if (p->fd < 0 && close(fd) != 0 && ok) { /* an O_TMPFILE stays open until commit */
    ok = false;
    e = errno;
  }
  if (!ok) {
    npy_write_abort(p);
    return fail(ATTN_ERR_IO, err, errlen, "%s: cannot write: %s", path, strerror(e));
  }
  return ATTN_OK;
}

attn_status npy_write_commit(npy_pending *p, char *err, size_t errlen) {
  if (!p || !p->path) return fail(ATTN_ERR_INVALID_ARG, err, errlen, "npy_write: nothing pending");
  if (p->fd >= 0) {
    /* Name the unnamed file next to the target, then rename it over the
     * target (linkat cannot replace an existing file). */
    static unsigned counter;
    size_t tcap = strlen(p->path) + 64;
    char fdpath[64];
    snprintf(fdpath, sizeof fdpath, "/proc/self/fd/%d", p->fd);
    int linked = -1, e = 0;
    for (int tries = 0; tries < 100 && linked != 0; tries++) {
      snprintf(p->tmp, tcap, "%s.tmp.%ld.c%u", p->path, (long)getpid(), counter++);
      linked = linkat(AT_FDCWD, fdpath, AT_FDCWD, p->tmp, AT_SYMLINK_FOLLOW);
#ifdef AT_EMPTY_PATH
      if (linked != 0 && errno == ENOENT) /* no /proc: needs CAP_DAC_READ_SEARCH */
        linked = linkat(p->fd, "", AT_FDCWD, p->tmp, AT_EMPTY_PATH);
#endif
      e = errno;
      if (linked != 0 && e != EEXIST) break;
    }
    close(p->fd);
    p->fd = -1;
    if (linked != 0) {
      char *path = strdup(p->path);
      free(p->tmp);
      p->tmp = NULL;
      npy_write_abort(p);
      attn_status s = fail(ATTN_ERR_IO, err, errlen, "%s: cannot write: %s", path ? path : "?",
                           strerror(e));
      free(path);
      return s;
    }
  }
  if (rename(p->tmp, p->path) != 0) {
    int e = errno;
    char *path = strdup(p->path);
    npy_write_abort(p);
    attn_status s = fail(ATTN_ERR_IO, err, errlen, "%s: cannot write: %s", path ? path : "?",
                         strerror(e));
    free(path);
    return s;
  }
  /* Make the rename itself durable; a failure here loses nothing written. */
  char *dir = strdup(p->path);
  if (dir) {
    char *slash = strrchr(dir, '/');
    const char *d = ".";
    if (slash == dir) d = "/";
    else if (slash) {
      *slash = '\0';
      d = dir;
    }
    int dfd = open(d, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (dfd >= 0) {
      fsync(dfd);
      close(dfd);
    }
    free(dir);
  }
  free(p->tmp);
  free(p->path);
  p->tmp = p->path = NULL;
  return ATTN_OK;
}

attn_status npy_write_f32(const char *path, int ndim, const int64_t *shape, const float *data,
                          char *err, size_t errlen) {
  npy_pending p;
  attn_status s = npy_write_prepare(path, ndim, shape, data, &p, err, errlen);
  if (s != ATTN_OK) return s;
  return npy_write_commit(&p, err, errlen);
}

attn_status npy_write_typed(const char *path, npy_dtype dtype, int ndim, const int64_t *shape,
                            const void *data, char *err, size_t errlen) {
  npy_pending p;
  attn_status s = npy_write_prepare_typed(path, dtype, ndim, shape, data, &p, err, errlen);
  if (s != ATTN_OK) return s;
  return npy_write_commit(&p, err, errlen);
}
