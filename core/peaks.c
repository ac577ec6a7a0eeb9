/* attn_device_peaks_get: the device's own measured fp32 FMA rate and copy
 * bandwidth, from the backend's optional peaks slot (ABI 1.1). The backend
 * measures (clpeak style) and caches; the core only checks and forwards, and
 * refuses figures that could not be a measurement so that callers dividing by
 * them (attn bench's fraction of peak) never see 0, NaN or infinity. */
#include "internal.h"

#include <math.h>

attn_status attn_device_peaks_get(attn_context *ctx, bool refresh, attn_device_peaks *p) {
  ATTN_ENTER("attn_device_peaks_get");
  if (!ctx) return attn__error(ATTN_ERR_INVALID_ARG, "ctx: is NULL");
  if (!p) return attn__error(ATTN_ERR_INVALID_ARG, "p: is NULL");
  if (!ATTN_VT_HAS(ctx->vt, peaks))
    return attn__error(ATTN_ERR_UNSUPPORTED, "%s: backend %s cannot measure its peaks",
                       ctx->info.selector, ctx->info.backend);
  double gflops = 0, gbps = 0;
  attn_status s = ctx->vt->peaks(ctx->bctx, refresh, &gflops, &gbps);
  if (s != ATTN_OK) {
    if (!attn_last_error()[0])
      attn__error(s, "%s: peaks measurement failed (%s)", ctx->info.selector, attn_status_str(s));
    return s;
  }
  if (!(isfinite(gflops) && gflops > 0 && isfinite(gbps) && gbps > 0))
    return attn__error(ATTN_ERR_BACKEND,
                       "%s: backend %s measured implausible peaks (%g GFLOP/s, %g GB/s)",
                       ctx->info.selector, ctx->info.backend, gflops, gbps);
  p->gflops = gflops;
  p->gbps = gbps;
  return ATTN_OK;
}
