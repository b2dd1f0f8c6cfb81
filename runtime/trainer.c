#include "runtime/trainer.h"

#include <math.h>
#include <string.h>

#include "parallel/pp_schedule.h"
#include "runtime/base/log.h"
#include "runtime/base/mem.h"

struct moe_trainer {
    moe_config cfg;
    moe_trainer_par par;
    moe_model *model;
    moe_adamw opt;     /* with the distributed optimizer: the step counter only */
    moe_distopt *dopt; /* NULL unless the distributed optimizer runs */
    /* pipeline: the schedule and per-slot send buffers */
    moe_pp_action *sched;
    int nsched, nslots, vpp, micro;
    int *slot_of;              /* [micro * vpp + chunk]: the activation slot of an in-flight forward */
    int *free_slots, nfree;    /* slots not holding a forward's activations */
    float *fwd_msg, *bwd_msg;  /* [nslots][msg] */
    float *emb_peer;           /* the other stage's tied-embedding gradient */
    moe_request **fwd_req, **bwd_req;
    size_t msg;
};

moe_status moe_trainer_create(moe_trainer **out, const moe_config *cfg)
{
    return moe_trainer_create_parallel(out, cfg, NULL);
}

/* A group of size 1 is no group: callers test for NULL only. */
static moe_comm *real_group(moe_comm *c) { return c && moe_comm_size(c) > 1 ? c : NULL; }

static int is_root(const moe_trainer *t) { return !t->par.world || moe_comm_rank(t->par.world) == 0; }

/* AdamW state sharded over dp_cp (non-expert) and edp (expert tensors);
** opt keeps only the step counter. */
static moe_status distopt_init(moe_trainer *t)
{
    int count;
    const moe_param_info *p = moe_model_params(t->model, &count);
    moe_distopt_tensor *dt = NULL;
    MOE_TRY(moe_alloc((void **)&dt, sizeof *dt * (size_t)count * 2, "distributed optimizer table"));
    int tp_rank = t->par.tp ? moe_comm_rank(t->par.tp) : 0, nt = 0;
    for (int i = 0; i < count; i++) {
        int copy = (!p[i].is_expert && p[i].cut.split_dim < 0 && tp_rank > 0) || p[i].pp_copy;
        size_t own = p[i].canonical_numel; /* extra copies of replicated experts: counted on another rank */
        if (own > 0 || p[i].numel == 0)
            dt[nt++] = (moe_distopt_tensor){p[i].offset, own, p[i].decay, p[i].is_expert, copy};
        if (own < p[i].numel)
            dt[nt++] = (moe_distopt_tensor){p[i].offset + own, p[i].numel - own, p[i].decay, p[i].is_expert, 1};
    }
    size_t n = moe_model_num_params(t->model);
    moe_status st = moe_distopt_create(&t->dopt, dt, nt, n, t->par.dp_cp, t->par.edp, t->par.ep, 0);
    moe_free(dt);
    MOE_TRY(st);
    t->opt = (moe_adamw){.n = n};
    if (is_root(t)) {
        double mib = 1.0 / (1 << 20) * sizeof(float);
        double full = (double)moe_distopt_full_state_floats(t->dopt) * mib;
        double mine = (double)moe_distopt_state_floats(t->dopt) * mib;
        moe_info("distributed optimizer: AdamW state %.2f MiB per rank instead of %.2f MiB (saves %.2f MiB; "
                 "DP %d, EDP %d), plus %.2f MiB of gradient shards and staging",
                 mine, full, full - mine, t->par.dp_cp ? moe_comm_size(t->par.dp_cp) : 1,
                 t->par.edp ? moe_comm_size(t->par.edp) : 1, (double)moe_distopt_work_floats(t->dopt) * mib);
    }
    return MOE_OK;
}

