/*
** comm/mpi_ops.c: the operations of comm/comm.h over MPI (set-up, groups,
** errors and requests are in comm/mpi.c).
**
** Each operation is written once as a *_post function taking a request: NULL
** runs the blocking MPI call, a request posts the non-blocking one into it.
** So blocking and non-blocking share every chunking and validation rule.
**
** Which algorithm runs:
**   allreduce, reduce_scatter   MPI, in calls of <= moe_mpi_max_chunk elements
**                               (reduce_scatter stages the chunks side by side)
**   allgather, alltoall         MPI, one derived type per rank's block if big
**   allgatherv                  MPI when every count and their sum fit an int
**                               (staged in a packed buffer if a displacement
**                               does not), else isend/irecv on p2p
**   alltoallv                   always isend/irecv on p2p: one rank cannot see
**                               whether another's counts fit an int, so a
**                               size-based switch could split the group
**   send, recv                  MPI, one derived type if big
*/
#include <limits.h>
#include <stdint.h>
#include <string.h>

#include "comm/mpi_internal.h"
#include "runtime/base/mem.h"

enum { TAG_ALLTOALLV = 1, TAG_ALLGATHERV = 2 };

static size_t min_size(size_t a, size_t b) { return a < b ? a : b; }
static size_t nchunks(size_t count) { return count ? (count - 1) / moe_mpi_max_chunk + 1 : 0; }

/* ---- non-blocking plumbing ------------------------------------------------- */

static moe_status nb_begin(moe_comm *c, const char *op, moe_request **req, size_t cap, int typecap,
                           moe_request **r)
{
    if (!req)
        return moe_fail(MOE_ERR_INTERNAL, "%s: NULL request pointer", op);
    *req = NULL;
    MOE_TRY(moe_mpi_check_comm(c, op));
    if (cap > INT_MAX)
        return moe_mpi_fail_arg(c, op, "%zu chunks are more requests than MPI can count", cap);
    MOE_TRY(moe_mpi_req_new(c, op, (int)cap, typecap, r));
    return MOE_OK;
}

static moe_status nb_end(moe_status st, moe_request *r, moe_request **req)
{
    if (st != MOE_OK) {
        moe_mpi_req_drop(r);
        MOE_TRY(st);
    }
    *req = r;
    return MOE_OK;
}

static moe_status check_redop(const moe_comm *c, const char *op, moe_redop rop)
{
    if (moe_mpi_redop(rop) == MPI_OP_NULL)
        return moe_mpi_fail_arg(c, op, "unknown reduction %d", (int)rop);
    return MOE_OK;
}

/* ---- reductions ------------------------------------------------------------ */

static moe_status allreduce_post(moe_comm *c, const char *op, void *buf, size_t count, moe_dtype t,
                                 moe_redop rop, moe_request *r)
{
    MOE_TRY(moe_mpi_check_args(c, op, t));
    MOE_TRY(check_redop(c, op, rop));
    MOE_TRY(moe_mpi_check_buf(c, op, buf, count, "data"));
    MPI_Datatype dt = moe_mpi_dtype(t);
    MPI_Op mop = moe_mpi_redop(rop);
    size_t es = moe_dtype_size(t);
    for (size_t off = 0; off < count; off += moe_mpi_max_chunk) {
        int n = (int)min_size(moe_mpi_max_chunk, count - off);
        char *p = (char *)buf + off * es;
        int rc = r ? MPI_Iallreduce(MPI_IN_PLACE, p, n, dt, mop, c->comm, moe_mpi_req_slot(r, -1))
                   : MPI_Allreduce(MPI_IN_PLACE, p, n, dt, mop, c->comm);
        if (rc != MPI_SUCCESS)
            return moe_mpi_fail(c, op, -1, rc);
    }
    return MOE_OK;
}

moe_status moe_allreduce(moe_comm *c, void *buf, size_t count, moe_dtype t, moe_redop op)
{
    MOE_TRY(allreduce_post(c, "allreduce", buf, count, t, op, NULL));
    return MOE_OK;
}

