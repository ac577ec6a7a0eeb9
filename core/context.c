/* Contexts and device listing: attn_open resolves a selector against the
 * registry, tries its alternatives in order and, when none works, says why
 * for each one and what exists instead. */
#include "internal.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

const char *attn_device_type_str(attn_device_type t) {
  switch (t) {
  case ATTN_DEVICE_CPU: return "cpu";
  case ATTN_DEVICE_GPU: return "gpu";
  case ATTN_DEVICE_ACCELERATOR: return "accelerator";
  case ATTN_DEVICE_OTHER: return "other";
  }
  return "other";
}

/* ---- a bounded string builder for the long "what went wrong" messages ---- */

typedef struct msgbuf {
  char s[2048];
  size_t len;
} msgbuf;

static void mb_add(msgbuf *m, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void mb_add(msgbuf *m, const char *fmt, ...) {
  if (m->len >= sizeof m->s - 1) return; /* full: the rest is truncated */
  va_list ap;
  va_start(ap, fmt);
  int n = vsnprintf(m->s + m->len, sizeof m->s - m->len, fmt, ap);
  va_end(ap);
  if (n < 0) return;
  m->len += (size_t)n;
  if (m->len > sizeof m->s - 1) m->len = sizeof m->s - 1;
}

/* Append what exists: every device selector and every module that failed. */
static void mb_add_inventory(msgbuf *m, const attn_registry *reg) {
  int ndev = 0;
  mb_add(m, "; devices found:");
  for (int b = 0; b < reg->nbackends; b++) {
    for (int i = 0; i < reg->backends[b].ndev; i++) {
      const attn_device_info *d = &reg->backends[b].dev[i];
      mb_add(m, "%s %s (%s, %s)", ndev ? "," : "", d->selector, d->name,
             attn_device_type_str(d->type));
      ndev++;
    }
  }
  if (!ndev) mb_add(m, " none");
  if (reg->nfailures) {
    /* ';' between failures: their reasons may contain commas. */
    mb_add(m, "; modules that failed to load:");
    for (int f = 0; f < reg->nfailures; f++)
      mb_add(m, "%s %s: %s", f ? ";" : "", reg->failures[f].path, reg->failures[f].reason);
  }
}

/* The message a backend slot reported, without the "attn_open: " prefix. */
static void last_message(char *dst, size_t size, const char *fn) {
  const char *m = attn_last_error();
  size_t n = strlen(fn);
  if (strncmp(m, fn, n) == 0 && m[n] == ':' && m[n + 1] == ' ') m += n + 2;
  snprintf(dst, size, "%s", *m ? m : "(no message)");
}

/* ---- contexts ---------------------------------------------------------------- */

attn_status attn__context_open(const attn_backend *be, int index, attn_context **ctx) {
  if (!ctx) return attn__error(ATTN_ERR_INVALID_ARG, "ctx: is NULL");
  *ctx = NULL;
  if (!be) return attn__error(ATTN_ERR_INVALID_ARG, "backend: is NULL");
  const attn_device_info *info = NULL;
  for (int i = 0; i < be->ndev; i++)
    if (be->dev[i].index == index) info = &be->dev[i];
  if (!info)
    return attn__error(ATTN_ERR_NO_DEVICE, "%s: no device with index %d", be->name, index);

  attn_context *c = calloc(1, sizeof *c);
  if (!c) return attn__error(ATTN_ERR_NOMEM, "out of host memory for a context");
  c->be = be;
  c->vt = be->vt;
  c->info = *info;
  c->account = attn__account_get(info);
  if (!c->account) {
    free(c);
    return attn__error(ATTN_ERR_NOMEM, "out of host memory for a device memory account");
  }
  attn_status st = be->vt->open(index, &c->bctx);
  if (st != ATTN_OK) {
    free(c);
    /* A module that fails without a message or with a non-status value
     * still gets a clear error. */
    if (st > 0) st = ATTN_ERR_BACKEND;
    if (!attn_last_error()[0])
      attn__error(st, "%s: open failed (%s)", info->selector, attn_status_str(st));
    return st;
  }
  *ctx = c;
  return ATTN_OK;
}

/* Why one alternative failed: its status and a message (no fn prefix). */
typedef struct alt_result {
  attn_status st;
  char why[1700]; /* fits a failure's full path and reason */
} alt_result;

static int try_alt(attn_registry *reg, const attn_sel_alt *alt, attn_context **ctx,
                   alt_result *r) {
  /* Only now is the module of this backend loaded (if it was not yet). */
  if (attn__registry_load(reg, alt->backend) != ATTN_OK) {
    r->st = ATTN_ERR_NOMEM;
    snprintf(r->why, sizeof r->why, "out of host memory loading the module of %s", alt->backend);
    return 0;
  }
  const attn_backend *be = NULL;
  for (int b = 0; b < reg->nbackends; b++)
    if (strcmp(reg->backends[b].name, alt->backend) == 0) be = &reg->backends[b];
  if (!be) {
    /* A module of that name that failed to load is the most useful answer. */
    for (int f = 0; f < reg->nfailures; f++) {
      if (strcmp(reg->failures[f].name, alt->backend) == 0) {
        r->st = ATTN_ERR_PLUGIN;
        snprintf(r->why, sizeof r->why, "backend %s did not load: %s: %s", alt->backend,
                 reg->failures[f].path, reg->failures[f].reason);
        return 0;
      }
    }
    r->st = ATTN_ERR_NO_DEVICE;
    snprintf(r->why, sizeof r->why, "no backend named %s", alt->backend);
    return 0;
  }

  int matched = 0;
  for (int i = 0; i < be->ndev; i++) {
    if (!attn__selector_match(alt, &be->dev[i])) continue;
    matched++;
    ATTN_ENTER("attn_open"); /* so this device's message is its own */
    attn_status st = attn__context_open(be, be->dev[i].index, ctx);
    if (st == ATTN_OK) return 1;
    /* Keep the first device's reason; later matching devices may still work. */
    if (matched == 1) {
      char msg[400];
      last_message(msg, sizeof msg, "attn_open");
      r->st = st;
      snprintf(r->why, sizeof r->why, "%s: open failed: %s", be->dev[i].selector, msg);
    }
  }
  if (!matched) {
    r->st = ATTN_ERR_NO_DEVICE;
    if (be->ndev == 0)
      snprintf(r->why, sizeof r->why, "backend %s found no usable device", be->name);
    else if (alt->kind == ATTN_SEL_INDEX)
      snprintf(r->why, sizeof r->why, "backend %s has no device %d (it has %d)", be->name,
               alt->index, be->ndev);
    else if (alt->kind == ATTN_SEL_TYPE)
      snprintf(r->why, sizeof r->why, "backend %s has no %s device", be->name,
               attn_device_type_str(alt->type));
    else
      snprintf(r->why, sizeof r->why, "backend %s has no device whose name contains \"%s\"",
               be->name, alt->name);
  }
  return 0;
}

static attn_status open_locked(attn_registry *reg, const char *origin, const char *text,
                               attn_context **ctx);

attn_status attn_open(const char *selector, attn_context **ctx) {
  ATTN_ENTER("attn_open");
  if (!ctx) return attn__error(ATTN_ERR_INVALID_ARG, "ctx: is NULL");
  *ctx = NULL;

  const char *origin = "selector";
  const char *text = selector;
  if (!text) {
    const char *env = getenv("ATTN_DEVICE");
    if (env && *env) {
      text = env;
      origin = "ATTN_DEVICE";
    } else {
      text = ATTN_DEFAULT_SELECTOR;
      origin = "default selector";
    }
  }

  attn_registry *reg;
  if (attn__registry_lock(&reg) != ATTN_OK) return ATTN_ERR_NOMEM;
  attn_status st = open_locked(reg, origin, text, ctx);
  attn__registry_unlock();
  return st;
}

/* The inventory lists every module: load those not loaded yet (their module
 * code may leave messages behind). */
static void load_all(attn_registry *reg) {
  attn__registry_load(reg, NULL);
  ATTN_ENTER("attn_open");
}

/* attn_open with the registry locked. */
static attn_status open_locked(attn_registry *reg, const char *origin, const char *text,
                               attn_context **ctx) {
  attn_selector sel;
  if (attn__selector_parse(text, &sel) != ATTN_OK) {
    msgbuf m = {.len = 0};
    char msg[512];
    last_message(msg, sizeof msg, "attn_open");
    load_all(reg);
    mb_add(&m, "%s%s", strcmp(origin, "ATTN_DEVICE") == 0 ? "ATTN_DEVICE: " : "", msg);
    mb_add_inventory(&m, reg);
    return attn__error(ATTN_ERR_SELECTOR, "%s", m.s);
  }

  alt_result res[ATTN_SEL_MAX_ALTS];
  for (int a = 0; a < sel.n; a++) {
    res[a].st = ATTN_OK;
    res[a].why[0] = '\0';
    ATTN_ENTER("attn_open");
    if (try_alt(reg, &sel.alt[a], ctx, &res[a])) {
      ATTN_ENTER("attn_open"); /* drop the messages of alternatives that failed */
      attn__debug("opened %s (%s) for %s \"%s\"", (*ctx)->info.selector, (*ctx)->info.name,
                  origin, text);
      return ATTN_OK;
    }
  }

  /* Nothing worked: one message with every alternative's reason and the
   * inventory. The first alternative's status is the most specific answer
   * to what was asked for first. */
  msgbuf m = {.len = 0};
  mb_add(&m, "no usable device for %s \"%s\":", origin, text);
  const char *p = text; /* each alternative's own text, for the message */
  for (int a = 0; a < sel.n; a++) {
    const char *comma = strchr(p, ',');
    size_t len = comma ? (size_t)(comma - p) : strlen(p);
    mb_add(&m, "%s \"%.*s\": %s", a ? ";" : "", (int)len, p, res[a].why);
    p = comma ? comma + 1 : p + len;
  }
  load_all(reg);
  mb_add_inventory(&m, reg);
  /* Except that running out of host memory is never "no device": a caller
   * must be able to tell a transient failure from a wrong selector. */
  attn_status st = res[0].st;
  for (int a = 0; a < sel.n; a++)
    if (res[a].st == ATTN_ERR_NOMEM) st = ATTN_ERR_NOMEM;
  return attn__error(st, "%s", m.s);
}

void attn_close(attn_context *ctx) {
  if (!ctx) return;
  ATTN_ENTER("attn_close");
  /* Graphs hold tensors, so they go first; the backend context goes last
   * because freeing buffers needs it. */
  attn__context_free_graphs(ctx);
  attn__context_free_tensors(ctx);
  ctx->vt->close(ctx->bctx);
  free(ctx);
}

attn_status attn_context_info(const attn_context *ctx, attn_device_info *info) {
  ATTN_ENTER("attn_context_info");
  if (!ctx) return attn__error(ATTN_ERR_INVALID_ARG, "ctx: is NULL");
  if (!info) return attn__error(ATTN_ERR_INVALID_ARG, "info: is NULL");
  *info = ctx->info;
  return ATTN_OK;
}

attn_status attn_synchronize(attn_context *ctx) {
  ATTN_ENTER("attn_synchronize");
  if (!ctx) return attn__error(ATTN_ERR_INVALID_ARG, "ctx: is NULL");
  return attn__be_sync(ctx);
}

/* ---- device listing: a snapshot copied out of the registry ---------------- */

struct attn_device_list {
  size_t ndev;
  attn_device_info *dev;
  size_t nfail;
  attn_load_failure *fail;
};

static attn_status list_locked(const attn_registry *reg, attn_device_list **list);

attn_status attn_list_devices(attn_device_list **list) {
  ATTN_ENTER("attn_list_devices");
  if (!list) return attn__error(ATTN_ERR_INVALID_ARG, "list: is NULL");
  *list = NULL;
  attn_registry *reg;
  if (attn__registry_lock(&reg) != ATTN_OK) return ATTN_ERR_NOMEM;
  /* A listing is of every module: load those no selector has reached. */
  attn_status st = attn__registry_load(reg, NULL);
  ATTN_ENTER("attn_list_devices");
  if (st == ATTN_OK) st = list_locked(reg, list);
  else st = attn__error(ATTN_ERR_NOMEM, "out of host memory loading backend modules");
  attn__registry_unlock();
  return st;
}

static attn_status list_locked(const attn_registry *reg, attn_device_list **list) {
  attn_device_list *l = calloc(1, sizeof *l);
  if (!l) return attn__error(ATTN_ERR_NOMEM, "out of host memory");
  size_t ndev = 0;
  for (int b = 0; b < reg->nbackends; b++) ndev += (size_t)reg->backends[b].ndev;
  if (ndev) {
    l->dev = calloc(ndev, sizeof *l->dev);
    if (!l->dev) {
      free(l);
      return attn__error(ATTN_ERR_NOMEM, "out of host memory");
    }
    for (int b = 0; b < reg->nbackends; b++)
      for (int i = 0; i < reg->backends[b].ndev; i++) l->dev[l->ndev++] = reg->backends[b].dev[i];
  }
  if (reg->nfailures) {
    l->fail = calloc((size_t)reg->nfailures, sizeof *l->fail);
    if (!l->fail) {
      free(l->dev);
      free(l);
      return attn__error(ATTN_ERR_NOMEM, "out of host memory");
    }
    memcpy(l->fail, reg->failures, (size_t)reg->nfailures * sizeof *l->fail);
    l->nfail = (size_t)reg->nfailures;
  }
  *list = l;
  return ATTN_OK;
}

/* The accessors cannot fail (NULL / out of range give 0 or NULL), so they
 * leave the last error message alone. */
size_t attn_device_list_count(const attn_device_list *list) { return list ? list->ndev : 0; }

const attn_device_info *attn_device_list_get(const attn_device_list *list, size_t i) {
  return list && i < list->ndev ? &list->dev[i] : NULL;
}

size_t attn_device_list_failure_count(const attn_device_list *list) {
  return list ? list->nfail : 0;
}

const char *attn_device_list_failure_path(const attn_device_list *list, size_t i) {
  return list && i < list->nfail ? list->fail[i].path : NULL;
}

const char *attn_device_list_failure_reason(const attn_device_list *list, size_t i) {
  return list && i < list->nfail ? list->fail[i].reason : NULL;
}

void attn_device_list_free(attn_device_list *list) {
  if (!list) return;
  free(list->dev);
  free(list->fail);
  free(list);
}
