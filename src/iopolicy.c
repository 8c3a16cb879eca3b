/* nbdstack I/O policy: when the reader polls, when it sleeps to gather
 * requests, and which read replies are scanned for holes.  Each
 * heuristic backs off by itself when it does not pay, so a connection
 * that gains nothing from it soon costs almost nothing.  Figures that
 * justified the defaults are in bench/results/ and in the commits that
 * introduced them, not here.
 */
#include <string.h>
#include <sys/prctl.h>

#include "iopolicy.h"

#define IOPOLICY_SPIN_BACKOFF_MAX 64    /* a failed poll skips up to this many */
#define IOPOLICY_SPIN_STREAK 16         /* polls in a row that found a request, */
#define IOPOLICY_SPIN_LONG 8            /* then poll this many times longer */
#define IOPOLICY_SPIN_LONG_MAX 1000000  /* ns, at most */
#define IOPOLICY_COAL_MIN   6           /* fewer requests per sleep: stop */
#define IOPOLICY_COAL_BACKOFF_MAX 1024  /* waits before trying again */
#define IOPOLICY_SCAN_STREAK 16         /* reads without zeros, then ... */
#define IOPOLICY_SCAN_EVERY 256         /* ... scan one in this many */

void
iopolicy_init(struct nbd_iopolicy *p, uint64_t poll_ns, uint64_t coalesce_ns)
{
  memset(p, 0, sizeof *p);
  p->poll_ns = poll_ns;
  p->coalesce_ns = coalesce_ns;
}

/* 1, 2, 4 ... max: the waits a failed attempt makes the next skip. */
static unsigned
iopolicy_backoff(unsigned b, unsigned max)
{
  return b == 0 ? 1 : b >= max / 2 ? max : 2 * b;
}

/* ---- polling for the next request ------------------------------------------ */

/* A client with requests in flight answers a batch of replies with new
 * requests within microseconds, and on a virtualised host a sleep and
 * wake-up costs more than that.  A client that does not answer that fast
 * (qd 1, idle) makes the poll fail, and each failure doubles the number
 * of waits that skip it.
 *
 * A client that has answered within `poll` many times in a row is busy:
 * when it now takes longer, it was most likely held up (preempted, a
 * page fault), not gone idle, and the request that follows would pay the
 * reader's wake-up on top of the hold-up.  So after IOPOLICY_SPIN_STREAK
 * polls that found a request the poll lasts IOPOLICY_SPIN_LONG times
 * longer (at most 1 ms); the first one that finds nothing ends the streak.
 * A client that is slower than `poll` never builds a streak, so it pays
 * nothing more; a busy one that goes idle pays one long poll. */
int
iopolicy_poll_begin(struct nbd_iopolicy *p, uint64_t *ns)
{
  uint64_t n;

  if (p->poll_ns == 0)
    return 0;
  if (p->spin_skip > 0) {
    p->spin_skip--;
    return 0;
  }
  n = p->poll_ns;
  if (p->spin_streak >= IOPOLICY_SPIN_STREAK) {
    n *= IOPOLICY_SPIN_LONG;
    if (n > IOPOLICY_SPIN_LONG_MAX)
      n = p->poll_ns > IOPOLICY_SPIN_LONG_MAX ? p->poll_ns
                                              : IOPOLICY_SPIN_LONG_MAX;
  }
  *ns = n;
  return 1;
}

void
iopolicy_poll_end(struct nbd_iopolicy *p, int got)
{
  if (got) {
    p->spin_backoff = 0;
    if (p->spin_streak < IOPOLICY_SPIN_STREAK)
      p->spin_streak++;
    return;
  }
  p->spin_streak = 0;
  p->spin_backoff = iopolicy_backoff(p->spin_backoff,
                                     IOPOLICY_SPIN_BACKOFF_MAX);
  p->spin_skip = p->spin_backoff;
}

/* ---- gathering requests ---------------------------------------------------- */

