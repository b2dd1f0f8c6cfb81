/*
** status: the one error path of moe.c.
**
** Library code never exits. Every function that can fail returns a moe_status;
** the first failure records a message (what failed, where) with moe_fail(), and
** each caller that passes it up adds a "-> file:line" frame with MOE_TRY, so the
** message a user sees reads like a backtrace (NCCL's NCCLCHECK habit). Only a
** program's main() turns a status into an exit code (moe_exit_code).
**
** Statuses that mean "the user gave us something wrong" (a bad flag, config or
** input file) map to exit status 2; everything else that fails while running
** maps to 1 (INTERFACE.md).
*/
#ifndef MOE_STATUS_H
#define MOE_STATUS_H

#include <stdio.h>

typedef enum {
    MOE_OK = 0,
    MOE_ERR_USAGE,   /* bad command line or config value              -> exit 2 */
    MOE_ERR_INPUT,   /* bad or corrupt input file (data, checkpoint)  -> exit 2 */
    MOE_ERR_IO,      /* an I/O call failed                            -> exit 1 */
    MOE_ERR_NOMEM,   /* allocation failed                             -> exit 1 */
    MOE_ERR_SYSTEM,  /* MPI, BLAS, a child process, the OS            -> exit 1 */
    MOE_ERR_INTERNAL /* a broken invariant: a bug in moe.c            -> exit 1 */
} moe_status;

/* Records the first failure's message (printf-style) with its location and
** returns st, so library code writes: return moe_fail(MOE_ERR_IO, "...", ...). */
#define moe_fail(st, ...) moe_fail_at((st), __FILE__, __LINE__, __VA_ARGS__)
moe_status moe_fail_at(moe_status st, const char *file, int line, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));

/* Passes a failure up, adding this frame to the trace. */
#define MOE_TRY(call)                                                   \
    do {                                                                \
        moe_status moe_try_st_ = (call);                                \
        if (moe_try_st_ != MOE_OK) {                                    \
            moe_trace_frame(__FILE__, __LINE__);                        \
            return moe_try_st_;                                         \
        }                                                               \
    } while (0)

/* Same, but jumps to a cleanup label with the status stored in `st`. */
#define MOE_TRY_GOTO(call, st, label)                                   \
    do {                                                                \
        (st) = (call);                                                  \
        if ((st) != MOE_OK) {                                           \
            moe_trace_frame(__FILE__, __LINE__);                        \
            goto label;                                                 \
        }                                                               \
    } while (0)

void moe_trace_frame(const char *file, int line);

/* The message of the last failure on this thread ("" if none), and its trace. */
const char *moe_errmsg(void);
const char *moe_errtrace(void);
void moe_error_clear(void);

/* Prints "<prog>: error: <message>" (and the trace when MOE_DEBUG is set). */
void moe_error_print(FILE *f, const char *prog);

/* 0 for MOE_OK, 2 for usage/input errors, 1 otherwise. */
int moe_exit_code(moe_status st);
const char *moe_status_name(moe_status st);

#endif
