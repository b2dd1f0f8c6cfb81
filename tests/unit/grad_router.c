/*
** The router in double precision: forward against brute-force references
** (scores, top-k with ties to the lower index, bias steering selection only,
** weight normalisation), finite-difference checks of router_backward for both
** score functions with and without norm_topk and bias, of the aux loss and
** the z-loss, the += contract of every backward, and the bias update's signs.
*/
#include <check.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "gradcheck.h"
#include "layers/router.h"

static double *rnd(size_t n, uint64_t seed, double scale)
{
    double *x = gc_alloc(n);
    gc_fill_normal(x, n, seed, scale);
    return x;
}

static int32_t *ialloc(size_t n)
{
    int32_t *p = calloc(n ? n : 1, sizeof(int32_t));
    ck_assert_ptr_nonnull(p);
    return p;
}

static void assert_accumulated(const double *acc, const double *base, const double *g, size_t n,
                               const char *what)
{
    for (size_t i = 0; i < n; i++)
        ck_assert_msg(fabs(acc[i] - (base[i] + g[i])) <= 1e-12 * (1 + fabs(base[i] + g[i])),
                      "%s: backward overwrote instead of accumulating at %zu", what, i);
}

static double sel_of(const double *s, const double *bias, int e)
{
    return bias ? s[e] + bias[e] : s[e];
}

/* ------------------------------------------------------- forward checks */

// scores, top-k set/order/ties and weights of one forward against brute force
static void check_forward(const double *logits, const double *bias, int N, int E, int K,
                          moe_score_fn fn, int norm)
{
    double *s = gc_alloc((size_t)N * E), *w = gc_alloc((size_t)N * K);
    int32_t *idx = ialloc((size_t)N * K);
    moe_d_router_forward(s, idx, w, logits, bias, N, E, K, fn, norm);
    for (int n = 0; n < N; n++) {
        const double *x = logits + (size_t)n * E, *sn = s + (size_t)n * E;
        const int32_t *in = idx + (size_t)n * K;
        double mx = x[0], z = 0;
        for (int e = 1; e < E; e++)
            mx = fmax(mx, x[e]);
        for (int e = 0; e < E; e++)
            z += exp(x[e] - mx);
        for (int e = 0; e < E; e++) {
            double ref = fn == MOE_SCORE_SIGMOID ? 1 / (1 + exp(-x[e])) : exp(x[e] - mx) / z;
            ck_assert_msg(fabs(sn[e] - ref) < 1e-14, "score %d,%d: %g vs %g", n, e, sn[e], ref);
        }
        // the k-th pick is the first (lowest e) maximum among the not yet picked
        for (int k = 0; k < K; k++) {
            int best = -1;
            for (int e = 0; e < E; e++) {
                int taken = 0;
                for (int j = 0; j < k; j++)
                    taken |= in[j] == e;
                if (!taken && (best < 0 || sel_of(sn, bias, e) > sel_of(sn, bias, best)))
                    best = e;
            }
            ck_assert_msg(in[k] == best, "token %d slot %d: expert %d, want %d", n, k, in[k], best);
        }
        double sum = 0;
        for (int k = 0; k < K; k++)
            sum += sn[in[k]];
        for (int k = 0; k < K; k++) {
            double ref = norm ? sn[in[k]] / sum : sn[in[k]];
            ck_assert_msg(fabs(w[(size_t)n * K + k] - ref) < 1e-14, "weight %d,%d", n, k);
        }
        if (fn == MOE_SCORE_SOFTMAX && norm) { // = softmax over the chosen logits
            double zk = 0;
            for (int k = 0; k < K; k++)
                zk += exp(x[in[k]] - mx);
            for (int k = 0; k < K; k++)
                ck_assert(fabs(w[(size_t)n * K + k] - exp(x[in[k]] - mx) / zk) < 1e-14);
        }
    }
    free(s);
    free(w);
    free(idx);
}

