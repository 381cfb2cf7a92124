"""Cache behaviours by path pattern, cache keys (no poisoning through unkeyed inputs), the upstream
request that matches a key, and Vary's secondary key."""

import pytest
from hypothesis import given
from hypothesis import strategies as st

from headwater.config import ConfigError, Reader
from headwater.edge.cache.behaviour import (
    DEFAULT_BEHAVIOUR,
    Behaviour,
    FieldPolicy,
    match_behaviour,
    read_behaviour,
)
from headwater.edge.cache.cachekey import (
    accept_encoding_class,
    cache_key,
    forwarded_headers,
    key_path,
    key_prefix,
    normalise_path,
    upstream_target,
    variant_key,
    variant_key_for,
    vary_matches,
)
from headwater.edge.cache.model import stored_response
from headwater.http.types import Headers, Request


def req(path="/titles/1/seg-1.m4s", query="", headers=(), method="GET"):
    return Request(method=method, target=path + ("?" + query if query else ""), path=path, query=query,
                   headers=Headers(headers), body=None)


KEYED = Behaviour(key_query=FieldPolicy("allow", frozenset({"v", "lang"})),
                  key_headers=FieldPolicy("allow", frozenset({"Origin"})),
                  key_cookies=FieldPolicy("allow", frozenset({"tier"})), compress=True)

# Inputs a cache must never key on unless a behaviour says so (the cache-poisoning vectors).
UNKEYED = [
    ("host", "evil.example"), ("host", "POP-1.example:8081"), ("x-forwarded-host", "evil.example"),
    ("x-original-url", "/admin"), ("x-rewrite-url", "/admin"), ("x-forwarded-scheme", "nothttps"),
    ("x-forwarded-proto", "http"), ("range", "bytes=0-99"), ("if-none-match", '"x"'),
    ("if-modified-since", "Sun, 06 Nov 1994 08:49:37 GMT"), ("if-range", '"x"'),
    ("cache-control", "no-cache"), ("pragma", "no-cache"), ("user-agent", "sqlmap"),
    ("x-http-method-override", "POST"), ("cookie", "session=attacker"), ("authorization", "Bearer x"),
]


# --- behaviours ------------------------------------------------------------------------------------

@pytest.mark.parametrize("pattern,path,ok", [
    ("*", "/anything/at/all", True), ("/titles/*.m4s", "/titles/1/seg-1.m4s", True),
    ("/titles/*.m4s", "/titles/1/seg-1.mpd", False), ("titles/*", "/titles/1", True),
    ("/img/?.png", "/img/a.png", True), ("/img/?.png", "/img/ab.png", False),
    ("/a.b", "/aXb", False), ("/A/*", "/a/x", False), ("/x+y(z)", "/x+y(z)", True),
    ("/titles/*", "/titles/", True), ("/titles/*", "/titles", False),
])
def test_cloudfront_path_patterns(pattern, path, ok):
    assert Behaviour(path_pattern=pattern).matches(path) is ok


def test_first_matching_behaviour_wins_else_the_default():
    seg = Behaviour(path_pattern="/titles/*.m4s", prefetch=3)
    titles = Behaviour(path_pattern="/titles/*", default_ttl=5)
    default = Behaviour(default_ttl=7)
    assert match_behaviour("/titles/1/s.m4s", [seg, titles], default) is seg
    assert match_behaviour("/titles/1/m.mpd", [seg, titles], default) is titles
    assert match_behaviour("/other", [seg, titles], default) is default
    assert match_behaviour("/titles/1/s.m4s", [titles, seg], default) is titles


@pytest.mark.parametrize("kw", [dict(min_ttl=10, max_ttl=5), dict(min_ttl=10, default_ttl=5),
                                dict(min_ttl=-1), dict(prefetch=-1), dict(path_pattern=""),
                                dict(key_headers=FieldPolicy("all")), dict(slice_size=1000)])
def test_bad_behaviours_are_refused(kw):
    with pytest.raises(ValueError):
        Behaviour(**kw)


