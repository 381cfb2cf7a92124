"""RFC 9111 rules for a shared cache: storing, freshness with TTL clamps, age, the reuse decision,
validation, the 304 merge and invalidation. Time is always passed in (NOW), never read."""

from email.utils import formatdate

import pytest
from hypothesis import given
from hypothesis import strategies as st

from headwater.edge.cache.behaviour import DEFAULT_BEHAVIOUR, Behaviour, FieldPolicy
from headwater.edge.cache.freshness import (
    HEURISTIC_MAX,
    Action,
    conditional_headers,
    current_age,
    decide,
    freshness_lifetime,
    invalidation_paths,
    merge_304,
    parse_http_date,
    served_headers,
    stale_if_error_allowed,
    storable,
    strip_for_storage,
    validates,
)
from headwater.edge.cache.model import StoredResponse, stored_response
from headwater.http.types import Headers, Request

NOW = 1_800_000_000.0
RFC = Behaviour(default_ttl=None)            # RFC heuristics instead of CloudFront's default TTL


def date(t):
    return formatdate(t, usegmt=True)


def req(headers=(), method="GET", path="/v/seg-1.m4s", query=""):
    return Request(method=method, target=path, path=path, query=query, headers=Headers(headers), body=None)


def resp(headers, status=200, *, at=NOW, request_at=None, request=None, size=10):
    """A response received at ``at`` (request sent at ``request_at``), Date = ``at`` by default."""
    hs = list(headers)
    if not any(k.lower() == "date" for k, _ in hs):
        hs.append(("Date", date(at)))
    return stored_response(request or req(), status, hs, request_time=at if request_at is None else request_at,
                           response_time=at, body_size=size)


# --- dates ------------------------------------------------------------------------------------

def test_http_dates_in_all_three_forms():
    t = 784111777.0                         # RFC 9110 5.6.7's example
    assert parse_http_date("Sun, 06 Nov 1994 08:49:37 GMT") == t
    assert parse_http_date("Sunday, 06-Nov-94 08:49:37 GMT") == t
    assert parse_http_date("Sun Nov  6 08:49:37 1994") == t
    assert parse_http_date("yesterday") is None and parse_http_date(None) is None


# --- storable ------------------------------------------------------------------------------------

@pytest.mark.parametrize("status", sorted({200, 203, 204, 300, 301, 308, 404, 405, 410, 414, 501}))
def test_heuristically_cacheable_statuses_are_stored_without_explicit_freshness(status):
    assert storable(req(), resp([], status), RFC)


@pytest.mark.parametrize("status", [302, 307, 400, 403, 500, 502, 503])
def test_other_statuses_need_explicit_freshness(status):
    assert not storable(req(), resp([], status), RFC)
    assert storable(req(), resp([("Cache-Control", "max-age=10")], status), RFC)
    assert storable(req(), resp([("Expires", date(NOW + 10))], status), RFC)


@pytest.mark.parametrize("status", [101, 206, 304])
def test_never_stored_statuses(status):
    assert not storable(req(), resp([("Cache-Control", "max-age=10")], status), RFC)


def test_only_get_responses_are_stored():
    r = resp([("Cache-Control", "max-age=10")])
    assert storable(req(), r, RFC)
    for m in ("HEAD", "POST", "PUT", "OPTIONS"):
        assert not storable(req(method=m), r, RFC)


@pytest.mark.parametrize("cc", ["no-store", "private", "max-age=60, no-store", "public, private"])
def test_no_store_and_private_are_not_stored_by_a_shared_cache(cc):
    assert not storable(req(), resp([("Cache-Control", cc)]), RFC)


def test_private_with_field_names_is_stored_without_those_fields():
    r = resp([("Cache-Control", 'private="x-user", max-age=60'), ("X-User", "alice")])
    assert storable(req(), r, RFC)
    assert ("x-user", "alice") not in strip_for_storage(r).headers


def test_a_public_response_setting_a_cookie_is_stored_without_the_cookie():
    # Stored with its Set-Cookie, one viewer's session was served on every hit.
    r = resp([("Cache-Control", "public, max-age=60"), ("Set-Cookie", "session=victim"), ("ETag", '"a"')])
    assert storable(req(), r, RFC)
    kept = strip_for_storage(r).headers
    assert not any(k == "set-cookie" for k, _ in kept) and ("etag", '"a"') in kept


def test_no_cache_is_stored_but_always_revalidated():
    r = resp([("Cache-Control", "no-cache, max-age=600"), ("ETag", '"a"')])
    assert storable(req(), r, RFC)
    assert decide(req(), r, NOW + 1, RFC).action is Action.REVALIDATE


