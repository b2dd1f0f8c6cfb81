/*
** bind: pin a rank's process to its share of the machine's cores (hwloc).
**
** The local_size ranks on one machine split its cores into local_size
** contiguous blocks (hwloc logical core order, so a block stays within one
** package / NUMA node where it can); local rank r takes block r. Blocks differ
** by at most one core when the count does not divide. With more ranks than
** cores the ranks share round-robin: rank r gets core r % ncores, so an
** oversubscribed run still works. A core means all of its hardware threads.
** Machines where hwloc sees no cores fall back to processing units (PUs).
**
** MOE_BIND=0 turns binding off (returns MOE_OK, desc "binding disabled").
** Any hwloc failure returns MOE_ERR_SYSTEM with a message; binding is a
** performance matter, so callers may log it as a warning and go on.
**
** desc (cap bytes, may be NULL when cap is 0) receives one line for the log,
** e.g. "rank 1/4 bound to core 1 (PU 1)" or "rank 0/2 bound to cores 0-7 (PUs 0-15)".
*/
#ifndef MOE_BIND_H
#define MOE_BIND_H

#include <stddef.h>

#include "runtime/base/status.h"

/* Binds the calling process (HWLOC_CPUBIND_PROCESS: all its threads). */
moe_status moe_bind_rank(int local_rank, int local_size, char *desc, size_t cap);

#endif
