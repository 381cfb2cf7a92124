"""GET/HEAD, copy-source and conditional-write preconditions."""

import pytest

from headwater.http.types import Headers
from headwater.objstore.s3 import errors as e
from headwater.objstore.s3.conditions import (check_copy_source_preconditions, check_get_preconditions,
                                              check_put_preconditions, etag_matches)
from headwater.objstore.s3.xmlio import http_date

ETAG = '"abc"'
LM = 1_700_000_000.0
BEFORE, AFTER = http_date(LM - 100), http_date(LM + 100)


def get(**h):
    check_get_preconditions(Headers([(k.replace("_", "-"), v) for k, v in h.items()]), etag=ETAG, last_modified=LM)


def test_etag_matching():
    assert etag_matches('"abc"', "abc") and etag_matches("abc", ETAG) and etag_matches("*", ETAG)
    assert etag_matches('"x", "abc"', ETAG) and not etag_matches('"x"', ETAG)
    assert not etag_matches('W/"abc"', ETAG) and etag_matches('W/"abc"', ETAG, weak=True)


@pytest.mark.parametrize("headers,outcome", [
    ({}, None),
    ({"if_match": ETAG}, None), ({"if_match": '"zzz"'}, e.PreconditionFailed),
    ({"if_none_match": ETAG}, e.NotModified), ({"if_none_match": '"zzz"'}, None),
    ({"if_modified_since": AFTER}, e.NotModified), ({"if_modified_since": BEFORE}, None),
    ({"if_unmodified_since": BEFORE}, e.PreconditionFailed), ({"if_unmodified_since": AFTER}, None),
    # S3's documented precedence
    ({"if_match": ETAG, "if_unmodified_since": BEFORE}, None),
    ({"if_none_match": ETAG, "if_modified_since": BEFORE}, e.NotModified),
    ({"if_none_match": '"zzz"', "if_modified_since": AFTER}, None),
    ({"if_match": '"zzz"', "if_none_match": ETAG}, e.PreconditionFailed),
    ({"if_modified_since": "not a date"}, None),
])
def test_get_preconditions(headers, outcome):
    if outcome is None:
        get(**headers)
    else:
        with pytest.raises(outcome):
            get(**headers)


def test_not_modified_carries_validators():
    with pytest.raises(e.NotModified) as ei:
        get(if_none_match="*")
    assert ("etag", ETAG) in ei.value.headers


@pytest.mark.parametrize("headers,fails", [
    ({"if-match": ETAG}, False), ({"if-match": '"x"'}, True), ({"if-none-match": ETAG}, True),
    ({"if-modified-since": AFTER}, True), ({"if-unmodified-since": BEFORE}, True),
    ({"if-match": ETAG, "if-unmodified-since": BEFORE}, False),
    ({"if-none-match": '"x"', "if-modified-since": AFTER}, False),
])
def test_copy_source(headers, fails):
    h = Headers([("x-amz-copy-source-" + k, v) for k, v in headers.items()])
    if fails:
        with pytest.raises(e.PreconditionFailed):
            check_copy_source_preconditions(h, etag=ETAG, last_modified=LM)
    else:
        check_copy_source_preconditions(h, etag=ETAG, last_modified=LM)


def test_conditional_put():
    check_put_preconditions(Headers([("if-none-match", "*")]), current_etag=None)
    with pytest.raises(e.PreconditionFailed):
        check_put_preconditions(Headers([("if-none-match", "*")]), current_etag=ETAG)
    check_put_preconditions(Headers([("if-match", ETAG)]), current_etag="abc")
    with pytest.raises(e.PreconditionFailed):
        check_put_preconditions(Headers([("if-match", '"x"')]), current_etag=ETAG)
    with pytest.raises(e.NoSuchKey):
        check_put_preconditions(Headers([("if-match", ETAG)]), current_etag=None)
    with pytest.raises(e.NotImplemented):
        check_put_preconditions(Headers([("if-none-match", ETAG)]), current_etag=None)
    check_put_preconditions(Headers(), current_etag=ETAG)
