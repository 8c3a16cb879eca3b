/* nbdstack filter ip: let clients in or keep them out by address, before
 * the handshake (nbdkit's ip filter: same keys, same rules).
 *
 * allow= and deny= are comma-separated lists (each key may also be
 * repeated) of: all / any; anyipv4 / allipv4; anyipv6 / allipv6;
 * anyunix / allunix; an IPv4 or IPv6 address, with /NN for a range; and,
 * for clients on a Unix socket, pid:N, uid:N, gid:N (the peer's
 * credentials, SO_PEERCRED).  The rules, as nbdkit's: a client matching
 * allow is let in; else one matching deny is refused; else it is let in.
 * The order of the keys does not matter.  An IPv4 client on a dual-stack
 * socket (::ffff:a.b.c.d) is an IPv4 client: it matches anyipv4 and
 * IPv4 rules, not anyipv6 nor ::/0 (nbdkit matches it as IPv6, so its
 * deny=anyipv4 lets IPv4 clients of a dual-stack socket in); a rule
 * inside ::ffff:0:0/96 is the IPv4 rule it maps (::ffff:10.0.0.0/104 is
 * 10.0.0.0/8).  A link-local client's %scope is not part of its
 * address.  nbdkit's
 * vsock-cid:, vsock-port:, anyvsock, dn: and security: are refused at
 * startup: this server listens on no vsock and has no such checks.
 *
 * It decides in preconnect, before the greeting: a refused client is
 * logged with its address; if no export lets it in, its socket closes
 * before a byte is sent, else the exports that refuse it answer
 * NBD_REP_ERR_POLICY.  The filter changes no request.
 */
#include <arpa/inet.h>
#include <netinet/in.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>

#include "layer.h"
#include "params.h"

struct ip_conf {
  struct nbd_strlist allow, deny;
};

static const struct nbd_param ip_params[] = {
  { "allow", NBD_PARAM_STRING_LIST, offsetof(struct ip_conf, allow), NULL,
    "clients let in: addresses, A.B.C.D/NN, A:B::/NN, all, anyipv4, "
    "anyipv6, anyunix, uid:N, gid:N, pid:N (comma-separated)", NULL, 0 },
  { "deny", NBD_PARAM_STRING_LIST, offsetof(struct ip_conf, deny), NULL,
    "clients kept out (unless allowed), the same forms", NULL, 0 },
  NBD_PARAM_END
};

enum ip_kind { IP_ALL, IP_ANY4, IP_ANY6, IP_ANYUNIX, IP_NET4, IP_NET6,
               IP_PID, IP_UID, IP_GID };

struct ip_rule {
  enum ip_kind kind;
  unsigned char addr[16];       /* IP_NET4 (4 bytes) / IP_NET6 */
  unsigned bits;
  uint64_t id;                  /* IP_PID / IP_UID / IP_GID */
  char text[64];                /* for log lines */
};

struct ip_list {
  struct ip_rule *v;
  size_t n;
};

struct ip_state {
  struct ip_list allow, deny;
};

/* The first 12 bytes of an IPv4-mapped IPv6 address (::ffff:a.b.c.d). */
static const unsigned char ip_mapped[12] =
  { 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff };

