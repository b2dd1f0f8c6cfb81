/*
** gemm_stall: the check `moe bench calibrate` runs over its sgemm timings. A
** GEMM no larger than another in any dimension cannot take much longer per
** call; when one does, every window of its measurement ran slow (a BLAS
** thread lost its core for all of it, once putting a 1-MFLOP shape at
** 0.0004 of the peak and a prediction 100x off), and calibrate measures it
** again rather than write it into a profile.
*/
#ifndef MOE_GEMM_STALL_H
#define MOE_GEMM_STALL_H

/* n shapes mkn[i] = {M, K, N} with rates gflops[i] > 0: the first shape i
** whose call took over `factor` times as long as that of a shape j != i no
** smaller in any dimension (*than = j), or -1 (then *than is untouched). */
int moe_gemm_stalled(const int (*mkn)[3], const double *gflops, int n, double factor, int *than);

#endif
