/* nbdstack export sets and config reload (reload.c). */
#ifndef NBDSTACK_RELOAD_H
#define NBDSTACK_RELOAD_H

#include "config.h"

/* The set connections open from is a whole struct nbd_config: the one
 * main built, then each one a reload built.  A connection takes a
 * reference when it is accepted and drops it when it is freed; a set
 * that is no longer the current one is freed with its last reference. */

/* cfg (main's, freed by main) is the current set; path is the config
 * file to re-read on SIGHUP, NULL in command-line mode. */
void reload_init(struct nbd_config *cfg, const char *path);
/* The current set, with a reference taken (main thread). */
const struct nbd_config *reload_get(void);
/* Drops a reference taken by reload_get (any thread). */
void reload_put(const struct nbd_config *cfg);
/* The current set, no reference taken (main thread). */
const struct nbd_config *reload_current(void);
/* SIGHUP: re-reads the config file and makes it the current set, or
 * logs why not (the running set stays on any error).  1 = swapped: *old
 * is the set that was current, whose reference the caller drops with
 * reload_put once nothing of its own points to it. */
int reload_run(const struct nbd_config **old);
/* At exit, every connection gone: frees the sets left but main's. */
void reload_end(void);

#endif
