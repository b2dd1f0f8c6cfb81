/*
** The three expert-layer modes (--moe-overlap none|coarse|fine) give
** bit-identical outputs and gradients: every rank routes its tokens, runs
** moe_ep_forward + moe_ep_backward once per mode on the same inputs, and
** compares ys, dxs, dw13 and dw2 byte for byte with the plain dispatcher's.
** Routing: uniform, skewed (most pairs to expert 0), and starved (no rank
** sends anything to the last rank's experts, and the last rank routes
** nothing at all). --delay US adds pseudo-random pauses before sends (the
** ep.h test hook), so messages land in changing orders. fine runs with its
** own rule for messages per source, then one, then two. growth: a layer kept
** across steps reserves twice what comes, up to every peer's rows, and its
** steps stay exact.
**
** usage: mpirun -np P mpi_overlap [--experts E] [--delay US] [--threads T]
*/
#include <check.h>
#include <stdlib.h>
#include <string.h>

#ifdef _OPENMP
#include <omp.h>
#endif

#include "layers/experts.h"
#include "parallel/ep.h"
#include "runtime/base/rng.h"
#include "tests/mpi/mpitest.h"

static moe_comm *W;
static int R, P, g_experts = 8, g_delay, g_threads;

enum { N = 96, C = 24, F = 20, K = 2 };

typedef struct {
    int E, El;
    moe_expert_map map;
    int32_t *slot_idx, *offsets, *kept, *slot_row, *row_token, *row_slot;
    float *x, *xs, *dys, *w13, *w2;
    int rows;
} setup;

static float uni(moe_rng *r) { return (float)(moe_rng_uniform(r) * 2 - 1); }

/* Routing of this rank's tokens, in slot order (see parallel/ep.h): 0
** uniform, 1 skewed (80% of first choices expert 0), 2 starved (below), 3
** every token to experts 0 and 1 (rank 0's: all pairs to one rank). */
static void route(setup *s, int kind, moe_rng *r)
{
    int n_tok = kind == 2 && R == P - 1 ? 0 : N;
    for (int n = 0; n < n_tok; n++) {
        int a = (int)moe_rng_below(r, (uint64_t)s->E), b;
        if (kind == 1 && moe_rng_uniform(r) < 0.8)
            a = 0;
        if (kind == 2) /* never the last rank's experts */
            a = (int)moe_rng_below(r, (uint64_t)(s->E - s->El));
        do {
            b = (int)moe_rng_below(r, (uint64_t)(kind == 2 ? s->E - s->El : s->E));
        } while (b == a);
        if (kind == 3)
            a = 0, b = 1;
        s->slot_idx[n * K] = moe_expert_slot(&s->map, a);
        s->slot_idx[n * K + 1] = moe_expert_slot(&s->map, b);
    }
    s->rows = moe_route_plan(s->kept, s->offsets, s->slot_row, s->row_token, s->row_slot, s->slot_idx, NULL, n_tok,
                             s->E, K, 0, MOE_DROP_PROBS, 0);
    ck_assert_int_ge(s->rows, 0);
}

static void make(setup *s, int kind)
{
    memset(s, 0, sizeof *s);
    s->E = g_experts;
    OK_ALL(moe_expert_map_contiguous(&s->map, s->E, P, R));
    s->El = s->map.E_local;
    size_t NK = (size_t)N * K;
    s->slot_idx = calloc(NK, sizeof(int32_t));
    s->offsets = calloc((size_t)s->E + 1, sizeof(int32_t));
    s->kept = calloc((size_t)s->E, sizeof(int32_t));
    s->slot_row = calloc(NK, sizeof(int32_t));
    s->row_token = calloc(NK, sizeof(int32_t));
    s->row_slot = calloc(NK, sizeof(int32_t));
    s->x = calloc((size_t)N * C, sizeof(float));
    s->xs = calloc(NK * C, sizeof(float));
    s->dys = calloc(NK * C, sizeof(float));
    s->w13 = calloc((size_t)s->El * 2 * F * C, sizeof(float));
    s->w2 = calloc((size_t)s->El * C * F, sizeof(float));
    ck_assert(s->slot_idx && s->offsets && s->kept && s->slot_row && s->row_token && s->row_slot && s->x &&
              s->xs && s->dys && s->w13 && s->w2);
    moe_rng r;
    moe_rng_seed(&r, 1000 + (uint64_t)R * 7 + (uint64_t)kind);
    route(s, kind, &r);
    for (size_t i = 0; i < (size_t)N * C; i++)
        s->x[i] = uni(&r);
    for (size_t i = 0; i < NK * C; i++)
        s->dys[i] = uni(&r);
    for (size_t i = 0; i < (size_t)s->El * 2 * F * C; i++)
        s->w13[i] = 0.2f * uni(&r);
    for (size_t i = 0; i < (size_t)s->El * C * F; i++)
        s->w2[i] = 0.2f * uni(&r);
}

