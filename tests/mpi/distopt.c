/*
** mpi_distopt: parallel/distopt.h against a plain reference, on 1 to 4 ranks
** (tests/equivalence.cmake).
**
** shards_match_reference: a synthetic parameter table (odd sizes, gaps,
** both kinds, decay on some) over a dense group (the world) and, on an even
** world, EP = 2 with EDP = W/2. Each rank draws its own gradients; the
** reference all-reduces them and runs layers/adamw.h on full moments. The
** distributed optimizer, with the default staging and with a 5-float staging
** (many chunks), must give the same norm, parameters and (gathered) moments:
** bit for bit when every group has at most 2 ranks (a + b is one sum in any
** order), within float rounding otherwise. Gaps between tensors are never
** written; moments survive gather -> load into another instance -> gather.
**
** checkpoints_cross_load: trainers with and without the distributed
** optimizer save and load one another's checkpoints with identical
** parameters and moments, and resume is bit-exact (--ep N sets the layout).
** On one rank the flag has no effect and the ordinary optimizer runs.
*/
#include <check.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "layers/adamw.h"
#include "parallel/distopt.h"
#include "runtime/base/rng.h"
#include "runtime/train_ckpt.h"
#include "runtime/world.h"
#include "tests/unit/testutil.h"
#include "mpitest.h"

static moe_comm *W;
static int R, P, g_ep = 1;


/* ---- synthetic table ------------------------------------------------------ */

#define NT 9
static const size_t k_numel[NT] = {37, 1, 100, 16, 5, 64, 3, 250, 17};
static const int k_expert[NT] = {0, 1, 1, 0, 1, 0, 0, 1, 0};
static const int k_decay[NT] = {1, 0, 1, 0, 1, 1, 0, 1, 0};
#define GAP_VALUE 7.0f

typedef struct {
    moe_distopt_tensor t[NT];
    size_t n;
    unsigned char *is_expert; /* [n]; gaps: 2 */
} table;

static void table_make(table *tb)
{
    size_t off = 0;
    for (int i = 0; i < NT; i++) {
        tb->t[i] = (moe_distopt_tensor){off, k_numel[i], k_decay[i], k_expert[i], 0};
        off = (off + k_numel[i] + 15) / 16 * 16; /* 16-float aligned, gaps */
    }
    tb->n = off;
    tb->is_expert = malloc(tb->n);
    ck_assert(tb->is_expert);
    memset(tb->is_expert, 2, tb->n);
    for (int i = 0; i < NT; i++)
        memset(tb->is_expert + tb->t[i].offset, k_expert[i], k_numel[i]);
}

static float uniform(uint64_t seed)
{
    moe_rng r;
    moe_rng_seed(&r, seed);
    return (float)(moe_rng_below(&r, 1u << 24) / (double)(1u << 23) - 1.0);
}

/* Groups of the synthetic test: ep = pairs of neighbours and edp = the ranks
** of one parity when the world is even, else no ep and edp = the world. */
typedef struct {
    moe_comm *ep, *edp;
    int ep_rank;
} groups;

static void groups_make(groups *g)
{
    memset(g, 0, sizeof *g);
    if (P % 2 != 0) {
        g->edp = W;
        return;
    }
    int *ep = malloc(sizeof(int) * (size_t)P), *edp = malloc(sizeof(int) * (size_t)P);
    ck_assert(ep && edp);
    for (int i = 0; i < P; i++)
        ep[i] = i; /* groups {2j, 2j+1} */
    for (int par = 0, k = 0; par < 2; par++)
        for (int i = par; i < P; i += 2)
            edp[k++] = i;
    OK_ALL(moe_comm_create(W, ep, P / 2, 2, "ep", &g->ep));
    OK_ALL(moe_comm_create(W, edp, 2, P / 2, "edp", &g->edp));
    g->ep_rank = R % 2;
    free(ep);
    free(edp);
}

static void groups_free(groups *g)
{
    if (g->ep)
        moe_comm_free(g->ep);
    if (g->edp != W)
        moe_comm_free(g->edp);
}

/* Replicas hold the same params: expert values depend on the ep rank only. */
static void init_params(const table *tb, const groups *g, float *p)
{
    for (size_t j = 0; j < tb->n; j++)
        p[j] = tb->is_expert[j] == 2 ? GAP_VALUE
                                     : uniform(j * 31 + (tb->is_expert[j] ? 1000003u * (g->ep_rank + 1) : 0));
}

