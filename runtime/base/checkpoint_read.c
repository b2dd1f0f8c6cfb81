/*
** checkpoint_read: getting a checkpoint back. moe_ckpt_verify streams every
** shard once, hashing the whole file and every tensor in it; the loaders
** (moe_ckpt_load_dir / _latest / _path / _parts, moe_ckpt_read_rows) match
** the caller's tensors against a manifest, check the bytes they will use and
** only then copy rows out. Contract in checkpoint.h, shared declarations in
** checkpoint_internal.h.
*/
#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/types.h>
#include <unistd.h>
#include <xxhash.h>

#include "runtime/base/checkpoint_internal.h"
#include "runtime/base/log.h"
#include "runtime/base/mem.h"

/* ------------------------------------------------------------------------- */
/* verification: stream each shard once, hashing the file and every tensor    */

/* A tensor in a shard's streaming order, with its index in the manifest. */
typedef struct {
    const Moe__TensorEntry *e;
    size_t idx;
} placed;

static int cmp_placed(const void *a, const void *b)
{
    return moe_ck_cmp_entry_place(&((const placed *)a)->e, &((const placed *)b)->e);
}

typedef struct {
    const char *path;
    const Moe__ShardFile *sh;
    placed *v; /* this shard's non-empty tensors, by offset */
    size_t nv;
    int *tensor_ok;
    int bad_tensors;
    int read_failed;
    moe_status st; /* first problem in this shard */
} shard_check;

static void shard_problem(shard_check *c, moe_status st)
{
    if (c->st == MOE_OK)
        c->st = st;
}

static void finish_tensor(shard_check *c, const placed *p, uint64_t got)
{
    if (got == p->e->xxh64) {
        if (c->tensor_ok)
            c->tensor_ok[p->idx] = 1;
        return;
    }
    c->bad_tensors++;
    if (c->st == MOE_OK)
        c->st = moe_fail(MOE_ERR_INPUT, "%s: checksum mismatch in tensor '%s' (bytes %" PRIu64 "..%" PRIu64
                         "): the shard is corrupt", c->path, p->e->name, p->e->byte_offset,
                         p->e->byte_offset + p->e->byte_size);
}

/* Hashes [0, limit) of f in chunks, feeding each tensor the part of the
** chunk it covers. Tensors are disjoint and sorted, so one running state is
** enough. Returns how many tensors were finished; *file_hash gets the file's. */
static size_t stream_shard(shard_check *c, FILE *f, uint64_t limit, uint8_t *buf, uint64_t *file_hash)
{
    XXH64_state_t *fs = XXH64_createState(), *ts = XXH64_createState();
    if (!fs || !ts) {
        shard_problem(c, moe_fail(MOE_ERR_NOMEM, "out of memory for a hash state"));
        c->read_failed = 1;
        XXH64_freeState(fs);
        XXH64_freeState(ts);
        return 0;
    }
    XXH64_reset(fs, 0);
    size_t cur = 0;
    int open = 0;
    for (uint64_t pos = 0; pos < limit;) {
        size_t len = (size_t)(limit - pos < IO_CHUNK ? limit - pos : IO_CHUNK);
        moe_status st = moe_ck_read_exact(f, c->path, buf, len);
        if (st != MOE_OK) {
            shard_problem(c, st);
            c->read_failed = 1;
            break;
        }
        XXH64_update(fs, buf, len);
        uint64_t end = pos + len;
        while (cur < c->nv) {
            const Moe__TensorEntry *e = c->v[cur].e;
            uint64_t tb = e->byte_offset, te = tb + e->byte_size;
            if (tb >= end)
                break;
            if (!open) {
                XXH64_reset(ts, 0);
                open = 1;
            }
            uint64_t a = tb > pos ? tb : pos, b = te < end ? te : end;
            XXH64_update(ts, buf + (a - pos), (size_t)(b - a));
            if (te > end)
                break;
            finish_tensor(c, &c->v[cur], XXH64_digest(ts));
            open = 0;
            cur++;
        }
        pos = end;
    }
    *file_hash = XXH64_digest(fs);
    XXH64_freeState(fs);
    XXH64_freeState(ts);
    return cur;
}

