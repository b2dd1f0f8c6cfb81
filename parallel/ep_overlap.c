/*
** ep_overlap: the expert layer with its all-to-alls overlapped by compute
** (--moe-overlap coarse|fine; ep.h has the contract).
**
** coarse (Tutel-like): the local experts are cut into d chunks; each chunk's
** rows go out in their own all-to-all (non-blocking point-to-point to every
** peer: Open MPI's non-blocking collectives progress far slower), all posted
** at once; chunk c computes once all of its rows are in and its results go
** home in another all-to-all while chunk c+1 computes.
**
** fine (Comet-like, arrival-driven) is in ep_fine.c.
**
** Both run exactly the GEMMs of the plain dispatcher, on the same rows, so
** outputs are bit-identical to it; the data gradients run per chunk / source
** as they arrive, and every expert's weight gradient sums its segments in
** source order (coarse: once, after the pass), so they do not depend on
** arrival order either.
*/
#include <string.h>
#include <unistd.h>

#include "layers/experts.h"
#include "parallel/ep_internal.h"
#include "runtime/base/timer.h"

#define EP_COARSE_TAG 0x4600 /* + 2 * chunk, + 1 for results */

void moe_ep_maybe_delay(moe_ep_layer *s)
{
    if (s->delay_us <= 0)
        return;
    s->delay_state = s->delay_state * 1103515245u + 12345u;
    usleep((useconds_t)((s->delay_state >> 8) % (unsigned)s->delay_us));
}

/* Peer order: this rank first, then the others rotated (as the sends go). */
static int source_at(const moe_expert_map *map, int i) { return (map->ep_rank + i) % map->ep_size; }

/* ---- coarse: chunks of local experts, one all-to-all each ---------------- */

/* Element counts and displacements, per peer, of local experts [l0, l1)
** within rows laid out by `seg_off` (segment (p, l) = seg_off[p*El + l]). */
static void chunk_splits(const int32_t *seg_off, int P, int El, int l0, int l1, int C, size_t *cnt, size_t *dsp)
{
    for (int p = 0; p < P; p++) {
        int a = seg_off[p * El + l0], b = seg_off[p * El + l1];
        cnt[p] = (size_t)(b - a) * C;
        dsp[p] = (size_t)a * C;
    }
}

/* Posts chunk c's messages of one direction: to each peer p, cnt_out[p]
** floats from `from` at dsp_out[p]; from each, cnt_in[p] into `to` at
** dsp_in[p]. The own part is a copy. */
static moe_status chunk_post(const moe_ep_pass *a, const size_t *cnt_out, const size_t *dsp_out, const float *from,
                             const size_t *cnt_in, const size_t *dsp_in, float *to, int tag, moe_request **rq)
{
    int P = a->map->ep_size, me = a->map->ep_rank;
    for (int p = 0; p < P; p++)
        if (p != me && cnt_in[p])
            MOE_TRY(moe_irecv(a->ep, to + dsp_in[p], cnt_in[p], MOE_DT_F32, p, tag, &rq[p]));
    for (int i = 1; i < P; i++) {
        int p = source_at(a->map, i);
        if (cnt_out[p])
            MOE_TRY(moe_isend(a->ep, from + dsp_out[p], cnt_out[p], MOE_DT_F32, p, tag, &rq[P + p]));
    }
    memcpy(to + dsp_in[me], from + dsp_out[me], cnt_out[me] * sizeof(float));
    return MOE_OK;
}

static moe_status wait_all(moe_request **rq, int n, moe_status st)
{
    for (int i = 0; i < n; i++) { /* everything posted completes, even after a failure */
        moe_status w = moe_wait(&rq[i]);
        if (st == MOE_OK)
            st = w;
    }
    return st;
}

