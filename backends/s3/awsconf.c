/* nbdstack backend s3: credentials and region from the keys, the
 * environment and the shared AWS files, in botocore's order (awsconf.h).
 * Only reading: nothing here talks to the network (no IMDS, no STS). */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "awsconf.h"

#define S3_AWS_FILE_MAX (1u << 20)

/* ---- the INI files, as configparser reads them -------------------------- */

/* Whether a config file's section header names profile: "default", or
 * "profile NAME" split as shlex does into exactly two words of which the
 * first starts with "profile" (botocore's build_profile_map; simple
 * quotes only). */
static int
s3_aws_config_section_is(const char *sect, const char *profile)
{
  char words[2][512];
  const char *p = sect;
  int n = 0;

  if (strcmp(sect, "default") == 0 && strcmp(profile, "default") == 0)
    return 1;
  if (strncmp(sect, "profile", 7) != 0)
    return 0;
  while (*p) {
    size_t o = 0;
    while (*p == ' ' || *p == '\t')
      p++;
    if (*p == '\0')
      break;
    if (n == 2)
      return 0;
    while (*p && *p != ' ' && *p != '\t') {
      if (*p == '"' || *p == '\'') {
        const char *q = strchr(p + 1, *p);
        if (q == NULL)
          return 0;             /* shlex: no closing quotation */
        if (o + (size_t)(q - p - 1) >= sizeof words[n])
          return 0;
        memcpy(words[n] + o, p + 1, (size_t)(q - p - 1));
        o += (size_t)(q - p - 1);
        p = q + 1;
      } else {
        if (o + 1 >= sizeof words[n])
          return 0;
        words[n][o++] = *p++;
      }
    }
    words[n++][o] = '\0';
  }
  return n == 2 && strcmp(words[1], profile) == 0;
}

static int
s3_aws_take(char *dst, const char *v, size_t vlen, const char *key,
            unsigned line, char *err, size_t errlen)
{
  if (vlen >= S3_AWS_VALUE_MAX) {
    snprintf(err, errlen, "%u: the value of %s is too long", line, key);
    return -1;
  }
  memcpy(dst, v, vlen);
  dst[vlen] = '\0';
  return 0;
}

int
s3_aws_profile_parse(const char *text, const char *profile, int config_style,
                     struct s3_aws_profile *pr, char *err, size_t errlen)
{
  const char *p = text;
  unsigned line = 0;
  int in_sect = 0, have_sect = 0, have_opt = 0, opt_indent = 0;
  int sec_tok = 0;            /* aws_security_token seen: it wins */

