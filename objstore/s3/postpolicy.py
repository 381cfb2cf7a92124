"""POST Object's form authentication (browser uploads): the signed POST policy and its conditions.

A browser upload carries no Authorization header: the form's ``policy`` field (a base64 JSON
document with an ``expiration`` and ``conditions``) is what the uploader's secret signed, SigV4
(``x-amz-algorithm``, ``x-amz-credential``, ``x-amz-date``, ``x-amz-signature``: the hex
HMAC-SHA256 of the base64 policy under the signing key of the credential's date and region) or
SigV2 (``AWSAccessKeyId``, ``signature``: the base64 HMAC-SHA1 of the policy). As S3 does:

- the policy must not have expired (403 AccessDenied "Invalid according to Policy: Policy expired.");
- every condition must hold: exact matches (``{"acl": "private"}`` or ``["eq", "$key", "a"]``),
  ``["starts-with", "$key", "user/"]`` (for Content-Type, each comma-separated value), and
  ``["content-length-range", min, max]`` on the file's size (EntityTooSmall / EntityTooLarge);
  a failed one is 403 AccessDenied "Invalid according to Policy: Policy Condition failed: [...]";
- every form field but the signature, ``file``, ``policy`` and ``x-ignore-*`` must be named by a
  condition (403 AccessDenied "... Extra input fields: name").

Field names are matched without regard to case. ``key`` is checked after ``${filename}`` is
replaced by the uploaded file's name. Sans-IO: :func:`authorize` is given the form's fields.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Callable

from ..config import User
from . import sigv4
from .errors import (AccessDenied, EntityTooLarge, EntityTooSmall, InvalidAccessKeyId, InvalidArgument,
                     InvalidPolicyDocument, SignatureDoesNotMatch)

__all__ = ["PostAuthorization", "authorize", "check_length", "object_key"]

#: Fields no condition needs to name (S3: "except x-amz-signature, file, policy, and field names
#: that have an x-ignore- prefix"); SigV2's signature fields likewise.
_UNCONDITIONED = frozenset({"x-amz-signature", "file", "policy", "signature", "awsaccesskeyid"})


@dataclass(frozen=True, slots=True, kw_only=True)
class PostAuthorization:
    """A form whose policy is signed, unexpired and met: who uploads, to which key, how much."""

    user: User
    key: str
    min_length: int = 0
    max_length: int | None = None


def object_key(fields: dict[str, str], filename: str | None) -> str:
    """The form's ``key``, with ``${filename}`` replaced by the uploaded file's name."""
    key = fields.get("key")
    if key is None:
        raise InvalidArgument("Bucket POST must contain a field named 'key'.  If it is specified, "
                              "please check the order of the fields.", ArgumentName="key", ArgumentValue="")
    # A browser sends the name alone; older ones sent a full path (C:\\dir\\name).
    name = (filename or "").replace("\\", "/").rsplit("/", 1)[-1]
    return key.replace("${filename}", name)


def _policy_failed(condition: list | dict) -> AccessDenied:
    return AccessDenied("Invalid according to Policy: Policy Condition failed: " + json.dumps(condition))


def _same_signature(expected: str, given: str) -> bool:
    """Constant-time comparison of a form's signature with ours. As bytes: ``compare_digest`` of
    two str raises TypeError when one holds a non-ASCII character, and the given one is anyone's."""
    return hmac.compare_digest(expected.encode("ascii"), given.encode("utf-8", "surrogateescape"))


def _verify_signature(fields: dict[str, str], policy_b64: str, *, lookup_user: Callable[[str], User | None],
                      region: str) -> User:
    if "x-amz-signature" in fields:
        algorithm = fields.get("x-amz-algorithm", "")
        if algorithm != sigv4.ALGORITHM:
            raise InvalidArgument("Only AWS4-HMAC-SHA256 is supported", ArgumentName="x-amz-algorithm",
                                  ArgumentValue=algorithm)
        amz_date = fields.get("x-amz-date", "")
        try:
            sigv4.parse_amz_date(amz_date)
        except ValueError:
            raise InvalidArgument("x-amz-date must be in ISO 8601 basic format (YYYYMMDD'T'HHMMSS'Z')",
                                  ArgumentName="x-amz-date", ArgumentValue=amz_date) from None
        credential = fields.get("x-amz-credential", "")
        parts = credential.split("/")
        if len(parts) != 5 or parts[3:] != ["s3", "aws4_request"] or parts[1] != amz_date[:8]:
            raise InvalidArgument("Invalid credential: expecting <key>/<date of x-amz-date>/<region>/s3/aws4_request",
                                  ArgumentName="x-amz-credential", ArgumentValue=credential)
        access_key, date, cred_region = parts[0], parts[1], parts[2]
        if cred_region != region:
            raise InvalidArgument(f"the region '{cred_region}' is wrong; expecting '{region}'",
                                  ArgumentName="x-amz-credential", ArgumentValue=credential, Region=region)
        user = lookup_user(access_key)
        if user is None:
            raise InvalidAccessKeyId(AWSAccessKeyId=access_key)
        key = sigv4.signing_key(user.secret_key, date, cred_region)
        expected = hmac.new(key, policy_b64.encode("ascii", "replace"), hashlib.sha256).hexdigest()
        if not _same_signature(expected, fields["x-amz-signature"].strip().lower()):
            raise SignatureDoesNotMatch(AWSAccessKeyId=access_key, StringToSign=policy_b64)
        return user
    if "signature" in fields and "awsaccesskeyid" in fields:
        access_key = fields["awsaccesskeyid"]
        user = lookup_user(access_key)
        if user is None:
            raise InvalidAccessKeyId(AWSAccessKeyId=access_key)
        expected_v2 = base64.b64encode(hmac.digest(user.secret_key.encode("utf-8"),
                                                   policy_b64.encode("ascii", "replace"), "sha1")).decode()
        if not _same_signature(expected_v2, fields["signature"].strip()):
            raise SignatureDoesNotMatch(AWSAccessKeyId=access_key, StringToSign=policy_b64)
        return user
    raise AccessDenied("Access Denied: a POST policy must be signed (x-amz-signature or signature)")


