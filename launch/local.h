/*
** local: `moe train`, the local launcher. Resolves the config (YAML + flags),
** refuses a bad one before starting anything, prepares the run directory
** (config.yaml, logs/), starts the worker process(es) and waits for them,
** forwarding Ctrl-C / SIGTERM so workers checkpoint and stop cleanly.
** Returns the exit status to give the user.
*/
#ifndef MOE_LOCAL_H
#define MOE_LOCAL_H

/* argv after "train". */
int moe_train_main(int argc, char **argv);

/* Directory holding this executable (for finding moe-worker, moe-bench). */
void moe_self_dir(char *buf, unsigned long cap);

#endif
