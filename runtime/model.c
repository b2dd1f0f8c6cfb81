#include "runtime/model.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "layers/rope.h"
#include "layers/router.h"
#include "runtime/base/rng.h"
#include "runtime/model_internal.h"

/* ------------------------------------------------------------------------- */
/* parameter table                                                           */

/* Length of piece `part` of `parts` of a block of len. */
static int64_t piece_len(int64_t len, int parts, int part)
{
    return len * (part + 1) / parts - len * part / parts;
}

static moe_param_cut whole(void) { return (moe_param_cut){.split_dim = -1, .nblocks = 1, .parts = 1}; }

static moe_param_cut cut_of(int dim, int parts, int part, int nblocks, int64_t b0, int64_t b1, int64_t b2)
{
    return (moe_param_cut){.split_dim = dim, .nblocks = nblocks, .parts = parts, .part = part, .blocks = {b0, b1, b2}};
}

/* Appends a tensor of full shape `full` (cut by c) to the table, or, with
** table == NULL, only counts it. */
static void add_param(moe_model *m, const char *name, int ndim, const int64_t *full, int decay, int is_expert,
                      moe_grad_kind grad, moe_param_cut c)
{
    int64_t shape[4];
    memcpy(shape, full, (size_t)ndim * sizeof *shape);
    if (c.split_dim >= 0) {
        shape[c.split_dim] = 0;
        for (int b = 0; b < c.nblocks; b++)
            shape[c.split_dim] += piece_len(c.blocks[b], c.parts, c.part);
    }
    size_t numel = 1;
    for (int i = 0; i < ndim; i++)
        numel *= (size_t)shape[i];
    if (m->table) {
        moe_param_info *p = &m->table[m->ntable];
        snprintf(p->name, sizeof p->name, "%s", name);
        p->ndim = ndim;
        memcpy(p->shape, shape, (size_t)ndim * sizeof *shape);
        memcpy(c.full_shape, full, (size_t)ndim * sizeof *full);
        p->offset = m->nparams;
        p->numel = numel;
        p->canonical_numel = numel;
        p->decay = decay;
        p->is_expert = is_expert;
        p->grad = grad;
        p->cut = c;
        int replicated_over_tp = !is_expert && c.split_dim < 0;
        p->pp_copy = m->ntable == m->emb_copy;
        p->canonical = !p->pp_copy &&
                       (is_expert ? m->canonical_expert : m->canonical_dense && (!replicated_over_tp || m->tp_rank == 0));
    }
    m->ntable++;
    /* keep every tensor 64-byte aligned inside the flat buffer */
    m->nparams += (numel + 15) / 16 * 16;
}

#define SHAPE(...) ((const int64_t[]){__VA_ARGS__})

/* The last n table entries are layer l's expert tensors: only their
** canonical copies' rows, the first n_canonical (parallel/ep.h), count. */
static void expert_canonical_rows(moe_model *m, int l, int n)
{
    if (!m->table || !m->par.ep)
        return;
    const moe_expert_map *map = &m->par.maps[m->moe_index[l]];
    for (int i = m->ntable - n; i < m->ntable; i++)
        m->table[i].canonical_numel = m->table[i].numel / (size_t)map->E_local * (size_t)map->n_canonical;
}

