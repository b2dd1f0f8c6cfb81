#include "parallel/distopt.h"

#include <math.h>
#include <string.h>

#include "layers/adamw.h"
#include "runtime/base/mem.h"

#define SHARD_ALIGN 16 /* floats: shard boundaries on 64-byte lines */

typedef struct {
    size_t flat;   /* offset in the flat buffers */
    size_t packed; /* offset in the kind's packed space */
    size_t numel;
    int decay;
    int in_norm;
} segment;

/* One kind of tensor and its shard (see the header). */
typedef struct {
    moe_comm *group; /* NULL: not sharded */
    int size, rank;
    segment *seg;
    int nseg;
    size_t total;  /* P: packed elements */
    size_t shard;  /* S: size * S >= P */
    size_t chunk;  /* c: elements per rank per collective */
    float *g, *m, *v; /* [S] this rank's shard */
} kind;

struct moe_distopt {
    kind k[2];
    moe_comm *ep;
    size_t flat_numel;
    float *stage;
    size_t stage_len;
};

static moe_comm *real_group(moe_comm *c) { return c && moe_comm_size(c) > 1 ? c : NULL; }

/* First segment that ends after packed index a (segments are in packed order). */
static int seg_at(const kind *k, size_t a)
{
    int lo = 0, hi = k->nseg;
    while (lo < hi) {
        int mid = (lo + hi) / 2;
        if (k->seg[mid].packed + k->seg[mid].numel <= a)
            lo = mid + 1;
        else
            hi = mid;
    }
    return lo;
}

/* dst[0 .. b-a) = packed range [a, b) read from a flat buffer; zero past P. */
static void pack_range(const kind *k, const float *flat, size_t a, size_t b, float *dst)
{
    for (int i = seg_at(k, a); i < k->nseg && a < b; i++) {
        const segment *s = &k->seg[i];
        size_t end = s->packed + s->numel < b ? s->packed + s->numel : b;
        memcpy(dst, flat + s->flat + (a - s->packed), (end - a) * sizeof(float));
        dst += end - a;
        a = end;
    }
    if (a < b)
        memset(dst, 0, (b - a) * sizeof(float));
}

/* packed range [a, b) written into a flat buffer from src[0 .. b-a); padding dropped. */
static void unpack_range(const kind *k, const float *src, size_t a, size_t b, float *flat)
{
    for (int i = seg_at(k, a); i < k->nseg && a < b; i++) {
        const segment *s = &k->seg[i];
        size_t end = s->packed + s->numel < b ? s->packed + s->numel : b;
        memcpy(flat + s->flat + (a - s->packed), src, (end - a) * sizeof(float));
        src += end - a;
        a = end;
    }
}

static moe_status kind_init(kind *k, const moe_distopt_tensor *t, int count, int is_expert, moe_comm *group,
                            size_t stage_floats)
{
    k->group = real_group(group);
    k->size = k->group ? moe_comm_size(k->group) : 1;
    k->rank = k->group ? moe_comm_rank(k->group) : 0;
    for (int i = 0; i < count; i++)
        k->nseg += (t[i].is_expert != 0) == is_expert;
    MOE_TRY(moe_alloc((void **)&k->seg, sizeof *k->seg * (size_t)k->nseg, "distributed optimizer segments"));
    int n = 0;
    for (int i = 0; i < count; i++)
        if ((t[i].is_expert != 0) == is_expert) {
            k->seg[n++] = (segment){t[i].offset, k->total, t[i].numel, t[i].decay, !t[i].no_norm};
            k->total += t[i].numel;
        }
    size_t per = (k->total + (size_t)k->size - 1) / (size_t)k->size;
    k->shard = (per + SHARD_ALIGN - 1) / SHARD_ALIGN * SHARD_ALIGN;
    size_t c = stage_floats / (size_t)k->size;
    k->chunk = c < 1 ? 1 : c > k->shard ? k->shard : c;
    MOE_TRY(moe_alloc((void **)&k->g, k->shard * sizeof(float), "distributed optimizer gradient shard"));
    MOE_TRY(moe_alloc((void **)&k->m, k->shard * sizeof(float), "distributed optimizer first moments"));
    MOE_TRY(moe_alloc((void **)&k->v, k->shard * sizeof(float), "distributed optimizer second moments"));
    return MOE_OK;
}

