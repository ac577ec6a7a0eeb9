/* attn tune: the backend's tuning parameters measured on a device (tools/tune.c). */
#ifndef ATTN_TOOLS_TUNE_H
#define ATTN_TOOLS_TUNE_H

#include <stdio.h>

/* Run `attn tune` with argv[0] == "tune"; default_device is the selector given
 * before the command, or NULL. Returns the exit status: 0 ok, 1 failure, 2
 * usage error. */
int tune_main(int argc, char **argv, const char *default_device);
/* The --help text. */
void tune_help(FILE *f);

#endif /* ATTN_TOOLS_TUNE_H */
