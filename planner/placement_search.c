/*
** placement_search: local search over expert copies, the warm starts of the
** ILP (planner/placement.h: moe_place_improve, moe_place_split,
** moe_place_replicated_start): moves, swaps and share shifts between the
** busiest rank and the others, and splits of the busiest rank's experts.
*/
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "planner/placement.h"
#include "planner/placement_internal.h"

// ----------------------------------------------------------------------------
// local search over copies (the ILP's warm starts)

/* A share a shift leaves at least on the copy it takes from, and the least
** share a split hands over or keeps (relative to the copy split): copies
** that carry next to nothing are noise to the runtime. */
#define SHIFT_KEEP 1e-3
#define SPLIT_MIN 1e-3

/* Items are copies: item i is a copy of expert[i] on rank[i] with share[i]
** of that expert's ew[expert[i]] tokens, w[i] = share * ew tokens.
** members[r * slots + k] are rank r's items. */
typedef struct {
    int slots; /* row length of members: the most a rank may hold */
    int cap;   /* copies per rank the local search may fill up to (<= slots) */
    int *expert, *rank, *members, *count, *byload;
    double *w, *share, *load;
    const double *ew;
    double stop; /* a lower bound on the max rank load: no search below it */
} ls_state;

static void ls_free(ls_state *s)
{
    free(s->expert), free(s->rank), free(s->members), free(s->count), free(s->byload);
    free(s->w), free(s->share), free(s->load);
}

static moe_status ls_alloc(ls_state *s, const double *ew, int items, int ranks, int slots)
{
    memset(s, 0, sizeof *s);
    s->slots = s->cap = slots;
    s->ew = ew;
    s->expert = malloc((size_t)items * sizeof(int));
    s->rank = malloc((size_t)items * sizeof(int));
    s->members = malloc((size_t)ranks * slots * sizeof(int));
    s->count = calloc((size_t)ranks, sizeof(int));
    s->byload = malloc((size_t)ranks * sizeof(int));
    s->w = malloc((size_t)items * sizeof(double));
    s->share = malloc((size_t)items * sizeof(double));
    s->load = calloc((size_t)ranks, sizeof(double));
    if (s->expert && s->rank && s->members && s->count && s->byload && s->w && s->share && s->load)
        return MOE_OK;
    ls_free(s);
    return moe_fail(MOE_ERR_NOMEM, "out of memory for the local search over %d copies", items);
}

/* Puts item i, a copy of expert e with `share`, on rank r. */
static void ls_add(ls_state *s, int r, int i, int e, double share)
{
    s->expert[i] = e, s->share[i] = share, s->w[i] = share * s->ew[e], s->rank[i] = r;
    s->members[(size_t)r * s->slots + s->count[r]++] = i;
    s->load[r] += s->w[i];
}

static void ls_remove(ls_state *s, int i)
{
    int r = s->rank[i], *m = s->members + (size_t)r * s->slots;
    for (int k = 0; k < s->count[r]; k++)
        if (m[k] == i) {
            m[k] = m[--s->count[r]];
            s->load[r] -= s->w[i];
            return;
        }
}

/* 1 if rank r holds a copy of expert e other than items out[0..3]. */
static int holds_other(const ls_state *s, int r, int e, const int out[4])
{
    const int *m = s->members + (size_t)r * s->slots;
    for (int k = 0; k < s->count[r]; k++)
        if (s->expert[m[k]] == e && m[k] != out[0] && m[k] != out[1] && m[k] != out[2] && m[k] != out[3])
            return 1;
    return 0;
}

typedef struct {
    double d;  /* load moved from a to b (0: none) */
    int shift; /* 1: item it[0] on a hands d tokens to it[2] on b, same expert */
    int it[4]; /* exchange: a's one or two items, b's zero to two (-1: unused) */
} ls_move;

/* Copies of one expert on both ranks: shift load from a's to b's. */
static void best_shift(const ls_state *s, int a, int b, double tol, double *best_err, ls_move *mv)
{
    double gap = s->load[a] - s->load[b], target = gap / 2;
    const int *ma = s->members + (size_t)a * s->slots, *mb = s->members + (size_t)b * s->slots;
    for (int i = 0; i < s->count[a]; i++)
        for (int j = 0; j < s->count[b]; j++) {
            int x = ma[i], y = mb[j], e = s->expert[x];
            if (s->expert[y] != e)
                continue;
            double d = fmin(target, s->w[x] - SHIFT_KEEP * s->ew[e]);
            if (d > tol && fabs(d - target) < *best_err) {
                *best_err = fabs(d - target);
                *mv = (ls_move){.d = d, .shift = 1, .it = {x, -1, y, -1}};
            }
        }
}