/* A client that keeps many small requests in flight sends them one at a
 * time as it takes each reply, so a reader that answers every request
 * at once sleeps and wakes (or polls) once per request, which costs more
 * than the request.  So with an empty socket the reader sleeps for a
 * slice of `coalesce`, takes what came, and sleeps again while more
 * keeps coming, up to IOPOLICY_COAL_SLICES slices, then answers the
 * whole batch in one reply write.
 *
 * It must not make a client wait that has no more to send: a slice that
 * brings nothing ends the gathering, and the count it ended at (the
 * client's queue depth, roughly) bounds later ones to 3/4 of it, so the
 * client still has replies to work on while the server sleeps.  A
 * gathering of fewer than IOPOLICY_COAL_MIN requests (qd 1, a slow or
 * idle client) turns it off for 1, 2, 4 ... IOPOLICY_COAL_BACKOFF_MAX
 * waits before it is tried again. */
int
iopolicy_coalesce_begin(struct nbd_iopolicy *p, uint64_t *slice)
{
  if (p->coalesce_ns == 0)
    return 0;
  if (!p->coal_on) {
    if (p->coal_skip > 0) {
      p->coal_skip--;
      return 0;
    }
    p->coal_on = 1;             /* try it */
  }
  p->coal_tries++;
  if (!p->coal_slack_set) {
    /* Sleeps of tens of microseconds: the default 50 us timer slack
     * would double them. */
    prctl(PR_SET_TIMERSLACK, 1000UL, 0UL, 0UL, 0UL);
    p->coal_slack_set = 1;
  }
  *slice = p->coalesce_ns / IOPOLICY_COAL_SLICES;
  return 1;
}

int
iopolicy_coalesce_more(struct nbd_iopolicy *p, unsigned n, int full)
{
  return !full && !(p->coal_stop && n >= p->coal_stop);
}

/* A slice brought nothing: the client waits for us (or is idle). */
void
iopolicy_coalesce_idle(struct nbd_iopolicy *p, unsigned n)
{
  unsigned stop = 3 * n / 4 > IOPOLICY_COAL_MIN ? 3 * n / 4
                                                : IOPOLICY_COAL_MIN;

  if (n > 0 && (p->coal_stop == 0 || stop < p->coal_stop))
    p->coal_stop = stop;
}

void
iopolicy_coalesce_end(struct nbd_iopolicy *p, unsigned n)
{
  if (n < IOPOLICY_COAL_MIN) {
    p->coal_on = 0;
    p->coal_stop = 0;
    p->coal_backoff = iopolicy_backoff(p->coal_backoff,
                                       IOPOLICY_COAL_BACKOFF_MAX);
    p->coal_skip = p->coal_backoff;
  } else {
    p->coal_backoff = 0;
    p->coal_batches++;
  }
}

/* ---- hole scans ------------------------------------------------------------ */

/* Finding the zeros of a read reply means touching every 4 KiB of it,
 * and the first touch of a page the kernel has just filled (a pread from
 * the page cache) is dear.  So after IOPOLICY_SCAN_STREAK reads in a row
 * without a zero granule, scans back off: the reads whose streak count
 * is a power of two, then one in IOPOLICY_SCAN_EVERY, until a scan finds
 * zeros again.  Data sent as data instead of a hole is still correct,
 * only longer on the wire. */
int
iopolicy_scan_begin(struct nbd_iopolicy *p)
{
  unsigned streak = atomic_load_explicit(&p->nohole_reads,
                                         memory_order_relaxed);

  return streak < IOPOLICY_SCAN_STREAK || (streak & (streak - 1)) == 0 ||
         streak % IOPOLICY_SCAN_EVERY == 0;
}

void
iopolicy_scan_end(struct nbd_iopolicy *p, int scanned, int holes)
{
  unsigned streak = atomic_load_explicit(&p->nohole_reads,
                                         memory_order_relaxed);

  if (scanned || streak >= IOPOLICY_SCAN_STREAK)
    atomic_store_explicit(&p->nohole_reads, holes ? 0 : streak + 1,
                          memory_order_relaxed);
}
