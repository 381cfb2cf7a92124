"""[objstore] storage_page_cache: its default, each value, and an error that names the key."""

from __future__ import annotations

import pytest

from headwater.config import ConfigError, loads


def test_storage_page_cache_defaults_to_none_and_takes_data_and_all():
    assert loads("[objstore]\n").objstore.storage_page_cache == "none"
    for value in ("none", "data", "all"):
        assert loads(f'[objstore]\nstorage_page_cache = "{value}"\n').objstore.storage_page_cache == value
    with pytest.raises(ConfigError, match=r"objstore\.storage_page_cache.*none, data, all"):
        loads('[objstore]\nstorage_page_cache = "some"\n')
