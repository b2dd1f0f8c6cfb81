#include "runtime/base/topology.h"

#include <ctype.h>
#include <string.h>

#include "runtime/base/mem.h"

/* The five axes, in the order Megatron appends the ones an order string
** leaves out (its RankGenerator.name_to_size: tp, pp, dp, ep, cp). */
enum { AX_TP, AX_PP, AX_DP, AX_EP, AX_CP, AX_N };
static const char *const AX_NAME[AX_N] = {"tp", "pp", "dp", "ep", "cp"};

#define DEFAULT_ORDER "tp-cp-ep-dp-pp"

/* One of the two cuts: axis sizes in order position, fastest first. */
typedef struct {
    int axis[AX_N];   /* axis id at each position */
    int size[AX_N];   /* its size in this cut */
    int stride[AX_N]; /* product of the sizes before it */
} cut;

/* ------------------------------------------------------------------------- */
/* order strings                                                              */

static int axis_id(const char *tok, size_t n)
{
    for (int a = 0; a < AX_N; a++)
        if (strlen(AX_NAME[a]) == n && strncmp(AX_NAME[a], tok, n) == 0)
            return a;
    return -1;
}

/* Splits `order` (already lowercased) into axis ids; *ntok = how many the user
** wrote. Missing axes are appended in Megatron's order. Does not check sizes. */
static moe_status parse_order(const char *order, int axis[AX_N], int *ntok)
{
    int seen[AX_N] = {0};
    int n = 0;
    const char *p = order;
    for (;;) {
        const char *dash = strchr(p, '-');
        size_t len = dash ? (size_t)(dash - p) : strlen(p);
        if (len == 0)
            return moe_fail(MOE_ERR_USAGE, "parallel order '%s' has an empty axis name "
                            "(expected axes tp, cp, ep, dp, pp joined by '-')", order);
        int a = axis_id(p, len);
        if (a < 0)
            return moe_fail(MOE_ERR_USAGE, "parallel order '%s' has an unknown axis '%.*s' "
                            "(expected tp, cp, ep, dp, pp)", order, (int)len, p);
        if (seen[a])
            return moe_fail(MOE_ERR_USAGE, "parallel order '%s' names axis '%s' twice", order,
                            AX_NAME[a]);
        seen[a] = 1;
        axis[n++] = a;
        if (!dash)
            break;
        p = dash + 1;
    }
    *ntok = n;
    for (int a = 0; a < AX_N; a++)
        if (!seen[a])
            axis[n++] = a;
    return MOE_OK;
}

/* Size of axis a in the attention cut (expert = 0) or the expert cut (1). */
static int axis_size(const moe_layout *l, int expert, int a)
{
    switch (a) {
    case AX_TP: return expert ? l->etp : l->tp;
    case AX_CP: return expert ? 1 : l->cp;
    case AX_EP: return expert ? l->ep : 1;
    case AX_DP: return expert ? l->edp : l->dp;
    default: return l->pp;
    }
}

static void make_cut(const moe_layout *l, const int axis[AX_N], int expert, cut *c)
{
    int stride = 1;
    for (int i = 0; i < AX_N; i++) {
        c->axis[i] = axis[i];
        c->size[i] = axis_size(l, expert, axis[i]);
        c->stride[i] = stride;
        stride *= c->size[i];
    }
}

/* l->order was validated by moe_layout_init, so parsing it cannot fail. */
static void layout_cuts(const moe_layout *l, cut *attn, cut *expt)
{
    int axis[AX_N], ntok;
    moe_status st = parse_order(l->order, axis, &ntok);
    (void)st;
    make_cut(l, axis, 0, attn);
    make_cut(l, axis, 1, expt);
}

/* ------------------------------------------------------------------------- */
/* validation                                                                 */

static moe_status check_positive(int v, const char *what)
{
    if (v < 1)
        return moe_fail(MOE_ERR_USAGE, "%s %d must be >= 1", what, v);
    return MOE_OK;
}

