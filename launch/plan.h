/*
** plan: `moe plan SUBCOMMAND ...`, offline planning commands (no MPI).
**
**   moe plan topology --world W [--tp N] [--cp N] [--pp N] [--ep N] [--etp N]
**                     [--order S] [--json]
** prints the parallel layout of W ranks (runtime/base/topology.h): sizes,
** every rank's coordinates and every group, as tables or as one JSON object.
** --etp defaults to --tp (Megatron-Core's expert-tensor-parallel default).
**
** argv holds what follows "plan" (argv[0] is the subcommand). Returns the exit
** status: 0 ok (and --help), 2 bad usage or an invalid layout, with
** "moe plan topology: error: <message>" on stderr; 1 on any other failure.
*/
#ifndef MOE_PLAN_H
#define MOE_PLAN_H

int moe_plan_main(int argc, char **argv);

#endif