/* The best move between a heavier rank a and a lighter rank b: one or two
** of a's items go to b and up to as many of b's to a, or a shift between two
** copies of one expert, so that d = load moved a->b lies in (0, la - lb) as
** close to (la - lb) / 2 as possible. The pair's max then drops and the sum
** of squared rank loads strictly falls, so repeated moves terminate. Only
** moves that lower the pair's max by more than tol count. A rank that gains
** copies ends with at most `cap`, and no rank ends up with two copies of one
** expert. deep = 0: moves, 1-for-1 swaps and shifts; deep = 1: the exchanges
** with two items on a side. */
static ls_move best_move(const ls_state *s, int a, int b, int deep, double tol)
{
    double gap = s->load[a] - s->load[b], target = gap / 2, best_err = INFINITY;
    int ca = s->count[a], cb = s->count[b], most = deep ? 2 : 1;
    const int *ma = s->members + (size_t)a * s->slots, *mb = s->members + (size_t)b * s->slots;
    ls_move mv = {0};
    for (int i1 = 0; i1 < ca; i1++)
        for (int i2 = -1; i2 < ca; i2++) {
            if (i2 >= 0 && (i2 <= i1 || most < 2))
                continue;
            int na = 1 + (i2 >= 0);
            double da = s->w[ma[i1]] + (i2 >= 0 ? s->w[ma[i2]] : 0);
            for (int j1 = -1; j1 < cb; j1++)
                for (int j2 = -1; j2 < cb; j2++) {
                    if (j2 >= 0 && (j1 < 0 || j2 <= j1 || most < 2))
                        continue;
                    int nb = (j1 >= 0) + (j2 >= 0);
                    if (deep && na == 1 && nb <= 1)
                        continue; /* the shallow pass tried these */
                    if ((nb < na && cb + na - nb > s->cap) || (na < nb && ca - na + nb > s->cap))
                        continue;
                    double d = da - (j1 >= 0 ? s->w[mb[j1]] : 0) - (j2 >= 0 ? s->w[mb[j2]] : 0);
                    if (!(d > tol && d < gap - tol) || fabs(d - target) >= best_err)
                        continue;
                    int it[4] = {ma[i1], i2 >= 0 ? ma[i2] : -1, j1 >= 0 ? mb[j1] : -1, j2 >= 0 ? mb[j2] : -1};
                    int ok = 1;
                    for (int k = 0; k < 4 && ok; k++)
                        if (it[k] >= 0)
                            ok = !holds_other(s, k < 2 ? b : a, s->expert[it[k]], it);
                    if (!ok)
                        continue;
                    best_err = fabs(d - target);
                    mv = (ls_move){.d = d, .it = {it[0], it[1], it[2], it[3]}};
                }
        }
    if (!deep)
        best_shift(s, a, b, tol, &best_err, &mv);
    return mv;
}

static void apply_move(ls_state *s, int a, int b, const ls_move *mv)
{
    if (mv->shift) {
        int x = mv->it[0], y = mv->it[2];
        double ds = mv->d / s->ew[s->expert[x]];
        s->share[x] -= ds, s->w[x] -= mv->d, s->load[a] -= mv->d;
        s->share[y] += ds, s->w[y] += mv->d, s->load[b] += mv->d;
        return;
    }
    for (int k = 0; k < 4; k++)
        if (mv->it[k] >= 0)
            ls_remove(s, mv->it[k]);
    for (int k = 0; k < 4; k++) {
        int i = mv->it[k];
        if (i >= 0)
            ls_add(s, k < 2 ? b : a, i, s->expert[i], s->share[i]);
    }
}

static int by_rank_load_desc(const void *x, const void *y, void *load_)
{
    const double *load = load_;
    int a = *(const int *)x, b = *(const int *)y;
    if (load[a] != load[b])
        return load[a] < load[b] ? 1 : -1;
    return (a > b) - (a < b);
}

