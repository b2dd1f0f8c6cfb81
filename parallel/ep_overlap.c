/*
** ep_overlap: the expert layer with its all-to-alls overlapped by compute
** (--moe-overlap coarse|fine; ep.h has the contract).
**
** coarse (Tutel-like): the local experts are cut into d chunks; each chunk's
** rows go out in their own all-to-all (non-blocking point-to-point to every
** peer: Open MPI's non-blocking collectives progress far slower), all posted
** at once; chunk c computes once all of its rows are in and its results go
** home in another all-to-all while chunk c+1 computes.
**
** fine (Comet-like, arrival-driven): one message per (source rank), posted
** at once; the local rows compute first, then each source's rows as they
** land, and each source's results are sent home the moment they are done.
** With more than one OpenMP thread, thread 0 only drives MPI (Open MPI over
** TCP moves bytes only inside MPI calls) and the other threads compute; with
** one thread the driver runs between every two segments (local experts) of a
** task. Backward, the weight gradients of source p run as soon as the data
** gradients of sources 0..p are done, filling the waits for rows and hiding
** the last results' trip home.
**
** Both run exactly the GEMMs of the plain dispatcher, on the same rows, so
** outputs are bit-identical to it; the data gradients run per chunk / source
** as they arrive, and every expert's weight gradient sums its segments in
** source order (coarse: once, after the pass), so they do not depend on
** arrival order either.
*/
#include <sched.h>
#include <stdatomic.h>
#include <string.h>
#include <unistd.h>

#ifdef _OPENMP
#include <omp.h>
#endif

#include "layers/experts.h"
#include "parallel/ep_internal.h"
#include "runtime/base/timer.h"

#define EP_FINE_TAG 0x4551
#define EP_BACK_TAG 0x4552
#define EP_COARSE_TAG 0x4600 /* + 2 * chunk, + 1 for results */
#ifndef MOE_EP_SEND_WINDOW
#define MOE_EP_SEND_WINDOW 1 /* fine: row messages in flight per rank */
#endif

/* ---- fine: per-source tasks ----------------------------------------------- */

/* What one pass moves: rows out from `src` (slot-ordered, at sd[p]) into
** `dst` (received, at rd[p]), the task on each source's rows, and the
** results from `res` (received order) back into `out` (slot order). */
typedef struct {
    moe_ep_layer *s;
    moe_comm *ep;
    const moe_expert_map *map;
    int C, F, backward;
    const float *src; /* rows to send, slot order */
    float *dst;       /* rows received (xr or ye) */
    float *res;       /* task results, received order (ye or dx) */
    float *out;       /* results home, slot order */
    const float *w13, *w2;
    float *dw13, *dw2; /* backward, fine: weight gradients, accumulated inside the pass */
} pass;

/* The test hook of ep.h (delay_us): a pseudo-random pause before a send. */
static void maybe_delay(moe_ep_layer *s)
{
    if (s->delay_us <= 0)
        return;
    s->delay_state = s->delay_state * 1103515245u + 12345u;
    usleep((useconds_t)((s->delay_state >> 8) % (unsigned)s->delay_us));
}

/* Source order: this rank first, then the others rotated (as the sends go). */
static int source_at(const moe_expert_map *map, int i) { return (map->ep_rank + i) % map->ep_size; }

typedef struct {
    moe_request **in, **back, **out, **ret; /* [P]: rows arriving, results arriving, rows sent, results sent */
    atomic_int *arrived, *claimed, *done;
    int *sent;
    atomic_int wnext; /* backward: the next source whose weight gradients run, in source order (P: none) */
    atomic_int wbusy; /* a thread is running weight gradients */
    int next_send;    /* the next peer, in rotated order, whose rows are not yet posted */
    int serial;       /* one thread: tasks call the driver between their segments */
} fine_state;

/* Rows go out to one peer after another in rotated order (rank r sends to
** r+1, r+2, ... while it receives from r-1, r-2, ...), at most
** MOE_EP_SEND_WINDOW at a time: each link then carries few messages at once,
** so a rank's sources land one after another, the first after a fraction of
** the exchange, instead of all together at its end. Posts what the window
** allows; called again by the driver as sends complete. */
static moe_status post_sends(const pass *a, fine_state *f)
{
    moe_ep_layer *s = a->s;
    int P = a->map->ep_size, busy = 0;
    for (int i = 1; i < f->next_send; i++)
        busy += f->out[source_at(a->map, i)] != NULL;
    while (f->next_send < P && busy < MOE_EP_SEND_WINDOW) {
        int p = source_at(a->map, f->next_send++);
        if (!s->sc[p])
            continue;
        maybe_delay(s);
        MOE_TRY(moe_isend(a->ep, a->src + s->sd[p], s->sc[p], MOE_DT_F32, p, EP_FINE_TAG, &f->out[p]));
        busy++;
    }
    return MOE_OK;
}