static void draw_grads(const table *tb, int step, float *g)
{
    for (size_t j = 0; j < tb->n; j++)
        g[j] = tb->is_expert[j] == 2 ? 0.0f : uniform(((uint64_t)step << 40) ^ ((uint64_t)R << 32) ^ (j + 77));
}

/* The reference: data-parallel all-reduces, global norm, AdamW on full moments. */
static double reference_step(const table *tb, const groups *g, const float *local, float *p, float *m,
                             float *v, const moe_distopt_hparams *h0, double clip)
{
    size_t n = tb->n;
    float *gd = malloc(n * sizeof(float)), *ge = malloc(n * sizeof(float));
    ck_assert(gd && ge);
    memcpy(gd, local, n * sizeof(float));
    memcpy(ge, local, n * sizeof(float));
    if (P > 1)
        OK_ALL(moe_allreduce(W, gd, n, MOE_DT_F32, MOE_OP_SUM));
    if (moe_comm_size(g->edp) > 1)
        OK_ALL(moe_allreduce(g->edp, ge, n, MOE_DT_F32, MOE_OP_SUM));
    double sq[2] = {0, 0};
    for (int i = 0; i < NT; i++) {
        const float *src = (k_expert[i] ? ge : gd) + tb->t[i].offset;
        sq[k_expert[i]] += moe_sum_squares(src, k_numel[i]);
    }
    if (g->ep)
        OK_ALL(moe_allreduce(g->ep, &sq[1], 1, MOE_DT_F64, MOE_OP_SUM));
    double norm = sqrt(sq[0] + sq[1]);
    moe_distopt_hparams h = *h0;
    h.grad_scale = (float)(norm > clip ? clip / (norm + 1e-6) : 1.0);
    for (int i = 0; i < NT; i++) {
        size_t o = tb->t[i].offset;
        moe_adamw_update(p + o, (k_expert[i] ? ge : gd) + o, m + o, v + o, k_numel[i], h.lr, h.beta1, h.beta2, h.eps,
                         k_decay[i] ? h.weight_decay : 0.0f, h.step, h.grad_scale);
    }
    free(gd);
    free(ge);
    return norm;
}

/* Largest |a - b| / (tol_floor + |b|) over the tensors, and whether gaps kept GAP_VALUE. */
static double worst(const table *tb, const float *a, const float *b, double floor_, int *gaps_ok, const float *gap_src)
{
    double w = 0;
    *gaps_ok = 1;
    for (size_t j = 0; j < tb->n; j++) {
        if (tb->is_expert[j] == 2) {
            if (gap_src && gap_src[j] != GAP_VALUE)
                *gaps_ok = 0;
            continue;
        }
        double e = fabs((double)a[j] - b[j]) / (floor_ + fabs((double)b[j]));
        if (e > w)
            w = e;
    }
    return w;
}

