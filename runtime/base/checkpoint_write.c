/*
** checkpoint_write: saving. moe_ckpt_prepare makes the tmp directory,
** moe_ckpt_write_shard writes one writer's shard and its index, and
** moe_ckpt_commit merges the indexes into a manifest (checked like a loader
** would), publishes the directory atomically and applies keep-last-K;
** moe_ckpt_save is those three for one process. Also the cleanup of what dead
** saves left behind. Contract in checkpoint.h, shared declarations in
** checkpoint_internal.h.
*/
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <signal.h>
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

#define CREATED_BY "moe.c checkpoint v1"

/* ------------------------------------------------------------------------- */
/* shards                                                                     */

static const uint8_t zeros[MOE_CKPT_ALIGN];

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
        MOE_TRY_GOTO(moe_ck_write_all(f, path, zeros, pad), st, fail);
        XXH64_update(fs, zeros, pad);
        pos += pad;
        e[i].byte_offset = pos;
        e[i].byte_size = t[i].bytes;
        e[i].xxh64 = XXH64(t[i].data, t[i].bytes, 0);
        MOE_TRY_GOTO(moe_ck_write_all(f, path, t[i].data, t[i].bytes), st, fail);
        if (t[i].bytes > 0)
            XXH64_update(fs, t[i].data, t[i].bytes);
        pos += t[i].bytes;
    }
    sh->size = pos;
    sh->xxh64 = XXH64_digest(fs);
    XXH64_freeState(fs);
    MOE_TRY(moe_ck_close_synced(f, path));
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
    MOE_TRY_GOTO(moe_ck_join(path, sizeof path, tmp_dir, name), st, done);
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
    MOE_TRY(moe_ck_check_parts(p, n, "checkpoint save"));
    if (n == 0)
        return MOE_OK;
    MOE_TRY(shard_out(tmp_dir, rank, p, n, index, len));
    return MOE_OK;
}

/* ------------------------------------------------------------------------- */
/* publishing, keep-last-K, and what dead saves left behind                  */

/* The new step is in place: failing to delete the old one must not fail the
** save (the next save's clean_leftovers retries). */
static void remove_old(const char *path)
{
    if (moe_ck_rm_tree(path) != MOE_OK) {
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
        MOE_TRY(moe_ck_fsync_dir(root));
        return MOE_OK;
    }
    if (renameat2(AT_FDCWD, tmp, AT_FDCWD, final, RENAME_EXCHANGE) == 0) {
        MOE_TRY(moe_ck_fsync_dir(root));
        remove_old(tmp); /* tmp now holds the old step */
        return MOE_OK;
    }
    if (errno != EINVAL && errno != ENOSYS && errno != ENOTSUP)
        return moe_fail(MOE_ERR_IO, "swap %s <-> %s: %s", tmp, final, strerror(errno));
    char old[CKPT_PATH], oldname[96];
    snprintf(oldname, sizeof oldname, ".old-%s-%ld", name, (long)getpid());
    MOE_TRY(moe_ck_join(old, sizeof old, root, oldname));
    MOE_TRY(moe_ck_rm_tree(old));
    if (rename(final, old) != 0)
        return moe_fail(MOE_ERR_IO, "rename %s -> %s: %s", final, old, strerror(errno));
    if (rename(tmp, final) != 0) {
        int err = errno;
        if (rename(old, final) != 0)
            moe_warn("could not move %s back to %s: %s", old, final, strerror(errno));
        return moe_fail(MOE_ERR_IO, "rename %s -> %s: %s", tmp, final, strerror(err));
    }
    MOE_TRY(moe_ck_fsync_dir(root));
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
        if (moe_ck_join(path, sizeof path, root, nm) != MOE_OK)
            continue;
        size_t len = (size_t)(dash - (nm + 5));
        snprintf(step, sizeof step, "%.*s", (int)(len < sizeof step ? len : sizeof step - 1), nm + 5);
        int64_t s;
        if (old && moe_ck_parse_step_name(step, &s) && moe_ck_join(final, sizeof final, root, step) == MOE_OK && !moe_ck_is_dir(final)) {
            if (rename(path, final) == 0) {
                moe_warn("restored %s from %s (left by an interrupted save)", final, path);
                continue;
            }
        }
        moe_info("removing %s, left by an interrupted save", path);
        if (moe_ck_rm_tree(path) != MOE_OK) {
            moe_warn("%s", moe_errmsg());
            moe_error_clear();
        }
    }
    closedir(d);
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
        ok = moe_ck_join(path, sizeof path, dir, m->shards[i]->file) == MOE_OK && stat(path, &sb) == 0 &&
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
    moe_ck_step_ent *v = NULL;
    int n = 0;
    if (moe_ck_list_steps(root, &v, &n) != MOE_OK) {
        moe_warn("keep-checkpoints: %s", moe_errmsg());
        moe_error_clear();
        return;
    }
    int kept = 0;
    for (int i = 0; i < n; i++) {
        char dir[CKPT_PATH];
        if (moe_ck_join(dir, sizeof dir, root, v[i].name) != MOE_OK) {
            moe_error_clear();
            continue;
        }
        if (kept < keep) {
            if (strcmp(v[i].name, saved) == 0 || step_intact(dir))
                kept++;
            continue;
        }
        if (moe_ck_rm_tree(dir) != MOE_OK) {
            moe_warn("keep-checkpoints: %s", moe_errmsg());
            moe_error_clear();
        }
    }
    moe_free(v);
}

