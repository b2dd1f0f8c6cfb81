/*
** model_ffn: the FFN block of one layer, forward and backward,
**   out = x_mid + ffn(norm(x_mid))
** where ffn is a dense SwiGLU MLP, or an MoE: routed experts plus an
** optional shared expert.
**
** The MLP parts (dense layer, shared expert) are tensor-parallel like
** attention: column-parallel w13, row-parallel w2 on all of this rank's
** tokens. Routed experts see this rank's own 1/TP of the tokens (its
** sequence-parallel rows, or its slice of the replicated rows), all-gathered
** over etp when the experts' columns are cut; everything downstream of that
** gather is then partial over etp and summed back by a reduce-scatter. The
** aux and z losses count only the own tokens, against the micro-batch's
** expert counts (summed over tp_cp), so their sum over ranks is the
** single-rank loss.
*/
#include <math.h>
#include <string.h>

#include "layers/experts.h"
#include "layers/linear.h"
#include "layers/rmsnorm.h"
#include "layers/router.h"
#include "layers/swiglu.h"
#include "runtime/model_internal.h"

static void zero(float *p, size_t n) { memset(p, 0, n * sizeof *p); }

static void add_into(float *out, const float *b, size_t n)
{
#pragma omp parallel for schedule(static)
    for (size_t i = 0; i < n; i++)
        out[i] += b[i];
}

/* ---- dense SwiGLU MLP over this rank's columns ---------------------------- */

/* partial (Ncp, C) = w2(swiglu(w13(h))): this rank's share of the sum over tp. */
static void mlp_forward(moe_model *m, const float *h, float *h13, float *act, const float *w13, const float *w2,
                        int F, float *partial)
{
    moe_linear_forward(h13, h, w13, m->Ncp, m->C, 2 * F);
    moe_swiglu_forward(act, h13, m->Ncp, F);
    moe_linear_forward(partial, act, w2, m->Ncp, F, m->C);
}

/* Accumulates d(h) (partial over tp) from dy (Ncp, C). */
static void mlp_backward(moe_model *m, float *dh, float *dw13, float *dw2, const float *dy, const float *h,
                         const float *h13, const float *act, const float *w13, const float *w2, int F)
{
    zero(m->dsact, (size_t)m->Ncp * F);
    moe_linear_backward(m->dsact, dw2, dy, act, w2, m->Ncp, F, m->C);
    zero(m->dsh13, (size_t)m->Ncp * 2 * F);
    moe_swiglu_backward(m->dsh13, m->dsact, h13, m->Ncp, F);
    moe_linear_backward(dh, dw13, m->dsh13, h, w13, m->Ncp, m->C, 2 * F);
}

/* ---- routed experts ------------------------------------------------------- */

/* Adds this layer's routing (own tokens) to the trace counters. */
static void trace_routing(moe_model *m, int l, const float *own_counts, int own_off)
{
    const moe_layer_acts *s = &m->acts[l];
    int E = m->E, K = m->K, li = m->moe_index[l];
    for (int e = 0; e < E; e++)
        m->trace_load[(size_t)li * E + e] += own_counts[e];
    if (m->prev_moe_layer >= 0) {
        const int32_t *prev = m->acts[m->prev_moe_layer].topk_idx + (size_t)own_off * K;
        const int32_t *cur = s->topk_idx + (size_t)own_off * K;
        double *t = m->trace_trans + (size_t)(li - 1) * E * E;
        for (int n = 0; n < m->Nown; n++)
            for (int a = 0; a < K; a++)
                for (int b = 0; b < K; b++)
                    t[(size_t)prev[n * K + a] * E + cur[n * K + b]] += 1;
    }
    m->prev_moe_layer = l;
}

static int capacity_of(const moe_model *m, int N)
{
    double cf = m->cfg.moe_expert_capacity_factor;
    return cf > 0 ? (int)ceil(cf * (double)N * m->K / m->E) : 0;
}

