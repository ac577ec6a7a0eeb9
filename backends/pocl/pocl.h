/* The pocl backend's context and its tuning parameters, shared by pocl.c (the
 * slots), decode.c (the decode path) and tune.c (attn_tune). */
#ifndef ATTN_POCL_H
#define ATTN_POCL_H

#include "clrt.h"

/* The parameters attn_tune measures (tune.c). Each is a runtime choice with a
 * small allowed set, every member of which the test suites run with
 * (ATTN_POCL_LINEAR_TILE / ATTN_POCL_DECODE_GROUPS force one). */
typedef struct pocl_params {
  int linear_mr, linear_nr; /* tile of y per work-item of kernels/linear.cl */
  int decode_groups;        /* decode work-groups to aim for per compute unit */
  /* Where each came from: "default", "cache", "env" or "tuned". */
  const char *linear_src, *decode_src;
} pocl_params;

/* Built-in defaults, measured on a 2-core AVX-512 machine (see tune.c). */
#define POCL_LINEAR_MR 8
#define POCL_LINEAR_NR 3
#define POCL_DECODE_GROUPS 16

struct attn_backend_ctx {
  clrt_ctx cl; /* first: see clrt.h */
  pocl_params p;
};

/* The defaults, then the cache's winners for c's device (if a valid entry
 * exists), then the environment's overrides. Never fails. */
CLRT_INTERNAL void pocl_params_load(clrt_ctx *c, pocl_params *p);
/* The vtable's tune slot. */
CLRT_INTERNAL attn_status pocl_tune(attn_backend_ctx *ctx, unsigned flags,
                                    attn_tune_report *report);
/* Enqueue the linear stage with an MR x NR tile (pocl.c). */
CLRT_INTERNAL attn_status pocl_linear_tiled(clrt_ctx *c, const attn_linear_desc *d, int mr,
                                            int nr);

/* Build options naming the storage types of the SDPA operands (-DQT=1 ...,
 * clrt_dtype_option), appended to buf (pocl.c). */
CLRT_INTERNAL void pocl_sdpa_dtype_options(const attn_sdpa_desc *d, char *buf, size_t len);

#endif