  memset(pr, 0, sizeof *pr);
  while (*p) {
    const char *eol = p + strcspn(p, "\n"), *b = p, *e = eol;
    int indent = 0;

    line++;
    p = *eol ? eol + 1 : eol;
    while (b < e && (*b == ' ' || *b == '\t')) {
      b++;
      indent++;
    }
    while (e > b && (e[-1] == ' ' || e[-1] == '\t' || e[-1] == '\r'))
      e--;
    if (b == e || *b == '#' || *b == ';')
      continue;                 /* empty, or a comment line */
    if (have_sect && have_opt && indent > opt_indent)
      continue;                 /* continues the previous value */
    if (*b == '[') {
      const char *rb = e;
      char sect[512];
      while (rb > b + 1 && rb[-1] != ']')
        rb--;
      if (rb > b + 1 && rb - b - 2 > 0) {
        size_t n = (size_t)(rb - b - 2);
        if (n >= sizeof sect)
          n = sizeof sect - 1;
        memcpy(sect, b + 1, n);
        sect[n] = '\0';
        have_sect = 1;
        have_opt = 0;
        in_sect = config_style ? s3_aws_config_section_is(sect, profile)
                               : strcmp(sect, profile) == 0;
        if (in_sect)
          pr->found = 1;
        continue;
      }
    }
    if (!have_sect) {
      snprintf(err, errlen, "%u: a key before any [section]", line);
      return -1;
    }
    {
      const char *d = b, *ke, *v;
      char key[64];
      size_t kn;
      while (d < e && *d != '=' && *d != ':')
        d++;
      ke = d;
      while (ke > b && (ke[-1] == ' ' || ke[-1] == '\t'))
        ke--;
      if (d == e || ke == b) {
        snprintf(err, errlen, "%u: neither [section] nor key = value", line);
        return -1;
      }
      have_opt = 1;
      opt_indent = indent;
      if (!in_sect)
        continue;
      v = d + 1;
      while (v < e && (*v == ' ' || *v == '\t'))
        v++;
      kn = (size_t)(ke - b);
      if (kn >= sizeof key)
        continue;               /* not one of ours */
      memcpy(key, b, kn);
      key[kn] = '\0';
      /* configparser lowercases key names */
#define TAKE(field, name)                                                     \
      s3_aws_take(pr->field, v, (size_t)(e - v), name, line, err, errlen)
      if (strcasecmp(key, "aws_access_key_id") == 0) {
        if (TAKE(access, key) < 0)
          return -1;
      } else if (strcasecmp(key, "aws_secret_access_key") == 0) {
        if (TAKE(secret, key) < 0)
          return -1;
      } else if (strcasecmp(key, "aws_security_token") == 0) {
        if (TAKE(token, key) < 0)
          return -1;
        sec_tok = 1;
      } else if (strcasecmp(key, "aws_session_token") == 0) {
        if (!sec_tok && TAKE(token, key) < 0)
          return -1;
      } else if (strcasecmp(key, "region") == 0) {
        if (TAKE(region, key) < 0)
          return -1;
      } else if (strcasecmp(key, "credential_process") == 0)
        pr->process = 1;
      else if (strcasecmp(key, "role_arn") == 0 ||
               strcasecmp(key, "sso_start_url") == 0 ||
               strcasecmp(key, "sso_session") == 0 ||
               strcasecmp(key, "web_identity_token_file") == 0) {
        snprintf(pr->assume, sizeof pr->assume, "%s", key);
        for (kn = 0; pr->assume[kn]; kn++)
          if (pr->assume[kn] >= 'A' && pr->assume[kn] <= 'Z')
            pr->assume[kn] += 'a' - 'A';
      }
#undef TAKE
    }
  }
  /* Keys present but empty count as present to botocore ("aws_access_key_id
   * =" is a key with an empty value); an empty access key signs nothing
   * useful, so it is treated as absent. */
  return 0;
}

/* ---- resolution --------------------------------------------------------- */

/* getenv, NULL when unset or empty. */
static const char *
s3_aws_env(const char *name)
{
  const char *v = getenv(name);

  return v && v[0] ? v : NULL;
}

/* A key's value: as given, or +FILE's first line. */
static int
s3_aws_key_value(const char *val, const char *what, char **out, char *err,
                 size_t errlen)
{
  if (val[0] == '+') {
    FILE *f = fopen(val + 1, "r");
    char line[4096];
    if (f == NULL) {
      snprintf(err, errlen, "%s=%s: %s", what, val, strerror(errno));
      return -1;
    }
    if (fgets(line, sizeof line, f) == NULL)
      line[0] = '\0';
    fclose(f);
    line[strcspn(line, "\r\n")] = '\0';
    if (line[0] == '\0') {
      snprintf(err, errlen, "%s=%s: the file is empty", what, val);
      return -1;
    }
    *out = strdup(line);
  } else
    *out = strdup(val);
  if (*out == NULL) {
    snprintf(err, errlen, "out of memory");
    return -1;
  }
  return 0;
}

/* $VAR, else ~/REST (botocore's expanduser: $HOME). */
static void
s3_aws_path(const char *var, const char *rest, char *out, size_t len)
{
  const char *v = s3_aws_env(var), *home = getenv("HOME");

  if (v && strncmp(v, "~/", 2) == 0 && home)
    snprintf(out, len, "%s/%s", home, v + 2);
  else if (v)
    snprintf(out, len, "%s", v);
  else
    snprintf(out, len, "%s/%s", home ? home : "", rest);
}

/* Reads and parses one file: 0 (pr->found may be 0; a missing file is
 * an empty one, as botocore takes it), or -1 with err. */
static int
s3_aws_file(const char *path, const char *profile, int config_style,
            struct s3_aws_profile *pr, char *err, size_t errlen)
{
  FILE *f = fopen(path, "r");
  char *text, perr[200];
  size_t n;

