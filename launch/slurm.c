#include "launch/slurm.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "launch/args.h"
#include "launch/local.h"
#include "planner/placement.h"
#include "runtime/base/config.h"
#include "runtime/base/fs.h"
#include "runtime/base/mem.h"
#include "runtime/base/topology.h"

#define JOB_ID_MAX 64
#define OUT_MAX 8192

/* ------------------------------------------------------------------------ */
/* running Slurm's commands                                                  */

static int on_path(const char *name)
{
    const char *path = getenv("PATH");
    char buf[PATH_MAX];
    for (const char *p = path ? path : ""; *p;) {
        const char *colon = strchr(p, ':');
        size_t n = colon ? (size_t)(colon - p) : strlen(p);
        snprintf(buf, sizeof buf, "%.*s/%s", (int)n, n ? p : ".", name);
        if (access(buf, X_OK) == 0)
            return 1;
        p += n + (colon != NULL);
    }
    return 0;
}

static moe_status need_slurm(const char *cmd)
{
    if (on_path(cmd))
        return MOE_OK;
    return moe_fail(MOE_ERR_SYSTEM,
                    "%s not found on PATH: Slurm's client commands are not installed here "
                    "(Debian: apt-get install slurm-wlm; a local test cluster: scripts/slurm/slurm-up.sh)",
                    cmd);
}

/* Runs argv (no shell), its stdout into out (NUL-terminated, cut at cap) and,
** when err is given, its stderr into err; otherwise stderr passes through.
** Returns its exit status, 128+signal, or -1 when it could not be started. */
static int run_capture(char *const argv[], char *out, size_t cap, char *err, size_t err_cap)
{
    int po[2], pe[2] = {-1, -1};
    out[0] = '\0';
    if (err)
        err[0] = '\0';
    if (pipe(po) != 0)
        return -1;
    if (err && pipe(pe) != 0) {
        close(po[0]);
        close(po[1]);
        return -1;
    }
    fflush(stdout);
    fflush(stderr);
    pid_t pid = fork();
    if (pid < 0) {
        close(po[0]);
        close(po[1]);
        if (err) {
            close(pe[0]);
            close(pe[1]);
        }
        return -1;
    }
    if (pid == 0) {
        int null = open("/dev/null", O_RDONLY);
        if (null >= 0)
            dup2(null, STDIN_FILENO);
        dup2(po[1], STDOUT_FILENO);
        if (err)
            dup2(pe[1], STDERR_FILENO);
        execvp(argv[0], argv);
        fprintf(stderr, "cannot run %s: %s\n", argv[0], strerror(errno));
        _exit(127);
    }
    close(po[1]);
    if (err)
        close(pe[1]);
    /* both pipes drained together: a chatty stderr must not block the child */
    struct pollfd fds[2] = {{.fd = po[0], .events = POLLIN}, {.fd = err ? pe[0] : -1, .events = POLLIN}};
    char *buf[2] = {out, err};
    size_t len[2] = {0, 0}, lim[2] = {cap, err_cap};
    while (fds[0].fd >= 0 || fds[1].fd >= 0) {
        if (poll(fds, 2, -1) < 0) {
            if (errno == EINTR)
                continue;
            break;
        }
        for (int k = 0; k < 2; k++) {
            if (fds[k].fd < 0 || !fds[k].revents)
                continue;
            char tmp[1024];
            ssize_t r = read(fds[k].fd, tmp, sizeof tmp);
            if (r > 0) {
                size_t room = lim[k] - 1 - len[k], c = (size_t)r < room ? (size_t)r : room;
                memcpy(buf[k] + len[k], tmp, c);
                len[k] += c;
            } else if (r == 0 || errno != EINTR) {
                fds[k].fd = -1;
            }
        }
    }
    size_t n = len[0], m = len[1];
    out[n] = '\0';
    if (err)
        err[m] = '\0';
    close(po[0]);
    if (err)
        close(pe[0]);
    int status;
    while (waitpid(pid, &status, 0) < 0)
        if (errno != EINTR)
            return -1;
    return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
}

