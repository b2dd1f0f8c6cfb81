/*
** model_step: forward and backward of one micro-batch through the model,
** layer by layer, with the layers' forward and backward side by side.
** Buffers and layouts are in model_internal.h; the math is in model.h.
*/
#include <math.h>
#include <string.h>

#include "layers/attention.h"
#include "layers/crossentropy.h"
#include "layers/embedding.h"
#include "layers/experts.h"
#include "layers/linear.h"
#include "layers/rmsnorm.h"
#include "layers/rope.h"
#include "layers/router.h"
#include "layers/swiglu.h"
#include "runtime/model_internal.h"

static void zero(float *p, size_t n) { memset(p, 0, n * sizeof *p); }

/* out = a + b; out may be a. */
static void add_into(float *out, const float *a, const float *b, size_t n)
{
#pragma omp parallel for schedule(static)
    for (size_t i = 0; i < n; i++)
        out[i] = a[i] + b[i];
}

/* ------------------------------------------------------------------------- */
/* attention block: x_mid = x_in + out(attention(rope(qkv(norm(x_in)))))     */

static void attn_forward(moe_model *m, int l, int N)
{
    moe_layer_acts *s = &m->acts[l];
    const moe_layer_ptrs *p = &m->lp[l];
    moe_rmsnorm_forward(s->h1, s->rstd1, s->x_in, p->attn_norm, N, m->C, (float)m->cfg.norm_epsilon);
    moe_linear_forward(m->dqkv, s->h1, p->qkv, N, m->C, m->QKV); /* dqkv: pre-RoPE scratch */
    moe_rope_forward(s->qkv, m->dqkv, m->rope_cos, m->rope_sin, m->B, m->T, m->NH, m->NKV, m->HD);
    moe_attention_forward(s->attn_y, s->att, s->qkv, m->B, m->T, m->NH, m->NKV, m->HD);
    moe_linear_forward(m->tmp_nc, s->attn_y, p->attn_out, N, m->NH * m->HD, m->C);
    add_into(s->x_mid, s->x_in, m->tmp_nc, (size_t)N * m->C);
}

/* dres holds d(x_mid) on entry and d(x_in) on return. */
static void attn_backward(moe_model *m, int l, int N)
{
    moe_layer_acts *s = &m->acts[l];
    const moe_layer_ptrs *p = &m->lp[l];
    moe_layer_ptrs *g = &m->lg[l];
    zero(m->dattn_y, (size_t)N * m->C);
    moe_linear_backward(m->dattn_y, g->attn_out, m->dres, s->attn_y, p->attn_out, N, m->NH * m->HD, m->C);
    zero(m->dqkv_r, (size_t)N * m->QKV);
    moe_attention_backward(m->dqkv_r, m->att_scratch, m->dattn_y, s->att, s->qkv, m->B, m->T, m->NH,
                           m->NKV, m->HD);
    zero(m->dqkv, (size_t)N * m->QKV);
    moe_rope_backward(m->dqkv, m->dqkv_r, m->rope_cos, m->rope_sin, m->B, m->T, m->NH, m->NKV, m->HD);
    zero(m->dh, (size_t)N * m->C);
    moe_linear_backward(m->dh, g->qkv, m->dqkv, s->h1, p->qkv, N, m->C, m->QKV);
    moe_rmsnorm_backward(m->dres, g->attn_norm, m->dh, s->x_in, p->attn_norm, s->rstd1, N, m->C);
}

/* ------------------------------------------------------------------------- */
/* MoE FFN: ffn_out = sum_k w_k expert_k(h2) + shared(h2)                    */

/* Adds this layer's routing to the trace counters: pairs per expert, and each
** token's (previous MoE layer's expert, this layer's expert) pairs. */
static void trace_routing(moe_model *m, int l, int N)
{
    const moe_layer_acts *s = &m->acts[l];
    int E = m->E, K = m->K, li = m->moe_index[l];
    for (int e = 0; e < E; e++)
        m->trace_load[(size_t)li * E + e] += s->counts[e];
    if (m->prev_moe_layer >= 0) {
        const int32_t *prev = m->acts[m->prev_moe_layer].topk_idx;
        double *t = m->trace_trans + (size_t)(li - 1) * E * E;
        for (int n = 0; n < N; n++)
            for (int a = 0; a < K; a++)
                for (int b = 0; b < K; b++)
                    t[(size_t)prev[n * K + a] * E + s->topk_idx[n * K + b]] += 1;
    }
    m->prev_moe_layer = l;
}