/* This rank's own tokens in the residual form h (Nres rows) and the rows the
** router sees (own tokens of every etp rank, gathered). */
static const float *own_rows(const moe_model *m, const float *h)
{
    return m->sp ? h : h + (size_t)m->tp_rank * m->Nown * m->C;
}

static moe_status route(moe_model *m, int l, moe_fwd_stats *st)
{
    moe_layer_acts *s = &m->acts[l];
    const moe_config *c = &m->cfg;
    int E = m->E, K = m->K, Ng = m->Ng, own_off = m->etp_rank * m->Nown, li = m->moe_index[l];
    double ntok = (double)m->B * m->T; /* the micro-batch's tokens */
    const float *bias = c->moe_router_enable_expert_bias ? m->expert_bias + (size_t)li * E : NULL;
    moe_score_fn fn = (moe_score_fn)c->moe_router_score_function;

    moe_linear_forward(s->logits, s->hg, m->lp[l].router, Ng, m->C, E);
    moe_router_forward(s->scores, s->topk_idx, s->topk_w, s->logits, bias, Ng, E, K, fn, c->moe_router_norm_topk);
    float own_counts[E];
    zero(own_counts, (size_t)E);
    moe_router_counts(own_counts, s->topk_idx + (size_t)own_off * K, m->Nown, E, K);
    memcpy(s->counts, own_counts, sizeof own_counts);
    if (m->par.tp_cp)
        MOE_TRY(moe_allreduce(m->par.tp_cp, s->counts, (size_t)E, MOE_DT_F32, MOE_OP_SUM));
    st->aux_loss += moe_router_aux_loss_forward(s->scores + (size_t)own_off * E, s->counts, m->Nown, E, K, ntok, fn);
    st->z_loss += moe_router_z_loss_forward(s->logits + (size_t)own_off * E, m->Nown, E) * (m->Nown / ntok);

    if (m->trace_on)
        trace_routing(m, l, own_counts, own_off);
    double *load = m->load_counts + (size_t)li * E;
    for (int e = 0; e < E; e++)
        load[e] += own_counts[e];
    return MOE_OK;
}

/* ffn_out (Nres, C) = the routed experts' output for this rank's tokens. */
static moe_status routed_forward(moe_model *m, int l, moe_fwd_stats *st)
{
    moe_layer_acts *s = &m->acts[l];
    const moe_layer_ptrs *p = &m->lp[l];
    const moe_config *c = &m->cfg;
    int E = m->E, K = m->K, C = m->C, Ng = m->Ng, li = m->moe_index[l];
    const float *own = own_rows(m, s->h2);
    if (m->par.etp)
        MOE_TRY(moe_mp_allgather(m->par.etp, own, s->hg, (size_t)m->Nown, (size_t)C));
    else
        s->hg = (float *)own;
    MOE_TRY(route(m, l, st));

    /* plan in slot order: rows come out grouped by the rank that owns their expert */
    const int32_t *plan_idx = s->topk_idx;
    if (m->par.ep) { /* a replicated expert's tokens split among its copies */
        moe_expert_map_slots(&m->par.maps[li], s->topk_idx, Ng * K, m->topk_slot, m->slot_work);
        plan_idx = m->topk_slot;
    }
    s->rows = moe_route_plan(s->kept, s->offsets, s->slot_row, s->row_token, s->row_slot, plan_idx, s->topk_w, Ng,
                             m->nslot, K, capacity_of(m, Ng), (moe_drop_policy)c->moe_token_drop_policy,
                             c->moe_pad_expert_input_to_capacity);
    if (s->rows < 0)
        return moe_fail(MOE_ERR_INTERNAL, "layer %d: route plan refused the router's output", l);
    if (m->par.ep) { /* the dispatcher gathers each peer's rows as it sends them */
        MOE_TRY(moe_ep_forward(&m->ep_layers[li], m->par.ep, &m->par.maps[li], s->hg, s->row_token, s->xs,
                               s->offsets, s->rows, C, m->Fl, p->w13, p->w2, s->ys));
    } else {
        moe_permute_forward(s->xs, s->hg, s->row_token, s->rows, C);
        moe_experts_forward(s->ys, s->h13, s->act, s->xs, p->w13, p->w2, s->offsets, E, C, m->Fl);
    }
    long kept = 0; /* drops of the own tokens' pairs are counted by their etp rank 0 copy */
    for (int e = 0; e < m->nslot; e++)
        kept += s->kept[e];
    if (m->etp_rank == 0) {
        m->load_pairs += (double)Ng * K;
        m->load_dropped += (double)Ng * K - (double)kept;
    }

    /* out_g (Ng, C), partial over etp, back to the own tokens */
    float *out_g = m->par.etp ? m->gbuf : (m->sp ? m->ffn_out : m->tmp_nc);
    moe_unpermute_forward(out_g, s->ys, s->topk_w, s->slot_row, Ng, K, C);
    float *out_own = m->sp ? m->ffn_out : m->tmp_nc;
    if (m->par.etp)
        MOE_TRY(moe_mp_reduce_scatter(m->par.etp, out_g, out_own, (size_t)m->Nown, (size_t)C));
    if (!m->sp) /* replicated rows: every tp rank's slice */
        MOE_TRY(moe_mp_allgather(m->par.tp, out_own, m->ffn_out, (size_t)m->Nown, (size_t)C));
    return MOE_OK;
}

