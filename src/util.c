/* nbdstack: small helpers shared by the core and layers. */
#include <stdint.h>
#include <string.h>

#include "layer.h"

/* May alias any buffer, so reading bytes as words is defined. */
typedef uint64_t __attribute__((may_alias)) util_word;

int
nbd_is_zero(const void *buf, size_t len)
{
  const unsigned char *p = buf;
  const util_word *w;

  /* Not memcmp(p, p + 16, ...): musl's memcmp goes a byte at a time.  An
   * OR of eight words per step is vectorised by the compiler, and data
   * that is not zero usually exits in the first step. */
  while (len > 0 && ((uintptr_t)p & 7) != 0) {
    if (*p++)
      return 0;
    len--;
  }
  for (w = (const util_word *)p; len >= 64; w += 8, len -= 64)
    if (w[0] | w[1] | w[2] | w[3] | w[4] | w[5] | w[6] | w[7])
      return 0;
  for (p = (const unsigned char *)w; len > 0; len--)
    if (*p++)
      return 0;
  return 1;
}
