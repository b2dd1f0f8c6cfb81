/*
** comm: one communicator API for every collective and point-to-point exchange
** moe.c does. Groups are made from rank lists (the topology's tables); every
** operation exists blocking and non-blocking, the latter returning a request
** that is completed by moe_wait / polled by moe_test, with moe_progress to
** drive progress from a thread that is otherwise computing.
**
** Counts and displacements are in ELEMENTS of the given dtype and are 64-bit
** (size_t): messages beyond MPI's int counts are split or described with
** derived datatypes inside the backend, never truncated.
**
** Every failure returns a moe_status whose message names the operation, the
** group (by name) and, where there is one, the peer: MOE_ERR_INTERNAL for a bad
** argument (NULL comm, NULL buffer with a nonzero count, peer or tag out of
** range), refused before MPI sees it; MOE_ERR_SYSTEM for a failure MPI reports.
** The backend here is MPI over host memory (comm/mpi.c, comm/mpi_ops.c;
** docs/comm.md); an NCCL backend over device memory comes behind the same API.
**
** Collectives must be called by every rank of the group in the same order.
** Non-blocking buffers must stay alive and untouched until the request
** completes. Reductions are deterministic for a given group size and message
** size (the same ranks, the same bits), which training's bit-exact resume needs;
** a blocking and a non-blocking float sum may differ in the last bits (MPI runs
** different algorithms), so a value that must reproduce is always reduced with
** the same one.
*/
#ifndef MOE_COMM_H
#define MOE_COMM_H

#include <stddef.h>

#include "runtime/base/status.h"

typedef struct moe_comm moe_comm;
typedef struct moe_request moe_request;

typedef enum { MOE_DT_F32, MOE_DT_F64, MOE_DT_I32, MOE_DT_I64, MOE_DT_U8 } moe_dtype;
typedef enum { MOE_OP_SUM, MOE_OP_MAX, MOE_OP_MIN } moe_redop;

size_t moe_dtype_size(moe_dtype t);

/* Process-wide set-up (MPI_Init_thread with MPI_THREAD_FUNNELED or better),
** and the world communicator ("world", the same object on every call).
** Finalize frees the world; a call on it afterwards is refused, not a crash.
** MOE_COMM_MAX_CHUNK (env, read by init) caps the count handed to MPI in one
** piece (default INT_MAX; tests lower it to force the 64-bit paths). */
moe_status moe_comm_init(int *argc, char ***argv);
moe_status moe_comm_world(moe_comm **out);
moe_status moe_comm_finalize(void);
/* Aborts every rank of the job (after a fatal error on one of them). */
void moe_comm_abort(int code);

/*
** Collective over `parent`: groups is an ngroups x group_size table of ranks
** in PARENT's numbering; every parent rank appears in exactly one group.
** The caller gets the communicator of its own group, whose rank order is the
** order listed. name labels it in errors ("ep", "dp-cp", ...). A table that
** is not such a partition is refused (MOE_ERR_INTERNAL) on every rank alike.
*/
moe_status moe_comm_create(moe_comm *parent, const int *groups, int ngroups, int group_size,
                           const char *name, moe_comm **out);
/*
** Collective over `parent`: the n distinct ranks listed (PARENT's numbering)
** get a communicator holding just them, in the order listed; every other rank
** gets *out = NULL. Every parent rank passes the same list. Used where a few
** ranks of a group must sum something among themselves (the copies of a
** replicated expert). A bad list is refused on every rank alike.
*/
moe_status moe_comm_create_subset(moe_comm *parent, const int *ranks, int n, const char *name, moe_comm **out);
/* Collective over c. NULL and the world (owned by finalize) are no-ops. */
void moe_comm_free(moe_comm *c);

int moe_comm_rank(const moe_comm *c);
int moe_comm_size(const moe_comm *c);
const char *moe_comm_name(const moe_comm *c);

/* ---- blocking ---------------------------------------------------------- */
moe_status moe_barrier(moe_comm *c);
/* In place: buf (count) becomes the reduction over the group. */
moe_status moe_allreduce(moe_comm *c, void *buf, size_t count, moe_dtype t, moe_redop op);
/* send holds size*count elements in rank order; recv gets this rank's reduced block of count. */
moe_status moe_reduce_scatter(moe_comm *c, const void *send, void *recv, size_t count, moe_dtype t,
                              moe_redop op);
/* recv (size*count) = every rank's send (count), in rank order. */
moe_status moe_allgather(moe_comm *c, const void *send, void *recv, size_t count, moe_dtype t);
/* recv_counts/displs per rank, in elements. */
moe_status moe_allgatherv(moe_comm *c, const void *send, size_t send_count, void *recv,
                          const size_t *recv_counts, const size_t *recv_displs, moe_dtype t);
/* count elements to and from each peer. */
moe_status moe_alltoall(moe_comm *c, const void *send, void *recv, size_t count, moe_dtype t);
moe_status moe_alltoallv(moe_comm *c, const void *send, const size_t *send_counts,
                         const size_t *send_displs, void *recv, const size_t *recv_counts,
                         const size_t *recv_displs, moe_dtype t);
moe_status moe_send(moe_comm *c, const void *buf, size_t count, moe_dtype t, int peer, int tag);
/* The message must hold exactly count elements (tag in [0, 32767] is always valid). */
moe_status moe_recv(moe_comm *c, void *buf, size_t count, moe_dtype t, int peer, int tag);

/* ---- non-blocking: same arguments, plus the request ---------------------- */
moe_status moe_iallreduce(moe_comm *c, void *buf, size_t count, moe_dtype t, moe_redop op,
                          moe_request **req);
moe_status moe_ireduce_scatter(moe_comm *c, const void *send, void *recv, size_t count,
                               moe_dtype t, moe_redop op, moe_request **req);
moe_status moe_iallgather(moe_comm *c, const void *send, void *recv, size_t count, moe_dtype t,
                          moe_request **req);
moe_status moe_iallgatherv(moe_comm *c, const void *send, size_t send_count, void *recv,
                           const size_t *recv_counts, const size_t *recv_displs, moe_dtype t,
                           moe_request **req);
moe_status moe_ialltoallv(moe_comm *c, const void *send, const size_t *send_counts,
                          const size_t *send_displs, void *recv, const size_t *recv_counts,
                          const size_t *recv_displs, moe_dtype t, moe_request **req);
moe_status moe_isend(moe_comm *c, const void *buf, size_t count, moe_dtype t, int peer, int tag,
                     moe_request **req);
moe_status moe_irecv(moe_comm *c, void *buf, size_t count, moe_dtype t, int peer, int tag,
                     moe_request **req);

/* Completes and frees *req (sets it NULL). NULL *req is a no-op. On failure
** the request is freed too; the job should then moe_comm_abort. */
moe_status moe_wait(moe_request **req);
/* *done = 1 and *req freed/NULL when complete; else *done = 0. */
moe_status moe_test(moe_request **req, int *done);
/* Lets the backend move outstanding operations of c forward. */
moe_status moe_progress(moe_comm *c);

#endif
