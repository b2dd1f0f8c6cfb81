/*
** cli: the `moe` command line. moe_cli_main parses the subcommand and runs it;
** it returns the process exit status (0 ok, 2 bad usage or input, 1 failure)
** and is the only place in launch/ that prints an error for the user.
*/
#ifndef MOE_CLI_H
#define MOE_CLI_H

int moe_cli_main(int argc, char **argv);

#endif
