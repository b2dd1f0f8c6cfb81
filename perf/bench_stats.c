/* bench_stats: the order and median every benchmark reports its samples by (perf/bench.h). */
#include <stdlib.h>

#include "perf/bench.h"

int moe_bench_cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

double moe_bench_median(double *v, int n)
{
    qsort(v, (size_t)n, sizeof *v, moe_bench_cmp_double);
    return n % 2 ? v[n / 2] : 0.5 * (v[n / 2 - 1] + v[n / 2]);
}