/* Checks one shard: present, its size, every tensor in it, the whole file.
** Returns 1 if all of that holds; c->st says what failed first. */
static int verify_shard(shard_check *c, const char *dir, uint8_t *buf)
{
    char path[CKPT_PATH];
    moe_status st = moe_ck_join(path, sizeof path, dir, c->sh->file);
    if (st != MOE_OK) {
        shard_problem(c, st);
        return 0;
    }
    c->path = path;
    FILE *f = fopen(path, "rbe");
    if (!f) {
        shard_problem(c, errno == ENOENT ? moe_fail(MOE_ERR_INPUT, "%s: shard file is missing", path)
                                         : moe_fail(MOE_ERR_IO, "cannot open %s: %s", path, strerror(errno)));
        c->path = NULL;
        return 0;
    }
    struct stat sb;
    if (fstat(fileno(f), &sb) != 0) {
        shard_problem(c, moe_fail(MOE_ERR_IO, "stat %s: %s", path, strerror(errno)));
        fclose(f);
        c->path = NULL;
        return 0;
    }
    uint64_t size = (uint64_t)sb.st_size;
    int size_ok = size == c->sh->size;
    if (!size_ok)
        shard_problem(c, moe_fail(MOE_ERR_INPUT, "%s: %" PRIu64 " bytes, the manifest says %" PRIu64 " (%s)", path,
                                  size, c->sh->size, size < c->sh->size ? "truncated" : "overwritten or appended to"));
    /* Hash what is there even when the size is wrong, so inspect can tell
    ** which tensors survived. */
    uint64_t file_hash = 0;
    size_t done = stream_shard(c, f, size < c->sh->size ? size : c->sh->size, buf, &file_hash);
    fclose(f);
    for (size_t i = done; i < c->nv; i++) {
        c->bad_tensors++;
        shard_problem(c, moe_fail(MOE_ERR_INPUT, "%s: tensor '%s' (bytes %" PRIu64 "..%" PRIu64
                                  ") lies past the end of the file", path, c->v[i].e->name,
                                  c->v[i].e->byte_offset, c->v[i].e->byte_offset + c->v[i].e->byte_size));
    }
    int hash_ok = size_ok && !c->read_failed && file_hash == c->sh->xxh64;
    if (size_ok && !c->read_failed && !hash_ok)
        shard_problem(c, moe_fail(MOE_ERR_INPUT, "%s: checksum mismatch of the whole file (stored %016" PRIx64
                                  ", computed %016" PRIx64 "): the shard is corrupt", path, c->sh->xxh64,
                                  file_hash));
    c->path = NULL;
    return hash_ok && c->bad_tensors == 0 && c->st == MOE_OK;
}

/* Checks the shards s with s % nsel == sel (all of them: 0, 1). */
static moe_status verify_shards(const char *dir, const Moe__CheckpointManifest *m, int *shard_ok, int *tensor_ok,
                                int sel, int nsel)
{
    size_t nt = m->n_tensors;
    placed *v = NULL;
    uint8_t *buf = NULL;
    moe_status first = MOE_OK, st = MOE_OK;
    if (shard_ok)
        memset(shard_ok, 0, sizeof *shard_ok * m->n_shards);
    if (tensor_ok)
        memset(tensor_ok, 0, sizeof *tensor_ok * nt);
    MOE_TRY_GOTO(moe_alloc((void **)&v, sizeof *v * (nt ? nt : 1), "checkpoint verify"), st, done);
    MOE_TRY_GOTO(moe_alloc((void **)&buf, IO_CHUNK, "checkpoint read buffer"), st, done);
    size_t nv = 0;
    for (size_t i = 0; i < nt; i++) {
        const Moe__TensorEntry *e = m->tensors[i];
        if (e->byte_size > 0) {
            v[nv].e = e;
            v[nv++].idx = i;
        } else if (e->xxh64 != XXH64(NULL, 0, 0)) {
            if (first == MOE_OK)
                first = moe_fail(MOE_ERR_INPUT, "%s: empty tensor '%s' has a wrong checksum", dir, e->name);
        } else if (tensor_ok) {
            tensor_ok[i] = 1;
        }
    }
    qsort(v, nv, sizeof *v, cmp_placed);
    size_t lo = 0;
    for (size_t s = 0; s < m->n_shards; s++) {
        size_t hi = lo;
        while (hi < nv && v[hi].e->shard == s)
            hi++;
        if ((int)(s % (size_t)nsel) == sel) {
            shard_check c = {.sh = m->shards[s], .v = v + lo, .nv = hi - lo, .tensor_ok = tensor_ok, .st = MOE_OK};
            int ok = verify_shard(&c, dir, buf);
            if (shard_ok)
                shard_ok[s] = ok;
            if (first == MOE_OK)
                first = c.st;
        }
        lo = hi;
    }
    st = first;
done:
    moe_free(v);
    moe_free(buf);
    return st;
}

