/*
** With the distributed optimizer the moments are sharded: save all-gathers
** them into full-size flat buffers first (every rank, a collective) and the
** owners write their parts; load fills those buffers with this rank's rows
** and keeps its shard, so the checkpoint is the same either way and loads
** with the flag on or off. Those two buffers (2 x the parameter count) live
** only during the call.
**
** Agreement between ranks goes through verdict(): an all-gather of every
** rank's (code, message), so each rank learns the worst code and the message
** of the first rank that had it.
*/
#include "runtime/train_ckpt.h"

#include <errno.h>
#include <stdio.h>
#include <stdint.h>
#include <string.h>

#include "runtime/base/checkpoint.h"
#include "runtime/base/log.h"
#include "runtime/base/mem.h"

#define PREFIXES 3
#define NAME_MAX_LEN 96
#define TEXT_CAP 4096 /* a path or a message travelling between ranks */

/* ---- the ranks together --------------------------------------------------- */

static moe_comm *world_of(moe_trainer *tr)
{
    moe_comm *w = moe_trainer_parallel(tr)->world;
    return w && moe_comm_size(w) > 1 ? w : NULL;
}

static int rank_of(moe_comm *w) { return w ? moe_comm_rank(w) : 0; }
static int size_of(moe_comm *w) { return w ? moe_comm_size(w) : 1; }

/* Record layout: int32 code, then a NUL-terminated text. */
typedef struct {
    int32_t code;
    char text[TEXT_CAP];
} record;

/* Every rank's record; all[] (size_of(w)) receives them. */
static moe_status exchange(moe_comm *w, const record *mine, record *all)
{
    MOE_TRY(moe_allgather(w, mine, all, sizeof *mine, MOE_DT_U8));
    return MOE_OK;
}

/* The worst code of all ranks (-1: the exchange failed, see moe_errmsg);
** when it is nonzero, msg gets the message of the first rank that had it. */
static int verdict(moe_comm *w, int code, char *msg, size_t cap)
{
    if (!w)
        return code;
    record mine = {.code = code}, *all = NULL;
    snprintf(mine.text, sizeof mine.text, "%s", code ? msg : "");
    if (moe_alloc((void **)&all, sizeof *all * (size_t)size_of(w), "checkpoint verdict") != MOE_OK)
        return -1;
    if (exchange(w, &mine, all) != MOE_OK) {
        moe_free(all);
        return -1;
    }
    int worst = 0, who = 0;
    for (int r = 0; r < size_of(w); r++)
        if (all[r].code > worst) {
            worst = all[r].code;
            who = r;
        }
    if (worst != 0 && msg && cap > 0) {
        all[who].text[TEXT_CAP - 1] = '\0';
        if (who == rank_of(w))
            snprintf(msg, cap, "%s", all[who].text);
        else
            snprintf(msg, cap, "rank %d: %s", who, all[who].text);
    }
    moe_free(all);
    return worst;
}

static int agree_cb(void *ctx, int code, char *msg, size_t cap) { return verdict(ctx, code, msg, cap); }

/* Pipeline stages load different tensors: a tensor is asked for when any
** rank asks for it. */
static int any_cb(void *ctx, int32_t *flags, int n)
{
    return moe_allreduce(ctx, flags, (size_t)n, MOE_DT_I32, MOE_OP_MAX) == MOE_OK ? 0 : -1;
}

/* st on this rank, st' on every other: all fail when any does, with the
** failing rank's message. */
static moe_status all_ok(moe_comm *w, moe_status st)
{
    if (!w)
        return st;
    char msg[TEXT_CAP];
    snprintf(msg, sizeof msg, "%s", st != MOE_OK ? moe_errmsg() : "");
    int worst = verdict(w, st != MOE_OK ? (int)st : 0, msg, sizeof msg);
    if (worst < 0)
        return MOE_ERR_SYSTEM;
    if (worst == 0)
        return MOE_OK;
    if (st != MOE_OK)
        return st;
    return moe_fail((moe_status)worst, "checkpoint: %s", msg);
}

/* ---- the tensors ------------------------------------------------------------ */

typedef struct {
    moe_ckpt_part *p;
    char *names;
    int n;
    int saving; /* only the rows this rank writes (not extra expert copies) */
} part_list;

static void list_free(part_list *l)
{
    moe_free(l->p);
    moe_free(l->names);
    memset(l, 0, sizeof *l);
}

