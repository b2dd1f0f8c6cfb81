/*
** The expert path in double precision: route_plan -> permute -> experts ->
** unpermute, checked as one chain by finite differences w.r.t. x, w13, w2 and
** topk_w (dropless, capacity drops under both policies, padding, an expert
** that gets no token), its forward against a naive per-token reference, and
** the written/accumulated contract of every backward buffer.
*/
#include <check.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "gradcheck.h"
#include "layers/experts.h"

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

static uint64_t lcg(uint64_t *s)
{
    *s = *s * 6364136223846793005ULL + 1442695040888963407ULL;
    return *s >> 33;
}

/*
** K distinct experts per token drawn from [0, E-1): expert E-1 never gets a
** token. Weights are a shuffled ladder (spacing 0.8/(N*K)), so no two are
** within an FD step of each other and PROBS drops cannot flip under FD.
*/
static void make_routing(int32_t *idx, double *w, int N, int E, int K, uint64_t seed)
{
    uint64_t s = seed;
    for (int n = 0; n < N; n++)
        for (int k = 0; k < K; k++) {
            int e, dup;
            do {
                e = (int)(lcg(&s) % (uint64_t)(E - 1));
                dup = 0;
                for (int j = 0; j < k; j++)
                    dup |= idx[n * K + j] == e;
            } while (dup);
            idx[n * K + k] = e;
        }
    int NK = N * K;
    for (int i = 0; i < NK; i++)
        w[i] = 0.1 + 0.8 * i / NK;
    for (int i = NK - 1; i > 0; i--) {
        int j = (int)(lcg(&s) % (uint64_t)(i + 1));
        double t = w[i];
        w[i] = w[j];
        w[j] = t;
    }
}

typedef struct {
    int N, E, K, C, F, capacity, pad, R, Rmax;
    moe_drop_policy policy;
    double *x, *w13, *w2, *topk_w, *r;
    int32_t *topk_idx;
    int32_t *counts, *offsets, *slot_row, *row_token, *row_slot, *slot_row0;
    double *xs, *h13, *act, *ys, *out;
    int plan_changed;
} ch_ctx;

static double chain_loss(void *p)
{
    ch_ctx *c = p;
    c->R = moe_d_route_plan(c->counts, c->offsets, c->slot_row, c->row_token, c->row_slot,
                            c->topk_idx, c->topk_w, c->N, c->E, c->K, c->capacity, c->policy,
                            c->pad);
    if (c->slot_row0 && memcmp(c->slot_row, c->slot_row0, sizeof(int32_t) * (size_t)c->N * c->K))
        c->plan_changed = 1;
    moe_d_permute_forward(c->xs, c->x, c->row_token, c->R, c->C);
    moe_d_experts_forward(c->ys, c->h13, c->act, c->xs, c->w13, c->w2, c->offsets, c->E, c->C,
                          c->F);
    moe_d_unpermute_forward(c->out, c->ys, c->topk_w, c->slot_row, c->N, c->K, c->C);
    return gc_dot(c->out, c->r, (size_t)c->N * c->C);
}

static double silu(double g)
{
    return g / (1 + exp(-g));
}

// out[n] = sum over kept slots of w * expert(x[n]), one token at a time
static void check_forward_naive(const ch_ctx *c)
{
    int C = c->C, F = c->F;
    double *h = gc_alloc(2 * (size_t)F);
    for (int n = 0; n < c->N; n++) {
        for (int j = 0; j < C; j++) {
            double want = 0;
            for (int k = 0; k < c->K; k++) {
                int i = n * c->K + k;
                if (c->slot_row[i] < 0)
                    continue;
                int e = c->topk_idx[i];
                const double *wu = c->w13 + (size_t)e * 2 * F * C;
                const double *wd = c->w2 + (size_t)e * C * F;
                for (int f = 0; f < 2 * F; f++) {
                    h[f] = 0;
                    for (int q = 0; q < C; q++)
                        h[f] += wu[f * C + q] * c->x[n * C + q];
                }
                double y = 0;
                for (int f = 0; f < F; f++)
                    y += wd[j * F + f] * silu(h[f]) * h[F + f];
                want += c->topk_w[i] * y;
            }
            double got = c->out[n * C + j];
            ck_assert_msg(fabs(got - want) < 1e-12 * (1 + fabs(want)), "out[%d,%d] %.17g vs %.17g",
                          n, j, got, want);
        }
    }
    free(h);
}

