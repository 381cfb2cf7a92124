"""The audit line: assembled from pre-serialised parts, it must be byte for byte the JSON
``json.dumps`` writes of the same fields, whatever the strings hold."""

from __future__ import annotations

import json

import pytest

from headwater.drm.licence.audit import AuditLog, LicenceGranted, LicenceRefused, _iso, audit_line
from headwater.drm.licence.clearkey import b64url

ODD = ['plain', 'quo"te', "back\\slash", "new\nline\t\x00\x1f", "é ü 漢字 🎬", "</script>", "\u2028"]


def reference(event) -> bytes:
    doc = {"ts": _iso(event.time), "user": event.user, "client": event.client,
           "titles": sorted(event.titles), "kids": [b64url(k) for k in event.kids]}
    if isinstance(event, LicenceGranted):
        doc.update(outcome="granted", type=event.session_type, licence_end=_iso(event.licence_end),
                   device=event.device)
    else:
        doc.update(outcome="refused", status=event.status, code=event.code, reason=event.reason[:300])
    return json.dumps(doc, separators=(",", ":"), ensure_ascii=True).encode() + b"\n"


@pytest.mark.parametrize("odd", ODD)
def test_granted_line_is_the_json_of_its_fields(odd):
    ev = LicenceGranted(time=1_700_000_000.1234, user=odd, client="::1", titles=[odd, "1", "10"],
                        kids=[bytes(range(16)), b"\xff" * 16], session_type="temporary",
                        licence_end=1_700_003_600.999, device=odd)
    assert audit_line(ev) == reference(ev)
    assert json.loads(audit_line(ev))["user"] == odd
    no_device = LicenceGranted(time=0.0, user=odd, client="127.0.0.1", titles=[], kids=[],
                               session_type="persistent-license", licence_end=59.5)
    assert audit_line(no_device) == reference(no_device)


@pytest.mark.parametrize("odd", ODD)
def test_refused_line_is_the_json_of_its_fields(odd):
    ev = LicenceRefused(time=1_700_000_000.5, client="10.0.0.1", status=403, code="forbidden",
                        reason=odd * 100, user=None, titles=(odd,), kids=(b"\x00" * 16,))
    line = audit_line(ev)
    assert line == reference(ev)
    assert json.loads(line)["reason"] == (odd * 100)[:300]


def test_log_reuses_formatted_seconds_and_writes_lines(tmp_path):
    log = AuditLog(tmp_path / "a/audit.log")
    events = [LicenceGranted(time=1_700_000_000 + i * 0.4, user="u", client="c", titles=["1"], kids=[b"k" * 16],
                             session_type="temporary", licence_end=1_700_000_000 + 3600 * (i % 3)) for i in range(200)]
    for ev in events:
        log.record(ev)
    log.close()
    lines = (tmp_path / "a/audit.log").read_bytes().splitlines(keepends=True)
    assert lines == [reference(ev) for ev in events]
    assert (tmp_path / "a/audit.log").stat().st_mode & 0o777 == 0o600
