"""Schemathesis hooks for kurir (loaded by .ci/schemathesis via SCHEMATHESIS_HOOKS).

- A generated `Idempotency-Key` that is valid gets a unique suffix: the
  generator reuses short keys ("0") across cases with different bodies,
  and kurir rightly answers those 422 (a key used with another request),
  which the positive-data check would count as a valid request refused.
- A webhook POST whose generated `X-Hub-Signature-256` has the documented
  shape is signed for real (HMAC-SHA256 of the exact body under
  KURIR_WHATSAPP_APP_SECRET), so the 200 path is tested too; a missing or
  malformed signature is left as generated and must be 401.
- No generated body carries U+0000 (see `filter_body`).
"""

import hashlib
import hmac
import json
import os
import re
import uuid

import schemathesis

KEY = re.compile(r"^[!-~]([ -~]{0,253}[!-~])?$")
SIGNATURE = re.compile(r"^sha256=[0-9A-Fa-f]{64}$")
SECRET = os.environ.get("KURIR_WHATSAPP_APP_SECRET", "").encode()


@schemathesis.hook
def before_call(context, case, **kwargs):
    headers = case.headers or {}
    key = headers.get("Idempotency-Key")
    if isinstance(key, str) and KEY.fullmatch(key):
        headers["Idempotency-Key"] = f"{key[:200]}~{uuid.uuid4().hex}"
    signature = headers.get("X-Hub-Signature-256")
    if (
        case.operation.path == "/v1/webhooks/whatsapp"
        and case.method.upper() == "POST"
        and isinstance(signature, str)
        and SIGNATURE.fullmatch(signature)
    ):
        body = case.body
        # Only a JSON object or array: what stands for "no body" stays unsigned
        # (401). The body is left as it is (requests sends it as
        # `json.dumps(body, allow_nan=False)`, which is what is signed here), so
        # schemathesis still judges the case by what it generated.
        if isinstance(body, (dict, list)):
            raw = json.dumps(body, allow_nan=False).encode()
            digest = hmac.new(SECRET, raw, hashlib.sha256).hexdigest()
            headers["X-Hub-Signature-256"] = f"sha256={digest}"
    if headers:
        case.headers = headers


def _has_nul(value):
    if isinstance(value, str):
        return "\x00" in value
    if isinstance(value, dict):
        return any(_has_nul(k) or _has_nul(v) for k, v in value.items())
    if isinstance(value, list):
        return any(_has_nul(v) for v in value)
    return False


@schemathesis.hook
def filter_body(context, body):
    """No U+0000 anywhere in a generated body.

    Postgres cannot store NUL, and kurir refuses it with 422 naming the
    field. The document says so for kurir's own fields (their patterns) but
    cannot for the free-form parts of Meta's template components (any JSON
    passes through) without a recursive schema, so a NUL generated there
    would be a valid request by the schema that kurir rightly refuses.
    """
    return not _has_nul(body)
