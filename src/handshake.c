/* nbdstack handshake: fixed newstyle negotiation (proto.md "Handshake",
 * "Option types", "Option reply types").
 *
 * Export names: a config export of the asked name, else the first
 * "dynamic" export whose stack lists the name (list_exports, layer.h
 * "export names": file dir=), else the any-export-name fallback.
 *
 * Options: EXPORT_NAME, ABORT, LIST, STARTTLS (when `tls` is on or
 * require; the session itself is wire.c's and tls.c's), INFO, GO,
 * STRUCTURED_REPLY, LIST_META_CONTEXT and SET_META_CONTEXT (the
 * contexts of protocol.c's table), EXTENDED_HEADERS.  Extended headers
 * (fixed newstyle only) imply structured replies; STRUCTURED_REPLY after
 * them is NBD_REP_ERR_EXT_HEADER_REQD, a second STRUCTURED_REPLY
 * without them ACK (the spec is silent on it; nbdkit ACKs), a second
 * EXTENDED_HEADERS NBD_REP_ERR_INVALID, and EXPORT_NAME after them drops
 * the connection
 * (the client MUST NOT send it, and it has no error reply), as in qemu.
 * When every export requires TLS, every option but STARTTLS and ABORT
 * gets NBD_REP_ERR_TLS_REQD before TLS; when only some do, INFO, GO and
 * the meta context options naming one get it, EXPORT_NAME drops, and
 * LIST leaves it out.  Unknown options get NBD_REP_ERR_UNSUP and the
 * session goes on; malformed lengths NBD_REP_ERR_INVALID with the stream
 * kept in sync.  Unknown client flags, a bad option magic or an oversized
 * option drop the connection.  Oldstyle negotiation is not offered.
 */
#include <limits.h>
#include <stdlib.h>
#include <string.h>

#include "conn.h"
#include "metrics.h"
#include "stop.h"
#include "protocol.h"
#include "tls.h"

/* One option reply: header, then optional payload. */
static int
handshake_reply(struct nbd_conn *c, uint32_t opt, uint32_t type,
                const void *data, size_t len)
{
  unsigned char h[20];
  struct iovec iov[2];

  wire_put64(h, NBD_REP_MAGIC);
  wire_put32(h + 8, opt);
  wire_put32(h + 12, type);
  wire_put32(h + 16, (uint32_t)len);
  iov[0].iov_base = h;
  iov[0].iov_len = sizeof h;
  iov[1].iov_base = (void *)data;
  iov[1].iov_len = len;
  return wire_writev(&c->w, iov, len ? 2 : 1);
}

static int
handshake_error(struct nbd_conn *c, uint32_t opt, uint32_t type,
                const char *msg)
{
  nbd_debug("%s: option %u: %s", c->peer, opt, msg);
  return handshake_reply(c, opt, type, msg, strlen(msg));
}

/* The names e's stack lists: 1 (dynamic, names in list), 0 (plain: its
 * config name only; also when listing failed, which is logged), -1 when
 * a layer refuses to list by policy (-EPERM: exportname-list=error). */
static int
handshake_list_names(struct nbd_conn *c, struct nbd_export *e,
                     struct nbd_exports *list)
{
  int r = engine_list_exports(e, &c->info, list);

  if (r == -EPERM)
    return -1;
  if (r < 0)
    nbd_error("%s: export \"%s\": list_exports: %s", c->peer, e->name,
              strerror(-r));
  return r > 0;
}

/* The export that serves name; *dynamic is set when a stack's list gave
 * it (the stack then serves the asked name, not its config name). */
static struct nbd_export *
handshake_find_export(struct nbd_conn *c, const char *name, int *dynamic)
{
  struct nbd_exports list = { NULL, 0, 0 };
  struct nbd_export *e;
  int found;

  *dynamic = 0;
  for (e = c->cfg->exports; e; e = e->next)
    if (strcmp(e->name, name) == 0)
      return e;
  for (e = c->cfg->exports; e; e = e->next) {
    if (handshake_list_names(c, e, &list) <= 0)
      continue;
    found = nbd_exports_has(&list, name);
    nbd_exports_clear(&list);
    if (found) {
      *dynamic = 1;
      return e;
    }
  }
  return c->cfg->any_export_name ? c->cfg->exports : NULL;
}

/* proto.md "TLS support", SELECTIVETLS: an export that requires TLS is
 * refused to a client that has not started it (and not listed). */
