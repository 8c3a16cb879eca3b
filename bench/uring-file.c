/* bench/uring-file: 4 KiB random buffered writes into a file through
 * pwrite on one thread, pwrite on several threads, or io_uring with many
 * writes in flight, to choose how the file backend should write (issue
 * 19).  Not part of the server; build with
 *
 *   cc -O2 -o /tmp/uring-file bench/uring-file.c -lpthread
 *
 * and run as `uring-file FILE MODE [QD|THREADS] [COUNT]` with MODE one of
 * `pwrite`, `threads`, `uring`.  FILE must exist (its size is the range
 * written); the page cache is dropped for it and it is read back first, as
 * `bench/run --variant file --file-cache warm` leaves the image.  Prints
 * writes per second and CPU time per write of the whole process (io_uring's
 * io-wq workers are threads of it), and how many io-wq workers ran.
 * io_uring through raw system calls: no liburing here.
 */
#define _GNU_SOURCE
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <linux/io_uring.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#define BS 4096

static int fd;
static uint64_t nblocks;
static char buf[BS] __attribute__((aligned(4096)));

static double
now(void)
{
  struct timespec t;

  clock_gettime(CLOCK_MONOTONIC, &t);
  return t.tv_sec + t.tv_nsec / 1e9;
}

static double
cpu(void)
{
  struct rusage r;

  getrusage(RUSAGE_SELF, &r);
  return r.ru_utime.tv_sec + r.ru_utime.tv_usec / 1e6 +
         r.ru_stime.tv_sec + r.ru_stime.tv_usec / 1e6;
}

static uint64_t
rnd(uint64_t *s)
{
  *s ^= *s << 13;
  *s ^= *s >> 7;
  *s ^= *s << 17;
  return *s;
}

static void
die(const char *what)
{
  perror(what);
  exit(1);
}

/* ---- pwrite, one or several threads -------------------------------------- */

struct worker { long count; uint64_t seed; };

static void *
pwrite_worker(void *arg)
{
  struct worker *w = arg;
  long i;

  for (i = 0; i < w->count; i++)
    if (pwrite(fd, buf, BS, (off_t)(rnd(&w->seed) % nblocks) * BS) != BS)
      die("pwrite");
  return NULL;
}

static void
run_threads(int n, long count)
{
  pthread_t t[64];
  struct worker w[64];
  int i;

  for (i = 0; i < n; i++) {
    w[i].count = count / n;
    w[i].seed = 0x9e3779b97f4a7c15ull * (uint64_t)(i + 1);
    if (pthread_create(&t[i], NULL, pwrite_worker, &w[i]))
      die("pthread_create");
  }
  for (i = 0; i < n; i++)
    pthread_join(t[i], NULL);
}

/* ---- io_uring -------------------------------------------------------------- */

struct ring {
  int fd;
  unsigned *sq_head, *sq_tail, *sq_mask, *sq_array;
  unsigned *cq_head, *cq_tail, *cq_mask;
  struct io_uring_sqe *sqes;
  struct io_uring_cqe *cqes;
};

static void
ring_init(struct ring *r, unsigned entries)
{
  struct io_uring_params p;
  void *sq, *cq;
  size_t sqsz, cqsz;

  memset(&p, 0, sizeof p);
  r->fd = (int)syscall(__NR_io_uring_setup, entries, &p);
  if (r->fd < 0)
    die("io_uring_setup");
  sqsz = p.sq_off.array + p.sq_entries * sizeof(unsigned);
  cqsz = p.cq_off.cqes + p.cq_entries * sizeof(struct io_uring_cqe);
  sq = mmap(NULL, sqsz, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_POPULATE,
            r->fd, IORING_OFF_SQ_RING);
  cq = mmap(NULL, cqsz, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_POPULATE,
            r->fd, IORING_OFF_CQ_RING);
  r->sqes = mmap(NULL, p.sq_entries * sizeof(struct io_uring_sqe),
                 PROT_READ | PROT_WRITE, MAP_SHARED | MAP_POPULATE, r->fd,
                 IORING_OFF_SQES);
  if (sq == MAP_FAILED || cq == MAP_FAILED || r->sqes == MAP_FAILED)
    die("mmap ring");
  r->sq_head = (unsigned *)((char *)sq + p.sq_off.head);
  r->sq_tail = (unsigned *)((char *)sq + p.sq_off.tail);
  r->sq_mask = (unsigned *)((char *)sq + p.sq_off.ring_mask);
  r->sq_array = (unsigned *)((char *)sq + p.sq_off.array);
  r->cq_head = (unsigned *)((char *)cq + p.cq_off.head);
  r->cq_tail = (unsigned *)((char *)cq + p.cq_off.tail);
  r->cq_mask = (unsigned *)((char *)cq + p.cq_off.ring_mask);
  r->cqes = (struct io_uring_cqe *)((char *)cq + p.cq_off.cqes);
}

