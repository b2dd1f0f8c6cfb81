#include "launch/local.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "launch/coordinator.h"
#include "planner/placement.h"
#include "runtime/base/config.h"
#include "runtime/base/fs.h"
#include "runtime/base/log.h"
#include "runtime/base/mem.h"
#include "runtime/base/timer.h"
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
static int build_argv(const moe_config *c, const char *worker, const char *config_path, const char *load,
                      char **argv, char *threads_env, size_t cap)
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
        /* the control plane: values come from our environment (the secret's
        ** file name, never the secret, and never on a command line) */
        argv[n++] = "-x";
        argv[n++] = "MOE_COORDINATOR";
        argv[n++] = "-x";
        argv[n++] = "MOE_JOB_ID";
        argv[n++] = "-x";
        argv[n++] = "MOE_JOB_SECRET_FILE";
    }
    argv[n++] = (char *)worker;
    argv[n++] = "--config";
    argv[n++] = (char *)config_path;
    if (load && *load) { /* a restart: flags after --config override it */
        argv[n++] = "--load";
        argv[n++] = (char *)load;
    }
    argv[n] = NULL;
    return n;
}

/* ------------------------------------------------------------------------ */
/* one attempt: a coordinator, the workers under it, supervision            */

typedef struct {
    const moe_config *c;
    const char *config_path;
    char *config_yaml;  /* RUN_DIR/config.yaml's text, for the JobSpec */
    char secret_path[MOE_PATH_MAX + 16];
    char ckpt_root[MOE_PATH_MAX + 32];
} job;

static moe_status read_text(const char *path, char **out)
{
    *out = NULL;
    FILE *f = fopen(path, "rb");
    if (!f)
        return moe_fail(MOE_ERR_IO, "cannot open %s: %s", path, strerror(errno));
    size_t cap = 256 * 1024; /* JobSpec.config_yaml's limit */
    moe_status st = moe_alloc((void **)out, cap + 1, "config text");
    size_t n = st == MOE_OK ? fread(*out, 1, cap + 1, f) : 0;
    int bad = ferror(f);
    fclose(f);
    if (st != MOE_OK)
        return st;
    if (bad || n == 0 || n > cap) {
        moe_free(*out);
        *out = NULL;
        return moe_fail(MOE_ERR_IO, "%s: %s", path, bad ? "read error" : n ? "larger than 256 KiB" : "empty");
    }
    (*out)[n] = '\0';
    return MOE_OK;
}

static pid_t start_workers(const job *j, const char *load)
{
    char dir[PATH_MAX], worker[PATH_MAX + 16], threads_env[64];
    char *argv[48];
    moe_self_dir(dir, sizeof dir);
    snprintf(worker, sizeof worker, "%s/moe-worker", dir);
    build_argv(j->c, worker, j->config_path, load, argv, threads_env, sizeof threads_env);
    fflush(stdout);
    fflush(stderr);
    pid_t pid = fork();
    if (pid < 0) {
        fprintf(stderr, "moe train: error: fork: %s\n", strerror(errno));
        return -1;
    }
    if (pid == 0) {
        /* Its own process group, so a failed attempt can be stopped whole;
        ** the terminal's Ctrl-C then reaches only us, and we forward it.
        ** Workers read no input: a background group must not touch the tty. */
        setpgid(0, 0);
        int null = open("/dev/null", O_RDONLY);
        if (null >= 0) {
            dup2(null, STDIN_FILENO);
            close(null);
        }
        execvp(argv[0], argv);
        fprintf(stderr, "moe train: error: cannot run %s: %s\n", argv[0], strerror(errno));
        _exit(127);
    }
    setpgid(pid, pid);
    return pid;
}

/* waitpid without blocking (0: still running), or blocking up to `wait_s`. */
static pid_t reap(pid_t pid, int *status, double wait_s)
{
    double until = moe_now() + wait_s;
    for (;;) {
        pid_t r = waitpid(pid, status, WNOHANG);
        if (r != 0 && !(r < 0 && errno == EINTR))
            return r;
        if (moe_now() >= until)
            return 0;
        usleep(20000);
    }
}

