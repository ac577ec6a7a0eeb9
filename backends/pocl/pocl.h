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
  int vw;                   /* -DVW of kernels/sdpa.cl and linear.cl: 16 or 8 */
  /* Where each came from: "default", "cache", "env" or "tuned" (vw's
   * default is "device": read off the device, pocl_device_vw). */
  const char *linear_src, *decode_src, *vw_src;
} pocl_params;

/* Built-in default, measured on a 2-core AVX-512 machine (see tune.c, which
 * also holds the linear tiles per vector width). */
#define POCL_DECODE_GROUPS 16

struct attn_backend_ctx {
  clrt_ctx cl; /* first: see clrt.h */
  pocl_params p;
};

/* The vector width sdpa.cl's kernels are built for on this device: 8 where
 * the device's float vectors are narrower than 16 or POCL compiles for a CPU
 * without AVX-512 (its device name "pthread-<LLVM CPU>-..." names it), else
 * 16. */
CLRT_INTERNAL int pocl_device_vw(const clrt_ctx *c);
/* The defaults, then the cache's winners for c's device (if a valid entry
 * exists), then the environment's overrides. Never fails. */
CLRT_INTERNAL void pocl_params_load(clrt_ctx *c, pocl_params *p);
/* The vtable's tune slot. */
CLRT_INTERNAL attn_status pocl_tune(attn_backend_ctx *ctx, unsigned flags,
                                    attn_tune_report *report);
/* Enqueue SDPA through the flash kernel (and the weights pass) of
 * kernels/sdpa.cl built for vector width vw, whatever Sq is (pocl.c). */
CLRT_INTERNAL attn_status pocl_flash_sdpa(clrt_ctx *c, const attn_sdpa_desc *d, int vw);
/* Enqueue the linear stage with an MR x NR tile of vector width vw (pocl.c). */
CLRT_INTERNAL attn_status pocl_linear_tiled(clrt_ctx *c, const attn_linear_desc *d, int mr,
                                            int nr, int vw);

/* Build options naming the storage types of the SDPA operands (-DQT=1 ...,
 * clrt_dtype_option), appended to buf (pocl.c). */
CLRT_INTERNAL void pocl_sdpa_dtype_options(const attn_sdpa_desc *d, char *buf, size_t len);

#endif
