#include "layers/rmsnorm.h"

#include <stddef.h>
#include <tgmath.h>

// out, inp are (N, C); w is (C); rstd is (N)
void MOE_OP(rmsnorm_forward)(real *out, real *rstd, const real *inp, const real *w, int N, int C,
                             real eps)
{
#pragma omp parallel for schedule(static) if ((long)N * C > 32768)
    for (int n = 0; n < N; n++) {
        const real *restrict x = inp + (size_t)n * C;
        real *restrict o = out + (size_t)n * C;
        real ss = 0;
#pragma omp simd reduction(+ : ss)
        for (int c = 0; c < C; c++)
            ss += x[c] * x[c];
        real r = (real)1 / sqrt(ss / (real)C + eps);
        rstd[n] = r;
        for (int c = 0; c < C; c++)
            o[c] = x[c] * r * w[c];
    }
}

/*
** With g = dout * w: dinp = r * g - r^3 / C * x * dot(g, x).
** dw sums over rows, so it gets its own pass split by column slabs (each
** thread walks all rows in order: no races, thread-count independent sums).
*/
#define RMS_COLS 64

void MOE_OP(rmsnorm_backward)(real *dinp, real *dw, const real *dout, const real *inp,
                              const real *w, const real *rstd, int N, int C)
{
#pragma omp parallel for schedule(static) if ((long)N * C > 32768)
    for (int n = 0; n < N; n++) {
        const real *restrict x = inp + (size_t)n * C;
        const real *restrict d = dout + (size_t)n * C;
        real *restrict dx = dinp + (size_t)n * C;
        real r = rstd[n];
        real dot = 0;
#pragma omp simd reduction(+ : dot)
        for (int c = 0; c < C; c++)
            dot += d[c] * w[c] * x[c];
        real k = r * r * r * dot / (real)C;
        for (int c = 0; c < C; c++)
            dx[c] += r * d[c] * w[c] - k * x[c];
    }

    int nslab = (C + RMS_COLS - 1) / RMS_COLS;
#pragma omp parallel for schedule(static) if ((long)N * C > 32768)
    for (int s = 0; s < nslab; s++) {
        int c0 = s * RMS_COLS;
        int c1 = c0 + RMS_COLS < C ? c0 + RMS_COLS : C;
        real *restrict g = dw;
        for (int n = 0; n < N; n++) {
            const real *restrict x = inp + (size_t)n * C;
            const real *restrict d = dout + (size_t)n * C;
            real r = rstd[n];
            for (int c = c0; c < c1; c++)
                g[c] += d[c] * x[c] * r;
        }
    }
}