// the backward of the chain; dx, dw13, dw2 accumulate into what they hold
static void chain_backward(ch_ctx *c, double *dx, double *dw13, double *dw2, double *dtopk_w,
                           double *dys, double *dxs, double *dh13, double *dact)
{
    moe_d_unpermute_backward(dys, dtopk_w, c->r, c->ys, c->topk_w, c->slot_row, c->N, c->K, c->C,
                             c->R);
    moe_d_experts_backward(dxs, dw13, dw2, dh13, dact, dys, c->xs, c->h13, c->act, c->w13, c->w2,
                           c->offsets, c->E, c->C, c->F);
    moe_d_permute_backward(dx, dxs, c->slot_row, c->N, c->K, c->C);
}

static void fill(double *p, size_t n, double v)
{
    for (size_t i = 0; i < n; i++)
        p[i] = v;
}

static void check_chain(int capacity, moe_drop_policy policy, int pad, const char *tag)
{
    ch_ctx c = {.N = 12, .E = 5, .K = 2, .C = 6, .F = 4, .capacity = capacity, .policy = policy,
                .pad = pad};
    int N = c.N, E = c.E, K = c.K, C = c.C, F = c.F, NK = N * K;
    c.Rmax = capacity > 0 ? E * capacity : NK;
    size_t nx = (size_t)N * C, n13 = (size_t)E * 2 * F * C, n2 = (size_t)E * C * F;
    c.x = rnd(nx, 1, 1);
    c.w13 = rnd(n13, 2, 1 / sqrt(C));
    c.w2 = rnd(n2, 3, 1 / sqrt(F));
    c.r = rnd(nx, 4, 0.25);
    c.topk_w = gc_alloc((size_t)NK);
    c.topk_idx = ialloc((size_t)NK);
    make_routing(c.topk_idx, c.topk_w, N, E, K, 99);
    c.counts = ialloc(E);
    c.offsets = ialloc(E + 1);
    c.slot_row = ialloc(NK);
    c.row_token = ialloc(c.Rmax);
    c.row_slot = ialloc(c.Rmax);
    c.xs = gc_alloc((size_t)c.Rmax * C);
    c.h13 = gc_alloc((size_t)c.Rmax * 2 * F);
    c.act = gc_alloc((size_t)c.Rmax * F);
    c.ys = gc_alloc((size_t)c.Rmax * C);
    c.out = gc_alloc(nx);

    chain_loss(&c);
    ck_assert_int_eq(c.R, c.offsets[E]);
    ck_assert_int_eq(c.counts[E - 1], 0); // the expert nobody routes to
    int kept = 0;
    for (int e = 0; e < E; e++)
        kept += c.counts[e];
    int overfull = 0; // some expert was routed more pairs than it can keep
    for (int e = 0; e < E && capacity > 0; e++) {
        int routed = 0;
        for (int i = 0; i < NK; i++)
            routed += c.topk_idx[i] == e;
        overfull |= routed > capacity;
    }
    ck_assert_msg(overfull ? kept < NK : kept == NK, "%s: kept %d of %d", tag, kept, NK);
    if (pad && capacity > 0)
        ck_assert_int_eq(c.R, E * capacity);
    check_forward_naive(&c);
    c.slot_row0 = ialloc(NK);
    memcpy(c.slot_row0, c.slot_row, sizeof(int32_t) * NK);

    // analytic gradients; the written buffers start as garbage to prove they are written
    size_t R = (size_t)c.R;
    double *dx = gc_alloc(nx), *dw13 = gc_alloc(n13), *dw2 = gc_alloc(n2),
           *dtw = gc_alloc((size_t)NK);
    double *dys = gc_alloc(R * C), *dxs = gc_alloc(R * C), *dh13 = gc_alloc(R * 2 * F),
           *dact = gc_alloc(R * F);
    fill(dtw, NK, NAN);
    fill(dys, R * C, NAN);
    fill(dxs, R * C, NAN);
    fill(dh13, R * 2 * F, NAN);
    fill(dact, R * F, NAN);
    chain_backward(&c, dx, dw13, dw2, dtw, dys, dxs, dh13, dact);

    for (size_t q = 0; q < R; q++) // padding rows: zero input, zero gradient
        if (c.row_token[q] < 0)
            for (int j = 0; j < C; j++) {
                ck_assert(c.xs[q * C + j] == 0 && c.ys[q * C + j] == 0);
                ck_assert(dys[q * C + j] == 0 && dxs[q * C + j] == 0);
            }
    for (int i = 0; i < NK; i++)
        if (c.slot_row[i] < 0)
            ck_assert_msg(dtw[i] == 0, "dropped pair %d has dtopk_w %g", i, dtw[i]);
    for (size_t i = 0; i < (size_t)2 * F * C; i++) // expert E-1 saw no token
        ck_assert(dw13[(size_t)(E - 1) * 2 * F * C + i] == 0);
    for (size_t i = 0; i < (size_t)C * F; i++)
        ck_assert(dw2[(size_t)(E - 1) * C * F + i] == 0);

    // a second backward adds exactly the same again into dx, dw13, dw2
    double *dx2 = gc_alloc(nx), *dw132 = gc_alloc(n13), *dw22 = gc_alloc(n2);
    memcpy(dx2, dx, sizeof(double) * nx);
    memcpy(dw132, dw13, sizeof(double) * n13);
    memcpy(dw22, dw2, sizeof(double) * n2);
    chain_backward(&c, dx2, dw132, dw22, dtw, dys, dxs, dh13, dact);
    for (size_t i = 0; i < nx; i++)
        ck_assert(fabs(dx2[i] - 2 * dx[i]) <= 1e-13 * (1 + fabs(dx[i])));
    for (size_t i = 0; i < n13; i++)
        ck_assert(fabs(dw132[i] - 2 * dw13[i]) <= 1e-13 * (1 + fabs(dw13[i])));
    for (size_t i = 0; i < n2; i++)
        ck_assert(fabs(dw22[i] - 2 * dw2[i]) <= 1e-13 * (1 + fabs(dw2[i])));

    char name[64];
    double err;
    snprintf(name, sizeof name, "%s dx", tag);
    err = gc_check(chain_loss, &c, c.x, dx, nx, 2000, name);
    ck_assert_msg(err < GC_TOL, "%s: rel err %g", name, err);
    snprintf(name, sizeof name, "%s dw13", tag);
    err = gc_check(chain_loss, &c, c.w13, dw13, n13, 2000, name);
    ck_assert_msg(err < GC_TOL, "%s: rel err %g", name, err);
    snprintf(name, sizeof name, "%s dw2", tag);
    err = gc_check(chain_loss, &c, c.w2, dw2, n2, 2000, name);
    ck_assert_msg(err < GC_TOL, "%s: rel err %g", name, err);
    snprintf(name, sizeof name, "%s dtopk_w", tag);
    err = gc_check(chain_loss, &c, c.topk_w, dtw, (size_t)NK, 2000, name);
    ck_assert_msg(err < GC_TOL, "%s: rel err %g", name, err);
    ck_assert_msg(!c.plan_changed, "%s: an FD step changed the plan", tag);

    free(c.x);
    free(c.w13);
    free(c.w2);
    free(c.r);
    free(c.topk_w);
    free(c.topk_idx);
    free(c.counts);
    free(c.offsets);
    free(c.slot_row);
    free(c.slot_row0);
    free(c.row_token);
    free(c.row_slot);
    free(c.xs);
    free(c.h13);
    free(c.act);
    free(c.ys);
    free(c.out);
    free(dx);
    free(dw13);
    free(dw2);
    free(dtw);
    free(dys);
    free(dxs);
    free(dh13);
    free(dact);
    free(dx2);
    free(dw132);
    free(dw22);
}

