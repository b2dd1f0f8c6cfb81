/* `moe plan parallel` from the command line: the table, --json, one
** layout by its five sizes, refusals with their messages, --reproduce, and a
** routing trace as the expert load (the cost model itself: test_costmodel.c). */
#include <check.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "launch/plan_parallel.h"
#include "planner/placement.h"
#include "planner/trace.h"
#include "runtime/base/status.h"
#include "testutil.h"

#define HW_DIR MOE_SRC_DIR "/configs/hw"

START_TEST(test_cli)
{
    char cmd[2048], out[1 << 16];
    const char *moe = tu_bin("moe");
    snprintf(cmd, sizeof cmd,
             "%s plan parallel --config %s/configs/tiny.yaml --world 4 --hw %s/this-machine.yaml --vocab-size 256 "
             "--global-batch 32 --json",
             moe, MOE_SRC_DIR, HW_DIR);
    ck_assert_int_eq(tu_run(cmd, out, sizeof out), 0);
    ck_assert_msg(out[0] == '{' && strstr(out, "\"layouts\":[{\"tp\":") && strstr(out, "\"fits\":true") &&
                      strstr(out, "\"tokens_per_s\":") && strstr(out, "\"refused\":["),
                  "%s", out);
    /* one layout: the breakdown */
    snprintf(cmd, sizeof cmd,
             "%s plan parallel --model %s/configs/tiny.yaml --world 4 --hardware %s/this-machine.yaml --tp 1 --cp 1 "
             "--pp 1 --ep 2 --etp 1 --global-batch 32 --moe-overlap fine",
             moe, MOE_SRC_DIR, HW_DIR);
    ck_assert_int_eq(tu_run(cmd, out, sizeof out), 0);
    ck_assert_msg(strstr(out, "1 considered: 1 fit") && strstr(out, "memory per rank") && strstr(out, "fine"), "%s",
                  out);
    /* nothing fits: Mixtral-sized layers on 4 this-machine ranks */
    snprintf(cmd, sizeof cmd,
             "%s plan parallel --config %s/configs/tiny.yaml --world 4 --hw %s/this-machine.yaml --hidden-size 8192 "
             "--moe-ffn-hidden-size 16384 --num-attention-heads 64 --num-query-groups 8 --num-layers 8",
             moe, MOE_SRC_DIR, HW_DIR);
    ck_assert_int_eq(tu_run(cmd, out, sizeof out), 0);
    ck_assert_msg(strstr(out, "no layout fits") && strstr(out, "do not fit memory") && strstr(out, "GiB usable"),
                  "%s", out);
    /* a bad profile, a missing flag, an unknown config key */
    char dir[512], path[600];
    tu_tmpdir(dir, sizeof dir, "cli");
    snprintf(path, sizeof path, "%s/bad.yaml", dir);
    tu_write(path, "name: x\ngemm_tflops: 5\n");
    snprintf(cmd, sizeof cmd, "%s plan parallel --config %s/configs/tiny.yaml --world 2 --hw %s", moe, MOE_SRC_DIR,
             path);
    ck_assert_int_eq(tu_run(cmd, out, sizeof out), 2);
    ck_assert_msg(strstr(out, "gemm_tflops = 5 has no source"), "%s", out);
    snprintf(cmd, sizeof cmd, "%s plan parallel --config %s/configs/tiny.yaml --hw %s/h100-sxm.yaml", moe, MOE_SRC_DIR,
             HW_DIR);
    ck_assert_int_eq(tu_run(cmd, out, sizeof out), 2);
    ck_assert_msg(strstr(out, "--world W is required"), "%s", out);
    snprintf(cmd, sizeof cmd,
             "%s plan parallel --config %s/configs/tiny.yaml --world 2 --hw %s/h100-sxm.yaml --bogus 3", moe,
             MOE_SRC_DIR, HW_DIR);
    ck_assert_int_eq(tu_run(cmd, out, sizeof out), 2);
    /* the reproduction table */
    snprintf(cmd, sizeof cmd, "%s plan parallel --reproduce --hw-dir %s --json", moe, HW_DIR);
    ck_assert_int_eq(tu_run(cmd, out, sizeof out), 0);
    ck_assert_msg(strstr(out, "\"model\":\"Mixtral 8x22B\"") && strstr(out, "\"published_mfu\":0.493") &&
                      strstr(out, "\"flux_layers\":["),
                  "%s", out);
    /* and in-process, for the usage path */
    char *argv[] = {"--help"};
    ck_assert_int_eq(moe_plan_parallel_main(1, argv), 0);
}
END_TEST

