/*
** trace_gen: synthetic routing traces (contract in planner/trace.h). Every
** draw comes from one moe_rng stream in a fixed loop order (window, source,
** token, layer), so a seed names a trace exactly.
*/
#include <math.h>
#include <stdint.h>
#include <string.h>

#include "planner/trace.h"
#include "runtime/base/mem.h"
#include "runtime/base/rng.h"

#define MAX_TOKENS ((int64_t)1 << 40) /* counts stay exact integers in a double */
#define REJECT_TRIES 32

typedef struct {
    int L, E, K;
    int *perm;     /* [L][E]: perm[l][r] is the expert of popularity rank r */
    double *w;     /* [E]: weight of rank r, 1/(r+1)^skew */
    double *cdf;   /* [L][E]: cumulative weight over experts (by expert id) */
    double *ew;    /* [L][E]: weight by expert id */
    int *prev, *cur; /* [K]: a token's experts on the previous / this layer */
} gen_state;

static moe_status check_params(const moe_trace_gen *g)
{
    if (g->layers < 1 || g->experts < 1 || g->sources < 1 || g->windows < 1)
        return moe_fail(MOE_ERR_USAGE,
                        "trace generator: layers %d, experts %d, sources %d, windows %d (each must be >= 1)",
                        g->layers, g->experts, g->sources, g->windows);
    if (g->topk < 1 || g->topk > g->experts)
        return moe_fail(MOE_ERR_USAGE, "trace generator: topk %d (expected 1..experts = %d)", g->topk, g->experts);
    if (g->tokens_per_window < 0 || g->tokens_per_window > MAX_TOKENS)
        return moe_fail(MOE_ERR_USAGE, "trace generator: tokens_per_window %lld (expected 0..2^40)",
                        (long long)g->tokens_per_window);
    if (!isfinite(g->skew) || g->skew < 0)
        return moe_fail(MOE_ERR_USAGE, "trace generator: skew %g (expected a finite value >= 0)", g->skew);
    if (!(g->affinity >= 0 && g->affinity <= 1))
        return moe_fail(MOE_ERR_USAGE, "trace generator: affinity %g (expected 0..1)", g->affinity);
    if (g->drift < 0)
        return moe_fail(MOE_ERR_USAGE, "trace generator: drift %d (expected >= 0)", g->drift);
    return MOE_OK;
}

static void state_free(gen_state *s)
{
    moe_free(s->perm);
    moe_free(s->w);
    moe_free(s->cdf);
    moe_free(s->ew);
    moe_free(s->prev);
    moe_free(s->cur);
}

static moe_status state_init(gen_state *s, const moe_trace_gen *g, moe_rng *rng)
{
    memset(s, 0, sizeof *s);
    s->L = g->layers;
    s->E = g->experts;
    s->K = g->topk;
    const size_t LE = (size_t)s->L * (size_t)s->E;
    MOE_TRY(moe_alloc((void **)&s->perm, sizeof *s->perm * LE, "trace generator"));
    MOE_TRY(moe_alloc((void **)&s->w, sizeof *s->w * (size_t)s->E, "trace generator"));
    MOE_TRY(moe_alloc((void **)&s->cdf, sizeof *s->cdf * LE, "trace generator"));
    MOE_TRY(moe_alloc((void **)&s->ew, sizeof *s->ew * LE, "trace generator"));
    MOE_TRY(moe_alloc((void **)&s->prev, sizeof *s->prev * (size_t)s->K, "trace generator"));
    MOE_TRY(moe_alloc((void **)&s->cur, sizeof *s->cur * (size_t)s->K, "trace generator"));
    for (int r = 0; r < s->E; r++)
        s->w[r] = g->skew == 0 ? 1.0 : pow((double)(r + 1), -g->skew);
    for (int l = 0; l < s->L; l++) { /* Fisher-Yates */
        int *p = s->perm + (size_t)l * (size_t)s->E;
        for (int r = 0; r < s->E; r++)
            p[r] = r;
        for (int r = s->E - 1; r > 0; r--) {
            int j = (int)moe_rng_below(rng, (uint64_t)r + 1);
            int x = p[r];
            p[r] = p[j];
            p[j] = x;
        }
    }
    return MOE_OK;
}

/* drift swaps of two distinct popularity ranks in every layer. */
static void apply_drift(gen_state *s, int drift, moe_rng *rng)
{
    if (s->E < 2)
        return;
    for (int l = 0; l < s->L; l++) {
        int *p = s->perm + (size_t)l * (size_t)s->E;
        for (int d = 0; d < drift; d++) {
            int a = (int)moe_rng_below(rng, (uint64_t)s->E);
            int b = (int)moe_rng_below(rng, (uint64_t)s->E - 1);
            b += b >= a; /* uniform over the other ranks */
            int x = p[a];
            p[a] = p[b];
            p[b] = x;
        }
    }
}

