/* Hugging Face checkpoints for the attn command: a strict reader of
 * .safetensors files (one, or a sharded set with its index) and of the JSON
 * files beside them (config.json), for untrusted input.
 *
 * A checkpoint is opened from
 *   - a directory holding model.safetensors, or, when there is none,
 *     model.safetensors.index.json (its "weight_map" names, for each tensor,
 *     the shard file in the same directory that holds it: a plain file name,
 *     never one with a '/', "." or ".."), as transformers looks for them; or
 *   - a single .safetensors file.
 * Every file's header is read and checked when the checkpoint is opened; the
 * tensors' data is read only when asked for, one tensor at a time.
 *
 * The format (huggingface/safetensors): an 8-byte little-endian header length
 * N (at most 100,000,000), N bytes of UTF-8 JSON, then the data section. The
 * JSON is an object: "__metadata__" (optional) maps names to strings; every
 * other key names a tensor: {"dtype": "F32", "shape": [2, 3],
 * "data_offsets": [begin, end]}, offsets relative to the data section, C order,
 * little-endian. As in the reference implementation, the tensors must cover
 * the data section exactly: each one starts where the previous one (by
 * offset) ends, and the last one ends at the end of the file. Refused, with
 * ATTN_ERR_FORMAT and a message naming the file and the tensor or key: a
 * truncated file, a header longer than the file or the limit, a header that
 * is not valid UTF-8 or JSON or holds a NUL, an entry with a missing,
 * mistyped, duplicated or unknown field, an unknown dtype, a negative or
 * non-integer dimension, a shape whose element or byte count overflows or is
 * not end - begin, offsets that run backwards or past the data, tensors that
 * overlap or leave a gap or trailing bytes, a duplicated tensor name, a
 * "__metadata__" that is not an object of strings. Two of these are
 * stricter than the reference, which takes one of two duplicated keys and
 * ignores unknown fields. One is looser: the JSON library does not tell 1
 * from 1.0, so a shape or offset may be any JSON number whose value is an
 * integer up to 2^53.
 *
 * Every dtype of the format is accepted in a header; only st_read_f32 (F32,
 * F16 and BF16) looks at what a tensor holds, so tensors a caller does not
 * use (an I64 position_ids buffer, say) may have any of them.
 *
 * Messages go to the caller's buffer, one line, as in npy.h; this module does
 * not use libattn's error state. I/O failures give ATTN_ERR_IO, exhausted
 * memory ATTN_ERR_NOMEM (parsing JSON takes about 40 times its size at worst,
 * a header of tiny values). No function leaks on any path. */
#ifndef ATTN_TOOLS_SAFETENSORS_H
#define ATTN_TOOLS_SAFETENSORS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "attn.h"

/* Size of the caller's message buffer that always fits our messages (file
 * names and tensor names in messages are shortened to fit). */
#define ST_ERR_MAX 1024

/* The format's limit on the header length N. */
#define ST_MAX_HEADER 100000000u

/* The dtypes of the format (those of safetensors 0.8). */
typedef enum st_dtype {
  ST_BOOL,
  ST_U8,
  ST_I8,
  ST_F8_E5M2,
  ST_F8_E4M3,
  ST_F8_E8M0,
  ST_F8_E4M3FNUZ,
  ST_F8_E5M2FNUZ,
  ST_F4,      /* 4 bits: two elements a byte */
  ST_F6_E2M3, /* 6 bits: four elements in three bytes */
  ST_F6_E3M2,
  ST_I16,
  ST_U16,
  ST_F16,
  ST_BF16,
  ST_I32,
  ST_U32,
  ST_F32,
  ST_F64,
  ST_C64,
  ST_I64,
  ST_U64,
  ST_NDTYPES
} st_dtype;

/* "F32", "BF16", ...; "?" outside the enum. */
const char *st_dtype_name(st_dtype t);
/* Bits per element (1 to 64); 0 outside the enum. */
unsigned st_dtype_bits(st_dtype t);

/* One tensor of a header. Everything it points to lives as long as the
 * header (or checkpoint) it came from. */
typedef struct st_tensor {
  const char *name;
  st_dtype dtype;
  int ndim;             /* 0 for a scalar */
  const int64_t *shape; /* ndim entries, each >= 0 */
  uint64_t count;       /* elements: the product of shape (1 for a scalar) */
  uint64_t nbytes;      /* end - begin */
  uint64_t begin, end;  /* data_offsets: relative to the data section */
  uint64_t offset;      /* where the data starts in the file: 8 + N + begin */
  const char *file;     /* the file that holds it, as named when opened */
} st_tensor;

/* ---- one header, parsed from memory ------------------------------------------ */

typedef struct st_header st_header;

/* Parse the header at the start of buf: the 8-byte length N, then N bytes of
 * JSON. buf holds the first len bytes of a file of file_size bytes (len <=
 * file_size; len >= 8 + N for the header to be seen whole, else it is
 * refused as truncated); the data section is the file's bytes after the
 * header, and the tensors are checked against its size. name is used only in
 * messages (the path). On success *out holds the tensors (free with
 * st_header_free); on failure *out is NULL and err receives one line. Pure:
 * a fuzzer calls it with file_size == len. */
attn_status st_header_parse(const void *buf, size_t len, uint64_t file_size, const char *name,
                            st_header **out, char *err, size_t errlen);
void st_header_free(st_header *h);
/* The tensors in name order (strcmp); i < st_header_count(h). */
size_t st_header_count(const st_header *h);
const st_tensor *st_header_tensor(const st_header *h, size_t i);
/* The tensor of that name, or NULL. */
const st_tensor *st_header_find(const st_header *h, const char *name);
/* The "__metadata__" value of key, or NULL (no such key or no metadata). */
const char *st_header_metadata(const st_header *h, const char *key);

