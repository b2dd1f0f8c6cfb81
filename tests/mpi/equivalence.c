/*
** Every parallel layout trains the same model as one rank: each rank runs the
** single-rank reference in-process and the parallel run side by side on the
** same global batches, and compares the loss, aux and z losses and grad norm
** of every step (relative 1e-5), and after the first step every gradient
** tensor (expert tensors against this rank's slice of the reference).
**
** usage: mpirun -np W mpi_equivalence --ep N [--experts E] [--capacity F]
**        [--starve] [--steps S] [--distopt] [--placement-permute] [--placement-replicate]
** --starve routes nothing to the second EP rank's experts (a huge negative
** expert bias), so that rank sends and receives zero rows.
** --distopt runs the parallel side with the distributed optimizer. Its flat
** gradients are then this rank's unreduced ones (the sums exist only as
** shards), so after the first step the test compares the AdamW moments
** instead, gathered from the shards: m = (1 - beta1) * clip * g and
** v = (1 - beta2) * (clip * g)^2 of the FULL summed gradient, tensor by tensor,
** which checks the reduce-scatter, the shard layout and the gather at once.
** --placement-permute trains with --expert-placement: a plan (written with
** moe_plan_write) that scatters each MoE layer's experts over the ranks, a
** different balanced permutation per layer, and every MoE layer is MoE. Expert
** rows are compared by global id through the layer's map. Then checkpoints
** cross placements: saved under the plan, loaded by a contiguous run and by
** one process (whole tensors), saved again contiguous and loaded back under
** the plan; every parameter and moment must match bit for bit.
** --placement-replicate: the same with a replicated plan: on top of the
** permutation every rank holds one extra copy (a hot expert gets one on every
** rank), and a replicated expert's tokens split unevenly among its copies.
** Bit-identical checkpoints then also show that the copies stayed identical.
*/
#include <check.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <unistd.h>

#include "planner/placement.h"
#include "planner/plan.h"
#include "runtime/base/rng.h"
#include "runtime/train_ckpt.h"
#include "runtime/world.h"

static int g_ep = 1, g_experts = 4, g_starve, g_steps = 10, g_distopt, g_permute, g_replicate, g_blocking;
static int g_tp = 1, g_sp, g_cp = 1, g_etp = 1, g_ckpt, g_pp = 1, g_layers = 2, g_untie, g_overlap, g_vpl, g_first, g_last;
static double g_capacity;
static moe_comm *g_world;

static moe_config make_config(int world)
{
    moe_config c;
    moe_config_defaults(&c);
    c.num_layers = g_layers;
    c.hidden_size = 32;
    c.num_attention_heads = 4;
    c.num_query_groups = 2;
    c.ffn_hidden_size = 48;
    c.seq_length = 16;
    c.vocab_size = 40;
    c.num_experts = g_experts;
    c.moe_router_topk = 2;
    c.moe_ffn_hidden_size = 24;
    c.moe_shared_expert_intermediate_size = 16;
    c.moe_router_enable_expert_bias = 1;
    c.moe_expert_capacity_factor = g_capacity;
    c.micro_batch_size = 2;
    c.global_batch_size = 8;
    c.lr = 1e-2;
    c.lr_warmup_iters = 2;
    c.train_iters = g_steps;
    c.expert_model_parallel_size = g_ep;
    c.tensor_model_parallel_size = g_tp;
    c.sequence_parallel = g_sp;
    c.context_parallel_size = g_cp;
    c.expert_tensor_parallel_size = g_etp;
    c.pipeline_model_parallel_size = g_pp;
    c.untie_embeddings_and_output_weights = g_untie;
    c.moe_overlap = g_overlap;
    c.num_layers_per_virtual_pipeline_stage = g_vpl;
    c.decoder_first_pipeline_num_layers = g_first;
    c.decoder_last_pipeline_num_layers = g_last;
    c.nproc = world;
    /* dense layer 0 then MoE (every layer MoE with a placement plan) */
    char freq[64] = "[";
    for (int l = 0; l < g_layers; l++)
        strcat(freq, g_permute || l > 0 ? (l ? ",1" : "1") : "0");
    strcat(freq, "]");
    snprintf(c.moe_layer_freq, sizeof c.moe_layer_freq, "%s", freq);
    return c;
}

