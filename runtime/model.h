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
#include "runtime/base/flops.h"
#include "runtime/base/mem.h"
#include "runtime/base/status.h"

#define MOE_PARAM_NAME_MAX 64

/* Which group sums a tensor's gradient after backward. */
typedef enum {
    MOE_GRAD_DP = 0,     /* dp_cp: complete on every tensor-parallel rank */
    MOE_GRAD_EXPERT = 1, /* edp: routed-expert weights */
    MOE_GRAD_TP_DP = 2,  /* tp_dp_cp: a replicated tensor whose ranks saw
                            different tokens (router; norms with sequence
                            parallelism), so tp ranks hold partial sums */
} moe_grad_kind;

/*
** How a rank's tensor is cut from the full one (tensor / expert-tensor
** parallelism). full_shape is the tensor before the cut (for expert tensors:
** this rank's E_local experts, all of their columns). Along split_dim the
** full tensor is nblocks consecutive blocks (qkv: q, k, v heads; w13: gate,
** up); each block is cut into `parts` pieces, piece i holding [len*i/parts,
** len*(i+1)/parts) of it, and the rank holds piece `part` of every block,
** concatenated. split_dim -1: held whole (parts 1).
*/
typedef struct {
    int split_dim, nblocks, parts, part;
    int64_t blocks[3];
    int64_t full_shape[4];
} moe_param_cut;

typedef struct {
    char name[MOE_PARAM_NAME_MAX];
    int ndim;
    int64_t shape[4]; /* this rank's shape */
    size_t offset; /* in floats, into params / grads / moments */
    size_t numel;
    int decay;     /* weight decay applies (matrices yes, norms no) */
    int is_expert; /* routed-expert weight: reduces over EDP, sharded by EP */
    moe_grad_kind grad;
    moe_param_cut cut;
    int pp_copy;   /* the last pipeline stage's copy of a tied embedding: not saved */
    int canonical; /* this rank's copy is the one counted in the grad norm and
                      written to checkpoints (one per set of identical copies:
                      data-parallel replicas, tensor-parallel replicas, the
                      last pipeline stage's copy of a tied embedding) */
    size_t canonical_numel; /* of a canonical tensor, the leading elements that
                      count: numel, except for expert tensors holding extra
                      copies of replicated experts (parallel/ep.h), whose
                      rows after the map's n_canonical are counted elsewhere */
} moe_param_info;