def _expiration(document: dict) -> float:
    raw = document.get("expiration")
    if not isinstance(raw, str):
        raise InvalidPolicyDocument("Invalid Policy: Policy missing expiration.")
    try:
        when = datetime.fromisoformat(raw.replace("Z", "+00:00"))
        # S3's expirations are UTC; one without an offset is too, not the gateway's local time
        return (when if when.tzinfo is not None else when.replace(tzinfo=timezone.utc)).timestamp()
    except (ValueError, OverflowError):
        raise InvalidPolicyDocument(f"Invalid Policy: Invalid 'expiration' value: '{raw}'") from None


def authorize(fields: dict[str, str], *, bucket: str, filename: str | None,
              lookup_user: Callable[[str], User | None], region: str, now: float) -> PostAuthorization:
    """Check a POST form's signature and policy. ``fields``: the fields before the file, names
    lower-case; ``filename``: the file part's own name (for ``${filename}``)."""
    policy_b64 = fields.get("policy")
    if policy_b64 is None:
        # Without a policy the upload is anonymous: only a publicly writable bucket would take it.
        raise AccessDenied("Access Denied: anonymous POST uploads are not accepted; sign a POST policy")
    user = _verify_signature(fields, policy_b64, lookup_user=lookup_user, region=region)
    try:
        document = json.loads(base64.b64decode(policy_b64, validate=True).decode("utf-8"))
    except (binascii.Error, ValueError, RecursionError):  # RecursionError: arrays nested ~1000 deep
        raise InvalidPolicyDocument("Invalid Policy: Invalid JSON.") from None
    if not isinstance(document, dict):
        raise InvalidPolicyDocument("Invalid Policy: Invalid JSON.")
    if now > _expiration(document):
        raise AccessDenied("Invalid according to Policy: Policy expired.")
    conditions = document.get("conditions")
    if not isinstance(conditions, list):
        raise InvalidPolicyDocument("Invalid Policy: Policy missing conditions.")

    key = object_key(fields, filename)
    values = {**fields, "key": key, "bucket": bucket}
    named: set[str] = set()
    min_length, max_length = 0, None
    for cond in conditions:
        if isinstance(cond, dict) and len(cond) == 1:
            (name, want), = cond.items()
            op, field = "eq", str(name).lower()
        elif isinstance(cond, list) and len(cond) == 3 and isinstance(cond[0], str):
            op = cond[0].lower()
            if op == "content-length-range":
                lo, hi = cond[1], cond[2]
                # (JSON's true and false are Python ints: not sizes)
                if not (type(lo) is int and type(hi) is int) or lo < 0 or hi < lo:
                    raise InvalidPolicyDocument("Invalid Policy: Invalid content-length-range condition: "
                                                + json.dumps(cond))
                min_length, max_length = max(min_length, lo), hi if max_length is None else min(max_length, hi)
                continue
            if op not in ("eq", "starts-with") or not isinstance(cond[1], str) or not cond[1].startswith("$"):
                raise InvalidPolicyDocument("Invalid Policy: Invalid Condition: " + json.dumps(cond))
            field, want = cond[1][1:].lower(), cond[2]
        else:
            raise InvalidPolicyDocument("Invalid Policy: Invalid Condition: " + json.dumps(cond))
        if not isinstance(want, str):
            raise InvalidPolicyDocument("Invalid Policy: Invalid Condition: " + json.dumps(cond))
        named.add(field)
        got = values.get(field)
        if got is None:
            raise _policy_failed(cond)
        if op == "eq":
            ok = got == want
        elif field == "content-type":
            ok = all(v.strip().startswith(want) for v in got.split(","))
        else:
            ok = got.startswith(want)
        if not ok:
            raise _policy_failed(cond)
    extra = [f for f in fields if f not in named and f not in _UNCONDITIONED and not f.startswith("x-ignore-")]
    if extra:
        raise AccessDenied("Invalid according to Policy: Extra input fields: " + ", ".join(extra))
    return PostAuthorization(user=user, key=key, min_length=min_length, max_length=max_length)


def check_length(auth: PostAuthorization, size: int, *, final: bool) -> None:
    """The file's size against the policy's content-length-range: past the top as soon as it is
    (``final`` False, while the file streams), below the bottom once it has ended."""
    if auth.max_length is not None and size > auth.max_length:
        raise EntityTooLarge(ProposedSize=size, MaxSizeAllowed=auth.max_length)
    if final and size < auth.min_length:
        raise EntityTooSmall(ProposedSize=size, MinSizeAllowed=auth.min_length)
