/* .npy files for the attn command: a strict reader for untrusted input and an
 * atomic writer of float32, float16 and bfloat16 arrays.
 *
 * The reader accepts format versions 1.0, 2.0 and 3.0, C order only, and the
 * dtypes the CLI needs: little-endian float32 ('<f4'), float16 ('<f2'),
 * bfloat16 ('<V2', what numpy.save writes for an ml_dtypes.bfloat16 array),
 * bool ('|b1') and little-endian int32 ('<i4'). Everything else (another
 * descr such as '|V2' raw void bytes, '>f2', '<V4' or '<f8', bad magic, an
 * unknown version, a header that lies about its length or is not padded and
 * terminated, a dict that does not parse, Fortran order, a dtype the caller
 * does not take, a wrong rank, a zero, negative or overflowing dimension,
 * truncated or trailing data) is
 * refused with ATTN_ERR_FORMAT and a message that names the file and says
 * exactly what is wrong. I/O failures give ATTN_ERR_IO.
 *
 * npy_parse() is a pure function of its (buffer, length) so that a fuzzer can
 * call it directly. This module does not use libattn's error state (the test
 * suite links it alone): messages go to the caller's buffer. */
#ifndef ATTN_TOOLS_NPY_H
#define ATTN_TOOLS_NPY_H

#include <stddef.h>
#include <stdint.h>

#include "attn.h"

#define NPY_MAX_DIMS 4

/* dtypes as bits, so a caller can accept several (a mask is bool or float). */
typedef enum npy_dtype {
  NPY_F32 = 1,  /* '<f4' -> float */
  NPY_BOOL = 2, /* '|b1' -> uint8_t, each 0 or 1 */
  NPY_I32 = 4,  /* '<i4' -> int32_t */
  NPY_F16 = 8,  /* '<f2' -> uint16_t IEEE binary16 bit patterns */
  NPY_BF16 = 16 /* '<V2' -> uint16_t bfloat16 bit patterns (ml_dtypes.bfloat16) */
} npy_dtype;

/* Bytes per element of one dtype (4, 1, 4, 2, 2); 0 for anything else. */
size_t npy_dtype_size(npy_dtype t);
/* The descr written in the header: "<f4", "|b1", "<i4", "<f2", "<V2". */
const char *npy_dtype_descr(npy_dtype t);

typedef struct npy_array {
  npy_dtype dtype;
  int ndim;
  int64_t shape[NPY_MAX_DIMS];
  size_t count; /* number of elements (product of shape) */
  void *data;   /* malloc'ed, host byte order; free with npy_free() */
} npy_array;

/* What the caller wants: a set of dtypes (NPY_F32 | NPY_BOOL ...) and a rank
 * range (1 <= min_rank <= max_rank <= 4). */
typedef struct npy_want {
  unsigned dtypes;
  int min_rank, max_rank;
} npy_want;

/* Size of the caller's message buffer that always fits our messages. */
#define NPY_ERR_MAX 512

/* Parse a whole .npy image. name is used only in messages (e.g. the path).
 * On success fills *out (free with npy_free) and returns ATTN_OK; on failure
 * *out is zeroed and err receives one line. */
attn_status npy_parse(const void *buf, size_t len, const char *name, const npy_want *want,
                      npy_array *out, char *err, size_t errlen);

/* Read and parse a file. */
attn_status npy_read_file(const char *path, const npy_want *want, npy_array *out, char *err,
                          size_t errlen);

void npy_free(npy_array *a);

/* Encode a C-order array as a version 1.0 .npy image (header padded to 64
 * bytes as numpy does). *buf is malloc'ed. npy_encode takes any dtype: data
 * holds count elements of it in host order (uint16_t bit patterns for NPY_F16
 * and NPY_BF16, which are written as '<f2' and '<V2'). */
attn_status npy_encode(npy_dtype dtype, int ndim, const int64_t *shape, const void *data,
                       void **buf, size_t *len, char *err, size_t errlen);
attn_status npy_encode_f32(int ndim, const int64_t *shape, const float *data, void **buf,
                           size_t *len, char *err, size_t errlen);

/* Atomic writes: the data goes to a temporary file next to path, is fsync'ed,
 * and only then renamed over path. prepare() writes the temporary file;
 * commit() renames it; abort() removes it. A failure at any step removes the
 * temporary file, so a failed run leaves neither a partial nor a stale file.
 * Preparing every output before committing any lets the CLI write several
 * outputs all or nothing (up to the renames themselves). */
typedef struct npy_pending {
  char *tmp;  /* malloc'ed temporary path (named only at commit when fd >= 0) */
  char *path; /* malloc'ed final path; NULL when nothing is pending */
  int fd;     /* an unnamed O_TMPFILE holding the bytes, or -1 */
} npy_pending;

attn_status npy_write_prepare(const char *path, int ndim, const int64_t *shape, const float *data,
                              npy_pending *p, char *err, size_t errlen);
/* The same of any dtype, data as for npy_encode. */
attn_status npy_write_prepare_typed(const char *path, npy_dtype dtype, int ndim,
                                    const int64_t *shape, const void *data, npy_pending *p,
                                    char *err, size_t errlen);
attn_status npy_write_commit(npy_pending *p, char *err, size_t errlen);
void npy_write_abort(npy_pending *p);

/* The same for any bytes (npy_write_prepare encodes, then calls this). */
attn_status file_write_prepare(const char *path, const void *bytes, size_t len, npy_pending *p,
                               char *err, size_t errlen);

/* prepare + commit */
attn_status npy_write_f32(const char *path, int ndim, const int64_t *shape, const float *data,
                          char *err, size_t errlen);
attn_status npy_write_typed(const char *path, npy_dtype dtype, int ndim, const int64_t *shape,
                            const void *data, char *err, size_t errlen);

#endif
