/* The backend registry: find modules, dlopen them, check their ABI, probe
 * their devices.
 *
 * Search order: the entries of $ATTN_BACKEND_PATH, then the installed module
 * directory -- or, when libattn itself runs from its build tree, the build
 * tree's .libs instead, so the uninstalled build finds its fresh modules and
 * never stale installed ones. Never the current directory: an empty entry is
 * ignored and a relative one is refused, because loading code from wherever
 * the user happens to stand is a classic hijack.
 *
 * Modules are loaded lazily: the scan only lists the files; a module is
 * dlopen'ed when a selector (or the default order) reaches its backend, or
 * when every device is listed, so one that crashes or hangs at load cannot
 * take down a program that asked for another backend.
 *
 * A module that fails any check is skipped and its reason kept, so that
 * `attn devices` can print it and a selector naming that backend can fail
 * with it. Modules that passed the checks are never dlclose'd (OpenCL drivers
 * do not survive unloading reliably, see attn_plugin.h). */
#include "internal.h"
#include "pathsafe.h"

#include <dirent.h>
#include <dlfcn.h>
#include <errno.h>
#include <limits.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#ifndef ATTN_MODULE_DIR
#define ATTN_MODULE_DIR "/usr/local/lib/attn"
#endif
#ifndef ATTN_BUILD_MODULE_DIR
#define ATTN_BUILD_MODULE_DIR ""
#endif

/* A module claiming more devices than this is broken, not big. */
#define MAX_DEVICES_PER_BACKEND 1024

/* ---- growing arrays ------------------------------------------------------- */

static attn_status add_failure(attn_registry *reg, const char *name, const char *path,
                               const char *fmt, ...) __attribute__((format(printf, 4, 5)));

static attn_status add_failure(attn_registry *reg, const char *name, const char *path,
                               const char *fmt, ...) {
  attn_load_failure *f = realloc(reg->failures, (size_t)(reg->nfailures + 1) * sizeof *f);
  if (!f) return ATTN_ERR_NOMEM;
  reg->failures = f;
  f = &reg->failures[reg->nfailures++];
  memset(f, 0, sizeof *f);
  snprintf(f->name, sizeof f->name, "%s", name);
  snprintf(f->path, sizeof f->path, "%s", path);
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(f->reason, sizeof f->reason, fmt, ap);
  va_end(ap);
  attn__debug("skipped %s: %s", path, f->reason);
  return ATTN_OK;
}

/* The backend name a file stands for: "attn_<name>.so" -> "<name>"; other
 * names are kept whole minus a ".so", so a failure always has some name. */
static void name_from_path(const char *path, char *name, size_t size) {
  const char *base = strrchr(path, '/');
  base = base ? base + 1 : path;
  if (strncmp(base, "attn_", 5) == 0) base += 5;
  size_t len = strlen(base);
  if (len > 3 && strcmp(base + len - 3, ".so") == 0) len -= 3;
  if (len >= size) len = size - 1;
  memcpy(name, base, len);
  name[len] = '\0';
}

