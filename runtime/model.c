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

/* Appends a tensor to the table (or, with table == NULL, only counts it). */
static void add_param(moe_model *m, const char *name, int ndim, const int64_t *shape, int decay,
                      int is_expert)
{
    size_t numel = 1;
    for (int i = 0; i < ndim; i++)
        numel *= (size_t)shape[i];
    if (m->table) {
        moe_param_info *p = &m->table[m->ntable];
        snprintf(p->name, sizeof p->name, "%s", name);
        p->ndim = ndim;
        memcpy(p->shape, shape, (size_t)ndim * sizeof *shape);
        p->offset = m->nparams;
        p->numel = numel;
        p->decay = decay;
        p->is_expert = is_expert;
    }
    m->ntable++;
    /* keep every tensor 64-byte aligned inside the flat buffer */
    m->nparams += (numel + 15) / 16 * 16;
}

#define SHAPE(...) ((const int64_t[]){__VA_ARGS__})

static void build_table(moe_model *m)
{
    char n[MOE_PARAM_NAME_MAX];
    m->ntable = 0;
    m->nparams = 0;
    add_param(m, "embedding.weight", 2, SHAPE(m->V, m->C), 1, 0);
    for (int l = 0; l < m->L; l++) {
        if (m->layer_first)
            m->layer_first[l] = m->ntable;
#define P(suffix, nd, shape, decay, expert)                                    \
    snprintf(n, sizeof n, "layers.%d.%s", l, suffix);                          \
    add_param(m, n, nd, shape, decay, expert)
        P("attn_norm.weight", 1, SHAPE(m->C), 0, 0);
        P("attn.qkv.weight", 2, SHAPE(m->QKV, m->C), 1, 0);
        P("attn.out.weight", 2, SHAPE(m->C, m->NH * m->HD), 1, 0);
        P("ffn_norm.weight", 1, SHAPE(m->C), 0, 0);
        if (m->cfg.moe_layer_is_moe[l]) {
            P("moe.router.weight", 2, SHAPE(m->E, m->C), 1, 0);
            P("moe.experts.w13", 3, SHAPE(m->E_local, 2 * m->F, m->C), 1, 1);
            P("moe.experts.w2", 3, SHAPE(m->E_local, m->C, m->F), 1, 1);
            if (m->Fs) {
                P("moe.shared.w13", 2, SHAPE(2 * m->Fs, m->C), 1, 0);
                P("moe.shared.w2", 2, SHAPE(m->C, m->Fs), 1, 0);
            }
        } else {
            P("mlp.w13", 2, SHAPE(2 * m->Fd, m->C), 1, 0);
            P("mlp.w2", 2, SHAPE(m->C, m->Fd), 1, 0);
        }
#undef P
        if (m->layer_count)
            m->layer_count[l] = m->ntable - m->layer_first[l];
    }
    add_param(m, "final_norm.weight", 1, SHAPE(m->C), 0, 0);
    if (m->cfg.untie_embeddings_and_output_weights)
        add_param(m, "lm_head.weight", 2, SHAPE(m->V, m->C), 1, 0);
}

