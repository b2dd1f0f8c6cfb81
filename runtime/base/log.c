#include "runtime/base/log.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static int log_rank = -1;
static int log_min = -1;

void moe_log_set_rank(int rank) { log_rank = rank; }

static int min_level(void)
{
    if (log_min >= 0)
        return log_min;
    const char *s = getenv("MOE_LOG_LEVEL");
    log_min = MOE_LOG_INFO;
    if (s && strcmp(s, "debug") == 0) log_min = MOE_LOG_DEBUG;
    if (s && strcmp(s, "warn") == 0) log_min = MOE_LOG_WARN;
    if (s && strcmp(s, "error") == 0) log_min = MOE_LOG_ERROR;
    return log_min;
}

void moe_log(moe_log_level lvl, const char *fmt, ...)
{
    if ((int)lvl < min_level())
        return;
    static const char *names[] = {"debug", "info", "warn", "error"};
    char line[1024];
    int n = log_rank >= 0 ? snprintf(line, sizeof line, "[moe %d] %s: ", log_rank, names[lvl])
                          : snprintf(line, sizeof line, "[moe] %s: ", names[lvl]);
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(line + n, sizeof line - (size_t)n, fmt, ap);
    va_end(ap);
    fprintf(stderr, "%s\n", line);
}