def test_min_ttl_keeps_even_no_store_as_cloudfront_does():
    forced = Behaviour(min_ttl=30, default_ttl=60, max_ttl=120)
    r = resp([("Cache-Control", "no-store, no-cache, private")])
    assert storable(req(), r, forced)
    assert freshness_lifetime(r, forced) == 30
    assert decide(req(), r, NOW + 29, forced).action is Action.FRESH


AUTH_FORWARDED = Behaviour(key_headers=FieldPolicy("allow", frozenset({"authorization"})))


@pytest.mark.parametrize("cc,ok", [("max-age=60", False), ("public, max-age=60", True),
                                   ("s-maxage=60", True), ("must-revalidate, max-age=60", True)])
def test_authorization_needs_public_s_maxage_or_must_revalidate(cc, ok):
    r = req([("Authorization", "Bearer x")])
    assert storable(r, resp([("Cache-Control", cc)], request=r), AUTH_FORWARDED) is ok


def test_authorization_the_origin_never_saw_does_not_matter():
    r = req([("Authorization", "Bearer x")])
    assert storable(r, resp([("Cache-Control", "max-age=60")], request=r), DEFAULT_BEHAVIOUR)


def test_set_cookie_needs_public_or_s_maxage():
    assert not storable(req(), resp([("Cache-Control", "max-age=60"), ("Set-Cookie", "s=1")]), RFC)
    assert storable(req(), resp([("Cache-Control", "public, max-age=60"), ("Set-Cookie", "s=1")]), RFC)


def test_vary_star_is_not_stored():
    assert not storable(req(), resp([("Cache-Control", "max-age=60"), ("Vary", "*")]), RFC)


def test_request_no_store_only_counts_when_the_behaviour_honours_client_directives():
    r = req([("Cache-Control", "no-store")])
    s = resp([("Cache-Control", "max-age=60")], request=r)
    assert storable(r, s, RFC)
    assert not storable(r, s, Behaviour(default_ttl=None, honour_request_no_cache=True))


# --- freshness lifetime ----------------------------------------------------------------------------

def test_s_maxage_beats_max_age_beats_expires():
    assert freshness_lifetime(resp([("Cache-Control", "max-age=60, s-maxage=120"),
                                    ("Expires", date(NOW + 999))]), RFC) == 120
    assert freshness_lifetime(resp([("Cache-Control", "max-age=60"), ("Expires", date(NOW + 999))]), RFC) == 60
    assert freshness_lifetime(resp([("Expires", date(NOW + 999))]), RFC) == 999


def test_expires_is_relative_to_date_and_an_invalid_one_is_already_expired():
    assert freshness_lifetime(resp([("Date", date(NOW - 100)), ("Expires", date(NOW + 100))]), RFC) == 200
    assert freshness_lifetime(resp([("Expires", "0")]), RFC) == 0
    assert freshness_lifetime(resp([("Expires", date(NOW - 5))]), RFC) == 0


def test_invalid_max_age_is_stale_even_with_last_modified():
    r = resp([("Cache-Control", "max-age=abc"), ("Last-Modified", date(NOW - 86400 * 100))])
    assert freshness_lifetime(r, RFC) == 0


def test_heuristic_is_a_tenth_of_the_last_modified_age_capped():
    assert freshness_lifetime(resp([("Last-Modified", date(NOW - 1000))]), RFC) == 100
    assert freshness_lifetime(resp([("Last-Modified", date(NOW - 10**8))]), RFC) == HEURISTIC_MAX
    assert freshness_lifetime(resp([]), RFC) == 0
    # not heuristically cacheable: no heuristic
    assert freshness_lifetime(resp([("Last-Modified", date(NOW - 1000))], 302), RFC) == 0


def test_cloudfront_ttls_default_and_clamp():
    b = Behaviour(min_ttl=10, default_ttl=100, max_ttl=1000)
    assert freshness_lifetime(resp([]), b) == 100
    assert freshness_lifetime(resp([("Cache-Control", "max-age=5")]), b) == 10
    assert freshness_lifetime(resp([("Cache-Control", "max-age=50")]), b) == 50
    assert freshness_lifetime(resp([("Cache-Control", "s-maxage=5000")]), b) == 1000


def test_errors_without_an_origin_lifetime_get_the_error_ttl():
    b = Behaviour(min_ttl=0, default_ttl=86400, max_ttl=31536000, error_ttl=10)
    assert freshness_lifetime(resp([], 404), b) == 10
    assert freshness_lifetime(resp([], 200), b) == 86400
    assert freshness_lifetime(resp([("Cache-Control", "max-age=300")], 404), b) == 300
    assert freshness_lifetime(resp([], 404), Behaviour(min_ttl=30, default_ttl=60)) == 30
    assert freshness_lifetime(resp([], 410), RFC) == 10


