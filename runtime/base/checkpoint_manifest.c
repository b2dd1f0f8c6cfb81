/*
** checkpoint_manifest: shapes, the caller's tensor and part tables, and the
** manifest: writing it with its checksum trailer, reading it back, and every
** structural check a loader (and the committing writer) relies on. Format in
** proto/checkpoint.proto, contract in checkpoint.h, shared declarations in
** checkpoint_internal.h.
*/
#include <dirent.h>
#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <xxhash.h>

#include "runtime/base/checkpoint_internal.h"
#include "runtime/base/mem.h"

#define TRAILER_TAG 0x79 /* field 15, wire type 1 (fixed64): (15 << 3) | 1 */
#define TRAILER_BYTES 9
#define MAX_MANIFEST_BYTES ((size_t)1 << 30)
#define MAX_STORED_DIMS 8 /* what a manifest may describe; the API loads up to 4 */

/* ------------------------------------------------------------------------- */
/* shapes, and the caller's tables                                            */

static size_t dtype_size(const char *dtype) { return dtype && strcmp(dtype, "f32") == 0 ? 4 : 0; }

void moe_ck_fmt_shape(char *out, size_t cap, const int64_t *dims, size_t nd)
{
    size_t k = (size_t)snprintf(out, cap, "[");
    for (size_t i = 0; i < nd && k < cap; i++)
        k += (size_t)snprintf(out + k, cap - k, "%s%" PRId64, i ? ", " : "", dims[i]);
    if (k < cap)
        snprintf(out + k, cap - k, "]");
}

/* product(dims) * esize, or 0 with *ok = 0 on a negative dim or overflow. */
static uint64_t shape_bytes(const int64_t *dims, size_t nd, size_t esize, int *ok)
{
    uint64_t b = esize;
    *ok = 1;
    for (size_t i = 0; i < nd; i++) {
        if (dims[i] < 0 || (dims[i] > 0 && b > UINT64_MAX / (uint64_t)dims[i])) {
            *ok = 0;
            return 0;
        }
        b *= (uint64_t)dims[i];
    }
    return b;
}

static int cmp_name_ptr(const void *a, const void *b)
{
    return strcmp(*(const char *const *)a, *(const char *const *)b);
}

/* Checks the caller's tensor table (the same rules for save and load). */
static moe_status check_tensors(const moe_ckpt_tensor *t, int n, const char *what)
{
    if (n < 0 || (n > 0 && !t))
        return moe_fail(MOE_ERR_INTERNAL, "%s: bad tensor table (n = %d)", what, n);
    for (int i = 0; i < n; i++) {
        const moe_ckpt_tensor *x = &t[i];
        if (!x->name || !x->name[0])
            return moe_fail(MOE_ERR_INTERNAL, "%s: tensor %d has no name", what, i);
        if (x->ndim < 0 || x->ndim > MOE_CKPT_MAX_DIMS)
            return moe_fail(MOE_ERR_INTERNAL, "%s: tensor %s has ndim %d (0..%d)", what, x->name, x->ndim,
                            MOE_CKPT_MAX_DIMS);
        int ok;
        uint64_t want = shape_bytes(x->shape, (size_t)x->ndim, sizeof(float), &ok);
        char sh[160];
        moe_ck_fmt_shape(sh, sizeof sh, x->shape, (size_t)x->ndim);
        if (!ok || want != (uint64_t)x->bytes)
            return moe_fail(MOE_ERR_INTERNAL, "%s: tensor %s has shape %s but %zu bytes", what, x->name, sh,
                            x->bytes);
        if (x->bytes > 0 && !x->data)
            return moe_fail(MOE_ERR_INTERNAL, "%s: tensor %s has no data", what, x->name);
    }
    if (n < 2)
        return MOE_OK;
    const char **names = NULL;
    MOE_TRY(moe_alloc((void **)&names, sizeof *names * (size_t)n, "checkpoint tensor names"));
    for (int i = 0; i < n; i++)
        names[i] = t[i].name;
    qsort(names, (size_t)n, sizeof *names, cmp_name_ptr);
    moe_status st = MOE_OK;
    for (int i = 1; i < n && st == MOE_OK; i++)
        if (strcmp(names[i - 1], names[i]) == 0)
            st = moe_fail(MOE_ERR_INTERNAL, "%s: tensor name %s appears twice", what, names[i]);
    moe_free(names);
    return st;
}