/* Weights and CDF by expert id from the current permutations. */
static void build_cdf(gen_state *s)
{
    for (int l = 0; l < s->L; l++) {
        const int *p = s->perm + (size_t)l * (size_t)s->E;
        double *ew = s->ew + (size_t)l * (size_t)s->E, *cdf = s->cdf + (size_t)l * (size_t)s->E;
        for (int r = 0; r < s->E; r++)
            ew[p[r]] = s->w[r];
        double acc = 0;
        for (int e = 0; e < s->E; e++)
            cdf[e] = acc += ew[e];
    }
}

static int taken(const int *v, int n, int e)
{
    for (int i = 0; i < n; i++)
        if (v[i] == e)
            return 1;
    return 0;
}

/* One expert of layer l by weight among those not in out[0..n): first by
** rejection (cheap when the chosen few hold little weight), then by an exact
** scan over the rest. Both draw from the same conditional distribution. */
static int draw_one(const gen_state *s, int l, const int *out, int n, moe_rng *rng)
{
    const double *cdf = s->cdf + (size_t)l * (size_t)s->E, *ew = s->ew + (size_t)l * (size_t)s->E;
    const double total = cdf[s->E - 1];
    for (int t = 0; t < REJECT_TRIES; t++) {
        double u = moe_rng_uniform(rng) * total;
        int lo = 0, hi = s->E - 1; /* first e with cdf[e] > u */
        while (lo < hi) {
            int mid = lo + (hi - lo) / 2;
            if (cdf[mid] > u)
                hi = mid;
            else
                lo = mid + 1;
        }
        if (!taken(out, n, lo))
            return lo;
    }
    double rest = total;
    for (int i = 0; i < n; i++)
        rest -= ew[out[i]];
    double u = moe_rng_uniform(rng) * rest;
    int last = -1;
    for (int e = 0; e < s->E; e++) {
        if (taken(out, n, e))
            continue;
        last = e;
        if (u < ew[e])
            return e;
        u -= ew[e];
    }
    return last; /* rounding left u just past the end: the last free expert */
}

static void draw_topk(const gen_state *s, int l, int *out, moe_rng *rng)
{
    for (int k = 0; k < s->K; k++)
        out[k] = draw_one(s, l, out, k, rng);
}

/* One token through every layer, counted into window x for source src. */
static void route_token(gen_state *s, const moe_trace_gen *g, moe_trace_window *x, int src, moe_rng *rng)
{
    const size_t E = (size_t)s->E, S = (size_t)g->sources;
    for (int l = 0; l < s->L; l++) {
        int keep = l > 0 && g->affinity > 0 && moe_rng_uniform(rng) < g->affinity;
        if (keep)
            memcpy(s->cur, s->prev, sizeof *s->cur * (size_t)s->K);
        else
            draw_topk(s, l, s->cur, rng);
        double *load = x->load + ((size_t)l * S + (size_t)src) * E;
        for (int k = 0; k < s->K; k++)
            load[s->cur[k]] += 1;
        if (l > 0 && x->transitions) {
            double *tr = x->transitions + (size_t)(l - 1) * E * E;
            for (int i = 0; i < s->K; i++)
                for (int j = 0; j < s->K; j++)
                    tr[(size_t)s->prev[i] * E + (size_t)s->cur[j]] += 1;
        }
        int *t = s->prev;
        s->prev = s->cur;
        s->cur = t;
    }
}

moe_status moe_trace_generate(const moe_trace_gen *g, moe_trace *out)
{
    memset(out, 0, sizeof *out);
    MOE_TRY(check_params(g));
    MOE_TRY(moe_trace_alloc(out, g->layers, g->experts, g->topk, g->sources, g->windows, 1));
    moe_rng rng;
    moe_rng_seed(&rng, g->seed);
    gen_state s;
    moe_status st = MOE_OK;
    MOE_TRY_GOTO(state_init(&s, g, &rng), st, done);
    for (int w = 0; w < g->windows; w++) {
        if (w > 0)
            apply_drift(&s, g->drift, &rng);
        build_cdf(&s);
        for (int src = 0; src < g->sources; src++)
            for (int64_t t = 0; t < g->tokens_per_window; t++)
                route_token(&s, g, &out->windows[w], src, &rng);
    }
done:
    state_free(&s);
    if (st != MOE_OK)
        moe_trace_free(out);
    return st;
}