/* ---- a checkpoint ---------------------------------------------------------------- */

typedef struct st_checkpoint st_checkpoint;

/* Open a checkpoint (see the top of this file). A sharded checkpoint's index
 * must be a JSON object whose "weight_map" is an object of file names; every
 * shard it names is opened and its header checked, and every tensor it names
 * must be in its shard ("index.json: tensor 'x' is not in shard 'y'"). Tensors
 * a shard holds that the index does not name are not part of the checkpoint.
 * Only regular files are read (a FIFO or a device is refused, never waited
 * on); a file is kept open until st_close. */
attn_status st_open(const char *path, st_checkpoint **out, char *err, size_t errlen);
void st_close(st_checkpoint *ck);

/* The directory of the checkpoint (PATH itself, or the directory of a single
 * file): where config.json is. */
const char *st_dir(const st_checkpoint *ck);
/* The tensors in name order; i < st_count(ck). */
size_t st_count(const st_checkpoint *ck);
const st_tensor *st_at(const st_checkpoint *ck, size_t i);
/* The tensor of that name, or NULL. */
const st_tensor *st_find(const st_checkpoint *ck, const char *name);
/* The same, a missing tensor being an error that names it (ATTN_ERR_FORMAT). */
attn_status st_get(const st_checkpoint *ck, const char *name, const st_tensor **t, char *err,
                   size_t errlen);

/* The bytes of a tensor as stored (little-endian), in a malloc'ed buffer of
 * nbytes bytes (at least 1) that the caller frees. The data is read with
 * pread, not mapped: a file that shrinks or is rewritten while the
 * checkpoint is open gives an error (ATTN_ERR_IO), never a SIGBUS, and a
 * caller holds only the tensors it asked for. t (may be NULL) receives the
 * tensor. */
attn_status st_read_raw(const st_checkpoint *ck, const char *name, void **data,
                        const st_tensor **t, char *err, size_t errlen);

/* A tensor as float32 (host order), converted exactly from F32, F16 or BF16;
 * any other dtype is refused naming the tensor and its dtype. With shape
 * non-NULL, the tensor must have rank ndim and that shape (the message names
 * both shapes). *data is malloc'ed (count floats, at least 1 byte); t (may be
 * NULL) receives the tensor. */
attn_status st_read_f32(const st_checkpoint *ck, const char *name, int ndim,
                        const int64_t *shape, float **data, const st_tensor **t, char *err,
                        size_t errlen);

/* ---- JSON files: config.json ------------------------------------------------------- */

/* A JSON document whose top level is an object, loaded with the same checks
 * as a header (UTF-8, no NUL, no duplicated key in any object). */
typedef struct st_config st_config;

/* The largest JSON file st_config_load reads. */
#define ST_CONFIG_MAX ((size_t)16 << 20)

/* Load a JSON file (a regular file of at most ST_CONFIG_MAX bytes). */
attn_status st_config_load(const char *path, st_config **out, char *err, size_t errlen);
/* The same from memory; name is used only in messages. */
attn_status st_config_parse(const void *buf, size_t len, const char *name, st_config **out,
                            char *err, size_t errlen);
void st_config_free(st_config *c);

/* A value inside a loaded document: its top-level object, a member, an array
 * element. It points into the document (valid until st_config_free) and
 * carries its path for messages ("rope_scaling.factor", "layer_types[3]"). */
#define ST_JSON_PATH 128
typedef struct st_json {
  const void *node; /* the library's value (internal) */
  const char *file; /* the document's name */
  char path[ST_JSON_PATH];
} st_json;

/* The top-level object. */
void st_config_root(const st_config *c, st_json *root);

/* Typed getters. Each reads member key of the object obj, or obj itself when
 * key is NULL (an array element from st_json_at, say).
 *   present, of the type:  ATTN_OK, *out set, *found = true;
 *   absent or null:        with found non-NULL, ATTN_OK, *found = false and
 *                          *out left as it was (set a default first); with
 *                          found NULL the value is required: ATTN_ERR_FORMAT,
 *                          "file: no 'key'" or "file: 'key' is null";
 *   of another type:       ATTN_ERR_FORMAT, "file: 'key' is a string;
 *                          expected an integer" (found or not).
 * An integer is a number whose value is an integer of magnitude at most 2^53
 * (10, 1e3 and 10.0 all are). A string is UTF-8 without NUL. */
attn_status st_json_int(const st_json *obj, const char *key, int64_t *out, bool *found, char *err,
                        size_t errlen);
attn_status st_json_number(const st_json *obj, const char *key, double *out, bool *found,
                           char *err, size_t errlen);
attn_status st_json_bool(const st_json *obj, const char *key, bool *out, bool *found, char *err,
                         size_t errlen);
attn_status st_json_string(const st_json *obj, const char *key, const char **out, bool *found,
                           char *err, size_t errlen);
attn_status st_json_object(const st_json *obj, const char *key, st_json *out, bool *found,
                           char *err, size_t errlen);
/* An array: *out is the array and *len its number of elements. */
attn_status st_json_array(const st_json *obj, const char *key, st_json *out, size_t *len,
                          bool *found, char *err, size_t errlen);
/* Element i of an array (i < its length, else ATTN_ERR_INVALID_ARG). */
attn_status st_json_at(const st_json *arr, size_t i, st_json *out, char *err, size_t errlen);

#endif