static void chomp(char *s)
{
    size_t n = strlen(s);
    while (n > 0 && (s[n - 1] == '\n' || s[n - 1] == '\r' || s[n - 1] == ' '))
        s[--n] = '\0';
}

/* ------------------------------------------------------------------------ */
/* a job's state                                                             */

typedef struct {
    char state[64];     /* RUNNING, COMPLETED, CANCELLED, ... ("" = unknown) */
    char exit_code[32]; /* "X:S" (exit code : signal), "" when not known */
    char elapsed[32];
    char nodes[256];
    const char *source; /* which command knew the job */
} job_info;

/* Value of `key=` in scontrol's one-line output, up to the next space. */
static void scontrol_field(const char *line, const char *key, char *out, size_t cap)
{
    out[0] = '\0';
    size_t k = strlen(key);
    for (const char *p = line; (p = strstr(p, key)); p += k)
        if ((p == line || p[-1] == ' ' || p[-1] == '\n') && p[k] == '=') {
            p += k + 1;
            size_t n = strcspn(p, " \n");
            snprintf(out, cap, "%.*s", (int)(n < cap ? n : cap - 1), p);
            return;
        }
}

/* Splits a '|'-separated line into at most max fields (in place). */
static int split_bar(char *line, char **f, int max)
{
    int n = 0;
    f[n++] = line;
    for (char *p = line; *p && n < max; p++)
        if (*p == '|') {
            *p = '\0';
            f[n++] = p + 1;
        }
    for (int i = n; i < max; i++)
        f[i] = "";
    return n;
}

/* What Slurm knows about job id: squeue (live jobs, and recent ones while the
** controller keeps them), scontrol for the exit code, sacct when accounting
** is on. Returns 1 when some source knew the job, 0 when none did; *why gets
** the last command's complaint (e.g. the controller is down). */
static int job_query(const char *id, job_info *ji, char *why, size_t why_cap)
{
    char out[OUT_MAX], err[2048];
    memset(ji, 0, sizeof *ji);
    why[0] = '\0';
    char *sq[] = {"squeue", "-h", "-t", "all", "-j", (char *)id, "-o", "%T|%M|%N", NULL};
    if (run_capture(sq, out, sizeof out, err, sizeof err) == 0 && out[0]) {
        char *f[3];
        chomp(out);
        split_bar(out, f, 3);
        snprintf(ji->state, sizeof ji->state, "%s", f[0]);
        snprintf(ji->elapsed, sizeof ji->elapsed, "%s", f[1]);
        snprintf(ji->nodes, sizeof ji->nodes, "%s", f[2]);
        ji->source = "squeue";
    } else if (err[0]) {
        snprintf(why, why_cap, "%s", err);
    }
    char *sc[] = {"scontrol", "show", "job", "-o", (char *)id, NULL};
    if (run_capture(sc, out, sizeof out, err, sizeof err) == 0 && strstr(out, "JobState=")) {
        scontrol_field(out, "ExitCode", ji->exit_code, sizeof ji->exit_code);
        if (!ji->source) {
            scontrol_field(out, "JobState", ji->state, sizeof ji->state);
            scontrol_field(out, "RunTime", ji->elapsed, sizeof ji->elapsed);
            scontrol_field(out, "NodeList", ji->nodes, sizeof ji->nodes);
            ji->source = "scontrol";
        }
        return 1;
    }
    if (err[0])
        snprintf(why, why_cap, "%s", err);
    if (ji->source)
        return 1;
    char *sa[] = {"sacct", "-n", "-X", "-P", "-j", (char *)id, "-o", "State,ExitCode,Elapsed,NodeList", NULL};
    if (on_path("sacct") && run_capture(sa, out, sizeof out, err, sizeof err) == 0 && out[0]) {
        char *f[4];
        out[strcspn(out, "\n")] = '\0';
        split_bar(out, f, 4);
        /* "CANCELLED by 0": the state is the first word */
        snprintf(ji->state, sizeof ji->state, "%.*s", (int)strcspn(f[0], " "), f[0]);
        snprintf(ji->exit_code, sizeof ji->exit_code, "%s", f[1]);
        snprintf(ji->elapsed, sizeof ji->elapsed, "%s", f[2]);
        snprintf(ji->nodes, sizeof ji->nodes, "%s", f[3]);
        ji->source = "sacct";
        return 1;
    }
    return 0;
}