static void build_table(moe_model *m)
{
    char n[MOE_PARAM_NAME_MAX];
    int tp = m->TPn, r = m->tp_rank;
    moe_grad_kind norm_grad = m->sp && tp > 1 ? MOE_GRAD_TP_DP : MOE_GRAD_DP;
    moe_param_cut vocab = cut_of(0, tp, r, 1, m->V, 0, 0);
    int tied = !m->cfg.untie_embeddings_and_output_weights;
    m->ntable = 0;
    m->nparams = 0;
    m->emb_copy = -1;
    if (m->has_emb)
        add_param(m, "embedding.weight", 2, SHAPE(m->V, m->C), 1, 0, MOE_GRAD_DP, vocab);
    MOE_FOR_STAGE_LAYERS(m, l) {
        if (m->layer_first)
            m->layer_first[l] = m->ntable;
#define P(suffix, nd, shape, decay, expert, grad, cut)                         \
    snprintf(n, sizeof n, "layers.%d.%s", l, suffix);                          \
    add_param(m, n, nd, shape, decay, expert, grad, cut)
        int64_t q = (int64_t)m->NH * m->HD, kv = (int64_t)m->NKV * m->HD;
        P("attn_norm.weight", 1, SHAPE(m->C), 0, 0, norm_grad, whole());
        P("attn.qkv.weight", 2, SHAPE(m->QKV, m->C), 1, 0, MOE_GRAD_DP, cut_of(0, tp, r, 3, q, kv, kv));
        P("attn.out.weight", 2, SHAPE(m->C, q), 1, 0, MOE_GRAD_DP, cut_of(1, tp, r, 1, q, 0, 0));
        P("ffn_norm.weight", 1, SHAPE(m->C), 0, 0, norm_grad, whole());
        if (m->cfg.moe_layer_is_moe[l]) {
            moe_param_cut c13 = cut_of(1, m->ETPn, m->etp_rank, 2, m->F, m->F, 0);
            moe_param_cut c2 = cut_of(2, m->ETPn, m->etp_rank, 1, m->F, 0, 0);
            P("moe.router.weight", 2, SHAPE(m->E, m->C), 1, 0, MOE_GRAD_TP_DP, whole());
            P("moe.experts.w13", 3, SHAPE(m->E_local, 2 * m->F, m->C), 1, 1, MOE_GRAD_EXPERT, c13);
            P("moe.experts.w2", 3, SHAPE(m->E_local, m->C, m->F), 1, 1, MOE_GRAD_EXPERT, c2);
            expert_canonical_rows(m, l, 2);
            if (m->Fs) {
                P("moe.shared.w13", 2, SHAPE(2 * m->Fs, m->C), 1, 0, MOE_GRAD_DP, cut_of(0, tp, r, 2, m->Fs, m->Fs, 0));
                P("moe.shared.w2", 2, SHAPE(m->C, m->Fs), 1, 0, MOE_GRAD_DP, cut_of(1, tp, r, 1, m->Fs, 0, 0));
            }
        } else {
            P("mlp.w13", 2, SHAPE(2 * m->Fd, m->C), 1, 0, MOE_GRAD_DP, cut_of(0, tp, r, 2, m->Fd, m->Fd, 0));
            P("mlp.w2", 2, SHAPE(m->C, m->Fd), 1, 0, MOE_GRAD_DP, cut_of(1, tp, r, 1, m->Fd, 0, 0));
        }
#undef P
        if (m->layer_count)
            m->layer_count[l] = m->ntable - m->layer_first[l];
    }
    m->head_first = m->ntable;
    if (!m->has_head)
        return;
    add_param(m, "final_norm.weight", 1, SHAPE(m->C), 0, 0, norm_grad, whole());
    if (!tied)
        add_param(m, "lm_head.weight", 2, SHAPE(m->V, m->C), 1, 0, MOE_GRAD_DP, vocab);
    else if (!m->has_emb) { /* the tied embedding's copy */
        m->emb_copy = m->ntable;
        add_param(m, "embedding.weight", 2, SHAPE(m->V, m->C), 1, 0, MOE_GRAD_DP, vocab);
    }
}

/* Points a layer's pointer set at the tensors of `base` (params or grads),
** walking the table in the order build_table wrote it. */
static void point_tensors(moe_model *m, float *base, moe_layer_ptrs *lp, float **wte,
                          float **final_norm, float **lm_head)
{
    const moe_param_info *t = m->table;
    int i = 0;
    *wte = *final_norm = *lm_head = NULL;
    if (m->has_emb)
        *wte = base + t[i++].offset;
    MOE_FOR_STAGE_LAYERS(m, l) {
        moe_layer_ptrs *p = &lp[l];
        memset(p, 0, sizeof *p);
        p->attn_norm = base + t[i++].offset;
        p->qkv = base + t[i++].offset;
        p->attn_out = base + t[i++].offset;
        p->ffn_norm = base + t[i++].offset;
        if (m->cfg.moe_layer_is_moe[l]) {
            p->router = base + t[i++].offset;
            p->w13 = base + t[i++].offset;
            p->w2 = base + t[i++].offset;
            if (m->Fs) {
                p->sw13 = base + t[i++].offset;
                p->sw2 = base + t[i++].offset;
            }
        } else {
            p->mlp_w13 = base + t[i++].offset;
            p->mlp_w2 = base + t[i++].offset;
        }
    }
    if (!m->has_head)
        return;
    *final_norm = base + t[i++].offset;
    *lm_head = i < m->ntable ? base + t[i++].offset : *wte; /* untied, or the tied copy */
}

/* ------------------------------------------------------------------------- */
/* activations: one arena, sized by a measuring pass over the same code      */

#define F32(ptr, count) MOE_TRY(moe_arena_floats(a, (count), &(ptr), #ptr))
#define I32(ptr, count) MOE_TRY(moe_arena_bytes(a, (count) * sizeof(int32_t), (void **)&(ptr), #ptr))

