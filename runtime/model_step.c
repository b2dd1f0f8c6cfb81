/*
** model_step: forward and backward of one micro-batch through the model:
** this rank's tokens (its context-parallel chunks), the vocabulary-parallel
** embedding, the layers (model_attn.c, model_ffn.c), and the
** vocabulary-parallel LM head and cross-entropy.
** Buffers and layouts are in model_internal.h; the math is in model.h.
*/
#include <math.h>
#include <string.h>

#include "layers/crossentropy.h"
#include "layers/embedding.h"
#include "layers/linear.h"
#include "layers/rmsnorm.h"
#include "runtime/model_internal.h"

static void zero(float *p, size_t n) { memset(p, 0, n * sizeof *p); }

/* Row counts of a micro-batch of B sequences (see struct moe_model). */
static moe_status set_rows(moe_model *m, int B)
{
    if (B < 1 || B > m->maxB)
        return moe_fail(MOE_ERR_INTERNAL, "micro-batch of %d sequences, model built for 1..%d", B, m->maxB);
    if ((B * m->Tl) % m->TPn)
        return moe_fail(MOE_ERR_USAGE, "a micro-batch of %d sequences has %d tokens per context-parallel rank, "
                        "not divisible by the tensor-parallel size %d", B, B * m->Tl, m->TPn);
    m->B = B;
    m->Ncp = B * m->Tl;
    m->Nown = m->Ncp / m->TPn;
    m->Nres = m->sp ? m->Nown : m->Ncp;
    m->Ng = m->Nown * m->ETPn;
    return MOE_OK;
}

/* This rank's tokens of whole sequences (B, T): its positions of each. */
static void take_positions(const moe_model *m, const int32_t *all, int32_t *mine)
{
    for (int b = 0; b < m->B; b++)
        for (int i = 0; i < m->Tl; i++)
            mine[b * m->Tl + i] = all[(size_t)b * m->T + m->pos[i]];
}

static moe_status embed_forward(moe_model *m)
{
    float *x0 = m->acts[0].x_in;
    if (m->TPn == 1) {
        moe_embedding_forward(x0, m->tokens, m->wte, m->Ncp, m->C);
        return MOE_OK;
    }
    moe_embedding_range_forward(m->tmp_nc, m->tokens, m->wte, m->Ncp, m->C, m->v0, m->Vl);
    return moe_tp_out(m, m->tmp_nc, x0);
}

static moe_status embed_backward(moe_model *m)
{
    if (m->TPn == 1) {
        moe_embedding_backward(m->d_wte, m->dres, m->tokens, m->Ncp, m->C);
        return MOE_OK;
    }
    const float *d = m->dres;
    if (m->sp) {
        MOE_TRY(moe_tp_in(m, m->dres, m->gbuf));
        d = m->gbuf;
    }
    moe_embedding_range_backward(m->d_wte, d, m->tokens, m->Ncp, m->C, m->v0, m->Vl);
    return MOE_OK;
}

/* logits (Ncp, Vl) of every token of this rank; returns the loss sum in *lm. */
static moe_status head_forward(moe_model *m, int with_loss, double *lm)
{
    float *hf_loc = m->sp ? m->gbuf : m->hf;
    moe_rmsnorm_forward(hf_loc, m->rstdf, m->x_final, m->final_norm, m->Nres, m->C, (float)m->cfg.norm_epsilon);
    MOE_TRY(moe_tp_in(m, hf_loc, m->hf));
    int N = m->Ncp;
    moe_linear_forward(m->logits, m->hf, m->lm_head, N, m->C, m->Vl);
    *lm = 0;
    if (!with_loss)
        return MOE_OK;
    if (m->TPn == 1) {
        *lm = moe_crossentropy_forward(m->losses, m->probs, m->logits, m->targets, N, m->V);
        return MOE_OK;
    }
    float *mx = m->ce_stat, *sum = m->ce_stat + N, *tl = m->ce_stat + 2 * N;
    moe_crossentropy_vp_max(mx, m->logits, N, m->Vl);
    MOE_TRY(moe_allreduce(m->par.tp, mx, (size_t)N, MOE_DT_F32, MOE_OP_MAX));
    moe_crossentropy_vp_exp(m->probs, sum, tl, m->logits, mx, m->targets, N, m->Vl, m->v0);
    MOE_TRY(moe_allreduce(m->par.tp, sum, 2 * (size_t)N, MOE_DT_F32, MOE_OP_SUM));
    *lm = moe_crossentropy_vp_finish(m->losses, m->probs, sum, tl, N, m->Vl);
    return MOE_OK;
}