/* Global sequence s of a step: deterministic tokens, targets shifted by one. */
static void sequence(long step, int s, int T, int V, int32_t *in, int32_t *tg)
{
    moe_rng r;
    moe_rng_seed(&r, (uint64_t)step * 1000 + (uint64_t)s);
    int32_t buf[T + 1];
    for (int i = 0; i <= T; i++)
        buf[i] = (int32_t)moe_rng_below(&r, (uint64_t)V);
    memcpy(in, buf, sizeof(int32_t) * T);
    memcpy(tg, buf + 1, sizeof(int32_t) * T);
}

/* Sequences of global micro-batches first_micro, first_micro + stride, ... */
static void batch(long step, const moe_config *c, int first_micro, int stride, int32_t *in, int32_t *tg)
{
    int mb = c->micro_batch_size, T = c->seq_length, k = 0;
    for (int j = first_micro; j < c->global_batch_size / mb; j += stride)
        for (int b = 0; b < mb; b++, k++)
            sequence(step, j * mb + b, T, c->vocab_size, in + (size_t)k * T, tg + (size_t)k * T);
}

static void starve(moe_model *m, const moe_expert_map *maps, int E)
{
    size_t n;
    float *bias = moe_model_state_data(m, &n);
    for (size_t i = 0; i < n; i++) {
        int e = (int)(i % (size_t)E);
        int owner = maps ? maps[i / (size_t)E].expert_rank[e] : e / (E / g_ep);
        if (owner == 1)
            bias[i] = -1e4f;
    }
}

static void assert_close(double a, double b, const char *what, long step)
{
    double rel = fabs(a - b) / fmax(fabs(b), 1e-12);
    ck_assert_msg(rel <= 1e-5, "step %ld %s: parallel %.9g vs single %.9g (rel %.2e)", step, what, a, b, rel);
}

/* The map of table entry p's MoE layer ("layers.L. ..."). */
static const moe_expert_map *layer_map(const moe_model *m, const moe_expert_map *maps, const moe_param_info *p)
{
    const moe_config *c = moe_model_config(m);
    int L = -1, li = 0;
    ck_assert_msg(sscanf(p->name, "layers.%d.", &L) == 1 && L >= 0 && L < c->num_layers, "%s", p->name);
    for (int k = 0; k < L; k++)
        li += c->moe_layer_is_moe[k] != 0;
    return &maps[li];
}

/* The reference's values of parallel entry pp (reference entry pr, flat
** values ref): its experts through the layer's map, then its tensor-parallel
** piece. out gets pp->numel floats. */
static void ref_local(moe_model *par, const moe_expert_map *maps, const moe_param_info *pp,
                      const moe_param_info *pr, const float *ref, float *out)
{
    size_t full = moe_param_full_numel(pp);
    float *sel = malloc(full * sizeof(float));
    ck_assert(sel);
    if (pp->is_expert) {
        size_t per = pr->numel / (size_t)pr->shape[0];
        const moe_expert_map *map = layer_map(par, maps, pp);
        for (int j = 0; j < (int)pp->cut.full_shape[0]; j++)
            memcpy(sel + (size_t)j * per, ref + pr->offset + (size_t)map->local_experts[j] * per, per * sizeof(float));
    } else {
        ck_assert_int_eq((int)full, (int)pr->numel);
        memcpy(sel, ref + pr->offset, full * sizeof(float));
    }
    moe_param_cut_extract(pp, pp->cut.part, sel, out);
    free(sel);
}

/* Parallel flat-layout values (gradients, moments) against the reference's,
** tensor by tensor (see ref_local). */
/* The reference's entry of the same name (a pipeline stage holds a subset). */
static const moe_param_info *by_name(moe_model *ref, const char *name)
{
    int nr;
    const moe_param_info *tr = moe_model_params(ref, &nr);
    for (int i = 0; i < nr; i++)
        if (strcmp(tr[i].name, name) == 0)
            return &tr[i];
    ck_abort_msg("the single-rank model has no tensor %s", name);
    return NULL;
}

