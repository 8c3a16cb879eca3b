/* nbdstack server settings (settings.c): one table drives the [server]
 * keys of the config file, the long options of the command line, their
 * bounds, the --help lines and the table in docs/config.md.  Adding a
 * server setting is one row there. */
#ifndef NBDSTACK_SETTINGS_H
#define NBDSTACK_SETTINGS_H

#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#include "config.h"

enum setting_type {
  SETTING_UINT,                 /* unsigned, min..max */
  SETTING_BOOL,                 /* int */
  SETTING_DURATION,             /* uint64_t ns; max in us (0 = none) */
  SETTING_SIZE,                 /* uint64_t bytes; at least min */
  SETTING_STRING,               /* char * */
  SETTING_PATH,                 /* char *, not empty */
  SETTING_LISTEN,               /* appended to cfg->listens */
  SETTING_LOG,                  /* char *, a valid `log` value (log.c) */
  SETTING_TLS,                  /* int: NBD_TLS_OFF, _ON or _REQUIRE */
  SETTING_ADDR,                 /* char *, one valid listen address */
};

#define SETTING_REPEAT 1        /* may be given again; order kept */
#define SETTING_FLAG   2        /* bool: the option takes no argument */
#define SETTING_INVERT 4        /* ... and sets the value to no */

struct nbd_setting {
  const char *key;              /* [server] key */
  const char *option;           /* long option, NULL = config file only */
  int shortopt;                 /* 0 = none */
  enum setting_type type;
  size_t offset;                /* field in struct nbd_config */
  uint64_t min, max;
  int flags;
  const char *arg;              /* the option's argument in --help */
  const char *def;              /* the default, for --help and the docs */
  const char *help;             /* one line */
};

/* The table, ending with a row whose key is NULL. */
extern const struct nbd_setting nbd_settings[];

const struct nbd_setting *settings_find(const char *key);
/* Sets s in cfg from text; 0, or -1 with err filled ("invalid value
 * 'x' (expected ...)", no key in it). */
int settings_set(const struct nbd_setting *s, struct nbd_config *cfg,
                 const char *text, char *err, size_t errlen);
/* Writes "a, b, c": every key. */
size_t settings_key_names(char *buf, size_t len);
/* --help lines of the settings that have an option. */
void settings_usage(FILE *fp);
/* The Markdown table of docs/config.md (nbdstack --settings-table). */
void settings_markdown(FILE *fp);

#endif
