/*
** placement_ilp: one layer's min-max placement as a CBC MIP, solved in a
** forked child under a wall-clock watchdog; without replication
** (moe_place_ilp) and with it (moe_place_ilp_replicated).
**
** Why a child: CBC checks its time limit only between phases and overruns it
** in preprocessing and root cuts (coin-or/Cbc #514, #506, #487; 6x measured
** here), and it cannot be interrupted from another thread. A child can be
** killed; the parent then keeps the warm start. The child writes one result
** record to a pipe: a header and a payload (rank_of[E], or x and y).
*/
#include "planner/placement.h"
#include "planner/placement_internal.h"

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

/* Minimum load of a copy, as a fraction of the mean rank load (see the
** replicated model). Small enough to cost nothing measurable, large enough to
** sit well above CBC's feasibility tolerance (1e-7) in the scaled model. */
#define SHARE_FLOOR_LOAD 1e-5

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

/* Nothing to improve, or the start (res->objective) is already within the
** gap of the analytic bound (res->bound): no solve needed to prove it, and
** res says so. *sum gets the layer's load. */
static int start_is_enough(const double *w, int experts, int ranks, double gap, double t0, moe_ilp_result *res,
                           double *sum)
{
    double start_obj = res->objective, lb = res->bound;
    *sum = 0;
    for (int e = 0; e < experts; e++)
        *sum += w[e];
    if (!(ranks == 1 || *sum <= 0 || start_obj <= lb || start_obj - lb <= gap * start_obj))
        return 0;
    res->finished = 1;
    res->bound = start_obj <= lb ? start_obj : lb;
    res->seconds = now_s() - t0;
    return 1;
}

static void set_solver_params(Cbc_Model *m, double time_limit_s, double gap)
{
    char buf[32];
    Cbc_setLogLevel(m, 0);
    Cbc_setMaximumSeconds(m, time_limit_s);
    Cbc_setAllowableFractionGap(m, gap);
    Cbc_setParameter(m, "timeMode", "elapsed");
    Cbc_setParameter(m, "threads", "1");
    snprintf(buf, sizeof buf, "%d", 1234567);
    Cbc_setParameter(m, "randomSeed", buf);
}

// ----------------------------------------------------------------------------
// the child process and its watchdog

typedef void (*child_solve)(const void *arg, child_header *hdr, void *payload);

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

/* Runs solve(arg) in a child; *got: 1 the record arrived (hdr, payload
** filled), 0 the watchdog killed the child at the deadline. MOE_ERR_SYSTEM if
** the child could not start or died. */
static moe_status run_child(child_solve solve, const void *arg, size_t payload_len, double deadline,
                            child_header *hdr, void *payload, int *got)
{
    size_t len = sizeof *hdr + payload_len;
    char *rec = malloc(len);
    int fds[2];
    if (!rec)
        return moe_fail(MOE_ERR_NOMEM, "out of memory for the ILP result (%zu bytes)", len);
    if (pipe(fds) != 0) {
        free(rec);
        return moe_fail(MOE_ERR_SYSTEM, "pipe for the ILP solver: %s", strerror(errno));
    }
    fflush(NULL); /* the child must not flush the parent's buffers again */
    pid_t pid = fork();
    if (pid < 0) {
        int err = errno;
        close(fds[0]), close(fds[1]);
        free(rec);
        return moe_fail(MOE_ERR_SYSTEM, "fork for the ILP solver: %s", strerror(err));
    }
    if (pid == 0) {
        close(fds[0]);
        memset(rec, 0, len);
        child_header h = {0};
        solve(arg, &h, rec + sizeof h);
        memcpy(rec, &h, sizeof h);
        _exit(write_all(fds[1], rec, len) == 0 ? 0 : 4);
    }
    close(fds[1]);
    *got = read_record(fds[0], rec, len, deadline);
    close(fds[0]);
    if (*got != 1)
        kill(pid, SIGKILL);
    int wst = 0;
    while (waitpid(pid, &wst, 0) < 0 && errno == EINTR)
        ;
    if (*got == -1) {
        free(rec);
        return moe_fail(MOE_ERR_SYSTEM, "the ILP solver process failed (status 0x%x)", wst);
    }
    if (*got == 1) {
        memcpy(hdr, rec, sizeof *hdr);
        memcpy(payload, rec + sizeof *hdr, payload_len);
    }
    free(rec);
    return MOE_OK;
}

