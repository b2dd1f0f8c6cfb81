/*
** route_plan (float build, what training runs): a hand-worked example with
** its exact arrays, then invariants over many random routings with plenty of
** weight ties: every kept (token, slot) pair owns exactly one row, counts and
** offsets agree, capacity holds, each policy keeps the right pairs with ties
** to the lower token, padding rows exist and permute to zeros, and plan,
** permute_backward and unpermute_backward are bit-identical across thread
** counts.
*/
#include <check.h>
#include <omp.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "layers/experts.h"

typedef struct {
    int N, E, K, capacity, pad, R;
    moe_drop_policy policy;
    const int32_t *idx;
    const float *w;
    int32_t *counts, *offsets, *slot_row, *row_token, *row_slot;
} plan;

static void *zalloc(size_t n)
{
    void *p = calloc(n ? n : 1, 1);
    ck_assert_ptr_nonnull(p);
    return p;
}

static int rmax(const plan *p)
{
    return p->capacity > 0 ? p->E * p->capacity : p->N * p->K;
}

static void plan_alloc(plan *p)
{
    p->counts = zalloc(sizeof(int32_t) * (size_t)p->E);
    p->offsets = zalloc(sizeof(int32_t) * (size_t)(p->E + 1));
    p->slot_row = zalloc(sizeof(int32_t) * (size_t)p->N * p->K);
    p->row_token = zalloc(sizeof(int32_t) * (size_t)rmax(p));
    p->row_slot = zalloc(sizeof(int32_t) * (size_t)rmax(p));
}

static void plan_free(plan *p)
{
    free(p->counts);
    free(p->offsets);
    free(p->slot_row);
    free(p->row_token);
    free(p->row_slot);
}

static void plan_run(plan *p)
{
    p->R = moe_route_plan(p->counts, p->offsets, p->slot_row, p->row_token, p->row_slot, p->idx,
                          p->w, p->N, p->E, p->K, p->capacity, p->policy, p->pad);
}

static void expect_ints(const int32_t *got, const int32_t *want, int n, const char *what)
{
    for (int i = 0; i < n; i++)
        ck_assert_msg(got[i] == want[i], "%s[%d] = %d, want %d", what, i, got[i], want[i]);
}

/* ------------------------------------------------------- worked example */

// token:       0        1        2        3
// experts:   (0, 1)   (1, 0)   (0, 2)   (0, 1)
// weights:  (.6 .4)  (.7 .3)  (.5 .5)  (.6 .4)
static const int32_t ex_idx[8] = {0, 1, 1, 0, 0, 2, 0, 1};
static const float ex_w[8] = {0.6f, 0.4f, 0.7f, 0.3f, 0.5f, 0.5f, 0.6f, 0.4f};

START_TEST(test_example_dropless)
{
    plan p = {.N = 4, .E = 3, .K = 2, .idx = ex_idx, .w = ex_w};
    plan_alloc(&p);
    plan_run(&p);
    ck_assert_int_eq(p.R, 8);
    expect_ints(p.counts, (int32_t[]){4, 3, 1}, 3, "counts");
    expect_ints(p.offsets, (int32_t[]){0, 4, 7, 8}, 4, "offsets");
    expect_ints(p.row_slot, (int32_t[]){0, 3, 4, 6, 1, 2, 7, 5}, 8, "row_slot");
    expect_ints(p.row_token, (int32_t[]){0, 1, 2, 3, 0, 1, 3, 2}, 8, "row_token");
    expect_ints(p.slot_row, (int32_t[]){0, 4, 5, 1, 2, 7, 3, 6}, 8, "slot_row");
    plan_free(&p);
}
END_TEST

START_TEST(test_example_probs)
{
    // expert 0 keeps t0 and t3 (0.6 each) over t2 (0.5) and t1 (0.3); expert 1
    // keeps t1 (0.7), then t0 over t3 on the 0.4 tie (lower token)
    plan p = {.N = 4, .E = 3, .K = 2, .capacity = 2, .policy = MOE_DROP_PROBS, .idx = ex_idx,
              .w = ex_w};
    plan_alloc(&p);
    plan_run(&p);
    ck_assert_int_eq(p.R, 5);
    expect_ints(p.counts, (int32_t[]){2, 2, 1}, 3, "counts");
    expect_ints(p.offsets, (int32_t[]){0, 2, 4, 5}, 4, "offsets");
    expect_ints(p.row_slot, (int32_t[]){0, 6, 1, 2, 5}, 5, "row_slot");
    expect_ints(p.row_token, (int32_t[]){0, 3, 0, 1, 2}, 5, "row_token");
    expect_ints(p.slot_row, (int32_t[]){0, 2, 3, -1, -1, 4, 1, -1}, 8, "slot_row");
    plan_free(&p);
}
END_TEST

