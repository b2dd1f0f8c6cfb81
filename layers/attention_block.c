#include "layers/attention_block.h"
#include "layers/vmath.h"

#include <stddef.h>
#include <stdint.h>
#include <string.h>
#include <tgmath.h>

#include "layers/gemm.h"

/*
** Tiles: ATTB_BQ query rows x ATTB_BK keys of one head. A tile whose keys all
** sit after every one of its queries' positions is skipped on positions
** alone. Within a tile only the span of rows [r_lo, r_hi) that see at least
** one key goes to the GEMMs, so rows before the first visible one are never
** touched; rows inside the span that see nothing (possible only with unsorted
** positions) get an all-zero probability row, and forward additionally splits
** the P @ V product at them so their state stays bitwise unchanged.
**
** Threads: one (b, h) per forward iteration and one (b, kv head) per backward
** iteration, the GEMMs inside running single-threaded (as in attention.c).
** Each output element has one writer and a fixed order of updates, so the
** schedule can be dynamic without affecting results.
*/

static int32_t pos_min(const int32_t *p, int n)
{
    int32_t m = INT32_MAX;
    for (int i = 0; i < n; i++)
        m = p[i] < m ? p[i] : m;
    return m;
}

static int32_t pos_max(const int32_t *p, int n)
{
    int32_t m = INT32_MIN;
    for (int i = 0; i < n; i++)
        m = p[i] > m ? p[i] : m;
    return m;
}

// whether a query at position p sees any of the n keys at pk
static int sees_any(const int32_t *restrict pk, int n, int32_t p)
{
    int any = 0;
    for (int c = 0; c < n; c++)
        any |= pk[c] <= p;
    return any;
}

void MOE_OP(attn_block_init)(real *acc, real *mx, real *l, int B, int Tq, int NH, int HD)
{
    size_t rows = (size_t)B * NH * Tq;
    memset(acc, 0, rows * HD * sizeof(real));
    for (size_t i = 0; i < rows; i++) {
        mx[i] = -INFINITY;
        l[i] = 0;
    }
}

/*
** One query row of a forward tile that sees at least one key: s (n scaled
** scores) becomes the row's probabilities relative to the new running max,
** masked keys exactly 0, and the row's state (*mx, *l, acc row a) is rescaled
** to that max. The caller then adds s @ V to a.
*/
static void online_row(real *restrict s, int n, const int32_t *restrict pk, int32_t p,
                       real *mx, real *l, real *restrict a, int HD)
{
    real bm = -INFINITY;
    for (int c = 0; c < n; c++)
        bm = pk[c] <= p && s[c] > bm ? s[c] : bm;
    real old = *mx, nm = old > bm ? old : bm;
    real sum = 0;
#pragma omp simd reduction(+ : sum)
    for (int c = 0; c < n; c++) {
        real e = moe_vexp(s[c] - nm);
        s[c] = pk[c] <= p ? e : (real)0; // select, not multiply: e may be inf when masked
        sum += s[c];
    }
    if (old != nm) {
        real corr = old == -INFINITY ? (real)0 : moe_vexp(old - nm);
        for (int d = 0; d < HD; d++)
            a[d] *= corr;
        *l = *l * corr + sum;
    } else {
        *l += sum;
    }
    *mx = nm;
}

