/* A backend that passes trim through.  There is no layer below a
 * backend: this compiled, and the server crashed on the first trim (next
 * is NULL).  The registration must refuse it naming the backend and the
 * method.  -DCONTROL: UNSUPPORTED(passbe, trim) instead.
 * Never part of the nbdstack build.
 */
#include "layer.h"

#ifdef CONTROL
UNSUPPORTED(passbe, trim)
#else
PASSTHROUGH(passbe, trim)
#endif
UNSUPPORTED(passbe, pread)
UNSUPPORTED(passbe, pwrite)
UNSUPPORTED(passbe, flush)
UNSUPPORTED(passbe, zero)
UNSUPPORTED(passbe, extents)
UNSUPPORTED(passbe, depth)
UNSUPPORTED(passbe, cache)
UNSUPPORTED(passbe, reopen)
UNSUPPORTED(passbe, get_size)
UNSUPPORTED(passbe, block_size)
UNSUPPORTED(passbe, can_write)
UNSUPPORTED(passbe, can_flush)
UNSUPPORTED(passbe, can_trim)
UNSUPPORTED(passbe, can_zero)
UNSUPPORTED(passbe, can_fast_zero)
UNSUPPORTED(passbe, can_fua)
UNSUPPORTED(passbe, can_cache)
UNSUPPORTED(passbe, can_extents)
UNSUPPORTED(passbe, can_multi_conn)
UNSUPPORTED(passbe, is_rotational)
UNSUPPORTED(passbe, list_exports)
UNSUPPORTED(passbe, preconnect)

NBD_REGISTER_BACKEND(passbe, NBD_PARALLEL, NBD_NEVER_BLOCKS,
  .description = "test: a backend with PASSTHROUGH",
);
