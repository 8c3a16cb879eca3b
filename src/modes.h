/* nbdstack process modes: how the process runs, as opposed to what it
 * serves (struct nbd_config).  cmdline.c sets them; server.c acts on
 * them; manpage.c prints the pages of --man. */
#ifndef NBDSTACK_MODES_H
#define NBDSTACK_MODES_H

#include <stdio.h>
#include <sys/types.h>

struct nbd_modes {
  /* -s: serve the one client on fd 0 (a socket: inetd, libnbd's
   * connect_command) without listening, then exit. */
  int single;
  /* --exit-with-parent: SIGTERM when the parent goes (PR_SET_PDEATHSIG);
   * parent is the parent's pid as the options were read, to catch one
   * that went before the signal was asked for. */
  int exit_with_parent;
  pid_t parent;
  /* --print-uri: each listener's URI on stdout once serving. */
  int print_uri;
  /* -4 / -6 (nbdkit's --ipv4-only, --ipv6-only): TCP listen addresses of
   * this family only (AF_INET, AF_INET6; 0 = both). */
  int family;
};

extern struct nbd_modes nbd_modes;

/* manpage.c: writes the roff source of page "1" (nbdstack), "5"
 * (nbdstack.conf), "filters" or "backends" (section 7); -1 on an unknown
 * page. */
int manpage_print(FILE *fp, const char *page);

#endif
