/* Helpers shared by the attn command's subcommands (tools/attn.c, tools/bench.c):
 * the one-line error messages and what more than one command needs. */
#ifndef ATTN_TOOLS_CLI_H
#define ATTN_TOOLS_CLI_H

#include <stdint.h>

#include "attn.h"

/* Exit status of every command: 0 success, these on failure. */
#define EXIT_FAIL 1
#define EXIT_USAGE 2

/* The running subcommand ("run", "bench", ...), named in every message; NULL
 * before one is chosen. */
extern const char *cli_cmd;

/* One line on stderr: "attn: <cmd>: <message>", newlines in the message (a
 * library message listing devices, say) folded into "; ". */
void cli_errline(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

/* A failed libattn call: prints its thread-local message (it names the
 * function and the argument) after `where` (which part of the run, e.g.
 * "--check"; NULL or "" for none). Returns EXIT_FAIL. */
int cli_lib_fail(attn_status s, const char *where);

/* A usage error, pointing at the command's --help. Returns EXIT_USAGE. */
int cli_usage_fail(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

/* Monotonic wall clock in milliseconds, for timing runs. */
double cli_now_ms(void);

/* n floats uniform in [-1, 1) from a xorshift64* state (deterministic for a
 * seed on every platform), malloc'ed; NULL when out of memory. */
float *cli_random_floats(int64_t n, uint64_t *state);

#endif /* ATTN_TOOLS_CLI_H */
