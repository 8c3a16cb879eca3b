/* nbdstack: small helpers shared by the core and layers. */
#include <string.h>

#include "layer.h"

int
nbd_is_zero(const void *buf, size_t len)
{
  const unsigned char *p = buf;
  size_t i;

  /* Check a short prefix byte by byte, then compare the buffer with itself
   * shifted: memcmp is vectorised, and non-zero data exits early. */
  for (i = 0; i < len && i < 16; i++)
    if (p[i])
      return 0;
  if (len <= 16)
    return 1;
  return memcmp(p, p + 16, len - 16) == 0;
}
