/* nbdstack: the extent list layers fill for BLOCK_STATUS.
 *
 * Extents arrive in increasing order; this file clips them to the request,
 * merges neighbours of equal type and refuses gaps; nbd_extents_shifted
 * and nbd_depth_shifted serve filters that show a window of the layer
 * below.  It does not know the
 * wire format (transmission.c encodes).
 */
#include <stdlib.h>

#include "layer.h"

struct nbd_extents *
nbd_extents_new(uint64_t start, uint64_t end)
{
  struct nbd_extents *e = calloc(1, sizeof *e);

  if (e == NULL)
    return NULL;
  e->start = start;
  e->end = end;
  return e;
}

void
nbd_extents_free(struct nbd_extents *e)
{
  if (e == NULL)
    return;
  free(e->v);
  free(e);
}

int
nbd_extents_add(struct nbd_extents *e, uint64_t offset, uint64_t length,
                uint32_t type)
{
  uint64_t end, expect;

  if (length == 0)
    return 0;
  if (offset + length < offset)
    return -EINVAL;
  end = offset + length;
  /* Clip to [start, end). */
  if (end <= e->start || offset >= e->end)
    return 0;
  if (offset < e->start)
    offset = e->start;
  if (end > e->end)
    end = e->end;

  expect = e->n ? e->v[e->n - 1].offset + e->v[e->n - 1].length : e->start;
  if (end <= expect)
    return 0;                   /* already covered */
  if (offset > expect)
    return -EINVAL;             /* a gap: layers must be contiguous */
  offset = expect;

  if (e->n && e->v[e->n - 1].type == type) {
    e->v[e->n - 1].length += end - offset;
    return 0;
  }
  if (e->n == e->cap) {
    size_t cap = e->cap ? e->cap * 2 : 16;
    struct nbd_extent *v = realloc(e->v, cap * sizeof *v);
    if (v == NULL)
      return -ENOMEM;
    e->v = v;
    e->cap = cap;
  }
  e->v[e->n].offset = offset;
  e->v[e->n].length = end - offset;
  e->v[e->n].type = type;
  e->n++;
  return 0;
}

/* The map of next's method m (extents or depth) over the window,
 * shifted back. */
static int
extents_shifted(int (*m)(struct nbd_ctx *, uint64_t, uint64_t, uint32_t,
                         struct nbd_extents *),
                struct nbd_ctx *next, uint64_t count, uint64_t offset,
                uint64_t shift, uint32_t flags, struct nbd_extents *extents)
{
  struct nbd_extents *below;
  size_t i;
  int r;

  below = nbd_extents_new(offset + shift, offset + shift + count);
  if (below == NULL)
    return -ENOMEM;
  r = m(next, count, offset + shift, flags, below);
  for (i = 0; r == 0 && i < below->n; i++)
    r = nbd_extents_add(extents, below->v[i].offset - shift,
                        below->v[i].length, below->v[i].type);
  nbd_extents_free(below);
  return r;
}

int
nbd_extents_shifted(struct nbd_ctx *next, uint64_t count, uint64_t offset,
                    uint64_t shift, uint32_t flags, struct nbd_extents *extents)
{
  return extents_shifted(next_extents, next, count, offset, shift, flags,
                         extents);
}

int
nbd_depth_shifted(struct nbd_ctx *next, uint64_t count, uint64_t offset,
                  uint64_t shift, uint32_t flags, struct nbd_extents *extents)
{
  return extents_shifted(next_depth, next, count, offset, shift, flags,
                         extents);
}
