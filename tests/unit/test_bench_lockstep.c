/*
** `moe bench lockstep` (perf/bench_lockstep.c) driven through the built
** `moe` on 2 ranks: every point of --calls reported with the three phases,
** the ratios those phases' times give, more work taking longer; the text
** table; refused flags naming the flag; the usage once, without ranks.
*/
#include <check.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "testutil.h"

static char out[1 << 16];

/* Open MPI's own allocations read as leaks under LeakSanitizer. */
#define ENV "ASAN_OPTIONS=detect_leaks=0 "

static int lockstep(const char *flags)
{
    char cmd[1024];
    snprintf(cmd, sizeof cmd, "( " ENV "%s bench lockstep --nproc 2 --rounds 2 --iters 10 %s 2>&1 )", tu_bin("moe"),
             flags);
    return tu_run(cmd, out, sizeof out);
}

/* The number after "key": in the point object of `calls`. */
static double point(const char *json, int calls, const char *key)
{
    char pat[64], k[64];
    snprintf(pat, sizeof pat, "{\"calls\": %d,", calls);
    const char *obj = strstr(json, pat);
    ck_assert_msg(obj != NULL, "point %d missing in %s", calls, json);
    snprintf(k, sizeof k, "\"%s\": ", key);
    const char *v = strstr(obj, k), *end = strchr(obj, '}');
    ck_assert_msg(v && v < end, "%s missing in point %d: %s", key, calls, json);
    return atof(v + strlen(k));
}

START_TEST(test_json_points)
{
    ck_assert_msg(lockstep("--calls 1,12 --shape 128x64x128 --json") == 0, "%s", out);
    const char *json = strstr(out, "{\"bench\": \"lockstep\"");
    ck_assert_msg(json && strstr(json, "\"ranks\": 2,") && strstr(json, "\"shape\": [128, 64, 128]"), "%s", out);
    int calls[] = {1, 12};
    for (int i = 0; i < 2; i++) {
        double alone = point(json, calls[i], "alone_us"), together = point(json, calls[i], "together_us");
        double lock = point(json, calls[i], "lockstep_us");
        ck_assert_msg(alone > 0 && together > 0 && lock > 0, "%s", json);
        ck_assert_msg(fabs(point(json, calls[i], "together_ratio") - together / alone) < 2e-3 * together / alone,
                      "%s", json);
        ck_assert_msg(fabs(point(json, calls[i], "lockstep_ratio") - lock / alone) < 2e-3 * lock / alone, "%s",
                      json);
    }
    ck_assert_msg(point(json, 12, "alone_us") > 2 * point(json, 1, "alone_us"), "12 calls not slower than 1: %s",
                  json);
}
END_TEST

START_TEST(test_text)
{
    ck_assert_msg(lockstep("--calls 2") == 0, "%s", out);
    ck_assert_msg(strstr(out, "lockstep: 2 ranks") && strstr(out, "lockstep/alone") && strstr(out, "sgemm 256x64x256"),
                  "%s", out);
}
END_TEST

START_TEST(test_refused)
{
    const char *bad[][2] = {{"--calls 0", "bad value for --calls: '0'"},
                            {"--calls 1,,2", "bad value for --calls"},
                            {"--calls x", "bad value for --calls"},
                            {"--calls 2,", "bad value for --calls: '2,'"},
                            {"--shape 64x64", "bad value for --shape: '64x64'"},
                            {"--rounds 0", "bad value for --rounds"},
                            {"--iters", "bad value for --iters: '(missing)'"},
                            {"--bogus 1", "unknown argument '--bogus'"}};
    for (size_t i = 0; i < sizeof bad / sizeof *bad; i++) {
        char cmd[1024];
        snprintf(cmd, sizeof cmd, "%s-bench lockstep %s", tu_bin("moe"), bad[i][0]);
        ck_assert_msg(tu_run(cmd, out, sizeof out) == 2 && strstr(out, bad[i][1]), "%s: %s", bad[i][0], out);
    }
    char cmd[1024];
    snprintf(cmd, sizeof cmd, "%s bench lockstep --help", tu_bin("moe"));
    ck_assert_int_eq(tu_run(cmd, out, sizeof out), 0);
    const char *first = strstr(out, "usage: moe bench lockstep");
    ck_assert_msg(first && !strstr(first + 1, "usage: moe bench lockstep"), "%s", out);
}
END_TEST

int main(void)
{
    Suite *s = suite_create("bench_lockstep");
    TCase *tc = tcase_create("cli");
    tcase_set_timeout(tc, 120);
    tcase_add_test(tc, test_json_points);
    tcase_add_test(tc, test_text);
    tcase_add_test(tc, test_refused);
    suite_add_tcase(s, tc);
    SRunner *sr = srunner_create(s);
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed ? 1 : 0;
}