START_TEST(test_chain_dropless)
{
    check_chain(0, MOE_DROP_PROBS, 0, "dropless");
}
END_TEST

START_TEST(test_chain_probs)
{
    check_chain(4, MOE_DROP_PROBS, 0, "cap4 probs");
}
END_TEST

START_TEST(test_chain_position_pad)
{
    check_chain(4, MOE_DROP_POSITION, 1, "cap4 position pad");
}
END_TEST

START_TEST(test_chain_probs_pad_roomy)
{
    check_chain(9, MOE_DROP_PROBS, 1, "cap9 probs pad");
}
END_TEST

// every expert empty but one, and no rows at all: the grouped GEMM loops must cope
START_TEST(test_experts_empty)
{
    int E = 3, C = 4, F = 2;
    int32_t offsets[4] = {0, 0, 0, 0};
    double w13[3 * 4 * 4], w2[3 * 4 * 2], dw13[48] = {0}, dw2[24] = {0};
    gc_fill_normal(w13, 48, 1, 1);
    gc_fill_normal(w2, 24, 2, 1);
    double dummy[1] = {0};
    moe_d_experts_forward(dummy, dummy, dummy, dummy, w13, w2, offsets, E, C, F);
    moe_d_experts_backward(dummy, dw13, dw2, dummy, dummy, dummy, dummy, dummy, dummy, w13, w2,
                           offsets, E, C, F);
    for (int i = 0; i < 48; i++)
        ck_assert(dw13[i] == 0);
    ck_assert(dummy[0] == 0);
}
END_TEST

int main(void)
{
    Suite *s = suite_create("grad_experts");
    TCase *tc = tcase_create("experts");
    tcase_add_test(tc, test_chain_dropless);
    tcase_add_test(tc, test_chain_probs);
    tcase_add_test(tc, test_chain_position_pad);
    tcase_add_test(tc, test_chain_probs_pad_roomy);
    tcase_add_test(tc, test_experts_empty);
    suite_add_tcase(s, tc);
    SRunner *sr = srunner_create(s);
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed ? 1 : 0;
}
