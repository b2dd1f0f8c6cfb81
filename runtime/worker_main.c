/*
** moe-worker: one training process. `moe train` starts it with the run's
** resolved config (`moe-worker --config RUN_DIR/config.yaml`); it can also be
** run by hand with the same flags as `moe train`.
*/
#include <signal.h>
#include <stdio.h>
#include <string.h>

#include "runtime/base/config.h"
#include "runtime/base/cpu.h"
#include "runtime/base/log.h"
#include "runtime/trainer.h"

static void on_signal(int sig)
{
    (void)sig;
    moe_train_request_stop();
}

static void usage(FILE *f)
{
    fprintf(f, "usage: moe-worker [--config FILE.yaml] [--<key> VALUE ...]\n"
               "Trains one model in this process. Keys:\n");
    moe_config_print_help(f);
}

int main(int argc, char **argv)
{
    moe_cpu_pick_blas_kernels(argv);
    for (int i = 1; i < argc; i++)
        if (strcmp(argv[i], "--help") == 0 || strcmp(argv[i], "-h") == 0) {
            usage(stdout);
            return 0;
        }
    moe_config cfg;
    moe_config_defaults(&cfg);
    moe_status st = moe_config_parse_args(&cfg, argc, argv, 1);
    if (st == MOE_OK)
        st = moe_config_validate(&cfg);
    if (st != MOE_OK) {
        moe_error_print(stderr, "moe-worker");
        return moe_exit_code(st);
    }
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_signal;
    sigaction(SIGINT, &sa, NULL);
    sigaction(SIGTERM, &sa, NULL);

    moe_run_result res;
    st = moe_train_run(&cfg, &res);
    if (st != MOE_OK) {
        moe_error_print(stderr, "moe-worker");
        return moe_exit_code(st);
    }
    if (res.last_val_loss >= 0)
        moe_info("done: %ld steps, loss %.4f, val loss %.4f", res.steps_done, res.last_loss, res.last_val_loss);
    else
        moe_info("done: %ld steps, loss %.4f", res.steps_done, res.last_loss);
    return res.stopped_early ? 130 : 0;
}
