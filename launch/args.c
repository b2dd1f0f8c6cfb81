#include "launch/args.h"

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
