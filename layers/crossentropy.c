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