static void kind_free(kind *k)
{
    moe_free(k->seg);
    moe_free(k->g);
    moe_free(k->m);
    moe_free(k->v);
}

moe_status moe_distopt_create(moe_distopt **out, const moe_distopt_tensor *tensors, int count,
                              size_t flat_numel, moe_comm *dp_cp, moe_comm *edp, moe_comm *ep,
                              size_t stage_floats)
{
    *out = NULL;
    for (int i = 0; i < count; i++)
        if (tensors[i].offset > flat_numel || tensors[i].numel > flat_numel - tensors[i].offset)
            return moe_fail(MOE_ERR_INTERNAL, "distributed optimizer: tensor %d [%zu, +%zu) lies outside the %zu-float buffer",
                            i, tensors[i].offset, tensors[i].numel, flat_numel);
    moe_distopt *d = NULL;
    moe_status st = MOE_OK;
    MOE_TRY(moe_alloc((void **)&d, sizeof *d, "distributed optimizer"));
    d->ep = real_group(ep);
    d->flat_numel = flat_numel;
    if (stage_floats == 0)
        stage_floats = MOE_DISTOPT_STAGE_DEFAULT;
    MOE_TRY_GOTO(kind_init(&d->k[0], tensors, count, 0, dp_cp, stage_floats), st, fail);
    MOE_TRY_GOTO(kind_init(&d->k[1], tensors, count, 1, edp, stage_floats), st, fail);
    for (int i = 0; i < 2; i++)
        if (d->k[i].group && d->k[i].size * d->k[i].chunk > d->stage_len)
            d->stage_len = (size_t)d->k[i].size * d->k[i].chunk;
    MOE_TRY_GOTO(moe_alloc((void **)&d->stage, d->stage_len * sizeof(float), "distributed optimizer staging"), st, fail);
    *out = d;
    return MOE_OK;
fail:
    moe_distopt_free(d);
    return st;
}

void moe_distopt_free(moe_distopt *d)
{
    if (!d)
        return;
    kind_free(&d->k[0]);
    kind_free(&d->k[1]);
    moe_free(d->stage);
    moe_free(d);
}

/* shard = this rank's block of the packed sum over the group, c elements at a time:
** block j of chunk q holds packed [j*S + q*c, ...) from the flat buffer. */
static moe_status reduce_scatter_kind(moe_distopt *d, kind *k, const float *flat)
{
    if (k->total == 0)
        return MOE_OK;
    size_t S = k->shard;
    if (!k->group) {
        pack_range(k, flat, 0, S, k->g);
        return MOE_OK;
    }
    for (size_t off = 0; off < S; off += k->chunk) {
        size_t cc = S - off < k->chunk ? S - off : k->chunk;
        for (int j = 0; j < k->size; j++)
            pack_range(k, flat, (size_t)j * S + off, (size_t)j * S + off + cc, d->stage + (size_t)j * cc);
        MOE_TRY(moe_reduce_scatter(k->group, d->stage, k->g + off, cc, MOE_DT_F32, MOE_OP_SUM));
    }
    return MOE_OK;
}

/* flat gets every rank's shard (each rank passes its own in `shard`). */
static moe_status allgather_kind(moe_distopt *d, kind *k, const float *shard, float *flat)
{
    if (k->total == 0)
        return MOE_OK;
    size_t S = k->shard;
    if (!k->group) {
        unpack_range(k, shard, 0, S, flat);
        return MOE_OK;
    }
    for (size_t off = 0; off < S; off += k->chunk) {
        size_t cc = S - off < k->chunk ? S - off : k->chunk;
        MOE_TRY(moe_allgather(k->group, shard + off, d->stage, cc, MOE_DT_F32));
        for (int j = 0; j < k->size; j++)
            unpack_range(k, d->stage + (size_t)j * cc, (size_t)j * S + off, (size_t)j * S + off + cc, flat);
    }
    return MOE_OK;
}

moe_status moe_distopt_reduce_grads(moe_distopt *d, const float *grads)
{
    for (int i = 0; i < 2; i++)
        MOE_TRY(reduce_scatter_kind(d, &d->k[i], grads));
    return MOE_OK;
}

