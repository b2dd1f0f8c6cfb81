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

static int cmp_entry_name(const void *a, const void *b)
{
    const Moe__TensorEntry *x = *(const Moe__TensorEntry *const *)a, *y = *(const Moe__TensorEntry *const *)b;
    return strcmp(x->name, y->name);
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

/* Names unique and byte ranges disjoint: both need a sorted view. */
static moe_status check_entry_set(const char *path, const Moe__CheckpointManifest *m)
{
    size_t n = m->n_tensors;
    if (n < 2)
        return MOE_OK;
    const Moe__TensorEntry **v = NULL;
    MOE_TRY(moe_alloc((void **)&v, sizeof *v * n, "manifest check"));
    memcpy(v, m->tensors, sizeof *v * n);
    moe_status st = MOE_OK;
    qsort(v, n, sizeof *v, cmp_entry_name);
    for (size_t i = 1; i < n && st == MOE_OK; i++)
        if (strcmp(v[i - 1]->name, v[i]->name) == 0)
            st = moe_fail(MOE_ERR_INPUT, "%s: tensor %s is listed twice", path, v[i]->name);
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

moe_status moe_ckpt_verify(const char *dir, const Moe__CheckpointManifest *m, int *shard_ok, int *tensor_ok)
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
        shard_check c = {.sh = m->shards[s], .v = v + lo, .nv = hi - lo, .tensor_ok = tensor_ok, .st = MOE_OK};
        int ok = verify_shard(&c, dir, buf);
        if (shard_ok)
            shard_ok[s] = ok;
        if (first == MOE_OK)
            first = c.st;
        lo = hi;
    }
    st = first;
done:
    moe_free(v);
    moe_free(buf);
    return st;
}

/* ------------------------------------------------------------------------- */
/* save                                                                       */

static const uint8_t zeros[MOE_CKPT_ALIGN];

