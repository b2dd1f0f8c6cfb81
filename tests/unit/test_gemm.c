/*
** The BLAS door: moe_gemm against a naive triple loop in double, for every
** transpose combination and awkward sizes (odd, 1, 0), with the kernels the
** environment selects. ctest runs it twice: with OpenBLAS's own choice and
** with OPENBLAS_CORETYPE=SkylakeX, the AVX-512 kernels moe-worker picks on
** CPUs that have them (tests/gemm.cmake), so the fast path is checked too.
*/
#include <check.h>
#include <math.h>
#include <omp.h>
#include <stdlib.h>
#include <time.h>

#include "layers/gemm.h"

static void fill(float *x, int n, unsigned seed)
{
    for (int i = 0; i < n; i++) {
        seed = seed * 1103515245u + 12345u;
        x[i] = (float)((seed >> 8) % 2001) / 1000.0f - 1.0f;
    }
}

static void check_case(int ta, int tb, int M, int N, int K, float beta)
{
    float *A = malloc(sizeof(float) * (M * K + 1)), *B = malloc(sizeof(float) * (K * N + 1));
    float *C = malloc(sizeof(float) * (M * N + 1)), *C0 = malloc(sizeof(float) * (M * N + 1));
    ck_assert(A && B && C && C0);
    fill(A, M * K, 1);
    fill(B, K * N, 2);
    fill(C, M * N, 3);
    for (int i = 0; i < M * N; i++)
        C0[i] = C[i];
    int lda = ta ? M : K, ldb = tb ? K : N;
    moe_gemm(ta, tb, M, N, K, 0.5f, A, lda, B, ldb, beta, C, N);
    for (int i = 0; i < M; i++)
        for (int j = 0; j < N; j++) {
            double s = 0;
            for (int k = 0; k < K; k++) {
                double a = ta ? A[k * lda + i] : A[i * lda + k];
                double b = tb ? B[j * ldb + k] : B[k * ldb + j];
                s += a * b;
            }
            double want = 0.5 * s + beta * C0[i * N + j];
            ck_assert_msg(fabs(C[i * N + j] - want) <= 1e-4 * (1 + fabs(want)),
                          "ta=%d tb=%d M=%d N=%d K=%d: C[%d,%d] = %g, want %g", ta, tb, M, N, K, i, j,
                          C[i * N + j], want);
        }
    free(A);
    free(B);
    free(C);
    free(C0);
}

START_TEST(gemm_matches_naive)
{
    static const int sizes[][3] = {{1, 1, 1}, {7, 5, 3}, {64, 64, 64}, {257, 129, 65}, {3, 300, 17}, {5, 4, 0}};
    for (unsigned s = 0; s < sizeof sizes / sizeof *sizes; s++)
        for (int ta = 0; ta < 2; ta++)
            for (int tb = 0; tb < 2; tb++) {
                check_case(ta, tb, sizes[s][0], sizes[s][1], sizes[s][2], 0.0f);
                check_case(ta, tb, sizes[s][0], sizes[s][1], sizes[s][2], 1.0f);
            }
}
END_TEST

static double now(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec + 1e-9 * (double)t.tv_nsec;
}

/* The timer calibrate uses to take a kernel's GEMMs out of its time: on, the
** calls add their seconds (no more than the wall time around them, more than
** nothing) and still compute; off, nothing is added; another thread's calls
** go to that thread's accumulator only. */
START_TEST(gemm_timer_counts_this_threads_calls)
{
    enum { N = 96 };
    static float A[N * N], B[N * N], C[N * N];
    fill(A, N * N, 4);
    fill(B, N * N, 5);
    double acc = 0;
    moe_gemm_timer(&acc);
    double t0 = now();
    for (int r = 0; r < 20; r++)
        moe_gemm(0, 1, N, N, N, 1.0f, A, N, B, N, 0.0f, C, N);
    double wall = now() - t0;
    ck_assert_msg(acc > 0 && acc <= wall, "timed %g s of %g", acc, wall);
    double seen = acc;
    moe_gemm_timer(NULL);
    moe_gemm(0, 1, N, N, N, 1.0f, A, N, B, N, 0.0f, C, N);
    ck_assert(acc == seen);
    double other[2] = {0, 0};
    int team = 1;
#pragma omp parallel num_threads(2)
    {
        int t = omp_get_thread_num();
        moe_gemm_timer(&other[t]);
        if (t == 1) {
            team = omp_get_num_threads();
            moe_gemm(0, 1, N, N, N, 1.0f, A, N, B, N, 0.0f, C, N);
        }
        moe_gemm_timer(NULL);
    }
    ck_assert(acc == seen && other[0] == 0 && (team < 2 || other[1] > 0));
    check_case(0, 1, 33, 17, 9, 0.0f); /* and with the timer off again, still right */
}
END_TEST

int main(void)
{
    Suite *s = suite_create("gemm");
    TCase *tc = tcase_create("core");
    tcase_add_test(tc, gemm_matches_naive);
    tcase_add_test(tc, gemm_timer_counts_this_threads_calls);
    suite_add_tcase(s, tc);
    SRunner *sr = srunner_create(s);
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed ? 1 : 0;
}
