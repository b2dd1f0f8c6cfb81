/*
** control: a worker's client of the launcher's coordinator (launch/coordinator.h,
** docs/control-plane.md). Off unless MOE_COORDINATOR is set: then every
** function here is a cheap no-op and the worker runs exactly as before.
**
** moe_control_start reads MOE_COORDINATOR=HOST:PORT, MOE_JOB_ID and the job
** secret (moe_secret_from_env: MOE_JOB_SECRET_FILE or MOE_JOB_SECRET),
** connects, sends Hello (rank, world size, host name, pid, local rank) and
** waits for the JobSpec. A thread then sends a Heartbeat (step, phase) every
** heartbeat_interval_ms and reads the coordinator's frames: Command(STOP)
** calls moe_train_request_stop, so the run checkpoints and ends as after
** Ctrl-C. The training loop calls moe_control_report_train after every step;
** rank 0 sends it as a StepReport (the values are global), every rank keeps
** the step for its heartbeats. moe_control_finish says how the run ended:
** Heartbeat(DONE) for success, Error for a failure, and stops the thread.
**
** One client per process (module state, like the stop request). Sends come
** from two threads, the heartbeat thread and the training thread: a mutex
** serializes them, so the stream's sequence numbers stay in order.
**
** A coordinator that cannot be reached (connect or Hello/JobSpec fails) is a
** warning, not an error: the worker trains unsupervised, as its launcher
** still waits for it. A bad secret or job id in the environment is an error.
** The frame functions are runtime/base/frame.h's.
*/
#ifndef MOE_CONTROL_H
#define MOE_CONTROL_H

#include "runtime/base/status.h"
#include "runtime/metrics.h"

moe_status moe_control_start(int rank, int world_size, const char *binding);

/* Whether moe_control_start connected (for tests and log lines). */
int moe_control_active(void);

/* After each optimizer step, on every rank (r holds the global values). */
void moe_control_report_train(const moe_train_metrics *r);
/* Rank 0: an evaluation's validation loss at step. */
void moe_control_report_eval(long step, double val_loss);

/* The run's outcome; closes the connection. st != MOE_OK sends moe_errmsg(). */
void moe_control_finish(moe_status st);

#endif