moe_status moe_iallreduce(moe_comm *c, void *buf, size_t count, moe_dtype t, moe_redop op,
                          moe_request **req)
{
    moe_request *r = NULL;
    MOE_TRY(nb_begin(c, "iallreduce", req, nchunks(count), 0, &r));
    return nb_end(allreduce_post(c, "iallreduce", buf, count, t, op, r), r, req);
}

/* count > moe_mpi_max_chunk: chunk k of every rank's block is copied side by side
** into tmp, so each chunk is one Reduce_scatter_block over a contiguous run. */
static moe_status reduce_scatter_staged(moe_comm *c, const char *op, const char *send, char *recv,
                                        size_t count, moe_dtype t, moe_redop rop, moe_request *r)
{
    size_t es = moe_dtype_size(t), P = (size_t)c->size, total, bytes;
    MOE_TRY(moe_mul_size(count, P, &total));
    MOE_TRY(moe_mul_size(total, es, &bytes));
    char *tmp = NULL;
    MOE_TRY(moe_alloc((void **)&tmp, bytes, "reduce-scatter staging"));
    for (size_t off = 0; off < count; off += moe_mpi_max_chunk) {
        size_t n = min_size(moe_mpi_max_chunk, count - off);
        for (size_t j = 0; j < P; j++)
            memcpy(tmp + (off * P + j * n) * es, send + (j * count + off) * es, n * es);
    }
    if (r)
        r->tmp = tmp; /* lives until the request completes */
    MPI_Datatype dt = moe_mpi_dtype(t);
    MPI_Op mop = moe_mpi_redop(rop);
    for (size_t off = 0; off < count; off += moe_mpi_max_chunk) {
        int n = (int)min_size(moe_mpi_max_chunk, count - off);
        const char *s = tmp + off * P * es;
        char *d = recv + off * es;
        int rc = r ? MPI_Ireduce_scatter_block(s, d, n, dt, mop, c->comm, moe_mpi_req_slot(r, -1))
                   : MPI_Reduce_scatter_block(s, d, n, dt, mop, c->comm);
        if (rc != MPI_SUCCESS) {
            if (!r)
                moe_free(tmp);
            return moe_mpi_fail(c, op, -1, rc);
        }
    }
    if (!r)
        moe_free(tmp);
    return MOE_OK;
}

static moe_status reduce_scatter_post(moe_comm *c, const char *op, const void *send, void *recv,
                                      size_t count, moe_dtype t, moe_redop rop, moe_request *r)
{
    MOE_TRY(moe_mpi_check_args(c, op, t));
    MOE_TRY(check_redop(c, op, rop));
    size_t total;
    MOE_TRY(moe_mul_size(count, (size_t)c->size, &total));
    MOE_TRY(moe_mpi_check_buf(c, op, send, total, "send"));
    MOE_TRY(moe_mpi_check_buf(c, op, recv, count, "recv"));
    if (count == 0) /* count is the same on every rank: all skip together */
        return MOE_OK;
    if (count > moe_mpi_max_chunk)
        return reduce_scatter_staged(c, op, send, recv, count, t, rop, r);
    MPI_Datatype dt = moe_mpi_dtype(t);
    MPI_Op mop = moe_mpi_redop(rop);
    int rc = r ? MPI_Ireduce_scatter_block(send, recv, (int)count, dt, mop, c->comm,
                                           moe_mpi_req_slot(r, -1))
               : MPI_Reduce_scatter_block(send, recv, (int)count, dt, mop, c->comm);
    if (rc != MPI_SUCCESS)
        return moe_mpi_fail(c, op, -1, rc);
    return MOE_OK;
}

moe_status moe_reduce_scatter(moe_comm *c, const void *send, void *recv, size_t count, moe_dtype t,
                              moe_redop op)
{
    MOE_TRY(reduce_scatter_post(c, "reduce_scatter", send, recv, count, t, op, NULL));
    return MOE_OK;
}

