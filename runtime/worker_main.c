#include <stdio.h>
int main(void) { puts("moe-worker"); return 0; }