/* What one forward pass measured, this rank's share: summing the stats of
** every rank that worked on a micro-batch (its tp x cp ranks) gives the
** micro-batch's (lm_loss_sum and tokens count once per tp group: they are 0
** on tp ranks > 0). */
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
**
** Tensor parallelism (tp, Megatron's column/row split): qkv and the FFN's
** w13 are cut by output rows, the output projections by input columns, the
** embedding and LM head by vocabulary rows; the row-parallel outputs are
** all-reduced over tp, or with sequence_parallel reduce-scattered along the
** tokens (the residual stream then holds this rank's 1/TP of the tokens and
** is all-gathered before each column-parallel input). Routed experts always
** see this rank's 1/TP of the micro-batch's tokens; with etp they are
** all-gathered over etp before the router and the expert outputs (partial
** over the F columns) reduce-scattered back. Context parallelism (cp): the
** forward takes whole sequences; rank r keeps chunks r and 2CP-1-r of each
** and runs ring attention over cp. Losses are always those of the whole
** micro-batch (the aux loss's counts are summed over tp_cp).
*/
typedef struct {
    moe_comm *ep;
    const moe_expert_map *maps; /* [MoE layers] */
    moe_comm *dp_cp;
    moe_comm *edp;
    moe_comm *tp;       /* attention heads, FFN columns, vocabulary */
    moe_comm *cp;       /* sequence chunks, ring attention */
    moe_comm *etp;      /* routed experts' columns */
    moe_comm *tp_cp;    /* the ranks sharing one micro-batch: aux-loss counts */
    moe_comm *tp_dp_cp; /* MOE_GRAD_TP_DP gradients */
    int sequence_parallel;
    int pp_rank, pp_size; /* this rank's pipeline stage (0, 1: no pipeline) */
    int vpp;              /* model chunks (virtual stages) per stage (0 or 1: one) */
    int slots;            /* micro-batches in flight at once (0 or 1: one) */
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
** gets exactly the values the single-rank model has for them; a tensor-parallel
** piece is cut from the full tensor's values. */
moe_status moe_model_init(moe_model *m, uint64_t seed);

/* Forward over B <= max_batch sequences; targets may be NULL (then no loss).
** Saves what backward needs. */
moe_status moe_model_forward(moe_model *m, const int32_t *inputs, const int32_t *targets, int B,
                             moe_fwd_stats *stats);
/* Backward of the last forward; accumulates into grads with the objective's
** scales (see above). */
moe_status moe_model_backward(moe_model *m, float lm_scale, float aux_scale);

/* With sync on, the next backward sums each layer's gradients over the
** data-parallel groups (dp_cp for non-expert, edp for expert tensors) as
** soon as that layer's backward is done: non-blocking all-reduces that
** overlap the rest of backward with cfg.overlap_grad_reduce when tp, cp, ep
** or etp > 1 (their traffic advances them), else blocking ones.
** moe_model_finish_grad_sync waits for all of it. Use it on the last
** micro-batch of a step. Without parallel groups both are no-ops. */
void moe_model_set_grad_sync(moe_model *m, int on);
/* Sums each replicated expert's gradient among its copies (expert placement
** with replication: every copy saw its share of the tokens), so the copies
** stay identical. After the step's backward (and grad sync); collective over
** the ep group. No-op without replication. */
moe_status moe_model_sum_expert_copies(moe_model *m);
moe_status moe_model_finish_grad_sync(moe_model *m);

/* Sums the MOE_GRAD_TP_DP gradients over tp (blocking), for callers that do
** the data-parallel sums themselves (the distributed optimizer). */
moe_status moe_model_reduce_tp_partials(moe_model *m);

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

/* A tensor-parallel cut (see moe_param_cut): copies the piece `part` of
** the full tensor (p->cut.full_shape, row-major) into local, or back. The
** piece's shape is p->shape when part == p->cut.part. */
void moe_param_cut_extract(const moe_param_info *p, int part, const float *full, float *local);
void moe_param_cut_insert(const moe_param_info *p, int part, const float *local, float *full);
/* Floats of the full tensor, and of piece `part` of it. */
size_t moe_param_full_numel(const moe_param_info *p);
size_t moe_param_piece_numel(const moe_param_info *p, int part);

/*
** Pipeline parallelism: stage s of P holds layers [s*L/P, (s+1)*L/P); the
** first stage also the embedding, the last the final norm and LM head (with
** tied embeddings a copy of the embedding, initialised alike, whose gradient
** the caller sums with the first stage's: moe_model_emb_grad). Several
** micro-batches can be in flight: each forward and its backward run on the
** slot chosen by moe_model_set_slot. A stage that is not the first takes its
** input in moe_model_pp_input before forward; one that is not the last puts
** d(output) in moe_model_pp_grad before backward. After backward,
** moe_model_pp_grad holds d(input) for the previous stage. Each message is
** moe_model_pp_numel floats (this rank's residual rows x hidden size).
*/
moe_status moe_model_set_slot(moe_model *m, int slot);
/* Interleaved pipeline: stage s holds vpp chunks, chunk k = virtual stage
** k*P + s = layers [(k*P + s)*L/(P*vpp), ...+L/(P*vpp)). Forward and
** backward run the current chunk; the first chunk of stage 0 embeds, the
** last chunk of the last stage computes the loss. */
moe_status moe_model_set_chunk(moe_model *m, int chunk);
int moe_model_chunks(const moe_model *m);
float *moe_model_pp_input(moe_model *m);
const float *moe_model_pp_output(moe_model *m);
float *moe_model_pp_grad(moe_model *m);
size_t moe_model_pp_numel(const moe_model *m, int B);
/* The gradient of the tied embedding on the first or last stage (NULL
** elsewhere, or when untied, or without pipeline), and its float count. */
float *moe_model_emb_grad(moe_model *m, size_t *n);

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

/* moe_flops_per_token and moe_active_params: runtime/base/flops.h */

#endif
