/* nbdstack config file, inside: the parser's state, shared by the
 * reader of lines and values (config_lex.c) and the sections and keys
 * (config.c).  Not for other files. */
#ifndef NBDSTACK_CONFIG_LEX_H
#define NBDSTACK_CONFIG_LEX_H

#include <stdio.h>

#include "config.h"
#include "stack.h"

#define CONFIG_ERRLEN     1024

enum config_section_kind {
  CONFIG_NONE,                  /* before the first header */
  CONFIG_SERVER,
  CONFIG_EXPORT,
  CONFIG_SKIP,                  /* after a bad header: ignore the body */
};

/* An export whose header has been read; it ends at the next header. */
struct config_export_build {
  struct nbd_export *exp;
  int line;                     /* of the header */
  int linked;                   /* in cfg->exports (not a duplicate) */
  int backend_tried;            /* a backend line, good or bad, was seen */
  int seen[16];                 /* line of each export key, for repeats */
  struct nbd_stack stack;       /* the layers (stack.c) */
  char label[128];              /* "export \"NAME\"" */
};

/* Exports already in cfg, for "duplicate export ... (first at line N)". */
struct config_seen_export {
  const char *name;             /* the export's own copy */
  int line;
};

struct config_parser {
  const char *name;             /* file name in messages */
  FILE *errs;
  int nerrs;
  int line;
  struct nbd_config *cfg;
  struct nbd_export **tail;     /* where the next export is linked */
  enum config_section_kind sec;
  int export_headers;           /* [export ...] headers seen, good or bad */
  int server_seen[64];          /* by index in nbd_settings */
  struct config_export_build cur;
  struct config_seen_export *seen;
  size_t nseen, capseen;
  int *listen_lines;            /* line of each cfg->listens[i] */
  size_t nlisten_lines;
};

/* A word of a filter or backend line after quotes are removed. */
struct config_word {
  char *text;
  char *eq;                     /* first '=' outside quotes, or NULL */
};

/* Every message is one line, "name:line: message". */
void config_error(struct config_parser *p, int line, const char *fmt, ...)
  __attribute__((format(printf, 3, 4)));

int config_isspace(int c);
char *config_skip_space(char *s);
void config_trim_end(char *s);
int config_iskeychar(int c);
/* The value of a one-value key, unquoted in place; 0 or -1 (reported). */
int config_scalar(struct config_parser *p, char *v);
/* Splits a layer line into words (quotes removed); their number, or -1
 * (reported).  *out is malloc'd. */
int config_words(struct config_parser *p, char *s, struct config_word **out);
/* Parses "[word]", "[word NAME]" or "[word \"NAME\"]" in place; 0, or -1
 * (reported). */
int config_header_split(struct config_parser *p, char *s, const char **word,
                        size_t *wlen, char **arg);

#endif