def test_read_behaviour_from_toml_names_the_bad_key():
    import tomllib
    text = ('[d]\npath_pattern = "/v/*"\nmin_ttl = 1\ndefault_ttl = 10\nkey_query = ["v"]\n'
            'key_cookies = { all_except = ["tracking"] }\nforward_headers = ["X-Trace"]\n'
            'slice_size = "1MiB"\nprefetch = 2\ncompress = true\n')
    reader = Reader("cluster.toml", text)
    b = read_behaviour(reader, tomllib.loads(text)["d"], "d")
    assert b.path_pattern == "/v/*" and b.min_ttl == 1 and b.default_ttl == 10
    assert b.key_query == FieldPolicy("allow", frozenset({"v"}))
    assert b.key_cookies == FieldPolicy("all_except", frozenset({"tracking"}))
    assert b.forward_headers.names == frozenset({"x-trace"})
    assert b.slice_size == 1 << 20 and b.prefetch == 2 and b.compress
    text = '[d]\ndefault_ttl = "heuristic"\nerror_ttl = 3\ncached_methods = ["GET"]\n'
    b = read_behaviour(Reader("c.toml", text), tomllib.loads(text)["d"], "d")
    assert b.default_ttl is None and b.error_ttl == 3 and b.cached_methods == frozenset({"GET"})
    for bad in ('[d]\nunknown = 1\n', '[d]\ncached_methods = ["POST"]\n', '[d]\nslice_size = "3MiB"\n'):
        with pytest.raises(ConfigError):
            read_behaviour(Reader("c.toml", bad), tomllib.loads(bad)["d"], "d")
    bad = '[d]\nmin_ttl = 10\nmax_ttl = 5\n'
    with pytest.raises(ConfigError) as ei:
        read_behaviour(Reader("c.toml", bad), tomllib.loads(bad)["d"], "d")
    assert "min_ttl" in str(ei.value)
    bad = '[d]\nkey_query = 5\n'
    with pytest.raises(ConfigError) as ei:
        read_behaviour(Reader("c.toml", bad), tomllib.loads(bad)["d"], "d")
    assert "d.key_query" in str(ei.value) and "c.toml:2" in str(ei.value)


# --- keys ------------------------------------------------------------------------------------------

@pytest.mark.parametrize("behaviour", [DEFAULT_BEHAVIOUR, KEYED])
@pytest.mark.parametrize("name,value", UNKEYED)
def test_unkeyed_inputs_do_not_change_the_key(behaviour, name, value):
    base = req(query="v=1&utm_source=x", headers=[("Origin", "https://a"), ("Cookie", "tier=gold")])
    poisoned = req(query="v=1&utm_source=y&fbclid=1",
                   headers=[("Origin", "https://a"), ("Cookie", "tier=gold; junk=1"), (name, value)])
    assert cache_key(base, behaviour, distribution="video") == cache_key(poisoned, behaviour, distribution="video")


@pytest.mark.parametrize("change", [
    dict(path="/titles/1/seg-2.m4s"), dict(query="v=2"), dict(query="v=1&lang=fr"),
    dict(headers=[("Origin", "https://b")]), dict(headers=[("Cookie", "tier=free")]),
    dict(headers=[("Accept-Encoding", "br")]),
])
def test_keyed_inputs_change_the_key(change):
    base = dict(path="/titles/1/seg-1.m4s", query="v=1", headers=[])
    a = cache_key(req(**base), KEYED, distribution="video")
    b = cache_key(req(**{**base, **change}), KEYED, distribution="video")
    assert a != b


def test_distribution_is_part_of_the_key_and_get_head_share_it():
    r = req()
    assert cache_key(r, DEFAULT_BEHAVIOUR, distribution="a") != cache_key(r, DEFAULT_BEHAVIOUR, distribution="b")
    assert cache_key(req(method="HEAD"), DEFAULT_BEHAVIOUR) == cache_key(r, DEFAULT_BEHAVIOUR)


