/*
** plan: the PlacementPlan file (proto/placement_plan.proto) and its checks.
** Writes are atomic (tmp file in the same directory, fsync, rename, fsync dir)
** so a reader never sees half a plan.
*/
#include "planner/plan.h"
#include "runtime/base/fs.h"
#include "planner/placement.h"

#include <errno.h>
#include <fcntl.h>
#include <libgen.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "proto/placement_plan.pb-c.h"
#include "runtime/base/mem.h"

#define PLAN_FORMAT_VERSION 1
#define PLAN_MAX_BYTES (1u << 30)
#define SHARE_TOL 1e-6

moe_status moe_plan_alloc(moe_plan *p, int layers, int experts, int ep, int max_copies)
{
    memset(p, 0, sizeof *p);
    if (layers < 1 || experts < 1 || ep < 1 || max_copies < 1)
        return moe_fail(MOE_ERR_USAGE, "plan shape must be positive: layers %d, experts %d, ep %d, max copies %d",
                        layers, experts, ep, max_copies);
    size_t n, nc;
    MOE_TRY(moe_mul_size((size_t)layers, (size_t)experts, &n));
    MOE_TRY(moe_mul_size(n, (size_t)max_copies, &nc));
    MOE_TRY(moe_alloc((void **)&p->ncopies, n * sizeof(int), "plan copy counts"));
    moe_status st = moe_alloc((void **)&p->copies, nc * sizeof(moe_plan_copy), "plan copies");
    if (st != MOE_OK) {
        moe_free(p->ncopies);
        p->ncopies = NULL;
        moe_trace_frame(__FILE__, __LINE__);
        return st;
    }
    p->layers = layers;
    p->experts = experts;
    p->ep = ep;
    p->max_copies = max_copies;
    p->ranks_per_node = ep;
    p->slots_per_rank = (experts + ep - 1) / ep;
    return MOE_OK;
}

void moe_plan_free(moe_plan *p)
{
    if (!p)
        return;
    moe_free(p->ncopies);
    moe_free(p->copies);
    memset(p, 0, sizeof *p);
}

// ----------------------------------------------------------------------------
// checks

/* `what` names the plan in messages: its file, or "plan" for one in memory. */
static moe_status validate_named(const moe_plan *p, const char *what)
{
    if (p->layers < 1 || p->experts < 1 || p->ep < 1 || p->max_copies < 1 || !p->ncopies || !p->copies)
        return moe_fail(MOE_ERR_INPUT, "%s: empty or unallocated plan (layers %d, experts %d, ep %d)", what,
                        p->layers, p->experts, p->ep);
    if (p->slots_per_rank < 1 || p->ranks_per_node < 1)
        return moe_fail(MOE_ERR_INPUT, "%s: slots per rank (%d) and ranks per node (%d) must be positive", what,
                        p->slots_per_rank, p->ranks_per_node);
    if ((int64_t)p->slots_per_rank * p->ep < p->experts)
        return moe_fail(MOE_ERR_INPUT, "%s: %d ranks x %d slots cannot hold %d experts", what, p->ep,
                        p->slots_per_rank, p->experts);
    int *used = calloc((size_t)p->ep, sizeof(int));
    if (!used)
        return moe_fail(MOE_ERR_NOMEM, "%s: out of memory checking the plan", what);
    moe_status st = MOE_OK;
    for (int l = 0; l < p->layers && st == MOE_OK; l++) {
        memset(used, 0, (size_t)p->ep * sizeof(int));
        for (int e = 0; e < p->experts && st == MOE_OK; e++) {
            int n = p->ncopies[(size_t)l * p->experts + e];
            const moe_plan_copy *c = moe_plan_copies(p, l, e);
            if (n < 1 || n > p->max_copies) {
                st = moe_fail(MOE_ERR_INPUT, "%s: layer %d expert %d has %d copies (expected 1..%d)", what, l, e, n,
                              p->max_copies);
                break;
            }
            double sum = 0;
            for (int k = 0; k < n && st == MOE_OK; k++) {
                if (c[k].rank < 0 || c[k].rank >= p->ep)
                    st = moe_fail(MOE_ERR_INPUT, "%s: layer %d expert %d copy %d is on rank %d, outside [0, %d)", what,
                                  l, e, k, c[k].rank, p->ep);
                else if (!(c[k].share > 0 && c[k].share <= 1 + SHARE_TOL))
                    st = moe_fail(MOE_ERR_INPUT, "%s: layer %d expert %d copy %d has share %g, outside (0, 1]", what,
                                  l, e, k, c[k].share);
                for (int j = 0; j < k && st == MOE_OK; j++)
                    if (c[j].rank == c[k].rank)
                        st = moe_fail(MOE_ERR_INPUT, "%s: layer %d expert %d has two copies on rank %d", what, l, e,
                                      c[k].rank);
                if (st == MOE_OK && ++used[c[k].rank] > p->slots_per_rank)
                    st = moe_fail(MOE_ERR_INPUT, "%s: layer %d rank %d holds more than %d expert copies", what, l,
                                  c[k].rank, p->slots_per_rank);
                sum += c[k].share;
            }
            if (st == MOE_OK && fabs(sum - 1) > SHARE_TOL)
                st = moe_fail(MOE_ERR_INPUT, "%s: layer %d expert %d shares sum to %.9g, not 1", what, l, e, sum);
        }
    }
    free(used);
    return st;
}

