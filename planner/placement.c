/*
** placement: baselines (contiguous, round-robin, greedy LPT, EPLB), bounds and
** the per-layer driver. The local search that improves warm starts is in
** placement_search.c, the CBC models and their watchdog in placement_ilp.c.
*/
#include "planner/placement.h"
#include "planner/placement_internal.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

static const char *const METHOD_NAMES[] = {"contiguous", "round-robin", "greedy", "eplb", "ilp"};

const char *moe_place_method_name(moe_place_method m)
{
    return (unsigned)m < sizeof METHOD_NAMES / sizeof METHOD_NAMES[0] ? METHOD_NAMES[m] : "unknown";
}

moe_status moe_place_method_parse(const char *s, moe_place_method *out)
{
    for (int m = 0; m < (int)(sizeof METHOD_NAMES / sizeof METHOD_NAMES[0]); m++)
        if (strcmp(s, METHOD_NAMES[m]) == 0) {
            *out = (moe_place_method)m;
            return MOE_OK;
        }
    return moe_fail(MOE_ERR_USAGE, "unknown placement method '%s' (expected ilp, greedy, contiguous, round-robin or eplb)",
                    s);
}

void moe_place_opts_default(moe_place_opts *o)
{
    memset(o, 0, sizeof *o);
    o->method = MOE_PLACE_ILP;
    o->ep = 1;
    o->time_limit_s = 10;
    o->gap = 0.005;
}

// ----------------------------------------------------------------------------
// baselines

void moe_place_contiguous(int experts, int ranks, int *rank_of)
{
    for (int e = 0; e < experts; e++)
        rank_of[e] = (int)((long long)e * ranks / experts);
}

void moe_place_round_robin(int experts, int ranks, int *rank_of)
{
    for (int e = 0; e < experts; e++)
        rank_of[e] = e % ranks;
}

/* Heaviest first, ties by lower index, so plans do not depend on qsort. */
typedef struct {
    double w;
    int id;
} item;

static int item_desc(const void *a, const void *b)
{
    const item *x = a, *y = b;
    if (x->w != y->w)
        return x->w < y->w ? 1 : -1;
    return (x->id > y->id) - (x->id < y->id);
}

/* Lightest rank with a free slot (and, when holds != NULL, not holding expert
** e); ties to the lower rank. -1 if none. */
int moe_place_lightest(const double *load, const int *count, int ranks, int slots, const unsigned char *holds,
                       int experts, int e)
{
    int best = -1;
    for (int r = 0; r < ranks; r++) {
        if (count[r] >= slots || (holds && holds[(size_t)r * experts + e]))
            continue;
        if (best < 0 || load[r] < load[best])
            best = r;
    }
    return best;
}

moe_status moe_place_greedy(const double *w, int experts, int ranks, int slots, int *rank_of)
{
    if ((long long)ranks * slots < experts)
        return moe_fail(MOE_ERR_USAGE, "%d ranks x %d slots cannot hold %d experts", ranks, slots, experts);
    item *it = malloc((size_t)experts * sizeof *it);
    double *load = calloc((size_t)ranks, sizeof *load);
    int *count = calloc((size_t)ranks, sizeof *count);
    if (!it || !load || !count) {
        free(it), free(load), free(count);
        return moe_fail(MOE_ERR_NOMEM, "out of memory placing %d experts", experts);
    }
    for (int e = 0; e < experts; e++)
        it[e] = (item){w[e], e};
    qsort(it, (size_t)experts, sizeof *it, item_desc);
    for (int i = 0; i < experts; i++) {
        int r = moe_place_lightest(load, count, ranks, slots, NULL, experts, 0);
        rank_of[it[i].id] = r;
        load[r] += it[i].w;
        count[r]++;
    }
    free(it), free(load), free(count);
    return MOE_OK;
}

