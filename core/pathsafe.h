/* Is a directory or file safe to take code or data from? The rule ssh and
 * git apply to their files, written once for the loader (ATTN_BACKEND_PATH
 * and the module directory), the OpenCL runtime (the binary cache,
 * ATTN_KERNEL_DIR) and `attn devices`, which reports what was refused.
 *
 * Unsafe: a directory writable by group or others without the sticky bit
 * (anyone could replace its files; /tmp's 01777 is fine: only a file's owner
 * may remove or rename it there), a file writable by group or others, or
 * either owned by someone other than the caller (geteuid) or root. Only the
 * directory and the file are checked, not their parents.
 *
 * Header-only (static inline), so the core, the modules and the attn command
 * each carry the same copy; never installed. */
#ifndef ATTN_PATHSAFE_H
#define ATTN_PATHSAFE_H

#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

/* NULL if st (of a directory or a regular file) is safe; else why, written
 * into why ("writable by others without the sticky bit (mode 0777)"). */
static inline const char *attn_stat_unsafe(const struct stat *st, char *why, size_t len) {
  const unsigned mode = (unsigned)(st->st_mode & 07777);
  const uid_t me = geteuid();
  if (st->st_uid != me && st->st_uid != 0) {
    snprintf(why, len, "owned by uid %u, neither the caller (uid %u) nor root",
             (unsigned)st->st_uid, (unsigned)me);
    return why;
  }
  if (st->st_mode & (S_IWGRP | S_IWOTH)) {
    const char *who = (st->st_mode & S_IWOTH) ? "others" : "its group";
    if (!S_ISDIR(st->st_mode)) {
      snprintf(why, len, "writable by %s (mode %04o)", who, mode);
      return why;
    }
    if (!(st->st_mode & S_ISVTX)) {
      snprintf(why, len, "writable by %s without the sticky bit (mode %04o)", who, mode);
      return why;
    }
  }
  return NULL;
}

/* The same for a path (stat follows symbolic links: the target is what is
 * used). NULL also when the path does not exist: absent is not unsafe. */
static inline const char *attn_path_unsafe(const char *path, char *why, size_t len) {
  struct stat st;
  if (stat(path, &st) != 0) return NULL;
  return attn_stat_unsafe(&st, why, len);
}

/* The binary cache's directory: $ATTN_CACHE_DIR, else $XDG_CACHE_HOME/attn,
 * else $HOME/.cache/attn; NULL when ATTN_CACHE=0 or none can be named. */
static inline const char *attn_cache_dir_name(char *buf, size_t len) {
  const char *off = getenv("ATTN_CACHE");
  if (off && strcmp(off, "0") == 0) return NULL;
  const char *e = getenv("ATTN_CACHE_DIR");
  int n;
  if (e && *e) n = snprintf(buf, len, "%s", e);
  else if ((e = getenv("XDG_CACHE_HOME")) && *e) n = snprintf(buf, len, "%s/attn", e);
  else if ((e = getenv("HOME")) && *e) n = snprintf(buf, len, "%s/.cache/attn", e);
  else return NULL;
  return n > 0 && (size_t)n < len ? buf : NULL;
}

#endif /* ATTN_PATHSAFE_H */
