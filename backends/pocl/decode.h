/* The pocl backend's decode path (decode.c, kernels/decode.cl): SDPA for few
 * query rows over a long KV cache, keys split across work-groups. pocl.c's
 * sdpa slot asks pocl_decode_wants() first and falls back to the fused flash
 * kernel (kernels/sdpa.cl) for everything else.
 *
 * ATTN_POCL_DECODE=0 never takes the decode path, =1 takes it for every
 * problem it can handle (the tests use this to run whole suites through it);
 * unset, it takes it where it measured faster (few query rows, see decode.c). */
#ifndef ATTN_POCL_DECODE_H
#define ATTN_POCL_DECODE_H

#include "clrt.h"

/* True if the decode path should run d (shapes and strides it handles, and
 * the environment's choice). */
CLRT_INTERNAL bool pocl_decode_wants(const attn_sdpa_desc *d);
/* Enqueue d (pocl_decode_wants(d) true) on c's queue, the keys split into
 * about groups_per_cu work-groups per compute unit (a tuning parameter, see
 * pocl.h); may return before it completes. */
CLRT_INTERNAL attn_status pocl_decode_sdpa(clrt_ctx *c, const attn_sdpa_desc *d,
                                           int groups_per_cu);

#endif
