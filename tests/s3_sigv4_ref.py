"""Reference AWS SigV4 signatures from Debian's python3-botocore, for
tests/check_s3.c.  Each stdin line is a request, tab-separated:
method host path query body date region access secret token https
(a \x01 in body stands for a newline; token "-" = none; https 1 = payload unsigned, as botocore does for S3
over TLS); each stdout line is botocore's Authorization header."""
import sys

from botocore.auth import S3SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.config import Config
from botocore.credentials import Credentials

for line in sys.stdin:
    (method, host, path, query, body, date, region, ak, sk, token,
     https) = line.rstrip("\n").split("\t")
    url = "%s://%s%s%s" % ("https" if https == "1" else "http", host, path,
                           "?" + query if query else "")
    req = AWSRequest(method=method, url=url, data=body.replace("\x01", "\n").encode(),
                     headers={"Host": host})
    if https == "1":
        req.context["client_config"] = Config(
            s3={"payload_signing_enabled": False})
    req.context["timestamp"] = date
    auth = S3SigV4Auth(Credentials(ak, sk, None if token == "-" else token),
                       "s3", region)
    auth._modify_request_before_signing(req)
    cr = auth.canonical_request(req)
    sts = auth.string_to_sign(req, cr)
    sig = auth.signature(sts, req)
    auth._inject_signature_to_request(req, sig)
    print(req.headers["Authorization"])
