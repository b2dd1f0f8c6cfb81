/*
** comm/mpi.c: comm/comm.h over MPI and host memory: set-up, groups, errors and
** requests; the operations are in comm/mpi_ops.c (docs/comm.md).
**
** Each moe_comm owns two MPI communicators over the same ranks: `comm` carries
** MPI's collectives and the caller's send/recv, `p2p` (a duplicate) carries
** the collectives built here from point-to-point messages, so those can never
** match a caller's message whatever its tag.
**
** 64-bit counts: max_chunk (INT_MAX; MOE_COMM_MAX_CHUNK lowers it so tests can
** force tiny chunks) is the largest count or displacement ever handed to MPI
** as an int. Reductions split into calls of <= max_chunk elements; data
** movement describes a larger block with one derived datatype (big_type).
** Every choice between two algorithms depends only on values all ranks share
** (count; recv_counts of allgatherv), never on one rank's displacements, so no
** rank ever enters a different collective from its peers.
*/
#include "comm/comm.h"

#include <limits.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <mpi.h>

#include "comm/mpi_internal.h"
#include "runtime/base/mem.h"

size_t moe_mpi_max_chunk = INT_MAX;
static int tag_ub = 32767;    /* MPI guarantees at least this */
static int thread_level = -1; /* what MPI_Init_thread provided; -1 before init */
static int we_initialized;    /* we called MPI_Init_thread, so we finalize */
static moe_comm world = {.comm = MPI_COMM_NULL, .p2p = MPI_COMM_NULL, .name = "world"};

size_t moe_dtype_size(moe_dtype t)
{
    switch (t) {
    case MOE_DT_F32: return 4;
    case MOE_DT_F64: return 8;
    case MOE_DT_I32: return 4;
    case MOE_DT_I64: return 8;
    case MOE_DT_U8: return 1;
    }
    return 0;
}

MPI_Datatype moe_mpi_dtype(moe_dtype t)
{
    switch (t) {
    case MOE_DT_F32: return MPI_FLOAT;
    case MOE_DT_F64: return MPI_DOUBLE;
    case MOE_DT_I32: return MPI_INT32_T;
    case MOE_DT_I64: return MPI_INT64_T;
    case MOE_DT_U8: return MPI_UINT8_T;
    }
    return MPI_DATATYPE_NULL;
}

MPI_Op moe_mpi_redop(moe_redop op)
{
    switch (op) {
    case MOE_OP_SUM: return MPI_SUM;
    case MOE_OP_MAX: return MPI_MAX;
    case MOE_OP_MIN: return MPI_MIN;
    }
    return MPI_OP_NULL;
}

/* ---- errors ---------------------------------------------------------------- */

/* "alltoallv on group 'ep' (rank 1 of 4) failed: ..." or, with a peer,
** "send on group 'pp' (rank 1 of 4) failed at peer 3: ...". */
moe_status moe_mpi_fail_site(const char *op, int peer, const char *group, int rank, int size,
                             int rc)
{
    char text[MPI_MAX_ERROR_STRING];
    int len = 0;
    if (MPI_Error_string(rc, text, &len) != MPI_SUCCESS)
        snprintf(text, sizeof text, "MPI error code %d", rc);
    if (peer >= 0)
        return moe_fail(MOE_ERR_SYSTEM, "%s on group '%s' (rank %d of %d) failed at peer %d: %s",
                        op, group, rank, size, peer, text);
    return moe_fail(MOE_ERR_SYSTEM, "%s on group '%s' (rank %d of %d) failed: %s", op, group, rank,
                    size, text);
}

moe_status moe_mpi_fail(const moe_comm *c, const char *op, int peer, int rc)
{
    return moe_mpi_fail_site(op, peer, c->name, c->rank, c->size, rc);
}

