/*
** placement_ilp: one layer's min-max placement as a CBC MIP, solved in a
** forked child under a wall-clock watchdog.
**
** Why a child: CBC checks its time limit only between phases and overruns it
** in preprocessing and root cuts (coin-or/Cbc #514, #506, #487; 6x measured
** here), and it cannot be interrupted from another thread. A child can be
** killed; the parent then keeps the warm start. The child writes one result
** record to a pipe: a header and rank_of[E].
*/
#include "planner/placement.h"

#include <Cbc_C_Interface.h>
#include <errno.h>
#include <math.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

typedef struct {
    int have;     /* CBC had an incumbent */
    int finished; /* CBC stopped on its own: optimal within the gap */
    double bound; /* CBC's best possible objective, in the scaled units */
} child_header;

static double now_s(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec + 1e-9 * (double)t.tv_nsec;
}

static int by_load_desc(const void *a, const void *b, void *w_)
{
    const double *w = w_;
    int x = *(const int *)a, y = *(const int *)b;
    if (w[x] != w[y])
        return w[x] < w[y] ? 1 : -1;
    return (x > y) - (x < y);
}

static double max_load(const double *w, int experts, int ranks, const int *rank_of)
{
    double *load = calloc((size_t)ranks, sizeof *load), mx = 0;
    if (!load)
        return INFINITY;
    for (int e = 0; e < experts; e++)
        load[rank_of[e]] += w[e];
    for (int r = 0; r < ranks; r++)
        mx = fmax(mx, load[r]);
    free(load);
    return mx;
}

/* Column of x[i][r] (i: position in descending-load order); M is the last. */
#define XCOL(i, r) ((i) * ranks + (r))

/* Builds and solves the model; fills hdr and rank_of (in expert ids). Runs in
** the child only. order[i] is the expert at position i; ws are loads scaled so
** the mean rank load is 1 (keeps CBC's tolerances meaningful). */
static void solve_in_child(const double *ws, const int *order, int experts, int ranks, int slots, const int *start,
                           double start_obj, double lb, double time_limit_s, double gap, child_header *hdr,
                           int *rank_of)
{
    Cbc_Model *m = Cbc_newModel();
    char name[64];
    for (int i = 0; i < experts; i++)
        for (int r = 0; r < ranks; r++) {
            snprintf(name, sizeof name, "x_%d_%d", i, r);
            /* Symmetry: ranks are labelled by their heaviest expert, so the
            ** i-th heaviest expert sits on one of ranks 0..i. */
            Cbc_addCol(m, name, 0, r <= i ? 1 : 0, 0, 1, 0, NULL, NULL);
        }
    int mcol = experts * ranks;
    Cbc_addCol(m, "M", lb, start_obj, 1, 0, 0, NULL, NULL);
    int *cols = malloc(((size_t)experts + 1) * sizeof(int));
    double *coef = malloc(((size_t)experts + 1) * sizeof(double));
    for (int i = 0; i < experts; i++) {
        for (int r = 0; r < ranks; r++)
            cols[r] = XCOL(i, r), coef[r] = 1;
        Cbc_addRow(m, "one", ranks, cols, coef, 'E', 1);
    }
    for (int r = 0; r < ranks; r++) {
        for (int i = 0; i < experts; i++)
            cols[i] = XCOL(i, r), coef[i] = 1;
        Cbc_addRow(m, "slots", experts, cols, coef, 'L', slots);
        for (int i = 0; i < experts; i++)
            coef[i] = ws[order[i]];
        cols[experts] = mcol, coef[experts] = -1;
        Cbc_addRow(m, "load", experts + 1, cols, coef, 'L', 0);
    }
    Cbc_setObjSense(m, 1);

    /* Warm start, ranks relabelled by first appearance in load order so it
    ** satisfies the symmetry cut. */
    int *label = malloc((size_t)ranks * sizeof(int)), next = 0;
    int *idx = malloc(((size_t)experts + 1) * sizeof(int));
    double *val = malloc(((size_t)experts + 1) * sizeof(double));
    for (int r = 0; r < ranks; r++)
        label[r] = -1;
    for (int i = 0; i < experts; i++) {
        int r = start[order[i]];
        if (label[r] < 0)
            label[r] = next++;
        idx[i] = XCOL(i, label[r]), val[i] = 1;
    }
    idx[experts] = mcol, val[experts] = start_obj;
    Cbc_setMIPStartI(m, experts + 1, idx, val);

    char buf[32];
    Cbc_setLogLevel(m, 0);
    Cbc_setMaximumSeconds(m, time_limit_s);
    Cbc_setAllowableFractionGap(m, gap);
    Cbc_setParameter(m, "timeMode", "elapsed");
    Cbc_setParameter(m, "threads", "1");
    snprintf(buf, sizeof buf, "%d", 1234567);
    Cbc_setParameter(m, "randomSeed", buf);
    Cbc_solve(m);

    const double *x = Cbc_bestSolution(m);
    hdr->have = x != NULL;
    hdr->finished = Cbc_status(m) == 0 && x != NULL;
    hdr->bound = Cbc_getBestPossibleObjValue(m);
    for (int i = 0; x && i < experts; i++) {
        int best = 0;
        for (int r = 1; r < ranks; r++)
            if (x[XCOL(i, r)] > x[XCOL(i, best)])
                best = r;
        rank_of[order[i]] = best;
    }
    free(cols), free(coef), free(label), free(idx), free(val);
    Cbc_deleteModel(m);
}

