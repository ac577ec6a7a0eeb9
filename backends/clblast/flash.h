/* The clblast backend's fused SDPA path (flash.c, kernels/gpu_flash.cl): one
 * flash-attention kernel for OpenCL GPUs, with a split-key variant for
 * decoding and a second pass for the weights. clblast.c's sdpa slot runs it
 * on GPU devices and keeps the CLBlast-GEMM path for the rest (see
 * clb_flash_default there); ATTN_CLBLAST_SDPA=fused or =gemm forces one.
 *
 * The tiles are build options chosen per device at context open from its
 * local memory, maximum work-group size and compute units
 * (clb_flash_params_init), or those `attn tune` measured best and stored in
 * the cache (tune.c); ATTN_CLBLAST_FLASH="NT,BQ,BK,DC" overrides both
 * (tests), ATTN_CLBLAST_FLASH_SPLIT=N forces N key chunks. */
#ifndef ATTN_CLBLAST_FLASH_H
#define ATTN_CLBLAST_FLASH_H

#include "clrt.h"

typedef struct clb_flash_params {
  int nt;      /* work-items per work-group */
  int bq;      /* query rows per work-group */
  int bk;      /* keys per tile */
  int dc;      /* largest head-dim chunk staged in local memory */
  int cus;     /* compute units (split-key decoding aims at 2 groups per unit) */
  size_t local; /* CL_DEVICE_LOCAL_MEM_SIZE */
  bool exact;  /* tiles given by ATTN_CLBLAST_FLASH: used as they are */
  char src[16]; /* where the tiles come from: default, cache, env, tuned */
  bool usable; /* the device can run the kernel at all (work-group size, local memory) */
} clb_flash_params;

/* Tiles for c's device, with ATTN_CLBLAST_FLASH applied. */
CLRT_INTERNAL void clb_flash_params_init(clrt_ctx *c, clb_flash_params *p);
/* Can c's device run p's tiles (work-group size, local memory)? */
CLRT_INTERNAL bool clb_flash_tiles_usable(const clrt_ctx *c, const clb_flash_params *p);
/* attn_tune's slot: time candidate tiles (tune.c), keep and store the best;
 * ATTN_TUNE_SHOW reports the tiles in use and their source. */
CLRT_INTERNAL attn_status clb_flash_tune(clrt_ctx *c, clb_flash_params *p, unsigned flags,
                                         attn_tune_report *r);
/* The cache key of the tuned tiles (device, driver, kernel source). */
CLRT_INTERNAL void clb_tune_key(const clrt_ctx *c, char *key, size_t len);
/* Local memory bytes of one work-group at these tiles and head-dim chunk. */
CLRT_INTERNAL size_t clb_flash_local_bytes(int nt, int bq, int bk, int dc);
/* Enqueue d on c's queue (every SDPA feature, every dtype); may return
 * before it completes. */
CLRT_INTERNAL attn_status clb_flash_sdpa(clrt_ctx *c, const clb_flash_params *p,
                                         const attn_sdpa_desc *d);

#endif