START_TEST(test_example_position_pad)
{
    plan p = {.N = 4, .E = 3, .K = 2, .capacity = 2, .policy = MOE_DROP_POSITION, .pad = 1,
              .idx = ex_idx, .w = NULL};
    plan_alloc(&p);
    plan_run(&p);
    ck_assert_int_eq(p.R, 6);
    expect_ints(p.counts, (int32_t[]){2, 2, 1}, 3, "counts");
    expect_ints(p.offsets, (int32_t[]){0, 2, 4, 6}, 4, "offsets");
    expect_ints(p.row_slot, (int32_t[]){0, 3, 1, 2, 5, -1}, 6, "row_slot");
    expect_ints(p.row_token, (int32_t[]){0, 1, 0, 1, 2, -1}, 6, "row_token");
    expect_ints(p.slot_row, (int32_t[]){0, 2, 3, 1, -1, 4, -1, -1}, 8, "slot_row");

    // the padding row permutes to zeros whatever xs held
    float x[4 * 3], xs[6 * 3];
    for (int i = 0; i < 12; i++)
        x[i] = (float)(i + 1);
    for (int i = 0; i < 18; i++)
        xs[i] = -7.0f;
    moe_permute_forward(xs, x, p.row_token, p.R, 3);
    for (int r = 0; r < 6; r++)
        for (int c = 0; c < 3; c++)
            ck_assert(xs[r * 3 + c] == (p.row_token[r] < 0 ? 0.0f : x[p.row_token[r] * 3 + c]));
    plan_free(&p);
}
END_TEST

START_TEST(test_bad_input)
{
    int32_t idx[4] = {0, 1, 3, 0};
    float w[4] = {1, 1, 1, 1};
    plan p = {.N = 2, .E = 3, .K = 2, .idx = idx, .w = w};
    plan_alloc(&p);
    plan_run(&p);
    ck_assert_int_eq(p.R, -1); // expert 3 of 3
    idx[2] = -1;
    plan_run(&p);
    ck_assert_int_eq(p.R, -1);
    idx[2] = 2;
    p.capacity = 1;
    p.w = NULL; // PROBS needs the weights
    plan_run(&p);
    ck_assert_int_eq(p.R, -1);
    plan_free(&p);
}
END_TEST

/* ----------------------------------------------------------- invariants */

static uint64_t lcg(uint64_t *s)
{
    *s = *s * 6364136223846793005ULL + 1442695040888963407ULL;
    return *s >> 33;
}

// K distinct experts per token, skewed toward low experts (so capacity bites
// and the last expert often gets nothing); weights on a 0.1 grid, so ties abound
static void random_routing(int32_t *idx, float *w, int N, int E, int K, uint64_t seed)
{
    uint64_t s = seed;
    for (int n = 0; n < N; n++)
        for (int k = 0; k < K; k++) {
            int e, dup;
            do {
                uint64_t a = lcg(&s) % (uint64_t)E, b = lcg(&s) % (uint64_t)E;
                e = (int)(a < b ? a : b);
                dup = 0;
                for (int j = 0; j < k; j++)
                    dup |= idx[n * K + j] == e;
            } while (dup);
            idx[n * K + k] = e;
            w[n * K + k] = (float)(1 + lcg(&s) % 10) / 10.0f;
        }
}

// pair a must be kept over dropped pair b under the policy
static int keeps_before(const plan *p, int a, int b)
{
    int ta = a / p->K, tb = b / p->K;
    if (p->policy == MOE_DROP_POSITION)
        return ta < tb;
    return p->w[a] > p->w[b] || (p->w[a] == p->w[b] && ta < tb);
}

