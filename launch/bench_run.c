#include "launch/bench_run.h"

#include <errno.h>
#include <limits.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "launch/args.h"
#include "launch/local.h"

/* The start of a local mpirun line for n ranks of moe-bench; threads receives
** OMP_NUM_THREADS (the cores shared out among the ranks). Returns the count. */
static int local_mpirun(char **args, const char *np, char *threads, size_t cap)
{
    int n = 0;
    args[n++] = "mpirun";
    args[n++] = "-np";
    args[n++] = (char *)np;
    args[n++] = "--oversubscribe";
    args[n++] = "--mca";
    args[n++] = "mpi_yield_when_idle";
    args[n++] = "1";
    if (geteuid() == 0)
        args[n++] = "--allow-run-as-root";
    args[n++] = "-x";
    args[n++] = threads;
    args[n++] = "-x";
    args[n++] = "OMP_WAIT_POLICY=PASSIVE";
    long cores = sysconf(_SC_NPROCESSORS_ONLN), ranks = atol(np) > 0 ? atol(np) : 1;
    snprintf(threads, cap, "OMP_NUM_THREADS=%ld", cores / ranks > 0 ? cores / ranks : 1);
    return n;
}

static volatile sig_atomic_t bench_child;

static void forward_signal(int sig)
{
    if (bench_child > 0)
        kill((pid_t)bench_child, sig);
}

/* Runs args[0] with args and waits. quiet: its stdout goes to stderr (keeps
** --json output clean). Returns its exit status (128 + signal when killed),
** 1 when it cannot start. */
static int run_child(char **args, int quiet)
{
    pid_t pid = fork();
    if (pid < 0) {
        fprintf(stderr, "moe bench: error: fork: %s\n", strerror(errno));
        return 1;
    }
    if (pid == 0) {
        signal(SIGINT, SIG_DFL);
        signal(SIGTERM, SIG_DFL);
        signal(SIGHUP, SIG_DFL);
        if (quiet)
            dup2(STDERR_FILENO, STDOUT_FILENO);
        execvp(args[0], args);
        fprintf(stderr, "moe bench: error: cannot run %s: %s\n", args[0], strerror(errno));
        _exit(127);
    }
    bench_child = pid;
    int status;
    while (waitpid(pid, &status, 0) < 0) {
        if (errno != EINTR) {
            fprintf(stderr, "moe bench: error: waitpid: %s\n", strerror(errno));
            bench_child = 0;
            return 1;
        }
    }
    bench_child = 0;
    return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
}

static int positive(const char *s)
{
    char *end;
    long v = strtol(s, &end, 10);
    return end != s && !*end && v > 0 && v <= 4096 ? (int)v : 0;
}

/* What tc accepts and emu.sh shapes with: 100mbit, 1gbit, ... or none. */
static int rate_ok(const char *r)
{
    if (strcasecmp(r, "none") == 0)
        return 1;
    char *end;
    long v = strtol(r, &end, 10);
    return end != r && v > 0 &&
           (strcasecmp(end, "kbit") == 0 || strcasecmp(end, "mbit") == 0 || strcasecmp(end, "gbit") == 0);
}

/* scripts/emu/emu.sh of this source tree: $MOE_EMU_SH, or found from the
** executable's directory (build-x/bin, or build-x). */
static int find_emu(const char *dir, char *out, size_t cap)
{
    const char *env = getenv("MOE_EMU_SH");
    if (env && *env) {
        snprintf(out, cap, "%s", env);
        return access(out, X_OK) == 0;
    }
    static const char *up[] = {"/../..", "/.."};
    for (int i = 0; i < 2; i++) {
        snprintf(out, cap, "%s%s/scripts/emu/emu.sh", dir, up[i]);
        if (access(out, X_OK) == 0)
            return 1;
    }
    return 0;
}