/* The expert map of expert tensor p's MoE layer (names "layers.L. ..."), or
** NULL when this rank holds every expert or runs without maps. */
static moe_status param_map(const moe_trainer_par *par, const moe_config *cfg, const moe_param_info *p,
                            const moe_expert_map **map)
{
    *map = NULL;
    if (!par->ep || moe_comm_size(par->ep) == 1 || !par->maps)
        return MOE_OK;
    int L = -1;
    if (sscanf(p->name, "layers.%d.", &L) != 1 || L < 0 || L >= cfg->num_layers || !cfg->moe_layer_is_moe[L])
        return moe_fail(MOE_ERR_INTERNAL, "checkpoint: expert tensor %s is not in a MoE layer", p->name);
    int li = 0;
    for (int k = 0; k < L; k++)
        li += cfg->moe_layer_is_moe[k] != 0;
    *map = &par->maps[li];
    return MOE_OK;
}

/* Are this rank's experts of map ids [first, first + E_local), one copy each? */
static int contiguous(const moe_expert_map *map)
{
    if (map->replicated)
        return 0;
    for (int l = 1; l < map->E_local; l++)
        if (map->local_experts[l] != map->local_experts[0] + l)
            return 0;
    return 1;
}

/* Parts a table entry takes: one, or one per local expert under a
** non-contiguous map. */
static moe_status parts_of(const moe_trainer_par *par, const moe_config *cfg, const moe_param_info *p, int *n)
{
    const moe_expert_map *map = NULL;
    *n = 1;
    if (p->is_expert && p->ndim > 0)
        MOE_TRY(param_map(par, cfg, p, &map));
    if (map && !contiguous(map))
        *n = map->E_local;
    return MOE_OK;
}

static moe_status add_part(part_list *l, const char *prefix, const moe_param_info *p, float *data, size_t bytes,
                           int64_t row_start, int64_t rows, int64_t global_rows)
{
    moe_ckpt_part *c = &l->p[l->n];
    char *name = l->names + (size_t)l->n * NAME_MAX_LEN;
    int k = snprintf(name, NAME_MAX_LEN, "%s%s", prefix, p->name);
    if (k < 0 || k >= NAME_MAX_LEN)
        return moe_fail(MOE_ERR_INTERNAL, "checkpoint: tensor name %s%s too long", prefix, p->name);
    c->name = name;
    c->ndim = p->ndim;
    memcpy(c->shape, p->shape, sizeof c->shape);
    if (p->ndim > 0)
        c->shape[0] = global_rows;
    c->data = data;
    c->bytes = bytes;
    c->row_start = row_start;
    c->rows = rows;
    l->n++;
    return MOE_OK;
}

/*
** Expert tensors are saved in the global layout [E, ...], expert-id order,
** whatever the placement: this rank's experts as one slice when they are
** contiguous ids, else one row per local expert at its global id. So a
** checkpoint loads under any placement.
*/
static moe_status add(part_list *l, const moe_trainer_par *par, const moe_config *cfg, const char *prefix,
                      const moe_param_info *p, float *data)
{
    int64_t rows = p->ndim ? p->shape[0] : 1;
    if (!p->is_expert || p->ndim == 0)
        return add_part(l, prefix, p, data, p->numel * sizeof(float), 0, rows, rows);
    const moe_expert_map *map = NULL;
    MOE_TRY(param_map(par, cfg, p, &map));
    int P = par->ep ? moe_comm_size(par->ep) : 1;
    if (P > 1 && !map) /* no map: contiguous by rank */
        return add_part(l, prefix, p, data, p->numel * sizeof(float), (int64_t)moe_comm_rank(par->ep) * rows,
                        rows, (int64_t)P * rows);
    if (!map)
        return add_part(l, prefix, p, data, p->numel * sizeof(float), 0, rows, rows);
    if (map->E_local != rows)
        return moe_fail(MOE_ERR_INTERNAL, "checkpoint: %s has %lld expert rows, the expert map %d per rank",
                        p->name, (long long)rows, map->E_local);
    if (contiguous(map))
        return add_part(l, prefix, p, data, p->numel * sizeof(float), map->local_experts[0], rows, map->E);
    size_t per = p->numel / (size_t)rows;
    int rows_here = l->saving ? map->n_canonical : map->E_local; /* every copy loads, the canonical one saves */
    for (int e = 0; e < rows_here; e++)
        MOE_TRY(add_part(l, prefix, p, data + (size_t)e * per, per * sizeof(float), map->local_experts[e], 1,
                         map->E));
    return MOE_OK;
}

