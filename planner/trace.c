/*
** trace: routing traces in memory and on disk (contract in planner/trace.h,
** format in proto/routing_trace.proto). The reader trusts nothing in the file:
** the trailer checksum, the version, every declared size against the arrays
** actually present, and every count, before anything reaches the planner.
*/
#include "planner/trace.h"
#include "runtime/base/fs.h"

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <limits.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>
#include <xxhash.h>

#include "proto/routing_trace.pb-c.h"
#include "runtime/base/mem.h"

#define TRACE_FORMAT_VERSION 1
#define TRAILER_TAG 0x79 /* field 15, wire type 1 (fixed64): (15 << 3) | 1 */
#define TRAILER_BYTES 9
#define MAX_TRACE_BYTES ((uint64_t)1 << 34)
#define MAX_DIM (1 << 24) /* any one of layers/experts/topk/sources/windows */

/* ------------------------------------------------------------------------- */
/* shapes                                                                     */

/* Doubles in one window's load and transitions; fails on overflow. */
static moe_status window_sizes(int layers, int experts, int sources, size_t *nload, size_t *ntrans)
{
    size_t ls, ee;
    MOE_TRY(moe_mul_size((size_t)layers, (size_t)sources, &ls));
    MOE_TRY(moe_mul_size(ls, (size_t)experts, nload));
    MOE_TRY(moe_mul_size((size_t)experts, (size_t)experts, &ee));
    MOE_TRY(moe_mul_size((size_t)(layers - 1), ee, ntrans));
    return MOE_OK;
}

static moe_status check_shape(moe_status bad, const char *what, long long layers, long long experts, long long topk,
                              long long sources, long long nwindows)
{
    if (layers < 1 || layers > MAX_DIM)
        return moe_fail(bad, "%s: layers = %lld (expected 1..%d)", what, layers, MAX_DIM);
    if (experts < 1 || experts > MAX_DIM)
        return moe_fail(bad, "%s: experts = %lld (expected 1..%d)", what, experts, MAX_DIM);
    if (topk < 1 || topk > experts)
        return moe_fail(bad, "%s: topk = %lld (expected 1..experts = %lld)", what, topk, experts);
    if (sources < 1 || sources > MAX_DIM)
        return moe_fail(bad, "%s: sources = %lld (expected 1..%d)", what, sources, MAX_DIM);
    if (nwindows < 1 || nwindows > MAX_DIM)
        return moe_fail(bad, "%s: %lld windows (expected 1..%d)", what, nwindows, MAX_DIM);
    /* Each dim is < 2^25, so these products are exact in a double; 2^50 counts
    ** (8 PiB) is far past any real trace and keeps every size_t product safe. */
    double per_window = (double)layers * (double)sources * (double)experts;
    double trans = (double)(layers - 1) * (double)experts * (double)experts;
    if (per_window > 0x1p50 || trans > 0x1p50)
        return moe_fail(bad, "%s: layers %lld x sources %lld x experts %lld is too large for one window", what,
                        layers, sources, experts);
    return MOE_OK;
}

/* Every count finite and >= 0; names the first bad one by its coordinates. */
static moe_status check_counts(const char *what, int w, const char *array, const double *v, size_t n, int d1,
                               int d2)
{
    for (size_t i = 0; i < n; i++) {
        if (isfinite(v[i]) && v[i] >= 0)
            continue;
        size_t a = i / ((size_t)d1 * (size_t)d2), b = i / (size_t)d2 % (size_t)d1, c = i % (size_t)d2;
        return moe_fail(MOE_ERR_INPUT, "%s: window %d: %s[%zu][%zu][%zu] = %g (counts must be finite and >= 0)",
                        what, w, array, a, b, c, v[i]);
    }
    return MOE_OK;
}

moe_status moe_trace_validate(const moe_trace *t, const char *what)
{
    MOE_TRY(check_shape(MOE_ERR_INPUT, what, t->layers, t->experts, t->topk, t->sources, t->nwindows));
    if (!t->windows)
        return moe_fail(MOE_ERR_INPUT, "%s: no window array", what);
    size_t nload, ntrans;
    MOE_TRY(window_sizes(t->layers, t->experts, t->sources, &nload, &ntrans));
    for (int w = 0; w < t->nwindows; w++) {
        const moe_trace_window *x = &t->windows[w];
        if (x->first_step < 0 || x->steps < 1)
            return moe_fail(MOE_ERR_INPUT, "%s: window %d: first_step %" PRId64 ", steps %" PRId64
                            " (expected first_step >= 0, steps >= 1)", what, w, x->first_step, x->steps);
        if (x->steps > INT64_MAX - x->first_step)
            return moe_fail(MOE_ERR_INPUT, "%s: window %d: first_step %" PRId64 " + steps %" PRId64 " overflows",
                            what, w, x->first_step, x->steps);
        if (w > 0) {
            const moe_trace_window *p = &t->windows[w - 1];
            if (x->first_step < p->first_step + p->steps)
                return moe_fail(MOE_ERR_INPUT, "%s: window %d starts at step %" PRId64 " but window %d covers steps "
                                "%" PRId64 "..%" PRId64 " (windows must be in step order, not overlapping)",
                                what, w, x->first_step, w - 1, p->first_step, p->first_step + p->steps - 1);
        }
        if (!x->load)
            return moe_fail(MOE_ERR_INPUT, "%s: window %d has no load array", what, w);
        MOE_TRY(check_counts(what, w, "load", x->load, nload, t->sources, t->experts));
        if (x->transitions)
            MOE_TRY(check_counts(what, w, "transitions", x->transitions, ntrans, t->experts, t->experts));
    }
    return MOE_OK;
}

