/* nbdstack logging (log.c): one line per message on stderr; nbd_debug
 * only with -v.  Layers get it through layer.h. */
#ifndef NBDSTACK_LOG_H
#define NBDSTACK_LOG_H

void nbd_error(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
void nbd_warn(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
void nbd_info(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
void nbd_debug(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
extern int nbd_verbose;

#endif
