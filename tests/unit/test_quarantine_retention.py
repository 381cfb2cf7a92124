"""[objstore] quarantine_retention_seconds: its default, 0, and errors that name the key."""

from __future__ import annotations

import pytest

from headwater.config import ConfigError, loads
from headwater.objstore.status import storage_text


def test_quarantine_retention_defaults_to_a_week_and_errors_name_the_key():
    assert loads("[objstore]\n").objstore.quarantine_retention_s == 7 * 86400
    assert loads("[objstore]\nquarantine_retention_seconds = 0\n").objstore.quarantine_retention_s == 0
    assert loads("[objstore]\nquarantine_retention_seconds = 3600\n").objstore.quarantine_retention_s == 3600
    with pytest.raises(ConfigError, match=r"objstore\.quarantine_retention_seconds"):
        loads("[objstore]\nquarantine_retention_seconds = -1\n")
    with pytest.raises(ConfigError, match=r"objstore\.quarantine_retention_seconds"):
        loads("[objstore]\nquarantine_retention_seconds = \"7d\"\n")


def test_status_shows_what_is_in_quarantine():
    assert "in quarantine 2" in storage_text({"fragments": 5, "quarantine_files": 2})
    assert "in quarantine" not in storage_text({"fragments": 5, "quarantine_files": 0})