static int capacity_of(const moe_model *m, int N)
{
    double cf = m->cfg.moe_expert_capacity_factor;
    return cf > 0 ? (int)ceil(cf * (double)N * m->K / m->E) : 0;
}

static moe_status moe_forward(moe_model *m, int l, int N, moe_fwd_stats *st)
{
    moe_layer_acts *s = &m->acts[l];
    const moe_layer_ptrs *p = &m->lp[l];
    const moe_config *c = &m->cfg;
    int E = m->E, K = m->K, C = m->C, li = m->moe_index[l];
    const float *bias = c->moe_router_enable_expert_bias ? m->expert_bias + (size_t)li * E : NULL;

    moe_linear_forward(s->logits, s->h2, p->router, N, C, E);
    moe_router_forward(s->scores, s->topk_idx, s->topk_w, s->logits, bias, N, E, K,
                       (moe_score_fn)c->moe_router_score_function, c->moe_router_norm_topk);
    zero(s->counts, (size_t)E);
    moe_router_counts(s->counts, s->topk_idx, N, E, K);
    st->aux_loss += moe_router_aux_loss_forward(s->scores, s->counts, N, E, K, N,
                                                (moe_score_fn)c->moe_router_score_function);
    st->z_loss += moe_router_z_loss_forward(s->logits, N, E);

    /* plan in slot order: rows come out grouped by the rank that owns their expert */
    const int32_t *plan_idx = s->topk_idx;
    if (m->par.ep) {
        for (int i = 0; i < N * K; i++)
            m->topk_slot[i] = moe_expert_slot(&m->par.maps[li], s->topk_idx[i]);
        plan_idx = m->topk_slot;
    }
    s->rows = moe_route_plan(s->kept, s->offsets, s->slot_row, s->row_token, s->row_slot,
                             plan_idx, s->topk_w, N, E, K, capacity_of(m, N),
                             (moe_drop_policy)c->moe_token_drop_policy,
                             c->moe_pad_expert_input_to_capacity);
    if (s->rows < 0)
        return moe_fail(MOE_ERR_INTERNAL, "layer %d: route plan refused the router's output", l);
    if (m->par.ep) { /* the dispatcher gathers each peer's rows as it sends them */
        MOE_TRY(moe_ep_forward(&m->ep_layers[li], m->par.ep, &m->par.maps[li], s->h2, s->row_token, s->xs, s->offsets,
                               s->rows, C, m->F, p->w13, p->w2, s->ys));
    } else {
        moe_permute_forward(s->xs, s->h2, s->row_token, s->rows, C);
        moe_experts_forward(s->ys, s->h13, s->act, s->xs, p->w13, p->w2, s->offsets, E, C, m->F);
    }
    moe_unpermute_forward(m->ffn_out, s->ys, s->topk_w, s->slot_row, N, K, C);
    if (m->Fs) {
        moe_linear_forward(s->sh13, s->h2, p->sw13, N, C, 2 * m->Fs);
        moe_swiglu_forward(s->sact, s->sh13, N, m->Fs);
        moe_linear_forward(m->tmp_nc, s->sact, p->sw2, N, m->Fs, C);
        add_into(m->ffn_out, m->ffn_out, m->tmp_nc, (size_t)N * C);
    }

    if (m->trace_on)
        trace_routing(m, l, N);
    double *load = m->load_counts + (size_t)li * E;
    long kept = 0;
    for (int e = 0; e < E; e++) {
        load[e] += s->counts[e];
        kept += s->kept[e];
    }
    m->load_pairs += (double)N * K;
    m->load_dropped += (double)N * K - (double)kept;
    return MOE_OK;
}

