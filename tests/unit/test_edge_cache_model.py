"""The edge cache's shared model: StoredResponse, hop-by-hop removal, the Vary secondary key."""

import msgpack

from headwater.edge.cache.model import (
    StoredResponse,
    end_to_end,
    stored_response,
    vary_key_of,
    vary_names,
)
from headwater.http.types import Headers, Request


def _req(headers=(), method="GET", path="/a", query=""):
    return Request(method=method, target=path + ("?" + query if query else ""), path=path,
                   query=query, headers=Headers(headers), body=None)


def test_record_round_trip_through_msgpack():
    s = StoredResponse(200, (("etag", '"x"'), ("vary", "accept-encoding")), 10.5, 11.25, 1024,
                       (("accept-encoding", "gzip"),))
    back = StoredResponse.from_record(msgpack.unpackb(msgpack.packb(s.to_record())))
    assert back == s
    assert back.get("etag") == '"x"' and back.get("nope") is None


def test_end_to_end_drops_hop_by_hop_and_connection_named_fields():
    kept = end_to_end([("Connection", "close, X-Secret"), ("X-Secret", "1"), ("Keep-Alive", "t=5"),
                       ("Transfer-Encoding", "chunked"), ("ETag", '"a"'), ("Proxy-Authenticate", "x")])
    assert kept == (("etag", '"a"'),)


def test_vary_key_takes_the_request_values_in_vary_order():
    req = _req([("Accept-Encoding", "gzip"), ("Accept-Language", "en"), ("accept-language", "fr")])
    headers = (("vary", "Accept-Language, accept-encoding"), ("vary", "Accept-Encoding, X-Absent"))
    assert vary_names(headers) == ("accept-language", "accept-encoding", "x-absent")
    assert vary_key_of(req, headers) == (("accept-language", "en, fr"), ("accept-encoding", "gzip"),
                                         ("x-absent", ""))
    assert vary_key_of(req, (("vary", "*"),)) == (("*", ""),)


def test_stored_response_builds_from_an_upstream_answer():
    req = _req([("accept-encoding", "br")])
    s = stored_response(req, 200, [("Vary", "Accept-Encoding"), ("Connection", "keep-alive"),
                                   ("Content-Length", "3")],
                        request_time=1.0, response_time=2.0, body_size=3)
    assert s.headers == (("vary", "Accept-Encoding"), ("content-length", "3"))
    assert s.vary_key == (("accept-encoding", "br"),)