/* A bad argument is a bug in the caller: MOE_ERR_INTERNAL, before MPI sees it. */
moe_status moe_mpi_fail_arg(const moe_comm *c, const char *op, const char *fmt, ...)
{
    char what[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(what, sizeof what, fmt, ap);
    va_end(ap);
    return moe_fail(MOE_ERR_INTERNAL, "%s on group '%s' (rank %d of %d): %s", op, c->name, c->rank,
                    c->size, what);
}

moe_status moe_mpi_check_comm(const moe_comm *c, const char *op)
{
    if (!c)
        return moe_fail(MOE_ERR_INTERNAL, "%s on a NULL communicator", op);
    if (c->comm == MPI_COMM_NULL) /* only the world can be seen freed: it is static */
        return moe_fail(MOE_ERR_INTERNAL, "%s on group '%s', which is freed (%s)", op, c->name,
                        thread_level < 0 ? "moe_comm_init has not run" : "after moe_comm_finalize");
    return MOE_OK;
}

moe_status moe_mpi_check_args(const moe_comm *c, const char *op, moe_dtype t)
{
    MOE_TRY(moe_mpi_check_comm(c, op));
    if (moe_dtype_size(t) == 0)
        return moe_mpi_fail_arg(c, op, "unknown dtype %d", (int)t);
    return MOE_OK;
}

moe_status moe_mpi_check_buf(const moe_comm *c, const char *op, const void *p, size_t count,
                             const char *what)
{
    if (count > 0 && !p)
        return moe_mpi_fail_arg(c, op, "NULL %s buffer with %zu elements", what, count);
    return MOE_OK;
}

moe_status moe_mpi_check_peer(const moe_comm *c, const char *op, int peer, int tag)
{
    if (peer < 0 || peer >= c->size)
        return moe_mpi_fail_arg(c, op, "peer %d is outside [0, %d)", peer, c->size);
    if (tag < 0 || tag > tag_ub)
        return moe_mpi_fail_arg(c, op, "tag %d (peer %d) is outside [0, %d]", tag, peer, tag_ub);
    return MOE_OK;
}

/* ---- 64-bit blocks ---------------------------------------------------------- */

/*
** One (count, type) pair for n elements: the dtype itself while n fits in
** max_chunk, else one committed type [q blocks of max_chunk][remainder] of
** extent n elements, which moe_mpi_blk_release frees (or the request, once done).
*/
int moe_mpi_big_type(size_t n, moe_dtype t, moe_mpi_blk *b)
{
    MPI_Datatype base = moe_mpi_dtype(t);
    b->type = base;
    b->count = (int)(n < moe_mpi_max_chunk ? n : moe_mpi_max_chunk);
    b->derived = 0;
    if (n <= moe_mpi_max_chunk)
        return MPI_SUCCESS;
    size_t es = moe_dtype_size(t), q = n / moe_mpi_max_chunk, r = n % moe_mpi_max_chunk;
    if (q > INT_MAX)
        return MPI_ERR_COUNT;
    MPI_Datatype chunk, body, full;
    int rc = MPI_Type_contiguous((int)moe_mpi_max_chunk, base, &chunk);
    if (rc != MPI_SUCCESS)
        return rc;
    rc = MPI_Type_contiguous((int)q, chunk, &body);
    MPI_Type_free(&chunk);
    if (rc != MPI_SUCCESS)
        return rc;
    if (r > 0) {
        int lens[2] = {1, (int)r};
        MPI_Aint disp[2] = {0, (MPI_Aint)(q * moe_mpi_max_chunk * es)};
        MPI_Datatype types[2] = {body, base};
        rc = MPI_Type_create_struct(2, lens, disp, types, &full);
        MPI_Type_free(&body);
        if (rc != MPI_SUCCESS)
            return rc;
    } else {
        full = body;
    }
    /* a struct may pad its extent to an alignment; blocks must sit n elements apart */
    rc = MPI_Type_create_resized(full, 0, (MPI_Aint)(n * es), &b->type);
    MPI_Type_free(&full);
    if (rc != MPI_SUCCESS)
        return rc;
    rc = MPI_Type_commit(&b->type);
    if (rc != MPI_SUCCESS) {
        MPI_Type_free(&b->type);
        return rc;
    }
    b->count = 1;
    b->derived = 1;
    return MPI_SUCCESS;
}

/* Blocking calls free a derived type at once; a request keeps it until done
** (Open MPI has had bugs freeing types under pending non-blocking collectives). */
void moe_mpi_blk_release(moe_mpi_blk *b, moe_request *r)
{
    if (!b->derived)
        return;
    if (r && r->ntypes < r->typecap)
        r->types[r->ntypes++] = b->type;
    else
        MPI_Type_free(&b->type);
    b->derived = 0;
}

/* ---- set-up ---------------------------------------------------------------- */

static moe_status read_max_chunk(void)
{
    const char *s = getenv("MOE_COMM_MAX_CHUNK");
    if (!s || !*s)
        return MOE_OK;
    char *end = NULL;
    unsigned long long v = strtoull(s, &end, 10);
    if (*end != '\0' || v < 1 || v > INT_MAX)
        return moe_fail(MOE_ERR_USAGE, "MOE_COMM_MAX_CHUNK='%s' must be an integer in [1, %d]", s,
                        INT_MAX);
    moe_mpi_max_chunk = (size_t)v;
    return MOE_OK;
}

static moe_status make_world(void)
{
    int rc = MPI_Comm_dup(MPI_COMM_WORLD, &world.comm);
    if (rc == MPI_SUCCESS)
        rc = MPI_Comm_dup(MPI_COMM_WORLD, &world.p2p);
    if (rc == MPI_SUCCESS)
        rc = MPI_Comm_rank(world.comm, &world.rank);
    if (rc == MPI_SUCCESS)
        rc = MPI_Comm_size(world.comm, &world.size);
    if (rc != MPI_SUCCESS)
        return moe_mpi_fail_site("init", -1, "world", 0, 0, rc);
    return MOE_OK;
}

moe_status moe_comm_init(int *argc, char ***argv)
{
    if (world.comm != MPI_COMM_NULL)
        return MOE_OK;
    MOE_TRY(read_max_chunk());
    int inited = 0, finalized = 0;
    MPI_Initialized(&inited);
    MPI_Finalized(&finalized);
    if (finalized)
        return moe_fail(MOE_ERR_INTERNAL, "moe_comm_init after MPI was finalized");
    int provided = MPI_THREAD_SINGLE;
    if (inited) {
        MPI_Query_thread(&provided);
    } else {
        /* MULTIPLE if we can have it (the overlap engine may want it); FUNNELED will do */
        int rc = MPI_Init_thread(argc, argv, MPI_THREAD_MULTIPLE, &provided);
        if (rc != MPI_SUCCESS)
            return moe_mpi_fail_site("MPI_Init_thread", -1, "world", 0, 0, rc);
        we_initialized = 1;
    }
    thread_level = provided;
    /* from here on every MPI failure comes back as a code, never an abort */
    MPI_Comm_set_errhandler(MPI_COMM_WORLD, MPI_ERRORS_RETURN);
    MPI_Comm_set_errhandler(MPI_COMM_SELF, MPI_ERRORS_RETURN);
    moe_status st = MOE_OK;
    if (provided < MPI_THREAD_FUNNELED)
        st = moe_fail(MOE_ERR_SYSTEM,
                      "MPI provides thread level %d; moe.c needs MPI_THREAD_FUNNELED or better",
                      provided);
    int *ub = NULL, flag = 0;
    if (MPI_Comm_get_attr(MPI_COMM_WORLD, MPI_TAG_UB, &ub, &flag) == MPI_SUCCESS && flag && ub)
        tag_ub = *ub;
    if (st == MOE_OK)
        st = make_world();
    if (st != MOE_OK && we_initialized) { /* no world: finalize would never run */
        if (world.comm != MPI_COMM_NULL)
            MPI_Comm_free(&world.comm);
        if (world.p2p != MPI_COMM_NULL)
            MPI_Comm_free(&world.p2p);
        MPI_Finalize();
        we_initialized = 0;
    }
    MOE_TRY(st);
    return MOE_OK;
}

moe_status moe_comm_world(moe_comm **out)
{
    if (!out)
        return moe_fail(MOE_ERR_INTERNAL, "moe_comm_world: NULL output pointer");
    *out = NULL;
    MOE_TRY(moe_mpi_check_comm(&world, "moe_comm_world"));
    *out = &world;
    return MOE_OK;
}

moe_status moe_comm_finalize(void)
{
    if (world.comm == MPI_COMM_NULL)
        return MOE_OK;
    MPI_Comm_free(&world.p2p);
    MPI_Comm_free(&world.comm);
    world.comm = world.p2p = MPI_COMM_NULL;
    if (we_initialized) {
        int rc = MPI_Finalize();
        we_initialized = 0;
        if (rc != MPI_SUCCESS)
            return moe_mpi_fail_site("MPI_Finalize", -1, "world", world.rank, world.size, rc);
    }
    return MOE_OK;
}

void moe_comm_abort(int code)
{
    int inited = 0, finalized = 0;
    MPI_Initialized(&inited);
    MPI_Finalized(&finalized);
    if (inited && !finalized)
        MPI_Abort(MPI_COMM_WORLD, code);
    exit(code); /* no MPI job to take down: this process is the job */
}

/* ---- groups ---------------------------------------------------------------- */

/* Every parent rank exactly once, ngroups * group_size == parent size. Local
** and identical on every rank, so all ranks refuse the same table together. */
static moe_status check_table(const moe_comm *p, const int *groups, int ngroups, int group_size,
                              const char *op, char *seen, int *my_group, int *my_pos)
{
    if (!groups || ngroups < 1 || group_size < 1)
        return moe_mpi_fail_arg(p, op, "empty group table (%d x %d)", ngroups, group_size);
    if ((long long)ngroups * group_size != p->size)
        return moe_mpi_fail_arg(p, op, "the table is %d x %d = %lld ranks but the parent has %d",
                                ngroups, group_size, (long long)ngroups * group_size, p->size);
    for (int g = 0; g < ngroups; g++) {
        for (int k = 0; k < group_size; k++) {
            int r = groups[(size_t)g * group_size + k];
            if (r < 0 || r >= p->size)
                return moe_mpi_fail_arg(p, op, "rank %d at groups[%d][%d] is outside [0, %d)", r, g,
                                        k, p->size);
            if (seen[r])
                return moe_mpi_fail_arg(p, op, "rank %d appears twice (again at groups[%d][%d])", r,
                                        g, k);
            seen[r] = 1;
            if (r == p->rank) {
                *my_group = g;
                *my_pos = k;
            }
        }
    }
    return MOE_OK;
}

/* MPI_Comm_split of parent and the new communicator's set-up (errors
** returned, a duplicate for the point-to-point collectives). color
** MPI_UNDEFINED: this rank is in no group, *out = NULL. */
static moe_status split(moe_comm *parent, const char *op, const char *name, int color, int key, moe_comm **out)
{
    MPI_Comm sub = MPI_COMM_NULL;
    int rc = MPI_Comm_split(parent->comm, color, key, &sub);
    if (rc != MPI_SUCCESS)
        return moe_mpi_fail(parent, op, -1, rc);
    if (sub == MPI_COMM_NULL)
        return MOE_OK;
    moe_comm *c = NULL;
    moe_status st = moe_alloc((void **)&c, sizeof *c, "communicator");
    if (st != MOE_OK) {
        MPI_Comm_free(&sub);
        return st;
    }
    c->comm = sub;
    c->p2p = MPI_COMM_NULL;
    snprintf(c->name, sizeof c->name, "%s", name);
    rc = MPI_Comm_set_errhandler(c->comm, MPI_ERRORS_RETURN);
    if (rc == MPI_SUCCESS)
        rc = MPI_Comm_dup(c->comm, &c->p2p);
    if (rc == MPI_SUCCESS)
        rc = MPI_Comm_rank(c->comm, &c->rank);
    if (rc == MPI_SUCCESS)
        rc = MPI_Comm_size(c->comm, &c->size);
    if (rc != MPI_SUCCESS) {
        moe_comm_free(c);
        return moe_mpi_fail(parent, op, -1, rc);
    }
    *out = c;
    return MOE_OK;
}

moe_status moe_comm_create(moe_comm *parent, const int *groups, int ngroups, int group_size,
                           const char *name, moe_comm **out)
{
    char op[64];
    snprintf(op, sizeof op, "comm_create '%s'", name ? name : "?");
    MOE_TRY(moe_mpi_check_comm(parent, op));
    if (!out || !name)
        return moe_mpi_fail_arg(parent, op, "NULL %s", out ? "name" : "output pointer");
    *out = NULL;
    char *seen = NULL;
    MOE_TRY(moe_alloc((void **)&seen, (size_t)parent->size, "comm_create rank table"));
    int g = -1, k = -1;
    moe_status st = check_table(parent, groups, ngroups, group_size, op, seen, &g, &k);
    moe_free(seen);
    MOE_TRY(st);

    moe_comm *c = NULL; /* color = our group, key = our position: MPI orders the new ranks as listed */
    MOE_TRY(split(parent, op, name, g, k, &c));
    if (c->rank != k || c->size != group_size) {
        moe_comm_free(c);
        return moe_mpi_fail_arg(parent, op, "MPI made rank %d of %d, the table says %d of %d",
                                c->rank, c->size, k, group_size);
    }
    *out = c;
    return MOE_OK;
}

moe_status moe_comm_create_subset(moe_comm *parent, const int *ranks, int n, const char *name, moe_comm **out)
{
    char op[64];
    snprintf(op, sizeof op, "comm_create_subset '%s'", name ? name : "?");
    MOE_TRY(moe_mpi_check_comm(parent, op));
    if (!out || !name || !ranks)
        return moe_mpi_fail_arg(parent, op, "NULL %s", !out ? "output pointer" : !name ? "name" : "rank list");
    *out = NULL;
    if (n < 1 || n > parent->size)
        return moe_mpi_fail_arg(parent, op, "%d ranks listed for a group of %d", n, parent->size);
    int pos = -1;
    for (int i = 0; i < n; i++) {
        if (ranks[i] < 0 || ranks[i] >= parent->size)
            return moe_mpi_fail_arg(parent, op, "rank %d at [%d] is outside [0, %d)", ranks[i], i, parent->size);
        for (int j = 0; j < i; j++)
            if (ranks[j] == ranks[i])
                return moe_mpi_fail_arg(parent, op, "rank %d listed twice", ranks[i]);
        if (ranks[i] == parent->rank)
            pos = i;
    }
    return split(parent, op, name, pos >= 0 ? 0 : MPI_UNDEFINED, pos, out);
}

void moe_comm_free(moe_comm *c)
{
    if (!c || c == &world) /* the world belongs to moe_comm_finalize */
        return;
    if (c->p2p != MPI_COMM_NULL)
        MPI_Comm_free(&c->p2p);
    if (c->comm != MPI_COMM_NULL)
        MPI_Comm_free(&c->comm);
    moe_free(c);
}

int moe_comm_rank(const moe_comm *c) { return c ? c->rank : -1; }
int moe_comm_size(const moe_comm *c) { return c ? c->size : 0; }
const char *moe_comm_name(const moe_comm *c) { return c ? c->name : "(null)"; }

/* ---- requests -------------------------------------------------------------- */

moe_status moe_mpi_req_new(const moe_comm *c, const char *op, int cap, int typecap,
                           moe_request **out)
{
    size_t bytes = sizeof(moe_request) + (size_t)cap * (sizeof(MPI_Request) + sizeof(MPI_Status)) +
                   (size_t)typecap * sizeof(MPI_Datatype) + (size_t)cap * sizeof(int);
    moe_request *r = NULL;
    MOE_TRY(moe_alloc((void **)&r, bytes, "comm request"));
    char *p = (char *)(r + 1); /* every piece below is pointer-aligned, ints last */
    r->reqs = (MPI_Request *)p;
    p += (size_t)cap * sizeof(MPI_Request);
    r->sts = (MPI_Status *)p;
    p += (size_t)cap * sizeof(MPI_Status);
    r->types = (MPI_Datatype *)p;
    p += (size_t)typecap * sizeof(MPI_Datatype);
    r->peers = (int *)p;
    r->cap = cap;
    r->typecap = typecap;
    r->expect = SIZE_MAX;
    snprintf(r->op, sizeof r->op, "%s", op);
    snprintf(r->group, sizeof r->group, "%s", c->name);
    r->rank = c->rank;
    r->size = c->size;
    *out = r;
    return MOE_OK;
}

MPI_Request *moe_mpi_req_slot(moe_request *r, int peer)
{
    r->peers[r->n] = peer;
    return &r->reqs[r->n++];
}

static void free_types(moe_request *r)
{
    for (int i = 0; i < r->ntypes; i++)
        MPI_Type_free(&r->types[i]);
    r->ntypes = 0;
}

/* Completed: everything goes. */
static void req_free(moe_request *r)
{
    free_types(r);
    moe_free(r->tmp);
    moe_free(r->aux);
    moe_free(r);
}

/* Failed: MPI may still write into the staging buffers of operations that did
** not complete, so they are left behind (the job is about to abort anyway). */
void moe_mpi_req_drop(moe_request *r)
{
    if (!r)
        return;
    free_types(r);
    moe_free(r);
}

static moe_status req_fail(moe_request *r, int rc)
{
    int peer = -1;
    if (rc == MPI_ERR_IN_STATUS) {
        for (int i = 0; i < r->n; i++) {
            int e = r->sts[i].MPI_ERROR;
            if (e != MPI_SUCCESS && e != MPI_ERR_PENDING) {
                rc = e;
                peer = r->peers[i];
                break;
            }
        }
    }
    return moe_mpi_fail_site(r->op, peer, r->group, r->rank, r->size, rc);
}

void moe_mpi_unpack(char *recv, const char *packed, const size_t *counts, const size_t *displs,
                    const int *from, int size, size_t es)
{
    for (int j = 0; j < size; j++)
        memcpy(recv + displs[j] * es, packed + (size_t)from[j] * es, counts[j] * es);
}

/* After completion: an irecv must have had exactly its count; a staged
** allgatherv moves its packed blocks to where the caller asked. */
static moe_status req_finish(moe_request *r)
{
    if (r->expect != SIZE_MAX) {
        MPI_Count got = 0;
        MPI_Get_elements_x(&r->sts[0], r->expect_type, &got);
        if (got < 0 || (size_t)got != r->expect)
            return moe_fail(MOE_ERR_INTERNAL,
                            "%s on group '%s' (rank %d of %d): the message from peer %d has "
                            "%lld elements, expected %zu",
                            r->op, r->group, r->rank, r->size, r->peers[0], (long long)got,
                            r->expect);
    }
    if (r->unpack_recv)
        moe_mpi_unpack(r->unpack_recv, r->tmp, r->unpack_counts, r->unpack_displs, r->unpack_from,
                       r->size, r->esize);
    return MOE_OK;
}

static moe_status req_poll(moe_request *r, int block, int *done)
{
    int flag = 1;
    if (r->n > 0) {
        int rc =
            block ? MPI_Waitall(r->n, r->reqs, r->sts) : MPI_Testall(r->n, r->reqs, &flag, r->sts);
        if (rc != MPI_SUCCESS)
            return req_fail(r, rc);
    }
    *done = flag;
    if (flag)
        MOE_TRY(req_finish(r));
    return MOE_OK;
}

moe_status moe_wait(moe_request **req)
{
    if (!req)
        return moe_fail(MOE_ERR_INTERNAL, "moe_wait: NULL request pointer");
    moe_request *r = *req;
    if (!r)
        return MOE_OK;
    *req = NULL;
    int done = 0;
    moe_status st = req_poll(r, 1, &done);
    if (st != MOE_OK) {
        moe_mpi_req_drop(r);
        MOE_TRY(st);
    }
    req_free(r);
    return MOE_OK;
}

moe_status moe_test(moe_request **req, int *done)
{
    if (!req || !done)
        return moe_fail(MOE_ERR_INTERNAL, "moe_test: NULL %s", req ? "done flag" : "request");
    *done = 1;
    moe_request *r = *req;
    if (!r)
        return MOE_OK;
    moe_status st = req_poll(r, 0, done);
    if (st != MOE_OK) {
        *req = NULL;
        moe_mpi_req_drop(r);
        MOE_TRY(st);
    }
    if (*done) {
        *req = NULL;
        req_free(r);
    }
    return MOE_OK;
}

/* An Iprobe runs one pass of Open MPI's progress engine, which moves every
** outstanding operation of the process (non-blocking collectives included). */
moe_status moe_progress(moe_comm *c)
{
    MOE_TRY(moe_mpi_check_comm(c, "progress"));
    int flag = 0;
    int rc = MPI_Iprobe(MPI_ANY_SOURCE, MPI_ANY_TAG, c->comm, &flag, MPI_STATUS_IGNORE);
    if (rc != MPI_SUCCESS)
        return moe_mpi_fail(c, "progress", -1, rc);
    return MOE_OK;
}

/* Blocking ops built from point-to-point messages post into a request of
** their own and complete it here. */
moe_status moe_mpi_req_run(moe_request *r) { return moe_wait(&r); }