/* dres = d(layer output); accumulates d(h2) into m->dh. */
static moe_status moe_backward(moe_model *m, int l, int N, float aux_scale)
{
    moe_layer_acts *s = &m->acts[l];
    const moe_layer_ptrs *p = &m->lp[l];
    moe_layer_ptrs *g = &m->lg[l];
    const moe_config *c = &m->cfg;
    int E = m->E, K = m->K, C = m->C;
    moe_score_fn fn = (moe_score_fn)c->moe_router_score_function;

    moe_unpermute_backward(m->dys, m->dtopk_w, m->dres, s->ys, s->topk_w, s->slot_row, N, K, C, s->rows);
    if (m->par.ep)
        MOE_TRY(moe_ep_backward(&m->ep_layers[m->moe_index[l]], m->par.ep, &m->par.maps[m->moe_index[l]], m->dys, s->rows, C,
                                m->F, p->w13, p->w2, g->w13, g->w2, m->dxs));
    else
        moe_experts_backward(m->dxs, g->w13, g->w2, m->dh13, m->dact, m->dys, s->xs, s->h13, s->act,
                             p->w13, p->w2, s->offsets, E, C, m->F);
    moe_permute_backward(m->dh, m->dxs, s->slot_row, N, K, C);

    zero(m->drouter, (size_t)N * E);
    moe_router_backward(m->drouter, m->dtopk_w, s->scores, s->topk_idx, N, E, K, fn, c->moe_router_norm_topk);
    if (c->moe_aux_loss_coeff != 0)
        moe_router_aux_loss_backward(m->drouter, s->scores, s->counts, N, E, K, N, fn,
                                     (float)c->moe_aux_loss_coeff * aux_scale);
    if (c->moe_z_loss_coeff != 0)
        moe_router_z_loss_backward(m->drouter, s->logits, N, E, (float)c->moe_z_loss_coeff * aux_scale);
    moe_linear_backward(m->dh, g->router, m->drouter, s->h2, p->router, N, C, E);

    if (m->Fs) {
        zero(m->dsact, (size_t)N * m->Fs);
        moe_linear_backward(m->dsact, g->sw2, m->dres, s->sact, p->sw2, N, m->Fs, C);
        zero(m->dsh13, (size_t)N * 2 * m->Fs);
        moe_swiglu_backward(m->dsh13, m->dsact, s->sh13, N, m->Fs);
        moe_linear_backward(m->dh, g->sw13, m->dsh13, s->h2, p->sw13, N, C, 2 * m->Fs);
    }
    return MOE_OK;
}

/* ------------------------------------------------------------------------- */
/* dense FFN: ffn_out = mlp(h2)                                              */

static void mlp_forward(moe_model *m, int l, int N)
{
    moe_layer_acts *s = &m->acts[l];
    const moe_layer_ptrs *p = &m->lp[l];
    moe_linear_forward(s->mh13, s->h2, p->mlp_w13, N, m->C, 2 * m->Fd);
    moe_swiglu_forward(s->mact, s->mh13, N, m->Fd);
    moe_linear_forward(m->ffn_out, s->mact, p->mlp_w2, N, m->Fd, m->C);
}

static void mlp_backward(moe_model *m, int l, int N)
{
    moe_layer_acts *s = &m->acts[l];
    const moe_layer_ptrs *p = &m->lp[l];
    moe_layer_ptrs *g = &m->lg[l];
    zero(m->dsact, (size_t)N * m->Fd);
    moe_linear_backward(m->dsact, g->mlp_w2, m->dres, s->mact, p->mlp_w2, N, m->Fd, m->C);
    zero(m->dsh13, (size_t)N * 2 * m->Fd);
    moe_swiglu_backward(m->dsh13, m->dsact, s->mh13, N, m->Fd);
    moe_linear_backward(m->dh, g->mlp_w13, m->dsh13, s->h2, p->mlp_w13, N, m->C, 2 * m->Fd);
}

/* ------------------------------------------------------------------------- */
/* FFN block: out = x_mid + ffn(norm(x_mid))                                 */

static moe_status ffn_forward(moe_model *m, int l, int N, float *out, moe_fwd_stats *st)
{
    moe_layer_acts *s = &m->acts[l];
    moe_rmsnorm_forward(s->h2, s->rstd2, s->x_mid, m->lp[l].ffn_norm, N, m->C, (float)m->cfg.norm_epsilon);
    if (m->cfg.moe_layer_is_moe[l])
        MOE_TRY(moe_forward(m, l, N, st));
    else
        mlp_forward(m, l, N);
    add_into(out, s->x_mid, m->ffn_out, (size_t)N * m->C);
    return MOE_OK;
}

