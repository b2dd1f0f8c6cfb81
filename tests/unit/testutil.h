/*
** testutil: helpers for tests that drive the programs (moe, moe-worker) and
** files: a fresh temporary directory, running a command and capturing its
** output and exit status.
*/
#ifndef MOE_TESTUTIL_H
#define MOE_TESTUTIL_H

#include <stddef.h>

/* Creates a fresh directory under $TMPDIR (or /tmp); path written to buf. */
void tu_tmpdir(char *buf, size_t cap, const char *tag);
/* Runs `cmd` through /bin/sh, stdout+stderr into out (truncated to cap).
** Returns the exit status (or -1 if it did not exit normally). */
int tu_run(const char *cmd, char *out, size_t cap);
/* Writes text to path; aborts the test on failure. */
void tu_write(const char *path, const char *text);
/* Writes the file `from` followed by `extra` to path; aborts the test on failure. */
void tu_write_after(const char *path, const char *from, const char *extra);
/* Path of a built program: MOE_BIN_DIR "/" name. */
const char *tu_bin(const char *name);

#endif
