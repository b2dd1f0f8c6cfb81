/*
** model_internal: the moe_model struct, shared by model.c (building, table,
** initialisation) and model_step.c (forward and backward). Not for other
** files: they use the accessors in model.h.
*/
#ifndef MOE_MODEL_INTERNAL_H
#define MOE_MODEL_INTERNAL_H

#include "runtime/model.h"

/* Pointers into the flat parameter (or gradient) buffer for one layer. */
typedef struct {
    float *attn_norm, *qkv, *attn_out, *ffn_norm;
    float *router, *w13, *w2, *sw13, *sw2; /* MoE layer */
    float *mlp_w13, *mlp_w2;                /* dense layer */
} moe_layer_ptrs;

/* Launches the gradient sum of table entries [first, first+count). */
moe_status moe_model_sync_tensors(moe_model *m, int first, int count);

/* Activations one layer saves for backward. Row counts (see struct moe_model):
** Nres residual rows, Ncp this rank's tokens (all of them, gathered), Ng the
** tokens the routed experts of this rank see. */
typedef struct {
    float *x_in;       /* (Nres, C) residual stream entering the layer */
    float *h1, *rstd1; /* attn_norm output gathered (Ncp, C); rstd (Nres) */
    float *qkv;        /* (Ncp, QKVl) after RoPE */
    float *att;        /* (B, NHl, Tl, Tl) softmax probabilities (CP = 1) */
    float *lse;        /* (B, NHl, Tl) log-sum-exp of each query's scores (CP > 1) */
    float *attn_y;     /* (Ncp, NHl * HD) attention output before the out projection */
    float *x_mid;      /* (Nres, C) residual stream after attention */
    float *h2, *rstd2; /* ffn_norm output (Nres, C), rstd (Nres) */
    float *h2full;     /* (Ncp, C) h2 gathered over tp (sequence parallel; else h2) */
    /* MoE, over the Ng tokens the router sees */
    float *hg;                       /* (Ng, C) router input (may alias h2 rows) */
    float *logits, *scores, *topk_w; /* (Ng, E), (Ng, E), (Ng, K) */
    int32_t *topk_idx;               /* (Ng, K) */
    float *counts;                   /* (E) routed pairs per expert of the micro-batch */
    int32_t *kept, *offsets, *slot_row, *row_token, *row_slot;
    float *xs, *h13, *act, *ys;      /* (R, C), (R, 2Fl), (R, Fl), (R, C) */
    float *sh13, *sact;              /* shared expert (Ncp, 2Fsl), (Ncp, Fsl) */
    int rows;                        /* R of this micro-batch */
    /* dense FFN */
    float *mh13, *mact;              /* (Ncp, 2Fdl), (Ncp, Fdl) */
} moe_layer_acts;

#define MOE_MAX_SYNC_REQS 1024
#define MOE_MAX_VPP 16 /* model chunks per pipeline stage */

/* Every layer of this stage, chunk by chunk. */
#define MOE_FOR_STAGE_LAYERS(m, l)                                             \
    for (int k_ = 0; k_ < (m)->nchunks; k_++)                                  \
        for (int l = (m)->cl0[k_]; l < (m)->cl1[k_]; l++)

/* What one micro-batch in flight keeps from its forward until its backward
** (pipeline parallelism keeps several; moe_model_set_slot picks one). */
typedef struct {
    moe_layer_acts *acts;    /* [L]; this stage's [l0, l1) are carved */
    moe_ep_layer *ep_layers; /* [n_moe] with ep */
    int32_t *tokens, *targets;
    float *x_final, *hf, *rstdf, *logits, *probs, *losses;
} moe_mb_state;

struct moe_model {
    moe_config cfg;
    moe_model_par par;  /* groups of size 1 are NULL */
    int E_local;        /* experts whose weights this rank holds */
    moe_ep_layer *ep_layers; /* per MoE layer, with ep */
    int32_t *topk_slot; /* (Ng, K) router choices in slot order (see parallel/ep.h) */
    int32_t *slot_work; /* moe_expert_map_slots scratch, for the largest map */
    int nslot;          /* the route plan's slots: E, or ep x E_local with expert
                           parallelism (each copy of a replicated expert has one) */
    int *layer_first, *layer_count; /* table entries of each layer */

    int trace_on;           /* count routing for a trace (see model.h) */
    double *trace_load;     /* (n_moe, E) */
    double *trace_trans;    /* (n_moe - 1, E, E) */
    int prev_moe_layer;     /* during forward: the last MoE layer run, -1 before the first */