static void drop(setup *s)
{
    void *p[] = {s->slot_idx, s->offsets, s->kept, s->slot_row, s->row_token, s->row_slot,
                 s->x, s->xs, s->dys, s->w13, s->w2};
    for (size_t i = 0; i < sizeof p / sizeof *p; i++)
        free(p[i]);
    moe_expert_map_free(&s->map);
}

typedef struct {
    float *ys, *dxs, *dw13, *dw2;
} result;

/* One forward and backward of layer l on s's routing, as a step runs it. */
static void run_on(moe_ep_layer *l, setup *s, result *out)
{
    size_t NK = (size_t)N * K, w13n = (size_t)s->El * 2 * F * C, w2n = (size_t)s->El * C * F;
    out->ys = calloc(NK * C, sizeof(float));
    out->dxs = calloc(NK * C, sizeof(float));
    out->dw13 = calloc(w13n, sizeof(float));
    out->dw2 = calloc(w2n, sizeof(float));
    ck_assert(out->ys && out->dxs && out->dw13 && out->dw2);
    OK_ALL(moe_ep_forward(l, W, &s->map, s->x, s->row_token, s->xs, s->offsets, s->rows, C, F, s->w13, s->w2,
                          out->ys));
    OK_ALL(moe_ep_backward(l, W, &s->map, s->dys, s->rows, C, F, s->w13, s->w2, out->dw13, out->dw2, out->dxs));
}

/* On a fresh layer; fine_chunks: fine's messages per source (0: the rule). */
static void run(setup *s, int mode, int fine_chunks, result *out)
{
    moe_ep_layer l;
    memset(&l, 0, sizeof l);
    l.overlap = mode;
    l.chunks = 2;
    l.fine_chunks = fine_chunks;
    l.delay_us = g_delay;
    l.delay_state = (unsigned)(R * 31 + mode);
    run_on(&l, s, out);
    moe_ep_layer_free(&l);
}

static void same(const result *a, const result *b, const setup *s, const char *what)
{
    size_t NK = (size_t)s->rows, w13n = (size_t)s->El * 2 * F * C, w2n = (size_t)s->El * C * F;
    CHECK_ALL(memcmp(a->ys, b->ys, NK * C * sizeof(float)) == 0, "%s: outputs differ", what);
    CHECK_ALL(memcmp(a->dxs, b->dxs, NK * C * sizeof(float)) == 0, "%s: input gradients differ", what);
    CHECK_ALL(memcmp(a->dw13, b->dw13, w13n * sizeof(float)) == 0, "%s: w13 gradients differ", what);
    CHECK_ALL(memcmp(a->dw2, b->dw2, w2n * sizeof(float)) == 0, "%s: w2 gradients differ", what);
}

static void free_result(result *r)
{
    free(r->ys);
    free(r->dxs);
    free(r->dw13);
    free(r->dw2);
}