moe_status moe_ckpt_verify(const char *dir, const Moe__CheckpointManifest *m, int *shard_ok, int *tensor_ok)
{
    MOE_TRY(verify_shards(dir, m, shard_ok, tensor_ok, 0, 1));
    return MOE_OK;
}

/* ------------------------------------------------------------------------- */
/* load                                                                       */

/* A manifest's entries by name, then row: each tensor's slices side by side. */
typedef struct {
    const char *dir;
    const Moe__CheckpointManifest *m;
    const Moe__TensorEntry **v;
    size_t n;
} view;

static moe_status view_init(view *w, const char *dir, const Moe__CheckpointManifest *m)
{
    w->dir = dir;
    w->m = m;
    w->n = m->n_tensors;
    w->v = NULL;
    MOE_TRY(moe_alloc((void **)&w->v, sizeof *w->v * (w->n ? w->n : 1), "checkpoint index"));
    if (w->n > 0) {
        memcpy(w->v, m->tensors, sizeof *w->v * w->n);
        qsort(w->v, w->n, sizeof *w->v, moe_ck_cmp_entry_rows);
    }
    return MOE_OK;
}

static void view_free(view *w)
{
    moe_free(w->v);
    w->v = NULL;
}

/* The slices of tensor name are v[*lo, *hi); 0 when there are none. */
static int view_find(const view *w, const char *name, size_t *lo, size_t *hi)
{
    size_t a = 0, b = w->n;
    while (a < b) {
        size_t mid = a + (b - a) / 2;
        if (strcmp(w->v[mid]->name, name) < 0)
            a = mid + 1;
        else
            b = mid;
    }
    *lo = *hi = a;
    while (*hi < w->n && strcmp(w->v[*hi]->name, name) == 0)
        (*hi)++;
    return *hi > *lo;
}

static int part_overlaps(const Moe__TensorEntry *e, const moe_ckpt_part *p)
{
    int64_t o, l, g;
    moe_ck_entry_rows(e, &o, &l, &g);
    return o < p->row_start + p->rows && p->row_start < o + l;
}

/* Names and shapes of the caller's parts against the manifest: every part
** names a tensor of its global shape, every tensor is asked for. */
/* One part against the manifest: a tensor of its global shape, f32. */
static moe_status match_part(const view *w, const moe_ckpt_part *p, size_t *lo, size_t *hi)
{
    char ms[160], cs[160];
    moe_ck_fmt_shape(ms, sizeof ms, p->shape, (size_t)p->ndim);
    if (!view_find(w, p->name, lo, hi))
        return moe_fail(MOE_ERR_INPUT, "%s: checkpoint has no such tensor, model has %s (in %s)", p->name, ms, w->dir);
    const Moe__TensorEntry *e = w->v[*lo];
    moe_ck_fmt_shape(cs, sizeof cs, e->global_shape, e->n_global_shape);
    int same = e->n_global_shape == (size_t)p->ndim;
    for (int d = 0; same && d < p->ndim; d++)
        same = e->global_shape[d] == p->shape[d];
    if (!same)
        return moe_fail(MOE_ERR_INPUT, "%s: checkpoint has %s, model has %s (in %s)", p->name, cs, ms, w->dir);
    if (strcmp(e->dtype, "f32") != 0)
        return moe_fail(MOE_ERR_INPUT, "%s: checkpoint stores %s, the model needs f32 (in %s)", p->name, e->dtype,
                        w->dir);
    return MOE_OK;
}

