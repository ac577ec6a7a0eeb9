/* attn tune: measure a device's tuning parameters (attn_tune) and print the
 * candidates, their medians and the winners, which libattn stores in its
 * cache for every later context on that device. --show only prints the
 * values a fresh context on the device uses, and where they came from. */
#include "config.h"

#include "commands.h"

#include <getopt.h>
#include <stdbool.h>
#include <stdio.h>
#include <string.h>

#include "attn.h"
#include "cli.h"

void tune_help(FILE *f) {
  fprintf(f,
          "Usage: attn tune [options]\n"
          "\n"
          "Measures the backend's tuning parameters (vector width, tile sizes, how work is\n"
          "split) on one device: a few candidates of each at representative shapes, the\n"
          "median of several runs each. The fastest are used by every later context on this\n"
          "device: they are stored in the kernel cache ($ATTN_CACHE_DIR, else\n"
          "$XDG_CACHE_HOME/attn, else ~/.cache/attn) under the device, driver and kernel\n"
          "sources, so a new driver or kernel falls back to the built-in defaults until\n"
          "tuned again. ATTN_CACHE=0 neither reads nor stores them. Prints one line per\n"
          "candidate; '*' marks the winners.\n"
          "The ref backend has nothing to tune and fails with 'unsupported'.\n"
          "\n"
          "  --device SEL   the device (default: $ATTN_DEVICE, else \"%s\")\n"
          "  --quick        fewer candidates at small shapes (seconds)\n"
          "  --show         measure nothing: print the values the device uses now\n"
          "                 and their source (default, cache, env)\n"
          "  -h, --help     this help\n",
          ATTN_DEFAULT_SELECTOR);
}

int tune_main(int argc, char **argv, const char *default_device) {
  enum { O_DEVICE = 256, O_QUICK, O_SHOW };
  static const struct option opts[] = {{"device", required_argument, NULL, O_DEVICE},
                                       {"quick", no_argument, NULL, O_QUICK},
                                       {"show", no_argument, NULL, O_SHOW},
                                       {"help", no_argument, NULL, 'h'},
                                       {NULL, 0, NULL, 0}};
  const char *sel = default_device;
  unsigned flags = 0;
  int c;
  optind = 1;
  while ((c = getopt_long(argc, argv, ":h", opts, NULL)) != -1) {
    switch (c) {
    case O_DEVICE: sel = optarg; break;
    case O_QUICK: flags |= ATTN_TUNE_QUICK; break;
    case O_SHOW: flags |= ATTN_TUNE_SHOW; break;
    case 'h': tune_help(stdout); return 0;
    case ':': return cli_usage_fail("option '%s' needs an argument", argv[optind - 1]);
    default: return cli_usage_fail("unknown option '%s'", argv[optind - 1]);
    }
  }
  if (optind < argc) return cli_usage_fail("unexpected argument '%s'", argv[optind]);
  if ((flags & ATTN_TUNE_QUICK) && (flags & ATTN_TUNE_SHOW))
    return cli_usage_fail("--quick and --show exclude each other");

  attn_context *ctx;
  attn_status s = attn_open(sel, &ctx);
  if (s != ATTN_OK) return cli_lib_fail(s, NULL);
  attn_device_info info;
  s = attn_context_info(ctx, &info);
  /* static: the report is a few KiB, and main's stack is no place for it. */
  static attn_tune_report rep;
  if (s == ATTN_OK) s = attn_tune(ctx, flags, &rep);
  /* The message first: attn_close starts a new call, which clears it. */
  int rc = s != ATTN_OK ? cli_lib_fail(s, NULL) : 0;
  attn_close(ctx);
  if (rc) return rc;

  printf("device %s (%s)\n", info.selector, info.name);
  if (flags & ATTN_TUNE_SHOW) {
    printf("%-16s %-13s %s\n", "PARAM", "VALUE", "SOURCE");
    for (int i = 0; i < rep.n; i++)
      printf("%-16s %-13s %s\n", rep.row[i].param, rep.row[i].value, rep.row[i].source);
    return 0;
  }
  printf("%-16s %-13s %12s  %s\n", "PARAM", "VALUE", "MEDIAN_MS", "SHAPE");
  for (int i = 0; i < rep.n; i++) {
    const attn_tune_row *r = &rep.row[i];
    printf("%-16s %-13s %12.3f%s %s\n", r->param, r->value, r->median_ms, r->chosen ? "*" : " ",
           r->shape);
  }
  printf("%s\n", rep.stored ? "winners stored in the cache"
                            : "winners not stored (cache disabled or not writable)");
  return 0;
}
