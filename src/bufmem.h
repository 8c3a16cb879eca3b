/* nbdstack buffer memory (bufmem.c): one budget for the request and
 * reply buffers of every connection. */
#ifndef NBDSTACK_BUFMEM_H
#define NBDSTACK_BUFMEM_H

#include <stddef.h>
#include <stdint.h>

/* The budget in bytes (max-buffer-memory); 0 = unbounded (unit tests). */
void bufmem_set_limit(uint64_t limit);
/* Charges n bytes for a connection that already holds inuse bytes in
 * buffers; 1 if that fits now, 0 if not (nothing charged). */
int bufmem_try(size_t n, uint64_t inuse);
/* The same, waiting until it fits; -1 (nothing charged) as soon as
 * cancel(arg) returns non-zero. */
int bufmem_wait(size_t n, uint64_t inuse, int (*cancel)(void *), void *arg);
/* Gives back n bytes charged (a buffer freed). */
void bufmem_uncharge(size_t n);
/* A buffer of n bytes kept for reuse instead of freed: 1 if the budget
 * for kept buffers has room (then it counts there), 0 to free it. */
int bufmem_keep(size_t n);
/* A kept buffer taken back into use. */
void bufmem_unkeep(size_t n);
/* Bytes charged now, and kept among them (tests, logs). */
uint64_t bufmem_charged(void);
uint64_t bufmem_kept(void);

#endif
