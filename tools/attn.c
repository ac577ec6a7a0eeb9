/* attn: the libattn command-line tool.
 *
 *   attn devices            list devices and the modules that failed (tools/cmd_devices.c)
 *   attn run                scaled dot-product attention on .npy or random inputs (cmd_run.c)
 *   attn mha                multi-head attention with projections from .npy weights (cmd_mha.c)
 *   attn layer              one attention layer of a Hugging Face checkpoint (cmd_layer.c)
 *   attn bench              benchmark devices against their measured peaks (bench.c)
 *   attn tune               measure and cache a device's tuning parameters (tune.c)
 *
 * Exit status: 0 success, 1 failure, 2 usage error. Every error is one line on
 * stderr starting with "attn: ". Output files are written only once the whole
 * run (and --check) succeeded, each atomically, so a failed run leaves none.
 * This file is the command table and the dispatch; what the commands share is
 * in tools/cli.[ch]. */
#include "config.h"

#include <errno.h>
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "attn.h"
#include "cli.h"
#include "commands.h"

static const char *g_device = NULL; /* "attn --device SEL COMMAND": default for every command */

/* ---- main -------------------------------------------------------------------------- */

typedef struct command {
  const char *name;
  int (*run)(int argc, char **argv, const char *default_device);
  void (*help)(FILE *f);
  const char *summary;
} command;

static const command commands[] = {
    {"devices", cmd_devices, help_devices, "list devices and the backend modules that failed"},
    {"run", cmd_run, help_run, "scaled dot-product attention on .npy or random inputs"},
    {"mha", cmd_mha, help_mha, "multi-head attention with projections from .npy weights"},
    {"layer", cmd_layer, help_layer, "one attention layer of a Hugging Face checkpoint"},
    {"bench", bench_main, bench_help, "benchmark devices against their measured peaks"},
    {"tune", tune_main, tune_help, "measure a device's tuning parameters and cache the fastest"},
};
#define N_COMMANDS (sizeof commands / sizeof commands[0])

/* "devices, run, mha, bench, tune": the table's names, for usage errors. */
static const char *command_names(void) {
  static char names[128];
  if (!names[0])
    for (size_t i = 0; i < N_COMMANDS; i++) {
      size_t n = strlen(names);
      snprintf(names + n, sizeof names - n, "%s%s", i ? ", " : "", commands[i].name);
    }
  return names;
}

static void help_main(FILE *f) {
  fprintf(f,
          "Usage: attn COMMAND [options]\n"
          "       attn [--device SEL] COMMAND [options]\n"
          "       attn --help | --version\n"
          "\n"
          "libattn %s: attention (SDPA and multi-head attention) on any device.\n"
          "\n"
          "Commands:\n",
          PACKAGE_VERSION);
  for (size_t i = 0; i < N_COMMANDS; i++)
    fprintf(f, "  %-9s %s\n", commands[i].name, commands[i].summary);
  fprintf(f,
          "\n"
          "'attn COMMAND --help' describes a command. Every command takes --device SEL,\n"
          "a selector 'backend[:device]' with ',' separated alternatives (e.g. \"pocl,ref\");\n"
          "the default is $ATTN_DEVICE, else \"%s\". Backend modules are found\n"
          "in $ATTN_BACKEND_PATH, then the installed module directory.\n"
          "Exit status: 0 success, 1 failure, 2 usage error.\n",
          ATTN_DEFAULT_SELECTOR);
}

int main(int argc, char **argv) {
  opterr = 0; /* we print our own one-line messages */
  /* "attn --device SEL COMMAND ..." sets the device for the command */
  while (argc >= 2 && (!strcmp(argv[1], "--device") || !strncmp(argv[1], "--device=", 9))) {
    if (argv[1][8] == '=') {
      g_device = argv[1] + 9;
      argc -= 1;
      argv += 1;
    } else if (argc >= 3) {
      g_device = argv[2];
      argc -= 2;
      argv += 2;
    } else {
      cli_errline("option '--device' needs an argument (see 'attn --help')");
      return EXIT_USAGE;
    }
  }
  if (argc < 2) {
    cli_errline("no command given (commands: %s; see 'attn --help')", command_names());
    return EXIT_USAGE;
  }
  const char *cmd = argv[1];
  if (!strcmp(cmd, "--help") || !strcmp(cmd, "-h") || !strcmp(cmd, "help")) {
    help_main(stdout);
    return 0;
  }
  if (!strcmp(cmd, "--version") || !strcmp(cmd, "-V")) {
    printf("attn %s (libattn %s)\n", PACKAGE_VERSION, attn_version());
    return 0;
  }
  for (size_t i = 0; i < N_COMMANDS; i++) {
    if (strcmp(cmd, commands[i].name) == 0) {
      cli_cmd = commands[i].name;
      optind = 1;
      int rc = commands[i].run(argc - 1, argv + 1, g_device);
      if (fflush(stdout) != 0 && rc == 0) {
        cli_errline("cannot write to standard output: %s", strerror(errno));
        rc = EXIT_FAIL;
      }
      return rc;
    }
  }
  if (cmd[0] == '-') cli_errline("unknown option '%s' (see 'attn --help')", cmd);
  else cli_errline("unknown command '%s' (commands: %s; see 'attn --help')", cmd, command_names());
  return EXIT_USAGE;
}
