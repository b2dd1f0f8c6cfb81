/* The cache a core keeps to itself: hwloc's answer against the kernel's
** sysfs on this machine, the profile key core_cache_kb (optional, sourced,
** in range), and the cost model's use of it: a one-thread rank's GEMMs
** whose operands fit take the cached table; ranks of several threads, ranks
** outnumbering the cores and operands that do not fit the out-of-cache one. */
#include <check.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "planner/costmodel.h"
#include "planner/hwprofile.h"
#include "runtime/base/config.h"
#include "runtime/base/core_cache.h"
#include "runtime/base/status.h"
#include "testutil.h"

/* sysfs's largest cache of cpu0 shared with no other core than cpu0's own
** hardware threads (thread_siblings_list), in bytes; 0 when sysfs says nothing. */
static size_t sysfs_private_cache(void)
{
    char siblings[256] = "", path[256], line[256];
    FILE *f = fopen("/sys/devices/system/cpu/cpu0/topology/thread_siblings_list", "r");
    if (!f)
        return 0;
    if (!fgets(siblings, sizeof siblings, f))
        siblings[0] = 0;
    fclose(f);
    size_t best = 0;
    for (int i = 0; i < 16; i++) {
        snprintf(path, sizeof path, "/sys/devices/system/cpu/cpu0/cache/index%d/shared_cpu_list", i);
        if (!(f = fopen(path, "r")))
            break;
        int own = fgets(line, sizeof line, f) && strcmp(line, siblings) == 0;
        fclose(f);
        snprintf(path, sizeof path, "/sys/devices/system/cpu/cpu0/cache/index%d/size", i);
        size_t kb = 0;
        if (own && (f = fopen(path, "r"))) {
            if (fscanf(f, "%zuK", &kb) != 1)
                kb = 0;
            fclose(f);
        }
        best = kb * 1024 > best ? kb * 1024 : best;
    }
    return best;
}

START_TEST(test_hwloc_matches_sysfs)
{
    size_t bytes = 0, want = sysfs_private_cache();
    ck_assert_msg(moe_core_cache_bytes(&bytes) == MOE_OK, "%s", moe_errmsg());
    ck_assert_msg(bytes >= 4096 && bytes <= ((size_t)1 << 30), "%zu bytes", bytes);
    if (want) /* containers without sysfs caches: hwloc's answer alone */
        ck_assert_msg(bytes == want, "hwloc %zu bytes, sysfs %zu", bytes, want);
}
END_TEST

/* configs/hw/this-machine.yaml (shared, 2 cores, rates of 2 threads) and
** `extra`, loaded. */
static moe_status load_extra(const char *extra, moe_hwprofile *hw)
{
    char dir[512], path[600];
    tu_tmpdir(dir, sizeof dir, "core_cache");
    snprintf(path, sizeof path, "%s/hw.yaml", dir);
    tu_write_after(path, MOE_SRC_DIR "/configs/hw/this-machine.yaml", extra);
    moe_error_clear();
    return moe_hwprofile_load(path, hw);
}

#define TABLES                                                                                                 \
    "gemm_efficiency_table:\n  source: \"t\"\n  points: [[1e5, 0.05], [1e7, 0.2], [1e10, 0.5]]\n"              \
    "gemm_efficiency_table_cached:\n  source: \"t\"\n  points: [[1e5, 0.1], [1e7, 0.6], [1e10, 0.9]]\n"
/* the cached table as the out-of-cache one: every GEMM at the cached rates */
#define CACHED_ONLY                                                                                            \
    "gemm_efficiency_table:\n  source: \"t\"\n  points: [[1e5, 0.1], [1e7, 0.6], [1e10, 0.9]]\n"                \
    "gemm_efficiency_table_cached:\n  source: \"t\"\n  points: [[1e5, 0.1], [1e7, 0.6], [1e10, 0.9]]\n"

