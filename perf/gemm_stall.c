/* gemm_stall: see perf/gemm_stall.h. */
#include "perf/gemm_stall.h"

static double call_time(const int *s, double gflops) { return 2.0 * s[0] * s[1] * s[2] / gflops; }

int moe_gemm_stalled(const int (*mkn)[3], const double *gflops, int n, double factor, int *than)
{
    for (int i = 0; i < n; i++)
        for (int j = 0; j < n; j++) {
            const int *x = mkn[i], *y = mkn[j];
            int covers = y[0] >= x[0] && y[1] >= x[1] && y[2] >= x[2];
            if (j != i && covers && call_time(x, gflops[i]) > factor * call_time(y, gflops[j])) {
                *than = j;
                return i;
            }
        }
    return -1;
}
