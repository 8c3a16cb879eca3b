/* nbdstack backend memory: the page store, a sparse array of up to
 * 2^64-1 bytes shared by every thread.
 *
 * Storage is allocated on first write in 32 KiB pages, found through a
 * radix tree of atomic pointers (like page tables): 512-slot nodes, as many
 * levels as the size needs (2 for 1 GiB, 6 for 2^63-1).  Unallocated pages
 * read as zeros and memory_store_extent reports them as unallocated;
 * discard frees the pages it covers whole and zeroes the partial ones, or
 * with alloc provisions zeroed pages.  It knows nothing of NBD commands,
 * flags, extent types or the export's size limit (memory.c maps those),
 * does not check ranges (the engine did) and persists nothing.
 *
 * Why 32 KiB pages: the cost that dominates a fresh disk is the first touch
 * of new memory (page faults), and a 4 KiB write into an unallocated page
 * touches the whole page; 4 KiB random writes to a new disk ran several
 * times faster than with 64 KiB pages (fio), and it is the
 * granularity of nbdkit's sparse array, so holes and memory use compare
 * like for like.  The per-page cost of a large request is one tree walk
 * and one uncontended lock pair (next to nothing in perf beside memcpy),
 * so larger pages would not buy much; smaller ones would grow the tree and
 * the malloc overhead per byte.
 *
 * Concurrency, with no global lock on the data path:
 * - Interior nodes are installed with compare-and-swap and never freed
 *   before memory_store_close, so a tree walk needs no lock at all.
 * - Pages are installed with compare-and-swap (release) once filled, so a
 *   reader never sees a half-initialised page.
 * - The only hazard is a page freed by discard while another thread copies
 *   from or into it.  256 cache-line-padded rwlocks, striped by page index,
 *   guard that: readers and writers of a page hold its stripe's read lock
 *   (so they all run in parallel), freeing a page takes the write lock.
 *   Only requests that free pages ever wait, and only on 1/256 of the disk.
 * - Whole pages written by a client (memory_store_write_from) are read
 *   into fresh pages and then exchanged for the old ones under the write
 *   lock, so the old page is recycled only once no reader copies from it.
 * Concurrent writes to the same bytes may interleave, as on a real disk.
 *
 * Pages come from large mmap'd slabs, not malloc: musl's free() returns
 * each 32 KiB chunk to the kernel with madvise, one syscall per page, which
 * made exiting with a full 1 GiB disk take seconds.  Freed pages are
 * reused before a slab grows.  Up to 32 MiB of them (no more than the
 * disk) stay resident for the next write; the rest go back to the kernel
 * with madvise, one call per run of neighbouring pages, and wait on a
 * second list, reused once the resident ones are gone (they fault back in
 * as zeros).  Runs of at least 1 MiB freed by one discard go back
 * whatever the count, smaller runs are kept if there is room: returning
 * them costs a syscall plus page faults on reuse, for little memory.
 * Without the bound a burst of large writes, each read into fresh pages
 * before it replaces the old ones, kept its peak for good: 60 clients
 * writing 32 MiB at once left 60 x 32 MiB resident on a 64 MiB disk.
 * Closing unmaps a handful of slabs.
 */
#include <errno.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>

#include "layer.h"
#include "store.h"

#define STORE_PAGE_SHIFT  15
#define STORE_PAGE_SIZE   ((uint32_t)1 << STORE_PAGE_SHIFT)
#define STORE_PAGE_MASK   (STORE_PAGE_SIZE - 1)
#define STORE_NODE_SHIFT  9     /* 512 slots: a 4 KiB node */
#define STORE_NODE_SLOTS  (1u << STORE_NODE_SHIFT)
#define STORE_NODE_MASK   (STORE_NODE_SLOTS - 1)
#define STORE_STRIPES     256
#define STORE_SLAB_MAX    ((size_t)64 << 20)
#define STORE_BATCH       256   /* pages released per madvise pass */
#define STORE_RELEASE_RUN 32    /* pages: returned to the kernel from 1 MiB */
/* Free pages kept resident, in pages: 32 MiB, so that the largest request
 * (32 MiB, our maximum block size) or 32 connections writing 1 MiB each
 * run on pages that are already there, and a steady stream of writes,
 * which frees about as much as it allocates, never makes a syscall. */