/* CBC gets the limit; the watchdog allows a little slack on top. */
static double watchdog_deadline(double t0, double time_limit_s)
{
    return t0 + time_limit_s + fmin(0.1 * time_limit_s, 1.0);
}

/* Loads scaled so the mean rank load is 1 (keeps CBC's tolerances
** meaningful), and the experts in descending-load order. */
static moe_status scaled_order(const double *w, int experts, int ranks, double sum, double **ws, int **order)
{
    *ws = malloc((size_t)experts * sizeof **ws);
    *order = malloc((size_t)experts * sizeof **order);
    if (!*ws || !*order) {
        free(*ws), free(*order);
        return moe_fail(MOE_ERR_NOMEM, "out of memory building the ILP for %d experts", experts);
    }
    for (int e = 0; e < experts; e++)
        (*ws)[e] = w[e] * (ranks / sum), (*order)[e] = e;
    qsort_r(*order, (size_t)experts, sizeof **order, by_load_desc, *ws);
    return MOE_OK;
}

/* The rows both models share. Columns are (experts, ranks) blocks in
** position-major order: x0 starts the copy indicators x[i][r], y0 the columns
** that carry an expert's tokens (x itself without replicas, the shares y with
** them). Each expert's y sum to 1 (`sum_name`: "one" or "share"); a rank holds
** at most `slots` copies; a rank's load sum_i ws[order[i]] y[i][r] is at most
** M (column mcol). cols and coef hold at least max(experts, ranks) + 1. */
static void add_assignment_rows(Cbc_Model *m, int experts, int ranks, int x0, int y0, int mcol, int slots,
                                const double *ws, const int *order, const char *sum_name, int *cols, double *coef)
{
    for (int i = 0; i < experts; i++) {
        for (int r = 0; r < ranks; r++)
            cols[r] = y0 + i * ranks + r, coef[r] = 1;
        Cbc_addRow(m, sum_name, ranks, cols, coef, 'E', 1);
    }
    for (int r = 0; r < ranks; r++) {
        for (int i = 0; i < experts; i++)
            cols[i] = x0 + i * ranks + r, coef[i] = 1;
        Cbc_addRow(m, "slots", experts, cols, coef, 'L', slots);
        for (int i = 0; i < experts; i++)
            cols[i] = y0 + i * ranks + r, coef[i] = ws[order[i]];
        cols[experts] = mcol, coef[experts] = -1;
        Cbc_addRow(m, "load", experts + 1, cols, coef, 'L', 0);
    }
}

// ----------------------------------------------------------------------------
// one copy per expert

typedef struct {
    const double *ws;
    const int *order; /* order[i]: the expert at position i */
    const int *start;
    int experts, ranks, slots;
    double start_obj, lb, time_limit_s, gap; /* scaled */
} single_arg;

/* Column of x[i][r] (i: position in descending-load order); M is the last. */
#define XCOL(i, r) ((i) * ranks + (r))