START_TEST(test_forward_random)
{
    int N = 9, E = 8, K = 3;
    double *logits = rnd((size_t)N * E, 11, 1.5), *bias = rnd(E, 12, 0.1);
    for (int fn = 0; fn < 2; fn++)
        for (int norm = 0; norm < 2; norm++) {
            check_forward(logits, NULL, N, E, K, (moe_score_fn)fn, norm);
            check_forward(logits, bias, N, E, K, (moe_score_fn)fn, norm);
        }
    check_forward(logits, NULL, N, E, E, MOE_SCORE_SOFTMAX, 1); // K == E
    check_forward(logits, NULL, N, E, 1, MOE_SCORE_SIGMOID, 0);
    free(logits);
    free(bias);
}
END_TEST

START_TEST(test_forward_ties)
{
    double x[2 * 5] = {1, 3, 3, 1, 3, 0, 0, 0, 0, 0}, s[10], w[8];
    int32_t idx[8];
    moe_d_router_forward(s, idx, w, x, NULL, 2, 5, 4, MOE_SCORE_SOFTMAX, 0);
    int32_t want[8] = {1, 2, 4, 0, 0, 1, 2, 3};
    for (int i = 0; i < 8; i++)
        ck_assert_msg(idx[i] == want[i], "slot %d: %d, want %d", i, idx[i], want[i]);
    moe_d_router_forward(s, idx, w, x, NULL, 2, 5, 4, MOE_SCORE_SIGMOID, 1);
    for (int i = 0; i < 8; i++)
        ck_assert_int_eq(idx[i], want[i]);
    for (int i = 4; i < 8; i++)
        ck_assert(fabs(w[i] - 0.25) < 1e-15);

    // bias reorders the choice, the weights stay the unbiased scores
    double y[4] = {2.0, 1.0, 0.0, -1.0}, b[4] = {0, 0, 0.5, 1.0}, sy[4], wy[2];
    moe_d_router_forward(sy, idx, wy, y, b, 1, 4, 2, MOE_SCORE_SIGMOID, 0);
    // selection values: 0.881, 0.731, 1.0, 1.269 -> experts 3 then 2
    ck_assert_int_eq(idx[0], 3);
    ck_assert_int_eq(idx[1], 2);
    ck_assert(fabs(wy[0] - 1 / (1 + exp(1.0))) < 1e-15);
    ck_assert(fabs(wy[1] - 0.5) < 1e-15);
    // a bias tie also goes to the lower index
    double z[3] = {0, 0, 0}, bz[3] = {0.2, 0.3, 0.3}, sz[3], wz[1];
    moe_d_router_forward(sz, idx, wz, z, bz, 1, 3, 1, MOE_SCORE_SOFTMAX, 1);
    ck_assert_int_eq(idx[0], 1);
    ck_assert(fabs(wz[0] - 1.0) < 1e-15);
}
END_TEST

/* ------------------------------------------------ router_backward by FD */

typedef struct {
    double *logits, *bias, *scores, *w, *r;
    int32_t *idx, *idx0;
    int N, E, K, norm;
    moe_score_fn fn;
    int changed; // a perturbation flipped the selection: the FD would be meaningless
} rt_ctx;

static double rt_loss(void *p)
{
    rt_ctx *c = p;
    moe_d_router_forward(c->scores, c->idx, c->w, c->logits, c->bias, c->N, c->E, c->K, c->fn,
                         c->norm);
    if (memcmp(c->idx, c->idx0, sizeof(int32_t) * (size_t)c->N * c->K))
        c->changed = 1;
    return gc_dot(c->w, c->r, (size_t)c->N * c->K);
}