/* What one micro-batch in flight keeps (moe_mb_state). */
static moe_status carve_slot(moe_model *m, moe_arena *a, moe_mb_state *mb)
{
    size_t Ncp = (size_t)m->maxB * m->Tl, Nres = m->sp ? Ncp / m->TPn : Ncp;
    size_t Ng = Ncp / m->TPn * m->ETPn;
    size_t C = m->C, R = (size_t)m->capacity_rows, E = m->E, K = m->K;
    size_t QKVl = m->QKVl, Ya = (size_t)m->NHl * m->HD, heads = (size_t)m->maxB * m->NHl * m->Tl;
    int ring = m->CPn > 1;
    MOE_FOR_STAGE_LAYERS(m, l) {
        moe_layer_acts *s = &mb->acts[l];
        F32(s->x_in, Nres * C);
        F32(s->h1, Ncp * C);
        F32(s->rstd1, Nres);
        F32(s->qkv, Ncp * QKVl);
        if (ring)
            F32(s->lse, heads);
        else
            F32(s->att, heads * m->Tl);
        F32(s->attn_y, Ncp * Ya);
        F32(s->x_mid, Nres * C);
        F32(s->h2, Nres * C);
        F32(s->rstd2, Nres);
        if (m->sp && m->TPn > 1)
            F32(s->h2full, Ncp * C);
        if (m->cfg.moe_layer_is_moe[l]) {
            if (m->ETPn > 1) /* else the router reads h2's own rows */
                F32(s->hg, Ng * C);
            F32(s->logits, Ng * E);
            F32(s->scores, Ng * E);
            F32(s->topk_w, Ng * K);
            I32(s->topk_idx, Ng * K);
            F32(s->counts, E);
            I32(s->kept, m->nslot);
            I32(s->offsets, m->nslot + 1);
            I32(s->slot_row, Ng * K);
            I32(s->row_token, R);
            I32(s->row_slot, R);
            F32(s->xs, R * C);
            F32(s->ys, R * C);
            if (!m->par.ep) { /* with EP the expert side lives in moe_ep_layer */
                F32(s->h13, R * 2 * m->Fl);
                F32(s->act, R * m->Fl);
            }
            if (m->Fs) {
                F32(s->sh13, Ncp * 2 * m->Fsl);
                F32(s->sact, Ncp * m->Fsl);
            }
        } else {
            F32(s->mh13, Ncp * 2 * m->Fdl);
            F32(s->mact, Ncp * m->Fdl);
        }
    }
    F32(mb->x_final, Nres * C);
    I32(mb->tokens, Ncp);
    if (m->has_head) {
        F32(mb->hf, Ncp * C);
        F32(mb->rstdf, Nres);
        F32(mb->logits, Ncp * m->Vl);
        F32(mb->probs, Ncp * m->Vl);
        F32(mb->losses, Ncp);
        I32(mb->targets, Ncp);
    }
    return MOE_OK;
}

static moe_status carve_acts(moe_model *m, moe_arena *a)
{
    size_t Ncp = (size_t)m->maxB * m->Tl, Nres = m->sp ? Ncp / m->TPn : Ncp;
    size_t Ng = Ncp / m->TPn * m->ETPn, Nmax = Ng > Ncp ? Ng : Ncp;
    size_t C = m->C, R = (size_t)m->capacity_rows, E = m->E, K = m->K;
    size_t QKVl = m->QKVl, Ya = (size_t)m->NHl * m->HD, heads = (size_t)m->maxB * m->NHl * m->Tl;
    int ring = m->CPn > 1;
    for (int k = 0; k < m->nslots; k++)
        MOE_TRY(carve_slot(m, a, &m->mb[k]));
    F32(m->ce_stat, 3 * Ncp);
    I32(m->pos, (size_t)m->Tl);
    F32(m->rope_cos, (size_t)m->Tl * m->HD / 2);
    F32(m->rope_sin, (size_t)m->Tl * m->HD / 2);

    size_t Fmax = (size_t)(m->Fl > m->Fdl ? m->Fl : m->Fdl);
    if ((size_t)m->Fsl > Fmax)
        Fmax = (size_t)m->Fsl;
    F32(m->dres, Nres * C);
    F32(m->dh, Nmax * C);
    F32(m->dqkv, Ncp * QKVl);
    F32(m->dqkv_r, Ncp * QKVl);
    F32(m->dattn_y, Ncp * Ya);
    if (!ring)
        F32(m->att_scratch, heads * m->Tl);
    F32(m->dlogits, Ncp * m->Vl);
    F32(m->dlm, Ncp * C);
    F32(m->drouter, Ng * E);
    F32(m->dtopk_w, Ng * K);
    F32(m->dxs, R * C);
    F32(m->dys, R * C);
    I32(m->topk_slot, Ng * K);
    size_t work = 0;
    for (int i = 0; m->par.ep && i < m->n_moe; i++)
        if (moe_expert_map_work(&m->par.maps[i]) > work)
            work = moe_expert_map_work(&m->par.maps[i]);
    if (work)
        I32(m->slot_work, work);
    if (!m->par.ep) {
        F32(m->dh13, R * 2 * m->Fl);
        F32(m->dact, R * m->Fl);
    }
    F32(m->dsh13, Ncp * 2 * Fmax);
    F32(m->dsact, Ncp * Fmax);
    F32(m->ffn_out, Nres * C);
    F32(m->tmp_nc, Nmax * C);
    F32(m->gbuf, Nmax * C);
    if (ring) {
        size_t kv = (size_t)m->maxB * m->Tl * 2 * m->NKVl * m->HD;
        for (int i = 0; i < 2; i++) {
            F32(m->kv[i], kv);
            F32(m->dkv[i], kv);
        }
        F32(m->ring_mx, heads);
        F32(m->ring_l, heads);
        F32(m->ring_D, heads);
        F32(m->ring_acc, Ncp * Ya);
    }
    return MOE_OK;
}
#undef F32
#undef I32