/* Builds and solves the model; payload is rank_of[E] in expert ids. */
static void solve_single(const void *arg_, child_header *hdr, void *payload)
{
    const single_arg *a = arg_;
    const double *ws = a->ws;
    const int *order = a->order;
    int experts = a->experts, ranks = a->ranks, *rank_of = payload;
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
    Cbc_addCol(m, "M", a->lb, a->start_obj, 1, 0, 0, NULL, NULL);
    size_t wide = (size_t)(experts > ranks ? experts : ranks) + 1;
    int *cols = malloc(wide * sizeof(int));
    double *coef = malloc(wide * sizeof(double));
    int *label = malloc((size_t)ranks * sizeof(int)), next = 0;
    int *idx = malloc(((size_t)experts + 1) * sizeof(int));
    double *val = malloc(((size_t)experts + 1) * sizeof(double));
    if (!cols || !coef || !label || !idx || !val)
        _exit(3);
    add_assignment_rows(m, experts, ranks, 0, 0, mcol, a->slots, ws, order, "one", cols, coef);
    Cbc_setObjSense(m, 1);

    /* Warm start, ranks relabelled by first appearance in load order so it
    ** satisfies the symmetry cut. */
    for (int r = 0; r < ranks; r++)
        label[r] = -1;
    for (int i = 0; i < experts; i++) {
        int r = a->start[order[i]];
        if (label[r] < 0)
            label[r] = next++;
        idx[i] = XCOL(i, label[r]), val[i] = 1;
    }
    idx[experts] = mcol, val[experts] = a->start_obj;
    Cbc_setMIPStartI(m, experts + 1, idx, val);

    set_solver_params(m, a->time_limit_s, a->gap);
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
    double lb = moe_place_layer_bound_slots(w, experts, ranks, slots, 0);
    res->objective = start_obj;
    res->bound = lb;
    double sum;
    if (start_is_enough(w, experts, ranks, gap, t0, res, &sum))
        return MOE_OK;
    double scale = ranks / sum, *ws;
    int *order, *sol = malloc((size_t)experts * sizeof *sol);
    if (!sol)
        return moe_fail(MOE_ERR_NOMEM, "out of memory building the ILP for %d experts", experts);
    moe_status st = scaled_order(w, experts, ranks, sum, &ws, &order);
    if (st != MOE_OK) {
        free(sol);
        return st;
    }
    single_arg arg = {.ws = ws, .order = order, .start = start, .experts = experts, .ranks = ranks, .slots = slots,
                      .start_obj = start_obj * scale, .lb = lb * scale, .time_limit_s = time_limit_s, .gap = gap};
    child_header hdr = {0};
    int got = 0;
    st = run_child(solve_single, &arg, (size_t)experts * sizeof(int), watchdog_deadline(t0, time_limit_s), &hdr, sol,
                   &got);
    res->killed = st == MOE_OK && got == 0;
    if (st == MOE_OK && got == 1) {
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
        if (moe_place_all_integral(w, experts))
            res->bound = ceil(res->bound - 1e-7 * fmax(1, res->bound));
        res->bound = fmin(res->bound, res->objective);
    }
    res->seconds = now_s() - t0;
    free(ws), free(order), free(sol);
    return st;
}

// ----------------------------------------------------------------------------
// with replication

typedef struct {
    const double *ws;
    const int *order;
    const double *start; /* (experts, ranks) shares, expert ids */
    const double *floor; /* per position i: the least share of a copy */
    int experts, ranks, slots, copies;
    double start_obj, lb, time_limit_s, gap; /* scaled */
} rep_arg;

/* x[i][r], y[i][r] (i: position in descending-load order), then M. */
#define RX(i, r) ((i) * ranks + (r))
#define RY(i, r) (experts * ranks + (i) * ranks + (r))

/* Relabels the start's ranks so they are ordered by the heaviest expert they
** hold (empty ranks last): label[r] is rank r's new name. */
static void relabel_by_first(const rep_arg *a, int *label)
{
    int ranks = a->ranks, next = 0;
    for (int r = 0; r < ranks; r++)
        label[r] = -1;
    for (int i = 0; i < a->experts; i++)
        for (int r = 0; r < ranks; r++)
            if (a->start[(size_t)a->order[i] * ranks + r] > 0 && label[r] < 0)
                label[r] = next++;
    for (int r = 0; r < ranks; r++)
        if (label[r] < 0)
            label[r] = next++;
}