/* One item of a list; 0 or -1 with err filled. */
static int
ip_parse_one(const char *key, const char *s, struct ip_rule *r, char *err,
             size_t errlen)
{
  static const struct { const char *name; enum ip_kind kind; } words[] = {
    { "all", IP_ALL }, { "any", IP_ALL }, { "anyipv4", IP_ANY4 },
    { "allipv4", IP_ANY4 }, { "anyipv6", IP_ANY6 }, { "allipv6", IP_ANY6 },
    { "anyunix", IP_ANYUNIX }, { "allunix", IP_ANYUNIX },
  };
  static const struct { const char *prefix; enum ip_kind kind; } ids[] = {
    { "pid:", IP_PID }, { "uid:", IP_UID }, { "gid:", IP_GID },
  };
  char buf[INET6_ADDRSTRLEN + 8], *slash;
  uint64_t bits;
  size_t i;

  memset(r, 0, sizeof *r);
  snprintf(r->text, sizeof r->text, "%s", s);
  for (i = 0; i < sizeof words / sizeof words[0]; i++)
    if (strcmp(s, words[i].name) == 0) {
      r->kind = words[i].kind;
      return 0;
    }
  for (i = 0; i < sizeof ids / sizeof ids[0]; i++)
    if (strncmp(s, ids[i].prefix, 4) == 0) {
      r->kind = ids[i].kind;
      if (params_parse_uint(s + 4, &r->id) == -1 || r->id > UINT32_MAX) {
        snprintf(err, errlen, "%s: '%s': not a number after %s", key, s,
                 ids[i].prefix);
        return -1;
      }
      return 0;
    }
  if (strlen(s) >= sizeof buf)
    goto bad;
  snprintf(buf, sizeof buf, "%s", s);
  if ((slash = strchr(buf, '/')) != NULL)
    *slash++ = '\0';
  if (inet_pton(AF_INET, buf, r->addr) == 1) {
    r->kind = IP_NET4;
    r->bits = 32;
  } else if (inet_pton(AF_INET6, buf, r->addr) == 1) {
    r->kind = IP_NET6;
    r->bits = 128;
  } else
    goto bad;
  if (slash) {
    if (*slash == '\0' || params_parse_uint(slash, &bits) == -1 ||
        bits > r->bits) {
      snprintf(err, errlen, "%s: '%s': the prefix length must be 0 to %u",
               key, s, r->bits);
      return -1;
    }
    r->bits = (unsigned)bits;
  }
  /* An IPv4-mapped rule is an IPv4 rule: mapped clients are IPv4. */
  if (r->kind == IP_NET6 && r->bits >= 96 &&
      memcmp(r->addr, ip_mapped, sizeof ip_mapped) == 0) {
    memmove(r->addr, r->addr + 12, 4);
    memset(r->addr + 4, 0, 12);
    r->kind = IP_NET4;
    r->bits -= 96;
  }
  return 0;
bad:
  snprintf(err, errlen, "%s: '%s' is not an address, A.B.C.D/NN, A:B::/NN, "
           "all, any, anyipv4, anyipv6, anyunix, pid:N, uid:N or gid:N",
           key, s);
  return -1;
}

static int
ip_parse(const char *key, const struct nbd_strlist *in, struct ip_list *out,
         char *err, size_t errlen)
{
  size_t i, n = 0;
  char *copy, *tok, *save;

  for (i = 0; i < in->n; i++)
    n += strlen(in->v[i]) + 1;  /* more than the items */
  if (n && (out->v = calloc(n, sizeof *out->v)) == NULL) {
    snprintf(err, errlen, "out of memory");
    return -1;
  }
  for (i = 0; i < in->n; i++) {
    if ((copy = strdup(in->v[i])) == NULL) {
      snprintf(err, errlen, "out of memory");
      return -1;
    }
    for (tok = strtok_r(copy, ",", &save); tok;
         tok = strtok_r(NULL, ",", &save))
      if (ip_parse_one(key, tok, &out->v[out->n++], err, errlen) == -1) {
        free(copy);
        return -1;
      }
    free(copy);
  }
  return 0;
}

static void
ip_cleanup(struct nbd_layer *layer)
{
  struct ip_state *st = layer->state;

  if (st == NULL)
    return;
  free(st->allow.v);
  free(st->deny.v);
  free(st);
  layer->state = NULL;
}

static int
ip_setup(struct nbd_layer *layer, char *err, size_t errlen)
{
  const struct ip_conf *c = layer->conf;
  struct ip_state *st = calloc(1, sizeof *st);

  if (st == NULL) {
    snprintf(err, errlen, "out of memory");
    return -1;
  }
  layer->state = st;
  if (ip_parse("allow", &c->allow, &st->allow, err, errlen) == -1 ||
      ip_parse("deny", &c->deny, &st->deny, err, errlen) == -1) {
    ip_cleanup(layer);
    return -1;
  }
  return 0;
}

static int
ip_prefix_match(const unsigned char *a, const unsigned char *b,
                unsigned bits)
{
  unsigned full = bits / 8, rest = bits % 8;

  if (memcmp(a, b, full) != 0)
    return 0;
  if (rest == 0)
    return 1;
  return ((a[full] ^ b[full]) & (0xff00u >> rest) & 0xff) == 0;
}

/* The client's address as 4 (IPv4, mapped IPv6 included) or 16 bytes;
 * its family, or 0 when it is not an IP client. */
