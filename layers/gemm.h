/*
** gemm: the one door from layers/ to BLAS.
**
** Row-major C[M,N] = alpha * op(A)[M,K] * op(B)[K,N] + beta * C, where op(X) is
** X or its transpose (ta/tb nonzero). lda/ldb/ldc are row strides in elements.
** Called inside an OpenMP parallel region it runs single-threaded (OpenBLAS's
** OpenMP build detects the region), so ops may parallelise over independent
** GEMMs themselves.
**
** gemm_timer (for `moe bench calibrate`, which needs a kernel's time apart
** from its GEMMs'): while a thread has set a non-NULL accumulator, every GEMM
** call on that thread adds its seconds (CLOCK_MONOTONIC) to it; NULL stops it.
** Per thread, so each thread of a parallel region sets its own. Off, a call
** costs one thread-local load more.
*/
#ifndef MOE_GEMM_H
#define MOE_GEMM_H

#include "layers/real.h"

void MOE_OP(gemm)(int ta, int tb, int M, int N, int K, real alpha, const real *A, int lda,
                  const real *B, int ldb, real beta, real *C, int ldc);
void MOE_OP(gemm_timer)(double *acc);

#endif