moe_status moe_ireduce_scatter(moe_comm *c, const void *send, void *recv, size_t count, moe_dtype t,
                               moe_redop op, moe_request **req)
{
    moe_request *r = NULL;
    MOE_TRY(nb_begin(c, "ireduce_scatter", req, nchunks(count), 0, &r));
    return nb_end(reduce_scatter_post(c, "ireduce_scatter", send, recv, count, t, op, r), r, req);
}

/* ---- uniform gathers and exchanges ----------------------------------------- */

/* allgather (all_to_all 0) or alltoall (1, blocking only): blocks of count. */
static moe_status gather_post(moe_comm *c, const char *op, const void *send, void *recv,
                              size_t count, moe_dtype t, int all_to_all, moe_request *r)
{
    MOE_TRY(moe_mpi_check_args(c, op, t));
    size_t total;
    MOE_TRY(moe_mul_size(count, (size_t)c->size, &total));
    MOE_TRY(moe_mpi_check_buf(c, op, send, all_to_all ? total : count, "send"));
    MOE_TRY(moe_mpi_check_buf(c, op, recv, total, "recv"));
    if (count == 0)
        return MOE_OK;
    moe_mpi_blk b;
    int rc = moe_mpi_big_type(count, t, &b);
    if (rc != MPI_SUCCESS)
        return moe_mpi_fail(c, op, -1, rc);
    if (all_to_all)
        rc = MPI_Alltoall(send, b.count, b.type, recv, b.count, b.type, c->comm);
    else if (r)
        rc = MPI_Iallgather(send, b.count, b.type, recv, b.count, b.type, c->comm,
                            moe_mpi_req_slot(r, -1));
    else
        rc = MPI_Allgather(send, b.count, b.type, recv, b.count, b.type, c->comm);
    moe_mpi_blk_release(&b, r);
    if (rc != MPI_SUCCESS)
        return moe_mpi_fail(c, op, -1, rc);
    return MOE_OK;
}

moe_status moe_allgather(moe_comm *c, const void *send, void *recv, size_t count, moe_dtype t)
{
    MOE_TRY(gather_post(c, "allgather", send, recv, count, t, 0, NULL));
    return MOE_OK;
}

moe_status moe_iallgather(moe_comm *c, const void *send, void *recv, size_t count, moe_dtype t,
                          moe_request **req)
{
    moe_request *r = NULL;
    MOE_TRY(nb_begin(c, "iallgather", req, 1, 1, &r));
    return nb_end(gather_post(c, "iallgather", send, recv, count, t, 0, r), r, req);
}

moe_status moe_alltoall(moe_comm *c, const void *send, void *recv, size_t count, moe_dtype t)
{
    MOE_TRY(gather_post(c, "alltoall", send, recv, count, t, 1, NULL));
    return MOE_OK;
}

/* ---- point-to-point collectives -------------------------------------------- */

/*
** For every peer j != rank: receive rcounts[j] elements at recv + rdispls[j],
** send scounts[j] at send + sdispls[j] (scounts NULL: the same sone elements
** at send to everyone). Zero-sized messages are not sent: both sides know the
** count. Receives go up first, peers in rotated order to spread the load.
** r NULL: a request of our own, completed before returning.
*/
static moe_status exchange(moe_comm *c, const char *op, int tag, const char *send,
                           const size_t *scounts, const size_t *sdispls, size_t sone, char *recv,
                           const size_t *rcounts, const size_t *rdispls, moe_dtype t,
                           moe_request *r)
{
    int P = c->size, me = c->rank;
    moe_request *own = NULL;
    if (!r) {
        MOE_TRY(moe_mpi_req_new(c, op, 2 * (P - 1), 2 * P, &own));
        r = own;
    }
    size_t es = moe_dtype_size(t);
    int rc = MPI_SUCCESS, peer = -1;
    for (int i = 1; i < P && rc == MPI_SUCCESS; i++) {
        peer = (me - i + P) % P;
        if (rcounts[peer] == 0)
            continue;
        moe_mpi_blk b;
        rc = moe_mpi_big_type(rcounts[peer], t, &b);
        if (rc == MPI_SUCCESS) {
            rc = MPI_Irecv(recv + rdispls[peer] * es, b.count, b.type, peer, tag, c->p2p,
                           moe_mpi_req_slot(r, peer));
            moe_mpi_blk_release(&b, r);
        }
    }
    for (int i = 1; i < P && rc == MPI_SUCCESS; i++) {
        peer = (me + i) % P;
        size_t n = scounts ? scounts[peer] : sone;
        if (n == 0)
            continue;
        moe_mpi_blk b;
        rc = moe_mpi_big_type(n, t, &b);
        if (rc == MPI_SUCCESS) {
            rc = MPI_Isend(send + (scounts ? sdispls[peer] : 0) * es, b.count, b.type, peer, tag,
                           c->p2p, moe_mpi_req_slot(r, peer));
            moe_mpi_blk_release(&b, r);
        }
    }
    if (rc != MPI_SUCCESS) {
        moe_mpi_req_drop(own);
        return moe_mpi_fail(c, op, peer, rc);
    }
    if (own)
        MOE_TRY(moe_mpi_req_run(own));
    return MOE_OK;
}