static moe_status pipeline_init(moe_trainer *t, int micro, int slots)
{
    t->vpp = moe_model_chunks(t->model);
    t->micro = micro;
    t->nsched = 2 * micro * t->vpp;
    t->nslots = slots;
    t->msg = moe_model_pp_numel(t->model, t->cfg.micro_batch_size);
    MOE_TRY(moe_alloc((void **)&t->sched, sizeof *t->sched * (size_t)t->nsched, "pipeline schedule"));
    MOE_TRY(moe_pp_schedule(t->par.pp_size, t->par.pp_rank, micro, t->vpp, t->sched));
    MOE_TRY(moe_alloc((void **)&t->slot_of, sizeof(int) * (size_t)micro * t->vpp, "pipeline slots"));
    MOE_TRY(moe_alloc((void **)&t->free_slots, sizeof(int) * (size_t)slots, "pipeline slots"));
    MOE_TRY(moe_alloc((void **)&t->fwd_msg, sizeof(float) * t->msg * (size_t)slots, "pipeline messages"));
    MOE_TRY(moe_alloc((void **)&t->bwd_msg, sizeof(float) * t->msg * (size_t)slots, "pipeline messages"));
    MOE_TRY(moe_alloc((void **)&t->fwd_req, sizeof *t->fwd_req * (size_t)slots, "pipeline requests"));
    MOE_TRY(moe_alloc((void **)&t->bwd_req, sizeof *t->bwd_req * (size_t)slots, "pipeline requests"));
    size_t n;
    if (moe_model_emb_grad(t->model, &n))
        MOE_TRY(moe_alloc((void **)&t->emb_peer, n * sizeof(float), "tied embedding gradient"));
    return MOE_OK;
}

moe_status moe_trainer_create_parallel(moe_trainer **out, const moe_config *cfg, const moe_trainer_par *par)
{
    moe_trainer *t = NULL;
    moe_status st = MOE_OK;
    MOE_TRY(moe_alloc((void **)&t, sizeof *t, "trainer"));
    t->cfg = *cfg;
    t->par.dp_size = 1;
    if (par) {
        t->par = *par;
        t->par.dp_cp = real_group(par->dp_cp);
        t->par.ep = real_group(par->ep);
        t->par.edp = real_group(par->edp);
        t->par.tp_dp_cp = real_group(par->tp_dp_cp);
        t->par.tp = real_group(par->tp);
        t->par.cp = real_group(par->cp);
        t->par.etp = real_group(par->etp);
        t->par.tp_cp = real_group(par->tp_cp);
        t->par.world = real_group(par->world);
        t->par.pp = real_group(par->pp);
    }
    if (!t->par.pp)
        t->par.pp_rank = 0, t->par.pp_size = 1;
    MOE_TRY_GOTO(moe_config_validate(&t->cfg), st, fail);
    if (t->cfg.global_batch_size % (t->cfg.micro_batch_size * t->par.dp_size) != 0)
        MOE_TRY_GOTO(moe_fail(MOE_ERR_USAGE, "global-batch-size (%d) must be divisible by micro-batch-size x data-parallel size (%d x %d)",
                              t->cfg.global_batch_size, t->cfg.micro_batch_size, t->par.dp_size), st, fail);
    int micro = t->cfg.global_batch_size / (t->cfg.micro_batch_size * t->par.dp_size);
    int vpp = t->par.pp_size > 1 && t->cfg.num_layers_per_virtual_pipeline_stage > 0
                  ? t->cfg.num_layers / (t->par.pp_size * t->cfg.num_layers_per_virtual_pipeline_stage)
                  : 1;
    if (vpp > 1 && micro % t->par.pp_size)
        MOE_TRY_GOTO(moe_fail(MOE_ERR_USAGE, "the interleaved pipeline needs micro-batches per data-parallel rank "
                              "(%d) divisible by pipeline-model-parallel-size (%d)", micro, t->par.pp_size), st, fail);
    int slots = t->par.pp_size > 1 ? moe_pp_max_in_flight(t->par.pp_size, t->par.pp_rank, micro, vpp) : 1;
    moe_model_par mp = {t->par.ep, t->par.maps, t->par.dp_cp, t->par.edp, t->par.tp, t->par.cp, t->par.etp,
                        t->par.tp_cp, t->par.tp_dp_cp, t->cfg.sequence_parallel, t->par.pp_rank, t->par.pp_size,
                        vpp, slots};
    MOE_TRY_GOTO(moe_model_create_parallel(&t->model, &t->cfg, t->cfg.micro_batch_size, &mp), st, fail);
    if (t->par.pp_size > 1)
        MOE_TRY_GOTO(pipeline_init(t, micro, slots), st, fail);
    MOE_TRY_GOTO(moe_model_init(t->model, t->cfg.seed), st, fail);
    if (t->cfg.use_distributed_optimizer && (t->par.dp_cp || t->par.edp))
        MOE_TRY_GOTO(distopt_init(t), st, fail);
    else {
        if (t->cfg.use_distributed_optimizer && is_root(t))
            moe_info("use-distributed-optimizer has no effect: data-parallel and expert-data-parallel sizes are 1");
        MOE_TRY_GOTO(moe_adamw_init(&t->opt, moe_model_num_params(t->model)), st, fail);
    }
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
    moe_distopt_free(t->dopt);
    moe_free(t->sched);
    moe_free(t->slot_of);
    moe_free(t->free_slots);
    moe_free(t->fwd_msg);
    moe_free(t->bwd_msg);
    moe_free(t->emb_peer);
    moe_free(t->fwd_req);
    moe_free(t->bwd_req);
    moe_model_free(t->model);
    moe_free(t);
}

