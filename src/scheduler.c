/* nbdstack request scheduling: where a connection's requests run, and
 * the request objects they run in.
 *
 * Requests run inline on the reader thread when no layer of the export
 * may block (no handoff, best latency and CPU; small replies are
 * batched by wire.c), or when its layers only rarely block, until
 * requests turn out to block (sched_adapt).  Otherwise a lazily grown
 * pool of per-connection workers runs them concurrently and replies
 * leave in completion order.  In-flight requests and bytes are bounded
 * per connection, and buffers within the server's budget (bufmem.c), so
 * a client that never reads replies cannot grow the server's memory.
 * What a request does is transmission.c's (the exec callback).
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <unistd.h>

#include "bufmem.h"
#include "protocol.h"
#include "scheduler.h"

#define SCHED_MAX_INFLIGHT_BYTES (64u << 20)
#define SCHED_MAX_INFLIGHT    64
/* Finished requests are kept with their buffers for reuse: a fresh
 * buffer costs an mmap, a page fault per 4 KiB and an munmap (musl maps
 * every allocation over 128 KiB), and nbdcopy keeps 64 requests of
 * 256 KiB in flight per connection. */
#define SCHED_KEEP_BUF        (4u << 20)   /* larger buffers are not kept */
#define SCHED_FREELIST_MAX    SCHED_MAX_INFLIGHT
#define SCHED_KEEP_BYTES      (32u << 20)  /* per connection */
#define SCHED_WORKER_STACK    (256u << 10)
#define SCHED_SLOW_NS         1000000     /* 1 ms: an inline request too slow */
#define SCHED_PROBE           64          /* requests watched after one */
#define SCHED_SLOW_COUNT      4           /* ... this many times ... */
#define SCHED_SLOW_WINDOW     256         /* ... within this many requests */
/* Requests that keep a CPU busy this long while the client has more
 * waiting, SCHED_HEAVY_COUNT times in a window, are worth running side
 * by side on workers when there is a second CPU.  Not the writes of a
 * stack with a serial_writes layer (a file: a 4 KiB write into a
 * large page-cache folio keeps the CPU tens of microseconds, but under
 * the file's inode lock, which workers would only contend for). */
#define SCHED_HEAVY_NS        20000       /* 20 us */
#define SCHED_HEAVY_COUNT     48
#define SCHED_HEAVY_NS_PER_BYTE 4         /* a copy takes well under 1 */
#define SCHED_WAIT_COUNT      8

struct nbd_request *
sched_get(struct nbd_conn *c)
{
  struct nbd_request *r;

  pthread_mutex_lock(&c->qlock);
  r = c->freelist;
  if (r) {
    c->freelist = r->next;
    c->nfree--;
    c->nfree_bytes -= r->bufcap;
  }
  pthread_mutex_unlock(&c->qlock);
  if (r == NULL)
    r = calloc(1, sizeof *r);
  else if (r->bufcap) {
    bufmem_unkeep(r->bufcap);   /* kept, and now in use again */
    atomic_fetch_add(&c->buf_inuse, r->bufcap);
  }
  return r;
}

/* Frees r's buffer and gives its bytes back to the budget. */
static void
sched_free_buf(struct nbd_conn *c, struct nbd_request *r)
{
  if (r->bufcap) {
    atomic_fetch_sub(&c->buf_inuse, r->bufcap);
    bufmem_uncharge(r->bufcap);
  }
  free(r->buf);
  r->buf = NULL;
  r->bufcap = 0;
}

/* Caller holds qlock. */
static void
sched_put_locked(struct nbd_conn *c, struct nbd_request *r)
{
  if (c->nfree >= SCHED_FREELIST_MAX) {
    sched_free_buf(c, r);
    free(r);
    return;
  }
  if (r->bufcap > SCHED_KEEP_BUF ||
      c->nfree_bytes + r->bufcap > SCHED_KEEP_BYTES ||
      (r->bufcap && !bufmem_keep(r->bufcap)))
    sched_free_buf(c, r);
  else
    atomic_fetch_sub(&c->buf_inuse, r->bufcap);
  r->next = c->freelist;
  c->freelist = r;
  c->nfree++;
  c->nfree_bytes += r->bufcap;
}

static int
sched_cancelled(void *arg)
{
  struct nbd_conn *c = arg;
  int stop;

  pthread_mutex_lock(&c->qlock);
  stop = c->stopping;
  pthread_mutex_unlock(&c->qlock);
  return stop || nbd_server_stopping();
}

/* When the budget is spent the reader first sends the replies it had
 * batched: its client may be waiting for them. */
