/*
** embedding: out[N,C] = wte[tokens[n], :]. Tokens are checked by the data
** layer to be < V before they get here. Backward accumulates into dwte rows.
*/
#ifndef MOE_EMBEDDING_H
#define MOE_EMBEDDING_H

#include <stdint.h>

#include "layers/real.h"

void MOE_OP(embedding_forward)(real *out, const int32_t *tokens, const real *wte, int N, int C);
void MOE_OP(embedding_backward)(real *dwte, const real *dout, const int32_t *tokens, int N, int C);

#endif