static void compare_tensors(moe_model *par, const float *gp, moe_model *ref, const float *gr,
                            const moe_expert_map *maps, const char *what)
{
    int np;
    const moe_param_info *tp = moe_model_params(par, &np);
    for (int i = 0; i < np; i++) {
        float *want = malloc(tp[i].numel * sizeof(float));
        ck_assert(want);
        ref_local(par, maps, &tp[i], by_name(ref, tp[i].name), gr, want);
        double num = 0, den = 0;
        for (size_t j = 0; j < tp[i].numel; j++) {
            double d = (double)gp[tp[i].offset + j] - want[j];
            num += d * d;
            den += (double)want[j] * want[j];
        }
        free(want);
        double rel = den > 0 ? sqrt(num / den) : sqrt(num);
        ck_assert_msg(rel <= 1e-5, "%s %s differs: relative %.3e", what, tp[i].name, rel);
    }
}

static void compare_first_step(moe_trainer *par, moe_trainer *ref, const moe_expert_map *maps)
{
    moe_model *mp = moe_trainer_model(par), *mr = moe_trainer_model(ref);
    moe_distopt *d = moe_trainer_distopt(par);
    if (!d) {
        compare_tensors(mp, moe_model_grad_data(mp), mr, moe_model_grad_data(mr), maps, "gradient");
        return;
    }
    size_t n = moe_model_num_params(mp);
    float *m = calloc(n, sizeof(float)), *v = calloc(n, sizeof(float));
    ck_assert(m && v);
    ck_assert_msg(moe_distopt_gather_moments(d, m, v) == MOE_OK, "%s", moe_errmsg());
    moe_adamw *o = moe_trainer_optimizer(ref);
    compare_tensors(mp, m, mr, o->m, maps, "first moment (summed gradient)");
    compare_tensors(mp, v, mr, o->v, maps, "second moment (squared summed gradient)");
    free(m);
    free(v);
}

/* A temp path shared by all ranks: rank 0's pid names it. */
static void shared_path(const char *what, char *path, size_t cap)
{
    int32_t pid = moe_comm_rank(g_world) == 0 ? (int32_t)getpid() : 0;
    ck_assert(moe_allreduce(g_world, &pid, 1, MOE_DT_I32, MOE_OP_MAX) == MOE_OK);
    snprintf(path, cap, "/tmp/moe_equiv_%d_%s", (int)pid, what);
}

/* Canonical copy of expert e of MoE layer l on rank (3e + 1 + l) mod ep:
** scattered, a different permutation per layer, and balanced (3 is odd and
** ep a power of two, so each residue gets E/ep). */
static int permuted_rank(int l, int e, int ep) { return (3 * e + 1 + l) % ep; }

/* With g_replicate every rank also holds a copy of the layer's hot expert
** (2 + l) mod E, except its canonical holder, which takes a copy of the next
** expert it lacks: the hot expert has ep copies, another one two. A
** replicated expert's canonical copy takes 0.1 of its tokens, the other
** copies share the rest. */
static void fill_plan_layer(moe_plan *p, int l)
{
    int E = p->experts, ep = p->ep, hot = (2 + l) % E;
    for (int e = 0; e < E; e++) {
        p->ncopies[l * E + e] = 1;
        moe_plan_copies(p, l, e)[0] = (moe_plan_copy){permuted_rank(l, e, ep), 1.0};
    }
    for (int r = 0; g_replicate && r < ep; r++) {
        int e = hot;
        while (permuted_rank(l, e, ep) == r || (e != hot && p->ncopies[l * E + e] > 1))
            e = (e + 1) % E;
        moe_plan_copies(p, l, e)[p->ncopies[l * E + e]++] = (moe_plan_copy){r, 0};
    }
    for (int e = 0; e < E; e++) {
        int n = p->ncopies[l * E + e];
        moe_plan_copy *c = moe_plan_copies(p, l, e);
        for (int k = 0; n > 1 && k < n; k++)
            c[k].share = k == 0 ? 0.1 : 0.9 / (n - 1);
    }
}

