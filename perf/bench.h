/* bench: the benchmark programs of moe-bench, one function each (perf/bench_*.c). */
#ifndef MOE_BENCH_H
#define MOE_BENCH_H

/* qsort's order of doubles; the median of n > 0 values (v sorted in place,
** the mean of the middle two when n is even). perf/bench_stats.c. */
int moe_bench_cmp_double(const void *a, const void *b);
double moe_bench_median(double *v, int n);

/* argv after the benchmark's name; returns the exit status. */
int moe_bench_a2a(int argc, char **argv);
int moe_bench_layer(int argc, char **argv);
int moe_bench_planner(int argc, char **argv);
/* perf/bench_lockstep.c: GEMM work between all-reduces against the same work alone (under mpirun). */
int moe_bench_lockstep(int argc, char **argv);
/* perf/bench_calibrate.c: measures this machine, writes a hardware profile. */
int moe_bench_calibrate(int argc, char **argv);

#endif