moe_status moe_ck_tensor_parts(const moe_ckpt_tensor *t, int n, const char *what, moe_ckpt_part **out)
{
    *out = NULL;
    MOE_TRY(check_tensors(t, n, what));
    MOE_TRY(moe_alloc((void **)out, sizeof **out * (n > 0 ? (size_t)n : 1), "checkpoint parts"));
    for (int i = 0; i < n; i++) {
        moe_ckpt_part *q = &(*out)[i];
        *q = (moe_ckpt_part){.name = t[i].name, .ndim = t[i].ndim, .row_start = 0,
                             .rows = t[i].ndim ? t[i].shape[0] : 1, .data = t[i].data, .bytes = t[i].bytes};
        memcpy(q->shape, t[i].shape, sizeof q->shape);
    }
    return MOE_OK;
}

/* Floats in one dim-0 row of a tensor of shape dims (a scalar: 1). */
uint64_t moe_ck_row_elems(const int64_t *dims, int ndim)
{
    uint64_t r = 1;
    for (int d = 1; d < ndim; d++)
        r *= (uint64_t)dims[d];
    return r;
}

/* Checks a part table (the same rules for save and load). */
moe_status moe_ck_check_parts(const moe_ckpt_part *p, int n, const char *what)
{
    if (n < 0 || (n > 0 && !p))
        return moe_fail(MOE_ERR_INTERNAL, "%s: bad part table (n = %d)", what, n);
    for (int i = 0; i < n; i++) {
        const moe_ckpt_part *x = &p[i];
        if (!x->name || !x->name[0])
            return moe_fail(MOE_ERR_INTERNAL, "%s: part %d has no name", what, i);
        if (x->ndim < 0 || x->ndim > MOE_CKPT_MAX_DIMS)
            return moe_fail(MOE_ERR_INTERNAL, "%s: tensor %s has ndim %d (0..%d)", what, x->name, x->ndim,
                            MOE_CKPT_MAX_DIMS);
        int ok;
        (void)shape_bytes(x->shape, (size_t)x->ndim, sizeof(float), &ok);
        int64_t g = x->ndim ? x->shape[0] : 1;
        char sh[160];
        moe_ck_fmt_shape(sh, sizeof sh, x->shape, (size_t)x->ndim);
        if (!ok || x->row_start < 0 || x->rows < 0 || x->row_start > g || x->rows > g - x->row_start)
            return moe_fail(MOE_ERR_INTERNAL, "%s: tensor %s %s: rows [%" PRId64 ", +%" PRId64 ") do not fit", what,
                            x->name, sh, x->row_start, x->rows);
        if ((uint64_t)x->rows * moe_ck_row_elems(x->shape, x->ndim) * sizeof(float) != (uint64_t)x->bytes)
            return moe_fail(MOE_ERR_INTERNAL, "%s: tensor %s %s: %" PRId64 " rows but %zu bytes", what, x->name, sh,
                            x->rows, x->bytes);
        if (x->bytes > 0 && !x->data)
            return moe_fail(MOE_ERR_INTERNAL, "%s: tensor %s has no data", what, x->name);
    }
    return MOE_OK;
}

/* ------------------------------------------------------------------------- */
/* manifest                                                                   */