/* Moves until none helps: the heaviest rank against the lightest first, one
** move per round; deep exchanges only for the heaviest rank and only when no
** shallow move is left. Moves between other ranks even out the field for
** later moves of the heaviest. A move must gain more than 1e-6 of the mean
** rank load, or 1e-3 when it does not involve the heaviest rank (nothing,
** for integer loads without copies): with split copies loads are fractional,
** and ever smaller shifts between ranks below the max would go on for long
** without lowering it. The round cap is a second guard. Stops early once the
** max load meets s->stop. */
static void local_search(ls_state *s, int items, int ranks)
{
    double total = 0;
    for (int r = 0; r < ranks; r++)
        total += s->load[r];
    double tol = 1e-6 * total / ranks, tol_other = 1e-3 * total / ranks;
    for (long round = 0; round < 20L * items * ranks; round++) {
        for (int r = 0; r < ranks; r++)
            s->byload[r] = r;
        qsort_r(s->byload, (size_t)ranks, sizeof(int), by_rank_load_desc, s->load);
        if (s->load[s->byload[0]] <= s->stop + tol)
            return;
        ls_move mv = {0};
        int a = -1, b = -1;
        for (int deep = 0; deep < 2 && a < 0; deep++)
            for (int i = 0; i < (deep ? 1 : ranks) && a < 0; i++)
                for (int j = ranks - 1; j > i && a < 0; j--) {
                    int x = s->byload[i], y = s->byload[j];
                    if (s->load[x] > s->load[y] && (mv = best_move(s, x, y, deep, i ? tol_other : tol)).d > 0)
                        a = x, b = y;
                }
        if (a < 0)
            return;
        apply_move(s, a, b, &mv);
    }
}

moe_status moe_place_improve(const double *w, int experts, int ranks, int slots, int *rank_of)
{
    ls_state s;
    MOE_TRY(ls_alloc(&s, w, experts, ranks, slots));
    s.stop = moe_place_layer_bound_slots(w, experts, ranks, slots, 0);
    for (int e = 0; e < experts; e++) {
        int r = rank_of[e];
        if (r < 0 || r >= ranks || s.count[r] >= slots) {
            ls_free(&s);
            return moe_fail(MOE_ERR_INTERNAL, "local search start is not a placement on %d x %d slots", ranks, slots);
        }
        ls_add(&s, r, e, e, 1);
    }
    local_search(&s, experts, ranks);
    memcpy(rank_of, s.rank, (size_t)experts * sizeof(int));
    ls_free(&s);
    return MOE_OK;
}

// ----------------------------------------------------------------------------
// replicated starts

double moe_place_max_load_shares(const double *w, int experts, int ranks, const double *share)
{
    double mx = 0;
    for (int r = 0; r < ranks; r++) {
        double l = 0;
        for (int e = 0; e < experts; e++)
            l += w[e] * share[(size_t)e * ranks + r];
        mx = fmax(mx, l);
    }
    return mx;
}

/* One extra copy: an item i on the heaviest rank c (expert e) gives share d
** to a new item on a rank b with a free slot that lacks e: the (i, b) with
** the lowest max of the pair after it, d evening out c and b within
** [SPLIT_MIN, 1 - SPLIT_MIN] of i's share. Only if no item of c can go
** anywhere, an item of another rank. -1 if no rank has room. */
static int split_once(ls_state *s, int items, int ranks)
{
    int heavy = 0;
    for (int r = 1; r < ranks; r++)
        if (s->load[r] > s->load[heavy])
            heavy = r;
    double best_pair = INFINITY, best_d = 0;
    int bi = -1, bb = -1, none[4] = {-1, -1, -1, -1};
    for (int pass = 0; pass < 2 && bi < 0; pass++)
        for (int i = 0; i < items; i++) {
            int e = s->expert[i], c = s->rank[i];
            if ((c == heavy) == pass)
                continue;
            for (int b = 0; b < ranks; b++) {
                if (s->count[b] >= s->slots || b == c || holds_other(s, b, e, none))
                    continue;
                double d = s->ew[e] > 0 ? (s->load[c] - s->load[b]) / (2 * s->ew[e]) : s->share[i] / 2;
                d = fmin(fmax(d, SPLIT_MIN * s->share[i]), (1 - SPLIT_MIN) * s->share[i]);
                double pair = fmax(s->load[c] - d * s->ew[e], s->load[b] + d * s->ew[e]);
                if (pair < best_pair)
                    best_pair = pair, best_d = d, bi = i, bb = b;
            }
        }
    if (bi < 0)
        return -1;
    int e = s->expert[bi], c = s->rank[bi];
    s->share[bi] -= best_d;
    s->load[c] -= best_d * s->ew[e];
    s->w[bi] = s->share[bi] * s->ew[e];
    ls_add(s, bb, items, e, best_d);
    return 0;
}


