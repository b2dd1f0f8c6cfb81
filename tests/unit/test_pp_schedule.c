/* Pipeline schedules: 1F1B and Megatron's interleaved order, every action
** exactly once, no deadlock under blocking receives (checked by a simulator
** of this file's own, itself shown to catch a deadlock), activation peaks,
** the simulated bubble against the analytic one, refused arguments. */
#include <check.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "parallel/pp_schedule.h"
#include "runtime/base/status.h"

enum { MAX_P = 8, MAX_M = 16, MAX_V = 3, MAX_N = 2 * MAX_M * MAX_V };

static int valid(int p, int m, int v) { return v == 1 || m % p == 0; }

/* lists[s] = stage s's schedule. */
static void all_lists(int p, int m, int v, moe_pp_action lists[MAX_P][MAX_N])
{
    for (int s = 0; s < p; s++) {
        moe_status st = moe_pp_schedule(p, s, m, v, lists[s]);
        ck_assert_msg(st == MOE_OK, "p=%d s=%d m=%d v=%d: %s", p, s, m, v, moe_errmsg());
    }
}

/* Each (micro, chunk) forward and backward exactly once, backward after forward. */
static void check_complete(int p, int s, int m, int v, const moe_pp_action *a)
{
    int fwd_at[MAX_M][MAX_V], bwd_at[MAX_M][MAX_V];
    for (int i = 0; i < m; i++)
        for (int c = 0; c < v; c++)
            fwd_at[i][c] = bwd_at[i][c] = -1;
    for (int n = 0; n < 2 * m * v; n++) {
        ck_assert_msg(a[n].micro >= 0 && a[n].micro < m && a[n].chunk >= 0 && a[n].chunk < v &&
                          (a[n].kind == MOE_PP_FWD || a[n].kind == MOE_PP_BWD),
                      "p=%d s=%d m=%d v=%d: action %d out of range", p, s, m, v, n);
        int *at = a[n].kind == MOE_PP_FWD ? &fwd_at[a[n].micro][a[n].chunk] : &bwd_at[a[n].micro][a[n].chunk];
        ck_assert_msg(*at < 0, "p=%d s=%d m=%d v=%d: action %d repeats (micro %d chunk %d)", p, s, m, v, n,
                      a[n].micro, a[n].chunk);
        *at = n;
    }
    for (int i = 0; i < m; i++)
        for (int c = 0; c < v; c++)
            ck_assert_msg(fwd_at[i][c] >= 0 && bwd_at[i][c] > fwd_at[i][c],
                          "p=%d s=%d m=%d v=%d: micro %d chunk %d: forward at %d, backward at %d", p, s, m, v, i,
                          c, fwd_at[i][c], bwd_at[i][c]);
}

static int peak_in_flight(int m, int v, const moe_pp_action *a)
{
    int alive = 0, peak = 0;
    for (int n = 0; n < 2 * m * v; n++) {
        alive += a[n].kind == MOE_PP_FWD ? 1 : -1;
        if (alive > peak)
            peak = alive;
    }
    return peak;
}

/* Every stage runs its list in order; an action waits (blocking receive)
** until its input exists. Rounds of "each stage runs its next action if it
** can"; returns 1 if all lists finish, 0 on a round with no progress. */
static int runs_without_deadlock(int p, int m, int v, moe_pp_action lists[MAX_P][MAX_N])
{
    static unsigned char fdone[MAX_M][MAX_P * MAX_V], bdone[MAX_M][MAX_P * MAX_V];
    int next[MAX_P] = {0}, n = 2 * m * v, K = p * v, left = p * n;
    memset(fdone, 0, sizeof fdone);
    memset(bdone, 0, sizeof bdone);
    while (left > 0) {
        int progress = 0;
        for (int s = 0; s < p; s++) {
            if (next[s] == n)
                continue;
            moe_pp_action a = lists[s][next[s]];
            int k = a.chunk * p + s;
            int ready = a.kind == MOE_PP_FWD ? (k == 0 || fdone[a.micro][k - 1])
                                             : (k == K - 1 ? fdone[a.micro][k] : bdone[a.micro][k + 1]);
            if (!ready)
                continue;
            (a.kind == MOE_PP_FWD ? fdone : bdone)[a.micro][k] = 1;
            next[s]++, left--, progress = 1;
        }
        if (!progress)
            return 0;
    }
    return 1;
}

