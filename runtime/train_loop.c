/*
** train_loop: the training run around moe_trainer_step: data, evaluation,
** checkpoints, metrics, resume and stopping on a signal.
*/
#include <errno.h>
#include <omp.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "planner/trace.h"
#include "runtime/base/cpu.h"
#include "runtime/base/fs.h"
#include "runtime/base/log.h"
#include "runtime/base/mem.h"
#include "runtime/base/timer.h"
#include "runtime/control.h"
#include "runtime/data.h"
#include "runtime/peak.h"
#include "runtime/train_ckpt.h"
#include "runtime/trainer.h"

static volatile sig_atomic_t stop_requested;

void moe_train_request_stop(void) { stop_requested = 1; }

/* Everything a run holds, so one cleanup path frees it. */
typedef struct {
    moe_config cfg;
    moe_trainer_par par;
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
    moe_trace trace;       /* rank 0: the windows recorded so far (--trace-routing) */
    long trace_first_step; /* first step of the window being counted */
} run_state;

static int is_root(const run_state *s) { return !s->par.world || moe_comm_rank(s->par.world) == 0; }

static moe_status save_checkpoint(run_state *s, long step)
{
    return moe_train_save(s->trainer, &s->cfg, s->ckpt_root, step, s->next_seq);
}

static moe_status load_checkpoint(run_state *s)
{
    char dir[MOE_PATH_MAX + 64];
    MOE_TRY(moe_train_load(s->trainer, s->cfg.load, &s->start_step, &s->next_seq, dir, sizeof dir));
    if (is_root(s))
        moe_info("resumed from %s at step %ld", dir, s->start_step);
    return MOE_OK;
}

/* ------------------------------------------------------------------------- */
/* routing traces: counted by the model, gathered here once per window       */

static moe_status trace_open(run_state *s)
{
    moe_model *m = moe_trainer_model(s->trainer);
    if (!s->cfg.trace_routing[0])
        return MOE_OK;
    if (moe_model_num_moe_layers(m) == 0)
        return moe_fail(MOE_ERR_USAGE, "trace-routing: the model has no MoE layers to trace");
    s->trace = (moe_trace){.layers = moe_model_num_moe_layers(m), .experts = s->cfg.num_experts,
                           .topk = s->cfg.moe_router_topk, .sources = s->par.world ? moe_comm_size(s->par.world) : 1};
    s->trace_first_step = s->start_step;
    return moe_model_set_trace(m, 1);
}

/* Ends the window [trace_first_step, step): every rank's counts to rank 0,
** which appends the window and rewrites the trace file (atomically). */
static moe_status trace_flush(run_state *s, long step)
{
    moe_trace *t = &s->trace;
    if (!s->cfg.trace_routing[0] || step <= s->trace_first_step)
        return MOE_OK;
    size_t nl = (size_t)t->layers * t->experts, nt = (size_t)(t->layers - 1) * t->experts * t->experts;
    size_t W = (size_t)t->sources;
    double *mine = NULL, *all = NULL, *trans = NULL;
    moe_trace_window *grown = NULL;
    moe_status st = MOE_OK;
    MOE_TRY_GOTO(moe_alloc((void **)&mine, nl * sizeof(double), "trace counts"), st, done);
    MOE_TRY_GOTO(moe_alloc((void **)&all, W * nl * sizeof(double), "trace counts"), st, done);
    MOE_TRY_GOTO(moe_alloc((void **)&trans, (nt ? nt : 1) * sizeof(double), "trace transitions"), st, done);
    moe_model_take_trace(moe_trainer_model(s->trainer), mine, trans);
    if (s->par.world) {
        MOE_TRY_GOTO(moe_allgather(s->par.world, mine, all, nl, MOE_DT_F64), st, done);
        if (nt)
            MOE_TRY_GOTO(moe_allreduce(s->par.world, trans, nt, MOE_DT_F64, MOE_OP_SUM), st, done);
    } else {
        memcpy(all, mine, nl * sizeof(double));
    }
    if (is_root(s)) {
        /* gathered as [source][layer][expert]; the trace keeps [layer][source][expert] */
        moe_trace_window w = {.first_step = s->trace_first_step, .steps = step - s->trace_first_step,
                              .transitions = nt ? trans : NULL};
        MOE_TRY_GOTO(moe_alloc((void **)&w.load, W * nl * sizeof(double), "trace window"), st, done);
        for (size_t r = 0; r < W; r++)
            for (int l = 0; l < t->layers; l++)
                memcpy(w.load + ((size_t)l * W + r) * t->experts, all + r * nl + (size_t)l * t->experts,
                       (size_t)t->experts * sizeof(double));
        grown = realloc(t->windows, sizeof *t->windows * (size_t)(t->nwindows + 1));
        if (!grown) {
            moe_free(w.load);
            MOE_TRY_GOTO(moe_fail(MOE_ERR_NOMEM, "out of memory growing the routing trace"), st, done);
        }
        t->windows = grown;
        t->windows[t->nwindows++] = w;
        trans = NULL; /* the window owns it now */
        MOE_TRY_GOTO(moe_trace_write(s->cfg.trace_routing, t), st, done);
    }
    s->trace_first_step = step;
done:
    moe_free(mine);
    moe_free(all);
    moe_free(trans);
    return st;
}

