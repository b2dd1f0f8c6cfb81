#include "runtime/trainer.h"

#include <math.h>
#include <string.h>

#include "runtime/base/mem.h"

struct moe_trainer {
    moe_config cfg;
    moe_model *model;
    moe_adamw opt;
};

moe_status moe_trainer_create(moe_trainer **out, const moe_config *cfg)
{
    moe_trainer *t = NULL;
    moe_status st = MOE_OK;
    MOE_TRY(moe_alloc((void **)&t, sizeof *t, "trainer"));
    t->cfg = *cfg;
    MOE_TRY_GOTO(moe_config_validate(&t->cfg), st, fail);
    MOE_TRY_GOTO(moe_model_create(&t->model, &t->cfg, t->cfg.micro_batch_size), st, fail);
    moe_model_init(t->model, t->cfg.seed);
    MOE_TRY_GOTO(moe_adamw_init(&t->opt, moe_model_num_params(t->model)), st, fail);
    *out = t;
    return MOE_OK;
fail:
    moe_trainer_free(t);
    return st;
}

void moe_trainer_free(moe_trainer *t)
{
    if (!t)
        return;
    moe_adamw_free(&t->opt);
    moe_model_free(t->model);
    moe_free(t);
}

moe_model *moe_trainer_model(moe_trainer *t) { return t->model; }
moe_adamw *moe_trainer_optimizer(moe_trainer *t) { return &t->opt; }

moe_status moe_trainer_step(moe_trainer *t, const int32_t *inputs, const int32_t *targets, long it,
                            moe_train_metrics *r)
{
    const moe_config *c = &t->cfg;
    int mb = c->micro_batch_size, T = c->seq_length;
    int micro = c->global_batch_size / mb;
    double tokens = (double)c->global_batch_size * T;
    double lm = 0, aux = 0, z = 0;

    moe_model_zero_grad(t->model);
    for (int i = 0; i < micro; i++) {
        size_t off = (size_t)i * mb * T;
        moe_fwd_stats st;
        MOE_TRY(moe_model_forward(t->model, inputs + off, targets + off, mb, &st));
        MOE_TRY(moe_model_backward(t->model, (float)(1.0 / tokens), (float)(1.0 / micro)));
        lm += st.lm_loss_sum;
        aux += st.aux_loss;
        z += st.z_loss;
    }
    memset(r, 0, sizeof *r);
    r->step = it + 1;
    r->loss = lm / tokens;
    r->aux_loss = aux / micro;
    r->z_loss = z / micro;
    if (!isfinite(r->loss))
        return moe_fail(MOE_ERR_SYSTEM, "loss is %g at step %ld: training diverged (lower --lr?)", r->loss, r->step);
    r->lr = moe_lr_at(c, it);
    r->grad_norm = moe_grad_norm(t->model);
    moe_adamw_step(&t->opt, t->model, r->lr, moe_clip_scale(r->grad_norm, c->clip_grad));
    moe_model_update_expert_bias(t->model);
    moe_model_take_load(t->model, &r->load_imbalance, &r->dropped_frac);
    return MOE_OK;
}

moe_status moe_trainer_eval(moe_trainer *t, const int32_t *inputs, const int32_t *targets, int count,
                            double *loss)
{
    int mb = t->cfg.micro_batch_size, T = t->cfg.seq_length;
    double sum = 0;
    for (int s = 0; s < count; s += mb) {
        int b = count - s < mb ? count - s : mb;
        moe_fwd_stats st;
        MOE_TRY(moe_model_forward(t->model, inputs + (size_t)s * T, targets + (size_t)s * T, b, &st));
        sum += st.lm_loss_sum;
    }
    double im, dr;
    moe_model_take_load(t->model, &im, &dr); /* evaluation routing is not training load */
    *loss = sum / ((double)count * T);
    return MOE_OK;
}