/* ------------------------------------------------------------------------- */

static moe_comm *real_group(moe_comm *c) { return c && moe_comm_size(c) > 1 ? c : NULL; }
static int group_size(moe_comm *c) { return c ? moe_comm_size(c) : 1; }
static int group_rank(moe_comm *c) { return c ? moe_comm_rank(c) : 0; }

/* The model's dimensions, the parallel sizes and this rank's share of each. */
static moe_status set_dims(moe_model *m, int max_batch)
{
    const moe_config *c = &m->cfg;
    moe_model_par *p = &m->par;
    moe_comm **groups[] = {&p->ep, &p->dp_cp, &p->edp, &p->tp, &p->cp, &p->etp, &p->tp_cp, &p->tp_dp_cp};
    for (size_t i = 0; i < sizeof groups / sizeof *groups; i++)
        *groups[i] = real_group(*groups[i]);
    if (p->ep && (!p->maps || p->maps[0].E != c->num_experts))
        return moe_fail(MOE_ERR_INTERNAL, "expert parallelism without a matching expert map");
    m->L = c->num_layers;
    m->C = c->hidden_size;
    m->NH = c->num_attention_heads;
    m->NKV = c->num_query_groups;
    m->HD = m->C / m->NH;
    m->QKV = (m->NH + 2 * m->NKV) * m->HD;
    m->V = c->vocab_size;
    m->E = c->num_experts;
    m->K = c->moe_router_topk;
    m->F = c->moe_ffn_hidden_size;
    m->Fs = c->moe_shared_expert_intermediate_size;
    m->Fd = c->ffn_hidden_size;
    m->T = c->seq_length;
    m->maxB = max_batch;
    m->E_local = p->ep ? p->maps[0].E_local : m->E;
    m->nslot = p->ep ? p->maps[0].ep_size * m->E_local : m->E;

    m->TPn = group_size(p->tp), m->tp_rank = group_rank(p->tp);
    m->CPn = group_size(p->cp), m->cp_rank = group_rank(p->cp);
    m->ETPn = group_size(p->etp), m->etp_rank = group_rank(p->etp);
    m->sp = p->sequence_parallel && m->TPn > 1;
    m->canonical_dense = group_rank(p->dp_cp) == 0;
    m->canonical_expert = group_rank(p->edp) == 0;
    int tp = m->TPn;
    if (m->NH % tp || m->NKV % tp || m->Fd % tp || m->Fs % tp)
        return moe_fail(MOE_ERR_USAGE, "tensor-parallel size %d must divide num-attention-heads (%d), "
                        "num-query-groups (%d), ffn-hidden-size (%d) and moe-shared-expert-intermediate-size (%d)",
                        tp, m->NH, m->NKV, m->Fd, m->Fs);
    if (m->F % m->ETPn)
        return moe_fail(MOE_ERR_USAGE, "expert-tensor-parallel size %d must divide moe-ffn-hidden-size (%d)",
                        m->ETPn, m->F);
    if (m->CPn > 1 && m->T % (2 * m->CPn))
        return moe_fail(MOE_ERR_USAGE, "seq-length (%d) must be divisible by 2 x context-parallel size (%d)",
                        m->T, 2 * m->CPn);
    m->Tl = m->T / m->CPn;
    if ((max_batch * m->Tl) % tp)
        return moe_fail(MOE_ERR_USAGE, "tokens per micro-batch and context-parallel rank (%d x %d) must be "
                        "divisible by the tensor-parallel size (%d)", max_batch, m->Tl, tp);
    m->NHl = m->NH / tp;
    m->NKVl = m->NKV / tp;
    m->QKVl = (m->NHl + 2 * m->NKVl) * m->HD;
    m->Fl = m->F / m->ETPn;
    m->Fsl = m->Fs / tp;
    m->Fdl = m->Fd / tp;
    m->PPn = p->pp_size > 1 ? p->pp_size : 1;
    m->pp_rank = m->PPn > 1 ? p->pp_rank : 0;
    if (m->L < m->PPn || m->pp_rank < 0 || m->pp_rank >= m->PPn)
        return moe_fail(MOE_ERR_USAGE, "num-layers (%d) is fewer than the pipeline-parallel size (%d)", m->L, m->PPn);
    m->nchunks = p->vpp > 1 ? p->vpp : 1;
    if (m->nchunks == 1) { /* even, or the first / last stage's layers given */
        int first, count;
        moe_pipeline_stage_layers(c, m->pp_rank, m->PPn, &first, &count);
        m->cl0[0] = first;
        m->cl1[0] = first + count;
    } else {
        int per = m->L / (m->PPn * m->nchunks);
        if (m->nchunks > MOE_MAX_VPP || per * m->PPn * m->nchunks != m->L)
            return moe_fail(MOE_ERR_USAGE, "num-layers (%d) must be divisible by pipeline-parallel size x virtual "
                            "stages per rank (%d x %d, at most %d virtual stages)", m->L, m->PPn, m->nchunks,
                            MOE_MAX_VPP);
        for (int k = 0; k < m->nchunks; k++) { /* virtual stage k*P + s, as Megatron numbers them */
            m->cl0[k] = (k * m->PPn + m->pp_rank) * per;
            m->cl1[k] = m->cl0[k] + per;
        }
    }
    m->has_emb = m->pp_rank == 0;
    m->has_head = m->pp_rank == m->PPn - 1;
    m->nslots = p->slots > 1 ? p->slots : 1;
    m->v0 = (int)((int64_t)m->V * m->tp_rank / tp);
    m->Vl = (int)((int64_t)m->V * (m->tp_rank + 1) / tp) - m->v0;
    return MOE_OK;
}

