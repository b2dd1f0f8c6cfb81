#include "runtime/base/fs.h"

#include <errno.h>
#include <string.h>
#include <sys/stat.h>

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
