/*
** args: what every `moe` subcommand shares: the flag conventions (`--name V`
** or `--name=V`, and a value never starts with `--`), how a subcommand ends
** (message and exit status), and JSON string output.
*/
#ifndef MOE_ARGS_H
#define MOE_ARGS_H

#include <stdio.h>

#include "runtime/base/status.h"

int moe_arg_is_flag(const char *a);
/* a is `name` or `name=...`. */
int moe_arg_is(const char *a, const char *name);
/* Value of "--name V" or "--name=V" at argv[*i]; advances *i past what it used. */
moe_status moe_arg_value(int argc, char **argv, int *i, const char *name, const char **out);

/* A flag's value as an int >= min / a finite number in [lo, hi]: the whole
** string, else MOE_ERR_USAGE naming the flag and the value. */
moe_status moe_arg_int(const char *name, const char *s, int min, int *out);
moe_status moe_arg_real(const char *name, const char *s, double lo, double hi, double *out);

/* A subcommand's exit: prints the failure ("PROG: error: ..." and, for bad
** usage, where to find the usage) and returns the exit status. */
int moe_cmd_exit(const char *prog, moe_status st);

/* s as a JSON string literal (quotes, backslashes and control bytes escaped;
** NULL writes ""). */
void moe_json_string(FILE *f, const char *s);

#endif