/* Names and shapes of the caller's parts against the manifest: every part
** names a tensor of its global shape, every tensor is asked for (by some
** loader, with g->any, which every loader calls exactly once). */
static moe_status match_parts(const view *w, const moe_ckpt_part *p, int n, const moe_ckpt_group *g)
{
    int32_t *used = NULL;
    MOE_TRY(moe_alloc((void **)&used, sizeof *used * (w->n ? w->n : 1), "checkpoint match"));
    moe_status st = MOE_OK;
    for (int i = 0; i < n && st == MOE_OK; i++) {
        size_t lo, hi;
        st = match_part(w, &p[i], &lo, &hi);
        for (size_t k = lo; st == MOE_OK && k < hi; k++)
            used[k] = 1;
    }
    if (g && g->any && g->any(g->ctx, used, (int)w->n) != 0 && st == MOE_OK)
        st = moe_fail(MOE_ERR_SYSTEM, "checkpoint: the loaders could not compare the tensors they load (%s)",
                      moe_errmsg());
    for (size_t k = 0; k < w->n && st == MOE_OK; k++)
        if (!used[k]) {
            char cs[160];
            moe_ck_fmt_shape(cs, sizeof cs, w->v[k]->global_shape, w->v[k]->n_global_shape);
            st = moe_fail(MOE_ERR_INPUT, "%s: checkpoint has %s, model has no such tensor (in %s)", w->v[k]->name, cs,
                          w->dir);
        }
    moe_free(used);
    return st;
}

/* XXH64 of an entry's bytes in f, read in chunks through buf (IO_CHUNK). */
static moe_status hash_entry(FILE *f, const char *path, const Moe__TensorEntry *e, uint8_t *buf, uint64_t *h)
{
    if (fseeko(f, (off_t)e->byte_offset, SEEK_SET) != 0)
        return moe_fail(MOE_ERR_IO, "seek %s: %s", path, strerror(errno));
    XXH64_state_t *s = XXH64_createState();
    if (!s)
        return moe_fail(MOE_ERR_NOMEM, "out of memory for a hash state");
    XXH64_reset(s, 0);
    moe_status st = MOE_OK;
    for (uint64_t done = 0; done < e->byte_size && st == MOE_OK;) {
        size_t len = (size_t)(e->byte_size - done < IO_CHUNK ? e->byte_size - done : IO_CHUNK);
        st = moe_ck_read_exact(f, path, buf, len);
        XXH64_update(s, buf, len);
        done += len;
    }
    *h = XXH64_digest(s);
    XXH64_freeState(s);
    return st;
}

/* Every slice the parts read from: its shard has the recorded size and the
** slice its checksum. Each shard is opened once. */
static moe_status check_touched(const view *w, const moe_ckpt_part *p, int n)
{
    const Moe__CheckpointManifest *m = w->m;
    char *need = NULL;
    uint8_t *buf = NULL;
    moe_status st = MOE_OK;
    MOE_TRY_GOTO(moe_alloc((void **)&need, w->n ? w->n : 1, "checkpoint check"), st, done);
    for (int i = 0; i < n; i++) {
        size_t lo, hi;
        view_find(w, p[i].name, &lo, &hi);
        for (size_t k = lo; k < hi; k++)
            need[k] |= w->v[k]->byte_size > 0 && part_overlaps(w->v[k], &p[i]);
    }
    MOE_TRY_GOTO(moe_alloc((void **)&buf, IO_CHUNK, "checkpoint read buffer"), st, done);
    for (size_t s = 0; s < m->n_shards && st == MOE_OK; s++) {
        FILE *f = NULL;
        char path[CKPT_PATH];
        for (size_t k = 0; k < w->n && st == MOE_OK; k++) {
            const Moe__TensorEntry *e = w->v[k];
            if (!need[k] || e->shard != s)
                continue;
            if (!f) {
                MOE_TRY_GOTO(moe_ck_join(path, sizeof path, w->dir, m->shards[s]->file), st, done);
                if (!(f = fopen(path, "rbe"))) {
                    st = errno == ENOENT ? moe_fail(MOE_ERR_INPUT, "%s: shard file is missing", path)
                                         : moe_fail(MOE_ERR_IO, "cannot open %s: %s", path, strerror(errno));
                    break;
                }
                struct stat sb;
                if (fstat(fileno(f), &sb) != 0)
                    st = moe_fail(MOE_ERR_IO, "stat %s: %s", path, strerror(errno));
                else if ((uint64_t)sb.st_size != m->shards[s]->size)
                    st = moe_fail(MOE_ERR_INPUT, "%s: %" PRIu64 " bytes, the manifest says %" PRIu64 " (%s)", path,
                                  (uint64_t)sb.st_size, m->shards[s]->size,
                                  (uint64_t)sb.st_size < m->shards[s]->size ? "truncated"
                                                                            : "overwritten or appended to");
                if (st != MOE_OK)
                    break;
            }
            uint64_t h = 0;
            if ((st = hash_entry(f, path, e, buf, &h)) == MOE_OK && h != e->xxh64)
                st = moe_fail(MOE_ERR_INPUT, "%s: checksum mismatch in tensor '%s' (bytes %" PRIu64 "..%" PRIu64
                              "): the shard is corrupt", path, e->name, e->byte_offset, e->byte_offset + e->byte_size);
        }
        if (f)
            fclose(f);
    }
done:
    moe_free(need);
    moe_free(buf);
    return st;
}