static int
handshake_tls_refused(const struct nbd_conn *c, const struct nbd_export *e)
{
  return !wire_is_tls(&c->w) &&
         config_export_tls(c->cfg, e) == NBD_TLS_REQUIRE;
}

/* NBD_INFO_NAME: the name the opened stack serves.  A layer that renamed
 * it (exportname's default-export) gives the name the layers below
 * opened with; a dynamic export and the command line's one export (which
 * takes any name, as nbdkit) the name asked for, as nbdkit echoes it; a
 * config export its own name (the default export's, for ""). */
static const char *
handshake_canonical(const struct nbd_conn *c, const struct nbd_export *e,
                    const char *asked, int dynamic)
{
  const struct nbd_ctx *t = c->top;
  const struct nbd_conn_info *info;

  while (t->next)
    t = t->next;
  info = nbd_conn_info((struct nbd_ctx *)t);
  if (info && info->export_name && strcmp(info->export_name, asked) != 0)
    return info->export_name;
  return dynamic || c->cfg->any_export_name ? asked : e->name;
}

/* Transmission flags exactly as the opened stack can serve them. */
static uint16_t
handshake_tflags(const struct nbd_conn *c, const struct nbd_ctx *t)
{
  uint16_t f = NBD_FLAG_HAS_FLAGS;

  if (!t->can_write)
    f |= NBD_FLAG_READ_ONLY;
  if (t->can_flush)
    f |= NBD_FLAG_SEND_FLUSH;
  if (t->can_write && t->can_fua != NBD_FUA_NONE)
    f |= NBD_FLAG_SEND_FUA;
  if (t->is_rotational)
    f |= NBD_FLAG_ROTATIONAL;
  if (t->can_write && t->can_trim)
    f |= NBD_FLAG_SEND_TRIM;
  /* Zero is emulated by writes when the stack lacks it, and a fast zero
   * that would need emulation fails fast, so FAST_ZERO comes with it
   * (as in nbdkit); a stack that zeroes natively advertises FAST_ZERO
   * only when it says it can (nozero's fastzeromode=none says no). */
  if (t->can_write && t->can_zero != NBD_ZERO_NONE) {
    f |= NBD_FLAG_SEND_WRITE_ZEROES;
    if (t->can_zero != NBD_ZERO_NATIVE || t->can_fast_zero)
      f |= NBD_FLAG_SEND_FAST_ZERO;
  }
  if (c->structured)
    f |= NBD_FLAG_SEND_DF;
  /* proto.md: only with extended headers, and only worth saying when a
   * context was selected. */
  if (c->extended && c->meta)
    f |= NBD_FLAG_BLOCK_STAT_PAYLOAD;
  /* One connection at a time (noparallel serialize=connections, wherever
   * it sits, even under a multi-conn filter that would say yes): a
   * client that opened a second connection would wait in the handshake
   * for its own first. */
  if (t->can_multi_conn &&
      !(c->exp && c->exp->model == NBD_SERIALIZE_CONNECTIONS))
    f |= NBD_FLAG_CAN_MULTI_CONN;
  if (t->can_cache != NBD_CACHE_NONE)
    f |= NBD_FLAG_SEND_CACHE;
  return f;
}

/* Opens the export's stack for this connection; -1 on failure (why says
 * it in one line), -2 when the export is at its connection limit, -3
 * when it refused this client before the handshake (conn_preconnect), -4
 * when a layer's open refused it (EBUSY, EPERM, EACCES: the limit
 * filter), with why filled as for -1. */
