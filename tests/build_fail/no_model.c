/* A filter registered without its thread model and nonblocking class
 * (the old style: only a designated .thread_model, which left nonblocking
 * at the slowest class without a word), or with the two swapped
 * (-DSWAPPED).  Both must stop the build naming the filter.  -DCONTROL:
 * both given, in order.  Never part of the nbdstack build.
 */
#include "layer.h"

PASSTHROUGH(nomodel, pread)
PASSTHROUGH(nomodel, pwrite)
PASSTHROUGH(nomodel, flush)
PASSTHROUGH(nomodel, trim)
PASSTHROUGH(nomodel, zero)
PASSTHROUGH(nomodel, extents)
PASSTHROUGH(nomodel, depth)
PASSTHROUGH(nomodel, cache)
PASSTHROUGH(nomodel, reopen)
PASSTHROUGH(nomodel, get_size)
PASSTHROUGH(nomodel, block_size)
PASSTHROUGH(nomodel, can_write)
PASSTHROUGH(nomodel, can_flush)
PASSTHROUGH(nomodel, can_trim)
PASSTHROUGH(nomodel, can_zero)
PASSTHROUGH(nomodel, can_fast_zero)
PASSTHROUGH(nomodel, can_fua)
PASSTHROUGH(nomodel, can_cache)
PASSTHROUGH(nomodel, can_extents)
PASSTHROUGH(nomodel, can_multi_conn)
PASSTHROUGH(nomodel, is_rotational)
PASSTHROUGH(nomodel, list_exports)
PASSTHROUGH(nomodel, preconnect)

#if defined(CONTROL)
NBD_REGISTER_FILTER(nomodel, NBD_PARALLEL, NBD_NEVER_BLOCKS,
  .description = "test: thread model and nonblocking given",
);
#elif defined(SWAPPED)
NBD_REGISTER_FILTER(nomodel, NBD_NEVER_BLOCKS, NBD_PARALLEL,
  .description = "test: thread model and nonblocking swapped",
);
#else
NBD_REGISTER_FILTER(nomodel,
  .description = "test: thread model and nonblocking left out",
  .thread_model = NBD_PARALLEL,
);
#endif