/* Copies the part's rows out of every slice holding some of them. A slice
** lying wholly inside the part is read in place, any other through scratch;
** either way the whole slice is hashed. checked: the slices passed
** check_touched, so a mismatch now means the file changed under us. */
static moe_status read_part(const view *w, moe_ckpt_part *p, int checked)
{
    size_t lo, hi;
    view_find(w, p->name, &lo, &hi);
    uint64_t rb = moe_ck_row_elems(p->shape, p->ndim) * sizeof(float);
    for (size_t k = lo; k < hi; k++) {
        const Moe__TensorEntry *e = w->v[k];
        int64_t o, l, g;
        moe_ck_entry_rows(e, &o, &l, &g);
        int64_t a = o > p->row_start ? o : p->row_start;
        int64_t b = o + l < p->row_start + p->rows ? o + l : p->row_start + p->rows;
        if (a >= b || e->byte_size == 0)
            continue;
        char path[CKPT_PATH];
        MOE_TRY(moe_ck_join(path, sizeof path, w->dir, w->m->shards[e->shard]->file));
        int whole = a == o && b == o + l;
        uint8_t *dst = (uint8_t *)p->data + (uint64_t)(a - p->row_start) * rb, *src = dst;
        if (!whole)
            MOE_TRY(moe_alloc((void **)&src, (size_t)e->byte_size, "checkpoint slice"));
        FILE *f = fopen(path, "rbe");
        moe_status st = MOE_OK;
        if (!f)
            st = errno == ENOENT ? moe_fail(MOE_ERR_INPUT, "%s: shard file is missing", path)
                                 : moe_fail(MOE_ERR_IO, "cannot open %s: %s", path, strerror(errno));
        else if (fseeko(f, (off_t)e->byte_offset, SEEK_SET) != 0)
            st = moe_fail(MOE_ERR_IO, "seek %s: %s", path, strerror(errno));
        else
            st = moe_ck_read_exact(f, path, src, (size_t)e->byte_size);
        if (f)
            fclose(f);
        if (st == MOE_OK && XXH64(src, (size_t)e->byte_size, 0) != e->xxh64)
            st = checked ? moe_fail(MOE_ERR_IO, "%s: tensor '%s' changed while it was being loaded", path, e->name)
                         : moe_fail(MOE_ERR_INPUT, "%s: checksum mismatch in tensor '%s' (bytes %" PRIu64 "..%" PRIu64
                                    "): the shard is corrupt", path, e->name, e->byte_offset,
                                    e->byte_offset + e->byte_size);
        if (st == MOE_OK && !whole)
            memcpy(dst, src + (uint64_t)(a - o) * rb, (size_t)((uint64_t)(b - a) * rb));
        if (!whole)
            moe_free(src);
        MOE_TRY(st);
    }
    return MOE_OK;
}