/* Rank 0 writes the plan (see fill_plan_layer). */
static void write_permuted_plan(const moe_config *c, const char *path)
{
    int layers = 0, E = c->num_experts, ep = c->expert_model_parallel_size;
    for (int l = 0; l < c->num_layers; l++)
        layers += c->moe_layer_is_moe[l] != 0;
    if (moe_comm_rank(g_world) == 0) {
        moe_plan p;
        ck_assert_msg(moe_plan_alloc(&p, layers, E, ep, g_replicate ? ep : 1) == MOE_OK, "%s", moe_errmsg());
        p.ranks_per_node = ep;
        p.slots_per_rank = E / ep + g_replicate;
        snprintf(p.method, sizeof p.method, g_replicate ? "test-replicate" : "test-permute");
        for (int l = 0; l < layers; l++)
            fill_plan_layer(&p, l);
        ck_assert_msg(moe_plan_write(path, &p) == MOE_OK, "%s", moe_errmsg());
        moe_plan_free(&p);
    }
    int32_t sync = 0; /* the file exists before anyone reads it */
    ck_assert(moe_allreduce(g_world, &sync, 1, MOE_DT_I32, MOE_OP_MAX) == MOE_OK);
}

/* Plans training refuses: a replicated expert under a capacity factor, and
** a rank holding more copies than the others. Setup must fail with a usage
** error naming the file. */
static void refused_plans(const moe_config *base)
{
    int layers = 0, E = base->num_experts, ep = base->expert_model_parallel_size;
    for (int l = 0; l < base->num_layers; l++)
        layers += base->moe_layer_is_moe[l] != 0;
    static const char *want[2] = {"replicated experts need dropless routing", "the same number on every rank"};
    for (int kind = 0; kind < 2; kind++) {
        char path[256];
        shared_path(kind ? "unbalanced.pb" : "replicated.pb", path, sizeof path);
        if (moe_comm_rank(g_world) == 0) {
            moe_plan p;
            ck_assert_msg(moe_plan_alloc(&p, layers, E, ep, 2) == MOE_OK, "%s", moe_errmsg());
            p.ranks_per_node = ep;
            p.slots_per_rank = E;
            snprintf(p.method, sizeof p.method, "test-refused");
            for (int l = 0; l < layers; l++)
                for (int e = 0; e < E; e++) {
                    moe_plan_copy *c = p.copies + ((size_t)l * E + e) * p.max_copies;
                    p.ncopies[l * E + e] = 1;
                    c[0] = (moe_plan_copy){kind ? 0 : e % ep, 1.0};
                    if (kind == 0 && e < ep) { /* expert e also on the next rank: one extra copy each */
                        p.ncopies[l * E + e] = 2;
                        c[0].share = 0.5;
                        c[1] = (moe_plan_copy){(e + 1) % ep, 0.5};
                    }
                }
            ck_assert_msg(moe_plan_write(path, &p) == MOE_OK, "%s", moe_errmsg());
            moe_plan_free(&p);
        }
        int32_t sync = 0;
        ck_assert(moe_allreduce(g_world, &sync, 1, MOE_DT_I32, MOE_OP_MAX) == MOE_OK);
        moe_config c = *base;
        snprintf(c.expert_placement, sizeof c.expert_placement, "%s", path);
        if (kind == 0)
            c.moe_expert_capacity_factor = 1.5;
        moe_world w;
        moe_status st = moe_world_setup(&w, g_world, &c);
        ck_assert_msg(st == MOE_ERR_USAGE, "plan %s: setup gave %d (%s)", path, (int)st, moe_errmsg());
        ck_assert_msg(strstr(moe_errmsg(), want[kind]) && strstr(moe_errmsg(), path), "plan %s refused with: %s",
                      path, moe_errmsg());
        moe_error_clear();
        moe_world_free(&w);
        ck_assert(moe_allreduce(g_world, &sync, 1, MOE_DT_I32, MOE_OP_MAX) == MOE_OK);
        if (moe_comm_rank(g_world) == 0)
            unlink(path);
    }
}

