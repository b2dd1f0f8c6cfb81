#include "layers/linear.h"

#include "layers/gemm.h"

/*
** All three products go to BLAS from outside any parallel region, so OpenBLAS
** threads them itself (its own partitioning splits M/N, never K, so results do
** not depend on the thread count).
*/

// out is (N, OC), inp is (N, C), w is (OC, C)
void MOE_OP(linear_forward)(real *out, const real *inp, const real *w, int N, int C, int OC)
{
    MOE_OP(gemm)(0, 1, N, OC, C, (real)1, inp, C, w, C, (real)0, out, OC);
}

// dout is (N, OC); dinp (N, C) and dw (OC, C) are accumulated into
void MOE_OP(linear_backward)(real *dinp, real *dw, const real *dout, const real *inp,
                             const real *w, int N, int C, int OC)
{
    if (dinp) // dinp += dout @ w
        MOE_OP(gemm)(0, 0, N, C, OC, (real)1, dout, OC, w, C, (real)1, dinp, C);
    if (dw) // dw += dout^T @ inp
        MOE_OP(gemm)(1, 0, OC, C, N, (real)1, dout, OC, inp, C, (real)1, dw, C);
}
