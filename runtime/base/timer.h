/* timer: monotonic wall-clock seconds, for step times and benchmarks. */
#ifndef MOE_TIMER_H
#define MOE_TIMER_H

#include <time.h>

static inline double moe_now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

#endif
