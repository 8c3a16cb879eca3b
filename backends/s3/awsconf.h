/* nbdstack backend s3: where the credentials and the region come from
 * (awsconf.c), in the order botocore (and so boto3, the AWS CLI v1 and
 * nbdkit's S3 plugin) takes them:
 *
 *   1. access-key= / secret-key= / session-token= (each also +FILE); a
 *      key not given comes from its environment variable (nbdstack's
 *      extension: botocore refuses half-given keys);
 *   2. the environment: AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY,
 *      AWS_SESSION_TOKEN (or the older AWS_SECURITY_TOKEN);
 *   3. the shared credentials file ($AWS_SHARED_CREDENTIALS_FILE, else
 *      ~/.aws/credentials), section [PROFILE];
 *   4. the config file ($AWS_CONFIG_FILE, else ~/.aws/config), section
 *      [profile PROFILE] ([default] for the default profile);
 *
 * PROFILE is $AWS_DEFAULT_PROFILE, else $AWS_PROFILE (botocore's order),
 * else "default".  The region: region=, else $AWS_DEFAULT_REGION, else
 * the profile's `region` (the credentials file's before the config
 * file's: botocore merges the first over the second), else us-east-1.  Not
 * supported (an error names them when a profile uses them): role_arn,
 * credential_process, SSO, web identity; nor instance metadata (IMDS).
 *
 * The files are read as botocore reads them (Python's configparser):
 * `#` and `;` start comment lines only (not inline), `key = value` or
 * `key: value`, key names in any case, values stripped, indented lines
 * continue the previous value. */
#ifndef NBDSTACK_S3_AWSCONF_H
#define NBDSTACK_S3_AWSCONF_H

#include <stddef.h>

#define S3_AWS_VALUE_MAX 2100   /* session tokens run to ~1.5 KB */

/* What one profile of one file holds ("" = not there). */
struct s3_aws_profile {
  int found;                  /* the section is there */
  char access[S3_AWS_VALUE_MAX];
  char secret[S3_AWS_VALUE_MAX];
  char token[S3_AWS_VALUE_MAX];   /* aws_session_token, or _security_ */
  char region[S3_AWS_VALUE_MAX];
  char assume[64];            /* role_arn, sso_*, web_identity_token_file:
                               * sources botocore takes before the keys
                               * of the credentials file, and we lack */
  int process;                /* credential_process: after them */
};

/* Looks up profile in the text of a credentials file (config_style 0:
 * section [profile]) or a config file (1: [profile NAME], or [default]).
 * 0, or -1 with err ("LINE: what") for a line configparser refuses or a
 * value too long. */
int s3_aws_profile_parse(const char *text, const char *profile,
                         int config_style, struct s3_aws_profile *p,
                         char *err, size_t errlen);

/* What the backend signs with. */
struct s3_aws_creds {
  char *access, *secret, *token, *region;   /* malloc'd; token may be NULL */
  char source[600];           /* where the keys came from, for the log */
};

/* Resolves the keys' values (NULL = key not given; +FILE allowed) as
 * above.  0, or -1 with err filled. */
int s3_aws_resolve(const char *access_key, const char *secret_key,
                   const char *session_token, const char *region,
                   struct s3_aws_creds *out, char *err, size_t errlen);

void s3_aws_creds_free(struct s3_aws_creds *c);

#endif