static void check_invariants(const plan *p)
{
    int N = p->N, E = p->E, K = p->K, NK = N * K, cap = p->capacity;
    ck_assert_int_eq(p->R, p->offsets[E]);
    ck_assert_int_eq(p->offsets[0], 0);
    ck_assert_int_le(p->R, rmax(p));
    int kept_total = 0;
    for (int e = 0; e < E; e++) {
        int routed = 0;
        for (int i = 0; i < NK; i++)
            routed += p->idx[i] == e;
        int want = cap > 0 && routed > cap ? cap : routed;
        ck_assert_msg(p->counts[e] == want, "expert %d keeps %d, want %d", e, p->counts[e], want);
        int rows = p->offsets[e + 1] - p->offsets[e];
        ck_assert_int_eq(rows, cap > 0 && p->pad ? cap : want);
        kept_total += want;

        // real rows first, (token, slot) ascending, then padding
        for (int j = 0; j < rows; j++) {
            int r = p->offsets[e] + j;
            if (j >= want) {
                ck_assert(p->row_token[r] == -1 && p->row_slot[r] == -1);
                continue;
            }
            int i = p->row_slot[r];
            ck_assert(i >= 0 && i < NK);
            ck_assert_int_eq(p->idx[i], e);
            ck_assert_int_eq(p->row_token[r], i / K);
            ck_assert_int_eq(p->slot_row[i], r);
            if (j > 0)
                ck_assert_int_lt(p->row_slot[r - 1], i);
        }
        // the policy: every kept pair of e beats every dropped one
        for (int a = 0; a < NK; a++) {
            if (p->idx[a] != e || p->slot_row[a] < 0)
                continue;
            for (int b = 0; b < NK; b++)
                if (p->idx[b] == e && p->slot_row[b] < 0)
                    ck_assert_msg(keeps_before(p, a, b), "expert %d kept pair %d over %d", e, a,
                                  b);
        }
    }
    // kept pairs and real rows are in one-to-one correspondence
    int kept_pairs = 0;
    for (int i = 0; i < NK; i++) {
        int r = p->slot_row[i];
        if (r < 0)
            continue;
        kept_pairs++;
        ck_assert(r < p->R);
        ck_assert_int_eq(p->row_slot[r], i);
    }
    ck_assert_int_eq(kept_pairs, kept_total);
    if (cap <= 0)
        ck_assert_int_eq(p->R, NK);
}

START_TEST(test_invariants)
{
    const int caps[] = {0, 1, 3, 8, 17, 1000};
    for (uint64_t seed = 1; seed <= 6; seed++) {
        int N = 20 + (int)seed * 7, E = 3 + (int)seed, K = 1 + (int)(seed % 3);
        int32_t *idx = zalloc(sizeof(int32_t) * (size_t)N * K);
        float *w = zalloc(sizeof(float) * (size_t)N * K);
        random_routing(idx, w, N, E, K, seed);
        for (size_t ci = 0; ci < sizeof caps / sizeof caps[0]; ci++)
            for (int pol = 0; pol < 2; pol++)
                for (int pad = 0; pad < 2; pad++) {
                    plan p = {.N = N, .E = E, .K = K, .capacity = caps[ci], .pad = pad,
                              .policy = (moe_drop_policy)pol, .idx = idx, .w = w};
                    plan_alloc(&p);
                    plan_run(&p);
                    check_invariants(&p);
                    plan_free(&p);
                }
        free(idx);
        free(w);
    }
}
END_TEST

// all weights equal: PROBS falls back to the lower token, i.e. POSITION
START_TEST(test_all_ties)
{
    int N = 30, E = 4, K = 2, NK = N * K;
    int32_t *idx = zalloc(sizeof(int32_t) * NK);
    float *w = zalloc(sizeof(float) * NK);
    random_routing(idx, w, N, E, K, 42);
    for (int i = 0; i < NK; i++)
        w[i] = 0.5f;
    plan a = {.N = N, .E = E, .K = K, .capacity = 5, .policy = MOE_DROP_PROBS, .idx = idx, .w = w};
    plan b = a;
    b.policy = MOE_DROP_POSITION;
    plan_alloc(&a);
    plan_alloc(&b);
    plan_run(&a);
    plan_run(&b);
    ck_assert_int_eq(a.R, b.R);
    expect_ints(a.slot_row, b.slot_row, NK, "slot_row");
    expect_ints(a.row_slot, b.row_slot, a.R, "row_slot");
    plan_free(&a);
    plan_free(&b);
    free(idx);
    free(w);
}
END_TEST

