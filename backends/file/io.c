/* nbdstack backend file: the bytes of pread and pwrite, and what
 * direct=true and cache=none ask of them.
 *
 * direct=true: O_DIRECT wants the buffer aligned as well as the offset
 * and length; the engine enforces those two (block_size), and a buffer
 * that is not aligned goes through an aligned bounce buffer.
 * cache=none (nbdkit's key): a read drops its range from the page cache
 * at once; a write starts its writeback at once and is dropped
 * FILE_EVICT_WINDOW writes later, or at the next flush or close
 * (file_io_evict_all).
 *
 * It does not open, size or close files, and knows nothing of the other
 * methods (file.c).  Eviction is advice: its failures are never the
 * request's.
 */
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>

#include "layer.h"
#include "io.h"

/* ---- cache=none ------------------------------------------------------- */

/* Drops a range from the page cache once it is on disk: DONTNEED alone
 * skips dirty pages, so wait for their writeback first. */
static void
io_drop(const struct file_state *st, uint64_t offset, uint64_t count)
{
  sync_file_range(st->fd, (off_t)offset, (off_t)count,
                  SYNC_FILE_RANGE_WAIT_BEFORE | SYNC_FILE_RANGE_WRITE |
                  SYNC_FILE_RANGE_WAIT_AFTER);
  posix_fadvise(st->fd, (off_t)offset, (off_t)count, POSIX_FADV_DONTNEED);
}

/* After a write: start its writeback now, drop it FILE_EVICT_WINDOW
 * writes later (and the one it pushes out of the window now).  Eviction
 * is advice: its failures are not the write's. */
static void
io_evict_write(struct file_state *st, uint64_t offset, uint64_t count)
{
  uint64_t old_off = 0, old_count = 0;
  unsigned slot;

  sync_file_range(st->fd, (off_t)offset, (off_t)count,
                  SYNC_FILE_RANGE_WRITE);
  pthread_mutex_lock(&st->lock);
  slot = st->headwin;
  if (st->nwin == FILE_EVICT_WINDOW) {
    old_off = st->win[slot].offset;
    old_count = st->win[slot].count;
  }
  else
    st->nwin++;
  st->win[slot].offset = offset;
  st->win[slot].count = count;
  st->headwin = (slot + 1) % FILE_EVICT_WINDOW;
  pthread_mutex_unlock(&st->lock);
  if (old_count)
    io_drop(st, old_off, old_count);
}

/* At flush and close: drop whatever is still in the window.  Without it
 * the last FILE_EVICT_WINDOW writes of a file= export (one state shared
 * by every connection) stayed in the page cache until the server
 * stopped.  The window is emptied under the lock and dropped outside it,
 * as io_evict_write does. */
void
file_io_evict_all(struct file_state *st)
{
  struct { uint64_t offset, count; } w[FILE_EVICT_WINDOW];
  unsigned i, n;

  pthread_mutex_lock(&st->lock);
  n = st->nwin;
  for (i = 0; i < n; i++) {
    w[i].offset = st->win[i].offset;
    w[i].count = st->win[i].count;
  }
  st->nwin = st->headwin = 0;
  pthread_mutex_unlock(&st->lock);
  for (i = 0; i < n; i++)
    io_drop(st, w[i].offset, w[i].count);
}

/* ---- direct=true ----------------------------------------------------- */

/* O_DIRECT wants the buffer aligned too; the engine enforces the offset
 * and length (block_size), a buffer that is not aligned goes through an
 * aligned bounce buffer.  NULL: none needed; (void *)-1: out of memory. */
static void *
io_bounce(const struct file_state *st, const void *buf, uint32_t count)
{
  void *b;

  if (st->align == 0 || (uintptr_t)buf % st->align == 0)
    return NULL;
  if (posix_memalign(&b, st->align, count ? count : st->align) != 0)
    return (void *)-1;
  return b;
}

/* ---- pread, pwrite --------------------------------------------------- */

int
file_io_read(const struct file_state *st, void *buf, uint32_t count,
             uint64_t offset)
{
  void *b = io_bounce(st, buf, count);
  int r;

  if (b == (void *)-1)
    return -ENOMEM;
  r = nbd_pread_full(st->fd, b ? b : buf, count, offset);
  if (b) {
    if (r == 0)
      memcpy(buf, b, count);
    free(b);
  }
  if (st->evict)
    posix_fadvise(st->fd, (off_t)offset, (off_t)count, POSIX_FADV_DONTNEED);
  return r;
}

int
file_io_write(struct file_state *st, const void *buf, uint32_t count,
              uint64_t offset)
{
  void *b = io_bounce(st, buf, count);
  int r;

  if (b == (void *)-1)
    return -ENOMEM;
  if (b)
    memcpy(b, buf, count);
  r = nbd_pwrite_full(st->fd, b ? b : buf, count, offset);
  free(b);
  if (r == 0 && st->evict)
    io_evict_write(st, offset, count);
  return r;
}

/* ---- payloads from the socket ------------------------------------------ */

/* Whether large writes are spliced into the file: not into O_DIRECT
 * files (pipe pages need not be aligned), nor where the filesystem
 * cannot. */
void
file_io_probe_splice(struct file_state *st)
{
  st->can_splice = st->align == 0 && nbd_can_splice_at(st->fd);
}

/* A large write, from the client's socket to the file with splice(2)
 * (src->splice and st->can_splice): the kernel copies the payload once,
 * into the page cache, where reading it into a buffer and writing that
 * copies it twice. */
int
file_io_write_from(struct file_state *st, struct nbd_source *src,
                   uint32_t count, uint64_t offset)
{
  int r = nbd_source_splice_at(src, st->fd, count, offset);

  if (r == 0 && st->evict)
    io_evict_write(st, offset, count);
  return r;
}
