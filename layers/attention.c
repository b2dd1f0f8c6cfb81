#include "layers/attention.h"
#include "layers/vmath.h"

#include <stddef.h>
#include <stdint.h>
#include <string.h>
#include <tgmath.h>

#include "layers/gemm.h"

/*
** Layout: qkv rows are (b, t) with C3 = (NH + 2*NKV)*HD reals; query head h
** starts at column h*HD, its key head at (NH + kv)*HD, its value head at
** (NH + NKV + kv)*HD. So every per-head matrix is a (T, HD) view with row
** stride C3 (out and dout: stride NH*HD) and goes to GEMM without copies.
**
** Causality is exploited by blocks of ATT_BLK query rows: rows [r0, r1) only
** ever see keys [0, r1), so the score and PV products for that block use
** K = r1 instead of T (about half the work of a full T x T product). Entries
** of a block above the diagonal are zeroed before they feed a product.
**
** Threads: one (b, head) block per iteration; the GEMMs inside run
** single-threaded. Every output element is written by one iteration in a
** fixed order, so results do not depend on the thread count or on which
** thread ran what; that lets the schedule be dynamic, which keeps both cores
** busy when one of them is shared with another process. The region is
** entered even for small problems, so that no GEMM here is ever threaded by
** OpenBLAS itself.
*/
#define ATT_BLK 64


// att rows [r0, r1) of one head: scaled scores in, causal softmax out
static void causal_softmax_rows(real *att, int T, int r0, int r1)
{
    for (int t = r0; t < r1; t++) {
        real *restrict p = att + (size_t)t * T;
        real mx = p[0];
#pragma omp simd reduction(max : mx)
        for (int j = 1; j <= t; j++)
            mx = p[j] > mx ? p[j] : mx;
        real sum = 0;
#pragma omp simd reduction(+ : sum)
        for (int j = 0; j <= t; j++) {
            p[j] = moe_vexp(p[j] - mx);
            sum += p[j];
        }
        real inv = (real)1 / sum;
        for (int j = 0; j <= t; j++)
            p[j] *= inv;
        memset(p + t + 1, 0, (size_t)(T - t - 1) * sizeof(real));
    }
}

// out is (B, T, NH, HD), att is (B, NH, T, T), qkv is (B, T, NH + 2*NKV, HD)
void MOE_OP(attention_forward)(real *out, real *att, const real *qkv, int B, int T, int NH,
                               int NKV, int HD)
{
    int C3 = (NH + 2 * NKV) * HD, CO = NH * HD, group = NH / NKV;
    real scale = (real)1 / sqrt((real)HD);
#pragma omp parallel for schedule(dynamic, 1)
    for (int bh = 0; bh < B * NH; bh++) {
        int b = bh / NH, h = bh % NH, kv = h / group;
        const real *q = qkv + (size_t)b * T * C3 + (size_t)h * HD;
        const real *k = qkv + (size_t)b * T * C3 + (size_t)(NH + kv) * HD;
        const real *v = qkv + (size_t)b * T * C3 + (size_t)(NH + NKV + kv) * HD;
        real *a = att + (size_t)bh * T * T;
        real *o = out + (size_t)b * T * CO + (size_t)h * HD;
        for (int r0 = 0; r0 < T; r0 += ATT_BLK) {
            int r1 = r0 + ATT_BLK < T ? r0 + ATT_BLK : T, m = r1 - r0;
            // a[r0:r1, 0:r1] = scale * q[r0:r1] @ k[0:r1]^T
            MOE_OP(gemm)(0, 1, m, r1, HD, scale, q + (size_t)r0 * C3, C3, k, C3, (real)0,
                         a + (size_t)r0 * T, T);
            causal_softmax_rows(a, T, r0, r1);
            // o[r0:r1] = a[r0:r1, 0:r1] @ v[0:r1]
            MOE_OP(gemm)(0, 0, m, HD, r1, (real)1, a + (size_t)r0 * T, T, v, C3, (real)0,
                         o + (size_t)r0 * CO, CO);
        }
    }
}

