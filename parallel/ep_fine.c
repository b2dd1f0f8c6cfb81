/*
** ep_fine: the arrival-driven expert layer (--moe-overlap fine; ep.h has
** the contract, ep_overlap.c the coarse mode and the entry points).
**
** Work comes in units: source rank p's rows for one chunk of this rank's
** local experts (k chunks per source, cut at local-expert boundaries, so no
** GEMM changes shape). Every receive is posted at once; the row messages go
** out one after another in rotated order (rank r sends to r+1, r+2, ..., each
** peer's chunks in order, MOE_EP_SEND_WINDOW in flight), so a rank's units
** land one after another instead of all at the end of the exchange. The local
** rows compute first, then each unit as it lands, and each unit's results go
** home the moment its GEMMs are done.
**
** Open MPI over TCP moves bytes only inside MPI calls. With more than one
** OpenMP thread, thread 0 only drives MPI and the others compute (GEMMs
** single-threaded inside the region); with one thread the driver runs between
** every two segments (local experts) of a task. Backward, the weight
** gradients of unit u run once units 0..u (source-major) have their data
** gradients and no other thread is at them, so every expert sums its segments
** in source order, as the plain dispatcher does: the bits never depend on
** arrival order, and the work fills the waits for rows.
*/
#include <sched.h>
#include <stdatomic.h>
#include <string.h>

#ifdef _OPENMP
#include <omp.h>
#endif

#include "layers/experts.h"
#include "parallel/ep_internal.h"
#include "runtime/base/mem.h"
#include "runtime/base/timer.h"

#define EP_FINE_TAG 0x4700 /* + chunk; results: + EP_FINE_RESULTS */
#define EP_FINE_RESULTS 0x100
#ifndef MOE_EP_SEND_WINDOW
#define MOE_EP_SEND_WINDOW 1 /* row messages in flight per rank */
#endif

/* Unit u = p * k + c: source p, local experts [l0(c), l1(c)). Element
** counts and displacements of its rows on the sending side (slot order) and
** the receiving side (received order); its segments [g0, g1). */
typedef struct {
    int k, n;
    size_t *sc, *sd, *rc, *rd; /* [n] */
    int *g0, *g1;              /* [n] */
    moe_request **in, **back, **out, **ret;
    atomic_int *arrived, *claimed, *done;
    int *sent;
    atomic_int wnext; /* backward: the next unit whose weight gradients run (n: none) */
    atomic_int wbusy; /* a thread is running weight gradients */
    int next_send;    /* the next unit, in send order, not yet posted */
    int serial;       /* one thread: tasks call the driver between their segments */
} fine_state;

static int source_at(const moe_expert_map *map, int i) { return (map->ep_rank + i) % map->ep_size; }

/* Chunks per source: the layer's setting, else 2 (on 4 emulated hosts at
** 1 Gbit/s, 2 beat 1 and 4: docs/overlap.md), never more than E_local. */
static int chunks_per_source(const moe_ep_pass *a)
{
    int El = a->map->E_local, k = a->s->fine_chunks > 0 ? a->s->fine_chunks : 2;
    return k < El ? k : El;
}

static void fine_free(fine_state *f)
{
    void *bufs[] = {f->sc, f->g0, f->in, f->arrived, f->claimed, f->done, f->sent}; /* the others point into these */
    for (size_t i = 0; i < sizeof bufs / sizeof *bufs; i++)
        moe_free(bufs[i]);
}

