#include "layers/crossentropy.h"

#include <stddef.h>
#include <stdint.h>
#include <string.h>
#include <tgmath.h>

/*
** Exponential for the fp32 hot loops: Cephes' expf polynomial (< 1 ulp from
** -87 to 88) in branch-free C that gcc vectorises, where glibc's expf stays a
** scalar call (~6x slower). Inputs are clamped to [-87.34, 88] (2^n stays a
** normal float); NaN passes through. The double build (gradient tests) uses
** libm. The same helper is in attention.c, swiglu.c and crossentropy.c.
*/
#ifdef MOE_REAL_DOUBLE
static inline real fast_exp(real x) { return exp(x); }
#else
static inline float fast_exp(float x)
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

/*
** losses[n] = log(sum exp(l - max)) - (l[target] - max): the same value as
** -log(probs[target]) but without the underflow of a tiny fp32 probability.
** The row sum is accumulated in double (V is vocabulary-sized).
*/
// losses is (N), probs and logits are (N, V), targets is (N)
double MOE_OP(crossentropy_forward)(real *losses, real *probs, const real *logits,
                                    const int32_t *targets, int N, int V)
{
#pragma omp parallel for schedule(static) if ((long)N * V > 16384)
    for (int n = 0; n < N; n++) {
        const real *restrict l = logits + (size_t)n * V;
        real *restrict p = probs + (size_t)n * V;
        real mx = l[0];
#pragma omp simd reduction(max : mx)
        for (int j = 1; j < V; j++)
            mx = l[j] > mx ? l[j] : mx;
        double sum = 0;
#pragma omp simd reduction(+ : sum)
        for (int j = 0; j < V; j++) {
            p[j] = fast_exp(l[j] - mx);
            sum += p[j];
        }
        real inv = (real)(1.0 / sum);
        for (int j = 0; j < V; j++)
            p[j] *= inv;
        losses[n] = (real)(log(sum) - (double)(l[targets[n]] - mx));
    }
    double total = 0; // serial, in row order: the same sum whatever the thread count
    for (int n = 0; n < N; n++)
        total += losses[n];
    return total;
}

/*
** When dlogits == probs there is nothing to accumulate into: the gradient
** overwrites the probabilities, dlogits = scale * (probs - onehot).
*/
void MOE_OP(crossentropy_backward)(real *dlogits, const real *probs, const int32_t *targets,
                                   int N, int V, real scale)
{
    real keep = dlogits == probs ? (real)0 : (real)1;
#pragma omp parallel for schedule(static) if ((long)N * V > 16384)
    for (int n = 0; n < N; n++) {
        const real *p = probs + (size_t)n * V;
        real *d = dlogits + (size_t)n * V;
        for (int j = 0; j < V; j++)
            d[j] = keep * d[j] + scale * p[j];
        d[targets[n]] -= scale;
    }
}