static int
handshake_open(struct nbd_conn *c, struct nbd_export *e, const char *name,
               char *why, size_t whylen)
{
  char err[512], *asked;

  if (conn_refused(c, e)) {
    nbd_info("%s: export \"%s\" refused this client before the handshake",
             c->peer, e->name);
    metrics_refused(METRICS_REFUSED_IP);
    return -3;
  }
  asked = strdup(name);
  snprintf(why, whylen, "out of memory");
  if (asked == NULL)
    return -1;
  free(c->asked_name);
  c->asked_name = asked;
  c->info.export_name = asked;

  /* An export a reload kept: its layers, lock and count are its
   * origin's, shared with connections of the older set. */
  e = engine_export_origin(e);
  c->exp = e;
  if (e->max_connections && !c->counted) {
    if (__atomic_add_fetch(&e->nconnections, 1, __ATOMIC_SEQ_CST) >
        e->max_connections) {
      __atomic_sub_fetch(&e->nconnections, 1, __ATOMIC_SEQ_CST);
      nbd_info("%s: export \"%s\" has its maximum of %u connections",
               c->peer, e->name, e->max_connections);
      metrics_refused(METRICS_REFUSED_EXPORT_LIMIT);
      return -2;
    }
    c->counted = 1;
  }
  if (e->model == NBD_SERIALIZE_CONNECTIONS && !c->serial_lock_held) {
    pthread_mutex_lock(&e->lock);
    c->serial_lock_held = 1;
  }
  /* A meta context chosen for another export name does not carry over
   * (GO and EXPORT_NAME alike): proto.md lets a client ask for block
   * status when its last SET_META_CONTEXT "referred to the same export
   * name used to enter transmission phase", so the names the client
   * sent are compared, not what they resolve to (with one export on the
   * command line every name is it; the default export has a name of its
   * own in a config file). */
  if (c->meta_export && strcmp(c->meta_export, name) != 0)
    c->meta = 0;
  c->top = engine_open(e, c->readonly || c->cfg->readonly, &c->info, err,
                       sizeof err);
  if (c->top == NULL) {
    int en = errno;
    int busy = en == EBUSY;
    int refused = busy || en == EPERM || en == EACCES;
    nbd_error("%s: export \"%s\": %s", c->peer, e->name, err);
    snprintf(why, whylen, "export \"%.64s\" cannot be opened: %s", e->name,
             err);
    handshake_release(c);
    metrics_refused(busy ? METRICS_REFUSED_LIMIT
                    : refused ? METRICS_REFUSED_POLICY
                    : en == ENOENT ? METRICS_REFUSED_UNKNOWN_EXPORT
                    : METRICS_REFUSED_OPEN_FAILED);
    return refused ? -4 : -1;
  }
  c->tflags = handshake_tflags(c, c->top);
  c->max_payload = NBD_MAX_PAYLOAD;
  if (c->top->max_block && c->top->max_block < c->max_payload)
    c->max_payload = c->top->max_block;
  return 0;
}

/* NBD_OPT_EXPORT_NAME: no error reply exists, so failures drop. */
static int
handshake_export_name(struct nbd_conn *c, const char *name)
{
  int dynamic;
  struct nbd_export *e = handshake_find_export(c, name, &dynamic);
  unsigned char out[8 + 2 + 124];
  char why[640];
  size_t len = c->no_zeroes ? 10 : sizeof out;
  struct iovec iov = { out, len };

  if (e == NULL) {
    nbd_info("%s: unknown export \"%s\" requested", c->peer, name);
    metrics_refused(METRICS_REFUSED_UNKNOWN_EXPORT);
    return -1;
  }
  if (handshake_tls_refused(c, e)) {
    nbd_info("%s: NBD_OPT_EXPORT_NAME of \"%.64s\" without TLS, dropping "
             "(the export requires TLS)", c->peer, name);
    metrics_refused(METRICS_REFUSED_TLS);
    return -1;
  }
  if (handshake_open(c, e, name, why, sizeof why) < 0)
    return -1;
  memset(out, 0, sizeof out);
  wire_put64(out, (uint64_t)c->top->size);
  wire_put16(out + 8, c->tflags);
  return wire_writev(&c->w, &iov, 1);
}

/* Replies NBD_REP_INFO of one type; name is what NBD_INFO_NAME says. */
static int
handshake_info(struct nbd_conn *c, uint32_t opt, uint16_t type,
               const struct nbd_export *e, const char *name)
{
  unsigned char buf[2 + 12 + NBD_MAX_STRING];
  size_t len = 2;
  const char *s;
  struct nbd_ctx *t = c->top;

  wire_put16(buf, type);
  switch (type) {
  case NBD_INFO_EXPORT:
    wire_put64(buf + 2, (uint64_t)t->size);
    wire_put16(buf + 10, c->tflags);
    len += 10;
    break;
  case NBD_INFO_NAME:
  case NBD_INFO_DESCRIPTION:
    s = name;
    if (type == NBD_INFO_DESCRIPTION &&
        (s = next_export_description(t)) == NULL)
      s = e->description;
    if (s == NULL || (type == NBD_INFO_DESCRIPTION && *s == '\0'))
      return 0;
    len += strlen(s) > NBD_MAX_STRING ? NBD_MAX_STRING : strlen(s);
    memcpy(buf + 2, s, len - 2);
    break;
  case NBD_INFO_BLOCK_SIZE:
    wire_put32(buf + 2, t->min_block ? t->min_block : 1);
    wire_put32(buf + 6, t->pref_block ? t->pref_block :
               (t->min_block > 4096 ? t->min_block : 4096));
    wire_put32(buf + 10, c->max_payload);
    len += 12;
    break;
  default:
    return 0;                   /* unknown requests are ignored */
  }
  return handshake_reply(c, opt, NBD_REP_INFO, buf, len);
}