/* AdamW moments in the flat parameter layout: the optimizer's own, or, with
** the distributed optimizer, full-size buffers (zero gaps) that the shards are
** gathered into before a save and taken from after a load. */
typedef struct {
    float *m, *v;
    int owned;
} moments;

static void moments_free(moments *mo)
{
    if (mo->owned) {
        moe_free(mo->m);
        moe_free(mo->v);
    }
    memset(mo, 0, sizeof *mo);
}

static moe_status moments_get(moe_trainer *tr, moments *mo)
{
    moe_adamw *o = moe_trainer_optimizer(tr);
    memset(mo, 0, sizeof *mo);
    if (!moe_trainer_distopt(tr)) {
        mo->m = o->m;
        mo->v = o->v;
        return MOE_OK;
    }
    mo->owned = 1;
    size_t bytes = moe_model_num_params(moe_trainer_model(tr)) * sizeof(float);
    MOE_TRY(moe_alloc((void **)&mo->m, bytes, "checkpoint AdamW first moments"));
    MOE_TRY(moe_alloc((void **)&mo->v, bytes, "checkpoint AdamW second moments"));
    return MOE_OK;
}

/*
** Tensor-parallel cuts: checkpoints hold the full tensors, so a cut tensor
** (and its moments) goes through a full-size staging copy: before a save the
** pieces are all-gathered over the cut's group (tp, or etp for experts) and
** assembled; after a load each rank takes its piece out. Staging holds the
** full values of the cut tensors for the duration of the call.
*/
typedef struct {
    float *buf;
    size_t *off; /* [PREFIXES * entries]: offset into buf, or SIZE_MAX when not cut */
} staging;

static void staging_free(staging *s)
{
    moe_free(s->buf);
    moe_free(s->off);
    memset(s, 0, sizeof *s);
}

static moe_comm *cut_group(const moe_trainer_par *par, const moe_param_info *p)
{
    moe_comm *g = p->is_expert ? par->etp : par->tp;
    return g && moe_comm_size(g) > 1 ? g : NULL;
}

static moe_status staging_init(moe_trainer *tr, staging *s)
{
    int nt;
    const moe_param_info *t = moe_model_params(moe_trainer_model(tr), &nt);
    memset(s, 0, sizeof *s);
    MOE_TRY(moe_alloc((void **)&s->off, sizeof *s->off * (size_t)PREFIXES * (size_t)nt, "checkpoint staging"));
    size_t total = 0;
    for (int p = 0; p < PREFIXES; p++)
        for (int i = 0; i < nt; i++) {
            s->off[p * nt + i] = SIZE_MAX;
            if (t[i].cut.split_dim >= 0) {
                s->off[p * nt + i] = total;
                total += moe_param_full_numel(&t[i]);
            }
        }
    if (total)
        MOE_TRY(moe_alloc((void **)&s->buf, total * sizeof(float), "checkpoint staging"));
    return MOE_OK;
}

/* Every cut tensor's pieces gathered into its full staging copy. Collective
** over the cut groups. */
static moe_status staging_gather(moe_trainer *tr, staging *s, float *const base[PREFIXES])
{
    const moe_trainer_par *par = moe_trainer_parallel(tr);
    int nt;
    const moe_param_info *t = moe_model_params(moe_trainer_model(tr), &nt);
    moe_status st = MOE_OK;
    float *pieces = NULL;
    size_t *counts = NULL, *displs = NULL;
    for (int p = 0; p < PREFIXES && st == MOE_OK; p++)
        for (int i = 0; i < nt && st == MOE_OK; i++) {
            if (s->off[p * nt + i] == SIZE_MAX)
                continue;
            float *full = s->buf + s->off[p * nt + i], *mine = base[p] + t[i].offset;
            moe_comm *g = cut_group(par, &t[i]);
            if (!g) {
                moe_param_cut_insert(&t[i], 0, mine, full);
                continue;
            }
            int n = moe_comm_size(g);
            st = moe_alloc((void **)&counts, sizeof *counts * (size_t)n, "checkpoint gather");
            if (st == MOE_OK)
                st = moe_alloc((void **)&displs, sizeof *displs * (size_t)n, "checkpoint gather");
            if (st == MOE_OK)
                st = moe_alloc((void **)&pieces, moe_param_full_numel(&t[i]) * sizeof(float), "checkpoint gather");
            size_t at = 0;
            for (int q = 0; st == MOE_OK && q < n; q++) {
                counts[q] = moe_param_piece_numel(&t[i], q);
                displs[q] = at;
                at += counts[q];
            }
            if (st == MOE_OK)
                st = moe_allgatherv(g, mine, t[i].numel, pieces, counts, displs, MOE_DT_F32);
            for (int q = 0; st == MOE_OK && q < n; q++)
                moe_param_cut_insert(&t[i], q, pieces + displs[q], full);
            moe_free(pieces);
            moe_free(counts);
            moe_free(displs);
            pieces = NULL;
            counts = displs = NULL;
        }
    return st;
}

