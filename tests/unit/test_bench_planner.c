/*
** `moe bench planner` (perf/bench_planner.c) driven through the built `moe`:
** the sweep's JSON on a tiny skewed grid (every method present, ilp <= greedy
** <= contiguous, gap and cross-node fraction in range, the a2a time falling
** with the max load), the contiguous plan's cross-node fraction and a2a time
** recomputed here from the same generated trace, the text table, refused
** flags, and --gen-trace unchanged.
*/
#include <check.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "planner/hwprofile.h"
#include "planner/trace.h"
#include "testutil.h"

#define HW MOE_SRC_DIR "/configs/hw/h100-sxm.yaml"
/* 2 layers x 8 experts x 4 ranks, Zipf 1.2, top-2, 4096 tokens per rank */
#define GRID "--layers-list 2 --experts-list 8 --ranks-list 4 --skew 1.2 --topk 2 --tokens 4096 --seed 7"

static char out[1 << 16];

/* Runs the sweep with extra flags; stdout only (stderr dropped). */
static int sweep(const char *extra)
{
    char cmd[2048];
    snprintf(cmd, sizeof cmd, "( %s bench planner " GRID " --hw %s --hidden 1024 --dtype-bytes 2 %s 2>/dev/null )",
             tu_bin("moe"), HW, extra);
    return tu_run(cmd, out, sizeof out);
}

/* The number after "key": in the method object whose spec is `spec`. */
static double field(const char *json, const char *spec, const char *key)
{
    char pat[128];
    snprintf(pat, sizeof pat, "{\"spec\":\"%s\",", spec);
    const char *obj = strstr(json, pat);
    ck_assert_msg(obj != NULL, "method %s missing in %s", spec, json);
    const char *end = strchr(obj, '}');
    snprintf(pat, sizeof pat, "\"%s\":", key);
    const char *f = strstr(obj, pat);
    ck_assert_msg(f && f < end, "%s has no %s in %s", spec, key, json);
    char *stop;
    double v = strtod(f + strlen(pat), &stop);
    ck_assert_msg(stop != f + strlen(pat), "%s.%s is not a number", spec, key);
    return v;
}

START_TEST(test_json_methods)
{
    ck_assert_int_eq(sweep("--methods contiguous,greedy,ilp --ranks-per-node 4 --json"), 0);
    ck_assert_msg(out[0] == '{' && strstr(out, "\"bench\":\"planner\"") &&
                      strstr(out, "\"hw\":{\"name\":\"h100-sxm\"") &&
                      strstr(out, "\"layers\":2,\"experts\":8,\"ranks\":4,\"nodes\":1"),
                  "%s", out);
    const char *m[] = {"contiguous", "greedy", "ilp"};
    double load[3], a2a[3];
    for (int i = 0; i < 3; i++) {
        load[i] = field(out, m[i], "max_load");
        a2a[i] = field(out, m[i], "a2a_s");
        double mean = field(out, m[i], "mean_load"), gap = field(out, m[i], "gap");
        double lb = field(out, m[i], "lower_bound");
        ck_assert_msg(gap >= 0 && gap <= 1, "%s gap %g", m[i], gap);
        ck_assert_msg(lb <= load[i] && lb > 0, "%s bound %g, load %g", m[i], lb, load[i]);
        /* 2 layers x 4096 tokens x top-2 x 4 sources, over 4 ranks */
        ck_assert_msg(fabs(mean - 2 * 4096 * 2) < 1e-6, "%s mean %g", m[i], mean);
        ck_assert_msg(fabs(field(out, m[i], "imbalance") - load[i] / mean) < 1e-9, "%s imbalance", m[i]);
        ck_assert_msg(field(out, m[i], "cross_node_fraction") == 0, "%s: one node, yet cross traffic", m[i]);
        double remote = field(out, m[i], "remote_fraction");
        ck_assert_msg(remote > 0.5 && remote < 1, "%s remote fraction %g (about 3/4 expected)", m[i], remote);
        ck_assert_msg(a2a[i] > 0, "%s a2a %g", m[i], a2a[i]);
    }
    ck_assert_msg(load[2] <= load[1] && load[1] < load[0], "ilp %g, greedy %g, contiguous %g", load[2], load[1],
                  load[0]);
    /* same links everywhere: a lower max load is a shorter all-to-all */
    ck_assert_msg(a2a[1] < a2a[0], "greedy a2a %g not below contiguous %g", a2a[1], a2a[0]);
    ck_assert_msg(a2a[2] <= a2a[1] * (1 + 1e-12), "ilp a2a %g above greedy %g", a2a[2], a2a[1]);
    ck_assert_msg(field(out, "ilp", "ilp_optimal") == 2, "%s", out);
}
END_TEST

