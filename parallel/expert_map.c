/*
** expert_map: which EP rank holds which experts (parallel/ep.h): contiguous,
** from a placement plan's ranks, or with replicated experts and their token
** shares; the groups that sum a replicated expert's gradients; and the choice
** of copy for each routed token.
*/
#include <math.h>
#include <string.h>

#include "parallel/ep.h"
#include "runtime/base/mem.h"

static moe_status map_alloc(moe_expert_map *m, int E, int ep_size, int ep_rank, int slots, int max_copies)
{
    memset(m, 0, sizeof *m);
    if (E < 1 || ep_size < 1 || ep_rank < 0 || ep_rank >= ep_size || slots < 1 || max_copies < 1)
        return moe_fail(MOE_ERR_USAGE, "expert map: %d experts, rank %d of %d, %d per rank, %d copies at most",
                        E, ep_rank, ep_size, slots, max_copies);
    m->E = E;
    m->ep_size = ep_size;
    m->ep_rank = ep_rank;
    m->E_local = slots;
    m->max_copies = max_copies;
    size_t ne = (size_t)E, nc = ne * (size_t)max_copies;
    MOE_TRY(moe_alloc((void **)&m->expert_rank, sizeof(int) * ne, "expert map"));
    MOE_TRY(moe_alloc((void **)&m->expert_local, sizeof(int) * ne, "expert map"));
    MOE_TRY(moe_alloc((void **)&m->local_experts, sizeof(int) * (size_t)slots, "expert map"));
    MOE_TRY(moe_alloc((void **)&m->local_index, sizeof(int) * ne, "expert map"));
    MOE_TRY(moe_alloc((void **)&m->ncopies, sizeof(int) * ne, "expert map"));
    MOE_TRY(moe_alloc((void **)&m->copy_slot, sizeof(int) * nc, "expert map"));
    MOE_TRY(moe_alloc((void **)&m->copy_share, sizeof(double) * nc, "expert map"));
    MOE_TRY(moe_alloc((void **)&m->copy_comm, sizeof(moe_comm *) * (size_t)slots, "expert map"));
    for (int e = 0; e < E; e++)
        m->local_index[e] = -1;
    return MOE_OK;
}

moe_status moe_expert_map_contiguous(moe_expert_map *m, int E, int ep_size, int ep_rank)
{
    if (ep_size < 1 || E % ep_size != 0)
        return moe_fail(MOE_ERR_USAGE, "num-experts (%d) must be divisible by expert-model-parallel-size (%d)",
                        E, ep_size);
    int *ranks = NULL;
    MOE_TRY(moe_alloc((void **)&ranks, sizeof(int) * (size_t)E, "expert map"));
    for (int e = 0; e < E; e++)
        ranks[e] = e / (E / ep_size);
    moe_status st = moe_expert_map_from_ranks(m, E, ep_size, ep_rank, ranks);
    moe_free(ranks);
    return st;
}

moe_status moe_expert_map_from_ranks(moe_expert_map *m, int E, int ep_size, int ep_rank,
                                     const int *rank_of_expert)
{
    if (ep_size < 1 || E % ep_size != 0)
        return moe_fail(MOE_ERR_USAGE, "num-experts (%d) must be divisible by expert-model-parallel-size (%d)",
                        E, ep_size);
    int *one = NULL;
    double *share = NULL;
    moe_status st = moe_alloc((void **)&one, sizeof(int) * (size_t)E, "expert map");
    if (st == MOE_OK)
        st = moe_alloc((void **)&share, sizeof(double) * (size_t)E, "expert map");
    for (int e = 0; st == MOE_OK && e < E; e++) {
        one[e] = 1;
        share[e] = 1.0;
    }
    if (st == MOE_OK)
        st = moe_expert_map_from_copies(m, E, ep_size, ep_rank, E / ep_size, one, rank_of_expert, share, 1);
    moe_free(one);
    moe_free(share);
    return st;
}