/* dres holds d(out) on entry and d(x_mid) on return. */
static moe_status ffn_backward(moe_model *m, int l, int N, float aux_scale)
{
    moe_layer_acts *s = &m->acts[l];
    zero(m->dh, (size_t)N * m->C);
    if (m->cfg.moe_layer_is_moe[l])
        MOE_TRY(moe_backward(m, l, N, aux_scale));
    else
        mlp_backward(m, l, N);
    moe_rmsnorm_backward(m->dres, m->lg[l].ffn_norm, m->dh, s->x_mid, m->lp[l].ffn_norm, s->rstd2, N, m->C);
    return MOE_OK;
}

/* ------------------------------------------------------------------------- */

moe_status moe_model_forward(moe_model *m, const int32_t *inputs, const int32_t *targets, int B,
                             moe_fwd_stats *st)
{
    if (B < 1 || B > m->maxB)
        return moe_fail(MOE_ERR_INTERNAL, "micro-batch of %d sequences, model built for 1..%d", B, m->maxB);
    int N = B * m->T;
    for (int i = 0; i < N; i++)
        if (inputs[i] < 0 || inputs[i] >= m->V || (targets && (targets[i] < 0 || targets[i] >= m->V)))
            return moe_fail(MOE_ERR_INPUT, "token %d at position %d is outside the vocabulary (%d)",
                            inputs[i], i, m->V);
    memset(st, 0, sizeof *st);
    m->B = B;
    m->prev_moe_layer = -1;
    m->tokens = inputs;

    moe_embedding_forward(m->acts[0].x_in, inputs, m->wte, N, m->C);
    for (int l = 0; l < m->L; l++) {
        float *out = l + 1 < m->L ? m->acts[l + 1].x_in : m->x_final;
        attn_forward(m, l, N);
        MOE_TRY(ffn_forward(m, l, N, out, st));
    }
    moe_rmsnorm_forward(m->hf, m->rstdf, m->x_final, m->final_norm, N, m->C, (float)m->cfg.norm_epsilon);
    moe_linear_forward(m->logits, m->hf, m->lm_head, N, m->C, m->V);
    if (targets) {
        memcpy(m->targets, targets, (size_t)N * sizeof *targets);
        st->lm_loss_sum = moe_crossentropy_forward(m->losses, m->probs, m->logits, targets, N, m->V);
        st->tokens = N;
    }
    return MOE_OK;
}

moe_status moe_model_backward(moe_model *m, float lm_scale, float aux_scale)
{
    int N = m->B * m->T;
    if (N == 0)
        return moe_fail(MOE_ERR_INTERNAL, "backward without a forward");
    zero(m->dlogits, (size_t)N * m->V);
    moe_crossentropy_backward(m->dlogits, m->probs, m->targets, N, m->V, lm_scale);
    zero(m->dlm, (size_t)N * m->C);
    moe_linear_backward(m->dlm, m->d_lm_head, m->dlogits, m->hf, m->lm_head, N, m->C, m->V);
    zero(m->dres, (size_t)N * m->C);
    moe_rmsnorm_backward(m->dres, m->d_final_norm, m->dlm, m->x_final, m->final_norm, m->rstdf, N, m->C);
    int tail = m->cfg.untie_embeddings_and_output_weights ? 2 : 1; /* final norm [, lm head] */
    if (m->sync_on)
        MOE_TRY(moe_model_sync_tensors(m, m->ntable - tail, tail));
    for (int l = m->L - 1; l >= 0; l--) {
        MOE_TRY(ffn_backward(m, l, N, aux_scale));
        attn_backward(m, l, N);
        if (m->sync_on)
            MOE_TRY(moe_model_sync_tensors(m, m->layer_first[l], m->layer_count[l]));
    }
    moe_embedding_backward(m->d_wte, m->dres, m->tokens, N, m->C);
    if (m->sync_on)
        MOE_TRY(moe_model_sync_tensors(m, 0, 1));
    return MOE_OK;
}