/* Each rank's piece out of the loaded full copies. */
static void staging_scatter(moe_trainer *tr, const staging *s, float *const base[PREFIXES])
{
    int nt;
    const moe_param_info *t = moe_model_params(moe_trainer_model(tr), &nt);
    for (int p = 0; p < PREFIXES; p++)
        for (int i = 0; i < nt; i++)
            if (s->off[p * nt + i] != SIZE_MAX)
                moe_param_cut_extract(&t[i], t[i].cut.part, s->buf + s->off[p * nt + i], base[p] + t[i].offset);
}

/* Does this rank write the expert tensors' rows it holds? Of the ranks
** holding the same rows (its edp and etp groups) the first does. */
static int owns_experts(const moe_trainer_par *par)
{
    return (!par->edp || moe_comm_rank(par->edp) == 0) && (!par->etp || moe_comm_rank(par->etp) == 0);
}

/* Does this rank write its pipeline stage's non-expert tensors? The first
** of their data- and tensor-parallel copies does. */
static int owns_dense(const moe_trainer_par *par)
{
    return (!par->dp_cp || moe_comm_rank(par->dp_cp) == 0) && (!par->tp || moe_comm_rank(par->tp) == 0);
}

/* saving: only what this rank writes; loading: every tensor, this rank's rows
** (of the full staging copy for cut tensors). */
static moe_status build(moe_trainer *tr, const moments *mo, const staging *sg, int saving, part_list *l)
{
    moe_model *m = moe_trainer_model(tr);
    const moe_trainer_par *par = moe_trainer_parallel(tr);
    int nt;
    const moe_param_info *t = moe_model_params(m, &nt);
    size_t nstate;
    float *state = moe_model_state_data(m, &nstate);
    const moe_config *cfg = moe_model_config(m);
    int cap = 1;
    for (int i = 0; i < nt; i++) {
        int k;
        MOE_TRY(parts_of(par, cfg, &t[i], &k));
        cap += PREFIXES * k;
    }
    int mine_dense = !saving || owns_dense(par);
    int mine_expert = !saving || owns_experts(par);
    int mine_state = !saving || !par->world || moe_comm_rank(par->world) == 0;
    memset(l, 0, sizeof *l);
    l->saving = saving;
    MOE_TRY(moe_alloc((void **)&l->p, sizeof *l->p * (size_t)cap, "checkpoint tensor list"));
    MOE_TRY(moe_alloc((void **)&l->names, (size_t)cap * NAME_MAX_LEN, "checkpoint tensor names"));
    static const char *prefix[PREFIXES] = {"model.", "optim.m.", "optim.v."};
    float *base[PREFIXES] = {moe_model_param_data(m), mo->m, mo->v};
    for (int p = 0; p < PREFIXES; p++)
        for (int i = 0; i < nt; i++) {
            if (!(t[i].is_expert ? mine_expert : mine_dense) || (saving && t[i].pp_copy))
                continue;
            if (sg->off[p * nt + i] == SIZE_MAX) {
                MOE_TRY(add(l, par, cfg, prefix[p], &t[i], base[p] + t[i].offset));
                continue;
            }
            moe_param_info full = t[i]; /* the uncut tensor */
            memcpy(full.shape, full.cut.full_shape, sizeof full.shape);
            full.numel = moe_param_full_numel(&t[i]);
            MOE_TRY(add(l, par, cfg, prefix[p], &full, sg->buf + sg->off[p * nt + i]));
        }
    if (nstate > 0 && mine_state) {
        moe_param_info bias = {.name = "expert_bias", .ndim = 1, .shape = {(int64_t)nstate}, .numel = nstate};
        MOE_TRY(add(l, par, cfg, "state.", &bias, state));
    }
    return MOE_OK;
}