/* This rank's token positions (chunks r and 2CP-1-r of each sequence, for
** causal balance) and the RoPE table rows at them. */
static moe_status rope_at_positions(moe_model *m)
{
    int half = m->HD / 2, chunk = m->T / (2 * m->CPn), r = m->cp_rank;
    for (int i = 0; i < m->Tl; i++)
        m->pos[i] = m->CPn == 1 ? i : i < chunk ? r * chunk + i : (2 * m->CPn - 1 - r) * chunk + (i - chunk);
    float *cs = NULL;
    MOE_TRY(moe_alloc((void **)&cs, sizeof(float) * 2 * (size_t)m->T * half, "RoPE table"));
    moe_rope_table(cs, cs + (size_t)m->T * half, m->T, m->HD, m->cfg.rotary_base);
    for (int i = 0; i < m->Tl; i++) {
        memcpy(m->rope_cos + (size_t)i * half, cs + (size_t)m->pos[i] * half, sizeof(float) * half);
        memcpy(m->rope_sin + (size_t)i * half, cs + (size_t)(m->T + m->pos[i]) * half, sizeof(float) * half);
    }
    moe_free(cs);
    return MOE_OK;
}

static moe_status check_supported(const moe_config *c)
{
    if (c->vocab_size <= 0)
        return moe_fail(MOE_ERR_USAGE, "vocab-size is %d: set it, or let the trainer take it from the data",
                        c->vocab_size);
    return moe_config_check_build(c);
}

moe_status moe_model_create(moe_model **out, const moe_config *cfg, int max_batch)
{
    return moe_model_create_parallel(out, cfg, max_batch, NULL);
}

moe_status moe_model_create_parallel(moe_model **out, const moe_config *cfg, int max_batch,
                                     const moe_model_par *par)
{
    MOE_TRY(check_supported(cfg));
    moe_model *m = NULL;
    moe_status st = MOE_OK;
    MOE_TRY(moe_alloc((void **)&m, sizeof *m, "model"));
    m->cfg = *cfg;
    if (par)
        m->par = *par;
    MOE_TRY_GOTO(moe_config_validate(&m->cfg), st, fail);
    MOE_TRY_GOTO(set_dims(m, max_batch), st, fail);
    const moe_config *c = &m->cfg;

    size_t pairs = (size_t)max_batch * m->Tl / m->TPn * m->ETPn * m->K;
    size_t rows = pairs;
    if (c->moe_expert_capacity_factor > 0 && c->moe_pad_expert_input_to_capacity) {
        size_t cap = (size_t)ceil(c->moe_expert_capacity_factor * (double)pairs / m->E);
        if (cap * m->E > rows)
            rows = cap * m->E;
    }
    if (rows > (size_t)0x7fffffff)
        MOE_TRY_GOTO(moe_fail(MOE_ERR_USAGE, "micro-batch too large: %zu expert rows", rows), st, fail);
    m->capacity_rows = (int)rows;

    MOE_TRY_GOTO(moe_alloc((void **)&m->moe_index, sizeof(int) * m->L, "layer index"), st, fail);
    for (int l = 0; l < m->L; l++)
        m->moe_index[l] = c->moe_layer_is_moe[l] ? m->n_moe++ : -1;
    for (int i = 0; m->par.ep && i < m->n_moe; i++) /* one expert tensor shape serves every layer */
        if (m->par.maps[i].E != m->E || m->par.maps[i].E_local != m->E_local)
            MOE_TRY_GOTO(moe_fail(MOE_ERR_INTERNAL, "expert map of MoE layer %d does not match the model", i), st,
                         fail);

    MOE_TRY_GOTO(moe_alloc((void **)&m->layer_first, sizeof(int) * m->L, "layer table"), st, fail);
    MOE_TRY_GOTO(moe_alloc((void **)&m->layer_count, sizeof(int) * m->L, "layer table"), st, fail);
    MOE_TRY_GOTO(moe_alloc((void **)&m->mb, sizeof *m->mb * (size_t)m->nslots, "micro-batch states"), st, fail);
    for (int k = 0; k < m->nslots; k++) {
        MOE_TRY_GOTO(moe_alloc((void **)&m->mb[k].acts, sizeof *m->acts * (size_t)m->L, "activation table"), st,
                     fail);
        if (m->par.ep && m->n_moe)
            MOE_TRY_GOTO(moe_alloc((void **)&m->mb[k].ep_layers, sizeof *m->ep_layers * (size_t)m->n_moe,
                                   "ep layers"), st, fail);
        for (int i = 0; m->mb[k].ep_layers && i < m->n_moe; i++)
            m->mb[k].ep_layers[i].overlap = c->moe_overlap;
    }
    build_table(m); /* counting pass */
    int count = m->ntable;
    MOE_TRY_GOTO(moe_alloc((void **)&m->table, sizeof *m->table * (size_t)count, "parameter table"), st, fail);
    build_table(m);
    MOE_TRY_GOTO(moe_alloc((void **)&m->params, m->nparams * sizeof(float), "parameters"), st, fail);
    MOE_TRY_GOTO(moe_alloc((void **)&m->grads, m->nparams * sizeof(float), "gradients"), st, fail);
    MOE_TRY_GOTO(moe_alloc((void **)&m->lp, sizeof *m->lp * (size_t)m->L, "layer pointers"), st, fail);
    MOE_TRY_GOTO(moe_alloc((void **)&m->lg, sizeof *m->lg * (size_t)m->L, "layer pointers"), st, fail);
    point_tensors(m, m->params, m->lp, &m->wte, &m->final_norm, &m->lm_head);
    point_tensors(m, m->grads, m->lg, &m->d_wte, &m->d_final_norm, &m->d_lm_head);

    size_t nstate = (size_t)m->n_moe * m->E;
    MOE_TRY_GOTO(moe_alloc((void **)&m->expert_bias, nstate * sizeof(float), "expert bias"), st, fail);
    MOE_TRY_GOTO(moe_alloc((void **)&m->load_counts, nstate * sizeof(double), "load counts"), st, fail);

    moe_arena_init_measure(&m->arena);
    MOE_TRY_GOTO(carve_acts(m, &m->arena), st, fail);
    MOE_TRY_GOTO(moe_arena_init(&m->arena, m->arena.peak), st, fail);
    MOE_TRY_GOTO(carve_acts(m, &m->arena), st, fail);
    MOE_TRY_GOTO(rope_at_positions(m), st, fail);
    MOE_TRY_GOTO(moe_model_set_slot(m, 0), st, fail);
    MOE_TRY_GOTO(moe_model_set_chunk(m, 0), st, fail);
    *out = m;
    return MOE_OK;
fail:
    moe_model_free(m);
    return st;
}