/* From dres (d of the FFN output, residual form) to d(own tokens of h2),
** written to *dh_own (Nown, C). */
static moe_status routed_backward(moe_model *m, int l, float aux_scale, float **dh_own)
{
    moe_layer_acts *s = &m->acts[l];
    const moe_layer_ptrs *p = &m->lp[l];
    moe_layer_ptrs *g = &m->lg[l];
    const moe_config *c = &m->cfg;
    int E = m->E, K = m->K, C = m->C, Ng = m->Ng, li = m->moe_index[l];
    int own_off = m->etp_rank * m->Nown;
    double ntok = (double)m->B * m->T;
    moe_score_fn fn = (moe_score_fn)c->moe_router_score_function;

    const float *d_g = own_rows(m, m->dres);
    if (m->par.etp) {
        MOE_TRY(moe_mp_allgather(m->par.etp, d_g, m->gbuf, (size_t)m->Nown, (size_t)C));
        d_g = m->gbuf;
    }
    moe_unpermute_backward(m->dys, m->dtopk_w, d_g, s->ys, s->topk_w, s->slot_row, Ng, K, C, s->rows);
    if (m->par.ep)
        MOE_TRY(moe_ep_backward(&m->ep_layers[li], m->par.ep, &m->par.maps[li], m->dys, s->rows, C, m->Fl, p->w13,
                                p->w2, g->w13, g->w2, m->dxs));
    else
        moe_experts_backward(m->dxs, g->w13, g->w2, m->dh13, m->dact, m->dys, s->xs, s->h13, s->act, p->w13, p->w2,
                             s->offsets, E, C, m->Fl);
    float *dh_g = m->tmp_nc;
    zero(dh_g, (size_t)Ng * C);
    moe_permute_backward(dh_g, m->dxs, s->slot_row, Ng, K, C);

    zero(m->drouter, (size_t)Ng * E);
    moe_router_backward(m->drouter, m->dtopk_w, s->scores, s->topk_idx, Ng, E, K, fn, c->moe_router_norm_topk);
    float *dr_own = m->drouter + (size_t)own_off * E;
    if (c->moe_aux_loss_coeff != 0)
        moe_router_aux_loss_backward(dr_own, s->scores + (size_t)own_off * E, s->counts, m->Nown, E, K, ntok, fn,
                                     (float)c->moe_aux_loss_coeff * aux_scale);
    if (c->moe_z_loss_coeff != 0)
        moe_router_z_loss_backward(dr_own, s->logits + (size_t)own_off * E, m->Nown, E,
                                   (float)(c->moe_z_loss_coeff * aux_scale * (m->Nown / ntok)));
    moe_linear_backward(dh_g, g->router, m->drouter, s->hg, p->router, Ng, C, E);
    *dh_own = dh_g;
    if (m->par.etp) {
        MOE_TRY(moe_mp_reduce_scatter(m->par.etp, dh_g, m->dlm, (size_t)m->Nown, (size_t)C));
        *dh_own = m->dlm;
    }
    return MOE_OK;
}

