#include "launch/cli.h"

#include <stdio.h>
#include <string.h>

#include "launch/bench_run.h"
#include "launch/checkpoint_cmd.h"
#include "launch/data_prepare.h"
#include "launch/inspect.h"
#include "launch/local.h"
#include "launch/plan.h"
#include "launch/slurm.h"

static void usage(FILE *f)
{
    fprintf(f,
            "usage: moe <command> [options]\n"
            "\n"
            "commands:\n"
            "  train             train a model locally (moe train --help)\n"
            "  submit            train as a Slurm batch job (moe submit --help)\n"
            "  status / cancel   a submitted Slurm job's state / cancel it (RUN_DIR or JOBID)\n"
            "  data prepare      turn text into token shards (moe data prepare --help)\n"
            "  inspect           checkpoint DIR | trace FILE | plan PLAN, validated and shown\n"
            "  checkpoint        export / import a checkpoint as safetensors (moe checkpoint --help)\n"
            "  plan topology     the parallel groups of a layout (moe plan topology --help)\n"
            "  plan placement    place experts on ranks from a routing trace (moe plan placement --help)\n"
            "  bench             benchmarks: gemm, train, a2a, layer, planner (moe bench --help)\n"
            "\n"
            "Exit status: 0 success, 2 bad usage or input, 1 failure while running.\n");
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
    if (strcmp(cmd, "submit") == 0)
        return moe_submit_main(argc - 2, argv + 2);
    if (strcmp(cmd, "status") == 0)
        return moe_job_status_main(argc - 2, argv + 2);
    if (strcmp(cmd, "cancel") == 0)
        return moe_job_cancel_main(argc - 2, argv + 2);
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
        return moe_bench_run(argc - 2, argv + 2);
    fprintf(stderr, "moe: error: unknown command '%s' (try 'moe --help')\n", cmd);
    return 2;
}