/* Stops a failed attempt: the registered local workers (a stopped one too)
** and the launcher's process group. */
static void stop_attempt(const moe_coord *co, uint32_t world, pid_t pid, int *status)
{
    uint32_t *pids = NULL;
    if (co && moe_alloc((void **)&pids, world * sizeof *pids, "worker pids") == MOE_OK) {
        moe_coord_pids(co, pids);
        for (uint32_t r = 0; r < world; r++)
            if (pids[r] > 1 && (pid_t)pids[r] != getpid())
                kill((pid_t)pids[r], SIGKILL); /* on this host; the others die with mpirun */
        moe_free(pids);
    }
    kill(-pid, SIGTERM);
    kill(-pid, SIGCONT);
    if (reap(pid, status, 5.0) == 0) {
        kill(-pid, SIGKILL);
        reap(pid, status, 1e9);
    }
}

static volatile sig_atomic_t interrupts;

/* First Ctrl-C: ask the workers to checkpoint and stop (mpirun forwards
** SIGUSR1 to them; the coordinator also sends Command(STOP)). Second: stop now. */
static void on_interrupt(int sig)
{
    interrupts++;
    if (child_pid <= 0)
        return;
    kill((pid_t)child_pid, interrupts == 1 && sig == SIGINT ? SIGUSR1 : SIGTERM);
}