/* A job in one of these states will not run again by itself. */
static int job_done(const char *state)
{
    static const char *done[] = {"COMPLETED", "FAILED",        "CANCELLED", "TIMEOUT",  "NODE_FAIL",
                                 "PREEMPTED", "OUT_OF_MEMORY", "BOOT_FAIL", "DEADLINE", "SPECIAL_EXIT"};
    for (size_t i = 0; i < sizeof done / sizeof *done; i++)
        if (strcmp(state, done[i]) == 0)
            return 1;
    return 0;
}

/* The exit status a finished job hands to the user. */
static int job_exit_status(const job_info *ji)
{
    int code = 0, sig = 0;
    if (sscanf(ji->exit_code, "%d:%d", &code, &sig) < 1)
        code = 1;
    if (sig > 0)
        return 128 + sig;
    if (code == 0 && strcmp(ji->state, "COMPLETED") != 0)
        return 1;
    return code;
}

static void print_job(FILE *f, const char *id, const job_info *ji)
{
    fprintf(f, "job %s: %s", id, ji->state);
    if (ji->exit_code[0] && (job_done(ji->state) || strcmp(ji->state, "COMPLETING") == 0))
        fprintf(f, " exit %s", ji->exit_code);
    if (ji->elapsed[0])
        fprintf(f, " elapsed %s", ji->elapsed);
    if (ji->nodes[0] && strcmp(ji->nodes, "(null)") != 0)
        fprintf(f, " nodes %s", ji->nodes);
    fprintf(f, " (%s)\n", ji->source);
}

static const char *NOT_RUNNING_HINT = "is slurmctld running and SLURM_CONF set? (a local test cluster: "
                                      "scripts/slurm/slurm-up.sh)";

/* Slurm's clients retry a controller that does not answer for about 18 s
** each; `scontrol ping` answers at once, so commands ask it first. */
static moe_status need_controller(void)
{
    char out[2048];
    char *argv[] = {"scontrol", "ping", NULL};
    int rc = run_capture(argv, out, sizeof out, out + 1024, 1024);
    if (rc == 0 || strstr(out, " is UP"))
        return MOE_OK;
    chomp(out);
    char *nl = strchr(out, '\n');
    if (nl)
        *nl = '\0';
    return moe_fail(MOE_ERR_SYSTEM, "the Slurm controller does not answer (scontrol ping: %s); %s",
                    out[0] ? out : out[1024] ? out + 1024 : "no output", NOT_RUNNING_HINT);
}

/* ------------------------------------------------------------------------ */
/* moe submit                                                                */

typedef struct {
    int nodes, ntasks_per_node, cpus_per_task, gpus_per_node, wait;
    const char *time, *partition, *account, *job_name;
} submit_opts;

static const char *SUBMIT = "moe submit";

static void submit_usage(FILE *f)
{
    fprintf(f, "usage: moe submit [train flags...] --nodes N --ntasks-per-node K [--cpus-per-task C]\n"
               "                  [--gpus-per-node G] [--time T] [--partition P] [--account A]\n"
               "                  [--job-name J] [--wait]\n"
               "Submits `moe train` as a Slurm batch job of N*K ranks (srun --mpi=pmix inside the\n"
               "allocation). The config is resolved and checked first, as by `moe train`; then\n"
               "RUN_DIR/config.yaml, RUN_DIR/job.sbatch and RUN_DIR/job.id are written and the\n"
               "job's output goes to RUN_DIR/slurm-JOBID.out.\n"
               "  --nodes N            nodes (default 1)\n"
               "  --ntasks-per-node K  ranks per node (default 1, or --nproc / N)\n"
               "  --cpus-per-task C    cores per rank; also the ranks' OMP_NUM_THREADS\n"
               "  --gpus-per-node G    GPUs per node\n"
               "  --time T             time limit (Slurm's forms: MM, HH:MM:SS, D-HH)\n"
               "  --partition P, --account A, --job-name J (default moe-<run dir name>)\n"
               "  --wait               wait for the job to end; exit with its status\n"
               "See `moe train --help` for the train flags; `moe status`, `moe cancel` follow the job.\n");
}