/* ------------------------------------------------------------------------- */
/* memory                                                                     */

moe_status moe_trace_alloc(moe_trace *t, int layers, int experts, int topk, int sources, int nwindows,
                           int with_transitions)
{
    memset(t, 0, sizeof *t);
    moe_status st = MOE_OK;
    MOE_TRY(check_shape(MOE_ERR_USAGE, "moe_trace_alloc", layers, experts, topk, sources, nwindows));
    size_t nload, ntrans;
    MOE_TRY(window_sizes(layers, experts, sources, &nload, &ntrans));
    MOE_TRY(moe_alloc((void **)&t->windows, sizeof *t->windows * (size_t)nwindows, "trace windows"));
    *t = (moe_trace){.layers = layers, .experts = experts, .topk = topk, .sources = sources,
                     .nwindows = nwindows, .windows = t->windows};
    for (int w = 0; w < nwindows; w++) {
        moe_trace_window *x = &t->windows[w];
        x->first_step = w;
        x->steps = 1;
        MOE_TRY_GOTO(moe_alloc((void **)&x->load, sizeof(double) * nload, "trace load"), st, fail);
        if (with_transitions && layers > 1)
            MOE_TRY_GOTO(moe_alloc((void **)&x->transitions, sizeof(double) * ntrans, "trace transitions"), st,
                         fail);
    }
    return MOE_OK;
fail:
    moe_trace_free(t);
    return st;
}

void moe_trace_free(moe_trace *t)
{
    if (!t)
        return;
    for (int w = 0; t->windows && w < t->nwindows; w++) {
        moe_free(t->windows[w].load);
        moe_free(t->windows[w].transitions);
    }
    moe_free(t->windows);
    memset(t, 0, sizeof *t);
}

/* ------------------------------------------------------------------------- */
/* summaries                                                                  */

moe_status moe_trace_expert_load(const moe_trace *t, double **out)
{
    *out = NULL;
    MOE_TRY(check_shape(MOE_ERR_USAGE, "moe_trace_expert_load", t->layers, t->experts, t->topk, t->sources,
                        t->nwindows));
    const size_t L = (size_t)t->layers, E = (size_t)t->experts, S = (size_t)t->sources;
    double *v = NULL;
    MOE_TRY(moe_alloc((void **)&v, sizeof *v * L * E, "trace expert load"));
    /* Fixed summation order (window, source): the same trace always gives the same bits. */
    for (int w = 0; w < t->nwindows; w++)
        for (size_t l = 0; l < L; l++)
            for (size_t s = 0; s < S; s++)
                for (size_t e = 0; e < E; e++)
                    v[l * E + e] += t->windows[w].load[(l * S + s) * E + e];
    *out = v;
    return MOE_OK;
}

/* Window w's load of layer l summed over sources, normalised to sum 1 (zero stays zero). */
static void layer_share(const moe_trace *t, int w, size_t l, double *share)
{
    const size_t E = (size_t)t->experts, S = (size_t)t->sources;
    double total = 0;
    for (size_t e = 0; e < E; e++) {
        share[e] = 0;
        for (size_t s = 0; s < S; s++)
            share[e] += t->windows[w].load[(l * S + s) * E + e];
        total += share[e];
    }
    for (size_t e = 0; e < E && total > 0; e++)
        share[e] /= total;
}

