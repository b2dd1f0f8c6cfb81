/*
** slurm: training on a Slurm cluster.
**
**   moe submit [train flags...] --nodes N --ntasks-per-node K [--cpus-per-task C]
**              [--gpus-per-node G] [--time T] [--partition P] [--account A]
**              [--job-name J] [--wait]
**   moe status [RUN_DIR|JOBID]
**   moe cancel [RUN_DIR|JOBID]
**
** `moe submit` resolves and checks the config as `moe train` does (N*K ranks;
** a bad layout is refused with exit 2 before anything is submitted), writes
** RUN_DIR/config.yaml and RUN_DIR/job.sbatch (a batch script that runs
** `moe train` inside the allocation with MOE_MPIRUN=scripts/slurm/srun-mpirun,
** so the workers start with `srun --mpi=pmix`), submits it with
** `sbatch --parsable` and records the job id in RUN_DIR/job.id. With --wait it
** polls the job until it ends and exits with the job's status (its exit code,
** 128+signal when a signal ended it, 1 when it ended otherwise, e.g. CANCELLED
** or TIMEOUT with code 0). `moe status` prints one line about the job (from
** squeue, else scontrol show job, else sacct); `moe cancel` runs scancel.
** A missing Slurm (no sbatch/squeue/scancel on PATH) or one that does not
** answer fails with exit 1 and says so.
**
** srun-mpirun is found through $MOE_SRUN_MPIRUN, else as scripts/slurm/srun-mpirun
** of the source tree the executable was built in (build-x/bin or build-x).
** Each function takes argv after its command word and returns the exit status.
*/
#ifndef MOE_SLURM_H
#define MOE_SLURM_H

int moe_submit_main(int argc, char **argv);
int moe_job_status_main(int argc, char **argv);
int moe_job_cancel_main(int argc, char **argv);

#endif
