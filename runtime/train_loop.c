/*
** train_loop: the training run around moe_trainer_step: data, evaluation,
** checkpoints, metrics, resume and stopping on a signal.
*/
#include <errno.h>
#include <omp.h>
#include <signal.h>
#include <string.h>
#include <sys/stat.h>

#include "runtime/base/log.h"
#include "runtime/base/mem.h"
#include "runtime/base/timer.h"
#include "runtime/base/checkpoint.h"
#include "runtime/data.h"
#include "runtime/peak.h"
#include "runtime/trainer.h"

static volatile sig_atomic_t stop_requested;

void moe_train_request_stop(void) { stop_requested = 1; }

/* Everything a run holds, so one cleanup path frees it. */
typedef struct {
    moe_config cfg;
    moe_trainer *trainer;
    moe_data *train, *val;
    int32_t *inputs, *targets;
    moe_metrics metrics;
    int metrics_open;
    char ckpt_root[MOE_PATH_MAX + 32];
    double peak_flops;
    double flops_per_token;
    uint64_t next_seq;
    long start_step;
} run_state;

/* ------------------------------------------------------------------------- */
/* checkpoints: every parameter, both AdamW moments, the expert bias          */

#define CKPT_PREFIXES 3

static moe_status ckpt_tensors(run_state *s, moe_ckpt_tensor **out, char **names, int *count)
{
    moe_model *m = moe_trainer_model(s->trainer);
    moe_adamw *o = moe_trainer_optimizer(s->trainer);
    int nt;
    const moe_param_info *t = moe_model_params(m, &nt);
    size_t nstate;
    float *state = moe_model_state_data(m, &nstate);
    int n = CKPT_PREFIXES * nt + (nstate > 0);
    MOE_TRY(moe_alloc((void **)out, sizeof **out * (size_t)n, "checkpoint tensor list"));
    MOE_TRY(moe_alloc((void **)names, (size_t)n * 96, "checkpoint tensor names"));
    static const char *prefix[CKPT_PREFIXES] = {"model.", "optim.m.", "optim.v."};
    float *base[CKPT_PREFIXES] = {moe_model_param_data(m), o->m, o->v};
    int k = 0;
    for (int p = 0; p < CKPT_PREFIXES; p++)
        for (int i = 0; i < nt; i++, k++) {
            char *name = *names + (size_t)k * 96;
            snprintf(name, 96, "%s%s", prefix[p], t[i].name);
            moe_ckpt_tensor *c = &(*out)[k];
            c->name = name;
            c->ndim = t[i].ndim;
            memcpy(c->shape, t[i].shape, sizeof c->shape);
            c->data = base[p] + t[i].offset;
            c->bytes = t[i].numel * sizeof(float);
        }
    if (nstate > 0) {
        moe_ckpt_tensor *c = &(*out)[k++];
        c->name = "state.expert_bias";
        c->ndim = 1;
        c->shape[0] = (int64_t)nstate;
        c->data = state;
        c->bytes = nstate * sizeof(float);
    }
    *count = k;
    return MOE_OK;
}

static moe_status save_checkpoint(run_state *s, long step)
{
    moe_ckpt_tensor *t = NULL;
    char *names = NULL;
    int n = 0;
    moe_status st = MOE_OK;
    char yaml[65536];
    FILE *f = fmemopen(yaml, sizeof yaml, "w");
    if (!f)
        return moe_fail(MOE_ERR_SYSTEM, "fmemopen: %s", strerror(errno));
    st = moe_config_write_yaml(&s->cfg, f);
    fclose(f);
    MOE_TRY(st);
    MOE_TRY_GOTO(ckpt_tensors(s, &t, &names, &n), st, done);
    moe_ckpt_meta meta = {.step = step, .data_next_sequence = s->next_seq};
    MOE_TRY_GOTO(moe_ckpt_save(s->ckpt_root, &meta, t, n, yaml, s->cfg.keep_checkpoints), st, done);
    moe_info("saved checkpoint at step %ld in %s", step, s->ckpt_root);
done:
    moe_free(t);
    moe_free(names);
    return st;
}

static moe_status load_checkpoint(run_state *s)
{
    moe_ckpt_tensor *t = NULL;
    char *names = NULL, dir[MOE_PATH_MAX + 64];
    int n = 0;
    moe_status st = MOE_OK;
    moe_ckpt_meta meta;
    MOE_TRY_GOTO(ckpt_tensors(s, &t, &names, &n), st, done);
    MOE_TRY_GOTO(moe_ckpt_load_path(s->cfg.load, &meta, t, n, dir, sizeof dir), st, done);
    s->start_step = meta.step;
    s->next_seq = meta.data_next_sequence;
    moe_trainer_optimizer(s->trainer)->step = meta.step;
    moe_info("resumed from %s at step %ld", dir, meta.step);
done:
    moe_free(t);
    moe_free(names);
    return st;
}

/* ------------------------------------------------------------------------- */

static moe_status make_dir(const char *path)
{
    char tmp[MOE_PATH_MAX + 64];
    snprintf(tmp, sizeof tmp, "%s/", path);
    for (char *p = tmp + 1; *p; p++) {
        if (*p != '/')
            continue;
        *p = '\0';
        if (mkdir(tmp, 0755) != 0 && errno != EEXIST)
            return moe_fail(MOE_ERR_IO, "cannot create directory %s: %s", tmp, strerror(errno));
        *p = '/';
    }
    return MOE_OK;
}

