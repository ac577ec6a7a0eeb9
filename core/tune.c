/* attn_tune: the backend's tuning parameters measured on this device, from
 * the backend's optional tune slot (ABI 1.2). The backend knows its
 * parameters, measures and caches them; the core checks the arguments and
 * that the report it hands back is well formed, so that callers printing it
 * (attn tune) can trust its counts and strings. */
#include "internal.h"

#include <math.h>
#include <string.h>

attn_status attn_tune(attn_context *ctx, unsigned flags, attn_tune_report *report) {
  ATTN_ENTER("attn_tune");
  if (!ctx) return attn__error(ATTN_ERR_INVALID_ARG, "ctx: is NULL");
  if (!report) return attn__error(ATTN_ERR_INVALID_ARG, "report: is NULL");
  if (flags & ~(ATTN_TUNE_QUICK | ATTN_TUNE_SHOW))
    return attn__error(ATTN_ERR_INVALID_ARG, "flags: unknown bits 0x%x",
                       flags & ~(ATTN_TUNE_QUICK | ATTN_TUNE_SHOW));
  memset(report, 0, sizeof *report);
  if (!ATTN_VT_HAS(ctx->vt, tune))
    return attn__error(ATTN_ERR_UNSUPPORTED, "%s: backend %s has no tuning parameters",
                       ctx->info.selector, ctx->info.backend);
  attn_status s = ctx->vt->tune(ctx->bctx, flags, report);
  if (s != ATTN_OK) {
    if (!attn_last_error()[0])
      attn__error(s, "%s: tuning failed (%s)", ctx->info.selector, attn_status_str(s));
    memset(report, 0, sizeof *report);
    return s;
  }
  if (report->n < 0 || report->n > ATTN_TUNE_MAX_ROWS) {
    int n = report->n;
    memset(report, 0, sizeof *report);
    return attn__error(ATTN_ERR_BACKEND, "%s: backend %s reported %d tuning rows (0 to %d)",
                       ctx->info.selector, ctx->info.backend, n, ATTN_TUNE_MAX_ROWS);
  }
  /* Strings always terminated, times finite and not negative. */
  for (int i = 0; i < report->n; i++) {
    attn_tune_row *r = &report->row[i];
    r->param[sizeof r->param - 1] = r->value[sizeof r->value - 1] = '\0';
    r->shape[sizeof r->shape - 1] = r->source[sizeof r->source - 1] = '\0';
    if (!(isfinite(r->median_ms) && r->median_ms >= 0)) r->median_ms = 0;
  }
  return ATTN_OK;
}
