/*
** rope: rotary position embedding on the fused qkv activation.
**
** qkv is (B, T, NH + 2*NKV, HD): NH query heads, then NKV key heads, then NKV
** value heads. The query and key heads are rotated, value heads are copied.
** Rotation pairs element i with i + HD/2 (the "rotate_half" convention of
** GPT-NeoX / Llama in Hugging Face), angle t * theta^(-2i/HD):
**   out[i]        = x[i] cos - x[i+HD/2] sin
**   out[i+HD/2]   = x[i+HD/2] cos + x[i] sin
** rope_table fills cos/sin[T, HD/2] once per model. Backward accumulates.
*/
#ifndef MOE_ROPE_H
#define MOE_ROPE_H

#include "layers/real.h"

void MOE_OP(rope_table)(real *cos_t, real *sin_t, int T, int HD, double theta);
void MOE_OP(rope_forward)(real *out, const real *qkv, const real *cos_t, const real *sin_t, int B,
                          int T, int NH, int NKV, int HD);
void MOE_OP(rope_backward)(real *dqkv, const real *dout, const real *cos_t, const real *sin_t,
                           int B, int T, int NH, int NKV, int HD);

#endif
