/* nbdstack: small helpers shared by the core and layers. */
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "layer.h"

/* May alias any buffer, so reading bytes as words is defined. */
typedef uint64_t __attribute__((may_alias)) util_word;

int
nbd_is_zero(const void *buf, size_t len)
{
  const unsigned char *p = buf;
  const util_word *w;

  /* Not memcmp(p, p + 16, ...): musl's memcmp goes a byte at a time.  An
   * OR of eight words per step is vectorised by the compiler, and data
   * that is not zero usually exits in the first step. */
  while (len > 0 && ((uintptr_t)p & 7) != 0) {
    if (*p++)
      return 0;
    len--;
  }
  for (w = (const util_word *)p; len >= 64; w += 8, len -= 64)
    if (w[0] | w[1] | w[2] | w[3] | w[4] | w[5] | w[6] | w[7])
      return 0;
  for (p = (const unsigned char *)w; len > 0; len--)
    if (*p++)
      return 0;
  return 1;
}

static uint64_t
pieces_field(const struct nbd_pieces *p, size_t i, size_t at)
{
  uint64_t x;

  memcpy(&x, (const char *)p->v + i * p->stride + at, sizeof x);
  return x;
}

/* The first piece that holds offset (< p->size): pieces of length 0 hold
 * nothing and are passed over (they share a start with the next). */
static size_t
pieces_find(const struct nbd_pieces *p, uint64_t offset)
{
  size_t lo = 0, hi = p->n;

  while (hi - lo > 1) {
    size_t mid = lo + (hi - lo) / 2;
    if (pieces_field(p, mid, p->start_at) <= offset)
      lo = mid;
    else
      hi = mid;
  }
  while (offset - pieces_field(p, lo, p->start_at) >=
         pieces_field(p, lo, p->len_at))
    lo++;
  return lo;
}

/* Why prefetching (cache requests from a filter's own thread, as readahead
 * and scan send) cannot work below self, or NULL. */
const char *
nbd_prefetch_unable(const struct nbd_ctx *self, struct nbd_ctx *next)
{
  const struct nbd_layer *l;

  if (next_can_cache(next) == NBD_CACHE_NONE)
    return "the layer below cannot cache (put the cache filter below)";
  for (l = self->layer->below; l; l = l->below)
    if (l->thread_model != NBD_PARALLEL)
      return "a layer below does not take requests in parallel";
  return NULL;
}

int
nbd_pieces_each(const struct nbd_pieces *p, uint64_t count, uint64_t offset,
                nbd_piece_fn fn, void *ctx, void *arg)
{
  uint64_t done = 0;
  size_t i;
  int r;

  if (offset > p->size || count > p->size - offset)
    return -EINVAL;
  if (count == 0)
    return 0;
  i = pieces_find(p, offset);
  while (done < count) {
    uint64_t plen = pieces_field(p, i, p->len_at);
    uint64_t poff = offset + done - pieces_field(p, i, p->start_at);
    uint64_t len = plen - poff;

    if (plen == 0) {
      i++;
      continue;
    }
    if (len > count - done)
      len = count - done;
    if ((r = fn(ctx, i, poff, len, done, arg)) < 0)
      return r;
    done += len;
    i++;
  }
  return 0;
}

int
nbd_pread_full(int fd, void *buf, size_t count, uint64_t offset)
{
  char *b = buf;
  ssize_t r;

  while (count > 0) {
    r = pread(fd, b, count, (off_t)offset);
    if (r == -1) {
      if (errno == EINTR)
        continue;
      return -errno;
    }
    if (r == 0)
      return -EIO;              /* end of file: it shrank under us */
    b += r;
    count -= (size_t)r;
    offset += (uint64_t)r;
  }
  return 0;
}

/* At most this much per pwrite.  Linux sizes a page-cache folio by the
 * write that creates it, and on a VM whose free memory the host reclaims
 * filling fresh large folios is many times slower than filling small
 * ones.  Overwriting cached pages is as fast either way, and the extra
 * syscalls cost little next to a 1 MiB write (the figures are in the
 * commit that set this). */