/* An axis the order leaves out must have size 1 in both cuts. */
static moe_status check_omitted(const moe_layout *l, const int axis[AX_N], int ntok, const char *order)
{
    static const char *const LONG[AX_N] = {"tensor", "pipeline", "data", "expert", "context"};
    for (int i = ntok; i < AX_N; i++) {
        int a = axis[i];
        int sa = axis_size(l, 0, a), se = axis_size(l, 1, a);
        if (sa != 1)
            return moe_fail(MOE_ERR_USAGE, "parallel order '%s' leaves out '%s' but %s parallel size "
                            "is %d (only axes of size 1 may be left out)", order, AX_NAME[a], LONG[a], sa);
        if (se != 1)
            return moe_fail(MOE_ERR_USAGE, "parallel order '%s' leaves out '%s' but expert %s parallel "
                            "size is %d (only axes of size 1 may be left out)", order, AX_NAME[a],
                            a == AX_EP ? "model" : LONG[a], se);
    }
    return MOE_OK;
}

/* Position of axis a in the cut; every axis has one (parse_order appends the
** missing ones), so the last position is the only one left if none matched. */
static int pos_of(const cut *c, int a)
{
    int i = 0;
    while (i < AX_N - 1 && c->axis[i] != a)
        i++;
    return i;
}

/* A refused layout is left all zero, so nobody computes with half of it. */
static moe_status fail_clear(moe_layout *l, moe_status st)
{
    memset(l, 0, sizeof *l);
    return st;
}

moe_status moe_layout_init(moe_layout *l, int world, int tp, int cp, int pp, int ep, int etp, const char *order)
{
    memset(l, 0, sizeof *l);
    MOE_TRY(check_positive(world, "world size"));
    MOE_TRY(check_positive(tp, "tensor parallel size"));
    MOE_TRY(check_positive(cp, "context parallel size"));
    MOE_TRY(check_positive(pp, "pipeline parallel size"));
    MOE_TRY(check_positive(ep, "expert parallel size"));
    MOE_TRY(check_positive(etp, "expert tensor parallel size"));

    long long model = (long long)tp * cp * pp;
    if (world % model != 0)
        return moe_fail(MOE_ERR_USAGE, "world size %d is not divisible by tensor x context x pipeline "
                        "= %lld (%d x %d x %d)", world, model, tp, cp, pp);
    long long expert = (long long)etp * ep * pp;
    if (world % expert != 0)
        return moe_fail(MOE_ERR_USAGE, "world size %d is not divisible by expert-tensor x expert x "
                        "pipeline = %lld (%d x %d x %d)", world, expert, etp, ep, pp);

    if (!order || !*order)
        order = DEFAULT_ORDER;
    size_t olen = strlen(order);
    if (olen >= sizeof l->order)
        return moe_fail(MOE_ERR_USAGE, "parallel order '%.20s...' is too long (%zu characters)", order, olen);
    for (size_t i = 0; i <= olen; i++)
        l->order[i] = (char)tolower((unsigned char)order[i]);

    l->world = world;
    l->tp = tp, l->cp = cp, l->pp = pp, l->ep = ep, l->etp = etp;
    l->dp = (int)(world / model);
    l->edp = (int)(world / expert);

    int axis[AX_N], ntok;
    moe_status st = parse_order(l->order, axis, &ntok);
    if (st == MOE_OK)
        st = check_omitted(l, axis, ntok, l->order);
    if (st != MOE_OK) {
        moe_trace_frame(__FILE__, __LINE__);
        return fail_clear(l, st);
    }

    /* Megatron asserts this on the order string as written: with pp not the
    ** slowest axis, the two cuts only agree on stages when DP == EDP. */
    if (axis[ntok - 1] != AX_PP && pp > 1 && l->edp != l->dp)
        return fail_clear(l, moe_fail(MOE_ERR_USAGE, "parallel order '%s' does not end with pp, so with "
                          "pipeline size %d the expert data-parallel size %d (= %d / (%d x %d x %d)) must "
                          "equal the data-parallel size %d (= %d / (%d x %d x %d))", l->order, pp, l->edp,
                          world, etp, ep, pp, l->dp, world, tp, cp, pp));

    /* Both cuts must give the same pipeline groups. A pp group is
    ** {base + k * stride}: identical for all ranks iff the strides agree. */
    cut attn, expt;
    make_cut(l, axis, 0, &attn);
    make_cut(l, axis, 1, &expt);
    int sa = attn.stride[pos_of(&attn, AX_PP)], se = expt.stride[pos_of(&expt, AX_PP)];
    if (pp > 1 && sa != se)
        return fail_clear(l, moe_fail(MOE_ERR_USAGE, "parallel order '%s' gives different pipeline groups "
                          "for attention (stages %d ranks apart; tp %d cp %d dp %d) and experts (stages %d "
                          "ranks apart; etp %d ep %d edp %d)", l->order, sa, tp, cp, l->dp, se, etp, ep,
                          l->edp));
    return MOE_OK;
}

