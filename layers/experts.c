#include "layers/experts.h"

#include <stddef.h>
#include <string.h>

#include "layers/gemm.h"
#include "layers/swiglu.h"

/* ----------------------------------------------------------------- plan */

/*
** The plan needs no scratch memory: slot_row (N*K) first holds every pair's
** flat index bucketed by expert (a counting sort, so each bucket is in
** (token, slot) order), each bucket is then cut down to its kept pairs in
** place, the kept pairs become rows, and only then is slot_row filled with
** its real meaning.
*/

// a sorts before b: the larger topk_w first (w != NULL), then the lower flat
// index, which is the lower token (a token routes to an expert at most once)
static inline int sorts_before(int32_t a, int32_t b, const real *w)
{
    if (w && w[a] != w[b])
        return w[a] > w[b];
    return a < b;
}

static void sift_down(int32_t *v, int root, int n, const real *w)
{
    for (;;) {
        int child = 2 * root + 1;
        if (child >= n)
            return;
        if (child + 1 < n && sorts_before(v[child], v[child + 1], w))
            child++;
        if (!sorts_before(v[root], v[child], w))
            return;
        int32_t t = v[root];
        v[root] = v[child];
        v[child] = t;
        root = child;
    }
}

// in-place heapsort by sorts_before: O(n log n), no scratch, and the order is
// total, so the result is unique
static void sort_pairs(int32_t *v, int n, const real *w)
{
    for (int i = n / 2 - 1; i >= 0; i--)
        sift_down(v, i, n, w);
    for (int end = n - 1; end > 0; end--) {
        int32_t t = v[0];
        v[0] = v[end];
        v[end] = t;
        sift_down(v, 0, end, w);
    }
}

// counts[e] = pairs routed to e; bucket[offsets[e] .. offsets[e+1]) = their flat indices, ascending
static void bucket_by_expert(int32_t *bucket, int32_t *counts, int32_t *offsets,
                             const int32_t *topk_idx, int NK, int E)
{
    memset(counts, 0, sizeof(int32_t) * (size_t)E);
    for (int i = 0; i < NK; i++)
        counts[topk_idx[i]]++;
    offsets[0] = 0;
    for (int e = 0; e < E; e++)
        offsets[e + 1] = offsets[e] + counts[e];
    for (int i = 0; i < NK; i++) // offsets[e] walks to the end of bucket e ...
        bucket[offsets[topk_idx[i]]++] = i;
    for (int e = E; e > 0; e--) // ... so shifting them back restores the starts
        offsets[e] = offsets[e - 1];
    offsets[0] = 0;
}

// PROBS: moves the `capacity` highest-weight pairs of each over-full bucket to
// its front, back in (token, slot) order. POSITION needs nothing: the front of
// a bucket already holds the earliest tokens.
static void keep_highest(int32_t *bucket, const int32_t *counts, const int32_t *offsets,
                         const real *topk_w, int E, int capacity)
{
#pragma omp parallel for schedule(dynamic, 1)
    for (int e = 0; e < E; e++) {
        if (counts[e] <= capacity)
            continue;
        int32_t *b = bucket + offsets[e];
        sort_pairs(b, counts[e], topk_w);
        sort_pairs(b, capacity, NULL);
    }
}

int MOE_OP(route_plan)(int32_t *counts, int32_t *offsets, int32_t *slot_row, int32_t *row_token,
                       int32_t *row_slot, const int32_t *topk_idx, const real *topk_w, int N,
                       int E, int K, int capacity, moe_drop_policy policy, int pad)
{
    if (N < 0 || E <= 0 || K < 0)
        return -1;
    int NK = N * K;
    for (int i = 0; i < NK; i++)
        if (topk_idx[i] < 0 || topk_idx[i] >= E)
            return -1;
    int capped = capacity > 0;
    if (capped && policy == MOE_DROP_PROBS && !topk_w)
        return -1;

    bucket_by_expert(slot_row, counts, offsets, topk_idx, NK, E);
    if (capped && policy == MOE_DROP_PROBS)
        keep_highest(slot_row, counts, offsets, topk_w, E, capacity);

    // kept pairs become rows, expert by expert; offsets turn from bucket
    // starts into row starts (bucket starts are re-derived from the counts)
    int r = 0, bstart = 0;
    for (int e = 0; e < E; e++) {
        int routed = counts[e];
        int kept = capped && routed > capacity ? capacity : routed;
        offsets[e] = r;
        for (int j = 0; j < kept; j++, r++) {
            int32_t i = slot_row[bstart + j];
            row_slot[r] = i;
            row_token[r] = i / K;
        }
        for (int j = kept; capped && pad && j < capacity; j++, r++)
            row_slot[r] = row_token[r] = -1;
        counts[e] = kept;
        bstart += routed;
    }
    offsets[E] = r;

    for (int i = 0; i < NK; i++)
        slot_row[i] = -1;
    for (int q = 0; q < r; q++)
        if (row_slot[q] >= 0)
            slot_row[row_slot[q]] = q;
    return r;
}