moe_status moe_trace_drift(const moe_trace *t, double **out)
{
    *out = NULL;
    MOE_TRY(check_shape(MOE_ERR_USAGE, "moe_trace_drift", t->layers, t->experts, t->topk, t->sources, t->nwindows));
    const size_t E = (size_t)t->experts;
    double *d = NULL, *a = NULL, *b = NULL;
    moe_status st = MOE_OK;
    MOE_TRY(moe_alloc((void **)&d, sizeof *d * (size_t)(t->nwindows - 1), "trace drift"));
    MOE_TRY_GOTO(moe_alloc((void **)&a, sizeof *a * E, "trace drift"), st, done);
    MOE_TRY_GOTO(moe_alloc((void **)&b, sizeof *b * E, "trace drift"), st, done);
    for (int w = 0; w + 1 < t->nwindows; w++) {
        double sum = 0;
        for (size_t l = 0; l < (size_t)t->layers; l++) {
            layer_share(t, w, l, a);
            layer_share(t, w + 1, l, b);
            for (size_t e = 0; e < E; e++)
                sum += fabs(a[e] - b[e]);
        }
        d[w] = sum / t->layers;
    }
done:
    moe_free(a);
    moe_free(b);
    if (st != MOE_OK) {
        moe_free(d);
        return st;
    }
    *out = d;
    return MOE_OK;
}

/* ------------------------------------------------------------------------- */
/* writing                                                                    */

moe_status moe_trace_write(const char *path, const moe_trace *t)
{
    char what[4200];
    snprintf(what, sizeof what, "writing trace %s", path);
    MOE_TRY(moe_trace_validate(t, what));
    size_t nload, ntrans;
    MOE_TRY(window_sizes(t->layers, t->experts, t->sources, &nload, &ntrans));

    Moe__TraceWindow *wins = NULL, **wptr = NULL;
    uint8_t *buf = NULL;
    moe_status st = MOE_OK;
    MOE_TRY_GOTO(moe_alloc((void **)&wins, sizeof *wins * (size_t)t->nwindows, "trace windows"), st, done);
    MOE_TRY_GOTO(moe_alloc((void **)&wptr, sizeof *wptr * (size_t)t->nwindows, "trace windows"), st, done);
    for (int w = 0; w < t->nwindows; w++) {
        const moe_trace_window *x = &t->windows[w];
        moe__trace_window__init(&wins[w]);
        wins[w].first_step = x->first_step;
        wins[w].steps = x->steps;
        wins[w].n_load = nload;
        wins[w].load = x->load;
        wins[w].n_transitions = x->transitions ? ntrans : 0;
        wins[w].transitions = x->transitions;
        wptr[w] = &wins[w];
    }
    Moe__RoutingTrace m;
    moe__routing_trace__init(&m);
    m.format_version = TRACE_FORMAT_VERSION;
    m.layers = (uint32_t)t->layers;
    m.experts = (uint32_t)t->experts;
    m.topk = (uint32_t)t->topk;
    m.sources = (uint32_t)t->sources;
    m.n_windows = (size_t)t->nwindows;
    m.windows = wptr;
    m.created_by = "moe.c trace v1";
    m.trace_xxh64 = 0; /* proto3: a zero field is not written, so the trailer is the only copy */

    size_t n = moe__routing_trace__get_packed_size(&m);
    MOE_TRY_GOTO(moe_alloc((void **)&buf, n + TRAILER_BYTES, "trace file"), st, done);
    if (moe__routing_trace__pack(&m, buf) != n) {
        st = moe_fail(MOE_ERR_INTERNAL, "%s: protobuf-c packed a different size than it announced", path);
        goto done;
    }
    uint64_t h = XXH64(buf, n, 0);
    buf[n] = TRAILER_TAG;
    for (int i = 0; i < 8; i++)
        buf[n + 1 + (size_t)i] = (uint8_t)(h >> (8 * i));

    MOE_TRY_GOTO(moe_write_file_atomic(path, buf, n + TRAILER_BYTES), st, done);
done:
    moe_free(buf);
    moe_free(wptr);
    moe_free(wins);
    return st;
}

/* ------------------------------------------------------------------------- */
/* reading                                                                    */

static moe_status read_bytes(const char *path, uint8_t **out, size_t *len)
{
    *out = NULL;
    FILE *f = fopen(path, "rbe");
    if (!f)
        return moe_fail(errno == ENOENT || errno == ENOTDIR ? MOE_ERR_INPUT : MOE_ERR_IO,
                        "cannot open routing trace %s: %s", path, strerror(errno));
    struct stat sb;
    moe_status st = MOE_OK;
    if (fstat(fileno(f), &sb) != 0) {
        st = moe_fail(MOE_ERR_IO, "stat %s: %s", path, strerror(errno));
        goto done;
    }
    if (!S_ISREG(sb.st_mode) || (uint64_t)sb.st_size > MAX_TRACE_BYTES) {
        st = moe_fail(MOE_ERR_INPUT, "%s: not a routing trace (%s, %lld bytes)", path,
                      S_ISREG(sb.st_mode) ? "too large" : "not a regular file", (long long)sb.st_size);
        goto done;
    }
    *len = (size_t)sb.st_size;
    MOE_TRY_GOTO(moe_alloc((void **)out, *len, "trace file"), st, done);
    if (*len > 0 && fread(*out, 1, *len, f) != *len) {
        st = ferror(f) ? moe_fail(MOE_ERR_IO, "read %s: %s", path, strerror(errno))
                       : moe_fail(MOE_ERR_INPUT, "%s: unexpected end of file (truncated while being read?)", path);
        goto done;
    }
done:
    fclose(f);
    if (st != MOE_OK) {
        moe_free(*out);
        *out = NULL;
    }
    return st;
}