static moe_status fine_init(const moe_ep_pass *a, fine_state *f)
{
    moe_ep_layer *s = a->s;
    int P = a->map->ep_size, El = a->map->E_local, k = chunks_per_source(a), n = P * k;
    memset(f, 0, sizeof *f);
    f->k = k;
    f->n = n;
    size_t sz = (size_t)n;
    MOE_TRY(moe_alloc((void **)&f->sc, sz * 4 * sizeof(size_t), "fine overlap units"));
    f->sd = f->sc + sz, f->rc = f->sd + sz, f->rd = f->rc + sz;
    MOE_TRY(moe_alloc((void **)&f->g0, sz * 2 * sizeof(int), "fine overlap units"));
    f->g1 = f->g0 + sz;
    MOE_TRY(moe_alloc((void **)&f->in, sz * 4 * sizeof(moe_request *), "fine overlap requests"));
    f->back = f->in + sz, f->out = f->back + sz, f->ret = f->out + sz;
    MOE_TRY(moe_alloc((void **)&f->arrived, sz * sizeof(atomic_int), "fine overlap flags"));
    MOE_TRY(moe_alloc((void **)&f->claimed, sz * sizeof(atomic_int), "fine overlap flags"));
    MOE_TRY(moe_alloc((void **)&f->done, sz * sizeof(atomic_int), "fine overlap flags"));
    MOE_TRY(moe_alloc((void **)&f->sent, sz * sizeof(int), "fine overlap flags"));
    /* the sending side's slot-ordered offsets: slot (p, l) */
    size_t send_off = 0;
    for (int p = 0; p < P; p++)
        for (int c = 0; c < k; c++) {
            int u = p * k + c, l0 = El * c / k, l1 = El * (c + 1) / k, rows = 0;
            for (int l = l0; l < l1; l++)
                rows += s->send_counts[p * El + l];
            f->sd[u] = send_off * (size_t)a->C;
            f->sc[u] = (size_t)rows * (size_t)a->C;
            send_off += (size_t)rows;
            f->g0[u] = p * El + l0;
            f->g1[u] = p * El + l1;
            f->rd[u] = (size_t)s->offsets[f->g0[u]] * (size_t)a->C;
            f->rc[u] = (size_t)(s->offsets[f->g1[u]] - s->offsets[f->g0[u]]) * (size_t)a->C;
            atomic_init(&f->arrived[u], p == a->map->ep_rank); /* local rows need no message */
            atomic_init(&f->claimed[u], 0);
            atomic_init(&f->done[u], 0);
        }
    atomic_init(&f->wnext, a->backward ? 0 : n);
    atomic_init(&f->wbusy, 0);
    return MOE_OK;
}

/* Unit of the i-th position in this rank's order (its own first, then the
** peers rotated, each peer's chunks in order). */
static int unit_at(const moe_ep_pass *a, const fine_state *f, int i)
{
    return source_at(a->map, i / f->k) * f->k + i % f->k;
}

/* Posts what the send window allows of the row messages, in order; called
** again by the driver as sends complete. */
static moe_status post_sends(const moe_ep_pass *a, fine_state *f)
{
    int busy = 0;
    for (int i = f->k; i < f->next_send; i++)
        busy += f->out[unit_at(a, f, i)] != NULL;
    while (f->next_send < f->n && busy < MOE_EP_SEND_WINDOW) {
        int u = unit_at(a, f, f->next_send++);
        if (!f->sc[u])
            continue;
        moe_ep_maybe_delay(a->s);
        MOE_TRY(moe_isend(a->ep, a->src + f->sd[u], f->sc[u], MOE_DT_F32, u / f->k, EP_FINE_TAG + u % f->k,
                          &f->out[u]));
        busy++;
    }
    return MOE_OK;
}

/* Posts every receive (rows and results), copies the own rows, starts the sends. */
static moe_status fine_post(const moe_ep_pass *a, fine_state *f)
{
    int me = a->map->ep_rank;
    for (int u = 0; u < f->n; u++) {
        int p = u / f->k, c = u % f->k;
        if (p == me)
            continue;
        if (f->rc[u])
            MOE_TRY(moe_irecv(a->ep, a->dst + f->rd[u], f->rc[u], MOE_DT_F32, p, EP_FINE_TAG + c, &f->in[u]));
        if (f->sc[u])
            MOE_TRY(moe_irecv(a->ep, a->out + f->sd[u], f->sc[u], MOE_DT_F32, p, EP_FINE_TAG + EP_FINE_RESULTS + c,
                              &f->back[u]));
    }
    for (int c = 0; c < f->k; c++) {
        int u = me * f->k + c;
        memcpy(a->dst + f->rd[u], a->src + f->sd[u], f->sc[u] * sizeof(float));
    }
    f->next_send = f->k; /* positions 0..k-1 are the own units */
    return post_sends(a, f);
}

static void event(const moe_ep_pass *a, const char *what, int u, double t0, double t1)
{
    if (a->s->on_event)
        a->s->on_event(a->s->event_ctx, what, u, t0, t1);
}

