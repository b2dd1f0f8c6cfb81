/* Expert placement: baselines, ILP optimality without and with replication
** (brute force), the watchdog fallback to the warm start, EPLB replication,
** replicated ILP plans (exactly S copies per rank when S * ep = E + R),
** refused option combinations, plan files and their refusals, and the
** 24 x 64 x 8 Zipf benchmark (load reduction only; times are printed). */
#include <check.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "launch/inspect_plan.h"
#include "launch/plan_placement.h"
#include "planner/placement.h"
#include "planner/plan.h"
#include "planner/trace.h"
#include "proto/placement_plan.pb-c.h"
#include "runtime/base/status.h"
#include "testutil.h"

static uint64_t rng_state;
static uint64_t next_u64(void)
{
    rng_state += 0x9e3779b97f4a7c15ull;
    uint64_t z = rng_state;
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

/* (layers, experts) integer loads: Zipf(skew) over a random permutation per
** layer, total `tokens` per layer; skew 0 gives uniform random 1..1000. */
static double *make_load(int layers, int experts, double skew, double tokens, uint64_t seed)
{
    rng_state = seed;
    double *w = malloc((size_t)layers * experts * sizeof *w);
    int *perm = malloc((size_t)experts * sizeof *perm);
    for (int l = 0; l < layers; l++) {
        for (int e = 0; e < experts; e++)
            perm[e] = e;
        for (int e = experts - 1; e > 0; e--) {
            int j = (int)(next_u64() % (uint64_t)(e + 1)), t = perm[e];
            perm[e] = perm[j], perm[j] = t;
        }
        double h = 0;
        for (int k = 1; k <= experts; k++)
            h += pow(k, -skew);
        for (int k = 0; k < experts; k++)
            w[(size_t)l * experts + perm[k]] =
                skew > 0 ? round(tokens * pow(k + 1, -skew) / h) : (double)(1 + next_u64() % 1000);
    }
    free(perm);
    return w;
}

static double brute_force(const double *w, int E, int R, int S, int e, int *count, double *load)
{
    if (e == E) {
        double mx = 0;
        for (int r = 0; r < R; r++)
            mx = fmax(mx, load[r]);
        return mx;
    }
    double best = INFINITY;
    for (int r = 0; r < R; r++) {
        if (count[r] == S)
            continue;
        count[r]++, load[r] += w[e];
        best = fmin(best, brute_force(w, E, R, S, e + 1, count, load));
        count[r]--, load[r] -= w[e];
    }
    return best;
}

START_TEST(ilp_matches_brute_force)
{
    for (int seed = 1; seed <= 6; seed++) {
        double *w = make_load(1, 8, seed % 2 ? 0 : 0.9, 1000, (uint64_t)seed);
        int count[4] = {0};
        double load[4] = {0};
        double opt = brute_force(w, 8, 4, 2, 0, count, load);
        int start[8], got[8];
        ck_assert_int_eq(moe_place_greedy(w, 8, 4, 2, start), MOE_OK);
        moe_ilp_result res;
        ck_assert_int_eq(moe_place_ilp(w, 8, 4, 2, start, 20, 0, got, &res), MOE_OK);
        ck_assert_msg(fabs(res.objective - opt) < 1e-9, "seed %d: ILP %g, optimum %g", seed, res.objective, opt);
        ck_assert(res.finished && !res.killed);
        ck_assert(res.bound <= opt + 1e-9);
        ck_assert_msg(res.bound >= opt - 1e-6, "seed %d: bound %g below proven optimum %g", seed, res.bound, opt);
        int c[4] = {0};
        for (int e = 0; e < 8; e++)
            ck_assert(++c[got[e]] <= 2);
        free(w);
    }
}
END_TEST

static moe_plan place(const double *w, int layers, int E, moe_place_method m, int ep, int replicas, moe_place_stats *s)
{
    moe_place_opts o;
    moe_place_opts_default(&o);
    o.method = m, o.ep = ep, o.replicas = replicas, o.time_limit_s = 10, o.gap = 0.005;
    moe_plan p;
    moe_status st = moe_place(w, layers, E, &o, &p, s);
    ck_assert_msg(st == MOE_OK, "%s: %s", moe_place_method_name(m), moe_errmsg());
    return p;
}

START_TEST(baselines_valid)
{
    double *w = make_load(3, 32, 1.0, 1e5, 7);
    moe_place_method ms[] = {MOE_PLACE_CONTIGUOUS, MOE_PLACE_ROUND_ROBIN, MOE_PLACE_GREEDY, MOE_PLACE_EPLB};
    double greedy = 0, contiguous = 0;
    for (int k = 0; k < 4; k++) {
        moe_plan p = place(w, 3, 32, ms[k], 4, 0, NULL);
        ck_assert_int_eq(moe_plan_check(&p, 3, 32, 4), MOE_OK);
        ck_assert_int_eq(p.slots_per_rank, 8);
        for (int l = 0; l < 3; l++) {
            int c[4] = {0};
            for (int e = 0; e < 32; e++)
                c[moe_plan_copies(&p, l, e)->rank]++;
            for (int r = 0; r < 4; r++)
                ck_assert_int_eq(c[r], 8);
        }
        ck_assert(fabs(p.objective - moe_plan_cost(&p, w)) < 1e-9);
        ck_assert(p.lower_bound <= p.objective);
        if (ms[k] == MOE_PLACE_CONTIGUOUS) {
            ck_assert_int_eq(moe_plan_copies(&p, 0, 9)->rank, 1);
            contiguous = p.objective;
        }
        if (ms[k] == MOE_PLACE_ROUND_ROBIN)
            ck_assert_int_eq(moe_plan_copies(&p, 0, 9)->rank, 1);
        if (ms[k] == MOE_PLACE_GREEDY)
            greedy = p.objective;
        moe_plan_free(&p);
    }
    ck_assert(greedy < contiguous);
    free(w);
}
END_TEST

/* 2 layers, 4 experts, 2 sources, 2 windows (steps 0 and 1), loads by hand. */
static void hand_trace(moe_trace *t)
{
    ck_assert_int_eq(moe_trace_alloc(t, 2, 4, 1, 2, 2, 0), MOE_OK);
    t->windows[1].first_step = 1;
    /* [window][layer][source][expert] */
    static const double L[2][2][2][4] = {{{{4, 0, 0, 0}, {0, 0, 4, 0}}, {{5, 0, 0, 0}, {3, 0, 0, 0}}},
                                         {{{1, 1, 0, 0}, {0, 0, 1, 1}}, {{0, 0, 0, 2}, {0, 0, 0, 4}}}};
    for (int w = 0; w < 2; w++)
        memcpy(t->windows[w].load, L[w], sizeof L[w]);
}

START_TEST(trace_imbalance_by_hand)
{
    moe_trace t;
    hand_trace(&t);
    double v;
    /* contiguous on 2 ranks: window 0 layer 0 experts [4,0,4,0] -> ranks
    ** [4,4], layer 1 [8,0,0,0] -> [8,0]; window 1 [1,1,1,1] -> [2,2],
    ** [0,0,0,6] -> [0,6]: max 4+8+2+6 over mean 4+4+2+3 */
    ck_assert_int_eq(moe_plan_trace_imbalance(&t, NULL, 2, 0, &v), MOE_OK);
    ck_assert_double_eq_tol(v, 20.0 / 13, 1e-12);
    ck_assert_int_eq(moe_plan_trace_imbalance(&t, NULL, 2, 1, &v), MOE_OK); /* window 1 only */
    ck_assert_double_eq_tol(v, 8.0 / 5, 1e-12);
    ck_assert_int_eq(moe_plan_trace_imbalance(&t, NULL, 4, 0, &v), MOE_OK); /* one expert per rank */
    ck_assert_double_eq_tol(v, (4 + 8 + 1 + 6) / (2 + 2 + 1 + 1.5), 1e-12);
    ck_assert_int_eq(moe_plan_trace_imbalance(&t, NULL, 1, 0, &v), MOE_OK);
    ck_assert_double_eq_tol(v, 1, 1e-12);
    /* a plan: round-robin puts experts {0,2} and {1,3} together: [8,0] [8,0] [2,2] [0,6] */
    double *w = NULL;
    ck_assert_int_eq(moe_trace_expert_load(&t, &w), MOE_OK);
    moe_plan p = place(w, 2, 4, MOE_PLACE_ROUND_ROBIN, 2, 0, NULL);
    ck_assert_int_eq(moe_plan_trace_imbalance(&t, &p, 0, 0, &v), MOE_OK);
    ck_assert_double_eq_tol(v, 24.0 / 13, 1e-12);
    /* refusals: no window from step 2; a plan of another model */
    ck_assert_int_eq(moe_plan_trace_imbalance(&t, NULL, 2, 2, &v), MOE_ERR_INPUT);
    ck_assert_msg(strstr(moe_errmsg(), "no routed pairs"), "%s", moe_errmsg());
    ck_assert_int_eq(moe_plan_trace_imbalance(&t, NULL, 0, 0, &v), MOE_ERR_USAGE);
    double *w3 = make_load(3, 4, 0, 0, 1);
    moe_plan q = place(w3, 3, 4, MOE_PLACE_CONTIGUOUS, 2, 0, NULL);
    ck_assert_int_ne(moe_plan_trace_imbalance(&t, &q, 0, 0, &v), MOE_OK);
    moe_plan_free(&p), moe_plan_free(&q), free(w), free(w3);
    moe_trace_free(&t);
}
END_TEST

START_TEST(eplb_replication)
{
    double *w = make_load(2, 16, 1.5, 1e5, 3);
    moe_plan g = place(w, 2, 16, MOE_PLACE_GREEDY, 4, 0, NULL);
    moe_plan p = place(w, 2, 16, MOE_PLACE_EPLB, 4, 4, NULL);
    ck_assert_int_eq(p.slots_per_rank, 5);
    ck_assert_int_eq(moe_plan_validate(&p), MOE_OK);
    for (int l = 0; l < 2; l++) {
        int hot = 0, total = 0;
        for (int e = 0; e < 16; e++) {
            if (w[l * 16 + e] > w[l * 16 + hot])
                hot = e;
            int n = p.ncopies[l * 16 + e];
            total += n;
            for (int k = 0; k < n; k++)
                ck_assert(fabs(moe_plan_copies(&p, l, e)[k].share - 1.0 / n) < 1e-12);
        }
        ck_assert_int_eq(total, 20);
        ck_assert_int_ge(p.ncopies[l * 16 + hot], 2);
    }
    ck_assert_msg(p.objective < g.objective, "eplb %g vs greedy %g", p.objective, g.objective);
    /* replicas with another method is refused */
    moe_place_opts o;
    moe_place_opts_default(&o);
    o.ep = 4, o.replicas = 2, o.method = MOE_PLACE_GREEDY;
    moe_plan q;
    ck_assert_int_eq(moe_place(w, 2, 16, &o, &q, NULL), MOE_ERR_USAGE);
    moe_error_clear();
    moe_plan_free(&p), moe_plan_free(&g);
    free(w);
}
END_TEST

/* Non-integer loads, so no start can meet the bound exactly and gap 0 forces
** a solve, which a 1 ms limit kills. */
static double *fractional_load(int layers, int experts, double skew, uint64_t seed)
{
    double *w = make_load(layers, experts, skew, 1e5, seed);
    for (int i = 0; i < layers * experts; i++)
        w[i] += 0.25 + 0.5 * (double)(next_u64() % 1000) / 1000;
    return w;
}

START_TEST(time_limit_falls_back_to_greedy)
{
    double *w = fractional_load(4, 64, 0, 11);
    moe_place_opts o;
    moe_place_opts_default(&o);
    o.ep = 8, o.time_limit_s = 0.001, o.gap = 0;
    moe_plan p;
    moe_place_stats s;
    ck_assert_int_eq(moe_place(w, 4, 64, &o, &p, &s), MOE_OK);
    ck_assert_int_eq(s.fallback, 4);
    ck_assert_int_eq(s.ilp_optimal + s.ilp_limited, 0);
    /* the warm start: greedy, then local search */
    double cost = 0;
    for (int l = 0; l < 4; l++) {
        int g[64], before[64];
        ck_assert_int_eq(moe_place_greedy(w + l * 64, 64, 8, 8, g), MOE_OK);
        memcpy(before, g, sizeof g);
        ck_assert_int_eq(moe_place_improve(w + l * 64, 64, 8, 8, g), MOE_OK);
        double load_g[8] = {0}, load_b[8] = {0}, mg = 0, mb = 0;
        int count[8] = {0};
        for (int e = 0; e < 64; e++) {
            ck_assert_int_eq(moe_plan_copies(&p, l, e)->rank, g[e]);
            load_g[g[e]] += w[l * 64 + e], load_b[before[e]] += w[l * 64 + e];
            ck_assert_int_le(++count[g[e]], 8);
        }
        for (int r = 0; r < 8; r++)
            mg = fmax(mg, load_g[r]), mb = fmax(mb, load_b[r]);
        ck_assert_msg(mg <= mb, "layer %d: local search raised the max load %g -> %g", l, mb, mg);
        cost += mg;
    }
    ck_assert(fabs(p.objective - cost) <= 1e-9 * cost);
    moe_plan_free(&p);

    /* with replicas the start (never worse than eplb) is kept as it is */
    moe_plan e = place(w, 4, 64, MOE_PLACE_EPLB, 8, 8, NULL);
    o.replicas = 8;
    ck_assert_int_eq(moe_place(w, 4, 64, &o, &p, &s), MOE_OK);
    ck_assert_int_eq(s.fallback, 4);
    ck_assert_int_eq(s.ilp_optimal + s.ilp_limited, 0);
    ck_assert_int_eq(p.slots_per_rank, 9);
    cost = 0;
    for (int l = 0; l < 4; l++) {
        double start[64 * 8];
        ck_assert_int_eq(moe_place_replicated_start(w + l * 64, 64, 8, 9, 8, start), MOE_OK);
        for (int ex = 0; ex < 64; ex++) {
            int n = 0;
            for (int r = 0; r < 8; r++)
                if (start[ex * 8 + r] > 0) {
                    const moe_plan_copy *c = moe_plan_copies(&p, l, ex) + n++;
                    ck_assert_int_eq(c->rank, r);
                    ck_assert(c->share == start[ex * 8 + r]);
                }
            ck_assert_int_eq(p.ncopies[l * 64 + ex], n);
        }
        double mx;
        moe_plan_layer_load(&p, l, w + l * 64, &mx, NULL);
        cost += mx;
    }
    ck_assert(fabs(p.objective - cost) <= 1e-9 * cost);
    ck_assert_msg(p.objective <= e.objective, "start %g, eplb %g", p.objective, e.objective);
    ck_assert(p.lower_bound <= p.objective);
    moe_plan_free(&p), moe_plan_free(&e);
    free(w);
}
END_TEST

/* The optimum with replication on 4 ranks, by brute force over copy sets.
** For fixed copies (N(e): the ranks holding e) the best shares reach max load
** M exactly when every set of ranks Q can absorb the experts confined to it:
** W(Q) = sum of w_e with N(e) inside Q is at most M |Q| (Gale's supply-demand
** theorem; equivalently max-flow min-cut on experts -> copies -> ranks with
** rank capacities M). So the best M for those copies is max_Q W(Q) / |Q|.
** Ranks are interchangeable, so each copy set is enumerated once as a
** multiset of 4 rank contents (expert bitmasks of at most S experts), with
** E + extra copies in all and every expert held somewhere. */
static double brute_force_replicated(const double *w, int E, int S, int extra)
{
    enum { N = 4 };
    int masks[256], pop[256], nm = 0;
    for (int m = 0; m < (1 << E); m++)
        if (__builtin_popcount((unsigned)m) <= S)
            masks[nm] = m, pop[nm++] = __builtin_popcount((unsigned)m);
    double best = INFINITY;
    int want = E + extra, full = (1 << E) - 1;
    for (int a = 0; a < nm; a++)
        for (int b = a; b < nm; b++)
            for (int c = b; c < nm; c++)
                for (int d = c; d < nm; d++) {
                    int m[N] = {masks[a], masks[b], masks[c], masks[d]};
                    if (pop[a] + pop[b] + pop[c] + pop[d] != want || (m[0] | m[1] | m[2] | m[3]) != full)
                        continue;
                    double W[1 << N] = {0}, mx = 0;
                    for (int e = 0; e < E; e++) {
                        int held = 0;
                        for (int r = 0; r < N; r++)
                            held |= ((m[r] >> e) & 1) << r;
                        for (int q = 1; q < (1 << N); q++)
                            if ((held & ~q) == 0)
                                W[q] += w[e];
                    }
                    for (int q = 1; q < (1 << N); q++)
                        mx = fmax(mx, W[q] / __builtin_popcount((unsigned)q));
                    best = fmin(best, mx);
                }
    return best;
}

/* share (E, N): copies with shares in (0, 1] summing to 1, `copies` in all,
** at most S per rank and exactly S when S * N = copies. */
static void check_shares(const double *share, int E, int N, int S, int copies)
{
    int total = 0;
    for (int r = 0; r < N; r++) {
        int held = 0;
        for (int e = 0; e < E; e++)
            held += share[e * N + r] > 0;
        ck_assert_int_le(held, S);
        if (S * N == copies)
            ck_assert_int_eq(held, S);
        total += held;
    }
    ck_assert_int_eq(total, copies);
    for (int e = 0; e < E; e++) {
        double sum = 0;
        for (int r = 0; r < N; r++) {
            ck_assert(share[e * N + r] >= 0 && share[e * N + r] <= 1);
            sum += share[e * N + r];
        }
        ck_assert_msg(fabs(sum - 1) < 1e-12, "expert %d shares sum to %.17g", e, sum);
    }
}

static double share_max_load(const double *w, const double *share, int E, int N)
{
    double mx = 0;
    for (int r = 0; r < N; r++) {
        double l = 0;
        for (int e = 0; e < E; e++)
            l += w[e] * share[e * N + r];
        mx = fmax(mx, l);
    }
    return mx;
}

START_TEST(ilp_replicated_matches_brute_force)
{
    /* Zipf 1.6, Zipf 1.2 and uniform random loads; R = 1..4 extra copies of
    ** 8 experts on 4 ranks. Uniform loads with R = 1, 2 are left out: CBC
    ** takes 2-10 s to prove those (the LP bound stays at sum / ranks). */
    const double skew[] = {1.6, 1.2, 0};
    for (int seed = 1; seed <= 3; seed++)
        for (int extra = seed == 3 ? 3 : 1; extra <= 4; extra++) {
            double *w = make_load(1, 8, skew[seed - 1], 1000, (uint64_t)(seed * 10 + extra));
            int S = (8 + extra + 3) / 4;
            double opt = brute_force_replicated(w, 8, S, extra);
            double start[32], got[32];
            double eplb[32];
            ck_assert_int_eq(moe_place_eplb(w, 8, 4, S, extra, eplb), MOE_OK);
            check_shares(eplb, 8, 4, S, 8 + extra);
            ck_assert_int_eq(moe_place_replicated_start(w, 8, 4, S, extra, start), MOE_OK);
            check_shares(start, 8, 4, S, 8 + extra);
            ck_assert(share_max_load(w, start, 8, 4) <= share_max_load(w, eplb, 8, 4));
            ck_assert(share_max_load(w, start, 8, 4) >= opt * (1 - 1e-9));
            /* from eplb, so that the solver itself has to find the optimum */
            moe_ilp_result res;
            ck_assert_int_eq(moe_place_ilp_replicated(w, 8, 4, S, extra, eplb, 20, 0, got, &res), MOE_OK);
            check_shares(got, 8, 4, S, 8 + extra);
            double obj = share_max_load(w, got, 8, 4);
            ck_assert(fabs(obj - res.objective) <= 1e-9 * obj);
            /* the share floor may cost up to S * 1e-5 of the mean rank load */
            ck_assert_msg(obj <= opt * (1 + 1e-4) && obj >= opt * (1 - 1e-9),
                          "seed %d R %d: ILP %.9g, optimum %.9g", seed, extra, obj, opt);
            printf("replicated brute force seed %d R %d: optimum %.6g, eplb %.6g, start %.6g, ilp %.6g (%.2f s)\n",
                   seed, extra, opt, share_max_load(w, eplb, 8, 4), share_max_load(w, start, 8, 4), obj, res.seconds);
            ck_assert(res.finished && !res.killed);
            ck_assert_msg(res.bound <= opt * (1 + 1e-9), "seed %d R %d: bound %.9g above optimum %.9g", seed, extra,
                          res.bound, opt);
            ck_assert_msg(res.bound >= opt * (1 - 1e-4), "seed %d R %d: bound %.9g, optimum %.9g", seed, extra,
                          res.bound, opt);
            free(w);
        }
}
END_TEST

/* The driver with --method ilp --replicas: valid plans, exactly S copies on
** every rank when S * ep = E + R, never worse than eplb, an honest gap. */
START_TEST(ilp_replicated_plans)
{
    double *w = make_load(3, 16, 1.4, 1e5, 21);
    int Rs[] = {4, 6};
    for (int k = 0; k < 2; k++) {
        int R = Rs[k];
        moe_plan e = place(w, 3, 16, MOE_PLACE_EPLB, 4, R, NULL);
        moe_place_stats s;
        moe_plan p = place(w, 3, 16, MOE_PLACE_ILP, 4, R, &s);
        ck_assert_int_eq(moe_plan_check(&p, 3, 16, 4), MOE_OK);
        ck_assert_str_eq(p.method, "ilp");
        ck_assert_int_eq(p.slots_per_rank, (16 + R + 3) / 4);
        for (int l = 0; l < 3; l++) {
            int held[4] = {0}, total = 0;
            for (int ex = 0; ex < 16; ex++)
                for (int c = 0; c < p.ncopies[l * 16 + ex]; c++) {
                    held[moe_plan_copies(&p, l, ex)[c].rank]++;
                    total++;
                    ck_assert(moe_plan_copies(&p, l, ex)[c].share > 0);
                }
            ck_assert_int_eq(total, 16 + R);
            for (int r = 0; r < 4; r++)
                if (p.slots_per_rank * 4 == 16 + R)
                    ck_assert_int_eq(held[r], p.slots_per_rank);
                else
                    ck_assert_int_le(held[r], p.slots_per_rank);
        }
        ck_assert(fabs(p.objective - moe_plan_cost(&p, w)) <= 1e-9 * p.objective);
        ck_assert_msg(p.objective <= e.objective, "ilp %g, eplb %g", p.objective, e.objective);
        ck_assert(p.lower_bound <= p.objective && p.lower_bound >= e.lower_bound);
        ck_assert_int_eq(s.ilp_optimal + s.ilp_limited + s.fallback, 3);
        moe_plan_free(&e), moe_plan_free(&p);
    }
    free(w);
}
END_TEST

static void expect_usage(const moe_place_opts *o, const double *w, int layers, int E, const char *needle)
{
    moe_plan p;
    ck_assert_int_eq(moe_place(w, layers, E, o, &p, NULL), MOE_ERR_USAGE);
    ck_assert_msg(strstr(moe_errmsg(), needle), "message '%s' lacks '%s'", moe_errmsg(), needle);
    moe_error_clear();
}

START_TEST(bad_options_refused)
{
    double *w = make_load(1, 8, 1.0, 1000, 1);
    moe_place_opts o;
    moe_place_opts_default(&o);
    o.ep = 4;
    moe_place_method single[] = {MOE_PLACE_GREEDY, MOE_PLACE_CONTIGUOUS, MOE_PLACE_ROUND_ROBIN};
    for (int k = 0; k < 3; k++) {
        o.method = single[k], o.replicas = 2;
        expect_usage(&o, w, 1, 8, "needs --method eplb or ilp");
    }
    o.method = MOE_PLACE_ILP, o.replicas = -1;
    expect_usage(&o, w, 1, 8, "--replicas must be >= 0");
    o.replicas = 25; /* 8 experts on 4 ranks: at most 8 * 3 extra copies */
    expect_usage(&o, w, 1, 8, "at most 24 extra copies");
    o.replicas = 4, o.slots_per_rank = 2; /* 12 copies need 3 slots per rank */
    expect_usage(&o, w, 1, 8, "--slots-per-rank 2");
    o.slots_per_rank = 0, o.time_limit_s = 0;
    expect_usage(&o, w, 1, 8, "--time-limit");
    free(w);
}
END_TEST

static char dir[512];

START_TEST(plan_round_trip)
{
    tu_tmpdir(dir, sizeof dir, "placement");
    double *w = make_load(3, 16, 1.2, 1e4, 5);
    moe_plan p = place(w, 3, 16, MOE_PLACE_EPLB, 4, 3, NULL);
    p.ranks_per_node = 2;
    char path[600];
    snprintf(path, sizeof path, "%s/plan.pb", dir);
    ck_assert_int_eq(moe_plan_write(path, &p), MOE_OK);
    moe_plan q;
    ck_assert_msg(moe_plan_read(path, &q) == MOE_OK, "%s", moe_errmsg());
    ck_assert_int_eq(q.layers, 3);
    ck_assert_int_eq(q.experts, 16);
    ck_assert_int_eq(q.ep, 4);
    ck_assert_int_eq(q.ranks_per_node, 2);
    ck_assert_int_eq(q.slots_per_rank, p.slots_per_rank);
    ck_assert_str_eq(q.method, "eplb");
    ck_assert(q.objective == p.objective && q.lower_bound == p.lower_bound && q.gap == p.gap &&
              q.solve_s == p.solve_s);
    for (int l = 0; l < 3; l++)
        for (int e = 0; e < 16; e++) {
            int n = p.ncopies[l * 16 + e];
            ck_assert_int_eq(q.ncopies[l * 16 + e], n);
            for (int k = 0; k < n; k++) {
                ck_assert_int_eq(moe_plan_copies(&q, l, e)[k].rank, moe_plan_copies(&p, l, e)[k].rank);
                ck_assert(moe_plan_copies(&q, l, e)[k].share == moe_plan_copies(&p, l, e)[k].share);
            }
        }
    ck_assert_int_eq(moe_plan_check(&q, 3, 16, 4), MOE_OK);
    moe_plan_free(&p), moe_plan_free(&q);
    free(w);
}
END_TEST

static void expect_refused(moe_status st, const char *needle)
{
    ck_assert_int_eq(st, MOE_ERR_INPUT);
    ck_assert_msg(strstr(moe_errmsg(), needle), "message '%s' lacks '%s'", moe_errmsg(), needle);
    moe_error_clear();
}

/* A hand-made file, bypassing moe_plan_write's validation. */
static void write_raw(const char *path, int rank, double share)
{
    Moe__PlacementCopy c = MOE__PLACEMENT_COPY__INIT, *cp = &c;
    c.rank = (uint32_t)rank, c.share = share;
    Moe__PlacementExpert e = MOE__PLACEMENT_EXPERT__INIT, *ep[2] = {&e, &e};
    e.n_copies = 1, e.copies = &cp;
    Moe__PlacementLayer l = MOE__PLACEMENT_LAYER__INIT, *lp = &l;
    l.n_experts = 2, l.experts = ep;
    Moe__PlacementPlan m = MOE__PLACEMENT_PLAN__INIT;
    m.format_version = 1, m.ep = 2, m.ranks_per_node = 2, m.slots_per_rank = 2, m.layers = 1, m.experts = 2;
    m.method = (char *)"greedy", m.n_layer = 1, m.layer = &lp;
    uint8_t buf[256];
    size_t n = moe__placement_plan__pack(&m, buf);
    FILE *f = fopen(path, "wb");
    ck_assert(f && fwrite(buf, 1, n, f) == n && fclose(f) == 0);
}

START_TEST(plan_refusals)
{
    tu_tmpdir(dir, sizeof dir, "placement-bad");
    char path[600];
    moe_plan p, q;
    snprintf(path, sizeof path, "%s/ok.pb", dir);
    write_raw(path, 1, 1.0);
    ck_assert_msg(moe_plan_read(path, &q) == MOE_OK, "%s", moe_errmsg());
    expect_refused(moe_plan_check_named(&q, path, 2, 2, 2), "MoE layers");
    expect_refused(moe_plan_check_named(&q, path, 1, 2, 4), "EP size 2");
    expect_refused(moe_plan_check(&q, 1, 3, 2), "experts");
    ck_assert_int_eq(moe_plan_check(&q, 1, 2, 2), MOE_OK);
    moe_plan_free(&q);

    snprintf(path, sizeof path, "%s/rank.pb", dir);
    write_raw(path, 5, 1.0);
    expect_refused(moe_plan_read(path, &q), "rank.pb");
    write_raw(path, 5, 1.0);
    ck_assert_int_eq(moe_plan_read(path, &q), MOE_ERR_INPUT);
    ck_assert(strstr(moe_errmsg(), "outside [0, 2)"));
    moe_error_clear();

    snprintf(path, sizeof path, "%s/share.pb", dir);
    write_raw(path, 0, 0.5);
    expect_refused(moe_plan_read(path, &q), "sum to 0.5");

    /* both experts on rank 1 with 1 slot per rank */
    double w[4] = {1, 2, 3, 4};
    p = place(w, 1, 4, MOE_PLACE_GREEDY, 2, 0, NULL);
    moe_plan_copies(&p, 0, 0)->rank = moe_plan_copies(&p, 0, 1)->rank = moe_plan_copies(&p, 0, 2)->rank;
    expect_refused(moe_plan_validate(&p), "more than 2");
    moe_plan_free(&p);

    /* truncated */
    double *big = make_load(4, 32, 1.0, 1e4, 9);
    p = place(big, 4, 32, MOE_PLACE_GREEDY, 4, 0, NULL);
    snprintf(path, sizeof path, "%s/trunc.pb", dir);
    ck_assert_int_eq(moe_plan_write(path, &p), MOE_OK);
    FILE *f = fopen(path, "rb");
    uint8_t buf[8192];
    size_t n = fread(buf, 1, sizeof buf, f);
    fclose(f);
    for (size_t cut = 1; cut < n; cut += 97) {
        f = fopen(path, "wb");
        ck_assert(fwrite(buf, 1, cut, f) == cut && fclose(f) == 0);
        expect_refused(moe_plan_read(path, &q), "trunc.pb");
    }
    snprintf(path, sizeof path, "%s/missing.pb", dir);
    expect_refused(moe_plan_read(path, &q), "missing.pb");
    moe_plan_free(&p);
    free(big);
}
END_TEST

/* The benchmark of the brief: sum over layers of the max rank load for
** 24 layers x 64 experts on 8 ranks, Zipf 1.2. Asserts only the reduction. */
START_TEST(zipf_benchmark)
{
    double *w = make_load(24, 64, 1.2, 1e6, 42);
    moe_plan c = place(w, 24, 64, MOE_PLACE_CONTIGUOUS, 8, 0, NULL);
    moe_plan g = place(w, 24, 64, MOE_PLACE_GREEDY, 8, 0, NULL);
    moe_place_stats s;
    moe_plan p = place(w, 24, 64, MOE_PLACE_ILP, 8, 0, &s);
    printf("zipf 1.2, 24x64 on 8: contiguous %.0f, greedy %.0f, ilp %.0f (lb %.0f, gap %.4f%%, %.2f s; "
           "%d optimal, %d limited, %d fallback), ilp vs contiguous -%.1f%%\n",
           c.objective, g.objective, p.objective, p.lower_bound, 100 * p.gap, p.solve_s, s.ilp_optimal,
           s.ilp_limited, s.fallback, 100 * (1 - p.objective / c.objective));
    ck_assert(p.objective <= g.objective);
    ck_assert(p.objective <= 0.8 * c.objective);
    ck_assert(p.lower_bound <= p.objective);
    /* 8 extra copies per layer (9 slots per rank) */
    moe_plan e = place(w, 24, 64, MOE_PLACE_EPLB, 8, 8, NULL);
    moe_plan q = place(w, 24, 64, MOE_PLACE_ILP, 8, 8, &s);
    printf("zipf 1.2, 24x64 on 8, 8 replicas: eplb %.0f, ilp %.0f (lb %.0f, gap %.4f%%, %.2f s; %d optimal, "
           "%d limited, %d fallback), ilp vs contiguous -%.1f%%\n",
           e.objective, q.objective, q.lower_bound, 100 * q.gap, q.solve_s, s.ilp_optimal, s.ilp_limited, s.fallback,
           100 * (1 - q.objective / c.objective));
    ck_assert(q.objective <= e.objective && q.objective <= 0.8 * c.objective);
    ck_assert(q.lower_bound <= q.objective && q.objective < p.objective);
    moe_plan_free(&e), moe_plan_free(&q);
    moe_plan_free(&c), moe_plan_free(&g), moe_plan_free(&p);
    free(w);
}
END_TEST

/* The commands, on a generated trace. */
START_TEST(cli_plan_and_inspect)
{
    tu_tmpdir(dir, sizeof dir, "placement-cli");
    char trace[600], plan[600];
    snprintf(trace, sizeof trace, "%s/t.pb", dir);
    snprintf(plan, sizeof plan, "%s/p.pb", dir);
    moe_trace_gen gen = {.layers = 3, .experts = 16, .topk = 2, .sources = 4, .windows = 1,
                         .tokens_per_window = 2000, .skew = 1.2, .affinity = 0.3, .drift = 0, .seed = 1};
    moe_trace t;
    ck_assert_msg(moe_trace_generate(&gen, &t) == MOE_OK, "%s", moe_errmsg());
    ck_assert_int_eq(moe_trace_write(trace, &t), MOE_OK);
    moe_trace_free(&t);
    char *ok[] = {"--trace", trace, "--ep", "4", "--method", "ilp", "--time-limit", "5", "--out", plan, "--json"};
    ck_assert_int_eq(moe_plan_placement_main(11, ok), 0);
    moe_plan p;
    ck_assert_int_eq(moe_plan_read(plan, &p), MOE_OK);
    ck_assert_int_eq(moe_plan_check(&p, 3, 16, 4), MOE_OK);
    ck_assert_str_eq(p.method, "ilp");
    moe_plan_free(&p);
    char *insp[] = {plan, "--json"};
    ck_assert_int_eq(moe_inspect_plan_main(2, insp), 0);
    char *bad_ep[] = {"--trace", trace, "--ep", "0", "--out", plan};
    ck_assert_int_eq(moe_plan_placement_main(6, bad_ep), 2);
    char *bad_slots[] = {"--trace", trace, "--ep", "4", "--slots-per-rank", "2", "--out", plan};
    ck_assert_int_eq(moe_plan_placement_main(8, bad_slots), 2);
    char *no_trace[] = {"--trace", "/nonexistent/t.pb", "--ep", "4", "--out", plan};
    ck_assert_int_eq(moe_plan_placement_main(6, no_trace), 2);
    char *missing[] = {"/nonexistent/p.pb"};
    ck_assert_int_eq(moe_inspect_plan_main(1, missing), 2);
    char *eplb[] = {"--trace", trace, "--ep", "4", "--method", "eplb", "--replicas", "4", "--out", plan};
    ck_assert_int_eq(moe_plan_placement_main(10, eplb), 0);
    ck_assert_int_eq(moe_inspect_plan_main(1, insp), 0);
    char *ilp_rep[] = {"--trace", trace, "--ep", "4", "--method", "ilp", "--replicas", "4", "--out", plan, "--json"};
    ck_assert_int_eq(moe_plan_placement_main(11, ilp_rep), 0);
    ck_assert_int_eq(moe_plan_read(plan, &p), MOE_OK);
    ck_assert_int_eq(p.slots_per_rank, 5);
    for (int l = 0; l < 3; l++) {
        int held[4] = {0};
        for (int e = 0; e < 16; e++)
            for (int c = 0; c < p.ncopies[l * 16 + e]; c++)
                held[moe_plan_copies(&p, l, e)[c].rank]++;
        for (int r = 0; r < 4; r++)
            ck_assert_int_eq(held[r], 5);
    }
    moe_plan_free(&p);
    char *greedy_rep[] = {"--trace", trace, "--ep", "4", "--method", "greedy", "--replicas", "4", "--out", plan};
    ck_assert_int_eq(moe_plan_placement_main(10, greedy_rep), 2);
    char *too_many[] = {"--trace", trace, "--ep", "4", "--method", "ilp", "--replicas", "49", "--out", plan};
    ck_assert_int_eq(moe_plan_placement_main(10, too_many), 2);
    char *help[] = {"--help"};
    ck_assert_int_eq(moe_plan_placement_main(1, help), 0);
}
END_TEST

int main(void)
{
    Suite *s = suite_create("placement");
    TCase *tc = tcase_create("core");
    tcase_set_timeout(tc, 120);
    tcase_add_test(tc, ilp_matches_brute_force);
    tcase_add_test(tc, baselines_valid);
    tcase_add_test(tc, trace_imbalance_by_hand);
    tcase_add_test(tc, eplb_replication);
    tcase_add_test(tc, time_limit_falls_back_to_greedy);
    tcase_add_test(tc, bad_options_refused);
    tcase_add_test(tc, plan_round_trip);
    tcase_add_test(tc, plan_refusals);
    tcase_add_test(tc, zipf_benchmark);
    tcase_add_test(tc, cli_plan_and_inspect);
    suite_add_tcase(s, tc);
    TCase *rep = tcase_create("replicated");
    tcase_set_timeout(rep, 120);
    tcase_add_test(rep, ilp_replicated_matches_brute_force);
    tcase_add_test(rep, ilp_replicated_plans);
    suite_add_tcase(s, rep);
    SRunner *sr = srunner_create(s);
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed != 0;
}