moe_model *moe_trainer_model(moe_trainer *t) { return t->model; }
const moe_trainer_par *moe_trainer_parallel(const moe_trainer *t) { return &t->par; }
moe_adamw *moe_trainer_optimizer(moe_trainer *t) { return &t->opt; }
moe_distopt *moe_trainer_distopt(moe_trainer *t) { return t->dopt; }

/* Clipped AdamW step: the data-parallel sums already done (model sync), or
** done here as reduce-scatters (distributed optimizer). */
static moe_status optimizer_step(moe_trainer *t, double lr, double *grad_norm)
{
    const moe_config *c = &t->cfg;
    if (!t->dopt) {
        MOE_TRY(moe_grad_norm_parallel(t->model, t->par.world, grad_norm));
        moe_adamw_step(&t->opt, t->model, lr, moe_clip_scale(*grad_norm, c->clip_grad));
        return MOE_OK;
    }
    MOE_TRY(moe_model_reduce_tp_partials(t->model));
    MOE_TRY(moe_distopt_reduce_grads(t->dopt, moe_model_grad_data(t->model)));
    double sq[2];
    moe_distopt_grad_squares(t->dopt, sq);
    sq[0] += sq[1];
    if (t->par.world) /* every other rank's shards and pieces are distinct */
        MOE_TRY(moe_allreduce(t->par.world, sq, 1, MOE_DT_F64, MOE_OP_SUM));
    *grad_norm = sqrt(sq[0]);
    /* the same float arguments as moe_adamw_step */
    moe_distopt_hparams h = {(float)lr, (float)c->adam_beta1, (float)c->adam_beta2, (float)c->adam_eps,
                             (float)c->weight_decay, (float)moe_clip_scale(*grad_norm, c->clip_grad),
                             ++t->opt.step};
    return moe_distopt_step(t->dopt, moe_model_param_data(t->model), &h);
}

enum { TAG_PP_FWD = 1000, TAG_PP_BWD = 1001 }; /* + 2 * (micro * vpp + chunk) */

static void add_stats(double sums[3], const moe_fwd_stats *st)
{
    sums[0] += st->lm_loss_sum;
    sums[1] += st->aux_loss;
    sums[2] += st->z_loss;
}

