/* nbdstack I/O policy (iopolicy.c): the heuristics of the socket side,
 * with their knobs, in one place.  wire.c asks it when to poll for the
 * next request and when to sleep to gather several; protocol.c asks it
 * which read replies to scan for holes.  It makes no system call on a
 * socket: it only decides. */
#ifndef NBDSTACK_IOPOLICY_H
#define NBDSTACK_IOPOLICY_H

#include <stdatomic.h>
#include <stdint.h>

#define IOPOLICY_COAL_SLICES 4    /* sleeps per gathering, at most */

struct nbd_iopolicy {
  uint64_t poll_ns;             /* `poll`: 0 = never */
  uint64_t coalesce_ns;         /* `coalesce`: 0 = never */
  unsigned spin_skip, spin_backoff, spin_streak;
  int coal_on, coal_slack_set;
  unsigned coal_skip, coal_backoff, coal_stop;
  unsigned long coal_tries, coal_batches;  /* gatherings, and those kept */
  atomic_uint nohole_reads;     /* read replies in a row without zeros */
};

void iopolicy_init(struct nbd_iopolicy *p, uint64_t poll_ns,
                   uint64_t coalesce_ns);

/* Polling for the next request before sleeping: begin says whether to
 * poll this time (0: go straight to sleep) and for how long (*ns); end
 * says whether the poll brought anything. */
int iopolicy_poll_begin(struct nbd_iopolicy *p, uint64_t *ns);
void iopolicy_poll_end(struct nbd_iopolicy *p, int got);

/* Gathering the requests of a client that keeps many in flight: begin
 * says whether to gather now and sets the length of one sleep (*slice);
 * after each slice, more says whether to sleep again given the requests
 * buffered (n) and whether the buffer is full; end reports the count. */
int iopolicy_coalesce_begin(struct nbd_iopolicy *p, uint64_t *slice);
int iopolicy_coalesce_more(struct nbd_iopolicy *p, unsigned n, int full);
void iopolicy_coalesce_idle(struct nbd_iopolicy *p, unsigned n);
void iopolicy_coalesce_end(struct nbd_iopolicy *p, unsigned n);

/* Hole scans of read replies: whether to scan this one, then whether it
 * was scanned and found zeros. */
int iopolicy_scan_begin(struct nbd_iopolicy *p);
void iopolicy_scan_end(struct nbd_iopolicy *p, int scanned, int holes);

#endif