START_TEST(test_deadlock_checker_catches_cycle)
{
    /* Two valid-looking lists that wait on each other: stage 1's second
    ** forward needs stage 0's, which comes after stage 0's first backward,
    ** which needs stage 1's, which comes after stage 1's second forward. */
    static moe_pp_action lists[MAX_P][MAX_N];
    moe_pp_action s0[4] = {{MOE_PP_FWD, 0, 0}, {MOE_PP_BWD, 0, 0}, {MOE_PP_FWD, 1, 0}, {MOE_PP_BWD, 1, 0}};
    moe_pp_action s1[4] = {{MOE_PP_FWD, 0, 0}, {MOE_PP_FWD, 1, 0}, {MOE_PP_BWD, 0, 0}, {MOE_PP_BWD, 1, 0}};
    memcpy(lists[0], s0, sizeof s0);
    memcpy(lists[1], s1, sizeof s1);
    check_complete(2, 0, 2, 1, lists[0]);
    check_complete(2, 1, 2, 1, lists[1]);
    ck_assert_int_eq(runs_without_deadlock(2, 2, 1, lists), 0);
    /* and the real schedule for the same sizes runs */
    all_lists(2, 2, 1, lists);
    ck_assert_int_eq(runs_without_deadlock(2, 2, 1, lists), 1);
}
END_TEST

START_TEST(test_1f1b_order)
{
    moe_pp_action a[2 * MAX_M];
    for (int p = 1; p <= MAX_P; p++)
        for (int m = 1; m <= MAX_M; m++)
            for (int s = 0; s < p; s++) {
                ck_assert_int_eq(moe_pp_schedule(p, s, m, 1, a), MOE_OK);
                int w = p - s - 1 < m ? p - s - 1 : m, n = 0;
                for (int j = 0; j < w; j++, n++)
                    ck_assert(a[n].kind == MOE_PP_FWD && a[n].micro == j && a[n].chunk == 0);
                for (int i = 0; i < m - w; i++) {
                    ck_assert_msg(a[n].kind == MOE_PP_FWD && a[n].micro == w + i, "p=%d s=%d m=%d at %d", p, s,
                                  m, n);
                    n++;
                    ck_assert_msg(a[n].kind == MOE_PP_BWD && a[n].micro == i, "p=%d s=%d m=%d at %d", p, s, m, n);
                    n++;
                }
                for (int j = m - w; j < m; j++, n++)
                    ck_assert(a[n].kind == MOE_PP_BWD && a[n].micro == j && a[n].chunk == 0);
                ck_assert_int_eq(n, 2 * m);
            }
}
END_TEST

/* p = 2, m = 4, v = 2 worked out by hand from Megatron-Core's rules:
** forward j on chunk (j/2)%2, micro (j/4)*2 + j%2; backward chunk reversed;
** warm-up 2*(p-s-1) + (v-1)*p = 4 on stage 0, 2 on stage 1. */
START_TEST(test_interleaved_example)
{
#define F(i, c) {MOE_PP_FWD, i, c}
#define B(i, c) {MOE_PP_BWD, i, c}
    static const moe_pp_action want[2][16] = {
        {F(0, 0), F(1, 0), F(0, 1), F(1, 1), F(2, 0), B(0, 1), F(3, 0), B(1, 1), F(2, 1), B(0, 0), F(3, 1),
         B(1, 0), B(2, 1), B(3, 1), B(2, 0), B(3, 0)},
        {F(0, 0), F(1, 0), F(0, 1), B(0, 1), F(1, 1), B(1, 1), F(2, 0), B(0, 0), F(3, 0), B(1, 0), F(2, 1),
         B(2, 1), F(3, 1), B(3, 1), B(2, 0), B(3, 0)},
    };
#undef F
#undef B
    for (int s = 0; s < 2; s++) {
        moe_pp_action a[16];
        ck_assert_int_eq(moe_pp_schedule(2, s, 4, 2, a), MOE_OK);
        for (int n = 0; n < 16; n++)
            ck_assert_msg(a[n].kind == want[s][n].kind && a[n].micro == want[s][n].micro &&
                              a[n].chunk == want[s][n].chunk,
                          "stage %d action %d: got %c%d.%d, want %c%d.%d", s, n, a[n].kind ? 'B' : 'F', a[n].micro,
                          a[n].chunk, want[s][n].kind ? 'B' : 'F', want[s][n].micro, want[s][n].chunk);
    }
    ck_assert_int_eq(moe_pp_max_in_flight(2, 0, 4, 2), 5);
    ck_assert_int_eq(moe_pp_max_in_flight(2, 1, 4, 2), 3);
}
END_TEST

