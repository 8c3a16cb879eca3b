/* nbdstack test-only filter testinfo: the first 4 KiB of the disk read
 * as a line describing the connection, from nbd_conn_info(): its number,
 * address family, TCP address and port or Unix peer's pid, uid and gid,
 * the export name the client asked for, and TLS.  The rest passes
 * through.  It lets a test see, through a real client, what the server
 * tells layers about a connection.  Built into test builds only.
 */
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>

#include "layer.h"

#define TESTINFO_LEN 4096

static void
testinfo_text(const struct nbd_ctx *self, char *buf)
{
  const struct nbd_conn_info *i = nbd_conn_info(self);

  memset(buf, 0, TESTINFO_LEN);
  if (i == NULL) {
    snprintf(buf, TESTINFO_LEN, "no connection\n");
    return;
  }
  snprintf(buf, TESTINFO_LEN, "id=%llu family=%s addr=%s port=%u "
           "cred=%d pid=%ld uid=%u gid=%u export=%s tls=%d\n",
           (unsigned long long)i->id,
           i->family == AF_UNIX ? "unix" : i->family == AF_INET ? "inet"
           : i->family == AF_INET6 ? "inet6" : "?", i->addr, i->port,
           i->has_cred, (long)i->pid, (unsigned)i->uid, (unsigned)i->gid,
           i->export_name ? i->export_name : "(null)", i->tls);
}

static int
testinfo_pread(struct nbd_ctx *self, struct nbd_ctx *next, void *buf,
               uint32_t count, uint64_t offset, uint32_t flags)
{
  char text[TESTINFO_LEN];
  uint32_t n;
  int r;

  if (offset >= TESTINFO_LEN)
    return next_pread(next, buf, count, offset, flags);
  n = count < TESTINFO_LEN - offset ? count : (uint32_t)(TESTINFO_LEN - offset);
  testinfo_text(self, text);
  memcpy(buf, text + offset, n);
  if (n == count)
    return 0;
  r = next_pread(next, (char *)buf + n, count - n, offset + n, flags);
  return r;
}

PASSTHROUGH(testinfo, pwrite)
PASSTHROUGH(testinfo, flush)
PASSTHROUGH(testinfo, trim)
PASSTHROUGH(testinfo, zero)
PASSTHROUGH(testinfo, extents)
PASSTHROUGH(testinfo, depth)
PASSTHROUGH(testinfo, cache)
PASSTHROUGH(testinfo, reopen)
PASSTHROUGH(testinfo, get_size)
PASSTHROUGH(testinfo, block_size)
PASSTHROUGH(testinfo, can_write)
PASSTHROUGH(testinfo, can_flush)
PASSTHROUGH(testinfo, can_trim)
PASSTHROUGH(testinfo, can_zero)
PASSTHROUGH(testinfo, can_fast_zero)
PASSTHROUGH(testinfo, can_fua)
PASSTHROUGH(testinfo, can_cache)
PASSTHROUGH(testinfo, can_extents)
PASSTHROUGH(testinfo, can_multi_conn)
PASSTHROUGH(testinfo, is_rotational)
PASSTHROUGH(testinfo, list_exports)
PASSTHROUGH(testinfo, preconnect)

NBD_REGISTER_FILTER(testinfo, NBD_PARALLEL, NBD_NEVER_BLOCKS,
  .description = "test only: the first 4 KiB read as the connection's info",
);