/* With the copies fixed (sx[i][r] = 1), the shares that keep every rank at or
** below max_load while making the smallest share as large as possible: an
** LP. Why: the MIP has no reason to give a copy it does not need more than
** the floor, and a copy carrying a millionth of its expert's tokens is noise
** to the runtime. Writes sy only if the LP is solved to optimality. */
static void spread_shares(const rep_arg *a, const double *sx, double max_load, double *sy)
{
    int experts = a->experts, ranks = a->ranks, n = 0;
    int *col = malloc((size_t)experts * ranks * sizeof(int));
    int *cols = malloc(((size_t)experts + 2) * sizeof(int));
    double *coef = malloc(((size_t)experts + 2) * sizeof(double));
    if (!col || !cols || !coef)
        _exit(3);
    Cbc_Model *m = Cbc_newModel();
    for (int i = 0; i < experts; i++)
        for (int r = 0; r < ranks; r++) {
            col[RX(i, r)] = -1;
            if (sx[RX(i, r)] > 0.5) {
                col[RX(i, r)] = n++;
                Cbc_addCol(m, "y", a->floor[i], 1, 0, 0, 0, NULL, NULL);
            }
        }
    int t = n;
    Cbc_addCol(m, "t", 0, 1, 1, 0, 0, NULL, NULL);
    for (int i = 0; i < experts; i++) {
        int k = 0;
        for (int r = 0; r < ranks; r++)
            if (col[RX(i, r)] >= 0)
                cols[k] = col[RX(i, r)], coef[k++] = 1;
        Cbc_addRow(m, "one", k, cols, coef, 'E', 1);
        for (int j = 0; j < k; j++) {
            int c2[2] = {cols[j], t};
            double v2[2] = {1, -1};
            Cbc_addRow(m, "min", 2, c2, v2, 'G', 0);
        }
    }
    for (int r = 0; r < ranks; r++) {
        int k = 0;
        for (int i = 0; i < experts; i++)
            if (col[RX(i, r)] >= 0)
                cols[k] = col[RX(i, r)], coef[k++] = a->ws[a->order[i]];
        if (k)
            Cbc_addRow(m, "load", k, cols, coef, 'L', max_load * (1 + 1e-9));
    }
    Cbc_setObjSense(m, -1);
    Cbc_setLogLevel(m, 0);
    Cbc_solve(m);
    const double *v = Cbc_isProvenOptimal(m) ? Cbc_getColSolution(m) : NULL;
    for (int i = 0; v && i < experts; i++)
        for (int r = 0; r < ranks; r++)
            sy[RX(i, r)] = col[RX(i, r)] >= 0 ? v[col[RX(i, r)]] : 0;
    Cbc_deleteModel(m);
    free(col), free(cols), free(coef);
}