START_TEST(shards_match_reference)
{
    table tb;
    table_make(&tb);
    groups g;
    groups_make(&g);
    size_t n = tb.n;
    int exact = P <= 2; /* every group has at most two ranks */
    static const size_t stages[2] = {0, 5};
    for (int si = 0; si < 2; si++) {
        moe_distopt *d = NULL;
        OK_ALL(moe_distopt_create(&d, tb.t, NT, n, W, g.edp, g.ep, stages[si]));
        float *pd = calloc(n, sizeof(float)), *pr = calloc(n, sizeof(float));
        float *mr = calloc(n, sizeof(float)), *vr = calloc(n, sizeof(float));
        float *md = calloc(n, sizeof(float)), *vd = calloc(n, sizeof(float));
        float *grad = calloc(n, sizeof(float));
        ck_assert(pd && pr && mr && vr && md && vd && grad);
        init_params(&tb, &g, pd);
        init_params(&tb, &g, pr);
        for (int step = 1; step <= 3; step++) {
            draw_grads(&tb, step, grad);
            moe_distopt_hparams h = {1e-2f, 0.9f, 0.95f, 1e-8f, 0.1f, 1.0f, step};
            double clip = step == 2 ? 0.5 : 0.0; /* one clipped step */
            double rnorm = reference_step(&tb, &g, grad, pr, mr, vr, &h, clip > 0 ? clip : INFINITY);
            double dnorm;
            OK_ALL(moe_distopt_reduce_grads(d, grad));
            OK_ALL(moe_distopt_grad_norm(d, &dnorm));
            CHECK_ALL(fabs(dnorm - rnorm) <= 1e-6 * rnorm, "step %d norm %.9g vs %.9g", step, dnorm, rnorm);
            h.grad_scale = (float)(clip > 0 && dnorm > clip ? clip / (dnorm + 1e-6) : 1.0);
            OK_ALL(moe_distopt_step(d, pd, &h));
            int gaps;
            double ep = worst(&tb, pd, pr, 1.0, &gaps, pd);
            CHECK_ALL(gaps, "stage %zu step %d: a gap between tensors was written", stages[si], step);
            CHECK_ALL(exact ? ep == 0 : ep <= 1e-6, "stage %zu step %d: params differ by %.3g", stages[si], step, ep);
        }
        OK_ALL(moe_distopt_gather_moments(d, md, vd));
        int gaps;
        double em = worst(&tb, md, mr, 1e-3, &gaps, NULL), ev = worst(&tb, vd, vr, 1e-6, &gaps, NULL);
        CHECK_ALL(exact ? em == 0 && ev == 0 : em <= 1e-5 && ev <= 1e-5, "moments differ: m %.3g, v %.3g", em, ev);

        /* the shards hold 1/D of the state (per kind, rounded up to 16 floats) */
        size_t pd_total = 0, pe_total = 0;
        for (int i = 0; i < NT; i++)
            *(k_expert[i] ? &pe_total : &pd_total) += k_numel[i];
        int De = moe_comm_size(g.edp);
        size_t sd = ((pd_total + (size_t)P - 1) / (size_t)P + 15) / 16 * 16;
        size_t se = ((pe_total + (size_t)De - 1) / (size_t)De + 15) / 16 * 16;
        CHECK_ALL(moe_distopt_state_floats(d) == 2 * (sd + se), "state %zu floats, expected %zu",
                  moe_distopt_state_floats(d), 2 * (sd + se));
        CHECK_ALL(moe_distopt_full_state_floats(d) == 2 * n, "full state %zu", moe_distopt_full_state_floats(d));

        /* gather -> load into another instance (other chunking) -> gather: the same bits */
        moe_distopt *d2 = NULL;
        OK_ALL(moe_distopt_create(&d2, tb.t, NT, n, W, g.edp, g.ep, stages[1 - si]));
        moe_distopt_load_moments(d2, md, vd);
        float *m2 = calloc(n, sizeof(float)), *v2 = calloc(n, sizeof(float));
        ck_assert(m2 && v2);
        OK_ALL(moe_distopt_gather_moments(d2, m2, v2));
        CHECK_ALL(memcmp(m2, md, n * sizeof(float)) == 0 && memcmp(v2, vd, n * sizeof(float)) == 0,
                  "moments changed through load and gather");
        moe_distopt_free(d2);
        free(m2); free(v2);
        free(pd); free(pr); free(mr); free(vr); free(md); free(vd); free(grad);
        moe_distopt_free(d);
    }
    groups_free(&g);
    free(tb.is_expert);
}
END_TEST

/* ---- trainers and checkpoints ------------------------------------------- */

static moe_config make_config(int world, int distopt)
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
    c.num_experts = 4;
    c.moe_router_topk = 2;
    c.moe_ffn_hidden_size = 24;
    c.moe_shared_expert_intermediate_size = 16;
    c.moe_router_enable_expert_bias = 1;
    c.micro_batch_size = 2;
    c.global_batch_size = 2 * 2 * world;
    c.lr = 1e-2;
    c.lr_warmup_iters = 2;
    c.train_iters = 10;
    c.expert_model_parallel_size = g_ep;
    c.use_distributed_optimizer = distopt;
    c.nproc = world;
    snprintf(c.moe_layer_freq, sizeof c.moe_layer_freq, "[0,1]");
    return c;
}

typedef struct {
    moe_world w;
    moe_config cfg;
    moe_trainer *t;
    int32_t *in, *tg;
} run;

