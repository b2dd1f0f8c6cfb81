#include "layers/router.h"

#include <stddef.h>
#include <tgmath.h>

/*
** Every op works token by token (rows of E), so the parallel loops split over
** tokens and each row's arithmetic runs in a fixed order: results do not
** depend on the thread count. The two losses that sum over tokens run serially
** for the same reason (they cost O(N * E), nothing next to the expert GEMMs).
*/

static void softmax_row(real *s, const real *x, int E)
{
    real mx = x[0];
    for (int e = 1; e < E; e++)
        mx = x[e] > mx ? x[e] : mx;
    real sum = 0;
    for (int e = 0; e < E; e++) {
        s[e] = exp(x[e] - mx);
        sum += s[e];
    }
    real inv = (real)1 / sum;
    for (int e = 0; e < E; e++)
        s[e] *= inv;
}

static void sigmoid_row(real *s, const real *x, int E)
{
    for (int e = 0; e < E; e++)
        s[e] = (real)1 / ((real)1 + exp(-x[e]));
}

static inline real select_value(const real *s, const real *bias, int e)
{
    return bias ? s[e] + bias[e] : s[e];
}

/*
** idx[0..K) = the K largest select values, descending, by insertion into a
** sorted list while walking e upward: a strict > never moves a later expert
** past an equal earlier one, which is the tie-to-lower-index rule. NaNs never
** compare greater, so every slot still gets a valid expert.
*/
static void topk_row(int32_t *idx, const real *s, const real *bias, int E, int K)
{
    int have = 0;
    for (int e = 0; e < E; e++) {
        real v = select_value(s, bias, e);
        if (have == K && !(v > select_value(s, bias, idx[K - 1])))
            continue;
        int j = have < K ? have++ : K - 1;
        while (j > 0 && v > select_value(s, bias, idx[j - 1])) {
            idx[j] = idx[j - 1];
            j--;
        }
        idx[j] = e;
    }
}

// sum of the chosen scores; <= 0 only when every chosen score underflowed,
// and then the weights stay unnormalised (zeros) rather than become NaN
static real chosen_sum(const real *s, const int32_t *idx, int K)
{
    real sum = 0;
    for (int k = 0; k < K; k++)
        sum += s[idx[k]];
    return sum;
}

// logits, scores are (N, E); topk_idx, topk_w are (N, K)
void MOE_OP(router_forward)(real *scores, int32_t *topk_idx, real *topk_w, const real *logits,
                            const real *bias, int N, int E, int K, moe_score_fn fn, int norm_topk)
{
#pragma omp parallel for schedule(static) if ((long)N * E > 16384)
    for (int n = 0; n < N; n++) {
        const real *x = logits + (size_t)n * E;
        real *s = scores + (size_t)n * E;
        int32_t *idx = topk_idx + (size_t)n * K;
        real *w = topk_w + (size_t)n * K;
        if (fn == MOE_SCORE_SIGMOID)
            sigmoid_row(s, x, E);
        else
            softmax_row(s, x, E);
        topk_row(idx, s, bias, E, K);
        real sum = norm_topk ? chosen_sum(s, idx, K) : (real)0;
        for (int k = 0; k < K; k++)
            w[k] = sum > 0 ? s[idx[k]] / sum : s[idx[k]];
    }
}

/*
** With S the chosen scores' sum and w_k = s_k / S:
**   dL/ds_k = (dw_k - sum_j dw_j w_j) / S            (norm_topk; else dw_k)
** then through the score function, where ds is nonzero on the K chosen only:
**   softmax: dx_e = s_e (ds_e - sum_k ds_k s_k)      (every e)
**   sigmoid: dx_e = ds_e s_e (1 - s_e)               (chosen e only)
*/
void MOE_OP(router_backward)(real *dlogits, const real *dtopk_w, const real *scores,
                             const int32_t *topk_idx, int N, int E, int K, moe_score_fn fn,
                             int norm_topk)
{
#pragma omp parallel for schedule(static) if ((long)N * E > 16384)
    for (int n = 0; n < N; n++) {
        const real *s = scores + (size_t)n * E;
        const int32_t *idx = topk_idx + (size_t)n * K;
        const real *dw = dtopk_w + (size_t)n * K;
        real *dx = dlogits + (size_t)n * E;

        real sum = norm_topk ? chosen_sum(s, idx, K) : (real)0;
        real inv = sum > 0 ? (real)1 / sum : (real)1;
        real wdot = 0; // sum_j dw_j w_j, zero when the weights are not normalised
        if (sum > 0)
            for (int k = 0; k < K; k++)
                wdot += dw[k] * s[idx[k]] * inv;

        if (fn == MOE_SCORE_SIGMOID) {
            for (int k = 0; k < K; k++) {
                real sk = s[idx[k]];
                dx[idx[k]] += (dw[k] - wdot) * inv * sk * ((real)1 - sk);
            }
            continue;
        }
        real t = 0; // sum_k ds_k s_k
        for (int k = 0; k < K; k++)
            t += (dw[k] - wdot) * inv * s[idx[k]];
        for (int e = 0; e < E; e++)
            dx[e] -= s[e] * t;
        for (int k = 0; k < K; k++)
            dx[idx[k]] += s[idx[k]] * (dw[k] - wdot) * inv;
    }
}

