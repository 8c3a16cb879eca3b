/* nbdstack park: idle connections wait here without a thread.
 *
 * A connection's thread costs its stack and buffers (about 30 KiB once
 * touched) and a task of the kernel's, which 10,000 idle clients
 * multiply past what a small host gives.  When a reader has waited
 * PARK_AFTER_NS for a new request with none in flight (wire.c), its
 * thread hands the socket here and ends; one epoll thread watches every
 * parked socket and, when one becomes readable (a request, end of file,
 * an error, or server_drain's shutdown at exit), gives the connection
 * back to server.c, which starts a thread that goes on where the old one
 * stopped.  Busy connections never come here: a reader only parks after
 * a whole second without a request.
 *
 * It also keeps the idle timeout of parked connections, by shutting
 * their sockets (the thread woken for it sees end of file).  It does not
 * read the sockets, nor know the protocol.
 */
#include <errno.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <unistd.h>

#include "park.h"

#define PARK_EVENTS 64

static int park_epfd = -1, park_evfd = -1;
static pthread_t park_tid;
static int park_running;
static atomic_int park_quit;
static void (*park_wake)(struct nbd_conn *c);
/* The parked connections (newest first) and how many have a deadline.
 * The lock also orders what the parking thread wrote before what the
 * woken one reads (epoll is invisible to ThreadSanitizer). */
static pthread_mutex_t park_lock = PTHREAD_MUTEX_INITIALIZER;
static struct nbd_conn *park_list;
static unsigned park_ndeadlines;

static void
park_unlink(struct nbd_conn *c)
{
  if (c->park_prev)
    c->park_prev->park_next = c->park_next;
  else
    park_list = c->park_next;
  if (c->park_next)
    c->park_next->park_prev = c->park_prev;
  c->park_prev = c->park_next = NULL;
  if (c->park_deadline)
    park_ndeadlines--;
  c->park_deadline = 0;
}

/* Shuts the sockets of connections idle past their timeout; the wake-up
 * that follows ends them as any end of file does. */
static void
park_expire(void)
{
  uint64_t now = nbd_now_ns();
  struct nbd_conn *c;

  for (c = park_list; c; c = c->park_next)
    if (c->park_deadline && now >= c->park_deadline) {
      nbd_info("%s: idle timeout, closing", c->peer);
      park_ndeadlines--;
      c->park_deadline = 0;
      shutdown(c->w.fd, SHUT_RDWR);
    }
}

static void *
park_loop(void *arg)
{
  struct epoll_event ev[PARK_EVENTS];
  struct nbd_conn *c;
  int i, n, expiring;

  (void)arg;
  for (;;) {
    pthread_mutex_lock(&park_lock);
    expiring = park_ndeadlines > 0;
    pthread_mutex_unlock(&park_lock);
    n = epoll_wait(park_epfd, ev, PARK_EVENTS, expiring ? 1000 : -1);
    if (n == -1 && errno != EINTR) {
      nbd_error("park: epoll_wait: %s", strerror(errno));
      return NULL;
    }
    for (i = 0; i < n; i++) {
      if ((c = ev[i].data.ptr) == NULL) {     /* the eventfd */
        uint64_t v;
        if (read(park_evfd, &v, sizeof v) == -1) {
          /* EAGAIN: another wake-up read it already */
        }
        if (atomic_load(&park_quit))
          return NULL;          /* park_stop */
        continue;               /* a first deadline: wait with a timeout */
      }
      pthread_mutex_lock(&park_lock);
      park_unlink(c);
      pthread_mutex_unlock(&park_lock);
      park_wake(c);             /* one-shot: disarmed until parked again */
    }
    if (expiring) {
      pthread_mutex_lock(&park_lock);
      park_expire();
      pthread_mutex_unlock(&park_lock);
    }
  }
}

int
park_start(void (*wake)(struct nbd_conn *c))
{
  struct epoll_event ev;
  pthread_attr_t attr;
  int r;

  park_wake = wake;
  park_epfd = epoll_create1(EPOLL_CLOEXEC);
  park_evfd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
  memset(&ev, 0, sizeof ev);
  ev.events = EPOLLIN;
  ev.data.ptr = NULL;
  if (park_epfd == -1 || park_evfd == -1 ||
      epoll_ctl(park_epfd, EPOLL_CTL_ADD, park_evfd, &ev) == -1) {
    nbd_error("park: %s", strerror(errno));
    park_stop();
    return -1;
  }
  pthread_attr_init(&attr);
  pthread_attr_setstacksize(&attr, 64u << 10);
  r = pthread_create(&park_tid, &attr, park_loop, NULL);
  pthread_attr_destroy(&attr);
  if (r != 0) {
    nbd_error("park: cannot start its thread: %s", strerror(r));
    park_stop();
    return -1;
  }
  park_running = 1;
  return 0;
}

int
park_add(struct nbd_conn *c, uint64_t idle_left_ns)
{
  struct epoll_event ev;
  int op = c->park_registered ? EPOLL_CTL_MOD : EPOLL_CTL_ADD, wake = 0, r;
  uint64_t one = 1;

  if (!park_running)
    return -1;
  memset(&ev, 0, sizeof ev);
  ev.events = EPOLLIN | EPOLLRDHUP | EPOLLONESHOT;
  ev.data.ptr = c;
  /* Linked and armed under the lock: the loop takes it before it wakes
   * c, so all this thread did with c comes before (epoll alone orders
   * nothing for ThreadSanitizer). */
  pthread_mutex_lock(&park_lock);
  c->park_prev = NULL;
  c->park_next = park_list;
  if (park_list)
    park_list->park_prev = c;
  park_list = c;
  if (idle_left_ns) {
    c->park_deadline = nbd_now_ns() + idle_left_ns;
    wake = park_ndeadlines++ == 0;
  }
  r = epoll_ctl(park_epfd, op, c->w.fd, &ev);
  if (r == 0)
    c->park_registered = 1;
  else {
    nbd_warn("%s: cannot park the idle connection: %s", c->peer,
             strerror(errno));
    park_unlink(c);
    wake = 0;
  }
  pthread_mutex_unlock(&park_lock);
  /* From here on the loop may have woken c: c is not ours any more. */
  /* The loop may be asleep without a timeout: it needs one now. */
  if (wake && write(park_evfd, &one, sizeof one) == -1) {
    /* EAGAIN: the counter is full, a wake-up is pending anyway */
  }
  return r == 0 ? 0 : -1;
}

void
park_stop(void)
{
  uint64_t one = 1;

  if (park_running) {
    atomic_store(&park_quit, 1);
    if (write(park_evfd, &one, sizeof one) != (ssize_t)sizeof one)
      nbd_warn("park: cannot stop its thread: %s", strerror(errno));
    else
      pthread_join(park_tid, NULL);
    park_running = 0;
  }
  if (park_evfd != -1)
    close(park_evfd);
  if (park_epfd != -1)
    close(park_epfd);
  park_evfd = park_epfd = -1;
}