// Q (m, HD) row stride ldq; K, V (n, HD) row stride ldk; A (m, HD) row stride lda
static void forward_tile(real *S, const real *Q, size_t ldq, const real *K, const real *V,
                         size_t ldk, real *A, size_t lda, real *mx, real *l, const int32_t *pq,
                         const int32_t *pk, int m, int n, int HD, real scale)
{
    int r_lo = 0, r_hi = m;
    while (r_lo < m && !sees_any(pk, n, pq[r_lo]))
        r_lo++;
    while (r_hi > r_lo && !sees_any(pk, n, pq[r_hi - 1]))
        r_hi--;
    if (r_lo == r_hi)
        return;
    // S[r_lo:r_hi, 0:n] = scale * Q[r_lo:r_hi] @ K^T
    MOE_OP(gemm)(0, 1, r_hi - r_lo, n, HD, scale, Q + r_lo * ldq, (int)ldq, K, (int)ldk, (real)0,
                 S + (size_t)r_lo * ATTB_BK, ATTB_BK);
    int run = -1; // first row of the current run of rows that see a key
    for (int r = r_lo; r <= r_hi; r++) {
        int sees = r < r_hi && sees_any(pk, n, pq[r]);
        if (sees) {
            online_row(S + (size_t)r * ATTB_BK, n, pk, pq[r], mx + r, l + r, A + r * lda, HD);
            if (run < 0)
                run = r;
        } else if (run >= 0) {
            // A[run:r] += P[run:r, 0:n] @ V
            MOE_OP(gemm)(0, 0, r - run, HD, n, (real)1, S + (size_t)run * ATTB_BK, ATTB_BK, V,
                         (int)ldk, (real)1, A + run * lda, (int)lda);
            run = -1;
        }
    }
}

// acc, mx, l: (B, Tq, NH, HD), (B, NH, Tq), (B, NH, Tq); q (B, Tq, QS, HD); kv (B, Tk, KS, HD)
void MOE_OP(attn_block_forward)(real *acc, real *mx, real *l, const real *q, int QS,
                                const real *kv, int KS, int k_off, int v_off,
                                const int32_t *pos_q, const int32_t *pos_k, int B, int Tq,
                                int Tk, int NH, int NKV, int HD)
{
    if (B <= 0 || Tq <= 0 || Tk <= 0 || NH <= 0)
        return;
    int group = NH / NKV;
    size_t ldq = (size_t)QS * HD, ldk = (size_t)KS * HD, lda = (size_t)NH * HD;
    real scale = (real)1 / sqrt((real)HD);
    int32_t kmin = pos_min(pos_k, Tk);
#pragma omp parallel for schedule(dynamic, 1)
    for (int bh = 0; bh < B * NH; bh++) {
        int b = bh / NH, h = bh % NH, g = h / group;
        const real *qh = q + (size_t)b * Tq * ldq + (size_t)h * HD;
        const real *kg = kv + (size_t)b * Tk * ldk + (size_t)(k_off + g) * HD;
        const real *vg = kv + (size_t)b * Tk * ldk + (size_t)(v_off + g) * HD;
        real *ah = acc + (size_t)b * Tq * lda + (size_t)h * HD;
        real *mh = mx + (size_t)bh * Tq, *lh = l + (size_t)bh * Tq;
        real S[ATTB_BQ * ATTB_BK];
        for (int i0 = 0; i0 < Tq; i0 += ATTB_BQ) {
            int m = Tq - i0 < ATTB_BQ ? Tq - i0 : ATTB_BQ;
            int32_t qmax = pos_max(pos_q + i0, m);
            if (qmax < kmin)
                continue;
            for (int j0 = 0; j0 < Tk; j0 += ATTB_BK) {
                int n = Tk - j0 < ATTB_BK ? Tk - j0 : ATTB_BK;
                if (pos_min(pos_k + j0, n) > qmax)
                    continue;
                forward_tile(S, qh + i0 * ldq, ldq, kg + j0 * ldk, vg + j0 * ldk, ldk,
                             ah + i0 * lda, lda, mh + i0, lh + i0, pos_q + i0, pos_k + j0, m, n,
                             HD, scale);
            }
        }
    }
}