/* A value that goes into the batch script: printable, and no quote or
** backslash, which #SBATCH lines could not carry. */
static moe_status check_word(const char *flag, const char *v)
{
    for (const unsigned char *p = (const unsigned char *)v; *p; p++)
        if (*p < 0x20 || *p == '"' || *p == '\\' || *p == 0x7f)
            return moe_fail(MOE_ERR_USAGE, "%s '%s': control characters, quotes and backslashes are not allowed",
                            flag, v);
    if (!*v)
        return moe_fail(MOE_ERR_USAGE, "%s is empty", flag);
    return MOE_OK;
}

/* Takes submit's own flags out of argv; the rest (train flags) go to rest. */
static moe_status parse_submit(int argc, char **argv, submit_opts *o, char **rest, int *nrest, int *nproc_flag)
{
    *nrest = 0;
    *nproc_flag = 0;
    for (int i = 0; i < argc; i++) {
        const char *a = argv[i], *v;
        int *ip = NULL;
        const char **sp = NULL;
        const char *name = NULL;
        static const char *ints[] = {"--nodes", "--ntasks-per-node", "--cpus-per-task", "--gpus-per-node"};
        static const char *strs[] = {"--time", "--partition", "--account", "--job-name"};
        int *iv[] = {&o->nodes, &o->ntasks_per_node, &o->cpus_per_task, &o->gpus_per_node};
        const char **sv[] = {&o->time, &o->partition, &o->account, &o->job_name};
        for (int k = 0; k < 4; k++) {
            if (moe_arg_is(a, ints[k]))
                ip = iv[k], name = ints[k];
            if (moe_arg_is(a, strs[k]))
                sp = sv[k], name = strs[k];
        }
        if (strcmp(a, "--wait") == 0) {
            o->wait = 1;
        } else if (ip) {
            MOE_TRY(moe_arg_value(argc, argv, &i, name, &v));
            MOE_TRY(moe_arg_int(name, v, 1, ip));
        } else if (sp) {
            MOE_TRY(moe_arg_value(argc, argv, &i, name, &v));
            MOE_TRY(check_word(name, v));
            *sp = v;
        } else {
            if (moe_arg_is(a, "--nproc"))
                *nproc_flag = 1;
            rest[(*nrest)++] = argv[i];
        }
    }
    return MOE_OK;
}


/* Resolves the config of N*K ranks and refuses it as `moe train` would. */
static moe_status resolve_config(moe_config *c, submit_opts *o, char **rest, int nrest, int nproc_flag)
{
    moe_config_defaults(c);
    MOE_TRY(moe_config_parse_args(c, nrest, rest, 0));
    if (nproc_flag && o->ntasks_per_node == 0) {
        /* --nproc alone: spread it over the nodes */
        int nodes = o->nodes ? o->nodes : 1;
        if (c->nproc % nodes != 0)
            return moe_fail(MOE_ERR_USAGE, "--nproc %d is not a multiple of --nodes %d", c->nproc, nodes);
        o->ntasks_per_node = c->nproc / nodes;
    }
    if (!o->nodes)
        o->nodes = 1;
    if (!o->ntasks_per_node)
        o->ntasks_per_node = 1;
    if ((long)o->nodes * o->ntasks_per_node > 1 << 20)
        return moe_fail(MOE_ERR_USAGE, "--nodes %d x --ntasks-per-node %d is too many ranks", o->nodes,
                        o->ntasks_per_node);
    int world = o->nodes * o->ntasks_per_node;
    if (nproc_flag && c->nproc != world)
        return moe_fail(MOE_ERR_USAGE, "--nproc %d disagrees with --nodes %d x --ntasks-per-node %d = %d", c->nproc,
                        o->nodes, o->ntasks_per_node, world);
    char np[32];
    snprintf(np, sizeof np, "%d", world);
    MOE_TRY(moe_config_set(c, "nproc", np, SUBMIT));
    MOE_TRY(moe_config_validate(c));
    MOE_TRY(moe_train_check_layout(c));
    return MOE_OK;
}

