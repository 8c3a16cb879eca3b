/* nbdstack: the rules a window of the layer below must follow (window.h):
 * inside the disk below, and aligned to its minimum block size.
 *
 * Both checks are plain arithmetic on numbers the filter got from the
 * layer below, and answer with a code rather than a message, so each
 * filter words the refusal in its own terms.  The forwarders are macros in
 * window.h; nothing here runs on the data path.
 */
#include "window.h"

int
nbd_window_fit_size(const struct nbd_window *w, uint64_t size)
{
  if (w->start > size)
    return NBD_WINDOW_START_PAST_END;
  /* start <= size here, so size - start does not wrap. */
  if (!w->to_end && w->len > size - w->start)
    return NBD_WINDOW_END_PAST_END;
  return NBD_WINDOW_FITS;
}

uint64_t
nbd_window_len(const struct nbd_window *w, uint64_t size)
{
  return w->to_end ? size - w->start : w->len;
}

int
nbd_window_fit_blocks(const struct nbd_window *w, uint32_t minimum,
                      uint32_t *preferred)
{
  uint64_t low = w->start & -w->start;  /* 0 when start is 0 */

  if (minimum == 0)
    return NBD_WINDOW_FITS;     /* no constraints */
  if (w->start % minimum != 0)
    return NBD_WINDOW_START_UNALIGNED;
  if (!w->to_end && w->len % minimum != 0)
    return NBD_WINDOW_LEN_UNALIGNED;
  if (w->start % *preferred != 0)
    *preferred = low < minimum ? minimum : (uint32_t)low;
  return NBD_WINDOW_FITS;
}