/* Every parameter and AdamW moment of t (its experts placed by maps) equals,
** bit for bit, the whole-tensor values g (one process) holds for them. */
static void assert_same_as_global(moe_trainer *t, const moe_expert_map *maps, moe_trainer *g, const char *what)
{
    moe_model *mt = moe_trainer_model(t), *mg = moe_trainer_model(g);
    int nt;
    const moe_param_info *tt = moe_model_params(mt, &nt);
    const float *vt[3] = {moe_model_param_data(mt), moe_trainer_optimizer(t)->m, moe_trainer_optimizer(t)->v};
    float *gm = NULL, *gv = NULL; /* the distributed optimizer's moments, gathered */
    if (moe_trainer_distopt(t)) {
        size_t n = moe_model_num_params(mt);
        gm = calloc(n, sizeof(float));
        gv = calloc(n, sizeof(float));
        ck_assert(gm && gv);
        ck_assert_msg(moe_distopt_gather_moments(moe_trainer_distopt(t), gm, gv) == MOE_OK, "%s", moe_errmsg());
        vt[1] = gm;
        vt[2] = gv;
    }
    const float *vg[3] = {moe_model_param_data(mg), moe_trainer_optimizer(g)->m, moe_trainer_optimizer(g)->v};
    size_t nst, nsg;
    float *st = moe_model_state_data(mt, &nst), *sg = moe_model_state_data(mg, &nsg);
    ck_assert_int_eq((int)nst, (int)nsg);
    ck_assert_msg(memcmp(st, sg, nst * sizeof(float)) == 0, "%s: expert bias differs", what);
    for (int k = 0; k < 3; k++)
        for (int i = 0; i < nt; i++) {
            float *want = malloc(tt[i].numel * sizeof(float));
            ck_assert(want);
            ref_local(mt, maps, &tt[i], by_name(mg, tt[i].name), vg[k], want);
            for (size_t j = 0; j < tt[i].numel; j++) {
                float a = vt[k][tt[i].offset + j], b = want[j];
                ck_assert_msg(memcmp(&a, &b, sizeof a) == 0, "%s: %s%s[%zu] %.9g vs %.9g", what,
                              k == 0 ? "" : k == 1 ? "m of " : "v of ", tt[i].name, j, a, b);
            }
            free(want);
        }
    free(gm);
    free(gv);
}

static void load_or_fail(moe_trainer *t, const char *dir)
{
    long step;
    uint64_t next;
    char loaded[4096];
    ck_assert_msg(moe_train_load(t, dir, &step, &next, loaded, sizeof loaded) == MOE_OK, "load %s: %s", dir,
                  moe_errmsg());
    ck_assert_int_eq(step, g_steps);
}

/* Checkpoints across placements (see top). par trained under the plan. */
static void checkpoints_cross_placement(moe_trainer *par, moe_world *w, const moe_config *cfg,
                                        const moe_config *single)
{
    char d1[256], d2[256], cmd[600];
    shared_path("ckpt_plan", d1, sizeof d1);
    shared_path("ckpt_contig", d2, sizeof d2);
    ck_assert_msg(moe_train_save(par, cfg, d1, g_steps, 0) == MOE_OK, "save under the plan: %s", moe_errmsg());

    moe_trainer *whole = NULL, *contig = NULL;
    ck_assert_msg(moe_trainer_create(&whole, single) == MOE_OK, "%s", moe_errmsg());
    load_or_fail(whole, d1);
    assert_same_as_global(par, w->maps, whole, "saved under the plan vs one process");

    moe_config plain = *cfg;
    plain.expert_placement[0] = '\0';
    moe_world w2;
    ck_assert_msg(moe_world_setup(&w2, g_world, &plain) == MOE_OK, "%s", moe_errmsg());
    ck_assert_msg(moe_trainer_create_parallel(&contig, &plain, &w2.par) == MOE_OK, "%s", moe_errmsg());
    load_or_fail(contig, d1);
    assert_same_as_global(contig, w2.maps, whole, "plan checkpoint loaded without the plan");

    /* and back: saved contiguous, loaded under the plan */
    ck_assert(moe_model_init(moe_trainer_model(par), 12345) == MOE_OK); /* something else first, so the load must overwrite it */
    ck_assert_msg(moe_train_save(contig, &plain, d2, g_steps, 0) == MOE_OK, "save contiguous: %s", moe_errmsg());
    load_or_fail(par, d2);
    assert_same_as_global(par, w->maps, whole, "contiguous checkpoint loaded under the plan");

    moe_trainer_free(contig);
    moe_trainer_free(whole);
    moe_world_free(&w2);
    int32_t sync = 0;
    ck_assert(moe_allreduce(g_world, &sync, 1, MOE_DT_I32, MOE_OP_MAX) == MOE_OK);
    if (moe_comm_rank(g_world) == 0) {
        snprintf(cmd, sizeof cmd, "rm -rf '%s' '%s'", d1, d2);
        ck_assert(system(cmd) == 0);
        printf("checkpoints cross placements: plan -> contiguous -> plan, and one process, bit-identical\n");
    }
}

