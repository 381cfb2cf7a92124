"""Cache-Control, CDN-Cache-Control and Surrogate-Control parsing (RFC 9111 5.2, RFC 9213)."""

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from headwater.edge.cache.cachecontrol import (
    DELTA_SECONDS_MAX,
    EMPTY,
    parse_cache_control,
    parse_cdn_cache_control,
    parse_surrogate_control,
    response_cache_control,
)


def test_common_response_directives():
    cc = parse_cache_control("public, max-age=60, s-maxage=120, must-revalidate, proxy-revalidate, "
                             "stale-while-revalidate=30, stale-if-error=600, immutable, no-transform")
    assert (cc.public, cc.max_age, cc.s_maxage, cc.must_revalidate, cc.proxy_revalidate) == \
        (True, 60, 120, True, True)
    assert (cc.stale_while_revalidate, cc.stale_if_error, cc.immutable, cc.no_transform) == (30, 600, True, True)
    assert not cc.invalid_freshness and not cc.targeted


def test_names_are_case_insensitive_and_whitespace_and_empty_elements_are_ignored():
    cc = parse_cache_control(" ,, MAX-AGE=5 ,\tNo-Store ,  ,")
    assert cc.max_age == 5 and cc.no_store


@pytest.mark.parametrize("value", ["max-age=abc", "max-age=-1", "max-age=1.5", "max-age", "max-age=",
                                   "max-age=60, max-age=70", "s-maxage=x", "max-age=60 junk",
                                   "max-age==5"])
def test_invalid_or_conflicting_freshness_means_stale(value):
    assert parse_cache_control(value).invalid_freshness


def test_a_repeated_directive_with_one_value_is_fine():
    cc = parse_cache_control("max-age=60, max-age=60")
    assert cc.max_age == 60 and not cc.invalid_freshness


def test_quoted_arguments_are_accepted_and_huge_values_clamp_to_2_31():
    assert parse_cache_control('max-age="60"').max_age == 60
    assert parse_cache_control("s-maxage=99999999999999999999999").s_maxage == DELTA_SECONDS_MAX
    assert parse_cache_control("max-age=2147483649").max_age == DELTA_SECONDS_MAX


def test_no_cache_and_private_with_field_names():
    cc = parse_cache_control('no-cache="Set-Cookie, X-User", private=X-Id, max-age=5')
    assert not cc.no_cache and cc.no_cache_fields == ("set-cookie", "x-user")
    assert not cc.private and cc.private_fields == ("x-id",)
    assert cc.max_age == 5


def test_a_comma_inside_a_quoted_string_does_not_split_the_list():
    cc = parse_cache_control('foo="a, max-age=1", no-store')
    assert cc.max_age is None and cc.no_store


def test_unqualified_forms_win_over_qualified_ones():
    cc = parse_cache_control('no-cache="set-cookie", no-cache, private="x", private, public')
    assert cc.no_cache and cc.no_cache_fields == ()
    assert cc.private and cc.private_fields == () and not cc.public   # private beats public


def test_invalid_stale_windows_are_dropped():
    cc = parse_cache_control("stale-while-revalidate=x, stale-if-error=-5")
    assert cc.stale_while_revalidate is None and cc.stale_if_error is None


def test_malformed_restrictive_directives_still_restrict():
    cc = parse_cache_control("no-store=), private=\"unterminated, max-age=5")
    assert cc.no_store and cc.private


def test_request_directives():
    cc = parse_cache_control("max-stale, min-fresh=10, only-if-cached, no-cache")
    assert cc.max_stale == DELTA_SECONDS_MAX and cc.min_fresh == 10 and cc.only_if_cached and cc.no_cache
    assert parse_cache_control("max-stale=5").max_stale == 5


def test_empty_and_absent():
    assert parse_cache_control(None) is EMPTY and parse_cache_control("") is EMPTY


# --- targeted fields -----------------------------------------------------------------------------

def test_cdn_cache_control_replaces_cache_control():
    h = (("cache-control", "max-age=60, s-maxage=120"), ("cdn-cache-control", "max-age=600"))
    cc = response_cache_control(h)
    assert cc.max_age == 600 and cc.s_maxage is None and cc.targeted


def test_cdn_cache_control_none_lets_a_cdn_store_what_cache_control_forbids():
    # RFC 9213 3.1's own example: no-store for everyone but CDNs.
    cc = response_cache_control((("cache-control", "no-store"), ("cdn-cache-control", "none")))
    assert not cc.no_store and cc.targeted


