#include "parallel/ep.h"

#include <stdlib.h>
#include <string.h>

#include "layers/experts.h"
#include "runtime/base/mem.h"

moe_status moe_expert_map_contiguous(moe_expert_map *m, int E, int ep_size, int ep_rank)
{
    memset(m, 0, sizeof *m);
    if (ep_size < 1 || E % ep_size != 0)
        return moe_fail(MOE_ERR_USAGE, "num-experts (%d) must be divisible by expert-model-parallel-size (%d)",
                        E, ep_size);
    m->E = E;
    m->ep_size = ep_size;
    m->ep_rank = ep_rank;
    m->E_local = E / ep_size;
    MOE_TRY(moe_alloc((void **)&m->expert_rank, sizeof(int) * (size_t)E, "expert map"));
    MOE_TRY(moe_alloc((void **)&m->expert_local, sizeof(int) * (size_t)E, "expert map"));
    MOE_TRY(moe_alloc((void **)&m->local_experts, sizeof(int) * (size_t)m->E_local, "expert map"));
    for (int e = 0; e < E; e++) {
        m->expert_rank[e] = e / m->E_local;
        m->expert_local[e] = e % m->E_local;
        if (m->expert_rank[e] == ep_rank)
            m->local_experts[m->expert_local[e]] = e;
    }
    return MOE_OK;
}

void moe_expert_map_free(moe_expert_map *m)
{
    moe_free(m->expert_rank);
    moe_free(m->expert_local);
    moe_free(m->local_experts);
    memset(m, 0, sizeof *m);
}

void moe_ep_layer_free(moe_ep_layer *s)
{
    void *bufs[] = {s->sc, s->sd, s->rc, s->rd, s->send_rows, s->recv_rows, s->send_counts, s->recv_counts, s->offsets, s->xr,
                    s->xe, s->h13, s->act, s->ye, s->dh13, s->dact};
    for (size_t i = 0; i < sizeof bufs / sizeof *bufs; i++)
        moe_free(bufs[i]);
    memset(s, 0, sizeof *s);
}

/* ------------------------------------------------------------------------- */

static moe_status grow(float **p, size_t count, const char *what)
{
    moe_free(*p);
    *p = NULL;
    return moe_alloc((void **)p, count * sizeof(float), what);
}

/* Expert-side buffers for `rows` received rows; grow-only across steps. */
static moe_status reserve(moe_ep_layer *s, size_t rows, int C, int F)
{
    if (rows <= s->cap_rows && s->xr)
        return MOE_OK;
    size_t cap = rows + rows / 4 + 1;
    MOE_TRY(grow(&s->xr, cap * C, "ep received rows"));
    MOE_TRY(grow(&s->xe, cap * C, "ep expert inputs"));
    MOE_TRY(grow(&s->h13, cap * 2 * F, "ep expert gate/up"));
    MOE_TRY(grow(&s->act, cap * F, "ep expert activations"));
    MOE_TRY(grow(&s->ye, cap * C, "ep expert outputs"));
    MOE_TRY(grow(&s->dh13, cap * 2 * F, "ep expert gate/up grads"));
    MOE_TRY(grow(&s->dact, cap * F, "ep expert activation grads"));
    s->cap_rows = cap;
    return MOE_OK;
}

static moe_status ensure_meta(moe_ep_layer *s, int ep, int E_local)
{
    if (s->send_rows)
        return MOE_OK;
    MOE_TRY(moe_alloc((void **)&s->send_rows, sizeof(size_t) * ep, "ep split sizes"));
    MOE_TRY(moe_alloc((void **)&s->recv_rows, sizeof(size_t) * ep, "ep split sizes"));
    MOE_TRY(moe_alloc((void **)&s->send_counts, sizeof(int32_t) * ep * E_local, "ep counts"));
    MOE_TRY(moe_alloc((void **)&s->recv_counts, sizeof(int32_t) * ep * E_local, "ep counts"));
    MOE_TRY(moe_alloc((void **)&s->offsets, sizeof(int32_t) * (E_local + 1), "ep offsets"));
    size_t **splits[] = {&s->sc, &s->sd, &s->rc, &s->rd};
    for (int i = 0; i < 4; i++)
        MOE_TRY(moe_alloc((void **)splits[i], sizeof(size_t) * ep, "ep splits"));
    return MOE_OK;
}

/* Element counts and displacements (rows * C) for an all-to-all(v) of rows. */
static void row_splits(const size_t *rows, int ep, int C, size_t *counts, size_t *displs)
{
    size_t off = 0;
    for (int p = 0; p < ep; p++) {
        counts[p] = rows[p] * (size_t)C;
        displs[p] = off;
        off += counts[p];
    }
}