/* ---------------------------------------------------------- determinism */

START_TEST(test_thread_count_independent)
{
    int N = 400, E = 16, K = 4, C = 64, NK = N * K;
    int32_t *idx = zalloc(sizeof(int32_t) * NK);
    float *w = zalloc(sizeof(float) * NK);
    random_routing(idx, w, N, E, K, 7);
    float *dys_in = zalloc(sizeof(float) * (size_t)NK * C), *dout = zalloc(sizeof(float) * N * C);
    float *ys = zalloc(sizeof(float) * (size_t)NK * C);
    uint64_t s = 3;
    for (size_t i = 0; i < (size_t)NK * C; i++) {
        dys_in[i] = (float)((int)(lcg(&s) % 2001) - 1000) / 997.0f;
        ys[i] = (float)((int)(lcg(&s) % 2001) - 1000) / 991.0f;
    }
    for (size_t i = 0; i < (size_t)N * C; i++)
        dout[i] = (float)((int)(lcg(&s) % 2001) - 1000) / 983.0f;

    const int threads[3] = {1, 2, 4};
    float *dx[3], *dys[3], *dtw[3];
    plan p[3];
    for (int t = 0; t < 3; t++) {
        omp_set_num_threads(threads[t]);
        p[t] = (plan){.N = N, .E = E, .K = K, .capacity = 90, .policy = MOE_DROP_PROBS, .pad = 1,
                      .idx = idx, .w = w};
        plan_alloc(&p[t]);
        plan_run(&p[t]);
        dx[t] = zalloc(sizeof(float) * N * C);
        dys[t] = zalloc(sizeof(float) * (size_t)p[t].R * C);
        dtw[t] = zalloc(sizeof(float) * NK);
        moe_permute_backward(dx[t], dys_in, p[t].slot_row, N, K, C);
        moe_unpermute_backward(dys[t], dtw[t], dout, ys, w, p[t].slot_row, N, K, C, p[t].R);
    }
    for (int t = 1; t < 3; t++) {
        ck_assert_int_eq(p[t].R, p[0].R);
        ck_assert(!memcmp(p[t].counts, p[0].counts, sizeof(int32_t) * E));
        ck_assert(!memcmp(p[t].offsets, p[0].offsets, sizeof(int32_t) * (E + 1)));
        ck_assert(!memcmp(p[t].slot_row, p[0].slot_row, sizeof(int32_t) * NK));
        ck_assert(!memcmp(p[t].row_token, p[0].row_token, sizeof(int32_t) * p[0].R));
        ck_assert(!memcmp(p[t].row_slot, p[0].row_slot, sizeof(int32_t) * p[0].R));
        ck_assert(!memcmp(dx[t], dx[0], sizeof(float) * N * C));
        ck_assert(!memcmp(dys[t], dys[0], sizeof(float) * (size_t)p[0].R * C));
        ck_assert(!memcmp(dtw[t], dtw[0], sizeof(float) * NK));
    }
    check_invariants(&p[0]);
    int dropped = 0;
    for (int i = 0; i < NK; i++)
        dropped += p[0].slot_row[i] < 0;
    ck_assert_int_gt(dropped, 0); // capacity 90 of a skewed 1600 pairs over 16 experts
    for (int t = 0; t < 3; t++) {
        plan_free(&p[t]);
        free(dx[t]);
        free(dys[t]);
        free(dtw[t]);
    }
    free(idx);
    free(w);
    free(dys_in);
    free(dout);
    free(ys);
}
END_TEST

int main(void)
{
    Suite *s = suite_create("route_plan");
    TCase *tc = tcase_create("plan");
    tcase_add_test(tc, test_example_dropless);
    tcase_add_test(tc, test_example_probs);
    tcase_add_test(tc, test_example_position_pad);
    tcase_add_test(tc, test_bad_input);
    tcase_add_test(tc, test_invariants);
    tcase_add_test(tc, test_all_ties);
    tcase_add_test(tc, test_thread_count_independent);
    suite_add_tcase(s, tc);
    SRunner *sr = srunner_create(s);
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed ? 1 : 0;
}
