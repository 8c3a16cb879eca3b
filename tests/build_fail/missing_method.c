/* A filter that forgets trim: neither missing_trim nor PASSTHROUGH(missing,
 * trim).  tests/build_fail/build_fail.cmake compiles it and expects the
 * build to stop with an error naming 'missing_trim'; compiled with
 * -DWITH_TRIM (the line below present) it must build cleanly, so the test
 * cannot pass because of some unrelated error in this file.
 *
 * Never part of the nbdstack build: filters live in filters/.
 */
#include "layer.h"

PASSTHROUGH(missing, pread)
PASSTHROUGH(missing, pwrite)
PASSTHROUGH(missing, flush)
#ifdef WITH_TRIM
PASSTHROUGH(missing, trim)
#endif
PASSTHROUGH(missing, zero)
PASSTHROUGH(missing, extents)
PASSTHROUGH(missing, depth)
PASSTHROUGH(missing, cache)
PASSTHROUGH(missing, reopen)
PASSTHROUGH(missing, get_size)
PASSTHROUGH(missing, block_size)
PASSTHROUGH(missing, can_write)
PASSTHROUGH(missing, can_flush)
PASSTHROUGH(missing, can_trim)
PASSTHROUGH(missing, can_zero)
PASSTHROUGH(missing, can_fast_zero)
PASSTHROUGH(missing, can_fua)
PASSTHROUGH(missing, can_cache)
PASSTHROUGH(missing, can_extents)
PASSTHROUGH(missing, can_multi_conn)
PASSTHROUGH(missing, is_rotational)
PASSTHROUGH(missing, list_exports)
PASSTHROUGH(missing, preconnect)

NBD_REGISTER_FILTER(missing, NBD_PARALLEL, NBD_NEVER_BLOCKS,
  .description = "test: a filter with trim left out",
);
