#include "layers/swiglu.h"
#include "layers/vmath.h"

#include <stddef.h>
#include <stdint.h>
#include <string.h>
#include <tgmath.h>


// out is (N, F), inp is (N, 2F): gate columns [0, F), up columns [F, 2F)
void MOE_OP(swiglu_forward)(real *out, const real *inp, int N, int F)
{
#pragma omp parallel for schedule(static) if ((long)N * F > 16384)
    for (int n = 0; n < N; n++) {
        const real *restrict g = inp + (size_t)n * 2 * F;
        const real *restrict u = g + F;
        real *restrict o = out + (size_t)n * F;
        for (int j = 0; j < F; j++)
            o[j] = g[j] / ((real)1 + moe_vexp(-g[j])) * u[j];
    }
}

// d silu(g)/dg = s + g * s * (1 - s), s = sigmoid(g)
void MOE_OP(swiglu_backward)(real *dinp, const real *dout, const real *inp, int N, int F)
{
#pragma omp parallel for schedule(static) if ((long)N * F > 16384)
    for (int n = 0; n < N; n++) {
        const real *restrict g = inp + (size_t)n * 2 * F;
        const real *restrict u = g + F;
        const real *restrict d = dout + (size_t)n * F;
        real *restrict dg = dinp + (size_t)n * 2 * F;
        real *restrict du = dg + F;
        for (int j = 0; j < F; j++) {
            real s = (real)1 / ((real)1 + moe_vexp(-g[j]));
            du[j] += d[j] * g[j] * s;
            dg[j] += d[j] * u[j] * s * ((real)1 + g[j] * ((real)1 - s));
        }
    }
}