/* Posts the receives of rows and results and the sends of rows. */
static moe_status fine_post(const pass *a, fine_state *f)
{
    moe_ep_layer *s = a->s;
    int P = a->map->ep_size, me = a->map->ep_rank;
    for (int p = 0; p < P; p++) {
        if (p == me)
            continue;
        if (s->rc[p])
            MOE_TRY(moe_irecv(a->ep, a->dst + s->rd[p], s->rc[p], MOE_DT_F32, p, EP_FINE_TAG, &f->in[p]));
        if (s->sc[p])
            MOE_TRY(moe_irecv(a->ep, a->out + s->sd[p], s->sc[p], MOE_DT_F32, p, EP_BACK_TAG, &f->back[p]));
    }
    memcpy(a->dst + s->rd[me], a->src + s->sd[me], s->sc[me] * sizeof(float));
    return post_sends(a, f);
}

/* Driver side: marks arrived sources, sends finished ones home, and tests
** the sends in flight (Open MPI over TCP moves bytes only inside MPI calls).
** Returns whether every source has been sent home and every row message
** posted. MPI calls happen only here. */
static moe_status fine_progress(const pass *a, fine_state *f, int *finished)
{
    moe_ep_layer *s = a->s;
    int P = a->map->ep_size, me = a->map->ep_rank, left = 0;
    for (int i = 0; i < P; i++) {
        int p = source_at(a->map, i), ok = 1;
        if (!atomic_load_explicit(&f->arrived[p], memory_order_relaxed)) {
            MOE_TRY(moe_test(&f->in[p], &ok));
            if (ok) {
                atomic_store_explicit(&f->arrived[p], 1, memory_order_release);
                if (s->on_event) {
                    double t = moe_now();
                    s->on_event(s->event_ctx, "arrived", p, t, t);
                }
            }
        }
        if (!f->sent[p] && atomic_load_explicit(&f->done[p], memory_order_acquire)) {
            if (p == me)
                memcpy(a->out + s->sd[me], a->res + s->rd[me], s->rc[me] * sizeof(float));
            else if (s->rc[p]) {
                maybe_delay(s);
                MOE_TRY(moe_isend(a->ep, a->res + s->rd[p], s->rc[p], MOE_DT_F32, p, EP_BACK_TAG, &f->ret[p]));
            }
            f->sent[p] = 1;
            if (s->on_event) {
                double t = moe_now();
                s->on_event(s->event_ctx, "sent", p, t, t);
            }
        }
        if (f->out[p])
            MOE_TRY(moe_test(&f->out[p], &ok));
        if (f->ret[p])
            MOE_TRY(moe_test(&f->ret[p], &ok));
        left += !f->sent[p];
    }
    MOE_TRY(post_sends(a, f));
    *finished = left == 0 && f->next_send >= P; /* every row message posted, too */
    return MOE_OK;
}

/* Between two segments of a task: the driver's turn when there is no driver
** thread. */
static moe_status between_segments(const pass *a, fine_state *f)
{
    int finished;
    return f->serial ? fine_progress(a, f, &finished) : MOE_OK;
}

/* The data task of source p, one segment at a time: the expert forward, or
** the data gradients. *secs gets its GEMM time. */
static moe_status run_source(const pass *a, fine_state *f, int p, double *secs)
{
    moe_ep_layer *s = a->s;
    int El = a->map->E_local, g0 = p * El;
    double t0 = moe_now(), busy = 0;
    for (int g = g0; g < g0 + El; g++) {
        double u = moe_now();
        if (!a->backward)
            moe_experts_forward_segments(s->ye, s->h13, s->act, s->xr, a->w13, a->w2, s->offsets + g,
                                         s->seg_expert + g, 1, a->C, a->F);
        else
            moe_experts_dgrad_segments(s->dx, s->dh13, s->dact, s->ye, s->h13, a->w13, a->w2, s->offsets + g,
                                       s->seg_expert + g, 1, a->C, a->F);
        busy += moe_now() - u;
        MOE_TRY(between_segments(a, f));
    }
    if (s->on_event)
        s->on_event(s->event_ctx, "compute", p, t0, moe_now());
    *secs = busy;
    return MOE_OK;
}

