/*
** fs: small file-system helpers shared by the launcher and the worker.
*/
#ifndef MOE_FS_H
#define MOE_FS_H

#include "runtime/base/status.h"

/* mkdir -p: creates path and its missing parents. An existing directory is
** fine; an existing non-directory is MOE_ERR_INPUT naming it. */
moe_status moe_mkdir_p(const char *path);

#endif
