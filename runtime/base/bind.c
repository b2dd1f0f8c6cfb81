#include "runtime/base/bind.h"

#include <errno.h>
#include <hwloc.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static void put_desc(char *desc, size_t cap, const char *text)
{
    if (desc && cap > 0)
        snprintf(desc, cap, "%s", text);
}

static int binding_disabled(void)
{
    const char *v = getenv("MOE_BIND");
    return v && strcmp(v, "0") == 0;
}

/* The [*first, *first + *count) block of `nunits` units that local rank r of
** n takes: contiguous blocks, the first nunits % n one unit larger; with more
** ranks than units, unit r % nunits alone. */
static void rank_block(int r, int n, int nunits, int *first, int *count)
{
    if (n > nunits) {
        *first = r % nunits;
        *count = 1;
        return;
    }
    int base = nunits / n, extra = nunits % n;
    *first = r * base + (r < extra ? r : extra);
    *count = base + (r < extra);
}

static moe_status bind_with(hwloc_topology_t topo, int local_rank, int local_size, char *desc, size_t cap)
{
    hwloc_obj_type_t unit = HWLOC_OBJ_CORE;
    int nunits = hwloc_get_nbobjs_by_type(topo, unit);
    if (nunits <= 0) { /* some VMs report no cores: use hardware threads */
        unit = HWLOC_OBJ_PU;
        nunits = hwloc_get_nbobjs_by_type(topo, unit);
    }
    if (nunits <= 0)
        return moe_fail(MOE_ERR_SYSTEM, "binding rank %d/%d: hwloc found no cores or processing units",
                        local_rank, local_size);

    int first, count;
    rank_block(local_rank, local_size, nunits, &first, &count);
    hwloc_bitmap_t set = hwloc_bitmap_alloc();
    if (!set)
        return moe_fail(MOE_ERR_NOMEM, "binding rank %d/%d: out of memory for a cpuset", local_rank,
                        local_size);
    moe_status st = MOE_OK;
    for (int i = first; i < first + count; i++) {
        hwloc_obj_t o = hwloc_get_obj_by_type(topo, unit, (unsigned)i);
        if (!o || !o->cpuset || hwloc_bitmap_or(set, set, o->cpuset) < 0) {
            st = moe_fail(MOE_ERR_SYSTEM, "binding rank %d/%d: hwloc has no cpuset for %s %d", local_rank,
                          local_size, hwloc_obj_type_string(unit), i);
            goto done;
        }
    }
    if (hwloc_set_cpubind(topo, set, HWLOC_CPUBIND_PROCESS) < 0) {
        char pus[256] = "";
        hwloc_bitmap_list_snprintf(pus, sizeof pus, set);
        st = moe_fail(MOE_ERR_SYSTEM, "binding rank %d/%d to PUs %s: hwloc_set_cpubind failed: %s", local_rank,
                      local_size, pus, strerror(errno));
        goto done;
    }
    if (desc && cap > 0) {
        char pus[256] = "";
        hwloc_bitmap_list_snprintf(pus, sizeof pus, set);
        const char *what = unit == HWLOC_OBJ_CORE ? "core" : "PU";
        int many_pus = hwloc_bitmap_weight(set) != 1;
        if (count == 1)
            snprintf(desc, cap, "rank %d/%d bound to %s %d (PU%s %s)", local_rank, local_size, what, first,
                     many_pus ? "s" : "", pus);
        else
            snprintf(desc, cap, "rank %d/%d bound to %ss %d-%d (PU%s %s)", local_rank, local_size, what,
                     first, first + count - 1, many_pus ? "s" : "", pus);
    }
done:
    hwloc_bitmap_free(set);
    return st;
}

moe_status moe_bind_rank(int local_rank, int local_size, char *desc, size_t cap)
{
    put_desc(desc, cap, "");
    if (binding_disabled()) {
        put_desc(desc, cap, "binding disabled");
        return MOE_OK;
    }
    if (local_size < 1 || local_rank < 0 || local_rank >= local_size)
        return moe_fail(MOE_ERR_USAGE, "binding: local rank %d is not in [0, %d)", local_rank, local_size);

    hwloc_topology_t topo;
    if (hwloc_topology_init(&topo) < 0)
        return moe_fail(MOE_ERR_SYSTEM, "binding rank %d/%d: hwloc_topology_init failed: %s", local_rank,
                        local_size, strerror(errno));
    moe_status st;
    if (hwloc_topology_load(topo) < 0)
        st = moe_fail(MOE_ERR_SYSTEM, "binding rank %d/%d: hwloc_topology_load failed: %s", local_rank,
                      local_size, strerror(errno));
    else
        st = bind_with(topo, local_rank, local_size, desc, cap);
    hwloc_topology_destroy(topo);
    if (st != MOE_OK)
        moe_trace_frame(__FILE__, __LINE__);
    return st;
}