    int sync_on;        /* sum gradients over dp groups during the next backward */
    moe_request *sync_reqs[MOE_MAX_SYNC_REQS];
    int nsync;
    int L, C, NH, NKV, HD, QKV, V, E, K, F, Fs, Fd, T, maxB;
    /* parallel sizes and this rank's coordinates */
    int TPn, tp_rank, CPn, cp_rank, ETPn, etp_rank, sp;
    /* pipeline: this stage holds `nchunks` model chunks (virtual stages
    ** k*P + pp_rank), chunk k layers [cl0[k], cl1[k]); [l0, l1) is the
    ** current chunk's (moe_model_set_chunk). has_emb / has_head: the table
    ** holds the embedding (stage 0) / final norm and LM head (last stage);
    ** first_stage / last_stage: the current chunk embeds / computes the loss */
    int PPn, pp_rank, nchunks, chunk, l0, l1, first_stage, last_stage, has_emb, has_head;
    int cl0[MOE_MAX_VPP], cl1[MOE_MAX_VPP];
    int nslots, slot;     /* micro-batch states, the current one */
    moe_mb_state *mb;     /* [nslots] */
    int head_first;       /* table entries [head_first, ntable) follow the layers */
    int emb_copy;         /* table entry of the last stage's copy of a tied embedding, -1 if none */
    int canonical_dense;  /* dp_cp rank 0: its non-expert tensors are the ones that count */
    int canonical_expert; /* edp rank 0 */
    /* this rank's share of the dimensions */
    int NHl, NKVl, QKVl, Fl, Fsl, Fdl, v0, Vl, Tl;
    /* rows of the current micro-batch: Ncp = B * Tl tokens of this rank,
    ** Nres = residual rows (Ncp / TP with sequence parallelism), Nown = the
    ** tokens this rank routes (Ncp / TP), Ng = Nown * ETP the router sees */
    int Ncp, Nres, Nown, Ng;
    int capacity_rows; /* R_max of one micro-batch */
    int n_moe;         /* MoE layers */

    moe_param_info *table;
    int ntable;
    size_t nparams;
    float *params, *grads;
    moe_layer_ptrs *lp, *lg; /* per layer, into params / grads */
    float *wte, *final_norm, *lm_head;
    float *d_wte, *d_final_norm, *d_lm_head;

    float *expert_bias;   /* (n_moe, E), state not trained by gradients */
    double *load_counts;  /* (n_moe, E) routed pairs since moe_model_take_load */
    double load_dropped, load_pairs;
    int *moe_index;       /* layer -> index among MoE layers, -1 for dense */

    /* activations of the last forward */
    moe_arena arena;
    int B;
    int32_t *tokens, *targets; /* (Ncp) this rank's tokens of the micro-batch */
    int32_t *pos;              /* (Tl) their positions in the sequence */
    moe_layer_acts *acts;
    float *x_final, *hf, *rstdf, *logits, *probs, *losses; /* (Nres,C), (Ncp,C), (Nres), (Ncp,Vl) x2, (Ncp) */
    float *rope_cos, *rope_sin; /* (Tl, HD/2) at this rank's positions */

    /* backward scratch, reused by every layer */
    float *dres, *dh, *dqkv, *dqkv_r, *dattn_y, *att_scratch, *dlogits, *dlm;
    float *drouter, *dtopk_w, *dxs, *dys, *dh13, *dact, *dsh13, *dsact, *dmh13, *dmact;
    float *ffn_out, *tmp_nc, *gbuf; /* (Nres, C), (max(Ncp, Ng), C), (max(Ncp, Ng), C) */
    float *ce_stat; /* (3 Ncp) vocab-parallel cross-entropy: max, sum, target logit */
    /* ring attention (CP > 1) */
    float *kv[2], *dkv[2];    /* (B, Tl, 2 NKVl, HD) travelling K/V blocks and their gradients */
    float *ring_mx, *ring_l, *ring_acc, *ring_D;
};

/* ---- collectives over tp / etp that degrade to copies at size 1 ---------- */

/* out (rows*size, C) = every rank's in (rows, C), in rank order. */
moe_status moe_mp_allgather(moe_comm *g, const float *in, float *out, size_t rows, size_t C);
/* out (rows, C) = this rank's block of the sum of every rank's in (rows*size, C). */
moe_status moe_mp_reduce_scatter(moe_comm *g, const float *in, float *out, size_t rows, size_t C);
/* buf (rows, C) summed over g in place. */
moe_status moe_mp_allreduce(moe_comm *g, float *buf, size_t rows, size_t C);

/* A (Ncp, C) tensor partial over tp (a row-parallel output, or the gradient
** of a column-parallel input) summed into the residual form: reduce-scatter
** into out (Nres rows; out != partial) with sequence parallelism, else
** all-reduce (copied into out first when it differs). */
moe_status moe_tp_out(moe_model *m, const float *partial, float *out);
/* The residual form (Nres, C) gathered to all of this rank's tokens (Ncp, C)
** (a copy without sequence parallelism, unless out == in). */
moe_status moe_tp_in(moe_model *m, const float *in, float *out);

/* ---- the parts of a step (model_step.c drives them) ---------------------- */
moe_status moe_attn_forward(moe_model *m, int l);
/* dres holds d(x_mid) on entry and d(x_in) on return. */
moe_status moe_attn_backward(moe_model *m, int l);
/* out (Nres, C) = x_mid + ffn(norm(x_mid)). */
moe_status moe_ffn_forward(moe_model *m, int l, float *out, moe_fwd_stats *st);
/* dres holds d(out) on entry and d(x_mid) on return. */
moe_status moe_ffn_backward(moe_model *m, int l, float aux_scale);

#endif
