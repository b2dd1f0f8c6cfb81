#include "layers/crossentropy.h"
#include "layers/vmath.h"

#include <stddef.h>
#include <stdint.h>
#include <string.h>
#include <tgmath.h>


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
            p[j] = moe_vexp(l[j] - mx);
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

// dlogits and probs are (N, V), distinct buffers (see the header)
void MOE_OP(crossentropy_backward)(real *dlogits, const real *probs, const int32_t *targets,
                                   int N, int V, real scale)
{
#pragma omp parallel for schedule(static) if ((long)N * V > 16384)
    for (int n = 0; n < N; n++) {
        const real *restrict p = probs + (size_t)n * V;
        real *restrict d = dlogits + (size_t)n * V;
        for (int j = 0; j < V; j++)
            d[j] += scale * p[j];
        d[targets[n]] -= scale;
    }
}

void MOE_OP(crossentropy_vp_max)(real *mx, const real *logits, int N, int Vl)
{
#pragma omp parallel for schedule(static) if ((long)N * Vl > 16384)
    for (int n = 0; n < N; n++) {
        const real *restrict l = logits + (size_t)n * Vl;
        real m = l[0];
        for (int j = 1; j < Vl; j++)
            m = l[j] > m ? l[j] : m;
        mx[n] = m;
    }
}

void MOE_OP(crossentropy_vp_exp)(real *probs, real *sum, real *tl, const real *logits, const real *mx,
                                 const int32_t *targets, int N, int Vl, int v0)
{
#pragma omp parallel for schedule(static) if ((long)N * Vl > 16384)
    for (int n = 0; n < N; n++) {
        const real *restrict l = logits + (size_t)n * Vl;
        real *restrict p = probs + (size_t)n * Vl;
        double s = 0;
        for (int j = 0; j < Vl; j++) {
            p[j] = moe_vexp(l[j] - mx[n]);
            s += p[j];
        }
        sum[n] = (real)s;
        int t = targets[n] - v0;
        tl[n] = t >= 0 && t < Vl ? l[t] - mx[n] : 0;
    }
}

double MOE_OP(crossentropy_vp_finish)(real *losses, real *probs, const real *sum, const real *tl, int N, int Vl)
{
#pragma omp parallel for schedule(static) if ((long)N * Vl > 16384)
    for (int n = 0; n < N; n++) {
        real *restrict p = probs + (size_t)n * Vl;
        real inv = (real)(1.0 / sum[n]);
        for (int j = 0; j < Vl; j++)
            p[j] *= inv;
        losses[n] = (real)(log((double)sum[n]) - (double)tl[n]);
    }
    double total = 0; // serial, in row order
    for (int n = 0; n < N; n++)
        total += losses[n];
    return total;
}

void MOE_OP(crossentropy_vp_backward)(real *dlogits, const real *probs, const int32_t *targets, int N, int Vl,
                                      int v0, real scale)
{
#pragma omp parallel for schedule(static) if ((long)N * Vl > 16384)
    for (int n = 0; n < N; n++) {
        const real *restrict p = probs + (size_t)n * Vl;
        real *restrict d = dlogits + (size_t)n * Vl;
        for (int j = 0; j < Vl; j++)
            d[j] += scale * p[j];
        int t = targets[n] - v0;
        if (t >= 0 && t < Vl)
            d[t] -= scale;
    }
}
