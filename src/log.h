/* nbdstack logging (log.c): one line per message on stderr (with the
 * journal's priority prefixes when stderr is the journal) or to a syslog
 * socket; nbd_debug only with -v.  Layers get it through layer.h. */
#ifndef NBDSTACK_LOG_H
#define NBDSTACK_LOG_H

#include <stddef.h>

void nbd_error(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
void nbd_warn(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
void nbd_info(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
void nbd_debug(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
extern int nbd_verbose;

/* Where lines go from now on: spec is the `log` setting (NULL or
 * "stderr", "syslog", "syslog:/PATH").  0, or -1 with a message in err
 * (an unknown value, a syslog socket that does not answer). */
int log_open(const char *spec, char *err, size_t errlen);
/* Whether spec is a valid `log` value (checked when it is set, so that
 * --check-config sees it); 0, or -1 with err filled. */
int log_check(const char *spec, char *err, size_t errlen);

#endif
