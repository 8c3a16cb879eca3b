/* nbdstack stop state (stop.c): the server-side half of what layer.h
 * offers layers (nbd_server_stopping, nbd_server_aborting, nbd_sleep). */
#ifndef NBDSTACK_STOP_H
#define NBDSTACK_STOP_H

#include <stdatomic.h>

/* Set from signal handlers: 1 once the server stops (first SIGTERM or
 * SIGINT, or the --run command exited); server_aborting once a second
 * SIGTERM/SIGINT asks to cut the final flushes short. */
extern atomic_int server_stopping;
extern atomic_int server_aborting;
/* Set by --check-config before the config is read (nbd_checking). */
extern atomic_int server_checking;
/* Set by nbd_server_exit (a layer): no new clients, exit once the
 * connected ones are gone. */
extern atomic_int server_exit_requested;
/* Set by nbd_server_exit_when_idle: exit if no connection is left; the
 * server clears it when it admits a client. */
extern atomic_int server_exit_idle;

/* The write end of the server's wake-up pipe (non-blocking), which
 * nbd_server_exit writes to; -1 = none (unit tests). */
void stop_set_wake_fd(int fd);
/* Wakes the main loop through that pipe. */
void stop_poke(void);
/* SIGUSR1 came: runs every function layers gave nbd_on_sigusr1. */
void stop_run_sigusr1(void);

/* Called by the main thread after it saw a signal: wakes every layer
 * sleeping in nbd_sleep() (a signal handler cannot). */
void stop_wake(void);
/* A write the server acknowledged but could not make durable before it
 * exits (a failed flush at close); what was lost is logged by whoever
 * calls this.  Any such write makes the exit status non-zero. */
void stop_note_unwritten(void);
unsigned stop_unwritten(void);

#endif