static int
ip_client_addr(const struct nbd_conn_info *i, unsigned char *a)
{
  char addr[sizeof i->addr];

  if (i->family == AF_INET && inet_pton(AF_INET, i->addr, a) == 1)
    return AF_INET;
  /* getnameinfo writes a link-local peer as fe80::1%eth0. */
  snprintf(addr, sizeof addr, "%s", i->addr);
  addr[strcspn(addr, "%")] = '\0';
  if (i->family == AF_INET6 && inet_pton(AF_INET6, addr, a) == 1) {
    if (memcmp(a, ip_mapped, 12) == 0) {
      memmove(a, a + 12, 4);
      return AF_INET;
    }
    return AF_INET6;
  }
  return 0;
}

static int
ip_match(const struct ip_rule *r, const struct nbd_conn_info *i, int fam,
         const unsigned char *a)
{
  switch (r->kind) {
  case IP_ALL:
    return 1;
  case IP_ANY4:
    return fam == AF_INET;
  case IP_ANY6:
    return fam == AF_INET6;
  case IP_ANYUNIX:
    return i->family == AF_UNIX;
  case IP_NET4:
    return fam == AF_INET && ip_prefix_match(a, r->addr, r->bits);
  case IP_NET6:
    return fam == AF_INET6 && ip_prefix_match(a, r->addr, r->bits);
  case IP_PID:
    return i->family == AF_UNIX && i->has_cred && (uint64_t)i->pid == r->id;
  case IP_UID:
    return i->family == AF_UNIX && i->has_cred && (uint64_t)i->uid == r->id;
  case IP_GID:
    return i->family == AF_UNIX && i->has_cred && (uint64_t)i->gid == r->id;
  }
  return 0;
}

static const struct ip_rule *
ip_find(const struct ip_list *l, const struct nbd_conn_info *i, int fam,
        const unsigned char *a)
{
  size_t k;

  for (k = 0; k < l->n; k++)
    if (ip_match(&l->v[k], i, fam, a))
      return &l->v[k];
  return NULL;
}

/* nbdkit's rules: allow first, then deny, else allow. */
static int
ip_preconnect(struct nbd_ctx *self, struct nbd_ctx *next)
{
  const struct ip_state *st = self->layer->state;
  const struct nbd_conn_info *i = nbd_conn_info(self);
  const struct ip_rule *r;
  unsigned char a[16];
  char who[96];
  int fam;

  if (i == NULL)
    return next_preconnect(next);
  fam = ip_client_addr(i, a);
  if (ip_find(&st->allow, i, fam, a) ||
      (r = ip_find(&st->deny, i, fam, a)) == NULL)
    return next_preconnect(next);
  if (fam)
    snprintf(who, sizeof who, "%s", i->addr);
  else if (i->has_cred)
    snprintf(who, sizeof who, "unix pid %ld uid %ld gid %ld", (long)i->pid,
             (long)i->uid, (long)i->gid);
  else
    snprintf(who, sizeof who, "unknown peer");
  nbd_info("ip: export \"%s\": client %s refused (deny=%s)",
           self->layer->export_name, who, r->text);
  return -EPERM;
}

static int
ip_pwrite_from(struct nbd_ctx *self, struct nbd_ctx *next,
               struct nbd_source *src, uint32_t count, uint64_t offset,
               uint32_t flags)
{
  (void)self;
  return next_pwrite_from(next, src, count, offset, flags);
}

PASSTHROUGH(ip, pread)
PASSTHROUGH(ip, pwrite)
PASSTHROUGH(ip, flush)
PASSTHROUGH(ip, trim)
PASSTHROUGH(ip, zero)
PASSTHROUGH(ip, extents)
PASSTHROUGH(ip, depth)
PASSTHROUGH(ip, cache)
PASSTHROUGH(ip, reopen)
PASSTHROUGH(ip, get_size)
PASSTHROUGH(ip, block_size)
PASSTHROUGH(ip, can_write)
PASSTHROUGH(ip, can_flush)
PASSTHROUGH(ip, can_trim)
PASSTHROUGH(ip, can_zero)
PASSTHROUGH(ip, can_fast_zero)
PASSTHROUGH(ip, can_fua)
PASSTHROUGH(ip, can_cache)
PASSTHROUGH(ip, can_extents)
PASSTHROUGH(ip, can_multi_conn)
PASSTHROUGH(ip, is_rotational)
PASSTHROUGH(ip, list_exports)

NBD_REGISTER_FILTER(ip, NBD_PARALLEL, NBD_NEVER_BLOCKS,
  .description = "let clients in or keep them out by address or Unix "
                 "credentials",
  .params = ip_params,
  .conf_size = sizeof(struct ip_conf),
  .setup = ip_setup,
  .cleanup = ip_cleanup,
  .pwrite_from = ip_pwrite_from,
);