static moe_status coarse_pass(const moe_ep_pass *a)
{
    moe_ep_layer *s = a->s;
    int P = a->map->ep_size, El = a->map->E_local, C = a->C;
    int d = s->chunks > 0 ? s->chunks : 4;
    if (d > El)
        d = El;
    /* slot-ordered offsets of the sending side: slot (p, l) */
    int32_t send_off[P * El + 1];
    send_off[0] = 0;
    for (int g = 0; g < P * El; g++)
        send_off[g + 1] = send_off[g] + s->send_counts[g];
    size_t sc[d][P], sd[d][P], rc[d][P], rd[d][P];
    moe_request *in[d][2 * P], *back[d][2 * P];
    memset(in, 0, sizeof in);
    memset(back, 0, sizeof back);
    moe_status st = MOE_OK;
    for (int c = 0; c < d && st == MOE_OK; c++) { /* every chunk's rows on the wire at once */
        int l0 = El * c / d, l1 = El * (c + 1) / d;
        chunk_splits(send_off, P, El, l0, l1, C, sc[c], sd[c]);
        chunk_splits(s->offsets, P, El, l0, l1, C, rc[c], rd[c]);
        moe_ep_maybe_delay(s);
        st = chunk_post(a, sc[c], sd[c], a->src, rc[c], rd[c], a->dst, EP_COARSE_TAG + 2 * c, in[c]);
    }
    for (int c = 0; c < d && st == MOE_OK; c++) {
        int l0 = El * c / d, l1 = El * (c + 1) / d;
        st = wait_all(in[c], 2 * P, st);
        double t0 = moe_now();
        for (int p = 0; p < P && st == MOE_OK; p++) {
            int g0 = p * El + l0;
            if (!a->backward)
                moe_experts_forward_segments(s->ye, s->h13, s->act, s->xr, a->w13, a->w2, s->offsets + g0,
                                             s->seg_expert + g0, l1 - l0, C, a->F);
            else
                moe_experts_dgrad_segments(s->dx, s->dh13, s->dact, s->ye, s->h13, a->w13, a->w2, s->offsets + g0,
                                           s->seg_expert + g0, l1 - l0, C, a->F);
        }
        double t1 = moe_now();
        s->compute_s += t1 - t0;
        if (s->on_event)
            s->on_event(s->event_ctx, "compute", c, t0, t1);
        if (st == MOE_OK) /* results home while the next chunk computes */
            st = chunk_post(a, rc[c], rd[c], a->res, sc[c], sd[c], a->out, EP_COARSE_TAG + 2 * c + 1, back[c]);
    }
    for (int c = 0; c < d; c++) {
        st = wait_all(in[c], 2 * P, st);
        st = wait_all(back[c], 2 * P, st);
    }
    return st;
}

/* ---- the layer ------------------------------------------------------------ */

moe_status moe_ep_forward_overlap(moe_ep_layer *s, moe_comm *ep, const moe_expert_map *map, const float *x,
                                  const int32_t *row_token, float *xs, const int32_t *slot_offsets, int C, int F,
                                  const float *w13, const float *w2, float *ys)
{
    MOE_TRY(moe_ep_exchange_counts(s, ep, map, slot_offsets, C, F));
    /* every peer's rows gathered into slot order first: the sends read them in place */
    size_t rows = 0;
    for (int p = 0; p < map->ep_size; p++)
        rows += s->send_rows[p];
    moe_permute_forward(xs, x, row_token, (int)rows, C);
    moe_ep_pass a = {s, ep, map, C, F, 0, xs, s->xr, s->ye, ys, w13, w2, NULL, NULL};
    s->compute_s = 0;
    return s->overlap == MOE_EP_COARSE ? coarse_pass(&a) : moe_ep_fine_pass(&a);
}

moe_status moe_ep_backward_overlap(moe_ep_layer *s, moe_comm *ep, const moe_expert_map *map, const float *dys,
                                   int C, int F, const float *w13, const float *w2, float *dw13, float *dw2,
                                   float *dxs)
{
    moe_ep_refresh_splits(s, map->ep_size, C);
    moe_ep_pass a = {s, ep, map, C, F, 1, dys, s->ye, s->dx, dxs, w13, w2, dw13, dw2};
    s->compute_s = 0;
    if (s->overlap != MOE_EP_COARSE) /* fine runs the weight gradients inside the pass */
        return moe_ep_fine_pass(&a);
    MOE_TRY(coarse_pass(&a));
    /* weight gradients once, every segment in order: independent of arrival order */
    int segs = map->ep_size * map->E_local;
    double t0 = moe_now();
    moe_experts_wgrad_segments(dw13, dw2, s->ye, s->xr, s->dh13, s->act, s->offsets, s->seg_expert, segs, C, F);
    s->compute_s += moe_now() - t0;
    return MOE_OK;
}
