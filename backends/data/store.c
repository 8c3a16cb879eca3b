/* nbdstack backend data: the sparse byte store (see store.h).
 *
 * Pages live in one array sorted by page number and are found by binary
 * search; appending in order (what the parser and a sequential copy do)
 * costs no move.  This is not the memory backend's store: that one is
 * built for big disks and many threads, and is compiled only when the
 * memory backend is selected.
 */
#include <errno.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#include "layer.h"
#include "store.h"

#define DATA_PAGE ((uint64_t)32768)

struct data_page {
  uint64_t index;                 /* offset / DATA_PAGE */
  unsigned char *bytes;           /* DATA_PAGE bytes */
};

struct data_store {
  pthread_rwlock_t lock;
  struct data_page *v;
  size_t n, cap;
};

struct data_store *
data_store_new(void)
{
  struct data_store *s = calloc(1, sizeof *s);

  if (s == NULL)
    return NULL;
  pthread_rwlock_init(&s->lock, NULL);
  return s;
}

void
data_store_free(struct data_store *s)
{
  size_t i;

  if (s == NULL)
    return;
  for (i = 0; i < s->n; i++)
    free(s->v[i].bytes);
  free(s->v);
  pthread_rwlock_destroy(&s->lock);
  free(s);
}

/* Position of the first page whose index is >= index. */
static size_t
data_store_find(const struct data_store *s, uint64_t index)
{
  size_t lo = 0, hi = s->n;

  while (lo < hi) {
    size_t mid = lo + (hi - lo) / 2;
    if (s->v[mid].index < index)
      lo = mid + 1;
    else
      hi = mid;
  }
  return lo;
}

static unsigned char *
data_store_lookup(const struct data_store *s, uint64_t index)
{
  size_t i = data_store_find(s, index);
  return i < s->n && s->v[i].index == index ? s->v[i].bytes : NULL;
}

/* The page of index, allocated (zeroed) when missing; NULL = ENOMEM. */
static unsigned char *
data_store_alloc(struct data_store *s, uint64_t index)
{
  size_t i = data_store_find(s, index);
  unsigned char *p;

  if (i < s->n && s->v[i].index == index)
    return s->v[i].bytes;
  if (s->n == s->cap) {
    size_t cap = s->cap ? s->cap * 2 : 16;
    struct data_page *v = realloc(s->v, cap * sizeof *v);
    if (v == NULL)
      return NULL;
    s->v = v;
    s->cap = cap;
  }
  if ((p = calloc(1, DATA_PAGE)) == NULL)
    return NULL;
  memmove(&s->v[i + 1], &s->v[i], (s->n - i) * sizeof *s->v);
  s->v[i].index = index;
  s->v[i].bytes = p;
  s->n++;
  return p;
}

int
data_store_read(struct data_store *s, void *buf, size_t count,
                uint64_t offset)
{
  unsigned char *b = buf;

  pthread_rwlock_rdlock(&s->lock);
  while (count > 0) {
    uint64_t in = offset % DATA_PAGE;
    size_t n = DATA_PAGE - in < count ? (size_t)(DATA_PAGE - in) : count;
    const unsigned char *p = data_store_lookup(s, offset / DATA_PAGE);

    if (p)
      memcpy(b, p + in, n);
    else
      memset(b, 0, n);
    b += n;
    offset += n;
    count -= n;
  }
  pthread_rwlock_unlock(&s->lock);
  return 0;
}

/* With the write lock held. */
static int
data_store_write_locked(struct data_store *s, const unsigned char *b,
                        size_t count, uint64_t offset)
{
  while (count > 0) {
    uint64_t in = offset % DATA_PAGE;
    size_t n = DATA_PAGE - in < count ? (size_t)(DATA_PAGE - in) : count;
    unsigned char *p = data_store_lookup(s, offset / DATA_PAGE);

    if (p == NULL && !nbd_is_zero(b, n) &&
        (p = data_store_alloc(s, offset / DATA_PAGE)) == NULL)
      return -ENOMEM;
    if (p)
      memcpy(p + in, b, n);
    b += n;
    offset += n;
    count -= n;
  }
  return 0;
}

int
data_store_write(struct data_store *s, const void *buf, size_t count,
                 uint64_t offset)
{
  int r;

  pthread_rwlock_wrlock(&s->lock);
  r = data_store_write_locked(s, buf, count, offset);
  pthread_rwlock_unlock(&s->lock);
  return r;
}

/* With the write lock held: whole pages are freed (one memmove for the
 * run of them), the ends of partial ones zeroed. */
static void
data_store_zero_locked(struct data_store *s, uint64_t count, uint64_t offset)
{
  uint64_t end = offset + count;
  uint64_t first = (offset + DATA_PAGE - 1) / DATA_PAGE, last = end / DATA_PAGE;
  unsigned char *p;
  size_t i, j, k;

  if (count == 0)
    return;
  if (offset % DATA_PAGE &&
      (p = data_store_lookup(s, offset / DATA_PAGE)) != NULL) {
    uint64_t in = offset % DATA_PAGE;
    uint64_t stop = end - offset / DATA_PAGE * DATA_PAGE;
    memset(p + in, 0, (stop < DATA_PAGE ? stop : DATA_PAGE) - in);
  }
  if (end % DATA_PAGE && end / DATA_PAGE >= first &&
      (p = data_store_lookup(s, end / DATA_PAGE)) != NULL)
    memset(p, 0, end % DATA_PAGE);
  if (first >= last)
    return;
  i = data_store_find(s, first);
  j = data_store_find(s, last);
  if (i == j)
    return;                     /* no page there (s->v may be NULL) */
  for (k = i; k < j; k++)
    free(s->v[k].bytes);
  memmove(&s->v[i], &s->v[j], (s->n - j) * sizeof *s->v);
  s->n -= j - i;
}

int
data_store_zero(struct data_store *s, uint64_t count, uint64_t offset)
{
  pthread_rwlock_wrlock(&s->lock);
  data_store_zero_locked(s, count, offset);
  pthread_rwlock_unlock(&s->lock);
  return 0;
}

int
data_store_extent(struct data_store *s, uint64_t offset, uint64_t end,
                  uint64_t *stop)
{
  uint64_t index = offset / DATA_PAGE;
  size_t i;
  int allocated;

  pthread_rwlock_rdlock(&s->lock);
  i = data_store_find(s, index);
  allocated = i < s->n && s->v[i].index == index;
  if (allocated)
    *stop = (index + 1) * DATA_PAGE;
  else                          /* up to the next allocated page */
    *stop = i < s->n ? s->v[i].index * DATA_PAGE : end;
  pthread_rwlock_unlock(&s->lock);
  if (*stop > end)
    *stop = end;
  return allocated;
}

/* dst and src are different stores (the parser's group and its parent). */
int
data_store_blit(struct data_store *dst, struct data_store *src, uint64_t len,
                uint64_t offset)
{
  size_t i;
  int r = 0;

  pthread_rwlock_rdlock(&src->lock);
  pthread_rwlock_wrlock(&dst->lock);
  data_store_zero_locked(dst, len, offset);
  for (i = 0; i < src->n && r == 0; i++) {
    uint64_t at = src->v[i].index * DATA_PAGE;
    if (at >= len)
      break;
    r = data_store_write_locked(dst, src->v[i].bytes,
                                len - at < DATA_PAGE ? (size_t)(len - at)
                                                     : (size_t)DATA_PAGE,
                                offset + at);
  }
  pthread_rwlock_unlock(&dst->lock);
  pthread_rwlock_unlock(&src->lock);
  return r;
}