/* --ckpt: the parallel run's checkpoint loads into one process with every
** parameter and moment equal bit for bit; the one process's checkpoint loads
** back into the parallel layout, equal again. */
static void checkpoints_round_trip(moe_trainer *par, moe_world *w, const moe_config *cfg, const moe_config *single)
{
    char d1[256], d2[256], cmd[600];
    shared_path("ckpt_par", d1, sizeof d1);
    shared_path("ckpt_one", d2, sizeof d2);
    ck_assert_msg(moe_train_save(par, cfg, d1, g_steps, 0) == MOE_OK, "save: %s", moe_errmsg());
    moe_trainer *whole = NULL;
    ck_assert_msg(moe_trainer_create(&whole, single) == MOE_OK, "%s", moe_errmsg());
    load_or_fail(whole, d1);
    assert_same_as_global(par, w->maps, whole, "parallel checkpoint loaded by one process");
    int32_t sync = 0;
    if (moe_comm_rank(g_world) == 0) /* one writer: the others must not race it */
        ck_assert_msg(moe_train_save(whole, single, d2, g_steps, 0) == MOE_OK, "save: %s", moe_errmsg());
    ck_assert(moe_allreduce(g_world, &sync, 1, MOE_DT_I32, MOE_OP_MAX) == MOE_OK);
    ck_assert(moe_model_init(moe_trainer_model(par), 12345) == MOE_OK);
    load_or_fail(par, d2);
    assert_same_as_global(par, w->maps, whole, "one-process checkpoint loaded by the parallel layout");
    moe_trainer_free(whole);
    ck_assert(moe_allreduce(g_world, &sync, 1, MOE_DT_I32, MOE_OP_MAX) == MOE_OK);
    if (moe_comm_rank(g_world) == 0) {
        snprintf(cmd, sizeof cmd, "rm -rf '%s' '%s'", d1, d2);
        ck_assert(system(cmd) == 0);
        printf("checkpoints: parallel -> one process -> parallel, bit-identical\n");
    }
}

