/* Fuzzes the .npy reader's buffer parser (tools/npy.c), which the attn
 * command runs on files it did not write. Beyond "no crash, no leak, no
 * over-read", every answer must be self-consistent: a success describes
 * exactly the bytes given, a failure leaves *out zeroed and says why. */
#include <string.h>

#include "fuzz.h"
#include "npy.h"

int LLVMFuzzerInitialize(int *argc, char ***argv) {
  (void)argc;
  (void)argv;
  return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  /* The wants the CLI uses (q/k/v, a mask, kv lengths, mha inputs and
   * weights), so rank and dtype refusals are reached. */
  static const npy_want wants[] = {{NPY_F32 | NPY_F16 | NPY_BF16, 4, 4},
                                   {NPY_F32 | NPY_F16 | NPY_BOOL, 1, 4},
                                   {NPY_I32, 1, 1},
                                   {NPY_F32 | NPY_F16 | NPY_BF16, 1, 3}};
  for (size_t w = 0; w < sizeof wants / sizeof wants[0]; w++) {
    npy_array a;
    memset(&a, 0xA5, sizeof a); /* garbage in: the parser must set every field */
    char err[NPY_ERR_MAX];
    memset(err, 0x5A, sizeof err);
    attn_status s = npy_parse(data, size, "fuzz.npy", &wants[w], &a, err, sizeof err);
    if (s == ATTN_OK) {
      FUZZ_CHECK(a.dtype & wants[w].dtypes, "dtype %d not wanted", (int)a.dtype);
      FUZZ_CHECK(a.ndim >= wants[w].min_rank && a.ndim <= wants[w].max_rank, "rank %d", a.ndim);
      size_t n = 1;
      for (int i = 0; i < a.ndim; i++) {
        FUZZ_CHECK(a.shape[i] >= 1, "shape[%d] = %lld", i, (long long)a.shape[i]);
        n *= (size_t)a.shape[i];
      }
      FUZZ_CHECK(n == a.count, "count %zu != product of shape %zu", a.count, n);
      FUZZ_CHECK(a.data != NULL, "no data");
      /* The payload is the file's tail: it cannot be larger than the input. */
      FUZZ_CHECK(a.count * npy_dtype_size(a.dtype) <= size, "%zu elements from %zu bytes", a.count,
                 size);
      if (a.dtype == NPY_BOOL)
        for (size_t i = 0; i < a.count; i++)
          FUZZ_CHECK(((const uint8_t *)a.data)[i] <= 1, "bool element %zu is %u", i,
                     ((const uint8_t *)a.data)[i]);
      /* Touch every byte so that a short allocation is an ASan report. */
      volatile uint8_t sum = 0;
      for (size_t i = 0; i < a.count * npy_dtype_size(a.dtype); i++)
        sum ^= ((const uint8_t *)a.data)[i];
      (void)sum;
      {
        /* What we accept, we write back the same, bit for bit (NaN payloads
         * of the 16-bit types included): encode and parse again. */
        void *img = NULL;
        size_t len = 0;
        FUZZ_CHECK(npy_encode(a.dtype, a.ndim, a.shape, a.data, &img, &len, err, sizeof err) ==
                       ATTN_OK,
                   "cannot encode what was parsed: %s", err);
        const npy_want any = {a.dtype, 1, NPY_MAX_DIMS};
        npy_array b;
        FUZZ_CHECK(npy_parse(img, len, "again.npy", &any, &b, err, sizeof err) == ATTN_OK,
                   "our own encoding is refused: %s", err);
        FUZZ_CHECK(b.dtype == a.dtype && b.ndim == a.ndim && b.count == a.count &&
                       memcmp(b.shape, a.shape, (size_t)a.ndim * sizeof a.shape[0]) == 0 &&
                       memcmp(b.data, a.data, a.count * npy_dtype_size(a.dtype)) == 0,
                   "the round trip changed the array");
        npy_free(&b);
        free(img);
      }
      npy_free(&a);
    } else {
      FUZZ_CHECK(s == ATTN_ERR_FORMAT, "status %d, want ATTN_ERR_FORMAT: %.*s", (int)s,
                 (int)sizeof err, err);
      FUZZ_CHECK(memchr(err, '\0', sizeof err) != NULL, "message not terminated");
      FUZZ_CHECK(err[0] != '\0', "empty message");
      FUZZ_CHECK(strstr(err, "fuzz.npy") != NULL, "message does not name the file: %s", err);
      FUZZ_CHECK(a.data == NULL && a.count == 0 && a.ndim == 0, "*out not zeroed on failure");
    }
  }
  return 0;
}