/* Runs one attempt to its end. Returns the exit status for the user;
** *failure gets the coordinator's verdict when it found one, and *killed
** says whether we stopped the workers (else they exited by themselves). */
static int run_attempt(job *j, int attempt, const char *load, char *failure, size_t cap, int *killed_out)
{
    const moe_config *c = j->c;
    failure[0] = '\0';
    *killed_out = 0;
    char job_id[MOE_JOB_ID_MAX + 1];
    snprintf(job_id, sizeof job_id, "moe-%ld.%d", (long)getpid(), attempt);
    uint32_t timeout_ms = (uint32_t)c->heartbeat_timeout * 1000u;
    uint32_t interval_ms = timeout_ms / 3 < 1000 ? timeout_ms / 3 : 1000;
    moe_coord_spec spec = {
        .job_id = job_id, .world_size = (uint32_t)c->nproc, .run_dir = c->run_dir,
        .bind_host = getenv("MOE_COORDINATOR_HOST"), .heartbeat_interval_ms = interval_ms,
        .heartbeat_timeout_ms = timeout_ms, .config_yaml = j->config_yaml,
        .tp = (uint32_t)c->tensor_model_parallel_size, .pp = (uint32_t)c->pipeline_model_parallel_size,
        .cp = (uint32_t)c->context_parallel_size, .ep = (uint32_t)c->expert_model_parallel_size,
        .etp = (uint32_t)c->expert_tensor_parallel_size, .train_iters = c->train_iters,
        .attempt = (uint32_t)attempt, .log_interval = c->log_interval, .metrics_append = (load && load[0]) || c->load[0]};
    moe_secret key;
    moe_coord *co = NULL;
    moe_status st = moe_secret_generate(&key);
    if (st == MOE_OK) {
        /* one secret per attempt: generate, hand the file to the workers, key the coordinator */
        unlink(j->secret_path);
        st = moe_secret_write_file(&key, j->secret_path);
    }
    if (st == MOE_OK) {
        spec.secret = &key;
        st = moe_coord_open(&co, &spec);
    }
    moe_secret_wipe(&key);
    if (st == MOE_OK) {
        unsetenv("MOE_JOB_SECRET"); /* the file is the one way in; both set is an error */
        if (setenv("MOE_COORDINATOR", moe_coord_address(co), 1) || setenv("MOE_JOB_ID", job_id, 1) ||
            setenv("MOE_JOB_SECRET_FILE", j->secret_path, 1))
            st = moe_fail(MOE_ERR_SYSTEM, "setenv: %s", strerror(errno));
    }
    if (st != MOE_OK) {
        moe_error_print(stderr, "moe train");
        moe_coord_close(co);
        return moe_exit_code(st);
    }
    pid_t pid = start_workers(j, load);
    if (pid < 0) {
        moe_coord_close(co);
        return 1;
    }
    child_pid = pid;
    int status = 0, seen = 0, killed = 0;
    double failed_at = 0;
    for (;;) {
        if (interrupts != seen) {
            if (seen == 0 && moe_coord_command(co, MOE__CONTROL__COMMAND_KIND__COMMAND_STOP, "Ctrl-C") != MOE_OK)
                moe_warn("%s", moe_errmsg());
            seen = interrupts;
        }
        pid_t r = reap(pid, &status, 0);
        if (r == pid)
            break;
        if (r < 0) {
            fprintf(stderr, "moe train: error: waitpid: %s\n", strerror(errno));
            status = 1 << 8;
            break;
        }
        if (moe_coord_poll(co, 100) != MOE_OK) {
            moe_error_print(stderr, "moe train");
            stop_attempt(co, spec.world_size, pid, &status);
            killed = 1;
            break;
        }
        const char *why = moe_coord_failure(co, NULL);
        if (why && failed_at == 0)
            failed_at = moe_now();
        /* A silent rank will not exit by itself; one that died or reported an
        ** error usually takes the job down within a moment, with its own
        ** exit status: give it 2 s. */
        if (why && (moe_coord_failed_silent(co) || moe_now() - failed_at > 2.0)) {
            stop_attempt(co, spec.world_size, pid, &status);
            killed = 1;
            break;
        }
    }
    child_pid = 0;
    *killed_out = killed;
    if (moe_coord_failure(co, NULL))
        snprintf(failure, cap, "%s", moe_coord_failure(co, NULL));
    moe_coord_close(co);
    int code;
    if (killed)
        code = 1;
    else if (WIFEXITED(status))
        code = WEXITSTATUS(status);
    else
        code = 128 + WTERMSIG(status);
    if (code == 0 && !interrupts)
        failure[0] = '\0'; /* the workers finished anyway: the job's verdict is their exit */
    if (!WIFEXITED(status) && !killed)
        fprintf(stderr, "moe train: workers killed by signal %d\n", WTERMSIG(status));
    return code;
}

/* The newest step directory with a manifest in root, or 0. The workers load
** the newest valid one, which is this one unless it is corrupt. */
static long newest_checkpoint(const char *root)
{
    DIR *d = opendir(root);
    if (!d)
        return 0;
    long best = 0;
    for (struct dirent *e; (e = readdir(d));) {
        long step;
        char tail;
        char manifest[MOE_PATH_MAX + 300];
        if (sscanf(e->d_name, "step-%ld%c", &step, &tail) != 1 || step <= best)
            continue;
        snprintf(manifest, sizeof manifest, "%s/%s/manifest.pb", root, e->d_name);
        if (access(manifest, R_OK) == 0)
            best = step;
    }
    closedir(d);
    return best;
}

/* metrics.jsonl keeps the lines of steps up to the checkpoint the restart
** resumes from: the resumed workers append the rest, so the file reads as
** one uninterrupted run. */
static moe_status trim_metrics(const char *run_dir, long step)
{
    char path[MOE_PATH_MAX + 32];
    snprintf(path, sizeof path, "%s/metrics.jsonl", run_dir);
    FILE *f = fopen(path, "r");
    if (!f)
        return MOE_OK;
    char *kept = NULL, *line = NULL;
    size_t kept_len = 0, line_cap = 0;
    FILE *mem = open_memstream(&kept, &kept_len);
    if (!mem) {
        fclose(f);
        return moe_fail(MOE_ERR_NOMEM, "trimming %s: %s", path, strerror(errno));
    }
    for (ssize_t n; (n = getline(&line, &line_cap, f)) > 0;) {
        long s;
        if (sscanf(line, "{\"step\": %ld", &s) == 1 && s <= step)
            fwrite(line, 1, (size_t)n, mem);
    }
    free(line);
    int bad = ferror(f);
    fclose(f);
    fclose(mem);
    moe_status st = bad ? moe_fail(MOE_ERR_IO, "reading %s", path) : moe_write_file_atomic(path, kept, kept_len);
    free(kept);
    return st;
}

