/*
** local: `moe train`, the local launcher. Resolves the config (YAML + flags),
** refuses a bad one before starting anything, prepares the run directory
** (config.yaml, logs/), starts the worker process(es) and waits for them,
** forwarding Ctrl-C / SIGTERM so workers checkpoint and stop cleanly.
** Returns the exit status to give the user.
*/
#ifndef MOE_LOCAL_H
#define MOE_LOCAL_H

#include "runtime/base/config.h"

/* argv after "train". */
int moe_train_main(int argc, char **argv);

/* Refuses (MOE_ERR_USAGE, naming the problem) a resolved config whose
** layout, model or expert placement the workers would refuse, before any
** of them starts: moe train and moe submit call it. */
moe_status moe_train_check_layout(const moe_config *c);

/* Directory holding this executable (for finding moe-worker, moe-bench). */
void moe_self_dir(char *buf, unsigned long cap);

#endif