moe_status moe_ckpt_write_manifest(const char *dir, const Moe__CheckpointManifest *m)
{
    char path[CKPT_PATH];
    MOE_TRY(moe_ck_join(path, sizeof path, dir, MANIFEST_NAME));
    Moe__CheckpointManifest body = *m;
    body.manifest_xxh64 = 0; /* proto3: a zero field is not written, so the trailer is the only copy */
    size_t n = moe__checkpoint_manifest__get_packed_size(&body);
    uint8_t *buf = NULL;
    MOE_TRY(moe_alloc((void **)&buf, n + TRAILER_BYTES, "checkpoint manifest"));
    moe_status st = MOE_OK;
    if (moe__checkpoint_manifest__pack(&body, buf) != n) {
        st = moe_fail(MOE_ERR_INTERNAL, "%s: protobuf-c packed a different size than it announced", path);
        goto done;
    }
    uint64_t h = XXH64(buf, n, 0);
    buf[n] = TRAILER_TAG;
    for (int i = 0; i < 8; i++)
        buf[n + 1 + (size_t)i] = (uint8_t)(h >> (8 * i));
    MOE_TRY_GOTO(moe_ck_write_file_synced(path, buf, n + TRAILER_BYTES), st, done);
done:
    moe_free(buf);
    return st;
}

/* A missing manifest in a directory full of step-* dirs is a root passed
** where a step directory was expected: say so. */
static moe_status manifest_missing(const char *dir, const char *path)
{
    DIR *d = opendir(dir);
    int64_t best = -1, s;
    struct dirent *e;
    while (d && (e = readdir(d)) != NULL)
        if (moe_ck_parse_step_name(e->d_name, &s) && s > best)
            best = s;
    if (d)
        closedir(d);
    if (best >= 0) {
        char name[64];
        moe_ck_step_name(name, sizeof name, best);
        return moe_fail(MOE_ERR_INPUT,
                        "%s: missing; %s holds step directories, so it is a checkpoint root, not a "
                        "checkpoint (the newest is %s/%s)",
                        path, dir, dir, name);
    }
    return moe_fail(MOE_ERR_INPUT, "%s: missing (not a checkpoint directory, or a save that never finished)", path);
}

static moe_status read_manifest_bytes(const char *dir, const char *path, uint8_t **out, size_t *len)
{
    struct stat sb;
    if (stat(dir, &sb) != 0)
        return moe_fail(errno == ENOENT ? MOE_ERR_INPUT : MOE_ERR_IO, "checkpoint directory %s: %s", dir,
                        strerror(errno));
    if (!S_ISDIR(sb.st_mode))
        return moe_fail(MOE_ERR_INPUT, "checkpoint %s is not a directory", dir);
    FILE *f = fopen(path, "rbe");
    if (!f) {
        if (errno == ENOENT)
            return manifest_missing(dir, path);
        return moe_fail(MOE_ERR_IO, "cannot open %s: %s", path, strerror(errno));
    }
    moe_status st = MOE_OK;
    if (fstat(fileno(f), &sb) != 0) {
        st = moe_fail(MOE_ERR_IO, "stat %s: %s", path, strerror(errno));
        goto done;
    }
    if (!S_ISREG(sb.st_mode) || (uint64_t)sb.st_size > MAX_MANIFEST_BYTES) {
        st = moe_fail(MOE_ERR_INPUT, "%s: not a manifest (%s, %lld bytes)", path,
                      S_ISREG(sb.st_mode) ? "too large" : "not a regular file", (long long)sb.st_size);
        goto done;
    }
    *len = (size_t)sb.st_size;
    MOE_TRY_GOTO(moe_alloc((void **)out, *len, "checkpoint manifest"), st, done);
    MOE_TRY_GOTO(moe_ck_read_exact(f, path, *out, *len), st, done);
done:
    fclose(f);
    if (st != MOE_OK) {
        moe_free(*out);
        *out = NULL;
    }
    return st;
}

static moe_status check_trailer(const char *path, const uint8_t *buf, size_t n)
{
    if (n < TRAILER_BYTES)
        return moe_fail(MOE_ERR_INPUT, "%s: %zu bytes, too short to be a manifest (truncated?)", path, n);
    if (buf[n - TRAILER_BYTES] != TRAILER_TAG)
        return moe_fail(MOE_ERR_INPUT, "%s: no checksum trailer (truncated, or not a moe.c manifest)", path);
    uint64_t stored = 0;
    for (int i = 0; i < 8; i++)
        stored |= (uint64_t)buf[n - 8 + (size_t)i] << (8 * i);
    uint64_t got = XXH64(buf, n - TRAILER_BYTES, 0);
    if (stored != got)
        return moe_fail(MOE_ERR_INPUT, "%s: checksum mismatch (stored %016" PRIx64 ", computed %016" PRIx64
                        "): the manifest is corrupt", path, stored, got);
    return MOE_OK;
}