/* -------------------------------------------------- permute / unpermute */

// xs is (R, C), x is (N, C)
void MOE_OP(permute_forward)(real *xs, const real *x, const int32_t *row_token, int R, int C)
{
#pragma omp parallel for schedule(static) if ((long)R * C > 32768)
    for (int r = 0; r < R; r++) {
        real *dst = xs + (size_t)r * C;
        if (row_token[r] < 0)
            memset(dst, 0, sizeof(real) * (size_t)C);
        else
            memcpy(dst, x + (size_t)row_token[r] * C, sizeof(real) * (size_t)C);
    }
}

// gathers per token (not scatters per row), so each dx row sums its slots in
// slot order with no two threads writing one row
void MOE_OP(permute_backward)(real *dx, const real *dxs, const int32_t *slot_row, int N, int K,
                              int C)
{
#pragma omp parallel for schedule(static) if ((long)N * K * C > 32768)
    for (int n = 0; n < N; n++) {
        real *restrict d = dx + (size_t)n * C;
        for (int k = 0; k < K; k++) {
            int32_t r = slot_row[(size_t)n * K + k];
            if (r < 0)
                continue;
            const real *restrict g = dxs + (size_t)r * C;
            for (int c = 0; c < C; c++)
                d[c] += g[c];
        }
    }
}

// out is (N, C), ys is (R, C), topk_w is (N, K); out is written
void MOE_OP(unpermute_forward)(real *out, const real *ys, const real *topk_w,
                               const int32_t *slot_row, int N, int K, int C)
{
#pragma omp parallel for schedule(static) if ((long)N * K * C > 32768)
    for (int n = 0; n < N; n++) {
        real *restrict o = out + (size_t)n * C;
        memset(o, 0, sizeof(real) * (size_t)C);
        for (int k = 0; k < K; k++) {
            size_t i = (size_t)n * K + k;
            if (slot_row[i] < 0)
                continue;
            const real *restrict y = ys + (size_t)slot_row[i] * C;
            real w = topk_w[i];
            for (int c = 0; c < C; c++)
                o[c] += w * y[c];
        }
    }
}

/*
** dys (R, C) and dtopk_w (N, K) are written. The plan's rows are not passed
** here, so rows nobody references (padding) are found by clearing all of dys
** first; every referenced row is then owned by exactly one (token, slot).
*/
void MOE_OP(unpermute_backward)(real *dys, real *dtopk_w, const real *dout, const real *ys,
                                const real *topk_w, const int32_t *slot_row, int N, int K, int C,
                                int R)
{
#pragma omp parallel for schedule(static) if ((long)R * C > 32768)
    for (int r = 0; r < R; r++)
        memset(dys + (size_t)r * C, 0, sizeof(real) * (size_t)C);

#pragma omp parallel for schedule(static) if ((long)N * K * C > 32768)
    for (int n = 0; n < N; n++) {
        const real *restrict d = dout + (size_t)n * C;
        for (int k = 0; k < K; k++) {
            size_t i = (size_t)n * K + k;
            int32_t r = slot_row[i];
            if (r < 0) {
                dtopk_w[i] = 0;
                continue;
            }
            const real *restrict y = ys + (size_t)r * C;
            real *restrict dy = dys + (size_t)r * C;
            real w = topk_w[i], dot = 0;
            for (int c = 0; c < C; c++) {
                dot += d[c] * y[c];
                dy[c] = w * d[c];
            }
            dtopk_w[i] = dot;
        }
    }
}

/* -------------------------------------------------------------- experts */

/*
** One expert segment at a time, each GEMM outside any parallel region so
** OpenBLAS threads it (segments hold thousands of rows in training). Experts
** with no rows are skipped: they add nothing to their weight grads.
*/

// xs, ys are (R, C); h13 is (R, 2F); act is (R, F); w13 is (E, 2F, C); w2 is (E, C, F)
void MOE_OP(experts_forward_segments)(real *ys, real *h13, real *act, const real *xs, const real *w13,
                                      const real *w2, const int32_t *offsets, const int32_t *seg_expert,
                                      int nseg, int C, int F)
{
    for (int g = 0; g < nseg; g++) {
        int r0 = offsets[g], Re = offsets[g + 1] - offsets[g];
        if (Re <= 0)
            continue;
        int e = seg_expert ? seg_expert[g] : g;
        const real *x = xs + (size_t)r0 * C;
        real *h = h13 + (size_t)r0 * 2 * F;
        real *a = act + (size_t)r0 * F;
        const real *wu = w13 + (size_t)e * 2 * F * C;
        const real *wd = w2 + (size_t)e * C * F;
        MOE_OP(gemm)(0, 1, Re, 2 * F, C, (real)1, x, C, wu, C, (real)0, h, 2 * F);
        MOE_OP(swiglu_forward)(a, h, Re, F);
        MOE_OP(gemm)(0, 1, Re, C, F, (real)1, a, F, wd, F, (real)0, ys + (size_t)r0 * C, C);
    }
}