static int write_all(int fd, const void *buf, size_t len)
{
    const char *p = buf;
    while (len) {
        ssize_t w = write(fd, p, len);
        if (w < 0 && errno == EINTR)
            continue;
        if (w <= 0)
            return -1;
        p += w, len -= (size_t)w;
    }
    return 0;
}

/* Reads the child's record until EOF or the deadline. 1: complete record,
** 0: deadline passed, -1: the child died or sent garbage. */
static int read_record(int fd, char *buf, size_t len, double deadline)
{
    size_t got = 0;
    for (;;) {
        double left = deadline - now_s();
        if (left <= 0)
            return 0;
        struct pollfd pf = {.fd = fd, .events = POLLIN};
        struct timespec ts = {.tv_sec = (time_t)left, .tv_nsec = (long)((left - floor(left)) * 1e9)};
        int rc = ppoll(&pf, 1, &ts, NULL);
        if (rc < 0 && errno == EINTR)
            continue;
        if (rc < 0)
            return -1;
        if (rc == 0)
            continue; /* re-check the clock */
        ssize_t n = read(fd, buf + got, len - got);
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0)
            return -1;
        if (n == 0)
            return got == len ? 1 : -1;
        got += (size_t)n;
    }
}

static void child_main(int fd, const double *ws, const int *order, int experts, int ranks, int slots,
                       const int *start, double start_obj, double lb, double time_limit_s, double gap, size_t len)
{
    char *rec = calloc(1, len);
    if (!rec)
        _exit(3);
    child_header hdr = {0};
    solve_in_child(ws, order, experts, ranks, slots, start, start_obj, lb, time_limit_s, gap, &hdr,
                   (int *)(rec + sizeof hdr));
    memcpy(rec, &hdr, sizeof hdr);
    _exit(write_all(fd, rec, len) == 0 ? 0 : 4);
}

static int valid_assignment(const int *rank_of, int experts, int ranks, int slots)
{
    int *count = calloc((size_t)ranks, sizeof *count), ok = count != NULL;
    for (int e = 0; ok && e < experts; e++)
        ok = rank_of[e] >= 0 && rank_of[e] < ranks && ++count[rank_of[e]] <= slots;
    free(count);
    return ok;
}