#define UTIL_PWRITE_CHUNK ((size_t)256 << 10)

int
nbd_open_maybe_readonly(int dirfd, const char *path, int flags, int *readonly)
{
  int fd = openat(dirfd, path, flags | (*readonly ? O_RDONLY : O_RDWR));
  int first = errno;

  if (fd != -1 || *readonly ||
      (errno != EACCES && errno != EROFS && errno != EPERM))
    return fd;
  if ((fd = openat(dirfd, path, flags | O_RDONLY)) != -1)
    *readonly = 1;
  else if (errno == EACCES)
    errno = first;              /* not readable either: the first answer */
  return fd;
}

int
nbd_pwrite_full(int fd, const void *buf, size_t count, uint64_t offset)
{
  const char *b = buf;
  ssize_t r;

  while (count > 0) {
    r = pwrite(fd, b, count < UTIL_PWRITE_CHUNK ? count : UTIL_PWRITE_CHUNK,
               (off_t)offset);
    if (r == -1) {
      if (errno == EINTR)
        continue;
      return -errno;
    }
    if (r == 0)
      return -EIO;
    b += r;
    count -= (size_t)r;
    offset += (uint64_t)r;
  }
  return 0;
}

/* ---- buffer pools ------------------------------------------------------ */

/* Why keep buffers at all: musl's malloc hands out and takes back large
 * blocks with mmap/munmap, so a 64 KiB bounce buffer per request costs
 * page faults on first touch and, in a threaded process, a TLB shootdown
 * on every free; small random writes through the cache filter spent
 * much of their CPU there. */
void
nbd_bufpool_init(struct nbd_bufpool *p, size_t size)
{
  memset(p, 0, sizeof *p);
  pthread_mutex_init(&p->lock, NULL);
  p->size = size;
  /* Keep up to 4 MiB (at least one buffer), so a pool of 32 MiB blocks
   * does not hold on to hundreds of MiB. */
  p->keep = size == 0 ? 0 : ((size_t)4 << 20) / size;
  if (p->keep < 1)
    p->keep = 1;
  if (p->keep > NBD_BUFPOOL_MAX)
    p->keep = NBD_BUFPOOL_MAX;
}

void
nbd_bufpool_destroy(struct nbd_bufpool *p)
{
  while (p->n > 0)
    free(p->buf[--p->n]);
  pthread_mutex_destroy(&p->lock);
}

void *
nbd_bufpool_get(struct nbd_bufpool *p, size_t len)
{
  void *b = NULL;

  if (len > p->size)
    return malloc(len);
  pthread_mutex_lock(&p->lock);
  if (p->n > 0)
    b = p->buf[--p->n];
  pthread_mutex_unlock(&p->lock);
  return b ? b : malloc(p->size);
}

void
nbd_bufpool_put(struct nbd_bufpool *p, void *buf, size_t len)
{
  if (buf == NULL)
    return;
  if (len <= p->size) {
    pthread_mutex_lock(&p->lock);
    if (p->n < p->keep) {
      p->buf[p->n++] = buf;
      buf = NULL;
    }
    pthread_mutex_unlock(&p->lock);
  }
  free(buf);
}

int
nbd_fallocate(int fd, int mode, uint64_t offset, uint64_t count,
              atomic_int *unsupported)
{
  int r;

  if (atomic_load_explicit(unsupported, memory_order_relaxed))
    return -EOPNOTSUPP;
  do
    r = fallocate(fd, mode, (off_t)offset, (off_t)count);
  while (r == -1 && errno == EINTR);
  if (r == 0)
    return 0;
  if (errno == EOPNOTSUPP || errno == ENOSYS) {
    atomic_store_explicit(unsupported, 1, memory_order_relaxed);
    return -EOPNOTSUPP;
  }
  return -errno;
}