/* Points a layer's pointer set at the tensors of `base` (params or grads),
** walking the table in the order build_table wrote it. */
static void point_tensors(moe_model *m, float *base, moe_layer_ptrs *lp, float **wte,
                          float **final_norm, float **lm_head)
{
    const moe_param_info *t = m->table;
    int i = 0;
    *wte = base + t[i++].offset;
    for (int l = 0; l < m->L; l++) {
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
    *final_norm = base + t[i++].offset;
    *lm_head = m->cfg.untie_embeddings_and_output_weights ? base + t[i++].offset : *wte;
}

/* ------------------------------------------------------------------------- */
/* activations: one arena, sized by a measuring pass over the same code      */

static moe_status carve_acts(moe_model *m, moe_arena *a)
{
    size_t N = (size_t)m->maxB * m->T, C = m->C, R = (size_t)m->capacity_rows;
    size_t E = m->E, K = m->K;
#define F32(ptr, count) MOE_TRY(moe_arena_floats(a, (count), &(ptr), #ptr))
#define I32(ptr, count) MOE_TRY(moe_arena_bytes(a, (count) * sizeof(int32_t), (void **)&(ptr), #ptr))
    for (int l = 0; l < m->L; l++) {
        moe_layer_acts *s = &m->acts[l];
        F32(s->x_in, N * C);
        F32(s->h1, N * C);
        F32(s->rstd1, N);
        F32(s->qkv, N * m->QKV);
        F32(s->att, (size_t)m->maxB * m->NH * m->T * m->T);
        F32(s->attn_y, N * C);
        F32(s->x_mid, N * C);
        F32(s->h2, N * C);
        F32(s->rstd2, N);
        if (m->cfg.moe_layer_is_moe[l]) {
            F32(s->logits, N * E);
            F32(s->scores, N * E);
            F32(s->topk_w, N * K);
            I32(s->topk_idx, N * K);
            F32(s->counts, E);
            I32(s->kept, E);
            I32(s->offsets, E + 1);
            I32(s->slot_row, N * K);
            I32(s->row_token, R);
            I32(s->row_slot, R);
            F32(s->xs, R * C);
            F32(s->ys, R * C);
            if (!m->par.ep) { /* with EP the expert side lives in moe_ep_layer */
                F32(s->h13, R * 2 * m->F);
                F32(s->act, R * m->F);
            }
            if (m->Fs) {
                F32(s->sh13, N * 2 * m->Fs);
                F32(s->sact, N * m->Fs);
            }
        } else {
            F32(s->mh13, N * 2 * m->Fd);
            F32(s->mact, N * m->Fd);
        }
    }
    F32(m->x_final, N * C);
    F32(m->hf, N * C);
    F32(m->rstdf, N);
    F32(m->logits, N * m->V);
    F32(m->probs, N * m->V);
    F32(m->losses, N);
    I32(m->targets, N);
    F32(m->rope_cos, (size_t)m->T * m->HD / 2);
    F32(m->rope_sin, (size_t)m->T * m->HD / 2);

    size_t Fmax = (size_t)(m->F > m->Fd ? m->F : m->Fd);
    if ((size_t)m->Fs > Fmax)
        Fmax = (size_t)m->Fs;
    F32(m->dres, N * C);
    F32(m->dh, N * C);
    F32(m->dqkv, N * m->QKV);
    F32(m->dqkv_r, N * m->QKV);
    F32(m->dattn_y, N * C);
    F32(m->att_scratch, (size_t)m->maxB * m->NH * m->T * m->T);
    F32(m->dlogits, N * m->V);
    F32(m->dlm, N * C);
    F32(m->drouter, N * E);
    F32(m->dtopk_w, N * K);
    F32(m->dxs, R * C);
    F32(m->dys, R * C);
    I32(m->topk_slot, N * K);
    if (!m->par.ep) {
        F32(m->dh13, R * 2 * m->F);
        F32(m->dact, R * m->F);
    }
    F32(m->dsh13, N * 2 * Fmax);
    F32(m->dsact, N * Fmax);
    F32(m->ffn_out, N * C);
    F32(m->tmp_nc, N * C);
#undef F32
#undef I32
    return MOE_OK;
}

/* ------------------------------------------------------------------------- */

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
    if (m->par.ep && moe_comm_size(m->par.ep) == 1)
        m->par.ep = NULL;
    if (m->par.ep && (!m->par.maps || m->par.maps[0].E != cfg->num_experts))
        MOE_TRY_GOTO(moe_fail(MOE_ERR_INTERNAL, "expert parallelism without a matching expert map"), st, fail);
    MOE_TRY_GOTO(moe_config_validate(&m->cfg), st, fail);
    const moe_config *c = &m->cfg;
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
    m->E_local = m->par.ep ? m->par.maps[0].E_local : m->E;

    size_t pairs = (size_t)max_batch * m->T * m->K;
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
    if (m->par.ep)
        MOE_TRY_GOTO(moe_alloc((void **)&m->ep_layers, sizeof *m->ep_layers * (size_t)m->n_moe, "ep layers"),
                     st, fail);
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

    MOE_TRY_GOTO(moe_alloc((void **)&m->acts, sizeof *m->acts * (size_t)m->L, "activation table"), st, fail);
    moe_arena_init_measure(&m->arena);
    MOE_TRY_GOTO(carve_acts(m, &m->arena), st, fail);
    MOE_TRY_GOTO(moe_arena_init(&m->arena, m->arena.peak), st, fail);
    MOE_TRY_GOTO(carve_acts(m, &m->arena), st, fail);
    moe_rope_table(m->rope_cos, m->rope_sin, m->T, m->HD, c->rotary_base);
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
    for (int i = 0; m->ep_layers && i < m->n_moe; i++)
        moe_ep_layer_free(&m->ep_layers[i]);
    moe_free(m->ep_layers);
    moe_free(m->layer_first);
    moe_free(m->layer_count);
    moe_free(m->trace_load);
    moe_free(m->trace_trans);
    moe_free(m->acts);
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
    for (int l = 0; l < m->L; l++)
        if (i >= m->layer_first[l] && i < m->layer_first[l] + m->layer_count[l] && m->moe_index[l] >= 0)
            return &m->par.maps[m->moe_index[l]];
    return NULL;
}

void moe_model_init(moe_model *m, uint64_t seed)
{
    double std = m->cfg.init_method_std;
    double out_std = std / sqrt(2.0 * m->L); /* GPT-2 / Megatron scaled init of residual outputs */
    for (int i = 0; i < m->ntable; i++) {
        const moe_param_info *p = &m->table[i];
        float *w = m->params + p->offset;
        if (p->ndim == 1) {
            for (size_t j = 0; j < p->numel; j++)
                w[j] = 1.0f;
            continue;
        }
        double s = is_output_projection(p->name) ? out_std : std;
        uint64_t stream = seed ^ name_hash(p->name);
        if (!p->is_expert) {
            fill_normal(w, p->numel, stream, s);
            continue;
        }
        size_t per = p->numel / (size_t)p->shape[0];
        const moe_expert_map *map = entry_map(m, i);
        for (int l = 0; l < (int)p->shape[0]; l++) {
            int e = map ? map->local_experts[l] : l;
            fill_normal(w + (size_t)l * per, per, stream + 0x9e3779b97f4a7c15ULL * (uint64_t)(e + 1), s);
        }
    }
    memset(m->expert_bias, 0, sizeof(float) * (size_t)m->n_moe * m->E);
    memset(m->load_counts, 0, sizeof(double) * (size_t)m->n_moe * m->E);
    m->load_dropped = m->load_pairs = 0;
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