moe_status moe_ckpt_read_rows(const char *dir, const Moe__CheckpointManifest *m, const char *name, int64_t start,
                              int64_t count, void *out, size_t bytes)
{
    view w;
    MOE_TRY(view_init(&w, dir, m));
    size_t lo, hi;
    moe_status st = MOE_OK;
    if (!view_find(&w, name, &lo, &hi)) {
        st = moe_fail(MOE_ERR_INPUT, "%s: checkpoint has no tensor %s", dir, name);
        goto done;
    }
    const Moe__TensorEntry *e = w.v[lo];
    if (e->n_global_shape > MOE_CKPT_MAX_DIMS || strcmp(e->dtype, "f32") != 0) {
        st = moe_fail(MOE_ERR_INPUT, "%s: tensor %s is %s with %zu dims (this reader: f32, up to %d)", dir, name,
                      e->dtype, e->n_global_shape, MOE_CKPT_MAX_DIMS);
        goto done;
    }
    moe_ckpt_part p = {.name = name, .ndim = (int)e->n_global_shape, .row_start = start, .rows = count,
                       .data = out, .bytes = bytes};
    if (e->n_global_shape > 0) /* a scalar's global_shape is NULL */
        memcpy(p.shape, e->global_shape, sizeof *p.shape * e->n_global_shape);
    MOE_TRY_GOTO(moe_ck_check_parts(&p, 1, "checkpoint read"), st, done);
    MOE_TRY_GOTO(read_part(&w, &p, 0), st, done);
done:
    view_free(&w);
    return st;
}

/* ---- one step directory, for one loader or a group ------------------------ */

enum { CODE_OK = 0, CODE_UNUSABLE = 1, CODE_STOP = 2 };

static int code_of(moe_status st, int mismatch)
{
    if (st == MOE_OK)
        return CODE_OK;
    return !mismatch && (st == MOE_ERR_INPUT || st == MOE_ERR_IO) ? CODE_UNUSABLE : CODE_STOP;
}

/* Every loader's verdict; on a nonzero one, every loader carries its message.
** *st keeps the local status, or becomes MOE_ERR_INPUT where only others failed. */
static int agree(const moe_ckpt_group *g, int code, moe_status *st)
{
    if (!g || !g->agree)
        return code;
    char msg[768];
    snprintf(msg, sizeof msg, "%s", code ? moe_errmsg() : "");
    int all = g->agree(g->ctx, code, msg, sizeof msg);
    if (all < 0) {
        *st = MOE_ERR_SYSTEM;
        return CODE_STOP;
    }
    if (all != CODE_OK) {
        moe_error_clear();
        moe_status s = *st != MOE_OK ? *st : MOE_ERR_INPUT;
        *st = moe_fail(s, "%s", msg);
    }
    return all;
}

/* Loads one step directory. *code: what the group agreed (CODE_*). Nothing
** is written to p or meta unless every loader's checks pass. */
static moe_status load_dir_parts(const char *dir, moe_ckpt_meta *meta, moe_ckpt_part *p, int n,
                                 const moe_ckpt_group *g, int *code)
{
    Moe__CheckpointManifest *m = NULL;
    view w = {0};
    int mismatch = 0;
    moe_status st = moe_ckpt_read_manifest(dir, &m);
    if (st == MOE_OK)
        st = view_init(&w, dir, m);
    /* match_parts is collective with g->any: only when every loader has the manifest */
    int read = g && g->any ? agree(g, code_of(st, 0), &st) : code_of(st, 0);
    if (st == MOE_OK && read == CODE_OK) {
        st = match_parts(&w, p, n, g);
        mismatch = st != MOE_OK;
    }
    if (st == MOE_OK)
        st = verify_shards(dir, m, NULL, NULL, g ? g->rank : 0, g ? g->size : 1);
    if (st == MOE_OK && g && g->size > 1) /* alone, the whole-shard checks above covered every slice */
        st = check_touched(&w, p, n);
    *code = agree(g, code_of(st, mismatch), &st);
    for (int i = 0; *code == CODE_OK && i < n && st == MOE_OK; i++)
        st = read_part(&w, &p[i], 1);
    if (*code == CODE_OK)
        *code = agree(g, code_of(st, 1), &st);
    if (*code == CODE_OK) {
        meta->step = m->step;
        meta->data_next_sequence = m->data_next_sequence;
        memcpy(meta->rng_state, m->rng_state, sizeof meta->rng_state);
    }
    view_free(&w);
    if (m)
        moe__checkpoint_manifest__free_unpacked(m, NULL);
    if (st != MOE_OK)
        moe_trace_frame(__FILE__, __LINE__);
    return st;
}

