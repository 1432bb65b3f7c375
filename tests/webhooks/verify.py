#!/usr/bin/env python3
"""Verify one Standard Webhooks delivery (https://www.standardwebhooks.com/).

Written from the specification, independently of Damascus's Rust code, so the two
checking each other means something. Standard library only.

Usage:
    WEBHOOK_ID=... WEBHOOK_TIMESTAMP=... WEBHOOK_SIGNATURE=... \\
        python3 tests/webhooks/verify.py whsec_... < body

Prints "valid" and exits 0 when one v1 signature matches and the timestamp is within
five minutes of now; otherwise prints why on stderr and exits 1 (2 for a usage error).
"""

import base64
import binascii
import hashlib
import hmac
import os
import sys
import time

TOLERANCE_SECS = 5 * 60
PREFIX = "whsec_"


def fail(reason: str) -> None:
    print(f"invalid: {reason}", file=sys.stderr)
    sys.exit(1)


def key_of(secret: str) -> bytes:
    if not secret.startswith(PREFIX):
        fail("the secret does not start with whsec_")
    try:
        key = base64.b64decode(secret[len(PREFIX):], validate=True)
    except binascii.Error:
        fail("the part of the secret after whsec_ is not base64")
    if not 24 <= len(key) <= 64:
        fail(f"the secret's key is {len(key)} bytes, not 24 to 64")
    return key


def main() -> None:
    if len(sys.argv) != 2:
        print(__doc__, file=sys.stderr)
        sys.exit(2)
    key = key_of(sys.argv[1])
    msg_id = os.environ.get("WEBHOOK_ID", "")
    timestamp = os.environ.get("WEBHOOK_TIMESTAMP", "")
    signatures = os.environ.get("WEBHOOK_SIGNATURE", "")
    for name, value in (
        ("WEBHOOK_ID", msg_id),
        ("WEBHOOK_TIMESTAMP", timestamp),
        ("WEBHOOK_SIGNATURE", signatures),
    ):
        if not value.strip():
            fail(f"{name} is missing or empty")
    body = sys.stdin.buffer.read()

    if not timestamp.isascii() or not timestamp.isdigit():
        fail(f"webhook-timestamp {timestamp!r} is not unix seconds")
    age = int(time.time()) - int(timestamp)
    if age > TOLERANCE_SECS:
        fail(f"webhook-timestamp is {age}s old (more than {TOLERANCE_SECS}s): replayed?")
    if -age > TOLERANCE_SECS:
        fail(f"webhook-timestamp is {-age}s in the future (more than {TOLERANCE_SECS}s)")

    signed_content = f"{msg_id}.{timestamp}.".encode() + body
    expected = hmac.new(key, signed_content, hashlib.sha256).digest()
    for entry in signatures.split(" "):
        version, _, encoded = entry.partition(",")
        if version != "v1":
            continue
        try:
            candidate = base64.b64decode(encoded, validate=True)
        except binascii.Error:
            continue
        if hmac.compare_digest(candidate, expected):
            print("valid")
            sys.exit(0)
    fail("no v1 signature matches this body, id and timestamp with this secret")


if __name__ == "__main__":
    main()