/* Builds and solves the model. payload: x[E][R] then y[E][R] as doubles, in
** positions i (not expert ids) and the solver's rank labels. */
static void solve_replicated(const void *arg_, child_header *hdr, void *payload)
{
    const rep_arg *a = arg_;
    const double *ws = a->ws;
    const int *order = a->order;
    int experts = a->experts, ranks = a->ranks, extra = a->copies - experts;
    size_t n = (size_t)experts * ranks;
    double *sx = payload, *sy = sx + n;
    Cbc_Model *m = Cbc_newModel();
    char name[64];
    /* Symmetry: ranks are ordered by the heaviest expert (first position i)
    ** they hold. Valid because ranks are interchangeable (same slots) and
    ** every solution can be relabelled that way. It implies x[0][0] = 1, and
    ** that rank r holds expert i only if ranks 0..r all hold one of experts
    ** 0..i, which at most (i + 1) + extra copies can do: x[i][r] = 0 for
    ** r > i + extra. */
    for (int i = 0; i < experts; i++)
        for (int r = 0; r < ranks; r++) {
            snprintf(name, sizeof name, "x_%d_%d", i, r);
            Cbc_addCol(m, name, i == 0 && r == 0 ? 1 : 0, r <= i + extra ? 1 : 0, 0, 1, 0, NULL, NULL);
        }
    for (int i = 0; i < experts; i++)
        for (int r = 0; r < ranks; r++) {
            snprintf(name, sizeof name, "y_%d_%d", i, r);
            Cbc_addCol(m, name, 0, r <= i + extra ? 1 : 0, 0, 0, 0, NULL, NULL);
        }
    /* M <= the start's max load, plus what the floor may cost it (the start's
    ** shares need not respect the floor), so the start stays feasible. */
    int mcol = 2 * experts * ranks;
    Cbc_addCol(m, "M", a->lb, a->start_obj + a->slots * SHARE_FLOOR_LOAD, 1, 0, 0, NULL, NULL);

    size_t wide = n > (size_t)experts + 1 ? n : (size_t)experts + 1;
    int *cols = malloc(wide * sizeof(int)), *label = malloc((size_t)ranks * sizeof(int));
    double *coef = malloc(wide * sizeof(double));
    int *idx = malloc((2 * n + 1) * sizeof(int));
    double *val = malloc((2 * n + 1) * sizeof(double));
    if (!cols || !label || !coef || !idx || !val)
        _exit(3);
    for (int i = 0; i < experts; i++)
        for (int r = 0; r < ranks; r++) {
            int c2[2] = {RY(i, r), RX(i, r)};
            double le[2] = {1, -1}, ge[2] = {1, -a->floor[i]};
            Cbc_addRow(m, "y<=x", 2, c2, le, 'L', 0);
            Cbc_addRow(m, "y>=fx", 2, c2, ge, 'G', 0);
        }
    add_assignment_rows(m, experts, ranks, RX(0, 0), RY(0, 0), mcol, a->slots, ws, order, "share", cols, coef);
    for (size_t k = 0; k < n; k++)
        cols[k] = (int)k, coef[k] = 1;
    Cbc_addRow(m, "copies", (int)n, cols, coef, 'E', a->copies);
    /* The ordering itself: rank r holds i only if rank r - 1 holds one of
    ** 0..i. O(E^2 R) nonzeros, so only for models where that stays small. */
    if ((double)experts * experts * ranks <= 4e5)
        for (int r = 1; r < ranks; r++)
            for (int i = 0; i < experts && i + extra >= r; i++) {
                int k = 0;
                cols[k] = RX(i, r), coef[k++] = 1;
                for (int j = 0; j <= i; j++)
                    if (j + extra >= r - 1)
                        cols[k] = RX(j, r - 1), coef[k++] = -1;
                Cbc_addRow(m, "order", k, cols, coef, 'L', 0);
            }
    Cbc_setObjSense(m, 1);

    /* Warm start: the start's copies, ranks relabelled to fit the ordering;
    ** CBC completes the shares itself (an LP with x fixed). */
    relabel_by_first(a, label);
    int k = 0;
    for (int i = 0; i < experts; i++)
        for (int r = 0; r < ranks; r++) {
            double s = a->start[(size_t)order[i] * ranks + r];
            idx[k] = RX(i, label[r]), val[k++] = s > 0;
            idx[k] = RY(i, label[r]), val[k++] = s;
        }
    idx[k] = mcol, val[k++] = a->start_obj;
    Cbc_setMIPStartI(m, k, idx, val);

    set_solver_params(m, a->time_limit_s, a->gap);
    Cbc_solve(m);

    const double *x = Cbc_bestSolution(m);
    hdr->have = x != NULL;
    hdr->finished = Cbc_status(m) == 0 && x != NULL;
    hdr->bound = Cbc_getBestPossibleObjValue(m);
    if (x) {
        double mx = 0;
        for (size_t c = 0; c < n; c++)
            sx[c] = x[c] > 0.5, sy[c] = sx[c] ? fmax(x[n + c], 0) : 0;
        for (int r = 0; r < ranks; r++) {
            double l = 0;
            for (int i = 0; i < experts; i++)
                l += ws[order[i]] * sy[RX(i, r)];
            mx = fmax(mx, l);
        }
        spread_shares(a, sx, mx, sy);
    }
    free(cols), free(label), free(coef), free(idx), free(val);
    Cbc_deleteModel(m);
}

/* share (experts, ranks): every expert has copies with shares in (0, 1]
** summing to 1 (within 1e-9), at most slots copies per rank, `copies` in all. */
static int valid_shares(const double *share, int experts, int ranks, int slots, int copies)
{
    int total = 0;
    for (int r = 0; r < ranks; r++) {
        int held = 0;
        for (int e = 0; e < experts; e++)
            held += share[(size_t)e * ranks + r] > 0;
        if (held > slots)
            return 0;
        total += held;
    }
    for (int e = 0; e < experts; e++) {
        double sum = 0;
        for (int r = 0; r < ranks; r++) {
            double s = share[(size_t)e * ranks + r];
            if (!(s >= 0 && s <= 1))
                return 0;
            sum += s;
        }
        if (!(fabs(sum - 1) <= 1e-9))
            return 0;
    }
    return total == copies;
}

