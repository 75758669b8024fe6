#!/usr/bin/env python3
"""Signs one request with botocore's SigV4Auth, for router/src/sigv4.rs to compare against.

Reads a JSON object on stdin (credentials never go on the command line):
  method, url, headers ([[name, value], ...], repeats allowed), body_base64,
  region, service, access_key_id, secret_access_key, session_token (or null),
  amz_date (YYYYMMDDTHHMMSSZ, the instant to sign at).
Adds x-amz-content-sha256 (hex SHA-256 of the body, computed here with hashlib) as
shardhook's signer does, lets botocore add the rest, and prints JSON:
  {"headers": [[name, value], ...] (lower-case names, in the order shardhook adds them),
   "canonical_request": "..."}
"""

import base64
import datetime
import hashlib
import json
import sys

try:
    import botocore.auth
    from botocore.awsrequest import AWSRequest
    from botocore.credentials import Credentials
except ImportError as e:
    sys.exit(f"botocore is not importable ({e}): pip install -r tests/sigv4/requirements.txt "
             "(pip install botocore)")

# SigV4Auth.add_auth takes the instant from this module-level function; pin it.
if not hasattr(botocore.auth, "get_current_datetime"):
    sys.exit(f"botocore {botocore.__version__} has no botocore.auth.get_current_datetime to pin "
             "the signing time: pip install -r tests/sigv4/requirements.txt")


class RecordingSigV4Auth(botocore.auth.SigV4Auth):
    """SigV4Auth that keeps the canonical request it signed."""

    canonical = None

    def canonical_request(self, request):
        self.canonical = super().canonical_request(request)
        return self.canonical


def main():
    spec = json.load(sys.stdin)
    instant = datetime.datetime.strptime(spec["amz_date"], "%Y%m%dT%H%M%SZ")
    botocore.auth.get_current_datetime = lambda *args, **kwargs: instant

    body = base64.b64decode(spec["body_base64"])
    request = AWSRequest(method=spec["method"], url=spec["url"], data=body)
    for name, value in spec["headers"]:
        request.headers[name] = value  # HTTPHeaders appends, so repeats stay repeats
    request.headers["X-Amz-Content-SHA256"] = hashlib.sha256(body).hexdigest()

    creds = Credentials(spec["access_key_id"], spec["secret_access_key"], spec["session_token"])
    auth = RecordingSigV4Auth(creds, spec["service"], spec["region"])
    auth.add_auth(request)

    added = ["X-Amz-Date", "X-Amz-Content-SHA256", "X-Amz-Security-Token", "Authorization"]
    headers = [[name.lower(), request.headers[name]] for name in added if name in request.headers]
    json.dump({"headers": headers, "canonical_request": auth.canonical}, sys.stdout)


if __name__ == "__main__":
    main()
