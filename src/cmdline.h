/* nbdstack command line (cmdline.c). */
#ifndef NBDSTACK_CMDLINE_H
#define NBDSTACK_CMDLINE_H

#include "config.h"

/* Returns 0 to run, 1 when the program should
 * exit 0 (--help, --version, --list, --check-config ok), -1 on error
 * (already printed on stderr).  On 0, cfg is complete; otherwise it is left
 * freed.  Resets getopt itself (optind = 0), so it may be called again. */
int cmdline_parse(int argc, char **argv, struct nbd_config *cfg);

#endif