#define STORE_KEEP_FREE   1024
#define STORE_PULL_PAGES  64    /* whole pages read per recvmsg: 2 MiB */
#define STORE_PUSH_PAGES  32    /* pages passed per sink call: 1 MiB (their
                                   locks held at once; ThreadSanitizer
                                   follows at most 64 per thread) */

/* What a missing page reads as, for memory_store_read_to. */
static unsigned char store_zeros[STORE_PAGE_SIZE];

/* Slots hold child nodes, or pages in the bottom (level 0) nodes. */
struct store_node {
  _Atomic(void *) slot[STORE_NODE_SLOTS];
};

/* One lock per cache line, so stripes used by different threads do not
 * bounce the same line between CPUs. */
struct store_stripe {
  pthread_rwlock_t lock;
} __attribute__((aligned(64)));

struct store_slab {
  struct store_slab *next;
  unsigned char *base;
  size_t size, used;
};

struct memory_store {
  struct store_stripe stripe[STORE_STRIPES];
  struct store_node *root;
  unsigned levels;              /* 1: the root holds pages */
  /* Page allocator: only first writes and frees take this lock. */
  pthread_mutex_t alloc_lock;
  struct store_slab *slabs;
  size_t slab_size;
  void **freelist;              /* free resident pages, at most keep */
  size_t nfree, keep;
  void **gonelist;              /* free pages given back to the kernel */
  size_t ngone, capgone;
};

/* Pages freed by one discard, released together. */
struct store_batch {
  void *v[STORE_BATCH];
  size_t n;
};

/* ---- page allocator ------------------------------------------------------ */

/* A free page, resident ones first, then ones given back to the kernel,
 * else a new one from the newest slab; NULL when out of memory.  The
 * caller holds alloc_lock. */