/* ---- save -------------------------------------------------------------------- */

/* Rank 0 makes the temporary step directory; every rank learns its path. */
static moe_status prepare(moe_comm *w, const char *root, long step, char *tmp, size_t cap)
{
    record mine = {0}, *all = NULL;
    if (rank_of(w) == 0) {
        moe_status st = moe_ckpt_prepare(root, step, mine.text, sizeof mine.text);
        mine.code = (int32_t)st;
        if (st != MOE_OK)
            snprintf(mine.text, sizeof mine.text, "%s", moe_errmsg());
    }
    const record *r0 = &mine;
    moe_status st = MOE_OK;
    if (w) {
        MOE_TRY(moe_alloc((void **)&all, sizeof *all * (size_t)size_of(w), "checkpoint directory name"));
        MOE_TRY_GOTO(exchange(w, &mine, all), st, done);
        r0 = &all[0];
    }
    if (r0->code != MOE_OK) {
        st = rank_of(w) == 0 ? (moe_status)r0->code
                             : moe_fail((moe_status)r0->code, "checkpoint: rank 0: %.*s", TEXT_CAP - 1, r0->text);
        goto done;
    }
    snprintf(tmp, cap, "%.*s", TEXT_CAP - 1, r0->text);
done:
    moe_free(all);
    return st;
}

/* Every rank's shard index on rank 0 (others get them too: an all-gather). */
static moe_status gather_indexes(moe_comm *w, const uint8_t *index, size_t len, uint8_t **all, size_t *lens,
                                 size_t *displs)
{
    int P = size_of(w);
    int64_t mine = (int64_t)len, *l64 = NULL;
    moe_status st = MOE_OK;
    MOE_TRY(moe_alloc((void **)&l64, sizeof *l64 * (size_t)P, "checkpoint index sizes"));
    MOE_TRY_GOTO(moe_allgather(w, &mine, l64, 1, MOE_DT_I64), st, done);
    size_t total = 0;
    for (int r = 0; r < P; r++) {
        lens[r] = (size_t)l64[r];
        displs[r] = total;
        total += lens[r];
    }
    MOE_TRY_GOTO(moe_alloc((void **)all, total ? total : 1, "checkpoint indexes"), st, done);
    MOE_TRY_GOTO(moe_allgatherv(w, index, len, *all, lens, displs, MOE_DT_U8), st, done);
done:
    moe_free(l64);
    return st;
}

static moe_status config_text(const moe_config *cfg, char *yaml, size_t cap)
{
    FILE *f = fmemopen(yaml, cap, "w");
    if (!f)
        return moe_fail(MOE_ERR_SYSTEM, "fmemopen: %s", strerror(errno));
    moe_status st = moe_config_write_yaml(cfg, f);
    fclose(f);
    return st;
}

/* Rank 0: the manifest from every index, then the rename into place. */
static moe_status commit(moe_trainer *tr, const moe_config *cfg, const char *root, const char *tmp, long step,
                         uint64_t next_seq, uint8_t *all, const size_t *lens, const size_t *displs)
{
    moe_comm *w = world_of(tr);
    const moe_trainer_par *par = moe_trainer_parallel(tr);
    int P = size_of(w);
    static char yaml[65536]; /* rank 0 only, one save at a time */
    moe_status st = config_text(cfg, yaml, sizeof yaml);
    if (st != MOE_OK) {
        moe_ckpt_discard(tmp);
        MOE_TRY(st);
    }
    const uint8_t **idx = NULL;
    if ((st = moe_alloc((void **)&idx, sizeof *idx * (size_t)P, "checkpoint indexes")) != MOE_OK) {
        moe_ckpt_discard(tmp);
        MOE_TRY(st);
    }
    for (int r = 0; r < P; r++)
        idx[r] = all + displs[r];
    char layout[96] = "";
    if (w)
        snprintf(layout, sizeof layout, "world %d = dp %d x ep %d", P, par->dp_size,
                 par->ep ? moe_comm_size(par->ep) : 1);
    moe_ckpt_meta meta = {.step = step, .data_next_sequence = next_seq};
    st = moe_ckpt_commit(root, tmp, &meta, yaml, layout, (uint32_t)P, idx, lens, P, cfg->keep_checkpoints);
    moe_free(idx);
    MOE_TRY(st);
    return MOE_OK;
}

