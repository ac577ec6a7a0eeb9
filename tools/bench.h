/* attn bench: the benchmark sweep of the attn command (tools/bench.c). */
#ifndef ATTN_TOOLS_BENCH_H
#define ATTN_TOOLS_BENCH_H

#include <stdio.h>

/* Run `attn bench` with argv[0] == "bench"; default_device is the selector
 * list given before the command ("attn --device SEL bench"), or NULL.
 * Returns the exit status: 0 ok, 1 failure, 2 usage error. */
int bench_main(int argc, char **argv, const char *default_device);
/* The --help text. */
void bench_help(FILE *f);

#endif /* ATTN_TOOLS_BENCH_H */
