/*
** attention: causal multi-head attention with grouped-query heads.
**
** qkv is (B, T, NH + 2*NKV, HD) as rope.h lays it out (already rotated);
** query head h reads key/value head h / (NH/NKV). out is (B, T, NH, HD).
** att (B, NH, T, T) holds the softmax probabilities (zero above the
** diagonal) and is saved for backward. Scale is 1/sqrt(HD).
** Backward accumulates into dqkv; scratch must hold B*NH*T*T reals.
*/
#ifndef MOE_ATTENTION_H
#define MOE_ATTENTION_H

#include "layers/real.h"

void MOE_OP(attention_forward)(real *out, real *att, const real *qkv, int B, int T, int NH,
                               int NKV, int HD);
void MOE_OP(attention_backward)(real *dqkv, real *scratch, const real *dout, const real *att,
                                const real *qkv, int B, int T, int NH, int NKV, int HD);

#endif
