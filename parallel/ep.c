#include "parallel/ep.h"

#include <stdlib.h>
#include <string.h>

#include "layers/experts.h"
#include "parallel/ep_internal.h"
#include "runtime/base/mem.h"
#include "runtime/base/timer.h"

void moe_ep_layer_free(moe_ep_layer *s)
{
    void *bufs[] = {s->sc, s->sd, s->rc, s->rd, s->send_rows, s->recv_rows, s->send_counts, s->recv_counts,
                    s->offsets, s->seg_expert, s->xr, s->h13, s->act, s->ye, s->dx, s->dh13, s->dact};
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

/* Expert-side buffers for `rows` received rows, grow-only across steps.
** `mean`: the rows a rank receives on average (what each rank sends: the
** same micro-batch and top-k everywhere); `peers`: the EP size, so a step
** brings at most peers x mean. Each growth zero-fills fresh pages, 0.2-0.4
** s a growth at small.yaml's sizes on the 2-core VM (about 300 MB/s of
** first touch), and routing drifts over the first steps: with a 1.25x
** margin over what came, the layers of small EP2 grew 17-19 times per rank
** in 11 steps, several in the measured ones. So the capacity is twice the
** largest of the rows, the old capacity and the mean, at most the bound
** (never less than the rows): EP2 reserves its bound at the first step. */
static moe_status reserve(moe_ep_layer *s, size_t rows, size_t mean, int peers, int C, int F)
{
    if (rows <= s->cap_rows && s->xr)
        return MOE_OK;
    size_t big = rows > s->cap_rows ? rows : s->cap_rows, bound = (size_t)peers * mean;
    big = big > mean ? big : mean;
    size_t cap = 2 * big < bound ? 2 * big : bound;
    cap = cap > rows ? cap : rows;
    MOE_TRY(grow(&s->xr, cap * C, "ep received rows"));
    MOE_TRY(grow(&s->h13, cap * 2 * F, "ep expert gate/up"));
    MOE_TRY(grow(&s->act, cap * F, "ep expert activations"));
    MOE_TRY(grow(&s->ye, cap * C, "ep expert outputs"));
    MOE_TRY(grow(&s->dx, cap * C, "ep expert input grads"));
    MOE_TRY(grow(&s->dh13, cap * 2 * F, "ep expert gate/up grads"));
    MOE_TRY(grow(&s->dact, cap * F, "ep expert activation grads"));
    s->cap_rows = cap;
    return MOE_OK;
}

static moe_status ensure_meta(moe_ep_layer *s, int ep, int E_local)
{
    if (s->send_rows)
        return MOE_OK;
    size_t segs = (size_t)ep * E_local;
    MOE_TRY(moe_alloc((void **)&s->send_rows, sizeof(size_t) * ep, "ep split sizes"));
    MOE_TRY(moe_alloc((void **)&s->recv_rows, sizeof(size_t) * ep, "ep split sizes"));
    MOE_TRY(moe_alloc((void **)&s->send_counts, sizeof(int32_t) * segs, "ep counts"));
    MOE_TRY(moe_alloc((void **)&s->recv_counts, sizeof(int32_t) * segs, "ep counts"));
    MOE_TRY(moe_alloc((void **)&s->offsets, sizeof(int32_t) * (segs + 1), "ep segments"));
    MOE_TRY(moe_alloc((void **)&s->seg_expert, sizeof(int32_t) * segs, "ep segments"));
    size_t **splits[] = {&s->sc, &s->sd, &s->rc, &s->rd};
    for (int i = 0; i < 4; i++)
        MOE_TRY(moe_alloc((void **)splits[i], sizeof(size_t) * ep, "ep splits"));
    for (size_t g = 0; g < segs; g++)
        s->seg_expert[g] = (int32_t)(g % (size_t)E_local);
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

moe_status moe_ep_exchange_counts(moe_ep_layer *s, moe_comm *ep, const moe_expert_map *map,
                                  const int32_t *slot_offsets, int C, int F)
{
    int P = map->ep_size, El = map->E_local, segs = P * El;
    MOE_TRY(ensure_meta(s, P, El));
    size_t sent = 0;
    for (int p = 0; p < P; p++) {
        s->send_rows[p] = 0;
        for (int l = 0; l < El; l++) {
            int slot = p * El + l;
            s->send_counts[slot] = slot_offsets[slot + 1] - slot_offsets[slot];
            s->send_rows[p] += (size_t)s->send_counts[slot];
        }
        sent += s->send_rows[p];
    }
    MOE_TRY(moe_alltoall(ep, s->send_counts, s->recv_counts, (size_t)El, MOE_DT_I32));
    s->offsets[0] = 0;
    for (int g = 0; g < segs; g++)
        s->offsets[g + 1] = s->offsets[g] + s->recv_counts[g];
    s->recv_total = (size_t)s->offsets[segs];
    for (int p = 0; p < P; p++)
        s->recv_rows[p] = (size_t)(s->offsets[(p + 1) * El] - s->offsets[p * El]);
    row_splits(s->send_rows, P, C, s->sc, s->sd);
    row_splits(s->recv_rows, P, C, s->rc, s->rd);
    return reserve(s, s->recv_total, sent, P, C, F);
}

#define EP_TAG 0x4550 /* "EP" */

moe_status moe_ep_dispatch(moe_ep_layer *s, moe_comm *ep, const moe_expert_map *map, const float *x,
                           const int32_t *row_token, float *xs, const int32_t *slot_offsets, int C, int F)
{
    int P = map->ep_size, me = map->ep_rank;
    MOE_TRY(moe_ep_exchange_counts(s, ep, map, slot_offsets, C, F));
    moe_request *reqs[2 * P];
    int nreq = 0;
    moe_status st = MOE_OK;
    for (int p = 0; p < P && st == MOE_OK; p++)
        if (p != me && s->rc[p] > 0)
            st = moe_irecv(ep, s->xr + s->rd[p], s->rc[p], MOE_DT_F32, p, EP_TAG, &reqs[nreq++]);
    for (int k = 1; k < P && st == MOE_OK; k++) {
        int p = (me + k) % P; /* staggered, so ranks do not all send to one peer first */
        if (s->sc[p] == 0)
            continue;
        size_t row0 = s->sd[p] / (size_t)C;
        moe_permute_forward(xs + s->sd[p], x, row_token + row0, (int)s->send_rows[p], C);
        st = moe_isend(ep, xs + s->sd[p], s->sc[p], MOE_DT_F32, p, EP_TAG, &reqs[nreq++]);
    }
    /* own rows last, while the others are on the wire, straight to where the experts read them */
    size_t me_row = s->sd[me] / (size_t)C;
    moe_permute_forward(s->xr + s->rd[me], x, row_token + me_row, (int)s->send_rows[me], C);
    for (int i = 0; i < nreq; i++) { /* complete everything posted, even after a failure */
        moe_status w = moe_wait(&reqs[i]);
        if (st == MOE_OK)
            st = w;
    }
    return st;
}

void moe_ep_refresh_splits(moe_ep_layer *s, int P, int C)
{
    row_splits(s->send_rows, P, C, s->sc, s->sd);
    row_splits(s->recv_rows, P, C, s->rc, s->rd);
}

moe_status moe_ep_dispatch_again(moe_ep_layer *s, moe_comm *ep, const moe_expert_map *map, const float *rows,
                                 int C, float *out)
{
    int P = map->ep_size;
    moe_ep_refresh_splits(s, P, C);
    return moe_alltoallv(ep, rows, s->sc, s->sd, out, s->rc, s->rd, MOE_DT_F32);
}

moe_status moe_ep_combine(moe_ep_layer *s, moe_comm *ep, const moe_expert_map *map, const float *rows, int C,
                          float *out)
{
    int P = map->ep_size;
    moe_ep_refresh_splits(s, P, C);
    return moe_alltoallv(ep, rows, s->rc, s->rd, out, s->sc, s->sd, MOE_DT_F32);
}

moe_status moe_ep_forward(moe_ep_layer *s, moe_comm *ep, const moe_expert_map *map, const float *x,
                          const int32_t *row_token, float *xs, const int32_t *slot_offsets, int R, int C, int F,
                          const float *w13, const float *w2, float *ys)
{
    (void)R;
    if (s->overlap != MOE_EP_NONE)
        return moe_ep_forward_overlap(s, ep, map, x, row_token, xs, slot_offsets, C, F, w13, w2, ys);
    int segs = map->ep_size * map->E_local;
    MOE_TRY(moe_ep_dispatch(s, ep, map, x, row_token, xs, slot_offsets, C, F));
    double t0 = moe_now();
    moe_experts_forward_segments(s->ye, s->h13, s->act, s->xr, w13, w2, s->offsets, s->seg_expert, segs, C, F);
    s->compute_s = moe_now() - t0;
    return moe_ep_combine(s, ep, map, s->ye, C, ys);
}

moe_status moe_ep_backward(moe_ep_layer *s, moe_comm *ep, const moe_expert_map *map, const float *dys,
                           int R, int C, int F, const float *w13, const float *w2, float *dw13,
                           float *dw2, float *dxs)
{
    (void)R;
    if (s->overlap != MOE_EP_NONE)
        return moe_ep_backward_overlap(s, ep, map, dys, C, F, w13, w2, dw13, dw2, dxs);
    int segs = map->ep_size * map->E_local;
    /* forward kept xr, h13 and act; ye is free to hold the row gradients */
    MOE_TRY(moe_ep_dispatch_again(s, ep, map, dys, C, s->ye));
    double t0 = moe_now();
    moe_experts_backward_segments(s->dx, dw13, dw2, s->dh13, s->dact, s->ye, s->xr, s->h13, s->act, w13, w2,
                                  s->offsets, s->seg_expert, segs, C, F);
    s->compute_s = moe_now() - t0;
    return moe_ep_combine(s, ep, map, s->dx, C, dxs);
}