def test_query_normalisation_sorts_by_name_keeps_repeat_order_and_decodes_unreserved():
    k = lambda q: cache_key(req(query=q), Behaviour(key_query=FieldPolicy("all")))
    assert k("b=2&a=1") == k("a=1&b=2") == k("a=1&&b=2&") == k("%61=1&b=%32")
    assert k("a=1&a=2") != k("a=2&a=1")                 # repeats are a list: order matters
    assert k("a=%2f") == k("a=%2F") != k("a=/")          # reserved escapes stay escaped
    assert k("a=+") != k("a=%20")                        # '+' is the origin's business


def test_query_allow_and_deny_lists_compare_decoded_names():
    allow = Behaviour(key_query=FieldPolicy("allow", frozenset({"v"})))
    assert cache_key(req(query="%76=1"), allow) == cache_key(req(query="v=1"), allow)
    deny = Behaviour(key_query=FieldPolicy("all_except", frozenset({"utm_source"})))
    assert cache_key(req(query="x=1&utm_source=a"), deny) == cache_key(req(query="x=1"), deny)
    assert cache_key(req(query="x=1"), deny) != cache_key(req(query="x=2"), deny)


def test_path_normalisation():
    assert normalise_path("/a%7Eb/%41%2f%2F") == "/a~b/A%2F%2F"
    assert normalise_path("/a/./b") == "/a/./b"        # an S3 key, not a directory walk
    assert cache_key(req(path="/t/%73eg"), DEFAULT_BEHAVIOUR) == cache_key(req(path="/t/seg"), DEFAULT_BEHAVIOUR)


@pytest.mark.parametrize("value,cls", [("gzip, deflate, br", "br"), ("gzip", "gzip"), ("br;q=0, gzip", "gzip"),
                                       ("*", "br"), ("identity", ""), ("", ""), (None, ""),
                                       ("gzip;q=0", ""), ("GZIP;Q=0.5", "gzip"), ("br;q=bad", ""),
                                       # q-values order the choice; br wins a tie; * fills the rest
                                       ("gzip;q=1.0, br;q=0.5", "gzip"), ("br;q=0.8, gzip;q=0.8", "br"),
                                       ("gzip;q=0.2, *;q=0.5", "br"), ("*;q=0", ""), ("*;q=0, gzip", "gzip"),
                                       ("identity;q=0", ""), ("gzip, identity;q=0", "gzip"),
                                       ("x-gzip", "gzip"), ("br;q=1.5", ""), ("br;q=0.001", "br"),
                                       ("deflate, compress", ""), (" , ;q=1, br", "br")])
def test_accept_encoding_classes(value, cls):
    assert accept_encoding_class(value) == cls


def test_encoding_only_keys_when_compress_is_on():
    plain = req(headers=[("Accept-Encoding", "gzip")])
    br = req(headers=[("Accept-Encoding", "br, gzip")])
    assert cache_key(plain, DEFAULT_BEHAVIOUR) == cache_key(br, DEFAULT_BEHAVIOUR)
    on = Behaviour(compress=True)
    assert cache_key(plain, on) != cache_key(br, on)
    assert cache_key(br, on) == cache_key(req(headers=[("Accept-Encoding", "gzip,br;q=1")]), on)


def test_key_prefix_and_key_path_select_every_variant_of_a_path():
    r = req(path="/t/%7e1", query="v=9", headers=[("Origin", "o"), ("Cookie", "tier=x")])
    k = cache_key(r, KEYED, distribution="video")
    assert k.startswith(key_prefix("video", "/t/~1"))
    assert not cache_key(req(path="/t/~10"), KEYED, distribution="video").startswith(key_prefix("video", "/t/~1"))
    assert key_path(k) == ("video", "/t/~1")


_names = st.sampled_from(["a", "b", "v", "lang", "utm_source", "%76", "x y"])
_vals = st.text(st.sampled_from("ab1%20+/=~"), max_size=4)


@given(st.lists(st.tuples(_names, _vals), max_size=6), st.randoms(use_true_random=False))
def test_key_is_independent_of_the_order_of_distinct_parameter_names(params, rnd):
    # keep one value per (normalised) name so that reordering never reorders a repeated name
    uniq = list({normalise_path(n): (n, v) for n, v in params}.values())
    shuffled = uniq[:]
    rnd.shuffle(shuffled)
    q = lambda ps: "&".join(f"{n}={v}" for n, v in ps)
    for b in (KEYED, Behaviour(key_query=FieldPolicy("all"))):
        assert cache_key(req(query=q(uniq)), b) == cache_key(req(query=q(shuffled)), b)


