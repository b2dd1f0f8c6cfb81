/*
** coordinator: the launcher's side of the control plane (docs/control-plane.md).
** A TCP server with a poll() event loop, one per attempt of a job.
**
** It listens on spec->bind_host (127.0.0.1 unless given) at an ephemeral port
** and writes "HOST:PORT\njob JOB_ID\n" to RUN_DIR/coordinator.addr. Each
** connection gets its own moe_frame_reader over one moe_frame_receiver for
** every rank's worker -> coordinator stream. A worker's Hello is answered with
** the JobSpec; from then on the rank must send a frame (Heartbeat, StepReport)
** at least every heartbeat_timeout_ms, or the attempt fails naming it. A
** registered rank whose connection closes before it said Heartbeat(DONE), or
** that sends an Error, fails the attempt too. A rank that never registers is
** not supervised (its launcher still is); it is logged once after
** register_timeout_ms.
**
** Hostile or broken peers: a refused frame (frame.h logs why) costs only its
** connection, and moe_coord_refusals counts it. Connections that have not
** sent an accepted frame are capped (MOE_COORD_MAX_PENDING) and dropped after
** register_timeout_ms.
**
** Metrics: the workers keep writing metrics.jsonl and the progress line
** (runtime/metrics.c), exactly as without a coordinator; the coordinator only
** supervises, and keeps rank 0's StepReports (last step and loss) for its
** log. One writer per file, so no line is ever written twice.
**
** Threads: single-threaded; moe_coord_poll runs one round of the loop.
** Memory: the coordinator owns everything it allocates; moe_coord_close frees
** it and removes coordinator.addr.
*/
#ifndef MOE_COORDINATOR_H
#define MOE_COORDINATOR_H

#include <stdint.h>

#include "runtime/base/frame.h"
#include "runtime/metrics.h"

#define MOE_COORD_MAX_PENDING 64 /* connections without an accepted frame */

typedef struct {
    const char *job_id;
    uint32_t world_size;
    const char *run_dir;       /* coordinator.addr goes here */
    const char *bind_host;     /* numeric IPv4; NULL = 127.0.0.1 */
    const moe_secret *secret;  /* copied */
    uint32_t heartbeat_interval_ms;
    uint32_t heartbeat_timeout_ms;  /* >= 2 * interval */
    uint32_t register_timeout_ms;   /* unregistered connections and ranks; 0 = 60000 */
    const char *config_yaml;        /* the resolved config, sent in the JobSpec */
    uint32_t tp, pp, cp, ep, etp;
    int64_t train_iters;
    uint32_t attempt;
    /* The run's metrics: rank 0's step and evaluation reports become
    ** RUN_DIR/metrics.jsonl lines (appended when metrics_append, else the
    ** file starts over) and the progress line every log_interval steps. */
    int log_interval;
    int metrics_append;
} moe_coord_spec;

typedef struct moe_coord moe_coord;

/* Binds, listens and writes RUN_DIR/coordinator.addr. */
moe_status moe_coord_open(moe_coord **out, const moe_coord_spec *spec);

/* "HOST:PORT", what workers get in MOE_COORDINATOR. */
const char *moe_coord_address(const moe_coord *c);

/* One round: waits up to timeout_ms for sockets, handles every ready one,
** then checks deadlines. Fails only for a broken listening socket or memory. */
moe_status moe_coord_poll(moe_coord *c, int timeout_ms);

/* After a failure: the first rank that failed and why ("rank 1 (host pid
** 123) sent no heartbeat for 10.2 s"); NULL while nothing failed. */
const char *moe_coord_failure(const moe_coord *c, int *rank);

/* Whether that failure was a rank going silent (stopped or hung: it will not
** exit by itself) rather than one that closed its connection or sent Error. */
int moe_coord_failed_silent(const moe_coord *c);

int moe_coord_registered(const moe_coord *c); /* ranks that sent Hello */
int moe_coord_done(const moe_coord *c);       /* ranks that said Heartbeat(DONE) */
uint64_t moe_coord_refusals(const moe_coord *c);
int64_t moe_coord_last_step(const moe_coord *c); /* from rank 0's StepReports; 0 before */

/* The pids that registered ranks on this host (Hello.hostname equal to our
** gethostname) gave in their Hello, 0 for the other ranks; pids[world_size].
** The launcher kills them when it stops a failed attempt. */
void moe_coord_pids(const moe_coord *c, uint32_t *pids);
/* Rank r's core binding as its Hello gave it ("" before it registered or when unbound). */
const char *moe_coord_binding(const moe_coord *c, uint32_t r);

/* Sends a Command to every registered rank (best effort: a rank whose socket
** does not take it is dropped). */
moe_status moe_coord_command(moe_coord *c, Moe__Control__CommandKind kind, const char *reason);

void moe_coord_close(moe_coord *c);

#endif
