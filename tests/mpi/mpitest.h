/*
** mpitest: the verdict protocol of the multi-rank Check tests. Every rank
** evaluates a check and all ranks agree on the result (a MIN all-reduce), so a
** failure on one rank fails the test on every rank and none is left waiting
** in a collective. The including file defines `static moe_comm *W; static int
** R, P;` (world, rank, size) before using the macros.
*/
#ifndef MOE_MPITEST_H
#define MOE_MPITEST_H

#include <check.h>
#include <stdio.h>

#include "comm/comm.h"

static inline int mpitest_agree(moe_comm *w, int ok)
{
    int v = ok ? 1 : 0;
    return moe_allreduce(w, &v, 1, MOE_DT_I32, MOE_OP_MIN) == MOE_OK && v;
}

#define CHECK_ALL(cond, ...)                                                   \
    do {                                                                       \
        int ok_ = (cond);                                                      \
        if (!ok_) {                                                            \
            fprintf(stderr, "[rank %d of %d] %s:%d: ", R, P, __FILE__, __LINE__); \
            fprintf(stderr, __VA_ARGS__);                                      \
            fprintf(stderr, "\n");                                             \
        }                                                                      \
        ck_assert_msg(mpitest_agree(W, ok_), "failed on some rank: %s", #cond); \
    } while (0)

#define OK_ALL(call)                                                           \
    do {                                                                       \
        moe_error_clear();                                                     \
        moe_status st_ = (call);                                               \
        CHECK_ALL(st_ == MOE_OK, "%s: %s", #call, moe_errmsg());               \
    } while (0)

#endif
