/*
** args: the flag conventions every `moe` subcommand shares: `--name V` or
** `--name=V`, and a value never starts with `--`.
*/
#ifndef MOE_ARGS_H
#define MOE_ARGS_H

#include "runtime/base/status.h"

int moe_arg_is_flag(const char *a);
/* a is `name` or `name=...`. */
int moe_arg_is(const char *a, const char *name);
/* Value of "--name V" or "--name=V" at argv[*i]; advances *i past what it used. */
moe_status moe_arg_value(int argc, char **argv, int *i, const char *name, const char **out);

#endif