int
sched_reserve(struct nbd_conn *c, struct nbd_request *r, size_t len)
{
  char *p;

  if (r->bufcap >= len)
    return 0;
  sched_free_buf(c, r);
  if (!bufmem_try(len, atomic_load(&c->buf_inuse))) {
    if (c->w.olen)
      wire_flush(&c->w);
    if (bufmem_wait(len, atomic_load(&c->buf_inuse), sched_cancelled, c) == -1)
      return -ESHUTDOWN;
  }
  p = malloc(len);
  if (p == NULL) {
    bufmem_uncharge(len);
    return -ENOMEM;
  }
  atomic_fetch_add(&c->buf_inuse, len);
  r->buf = p;
  r->bufcap = len;
  return 0;
}

/* Times this thread went to sleep by itself (I/O, a lock), as opposed to
 * being preempted. */
static long
sched_voluntary_switches(void)
{
  struct rusage ru;

  return getrusage(RUSAGE_THREAD, &ru) == 0 ? ru.ru_nvcsw : 0;
}

/* Ends the timing of tm (NULL: none): how long since t0, and whether the
 * thread slept meanwhile, when that was asked and it took over 1 ms. */
void
sched_timing_stop(struct sched_timing *tm)
{
  if (tm == NULL)
    return;
  tm->took = nbd_now_ns() - tm->t0;
  tm->slept = tm->nvcsw >= 0 && tm->took > SCHED_HEAVY_NS &&
              sched_voluntary_switches() > tm->nvcsw;
}

/* ---- workers ----------------------------------------------------------------- */

static void
sched_finish(struct nbd_conn *c, struct nbd_request *r, int dead)
{
  pthread_mutex_lock(&c->qlock);
  c->inflight--;
  c->inflight_bytes -= r->count;
  atomic_store(&c->w.busy, c->inflight);
  if (dead)
    c->stopping = 1;
  sched_put_locked(c, r);
  pthread_cond_broadcast(&c->donecond);
  pthread_mutex_unlock(&c->qlock);
}

void
sched_track(struct nbd_conn *c, struct nbd_sched *s, struct nbd_request *r)
{
  s->async = 1;
  pthread_mutex_lock(&c->qlock);
  c->inflight++;
  c->inflight_bytes += r->count;
  atomic_store(&c->w.busy, c->inflight);
  pthread_mutex_unlock(&c->qlock);
}

void
sched_untrack(struct nbd_conn *c, struct nbd_request *r)
{
  pthread_mutex_lock(&c->qlock);
  c->inflight--;
  c->inflight_bytes -= r->count;
  atomic_store(&c->w.busy, c->inflight);
  pthread_cond_broadcast(&c->donecond);
  pthread_mutex_unlock(&c->qlock);
}

void
sched_done(struct nbd_conn *c, struct nbd_request *r, int dead)
{
  sched_finish(c, r, dead);
}

static void *
sched_worker(void *arg)
{
  struct nbd_conn *c = arg;
  struct nbd_request *r;

  for (;;) {
    pthread_mutex_lock(&c->qlock);
    while (c->qhead == NULL && !c->stopping) {
      c->nidle++;
      pthread_cond_wait(&c->qcond, &c->qlock);
      c->nidle--;
    }
    r = c->qhead;
    if (r == NULL) {
      pthread_mutex_unlock(&c->qlock);
      return NULL;
    }
    c->qhead = r->next;
    if (c->qhead == NULL)
      c->qtail = NULL;
    pthread_mutex_unlock(&c->qlock);
    sched_finish(c, r, c->exec(c, r, NULL) == -1);
  }
}

/* Caller holds qlock.  Starts a worker when none is idle. */
static void
sched_maybe_spawn(struct nbd_conn *c)
{
  pthread_attr_t attr;
  pthread_t *w;
  unsigned max = c->cfg->threads ? c->cfg->threads : 16;

  if (c->nidle > 0 || c->nworkers >= max)
    return;
  w = realloc(c->workers, (c->nworkers + 1) * sizeof *w);
  if (w == NULL)
    return;
  c->workers = w;
  pthread_attr_init(&attr);
  pthread_attr_setstacksize(&attr, SCHED_WORKER_STACK);
  if (pthread_create(&c->workers[c->nworkers], &attr, sched_worker, c) == 0)
    c->nworkers++;
  pthread_attr_destroy(&attr);
}

/* Queues a request; waits while the connection is at its in-flight bound.
 * Returns -1 if the connection is stopping. */
