"""What every route of the origin's JSON API shares: the route table entry, JSON answers, a
bounded JSON body, query parameters, and who is calling (bearer tokens)."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any, Awaitable, Callable, Sequence
from urllib.parse import parse_qsl

from headwater.http import BodyTooLarge, Request, Response

from ..auth.tokens import AccessToken, AccessTokenVerifier, bearer_token
from ..errors import BadSearch, Forbidden, InvalidJson, PayloadTooLarge

__all__ = ["Route", "Handler", "json_response", "read_json_object", "query_params", "caller",
           "optional_caller", "MAX_JSON_BODY", "MAX_QUERY_FIELDS"]

# A title's metadata is a few KiB at most (description <= 5000 characters, <= 100 people).
MAX_JSON_BODY = 64 * 1024
MAX_QUERY_FIELDS = 16

Handler = Callable[[Request, tuple[str, ...]], Awaitable[Response]]


@dataclass(frozen=True, slots=True)
class Route:
    """``methods`` on the paths ``pattern`` matches in full; its groups are the handler's args."""

    methods: frozenset[str]
    pattern: re.Pattern[str]
    handler: Handler

    @classmethod
    def of(cls, methods: str, pattern: str, handler: Handler) -> Route:
        return cls(frozenset(methods.split()), re.compile(pattern), handler)


def json_response(status: int, doc: Any, extra: Sequence[tuple[str, str]] = ()) -> Response:
    """A JSON answer that no cache keeps (the API's answers depend on the caller and change)."""
    body = json.dumps(doc, separators=(",", ":"), ensure_ascii=False).encode()
    return Response(status, [("content-type", "application/json"), ("content-length", str(len(body))),
                             ("cache-control", "no-store"), *extra], body)


def _no_constants(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    doc: dict[str, Any] = {}
    for k, v in pairs:
        if k in doc:
            raise ValueError(f"the field {k[:40]!r} is given twice")
        doc[k] = v
    return doc


async def read_json_object(request: Request, limit: int = MAX_JSON_BODY) -> dict[str, Any]:
    """The body as one JSON object: 413 past ``limit`` bytes, 400 for anything but an object
    (bad UTF-8, NaN, duplicate keys, nesting too deep for the parser)."""
    declared = request.body.content_length
    if declared is not None and declared > limit:
        raise PayloadTooLarge(f"a JSON body is at most {limit} bytes")
    try:
        raw = await request.body.read_all(limit)
    except BodyTooLarge:
        raise PayloadTooLarge(f"a JSON body is at most {limit} bytes") from None
    if not raw.strip():
        raise InvalidJson("the body is empty: send a JSON object")
    try:
        doc = json.loads(raw.decode("utf-8"), parse_constant=_no_constants, object_pairs_hook=_unique_keys)
    except UnicodeDecodeError:
        raise InvalidJson("the body is not UTF-8") from None
    except RecursionError:
        raise InvalidJson("the body nests too deep") from None
    except ValueError as e:  # json.JSONDecodeError is one
        raise InvalidJson(f"the body is not JSON: {str(e)[:120]}") from None
    if not isinstance(doc, dict):
        raise InvalidJson("the body must be a JSON object")
    return doc


def query_params(request: Request, allowed: frozenset[str]) -> dict[str, str]:
    """The query string's parameters among ``allowed`` (others are ignored: cache busters);
    400 for one given twice or too many fields."""
    try:
        pairs = parse_qsl(request.query, keep_blank_values=True, max_num_fields=MAX_QUERY_FIELDS,
                          errors="replace")
    except ValueError:
        raise BadSearch(f"at most {MAX_QUERY_FIELDS} query parameters") from None
    out: dict[str, str] = {}
    for k, v in pairs:
        if k not in allowed:
            continue
        if k in out:
            raise BadSearch(f"{k[:40]} is given twice")
        out[k] = v
    return out


def caller(verifier: AccessTokenVerifier, request: Request, *scopes: str) -> AccessToken:
    """The request's access token, which must carry one of ``scopes`` (401 without a valid
    token, 403 without the scope)."""
    token = verifier.verify(bearer_token(request.headers.get("authorization")))
    if not token.scopes & set(scopes):
        raise Forbidden(f"this route needs the scope {' or '.join(map(repr, scopes))}")
    return token


def optional_caller(verifier: AccessTokenVerifier, request: Request) -> AccessToken | None:
    """The token of a public route's caller, if one is sent (a bad one is still 401: a client
    that sends a token means to be someone)."""
    if request.headers.get("authorization") is None:
        return None
    return verifier.verify(bearer_token(request.headers.get("authorization")))