START_TEST(test_complete_no_deadlock_in_flight)
{
    static moe_pp_action lists[MAX_P][MAX_N];
    int cases = 0;
    for (int v = 1; v <= MAX_V; v++)
        for (int p = 1; p <= MAX_P; p++)
            for (int m = 1; m <= MAX_M; m++) {
                if (!valid(p, m, v))
                    continue;
                all_lists(p, m, v, lists);
                for (int s = 0; s < p; s++) {
                    check_complete(p, s, m, v, lists[s]);
                    int peak = peak_in_flight(m, v, lists[s]);
                    ck_assert_msg(peak == moe_pp_max_in_flight(p, s, m, v), "p=%d s=%d m=%d v=%d: peak %d, said %d",
                                  p, s, m, v, peak, moe_pp_max_in_flight(p, s, m, v));
                    if (v == 1)
                        ck_assert_msg(peak <= p - s && peak == (p - s < m ? p - s : m), "p=%d s=%d m=%d: peak %d",
                                      p, s, m, peak);
                }
                ck_assert_msg(runs_without_deadlock(p, m, v, lists), "deadlock at p=%d m=%d v=%d", p, m, v);
                ck_assert_msg(moe_pp_simulate(p, m, v, 1.0, 2.0, 0.1, NULL) > 0, "simulate p=%d m=%d v=%d", p, m,
                              v);
                cases++;
            }
    printf("pp_schedule: %d (p, m, v) cases complete, deadlock-free, peaks as stated\n", cases);
}
END_TEST

START_TEST(test_bubble)
{
    for (int p = 1; p <= MAX_P; p++)
        for (int m = 1; m <= MAX_M; m++) {
            double want = moe_pp_bubble_formula(p, m, 1);
            ck_assert_double_eq_tol(want, (double)(p - 1) / (m + p - 1), 1e-15);
            /* 1F1B with any tf, tb: makespan (m + p - 1) * (tf + tb) */
            const double t[3][2] = {{1.0, 2.0}, {1.0, 1.0}, {0.5, 3.0}};
            for (int k = 0; k < 3; k++) {
                double bubble = -1, span = moe_pp_simulate(p, m, 1, t[k][0], t[k][1], 0.0, &bubble);
                ck_assert_msg(fabs(bubble - want) <= 1e-12, "p=%d m=%d tf=%g tb=%g: bubble %.15f, formula %.15f",
                              p, m, t[k][0], t[k][1], bubble, want);
                ck_assert_double_eq_tol(span, (m + p - 1) * (t[k][0] + t[k][1]), 1e-9);
            }
            if (m % p != 0)
                continue;
            /* interleaved: the critical path also gives the formula exactly */
            for (int v = 2; v <= MAX_V; v++)
                for (int k = 0; k < 3; k++) {
                    double bubble = -1;
                    moe_pp_simulate(p, m, v, t[k][0], t[k][1], 0.0, &bubble);
                    ck_assert_msg(fabs(bubble - moe_pp_bubble_formula(p, m, v)) <= 1e-12,
                                  "p=%d m=%d v=%d tf=%g tb=%g: bubble %.15f, formula %.15f", p, m, v, t[k][0],
                                  t[k][1], bubble, moe_pp_bubble_formula(p, m, v));
                }
            if (p < 2)
                continue;
            double b1 = 0, b2 = 0;
            moe_pp_simulate(p, m, 1, 1.0, 2.0, 0.0, &b1);
            moe_pp_simulate(p, m, 2, 1.0, 2.0, 0.0, &b2);
            ck_assert_msg(b2 < b1, "p=%d m=%d: interleaved bubble %.4f not below 1F1B's %.4f", p, m, b2, b1);
        }
    printf("pp_schedule bubbles (tf=1 tb=2 per chunk, comm=0): simulated / formula\n");
    const int pm[][2] = {{2, 4}, {4, 4}, {4, 8}, {4, 16}, {8, 8}, {8, 16}};
    for (size_t i = 0; i < sizeof pm / sizeof pm[0]; i++) {
        int p = pm[i][0], m = pm[i][1];
        printf("  p=%d m=%-2d", p, m);
        for (int v = 1; v <= MAX_V; v++) {
            double b = 0;
            moe_pp_simulate(p, m, v, 1.0, 2.0, 0.0, &b);
            printf("  v=%d %.4f / %.4f", v, b, moe_pp_bubble_formula(p, m, v));
        }
        printf("\n");
    }
    /* one micro-batch: the chain of every virtual stage's forward and
    ** backward, with a hop between neighbours (none at the loss) */
    for (int p = 1; p <= MAX_P; p++)
        ck_assert_double_eq_tol(moe_pp_simulate(p, 1, 1, 1.0, 2.0, 0.5, NULL), 3.0 * p + 2 * (p - 1) * 0.5, 1e-12);
    ck_assert_double_eq_tol(moe_pp_simulate(1, 1, 3, 1.0, 2.0, 0.5, NULL), 9.0 + 4 * 0.5, 1e-12);
    /* p = 2, m = 2 by hand, comm 0.5: stage 1 runs F0 1.5-2.5, B0 -4.5,
    ** F1 -5.5, B1 -7.5; stage 0's B0 waits until 5, its B1 runs 8-10 */
    double bh = 0;
    ck_assert_double_eq_tol(moe_pp_simulate(2, 2, 1, 1.0, 2.0, 0.5, &bh), 10.0, 1e-12);
    ck_assert_double_eq_tol(bh, 0.4, 1e-12);
    /* communication only adds time */
    double b0 = 0, bc = 0;
    double t0 = moe_pp_simulate(4, 8, 2, 1.0, 2.0, 0.0, &b0), tc = moe_pp_simulate(4, 8, 2, 1.0, 2.0, 0.25, &bc);
    ck_assert(tc > t0 && bc > b0);
}
END_TEST

