/* nbdstack buffer memory: the request and reply buffers of every
 * connection share one budget (max-buffer-memory).  Each connection
 * already bounds what it holds (transmission.c), but that multiplies by
 * the number of connections: clients that leave large reads unread could
 * hold gigabytes.  Here a request whose buffer would exceed the budget
 * waits (its connection's reader stops reading the socket) until other
 * requests give theirs back.
 *
 * Of the budget L:
 * - buffers kept for reuse by idle requests take at most L/8, and are
 *   freed rather than kept beyond it, so idle connections cannot hold
 *   memory that busy ones wait for;
 * - buffers in use take at most 3L/4, except that a connection holding
 *   at most BUFMEM_FRUGAL in all may go up to 7L/8: clients that leave
 *   large replies unread can fill 3L/4 and no more, and a client with
 *   small requests is still served meanwhile.
 * No deadlock: a waiting request holds no buffer it waits for, and every
 * buffer in use is given back when its request ends (or its connection
 * dies).  This file knows no connection.
 */
#include <pthread.h>
#include <stdatomic.h>
#include <time.h>

#include "bufmem.h"
#include "layer.h"

#define BUFMEM_FRUGAL (UINT64_C(1) << 20)

static uint64_t bufmem_limit;
static _Atomic uint64_t bufmem_alloc;   /* in use and kept */
static _Atomic uint64_t bufmem_nkept;
static atomic_uint bufmem_waiters;
static pthread_mutex_t bufmem_lock = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t bufmem_cond = PTHREAD_COND_INITIALIZER;

void
bufmem_set_limit(uint64_t limit)
{
  bufmem_limit = limit;
}

int
bufmem_try(size_t n, uint64_t inuse)
{
  uint64_t lim, was;

  if (bufmem_limit == 0) {
    atomic_fetch_add(&bufmem_alloc, n);
    return 1;
  }
  lim = inuse + n <= BUFMEM_FRUGAL ? bufmem_limit / 8 * 7
                                   : bufmem_limit / 4 * 3;
  was = atomic_fetch_add(&bufmem_alloc, n);
  /* Compare what is in use, kept buffers aside (they have their own
   * share). */
  if (was + n - atomic_load(&bufmem_nkept) <= lim)
    return 1;
  /* No broadcast: a waiter that lost to this tentative charge retries
   * within its bounded wait (and bufmem_wait calls this holding the
   * lock). */
  atomic_fetch_sub(&bufmem_alloc, n);
  return 0;
}

int
bufmem_wait(size_t n, uint64_t inuse, int (*cancel)(void *), void *arg)
{
  struct timespec ts;
  int r = 0;

  if (bufmem_try(n, inuse))
    return 0;
  pthread_mutex_lock(&bufmem_lock);
  atomic_fetch_add(&bufmem_waiters, 1);
  while (!bufmem_try(n, inuse)) {
    if (cancel(arg)) {
      r = -1;
      break;
    }
    /* A bounded wait: cancel is a flag, nobody signals it. */
    clock_gettime(CLOCK_REALTIME, &ts);
    ts.tv_nsec += 100000000;
    if (ts.tv_nsec >= 1000000000) {
      ts.tv_sec++;
      ts.tv_nsec -= 1000000000;
    }
    pthread_cond_timedwait(&bufmem_cond, &bufmem_lock, &ts);
  }
  atomic_fetch_sub(&bufmem_waiters, 1);
  pthread_mutex_unlock(&bufmem_lock);
  return r;
}

void
bufmem_uncharge(size_t n)
{
  atomic_fetch_sub(&bufmem_alloc, n);
  if (atomic_load(&bufmem_waiters) > 0) {
    pthread_mutex_lock(&bufmem_lock);
    pthread_cond_broadcast(&bufmem_cond);
    pthread_mutex_unlock(&bufmem_lock);
  }
}

int
bufmem_keep(size_t n)
{
  uint64_t was = atomic_fetch_add(&bufmem_nkept, n);

  if (bufmem_limit == 0 || was + n <= bufmem_limit / 8)
    return 1;
  atomic_fetch_sub(&bufmem_nkept, n);
  return 0;
}

void
bufmem_unkeep(size_t n)
{
  atomic_fetch_sub(&bufmem_nkept, n);
}

uint64_t
bufmem_charged(void)
{
  return atomic_load(&bufmem_alloc);
}

uint64_t
bufmem_kept(void)
{
  return atomic_load(&bufmem_nkept);
}