static moe_status open_run(run_state *s, const moe_config *cfg)
{
    memset(s, 0, sizeof *s);
    s->cfg = *cfg;
    moe_config *c = &s->cfg;
    if (c->num_threads > 0)
        omp_set_num_threads(c->num_threads);
    MOE_TRY(moe_data_open(&s->train, c->data_path, "train", c->seq_length, c->seed, 1));
    MOE_TRY(moe_data_open(&s->val, c->data_path, "val", c->seq_length, c->seed, 0));
    int vocab = moe_data_vocab(s->train);
    if (c->vocab_size == 0)
        c->vocab_size = vocab;
    if (c->vocab_size < vocab)
        return moe_fail(MOE_ERR_USAGE, "vocab-size %d is smaller than the data's vocabulary (%d) in %s",
                        c->vocab_size, vocab, c->data_path);
    MOE_TRY(moe_config_validate(c));
    MOE_TRY(moe_trainer_create(&s->trainer, c));

    size_t tokens = (size_t)c->global_batch_size * c->seq_length;
    MOE_TRY(moe_alloc((void **)&s->inputs, tokens * sizeof(int32_t), "batch inputs"));
    MOE_TRY(moe_alloc((void **)&s->targets, tokens * sizeof(int32_t), "batch targets"));

    MOE_TRY(make_dir(c->run_dir));
    if (c->save[0])
        snprintf(s->ckpt_root, sizeof s->ckpt_root, "%s", c->save);
    else
        snprintf(s->ckpt_root, sizeof s->ckpt_root, "%s/checkpoints", c->run_dir);
    if (c->load[0])
        MOE_TRY(load_checkpoint(s));
    MOE_TRY(moe_metrics_open(&s->metrics, c->run_dir, c->train_iters, s->start_step > 0));
    s->metrics_open = 1;

    moe_peak peak;
    MOE_TRY(moe_peak_get(&peak));
    s->peak_flops = peak.gflops * 1e9;
    s->flops_per_token = moe_flops_per_token(c);
    moe_info("model: %zu parameter floats, %.1f MFLOP per token; peak %.1f GFLOP/s (%d threads)",
             moe_model_num_params(moe_trainer_model(s->trainer)), s->flops_per_token / 1e6,
             peak.gflops, peak.threads);
    return MOE_OK;
}

static void close_run(run_state *s)
{
    if (s->metrics_open)
        moe_metrics_close(&s->metrics);
    moe_free(s->inputs);
    moe_free(s->targets);
    moe_data_close(s->train);
    moe_data_close(s->val);
    moe_trainer_free(s->trainer);
}

static moe_status evaluate(run_state *s, long step, double *val_loss)
{
    const moe_config *c = &s->cfg;
    int count = c->eval_iters * c->global_batch_size;
    int chunk = c->global_batch_size;
    double sum = 0;
    for (int i = 0; i < count; i += chunk) {
        uint64_t first = (uint64_t)i % moe_data_num_windows(s->val);
        MOE_TRY(moe_data_get(s->val, first, chunk, s->inputs, s->targets));
        double l;
        MOE_TRY(moe_trainer_eval(s->trainer, s->inputs, s->targets, chunk, &l));
        sum += l * chunk;
    }
    *val_loss = sum / count;
    return moe_metrics_eval(&s->metrics, step, *val_loss);
}

static moe_status train_loop(run_state *s, moe_run_result *res)
{
    const moe_config *c = &s->cfg;
    double tokens = (double)c->global_batch_size * c->seq_length;
    for (long it = s->start_step; it < c->train_iters; it++) {
        double t0 = moe_now();
        MOE_TRY(moe_data_get(s->train, s->next_seq, c->global_batch_size, s->inputs, s->targets));
        s->next_seq += (uint64_t)c->global_batch_size;
        moe_train_metrics r;
        MOE_TRY(moe_trainer_step(s->trainer, s->inputs, s->targets, it, &r));
        double dt = moe_now() - t0;
        r.step_ms = dt * 1e3;
        r.tokens_per_s = tokens / dt;
        r.tflops = r.tokens_per_s * s->flops_per_token / 1e12;
        r.mfu = r.tflops * 1e12 / s->peak_flops;
        int print = c->log_interval > 0 && (r.step % c->log_interval == 0 || r.step == c->train_iters);
        MOE_TRY(moe_metrics_train(&s->metrics, &r, print));
        res->steps_done = r.step;
        res->last_loss = r.loss;
        if (c->eval_interval > 0 && (r.step % c->eval_interval == 0 || r.step == c->train_iters))
            MOE_TRY(evaluate(s, r.step, &res->last_val_loss));
        int periodic = c->save_interval > 0 && r.step % c->save_interval == 0;
        if (periodic || r.step == c->train_iters || stop_requested)
            MOE_TRY(save_checkpoint(s, r.step));
        if (stop_requested) {
            res->stopped_early = 1;
            moe_info("stop requested: saved step %ld, exiting", r.step);
            break;
        }
    }
    return MOE_OK;
}

moe_status moe_train_run(const moe_config *cfg, moe_run_result *res)
{
    run_state s;
    memset(res, 0, sizeof *res);
    res->last_val_loss = -1;
    moe_status st = open_run(&s, cfg);
    if (st == MOE_OK)
        st = train_loop(&s, res);
    if (st != MOE_OK)
        moe_trace_frame(__FILE__, __LINE__);
    close_run(&s);
    return st;
}
