#include "runtime/base/fs.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

moe_status moe_mkdir_p(const char *path)
{
    char p[4096];
    size_t len = strlen(path);
    if (len == 0 || len >= sizeof p)
        return moe_fail(MOE_ERR_USAGE, "directory path of %zu characters is empty or too long", len);
    memcpy(p, path, len + 1);
    for (size_t i = 1; i <= len; i++) {
        if (p[i] != '/' && p[i] != '\0')
            continue;
        char saved = p[i];
        p[i] = '\0';
        if (mkdir(p, 0777) != 0 && errno != EEXIST)
            return moe_fail(MOE_ERR_IO, "cannot create directory %s: %s", p, strerror(errno));
        p[i] = saved;
    }
    struct stat sb;
    if (stat(path, &sb) != 0 || !S_ISDIR(sb.st_mode))
        return moe_fail(MOE_ERR_INPUT, "%s exists and is not a directory", path);
    return MOE_OK;
}

moe_status moe_fsync_parent(const char *path)
{
    char dir[4096];
    const char *slash = strrchr(path, '/');
    if (!slash)
        snprintf(dir, sizeof dir, ".");
    else if (slash == path)
        snprintf(dir, sizeof dir, "/");
    else if ((size_t)(slash - path) < sizeof dir)
        snprintf(dir, sizeof dir, "%.*s", (int)(slash - path), path);
    else
        return moe_fail(MOE_ERR_IO, "%s: path too long", path);
    int fd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (fd < 0)
        return moe_fail(MOE_ERR_IO, "cannot open directory %s to sync it: %s", dir, strerror(errno));
    int rc = fsync(fd), err = errno;
    close(fd);
    if (rc != 0)
        return moe_fail(MOE_ERR_IO, "fsync directory %s: %s", dir, strerror(err));
    return MOE_OK;
}

static moe_status write_synced(const char *path, const unsigned char *buf, size_t n)
{
    int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (fd < 0)
        return moe_fail(MOE_ERR_IO, "cannot create %s: %s", path, strerror(errno));
    size_t done = 0;
    while (done < n) {
        ssize_t k = write(fd, buf + done, n - done);
        if (k < 0 && errno == EINTR)
            continue;
        if (k <= 0) {
            int err = k < 0 ? errno : EIO;
            close(fd);
            return moe_fail(MOE_ERR_IO, "write %s: %s", path, strerror(err));
        }
        done += (size_t)k;
    }
    int err = fsync(fd) != 0 ? errno : 0;
    if (close(fd) != 0 && !err)
        err = errno;
    if (err)
        return moe_fail(MOE_ERR_IO, "writing %s: %s", path, strerror(err));
    return MOE_OK;
}

moe_status moe_write_file_atomic(const char *path, const void *buf, size_t len)
{
    char tmp[4200];
    if ((size_t)snprintf(tmp, sizeof tmp, "%s.tmp.%d", path, (int)getpid()) >= sizeof tmp)
        return moe_fail(MOE_ERR_USAGE, "%s: path too long", path);
    moe_status st = write_synced(tmp, buf, len);
    if (st == MOE_OK && rename(tmp, path) != 0)
        st = moe_fail(MOE_ERR_IO, "rename %s -> %s: %s", tmp, path, strerror(errno));
    if (st != MOE_OK) {
        unlink(tmp);
        return st;
    }
    return moe_fsync_parent(path);
}