/* ------------------------------------------------------------------------- */

static moe_status open_run(run_state *s, const moe_config *cfg, const moe_trainer_par *par)
{
    memset(s, 0, sizeof *s);
    s->cfg = *cfg;
    s->par.dp_size = 1;
    if (par)
        s->par = *par;
    moe_config *c = &s->cfg;
    moe_cpu_set_threads(c->num_threads);
    MOE_TRY(moe_data_open(&s->train, c->data_path, "train", c->seq_length, c->seed, 1));
    MOE_TRY(moe_data_open(&s->val, c->data_path, "val", c->seq_length, c->seed, 0));
    int vocab = moe_data_vocab(s->train);
    if (c->vocab_size == 0)
        c->vocab_size = vocab;
    if (c->vocab_size < vocab)
        return moe_fail(MOE_ERR_USAGE, "vocab-size %d is smaller than the data's vocabulary (%d) in %s",
                        c->vocab_size, vocab, c->data_path);
    MOE_TRY(moe_config_validate(c));
    MOE_TRY(moe_trainer_create_parallel(&s->trainer, c, &s->par));

    size_t tokens = (size_t)c->global_batch_size / s->par.dp_size * c->seq_length;
    MOE_TRY(moe_alloc((void **)&s->inputs, tokens * sizeof(int32_t), "batch inputs"));
    MOE_TRY(moe_alloc((void **)&s->targets, tokens * sizeof(int32_t), "batch targets"));

    if (is_root(s))
        MOE_TRY(moe_mkdir_p(c->run_dir));
    if (c->save[0])
        snprintf(s->ckpt_root, sizeof s->ckpt_root, "%s", c->save);
    else
        snprintf(s->ckpt_root, sizeof s->ckpt_root, "%s/checkpoints", c->run_dir);
    if (c->load[0])
        MOE_TRY(load_checkpoint(s));
    MOE_TRY(trace_open(s));
    if (is_root(s) && !moe_control_active()) { /* with a coordinator, it writes the metrics */
        MOE_TRY(moe_metrics_open(&s->metrics, c->run_dir, c->train_iters, s->start_step > 0));
        s->metrics_open = 1;
    }

    /* MFU's denominator: the measured per-core GEMM rate times the cores the
    ** job really has (ranks x threads, but no more than the host's cores when
    ** ranks oversubscribe it). Rank 0 measures (or reads) it once. */
    moe_peak peak = {0};
    if (is_root(s))
        MOE_TRY(moe_peak_get(&peak));
    double per_core = peak.threads > 0 ? peak.gflops / peak.threads : 0;
    if (s->par.world)
        MOE_TRY(moe_allreduce(s->par.world, &per_core, 1, MOE_DT_F64, MOE_OP_MAX));
    int world = s->par.world ? moe_comm_size(s->par.world) : 1;
    double cores = (double)world * omp_get_max_threads();
    long host_cores = sysconf(_SC_NPROCESSORS_ONLN);
    if (world > 1 && host_cores > 0 && cores > host_cores)
        cores = (double)host_cores; /* one host for now: the launcher starts ranks locally */
    s->peak_flops = per_core * 1e9 * cores;
    s->flops_per_token = moe_flops_per_token(c);
    if (is_root(s))
        moe_info("model: %zu parameter floats, %.1f MFLOP per token; peak %.1f GFLOP/s (%d threads)",
             moe_model_num_params(moe_trainer_model(s->trainer)), s->flops_per_token / 1e6,
             peak.gflops, peak.threads);
    return MOE_OK;
}

static void close_run(run_state *s)
{
    moe_trace_free(&s->trace);
    if (s->metrics_open)
        moe_metrics_close(&s->metrics);
    moe_free(s->inputs);
    moe_free(s->targets);
    moe_data_close(s->train);
    moe_data_close(s->val);
    moe_trainer_free(s->trainer);
}

