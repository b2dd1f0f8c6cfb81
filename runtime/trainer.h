/*
** trainer: optimizer steps over a global batch, and the training run around
** them (data, evaluation, checkpoints, metrics, resume, stop on signal).
**
** A step takes the global batch's tokens, runs forward and backward over its
** micro-batches (gradient accumulation), clips the global grad norm, applies
** AdamW at the scheduled learning rate and updates the expert bias. The loss
** it reports is the LM loss averaged over every token of the global batch, so
** it does not depend on how the batch is split.
*/
#ifndef MOE_TRAINER_H
#define MOE_TRAINER_H

#include <stdint.h>

#include "runtime/metrics.h"
#include "runtime/model.h"
#include "runtime/optimizer.h"

typedef struct moe_trainer moe_trainer;

/* Builds the model (initialised from cfg->seed) and optimizer. cfg->vocab_size must be set. */
moe_status moe_trainer_create(moe_trainer **out, const moe_config *cfg);
void moe_trainer_free(moe_trainer *t);

/* One optimizer step at iteration `it` (0-based). inputs/targets hold
** global_batch_size * seq_length tokens. Fills everything in *r except the
** throughput fields (tokens_per_s, tflops, mfu), which need the caller's clock. */
moe_status moe_trainer_step(moe_trainer *t, const int32_t *inputs, const int32_t *targets, long it,
                            moe_train_metrics *r);

/* Mean LM loss over `count` sequences (no gradients). */
moe_status moe_trainer_eval(moe_trainer *t, const int32_t *inputs, const int32_t *targets, int count,
                            double *loss);

moe_model *moe_trainer_model(moe_trainer *t);
moe_adamw *moe_trainer_optimizer(moe_trainer *t);

typedef struct {
    long steps_done;
    double last_loss;
    double last_val_loss; /* < 0 when never evaluated */
    int stopped_early;    /* a stop was requested (signal) */
} moe_run_result;

/* The whole run: data from cfg->data_path, metrics into cfg->run_dir,
** checkpoints into cfg->save (or RUN_DIR/checkpoints), resume from cfg->load. */
moe_status moe_train_run(const moe_config *cfg, moe_run_result *res);

/* Async-signal-safe: the run finishes its current step, checkpoints, returns. */
void moe_train_request_stop(void);

#endif