static void run_open(run *r, int distopt)
{
    r->cfg = make_config(P, distopt);
    OK_ALL(moe_world_setup(&r->w, W, &r->cfg));
    OK_ALL(moe_trainer_create_parallel(&r->t, &r->cfg, &r->w.par));
    size_t n = (size_t)r->cfg.global_batch_size * r->cfg.seq_length;
    r->in = malloc(n * sizeof(int32_t));
    r->tg = malloc(n * sizeof(int32_t));
    ck_assert(r->in && r->tg);
}

static void run_close(run *r)
{
    moe_trainer_free(r->t);
    moe_world_free(&r->w);
    free(r->in);
    free(r->tg);
}

/* This rank's sequences of step `step`: global micro-batches dp_rank, dp_rank + dp, ... */
static double run_step(run *r, long step)
{
    const moe_config *c = &r->cfg;
    int mb = c->micro_batch_size, T = c->seq_length, k = 0;
    for (int j = r->w.par.dp_rank; j < c->global_batch_size / mb; j += r->w.par.dp_size)
        for (int b = 0; b < mb; b++, k++) {
            moe_rng g;
            moe_rng_seed(&g, (uint64_t)step * 1000 + (uint64_t)(j * mb + b));
            int32_t buf[T + 1];
            for (int i = 0; i <= T; i++)
                buf[i] = (int32_t)moe_rng_below(&g, (uint64_t)c->vocab_size);
            memcpy(r->in + (size_t)k * T, buf, sizeof(int32_t) * T);
            memcpy(r->tg + (size_t)k * T, buf + 1, sizeof(int32_t) * T);
        }
    moe_train_metrics m;
    OK_ALL(moe_trainer_step(r->t, r->in, r->tg, step, &m));
    return m.loss;
}

static float *params_copy(run *r)
{
    moe_model *m = moe_trainer_model(r->t);
    size_t n = moe_model_num_params(m);
    float *p = malloc(n * sizeof(float));
    ck_assert(p);
    memcpy(p, moe_model_param_data(m), n * sizeof(float));
    return p;
}

/* Flat-layout moments of a trainer, whichever optimizer it runs (caller frees). */
static void moments_of(run *r, float **m, float **v)
{
    size_t n = moe_model_num_params(moe_trainer_model(r->t));
    *m = calloc(n, sizeof(float));
    *v = calloc(n, sizeof(float));
    ck_assert(*m && *v);
    moe_distopt *d = moe_trainer_distopt(r->t);
    if (d)
        OK_ALL(moe_distopt_gather_moments(d, *m, *v));
    else {
        memcpy(*m, moe_trainer_optimizer(r->t)->m, n * sizeof(float));
        memcpy(*v, moe_trainer_optimizer(r->t)->v, n * sizeof(float));
    }
}

static int same_state(run *a, run *b)
{
    size_t n = moe_model_num_params(moe_trainer_model(a->t));
    float *ma, *va, *mb, *vb;
    moments_of(a, &ma, &va);
    moments_of(b, &mb, &vb);
    int same = memcmp(moe_model_param_data(moe_trainer_model(a->t)), moe_model_param_data(moe_trainer_model(b->t)),
                      n * sizeof(float)) == 0 &&
               memcmp(ma, mb, n * sizeof(float)) == 0 && memcmp(va, vb, n * sizeof(float)) == 0 &&
               moe_trainer_optimizer(a->t)->step == moe_trainer_optimizer(b->t)->step;
    free(ma); free(va); free(mb); free(vb);
    return same;
}

/* Rank 0 makes the directory; every rank gets its name. */
static void shared_tmpdir(char *dir, size_t cap, const char *tag)
{
    char mine[256] = {0};
    if (R == 0)
        tu_tmpdir(mine, sizeof mine, tag);
    char *all = calloc((size_t)P, sizeof mine);
    ck_assert(all);
    OK_ALL(moe_allgather(W, mine, all, sizeof mine, MOE_DT_U8));
    snprintf(dir, cap, "%s", all);
    free(all);
}

static void load(run *r, const char *root, long want_step)
{
    long step;
    uint64_t next;
    char dir[1024];
    OK_ALL(moe_train_load(r->t, root, &step, &next, dir, sizeof dir));
    CHECK_ALL(step == want_step, "loaded step %ld, expected %ld", step, want_step);
}

