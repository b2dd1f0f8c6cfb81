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

#endif
