/*
** moe-worker: one training process. `moe train` starts N of them under
** mpirun with the run's resolved config (`moe-worker --config
** RUN_DIR/config.yaml`); it can also be run by hand, alone or under mpirun,
** with the same flags as `moe train`.
*/
#include <signal.h>
#include <stdio.h>
#include <string.h>

#include "comm/comm.h"
#include "runtime/base/config.h"
#include "runtime/base/cpu.h"
#include "runtime/base/log.h"
#include "runtime/control.h"
#include "runtime/trainer.h"
#include "runtime/world.h"


static void on_signal(int sig)
{
    (void)sig;
    moe_train_request_stop();
}

static void usage(FILE *f)
{
    fprintf(f, "usage: [mpirun -np N] moe-worker [--config FILE.yaml] [--<key> VALUE ...]\n"
               "Trains one model; with N ranks, one share of it. Keys:\n");
    moe_config_print_help(f);
}

/* Reports the failure and ends the job: in a multi-rank run the other ranks
** would otherwise wait forever in their next collective. */
static int fail(moe_status st, int world_size, moe_world *w)
{
    moe_error_print(stderr, "moe-worker");
    int code = moe_exit_code(st);
    if (world_size > 1)
        moe_comm_abort(code);
    moe_world_free(w);
    moe_comm_finalize();
    return code;
}

int main(int argc, char **argv)
{
    moe_cpu_pick_blas_kernels(argv);
    for (int i = 1; i < argc; i++)
        if (strcmp(argv[i], "--help") == 0 || strcmp(argv[i], "-h") == 0) {
            usage(stdout);
            return 0;
        }
    moe_comm *world = NULL;
    moe_status st = moe_comm_init(&argc, &argv);
    if (st == MOE_OK)
        st = moe_comm_world(&world);
    if (st != MOE_OK) {
        moe_error_print(stderr, "moe-worker");
        return moe_exit_code(st);
    }
    int size = moe_comm_size(world);
    if (size > 1)
        moe_log_set_rank(moe_comm_rank(world));

    moe_config cfg;
    moe_config_defaults(&cfg);
    moe_world w;
    memset(&w, 0, sizeof w);
    st = moe_config_parse_args(&cfg, argc, argv, 1);
    if (st == MOE_OK)
        st = moe_world_setup(&w, world, &cfg);
    if (st == MOE_OK)
        st = moe_control_start(moe_comm_rank(world), size, w.binding); /* no-op without MOE_COORDINATOR */
    if (st != MOE_OK)
        return fail(st, size, &w);

    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_signal;
    sigaction(SIGINT, &sa, NULL);
    sigaction(SIGTERM, &sa, NULL);
    sigaction(SIGUSR1, &sa, NULL); /* what mpirun forwards on the launcher's first Ctrl-C */

    moe_run_result res;
    st = moe_train_run(&cfg, &w.par, &res);
    moe_control_finish(st);
    if (st != MOE_OK)
        return fail(st, size, &w);
    if (moe_comm_rank(world) == 0) {
        if (res.last_val_loss >= 0)
            moe_info("done: %ld steps, loss %.4f, val loss %.4f", res.steps_done, res.last_loss, res.last_val_loss);
        else
            moe_info("done: %ld steps, loss %.4f", res.steps_done, res.last_loss);
    }
    moe_world_free(&w);
    moe_comm_finalize();
    return 0; /* a requested stop that saved its checkpoint is a success; the launcher says 130 */
}