/* Every count and their sum fit an int (the same verdict on every rank): one
** MPI_Allgatherv, into a packed staging buffer when a displacement does not fit. */
static moe_status allgatherv_mpi(moe_comm *c, const char *op, const void *send, size_t send_count,
                                 void *recv, const size_t *counts, const size_t *displs,
                                 size_t total, moe_dtype t, moe_request *r)
{
    int P = c->size, fits = 1;
    for (int j = 0; j < P; j++)
        fits &= displs[j] <= moe_mpi_max_chunk;
    /* aux: the caller's counts and displs (unpacking after a non-blocking wait),
    ** then the int counts and displs MPI reads until completion */
    void *aux = NULL;
    MOE_TRY(
        moe_alloc(&aux, (size_t)P * (2 * sizeof(size_t) + 2 * sizeof(int)), "allgatherv counts"));
    size_t *ucounts = aux, *udispls = ucounts + P;
    int *icounts = (int *)(udispls + P), *idispls = icounts + P;
    size_t packed = 0;
    for (int j = 0; j < P; j++) {
        ucounts[j] = counts[j];
        udispls[j] = displs[j];
        icounts[j] = (int)counts[j];
        idispls[j] = (int)(fits ? displs[j] : packed);
        packed += counts[j];
    }
    size_t es = moe_dtype_size(t);
    char *tmp = NULL;
    if (!fits) {
        moe_status st = moe_alloc((void **)&tmp, total * es, "allgatherv staging");
        if (st != MOE_OK) {
            moe_free(aux);
            MOE_TRY(st);
        }
    }
    void *dst = fits ? recv : tmp;
    MPI_Datatype dt = moe_mpi_dtype(t);
    int rc;
    if (r) {
        r->aux = aux;
        r->tmp = tmp;
        if (!fits) {
            r->unpack_recv = recv;
            r->unpack_counts = ucounts;
            r->unpack_displs = udispls;
            r->unpack_from = idispls;
            r->esize = es;
        }
        rc = MPI_Iallgatherv(send, (int)send_count, dt, dst, icounts, idispls, dt, c->comm,
                             moe_mpi_req_slot(r, -1));
    } else {
        rc = MPI_Allgatherv(send, (int)send_count, dt, dst, icounts, idispls, dt, c->comm);
        if (rc == MPI_SUCCESS && !fits)
            moe_mpi_unpack(recv, tmp, counts, displs, idispls, P, es);
        moe_free(tmp);
        moe_free(aux);
    }
    if (rc != MPI_SUCCESS)
        return moe_mpi_fail(c, op, -1, rc);
    return MOE_OK;
}