/* Sum of squares of the gradient shard over the segments that count. */
static double shard_squares(const kind *k)
{
    if (!k->total)
        return 0.0;
    size_t lo = (size_t)k->rank * k->shard, hi = lo + k->shard;
    double sq = 0;
    for (int i = seg_at(k, lo); i < k->nseg && k->seg[i].packed < hi; i++) {
        const segment *s = &k->seg[i];
        if (!s->in_norm)
            continue;
        size_t a = s->packed > lo ? s->packed : lo;
        size_t b = s->packed + s->numel < hi ? s->packed + s->numel : hi;
        sq += moe_sum_squares(k->g + (a - lo), b - a);
    }
    return sq;
}

void moe_distopt_grad_squares(const moe_distopt *d, double sq[2])
{
    for (int i = 0; i < 2; i++)
        sq[i] = shard_squares(&d->k[i]);
}

moe_status moe_distopt_grad_norm(moe_distopt *d, double *norm)
{
    double sq[2];
    moe_distopt_grad_squares(d, sq);
    if (d->k[0].group)
        MOE_TRY(moe_allreduce(d->k[0].group, &sq[0], 1, MOE_DT_F64, MOE_OP_SUM));
    if (d->k[1].group)
        MOE_TRY(moe_allreduce(d->k[1].group, &sq[1], 1, MOE_DT_F64, MOE_OP_SUM));
    if (d->ep) /* each ep rank holds different experts */
        MOE_TRY(moe_allreduce(d->ep, &sq[1], 1, MOE_DT_F64, MOE_OP_SUM));
    *norm = sqrt(sq[0] + sq[1]);
    return MOE_OK;
}

/* AdamW over the part of each tensor that falls in this rank's shard. */
static void update_shard(kind *k, float *params, const moe_distopt_hparams *h)
{
    size_t lo = (size_t)k->rank * k->shard, hi = lo + k->shard;
    for (int i = seg_at(k, lo); i < k->nseg && k->seg[i].packed < hi; i++) {
        const segment *s = &k->seg[i];
        size_t a = s->packed > lo ? s->packed : lo;
        size_t b = s->packed + s->numel < hi ? s->packed + s->numel : hi;
        size_t r = a - lo;
        moe_adamw_update(params + s->flat + (a - s->packed), k->g + r, k->m + r, k->v + r, b - a, h->lr,
                         h->beta1, h->beta2, h->eps, s->decay ? h->weight_decay : 0.0f, h->step, h->grad_scale);
    }
}

moe_status moe_distopt_step(moe_distopt *d, float *params, const moe_distopt_hparams *h)
{
    for (int i = 0; i < 2; i++) {
        kind *k = &d->k[i];
        if (k->total == 0)
            continue;
        update_shard(k, params, h);
        if (!k->group)
            continue; /* updated in place, nobody else needs it */
        /* the gradient shard is spent: it carries the updated params out */
        size_t lo = (size_t)k->rank * k->shard;
        pack_range(k, params, lo, lo + k->shard, k->g);
        MOE_TRY(allgather_kind(d, k, k->g, params));
    }
    return MOE_OK;
}

moe_status moe_distopt_gather_moments(moe_distopt *d, float *m, float *v)
{
    for (int i = 0; i < 2; i++) {
        MOE_TRY(allgather_kind(d, &d->k[i], d->k[i].m, m));
        MOE_TRY(allgather_kind(d, &d->k[i], d->k[i].v, v));
    }
    return MOE_OK;
}

void moe_distopt_load_moments(moe_distopt *d, const float *m, const float *v)
{
    for (int i = 0; i < 2; i++) {
        kind *k = &d->k[i];
        size_t lo = (size_t)k->rank * k->shard;
        pack_range(k, m, lo, lo + k->shard, k->m);
        pack_range(k, v, lo, lo + k->shard, k->v);
    }
}

size_t moe_distopt_state_floats(const moe_distopt *d) { return 2 * (d->k[0].shard + d->k[1].shard); }

size_t moe_distopt_full_state_floats(const moe_distopt *d) { return 2 * d->flat_numel; }

size_t moe_distopt_work_floats(const moe_distopt *d) { return d->k[0].shard + d->k[1].shard + d->stage_len; }