/* EPLB's replicate_experts: each extra copy to the expert with the largest
** w/cnt (ties to the lower index), at most `ranks` copies each. */
static void apportion(const double *w, int experts, int ranks, int extra, int *cnt)
{
    for (int e = 0; e < experts; e++)
        cnt[e] = 1;
    for (int x = 0; x < extra; x++) {
        int best = -1;
        for (int e = 0; e < experts; e++)
            if (cnt[e] < ranks && (best < 0 || w[e] / cnt[e] > w[best] / cnt[best]))
                best = e;
        if (best < 0)
            return;
        cnt[best]++;
    }
}

/* Packs copy i (expert e) when every rank with a free slot already holds e:
** move some copy f off a full rank q that lacks e onto such a rank p, and put
** copy i on q. f exists: p holds e and fewer than `slots` copies, so it cannot
** hold all `slots` distinct experts of q as well. */
static void repair(int *slot_item, const int *item_expert, const double *item_w, int *count, double *load,
                   unsigned char *holds, int ranks, int slots, int experts, int i, int *item_rank)
{
    int e = item_expert[i], p = -1, q = -1;
    for (int r = 0; r < ranks && (p < 0 || q < 0); r++) {
        if (p < 0 && count[r] < slots)
            p = r;
        if (q < 0 && !holds[(size_t)r * experts + e])
            q = r;
    }
    for (int s = 0; s < count[q]; s++) {
        int f = slot_item[(size_t)q * slots + s], fe = item_expert[f];
        if (holds[(size_t)p * experts + fe])
            continue;
        holds[(size_t)q * experts + fe] = 0;
        holds[(size_t)p * experts + fe] = 1;
        load[q] -= item_w[f];
        load[p] += item_w[f];
        slot_item[(size_t)p * slots + count[p]++] = f;
        item_rank[f] = p;
        slot_item[(size_t)q * slots + s] = i;
        holds[(size_t)q * experts + e] = 1;
        load[q] += item_w[i];
        item_rank[i] = q;
        return;
    }
}

moe_status moe_place_check_room(int experts, int ranks, int slots, int extra)
{
    if ((long long)ranks * slots < (long long)experts + extra || extra < 0 ||
        (long long)extra > (long long)experts * (ranks - 1))
        return moe_fail(MOE_ERR_USAGE, "%d ranks x %d slots cannot hold %d experts + %d extra copies (each expert "
                        "at most once per rank)", ranks, slots, experts, extra);
    return MOE_OK;
}

moe_status moe_place_eplb(const double *w, int experts, int ranks, int slots, int extra, double *share)
{
    MOE_TRY(moe_place_check_room(experts, ranks, slots, extra));
    int n = experts + extra;
    int *cnt = malloc((size_t)experts * sizeof *cnt), *count = calloc((size_t)ranks, sizeof *count);
    int *item_expert = malloc((size_t)n * sizeof(int)), *item_rank = malloc((size_t)n * sizeof(int));
    int *slot_item = malloc((size_t)ranks * slots * sizeof(int));
    double *item_w = malloc((size_t)n * sizeof(double)), *load = calloc((size_t)ranks, sizeof *load);
    unsigned char *holds = calloc((size_t)ranks * experts, 1);
    item *it = malloc((size_t)n * sizeof *it);
    moe_status st = MOE_OK;
    if (!cnt || !count || !item_expert || !item_rank || !slot_item || !item_w || !load || !holds || !it) {
        st = moe_fail(MOE_ERR_NOMEM, "out of memory replicating %d experts", experts);
        goto done;
    }
    apportion(w, experts, ranks, extra, cnt);
    for (int e = 0, i = 0; e < experts; e++)
        for (int c = 0; c < cnt[e]; c++, i++) {
            item_expert[i] = e;
            item_w[i] = w[e] / cnt[e];
            it[i] = (item){item_w[i], i};
        }
    qsort(it, (size_t)n, sizeof *it, item_desc);
    for (int k = 0; k < n; k++) {
        int i = it[k].id, e = item_expert[i];
        int r = moe_place_lightest(load, count, ranks, slots, holds, experts, e);
        if (r < 0) {
            repair(slot_item, item_expert, item_w, count, load, holds, ranks, slots, experts, i, item_rank);
            continue;
        }
        item_rank[i] = r;
        slot_item[(size_t)r * slots + count[r]++] = i;
        holds[(size_t)r * experts + e] = 1;
        load[r] += item_w[i];
    }
    memset(share, 0, (size_t)experts * ranks * sizeof *share);
    for (int i = 0; i < n; i++)
        share[(size_t)item_expert[i] * ranks + item_rank[i]] = 1.0 / cnt[item_expert[i]];
done:
    free(cnt), free(count), free(item_expert), free(item_rank), free(slot_item);
    free(item_w), free(load), free(holds), free(it);
    return st;
}

