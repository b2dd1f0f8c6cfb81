/*
** placement_internal: what placement.c shares with placement_search.c and
** placement_ilp.c. Not for use outside planner/placement*.c.
*/
#ifndef MOE_PLACEMENT_INTERNAL_H
#define MOE_PLACEMENT_INTERNAL_H

#include "runtime/base/status.h"

/* Lightest rank with a free slot (and, when holds != NULL, not holding expert
** e: holds is ranks x experts); ties to the lower rank. -1 if none. */
int moe_place_lightest(const double *load, const int *count, int ranks, int slots, const unsigned char *holds,
                       int experts, int e);
/* MOE_ERR_USAGE unless ranks x slots can hold experts + extra copies, each
** expert at most once per rank. */
moe_status moe_place_check_room(int experts, int ranks, int slots, int extra);
/* The busiest rank's load under shares (experts x ranks) of loads w. */
double moe_place_max_load_shares(const double *w, int experts, int ranks, const double *share);
/* 1 when every load is a whole number (bounds may then round up). */
int moe_place_all_integral(const double *w, int n);

#endif
