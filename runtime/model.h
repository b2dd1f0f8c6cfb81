/*
** model: the decoder-only MoE transformer of one rank, assembled from layers/.
**
** Parameters live in one contiguous float buffer described by a table of named
** tensors (moe_param_info); gradients mirror it exactly, and so do the AdamW
** moments. That one table drives the optimizer, grad-norm, checkpoints and,
** later, DP bucketing and resharding.
**
** Parameter names and layouts (row-major, the torch oracle uses the same):
**   embedding.weight                 [V, C]
**   layers.L.attn_norm.weight        [C]
**   layers.L.attn.qkv.weight         [(NH + 2*NKV) * HD, C]   q heads, k heads, v heads
**   layers.L.attn.out.weight         [C, NH * HD]
**   layers.L.ffn_norm.weight         [C]
**   MoE layer:
**   layers.L.moe.router.weight       [E, C]
**   layers.L.moe.experts.w13         [E, 2F, C]   gate rows then up rows (SwiGLU)
**   layers.L.moe.experts.w2          [E, C, F]
**   layers.L.moe.shared.w13          [2Fs, C]     only with a shared expert
**   layers.L.moe.shared.w2           [C, Fs]
**   dense layer:
**   layers.L.mlp.w13                 [2Fd, C]
**   layers.L.mlp.w2                  [C, Fd]
**   final_norm.weight                [C]
**   lm_head.weight                   [V, C]       only when untied
**
** Forward of one micro-batch (B sequences of T tokens, N = B*T):
**   x = embed(tokens)
**   per layer: x += attn_out(attention(rope(qkv(rmsnorm(x)))))
**              x += moe(rmsnorm(x)) or mlp(rmsnorm(x))
**   logits = lm_head(rmsnorm(x));  lm = sum of token cross-entropies
** moe(h) = sum_k w_k * expert_k(h) + shared(h), with the router's aux loss and
** z-loss per layer. The objective of one step over M micro-batches is
**   sum over micro-batches of [ lm / tokens_in_step
**                               + (aux_coeff * sum_l aux_l + z_coeff * sum_l z_l) / M ]
** moe_model_forward takes lm_scale = 1/tokens_in_step and aux_scale = 1/M and
** backward accumulates that objective's gradient into grads.
*/
#ifndef MOE_MODEL_H
#define MOE_MODEL_H

#include <stddef.h>
#include <stdint.h>

#include "comm/comm.h"
#include "parallel/ep.h"
#include "runtime/base/config.h"
#include "runtime/base/mem.h"
#include "runtime/base/status.h"

#define MOE_PARAM_NAME_MAX 64

typedef struct {
    char name[MOE_PARAM_NAME_MAX];
    int ndim;
    int64_t shape[4];
    size_t offset; /* in floats, into params / grads / moments */
    size_t numel;
    int decay;     /* weight decay applies (matrices yes, norms no) */
    int is_expert; /* routed-expert weight: reduces over EDP, sharded by EP */
} moe_param_info;

/* What one forward pass measured, summed over its tokens. */
typedef struct {
    double lm_loss_sum;   /* sum of token cross-entropies */
    double aux_loss;      /* sum over MoE layers of the aux loss (uncoefficiented) */
    double z_loss;        /* sum over MoE layers of the z-loss */
    long tokens;
} moe_fwd_stats;

typedef struct moe_model moe_model;

/*
** How this rank's model is cut and whom it talks to (borrowed, not owned).
** ep: the token all-to-all group, with maps[i] saying which experts of MoE
** layer i (i counts MoE layers only) are local: that layer's expert tensors
** then hold E_local experts, in maps[i].local_experts order. Every map has
** the same E and E_local; layers may place experts differently.
** dp_cp / edp: where non-expert / expert gradients are summed. Any may be
** NULL (or of size 1): that dimension is 1.
*/
typedef struct {
    moe_comm *ep;
    const moe_expert_map *maps; /* [MoE layers] */
    moe_comm *dp_cp;
    moe_comm *edp;
} moe_model_par;

