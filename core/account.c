/* Per-device memory accounts: the bytes of live storages on each device,
 * shared by every context open on it, so that no allocation is accepted
 * that would take the device past its global memory (for ref, the host's
 * physical memory). Without it each backend accepts buffers as long as its
 * driver does, and POCL and the ref backend allocate lazily: 64 tensors of
 * 4 GiB on a 10 GiB device were accepted and the process was OOM-killed
 * when they were written.
 *
 * An account is keyed by backend name and device index (one device of one
 * backend, whichever registry opened it), created on the first context open
 * on that device and never freed, so that a context can keep a plain
 * pointer to it. One mutex guards every account: reservations are a few
 * additions, never held across a backend call. */
#include "internal.h"

#include <inttypes.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

struct attn_mem_account {
  char backend[ATTN_SEL_NAME_MAX];
  int index;
  uint64_t limit; /* the device's global memory; 0 = unknown, no limit */
  uint64_t used;  /* bytes of live storages on the device, all contexts */
  attn_mem_account *next;
};

static pthread_mutex_t g_acct_lock = PTHREAD_MUTEX_INITIALIZER;
static attn_mem_account *g_accounts;

attn_mem_account *attn__account_get(const attn_device_info *info) {
  pthread_mutex_lock(&g_acct_lock);
  attn_mem_account *a = g_accounts;
  for (; a; a = a->next)
    if (a->index == info->index && strcmp(a->backend, info->backend) == 0) break;
  if (!a && (a = calloc(1, sizeof *a)) != NULL) {
    snprintf(a->backend, sizeof a->backend, "%s", info->backend);
    a->index = info->index;
    a->limit = info->global_mem;
    a->next = g_accounts;
    g_accounts = a;
  }
  pthread_mutex_unlock(&g_acct_lock);
  return a;
}

attn_status attn__account_reserve(attn_mem_account *a, const attn_device_info *info,
                                  uint64_t bytes) {
  if (!a) return ATTN_OK;
  pthread_mutex_lock(&g_acct_lock);
  const uint64_t used = a->used, limit = a->limit;
  const int fits = !limit || (bytes <= limit && used <= limit - bytes);
  if (fits) a->used += bytes;
  pthread_mutex_unlock(&g_acct_lock);
  if (fits) return ATTN_OK;
  return attn__error(ATTN_ERR_DEVICE_MEMORY,
                     "%" PRIu64 " bytes requested with %" PRIu64 " bytes in use would exceed "
                     "the %" PRIu64 " bytes of global memory of %s (%s)",
                     bytes, used, limit, info->selector, info->name);
}

void attn__account_release(attn_mem_account *a, uint64_t bytes) {
  if (!a) return;
  pthread_mutex_lock(&g_acct_lock);
  a->used = bytes <= a->used ? a->used - bytes : 0;
  pthread_mutex_unlock(&g_acct_lock);
}

uint64_t attn__account_used(const attn_mem_account *a) {
  if (!a) return 0;
  pthread_mutex_lock(&g_acct_lock);
  uint64_t u = a->used;
  pthread_mutex_unlock(&g_acct_lock);
  return u;
}
