/* placeholder, replaced by the real main */
#include <stdio.h>
#include "engine.h"
int main(int argc, char **argv) { registry_print(stdout); return 0; }