void moe_model_free(moe_model *m)
{
    if (!m)
        return;
    moe_arena_free(&m->arena);
    for (int k = 0; m->mb && k < m->nslots; k++) {
        for (int i = 0; m->mb[k].ep_layers && i < m->n_moe; i++)
            moe_ep_layer_free(&m->mb[k].ep_layers[i]);
        moe_free(m->mb[k].ep_layers);
        moe_free(m->mb[k].acts);
    }
    moe_free(m->mb);
    moe_free(m->layer_first);
    moe_free(m->layer_count);
    moe_free(m->trace_load);
    moe_free(m->trace_trans);
    moe_free(m->expert_bias);
    moe_free(m->load_counts);
    moe_free(m->lp);
    moe_free(m->lg);
    moe_free(m->params);
    moe_free(m->grads);
    moe_free(m->table);
    moe_free(m->moe_index);
    moe_free(m);
}

static int is_output_projection(const char *name)
{
    const char *dot = strrchr(name, '.');
    return strstr(name, "attn.out.") || (dot && strcmp(dot, ".w2") == 0);
}

/* FNV-1a: a stable name -> stream id, so streams do not depend on table order. */
static uint64_t name_hash(const char *s)
{
    uint64_t h = 1469598103934665603ULL;
    for (; *s; s++)
        h = (h ^ (unsigned char)*s) * 1099511628211ULL;
    return h;
}

static void fill_normal(float *w, size_t n, uint64_t stream, double std)
{
    moe_rng rng;
    moe_rng_seed(&rng, stream);
    for (size_t j = 0; j < n; j++)
        w[j] = (float)(std * moe_rng_normal(&rng));
}

/* The map of the MoE layer that table entry i belongs to (NULL: all experts local). */
static const moe_expert_map *entry_map(const moe_model *m, int i)
{
    if (!m->par.ep)
        return NULL;
    MOE_FOR_STAGE_LAYERS(m, l)
        if (i >= m->layer_first[l] && i < m->layer_first[l] + m->layer_count[l] && m->moe_index[l] >= 0)
            return &m->par.maps[m->moe_index[l]];
    return NULL;
}

size_t moe_param_full_numel(const moe_param_info *p)
{
    size_t n = 1;
    for (int i = 0; i < p->ndim; i++)
        n *= (size_t)p->cut.full_shape[i];
    return n;
}