/* NBD_OPT_INFO and NBD_OPT_GO.  Returns 1 when GO succeeded. */
static int
handshake_info_go(struct nbd_conn *c, uint32_t opt, const unsigned char *d,
                  uint32_t len)
{
  uint32_t namelen;
  uint16_t nreq, i, req;
  int want_block = 0, want_name = 0, want_desc = 0, dynamic;
  char name[NBD_MAX_STRING + 1], why[640];
  struct nbd_export *e;

  if (len < 6 || (namelen = wire_get32(d)) > len - 6)
    return handshake_error(c, opt, NBD_REP_ERR_INVALID,
                           "option length too short for its content");
  nreq = wire_get16(d + 4 + namelen);
  if ((uint64_t)len != 6 + (uint64_t)namelen + 2u * nreq)
    return handshake_error(c, opt, NBD_REP_ERR_INVALID,
                           "option length does not match its content");
  if (namelen > NBD_MAX_STRING)
    return handshake_error(c, opt, NBD_REP_ERR_TOO_BIG,
                           "export name longer than 4096 bytes");
  memcpy(name, d + 4, namelen);
  name[namelen] = '\0';
  if (strlen(name) != namelen)
    return handshake_error(c, opt, NBD_REP_ERR_INVALID,
                           "export name contains NUL");
  for (i = 0; i < nreq; i++) {
    req = wire_get16(d + 4 + namelen + 2 + 2 * i);
    want_block |= req == NBD_INFO_BLOCK_SIZE;
    want_name |= req == NBD_INFO_NAME;
    want_desc |= req == NBD_INFO_DESCRIPTION;
  }
  e = handshake_find_export(c, name, &dynamic);
  if (e == NULL) {
    metrics_refused(METRICS_REFUSED_UNKNOWN_EXPORT);
    return handshake_error(c, opt, NBD_REP_ERR_UNKNOWN, "unknown export");
  }
  if (handshake_tls_refused(c, e)) {
    metrics_refused(METRICS_REFUSED_TLS);
    return handshake_error(c, opt, NBD_REP_ERR_TLS_REQD,
                           "this export requires TLS: send "
                           "NBD_OPT_STARTTLS first");
  }
  /* As nbdkit: a stack that cannot be opened is NBD_REP_ERR_UNKNOWN, with
   * the reason for a human (qemu prints it). */
  switch (handshake_open(c, e, name, why, sizeof why)) {
  case -2:
    return handshake_error(c, opt, NBD_REP_ERR_POLICY,
                           "too many connections to this export");
  case -3:
    return handshake_error(c, opt, NBD_REP_ERR_POLICY,
                           "this export does not serve this client");
  case -4:                      /* a layer refused: limit, ... */
    return handshake_error(c, opt, NBD_REP_ERR_POLICY, why);
  case -1:
    return handshake_error(c, opt, NBD_REP_ERR_UNKNOWN, why);
  }
  if (handshake_info(c, opt, NBD_INFO_EXPORT, e, NULL) == -1 ||
      (want_name && handshake_info(c, opt, NBD_INFO_NAME, e,
                                   handshake_canonical(c, e, name,
                                                       dynamic)) == -1) ||
      (want_desc && handshake_info(c, opt, NBD_INFO_DESCRIPTION, e,
                                   NULL) == -1) ||
      /* Constraints beyond the defaults are sent even unrequested. */
      ((want_block || c->top->min_block > 1) &&
       handshake_info(c, opt, NBD_INFO_BLOCK_SIZE, e, NULL) == -1) ||
      handshake_reply(c, opt, NBD_REP_ACK, NULL, 0) == -1)
    return -1;
  if (opt == NBD_OPT_GO)
    return 1;
  handshake_release(c);
  return 0;
}