/* The copies' ranks in range, distinct per expert, shares positive summing to
** 1, and exactly `slots` copies on every rank. */
static moe_status check_copies(int E, int P, int slots, const int *ncopies, const int *ranks, const double *shares,
                               int maxc)
{
    int held[P];
    memset(held, 0, sizeof held);
    for (int e = 0; e < E; e++) {
        if (ncopies[e] < 1 || ncopies[e] > maxc)
            return moe_fail(MOE_ERR_USAGE, "expert %d has %d copies (1 to %d allowed)", e, ncopies[e], maxc);
        double sum = 0;
        for (int c = 0; c < ncopies[e]; c++) {
            int r = ranks[(size_t)e * maxc + c];
            double s = shares[(size_t)e * maxc + c];
            if (r < 0 || r >= P)
                return moe_fail(MOE_ERR_USAGE, "expert %d placed on rank %d, outside the EP group of %d", e, r, P);
            for (int d = 0; d < c; d++)
                if (ranks[(size_t)e * maxc + d] == r)
                    return moe_fail(MOE_ERR_USAGE, "expert %d has two copies on rank %d", e, r);
            if (!(s > 0 && s <= 1))
                return moe_fail(MOE_ERR_USAGE, "expert %d: copy on rank %d has share %g, outside (0, 1]", e, r, s);
            sum += s;
            held[r]++;
        }
        if (sum < 1 - 1e-6 || sum > 1 + 1e-6)
            return moe_fail(MOE_ERR_USAGE, "expert %d: its copies' shares sum to %.9g, not 1", e, sum);
    }
    for (int r = 0; r < P; r++)
        if (held[r] != slots)
            return moe_fail(MOE_ERR_USAGE, "rank %d holds %d expert copies; the grouped expert layout needs "
                            "every rank to hold exactly %d", r, held[r], slots);
    return MOE_OK;
}

/* Local order on rank r: its canonical copies by expert id, then its extra
** copies by expert id. */
static void number_copies(moe_expert_map *m, const int *ncopies, const int *ranks)
{
    int P = m->ep_size, maxc = m->max_copies, next[P];
    memset(next, 0, sizeof next);
    for (int pass = 0; pass < 2; pass++)
        for (int e = 0; e < m->E; e++)
            for (int c = pass == 0 ? 0 : 1; c < (pass == 0 ? 1 : ncopies[e]); c++) {
                int r = ranks[(size_t)e * maxc + c], local = next[r]++;
                m->copy_slot[(size_t)e * maxc + c] = r * m->E_local + local;
                if (c == 0) {
                    m->expert_rank[e] = r;
                    m->expert_local[e] = local;
                }
                if (r == m->ep_rank) {
                    m->local_experts[local] = e;
                    m->local_index[e] = local;
                    m->n_canonical += c == 0;
                }
            }
}

moe_status moe_expert_map_from_copies(moe_expert_map *m, int E, int ep_size, int ep_rank, int slots,
                                      const int *ncopies, const int *ranks, const double *shares, int max_copies)
{
    moe_status st = map_alloc(m, E, ep_size, ep_rank, slots, max_copies);
    if (st == MOE_OK)
        st = check_copies(E, ep_size, slots, ncopies, ranks, shares, max_copies);
    if (st != MOE_OK) {
        moe_expert_map_free(m);
        return st;
    }
    for (int e = 0; e < E; e++) {
        m->ncopies[e] = ncopies[e];
        m->replicated |= ncopies[e] > 1;
        for (int c = 0; c < ncopies[e]; c++)
            m->copy_share[(size_t)e * max_copies + c] = shares[(size_t)e * max_copies + c];
    }
    number_copies(m, ncopies, ranks);
    return MOE_OK;
}

void moe_expert_map_free(moe_expert_map *m)
{
    void *bufs[] = {m->expert_rank, m->expert_local, m->local_experts, m->local_index, m->ncopies,
                    m->copy_slot, m->copy_share, m->copy_comm};
    for (size_t i = 0; i < sizeof bufs / sizeof *bufs; i++)
        moe_free(bufs[i]);
    memset(m, 0, sizeof *m);
}