/* The run directory made and named absolutely: the job may start elsewhere. */
static moe_status prepare_run_dir(moe_config *c, char *config_path, size_t cap)
{
    char abs[PATH_MAX], logs[MOE_PATH_MAX + 16];
    MOE_TRY(moe_mkdir_p(c->run_dir));
    if (!realpath(c->run_dir, abs))
        return moe_fail(MOE_ERR_IO, "cannot resolve %s: %s", c->run_dir, strerror(errno));
    if (strlen(abs) >= sizeof c->run_dir - 64)
        return moe_fail(MOE_ERR_USAGE, "run directory path too long: %s", abs);
    MOE_TRY(check_word("--run-dir", abs));
    snprintf(c->run_dir, sizeof c->run_dir, "%s", abs);
    snprintf(logs, sizeof logs, "%s/logs", c->run_dir);
    MOE_TRY(moe_mkdir_p(logs));
    snprintf(config_path, cap, "%s/config.yaml", c->run_dir);
    return moe_config_save(c, config_path);
}

/* This moe executable and scripts/slurm/srun-mpirun, as absolute paths. */
static moe_status find_programs(char *moe, char *adapter)
{
    char dir[PATH_MAX], tmp[PATH_MAX + 64];
    if (!realpath("/proc/self/exe", moe))
        return moe_fail(MOE_ERR_SYSTEM, "cannot resolve /proc/self/exe: %s", strerror(errno));
    const char *env = getenv("MOE_SRUN_MPIRUN");
    if (env && *env) {
        if (!realpath(env, adapter) || access(adapter, X_OK) != 0)
            return moe_fail(MOE_ERR_USAGE, "MOE_SRUN_MPIRUN=%s is not an executable file", env);
        return MOE_OK;
    }
    moe_self_dir(dir, sizeof dir);
    static const char *up[] = {"/../..", "/.."};
    for (int i = 0; i < 2; i++) {
        snprintf(tmp, sizeof tmp, "%s%s/scripts/slurm/srun-mpirun", dir, up[i]);
        if (access(tmp, X_OK) == 0 && realpath(tmp, adapter))
            return MOE_OK;
    }
    return moe_fail(MOE_ERR_SYSTEM, "cannot find scripts/slurm/srun-mpirun near %s (set MOE_SRUN_MPIRUN)", dir);
}

/* s as one single-quoted shell word. */
static void shell_word(FILE *f, const char *s)
{
    fputc('\'', f);
    for (; *s; s++)
        if (*s == '\'')
            fputs("'\\''", f);
        else
            fputc(*s, f);
    fputc('\'', f);
}

/* Slurm's filename patterns take '%' as an escape: a literal one is "%%". */
static void pattern_word(FILE *f, const char *s)
{
    for (; *s; s++) {
        if (*s == '%')
            fputc('%', f);
        fputc(*s, f);
    }
}