moe_status moe_layout_check_model(const moe_layout *l, int num_experts, int heads, int query_groups,
                                  int num_layers, int seq_length, int sequence_parallel)
{
    if (num_experts < 0)
        return moe_fail(MOE_ERR_USAGE, "number of experts %d must be >= 0", num_experts);
    if (num_experts == 0 && l->ep > 1)
        return moe_fail(MOE_ERR_USAGE, "expert parallel size %d needs an MoE model (number of experts is 0)",
                        l->ep);
    if (num_experts % l->ep != 0)
        return moe_fail(MOE_ERR_USAGE, "number of experts %d is not divisible by expert parallel size %d",
                        num_experts, l->ep);
    if (heads < 1 || heads % l->tp != 0)
        return moe_fail(MOE_ERR_USAGE, "number of attention heads %d is not divisible by tensor "
                        "parallel size %d", heads, l->tp);
    if (query_groups < 1 || query_groups % l->tp != 0)
        return moe_fail(MOE_ERR_USAGE, "number of query groups %d is not divisible by tensor "
                        "parallel size %d", query_groups, l->tp);
    /* how the layers split into stages (evenly, or first/last stage given) is the config's to check */
    if (num_layers < l->pp)
        return moe_fail(MOE_ERR_USAGE, "number of layers %d is fewer than the pipeline parallel size %d",
                        num_layers, l->pp);
    if (seq_length < 1)
        return moe_fail(MOE_ERR_USAGE, "sequence length %d must be >= 1", seq_length);
    /* Causal load balance cuts the sequence into 2*CP chunks (rank r gets
    ** chunks r and 2CP-1-r). */
    if (l->cp > 1 && seq_length % (2 * l->cp) != 0)
        return moe_fail(MOE_ERR_USAGE, "sequence length %d is not divisible by 2 x context parallel "
                        "size = %d (2 x %d)", seq_length, 2 * l->cp, l->cp);
    /* Megatron-Core refuses MoE with TP > 1 without sequence parallelism;
    ** here the routed experts take each tp rank's 1/TP of the tokens either
    ** way, so both run. */
    (void)sequence_parallel;
    return MOE_OK;
}

/* ------------------------------------------------------------------------- */
/* coordinates and groups                                                     */

static int coord(const cut *c, int a, int rank)
{
    int i = pos_of(c, a);
    return (rank / c->stride[i]) % c->size[i];
}

void moe_layout_coords(const moe_layout *l, int rank, moe_coords *c)
{
    cut attn, expt;
    layout_cuts(l, &attn, &expt);
    c->tp = coord(&attn, AX_TP, rank);
    c->cp = coord(&attn, AX_CP, rank);
    c->dp = coord(&attn, AX_DP, rank);
    c->pp = coord(&attn, AX_PP, rank);
    c->etp = coord(&expt, AX_TP, rank);
    c->ep = coord(&expt, AX_EP, rank);
    c->edp = coord(&expt, AX_DP, rank);
}

static const char *const GROUP_NAME[MOE_G_COUNT] = {"tp", "cp", "dp", "dp-cp", "tp-cp", "tp-dp-cp",
                                                    "pp", "ep", "etp", "tp-ep", "edp"};

const char *moe_group_name(moe_group_kind k)
{
    return (unsigned)k < MOE_G_COUNT ? GROUP_NAME[k] : "?";
}

