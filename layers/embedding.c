#include "layers/embedding.h"

#include <string.h>

// out is (N, C), wte is (V, C)
void MOE_OP(embedding_forward)(real *out, const int32_t *tokens, const real *wte, int N, int C)
{
#pragma omp parallel for schedule(static) if (N > 64)
    for (int n = 0; n < N; n++)
        memcpy(out + (size_t)n * C, wte + (size_t)tokens[n] * C, (size_t)C * sizeof(real));
}

/*
** Repeated tokens hit the same dwte row, so rows cannot be split across
** threads. Columns can: each thread owns a slab of columns and walks every
** token in order, which is race-free and sums in the same order as a serial
** loop whatever the thread count.
*/
#define EMB_COLS 64

void MOE_OP(embedding_backward)(real *dwte, const real *dout, const int32_t *tokens, int N, int C)
{
    int nslab = (C + EMB_COLS - 1) / EMB_COLS;
#pragma omp parallel for schedule(static) if ((long)N * C > 32768)
    for (int s = 0; s < nslab; s++) {
        int c0 = s * EMB_COLS;
        int c1 = c0 + EMB_COLS < C ? c0 + EMB_COLS : C;
        for (int n = 0; n < N; n++) {
            real *restrict dst = dwte + (size_t)tokens[n] * C;
            const real *restrict src = dout + (size_t)n * C;
            for (int c = c0; c < c1; c++)
                dst[c] += src[c];
        }
    }
}