static moe_status write_script(const moe_config *c, const submit_opts *o, const char *config_path, const char *moe,
                               const char *adapter, const char *path)
{
    char cwd[PATH_MAX];
    if (!getcwd(cwd, sizeof cwd))
        return moe_fail(MOE_ERR_SYSTEM, "getcwd: %s", strerror(errno));
    MOE_TRY(check_word("the working directory", cwd));
    char *text = NULL;
    size_t len = 0;
    FILE *f = open_memstream(&text, &len);
    if (!f)
        return moe_fail(MOE_ERR_NOMEM, "batch script: %s", strerror(errno));
    const char *slash = strrchr(c->run_dir, '/');
    fprintf(f, "#!/bin/bash\n"
               "# Written by `moe submit`: `moe train` of this run directory's config.yaml on a\n"
               "# Slurm allocation; the workers start with srun --mpi=pmix (scripts/slurm/srun-mpirun).\n"
               "# Submit it again with: sbatch %s\n",
            path);
    if (o->job_name)
        fprintf(f, "#SBATCH --job-name=\"%s\"\n", o->job_name);
    else
        fprintf(f, "#SBATCH --job-name=\"moe-%s\"\n", slash && slash[1] ? slash + 1 : "run");
    fprintf(f, "#SBATCH --nodes=%d\n#SBATCH --ntasks-per-node=%d\n", o->nodes, o->ntasks_per_node);
    if (o->cpus_per_task)
        fprintf(f, "#SBATCH --cpus-per-task=%d\n", o->cpus_per_task);
    if (o->gpus_per_node)
        fprintf(f, "#SBATCH --gpus-per-node=%d\n", o->gpus_per_node);
    if (o->time)
        fprintf(f, "#SBATCH --time=\"%s\"\n", o->time);
    if (o->partition)
        fprintf(f, "#SBATCH --partition=\"%s\"\n", o->partition);
    if (o->account)
        fprintf(f, "#SBATCH --account=\"%s\"\n", o->account);
    fputs("#SBATCH --output=\"", f);
    pattern_word(f, c->run_dir);
    fputs("/slurm-%j.out\"\n#SBATCH --chdir=\"", f);
    pattern_word(f, cwd);
    fputs("\"\nset -eu\n"
          "echo \"moe: slurm job $SLURM_JOB_ID on $SLURM_JOB_NODELIST: $SLURM_NNODES node(s) x "
          "$SLURM_NTASKS_PER_NODE rank(s)\"\n"
          "export MOE_MPIRUN=",
          f);
    shell_word(f, adapter);
    fputs("\n", f);
    if (o->cpus_per_task)
        fprintf(f, "export OMP_NUM_THREADS=%d\n", o->cpus_per_task);
    fputs("export OMP_WAIT_POLICY=${OMP_WAIT_POLICY:-PASSIVE}\nexec ", f);
    shell_word(f, moe);
    fputs(" train --config ", f);
    shell_word(f, config_path);
    fputs(" --nproc $((SLURM_NNODES * SLURM_NTASKS_PER_NODE))\n", f);
    int bad = ferror(f);
    fclose(f);
    moe_status st = bad ? moe_fail(MOE_ERR_NOMEM, "batch script: write failed") : moe_write_file_atomic(path, text, len);
    free(text);
    MOE_TRY(st);
    if (chmod(path, 0644) != 0)
        return moe_fail(MOE_ERR_IO, "chmod %s: %s", path, strerror(errno));
    return MOE_OK;
}

static moe_status sbatch(const char *script, char *id, size_t cap)
{
    char out[OUT_MAX];
    char *argv[] = {"sbatch", "--parsable", (char *)script, NULL};
    int rc = run_capture(argv, out, sizeof out, NULL, 0);
    if (rc != 0)
        return moe_fail(MOE_ERR_SYSTEM, "sbatch %s failed (exit %d); %s", script, rc, NOT_RUNNING_HINT);
    /* "JOBID" or "JOBID;CLUSTER" */
    size_t n = strspn(out, "0123456789");
    if (n == 0 || n >= cap)
        return moe_fail(MOE_ERR_SYSTEM, "sbatch printed no job id: '%s'", out);
    snprintf(id, cap, "%.*s", (int)n, out);
    return MOE_OK;
}

static volatile sig_atomic_t interrupts;

static void on_interrupt(int sig)
{
    (void)sig;
    interrupts++;
}

static moe_status scancel(const char *id)
{
    char out[256];
    char *argv[] = {"scancel", (char *)id, NULL};
    int rc = run_capture(argv, out, sizeof out, NULL, 0);
    if (rc != 0)
        return moe_fail(MOE_ERR_SYSTEM, "scancel %s failed (exit %d)", id, rc);
    return MOE_OK;
}