/*
** Two passes. Pass 1, per (b, query head): dP = dout @ v^T, the softmax
** backward dS = scale * P * (dP - rowsum(dP * P)) kept in scratch, and
** dq += dS @ k. Pass 2, per (b, kv head): the group's query heads add
** dk += dS^T @ q and dv += P^T @ dout in a fixed head order, so GQA heads that
** share a kv head never race. Column blocks [c0, c1) of dS^T only meet rows
** t >= c0, which is where the causal saving comes from in pass 2.
*/
void MOE_OP(attention_backward)(real *dqkv, real *scratch, const real *dout, const real *att,
                                const real *qkv, int B, int T, int NH, int NKV, int HD)
{
    int C3 = (NH + 2 * NKV) * HD, CO = NH * HD, group = NH / NKV;
    real scale = (real)1 / sqrt((real)HD);

#pragma omp parallel for schedule(dynamic, 1)
    for (int bh = 0; bh < B * NH; bh++) {
        int b = bh / NH, h = bh % NH, kv = h / group;
        const real *k = qkv + (size_t)b * T * C3 + (size_t)(NH + kv) * HD;
        const real *v = qkv + (size_t)b * T * C3 + (size_t)(NH + NKV + kv) * HD;
        const real *dO = dout + (size_t)b * T * CO + (size_t)h * HD;
        const real *P = att + (size_t)bh * T * T;
        real *dS = scratch + (size_t)bh * T * T;
        real *dq = dqkv + (size_t)b * T * C3 + (size_t)h * HD;
        for (int r0 = 0; r0 < T; r0 += ATT_BLK) {
            int r1 = r0 + ATT_BLK < T ? r0 + ATT_BLK : T, m = r1 - r0;
            // dS[r0:r1, 0:r1] = dout[r0:r1] @ v[0:r1]^T  (dP, for now)
            MOE_OP(gemm)(0, 1, m, r1, HD, (real)1, dO + (size_t)r0 * CO, CO, v, C3, (real)0,
                         dS + (size_t)r0 * T, T);
            for (int t = r0; t < r1; t++) {
                const real *restrict p = P + (size_t)t * T;
                real *restrict d = dS + (size_t)t * T;
                real dot = 0;
#pragma omp simd reduction(+ : dot)
                for (int j = 0; j <= t; j++)
                    dot += d[j] * p[j];
                for (int j = 0; j <= t; j++)
                    d[j] = scale * p[j] * (d[j] - dot);
                memset(d + t + 1, 0, (size_t)(T - t - 1) * sizeof(real));
            }
            // dq[r0:r1] += dS[r0:r1, 0:r1] @ k[0:r1]
            MOE_OP(gemm)(0, 0, m, HD, r1, (real)1, dS + (size_t)r0 * T, T, k, C3, (real)1,
                         dq + (size_t)r0 * C3, C3);
        }
    }

#pragma omp parallel for schedule(dynamic, 1)
    for (int bkv = 0; bkv < B * NKV; bkv++) {
        int b = bkv / NKV, kv = bkv % NKV;
        real *dk = dqkv + (size_t)b * T * C3 + (size_t)(NH + kv) * HD;
        real *dv = dqkv + (size_t)b * T * C3 + (size_t)(NH + NKV + kv) * HD;
        for (int h = kv * group; h < (kv + 1) * group; h++) {
            const real *q = qkv + (size_t)b * T * C3 + (size_t)h * HD;
            const real *dO = dout + (size_t)b * T * CO + (size_t)h * HD;
            const real *P = att + ((size_t)b * NH + h) * T * T;
            const real *dS = scratch + ((size_t)b * NH + h) * T * T;
            for (int c0 = 0; c0 < T; c0 += ATT_BLK) {
                int c1 = c0 + ATT_BLK < T ? c0 + ATT_BLK : T, n = c1 - c0, kk = T - c0;
                const size_t at = (size_t)c0 * T + c0;
                // dk[c0:c1] += dS[c0:T, c0:c1]^T @ q[c0:T]
                MOE_OP(gemm)(1, 0, n, HD, kk, (real)1, dS + at, T, q + (size_t)c0 * C3, C3,
                             (real)1, dk + (size_t)c0 * C3, C3);
                // dv[c0:c1] += P[c0:T, c0:c1]^T @ dout[c0:T]
                MOE_OP(gemm)(1, 0, n, HD, kk, (real)1, P + at, T, dO + (size_t)c0 * CO, CO,
                             (real)1, dv + (size_t)c0 * C3, C3);
            }
        }
    }
}
