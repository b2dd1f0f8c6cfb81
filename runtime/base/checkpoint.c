/*
** checkpoint: the on-disk format and its checks (contract in checkpoint.h,
** format in proto/checkpoint.proto, story in docs/checkpoints.md).
*/
#include "runtime/base/checkpoint.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <inttypes.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/types.h>
#include <unistd.h>
#include <xxhash.h>

#include "runtime/base/log.h"
#include "runtime/base/mem.h"

#define CKPT_PATH 4096
#define MANIFEST_NAME "manifest.pb"
#define CREATED_BY "moe.c checkpoint v1"
#define TRAILER_TAG 0x79 /* field 15, wire type 1 (fixed64): (15 << 3) | 1 */
#define TRAILER_BYTES 9
#define MAX_MANIFEST_BYTES ((size_t)1 << 30)
#define MAX_STORED_DIMS 8 /* what a manifest may describe; the API loads up to 4 */
#define IO_CHUNK ((size_t)4 << 20)

/* ------------------------------------------------------------------------- */
/* paths and files                                                            */

static moe_status join(char *out, size_t cap, const char *a, const char *b)
{
    int k = snprintf(out, cap, "%s/%s", a, b);
    if (k < 0 || (size_t)k >= cap)
        return moe_fail(MOE_ERR_USAGE, "path too long: %s/%s", a, b);
    return MOE_OK;
}

static int is_dir(const char *path)
{
    struct stat sb;
    return stat(path, &sb) == 0 && S_ISDIR(sb.st_mode);
}

/* "step-" followed by digits only: the only names load considers. */
static int parse_step_name(const char *name, int64_t *step)
{
    if (strncmp(name, "step-", 5) != 0)
        return 0;
    const char *d = name + 5;
    size_t len = strlen(d);
    if (len == 0 || len > 18 || strspn(d, "0123456789") != len)
        return 0;
    *step = (int64_t)strtoll(d, NULL, 10);
    return 1;
}

static void step_name(char *out, size_t cap, int64_t step)
{
    snprintf(out, cap, "step-%07" PRId64, step);
}

static moe_status make_dirs(const char *path)
{
    char tmp[CKPT_PATH];
    int k = snprintf(tmp, sizeof tmp, "%s/", path);
    if (k < 0 || (size_t)k >= sizeof tmp)
        return moe_fail(MOE_ERR_USAGE, "checkpoint path too long: %s", path);
    for (char *p = tmp + 1; *p; p++) {
        if (*p != '/')
            continue;
        *p = '\0';
        if (mkdir(tmp, 0755) != 0 && errno != EEXIST)
            return moe_fail(MOE_ERR_IO, "cannot create directory %s: %s", tmp, strerror(errno));
        *p = '/';
    }
    if (!is_dir(path))
        return moe_fail(MOE_ERR_USAGE, "checkpoint path %s exists and is not a directory", path);
    return MOE_OK;
}

