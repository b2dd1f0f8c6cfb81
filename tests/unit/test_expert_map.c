/*
** expert_map (parallel/ep.h), no MPI: contiguous and plan-given maps, the
** local order with replicated experts (canonical copies first), the copy each
** routed pair goes to (runs sized by the shares, in token order), and the
** refusals of tables the grouped expert layout cannot hold.
*/
#include <check.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "parallel/ep.h"
#include "runtime/base/status.h"

START_TEST(contiguous_slots_are_expert_ids)
{
    moe_expert_map m;
    ck_assert_int_eq(moe_expert_map_contiguous(&m, 8, 4, 2), MOE_OK);
    ck_assert_int_eq(m.E_local, 2);
    ck_assert_int_eq(m.n_canonical, 2);
    ck_assert_int_eq(m.replicated, 0);
    ck_assert_int_eq(m.local_experts[0], 4);
    ck_assert_int_eq(m.local_experts[1], 5);
    ck_assert_int_eq(m.local_index[5], 1);
    ck_assert_int_eq(m.local_index[0], -1);
    int32_t idx[8] = {7, 0, 3, 4, 1, 6, 2, 5}, slot[8];
    int32_t *work = malloc(sizeof(int32_t) * moe_expert_map_work(&m));
    moe_expert_map_slots(&m, idx, 8, slot, work);
    for (int i = 0; i < 8; i++)
        ck_assert_int_eq(slot[i], idx[i]);
    free(work);
    moe_expert_map_free(&m);
}
END_TEST

/* 4 experts on 2 ranks, 3 copies each: expert 1 on ranks 1 (canonical, 0.25)
** and 0 (0.75); expert 2 on ranks 0 (canonical, 0.5) and 1 (0.5). */
static const int NC[4] = {1, 2, 2, 1};
static const int RANKS[8] = {0, -1, 1, 0, 0, 1, 1, -1};
static const double SHARES[8] = {1, 0, 0.25, 0.75, 0.5, 0.5, 1, 0};

START_TEST(replicated_local_order_and_slots)
{
    moe_expert_map m0, m1;
    ck_assert_int_eq(moe_expert_map_from_copies(&m0, 4, 2, 0, 3, NC, RANKS, SHARES, 2), MOE_OK);
    ck_assert_int_eq(moe_expert_map_from_copies(&m1, 4, 2, 1, 3, NC, RANKS, SHARES, 2), MOE_OK);
    ck_assert(m0.replicated && m1.replicated);
    /* rank 0: canonical 0, 2 then the extra copy of 1; rank 1: canonical 1, 3 then extra 2 */
    int want0[3] = {0, 2, 1}, want1[3] = {1, 3, 2};
    for (int j = 0; j < 3; j++) {
        ck_assert_int_eq(m0.local_experts[j], want0[j]);
        ck_assert_int_eq(m1.local_experts[j], want1[j]);
    }
    ck_assert_int_eq(m0.n_canonical, 2);
    ck_assert_int_eq(m1.n_canonical, 2);
    ck_assert_int_eq(moe_expert_slot(&m0, 1), 3); /* canonical copy of 1: rank 1, local 0 */
    ck_assert_int_eq(moe_expert_slot(&m0, 2), 1);

    /* 8 pairs of expert 1 (0.25 / 0.75 -> 2 to the canonical slot 3, then 6 to
    ** slot 2), 5 of expert 2 (round(2.5) = 3 to slot 1, 2 to slot 5), interleaved */
    int32_t idx[16] = {1, 2, 1, 0, 2, 1, 1, 2, 3, 1, 2, 1, 1, 2, 1, 0}, slot[16];
    int32_t want[16] = {3, 1, 3, 0, 1, 2, 2, 1, 4, 2, 5, 2, 2, 5, 2, 0};
    int32_t *work = malloc(sizeof(int32_t) * moe_expert_map_work(&m0));
    moe_expert_map_slots(&m0, idx, 16, slot, work);
    for (int i = 0; i < 16; i++)
        ck_assert_msg(slot[i] == want[i], "pair %d (expert %d): slot %d, want %d", i, idx[i], slot[i], want[i]);
    int32_t slot1[16]; /* the other rank, same tokens: the same slots */
    moe_expert_map_slots(&m1, idx, 16, slot1, work);
    ck_assert(memcmp(slot, slot1, sizeof slot) == 0);
    free(work);
    moe_expert_map_free(&m0);
    moe_expert_map_free(&m1);
}
END_TEST