/* Rows arrive grouped (source, expert); experts want (expert, source). The
** same walk copies either way: to_expert_order=1 gathers src (source order)
** into dst (expert order), 0 scatters back. */
static void regroup(const moe_ep_layer *s, int ep, int E_local, int C, const float *src, float *dst,
                    int to_expert_order)
{
    size_t src_row = 0;
    for (int p = 0; p < ep; p++) {
        for (int l = 0; l < E_local; l++) {
            size_t n = (size_t)s->recv_counts[p * E_local + l];
            /* rows of (p, l) sit after all earlier sources' rows of expert l */
            size_t dst_row = (size_t)s->offsets[l];
            for (int q = 0; q < p; q++)
                dst_row += (size_t)s->recv_counts[q * E_local + l];
            const float *a = to_expert_order ? src + src_row * C : src + dst_row * C;
            float *b = to_expert_order ? dst + dst_row * C : dst + src_row * C;
            memcpy(b, a, n * C * sizeof(float));
            src_row += n;
        }
    }
}

moe_status moe_ep_dispatch(moe_ep_layer *s, moe_comm *ep, const moe_expert_map *map, const float *xs,
                           const int32_t *slot_offsets, int C, int F)
{
    int P = map->ep_size, El = map->E_local;
    MOE_TRY(ensure_meta(s, P, El));
    for (int p = 0; p < P; p++) {
        s->send_rows[p] = 0;
        for (int l = 0; l < El; l++) {
            int slot = p * El + l;
            s->send_counts[slot] = slot_offsets[slot + 1] - slot_offsets[slot];
            s->send_rows[p] += (size_t)s->send_counts[slot];
        }
    }
    MOE_TRY(moe_alltoall(ep, s->send_counts, s->recv_counts, (size_t)El, MOE_DT_I32));
    s->recv_total = 0;
    for (int p = 0; p < P; p++) {
        s->recv_rows[p] = 0;
        for (int l = 0; l < El; l++)
            s->recv_rows[p] += (size_t)s->recv_counts[p * El + l];
        s->recv_total += s->recv_rows[p];
    }
    s->offsets[0] = 0;
    for (int l = 0; l < El; l++) {
        int32_t n = 0;
        for (int p = 0; p < P; p++)
            n += s->recv_counts[p * El + l];
        s->offsets[l + 1] = s->offsets[l] + n;
    }
    MOE_TRY(reserve(s, s->recv_total, C, F));
    return moe_ep_dispatch_again(s, ep, map, xs, C, s->xe);
}

moe_status moe_ep_dispatch_again(moe_ep_layer *s, moe_comm *ep, const moe_expert_map *map, const float *rows,
                                 int C, float *expert_order_out)
{
    int P = map->ep_size;
    row_splits(s->send_rows, P, C, s->sc, s->sd);
    row_splits(s->recv_rows, P, C, s->rc, s->rd);
    MOE_TRY(moe_alltoallv(ep, rows, s->sc, s->sd, s->xr, s->rc, s->rd, MOE_DT_F32));
    regroup(s, P, map->E_local, C, s->xr, expert_order_out, 1);
    return MOE_OK;
}

moe_status moe_ep_combine(moe_ep_layer *s, moe_comm *ep, const moe_expert_map *map, const float *expert_rows,
                          int C, float *out)
{
    int P = map->ep_size;
    row_splits(s->send_rows, P, C, s->sc, s->sd);
    row_splits(s->recv_rows, P, C, s->rc, s->rd);
    regroup(s, P, map->E_local, C, expert_rows, s->xr, 0); /* xr: the send buffer home */
    MOE_TRY(moe_alltoallv(ep, s->xr, s->rc, s->rd, out, s->sc, s->sd, MOE_DT_F32));
    return MOE_OK;
}

moe_status moe_ep_forward(moe_ep_layer *s, moe_comm *ep, const moe_expert_map *map, const float *xs,
                          const int32_t *slot_offsets, int R, int C, int F, const float *w13,
                          const float *w2, float *ys)
{
    (void)R;
    MOE_TRY(moe_ep_dispatch(s, ep, map, xs, slot_offsets, C, F));
    moe_experts_forward(s->ye, s->h13, s->act, s->xe, w13, w2, s->offsets, map->E_local, C, F);
    return moe_ep_combine(s, ep, map, s->ye, C, ys);
}

moe_status moe_ep_backward(moe_ep_layer *s, moe_comm *ep, const moe_expert_map *map, const float *dys,
                           int R, int C, int F, const float *w13, const float *w2, float *dw13,
                           float *dw2, float *dxs)
{
    (void)R;
    /* forward kept xe, h13 and act; ye is free to hold the row gradients */
    MOE_TRY(moe_ep_dispatch_again(s, ep, map, dys, C, s->ye));
    float *dxe = s->xr;
    moe_experts_backward(dxe, dw13, dw2, s->dh13, s->dact, s->ye, s->xe, s->h13, s->act, w13, w2,
                         s->offsets, map->E_local, C, F);
    /* combine regroups dxe into xr in place of itself: go through ye first */
    memcpy(s->ye, dxe, s->recv_total * (size_t)C * sizeof(float));
    return moe_ep_combine(s, ep, map, s->ye, C, dxs);
}