static int
sched_enqueue(struct nbd_conn *c, struct nbd_request *r)
{
  int wake;

  pthread_mutex_lock(&c->qlock);
  r->next = NULL;
  if (c->qtail)
    c->qtail->next = r;
  else
    c->qhead = r;
  c->qtail = r;
  sched_maybe_spawn(c);
  if (c->nworkers == 0) {
    /* No thread could be started: run it here rather than hang. */
    c->qhead = c->qtail = NULL;
    pthread_mutex_unlock(&c->qlock);
    sched_finish(c, r, c->exec(c, r, NULL) == -1);
    return 0;
  }
  /* Wake a worker only when one waits (busy ones look at the queue
   * before they sleep), and after unlocking: woken under the lock, it
   * would block on the lock at once (two more futex calls a request). */
  wake = c->nidle > 0;
  pthread_mutex_unlock(&c->qlock);
  if (wake)
    pthread_cond_signal(&c->qcond);
  return 0;
}

/* Waits until in-flight work is under the bounds (or all done when
 * all = 1).  Returns -1 if a worker found the connection dead. */
static int
sched_wait(struct nbd_conn *c, int all)
{
  int dead;

  pthread_mutex_lock(&c->qlock);
  while (all ? c->inflight > 0
             : (c->inflight >= SCHED_MAX_INFLIGHT ||
                c->inflight_bytes >= SCHED_MAX_INFLIGHT_BYTES))
    pthread_cond_wait(&c->donecond, &c->qlock);
  dead = c->stopping;
  pthread_mutex_unlock(&c->qlock);
  return dead ? -1 : 0;
}

/* ---- inline or workers ------------------------------------------------------ */

static atomic_int sched_ncpus;

/* For stacks that rarely block: decides, after each inline request, whether
 * the connection should move to workers.  A slow request is only a
 * suspicion: on a busy machine the thread may just have lost its CPU, and
 * moving to workers costs much when the stack does not block (a handoff
 * and a wake-up per request).  So the next SCHED_PROBE requests are
 * watched closely (getrusage each).  Then:
 * - SCHED_SLOW_COUNT requests over 1 ms during which the thread slept by
 *   itself, within SCHED_SLOW_WINDOW requests: the layer really blocks;
 * - SCHED_WAIT_COUNT requests over SCHED_HEAVY_NS that slept while the
 *   client had more waiting (queued): it waits (a proxy's round trip),
 *   and workers would overlap the waits;
 * - SCHED_HEAVY_COUNT requests over SCHED_HEAVY_NS, and over
 *   SCHED_HEAVY_NS_PER_BYTE for their size, that kept the CPU
 *   while more waited: a second CPU would run them meanwhile.
 * Returns 1 to switch, 2 to switch for the last reason, else 0.  A lone
 * request (queue depth 1) never switches for its length alone: inline,
 * it costs no handoff. */
static int
sched_adapt(struct nbd_sched *a, const struct sched_timing *tm, int queued,
            uint32_t count)
{
  int long_one = tm->took > SCHED_HEAVY_NS;
  /* Heavy for its size: far more than copying its bytes (a 1 MiB read
   * that takes 100 us is only a copy, and no reason to move). */
  int heavy_one = long_one &&
                  tm->took > (uint64_t)count * SCHED_HEAVY_NS_PER_BYTE;

  if (++a->window == SCHED_SLOW_WINDOW)
    a->window = a->slow = a->heavy = a->waits = 0;
  if (a->probe > 0) {
    a->probe--;
    if (tm->slept && tm->took > SCHED_SLOW_NS &&
        ++a->slow >= SCHED_SLOW_COUNT)
      return 1;
    if (long_one && queued && tm->slept && ++a->waits >= SCHED_WAIT_COUNT)
      return 1;
    if (heavy_one && queued && !tm->slept && tm->nvcsw >= 0) {
      if (atomic_load(&sched_ncpus) == 0)
        atomic_store(&sched_ncpus, (int)sysconf(_SC_NPROCESSORS_ONLN));
      if (atomic_load(&sched_ncpus) > 1 && ++a->heavy >= SCHED_HEAVY_COUNT)
        return 2;
    }
  }
  if (a->probe == 0 && (tm->took > SCHED_SLOW_NS || (long_one && queued)))
    a->probe = SCHED_PROBE;
  return 0;
}

void
sched_put(struct nbd_conn *c, struct nbd_request *r)
{
  pthread_mutex_lock(&c->qlock);
  sched_put_locked(c, r);
  pthread_mutex_unlock(&c->qlock);
}