moe_status moe_plan_validate(const moe_plan *p) { return validate_named(p, "plan"); }

moe_status moe_plan_check_named(const moe_plan *p, const char *name, int layers, int experts, int ep)
{
    MOE_TRY(validate_named(p, name));
    if (ep > 0 && p->ep != ep)
        return moe_fail(MOE_ERR_INPUT, "%s: plan was made for EP size %d, this run has EP size %d", name, p->ep, ep);
    if (layers > 0 && p->layers != layers)
        return moe_fail(MOE_ERR_INPUT, "%s: plan has %d MoE layers, expected %d", name, p->layers, layers);
    if (experts > 0 && p->experts != experts)
        return moe_fail(MOE_ERR_INPUT, "%s: plan has %d experts per layer, expected %d", name, p->experts, experts);
    return MOE_OK;
}

moe_status moe_plan_check(const moe_plan *p, int layers, int experts, int ep)
{
    return moe_plan_check_named(p, "plan", layers, experts, ep);
}

// ----------------------------------------------------------------------------
// write

static moe_status pack_plan(const moe_plan *p, uint8_t **out, size_t *len)
{
    size_t ne = (size_t)p->layers * p->experts;
    Moe__PlacementPlan m = MOE__PLACEMENT_PLAN__INIT;
    Moe__PlacementLayer *ls = calloc((size_t)p->layers, sizeof *ls);
    Moe__PlacementLayer **lp = calloc((size_t)p->layers, sizeof *lp);
    Moe__PlacementExpert *es = calloc(ne, sizeof *es);
    Moe__PlacementExpert **ep = calloc(ne, sizeof *ep);
    size_t ncop = 0;
    for (size_t i = 0; i < ne; i++)
        ncop += (size_t)p->ncopies[i];
    Moe__PlacementCopy *cs = calloc(ncop ? ncop : 1, sizeof *cs);
    Moe__PlacementCopy **cp = calloc(ncop ? ncop : 1, sizeof *cp);
    moe_status st = MOE_OK;
    if (!ls || !lp || !es || !ep || !cs || !cp) {
        st = moe_fail(MOE_ERR_NOMEM, "out of memory encoding a %d x %d plan", p->layers, p->experts);
        goto done;
    }
    m.format_version = PLAN_FORMAT_VERSION;
    m.ep = (uint32_t)p->ep;
    m.ranks_per_node = (uint32_t)p->ranks_per_node;
    m.slots_per_rank = (uint32_t)p->slots_per_rank;
    m.layers = (uint32_t)p->layers;
    m.experts = (uint32_t)p->experts;
    m.method = (char *)p->method;
    m.objective = p->objective;
    m.lower_bound = p->lower_bound;
    m.gap = p->gap;
    m.solve_s = p->solve_s;
    m.n_layer = (size_t)p->layers;
    m.layer = lp;
    size_t ci = 0;
    for (int l = 0; l < p->layers; l++) {
        moe__placement_layer__init(&ls[l]);
        lp[l] = &ls[l];
        ls[l].n_experts = (size_t)p->experts;
        ls[l].experts = ep + (size_t)l * p->experts;
        for (int e = 0; e < p->experts; e++) {
            size_t i = (size_t)l * p->experts + e;
            moe__placement_expert__init(&es[i]);
            ep[i] = &es[i];
            es[i].n_copies = (size_t)p->ncopies[i];
            es[i].copies = cp + ci;
            const moe_plan_copy *c = moe_plan_copies(p, l, e);
            for (int k = 0; k < p->ncopies[i]; k++, ci++) {
                moe__placement_copy__init(&cs[ci]);
                cp[ci] = &cs[ci];
                cs[ci].rank = (uint32_t)c[k].rank;
                cs[ci].share = c[k].share;
            }
        }
    }
    *len = moe__placement_plan__get_packed_size(&m);
    *out = malloc(*len ? *len : 1);
    if (!*out)
        st = moe_fail(MOE_ERR_NOMEM, "out of memory encoding a plan of %zu bytes", *len);
    else
        moe__placement_plan__pack(&m, *out);
done:
    free(ls);
    free(lp);
    free(es);
    free(ep);
    free(cs);
    free(cp);
    return st;
}

moe_status moe_plan_write(const char *path, const moe_plan *p)
{
    MOE_TRY(moe_plan_validate(p));
    uint8_t *buf = NULL;
    size_t len = 0;
    MOE_TRY(pack_plan(p, &buf, &len));
    moe_status st = moe_write_file_atomic(path, buf, len);
    free(buf);
    if (st != MOE_OK)
        moe_trace_frame(__FILE__, __LINE__);
    return st;
}

// ----------------------------------------------------------------------------
// read

