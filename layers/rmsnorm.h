/*
** rmsnorm: out[n,:] = inp[n,:] * rstd[n] * w, rstd[n] = 1/sqrt(mean(inp[n,:]^2) + eps).
** Forward saves rstd[N] for backward. Backward accumulates into dinp and dw.
*/
#ifndef MOE_RMSNORM_H
#define MOE_RMSNORM_H

#include "layers/real.h"

void MOE_OP(rmsnorm_forward)(real *out, real *rstd, const real *inp, const real *w, int N, int C,
                             real eps);
void MOE_OP(rmsnorm_backward)(real *dinp, real *dw, const real *dout, const real *inp,
                              const real *w, const real *rstd, int N, int C);

#endif
