/*
** topology: the five parallel dimensions of moe.c and their groups, as pure
** arithmetic (no MPI). Megatron-Core semantics, "MoE parallel folding".
**
** One set of W ranks is cut two ways at once:
**   attention (dense) layers: TP x CP x DP x PP,  DP  = W / (TP*CP*PP)
**   MoE (expert) layers:      ETP x EP x EDP x PP, EDP = W / (ETP*EP*PP)
** Each cut is a mixed-radix numbering of the ranks. The order string lists the
** axes from fastest-varying (stride 1) to slowest; the default is Megatron's
** "tp-cp-ep-dp-pp". The attention cut reads it with ep = 1; the expert cut
** reads the same string with tp -> etp, cp = 1, dp -> edp. So by default
**   rank = tp  + TP  * (cp + CP * (dp  + DP  * pp))
**   rank = etp + ETP * (ep + EP * (edp + EDP * pp))
** Both cuts must give the same pipeline groups (checked at init).
**
** Groups (moe_group_kind) follow Megatron's
** generate_masked_orthogonal_rank_groups: a group varies the named axes and
** holds the others fixed. Attention side: tp, cp, dp, dp-cp, tp-cp, tp-dp-cp,
** pp. Expert side: ep, etp, tp-ep (etp x ep), edp. Groups are listed by their
** smallest rank; within a group, ranks are in Megatron's order (mixed radix
** over the varying axes, fastest first), which is also increasing rank order.
**
** What each group is for: dp-cp reduces non-expert gradients, edp reduces
** expert gradients, tp-cp reduces aux-loss token counts, tp-dp-cp the
** expert-bias / global-aux counts, ep carries the token all-to-all, tp-ep the
** routing-count all-gather, pp the stage send/recv.
**
** Memory: moe_layout is a plain value; moe_layout_groups returns a malloc'd
** table the caller frees with free(). Nothing else allocates.
*/
#ifndef MOE_TOPOLOGY_H
#define MOE_TOPOLOGY_H

#include "runtime/base/status.h"

typedef enum { MOE_G_TP, MOE_G_CP, MOE_G_DP, MOE_G_DP_CP, MOE_G_TP_CP, MOE_G_TP_DP_CP, MOE_G_PP,
               MOE_G_EP, MOE_G_ETP, MOE_G_TP_EP, MOE_G_EDP, MOE_G_COUNT } moe_group_kind;

/* Sizes of every dimension (dp and edp derived) and the order as given
** (lowercased; the default when none was). Axes the order leaves out have
** size 1 and are taken to follow it (appended in Megatron's order tp, pp,
** dp, ep, cp), which changes no rank; keeping the string as written means a
** layout re-made from l->order passes the same checks (Megatron's "ends with
** pp" test reads the string as written). */
typedef struct { int world, tp, cp, pp, dp, ep, etp, edp; char order[64]; } moe_layout;

/* A rank's coordinate on every axis of both cuts (pp is shared). */
typedef struct { int tp, cp, dp, pp, etp, ep, edp; } moe_coords;

/* Validates and fills *l. order may be NULL or "" for the default. Refuses,
** with MOE_ERR_USAGE and a message naming the sizes: a size < 1, W not
** divisible by TP*CP*PP or by ETP*EP*PP, an order that is not a permutation of
** {tp,cp,ep,dp,pp} (unknown or repeated axis, or an axis of size > 1 left
** out), an order not ending in pp with PP > 1 and EDP != DP, and pipeline
** groups that differ between the two cuts. */
moe_status moe_layout_init(moe_layout *l, int world, int tp, int cp, int pp, int ep, int etp, const char *order);

/* Checks that a model fits the layout: num_experts % EP, heads % TP,
** query_groups % TP, num_layers >= PP, seq_length % (2*CP) when CP > 1, and
** MOE_ERR_USAGE with a message naming the sizes otherwise. */
moe_status moe_layout_check_model(const moe_layout *l, int num_experts, int heads, int query_groups, int num_layers, int seq_length, int sequence_parallel);

/* rank in [0, world): its coordinates in both cuts. */
void moe_layout_coords(const moe_layout *l, int rank, moe_coords *c);

/* "tp","cp","dp","dp-cp","tp-cp","tp-dp-cp","pp","ep","etp","tp-ep","edp"; "?" out of range. */
const char *moe_group_name(moe_group_kind k);

/* All groups of kind k: *ranks is a malloc'd (ngroups, group_size) table,
** groups ordered by their smallest rank, ranks within a group in increasing
** order of the varying coordinate (Megatron's order); caller frees with free(). */
moe_status moe_layout_groups(const moe_layout *l, moe_group_kind k, int *ngroups, int *group_size, int **ranks);

/* The group of kind k holding `rank`: writes its group_size members (same
** order as moe_layout_groups) and returns the rank's index in it; -1 if k or
** rank is out of range (members untouched). */
int moe_layout_group_of(const moe_layout *l, moe_group_kind k, int rank, int *members /* group_size */);

#endif
