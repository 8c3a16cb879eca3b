/* nbdstack backend memory: the page store (store.c).
 *
 * A sparse array of bytes, allocated on first write in pages and shared by
 * every thread without a global lock: unallocated bytes read as zeros.
 * Every call takes a range the caller has already checked against the
 * size given to memory_store_open; the store knows nothing of NBD
 * commands, flags or extent types: memory.c maps them onto these calls.
 * The data path returns 0 or a negative errno.
 */
#ifndef NBDSTACK_MEMORY_STORE_H
#define NBDSTACK_MEMORY_STORE_H

#include <stdint.h>

struct memory_store;
struct nbd_source;

/* A store of size bytes, nothing allocated yet; NULL when out of memory. */
struct memory_store *memory_store_open(uint64_t size);
/* Frees every page and node (s may be NULL); nothing may use the store
 * any more. */
void memory_store_close(struct memory_store *s);

/* Copies [offset, offset+count) into buf; holes read as zeros. */
int memory_store_read(struct memory_store *s, void *buf, uint32_t count,
                      uint64_t offset);
/* The same bytes passed to dst (layer.h's nbd_sink) straight from the
 * pages, up to 32 pages a call under their read locks;
 * 0 or -EIO. */
struct nbd_sink;
int memory_store_read_to(struct memory_store *s, struct nbd_sink *dst,
                         uint32_t count, uint64_t offset);
/* Copies buf into [offset, offset+count).  Zeros landing on a hole leave
 * it a hole.  -ENOMEM may leave part of the range written. */
int memory_store_write(struct memory_store *s, const void *buf,
                       uint32_t count, uint64_t offset);
/* As memory_store_write, with the count bytes still to be read from src
 * (all of them, in order).  Nothing changes unless the whole payload
 * arrives. */
int memory_store_write_from(struct memory_store *s, struct nbd_source *src,
                            uint32_t count, uint64_t offset);
/* Makes [offset, offset+count) read as zeros: frees the pages it covers
 * whole, zeroes the parts of the others.  With alloc, every page of the
 * range is allocated (zeroed) instead, so that later writes to it cannot
 * fail for lack of memory. */
int memory_store_discard(struct memory_store *s, uint64_t count,
                         uint64_t offset, int alloc);
/* Whether the bytes at offset (< end) are allocated; *stop is where that
 * answer ends, at most end: the next page, or past a whole missing
 * subtree.  A snapshot: it takes no lock. */
int memory_store_extent(struct memory_store *s, uint64_t offset,
                        uint64_t end, uint64_t *stop);

#endif