/* One NBD_REP_SERVER: name, then the description. */
static int
handshake_list_one(struct nbd_conn *c, const char *name, const char *desc)
{
  unsigned char buf[4 + 2 * NBD_MAX_STRING];
  size_t n = strlen(name), dl = desc ? strlen(desc) : 0;

  if (n > NBD_MAX_STRING)
    n = NBD_MAX_STRING;
  if (dl > NBD_MAX_STRING)
    dl = NBD_MAX_STRING;
  wire_put32(buf, (uint32_t)n);
  memcpy(buf + 4, name, n);     /* NOLINT(bugprone-not-null-terminated-result): NBD strings are length-prefixed */
  if (dl)
    memcpy(buf + 4 + n, desc, dl);  /* NOLINT(bugprone-not-null-terminated-result) */
  return handshake_reply(c, NBD_OPT_LIST, NBD_REP_SERVER, buf, 4 + n + dl);
}

/* Plain exports by their config name, dynamic ones by every name their
 * stack lists.  Each listed name raises the bound on options by 4: a
 * client asks INFO and SET_META_CONTEXT of each (handshake_max_options). */
static int
handshake_list(struct nbd_conn *c, uint32_t len, unsigned *max)
{
  struct nbd_exports list = { NULL, 0, 0 };
  struct nbd_export *e;
  size_t i;
  int r = 0;

  if (len != 0)
    return handshake_error(c, NBD_OPT_LIST, NBD_REP_ERR_INVALID,
                           "NBD_OPT_LIST takes no data");
  for (e = c->cfg->exports; e && r == 0; e = e->next) {
    int dynamic;

    if (handshake_tls_refused(c, e))
      continue;                 /* not even its name before TLS */
    dynamic = handshake_list_names(c, e, &list);
    if (dynamic < 0)
      return handshake_error(c, NBD_OPT_LIST, NBD_REP_ERR_POLICY,
                             "the export list is not available");
    if (!dynamic) {
      r = handshake_list_one(c, e->name, e->description);
      continue;
    }
    for (i = 0; i < list.n && r == 0; i++) {
      r = handshake_list_one(c, list.v[i].name, list.v[i].description ?
                             list.v[i].description : e->description);
      if (*max < UINT_MAX - 4)
        *max += 4;
    }
    nbd_exports_clear(&list);
  }
  if (r == -1)
    return -1;
  return handshake_reply(c, NBD_OPT_LIST, NBD_REP_ACK, NULL, 0);
}

/* The contexts (a bit each, protocol.c's proto_meta_names) a query
 * selects: its own name, or, for a LIST only, every context of a
 * namespace given alone ("base:", "qemu:").  proto.md "The base:
 * metadata namespace": the server MUST ignore "base:" in
 * NBD_OPT_SET_META_CONTEXT; an empty leaf name SHOULD NOT select
 * anything there for any namespace. */
static unsigned
handshake_query(const unsigned char *q, uint32_t qlen, int wildcard)
{
  unsigned i, set = 0;
  const char *name;
  size_t n;

  for (i = 0; i < NBD_META_COUNT; i++) {
    name = proto_meta_names[i];
    n = strlen(name);
    if ((qlen == n && memcmp(q, name, n) == 0) ||
        (wildcard && qlen > 0 && qlen < n && q[qlen - 1] == ':' &&
         memchr(q, ':', qlen) == q + qlen - 1 && memcmp(q, name, qlen) == 0))
      set |= 1u << i;
  }
  return set;
}

/* No metadata context selected: block status gets EINVAL. */
static void
handshake_meta_clear(struct nbd_conn *c)
{
  c->meta = 0;
  free(c->meta_export);
  c->meta_export = NULL;
}