  memset(pr, 0, sizeof *pr);
  if (f == NULL) {
    if (errno == ENOENT || errno == ENOTDIR)
      return 0;
    snprintf(err, errlen, "%s: %s", path, strerror(errno));
    return -1;
  }
  if ((text = malloc(S3_AWS_FILE_MAX + 1)) == NULL) {
    fclose(f);
    snprintf(err, errlen, "out of memory");
    return -1;
  }
  n = fread(text, 1, S3_AWS_FILE_MAX + 1, f);
  fclose(f);
  if (n > S3_AWS_FILE_MAX) {
    free(text);
    snprintf(err, errlen, "%s: larger than 1 MiB", path);
    return -1;
  }
  text[n] = '\0';
  if (strlen(text) != n) {
    free(text);
    snprintf(err, errlen, "%s: a NUL byte: not a text file", path);
    return -1;
  }
  if (s3_aws_profile_parse(text, profile, config_style, pr, perr,
                           sizeof perr) < 0) {
    free(text);
    snprintf(err, errlen, "%s:%s", path, perr);
    return -1;
  }
  free(text);
  return 0;
}

static int
s3_aws_set(struct s3_aws_creds *c, const char *a, const char *s,
           const char *t, char *err, size_t errlen)
{
  c->access = strdup(a);
  c->secret = strdup(s);
  c->token = t && t[0] ? strdup(t) : NULL;
  if (c->access == NULL || c->secret == NULL || (t && t[0] && !c->token)) {
    snprintf(err, errlen, "out of memory");
    return -1;
  }
  return 0;
}

/* Keys from one profile of one file: 1 taken, 0 none there, -1 error. */
static int
s3_aws_from_profile(struct s3_aws_creds *c, const struct s3_aws_profile *pr,
                    const char *path, const char *profile, char *err,
                    size_t errlen)
{
  if (!pr->found)
    return 0;
  if (pr->access[0] == '\0')
    return 0;
  if (pr->secret[0] == '\0') {
    snprintf(err, errlen, "%s: profile %s has aws_access_key_id but no "
             "aws_secret_access_key", path, profile);
    return -1;
  }
  snprintf(c->source, sizeof c->source, "%s, profile %s", path, profile);
  return s3_aws_set(c, pr->access, pr->secret, pr->token, err, errlen) < 0
         ? -1 : 1;
}

int
s3_aws_resolve(const char *access_key, const char *secret_key,
               const char *session_token, const char *region,
               struct s3_aws_creds *c, char *err, size_t errlen)
{
  struct s3_aws_profile cred, conf;
  char cred_path[1024], conf_path[1024];
  const char *profile = s3_aws_env("AWS_DEFAULT_PROFILE"), *pvar, *ea;
  int r;

  memset(c, 0, sizeof *c);
  pvar = profile ? "AWS_DEFAULT_PROFILE" : "AWS_PROFILE";
  if (profile == NULL)
    profile = s3_aws_env("AWS_PROFILE");
  if (profile == NULL) {
    profile = "default";
    pvar = NULL;
  }
  s3_aws_path("AWS_SHARED_CREDENTIALS_FILE", ".aws/credentials", cred_path,
              sizeof cred_path);
  s3_aws_path("AWS_CONFIG_FILE", ".aws/config", conf_path, sizeof conf_path);
  if (s3_aws_file(cred_path, profile, 0, &cred, err, errlen) < 0 ||
      s3_aws_file(conf_path, profile, 1, &conf, err, errlen) < 0)
    return -1;
  /* As boto3: a profile named in the environment must exist. */
  if (pvar && !cred.found && !conf.found) {
    snprintf(err, errlen, "profile '%s' (from %s) is in neither %s nor %s",
             profile, pvar, cred_path, conf_path);
    return -1;
  }

  /* The region: region=, $AWS_DEFAULT_REGION, the profile's, us-east-1. */
  if (region == NULL)
    region = s3_aws_env("AWS_DEFAULT_REGION");
  if (region == NULL && cred.found && cred.region[0])
    region = cred.region;
  if (region == NULL && conf.found && conf.region[0])
    region = conf.region;
  if ((c->region = strdup(region ? region : "us-east-1")) == NULL)
    goto oom;