/* 4 experts on 3 ranks, 2 copies each: expert 0 on all three (0.1, 0.3, 0.6).
** For every pair count n, the copies take consecutive runs, n in all, each
** within one pair of n * share. */
START_TEST(copy_counts_follow_shares)
{
    static const int nc[4] = {3, 1, 1, 1};
    static const int ranks[12] = {0, 1, 2, 1, -1, -1, 2, -1, -1, 0, -1, -1};
    static const double shares[12] = {0.1, 0.3, 0.6, 1, 0, 0, 1, 0, 0, 1, 0, 0};
    moe_expert_map m;
    ck_assert_int_eq(moe_expert_map_from_copies(&m, 4, 3, 0, 2, nc, ranks, shares, 3), MOE_OK);
    int32_t *work = malloc(sizeof(int32_t) * moe_expert_map_work(&m));
    for (int n = 0; n <= 50; n++) {
        int32_t idx[50], slot[50];
        for (int i = 0; i < n; i++)
            idx[i] = 0;
        moe_expert_map_slots(&m, idx, n, slot, work);
        int got[3] = {0, 0, 0}, last = 0;
        for (int i = 0; i < n; i++) {
            int c = 0;
            while (c < 3 && slot[i] != m.copy_slot[c])
                c++;
            ck_assert_msg(c < 3 && c >= last, "n %d pair %d: slot %d out of order", n, i, slot[i]);
            got[c]++;
            last = c;
        }
        ck_assert_int_eq(got[0] + got[1] + got[2], n);
        for (int c = 0; c < 3; c++)
            ck_assert_msg(fabs(got[c] - shares[c] * n) <= 1.0 + 1e-9, "n %d copy %d: %d pairs", n, c, got[c]);
    }
    free(work);
    moe_expert_map_free(&m);
}
END_TEST

static void refused(int E, int P, int slots, const int *nc, const int *ranks, const double *shares, int maxc,
                    const char *want)
{
    moe_expert_map m;
    moe_status st = moe_expert_map_from_copies(&m, E, P, 0, slots, nc, ranks, shares, maxc);
    ck_assert_int_eq(st, MOE_ERR_USAGE);
    ck_assert_msg(strstr(moe_errmsg(), want), "refused with '%s', want '%s'", moe_errmsg(), want);
    moe_error_clear();
}

START_TEST(bad_tables_refused)
{
    static const int nc[4] = {1, 2, 2, 1};
    static const int out_of_range[8] = {0, -1, 1, 0, 0, 2, 1, -1};
    refused(4, 2, 3, nc, out_of_range, SHARES, 2, "outside the EP group");
    static const int twice[8] = {0, -1, 1, 1, 0, 1, 0, -1};
    refused(4, 2, 3, nc, twice, SHARES, 2, "two copies on rank 1");
    static const double bad_sum[8] = {1, 0, 0.25, 0.7, 0.5, 0.5, 1, 0};
    refused(4, 2, 3, nc, RANKS, bad_sum, 2, "sum to");
    static const double zero[8] = {1, 0, 0, 1, 0.5, 0.5, 1, 0};
    refused(4, 2, 3, nc, RANKS, zero, 2, "outside (0, 1]");
    static const int uneven[8] = {0, -1, 1, 0, 0, 1, 0, -1}; /* rank 0: 4 copies, rank 1: 2 */
    refused(4, 2, 3, nc, uneven, SHARES, 2, "exactly 3");
    static const int too_many[4] = {1, 3, 2, 1};
    refused(4, 2, 3, too_many, RANKS, SHARES, 2, "copies (1 to 2 allowed)");
    int ranks_of[4] = {0, 0, 0, 1};
    moe_expert_map m;
    ck_assert_int_eq(moe_expert_map_from_ranks(&m, 4, 2, 0, ranks_of), MOE_ERR_USAGE);
    ck_assert_msg(strstr(moe_errmsg(), "exactly 2"), "%s", moe_errmsg());
    moe_error_clear();
}
END_TEST

int main(void)
{
    Suite *s = suite_create("expert_map");
    TCase *tc = tcase_create("core");
    tcase_add_test(tc, contiguous_slots_are_expert_ids);
    tcase_add_test(tc, replicated_local_order_and_slots);
    tcase_add_test(tc, copy_counts_follow_shares);
    tcase_add_test(tc, bad_tables_refused);
    suite_add_tcase(s, tc);
    SRunner *sr = srunner_create(s);
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed ? 1 : 0;
}