/* ---- the block ------------------------------------------------------------ */

moe_status moe_ffn_forward(moe_model *m, int l, float *out, moe_fwd_stats *st)
{
    moe_layer_acts *s = &m->acts[l];
    const moe_layer_ptrs *p = &m->lp[l];
    size_t n = (size_t)m->Nres * m->C;
    moe_rmsnorm_forward(s->h2, s->rstd2, s->x_mid, p->ffn_norm, m->Nres, m->C, (float)m->cfg.norm_epsilon);
    const float *hfull = s->h2;
    if (m->sp) {
        MOE_TRY(moe_tp_in(m, s->h2, s->h2full));
        hfull = s->h2full;
    }
    if (m->cfg.moe_layer_is_moe[l]) {
        MOE_TRY(routed_forward(m, l, st));
        if (m->Fs) {
            mlp_forward(m, hfull, s->sh13, s->sact, p->sw13, p->sw2, m->Fsl, m->tmp_nc);
            float *shared = m->sp ? m->gbuf : m->tmp_nc;
            MOE_TRY(moe_tp_out(m, m->tmp_nc, shared));
            add_into(m->ffn_out, shared, n);
        }
    } else {
        mlp_forward(m, hfull, s->mh13, s->mact, p->mlp_w13, p->mlp_w2, m->Fdl, m->tmp_nc);
        MOE_TRY(moe_tp_out(m, m->tmp_nc, m->ffn_out));
    }
#pragma omp parallel for schedule(static)
    for (size_t i = 0; i < n; i++)
        out[i] = s->x_mid[i] + m->ffn_out[i];
    return MOE_OK;
}

moe_status moe_ffn_backward(moe_model *m, int l, float aux_scale)
{
    moe_layer_acts *s = &m->acts[l];
    const moe_layer_ptrs *p = &m->lp[l];
    moe_layer_ptrs *g = &m->lg[l];
    int C = m->C, is_moe = m->cfg.moe_layer_is_moe[l];
    float *dh_own = NULL;
    if (is_moe)
        MOE_TRY(routed_backward(m, l, aux_scale, &dh_own));

    const float *dh_loc; /* d(h2) in the residual form */
    if (!is_moe || m->Fs) {
        const float *dy = m->dres, *h = m->sp ? s->h2full : s->h2;
        if (m->sp) {
            MOE_TRY(moe_tp_in(m, m->dres, m->gbuf));
            dy = m->gbuf;
        }
        zero(m->dh, (size_t)m->Ncp * C);
        if (is_moe)
            mlp_backward(m, m->dh, g->sw13, g->sw2, dy, h, s->sh13, s->sact, p->sw13, p->sw2, m->Fsl);
        else
            mlp_backward(m, m->dh, g->mlp_w13, g->mlp_w2, dy, h, s->mh13, s->mact, p->mlp_w13, p->mlp_w2, m->Fdl);
        if (m->sp) {
            MOE_TRY(moe_tp_out(m, m->dh, m->gbuf));
            if (dh_own)
                add_into(m->gbuf, dh_own, (size_t)m->Nres * C);
            dh_loc = m->gbuf;
        } else {
            if (dh_own)
                add_into(m->dh + (size_t)m->tp_rank * m->Nown * C, dh_own, (size_t)m->Nown * C);
            MOE_TRY(moe_tp_out(m, m->dh, m->dh));
            dh_loc = m->dh;
        }
    } else if (m->sp) {
        dh_loc = dh_own;
    } else { /* every tp rank's own rows */
        MOE_TRY(moe_mp_allgather(m->par.tp, dh_own, m->dh, (size_t)m->Nown, (size_t)C));
        dh_loc = m->dh;
    }
    moe_rmsnorm_backward(m->dres, g->ffn_norm, dh_loc, s->x_mid, p->ffn_norm, s->rstd2, m->Nres, C);
    return MOE_OK;
}
