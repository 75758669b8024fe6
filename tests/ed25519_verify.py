"""Checks Ed25519 signatures with libsodium (PyNaCl), a verifier that shares no code with
shardhook's (ed25519-dalek) or a Carbon app's (Web Crypto): tests/carbon.rs runs it.

Reads one JSON object a line on stdin, {"public_key": hex, "timestamp": text, "body": base64,
"signature": hex}, and prints "valid" or "invalid" for each, in order: the signature must be
over the timestamp's bytes followed by the body's, with no separator, as a Carbon app checks.
"""

import base64
import json
import sys

from nacl.exceptions import BadSignatureError
from nacl.signing import VerifyKey

for line in sys.stdin:
    if not line.strip():
        continue
    item = json.loads(line)
    key = VerifyKey(bytes.fromhex(item["public_key"]))
    message = item["timestamp"].encode() + base64.b64decode(item["body"])
    try:
        key.verify(message, bytes.fromhex(item["signature"]))
        print("valid")
    except BadSignatureError:
        print("invalid")
