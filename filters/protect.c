/* nbdstack filter protect: write-protect ranges of the layer below
 * (nbdkit's protect filter, same key).
 *
 * protect=START-END protects bytes START..END inclusive; protect=~START-END
 * protects everything else.  The key repeats; the protected set is the
 * union.  START and END are decimal, octal (0NN) or hex (0xNN); an omitted
 * START is 0, an omitted END the end of the disk.
 *
 * Reads pass through.  A write or zero that touches protected bytes first
 * reads them below and compares: the same bytes (zeros for a zero) let the
 * request through whole, anything else fails it with EPERM and nothing is
 * written.  A trim trims only the unprotected parts and never fails for
 * protection: a trim may leave any content behind, which protected bytes
 * must not get, and a trim that changes nothing needs no refusal (nbdkit
 * compares the protected part with zeros, fails with EPERM when it is
 * not, and else trims it too, which may change it).  No lock: a write that passes
 * leaves protected bytes as they were, so racing writes cannot change
 * them either.
 */
#include <inttypes.h>
#include <stdlib.h>
#include <string.h>

#include "layer.h"

struct protect_range {
  uint64_t start, end;          /* inclusive */
};

struct protect_conf {
  struct nbd_strlist protect;
  struct protect_range *r;      /* sorted, merged (setup) */
  size_t n;
};

static const struct nbd_param protect_params[] = {
  { "protect", NBD_PARAM_STRING_LIST, offsetof(struct protect_conf, protect),
    NULL, "START-END: protect bytes START..END inclusive (repeatable; "
    "~START-END protects the complement; START defaults to 0, END to the "
    "end of the disk)", NULL, 0 },
  NBD_PARAM_END
};

/* A number as strtoull with base 0, all of s; -1 if not. */
static int
protect_number(const char *s, size_t len, uint64_t *v)
{
  char buf[32], *end;

  if (len == 0 || len >= sizeof buf || s[0] == '-' || s[0] == '+')
    return -1;
  memcpy(buf, s, len);
  buf[len] = '\0';
  errno = 0;
  *v = strtoull(buf, &end, 0);
  return errno || *end != '\0' ? -1 : 0;
}

static int
protect_add(struct protect_conf *c, uint64_t start, uint64_t end)
{
  struct protect_range *v = realloc(c->r, (c->n + 1) * sizeof *v);

  if (v == NULL)
    return -1;
  c->r = v;
  v[c->n].start = start;
  v[c->n].end = end;
  c->n++;
  return 0;
}

static int
protect_cmp(const void *a, const void *b)
{
  const struct protect_range *x = a, *y = b;

  return x->start < y->start ? -1 : x->start > y->start;
}

static int
protect_parse(struct protect_conf *c, const char *s, char *err, size_t errlen)
{
  const char *v = s, *dash;
  uint64_t start = 0, end = UINT64_MAX;
  int invert = 0;

  if (*v == '~') {
    invert = 1;
    v++;
  }
  dash = strchr(v, '-');
  if (dash == NULL ||
      (dash > v && protect_number(v, (size_t)(dash - v), &start) < 0) ||
      (dash[1] && protect_number(dash + 1, strlen(dash + 1), &end) < 0)) {
    snprintf(err, errlen, "protect: invalid range '%s' (expected "
             "[~]START-END, e.g. 0-511 or ~0x100000-)", s);
    return -1;
  }
  if (start > end) {
    snprintf(err, errlen, "protect: invalid range '%s': START is after END",
             s);
    return -1;
  }
  if (!invert)
    return protect_add(c, start, end);
  if (start > 0 && protect_add(c, 0, start - 1) < 0)
    return -1;
  if (end < UINT64_MAX && protect_add(c, end + 1, UINT64_MAX) < 0)
    return -1;
  return 0;
}

static int
protect_setup(struct nbd_layer *layer, char *err, size_t errlen)
{
  struct protect_conf *c = layer->conf;
  size_t i, j;

  for (i = 0; i < c->protect.n; i++)
    if (protect_parse(c, c->protect.v[i], err, errlen) < 0) {
      if (err[0] == '\0')
        snprintf(err, errlen, "out of memory");
      return -1;
    }
  if (c->n == 0)
    return 0;
  qsort(c->r, c->n, sizeof *c->r, protect_cmp);
  for (i = 1, j = 0; i < c->n; i++) {
    if (c->r[j].end == UINT64_MAX || c->r[i].start <= c->r[j].end + 1) {
      if (c->r[i].end > c->r[j].end)
        c->r[j].end = c->r[i].end;
    }
    else
      c->r[++j] = c->r[i];
  }
  c->n = j + 1;
  return 0;
}

static void
protect_cleanup(struct nbd_layer *layer)
{
  struct protect_conf *c = layer->conf;

  free(c->r);
  c->r = NULL;
}

/* Reads [offset, offset+len) below in pieces and compares each with want
 * (NULL = zeros): 0 equal, -EPERM different, or the read's -errno. */
