/*
** distopt: the distributed optimizer (Megatron's --use-distributed-optimizer,
** ZeRO stage 1). AdamW's moments are split over the data-parallel ranks, so
** each rank keeps 1/D of them instead of all.
**
** Two kinds of tensor, each with its own data-parallel group:
**   kind 0, non-expert tensors: replicated over dp_cp (size D)
**   kind 1, expert tensors:     replicated over edp   (size De), and different
**                               on every ep rank (each holds its own experts)
** A kind's tensors, in table order, are laid end to end (no gaps) in a
** "packed" index space of P elements, padded with zeros to D * S, where the
** shard size S = ceil(P / D) rounded up to 16 floats. Shard i = packed
** [i*S, (i+1)*S) belongs to group rank i: only it holds that range's m, v and
** summed gradient.
**
** One step (the caller's backward ran with the model's own gradient sync OFF,
** so the flat gradient buffer holds this rank's unreduced gradients):
**   moe_distopt_reduce_grads   reduce-scatter (SUM) of each kind over its group:
**                              this rank's shard of the summed gradient
**   moe_distopt_grad_norm      global L2 norm: non-expert shard sums of squares
**                              summed over dp_cp; expert ones over edp, then ep
**   moe_distopt_step           AdamW on the shard (per-element weight decay from
**                              the tensor each element belongs to; padding never
**                              updated, its m and v stay 0), then all-gather of
**                              the updated shards back into the flat params
** The AdamW arithmetic is layers/adamw.h's, with the same float arguments as
** the non-distributed optimizer: given the same summed gradient it gives the
** same bits.
**
** The packed buffer is never built whole: the reduce-scatter and all-gather
** run in chunks of c elements per rank through one staging buffer of D*c
** floats (c = min(S, stage_floats / D)), so the extra memory is bounded and the
** saving is real. Per rank: moments 2*S per kind (instead of 2*P), the shard's
** gradient S per kind (reused as the all-gather's send buffer), the staging.
**
** A group that is NULL or of size 1 means that kind is not sharded (S = P
** rounded up, no communication). Every call that communicates is collective
** over both kinds' groups (and ep for the norm): all ranks call it in the same
** order. Results are deterministic for a given layout and stage size.
**
** Memory: moe_distopt owns its shards and staging; the tensor table is copied;
** flat buffers passed in are borrowed for the call.
*/
#ifndef MOE_DISTOPT_H
#define MOE_DISTOPT_H

#include <stddef.h>

#include "comm/comm.h"
#include "runtime/base/status.h"

/* One tensor of the flat parameter buffer (the model's table, in order). */
typedef struct {
    size_t offset; /* in floats, into the flat params / grads / moments */
    size_t numel;
    int decay;     /* weight decay applies */
    int is_expert; /* kind 1 (edp) instead of kind 0 (dp_cp) */
    int no_norm;   /* a copy counted elsewhere (tensor-parallel replica): left out of the norm */
} moe_distopt_tensor;

/* AdamW's arguments for one step, as layers/adamw.h takes them. */
typedef struct {
    float lr, beta1, beta2, eps, weight_decay, grad_scale;
    long step; /* 1-based */
} moe_distopt_hparams;

typedef struct moe_distopt moe_distopt;

/* Staging buffer size when stage_floats is 0: 4M floats (16 MiB). */
#define MOE_DISTOPT_STAGE_DEFAULT ((size_t)1 << 22)

/*
** count tensors of a flat buffer of flat_numel floats (every tensor inside
** it). dp_cp / edp: the kinds' groups; ep: the expert-parallel group (for
** the norm). Any may be NULL. stage_floats: staging size (0 = default; small
** values force many chunks, which tests use). Groups are borrowed.
*/
moe_status moe_distopt_create(moe_distopt **out, const moe_distopt_tensor *tensors, int count,
                              size_t flat_numel, moe_comm *dp_cp, moe_comm *edp, moe_comm *ep,
                              size_t stage_floats);
void moe_distopt_free(moe_distopt *d);

/* grads (flat_numel): this rank's unreduced gradients, read only. Leaves this
** rank's shard of each kind's summed gradient inside d. Collective. */
moe_status moe_distopt_reduce_grads(moe_distopt *d, const float *grads);

/* L2 norm of the whole summed gradient (every kind, every expert), the same
** on every rank. After reduce_grads. Collective. */
moe_status moe_distopt_grad_norm(moe_distopt *d, double *norm);

/* This rank's shard sums of squares per kind (no_norm tensors left out), no
** communication: summed over every rank of a run whose other dimensions
** hold distinct tensors, they give the squared norm. After reduce_grads. */
void moe_distopt_grad_squares(const moe_distopt *d, double sq[2]);

/* AdamW on this rank's shards, then params (flat_numel) gets every rank's
** updated values. After reduce_grads; consumes the gradient shards. Collective. */
moe_status moe_distopt_step(moe_distopt *d, float *params, const moe_distopt_hparams *h);

/* The full moments in flat layout (flat_numel each; the gaps between tensors
** are not written), assembled from every rank's shard. Collective. */
moe_status moe_distopt_gather_moments(moe_distopt *d, float *m, float *v);
/* This rank's shards taken from full flat-layout moments (local, no
** communication: every rank passes the same m and v). */
void moe_distopt_load_moments(moe_distopt *d, const float *m, const float *v);

/* Floats of AdamW state this rank holds (m and v, both kinds), and the same
** for the non-distributed optimizer; floats of gradient shards and staging. */
size_t moe_distopt_state_floats(const moe_distopt *d);
size_t moe_distopt_full_state_floats(const moe_distopt *d);
size_t moe_distopt_work_floats(const moe_distopt *d);

#endif