moe_status moe_train_save(moe_trainer *tr, const moe_config *cfg, const char *root, long step,
                          uint64_t next_seq)
{
    moe_comm *w = world_of(tr);
    int P = size_of(w), me = rank_of(w);
    part_list l = {0};
    moments mo = {0};
    uint8_t *index = NULL, *all = NULL;
    size_t len = 0, *lens = NULL, *displs = NULL;
    char tmp[TEXT_CAP] = "";
    staging sg = {0};
    moe_status st = moments_get(tr, &mo);
    if (st == MOE_OK && moe_trainer_distopt(tr)) /* collective: every rank, before any can fail alone */
        st = moe_distopt_gather_moments(moe_trainer_distopt(tr), mo.m, mo.v);
    if (st == MOE_OK)
        st = staging_init(tr, &sg);
    float *base[PREFIXES] = {moe_model_param_data(moe_trainer_model(tr)), mo.m, mo.v};
    if (st == MOE_OK) /* collective too */
        st = staging_gather(tr, &sg, base);
    if (st == MOE_OK)
        st = build(tr, &mo, &sg, 1, &l);
    if (st == MOE_OK)
        st = moe_alloc((void **)&lens, sizeof *lens * (size_t)P, "checkpoint index sizes");
    if (st == MOE_OK)
        st = moe_alloc((void **)&displs, sizeof *displs * (size_t)P, "checkpoint index offsets");
    MOE_TRY_GOTO(all_ok(w, st), st, done);

    MOE_TRY_GOTO(prepare(w, root, step, tmp, sizeof tmp), st, done);
    st = all_ok(w, moe_ckpt_write_shard(tmp, (uint32_t)me, l.p, l.n, &index, &len));
    if (st == MOE_OK && w)
        st = all_ok(w, gather_indexes(w, index, len, &all, lens, displs));
    else if (st == MOE_OK) {
        all = index;
        index = NULL;
        lens[0] = len;
        displs[0] = 0;
    }
    if (st != MOE_OK) {
        if (me == 0)
            moe_ckpt_discard(tmp);
        moe_trace_frame(__FILE__, __LINE__);
        goto done;
    }
    /* Every shard is written and synced: rank 0 publishes the step. */
    if (me == 0)
        st = commit(tr, cfg, root, tmp, step, next_seq, all, lens, displs);
    MOE_TRY_GOTO(all_ok(w, st), st, done);
    if (me == 0)
        moe_info("saved checkpoint at step %ld in %s (%d rank%s)", step, root, P, P > 1 ? "s" : "");
done:
    moe_free(index);
    moe_free(all);
    moe_free(lens);
    moe_free(displs);
    list_free(&l);
    moments_free(&mo);
    staging_free(&sg);
    return st;
}

/* ---- load -------------------------------------------------------------------- */

moe_status moe_train_load(moe_trainer *tr, const char *path, long *step, uint64_t *next_seq,
                          char *loaded_dir, size_t cap)
{
    moe_comm *w = world_of(tr);
    part_list l = {0};
    moments mo = {0};
    moe_ckpt_meta meta;
    staging sg = {0};
    moe_status st = moments_get(tr, &mo);
    if (st == MOE_OK)
        st = staging_init(tr, &sg);
    if (st == MOE_OK)
        st = build(tr, &mo, &sg, 0, &l);
    MOE_TRY_GOTO(all_ok(w, st), st, done);
    moe_ckpt_group g = {.rank = rank_of(w), .size = size_of(w), .agree = agree_cb, .any = any_cb, .ctx = w};
    MOE_TRY_GOTO(moe_ckpt_load_parts(path, &meta, l.p, l.n, w ? &g : NULL, loaded_dir, cap), st, done);
    float *base[PREFIXES] = {moe_model_param_data(moe_trainer_model(tr)), mo.m, mo.v};
    staging_scatter(tr, &sg, base);
    if (moe_trainer_distopt(tr))
        moe_distopt_load_moments(moe_trainer_distopt(tr), mo.m, mo.v);
    *step = meta.step;
    *next_seq = meta.data_next_sequence;
    moe_trainer_optimizer(tr)->step = meta.step;
done:
    list_free(&l);
    moments_free(&mo);
    staging_free(&sg);
    return st;
}
