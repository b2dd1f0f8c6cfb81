/*
** Every parallel layout trains the same model as one rank: each rank runs the
** single-rank reference in-process and the parallel run side by side on the
** same global batches, and compares the loss, aux and z losses and grad norm
** of every step (relative 1e-5), and after the first step every gradient
** tensor (expert tensors against this rank's slice of the reference).
**
** usage: mpirun -np W mpi_equivalence --ep N [--experts E] [--capacity F]
**        [--starve] [--steps S] [--distopt]
** --starve routes nothing to the second EP rank's experts (a huge negative
** expert bias), so that rank sends and receives zero rows.
** --distopt runs the parallel side with the distributed optimizer. Its flat
** gradients are then this rank's unreduced ones (the sums exist only as
** shards), so after the first step the test compares the AdamW moments
** instead, gathered from the shards: m = (1 - beta1) * clip * g and
** v = (1 - beta2) * (clip * g)^2 of the FULL summed gradient, tensor by tensor,
** which checks the reduce-scatter, the shard layout and the gather at once.
*/
#include <check.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "runtime/base/rng.h"
#include "runtime/world.h"

static int g_ep = 1, g_experts = 4, g_starve, g_steps = 10, g_distopt;
static double g_capacity;
static moe_comm *g_world;

static moe_config make_config(int world)
{
    moe_config c;
    moe_config_defaults(&c);
    c.num_layers = 2;
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
    c.nproc = world;
    snprintf(c.moe_layer_freq, sizeof c.moe_layer_freq, "[0,1]");
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

static void starve(moe_model *m, const moe_expert_map *map, int E)
{
    size_t n;
    float *bias = moe_model_state_data(m, &n);
    for (size_t i = 0; i < n; i++) {
        int e = (int)(i % (size_t)E);
        int owner = map ? map->expert_rank[e] : e / (E / g_ep);
        if (owner == 1)
            bias[i] = -1e4f;
    }
}

static void assert_close(double a, double b, const char *what, long step)
{
    double rel = fabs(a - b) / fmax(fabs(b), 1e-12);
    ck_assert_msg(rel <= 1e-5, "step %ld %s: parallel %.9g vs single %.9g (rel %.2e)", step, what, a, b, rel);
}

/* Parallel flat-layout values (gradients, moments) against the reference's,
** tensor by tensor. */
static void compare_tensors(moe_model *par, const float *gp, moe_model *ref, const float *gr,
                            const moe_expert_map *map, const char *what)
{
    int np, nr;
    const moe_param_info *tp = moe_model_params(par, &np), *tr = moe_model_params(ref, &nr);
    ck_assert_int_eq(np, nr);
    for (int i = 0; i < np; i++) {
        size_t ref_off = tr[i].offset;
        if (tp[i].is_expert) /* contiguous map: this rank's experts start at its first one */
            ref_off += (size_t)map->local_experts[0] * (tr[i].numel / (size_t)tr[i].shape[0]);
        double num = 0, den = 0;
        for (size_t j = 0; j < tp[i].numel; j++) {
            double d = (double)gp[tp[i].offset + j] - gr[ref_off + j];
            num += d * d;
            den += (double)gr[ref_off + j] * gr[ref_off + j];
        }
        double rel = den > 0 ? sqrt(num / den) : sqrt(num);
        ck_assert_msg(rel <= 1e-5, "%s %s differs: relative %.3e", what, tp[i].name, rel);
    }
}

static void compare_first_step(moe_trainer *par, moe_trainer *ref, const moe_expert_map *map)
{
    moe_model *mp = moe_trainer_model(par), *mr = moe_trainer_model(ref);
    moe_distopt *d = moe_trainer_distopt(par);
    if (!d) {
        compare_tensors(mp, moe_model_grad_data(mp), mr, moe_model_grad_data(mr), map, "gradient");
        return;
    }
    size_t n = moe_model_num_params(mp);
    float *m = calloc(n, sizeof(float)), *v = calloc(n, sizeof(float));
    ck_assert(m && v);
    ck_assert_msg(moe_distopt_gather_moments(d, m, v) == MOE_OK, "%s", moe_errmsg());
    moe_adamw *o = moe_trainer_optimizer(ref);
    compare_tensors(mp, m, mr, o->m, map, "first moment (summed gradient)");
    compare_tensors(mp, v, mr, o->v, map, "second moment (squared summed gradient)");
    free(m);
    free(v);
}

START_TEST(parallel_matches_single_rank)
{
    int W = moe_comm_size(g_world);
    moe_config cfg = make_config(W);
    cfg.use_distributed_optimizer = g_distopt;
    moe_world w;
    moe_status st = moe_world_setup(&w, g_world, &cfg);
    ck_assert_msg(st == MOE_OK, "world setup: %s", moe_errmsg());
    moe_config single = make_config(1);
    single.expert_model_parallel_size = 1;
    ck_assert_int_eq(moe_config_validate(&single), MOE_OK);

    moe_trainer *par = NULL, *ref = NULL;
    ck_assert_msg(moe_trainer_create_parallel(&par, &cfg, &w.par) == MOE_OK, "%s", moe_errmsg());
    ck_assert_msg(moe_trainer_create(&ref, &single) == MOE_OK, "%s", moe_errmsg());
    if (g_distopt) /* every layout tested here has a data-parallel group > 1 */
        ck_assert_msg(moe_trainer_distopt(par) != NULL, "--distopt: the distributed optimizer is not running");
    if (g_starve) {
        starve(moe_trainer_model(par), &w.map, cfg.num_experts);
        starve(moe_trainer_model(ref), NULL, cfg.num_experts);
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
            compare_first_step(par, ref, &w.map);
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
        printf("W=%d EP=%d DP=%d experts=%d%s: %d steps match the single-rank run\n", W, w.layout.ep,
               w.layout.dp, cfg.num_experts, g_distopt ? " (distributed optimizer)" : "", g_steps);
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
        else if (strcmp(argv[i], "--starve") == 0) g_starve = 1;
        else if (strcmp(argv[i], "--distopt") == 0) g_distopt = 1;
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
