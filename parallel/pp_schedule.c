#include "parallel/pp_schedule.h"

#include <limits.h>
#include <stddef.h>

#include "runtime/base/mem.h"

/* The sizes the schedule accepts; the simulation builds p*2*m*v actions, so
** that product must fit in an int too. */
static int args_ok(int p, int m, int v)
{
    if (p < 1 || m < 1 || v < 1)
        return 0;
    if (v > 1 && m % p != 0)
        return 0;
    return (long long)p * m * v * 2 <= INT_MAX;
}

static int warmup_count(int p, int s, int m, int v)
{
    long long w = v == 1 ? (long long)p - s - 1 : 2LL * (p - s - 1) + (long long)(v - 1) * p;
    long long total = (long long)m * v;
    return (int)(w < total ? w : total);
}

/* The j-th forward (or backward) of a stage: micro-batches walk a chunk in
** groups of p before moving on to the next chunk. For v = 1 this is micro j. */
static moe_pp_action nth_action(int p, int v, int j, moe_pp_kind kind)
{
    int group = p * v;
    int chunk = (j % group) / p;
    moe_pp_action a = {kind, (j / group) * p + j % p, kind == MOE_PP_FWD ? chunk : v - 1 - chunk};
    return a;
}

/* Writes the stage's 2*m*v actions: warm-up forwards, steady forward+backward
** pairs, cool-down backwards. Arguments already checked. */
static void build(int p, int s, int m, int v, moe_pp_action *out)
{
    int total = m * v, w = warmup_count(p, s, m, v), n = 0;
    for (int j = 0; j < w; j++)
        out[n++] = nth_action(p, v, j, MOE_PP_FWD);
    for (int i = 0; i < total - w; i++) {
        out[n++] = nth_action(p, v, w + i, MOE_PP_FWD);
        out[n++] = nth_action(p, v, i, MOE_PP_BWD);
    }
    for (int j = total - w; j < total; j++)
        out[n++] = nth_action(p, v, j, MOE_PP_BWD);
}

moe_status moe_pp_schedule(int p, int s, int m, int v, moe_pp_action *out)
{
    if (!args_ok(p, m, v) || s < 0 || s >= p)
        return moe_fail(MOE_ERR_USAGE,
                        "pipeline schedule: need pipeline size p >= 1 (got %d), stage 0 <= s < p (got %d), "
                        "micro-batches m >= 1 (got %d), model chunks v >= 1 (got %d), m divisible by p "
                        "when v > 1, and p*m*v*2 within int",
                        p, s, m, v);
    if (!out)
        return moe_fail(MOE_ERR_USAGE, "pipeline schedule: no output buffer (needs %d actions)", 2 * m * v);
    build(p, s, m, v, out);
    return MOE_OK;
}

/* Alive activations only peak right after a forward, and every forward past
** the warm-up is followed by a backward: the peak is w + 1, or all of them
** when the warm-up already ran every forward. */
int moe_pp_max_in_flight(int p, int s, int m, int v)
{
    if (!args_ok(p, m, v) || s < 0 || s >= p)
        return -1;
    int w = warmup_count(p, s, m, v);
    return w < m * v ? w + 1 : m * v;
}

double moe_pp_bubble_formula(int p, int m, int v)
{
    if (!args_ok(p, m, v))
        return -1.0;
    return (double)(p - 1) / ((double)v * m + (p - 1));
}

typedef struct {
    int p, m, v, n;       /* n = 2*m*v actions per stage */
    double tf, tb, comm;
    moe_pp_action *acts;  /* [p][n] the stages' lists */
    int *next;            /* [p] index of each stage's next action */
    double *free_at;      /* [p] when each stage finishes its last action */
    double *fwd_end;      /* [m][p*v] finish time per (micro, virtual stage), < 0 = not yet */
    double *bwd_end;      /* [m][p*v] */
} pp_sim;