/* A rename or a new file is durable only once its directory is synced. */
static moe_status fsync_dir(const char *path)
{
    int fd = open(path, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (fd < 0)
        return moe_fail(MOE_ERR_IO, "cannot open directory %s to sync it: %s", path, strerror(errno));
    int rc = fsync(fd);
    int err = errno;
    close(fd);
    if (rc != 0 && err != EINVAL) /* EINVAL: this file system does not sync directories */
        return moe_fail(MOE_ERR_IO, "fsync %s: %s", path, strerror(err));
    return MOE_OK;
}

static int rm_entry(const char *p, const struct stat *sb, int flag, struct FTW *ftw)
{
    (void)sb;
    (void)ftw;
    return (flag == FTW_DP || flag == FTW_DNR) ? rmdir(p) : unlink(p);
}

static moe_status rm_tree(const char *path)
{
    struct stat sb;
    if (lstat(path, &sb) != 0 && errno == ENOENT)
        return MOE_OK;
    if (nftw(path, rm_entry, 16, FTW_DEPTH | FTW_PHYS) != 0)
        return moe_fail(MOE_ERR_IO, "cannot remove %s: %s", path, strerror(errno));
    return MOE_OK;
}

static moe_status write_all(FILE *f, const char *path, const void *p, size_t n)
{
    if (n > 0 && fwrite(p, 1, n, f) != n)
        return moe_fail(MOE_ERR_IO, "write %s: %s", path, strerror(errno));
    return MOE_OK;
}

/* fflush + fsync + fclose; f is closed whatever happens. */
static moe_status close_synced(FILE *f, const char *path)
{
    int err = 0;
    if (fflush(f) != 0 || fsync(fileno(f)) != 0)
        err = errno;
    if (fclose(f) != 0 && !err)
        err = errno;
    if (err)
        return moe_fail(MOE_ERR_IO, "writing %s: %s", path, strerror(err));
    return MOE_OK;
}

static moe_status write_file_synced(const char *path, const void *p, size_t n)
{
    FILE *f = fopen(path, "wbe");
    if (!f)
        return moe_fail(MOE_ERR_IO, "cannot create %s: %s", path, strerror(errno));
    moe_status st = write_all(f, path, p, n);
    if (st != MOE_OK) {
        fclose(f);
        return st;
    }
    MOE_TRY(close_synced(f, path));
    return MOE_OK;
}

/* Reads exactly n bytes; a short read is a truncated file. */
static moe_status read_exact(FILE *f, const char *path, void *p, size_t n)
{
    if (n > 0 && fread(p, 1, n, f) != n) {
        if (ferror(f))
            return moe_fail(MOE_ERR_IO, "read %s: %s", path, strerror(errno));
        return moe_fail(MOE_ERR_INPUT, "%s: unexpected end of file (truncated while being read?)", path);
    }
    return MOE_OK;
}

/* ------------------------------------------------------------------------- */
/* shapes                                                                     */

static size_t dtype_size(const char *dtype) { return dtype && strcmp(dtype, "f32") == 0 ? 4 : 0; }

static void fmt_shape(char *out, size_t cap, const int64_t *dims, size_t nd)
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
        fmt_shape(sh, sizeof sh, x->shape, (size_t)x->ndim);
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

/* ------------------------------------------------------------------------- */
/* manifest                                                                   */

moe_status moe_ckpt_write_manifest(const char *dir, const Moe__CheckpointManifest *m)
{
    char path[CKPT_PATH];
    MOE_TRY(join(path, sizeof path, dir, MANIFEST_NAME));
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
    MOE_TRY_GOTO(write_file_synced(path, buf, n + TRAILER_BYTES), st, done);
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
        if (parse_step_name(e->d_name, &s) && s > best)
            best = s;
    if (d)
        closedir(d);
    if (best >= 0) {
        char name[64];
        step_name(name, sizeof name, best);
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
    MOE_TRY_GOTO(read_exact(f, path, *out, *len), st, done);
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

static int cmp_entry_place(const void *a, const void *b)
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
static void entry_rows(const Moe__TensorEntry *e, int64_t *o, int64_t *l, int64_t *g)
{
    int nd = e->n_global_shape > 0;
    *o = nd ? e->local_offset[0] : 0;
    *l = nd ? e->local_shape[0] : 1;
    *g = nd ? e->global_shape[0] : 1;
}

/* By name, then by where the slice starts: each tensor's slices in row order. */
static int cmp_entry_rows(const void *a, const void *b)
{
    const Moe__TensorEntry *x = *(const Moe__TensorEntry *const *)a, *y = *(const Moe__TensorEntry *const *)b;
    int c = strcmp(x->name, y->name);
    if (c != 0)
        return c;
    int64_t ox, lx, gx, oy, ly, gy;
    entry_rows(x, &ox, &lx, &gx);
    entry_rows(y, &oy, &ly, &gy);
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
            fmt_shape(a, sizeof a, v[0]->global_shape, v[0]->n_global_shape);
            fmt_shape(b, sizeof b, e->global_shape, e->n_global_shape);
            return moe_fail(MOE_ERR_INPUT, "%s: tensor %s has slices of different global shapes (%s %s, %s %s)", path,
                            name, v[0]->dtype, a, e->dtype, b);
        }
        for (size_t d = 1; d < e->n_global_shape; d++)
            if (e->local_offset[d] != 0 || e->local_shape[d] != e->global_shape[d])
                return moe_fail(MOE_ERR_INPUT, "%s: tensor %s is cut along dim %zu; this build reads only tensors "
                                "cut along dim 0", path, name, d);
        entry_rows(e, &o, &l, &g);
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
    entry_rows(v[0], &o, &l, &g);
    if (expect != g) {
        int64_t end = g;
        for (size_t i = 0; i < k; i++) {
            int64_t oi, li, gi;
            entry_rows(v[i], &oi, &li, &gi);
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
    qsort(v, n, sizeof *v, cmp_entry_rows);
    for (size_t i = 0; i < n && st == MOE_OK;) {
        size_t j = i + 1;
        while (j < n && strcmp(v[j]->name, v[i]->name) == 0)
            j++;
        st = check_tensor_cover(path, v + i, j - i);
        i = j;
    }
    qsort(v, n, sizeof *v, cmp_entry_place);
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

static moe_status check_manifest(const char *path, const Moe__CheckpointManifest *m)
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
    MOE_TRY(join(path, sizeof path, dir, MANIFEST_NAME));
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
    MOE_TRY_GOTO(check_manifest(path, m), st, done);
done:
    moe_free(buf);
    if (st != MOE_OK && m) {
        moe__checkpoint_manifest__free_unpacked(m, NULL);
        m = NULL;
    }
    *out = m;
    return st;
}

/* ------------------------------------------------------------------------- */
/* verification: stream each shard once, hashing the file and every tensor    */

/* A tensor in a shard's streaming order, with its index in the manifest. */
typedef struct {
    const Moe__TensorEntry *e;
    size_t idx;
} placed;

static int cmp_placed(const void *a, const void *b)
{
    return cmp_entry_place(&((const placed *)a)->e, &((const placed *)b)->e);
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
        moe_status st = read_exact(f, c->path, buf, len);
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
    moe_status st = join(path, sizeof path, dir, c->sh->file);
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
/* save                                                                       */

static const uint8_t zeros[MOE_CKPT_ALIGN];

/* Floats in one dim-0 row of a tensor of shape dims (a scalar: 1). */
static uint64_t row_elems(const int64_t *dims, int ndim)
{
    uint64_t r = 1;
    for (int d = 1; d < ndim; d++)
        r *= (uint64_t)dims[d];
    return r;
}

/* Checks a part table (the same rules for save and load). */
static moe_status check_parts(const moe_ckpt_part *p, int n, const char *what)
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
        fmt_shape(sh, sizeof sh, x->shape, (size_t)x->ndim);
        if (!ok || x->row_start < 0 || x->rows < 0 || x->row_start > g || x->rows > g - x->row_start)
            return moe_fail(MOE_ERR_INTERNAL, "%s: tensor %s %s: rows [%" PRId64 ", +%" PRId64 ") do not fit", what,
                            x->name, sh, x->row_start, x->rows);
        if ((uint64_t)x->rows * row_elems(x->shape, x->ndim) * sizeof(float) != (uint64_t)x->bytes)
            return moe_fail(MOE_ERR_INTERNAL, "%s: tensor %s %s: %" PRId64 " rows but %zu bytes", what, x->name, sh,
                            x->rows, x->bytes);
        if (x->bytes > 0 && !x->data)
            return moe_fail(MOE_ERR_INTERNAL, "%s: tensor %s has no data", what, x->name);
    }
    return MOE_OK;
}

/* Writes the shard and fills in each entry's place and checksum. */
static moe_status write_shard(const char *path, const moe_ckpt_part *t, int n, Moe__TensorEntry *e,
                              Moe__ShardFile *sh)
{
    FILE *f = fopen(path, "wbe");
    if (!f)
        return moe_fail(MOE_ERR_IO, "cannot create %s: %s", path, strerror(errno));
    XXH64_state_t *fs = XXH64_createState();
    moe_status st = MOE_OK;
    if (!fs) {
        st = moe_fail(MOE_ERR_NOMEM, "out of memory for a hash state");
        goto fail;
    }
    XXH64_reset(fs, 0);
    uint64_t pos = 0;
    for (int i = 0; i < n; i++) {
        size_t pad = (size_t)((MOE_CKPT_ALIGN - pos % MOE_CKPT_ALIGN) % MOE_CKPT_ALIGN);
        MOE_TRY_GOTO(write_all(f, path, zeros, pad), st, fail);
        XXH64_update(fs, zeros, pad);
        pos += pad;
        e[i].byte_offset = pos;
        e[i].byte_size = t[i].bytes;
        e[i].xxh64 = XXH64(t[i].data, t[i].bytes, 0);
        MOE_TRY_GOTO(write_all(f, path, t[i].data, t[i].bytes), st, fail);
        if (t[i].bytes > 0)
            XXH64_update(fs, t[i].data, t[i].bytes);
        pos += t[i].bytes;
    }
    sh->size = pos;
    sh->xxh64 = XXH64_digest(fs);
    XXH64_freeState(fs);
    MOE_TRY(close_synced(f, path));
    return MOE_OK;
fail:
    XXH64_freeState(fs);
    fclose(f);
    return st;
}

static void shard_file_name(char *out, size_t cap, uint32_t rank)
{
    snprintf(out, cap, "shard-%05" PRIu32 ".bin", rank);
}

/* The shard file and its index, for any n (0: an empty file, as a
** single-process save of no tensors has always written). */
static moe_status shard_out(const char *tmp_dir, uint32_t rank, const moe_ckpt_part *p, int n, uint8_t **index,
                            size_t *len)
{
    Moe__TensorEntry *e = NULL, **ep = NULL;
    int64_t *dims = NULL;
    moe_status st = MOE_OK;
    size_t cnt = n > 0 ? (size_t)n : 1;
    MOE_TRY_GOTO(moe_alloc((void **)&e, sizeof *e * cnt, "checkpoint entries"), st, done);
    MOE_TRY_GOTO(moe_alloc((void **)&ep, sizeof *ep * cnt, "checkpoint entries"), st, done);
    MOE_TRY_GOTO(moe_alloc((void **)&dims, sizeof *dims * cnt * 3 * MOE_CKPT_MAX_DIMS, "checkpoint shapes"), st,
                 done);
    for (int i = 0; i < n; i++) {
        int64_t *global = dims + (size_t)i * 3 * MOE_CKPT_MAX_DIMS, *local = global + MOE_CKPT_MAX_DIMS,
                *offset = local + MOE_CKPT_MAX_DIMS; /* offsets zeroed by moe_alloc */
        size_t nd = (size_t)p[i].ndim;
        memcpy(global, p[i].shape, sizeof *global * nd);
        memcpy(local, p[i].shape, sizeof *local * nd);
        if (nd > 0) {
            local[0] = p[i].rows;
            offset[0] = p[i].row_start;
        }
        moe__tensor_entry__init(&e[i]);
        e[i].name = (char *)p[i].name;
        e[i].dtype = "f32";
        e[i].n_global_shape = e[i].n_local_shape = e[i].n_local_offset = nd;
        e[i].global_shape = global;
        e[i].local_shape = local;
        e[i].local_offset = offset;
        e[i].shard = 0;
        ep[i] = &e[i];
    }
    char path[CKPT_PATH], name[32];
    shard_file_name(name, sizeof name, rank);
    MOE_TRY_GOTO(join(path, sizeof path, tmp_dir, name), st, done);
    Moe__ShardFile sh = MOE__SHARD_FILE__INIT, *shp = &sh;
    sh.file = name;
    sh.rank = rank;
    MOE_TRY_GOTO(write_shard(path, p, n, e, &sh), st, done);
    /* The index is a manifest holding just this shard (as shard 0) and its slices. */
    Moe__CheckpointManifest m = MOE__CHECKPOINT_MANIFEST__INIT;
    m.n_tensors = (size_t)n;
    m.tensors = ep;
    m.n_shards = 1;
    m.shards = &shp;
    size_t bytes = moe__checkpoint_manifest__get_packed_size(&m);
    MOE_TRY_GOTO(moe_alloc((void **)index, bytes ? bytes : 1, "checkpoint shard index"), st, done);
    if (moe__checkpoint_manifest__pack(&m, *index) != bytes) {
        st = moe_fail(MOE_ERR_INTERNAL, "%s: protobuf-c packed a different size than it announced", path);
        goto done;
    }
    *len = bytes;
done:
    if (st != MOE_OK) {
        moe_free(*index);
        *index = NULL;
        *len = 0;
    }
    moe_free(e);
    moe_free(ep);
    moe_free(dims);
    return st;
}

moe_status moe_ckpt_write_shard(const char *tmp_dir, uint32_t rank, const moe_ckpt_part *p, int n, uint8_t **index,
                                size_t *len)
{
    *index = NULL;
    *len = 0;
    MOE_TRY(check_parts(p, n, "checkpoint save"));
    if (n == 0)
        return MOE_OK;
    MOE_TRY(shard_out(tmp_dir, rank, p, n, index, len));
    return MOE_OK;
}

/* The new step is in place: failing to delete the old one must not fail the
** save (the next save's clean_leftovers retries). */
static void remove_old(const char *path)
{
    if (rm_tree(path) != MOE_OK) {
        moe_warn("%s (the new checkpoint is saved)", moe_errmsg());
        moe_error_clear();
    }
}

/* Moves the finished tmp directory to its final name. A step that already
** exists is swapped atomically (RENAME_EXCHANGE) where the file system can,
** else moved aside first; the old directory is removed only once the new one
** is in place and ROOT is synced. */
static moe_status publish(const char *root, const char *tmp, const char *final, const char *name)
{
    struct stat sb;
    if (lstat(final, &sb) != 0) {
        if (errno != ENOENT)
            return moe_fail(MOE_ERR_IO, "stat %s: %s", final, strerror(errno));
        if (rename(tmp, final) != 0)
            return moe_fail(MOE_ERR_IO, "rename %s -> %s: %s", tmp, final, strerror(errno));
        MOE_TRY(fsync_dir(root));
        return MOE_OK;
    }
    if (renameat2(AT_FDCWD, tmp, AT_FDCWD, final, RENAME_EXCHANGE) == 0) {
        MOE_TRY(fsync_dir(root));
        remove_old(tmp); /* tmp now holds the old step */
        return MOE_OK;
    }
    if (errno != EINVAL && errno != ENOSYS && errno != ENOTSUP)
        return moe_fail(MOE_ERR_IO, "swap %s <-> %s: %s", tmp, final, strerror(errno));
    char old[CKPT_PATH], oldname[96];
    snprintf(oldname, sizeof oldname, ".old-%s-%ld", name, (long)getpid());
    MOE_TRY(join(old, sizeof old, root, oldname));
    MOE_TRY(rm_tree(old));
    if (rename(final, old) != 0)
        return moe_fail(MOE_ERR_IO, "rename %s -> %s: %s", final, old, strerror(errno));
    if (rename(tmp, final) != 0) {
        int err = errno;
        if (rename(old, final) != 0)
            moe_warn("could not move %s back to %s: %s", old, final, strerror(errno));
        return moe_fail(MOE_ERR_IO, "rename %s -> %s: %s", tmp, final, strerror(err));
    }
    MOE_TRY(fsync_dir(root));
    remove_old(old);
    return MOE_OK;
}

static int pid_alive(long pid)
{
    return pid > 0 && pid != (long)getpid() && pid <= (long)INT32_MAX && (kill((pid_t)pid, 0) == 0 || errno == EPERM);
}

/* .tmp-step-N-PID and .old-step-N-PID left by a save that died. A .old- dir
** whose step-N is gone was moved aside right before the crash: put it back. */
static void clean_leftovers(const char *root)
{
    DIR *d = opendir(root);
    if (!d)
        return;
    struct dirent *ent;
    while ((ent = readdir(d)) != NULL) {
        const char *nm = ent->d_name;
        int tmp = strncmp(nm, ".tmp-step-", 10) == 0, old = strncmp(nm, ".old-step-", 10) == 0;
        if (!tmp && !old)
            continue;
        const char *dash = strrchr(nm, '-');
        if (pid_alive(strtol(dash + 1, NULL, 10)))
            continue; /* another live process is saving here */
        char path[CKPT_PATH], final[CKPT_PATH], step[64];
        if (join(path, sizeof path, root, nm) != MOE_OK)
            continue;
        size_t len = (size_t)(dash - (nm + 5));
        snprintf(step, sizeof step, "%.*s", (int)(len < sizeof step ? len : sizeof step - 1), nm + 5);
        int64_t s;
        if (old && parse_step_name(step, &s) && join(final, sizeof final, root, step) == MOE_OK && !is_dir(final)) {
            if (rename(path, final) == 0) {
                moe_warn("restored %s from %s (left by an interrupted save)", final, path);
                continue;
            }
        }
        moe_info("removing %s, left by an interrupted save", path);
        if (rm_tree(path) != MOE_OK) {
            moe_warn("%s", moe_errmsg());
            moe_error_clear();
        }
    }
    closedir(d);
}

typedef struct {
    int64_t step;
    char name[32];
} step_ent;

static int cmp_step_desc(const void *a, const void *b)
{
    const step_ent *x = a, *y = b;
    if (x->step != y->step)
        return x->step > y->step ? -1 : 1;
    return strcmp(y->name, x->name);
}

/* ROOT's step-N directories, newest first. */
static moe_status list_steps(const char *root, step_ent **out, int *count)
{
    *out = NULL;
    *count = 0;
    DIR *d = opendir(root);
    if (!d) {
        if (errno == ENOENT)
            return moe_fail(MOE_ERR_INPUT, "checkpoint directory %s does not exist", root);
        if (errno == ENOTDIR)
            return moe_fail(MOE_ERR_INPUT, "checkpoint directory %s is not a directory", root);
        return moe_fail(MOE_ERR_IO, "cannot open checkpoint directory %s: %s", root, strerror(errno));
    }
    step_ent *v = NULL;
    int n = 0, cap = 0;
    moe_status st = MOE_OK;
    struct dirent *ent;
    while ((ent = readdir(d)) != NULL) {
        int64_t s;
        char path[CKPT_PATH];
        if (!parse_step_name(ent->d_name, &s) || strlen(ent->d_name) >= sizeof v->name)
            continue;
        if (join(path, sizeof path, root, ent->d_name) != MOE_OK || !is_dir(path))
            continue;
        if (n == cap) {
            int ncap = cap ? 2 * cap : 16;
            step_ent *nv = NULL;
            MOE_TRY_GOTO(moe_alloc((void **)&nv, sizeof *nv * (size_t)ncap, "checkpoint list"), st, done);
            if (n)
                memcpy(nv, v, sizeof *v * (size_t)n);
            moe_free(v);
            v = nv;
            cap = ncap;
        }
        v[n].step = s;
        snprintf(v[n].name, sizeof v[n].name, "%s", ent->d_name);
        n++;
    }
    if (n > 1)
        qsort(v, (size_t)n, sizeof *v, cmp_step_desc);
done:
    closedir(d);
    if (st != MOE_OK) {
        moe_free(v);
        return st;
    }
    *out = v;
    *count = n;
    return MOE_OK;
}

/* Cheap check for retention: the manifest verifies and every shard has its
** size (a full checksum pass over old checkpoints at every save costs too much). */
static int step_intact(const char *dir)
{
    Moe__CheckpointManifest *m = NULL;
    int ok = moe_ckpt_read_manifest(dir, &m) == MOE_OK;
    for (size_t i = 0; ok && i < m->n_shards; i++) {
        char path[CKPT_PATH];
        struct stat sb;
        ok = join(path, sizeof path, dir, m->shards[i]->file) == MOE_OK && stat(path, &sb) == 0 &&
             (uint64_t)sb.st_size == m->shards[i]->size;
    }
    if (m)
        moe__checkpoint_manifest__free_unpacked(m, NULL);
    if (!ok)
        moe_error_clear();
    return ok;
}

/* Keeps the newest `keep` intact step dirs (always counting the one just
** saved) and removes every step dir older than the oldest kept one. */
static void apply_retention(const char *root, const char *saved, int keep)
{
    step_ent *v = NULL;
    int n = 0;
    if (list_steps(root, &v, &n) != MOE_OK) {
        moe_warn("keep-checkpoints: %s", moe_errmsg());
        moe_error_clear();
        return;
    }
    int kept = 0;
    for (int i = 0; i < n; i++) {
        char dir[CKPT_PATH];
        if (join(dir, sizeof dir, root, v[i].name) != MOE_OK) {
            moe_error_clear();
            continue;
        }
        if (kept < keep) {
            if (strcmp(v[i].name, saved) == 0 || step_intact(dir))
                kept++;
            continue;
        }
        if (rm_tree(dir) != MOE_OK) {
            moe_warn("keep-checkpoints: %s", moe_errmsg());
            moe_error_clear();
        }
    }
    moe_free(v);
}

moe_status moe_ckpt_prepare(const char *root, int64_t step, char *tmp_dir, size_t cap)
{
    if (!root || !root[0])
        return moe_fail(MOE_ERR_USAGE, "checkpoint save: no directory given");
    if (step < 0)
        return moe_fail(MOE_ERR_INTERNAL, "checkpoint save: bad step");
    MOE_TRY(make_dirs(root));
    clean_leftovers(root);
    char name[32], tmpname[96], tmp[CKPT_PATH];
    step_name(name, sizeof name, step);
    snprintf(tmpname, sizeof tmpname, ".tmp-%s-%ld", name, (long)getpid());
    MOE_TRY(join(tmp, sizeof tmp, root, tmpname));
    MOE_TRY(rm_tree(tmp));
    if (mkdir(tmp, 0755) != 0)
        return moe_fail(MOE_ERR_IO, "cannot create %s: %s", tmp, strerror(errno));
    int k = snprintf(tmp_dir, cap, "%s", tmp);
    if (k < 0 || (size_t)k >= cap) {
        moe_ckpt_discard(tmp);
        return moe_fail(MOE_ERR_INTERNAL, "tmp_dir buffer (%zu bytes) too small for %s", cap, tmp);
    }
    return MOE_OK;
}

void moe_ckpt_discard(const char *tmp_dir)
{
    if (tmp_dir && tmp_dir[0] && rm_tree(tmp_dir) != MOE_OK) {
        moe_warn("%s", moe_errmsg());
        moe_error_clear();
    }
}

/* The writers' indexes, unpacked, as one manifest (pointing into them). */
typedef struct {
    Moe__CheckpointManifest **part;
    Moe__TensorEntry **tensors;
    Moe__ShardFile **shards;
    int nparts;
} merged;

static void merged_free(merged *g)
{
    for (int i = 0; g->part && i < g->nparts; i++)
        if (g->part[i])
            moe__checkpoint_manifest__free_unpacked(g->part[i], NULL);
    moe_free(g->part);
    moe_free(g->tensors);
    moe_free(g->shards);
    memset(g, 0, sizeof *g);
}

static moe_status merge_indexes(const char *dir, const uint8_t *const *index, const size_t *len, int nindex,
                                merged *g, Moe__CheckpointManifest *m)
{
    memset(g, 0, sizeof *g);
    size_t cnt = nindex > 0 ? (size_t)nindex : 1;
    MOE_TRY(moe_alloc((void **)&g->part, sizeof *g->part * cnt, "checkpoint indexes"));
    g->nparts = nindex;
    size_t nt = 0, ns = 0;
    for (int i = 0; i < nindex; i++) {
        if (len[i] == 0)
            continue;
        g->part[i] = moe__checkpoint_manifest__unpack(NULL, len[i], index[i]);
        if (!g->part[i] || g->part[i]->n_shards != 1)
            return moe_fail(MOE_ERR_INTERNAL, "%s: shard index %d (%zu bytes) is not one from moe_ckpt_write_shard",
                            dir, i, len[i]);
        nt += g->part[i]->n_tensors;
        ns++;
    }
    MOE_TRY(moe_alloc((void **)&g->tensors, sizeof *g->tensors * (nt ? nt : 1), "checkpoint entries"));
    MOE_TRY(moe_alloc((void **)&g->shards, sizeof *g->shards * (ns ? ns : 1), "checkpoint shards"));
    nt = ns = 0;
    for (int i = 0; i < nindex; i++) {
        Moe__CheckpointManifest *p = g->part[i];
        if (!p)
            continue;
        for (size_t k = 0; k < p->n_tensors; k++) {
            p->tensors[k]->shard = (uint32_t)ns;
            g->tensors[nt++] = p->tensors[k];
        }
        g->shards[ns++] = p->shards[0];
    }
    m->n_tensors = nt;
    m->tensors = g->tensors;
    m->n_shards = ns;
    m->shards = g->shards;
    return MOE_OK;
}

/* Writes the manifest of the shards already in dir, after checking it. */
static moe_status write_merged_manifest(const char *dir, const moe_ckpt_meta *meta, const char *config_yaml,
                                        const char *layout, uint32_t world_size, const uint8_t *const *index,
                                        const size_t *len, int nindex)
{
    merged g;
    uint64_t rng[4];
    memcpy(rng, meta->rng_state, sizeof rng);
    Moe__CheckpointManifest m = MOE__CHECKPOINT_MANIFEST__INIT;
    m.format_version = MOE_CKPT_FORMAT_VERSION;
    m.step = meta->step;
    m.data_next_sequence = meta->data_next_sequence;
    m.n_rng_state = 4;
    m.rng_state = rng;
    m.config_yaml = (char *)(config_yaml ? config_yaml : "");
    m.layout = (char *)(layout ? layout : "");
    m.world_size = world_size;
    m.created_by = CREATED_BY;
    moe_status st = MOE_OK;
    char path[CKPT_PATH];
    MOE_TRY_GOTO(merge_indexes(dir, index, len, nindex, &g, &m), st, done);
    MOE_TRY_GOTO(join(path, sizeof path, dir, MANIFEST_NAME), st, done);
    MOE_TRY_GOTO(check_manifest(path, &m), st, done);
    MOE_TRY_GOTO(moe_ckpt_write_manifest(dir, &m), st, done);
    MOE_TRY_GOTO(fsync_dir(dir), st, done);
done:
    merged_free(&g);
    return st;
}

moe_status moe_ckpt_commit(const char *root, const char *tmp_dir, const moe_ckpt_meta *meta, const char *config_yaml,
                           const char *layout, uint32_t world_size, const uint8_t *const *index, const size_t *len,
                           int nindex, int keep)
{
    moe_status st = MOE_OK;
    char name[32], final[CKPT_PATH];
    if (!meta || meta->step < 0) {
        st = moe_fail(MOE_ERR_INTERNAL, "checkpoint save: bad step");
        goto fail;
    }
    step_name(name, sizeof name, meta->step);
    MOE_TRY_GOTO(join(final, sizeof final, root, name), st, fail);
    MOE_TRY_GOTO(write_merged_manifest(tmp_dir, meta, config_yaml, layout, world_size, index, len, nindex), st, fail);
    MOE_TRY_GOTO(publish(root, tmp_dir, final, name), st, fail);
    if (keep > 0)
        apply_retention(root, name, keep);
    return MOE_OK;
fail:
    moe_trace_frame(__FILE__, __LINE__);
    if (rm_tree(tmp_dir) != MOE_OK) /* the first failure's message is kept */
        moe_trace_frame(__FILE__, __LINE__);
    return st;
}

moe_status moe_ckpt_save(const char *root, const moe_ckpt_meta *meta, const moe_ckpt_tensor *t, int n,
                         const char *config_yaml, int keep)
{
    if (!root || !root[0])
        return moe_fail(MOE_ERR_USAGE, "checkpoint save: no directory given");
    if (!meta || meta->step < 0)
        return moe_fail(MOE_ERR_INTERNAL, "checkpoint save: bad step");
    MOE_TRY(check_tensors(t, n, "checkpoint save"));
    moe_ckpt_part *p = NULL;
    uint8_t *index = NULL;
    size_t len = 0;
    char tmp[CKPT_PATH];
    moe_status st = MOE_OK;
    MOE_TRY(moe_alloc((void **)&p, sizeof *p * (n > 0 ? (size_t)n : 1), "checkpoint parts"));
    for (int i = 0; i < n; i++)
        p[i] = (moe_ckpt_part){.name = t[i].name, .ndim = t[i].ndim, .row_start = 0,
                               .rows = t[i].ndim ? t[i].shape[0] : 1, .data = t[i].data, .bytes = t[i].bytes};
    for (int i = 0; i < n; i++)
        memcpy(p[i].shape, t[i].shape, sizeof p[i].shape);
    MOE_TRY_GOTO(moe_ckpt_prepare(root, meta->step, tmp, sizeof tmp), st, done);
    st = shard_out(tmp, 0, p, n, &index, &len); /* check_tensors covered what check_parts would */
    if (st != MOE_OK) {
        moe_trace_frame(__FILE__, __LINE__);
        moe_ckpt_discard(tmp);
        goto done;
    }
    const uint8_t *idx[1] = {index};
    MOE_TRY_GOTO(moe_ckpt_commit(root, tmp, meta, config_yaml, NULL, 1, idx, &len, 1, keep), st, done);
done:
    moe_free(index);
    moe_free(p);
    return st;
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
        qsort(w->v, w->n, sizeof *w->v, cmp_entry_rows);
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
    entry_rows(e, &o, &l, &g);
    return o < p->row_start + p->rows && p->row_start < o + l;
}

/* Names and shapes of the caller's parts against the manifest: every part
** names a tensor of its global shape, every tensor is asked for. */
static moe_status match_parts(const view *w, const moe_ckpt_part *p, int n)
{
    char *used = NULL;
    moe_status st = MOE_OK;
    MOE_TRY(moe_alloc((void **)&used, w->n ? w->n : 1, "checkpoint match"));
    for (int i = 0; i < n; i++) {
        char ms[160], cs[160];
        size_t lo, hi;
        fmt_shape(ms, sizeof ms, p[i].shape, (size_t)p[i].ndim);
        if (!view_find(w, p[i].name, &lo, &hi)) {
            st = moe_fail(MOE_ERR_INPUT, "%s: checkpoint has no such tensor, model has %s (in %s)", p[i].name, ms,
                          w->dir);
            goto done;
        }
        const Moe__TensorEntry *e = w->v[lo];
        fmt_shape(cs, sizeof cs, e->global_shape, e->n_global_shape);
        int same = e->n_global_shape == (size_t)p[i].ndim;
        for (int d = 0; same && d < p[i].ndim; d++)
            same = e->global_shape[d] == p[i].shape[d];
        if (!same) {
            st = moe_fail(MOE_ERR_INPUT, "%s: checkpoint has %s, model has %s (in %s)", p[i].name, cs, ms, w->dir);
            goto done;
        }
        if (strcmp(e->dtype, "f32") != 0) {
            st = moe_fail(MOE_ERR_INPUT, "%s: checkpoint stores %s, the model needs f32 (in %s)", p[i].name, e->dtype,
                          w->dir);
            goto done;
        }
        memset(used + lo, 1, hi - lo);
    }
    for (size_t k = 0; k < w->n; k++)
        if (!used[k]) {
            char cs[160];
            fmt_shape(cs, sizeof cs, w->v[k]->global_shape, w->v[k]->n_global_shape);
            st = moe_fail(MOE_ERR_INPUT, "%s: checkpoint has %s, model has no such tensor (in %s)", w->v[k]->name, cs,
                          w->dir);
            goto done;
        }
done:
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
        st = read_exact(f, path, buf, len);
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
                MOE_TRY_GOTO(join(path, sizeof path, w->dir, m->shards[s]->file), st, done);
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
    uint64_t rb = row_elems(p->shape, p->ndim) * sizeof(float);
    for (size_t k = lo; k < hi; k++) {
        const Moe__TensorEntry *e = w->v[k];
        int64_t o, l, g;
        entry_rows(e, &o, &l, &g);
        int64_t a = o > p->row_start ? o : p->row_start;
        int64_t b = o + l < p->row_start + p->rows ? o + l : p->row_start + p->rows;
        if (a >= b || e->byte_size == 0)
            continue;
        char path[CKPT_PATH];
        MOE_TRY(join(path, sizeof path, w->dir, w->m->shards[e->shard]->file));
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
            st = read_exact(f, path, src, (size_t)e->byte_size);
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
    MOE_TRY_GOTO(check_parts(&p, 1, "checkpoint read"), st, done);
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
    if (st == MOE_OK) {
        st = match_parts(&w, p, n);
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
    step_ent *v = NULL;
    int count = 0;
    MOE_TRY(list_steps(root, &v, &count));
    if (count == 0) {
        moe_free(v);
        return moe_fail(MOE_ERR_INPUT, "no checkpoints in %s", root);
    }
    char last[768] = "";
    moe_status st = MOE_ERR_INPUT;
    for (int i = 0; i < count; i++) {
        char dir[CKPT_PATH];
        MOE_TRY_GOTO(join(dir, sizeof dir, root, v[i].name), st, done);
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
    MOE_TRY(check_parts(p, n, "checkpoint load"));
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
    MOE_TRY(join(manifest, sizeof manifest, path, MANIFEST_NAME));
    if (parse_step_name(base, &step) || access(manifest, F_OK) == 0) {
        int code;
        MOE_TRY(load_dir_parts(path, meta, p, n, g, &code));
        MOE_TRY(set_loaded(loaded_dir, cap, path));
        return MOE_OK;
    }
    MOE_TRY(load_latest_parts(path, meta, p, n, g, loaded_dir, cap));
    return MOE_OK;
}

/* ---- whole tensors, one process ---------------------------------------------- */

static moe_status whole_parts(const moe_ckpt_tensor *t, int n, moe_ckpt_part **out)
{
    *out = NULL;
    MOE_TRY(check_tensors(t, n, "checkpoint load"));
    MOE_TRY(moe_alloc((void **)out, sizeof **out * (n > 0 ? (size_t)n : 1), "checkpoint parts"));
    for (int i = 0; i < n; i++) {
        moe_ckpt_part *q = &(*out)[i];
        *q = (moe_ckpt_part){.name = t[i].name, .ndim = t[i].ndim, .row_start = 0,
                             .rows = t[i].ndim ? t[i].shape[0] : 1, .data = t[i].data, .bytes = t[i].bytes};
        memcpy(q->shape, t[i].shape, sizeof q->shape);
    }
    return MOE_OK;
}

moe_status moe_ckpt_load_dir(const char *dir, moe_ckpt_meta *meta, moe_ckpt_tensor *t, int n)
{
    moe_ckpt_part *p = NULL;
    MOE_TRY(whole_parts(t, n, &p));
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
    MOE_TRY(whole_parts(t, n, &p));
    moe_status st = load_latest_parts(root, meta, p, n, NULL, loaded_dir, cap);
    moe_free(p);
    MOE_TRY(st);
    return MOE_OK;
}

moe_status moe_ckpt_load_path(const char *path, moe_ckpt_meta *meta, moe_ckpt_tensor *t, int n, char *loaded_dir,
                              size_t cap)
{
    moe_ckpt_part *p = NULL;
    MOE_TRY(whole_parts(t, n, &p));
    moe_status st = moe_ckpt_load_parts(path, meta, p, n, NULL, loaded_dir, cap);
    moe_free(p);
    MOE_TRY(st);
    return MOE_OK;
}