@given(st.lists(st.tuples(_names, _vals), max_size=6), st.sampled_from([n for n, _ in UNKEYED]),
       st.text(st.characters(min_codepoint=32, max_codepoint=126), max_size=20))
def test_any_unkeyed_header_value_leaves_the_key_alone(params, name, value):
    q = "&".join(f"{n}={v}" for n, v in params)
    assert cache_key(req(query=q), KEYED) == cache_key(req(query=q, headers=[(name, value)]), KEYED)


# --- the upstream request ---------------------------------------------------------------------------

def test_upstream_target_carries_keyed_and_forwarded_parameters_only():
    b = Behaviour(key_query=FieldPolicy("allow", frozenset({"v"})),
                  forward_query=FieldPolicy("allow", frozenset({"sig"})))
    assert upstream_target(req(path="/a%7e", query="z=1&sig=s&v=2"), b) == "/a~?sig=s&v=2"
    assert upstream_target(req(query="z=1"), DEFAULT_BEHAVIOUR) == "/titles/1/seg-1.m4s"


def test_forwarded_headers_never_carry_poisoning_vectors_or_conditionals():
    b = Behaviour(key_headers=FieldPolicy("allow", frozenset({"origin", "range", "host"})),
                  forward_headers=FieldPolicy("allow", frozenset({"x-trace"})),
                  key_cookies=FieldPolicy("allow", frozenset({"tier"})), compress=True)
    r = req(headers=UNKEYED + [("Origin", "o"), ("X-Trace", "t"), ("Cookie", "tier=gold; s=1"),
                               ("Accept-Encoding", "gzip, br"), ("Connection", "close")])
    out = forwarded_headers(r, b)
    # (UNKEYED holds a Range: a Range request is fetched, keyed and served as identity.)
    assert out == [("origin", "o"), ("x-trace", "t"), ("accept-encoding", "identity"), ("cookie", "tier=gold")]
    assert forwarded_headers(r, DEFAULT_BEHAVIOUR) == []
    plain = req(headers=[("Accept-Encoding", "gzip, br"), ("Origin", "o")])
    assert ("accept-encoding", "br") in forwarded_headers(plain, b)


def test_a_range_request_is_keyed_as_identity_under_compress():
    on = Behaviour(compress=True)
    ranged = req(headers=[("Accept-Encoding", "br"), ("Range", "bytes=0-9")])
    assert cache_key(ranged, on) == cache_key(req(), on) != cache_key(req(headers=[("Accept-Encoding", "br")]), on)


# --- Vary ------------------------------------------------------------------------------------------

def test_vary_matching_and_variant_keys():
    first = req(headers=[("Accept-Encoding", "gzip, br"), ("Accept-Language", "en")])
    s = stored_response(first, 200, [("Vary", "Accept-Encoding, Accept-Language")],
                        request_time=0, response_time=0, body_size=0)
    assert vary_matches(req(headers=[("Accept-Encoding", "BR,gzip"), ("Accept-Language", "en")]), s)
    assert not vary_matches(req(headers=[("Accept-Encoding", "gzip"), ("Accept-Language", "en")]), s)
    assert not vary_matches(req(headers=[("Accept-Encoding", "gzip, br"), ("Accept-Language", "EN")]), s)
    k = b"k"
    same = variant_key(k, (("accept-encoding", "br, gzip"), ("accept-language", "en")))
    assert variant_key(k, s.vary_key) == same
    assert variant_key(k, (("accept-encoding", "gzip"), ("accept-language", "en"))) != same
    assert variant_key(k, ()) == k
    fr = req(headers=[("Accept-Encoding", "gzip, br"), ("Accept-Language", "fr")])
    assert variant_key_for(k, fr, s) == variant_key(k, (("accept-encoding", "gzip, br"), ("accept-language", "fr")))
    assert variant_key_for(k, fr, s) != variant_key_for(k, first, s)
