"""Delimiter listings through boto3 cost a bounded number of metadata calls per page, however many
common prefixes the page holds (the roll-up runs on the metadata nodes, see ``kv.list``).

Counted on the metadata nodes' own /metrics (``headwater_metadata_lists``: kv.list calls served,
``headwater_metadata_scans``: kv.scan calls), not timed. The default ring: 64 partitions in 8
Raft groups; a node merges its group's partitions, so a round is one call per group.
"""

from __future__ import annotations

import re
from concurrent.futures import ThreadPoolExecutor

import httpx

PREFIXES = 500
GROUPS = 8
CLUSTER_OPTIONS = dict(metadata_groups=GROUPS)  # the default ring, not the test clusters' three groups
# With a delimiter each group is asked for the whole page at once: one round of one call per
# group (8 here, as measured). Twice that leaves room for a leader change or a node's
# per-call record budget, never for a call per prefix (the old listing made >= 500 x 8).
MAX_CALLS_PER_PAGE = 2 * GROUPS


def metadata_counters(cluster) -> dict[str, float]:
    """Sum of ``headwater_metadata_lists`` and ``_scans`` over every metadata node's /metrics."""
    out = {"lists": 0.0, "scans": 0.0}
    for d in cluster.metadata:
        text = httpx.get(f"http://{d.host}:{d.admin_port}/metrics", timeout=5).text
        for name in out:
            m = re.search(rf"^headwater_metadata_{name} ([0-9.e+]+)$", text, re.M)
            assert m, f"no headwater_metadata_{name} on {d.id}"
            out[name] += float(m.group(1))
    return out


def fill(s3, bucket: str, keys: list[str]) -> None:
    with ThreadPoolExecutor(16) as pool:
        list(pool.map(lambda k: s3.put_object(Bucket=bucket, Key=k, Body=b"x"), keys))


def test_500_prefixes_list_in_a_bounded_number_of_calls(cluster, s3, bucket):
    # A key under each prefix, a second one (in another partition, mostly) under every fifth, so
    # equal prefixes from several partitions must come out once, and a few keys beside them.
    keys = [f"titles/{i:04d}/a.mp4" for i in range(PREFIXES)] + [f"titles/{i:04d}/b/c.m4s" for i in range(0, PREFIXES, 5)]
    keys += ["titles/index.json", "titles/zz", "other/x", "titles"]
    fill(s3, bucket, keys)
    want_prefixes = [f"titles/{i:04d}/" for i in range(PREFIXES)]

    before = metadata_counters(cluster)
    r = s3.list_objects_v2(Bucket=bucket, Prefix="titles/", Delimiter="/")
    after = metadata_counters(cluster)
    assert [p["Prefix"] for p in r["CommonPrefixes"]] == want_prefixes
    assert [c["Key"] for c in r["Contents"]] == ["titles/index.json", "titles/zz"]
    assert not r["IsTruncated"] and r["KeyCount"] == PREFIXES + 2
    calls = after["lists"] - before["lists"]
    print(f"one page of {PREFIXES + 2} names: {calls:.0f} kv.list calls")
    assert 1 <= calls <= MAX_CALLS_PER_PAGE, calls  # was >= one scan per prefix and group
    assert after["scans"] == before["scans"]  # nothing walked keys one prefix at a time

    # Paged with small pages, by continuation token (V2) and by marker (V1): every prefix once,
    # in order, and each page's calls bounded.
    for version in (2, 1):
        got, pages, token = [], 0, None
        before = metadata_counters(cluster)
        while True:
            if version == 2:
                kw = {"ContinuationToken": token} if token else {}
                r = s3.list_objects_v2(Bucket=bucket, Prefix="titles/", Delimiter="/", MaxKeys=70, **kw)
            else:
                kw = {"Marker": token} if token else {}
                r = s3.list_objects(Bucket=bucket, Prefix="titles/", Delimiter="/", MaxKeys=70, **kw)
            pages += 1
            names = [p["Prefix"] for p in r.get("CommonPrefixes", [])] + [c["Key"] for c in r.get("Contents", [])]
            assert len(names) <= 70
            got += sorted(names)
            if not r["IsTruncated"]:
                break
            token = r["NextContinuationToken"] if version == 2 else r["NextMarker"]
        calls = metadata_counters(cluster)["lists"] - before["lists"]
        print(f"V{version}: {pages} pages of 70: {calls:.0f} kv.list calls")
        assert got == want_prefixes + ["titles/index.json", "titles/zz"], version
        assert pages == -(-(PREFIXES + 2) // 70)
        assert calls <= pages * MAX_CALLS_PER_PAGE, (version, calls, pages)

    # A start-after inside a prefix skips that prefix; deeper delimiters roll up the same way.
    r = s3.list_objects_v2(Bucket=bucket, Prefix="titles/", Delimiter="/", StartAfter="titles/0007/a.mp4",
                           MaxKeys=2)
    assert [p["Prefix"] for p in r["CommonPrefixes"]] == ["titles/0008/", "titles/0009/"]
    r = s3.list_objects_v2(Bucket=bucket, Prefix="titles/0045/", Delimiter="/")
    assert [c["Key"] for c in r["Contents"]] == ["titles/0045/a.mp4"]
    assert [p["Prefix"] for p in r["CommonPrefixes"]] == ["titles/0045/b/"]
    r = s3.list_objects_v2(Bucket=bucket, Delimiter="/")
    assert [p["Prefix"] for p in r["CommonPrefixes"]] == ["other/", "titles/"]
    assert [c["Key"] for c in r["Contents"]] == ["titles"]
