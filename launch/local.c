#include "launch/local.h"

#include <errno.h>
#include <limits.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "planner/placement.h"
#include "runtime/base/config.h"
#include "runtime/base/fs.h"
#include "runtime/base/topology.h"

static volatile sig_atomic_t child_pid;

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

static moe_status prepare_run_dir(const moe_config *c, char *config_path, size_t cap)
{
    char logs[MOE_PATH_MAX + 16];
    MOE_TRY(moe_mkdir_p(c->run_dir));
    snprintf(logs, sizeof logs, "%s/logs", c->run_dir);
    MOE_TRY(moe_mkdir_p(logs));
    snprintf(config_path, cap, "%s/config.yaml", c->run_dir);
    return moe_config_save(c, config_path);
}

/* MOE_MPIRUN: a command that starts ranks elsewhere and takes mpirun's
** "-np N -- PROGRAM ARGS" form (scripts/emu/emu.sh --prefix P mpirun runs
** them on emulated hosts). Its words go first; the ranks' threads come from
** OMP_NUM_THREADS in the launcher's environment, which it forwards. */
static int custom_launcher(const moe_config *c, char **argv, char *threads_env, size_t cap)
{
    static char words[1024];
    const char *env = getenv("MOE_MPIRUN");
    if (!env || !*env || c->nproc <= 1)
        return 0;
    snprintf(words, sizeof words, "%s", env);
    int n = 0;
    for (char *save = NULL, *w = strtok_r(words, " \t", &save); w && n < 16; w = strtok_r(NULL, " \t", &save))
        argv[n++] = w;
    static char np[16];
    snprintf(np, sizeof np, "%d", c->nproc);
    argv[n++] = "-np";
    argv[n++] = np;
    argv[n++] = "--";
    if (c->num_threads > 0 && !getenv("OMP_NUM_THREADS")) {
        snprintf(threads_env, cap, "%d", c->num_threads);
        setenv("OMP_NUM_THREADS", threads_env, 1);
    }
    return n;
}

/* argv for the workers: moe-worker alone for one rank (MPI singleton), or
** under mpirun (or MOE_MPIRUN). More ranks than cores oversubscribe: ranks
** yield when idle and get cores/N compute threads each unless num-threads
** says otherwise. */
static int build_argv(const moe_config *c, const char *worker, const char *config_path, char **argv,
                      char *threads_env, size_t cap)
{
    int n = custom_launcher(c, argv, threads_env, cap);
    if (c->nproc > 1 && n == 0) {
        long cores = sysconf(_SC_NPROCESSORS_ONLN);
        int over = c->nproc > cores;
        argv[n++] = "mpirun";
        argv[n++] = "-np";
        static char np[16];
        snprintf(np, sizeof np, "%d", c->nproc);
        argv[n++] = np;
        argv[n++] = "--bind-to";
        argv[n++] = "none"; /* each worker binds itself with hwloc (runtime/base/bind.h) */
        if (over) {
            argv[n++] = "--oversubscribe";
            argv[n++] = "--mca";
            argv[n++] = "mpi_yield_when_idle";
            argv[n++] = "1";
        }
        if (geteuid() == 0)
            argv[n++] = "--allow-run-as-root";
        int threads = c->num_threads > 0 ? c->num_threads : (int)(cores / c->nproc > 0 ? cores / c->nproc : 1);
        snprintf(threads_env, cap, "OMP_NUM_THREADS=%d", threads);
        argv[n++] = "-x";
        argv[n++] = threads_env;
        argv[n++] = "-x";
        argv[n++] = "OMP_WAIT_POLICY=PASSIVE";
    }
    argv[n++] = (char *)worker;
    argv[n++] = "--config";
    argv[n++] = (char *)config_path;
    argv[n] = NULL;
    return n;
}

static volatile sig_atomic_t interrupts;

/* First Ctrl-C: ask the workers to checkpoint and stop (mpirun forwards
** SIGUSR1 to them). Second: stop now. */
static void on_interrupt(int sig)
{
    if (child_pid <= 0)
        return;
    interrupts++;
    kill((pid_t)child_pid, interrupts == 1 && sig == SIGINT ? SIGUSR1 : SIGTERM);
}

/* Runs the worker(s) with the resolved config; returns their exit status. */
static int run_worker(const moe_config *c, const char *config_path)
{
    char dir[PATH_MAX], worker[PATH_MAX + 16], threads_env[64];
    char *argv[32];
    moe_self_dir(dir, sizeof dir);
    snprintf(worker, sizeof worker, "%s/moe-worker", dir);
    build_argv(c, worker, config_path, argv, threads_env, sizeof threads_env);
    pid_t pid = fork();
    if (pid < 0) {
        fprintf(stderr, "moe train: error: fork: %s\n", strerror(errno));
        return 1;
    }
    if (pid == 0) {
        execvp(argv[0], argv);
        fprintf(stderr, "moe train: error: cannot run %s: %s\n", argv[0], strerror(errno));
        _exit(127);
    }
    child_pid = pid;
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_interrupt;
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
        return WEXITSTATUS(status) == 0 && interrupts ? 130 : WEXITSTATUS(status);
    fprintf(stderr, "moe train: workers killed by signal %d\n", WTERMSIG(status));
    return 128 + WTERMSIG(status);
}

/* Refuses a layout the workers would refuse, before starting any of them. */
static moe_status check_layout(const moe_config *c)
{
    moe_layout l;
    MOE_TRY(moe_layout_init(&l, c->nproc, c->tensor_model_parallel_size, c->context_parallel_size,
                            c->pipeline_model_parallel_size, c->expert_model_parallel_size,
                            c->expert_tensor_parallel_size, NULL));
    MOE_TRY(moe_layout_check_model(&l, c->num_experts, c->num_attention_heads, c->num_query_groups,
                                   c->num_layers, c->seq_length, c->sequence_parallel));
    MOE_TRY(moe_config_check_build(c));
    if (c->expert_placement[0]) {
        int moe_layers = 0;
        for (int i = 0; i < c->num_layers; i++)
            moe_layers += c->moe_layer_is_moe[i] != 0;
        moe_plan plan;
        MOE_TRY(moe_plan_read_trainable(c->expert_placement, moe_layers, c->num_experts, l.ep, &plan));
        moe_plan_free(&plan);
    }
    return MOE_OK;
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
    if (st == MOE_OK)
        st = check_layout(&cfg);
    char config_path[MOE_PATH_MAX + 32];
    if (st == MOE_OK)
        st = prepare_run_dir(&cfg, config_path, sizeof config_path);
    if (st != MOE_OK) {
        moe_error_print(stderr, "moe train");
        return moe_exit_code(st);
    }
    return run_worker(&cfg, config_path);
}