int moe_ck_cmp_entry_place(const void *a, const void *b)
{
    const Moe__TensorEntry *x = *(const Moe__TensorEntry *const *)a, *y = *(const Moe__TensorEntry *const *)b;
    if (x->shard != y->shard)
        return x->shard < y->shard ? -1 : 1;
    if (x->byte_offset != y->byte_offset)
        return x->byte_offset < y->byte_offset ? -1 : 1;
    return (x->byte_size > y->byte_size) - (x->byte_size < y->byte_size);
}

static moe_status check_shards(const char *path, const Moe__CheckpointManifest *m)
{
    if (m->world_size < 1)
        return moe_fail(MOE_ERR_INPUT, "%s: world_size is 0", path);
    if (m->n_shards < 1)
        return moe_fail(MOE_ERR_INPUT, "%s: lists no shard files", path);
    for (size_t i = 0; i < m->n_shards; i++) {
        const Moe__ShardFile *s = m->shards[i];
        const char *f = s->file;
        if (!f || !f[0] || strchr(f, '/') || strcmp(f, ".") == 0 || strcmp(f, "..") == 0 ||
            strcmp(f, MANIFEST_NAME) == 0)
            return moe_fail(MOE_ERR_INPUT, "%s: shard %zu has an invalid file name '%s'", path, i, f ? f : "");
        if (s->rank >= m->world_size)
            return moe_fail(MOE_ERR_INPUT, "%s: shard %s has rank %u, but world_size is %u", path, f, s->rank,
                            m->world_size);
        for (size_t j = 0; j < i; j++)
            if (strcmp(m->shards[j]->file, f) == 0)
                return moe_fail(MOE_ERR_INPUT, "%s: shard file %s is listed twice", path, f);
    }
    return MOE_OK;
}

static moe_status check_entry(const char *path, const Moe__CheckpointManifest *m, const Moe__TensorEntry *e)
{
    if (!e->name || !e->name[0])
        return moe_fail(MOE_ERR_INPUT, "%s: a tensor has no name", path);
    size_t es = dtype_size(e->dtype);
    if (es == 0)
        return moe_fail(MOE_ERR_INPUT, "%s: tensor %s has unknown dtype '%s' (known: f32)", path, e->name,
                        e->dtype ? e->dtype : "");
    size_t nd = e->n_global_shape;
    if (nd > MAX_STORED_DIMS || e->n_local_shape != nd || e->n_local_offset != nd)
        return moe_fail(MOE_ERR_INPUT, "%s: tensor %s: global_shape, local_shape and local_offset have %zu, %zu "
                        "and %zu dims (must be equal, at most %d)", path, e->name, nd, e->n_local_shape,
                        e->n_local_offset, MAX_STORED_DIMS);
    for (size_t d = 0; d < nd; d++) {
        int64_t g = e->global_shape[d], l = e->local_shape[d], o = e->local_offset[d];
        if (g < 0 || l < 0 || o < 0 || o > g || l > g - o)
            return moe_fail(MOE_ERR_INPUT, "%s: tensor %s: dim %zu slice [%" PRId64 ", %" PRId64 "+%" PRId64
                            ") does not fit its global size %" PRId64, path, e->name, d, o, o, l, g);
    }
    int ok;
    uint64_t want = shape_bytes(e->local_shape, nd, es, &ok);
    if (!ok || want != e->byte_size)
        return moe_fail(MOE_ERR_INPUT, "%s: tensor %s: byte_size %" PRIu64 " does not match its local shape", path,
                        e->name, e->byte_size);
    if (e->shard >= m->n_shards)
        return moe_fail(MOE_ERR_INPUT, "%s: tensor %s is in shard %u, but there are %zu shards", path, e->name,
                        e->shard, m->n_shards);
    uint64_t size = m->shards[e->shard]->size;
    if (e->byte_offset > size || e->byte_size > size - e->byte_offset)
        return moe_fail(MOE_ERR_INPUT, "%s: tensor %s: bytes %" PRIu64 "..%" PRIu64 " lie outside %s (%" PRIu64
                        " bytes)", path, e->name, e->byte_offset, e->byte_offset + e->byte_size,
                        m->shards[e->shard]->file, size);
    return MOE_OK;
}