size_t moe_param_piece_numel(const moe_param_info *p, int part)
{
    const moe_param_cut *c = &p->cut;
    size_t full = moe_param_full_numel(p);
    if (c->split_dim < 0)
        return full;
    int64_t D = c->full_shape[c->split_dim], Dl = 0;
    for (int b = 0; b < c->nblocks; b++)
        Dl += piece_len(c->blocks[b], c->parts, part);
    return D ? full / (size_t)D * (size_t)Dl : 0;
}

/* Walks the pieces of a cut: for each outer index and block, `len` rows of
** `inner` floats at full offset `f` and local offset `l`. */
static void cut_copy(const moe_param_info *p, int part, const float *src, float *dst, int to_local)
{
    const moe_param_cut *c = &p->cut;
    if (c->split_dim < 0) {
        size_t n = moe_param_full_numel(p);
        memcpy(dst, src, n * sizeof(float));
        return;
    }
    size_t outer = 1, inner = 1, D = (size_t)c->full_shape[c->split_dim], Dl = 0;
    for (int i = 0; i < c->split_dim; i++)
        outer *= (size_t)c->full_shape[i];
    for (int i = c->split_dim + 1; i < p->ndim; i++)
        inner *= (size_t)c->full_shape[i];
    for (int b = 0; b < c->nblocks; b++)
        Dl += (size_t)piece_len(c->blocks[b], c->parts, part);
    for (size_t o = 0; o < outer; o++) {
        size_t f = o * D, l = o * Dl;
        for (int b = 0; b < c->nblocks; b++) {
            size_t start = (size_t)(c->blocks[b] * part / c->parts), len = (size_t)piece_len(c->blocks[b], c->parts, part);
            const float *from = to_local ? src + (f + start) * inner : src + l * inner;
            float *to = to_local ? dst + l * inner : dst + (f + start) * inner;
            memcpy(to, from, len * inner * sizeof(float));
            f += (size_t)c->blocks[b];
            l += len;
        }
    }
}

void moe_param_cut_extract(const moe_param_info *p, int part, const float *full, float *local)
{
    cut_copy(p, part, full, local, 1);
}

void moe_param_cut_insert(const moe_param_info *p, int part, const float *local, float *full)
{
    cut_copy(p, part, local, full, 0);
}

/* The full tensor's values (each expert of an expert tensor from its own
** stream), so every cut of it gets the single-rank model's values. */
static void init_full(const moe_model *m, int i, uint64_t seed, float *w)
{
    const moe_param_info *p = &m->table[i];
    size_t n = moe_param_full_numel(p);
    if (p->ndim == 1) {
        for (size_t j = 0; j < n; j++)
            w[j] = 1.0f;
        return;
    }
    double std = m->cfg.init_method_std;
    double s = is_output_projection(p->name) ? std / sqrt(2.0 * m->L) : std; /* GPT-2 / Megatron scaled init */
    uint64_t stream = seed ^ name_hash(p->name);
    if (!p->is_expert) {
        fill_normal(w, n, stream, s);
        return;
    }
    size_t per = n / (size_t)p->cut.full_shape[0];
    const moe_expert_map *map = entry_map(m, i);
    for (int l = 0; l < (int)p->cut.full_shape[0]; l++) {
        int e = map ? map->local_experts[l] : l;
        fill_normal(w + (size_t)l * per, per, stream + 0x9e3779b97f4a7c15ULL * (uint64_t)(e + 1), s);
    }
}

moe_status moe_model_init(moe_model *m, uint64_t seed)
{
    size_t most = 0;
    for (int i = 0; i < m->ntable; i++)
        if (m->table[i].cut.split_dim >= 0 && moe_param_full_numel(&m->table[i]) > most)
            most = moe_param_full_numel(&m->table[i]);
    float *full = NULL;
    if (most)
        MOE_TRY(moe_alloc((void **)&full, most * sizeof(float), "initialisation scratch"));
    for (int i = 0; i < m->ntable; i++) {
        const moe_param_info *p = &m->table[i];
        if (p->cut.split_dim < 0) {
            init_full(m, i, seed, m->params + p->offset);
            continue;
        }
        init_full(m, i, seed, full);
        moe_param_cut_extract(p, p->cut.part, full, m->params + p->offset);
    }
    moe_free(full);
    memset(m->expert_bias, 0, sizeof(float) * (size_t)m->n_moe * m->E);
    memset(m->load_counts, 0, sizeof(double) * (size_t)m->n_moe * m->E);
    m->load_dropped = m->load_pairs = 0;
    return MOE_OK;
}

void moe_model_zero_grad(moe_model *m) { memset(m->grads, 0, m->nparams * sizeof(float)); }

void moe_model_update_expert_bias(moe_model *m)
{
    if (!m->cfg.moe_router_enable_expert_bias)
        return;
    float counts[m->E];
    for (int i = 0; i < m->n_moe; i++) {
        for (int e = 0; e < m->E; e++)
            counts[e] = (float)m->load_counts[(size_t)i * m->E + e];
        moe_router_bias_update(m->expert_bias + (size_t)i * m->E, counts, m->E,
                               (float)m->cfg.moe_router_bias_update_rate);
    }
}