static int valid_backend_name(const char *name) {
  if (!name || !*name) return 0;
  size_t n = 0;
  for (; name[n]; n++) {
    char c = name[n];
    if (!((c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '_')) return 0;
    if (n + 1 >= ATTN_SEL_NAME_MAX) return 0;
  }
  return 1;
}

/* The message a module's init reported through host->error, without the
 * "fn: " prefix status.c puts in front of it. */
static const char *module_message(const char *fn) {
  const char *m = attn_last_error();
  size_t n = strlen(fn);
  if (strncmp(m, fn, n) == 0 && m[n] == ':' && m[n + 1] == ' ') m += n + 2;
  return *m ? m : "(no message)";
}

/* ---- one module --------------------------------------------------------- */

/* The required 2.0 slots, in order, so a NULL one can be named in the reason. */
#define SLOT(s) {#s, offsetof(attn_backend_vtable, s)}
static const struct {
  const char *name;
  size_t offset;
} required_slots[] = {SLOT(init),         SLOT(probe),        SLOT(device_info),
                      SLOT(open),         SLOT(close),        SLOT(buffer_alloc),
                      SLOT(buffer_free),  SLOT(buffer_write), SLOT(buffer_read),
                      SLOT(supports),     SLOT(run),          SLOT(synchronize)};
#undef SLOT

/* Bytes a vtable must span to hold every required slot of major 2. */
#define ABI_2_0_SIZE                                                                        \
  (offsetof(attn_backend_vtable, synchronize) + sizeof(((attn_backend_vtable *)0)->synchronize))

static int slot_is_null(const attn_backend_vtable *vt, size_t offset) {
  /* Every slot is a function pointer; read it as one without aliasing games. */
  void (*fp)(void);
  memcpy(&fp, (const char *)vt + offset, sizeof fp);
  return fp == NULL;
}

static const attn_backend *find_backend(const attn_registry *reg, const char *name) {
  for (int i = 0; i < reg->nbackends; i++)
    if (strcmp(reg->backends[i].name, name) == 0) return &reg->backends[i];
  return NULL;
}

/* Try one module file. Returns ATTN_ERR_NOMEM only; every other problem is a
 * recorded failure. */
static attn_status load_module(attn_registry *reg, const char *path) {
  char fname[ATTN_SEL_NAME_MAX];
  name_from_path(path, fname, sizeof fname);
  attn__debug("trying module %s", path);

  /* The same file reached twice (ATTN_BACKEND_PATH naming the build tree,
   * which is also searched by default there) is one module, not a shadow. */
  char real[PATH_MAX], other[PATH_MAX];
  if (realpath(path, real)) {
    for (int i = 0; i < reg->nbackends; i++) {
      if (realpath(reg->backends[i].path, other) && strcmp(real, other) == 0) {
        attn__debug("module %s is already loaded as %s", path, reg->backends[i].path);
        return ATTN_OK;
      }
    }
  }

  dlerror();
  void *h = dlopen(path, RTLD_NOW | RTLD_LOCAL);
  if (!h) {
    const char *e = dlerror();
    return add_failure(reg, fname, path, "dlopen failed: %s", e ? e : "unknown error");
  }

  /* From here until init runs, a rejected module can still be unloaded. */
  dlerror();
  void *sym = dlsym(h, ATTN_BACKEND_ENTRY_SYMBOL);
  if (!sym) {
    attn_status st = add_failure(reg, fname, path, "no entry symbol %s (not a libattn backend?)",
                                 ATTN_BACKEND_ENTRY_SYMBOL);
    dlclose(h);
    return st;
  }
  attn_backend_entry_fn entry;
  memcpy(&entry, &sym, sizeof entry); /* object -> function pointer, as POSIX allows */
  const attn_backend_vtable *vt = entry();
  char why[1400] = ""; /* fits a full path */
  if (!vt) {
    snprintf(why, sizeof why, "%s returned NULL", ATTN_BACKEND_ENTRY_SYMBOL);
  } else if (vt->abi_major != ATTN_ABI_MAJOR) {
    /* Both versions and the file: which side to rebuild. */
    snprintf(why, sizeof why, "built for plugin ABI %u.%u, but libattn expects ABI %d.x "
             "(at most %d.%d): rebuild the module against this libattn's attn_plugin.h",
             (unsigned)vt->abi_major, (unsigned)vt->abi_minor, ATTN_ABI_MAJOR, ATTN_ABI_MAJOR,
             ATTN_ABI_MINOR);
  } else if (vt->struct_size < ABI_2_0_SIZE) {
    snprintf(why, sizeof why, "vtable struct_size %u is smaller than the %zu bytes of ABI %d.0",
             (unsigned)vt->struct_size, (size_t)ABI_2_0_SIZE, ATTN_ABI_MAJOR);
  } else if (!valid_backend_name(vt->name)) {
    snprintf(why, sizeof why, "bad backend name \"%.*s\" (want [a-z0-9_]+, at most %d characters)",
             vt->name ? 64 : 6, vt->name ? vt->name : "(null)", ATTN_SEL_NAME_MAX - 1);
  } else {
    for (size_t i = 0; i < sizeof required_slots / sizeof required_slots[0]; i++) {
      if (slot_is_null(vt, required_slots[i].offset)) {
        snprintf(why, sizeof why, "required slot %s is NULL", required_slots[i].name);
        break;
      }
    }
  }
  if (!why[0]) {
    const attn_backend *first = find_backend(reg, vt->name);
    if (first)
      snprintf(why, sizeof why, "backend \"%s\" is shadowed by %s, loaded first", vt->name,
               first->path);
  }
  if (why[0]) {
    attn_status st = add_failure(reg, fname, path, "%s", why);
    /* A second dlopen of an already loaded file only drops our extra
     * reference here; the first registration keeps its own. */
    dlclose(h);
    return st;
  }

  /* init and probe run module code that may start threads or touch drivers:
   * from here on the module stays loaded, even if we refuse it. The module's
   * messages are reported under "init"/"probe", then the caller's function
   * name is restored. */
  const char *caller = attn__current_fn();
  attn__enter("init");
  attn_status ist = vt->init(attn__host());
  if (ist != ATTN_OK) {
    char msg[256];
    snprintf(msg, sizeof msg, "%s", module_message("init"));
    attn__enter(caller);
    return add_failure(reg, vt->name, path, "init failed (%s): %s", attn_status_str(ist), msg);
  }
  attn__enter("probe");
  int n = vt->probe();
  if (n < 0) {
    /* A negative probe is an attn_status; keep the module's own message. */
    char msg[256];
    snprintf(msg, sizeof msg, "%s", module_message("probe"));
    attn__enter(caller);
    return add_failure(reg, vt->name, path, "probe failed (%s, %d): %s",
                       attn_status_str((attn_status)n), n, msg);
  }
  attn__enter(caller);
  if (n > MAX_DEVICES_PER_BACKEND)
    return add_failure(reg, vt->name, path, "probe reported %d devices, more than %d", n,
                       MAX_DEVICES_PER_BACKEND);

  attn_backend be;
  memset(&be, 0, sizeof be);
  snprintf(be.name, sizeof be.name, "%s", vt->name);
  snprintf(be.path, sizeof be.path, "%s", path);
  be.handle = h;
  be.vt = vt;
  if (n > 0) {
    be.dev = calloc((size_t)n, sizeof *be.dev);
    if (!be.dev) return ATTN_ERR_NOMEM;
  }
  for (int i = 0; i < n; i++) {
    attn_device_info info;
    memset(&info, 0, sizeof info);
    attn__enter("device_info");
    attn_status dst = vt->device_info(i, &info);
    if (dst != ATTN_OK) {
      /* One broken device should not hide the others: skip it, keep the
       * indexes of the rest (they are the backend's own). */
      attn__debug("%s: device %d skipped: %s", path, i, module_message("device_info"));
      attn__enter(caller);
      continue;
    }
    attn__enter(caller);
    /* The core owns these fields; terminate the strings the module filled. */
    info.name[sizeof info.name - 1] = '\0';
    info.vendor[sizeof info.vendor - 1] = '\0';
    info.driver[sizeof info.driver - 1] = '\0';
    snprintf(info.backend, sizeof info.backend, "%s", be.name);
    info.index = i;
    snprintf(info.selector, sizeof info.selector, "%s:%d", be.name, i);
    if (info.type != ATTN_DEVICE_CPU && info.type != ATTN_DEVICE_GPU &&
        info.type != ATTN_DEVICE_ACCELERATOR)
      info.type = ATTN_DEVICE_OTHER;
    be.dev[be.ndev++] = info;
    attn__debug("%s: device %s \"%s\"", be.name, info.selector, info.name);
  }

  /* Room was made for one backend per candidate when the path was scanned,
   * so that the entries (which contexts point to) never move. */
  if (reg->nbackends >= reg->cap_backends) {
    free(be.dev);
    return ATTN_ERR_NOMEM;
  }
  reg->backends[reg->nbackends++] = be;
  attn__debug("loaded backend %s from %s: %d device(s)", be.name, path, be.ndev);
  return ATTN_OK;
}

/* ---- search path ---------------------------------------------------------- */

/* A module file found on the search path, loaded only when a selector, the
 * default order or a device listing reaches it: a module that crashes or
 * hangs when loaded then takes down only what asks for it, not `--device
 * ref`. name is the backend its file name stands for (attn_<name>.so). */
static attn_status add_candidate(attn_registry *reg, const char *path) {
  attn_candidate *c = realloc(reg->cand, (size_t)(reg->ncand + 1) * sizeof *c);
  if (!c) return ATTN_ERR_NOMEM;
  reg->cand = c;
  c = &reg->cand[reg->ncand++];
  memset(c, 0, sizeof *c);
  name_from_path(path, c->name, sizeof c->name);
  snprintf(c->path, sizeof c->path, "%s", path);
  attn__debug("found module %s (backend %s), not loaded yet", path, c->name);
  return ATTN_OK;
}

static int has_failure(const attn_registry *reg, const char *name) {
  for (int i = 0; i < reg->nfailures; i++)
    if (strcmp(reg->failures[i].name, name) == 0) return 1;
  return 0;
}

static attn_status load_candidates(attn_registry *reg, const char *name, int matching) {
  for (int i = 0; i < reg->ncand; i++) {
    attn_candidate *c = &reg->cand[i];
    if (c->tried || (name && (strcmp(c->name, name) == 0) != matching)) continue;
    c->tried = 1;
    attn_status st = load_module(reg, c->path);
    if (st != ATTN_OK) {
      c->tried = 0; /* out of memory: try again on a later call */
      return st;
    }
  }
  return ATTN_OK;
}

attn_status attn__registry_load(attn_registry *reg, const char *name) {
  attn_status st = load_candidates(reg, name, 1);
  /* A module file's name only suggests its backend (a file named in
   * ATTN_BACKEND_PATH may be called anything): when no file of that name
   * gave the backend, or a reason it failed, the others may. */
  if (st == ATTN_OK && name && !find_backend(reg, name) && !has_failure(reg, name))
    st = load_candidates(reg, name, 0);
  return st;
}

static int cmp_str(const void *a, const void *b) {
  return strcmp(*(char *const *)a, *(char *const *)b);
}

static int is_module_file_name(const char *n) {
  size_t len = strlen(n);
  return len > 8 && strncmp(n, "attn_", 5) == 0 && strcmp(n + len - 3, ".so") == 0;
}

/* Load a directory's attn_*.so in sorted (byte) order, so the result does not
 * depend on the file system or the locale. */
static attn_status load_dir(attn_registry *reg, const char *dir, int missing_ok) {
  DIR *d = opendir(dir);
  if (!d) {
    if (missing_ok && errno == ENOENT) {
      attn__debug("module directory %s does not exist", dir);
      return ATTN_OK;
    }
    return add_failure(reg, "", dir, "cannot open directory: %s", strerror(errno));
  }
  char **names = NULL;
  size_t n = 0, cap = 0;
  attn_status st = ATTN_OK;
  struct dirent *e;
  while ((e = readdir(d)) != NULL) {
    if (!is_module_file_name(e->d_name)) continue;
    if (n == cap) {
      size_t ncap = cap ? 2 * cap : 16;
      char **nn = realloc(names, ncap * sizeof *nn);
      if (!nn) {
        st = ATTN_ERR_NOMEM;
        break;
      }
      names = nn;
      cap = ncap;
    }
    names[n] = strdup(e->d_name);
    if (!names[n]) {
      st = ATTN_ERR_NOMEM;
      break;
    }
    n++;
  }
  closedir(d);
  if (n > 1) qsort(names, n, sizeof *names, cmp_str);
  for (size_t i = 0; i < n && st == ATTN_OK; i++) {
    char path[1024];
    int len = snprintf(path, sizeof path, "%s/%s", dir, names[i]);
    if (len < 0 || (size_t)len >= sizeof path) {
      st = add_failure(reg, "", names[i], "path %s/%s is too long", dir, names[i]);
      continue;
    }
    struct stat sb;
    if (stat(path, &sb) != 0 || !S_ISREG(sb.st_mode)) {
      attn__debug("skipping %s: not a regular file", path);
      continue;
    }
    char why[160], fname[ATTN_SEL_NAME_MAX];
    if (attn_stat_unsafe(&sb, why, sizeof why)) {
      name_from_path(path, fname, sizeof fname);
      st = add_failure(reg, fname, path, "unsafe module file refused: %s", why);
      continue;
    }
    st = add_candidate(reg, path);
  }
  for (size_t i = 0; i < n; i++) free(names[i]);
  free(names);
  return st;
}

/* The name to record for a failed search path entry: the backend a module
 * file stands for, "" for a directory. */
static void entry_failure_name(const char *entry, char *name, size_t size) {
  const char *base = strrchr(entry, '/');
  base = base ? base + 1 : entry;
  if (is_module_file_name(base))
    name_from_path(base, name, size);
  else
    name[0] = '\0';
}

/* One search path entry: a directory or a module file. */
static attn_status load_entry(attn_registry *reg, const char *entry, int missing_ok) {
  char name[ATTN_SEL_NAME_MAX];
  entry_failure_name(entry, name, sizeof name);
  if (entry[0] != '/')
    return add_failure(reg, name, entry, "relative path refused (module paths must be absolute)");
  struct stat sb;
  if (stat(entry, &sb) != 0) {
    if (missing_ok && errno == ENOENT) {
      attn__debug("module directory %s does not exist", entry);
      return ATTN_OK;
    }
    return add_failure(reg, name, entry, "%s", strerror(errno));
  }
  /* Code from a directory or file that someone else could have written is
   * that someone's code running as us. */
  char why[160];
  if (attn_stat_unsafe(&sb, why, sizeof why))
    return add_failure(reg, name, entry, "unsafe %s refused: %s",
                       S_ISDIR(sb.st_mode) ? "module directory" : "module file", why);
  if (S_ISDIR(sb.st_mode)) return load_dir(reg, entry, missing_ok);
  return add_candidate(reg, entry);
}

/* Does libattn run from its build tree? Then the build tree's modules are the
 * ones that match it, not whatever an older `make install` left behind. */
static int running_from_build_tree(void) {
  if (!ATTN_BUILD_MODULE_DIR[0]) return 0;
  Dl_info dli;
  if (!dladdr((void *)&attn_open, &dli) || !dli.dli_fname) return 0;
  char lib[PATH_MAX], build[PATH_MAX];
  if (!realpath(dli.dli_fname, lib) || !realpath(ATTN_BUILD_MODULE_DIR, build)) return 0;
  char *slash = strrchr(lib, '/');
  if (!slash) return 0;
  *slash = '\0';
  return strcmp(lib, build) == 0;
}

/* Find the candidates of the search path (nothing is dlopen'ed). */
static attn_status registry_find(const char *search, attn_registry *reg) {
  memset(reg, 0, sizeof *reg);

  int use_default = search == NULL;
  if (use_default) search = getenv("ATTN_BACKEND_PATH");
  attn__debug("module search path: %s", search ? search : "(ATTN_BACKEND_PATH unset)");

  attn_status st = ATTN_OK;
  const char *s = search;
  while (s && st == ATTN_OK) {
    const char *colon = strchr(s, ':');
    size_t len = colon ? (size_t)(colon - s) : strlen(s);
    if (len == 0) {
      /* An empty entry means "." to a shell; here it means nothing. */
    } else if (len >= 1024) {
      st = add_failure(reg, "", "(ATTN_BACKEND_PATH entry)", "path is longer than 1023 bytes");
    } else {
      char entry[1024];
      memcpy(entry, s, len);
      entry[len] = '\0';
      st = load_entry(reg, entry, 0);
    }
    s = colon ? colon + 1 : NULL;
  }

  if (use_default && st == ATTN_OK) {
    const char *dir = running_from_build_tree() ? ATTN_BUILD_MODULE_DIR : ATTN_MODULE_DIR;
    attn__debug("module directory: %s", dir);
    st = load_entry(reg, dir, 1);
  }

  if (st == ATTN_OK && reg->ncand) {
    reg->backends = calloc((size_t)reg->ncand, sizeof *reg->backends);
    if (!reg->backends) st = ATTN_ERR_NOMEM;
    else reg->cap_backends = reg->ncand;
  }
  if (st != ATTN_OK) {
    attn__registry_free(reg);
    return attn__error(st, "loading backend modules: out of host memory");
  }
  return ATTN_OK;
}

attn_status attn__registry_scan(const char *search, attn_registry *reg) {
  if (!reg) return attn__error(ATTN_ERR_INVALID_ARG, "registry: reg is NULL");
  attn_status st = registry_find(search, reg);
  if (st == ATTN_OK && (st = attn__registry_load(reg, NULL)) != ATTN_OK) {
    attn__registry_free(reg);
    return attn__error(st, "loading backend modules: out of host memory");
  }
  return st;
}

void attn__registry_free(attn_registry *reg) {
  if (!reg) return;
  /* The handles stay open on purpose (see the file comment). */
  for (int i = 0; i < reg->nbackends; i++) free(reg->backends[i].dev);
  free(reg->backends);
  free(reg->failures);
  free(reg->cand);
  memset(reg, 0, sizeof *reg);
}

/* ---- the process-wide registry -------------------------------------------- */

/* The process-wide registry: its search path is scanned under the lock on
 * first use (a scan that ran out of memory is not kept, so a later call
 * tries again instead of living with an empty registry), its modules loaded
 * under the same lock as they are asked for. Every reader holds the lock:
 * loading appends to the failures. */
static pthread_mutex_t g_lock = PTHREAD_MUTEX_INITIALIZER;
static int g_ready;
static attn_registry g_registry;

attn_status attn__registry_lock(attn_registry **out) {
  pthread_mutex_lock(&g_lock);
  if (!g_ready) {
    attn_registry reg;
    if (registry_find(NULL, &reg) != ATTN_OK) {
      pthread_mutex_unlock(&g_lock);
      *out = NULL;
      return attn__error(ATTN_ERR_NOMEM, "out of host memory while loading backend modules");
    }
    g_registry = reg;
    g_ready = 1;
  }
  *out = &g_registry;
  return ATTN_OK;
}

void attn__registry_unlock(void) { pthread_mutex_unlock(&g_lock); }
