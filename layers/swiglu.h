/*
** swiglu: out[n, j] = silu(inp[n, j]) * inp[n, F + j] for j < F, where inp is
** (N, 2F): the gate projection's F columns, then the up projection's F columns
** (one fused GEMM computes both). silu(x) = x * sigmoid(x). Backward
** accumulates into dinp (N, 2F).
*/
#ifndef MOE_SWIGLU_H
#define MOE_SWIGLU_H

#include "layers/real.h"

void MOE_OP(swiglu_forward)(real *out, const real *inp, int N, int F);
void MOE_OP(swiglu_backward)(real *dinp, const real *dout, const real *inp, int N, int F);

#endif