/* Runs the job: attempts until one succeeds, the user interrupts, or
** max-restarts restarts have failed. Returns the exit status to give. */
static int run_job(const moe_config *c, const char *config_path)
{
    job j = {.c = c, .config_path = config_path};
    snprintf(j.secret_path, sizeof j.secret_path, "%s/secret", c->run_dir);
    if (c->save[0])
        snprintf(j.ckpt_root, sizeof j.ckpt_root, "%s", c->save);
    else
        snprintf(j.ckpt_root, sizeof j.ckpt_root, "%s/checkpoints", c->run_dir);
    if (read_text(config_path, &j.config_yaml) != MOE_OK) {
        moe_error_print(stderr, "moe train");
        return 1;
    }
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_interrupt;
    sigaction(SIGINT, &sa, NULL);
    sigaction(SIGTERM, &sa, NULL);
    int code = 0, killed = 0;
    char failure[1024], load[MOE_PATH_MAX + 32] = "";
    for (int attempt = 0;; attempt++) {
        code = run_attempt(&j, attempt, load, failure, sizeof failure, &killed);
        if (code == 0 || interrupts)
            break;
        const char *what = failure[0] ? failure : "the workers failed";
        if (attempt >= c->max_restarts) {
            if (c->max_restarts > 0)
                fprintf(stderr, "moe train: error: %s; giving up after %d restart%s\n", what, c->max_restarts,
                        c->max_restarts == 1 ? "" : "s");
            else if (failure[0] && killed) /* workers that exit by themselves say why */
                fprintf(stderr, "moe train: error: %s\n", failure);
            break;
        }
        long step = newest_checkpoint(j.ckpt_root);
        if (step > 0)
            snprintf(load, sizeof load, "%s", j.ckpt_root);
        if (trim_metrics(c->run_dir, step) != MOE_OK)
            moe_warn("%s", moe_errmsg());
        int backoff = attempt < 6 ? 1 << attempt : 60;
        fprintf(stderr, "moe train: attempt %d failed: %s; restarting from %s in %d s (restart %d of %d)\n",
                attempt + 1, what, step > 0 ? "the newest checkpoint" : "the beginning", backoff, attempt + 1,
                c->max_restarts);
        if (step > 0)
            fprintf(stderr, "moe train: resuming from %s/step-%07ld\n", j.ckpt_root, step);
        for (double until = moe_now() + backoff; moe_now() < until && !interrupts;)
            usleep(50000);
        if (interrupts) {
            code = 130;
            break;
        }
    }
    unlink(j.secret_path);
    moe_free(j.config_yaml);
    if (code == 0 && interrupts)
        return 130;
    return code;
}

moe_status moe_train_check_layout(const moe_config *c)
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
        MOE_TRY(moe_plan_read_trainable(c->expert_placement, moe_layers, c->num_experts, l.ep,
                                        c->moe_expert_capacity_factor, &plan));
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
        st = moe_train_check_layout(&cfg);
    char config_path[MOE_PATH_MAX + 32];
    if (st == MOE_OK)
        st = prepare_run_dir(&cfg, config_path, sizeof config_path);
    if (st != MOE_OK) {
        moe_error_print(stderr, "moe train");
        return moe_exit_code(st);
    }
    return run_job(&cfg, config_path);
}
