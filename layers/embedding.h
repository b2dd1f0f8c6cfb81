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

/* Vocabulary-parallel pieces: wte holds rows [v0, v0 + Vl) of the table;
** a token outside them gives a zero row (another rank has it) and no
** gradient here. */
void MOE_OP(embedding_range_forward)(real *out, const int32_t *tokens, const real *wte, int N, int C, int v0,
                                     int Vl);
void MOE_OP(embedding_range_backward)(real *dwte, const real *dout, const int32_t *tokens, int N, int C, int v0,
                                      int Vl);

#endif