void moe_plan_layer_load(const moe_plan *p, int layer, const double *w, double *max_load, double *mean_load)
{
    double mx = 0, sum = 0;
    double *load = calloc((size_t)p->ep, sizeof *load);
    for (int e = 0; e < p->experts; e++) {
        const moe_plan_copy *c = moe_plan_copies(p, layer, e);
        for (int k = 0; k < p->ncopies[(size_t)layer * p->experts + e]; k++) {
            double x = w[e] * c[k].share;
            sum += x;
            if (load)
                load[c[k].rank] += x;
        }
    }
    for (int r = 0; load && r < p->ep; r++)
        mx = fmax(mx, load[r]);
    free(load);
    *max_load = load ? mx : NAN; /* NAN only if a tiny calloc failed */
    if (mean_load)
        *mean_load = sum / p->ep;
}

double moe_plan_cost(const moe_plan *p, const double *load)
{
    double s = 0;
    for (int l = 0; l < p->layers; l++) {
        double mx;
        moe_plan_layer_load(p, l, load + (size_t)l * p->experts, &mx, NULL);
        s += mx;
    }
    return s;
}

/* Contiguous experts on ep ranks for the trace's layers (the loads do not
** matter to the placement: zeros). */
static moe_status contiguous_plan(const moe_trace *t, int ep, moe_plan *out)
{
    double *zero = calloc((size_t)t->layers * t->experts, sizeof *zero);
    if (!zero)
        return moe_fail(MOE_ERR_NOMEM, "trace imbalance: %d layers x %d experts", t->layers, t->experts);
    moe_place_opts o;
    moe_place_opts_default(&o);
    o.method = MOE_PLACE_CONTIGUOUS, o.ep = ep;
    moe_status st = moe_place(zero, t->layers, t->experts, &o, out, NULL);
    free(zero);
    return st;
}

moe_status moe_plan_trace_imbalance(const moe_trace *t, const moe_plan *plan, int ep, int64_t from_step,
                                    double *out)
{
    int E = t->experts;
    moe_plan own = {0};
    if (plan)
        MOE_TRY(moe_plan_check_named(plan, "placement", t->layers, E, plan->ep));
    else if (ep < 1)
        return moe_fail(MOE_ERR_USAGE, "trace imbalance: ep must be >= 1, got %d", ep);
    else {
        MOE_TRY(contiguous_plan(t, ep, &own));
        plan = &own;
    }
    double *w = calloc((size_t)E, sizeof *w), sum_max = 0, sum_mean = 0;
    for (int k = 0; w && k < t->nwindows; k++) {
        const moe_trace_window *win = &t->windows[k];
        if (win->first_step < from_step)
            continue;
        for (int l = 0; l < t->layers; l++) {
            memset(w, 0, (size_t)E * sizeof *w);
            for (int s = 0; s < t->sources; s++)
                for (int e = 0; e < E; e++)
                    w[e] += win->load[((size_t)l * t->sources + s) * E + e];
            double mx, mean;
            moe_plan_layer_load(plan, l, w, &mx, &mean);
            sum_max += mx, sum_mean += mean;
        }
    }
    if (plan == &own)
        moe_plan_free(&own);
    if (!w)
        return moe_fail(MOE_ERR_NOMEM, "trace imbalance: %d experts", E);
    free(w);
    if (!(sum_mean > 0) || !isfinite(sum_max))
        return moe_fail(MOE_ERR_INPUT, "routing trace: no routed pairs in the windows from step %lld",
                        (long long)from_step);
    *out = fmax(1.0, sum_max / sum_mean);
    return MOE_OK;
}