/* Declared shape against the arrays actually present, before any copy. */
static moe_status check_message(const char *path, const Moe__RoutingTrace *m)
{
    if (m->format_version != TRACE_FORMAT_VERSION)
        return moe_fail(MOE_ERR_INPUT, "%s: format_version %u (this build reads %d)", path, m->format_version,
                        TRACE_FORMAT_VERSION);
    MOE_TRY(check_shape(MOE_ERR_INPUT, path, m->layers, m->experts, m->topk, m->sources, (long long)m->n_windows));
    size_t nload, ntrans;
    MOE_TRY(window_sizes((int)m->layers, (int)m->experts, (int)m->sources, &nload, &ntrans));
    for (size_t w = 0; w < m->n_windows; w++) {
        const Moe__TraceWindow *x = m->windows[w];
        if (x->n_load != nload)
            return moe_fail(MOE_ERR_INPUT, "%s: window %zu: load has %zu counts, expected layers x sources x experts "
                            "= %u x %u x %u = %zu", path, w, x->n_load, m->layers, m->sources, m->experts, nload);
        if (x->n_transitions != 0 && x->n_transitions != ntrans)
            return moe_fail(MOE_ERR_INPUT, "%s: window %zu: transitions has %zu counts, expected 0 or "
                            "(layers-1) x experts x experts = %u x %u x %u = %zu", path, w, x->n_transitions,
                            m->layers - 1, m->experts, m->experts, ntrans);
    }
    return MOE_OK;
}

static moe_status copy_out(const Moe__RoutingTrace *m, moe_trace *t)
{
    int any_trans = 0;
    for (size_t w = 0; w < m->n_windows; w++)
        any_trans |= m->windows[w]->n_transitions > 0;
    MOE_TRY(moe_trace_alloc(t, (int)m->layers, (int)m->experts, (int)m->topk, (int)m->sources, (int)m->n_windows,
                            any_trans));
    for (size_t w = 0; w < m->n_windows; w++) {
        const Moe__TraceWindow *x = m->windows[w];
        moe_trace_window *y = &t->windows[w];
        y->first_step = x->first_step;
        y->steps = x->steps;
        memcpy(y->load, x->load, sizeof(double) * x->n_load);
        if (x->n_transitions)
            memcpy(y->transitions, x->transitions, sizeof(double) * x->n_transitions);
        else if (y->transitions) { /* this window recorded none: keep the "not recorded" meaning */
            moe_free(y->transitions);
            y->transitions = NULL;
        }
    }
    return MOE_OK;
}

moe_status moe_trace_read(const char *path, moe_trace *t)
{
    memset(t, 0, sizeof *t);
    uint8_t *buf = NULL;
    size_t n = 0;
    MOE_TRY(read_bytes(path, &buf, &n));
    moe_status st = MOE_OK;
    Moe__RoutingTrace *m = NULL;
    if (n < TRAILER_BYTES || buf[n - TRAILER_BYTES] != TRAILER_TAG) {
        st = moe_fail(MOE_ERR_INPUT, "%s: truncated or not a routing trace (%zu bytes, no checksum trailer)", path,
                      n);
        goto done;
    }
    m = moe__routing_trace__unpack(NULL, n, buf);
    if (!m) {
        st = moe_fail(MOE_ERR_INPUT, "%s: truncated or not a routing trace (protobuf parse failed)", path);
        goto done;
    }
    uint64_t got = XXH64(buf, n - TRAILER_BYTES, 0);
    if (m->trace_xxh64 != got) {
        st = moe_fail(MOE_ERR_INPUT, "%s: checksum mismatch (stored %016" PRIx64 ", computed %016" PRIx64
                      "): truncated or corrupt", path, m->trace_xxh64, got);
        goto done;
    }
    MOE_TRY_GOTO(check_message(path, m), st, done);
    MOE_TRY_GOTO(copy_out(m, t), st, done);
    MOE_TRY_GOTO(moe_trace_validate(t, path), st, done);
done:
    if (m)
        moe__routing_trace__free_unpacked(m, NULL);
    moe_free(buf);
    if (st != MOE_OK)
        moe_trace_free(t);
    return st;
}
