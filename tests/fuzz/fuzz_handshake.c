/* nbdstack fuzzing: the handshake (handshake.c), and after a successful
 * EXPORT_NAME or GO, the request loop (transmission.c).
 *
 * The input is everything the client sends after the server's greeting:
 * the 32-bit client flags, then options (proto.md "Newstyle negotiation"),
 * then possibly requests.  Three exports are served (see fuzz_conn.h).
 */
#include <stddef.h>
#include <stdint.h>

#include "fuzz_conn.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
  fuzz_conn_run(NULL, 0, data, size);
  return 0;
}
