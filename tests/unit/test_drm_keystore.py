"""The content-key store (drm/keys/): wrapping, tampering, the wrong KEK, live KEK rotation."""

from __future__ import annotations

import os

import msgpack
import pytest

from headwater.drm.errors import KeyStoreError
from headwater.drm.keys.kek import create_kek_file, kek_from_bytes, read_kek_file, unwrap_key, wrap_key
from headwater.drm.keys.store import KeyStore

KID = bytes(range(16))
KEY = b"\x42" * 16


def test_wrap_unwrap_and_binding():
    kek = kek_from_bytes(b"\x01" * 32)
    w = wrap_key(kek, KID, "1", KEY)
    assert unwrap_key(kek, KID, "1", w) == KEY and KEY not in w
    with pytest.raises(KeyStoreError):
        unwrap_key(kek, b"\x00" * 16, "1", w)          # moved to another KID
    with pytest.raises(KeyStoreError):
        unwrap_key(kek, KID, "2", w)                   # relabelled to another title
    with pytest.raises(KeyStoreError):
        unwrap_key(kek_from_bytes(b"\x02" * 32), KID, "1", w)   # another KEK
    flipped = bytearray(w)
    flipped[20] ^= 1
    with pytest.raises(KeyStoreError):
        unwrap_key(kek, KID, "1", bytes(flipped))
    assert repr(kek).count(kek.wrap_key.hex()) == 0


def test_kek_file_rules(tmp_path):
    path = tmp_path / "kek"
    assert create_kek_file(path) and not create_kek_file(path)
    assert (path.stat().st_mode & 0o777) == 0o600
    kek = read_kek_file(path)
    assert len(kek.id) == 8
    os.chmod(path, 0o644)
    with pytest.raises(KeyStoreError, match="too"):
        read_kek_file(path)
    bad = tmp_path / "short"
    bad.write_text("abcd")
    bad.chmod(0o600)
    with pytest.raises(KeyStoreError, match="hex"):
        read_kek_file(bad)


def store_at(tmp_path, kek_path):
    return KeyStore(tmp_path / "keys", lambda: read_kek_file(kek_path), map_size=8 << 20, reload_interval_s=0, sync=False)


def test_store_add_get_list_and_tamper(tmp_path):
    kek_path = tmp_path / "kek"
    create_kek_file(kek_path)
    store = store_at(tmp_path, kek_path)
    a = store.add("1", scheme="cbcs")
    b = store.add("2")
    assert store.get(a.kid).key == a.key and store.get(a.kid).title == "1"
    assert store.get(b"\x00" * 16) is None
    assert [i.kid for i in store.infos("1")] == [a.kid] and store.count() == 2
    with pytest.raises(KeyStoreError, match="exists"):
        store.add("1", kid=a.kid)
    # nothing in the file is the key in clear
    raw = (tmp_path / "keys" / "data.mdb").read_bytes()
    assert a.key not in raw and b.key not in raw
    # swap the two records: each fails authentication instead of handing out the other's key
    with store.env.begin(write=True) as txn:
        ra, rb = txn.get(b"k" + a.kid), txn.get(b"k" + b.kid)
        txn.put(b"k" + a.kid, rb)
        txn.put(b"k" + b.kid, ra)
    for kid in (a.kid, b.kid):
        with pytest.raises(KeyStoreError):
            store.get(kid)
    store.close()


def test_wrong_kek_reads_nothing(tmp_path):
    kek_path = tmp_path / "kek"
    create_kek_file(kek_path)
    store = store_at(tmp_path, kek_path)
    a = store.add("1")
    store.close()
    kek_path.unlink()
    create_kek_file(kek_path)  # another KEK under the same name
    store = store_at(tmp_path, kek_path)
    with pytest.raises(KeyStoreError, match="not available"):
        store.get(a.kid)
    store.close()


