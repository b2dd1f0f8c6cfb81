/*
** mpi_comm: comm/comm.h over MPI, run by every rank (mpirun -np 1..4;
** tests/comm.cmake). `--max-chunk N` sets MOE_COMM_MAX_CHUNK before
** moe_comm_init, so the same suite also runs with every count above N split
** or described by derived types, and must give the same bits.
**
** Every value is a pure function of (sender, receiver, index), so each rank
** computes what it must receive without trusting the code under test. Every
** verdict is agreed over the world (CHECK_ALL) before ck_assert, so all ranks
** leave a failing test together and none is stranded in a collective.
*/
#include <check.h>
#include <mpi.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "comm/comm.h"
#include "runtime/base/status.h"
#include "mpitest.h"

static moe_comm *W;
static int R, P;


/* Expects a refusal with status `want` whose message holds both strings. */
#define REFUSED(call, want, s1, s2)                                                                \
    do {                                                                                           \
        moe_error_clear();                                                                         \
        moe_status st_ = (call);                                                                   \
        CHECK_ALL(st_ == (want) && strstr(moe_errmsg(), s1) && strstr(moe_errmsg(), s2),           \
                  "%s gave %s: '%s'", #call, moe_status_name(st_), moe_errmsg());                  \
        moe_error_clear();                                                                         \
    } while (0)

/* ---- values ------------------------------------------------------------------ */

static uint64_t mix(uint64_t x)
{
    x += 0x9E3779B97F4A7C15ull;
    x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9ull;
    x = (x ^ (x >> 27)) * 0x94D049BB133111EBull;
    return x ^ (x >> 31);
}

static uint64_t key(int from, int to, size_t i)
{
    return ((uint64_t)from << 48) ^ ((uint64_t)to << 32) ^ (uint64_t)i;
}

/* Small integers: exact in every dtype and in any sum order. */
static double ival(moe_dtype t, int from, int to, size_t i)
{
    uint64_t h = mix(key(from, to, i));
    return t == MOE_DT_U8 ? (double)(h % 60) : (double)((int64_t)(h % 2001) - 1000);
}

/* Random mantissa and magnitude: sums of these depend on their order. */
static double fval(int from, int to, size_t i)
{
    uint64_t h = mix(key(from, to, i) ^ 0xABCDEFull);
    double u = (double)(h >> 11) * 0x1.0p-53 * 2.0 - 1.0;
    return u * (double)(1u << (mix(h) % 16)) / 256.0;
}

static void put(moe_dtype t, void *b, size_t i, double v)
{
    switch (t) {
    case MOE_DT_F32: ((float *)b)[i] = (float)v; break;
    case MOE_DT_F64: ((double *)b)[i] = v; break;
    case MOE_DT_I32: ((int32_t *)b)[i] = (int32_t)v; break;
    case MOE_DT_I64: ((int64_t *)b)[i] = (int64_t)v; break;
    case MOE_DT_U8: ((uint8_t *)b)[i] = (uint8_t)v; break;
    }
}

static double get(moe_dtype t, const void *b, size_t i)
{
    switch (t) {
    case MOE_DT_F32: return ((const float *)b)[i];
    case MOE_DT_F64: return ((const double *)b)[i];
    case MOE_DT_I32: return ((const int32_t *)b)[i];
    case MOE_DT_I64: return (double)((const int64_t *)b)[i];
    case MOE_DT_U8: return ((const uint8_t *)b)[i];
    }
    return 0;
}

static double combine(moe_redop op, double a, double b)
{
    return op == MOE_OP_SUM ? a + b : op == MOE_OP_MAX ? (a > b ? a : b) : (a < b ? a : b);
}

/* moe_test + moe_progress until done. Each rank loops a different number of
** times, so the verdict is local here and agreed by the caller. */
static int poll_until_done(moe_request **req)
{
    int done = 0, ok = 1;
    while (ok && !done) {
        ok &= moe_progress(W) == MOE_OK;
        ok &= moe_test(req, &done) == MOE_OK;
    }
    if (!ok)
        fprintf(stderr, "[rank %d] polling failed: %s\n", R, moe_errmsg());
    return ok && *req == NULL;
}

static void *zalloc(size_t bytes)
{
    void *p = calloc(bytes ? bytes : 1, 1);
    ck_assert_ptr_nonnull(p);
    return p;
}

/* ---- world and groups -------------------------------------------------------- */

START_TEST(test_world)
{
    int mr, ms;
    MPI_Comm_rank(MPI_COMM_WORLD, &mr);
    MPI_Comm_size(MPI_COMM_WORLD, &ms);
    moe_comm *again = NULL;
    OK_ALL(moe_comm_world(&again));
    CHECK_ALL(again == W, "moe_comm_world is not idempotent");
    CHECK_ALL(R == mr && P == ms && strcmp(moe_comm_name(W), "world") == 0,
              "world is %d of %d '%s'", R, P, moe_comm_name(W));
    OK_ALL(moe_barrier(W));
}
END_TEST

/* Creates a group from the table and checks rank order by gathering world ranks. */
static void check_group(const int *table, int ngroups, int gsize, const char *name)
{
    moe_comm *g = NULL;
    OK_ALL(moe_comm_create(W, table, ngroups, gsize, name, &g));
    int mine = -1, pos = -1;
    for (int i = 0; i < ngroups * gsize; i++)
        if (table[i] == R) {
            mine = i / gsize;
            pos = i % gsize;
        }
    CHECK_ALL(moe_comm_rank(g) == pos && moe_comm_size(g) == gsize &&
                  strcmp(moe_comm_name(g), name) == 0,
              "group '%s': rank %d of %d, expected %d of %d", name, moe_comm_rank(g),
              moe_comm_size(g), pos, gsize);
    int *members = zalloc(sizeof(int) * (size_t)gsize);
    OK_ALL(moe_allgather(g, &R, members, 1, MOE_DT_I32));
    int ok = 1;
    for (int k = 0; k < gsize; k++)
        ok &= members[k] == table[mine * gsize + k];
    CHECK_ALL(ok, "group '%s' is not in table order", name);
    int64_t sum = R, want = 0;
    for (int k = 0; k < gsize; k++)
        want += table[mine * gsize + k];
    OK_ALL(moe_allreduce(g, &sum, 1, MOE_DT_I64, MOE_OP_SUM));
    CHECK_ALL(sum == want, "group '%s' sum %lld, expected %lld", name, (long long)sum,
              (long long)want);
    free(members);
    moe_comm_free(g);
}

START_TEST(test_groups)
{
    int *t = zalloc(sizeof(int) * (size_t)P);
    for (int i = 0; i < P; i++) /* one group, listed backwards */
        t[i] = P - 1 - i;
    check_group(t, 1, P, "reversed");
    for (int i = 0; i < P; i++) /* every rank alone */
        t[i] = i;
    check_group(t, P, 1, "solo");
    if (P % 2 == 0) {
        check_group(t, P / 2, 2, "pairs"); /* [[0,1],[2,3]] */
        for (int g = 0; g < P / 2; g++) {  /* [[0,2],[1,3]] */
            t[2 * g] = g;
            t[2 * g + 1] = g + P / 2;
        }
        check_group(t, P / 2, 2, "interleaved");
    }
    free(t);
}
END_TEST

START_TEST(test_bad_tables)
{
    int *t = zalloc(sizeof(int) * (size_t)(P + 1));
    moe_comm *g = NULL;
    for (int i = 0; i <= P; i++)
        t[i] = i % P;
    REFUSED(moe_comm_create(W, t, 1, P + 1, "bad", &g), MOE_ERR_INTERNAL, "comm_create 'bad'",
            "but the parent has");
    CHECK_ALL(g == NULL, "a refused table gave a comm");
    t[P - 1] = P;
    REFUSED(moe_comm_create(W, t, P, 1, "bad", &g), MOE_ERR_INTERNAL, "group 'world'", "outside");
    if (P >= 2) {
        for (int i = 0; i < P; i++)
            t[i] = i;
        t[1] = 0;
        REFUSED(moe_comm_create(W, t, 1, P, "bad", &g), MOE_ERR_INTERNAL, "'bad'",
                "rank 0 appears twice");
    }
    REFUSED(moe_comm_create(W, NULL, 1, P, "bad", &g), MOE_ERR_INTERNAL, "'bad'", "empty");
    free(t);
}
END_TEST

/* Two subsets, the odd ranks in reverse and the first two: members get a comm
** whose ranks follow the list and sum among themselves; the others get NULL.
** Bad lists are refused on every rank alike. */
START_TEST(test_subsets)
{
    int *odd = zalloc(sizeof(int) * (size_t)P), n = 0;
    for (int r = P - 1; r >= 0; r--)
        if (r % 2)
            odd[n++] = r;
    for (int k = 0; k < 2 && n > 0; k++) {
        int first2[2] = {0, 1}, *list = k ? first2 : odd, len = k ? (P >= 2 ? 2 : 1) : n, pos = -1;
        moe_comm *g = NULL;
        OK_ALL(moe_comm_create_subset(W, list, len, "subset", &g));
        for (int i = 0; i < len; i++)
            if (list[i] == R)
                pos = i;
        int ok = (g != NULL) == (pos >= 0);
        if (ok && g) {
            int64_t v = R, want = 0;
            for (int i = 0; i < len; i++)
                want += list[i];
            ok = moe_comm_rank(g) == pos && moe_comm_size(g) == len &&
                 moe_allreduce(g, &v, 1, MOE_DT_I64, MOE_OP_SUM) == MOE_OK && v == want;
        }
        CHECK_ALL(ok, "subset %d: comm %p at position %d, wrong membership, order or sum", k, (void *)g, pos);
        moe_comm_free(g);
    }
    free(odd);
    moe_comm *g = NULL;
    int out_of_range[1] = {P};
    REFUSED(moe_comm_create_subset(W, out_of_range, 1, "bad", &g), MOE_ERR_INTERNAL, "'bad'", "outside");
    if (P >= 2) {
        int twice[2] = {1, 1};
        REFUSED(moe_comm_create_subset(W, twice, 2, "bad", &g), MOE_ERR_INTERNAL, "'bad'", "listed twice");
    }
    REFUSED(moe_comm_create_subset(W, out_of_range, 0, "bad", &g), MOE_ERR_INTERNAL, "'bad'", "0 ranks");
}
END_TEST

/* ---- reductions -------------------------------------------------------------- */

static const moe_dtype NUM_T[] = {MOE_DT_F32, MOE_DT_F64, MOE_DT_I32, MOE_DT_I64, MOE_DT_U8};
static const moe_redop OPS[] = {MOE_OP_SUM, MOE_OP_MAX, MOE_OP_MIN};

START_TEST(test_allreduce)
{
    const size_t counts[] = {0, 1, 5, 1000};
    for (int ti = 0; ti < 5; ti++)
        for (int oi = 0; oi < 3; oi++)
            for (int ci = 0; ci < 4; ci++) {
                moe_dtype t = NUM_T[ti];
                moe_redop op = OPS[oi];
                size_t n = counts[ci];
                if (t == MOE_DT_U8 && op == MOE_OP_SUM && P > 4)
                    continue; /* 60 * P would wrap */
                char *b = zalloc(n * moe_dtype_size(t)), *nb = zalloc(n * moe_dtype_size(t));
                for (size_t i = 0; i < n; i++)
                    put(t, b, i, ival(t, R, 0, i));
                memcpy(nb, b, n * moe_dtype_size(t));
                OK_ALL(moe_allreduce(W, b, n, t, op));
                moe_request *req = NULL;
                OK_ALL(moe_iallreduce(W, nb, n, t, op, &req));
                OK_ALL(moe_wait(&req));
                int ok = req == NULL;
                for (size_t i = 0; i < n; i++) {
                    double want = ival(t, 0, 0, i);
                    for (int r = 1; r < P; r++)
                        want = combine(op, want, ival(t, r, 0, i));
                    ok &= get(t, b, i) == want;
                }
                CHECK_ALL(ok && memcmp(b, nb, n * moe_dtype_size(t)) == 0,
                          "allreduce dtype %d op %d count %zu", (int)t, (int)op, n);
                free(b);
                free(nb);
            }
}
END_TEST

/* MAX/MIN of random floats are exact in any order; so is a sum of two. */
START_TEST(test_allreduce_random_exact)
{
    const size_t n = 777;
    float *b = zalloc(n * sizeof(float));
    for (int oi = 0; oi < 3; oi++) {
        if (OPS[oi] == MOE_OP_SUM && P > 2)
            continue;
        for (size_t i = 0; i < n; i++)
            b[i] = (float)fval(R, 0, i);
        OK_ALL(moe_allreduce(W, b, n, MOE_DT_F32, OPS[oi]));
        int ok = 1;
        for (size_t i = 0; i < n; i++) {
            float want = (float)fval(0, 0, i);
            for (int r = 1; r < P; r++) {
                float v = (float)fval(r, 0, i);
                want = OPS[oi] == MOE_OP_SUM   ? want + v
                       : OPS[oi] == MOE_OP_MAX ? (v > want ? v : want)
                                               : (v < want ? v : want);
            }
            ok &= memcmp(&b[i], &want, sizeof want) == 0;
        }
        CHECK_ALL(ok, "random float allreduce op %d", OPS[oi]);
    }
    free(b);
}
END_TEST

/* The same sum twice gives the same bits, on every rank, blocking or not. */
START_TEST(test_allreduce_deterministic)
{
    const size_t n = 4099;
    float *in = zalloc(n * sizeof(float)), *a = zalloc(n * sizeof(float));
    float *b = zalloc(n * sizeof(float)), *all = zalloc((size_t)P * n * sizeof(float));
    for (size_t i = 0; i < n; i++)
        in[i] = (float)fval(R, 1, i);
    memcpy(a, in, n * sizeof(float));
    memcpy(b, in, n * sizeof(float));
    OK_ALL(moe_allreduce(W, a, n, MOE_DT_F32, MOE_OP_SUM));
    OK_ALL(moe_allreduce(W, b, n, MOE_DT_F32, MOE_OP_SUM));
    CHECK_ALL(memcmp(a, b, n * sizeof(float)) == 0, "two identical allreduces differ");
    OK_ALL(moe_allgather(W, a, all, n, MOE_DT_F32));
    int same = 1;
    for (int r = 0; r < P; r++)
        same &= memcmp(all + (size_t)r * n, a, n * sizeof(float)) == 0;
    CHECK_ALL(same, "ranks hold different sums");
    moe_request *q1 = NULL, *q2 = NULL;
    memcpy(a, in, n * sizeof(float));
    memcpy(b, in, n * sizeof(float));
    OK_ALL(moe_iallreduce(W, a, n, MOE_DT_F32, MOE_OP_SUM, &q1));
    OK_ALL(moe_iallreduce(W, b, n, MOE_DT_F32, MOE_OP_SUM, &q2));
    OK_ALL(moe_wait(&q2));
    OK_ALL(moe_wait(&q1));
    CHECK_ALL(memcmp(a, b, n * sizeof(float)) == 0, "two identical iallreduces differ");
    free(in);
    free(a);
    free(b);
    free(all);
}
END_TEST

START_TEST(test_reduce_scatter)
{
    const size_t counts[] = {0, 3, 50};
    const moe_dtype ts[] = {MOE_DT_F32, MOE_DT_I64};
    for (int ti = 0; ti < 2; ti++)
        for (int oi = 0; oi < 2; oi++)
            for (int ci = 0; ci < 3; ci++) {
                moe_dtype t = ts[ti];
                moe_redop op = OPS[oi];
                size_t n = counts[ci], es = moe_dtype_size(t);
                char *s = zalloc((size_t)P * n * es), *b = zalloc(n * es), *nb = zalloc(n * es);
                for (int j = 0; j < P; j++)
                    for (size_t i = 0; i < n; i++)
                        put(t, s, (size_t)j * n + i, ival(t, R, j, i));
                OK_ALL(moe_reduce_scatter(W, s, b, n, t, op));
                moe_request *req = NULL;
                OK_ALL(moe_ireduce_scatter(W, s, nb, n, t, op, &req));
                int ok = poll_until_done(&req);
                for (size_t i = 0; i < n; i++) {
                    double want = ival(t, 0, R, i);
                    for (int r = 1; r < P; r++)
                        want = combine(op, want, ival(t, r, R, i));
                    ok &= get(t, b, i) == want;
                }
                CHECK_ALL(ok && memcmp(b, nb, n * es) == 0,
                          "reduce_scatter dtype %d op %d count %zu", (int)t, (int)op, n);
                free(s);
                free(b);
                free(nb);
            }
}
END_TEST

/* ---- gathers and exchanges ---------------------------------------------------- */

START_TEST(test_allgather)
{
    const size_t counts[] = {0, 1, 3, 20};
    for (int ci = 0; ci < 4; ci++) {
        size_t n = counts[ci];
        double *s = zalloc(n * 8), *b = zalloc((size_t)P * n * 8), *nb = zalloc((size_t)P * n * 8);
        for (size_t i = 0; i < n; i++)
            s[i] = fval(R, 0, i);
        OK_ALL(moe_allgather(W, s, b, n, MOE_DT_F64));
        moe_request *req = NULL;
        OK_ALL(moe_iallgather(W, s, nb, n, MOE_DT_F64, &req));
        OK_ALL(moe_wait(&req));
        int ok = 1;
        for (int j = 0; j < P; j++)
            for (size_t i = 0; i < n; i++) {
                double want = fval(j, 0, i);
                ok &= memcmp(&b[(size_t)j * n + i], &want, 8) == 0;
            }
        CHECK_ALL(ok && memcmp(b, nb, (size_t)P * n * 8) == 0, "allgather count %zu", n);
        free(s);
        free(b);
        free(nb);
    }
}
END_TEST

#define SENTINEL (-777.25)

/* Rank j contributes scale * ((j + shift) % 3) elements; blocks sit `gap`
** apart, and the gaps must come back untouched. */
static void run_allgatherv(size_t scale, size_t gap, int shift)
{
    size_t counts[16], displs[16], end = gap;
    for (int j = 0; j < P; j++) {
        counts[j] = scale * (size_t)((j + shift) % 3);
        displs[j] = end;
        end += counts[j] + gap;
    }
    double *s = zalloc(counts[R] * 8 + 8), *b = zalloc(end * 8), *nb = zalloc(end * 8);
    for (size_t i = 0; i < counts[R]; i++)
        s[i] = fval(R, 0, i);
    for (size_t i = 0; i < end; i++)
        b[i] = nb[i] = SENTINEL;
    OK_ALL(moe_allgatherv(W, s, counts[R], b, counts, displs, MOE_DT_F64));
    moe_request *req = NULL;
    OK_ALL(moe_iallgatherv(W, s, counts[R], nb, counts, displs, MOE_DT_F64, &req));
    OK_ALL(moe_wait(&req));
    int ok = 1;
    for (int j = 0; j < P; j++)
        for (size_t i = 0; i < counts[j]; i++) {
            double want = fval(j, 0, i);
            ok &= memcmp(&b[displs[j] + i], &want, 8) == 0;
        }
    for (int j = 0; j <= P; j++) /* the gap before each block and after the last */
        for (size_t i = 0; i < gap; i++)
            ok &= b[(j < P ? displs[j] : end) - gap + i] == SENTINEL;
    CHECK_ALL(ok && memcmp(b, nb, end * 8) == 0, "allgatherv scale %zu gap %zu shift %d", scale,
              gap, shift);
    free(s);
    free(b);
    free(nb);
}

START_TEST(test_allgatherv)
{
    ck_assert_int_le(P, 16);
    run_allgatherv(1, 0, 0); /* rank 0 (and every third) sends nothing */
    run_allgatherv(1, 0, 1);
    run_allgatherv(1, 9, 1);  /* with --max-chunk 7: displacements too big, staged */
    run_allgatherv(40, 3, 0); /* with --max-chunk 7: counts too big, point-to-point */
    run_allgatherv(40, 3, 1);
    run_allgatherv(0, 2, 0); /* nobody sends anything */
}
END_TEST

START_TEST(test_alltoall)
{
    const size_t counts[] = {0, 1, 4, 20};
    for (int ci = 0; ci < 4; ci++) {
        size_t n = counts[ci];
        double *s = zalloc((size_t)P * n * 8), *b = zalloc((size_t)P * n * 8);
        for (int j = 0; j < P; j++)
            for (size_t i = 0; i < n; i++)
                s[(size_t)j * n + i] = fval(R, j, i);
        OK_ALL(moe_alltoall(W, s, b, n, MOE_DT_F64));
        int ok = 1;
        for (int j = 0; j < P; j++)
            for (size_t i = 0; i < n; i++) {
                double want = fval(j, R, i);
                ok &= memcmp(&b[(size_t)j * n + i], &want, 8) == 0;
            }
        CHECK_ALL(ok, "alltoall count %zu", n);
        free(s);
        free(b);
    }
}
END_TEST

/* Elements rank `from` sends to rank `to`: uneven, zero for some pairs, and
** rank 1 % P sends nothing at all. */
static size_t a2a_count(int from, int to, size_t scale)
{
    return from == 1 % P ? 0 : scale * (size_t)((from + 2 * to) % 4);
}

static void run_alltoallv(size_t scale, moe_dtype t)
{
    size_t sc[16], sd[16], rc[16], rd[16], send_end = 1, recv_end = 2, es = moe_dtype_size(t);
    for (int j = P - 1; j >= 0; j--) { /* send blocks in reverse peer order, gaps of 1 */
        sc[j] = a2a_count(R, j, scale);
        sd[j] = send_end;
        send_end += sc[j] + 1;
    }
    for (int j = 0; j < P; j++) { /* receive blocks in peer order, gaps of 2 */
        rc[j] = a2a_count(j, R, scale);
        rd[j] = recv_end;
        recv_end += rc[j] + 2;
    }
    char *s = zalloc(send_end * es), *b = zalloc(recv_end * es), *nb = zalloc(recv_end * es);
    for (int j = 0; j < P; j++)
        for (size_t i = 0; i < sc[j]; i++)
            put(t, s, sd[j] + i, t == MOE_DT_F64 ? fval(R, j, i) : ival(t, R, j, i));
    for (size_t i = 0; i < recv_end; i++) {
        put(t, b, i, 7);
        put(t, nb, i, 7);
    }
    OK_ALL(moe_alltoallv(W, s, sc, sd, b, rc, rd, t));
    moe_request *req = NULL;
    OK_ALL(moe_ialltoallv(W, s, sc, sd, nb, rc, rd, t, &req));
    OK_ALL(moe_wait(&req));
    int ok = 1;
    size_t filled = 0;
    for (int j = 0; j < P; j++) {
        for (size_t i = 0; i < rc[j]; i++)
            ok &= get(t, b, rd[j] + i) == (t == MOE_DT_F64 ? fval(j, R, i) : ival(t, j, R, i));
        filled += rc[j];
    }
    size_t untouched = 0;
    for (size_t i = 0; i < recv_end; i++)
        untouched += get(t, b, i) == 7;
    ok &= untouched >= recv_end - filled; /* gaps intact (a value may also equal 7) */
    CHECK_ALL(ok && memcmp(b, nb, recv_end * es) == 0, "alltoallv scale %zu dtype %d", scale,
              (int)t);
    free(s);
    free(b);
    free(nb);
}

START_TEST(test_alltoallv)
{
    ck_assert_int_le(P, 16);
    run_alltoallv(1, MOE_DT_F64);
    run_alltoallv(3, MOE_DT_I32);
    run_alltoallv(25, MOE_DT_F64); /* with --max-chunk 7: derived types */
    run_alltoallv(0, MOE_DT_U8);   /* nobody sends anything */
}
END_TEST

START_TEST(test_sendrecv_ring)
{
    const size_t counts[] = {0, 5, 100};
    int next = (R + 1) % P, prev = (R - 1 + P) % P;
    for (int ci = 0; ci < 3; ci++) {
        size_t n = counts[ci];
        double *s = zalloc(n * 8), *b = zalloc(n * 8), *b2 = zalloc(n * 8);
        for (size_t i = 0; i < n; i++)
            s[i] = fval(R, next, i);
        if (P >= 2) { /* even ranks send first, odd receive first: no cycle of blocked sends */
            if (R % 2 == 0) {
                OK_ALL(moe_send(W, s, n, MOE_DT_F64, next, 3));
                OK_ALL(moe_recv(W, b, n, MOE_DT_F64, prev, 3));
            } else {
                OK_ALL(moe_recv(W, b, n, MOE_DT_F64, prev, 3));
                OK_ALL(moe_send(W, s, n, MOE_DT_F64, next, 3));
            }
        }
        /* two messages in flight on different tags, received in the other order */
        moe_request *r1 = NULL, *r2 = NULL, *s1 = NULL, *s2 = NULL;
        OK_ALL(moe_irecv(W, b2, n, MOE_DT_F64, prev, 6, &r2));
        OK_ALL(moe_irecv(W, b, n, MOE_DT_F64, prev, 5, &r1));
        OK_ALL(moe_isend(W, s, n, MOE_DT_F64, next, 5, &s1));
        OK_ALL(moe_isend(W, s, n, MOE_DT_F64, next, 6, &s2));
        OK_ALL(moe_wait(&r1));
        OK_ALL(moe_wait(&r2));
        OK_ALL(moe_wait(&s1));
        OK_ALL(moe_wait(&s2));
        int ok = 1;
        for (size_t i = 0; i < n; i++) {
            double want = fval(prev, R, i);
            ok &= memcmp(&b[i], &want, 8) == 0 && memcmp(&b2[i], &want, 8) == 0;
        }
        CHECK_ALL(ok, "ring count %zu", n);
        free(s);
        free(b);
        free(b2);
    }
}
END_TEST

/* Several operations in flight at once, completed in another order. */
START_TEST(test_many_in_flight)
{
    const size_t n = 300;
    int64_t *ar = zalloc(n * 8), *want = zalloc(n * 8);
    float *in = zalloc(n * 4), *ag = zalloc((size_t)P * n * 4);
    float *xs = zalloc((size_t)P * n * 4), *xr = zalloc((size_t)P * n * 4);
    size_t c[16], d[16];
    for (int j = 0; j < P; j++) {
        c[j] = n;
        d[j] = (size_t)j * n;
        for (size_t i = 0; i < n; i++)
            xs[(size_t)j * n + i] = (float)fval(R, j, i);
    }
    for (size_t i = 0; i < n; i++) {
        ar[i] = (int64_t)ival(MOE_DT_I64, R, 2, i);
        in[i] = (float)fval(R, 2, i);
    }
    memcpy(want, ar, n * 8);
    OK_ALL(moe_allreduce(W, want, n, MOE_DT_I64, MOE_OP_SUM));
    moe_request *q[3] = {NULL, NULL, NULL};
    OK_ALL(moe_iallreduce(W, ar, n, MOE_DT_I64, MOE_OP_SUM, &q[0]));
    OK_ALL(moe_iallgather(W, in, ag, n, MOE_DT_F32, &q[1]));
    OK_ALL(moe_ialltoallv(W, xs, c, d, xr, c, d, MOE_DT_F32, &q[2]));
    OK_ALL(moe_wait(&q[2]));
    int ok = poll_until_done(&q[1]);
    OK_ALL(moe_wait(&q[0]));
    OK_ALL(moe_wait(&q[0])); /* a NULL request: no-op */
    int done = 0;
    OK_ALL(moe_test(&q[0], &done));
    ok &= done == 1 && q[0] == NULL && q[1] == NULL && q[2] == NULL;
    ok &= memcmp(ar, want, n * 8) == 0;
    for (int j = 0; j < P; j++)
        for (size_t i = 0; i < n; i++) {
            float g = (float)fval(j, 2, i), x = (float)fval(j, R, i);
            ok &= memcmp(&ag[(size_t)j * n + i], &g, 4) == 0;
            ok &= memcmp(&xr[(size_t)j * n + i], &x, 4) == 0;
        }
    CHECK_ALL(ok, "operations in flight together");
    free(ar);
    free(want);
    free(in);
    free(ag);
    free(xs);
    free(xr);
}
END_TEST

/* ---- errors -------------------------------------------------------------------- */

START_TEST(test_bad_arguments)
{
    float x[4] = {0};
    moe_request *req = NULL;
    REFUSED(moe_allreduce(NULL, x, 4, MOE_DT_F32, MOE_OP_SUM), MOE_ERR_INTERNAL, "allreduce",
            "NULL communicator");
    REFUSED(moe_iallreduce(NULL, x, 4, MOE_DT_F32, MOE_OP_SUM, &req), MOE_ERR_INTERNAL,
            "iallreduce", "NULL communicator");
    CHECK_ALL(req == NULL, "a refused operation left a request");
    REFUSED(moe_barrier(NULL), MOE_ERR_INTERNAL, "barrier", "NULL communicator");
    REFUSED(moe_progress(NULL), MOE_ERR_INTERNAL, "progress", "NULL communicator");
    REFUSED(moe_send(W, x, 4, MOE_DT_F32, P, 0), MOE_ERR_INTERNAL, "send on group 'world'",
            "is outside [0,");
    REFUSED(moe_irecv(W, x, 4, MOE_DT_F32, -1, 0, &req), MOE_ERR_INTERNAL, "irecv on group 'world'",
            "peer -1 is outside");
    REFUSED(moe_send(W, x, 4, MOE_DT_F32, 0, -3), MOE_ERR_INTERNAL, "group 'world'", "tag -3");
    REFUSED(moe_allreduce(W, NULL, 3, MOE_DT_F32, MOE_OP_SUM), MOE_ERR_INTERNAL,
            "allreduce on group 'world'", "NULL data buffer with 3 elements");
    REFUSED(moe_allreduce(W, x, 4, (moe_dtype)99, MOE_OP_SUM), MOE_ERR_INTERNAL, "group 'world'",
            "unknown dtype 99");
    REFUSED(moe_allreduce(W, x, 4, MOE_DT_F32, (moe_redop)7), MOE_ERR_INTERNAL, "group 'world'",
            "unknown reduction 7");
    size_t c[16] = {0}, d[16] = {0};
    REFUSED(moe_allgatherv(W, x, 2, x, c, d, MOE_DT_F32), MOE_ERR_INTERNAL, "allgatherv",
            "sends 2 elements but recv_counts");
    REFUSED(moe_alltoallv(W, x, c, d, x, c, NULL, MOE_DT_F32), MOE_ERR_INTERNAL, "alltoallv",
            "NULL count or displacement");
    REFUSED(moe_wait(NULL), MOE_ERR_INTERNAL, "moe_wait", "NULL");
    /* on a group of our own the message names it */
    int *t = zalloc(sizeof(int) * (size_t)P);
    for (int i = 0; i < P; i++)
        t[i] = i;
    moe_comm *solo = NULL;
    OK_ALL(moe_comm_create(W, t, P, 1, "solo", &solo));
    REFUSED(moe_send(solo, x, 4, MOE_DT_F32, 1, 0), MOE_ERR_INTERNAL,
            "send on group 'solo' (rank 0 of 1)", "peer 1 is outside [0, 1)");
    moe_comm_free(solo);
    free(t);
}
END_TEST

/* A local verdict: only ranks 0 and 1 take part, the agreement comes after. */
static int refused_here(moe_status st, moe_status want, const char *s1, const char *s2)
{
    int ok = st == want && strstr(moe_errmsg(), s1) && strstr(moe_errmsg(), s2);
    if (!ok)
        fprintf(stderr, "[rank %d] got %s '%s', wanted '%s' ... '%s'\n", R, moe_status_name(st),
                moe_errmsg(), s1, s2);
    moe_error_clear();
    return ok;
}

/* Failures MPI itself reports: a message longer than the receive (truncation),
** and one shorter than the exact count the contract promises. */
START_TEST(test_mpi_errors)
{
    if (P < 2)
        return;
    int32_t v[10] = {0};
    char want[160];
    snprintf(want, sizeof want, "recv on group 'world' (rank 1 of %d) failed at peer 0", P);
    int ok = 1;
    moe_error_clear();
    if (R == 0) {
        ok &= moe_send(W, v, 10, MOE_DT_I32, 1, 9) == MOE_OK;
        ok &= moe_send(W, v, 3, MOE_DT_I32, 1, 9) == MOE_OK;
        ok &= moe_send(W, v, 3, MOE_DT_I32, 1, 9) == MOE_OK;
    } else if (R == 1) {
        ok &= refused_here(moe_recv(W, v, 5, MOE_DT_I32, 0, 9), MOE_ERR_SYSTEM, want, "TRUNCATE");
        ok &= refused_here(moe_recv(W, v, 5, MOE_DT_I32, 0, 9), MOE_ERR_INTERNAL,
                           "from peer 0 has 3 elements", "expected 5");
        moe_request *req = NULL;
        ok &= moe_irecv(W, v, 5, MOE_DT_I32, 0, 9, &req) == MOE_OK;
        ok &= refused_here(moe_wait(&req), MOE_ERR_INTERNAL, "irecv on group 'world'",
                           "has 3 elements, expected 5");
        ok &= req == NULL;
    }
    CHECK_ALL(ok, "MPI's own errors: '%s'", moe_errmsg());
    OK_ALL(moe_barrier(W));
}
END_TEST

static Suite *comm_suite(void)
{
    Suite *s = suite_create("comm_mpi");
    TCase *tc = tcase_create("mpi");
    tcase_set_timeout(tc, 120);
    tcase_add_test(tc, test_world);
    tcase_add_test(tc, test_groups);
    tcase_add_test(tc, test_bad_tables);
    tcase_add_test(tc, test_subsets);
    tcase_add_test(tc, test_allreduce);
    tcase_add_test(tc, test_allreduce_random_exact);
    tcase_add_test(tc, test_allreduce_deterministic);
    tcase_add_test(tc, test_reduce_scatter);
    tcase_add_test(tc, test_allgather);
    tcase_add_test(tc, test_allgatherv);
    tcase_add_test(tc, test_alltoall);
    tcase_add_test(tc, test_alltoallv);
    tcase_add_test(tc, test_sendrecv_ring);
    tcase_add_test(tc, test_many_in_flight);
    tcase_add_test(tc, test_bad_arguments);
    tcase_add_test(tc, test_mpi_errors);
    suite_add_tcase(s, tc);
    return s;
}

int main(int argc, char **argv)
{
    for (int i = 1; i + 1 < argc; i++)
        if (strcmp(argv[i], "--max-chunk") == 0)
            setenv("MOE_COMM_MAX_CHUNK", argv[i + 1], 1);
    if (moe_comm_init(&argc, &argv) != MOE_OK || moe_comm_world(&W) != MOE_OK) {
        moe_error_print(stderr, "mpi_comm");
        return 1;
    }
    R = moe_comm_rank(W);
    P = moe_comm_size(W);
    SRunner *sr = srunner_create(comm_suite());
    srunner_set_fork_status(sr, CK_NOFORK); /* MPI processes must not fork */
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    /* any rank's failure fails every rank's exit status */
    if (moe_allreduce(W, &failed, 1, MOE_DT_I32, MOE_OP_MAX) != MOE_OK)
        failed = 1;
    if (moe_comm_finalize() != MOE_OK) {
        moe_error_print(stderr, "mpi_comm");
        failed = 1;
    }
    /* the world outlives MPI as a refusal, not a crash */
    moe_error_clear();
    if (moe_barrier(W) == MOE_OK || !strstr(moe_errmsg(), "group 'world', which is freed")) {
        fprintf(stderr, "[rank %d] barrier after finalize: '%s'\n", R, moe_errmsg());
        failed = 1;
    }
    return failed ? 1 : 0;
}
