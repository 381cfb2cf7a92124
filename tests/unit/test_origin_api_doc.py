"""The catalogue API's sans-IO parts: request fields checked for names and types, a title's JSON,
and catalogue errors mapped to the origin's wire table."""

from __future__ import annotations

from dataclasses import replace

import pytest

from headwater.origin.api.title_doc import draft_of, parse_create, parse_patch, title_json
from headwater.origin.catalogue import (BackendUnavailable, BadQuery, IllegalTransition, InvalidTitle, Person,
                                        Rendition, Title, TitleNotFound, TitleState, parse_search_params)
from headwater.origin.errors import InvalidJson, from_catalogue, wire_of


def test_create_fields_and_types():
    d = parse_create({"title": "Night Train", "upload": "u1", "year": 2026, "duration_s": 90,
                      "people": ["Ana", {"name": "Tom", "role": "director"}], "category": None})
    assert (d.title, d.upload, d.year, d.duration_s, d.category) == ("Night Train", "u1", 2026, 90.0, None)
    assert d.people == (Person(name="Ana"), Person(name="Tom", role="director")) and d.owner is None
    for bad in ({"title": "T"}, {"upload": "u"}, {"title": "T", "upload": "u", "x": 1},
                {"title": "T", "upload": "u", "year": 2020.0}, {"title": "T", "upload": "u", "year": False},
                {"title": "T", "upload": "u", "duration_s": "9"}, {"title": None, "upload": "u"},
                {"title": "T", "upload": 5}, {"title": "T", "upload": "u", "people": "Ana"},
                {"title": "T", "upload": "u", "people": [{"name": "A", "age": 3}]}):
        with pytest.raises(InvalidJson):
            parse_create(bad)


def test_patch_changes_only_what_it_names():
    title = Title(id=7, title="Night Train", description="d", category="drama", year=2026, language="en",
                  duration_s=5400.0, people=(Person(name="Ana"),), state=TitleState.TRANSCODING,
                  progress=0.404, created=0.0, updated=90061.5, upload="u1", owner="creator-app",
                  renditions=(Rendition(name="hls", codec="manifest", path="titles/7/v3/master.m3u8"),))
    d = draft_of(title, parse_patch({"year": 2025, "language": None}))
    assert (d.title, d.year, d.language, d.people, d.upload, d.owner) == \
        ("Night Train", 2025, None, (Person(name="Ana"),), "u1", "creator-app")
    with pytest.raises(InvalidJson, match="upload cannot be changed"):
        parse_patch({"upload": "u2"})
    public = title_json(title, owner_view=False)
    assert public["progress"] == 40 and public["updated"] == "1970-01-02T01:01:01Z" and "owner" not in public
    assert public["renditions"] == [{"name": "hls", "codec": "manifest", "width": 0, "height": 0, "bitrate": 0,
                                     "path": "titles/7/v3/master.m3u8"}]
    assert title_json(title, owner_view=True)["owner"] == "creator-app"
    # Poster and thumbnail track: only once published, under the published version.
    assert (public["poster"], public["thumbnails"]) == (None, None)
    dash = Rendition(name="dash", codec="manifest", path="titles/7/v3/manifest.mpd")
    published = replace(title, state=TitleState.PUBLISHED, renditions=(*title.renditions, dash))
    doc = title_json(published, owner_view=False, media_base_url="https://cdn.test")
    assert (doc["poster"], doc["thumbnails"]) == ("https://cdn.test/titles/7/v3/poster.jpg",
                                                  "https://cdn.test/titles/7/v3/thumbs/thumbs.vtt")
    assert title_json(published, owner_view=False)["poster"] == "/titles/7/v3/poster.jpg"


def test_catalogue_errors_on_the_wire():
    assert wire_of(from_catalogue(BadQuery("x"))) == (400, "bad_query")
    assert wire_of(from_catalogue(InvalidTitle("x"))) == (422, "invalid_title")
    assert wire_of(from_catalogue(TitleNotFound("x"))) == (404, "title_not_found")
    assert wire_of(from_catalogue(IllegalTransition("x"))) == (409, "illegal_transition")
    assert wire_of(from_catalogue(BackendUnavailable("x"))) == (503, "catalogue_unavailable")
    assert str(from_catalogue(BadQuery("year is odd"))) == "year is odd"


@pytest.mark.parametrize("value", ["²", "١٢", "2020..²", "1e3"])
def test_search_numbers_are_ascii_digits(value):
    with pytest.raises(BadQuery):
        parse_search_params({"year": value})
