/* A one-head MHA graph (d_model E, head_dim E, bias) on a context, run on
 * random inputs and compared with linear, sdpa, linear composed in double
 * (tu_linear_double, tu_sdpa_double). Exercises the linear stage's k tails
 * and edge tiles; shared by the pocl decode and tuning suites. Fails the
 * current cmocka test on a mismatch, naming `what`. */
#ifndef ATTN_TESTS_ONEHEAD_H
#define ATTN_TESTS_ONEHEAD_H

#include <stdint.h>

#include "attn.h"

void tu_check_one_head_mha(attn_context *ctx, int64_t E, int64_t S, uint64_t seed,
                           const char *what);

#endif
