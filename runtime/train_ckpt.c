/*
** With the distributed optimizer the moments are sharded: save all-gathers
** them into full-size flat buffers first and load keeps this rank's shard,
** so the checkpoint is the same either way and loads with the flag on or
** off. Those two buffers (2 x the parameter count) live only during the call.
*/
#include "runtime/train_ckpt.h"

#include <errno.h>
#include <string.h>

#include "runtime/base/checkpoint.h"
#include "runtime/base/log.h"
#include "runtime/base/mem.h"

#define PREFIXES 3
#define NAME_MAX_LEN 96

/* The tensor list plus the staging buffers of gathered expert tensors. */
typedef struct {
    moe_ckpt_tensor *t;
    char *names;
    float **staged; /* [n]: full expert tensor, or NULL when the data is the rank's own */
    int n;
} ckpt_list;

static void list_free(ckpt_list *l)
{
    for (int i = 0; l->staged && i < l->n; i++)
        moe_free(l->staged[i]);
    moe_free(l->staged);
    moe_free(l->t);
    moe_free(l->names);
    memset(l, 0, sizeof *l);
}

static moe_status add(ckpt_list *l, const char *prefix, const moe_param_info *p, float *data, int ep_size)
{
    moe_ckpt_tensor *c = &l->t[l->n];
    char *name = l->names + (size_t)l->n * NAME_MAX_LEN;
    snprintf(name, NAME_MAX_LEN, "%s%s", prefix, p->name);
    c->name = name;
    c->ndim = p->ndim;
    memcpy(c->shape, p->shape, sizeof c->shape);
    c->data = data;
    c->bytes = p->numel * sizeof(float);
    if (p->is_expert && ep_size > 1) {
        c->shape[0] *= ep_size;
        c->bytes *= (size_t)ep_size;
        MOE_TRY(moe_alloc((void **)&l->staged[l->n], c->bytes, "checkpoint expert staging"));
        c->data = l->staged[l->n];
    }
    l->n++;
    return MOE_OK;
}

/* AdamW moments in the flat parameter layout: the optimizer's own, or, with
** the distributed optimizer, full-size buffers (zero gaps) that the shards are
** gathered into before a save and taken from after a load. */
typedef struct {
    float *m, *v;
    int owned;
} moments;

static void moments_free(moments *mo)
{
    if (mo->owned) {
        moe_free(mo->m);
        moe_free(mo->v);
    }
    memset(mo, 0, sizeof *mo);
}

static moe_status moments_get(moe_trainer *tr, moments *mo)
{
    moe_adamw *o = moe_trainer_optimizer(tr);
    memset(mo, 0, sizeof *mo);
    if (!moe_trainer_distopt(tr)) {
        mo->m = o->m;
        mo->v = o->v;
        return MOE_OK;
    }
    mo->owned = 1;
    size_t bytes = moe_model_num_params(moe_trainer_model(tr)) * sizeof(float);
    MOE_TRY(moe_alloc((void **)&mo->m, bytes, "checkpoint AdamW first moments"));
    MOE_TRY(moe_alloc((void **)&mo->v, bytes, "checkpoint AdamW second moments"));
    return MOE_OK;
}

static moe_status build(moe_trainer *tr, const moments *mo, ckpt_list *l)
{
    moe_model *m = moe_trainer_model(tr);
    const moe_trainer_par *par = moe_trainer_parallel(tr);
    int ep_size = par->ep ? moe_comm_size(par->ep) : 1;
    int nt;
    const moe_param_info *t = moe_model_params(m, &nt);
    size_t nstate;
    float *state = moe_model_state_data(m, &nstate);
    int cap = PREFIXES * nt + 1;
    memset(l, 0, sizeof *l);
    MOE_TRY(moe_alloc((void **)&l->t, sizeof *l->t * (size_t)cap, "checkpoint tensor list"));
    MOE_TRY(moe_alloc((void **)&l->names, (size_t)cap * NAME_MAX_LEN, "checkpoint tensor names"));
    MOE_TRY(moe_alloc((void **)&l->staged, sizeof *l->staged * (size_t)cap, "checkpoint staging"));
    static const char *prefix[PREFIXES] = {"model.", "optim.m.", "optim.v."};
    float *base[PREFIXES] = {moe_model_param_data(m), mo->m, mo->v};
    for (int p = 0; p < PREFIXES; p++)
        for (int i = 0; i < nt; i++)
            MOE_TRY(add(l, prefix[p], &t[i], base[p] + t[i].offset, ep_size));
    if (nstate > 0) {
        moe_param_info bias = {.name = "expert_bias", .ndim = 1, .shape = {(int64_t)nstate}, .numel = nstate};
        MOE_TRY(add(l, "state.", &bias, state, 1));
    }
    return MOE_OK;
}

