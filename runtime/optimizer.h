/*
** optimizer: AdamW over the model's parameter table, the learning-rate
** schedule, and global grad-norm clipping.
**
** Moments m and v mirror the flat parameter buffer. Weight decay applies to
** tensors whose table entry says so (matrices), never to norms. The step
** counter is the optimizer's own (1-based after the first step) and is saved
** in checkpoints with the moments.
*/
#ifndef MOE_OPTIMIZER_H
#define MOE_OPTIMIZER_H

#include "runtime/model.h"

typedef struct {
    float *m, *v;
    size_t n;
    long step;
} moe_adamw;

moe_status moe_adamw_init(moe_adamw *o, size_t nparams);
void moe_adamw_free(moe_adamw *o);

/* lr at iteration `it` (0-based): linear warm-up from lr/warmup to lr over
** lr_warmup_iters, then cosine from lr to min_lr until lr_decay_iters, then min_lr. */
double moe_lr_at(const moe_config *c, long it);

/* Global L2 norm of all gradients (before clipping). */
double moe_grad_norm(moe_model *model);
/* The same over a parallel run after the data-parallel sums: each rank adds
** the tensors whose copy is canonical (moe_param_info), summed over the
** world (NULL: one rank). */
moe_status moe_grad_norm_parallel(moe_model *model, moe_comm *world, double *norm);

/* The factor that clips a gradient of norm `norm` to clip_grad (1 when
** clip_grad is 0 or the norm is already below it). */
double moe_clip_scale(double norm, double clip_grad);

/* One AdamW step with learning rate lr on the gradients times grad_scale. */
void moe_adamw_step(moe_adamw *o, moe_model *model, double lr, double grad_scale);

#endif
