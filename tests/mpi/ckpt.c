/*
** mpi_ckpt: sharded checkpoints of a parallel run (runtime/train_ckpt.h) on
** 4 ranks with EP 2 (tests/ckpt.cmake; --distopt: with the distributed
** optimizer).
**
** sharded_save_and_reload: a trainer steps, saves; then
**   - one shard file per owner (world rank 0, and each rank whose edp rank
**     is 0), none from the other ranks, so at least 2;
**   - the manifest says world_size 4, and every expert tensor has one entry
**     per ep rank, cut along dim 0 at that rank's first expert;
**   - a second trainer with the same layout loads it bit for bit (parameters,
**     moments, step) and continues with the same losses as the first;
**   - one process reading the step directory with the offline API
**     (moe_ckpt_load_dir, whole tensors) gets exactly the full tensors the
**     ranks hold when gathered over the ep group.
*/
#include <check.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "runtime/base/checkpoint.h"
#include "runtime/base/rng.h"
#include "runtime/train_ckpt.h"
#include "runtime/world.h"
#include "tests/unit/testutil.h"
#include "mpitest.h"

static moe_comm *W;
static int R, P, g_ep = 2, g_distopt;


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
    c.use_distributed_optimizer = g_distopt;
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

static void run_open(run *r)
{
    r->cfg = make_config(P);
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

/* Per world rank: does it own expert rows (edp rank 0), and its ep rank. */
static void owners(run *r, int *owns, int *ep_rank)
{
    const moe_trainer_par *par = &r->w.par;
    int mine[2] = {!par->edp || moe_comm_rank(par->edp) == 0, par->ep ? moe_comm_rank(par->ep) : 0};
    int *all = calloc((size_t)P * 2, sizeof(int));
    ck_assert(all);
    OK_ALL(moe_allgather(W, mine, all, 2, MOE_DT_I32));
    for (int i = 0; i < P; i++) {
        owns[i] = all[2 * i] || i == 0;
        ep_rank[i] = all[2 * i + 1];
    }
    free(all);
}

static int file_exists(const char *dir, int rank)
{
    char path[1200];
    struct stat sb;
    snprintf(path, sizeof path, "%s/shard-%05d.bin", dir, rank);
    return stat(path, &sb) == 0 && S_ISREG(sb.st_mode);
}

/* Rank 0: the manifest describes 4 ranks, the owners' shards and the cuts. */
static int check_manifest(run *r, const char *dir, const int *owns, const int *ep_rank, char *why, size_t cap)
{
    Moe__CheckpointManifest *m = NULL;
    if (moe_ckpt_read_manifest(dir, &m) != MOE_OK) {
        snprintf(why, cap, "%s", moe_errmsg());
        return 0;
    }
    int ok = 1, nowners = 0;
    for (int i = 0; i < P; i++) {
        nowners += owns[i];
        if (file_exists(dir, i) != owns[i]) {
            snprintf(why, cap, "rank %d: shard file %s, owner %d", i, file_exists(dir, i) ? "exists" : "missing",
                     owns[i]);
            ok = 0;
        }
    }
    if (ok && (m->world_size != (uint32_t)P || m->n_shards != (size_t)nowners || nowners < 2)) {
        snprintf(why, cap, "world_size %u, %zu shards, %d owners", m->world_size, m->n_shards, nowners);
        ok = 0;
    }
    int nt, E_local = r->w.maps[0].E_local, experts_seen = 0;
    const moe_param_info *t = moe_model_params(moe_trainer_model(r->t), &nt);
    for (int i = 0; ok && i < nt; i++) {
        char name[128];
        snprintf(name, sizeof name, "model.%s", t[i].name);
        int entries = 0;
        for (size_t k = 0; ok && k < m->n_tensors; k++) {
            const Moe__TensorEntry *e = m->tensors[k];
            if (strcmp(e->name, name) != 0)
                continue;
            entries++;
            int wr = (int)m->shards[e->shard]->rank;
            int64_t off = t[i].is_expert ? (int64_t)ep_rank[wr] * E_local : 0;
            int64_t rows = t[i].is_expert ? E_local : t[i].shape[0];
            int64_t global = t[i].is_expert ? (int64_t)r->cfg.num_experts : t[i].shape[0];
            if (e->global_shape[0] != global || e->local_offset[0] != off || e->local_shape[0] != rows ||
                (!t[i].is_expert && wr != 0)) {
                snprintf(why, cap, "%s in shard of rank %d: global %lld, offset %lld, rows %lld", name, wr,
                         (long long)e->global_shape[0], (long long)e->local_offset[0], (long long)e->local_shape[0]);
                ok = 0;
            }
        }
        if (ok && entries != (t[i].is_expert ? g_ep : 1)) {
            snprintf(why, cap, "%s has %d entries", name, entries);
            ok = 0;
        }
        experts_seen += t[i].is_expert;
    }
    if (ok && experts_seen == 0) {
        snprintf(why, cap, "the model has no expert tensors");
        ok = 0;
    }
    moe__checkpoint_manifest__free_unpacked(m, NULL);
    return ok;
}

/* Whole tensors of the run, gathered over ep (contiguous map: ep rank order
** is expert order); *names / *data / *n describe them in checkpoint form. */
typedef struct {
    moe_ckpt_tensor *t;
    char (*names)[128];
    float **full;
    int n;
} whole;

static void gather_whole(run *r, whole *w)
{
    moe_model *mod = moe_trainer_model(r->t);
    int nt;
    const moe_param_info *t = moe_model_params(mod, &nt);
    size_t nstate;
    float *state = moe_model_state_data(mod, &nstate);
    float *mo, *vo;
    moments_of(r, &mo, &vo);
    const float *base[3] = {moe_model_param_data(mod), mo, vo};
    static const char *prefix[3] = {"model.", "optim.m.", "optim.v."};
    int cap = 3 * nt + 1;
    w->t = calloc((size_t)cap, sizeof *w->t);
    w->names = calloc((size_t)cap, sizeof *w->names);
    w->full = calloc((size_t)cap, sizeof *w->full);
    ck_assert(w->t && w->names && w->full);
    w->n = 0;
    for (int p = 0; p < 3; p++)
        for (int i = 0; i < nt; i++) {
            int mult = t[i].is_expert ? g_ep : 1;
            float *full = malloc(t[i].numel * (size_t)mult * sizeof(float));
            ck_assert(full);
            if (mult > 1)
                OK_ALL(moe_allgather(r->w.par.ep, base[p] + t[i].offset, full, t[i].numel, MOE_DT_F32));
            else
                memcpy(full, base[p] + t[i].offset, t[i].numel * sizeof(float));
            moe_ckpt_tensor *c = &w->t[w->n];
            snprintf(w->names[w->n], sizeof w->names[0], "%s%s", prefix[p], t[i].name);
            c->name = w->names[w->n];
            c->ndim = t[i].ndim;
            memcpy(c->shape, t[i].shape, sizeof c->shape);
            c->shape[0] *= mult;
            c->data = full;
            c->bytes = t[i].numel * (size_t)mult * sizeof(float);
            w->full[w->n++] = full;
        }
    if (nstate > 0) {
        float *full = malloc(nstate * sizeof(float));
        ck_assert(full);
        memcpy(full, state, nstate * sizeof(float));
        moe_ckpt_tensor *c = &w->t[w->n];
        snprintf(w->names[w->n], sizeof w->names[0], "state.expert_bias");
        *c = (moe_ckpt_tensor){.name = w->names[w->n], .ndim = 1, .shape = {(int64_t)nstate}, .data = full,
                               .bytes = nstate * sizeof(float)};
        w->full[w->n++] = full;
    }
    free(mo);
    free(vo);
}

static void whole_free(whole *w)
{
    for (int i = 0; i < w->n; i++)
        free(w->full[i]);
    free(w->full);
    free(w->t);
    free(w->names);
}

/* One process, offline: load every tensor whole into fresh buffers; equal to w? */
static int offline_load_matches(const char *dir, const whole *w, long step, char *why, size_t cap)
{
    moe_ckpt_tensor *t = calloc((size_t)w->n, sizeof *t);
    ck_assert(t);
    for (int i = 0; i < w->n; i++) {
        t[i] = w->t[i];
        t[i].data = malloc(t[i].bytes ? t[i].bytes : 1);
        ck_assert(t[i].data);
        memset(t[i].data, 0xA5, t[i].bytes);
    }
    moe_ckpt_meta meta;
    int ok = moe_ckpt_load_dir(dir, &meta, t, w->n) == MOE_OK;
    if (!ok)
        snprintf(why, cap, "offline load: %s", moe_errmsg());
    if (ok && meta.step != step) {
        snprintf(why, cap, "offline load: step %lld", (long long)meta.step);
        ok = 0;
    }
    for (int i = 0; ok && i < w->n; i++)
        if (memcmp(t[i].data, w->t[i].data, t[i].bytes) != 0) {
            snprintf(why, cap, "offline load: %s differs from the gathered tensor", t[i].name);
            ok = 0;
        }
    for (int i = 0; i < w->n; i++)
        free(t[i].data);
    free(t);
    return ok;
}

START_TEST(sharded_save_and_reload)
{
    char root[512], dir[700], why[512] = "";
    shared_tmpdir(root, sizeof root, "mpi-ckpt");
    enum { SAVE_AT = 2, MORE = 2 };
    run a;
    run_open(&a);
    CHECK_ALL(a.w.par.ep && moe_comm_size(a.w.par.ep) == g_ep, "expected an ep group of %d", g_ep);
    for (long s = 0; s < SAVE_AT; s++)
        run_step(&a, s);
    OK_ALL(moe_train_save(a.t, &a.cfg, root, SAVE_AT, 77));
    snprintf(dir, sizeof dir, "%s/step-%07d", root, SAVE_AT);

    int owns[64], ep_rank[64];
    ck_assert_int_le(P, 64);
    owners(&a, owns, ep_rank);
    int ok = R != 0 || check_manifest(&a, dir, owns, ep_rank, why, sizeof why);
    CHECK_ALL(ok, "%s", why);

    /* the offline, one-process view of the same checkpoint */
    whole w;
    gather_whole(&a, &w);
    ok = R != 0 || offline_load_matches(dir, &w, SAVE_AT, why, sizeof why);
    CHECK_ALL(ok, "%s", why);
    whole_free(&w);

    /* same layout: bit-exact, and the run continues identically */
    run b;
    run_open(&b);
    long step = -1;
    uint64_t next = 0;
    char loaded[1024];
    OK_ALL(moe_train_load(b.t, root, &step, &next, loaded, sizeof loaded));
    CHECK_ALL(step == SAVE_AT && next == 77 && strcmp(loaded, dir) == 0, "loaded step %ld, next %llu from %s", step,
              (unsigned long long)next, loaded);
    CHECK_ALL(same_state(&a, &b), "the reloaded state differs from the saved one");
    for (int s = 0; s < MORE; s++) {
        double la = run_step(&a, SAVE_AT + s), lb = run_step(&b, SAVE_AT + s);
        CHECK_ALL(la == lb, "step %d: loss %.17g after reload, %.17g before", SAVE_AT + s, lb, la);
    }
    CHECK_ALL(same_state(&a, &b), "the resumed run drifted");

    /* a corrupt expert shard of another rank: every rank refuses the step together */
    int other = -1;
    for (int i = 1; i < P && other < 0; i++)
        if (owns[i])
            other = i;
    CHECK_ALL(other > 0, "no second owner");
    if (R == 0) {
        char path[1200];
        snprintf(path, sizeof path, "%s/shard-%05d.bin", dir, other);
        FILE *f = fopen(path, "r+b");
        ck_assert_ptr_nonnull(f);
        ck_assert_int_eq(fseek(f, 100, SEEK_SET), 0);
        int c = fgetc(f);
        ck_assert_int_eq(fseek(f, 100, SEEK_SET), 0);
        fputc(c ^ 0x40, f);
        fclose(f);
    }
    OK_ALL(moe_barrier(W));
    moe_error_clear();
    moe_status st = moe_train_load(b.t, dir, &step, &next, loaded, sizeof loaded);
    char shard[32];
    snprintf(shard, sizeof shard, "shard-%05d.bin", other);
    CHECK_ALL(st == MOE_ERR_INPUT && strstr(moe_errmsg(), shard), "status %d: %s", (int)st, moe_errmsg());
    moe_error_clear();

    run_close(&a);
    run_close(&b);
    if (R == 0) {
        char cmd[1200], out[256];
        snprintf(cmd, sizeof cmd, "rm -rf '%s'", root);
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
    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "--ep") == 0 && i + 1 < argc)
            g_ep = atoi(argv[++i]);
        else if (strcmp(argv[i], "--distopt") == 0)
            g_distopt = 1;
    }
    Suite *s = suite_create("ckpt");
    TCase *tc = tcase_create("core");
    tcase_set_timeout(tc, 300);
    tcase_add_test(tc, sharded_save_and_reload);
    suite_add_tcase(s, tc);
    SRunner *sr = srunner_create(s);
    srunner_set_fork_status(sr, CK_NOFORK); /* MPI processes must not fork */
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    if (moe_allreduce(W, &failed, 1, MOE_DT_I32, MOE_OP_MAX) != MOE_OK)
        failed = 1;
    moe_comm_finalize();
    return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}