/* --routing-trace: tiny's 2 MoE layers, 4 experts, top-2, all pairs on experts 0
** and 1 alike: contiguous EP 2 puts both on rank 0 (max/mean 2), EP 4 one each
** (100 against a mean of 50: 2), a round-robin plan splits them (1). */
START_TEST(test_cli_routing_trace)
{
    char cmd[2048], out[1 << 16], dir[512], trace[600], plan[600];
    const char *moe = tu_bin("moe");
    tu_tmpdir(dir, sizeof dir, "trace");
    moe_trace t;
    ck_assert_int_eq(moe_trace_alloc(&t, 2, 4, 2, 2, 1, 0), MOE_OK);
    for (int l = 0; l < 2; l++)
        t.windows[0].load[(size_t)l * 8] = t.windows[0].load[(size_t)l * 8 + 1] = 100;
    snprintf(trace, sizeof trace, "%s/r.trace", dir);
    ck_assert_int_eq(moe_trace_write(trace, &t), MOE_OK);
    double *w = NULL;
    ck_assert_int_eq(moe_trace_expert_load(&t, &w), MOE_OK);
    moe_place_opts po;
    moe_place_opts_default(&po);
    po.method = MOE_PLACE_ROUND_ROBIN, po.ep = 2;
    moe_plan p;
    ck_assert_int_eq(moe_place(w, 2, 4, &po, &p, NULL), MOE_OK);
    snprintf(plan, sizeof plan, "%s/rr.plan", dir);
    ck_assert_int_eq(moe_plan_write(plan, &p), MOE_OK);
    moe_plan_free(&p), free(w), moe_trace_free(&t);
    const char *base = "plan parallel --config " MOE_SRC_DIR "/configs/tiny.yaml --world 4 --hw " HW_DIR
                       "/this-machine.yaml --tp 1 --cp 1 --pp 1 --etp 1 --global-batch 32 --json";
    const struct {
        const char *extra, *expect;
    } ok[] = {{"--ep 4", "\"expert_imbalance\":2,"},
              {"--ep 2", "\"expert_imbalance\":2,"},
              {"--ep 2 --expert-placement %s", "\"expert_imbalance\":1,"},
              {"--ep 4 --expert-placement %s", "\"expert_imbalance\":2,"}}; /* a plan of another EP size: contiguous */
    for (size_t i = 0; i < sizeof ok / sizeof *ok; i++) {
        char extra[800];
        snprintf(extra, sizeof extra, ok[i].extra, plan);
        snprintf(cmd, sizeof cmd, "%s %s %s --routing-trace %s", moe, base, extra, trace);
        ck_assert_int_eq(tu_run(cmd, out, sizeof out), 0);
        ck_assert_msg(strstr(out, ok[i].expect) && strstr(out, "\"trace_from_step\":0"), "%s: %s", extra, out);
    }
    /* refused: a trace of another model, a trace and --imbalance, no window from the step asked */
    const struct {
        const char *extra, *expect;
    } bad[] = {{"--num-experts 8", "2 MoE layers, 4 experts, top-2; the config has 2, 8, top-2"},
               {"--imbalance 2", "give one"},
               {"--trace-from-step 5", "no routed pairs in the windows from step 5"}};
    for (size_t i = 0; i < sizeof bad / sizeof *bad; i++) {
        snprintf(cmd, sizeof cmd, "%s %s --ep 2 %s --routing-trace %s", moe, base, bad[i].extra, trace);
        ck_assert_int_ne(tu_run(cmd, out, sizeof out), 0);
        ck_assert_msg(strstr(out, bad[i].expect), "%s: %s", bad[i].extra, out);
    }
    remove(plan), remove(trace), remove(dir);
}
END_TEST

int main(void)
{
    Suite *s = suite_create("plan_parallel_cli");
    TCase *tc = tcase_create("core");
    tcase_set_timeout(tc, 120);
    tcase_add_test(tc, test_cli);
    tcase_add_test(tc, test_cli_routing_trace);
    suite_add_tcase(s, tc);
    SRunner *sr = srunner_create(s);
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed ? 1 : 0;
}