/* Writes the shard and fills in each entry's place and checksum. */
static moe_status write_shard(const char *path, const moe_ckpt_tensor *t, int n, Moe__TensorEntry *e,
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

/* Writes the whole step (shard, manifest) into the empty directory dir. */
static moe_status write_step(const char *dir, const moe_ckpt_meta *meta, const moe_ckpt_tensor *t, int n,
                             const char *config_yaml)
{
    Moe__TensorEntry *e = NULL, **ep = NULL;
    int64_t *dims = NULL;
    moe_status st = MOE_OK;
    size_t cnt = n > 0 ? (size_t)n : 1;
    MOE_TRY_GOTO(moe_alloc((void **)&e, sizeof *e * cnt, "checkpoint entries"), st, done);
    MOE_TRY_GOTO(moe_alloc((void **)&ep, sizeof *ep * cnt, "checkpoint entries"), st, done);
    MOE_TRY_GOTO(moe_alloc((void **)&dims, sizeof *dims * cnt * 2 * MOE_CKPT_MAX_DIMS, "checkpoint shapes"), st,
                 done);
    for (int i = 0; i < n; i++) {
        int64_t *shape = dims + (size_t)i * 2 * MOE_CKPT_MAX_DIMS, *offset = shape + MOE_CKPT_MAX_DIMS;
        size_t nd = (size_t)t[i].ndim;
        memcpy(shape, t[i].shape, sizeof *shape * nd);
        moe__tensor_entry__init(&e[i]);
        /* One process holds every tensor whole: local == global, offset 0. */
        e[i].name = (char *)t[i].name;
        e[i].dtype = "f32";
        e[i].n_global_shape = e[i].n_local_shape = e[i].n_local_offset = nd;
        e[i].global_shape = e[i].local_shape = shape;
        e[i].local_offset = offset; /* zeroed by moe_alloc */
        e[i].shard = 0;
        ep[i] = &e[i];
    }
    char path[CKPT_PATH], shard_name[32];
    snprintf(shard_name, sizeof shard_name, "shard-%05d.bin", 0);
    MOE_TRY_GOTO(join(path, sizeof path, dir, shard_name), st, done);
    Moe__ShardFile sh = MOE__SHARD_FILE__INIT, *shp = &sh;
    sh.file = shard_name;
    sh.rank = 0;
    MOE_TRY_GOTO(write_shard(path, t, n, e, &sh), st, done);

    uint64_t rng[4];
    memcpy(rng, meta->rng_state, sizeof rng);
    Moe__CheckpointManifest m = MOE__CHECKPOINT_MANIFEST__INIT;
    m.format_version = MOE_CKPT_FORMAT_VERSION;
    m.step = meta->step;
    m.data_next_sequence = meta->data_next_sequence;
    m.n_rng_state = 4;
    m.rng_state = rng;
    m.config_yaml = (char *)(config_yaml ? config_yaml : "");
    m.world_size = 1;
    m.n_tensors = (size_t)n;
    m.tensors = ep;
    m.n_shards = 1;
    m.shards = &shp;
    m.created_by = CREATED_BY;
    MOE_TRY_GOTO(moe_ckpt_write_manifest(dir, &m), st, done);
    MOE_TRY_GOTO(fsync_dir(dir), st, done);
done:
    moe_free(e);
    moe_free(ep);
    moe_free(dims);
    return st;
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

moe_status moe_ckpt_save(const char *root, const moe_ckpt_meta *meta, const moe_ckpt_tensor *t, int n,
                         const char *config_yaml, int keep)
{
    if (!root || !root[0])
        return moe_fail(MOE_ERR_USAGE, "checkpoint save: no directory given");
    if (!meta || meta->step < 0)
        return moe_fail(MOE_ERR_INTERNAL, "checkpoint save: bad step");
    MOE_TRY(check_tensors(t, n, "checkpoint save"));
    MOE_TRY(make_dirs(root));
    clean_leftovers(root);

    char name[32], tmpname[96], tmp[CKPT_PATH], final[CKPT_PATH];
    step_name(name, sizeof name, meta->step);
    snprintf(tmpname, sizeof tmpname, ".tmp-%s-%ld", name, (long)getpid());
    MOE_TRY(join(tmp, sizeof tmp, root, tmpname));
    MOE_TRY(join(final, sizeof final, root, name));
    MOE_TRY(rm_tree(tmp));
    if (mkdir(tmp, 0755) != 0)
        return moe_fail(MOE_ERR_IO, "cannot create %s: %s", tmp, strerror(errno));
    moe_status st = write_step(tmp, meta, t, n, config_yaml);
    if (st == MOE_OK)
        st = publish(root, tmp, final, name);
    if (st != MOE_OK) {
        moe_trace_frame(__FILE__, __LINE__);
        if (rm_tree(tmp) != MOE_OK) /* the first failure's message is kept */
            moe_trace_frame(__FILE__, __LINE__);
        return st;
    }
    if (keep > 0)
        apply_retention(root, name, keep);
    return MOE_OK;
}

/* ------------------------------------------------------------------------- */
/* load                                                                       */

static const Moe__TensorEntry *find_entry(const Moe__TensorEntry **sorted, size_t n, const char *name)
{
    size_t lo = 0, hi = n;
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        int c = strcmp(sorted[mid]->name, name);
        if (c == 0)
            return sorted[mid];
        if (c < 0)
            lo = mid + 1;
        else
            hi = mid;
    }
    return NULL;
}

static int entry_is_whole(const Moe__TensorEntry *e)
{
    for (size_t d = 0; d < e->n_global_shape; d++)
        if (e->local_shape[d] != e->global_shape[d] || e->local_offset[d] != 0)
            return 0;
    return 1;
}

/* Names and shapes of the model against the manifest; map[i] = t[i]'s entry. */
static moe_status match_tensors(const char *dir, const Moe__CheckpointManifest *m, const moe_ckpt_tensor *t, int n,
                                const Moe__TensorEntry **map)
{
    size_t ne = m->n_tensors;
    const Moe__TensorEntry **sorted = NULL;
    char *used = NULL;
    moe_status st = MOE_OK;
    MOE_TRY_GOTO(moe_alloc((void **)&sorted, sizeof *sorted * (ne ? ne : 1), "checkpoint match"), st, done);
    MOE_TRY_GOTO(moe_alloc((void **)&used, ne ? ne : 1, "checkpoint match"), st, done);
    memcpy(sorted, m->tensors, sizeof *sorted * ne);
    qsort(sorted, ne, sizeof *sorted, cmp_entry_name);
    for (int i = 0; i < n; i++) {
        char ms[160], cs[160];
        fmt_shape(ms, sizeof ms, t[i].shape, (size_t)t[i].ndim);
        const Moe__TensorEntry *e = find_entry(sorted, ne, t[i].name);
        if (!e) {
            st = moe_fail(MOE_ERR_INPUT, "%s: checkpoint has no such tensor, model has %s (in %s)", t[i].name,
                          ms, dir);
            goto done;
        }
        fmt_shape(cs, sizeof cs, e->global_shape, e->n_global_shape);
        int same = e->n_global_shape == (size_t)t[i].ndim;
        for (int d = 0; same && d < t[i].ndim; d++)
            same = e->global_shape[d] == t[i].shape[d];
        if (!same) {
            st = moe_fail(MOE_ERR_INPUT, "%s: checkpoint has %s, model has %s (in %s)", t[i].name, cs, ms, dir);
            goto done;
        }
        if (strcmp(e->dtype, "f32") != 0) {
            st = moe_fail(MOE_ERR_INPUT, "%s: checkpoint stores %s, the model needs f32 (in %s)", t[i].name, e->dtype,
                          dir);
            goto done;
        }
        if (m->world_size != 1 || !entry_is_whole(e)) {
            st = moe_fail(MOE_ERR_INPUT, "%s: the checkpoint in %s holds this tensor split across %u ranks; this "
                          "build loads only whole (world_size 1) checkpoints", t[i].name, dir, m->world_size);
            goto done;
        }
        map[i] = e;
    }
    /* Every entry the model did not ask for is an extra tensor. */
    for (int i = 0; i < n; i++) {
        const Moe__TensorEntry **slot = bsearch(&map[i], sorted, ne, sizeof *sorted, cmp_entry_name);
        used[slot - sorted] = 1;
    }
    for (size_t k = 0; k < ne; k++)
        if (!used[k]) {
            char cs[160];
            fmt_shape(cs, sizeof cs, sorted[k]->global_shape, sorted[k]->n_global_shape);
            st = moe_fail(MOE_ERR_INPUT, "%s: checkpoint has %s, model has no such tensor (in %s)", sorted[k]->name,
                          cs, dir);
            goto done;
        }
done:
    moe_free(sorted);
    moe_free(used);
    return st;
}

/* Everything has been verified; copy into the caller's buffers, re-hashing so
** a file changed between the check and the copy is still caught. */
static moe_status read_tensors(const char *dir, const Moe__CheckpointManifest *m, moe_ckpt_tensor *t, int n,
                               const Moe__TensorEntry **map)
{
    for (size_t s = 0; s < m->n_shards; s++) {
        char path[CKPT_PATH];
        MOE_TRY(join(path, sizeof path, dir, m->shards[s]->file));
        FILE *f = NULL;
        moe_status st = MOE_OK;
        for (int i = 0; i < n; i++) {
            const Moe__TensorEntry *e = map[i];
            if (e->shard != s || e->byte_size == 0)
                continue;
            if (!f && !(f = fopen(path, "rbe")))
                return moe_fail(MOE_ERR_IO, "cannot open %s: %s", path, strerror(errno));
            if (fseeko(f, (off_t)e->byte_offset, SEEK_SET) != 0) {
                st = moe_fail(MOE_ERR_IO, "seek %s: %s", path, strerror(errno));
                break;
            }
            if ((st = read_exact(f, path, t[i].data, t[i].bytes)) != MOE_OK)
                break;
            if (XXH64(t[i].data, t[i].bytes, 0) != e->xxh64) {
                st = moe_fail(MOE_ERR_IO, "%s: tensor '%s' changed while it was being loaded", path, e->name);
                break;
            }
        }
        if (f)
            fclose(f);
        MOE_TRY(st);
    }
    return MOE_OK;
}

/* *mismatch = 1 when the failure is about the model, not the files: no older
** checkpoint of the same run will do better, so load_latest stops. */
static moe_status load_dir(const char *dir, moe_ckpt_meta *meta, moe_ckpt_tensor *t, int n, int *mismatch)
{
    *mismatch = 0;
    MOE_TRY(check_tensors(t, n, "checkpoint load"));
    Moe__CheckpointManifest *m = NULL;
    MOE_TRY(moe_ckpt_read_manifest(dir, &m));
    const Moe__TensorEntry **map = NULL;
    moe_status st = MOE_OK;
    MOE_TRY_GOTO(moe_alloc((void **)&map, sizeof *map * (n > 0 ? (size_t)n : 1), "checkpoint match"), st, done);
    st = match_tensors(dir, m, t, n, map);
    if (st != MOE_OK) {
        *mismatch = st == MOE_ERR_INPUT;
        moe_trace_frame(__FILE__, __LINE__);
        goto done;
    }
    MOE_TRY_GOTO(moe_ckpt_verify(dir, m, NULL, NULL), st, done);
    MOE_TRY_GOTO(read_tensors(dir, m, t, n, map), st, done);
    meta->step = m->step;
    meta->data_next_sequence = m->data_next_sequence;
    memcpy(meta->rng_state, m->rng_state, sizeof meta->rng_state);
done:
    moe_free(map);
    moe__checkpoint_manifest__free_unpacked(m, NULL);
    return st;
}

moe_status moe_ckpt_load_dir(const char *dir, moe_ckpt_meta *meta, moe_ckpt_tensor *t, int n)
{
    int mismatch;
    MOE_TRY(load_dir(dir, meta, t, n, &mismatch));
    return MOE_OK;
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

moe_status moe_ckpt_load_latest(const char *root, moe_ckpt_meta *meta, moe_ckpt_tensor *t, int n, char *loaded_dir,
                                size_t cap)
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
        int mismatch;
        st = load_dir(dir, meta, t, n, &mismatch);
        if (st == MOE_OK) {
            MOE_TRY_GOTO(set_loaded(loaded_dir, cap, dir), st, done);
            goto done;
        }
        if (mismatch || (st != MOE_ERR_INPUT && st != MOE_ERR_IO)) {
            moe_trace_frame(__FILE__, __LINE__);
            goto done;
        }
        snprintf(last, sizeof last, "%s", moe_errmsg());
        moe_warn("checkpoint %s is unusable: %s; %s", dir, last,
                 i + 1 < count ? "trying the previous one" : "no older checkpoint left");
        moe_error_clear();
    }
    st = moe_fail(MOE_ERR_INPUT, "no valid checkpoint in %s (%d tried; the last problem: %s)", root, count, last);
done:
    moe_free(v);
    return st;
}

moe_status moe_ckpt_load_path(const char *path, moe_ckpt_meta *meta, moe_ckpt_tensor *t, int n, char *loaded_dir,
                              size_t cap)
{
    if (!path || !path[0])
        return moe_fail(MOE_ERR_USAGE, "checkpoint load: no path given");
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
        MOE_TRY(moe_ckpt_load_dir(path, meta, t, n));
        MOE_TRY(set_loaded(loaded_dir, cap, path));
        return MOE_OK;
    }
    MOE_TRY(moe_ckpt_load_latest(path, meta, t, n, loaded_dir, cap));
    return MOE_OK;
}