/* Which cut a kind lives in and which axes it varies (Megatron's get_ranks
** token: the expert cut names etp "tp" and edp "dp"). */
static int kind_axes(moe_group_kind k, int *expert, int varies[AX_N])
{
    memset(varies, 0, AX_N * sizeof *varies);
    *expert = 0;
    switch (k) {
    case MOE_G_TP: varies[AX_TP] = 1; break;
    case MOE_G_CP: varies[AX_CP] = 1; break;
    case MOE_G_DP: varies[AX_DP] = 1; break;
    case MOE_G_DP_CP: varies[AX_DP] = varies[AX_CP] = 1; break;
    case MOE_G_TP_CP: varies[AX_TP] = varies[AX_CP] = 1; break;
    case MOE_G_TP_DP_CP: varies[AX_TP] = varies[AX_DP] = varies[AX_CP] = 1; break;
    case MOE_G_PP: varies[AX_PP] = 1; break;
    case MOE_G_EP: *expert = 1, varies[AX_EP] = 1; break;
    case MOE_G_ETP: *expert = 1, varies[AX_TP] = 1; break;
    case MOE_G_TP_EP: *expert = 1, varies[AX_TP] = varies[AX_EP] = 1; break;
    case MOE_G_EDP: *expert = 1, varies[AX_DP] = 1; break;
    default: return -1;
    }
    return 0;
}

/* generate_masked_orthogonal_rank_groups, split in two: the masked (varying)
** positions and the unmasked (fixed) ones, each with its global strides. */
typedef struct {
    int nm, nu;
    int msize[AX_N], mstride[AX_N];
    int usize[AX_N], ustride[AX_N];
    int group_size, ngroups;
} masked;

static void make_masked(const moe_layout *l, moe_group_kind k, masked *m)
{
    cut attn, expt;
    layout_cuts(l, &attn, &expt);
    int expert, varies[AX_N];
    kind_axes(k, &expert, varies);
    const cut *c = expert ? &expt : &attn;
    m->nm = m->nu = 0;
    m->group_size = 1;
    for (int i = 0; i < AX_N; i++) {
        if (varies[c->axis[i]]) {
            m->msize[m->nm] = c->size[i], m->mstride[m->nm++] = c->stride[i];
            m->group_size *= c->size[i];
        } else {
            m->usize[m->nu] = c->size[i], m->ustride[m->nu++] = c->stride[i];
        }
    }
    m->ngroups = l->world / m->group_size;
}

/* sum_i idx_i * stride_i where idx is `index` decomposed mixed-radix over shape. */
static int compose(int index, int n, const int *shape, const int *stride)
{
    int r = 0;
    for (int i = 0; i < n; i++) {
        r += (index % shape[i]) * stride[i];
        index /= shape[i];
    }
    return r;
}

moe_status moe_layout_groups(const moe_layout *l, moe_group_kind k, int *ngroups, int *group_size, int **ranks)
{
    *ranks = NULL;
    if ((unsigned)k >= MOE_G_COUNT)
        return moe_fail(MOE_ERR_INTERNAL, "unknown group kind %d", (int)k);
    masked m;
    make_masked(l, k, &m);
    /* moe_alloc's buffers come from aligned_alloc, so the caller's free() is right. */
    int *t;
    MOE_TRY(moe_alloc((void **)&t, (size_t)l->world * sizeof *t, "group table"));
    for (int g = 0; g < m.ngroups; g++) {
        int base = compose(g, m.nu, m.usize, m.ustride);
        for (int r = 0; r < m.group_size; r++)
            t[(size_t)g * m.group_size + r] = base + compose(r, m.nm, m.msize, m.mstride);
    }
    *ngroups = m.ngroups;
    *group_size = m.group_size;
    *ranks = t;
    return MOE_OK;
}

int moe_layout_group_of(const moe_layout *l, moe_group_kind k, int rank, int *members)
{
    if ((unsigned)k >= MOE_G_COUNT || rank < 0 || rank >= l->world)
        return -1;
    masked m;
    make_masked(l, k, &m);
    /* The fixed coordinates give the base; the varying ones, mixed-radix over
    ** the masked shape, give the rank's place in the group. */
    int base = 0, index = 0, radix = 1;
    for (int i = 0; i < m.nu; i++)
        base += (rank / m.ustride[i]) % m.usize[i] * m.ustride[i];
    for (int i = 0; i < m.nm; i++) {
        index += (rank / m.mstride[i]) % m.msize[i] * radix;
        radix *= m.msize[i];
    }
    for (int r = 0; r < m.group_size; r++)
        members[r] = base + compose(r, m.nm, m.msize, m.mstride);
    return index;
}