def test_rotation_with_both_readable(tmp_path):
    old, new = tmp_path / "old.kek", tmp_path / "new.kek"
    create_kek_file(old)
    create_kek_file(new)
    writer = store_at(tmp_path, old)            # the CLI
    # the daemon: opened before the rotation, with its own KEKs (LMDB opens a path once per process)
    reader = KeyStore(tmp_path / "keys", lambda: read_kek_file(old), reload_interval_s=0, env=writer.env)
    keys = [writer.add(str(i % 3)) for i in range(120)]
    old_id, new_id = read_kek_file(old).id, read_kek_file(new).id
    # Half-way through a rotation: records under both KEKs are readable by the daemon.
    seen = []
    changed = writer.rotate(new, batch_size=50, progress=lambda n: seen.append(
        (n, reader.get(keys[0].kid).key == keys[0].key, reader.get(keys[-1].kid).key == keys[-1].key)))
    assert changed == 120 and len(seen) >= 3 and all(ok1 and ok2 for _, ok1, ok2 in seen)
    assert {i.kek_id for i in reader.infos()} == {new_id} and old_id != new_id
    assert all(reader.get(k.kid).key == k.key for k in keys[::7])
    # new keys go under the new KEK, also from the process that had not rotated
    fresh = reader.add("9")
    assert next(i for i in writer.infos("9")).kek_id == new_id and writer.get(fresh.kid).key == fresh.key
    assert writer.rotate(new) == 0  # idempotent
    reader.close()
    writer.close()
    # the old KEK may now go
    old.unlink()
    after = store_at(tmp_path, new)
    assert after.get(keys[5].kid).key == keys[5].key
    after.close()


def test_damaged_record(tmp_path):
    kek_path = tmp_path / "kek"
    create_kek_file(kek_path)
    store = store_at(tmp_path, kek_path)
    a = store.add("1")
    with store.env.begin(write=True) as txn:
        txn.put(b"k" + a.kid, msgpack.packb({"title": "1"}))
    with pytest.raises(KeyStoreError, match="damaged"):
        store.get(a.kid)
    store.close()


def test_unwrap_cache_is_bounded_and_follows_the_record(tmp_path):
    """The daemon's cache of unwrapped keys: hits skip the unwrap, but the record is read every
    time, so a swapped, re-wrapped or replaced record is seen at once; entries expire and the
    table never passes its bound."""
    kek_path = tmp_path / "kek"
    create_kek_file(kek_path)
    now = [100.0]
    store = KeyStore(tmp_path / "keys", lambda: read_kek_file(kek_path), monotonic=lambda: now[0],
                     unwrap_cache_entries=4, unwrap_cache_s=30.0)
    unwraps = []
    real = store._unwrap
    store._unwrap = lambda kid, raw: unwraps.append(kid) or real(kid, raw)
    a, b = store.add("1"), store.add("2")
    assert [k.key for k in store.get_many((a.kid, b.kid))] == [a.key, b.key]
    assert [k.key for k in store.get_many((a.kid, b.kid))] == [a.key, b.key]
    assert len(unwraps) == 2                                    # the second call hit
    # swapped records fail authentication as without the cache (the cache key is KID + record)
    with store.env.begin(write=True) as txn:
        ra, rb = txn.get(b"k" + a.kid), txn.get(b"k" + b.kid)
        txn.put(b"k" + a.kid, rb)
        txn.put(b"k" + b.kid, ra)
    with pytest.raises(KeyStoreError):
        store.get_many((a.kid,))
    with store.env.begin(write=True) as txn:
        txn.put(b"k" + a.kid, ra)
        txn.put(b"k" + b.kid, rb)
        txn.delete(b"k" + b.kid)
    assert store.get_many((b.kid,)) == [None]                  # a deleted key is gone at once
    # a re-wrap (new nonce, same key) is a new record: unwrapped again, same key
    new = tmp_path / "new.kek"
    create_kek_file(new)
    store.rotate(new)
    n = len(unwraps)
    assert store.get_many((a.kid,))[0].key == a.key and len(unwraps) == n + 1
    # expiry
    now[0] += 31
    assert store.get_many((a.kid,))[0].key == a.key and len(unwraps) == n + 2
    # the bound
    more = [store.add("3") for _ in range(10)]
    for k in more:
        assert store.get_many((k.kid,))[0].key == k.key
        assert len(store._unwrapped) <= 4
    store.close()
    assert not store._unwrapped


def test_unwrap_cache_off_by_default(tmp_path):
    kek_path = tmp_path / "kek"
    create_kek_file(kek_path)
    store = store_at(tmp_path, kek_path)
    a = store.add("1")
    assert store.get_many((a.kid,))[0].key == a.key and not store._unwrapped
    store.close()
