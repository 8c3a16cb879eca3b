/* nbdstack stop state: whether the server is stopping or aborting, an
 * interruptible sleep for layers, and the count of acknowledged writes a
 * stopping server could not make durable (which sets the exit status).
 *
 * A first SIGTERM/SIGINT stops the server: no new clients, every
 * connection finishes its requests and flushes what it wrote, however long
 * that takes.  A second one aborts: layers that do long work at close (the
 * cache filter's write-back) stop early and say what they did not write,
 * and the exit status is non-zero.  A layer may ask for the gentler exit
 * of nbdkit's exitlast and exitwhen filters (nbd_server_exit): no new
 * clients, the connected ones are served until they leave, then the same
 * orderly shutdown.  SIGUSR1 runs the report functions layers registered
 * (the stats filter).  This file does not handle signals (server.c does)
 * and knows no connection.
 */
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "layer.h"
#include "stop.h"

atomic_int server_stopping;
atomic_int server_aborting;
atomic_int server_checking;
atomic_int server_exit_requested;
atomic_int server_exit_idle;

static atomic_int stop_wake_fd = -1;
static pthread_mutex_t stop_hooks_lock = PTHREAD_MUTEX_INITIALIZER;
struct stop_hook {
  void (*fn)(void *arg);
  void *arg;
  struct stop_hook *next;
};
static struct stop_hook *stop_hooks;

static pthread_mutex_t stop_lock = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t stop_cond;
static pthread_once_t stop_once = PTHREAD_ONCE_INIT;
static atomic_uint stop_nunwritten;

/* Sleeps measure CLOCK_MONOTONIC: a clock step must not stretch them. */
static void
stop_init(void)
{
  pthread_condattr_t a;

  pthread_condattr_init(&a);
  pthread_condattr_setclock(&a, CLOCK_MONOTONIC);
  pthread_cond_init(&stop_cond, &a);
  pthread_condattr_destroy(&a);
}

void
stop_wake(void)
{
  pthread_once(&stop_once, stop_init);
  pthread_mutex_lock(&stop_lock);
  pthread_cond_broadcast(&stop_cond);
  pthread_mutex_unlock(&stop_lock);
}

void
stop_note_unwritten(void)
{
  atomic_fetch_add(&stop_nunwritten, 1);
}

unsigned
stop_unwritten(void)
{
  return atomic_load(&stop_nunwritten);
}

int
nbd_server_stopping(void)
{
  return atomic_load_explicit(&server_stopping, memory_order_relaxed) != 0;
}

int
nbd_server_aborting(void)
{
  return atomic_load_explicit(&server_aborting, memory_order_relaxed) != 0;
}

int
nbd_checking(void)
{
  return atomic_load_explicit(&server_checking, memory_order_relaxed) != 0;
}

/* The flag is set before the main thread calls stop_wake, and it is read
 * under stop_lock here, so a sleeper either sees it or gets the
 * broadcast. */
int
nbd_sleep(uint64_t ns)
{
  struct timespec end;
  int r = 0;

  pthread_once(&stop_once, stop_init);
  clock_gettime(CLOCK_MONOTONIC, &end);
  end.tv_sec += (time_t)(ns / 1000000000);
  end.tv_nsec += (long)(ns % 1000000000);
  if (end.tv_nsec >= 1000000000) {
    end.tv_sec++;
    end.tv_nsec -= 1000000000;
  }
  pthread_mutex_lock(&stop_lock);
  while (!nbd_server_stopping() && r == 0)
    r = pthread_cond_timedwait(&stop_cond, &stop_lock, &end);
  pthread_mutex_unlock(&stop_lock);
  return nbd_server_stopping() && r == 0 ? -ESHUTDOWN : 0;
}

void
stop_set_wake_fd(int fd)
{
  atomic_store(&stop_wake_fd, fd);
}

void
stop_poke(void)
{
  int fd = atomic_load(&stop_wake_fd);
  char c = 0;

  if (fd != -1 && write(fd, &c, 1) == -1) {
    /* The pipe is full: a wake-up is already pending. */
  }
}

void
nbd_server_exit(const char *why)
{
  if (atomic_exchange(&server_exit_requested, 1) == 0)
    nbd_info("exit requested (%s): no new clients; exiting once the "
             "connected ones are gone", why);
  stop_poke();
}

void
nbd_server_exit_when_idle(void)
{
  atomic_store(&server_exit_idle, 1);
  stop_poke();
}

int
nbd_server_exiting(void)
{
  return atomic_load_explicit(&server_exit_requested,
                              memory_order_relaxed) != 0 ||
         nbd_server_stopping();
}

int
nbd_on_sigusr1(void (*fn)(void *arg), void *arg)
{
  struct stop_hook *h = malloc(sizeof *h);

  if (h == NULL)
    return -ENOMEM;
  h->fn = fn;
  h->arg = arg;
  pthread_mutex_lock(&stop_hooks_lock);
  h->next = stop_hooks;
  stop_hooks = h;
  pthread_mutex_unlock(&stop_hooks_lock);
  return 0;
}

void
nbd_off_sigusr1(void (*fn)(void *arg), void *arg)
{
  struct stop_hook **p, *h;

  pthread_mutex_lock(&stop_hooks_lock);
  for (p = &stop_hooks; (h = *p) != NULL; p = &h->next)
    if (h->fn == fn && h->arg == arg) {
      *p = h->next;
      free(h);
      break;
    }
  pthread_mutex_unlock(&stop_hooks_lock);
}

/* Under the lock: a cleanup that unregisters waits for a report in
 * progress, so fn never runs on a freed arg. */
void
stop_run_sigusr1(void)
{
  struct stop_hook *h;

  pthread_mutex_lock(&stop_hooks_lock);
  for (h = stop_hooks; h; h = h->next)
    h->fn(h->arg);
  pthread_mutex_unlock(&stop_hooks_lock);
}