START_TEST(checkpoints_cross_load)
{
    if (P == 1) { /* nothing to shard: the ordinary optimizer runs */
        run a;
        run_open(&a, 1);
        ck_assert_ptr_null(moe_trainer_distopt(a.t));
        ck_assert_ptr_nonnull(moe_trainer_optimizer(a.t)->m);
        run_step(&a, 0);
        run_close(&a);
        return;
    }
    char root1[512], root2[512];
    shared_tmpdir(root1, sizeof root1, "distopt-a");
    shared_tmpdir(root2, sizeof root2, "distopt-c");
    enum { SAVE_AT = 3, MORE = 2 };

    /* A: distributed, uninterrupted; saves after SAVE_AT steps */
    run a;
    run_open(&a, 1);
    CHECK_ALL(moe_trainer_distopt(a.t) != NULL, "the distributed optimizer is not running");
    for (long s = 0; s < SAVE_AT; s++)
        run_step(&a, s);
    OK_ALL(moe_train_save(a.t, &a.cfg, root1, SAVE_AT, 0));
    OK_ALL(moe_barrier(W));
    double loss_a[MORE];
    for (int s = 0; s < MORE; s++)
        loss_a[s] = run_step(&a, SAVE_AT + s);
    float *pa = params_copy(&a);

    /* B: distributed, resumed; C: ordinary optimizer, loads the same checkpoint */
    run b, c;
    run_open(&b, 1);
    run_open(&c, 0);
    CHECK_ALL(moe_trainer_distopt(c.t) == NULL, "flag off, yet the distributed optimizer runs");
    load(&b, root1, SAVE_AT);
    load(&c, root1, SAVE_AT);
    CHECK_ALL(same_state(&b, &c), "distributed checkpoint loads differently with and without the flag");

    /* D: distributed, loads C's (ordinary) checkpoint */
    OK_ALL(moe_train_save(c.t, &c.cfg, root2, SAVE_AT, 0));
    OK_ALL(moe_barrier(W));
    run d;
    run_open(&d, 1);
    load(&d, root2, SAVE_AT);
    CHECK_ALL(same_state(&d, &c), "ordinary checkpoint loads differently into the distributed optimizer");

    /* resume is bit-exact: B and D continue exactly as A did */
    for (int s = 0; s < MORE; s++) {
        double lb = run_step(&b, SAVE_AT + s), ld = run_step(&d, SAVE_AT + s);
        CHECK_ALL(lb == loss_a[s] && ld == loss_a[s], "step %d loss %.17g / %.17g vs %.17g", SAVE_AT + s, lb, ld,
                  loss_a[s]);
    }
    size_t n = moe_model_num_params(moe_trainer_model(a.t));
    CHECK_ALL(memcmp(pa, moe_model_param_data(moe_trainer_model(b.t)), n * sizeof(float)) == 0,
              "resumed parameters differ from the uninterrupted run's");
    CHECK_ALL(same_state(&b, &d), "runs resumed from the two checkpoints differ");
    CHECK_ALL(same_state(&a, &b), "resumed state differs from the uninterrupted run's");

    free(pa);
    run_close(&a);
    run_close(&b);
    run_close(&c);
    run_close(&d);
    if (R == 0) {
        char cmd[1200], out[256];
        snprintf(cmd, sizeof cmd, "rm -rf '%s' '%s'", root1, root2);
        tu_run(cmd, out, sizeof out);
    }
}
END_TEST

int main(int argc, char **argv)
{
    if (moe_comm_init(&argc, &argv) != MOE_OK || moe_comm_world(&W) != MOE_OK) {
        fprintf(stderr, "mpi init: %s\n", moe_errmsg());
        return 1;
    }
    R = moe_comm_rank(W);
    P = moe_comm_size(W);
    for (int i = 1; i + 1 < argc; i++)
        if (strcmp(argv[i], "--ep") == 0)
            g_ep = atoi(argv[i + 1]);
    Suite *s = suite_create("distopt");
    TCase *tc = tcase_create("core");
    tcase_set_timeout(tc, 300);
    tcase_add_test(tc, shards_match_reference);
    tcase_add_test(tc, checkpoints_cross_load);
    suite_add_tcase(s, tc);
    SRunner *sr = srunner_create(s);
    srunner_set_fork_status(sr, CK_NOFORK); /* MPI processes must not fork */
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    if (moe_allreduce(W, &failed, 1, MOE_DT_I32, MOE_OP_MAX) != MOE_OK)
        failed = 1;
    moe_comm_finalize();
    return failed ? 1 : 0;
}
