/* attn_tune for the clblast backend: the fused kernel's tiles (flash.h),
 * measured on the device and kept in the cache (backends/opencl/tune.c).
 *
 *   flash_tiles  NT,BQ,BK,DC of kernels/gpu_flash.cl, timed on a prefill
 *                (B=1, H=8, S=2048, D=128; quick: S=512, D=64) through the
 *                fused path. Each candidate is its own program build.
 *
 * The candidates are the default and its neighbours, those the device can
 * run (work-group size, local memory); ATTN_CLBLAST_FLASH=NT,BQ,BK,DC forces
 * tiles (flash.c). CLBlast's own GEMM parameters come from its database and
 * are not tuned here. Each candidate runs once untimed (the build, first
 * touches), then `runs` times with a clFinish after each; the smallest
 * median wins. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "flash.h"

static const int cand[][4] = {
    {256, 32, 32, 64}, {128, 32, 32, 64}, {256, 32, 64, 64}, {256, 32, 32, 32}, {64, 32, 16, 16}};
#define NCAND (int)(sizeof cand / sizeof cand[0])
#define NCAND_QUICK 3

static const char *const tuned_kernels[] = {"gpu_flash"};

void clb_tune_key(const clrt_ctx *c, char *key, size_t len) {
  clrt_tune_key(c, "clblast", tuned_kernels, 1, key, len);
}

static attn_tune_row *add_row(attn_tune_report *r, const char *shape) {
  if (r->n >= ATTN_TUNE_MAX_ROWS) return NULL;
  attn_tune_row *row = &r->row[r->n++];
  snprintf(row->param, sizeof row->param, "flash_tiles");
  snprintf(row->shape, sizeof row->shape, "%s", shape);
  snprintf(row->source, sizeof row->source, "measured");
  return row;
}

attn_status clb_flash_tune(clrt_ctx *c, clb_flash_params *p, unsigned flags,
                           attn_tune_report *r) {
  if (flags & ATTN_TUNE_SHOW) {
    attn_tune_row *row = add_row(r, "");
    snprintf(row->value, sizeof row->value, "%d,%d,%d,%d", p->nt, p->bq, p->bk, p->dc);
    snprintf(row->source, sizeof row->source, "%s", p->src);
    row->chosen = true;
    return ATTN_OK;
  }
  const bool quick = flags & ATTN_TUNE_QUICK;
  const int runs = quick ? 3 : 7;
  const int64_t H = 8, S = quick ? 512 : 2048, D = quick ? 64 : 128;
  clrt_tune_sdpa prob;
  attn_status s = clrt_tune_sdpa_init(c, H, H, S, S, D, &prob);
  if (s != ATTN_OK) return s;
  const attn_sdpa_desc d = prob.d;
  char shape[64];
  snprintf(shape, sizeof shape, "B=1 H=%lld S=%lld D=%lld", (long long)H, (long long)S,
           (long long)D);
  double best = 0;
  int bi = -1;
  const int first = r->n;
  for (int i = 0; s == ATTN_OK && i < (quick ? NCAND_QUICK : NCAND); i++) {
    clb_flash_params t = *p;
    t.nt = cand[i][0], t.bq = cand[i][1], t.bk = cand[i][2], t.dc = cand[i][3];
    if (!clb_flash_tiles_usable(c, &t)) continue;
    double tm[16];
    s = clb_flash_sdpa(c, &t, &d);
    if (s == ATTN_OK) s = clrt_finish(c);
    for (int j = 0; j < runs && s == ATTN_OK; j++) {
      const double t0 = clrt_now_ms();
      s = clb_flash_sdpa(c, &t, &d);
      if (s == ATTN_OK) s = clrt_finish(c);
      tm[j] = clrt_now_ms() - t0;
    }
    if (s != ATTN_OK) break;
    const double ms = clrt_median(tm, runs);
    attn_tune_row *row = add_row(r, shape);
    if (row) {
      snprintf(row->value, sizeof row->value, "%d,%d,%d,%d", t.nt, t.bq, t.bk, t.dc);
      row->median_ms = ms;
    }
    if (bi < 0 || ms < best) best = ms, bi = i;
  }
  clrt_tune_sdpa_free(c, &prob);
  if (s != ATTN_OK) return s;
  if (bi < 0)
    return clrt_host()->error(ATTN_ERR_UNSUPPORTED,
                              "clblast tune: no fused-kernel tiles fit this device");
  char win[32];
  snprintf(win, sizeof win, "%d,%d,%d,%d", cand[bi][0], cand[bi][1], cand[bi][2], cand[bi][3]);
  for (int i = first; i < r->n; i++) r->row[i].chosen = strcmp(r->row[i].value, win) == 0;
  /* This context uses the winner from now on; later ones find it in the cache. */
  p->nt = cand[bi][0], p->bq = cand[bi][1], p->bk = cand[bi][2], p->dc = cand[bi][3];
  snprintf(p->src, sizeof p->src, "tuned");
  char key[1024], text[64];
  clb_tune_key(c, key, sizeof key);
  snprintf(text, sizeof text, "flash_tiles %s\n", win);
  r->stored = clrt_tune_store(key, text);
  return ATTN_OK;
}