void MOE_OP(experts_forward)(real *ys, real *h13, real *act, const real *xs, const real *w13,
                             const real *w2, const int32_t *offsets, int E, int C, int F)
{
    MOE_OP(experts_forward_segments)(ys, h13, act, xs, w13, w2, offsets, NULL, E, C, F);
}

// dxs (R, C), dh13 (R, 2F), dact (R, F) are written
void MOE_OP(experts_dgrad_segments)(real *dxs, real *dh13, real *dact, const real *dys, const real *h13,
                                    const real *w13, const real *w2, const int32_t *offsets,
                                    const int32_t *seg_expert, int nseg, int C, int F)
{
    for (int g = 0; g < nseg; g++) {
        int r0 = offsets[g], Re = offsets[g + 1] - offsets[g];
        if (Re <= 0)
            continue;
        int e = seg_expert ? seg_expert[g] : g;
        const real *dy = dys + (size_t)r0 * C;
        const real *h = h13 + (size_t)r0 * 2 * F;
        real *da = dact + (size_t)r0 * F;
        real *dh = dh13 + (size_t)r0 * 2 * F;
        // dact = dy @ w2[e]
        MOE_OP(gemm)(0, 0, Re, F, C, (real)1, dy, C, w2 + (size_t)e * C * F, F, (real)0, da, F);
        // swiglu_backward accumulates, and dh13 is ours to write
        memset(dh, 0, sizeof(real) * (size_t)Re * 2 * F);
        MOE_OP(swiglu_backward)(dh, da, h, Re, F);
        // dxs = dh @ w13[e]
        MOE_OP(gemm)(0, 0, Re, C, 2 * F, (real)1, dh, 2 * F, w13 + (size_t)e * 2 * F * C, C, (real)0,
                     dxs + (size_t)r0 * C, C);
    }
}

// dw13, dw2 accumulate, segment by segment in order
void MOE_OP(experts_wgrad_segments)(real *dw13, real *dw2, const real *dys, const real *xs, const real *dh13,
                                    const real *act, const int32_t *offsets, const int32_t *seg_expert, int nseg,
                                    int C, int F)
{
    for (int g = 0; g < nseg; g++) {
        int r0 = offsets[g], Re = offsets[g + 1] - offsets[g];
        if (Re <= 0)
            continue;
        int e = seg_expert ? seg_expert[g] : g;
        // dw2[e] += dy^T @ act; dw13[e] += dh^T @ xs
        MOE_OP(gemm)(1, 0, C, F, Re, (real)1, dys + (size_t)r0 * C, C, act + (size_t)r0 * F, F, (real)1,
                     dw2 + (size_t)e * C * F, F);
        MOE_OP(gemm)(1, 0, 2 * F, C, Re, (real)1, dh13 + (size_t)r0 * 2 * F, 2 * F, xs + (size_t)r0 * C, C,
                     (real)1, dw13 + (size_t)e * 2 * F * C, C);
    }
}

// dxs (R, C), dh13 (R, 2F), dact (R, F) are written; dw13, dw2 accumulate
void MOE_OP(experts_backward_segments)(real *dxs, real *dw13, real *dw2, real *dh13, real *dact,
                                       const real *dys, const real *xs, const real *h13,
                                       const real *act, const real *w13, const real *w2,
                                       const int32_t *offsets, const int32_t *seg_expert, int nseg,
                                       int C, int F)
{
    MOE_OP(experts_dgrad_segments)(dxs, dh13, dact, dys, h13, w13, w2, offsets, seg_expert, nseg, C, F);
    MOE_OP(experts_wgrad_segments)(dw13, dw2, dys, xs, dh13, act, offsets, seg_expert, nseg, C, F);
}

void MOE_OP(experts_backward)(real *dxs, real *dw13, real *dw2, real *dh13, real *dact,
                              const real *dys, const real *xs, const real *h13, const real *act,
                              const real *w13, const real *w2, const int32_t *offsets, int E,
                              int C, int F)
{
    MOE_OP(experts_backward_segments)(dxs, dw13, dw2, dh13, dact, dys, xs, h13, act, w13, w2, offsets,
                                      NULL, E, C, F);
}