START_TEST(test_profile_key)
{
    moe_hwprofile hw;
    ck_assert_int_eq(load_extra(TABLES, &hw), MOE_OK);
    ck_assert(hw.core_cache_kb == 0);
    ck_assert_int_eq(load_extra(TABLES "core_cache_kb: {value: 2048, source: \"hwloc\"}\n", &hw), MOE_OK);
    ck_assert(hw.core_cache_kb == 2048);
    ck_assert_str_eq(hw.source[MOE_HW_CORE_CACHE_KB], "hwloc");
    const char *bad[] = {"core_cache_kb: 2048\n", "core_cache_kb: {value: -1, source: \"x\"}\n",
                         "core_cache_kb: {value: 2048, source: \"\"}\n",
                         "core_cache_kb: {value: big, source: \"x\"}\n"};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        ck_assert_int_eq(load_extra(bad[i], &hw), MOE_ERR_USAGE);
        ck_assert_msg(strstr(moe_errmsg(), "core_cache_kb") != NULL, "%s", moe_errmsg());
        moe_error_clear();
    }
}
END_TEST

static moe_cost_report tiny_step(const moe_hwprofile *hw, int world, int pp)
{
    moe_config c;
    moe_config_defaults(&c);
    c.num_layers = 2, c.hidden_size = 64, c.ffn_hidden_size = 256, c.num_attention_heads = 4;
    c.num_query_groups = 2, c.seq_length = 128, c.vocab_size = 256, c.num_experts = 4;
    c.moe_router_topk = 2, c.moe_ffn_hidden_size = 128, c.micro_batch_size = 2, c.global_batch_size = 8;
    c.nproc = world, c.pipeline_model_parallel_size = pp;
    ck_assert_int_eq(moe_config_validate(&c), MOE_OK);
    moe_cost_opts o;
    moe_cost_opts_default(&o);
    moe_cost_report r;
    ck_assert_msg(moe_costmodel_step(&c, hw, &o, &r) == MOE_OK, "%s", moe_errmsg());
    return r;
}

static int same(double a, double b) { return fabs(a - b) <= 1e-12 * fmax(fabs(a), fabs(b)); }

START_TEST(test_model_uses_it)
{
    moe_hwprofile none, big, small, cached;
    ck_assert_int_eq(load_extra(TABLES, &none), MOE_OK);
    ck_assert_int_eq(load_extra(TABLES "core_cache_kb: {value: 1e6, source: \"t\"}\n", &big), MOE_OK);
    ck_assert_int_eq(load_extra(TABLES "core_cache_kb: {value: 1, source: \"t\"}\n", &small), MOE_OK);
    ck_assert_int_eq(load_extra(CACHED_ONLY, &cached), MOE_OK);
    for (int pp = 1; pp <= 2; pp++) {
        /* 2 ranks on the 2 cores: one thread each. A cache that holds every
        ** GEMM's operands: every GEMM at the cached table, the step exactly
        ** the one of a profile whose only table is the cached one. */
        moe_cost_report n = tiny_step(&none, 2, pp), b = tiny_step(&big, 2, pp), c = tiny_step(&cached, 2, pp);
        ck_assert_msg(same(b.step_s, c.step_s) && b.step_s < 0.9 * n.step_s, "pp %d: %g %g %g", pp, b.step_s,
                      c.step_s, n.step_s);
        /* one that holds none: the out-of-cache table, as without the key */
        ck_assert(same(tiny_step(&small, 2, pp).step_s, n.step_s));
    }
    /* one rank of two threads: each kernel's rows split two ways; four ranks
    ** of one thread on the two cores: each core's cache taken in turns. No GEMM cached */
    ck_assert(same(tiny_step(&big, 1, 1).step_s, tiny_step(&none, 1, 1).step_s));
    ck_assert(same(tiny_step(&big, 4, 1).step_s, tiny_step(&none, 4, 1).step_s));
}
END_TEST

int main(void)
{
    Suite *s = suite_create("core_cache");
    TCase *tc = tcase_create("core");
    tcase_add_test(tc, test_hwloc_matches_sysfs);
    tcase_add_test(tc, test_profile_key);
    tcase_add_test(tc, test_model_uses_it);
    suite_add_tcase(s, tc);
    SRunner *sr = srunner_create(s);
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed ? 1 : 0;
}