int moe_place_all_integral(const double *w, int n)
{
    for (int i = 0; i < n; i++)
        if (w[i] != floor(w[i]))
            return 0;
    return 1;
}

double moe_place_layer_bound(const double *w, int experts, int ranks, int copies)
{
    double sum = 0, big = 0;
    int *cnt = malloc((size_t)experts * sizeof *cnt);
    if (cnt)
        apportion(w, experts, ranks, copies, cnt);
    for (int e = 0; e < experts; e++) {
        sum += w[e];
        big = fmax(big, cnt ? w[e] / cnt[e] : w[e] / ranks);
    }
    free(cnt);
    double b = fmax(sum / ranks, big);
    /* With one copy each and integer loads every rank load is an integer. */
    if (copies == 0 && moe_place_all_integral(w, experts))
        b = ceil(b - 1e-9 * fmax(1, b));
    return b;
}

static int double_asc(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

double moe_place_layer_bound_slots(const double *w, int experts, int ranks, int slots, int copies)
{
    double b = moe_place_layer_bound(w, experts, ranks, copies);
    /* One copy each: every rank holds at least m = E - (ranks - 1) * slots
    ** experts (the others hold at most slots), so the heaviest expert's rank
    ** also holds m - 1 others, at least the m - 1 lightest. */
    long long m = (long long)experts - (long long)(ranks - 1) * slots;
    if (copies != 0 || m < 2 || slots < 1)
        return b;
    double *v = malloc((size_t)experts * sizeof *v);
    if (!v)
        return b; /* the weaker bound is still a bound */
    memcpy(v, w, (size_t)experts * sizeof *v);
    qsort(v, (size_t)experts, sizeof *v, double_asc);
    double c = v[experts - 1];
    for (long long k = 0; k < m - 1; k++)
        c += v[k];
    free(v);
    return fmax(b, c);
}

// ----------------------------------------------------------------------------
// driver

static double now_s(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec + 1e-9 * (double)t.tv_nsec;
}

static moe_status check_opts(int layers, int experts, const moe_place_opts *o, int *slots)
{
    if (layers < 1 || experts < 1)
        return moe_fail(MOE_ERR_USAGE, "no experts to place (layers %d, experts %d)", layers, experts);
    if (o->ep < 1)
        return moe_fail(MOE_ERR_USAGE, "--ep must be at least 1, got %d", o->ep);
    if (o->ranks_per_node < 0 || o->ranks_per_node > o->ep || (o->ranks_per_node && o->ep % o->ranks_per_node))
        return moe_fail(MOE_ERR_USAGE, "--ranks-per-node %d must divide --ep %d", o->ranks_per_node, o->ep);
    if (o->replicas < 0)
        return moe_fail(MOE_ERR_USAGE, "--replicas must be >= 0, got %d", o->replicas);
    if (o->replicas > 0 && o->method != MOE_PLACE_EPLB && o->method != MOE_PLACE_ILP)
        return moe_fail(MOE_ERR_USAGE, "--replicas %d needs --method eplb or ilp (%s places one copy per expert)",
                        o->replicas, moe_place_method_name(o->method));
    if ((long long)o->replicas > (long long)experts * (o->ep - 1))
        return moe_fail(MOE_ERR_USAGE, "--replicas %d: %d experts on %d ranks allow at most %lld extra copies",
                        o->replicas, experts, o->ep, (long long)experts * (o->ep - 1));
    long long need = ((long long)experts + o->replicas + o->ep - 1) / o->ep;
    *slots = o->slots_per_rank ? o->slots_per_rank : (int)need;
    if (*slots < need)
        return moe_fail(MOE_ERR_USAGE, "--slots-per-rank %d: %d ranks need at least %lld slots for %d expert copies",
                        *slots, o->ep, need, experts + o->replicas);
    if (o->method == MOE_PLACE_ILP && !(o->time_limit_s > 0 && o->gap >= 0))
        return moe_fail(MOE_ERR_USAGE, "--time-limit must be > 0 and --gap >= 0 (got %g, %g)", o->time_limit_s, o->gap);
    return MOE_OK;
}

static void set_single(moe_plan *p, int l, const int *rank_of)
{
    for (int e = 0; e < p->experts; e++) {
        p->ncopies[(size_t)l * p->experts + e] = 1;
        *moe_plan_copies(p, l, e) = (moe_plan_copy){rank_of[e], 1.0};
    }
}

/* share is (experts, ranks), 0 = no copy; copies go in rank order. */
static void set_shares(moe_plan *p, int l, const double *share)
{
    for (int e = 0; e < p->experts; e++) {
        moe_plan_copy *c = moe_plan_copies(p, l, e);
        int n = 0;
        for (int r = 0; r < p->ep; r++)
            if (share[(size_t)e * p->ep + r] > 0)
                c[n++] = (moe_plan_copy){r, share[(size_t)e * p->ep + r]};
        p->ncopies[(size_t)l * p->experts + e] = n;
    }
}

static void count_ilp(const moe_ilp_result *res, moe_place_stats *ls)
{
    ls->ilp_optimal += res->finished;
    ls->ilp_limited += !res->finished && !res->killed && res->improved;
    ls->fallback += !res->finished && !res->improved;
    ls->watchdog_kills += res->killed;
}

/* Replicated layers: eplb, or ilp started from the better of eplb and
** greedy + local search + splits. */
static moe_status place_replicated(const double *w, int experts, int slots, const moe_place_opts *o, moe_plan *p,
                                   int l, double *bound, moe_place_stats *ls)
{
    size_t n = (size_t)experts * o->ep;
    double *share = malloc(2 * n * sizeof *share);
    if (!share)
        return moe_fail(MOE_ERR_NOMEM, "out of memory placing layer %d", l);
    moe_status st = o->method == MOE_PLACE_ILP
                        ? moe_place_replicated_start(w, experts, o->ep, slots, o->replicas, share)
                        : moe_place_eplb(w, experts, o->ep, slots, o->replicas, share);
    if (st == MOE_OK && o->method == MOE_PLACE_ILP) {
        moe_ilp_result res;
        st = moe_place_ilp_replicated(w, experts, o->ep, slots, o->replicas, share, o->time_limit_s, o->gap,
                                      share + n, &res);
        if (st == MOE_OK) {
            memcpy(share, share + n, n * sizeof *share);
            *bound = fmax(*bound, res.bound);
            count_ilp(&res, ls);
        }
    }
    if (st == MOE_OK)
        set_shares(p, l, share);
    free(share);
    return st;
}

/* One layer; bound gets this layer's lower bound. Thread-safe. */
static moe_status place_layer(const double *w, int experts, int slots, const moe_place_opts *o, moe_plan *p, int l,
                              double *bound, moe_place_stats *ls)
{
    int R = o->ep;
    *bound = moe_place_layer_bound_slots(w, experts, R, slots, o->replicas);
    if (o->method == MOE_PLACE_EPLB || o->replicas > 0)
        return place_replicated(w, experts, slots, o, p, l, bound, ls);
    int *rank_of = malloc((size_t)experts * 2 * sizeof(int));
    if (!rank_of)
        return moe_fail(MOE_ERR_NOMEM, "out of memory placing layer %d", l);
    moe_status st = MOE_OK;
    if (o->method == MOE_PLACE_CONTIGUOUS)
        moe_place_contiguous(experts, R, rank_of);
    else if (o->method == MOE_PLACE_ROUND_ROBIN)
        moe_place_round_robin(experts, R, rank_of);
    else
        st = moe_place_greedy(w, experts, R, slots, rank_of);
    /* The ILP starts from greedy improved by local search, and keeps it if
    ** the solver finds nothing better in time. */
    if (st == MOE_OK && o->method == MOE_PLACE_ILP)
        st = moe_place_improve(w, experts, R, slots, rank_of);
    if (st == MOE_OK && o->method == MOE_PLACE_ILP) {
        moe_ilp_result res;
        st = moe_place_ilp(w, experts, R, slots, rank_of, o->time_limit_s, o->gap, rank_of + experts, &res);
        if (st == MOE_OK) {
            memcpy(rank_of, rank_of + experts, (size_t)experts * sizeof(int));
            *bound = fmax(*bound, res.bound);
            count_ilp(&res, ls);
        }
    }
    if (st == MOE_OK)
        set_single(p, l, rank_of);
    free(rank_of);
    return st;
}

moe_status moe_place(const double *load, int layers, int experts, const moe_place_opts *o, moe_plan *out,
                     moe_place_stats *stats)
{
    int slots;
    memset(out, 0, sizeof *out);
    MOE_TRY(check_opts(layers, experts, o, &slots));
    int maxc = o->replicas < o->ep - 1 ? o->replicas + 1 : o->ep;
    MOE_TRY(moe_plan_alloc(out, layers, experts, o->ep, maxc));
    out->ranks_per_node = o->ranks_per_node ? o->ranks_per_node : o->ep;
    out->slots_per_rank = slots;
    snprintf(out->method, sizeof out->method, "%s", moe_place_method_name(o->method));

    double t0 = now_s();
    double *bound = calloc((size_t)layers, sizeof *bound);
    moe_place_stats *ls = calloc((size_t)layers, sizeof *ls);
    moe_status *lst = calloc((size_t)layers, sizeof *lst);
    char (*msg)[256] = calloc((size_t)layers, sizeof *msg);
    if (!bound || !ls || !lst || !msg) {
        free(bound), free(ls), free(lst), free(msg);
        moe_plan_free(out);
        return moe_fail(MOE_ERR_NOMEM, "out of memory placing %d layers", layers);
    }
    int jobs = o->jobs > 0 ? o->jobs : (int)sysconf(_SC_NPROCESSORS_ONLN);
    if (jobs < 1 || o->method != MOE_PLACE_ILP)
        jobs = 1;
    /* Layers are independent; the ILP ones wait on child processes, so one
    ** thread per concurrent solver. Errors are per thread: carry them out. */
#pragma omp parallel for num_threads(jobs) schedule(dynamic, 1)
    for (int l = 0; l < layers; l++) {
        moe_error_clear();
        lst[l] = place_layer(load + (size_t)l * experts, experts, slots, o, out, l, &bound[l], &ls[l]);
        if (lst[l] != MOE_OK)
            snprintf(msg[l], sizeof msg[l], "%s", moe_errmsg());
    }
    moe_status st = MOE_OK;
    moe_place_stats tot = {0};
    out->lower_bound = 0;
    for (int l = 0; l < layers; l++) {
        if (lst[l] != MOE_OK && st == MOE_OK)
            st = moe_fail(lst[l], "layer %d: %s", l, msg[l]);
        out->lower_bound += bound[l];
        tot.ilp_optimal += ls[l].ilp_optimal;
        tot.ilp_limited += ls[l].ilp_limited;
        tot.fallback += ls[l].fallback;
        tot.watchdog_kills += ls[l].watchdog_kills;
    }
    free(bound), free(ls), free(lst), free(msg);
    if (st != MOE_OK) {
        moe_plan_free(out);
        return st;
    }
    out->solve_s = now_s() - t0;
    out->objective = moe_plan_cost(out, load);
    out->gap = out->objective > 0 ? (out->objective - out->lower_bound) / out->objective : 0;
    if (stats)
        *stats = tot;
    st = moe_plan_validate(out);
    if (st != MOE_OK) {
        moe_plan_free(out);
        return moe_fail(MOE_ERR_INTERNAL, "placement produced an invalid plan");
    }
    return MOE_OK;
}
