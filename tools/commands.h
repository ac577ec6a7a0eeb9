/* The attn command's subcommands, one file each (tools/cmd_devices.c,
 * cmd_run.c, cmd_mha.c, cmd_layer.c, bench.c, tune.c), dispatched by tools/attn.c.
 *
 * Each runs with argv[0] == its name; default_device is the selector given
 * before the command ("attn --device SEL COMMAND"), or NULL. Each returns the
 * exit status: 0 ok, 1 failure, 2 usage error. help_* print the --help text. */
#ifndef ATTN_TOOLS_COMMANDS_H
#define ATTN_TOOLS_COMMANDS_H

#include <stdio.h>

int cmd_devices(int argc, char **argv, const char *default_device);
void help_devices(FILE *f);
int cmd_run(int argc, char **argv, const char *default_device);
void help_run(FILE *f);
int cmd_mha(int argc, char **argv, const char *default_device);
void help_mha(FILE *f);
int cmd_layer(int argc, char **argv, const char *default_device);
void help_layer(FILE *f);
int bench_main(int argc, char **argv, const char *default_device);
void bench_help(FILE *f);
int tune_main(int argc, char **argv, const char *default_device);
void tune_help(FILE *f);

#endif /* ATTN_TOOLS_COMMANDS_H */