  /* 1. The keys (a key not given from its environment variable). */
  if (access_key || secret_key) {
    const char *es = s3_aws_env("AWS_SECRET_ACCESS_KEY");
    ea = s3_aws_env("AWS_ACCESS_KEY_ID");
    if ((access_key == NULL && ea == NULL) ||
        (secret_key == NULL && es == NULL)) {
      snprintf(err, errlen, "%s= is given but not %s= (nor %s)",
               access_key ? "access-key" : "secret-key",
               access_key ? "secret-key" : "access-key",
               access_key ? "AWS_SECRET_ACCESS_KEY" : "AWS_ACCESS_KEY_ID");
      return -1;
    }
    if (access_key ? s3_aws_key_value(access_key, "access-key", &c->access,
                                      err, errlen) < 0
                   : (c->access = strdup(ea)) == NULL)
      return -1;
    if (secret_key ? s3_aws_key_value(secret_key, "secret-key", &c->secret,
                                      err, errlen) < 0
                   : (c->secret = strdup(es)) == NULL)
      return -1;
    /* A session token belongs to its access key: from the environment
     * only along with the access key. */
    if (session_token) {
      if (s3_aws_key_value(session_token, "session-token", &c->token, err,
                           errlen) < 0)
        return -1;
    } else if (access_key == NULL) {
      const char *t = getenv("AWS_SECURITY_TOKEN") ? getenv("AWS_SECURITY_TOKEN")
                                                   : getenv("AWS_SESSION_TOKEN");
      if (t && t[0] && (c->token = strdup(t)) == NULL)
        goto oom;
    }
    snprintf(c->source, sizeof c->source, "access-key=/secret-key=%s",
             access_key && secret_key ? "" : " and the environment");
    return 0;
  }
  if (session_token) {
    snprintf(err, errlen, "session-token= needs access-key= and secret-key=");
    return -1;
  }

  /* 2. The environment. */
  if ((ea = s3_aws_env("AWS_ACCESS_KEY_ID")) != NULL) {
    const char *es = s3_aws_env("AWS_SECRET_ACCESS_KEY");
    const char *t = getenv("AWS_SECURITY_TOKEN") ? getenv("AWS_SECURITY_TOKEN")
                                                 : getenv("AWS_SESSION_TOKEN");
    if (es == NULL) {
      snprintf(err, errlen, "AWS_ACCESS_KEY_ID is set but not "
               "AWS_SECRET_ACCESS_KEY");
      return -1;
    }
    snprintf(c->source, sizeof c->source, "the environment");
    return s3_aws_set(c, ea, es, t, err, errlen);
  }

  /* Sources botocore tries before the files' keys, which we lack. */
  if (s3_aws_env("AWS_WEB_IDENTITY_TOKEN_FILE") && s3_aws_env("AWS_ROLE_ARN")) {
    snprintf(err, errlen, "AWS_WEB_IDENTITY_TOKEN_FILE and AWS_ROLE_ARN ask "
             "for web identity credentials, which nbdstack does not "
             "support: give access-key= and secret-key=");
    return -1;
  }
  if (cred.assume[0] || conf.assume[0]) {
    snprintf(err, errlen, "%s: profile %s takes its credentials through %s, "
             "which nbdstack does not support: give aws_access_key_id and "
             "aws_secret_access_key, or access-key= and secret-key=",
             cred.assume[0] ? cred_path : conf_path, profile,
             cred.assume[0] ? cred.assume : conf.assume);
    return -1;
  }
  /* 3. The shared credentials file. */
  if ((r = s3_aws_from_profile(c, &cred, cred_path, profile, err,
                               errlen)) != 0)
    return r < 0 ? -1 : 0;
  if (cred.process || conf.process) {
    snprintf(err, errlen, "%s: profile %s takes its credentials through "
             "credential_process, which nbdstack does not support: give "
             "aws_access_key_id and aws_secret_access_key, or access-key= "
             "and secret-key=", cred.process ? cred_path : conf_path,
             profile);
    return -1;
  }
  /* 4. The config file. */
  if ((r = s3_aws_from_profile(c, &conf, conf_path, profile, err,
                               errlen)) != 0)
    return r < 0 ? -1 : 0;
  snprintf(err, errlen, "no credentials: give access-key= and secret-key= "
           "(or +FILE), set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or "
           "put aws_access_key_id and aws_secret_access_key in profile %s of "
           "%s or %s", profile, cred_path, conf_path);
  return -1;
oom:
  snprintf(err, errlen, "out of memory");
  return -1;
}

void
s3_aws_creds_free(struct s3_aws_creds *c)
{
  if (c->secret)
    memset(c->secret, 0, strlen(c->secret));
  free(c->access);
  free(c->secret);
  free(c->token);
  free(c->region);
  memset(c, 0, sizeof *c);
}
