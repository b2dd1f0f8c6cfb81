#include "layers/gemm.h"

#include <cblas.h>
#include <time.h>

static _Thread_local double *timer_acc;

void MOE_OP(gemm_timer)(double *acc) { timer_acc = acc; }

static double seconds(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec + 1e-9 * (double)t.tv_nsec;
}

static void blas(int ta, int tb, int M, int N, int K, real alpha, const real *A, int lda, const real *B, int ldb,
                 real beta, real *C, int ldc)
{
#ifdef MOE_REAL_DOUBLE
    cblas_dgemm(CblasRowMajor, ta ? CblasTrans : CblasNoTrans, tb ? CblasTrans : CblasNoTrans, M, N,
                K, alpha, A, lda, B, ldb, beta, C, ldc);
#else
    cblas_sgemm(CblasRowMajor, ta ? CblasTrans : CblasNoTrans, tb ? CblasTrans : CblasNoTrans, M, N,
                K, alpha, A, lda, B, ldb, beta, C, ldc);
#endif
}

void MOE_OP(gemm)(int ta, int tb, int M, int N, int K, real alpha, const real *A, int lda,
                  const real *B, int ldb, real beta, real *C, int ldc)
{
    if (M == 0 || N == 0)
        return;
    if (K == 0) { /* BLAS leaves C alone when K == 0 only if beta == 1 */
        for (int i = 0; i < M; i++)
            for (int j = 0; j < N; j++)
                C[(long)i * ldc + j] *= beta;
        return;
    }
    double *acc = timer_acc;
    if (!acc) {
        blas(ta, tb, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc);
        return;
    }
    double t0 = seconds();
    blas(ta, tb, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc);
    *acc += seconds() - t0;
}