/* The contiguous plan's traffic, recomputed from the generated trace:
** expert e on rank e * N / E, nodes of rpn ranks, 4 exchanges per layer. */
static void expected_contiguous(int rpn, double *cross, double *a2a)
{
    const int L = 2, E = 8, N = 4;
    const double row = 1024 * 2;
    moe_trace_gen g = {.layers = L, .experts = E, .topk = 2, .sources = N, .windows = 1,
                       .tokens_per_window = 4096, .skew = 1.2, .seed = 7};
    moe_trace t;
    ck_assert_int_eq(moe_trace_generate(&g, &t), MOE_OK);
    moe_hwprofile hw;
    ck_assert_int_eq(moe_hwprofile_load(HW, &hw), MOE_OK);
    double all = 0, x = 0, total = 0;
    for (int l = 0; l < L; l++) {
        double v[4][4] = {{0}};
        for (int s = 0; s < N; s++)
            for (int e = 0; e < E; e++)
                v[s][e * N / E] += t.windows[0].load[((size_t)l * N + s) * E + e];
        double worst = 0;
        for (int r = 0; r < N; r++) {
            double snd = 0, rcv = 0;
            for (int q = 0; q < N; q++) {
                if (q == r)
                    continue;
                int same = r / rpn == q / rpn;
                double bw = (same ? hw.intra_gbs : hw.inter_gbs) * 1e9 * hw.link_efficiency;
                double lat = (same ? hw.intra_lat_us : hw.inter_lat_us) * 1e-6;
                snd += v[r][q] > 0 ? lat + v[r][q] * row / bw : 0;
                rcv += v[q][r] > 0 ? lat + v[q][r] * row / bw : 0;
            }
            worst = fmax(worst, fmax(snd, rcv));
        }
        total += 4 * worst;
        for (int s = 0; s < N; s++)
            for (int r = 0; r < N; r++) {
                all += v[s][r];
                x += s / rpn != r / rpn ? v[s][r] : 0;
            }
    }
    *cross = x / all;
    *a2a = total;
    moe_trace_free(&t);
}

START_TEST(test_traffic_recomputed)
{
    for (int rpn = 1; rpn <= 4; rpn *= 2) {
        char extra[128];
        snprintf(extra, sizeof extra, "--methods contiguous,greedy --ranks-per-node %d --json", rpn);
        ck_assert_int_eq(sweep(extra), 0);
        double cross, a2a;
        expected_contiguous(rpn, &cross, &a2a);
        double got_cross = field(out, "contiguous", "cross_node_fraction");
        double got_a2a = field(out, "contiguous", "a2a_s");
        ck_assert_msg(fabs(got_cross - cross) < 1e-12, "rpn %d: cross %g, expected %g", rpn, got_cross, cross);
        ck_assert_msg(fabs(got_a2a - a2a) <= 1e-9 * a2a, "rpn %d: a2a %.12g, expected %.12g", rpn, got_a2a, a2a);
        double gc = field(out, "greedy", "cross_node_fraction");
        ck_assert_msg(gc >= 0 && gc <= 1, "greedy cross %g", gc);
        if (rpn == 4)
            ck_assert_msg(cross == 0 && gc == 0, "one node: cross %g, %g", cross, gc);
        else
            ck_assert_msg(cross > 0.3 && gc > 0.3, "rpn %d: cross %g, %g", rpn, cross, gc);
    }
    /* slower inter-node links than NVLink: two nodes cost more than one */
    ck_assert_int_eq(sweep("--methods contiguous --ranks-per-node 2 --json"), 0);
    double two = field(out, "contiguous", "a2a_s");
    ck_assert_int_eq(sweep("--methods contiguous --ranks-per-node 4 --json"), 0);
    ck_assert_msg(two > 2 * field(out, "contiguous", "a2a_s"), "2 nodes %g", two);
}
END_TEST