// every token's K+1 largest selection values are at least `gap` apart, so
// an FD step (which moves a score by < GC_H) cannot change set or order
static int well_separated(const double *logits, const double *bias, int N, int E, int K,
                          moe_score_fn fn, double gap)
{
    double *s = gc_alloc((size_t)N * E), *w = gc_alloc((size_t)N * E);
    int32_t *idx = ialloc((size_t)N * E);
    moe_d_router_forward(s, idx, w, logits, bias, N, E, E, fn, 0); // full order
    int ok = 1;
    for (int n = 0; n < N && ok; n++)
        for (int k = 0; k < K && k + 1 < E; k++) {
            const double *sn = s + (size_t)n * E;
            const int32_t *in = idx + (size_t)n * E;
            if (sel_of(sn, bias, in[k]) - sel_of(sn, bias, in[k + 1]) < gap)
                ok = 0;
        }
    free(s);
    free(w);
    free(idx);
    return ok;
}

static void check_router_backward(moe_score_fn fn, int norm, int use_bias)
{
    rt_ctx c = {.N = 6, .E = 8, .K = 3, .norm = norm, .fn = fn};
    size_t ne = (size_t)c.N * c.E, nk = (size_t)c.N * c.K;
    c.bias = use_bias ? rnd(c.E, 77, 0.08) : NULL;
    c.logits = gc_alloc(ne);
    uint64_t seed = 100;
    for (;; seed++) {
        ck_assert_msg(seed < 2000, "no well separated logits found");
        gc_fill_normal(c.logits, ne, seed, 1.5);
        if (well_separated(c.logits, c.bias, c.N, c.E, c.K, fn, 1e-3))
            break;
    }
    c.scores = gc_alloc(ne);
    c.w = gc_alloc(nk);
    c.r = rnd(nk, 5, 1);
    c.idx = ialloc(nk);
    c.idx0 = ialloc(nk);
    moe_d_router_forward(c.scores, c.idx0, c.w, c.logits, c.bias, c.N, c.E, c.K, fn, norm);

    if (use_bias) { // the bias must actually steer something for the test to mean it
        double *s2 = gc_alloc(ne), *w2 = gc_alloc(nk);
        int32_t *i2 = ialloc(nk);
        moe_d_router_forward(s2, i2, w2, c.logits, NULL, c.N, c.E, c.K, fn, norm);
        ck_assert_msg(memcmp(i2, c.idx0, sizeof(int32_t) * nk) != 0, "bias changed no selection");
        free(s2);
        free(w2);
        free(i2);
    }

    double *g = gc_alloc(ne), *base = rnd(ne, 6, 1), *acc = gc_alloc(ne);
    memcpy(acc, base, sizeof(double) * ne);
    moe_d_router_backward(g, c.r, c.scores, c.idx0, c.N, c.E, c.K, fn, norm);
    moe_d_router_backward(acc, c.r, c.scores, c.idx0, c.N, c.E, c.K, fn, norm);
    assert_accumulated(acc, base, g, ne, "router_backward");

    char name[64];
    snprintf(name, sizeof name, "router %s%s%s", fn == MOE_SCORE_SIGMOID ? "sigmoid" : "softmax",
             norm ? " norm" : "", use_bias ? " bias" : "");
    double err = gc_check(rt_loss, &c, c.logits, g, ne, 1000, name);
    ck_assert_msg(!c.changed, "%s: an FD step changed the selection", name);
    ck_assert_msg(err < GC_TOL, "%s: rel err %g", name, err);
    if (fn == MOE_SCORE_SIGMOID) // unchosen experts get no gradient through sigmoid
        for (int n = 0; n < c.N; n++)
            for (int e = 0; e < c.E; e++) {
                int chosen = 0;
                for (int k = 0; k < c.K; k++)
                    chosen |= c.idx0[n * c.K + k] == e;
                if (!chosen)
                    ck_assert(g[n * c.E + e] == 0);
            }

    free(c.bias);
    free(c.logits);
    free(c.scores);
    free(c.w);
    free(c.r);
    free(c.idx);
    free(c.idx0);
    free(g);
    free(base);
    free(acc);
}

START_TEST(test_router_backward)
{
    for (int fn = 0; fn < 2; fn++)
        for (int norm = 0; norm < 2; norm++)
            for (int b = 0; b < 2; b++)
                check_router_backward((moe_score_fn)fn, norm, b);
}
END_TEST

