#include "runtime/base/core_cache.h"

#include <errno.h>
#include <hwloc.h>
#include <string.h>

/* The largest cache above `core` (hwloc 2 puts caches above the cores they
** serve) that covers only its cpuset; 0 if none. */
static size_t private_cache(hwloc_obj_t core)
{
    size_t best = 0;
    for (hwloc_obj_t o = core->parent; o && hwloc_bitmap_isequal(o->cpuset, core->cpuset); o = o->parent)
        if (hwloc_obj_type_is_cache(o->type) && o->attr && o->attr->cache.size > best)
            best = (size_t)o->attr->cache.size;
    return best;
}

moe_status moe_core_cache_bytes(size_t *bytes)
{
    *bytes = 0;
    hwloc_topology_t topo;
    if (hwloc_topology_init(&topo) < 0)
        return moe_fail(MOE_ERR_SYSTEM, "core cache: hwloc_topology_init failed: %s", strerror(errno));
    moe_status st = MOE_OK;
    if (hwloc_topology_load(topo) < 0) {
        st = moe_fail(MOE_ERR_SYSTEM, "core cache: hwloc_topology_load failed: %s", strerror(errno));
        goto done;
    }
    hwloc_obj_t core = hwloc_get_obj_by_type(topo, HWLOC_OBJ_CORE, 0);
    if (!core || !core->cpuset) {
        st = moe_fail(MOE_ERR_SYSTEM, "core cache: hwloc reports no core on this machine");
        goto done;
    }
    *bytes = private_cache(core);
    if (*bytes == 0)
        st = moe_fail(MOE_ERR_SYSTEM, "core cache: hwloc reports no cache private to core 0");
done:
    hwloc_topology_destroy(topo);
    return st;
}
