/*
** peak: the machine's measured fp32 GEMM peak, the denominator of MFU.
**
** moe_peak_measure times large square sgemms (through layers/gemm, so with
** the same BLAS kernels and threads the trainer uses) and keeps the best rate.
** The result is cached per (host, thread count, BLAS core type) in
** $MOE_CACHE_DIR or ~/.cache/moe/peak-<host>-t<threads>-<core>.json, so
** `moe bench gemm` measures once and every run after reads it.
*/
#ifndef MOE_PEAK_H
#define MOE_PEAK_H

#include "runtime/base/status.h"

typedef struct {
    double gflops;   /* best measured sgemm rate */
    int threads;
    int size;        /* M = N = K of the timed GEMM */
    char coretype[32];
} moe_peak;

moe_status moe_peak_measure(moe_peak *out, int size, int reps);
/* Reads the cache (on a miss measures and stores it), then raises the result
** to the best per-thread rate any cached thread count of this host and BLAS
** core type has shown, times this thread count. */
moe_status moe_peak_get(moe_peak *out);
/* Stores a measurement unless the cache already holds a higher one: the
** peak is the best the machine has shown, and a busy moment must not lower
** it (that would inflate MFU). *p becomes what the cache holds. */
moe_status moe_peak_store(moe_peak *p);
moe_status moe_peak_cache_path(char *buf, size_t cap);

#endif
