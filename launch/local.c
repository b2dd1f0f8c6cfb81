#include "launch/local.h"

#include <errno.h>
#include <limits.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "runtime/base/config.h"

static volatile sig_atomic_t child_pid;

static void forward_signal(int sig)
{
    if (child_pid > 0)
        kill((pid_t)child_pid, sig);
}

void moe_self_dir(char *buf, unsigned long cap)
{
    ssize_t n = readlink("/proc/self/exe", buf, cap - 1);
    if (n <= 0) {
        snprintf(buf, cap, ".");
        return;
    }
    buf[n] = '\0';
    char *slash = strrchr(buf, '/');
    if (slash)
        *slash = '\0';
}

static moe_status make_dirs(const char *path)
{
    char tmp[MOE_PATH_MAX + 16];
    snprintf(tmp, sizeof tmp, "%s/", path);
    for (char *p = tmp + 1; *p; p++) {
        if (*p != '/')
            continue;
        *p = '\0';
        if (mkdir(tmp, 0755) != 0 && errno != EEXIST)
            return moe_fail(MOE_ERR_IO, "cannot create directory %s: %s", tmp, strerror(errno));
        *p = '/';
    }
    return MOE_OK;
}

static moe_status prepare_run_dir(const moe_config *c, char *config_path, size_t cap)
{
    char logs[MOE_PATH_MAX + 16];
    MOE_TRY(make_dirs(c->run_dir));
    snprintf(logs, sizeof logs, "%s/logs", c->run_dir);
    MOE_TRY(make_dirs(logs));
    snprintf(config_path, cap, "%s/config.yaml", c->run_dir);
    return moe_config_save(c, config_path);
}

/* Runs the worker with the resolved config; returns its exit status. */
static int run_worker(const char *config_path)
{
    char dir[PATH_MAX], worker[PATH_MAX + 16];
    moe_self_dir(dir, sizeof dir);
    snprintf(worker, sizeof worker, "%s/moe-worker", dir);
    pid_t pid = fork();
    if (pid < 0) {
        fprintf(stderr, "moe train: error: fork: %s\n", strerror(errno));
        return 1;
    }
    if (pid == 0) {
        execl(worker, worker, "--config", config_path, (char *)NULL);
        fprintf(stderr, "moe train: error: cannot run %s: %s\n", worker, strerror(errno));
        _exit(127);
    }
    child_pid = pid;
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = forward_signal;
    sigaction(SIGINT, &sa, NULL);
    sigaction(SIGTERM, &sa, NULL);
    int status = 0;
    while (waitpid(pid, &status, 0) < 0) {
        if (errno != EINTR) {
            fprintf(stderr, "moe train: error: waitpid: %s\n", strerror(errno));
            return 1;
        }
    }
    child_pid = 0;
    if (WIFEXITED(status))
        return WEXITSTATUS(status);
    fprintf(stderr, "moe train: worker killed by signal %d\n", WTERMSIG(status));
    return 128 + WTERMSIG(status);
}

static void usage(FILE *f)
{
    fprintf(f, "usage: moe train [--config FILE.yaml] [--run-dir DIR] [--<key> VALUE ...]\n"
               "Trains a model locally. Flags override the config file; the resolved\n"
               "configuration is written to RUN_DIR/config.yaml. Keys:\n");
    moe_config_print_help(f);
}

int moe_train_main(int argc, char **argv)
{
    for (int i = 0; i < argc; i++)
        if (strcmp(argv[i], "--help") == 0 || strcmp(argv[i], "-h") == 0) {
            usage(stdout);
            return 0;
        }
    moe_config cfg;
    moe_config_defaults(&cfg);
    moe_status st = moe_config_parse_args(&cfg, argc, argv, 0);
    if (st == MOE_OK)
        st = moe_config_validate(&cfg);
    if (st == MOE_OK && cfg.nproc != 1)
        st = moe_fail(MOE_ERR_USAGE, "--nproc %d: this build trains in one process (--nproc 1)", cfg.nproc);
    char config_path[MOE_PATH_MAX + 32];
    if (st == MOE_OK)
        st = prepare_run_dir(&cfg, config_path, sizeof config_path);
    if (st != MOE_OK) {
        moe_error_print(stderr, "moe train");
        return moe_exit_code(st);
    }
    return run_worker(config_path);
}