/* The items as a share matrix, each expert's shares divided by their sum so
** that they add up to 1 to the last bit the division allows. */
static void items_to_shares(const ls_state *s, int items, int experts, int ranks, double *out)
{
    memset(out, 0, (size_t)experts * ranks * sizeof *out);
    for (int i = 0; i < items; i++)
        out[(size_t)s->expert[i] * ranks + s->rank[i]] = s->share[i];
    for (int e = 0; e < experts; e++) {
        double sum = 0;
        for (int r = 0; r < ranks; r++)
            sum += out[(size_t)e * ranks + r];
        for (int r = 0; r < ranks; r++)
            out[(size_t)e * ranks + r] /= sum;
    }
}

moe_status moe_place_split(const double *w, int experts, int ranks, int slots, int extra, double *out)
{
    MOE_TRY(moe_place_check_room(experts, ranks, slots, extra));
    int items = experts + extra, base = (experts + ranks - 1) / ranks;
    ls_state s;
    MOE_TRY(ls_alloc(&s, w, items, ranks, slots));
    s.stop = moe_place_layer_bound(w, experts, ranks, extra);
    moe_status st = moe_place_greedy(w, experts, ranks, base, s.rank);
    for (int e = 0; st == MOE_OK && e < experts; e++)
        ls_add(&s, s.rank[e], e, e, 1);
    /* Balance, split, balance again. The first search keeps ceil(E / ranks)
    ** copies per rank at most, so that free slots stay spread over the ranks
    ** for the splits to go to; each split evens out two ranks, and the last
    ** search (shifts included) spreads the gains to the others. */
    s.cap = base;
    if (st == MOE_OK)
        local_search(&s, experts, ranks);
    for (int x = 0; st == MOE_OK && x < extra; x++)
        if (split_once(&s, experts + x, ranks) != 0)
            st = moe_fail(MOE_ERR_INTERNAL, "no free slot for extra copy %d of %d", x + 1, extra);
    s.cap = slots;
    if (st == MOE_OK)
        local_search(&s, items, ranks);
    if (st == MOE_OK)
        items_to_shares(&s, items, experts, ranks, out);
    ls_free(&s);
    return st;
}

/* eplb's copies, rebalanced by the local search (moves, swaps, shifts). */
static moe_status eplb_improved(const double *w, int experts, int ranks, int slots, int extra, double *out)
{
    int items = experts + extra;
    ls_state s;
    MOE_TRY(ls_alloc(&s, w, items, ranks, slots));
    s.stop = moe_place_layer_bound(w, experts, ranks, extra);
    moe_status st = moe_place_eplb(w, experts, ranks, slots, extra, out);
    for (int e = 0, i = 0; st == MOE_OK && e < experts; e++)
        for (int r = 0; r < ranks; r++)
            if (out[(size_t)e * ranks + r] > 0)
                ls_add(&s, r, i++, e, out[(size_t)e * ranks + r]);
    if (st == MOE_OK) {
        local_search(&s, items, ranks);
        items_to_shares(&s, items, experts, ranks, out);
    }
    ls_free(&s);
    return st;
}

moe_status moe_place_replicated_start(const double *w, int experts, int ranks, int slots, int extra, double *share)
{
    MOE_TRY(moe_place_check_room(experts, ranks, slots, extra));
    size_t n = (size_t)experts * ranks;
    double *alt = malloc(n * sizeof *alt);
    if (!alt)
        return moe_fail(MOE_ERR_NOMEM, "out of memory placing %d experts", experts);
    moe_status st = eplb_improved(w, experts, ranks, slots, extra, share);
    if (st == MOE_OK)
        st = moe_place_split(w, experts, ranks, slots, extra, alt);
    if (st == MOE_OK && moe_place_max_load_shares(w, experts, ranks, alt) < moe_place_max_load_shares(w, experts, ranks, share))
        memcpy(share, alt, n * sizeof *share);
    free(alt);
    return st;
}

// ----------------------------------------------------------------------------
// measures