/* Local expert slice <-> staged full tensor. The map is contiguous, so the
** ep group's rank order is expert order and an all-gather assembles it. */
static moe_status gather_experts(moe_trainer *tr, ckpt_list *l, float *const *local)
{
    const moe_trainer_par *par = moe_trainer_parallel(tr);
    for (int i = 0; i < l->n; i++)
        if (l->staged[i]) {
            size_t count = l->t[i].bytes / sizeof(float) / (size_t)moe_comm_size(par->ep);
            MOE_TRY(moe_allgather(par->ep, local[i], l->staged[i], count, MOE_DT_F32));
        }
    return MOE_OK;
}

static void scatter_experts(moe_trainer *tr, ckpt_list *l, float *const *local)
{
    const moe_trainer_par *par = moe_trainer_parallel(tr);
    for (int i = 0; i < l->n; i++)
        if (l->staged[i]) {
            size_t count = l->t[i].bytes / sizeof(float) / (size_t)moe_comm_size(par->ep);
            memcpy(local[i], l->staged[i] + count * (size_t)moe_comm_rank(par->ep), count * sizeof(float));
        }
}

/* Where each list entry's rank-local data lives (before staging replaced it). */
static moe_status local_pointers(moe_trainer *tr, const moments *mo, const ckpt_list *l, float ***out)
{
    MOE_TRY(moe_alloc((void **)out, sizeof **out * (size_t)l->n, "checkpoint pointers"));
    moe_model *m = moe_trainer_model(tr);
    int nt;
    const moe_param_info *t = moe_model_params(m, &nt);
    float *base[PREFIXES] = {moe_model_param_data(m), mo->m, mo->v};
    int k = 0;
    for (int p = 0; p < PREFIXES; p++)
        for (int i = 0; i < nt; i++)
            (*out)[k++] = base[p] + t[i].offset;
    size_t nstate;
    if (k < l->n)
        (*out)[k++] = moe_model_state_data(m, &nstate);
    return MOE_OK;
}

static int world_rank(moe_trainer *tr)
{
    const moe_trainer_par *par = moe_trainer_parallel(tr);
    return par->world ? moe_comm_rank(par->world) : 0;
}

moe_status moe_train_save(moe_trainer *tr, const moe_config *cfg, const char *root, long step,
                          uint64_t next_seq)
{
    ckpt_list l = {0};
    moments mo = {0};
    float **local = NULL;
    char yaml[65536];
    moe_status st = MOE_OK;
    MOE_TRY_GOTO(moments_get(tr, &mo), st, done);
    MOE_TRY_GOTO(build(tr, &mo, &l), st, done);
    MOE_TRY_GOTO(local_pointers(tr, &mo, &l, &local), st, done);
    if (moe_trainer_distopt(tr))
        MOE_TRY_GOTO(moe_distopt_gather_moments(moe_trainer_distopt(tr), mo.m, mo.v), st, done);
    if (moe_trainer_parallel(tr)->ep)
        MOE_TRY_GOTO(gather_experts(tr, &l, local), st, done);
    if (world_rank(tr) == 0) {
        FILE *f = fmemopen(yaml, sizeof yaml, "w");
        if (!f)
            MOE_TRY_GOTO(moe_fail(MOE_ERR_SYSTEM, "fmemopen: %s", strerror(errno)), st, done);
        st = moe_config_write_yaml(cfg, f);
        fclose(f);
        MOE_TRY_GOTO(st, st, done);
        moe_ckpt_meta meta = {.step = step, .data_next_sequence = next_seq};
        MOE_TRY_GOTO(moe_ckpt_save(root, &meta, l.t, l.n, yaml, cfg->keep_checkpoints), st, done);
        moe_info("saved checkpoint at step %ld in %s", step, root);
    }
done:
    moe_free(local);
    list_free(&l);
    moments_free(&mo);
    return st;
}

moe_status moe_train_load(moe_trainer *tr, const char *path, long *step, uint64_t *next_seq,
                          char *loaded_dir, size_t cap)
{
    ckpt_list l = {0};
    moments mo = {0};
    float **local = NULL;
    moe_status st = MOE_OK;
    moe_ckpt_meta meta;
    MOE_TRY_GOTO(moments_get(tr, &mo), st, done);
    MOE_TRY_GOTO(build(tr, &mo, &l), st, done);
    MOE_TRY_GOTO(local_pointers(tr, &mo, &l, &local), st, done);
    MOE_TRY_GOTO(moe_ckpt_load_path(path, &meta, l.t, l.n, loaded_dir, cap), st, done);
    scatter_experts(tr, &l, local);
    if (moe_trainer_distopt(tr))
        moe_distopt_load_moments(moe_trainer_distopt(tr), mo.m, mo.v);
    *step = meta.step;
    *next_seq = meta.data_next_sequence;
    moe_trainer_optimizer(tr)->step = meta.step;
done:
    moe_free(local);
    list_free(&l);
    moments_free(&mo);
    return st;
}