/* ------------------------------------------------------------ counts */

START_TEST(test_counts)
{
    int32_t idx[6] = {2, 0, 2, 1, 0, 2};
    double counts[4] = {1, 0, 0, 5};
    moe_d_router_counts(counts, idx, 3, 4, 2);
    ck_assert(counts[0] == 3 && counts[1] == 1 && counts[2] == 3 && counts[3] == 5);
}
END_TEST

/* ------------------------------------------------------------ aux loss */

typedef struct {
    double *logits, *scores, *w, *counts;
    int32_t *idx;
    int N, E, K;
    double ntok;
    moe_score_fn fn;
} aux_ctx;

static double aux_loss(void *p)
{
    aux_ctx *c = p;
    moe_d_router_forward(c->scores, c->idx, c->w, c->logits, NULL, c->N, c->E, c->K, c->fn, 0);
    return moe_d_router_aux_loss_forward(c->scores, c->counts, c->N, c->E, c->K, c->ntok, c->fn);
}

static void check_aux(moe_score_fn fn)
{
    aux_ctx c = {.N = 7, .E = 6, .K = 2, .ntok = 20, .fn = fn};
    size_t ne = (size_t)c.N * c.E;
    c.logits = rnd(ne, 31, 1.2);
    c.scores = gc_alloc(ne);
    c.w = gc_alloc((size_t)c.N * c.K);
    c.idx = ialloc((size_t)c.N * c.K);
    c.counts = gc_alloc(c.E);
    for (int e = 0; e < c.E; e++) // counts over a larger group than the local tokens
        c.counts[e] = (double)((e * 7 + 3) % 11);

    double aux = aux_loss(&c);
    double ref = 0; // Megatron: sum_e (sum_n p[n,e]) * counts[e] * E / (K * ntok^2)
    for (int e = 0; e < c.E; e++) {
        double pe = 0;
        for (int n = 0; n < c.N; n++) {
            double S = 0;
            for (int j = 0; j < c.E; j++)
                S += c.scores[n * c.E + j];
            pe += c.scores[n * c.E + e] / (fn == MOE_SCORE_SIGMOID ? S : 1.0);
        }
        ref += pe * c.counts[e];
    }
    ref *= c.E / (c.K * c.ntok * c.ntok);
    ck_assert_msg(fabs(aux - ref) < 1e-14 * fabs(ref), "aux %.17g vs %.17g", aux, ref);

    double coeff = 0.37;
    double *g = gc_alloc(ne), *base = rnd(ne, 32, 1), *acc = gc_alloc(ne);
    memcpy(acc, base, sizeof(double) * ne);
    moe_d_router_aux_loss_backward(g, c.scores, c.counts, c.N, c.E, c.K, c.ntok, fn, coeff);
    moe_d_router_aux_loss_backward(acc, c.scores, c.counts, c.N, c.E, c.K, c.ntok, fn, coeff);
    assert_accumulated(acc, base, g, ne, "aux_loss_backward");
    for (size_t i = 0; i < ne; i++)
        g[i] /= coeff;
    double err = gc_check(aux_loss, &c, c.logits, g, ne, 1000,
                          fn == MOE_SCORE_SIGMOID ? "aux sigmoid" : "aux softmax");
    ck_assert_msg(err < GC_TOL, "aux rel err %g", err);

    free(c.logits);
    free(c.scores);
    free(c.w);
    free(c.idx);
    free(c.counts);
    free(g);
    free(base);
    free(acc);
}

