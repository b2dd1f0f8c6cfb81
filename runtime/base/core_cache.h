/*
** core_cache: the cache a core keeps to itself (hwloc), for the cost model's
** profile (`moe bench calibrate` writes it as core_cache_kb).
**
** The private cache of a core is the largest cache level whose cpuset is the
** core's own (its hardware threads, no other core's): L2 on most x86 server
** parts, L1 where L2 is shared. A kernel that runs on one thread finds there
** the operands the kernels just before it wrote on the same core; with
** several threads each kernel splits its rows differently, and a row's
** operands sit in another core's cache.
**
** *bytes: that size of core 0 (hwloc logical order). MOE_ERR_SYSTEM naming
** the step when hwloc cannot load the topology or reports no core, or no
** cache private to the core (then *bytes is 0).
*/
#ifndef MOE_CORE_CACHE_H
#define MOE_CORE_CACHE_H

#include <stddef.h>

#include "runtime/base/status.h"

moe_status moe_core_cache_bytes(size_t *bytes);

#endif