/*
** Backward: the weight gradients of the next source in source order, once its
** data task is done and no other thread is at them. Every expert's gradient
** then sums its segments in source order, as the plain dispatcher does, so
** the bits do not depend on arrival order; the work fills the waits for rows
** and hides the last results' trip home. *secs = 0 when nothing ran.
*/
static moe_status next_wgrad(const pass *a, fine_state *f, double *secs)
{
    moe_ep_layer *s = a->s;
    int P = a->map->ep_size, El = a->map->E_local, expect = 0;
    int w = atomic_load(&f->wnext);
    *secs = 0;
    if (w >= P || !atomic_load_explicit(&f->done[w], memory_order_acquire))
        return MOE_OK;
    if (!atomic_compare_exchange_strong(&f->wbusy, &expect, 1))
        return MOE_OK;
    moe_status st = MOE_OK;
    w = atomic_load(&f->wnext); /* under the flag: still ready? */
    if (w < P && atomic_load_explicit(&f->done[w], memory_order_acquire)) {
        double t0 = moe_now(), busy = 0;
        for (int g = w * El; g < (w + 1) * El && st == MOE_OK; g++) {
            double u = moe_now();
            moe_experts_wgrad_segments(a->dw13, a->dw2, s->ye, s->xr, s->dh13, s->act, s->offsets + g,
                                       s->seg_expert + g, 1, a->C, a->F);
            busy += moe_now() - u;
            st = between_segments(a, f);
        }
        if (s->on_event)
            s->on_event(s->event_ctx, "wgrad", w, t0, moe_now());
        *secs = busy > 0 ? busy : 1e-300; /* ran, even if nothing to compute */
        atomic_store(&f->wnext, w + 1);
    }
    atomic_store(&f->wbusy, 0);
    return st;
}

/* Compute side: the first arrived, unclaimed source in order; -1 when all
** are claimed, -2 when none is ready yet. */
static int fine_claim(const pass *a, fine_state *f)
{
    int P = a->map->ep_size, pending = 0;
    for (int i = 0; i < P; i++) {
        int p = source_at(a->map, i);
        if (atomic_load_explicit(&f->claimed[p], memory_order_relaxed))
            continue;
        pending = 1;
        if (!atomic_load_explicit(&f->arrived[p], memory_order_acquire))
            continue;
        int expect = 0;
        if (atomic_compare_exchange_strong(&f->claimed[p], &expect, 1))
            return p;
    }
    return pending ? -2 : -1;
}

static int threads_available(void)
{
#ifdef _OPENMP
    return omp_get_max_threads();
#else
    return 1;
#endif
}

/* One worker's loop: data tasks first (their results unblock sends home),
** else the next weight gradients, until both are exhausted. *busy adds GEMM
** seconds. */
static moe_status compute_loop(const pass *a, fine_state *f, atomic_int *failed, double *busy)
{
    int P = a->map->ep_size, finished = 0;
    while (!(failed && atomic_load(failed))) {
        if (f->serial)
            MOE_TRY(fine_progress(a, f, &finished));
        double secs;
        int p = fine_claim(a, f);
        if (p >= 0) {
            MOE_TRY(run_source(a, f, p, &secs));
            *busy += secs;
            atomic_store_explicit(&f->done[p], 1, memory_order_release);
            continue;
        }
        MOE_TRY(next_wgrad(a, f, &secs));
        *busy += secs > 1e-290 ? secs : 0;
        if (secs > 0)
            continue;
        if (p == -1 && atomic_load(&f->wnext) >= P && (!f->serial || finished))
            return MOE_OK;
        sched_yield();
    }
    return MOE_OK;
}