/* When the input of stage s's action a is there, or -1 if it is not yet. */
static double ready_time(const pp_sim *S, int s, moe_pp_action a)
{
    int K = S->p * S->v, k = a.chunk * S->p + s;
    const double *fwd = S->fwd_end + (size_t)a.micro * K, *bwd = S->bwd_end + (size_t)a.micro * K;
    if (a.kind == MOE_PP_FWD) {
        if (k == 0)
            return 0.0;
        return fwd[k - 1] < 0 ? -1.0 : fwd[k - 1] + S->comm;
    }
    if (k == K - 1) /* the loss gradient is local: no hop */
        return fwd[k];
    return bwd[k + 1] < 0 ? -1.0 : bwd[k + 1] + S->comm;
}

/* Runs stage s as far as its inputs allow; returns how many actions ran. */
static int advance(pp_sim *S, int s)
{
    int ran = 0, K = S->p * S->v;
    while (S->next[s] < S->n) {
        moe_pp_action a = S->acts[(size_t)s * S->n + S->next[s]];
        double ready = ready_time(S, s, a);
        if (ready < 0)
            break;
        double start = ready > S->free_at[s] ? ready : S->free_at[s];
        double end = start + (a.kind == MOE_PP_FWD ? S->tf : S->tb);
        double *slot = a.kind == MOE_PP_FWD ? S->fwd_end : S->bwd_end;
        slot[(size_t)a.micro * K + a.chunk * S->p + s] = end;
        S->free_at[s] = end;
        S->next[s]++;
        ran++;
    }
    return ran;
}

/* Start times follow from the recurrence alone (each action starts at
** max(stage free, input ready)), so the order stages are advanced in does not
** change the result; sweeping until nothing moves finds every action whose
** inputs can ever arrive. Returns the makespan, or -1 on a deadlock. */
static double run_sim(pp_sim *S)
{
    int moved = 1;
    while (moved) {
        moved = 0;
        for (int s = 0; s < S->p; s++)
            moved += advance(S, s);
    }
    double makespan = 0;
    for (int s = 0; s < S->p; s++) {
        if (S->next[s] < S->n)
            return -1.0;
        if (S->free_at[s] > makespan)
            makespan = S->free_at[s];
    }
    return makespan;
}

double moe_pp_simulate(int p, int m, int v, double tf, double tb, double comm, double *bubble)
{
    if (!args_ok(p, m, v) || !(tf > 0) || !(tb > 0) || !(comm >= 0))
        return -1.0;
    pp_sim S = {.p = p, .m = m, .v = v, .n = 2 * m * v, .tf = tf, .tb = tb, .comm = comm};
    size_t per_micro = (size_t)m * p * v;
    double makespan = -1.0;
    if (moe_alloc((void **)&S.acts, sizeof *S.acts * (size_t)p * S.n, "pipeline simulation actions") != MOE_OK ||
        moe_alloc((void **)&S.next, sizeof *S.next * (size_t)p, "pipeline simulation cursors") != MOE_OK ||
        moe_alloc((void **)&S.free_at, sizeof *S.free_at * (size_t)p, "pipeline simulation clocks") != MOE_OK ||
        moe_alloc((void **)&S.fwd_end, sizeof *S.fwd_end * per_micro, "pipeline simulation times") != MOE_OK ||
        moe_alloc((void **)&S.bwd_end, sizeof *S.bwd_end * per_micro, "pipeline simulation times") != MOE_OK)
        goto done;
    for (size_t i = 0; i < per_micro; i++)
        S.fwd_end[i] = S.bwd_end[i] = -1.0;
    for (int s = 0; s < p; s++)
        build(p, s, m, v, S.acts + (size_t)s * S.n);
    makespan = run_sim(&S);
    if (makespan >= 0 && bubble) {
        double span = makespan * p, busy = (double)p * m * v * (tf + tb);
        *bubble = (span - busy) / span;
    }
done:
    moe_free(S.bwd_end);
    moe_free(S.fwd_end);
    moe_free(S.free_at);
    moe_free(S.next);
    moe_free(S.acts);
    return makespan;
}