START_TEST(test_bad_arguments)
{
    moe_pp_action a[64];
    const int bad[][4] = {{0, 0, 4, 1}, {2, -1, 4, 1}, {2, 2, 4, 1}, {2, 0, 0, 1}, {2, 0, 4, 0}, {3, 0, 4, 2},
                          {1, 0, 1 << 28, 8}};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        int p = bad[i][0], s = bad[i][1], m = bad[i][2], v = bad[i][3];
        moe_error_clear();
        ck_assert_int_eq(moe_pp_schedule(p, s, m, v, a), MOE_ERR_USAGE);
        char want[64];
        snprintf(want, sizeof want, "(got %d), stage 0 <= s < p (got %d)", p, s);
        ck_assert_msg(strstr(moe_errmsg(), want) && strstr(moe_errmsg(), "divisible"), "message: %s",
                      moe_errmsg());
        ck_assert_int_eq(moe_pp_max_in_flight(p, s, m, v), -1);
    }
    moe_error_clear();
    ck_assert_int_eq(moe_pp_schedule(2, 0, 4, 1, NULL), MOE_ERR_USAGE);
    ck_assert_ptr_nonnull(strstr(moe_errmsg(), "8 actions"));
    moe_error_clear();
    ck_assert(moe_pp_bubble_formula(3, 4, 2) < 0 && moe_pp_bubble_formula(0, 4, 1) < 0);
    ck_assert(moe_pp_bubble_formula(3, 6, 2) > 0);
    double b = 7;
    ck_assert(moe_pp_simulate(3, 4, 2, 1, 2, 0, &b) < 0);
    ck_assert(moe_pp_simulate(2, 4, 1, 0, 2, 0, &b) < 0);
    ck_assert(moe_pp_simulate(2, 4, 1, 1, 2, -1, &b) < 0);
    ck_assert(moe_pp_simulate(2, 4, 1, 1, NAN, 0, &b) < 0);
    ck_assert(b == 7);
}
END_TEST

int main(void)
{
    Suite *su = suite_create("pp_schedule");
    TCase *tc = tcase_create("core");
    tcase_add_test(tc, test_deadlock_checker_catches_cycle);
    tcase_add_test(tc, test_1f1b_order);
    tcase_add_test(tc, test_interleaved_example);
    tcase_add_test(tc, test_complete_no_deadlock_in_flight);
    tcase_add_test(tc, test_bubble);
    tcase_add_test(tc, test_bad_arguments);
    suite_add_tcase(su, tc);
    SRunner *sr = srunner_create(su);
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed != 0;
}
