#include "layers/adamw.h"

#include <math.h>

#define PAR_MIN 32768

/*
** p -= lr * (mhat / (sqrt(vhat) + eps) + wd * p), with mhat = m / (1 - beta1^step),
** vhat = v / (1 - beta2^step). The bias corrections are folded into two
** per-step constants computed in double.
*/
// param, grad, m, v are (n)
void MOE_OP(adamw_update)(real *param, const real *grad, real *m, real *v, size_t n, real lr,
                          real beta1, real beta2, real eps, real weight_decay, long step,
                          real grad_scale)
{
    real c1 = (real)(1.0 / (1.0 - pow((double)beta1, (double)step)));
    real c2 = (real)(1.0 / (1.0 - pow((double)beta2, (double)step)));
    real *restrict p = param;
    const real *restrict g = grad;
    real *restrict mm = m;
    real *restrict vv = v;
#pragma omp parallel for simd schedule(static) if (n > PAR_MIN)
    for (size_t i = 0; i < n; i++) {
        real gi = g[i] * grad_scale;
        real mi = beta1 * mm[i] + ((real)1 - beta1) * gi;
        real vi = beta2 * vv[i] + ((real)1 - beta2) * gi * gi;
        mm[i] = mi;
        vv[i] = vi;
#ifdef MOE_REAL_DOUBLE
        real den = sqrt(vi * c2) + eps;
#else
        real den = sqrtf(vi * c2) + eps;
#endif
        p[i] -= lr * (mi * c1 / den + weight_decay * p[i]);
    }
}

/*
** Fixed chunking: the chunk size depends only on n (at most SS_MAXCHUNKS
** chunks), each chunk's partial is summed in double, then the partials are
** added serially in chunk order. Bit-identical for any thread count, and no
** allocation.
*/
#define SS_MINCHUNK 16384
#define SS_MAXCHUNKS 256

double MOE_OP(sum_squares)(const real *x, size_t n)
{
    size_t chunk = (n + SS_MAXCHUNKS - 1) / SS_MAXCHUNKS;
    if (chunk < SS_MINCHUNK)
        chunk = SS_MINCHUNK;
    int nchunk = (int)((n + chunk - 1) / chunk);
    double part[SS_MAXCHUNKS];
#pragma omp parallel for schedule(static) if (nchunk > 1)
    for (int c = 0; c < nchunk; c++) {
        size_t i0 = (size_t)c * chunk, i1 = i0 + chunk < n ? i0 + chunk : n;
        double s = 0;
#pragma omp simd reduction(+ : s)
        for (size_t i = i0; i < i1; i++)
            s += (double)x[i] * (double)x[i];
        part[c] = s;
    }
    double total = 0;
    for (int c = 0; c < nchunk; c++)
        total += part[c];
    return total;
}

void MOE_OP(scale)(real *x, size_t n, real s)
{
#pragma omp parallel for simd schedule(static) if (n > PAR_MIN)
    for (size_t i = 0; i < n; i++)
        x[i] *= s;
}