@pytest.mark.parametrize("value", ["", "Max-Age=5", "max-age=5,", "max-age=5;;", "max-age = 5",
                                   "max-age=5 junk", '"x"'])
def test_an_invalid_cdn_cache_control_is_ignored(value):
    assert parse_cdn_cache_control(value) is None
    cc = response_cache_control((("cache-control", "max-age=7"), ("cdn-cache-control", value)))
    assert cc.max_age == 7 and not cc.targeted


def test_cdn_cache_control_structured_values():
    cc = parse_cdn_cache_control('max-age=600, no-cache="set-cookie", private=?0, must-revalidate;x=1')
    assert cc.max_age == 600 and cc.no_cache_fields == ("set-cookie",)
    assert not cc.private and cc.must_revalidate


def test_surrogate_control_comes_after_cdn_cache_control_and_before_cache_control():
    base = (("cache-control", "max-age=1"), ("surrogate-control", "max-age=60+30, content=\"ESI/1.0\""))
    assert response_cache_control(base).max_age == 60
    assert response_cache_control(base + (("cdn-cache-control", "max-age=9"),)).max_age == 9
    assert parse_surrogate_control(",,") is None


def test_several_field_lines_are_one_list():
    cc = response_cache_control((("cache-control", "public"), ("cache-control", "max-age=5")))
    assert cc.public and cc.max_age == 5


# --- properties ----------------------------------------------------------------------------------

_tokens = st.sampled_from(["max-age", "s-maxage", "no-store", "no-cache", "private", "public",
                           "must-revalidate", "stale-if-error", "x-ext", "immutable"])
_plain = st.text(st.characters(min_codepoint=33, max_codepoint=126, blacklist_characters=',"\\'),
                 max_size=8)
_args = st.one_of(st.none(), st.integers(0, 10**12).map(str), _plain, _plain.map(lambda s: f'"{s}"'))


@given(st.text(max_size=80))
def test_never_crashes_and_values_are_sane(value):
    cc = parse_cache_control(value)
    for v in (cc.max_age, cc.s_maxage, cc.stale_if_error, cc.stale_while_revalidate):
        assert v is None or 0 <= v <= DELTA_SECONDS_MAX
    parse_cdn_cache_control(value)
    parse_surrogate_control(value)


@given(st.lists(st.tuples(_tokens, _args), max_size=6))
# two different values past 2^31: both clamp to 2^31, but they still conflict (hypothesis found it)
@example([("max-age", "3000000000"), ("max-age", "4000000000")])
def test_well_formed_lists_round_trip(pairs):
    value = ", ".join(n if a is None else f"{n}={a}" for n, a in pairs)
    cc = parse_cache_control(value)
    invalid = False
    for name, attr in (("max-age", "max_age"), ("s-maxage", "s_maxage")):
        # the quoted form of an argument counts as the token form (RFC 9111 5.2)
        args = [a if a is None or len(a) < 2 or a[0] != '"' else a[1:-1] for n, a in pairs if n == name]
        if not args:
            assert getattr(cc, attr) is None
        elif all(a is not None and a.isdigit() for a in args) and len(set(map(int, args))) == 1:
            assert getattr(cc, attr) == min(int(args[0]), DELTA_SECONDS_MAX)
        else:
            invalid = True
    assert cc.invalid_freshness is invalid
    if any(n == "no-store" for n, _ in pairs):
        assert cc.no_store


@given(st.integers(0, 10**6), st.integers(0, 10**6))
def test_order_of_unrelated_directives_does_not_matter(a, b):
    x = parse_cache_control(f"max-age={a}, public, stale-if-error={b}")
    y = parse_cache_control(f"stale-if-error={b},public,max-age={a}")
    assert x == y


@pytest.mark.parametrize("value", ['"' * 65536, "a" * 65536 + '"', "a=" + "b" * 65536 + " x",
                                   "max-age=1 x," * 6000, 'a="' + '\\"' * 30000, ", " * 30000])
def test_hostile_values_parse_in_linear_time(value):
    import time
    t = time.perf_counter()
    parse_cache_control(value)
    parse_cdn_cache_control(value)
    parse_surrogate_control(value)
    assert time.perf_counter() - t < 1.0
