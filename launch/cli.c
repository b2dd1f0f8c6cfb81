#include "launch/cli.h"

#include <stdio.h>

int moe_cli_main(int argc, char **argv)
{
    (void)argc;
    (void)argv;
    return 0;
}