/* Validates dims, builds the table, allocates params, grads and activations
** for micro-batches of up to max_batch sequences of cfg->seq_length tokens. */
moe_status moe_model_create(moe_model **out, const moe_config *cfg, int max_batch);
/* The same for one rank of a parallel layout (par may be NULL: one rank). */
moe_status moe_model_create_parallel(moe_model **out, const moe_config *cfg, int max_batch,
                                     const moe_model_par *par);
void moe_model_free(moe_model *m);

/* Deterministic initialisation from seed: N(0, std) matrices, output
** projections N(0, std / sqrt(2 * layers)), norms 1, expert bias 0. Each
** tensor (and each expert of an expert tensor) draws from its own stream,
** seeded by the seed and its name, so a rank holding a subset of the experts
** gets exactly the values the single-rank model has for them. */
void moe_model_init(moe_model *m, uint64_t seed);

/* Forward over B <= max_batch sequences; targets may be NULL (then no loss).
** Saves what backward needs. */
moe_status moe_model_forward(moe_model *m, const int32_t *inputs, const int32_t *targets, int B,
                             moe_fwd_stats *stats);
/* Backward of the last forward; accumulates into grads with the objective's
** scales (see above). */
moe_status moe_model_backward(moe_model *m, float lm_scale, float aux_scale);

/* With sync on, the next backward starts summing each layer's gradients over
** the data-parallel groups (dp_cp for non-expert, edp for expert tensors) as
** soon as that layer's backward is done, overlapping the rest of backward.
** moe_model_finish_grad_sync waits for all of it. Use it on the last
** micro-batch of a step. Without parallel groups both are no-ops. */
void moe_model_set_grad_sync(moe_model *m, int on);
moe_status moe_model_finish_grad_sync(moe_model *m);

void moe_model_zero_grad(moe_model *m);

/* After an optimizer step: moves the expert bias toward balance using the
** token counts seen since the last call, then clears the counts. */
void moe_model_update_expert_bias(moe_model *m);

/* Sums the routing counts since the last take_load over a group (the ranks
** whose tokens share one balance: tp x dp x cp). */
moe_status moe_model_reduce_load(moe_model *m, moe_comm *group);

/* Routing counts since the last moe_model_take_load: max/mean tokens per
** expert, averaged over MoE layers (1.0 = perfectly balanced), and the
** fraction of (token, slot) pairs dropped by capacity. Clears the counts. */
void moe_model_take_load(moe_model *m, double *imbalance, double *dropped_frac);

/*
** Routing traces (--trace-routing): while on, every forward adds each MoE
** layer's (token, slot) pairs per expert (before capacity drops), and for
** consecutive MoE layers every pair (expert of layer l, expert of layer l+1)
** of each token's choices, to counters kept in the model. take copies them
** out (load [n_moe][E], transitions [n_moe-1][E][E]; either may be NULL) and
** clears them.
*/
moe_status moe_model_set_trace(moe_model *m, int on);
void moe_model_take_trace(moe_model *m, double *load, double *transitions);
int moe_model_num_moe_layers(const moe_model *m);

/* The table and buffers. */
const moe_param_info *moe_model_params(const moe_model *m, int *count);
float *moe_model_param_data(moe_model *m);
float *moe_model_grad_data(moe_model *m);
/* Floats in the parameter (and gradient) buffer: every tensor plus the zero
** gaps that keep each one 64-byte aligned. */
size_t moe_model_num_params(const moe_model *m);
/* Non-trained state saved in checkpoints: expert bias [L_moe * E] (may be 0 long). */
float *moe_model_state_data(moe_model *m, size_t *count);
const moe_config *moe_model_config(const moe_model *m);

/* Model FLOPs of one training token (forward + backward = 3x forward):
** dense matmuls, top-k experts, router, attention (full T x T per query,
** the PaLM/Megatron convention), LM head. */
double moe_flops_per_token(const moe_config *cfg);
/* Parameters a token touches (embedding excluded), for reports. */
double moe_active_params(const moe_config *cfg);

#endif