static moe_status set_loaded(char *out, size_t cap, const char *dir)
{
    if (!out || cap == 0)
        return MOE_OK;
    int k = snprintf(out, cap, "%s", dir);
    if (k < 0 || (size_t)k >= cap)
        return moe_fail(MOE_ERR_INTERNAL, "loaded_dir buffer (%zu bytes) too small for %s", cap, dir);
    return MOE_OK;
}

static int is_speaker(const moe_ckpt_group *g) { return !g || g->rank == 0; }

static moe_status load_latest_parts(const char *root, moe_ckpt_meta *meta, moe_ckpt_part *p, int n,
                                    const moe_ckpt_group *g, char *loaded_dir, size_t cap)
{
    moe_ck_step_ent *v = NULL;
    int count = 0;
    MOE_TRY(moe_ck_list_steps(root, &v, &count));
    if (count == 0) {
        moe_free(v);
        return moe_fail(MOE_ERR_INPUT, "no checkpoints in %s", root);
    }
    char last[768] = "";
    moe_status st = MOE_ERR_INPUT;
    for (int i = 0; i < count; i++) {
        char dir[CKPT_PATH];
        MOE_TRY_GOTO(moe_ck_join(dir, sizeof dir, root, v[i].name), st, done);
        int code;
        st = load_dir_parts(dir, meta, p, n, g, &code);
        if (code == CODE_OK) {
            MOE_TRY_GOTO(set_loaded(loaded_dir, cap, dir), st, done);
            goto done;
        }
        if (code == CODE_STOP) {
            moe_trace_frame(__FILE__, __LINE__);
            goto done;
        }
        snprintf(last, sizeof last, "%s", moe_errmsg());
        if (is_speaker(g))
            moe_warn("checkpoint %s is unusable: %s; %s", dir, last,
                     i + 1 < count ? "trying the previous one" : "no older checkpoint left");
        moe_error_clear();
    }
    st = moe_fail(MOE_ERR_INPUT, "no valid checkpoint in %s (%d tried; the last problem: %s)", root, count, last);
done:
    moe_free(v);
    return st;
}

moe_status moe_ckpt_load_parts(const char *path, moe_ckpt_meta *meta, moe_ckpt_part *p, int n,
                               const moe_ckpt_group *g, char *loaded_dir, size_t cap)
{
    if (!path || !path[0])
        return moe_fail(MOE_ERR_USAGE, "checkpoint load: no path given");
    if (g && (g->size < 1 || g->rank < 0 || g->rank >= g->size))
        return moe_fail(MOE_ERR_INTERNAL, "checkpoint load: loader %d of %d", g->rank, g->size);
    MOE_TRY(moe_ck_check_parts(p, n, "checkpoint load"));
    struct stat sb;
    if (stat(path, &sb) != 0)
        return moe_fail(errno == ENOENT ? MOE_ERR_INPUT : MOE_ERR_IO, "checkpoint path %s: %s", path,
                        strerror(errno));
    if (!S_ISDIR(sb.st_mode))
        return moe_fail(MOE_ERR_INPUT, "checkpoint path %s is not a directory", path);
    /* The last component, ignoring trailing slashes: is it step-N? */
    char last[CKPT_PATH], manifest[CKPT_PATH];
    snprintf(last, sizeof last, "%s", path);
    size_t len = strlen(last);
    while (len > 1 && last[len - 1] == '/')
        last[--len] = '\0';
    const char *base = strrchr(last, '/');
    base = base ? base + 1 : last;
    int64_t step;
    MOE_TRY(moe_ck_join(manifest, sizeof manifest, path, MANIFEST_NAME));
    if (moe_ck_parse_step_name(base, &step) || access(manifest, F_OK) == 0) {
        int code;
        MOE_TRY(load_dir_parts(path, meta, p, n, g, &code));
        MOE_TRY(set_loaded(loaded_dir, cap, path));
        return MOE_OK;
    }
    MOE_TRY(load_latest_parts(path, meta, p, n, g, loaded_dir, cap));
    return MOE_OK;
}

/* ---- whole tensors, one process ---------------------------------------------- */