/* Thread 0 drives MPI, the others compute (GEMMs single-threaded inside the region). */
static moe_status fine_run_threaded(const pass *a, fine_state *f, int nt)
{
    moe_status st = MOE_OK, cst = MOE_OK;
    atomic_int failed = 0;
    int P = a->map->ep_size;
#pragma omp parallel num_threads(nt)
    {
#ifdef _OPENMP
        int me = omp_get_thread_num();
#else
        int me = 0;
#endif
        if (me == 0) {
            int finished = 0;
            while (st == MOE_OK && !atomic_load(&failed) && (!finished || atomic_load(&f->wnext) < P)) {
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

static moe_status fine_pass(const pass *a)
{
    int P = a->map->ep_size;
    moe_request *in[P], *back[P], *out[P], *ret[P];
    atomic_int arrived[P], claimed[P], done[P];
    int sent[P];
    for (int p = 0; p < P; p++) {
        in[p] = back[p] = out[p] = ret[p] = NULL;
        atomic_init(&arrived[p], 0);
        atomic_init(&claimed[p], 0);
        atomic_init(&done[p], 0);
        sent[p] = 0;
    }
    atomic_store(&arrived[a->map->ep_rank], 1); /* local rows need no message */
    int nt = threads_available();
    fine_state f = {.in = in, .back = back, .out = out, .ret = ret, .arrived = arrived, .claimed = claimed,
                    .done = done, .sent = sent, .serial = nt == 1, .next_send = 1};
    atomic_init(&f.wnext, a->backward ? 0 : P);
    atomic_init(&f.wbusy, 0);
    moe_status st = fine_post(a, &f);
    if (st == MOE_OK && nt > 1)
        st = fine_run_threaded(a, &f, nt);
    else if (st == MOE_OK) {
        double busy = 0;
        st = compute_loop(a, &f, NULL, &busy);
        a->s->compute_s += busy;
    }
    for (int p = 0; p < P; p++) { /* complete everything posted, even after a failure */
        moe_request **r[4] = {&in[p], &back[p], &out[p], &ret[p]};
        for (int k = 0; k < 4; k++) {
            moe_status w = moe_wait(r[k]);
            if (st == MOE_OK)
                st = w;
        }
    }
    return st;
}

/* ---- coarse: chunks of local experts, one all-to-all each ---------------- */

/* Element counts and displacements, per peer, of local experts [l0, l1)
** within rows laid out by `seg_off` (segment (p, l) = seg_off[p*El + l]). */
static void chunk_splits(const int32_t *seg_off, int P, int El, int l0, int l1, int C, size_t *cnt, size_t *dsp)
{
    for (int p = 0; p < P; p++) {
        int a = seg_off[p * El + l0], b = seg_off[p * El + l1];
        cnt[p] = (size_t)(b - a) * C;
        dsp[p] = (size_t)a * C;
    }
}

/* Posts chunk c's messages of one direction: to each peer p, cnt_out[p]
** floats from `from` at dsp_out[p]; from each, cnt_in[p] into `to` at
** dsp_in[p]. The own part is a copy. */
static moe_status chunk_post(const pass *a, const size_t *cnt_out, const size_t *dsp_out, const float *from,
                             const size_t *cnt_in, const size_t *dsp_in, float *to, int tag, moe_request **rq)
{
    int P = a->map->ep_size, me = a->map->ep_rank;
    for (int p = 0; p < P; p++)
        if (p != me && cnt_in[p])
            MOE_TRY(moe_irecv(a->ep, to + dsp_in[p], cnt_in[p], MOE_DT_F32, p, tag, &rq[p]));
    for (int i = 1; i < P; i++) {
        int p = source_at(a->map, i);
        if (cnt_out[p])
            MOE_TRY(moe_isend(a->ep, from + dsp_out[p], cnt_out[p], MOE_DT_F32, p, tag, &rq[P + p]));
    }
    memcpy(to + dsp_in[me], from + dsp_out[me], cnt_out[me] * sizeof(float));
    return MOE_OK;
}

static moe_status wait_all(moe_request **rq, int n, moe_status st)
{
    for (int i = 0; i < n; i++) { /* everything posted completes, even after a failure */
        moe_status w = moe_wait(&rq[i]);
        if (st == MOE_OK)
            st = w;
    }
    return st;
}

static moe_status coarse_pass(const pass *a)
{
    moe_ep_layer *s = a->s;
    int P = a->map->ep_size, El = a->map->E_local, C = a->C;
    int d = s->chunks > 0 ? s->chunks : 4;
    if (d > El)
        d = El;
    /* slot-ordered offsets of the sending side: slot (p, l) */
    int32_t send_off[P * El + 1];
    send_off[0] = 0;
    for (int g = 0; g < P * El; g++)
        send_off[g + 1] = send_off[g] + s->send_counts[g];
    size_t sc[d][P], sd[d][P], rc[d][P], rd[d][P];
    moe_request *in[d][2 * P], *back[d][2 * P];
    memset(in, 0, sizeof in);
    memset(back, 0, sizeof back);
    moe_status st = MOE_OK;
    for (int c = 0; c < d && st == MOE_OK; c++) { /* every chunk's rows on the wire at once */
        int l0 = El * c / d, l1 = El * (c + 1) / d;
        chunk_splits(send_off, P, El, l0, l1, C, sc[c], sd[c]);
        chunk_splits(s->offsets, P, El, l0, l1, C, rc[c], rd[c]);
        maybe_delay(s);
        st = chunk_post(a, sc[c], sd[c], a->src, rc[c], rd[c], a->dst, EP_COARSE_TAG + 2 * c, in[c]);
    }
    for (int c = 0; c < d && st == MOE_OK; c++) {
        int l0 = El * c / d, l1 = El * (c + 1) / d;
        st = wait_all(in[c], 2 * P, st);
        double t0 = moe_now();
        for (int p = 0; p < P && st == MOE_OK; p++) {
            int g0 = p * El + l0;
            if (!a->backward)
                moe_experts_forward_segments(s->ye, s->h13, s->act, s->xr, a->w13, a->w2, s->offsets + g0,
                                             s->seg_expert + g0, l1 - l0, C, a->F);
            else
                moe_experts_dgrad_segments(s->dx, s->dh13, s->dact, s->ye, s->h13, a->w13, a->w2, s->offsets + g0,
                                           s->seg_expert + g0, l1 - l0, C, a->F);
        }
        double t1 = moe_now();
        s->compute_s += t1 - t0;
        if (s->on_event)
            s->on_event(s->event_ctx, "compute", c, t0, t1);
        if (st == MOE_OK) /* results home while the next chunk computes */
            st = chunk_post(a, rc[c], rd[c], a->res, sc[c], sd[c], a->out, EP_COARSE_TAG + 2 * c + 1, back[c]);
    }
    for (int c = 0; c < d; c++) {
        st = wait_all(in[c], 2 * P, st);
        st = wait_all(back[c], 2 * P, st);
    }
    return st;
}

/* ---- the layer ------------------------------------------------------------ */

moe_status moe_ep_forward_overlap(moe_ep_layer *s, moe_comm *ep, const moe_expert_map *map, const float *x,
                                  const int32_t *row_token, float *xs, const int32_t *slot_offsets, int C, int F,
                                  const float *w13, const float *w2, float *ys)
{
    MOE_TRY(moe_ep_exchange_counts(s, ep, map, slot_offsets, C, F));
    /* every peer's rows gathered into slot order first: the sends read them in place */
    size_t rows = 0;
    for (int p = 0; p < map->ep_size; p++)
        rows += s->send_rows[p];
    moe_permute_forward(xs, x, row_token, (int)rows, C);
    pass a = {s, ep, map, C, F, 0, xs, s->xr, s->ye, ys, w13, w2, NULL, NULL};
    s->compute_s = 0;
    return s->overlap == MOE_EP_COARSE ? coarse_pass(&a) : fine_pass(&a);
}

moe_status moe_ep_backward_overlap(moe_ep_layer *s, moe_comm *ep, const moe_expert_map *map, const float *dys,
                                   int C, int F, const float *w13, const float *w2, float *dw13, float *dw2,
                                   float *dxs)
{
    moe_ep_refresh_splits(s, map->ep_size, C);
    pass a = {s, ep, map, C, F, 1, dys, s->ye, s->dx, dxs, w13, w2, dw13, dw2};
    s->compute_s = 0;
    if (s->overlap != MOE_EP_COARSE) /* fine runs the weight gradients inside the pass */
        return fine_pass(&a);
    MOE_TRY(coarse_pass(&a));
    /* weight gradients once, every segment in order: independent of arrival order */
    int segs = map->ep_size * map->E_local;
    double t0 = moe_now();
    moe_experts_wgrad_segments(dw13, dw2, s->ye, s->xr, s->dh13, s->act, s->offsets, s->seg_expert, segs, C, F);
    s->compute_s += moe_now() - t0;
    return MOE_OK;
}
