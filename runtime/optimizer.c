#include "runtime/optimizer.h"

#include <math.h>

#include "layers/adamw.h"

moe_status moe_adamw_init(moe_adamw *o, size_t nparams)
{
    o->n = nparams;
    o->step = 0;
    MOE_TRY(moe_alloc((void **)&o->m, nparams * sizeof(float), "AdamW first moments"));
    moe_status st = moe_alloc((void **)&o->v, nparams * sizeof(float), "AdamW second moments");
    if (st != MOE_OK) {
        moe_free(o->m);
        o->m = NULL;
        MOE_TRY(st);
    }
    return MOE_OK;
}

void moe_adamw_free(moe_adamw *o)
{
    moe_free(o->m);
    moe_free(o->v);
    o->m = o->v = NULL;
}

double moe_lr_at(const moe_config *c, long it)
{
    if (it < c->lr_warmup_iters)
        return c->lr * (double)(it + 1) / c->lr_warmup_iters;
    long decay = c->lr_decay_iters > 0 ? c->lr_decay_iters : c->train_iters;
    if (it >= decay || decay <= c->lr_warmup_iters)
        return c->min_lr;
    double progress = (double)(it - c->lr_warmup_iters) / (double)(decay - c->lr_warmup_iters);
    return c->min_lr + 0.5 * (c->lr - c->min_lr) * (1.0 + cos(M_PI * progress));
}

double moe_grad_norm(moe_model *model)
{
    return sqrt(moe_sum_squares(moe_model_grad_data(model), moe_model_num_params(model)));
}

moe_status moe_grad_norm_parallel(moe_model *model, moe_comm *world, double *norm)
{
    if (!world) {
        *norm = moe_grad_norm(model);
        return MOE_OK;
    }
    int count;
    const moe_param_info *t = moe_model_params(model, &count);
    const float *g = moe_model_grad_data(model);
    double sq = 0;
    for (int i = 0; i < count; i++)
        if (t[i].canonical)
            sq += moe_sum_squares(g + t[i].offset, t[i].canonical_numel);
    MOE_TRY(moe_allreduce(world, &sq, 1, MOE_DT_F64, MOE_OP_SUM));
    *norm = sqrt(sq);
    return MOE_OK;
}

double moe_clip_scale(double norm, double clip_grad)
{
    return clip_grad > 0 && norm > clip_grad ? clip_grad / (norm + 1e-6) : 1.0;
}

void moe_adamw_step(moe_adamw *o, moe_model *model, double lr, double grad_scale)
{
    const moe_config *c = moe_model_config(model);
    int count;
    const moe_param_info *t = moe_model_params(model, &count);
    float *p = moe_model_param_data(model), *g = moe_model_grad_data(model);
    o->step++;
    for (int i = 0; i < count; i++) {
        size_t off = t[i].offset;
        float wd = t[i].decay ? (float)c->weight_decay : 0.0f;
        moe_adamw_update(p + off, g + off, o->m + off, o->v + off, t[i].numel, (float)lr,
                         (float)c->adam_beta1, (float)c->adam_beta2, (float)c->adam_eps, wd, o->step,
                         (float)grad_scale);
    }
}
