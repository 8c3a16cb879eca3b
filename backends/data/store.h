/* nbdstack backend data: a small sparse byte store (store.c).
 *
 * Bytes in 32 KiB pages kept in an array sorted by page number, allocated
 * on the first write of a nonzero byte; a missing page reads as zeros.
 * One rwlock: the disks this serves are small, written at startup by the
 * parser (parse.c) and now and then by clients.  The store knows nothing
 * of NBD; ranges are checked by the caller against 2^63-1.  0 or -errno.
 */
#ifndef NBDSTACK_DATA_STORE_H
#define NBDSTACK_DATA_STORE_H

#include <stddef.h>
#include <stdint.h>

struct data_store;

/* An empty store; NULL when out of memory. */
struct data_store *data_store_new(void);
void data_store_free(struct data_store *s);       /* s may be NULL */

/* Copies [offset, offset+count) into buf; holes read as zeros. */
int data_store_read(struct data_store *s, void *buf, size_t count,
                    uint64_t offset);
/* Copies buf to offset.  Zeros landing on a hole leave it a hole. */
int data_store_write(struct data_store *s, const void *buf, size_t count,
                     uint64_t offset);
/* Makes [offset, offset+count) read as zeros, freeing whole pages. */
int data_store_zero(struct data_store *s, uint64_t count, uint64_t offset);
/* Whether the page at offset (< end) is allocated; *stop is where that
 * answer ends, at most end. */
int data_store_extent(struct data_store *s, uint64_t offset, uint64_t end,
                      uint64_t *stop);
/* Copies [0, len) of src, zeros included, to dst at offset: the range of
 * dst is zeroed first, then src's pages are written. */
int data_store_blit(struct data_store *dst, struct data_store *src,
                    uint64_t len, uint64_t offset);

#endif