/* This rank's share of `count` sequences starting at global sequence `first`:
** global micro-batch j goes to data-parallel rank j % dp_size. */
static moe_status fetch_local(run_state *s, moe_data *d, uint64_t first, int count, uint64_t wrap)
{
    int mb = s->cfg.micro_batch_size, T = s->cfg.seq_length, dp = s->par.dp_size;
    int local = count / mb / dp;
    for (int i = 0; i < local; i++) {
        uint64_t seq = first + (uint64_t)(i * dp + s->par.dp_rank) * (uint64_t)mb;
        if (wrap)
            seq %= wrap;
        size_t off = (size_t)i * mb * T;
        MOE_TRY(moe_data_get(d, seq, mb, s->inputs + off, s->targets + off));
    }
    return MOE_OK;
}

static moe_status evaluate(run_state *s, long step, double *val_loss)
{
    const moe_config *c = &s->cfg;
    moe_model *m = moe_trainer_model(s->trainer);
    if (c->trace_routing[0]) /* evaluation routing is not training routing */
        MOE_TRY(moe_model_set_trace(m, 0));
    int chunk = c->global_batch_size, local = chunk / s->par.dp_size;
    double sum = 0;
    for (int i = 0; i < c->eval_iters; i++) {
        uint64_t first = ((uint64_t)i * chunk) % moe_data_num_windows(s->val);
        MOE_TRY(fetch_local(s, s->val, first, chunk, moe_data_num_windows(s->val)));
        double l;
        MOE_TRY(moe_trainer_eval(s->trainer, s->inputs, s->targets, local, &l));
        sum += l;
    }
    *val_loss = sum / c->eval_iters;
    if (c->trace_routing[0])
        MOE_TRY(moe_model_set_trace(m, 1));
    moe_control_report_eval(step, *val_loss); /* no-op without a coordinator */
    return s->metrics_open ? moe_metrics_eval(&s->metrics, step, *val_loss) : MOE_OK;
}

/* Every rank must stop at the same step, whichever got the signal. */
static moe_status agree_stop(run_state *s, int *stop)
{
    int32_t flag = stop_requested ? 1 : 0;
    if (s->par.world)
        MOE_TRY(moe_allreduce(s->par.world, &flag, 1, MOE_DT_I32, MOE_OP_MAX));
    *stop = flag;
    return MOE_OK;
}

static moe_status train_loop(run_state *s, moe_run_result *res)
{
    const moe_config *c = &s->cfg;
    double tokens = (double)c->global_batch_size * c->seq_length;
    for (long it = s->start_step; it < c->train_iters; it++) {
        double t0 = moe_now();
        MOE_TRY(fetch_local(s, s->train, s->next_seq, c->global_batch_size, 0));
        s->next_seq += (uint64_t)c->global_batch_size;
        moe_train_metrics r;
        MOE_TRY(moe_trainer_step(s->trainer, s->inputs, s->targets, it, &r));
        double dt = moe_now() - t0;
        r.step_ms = dt * 1e3;
        r.tokens_per_s = tokens / dt;
        r.tflops = r.tokens_per_s * s->flops_per_token / 1e12;
        r.mfu = r.tflops * 1e12 / s->peak_flops;
        int print = c->log_interval > 0 && (r.step % c->log_interval == 0 || r.step == c->train_iters);
        if (s->metrics_open)
            MOE_TRY(moe_metrics_train(&s->metrics, &r, print));
        moe_control_report_train(&r); /* no-op without a coordinator */
        res->steps_done = r.step;
        res->last_loss = r.loss;
        if (c->trace_routing[0] && (r.step % c->trace_window == 0 || r.step == c->train_iters))
            MOE_TRY(trace_flush(s, r.step));
        if (c->eval_interval > 0 && (r.step % c->eval_interval == 0 || r.step == c->train_iters))
            MOE_TRY(evaluate(s, r.step, &res->last_val_loss));
        int stop;
        MOE_TRY(agree_stop(s, &stop));
        int periodic = c->save_interval > 0 && r.step % c->save_interval == 0;
        if (periodic || r.step == c->train_iters || stop)
            MOE_TRY(save_checkpoint(s, r.step));
        if (stop) {
            MOE_TRY(trace_flush(s, r.step));
            res->stopped_early = 1;
            if (is_root(s))
                moe_info("stop requested: saved step %ld, exiting", r.step);
            break;
        }
    }
    return MOE_OK;
}

moe_status moe_train_run(const moe_config *cfg, const moe_trainer_par *par, moe_run_result *res)
{
    run_state s;
    memset(res, 0, sizeof *res);
    res->last_val_loss = -1;
    moe_status st = open_run(&s, cfg, par);
    if (st == MOE_OK)
        st = train_loop(&s, res);
    if (st != MOE_OK)
        moe_trace_frame(__FILE__, __LINE__);
    close_run(&s);
    return st;
}
