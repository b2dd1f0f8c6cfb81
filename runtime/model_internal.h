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

/* Activations one layer saves for backward (N = B*T tokens). */
typedef struct {
    float *x_in;       /* (N, C) residual stream entering the layer */
    float *h1, *rstd1; /* attn_norm output (N, C), (N) */
    float *qkv;        /* (N, QKV) after RoPE */
    float *att;        /* (B, NH, T, T) softmax probabilities */
    float *attn_y;     /* (N, C) attention output before the out projection */
    float *x_mid;      /* (N, C) residual stream after attention */
    float *h2, *rstd2; /* ffn_norm output, rstd */
    /* MoE */
    float *logits, *scores, *topk_w; /* (N, E), (N, E), (N, K) */
    int32_t *topk_idx;               /* (N, K) */
    float *counts;                   /* (E) routed pairs per expert, this micro-batch */
    int32_t *kept, *offsets, *slot_row, *row_token, *row_slot;
    float *xs, *h13, *act, *ys;      /* (R, C), (R, 2F), (R, F), (R, C) */
    float *sh13, *sact;              /* shared expert (N, 2Fs), (N, Fs) */
    int rows;                        /* R of this micro-batch */
    /* dense FFN */
    float *mh13, *mact;              /* (N, 2Fd), (N, Fd) */
} moe_layer_acts;

#define MOE_MAX_SYNC_REQS 1024

struct moe_model {
    moe_config cfg;
    moe_model_par par;  /* ep NULL when all experts are local */
    int E_local;        /* experts whose weights this rank holds */
    moe_ep_layer *ep_layers; /* per MoE layer, with ep */
    int32_t *topk_slot; /* (N, K) router choices in slot order (see parallel/ep.h) */
    int *layer_first, *layer_count; /* table entries of each layer */

    int trace_on;           /* count routing for a trace (see model.h) */
    double *trace_load;     /* (n_moe, E) */
    double *trace_trans;    /* (n_moe - 1, E, E) */
    int prev_moe_layer;     /* during forward: the last MoE layer run, -1 before the first */

    int sync_on;        /* sum gradients over dp groups during the next backward */
    moe_request *sync_reqs[MOE_MAX_SYNC_REQS];
    int nsync;
    int L, C, NH, NKV, HD, QKV, V, E, K, F, Fs, Fd, T, maxB;
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
    const int32_t *tokens;
    int32_t *targets;
    moe_layer_acts *acts;
    float *x_final, *hf, *rstdf, *logits, *probs, *losses;
    float *rope_cos, *rope_sin;

    /* backward scratch, reused by every layer */
    float *dres, *dh, *dqkv, *dqkv_r, *dattn_y, *att_scratch, *dlogits, *dlm;
    float *drouter, *dtopk_w, *dxs, *dys, *dh13, *dact, *dsh13, *dsact, *dmh13, *dmact;
    float *ffn_out, *tmp_nc;
};

#endif