/* This rank's micro-batches, one after another (no pipeline). */
static moe_status run_micro_batches(moe_trainer *t, const int32_t *inputs, const int32_t *targets, int micro,
                                    float lm_scale, float aux_scale, double sums[3])
{
    int mb = t->cfg.micro_batch_size, T = t->cfg.seq_length;
    for (int i = 0; i < micro; i++) {
        size_t off = (size_t)i * mb * T;
        moe_fwd_stats st;
        MOE_TRY(moe_model_forward(t->model, inputs + off, targets + off, mb, &st));
        /* the distributed optimizer sums gradients itself, by reduce-scatter */
        moe_model_set_grad_sync(t->model, !t->dopt && i == micro - 1);
        MOE_TRY(moe_model_backward(t->model, lm_scale, aux_scale));
        add_stats(sums, &st);
    }
    return MOE_OK;
}

/* The stage a chunk's activations come from (dir -1) or go to (+1): the
** previous / next virtual stage. */
static int neighbour(const moe_trainer *t, int dir) { return (t->par.pp_rank + dir + t->par.pp_size) % t->par.pp_size; }

/* Messages are matched by the receiving action's (micro-batch, chunk), so
** no two can be confused. to: 0 for a receive; +1 / -1 for a send to the
** next / previous stage, whose chunk differs across the wrap from the last
** stage to the first. */
static int pp_tag(const moe_trainer *t, int base, const moe_pp_action *a, int to)
{
    int chunk = a->chunk;
    if (to > 0 && t->par.pp_rank == t->par.pp_size - 1)
        chunk++;
    if (to < 0 && t->par.pp_rank == 0)
        chunk--;
    return base + 2 * (a->micro * t->vpp + chunk);
}

/* One action of this stage's schedule. Sends are non-blocking; a slot's
** previous send is waited for before its buffer is written again. */
static moe_status pipeline_action(moe_trainer *t, const moe_pp_action *a, const int32_t *inputs,
                                  const int32_t *targets, float lm_scale, float aux_scale, double sums[3])
{
    moe_model *m = t->model;
    moe_comm *pp = t->par.pp;
    int mb = t->cfg.micro_batch_size, key = a->micro * t->vpp + a->chunk;
    size_t off = (size_t)a->micro * mb * t->cfg.seq_length, n = t->msg;
    MOE_TRY(moe_model_set_chunk(m, a->chunk));
    int first = t->par.pp_rank == 0 && a->chunk == 0;
    int last = t->par.pp_rank == t->par.pp_size - 1 && a->chunk == t->vpp - 1;
    if (a->kind == MOE_PP_FWD) {
        if (t->nfree == 0)
            return moe_fail(MOE_ERR_INTERNAL, "pipeline: more forwards in flight than the %d slots", t->nslots);
        int slot = t->free_slots[--t->nfree];
        t->slot_of[key] = slot;
        MOE_TRY(moe_model_set_slot(m, slot));
        MOE_TRY(moe_wait(&t->fwd_req[slot]));
        if (!first)
            MOE_TRY(moe_recv(pp, moe_model_pp_input(m), n, MOE_DT_F32, neighbour(t, -1), pp_tag(t, TAG_PP_FWD, a, 0)));
        moe_fwd_stats st;
        MOE_TRY(moe_model_forward(m, inputs + off, targets + off, mb, &st));
        add_stats(sums, &st);
        if (!last) {
            float *buf = t->fwd_msg + (size_t)slot * n;
            memcpy(buf, moe_model_pp_output(m), n * sizeof *buf);
            MOE_TRY(moe_isend(pp, buf, n, MOE_DT_F32, neighbour(t, +1), pp_tag(t, TAG_PP_FWD, a, +1), &t->fwd_req[slot]));
        }
        return MOE_OK;
    }
    int slot = t->slot_of[key];
    MOE_TRY(moe_model_set_slot(m, slot));
    if (!last)
        MOE_TRY(moe_recv(pp, moe_model_pp_grad(m), n, MOE_DT_F32, neighbour(t, +1), pp_tag(t, TAG_PP_BWD, a, 0)));
    /* each chunk's gradients are complete after its last micro-batch */
    moe_model_set_grad_sync(m, !t->dopt && a->micro == t->micro - 1);
    MOE_TRY(moe_model_backward(m, lm_scale, aux_scale));
    if (!first) {
        MOE_TRY(moe_wait(&t->bwd_req[slot]));
        float *buf = t->bwd_msg + (size_t)slot * n;
        memcpy(buf, moe_model_pp_grad(m), n * sizeof *buf);
        MOE_TRY(moe_isend(pp, buf, n, MOE_DT_F32, neighbour(t, -1), pp_tag(t, TAG_PP_BWD, a, -1), &t->bwd_req[slot]));
    }
    t->free_slots[t->nfree++] = slot;
    return MOE_OK;
}