#define PROTECT_CHUNK (1u << 20)

static int
protect_compare(struct nbd_ctx *next, const unsigned char *want,
                uint64_t len, uint64_t offset)
{
  size_t cap = len < PROTECT_CHUNK ? (size_t)len : PROTECT_CHUNK;
  unsigned char *buf = malloc(cap ? cap : 1);
  int r = 0;

  if (buf == NULL)
    return -ENOMEM;
  while (len > 0 && r == 0) {
    uint32_t n = len < cap ? (uint32_t)len : (uint32_t)cap;
    r = next_pread(next, buf, n, offset, 0);
    if (r == 0 && (want ? memcmp(buf, want, n) != 0 : !nbd_is_zero(buf, n)))
      r = -EPERM;
    if (want)
      want += n;
    len -= n;
    offset += n;
  }
  free(buf);
  return r;
}

/* Checks every protected byte of [offset, offset+count): want holds the
 * new bytes of the whole request, NULL for zeros. */
static int
protect_check(struct nbd_ctx *self, struct nbd_ctx *next,
              const unsigned char *want, uint64_t count, uint64_t offset)
{
  const struct protect_conf *c = self->layer->conf;
  uint64_t last = offset + count - 1;
  size_t i;
  int r;

  if (count == 0)
    return 0;
  for (i = 0; i < c->n && c->r[i].start <= last; i++) {
    uint64_t a, b;

    if (c->r[i].end < offset)
      continue;
    a = c->r[i].start > offset ? c->r[i].start : offset;
    b = c->r[i].end < last ? c->r[i].end : last;
    r = protect_compare(next, want ? want + (a - offset) : NULL, b - a + 1, a);
    if (r == -EPERM)
      nbd_debug("export '%s': filter protect: refused a change of "
                "protected bytes %" PRIu64 "-%" PRIu64,
                self->layer->export_name, a, b);
    if (r < 0)
      return r;
  }
  return 0;
}

static int
protect_pwrite(struct nbd_ctx *self, struct nbd_ctx *next, const void *buf,
               uint32_t count, uint64_t offset, uint32_t flags)
{
  int r = protect_check(self, next, buf, count, offset);

  return r ? r : next_pwrite(next, buf, count, offset, flags);
}

static int
protect_zero(struct nbd_ctx *self, struct nbd_ctx *next, uint64_t count,
             uint64_t offset, uint32_t flags)
{
  int r = protect_check(self, next, NULL, count, offset);

  return r ? r : next_zero(next, count, offset, flags);
}

/* Trims the unprotected parts of [offset, offset+count) only. */
static int
protect_trim(struct nbd_ctx *self, struct nbd_ctx *next, uint64_t count,
             uint64_t offset, uint32_t flags)
{
  const struct protect_conf *c = self->layer->conf;
  uint64_t pos = offset, end = offset + count;
  size_t i;
  int r;

  for (i = 0; i < c->n && pos < end; i++) {
    if (c->r[i].end < pos)
      continue;
    if (c->r[i].start >= end)
      break;
    if (c->r[i].start > pos &&
        (r = next_trim(next, c->r[i].start - pos, pos, flags)) < 0)
      return r;
    pos = c->r[i].end == UINT64_MAX ? end : c->r[i].end + 1;
  }
  if (pos < end)
    return next_trim(next, end - pos, pos, flags);
  /* Nothing trimmed: a FUA still asks for what is there to be durable. */
  if ((flags & NBD_CMD_FLAG_FUA) && next_can_flush(next) > 0)
    return next_flush(next, 0);
  return 0;
}

/* Reads, extents and the rest are not changed. */
PASSTHROUGH(protect, pread)
PASSTHROUGH(protect, flush)
PASSTHROUGH(protect, extents)
PASSTHROUGH(protect, depth)
PASSTHROUGH(protect, cache)
PASSTHROUGH(protect, reopen)
PASSTHROUGH(protect, get_size)
PASSTHROUGH(protect, block_size)
PASSTHROUGH(protect, can_write)
PASSTHROUGH(protect, can_flush)
PASSTHROUGH(protect, can_trim)
PASSTHROUGH(protect, can_zero)
PASSTHROUGH(protect, can_fast_zero)
PASSTHROUGH(protect, can_fua)
PASSTHROUGH(protect, can_cache)
PASSTHROUGH(protect, can_extents)
PASSTHROUGH(protect, can_multi_conn)
PASSTHROUGH(protect, is_rotational)
PASSTHROUGH(protect, list_exports)
PASSTHROUGH(protect, preconnect)

NBD_REGISTER_FILTER(protect, NBD_PARALLEL, NBD_NEVER_BLOCKS,
  .description = "write-protect byte ranges: changes to them fail with EPERM",
  .params = protect_params,
  .conf_size = sizeof(struct protect_conf),
  .setup = protect_setup,
  .cleanup = protect_cleanup,
);