START_TEST(test_replicas_and_text)
{
    ck_assert_int_eq(sweep("--methods contiguous,eplb:ranks,ilp:2 --replicas 1"), 0);
    ck_assert_msg(strstr(out, "a2a model: hw h100-sxm") && strstr(out, "450 GB/s") &&
                      strstr(out, "rows of 1024 x 2 B") && strstr(out, "eplb:ranks") && strstr(out, "ilp:2") &&
                      strstr(out, "1 points, 3 methods"),
                  "%s", out);
    ck_assert_int_eq(sweep("--methods contiguous,eplb,ilp:ranks --replicas 1 --json"), 0);
    ck_assert_int_eq((int)field(out, "eplb", "replicas"), 1);
    ck_assert_int_eq((int)field(out, "ilp:ranks", "replicas"), 4);
    ck_assert_int_eq((int)field(out, "ilp:ranks", "slots"), 3);
    ck_assert_msg(field(out, "ilp:ranks", "max_load") < field(out, "contiguous", "max_load"), "%s", out);
}
END_TEST

START_TEST(test_refused)
{
    char cmd[1024];
    const char *bad[][2] = {
        {"--bogus 1", "unknown option '--bogus'"},
        {"--methods contiguous,magic", "unknown method 'magic'"},
        {"--methods greedy:2", "only eplb and ilp take extra copies"},
        {"--ranks-list 4,0", "--ranks-list '0' must be an integer"},
        {"--experts-list 8,x", "--experts-list 'x' must be an integer"},
        {"--gap -1", "--gap '-1' must be a finite number"},
        {"--time-limit 0", "--time-limit '0' must be a finite number > 0"},
        {"--topk 9 --experts-list 8", "exceeds the 8 experts"},
        {"--points 2x8", "is not LAYERSxEXPERTSxRANKS"},
        {"--points 2x8x4 --ranks-list 4", "exclude each other"},
        {"--hidden", "missing value after '--hidden'"},
        {"--hw /nonexistent/hw.yaml", "/nonexistent/hw.yaml"},
        {"--points 2x8x4 --methods eplb:100", "2x8x4, eplb:100: --replicas 100"},
    };
    for (size_t i = 0; i < sizeof bad / sizeof *bad; i++) {
        snprintf(cmd, sizeof cmd, "%s bench planner %s", tu_bin("moe"), bad[i][0]);
        ck_assert_msg(tu_run(cmd, out, sizeof out) == 2, "%s: not refused: %s", bad[i][0], out);
        ck_assert_msg(strstr(out, bad[i][1]) && strstr(out, "moe bench planner: error:"), "%s: %s", bad[i][0], out);
    }
    /* --gen-trace still writes a trace, and the trace reads back */
    char dir[512];
    tu_tmpdir(dir, sizeof dir, "benchplanner");
    snprintf(cmd, sizeof cmd,
             "%s bench planner --gen-trace %s/t.pb --layers 3 --experts 8 --topk 2 --sources 2 --seed 3", tu_bin("moe"),
             dir);
    ck_assert_msg(tu_run(cmd, out, sizeof out) == 0 && strstr(out, "wrote ") && strstr(out, "3 layers, 8 experts"),
                  "%s", out);
    snprintf(cmd, sizeof cmd, "%s/t.pb", dir);
    moe_trace t;
    ck_assert_int_eq(moe_trace_read(cmd, &t), MOE_OK);
    ck_assert(t.layers == 3 && t.experts == 8 && t.sources == 2);
    moe_trace_free(&t);
    remove(cmd);
    remove(dir);
}
END_TEST

/* moe bench a2a's usage comes once, without starting ranks; a bad flag says which */
START_TEST(test_a2a_usage)
{
    char cmd[1024];
    snprintf(cmd, sizeof cmd, "%s bench a2a --help", tu_bin("moe"));
    ck_assert_int_eq(tu_run(cmd, out, sizeof out), 0);
    const char *first = strstr(out, "usage: moe bench a2a");
    ck_assert_msg(first && !strstr(first + 1, "usage: moe bench a2a"), "%s", out);
    snprintf(cmd, sizeof cmd, "%s-bench a2a --tokens", tu_bin("moe"));
    ck_assert_msg(tu_run(cmd, out, sizeof out) == 2 && strstr(out, "bad argument '--tokens'"), "%s", out);
}
END_TEST

int main(void)
{
    Suite *s = suite_create("bench_planner");
    TCase *tc = tcase_create("cli");
    tcase_set_timeout(tc, 60);
    tcase_add_test(tc, test_json_methods);
    tcase_add_test(tc, test_traffic_recomputed);
    tcase_add_test(tc, test_replicas_and_text);
    tcase_add_test(tc, test_refused);
    tcase_add_test(tc, test_a2a_usage);
    suite_add_tcase(s, tc);
    SRunner *sr = srunner_create(s);
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed ? 1 : 0;
}