/* An entry's dim-0 slice: rows [o, o + l) of g (a scalar is one row). */
void moe_ck_entry_rows(const Moe__TensorEntry *e, int64_t *o, int64_t *l, int64_t *g)
{
    int nd = e->n_global_shape > 0;
    *o = nd ? e->local_offset[0] : 0;
    *l = nd ? e->local_shape[0] : 1;
    *g = nd ? e->global_shape[0] : 1;
}

/* By name, then by where the slice starts: each tensor's slices in row order. */
int moe_ck_cmp_entry_rows(const void *a, const void *b)
{
    const Moe__TensorEntry *x = *(const Moe__TensorEntry *const *)a, *y = *(const Moe__TensorEntry *const *)b;
    int c = strcmp(x->name, y->name);
    if (c != 0)
        return c;
    int64_t ox, lx, gx, oy, ly, gy;
    moe_ck_entry_rows(x, &ox, &lx, &gx);
    moe_ck_entry_rows(y, &oy, &ly, &gy);
    return (ox > oy) - (ox < oy);
}

static int same_global(const Moe__TensorEntry *a, const Moe__TensorEntry *b)
{
    if (a->n_global_shape != b->n_global_shape || strcmp(a->dtype, b->dtype) != 0)
        return 0;
    for (size_t d = 0; d < a->n_global_shape; d++)
        if (a->global_shape[d] != b->global_shape[d])
            return 0;
    return 1;
}

/* The slices of one tensor, v[0..k) in row order: cut along dim 0 only, one
** global shape, and together every row exactly once. */
static moe_status check_tensor_cover(const char *path, const Moe__TensorEntry *const *v, size_t k)
{
    const char *name = v[0]->name;
    int64_t expect = 0, o, l, g;
    for (size_t i = 0; i < k; i++) {
        const Moe__TensorEntry *e = v[i];
        if (!same_global(e, v[0])) {
            char a[160], b[160];
            moe_ck_fmt_shape(a, sizeof a, v[0]->global_shape, v[0]->n_global_shape);
            moe_ck_fmt_shape(b, sizeof b, e->global_shape, e->n_global_shape);
            return moe_fail(MOE_ERR_INPUT, "%s: tensor %s has slices of different global shapes (%s %s, %s %s)", path,
                            name, v[0]->dtype, a, e->dtype, b);
        }
        for (size_t d = 1; d < e->n_global_shape; d++)
            if (e->local_offset[d] != 0 || e->local_shape[d] != e->global_shape[d])
                return moe_fail(MOE_ERR_INPUT, "%s: tensor %s is cut along dim %zu; this build reads only tensors "
                                "cut along dim 0", path, name, d);
        moe_ck_entry_rows(e, &o, &l, &g);
        if (i > 0 && o == expect - l && l == 0)
            return moe_fail(MOE_ERR_INPUT, "%s: tensor %s is listed twice", path, name);
        if (o < expect)
            return moe_fail(MOE_ERR_INPUT, "%s: tensor %s is listed twice (slices overlap at row %" PRId64 ")",
                            path, name, o);
        if (o > expect)
            break;
        if (l == 0 && g > 0)
            return moe_fail(MOE_ERR_INPUT, "%s: tensor %s has an empty slice", path, name);
        expect = o + l;
    }
    moe_ck_entry_rows(v[0], &o, &l, &g);
    if (expect != g) {
        int64_t end = g;
        for (size_t i = 0; i < k; i++) {
            int64_t oi, li, gi;
            moe_ck_entry_rows(v[i], &oi, &li, &gi);
            if (oi > expect && oi < end)
                end = oi;
        }
        return moe_fail(MOE_ERR_INPUT, "%s: tensor %s: rows [%" PRId64 ", %" PRId64 ") of %" PRId64
                        " are in no shard (its slices do not cover it)", path, name, expect, end, g);
    }
    return MOE_OK;
}