int
sched_start(struct nbd_conn *c, struct nbd_sched *s, sched_exec_fn *exec)
{
  const struct nbd_export *e = c->exp;
  int serial = e->model <= NBD_SERIALIZE_REQUESTS || c->cfg->threads == 1;

  memset(s, 0, sizeof *s);
  s->exec = exec;
  c->exec = exec;
  pthread_mutex_lock(&c->qlock);
  c->stopping = 0;              /* again, after park.c gave it back */
  pthread_mutex_unlock(&c->qlock);
  s->inl = serial || (e->nonblocking != NBD_MAY_BLOCK &&
                      c->cfg->inline_requests);
  /* "Rarely blocks": inline until a request turns out slow. */
  s->adaptive = !serial && e->nonblocking == NBD_RARELY_BLOCKS;
  /* Writes whose top layer reads the payload itself (pwrite_from), when
   * nothing else can wait on that read: inline, and no lock across
   * connections held meanwhile.  A stack that may move to workers pulls
   * only writes it splices, while inline (the time spent waiting for
   * the payload is not counted against the stack). */
  s->pull = s->inl && (!s->adaptive || c->top->pull_splice) &&
            e->model != NBD_SERIALIZE_ALL_REQUESTS && c->top->pull;
  /* Reads and writes that the backend completes later (submit): no
   * thread waits on each. */
  s->can_async = !serial && c->top->async;
  s->tm.nvcsw = -1;
  nbd_debug("%s: export \"%s\" running %s", c->peer, e->name,
            s->inl ? "inline" : "with workers");
  return s->inl ? wire_batch_start(&c->w) : 0;
}

int
sched_room(struct nbd_conn *c, struct nbd_sched *s)
{
  return s->inl && !s->async ? 0 : sched_wait(c, 0);
}

int
sched_submit(struct nbd_conn *c, struct nbd_sched *s, struct nbd_request *r)
{
  int dead, heavy, judged;
  uint32_t count;

  if (!s->inl) {
    pthread_mutex_lock(&c->qlock);
    c->inflight++;
    c->inflight_bytes += r->count;
    atomic_store(&c->w.busy, c->inflight);
    pthread_mutex_unlock(&c->qlock);
    sched_enqueue(c, r);
    return 0;
  }
  if (s->adaptive) {
    s->tm.t0 = nbd_now_ns();
    s->tm.nvcsw = s->probe ? sched_voluntary_switches() : -1;
  }
  count = r->count;
  /* Writes that the kernel runs one at a time would gain nothing on
   * workers: several writing at once contend for the lock (a file's
   * 4 KiB writes into large folios took 109 us of CPU each on workers,
   * 51 us inline). */
  judged = !(c->top->serial_writes && (r->type == NBD_CMD_WRITE ||
                                       r->type == NBD_CMD_WRITE_ZEROES ||
                                       r->type == NBD_CMD_TRIM));
  dead = s->exec(c, r, s->adaptive ? &s->tm : NULL) == -1;
  sched_put(c, r);
  if (dead)
    return -1;
  if (s->adaptive && judged &&
      (heavy = sched_adapt(s, &s->tm, wire_buffered(&c->w) > 0,
                           count)) != 0) {
    /* All the workers, even for busy CPUs: a 4 KiB read behind a 50 us
     * write waits less on a second worker (ext4 writes a file one call
     * at a time, but reads beside them); one worker made a randrw mix
     * 0.37x nbdkit's. */
    nbd_debug("%s: requests %s: running requests on workers from now on",
              c->peer, heavy == 2 ? "keep a CPU busy while more wait"
              : "sleep");
    wire_batch_stop(&c->w);
    s->inl = s->adaptive = 0;
  }
  return 0;
}

void
sched_stop(struct nbd_conn *c, struct nbd_sched *s)
{
  struct nbd_request *r;
  unsigned i;

  if (!s->inl || s->async)
    sched_wait(c, 1);
  if (s->inl)
    wire_batch_stop(&c->w);
  pthread_mutex_lock(&c->qlock);
  c->stopping = 1;
  pthread_cond_broadcast(&c->qcond);
  pthread_mutex_unlock(&c->qlock);
  for (i = 0; i < c->nworkers; i++)
    pthread_join(c->workers[i], NULL);
  free(c->workers);
  c->workers = NULL;
  c->nworkers = 0;
  while ((r = c->freelist) != NULL) {
    c->freelist = r->next;
    if (r->bufcap) {            /* kept: back in use, then freed */
      bufmem_unkeep(r->bufcap);
      atomic_fetch_add(&c->buf_inuse, r->bufcap);
    }
    sched_free_buf(c, r);
    free(r);
  }
  c->nfree = 0;
  c->nfree_bytes = 0;
}