// counts is (E); topk_idx is (N, K) with entries in [0, E)
void MOE_OP(router_counts)(real *counts, const int32_t *topk_idx, int N, int E, int K)
{
    (void)E;
    for (size_t i = 0; i < (size_t)N * K; i++)
        counts[topk_idx[i]] += 1;
}

/* ------------------------------------------------------------ aux loss */

// E / (K * ntok^2): the Switch scale that makes a perfectly balanced router score 1
static double aux_scale(int E, int K, double ntok)
{
    return ntok > 0 ? (double)E / ((double)K * ntok * ntok) : 0.0;
}

// the row sum that normalises sigmoid scores into p; 1 for softmax (already sums to 1)
static real p_norm(const real *s, int E, moe_score_fn fn)
{
    if (fn != MOE_SCORE_SIGMOID)
        return 1;
    real sum = 0;
    for (int e = 0; e < E; e++)
        sum += s[e];
    return sum;
}

/*
** sum_e counts[e] * sum_n p[n,e] is summed token by token (sum_n of
** <counts, p[n,:]>), which needs no (E) scratch buffer.
*/
double MOE_OP(router_aux_loss_forward)(const real *scores, const real *counts, int N, int E,
                                       int K, double ntok, moe_score_fn fn)
{
    double total = 0;
    for (int n = 0; n < N; n++) {
        const real *s = scores + (size_t)n * E;
        double S = (double)p_norm(s, E, fn);
        if (!(S > 0))
            continue;
        double dot = 0;
        for (int e = 0; e < E; e++)
            dot += (double)counts[e] * (double)s[e];
        total += dot / S;
    }
    return aux_scale(E, K, ntok) * total;
}

/*
** d(aux)/dp[n,e] = g_e = scale * counts[e], the same for every token. Then
**   softmax: dx_e = s_e (g_e - <g, s>)
**   sigmoid: p = s / S, ds_e = (g_e - <g, p>) / S, dx_e = ds_e s_e (1 - s_e)
*/
void MOE_OP(router_aux_loss_backward)(real *dlogits, const real *scores, const real *counts,
                                      int N, int E, int K, double ntok, moe_score_fn fn,
                                      real coeff)
{
    real g = (real)((double)coeff * aux_scale(E, K, ntok));
#pragma omp parallel for schedule(static) if ((long)N * E > 16384)
    for (int n = 0; n < N; n++) {
        const real *s = scores + (size_t)n * E;
        real *dx = dlogits + (size_t)n * E;
        real S = p_norm(s, E, fn);
        if (!(S > 0))
            continue;
        real t = 0; // <g, p>
        for (int e = 0; e < E; e++)
            t += g * counts[e] * s[e];
        t /= S;
        if (fn == MOE_SCORE_SIGMOID) {
            for (int e = 0; e < E; e++)
                dx[e] += (g * counts[e] - t) / S * s[e] * ((real)1 - s[e]);
        } else {
            for (int e = 0; e < E; e++)
                dx[e] += s[e] * (g * counts[e] - t);
        }
    }
}

/* -------------------------------------------------------------- z-loss */

static double logsumexp_row(const real *x, int E)
{
    double mx = (double)x[0];
    for (int e = 1; e < E; e++)
        mx = (double)x[e] > mx ? (double)x[e] : mx;
    double sum = 0;
    for (int e = 0; e < E; e++)
        sum += exp((double)x[e] - mx);
    return mx + log(sum);
}

double MOE_OP(router_z_loss_forward)(const real *logits, int N, int E)
{
    if (N <= 0)
        return 0.0;
    double total = 0;
    for (int n = 0; n < N; n++) {
        double z = logsumexp_row(logits + (size_t)n * E, E);
        total += z * z;
    }
    return total / N;
}

// dz/dx[n,e] = (2 / N) * lse_n * softmax(x[n,:])_e
void MOE_OP(router_z_loss_backward)(real *dlogits, const real *logits, int N, int E, real coeff)
{
#pragma omp parallel for schedule(static) if ((long)N * E > 16384)
    for (int n = 0; n < N; n++) {
        const real *x = logits + (size_t)n * E;
        real *dx = dlogits + (size_t)n * E;
        double z = logsumexp_row(x, E);
        double k = 2.0 * (double)coeff / N * z;
        for (int e = 0; e < E; e++)
            dx[e] += (real)(k * exp((double)x[e] - z));
    }
}

/* ------------------------------------------------------- expert bias */

void MOE_OP(router_bias_update)(real *bias, const real *counts, int E, real rate)
{
    if (E <= 0)
        return;
    double sum = 0;
    for (int e = 0; e < E; e++)
        sum += (double)counts[e];
    double mean = sum / E;
    for (int e = 0; e < E; e++) {
        double d = mean - (double)counts[e];
        bias[e] += d > 0 ? rate : d < 0 ? -rate : (real)0;
    }
}