/* Polls the job until it ends; Ctrl-C cancels it (a second one stops waiting). */
static int wait_job(const char *prog, const char *id)
{
    struct sigaction sa, old_int, old_term;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_interrupt;
    sigaction(SIGINT, &sa, &old_int);
    sigaction(SIGTERM, &sa, &old_term);
    job_info ji;
    char why[2048];
    int code = 1, cancelled = 0, misses = 0;
    for (;;) {
        if (interrupts > 1) {
            fprintf(stderr, "%s: stopped waiting; job %s may still be ending\n", prog, id);
            code = 130;
            break;
        }
        if (interrupts && !cancelled) {
            cancelled = 1;
            fprintf(stderr, "%s: interrupted: cancelling job %s\n", prog, id);
            if (scancel(id) != MOE_OK)
                moe_error_print(stderr, prog);
        }
        if (need_controller() != MOE_OK) {
            /* a controller restarting comes back within a minute */
            if (++misses > 120) {
                fprintf(stderr, "%s: error: stopped waiting for job %s: %s\n", prog, id, moe_errmsg());
                break;
            }
            moe_error_clear();
        } else if (!job_query(id, &ji, why, sizeof why)) {
            /* a fresh job can lag a moment behind sbatch */
            if (++misses > 20) {
                chomp(why);
                fprintf(stderr, "%s: error: Slurm no longer knows job %s%s%s\n", prog, id, why[0] ? ": " : "", why);
                break;
            }
        } else if (job_done(ji.state)) {
            print_job(stdout, id, &ji);
            code = job_exit_status(&ji);
            break;
        } else {
            misses = 0;
        }
        usleep(500 * 1000);
    }
    sigaction(SIGINT, &old_int, NULL);
    sigaction(SIGTERM, &old_term, NULL);
    return code;
}

int moe_submit_main(int argc, char **argv)
{
    for (int i = 0; i < argc; i++)
        if (strcmp(argv[i], "--help") == 0 || strcmp(argv[i], "-h") == 0) {
            submit_usage(stdout);
            return 0;
        }
    submit_opts o = {0};
    char **rest = NULL;
    int nrest = 0, nproc_flag = 0;
    moe_config cfg;
    char config_path[MOE_PATH_MAX + 32], script[MOE_PATH_MAX + 32], idpath[MOE_PATH_MAX + 32];
    char moe[PATH_MAX], adapter[PATH_MAX], id[JOB_ID_MAX];
    moe_status st = moe_alloc((void **)&rest, (size_t)(argc + 1) * sizeof *rest, "submit arguments");
    if (st == MOE_OK)
        st = parse_submit(argc, argv, &o, rest, &nrest, &nproc_flag);
    if (st == MOE_OK)
        st = resolve_config(&cfg, &o, rest, nrest, nproc_flag);
    moe_free(rest);
    if (st == MOE_OK)
        st = need_slurm("sbatch");
    if (st == MOE_OK)
        st = need_slurm("scontrol");
    if (st == MOE_OK)
        st = need_controller();
    if (st == MOE_OK)
        st = find_programs(moe, adapter);
    if (st == MOE_OK)
        st = prepare_run_dir(&cfg, config_path, sizeof config_path);
    if (st == MOE_OK) {
        snprintf(script, sizeof script, "%s/job.sbatch", cfg.run_dir);
        snprintf(idpath, sizeof idpath, "%s/job.id", cfg.run_dir);
        st = write_script(&cfg, &o, config_path, moe, adapter, script);
    }
    if (st == MOE_OK) {
        unlink(idpath); /* a stale id must not name this submission */
        st = sbatch(script, id, sizeof id);
    }
    if (st == MOE_OK) {
        char line[JOB_ID_MAX + 1];
        int n = snprintf(line, sizeof line, "%s\n", id);
        st = moe_write_file_atomic(idpath, line, (size_t)n);
    }
    if (st != MOE_OK)
        return moe_cmd_exit(SUBMIT, st);
    printf("submitted job %s: %d node(s) x %d rank(s); script %s, output %s/slurm-%s.out\n", id, o.nodes,
           o.ntasks_per_node, script, cfg.run_dir, id);
    fflush(stdout);
    return o.wait ? wait_job(SUBMIT, id) : 0;
}

/* ------------------------------------------------------------------------ */
/* moe status / moe cancel                                                   */

