/* nbdstack logging: one line per message on stderr, prefixed with the
 * program name.  Debug messages appear only with -v.  No syslog, no files:
 * under systemd stderr goes to the journal. */
#include <stdarg.h>
#include <stdio.h>

#include "layer.h"
#include "log.h"

int nbd_verbose;

static void
log_vprint(const char *level, const char *fmt, va_list ap)
{
  char line[1024];

  vsnprintf(line, sizeof line, fmt, ap);
  /* One fprintf per line keeps lines from different threads whole. */
  fprintf(stderr, "nbdstack: %s%s\n", level, line);
}

#define LOG_FN(fn, level, cond)                                             \
  void fn(const char *fmt, ...)                                             \
  {                                                                         \
    va_list ap;                                                             \
    if (!(cond))                                                            \
      return;                                                               \
    va_start(ap, fmt);                                                      \
    log_vprint(level, fmt, ap);                                             \
    va_end(ap);                                                             \
  }

LOG_FN(nbd_error, "error: ", 1)
LOG_FN(nbd_warn, "warning: ", 1)
LOG_FN(nbd_info, "", 1)
LOG_FN(nbd_debug, "debug: ", nbd_verbose)
