/* attn devices: every device of every backend, and the modules that failed. */
#include "config.h"

#include <errno.h>
#include <getopt.h>
#include <inttypes.h>
#include <math.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "attn.h"
#include "cli.h"
#include "commands.h"
#include "npy.h"
#include "pathsafe.h"

void help_devices(FILE *f) {
  fprintf(f,
          "Usage: attn devices [--device SEL]\n"
          "\n"
          "Lists every device of every backend found, one per line:\n"
          "  SELECTOR  BACKEND  TYPE  NAME  MEMORY\n"
          "where SELECTOR is the exact --device / ATTN_DEVICE string that picks it; then\n"
          "the backend modules that failed to load, each with its path and the reason.\n"
          "With --device SEL, also opens SEL and prints the device it selects.\n"
          "\n"
          "  --device SEL   selector to resolve (default: none)\n"
          "  -h, --help     this help\n");
}

static void fmt_mem(char *buf, size_t cap, uint64_t bytes) {
  if (!bytes) snprintf(buf, cap, "unknown");
  else if (bytes >= (1ULL << 30)) snprintf(buf, cap, "%.1f GiB", bytes / 1073741824.0);
  else snprintf(buf, cap, "%.1f MiB", bytes / 1048576.0);
}

/* The directories the library refuses to use, as notes (a refused module
 * or module directory is among the failed modules already). */
static void print_notes(void) {
  char dir[3072], why[160];
  int n = 0;
  if (attn_cache_dir_name(dir, sizeof dir) && attn_path_unsafe(dir, why, sizeof why)) {
    printf("%s  cache directory %s not used (OpenCL programs are compiled, not cached): %s\n",
           n++ ? "" : "notes:\n", dir, why);
  }
  const char *kd = getenv("ATTN_KERNEL_DIR");
  if (kd && *kd) {
    if (kd[0] != '/')
      printf("%s  ATTN_KERNEL_DIR %s refused: a relative path (it must be absolute)\n",
             n++ ? "" : "notes:\n", kd);
    else if (attn_path_unsafe(kd, why, sizeof why))
      printf("%s  ATTN_KERNEL_DIR %s refused: %s\n", n++ ? "" : "notes:\n", kd, why);
  }
}

int cmd_devices(int argc, char **argv, const char *default_device) {
  static const struct option opts[] = {{"device", required_argument, NULL, 'd'},
                                       {"help", no_argument, NULL, 'h'},
                                       {NULL, 0, NULL, 0}};
  const char *sel = default_device;
  int c;
  while ((c = getopt_long(argc, argv, ":h", opts, NULL)) != -1) {
    switch (c) {
    case 'd': sel = optarg; break;
    case 'h': help_devices(stdout); return 0;
    case ':': return cli_usage_fail("option '%s' needs an argument", argv[optind - 1]);
    default: return cli_usage_fail("unknown option '%s'", argv[optind - 1]);
    }
  }
  if (optind < argc) return cli_usage_fail("unexpected argument '%s'", argv[optind]);

  attn_device_list *list;
  attn_status s = attn_list_devices(&list);
  if (s != ATTN_OK) return cli_lib_fail(s, NULL);
  size_t n = attn_device_list_count(list);
  for (size_t i = 0; i < n; i++) {
    const attn_device_info *d = attn_device_list_get(list, i);
    char mem[32];
    fmt_mem(mem, sizeof mem, d->global_mem);
    printf("%-16s %-8s %-11s %-40s %s\n", d->selector, d->backend, attn_device_type_str(d->type),
           d->name, mem);
  }
  if (n == 0) printf("no devices found\n");
  size_t nf = attn_device_list_failure_count(list);
  if (nf) {
    printf("failed modules:\n");
    for (size_t i = 0; i < nf; i++)
      printf("  %s: %s\n", attn_device_list_failure_path(list, i),
             attn_device_list_failure_reason(list, i));
  }
  attn_device_list_free(list);
  print_notes();

  if (sel) {
    attn_context *ctx;
    s = attn_open(sel, &ctx);
    if (s != ATTN_OK) return cli_lib_fail(s, NULL);
    attn_device_info info;
    s = attn_context_info(ctx, &info);
    if (s == ATTN_OK) printf("selected by '%s': %s (%s)\n", sel, info.selector, info.name);
    attn_close(ctx);
    if (s != ATTN_OK) return cli_lib_fail(s, NULL);
  }
  return 0;
}
