#include "launch/cli.h"

#include <errno.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "launch/checkpoint_cmd.h"
#include "launch/data_prepare.h"
#include "launch/inspect.h"
#include "launch/local.h"
#include "launch/plan.h"

static void usage(FILE *f)
{
    fprintf(f,
            "usage: moe <command> [options]\n"
            "\n"
            "commands:\n"
            "  train             train a model locally (moe train --help)\n"
            "  data prepare      turn text into token shards (moe data prepare --help)\n"
            "  inspect           checkpoint DIR | trace FILE | plan PLAN, validated and shown\n"
            "  checkpoint        export / import a checkpoint as safetensors (moe checkpoint --help)\n"
            "  plan topology     the parallel groups of a layout (moe plan topology --help)\n"
            "  plan placement    place experts on ranks from a routing trace (moe plan placement --help)\n"
            "  bench             benchmarks: gemm, train, a2a, planner (moe bench --help)\n"
            "\n"
            "Exit status: 0 success, 2 bad usage or input, 1 failure while running.\n");
}

/* `moe bench ...` runs moe-bench from the same directory; `moe bench a2a`
** runs it under mpirun with --nproc ranks (default 4). */
static int run_bench(int argc, char **argv)
{
    char dir[PATH_MAX], bench[PATH_MAX + 16], np[16] = "4", threads[48];
    moe_self_dir(dir, sizeof dir);
    snprintf(bench, sizeof bench, "%s/moe-bench", dir);
    char *args[argc + 16];
    int n = 0;
    if (argc > 0 && strcmp(argv[0], "a2a") == 0) {
        args[n++] = "mpirun";
        args[n++] = "-np";
        args[n++] = np;
        args[n++] = "--oversubscribe";
        args[n++] = "--mca";
        args[n++] = "mpi_yield_when_idle";
        args[n++] = "1";
        if (geteuid() == 0)
            args[n++] = "--allow-run-as-root";
        args[n++] = "-x";
        args[n++] = threads; /* filled below, once --nproc is known */
        args[n++] = "-x";
        args[n++] = "OMP_WAIT_POLICY=PASSIVE";
    }
    args[n++] = bench;
    for (int i = 0; i < argc; i++) {
        if (strcmp(argv[i], "--nproc") == 0 && i + 1 < argc && args[0] != bench) {
            snprintf(np, sizeof np, "%s", argv[++i]);
            continue;
        }
        args[n++] = argv[i];
    }
    args[n] = NULL;
    long cores = sysconf(_SC_NPROCESSORS_ONLN), ranks = atol(np) > 0 ? atol(np) : 1;
    snprintf(threads, sizeof threads, "OMP_NUM_THREADS=%ld", cores / ranks > 0 ? cores / ranks : 1);
    execvp(args[0], args);
    fprintf(stderr, "moe bench: error: cannot run %s: %s\n", args[0], strerror(errno));
    return 1;
}

int moe_cli_main(int argc, char **argv)
{
    if (argc < 2 || strcmp(argv[1], "--help") == 0 || strcmp(argv[1], "-h") == 0) {
        usage(argc < 2 ? stderr : stdout);
        return argc < 2 ? 2 : 0;
    }
    const char *cmd = argv[1];
    if (strcmp(cmd, "train") == 0)
        return moe_train_main(argc - 2, argv + 2);
    if (strcmp(cmd, "data") == 0) {
        if (argc >= 3 && strcmp(argv[2], "prepare") == 0)
            return moe_data_prepare_main(argc - 3, argv + 3);
        fprintf(stderr, "moe data: error: expected 'moe data prepare ...'\n");
        return 2;
    }
    if (strcmp(cmd, "inspect") == 0)
        return moe_inspect_main(argc - 2, argv + 2);
    if (strcmp(cmd, "checkpoint") == 0)
        return moe_checkpoint_main(argc - 2, argv + 2);
    if (strcmp(cmd, "plan") == 0)
        return moe_plan_main(argc - 2, argv + 2);
    if (strcmp(cmd, "bench") == 0)
        return run_bench(argc - 2, argv + 2);
    fprintf(stderr, "moe: error: unknown command '%s' (try 'moe --help')\n", cmd);
    return 2;
}