moe_status moe_place_ilp(const double *w, int experts, int ranks, int slots, const int *start, double time_limit_s,
                         double gap, int *rank_of, moe_ilp_result *res)
{
    double t0 = now_s();
    memset(res, 0, sizeof *res);
    if (!valid_assignment(start, experts, ranks, slots))
        return moe_fail(MOE_ERR_INTERNAL, "ILP warm start is not a placement of %d experts on %d x %d slots",
                        experts, ranks, slots);
    memcpy(rank_of, start, (size_t)experts * sizeof(int));
    double start_obj = max_load(w, experts, ranks, start);
    double lb = moe_place_layer_bound(w, experts, ranks, 0);
    res->objective = start_obj;
    res->bound = lb;
    double sum = 0;
    for (int e = 0; e < experts; e++)
        sum += w[e];
    if (ranks == 1 || sum <= 0 || start_obj <= lb) { /* nothing to improve */
        res->finished = 1;
        res->bound = start_obj;
        res->seconds = now_s() - t0;
        return MOE_OK;
    }
    double scale = ranks / sum;
    size_t len = sizeof(child_header) + (size_t)experts * sizeof(int);
    double *ws = malloc((size_t)experts * sizeof *ws);
    int *order = malloc((size_t)experts * sizeof *order);
    char *rec = malloc(len);
    if (!ws || !order || !rec) {
        free(ws), free(order), free(rec);
        return moe_fail(MOE_ERR_NOMEM, "out of memory building the ILP for %d experts", experts);
    }
    for (int e = 0; e < experts; e++)
        ws[e] = w[e] * scale, order[e] = e;
    qsort_r(order, (size_t)experts, sizeof *order, by_load_desc, ws);

    int fds[2];
    if (pipe(fds) != 0) {
        free(ws), free(order), free(rec);
        return moe_fail(MOE_ERR_SYSTEM, "pipe for the ILP solver: %s", strerror(errno));
    }
    fflush(NULL); /* the child must not flush the parent's buffers again */
    pid_t pid = fork();
    if (pid < 0) {
        int err = errno;
        close(fds[0]), close(fds[1]);
        free(ws), free(order), free(rec);
        return moe_fail(MOE_ERR_SYSTEM, "fork for the ILP solver: %s", strerror(err));
    }
    if (pid == 0) {
        close(fds[0]);
        child_main(fds[1], ws, order, experts, ranks, slots, start, start_obj * scale, lb * scale, time_limit_s, gap,
                   len);
    }
    close(fds[1]);
    /* CBC gets the limit too; the watchdog allows a little slack on top. */
    double deadline = t0 + time_limit_s + fmin(0.1 * time_limit_s, 1.0);
    int got = read_record(fds[0], rec, len, deadline);
    close(fds[0]);
    if (got != 1)
        kill(pid, SIGKILL);
    int wst = 0;
    while (waitpid(pid, &wst, 0) < 0 && errno == EINTR)
        ;
    res->killed = got == 0;
    if (got == -1) {
        free(ws), free(order), free(rec);
        return moe_fail(MOE_ERR_SYSTEM, "the ILP solver process failed (status 0x%x)", wst);
    }
    if (got == 1) {
        child_header hdr;
        memcpy(&hdr, rec, sizeof hdr);
        const int *sol = (const int *)(rec + sizeof hdr);
        if (isfinite(hdr.bound))
            res->bound = fmax(res->bound, hdr.bound / scale);
        if (hdr.have && valid_assignment(sol, experts, ranks, slots)) {
            double obj = max_load(w, experts, ranks, sol);
            if (obj < start_obj * (1 - 1e-12)) {
                memcpy(rank_of, sol, (size_t)experts * sizeof(int));
                res->objective = obj;
                res->improved = 1;
            }
            res->finished = hdr.finished;
        }
        /* Integer loads: every rank load is an integer, so is the optimum. */
        int integral = 1;
        for (int e = 0; e < experts && integral; e++)
            integral = w[e] == floor(w[e]);
        if (integral)
            res->bound = ceil(res->bound - 1e-7 * fmax(1, res->bound));
        res->bound = fmin(res->bound, res->objective);
    }
    res->seconds = now_s() - t0;
    free(ws), free(order), free(rec);
    return MOE_OK;
}
