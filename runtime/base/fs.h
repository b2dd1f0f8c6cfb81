/*
** fs: small file-system helpers shared by the launcher and the worker.
*/
#ifndef MOE_FS_H
#define MOE_FS_H

#include <stddef.h>

#include "runtime/base/status.h"

/* mkdir -p: creates path and its missing parents. An existing directory is
** fine; an existing non-directory is MOE_ERR_INPUT naming it. */
moe_status moe_mkdir_p(const char *path);

/* Replaces path with buf[len] so that a crash leaves either the old file or
** the new one, never a torn one: write path.tmp.<pid>, fsync, rename, fsync
** the directory. On failure the temp file is removed. */
moe_status moe_write_file_atomic(const char *path, const void *buf, size_t len);

/* fsync of the directory holding path: a rename or a new file there is
** durable only after it. */
moe_status moe_fsync_parent(const char *path);

#endif