START_TEST(parallel_matches_single_rank)
{
    int W = moe_comm_size(g_world);
    moe_config cfg = make_config(W);
    cfg.use_distributed_optimizer = g_distopt;
    cfg.overlap_grad_reduce = !g_blocking;
    char plan_path[256] = "";
    if (g_permute) {
        ck_assert_int_eq(moe_config_validate(&cfg), MOE_OK); /* resolves the MoE layers */
        shared_path("plan.pb", plan_path, sizeof plan_path);
        refused_plans(&cfg);
        write_permuted_plan(&cfg, plan_path);
        snprintf(cfg.expert_placement, sizeof cfg.expert_placement, "%s", plan_path);
    }
    moe_world w;
    moe_status st = moe_world_setup(&w, g_world, &cfg);
    ck_assert_msg(st == MOE_OK, "world setup: %s", moe_errmsg());
    moe_config single = make_config(1);
    single.expert_model_parallel_size = 1;
    single.tensor_model_parallel_size = single.context_parallel_size = single.expert_tensor_parallel_size = 1;
    single.pipeline_model_parallel_size = 1;
    single.moe_overlap = 0;
    single.num_layers_per_virtual_pipeline_stage = 0;
    single.decoder_first_pipeline_num_layers = single.decoder_last_pipeline_num_layers = 0;
    single.sequence_parallel = 0;
    ck_assert_int_eq(moe_config_validate(&single), MOE_OK);

    moe_trainer *par = NULL, *ref = NULL;
    ck_assert_msg(moe_trainer_create_parallel(&par, &cfg, &w.par) == MOE_OK, "%s", moe_errmsg());
    ck_assert_msg(moe_trainer_create(&ref, &single) == MOE_OK, "%s", moe_errmsg());
    if (g_distopt) /* every layout tested here has a data-parallel group > 1 */
        ck_assert_msg(moe_trainer_distopt(par) != NULL, "--distopt: the distributed optimizer is not running");
    if (g_starve) {
        starve(moe_trainer_model(par), w.maps, cfg.num_experts);
        starve(moe_trainer_model(ref), NULL, cfg.num_experts);
    }
    if (g_first || g_last) { /* the stage holds the layers it was given, not an even share */
        int n, layers = 0, last_layer = -1, want = -1;
        const moe_param_info *t = moe_model_params(moe_trainer_model(par), &n);
        for (int i = 0; i < n; i++) {
            int L;
            if (sscanf(t[i].name, "layers.%d.", &L) == 1 && L != last_layer) {
                layers++;
                last_layer = L;
            }
        }
        if (w.par.pp_rank == 0 && g_first)
            want = g_first;
        if (w.par.pp_rank == w.par.pp_size - 1 && g_last)
            want = g_last;
        ck_assert_msg(want < 0 || layers == want, "stage %d holds %d layers, want %d", w.par.pp_rank, layers, want);
    }
    int T = cfg.seq_length, G = cfg.global_batch_size;
    int32_t *gin = malloc(sizeof(int32_t) * G * T), *gtg = malloc(sizeof(int32_t) * G * T);
    int32_t *lin = malloc(sizeof(int32_t) * G * T), *ltg = malloc(sizeof(int32_t) * G * T);
    ck_assert(gin && gtg && lin && ltg);
    for (long step = 0; step < g_steps; step++) {
        batch(step, &single, 0, 1, gin, gtg);
        batch(step, &cfg, w.par.dp_rank, w.par.dp_size, lin, ltg);
        moe_train_metrics rp, rr;
        ck_assert_msg(moe_trainer_step(par, lin, ltg, step, &rp) == MOE_OK, "%s", moe_errmsg());
        ck_assert_msg(moe_trainer_step(ref, gin, gtg, step, &rr) == MOE_OK, "%s", moe_errmsg());
        if (step == 0)
            compare_first_step(par, ref, w.maps);
        assert_close(rp.loss, rr.loss, "loss", step);
        assert_close(rp.aux_loss, rr.aux_loss, "aux loss", step);
        assert_close(rp.z_loss, rr.z_loss, "z loss", step);
        assert_close(rp.grad_norm, rr.grad_norm, "grad norm", step);
        assert_close(rp.load_imbalance, rr.load_imbalance, "load imbalance", step);
        ck_assert_msg(fabs(rp.dropped_frac - rr.dropped_frac) < 1e-12, "step %ld dropped %g vs %g", step,
                      rp.dropped_frac, rr.dropped_frac);
        if (g_capacity > 0 && step == 0)
            ck_assert_msg(rr.dropped_frac > 0, "capacity %g dropped nothing: the test is not testing drops",
                          g_capacity);
        if (g_starve && step == 0)
            ck_assert(rr.load_imbalance >= 2.0 - 1e-9); /* half the experts carry everything */
    }
    if (moe_comm_rank(g_world) == 0)
        printf("W=%d PP=%d TP=%d%s CP=%d DP=%d | ETP=%d EP=%d EDP=%d, experts=%d%s%s%s: %d steps match the single-rank "
               "run\n",
               W, w.layout.pp, w.layout.tp, g_sp ? " (SP)" : "", w.layout.cp, w.layout.dp, w.layout.etp, w.layout.ep,
               w.layout.edp, cfg.num_experts, g_distopt ? " (distributed optimizer)" : "",
               g_blocking ? " (blocking gradient all-reduces)" : "",
               g_replicate ? " (replicated placement plan)" : g_permute ? " (permuted placement plan)" : "", g_steps);
    if (g_ckpt)
        checkpoints_round_trip(par, &w, &cfg, &single);
    if (g_permute) {
        checkpoints_cross_placement(par, &w, &cfg, &single);
        int32_t sync = 0;
        ck_assert(moe_allreduce(g_world, &sync, 1, MOE_DT_I32, MOE_OP_MAX) == MOE_OK);
        if (moe_comm_rank(g_world) == 0)
            unlink(plan_path);
    }
    free(gin); free(gtg); free(lin); free(ltg);
    moe_trainer_free(par);
    moe_trainer_free(ref);
    moe_world_free(&w);
}
END_TEST