static void
run_uring(unsigned qd, long count)
{
  struct ring r;
  uint64_t seed = 0x9e3779b97f4a7c15ull;
  long submitted = 0, done = 0;
  unsigned inflight = 0;

  ring_init(&r, qd);
  while (done < count) {
    unsigned tail = *r.sq_tail, n = 0;
    int ret;

    while (inflight + n < qd && submitted + n < count) {
      unsigned i = (tail + n) & *r.sq_mask;
      struct io_uring_sqe *e = &r.sqes[i];

      memset(e, 0, sizeof *e);
      e->opcode = IORING_OP_WRITE;
      e->fd = fd;
      e->addr = (uint64_t)(uintptr_t)buf;
      e->len = BS;
      e->off = (rnd(&seed) % nblocks) * BS;
      r.sq_array[i] = i;
      n++;
    }
    __atomic_store_n(r.sq_tail, tail + n, __ATOMIC_RELEASE);
    ret = (int)syscall(__NR_io_uring_enter, r.fd, n, 1,
                       IORING_ENTER_GETEVENTS, NULL, 0);
    if (ret < 0 && errno != EINTR)
      die("io_uring_enter");
    submitted += n;
    inflight += n;
    for (;;) {
      unsigned head = *r.cq_head;

      if (head == __atomic_load_n(r.cq_tail, __ATOMIC_ACQUIRE))
        break;
      if (r.cqes[head & *r.cq_mask].res != BS) {
        errno = -r.cqes[head & *r.cq_mask].res;
        die("write completion");
      }
      __atomic_store_n(r.cq_head, head + 1, __ATOMIC_RELEASE);
      inflight--;
      done++;
    }
  }
}

/* io-wq workers of this process that ran (iou-wrk-*). */
static int
count_io_workers(void)
{
  DIR *d = opendir("/proc/self/task");
  struct dirent *e;
  int n = 0;

  if (d == NULL)
    return -1;
  while ((e = readdir(d)) != NULL) {
    char path[300], name[32] = "";
    FILE *f;

    if (e->d_name[0] == '.')
      continue;
    snprintf(path, sizeof path, "/proc/self/task/%s/comm", e->d_name);
    if ((f = fopen(path, "r")) != NULL) {
      if (fgets(name, sizeof name, f) && strncmp(name, "iou-wrk", 7) == 0)
        n++;
      fclose(f);
    }
  }
  closedir(d);
  return n;
}

int
main(int argc, char **argv)
{
  struct stat st;
  const char *mode;
  long count, arg;
  double t0, c0, t1, c1;
  char rbuf[1 << 20];
  off_t o;
  int workers;

  if (argc < 3) {
    fprintf(stderr, "usage: %s FILE pwrite|threads|uring [QD|THREADS] "
            "[COUNT]\n", argv[0]);
    return 2;
  }
  mode = argv[2];
  arg = argc > 3 ? atol(argv[3]) : 32;
  count = argc > 4 ? atol(argv[4]) : 20000;
  fd = open(argv[1], O_RDWR);
  if (fd == -1 || fstat(fd, &st) == -1)
    die(argv[1]);
  nblocks = (uint64_t)st.st_size / BS;
  memset(buf, 0xa5, sizeof buf);
  /* as --file-cache warm: out of the cache, then read back */
  fdatasync(fd);
  posix_fadvise(fd, 0, 0, POSIX_FADV_DONTNEED);
  for (o = 0; pread(fd, rbuf, sizeof rbuf, o) > 0; o += sizeof rbuf)
    ;
  t0 = now();
  c0 = cpu();
  if (strcmp(mode, "pwrite") == 0)
    run_threads(1, count);
  else if (strcmp(mode, "threads") == 0)
    run_threads((int)(arg < 1 ? 1 : arg > 64 ? 64 : arg), count);
  else if (strcmp(mode, "uring") == 0)
    run_uring((unsigned)(arg < 1 ? 1 : arg), count);
  else {
    fprintf(stderr, "unknown mode %s\n", mode);
    return 2;
  }
  workers = count_io_workers();
  t1 = now();
  c1 = cpu();
  printf("%-8s %3ld  %8.0f writes/s  %6.1f us CPU per write  io-wq workers %d\n",
         mode, strcmp(mode, "pwrite") == 0 ? 1 : arg, count / (t1 - t0),
         (c1 - c0) * 1e6 / count, workers);
  return 0;
}
