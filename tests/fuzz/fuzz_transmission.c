/* nbdstack fuzzing: the request loop (transmission.c) and the stack below
 * it (engine.c, the offset filter, the memory backend).
 *
 * The harness sends a fixed, valid handshake so that the fuzzer spends its
 * time on request headers and payloads.  The first input byte chooses the
 * handshake, the rest are the requests:
 *   bits 0-1  export: 0 "" (1 MiB RAM disk), 1 "win" (offset filter),
 *             2 "ro" (read-only), 3 is "" again
 *   bit 2     set: no NBD_OPT_STRUCTURED_REPLY (simple replies only)
 *   bit 3     set: no NBD_OPT_SET_META_CONTEXT of base:allocation and
 *             qemu:allocation-depth
 *   bit 4     set: NBD_OPT_EXTENDED_HEADERS (after STRUCTURED_REPLY
 *             unless bit 2): 32-byte requests and replies
 * Client flags are FIXED_NEWSTYLE|NO_ZEROES; GO asks for NBD_INFO_BLOCK_SIZE.
 */
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include "fuzz_conn.h"

#define TX_OPT_GO                7
#define TX_OPT_STRUCTURED_REPLY  8
#define TX_OPT_SET_META_CONTEXT  10
#define TX_OPT_EXTENDED_HEADERS  11
#define TX_INFO_BLOCK_SIZE       3

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static size_t
tx_put(uint8_t *p, uint64_t v, int bytes)
{
  int i;

  for (i = 0; i < bytes; i++)
    p[i] = (uint8_t)(v >> (8 * (bytes - 1 - i)));
  return (size_t)bytes;
}

static size_t
tx_option(uint8_t *p, uint32_t opt, const uint8_t *d, uint32_t len)
{
  size_t n = 0;

  n += tx_put(p + n, UINT64_C(0x49484156454F5054), 8);   /* IHAVEOPT */
  n += tx_put(p + n, opt, 4);
  n += tx_put(p + n, len, 4);
  if (len)
    memcpy(p + n, d, len);
  return n + len;
}

/* Writes the handshake for mode into p (at least 256 bytes). */
static size_t
tx_handshake(uint8_t *p, uint8_t mode)
{
  static const char ctx[] = "base:allocation";
  static const char depth[] = "qemu:allocation-depth";
  const char *name = fuzz_export_names[(mode & 3) % FUZZ_EXPORTS];
  uint32_t nlen = (uint32_t)strlen(name);
  uint8_t d[128];
  size_t n = 0, k;

  n += tx_put(p + n, 3, 4);     /* FIXED_NEWSTYLE | NO_ZEROES */
  if (!(mode & 4))
    n += tx_option(p + n, TX_OPT_STRUCTURED_REPLY, NULL, 0);
  if (mode & 16)
    n += tx_option(p + n, TX_OPT_EXTENDED_HEADERS, NULL, 0);
  if (!(mode & 4) || (mode & 16)) {
    if (!(mode & 8)) {
      k = tx_put(d, nlen, 4);
      memcpy(d + k, name, nlen);
      k += nlen;
      k += tx_put(d + k, 2, 4);
      k += tx_put(d + k, sizeof ctx - 1, 4);
      memcpy(d + k, ctx, sizeof ctx - 1);
      k += sizeof ctx - 1;
      k += tx_put(d + k, sizeof depth - 1, 4);
      memcpy(d + k, depth, sizeof depth - 1);
      k += sizeof depth - 1;
      n += tx_option(p + n, TX_OPT_SET_META_CONTEXT, d, (uint32_t)k);
    }
  }
  k = tx_put(d, nlen, 4);
  memcpy(d + k, name, nlen);
  k += nlen;
  k += tx_put(d + k, 1, 2);
  k += tx_put(d + k, TX_INFO_BLOCK_SIZE, 2);
  n += tx_option(p + n, TX_OPT_GO, d, (uint32_t)k);
  return n;
}

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
  uint8_t pre[256];
  size_t n;

  if (size == 0)
    return 0;
  n = tx_handshake(pre, data[0]);
  fuzz_conn_run(pre, n, data + 1, size - 1);
  return 0;
}
