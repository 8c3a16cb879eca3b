/* nbdstack process set-up (process.c), readiness notification
 * (notify.c) and the --run command (captive.c). */
#ifndef NBDSTACK_PROCESS_H
#define NBDSTACK_PROCESS_H

#include <sys/types.h>

#include "config.h"

/* Raises the soft open-file limit to the hard one; warns when even that
 * is short of what max-connections and max-handshakes allow. */
void process_raise_nofile(const struct nbd_config *cfg);
/* -u/-g (names or numbers); 0 or -1 (logged).  paths (the Unix
 * sockets and pidfile made so far) and cfg->tmpdir are removed at exit
 * by a child that keeps root, once process_cleanup_done is called or
 * the server dies. */
int process_drop_privileges(const struct nbd_config *cfg,
                            const char *const *paths, size_t npaths);
/* At exit, after our own unlinks: lets that child remove the paths and
 * waits for it. */
void process_cleanup_done(void);
/* 0 or -1 (logged; nothing left behind). */
int process_write_pidfile(const char *path);

/* "READY=1" or "STOPPING=1" to $NOTIFY_SOCKET, if set. */
void notify_systemd(const char *msg);

/* --run: starts cfg->run under /bin/sh with $uri, $nbd, $exportname and
 * $unixsocket or $port set; its pid, or -1 (logged). */
pid_t captive_start(const struct nbd_config *cfg);
/* Its exit status as a shell reports it (128 + signal); a command still
 * running gets SIGTERM first. */
int captive_status(pid_t pid);

#endif
