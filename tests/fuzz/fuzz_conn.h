/* nbdstack fuzzing: one NBD connection fed from a byte string.
 *
 * fuzz_conn_run() serves one connection exactly as the server does
 * (conn_run on a struct nbd_conn set up like server.c's server_accept, torn
 * down like server_conn_thread) over a socketpair.  A helper thread, started
 * once, writes the client bytes into the other end, then shuts it down for
 * writing, and drains and discards everything the server sends, so the
 * server never blocks on a full socket.  The exports are built in-process
 * for every input, so no state carries over from one input to the next.
 *
 * It does not check the server's answers: the harnesses look for crashes,
 * sanitizer reports and leaks, not protocol conformance (the integration
 * tests do that).
 */
#ifndef NBDSTACK_FUZZ_CONN_H
#define NBDSTACK_FUZZ_CONN_H

#include <stddef.h>
#include <stdint.h>

/* Exports of the fuzzing config, in this order (also used as indexes):
 *   ""     memory size=1M                        (read-write)
 *   "win"  offset offset=64k range=512k, memory size=1M
 *   "ro"   memory size=1M, export readonly       */
#define FUZZ_EXPORTS 3
extern const char *const fuzz_export_names[FUZZ_EXPORTS];

/* Serves one connection whose client sends pre[0..prelen) then
 * data[0..len), then EOF.  Aborts on harness failures (not server ones). */
void fuzz_conn_run(const uint8_t *pre, size_t prelen,
                   const uint8_t *data, size_t len);

#endif
