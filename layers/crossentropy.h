/*
** crossentropy: fused softmax + negative log-likelihood over a vocabulary.
**
** Forward: probs[N,V] = softmax(logits), losses[n] = -log probs[n, targets[n]].
** Returns the sum of losses (computed in double) so callers average it however
** the batch is split. Backward: dlogits += scale * (probs - onehot(targets)),
** where scale is d(total loss)/d(losses[n]), the same for every n (e.g.
** 1/tokens-in-global-batch). dlogits must not alias probs.
*/
#ifndef MOE_CROSSENTROPY_H
#define MOE_CROSSENTROPY_H

#include <stdint.h>

#include "layers/real.h"

double MOE_OP(crossentropy_forward)(real *losses, real *probs, const real *logits,
                                    const int32_t *targets, int N, int V);
void MOE_OP(crossentropy_backward)(real *dlogits, const real *probs, const int32_t *targets,
                                   int N, int V, real scale);

/*
** Vocabulary-parallel cross-entropy (Megatron's): each rank holds the logits
** of vocabulary columns [v0, v0 + Vl). Between the steps the caller sums over
** the ranks: mx by MAX after vp_max; sum and tl by SUM after vp_exp.
**   vp_max:    mx[n] = max of the local logits
**   vp_exp:    probs = exp(logits - mx) (unnormalised), sum[n] = their row sum,
**              tl[n] = logits[target] - mx where the target is local, else 0
**   vp_finish: probs /= sum, losses[n] = log(sum) - tl; returns the loss sum
**   vp_backward: dlogits += scale * (probs - onehot(target)) on local columns
*/
void MOE_OP(crossentropy_vp_max)(real *mx, const real *logits, int N, int Vl);
void MOE_OP(crossentropy_vp_exp)(real *probs, real *sum, real *tl, const real *logits, const real *mx,
                                 const int32_t *targets, int N, int Vl, int v0);
double MOE_OP(crossentropy_vp_finish)(real *losses, real *probs, const real *sum, const real *tl, int N, int Vl);
void MOE_OP(crossentropy_vp_backward)(real *dlogits, const real *probs, const int32_t *targets, int N, int Vl,
                                      int v0, real scale);

#endif