int main(int argc, char **argv)
{
    if (moe_comm_init(&argc, &argv) != MOE_OK || moe_comm_world(&g_world) != MOE_OK) {
        fprintf(stderr, "mpi init: %s\n", moe_errmsg());
        return 1;
    }
    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "--ep") == 0 && i + 1 < argc) g_ep = atoi(argv[++i]);
        else if (strcmp(argv[i], "--experts") == 0 && i + 1 < argc) g_experts = atoi(argv[++i]);
        else if (strcmp(argv[i], "--capacity") == 0 && i + 1 < argc) g_capacity = atof(argv[++i]);
        else if (strcmp(argv[i], "--steps") == 0 && i + 1 < argc) g_steps = atoi(argv[++i]);
        else if (strcmp(argv[i], "--tp") == 0 && i + 1 < argc) g_tp = atoi(argv[++i]);
        else if (strcmp(argv[i], "--cp") == 0 && i + 1 < argc) g_cp = atoi(argv[++i]);
        else if (strcmp(argv[i], "--etp") == 0 && i + 1 < argc) g_etp = atoi(argv[++i]);
        else if (strcmp(argv[i], "--pp") == 0 && i + 1 < argc) g_pp = atoi(argv[++i]);
        else if (strcmp(argv[i], "--layers") == 0 && i + 1 < argc) g_layers = atoi(argv[++i]);
        else if (strcmp(argv[i], "--untie") == 0) g_untie = 1;
        else if (strcmp(argv[i], "--vpl") == 0 && i + 1 < argc) g_vpl = atoi(argv[++i]);
        else if (strcmp(argv[i], "--first") == 0 && i + 1 < argc) g_first = atoi(argv[++i]);
        else if (strcmp(argv[i], "--last") == 0 && i + 1 < argc) g_last = atoi(argv[++i]);
        else if (strcmp(argv[i], "--overlap") == 0 && i + 1 < argc) g_overlap = atoi(argv[++i]);
        else if (strcmp(argv[i], "--sp") == 0) g_sp = 1;
        else if (strcmp(argv[i], "--ckpt") == 0) g_ckpt = 1;
        else if (strcmp(argv[i], "--starve") == 0) g_starve = 1;
        else if (strcmp(argv[i], "--distopt") == 0) g_distopt = 1;
        else if (strcmp(argv[i], "--no-overlap-grad-reduce") == 0) g_blocking = 1;
        else if (strcmp(argv[i], "--placement-permute") == 0) g_permute = 1;
        else if (strcmp(argv[i], "--placement-replicate") == 0) g_permute = g_replicate = 1;
    }
    Suite *s = suite_create("equivalence");
    TCase *tc = tcase_create("core");
    tcase_set_timeout(tc, 600);
    tcase_add_test(tc, parallel_matches_single_rank);
    suite_add_tcase(s, tc);
    SRunner *sr = srunner_create(s);
    srunner_set_fork_status(sr, CK_NOFORK);
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    /* one rank's failure fails the job */
    int32_t any = failed;
    moe_allreduce(g_world, &any, 1, MOE_DT_I32, MOE_OP_MAX);
    moe_comm_finalize();
    return any ? 1 : 0;
}
