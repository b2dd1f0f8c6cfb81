#include "layers/rope.h"

#include <stddef.h>
#include <math.h>
#include <string.h>

// cos_t, sin_t are (T, HD/2); angles are computed in double, then rounded once
void MOE_OP(rope_table)(real *cos_t, real *sin_t, int T, int HD, double theta)
{
    int half = HD / 2;
    for (int i = 0; i < half; i++) {
        double freq = pow(theta, -2.0 * i / HD);
        for (int t = 0; t < T; t++) {
            double a = t * freq;
            cos_t[(size_t)t * half + i] = (real)cos(a);
            sin_t[(size_t)t * half + i] = (real)sin(a);
        }
    }
}

/*
** One (b, t) row holds NH + 2*NKV heads of HD. Each pair (i, i + HD/2) is read
** before it is written, so out may alias qkv.
*/
void MOE_OP(rope_forward)(real *out, const real *qkv, const real *cos_t, const real *sin_t, int B,
                          int T, int NH, int NKV, int HD)
{
    int half = HD / 2, C3 = (NH + 2 * NKV) * HD, nrot = NH + NKV;
    long rows = (long)B * T;
#pragma omp parallel for schedule(static) if (rows * C3 > 32768)
    for (long bt = 0; bt < rows; bt++) {
        int t = (int)(bt % T);
        const real *cs = cos_t + (size_t)t * half, *sn = sin_t + (size_t)t * half;
        const real *x = qkv + bt * C3;
        real *o = out + bt * C3;
        for (int h = 0; h < nrot; h++) {
            const real *xh = x + h * HD;
            real *oh = o + h * HD;
            for (int i = 0; i < half; i++) {
                real a = xh[i], b = xh[i + half];
                oh[i] = a * cs[i] - b * sn[i];
                oh[i + half] = b * cs[i] + a * sn[i];
            }
        }
        if (o != x) // value heads pass through
            memcpy(o + nrot * HD, x + nrot * HD, (size_t)NKV * HD * sizeof(real));
    }
}

// the transpose of the forward rotation: rotate dout by -angle, add into dqkv
void MOE_OP(rope_backward)(real *dqkv, const real *dout, const real *cos_t, const real *sin_t,
                           int B, int T, int NH, int NKV, int HD)
{
    int half = HD / 2, C3 = (NH + 2 * NKV) * HD, nrot = NH + NKV;
    long rows = (long)B * T;
#pragma omp parallel for schedule(static) if (rows * C3 > 32768)
    for (long bt = 0; bt < rows; bt++) {
        int t = (int)(bt % T);
        const real *restrict cs = cos_t + (size_t)t * half;
        const real *restrict sn = sin_t + (size_t)t * half;
        const real *restrict d = dout + bt * C3;
        real *restrict dx = dqkv + bt * C3;
        for (int h = 0; h < nrot; h++) {
            const real *restrict dh = d + h * HD;
            real *restrict xh = dx + h * HD;
            for (int i = 0; i < half; i++) {
                real a = dh[i], b = dh[i + half];
                xh[i] += a * cs[i] + b * sn[i];
                xh[i + half] += b * cs[i] - a * sn[i];
            }
        }
        for (int c = nrot * HD; c < C3; c++)
            dx[c] += d[c];
    }
}