// out (B, Tq, NH, HD), lse (B, NH, Tq)
void MOE_OP(attn_block_finish)(real *out, real *lse, const real *acc, const real *mx,
                               const real *l, int B, int Tq, int NH, int HD)
{
#pragma omp parallel for
    for (int bh = 0; bh < B * NH; bh++) {
        int b = bh / NH, h = bh % NH;
        for (int i = 0; i < Tq; i++) {
            size_t st = (size_t)bh * Tq + i, at = (((size_t)b * Tq + i) * NH + h) * HD;
            real li = l[st];
            if (li == 0) {
                memset(out + at, 0, (size_t)HD * sizeof(real));
                lse[st] = -INFINITY;
                continue;
            }
            real inv = (real)1 / li;
            for (int d = 0; d < HD; d++)
                out[at + d] = acc[at + d] * inv;
            lse[st] = mx[st] + log(li);
        }
    }
}

// D (B, NH, Tq); out, dout (B, Tq, NH, HD)
void MOE_OP(attn_block_backward_prep)(real *D, const real *out, const real *dout, int B, int Tq,
                                      int NH, int HD)
{
#pragma omp parallel for
    for (int bh = 0; bh < B * NH; bh++) {
        int b = bh / NH, h = bh % NH;
        for (int i = 0; i < Tq; i++) {
            size_t at = (((size_t)b * Tq + i) * NH + h) * HD;
            double dot = 0; // HD terms of mixed sign: a double sum costs nothing here
            for (int d = 0; d < HD; d++)
                dot += (double)dout[at + d] * (double)out[at + d];
            D[(size_t)bh * Tq + i] = (real)dot;
        }
    }
}

typedef struct {
    const real *Q, *K, *V, *dO; // tile starts; Q row stride ldq, K/V ldk, dO ldo
    real *dQ, *dK, *dV;         // dQ row stride lddq, dK/dV lddkv
    size_t ldq, ldk, ldo, lddq, lddkv;
    const real *lse, *D;
    const int32_t *pq, *pk;
    int m, n, HD;
    real scale;
} bwd_tile;

static int bwd_row_live(const bwd_tile *t, int r)
{
    return t->lse[r] != -INFINITY && sees_any(t->pk, t->n, t->pq[r]);
}

// S, dS: ATTB_BQ x ATTB_BK scratch
static void backward_tile(const bwd_tile *t, real *S, real *dS)
{
    int m = t->m, n = t->n, HD = t->HD, r_lo = 0, r_hi = m;
    while (r_lo < m && !bwd_row_live(t, r_lo))
        r_lo++;
    while (r_hi > r_lo && !bwd_row_live(t, r_hi - 1))
        r_hi--;
    int mm = r_hi - r_lo;
    if (mm == 0)
        return;
    const real *Q = t->Q + r_lo * t->ldq, *dO = t->dO + r_lo * t->ldo;
    real *Sr = S + (size_t)r_lo * ATTB_BK, *dSr = dS + (size_t)r_lo * ATTB_BK;
    // S = scale * Q @ K^T, dS = dP = dO @ V^T over rows [r_lo, r_hi)
    MOE_OP(gemm)(0, 1, mm, n, HD, t->scale, Q, (int)t->ldq, t->K, (int)t->ldk, (real)0, Sr,
                 ATTB_BK);
    MOE_OP(gemm)(0, 1, mm, n, HD, (real)1, dO, (int)t->ldo, t->V, (int)t->ldk, (real)0, dSr,
                 ATTB_BK);
    for (int r = r_lo; r < r_hi; r++) {
        real *restrict p = S + (size_t)r * ATTB_BK, *restrict d = dS + (size_t)r * ATTB_BK;
        if (!bwd_row_live(t, r)) {
            memset(p, 0, (size_t)n * sizeof(real));
            memset(d, 0, (size_t)n * sizeof(real));
            continue;
        }
        real L = t->lse[r], Dr = t->D[r], sc = t->scale;
        int32_t pos = t->pq[r];
        const int32_t *restrict pk = t->pk;
#pragma omp simd
        for (int c = 0; c < n; c++) {
            real e = moe_vexp(p[c] - L);
            p[c] = pk[c] <= pos ? e : (real)0;
            d[c] = sc * p[c] * (d[c] - Dr); // scale folded in: dq and dk both need it
        }
    }
    // dV += P^T @ dO, dK += dS^T @ Q, dQ += dS @ K
    MOE_OP(gemm)(1, 0, n, HD, mm, (real)1, Sr, ATTB_BK, dO, (int)t->ldo, (real)1, t->dV,
                 (int)t->lddkv);
    MOE_OP(gemm)(1, 0, n, HD, mm, (real)1, dSr, ATTB_BK, Q, (int)t->ldq, (real)1, t->dK,
                 (int)t->lddkv);
    MOE_OP(gemm)(0, 0, mm, HD, n, (real)1, dSr, ATTB_BK, t->K, (int)t->ldk, (real)1,
                 t->dQ + r_lo * t->lddq, (int)t->lddq);
}

