/*
** adamw: one decoupled-weight-decay Adam step over a flat range of n params.
** step is 1-based (bias correction uses beta^step). weight_decay is passed per
** range so norms and biases get 0. Moments m, v live beside the params.
** The gradient used is grad * grad_scale: grad-norm clipping folds into the
** update instead of costing another pass over every gradient.
*/
#ifndef MOE_ADAMW_H
#define MOE_ADAMW_H

#include <stddef.h>

#include "layers/real.h"

void MOE_OP(adamw_update)(real *param, const real *grad, real *m, real *v, size_t n, real lr,
                          real beta1, real beta2, real eps, real weight_decay, long step,
                          real grad_scale);

/* Sum of squares of n values, accumulated in double (for the grad norm). */
double MOE_OP(sum_squares)(const real *x, size_t n);
/* x *= s over n values. */
void MOE_OP(scale)(real *x, size_t n, real s);

#endif
