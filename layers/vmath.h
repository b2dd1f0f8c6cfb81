/*
** vmath: vectorisable elementwise math for the fp32 hot loops.
**
** moe_vexp is Cephes' expf polynomial (< 1 ulp from -87 to 88) in branch-free
** C that gcc vectorises, where glibc's expf stays a scalar call (~6x slower).
** Inputs are clamped to [-87.34, 88] (2^n stays a normal float); NaN passes
** through. The double build (gradient tests) uses libm's exp.
*/
#ifndef MOE_VMATH_H
#define MOE_VMATH_H

#include <math.h>
#include <stdint.h>
#include <string.h>

#include "layers/real.h"

#ifdef MOE_REAL_DOUBLE
static inline real moe_vexp(real x) { return exp(x); }
#else
static inline float moe_vexp(float x)
{
    x = x > 88.0f ? 88.0f : x;
    x = x < -87.33654f ? -87.33654f : x;
    float t = x * 1.44269504088896341f + 12582912.0f; // + 1.5*2^23 rounds x*log2(e) to an integer
    float n = t - 12582912.0f;
    uint32_t bits;
    memcpy(&bits, &t, sizeof bits);
    bits = (bits - 0x4B400000u + 127u) << 23; // the integer sits in t's low mantissa bits: 2^n
    float two_n;
    memcpy(&two_n, &bits, sizeof two_n);
    float r = x - n * 0.693359375f + n * 2.12194440e-4f; // x - n*ln2, ln2 split hi/lo
    float p = 1.9875691500e-4f;
    p = p * r + 1.3981999507e-3f;
    p = p * r + 8.3334519073e-3f;
    p = p * r + 4.1665795894e-2f;
    p = p * r + 1.6666665459e-1f;
    p = p * r + 5.0000001201e-1f;
    return (p * r * r + r + 1.0f) * two_n;
}
#endif

#endif