static moe_status allgatherv_post(moe_comm *c, const char *op, const void *send, size_t send_count,
                                  void *recv, const size_t *counts, const size_t *displs,
                                  moe_dtype t, moe_request *r)
{
    MOE_TRY(moe_mpi_check_args(c, op, t));
    if (!counts || !displs)
        return moe_mpi_fail_arg(c, op, "NULL recv_%s", counts ? "displs" : "counts");
    if (counts[c->rank] != send_count)
        return moe_mpi_fail_arg(c, op, "sends %zu elements but recv_counts[%d] = %zu", send_count,
                                c->rank, counts[c->rank]);
    MOE_TRY(moe_mpi_check_buf(c, op, send, send_count, "send"));
    size_t total = 0;
    int small = 1;
    for (int j = 0; j < c->size; j++) {
        small &= counts[j] <= moe_mpi_max_chunk;
        total = counts[j] > SIZE_MAX - total ? SIZE_MAX : total + counts[j];
    }
    MOE_TRY(moe_mpi_check_buf(c, op, recv, total, "recv"));
    if (total == 0)
        return MOE_OK;
    if (small && total <= moe_mpi_max_chunk)
        return allgatherv_mpi(c, op, send, send_count, recv, counts, displs, total, t, r);
    size_t es = moe_dtype_size(t);
    if (send_count > 0) /* our own block */
        memmove((char *)recv + displs[c->rank] * es, send, send_count * es);
    return exchange(c, op, TAG_ALLGATHERV, send, NULL, NULL, send_count, recv, counts, displs, t,
                    r);
}

moe_status moe_allgatherv(moe_comm *c, const void *send, size_t send_count, void *recv,
                          const size_t *recv_counts, const size_t *recv_displs, moe_dtype t)
{
    MOE_TRY(allgatherv_post(c, "allgatherv", send, send_count, recv, recv_counts, recv_displs, t,
                            NULL));
    return MOE_OK;
}

moe_status moe_iallgatherv(moe_comm *c, const void *send, size_t send_count, void *recv,
                           const size_t *recv_counts, const size_t *recv_displs, moe_dtype t,
                           moe_request **req)
{
    moe_request *r = NULL;
    int P = c ? c->size : 1;
    MOE_TRY(nb_begin(c, "iallgatherv", req, (size_t)(2 * (P - 1) + 1), 2 * P, &r));
    return nb_end(
        allgatherv_post(c, "iallgatherv", send, send_count, recv, recv_counts, recv_displs, t, r),
        r, req);
}

static moe_status alltoallv_post(moe_comm *c, const char *op, const void *send,
                                 const size_t *scounts, const size_t *sdispls, void *recv,
                                 const size_t *rcounts, const size_t *rdispls, moe_dtype t,
                                 moe_request *r)
{
    MOE_TRY(moe_mpi_check_args(c, op, t));
    if (!scounts || !sdispls || !rcounts || !rdispls)
        return moe_mpi_fail_arg(c, op, "NULL count or displacement array");
    int me = c->rank;
    if (scounts[me] != rcounts[me])
        return moe_mpi_fail_arg(c, op, "sends %zu elements to itself but expects %zu", scounts[me],
                                rcounts[me]);
    size_t sany = 0, rany = 0;
    for (int j = 0; j < c->size; j++) {
        sany |= scounts[j];
        rany |= rcounts[j];
    }
    MOE_TRY(moe_mpi_check_buf(c, op, send, sany, "send"));
    MOE_TRY(moe_mpi_check_buf(c, op, recv, rany, "recv"));
    size_t es = moe_dtype_size(t);
    if (rcounts[me] > 0)
        memmove((char *)recv + rdispls[me] * es, (const char *)send + sdispls[me] * es,
                rcounts[me] * es);
    return exchange(c, op, TAG_ALLTOALLV, send, scounts, sdispls, 0, recv, rcounts, rdispls, t, r);
}

moe_status moe_alltoallv(moe_comm *c, const void *send, const size_t *send_counts,
                         const size_t *send_displs, void *recv, const size_t *recv_counts,
                         const size_t *recv_displs, moe_dtype t)
{
    MOE_TRY(alltoallv_post(c, "alltoallv", send, send_counts, send_displs, recv, recv_counts,
                           recv_displs, t, NULL));
    return MOE_OK;
}