/* Driver side: marks arrived units, sends finished ones home, tests the
** sends in flight and posts the next row messages. *finished: every unit
** sent home and every row message posted. MPI calls happen only here. */
static moe_status fine_progress(const moe_ep_pass *a, fine_state *f, int *finished)
{
    int me = a->map->ep_rank, left = 0;
    for (int i = 0; i < f->n; i++) {
        int u = unit_at(a, f, i), p = u / f->k, ok = 1;
        if (!atomic_load_explicit(&f->arrived[u], memory_order_relaxed)) {
            MOE_TRY(moe_test(&f->in[u], &ok));
            if (ok) {
                atomic_store_explicit(&f->arrived[u], 1, memory_order_release);
                double t = moe_now();
                event(a, "arrived", u, t, t);
            }
        }
        if (!f->sent[u] && atomic_load_explicit(&f->done[u], memory_order_acquire)) {
            if (p == me)
                memcpy(a->out + f->sd[u], a->res + f->rd[u], f->rc[u] * sizeof(float));
            else if (f->rc[u]) {
                moe_ep_maybe_delay(a->s);
                MOE_TRY(moe_isend(a->ep, a->res + f->rd[u], f->rc[u], MOE_DT_F32, p,
                                  EP_FINE_TAG + EP_FINE_RESULTS + u % f->k, &f->ret[u]));
            }
            f->sent[u] = 1;
            double t = moe_now();
            event(a, "sent", u, t, t);
        }
        if (f->out[u])
            MOE_TRY(moe_test(&f->out[u], &ok));
        if (f->ret[u])
            MOE_TRY(moe_test(&f->ret[u], &ok));
        left += !f->sent[u];
    }
    MOE_TRY(post_sends(a, f));
    *finished = left == 0 && f->next_send >= f->n;
    return MOE_OK;
}

/* Between two segments of a task: the driver's turn when there is no driver
** thread. */
static moe_status between_segments(const moe_ep_pass *a, fine_state *f)
{
    int finished;
    return f->serial ? fine_progress(a, f, &finished) : MOE_OK;
}

/* Unit u's task, one segment at a time: the expert forward, or the data
** gradients. *secs gets its GEMM time. */
static moe_status run_unit(const moe_ep_pass *a, fine_state *f, int u, double *secs)
{
    moe_ep_layer *s = a->s;
    double t0 = moe_now(), busy = 0;
    for (int g = f->g0[u]; g < f->g1[u]; g++) {
        double t = moe_now();
        if (!a->backward)
            moe_experts_forward_segments(s->ye, s->h13, s->act, s->xr, a->w13, a->w2, s->offsets + g,
                                         s->seg_expert + g, 1, a->C, a->F);
        else
            moe_experts_dgrad_segments(s->dx, s->dh13, s->dact, s->ye, s->h13, a->w13, a->w2, s->offsets + g,
                                       s->seg_expert + g, 1, a->C, a->F);
        busy += moe_now() - t;
        MOE_TRY(between_segments(a, f));
    }
    event(a, "compute", u, t0, moe_now());
    *secs = busy;
    return MOE_OK;
}

/* Backward: the weight gradients of the next unit in source-major order, once
** its data gradients are done and no other thread is at them. *ran says
** whether it did. */
static moe_status next_wgrad(const moe_ep_pass *a, fine_state *f, double *secs, int *ran)
{
    moe_ep_layer *s = a->s;
    int expect = 0, w = atomic_load(&f->wnext);
    *secs = 0;
    *ran = 0;
    if (w >= f->n || !atomic_load_explicit(&f->done[w], memory_order_acquire))
        return MOE_OK;
    if (!atomic_compare_exchange_strong(&f->wbusy, &expect, 1))
        return MOE_OK;
    moe_status st = MOE_OK;
    w = atomic_load(&f->wnext); /* under the flag: still ready? */
    if (w < f->n && atomic_load_explicit(&f->done[w], memory_order_acquire)) {
        double t0 = moe_now();
        for (int g = f->g0[w]; g < f->g1[w] && st == MOE_OK; g++) {
            double t = moe_now();
            moe_experts_wgrad_segments(a->dw13, a->dw2, s->ye, s->xr, s->dh13, s->act, s->offsets + g,
                                       s->seg_expert + g, 1, a->C, a->F);
            *secs += moe_now() - t;
            st = between_segments(a, f);
        }
        event(a, "wgrad", w, t0, moe_now());
        atomic_store(&f->wnext, w + 1);
        *ran = 1;
    }
    atomic_store(&f->wbusy, 0);
    return st;
}