def test_cdn_cache_control_replaces_cache_control_and_expires():
    r = resp([("Cache-Control", "max-age=60"), ("CDN-Cache-Control", "max-age=600"),
              ("Expires", date(NOW + 5))])
    assert freshness_lifetime(r, RFC) == 600
    # a targeted field without a freshness directive: Expires is still ignored -> heuristic/default
    r = resp([("CDN-Cache-Control", "public"), ("Expires", date(NOW + 5))])
    assert freshness_lifetime(r, Behaviour(default_ttl=77)) == 77


# --- age (RFC 9111 4.2.3) ---------------------------------------------------------------------------

def test_age_counts_upstream_age_response_delay_and_resident_time():
    r = resp([("Cache-Control", "max-age=60"), ("Age", "50")], at=NOW, request_at=NOW - 2)
    # corrected_age_value = 50 + 2; resident 10
    assert current_age(r, NOW + 10) == 62
    assert decide(req(), r, NOW + 5, RFC).action is Action.FRESH      # 57 < 60
    assert decide(req(), r, NOW + 9, RFC).action is Action.REVALIDATE  # 61 >= 60


def test_apparent_age_from_a_date_in_the_past():
    r = resp([("Date", date(NOW - 30))], at=NOW)
    assert current_age(r, NOW) == 30
    r = resp([("Date", date(NOW + 30))], at=NOW)                      # a clock ahead of ours
    assert current_age(r, NOW) == 0


@given(age=st.integers(0, 10**6), delay=st.integers(0, 100), resident=st.integers(0, 10**6),
       skew=st.integers(-1000, 1000))
def test_age_is_never_negative_and_grows_with_time(age, delay, resident, skew):
    r = resp([("Date", date(NOW + skew)), ("Age", str(age))], at=NOW, request_at=NOW - delay)
    a = current_age(r, NOW + resident)
    assert a >= age + delay + resident
    assert current_age(r, NOW + resident + 1) == a + 1


# --- the decision ----------------------------------------------------------------------------------

def test_miss_pass_and_fresh():
    r = resp([("Cache-Control", "max-age=60")])
    assert decide(req(), None, NOW, RFC).action is Action.MISS
    assert decide(req(method="POST"), r, NOW, RFC).action is Action.PASS
    d = decide(req(), r, NOW + 59, RFC)
    assert d.action is Action.FRESH and d.age == 59 and d.lifetime == 60
    assert decide(req(method="HEAD"), r, NOW + 1, RFC).action is Action.FRESH


def test_stale_while_revalidate_window():
    r = resp([("Cache-Control", "max-age=60, stale-while-revalidate=30")])
    assert decide(req(), r, NOW + 75, RFC).action is Action.STALE_WHILE_REVALIDATE
    assert decide(req(), r, NOW + 90, RFC).action is Action.STALE_WHILE_REVALIDATE
    assert decide(req(), r, NOW + 91, RFC).action is Action.REVALIDATE


@pytest.mark.parametrize("cc", ["must-revalidate", "proxy-revalidate", "s-maxage=60"])
def test_must_revalidate_proxy_revalidate_and_s_maxage_forbid_stale(cc):
    r = resp([("Cache-Control", f"max-age=60, {cc}, stale-while-revalidate=100, stale-if-error=100")])
    d = decide(req(), r, NOW + 70, RFC)
    assert d.action is Action.REVALIDATE and not d.stale_if_error
    assert not stale_if_error_allowed(r, NOW + 70, RFC)


def test_stale_if_error_window():
    r = resp([("Cache-Control", "max-age=60, stale-if-error=300")])
    d = decide(req(), r, NOW + 100, RFC)
    assert d.action is Action.REVALIDATE and d.stale_if_error
    assert stale_if_error_allowed(r, NOW + 360, RFC)
    assert not stale_if_error_allowed(r, NOW + 361, RFC)
    assert not decide(req(), r, NOW + 361, RFC).stale_if_error
    # a fresh response can always stand in for a failed fetch
    assert stale_if_error_allowed(resp([("Cache-Control", "max-age=60")]), NOW + 1, RFC)


def test_cdn_cache_control_allows_swr_where_s_maxage_forbids_it():
    r = resp([("Cache-Control", "max-age=5"), ("CDN-Cache-Control", "max-age=60, stale-while-revalidate=60")])
    assert decide(req(), r, NOW + 90, RFC).action is Action.STALE_WHILE_REVALIDATE


