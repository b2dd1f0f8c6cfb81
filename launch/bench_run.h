/*
** bench_run: `moe bench ...` runs moe-bench from the same directory: alone,
** under a local mpirun (a2a, layer: --nproc N ranks), or for `layer --hosts N
** [--link-rate RATE]` on an emulated cluster (scripts/emu/emu.sh: up, mpirun,
** down, down also on failure or Ctrl-C). Returns the exit status.
*/
#ifndef MOE_BENCH_RUN_H
#define MOE_BENCH_RUN_H

int moe_bench_run(int argc, char **argv);

#endif