static int
handshake_meta(struct nbd_conn *c, uint32_t opt, const unsigned char *d,
               uint32_t len)
{
  unsigned char rep[4 + NBD_MAX_STRING];
  uint32_t namelen, nq, qlen, pos, i;
  char name[NBD_MAX_STRING + 1];
  unsigned found = 0, ctx;
  size_t n;
  int dynamic;
  struct nbd_export *e;

  /* proto.md: SET_META_CONTEXT "replaces all previously-set metadata
   * contexts (including when this command fails)". */
  if (opt == NBD_OPT_SET_META_CONTEXT)
    handshake_meta_clear(c);
  if (!c->structured)
    return handshake_error(c, opt, NBD_REP_ERR_INVALID,
                           "structured replies not negotiated");
  if (len < 8 || (namelen = wire_get32(d)) > len - 8)
    return handshake_error(c, opt, NBD_REP_ERR_INVALID,
                           "option length too short for its content");
  if (namelen > NBD_MAX_STRING)
    return handshake_error(c, opt, NBD_REP_ERR_TOO_BIG, "name too long");
  memcpy(name, d + 4, namelen);
  name[namelen] = '\0';
  nq = wire_get32(d + 4 + namelen);
  /* Walk the queries once to validate every length first. */
  for (pos = 8 + namelen, i = 0; i < nq; i++) {
    if (len - pos < 4 || (qlen = wire_get32(d + pos)) > len - pos - 4)
      return handshake_error(c, opt, NBD_REP_ERR_INVALID,
                             "query length exceeds option length");
    found |= handshake_query(d + pos + 4, qlen,
                             opt == NBD_OPT_LIST_META_CONTEXT);
    pos += 4 + qlen;
  }
  if (pos != len)
    return handshake_error(c, opt, NBD_REP_ERR_INVALID,
                           "option length does not match its content");
  if (strlen(name) != namelen ||
      (e = handshake_find_export(c, name, &dynamic)) == NULL)
    return handshake_error(c, opt, NBD_REP_ERR_UNKNOWN, "unknown export");
  if (handshake_tls_refused(c, e))
    return handshake_error(c, opt, NBD_REP_ERR_TLS_REQD,
                           "this export requires TLS: send "
                           "NBD_OPT_STARTTLS first");
  if (nq == 0 && opt == NBD_OPT_LIST_META_CONTEXT)
    found = (1u << NBD_META_COUNT) - 1;   /* empty list query: all */
  if (opt == NBD_OPT_SET_META_CONTEXT) {
    c->meta = found;
    free(c->meta_export);
    c->meta_export = strdup(name);
  }
  /* Each context once, in id order; LIST gives no ids (0). */
  for (ctx = 0; ctx < NBD_META_COUNT; ctx++) {
    if (!(found & (1u << ctx)))
      continue;
    n = strlen(proto_meta_names[ctx]);
    wire_put32(rep, opt == NBD_OPT_SET_META_CONTEXT ? ctx + 1 : 0);
    memcpy(rep + 4, proto_meta_names[ctx], n);
    if (handshake_reply(c, opt, NBD_REP_META_CONTEXT, rep, 4 + n) == -1)
      return -1;
  }
  return handshake_reply(c, opt, NBD_REP_ACK, NULL, 0);
}

/* NBD_OPT_STARTTLS (proto.md "NBD_OPT_STARTTLS", "TLS support"): ACK,
 * then the TLS handshake on the same socket; the haggling goes on inside
 * it.  What was negotiated in the clear is forgotten, as the spec asks:
 * a man in the middle may have chosen it. */
static int
handshake_starttls(struct nbd_conn *c, uint32_t len)
{
  if (len != 0)
    return handshake_error(c, NBD_OPT_STARTTLS, NBD_REP_ERR_INVALID,
                           "NBD_OPT_STARTTLS takes no data");
  if (wire_is_tls(&c->w))
    return handshake_error(c, NBD_OPT_STARTTLS, NBD_REP_ERR_INVALID,
                           "TLS is already on");
  if (!config_tls_offered(c->cfg) || !tls_server_ready())
    return handshake_error(c, NBD_OPT_STARTTLS, NBD_REP_ERR_UNSUP,
                           "TLS is not enabled on this server");
  if (handshake_reply(c, NBD_OPT_STARTTLS, NBD_REP_ACK, NULL, 0) == -1 ||
      wire_starttls(&c->w) == -1)
    return -1;
  c->info.tls = 1;              /* layers ask (nbd_conn_info) */
  c->structured = 0;
  c->extended = 0;
  handshake_meta_clear(c);
  return 0;
}

/* Handles one option; returns 1 to enter transmission, 0 to continue,
 * -1 to drop the connection. */
