#include "launch/args.h"

#include <errno.h>
#include <limits.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

int moe_arg_is_flag(const char *a) { return a[0] == '-' && a[1] == '-'; }

int moe_arg_is(const char *a, const char *name)
{
    size_t n = strlen(name);
    return strncmp(a, name, n) == 0 && (a[n] == '\0' || a[n] == '=');
}

moe_status moe_arg_value(int argc, char **argv, int *i, const char *name, const char **out)
{
    const char *a = argv[*i];
    size_t n = strlen(name);
    if (a[n] == '=') {
        *out = a + n + 1;
        return MOE_OK;
    }
    if (*i + 1 >= argc || moe_arg_is_flag(argv[*i + 1]))
        return moe_fail(MOE_ERR_USAGE, "%s needs a value", name);
    *out = argv[++*i];
    return MOE_OK;
}

int moe_cmd_exit(const char *prog, moe_status st)
{
    if (st != MOE_OK) {
        moe_error_print(stderr, prog);
        if (st == MOE_ERR_USAGE)
            fprintf(stderr, "run '%s --help' for usage\n", prog);
    }
    return moe_exit_code(st);
}

void moe_json_string(FILE *f, const char *s)
{
    fputc('"', f);
    for (const unsigned char *p = (const unsigned char *)(s ? s : ""); *p; p++) {
        if (*p == '"' || *p == '\\')
            fprintf(f, "\\%c", *p);
        else if (*p == '\n')
            fputs("\\n", f);
        else if (*p == '\t')
            fputs("\\t", f);
        else if (*p < 0x20)
            fprintf(f, "\\u%04x", *p);
        else
            fputc(*p, f);
    }
    fputc('"', f);
}

moe_status moe_arg_int(const char *name, const char *s, int min, int *out)
{
    char *end;
    errno = 0;
    long v = strtol(s, &end, 10);
    if (!*s || *end || errno || v < min || v > INT_MAX)
        return moe_fail(MOE_ERR_USAGE, "%s must be an integer >= %d, got '%s'", name, min, s);
    *out = (int)v;
    return MOE_OK;
}

moe_status moe_arg_real(const char *name, const char *s, double lo, double hi, double *out)
{
    char *end;
    errno = 0;
    double v = strtod(s, &end);
    if (!*s || *end || errno || !isfinite(v) || v < lo || v > hi)
        return moe_fail(MOE_ERR_USAGE, "%s must be a number in [%g, %g], got '%s'", name, lo, hi, s);
    *out = v;
    return MOE_OK;
}
