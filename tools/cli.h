/* Helpers shared by the attn command's subcommands (tools/attn.c dispatches to
 * tools/cmd_*.c, tools/bench.c and tools/tune.c): the one-line error messages
 * and what more than one command needs (option parsing, dims formatting,
 * clocks, medians, the flop formulas, .npy inputs and outputs, --check). */
#ifndef ATTN_TOOLS_CLI_H
#define ATTN_TOOLS_CLI_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#include "attn.h"
#include "npy.h"

/* Exit status of every command: 0 success, these on failure. */
#define EXIT_FAIL 1
#define EXIT_USAGE 2

/* The running subcommand ("run", "bench", ...), named in every message; NULL
 * before one is chosen. */
extern const char *cli_cmd;

/* One line on stderr: "attn: <cmd>: <message>", newlines in the message (a
 * library message listing devices, say) folded into "; ". */
void cli_errline(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

/* A failed libattn call: prints its thread-local message (it names the
 * function and the argument) after `where` (which part of the run, e.g.
 * "--check"; NULL or "" for none). Returns EXIT_FAIL. */
int cli_lib_fail(attn_status s, const char *where);

/* A usage error, pointing at the command's --help. Returns EXIT_USAGE. */
int cli_usage_fail(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

/* ---- options ---------------------------------------------------------------- */

/* An integer option in [min, max]; max == INT64_MAX means no upper bound
 * ("'x' is not an integer >= min"), else "'x' is not an integer in [min, max]".
 * On a bad value prints the usage error and returns false. */
bool cli_parse_int(const char *opt, const char *s, int64_t min, int64_t max, int64_t *out);
/* A finite float option. */
bool cli_parse_float(const char *opt, const char *s, float *out);

/* ---- shapes, clocks, statistics, rates ------------------------------------------ */

/* Product of dims as an element count whose float bytes fit in size_t; -1 if
 * a dim is < 1 or the count overflows. */
int64_t cli_numel(int n, const int64_t *dims);
/* "[2, 3, 4]" */
void cli_dims_fmt(char *buf, size_t cap, int n, const int64_t *dims);

/* Monotonic wall clock in milliseconds, for timing runs. */
double cli_now_ms(void);
/* The median of n > 0 values; sorts v. */
double cli_median(double *v, int n);

/* Flops of attention: 4*B*Hq*Sq*Skv*D, halved when causal with Sq == Skv. */
double cli_sdpa_flops(int64_t B, int64_t Hq, int64_t Sq, int64_t Skv, int64_t D, bool causal);
/* Flops of MHA's projections: q and out (E <-> Hq*D over B*Sq rows), k and v
 * (Ekv -> Hkv*D over B*Skv rows), 2 per multiply-add. */
double cli_proj_flops(int64_t B, int64_t Sq, int64_t Skv, int64_t E, int64_t Ekv, int64_t Hq,
                      int64_t Hkv, int64_t D);

/* ---- data ------------------------------------------------------------------------- */

/* n floats uniform in [-1, 1) from a xorshift64* state (deterministic for a
 * seed on every platform), malloc'ed; NULL when out of memory. */
float *cli_random_floats(int64_t n, uint64_t *state);

/* Host buffer for n floats of a tensor of this shape, or NULL with a message
 * naming what. */
float *cli_alloc_floats(int n, const int64_t *shape, const char *what);
/* Before any work: would the host copies a command keeps (host_bytes) and the
 * tensors it puts on ctx's device (device_bytes) fit in the host's physical
 * memory? A CPU device's memory is host memory, so there both count. If not,
 * print one line naming what (the command), the sizes and the memory, and
 * return false: the run is refused up front rather than killed by the OOM
 * killer half way (the library refuses the device side on its own). */
bool cli_fits_host(attn_context *ctx, uint64_t host_bytes, uint64_t device_bytes,
                   const char *what);

/* Read a .npy file given to option opt (dtypes: NPY_* bits); on failure prints
 * "opt: <the reader's message>" and returns false. */
bool cli_load_npy(const char *opt, const char *path, unsigned dtypes, int min_rank, int max_rank,
                  npy_array *a);

/* "device: SEL (backend B, TYPE, NAME)" on stdout. */
void cli_print_device(attn_context *ctx);

/* ---- element types ----------------------------------------------------------------- */

/* A --dtype style option: f32, f16 or bf16 (also float32, float16, bfloat16).
 * On a bad value prints the usage error and returns false. */
bool cli_parse_dtype(const char *opt, const char *s, attn_dtype *t);

/* Do two output paths name the same directory entry, however spelled
 * ("b.npy", "./b.npy", "d/../b.npy", a symlinked directory)? Outputs are
 * written to a temporary file renamed onto the path, so the entry, not the
 * file it may already be (a hard link, a symlink's target), is what two
 * outputs must not share. */
bool cli_same_output(const char *a, const char *b);
/* The .npy dtype of a tensor type ('<f4', '<f2', '<V2') and back; an npy
 * dtype that is not a float type maps to ATTN_F32. */
npy_dtype cli_npy_dtype(attn_dtype t);
attn_dtype cli_attn_dtype(npy_dtype t);
/* n elements of type t (float, or uint16_t bit patterns) as floats, exactly;
 * malloc'ed; NULL when out of memory, with a message naming what (none if
 * what is NULL). */
float *cli_to_floats(attn_dtype t, const void *data, size_t n, const char *what);

/* Host data headed for a tensor: n elements of src (float for ATTN_F32,
 * uint16_t bit patterns for the 16-bit types) in row-major order of shape,
 * stored as dtype: copied as they are when src == dtype, else converted by
 * libattn (attn_tensor_write: round to nearest even). */
typedef struct cli_input {
  attn_dtype src, dtype;
  int ndim;
  int64_t shape[4];
  const void *data;
} cli_input;

/* A new tensor on ctx of in->dtype holding in's data; *t is NULL on failure. */
attn_status cli_upload_input(attn_context *ctx, const cli_input *in, attn_tensor **t);
/* The elements a tensor stores, read back as they are (its own type):
 * *in describes them (src == dtype), in->data malloc'ed (free it). --check
 * uploads these to ref, so that both backends see the same rounded values. */
attn_status cli_read_back(const attn_tensor *t, cli_input *in);

/* ---- --check and outputs ---------------------------------------------------------- */

/* --check: every output must satisfy max|got - ref| <= CLI_CHECK_ATOL +
 * CLI_CHECK_RTOL * max|ref| (relative to the size of the values, as fp32
 * against the double-accumulating ref backend allows). */
#define CLI_CHECK_ATOL 1e-5
#define CLI_CHECK_RTOL 1e-4

/* The relative rounding of an output of type t that --check allows on top:
 * one unit in the last place (2^-7 bf16, 2^-10 f16, 0 f32), since the two
 * backends' results may round to neighbouring 16-bit values. */
double cli_dtype_rtol(attn_dtype t);

/* Compare got with ref (from the ref backend): max abs error and that error
 * relative to max|ref|. Equal infinities (an LSE of -inf) count as equal; a
 * NaN or a mismatched infinity is an infinite error. Prints one line; returns
 * true if within the tolerance, widened by extra_rtol * max|ref| (the rounding
 * of a 16-bit output). */
bool cli_check_close(const char *what, const float *got, const float *ref, size_t n,
                     double extra_rtol);

/* An output file: data holds the elements of dtype (float for NPY_F32,
 * uint16_t bit patterns for NPY_F16 / NPY_BF16). path NULL: not wanted. */
typedef struct cli_out_file {
  const char *path;
  npy_dtype dtype;
  int ndim;
  int64_t shape[4];
  const void *data;
} cli_out_file;

/* Outputs written all or nothing: every file is prepared (a temporary next to
 * it, fsync'ed) before any is renamed into place. At most 4. Returns 0 or
 * EXIT_FAIL with the message printed. */
int cli_write_outputs(const cli_out_file *f, int n);

#endif /* ATTN_TOOLS_CLI_H */