static moe_status run_pipeline(moe_trainer *t, const int32_t *inputs, const int32_t *targets, float lm_scale,
                               float aux_scale, double sums[3])
{
    t->nfree = t->nslots;
    for (int k = 0; k < t->nslots; k++)
        t->free_slots[k] = t->nslots - 1 - k;
    for (int i = 0; i < t->nsched; i++)
        MOE_TRY(pipeline_action(t, &t->sched[i], inputs, targets, lm_scale, aux_scale, sums));
    for (int k = 0; k < t->nslots; k++) {
        MOE_TRY(moe_wait(&t->fwd_req[k]));
        MOE_TRY(moe_wait(&t->bwd_req[k]));
    }
    MOE_TRY(moe_model_set_chunk(t->model, 0));
    return moe_model_set_slot(t->model, 0);
}

/* The first and last stages' copies of a tied embedding both get the sum of
** the two gradients (a + b == b + a, so the copies stay identical). */
enum { TAG_PP_EMB = 203 };

static moe_status sync_tied_embedding(moe_trainer *t)
{
    size_t n;
    float *g = moe_model_emb_grad(t->model, &n);
    if (!g)
        return MOE_OK;
    int P = t->par.pp_size, peer = t->par.pp_rank == 0 ? P - 1 : 0;
    moe_request *rq[2] = {NULL, NULL};
    MOE_TRY(moe_irecv(t->par.pp, t->emb_peer, n, MOE_DT_F32, peer, TAG_PP_EMB, &rq[0]));
    MOE_TRY(moe_isend(t->par.pp, g, n, MOE_DT_F32, peer, TAG_PP_EMB, &rq[1]));
    MOE_TRY(moe_wait(&rq[0]));
    MOE_TRY(moe_wait(&rq[1]));
    for (size_t i = 0; i < n; i++)
        g[i] += t->emb_peer[i];
    return MOE_OK;
}