/* dres = d(x_final) from the loss. */
static moe_status head_backward(moe_model *m, float lm_scale)
{
    int N = m->Ncp, C = m->C;
    zero(m->dlogits, (size_t)N * m->Vl);
    if (m->TPn == 1)
        moe_crossentropy_backward(m->dlogits, m->probs, m->targets, N, m->V, lm_scale);
    else
        moe_crossentropy_vp_backward(m->dlogits, m->probs, m->targets, N, m->Vl, m->v0, lm_scale);
    zero(m->dlm, (size_t)N * C);
    moe_linear_backward(m->dlm, m->d_lm_head, m->dlogits, m->hf, m->lm_head, N, C, m->Vl);
    float *dhf = m->sp ? m->tmp_nc : m->dlm;
    MOE_TRY(moe_tp_out(m, m->dlm, dhf));
    zero(m->dres, (size_t)m->Nres * C);
    moe_rmsnorm_backward(m->dres, m->d_final_norm, dhf, m->x_final, m->final_norm, m->rstdf, m->Nres, C);
    return MOE_OK;
}

moe_status moe_model_forward(moe_model *m, const int32_t *inputs, const int32_t *targets, int B,
                             moe_fwd_stats *st)
{
    MOE_TRY(set_rows(m, B));
    int N = B * m->T;
    for (int i = 0; i < N; i++)
        if (inputs[i] < 0 || inputs[i] >= m->V || (targets && (targets[i] < 0 || targets[i] >= m->V)))
            return moe_fail(MOE_ERR_INPUT, "token %d at position %d is outside the vocabulary (%d)",
                            inputs[i], i, m->V);
    memset(st, 0, sizeof *st);
    m->prev_moe_layer = -1;
    take_positions(m, inputs, m->tokens);
    int with_loss = targets && m->last_stage;
    if (with_loss)
        take_positions(m, targets, m->targets);

    if (m->first_stage)
        MOE_TRY(embed_forward(m));
    for (int l = m->l0; l < m->l1; l++) {
        float *out = l + 1 < m->l1 ? m->acts[l + 1].x_in : m->x_final;
        MOE_TRY(moe_attn_forward(m, l));
        MOE_TRY(moe_ffn_forward(m, l, out, st));
    }
    if (!m->last_stage)
        return MOE_OK;
    double lm;
    MOE_TRY(head_forward(m, with_loss, &lm));
    if (with_loss && m->tp_rank == 0) {
        st->lm_loss_sum = lm;
        st->tokens = m->Ncp;
    }
    return MOE_OK;
}

moe_status moe_model_backward(moe_model *m, float lm_scale, float aux_scale)
{
    if (m->B == 0)
        return moe_fail(MOE_ERR_INTERNAL, "backward without a forward");
    if (m->last_stage) /* else the caller put d(output) in dres */
        MOE_TRY(head_backward(m, lm_scale));
    if (m->sync_on && m->last_stage && m->ntable > m->head_first)
        MOE_TRY(moe_model_sync_tensors(m, m->head_first, m->ntable - m->head_first));
    for (int l = m->l1 - 1; l >= m->l0; l--) {
        MOE_TRY(moe_ffn_backward(m, l, aux_scale));
        MOE_TRY(moe_attn_backward(m, l));
        if (m->sync_on)
            MOE_TRY(moe_model_sync_tensors(m, m->layer_first[l], m->layer_count[l]));
    }
    if (!m->first_stage)
        return MOE_OK;
    MOE_TRY(embed_backward(m));
    if (m->sync_on)
        MOE_TRY(moe_model_sync_tensors(m, 0, 1));
    return MOE_OK;
}