static void *
store_page_take(struct memory_store *s)
{
  struct store_slab *sl = s->slabs;
  void *p;

  if (s->nfree > 0)
    return s->freelist[--s->nfree];
  if (s->ngone > 0)
    return s->gonelist[--s->ngone];
  if (sl == NULL || sl->used == sl->size) {
    sl = malloc(sizeof *sl);
    if (sl == NULL)
      return NULL;
    sl->base = mmap(NULL, s->slab_size, PROT_READ | PROT_WRITE,
                    MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    if (sl->base == MAP_FAILED) {
      free(sl);
      return NULL;
    }
    /* No MADV_HUGEPAGE: on this kind of VM a fresh 2 MiB page costs far
     * more to fault in and zero than 512 small ones (74% of the server's
     * CPU filling a disk was clear_page_erms under
     * do_huge_pmd_anonymous_page): filling 1 GiB took 2.1-2.8 s of CPU
     * with huge pages, 0.48-0.55 s without (nbdkit 0.76-0.85 s), while
     * 4K qd32 random reads (2.6-3.5 vs 2.7-2.9 us per request) and 1M
     * sequential reads (233-277 vs 221-244 us per request) cost the
     * same.  Three alternated runs each, 2026-12-07. */
    sl->size = s->slab_size;
    sl->used = 0;
    sl->next = s->slabs;
    s->slabs = sl;
  }
  p = sl->base + sl->used;
  sl->used += STORE_PAGE_SIZE;
  return p;
}

/* Fills v with n pages under one lock (a large write's pages come out of
 * a slab as one run); returns how many it got, fewer when out of memory. */
static size_t
store_pages_alloc(struct memory_store *s, void **v, size_t n)
{
  size_t i;

  if (n == 0)
    return 0;                   /* a write of no whole page: no lock */
  pthread_mutex_lock(&s->alloc_lock);
  for (i = 0; i < n && (v[i] = store_page_take(s)) != NULL; i++)
    ;
  pthread_mutex_unlock(&s->alloc_lock);
  return i;
}

static void *
store_page_alloc(struct memory_store *s)
{
  void *p;

  return store_pages_alloc(s, &p, 1) ? p : NULL;
}

#ifndef MADV_POPULATE_WRITE
#define MADV_POPULATE_WRITE 23  /* Linux 5.14; musl's header may lack it */
#endif

/* 0 until the kernel refused MADV_POPULATE_WRITE (before Linux 5.14). */
static atomic_int store_no_populate;

/* Faults in pages about to be filled from the socket, one madvise per
 * run of neighbours: filling a fresh disk, the first touch of each
 * 4 KiB page inside recvmsg was half the server's CPU in perf (page
 * fault entry, page table lock, memcg charge, clearing), and one call
 * for a run saves the fault entry of every page.  Pages already there
 * (recycled ones) cost a page table walk.  Advice: a failure only means
 * the pages fault in as before. */
static void
store_populate(void **v, size_t n)
{
  size_t i, start;

  if (atomic_load_explicit(&store_no_populate, memory_order_relaxed))
    return;
  for (start = 0, i = 1; i <= n; i++) {
    if (i < n && (char *)v[i] == (char *)v[i - 1] + STORE_PAGE_SIZE)
      continue;
    if (madvise(v[start], (i - start) * STORE_PAGE_SIZE,
                MADV_POPULATE_WRITE) == -1 && errno == EINVAL) {
      atomic_store_explicit(&store_no_populate, 1, memory_order_relaxed);
      return;
    }
    start = i;
  }
}

/* Puts pages already given back to the kernel on the second list.  If the
 * list cannot grow they stay owned by nobody until cleanup unmaps their
 * slab, which costs address space but no memory. */
static void
store_gone_put(struct memory_store *s, void **pages, size_t n)
{
  pthread_mutex_lock(&s->alloc_lock);
  if (s->ngone + n > s->capgone) {
    size_t cap = (s->ngone + n) * 2;
    void **v = realloc(s->gonelist, cap * sizeof *v);
    if (v == NULL) {
      pthread_mutex_unlock(&s->alloc_lock);
      return;
    }
    s->gonelist = v;
    s->capgone = cap;
  }
  memcpy(s->gonelist + s->ngone, pages, n * sizeof *pages);
  s->ngone += n;
  pthread_mutex_unlock(&s->alloc_lock);
}

static int
store_ptr_cmp(const void *a, const void *b)
{
  const char *x = *(void *const *)a, *y = *(void *const *)b;
  return x < y ? -1 : x > y;
}

/* Sorts v and gives every run of at least min neighbouring pages back to
 * the kernel, one madvise per run, without the alloc lock (the pages are
 * on no list meanwhile, so nobody can be using them).  The pages kept are
 * moved to the front of v; returns their count. */
static size_t
store_release_runs(struct memory_store *s, void **v, size_t n, size_t min)
{
  size_t i, start, kept = 0;

  if (n == 0)
    return 0;
  qsort(v, n, sizeof v[0], store_ptr_cmp);
  for (start = 0, i = 1; i <= n; i++) {
    if (i < n && (char *)v[i] == (char *)v[i - 1] + STORE_PAGE_SIZE)
      continue;
    if (i - start >= min) {
      (void)madvise(v[start], (i - start) * STORE_PAGE_SIZE, MADV_DONTNEED);
      store_gone_put(s, v + start, i - start);
    } else {
      memmove(v + kept, v + start, (i - start) * sizeof v[0]);
      kept += i - start;
    }
    start = i;
  }
  return kept;
}

/* Recycles pages: they stay resident while the free list has room, the
 * rest go back to the kernel.  The common case (a write that frees what
 * it allocated) is one lock pair and no syscall. */
static void
store_page_put(struct memory_store *s, void **pages, size_t n)
{
  size_t room;

  pthread_mutex_lock(&s->alloc_lock);
  room = s->keep - s->nfree < n ? s->keep - s->nfree : n;
  memcpy(s->freelist + s->nfree, pages, room * sizeof *pages);
  s->nfree += room;
  pthread_mutex_unlock(&s->alloc_lock);
  if (room < n)
    (void)store_release_runs(s, pages + room, n - room, 1);
}

/* Returns the batch's long runs of neighbouring pages to the kernel, then
 * recycles the others. */
static void
store_batch_release(struct memory_store *s, struct store_batch *b)
{
  store_page_put(s, b->v, store_release_runs(s, b->v, b->n,
                                              STORE_RELEASE_RUN));
  b->n = 0;
}

/* ---- the tree and its locks ---------------------------------------------- */

static inline pthread_rwlock_t *
store_lock(struct memory_store *s, uint64_t idx)
{
  /* Neighbouring pages get different stripes; folding in higher bits keeps
   * regions a multiple of 8 MiB apart (fio jobs at fixed offsets) on
   * different stripes. */
  return &s->stripe[(idx ^ (idx >> 8) ^ (idx >> 16)) % STORE_STRIPES].lock;
}

/* Installs a new empty node in *slot unless another thread got there
 * first; returns whichever node is there, or NULL when out of memory. */
static struct store_node *
store_node_install(_Atomic(void *) *slot)
{
  void *expected = NULL;
  struct store_node *n = calloc(1, sizeof *n);

  if (n == NULL)
    return NULL;
  if (atomic_compare_exchange_strong_explicit(slot, &expected, n,
                                              memory_order_acq_rel,
                                              memory_order_acquire))
    return n;
  free(n);
  return expected;
}

/* The bottom node whose slot holds page idx.  Without create, NULL means a
 * node on the path is missing, and *hole_end (if given) is set to the first
 * page index past the missing subtree.  With create, NULL means ENOMEM. */
static struct store_node *
store_leaf(struct memory_store *s, uint64_t idx, int create,
           uint64_t *hole_end)
{
  struct store_node *n = s->root, *child;
  unsigned level;

  for (level = s->levels - 1; level > 0; level--) {
    unsigned shift = level * STORE_NODE_SHIFT;
    _Atomic(void *) *slot = &n->slot[(idx >> shift) & STORE_NODE_MASK];

    child = atomic_load_explicit(slot, memory_order_acquire);
    if (child == NULL) {
      if (!create) {
        if (hole_end)
          *hole_end = ((idx >> shift) + 1) << shift;
        return NULL;
      }
      if ((child = store_node_install(slot)) == NULL)
        return NULL;
    }
    n = child;
  }
  return n;
}

/* Byte offset of page index idx, clipped to end; compares page indexes
 * because the end of a missing top-level subtree may lie past 2^64 bytes. */
static inline uint64_t
store_clip(uint64_t idx, uint64_t end)
{
  return idx > (end - 1) >> STORE_PAGE_SHIFT ? end
                                             : idx << STORE_PAGE_SHIFT;
}

/* ---- page reads, writes, swaps and frees --------------------------------- */

/* memcpy from a page, most likely not in any cache (random reads of a
 * large disk): every line of the source is asked for first, so the
 * memory fetches overlap instead of coming one after another as the copy
 * reaches them (musl's memcpy is rep movsq).  */
static inline void
store_copy_out(unsigned char *dst, const unsigned char *src, uint32_t n)
{
  uint32_t i;

  for (i = 0; i < n; i += 64)
    __builtin_prefetch(src + i, 0, 0);
  memcpy(dst, src, n);
}

static void
store_read_page(struct memory_store *s, struct store_node *leaf,
                uint64_t idx, unsigned char *buf, uint32_t in, uint32_t n)
{
  pthread_rwlock_t *lock = store_lock(s, idx);
  const unsigned char *p;

  pthread_rwlock_rdlock(lock);
  p = atomic_load_explicit(&leaf->slot[idx & STORE_NODE_MASK],
                           memory_order_acquire);
  if (p)
    store_copy_out(buf, p + in, n);
  pthread_rwlock_unlock(lock);
  if (p == NULL)
    memset(buf, 0, n);
}

/* A new page holding src (NULL: zeros) at [in, in+n) and zeros elsewhere;
 * only the bytes not written are cleared. */
static unsigned char *
store_page_new(struct memory_store *s, const void *src, uint32_t in,
               uint32_t n)
{
  unsigned char *p = store_page_alloc(s);

  if (p == NULL)
    return NULL;
  memset(p, 0, in);
  if (src)
    memcpy(p + in, src, n);
  else
    memset(p + in, 0, n);
  memset(p + in + n, 0, STORE_PAGE_SIZE - in - n);
  return p;
}

static inline int
store_is_zero(const void *src, uint32_t n)
{
  return src == NULL || nbd_is_zero(src, n);
}

/* Copies src (NULL: zeros) into page idx at [in, in+n).  Zeros landing on
 * an unallocated page leave it unallocated unless alloc (NO_HOLE) is set. */
static int
store_write_page(struct memory_store *s, uint64_t idx, const void *src,
                 uint32_t in, uint32_t n, int alloc)
{
  pthread_rwlock_t *lock = store_lock(s, idx);
  struct store_node *leaf = store_leaf(s, idx, 0, NULL);
  _Atomic(void *) *slot;
  unsigned char *fresh;
  void *p;

  if (leaf == NULL) {
    if (!alloc && store_is_zero(src, n))
      return 0;
    if ((leaf = store_leaf(s, idx, 1, NULL)) == NULL)
      return -ENOMEM;
  }
  slot = &leaf->slot[idx & STORE_NODE_MASK];
  pthread_rwlock_rdlock(lock);
  p = atomic_load_explicit(slot, memory_order_acquire);
  if (p == NULL) {
    if (!alloc && store_is_zero(src, n))
      goto out;
    if ((fresh = store_page_new(s, src, in, n)) == NULL) {
      pthread_rwlock_unlock(lock);
      return -ENOMEM;
    }
    if (atomic_compare_exchange_strong_explicit(slot, &p, fresh,
                                                memory_order_acq_rel,
                                                memory_order_acquire))
      goto out;
    /* Lost the race: recycle ours, write into the winner. */
    store_page_put(s, (void **)&fresh, 1);
  }
  if (src)
    memcpy((unsigned char *)p + in, src, n);
  else
    memset((unsigned char *)p + in, 0, n);
out:
  pthread_rwlock_unlock(lock);
  return 0;
}

/* Frees page idx into the batch.  The write lock waits out every thread
 * copying from or into it; after the exchange no thread can find it. */
static void
store_free_page(struct memory_store *s, struct store_node *leaf,
                uint64_t idx, struct store_batch *b)
{
  _Atomic(void *) *slot = &leaf->slot[idx & STORE_NODE_MASK];
  pthread_rwlock_t *lock;
  void *p;

  if (atomic_load_explicit(slot, memory_order_relaxed) == NULL)
    return;                     /* already a hole: no need to lock */
  lock = store_lock(s, idx);
  pthread_rwlock_wrlock(lock);
  p = atomic_exchange_explicit(slot, NULL, memory_order_acq_rel);
  pthread_rwlock_unlock(lock);
  if (p == NULL)
    return;
  if (b->n == STORE_BATCH)
    store_batch_release(s, b);
  b->v[b->n++] = p;
}

/* Puts page fresh, just filled whole from the client, in place of page
 * idx, and adds the page it replaced (or fresh itself, when it is not
 * used) to old[*nold].  Zeros landing on a hole leave the hole, as in
 * store_write_page.  The write lock waits out threads still copying from
 * or into the replaced page. */
static int
store_swap_page(struct memory_store *s, uint64_t idx, void *fresh,
                void **old, size_t *nold)
{
  struct store_node *leaf = store_leaf(s, idx, 0, NULL);
  _Atomic(void *) *slot;
  pthread_rwlock_t *lock;
  void *p;

  if (leaf == NULL || atomic_load_explicit(&leaf->slot[idx & STORE_NODE_MASK],
                                           memory_order_relaxed) == NULL) {
    if (nbd_is_zero(fresh, STORE_PAGE_SIZE)) {
      old[(*nold)++] = fresh;
      return 0;
    }
    if (leaf == NULL && (leaf = store_leaf(s, idx, 1, NULL)) == NULL) {
      old[(*nold)++] = fresh;
      return -ENOMEM;
    }
  }
  slot = &leaf->slot[idx & STORE_NODE_MASK];
  lock = store_lock(s, idx);
  pthread_rwlock_wrlock(lock);
  p = atomic_exchange_explicit(slot, fresh, memory_order_acq_rel);
  pthread_rwlock_unlock(lock);
  if (p)
    old[(*nold)++] = p;
  return 0;
}

static void
store_free_node(struct store_node *n, unsigned level)
{
  unsigned i;

  for (i = 0; i < STORE_NODE_SLOTS; i++) {
    void *child = atomic_load_explicit(&n->slot[i], memory_order_relaxed);
    if (child && level > 0)
      store_free_node(child, level - 1);
    /* Pages (level 0) live in slabs, unmapped by memory_store_close. */
  }
  free(n);
}

/* ---- the store's API (store.h) ------------------------------------------- */

struct memory_store *
memory_store_open(uint64_t size)
{
  struct memory_store *s;
  uint64_t last = size ? (size - 1) >> STORE_PAGE_SHIFT : 0;
  unsigned bits = 0, i;

  while (bits < 64 && (last >> bits) != 0)
    bits++;
  s = aligned_alloc(_Alignof(struct memory_store), sizeof *s);
  if (s == NULL)
    return NULL;
  s->root = NULL;
  /* No request needs more free pages than the disk has. */
  s->keep = last + 1 < STORE_KEEP_FREE ? (size_t)last + 1 : STORE_KEEP_FREE;
  s->freelist = malloc(s->keep * sizeof *s->freelist);
  if (s->freelist == NULL || (s->root = calloc(1, sizeof *s->root)) == NULL) {
    free(s->freelist);
    free(s);
    return NULL;
  }
  s->levels = bits ? (bits + STORE_NODE_SHIFT - 1) / STORE_NODE_SHIFT : 1;
  /* Small disks get a slab of their own size, large ones 64 MiB slabs. */
  s->slab_size = STORE_SLAB_MAX;
  if (size < STORE_SLAB_MAX)
    s->slab_size = (size_t)(last + 1) << STORE_PAGE_SHIFT;
  pthread_mutex_init(&s->alloc_lock, NULL);
  s->slabs = NULL;
  s->nfree = 0;
  s->gonelist = NULL;
  s->ngone = s->capgone = 0;
  for (i = 0; i < STORE_STRIPES; i++)
    pthread_rwlock_init(&s->stripe[i].lock, NULL);
  return s;
}

void
memory_store_close(struct memory_store *s)
{
  unsigned i;

  if (s == NULL)
    return;
  store_free_node(s->root, s->levels - 1);
  while (s->slabs) {
    struct store_slab *sl = s->slabs;
    s->slabs = sl->next;
    munmap(sl->base, sl->size);
    free(sl);
  }
  free(s->freelist);
  free(s->gonelist);
  pthread_mutex_destroy(&s->alloc_lock);
  for (i = 0; i < STORE_STRIPES; i++)
    pthread_rwlock_destroy(&s->stripe[i].lock);
  free(s);
}

int
memory_store_read(struct memory_store *s, void *buf, uint32_t count,
                  uint64_t offset)
{
  unsigned char *b = buf;

  while (count > 0) {
    uint64_t idx = offset >> STORE_PAGE_SHIFT;
    uint32_t in = offset & STORE_PAGE_MASK;
    uint32_t n = STORE_PAGE_SIZE - in < count ? STORE_PAGE_SIZE - in
                                              : count;
    struct store_node *leaf = store_leaf(s, idx, 0, NULL);

    if (leaf)
      store_read_page(s, leaf, idx, b, in, n);
    else
      memset(b, 0, n);
    b += n;
    offset += n;
    count -= n;
  }
  return 0;
}

/* The read locks of the stripes of pages [idx, idx + n), each once, in
 * address order (so two readers never take two stripes in opposite
 * orders, whatever the rwlock's policy for waiting writers); returns how
 * many, in locks. */
static int
store_lock_stripes(struct memory_store *s, uint64_t idx, unsigned n,
                   pthread_rwlock_t **locks)
{
  int nl = 0, i, j;

  for (; n > 0; n--, idx++) {
    pthread_rwlock_t *l = store_lock(s, idx);
    for (i = 0; i < nl && locks[i] < l; i++)
      ;
    if (i < nl && locks[i] == l)
      continue;
    for (j = nl++; j > i; j--)
      locks[j] = locks[j - 1];
    locks[i] = l;
  }
  for (i = 0; i < nl; i++)
    pthread_rwlock_rdlock(locks[i]);
  return nl;
}

/* Up to STORE_PUSH_PAGES pages at a time: their stripes' read locks are
 * taken before the page pointers and held until the sink has sent or
 * copied the bytes, as store_read_page holds one around its memcpy; a
 * page freed meanwhile waits for that.  Discard and swap write-lock one
 * stripe at a time, holding nothing else. */
int
memory_store_read_to(struct memory_store *s, struct nbd_sink *dst,
                     uint32_t count, uint64_t offset)
{
  struct iovec iov[STORE_PUSH_PAGES];
  pthread_rwlock_t *locks[STORE_PUSH_PAGES];
  int n, nl, r = 0;

  while (count > 0 && r == 0) {
    uint64_t first = offset >> STORE_PAGE_SHIFT;
    uint64_t last = (offset + count - 1) >> STORE_PAGE_SHIFT;
    unsigned np = last - first + 1 < STORE_PUSH_PAGES
                  ? (unsigned)(last - first + 1) : STORE_PUSH_PAGES;

    nl = store_lock_stripes(s, first, np, locks);
    for (n = 0; count > 0 && np > 0; np--) {
      uint64_t idx = offset >> STORE_PAGE_SHIFT;
      uint32_t in = offset & STORE_PAGE_MASK;
      uint32_t len = STORE_PAGE_SIZE - in < count ? STORE_PAGE_SIZE - in
                                                  : count;
      struct store_node *leaf = store_leaf(s, idx, 0, NULL);
      const unsigned char *p = NULL;

      if (leaf)
        p = atomic_load_explicit(&leaf->slot[idx & STORE_NODE_MASK],
                                 memory_order_acquire);
      p = p ? p + in : store_zeros;
      /* Neighbouring pages of one slab: one iovec. */
      if (n > 0 && p != store_zeros &&
          (const unsigned char *)iov[n - 1].iov_base + iov[n - 1].iov_len == p)
        iov[n - 1].iov_len += len;
      else
        iov[n++] = (struct iovec){ (void *)p, len };
      offset += len;
      count -= len;
    }
    r = nbd_sink_writev(dst, iov, n);
    while (nl > 0)
      pthread_rwlock_unlock(locks[--nl]);
  }
  return r;
}

int
memory_store_write(struct memory_store *s, const void *buf, uint32_t count,
                   uint64_t offset)
{
  const unsigned char *b = buf;
  int r;

  while (count > 0) {
    uint64_t idx = offset >> STORE_PAGE_SHIFT;
    uint32_t in = offset & STORE_PAGE_MASK;
    uint32_t n = STORE_PAGE_SIZE - in < count ? STORE_PAGE_SIZE - in
                                              : count;

    if ((r = store_write_page(s, idx, b, in, n, 0)) < 0)
      return r;
    b += n;
    offset += n;
    count -= n;
  }
  return 0;
}

/* Writes whose payload is still in the socket: whole pages are read from
 * the client straight into fresh pages (one recvmsg per 2 MiB), which then
 * replace the old ones.  That saves copying every byte a second time,
 * a large share of the server's CPU for large writes in perf.  Nothing is
 * locked and nothing changes until the whole payload is in, so a slow
 * client holds up nobody, and one that vanishes mid-payload changes
 * nothing.  The parts of pages at either end (under 64 KiB together) are
 * read into a buffer and copied with store_write_page. */
int
memory_store_write_from(struct memory_store *s, struct nbd_source *src,
                        uint32_t count, uint64_t offset)
{
  unsigned char part[2 * STORE_PAGE_SIZE];
  void *fresh_small[STORE_PULL_PAGES], *old_small[STORE_PULL_PAGES];
  void **fresh = fresh_small, **old = old_small;
  struct iovec iov[STORE_PULL_PAGES + 2];
  uint32_t in = offset & STORE_PAGE_MASK, head, tail, nb, got = 0, k, n;
  uint64_t idx;
  size_t nold = 0;
  int r = 0;

  head = in || count < STORE_PAGE_SIZE
         ? (STORE_PAGE_SIZE - in < count ? STORE_PAGE_SIZE - in : count)
         : 0;
  nb = (count - head) >> STORE_PAGE_SHIFT;
  tail = count - head - (nb << STORE_PAGE_SHIFT);
  if (nb > STORE_PULL_PAGES) {
    fresh = malloc(nb * sizeof *fresh);
    old = malloc(nb * sizeof *old);
    if (fresh == NULL || old == NULL) {
      r = -ENOMEM;
      goto out;
    }
  }
  if ((got = store_pages_alloc(s, fresh, nb)) < nb) {
    r = -ENOMEM;
    goto out;
  }
  store_populate(fresh, nb);

  /* The payload, in order: head, whole pages, tail; a full iov array is
   * read at once, which leaves room for the tail. */
  n = 0;
  if (head)
    iov[n++] = (struct iovec){ part, head };
  for (k = 0; k < nb && r == 0; k++) {
    iov[n++] = (struct iovec){ fresh[k], STORE_PAGE_SIZE };
    if (n == STORE_PULL_PAGES + 2) {
      r = nbd_source_readv(src, iov, (int)n);
      n = 0;
    }
  }
  if (tail)
    iov[n++] = (struct iovec){ part + head, tail };
  if (r == 0)
    r = nbd_source_readv(src, iov, (int)n);
  if (r < 0)
    goto out;

  idx = offset >> STORE_PAGE_SHIFT;
  if (head && (r = store_write_page(s, idx, part, in, head, 0)) < 0)
    goto out;
  if (head)
    idx++;
  for (k = 0; k < nb; k++) {
    if (r == 0)
      r = store_swap_page(s, idx + k, fresh[k], old, &nold);
    else
      old[nold++] = fresh[k];
  }
  got = 0;                      /* every fresh page is placed or in old */
  if (r == 0 && tail)
    r = store_write_page(s, idx + nb, part + head, 0, tail, 0);
out:
  for (k = 0; k < got; k++)
    old[nold++] = fresh[k];
  if (nold)
    store_page_put(s, old, nold);
  if (fresh != fresh_small) {
    free(fresh);
    free(old);
  }
  return r;
}

/* Trim and zero: whole pages are freed (or, with alloc, provisioned and
 * zeroed), partial pages zeroed; missing subtrees are skipped whole. */
int
memory_store_discard(struct memory_store *s, uint64_t count, uint64_t offset,
                     int alloc)
{
  uint64_t end = offset + count;
  struct store_batch b;
  int r = 0;

  b.n = 0;
  while (offset < end) {
    uint64_t idx = offset >> STORE_PAGE_SHIFT, hole_end = idx + 1;
    uint32_t in = offset & STORE_PAGE_MASK;
    uint32_t n = end - offset < STORE_PAGE_SIZE - in ? end - offset
                                                     : STORE_PAGE_SIZE - in;
    struct store_node *leaf = store_leaf(s, idx, 0, &hole_end);

    if (leaf == NULL && !alloc) {
      offset = store_clip(hole_end, end);
      continue;
    }
    if (leaf && !alloc && n == STORE_PAGE_SIZE)
      store_free_page(s, leaf, idx, &b);
    else if ((r = store_write_page(s, idx, NULL, in, n, alloc)) < 0)
      break;
    offset += n;
  }
  store_batch_release(s, &b);
  return r;
}

/* Page pointers are read atomically, never dereferenced, so no lock is
 * needed. */
int
memory_store_extent(struct memory_store *s, uint64_t offset, uint64_t end,
                    uint64_t *stop)
{
  uint64_t idx = offset >> STORE_PAGE_SHIFT, hole_end = idx + 1;
  struct store_node *leaf = store_leaf(s, idx, 0, &hole_end);

  if (leaf == NULL) {
    *stop = store_clip(hole_end, end);
    return 0;
  }
  *stop = store_clip(idx + 1, end);
  return atomic_load_explicit(&leaf->slot[idx & STORE_NODE_MASK],
                              memory_order_relaxed) != NULL;
}