static int
handshake_option(struct nbd_conn *c, uint32_t opt, unsigned char *d,
                 uint32_t len, unsigned *max)
{
  char name[NBD_MAX_STRING + 1];

  /* proto.md "TLS support", FORCEDTLS: before TLS only STARTTLS and
   * ABORT; EXPORT_NAME has no error reply, so it drops. */
  if (config_tls_forced(c->cfg) && !wire_is_tls(&c->w) &&
      opt != NBD_OPT_STARTTLS && opt != NBD_OPT_ABORT) {
    /* Counted where a client asks for an export, as elsewhere. */
    if (opt == NBD_OPT_EXPORT_NAME || opt == NBD_OPT_GO ||
        opt == NBD_OPT_INFO)
      metrics_refused(METRICS_REFUSED_TLS);
    if (opt == NBD_OPT_EXPORT_NAME) {
      nbd_info("%s: NBD_OPT_EXPORT_NAME without TLS, dropping", c->peer);
      return -1;
    }
    return handshake_error(c, opt, NBD_REP_ERR_TLS_REQD,
                           "TLS is required: send NBD_OPT_STARTTLS first");
  }
  switch (opt) {
  case NBD_OPT_EXPORT_NAME:
    if (c->extended) {
      nbd_info("%s: NBD_OPT_EXPORT_NAME after extended headers, dropping",
               c->peer);
      return -1;
    }
    if (len > NBD_MAX_STRING)
      return -1;
    memcpy(name, d, len);
    name[len] = '\0';
    return handshake_export_name(c, name) == 0 ? 1 : -1;
  case NBD_OPT_ABORT:
    metrics_handshake_aborted();
    handshake_reply(c, opt, NBD_REP_ACK, NULL, 0);
    return -1;
  case NBD_OPT_LIST:
    return handshake_list(c, len, max);
  case NBD_OPT_STARTTLS:
    return handshake_starttls(c, len);
  case NBD_OPT_INFO:
  case NBD_OPT_GO:
    return handshake_info_go(c, opt, d, len);
  case NBD_OPT_STRUCTURED_REPLY:
    if (len != 0)
      return handshake_error(c, opt, NBD_REP_ERR_INVALID,
                             "NBD_OPT_STRUCTURED_REPLY takes no data");
    if (c->extended)
      return handshake_error(c, opt, NBD_REP_ERR_EXT_HEADER_REQD,
                             "extended headers already negotiated");
    /* A repeat (structured replies already on) is ACKed again: the spec
     * (proto.md with the extended-headers changes) lists only ACK,
     * EXT_HEADER_REQD and UNSUP for this option and is silent on a
     * repeat.  nbdkit 1.32 ACKs it too; qemu 7.2 answers
     * NBD_REP_ERR_INVALID; libnbd reads either as "already negotiated".
     * test_structured_repeat.py. */
    c->structured = 1;
    return handshake_reply(c, opt, NBD_REP_ACK, NULL, 0);
  case NBD_OPT_EXTENDED_HEADERS:
    if (!c->fixed)
      return handshake_error(c, opt, NBD_REP_ERR_UNSUP,
                             "extended headers need fixed newstyle");
    if (len != 0)
      return handshake_error(c, opt, NBD_REP_ERR_INVALID,
                             "NBD_OPT_EXTENDED_HEADERS takes no data");
    if (c->extended)
      return handshake_error(c, opt, NBD_REP_ERR_INVALID,
                             "extended headers already negotiated");
    c->extended = c->structured = 1;
    return handshake_reply(c, opt, NBD_REP_ACK, NULL, 0);
  case NBD_OPT_LIST_META_CONTEXT:
  case NBD_OPT_SET_META_CONTEXT:
    return handshake_meta(c, opt, d, len);
  default:
    return handshake_error(c, opt, NBD_REP_ERR_UNSUP, "unknown option");
  }
}

void
handshake_release(struct nbd_conn *c)
{
  int r;

  if (c->top) {
    if ((r = engine_close(c->top)) < 0)
      nbd_error("%s: close failed: %s", c->peer, strerror(-r));
    c->top = NULL;
  }
  if (c->serial_lock_held) {
    pthread_mutex_unlock(&c->exp->lock);
    c->serial_lock_held = 0;
  }
  if (c->counted) {
    __atomic_sub_fetch(&c->exp->nconnections, 1, __ATOMIC_SEQ_CST);
    c->counted = 0;
  }
}

/* The bound on options per handshake, against a client that would
 * haggle forever: NBD_MAX_OPTIONS, plus four per export, because a
 * client that lists the exports then asks about each one (nbdinfo
 * --list sends INFO and SET_META_CONTEXT for every export) needs that
 * many. */
static unsigned
handshake_max_options(const struct nbd_conn *c)
{
  const struct nbd_export *e;
  unsigned n = NBD_MAX_OPTIONS;

  for (e = c->cfg->exports; e && n < UINT_MAX - 4; e = e->next)
    n += 4;
  return n;
}

/* proto.md "Newstyle negotiation": magic, IHAVEOPT, handshake flags.
 * 18 bytes into a fresh socket: this never waits for the client. */
int
handshake_greet(struct nbd_conn *c)
{
  unsigned char buf[18];
  struct iovec iov = { buf, sizeof buf };

  wire_put64(buf, NBD_MAGIC);
  wire_put64(buf + 8, NBD_IHAVEOPT);
  wire_put16(buf + 16, NBD_FLAG_FIXED_NEWSTYLE | NBD_FLAG_NO_ZEROES);
  if (wire_writev(&c->w, &iov, 1) == -1)
    return -1;
  c->greeted = 1;
  return 0;
}