/* Every tensor covered exactly once, and byte ranges disjoint: both need a sorted view. */
static moe_status check_entry_set(const char *path, const Moe__CheckpointManifest *m)
{
    size_t n = m->n_tensors;
    if (n == 0)
        return MOE_OK;
    const Moe__TensorEntry **v = NULL;
    MOE_TRY(moe_alloc((void **)&v, sizeof *v * n, "manifest check"));
    memcpy(v, m->tensors, sizeof *v * n);
    moe_status st = MOE_OK;
    qsort(v, n, sizeof *v, moe_ck_cmp_entry_rows);
    for (size_t i = 0; i < n && st == MOE_OK;) {
        size_t j = i + 1;
        while (j < n && strcmp(v[j]->name, v[i]->name) == 0)
            j++;
        st = check_tensor_cover(path, v + i, j - i);
        i = j;
    }
    qsort(v, n, sizeof *v, moe_ck_cmp_entry_place);
    for (size_t i = 1; i < n && st == MOE_OK; i++) {
        const Moe__TensorEntry *a = v[i - 1], *b = v[i];
        if (a->shard == b->shard && a->byte_size > 0 && b->byte_size > 0 &&
            a->byte_offset + a->byte_size > b->byte_offset)
            st = moe_fail(MOE_ERR_INPUT, "%s: tensors %s and %s overlap in %s", path, a->name, b->name,
                          m->shards[a->shard]->file);
    }
    moe_free(v);
    return st;
}

moe_status moe_ck_check_manifest(const char *path, const Moe__CheckpointManifest *m)
{
    if (m->format_version != MOE_CKPT_FORMAT_VERSION)
        return moe_fail(MOE_ERR_INPUT, "%s: format_version %u is not supported (this build reads version %d)",
                        path, m->format_version, MOE_CKPT_FORMAT_VERSION);
    if (m->step < 0)
        return moe_fail(MOE_ERR_INPUT, "%s: step %" PRId64 " is negative", path, m->step);
    if (m->n_rng_state != 4)
        return moe_fail(MOE_ERR_INPUT, "%s: rng_state has %zu words, expected 4", path, m->n_rng_state);
    MOE_TRY(check_shards(path, m));
    for (size_t i = 0; i < m->n_tensors; i++)
        MOE_TRY(check_entry(path, m, m->tensors[i]));
    MOE_TRY(check_entry_set(path, m));
    return MOE_OK;
}

moe_status moe_ckpt_read_manifest(const char *dir, Moe__CheckpointManifest **out)
{
    *out = NULL;
    char path[CKPT_PATH];
    MOE_TRY(moe_ck_join(path, sizeof path, dir, MANIFEST_NAME));
    uint8_t *buf = NULL;
    size_t n = 0;
    MOE_TRY(read_manifest_bytes(dir, path, &buf, &n));
    moe_status st = MOE_OK;
    Moe__CheckpointManifest *m = NULL;
    MOE_TRY_GOTO(check_trailer(path, buf, n), st, done);
    m = moe__checkpoint_manifest__unpack(NULL, n, buf);
    if (!m) {
        st = moe_fail(MOE_ERR_INPUT, "%s: not a valid CheckpointManifest (protobuf parse failed)", path);
        goto done;
    }
    MOE_TRY_GOTO(moe_ck_check_manifest(path, m), st, done);
done:
    moe_free(buf);
    if (st != MOE_OK && m) {
        moe__checkpoint_manifest__free_unpacked(m, NULL);
        m = NULL;
    }
    *out = m;
    return st;
}
