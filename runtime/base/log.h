/*
** log: leveled messages to stderr, prefixed with the rank once there are ranks.
** MOE_LOG_LEVEL=debug|info|warn|error (default info).
*/
#ifndef MOE_LOG_H
#define MOE_LOG_H

typedef enum { MOE_LOG_DEBUG, MOE_LOG_INFO, MOE_LOG_WARN, MOE_LOG_ERROR } moe_log_level;

void moe_log_set_rank(int rank);
void moe_log(moe_log_level lvl, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

#define moe_debug(...) moe_log(MOE_LOG_DEBUG, __VA_ARGS__)
#define moe_info(...) moe_log(MOE_LOG_INFO, __VA_ARGS__)
#define moe_warn(...) moe_log(MOE_LOG_WARN, __VA_ARGS__)

#endif
