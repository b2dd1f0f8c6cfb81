#include "layers/embedding.h"

#include <limits.h>
#include <string.h>

/*
** Repeated tokens hit the same dwte row, so rows cannot be split across
** threads. Columns can: each thread owns a slab of columns and walks every
** token in order, which is race-free and sums in the same order as a serial
** loop whatever the thread count.
*/
#define EMB_COLS 64

void MOE_OP(embedding_range_forward)(real *out, const int32_t *tokens, const real *wte, int N, int C, int v0,
                                     int Vl)
{
#pragma omp parallel for schedule(static) if (N > 64)
    for (int n = 0; n < N; n++) {
        int v = tokens[n] - v0;
        if (v >= 0 && v < Vl)
            memcpy(out + (size_t)n * C, wte + (size_t)v * C, (size_t)C * sizeof(real));
        else
            memset(out + (size_t)n * C, 0, (size_t)C * sizeof(real));
    }
}

void MOE_OP(embedding_range_backward)(real *dwte, const real *dout, const int32_t *tokens, int N, int C, int v0,
                                      int Vl)
{
    int nslab = (C + EMB_COLS - 1) / EMB_COLS;
#pragma omp parallel for schedule(static) if ((long)N * C > 32768)
    for (int s = 0; s < nslab; s++) {
        int c0 = s * EMB_COLS;
        int c1 = c0 + EMB_COLS < C ? c0 + EMB_COLS : C;
        for (int n = 0; n < N; n++) {
            int v = tokens[n] - v0;
            if (v < 0 || v >= Vl)
                continue;
            real *restrict dst = dwte + (size_t)v * C;
            const real *restrict src = dout + (size_t)n * C;
            for (int c = c0; c < c1; c++)
                dst[c] += src[c];
        }
    }
}

// out is (N, C), wte is (V, C)
void MOE_OP(embedding_forward)(real *out, const int32_t *tokens, const real *wte, int N, int C)
{
    MOE_OP(embedding_range_forward)(out, tokens, wte, N, C, 0, INT_MAX);
}

void MOE_OP(embedding_backward)(real *dwte, const real *dout, const int32_t *tokens, int N, int C)
{
    MOE_OP(embedding_range_backward)(dwte, dout, tokens, N, C, 0, INT_MAX);
}