/* Whether the server implements option opt (handshake_option). */
static int
handshake_known_option(uint32_t opt)
{
  switch (opt) {
  case NBD_OPT_EXPORT_NAME: case NBD_OPT_ABORT: case NBD_OPT_LIST:
  case NBD_OPT_STARTTLS: case NBD_OPT_INFO: case NBD_OPT_GO:
  case NBD_OPT_STRUCTURED_REPLY: case NBD_OPT_LIST_META_CONTEXT:
  case NBD_OPT_SET_META_CONTEXT: case NBD_OPT_EXTENDED_HEADERS:
    return 1;
  default:
    return 0;
  }
}

/* An option longer than we keep (NBD_MAX_OPTION_LEN) but not absurd:
 * its data is read and dropped, so the client stays in sync instead of
 * being hung up on (nbdkit takes options of many megabytes).  One we
 * implement fails with NBD_REP_ERR_TOO_BIG ("the request is too large to
 * process", proto.md); one we do not gets NBD_REP_ERR_UNSUP whatever its
 * length, as the spec asks of every message a server does not implement.
 * EXPORT_NAME has no error reply; an option longer than
 * HANDSHAKE_MAX_SKIP is not worth the read (proto.md lets a server hang
 * up on what looks like a denial of service).  Returns 0 when answered,
 * -1 to drop the client. */
#define HANDSHAKE_MAX_SKIP (8u << 20)

static int
handshake_skip_option(struct nbd_conn *c, uint32_t opt, uint32_t len)
{
  unsigned char scratch[4096];
  uint32_t n;

  if (opt == NBD_OPT_EXPORT_NAME || len > HANDSHAKE_MAX_SKIP)
    return -1;
  for (; len > 0; len -= n) {
    n = len < sizeof scratch ? len : (uint32_t)sizeof scratch;
    if (wire_read(&c->w, scratch, n) == -1)
      return -1;
  }
  if (!handshake_known_option(opt))
    return handshake_error(c, opt, NBD_REP_ERR_UNSUP, "unknown option");
  if (opt == NBD_OPT_SET_META_CONTEXT)
    handshake_meta_clear(c);    /* replaced even when it fails */
  return handshake_error(c, opt, NBD_REP_ERR_TOO_BIG,
                         "option data too long (at most 64 KiB)");
}

int
handshake_run(struct nbd_conn *c)
{
  unsigned char buf[18], *data = NULL;
  uint32_t cflags, opt, len;
  unsigned n, max = handshake_max_options(c);
  int r = -1;

  if (!c->greeted && handshake_greet(c) == -1)
    return -1;
  if (wire_read(&c->w, buf, 4) == -1)
    return -1;
  cflags = wire_get32(buf);
  if (cflags & ~(NBD_FLAG_C_FIXED_NEWSTYLE | NBD_FLAG_C_NO_ZEROES)) {
    nbd_info("%s: unknown client flags 0x%x, dropping", c->peer, cflags);
    return -1;
  }
  c->no_zeroes = !!(cflags & NBD_FLAG_C_NO_ZEROES);
  c->fixed = !!(cflags & NBD_FLAG_C_FIXED_NEWSTYLE);

  for (n = 0; n < max && !server_stopping; n++) {
    if (wire_read(&c->w, buf, 16) == -1)
      break;
    if (wire_get64(buf) != NBD_IHAVEOPT) {
      nbd_info("%s: bad option magic, dropping", c->peer);
      break;
    }
    opt = wire_get32(buf + 8);
    len = wire_get32(buf + 12);
    if (len > NBD_MAX_OPTION_LEN) {
      if (handshake_skip_option(c, opt, len) == 0)
        continue;
      nbd_info("%s: option %u of %u bytes is too long, dropping", c->peer,
               opt, len);
      break;
    }
    free(data);
    data = malloc(len + 1);
    if (data == NULL || wire_read(&c->w, data, len) == -1)
      break;
    r = handshake_option(c, opt, data, len, &max);
    if (r != 0)
      break;
    r = -1;
  }
  if (n == max)
    nbd_info("%s: more than %u options, dropping", c->peer, max);
  free(data);
  if (r == 1)
    return 0;
  if (c->top)
    handshake_release(c);
  return -1;
}
