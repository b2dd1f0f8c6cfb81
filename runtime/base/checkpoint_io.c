/*
** checkpoint_io: the file-system pieces the checkpoint writer and reader share
** (declared in checkpoint_internal.h): paths, durable writes, exact reads,
** tree removal, and the step-N directories of a ROOT.
*/
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/types.h>
#include <unistd.h>

#include "runtime/base/checkpoint_internal.h"
#include "runtime/base/fs.h"
#include "runtime/base/mem.h"

/* ------------------------------------------------------------------------- */
/* paths and files                                                            */

moe_status moe_ck_join(char *out, size_t cap, const char *a, const char *b)
{
    int k = snprintf(out, cap, "%s/%s", a, b);
    if (k < 0 || (size_t)k >= cap)
        return moe_fail(MOE_ERR_USAGE, "path too long: %s/%s", a, b);
    return MOE_OK;
}

int moe_ck_is_dir(const char *path)
{
    struct stat sb;
    return stat(path, &sb) == 0 && S_ISDIR(sb.st_mode);
}

/* "step-" followed by digits only: the only names load considers. */
int moe_ck_parse_step_name(const char *name, int64_t *step)
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

void moe_ck_step_name(char *out, size_t cap, int64_t step)
{
    snprintf(out, cap, "step-%07" PRId64, step);
}

moe_status moe_ck_make_dirs(const char *path)
{
    MOE_TRY(moe_mkdir_p(path));
    return MOE_OK;
}

/* A rename or a new file is durable only once its directory is synced. */
moe_status moe_ck_fsync_dir(const char *path)
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

moe_status moe_ck_rm_tree(const char *path)
{
    struct stat sb;
    if (lstat(path, &sb) != 0 && errno == ENOENT)
        return MOE_OK;
    if (nftw(path, rm_entry, 16, FTW_DEPTH | FTW_PHYS) != 0)
        return moe_fail(MOE_ERR_IO, "cannot remove %s: %s", path, strerror(errno));
    return MOE_OK;
}

moe_status moe_ck_write_all(FILE *f, const char *path, const void *p, size_t n)
{
    if (n > 0 && fwrite(p, 1, n, f) != n)
        return moe_fail(MOE_ERR_IO, "write %s: %s", path, strerror(errno));
    return MOE_OK;
}

/* fflush + fsync + fclose; f is closed whatever happens. */
moe_status moe_ck_close_synced(FILE *f, const char *path)
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

moe_status moe_ck_write_file_synced(const char *path, const void *p, size_t n)
{
    FILE *f = fopen(path, "wbe");
    if (!f)
        return moe_fail(MOE_ERR_IO, "cannot create %s: %s", path, strerror(errno));
    moe_status st = moe_ck_write_all(f, path, p, n);
    if (st != MOE_OK) {
        fclose(f);
        return st;
    }
    MOE_TRY(moe_ck_close_synced(f, path));
    return MOE_OK;
}

/* Reads exactly n bytes; a short read is a truncated file. */
moe_status moe_ck_read_exact(FILE *f, const char *path, void *p, size_t n)
{
    if (n > 0 && fread(p, 1, n, f) != n) {
        if (ferror(f))
            return moe_fail(MOE_ERR_IO, "read %s: %s", path, strerror(errno));
        return moe_fail(MOE_ERR_INPUT, "%s: unexpected end of file (truncated while being read?)", path);
    }
    return MOE_OK;
}

/* ------------------------------------------------------------------------- */
/* step directories                                                           */

static int cmp_step_desc(const void *a, const void *b)
{
    const moe_ck_step_ent *x = a, *y = b;
    if (x->step != y->step)
        return x->step > y->step ? -1 : 1;
    return strcmp(y->name, x->name);
}

/* ROOT's step-N directories, newest first. */
moe_status moe_ck_list_steps(const char *root, moe_ck_step_ent **out, int *count)
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
    moe_ck_step_ent *v = NULL;
    int n = 0, cap = 0;
    moe_status st = MOE_OK;
    struct dirent *ent;
    while ((ent = readdir(d)) != NULL) {
        int64_t s;
        char path[CKPT_PATH];
        if (!moe_ck_parse_step_name(ent->d_name, &s) || strlen(ent->d_name) >= sizeof v->name)
            continue;
        if (moe_ck_join(path, sizeof path, root, ent->d_name) != MOE_OK || !moe_ck_is_dir(path))
            continue;
        if (n == cap) {
            int ncap = cap ? 2 * cap : 16;
            moe_ck_step_ent *nv = NULL;
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
