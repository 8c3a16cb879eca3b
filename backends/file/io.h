/* nbdstack backend file: one open file, and the page-cache side of its
 * reads and writes (io.c).
 *
 * struct file_state is shared by file.c (which opens it and answers
 * every other method) and io.c, which moves the bytes of pread and
 * pwrite: through an aligned bounce buffer under direct=true when the
 * engine's buffer is not aligned, and out of the page cache afterwards
 * under cache=none.  io.c never opens, sizes or closes a file.
 */
#ifndef NBDSTACK_FILE_IO_H
#define NBDSTACK_FILE_IO_H

#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>

/* cache=none: writes whose eviction waits, the oldest first.  A write
 * starts its writeback at once and is dropped from the page cache only
 * FILE_EVICT_WINDOW writes later, so the disk works while the client
 * sends more (nbdkit's file plugin keeps the same kind of window). */
#define FILE_EVICT_WINDOW 8

/* One open file: the shared one of file=, or one per connection of dir=. */
struct file_state {
  int fd;
  int is_block;
  int rotational;
  uint32_t sector;              /* block device: logical sector size */
  uint32_t align;               /* direct=true: offsets, lengths, buffers */
  int evict;                    /* cache=none */
  int readonly;                 /* opened O_RDONLY, for whatever reason */
  int can_splice;               /* splice(2) into the file works */
  /* Set when the kernel said EOPNOTSUPP, so it is not asked again. */
  atomic_int no_punch, no_zero_range, no_alloc, no_discard, no_seek;
  /* cache=none: ranges written, waiting to be dropped (under lock). */
  pthread_mutex_t lock;
  unsigned nwin, headwin;
  struct { uint64_t offset, count; } win[FILE_EVICT_WINDOW];
};

/* pread/pwrite of the whole range: 0 or a negative errno, as the
 * backend's own pread and pwrite. */
int file_io_read(const struct file_state *st, void *buf, uint32_t count,
                 uint64_t offset);
int file_io_write(struct file_state *st, const void *buf, uint32_t count,
                  uint64_t offset);
/* cache=none, at flush and at close: drops whatever is still in the
 * window (any thread: the window is taken under the lock). */
/* A write whose payload is still in the client's socket, spliced
 * (pwrite_from, when src->splice and can_splice). */
int file_io_write_from(struct file_state *st, struct nbd_source *src,
                       uint32_t count, uint64_t offset);
void file_io_probe_splice(struct file_state *st);
void file_io_evict_all(struct file_state *st);

#endif