void MOE_OP(attn_block_backward)(real *dq, int dQS, real *dkv, int dKS, int dk_off, int dv_off,
                                 const real *dout, const real *lse, const real *D, const real *q,
                                 int QS, const real *kv, int KS, int k_off, int v_off,
                                 const int32_t *pos_q, const int32_t *pos_k, int B, int Tq,
                                 int Tk, int NH, int NKV, int HD)
{
    if (B <= 0 || Tq <= 0 || Tk <= 0 || NKV <= 0)
        return;
    int group = NH / NKV;
    size_t ldq = (size_t)QS * HD, ldk = (size_t)KS * HD, ldo = (size_t)NH * HD;
    size_t lddq = (size_t)dQS * HD, lddkv = (size_t)dKS * HD;
    real scale = (real)1 / sqrt((real)HD);
    int32_t kmin = pos_min(pos_k, Tk);
#pragma omp parallel for schedule(dynamic, 1)
    for (int bg = 0; bg < B * NKV; bg++) {
        int b = bg / NKV, g = bg % NKV;
        const real *kg = kv + (size_t)b * Tk * ldk + (size_t)(k_off + g) * HD;
        const real *vg = kv + (size_t)b * Tk * ldk + (size_t)(v_off + g) * HD;
        real *dkg = dkv + (size_t)b * Tk * lddkv + (size_t)(dk_off + g) * HD;
        real *dvg = dkv + (size_t)b * Tk * lddkv + (size_t)(dv_off + g) * HD;
        real S[ATTB_BQ * ATTB_BK], dS[ATTB_BQ * ATTB_BK];
        for (int h = g * group; h < (g + 1) * group; h++) {
            size_t st = ((size_t)b * NH + h) * Tq;
            const real *qh = q + (size_t)b * Tq * ldq + (size_t)h * HD;
            const real *doh = dout + (size_t)b * Tq * ldo + (size_t)h * HD;
            real *dqh = dq + (size_t)b * Tq * lddq + (size_t)h * HD;
            for (int i0 = 0; i0 < Tq; i0 += ATTB_BQ) {
                int m = Tq - i0 < ATTB_BQ ? Tq - i0 : ATTB_BQ;
                int32_t qmax = pos_max(pos_q + i0, m);
                if (qmax < kmin)
                    continue;
                for (int j0 = 0; j0 < Tk; j0 += ATTB_BK) {
                    int n = Tk - j0 < ATTB_BK ? Tk - j0 : ATTB_BK;
                    if (pos_min(pos_k + j0, n) > qmax)
                        continue;
                    bwd_tile t = {
                        .Q = qh + i0 * ldq, .K = kg + j0 * ldk, .V = vg + j0 * ldk,
                        .dO = doh + i0 * ldo, .dQ = dqh + i0 * lddq, .dK = dkg + j0 * lddkv,
                        .dV = dvg + j0 * lddkv, .ldq = ldq, .ldk = ldk, .ldo = ldo,
                        .lddq = lddq, .lddkv = lddkv, .lse = lse + st + i0, .D = D + st + i0,
                        .pq = pos_q + i0, .pk = pos_k + j0, .m = m, .n = n, .HD = HD,
                        .scale = scale};
                    backward_tile(&t, S, dS);
                }
            }
        }
    }
}
