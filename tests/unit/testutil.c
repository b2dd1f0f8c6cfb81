#include "testutil.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>

void tu_tmpdir(char *buf, size_t cap, const char *tag)
{
    const char *base = getenv("TMPDIR");
    snprintf(buf, cap, "%s/moe-%s-XXXXXX", base && *base ? base : "/tmp", tag);
    if (!mkdtemp(buf)) {
        perror("mkdtemp");
        abort();
    }
}

int tu_run(const char *cmd, char *out, size_t cap)
{
    char full[8192];
    snprintf(full, sizeof full, "%s 2>&1", cmd);
    FILE *p = popen(full, "r");
    if (!p) {
        perror("popen");
        abort();
    }
    size_t n = 0;
    if (out && cap) {
        n = fread(out, 1, cap - 1, p);
        out[n] = '\0';
    }
    char sink[4096];
    while (fread(sink, 1, sizeof sink, p) > 0) {}
    int st = pclose(p);
    return WIFEXITED(st) ? WEXITSTATUS(st) : -1;
}

void tu_write(const char *path, const char *text)
{
    FILE *f = fopen(path, "w");
    if (!f || fputs(text, f) < 0 || fclose(f) != 0) {
        perror(path);
        abort();
    }
}

void tu_write_after(const char *path, const char *from, const char *extra)
{
    FILE *in = fopen(from, "r"), *out = in ? fopen(path, "w") : NULL;
    char buf[4096];
    size_t n;
    int ok = out != NULL;
    while (ok && (n = fread(buf, 1, sizeof buf, in)) > 0)
        ok = fwrite(buf, 1, n, out) == n;
    ok = ok && !ferror(in) && fputs(extra, out) >= 0;
    if (in)
        fclose(in);
    if (!out || fclose(out) != 0 || !ok) {
        perror(path);
        abort();
    }
}

const char *tu_bin(const char *name)
{
    static char buf[4][1024];
    static int i;
    i = (i + 1) % 4;
    snprintf(buf[i], sizeof buf[i], "%s/%s", MOE_BIN_DIR, name);
    return buf[i];
}