/* Compute side: the first arrived, unclaimed unit in order; -1 when all are
** claimed, -2 when none is ready yet. */
static int fine_claim(const moe_ep_pass *a, fine_state *f)
{
    int pending = 0;
    for (int i = 0; i < f->n; i++) {
        int u = unit_at(a, f, i);
        if (atomic_load_explicit(&f->claimed[u], memory_order_relaxed))
            continue;
        pending = 1;
        if (!atomic_load_explicit(&f->arrived[u], memory_order_acquire))
            continue;
        int expect = 0;
        if (atomic_compare_exchange_strong(&f->claimed[u], &expect, 1))
            return u;
    }
    return pending ? -2 : -1;
}

/* One worker's loop: data tasks first (their results unblock sends home),
** else the next weight gradients, until both are exhausted. *busy adds GEMM
** seconds. */
static moe_status compute_loop(const moe_ep_pass *a, fine_state *f, atomic_int *failed, double *busy)
{
    int finished = 0, ran;
    while (!(failed && atomic_load(failed))) {
        if (f->serial)
            MOE_TRY(fine_progress(a, f, &finished));
        double secs;
        int u = fine_claim(a, f);
        if (u >= 0) {
            MOE_TRY(run_unit(a, f, u, &secs));
            *busy += secs;
            atomic_store_explicit(&f->done[u], 1, memory_order_release);
            continue;
        }
        MOE_TRY(next_wgrad(a, f, &secs, &ran));
        *busy += secs;
        if (ran)
            continue;
        if (u == -1 && atomic_load(&f->wnext) >= f->n && (!f->serial || finished))
            return MOE_OK;
        sched_yield();
    }
    return MOE_OK;
}

static int threads_available(void)
{
#ifdef _OPENMP
    return omp_get_max_threads();
#else
    return 1;
#endif
}

/* Thread 0 drives MPI, the others compute (GEMMs single-threaded inside the region). */
static moe_status run_threaded(const moe_ep_pass *a, fine_state *f, int nt)
{
    moe_status st = MOE_OK, cst = MOE_OK;
    atomic_int failed = 0;
#pragma omp parallel num_threads(nt)
    {
#ifdef _OPENMP
        int me = omp_get_thread_num();
#else
        int me = 0;
#endif
        if (me == 0) {
            int finished = 0;
            while (st == MOE_OK && !atomic_load(&failed) && (!finished || atomic_load(&f->wnext) < f->n)) {
                st = fine_progress(a, f, &finished);
                sched_yield();
            }
            if (st != MOE_OK) /* let the compute threads out: nothing more will arrive */
                atomic_store(&failed, 1);
        } else {
            double busy = 0;
            moe_status mine = compute_loop(a, f, &failed, &busy);
            if (mine != MOE_OK) {
                atomic_store(&failed, 1);
#pragma omp critical(moe_ep_fine_status)
                cst = mine;
            }
#pragma omp atomic
            a->s->compute_s += busy;
        }
    }
    return st != MOE_OK ? st : cst;
}

moe_status moe_ep_fine_pass(const moe_ep_pass *a)
{
    fine_state f;
    moe_status st = fine_init(a, &f);
    int nt = threads_available();
    f.serial = nt == 1;
    if (st == MOE_OK)
        st = fine_post(a, &f);
    if (st == MOE_OK && nt > 1)
        st = run_threaded(a, &f, nt);
    else if (st == MOE_OK) {
        double busy = 0;
        st = compute_loop(a, &f, NULL, &busy);
        a->s->compute_s += busy;
    }
    for (int u = 0; f.in && u < f.n; u++) { /* complete everything posted, even after a failure */
        moe_request **r[4] = {&f.in[u], &f.back[u], &f.out[u], &f.ret[u]};
        for (int i = 0; i < 4; i++) {
            moe_status w = moe_wait(r[i]);
            if (st == MOE_OK)
                st = w;
        }
    }
    fine_free(&f);
    return st;
}
