/*
** trainer: optimizer steps over a global batch, and the training run around
** them (data, evaluation, checkpoints, metrics, resume, stop on signal).
**
** A step takes the global batch's tokens, runs forward and backward over its
** micro-batches (gradient accumulation), clips the global grad norm, applies
** AdamW at the scheduled learning rate and updates the expert bias. The loss
** it reports is the LM loss averaged over every token of the global batch, so
** it does not depend on how the batch is split.
**
** With pipeline parallelism (pp_size > 1) a step runs the 1F1B schedule
** (parallel/pp_schedule.h) over this rank's micro-batches: activations go to
** the next stage and gradients back with non-blocking sends; the last stage
** computes the loss. Every stage is given the same inputs and targets.
**
** With cfg->use_distributed_optimizer and a data-parallel group (dp_cp or
** edp) larger than 1, AdamW's moments are sharded over those groups
** (parallel/distopt.h): backward runs without the model's gradient sync, the
** step reduce-scatters the gradients, updates this rank's shard and
** all-gathers the parameters. The model's flat gradients then stay this
** rank's unreduced ones, and moe_trainer_optimizer's m and v are NULL (its
** step counter still counts). With both groups of size 1 the flag has no
** effect (logged).
*/
#ifndef MOE_TRAINER_H
#define MOE_TRAINER_H

#include <stdint.h>

#include "runtime/metrics.h"
#include "runtime/model.h"
#include "parallel/distopt.h"
#include "runtime/optimizer.h"

typedef struct moe_trainer moe_trainer;

/*
** This rank's place in a parallel run (all groups borrowed; NULL = size 1).
** The global batch is split over dp_size data-parallel ranks: rank dp_rank
** runs global micro-batches dp_rank, dp_rank + dp_size, ... of each step.
*/
typedef struct {
    moe_comm *world;
    moe_comm *dp_cp;    /* non-expert gradients, loss sums */
    moe_comm *ep;       /* token all-to-all; expert part of the grad norm */
    moe_comm *edp;      /* expert gradients */
    moe_comm *tp_dp_cp; /* expert-bias and load token counts; router / norm gradients */
    moe_comm *tp, *cp, *etp, *tp_cp; /* see moe_model_par */
    moe_comm *pp;  /* this rank's pipeline (stages in order) */
    int pp_rank, pp_size;
    const moe_expert_map *maps; /* [MoE layers], see moe_model_par */
    int dp_rank, dp_size;
} moe_trainer_par;

/* Builds the model (initialised from cfg->seed) and optimizer. cfg->vocab_size must be set. */
moe_status moe_trainer_create(moe_trainer **out, const moe_config *cfg);
moe_status moe_trainer_create_parallel(moe_trainer **out, const moe_config *cfg,
                                       const moe_trainer_par *par);
void moe_trainer_free(moe_trainer *t);

/* One optimizer step at iteration `it` (0-based). inputs/targets hold this
** rank's share: global_batch_size / dp_size sequences (its micro-batches in
** order). Fills everything in *r (reduced over the run, the same on every
** rank) except the throughput fields, which need the caller's clock. */
moe_status moe_trainer_step(moe_trainer *t, const int32_t *inputs, const int32_t *targets, long it,
                            moe_train_metrics *r);

/* Mean LM loss over `count` sequences of this rank, combined with the other
** data-parallel ranks' (each passes the same count). No gradients. */
moe_status moe_trainer_eval(moe_trainer *t, const int32_t *inputs, const int32_t *targets, int count,
                            double *loss);

moe_model *moe_trainer_model(moe_trainer *t);
moe_adamw *moe_trainer_optimizer(moe_trainer *t);
/* The sharded AdamW state, or NULL when the distributed optimizer is off. */
moe_distopt *moe_trainer_distopt(moe_trainer *t);

typedef struct {
    long steps_done;
    double last_loss;
    double last_val_loss; /* < 0 when never evaluated */
    int stopped_early;    /* a stop was requested (signal) */
} moe_run_result;

/* The whole run: data from cfg->data_path, metrics into cfg->run_dir,
** checkpoints into cfg->save (or RUN_DIR/checkpoints), resume from cfg->load. */
moe_status moe_train_run(const moe_config *cfg, const moe_trainer_par *par, moe_run_result *res);
const moe_trainer_par *moe_trainer_parallel(const moe_trainer *t);

/* Async-signal-safe: the run finishes its current step, checkpoints, returns. */
void moe_train_request_stop(void);

#endif