static moe_status slurp(const char *path, uint8_t **out, size_t *len)
{
    FILE *f = fopen(path, "rb");
    if (!f)
        return moe_fail(errno == ENOENT ? MOE_ERR_INPUT : MOE_ERR_IO, "plan %s: %s", path, strerror(errno));
    struct stat sb;
    if (fstat(fileno(f), &sb) != 0 || !S_ISREG(sb.st_mode)) {
        fclose(f);
        return moe_fail(MOE_ERR_INPUT, "plan %s: not a regular file", path);
    }
    if ((uint64_t)sb.st_size > PLAN_MAX_BYTES) {
        fclose(f);
        return moe_fail(MOE_ERR_INPUT, "plan %s: %lld bytes is too large for a plan", path, (long long)sb.st_size);
    }
    *len = (size_t)sb.st_size;
    *out = malloc(*len ? *len : 1);
    if (!*out) {
        fclose(f);
        return moe_fail(MOE_ERR_NOMEM, "plan %s: out of memory reading %zu bytes", path, *len);
    }
    size_t got = fread(*out, 1, *len, f);
    int bad = ferror(f);
    fclose(f);
    if (got != *len || bad) {
        free(*out);
        *out = NULL;
        return moe_fail(MOE_ERR_IO, "plan %s: read failed", path);
    }
    return MOE_OK;
}

static moe_status fill_from_message(const char *path, const Moe__PlacementPlan *m, moe_plan *p)
{
    if (m->format_version != PLAN_FORMAT_VERSION)
        return moe_fail(MOE_ERR_INPUT, "plan %s: format version %u, this build reads %d", path, m->format_version,
                        PLAN_FORMAT_VERSION);
    if (m->layers < 1 || m->experts < 1 || m->ep < 1 || m->layers > (1u << 20) || m->experts > (1u << 20) ||
        m->ep > (1u << 24))
        return moe_fail(MOE_ERR_INPUT, "plan %s: bad shape (layers %u, experts %u, ep %u)", path, m->layers,
                        m->experts, m->ep);
    if (m->n_layer != m->layers)
        return moe_fail(MOE_ERR_INPUT, "plan %s: header says %u layers but the file holds %zu (truncated?)", path,
                        m->layers, m->n_layer);
    int maxc = 1;
    for (size_t l = 0; l < m->n_layer; l++) {
        if (m->layer[l]->n_experts != m->experts)
            return moe_fail(MOE_ERR_INPUT, "plan %s: layer %zu holds %zu experts, header says %u", path, l,
                            m->layer[l]->n_experts, m->experts);
        for (size_t e = 0; e < m->experts; e++) {
            size_t n = m->layer[l]->experts[e]->n_copies;
            if (n < 1 || n > m->ep)
                return moe_fail(MOE_ERR_INPUT, "plan %s: layer %zu expert %zu has %zu copies (expected 1..%u)",
                                path, l, e, n, m->ep);
            if ((int)n > maxc)
                maxc = (int)n;
        }
    }
    MOE_TRY(moe_plan_alloc(p, (int)m->layers, (int)m->experts, (int)m->ep, maxc));
    p->ranks_per_node = m->ranks_per_node > (1u << 24) ? -1 : (int)m->ranks_per_node;
    p->slots_per_rank = m->slots_per_rank > (1u << 24) ? -1 : (int)m->slots_per_rank;
    snprintf(p->method, sizeof p->method, "%s", m->method ? m->method : "");
    p->objective = m->objective;
    p->lower_bound = m->lower_bound;
    p->gap = m->gap;
    p->solve_s = m->solve_s;
    for (int l = 0; l < p->layers; l++)
        for (int e = 0; e < p->experts; e++) {
            const Moe__PlacementExpert *x = m->layer[l]->experts[e];
            moe_plan_copy *c = moe_plan_copies(p, l, e);
            p->ncopies[(size_t)l * p->experts + e] = (int)x->n_copies;
            for (size_t k = 0; k < x->n_copies; k++) {
                c[k].rank = x->copies[k]->rank > (1u << 24) ? -1 : (int)x->copies[k]->rank;
                c[k].share = x->copies[k]->share;
            }
        }
    return MOE_OK;
}

moe_status moe_plan_read(const char *path, moe_plan *p)
{
    memset(p, 0, sizeof *p);
    uint8_t *buf = NULL;
    size_t len = 0;
    MOE_TRY(slurp(path, &buf, &len));
    Moe__PlacementPlan *m = moe__placement_plan__unpack(NULL, len, buf);
    free(buf);
    if (!m)
        return moe_fail(MOE_ERR_INPUT, "plan %s: not a PlacementPlan (truncated or corrupt, %zu bytes)", path, len);
    moe_status st = fill_from_message(path, m, p);
    moe__placement_plan__free_unpacked(m, NULL);
    if (st == MOE_OK) {
        char what[4200];
        snprintf(what, sizeof what, "plan %s", path);
        st = validate_named(p, what);
    }
    if (st != MOE_OK) {
        moe_plan_free(p);
        moe_trace_frame(__FILE__, __LINE__);
    }
    return st;
}
