/*
** metrics: what a run reports. One JSON object per line in
** RUN_DIR/metrics.jsonl (fields fixed by INTERFACE.md) and a live progress
** line on stderr (rewritten in place on a terminal, one line per log interval
** otherwise).
*/
#ifndef MOE_METRICS_H
#define MOE_METRICS_H

#include <stdio.h>

#include "runtime/base/status.h"

typedef struct {
    long step;             /* 1-based: optimizer steps done */
    double loss;           /* LM loss, mean over the global batch's tokens */
    double aux_loss;       /* mean over micro-batches of the summed per-layer aux losses */
    double z_loss;
    double lr;
    double grad_norm;
    double tokens_per_s;
    double tflops;         /* achieved model TFLOP/s */
    double mfu;            /* tflops / measured peak */
    double load_imbalance; /* max/mean tokens per expert, mean over MoE layers */
    double dropped_frac;
    double step_ms;
} moe_train_metrics;

typedef struct {
    FILE *jsonl;
    int tty;
    long total_steps;
    double last_val_loss; /* < 0 until the first evaluation */
    double run_start;
    long first_step;      /* step the run (or resume) began at, for ETA */
} moe_metrics;

moe_status moe_metrics_open(moe_metrics *mt, const char *run_dir, long total_steps, int append);
moe_status moe_metrics_train(moe_metrics *mt, const moe_train_metrics *r, int print);
moe_status moe_metrics_eval(moe_metrics *mt, long step, double val_loss);
void moe_metrics_close(moe_metrics *mt);

#endif