static void modes_agree(int kind, const char *name)
{
    setup s;
    make(&s, kind);
    result base, r;
    run(&s, MOE_EP_NONE, 0, &base);
    /* the test would pass vacuously if nothing moved */
    double mag = 0;
    for (size_t i = 0; i < (size_t)s.rows * C; i++)
        mag += base.ys[i] * (double)base.ys[i];
    CHECK_ALL(s.rows == 0 || mag > 0, "%s: all-zero outputs", name);
    static const char *mode_name[] = {"none", "coarse", "fine"};
    for (int mode = MOE_EP_COARSE; mode <= MOE_EP_FINE; mode++) {
        for (int rep = 0; rep < 3; rep++) { /* arrival orders change between runs; fine: 0 (rule), 1, 2 chunks */
            char what[96];
            snprintf(what, sizeof what, "%s routing, %s (run %d)", name, mode_name[mode], rep);
            run(&s, mode, rep, &r);
            same(&base, &r, &s, what);
            free_result(&r);
        }
    }
    free_result(&base);
    drop(&s);
}

START_TEST(uniform) { modes_agree(0, "uniform"); }
END_TEST
START_TEST(skewed) { modes_agree(1, "skewed"); }
END_TEST
START_TEST(starved) { modes_agree(2, "starved"); }
END_TEST

/* The capacity reserve gives a layer receiving `got` rows that held `cap`
** (see parallel/ep.c): each rank sends N x K rows, so P x N x K is the most. */
static size_t reserved(size_t got, size_t cap)
{
    size_t mean = (size_t)N * K, bound = (size_t)P * mean;
    if (got <= cap && cap > 0)
        return cap;
    size_t big = got > cap ? got : cap;
    big = big > mean ? big : mean;
    return 2 * big < bound ? 2 * big : bound;
}

/* A layer kept across steps, as the trainer keeps one per MoE layer: its
** expert-side buffers hold twice the rows (up to all peers' rows) and grow
** only past that, because each growth zero-fills fresh pages; and every step
** on it is exact, the same as on a fresh layer. Uniform routing, then
** skewed, then every pair to rank 0 (which needs all P x N x K rows). */
START_TEST(growth)
{
    moe_ep_layer l;
    memset(&l, 0, sizeof l);
    static const int kinds[] = {0, 1, 3};
    static const char *name[] = {"uniform", "skewed", "all to rank 0"};
    size_t cap = 0;
    for (int i = 0; i < 3; i++) {
        setup s;
        make(&s, kinds[i]);
        result kept, fresh;
        run_on(&l, &s, &kept);
        size_t want = reserved(l.recv_total, cap);
        CHECK_ALL(l.cap_rows == want && want >= l.recv_total, "%s: %zu rows held for %zu received (before %zu): want %zu",
                  name[i], l.cap_rows, l.recv_total, cap, want);
        cap = l.cap_rows;
        run(&s, MOE_EP_NONE, 0, &fresh);
        char what[64];
        snprintf(what, sizeof what, "%s, on a kept layer", name[i]);
        same(&fresh, &kept, &s, what);
        free_result(&kept);
        free_result(&fresh);
        drop(&s);
    }
    CHECK_ALL(R != 0 || cap == (size_t)P * N * K, "rank 0 holds %zu rows after receiving all %d", cap, P * N * K);
    moe_ep_layer_free(&l);
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
        if (strcmp(argv[i], "--experts") == 0 && i + 1 < argc) g_experts = atoi(argv[++i]);
        else if (strcmp(argv[i], "--delay") == 0 && i + 1 < argc) g_delay = atoi(argv[++i]);
        else if (strcmp(argv[i], "--threads") == 0 && i + 1 < argc) g_threads = atoi(argv[++i]);
    }
#ifdef _OPENMP
    if (g_threads > 0)
        omp_set_num_threads(g_threads);
#endif
    Suite *su = suite_create("overlap");
    TCase *tc = tcase_create("core");
    tcase_set_timeout(tc, 120);
    tcase_add_test(tc, uniform);
    tcase_add_test(tc, skewed);
    tcase_add_test(tc, starved);
    tcase_add_test(tc, growth);
    suite_add_tcase(su, tc);
    SRunner *sr = srunner_create(su);
    srunner_set_fork_status(sr, CK_NOFORK);
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    moe_comm_finalize();
    return failed ? 1 : 0;
}
