/*
** mpi_internal: what comm/mpi.c (set-up, groups, errors, requests) shares with
** comm/mpi_ops.c (the operations). Private to the MPI backend: nothing outside
** comm/ includes this.
*/
#ifndef MOE_COMM_MPI_INTERNAL_H
#define MOE_COMM_MPI_INTERNAL_H

#include <stddef.h>

#include <mpi.h>

#include "comm/comm.h"

struct moe_comm {
    MPI_Comm comm; /* MPI's collectives and the caller's send/recv */
    MPI_Comm p2p;  /* collectives built here from isend/irecv (a duplicate of comm) */
    char name[32];
    int rank, size;
};

/*
** One operation in flight: the MPI requests it posted (a chunked reduction or
** an alltoallv posts many), the derived types and staging buffers they use,
** and what to do once all complete. Names its op and group itself, so an error
** at moe_wait is reported in full even if the comm is gone.
*/
struct moe_request {
    MPI_Request *reqs; /* n posted, room for cap */
    MPI_Status *sts;
    int *peers; /* peer of reqs[i]; -1 for a collective */
    int n, cap;
    MPI_Datatype *types; /* derived types, freed once complete */
    int ntypes, typecap;
    void *tmp; /* staging buffer (moe_alloc) */
    void *aux; /* arrays MPI reads until completion (int counts/displs) */
    /* staged allgatherv: block j, at element unpack_from[j] of tmp, goes to
    ** unpack_recv + unpack_displs[j] (all arrays live in aux) */
    char *unpack_recv;
    const size_t *unpack_counts, *unpack_displs;
    const int *unpack_from;
    size_t esize;
    /* irecv: the element count the message must have (SIZE_MAX: none) */
    size_t expect;
    MPI_Datatype expect_type;
    char op[24], group[32];
    int rank, size;
};

/* n elements as one (count, type): a derived type when n > moe_mpi_max_chunk. */
typedef struct {
    MPI_Datatype type;
    int count;
    int derived;
} moe_mpi_blk;

extern size_t moe_mpi_max_chunk; /* largest count or displacement handed to MPI as an int */

MPI_Datatype moe_mpi_dtype(moe_dtype t);
MPI_Op moe_mpi_redop(moe_redop op);
int moe_mpi_big_type(size_t n, moe_dtype t, moe_mpi_blk *b); /* returns an MPI error code */
void moe_mpi_blk_release(moe_mpi_blk *b, moe_request *r);    /* r NULL: free now */

moe_status moe_mpi_fail_site(const char *op, int peer, const char *group, int rank, int size,
                             int rc);
moe_status moe_mpi_fail(const moe_comm *c, const char *op, int peer, int rc);
moe_status moe_mpi_fail_arg(const moe_comm *c, const char *op, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
moe_status moe_mpi_check_comm(const moe_comm *c, const char *op);
moe_status moe_mpi_check_args(const moe_comm *c, const char *op, moe_dtype t);
moe_status moe_mpi_check_buf(const moe_comm *c, const char *op, const void *p, size_t count,
                             const char *what);
moe_status moe_mpi_check_peer(const moe_comm *c, const char *op, int peer, int tag);

/* Staged allgatherv: block j of `packed` (at element from[j]) to recv + displs[j]. */
void moe_mpi_unpack(char *recv, const char *packed, const size_t *counts, const size_t *displs,
                    const int *from, int size, size_t es);

moe_status moe_mpi_req_new(const moe_comm *c, const char *op, int cap, int typecap,
                           moe_request **out);
MPI_Request *moe_mpi_req_slot(moe_request *r, int peer);
void moe_mpi_req_drop(moe_request *r);      /* after a failure */
moe_status moe_mpi_req_run(moe_request *r); /* wait and free */

#endif
