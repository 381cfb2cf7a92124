"""The ``keys.title`` service (drm/keys/service.py): the seal, argument checks, get-or-make."""

from __future__ import annotations

import json

import pytest

from headwater.drm.errors import KeyStoreError
from headwater.drm.keys.kek import kek_from_bytes
from headwater.drm.keys.service import BadKeyRequest, KeyService, open_key, parse_request, seal_key, transport_key
from headwater.drm.keys.store import KeyStore
from headwater.drm.licence.audit import KeyServed, audit_line

T = transport_key(b"\x11" * 32)
KID, KEY = bytes(range(16)), bytes(range(16, 32))


def test_a_sealed_key_opens_only_for_its_title_scheme_kid_and_cluster():
    sealed = seal_key(T, "7", "cbcs", KID, KEY)
    assert open_key(T, "7", "cbcs", KID, sealed) == KEY and KEY not in sealed
    assert seal_key(T, "7", "cbcs", KID, KEY) != sealed  # a fresh nonce each time
    for title, scheme, kid, key in (("8", "cbcs", KID, T), ("7", "cenc", KID, T), ("7", "cbcs", KEY, T),
                                    ("7", "cbcs", KID, transport_key(b"\x22" * 32))):
        with pytest.raises(KeyStoreError):
            open_key(key, title, scheme, kid, sealed)
    for i in (0, 12, 30, 43):
        bad = bytearray(sealed)
        bad[i] ^= 1
        with pytest.raises(KeyStoreError):
            open_key(T, "7", "cbcs", KID, bytes(bad))
    for bad in (b"", sealed[:-1], sealed + b"x", "text"):
        with pytest.raises(KeyStoreError):
            open_key(T, "7", "cbcs", KID, bad)  # type: ignore[arg-type]


@pytest.mark.parametrize("args", [None, [], {}, {"title": "1"}, {"title": "1", "scheme": "cbcs", "x": 1},
                                  {"title": "", "scheme": "cbcs"}, {"title": "a\nb", "scheme": "cbcs"},
                                  {"title": "x" * 257, "scheme": "cbcs"}, {"title": b"1", "scheme": "cbcs"},
                                  {"title": "1", "scheme": ""}, {"title": "1", "scheme": "CBCS"}])
def test_requests_outside_the_contract_are_refused(args):
    with pytest.raises(BadKeyRequest):
        parse_request(args)


def test_the_service_makes_a_key_once_and_reports_each_answer(tmp_path):
    store = KeyStore(tmp_path / "keys", lambda: kek_from_bytes(b"\x01" * 32), map_size=1 << 20, sync=False)
    served: list[tuple[str, str, bytes]] = []
    service = KeyService(store, b"\x11" * 32, on_served=lambda *a: served.append(a))
    try:
        first = service.answer({"title": "9", "scheme": "cenc"})
        second = service.answer({"title": "9", "scheme": "cenc"})
        assert first["kid"] == second["kid"] and first["sealed"] != second["sealed"]
        key = open_key(T, "9", "cenc", first["kid"], first["sealed"])
        assert store.get(first["kid"]).key == key and store.count() == 1
        with pytest.raises(BadKeyRequest):
            service.answer({"title": "9", "scheme": "none"})
        assert store.count() == 1 and service.counts == {"keys_served": 2, "keys_refused": 1}
        assert served == [("9", "cenc", first["kid"])] * 2
    finally:
        store.close()


def test_a_key_served_audit_line_is_json_without_the_key():
    line = audit_line(KeyServed(time=1_700_000_000.5, title="9", scheme="cbcs", kid=KID))
    doc = json.loads(line)
    assert doc["outcome"] == "key_served" and doc["titles"] == ["9"] and doc["scheme"] == "cbcs"
    assert doc["user"] is None and doc["ts"] == "2023-11-14T22:13:20.500Z" and len(doc["kids"]) == 1
