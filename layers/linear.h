/*
** linear: out[N,OC] = inp[N,C] @ w[OC,C]^T. No bias (the model has none).
** Backward accumulates (+=) into dinp and dw; either may be NULL to skip it
** (the first layer needs no dinp).
*/
#ifndef MOE_LINEAR_H
#define MOE_LINEAR_H

#include "layers/real.h"

void MOE_OP(linear_forward)(real *out, const real *inp, const real *w, int N, int C, int OC);
void MOE_OP(linear_backward)(real *dinp, real *dw, const real *dout, const real *inp,
                             const real *w, int N, int C, int OC);

#endif