void moe_model_take_load(moe_model *m, double *imbalance, double *dropped_frac)
{
    double sum_ratio = 0;
    for (int i = 0; i < m->n_moe; i++) {
        const double *c = m->load_counts + (size_t)i * m->E;
        double total = 0, mx = 0;
        for (int e = 0; e < m->E; e++) {
            total += c[e];
            mx = c[e] > mx ? c[e] : mx;
        }
        sum_ratio += total > 0 ? mx / (total / m->E) : 1.0;
    }
    *imbalance = m->n_moe ? sum_ratio / m->n_moe : 1.0;
    *dropped_frac = m->load_pairs > 0 ? m->load_dropped / m->load_pairs : 0.0;
    memset(m->load_counts, 0, sizeof(double) * (size_t)m->n_moe * m->E);
    m->load_dropped = m->load_pairs = 0;
}

const moe_param_info *moe_model_params(const moe_model *m, int *count)
{
    *count = m->ntable;
    return m->table;
}
float *moe_model_param_data(moe_model *m) { return m->params; }
float *moe_model_grad_data(moe_model *m) { return m->grads; }
size_t moe_model_num_params(const moe_model *m) { return m->nparams; }
const moe_config *moe_model_config(const moe_model *m) { return &m->cfg; }

float *moe_model_state_data(moe_model *m, size_t *count)
{
    *count = (size_t)m->n_moe * m->E;
    return m->expert_bias;
}

int moe_model_num_moe_layers(const moe_model *m) { return m->n_moe; }

moe_status moe_model_set_trace(moe_model *m, int on)
{
    if (on && !m->trace_load) {
        size_t E = (size_t)m->E, pairs = m->n_moe > 1 ? (size_t)(m->n_moe - 1) * E * E : 1;
        MOE_TRY(moe_alloc((void **)&m->trace_load, sizeof(double) * (size_t)m->n_moe * E + 1, "trace counts"));
        MOE_TRY(moe_alloc((void **)&m->trace_trans, sizeof(double) * pairs, "trace transitions"));
    }
    m->trace_on = on;
    return MOE_OK;
}

void moe_model_take_trace(moe_model *m, double *load, double *transitions)
{
    size_t E = (size_t)m->E, nl = (size_t)m->n_moe * E, nt = m->n_moe > 1 ? (size_t)(m->n_moe - 1) * E * E : 0;
    if (!m->trace_load) {
        if (load)
            memset(load, 0, nl * sizeof(double));
        if (transitions)
            memset(transitions, 0, nt * sizeof(double));
        return;
    }
    if (load)
        memcpy(load, m->trace_load, nl * sizeof(double));
    if (transitions && nt)
        memcpy(transitions, m->trace_trans, nt * sizeof(double));
    memset(m->trace_load, 0, nl * sizeof(double));
    if (nt)
        memset(m->trace_trans, 0, nt * sizeof(double));
}

moe_status moe_model_set_slot(moe_model *m, int slot)
{
    if (slot < 0 || slot >= m->nslots)
        return moe_fail(MOE_ERR_INTERNAL, "micro-batch slot %d of %d", slot, m->nslots);
    const moe_mb_state *b = &m->mb[slot];
    m->slot = slot;
    m->acts = b->acts;
    m->ep_layers = b->ep_layers;
    m->tokens = b->tokens;
    m->targets = b->targets;
    m->x_final = b->x_final;
    m->hf = b->hf;
    m->rstdf = b->rstdf;
    m->logits = b->logits;
    m->probs = b->probs;
    m->losses = b->losses;
    return MOE_OK;
}

moe_status moe_model_set_chunk(moe_model *m, int chunk)
{
    if (chunk < 0 || chunk >= m->nchunks)
        return moe_fail(MOE_ERR_INTERNAL, "model chunk %d of %d", chunk, m->nchunks);
    m->chunk = chunk;
    m->l0 = m->cl0[chunk];
    m->l1 = m->cl1[chunk];
    m->first_stage = m->has_emb && chunk == 0;
    m->last_stage = m->has_head && chunk == m->nchunks - 1;
    return MOE_OK;
}

int moe_model_chunks(const moe_model *m) { return m->nchunks; }

float *moe_model_pp_input(moe_model *m) { return m->acts[m->l0].x_in; }
const float *moe_model_pp_output(moe_model *m) { return m->x_final; }
float *moe_model_pp_grad(moe_model *m) { return m->dres; }

size_t moe_model_pp_numel(const moe_model *m, int B)
{
    size_t ncp = (size_t)B * m->Tl;
    return (m->sp ? ncp / m->TPn : ncp) * m->C;
}

float *moe_model_emb_grad(moe_model *m, size_t *n)
{
    int i = m->emb_copy >= 0 ? m->emb_copy : (m->PPn > 1 && m->has_emb && !m->cfg.untie_embeddings_and_output_weights ? 0 : -1);
    *n = i >= 0 ? m->table[i].numel : 0;
    return i >= 0 ? m->grads + m->table[i].offset : NULL;
}