moe_status moe_ckpt_load_dir(const char *dir, moe_ckpt_meta *meta, moe_ckpt_tensor *t, int n)
{
    moe_ckpt_part *p = NULL;
    MOE_TRY(moe_ck_tensor_parts(t, n, "checkpoint load", &p));
    int code;
    moe_status st = load_dir_parts(dir, meta, p, n, NULL, &code);
    moe_free(p);
    MOE_TRY(st);
    return MOE_OK;
}

moe_status moe_ckpt_load_latest(const char *root, moe_ckpt_meta *meta, moe_ckpt_tensor *t, int n, char *loaded_dir,
                                size_t cap)
{
    moe_ckpt_part *p = NULL;
    MOE_TRY(moe_ck_tensor_parts(t, n, "checkpoint load", &p));
    moe_status st = load_latest_parts(root, meta, p, n, NULL, loaded_dir, cap);
    moe_free(p);
    MOE_TRY(st);
    return MOE_OK;
}

moe_status moe_ckpt_load_path(const char *path, moe_ckpt_meta *meta, moe_ckpt_tensor *t, int n, char *loaded_dir,
                              size_t cap)
{
    moe_ckpt_part *p = NULL;
    MOE_TRY(moe_ck_tensor_parts(t, n, "checkpoint load", &p));
    moe_status st = moe_ckpt_load_parts(path, meta, p, n, NULL, loaded_dir, cap);
    moe_free(p);
    MOE_TRY(st);
    return MOE_OK;
}

/* ---- a verified step for readers that want the manifest ------------------- */

static moe_status read_verified(const char *dir, Moe__CheckpointManifest **m)
{
    MOE_TRY(moe_ckpt_read_manifest(dir, m));
    moe_status st = moe_ckpt_verify(dir, *m, NULL, NULL);
    if (st != MOE_OK) {
        moe__checkpoint_manifest__free_unpacked(*m, NULL);
        *m = NULL;
        MOE_TRY(st);
    }
    return MOE_OK;
}

moe_status moe_ckpt_open_verified(const char *path, char *dir, size_t cap, Moe__CheckpointManifest **m)
{
    char manifest[CKPT_PATH];
    *m = NULL;
    if (!moe_ck_is_dir(path))
        return moe_fail(MOE_ERR_INPUT, "checkpoint path %s is not a directory", path);
    MOE_TRY(moe_ck_join(manifest, sizeof manifest, path, MANIFEST_NAME));
    const char *base = strrchr(path, '/');
    int64_t step;
    if (access(manifest, F_OK) == 0 || moe_ck_parse_step_name(base ? base + 1 : path, &step)) {
        if ((size_t)snprintf(dir, cap, "%s", path) >= cap)
            return moe_fail(MOE_ERR_USAGE, "checkpoint path %s is too long", path);
        return read_verified(dir, m);
    }
    moe_ck_step_ent *v = NULL;
    int n = 0;
    MOE_TRY(moe_ck_list_steps(path, &v, &n));
    char problem[1024] = "";
    moe_status st = MOE_ERR_INPUT;
    for (int i = 0; i < n; i++) {
        MOE_TRY_GOTO(moe_ck_join(dir, cap, path, v[i].name), st, done);
        st = read_verified(dir, m);
        if (st == MOE_OK || (st != MOE_ERR_INPUT && st != MOE_ERR_IO))
            break;
        snprintf(problem, sizeof problem, "%s", moe_errmsg());
        moe_warn("checkpoint %s is unusable: %s; %s", dir, problem,
                 i + 1 < n ? "trying the previous one" : "no older checkpoint left");
        moe_error_clear();
    }
    if (n == 0)
        st = moe_fail(MOE_ERR_INPUT, "no checkpoints in %s", path);
    else if (st == MOE_ERR_INPUT || st == MOE_ERR_IO)
        st = moe_fail(MOE_ERR_INPUT, "no valid checkpoint in %s (%d tried; the last problem: %s)", path, n, problem);
done:
    moe_free(v);
    return st;
}

int moe_ckpt_has_steps(const char *root)
{
    moe_ck_step_ent *v = NULL;
    int n = 0;
    if (!moe_ck_is_dir(root) || moe_ck_list_steps(root, &v, &n) != MOE_OK) {
        moe_error_clear();
        return 0;
    }
    moe_free(v);
    return n > 0;
}