moe_status moe_trainer_step(moe_trainer *t, const int32_t *inputs, const int32_t *targets, long it,
                            moe_train_metrics *r)
{
    const moe_config *c = &t->cfg;
    int mb = c->micro_batch_size, T = c->seq_length;
    int micro_global = c->global_batch_size / mb;
    int micro = micro_global / t->par.dp_size;
    double tokens = (double)c->global_batch_size * T;
    double sums[3] = {0, 0, 0}; /* lm, aux, z */
    float lm_scale = (float)(1.0 / tokens), aux_scale = (float)(1.0 / micro_global);

    moe_model_zero_grad(t->model);
    if (t->par.pp_size > 1)
        MOE_TRY(run_pipeline(t, inputs, targets, lm_scale, aux_scale, sums));
    else
        MOE_TRY(run_micro_batches(t, inputs, targets, micro, lm_scale, aux_scale, sums));
    MOE_TRY(moe_model_finish_grad_sync(t->model));
    MOE_TRY(sync_tied_embedding(t));
    MOE_TRY(moe_model_sum_expert_copies(t->model));
    /* each rank's share of the micro-batches it worked on (see moe_fwd_stats) */
    if (t->par.world)
        MOE_TRY(moe_allreduce(t->par.world, sums, 3, MOE_DT_F64, MOE_OP_SUM));
    memset(r, 0, sizeof *r);
    r->step = it + 1;
    r->loss = sums[0] / tokens;
    r->aux_loss = sums[1] / micro_global;
    r->z_loss = sums[2] / micro_global;
    if (!isfinite(r->loss))
        return moe_fail(MOE_ERR_SYSTEM, "loss is %g at step %ld: training diverged (lower --lr?)", r->loss, r->step);
    r->lr = moe_lr_at(c, it);
    MOE_TRY(optimizer_step(t, r->lr, &r->grad_norm));
    /* every rank's counts, every MoE layer (pipeline stages hold different ones) */
    if (t->par.world)
        MOE_TRY(moe_model_reduce_load(t->model, t->par.world));
    moe_model_update_expert_bias(t->model);
    moe_model_take_load(t->model, &r->load_imbalance, &r->dropped_frac);
    return MOE_OK;
}

/* Forward only, virtual stage by virtual stage, one micro-batch at a time. */
static moe_status eval_forward(moe_trainer *t, const int32_t *in, const int32_t *tg, int b, moe_fwd_stats *st)
{
    moe_model *m = t->model;
    int s = t->par.pp_rank, P = t->par.pp_size, V = moe_model_chunks(m);
    size_t n = moe_model_pp_numel(m, b);
    memset(st, 0, sizeof *st);
    for (int k = 0; k < V; k++) {
        moe_fwd_stats one;
        MOE_TRY(moe_model_set_chunk(m, k));
        if (s > 0 || k > 0)
            MOE_TRY(moe_recv(t->par.pp, moe_model_pp_input(m), n, MOE_DT_F32, (s + P - 1) % P, TAG_PP_FWD));
        MOE_TRY(moe_model_forward(m, in, tg, b, &one));
        st->lm_loss_sum += one.lm_loss_sum;
        st->aux_loss += one.aux_loss;
        st->z_loss += one.z_loss;
        st->tokens += one.tokens;
        if (s + 1 < P || k + 1 < V)
            MOE_TRY(moe_send(t->par.pp, moe_model_pp_output(m), n, MOE_DT_F32, (s + 1) % P, TAG_PP_FWD));
    }
    return moe_model_set_chunk(m, 0);
}

moe_status moe_trainer_eval(moe_trainer *t, const int32_t *inputs, const int32_t *targets, int count,
                            double *loss)
{
    int mb = t->cfg.micro_batch_size, T = t->cfg.seq_length;
    double sum[2] = {0, (double)count * T};
    for (int s = 0; s < count; s += mb) {
        int b = count - s < mb ? count - s : mb;
        moe_fwd_stats st;
        MOE_TRY(eval_forward(t, inputs + (size_t)s * T, targets + (size_t)s * T, b, &st));
        sum[0] += st.lm_loss_sum;
    }
    double im, dr;
    moe_model_take_load(t->model, &im, &dr); /* evaluation routing is not training load */
    if (t->par.world) { /* the loss counts once per micro-batch (tp rank 0 of each cp chunk, last stage) */
        int tp0 = (!t->par.tp || moe_comm_rank(t->par.tp) == 0) && t->par.pp_rank == t->par.pp_size - 1;
        int cp = t->par.cp ? moe_comm_size(t->par.cp) : 1;
        sum[1] = tp0 ? sum[1] / cp : 0;
        MOE_TRY(moe_allreduce(t->par.world, sum, 2, MOE_DT_F64, MOE_OP_SUM));
    }
    *loss = sum[0] / sum[1];
    return MOE_OK;
}