/* The child's x and y (positions, solver labels) into clean shares (expert
** ids): copies where x = 1, shares clipped to [floor / 2, 1] and divided by
** their sum, so they are > 0 and sum to 1 up to rounding. */
static void clean_shares(const double *sx, const double *sy, const int *order, const double *floor_, int experts,
                         int ranks, double *share)
{
    for (int i = 0; i < experts; i++) {
        double *s = share + (size_t)order[i] * ranks, sum = 0;
        for (int r = 0; r < ranks; r++) {
            s[r] = sx[RX(i, r)] > 0.5 ? fmin(fmax(sy[RX(i, r)], 0.5 * floor_[i]), 1) : 0;
            sum += s[r];
        }
        for (int r = 0; r < ranks && sum > 0; r++)
            s[r] /= sum;
    }
}

moe_status moe_place_ilp_replicated(const double *w, int experts, int ranks, int slots, int extra,
                                    const double *start, double time_limit_s, double gap, double *share,
                                    moe_ilp_result *res)
{
    double t0 = now_s();
    size_t n = (size_t)experts * ranks;
    memset(res, 0, sizeof *res);
    if (extra < 0 || !valid_shares(start, experts, ranks, slots, experts + extra))
        return moe_fail(MOE_ERR_INTERNAL, "ILP warm start is not a placement of %d experts + %d copies on %d x %d "
                        "slots", experts, extra, ranks, slots);
    memcpy(share, start, n * sizeof *share);
    double start_obj = moe_place_max_load_shares(w, experts, ranks, start);
    double lb = moe_place_layer_bound(w, experts, ranks, extra);
    res->objective = start_obj;
    res->bound = lb;
    double sum;
    if (start_is_enough(w, experts, ranks, gap, t0, res, &sum))
        return MOE_OK;
    double scale = ranks / sum, *ws;
    int *order;
    double *floor_ = malloc((size_t)experts * sizeof *floor_), *sol = malloc(2 * n * sizeof *sol);
    double *cand = malloc(n * sizeof *cand);
    moe_status st = floor_ && sol && cand ? scaled_order(w, experts, ranks, sum, &ws, &order)
                                          : moe_fail(MOE_ERR_NOMEM, "out of memory building the ILP");
    if (st != MOE_OK) {
        free(floor_), free(sol), free(cand);
        return st;
    }
    /* A copy carries at least SHARE_FLOOR_LOAD of the mean rank load (1 once
    ** scaled), at most 1/ranks^2 of its expert so that any copy count fits. */
    for (int i = 0; i < experts; i++) {
        double wi = ws[order[i]];
        floor_[i] = fmin(wi > 0 ? SHARE_FLOOR_LOAD / wi : 1, 1.0 / ((double)ranks * ranks));
    }
    rep_arg arg = {.ws = ws, .order = order, .start = start, .floor = floor_, .experts = experts, .ranks = ranks,
                   .slots = slots, .copies = experts + extra, .start_obj = start_obj * scale, .lb = lb * scale,
                   .time_limit_s = time_limit_s, .gap = gap};
    child_header hdr = {0};
    int got = 0;
    st = run_child(solve_replicated, &arg, 2 * n * sizeof *sol, watchdog_deadline(t0, time_limit_s), &hdr, sol, &got);
    res->killed = st == MOE_OK && got == 0;
    if (st == MOE_OK && got == 1) {
        /* The floor can cost up to SHARE_FLOOR_LOAD per copy on a rank: raise
        ** each copy of an optimum without it to its floor, taking the
        ** difference from the expert's largest copies, and no rank gains more
        ** than slots * SHARE_FLOOR_LOAD. So CBC's bound minus that is a bound
        ** of the problem without the floor. */
        if (hdr.have && isfinite(hdr.bound)) /* no incumbent: CBC may have found the cut M range empty */
            res->bound = fmax(res->bound, (hdr.bound - slots * SHARE_FLOOR_LOAD) / scale);
        if (hdr.have) {
            clean_shares(sol, sol + n, order, floor_, experts, ranks, cand);
            if (valid_shares(cand, experts, ranks, slots, experts + extra)) {
                double obj = moe_place_max_load_shares(w, experts, ranks, cand);
                if (obj < start_obj * (1 - 1e-12)) {
                    memcpy(share, cand, n * sizeof *share);
                    res->objective = obj;
                    res->improved = 1;
                }
                res->finished = hdr.finished;
            }
        }
        res->bound = fmin(res->bound, res->objective);
    }
    res->seconds = now_s() - t0;
    free(ws), free(order), free(floor_), free(sol), free(cand);
    return st;
}
