#include "launch/cli.h"

int main(int argc, char **argv) { return moe_cli_main(argc, argv); }