def test_client_no_cache_is_ignored_unless_the_behaviour_honours_it():
    r = resp([("Cache-Control", "max-age=600")])
    nc = req([("Cache-Control", "no-cache")])
    assert decide(nc, r, NOW + 1, RFC).action is Action.FRESH
    honour = Behaviour(default_ttl=None, honour_request_no_cache=True)
    d = decide(nc, r, NOW + 1, honour)
    assert d.action is Action.REVALIDATE and d.stale_if_error
    assert decide(req([("Pragma", "no-cache")]), r, NOW + 1, honour).action is Action.REVALIDATE
    assert decide(req([("Cache-Control", "max-age=10")]), r, NOW + 11, honour).action is Action.REVALIDATE
    assert decide(req([("Cache-Control", "max-age=10")]), r, NOW + 9, honour).action is Action.FRESH
    immutable = resp([("Cache-Control", "max-age=600, immutable")])
    assert decide(nc, immutable, NOW + 1, honour).action is Action.FRESH


def test_vary_selects_the_stored_response():
    r0 = req([("Accept-Language", "en")])
    s = resp([("Cache-Control", "max-age=60"), ("Vary", "Accept-Language")], request=r0)
    assert decide(req([("Accept-Language", "en")]), s, NOW, RFC).action is Action.FRESH
    assert decide(req([("Accept-Language", "fr")]), s, NOW, RFC).action is Action.MISS
    assert decide(req(), s, NOW, RFC).action is Action.MISS
    star = StoredResponse(200, s.headers, NOW, NOW, 1, (("*", ""),))
    assert decide(r0, star, NOW, RFC).action is Action.MISS


def test_served_headers_set_age_and_drop_no_cache_fields():
    s = resp([("Cache-Control", 'no-cache="set-cookie", max-age=60'), ("Set-Cookie", "a=1"), ("Age", "5")])
    out = served_headers(s, 12.7)
    assert ("age", "12") in out and ("age", "5") not in out
    assert not any(k == "set-cookie" for k, _ in out)


# --- validation and the 304 merge -----------------------------------------------------------------

def test_conditional_headers_from_validators():
    lm = date(NOW - 100)
    s = resp([("ETag", '"v1"'), ("Last-Modified", lm)])
    assert conditional_headers(s) == (("if-none-match", '"v1"'), ("if-modified-since", lm))
    assert conditional_headers(resp([])) == ()


def test_a_304_updates_the_stored_headers_but_not_framing_ones():
    s = resp([("Cache-Control", "max-age=60"), ("ETag", '"v1"'), ("Content-Length", "10"),
              ("Content-Type", "video/mp4"), ("X-Old", "1"), ("X-Multi", "a"), ("X-Multi", "b")],
             at=NOW - 1000)
    h304 = [("Cache-Control", "max-age=120"), ("ETag", '"v1"'), ("Content-Length", "0"),
            ("X-Multi", "c"), ("Date", date(NOW)), ("Connection", "close")]
    assert validates(s, h304)
    m = merge_304(s, h304, request_time=NOW - 1, response_time=NOW)
    assert m.get("cache-control") == "max-age=120" and m.get("content-length") == "10"
    assert m.get_all("x-multi") == ["c"] and m.get("x-old") == "1" and m.get("connection") is None
    assert m.get("content-type") == "video/mp4" and m.body_size == s.body_size
    assert decide(req(), m, NOW + 100, RFC).action is Action.FRESH    # fresh again, age restarted
    assert current_age(m, NOW + 100) == 101


def test_a_304_for_another_representation_does_not_validate():
    s = resp([("ETag", '"v1"'), ("Last-Modified", date(NOW - 50))])
    assert not validates(s, [("ETag", '"v2"')])
    assert validates(s, [("ETag", 'W/"v1"')])                        # weak comparison (13.1.2)
    assert not validates(s, [("Last-Modified", date(NOW - 49))])
    assert validates(s, [("Last-Modified", date(NOW - 50))])
    assert not validates(resp([]), [("ETag", '"v1"')])


# --- invalidation (RFC 9111 4.4) ------------------------------------------------------------------

def test_unsafe_methods_invalidate_target_and_same_origin_locations():
    hs = [("Location", "http://cdn.example/titles/2"), ("Content-Location", "/titles/%7e3?x=1"),
          ("Location", "http://evil.example/titles/4"), ("Content-Location", "https://cdn.example/x")]
    paths = invalidation_paths("POST", 201, "/titles", hs, scheme="http", authority="CDN.example")
    assert paths == ["/titles", "/titles/2", "/titles/~3"]


@pytest.mark.parametrize("method,status", [("GET", 200), ("HEAD", 200), ("POST", 500), ("DELETE", 404),
                                           ("PUT", 101)])
def test_no_invalidation_for_safe_methods_or_errors(method, status):
    assert invalidation_paths(method, status, "/a", [], scheme="http", authority="x") == []


@pytest.mark.parametrize("method", ["PUT", "DELETE", "PATCH", "PURGEME"])
def test_unknown_and_unsafe_methods_invalidate(method):
    assert invalidation_paths(method, 204, "/a", [], scheme="http", authority="x") == ["/a"]