/* ------------------------------------------------------------------------- */
/* prepare / commit / save                                                    */

moe_status moe_ckpt_prepare(const char *root, int64_t step, char *tmp_dir, size_t cap)
{
    if (!root || !root[0])
        return moe_fail(MOE_ERR_USAGE, "checkpoint save: no directory given");
    if (step < 0)
        return moe_fail(MOE_ERR_INTERNAL, "checkpoint save: bad step");
    MOE_TRY(moe_ck_make_dirs(root));
    clean_leftovers(root);
    char name[32], tmpname[96], tmp[CKPT_PATH];
    moe_ck_step_name(name, sizeof name, step);
    snprintf(tmpname, sizeof tmpname, ".tmp-%s-%ld", name, (long)getpid());
    MOE_TRY(moe_ck_join(tmp, sizeof tmp, root, tmpname));
    MOE_TRY(moe_ck_rm_tree(tmp));
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
    if (tmp_dir && tmp_dir[0] && moe_ck_rm_tree(tmp_dir) != MOE_OK) {
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
    MOE_TRY_GOTO(moe_ck_join(path, sizeof path, dir, MANIFEST_NAME), st, done);
    MOE_TRY_GOTO(moe_ck_check_manifest(path, &m), st, done);
    MOE_TRY_GOTO(moe_ckpt_write_manifest(dir, &m), st, done);
    MOE_TRY_GOTO(moe_ck_fsync_dir(dir), st, done);
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
    moe_ck_step_name(name, sizeof name, meta->step);
    MOE_TRY_GOTO(moe_ck_join(final, sizeof final, root, name), st, fail);
    MOE_TRY_GOTO(write_merged_manifest(tmp_dir, meta, config_yaml, layout, world_size, index, len, nindex), st, fail);
    MOE_TRY_GOTO(publish(root, tmp_dir, final, name), st, fail);
    if (keep > 0)
        apply_retention(root, name, keep);
    return MOE_OK;
fail:
    moe_trace_frame(__FILE__, __LINE__);
    if (moe_ck_rm_tree(tmp_dir) != MOE_OK) /* the first failure's message is kept */
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
    moe_ckpt_part *p = NULL;
    MOE_TRY(moe_ck_tensor_parts(t, n, "checkpoint save", &p));
    uint8_t *index = NULL;
    size_t len = 0;
    char tmp[CKPT_PATH];
    moe_status st = MOE_OK;
    MOE_TRY_GOTO(moe_ckpt_prepare(root, meta->step, tmp, sizeof tmp), st, done);
    st = shard_out(tmp, 0, p, n, &index, &len); /* the tensor checks covered what moe_ck_check_parts would */
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