/* The job named by the argument: a job id, or a run directory's job.id
** (runs/latest by default, like moe train's run directory). */
static moe_status resolve_job(int argc, char **argv, char *id, size_t cap)
{
    if (argc > 1)
        return moe_fail(MOE_ERR_USAGE, "expected one RUN_DIR or JOBID, got %d arguments", argc);
    const char *a = argc == 1 ? argv[0] : "runs/latest";
    if (moe_arg_is_flag(a))
        return moe_fail(MOE_ERR_USAGE, "unknown flag %s", a);
    if (a[0] && strspn(a, "0123456789_") == strlen(a) && a[0] != '_') {
        if (strlen(a) >= cap)
            return moe_fail(MOE_ERR_USAGE, "job id %s is too long", a);
        snprintf(id, cap, "%s", a);
        return MOE_OK;
    }
    char path[PATH_MAX];
    snprintf(path, sizeof path, "%s/job.id", a);
    FILE *f = fopen(path, "r");
    if (!f)
        return moe_fail(MOE_ERR_INPUT, "%s: %s (not a job id, nor a run directory `moe submit` wrote)", path,
                        strerror(errno));
    char line[JOB_ID_MAX + 2] = "";
    int ok = fgets(line, sizeof line, f) != NULL;
    fclose(f);
    chomp(line);
    size_t n = strspn(line, "0123456789_");
    if (!ok || n == 0 || n != strlen(line) || n >= cap)
        return moe_fail(MOE_ERR_INPUT, "%s does not hold a job id", path);
    memcpy(id, line, n + 1);
    return MOE_OK;
}

static int job_cmd_help(int argc, char **argv, const char *usage)
{
    for (int i = 0; i < argc; i++)
        if (strcmp(argv[i], "--help") == 0 || strcmp(argv[i], "-h") == 0) {
            fputs(usage, stdout);
            return 1;
        }
    return 0;
}

int moe_job_status_main(int argc, char **argv)
{
    static const char *prog = "moe status";
    if (job_cmd_help(argc, argv,
                     "usage: moe status [RUN_DIR|JOBID]\n"
                     "Prints a Slurm job's state: 'job ID: STATE [exit X:S] [elapsed T] [nodes N] (source)'.\n"
                     "RUN_DIR (default runs/latest) names the job `moe submit` recorded in RUN_DIR/job.id.\n"))
        return 0;
    char id[JOB_ID_MAX], why[2048];
    moe_status st = resolve_job(argc, argv, id, sizeof id);
    if (st == MOE_OK)
        st = need_slurm("squeue");
    if (st == MOE_OK)
        st = need_slurm("scontrol");
    if (st == MOE_OK)
        st = need_controller();
    if (st != MOE_OK)
        return moe_cmd_exit(prog, st);
    job_info ji;
    if (!job_query(id, &ji, why, sizeof why)) {
        chomp(why);
        fprintf(stderr, "%s: error: Slurm does not know job %s%s%s\n", prog, id, why[0] ? ": " : "", why);
        if (strstr(why, "contact") || strstr(why, "onnection") || strstr(why, "configuration"))
            fprintf(stderr, "%s: %s\n", prog, NOT_RUNNING_HINT);
        return 1;
    }
    print_job(stdout, id, &ji);
    return 0;
}

int moe_job_cancel_main(int argc, char **argv)
{
    static const char *prog = "moe cancel";
    if (job_cmd_help(argc, argv,
                     "usage: moe cancel [RUN_DIR|JOBID]\n"
                     "Cancels a Slurm job (scancel): the one `moe submit` recorded in RUN_DIR/job.id\n"
                     "(default runs/latest), or JOBID.\n"))
        return 0;
    char id[JOB_ID_MAX];
    moe_status st = resolve_job(argc, argv, id, sizeof id);
    if (st == MOE_OK)
        st = need_slurm("scancel");
    if (st == MOE_OK)
        st = need_slurm("scontrol");
    if (st == MOE_OK)
        st = need_controller();
    if (st == MOE_OK)
        st = scancel(id);
    if (st != MOE_OK)
        return moe_cmd_exit(prog, st);
    printf("cancelled job %s\n", id);
    return 0;
}