/* `moe bench layer`: arguments checked by moe-bench itself before any rank
** starts; then N local ranks under mpirun, or one rank on each of N emulated
** hosts (scripts/emu/emu.sh: up, mpirun, and always down, even when the run
** fails or is interrupted). */
static int run_bench_layer(int argc, char **argv, const char *dir, char *bench)
{
    char *rest[argc + 1], np[16] = "4", emu[PATH_MAX + 32], threads[48];
    const char *rate = NULL;
    int nrest = 0, hosts = 0, nproc = 0;
    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "--help") == 0 || strcmp(argv[i], "-h") == 0) {
            char *help[] = {bench, "layer", "--help", NULL};
            return run_child(help, 0);
        }
        int is_np = strcmp(argv[i], "--nproc") == 0, is_hosts = strcmp(argv[i], "--hosts") == 0;
        if (is_np || is_hosts || strcmp(argv[i], "--link-rate") == 0) {
            if (i + 1 >= argc) {
                fprintf(stderr, "moe bench layer: error: %s needs a value\n", argv[i]);
                return 2;
            }
            const char *v = argv[++i];
            int *dst = is_np ? &nproc : is_hosts ? &hosts : NULL;
            if (dst && !(*dst = positive(v))) {
                fprintf(stderr, "moe bench layer: error: %s must be 1 to 4096, not '%s'\n", argv[i - 1], v);
                return 2;
            }
            if (!dst && !rate_ok(v)) {
                fprintf(stderr, "moe bench layer: error: --link-rate '%s': use e.g. 200mbit, 1gbit or none\n", v);
                return 2;
            }
            if (!dst)
                rate = v;
            continue;
        }
        rest[nrest++] = argv[i];
    }
    if (nproc && hosts) {
        fprintf(stderr, "moe bench layer: error: --nproc (local ranks) and --hosts (emulated hosts) exclude each other\n");
        return 2;
    }
    if (rate && !hosts) {
        fprintf(stderr, "moe bench layer: error: --link-rate needs --hosts N (the emulated cluster)\n");
        return 2;
    }
    snprintf(np, sizeof np, "%d", hosts ? hosts : nproc ? nproc : 4);

    char *check[argc + 8];
    int n = 0;
    check[n++] = bench;
    check[n++] = "layer";
    check[n++] = "--check";
    check[n++] = np;
    for (int i = 0; i < nrest; i++)
        check[n++] = rest[i];
    check[n] = NULL;
    int rc = run_child(check, 1);
    if (rc != 0)
        return rc;

    char *args[argc + 24];
    n = 0;
    if (!hosts) {
        n = local_mpirun(args, np, threads, sizeof threads);
        args[n++] = bench;
        args[n++] = "layer";
        for (int i = 0; i < nrest; i++)
            args[n++] = rest[i];
        args[n] = NULL;
        execvp(args[0], args);
        fprintf(stderr, "moe bench: error: cannot run %s: %s\n", args[0], strerror(errno));
        return 1;
    }

    if (!find_emu(dir, emu, sizeof emu)) {
        fprintf(stderr, "moe bench layer: error: cannot find scripts/emu/emu.sh near %s (set MOE_EMU_SH)\n", dir);
        return 1;
    }
    /* the prefix must end with a letter (emu.sh: host i is <prefix>i) */
    char prefix[16], rate_s[32];
    snprintf(prefix, sizeof prefix, "moeb%ldx", (long)getpid() % 10000000);
    snprintf(rate_s, sizeof rate_s, "%s", rate ? rate : "1gbit");
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = forward_signal;
    sigaction(SIGINT, &sa, NULL);
    sigaction(SIGTERM, &sa, NULL);
    sigaction(SIGHUP, &sa, NULL);

    char *up[] = {emu, "--prefix", prefix, "up", np, "--rate", rate_s, NULL};
    rc = run_child(up, 1);
    if (rc == 0) {
        long cores = sysconf(_SC_NPROCESSORS_ONLN), per = cores / hosts > 0 ? cores / hosts : 1;
        snprintf(threads, sizeof threads, "%ld", per);
        setenv("OMP_NUM_THREADS", threads, 1); /* emu.sh mpirun passes OMP_* to the ranks */
        setenv("OMP_WAIT_POLICY", "PASSIVE", 1);
        args[n++] = emu;
        args[n++] = "--prefix";
        args[n++] = prefix;
        args[n++] = "mpirun";
        args[n++] = "-np";
        args[n++] = np;
        args[n++] = "--";
        args[n++] = bench;
        args[n++] = "layer";
        for (int i = 0; i < nrest; i++)
            args[n++] = rest[i];
        args[n] = NULL;
        rc = run_child(args, 0);
    } else {
        fprintf(stderr, "moe bench layer: error: the emulated cluster did not come up (emu.sh up: status %d)\n", rc);
        rc = 1;
    }
    char *down[] = {emu, "--prefix", prefix, "down", NULL};
    int drc = run_child(down, 1);
    if (drc != 0)
        fprintf(stderr, "moe bench layer: warning: 'emu.sh --prefix %s down' failed (status %d)\n", prefix, drc);
    return rc;
}

/* `moe bench ...` runs moe-bench from the same directory; `moe bench a2a`
** runs it under mpirun with --nproc ranks (default 4), `moe bench lockstep`
** too (default one per core), `moe bench layer` too, or across --hosts
** emulated hosts (run_bench_layer). */
int moe_bench_run(int argc, char **argv)
{
    char dir[PATH_MAX], bench[PATH_MAX + 16], np[16] = "4", threads[48];
    moe_self_dir(dir, sizeof dir);
    snprintf(bench, sizeof bench, "%s/moe-bench", dir);
    if (argc > 0 && strcmp(argv[0], "layer") == 0)
        return run_bench_layer(argc, argv, dir, bench);
    char *args[argc + 16];
    int lockstep = argc > 0 && strcmp(argv[0], "lockstep") == 0;
    int n = 0, mpi = lockstep || (argc > 0 && strcmp(argv[0], "a2a") == 0);
    int cores = (int)sysconf(_SC_NPROCESSORS_ONLN);
    if (lockstep) /* one rank per core: the machine full, as moe train --nproc <cores> fills it */
        snprintf(np, sizeof np, "%d", cores > 0 ? cores : 1);
    for (int i = 1; mpi && i < argc; i++) /* the usage, once, without ranks */
        if (strcmp(argv[i], "--help") == 0 || strcmp(argv[i], "-h") == 0)
            mpi = 0;
    for (int i = 0; mpi && i + 1 < argc; i++)
        if (strcmp(argv[i], "--nproc") == 0)
            snprintf(np, sizeof np, "%s", argv[++i]);
    if (mpi)
        n = local_mpirun(args, np, threads, sizeof threads);
    args[n++] = bench;
    for (int i = 0; i < argc; i++) {
        if (strcmp(argv[i], "--nproc") == 0 && i + 1 < argc && mpi) {
            i++;
            continue;
        }
        args[n++] = argv[i];
    }
    args[n] = NULL;
    execvp(args[0], args);
    fprintf(stderr, "moe bench: error: cannot run %s: %s\n", args[0], strerror(errno));
    return 1;
}