/* The sorted ranks holding expert e's copies into set; returns their count. */
static int copy_ranks(const moe_expert_map *m, int e, int *set)
{
    int n = m->ncopies[e];
    for (int c = 0; c < n; c++)
        set[c] = m->copy_slot[(size_t)e * m->max_copies + c] / m->E_local;
    for (int i = 1; i < n; i++) /* insertion sort: a handful of ranks */
        for (int j = i; j > 0 && set[j - 1] > set[j]; j--) {
            int t = set[j];
            set[j] = set[j - 1];
            set[j - 1] = t;
        }
    return n;
}

moe_status moe_expert_maps_connect(moe_expert_map *maps, int nmaps, moe_comm *ep, moe_comm ***comms, int *ncomms)
{
    *comms = NULL;
    *ncomms = 0;
    int P = maps[0].ep_size, cap = 0, *sets = NULL, *sizes = NULL;
    for (int i = 0; i < nmaps; i++)
        for (int e = 0; e < maps[i].E; e++)
            cap += maps[i].ncopies[e] > 1;
    if (cap == 0)
        return MOE_OK;
    moe_status st = moe_alloc((void **)comms, sizeof **comms * (size_t)cap, "expert copy groups");
    if (st == MOE_OK)
        st = moe_alloc((void **)&sets, sizeof(int) * (size_t)cap * P, "expert copy groups");
    if (st == MOE_OK)
        st = moe_alloc((void **)&sizes, sizeof(int) * (size_t)cap, "expert copy groups");
    /* every rank walks (map, expert) in the same order, so the collective
    ** creations line up and equal sets find the same group */
    for (int i = 0; st == MOE_OK && i < nmaps; i++)
        for (int e = 0; st == MOE_OK && e < maps[i].E; e++) {
            if (maps[i].ncopies[e] < 2)
                continue;
            int set[P], n = copy_ranks(&maps[i], e, set), g = 0;
            while (g < *ncomms && !(sizes[g] == n && memcmp(&sets[(size_t)g * P], set, sizeof(int) * n) == 0))
                g++;
            if (g == *ncomms) {
                memcpy(&sets[(size_t)g * P], set, sizeof(int) * n);
                sizes[g] = n;
                st = moe_comm_create_subset(ep, set, n, "expert-copies", &(*comms)[g]);
                if (st != MOE_OK)
                    break;
                (*ncomms)++;
            }
            int local = maps[i].local_index[e];
            if (local >= 0)
                maps[i].copy_comm[local] = (*comms)[g];
        }
    moe_free(sets);
    moe_free(sizes);
    return st;
}

void moe_expert_map_slots(const moe_expert_map *m, const int32_t *idx, int n, int32_t *slot, int32_t *work)
{
    if (!m->replicated) {
        for (int i = 0; i < n; i++)
            slot[i] = moe_expert_slot(m, idx[i]);
        return;
    }
    int E = m->E, maxc = m->max_copies;
    int32_t *count = work, *end = work + E; /* end[e][c]: copy c takes pairs up to here */
    memset(count, 0, sizeof(int32_t) * (size_t)E);
    for (int i = 0; i < n; i++)
        count[idx[i]]++;
    for (int e = 0; e < E; e++) {
        const double *share = m->copy_share + (size_t)e * maxc;
        int32_t *b = end + (size_t)e * maxc;
        double cum = 0;
        for (int c = 0; c < m->ncopies[e] - 1; c++) {
            cum += share[c];
            int32_t at = (int32_t)floor(cum * count[e] + 0.5);
            b[c] = at > count[e] ? count[e] : at;
        }
        b[m->ncopies[e] - 1] = count[e];
        count[e] = 0; /* from here: pairs of e seen so far */
    }
    for (int i = 0; i < n; i++) {
        int e = idx[i], c = 0;
        const int32_t *b = end + (size_t)e * maxc;
        while (count[e] >= b[c])
            c++;
        count[e]++;
        slot[i] = m->copy_slot[(size_t)e * maxc + c];
    }
}
