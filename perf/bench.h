/* bench: the benchmark programs of moe-bench, one function each (perf/bench_*.c). */
#ifndef MOE_BENCH_H
#define MOE_BENCH_H

/* argv after the benchmark's name; returns the exit status. */
int moe_bench_a2a(int argc, char **argv);
int moe_bench_layer(int argc, char **argv);
int moe_bench_planner(int argc, char **argv);
/* perf/bench_lockstep.c: GEMM work between all-reduces against the same work alone (under mpirun). */
int moe_bench_lockstep(int argc, char **argv);
/* perf/bench_calibrate.c: measures this machine, writes a hardware profile. */
int moe_bench_calibrate(int argc, char **argv);

#endif