moe_status moe_ialltoallv(moe_comm *c, const void *send, const size_t *send_counts,
                          const size_t *send_displs, void *recv, const size_t *recv_counts,
                          const size_t *recv_displs, moe_dtype t, moe_request **req)
{
    moe_request *r = NULL;
    int P = c ? c->size : 1;
    MOE_TRY(nb_begin(c, "ialltoallv", req, (size_t)(2 * (P - 1)), 2 * P, &r));
    return nb_end(alltoallv_post(c, "ialltoallv", send, send_counts, send_displs, recv, recv_counts,
                                 recv_displs, t, r),
                  r, req);
}

/* ---- barrier and point-to-point -------------------------------------------- */

moe_status moe_barrier(moe_comm *c)
{
    MOE_TRY(moe_mpi_check_comm(c, "barrier"));
    int rc = MPI_Barrier(c->comm);
    if (rc != MPI_SUCCESS)
        return moe_mpi_fail(c, "barrier", -1, rc);
    return MOE_OK;
}

/* send (is_send 1) or recv; r NULL: blocking. */
static moe_status p2p_post(moe_comm *c, const char *op, void *buf, size_t count, moe_dtype t,
                           int peer, int tag, int is_send, moe_request *r)
{
    MOE_TRY(moe_mpi_check_args(c, op, t));
    MOE_TRY(moe_mpi_check_peer(c, op, peer, tag));
    MOE_TRY(moe_mpi_check_buf(c, op, buf, count, "message"));
    moe_mpi_blk b;
    int rc = moe_mpi_big_type(count, t, &b);
    if (rc != MPI_SUCCESS)
        return moe_mpi_fail(c, op, peer, rc);
    MPI_Status st;
    if (is_send)
        rc = r ? MPI_Isend(buf, b.count, b.type, peer, tag, c->comm, moe_mpi_req_slot(r, peer))
               : MPI_Send(buf, b.count, b.type, peer, tag, c->comm);
    else
        rc = r ? MPI_Irecv(buf, b.count, b.type, peer, tag, c->comm, moe_mpi_req_slot(r, peer))
               : MPI_Recv(buf, b.count, b.type, peer, tag, c->comm, &st);
    moe_mpi_blk_release(&b, r);
    if (rc != MPI_SUCCESS)
        return moe_mpi_fail(c, op, peer, rc);
    if (is_send)
        return MOE_OK;
    if (r) { /* checked at completion */
        r->expect = count;
        r->expect_type = moe_mpi_dtype(t);
        return MOE_OK;
    }
    /* a shorter message is legal MPI but a protocol bug here */
    MPI_Count got = 0;
    MPI_Get_elements_x(&st, moe_mpi_dtype(t), &got);
    if (got < 0 || (size_t)got != count)
        return moe_mpi_fail_arg(c, op, "the message from peer %d has %lld elements, expected %zu",
                                peer, (long long)got, count);
    return MOE_OK;
}

moe_status moe_send(moe_comm *c, const void *buf, size_t count, moe_dtype t, int peer, int tag)
{
    MOE_TRY(p2p_post(c, "send", (void *)buf, count, t, peer, tag, 1, NULL));
    return MOE_OK;
}

moe_status moe_recv(moe_comm *c, void *buf, size_t count, moe_dtype t, int peer, int tag)
{
    MOE_TRY(p2p_post(c, "recv", buf, count, t, peer, tag, 0, NULL));
    return MOE_OK;
}

moe_status moe_isend(moe_comm *c, const void *buf, size_t count, moe_dtype t, int peer, int tag,
                     moe_request **req)
{
    moe_request *r = NULL;
    MOE_TRY(nb_begin(c, "isend", req, 1, 1, &r));
    return nb_end(p2p_post(c, "isend", (void *)buf, count, t, peer, tag, 1, r), r, req);
}

moe_status moe_irecv(moe_comm *c, void *buf, size_t count, moe_dtype t, int peer, int tag,
                     moe_request **req)
{
    moe_request *r = NULL;
    MOE_TRY(nb_begin(c, "irecv", req, 1, 1, &r));
    return nb_end(p2p_post(c, "irecv", buf, count, t, peer, tag, 0, r), r, req);
}
