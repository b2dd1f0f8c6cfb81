#include "runtime/base/status.h"

#include <stdarg.h>
#include <stdlib.h>
#include <string.h>

/* Thread-local so worker threads that fail do not garble each other. The
** first failure wins: later moe_fail calls up the same stack only add frames. */
static _Thread_local char err_msg[1024];
static _Thread_local char err_trace[2048];
static _Thread_local int err_set;

moe_status moe_fail_at(moe_status st, const char *file, int line, const char *fmt, ...)
{
    if (err_set) { /* a deeper failure already said what went wrong */
        moe_trace_frame(file, line);
        return st;
    }
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(err_msg, sizeof err_msg, fmt, ap);
    va_end(ap);
    snprintf(err_trace, sizeof err_trace, "%s:%d", file, line);
    err_set = 1;
    return st;
}

void moe_trace_frame(const char *file, int line)
{
    size_t n = strlen(err_trace);
    if (n + 64 < sizeof err_trace)
        snprintf(err_trace + n, sizeof err_trace - n, " -> %s:%d", file, line);
}

const char *moe_errmsg(void) { return err_msg; }
const char *moe_errtrace(void) { return err_trace; }

void moe_error_clear(void)
{
    err_msg[0] = '\0';
    err_trace[0] = '\0';
    err_set = 0;
}

void moe_error_print(FILE *f, const char *prog)
{
    fprintf(f, "%s: error: %s\n", prog, err_msg[0] ? err_msg : "unknown failure");
    const char *dbg = getenv("MOE_DEBUG");
    if (dbg && *dbg && strcmp(dbg, "0") != 0)
        fprintf(f, "%s: trace: %s\n", prog, err_trace);
}

int moe_exit_code(moe_status st)
{
    switch (st) {
    case MOE_OK: return 0;
    case MOE_ERR_USAGE:
    case MOE_ERR_INPUT: return 2;
    default: return 1;
    }
}

const char *moe_status_name(moe_status st)
{
    switch (st) {
    case MOE_OK: return "ok";
    case MOE_ERR_USAGE: return "usage";
    case MOE_ERR_INPUT: return "input";
    case MOE_ERR_IO: return "io";
    case MOE_ERR_NOMEM: return "nomem";
    case MOE_ERR_SYSTEM: return "system";
    case MOE_ERR_INTERNAL: return "internal";
    }
    return "unknown";
}