START_TEST(test_aux_loss)
{
    check_aux(MOE_SCORE_SOFTMAX);
    check_aux(MOE_SCORE_SIGMOID);

    // a perfectly balanced router scores exactly 1 (both score functions)
    int N = 8, E = 4, K = 2;
    double logits[32] = {0}, s[32], w[16], counts[4] = {4, 4, 4, 4};
    int32_t idx[16];
    for (int fn = 0; fn < 2; fn++) {
        moe_d_router_forward(s, idx, w, logits, NULL, N, E, K, (moe_score_fn)fn, 0);
        double aux = moe_d_router_aux_loss_forward(s, counts, N, E, K, N, (moe_score_fn)fn);
        ck_assert_msg(fabs(aux - 1) < 1e-14, "balanced aux %g", aux);
    }
}
END_TEST

/* -------------------------------------------------------------- z-loss */

typedef struct {
    double *logits;
    int N, E;
} z_ctx;

static double z_loss(void *p)
{
    z_ctx *c = p;
    return moe_d_router_z_loss_forward(c->logits, c->N, c->E);
}

START_TEST(test_z_loss)
{
    z_ctx c = {.N = 5, .E = 7};
    size_t ne = (size_t)c.N * c.E;
    c.logits = rnd(ne, 41, 1);
    double ref = 0;
    for (int n = 0; n < c.N; n++) {
        double z = 0;
        for (int e = 0; e < c.E; e++)
            z += exp(c.logits[n * c.E + e]);
        ref += log(z) * log(z);
    }
    ref /= c.N;
    double z = z_loss(&c);
    ck_assert_msg(fabs(z - ref) < 1e-13 * ref, "z %.17g vs %.17g", z, ref);

    double coeff = 2.5;
    double *g = gc_alloc(ne), *base = rnd(ne, 42, 1), *acc = gc_alloc(ne);
    memcpy(acc, base, sizeof(double) * ne);
    moe_d_router_z_loss_backward(g, c.logits, c.N, c.E, coeff);
    moe_d_router_z_loss_backward(acc, c.logits, c.N, c.E, coeff);
    assert_accumulated(acc, base, g, ne, "z_loss_backward");
    for (size_t i = 0; i < ne; i++)
        g[i] /= coeff;
    double err = gc_check(z_loss, &c, c.logits, g, ne, 1000, "z-loss");
    ck_assert_msg(err < GC_TOL, "z-loss rel err %g", err);

    double big[3] = {1000, 999, 998}; // max-subtracted: no overflow
    double zb = moe_d_router_z_loss_forward(big, 1, 3);
    double lse = 1000 + log(1 + exp(-1.0) + exp(-2.0));
    ck_assert(fabs(zb - lse * lse) < 1e-9 * lse * lse);
    free(c.logits);
    free(g);
    free(base);
    free(acc);
}
END_TEST

/* ------------------------------------------------------ bias update */

START_TEST(test_bias_update)
{
    double bias[5] = {0.1, 0.1, 0.1, 0.1, 0.1};
    double counts[5] = {3, 5, 4, 4, 4}; // mean 4
    moe_d_router_bias_update(bias, counts, 5, 0.01);
    double want[5] = {0.11, 0.09, 0.1, 0.1, 0.1};
    for (int e = 0; e < 5; e++)
        ck_assert_msg(fabs(bias[e] - want[e]) < 1e-15, "bias[%d] = %.17g", e, bias[e]);
    double even[3] = {7, 7, 7}, b3[3] = {0, 0, 0};
    moe_d_router_bias_update(b3, even, 3, 0.5);
    ck_assert(b3[0] == 0 && b3[1] == 0 && b3[2] == 0);
}
END_TEST

int main(void)
{
    Suite *s = suite_create("grad_router");
    TCase *tc = tcase_create("router");
    tcase_add_test(tc, test_forward_random);
    tcase_add_test(tc, test_forward_ties);
    tcase_add_test(tc, test_router_backward);
    tcase_add_test(tc, test_counts);
    tcase_add_test(tc, test_aux_loss);
    tcase_add_test(tc, test_z_loss);
    tcase_add_test(tc, test_bias_update);
    suite_add_tcase(s, tc);
    SRunner *sr = srunner_create(s);
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed ? 1 : 0;
}
